/* cbench.h - what the C benchmarks share: PSS read from smaps_rollup, the
 * splitmix64 step, one meshalloc stats field by name, the escape that keeps
 * the compiler from eliding a malloc/free pair, and the realloc growth step.
 * Header-only: each benchmark is one source file built on its own
 * (perf/micro/Makefile, perf/frag/frag.py).
 */
#ifndef MESH_PERF_CBENCH_H
#define MESH_PERF_CBENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* This process's PSS in KiB ("Pss:" of /proc/self/smaps_rollup; never RSS,
 * which counts a meshed page once per mapping), or -1 if unavailable. */
static inline long cb_pss_kb(void) {
  FILE *f = fopen("/proc/self/smaps_rollup", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "Pss: %ld kB", &v) == 1) break;
  fclose(f);
  return v;
}

/* One splitmix64 step: deterministic, so every allocator sees the same
 * sequence of sizes and frees. */
static inline uint64_t cb_splitmix(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* The meshalloc stats field called name, through mesh_stats_read and
 * mesh_stats_name (linked, or found with dlsym by a program that must not
 * depend on libmesh.so), or -1 if there is none. */
static inline long long cb_mesh_stat(int (*read)(uint64_t *, int), const char *(*name_of)(int), const char *name) {
  uint64_t v[256];
  int n = read(v, 256);
  for (int i = 0; i < n && i < 256; i++)
    if (name_of(i) && !strcmp(name_of(i), name)) return (long long)v[i];
  return -1;
}

/* Makes p escape through an empty asm: the compiler can neither elide the
 * allocation nor sink it out of the loop. */
static inline __attribute__((always_inline)) void cb_escape(void *p) {
  __asm__ volatile("" : : "g"(p) : "memory");
}

/* The next size of a block grown by realloc: +1/8 and 16 bytes, rounded to
 * 16 (CPython's list and bytearray over-allocation). */
static inline size_t cb_grow_step(size_t n) { return (n + (n >> 3) + 16) & ~(size_t)15; }

#endif
