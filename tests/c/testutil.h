/* testutil.h - small helpers shared by the C tests in tests/c/.
 *
 * Deterministic randomness (splitmix64 seeding an xoshiro256** generator),
 * named checks in the style of mimalloc's test-api.c, and a few helpers for
 * byte patterns. Nothing here allocates with libc malloc: the tests are linked
 * directly against the meshalloc core and talk to it through mesh_* only, so a
 * sanitizer's malloc interceptors never see (or mix up) the core's blocks.
 */
#ifndef MESH_TESTUTIL_H
#define MESH_TESTUTIL_H

#include "mesh.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- deterministic RNG ------------------------------------------------ */
typedef struct { uint64_t s[4]; } rng_t;

static inline uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static inline void rng_seed(rng_t *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static inline uint64_t rng_next(rng_t *r) {
  uint64_t *s = r->s;
  uint64_t result = rotl64(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
  s[2] ^= t; s[3] = rotl64(s[3], 45);
  return result;
}

/* uniform in [0, n) (n > 0; the tiny modulo bias does not matter here) */
static inline uint64_t rng_below(rng_t *r, uint64_t n) { return rng_next(r) % n; }

/* ---- time --------------------------------------------------------------- */
static inline double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- byte patterns ---------------------------------------------------- */
/* Byte i of a block tagged `tag`: cheap and position dependent. The tag
 * goes through a 64-bit mix and each run of 8 bytes carries all of it, so
 * two objects of 8 bytes or more whose tags differ anywhere (not only in
 * the low byte) never hold the same pattern: a mesh that put one object's
 * bytes in another's place is caught whatever their tags. */
static inline uint64_t pat_key(uint64_t tag) {
  uint64_t x = tag;
  return splitmix64(&x);
}

static inline uint8_t pat_byte_k(uint64_t key, size_t i) {
  return (uint8_t)((key >> (8 * (i & 7))) ^ (i * 7u) ^ (i >> 8) ^ 0x5a);
}

static inline uint8_t pat_byte(uint64_t tag, size_t i) { return pat_byte_k(pat_key(tag), i); }

static inline void pat_fill(void *p, size_t n, uint64_t tag) {
  uint8_t *b = (uint8_t *)p;
  uint64_t k = pat_key(tag);
  for (size_t i = 0; i < n; i++) b[i] = pat_byte_k(k, i);
}

/* Returns the index of the first wrong byte, or (size_t)-1 when all match. */
static inline size_t pat_check(const void *p, size_t n, uint64_t tag) {
  const uint8_t *b = (const uint8_t *)p;
  uint64_t k = pat_key(tag);
  for (size_t i = 0; i < n; i++)
    if (b[i] != pat_byte_k(k, i)) return i;
  return (size_t)-1;
}

/* For big blocks: fill/check only the first and last `edge` bytes and one
 * byte per 4 KiB in between (touching every page without costing O(n)). */
static inline void pat_fill_sparse(void *p, size_t n, uint64_t tag, size_t edge) {
  uint8_t *b = (uint8_t *)p;
  uint64_t k = pat_key(tag);
  if (n <= 2 * edge) { pat_fill(p, n, tag); return; }
  for (size_t i = 0; i < edge; i++) b[i] = pat_byte_k(k, i);
  for (size_t i = n - edge; i < n; i++) b[i] = pat_byte_k(k, i);
  for (size_t i = edge; i < n - edge; i += 4096) b[i] = pat_byte_k(k, i);
}

static inline size_t pat_check_sparse(const void *p, size_t n, uint64_t tag, size_t edge) {
  const uint8_t *b = (const uint8_t *)p;
  uint64_t k = pat_key(tag);
  if (n <= 2 * edge) return pat_check(p, n, tag);
  for (size_t i = 0; i < edge; i++) if (b[i] != pat_byte_k(k, i)) return i;
  for (size_t i = n - edge; i < n; i++) if (b[i] != pat_byte_k(k, i)) return i;
  for (size_t i = edge; i < n - edge; i += 4096) if (b[i] != pat_byte_k(k, i)) return i;
  return (size_t)-1;
}

/* ---- misc ------------------------------------------------------------- */
static inline int cmp_ptr(const void *a, const void *b) {
  uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
  return x < y ? -1 : x > y;
}

static inline uint64_t parse_u64(const char *s, uint64_t dflt) {
  if (s == NULL || *s == 0) return dflt;
  char *end = NULL;
  unsigned long long v = strtoull(s, &end, 0);
  return (end && *end == 0) ? (uint64_t)v : dflt;
}

#define DIE(...) do { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); fflush(stderr); exit(2); } while (0)

/* ---- heap introspection ------------------------------------------------ */
/* A stats field by name; exits with a message when the core has no such
 * field (a test must not silently read 0). */
static inline uint64_t stat_get(const char *name) {
  int n = mesh_stats_count();
  uint64_t v[512];
  if (n <= 0 || n > 512 || mesh_stats_read(v, n) != n) {
    fprintf(stderr, "FATAL: cannot read %d stats fields\n", n);
    exit(2);
  }
  for (int i = 0; i < n; i++)
    if (strcmp(mesh_stats_name(i), name) == 0) return v[i];
  fprintf(stderr, "FATAL: no stat named %s\n", name);
  exit(2);
}

/* The arena's mappings as the kernel sees them. */
/* A field of /proc/self/smaps_rollup in KiB ("Pss", "Rss", ...), -1 if absent. */
static inline long rollup_kb(const char *field) {
  FILE *f = fopen("/proc/self/smaps_rollup", "r");
  if (!f) DIE("open smaps_rollup");
  char line[256];
  long v = -1;
  size_t n = strlen(field);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, field, n) == 0 && line[n] == ':') { v = atol(line + n + 1); break; }
  fclose(f);
  return v;
}

static inline int maps_count(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) {
    perror("open /proc/self/maps");
    exit(2);
  }
  /* the arena's mappings: anonymous ones and the memfd's. The first may
   * extend below the arena, merged with a neighbour of the same kind. */
  uint64_t lo = stat_get("arena_base"), hi = lo + stat_get("arena_reserved_bytes");
  char line[512];
  int n = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long long a, b;
    if (sscanf(line, "%llx-%llx", &a, &b) == 2 && a < hi && b > lo) n++;
  }
  fclose(f);
  return n;
}

/* The first byte of the (virtual) span holding p, from the core: spans are
 * 1-4 pages and not aligned to their size. Exits if p is in no span. */
static inline uintptr_t span_of(const void *p) {
  void *start = NULL;
  if (!mesh_span_of(p, &start)) {
    fprintf(stderr, "FATAL: %p is in no span\n", p);
    exit(2);
  }
  return (uintptr_t)start;
}

#endif /* MESH_TESTUTIL_H */
