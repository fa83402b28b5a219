/* mesh_faults.c - a mapping call the kernel refuses in the middle of a mesh.
 *
 * At vm.max_map_count the kernel refuses an mmap(MAP_FIXED) or an mprotect
 * that would split a mapping, with ENOMEM, before it touches the old
 * mapping. The core's test hook (_mesh_os_fail_mappings, os.c) makes the
 * n-th arena mapping call from now on fail that way. For every n up to
 * past the number of calls a compaction makes, over a fresh batch of
 * objects each time:
 *   level 1: sources that are plain spans (one virtual span each);
 *   level 2: after more frees, sources that are destinations with aliases
 *            (several virtual spans, the undo writes objects back into the
 *            source's memfd pages).
 * After each compaction: the refusal is counted (mesh_remap_failures, at
 * most one per compaction: a refused mesh ends the pass, as the mapping
 * budget does), mesh_check_heap() passes and every live object of every
 * batch still holds its bytes; then an unhindered compaction meshes what
 * was left, and the same holds. At the end, freeing everything gives every
 * meshed range its own pages back.
 *
 * Exit 0 and "mesh_faults ok" on success; failures on stderr with "FAIL".
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mesh.h"
#include "testutil.h"

void _mesh_os_fail_mappings(unsigned nth, unsigned count); /* os.c, tests only */

#define BATCH 6000
#define MAX_N 24
#define LEVELS 2
#define BATCHES (MAX_N * LEVELS + 1)
#define SIZE 48

static int fails;
#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); fails++; } } while (0)

static unsigned char *obj[BATCHES][BATCH];
static rng_t rng;

static uint64_t tag(int b, int i) { return (uint64_t)b * BATCH + (uint64_t)i; }

static void make_batch(int b) {
  for (int i = 0; i < BATCH; i++) {
    obj[b][i] = mesh_malloc(SIZE);
    if (!obj[b][i]) DIE("malloc failed");
    pat_fill(obj[b][i], SIZE, tag(b, i));
  }
}

/* Frees each live object of batch b with probability pct %. */
static void thin(int b, unsigned pct) {
  for (int i = 0; i < BATCH; i++)
    if (obj[b][i] && rng_below(&rng, 100) < pct) mesh_free(obj[b][i]), obj[b][i] = NULL;
}

static void check_all(const char *when, int upto) {
  CHECK(mesh_check_heap() == 0, "heap inconsistent %s", when);
  for (int b = 0; b <= upto; b++)
    for (int i = 0; i < BATCH; i++)
      if (obj[b][i] && pat_check(obj[b][i], SIZE, tag(b, i)) != (size_t)-1) {
        CHECK(0, "%s: object %d of batch %d changed", when, i, b);
        return;
      }
}

/* A compaction whose n-th mapping call is refused; returns the refusals. */
static uint64_t refused_compaction(unsigned n) {
  uint64_t before = stat_get("mesh_remap_failures");
  _mesh_os_fail_mappings(n, 1);
  mesh_compact();
  _mesh_os_fail_mappings(0, 0);
  return stat_get("mesh_remap_failures") - before;
}

int main(void) {
  mesh_option_set("period_ms", 0);     /* meshing only when asked */
  mesh_option_set("mesher_thread", 0); /* and on this thread only */
  rng_seed(&rng, 0x243F6A8885A308D3ull);
  int b = 0;
  uint64_t hit[LEVELS] = {0};
  for (int level = 0; level < LEVELS; level++)
    for (unsigned n = 1; n <= MAX_N; n++, b++) {
      make_batch(b);
      thin(b, 85);
      if (level == 1) {
        mesh_compact(); /* unhindered: destinations with aliases */
        thin(b, 60);    /* ... that become sparse sources themselves */
      }
      uint64_t meshes = stat_get("mesh_count");
      uint64_t r = refused_compaction(n);
      CHECK(r <= 1, "level %d, call %u: %llu refusals counted for one injected", level + 1, n,
            (unsigned long long)r);
      hit[level] += r;
      char when[64];
      snprintf(when, sizeof when, "after refused call %u at level %d", n, level + 1);
      check_all(when, b);
      if (n == 1) CHECK(r == 1, "the first call of a compaction was not refused");
      /* a refusal stops that compaction; the next one meshes the rest */
      mesh_compact();
      if (n == 1) CHECK(stat_get("mesh_count") > meshes, "nothing meshed after a refusal");
      snprintf(when, sizeof when, "after compacting again (call %u, level %d)", n, level + 1);
      check_all(when, b);
    }
  printf("refusals hit: level 1 %llu of %d, level 2 %llu of %d\n", (unsigned long long)hit[0], MAX_N,
         (unsigned long long)hit[1], MAX_N);
  CHECK(hit[0] >= MAX_N / 2 && hit[1] >= MAX_N / 2, "too few calls refused to test anything");
  /* meshing goes on as before */
  make_batch(b);
  thin(b, 85);
  uint64_t meshes = stat_get("mesh_count");
  mesh_compact();
  CHECK(stat_get("mesh_count") > meshes, "an unhindered compaction meshed nothing");
  check_all("after the last compaction", b);
  /* and freeing everything gives every meshed range its own pages back */
  for (int k = 0; k <= b; k++) thin(k, 100);
  CHECK(mesh_check_heap() == 0, "heap inconsistent after freeing everything");
  CHECK(stat_get("meshed_pages") == 0, "%llu pages still meshed", (unsigned long long)stat_get("meshed_pages"));
  if (fails) return 1;
  printf("mesh_faults ok\n");
  return 0;
}
