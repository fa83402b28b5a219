/* forkbench.c - how long fork() takes with a big live heap: meshalloc core
 * vs glibc malloc.
 *
 * meshalloc keeps object memory in a MAP_SHARED memfd, so a fork child
 * must copy every live span into a memfd of its own before it runs any
 * code, and the parent waits (in its atfork handler) until the copy is
 * done. fork() in the parent therefore returns only after the child's copy:
 * timing the fork() call in the parent measures the whole cost. With glibc
 * the kernel only copies page tables (copy-on-write).
 *
 * The driver (no --worker) starts one worker process per allocator and
 * round, alternating which goes first, and prints medians and the ratio.
 * A worker builds the same deterministic heap (~--mb MiB of mixed-size
 * objects, every byte written) with its allocator, then forks --forks times;
 * each child calls _exit(0) at once. It records the fork() call time and
 * the time until waitpid() returned, and the parent's PSS before and after
 * the forks (a difference means the forks themselves changed what the
 * parent holds).
 *
 * --sparse-mb N adds one N MiB block of which only the first byte is
 * written (a big calloc/bytearray that is mostly untouched): it costs the
 * kernel nothing to fork, so any time it adds is the heap copy reading and
 * writing pages that were never touched.
 *
 * The bench binary contains the core but the glibc worker never calls it,
 * so the core is never initialised there and installs no fork handler.
 */
#include <errno.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../cbench.h"
#include "mesh.h"

extern char **environ;

#define MAX_FORKS 64
#define MAX_ROUNDS 64

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}
static double median(const double *v, int n) {
  double t[MAX_FORKS * MAX_ROUNDS];
  memcpy(t, v, (size_t)n * sizeof(double));
  qsort(t, (size_t)n, sizeof(double), cmp_double);
  return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

static long pss_kb(void) { return cb_pss_kb(); } /* KiB, -1 if unavailable */

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint64_t next_rand(void) { /* xorshift64*, deterministic */
  rng ^= rng >> 12;
  rng ^= rng << 25;
  rng ^= rng >> 27;
  return rng * 0x2545F4914F6CDD1Dull;
}

/* Mixed sizes: 94 % Python-sized (16..512 in 16-byte steps), 5.5 % medium
 * (528..4096), 0.5 % big (4 KiB..64 KiB); small objects hold ~45 % of bytes. */
static size_t pick_size(void) {
  uint64_t r = next_rand() % 1000;
  if (r < 940) return 16 + 16 * (next_rand() % 32);
  if (r < 995) return 528 + 16 * (next_rand() % 224);
  return 4112 + 16 * (next_rand() % 3840);
}

/* ---- worker --------------------------------------------------------------- */
static int worker(const char *cfg, long mb, long sparse_mb, int forks, uint64_t seed) {
  int mesh = !strcmp(cfg, "mesh");
  if (!mesh && strcmp(cfg, "glibc") != 0) {
    fprintf(stderr, "forkbench: unknown allocator %s\n", cfg);
    return 2;
  }
  rng ^= seed * 0x9E3779B97F4A7C15ull;
  if (!rng) rng = 1;
  size_t target = (size_t)mb << 20;
  size_t maxobj = target / 16 + 1;
  /* the pointer array lives outside both heaps */
  void **ptrs = mmap(NULL, maxobj * sizeof(void *), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (ptrs == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  size_t bytes = 0, n = 0;
  double t0 = now_ms();
  while (bytes < target && n < maxobj) {
    size_t s = pick_size();
    void *p = mesh ? mesh_malloc(s) : malloc(s);
    if (!p) {
      fprintf(stderr, "forkbench: %s allocation of %zu failed after %zu bytes\n", cfg, s, bytes);
      return 1;
    }
    memset(p, (int)(n & 0xFF) | 1, s);
    ptrs[n++] = p;
    bytes += s;
  }
  if (sparse_mb > 0) {
    size_t sz = (size_t)sparse_mb << 20;
    char *p = mesh ? mesh_malloc(sz) : malloc(sz);
    if (!p) {
      fprintf(stderr, "forkbench: sparse block of %ld MiB failed\n", sparse_mb);
      return 1;
    }
    p[0] = 1;
    __asm__ volatile("" : : "g"(p) : "memory");
  }
  double build_ms = now_ms() - t0;
  long pss0 = pss_kb();
  double fork_ms[MAX_FORKS], wait_ms[MAX_FORKS];
  for (int k = 0; k < forks; k++) {
    double a = now_ms();
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    double b = now_ms();
    if (pid < 0) {
      perror("fork");
      return 1;
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    double c = now_ms();
    fork_ms[k] = b - a;
    wait_ms[k] = c - a;
  }
  long pss1 = pss_kb();
  /* one line for the driver: fixed field order */
  printf("RESULT %s %zu %zu %.3f %ld %ld", cfg, n, bytes, build_ms, pss0, pss1);
  for (int k = 0; k < forks; k++) printf(" %.3f", fork_ms[k]);
  for (int k = 0; k < forks; k++) printf(" %.3f", wait_ms[k]);
  printf("\n");
  fflush(stdout);
  /* (no frees: the process ends here) */
  return 0;
}

/* ---- driver --------------------------------------------------------------- */
typedef struct {
  size_t objects, bytes;
  double build_ms;
  long pss0, pss1;
  double fork_ms[MAX_FORKS], wait_ms[MAX_FORKS];
} wres_t;

static int run_worker(const char *self, const char *cfg, long mb, long sparse_mb, int forks, uint64_t seed,
                      wres_t *out) {
  char mbs[32], fs[32], ss[32], sps[32];
  snprintf(mbs, sizeof mbs, "%ld", mb);
  snprintf(sps, sizeof sps, "%ld", sparse_mb);
  snprintf(fs, sizeof fs, "%d", forks);
  snprintf(ss, sizeof ss, "%llu", (unsigned long long)seed);
  char *argv[] = {(char *)self, "--worker", (char *)cfg, "--mb", mbs, "--sparse-mb", sps, "--forks", fs,
                  "--seed", ss, NULL};
  int pfd[2];
  if (pipe(pfd) != 0) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
  posix_spawn_file_actions_addclose(&fa, pfd[0]);
  pid_t pid;
  int rc = posix_spawn(&pid, self, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(pfd[1]);
  if (rc != 0) {
    close(pfd[0]);
    errno = rc;
    return -1;
  }
  char buf[8192];
  size_t len = 0;
  ssize_t r;
  while ((r = read(pfd[0], buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)r;
  close(pfd[0]);
  buf[len] = 0;
  int st;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "forkbench: %s worker failed (status %d)\n", cfg, st);
    return -1;
  }
  char *line = strstr(buf, "RESULT ");
  if (!line) return -1;
  char *p = line + 7;
  p = strchr(p, ' ');
  if (!p) return -1;
  out->objects = strtoull(p, &p, 10);
  out->bytes = strtoull(p, &p, 10);
  out->build_ms = strtod(p, &p);
  out->pss0 = strtol(p, &p, 10);
  out->pss1 = strtol(p, &p, 10);
  for (int k = 0; k < forks; k++) out->fork_ms[k] = strtod(p, &p);
  for (int k = 0; k < forks; k++) out->wait_ms[k] = strtod(p, &p);
  return 0;
}

static void usage(void) {
  fprintf(stderr, "usage: forkbench [--mb MIB] [--sparse-mb MIB] [--forks N] [--rounds R] [--seed S] [--json FILE]\n"
                  "       forkbench --worker glibc|mesh [--mb MIB] [--sparse-mb MIB] [--forks N] [--seed S]\n");
  exit(2);
}

int main(int argc, char **argv) {
  const char *wcfg = NULL, *json = NULL;
  long mb = 200, sparse_mb = 0;
  int forks = 5, rounds = 3;
  uint64_t seed = 1;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--worker") && i + 1 < argc) wcfg = argv[++i];
    else if (!strcmp(argv[i], "--mb") && i + 1 < argc) mb = atol(argv[++i]);
    else if (!strcmp(argv[i], "--sparse-mb") && i + 1 < argc) sparse_mb = atol(argv[++i]);
    else if (!strcmp(argv[i], "--forks") && i + 1 < argc) forks = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 0);
    else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
    else usage();
  }
  if (mb < 1 || sparse_mb < 0 || forks < 1 || forks > MAX_FORKS || rounds < 1 || rounds > MAX_ROUNDS) usage();
  if (wcfg) return worker(wcfg, mb, sparse_mb, forks, seed);

  static const char *cfgs[2] = {"glibc", "mesh"};
  static wres_t res[2][MAX_ROUNDS];
  char self[4096];
  ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
  if (sl <= 0) {
    perror("readlink /proc/self/exe");
    return 1;
  }
  self[sl] = 0;
  printf("forkbench: ~%ld MiB heap of mixed-size objects", mb);
  if (sparse_mb) printf(" + one %ld MiB block with 1 byte written", sparse_mb);
  printf(", %d forks per worker process, %d rounds (glibc and mesh alternate)\n", forks, rounds);
  fflush(stdout);
  for (int r = 0; r < rounds; r++) {
    for (int i = 0; i < 2; i++) {
      int c = r % 2 ? 1 - i : i;
      if (run_worker(self, cfgs[c], mb, sparse_mb, forks, seed, &res[c][r]) != 0) {
        fprintf(stderr, "forkbench: worker %s round %d failed\n", cfgs[c], r);
        return 1;
      }
    }
    printf("  round %d: glibc fork %.2f ms, mesh fork %.2f ms (medians of %d)\n", r,
           median(res[0][r].fork_ms, forks), median(res[1][r].fork_ms, forks), forks);
    fflush(stdout);
  }
  double all_fork[2][MAX_FORKS * MAX_ROUNDS], all_wait[2][MAX_FORKS * MAX_ROUNDS];
  double build[2][MAX_ROUNDS], pss0[2][MAX_ROUNDS], pss1[2][MAX_ROUNDS], pr[MAX_ROUNDS];
  for (int c = 0; c < 2; c++)
    for (int r = 0; r < rounds; r++) {
      for (int k = 0; k < forks; k++) {
        all_fork[c][r * forks + k] = res[c][r].fork_ms[k];
        all_wait[c][r * forks + k] = res[c][r].wait_ms[k];
      }
      build[c][r] = res[c][r].build_ms;
      pss0[c][r] = (double)res[c][r].pss0 / 1024.0;
      pss1[c][r] = (double)res[c][r].pss1 / 1024.0;
    }
  for (int r = 0; r < rounds; r++) pr[r] = median(res[1][r].fork_ms, forks) / median(res[0][r].fork_ms, forks);
  int N = rounds * forks;
  double mf[2], mw[2];
  printf("\n  %-6s %9s %10s %9s %12s %12s %13s %15s\n", "alloc", "objects", "heap MiB", "build ms",
         "PSS MiB pre", "PSS MiB post", "fork() ms", "fork+wait ms");
  for (int c = 0; c < 2; c++) {
    mf[c] = median(all_fork[c], N);
    mw[c] = median(all_wait[c], N);
    printf("  %-6s %9zu %10.1f %9.1f %12.1f %12.1f %13.2f %15.2f\n", cfgs[c], res[c][0].objects,
           (double)res[c][0].bytes / 1048576.0, median(build[c], rounds), median(pss0[c], rounds),
           median(pss1[c], rounds), mf[c], mw[c]);
  }
  double prmin = pr[0], prmax = pr[0];
  for (int r = 1; r < rounds; r++) {
    if (pr[r] < prmin) prmin = pr[r];
    if (pr[r] > prmax) prmax = pr[r];
  }
  printf("\n  fork() mesh/glibc = %.2f  (paired per-round ratios %.2f..%.2f); fork+wait mesh/glibc = %.2f\n",
         mf[1] / mf[0], prmin, prmax, mw[1] / mw[0]);
  printf("  medians over %d rounds x %d forks\n", rounds, forks);

  if (json) {
    FILE *f = fopen(json, "w");
    if (!f) {
      fprintf(stderr, "forkbench: cannot write %s: %s\n", json, strerror(errno));
      return 1;
    }
    fprintf(f, "{\n  \"benchmark\": \"meshalloc-fork\",\n  \"meta\": {\"mb\": %ld, \"sparse_mb\": %ld, \"forks\": %d, \"rounds\": %d, "
               "\"seed\": %llu, \"mesh_version\": \"%s\"},\n",
            mb, sparse_mb, forks, rounds, (unsigned long long)seed, mesh_version());
    fprintf(f, "  \"fork_ratio\": %.4f, \"fork_wait_ratio\": %.4f,\n", mf[1] / mf[0], mw[1] / mw[0]);
    fprintf(f, "  \"configs\": {\n");
    for (int c = 0; c < 2; c++) {
      fprintf(f, "    \"%s\": {\"objects\": %zu, \"heap_bytes\": %zu, \"build_ms\": %.3f, \"pss_pre_mib\": %.2f, "
                 "\"pss_post_mib\": %.2f, \"fork_ms_median\": %.3f, \"fork_wait_ms_median\": %.3f, \"fork_ms\": [",
              cfgs[c], res[c][0].objects, res[c][0].bytes, median(build[c], rounds), median(pss0[c], rounds),
              median(pss1[c], rounds), mf[c], mw[c]);
      for (int i = 0; i < N; i++) fprintf(f, "%s%.3f", i ? ", " : "", all_fork[c][i]);
      fprintf(f, "]}%s\n", c ? "" : ",");
    }
    fprintf(f, "  }\n}\n");
    fclose(f);
    printf("wrote %s\n", json);
  }
  return 0;
}
