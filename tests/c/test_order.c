/* test_order.c - allocation order within a span is randomized (SPEC 3).
 *
 * Exercises the shuffle vectors: for several size classes, N fresh
 * allocations of one size are made in a row and the sequence of addresses is
 * tested against "sequential" in both directions:
 *   - ascending runs: a random permutation of N items has about (N+1)/2
 *     ascending runs; a bump or free-list allocator has ~1 (ascending) or ~N
 *     (descending). The check requires N/4 < runs < 3N/4.
 *   - neighbour steps: the fraction of consecutive pairs exactly one slot
 *     apart (+-size) must stay below 50 % (random: ~2/k for k slots per
 *     span; sequential: ~100 %).
 * It also prints a signature (the rank order of the first 32 addresses of the
 * 64-byte class, independent of where the arena was mapped) so that the
 * pytest side can check that two processes get different orders, and the
 * name of a seed option if the core has one.
 *
 * Prints "ok NAME" / "FAIL NAME" lines and "N passed, N failed".
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mesh.h"
#include "testutil.h"

enum { N = 512 };

static int n_passed, n_failed;
static void report(const char *name, bool ok) {
  if (ok) n_passed++; else n_failed++;
  printf("%s %s\n", ok ? "ok" : "FAIL", name);
}

static bool order_is_random(size_t size, void **ps) {
  for (int i = 0; i < N; i++) {
    ps[i] = mesh_malloc(size);
    if (!ps[i]) { printf("  note: malloc(%zu) NULL\n", size); return false; }
  }
  int runs = 1, steps = 0;
  for (int i = 1; i < N; i++) {
    uintptr_t a = (uintptr_t)ps[i - 1], b = (uintptr_t)ps[i];
    if (b < a) runs++;
    uintptr_t d = b > a ? b - a : a - b;
    if (d == size) steps++;
  }
  /* a random order of k slots per span puts ~2/k of the pairs next to each
   * other (25 % for 8 per span); a sequential allocator puts ~100 % */
  bool ok = runs > N / 4 && runs < 3 * N / 4 && steps < N / 2;
  printf("  %s class %zu: %d ascending runs (random ~%d), %d of %d neighbour steps\n",
         ok ? "info" : "note:", size, runs, (N + 1) / 2, steps, N - 1);
  return ok;
}

static int cmp_idx_addr(const void *a, const void *b, void *ctx) {
  void **ps = ctx;
  uintptr_t x = (uintptr_t)ps[*(const int *)a], y = (uintptr_t)ps[*(const int *)b];
  return x < y ? -1 : x > y;
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  static const size_t sizes[] = {16, 32, 48, 64, 80, 128, 256, 512, 1024, 2048};
  static void *ps[sizeof sizes / sizeof sizes[0]][N];
  char name[64];
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    snprintf(name, sizeof name, "allocation-order-random-class-%zu", sizes[k]);
    report(name, order_is_random(sizes[k], ps[k]));
  }

  /* signature of the 64-byte class: rank of each of the first 32 addresses */
  void **sig = NULL;
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) if (sizes[k] == 64) sig = ps[k];
  int idx[32];
  for (int i = 0; i < 32; i++) idx[i] = i;
  qsort_r(idx, 32, sizeof idx[0], cmp_idx_addr, sig);
  int rank[32];
  for (int i = 0; i < 32; i++) rank[idx[i]] = i;
  printf("signature");
  for (int i = 0; i < 32; i++) printf(" %d", rank[i]);
  printf("\n");

  for (int i = 0, n = mesh_option_count(); i < n; i++) {
    const char *opt = mesh_option_name(i);
    if (opt && strstr(opt, "seed")) printf("info seed-option %s\n", opt);
  }

  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
    for (int i = 0; i < N; i++) mesh_free(ps[k][i]);
  report("check-heap", mesh_check_heap() == 0);
  printf("%d passed, %d failed\n", n_passed, n_failed);
  return n_failed ? 1 : 0;
}
