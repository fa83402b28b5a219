/* steady.c - memory in a steady state: does the heap stay flat, and what
 * does its bookkeeping cost?
 *
 * A pool of --live blocks (sizes 16..512 in 16-byte steps, most of them
 * small, as a Python process's are) is filled, then --steps times a random
 * block is freed and a new one of a random size allocated in its place, one
 * byte written. The live bytes hover around the same value throughout, so a
 * heap that holds its ground keeps the same PSS; one that leaks, or whose
 * free memory fragments into places it cannot reuse, creeps up.
 *
 * PSS (/proc/self/smaps_rollup) is read --samples times, evenly spaced.
 * Reported per allocator: PSS at the first sample (after the pool was
 * filled and the first 1/samples of the steps), at the last, the highest,
 * and the drift (last - first); for the meshalloc core, also its own
 * metadata_bytes (span records, page table, thread heaps) against the heap
 * (span pages), the "metadata <= 2 % of the heap".
 *
 * glibc malloc and the meshalloc core (mesh_malloc, linked in as in
 * bench.c) each run in a child forked before either allocates, so each
 * PSS is one allocator's. Times are printed but are not the point.
 *
 *   steady [--steps 10000000] [--live 200000] [--samples 20] [--seed 1] [--json FILE]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../cbench.h"
#include "mesh.h"

typedef struct {
  double seconds;
  long pss_first_kb, pss_last_kb, pss_max_kb;
  long long metadata_bytes, heap_bytes; /* mesh only; -1 for glibc */
} result_t;

static long pss_kb(void) { return cb_pss_kb(); }

static uint64_t rng;
static uint64_t next_rand(void) { return cb_splitmix(&rng); }

/* 16..512 bytes, three quarters of them 16..128 */
static size_t block_size(void) {
  uint64_t r = next_rand();
  unsigned steps = (r & 3) ? 8 : 32;
  return 16u * (1u + (unsigned)((r >> 8) % steps));
}

static long long mesh_counter(const char *name) { return cb_mesh_stat(mesh_stats_read, mesh_stats_name, name); }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static result_t run(int mesh, long steps, long live, int samples, uint64_t seed) {
  void *(*alloc)(size_t) = mesh ? mesh_malloc : malloc;
  void (*release)(void *) = mesh ? mesh_free : free;
  result_t r = {0};
  r.metadata_bytes = r.heap_bytes = -1;
  rng = seed;
  void **pool = calloc((size_t)live, sizeof *pool);
  if (!pool) {
    perror("calloc");
    exit(1);
  }
  for (long i = 0; i < live; i++) {
    pool[i] = alloc(block_size());
    if (!pool[i]) {
      fprintf(stderr, "steady: allocation failed while filling the pool\n");
      exit(1);
    }
    *(volatile char *)pool[i] = 1;
  }
  long every = steps / samples > 0 ? steps / samples : 1;
  double t0 = now_s();
  for (long s = 1; s <= steps; s++) {
    long i = (long)(next_rand() % (uint64_t)live);
    release(pool[i]);
    pool[i] = alloc(block_size());
    if (!pool[i]) {
      fprintf(stderr, "steady: allocation failed at step %ld\n", s);
      exit(1);
    }
    *(volatile char *)pool[i] = 1;
    if (s % every == 0) {
      long p = pss_kb();
      if (!r.pss_first_kb) r.pss_first_kb = p;
      r.pss_last_kb = p;
      if (p > r.pss_max_kb) r.pss_max_kb = p;
    }
  }
  r.seconds = now_s() - t0;
  if (mesh) {
    r.metadata_bytes = mesh_counter("metadata_bytes");
    r.heap_bytes = mesh_counter("span_pages") * 4096;
  }
  return r;
}

int main(int argc, char **argv) {
  long steps = 10000000, live = 200000;
  int samples = 20;
  uint64_t seed = 1;
  const char *json = NULL;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atol(argv[++i]);
    else if (!strcmp(argv[i], "--live") && i + 1 < argc) live = atol(argv[++i]);
    else if (!strcmp(argv[i], "--samples") && i + 1 < argc) samples = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 0);
    else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
    else {
      fprintf(stderr, "usage: steady [--steps N] [--live N] [--samples N] [--seed S] [--json FILE]\n");
      return 2;
    }
  }
  if (steps < 1 || live < 1 || samples < 2) {
    fprintf(stderr, "steady: --steps and --live must be >= 1, --samples >= 2\n");
    return 2;
  }
  const char *names[2] = {"glibc", "mesh"};
  result_t res[2];
  for (int m = 0; m < 2; m++) {
    int fd[2];
    if (pipe(fd) != 0) {
      perror("pipe");
      return 1;
    }
    pid_t pid = fork();
    if (pid < 0) {
      perror("fork");
      return 1;
    }
    if (pid == 0) {
      close(fd[0]);
      result_t r = run(m, steps, live, samples, seed);
      ssize_t w = write(fd[1], &r, sizeof r);
      _exit(w == (ssize_t)sizeof r ? 0 : 1);
    }
    close(fd[1]);
    ssize_t got = read(fd[0], &res[m], sizeof res[m]);
    close(fd[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    if (got != (ssize_t)sizeof res[m] || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      fprintf(stderr, "steady: the %s run failed\n", names[m]);
      return 1;
    }
  }
  printf("steady state: %ld live blocks of 16..512 B, %ld free+malloc steps, PSS sampled %d times (KiB)\n",
         live, steps, samples);
  printf("  alloc   seconds   pss_first  pss_last   pss_max   drift    metadata/heap\n");
  for (int m = 0; m < 2; m++) {
    const result_t *r = &res[m];
    char meta[64] = "-";
    if (r->metadata_bytes >= 0 && r->heap_bytes > 0)
      snprintf(meta, sizeof meta, "%.2f %% (%lld KiB of %lld KiB)", 100.0 * (double)r->metadata_bytes / (double)r->heap_bytes,
               r->metadata_bytes / 1024, r->heap_bytes / 1024);
    printf("  %-6s %8.2f %11ld %9ld %9ld %+7ld    %s\n", names[m], r->seconds, r->pss_first_kb, r->pss_last_kb,
           r->pss_max_kb, r->pss_last_kb - r->pss_first_kb, meta);
  }
  if (json) {
    FILE *f = fopen(json, "w");
    if (!f) {
      perror(json);
      return 1;
    }
    fprintf(f, "{\"steps\": %ld, \"live\": %ld, \"samples\": %d, \"seed\": %llu", steps, live, samples,
            (unsigned long long)seed);
    for (int m = 0; m < 2; m++) {
      const result_t *r = &res[m];
      fprintf(f,
              ", \"%s\": {\"seconds\": %.3f, \"pss_first_kb\": %ld, \"pss_last_kb\": %ld, \"pss_max_kb\": %ld, "
              "\"metadata_bytes\": %lld, \"heap_bytes\": %lld}",
              names[m], r->seconds, r->pss_first_kb, r->pss_last_kb, r->pss_max_kb, r->metadata_bytes, r->heap_bytes);
    }
    fprintf(f, "}\n");
    fclose(f);
  }
  return 0;
}
