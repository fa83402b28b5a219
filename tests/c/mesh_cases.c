/* mesh_cases.c - meshing, one behaviour per process (docs/meshing.md).
 *
 * Spans are built with a known occupancy: a helper thread allocates objects
 * of one 1-page size class and exits (thread exit detaches every span, so
 * they become candidates), then the test keeps, on each of K full pages, the
 * slots with slot % K == j and frees everything else. Such spans can only
 * mesh with each other, so what mesh_compact() must do is known exactly.
 * Meshing is explicit only (period_ms = 0) unless a case says otherwise.
 *
 * One case per process, named by argv[1]:
 *   pair SIZE       two complementary spans mesh: one page freed, both
 *                   virtual pages show the same bytes, every survivor keeps
 *                   its contents, writes through either address are seen,
 *                   free / usable_size / realloc work through the alias, and
 *                   freeing the last objects undoes everything (meshed_pages
 *                   0, arena_mappings 1 = the kernel's count)
 *   chain K         K spans each keeping a disjoint 1/K of the slots end up
 *                   on one physical page (K-1 meshes)
 *   pss SEED        95 % of many small objects freed: compaction frees about
 *                   as many pages of PSS as it reports
 *   budget SEED     max_mappings = 200: meshing stops at the budget (counted
 *                   in mesh_budget_stops), arena_mappings never passes it and
 *                   always equals the kernel's count, nothing aborts; raising
 *                   the budget lets meshing continue
 *   runs SEED       blocks of neighbouring spans that mesh only with the
 *                   other parity's: meshes continue each other's mappings
 *   runs-random SEED  6 % of 64-byte objects kept at random: most meshes
 *                   extend a run (neighbours meshed onto neighbours)
 *   pacing SEED     a pass meshes, the program then takes the freed pages
 *                   back as new spans: the wait before the next pass
 *                   doubles (mesh_pace_level 1); a pass whose pages stay
 *                   free brings it back to 0
 *   pause-clocks SEED  compaction in short passes while a busy process
 *                   shares the CPU: passes it preempted count over the bound
 *                   in wall-clock time, not in CPU time (cpu max <= wall
 *                   max, cpu over-bound count <= wall over-bound count)
 *   free-race SEED  a second thread frees every survivor while the main
 *                   thread compacts in a loop: no alias is left, the heap
 *                   and the mapping count are consistent
 *   idle-sweep      two spans that overlap in one slot: a compaction meshes
 *                   nothing, the next skips the class's sweep (nothing in it
 *                   changed: mesh_sweeps_skipped); the overlapping object is
 *                   freed (a free into a partial span, no lock taken) and
 *                   the next compaction sweeps again and meshes the pair
 *   segv-after-mesh       a real NULL write in a process that has meshed
 *                         dies with SIGSEGV
 *   handler-after-mesh    a SIGSEGV handler installed after meshing started
 *                         (it siglongjmps out) is called for every real fault,
 *                         with meshing - under a writer - between the faults;
 *                         the writer's barrier faults never reach it
 *   sigbus-after-mesh     SIGBUS from a truncated file mapping kills the
 *                         process with SIGBUS (never swallowed, never looping)
 *   fork-while-meshing SEED  the main thread forks repeatedly while another
 *                         thread meshes: children read every inherited
 *                         object, keep the savings (meshed_pages as at fork,
 *                         the heap copy no bigger than the physical spans),
 *                         allocate, free and mesh; parent and child are
 *                         isolated in both directions (each rewrites every
 *                         object while the other is alive)
 * Exit 0 on success; every failure is printed on stderr with "FAIL".
 * The signal cases print "FAULTING" right before the fatal fault.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mesh.h"
#include "testutil.h"

#define PAGE 4096u

static atomic_int g_fail;
static const char *g_who = "parent";

#define CHECK(cond, ...) do { if (!(cond)) { \
    fprintf(stderr, "FAIL [%s] %s:%d: %s: ", g_who, __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); fflush(stderr); g_fail++; } } while (0)

/* ---- stats, maps, PSS ----------------------------------------------------- */
static void print_stats(const char *what) {
  printf("%s: mesh_count=%llu meshed_pages=%llu mesh_aliases=%llu arena_mappings=%llu maps=%d "
         "budget_stops=%llu barrier_waits=%llu passes=%llu pause_max_us=%llu\n", what,
         (unsigned long long)stat_get("mesh_count"), (unsigned long long)stat_get("meshed_pages"),
         (unsigned long long)stat_get("mesh_aliases"), (unsigned long long)stat_get("arena_mappings"),
         maps_count(), (unsigned long long)stat_get("mesh_budget_stops"),
         (unsigned long long)stat_get("mesh_barrier_waits"), (unsigned long long)stat_get("mesh_passes"),
         (unsigned long long)stat_get("mesh_pause_ns_max") / 1000);
  fflush(stdout);
}

static void check_mappings(const char *when) {
  uint64_t m = stat_get("arena_mappings");
  int k = maps_count();
  CHECK(m == (uint64_t)k, "%s: arena_mappings %llu but /proc/self/maps has %d arena lines", when,
        (unsigned long long)m, k);
}

/* In a fork child the kernel may keep two anonymous neighbours apart that
 * the count treats as one mapping (their anon_vma chains, inherited from
 * the parent, differ), so the count there is a lower bound, and close: the
 * difference shows as the program's own mappings in the budget. */
static void check_mappings_in_child(const char *when) {
  uint64_t m = stat_get("arena_mappings");
  int k = maps_count();
  CHECK((uint64_t)k >= m && (uint64_t)k <= m + m / 16 + 4,
        "%s: arena_mappings %llu but /proc/self/maps has %d arena lines", when, (unsigned long long)m, k);
}

/* ---- objects ---------------------------------------------------------------- */
typedef struct { unsigned char *p; size_t n; uint64_t tag; } obj_t;

static void obj_fill(obj_t *o) { pat_fill(o->p, o->n, o->tag); }

static int obj_verify(const obj_t *o, const char *when) {
  size_t bad = pat_check(o->p, o->n, o->tag);
  if (bad != (size_t)-1) {
    CHECK(0, "%s: object %p (%zu B, tag %llu) corrupt at byte %zu: %#x", when, (void *)o->p, o->n,
          (unsigned long long)o->tag, bad, o->p[bad]);
    return 1;
  }
  return 0;
}

static int verify_all(const obj_t *v, size_t n, const char *when) {
  int bad = 0;
  for (size_t i = 0; i < n; i++)
    if (v[i].p && obj_verify(&v[i], when) && ++bad >= 10) break;
  return bad;
}

/* Allocations in a thread that then exits, so that every span they live in
 * is detached (a meshing candidate) when this returns. */
typedef struct { obj_t *out; size_t n; const size_t *sizes; size_t nsizes; uint64_t seed, tag0; } batch_t;

static void *batch_thread(void *arg) {
  batch_t *b = arg;
  rng_t r; rng_seed(&r, b->seed);
  for (size_t i = 0; i < b->n; i++) {
    obj_t *o = &b->out[i];
    o->n = b->sizes[b->nsizes == 1 ? 0 : rng_below(&r, b->nsizes)];
    o->p = mesh_malloc(o->n);
    if (!o->p) DIE("mesh_malloc(%zu) failed", o->n);
    o->tag = b->tag0 + i;
    obj_fill(o);
  }
  return NULL;
}

static void alloc_detached(obj_t *out, size_t n, const size_t *sizes, size_t nsizes, uint64_t seed, uint64_t tag0) {
  batch_t b = {out, n, sizes, nsizes, seed, tag0};
  pthread_t t;
  if (pthread_create(&t, NULL, batch_thread, &b) != 0) DIE("pthread_create");
  pthread_join(t, NULL);
}

static int cmp_obj(const void *a, const void *b) {
  uintptr_t x = (uintptr_t)((const obj_t *)a)->p, y = (uintptr_t)((const obj_t *)b)->p;
  return x < y ? -1 : x > y;
}

static size_t span_bytes(const void *p) { return mesh_span_of(p, NULL); }
static unsigned slot_of(const void *p, size_t size) { return (unsigned)(((uintptr_t)p - span_of(p)) / size); }

/* A set of K spans with disjoint occupancy, all other objects freed. */
typedef struct {
  size_t size;
  int k;
  uintptr_t pages[64]; /* span starts */
  size_t span;         /* bytes per span of the class */
  obj_t *live;
  size_t nlive;
} spanset_t;

static uint64_t g_tag = 1;

/* Size must be a class size (16 ... 512 in 16 B steps are). On span j (in
 * address order) only the slots with slot % k == j stay live. */
static void make_spanset(spanset_t *ss, size_t size, int k) {
  void *probe = mesh_malloc(size);
  size_t span = span_bytes(probe);
  mesh_free(probe);
  size_t per = span / size;
  size_t n = per * (size_t)(k + 3);
  obj_t *all = calloc(n, sizeof *all);
  if (!all) DIE("calloc");
  ss->span = span;
  alloc_detached(all, n, &size, 1, 1, g_tag);
  g_tag += n;
  qsort(all, n, sizeof *all, cmp_obj);
  ss->size = size;
  ss->k = k;
  int found = 0;
  for (size_t i = 0; i < n && found < k;) {
    size_t j = i;
    while (j < n && span_of(all[j].p) == span_of(all[i].p)) j++;
    if (j - i == per) ss->pages[found++] = span_of(all[i].p);
    i = j;
  }
  if (found < k) DIE("only %d full pages of class %zu among %zu objects", found, size, n);
  ss->live = calloc(n, sizeof *ss->live);
  ss->nlive = 0;
  for (size_t i = 0; i < n; i++) {
    int pj = -1;
    for (int j = 0; j < k; j++) if (span_of(all[i].p) == ss->pages[j]) pj = j;
    if (pj >= 0 && (int)(slot_of(all[i].p, size) % (unsigned)k) == pj) {
      ss->live[ss->nlive++] = all[i];
    } else {
      mesh_free(all[i].p);
    }
  }
  free(all);
}

static void free_spanset(spanset_t *ss, uint64_t seed) {
  rng_t r; rng_seed(&r, seed);
  for (size_t i = ss->nlive; i > 1; i--) { /* random order */
    size_t j = rng_below(&r, i);
    obj_t t = ss->live[i - 1]; ss->live[i - 1] = ss->live[j]; ss->live[j] = t;
  }
  for (size_t i = 0; i < ss->nlive; i++) {
    if (obj_verify(&ss->live[i], "before its free")) break;
    mesh_free(ss->live[i].p);
    ss->live[i].p = NULL;
    if (i % 7 == 0) CHECK(mesh_check_heap() == 0, "heap inconsistent after %zu frees", i + 1);
  }
  free(ss->live);
  ss->live = NULL;
  ss->nlive = 0;
}

/* Every page of the set shows the same bytes: one physical page behind all. */
static void check_one_physical_page(const spanset_t *ss, const char *when) {
  for (int j = 1; j < ss->k; j++)
    CHECK(memcmp((void *)ss->pages[0], (void *)ss->pages[j], ss->span) == 0,
          "%s: pages %#lx and %#lx of one meshed chain differ", when, (unsigned long)ss->pages[0],
          (unsigned long)ss->pages[j]);
}

/* Writes through each object's own address; the other virtual pages of the
 * chain see the write at the same offset. */
static void write_through_every_alias(spanset_t *ss) {
  for (size_t i = 0; i < ss->nlive; i++) {
    obj_t *o = &ss->live[i];
    o->tag = g_tag++;
    obj_fill(o);
    obj_verify(o, "read back after a write through its address");
    uintptr_t off = (uintptr_t)o->p - span_of(o->p);
    for (int j = 0; j < ss->k; j++) {
      const unsigned char *alias = (const unsigned char *)ss->pages[j] + off;
      CHECK(memcmp(alias, o->p, o->n) == 0, "write to %p not seen at alias %p", (void *)o->p, (const void *)alias);
    }
  }
}

static void set_opt(const char *name, long v) {
  if (mesh_option_set(name, v) != 0) DIE("mesh_option_set(%s, %ld) failed: errno %d", name, v, errno);
}

/* ---- pair / chain --------------------------------------------------------------- */
/* ---- idle sweeps ------------------------------------------------------------ */
static int case_idle_sweep(void) {
  set_opt("period_ms", 0);
  if (!mesh_meshing_available()) DIE("meshing not available (no memfd?)");
  size_t size = 64;
  void *probe = mesh_malloc(size);
  size_t span = span_bytes(probe), per = span / size, n = per * 6;
  mesh_free(probe);
  obj_t *all = calloc(n, sizeof *all);
  if (!all) DIE("calloc");
  alloc_detached(all, n, &size, 1, 1, g_tag);
  qsort(all, n, sizeof *all, cmp_obj);
  uintptr_t pages[2];
  int found = 0;
  for (size_t i = 0; i < n && found < 2;) {
    size_t j = i;
    while (j < n && span_of(all[j].p) == span_of(all[i].p)) j++;
    if (j - i == per) pages[found++] = span_of(all[i].p);
    i = j;
  }
  if (found < 2) DIE("only %d full pages of class %zu", found, size);
  /* page 0 keeps its even slots and slot 1, page 1 its odd slots: they
   * overlap in slot 1 alone */
  void *overlap = NULL;
  for (size_t i = 0; i < n; i++) {
    uintptr_t pg = span_of(all[i].p);
    unsigned slot = slot_of(all[i].p, size);
    if (pg == pages[0] && slot == 1) overlap = all[i].p;
    else if (!((pg == pages[0] && slot % 2 == 0) || (pg == pages[1] && slot % 2 == 1))) mesh_free(all[i].p), all[i].p = NULL;
  }
  CHECK(mesh_check_heap() == 0, "heap inconsistent before meshing");
  mesh_compact();
  uint64_t skipped = stat_get("mesh_sweeps_skipped");
  CHECK(stat_get("mesh_count") == 0, "spans that overlap meshed: mesh_count %llu",
        (unsigned long long)stat_get("mesh_count"));
  mesh_compact();
  CHECK(stat_get("mesh_sweeps_skipped") == skipped + 1, "the unchanged class was swept again (skipped %llu -> %llu)",
        (unsigned long long)skipped, (unsigned long long)stat_get("mesh_sweeps_skipped"));
  mesh_free(overlap); /* the span stays partial in its bin: no lock, no bin change */
  for (size_t i = 0; i < n; i++)
    if (all[i].p == overlap) all[i].p = NULL;
  size_t freed = mesh_compact();
  print_stats("after the overlap was freed");
  CHECK(stat_get("mesh_count") == 1 && freed == span / PAGE, "the pair did not mesh once it fitted: freed %zu",
        freed);
  CHECK(stat_get("mesh_sweeps_skipped") == skipped + 1, "a changed class was skipped");
  CHECK(mesh_check_heap() == 0, "heap inconsistent after meshing");
  for (size_t i = 0; i < n; i++) mesh_free(all[i].p);
  free(all);
  if (g_fail) return 1;
  printf("idle-sweep ok skipped=%llu\n", (unsigned long long)(stat_get("mesh_sweeps_skipped") - skipped));
  return 0;
}

static int case_chain(size_t size, int k) {
  set_opt("period_ms", 0);
  if (!mesh_meshing_available()) DIE("meshing not available (no memfd?)");
  spanset_t ss;
  make_spanset(&ss, size, k);
  CHECK(mesh_check_heap() == 0, "heap inconsistent before meshing");
  CHECK(stat_get("meshed_pages") == 0 && stat_get("mesh_count") == 0, "meshed before any compaction");
  check_mappings("before meshing");
  CHECK(stat_get("arena_mappings") == 1, "arena_mappings %llu before meshing",
        (unsigned long long)stat_get("arena_mappings"));

  size_t freed = mesh_compact();
  print_stats("after compact");
  size_t span_pages = ss.span / PAGE; /* every mesh frees one span's physical pages */
  CHECK(freed == (size_t)(k - 1) * span_pages, "mesh_compact() freed %zu pages, expected %zu", freed,
        (size_t)(k - 1) * span_pages);
  CHECK(stat_get("mesh_count") == (uint64_t)(k - 1), "mesh_count %llu", (unsigned long long)stat_get("mesh_count"));
  CHECK(stat_get("meshed_pages") == (uint64_t)(k - 1) * span_pages, "meshed_pages %llu",
        (unsigned long long)stat_get("meshed_pages"));
  CHECK(stat_get("mesh_aliases") == (uint64_t)(k - 1), "mesh_aliases %llu",
        (unsigned long long)stat_get("mesh_aliases"));
  /* exact: nothing else meshed in this process (period_ms = 0) */
  CHECK(stat_get("meshed_pages_hwm") == (uint64_t)(k - 1) * span_pages &&
            stat_get("meshed_pages_total") == (uint64_t)(k - 1) * span_pages,
        "hwm %llu total %llu, expected %zu", (unsigned long long)stat_get("meshed_pages_hwm"),
        (unsigned long long)stat_get("meshed_pages_total"), (size_t)(k - 1) * span_pages);
  /* every mesh copies its source's live objects: at least the k-1 sources'
   * own survivors; for a pair, exactly one span's (either one) */
  {
    size_t per = ss.span / size, least = per / (size_t)k, most = (per + (size_t)k - 1) / (size_t)k;
    uint64_t copied = stat_get("mesh_bytes_copied");
    if (k == 2)
      CHECK(copied == least * size || copied == most * size, "mesh_bytes_copied %llu, expected %zu or %zu",
            (unsigned long long)copied, least * size, most * size);
    else
      CHECK(copied >= (uint64_t)(k - 1) * least * size && copied <= (uint64_t)(k - 1) * ss.nlive * size,
            "mesh_bytes_copied %llu for %d spans of %zu survivors", (unsigned long long)copied, k, least);
  }
  CHECK(stat_get("arena_mappings") > 1, "meshed but arena_mappings is 1");
  check_mappings("after meshing");
  CHECK(mesh_check_heap() == 0, "heap inconsistent after meshing");
  CHECK(mesh_compact() == 0, "a second compaction found more to mesh");

  verify_all(ss.live, ss.nlive, "after meshing");
  check_one_physical_page(&ss, "after meshing");
  write_through_every_alias(&ss);
  check_one_physical_page(&ss, "after writes");
  for (size_t i = 0; i < ss.nlive; i++)
    CHECK(mesh_usable_size(ss.live[i].p) == size, "usable_size(%p) = %zu", (void *)ss.live[i].p,
          mesh_usable_size(ss.live[i].p));

  /* realloc through an alias (page 0 is the lowest: a source, so an alias)
   * and through the destination: grow, same size, shrink */
  for (size_t i = 0; i < ss.nlive && i < 6; i++) {
    obj_t *o = &ss.live[i * (ss.nlive / 6)];
    size_t keep = o->n;
    size_t want = i % 3 == 0 ? size * 3 + 1 : i % 3 == 1 ? size : (size > 16 ? size / 2 : 8);
    unsigned char *q = mesh_realloc(o->p, want);
    CHECK(q != NULL, "realloc(%p, %zu) failed", (void *)o->p, want);
    if (!q) continue;
    if (want < keep) keep = want;
    CHECK(pat_check(q, keep, o->tag) == (size_t)-1, "realloc(%p, %zu) lost the contents", (void *)o->p, want);
    CHECK(mesh_usable_size(q) >= want, "usable_size after realloc %zu < %zu", mesh_usable_size(q), want);
    o->p = q;
    o->n = want;
    o->tag = g_tag++;
    obj_fill(o);
    CHECK(mesh_check_heap() == 0, "heap inconsistent after realloc %zu", i);
  }
  verify_all(ss.live, ss.nlive, "after reallocs");

  free_spanset(&ss, 7);
  print_stats("after freeing everything");
  CHECK(stat_get("meshed_pages") == 0, "meshed_pages %llu after freeing every object",
        (unsigned long long)stat_get("meshed_pages"));
  CHECK(stat_get("mesh_aliases") == 0, "mesh_aliases %llu after freeing every object",
        (unsigned long long)stat_get("mesh_aliases"));
  CHECK(stat_get("arena_mappings") == 1, "arena_mappings %llu after freeing every object",
        (unsigned long long)stat_get("arena_mappings"));
  check_mappings("after freeing everything");
  CHECK(mesh_check_heap() == 0, "heap inconsistent at the end");
  /* the pages can be used again */
  spanset_t again;
  make_spanset(&again, size, 2);
  CHECK(mesh_compact() == again.span / PAGE, "meshing again after the chain was undone");
  verify_all(again.live, again.nlive, "second round");
  free_spanset(&again, 8);
  CHECK(stat_get("meshed_pages") == 0 && stat_get("arena_mappings") == 1, "second round left aliases");
  check_mappings("end");
  CHECK(mesh_check_heap() == 0, "heap inconsistent at the end");
  if (g_fail) return 1;
  printf("chain ok size=%zu k=%d\n", size, k);
  return 0;
}

/* Frees every object still held; meshing must then have undone every alias. */
static void free_all_and_check_unaliased(obj_t *v, size_t n) {
  for (size_t i = 0; i < n; i++) if (v[i].p) mesh_free(v[i].p);
  CHECK(stat_get("meshed_pages") == 0 && stat_get("arena_mappings") == 1, "aliases left after freeing everything");
  check_mappings("end");
}

/* The end of a compaction case: every survivor intact, the heap and the
 * mapping count consistent, then everything freed (which must undo every
 * alias). Prints "NAME ok" and returns 0, or returns 1 after a failure. */
static int compacted_heap_ok(obj_t *v, size_t n, const char *name) {
  verify_all(v, n, "after compaction");
  CHECK(mesh_check_heap() == 0, "heap inconsistent");
  check_mappings("after compaction");
  free_all_and_check_unaliased(v, n);
  if (g_fail) return 1;
  printf("%s ok\n", name);
  return 0;
}

/* ---- pss ---------------------------------------------------------------------------- */
static int case_pss(uint64_t seed) {
  set_opt("period_ms", 0);
  printf("seed=%llu\n", (unsigned long long)seed);
  static const size_t sizes[] = {16, 32, 48, 64, 80, 96, 128, 176, 256};
  enum { N = 400000 };
  obj_t *v = calloc(N, sizeof *v);
  if (!v) DIE("calloc");
  alloc_detached(v, N, sizes, sizeof sizes / sizeof sizes[0], seed, 1);
  rng_t r; rng_seed(&r, seed ^ 0x55);
  size_t kept = 0;
  for (size_t i = 0; i < N; i++) {
    if (rng_below(&r, 100) < 5) { kept++; continue; }
    mesh_free(v[i].p);
    v[i].p = NULL;
  }
  mesh_scavenge(); /* empty spans' pages go back first: the drop below is meshing's alone */
  uint64_t span_pages = stat_get("span_pages");
  long pss0 = rollup_kb("Pss");
  uint64_t mp0 = stat_get("meshed_pages");
  size_t freed = mesh_compact();
  long pss1 = rollup_kb("Pss");
  uint64_t mp1 = stat_get("meshed_pages");
  long drop = pss0 - pss1, expect = (long)freed * (PAGE / 1024);
  printf("pss: kept=%zu span_pages=%llu freed=%zu pages (%ld kB) pss %ld -> %ld kB (drop %ld kB)\n", kept,
         (unsigned long long)span_pages, freed, expect, pss0, pss1, drop);
  print_stats("after compact");
  CHECK(mp1 - mp0 == freed, "meshed_pages grew by %llu, mesh_compact() said %zu", (unsigned long long)(mp1 - mp0), freed);
  CHECK(freed * 2 >= span_pages, "only %zu of %llu span pages meshed away with 5 %% occupancy", freed,
        (unsigned long long)span_pages);
  CHECK(drop >= expect * 8 / 10 - 1024, "PSS dropped %ld kB, meshing reported %ld kB", drop, expect);
  CHECK(drop <= expect * 11 / 10 + 2048, "PSS dropped %ld kB, more than the %ld kB meshing reported", drop, expect);
  verify_all(v, N, "after compaction");
  check_mappings("after compaction");
  CHECK(mesh_check_heap() == 0, "heap inconsistent");
  free_all_and_check_unaliased(v, N);
  if (g_fail) return 1;
  printf("pss ok\n");
  return 0;
}

/* A heap of n objects of the given sizes (detached spans), of which a
 * random keep_pct % stay allocated: the fragmented heap the compaction
 * cases start from. Returns the objects (freed ones NULL). */
static obj_t *fragmented_heap(size_t n, const size_t *sizes, size_t nsizes, uint64_t seed, unsigned keep_pct) {
  set_opt("period_ms", 0);
  printf("seed=%llu\n", (unsigned long long)seed);
  obj_t *v = calloc(n, sizeof *v);
  if (!v) DIE("calloc");
  alloc_detached(v, n, sizes, nsizes, seed, 1);
  rng_t r; rng_seed(&r, seed ^ keep_pct);
  for (size_t i = 0; i < n; i++) {
    if (rng_below(&r, 100) < keep_pct) continue;
    mesh_free(v[i].p);
    v[i].p = NULL;
  }
  return v;
}

/* ---- compaction ends on a heap that barely meshes ---------------------------------- */
/* 30 % of the objects kept at random in many classes: most span pairs
 * overlap, so each sweep finds only a few meshes. mesh_compact() must still
 * end (it once kept sweeping for minutes, as long as any sweep meshed
 * anything) and keep every object intact. */
static int case_compact_ends(uint64_t seed) {
  static const size_t sizes[] = {16, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256};
  enum { N = 600000 };
  obj_t *v = fragmented_heap(N, sizes, sizeof sizes / sizeof sizes[0], seed, 30);
  double t0 = now_s();
  size_t freed = mesh_compact();
  double t1 = now_s();
  size_t again = mesh_compact();
  double t2 = now_s();
  printf("compact: freed %zu pages in %.1f ms, then %zu in %.1f ms; %llu passes\n", freed, (t1 - t0) * 1e3, again,
         (t2 - t1) * 1e3, (unsigned long long)stat_get("mesh_passes"));
  verify_all(v, N, "after compaction");
  CHECK(mesh_check_heap() == 0, "heap inconsistent");
  for (size_t i = 0; i < N; i++) if (v[i].p) mesh_free(v[i].p);
  if (g_fail) return 1;
  printf("compact-ends ok\n");
  return 0;
}

/* ---- pacing --------------------------------------------------------------------------- */
static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* A new thread's first allocation refills its heap, and a refill is a
 * meshing trigger: a pass runs if the wait since the last one elapsed. The
 * block is freed by the same thread (a local free triggers nothing), so
 * each call is exactly one trigger. */
static void *one_alloc(void *arg) {
  (void)arg;
  void *p = mesh_malloc(64);
  if (!p) DIE("mesh_malloc");
  mesh_free(p);
  return NULL;
}
static void trigger_pass(void) {
  pthread_t t;
  if (pthread_create(&t, NULL, one_alloc, NULL) != 0) DIE("pthread_create");
  pthread_join(t, NULL);
}

/* Periodic passes driven by hand (period_ms switched between 0, no passes,
 * and 1 ms, a pass at the next trigger after a few ms of sleep):
 *   1. a fragmented heap (10 % of 64-byte objects kept); a pass meshes;
 *   2. free pages returned to the OS, then 128-byte objects allocated: new
 *      spans on clean pages, more than the pass freed (the program takes
 *      back what meshing freed); at the next trigger pacing must lengthen
 *      the wait (mesh_pace_level 1, mesh_paced 1);
 *   3. 90 % of the new objects freed, no allocation; a pass meshes them
 *      and, at the trigger after it, its pages are still free: level 0. */
static int case_pacing(uint64_t seed) {
  enum { N = 30000 };
  static const size_t small[] = {64}, big[] = {128};
  obj_t *v = fragmented_heap(2 * N, small, 1, seed, 10); /* period_ms 0 */
  obj_t *b = v + N;                                       /* step 2's objects */
  for (size_t i = N; i < 2 * (size_t)N; i++) if (v[i].p) { mesh_free(v[i].p); v[i].p = NULL; }
  set_opt("period_ms", 1);
  sleep_ms(2);
  trigger_pass();
  uint64_t f1 = stat_get("meshed_pages_total");
  set_opt("period_ms", 0);
  mesh_scavenge();
  uint64_t fresh0 = stat_get("fresh_pages_total");
  alloc_detached(b, N, big, 1, seed + 1, 2 * N + 1);
  uint64_t taken = stat_get("fresh_pages_total") - fresh0;
  set_opt("period_ms", 1);
  sleep_ms(3);
  trigger_pass();
  uint64_t level1 = stat_get("mesh_pace_level"), paced1 = stat_get("mesh_paced");
  printf("pacing: step 1 meshed %llu pages; step 2 took %llu clean pages; level %llu, paced %llu\n",
         (unsigned long long)f1, (unsigned long long)taken, (unsigned long long)level1, (unsigned long long)paced1);
  CHECK(f1 > 0 && taken >= f1, "the case did not set up what it tests");
  CHECK(level1 == 1 && paced1 == 1, "meshing whose pages were taken straight back was not paced");
  set_opt("period_ms", 0);
  for (size_t i = 0; i < N; i++) if (i % 10) { mesh_free(b[i].p); b[i].p = NULL; }
  uint64_t f2 = stat_get("meshed_pages_total");
  set_opt("period_ms", 1);
  for (int k = 0; k < 4 && (stat_get("mesh_pace_level") != 0 || stat_get("meshed_pages_total") == f2); k++) {
    sleep_ms(5); /* past the lengthened wait */
    trigger_pass();
  }
  printf("pacing: step 3 meshed %llu pages; level %llu\n", (unsigned long long)(stat_get("meshed_pages_total") - f2),
         (unsigned long long)stat_get("mesh_pace_level"));
  CHECK(stat_get("meshed_pages_total") > f2, "no pass meshed after the churn stopped");
  CHECK(stat_get("mesh_pace_level") == 0, "the level stayed up after the churn stopped");
  set_opt("period_ms", 0);
  return compacted_heap_ok(v, 2 * (size_t)N, "pacing");
}

/* ---- pauses in wall-clock and CPU time ------------------------------------------- */
/* Pins itself and a spinning child to one CPU, so the scheduler must
 * switch between them, and compacts a fragmented heap in passes of
 * MESH_MAX_PAUSE_US (the test sets a short one). A pass the spinner
 * preempts lasts a time slice or more on the wall clock but not in the
 * thread's CPU time, and the stats must say which is which. */
static int case_pause_clocks(uint64_t seed) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(sched_getcpu() >= 0 ? sched_getcpu() : 0, &one);
  if (sched_setaffinity(0, sizeof one, &one) != 0) DIE("sched_setaffinity");
  pid_t parent = getpid(), spinner = fork();
  if (spinner < 0) DIE("fork");
  if (spinner == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
    if (getppid() != parent) _exit(0); /* it died before the prctl */
    for (;;) __asm__ volatile("" ::: "memory");
  }
  static const size_t sizes[] = {32, 64, 64};
  enum { N = 400000 };
  obj_t *v = fragmented_heap(N, sizes, sizeof sizes / sizeof sizes[0], seed, 8);
  size_t freed = mesh_compact();
  kill(spinner, SIGKILL);
  waitpid(spinner, NULL, 0);
  uint64_t passes = stat_get("mesh_passes"), wall = stat_get("mesh_pause_ns_max"),
           cpu = stat_get("mesh_pause_cpu_ns_max"), over = stat_get("mesh_pause_over_bound"),
           cpu_over = stat_get("mesh_pause_cpu_over_bound");
  printf("pause-clocks: freed=%zu passes=%llu wall_max_us=%llu cpu_max_us=%llu over=%llu cpu_over=%llu\n", freed,
         (unsigned long long)passes, (unsigned long long)wall / 1000, (unsigned long long)cpu / 1000,
         (unsigned long long)over, (unsigned long long)cpu_over);
  CHECK(freed > 0 && passes > 10, "compaction did not run in many passes");
  CHECK(cpu > 0 && cpu <= wall, "the longest pass's CPU time (%llu ns) must be in (0, wall %llu ns]",
        (unsigned long long)cpu, (unsigned long long)wall);
  CHECK(cpu_over <= over, "%llu passes over the bound in CPU time but %llu on the wall clock",
        (unsigned long long)cpu_over, (unsigned long long)over);
  CHECK(over > cpu_over, "no pass was preempted by the spinner (over %llu, cpu_over %llu)", (unsigned long long)over,
        (unsigned long long)cpu_over);
  verify_all(v, N, "after compaction");
  free_all_and_check_unaliased(v, N);
  if (g_fail) return 1;
  printf("pause-clocks ok\n");
  return 0;
}

/* ---- compaction is complete whatever the pause bound ------------------------------ */
/* 8 % of many 64- and 32-byte objects kept at random: thousands of spans
 * per class, so a sweep needs many batches of candidates and, with a short
 * pause bound, each batch many steps. One mesh_compact() must do the whole
 * job (a second finds little), and how much it frees must not depend on
 * the pause bound (the test runs this under two bounds and compares): a
 * step that ran out of time once dropped the rest of its batch, and a batch
 * finished in a later step ended the sweep, so a loaded machine or a short
 * bound compacted a fraction of what it should. */
static int case_compact_complete(uint64_t seed) {
  static const size_t sizes[] = {32, 64, 64};
  enum { N = 500000 };
  obj_t *v = fragmented_heap(N, sizes, sizeof sizes / sizeof sizes[0], seed, 8);
  mesh_scavenge();
  uint64_t span_pages = stat_get("span_pages");
  size_t freed = mesh_compact();
  size_t again = mesh_compact();
  printf("compact-complete: span_pages=%llu freed=%zu again=%zu passes=%llu\n", (unsigned long long)span_pages, freed,
         again, (unsigned long long)stat_get("mesh_passes"));
  CHECK(again * 10 <= freed, "a second compaction freed %zu pages after the first's %zu: the first stopped early", again,
        freed);
  verify_all(v, N, "after compaction");
  CHECK(mesh_check_heap() == 0, "heap inconsistent");
  free_all_and_check_unaliased(v, N);
  if (g_fail) return 1;
  printf("compact-complete ok\n");
  return 0;
}

/* ---- frees racing meshes, deterministically ------------------------------------------ */
/* A second thread frees every survivor (a fixed random order) while the
 * main thread compacts in a loop: every free lands whether its object's
 * span is being meshed, was meshed a moment ago or is being unmeshed. At
 * the end the heap is empty: no alias may be left, no page meshed. */
typedef struct { obj_t *v; size_t n; uint64_t seed; atomic_int done; } free_race_t;

static void *free_race_thread(void *arg) {
  free_race_t *fr = arg;
  rng_t r;
  rng_seed(&r, fr->seed);
  for (size_t i = fr->n; i > 1; i--) {
    size_t j = rng_below(&r, i);
    obj_t t = fr->v[i - 1]; fr->v[i - 1] = fr->v[j]; fr->v[j] = t;
  }
  for (size_t i = 0; i < fr->n; i++) {
    if (!fr->v[i].p) continue;
    obj_verify(&fr->v[i], "before its racing free");
    mesh_free(fr->v[i].p);
    fr->v[i].p = NULL;
    if (i % 64 == 0) sched_yield(); /* let the compactions interleave */
  }
  atomic_store(&fr->done, 1);
  return NULL;
}

static int case_free_race(uint64_t seed) {
  static const size_t sizes[] = {48, 64};
  enum { N = 300000 };
  obj_t *v = fragmented_heap(N, sizes, sizeof sizes / sizeof sizes[0], seed, 10);
  free_race_t fr = {v, N, seed + 1, 0};
  pthread_t t;
  if (pthread_create(&t, NULL, free_race_thread, &fr) != 0) DIE("pthread_create");
  size_t rounds = 0, freed = 0;
  while (!atomic_load(&fr.done)) freed += mesh_compact(), rounds++;
  pthread_join(t, NULL);
  printf("free-race: %zu compactions meshed %zu pages while the frees ran\n", rounds, freed);
  CHECK(rounds > 0 && freed > 0, "no meshing overlapped the frees");
  CHECK(stat_get("meshed_pages") == 0 && stat_get("mesh_aliases") == 0,
        "aliases left after every object was freed: meshed_pages %llu", (unsigned long long)stat_get("meshed_pages"));
  CHECK(mesh_check_heap() == 0, "heap inconsistent");
  check_mappings("after the race");
  if (g_fail) return 1;
  printf("free-race ok\n");
  return 0;
}

/* ---- sparse spans are packed, not just paired -------------------------------------- */
/* keep_pct % of size-byte objects kept at random, then one compaction.
 * Prints the class's occupancy after it. pack-sparse: 3 % of 32-byte
 * objects (a span of 128 slots keeps ~4): meshing random pairs doubles
 * occupancy per round and stalled near 30 %, where two such spans almost
 * never fit; best fit (each span onto the densest disjoint one) keeps
 * packing the sparse spans into the dense ones. pack-mixed: 64-byte
 * objects, 55 % kept in the spans of the first half, 25 % in the second. */
static int case_pack(const char *name, size_t size, unsigned keep_pct, unsigned keep_pct2, uint64_t seed) {
  const size_t sizes[] = {size};
  enum { N = 400000 };
  obj_t *v = fragmented_heap(N, sizes, 1, seed, keep_pct);
  if (keep_pct2 < keep_pct) { /* the second half keeps fewer */
    rng_t r; rng_seed(&r, seed ^ 0x99);
    for (size_t i = N / 2; i < N; i++)
      if (v[i].p && rng_below(&r, keep_pct) >= keep_pct2) {
        mesh_free(v[i].p);
        v[i].p = NULL;
      }
  }
  mesh_compact();
  mesh_class_stats_t cs[64];
  int nc = mesh_class_stats(cs, 64);
  double occ = -1;
  for (int c = 0; c < nc; c++)
    if (cs[c].object_size == size && cs[c].slots) occ = (double)cs[c].objects_in_use / (double)cs[c].slots;
  printf("%s: occupancy=%.3f span_pages=%llu meshed_pages=%llu mappings=%llu\n", name, occ,
         (unsigned long long)stat_get("span_pages"), (unsigned long long)stat_get("meshed_pages"),
         (unsigned long long)stat_get("arena_mappings"));
  return compacted_heap_ok(v, N, name);
}

/* ---- runs of neighbouring spans share one mapping ------------------------------------ */
/* 64-byte objects (one-page spans) in blocks of RUN neighbouring spans; the
 * spans of even blocks keep the even slots, those of odd blocks the odd
 * ones, so a span meshes only with a span of the other parity. With over
 * 2 000 candidates (a batch holds 1 024), a block's partners are often in
 * another batch. Each mesh should continue its neighbour's run (source
 * t+1 onto the page after source t's destination), so one kernel mapping
 * covers many meshed pages instead of two per mesh. */
static int case_runs(uint64_t seed) {
  enum { SIZE = 64, SPANS = 2600, RUN = 16 };
  set_opt("period_ms", 0);
  if (!mesh_meshing_available()) DIE("meshing not available (no memfd?)");
  printf("seed=%llu\n", (unsigned long long)seed);
  size_t per = PAGE / SIZE, n = per * (SPANS + 8);
  obj_t *all = calloc(n, sizeof *all);
  if (!all) DIE("calloc");
  const size_t size = SIZE;
  alloc_detached(all, n, &size, 1, seed, g_tag);
  g_tag += n;
  qsort(all, n, sizeof *all, cmp_obj);
  size_t full = 0, kept = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && span_of(all[j].p) == span_of(all[i].p)) j++;
    bool whole = j - i == per;
    unsigned parity = (unsigned)(full / RUN) & 1u;
    for (size_t q = i; q < j; q++) {
      if (whole && slot_of(all[q].p, SIZE) % 2 == parity) {
        kept++;
        continue;
      }
      mesh_free(all[q].p);
      all[q].p = NULL;
    }
    full += whole;
    i = j;
  }
  uint64_t maps0 = stat_get("arena_mappings");
  mesh_compact();
  uint64_t meshes = stat_get("mesh_count"), maps = stat_get("arena_mappings");
  printf("runs: spans=%zu kept=%zu meshes=%llu adjacent=%llu mappings_added=%lld\n", full, kept,
         (unsigned long long)meshes, (unsigned long long)stat_get("mesh_adjacent"), (long long)(maps - maps0));
  return compacted_heap_ok(all, n, "runs");
}

/* 64-byte objects, a random 6 % kept: spans fit many partners, and the
 * best fit by density alone pairs spans far apart (an alias of its own:
 * two mappings per mesh). After each mesh the neighbours of source and
 * destination are meshed too where they fit, so most aliases continue a
 * run and the heap's meshes cost far fewer mappings than meshes. */
static int case_runs_random(uint64_t seed) {
  const size_t sizes[] = {64};
  enum { N = 200000 };
  obj_t *v = fragmented_heap(N, sizes, 1, seed, 6);
  uint64_t maps0 = stat_get("arena_mappings");
  mesh_compact();
  uint64_t meshes = stat_get("mesh_count"), maps = stat_get("arena_mappings");
  printf("runs-random: meshes=%llu adjacent=%llu mappings_added=%lld\n", (unsigned long long)meshes,
         (unsigned long long)stat_get("mesh_adjacent"), (long long)(maps - maps0));
  return compacted_heap_ok(v, N, "runs-random");
}

/* ---- mapping budget --------------------------------------------------------------- */
static int case_budget(uint64_t seed) {
  set_opt("period_ms", 0);
  set_opt("max_mappings", 200);
  printf("seed=%llu\n", (unsigned long long)seed);
  static const size_t sizes[] = {16, 32, 64, 128};
  enum { N = 300000 };
  obj_t *v = calloc(N, sizeof *v);
  if (!v) DIE("calloc");
  alloc_detached(v, N, sizes, 4, seed, 1);
  rng_t r; rng_seed(&r, seed ^ 0x77);
  for (size_t i = 0; i < N; i++) {
    if (rng_below(&r, 100) < 10) continue;
    mesh_free(v[i].p);
    v[i].p = NULL;
  }
  uint64_t hwm_max = 0;
  for (int round = 0; round < 4; round++) {
    size_t freed = mesh_compact();
    uint64_t m = stat_get("arena_mappings"), hwm = stat_get("arena_mappings_hwm");
    if (hwm > hwm_max) hwm_max = hwm;
    printf("budget round %d: freed %zu mappings %llu hwm %llu\n", round, freed, (unsigned long long)m,
           (unsigned long long)hwm);
    CHECK(m <= 200 && hwm <= 200, "arena_mappings %llu (hwm %llu) passed max_mappings 200",
          (unsigned long long)m, (unsigned long long)hwm);
    check_mappings("under the budget");
  }
  print_stats("at the budget");
  CHECK(stat_get("mesh_budget_stops") > 0, "meshing never stopped at the budget");
  CHECK(stat_get("mesh_count") > 0, "nothing meshed at all");
  CHECK(mesh_check_heap() == 0, "heap inconsistent at the budget");
  verify_all(v, N, "at the budget");
  /* more frees, more compaction: still within the budget */
  for (size_t i = 0; i < N; i += 3) if (v[i].p) { mesh_free(v[i].p); v[i].p = NULL; }
  mesh_compact();
  CHECK(stat_get("arena_mappings_hwm") <= 200, "hwm %llu", (unsigned long long)stat_get("arena_mappings_hwm"));
  check_mappings("after more frees");
  verify_all(v, N, "after more frees");
  /* lift the budget: meshing resumes */
  uint64_t meshes = stat_get("mesh_count");
  set_opt("max_mappings", 0);
  size_t more = mesh_compact();
  print_stats("budget lifted");
  CHECK(more > 0 && stat_get("mesh_count") > meshes, "no meshing after the budget was lifted");
  check_mappings("budget lifted");
  CHECK(mesh_check_heap() == 0, "heap inconsistent");
  verify_all(v, N, "budget lifted");
  free_all_and_check_unaliased(v, N);
  if (g_fail) return 1;
  printf("budget ok\n");
  return 0;
}

/* ---- signals ---------------------------------------------------------------------- */
static spanset_t g_set;

static void mesh_a_pair(void) {
  make_spanset(&g_set, 64, 2);
  size_t freed = mesh_compact();
  if (freed < 1) DIE("setup: mesh_compact() freed nothing");
}

static void fault_null(void) {
  printf("FAULTING\n");
  fflush(stdout);
  volatile uintptr_t where = 16; /* opaque to the compiler: a real store */
  *(volatile int *)where = 1;
  printf("SURVIVED a NULL write\n");
  fflush(stdout);
  exit(3);
}

static int case_segv_after_mesh(void) {
  set_opt("period_ms", 0);
  mesh_a_pair();
  verify_all(g_set.live, g_set.nlive, "after meshing");
  fault_null();
  return 3;
}

static sigjmp_buf g_jmp;
static volatile sig_atomic_t g_handled;
static volatile uintptr_t g_fault_addr;

static void longjmp_handler(int sig, siginfo_t *si, void *uc) {
  (void)uc;
  uintptr_t a = (uintptr_t)si->si_addr;
  if (sig != SIGSEGV || a >= PAGE) { /* not our NULL write: a barrier fault leaked here */
    char msg[96];
    int n = snprintf(msg, sizeof msg, "FAIL handler got signal %d at %#lx (not a NULL fault)\n", sig, (unsigned long)a);
    if (write(2, msg, (size_t)n) < 0) {}
    _exit(4);
  }
  g_fault_addr = a;
  g_handled++;
  siglongjmp(g_jmp, 1);
}

typedef struct { obj_t *objs; size_t n; atomic_int stop; atomic_long writes; } writer_arg_t;

/* Writes the objects over and over (the counter word first), so writes land
 * on spans while they are being meshed. */
static void *writer(void *arg) {
  writer_arg_t *w = arg;
  uint64_t round = 0;
  while (!atomic_load(&w->stop)) {
    round++;
    for (size_t i = 0; i < w->n; i++) {
      uint64_t *q = (uint64_t *)w->objs[i].p;
      if (q[0] != round - 1 + w->objs[i].tag) {
        fprintf(stderr, "FAIL writer: object %p holds %llu, expected %llu\n", (void *)q,
                (unsigned long long)q[0], (unsigned long long)(round - 1 + w->objs[i].tag));
        g_fail++;
        return NULL;
      }
      q[0] = round + w->objs[i].tag;
    }
    atomic_fetch_add(&w->writes, (long)w->n);
  }
  return NULL;
}

static int case_handler_after_mesh(void) {
  set_opt("period_ms", 0);
  mesh_a_pair();
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = longjmp_handler;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGSEGV, &sa, NULL) != 0) DIE("sigaction");
  enum { ROUNDS = 6 };
  for (int round = 0; round < ROUNDS; round++) {
    uintptr_t where = 16 + 8 * (uintptr_t)round;
    printf("fault %d\n", round);
    fflush(stdout);
    if (sigsetjmp(g_jmp, 1) == 0) {
      *(volatile int *)where = 1;
      printf("SURVIVED a NULL write\n");
      return 3;
    }
    CHECK(g_handled == round + 1 && g_fault_addr == where, "round %d: handler calls %d, address %#lx", round,
          (int)g_handled, (unsigned long)g_fault_addr);
    /* mesh again (re-installs the core's handler in front of ours) while a
     * thread writes to the spans being meshed */
    spanset_t ss;
    make_spanset(&ss, 64, 32);
    for (size_t i = 0; i < ss.nlive; i++) { uint64_t *q = (uint64_t *)ss.live[i].p; q[0] = ss.live[i].tag; }
    writer_arg_t w = {ss.live, ss.nlive, 0, 0};
    pthread_t t;
    if (pthread_create(&t, NULL, writer, &w) != 0) DIE("pthread_create");
    while (atomic_load(&w.writes) == 0) sched_yield();
    size_t freed = mesh_compact();
    atomic_store(&w.stop, 1);
    pthread_join(t, NULL);
    CHECK(freed == 31 * ss.span / PAGE, "round %d: compaction under a writer freed %zu pages, expected %zu", round,
          freed, 31 * ss.span / PAGE);
    check_one_physical_page(&ss, "under a writer");
    for (size_t i = 0; i < ss.nlive; i++) mesh_free(ss.live[i].p);
    free(ss.live);
    CHECK(mesh_check_heap() == 0, "heap inconsistent");
  }
  verify_all(g_set.live, g_set.nlive, "at the end");
  print_stats("handler");
  if (g_fail) return 1;
  printf("handler ok calls=%d\n", (int)g_handled);
  return 0;
}

static int case_sigbus_after_mesh(void) {
  set_opt("period_ms", 0);
  mesh_a_pair();
  char path[] = "/tmp/mesh-sigbus-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) DIE("mkstemp");
  unlink(path);
  if (ftruncate(fd, 2 * PAGE) != 0) DIE("ftruncate");
  volatile char *m = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) DIE("mmap");
  m[0] = 1;
  m[PAGE] = 1;
  if (ftruncate(fd, 0) != 0) DIE("ftruncate 0");
  /* and meshing once more, so the barrier is certainly in place */
  spanset_t ss;
  make_spanset(&ss, 64, 2);
  if (mesh_compact() < 1) DIE("second mesh failed");
  printf("FAULTING\n");
  fflush(stdout);
  m[PAGE] = 2; /* the file is empty now: SIGBUS */
  printf("SURVIVED a write to a truncated file mapping\n");
  return 3;
}

/* ---- fork while meshing -------------------------------------------------------------- */
static atomic_int g_mesher_stop;
static atomic_long g_mesher_rounds, g_mesher_churns, g_forks_started;

/* Churns its own small objects, keeping 10 % (so it never frees a meshed
 * chain: meshed_pages only grows), and compacts, over and over. It churns
 * at most CHURN_PER_FORK batches per fork, so its heap stays small; beyond
 * that it keeps running compaction passes. */
enum { BATCH = 1000, CHURN_PER_FORK = 20 };

static void *mesher(void *arg) {
  uint64_t seed = *(uint64_t *)arg;
  rng_t r; rng_seed(&r, seed);
  size_t max_keep = (size_t)(BATCH / 5) * CHURN_PER_FORK * 64;
  void **keep = calloc(max_keep, sizeof *keep);
  size_t nkeep = 0;
  void *batch[BATCH];
  while (!atomic_load(&g_mesher_stop)) {
    if (atomic_load(&g_mesher_churns) < CHURN_PER_FORK * (atomic_load(&g_forks_started) + 1)) {
      for (int i = 0; i < BATCH; i++) {
        size_t n = 16 + 16 * (size_t)rng_below(&r, 16);
        batch[i] = mesh_malloc(n);
        if (!batch[i]) DIE("mesher: malloc");
        memset(batch[i], 0x3c, n);
      }
      for (int i = 0; i < BATCH; i++) {
        if (rng_below(&r, 10) == 0 && nkeep < max_keep) keep[nkeep++] = batch[i];
        else mesh_free(batch[i]);
      }
      atomic_fetch_add(&g_mesher_churns, 1);
    }
    mesh_compact();
    atomic_fetch_add(&g_mesher_rounds, 1);
  }
  for (size_t i = 0; i < nkeep; i++) mesh_free(keep[i]);
  free(keep);
  return NULL;
}

static long memfd_blocks_bytes(void) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  struct dirent *e;
  long bytes = -1;
  char path[300], target[256];
  while ((e = readdir(d))) {
    snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
    ssize_t n = readlink(path, target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = 0;
    if (strstr(target, "meshalloc-arena")) {
      struct stat st;
      if (stat(path, &st) == 0) bytes = (long)st.st_blocks * 512;
    }
  }
  closedir(d);
  return bytes;
}

static int fork_child(obj_t *pop, size_t npop, uint64_t before, int wfd, int gofd) {
  g_who = "child";
  uint64_t meshed = stat_get("meshed_pages"), span_pages = stat_get("span_pages");
  uint64_t copied = stat_get("fork_copy_bytes_last");
  long memfd = memfd_blocks_bytes();
  verify_all(pop, npop, "child: inherited");
  if (write(wfd, &meshed, sizeof meshed) != (ssize_t)sizeof meshed) _exit(5);
  close(wfd);
  /* the parent now rewrites every object; none of that may show here */
  char go;
  if (read(gofd, &go, 1) != 1) _exit(6);
  close(gofd);
  verify_all(pop, npop, "child: after the parent rewrote its copies");
  CHECK(meshed >= before, "child has meshed_pages %llu, the parent had %llu before fork",
        (unsigned long long)meshed, (unsigned long long)before);
  /* the copy holds each physical span once: aliases were not copied */
  CHECK(copied <= span_pages * PAGE, "child copied %llu bytes, live spans hold %llu pages",
        (unsigned long long)copied, (unsigned long long)span_pages);
  CHECK(memfd >= 0 && memfd <= (long)(span_pages * PAGE) + 64 * 1024,
        "child's memfd holds %ld bytes, live spans %llu pages (meshed %llu)", memfd,
        (unsigned long long)span_pages, (unsigned long long)meshed);
  check_mappings_in_child("child after fork");
  CHECK(mesh_check_heap() == 0, "child: heap inconsistent after fork");
  /* the child's writes stay in the child */
  for (size_t i = 0; i < npop; i++) { pop[i].tag += 1000000007u; obj_fill(&pop[i]); }
  enum { M = 20000 };
  static void *extra[M];
  for (int i = 0; i < M; i++) {
    extra[i] = mesh_malloc(16 + (size_t)(i % 32) * 16);
    if (!extra[i]) DIE("child malloc");
    memset(extra[i], 0x77, 16);
  }
  for (int i = 0; i < M; i++) if (i % 10) mesh_free(extra[i]);
  for (size_t i = 0; i < npop; i += 2) { mesh_free(pop[i].p); pop[i].p = NULL; }
  mesh_compact();
  verify_all(pop, npop, "child: after its own meshing");
  check_mappings_in_child("child after its own meshing");
  CHECK(mesh_check_heap() == 0, "child: heap inconsistent at the end");
  for (int i = 0; i < M; i += 10) mesh_free(extra[i]);
  fflush(stderr);
  _exit(g_fail ? 1 : 0);
}

static int case_fork_while_meshing(uint64_t seed) {
  set_opt("period_ms", 0);
  printf("seed=%llu\n", (unsigned long long)seed);
  static const size_t sizes[] = {24, 48, 64, 100, 128, 200, 256, 400, 512, 600, 1000, 2048, 4000, 8192, 20000, 100000};
  enum { N = 60000 };
  obj_t *pop = calloc(N, sizeof *pop);
  if (!pop) DIE("calloc");
  /* mostly small objects, some up to 100 kB */
  alloc_detached(pop, N, sizes, 9, seed, 1);
  obj_t big[64];
  alloc_detached(big, 64, sizes, sizeof sizes / sizeof sizes[0], seed + 1, 1u << 30);
  rng_t r; rng_seed(&r, seed ^ 0x99);
  size_t npop = 0;
  for (size_t i = 0; i < N; i++) {
    if (rng_below(&r, 100) < 20) pop[npop++] = pop[i];
    else mesh_free(pop[i].p);
  }
  for (int i = 0; i < 64; i++) pop[npop++] = big[i];
  size_t first = mesh_compact();
  CHECK(first > 0, "the population did not mesh");
  print_stats("before forking");
  pthread_t t;
  uint64_t mseed = seed + 2;
  if (pthread_create(&t, NULL, mesher, &mseed) != 0) DIE("pthread_create");
  while (atomic_load(&g_mesher_rounds) < 2) sched_yield();
  enum { FORKS = 24 };
  int meshed_children = 0;
  for (int f = 0; f < FORKS; f++) {
    int fds[2], go[2];
    if (pipe(fds) != 0 || pipe(go) != 0) DIE("pipe");
    uint64_t before = stat_get("meshed_pages");
    atomic_fetch_add(&g_forks_started, 1);
    pid_t pid = fork();
    if (pid < 0) DIE("fork");
    if (pid == 0) {
      close(fds[0]);
      close(go[1]);
      fork_child(pop, npop, before, fds[1], go[0]);
    }
    close(fds[1]);
    close(go[0]);
    uint64_t after = stat_get("meshed_pages"), child_meshed = 0;
    ssize_t got = read(fds[0], &child_meshed, sizeof child_meshed);
    close(fds[0]);
    /* rewrite everything while the child is alive (and the mesher meshes) */
    for (size_t i = 0; i < npop; i++) { pop[i].tag += 7919; obj_fill(&pop[i]); }
    if (write(go[1], "g", 1) != 1) CHECK(0, "fork %d: child gone before the parent's writes", f);
    close(go[1]);
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) DIE("waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "fork %d: child status %#x", f, status);
    CHECK(got == (ssize_t)sizeof child_meshed, "fork %d: child sent no meshed_pages", f);
    CHECK(child_meshed >= before && child_meshed <= after,
          "fork %d: child's meshed_pages %llu is not the parent's at fork (%llu before, %llu after)", f,
          (unsigned long long)child_meshed, (unsigned long long)before, (unsigned long long)after);
    meshed_children += child_meshed > 0;
    if (verify_all(pop, npop, "parent after a child wrote its copies")) break;
  }
  atomic_store(&g_mesher_stop, 1);
  pthread_join(t, NULL);
  printf("fork: %d forks, %d with meshed pages, mesher rounds %ld (%ld with churn)\n", FORKS, meshed_children,
         atomic_load(&g_mesher_rounds), atomic_load(&g_mesher_churns));
  print_stats("after forking");
  CHECK(meshed_children == FORKS, "only %d of %d children inherited meshed pages", meshed_children, FORKS);
  CHECK(mesh_check_heap() == 0, "parent: heap inconsistent");
  check_mappings("parent at the end");
  verify_all(pop, npop, "parent at the end");
  for (size_t i = 0; i < npop; i++) mesh_free(pop[i].p);
  mesh_compact();
  check_mappings("parent after freeing everything");
  if (g_fail) return 1;
  printf("fork ok\n");
  return 0;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 2) DIE("usage: mesh_cases CASE [ARG]");
  const char *c = argv[1];
  uint64_t arg = argc > 2 ? parse_u64(argv[2], 0) : 0;
  if (!strcmp(c, "pair")) return case_chain(arg ? arg : 64, 2);
  if (!strcmp(c, "chain")) return case_chain(64, arg ? (int)arg : 3);
  if (!strcmp(c, "pss")) return case_pss(arg);
  if (!strcmp(c, "idle-sweep")) return case_idle_sweep();
  if (!strcmp(c, "budget")) return case_budget(arg);
  if (!strcmp(c, "runs")) return case_runs(arg);
  if (!strcmp(c, "runs-random")) return case_runs_random(arg);
  if (!strcmp(c, "compact-ends")) return case_compact_ends(arg);
  if (!strcmp(c, "compact-complete")) return case_compact_complete(arg);
  if (!strcmp(c, "pause-clocks")) return case_pause_clocks(arg);
  if (!strcmp(c, "pacing")) return case_pacing(arg);
  if (!strcmp(c, "pack-sparse")) return case_pack(c, 32, 3, 3, arg);
  if (!strcmp(c, "pack-mixed")) return case_pack(c, 64, 55, 25, arg);
  if (!strcmp(c, "segv-after-mesh")) return case_segv_after_mesh();
  if (!strcmp(c, "handler-after-mesh")) return case_handler_after_mesh();
  if (!strcmp(c, "sigbus-after-mesh")) return case_sigbus_after_mesh();
  if (!strcmp(c, "fork-while-meshing")) return case_fork_while_meshing(arg);
  if (!strcmp(c, "free-race")) return case_free_race(arg);
  DIE("unknown case %s", c);
}
