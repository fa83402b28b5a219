/* test_api.c - the public C API (csrc/mesh.h) against its contract.
 *
 * Exercises, one string-named check each (mimalloc test-api.c style):
 *   malloc(0) unique and non-NULL; 16-byte alignment and usable_size for
 *   sampled sizes 1..70000; 16-byte class steps up to 512 B; calloc zeroing
 *   of reused memory and calloc / reallocarray overflow; huge requests
 *   (SIZE_MAX, SIZE_MAX/2, 1<<62, ...) -> NULL + ENOMEM from every entry point;
 *   realloc keeping min(old,new) bytes across size classes and into/out of
 *   large spans; a failed realloc leaving its block intact; realloc(NULL, n);
 *   memalign/posix_memalign/aligned_alloc for alignments 16..1 MiB;
 *   EINVAL on bad alignments; small aligned requests not costing a page;
 *   valloc/pvalloc page alignment; mesh_owns; options and stats tables;
 *   mesh_check_heap() == 0 after a seeded random workload.
 *
 * Linked directly against the core sources (not libmesh.so) so that it can
 * run under ASan/UBSan while the core is reached only through mesh_*.
 * Prints "ok NAME" / "FAIL NAME (...)" per check, "info ..." lines that the
 * pytest side parses, and a final "N passed, N failed" line. Exit status is
 * 0 only when every check passed.
 *
 * argv[1] (optional): seed for the random workload (printed).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mesh.h"
#include "testutil.h"

static int n_passed, n_failed;

static void report(const char *name, bool ok, int line) {
  if (ok) { n_passed++; printf("ok %s\n", name); }
  else    { n_failed++; printf("FAIL %s (test_api.c:%d)\n", name, line); }
  fflush(stdout);
}
#define CHECK(name, expr) report((name), (expr), __LINE__)

/* A detail printed under a failing check to make the output self-explaining. */
#define NOTE(...) do { printf("  note: " __VA_ARGS__); putchar('\n'); } while (0)

static bool is_aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

/* ---------------------------------------------------------------------- */
static bool check_malloc_zero(void) {
  enum { N = 1000 };
  void *ps[N];
  bool ok = true;
  for (int i = 0; i < N; i++) {
    ps[i] = mesh_malloc(0);
    if (ps[i] == NULL) { NOTE("malloc(0) #%d returned NULL", i); return false; }
    if (!is_aligned(ps[i], 16)) { NOTE("malloc(0) %p not 16-aligned", ps[i]); ok = false; }
  }
  void *sorted[N];
  memcpy(sorted, ps, sizeof ps);
  qsort(sorted, N, sizeof(void *), cmp_ptr);
  for (int i = 1; i < N; i++)
    if (sorted[i] == sorted[i - 1]) { NOTE("malloc(0) returned %p twice", sorted[i]); ok = false; break; }
  for (int i = 0; i < N; i++) mesh_free(ps[i]);
  return ok;
}

/* Sizes 1..70000, sampled: all of 1..2048, then a stride, plus every power of
 * two and its neighbours. A ring of live blocks, each filled with a pattern
 * over its whole usable size and checked before it is freed, catches blocks
 * that overlap. */
static size_t sample_sizes(size_t *out, size_t cap) {
  size_t n = 0;
  for (size_t s = 1; s <= 2048 && n < cap; s++) out[n++] = s;
  for (size_t s = 2049; s <= 70000 && n < cap; s += 13) out[n++] = s;
  for (size_t k = 11; k <= 16 && n + 3 <= cap; k++) {
    out[n++] = ((size_t)1 << k) - 1; out[n++] = (size_t)1 << k; out[n++] = ((size_t)1 << k) + 1;
  }
  out[n++] = 70000;
  return n;
}

static bool check_alignment_and_usable(void) {
  static size_t sizes[8192];
  size_t n = sample_sizes(sizes, 8190);
  enum { RING = 64 };
  void *ring[RING] = {0};
  size_t ring_usable[RING] = {0};
  bool ok = true;
  for (size_t i = 0; i < n; i++) {
    size_t sz = sizes[i];
    int slot = (int)(i % RING);
    if (ring[slot]) {
      size_t bad = pat_check(ring[slot], ring_usable[slot], (uint64_t)(uintptr_t)ring[slot]);
      if (bad != (size_t)-1) { NOTE("block %p corrupted at byte %zu (overlap?)", ring[slot], bad); ok = false; }
      mesh_free(ring[slot]);
      ring[slot] = NULL;
    }
    void *p = mesh_malloc(sz);
    if (p == NULL) { NOTE("malloc(%zu) returned NULL", sz); return false; }
    if (!is_aligned(p, 16)) { NOTE("malloc(%zu) = %p not 16-aligned", sz, p); ok = false; }
    size_t us = mesh_usable_size(p);
    if (us < sz) { NOTE("usable_size(malloc(%zu)) = %zu", sz, us); ok = false; us = sz; }
    if (!mesh_owns(p)) { NOTE("mesh_owns(malloc(%zu)) = 0", sz); ok = false; }
    pat_fill(p, us, (uint64_t)(uintptr_t)p);
    ring[slot] = p;
    ring_usable[slot] = us;
  }
  for (int i = 0; i < RING; i++) {
    if (!ring[i]) continue;
    if (pat_check(ring[i], ring_usable[i], (uint64_t)(uintptr_t)ring[i]) != (size_t)-1) ok = false;
    mesh_free(ring[i]);
  }
  return ok;
}

/* Classes up to 512 bytes are no coarser than 16-byte steps (docs/design.md,
 * "Size classes"). */
static bool check_class_steps(void) {
  bool ok = true;
  for (size_t sz = 1; sz <= 512; sz++) {
    void *p = mesh_malloc(sz);
    if (!p) return false;
    size_t us = mesh_usable_size(p);
    if (us >= sz + 16) { NOTE("usable_size(malloc(%zu)) = %zu: step coarser than 16 B", sz, us); ok = false; }
    mesh_free(p);
  }
  return ok;
}

static bool check_distinct_live_blocks(void) {
  enum { N = 20000 };
  static void *ps[N];
  rng_t r; rng_seed(&r, 42);
  for (int i = 0; i < N; i++) {
    size_t sz = 1 + rng_below(&r, rng_below(&r, 8) == 0 ? 20000 : 600);
    ps[i] = mesh_malloc(sz);
    if (!ps[i]) { NOTE("malloc(%zu) NULL", sz); return false; }
  }
  static void *sorted[N];
  memcpy(sorted, ps, sizeof ps);
  qsort(sorted, N, sizeof(void *), cmp_ptr);
  bool ok = true;
  for (int i = 1; i < N; i++) {
    uintptr_t prev_end = (uintptr_t)sorted[i - 1] + mesh_usable_size(sorted[i - 1]);
    if (prev_end > (uintptr_t)sorted[i]) {
      NOTE("blocks %p (usable %zu) and %p overlap", sorted[i - 1], mesh_usable_size(sorted[i - 1]), sorted[i]);
      ok = false; break;
    }
  }
  for (int i = 0; i < N; i++) mesh_free(ps[i]);
  return ok;
}

static bool check_calloc_zeroes_reused_memory(void) {
  static const size_t sizes[] = {16, 24, 100, 512, 1000, 4096, 5000, 16384, 20000, 200000, 3u << 20};
  enum { N = 48 };
  bool ok = true;
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    size_t sz = sizes[k];
    void *ps[N];
    for (int i = 0; i < N; i++) {
      ps[i] = mesh_malloc(sz);
      if (!ps[i]) return false;
      memset(ps[i], 0xAB, mesh_usable_size(ps[i]));
    }
    for (int i = 0; i < N; i++) mesh_free(ps[i]);
    for (int i = 0; i < N; i++) {
      unsigned char *p = mesh_calloc(1, sz);
      ps[i] = p;
      if (!p) { NOTE("calloc(1, %zu) NULL", sz); return false; }
      for (size_t j = 0; j < sz; j++)
        if (p[j] != 0) { NOTE("calloc(1, %zu) byte %zu = 0x%02x", sz, j, p[j]); ok = false; break; }
    }
    for (int i = 0; i < N; i++) mesh_free(ps[i]);
  }
  /* count*size split the other way round */
  unsigned char *p = mesh_calloc(1u << 20, 16);
  if (!p) { NOTE("calloc(1<<20, 16) NULL"); return false; }
  for (size_t j = 0; j < (16u << 20); j += 509) if (p[j]) { ok = false; break; }
  mesh_free(p);
  return ok;
}

static bool expect_null_enomem(const char *what, void *p) {
  int e = errno;
  if (p != NULL) { NOTE("%s returned %p, expected NULL", what, p); return false; }
  if (e != ENOMEM) { NOTE("%s: errno %d, expected ENOMEM", what, e); return false; }
  return true;
}

static bool check_calloc_overflow(void) {
  bool ok = true;
  errno = 0; ok &= expect_null_enomem("calloc(SIZE_MAX/2+1, 2)", mesh_calloc(SIZE_MAX / 2 + 1, 2));
  errno = 0; ok &= expect_null_enomem("calloc(1<<33, 1<<33)", mesh_calloc((size_t)1 << 33, (size_t)1 << 33));
  errno = 0; ok &= expect_null_enomem("calloc(SIZE_MAX, SIZE_MAX)", mesh_calloc(SIZE_MAX, SIZE_MAX));
  errno = 0; ok &= expect_null_enomem("calloc(3, SIZE_MAX/3+1)", mesh_calloc(3, SIZE_MAX / 3 + 1));
  /* a zero product is not an overflow */
  void *p = mesh_calloc(0, SIZE_MAX);
  if (!p) { NOTE("calloc(0, SIZE_MAX) returned NULL"); ok = false; } else mesh_free(p);
  p = mesh_calloc(SIZE_MAX, 0);
  if (!p) { NOTE("calloc(SIZE_MAX, 0) returned NULL"); ok = false; } else mesh_free(p);
  return ok;
}

static bool check_reallocarray(void) {
  bool ok = true;
  unsigned char *p = mesh_malloc(64);
  if (!p) return false;
  pat_fill(p, 64, 7);
  errno = 0;
  ok &= expect_null_enomem("reallocarray(p, SIZE_MAX/2, 3)", mesh_reallocarray(p, SIZE_MAX / 2, 3));
  errno = 0;
  ok &= expect_null_enomem("reallocarray(p, 1<<32, 1<<32)", mesh_reallocarray(p, (size_t)1 << 32, (size_t)1 << 32));
  if (pat_check(p, 64, 7) != (size_t)-1) { NOTE("block changed by failed reallocarray"); ok = false; }
  unsigned char *q = mesh_reallocarray(p, 100, 10);
  if (!q) { NOTE("reallocarray(p, 100, 10) NULL"); mesh_free(p); return false; }
  if (pat_check(q, 64, 7) != (size_t)-1) { NOTE("reallocarray lost data"); ok = false; }
  if (mesh_usable_size(q) < 1000) ok = false;
  mesh_free(q);
  errno = 0;
  ok &= expect_null_enomem("reallocarray(NULL, SIZE_MAX, 2)", mesh_reallocarray(NULL, SIZE_MAX, 2));
  q = mesh_reallocarray(NULL, 10, 10);
  if (!q) ok = false; else { memset(q, 1, 100); mesh_free(q); }
  return ok;
}

static bool check_huge(void) {
  static const size_t huge[] = {
    SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - 15, SIZE_MAX - 4095, SIZE_MAX - (1u << 20),
    SIZE_MAX / 2, SIZE_MAX / 2 + 1, (size_t)PTRDIFF_MAX, (size_t)1 << 62, (size_t)1 << 48,
  };
  bool ok = true;
  char what[128];
  for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
    size_t n = huge[i];
    snprintf(what, sizeof what, "malloc(%#zx)", n);
    errno = 0; ok &= expect_null_enomem(what, mesh_malloc(n));
    snprintf(what, sizeof what, "calloc(1, %#zx)", n);
    errno = 0; ok &= expect_null_enomem(what, mesh_calloc(1, n));
    snprintf(what, sizeof what, "realloc(NULL, %#zx)", n);
    errno = 0; ok &= expect_null_enomem(what, mesh_realloc(NULL, n));
    snprintf(what, sizeof what, "memalign(64, %#zx)", n);
    errno = 0; ok &= expect_null_enomem(what, mesh_memalign(64, n));
    snprintf(what, sizeof what, "memalign(1<<20, %#zx)", n);
    errno = 0; ok &= expect_null_enomem(what, mesh_memalign((size_t)1 << 20, n));
    snprintf(what, sizeof what, "aligned_alloc(4096, %#zx)", n);
    errno = 0; ok &= expect_null_enomem(what, mesh_aligned_alloc(4096, n));
    snprintf(what, sizeof what, "valloc(%#zx)", n);
    errno = 0; ok &= expect_null_enomem(what, mesh_valloc(n));
    snprintf(what, sizeof what, "pvalloc(%#zx)", n);
    errno = 0; ok &= expect_null_enomem(what, mesh_pvalloc(n));
    void *out = (void *)0x1234;
    int rc = mesh_posix_memalign(&out, 256, n);
    if (rc != ENOMEM) { NOTE("posix_memalign(256, %#zx) returned %d, expected ENOMEM", n, rc); ok = false; }
    if (rc == 0 && out) mesh_free(out);
  }
  /* an alignment only address 0 satisfies */
  errno = 0;
  void *p = mesh_memalign((size_t)1 << 63, 16);
  if (p != NULL || (errno != ENOMEM && errno != EINVAL)) {
    NOTE("memalign(1<<63, 16) = %p errno %d", p, errno); ok = false;
  }
  /* the heap still works after all of that */
  p = mesh_malloc(100);
  if (!p) return false;
  memset(p, 0, 100);
  mesh_free(p);
  return ok;
}

static bool check_big_but_possible(void) {
  size_t n = (size_t)256 << 20;
  unsigned char *p = mesh_malloc(n);
  if (!p) { NOTE("malloc(256 MiB) NULL"); return false; }
  pat_fill_sparse(p, n, 3, 4096);
  bool ok = pat_check_sparse(p, n, 3, 4096) == (size_t)-1 && mesh_usable_size(p) >= n;
  mesh_free(p);
  /* repeatedly: a freed large span is reused, not leaked */
  for (int i = 0; i < 64; i++) {
    p = mesh_malloc((size_t)16 << 20);
    if (!p) { NOTE("malloc(16 MiB) #%d NULL", i); return false; }
    p[0] = 1; p[(16 << 20) - 1] = 2;
    mesh_free(p);
  }
  return ok;
}

static const size_t realloc_sizes[] = {
  1, 8, 15, 16, 24, 100, 256, 512, 513, 1000, 1024, 2048, 4095, 4096, 8192,
  16384, 16385, 20000, 65536, 100000, (1u << 20) + 7,
};
#define N_REALLOC_SIZES (sizeof realloc_sizes / sizeof realloc_sizes[0])

static bool check_realloc_keeps_data(void) {
  bool ok = true;
  for (size_t a = 0; a < N_REALLOC_SIZES; a++) {
    for (size_t b = 0; b < N_REALLOC_SIZES; b++) {
      size_t from = realloc_sizes[a], to = realloc_sizes[b];
      uint64_t tag = from * 31 + to;
      unsigned char *p = mesh_malloc(from);
      if (!p) return false;
      pat_fill(p, from, tag);
      unsigned char *q = mesh_realloc(p, to);
      if (!q) { NOTE("realloc(%zu -> %zu) NULL", from, to); mesh_free(p); ok = false; continue; }
      size_t keep = from < to ? from : to;
      size_t bad = pat_check(q, keep, tag);
      if (bad != (size_t)-1) { NOTE("realloc(%zu -> %zu) lost byte %zu", from, to, bad); ok = false; }
      if (mesh_usable_size(q) < to) { NOTE("realloc(%zu -> %zu): usable %zu", from, to, mesh_usable_size(q)); ok = false; }
      if (!is_aligned(q, 16)) ok = false;
      memset(q, 0xEE, to);  /* the whole new size is writable */
      mesh_free(q);
    }
  }
  /* a chain of growing then shrinking reallocs keeps the prefix */
  size_t cur = 10;
  unsigned char *p = mesh_malloc(cur);
  pat_fill(p, cur, 99);
  for (size_t n = 10; n < (3u << 20); n = n * 3 / 2 + 1) {
    unsigned char *q = mesh_realloc(p, n);
    if (!q) { mesh_free(p); return false; }
    if (pat_check(q, cur, 99) != (size_t)-1) { NOTE("growing chain lost data at %zu", n); ok = false; }
    pat_fill(q, n, 99); p = q; cur = n;
  }
  for (size_t n = cur; n > 8; n = n / 2) {
    unsigned char *q = mesh_realloc(p, n);
    if (!q) { mesh_free(p); return false; }
    if (pat_check(q, n, 99) != (size_t)-1) { NOTE("shrinking chain lost data at %zu", n); ok = false; }
    p = q;
  }
  mesh_free(p);
  return ok;
}

/* A block that realloc grows past one page moves to whole pages, and its
 * later growth extends it in place; a malloc of the same size keeps its
 * small class. */
static bool check_realloc_growth_takes_pages(void) {
  bool ok = true;
  unsigned char *p = NULL;
  size_t n = 0;
  int paged_moves = 0;
  uint64_t grown0 = stat_get("large_grown_in_place");
  while (n < (64u << 10)) {
    size_t m = (n + (n >> 3) + 16) & ~(size_t)15;
    unsigned char *q = mesh_realloc(p, m);
    if (!q) { NOTE("realloc(%zu -> %zu) NULL", n, m); mesh_free(p); return false; }
    if (pat_check(q, n, 41) != (size_t)-1) { NOTE("realloc(%zu -> %zu) lost data", n, m); ok = false; }
    if (mesh_realloc(q, m) != q) { NOTE("realloc to the same size %zu moved the block", m); ok = false; }
    size_t u = mesh_usable_size(q);
    if (n > 4096 && q != p) paged_moves++;
    if (m > 4096 && u % 4096 != 0) { NOTE("grown to %zu: usable %zu is not whole pages", m, u); ok = false; }
    pat_fill(q, m, 41);
    p = q;
    n = m;
  }
  mesh_free(p);
  uint64_t grown = stat_get("large_grown_in_place") - grown0;
  printf("info paged_moves %d grown_in_place %llu\n", paged_moves, (unsigned long long)grown);
  /* (one move is allowed: the pages after the block may be taken) */
  if (paged_moves > 1 || grown < 4) { NOTE("paged growth moved %d times, %llu in place", paged_moves, (unsigned long long)grown); ok = false; }
  void *s = mesh_malloc(5000);
  if (!s || mesh_usable_size(s) >= 8192) { NOTE("malloc(5000) took whole pages"); ok = false; }
  mesh_free(s);
  return ok && mesh_check_heap() == 0;
}

/* A freed large block of a few pages is parked: the next allocation of its
 * size gets it back, and a scavenge returns it to the arena. */
static bool check_large_block_parking(void) {
  bool ok = true;
  /* the end of a decay epoch (any trigger, or the meshing thread) returns
   * a parked block too: none ends during this check */
  long decay = mesh_option_get("dirty_decay_ms");
  mesh_option_set("dirty_decay_ms", 0);
  unsigned char *a = mesh_malloc(8000);
  if (!a) return false;
  memset(a, 3, 8000);
  mesh_free(a);
  if (mesh_check_heap() != 0) { NOTE("heap check fails with a parked block"); ok = false; }
  unsigned char *b = mesh_calloc(1, 8000);
  if (b != a) { NOTE("a freed 2-page block was not reused (%p, then %p)", (void *)a, (void *)b); ok = false; }
  for (size_t i = 0; b && i < 8000; i++)
    if (b[i]) { NOTE("calloc of a parked block: byte %zu is %d", i, b[i]); ok = false; break; }
  mesh_free(b);
  uint64_t before = stat_get("span_pages");
  mesh_scavenge();
  uint64_t after = stat_get("span_pages");
  if (after + 2 > before) { NOTE("scavenge kept the parked block (span pages %llu -> %llu)", (unsigned long long)before, (unsigned long long)after); ok = false; }
  mesh_option_set("dirty_decay_ms", decay);
  return ok && mesh_check_heap() == 0;
}

/* Allocates n blocks of 64 B and frees them all: most of their spans are
 * detached when they fill, so their last frees empty them. */
static bool churn_64(size_t n) {
  void **v = malloc(n * sizeof *v); /* (glibc's: not a block of the heap under test) */
  if (!v) return false;
  for (size_t i = 0; i < n; i++) {
    v[i] = mesh_malloc(64);
    if (!v[i]) return false;
    memset(v[i], (int)i, 64);
  }
  for (size_t i = 0; i < n; i++) mesh_free(v[i]);
  free(v);
  return true;
}

static void *churn_thread(void *arg) { return churn_64((size_t)(uintptr_t)arg) ? arg : NULL; }

/* Spans a thread's frees empty are kept by its heap (up to 32 pages) and
 * taken back by its next refill; scavenge and thread exit return them. */
static bool check_kept_spans(void) {
  bool ok = true;
  long decay = mesh_option_get("dirty_decay_ms");
  mesh_option_set("dirty_decay_ms", 0); /* no epoch ends during the check */
  mesh_scavenge();
  if (!churn_64(4000)) return false;
  uint64_t kept = stat_get("kept_pages");
  printf("info kept_pages %llu\n", (unsigned long long)kept);
  if (kept == 0 || kept > 32) { NOTE("after 4000 blocks freed, %llu pages kept", (unsigned long long)kept); ok = false; }
  if (mesh_check_heap() != 0) { NOTE("heap check fails with kept spans"); ok = false; }
  /* once the vector (at most 256 slots) runs dry, the class's refill
   * takes a kept span back */
  static void *v[512];
  int n = 0;
  while (n < 512 && stat_get("kept_pages") >= kept) v[n++] = mesh_malloc(64);
  if (n == 512) { NOTE("512 blocks of 64 B took no kept span"); ok = false; }
  while (n > 0) mesh_free(v[--n]);
  mesh_scavenge();
  if (stat_get("kept_pages") != 0) { NOTE("scavenge left %llu pages kept", (unsigned long long)stat_get("kept_pages")); ok = false; }
  pthread_t t;
  void *r = NULL;
  if (pthread_create(&t, NULL, churn_thread, (void *)(uintptr_t)4000) != 0 || pthread_join(t, &r) != 0 || !r) {
    NOTE("churn thread failed");
    ok = false;
  }
  if (stat_get("kept_pages") != 0) { NOTE("a thread's exit left %llu pages kept", (unsigned long long)stat_get("kept_pages")); ok = false; }
  mesh_option_set("dirty_decay_ms", decay);
  return ok && mesh_check_heap() == 0;
}

/* A FULL span that the thread which filled it frees into stays with that
 * thread: another thread's refills do not get its free slots (they did
 * when it went to the fullest occupancy bin, where refills look first),
 * the filling thread's next refill does. */
enum { KEPT_LIVE_N = 2048, KEPT_LIVE_OTHER = 256 };

static void *alloc_64_thread(void *arg) {
  void **out = arg;
  for (int i = 0; i < KEPT_LIVE_OTHER; i++)
    if (!(out[i] = mesh_malloc(64))) return NULL;
  return arg;
}

static bool in_pages(const void *p, const uintptr_t *pages, int n) {
  for (int k = 0; k < n; k++)
    if ((uintptr_t)p >> 12 == pages[k]) return true;
  return false;
}

static bool check_kept_live_spans(void) {
  bool ok = true;
  long decay = mesh_option_get("dirty_decay_ms");
  mesh_option_set("dirty_decay_ms", 0); /* no epoch ends during the check */
  mesh_scavenge();
  static void *v[KEPT_LIVE_N], *other[KEPT_LIVE_OTHER];
  static uintptr_t pages[32];
  int npages = 0;
  for (int i = 0; i < KEPT_LIVE_N; i++)
    if (!(v[i] = mesh_malloc(64))) return false;
  /* one block freed in each of up to 16 one-page spans filled long ago
   * (detached FULL: the vector holds at most 256 slots) */
  for (int i = 0; i < KEPT_LIVE_N / 2 && npages < 16; i++)
    if (v[i] && !in_pages(v[i], pages, npages)) {
      pages[npages++] = (uintptr_t)v[i] >> 12;
      mesh_free(v[i]);
      v[i] = NULL;
    }
  if (mesh_check_heap() != 0) { NOTE("heap check fails with spans kept live"); ok = false; }
  pthread_t t;
  void *r = NULL;
  if (pthread_create(&t, NULL, alloc_64_thread, other) != 0 || pthread_join(t, &r) != 0 || !r) {
    NOTE("allocating thread failed");
    return false;
  }
  int taken = 0;
  for (int i = 0; i < KEPT_LIVE_OTHER; i++) taken += in_pages(other[i], pages, npages);
  if (taken) { NOTE("another thread got %d blocks of the %d spans this one keeps", taken, npages); ok = false; }
  /* this thread's refill takes them back: within its vector's slots and
   * one refill's */
  int n = 0, back = 0;
  static void *w[512];
  while (n < 512 && !back) back = in_pages(w[n++] = mesh_malloc(64), pages, npages);
  if (!back) { NOTE("512 blocks of 64 B took no slot of the %d kept spans", npages); ok = false; }
  printf("info kept_live spans %d, taken back after %d blocks\n", npages, n);
  while (n > 0) mesh_free(w[--n]);
  for (int i = 0; i < KEPT_LIVE_OTHER; i++) mesh_free(other[i]);
  for (int i = 0; i < KEPT_LIVE_N; i++) mesh_free(v[i]);
  mesh_option_set("dirty_decay_ms", decay);
  return ok && mesh_check_heap() == 0;
}

static bool check_realloc_failure_intact(void) {
  bool ok = true;
  static const size_t sizes[] = {100, 3000, 50000, 2u << 20};
  for (size_t i = 0; i < 4; i++) {
    size_t n = sizes[i];
    unsigned char *p = mesh_malloc(n);
    if (!p) return false;
    pat_fill(p, n, n);
    char what[96];
    snprintf(what, sizeof what, "realloc(p[%zu], SIZE_MAX/2)", n);
    errno = 0; ok &= expect_null_enomem(what, mesh_realloc(p, SIZE_MAX / 2));
    snprintf(what, sizeof what, "realloc(p[%zu], SIZE_MAX)", n);
    errno = 0; ok &= expect_null_enomem(what, mesh_realloc(p, SIZE_MAX));
    if (pat_check(p, n, n) != (size_t)-1) { NOTE("block of %zu changed by a failed realloc", n); ok = false; }
    if (mesh_usable_size(p) < n) ok = false;
    mesh_free(p);
  }
  return ok;
}

static bool check_realloc_null(void) {
  unsigned char *p = mesh_realloc(NULL, 100);
  if (!p || !is_aligned(p, 16) || mesh_usable_size(p) < 100) return false;
  memset(p, 3, 100);
  mesh_free(p);
  p = mesh_realloc(NULL, 0);
  if (p) mesh_free(p);
  return true;
}

/* realloc(p, 0) is implementation-defined; whatever it does must be sane. */
static bool check_realloc_zero(void) {
  void *p = mesh_malloc(50);
  if (!p) return false;
  void *q = mesh_realloc(p, 0);
  if (q) mesh_free(q);
  return mesh_check_heap() == 0;
}

/* ---- aligned allocation ---------------------------------------------- */
static bool check_one_aligned(const char *fn, void *p, size_t align, size_t size) {
  if (!p) { NOTE("%s(align %zu, size %zu) NULL", fn, align, size); return false; }
  bool ok = true;
  if (!is_aligned(p, align)) { NOTE("%s(align %zu, size %zu) = %p misaligned", fn, align, size, p); ok = false; }
  if (mesh_usable_size(p) < size) { NOTE("%s(align %zu, size %zu): usable %zu", fn, align, size, mesh_usable_size(p)); ok = false; }
  if (!mesh_owns(p)) { NOTE("%s: mesh_owns = 0", fn); ok = false; }
  if (size) memset(p, 0x5c, size);
  return ok;
}

static bool check_aligned_allocs(void) {
  bool ok = true;
  for (size_t align = 16; align <= ((size_t)1 << 20); align <<= 1) {
    size_t sizes[] = {1, 16, align - 1, align, align + 1, align / 2 + 1, 3 * align, 100, 5000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
      size_t sz = sizes[k];
      enum { M = 4 };
      void *keep[3 * M];
      int nk = 0;
      for (int rep = 0; rep < M; rep++) {
        void *p = mesh_memalign(align, sz);
        ok &= check_one_aligned("memalign", p, align, sz);
        keep[nk++] = p;
        void *q = NULL;
        int rc = mesh_posix_memalign(&q, align, sz);
        if (rc != 0) { NOTE("posix_memalign(%zu, %zu) = %d", align, sz, rc); ok = false; q = NULL; }
        else ok &= check_one_aligned("posix_memalign", q, align, sz);
        keep[nk++] = q;
        void *r = mesh_aligned_alloc(align, sz);
        ok &= check_one_aligned("aligned_alloc", r, align, sz);
        keep[nk++] = r;
      }
      for (int i = 0; i < nk; i++) mesh_free(keep[i]);
    }
  }
  /* posix_memalign with alignment == sizeof(void*) is valid */
  void *p = NULL;
  if (mesh_posix_memalign(&p, sizeof(void *), 10) != 0 || !p) { NOTE("posix_memalign(sizeof(void*), 10) failed"); ok = false; }
  else { ok &= is_aligned(p, sizeof(void *)); mesh_free(p); }
  return ok;
}

static bool check_posix_memalign_einval(void) {
  static const size_t bad[] = {0, 1, 2, 4, 3, 12, 24, 48, 100, 4097, ((size_t)1 << 20) + 16};
  bool ok = true;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (bad[i] >= sizeof(void *) && (bad[i] & (bad[i] - 1)) == 0) continue;  /* valid on this ABI */
    void *out = (void *)0x1;
    int rc = mesh_posix_memalign(&out, bad[i], 64);
    if (rc != EINVAL) { NOTE("posix_memalign(align %zu) returned %d, expected EINVAL", bad[i], rc); ok = false; }
    if (rc == 0 && out) mesh_free(out);
  }
  return ok;
}

static bool check_aligned_alloc_einval(void) {
  static const size_t bad[] = {3, 24, 48, 100, 1000, 4097, 12288};
  bool ok = true;
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    errno = 0;
    void *p = mesh_aligned_alloc(bad[i], bad[i] * 4);
    int e = errno;
    if (p != NULL || e != EINVAL) {
      NOTE("aligned_alloc(%zu, %zu) = %p errno %d, expected NULL + EINVAL", bad[i], bad[i] * 4, p, e);
      ok = false;
      if (p) mesh_free(p);
    }
  }
  return ok;
}

/* memalign is lenient in glibc (rounds a bad alignment up); accept that or
 * EINVAL, but a returned block must at least be usable and 16-aligned. */
static bool check_memalign_odd_alignment(void) {
  bool ok = true;
  static const size_t odd[] = {24, 48, 100};
  for (size_t i = 0; i < 3; i++) {
    errno = 0;
    void *p = mesh_memalign(odd[i], 200);
    if (p) { ok &= is_aligned(p, 16) && mesh_usable_size(p) >= 200; memset(p, 1, 200); mesh_free(p); }
    else if (errno != EINVAL) { NOTE("memalign(%zu, 200) NULL with errno %d", odd[i], errno); ok = false; }
  }
  return ok;
}

/* Aligned requests must not cost a page when a class satisfies them
 * (docs/design.md, "Size classes"). */
static bool check_small_aligned_not_page_sized(void) {
  struct { size_t align, size; } cases[] = {{64, 100}, {32, 32}, {128, 200}, {256, 256}, {16, 10}, {64, 64}};
  bool ok = true;
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    enum { N = 100 };
    void *ps[N];
    uintptr_t pages[N];
    for (int i = 0; i < N; i++) {
      ps[i] = mesh_memalign(cases[c].align, cases[c].size);
      if (!ps[i]) return false;
      if (!is_aligned(ps[i], cases[c].align)) ok = false;
      size_t us = mesh_usable_size(ps[i]);
      if (us >= 4096) {
        if (i == 0) NOTE("memalign(%zu, %zu): usable_size %zu (page sized)", cases[c].align, cases[c].size, us);
        ok = false;
      }
      pages[i] = (uintptr_t)ps[i] >> 12;
    }
    qsort(pages, N, sizeof pages[0], cmp_ptr);
    int distinct = 1;
    for (int i = 1; i < N; i++) distinct += pages[i] != pages[i - 1];
    if (distinct > N / 2) { NOTE("memalign(%zu, %zu) x%d spans %d pages", cases[c].align, cases[c].size, N, distinct); ok = false; }
    for (int i = 0; i < N; i++) mesh_free(ps[i]);
    /* the same through posix_memalign and aligned_alloc */
    void *p = NULL;
    if (mesh_posix_memalign(&p, cases[c].align, cases[c].size) || !p) return false;
    if (mesh_usable_size(p) >= 4096) { NOTE("posix_memalign(%zu, %zu) page sized", cases[c].align, cases[c].size); ok = false; }
    mesh_free(p);
    p = mesh_aligned_alloc(cases[c].align, cases[c].size);
    if (!p) return false;
    if (mesh_usable_size(p) >= 4096) { NOTE("aligned_alloc(%zu, %zu) page sized", cases[c].align, cases[c].size); ok = false; }
    mesh_free(p);
  }
  return ok;
}

static bool check_valloc_pvalloc(void) {
  long pg = sysconf(_SC_PAGESIZE);
  bool ok = true;
  static const size_t sizes[] = {0, 1, 100, 4095, 4096, 4097, 5000, 70000};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t sz = sizes[i];
    void *p = mesh_valloc(sz);
    if (!p) { NOTE("valloc(%zu) NULL", sz); ok = false; continue; }
    if (!is_aligned(p, (size_t)pg)) { NOTE("valloc(%zu) = %p not page aligned", sz, p); ok = false; }
    if (mesh_usable_size(p) < sz) ok = false;
    if (sz) memset(p, 9, sz);
    void *q = mesh_pvalloc(sz);
    if (!q) { NOTE("pvalloc(%zu) NULL", sz); ok = false; mesh_free(p); continue; }
    size_t rounded = (sz + (size_t)pg - 1) / (size_t)pg * (size_t)pg;  /* glibc: pvalloc(0) rounds to 0 */
    if (!is_aligned(q, (size_t)pg)) { NOTE("pvalloc(%zu) = %p not page aligned", sz, q); ok = false; }
    if (mesh_usable_size(q) < rounded) { NOTE("pvalloc(%zu): usable %zu < %zu", sz, mesh_usable_size(q), rounded); ok = false; }
    else memset(q, 8, rounded);
    mesh_free(p);
    mesh_free(q);
  }
  return ok;
}

static int a_global;

static bool check_owns(void) {
  int on_stack = 0;
  bool ok = true;
  void *small = mesh_malloc(32), *large = mesh_malloc(1u << 20), *al = mesh_memalign(4096, 10);
  void *cal = mesh_calloc(4, 4), *va = mesh_valloc(10);
  void *ra = mesh_realloc(NULL, 20);
  void *objs[] = {small, large, al, cal, va, ra};
  for (int i = 0; i < 6; i++)
    if (!objs[i] || mesh_owns(objs[i]) != 1) { NOTE("mesh_owns(heap block #%d %p) != 1", i, objs[i]); ok = false; }
  if (mesh_owns(&on_stack) != 0) { NOTE("mesh_owns(stack) != 0"); ok = false; }
  if (mesh_owns(&a_global) != 0) { NOTE("mesh_owns(global) != 0"); ok = false; }
  if (mesh_owns(NULL) != 0) { NOTE("mesh_owns(NULL) != 0"); ok = false; }
  if (mesh_owns((void *)(uintptr_t)check_owns) != 0) { NOTE("mesh_owns(code) != 0"); ok = false; }
  if (mesh_owns((void *)~(uintptr_t)0) != 0) { NOTE("mesh_owns(~0) != 0"); ok = false; }
  void *libc = malloc(64);  /* libc's (or a sanitizer's) heap is not ours */
  if (libc && mesh_owns(libc) != 0) { NOTE("mesh_owns(libc malloc block) != 0"); ok = false; }
  free(libc);
  for (int i = 0; i < 6; i++) mesh_free(objs[i]);
  return ok;
}

static bool check_null_handling(void) {
  mesh_free(NULL);
  return mesh_usable_size(NULL) == 0;
}

/* A seeded random workload of malloc/calloc/realloc/memalign/free with
 * content checks, then mesh_check_heap() with blocks live and after
 * everything is freed. */
static bool check_heap_after_workload(uint64_t seed) {
  enum { SLOTS = 3000, OPS = 60000 };
  static unsigned char *ptr[SLOTS];
  static size_t len[SLOTS];
  rng_t r; rng_seed(&r, seed);
  bool ok = true;
  for (int op = 0; op < OPS; op++) {
    int i = (int)rng_below(&r, SLOTS);
    if (ptr[i]) {
      size_t bad = pat_check_sparse(ptr[i], len[i], (uint64_t)i, 256);
      if (bad != (size_t)-1) { NOTE("workload: slot %d (%zu B) corrupted at %zu", i, len[i], bad); ok = false; }
      if (rng_below(&r, 4) == 0) {
        size_t n = 1 + rng_below(&r, rng_below(&r, 16) == 0 ? 100000 : 1500);
        unsigned char *q = mesh_realloc(ptr[i], n);
        if (!q) return false;
        size_t keep = n < len[i] ? n : len[i];
        size_t head = keep < 256 ? keep : 256;  /* the prefix filled densely before */
        if (pat_check(q, head, (uint64_t)i) != (size_t)-1) { NOTE("workload: realloc of slot %d lost data", i); ok = false; }
        ptr[i] = q; len[i] = n;
        pat_fill_sparse(q, n, (uint64_t)i, 256);
      } else {
        mesh_free(ptr[i]);
        ptr[i] = NULL;
      }
      continue;
    }
    size_t n = rng_below(&r, rng_below(&r, 20) == 0 ? 70000 : 1024);
    switch (rng_below(&r, 4)) {
      case 0: ptr[i] = mesh_calloc(1, n); break;
      case 1: ptr[i] = mesh_memalign((size_t)16 << rng_below(&r, 6), n); break;
      default: ptr[i] = mesh_malloc(n); break;
    }
    if (!ptr[i]) { NOTE("workload: allocation of %zu failed", n); return false; }
    len[i] = n;
    pat_fill_sparse(ptr[i], n, (uint64_t)i, 256);
  }
  int problems = mesh_check_heap();
  if (problems) { NOTE("mesh_check_heap() = %d with blocks live", problems); ok = false; }
  for (int i = 0; i < SLOTS; i++) if (ptr[i]) { mesh_free(ptr[i]); ptr[i] = NULL; }
  problems = mesh_check_heap();
  if (problems) { NOTE("mesh_check_heap() = %d after freeing everything", problems); ok = false; }
  return ok;
}

static bool check_scavenge(void) {
  enum { N = 4000 };
  static void *ps[N];
  for (int i = 0; i < N; i++) { ps[i] = mesh_malloc(1000); if (!ps[i]) return false; memset(ps[i], 7, 1000); }
  for (int i = 0; i < N; i++) mesh_free(ps[i]);
  size_t punched = mesh_scavenge();
  printf("info scavenge_bytes %zu\n", punched);
  /* memory handed out after a scavenge is usable and zero-safe */
  for (int i = 0; i < N; i++) {
    unsigned char *p = mesh_calloc(1, 1000);
    if (!p) return false;
    for (int j = 0; j < 1000; j += 97) if (p[j]) return false;
    ps[i] = p;
  }
  for (int i = 0; i < N; i++) mesh_free(ps[i]);
  return mesh_check_heap() == 0;
}

/* ---- options and stats ----------------------------------------------- */
static bool check_options(void) {
  bool ok = true;
  int n = mesh_option_count();
  if (n <= 0) { NOTE("mesh_option_count() = %d", n); return false; }
  for (int i = 0; i < n; i++) {
    const char *name = mesh_option_name(i);
    const char *doc = mesh_option_doc(i);
    if (!name || !*name) { NOTE("option %d has no name", i); ok = false; continue; }
    for (const char *c = name; *c; c++)
      if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_')) { NOTE("option name '%s' not lower_case", name); ok = false; break; }
    if (!doc) { NOTE("option '%s' has no doc", name); ok = false; }
    errno = 0;
    long v = mesh_option_get(name);
    if (v == -1 && errno == ENOENT) { NOTE("option '%s' listed but get() says ENOENT", name); ok = false; }
    printf("info option %s = %ld\n", name, v);
    for (int j = 0; j < i; j++)
      if (mesh_option_name(j) && strcmp(mesh_option_name(j), name) == 0) { NOTE("option '%s' listed twice", name); ok = false; }
  }
  if (mesh_option_name(n) != NULL) { NOTE("mesh_option_name(count) != NULL"); ok = false; }
  errno = 0;
  if (mesh_option_get("no_such_option_xyz") != -1 || errno != ENOENT) { NOTE("get(unknown) not -1/ENOENT"); ok = false; }
  errno = 0;
  if (mesh_option_set("no_such_option_xyz", 1) != -1 || errno != ENOENT) { NOTE("set(unknown) not -1/ENOENT"); ok = false; }
  /* abort_on_error: default 1, settable at run time */
  errno = 0;
  long aoe = mesh_option_get("abort_on_error");
  if (aoe == -1 && errno == ENOENT) { NOTE("no option abort_on_error"); return false; }
  const char *env = getenv("MESH_ABORT_ON_ERROR");
  if (env == NULL && aoe != 1) { NOTE("abort_on_error default is %ld, expected 1", aoe); ok = false; }
  if (mesh_option_set("abort_on_error", 0) != 0 || mesh_option_get("abort_on_error") != 0) { NOTE("set abort_on_error=0 did not stick"); ok = false; }
  if (mesh_option_set("abort_on_error", aoe) != 0 || mesh_option_get("abort_on_error") != aoe) { NOTE("restoring abort_on_error failed"); ok = false; }
  return ok;
}

static bool check_stats(void) {
  bool ok = true;
  int n = mesh_stats_count();
  if (n <= 0 || n > 4096) { NOTE("mesh_stats_count() = %d", n); return false; }
  for (int i = 0; i < n; i++) {
    const char *name = mesh_stats_name(i);
    if (!name || !*name) { NOTE("stat %d has no name", i); ok = false; continue; }
    if (!mesh_stats_doc(i)) { NOTE("stat '%s' has no doc", name); ok = false; }
    for (int j = 0; j < i; j++)
      if (mesh_stats_name(j) && strcmp(mesh_stats_name(j), name) == 0) { NOTE("stat '%s' listed twice", name); ok = false; }
  }
  if (mesh_stats_name(n) != NULL) { NOTE("mesh_stats_name(count) != NULL"); ok = false; }
  uint64_t buf[4096 + 4];
  for (int i = 0; i < n + 4; i++) buf[i] = 0xdeadbeefcafef00dull;
  int got = mesh_stats_read(buf, n);
  if (got != n) { NOTE("mesh_stats_read(n) = %d, count %d", got, n); ok = false; }
  for (int i = 0; i < n; i++) printf("info stat %s = %llu\n", mesh_stats_name(i), (unsigned long long)buf[i]);
  if (buf[n] != 0xdeadbeefcafef00dull) { NOTE("mesh_stats_read wrote past n"); ok = false; }
  /* a short buffer is respected */
  if (n >= 2) {
    for (int i = 0; i < n + 4; i++) buf[i] = 0xdeadbeefcafef00dull;
    got = mesh_stats_read(buf, 1);
    if (got != n) { NOTE("mesh_stats_read(buf, 1) = %d, expected %d", got, n); ok = false; }
    if (buf[1] != 0xdeadbeefcafef00dull) { NOTE("mesh_stats_read(buf, 1) wrote past 1"); ok = false; }
  }
  /* the MALLOCSTATS summary */
  char path[] = "/tmp/mesh-test-api-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) return ok;
  unlink(path);
  mesh_stats_print(fd);
  char text[16384];
  ssize_t len = pread(fd, text, sizeof text - 1, 0);
  close(fd);
  text[len > 0 ? len : 0] = 0;
  static const char *fields[] = {"MESH COUNT:", "Meshed MB (total):", "Meshed pages HWM:", "Meshed MB HWM:",
                                 "MH Alloc Count:", "MH Free  Count:", "MH High Water Mark:"};
  for (int i = 0; i < 7; i++)
    if (!strstr(text, fields[i])) { NOTE("mesh_stats_print output lacks '%s'", fields[i]); ok = false; }
  return ok;
}

static bool check_version(void) {
  const char *v = mesh_version();
  return v && strcmp(v, MESH_VERSION_STRING) == 0;
}

static bool check_meshing_available(void) {
  const char *env = getenv("MESH_MEMFD");
  int avail = mesh_meshing_available();
  printf("info meshing_available %d\n", avail);
  if (avail != 0 && avail != 1) return false;
  if (env && strcmp(env, "0") == 0) return avail == 0;
  return avail == 1;
}

/* The arena is reserved with a PROT_NONE guard right above it (arena.c,
 * ARENA_GUARD: keeps its first spans from mirroring the lines of the mapping
 * above at a power-of-two distance). From the mapping that holds a fresh
 * block, over the arena's contiguous read-write mappings, the next mapping
 * must be that guard. */
/* Large blocks the arena cannot hold are mapped on their own (direct.c):
 * only exercised when the arena is small (MESH_ARENA_GB=1), so that a block
 * bigger than it costs no real memory. */
static bool check_direct_blocks(void) {
  uint64_t arena = stat_get("arena_reserved_bytes");
  if (arena == 0 || arena > ((uint64_t)4 << 30)) {
    printf("info direct_blocks skipped (arena %llu MiB)\n", (unsigned long long)(arena >> 20));
    return true;
  }
  bool ok = true;
  size_t size = (size_t)arena + (1u << 20);
  unsigned char *p = mesh_malloc(size);
  if (!p) { NOTE("malloc(arena + 1 MiB) failed (errno %d)", errno); return false; }
  p[0] = 0x11, p[size - 1] = 0x22;
  if (!mesh_owns(p) || mesh_usable_size(p) < size) { NOTE("direct block not owned or too small"); ok = false; }
  if (stat_get("direct_alloc_count") < 1 || stat_get("direct_bytes_in_use") < size) { NOTE("direct stats"); ok = false; }
  unsigned char *q = mesh_realloc(p, size + (8u << 20));
  if (!q || q[0] != 0x11 || q[size - 1] != 0x22) { NOTE("direct realloc lost the contents"); ok = false; }
  if (q) p = q;
  q = mesh_realloc(p, 100); /* back to a small block in the arena */
  if (!q || q[0] != 0x11 || !mesh_owns(q)) { NOTE("direct realloc to small"); ok = false; }
  if (q) mesh_free(q);
  if (stat_get("direct_bytes_in_use") != 0) { NOTE("direct bytes left: %llu", (unsigned long long)stat_get("direct_bytes_in_use")); ok = false; }
  void *a = mesh_memalign((size_t)1 << 21, size);
  if (!a || ((uintptr_t)a & (((uintptr_t)1 << 21) - 1))) { NOTE("direct memalign(2 MiB) %p", a); ok = false; }
  unsigned char *z = mesh_calloc(1, size);
  if (!z || z[0] || z[size / 2] || z[size - 1]) { NOTE("direct calloc not zero"); ok = false; }
  mesh_free(a);
  mesh_free(z);
  if (stat_get("direct_free_count") != stat_get("direct_alloc_count")) { NOTE("direct frees"); ok = false; }
  printf("info direct_blocks %llu\n", (unsigned long long)stat_get("direct_alloc_count"));
  return ok;
}

static bool check_arena_guard(void) {
  struct rlimit rl; /* under an address-space limit there is no gap: it would count against the limit */
  if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    printf("info arena_guard none (RLIMIT_AS set)\n");
    return true;
  }
  enum { MAXV = 4096 };
  static uintptr_t lo[MAXV], hi[MAXV];
  static char prot[MAXV][5];
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return false;
  char line[512];
  int n = 0;
  while (n < MAXV && fgets(line, sizeof line, f))
    if (sscanf(line, "%lx-%lx %4s", &lo[n], &hi[n], prot[n]) == 3) n++;
  fclose(f);
  void *p = mesh_malloc(64);
  uintptr_t a = (uintptr_t)p;
  mesh_free(p);
  int i = 0;
  while (i < n && !(lo[i] <= a && a < hi[i])) i++;
  if (i == n) return false;
  while (i + 1 < n && lo[i + 1] == hi[i] && strncmp(prot[i + 1], "rw", 2) == 0) i++;
  if (i + 1 == n || lo[i + 1] != hi[i]) return false;
  printf("info arena_guard %s %lu KiB\n", prot[i + 1], (unsigned long)((hi[i + 1] - lo[i + 1]) >> 10));
  return strcmp(prot[i + 1], "---p") == 0 && hi[i + 1] - lo[i + 1] >= ((uintptr_t)32 << 20);
}

/* The figure the process publishes for readers in other processes is
 * counted from the per-class counts of detached spans, the figure read in
 * process by a walk of every span: on a quiet heap of FULL, partial, empty,
 * attached and meshed spans of many classes, both must agree exactly.
 * mesh_compact() publishes as it ends, and nothing allocates after it. */
static bool check_published_bytes_in_use(uint64_t seed) {
  enum { N = 60000 };
  static void *ps[N];
  rng_t r;
  rng_seed(&r, seed ^ 0x9e3779b97f4a7c15ull);
  for (int i = 0; i < N; i++) ps[i] = mesh_malloc(1 + rng_below(&r, i % 3 ? 512 : 4000));
  for (int i = 0; i < N; i++)
    if (rng_below(&r, 100) < 70) mesh_free(ps[i]), ps[i] = NULL;
  mesh_compact();
  uint64_t published = stat_get("bytes_in_use_published"), walked = stat_get("bytes_in_use");
  bool ok = true;
  if (stat_get("bytes_in_use_published_ns") == 0) {
    printf("info published_bytes_in_use skipped (no stats page)\n");
  } else if (published != walked) {
    NOTE("published %llu bytes in use, the walk counts %llu", (unsigned long long)published,
         (unsigned long long)walked);
    ok = false;
  }
  if (mesh_check_heap() != 0) { NOTE("mesh_check_heap"); ok = false; }
  for (int i = 0; i < N; i++) mesh_free(ps[i]);
  return ok;
}

int main(int argc, char **argv) {
  uint64_t seed = argc > 1 ? parse_u64(argv[1], 1) : 1;
  printf("info seed %llu\n", (unsigned long long)seed);
  setvbuf(stdout, NULL, _IOLBF, 0);

  CHECK("version", check_version());
  CHECK("meshing-available-matches-env", check_meshing_available());
  CHECK("malloc-zero-unique", check_malloc_zero());
  CHECK("malloc-aligned-16-and-usable", check_alignment_and_usable());
  CHECK("size-classes-16-byte-steps-to-512", check_class_steps());
  CHECK("live-blocks-disjoint", check_distinct_live_blocks());
  CHECK("calloc-zeroes-reused-memory", check_calloc_zeroes_reused_memory());
  CHECK("calloc-overflow", check_calloc_overflow());
  CHECK("reallocarray-overflow", check_reallocarray());
  CHECK("huge-requests-enomem", check_huge());
  CHECK("big-allocation-works-and-is-reused", check_big_but_possible());
  CHECK("realloc-keeps-min-bytes", check_realloc_keeps_data());
  CHECK("realloc-growth-past-a-page-takes-pages-in-place", check_realloc_growth_takes_pages());
  CHECK("freed-large-block-parked-reused-and-scavenged", check_large_block_parking());
  CHECK("emptied-spans-kept-by-their-thread-reused-and-released", check_kept_spans());
  CHECK("full-spans-freed-into-by-their-filler-stay-with-it", check_kept_live_spans());
  CHECK("realloc-failure-leaves-block", check_realloc_failure_intact());
  CHECK("realloc-null", check_realloc_null());
  CHECK("realloc-zero-sane", check_realloc_zero());
  CHECK("aligned-16-to-1MiB", check_aligned_allocs());
  CHECK("posix-memalign-einval", check_posix_memalign_einval());
  CHECK("aligned-alloc-einval", check_aligned_alloc_einval());
  CHECK("memalign-odd-alignment", check_memalign_odd_alignment());
  CHECK("small-aligned-not-page-sized", check_small_aligned_not_page_sized());
  CHECK("valloc-pvalloc-page-aligned", check_valloc_pvalloc());
  CHECK("mesh-owns", check_owns());
  CHECK("free-null-usable-size-null", check_null_handling());
  CHECK("check-heap-after-random-workload", check_heap_after_workload(seed));
  CHECK("scavenge", check_scavenge());
  CHECK("options-table", check_options());
  CHECK("stats-table", check_stats());
  CHECK("arena-guard-above", check_arena_guard());
  CHECK("direct-blocks-beyond-the-arena", check_direct_blocks());
  CHECK("published-bytes-in-use-match-the-walk", check_published_bytes_in_use(seed));

  printf("%d passed, %d failed\n", n_passed, n_failed);
  return n_failed == 0 ? 0 : 1;
}
