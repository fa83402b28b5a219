/* realloc_grow.c - several threads growing blocks by realloc at once.
 *
 * Each thread, round after round, grows one block from 64 bytes to the
 * limit by 1/8 a step (CPython's list and bytearray growth), writing the
 * new bytes with a pattern of its own and checking the old ones after every
 * step (all of them up to 64 KiB, the edges and a byte a page above; all
 * of them at the end of the round). In between it keeps small blocks and
 * now and then a large block for a few rounds, so other spans and other
 * threads' large blocks sit in the arena beside the growing ones, and some
 * rounds shrink the block to half halfway and grow it again. A block that
 * moved, a byte another thread wrote, a usable size under what was asked,
 * or a heap that mesh_check_heap() finds wrong fails the run.
 *
 * Prints "realloc_grow ok" and the growth counters: large blocks grown in
 * place and large blocks copied because the pages after them were taken.
 *
 * Usage: realloc_grow [threads [rounds [limit_kib [seed]]]]
 * Exit 0 on success, 1 on a detected corruption or heap problem.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "mesh.h"
#include "testutil.h"

#define MAX_THREADS 64
#define KEEP_SMALL 32 /* small blocks a thread holds at once */

static int g_threads = 4;
static long g_rounds = 40;
static size_t g_limit = 1 << 20;
static uint64_t g_seed = 1;
static atomic_long g_failures;

static size_t grow_step(size_t n) { return (n + (n >> 3) + 16) & ~(size_t)15; }

static void fail(int t, long round, const char *what, size_t size, size_t at) {
  fprintf(stderr, "CORRUPTION: thread %d round %ld: %s (size %zu, byte %zu)\n", t, round, what, size, at);
  atomic_fetch_add(&g_failures, 1);
}

/* Checks the first n bytes of p (tag's pattern): all of them for small
 * blocks, or when full is set; else the edges and a byte a page. */
static bool check(const unsigned char *p, size_t n, uint64_t tag, bool full, int t, long round, const char *what) {
  size_t bad = full || n <= 65536 ? pat_check(p, n, tag) : pat_check_sparse(p, n, tag, 256);
  if (bad == (size_t)-1) return true;
  fail(t, round, what, n, bad);
  return false;
}

/* One round: grows a block to the limit (with a shrink halfway when
 * shrink is set) and frees it. */
static void grow_round(int t, long round, bool shrink) {
  uint64_t tag = (uint64_t)t << 32 | (uint64_t)round;
  size_t have = 64;
  unsigned char *p = mesh_malloc(have);
  if (!p) DIE("malloc(64) failed");
  pat_fill(p, have, tag);
  bool shrunk = false;
  while (have < g_limit) {
    size_t want = grow_step(have);
    if (shrink && !shrunk && want > g_limit / 2) want = have / 2, shrunk = true;
    unsigned char *q = mesh_realloc(p, want);
    if (!q) DIE("realloc to %zu failed", want);
    if (mesh_usable_size(q) < want) fail(t, round, "usable size under the size asked", want, mesh_usable_size(q));
    size_t kept = want < have ? want : have;
    if (!check(q, kept, tag, false, t, round, "realloc lost the block's bytes")) break;
    for (size_t i = kept; i < want; i++) q[i] = pat_byte(tag, i);
    p = q;
    have = want;
  }
  check(p, have, tag, true, t, round, "the grown block changed");
  mesh_free(p);
}

static void *worker(void *arg) {
  int t = (int)(intptr_t)arg;
  rng_t r;
  rng_seed(&r, g_seed * 1000003u + (uint64_t)t);
  unsigned char *small[KEEP_SMALL] = {0};
  size_t small_n[KEEP_SMALL] = {0};
  unsigned char *big = NULL;
  size_t big_n = 0;
  long big_until = 0;
  for (long round = 0; round < g_rounds && !atomic_load(&g_failures); round++) {
    /* other spans beside the growing block: small blocks replaced at random
     * and, a third of the rounds, a large block kept for a few rounds */
    for (int k = 0; k < 8; k++) {
      unsigned i = (unsigned)rng_below(&r, KEEP_SMALL);
      if (small[i] && !check(small[i], small_n[i], (uint64_t)t << 40 | i, true, t, round, "a small block changed"))
        break;
      mesh_free(small[i]);
      small_n[i] = 16 + rng_below(&r, 2048);
      if (!(small[i] = mesh_malloc(small_n[i]))) DIE("malloc failed");
      pat_fill(small[i], small_n[i], (uint64_t)t << 40 | i);
    }
    if (big && round >= big_until) {
      check(big, big_n, (uint64_t)t << 48, false, t, round, "a kept large block changed");
      mesh_free(big);
      big = NULL;
    }
    if (!big && rng_below(&r, 3) == 0) {
      big_n = 20000 + rng_below(&r, 200000);
      if (!(big = mesh_malloc(big_n))) DIE("malloc(%zu) failed", big_n);
      pat_fill(big, big_n, (uint64_t)t << 48);
      big_until = round + 1 + (long)rng_below(&r, 4);
    }
    grow_round(t, round, rng_below(&r, 4) == 0);
  }
  for (int i = 0; i < KEEP_SMALL; i++) mesh_free(small[i]);
  mesh_free(big);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc > 1) g_threads = (int)parse_u64(argv[1], 4);
  if (argc > 2) g_rounds = (long)parse_u64(argv[2], 40);
  if (argc > 3) g_limit = (size_t)parse_u64(argv[3], 1024) << 10;
  if (argc > 4) g_seed = parse_u64(argv[4], 1);
  if (g_threads < 1 || g_threads > MAX_THREADS) DIE("threads: 1..%d", MAX_THREADS);
  /* the core initialised before the threads race to it, as stress.c does
   * (the fast path reads the class table with no acquire of the init) */
  mesh_free(mesh_malloc(1));
  pthread_t th[MAX_THREADS];
  for (int t = 0; t < g_threads; t++)
    if (pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t)) DIE("pthread_create failed");
  for (int t = 0; t < g_threads; t++) pthread_join(th[t], NULL);
  int bad = mesh_check_heap();
  if (bad) fprintf(stderr, "mesh_check_heap: %d problem(s)\n", bad);
  if (atomic_load(&g_failures) || bad) return 1;
  printf("realloc_grow ok threads=%d rounds=%ld limit=%zu grown_in_place=%llu moved=%llu\n", g_threads, g_rounds,
         g_limit, (unsigned long long)stat_get("large_grown_in_place"),
         (unsigned long long)stat_get("large_grow_moved"));
  return 0;
}
