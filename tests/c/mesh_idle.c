/* mesh_idle.c - meshing with no API call: the on-demand meshing thread.
 *
 *   mesh_idle idle SEED    allocates 200 k 64-byte objects, frees a random
 *                          95 % and then only sleeps: the meshing thread must
 *                          mesh during the sleep, and exit once done (the
 *                          process is back to one thread). Survivors are
 *                          checked byte for byte; the heap must validate.
 *                          With MESH_MESHER_THREAD=0 (the control) nothing
 *                          meshes during the sleep and no thread starts.
 *   mesh_idle churn SEED   a steady churn (a fixed live set whose objects are
 *                          replaced at random for 2 s, so freed pages are
 *                          taken straight back): passes may run, but pacing
 *                          must keep them under 5 % of the time; then the
 *                          program sleeps and the thread, if any, exits.
 *   mesh_idle fork SEED    the thread is meshing when the program forks: the
 *                          parent has one thread right after fork (the
 *                          prepare handler stopped it), the child reads every
 *                          survivor intact, and the parent's thread comes
 *                          back and finishes the work.
 *
 * Prints "<mode> ok" and exits 0 on success; "FAIL: ..." otherwise.
 */
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mesh.h"
#include "testutil.h"

#define CHECK(cond, ...)                                 \
  do {                                                   \
    if (!(cond)) {                                       \
      fprintf(stderr, "FAIL: " __VA_ARGS__);             \
      fputc('\n', stderr);                               \
      exit(1);                                           \
    }                                                    \
  } while (0)

enum { N = 200000, SIZE = 64 };
static unsigned char *objs[N];

/* Threads of this process, from /proc/self/status (read without stdio's
 * buffer allocation: not that it matters, libc malloc is not the core). */
static int threads(void) {
  char buf[4096];
  int fd = open("/proc/self/status", O_RDONLY);
  if (fd < 0) DIE("open /proc/self/status");
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) DIE("read /proc/self/status");
  buf[n] = 0;
  char *t = strstr(buf, "Threads:");
  if (!t) DIE("no Threads: line");
  return atoi(t + 8);
}

static void sleep_ms(unsigned ms) { usleep(ms * 1000u); }

/* Allocates N objects and frees all but keep_pct % of them at random. */
static uint64_t peak_pages; /* span pages before the frees */

static void fragment(uint64_t seed, unsigned keep_pct) {
  rng_t r;
  rng_seed(&r, seed);
  for (int i = 0; i < N; i++) {
    objs[i] = mesh_malloc(SIZE);
    CHECK(objs[i], "malloc failed");
    pat_fill(objs[i], SIZE, (uint64_t)i);
  }
  peak_pages = stat_get("span_pages");
  for (int i = 0; i < N; i++)
    if (rng_below(&r, 100) >= keep_pct) mesh_free(objs[i]), objs[i] = NULL;
}

static int corrupt(void) {
  int bad = 0;
  for (int i = 0; i < N; i++)
    if (objs[i] && pat_check(objs[i], SIZE, (uint64_t)i) != (size_t)-1) bad++;
  return bad;
}

/* Sleeps until the process is back to one thread, up to limit_ms; returns
 * the time it took, or -1. */
static int wait_single_thread(unsigned limit_ms) {
  for (unsigned t = 0; t <= limit_ms; t += 50) {
    if (threads() == 1) return (int)t;
    sleep_ms(50);
  }
  return -1;
}

static int mode_idle(uint64_t seed) {
  fragment(seed, 5);
  bool thread_on = mesh_option_get("mesher_thread") == 1;
  uint64_t m0 = stat_get("mesh_count"), p0 = stat_get("span_pages");
  /* no allocator call from here on: only sleeping and reading counters */
  int gone = wait_single_thread(10000);
  sleep_ms(300);
  uint64_t m1 = stat_get("mesh_count"), p1 = stat_get("span_pages");
  uint64_t by_thread = stat_get("meshes_thread");
  printf("idle: span pages %llu at the peak, %llu after the frees, %llu after the sleep; meshes %llu during the "
         "sleep, %llu by the thread (starts %llu); single thread after %d ms\n",
         (unsigned long long)peak_pages, (unsigned long long)p0, (unsigned long long)p1,
         (unsigned long long)(m1 - m0), (unsigned long long)by_thread,
         (unsigned long long)stat_get("mesher_thread_starts"), gone);
  CHECK(corrupt() == 0, "survivors corrupted");
  CHECK(mesh_check_heap() == 0, "heap check failed");
  if (thread_on) {
    /* (the thread may do much of it while the frees still run) */
    CHECK(by_thread > 0 && p1 * 4 < peak_pages, "the idle program was not compacted (%llu meshes, %llu -> %llu pages)",
          (unsigned long long)by_thread, (unsigned long long)peak_pages, (unsigned long long)p1);
    CHECK(gone >= 0, "the meshing thread did not exit once its work was done");
  } else {
    CHECK(m1 == m0 && p1 * 2 > peak_pages, "meshing ran during the sleep without the thread");
    CHECK(stat_get("mesher_thread_starts") == 0 && threads() == 1, "a thread started with mesher_thread=0");
  }
  puts("idle ok");
  return 0;
}

static int mode_churn(uint64_t seed) {
  enum { LIVE = 50000 };
  rng_t r;
  rng_seed(&r, seed);
  static unsigned char *live[LIVE];
  for (int i = 0; i < LIVE; i++) live[i] = mesh_malloc(SIZE), pat_fill(live[i], SIZE, (uint64_t)i);
  uint64_t ns0 = stat_get("pass_ns_triggered") + stat_get("pass_ns_thread");
  double t0 = now_s(), t;
  uint64_t ops = 0;
  while ((t = now_s()) - t0 < 2.0) {
    for (int k = 0; k < 1000; k++, ops++) {
      unsigned i = (unsigned)rng_below(&r, LIVE);
      CHECK(pat_check(live[i], SIZE, (uint64_t)i) == (size_t)-1, "churned object %u corrupted", i);
      mesh_free(live[i]);
      /* a burst of short-lived objects between: spans fill and empty */
      void *tmp[8];
      for (int j = 0; j < 8; j++) tmp[j] = mesh_malloc(SIZE + 16 * (unsigned)(ops % 4));
      for (int j = 0; j < 8; j++) mesh_free(tmp[j]);
      live[i] = mesh_malloc(SIZE);
      pat_fill(live[i], SIZE, (uint64_t)i);
    }
  }
  double wall = t - t0;
  uint64_t ns = stat_get("pass_ns_triggered") + stat_get("pass_ns_thread") - ns0;
  printf("churn: %llu ops in %.2f s, %.2f ms in passes (%.2f %%), pace level %llu, paced %llu\n",
         (unsigned long long)ops, wall, ns / 1e6, ns / 1e7 / wall, (unsigned long long)stat_get("mesh_pace_level"),
         (unsigned long long)stat_get("mesh_paced"));
  CHECK(ns < 0.05 * wall * 1e9, "a steady churn spent %.1f %% of its time in meshing passes", ns / 1e7 / wall);
  int gone = wait_single_thread(10000);
  CHECK(gone >= 0, "the meshing thread stayed in an idle process");
  for (int i = 0; i < LIVE; i++) CHECK(pat_check(live[i], SIZE, (uint64_t)i) == (size_t)-1, "object %d corrupted", i);
  CHECK(mesh_check_heap() == 0, "heap check failed");
  puts("churn ok");
  return 0;
}

static int mode_fork(uint64_t seed) {
  /* short passes: the work takes the thread long enough to fork during it */
  CHECK(mesh_option_set("max_pause_us", 50) == 0, "max_pause_us");
  fragment(seed, 5);
  void *kick = mesh_malloc(SIZE);
  int waited = 0;
  while (stat_get("meshes_thread") == 0 && waited++ < 500) sleep_ms(1);
  CHECK(threads() == 2, "the meshing thread is not running (%d threads, %llu meshes by it)", threads(),
        (unsigned long long)stat_get("meshes_thread"));
  uint64_t m0 = stat_get("mesh_count");
  pid_t pid = fork();
  CHECK(pid >= 0, "fork failed");
  if (pid == 0) {
    int bad = corrupt();
    int ok = bad == 0 && mesh_check_heap() == 0;
    if (!ok) fprintf(stderr, "FAIL: child: %d survivors corrupted\n", bad);
    _exit(ok ? 0 : 1);
  }
  int after_fork = threads();
  int status = 0;
  CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child saw a damaged heap (status %d)", status);
  CHECK(after_fork == 1, "%d threads right after fork: the prepare handler did not stop the meshing thread",
        after_fork);
  /* the parent's next allocator call after the restart delay brings it back */
  sleep_ms(50);
  mesh_free(kick);
  void *again = mesh_malloc(4096 * 8); /* a slow path */
  mesh_free(again);
  int gone = wait_single_thread(10000);
  uint64_t m1 = stat_get("mesh_count");
  printf("fork: one thread at fork, meshes %llu before and %llu after, thread starts %llu\n",
         (unsigned long long)m0, (unsigned long long)m1, (unsigned long long)stat_get("mesher_thread_starts"));
  CHECK(gone >= 0, "the meshing thread did not exit");
  CHECK(corrupt() == 0 && mesh_check_heap() == 0, "parent heap damaged");
  puts("fork ok");
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) DIE("usage: mesh_idle idle|churn|fork [SEED]");
  uint64_t seed = parse_u64(argc > 2 ? argv[2] : NULL, 1);
  if (!strcmp(argv[1], "idle")) return mode_idle(seed);
  if (!strcmp(argv[1], "churn")) return mode_churn(seed);
  if (!strcmp(argv[1], "fork")) return mode_fork(seed);
  DIE("unknown mode %s", argv[1]);
}
