/* mesh_writers.c - meshing under threads that keep writing (docs/meshing.md:
 * "One mesh", "Why no write is lost: the write barrier").
 *
 * Usage: mesh_writers MODE SEED [SECONDS]
 *   compact   writer threads own the survivors of a fragmented population
 *             and keep rewriting them (a counter word, then the whole body
 *             derived from it), checking before every write that the last
 *             one is still there; now and then a writer frees one of its
 *             objects (through whatever address, alias or not) and
 *             allocates a replacement. The main thread keeps producing
 *             sparse spans (allocations in a short-lived thread, 90 % freed)
 *             and calls mesh_compact() in a loop.
 *   periodic  the same, but with period_ms = 1 and no explicit compaction:
 *             meshing is triggered by frees and refills.
 *   barrier   rounds of spans built to mesh (on each of 64 full pages of a
 *             class only every other slot is live, alternating), with two
 *             writers writing all of their objects continuously while the
 *             main thread meshes them; writes that hit a span while it is
 *             write-protected wait in the barrier (mesh_barrier_waits;
 *             rounds go on, up to 3x SECONDS, until at least one did).
 * Every object's contents are checked at the end; no write may be lost.
 * The heap is checked with mesh_check_heap() once the writers are quiet,
 * and every object is freed at the end (meshed_pages back to 0, one arena
 * mapping). Prints "writers ok" on success; failures say "FAIL".
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mesh.h"
#include "testutil.h"

#define PAGE 4096u

static atomic_int g_fail;

#define CHECK(cond, ...) do { if (!(cond)) { \
    fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); fflush(stderr); atomic_fetch_add(&g_fail, 1); } } while (0)

/* ---- objects: word 0 is a counter, the rest a pattern derived from it ----- */
typedef struct {
  unsigned char *p;
  size_t n;
  uint64_t id;
  uint64_t count; /* what the owner wrote last */
} obj_t;

static uint64_t body_tag(const obj_t *o) { return o->id * 0x9e3779b97f4a7c15ull + o->count; }

static void obj_write(obj_t *o) {
  *(volatile uint64_t *)o->p = o->count; /* the counter first: the word most likely to race a mesh */
  pat_fill(o->p + 8, o->n - 8, body_tag(o));
}

/* 0 when the object holds its last write. */
static int obj_check(const obj_t *o, const char *who) {
  uint64_t c = *(volatile uint64_t *)o->p;
  size_t bad = c == o->count ? pat_check(o->p + 8, o->n - 8, body_tag(o)) : 0;
  if (c != o->count || bad != (size_t)-1) {
    fprintf(stderr, "FAIL %s: object %llu at %p (%zu B): counter %llu, expected %llu; first bad body byte %zd\n",
            who, (unsigned long long)o->id, (void *)o->p, o->n, (unsigned long long)c,
            (unsigned long long)o->count, c == o->count ? (ssize_t)bad : (ssize_t)-1);
    atomic_fetch_add(&g_fail, 1);
    return 1;
  }
  return 0;
}

static const size_t k_sizes[] = {16, 32, 48, 64, 80, 96, 128, 160, 192, 256, 320, 384, 512};
#define NSIZES (sizeof k_sizes / sizeof k_sizes[0])

/* ---- allocations in a thread that exits: every span ends up detached ------- */
typedef struct { obj_t *out; size_t n; uint64_t seed, id0; size_t fixed; } batch_t;

static void *batch_thread(void *arg) {
  batch_t *b = arg;
  rng_t r; rng_seed(&r, b->seed);
  for (size_t i = 0; i < b->n; i++) {
    obj_t *o = &b->out[i];
    o->n = b->fixed ? b->fixed : k_sizes[rng_below(&r, NSIZES)];
    o->p = mesh_malloc(o->n);
    if (!o->p) DIE("mesh_malloc(%zu) failed", o->n);
    o->id = b->id0 + i;
    o->count = 0;
    obj_write(o);
  }
  return NULL;
}

static void alloc_detached(obj_t *out, size_t n, uint64_t seed, uint64_t id0, size_t fixed) {
  batch_t b = {out, n, seed, id0, fixed};
  pthread_t t;
  if (pthread_create(&t, NULL, batch_thread, &b) != 0) DIE("pthread_create");
  pthread_join(t, NULL);
}

/* ---- writers ------------------------------------------------------------------ */
typedef struct {
  int id;
  obj_t *objs;
  size_t n;
  uint64_t seed;
  int replace; /* 1: now and then free an object and allocate a replacement */
  uint64_t next_id;
  long writes, replaced;
} writer_t;

static atomic_int g_stop;
static atomic_long g_total_writes;

static void *writer_main(void *arg) {
  writer_t *w = arg;
  rng_t r; rng_seed(&r, w->seed);
  char who[32];
  snprintf(who, sizeof who, "writer %d", w->id);
  long local = 0;
  while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
    for (int k = 0; k < 256; k++) {
      obj_t *o = &w->objs[w->replace ? rng_below(&r, w->n) : (size_t)(local % (long)w->n)];
      if (obj_check(o, who)) return NULL;
      if (w->replace && rng_below(&r, 64) == 0) {
        mesh_free(o->p);
        o->n = k_sizes[rng_below(&r, NSIZES)];
        o->p = mesh_malloc(o->n);
        if (!o->p) DIE("writer: malloc");
        o->id = w->next_id++;
        o->count = 0;
        w->replaced++;
      } else {
        o->count++;
      }
      obj_write(o);
      local++;
    }
    atomic_fetch_add_explicit(&g_total_writes, 256, memory_order_relaxed);
  }
  w->writes = local;
  return NULL;
}

/* ---- compact / periodic -------------------------------------------------------- */
static void junk_round(obj_t *junk, size_t *njunk, size_t cap, rng_t *r, uint64_t *next_id) {
  enum { B = 3000 };
  static obj_t batch[B];
  alloc_detached(batch, B, rng_next(r), *next_id, 0);
  *next_id += B;
  for (size_t i = 0; i < B; i++) {
    if (rng_below(r, 10) == 0 && *njunk < cap) junk[(*njunk)++] = batch[i];
    else mesh_free(batch[i].p);
  }
}

static int run_writers(const char *mode, uint64_t seed, double seconds) {
  bool periodic = strcmp(mode, "periodic") == 0;
  if (mesh_option_set("period_ms", periodic ? 1 : 0) != 0) DIE("option period_ms");
  enum { N = 40000, W = 2, JUNK_CAP = 60000 };
  obj_t *pop = calloc(N, sizeof *pop);
  obj_t *junk = calloc(JUNK_CAP, sizeof *junk);
  if (!pop || !junk) DIE("calloc");
  alloc_detached(pop, N, seed, 1, 0);
  rng_t r; rng_seed(&r, seed ^ 0x1234);
  size_t live = 0;
  for (size_t i = 0; i < N; i++) {
    if (rng_below(&r, 100) < 20) pop[live++] = pop[i];
    else mesh_free(pop[i].p);
  }
  /* writer w owns pop[w*per .. ) */
  writer_t ws[W];
  pthread_t th[W];
  size_t per = live / W;
  for (int w = 0; w < W; w++) {
    ws[w] = (writer_t){w, pop + (size_t)w * per, w == W - 1 ? live - (size_t)w * per : per, seed + 100 + (uint64_t)w,
                       1, (uint64_t)(w + 1) << 40, 0, 0};
    if (pthread_create(&th[w], NULL, writer_main, &ws[w]) != 0) DIE("pthread_create");
  }
  uint64_t next_id = 1ull << 50;
  size_t njunk = 0;
  double t0 = now_s();
  long rounds = 0;
  size_t freed = 0;
  while (now_s() - t0 < seconds && !atomic_load(&g_fail)) {
    junk_round(junk, &njunk, JUNK_CAP, &r, &next_id);
    if (!periodic) freed += mesh_compact();
    else { struct timespec ts = {0, 2 * 1000 * 1000}; nanosleep(&ts, NULL); }
    rounds++;
  }
  atomic_store(&g_stop, 1);
  long writes = 0, replaced = 0;
  for (int w = 0; w < W; w++) { pthread_join(th[w], NULL); writes += ws[w].writes; replaced += ws[w].replaced; }
  uint64_t meshes = stat_get("mesh_count");
  printf("%s: seed=%llu rounds=%ld compact_freed=%zu writes=%ld replaced=%ld mesh_count=%llu meshed_pages=%llu "
         "barrier_waits=%llu passes=%llu arena_mappings=%llu mappings_hwm=%llu budget_stops=%llu\n", mode,
         (unsigned long long)seed, rounds, freed, writes, replaced, (unsigned long long)meshes,
         (unsigned long long)stat_get("meshed_pages"), (unsigned long long)stat_get("mesh_barrier_waits"),
         (unsigned long long)stat_get("mesh_passes"), (unsigned long long)stat_get("arena_mappings"),
         (unsigned long long)stat_get("arena_mappings_hwm"), (unsigned long long)stat_get("mesh_budget_stops"));
  CHECK(meshes > 0, "nothing meshed");
  CHECK(writes > 0, "the writers did not run");
  for (size_t i = 0; i < live; i++) if (obj_check(&pop[i], "final check")) break;
  for (size_t i = 0; i < njunk; i++) if (obj_check(&junk[i], "final check (junk)")) break;
  /* the meshing thread may still be at work: stop meshing (a pass in flight
   * ends before mesh_check_heap gets the lock) so that the count and the
   * kernel's are read with nothing changing in between */
  mesh_option_set("mesh", 0);
  CHECK(mesh_check_heap() == 0, "heap inconsistent");
  uint64_t counted = stat_get("arena_mappings");
  int kernel = maps_count();
  CHECK(counted == (uint64_t)kernel, "arena_mappings %llu, kernel %d", (unsigned long long)counted, kernel);
  mesh_option_set("mesh", 1);
  /* a last compaction with everyone quiet, then everything goes */
  mesh_compact();
  for (size_t i = 0; i < live; i++) if (obj_check(&pop[i], "after the last compaction")) break;
  for (size_t i = 0; i < live; i++) mesh_free(pop[i].p);
  for (size_t i = 0; i < njunk; i++) mesh_free(junk[i].p);
  CHECK(stat_get("meshed_pages") == 0, "meshed_pages %llu after freeing everything",
        (unsigned long long)stat_get("meshed_pages"));
  CHECK(stat_get("arena_mappings") == 1 && maps_count() == 1, "arena_mappings %llu (kernel %d) after freeing everything",
        (unsigned long long)stat_get("arena_mappings"), maps_count());
  CHECK(mesh_check_heap() == 0, "heap inconsistent at the end");
  free(pop);
  free(junk);
  if (atomic_load(&g_fail)) return 1;
  printf("writers ok\n");
  return 0;
}

/* ---- barrier ------------------------------------------------------------------------ */
static int cmp_obj(const void *a, const void *b) {
  uintptr_t x = (uintptr_t)((const obj_t *)a)->p, y = (uintptr_t)((const obj_t *)b)->p;
  return x < y ? -1 : x > y;
}

/* size-B objects on npages full spans; on the j-th span (address order)
 * only slots with slot % 2 == j % 2 stay live. Returns the live count. */
static size_t make_alternating(obj_t *live, size_t size, int npages, uint64_t seed, uint64_t id0) {
  void *probe = mesh_malloc(size);
  size_t per = mesh_span_of(probe, NULL) / size, n = per * (size_t)(npages + 3);
  mesh_free(probe);
  obj_t *all = calloc(n, sizeof *all);
  if (!all) DIE("calloc");
  alloc_detached(all, n, seed, id0, size);
  qsort(all, n, sizeof *all, cmp_obj);
  size_t nlive = 0;
  int pages = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    uintptr_t span = span_of(all[i].p);
    while (j < n && span_of(all[j].p) == span) j++;
    bool full = j - i == per && pages < npages;
    for (size_t k = i; k < j; k++) {
      unsigned slot = (unsigned)(((uintptr_t)all[k].p - span) / size);
      if (full && slot % 2 == (unsigned)pages % 2) live[nlive++] = all[k];
      else mesh_free(all[k].p);
    }
    pages += full;
    i = j;
  }
  free(all);
  if (pages < npages) DIE("only %d full pages", pages);
  return nlive;
}

static int run_barrier(uint64_t seed, double seconds) {
  if (mesh_option_set("period_ms", 0) != 0) DIE("option period_ms");
  enum { PAGES = 64, W = 2 };
  static const size_t sizes[] = {64, 256, 512, 16};
  obj_t *live = calloc(PAGES * PAGE / 16, sizeof *live);
  if (!live) DIE("calloc");
  double t0 = now_s();
  long rounds = 0, writes = 0;
  size_t meshed = 0;
  uint64_t id = 1;
  /* at least `seconds` and 4 rounds; up to 3x longer until a write has
   * actually hit a span under protection */
  for (;;) {
    double t = now_s() - t0;
    if (atomic_load(&g_fail) || (rounds >= 4 && t >= seconds && (stat_get("mesh_barrier_waits") > 0 || t >= 3 * seconds)))
      break;
    size_t size = sizes[rounds % 4];
    size_t n = make_alternating(live, size, PAGES, seed + (uint64_t)rounds, id);
    id += n * 4;
    writer_t ws[W];
    pthread_t th[W];
    size_t per = n / W;
    atomic_store(&g_stop, 0);
    atomic_store(&g_total_writes, 0);
    for (int w = 0; w < W; w++) {
      ws[w] = (writer_t){w, live + (size_t)w * per, w == W - 1 ? n - (size_t)w * per : per, seed + (uint64_t)w, 0, 0, 0, 0};
      if (pthread_create(&th[w], NULL, writer_main, &ws[w]) != 0) DIE("pthread_create");
    }
    while (atomic_load(&g_total_writes) < 512) sched_yield(); /* both are writing */
    size_t freed = mesh_compact();
    atomic_store(&g_stop, 1);
    for (int w = 0; w < W; w++) { pthread_join(th[w], NULL); writes += ws[w].writes; }
    CHECK(freed >= PAGES / 4, "round %ld: only %zu of %d pages meshed", rounds, freed, PAGES);
    meshed += freed;
    for (size_t i = 0; i < n; i++) if (obj_check(&live[i], "after the round")) break;
    CHECK(mesh_check_heap() == 0, "heap inconsistent after round %ld", rounds);
    for (size_t i = 0; i < n; i++) mesh_free(live[i].p);
    rounds++;
  }
  printf("barrier: seed=%llu rounds=%ld meshed=%zu writes=%ld mesh_count=%llu barrier_waits=%llu\n",
         (unsigned long long)seed, rounds, meshed, writes, (unsigned long long)stat_get("mesh_count"),
         (unsigned long long)stat_get("mesh_barrier_waits"));
  CHECK(stat_get("meshed_pages") == 0 && stat_get("arena_mappings") == 1 && maps_count() == 1,
        "aliases left after freeing everything");
  CHECK(mesh_check_heap() == 0, "heap inconsistent at the end");
  free(live);
  if (atomic_load(&g_fail)) return 1;
  printf("writers ok\n");
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 3) DIE("usage: mesh_writers compact|periodic|barrier SEED [SECONDS]");
  uint64_t seed = parse_u64(argv[2], 1);
  double seconds = argc > 3 ? atof(argv[3]) : 3.0;
  if (!mesh_meshing_available()) DIE("meshing not available");
  if (!strcmp(argv[1], "compact") || !strcmp(argv[1], "periodic")) return run_writers(argv[1], seed, seconds);
  if (!strcmp(argv[1], "barrier")) return run_barrier(seed, seconds);
  DIE("unknown mode %s", argv[1]);
}
