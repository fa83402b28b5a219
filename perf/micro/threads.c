/* threads.c - one malloc workload in T threads, under whatever malloc the
 * process was given: one cell of `python -m perf micro-table`.
 *
 * The program calls only malloc, free and realloc, never an allocator's own
 * API, so LD_PRELOAD alone decides whose they are: nothing for glibc's,
 * libmesh.so for meshalloc's, Debian's libjemalloc, libtcmalloc_minimal or
 * libmimalloc for theirs. That is how a C program or CPython under
 * PYTHONMALLOC=malloc meets an allocator, PLT calls included. (bench.c, by
 * contrast, links the core in and calls mesh_malloc directly.)
 *
 * Tests; every thread does the same work, --iters of it:
 *   pair     p = malloc(size), first and last byte written, free(p)
 *            op = one malloc + free
 *   batch    BATCH blocks of size allocated (first byte written), then freed
 *            in one of NPERMS random orders, per iteration
 *            op = one malloc + its free
 *   remote   T producer/consumer pairs (2T threads), each pair through its
 *            own single-producer/single-consumer ring: the producer mallocs
 *            and writes, the consumer reads and frees, so every free is of
 *            a block another thread allocated
 *            op = one block passed (its malloc and its remote free)
 *   realloc  one block grown from GROW_START bytes by 1/8 per step (CPython's
 *            list and bytearray over-allocation) up to size, the new bytes
 *            written, then freed
 *            op = one realloc
 * Every block escapes through an empty asm, so the compiler can neither
 * elide a malloc/free pair nor keep a block in registers.
 *
 * Each thread runs a tenth of its work untimed first (first-touch faults, a
 * thread's heap and cache set-up), then all threads meet at a barrier and
 * the time is taken from the first thread's start to the last one's end.
 * Reported: ops summed over all threads per second, and per-thread ns/op =
 * that wall time over one thread's (one pair's) ops. With more threads than
 * CPUs the threads take turns, and both figures measure that.
 *
 * Output: one JSON line, with the library that defines malloc in this
 * process (dladdr), so the driver can refuse a cell whose preload did not
 * take. --calibrate instead prints the --iters that make one thread (one
 * pair) run about --target-ms, found under the process's malloc: the driver
 * calibrates once, under glibc, and gives every allocator the same counts.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../cbench.h"

#define BATCH 1000         /* blocks per batch iteration */
#define NPERMS 8           /* free orders a batch thread cycles through */
#define RING_SLOTS 256     /* capacity of a remote pair's ring (power of 2) */
#define GROW_START 64      /* realloc growth starts from this many bytes */
#define MAX_THREADS 256


static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t splitmix(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* CPython-style growth: new = old + old/8 + 16, rounded to 16 bytes. */
static long grow_steps(size_t limit) {
  long k = 0;
  for (size_t n = GROW_START; n < limit; n = cb_grow_step(n)) k++;
  return k;
}

enum { T_PAIR, T_BATCH, T_REMOTE, T_REALLOC, NTESTS };
static const char *TEST_NAME[NTESTS] = {"pair", "batch", "remote", "realloc"};

/* Single-producer/single-consumer ring, each index on its own cache line. */
typedef struct {
  _Alignas(64) _Atomic size_t tail; /* written by the producer */
  _Alignas(64) _Atomic size_t head; /* written by the consumer */
  _Alignas(64) void *slot[RING_SLOTS];
} ring_t;

typedef struct {
  int test, role; /* role in remote: 0 producer, 1 consumer */
  size_t size;
  long iters;
  ring_t *ring;
  uint16_t (*perms)[BATCH]; /* batch: this thread's free orders */
  pthread_barrier_t *bar;
  double t0, t1;
  unsigned sink; /* bytes the consumer read, so the reads stay */
} job_t;

/* Spin briefly, then give the CPU away: with more threads than CPUs the
 * partner thread may not be running at all. */
static void backoff(unsigned *spins) {
  if (++*spins < 64) __builtin_ia32_pause();
  else { sched_yield(); *spins = 0; }
}

static void pair_work(size_t size, long n) {
  for (long i = 0; i < n; i++) {
    char *p = malloc(size);
    p[0] = (char)i;
    p[size - 1] = (char)i;
    cb_escape(p);
    free(p);
  }
}

static void batch_work(size_t size, long n, uint16_t (*perms)[BATCH]) {
  void **ptrs = malloc(BATCH * sizeof(void *)); /* outside the timed blocks' class */
  for (long r = 0; r < n; r++) {
    for (int i = 0; i < BATCH; i++) {
      char *p = malloc(size);
      p[0] = (char)i;
      cb_escape(p);
      ptrs[i] = p;
    }
    const uint16_t *perm = perms[r % NPERMS];
    for (int i = 0; i < BATCH; i++) free(ptrs[perm[i]]);
  }
  free(ptrs);
}

static void realloc_work(size_t limit, long n) {
  for (long r = 0; r < n; r++) {
    size_t have = GROW_START;
    char *p = malloc(have);
    memset(p, (int)r, have);
    while (have < limit) {
      size_t want = cb_grow_step(have);
      p = realloc(p, want);
      memset(p + have, (int)r, want - have);
      cb_escape(p);
      have = want;
    }
    free(p);
  }
}

/* The ring's indices count blocks from the start of the ring's life, so a
 * warm-up and the timed run can follow each other on the same ring. */
static void produce(ring_t *q, size_t size, long n) {
  size_t tail = atomic_load_explicit(&q->tail, memory_order_relaxed);
  for (long i = 0; i < n; i++) {
    char *p = malloc(size);
    p[0] = (char)i;
    p[size - 1] = (char)i;
    unsigned spins = 0;
    while (tail - atomic_load_explicit(&q->head, memory_order_acquire) >= RING_SLOTS) backoff(&spins);
    q->slot[tail & (RING_SLOTS - 1)] = p;
    atomic_store_explicit(&q->tail, ++tail, memory_order_release);
  }
}

static unsigned consume(ring_t *q, size_t size, long n) {
  size_t head = atomic_load_explicit(&q->head, memory_order_relaxed);
  unsigned sum = 0;
  for (long i = 0; i < n; i++) {
    unsigned spins = 0;
    while (atomic_load_explicit(&q->tail, memory_order_acquire) == head) backoff(&spins);
    char *p = q->slot[head & (RING_SLOTS - 1)];
    atomic_store_explicit(&q->head, ++head, memory_order_release);
    sum += (unsigned char)p[0] + (unsigned char)p[size - 1];
    free(p);
  }
  return sum;
}

static void work(job_t *j, long n) {
  switch (j->test) {
  case T_PAIR: pair_work(j->size, n); break;
  case T_BATCH: batch_work(j->size, n, j->perms); break;
  case T_REALLOC: realloc_work(j->size, n); break;
  case T_REMOTE:
    if (j->role == 0) produce(j->ring, j->size, n);
    else j->sink += consume(j->ring, j->size, n);
    break;
  }
}

static void *thread_main(void *arg) {
  job_t *j = arg;
  work(j, j->iters / 10 > 0 ? j->iters / 10 : 1); /* warm-up, untimed */
  pthread_barrier_wait(j->bar);
  j->t0 = now_s();
  work(j, j->iters);
  j->t1 = now_s();
  return NULL;
}

/* Runs test with nthreads threads (remote: nthreads pairs) of iters each;
 * returns the wall time from the first timed start to the last end. */
static double run(int test, size_t size, int nthreads, long iters, uint64_t seed) {
  int n = test == T_REMOTE ? 2 * nthreads : nthreads;
  job_t *jobs = calloc((size_t)n, sizeof(job_t));
  pthread_t *th = calloc((size_t)n, sizeof(pthread_t));
  ring_t **rings = calloc((size_t)nthreads, sizeof(ring_t *));
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, (unsigned)n);
  for (int i = 0; i < n; i++) {
    job_t *j = &jobs[i];
    *j = (job_t){.test = test, .size = size, .iters = iters, .bar = &bar};
    if (test == T_REMOTE) {
      int pair = i / 2;
      if (i % 2 == 0) {
        rings[pair] = aligned_alloc(64, sizeof(ring_t));
        memset(rings[pair], 0, sizeof(ring_t));
      }
      j->ring = rings[pair];
      j->role = i % 2;
    }
    if (test == T_BATCH) { /* each thread its own orders: Fisher-Yates from its own seed */
      uint64_t s = seed + (uint64_t)i * 0x632BE59BD9B4E019ull;
      j->perms = malloc(sizeof(uint16_t[NPERMS][BATCH]));
      for (int k = 0; k < NPERMS; k++) {
        for (int x = 0; x < BATCH; x++) j->perms[k][x] = (uint16_t)x;
        for (int x = BATCH - 1; x > 0; x--) {
          int y = (int)(splitmix(&s) % (uint64_t)(x + 1));
          uint16_t t = j->perms[k][x];
          j->perms[k][x] = j->perms[k][y];
          j->perms[k][y] = t;
        }
      }
    }
  }
  /* Remote pairs: each pair's producer and consumer on two different CPUs
   * of the ones this process may use, pairs spread over them. Left to the
   * scheduler, a pair sometimes shares one CPU (the ring then fills, and
   * each switch hands over RING_SLOTS blocks at once, all in that CPU's
   * cache) and sometimes not (every block crosses caches): on the 2-CPU
   * VM this was written on, one glibc pair ran at 28 M ops/s in some runs
   * and 1-6 in others, a measure of placement rather than of remote frees
   * (pinned: 0.9-1.1 in every run). */
  cpu_set_t allowed;
  int cpus[CPU_SETSIZE], ncpus = 0;
  if (test == T_REMOTE && sched_getaffinity(0, sizeof(allowed), &allowed) == 0)
    for (int c = 0; c < CPU_SETSIZE; c++)
      if (CPU_ISSET(c, &allowed)) cpus[ncpus++] = c;
  for (int i = 0; i < n; i++) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (ncpus >= 2) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpus[i % ncpus], &one);
      pthread_attr_setaffinity_np(&attr, sizeof(one), &one);
    }
    if (pthread_create(&th[i], &attr, thread_main, &jobs[i]) != 0) {
      perror("pthread_create");
      exit(1);
    }
    pthread_attr_destroy(&attr);
  }
  for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&bar);
  double start = jobs[0].t0, end = jobs[0].t1;
  unsigned sink = 0;
  for (int i = 0; i < n; i++) {
    if (jobs[i].t0 < start) start = jobs[i].t0;
    if (jobs[i].t1 > end) end = jobs[i].t1;
    sink += jobs[i].sink;
    free(jobs[i].perms);
  }
  for (int p = 0; p < nthreads; p++) free(rings[p]);
  cb_escape(&sink);
  free(rings);
  free(th);
  free(jobs);
  return end - start;
}

/* ops one thread (one pair) does in one iteration */
static double ops_per_iter(int test, size_t size) {
  if (test == T_BATCH) return BATCH;
  if (test == T_REALLOC) return (double)grow_steps(size);
  return 1;
}

/* The iteration count that makes one thread run about target_ms: grow n
 * until a run takes a quarter of the target, then scale. */
static long calibrate(int test, size_t size, double target_ms, uint64_t seed) {
  long n = 1;
  for (;;) {
    double s = run(test, size, 1, n, seed);
    if (s >= target_ms / 4000.0 || n > (1L << 40)) {
      double want = (double)n * (target_ms / 1000.0) / (s > 0 ? s : 1e-9);
      return want < 1 ? 1 : (long)want;
    }
    n *= 4;
  }
}

static const char *malloc_library(void) {
  Dl_info info;
  void *(*volatile m)(size_t) = malloc; /* the definition the dynamic linker bound */
  if (dladdr((void *)m, &info) && info.dli_fname) return info.dli_fname;
  return "?";
}

static void usage(void) {
  fprintf(stderr, "usage: threads --test pair|batch|remote|realloc --size BYTES "
                  "(--threads T --iters N | --calibrate --target-ms MS) [--seed S]\n");
  exit(2);
}

int main(int argc, char **argv) {
  int test = -1, nthreads = 1, calib = 0;
  long size = 0, iters = 0;
  double target_ms = 50;
  uint64_t seed = 42;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--test") && i + 1 < argc) {
      const char *t = argv[++i];
      for (int k = 0; k < NTESTS; k++)
        if (!strcmp(t, TEST_NAME[k])) test = k;
    } else if (!strcmp(argv[i], "--size") && i + 1 < argc) size = atol(argv[++i]);
    else if (!strcmp(argv[i], "--threads") && i + 1 < argc) nthreads = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atol(argv[++i]);
    else if (!strcmp(argv[i], "--target-ms") && i + 1 < argc) target_ms = atof(argv[++i]);
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 0);
    else if (!strcmp(argv[i], "--calibrate")) calib = 1;
    else usage();
  }
  int max_threads = test == T_REMOTE ? MAX_THREADS / 2 : MAX_THREADS;
  if (test < 0 || size < 1 || nthreads < 1 || nthreads > max_threads || (!calib && iters < 1) || target_ms <= 0)
    usage();
  if (test == T_REALLOC && size <= GROW_START) usage();
  if (calib) {
    printf("{\"test\": \"%s\", \"size\": %ld, \"iters\": %ld}\n", TEST_NAME[test], size,
           calibrate(test, (size_t)size, target_ms, seed));
    return 0;
  }
  double secs = run(test, (size_t)size, nthreads, iters, seed);
  double per_thread = (double)iters * ops_per_iter(test, (size_t)size);
  double ops = per_thread * nthreads;
  printf("{\"test\": \"%s\", \"size\": %ld, \"threads\": %d, \"iters\": %ld, \"ops\": %.0f, "
         "\"seconds\": %.9f, \"mops\": %.6f, \"ns_per_op_thread\": %.6f, \"malloc_library\": \"%s\"}\n",
         TEST_NAME[test], size, nthreads, iters, ops, secs, ops / secs / 1e6, secs * 1e9 / per_thread,
         malloc_library());
  return 0;
}
