/* fragmenter.c - the fragmentation pattern meshing exists for, in plain C.
 *
 * Allocates --count small objects (sizes --min..--max in 16-byte steps,
 * every byte written), then frees a random (100 - --keep-pct) % of them, so
 * the survivors are scattered over nearly every page the heap ever touched.
 * A non-moving allocator can hand those pages back only where a whole page
 * emptied; meshing would fold pages with disjoint live slots together.
 *
 * Uses the plain malloc family: run it as is for glibc, or with
 * LD_PRELOAD=libmesh.so for meshalloc. PSS (from /proc/self/smaps_rollup) is
 * reported at four points: baseline (the bookkeeping arrays, mapped outside
 * any heap, already touched), after allocating, after freeing, and after
 * malloc_trim(0) (glibc: returns whole free pages inside the heap; libmesh:
 * scavenges dirty free pages). If libmesh is the process malloc, its
 * mesh_count and meshed_pages counters are printed too (looked up with
 * dlsym, so the program has no link dependency on it).
 *
 * Output: one JSON line on stdout.
 */
#include <dlfcn.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../cbench.h"

static long pss_kb(void) { return cb_pss_kb(); }

static uint64_t rng;
static uint64_t next_rand(void) { return cb_splitmix(&rng); }

static void *map(size_t bytes) {
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(1);
  }
  return p;
}

/* libmesh counter by name, or -1 when libmesh is not the process malloc */
static long long mesh_counter(const char *name) {
  int (*count)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "mesh_stats_count");
  const char *(*nm)(int) = (const char *(*)(int))dlsym(RTLD_DEFAULT, "mesh_stats_name");
  int (*rd)(uint64_t *, int) = (int (*)(uint64_t *, int))dlsym(RTLD_DEFAULT, "mesh_stats_read");
  if (!count || !nm || !rd) return -1;
  return cb_mesh_stat(rd, nm, name);
}

int main(int argc, char **argv) {
  long count = 2000000, minsz = 16, maxsz = 256;
  double keep_pct = 2.0;
  uint64_t seed = 7;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--count") && i + 1 < argc) count = atol(argv[++i]);
    else if (!strcmp(argv[i], "--min") && i + 1 < argc) minsz = atol(argv[++i]);
    else if (!strcmp(argv[i], "--max") && i + 1 < argc) maxsz = atol(argv[++i]);
    else if (!strcmp(argv[i], "--keep-pct") && i + 1 < argc) keep_pct = atof(argv[++i]);
    else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 0);
    else {
      fprintf(stderr, "usage: fragmenter [--count N] [--min B] [--max B] [--keep-pct P] [--seed S]\n");
      return 2;
    }
  }
  if (count < 1 || minsz < 1 || maxsz < minsz || keep_pct < 0 || keep_pct > 100) return 2;
  rng = seed;
  void **ptrs = map((size_t)count * sizeof(void *));
  uint32_t *order = map((size_t)count * sizeof(uint32_t));
  long steps = (maxsz - minsz) / 16 + 1;
  long pss_base = pss_kb();

  size_t bytes = 0;
  for (long i = 0; i < count; i++) {
    size_t s = (size_t)(minsz + 16 * (long)(next_rand() % (uint64_t)steps));
    char *p = malloc(s);
    if (!p) {
      fprintf(stderr, "fragmenter: malloc(%zu) failed after %ld objects\n", s, i);
      return 1;
    }
    memset(p, 0x5A, s);
    ptrs[i] = p;
    bytes += s;
  }
  long pss_alloc = pss_kb();

  /* free a random (100 - keep) %: the first nfree of a random permutation */
  for (long i = 0; i < count; i++) order[i] = (uint32_t)i;
  long nkeep = (long)((double)count * keep_pct / 100.0 + 0.5);
  long nfree = count - nkeep;
  for (long i = 0; i < nfree; i++) {
    long j = i + (long)(next_rand() % (uint64_t)(count - i));
    uint32_t t = order[i];
    order[i] = order[j];
    order[j] = t;
  }
  for (long i = 0; i < nfree; i++) {
    free(ptrs[order[i]]);
    ptrs[order[i]] = NULL;
  }
  size_t live = 0;
  rng = seed; /* replay the size sequence to count the survivors' bytes */
  for (long i = 0; i < count; i++) {
    size_t s = (size_t)(minsz + 16 * (long)(next_rand() % (uint64_t)steps));
    if (ptrs[i]) live += s;
  }
  long pss_free = pss_kb();
  malloc_trim(0);
  long pss_trim = pss_kb();

  /* the survivors must still be intact */
  long corrupt = 0;
  for (long i = 0; i < count; i++)
    if (ptrs[i] && ((unsigned char *)ptrs[i])[0] != 0x5A) corrupt++;

  printf("{\"count\": %ld, \"min\": %ld, \"max\": %ld, \"keep_pct\": %.3f, \"kept\": %ld, "
         "\"alloc_bytes\": %zu, \"live_bytes\": %zu, \"pss_base_kb\": %ld, \"pss_alloc_kb\": %ld, "
         "\"pss_free_kb\": %ld, \"pss_trim_kb\": %ld, \"corrupt\": %ld, \"libmesh\": %s, "
         "\"mesh_count\": %lld, \"meshed_pages\": %lld}\n",
         count, minsz, maxsz, keep_pct, nkeep, bytes, live, pss_base, pss_alloc, pss_free, pss_trim, corrupt,
         dlsym(RTLD_DEFAULT, "mesh_version") ? "true" : "false", mesh_counter("mesh_count"),
         mesh_counter("meshed_pages"));
  return corrupt ? 1 : 0;
}
