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
 * During each compaction a thread keeps rewriting live objects (odd n),
 * or (even n) the refused call first rewrites every live object on a
 * writable page, among them those of spans already remapped. After
 * each compaction: the refusal is counted (mesh_remap_failures, at
 * most one per compaction: a refused mesh ends the pass, as the mapping
 * budget does), mesh_check_heap() passes and every live object of every
 * batch holds the bytes last written to it; then an unhindered compaction meshes what
 * was left, and the same holds. At the end, freeing everything gives every
 * meshed range its own pages back.
 *
 * Exit 0 and "mesh_faults ok" on success; failures on stderr with "FAIL".
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

void _mesh_os_fail_mappings(unsigned nth, unsigned count, void (*at_failure)(void)); /* os.c, tests only */

#define BATCH 6000
#define MAX_N 24
#define LEVELS 2
#define BATCHES (MAX_N * LEVELS + 1)
#define SIZE 48

static int fails;
#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); fails++; } } while (0)

static unsigned char *obj[BATCHES][BATCH];
static uint32_t ver[BATCHES][BATCH]; /* the writer's rewrites of each object */
static rng_t rng;

/* An object's bytes name it and its version: the tag in the first word
 * (testutil's pattern alone depends on the tag's low byte only), the
 * pattern after it. */
static uint64_t tag(int b, int i) { return (uint64_t)b << 40 | (uint64_t)i << 24 | (ver[b][i] & 0xffffff); }

static void stamp(unsigned char *p, uint64_t t) {
  pat_fill(p, SIZE, t);
  memcpy(p, &t, sizeof t);
}

static bool stamped(const unsigned char *p, uint64_t t) {
  uint64_t first;
  memcpy(&first, p, sizeof first);
  for (size_t k = sizeof first; k < SIZE; k++)
    if (p[k] != pat_byte(t, k)) return false;
  return first == t;
}

/* A thread rewriting live objects of the batches while they are compacted, so
 * that writes land in spans already remapped when a later call is refused
 * (the undo must carry them back into the source's pages). */
typedef struct {
  int b; /* batches 0..b */
  atomic_int stop;
  unsigned long writes;
} writer_t;

static void *writer_main(void *arg) {
  writer_t *w = arg;
  rng_t r;
  rng_seed(&r, (uint64_t)w->b + 1);
  while (!atomic_load_explicit(&w->stop, memory_order_relaxed)) {
    int b = (int)rng_below(&r, (uint64_t)w->b + 1), i = (int)rng_below(&r, BATCH);
    if (!obj[b][i]) continue;
    ver[b][i]++;
    stamp(obj[b][i], tag(b, i));
    w->writes++;
  }
  return NULL;
}

static void make_batch(int b) {
  for (int i = 0; i < BATCH; i++) {
    obj[b][i] = mesh_malloc(SIZE);
    if (!obj[b][i]) DIE("malloc failed");
    stamp(obj[b][i], tag(b, i));
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
      if (obj[b][i] && !stamped(obj[b][i], tag(b, i))) {
        CHECK(0, "%s: object %d of batch %d changed", when, i, b);
        return;
      }
}

/* At the refused call (in the mesh, lock held): every live object of the
 * batches so far (a compaction meshes spans of any of them) on a page
 * writable now is rewritten. Those include the objects
 * of virtual spans already remapped onto the destination, whose new bytes
 * the undo must carry back; pages the mesh protected are left alone (a
 * write there would wait for the mesh this thread is making). The maps
 * file is read with libc's stdio, whose malloc is not the core's. */
static int hook_batch;
static uintptr_t rw_lo[8192], rw_hi[8192];

static void write_what_is_writable(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) DIE("open /proc/self/maps");
  char line[512], perms[8];
  int nr = 0;
  unsigned long long a, z;
  while (nr < 8192 && fgets(line, sizeof line, f))
    if (sscanf(line, "%llx-%llx %7s", &a, &z, perms) == 3 && perms[0] == 'r' && perms[1] == 'w')
      rw_lo[nr] = (uintptr_t)a, rw_hi[nr++] = (uintptr_t)z;
  fclose(f);
  for (int b = 0; b <= hook_batch; b++)
    for (int i = 0; i < BATCH; i++) {
      uintptr_t p = (uintptr_t)obj[b][i];
      int lo = 0, hi = nr; /* the maps file is in address order: the last range starting at or below p */
      while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (rw_lo[mid] <= p) lo = mid;
        else hi = mid;
      }
      if (p && nr && p >= rw_lo[lo] && p + SIZE <= rw_hi[lo]) {
        ver[b][i]++;
        stamp(obj[b][i], tag(b, i));
      }
    }
}

/* A compaction after batch b whose n-th mapping call is refused, with a
 * writer at work on batches 0..b and the hook above at the refusal (when the writer
 * has stopped: both would write the same objects); returns the refusals. */
static uint64_t refused_compaction(int b, unsigned n, unsigned long *writes) {
  uint64_t before = stat_get("mesh_remap_failures");
  writer_t w = {.b = b};
  pthread_t t;
  bool hook = n % 2 == 0;
  hook_batch = b;
  if (!hook && pthread_create(&t, NULL, writer_main, &w) != 0) DIE("pthread_create");
  _mesh_os_fail_mappings(n, 1, hook ? write_what_is_writable : NULL);
  mesh_compact();
  _mesh_os_fail_mappings(0, 0, NULL);
  atomic_store(&w.stop, 1);
  if (!hook) pthread_join(t, NULL);
  *writes += w.writes;
  return stat_get("mesh_remap_failures") - before;
}

int main(void) {
  mesh_option_set("period_ms", 0);     /* meshing only when asked */
  mesh_option_set("mesher_thread", 0); /* and on this thread only */
  rng_seed(&rng, 0x243F6A8885A308D3ull);
  int b = 0;
  uint64_t hit[LEVELS] = {0};
  unsigned long writes = 0;
  for (int level = 0; level < LEVELS; level++)
    for (unsigned n = 1; n <= MAX_N; n++, b++) {
      make_batch(b);
      thin(b, 85);
      if (level == 1) {
        mesh_compact(); /* unhindered: destinations with aliases */
        thin(b, 60);    /* ... that become sparse sources themselves */
      }
      uint64_t meshes = stat_get("mesh_count");
      uint64_t r = refused_compaction(b, n, &writes);
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
  printf("refusals hit: level 1 %llu of %d, level 2 %llu of %d; %lu writes during them\n",
         (unsigned long long)hit[0], MAX_N, (unsigned long long)hit[1], MAX_N, writes);
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
