/* test_bad_free.c - wrong usage: double and invalid frees (docs/design.md,
 * "Bad frees").
 *
 * One case per process, named by argv[1]:
 *   double-free-local              free(p); free(p) on the owning thread
 *   double-free-remote             two other threads free p one after the other
 *   double-free-local-then-remote  owner frees p, then another thread frees it
 *   double-free-remote-then-local  another thread frees p, then the owner does
 *   double-free-large              free(p); free(p) for a large (own-span) block
 *   double-free-large-parked       the same for a 2-page block, which its first
 *                                  free parks for reuse instead of freeing its span
 *   double-free-in-kept-span       300 blocks of 64 B freed, then the first again:
 *                                  its span was emptied and kept by the heap
 *   double-free-in-kept-live-span  300 blocks of 64 B, the first freed twice: its
 *                                  span, filled and detached FULL, is kept by the
 *                                  heap with its other 63 blocks live
 *   interior-small                 free(p + 16) for a live 64-byte block
 *   interior-large                 free(p + 4096) for a live 200 kB block
 *   never-allocated-slot           free of a slot start next to a live block
 *   never-allocated-far            free of an arena address far from any block
 *   double-free-local-below-top    free(p); free(q); free(p): p sits in the owner's
 *                                  vector under q when freed again
 *   double-free-local-after-reclaim  another thread frees p, the owner's reclaim
 *                                  takes it back into its vector, the owner frees p
 *   double-free-remote-in-owner-vector  owner frees p and then q, another thread
 *                                  frees p while it sits in the owner's vector
 *   valid-remote-free              control: legal cross-thread frees, no report
 *   valid-alias-frees              control: after meshing, the meshed spans are
 *                                  attached again and every survivor is freed
 *                                  through its (alias) address, by the owner and
 *                                  by another thread: no report; prints
 *                                  "ALIASES n" (the aliases there were)
 *   valid-live-data-not-key        control: live blocks hold every kind of data
 *                                  (0, ~0, addresses, random words, bytes copied
 *                                  out of blocks never written, across threads
 *                                  that exit and size classes that reuse pages)
 *                                  and are freed locally and remotely: no report
 *
 * Before the bad free the program prints "BAD <address>" on stdout. With
 * MESH_ABORT_ON_ERROR unset (default 1) the core must abort: the pytest side
 * checks for SIGABRT and the address in hex on stderr. With
 * MESH_ABORT_ON_ERROR=0 the core reports and returns; the program then
 * allocates many blocks of the same class and checks that no slot is handed
 * out twice (addresses unique, contents disjoint), that blocks live before the
 * bad free were not disturbed, and that mesh_check_heap() is 0; it prints
 * "CONTINUED" and "UNIQUE-OK" and exits 0.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mesh.h"
#include "testutil.h"

static void *free_in_thread_fn(void *p) { mesh_free(p); return NULL; }

static void free_in_thread(void *p) {
  pthread_t t;
  if (pthread_create(&t, NULL, free_in_thread_fn, p)) DIE("pthread_create failed");
  pthread_join(t, NULL);
}

static void *free_all_in_thread_fn(void *arg) {
  void **v = arg;
  for (; *v; v++) mesh_free(*v);
  return NULL;
}

/* Frees the NULL-terminated list v in another thread. */
static void free_all_in_thread(void **v) {
  pthread_t t;
  if (pthread_create(&t, NULL, free_all_in_thread_fn, v)) DIE("pthread_create failed");
  pthread_join(t, NULL);
}

/* A thread that allocates blocks of every size up to 1 KiB, writes data
 * that is not the free key into them (copied out of other blocks it never
 * wrote, too), frees most and exits with its vectors full: what it held
 * goes back to the global heap. */
static void *live_data_worker(void *arg) {
  rng_t r;
  rng_seed(&r, (uint64_t)(uintptr_t)arg);
  enum { N = 3000 };
  static __thread void *b[N];
  for (int i = 0; i < N; i++) {
    size_t n = 16 + 16 * (size_t)rng_below(&r, 64);
    uint64_t *w = b[i] = mesh_malloc(n);
    if (!w) DIE("malloc failed");
    if (i % 3 == 0) continue;  /* never written: its bytes are whatever the slot held */
    void *src = b[rng_below(&r, (uint64_t)i)];
    memcpy(w, src, n < 16 ? n : 16);  /* (blocks are >= 16 bytes) */
    w[1] = i % 5 == 0 ? 0 : i % 5 == 1 ? ~(uint64_t)0 : i % 5 == 2 ? (uint64_t)(uintptr_t)w : rng_next(&r);
  }
  for (int i = 0; i < N; i++)
    if (i % 4) mesh_free(b[i]), b[i] = NULL;
  return NULL;
}

static void announce(const void *bad) {
  printf("BAD %p\n", bad);
  fflush(stdout);
}

/* Allocate many blocks of `size` (and neighbouring sizes) and check the
 * allocator hands out every slot at most once. */
static int check_unique_after(size_t size, const void *bad) {
  enum { M = 20000 };
  static unsigned char *ps[M];
  static size_t lens[M];
  int failures = 0, seen_bad = 0;
  const int m = size > 16384 ? 64 : M;  /* large blocks: fewer, they are big */
  for (int i = 0; i < m; i++) {
    size_t n = (i % 4 == 3) ? size + 16 * (size_t)(i % 3) : size;
    ps[i] = mesh_malloc(n);
    lens[i] = n;
    if (!ps[i]) { printf("ALLOC-FAILED %zu\n", n); return 1; }
    pat_fill(ps[i], n, (uint64_t)i);
    if (ps[i] == bad) seen_bad++;
  }
  for (int i = 0; i < m; i++) {
    size_t at = pat_check(ps[i], lens[i], (uint64_t)i);
    if (at != (size_t)-1) {
      printf("OVERLAP block %p (#%d) overwritten at byte %zu\n", (void *)ps[i], i, at);
      failures++;
      break;
    }
  }
  static unsigned char *sorted[M];
  memcpy(sorted, ps, (size_t)m * sizeof ps[0]);
  qsort(sorted, (size_t)m, sizeof sorted[0], cmp_ptr);
  for (int i = 1; i < m; i++)
    if (sorted[i] == sorted[i - 1]) { printf("DUPLICATE %p\n", (void *)sorted[i]); failures++; break; }
  if (seen_bad > 1) { printf("DUPLICATE-BAD %p handed out %d times\n", bad, seen_bad); failures++; }
  for (int i = 0; i < m; i++) mesh_free(ps[i]);
  return failures;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 2) DIE("usage: test_bad_free CASE");
  const char *c = argv[1];

  /* blocks that stay live across the bad free and must not be disturbed */
  enum { KEEP = 200 };
  static unsigned char *keep[KEEP];
  for (int i = 0; i < KEEP; i++) {
    keep[i] = mesh_malloc(64);
    if (!keep[i]) DIE("malloc failed");
    pat_fill(keep[i], 64, 1000u + (unsigned)i);
  }

  size_t size = 64;
  void *bad = NULL;
  void *live = NULL;       /* a block the case keeps live (interior cases) */
  size_t live_len = 0;

  if (strcmp(c, "double-free-local") == 0) {
    bad = mesh_malloc(size);
    mesh_free(bad);
    announce(bad);
    mesh_free(bad);
  } else if (strcmp(c, "double-free-remote") == 0) {
    bad = mesh_malloc(size);
    free_in_thread(bad);
    announce(bad);
    free_in_thread(bad);
  } else if (strcmp(c, "double-free-local-then-remote") == 0) {
    bad = mesh_malloc(size);
    mesh_free(bad);
    announce(bad);
    free_in_thread(bad);
  } else if (strcmp(c, "double-free-remote-then-local") == 0) {
    bad = mesh_malloc(size);
    free_in_thread(bad);
    announce(bad);
    mesh_free(bad);
  } else if (strcmp(c, "double-free-large") == 0 || strcmp(c, "double-free-large-parked") == 0) {
    size = strcmp(c, "double-free-large") == 0 ? 200000 : 8000; /* 2 pages: parked by the first free */
    bad = mesh_malloc(size);
    memset(bad, 1, size);
    mesh_free(bad);
    announce(bad);
    mesh_free(bad);
  } else if (strcmp(c, "double-free-in-kept-span") == 0 || strcmp(c, "double-free-in-kept-live-span") == 0) {
    static void *v[300];
    size = 64;
    for (int i = 0; i < 300; i++) v[i] = mesh_malloc(size), memset(v[i], 1, size);
    for (int i = 0; i < (strcmp(c, "double-free-in-kept-span") == 0 ? 300 : 1); i++) mesh_free(v[i]);
    bad = v[0];
    announce(bad);
    mesh_free(bad);
  } else if (strcmp(c, "interior-small") == 0) {
    live = mesh_malloc(size);
    live_len = size;
    pat_fill(live, live_len, 77);
    bad = (unsigned char *)live + 16;
    announce(bad);
    mesh_free(bad);
  } else if (strcmp(c, "interior-large") == 0) {
    size = 200000;
    live = mesh_malloc(size);
    live_len = size;
    pat_fill(live, live_len, 77);
    bad = (unsigned char *)live + 4096;
    announce(bad);
    mesh_free(bad);
  } else if (strcmp(c, "never-allocated-slot") == 0) {
    size = 48;
    live = mesh_malloc(size);
    live_len = size;
    pat_fill(live, live_len, 77);
    /* the neighbouring slot in the same page: never allocated (this is the
     * only 48-byte block so far), or an interior pointer if the class is
     * coarser; invalid either way */
    uintptr_t a = (uintptr_t)live;
    bad = (void *)(((a & 4095) + 2 * size <= 4096) ? a + size : a - size);
    announce(bad);
    mesh_free(bad);
  } else if (strcmp(c, "never-allocated-far") == 0) {
    live = mesh_malloc(size);
    live_len = size;
    pat_fill(live, live_len, 77);
    uintptr_t a = (uintptr_t)live;
    for (int k = 35; k >= 22 && !bad; k--) {
      uintptr_t up = (a + ((uintptr_t)1 << k)) & ~(uintptr_t)4095;
      uintptr_t down = (a - ((uintptr_t)1 << k)) & ~(uintptr_t)4095;
      if (mesh_owns((void *)up)) bad = (void *)(up + 64);
      else if (a > ((uintptr_t)1 << k) && mesh_owns((void *)down)) bad = (void *)(down + 64);
    }
    if (!bad) { printf("SKIP no in-arena address far from the heap\n"); return 77; }
    announce(bad);
    mesh_free(bad);
  } else if (strcmp(c, "double-free-local-below-top") == 0 || strcmp(c, "double-free-remote-in-owner-vector") == 0) {
    /* p sits in the owner's vector under q when it is freed again, here
     * or by another thread */
    bad = mesh_malloc(size);
    void *q = mesh_malloc(size);
    mesh_free(bad);
    mesh_free(q);
    announce(bad);
    if (strcmp(c, "double-free-local-below-top") == 0) mesh_free(bad);
    else free_in_thread(bad);
  } else if (strcmp(c, "double-free-local-after-reclaim") == 0) {
    /* a class nothing else here uses: its first span serves all of a[],
     * and the owner's vector is empty when the first of them comes back */
    size = 208;
    enum { A = 8 };  /* every span has at least 8 slots */
    void *a[A + 1] = {0};
    for (int i = 0; i < A; i++)
      if (!(a[i] = mesh_malloc(size))) DIE("malloc failed");
    free_all_in_thread(a);
    static void *others[4096];
    void *r = NULL;
    int n = 0, k = -1;
    while (k < 0) {
      if (n == (int)(sizeof others / sizeof others[0])) DIE("the blocks freed by another thread never came back");
      r = others[n++] = mesh_malloc(size);
      for (int i = 0; i < A; i++)
        if (a[i] == r) k = i;
    }
    /* that allocation reclaimed every slot of a[] at once and handed out
     * r: the others sit in the vector */
    bad = a[(k + 1) % A];
    announce(bad);
    mesh_free(bad);
    for (int i = 0; i < n; i++) mesh_free(others[i]);
  } else if (strcmp(c, "valid-live-data-not-key") == 0) {
    for (int round = 0; round < 3; round++) {
      pthread_t t[3];
      for (int i = 0; i < 3; i++)
        if (pthread_create(&t[i], NULL, live_data_worker, (void *)(uintptr_t)(round * 3 + i + 1))) DIE("pthread_create failed");
      for (int i = 0; i < 3; i++) pthread_join(t[i], NULL);
      live_data_worker((void *)(uintptr_t)(100 + round));  /* this thread's vectors too */
    }
    /* blocks live across the threads' exits, freed by this thread and another */
    enum { V = 4000 };
    static void *vs[V + 1];
    rng_t r;
    rng_seed(&r, 42);
    for (int i = 0; i < V; i++) {
      size_t n = 16 + 16 * (size_t)(i % 64);
      uint64_t *w = vs[i] = mesh_malloc(n);
      if (!w) DIE("malloc failed");
      if (i) memcpy(w, vs[rng_below(&r, (uint64_t)i)], 16);
    }
    for (int i = 0; i < V; i += 2) mesh_free(vs[i]), vs[i] = NULL;
    int m = 0;
    for (int i = 1; i < V; i += 2) vs[m++] = vs[i];
    vs[m] = NULL;
    free_all_in_thread(vs);
  } else if (strcmp(c, "valid-alias-frees") == 0) {
    /* one-page spans of 16 slots; a span keeps the slots whose number is
     * its page number mod 4, so spans of different residues mesh (a
     * destination ends up partial: refills take it again) */
    size = 256;
    enum { M = 16 * 64 };
    static void *all[M], *kept[M], *fresh[M];
    int nk = 0;
    for (int i = 0; i < M; i++)
      if (!(all[i] = mesh_malloc(size))) DIE("malloc failed");
    for (int i = 0; i < M; i++) {
      uintptr_t a = (uintptr_t)all[i];
      if ((a & 4095) / 256 % 4 == (a >> 12) % 4) {
        pat_fill(all[i], size, (uint64_t)a);
        kept[nk++] = all[i];
      } else {
        mesh_free(all[i]);
      }
    }
    mesh_compact();
    printf("ALIASES %llu\n", (unsigned long long)stat_get("mesh_aliases"));
    for (int i = 0; i < nk; i++)
      if (pat_check(kept[i], size, (uint64_t)(uintptr_t)kept[i]) != (size_t)-1) DIE("survivor %p changed", kept[i]);
    /* One allocation per survivor freed keeps refills attaching the
     * partial spans, fullest (meshed destinations) first, while the
     * survivors go: each eighth by another thread, in pairs. */
    int nf = 0;
    for (int i = 0; i < nk; i++) {
      if (!(fresh[nf++] = mesh_malloc(size))) DIE("malloc failed");
      if (i % 8 == 6) {
        void *two[3] = {kept[i], kept[i + 1 < nk ? i + 1 : i], NULL};
        if (two[1] == two[0]) two[1] = NULL;
        free_all_in_thread(two);
        i++;
      } else {
        mesh_free(kept[i]);
      }
    }
    for (int i = 0; i < nf; i++) mesh_free(fresh[i]);
  } else if (strcmp(c, "valid-remote-free") == 0) {
    enum { V = 5000 };
    static void *vs[V];
    for (int i = 0; i < V; i++) vs[i] = mesh_malloc(16 + (size_t)(i % 50) * 16);
    for (int i = 0; i < V; i += 2) free_in_thread(vs[i]), vs[i] = NULL;
    for (int i = 1; i < V; i += 2) mesh_free(vs[i]);
  } else {
    DIE("unknown case %s", c);
  }

  printf("CONTINUED\n");
  int failures = check_unique_after(size, bad);
  for (int i = 0; i < KEEP; i++) {
    if (pat_check(keep[i], 64, 1000u + (unsigned)i) != (size_t)-1) {
      printf("CLOBBERED live block %p\n", (void *)keep[i]);
      failures++;
      break;
    }
  }
  if (live && pat_check(live, live_len, 77) != (size_t)-1) {
    printf("CLOBBERED the live block %p after the invalid free\n", live);
    failures++;
  }
  for (int i = 0; i < KEEP; i++) mesh_free(keep[i]);
  if (live) mesh_free(live);
  int problems = mesh_check_heap();
  if (problems) { printf("CHECK-HEAP %d problems\n", problems); failures++; }
  if (failures == 0) printf("UNIQUE-OK\n");
  return failures ? 1 : 0;
}
