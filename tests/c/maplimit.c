/* maplimit.c - the kernel's mapping limit reached by the program itself.
 *
 * A heap is meshed (many aliases, so many arena mappings); then the program
 * maps single pages of its own until mmap fails: the process is at
 * vm.max_map_count. Freeing every object then makes the core restore the
 * aliases' own mappings, and some of those mmaps fail. That must never
 * abort: the ranges are set aside (retired_pages), nothing is handed out
 * from them, the heap stays consistent, and arena_mappings stays equal to
 * the kernel's count. Once the program unmaps its pages, a scavenge
 * restores them (retired_pages back to 0).
 *
 * Exit 0 and "maplimit ok" on success; failures on stderr with "FAIL".
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "mesh.h"
#include "testutil.h"

#define N 200000

static int fails;
#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); fails++; } } while (0)

static unsigned char *obj[N];
static void *own[70000];

static void check_count(const char *when) {
  uint64_t m = stat_get("arena_mappings");
  int k = maps_count();
  CHECK(m == (uint64_t)k, "%s: arena_mappings %llu, the kernel has %d", when, (unsigned long long)m, k);
}

int main(void) {
  mesh_option_set("period_ms", 0); /* meshing only when asked */
  mesh_option_set("max_mappings", 60000); /* let the arena grow its mappings */
  uint64_t rng = 0x243F6A8885A308D3ull;
  for (size_t i = 0; i < N; i++) {
    obj[i] = mesh_malloc(64);
    pat_fill(obj[i], 64, i);
  }
  for (size_t i = 0; i < N; i++) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    if (rng % 12) mesh_free(obj[i]), obj[i] = NULL;
  }
  mesh_compact();
  uint64_t meshed = stat_get("meshed_pages");
  printf("meshed %llu pages, arena mappings %llu\n", (unsigned long long)meshed,
         (unsigned long long)stat_get("arena_mappings"));
  CHECK(meshed > 100, "too little meshed to test anything");
  check_count("after meshing");

  /* the program's own mappings, up to the limit (alternating protections
   * so that the kernel cannot merge neighbours) */
  size_t nown = 0;
  while (nown < sizeof own / sizeof own[0]) {
    void *p = mmap(NULL, 4096, nown % 2 ? PROT_READ : PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) break;
    own[nown++] = p;
  }
  printf("the program mapped %zu pages of its own before mmap failed (errno %d)\n", nown, errno);

  for (size_t i = 0; i < N; i++)
    if (obj[i] && pat_check(obj[i], 64, i) != (size_t)-1) {
      CHECK(0, "object %zu changed", i);
      break;
    }
  for (size_t i = 0; i < N; i++)
    if (obj[i]) mesh_free(obj[i]), obj[i] = NULL; /* restores aliases: some mmaps fail now */
  uint64_t retired = stat_get("retired_pages");
  printf("at the limit: retired %llu pages, meshed %llu\n", (unsigned long long)retired,
         (unsigned long long)stat_get("meshed_pages"));
  CHECK(retired > 0, "no restore failed at the kernel's limit: the test did not reach it");
  CHECK(mesh_check_heap() == 0, "heap inconsistent with retired ranges");
  check_count("with retired ranges");
  /* the allocator goes on working at the limit (from what it can reuse) */
  for (size_t i = 0; i < N / 10; i++) {
    obj[i] = mesh_malloc(64);
    if (obj[i]) pat_fill(obj[i], 64, i);
  }
  for (size_t i = 0; i < N / 10; i++)
    if (obj[i]) mesh_free(obj[i]), obj[i] = NULL;

  for (size_t i = 0; i < nown; i++) munmap(own[i], 4096);
  mesh_scavenge(); /* retries the retired ranges */
  CHECK(stat_get("retired_pages") == 0, "%llu pages still retired after the program unmapped its own",
        (unsigned long long)stat_get("retired_pages"));
  CHECK(mesh_check_heap() == 0, "heap inconsistent after the retry");
  check_count("after the retry");
  for (size_t i = 0; i < N; i++) {
    obj[i] = mesh_malloc(64);
    pat_fill(obj[i], 64, i + 1);
  }
  for (size_t i = 0; i < N; i++)
    if (pat_check(obj[i], 64, i + 1) != (size_t)-1) {
      CHECK(0, "new object %zu changed", i);
      break;
    }
  if (fails) return 1;
  printf("maplimit ok\n");
  return 0;
}
