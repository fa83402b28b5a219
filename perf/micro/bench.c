/* bench.c - glibc malloc vs the meshalloc core, side by side in one process.
 *
 * The core sources are linked in directly (not libmesh.so), so malloc/free
 * stay glibc's and mesh_malloc/mesh_free are the core's: both allocators
 * live in the same process and every test runs them in interleaved rounds
 * (round r runs glibc first when r is even, mesh first when r is odd). The
 * machine is shared and noisy, so the only claims this program makes are
 * medians and mesh/glibc ratios of runs taken seconds apart.
 *
 * Tests:
 *   a  malloc + free of one block immediately, per size, 1 thread
 *   b  the same pattern in 2 threads at once (time of the slower thread)
 *   c  batch: allocate 1000 blocks, free them in a random order
 *   d  producer/consumer: thread 1 allocates and pushes into a lock-free
 *      single-producer/single-consumer ring, thread 2 pops and frees
 *      (every mesh free is a remote free), reported as pairs per second
 *   e  realloc growth: one block grown by 1/8 per step (CPython's list and
 *      bytearray over-allocation), the new bytes written, up to a limit,
 *      then freed; ns per realloc
 *
 * Each test kernel is one always_inline function taking the allocator's
 * functions as parameters; the per-allocator wrappers pass constants, so
 * both allocators are reached by a direct call and pay the same loop
 * overhead. Every block gets one byte written, and escapes through an empty
 * asm so the compiler cannot elide a malloc/free pair.
 *
 * The iteration count of each test is calibrated once on glibc (to about
 * --target-ms per run) and then used unchanged for both allocators.
 *
 * Each test section (a..e) runs in a fresh process (this program re-runs
 * itself with --section), so heap state one section leaves behind (glibc's
 * fragmented bins, meshalloc's partial spans and dirty pages) never biases
 * the next; the sections send their results back over a pipe.
 *
 * --procs P runs each section in P processes one after another and pools
 * their rounds. One process is one draw of the address layout (ASLR, and
 * the physical pages behind it), and layout alone can move one size's time
 * by 2x on some CPUs (docs/design.md, "Store and load zones"); "worst proc"
 * is then the highest (for d: lowest) paired median of a single process.
 */
#include <errno.h>
#include <gnu/libc-version.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../cbench.h"
#include "mesh.h"

#define INLINE static inline __attribute__((always_inline))
#define NOINLINE __attribute__((noinline))

/* ---- workload parameters ------------------------------------------------ */
static const size_t SIZES[] = {16, 32, 48, 64, 128, 256, 512, 1024, 4096, 16384};
#define NSIZES (sizeof(SIZES) / sizeof(SIZES[0]))
#define SIZE_MIXED 0      /* size 0 in a test item means "the mixed distribution" */
#define BATCH 1000        /* blocks per batch in test c */
#define NPERMS 16         /* distinct free orders cycled through in test c */
#define RING_SLOTS 256    /* capacity of the producer/consumer ring (power of 2) */
#define MIXED_LEN 4096    /* length of the precomputed mixed-size sequence */
static const size_t RING_SIZES[] = {16, 64, 256, 1024, SIZE_MIXED};
#define NRING (sizeof(RING_SIZES) / sizeof(RING_SIZES[0]))
static const size_t GROW_LIMITS[] = {4096, 65536, 1 << 20, 16 << 20};
#define NGROW (sizeof(GROW_LIMITS) / sizeof(GROW_LIMITS[0]))

enum { CFG_GLIBC = 0, CFG_MESH = 1, NCFG = 2 };
static const char *CFG_NAME[NCFG] = {"glibc", "mesh"};

/* ---- small helpers ------------------------------------------------------ */

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t splitmix(void) { /* deterministic for a given --seed */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}
static double median(const double *v, int n) {
  double t[256];
  memcpy(t, v, (size_t)n * sizeof(double));
  qsort(t, (size_t)n, sizeof(double), cmp_double);
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* A Python-like mix: mostly 16..512 bytes in 16-byte steps, biased small,
 * with a few medium blocks (what a CPython process asks malloc for). */
static size_t mixed[MIXED_LEN];
static void make_mixed(void) {
  for (int i = 0; i < MIXED_LEN; i++) {
    uint64_t r = splitmix() % 1000;
    size_t s;
    if (r < 600) s = 16 + 16 * (splitmix() % 6);          /* 16..96   60 % */
    else if (r < 900) s = 112 + 16 * (splitmix() % 26);   /* 112..512 30 % */
    else if (r < 990) s = 528 + 16 * (splitmix() % 224);  /* ..4096    9 % */
    else s = 4096 + 64 * (splitmix() % 193);              /* ..16384   1 % */
    mixed[i] = s;
  }
}
static const char *size_label(size_t s, char *buf, size_t n) {
  if (s == SIZE_MIXED) snprintf(buf, n, "mixed");
  else if (s >= (1u << 20) && s % (1u << 20) == 0) snprintf(buf, n, "%zuM", s >> 20);
  else if (s >= 65536 && s % 1024 == 0) snprintf(buf, n, "%zuK", s >> 10);
  else snprintf(buf, n, "%zu", s);
  return buf;
}

/* CPython-style growth: new = old + old/8 + 16, 16-byte rounded. */
static long grow_steps(size_t limit) {
  long k = 0;
  for (size_t n = 0; n < limit; n = cb_grow_step(n)) k++;
  return k;
}

/* ---- kernels --------------------------------------------------------------
 * A and F are compile-time constants in every instantiation below. */
typedef void *(*alloc_fn)(size_t);
typedef void (*free_fn)(void *);
typedef void *(*realloc_fn)(void *, size_t);

INLINE void pair_kernel(alloc_fn A, free_fn F, size_t size, long n) {
  for (long i = 0; i < n; i++) {
    char *p = A(size);
    p[0] = (char)i;
    cb_escape(p);
    F(p);
  }
}

static uint16_t perms[NPERMS][BATCH];
INLINE void batch_kernel(alloc_fn A, free_fn F, size_t size, long reps) {
  void *ptrs[BATCH];
  unsigned mi = 0;
  for (long r = 0; r < reps; r++) {
    for (int i = 0; i < BATCH; i++) {
      size_t s = size ? size : mixed[mi++ & (MIXED_LEN - 1)];
      char *p = A(s);
      p[0] = (char)i;
      cb_escape(p);
      ptrs[i] = p;
    }
    const uint16_t *perm = perms[r & (NPERMS - 1)];
    for (int i = 0; i < BATCH; i++) F(ptrs[perm[i]]);
  }
}

INLINE void grow_kernel(realloc_fn R, free_fn F, size_t limit, long reps) {
  for (long r = 0; r < reps; r++) {
    char *p = NULL;
    for (size_t n = 0; n < limit;) {
      size_t m = cb_grow_step(n);
      p = R(p, m);
      memset(p + n, (int)r, m - n);
      cb_escape(p);
      n = m;
    }
    F(p);
  }
}

/* Single-producer/single-consumer ring, head and tail on their own lines. */
typedef struct {
  _Alignas(64) _Atomic size_t tail; /* written by the producer */
  _Alignas(64) _Atomic size_t head; /* written by the consumer */
  _Alignas(64) void *slot[RING_SLOTS];
} ring_t;

INLINE void backoff(unsigned *spins) {
  /* spin briefly, then give the core away: with 2 cores and other jobs the
   * partner thread may not be running at all */
  if (++*spins < 64) __builtin_ia32_pause();
  else { sched_yield(); *spins = 0; }
}

INLINE void produce_kernel(alloc_fn A, ring_t *q, size_t size, long n) {
  size_t tail = 0;
  unsigned mi = 0;
  for (long i = 0; i < n; i++) {
    size_t s = size ? size : mixed[mi++ & (MIXED_LEN - 1)];
    char *p = A(s);
    p[0] = (char)i;
    unsigned spins = 0;
    while (tail - atomic_load_explicit(&q->head, memory_order_acquire) >= RING_SLOTS) backoff(&spins);
    q->slot[tail & (RING_SLOTS - 1)] = p;
    atomic_store_explicit(&q->tail, ++tail, memory_order_release);
  }
}

INLINE void consume_kernel(free_fn F, ring_t *q, long n) {
  size_t head = 0;
  for (long i = 0; i < n; i++) {
    unsigned spins = 0;
    while (atomic_load_explicit(&q->tail, memory_order_acquire) == head) backoff(&spins);
    void *p = q->slot[head & (RING_SLOTS - 1)];
    atomic_store_explicit(&q->head, ++head, memory_order_release);
    F(p);
  }
}

/* Instantiations: direct calls to each allocator. */
#define INSTANTIATE(name, A, F, R)                                                           \
  static NOINLINE void pair_##name(size_t s, long n) { pair_kernel(A, F, s, n); }          \
  static NOINLINE void grow_##name(size_t s, long n) { grow_kernel(R, F, s, n); }          \
  static NOINLINE void batch_##name(size_t s, long n) { batch_kernel(A, F, s, n); }        \
  static NOINLINE void produce_##name(ring_t *q, size_t s, long n) { produce_kernel(A, q, s, n); } \
  static NOINLINE void consume_##name(ring_t *q, long n) { consume_kernel(F, q, n); }
INSTANTIATE(glibc, malloc, free, realloc)
INSTANTIATE(mesh, mesh_malloc, mesh_free, mesh_realloc)

static void (*const PAIR[NCFG])(size_t, long) = {pair_glibc, pair_mesh};
static void (*const BATCHF[NCFG])(size_t, long) = {batch_glibc, batch_mesh};
static void (*const GROW[NCFG])(size_t, long) = {grow_glibc, grow_mesh};
static void (*const PRODUCE[NCFG])(ring_t *, size_t, long) = {produce_glibc, produce_mesh};
static void (*const CONSUME[NCFG])(ring_t *, long) = {consume_glibc, consume_mesh};
static void *(*const ALLOC[NCFG])(size_t) = {malloc, mesh_malloc};
static void (*const FREE[NCFG])(void *) = {free, mesh_free};

/* ---- threaded runs -------------------------------------------------------- */
typedef struct {
  int cfg, role; /* role: 0 pair, 1 producer, 2 consumer */
  size_t size;
  long n;
  ring_t *ring;
  pthread_barrier_t *bar;
  double t0, t1;
} job_t;

static void *thread_main(void *arg) {
  job_t *j = arg;
  /* first allocation of a thread (heap creation, tcache init) is not timed */
  FREE[j->cfg](ALLOC[j->cfg](64));
  pthread_barrier_wait(j->bar);
  j->t0 = now_s();
  if (j->role == 0) PAIR[j->cfg](j->size, j->n);
  else if (j->role == 1) PRODUCE[j->cfg](j->ring, j->size, j->n);
  else CONSUME[j->cfg](j->ring, j->n);
  j->t1 = now_s();
  return NULL;
}

/* Runs two threads; returns the wall time from the barrier until the later
 * of the two finished. */
static double run_two(job_t jobs[2]) {
  pthread_t th[2];
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, 2);
  for (int i = 0; i < 2; i++) {
    jobs[i].bar = &bar;
    if (pthread_create(&th[i], NULL, thread_main, &jobs[i]) != 0) {
      perror("pthread_create");
      exit(1);
    }
  }
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  pthread_barrier_destroy(&bar);
  double start = jobs[0].t0 < jobs[1].t0 ? jobs[0].t0 : jobs[1].t0;
  double end = jobs[0].t1 > jobs[1].t1 ? jobs[0].t1 : jobs[1].t1;
  return end - start;
}

/* ---- one measurement -------------------------------------------------------
 * Returns seconds for n units of test t on allocator cfg. */
enum { T_PAIR = 0, T_PAIR2, T_BATCH, T_RING, T_GROW, NTESTS };
static const char *TEST_KEY[NTESTS] = {"a", "b", "c", "d", "e"};
static const char *TEST_TITLE[NTESTS] = {
    "(a) malloc+free pair, immediately freed, 1 thread      [ns per pair]",
    "(b) malloc+free pair, 2 threads at once                [ns per pair per thread]",
    "(c) batch: 1000 mallocs, then 1000 frees in random order [ns per malloc+free]",
    "(d) producer/consumer ring, thread 1 mallocs, thread 2 frees [Mpairs/s]",
    "(e) realloc growth by 1/8 per step up to size, new bytes written [ns per realloc]",
};

/* Test e times each run in a child forked for it, after a warm-up there.
 * glibc grows a block in place only while it is the last chunk of its heap,
 * so one glibc allocation made beside it by the other allocator's side of
 * this process (meshalloc's mesher thread: pthread_create allocates the
 * thread's TLS with glibc) turns glibc's growth into copies for the rest
 * of the process and would flatter meshalloc (4 KiB: glibc 8.6 -> 17 ns
 * per realloc). Every run starts from the same parent, whose own heaps
 * this test never touches. */
static double grow_isolated(int cfg, size_t size, long n) {
  int pfd[2];
  if (pipe(pfd) != 0) {
    perror("pipe");
    exit(1);
  }
  fflush(stdout);
  pid_t pid = fork();
  if (pid < 0) {
    perror("fork");
    exit(1);
  }
  if (pid == 0) {
    close(pfd[0]);
    GROW[cfg](size, n / 8 + 1);
    double t0 = now_s();
    GROW[cfg](size, n);
    double secs = now_s() - t0;
    _exit(write(pfd[1], &secs, sizeof secs) == (ssize_t)sizeof secs ? 0 : 1);
  }
  close(pfd[1]);
  double secs = 0;
  ssize_t got = read(pfd[0], &secs, sizeof secs);
  close(pfd[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  if (got != (ssize_t)sizeof secs || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "bench: the realloc growth child failed\n");
    exit(1);
  }
  return secs;
}

static double measure(int t, int cfg, size_t size, long n) {
  double t0, t1;
  switch (t) {
  case T_PAIR:
    t0 = now_s();
    PAIR[cfg](size, n);
    t1 = now_s();
    return t1 - t0;
  case T_BATCH:
    t0 = now_s();
    BATCHF[cfg](size, n);
    t1 = now_s();
    return t1 - t0;
  case T_GROW:
    return grow_isolated(cfg, size, n);
  case T_PAIR2: {
    job_t jobs[2] = {{.cfg = cfg, .role = 0, .size = size, .n = n},
                     {.cfg = cfg, .role = 0, .size = size, .n = n}};
    return run_two(jobs);
  }
  case T_RING: {
    ring_t *q = aligned_alloc(64, sizeof(ring_t)); /* glibc for both: outside both heaps' hot classes */
    memset(q, 0, sizeof(*q));
    job_t jobs[2] = {{.cfg = cfg, .role = 1, .size = size, .n = n, .ring = q},
                     {.cfg = cfg, .role = 2, .size = size, .n = n, .ring = q}};
    double s = run_two(jobs);
    free(q);
    return s;
  }
  }
  return 0;
}

/* operations (malloc+free pairs, or reallocs) done by one unit of n */
static double ops_per_unit(int t, size_t size) {
  if (t == T_BATCH) return BATCH;
  if (t == T_GROW) return (double)grow_steps(size);
  return 1;
}

/* ---- driver ---------------------------------------------------------------- */
#define MAX_ROUNDS 256 /* rounds x procs */
typedef struct {
  int test;
  size_t size;
  long n;
  int nrounds;               /* rounds in v (pooled over processes) */
  double v[NCFG][MAX_ROUNDS]; /* ns per pair (a,b,c) or Mpairs/s (d) */
  double med[NCFG];
  double ratio;              /* mesh/glibc of the medians */
  double pr_min, pr_med, pr_max; /* paired per-round ratios */
  double pr_worst_proc;      /* worst paired median of one process */
} result_t;

static int rounds = 7;
static int procs = 1;
static double target_ms = 25;
static uint64_t seed_arg = 42;
extern char **environ;

static double to_value(int t, size_t size, double secs, long n) {
  double pairs = (double)n * ops_per_unit(t, size);
  if (t == T_RING) return pairs / secs / 1e6;
  return secs * 1e9 / pairs;
}

static long calibrate(int t, size_t size) {
  long n = t == T_BATCH || t == T_GROW ? 1 : 4096;
  for (;;) {
    double s = measure(t, CFG_GLIBC, size, n);
    if (s >= target_ms / 4000.0 || n > (1L << 40)) {
      double want = (double)n * (target_ms / 1000.0) / (s > 0 ? s : 1e-9);
      return want < 1 ? 1 : (long)want;
    }
    n *= 4;
  }
}

/* Medians and paired ratios of r's nrounds rounds. */
static void summarize(result_t *r) {
  double pr[MAX_ROUNDS];
  int m = r->nrounds;
  for (int k = 0; k < m; k++) pr[k] = r->v[CFG_MESH][k] / r->v[CFG_GLIBC][k];
  for (int c = 0; c < NCFG; c++) r->med[c] = median(r->v[c], m);
  r->ratio = r->med[CFG_MESH] / r->med[CFG_GLIBC];
  r->pr_med = median(pr, m);
  r->pr_min = r->pr_max = pr[0];
  for (int k = 1; k < m; k++) {
    if (pr[k] < r->pr_min) r->pr_min = pr[k];
    if (pr[k] > r->pr_max) r->pr_max = pr[k];
  }
}

static void run_item(result_t *r) {
  r->n = calibrate(r->test, r->size);
  for (int c = 0; c < NCFG; c++) measure(r->test, c, r->size, r->n); /* warm-up, not recorded */
  for (int k = 0; k < rounds; k++) {
    for (int i = 0; i < NCFG; i++) {
      int c = k % 2 ? NCFG - 1 - i : i;
      r->v[c][k] = to_value(r->test, r->size, measure(r->test, c, r->size, r->n), r->n);
    }
  }
  r->nrounds = rounds;
  summarize(r);
  r->pr_worst_proc = r->pr_med;
}

/* Adds the rounds of one more process's run of the same item to r. */
static void pool_item(result_t *r, const result_t *more) {
  for (int k = 0; k < more->nrounds && r->nrounds < MAX_ROUNDS; k++, r->nrounds++)
    for (int c = 0; c < NCFG; c++) r->v[c][r->nrounds] = more->v[c][k];
  bool worse = r->test == T_RING ? more->pr_med < r->pr_worst_proc : more->pr_med > r->pr_worst_proc;
  if (worse) r->pr_worst_proc = more->pr_med;
  summarize(r);
}

static void print_header(int t) {
  printf("\n%s\n", TEST_TITLE[t]);
  printf("  %-6s %10s %10s %11s %8s  %-13s%s\n", "size", "glibc", "mesh", "mesh/glibc", "paired", "min..max",
         procs > 1 ? " worst proc" : "");
}

static void print_row(const result_t *r) {
  char b[32], mm[32];
  snprintf(mm, sizeof mm, "%.3f..%.3f", r->pr_min, r->pr_max);
  printf("  %-6s %10.2f %10.2f %11.3f %8.3f  %-13s", size_label(r->size, b, sizeof b), r->med[CFG_GLIBC],
         r->med[CFG_MESH], r->ratio, r->pr_med, mm);
  if (procs > 1) printf(" %10.3f", r->pr_worst_proc);
  printf("\n");
  fflush(stdout);
}

static double loadavg1(void) {
  double l = -1;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf", &l) != 1) l = -1;
    fclose(f);
  }
  return l;
}

static void write_json(const char *path, result_t *res, int nres, double load0, double load1, uint64_t seed) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "bench: cannot write %s: %s\n", path, strerror(errno));
    return;
  }
  fprintf(f, "{\n  \"benchmark\": \"meshalloc-micro\",\n");
  fprintf(f, "  \"meta\": {\"glibc\": \"%s\", \"mesh_version\": \"%s\", \"meshing_available\": %d, "
             "\"nproc\": %ld, \"rounds\": %d, \"procs\": %d, \"target_ms\": %g, \"seed\": %llu, "
             "\"loadavg_start\": %.2f, \"loadavg_end\": %.2f,\n"
             "           \"units\": {\"a\": \"ns/pair\", \"b\": \"ns/pair/thread\", \"c\": \"ns/pair\", "
             "\"d\": \"Mpairs/s\", \"e\": \"ns/realloc\"},\n"
             "           \"ratio\": \"mesh/glibc of the medians (a,b,c: time, lower is better for mesh; "
             "d: throughput, higher is better for mesh; e: time)\"},\n",
          gnu_get_libc_version(), mesh_version(), mesh_meshing_available(), sysconf(_SC_NPROCESSORS_ONLN), rounds,
          procs, target_ms, (unsigned long long)seed, load0, load1);
  fprintf(f, "  \"results\": [\n");
  for (int i = 0; i < nres; i++) {
    result_t *r = &res[i];
    char b[32];
    fprintf(f, "    {\"test\": \"%s\", \"size\": \"%s\", \"n\": %ld, \"glibc\": %.4f, \"mesh\": %.4f, "
               "\"ratio\": %.4f, \"paired_ratio_median\": %.4f, \"paired_ratio_min\": %.4f, "
               "\"paired_ratio_max\": %.4f, \"paired_ratio_worst_proc\": %.4f, \"rounds\": {",
            TEST_KEY[r->test], size_label(r->size, b, sizeof b), r->n, r->med[CFG_GLIBC], r->med[CFG_MESH], r->ratio,
            r->pr_med, r->pr_min, r->pr_max, r->pr_worst_proc);
    for (int c = 0; c < NCFG; c++) {
      fprintf(f, "%s\"%s\": [", c ? ", " : "", CFG_NAME[c]);
      for (int k = 0; k < r->nrounds; k++) fprintf(f, "%s%.4f", k ? ", " : "", r->v[c][k]);
      fprintf(f, "]");
    }
    fprintf(f, "}}%s\n", i + 1 < nres ? "," : "");
  }
  fprintf(f, "  ]\n}\n");
  fclose(f);
}

/* Runs section t in this process: prints its table, returns its results. */
static int run_section(int t, result_t *res, bool quiet) {
  int nres = 0;
  if (!quiet) print_header(t);
  const size_t *sizes = t == T_RING ? RING_SIZES : t == T_GROW ? GROW_LIMITS : SIZES;
  size_t ns = t == T_RING ? NRING : t == T_GROW ? NGROW : NSIZES;
  for (size_t i = 0; i < ns + (t == T_BATCH); i++) {
    result_t *r = &res[nres++];
    r->test = t;
    r->size = i < ns ? sizes[i] : SIZE_MIXED;
    run_item(r);
    if (!quiet) print_row(r);
  }
  return nres;
}

/* Runs section t in a fresh copy of this program; its results come back
 * as raw result_t records over a pipe (same binary, same layout). */
static int spawn_section(int t, result_t *res) {
  char self[4096];
  ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
  if (sl <= 0) { perror("readlink"); exit(1); }
  self[sl] = 0;
  int pfd[2];
  if (pipe(pfd) != 0) { perror("pipe"); exit(1); }
  char fdbuf[16], rbuf[16], tbuf[32], sbuf[32];
  snprintf(fdbuf, sizeof fdbuf, "%d", pfd[1]);
  snprintf(rbuf, sizeof rbuf, "%d", rounds);
  snprintf(tbuf, sizeof tbuf, "%g", target_ms);
  snprintf(sbuf, sizeof sbuf, "%llu", (unsigned long long)seed_arg);
  char *args[] = {self, "--section", (char *)TEST_KEY[t], "--result-fd", fdbuf, "--rounds", rbuf,
                  "--target-ms", tbuf, "--seed", sbuf, procs > 1 ? "--quiet" : NULL, NULL};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addclose(&fa, pfd[0]);
  pid_t pid;
  fflush(stdout);
  int rc = posix_spawn(&pid, self, &fa, NULL, args, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(pfd[1]);
  if (rc != 0) { errno = rc; perror("posix_spawn"); exit(1); }
  size_t got = 0, cap = (NSIZES + 1) * sizeof(result_t);
  ssize_t n;
  while (got < cap && (n = read(pfd[0], (char *)res + got, cap - got)) > 0) got += (size_t)n;
  close(pfd[0]);
  int st;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "bench: section %s failed (status %d)\n", TEST_KEY[t], st);
    exit(1);
  }
  return (int)(got / sizeof(result_t));
}

static void usage(void) {
  fprintf(stderr,
          "usage: bench [--rounds N] [--procs P] [--target-ms MS] [--tests abcde] [--seed S] [--json FILE]\n"
          "  glibc malloc vs mesh_malloc side by side; medians of N interleaved rounds (default 7),\n"
          "  each section in P processes one after another (default 1), their rounds pooled\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *json = NULL, *tests = "abcde", *section = NULL;
  int result_fd = -1;
  bool quiet = false;
  uint64_t seed = 42;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--target-ms") && i + 1 < argc) target_ms = atof(argv[++i]);
    else if (!strcmp(argv[i], "--tests") && i + 1 < argc) tests = argv[++i];
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 0);
    else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
    else if (!strcmp(argv[i], "--section") && i + 1 < argc) section = argv[++i];
    else if (!strcmp(argv[i], "--result-fd") && i + 1 < argc) result_fd = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--procs") && i + 1 < argc) procs = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--quiet")) quiet = true;
    else usage();
  }
  seed_arg = seed;
  if (rounds < 1 || procs < 1 || rounds * procs > MAX_ROUNDS || target_ms <= 0) usage();
  rng_state = seed;
  make_mixed();
  for (int p = 0; p < NPERMS; p++) {
    for (int i = 0; i < BATCH; i++) perms[p][i] = (uint16_t)i;
    for (int i = BATCH - 1; i > 0; i--) {
      int j = (int)(splitmix() % (uint64_t)(i + 1));
      uint16_t t = perms[p][i];
      perms[p][i] = perms[p][j];
      perms[p][j] = t;
    }
  }
  /* start both heaps before anything is timed */
  free(malloc(64));
  mesh_free(mesh_malloc(64));

  result_t *res = calloc(NTESTS * (NSIZES + 1), sizeof(result_t));
  if (section) { /* child: one section, results to the pipe */
    int t = 0;
    while (t < NTESTS && strcmp(TEST_KEY[t], section) != 0) t++;
    if (t == NTESTS) usage();
    int n = run_section(t, res, quiet);
    if (result_fd >= 0) {
      const char *p = (const char *)res;
      size_t left = (size_t)n * sizeof(result_t);
      while (left) {
        ssize_t w = write(result_fd, p, left);
        if (w <= 0) { perror("write"); return 1; }
        p += w;
        left -= (size_t)w;
      }
    }
    return 0;
  }

  double load0 = loadavg1();
  printf("meshalloc micro: glibc %s vs mesh %s (meshing %s), %ld CPUs, %d rounds x %d process%s, ~%g ms per run, "
         "loadavg %.2f\n",
         gnu_get_libc_version(), mesh_version(), mesh_meshing_available() ? "available" : "unavailable",
         sysconf(_SC_NPROCESSORS_ONLN), rounds, procs, procs > 1 ? "es" : "", target_ms, load0);
  printf("values are medians of the rounds; mesh/glibc = ratio of those medians (a-c, e: time, < 1 means\n"
         "mesh faster; d: throughput, > 1 means mesh faster); paired = median, min..max of the per-round\n"
         "mesh/glibc ratios (each round runs both allocators back to back, so this cancels slow drifts)\n");

  int nres = 0;
  for (int t = 0; t < NTESTS; t++) {
    if (!strchr(tests, TEST_KEY[t][0])) continue;
    int n = spawn_section(t, res + nres);
    for (int p = 1; p < procs; p++) {
      result_t more[NSIZES + 1];
      int m = spawn_section(t, more);
      for (int i = 0; i < n && i < m; i++) pool_item(&res[nres + i], &more[i]);
    }
    if (procs > 1) {
      print_header(t);
      for (int i = 0; i < n; i++) print_row(&res[nres + i]);
    }
    nres += n;
  }
  double load1 = loadavg1();
  printf("\nloadavg at end %.2f\n", load1);
  if (json) {
    write_json(json, res, nres, load0, load1, seed);
    printf("wrote %s\n", json);
  }
  free(res);
  return 0;
}
