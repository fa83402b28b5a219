/* test_order.c - allocation order within spans is randomized (docs/meshing.md,
 * "Allocation order").
 *
 * The order depends on the shuffle option (MESH_SHUFFLE, read back with
 * mesh_option_get):
 *   2 (objects): every slot at random. For several size classes, N fresh
 *     allocations in a row are tested against "sequential" in both
 *     directions: a random permutation of N items has about (N+1)/2
 *     ascending runs (a bump allocator ~1, a descending free list ~N), so
 *     N/4 < runs < 3N/4 is required; and fewer than half of the consecutive
 *     pairs may be exactly one slot apart.
 *   1 (rotated, the default): each span hands out its slots in address order
 *     from a random start, wrapping round once. Checked per span: the slot of
 *     the first allocation is spread (the spans start at distinct slots for
 *     at least half of min(spans, slots per span), not all at slot 0) and each span's sequence has at most
 *     one descending step (the wrap).
 * The signature printed for the pytest side is the list of start slots of
 * the 64-byte class's first spans (independent of where the arena was
 * mapped), so two processes, or two seeds, can be compared.
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

enum { N = 2048, MAX_SPANS = 64 };

static int n_passed, n_failed;
static void report(const char *name, bool ok) {
  if (ok) n_passed++; else n_failed++;
  printf("%s %s\n", ok ? "ok" : "FAIL", name);
}

static bool allocate(size_t size, void **ps) {
  for (int i = 0; i < N; i++) {
    ps[i] = mesh_malloc(size);
    if (!ps[i]) { printf("  note: malloc(%zu) NULL\n", size); return false; }
  }
  return true;
}

static bool order_is_random(size_t size, void **ps) {
  if (!allocate(size, ps)) return false;
  int runs = 1, steps = 0;
  for (int i = 1; i < N; i++) {
    uintptr_t a = (uintptr_t)ps[i - 1], b = (uintptr_t)ps[i];
    if (b < a) runs++;
    uintptr_t d = b > a ? b - a : a - b;
    if (d == size) steps++;
  }
  bool ok = runs > N / 4 && runs < 3 * N / 4 && steps < N / 2;
  printf("  %s class %zu: %d ascending runs (random ~%d), %d of %d neighbour steps\n",
         ok ? "info" : "note:", size, runs, (N + 1) / 2, steps, N - 1);
  return ok;
}

/* Per span (in order of first use): its start and its first slot index. */
static int span_starts(size_t size, void **ps, uintptr_t *base, int *first, int *descents) {
  int nspans = 0;
  uintptr_t last[MAX_SPANS];
  for (int i = 0; i < N; i++) {
    uintptr_t b = (uintptr_t)span_of(ps[i]), p = (uintptr_t)ps[i];
    int k = 0;
    while (k < nspans && base[k] != b) k++;
    if (k == nspans) {
      if (nspans == MAX_SPANS) break;
      base[k] = b;
      first[k] = (int)((p - b) / size);
      descents[k] = 0;
      nspans++;
    } else if (p < last[k]) {
      descents[k]++;
    }
    last[k] = p;
  }
  return nspans;
}

static bool order_is_rotated(size_t size, void **ps, int *sig, int *nsig) {
  if (!allocate(size, ps)) return false;
  uintptr_t base[MAX_SPANS];
  int first[MAX_SPANS], descents[MAX_SPANS];
  int nspans = span_starts(size, ps, base, first, descents);
  int distinct = 0, at_zero = 0, max_descents = 0;
  for (int k = 0; k < nspans; k++) {
    bool seen = false;
    for (int j = 0; j < k && !seen; j++) seen = first[j] == first[k];
    distinct += !seen;
    at_zero += first[k] == 0;
    if (descents[k] > max_descents) max_descents = descents[k];
  }
  if (sig) {
    *nsig = nspans < 8 ? nspans : 8;
    for (int k = 0; k < *nsig; k++) sig[k] = first[k];
  }
  void *start;
  int slots = (int)(mesh_span_of(ps[0], &start) / size), possible = nspans < slots ? nspans : slots;
  bool ok = nspans >= 4 && distinct * 2 >= possible && at_zero < nspans && max_descents <= 1;
  printf("  %s class %zu: %d spans, %d distinct start slots, %d start at 0, at most %d wrap(s) per span\n",
         ok ? "info" : "note:", size, nspans, distinct, at_zero, max_descents);
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
  enum { NSIZES = sizeof sizes / sizeof sizes[0] };
  static void *ps[NSIZES][N];
  char name[96];
  mesh_free(mesh_malloc(1)); /* options are read from the environment at init */
  long mode = mesh_option_get("shuffle");
  printf("info shuffle %ld\n", mode);
  int sig[8], nsig = 0;
  for (size_t k = 0; k < NSIZES; k++) {
    if (mode == 2) {
      snprintf(name, sizeof name, "allocation-order-random-class-%zu", sizes[k]);
      report(name, order_is_random(sizes[k], ps[k]));
    } else {
      snprintf(name, sizeof name, "allocation-starts-at-random-slot-class-%zu", sizes[k]);
      report(name, order_is_rotated(sizes[k], ps[k], sizes[k] == 64 ? sig : NULL, &nsig));
    }
  }
  if (mode == 2) { /* the rank order of the 64-byte class's first 8 spans' start slots */
    uintptr_t base[MAX_SPANS];
    int descents[MAX_SPANS], first[MAX_SPANS];
    int n = span_starts(64, ps[3], base, first, descents);
    nsig = n < 8 ? n : 8;
    for (int i = 0; i < nsig; i++) sig[i] = first[i];
  }
  printf("signature");
  for (int i = 0; i < nsig; i++) printf(" %d", sig[i]);
  printf("\n");

  for (int i = 0, n = mesh_option_count(); i < n; i++) {
    const char *opt = mesh_option_name(i);
    if (opt && strstr(opt, "seed")) printf("info seed-option %s\n", opt);
  }

  for (size_t k = 0; k < NSIZES; k++)
    for (int i = 0; i < N; i++) mesh_free(ps[k][i]);
  report("check-heap", mesh_check_heap() == 0);
  printf("%d passed, %d failed\n", n_passed, n_failed);
  return n_failed ? 1 : 0;
}
