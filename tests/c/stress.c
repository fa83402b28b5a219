/* stress.c - multi-threaded stress with deterministic seeded randomness.
 *
 * Exercises, concurrently:
 *   - worker threads that malloc/calloc/memalign/realloc random sizes (mostly
 *     small, some medium, ~1 % large up to 1 MiB), write a pattern over each
 *     block, and either free it locally or hand it to another worker through a
 *     mutex-protected queue so that it is freed remotely; every block's
 *     pattern is verified before it is freed or reallocated;
 *   - a thread-exit storm: hundreds of short-lived threads that allocate,
 *     free some blocks, free blocks other threads made, and exit while still
 *     holding blocks that workers (or main, at the end) free after the thread
 *     is gone; some of them allocate again from a pthread-key destructor that
 *     runs after the allocator's own thread-exit destructor (docs/design.md,
 *     "Fast paths and locking": the orphan heap);
 *   - at the end: every queue drained, everything freed, mesh_check_heap()==0.
 *
 * Usage: stress [seed [workers [iterations [storm_threads]]]]
 * The seed is printed; each thread's generator is derived from it, so a
 * failing seed replays the same per-thread sequences (scheduling differs).
 * Exit 0 on success, 1 on a detected corruption or heap problem.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mesh.h"
#include "testutil.h"

typedef struct {
  unsigned char *p;
  size_t n;
  uint64_t tag;
} obj_t;

/* A mutex-protected growable queue (its array comes from libc malloc: the
 * test's own bookkeeping is not what is being tested). */
typedef struct {
  pthread_mutex_t mu;
  obj_t *items;
  size_t len, cap;
} queue_t;

static uint64_t g_seed;
static int g_workers = 4;
static long g_iters = 200000;
static int g_storm = 300;
static queue_t *g_queues;        /* one per worker */
static queue_t g_graveyard;      /* blocks of exited threads, freed by main at the end */
static queue_t g_exchange;       /* blocks storm threads take from each other */
static atomic_long g_failures;
static atomic_long g_remote_frees;
static atomic_long g_storm_done;
static pthread_key_t g_late_key;
static atomic_ulong g_late_calls;

static void q_init(queue_t *q) {
  pthread_mutex_init(&q->mu, NULL);
  q->items = NULL; q->len = q->cap = 0;
}

static void q_push(queue_t *q, obj_t o) {
  pthread_mutex_lock(&q->mu);
  if (q->len == q->cap) {
    size_t cap = q->cap ? q->cap * 2 : 256;
    obj_t *items = realloc(q->items, cap * sizeof *items);
    if (!items) DIE("out of memory for queue");
    q->items = items; q->cap = cap;
  }
  q->items[q->len++] = o;
  pthread_mutex_unlock(&q->mu);
}

static bool q_pop(queue_t *q, obj_t *o) {
  pthread_mutex_lock(&q->mu);
  bool ok = q->len > 0;
  if (ok) *o = q->items[--q->len];
  pthread_mutex_unlock(&q->mu);
  return ok;
}

/* ---- blocks ------------------------------------------------------------ */
static size_t pick_size(rng_t *r) {
  uint64_t k = rng_below(r, 1000);
  if (k < 850) return rng_below(r, 513);              /* 0..512, Python-object sizes */
  if (k < 960) return 513 + rng_below(r, 4096);
  if (k < 990) return 4097 + rng_below(r, 60000);
  return 65537 + rng_below(r, (1u << 20) - 65536);    /* large */
}

static void fill(obj_t *o) { pat_fill_sparse(o->p, o->n, o->tag, 512); }

static bool verify(const obj_t *o, const char *where) {
  size_t at = pat_check_sparse(o->p, o->n, o->tag, 512);
  if (at == (size_t)-1) return true;
  long f = atomic_fetch_add(&g_failures, 1);
  if (f < 10)
    fprintf(stderr, "CORRUPTION (%s): block %p size %zu tag %#llx byte %zu is 0x%02x, expected 0x%02x\n",
            where, (void *)o->p, o->n, (unsigned long long)o->tag, at, o->p[at], pat_byte(o->tag, at));
  return false;
}

static obj_t make(rng_t *r) {
  obj_t o;
  o.n = pick_size(r);
  o.tag = rng_next(r);
  switch (rng_below(r, 10)) {
    case 0: o.p = mesh_calloc(1, o.n); break;
    case 1: o.p = mesh_memalign((size_t)16 << rng_below(r, 7), o.n); break;
    default: o.p = mesh_malloc(o.n); break;
  }
  if (!o.p) DIE("allocation of %zu bytes failed", o.n);
  if (mesh_usable_size(o.p) < o.n) {
    atomic_fetch_add(&g_failures, 1);
    fprintf(stderr, "usable_size(%p) = %zu < %zu\n", (void *)o.p, mesh_usable_size(o.p), o.n);
  }
  fill(&o);
  return o;
}

static void release(obj_t *o, const char *where) {
  verify(o, where);
  mesh_free(o->p);
  o->p = NULL;
}

/* ---- workers ------------------------------------------------------------ */
enum { LOCAL = 256 };

static void drain(queue_t *q) {
  obj_t o;
  while (q_pop(q, &o)) { release(&o, "remote free"); atomic_fetch_add(&g_remote_frees, 1); }
}

static void *worker(void *arg) {
  int id = (int)(intptr_t)arg;
  rng_t r;
  rng_seed(&r, g_seed * 1000003u + (uint64_t)id);
  obj_t local[LOCAL];
  memset(local, 0, sizeof local);
  for (long it = 0; it < g_iters; it++) {
    int s = (int)rng_below(&r, LOCAL);
    obj_t *o = &local[s];
    uint64_t op = rng_below(&r, 100);
    if (o->p && op < 6) {
      /* realloc: verify, resize, check the kept prefix, refill */
      verify(o, "before realloc");
      size_t n = 1 + pick_size(&r);  /* realloc(p, 0) may legitimately free */
      unsigned char *q = mesh_realloc(o->p, n);
      if (!q) DIE("realloc to %zu failed", n);
      size_t keep = n < o->n ? n : o->n;
      size_t head = keep < 512 ? keep : 512;
      if (pat_check(q, head, o->tag) != (size_t)-1) {
        atomic_fetch_add(&g_failures, 1);
        fprintf(stderr, "CORRUPTION: realloc %zu -> %zu lost the prefix\n", o->n, n);
      }
      o->p = q; o->n = n;
      fill(o);
    } else if (o->p) {
      if (g_workers > 1 && op < 55) {
        int to = (int)rng_below(&r, (uint64_t)g_workers - 1);
        if (to >= id) to++;
        verify(o, "before hand-off");
        q_push(&g_queues[to], *o);
        o->p = NULL;
      } else {
        release(o, "local free");
      }
    } else {
      *o = make(&r);
    }
    if ((it & 63) == 0) drain(&g_queues[id]);
  }
  for (int i = 0; i < LOCAL; i++) if (local[i].p) release(&local[i], "worker exit");
  drain(&g_queues[id]);
  return NULL;
}

/* ---- thread-exit storm --------------------------------------------------- */
/* Runs at thread exit, after the allocator's own destructor when the core
 * created its key first (glibc runs keys in creation order). Allocating here
 * must work and must not leak into a dead thread heap. */
static void late_destructor(void *v) {
  uintptr_t round = (uintptr_t)v;
  rng_t r;
  rng_seed(&r, g_seed * 31337u + atomic_fetch_add(&g_late_calls, 1) * 7919u + round);
  for (int i = 0; i < 8; i++) {
    obj_t o = make(&r);
    if (i & 1) q_push(&g_graveyard, o);
    else release(&o, "late destructor");
  }
  if (round < 2) pthread_setspecific(g_late_key, (void *)(round + 1));  /* run once more */
}

static void *short_lived(void *arg) {
  uint64_t n = (uint64_t)(uintptr_t)arg;
  rng_t r;
  rng_seed(&r, g_seed * 7777u + n);
  enum { MAXO = 100 };
  obj_t mine[MAXO];
  int count = 20 + (int)rng_below(&r, MAXO - 20);
  for (int i = 0; i < count; i++) mine[i] = make(&r);
  /* free some of our own, and some blocks that exited threads left behind */
  for (int i = 0; i < count; i += 3) release(&mine[i], "storm local free");
  obj_t o;
  for (int i = 0; i < 10 && q_pop(&g_exchange, &o); i++) release(&o, "storm foreign free");
  /* exit while holding the rest: workers, later storm threads and main free them */
  for (int i = 0; i < count; i++) {
    if (!mine[i].p) continue;
    uint64_t k = rng_below(&r, 3);
    if (k == 0 && g_workers > 0) q_push(&g_queues[rng_below(&r, (uint64_t)g_workers)], mine[i]);
    else if (k == 1) q_push(&g_exchange, mine[i]);
    else q_push(&g_graveyard, mine[i]);
  }
  if (n % 4 == 0) pthread_setspecific(g_late_key, (void *)(uintptr_t)1);
  atomic_fetch_add(&g_storm_done, 1);
  return NULL;
}

static void *storm(void *unused) {
  (void)unused;
  enum { BATCH = 8 };
  for (int done = 0; done < g_storm; done += BATCH) {
    pthread_t t[BATCH];
    int k = 0;
    for (; k < BATCH && done + k < g_storm; k++) {
      if (pthread_create(&t[k], NULL, short_lived, (void *)(uintptr_t)(done + k))) DIE("pthread_create failed");
    }
    for (int i = 0; i < k; i++) pthread_join(t[i], NULL);
  }
  return NULL;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  g_seed = argc > 1 ? parse_u64(argv[1], 1) : 1;
  if (argc > 2) g_workers = (int)parse_u64(argv[2], 4);
  if (argc > 3) g_iters = (long)parse_u64(argv[3], 200000);
  if (argc > 4) g_storm = (int)parse_u64(argv[4], 300);
  printf("stress seed=%llu workers=%d iterations=%ld storm_threads=%d\n",
         (unsigned long long)g_seed, g_workers, g_iters, g_storm);

  /* touch the allocator first so that its thread-exit key (if any) is
   * created before ours */
  mesh_free(mesh_malloc(1));
  if (pthread_key_create(&g_late_key, late_destructor)) DIE("pthread_key_create failed");

  g_queues = calloc((size_t)(g_workers > 0 ? g_workers : 1), sizeof *g_queues);
  for (int i = 0; i < g_workers; i++) q_init(&g_queues[i]);
  q_init(&g_graveyard);
  q_init(&g_exchange);

  pthread_t *ws = calloc((size_t)(g_workers > 0 ? g_workers : 1), sizeof *ws);
  for (int i = 0; i < g_workers; i++)
    if (pthread_create(&ws[i], NULL, worker, (void *)(intptr_t)i)) DIE("pthread_create failed");
  pthread_t st;
  if (pthread_create(&st, NULL, storm, NULL)) DIE("pthread_create failed");
  pthread_join(st, NULL);
  for (int i = 0; i < g_workers; i++) pthread_join(ws[i], NULL);

  /* everything still held: queues filled after their owner finished,
   * blocks of exited threads */
  for (int i = 0; i < g_workers; i++) drain(&g_queues[i]);
  drain(&g_exchange);
  drain(&g_graveyard);

  int problems = mesh_check_heap();
  long failures = atomic_load(&g_failures);
  printf("remote frees: %ld, storm threads finished: %ld, allocations after a thread's heap was gone: %llu\n",
         atomic_load(&g_remote_frees), atomic_load(&g_storm_done), (unsigned long long)stat_get("orphan_allocs"));
  if (problems) printf("mesh_check_heap() = %d\n", problems);
  if (failures) printf("%ld corruptions detected\n", failures);
  if (atomic_load(&g_storm_done) != g_storm) { printf("storm incomplete\n"); failures++; }
  printf("stress %s seed=%llu\n", (problems || failures) ? "FAILED" : "ok", (unsigned long long)g_seed);
  return (problems || failures) ? 1 : 0;
}
