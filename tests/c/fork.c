/* fork.c - fork gives the child its own copy of the heap (docs/design.md and
 * docs/meshing.md, "fork").
 *
 * Meshed spans live in a shared memfd, so without the core's fork handling
 * a parent and child would see each other's writes there. One case per
 * process, named by argv[1]:
 *   isolation  objects of 24 B ... 100 kB (plus a fragmented population of
 *              small objects that meshing may have merged) are written in
 *              the parent, then after fork each side overwrites them in turn:
 *              neither may see the other's writes, both see the pre-fork
 *              contents, both can allocate, and the child can free what it
 *              inherited; mesh_check_heap() is 0 on both sides.
 *   threads    fork repeatedly while three threads allocate, free and hand
 *              blocks to each other: the child (never deadlocked by a lock
 *              held at fork) allocates, frees inherited blocks, checks their
 *              contents and even starts a thread of its own.
 *   nested     a chain of forks four deep; each level writes its own
 *              generation and checks that its child's writes do not leak up.
 *   spawn      posix_spawn, vfork+exec and fork+exec work with a populated
 *              heap, and the arena's memfd is not inherited across exec.
 *   growth     the child's memory (memfd blocks and RSS) stays bounded by
 *              the parent's heap, across repeated forks, churn in the child,
 *              and a chain of forks.
 *   nofd       no descriptor left: the child gets an anonymous copy of the
 *              meshed pages, exact, and runs without meshing.
 *   snapshot   two threads write cells in meshed and unmeshed objects in
 *              order while the main thread forks: each child reads one
 *              instant of the parent's heap, and none of the parent's
 *              later writes.
 * Exit 0 on success. Every failure is printed on stderr with "FAIL".
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mesh.h"
#include "testutil.h"

extern char **environ;

static const char *g_who = "parent";
static atomic_int g_fail;

#define FAIL(...) do { fprintf(stderr, "FAIL [%s pid %d] ", g_who, (int)getpid()); \
                       fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); fflush(stderr); g_fail++; } while (0)

/* ---- the inherited object population ----------------------------------- */
static const size_t k_sizes[] = {24, 48, 64, 100, 256, 512, 600, 1000, 2048, 4000, 4096, 8192,
                                 16384, 20000, 32768, 65536, 100000};
enum { N_SIZES = sizeof k_sizes / sizeof k_sizes[0], PER_SIZE = 12, N_OBJS = N_SIZES * PER_SIZE };
enum { N_FRAG = 40000 };

typedef struct { unsigned char *p; size_t n; } blk_t;
static blk_t g_objs[N_OBJS];
static blk_t g_frag[N_FRAG];    /* survivors of a fragmented small-object population */
static int g_nfrag;

static uint64_t tag_of(uint64_t gen, int i) { return gen * 1000003u + (uint64_t)i; }

static void populate(uint64_t seed) {
  for (int i = 0; i < N_OBJS; i++) {
    g_objs[i].n = k_sizes[i % N_SIZES];
    g_objs[i].p = mesh_malloc(g_objs[i].n);
    if (!g_objs[i].p) DIE("malloc(%zu) failed", g_objs[i].n);
  }
  /* many small objects, 80 % freed at random: spans with sparse, random
   * occupancy, the kind meshing merges */
  rng_t r; rng_seed(&r, seed);
  static blk_t all[N_FRAG];
  for (int i = 0; i < N_FRAG; i++) {
    all[i].n = 16 + 16 * (size_t)rng_below(&r, 8);
    all[i].p = mesh_malloc(all[i].n);
    if (!all[i].p) DIE("malloc failed");
  }
  g_nfrag = 0;
  for (int i = 0; i < N_FRAG; i++) {
    if (rng_below(&r, 5) == 0) g_frag[g_nfrag++] = all[i];
    else mesh_free(all[i].p);
  }
}

static void write_gen(uint64_t gen) {
  for (int i = 0; i < N_OBJS; i++) pat_fill(g_objs[i].p, g_objs[i].n, tag_of(gen, i));
  for (int i = 0; i < g_nfrag; i++) pat_fill(g_frag[i].p, g_frag[i].n, tag_of(gen, N_OBJS + i));
}

/* Returns the number of corrupted objects (and reports the first few). */
static int verify_gen(uint64_t gen, const char *what) {
  int bad = 0;
  for (int i = 0; i < N_OBJS + g_nfrag; i++) {
    blk_t *b = i < N_OBJS ? &g_objs[i] : &g_frag[i - N_OBJS];
    size_t at = pat_check(b->p, b->n, tag_of(gen, i));
    if (at != (size_t)-1) {
      if (bad < 5) {
        /* which generation is there instead? */
        long seen = -1;
        for (uint64_t g = 0; g < 16; g++)
          if (pat_check(b->p, b->n, tag_of(g, i)) == (size_t)-1) { seen = (long)g; break; }
        FAIL("%s: object %p (%zu B) byte %zu wrong: expected generation %llu, found %ld",
             what, (void *)b->p, b->n, at, (unsigned long long)gen, seen);
      }
      bad++;
    }
  }
  if (bad) FAIL("%s: %d of %d objects corrupted", what, bad, N_OBJS + g_nfrag);
  return bad;
}

static void free_population(void) {
  for (int i = 0; i < N_OBJS; i++) { mesh_free(g_objs[i].p); g_objs[i].p = NULL; }
  for (int i = 0; i < g_nfrag; i++) { mesh_free(g_frag[i].p); g_frag[i].p = NULL; }
  g_nfrag = 0;
}

/* Allocates a fresh mixed set, fills it, and returns it for a later check. */
typedef struct { blk_t b[600]; uint64_t gen; } fresh_t;

static void fresh_alloc(fresh_t *f, uint64_t gen) {
  f->gen = gen;
  for (int i = 0; i < 600; i++) {
    f->b[i].n = k_sizes[i % N_SIZES] + (size_t)(i % 7);
    f->b[i].p = mesh_malloc(f->b[i].n);
    if (!f->b[i].p) { FAIL("malloc(%zu) failed after fork", f->b[i].n); f->b[i].n = 0; continue; }
    pat_fill(f->b[i].p, f->b[i].n, tag_of(gen, 100000 + i));
  }
}

static void fresh_check_free(fresh_t *f, const char *what) {
  int bad = 0;
  for (int i = 0; i < 600; i++) {
    if (!f->b[i].p) continue;
    if (pat_check(f->b[i].p, f->b[i].n, tag_of(f->gen, 100000 + i)) != (size_t)-1) bad++;
    mesh_free(f->b[i].p);
  }
  if (bad) FAIL("%s: %d fresh objects corrupted", what, bad);
}

/* ---- process plumbing ----------------------------------------------------- */
static void sig_send(int fd) { char c = 'x'; if (write(fd, &c, 1) != 1) DIE("pipe write"); }
static void sig_wait(int fd) { char c; if (read(fd, &c, 1) != 1) DIE("pipe read (peer died?)"); }

static pid_t fork_checked(void) {
  fflush(stdout); fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) DIE("fork failed: %s", strerror(errno));
  return pid;
}

static void child_exit(void) {
  fflush(stdout); fflush(stderr);
  _exit(g_fail ? 1 : 0);
}

static void reap(pid_t pid, const char *what) {
  int st;
  if (waitpid(pid, &st, 0) != pid) { FAIL("%s: waitpid: %s", what, strerror(errno)); return; }
  if (WIFSIGNALED(st)) FAIL("%s: child killed by signal %d", what, WTERMSIG(st));
  else if (WEXITSTATUS(st) != 0) FAIL("%s: child exited with %d", what, WEXITSTATUS(st));
}

static void check_heap(const char *what) {
  int problems = mesh_check_heap();
  if (problems) FAIL("%s: mesh_check_heap() = %d", what, problems);
}

/* ---- isolation ------------------------------------------------------------ */
static void case_isolation(void) {
  populate(11);
  write_gen(1);                                   /* A: before fork */
  int c2p[2], p2c[2];
  if (pipe(c2p) || pipe(p2c)) DIE("pipe");
  pid_t pid = fork_checked();
  if (pid == 0) {
    g_who = "child";
    fresh_t *f = mesh_malloc(sizeof *f);
    fresh_alloc(f, 5);                            /* concurrent with the parent's */
    verify_gen(1, "child sees the pre-fork contents");
    write_gen(3);                                 /* C: child's own writes */
    sig_send(c2p[1]);
    sig_wait(p2c[0]);                             /* parent has written B */
    verify_gen(3, "parent's writes after fork are not visible in the child");
    fresh_check_free(f, "child's fresh objects");
    mesh_free(f);
    free_population();                            /* free what we inherited */
    check_heap("child after freeing inherited objects");
    fresh_alloc(f = mesh_malloc(sizeof *f), 7);   /* reuse the freed memory */
    fresh_check_free(f, "child's reused memory");
    mesh_free(f);
    child_exit();
  }
  fresh_t *f = mesh_malloc(sizeof *f);
  fresh_alloc(f, 6);
  sig_wait(c2p[0]);                               /* child has written C */
  verify_gen(1, "child's writes after fork are not visible in the parent");
  write_gen(2);                                   /* B */
  sig_send(p2c[1]);
  reap(pid, "isolation child");
  verify_gen(2, "parent keeps its own writes after the child exits");
  fresh_check_free(f, "parent's fresh objects");
  mesh_free(f);
  free_population();
  check_heap("parent at the end");
}

/* ---- fork with no descriptor left: the child's anonymous copy -------------- */
/* Every descriptor number under a lowered RLIMIT_NOFILE is taken, so the
 * child cannot make a memfd of its own and copies the heap into anonymous
 * memory, aliases included: each meshed virtual span must come out with
 * the data of the physical span behind it (its own pages were punched). */
static int g_fill[64];
static int g_nfill;
static struct rlimit g_old_nofile;

static void take_every_descriptor(void) {
  if (getrlimit(RLIMIT_NOFILE, &g_old_nofile)) DIE("getrlimit");
  struct rlimit tight = {64, g_old_nofile.rlim_max};
  if (setrlimit(RLIMIT_NOFILE, &tight)) DIE("setrlimit");
  g_nfill = 0;
  int fd;
  while (g_nfill < 64 && (fd = open("/dev/null", O_RDONLY)) >= 0) g_fill[g_nfill++] = fd;
  if (errno != EMFILE) DIE("expected EMFILE after %d descriptors", g_nfill);
}

static void give_descriptors_back(void) {
  for (int i = 0; i < g_nfill; i++) close(g_fill[i]);
  if (setrlimit(RLIMIT_NOFILE, &g_old_nofile)) DIE("setrlimit back");
}

static void case_nofd(void) {
  populate(13);
  write_gen(1);
  mesh_compact();
  if (mesh_meshing_available() && stat_get("mesh_aliases") == 0) DIE("nothing meshed: the case needs aliases");
  int c2p[2], p2c[2];
  if (pipe(c2p) || pipe(p2c)) DIE("pipe");
  take_every_descriptor(); /* no pipe for the handshake either */
  pid_t pid = fork_checked();
  if (pid == 0) {
    g_who = "child";
    give_descriptors_back();
    verify_gen(1, "child's anonymous copy holds the pre-fork contents (meshed spans included), "
                  "not the parent's writes after fork");
    write_gen(3);
    check_heap("child on its anonymous copy");
    sig_send(c2p[1]);
    sig_wait(p2c[0]);
    verify_gen(3, "parent's writes after fork are not visible in the child");
    free_population();
    child_exit();
  }
  give_descriptors_back();
  write_gen(2); /* at once: the child must be done copying before fork returns here */
  sig_wait(c2p[0]);
  verify_gen(2, "child's writes are not visible in the parent");
  sig_send(p2c[1]);
  reap(pid, "no-descriptor child");
  verify_gen(2, "parent keeps its own writes");
  free_population();
  check_heap("parent at the end");
}

/* ---- fork while threads allocate -------------------------------------------- */
static atomic_int g_stop;
static pthread_mutex_t g_xmu = PTHREAD_MUTEX_INITIALIZER;
static blk_t g_xq[1024];
static int g_xn;

static atomic_int g_started;

static void *churn(void *arg) {
  atomic_fetch_add(&g_started, 1);
  rng_t r; rng_seed(&r, (uint64_t)(uintptr_t)arg);
  blk_t ring[64] = {{0}};
  uint64_t it = 0;
  while (!atomic_load(&g_stop)) {
    int s = (int)rng_below(&r, 64);
    if (ring[s].p) {
      if (pat_check(ring[s].p, ring[s].n, ring[s].n) != (size_t)-1) FAIL("churn thread: object corrupted");
      if (rng_below(&r, 2)) {
        pthread_mutex_lock(&g_xmu);
        if (g_xn < 1024) { g_xq[g_xn++] = ring[s]; ring[s].p = NULL; }
        pthread_mutex_unlock(&g_xmu);
      }
      if (ring[s].p) { mesh_free(ring[s].p); ring[s].p = NULL; }
    } else {
      size_t n = rng_below(&r, 20) == 0 ? 1 + rng_below(&r, 120000) : 1 + rng_below(&r, 700);
      ring[s].p = mesh_malloc(n);
      ring[s].n = n;
      if (!ring[s].p) DIE("malloc failed in churn thread");
      pat_fill(ring[s].p, n, n);
    }
    if ((++it & 15) == 0) {           /* free blocks other threads made */
      blk_t b = {0};
      pthread_mutex_lock(&g_xmu);
      if (g_xn > 0) b = g_xq[--g_xn];
      pthread_mutex_unlock(&g_xmu);
      if (b.p) {
        if (pat_check(b.p, b.n, b.n) != (size_t)-1) FAIL("churn thread: exchanged object corrupted");
        mesh_free(b.p);
      }
    }
  }
  for (int i = 0; i < 64; i++) if (ring[i].p) mesh_free(ring[i].p);
  return NULL;
}

static void *child_thread(void *arg) {
  (void)arg;
  fresh_t *f = mesh_malloc(sizeof *f);
  if (!f) return (void *)1;
  fresh_alloc(f, 9);
  fresh_check_free(f, "thread started in the child");
  mesh_free(f);
  return NULL;
}

static void case_threads(void) {
  populate(12);
  write_gen(1);
  enum { T = 3, ROUNDS = 24 };
  pthread_t t[T];
  for (int i = 0; i < T; i++) pthread_create(&t[i], NULL, churn, (void *)(uintptr_t)(i + 1));
  /* Fork only once every thread runs its loop: a thread still starting may
   * be inside libc's or a sanitizer's own allocator (ASan's thread start
   * callocs), whose locks a fork child would inherit held. That hangs the
   * child in code that is not ours; the window is ours to close here. */
  while (atomic_load(&g_started) < T) usleep(100);
  for (int round = 0; round < ROUNDS; round++) {
    usleep(3000);
    pid_t pid = fork_checked();
    if (pid == 0) {
      g_who = "child";
      alarm(60);                                  /* a deadlock shows up as SIGALRM */
      verify_gen(1, "child of a multi-threaded parent sees inherited objects");
      fresh_t *f = mesh_malloc(sizeof *f);
      if (!f) { FAIL("malloc in the child failed"); child_exit(); }
      fresh_alloc(f, 4);
      /* free half of what we inherited, rewrite and re-check the rest */
      for (int i = 0; i < N_OBJS; i += 2) { mesh_free(g_objs[i].p); g_objs[i].p = NULL; }
      for (int i = 1; i < N_OBJS; i += 2) {
        pat_fill(g_objs[i].p, g_objs[i].n, 4242);
        if (pat_check(g_objs[i].p, g_objs[i].n, 4242) != (size_t)-1) FAIL("child rewrite");
      }
      pthread_t ct;
      if (pthread_create(&ct, NULL, child_thread, NULL)) FAIL("pthread_create in the child");
      else pthread_join(ct, NULL);
      fresh_check_free(f, "child's fresh objects");
      mesh_free(f);
      child_exit();
    }
    reap(pid, "child forked while threads allocate");
    if (g_fail) break;
  }
  atomic_store(&g_stop, 1);
  for (int i = 0; i < T; i++) pthread_join(t[i], NULL);
  pthread_mutex_lock(&g_xmu);
  for (int i = 0; i < g_xn; i++) mesh_free(g_xq[i].p);
  g_xn = 0;
  pthread_mutex_unlock(&g_xmu);
  verify_gen(1, "parent after children freed their copies");
  free_population();
  check_heap("parent at the end");
}

/* ---- snapshot: exact at the clone while threads write ---------------------- */
/* Two threads write, without any lock, a sequence number into an ordered
 * list of cells (8-byte words of inherited objects, meshed ones and others
 * interleaved), always from the first cell to the last. At any instant the
 * list then reads s, ..., s, s-1, ..., s-1. A child whose heap is an exact
 * snapshot at the clone reads the same shape; a child whose meshed pages
 * were copied at another moment than the rest (before the clone, while the
 * writers ran on) would read a later cell newer than an earlier one. The
 * child also reads its cells twice, 20 ms apart: the parent's writers run
 * on, and none of their writes may reach it. */
enum { SNAP_WRITERS = 2, SNAP_CELLS = 3000, SNAP_FORKS = 30 };
static _Atomic uint64_t *g_cells[SNAP_WRITERS][SNAP_CELLS];
static atomic_int g_snap_stop;

static void *snap_writer(void *arg) {
  _Atomic uint64_t **cells = g_cells[(uintptr_t)arg];
  atomic_fetch_add(&g_started, 1);
  for (uint64_t seq = 1; !atomic_load_explicit(&g_snap_stop, memory_order_relaxed); seq++)
    for (int i = 0; i < SNAP_CELLS; i++) atomic_store_explicit(cells[i], seq, memory_order_release);
  return NULL;
}

static int snap_check(const char *what) {
  int bad = 0;
  for (int w = 0; w < SNAP_WRITERS; w++) {
    uint64_t first = atomic_load(g_cells[w][0]), prev = first;
    for (int i = 1; i < SNAP_CELLS; i++) {
      uint64_t v = atomic_load(g_cells[w][i]);
      if (v > prev || first - v > 1) {
        if (bad++ < 3) FAIL("%s: writer %d cell %d reads %llu after %llu (first %llu)", what, w, i,
                            (unsigned long long)v, (unsigned long long)prev, (unsigned long long)first);
      }
      prev = v;
    }
  }
  return bad;
}

static uint64_t snap_sum(void) {
  uint64_t h = 0;
  for (int w = 0; w < SNAP_WRITERS; w++)
    for (int i = 0; i < SNAP_CELLS; i++) h = h * 31 + atomic_load(g_cells[w][i]);
  return h;
}

/* Registered before the heap's first use, so a child runs it before the
 * core's own child handler: the child's first touch of a meshed range then
 * comes before the core has mapped its copy there (as glibc's own reset of
 * stdio locks does), and must still read the snapshot. */
static atomic_int g_snap_armed;
static void snap_early_child(void) {
  if (!atomic_load(&g_snap_armed)) return;
  g_who = "snapshot child";
  snap_check("the child, before the core's atfork handler");
}

static void case_snapshot(void) {
  if (pthread_atfork(NULL, NULL, snap_early_child)) DIE("pthread_atfork");
  populate(17);
  write_gen(1);
  mesh_compact();
  if (mesh_meshing_available() && stat_get("promoted_pages") == 0) DIE("nothing meshed: the case needs meshed spans");
  /* cells, each a distinct word: word 0 of the fragmented survivors (most
   * sit in meshed spans after the compaction), and every 7th one a word of
   * the objects of 4 KiB and more, which are not meshed */
  blk_t *big[N_OBJS];
  int nbig = 0, nfrag = 0, nother = 0;
  for (int i = 0; i < N_OBJS; i++)
    if (g_objs[i].n >= 4096) big[nbig++] = &g_objs[i];
  if (g_nfrag < SNAP_WRITERS * SNAP_CELLS) DIE("too few fragmented survivors for the cells");
  for (int w = 0; w < SNAP_WRITERS; w++)
    for (int i = 0; i < SNAP_CELLS; i++) {
      unsigned char *at;
      if (i % 7 == 3) {
        at = big[nother % nbig]->p + 8 * (size_t)(nother / nbig);
        nother++;
      } else {
        at = g_frag[nfrag++].p;
      }
      g_cells[w][i] = (_Atomic uint64_t *)(void *)at;
      atomic_store(g_cells[w][i], 0);
    }
  pthread_t t[SNAP_WRITERS];
  atomic_store(&g_started, 0);
  for (uintptr_t w = 0; w < SNAP_WRITERS; w++) pthread_create(&t[w], NULL, snap_writer, (void *)w);
  while (atomic_load(&g_started) < SNAP_WRITERS) usleep(100);
  atomic_store(&g_snap_armed, 1);
  for (int round = 0; round < SNAP_FORKS && !g_fail; round++) {
    usleep(2000);
    pid_t pid = fork_checked();
    if (pid == 0) {
      g_who = "snapshot child";
      alarm(60);
      snap_check("the child's heap is one instant of the parent's");
      uint64_t h = snap_sum();
      usleep(20000);
      if (snap_sum() != h) FAIL("the parent's writes after fork reached the child");
      check_heap("snapshot child");
      child_exit();
    }
    reap(pid, "snapshot child");
  }
  atomic_store(&g_snap_armed, 0);
  atomic_store(&g_snap_stop, 1);
  for (int w = 0; w < SNAP_WRITERS; w++) pthread_join(t[w], NULL);
  snap_check("parent after the forks");
  /* the first fork froze the memfd (nothing to copy, nothing left in the
   * current memfd for the later ones), or under MESH_FORK_FREEZE=0 copied it */
  uint64_t copied = stat_get("fork_copy_bytes_last"), promoted = stat_get("promoted_pages");
  const char *fz = getenv("MESH_FORK_FREEZE");
  if (mesh_meshing_available() && fz && !strcmp(fz, "0") && (copied == 0 || copied > promoted * 4096))
    FAIL("a fork copied %llu bytes with %llu pages in the memfd", (unsigned long long)copied,
         (unsigned long long)promoted);
  if (mesh_meshing_available() && !(fz && !strcmp(fz, "0")) &&
      (stat_get("freezes") == 0 || copied != 0 || promoted != 0 || stat_get("frozen_pages") == 0))
    FAIL("the forks did not freeze the memfd: freezes %llu, copied %llu, promoted %llu, frozen %llu",
         (unsigned long long)stat_get("freezes"), (unsigned long long)copied, (unsigned long long)promoted,
         (unsigned long long)stat_get("frozen_pages"));
  free_population();
  check_heap("parent at the end");
}

/* ---- nested ---------------------------------------------------------------- */
static void nested_level(int depth, uint64_t gen) {
  if (depth == 0) return;
  pid_t pid = fork_checked();
  if (pid == 0) {
    static char who[32];
    snprintf(who, sizeof who, "child depth %d", 5 - depth);
    g_who = who;
    verify_gen(gen, "nested child sees its parent's generation");
    write_gen(gen + 1);
    fresh_t *f = mesh_malloc(sizeof *f);
    fresh_alloc(f, 10 + gen);
    nested_level(depth - 1, gen + 1);
    verify_gen(gen + 1, "nested child keeps its generation after its own child");
    fresh_check_free(f, "nested child's fresh objects");
    mesh_free(f);
    check_heap("nested child");
    child_exit();
  }
  reap(pid, "nested child");
  verify_gen(gen, "nested parent unaffected by its child");
}

static void case_nested(void) {
  populate(13);
  write_gen(1);
  nested_level(4, 1);
  verify_gen(1, "top-level parent");
  free_population();
  check_heap("parent at the end");
}

/* ---- spawn ------------------------------------------------------------------- */
static int wait_status(pid_t pid) {
  int st;
  if (waitpid(pid, &st, 0) != pid) return -1;
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static const char *k_fd_probe =
  "for f in /proc/self/fd/*; do l=$(readlink \"$f\" 2>/dev/null) || continue; "
  "case \"$l\" in *memfd:*) echo \"leaked fd $f -> $l\" >&2; exit 3;; esac; done; exit 0";

static void case_spawn(void) {
  populate(14);
  write_gen(1);
  char *true_argv[] = {"true", NULL};
  char *sh_argv[] = {"sh", "-c", (char *)k_fd_probe, NULL};
  for (int i = 0; i < 20; i++) {
    pid_t pid;
    int rc = posix_spawn(&pid, "/bin/true", NULL, NULL, true_argv, environ);
    if (rc != 0) { FAIL("posix_spawn: %s", strerror(rc)); break; }
    if (wait_status(pid) != 0) FAIL("posix_spawn(/bin/true) status");
  }
  pid_t pid;
  int rc = posix_spawn(&pid, "/bin/sh", NULL, NULL, sh_argv, environ);
  if (rc != 0) FAIL("posix_spawn(sh): %s", strerror(rc));
  else if ((rc = wait_status(pid)) != 0) FAIL("the arena memfd is inherited across posix_spawn+exec (status %d)", rc);

  for (int i = 0; i < 20; i++) {
    pid = vfork();
    if (pid == 0) { execv("/bin/true", true_argv); _exit(127); }
    if (pid < 0) { FAIL("vfork: %s", strerror(errno)); break; }
    if (wait_status(pid) != 0) FAIL("vfork+exec(/bin/true) status");
  }
  pid = vfork();
  if (pid == 0) { execv("/bin/sh", sh_argv); _exit(127); }
  if ((rc = wait_status(pid)) != 0) FAIL("the arena memfd is inherited across vfork+exec (status %d)", rc);

  pid = fork_checked();
  if (pid == 0) { execv("/bin/sh", sh_argv); _exit(127); }
  if ((rc = wait_status(pid)) != 0) FAIL("the arena memfd is inherited across fork+exec (status %d)", rc);

  verify_gen(1, "heap after spawning children");
  free_population();
  check_heap("parent at the end");
}

/* ---- growth ------------------------------------------------------------------ */
/* Bytes of memfd-backed storage this process holds (blocks actually allocated
 * in every memfd it has open), and its RSS. */
static uint64_t memfd_bytes(void) {
  uint64_t total = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d) return 0;
  struct dirent *e;
  char path[300], link[256];
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n <= 0) continue;
    link[n] = 0;
    if (!strstr(link, "memfd:")) continue;
    struct stat st;
    if (stat(path, &st) == 0) total += (uint64_t)st.st_blocks * 512u;
  }
  closedir(d);
  return total;
}

static uint64_t status_kb(const char *field) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  uint64_t v = 0;
  size_t fl = strlen(field);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, field, fl) == 0) { v = strtoull(line + fl, NULL, 10); break; }
  fclose(f);
  return v;
}

static uint64_t g_parent_memfd, g_parent_rss;

static void growth_child_body(int depth) {
  uint64_t m0 = memfd_bytes(), r0 = status_kb("VmRSS:") * 1024;
  verify_gen(1, "growth child sees inherited objects");
  /* churn: allocate and free ~24 MiB, 12 times */
  for (int round = 0; round < 12; round++) {
    enum { M = 3000 };
    static void *ps[M];
    for (int i = 0; i < M; i++) {
      size_t n = (i % 10 == 0) ? 50000 : 300;
      ps[i] = mesh_malloc(n);
      if (!ps[i]) { FAIL("malloc in growth child"); break; }
      memset(ps[i], i, n);
    }
    for (int i = 0; i < M; i++) mesh_free(ps[i]);
  }
  uint64_t m1 = memfd_bytes(), r1 = status_kb("VmRSS:") * 1024;
  printf("growth depth %d: memfd %llu -> %llu KiB, rss %llu -> %llu KiB (parent memfd %llu KiB, rss %llu KiB)\n",
         depth, (unsigned long long)m0 >> 10, (unsigned long long)m1 >> 10, (unsigned long long)r0 >> 10,
         (unsigned long long)r1 >> 10, (unsigned long long)g_parent_memfd >> 10, (unsigned long long)g_parent_rss >> 10);
  const uint64_t slack = (uint64_t)128 << 20;
  if (m1 > 2 * g_parent_memfd + slack)
    FAIL("child's memfd holds %llu MiB, parent's %llu MiB", (unsigned long long)m1 >> 20, (unsigned long long)g_parent_memfd >> 20);
  if (r1 > 2 * g_parent_rss + slack)
    FAIL("child's RSS is %llu MiB, parent's %llu MiB", (unsigned long long)r1 >> 20, (unsigned long long)g_parent_rss >> 20);
}

static void growth_chain(int depth) {
  if (depth == 0) return;
  pid_t pid = fork_checked();
  if (pid == 0) {
    g_who = "growth chain child";
    growth_child_body(5 - depth);
    growth_chain(depth - 1);
    child_exit();
  }
  reap(pid, "growth chain child");
}

static void case_growth(void) {
  populate(15);
  /* a bigger heap: ~40 MiB of small objects, 70 % freed */
  enum { BIG = 250000 };
  static blk_t big[BIG];
  rng_t r; rng_seed(&r, 99);
  for (int i = 0; i < BIG; i++) {
    big[i].n = 32 + 16 * (size_t)rng_below(&r, 20);
    big[i].p = mesh_malloc(big[i].n);
    if (!big[i].p) DIE("malloc failed");
    memset(big[i].p, 0x33, big[i].n);
  }
  for (int i = 0; i < BIG; i++) if (rng_below(&r, 10) < 7) { mesh_free(big[i].p); big[i].p = NULL; }
  write_gen(1);
  g_parent_memfd = memfd_bytes();
  g_parent_rss = status_kb("VmRSS:") * 1024;
  printf("growth parent: memfd %llu KiB, rss %llu KiB\n",
         (unsigned long long)g_parent_memfd >> 10, (unsigned long long)g_parent_rss >> 10);
  for (int i = 0; i < 6; i++) {
    pid_t pid = fork_checked();
    if (pid == 0) { g_who = "growth child"; growth_child_body(1); child_exit(); }
    reap(pid, "growth child");
  }
  growth_chain(4);
  uint64_t m = memfd_bytes();
  if (m > 2 * g_parent_memfd + ((uint64_t)128 << 20))
    FAIL("parent's memfd grew from %llu to %llu MiB across forks",
         (unsigned long long)g_parent_memfd >> 20, (unsigned long long)m >> 20);
  verify_gen(1, "growth parent at the end");
  for (int i = 0; i < BIG; i++) if (big[i].p) mesh_free(big[i].p);
  free_population();
  check_heap("parent at the end");
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 2) DIE("usage: fork isolation|threads|nested|spawn|growth|nofd|snapshot");
  const char *c = argv[1];
  if (strcmp(c, "isolation") == 0) case_isolation();
  else if (strcmp(c, "threads") == 0) case_threads();
  else if (strcmp(c, "nested") == 0) case_nested();
  else if (strcmp(c, "spawn") == 0) case_spawn();
  else if (strcmp(c, "growth") == 0) case_growth();
  else if (strcmp(c, "nofd") == 0) case_nofd();
  else if (strcmp(c, "snapshot") == 0) case_snapshot();
  else DIE("unknown case %s", c);
  printf("fork %s: %s\n", c, g_fail ? "FAILED" : "ok");
  return g_fail ? 1 : 0;
}
