/* mesh.c - compaction without relocation: finding and performing meshes.
 *
 * Two detached spans of one size class *mesh* when their occupancy bitmaps
 * do not overlap: the live objects of the source are copied into the same
 * offsets of the destination, every virtual span of the source is remapped
 * onto the destination's physical pages (held in the memfd), and the
 * source's physical pages are freed. No pointer changes: the source's
 * addresses now reach the same objects through an alias mapping.
 *
 * Finding pairs (best fit, not the paper's random split): a batch of
 * candidates of a class (detached PARTIAL spans under max_occupancy_pct,
 * chains not at max_chain) is sorted densest first and placed span by span:
 * each is meshed onto the densest span already kept whose bitmap it does not
 * overlap (up to `probes` tried), or kept itself. Before those, the partner
 * that would continue a neighbour's mapping is tried: if the virtual page
 * left of the source maps to memfd page P-1, meshing onto the span at P lets
 * the kernel merge the two VMAs, so one mapping covers many meshed pages
 * (see arena.c). Sweeps repeat, so chains grow.
 *
 * One mesh, under the global lock, with the source's bits only ever being
 * cleared (by racing frees) and the destination's never set by anyone else:
 *   0. promote the destination, if it is not yet in the memfd (arena.c:
 *      write-protected, copied into the memfd at its own page, that range
 *      mapped over it);
 *   1. write-protect every virtual span of the source (barrier.c makes
 *      writers wait; readers are unaffected);
 *   2. snap = source bitmap; destination bitmap |= snap; copy snap's slots;
 *   3. source record becomes SPAN_ALIAS -> destination (seq_cst), the page
 *      table of its virtual spans points at the destination;
 *   4. exchange the source bitmap with 0; bits in snap but no longer in the
 *      source were freed during 2-3 and are cleared in the destination;
 *   5. map each source virtual span onto the destination's memfd pages (this
 *      also lifts the protection and drops the source's anonymous pages),
 *      end the barrier; a source that was itself a destination has its
 *      memfd pages punched.
 * A free racing with this either clears the source bit before step 4 (and
 * step 4 forwards it) or finds the bit gone, sees SPAN_ALIAS and retries on
 * the destination (alloc.c), so no free is lost or reported twice.
 *
 * Budget: mappings are counted exactly (arena.c) and meshing stops, never
 * aborts, before max_mappings. Pauses: a pass stops at max_pause_us and the
 * next one resumes with the size class where it stopped. When passes run
 * (inside malloc and free, on the meshing thread; pacing) is trigger.c's
 * business: this file runs a pass when asked, and mesh_compact.
 */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <string.h>

#define MAX_CANDIDATES 1024

static uint64_t last_pass_ns;
static unsigned next_cls;
static uint32_t cand[MAX_CANDIDATES]; /* (lock) scratch for one class */
/* (lock) The best-fit state of the open batch (see mesh_class): clive[i]
 * is cand[i]'s live count when it was last looked at (a hint: racing
 * frees only lower it); kept[0..nkept) are positions in cand[] of the
 * spans that stay physical, densest first. */
static uint16_t clive[MAX_CANDIDATES];
static uint16_t kept[MAX_CANDIDATES];
static unsigned nkept;
static uint64_t mesh_rng; /* (lock) the split mesher's random halves and probe starts */
static struct { uint32_t id; uint8_t bin; } cursor[MESH_NUM_CLASSES]; /* (lock) where each class's sweep goes on */

/* The mapping budget. The kernel refuses any new mapping of the process
 * past vm.max_map_count, and then it is someone else's mmap (or our own
 * remap) that fails, so meshing stops well before: at 3/4 of the limit, and
 * never closer to it than 1/8 of the limit counting the mappings the rest of
 * the program holds (counted at start-up and before each compaction). */
static uint64_t map_limit;
static _Atomic(uint64_t) map_others; /* written without the lock */
static _Atomic(uint64_t) map_counted_ns; /* when map_others was counted */

/* Counts the mappings that are not the arena's. Call without the lock (a
 * big /proc/self/maps takes milliseconds to read). */
void _mesh_count_other_mappings(void) {
  long all = _mesh_os_count_maps();
  uint64_t ours = mesh_stat_get(arena_mappings);
  mesh_store_relaxed(&map_others, all > 0 && (uint64_t)all > ours ? (uint64_t)all - ours : 0);
  mesh_store_relaxed(&map_counted_ns, _mesh_os_now_ns());
}

/* The program may have added mappings of its own since they were counted
 * (a free-triggered pass never counts: reading the maps file is too slow
 * for malloc). Once the process nears half the kernel's limit, a count
 * older than MAP_RECOUNT_NS is stale: inline passes stand aside and the
 * meshing thread counts again (outside the lock) before its next pass. */
#define MAP_RECOUNT_NS 500000000u
bool _mesh_mapping_count_stale(void) {
  if (mesh_opt(MESH_OPT_MAX_MAPPINGS) > 0 || !map_limit) return false;
  uint64_t used = mesh_stat_get(arena_mappings) + mesh_load_relaxed(&map_others) + map_limit / 8;
  return used >= map_limit / 2 && _mesh_os_now_ns() - mesh_load_relaxed(&map_counted_ns) >= MAP_RECOUNT_NS;
}

void _mesh_meshing_init(void) {
  mesh_rng = _mesh_random_seed();
  map_limit = (uint64_t)_mesh_os_max_map_count();
  mesh_stat_set(arena_mappings, 1);
  mesh_stat_set(arena_mappings_hwm, 1);
  _mesh_count_other_mappings();
}

static uint64_t budget(void) {
  long opt = mesh_opt(MESH_OPT_MAX_MAPPINGS);
  if (opt > 0) return (uint64_t)opt;
  uint64_t share = map_limit / 4 * 3, reserve = mesh_load_relaxed(&map_others) + map_limit / 8;
  uint64_t room = map_limit > reserve ? map_limit - reserve : 0;
  return share < room ? share : room;
}

static unsigned chain_len(const span_t *s) { return 1u + s->naliases; }

static bool disjoint(const span_t *a, const span_t *b) {
  for (unsigned w = 0; w < mesh_bitmap_words(a); w++)
    if (mesh_load_relaxed(&a->bits[w]) & mesh_load_relaxed(&b->bits[w])) return false;
  return true;
}

/* Copies one live object from the write-protected source. The program may
 * have written this object a moment ago from another thread, with no
 * synchronisation a race detector can see: the mprotect (and the kernel's
 * TLB shootdown) is what orders those writes before this read. The copy is
 * therefore kept out of ThreadSanitizer's view, and done by hand so that
 * no intercepted memcpy reports it either. Object sizes are multiples of 16. */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MESH_NO_TSAN __attribute__((no_sanitize("thread")))
#endif
#endif
#ifndef MESH_NO_TSAN
#define MESH_NO_TSAN
#endif
static MESH_NO_TSAN void copy_object(char *to, const char *from, size_t size) {
  uint64_t *d = (uint64_t *)(void *)to;
  const volatile uint64_t *s = (const volatile uint64_t *)(const void *)from;
  for (size_t i = 0; i < size / 8; i++) d[i] = s[i];
}

static bool protect(uint32_t page, uint32_t npages) {
  return _mesh_os_protect_read((void *)mesh_page_addr(page), (size_t)npages << MESH_PAGE_SHIFT) == 0;
}

static void map_or_die(uint32_t vpage, uint32_t n, uint32_t phys) {
  /* Cannot fail within the budget; if it does the heap is inconsistent. */
  if (_mesh_arena_map(vpage, n, phys) != 0)
    _mesh_fatal("meshing: remapping %u pages at page %u failed (errno %d)", n, vpage, errno);
}

/* Meshes src onto dst (both detached and unlinked). Returns false, with
 * nothing changed, if the mapping budget or mprotect refuses. */
static bool mesh_pair(uint32_t dst_id, uint32_t src_id) {
  span_t *d = mesh_span(dst_id), *s = mesh_span(src_id);
  uint32_t n = s->npages, size = _mesh_classes[s->cls].size;
  unsigned nv = chain_len(s);
  /* +2 for the source's own pages, +2 for promoting the destination */
  if (mesh_stat_get(arena_mappings) + 2ull * nv + 4 > budget()) {
    mesh_stat_add(mesh_budget_stops, 1);
    return false;
  }
  if (!_mesh_arena.meshable || _mesh_arena_fd() < 0) return false; /* meshing stopped in this pass, or orphaned */
  _mesh_barrier_begin();
  /* a wrapped system call writing into the source, or into a destination
   * about to be promoted: not now (after the barrier began, so that the call
   * either is seen here or waits) */
  uint32_t vs = src_id;
  bool busy = false;
  for (unsigned i = 0; i < nv && !busy; i++, vs = mesh_span(vs)->alias_next) {
    uintptr_t lo = mesh_page_addr(mesh_span(vs)->page);
    busy = _mesh_syscall_overlaps(lo, lo + ((uintptr_t)n << MESH_PAGE_SHIFT));
  }
  if (!busy && !(d->flags & SPAN_FILE)) {
    uintptr_t lo = mesh_page_addr(d->page);
    busy = _mesh_syscall_overlaps(lo, lo + ((uintptr_t)n << MESH_PAGE_SHIFT));
  }
  if (busy) {
    _mesh_barrier_end();
    mesh_stat_add(syscalls_in_flight_skips, 1);
    return false;
  }
  /* 0. the destination's pages move into the memfd, where the source's
   * virtual spans can map them */
  if (!_mesh_arena_promote(dst_id)) {
    _mesh_barrier_end();
    return false;
  }
  /* 1. writers of the source wait from here on */
  vs = src_id;
  for (unsigned i = 0; i < nv; i++, vs = mesh_span(vs)->alias_next) {
    if (!protect(mesh_span(vs)->page, n)) {
      /* undo what was protected (the destination, promoted, stays so) */
      for (uint32_t u = src_id; u != vs; u = mesh_span(u)->alias_next)
        if (_mesh_os_protect_rw((void *)mesh_page_addr(mesh_span(u)->page), (size_t)n << MESH_PAGE_SHIFT) != 0)
          _mesh_fatal("meshing: cannot make span pages writable again (errno %d)", errno);
      _mesh_barrier_end();
      return false;
    }
  }
  /* 2. */
  uint64_t snap[MESH_BITMAP_WORDS] = {0};
  char *from = (char *)mesh_page_addr(s->page), *to = (char *)mesh_page_addr(d->page);
  uint64_t copied = 0;
  for (unsigned w = 0; w < mesh_bitmap_words(s); w++) {
    snap[w] = mesh_load_seq_cst(&s->bits[w]);
    mesh_fetch_or_seq_cst(&d->bits[w], snap[w]);
    for (uint64_t b = snap[w]; b; b &= b - 1) {
      size_t off = (size_t)(w * 64 + (unsigned)__builtin_ctzll(b)) * size;
      copy_object(to + off, from + off, size);
      copied += size;
    }
  }
  /* 3. */
  mesh_store_seq_cst(&s->mesh_dst, dst_id);
  mesh_store_seq_cst(&s->state, SPAN_ALIAS);
  vs = src_id;
  int delta = 0;
  for (unsigned i = 0; i < nv; i++, vs = mesh_span(vs)->alias_next) {
    span_t *v = mesh_span(vs);
    if (vs != src_id) mesh_store_seq_cst(&v->mesh_dst, dst_id);
    delta += _mesh_arena_map_delta(v->page, n, d->page);
    _mesh_pagetable_set(v->page, n, v->page, dst_id);
  }
  /* 4. */
  for (unsigned w = 0; w < mesh_bitmap_words(s); w++) {
    uint64_t now = mesh_exchange_seq_cst(&s->bits[w], 0);
    uint64_t freed = snap[w] & ~now;
    if (freed) mesh_fetch_and_seq_cst(&d->bits[w], ~freed);
  }
  /* 5. */
  vs = src_id;
  uint32_t last = src_id;
  for (unsigned i = 0; i < nv; i++, vs = mesh_span(vs)->alias_next) {
    map_or_die(mesh_span(vs)->page, n, d->page);
    last = vs;
  }
  _mesh_barrier_end();
  /* The source's own pages: anonymous ones went with the mapping that
   * replaced them; a former destination's stay in the memfd until punched. */
  if (s->flags & SPAN_FILE) {
    s->flags &= (uint8_t)~SPAN_FILE;
    mesh_stat_sub(promoted_pages, n);
    if (_mesh_arena_punch(s->page, n) != 0) {
      /* its pages stay allocated in the memfd: meshing would only cost from
       * now on (fallocate refused, e.g. by seccomp) */
      _mesh_warning("meshing: cannot return a meshed span's pages (fallocate errno %d); meshing is off from now on",
                    errno);
      _mesh_arena.meshable = false;
    }
  }
  /* the source's chain (itself first) joins the destination's */
  mesh_span(last)->alias_next = d->alias_next;
  d->alias_next = src_id;
  d->naliases = (uint8_t)(d->naliases + nv);
  mesh_stat_add(arena_mappings, delta);
  mesh_stat_hwm(arena_mappings_hwm, arena_mappings);
  mesh_stat_add(mesh_count, 1);
  mesh_stat_add(mesh_aliases, 1);
  mesh_stat_add(meshed_pages, n);
  mesh_stat_hwm(meshed_pages_hwm, meshed_pages);
  mesh_stat_add(meshed_pages_total, n);
  mesh_stat_add(mesh_bytes_copied, copied);
  mesh_stat_sub(span_pages, n);
  mesh_stat_sub(spans_live, 1);
  mesh_stat_add(spans_free_count, 1);
  if (delta <= 0) mesh_stat_add(mesh_adjacent, 1);
  return true;
}

/* A span that may take part in a mesh of class cls: detached with free
 * slots (so linked in a partial bin), not empty (nothing to gain), not too
 * full, chain not at its cap. Reads only the span's record, which stays
 * valid memory whatever became of the span. */
static bool is_candidate(uint32_t id, unsigned cls, unsigned max_live, unsigned max_chain) {
  span_t *s = mesh_span(id);
  if (mesh_load_relaxed(&s->state) != SPAN_PARTIAL || s->cls != cls || (s->flags & SPAN_PINNED)) return false;
  unsigned live = _mesh_span_live(s);
  return live && live <= max_live && chain_len(s) < max_chain;
}

/* The span starting at page pg, if it is physical (its virtual pages map
 * to its own memfd pages) and a candidate of cls; else MESH_NIL. Never the
 * span the sweep goes on from: meshing it would end the sweep. */
static uint32_t physical_candidate_at(uint32_t pg, unsigned cls, unsigned max_chain) {
  if (!pg || pg >= _mesh_arena_top()) return MESH_NIL;
  uint64_t e = mesh_load_relaxed(&_mesh_arena.pagetable[pg]);
  uint32_t id = (uint32_t)e;
  if (!id || (uint32_t)(e >> 32) != pg || mesh_span(id)->page != pg || id == cursor[cls].id) return MESH_NIL;
  return is_candidate(id, cls, mesh_span(id)->nobjects, max_chain) ? id : MESH_NIL;
}

/* The spans whose physical pages would continue the mapping left and right
 * of span l, where they could be l's partner: detached partial spans of the
 * class, in this batch or not (the spans next to a meshed neighbour's
 * partner are rarely among the 1024 a batch holds). MESH_NIL where none. */
static void adjacent_partners(const span_t *l, unsigned cls, unsigned max_chain, uint32_t out[2]) {
  uint32_t want[2] = {MESH_NIL, MESH_NIL};
  if (l->page > 0) {
    uint32_t p = _mesh_arena_phys_of(l->page - 1);
    if (p != MESH_PHYS_ANON) want[0] = p + 1;
  }
  if (l->page + l->npages < _mesh_arena.npages) {
    uint32_t p = _mesh_arena_phys_of(l->page + l->npages);
    if (p != MESH_PHYS_ANON && p >= l->npages) want[1] = p - l->npages;
  }
  for (int k = 0; k < 2; k++)
    out[k] = want[k] == l->page || (k == 1 && want[1] == want[0]) ? MESH_NIL
                                                                   : physical_candidate_at(want[k], cls, max_chain);
}

/* Position of span id in cand[0..n), or -1. */
static int cand_pos(uint32_t id, unsigned n) {
  for (unsigned q = 0; q < n; q++)
    if (cand[q] == id) return (int)q;
  return -1;
}

/* Position of cand[] index j in kept[0..nkept), or -1. */
static int kept_pos(unsigned j) {
  for (unsigned q = 0; q < nkept; q++)
    if (kept[q] == j) return (int)q;
  return -1;
}

/* Takes kept[pos] out of the kept list. */
static void kept_remove(unsigned pos) {
  nkept--;
  for (unsigned r = pos; r < nkept; r++) kept[r] = kept[r + 1];
}

/* Puts cand[] index q into the kept list at its density (clive[q]),
 * after the spans at least as dense: the list stays densest first. */
static void kept_insert(unsigned q) {
  unsigned pos = nkept++;
  for (; pos > 0 && clive[kept[pos - 1]] < clive[q]; pos--) kept[pos] = kept[pos - 1];
  kept[pos] = (uint16_t)q;
}

/* Shell sort of cand[0..n) by live count, densest first, then by id (no
 * libc qsort: it may malloc); clive[] moves along. Returns n without the
 * duplicates (a span collected twice is adjacent to itself once sorted). */
static unsigned sort_by_live(unsigned n) {
  for (unsigned gap = n / 2; gap; gap /= 2)
    for (unsigned i = gap; i < n; i++) {
      uint32_t t = cand[i];
      uint16_t tl = clive[i];
      unsigned j = i;
      for (; j >= gap && (clive[j - gap] < tl || (clive[j - gap] == tl && cand[j - gap] > t)); j -= gap)
        cand[j] = cand[j - gap], clive[j] = clive[j - gap];
      cand[j] = t;
      clive[j] = tl;
    }
  unsigned m = 0;
  for (unsigned i = 0; i < n; i++)
    if (!m || cand[i] != cand[m - 1]) cand[m] = cand[i], clive[m] = clive[i], m++;
  return m;
}

/* (lock) Moving average and recent times of a mesh's time per unit of
 * work, used to stop before a mesh that would overrun the pause bound. A
 * mesh protects, remaps and unprotects each virtual span of the source's
 * chain (a system call each) and copies and punches once, so its time grows
 * with 1 + chain length: a chain of 100 costs ~50x a pair, and a per-mesh
 * figure let such meshes overrun the bound.
 *
 * Timed in the meshing thread's CPU time, not wall-clock time: a mesh during
 * which the thread was preempted (or its vCPU descheduled) measured 4.4 ms
 * of wall clock for 0.26 ms of work, the peak then predicted every second
 * mesh past the deadline, and for the ~300 meshes the peak took to decay
 * each pass meshed once: on the 2-CPU VM the thread ran at a fifth of its
 * speed after a 1 M-entry dict was 90 % deleted (frag_dict settled at
 * 146 MiB where compact() reached 65). Time the thread does not run is no
 * cost of the mesh and no deadline in user space can prevent it; the pass
 * still ends at its wall-clock deadline. */
static uint64_t mesh_ns_avg;
/* The last RECENT_MESHES times per unit: the prediction takes the second
 * longest of them, so one outlier (a mesh whose system calls waited for
 * another CPU to answer a TLB shootdown while its vCPU was descheduled:
 * 5 ms of CPU time for 1 mesh, seen here) changes nothing, while a run of
 * slow meshes (many mappings, a loaded machine) raises it at once. A
 * decaying peak took ~300 meshes to forget one outlier, and every pass
 * meanwhile meshed once. */
#define RECENT_MESHES 16
static uint64_t mesh_ns_recent[RECENT_MESHES];
static unsigned mesh_ns_next;

static uint64_t mesh_units(uint32_t src) { return 1u + chain_len(mesh_span(src)); }

/* Whether meshing src now would likely end past the deadline: its work
 * times the second longest recent (or twice the average) time per unit. */
static bool predicted_past(uint32_t src, uint64_t deadline) {
  uint64_t first = 0, second = 0;
  for (unsigned i = 0; i < RECENT_MESHES; i++) {
    uint64_t x = mesh_ns_recent[i];
    if (x > first) second = first, first = x;
    else if (x > second) second = x;
  }
  uint64_t per_unit = 2 * mesh_ns_avg > second ? 2 * mesh_ns_avg : second;
  return _mesh_os_now_ns() + mesh_units(src) * per_unit >= deadline;
}

/* Unlinks both spans, meshes src onto dst (mesh_pair) and times it. The
 * caller files them again. */
static bool mesh_timed(uint32_t dst, uint32_t src) {
  uint64_t units = mesh_units(src);
  _mesh_partial_unlink(src);
  _mesh_partial_unlink(dst);
  uint64_t m0 = _mesh_os_thread_cpu_ns();
  bool meshed = mesh_pair(dst, src);
  uint64_t took = (_mesh_os_thread_cpu_ns() - m0) / units;
  mesh_ns_recent[mesh_ns_next++ % RECENT_MESHES] = took;
  /* the average, with each time counted at most 4x the average: an outlier
   * moves it by at most 3/8 */
  uint64_t counted = mesh_ns_avg && took > 4 * mesh_ns_avg ? 4 * mesh_ns_avg : took;
  mesh_ns_avg = (7 * mesh_ns_avg + counted) / 8;
  return meshed;
}

/* (lock) The batch: candidates of one class that a step collected and
 * sorted but did not get through before its deadline. The next step of
 * the same class goes on with them instead of collecting new ones past
 * them, so what a sweep meshes does not depend on how long each mesh took
 * (a loaded machine makes more, shorter steps, not a worse result). The
 * lock is dropped between steps, so every span is checked again before it
 * is used. */
static struct {
  unsigned cls, n, next; /* sources cand[next..n) (split: the partners are kept[], not sources) */
  unsigned total;        /* spans in cand[] */
  bool open, split;      /* split: the batch was set up by the split mesher */
} batch;

/* Collects up to MAX_CANDIDATES candidates of cls into cand[] and returns
 * how many; advances the class's sweep cursor (sets *more if the sweep is
 * not complete). */
static unsigned collect(unsigned cls, unsigned max_live, unsigned max_chain, uint64_t deadline, bool *more) {
  /* Candidates are taken from where the last pass of this class stopped, so
   * successive passes sweep every partial span instead of re-reading the
   * heads of the bins (where freshly meshed, denser spans are filed). */
  unsigned n = 0;
  /* a quarter from the heads of the bins: the spans filed most recently,
   * often destinations of the last pass, so chains keep growing */
  /* (at most MAX_CANDIDATES spans looked at: a bin of spans too full to
   * mesh must not turn this into a walk of the whole bin) */
  /* (never the span the sweep goes on from: meshing it would end the sweep) */
  unsigned looked = 0;
  for (unsigned hb = 0; hb < MESH_OCC_BINS && n < MAX_CANDIDATES / 4; hb++)
    for (uint32_t h = _mesh_partial_head(cls, hb); h && n < MAX_CANDIDATES / 4 && looked++ < MAX_CANDIDATES;
         h = mesh_span(h)->next)
      if (h != cursor[cls].id && is_candidate(h, cls, max_live, max_chain)) cand[n++] = h;
  uint32_t id = cursor[cls].id;
  unsigned b = cursor[cls].bin;
  span_t *c0 = mesh_span(id);
  if (!id) {
    id = _mesh_partial_head(cls, b = 0); /* a new sweep */
  } else if (mesh_load_relaxed(&c0->state) != SPAN_PARTIAL || c0->cls != cls || c0->bin != b) {
    /* The span the sweep stopped at was meshed, attached or freed since:
     * its links lead elsewhere. End this sweep rather than restart it (a
     * restart could repeat forever while each pass meshes the cursor). */
    id = MESH_NIL;
    b = MESH_OCC_BINS;
  }
  for (unsigned walked = 0;; walked++) {
    while (!id && ++b < MESH_OCC_BINS) id = _mesh_partial_head(cls, b);
    if (!id || n == MAX_CANDIDATES) break;
    /* long runs of spans too full to mesh: the walk itself must respect the
     * pause bound (the cursor keeps the place for the next step) */
    if ((walked & 255) == 255 && _mesh_os_now_ns() >= deadline) break;
    /* (a span also taken from the heads is dropped after the sort) */
    if (is_candidate(id, cls, max_live, max_chain)) cand[n++] = id;
    id = mesh_span(id)->next;
  }
  cursor[cls].id = id; /* MESH_NIL: the sweep of this class is complete */
  cursor[cls].bin = (uint8_t)(id ? b : 0);
  if (id) *more = true;
  return n;
}

/* Disjoint partners whose mapping cost is compared per source: past a few,
 * a cheaper one is rarely found, and each costs a walk of both chains. */
#define PARTNERS_COMPARED 8
/* Chains longer than this are not walked to price them (a walk is a page
 * table lookup per virtual span): they are priced at the worst, +2 each. */
#define PRICED_CHAIN_MAX 8

/* Kernel mappings added if src's chain were meshed onto dst. */
static int alias_cost(uint32_t src_id, uint32_t dst_id) {
  const span_t *src = mesh_span(src_id);
  if (chain_len(src) > PRICED_CHAIN_MAX) return 2 * (int)chain_len(src);
  uint32_t dst_page = mesh_span(dst_id)->page;
  /* promoting the destination splits its anonymous neighbourhood */
  int cost = mesh_span(dst_id)->flags & SPAN_FILE ? 0 : _mesh_arena_map_delta(dst_page, src->npages, dst_page);
  uint32_t v = src_id;
  for (unsigned i = 0; i < chain_len(src); i++, v = mesh_span(v)->alias_next)
    cost += _mesh_arena_map_delta(mesh_span(v)->page, src->npages, dst_page);
  return cost;
}

/* A span with k live objects of n slots fits one with L live at random
 * with probability about ((n - L) / n)^k. Returns the largest L for which
 * that is at least 1/FIT_ODDS: denser kept spans are tried last. */
#define FIT_ODDS 1024
static unsigned fit_limit(unsigned n, unsigned k) {
  unsigned lo = 0, hi = n > k ? n - k : 0; /* L = n - k: the last that can fit at all */
  while (lo < hi) {
    unsigned mid = (lo + hi + 1) / 2;
    double f = (double)(n - mid) / n, p = 1.0;
    for (unsigned e = k; e; e >>= 1, f *= f)
      if (e & 1) p *= f;
    if (p * FIT_ODDS >= 1.0) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/* The first position of the kept list (densest first) whose span has at
 * most live objects. */
static unsigned kept_past(unsigned live) {
  unsigned lo = 0, hi = nkept;
  while (lo < hi) {
    unsigned mid = (lo + hi) / 2;
    if (clive[kept[mid]] > live) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/* (lock) Span id, met outside the probe order (a neighbour's partner),
 * now has live objects, or left the partners (gone: meshed away). Keeps
 * clive[] and the density order of kept[] true if it is in the batch. */
static void batch_update(uint32_t id, unsigned live, bool gone, unsigned nobjects) {
  int q = cand_pos(id, batch.total);
  if (q < 0) return;
  clive[q] = (uint16_t)live;
  int p = kept_pos((unsigned)q);
  if (p < 0) return;
  kept_remove((unsigned)p);
  if (!gone && live < nobjects && !batch.split) kept_insert((unsigned)q);
}

/* After src was meshed onto dst: meshes the spans next to src onto the
 * spans next to dst, both ways, while they fit and each adds no mapping,
 * so the run of aliases grows inside one kernel mapping. Neighbours are
 * tried before their best fit would be: a span's best-fit partner is
 * rarely next to its neighbour's, and a heap of tens of thousands of
 * spans reaches the mapping budget long before it runs out of fits.
 * Returns pages freed; stops at the deadline or the budget. */
static size_t extend_run(uint32_t src, uint32_t dst, unsigned cls, unsigned max_chain, uint64_t deadline,
                         bool *out_of_time, bool *stop) {
  size_t freed = 0;
  uint32_t n = mesh_span(dst)->npages;
  unsigned nobjects = mesh_span(dst)->nobjects;
  for (int dir = -1; dir <= 1; dir += 2) {
    uint32_t vs = mesh_span(src)->page, pd = mesh_span(dst)->page;
    for (;;) {
      if (dir < 0 && (vs < n || pd < n)) break;
      vs = dir < 0 ? vs - n : vs + n;
      pd = dir < 0 ? pd - n : pd + n;
      uint32_t s2 = physical_candidate_at(vs, cls, max_chain), d2 = physical_candidate_at(pd, cls, max_chain);
      if (!s2 || !d2 || s2 == d2) break;
      span_t *a = mesh_span(s2), *b = mesh_span(d2);
      if (a->npages != n || b->npages != n || !disjoint(a, b) || chain_len(a) + chain_len(b) > max_chain ||
          alias_cost(s2, d2) > 0)
        break;
      if (predicted_past(s2, deadline)) {
        *out_of_time = true;
        return freed;
      }
      unsigned live = _mesh_span_live(a) + _mesh_span_live(b);
      if (!mesh_timed(d2, s2)) {
        _mesh_file_detached(s2);
        _mesh_file_detached(d2);
        *stop = true;
        return freed;
      }
      _mesh_file_detached(d2);
      freed += n;
      batch_update(s2, 0, true, nobjects);
      batch_update(d2, live, false, nobjects);
    }
  }
  return freed;
}

/* Meshes what it can in one class before the deadline; returns pages freed
 * (and sets *out_of_time), or stops at the mapping budget (*stop).
 *
 * Best fit: the batch is sorted densest first and placed span by span;
 * each span is meshed onto the densest span already kept (placed and still
 * physical) whose bitmap it does not overlap, or is kept itself. Pairing
 * spans at random (the paper's split mesher) doubles occupancy per round
 * and stalls where random pairs stop fitting: with 128 slots a span, at
 * ~30 %. Filling the densest span first leaves the sparse ones free to
 * fill the next: a sparse span with k live objects fits a span at
 * occupancy q with probability ~(1 - q)^k, so the few survivors of a
 * fragmented class can be packed far past the point where two spans of
 * equal occupancy mesh. */
static size_t mesh_class(unsigned cls, uint64_t deadline, bool *out_of_time, bool *stop, bool *more,
                         bool *step_meshed) {
  const size_class_t *sc = &_mesh_classes[cls];
  unsigned max_live = (unsigned)(sc->nobjects * (uint64_t)mesh_opt(MESH_OPT_MAX_OCCUPANCY_PCT) / 100);
  unsigned max_chain = (unsigned)mesh_opt(MESH_OPT_MAX_CHAIN);
  if (!batch.open || batch.cls != cls) {
    batch.open = false;
    unsigned n = collect(cls, max_live, max_chain, deadline, more);
    if (n < 2) return 0;
    /* (already past the deadline: the loop below stops at once and the
     * batch waits, sorted, for the next step) */
    for (unsigned i = 0; i < n; i++) clive[i] = (uint16_t)_mesh_span_live(mesh_span(cand[i]));
    n = sort_by_live(n);
    batch.total = n;
    nkept = 0;
    batch.split = mesh_opt(MESH_OPT_MESHER) == MESH_MESHER_SPLIT;
    if (batch.split) {
      /* the paper's split mesher: random halves, the first half meshed
       * onto the second, each span in at most one mesh per batch */
      for (unsigned i = n; i > 1; i--) {
        unsigned j = mesh_rand_below(&mesh_rng, i);
        uint32_t t = cand[i - 1];
        uint16_t tl = clive[i - 1];
        cand[i - 1] = cand[j], clive[i - 1] = clive[j];
        cand[j] = t, clive[j] = tl;
      }
      for (unsigned i = n / 2; i < n; i++) kept[nkept++] = (uint16_t)i;
      n /= 2;
    }
    batch.cls = cls;
    batch.n = n;
    batch.next = 0;
    batch.open = true;
  }
  bool split = batch.split;
  unsigned n = batch.n, probes = (unsigned)mesh_opt(MESH_OPT_PROBES);
  size_t freed = 0;
  unsigned i = batch.next;
  for (; i < n; i++) {
    if (_mesh_os_now_ns() >= deadline) { /* a vDSO read: ~20 ns against ~60 us per mesh */
      *out_of_time = true;
      break;
    }
    if (!is_candidate(cand[i], cls, max_live, max_chain)) continue;
    span_t *l = mesh_span(cand[i]);
    /* Partners are tried densest first (after the one that would continue
     * a neighbour's mapping); of the first few disjoint ones, the pair and
     * direction that adds the fewest kernel mappings is taken: an alias in
     * the middle of an identity-mapped run splits it (+2), one next to
     * another alias may cost +1 or 0, one continuing a neighbour's run
     * merges (<= 0). Ties go to the densest. The mapping budget, not the
     * copying, is what limits meshing in a big heap. */
    int pick = -1; /* the partner's position in kept[], if kept */
    uint32_t partner = MESH_NIL;
    bool l_is_src = true;
    int best = INT_MAX;
    /* The partners that continue a neighbour's mapping may be outside the
     * kept list (in no batch, or sources still to come): they are tried
     * anyway, except by the split mesher, whose partners are its half.
     * adj[a]: position in kept[], or -1; adj_cand[a]: place in cand[]. */
    uint32_t adj_id[2];
    int adj[2] = {-1, -1}, adj_cand[2] = {-1, -1};
    adjacent_partners(l, cls, max_chain, adj_id);
    for (int a = 0; a < 2; a++) {
      if (!adj_id[a]) continue;
      adj_cand[a] = cand_pos(adj_id[a], batch.total);
      adj[a] = adj_cand[a] >= 0 ? kept_pos((unsigned)adj_cand[a]) : -1;
      if (adj[a] < 0 && (split || (adj_cand[a] >= 0 && (unsigned)adj_cand[a] <= i))) adj_id[a] = MESH_NIL;
    }
    int pick_adj = -1; /* which of them the partner is */
    /* The kept list is densest first. Spans with more live objects than l
     * has free slots cannot take it (from 0 to least: skipped). Those l
     * would fit only by a fluke if the two bitmaps were random (from least
     * to likely, fit_limit) are tried last: otherwise the densest kept
     * spans take every probe of every span and the sparser ones l would
     * likely fit are never tried. They are still tried, for bitmaps that
     * are not random (complementary patterns). */
    unsigned least = 0, likely = 0, start = 0;
    if (split) /* partners in random order */
      start = nkept ? mesh_rand_below(&mesh_rng, nkept) : 0;
    else
      least = kept_past(sc->nobjects - clive[i]), likely = kept_past(fit_limit(sc->nobjects, clive[i]));
    unsigned compared = 0, tried = nkept - least < probes ? nkept - least : probes;
    /* k = 0, 1: the neighbours' continuations; k = 2..tried + 1: the probes, p = k - 2 */
    for (unsigned k = 0; best > 0 && compared < PARTNERS_COMPARED && k <= tried + 1; k++) {
      /* hundreds of probes touch hundreds of span records: the probe loop
       * itself must respect the pause bound */
      if ((k & 63) == 63 && _mesh_os_now_ns() >= deadline) break;
      if (k < 2 && !adj_id[k]) continue;
      unsigned p = k - 2; /* probe number, from 0 */
      int pos = k < 2  ? adj[k]
                : split ? (int)((start + p) % nkept)
                        : (int)(p < nkept - likely ? likely + p : least + (p - (nkept - likely)));
      if (k >= 2 && (pos < 0 || pos == adj[0] || pos == adj[1])) continue;
      uint32_t r_id = k < 2 ? adj_id[k] : cand[kept[pos]];
      span_t *r = mesh_span(r_id);
      /* (a kept span is filled past max_live: that bound is for choosing
       * candidates, and a sparse span may still fit a dense one) */
      if (!disjoint(l, r) || chain_len(l) + chain_len(r) > max_chain ||
          (k >= 2 && !is_candidate(r_id, cls, sc->nobjects, max_chain))) /* the neighbours' are, by their finding */
        continue;
      compared++;
      int fwd = alias_cost(cand[i], r_id), back = alias_cost(r_id, cand[i]);
      int which = k < 2 ? (int)k : -1;
      if (fwd < best) best = fwd, pick = pos, partner = r_id, l_is_src = true, pick_adj = which;
      if (back < best) best = back, pick = pos, partner = r_id, l_is_src = false, pick_adj = which;
    }
    if (!partner) {
      if (!split) kept[nkept++] = (uint16_t)i; /* no older span is sparser: the order holds */
      continue;
    }
    int j = pick >= 0 ? kept[pick] : -1; /* the partner's place in cand[], if kept */
    unsigned partner_live = j >= 0 ? clive[j] : _mesh_span_live(mesh_span(partner));
    /* a mesh that would likely end past the deadline waits for the next
     * step: its work times the recent peak (or twice the average) time per
     * unit must still fit. The first mesh of a step always runs, so meshing
     * progresses even where one mesh takes longer than the bound
     * (sanitizers, huge chains). Of the step, not of this class: a pass
     * reaching a class just before its deadline used to run that class's
     * first mesh unchecked, whatever its chain length (pauses over the
     * bound). */
    uint32_t src = l_is_src ? cand[i] : partner, dst = l_is_src ? partner : cand[i];
    if (*step_meshed && predicted_past(src, deadline)) {
      *out_of_time = true;
      break;
    }
    *step_meshed = true;
    uint32_t pages = mesh_span(src)->npages;
    bool meshed = mesh_timed(dst, src);
    if (meshed) {
      freed += pages;
      unsigned live = (unsigned)clive[i] + partner_live;
      if (j >= 0) {
        /* the survivor takes the kept place, at its new density; meshed
         * once (split) or full, it is no longer a partner */
        unsigned sv = l_is_src ? (unsigned)j : i;
        clive[sv] = (uint16_t)live;
        kept_remove((unsigned)pick);
        if (!split && live < sc->nobjects) kept_insert(sv);
      } else if (l_is_src) {
        if (pick_adj >= 0 && adj_cand[pick_adj] >= 0) /* a source still to come */
          clive[adj_cand[pick_adj]] = (uint16_t)live;
      } else if (live < sc->nobjects) { /* l survives: kept, at its density */
        clive[i] = (uint16_t)live;
        kept_insert(i);
      }
    } else {
      _mesh_file_detached(src);
      *stop = true;
    }
    _mesh_file_detached(dst);
    if (meshed && !split) freed += extend_run(src, dst, cls, max_chain, deadline, out_of_time, stop);
    if (*stop) break;
    if (*out_of_time || _mesh_os_now_ns() >= deadline) {
      *out_of_time = true;
      i++;
      break;
    }
  }
  batch.next = i;
  if (i >= n || *stop) batch.open = false; /* the batch is done */
  if (batch.open || cursor[cls].id) *more = true; /* the rest of the batch or of the sweep */
  return freed;
}

/* A pause's start: wall clock (what the program waits) and the thread's
 * CPU time (what the pass itself spent; the difference is time the thread
 * was not running, preempted or its vCPU descheduled, which no deadline in
 * user space can prevent: docs/meshing.md, "Pause bound"), and the
 * counters the pause's work is measured by. */
typedef struct {
  uint64_t wall, cpu, meshes, pages;
} pause_start_t;

static pause_start_t pause_begin(void) {
  return (pause_start_t){_mesh_os_now_ns(), _mesh_os_thread_cpu_ns(), mesh_stat_get(mesh_count),
                         mesh_stat_get(meshed_pages_total)};
}

/* Records one pause (a pass, or one step of a compaction) in the stats:
 * the totals, the histogram, and the work and time of its kind (who ran
 * it), so the three kinds can be compared per pass and per second. */
static void pause_done(pause_start_t t0, enum mesh_pass_kind kind) {
  uint64_t cpu = _mesh_os_thread_cpu_ns() - t0.cpu;
  uint64_t ns = _mesh_os_now_ns() - t0.wall;
  if (cpu > ns) cpu = ns; /* read inside the wall-clock interval; also a failed read (0) */
  uint64_t bound = (uint64_t)mesh_opt(MESH_OPT_MAX_PAUSE_US) * 1000u;
  uint64_t meshes = mesh_stat_get(mesh_count) - t0.meshes, pages = mesh_stat_get(meshed_pages_total) - t0.pages;
  last_pass_ns = t0.wall + ns;
  _mesh_stats_log_pass(mesh_stat_get(mesh_passes) + 1, last_pass_ns, ns, cpu, meshes, pages, kind);
  mesh_stat_add(mesh_passes, 1);
  mesh_stat_add(mesh_pause_ns_total, ns);
  if (ns > mesh_stat_get(mesh_pause_ns_max)) mesh_stat_set(mesh_pause_ns_max, ns);
  if (cpu > mesh_stat_get(mesh_pause_cpu_ns_max)) mesh_stat_set(mesh_pause_cpu_ns_max, cpu);
  if (ns > bound) mesh_stat_add(mesh_pause_over_bound, 1);
  if (cpu > bound) mesh_stat_add(mesh_pause_cpu_over_bound, 1);
  if (ns < 100000) mesh_stat_add(mesh_pause_lt_100us, 1);
  else if (ns < 500000) mesh_stat_add(mesh_pause_lt_500us, 1);
  else if (ns < 1000000) mesh_stat_add(mesh_pause_lt_1ms, 1);
  else if (ns < 2000000) mesh_stat_add(mesh_pause_lt_2ms, 1);
  else if (ns < 5000000) mesh_stat_add(mesh_pause_lt_5ms, 1);
  else mesh_stat_add(mesh_pause_ge_5ms, 1);
  switch (kind) {
#define MESH_PASS_KIND_STATS(k)       \
  case MESH_PASS_##k:                 \
    mesh_stat_add(passes_##k, 1);     \
    mesh_stat_add(meshes_##k, meshes); \
    mesh_stat_add(pages_##k, pages);  \
    mesh_stat_add(pass_ns_##k, ns);   \
    break;
    MESH_PASS_KIND_STATS(triggered)
    MESH_PASS_KIND_STATS(thread)
    MESH_PASS_KIND_STATS(compact)
#undef MESH_PASS_KIND_STATS
  }
}

uint64_t _mesh_last_pass_ns(void) { return last_pass_ns; }

static bool can_mesh(void) {
  return _mesh_arena.meshable && mesh_opt(MESH_OPT_MESH) && _mesh_arena_fd() >= 0 && _mesh_barrier_ensure();
}

/* The work of a pass must end well before the bound: 1/4 of it is left
 * for what follows the last mesh (filing spans, statistics, the unlock) and
 * for a mesh that takes longer than predicted. One mesh of a 2-page chain
 * usually takes 20-60 us but sometimes 200-330 us (page faults on the
 * copy, the kernel's work on the mappings): with a margin of 1/8 (250 us
 * of 2 ms) a few steps in a thousand ended past the bound. */
static uint64_t deadline_after(uint64_t t0, uint64_t budget_ns) {
  return budget_ns > UINT64_MAX - t0 ? UINT64_MAX : t0 + budget_ns - budget_ns / 4;
}

/* A pass runs inside malloc or free on any thread of the program, with the
 * global lock held, and waits for nobody; but a signal handler that ran on
 * this thread in the middle of it would find the lock taken (a handler
 * that allocates) or its own object write-protected by the mesh this very
 * thread is making (a handler that writes a heap object: it would wait in
 * the barrier for itself). So asynchronous signals are held back for the
 * length of a pass (at most max_pause_us) and delivered right after it;
 * faults are not. */
size_t _mesh_mesh_pass(uint64_t budget_ns, enum mesh_pass_kind kind, bool *more) {
  *more = false;
  if (!can_mesh()) return 0;
  sigset_t old_mask;
  _mesh_os_block_async_signals(&old_mask);
  pause_start_t t0 = pause_begin();
  uint64_t deadline = deadline_after(t0.wall, budget_ns);
  size_t freed = 0;
  bool out_of_time = false, stop = false, unswept = false, step_meshed = false;
  for (unsigned k = 0; k < MESH_NUM_CLASSES && !out_of_time && !stop; k++) {
    unsigned c = (next_cls + k) % MESH_NUM_CLASSES;
    freed += mesh_class(c, deadline, &out_of_time, &stop, &unswept, &step_meshed);
    if (!out_of_time && _mesh_os_now_ns() >= deadline) out_of_time = true;
    if (out_of_time) next_cls = c; /* resume where the budget ran out */
  }
  *more = (out_of_time || unswept) && !stop; /* work left; a budget stop ends it */
  pause_done(t0, kind);
  _mesh_os_restore_signals(&old_mask);
  return freed;
}

/* Sweeps that free less than 1/COMPACT_DIMINISHING of a class's first
 * sweep end the compaction of that class: chains keep growing a little on
 * every sweep (new random partners), but past this point a sweep costs far
 * more than it returns. */
#define COMPACT_DIMINISHING 16
#define COMPACT_MAX_SWEEPS 32

/* One bounded step of a compaction (lock held): a step of the current
 * class's sweep; a class ends when a sweep frees nothing, frees less than
 * 1/COMPACT_DIMINISHING of its first, or after COMPACT_MAX_SWEEPS. Returns
 * the pages the step freed; st->finished once every class is done (or
 * meshing became impossible). */
size_t _mesh_compact_step(compact_state_t *st, enum mesh_pass_kind kind) {
  if (st->finished) return 0;
  if (st->cls >= MESH_NUM_CLASSES || !can_mesh()) {
    st->finished = true;
    return 0;
  }
  unsigned c = st->cls;
  if (!st->in_sweep) {
    if (st->sweeps == 0) {
      cursor[c].id = MESH_NIL; /* a fresh sweep of the class */
      batch.open = false;
    }
    st->in_sweep = true;
    st->sweep = 0;
  }
  uint64_t budget = (uint64_t)mesh_opt(MESH_OPT_MAX_PAUSE_US) * 1000u;
  sigset_t old_mask; /* as in a pass: no handler runs inside a step */
  _mesh_os_block_async_signals(&old_mask);
  pause_start_t t0 = pause_begin();
  bool out_of_time = false, step_meshed = false, unswept = false, stop = false;
  size_t freed = mesh_class(c, deadline_after(t0.wall, budget), &out_of_time, &stop, &unswept, &step_meshed);
  pause_done(t0, kind);
  _mesh_os_restore_signals(&old_mask);
  st->sweep += freed;
  if (stop) {
    st->finished = true;
  } else if (!unswept) { /* the sweep ended */
    st->in_sweep = false;
    bool next = st->sweep == 0 || (st->sweeps > 0 && st->sweep * COMPACT_DIMINISHING < st->first) ||
                st->sweeps + 1 >= COMPACT_MAX_SWEEPS;
    if (st->sweeps == 0) st->first = st->sweep;
    st->sweeps++;
    if (next) {
      st->cls++;
      st->sweeps = 0;
      st->first = 0;
    }
  }
  return freed;
}

size_t mesh_compact(void) {
  mesh_ensure_init();
  size_t total = 0;
  _mesh_count_other_mappings(); /* the program may have mapped much since start-up */
  /* Class by class: whole sweeps of the class's partial spans, each made of
   * steps that hold the lock for at most the pause bound, repeated while a
   * sweep still pays (the spans it filled may mesh again, growing chains).
   * Per class, because a round-robin pass over every class never sees all
   * sweeps end in the same pass, and so cannot tell when to stop. */
  compact_state_t st = {0};
  while (!st.finished) {
    _mesh_lock();
    total += _mesh_compact_step(&st, MESH_PASS_compact);
    _mesh_unlock();
  }
  _mesh_lock();
  _mesh_arena_scavenge(); /* the dirty pages too, as mesh_scavenge() does */
  _mesh_stats_publish(0);
  _mesh_unlock();
  return total;
}

size_t mesh_compact_ex(size_t *pages_returned) {
  uint64_t before = mesh_stat_get(pages_punched);
  size_t freed = mesh_compact();
  if (pages_returned) *pages_returned = (size_t)(mesh_stat_get(pages_punched) - before);
  return freed;
}

/* Pins the spans under [addr, addr+len): they are never meshed again, as
 * source or destination (mesh.h: mesh_pin). For a page meshed already, the
 * span holding its objects is pinned (its alias keeps its mapping until
 * that span is freed). Returns the spans pinned. */
size_t mesh_pin(const void *addr, size_t len) {
  uintptr_t a = (uintptr_t)addr, base = _mesh_arena.base;
  if (!len || !base || a + len <= base || a >= base + _mesh_arena.size) return 0;
  mesh_ensure_init();
  uint32_t first = a < base ? 0 : (uint32_t)((a - base) >> MESH_PAGE_SHIFT);
  uintptr_t end = a + len > base + _mesh_arena.size ? base + _mesh_arena.size : a + len;
  uint32_t last = (uint32_t)((end - 1 - base) >> MESH_PAGE_SHIFT);
  size_t pinned = 0;
  _mesh_lock();
  for (uint32_t pg = first; pg <= last && pg < _mesh_arena_top(); pg++) {
    uint32_t id = (uint32_t)mesh_load_relaxed(&_mesh_arena.pagetable[pg]);
    if (!id) continue;
    span_t *s = mesh_span(id); /* for an alias page: the span that holds the objects */
    uint8_t st = mesh_load_relaxed(&s->state);
    if (st != SPAN_ATTACHED && st != SPAN_PARTIAL && st != SPAN_FULL) continue;
    if (!(s->flags & SPAN_PINNED)) s->flags |= SPAN_PINNED, pinned++;
  }
  mesh_stat_add(spans_pinned, pinned);
  _mesh_unlock();
  return pinned;
}