/* arena.c - the meshable arena: one virtual range of private anonymous
 * memory, carved into spans and free page runs.
 *
 * The range is reserved (reserve.c: once, or as a growing prefix under an
 * address-space limit) with a memfd beside it that holds the physical pages
 * of meshing destinations (memfd.c). Spans are cut from free page runs, dirty ones first, or from
 * the untouched pages at the top; freed spans become dirty runs, merged
 * with their neighbours, and scavenging and decay return dirty runs to the
 * OS. Span records and the page table are span.c's.
 *
 * Placement: a live large block owns the free pages right after it, where
 * realloc grows it in place (_mesh_arena_grow_span). Other spans keep out
 * of that room while they can (after_large, place_in_run, cut_top), so
 * that threads growing blocks at once do not copy each other away.
 *
 * Invariants (checked by _mesh_arena_validate):
 *   - pages [0, top) are tiled exactly by span records: walking from page 0
 *     by each record's npages visits every live span and free run once;
 *   - every page of a live span has page-table entry (vstart << 32 | id);
 *     a free run has entries only on its first and last page, its interior
 *     is 0, so a stray free into free memory finds "no span";
 *   - pages >= top were never handed out and are untouched anonymous memory;
 *     top <= npages, the pages mapped so far (reserve.c grows them);
 *   - free runs are homogeneous: all dirty (touched, still committed) or all
 *     clean (returned/never used); neighbours of the same kind are merged;
 *   - dirty_pages <= max_dirty_mb after every free (scavenge returns all).
 *
 * Locking: everything that changes state runs under _mesh_global_lock. The
 * page table is read without a lock (relaxed loads) by free paths: a legal
 * free only reads entries of a span that cannot change while it has a live
 * object.
 */
#include "internal.h"

#include <errno.h>

arena_t _mesh_arena = {.fd = -1};

static uint32_t top;                 /* bump pointer in pages */
static uint32_t free_bins[2][MESH_FREE_BINS]; /* [dirty][bin] list heads */
static uint64_t free_bins_nonempty[2];

/* ---- free page runs ------------------------------------------------ */

static unsigned free_bin_of(uint32_t npages) {
  if (npages <= 32) return npages - 1;
  unsigned lg = 31u - (unsigned)__builtin_clz(npages); /* >= 5 */
  unsigned b = 32 + lg - 5;
  return b < MESH_FREE_BINS ? b : MESH_FREE_BINS - 1;
}

static bool run_dirty(const span_t *r) { return mesh_load_relaxed(&r->bits[0]) != 0; }

static void run_link(uint32_t id) {
  span_t *r = mesh_span(id);
  unsigned d = run_dirty(r), b = free_bin_of(r->npages);
  r->bin = (uint8_t)b;
  r->prev = MESH_NIL;
  r->next = free_bins[d][b];
  if (r->next) mesh_span(r->next)->prev = id;
  free_bins[d][b] = id;
  free_bins_nonempty[d] |= 1ull << b;
  /* boundary entries let neighbours find this run when they are freed */
  _mesh_pagetable_set(r->page, 1, r->page, id);
  _mesh_pagetable_set(r->page + r->npages - 1, 1, r->page, id);
}

static void run_unlink(uint32_t id) {
  span_t *r = mesh_span(id);
  unsigned d = run_dirty(r), b = r->bin;
  if (r->prev) mesh_span(r->prev)->next = r->next;
  else free_bins[d][b] = r->next;
  if (r->next) mesh_span(r->next)->prev = r->prev;
  if (!free_bins[d][b]) free_bins_nonempty[d] &= ~(1ull << b);
  _mesh_pagetable_set(r->page, 1, 0, MESH_NIL);
  _mesh_pagetable_set(r->page + r->npages - 1, 1, 0, MESH_NIL);
}

/* The free run of the same dirtiness that ends right before page, if any. */
static uint32_t run_ending_at(uint32_t page, bool dirty) {
  if (page == 0) return MESH_NIL;
  uint32_t id = (uint32_t)mesh_load_relaxed(&_mesh_arena.pagetable[page - 1]);
  span_t *r = mesh_span(id);
  if (id && mesh_load_relaxed(&r->state) == SPAN_FREE && r->page + r->npages == page && run_dirty(r) == dirty)
    return id;
  return MESH_NIL;
}

static uint32_t run_starting_at(uint32_t page, bool dirty) {
  if (page >= top) return MESH_NIL;
  uint32_t id = (uint32_t)mesh_load_relaxed(&_mesh_arena.pagetable[page]);
  span_t *r = mesh_span(id);
  if (id && mesh_load_relaxed(&r->state) == SPAN_FREE && r->page == page && run_dirty(r) == dirty) return id;
  return MESH_NIL;
}

/* Turns record id (page, npages set) into a free run, merged with
 * neighbours of the same kind, and links it. */
static void run_insert(uint32_t id, bool dirty) {
  span_t *r = mesh_span(id);
  mesh_store_relaxed(&r->state, SPAN_FREE);
  mesh_store_relaxed(&r->bits[0], dirty ? 1u : 0u);
  uint32_t left = run_ending_at(r->page, dirty);
  if (left) {
    run_unlink(left);
    r->page = mesh_span(left)->page;
    r->npages += mesh_span(left)->npages;
    _mesh_span_record_free(left);
  }
  uint32_t right = run_starting_at(r->page + r->npages, dirty);
  if (right) {
    run_unlink(right);
    r->npages += mesh_span(right)->npages;
    _mesh_span_record_free(right);
  }
  run_link(id);
}

/* For memfd.c, which gives freed aliases and destinations back as clean
 * runs. Lock held. */
void _mesh_arena_run_insert(uint32_t id, bool dirty) { run_insert(id, dirty); }

static uint32_t align_gap(uint32_t page, uint32_t align_pages) {
  if (align_pages <= 1) return 0;
  uintptr_t abs = (_mesh_arena.base >> MESH_PAGE_SHIFT) + page;
  return (uint32_t)((align_pages - (abs & (align_pages - 1))) & (align_pages - 1));
}

/* First run in the dirty (d=1) or clean (d=0) bins that fits. */
static uint32_t run_find(bool d, uint32_t npages, uint32_t align_pages) {
  uint32_t need = npages + (align_pages > 1 ? align_pages - 1 : 0);
  if (need < npages) return MESH_NIL;
  unsigned b = free_bin_of(need);
  uint64_t mask = free_bins_nonempty[d] & (~0ull << b);
  while (mask) {
    unsigned i = (unsigned)__builtin_ctzll(mask);
    mask &= mask - 1;
    for (uint32_t id = free_bins[d][i]; id; id = mesh_span(id)->next) {
      span_t *r = mesh_span(id);
      if (r->npages >= npages + align_gap(r->page, align_pages)) return id;
    }
  }
  return MESH_NIL;
}

/* Whether the page before page is the last of a live large span. Such a
 * block owns the free room right after it: realloc grows it there, in
 * place, and other threads' spans carved next to it would make it copy
 * itself elsewhere at its next growth (two threads growing blocks used to
 * leapfrog so, copying at most steps). */
static bool after_large(uint32_t page) {
  if (page == 0) return false;
  uint32_t id = (uint32_t)mesh_load_relaxed(&_mesh_arena.pagetable[page - 1]);
  span_t *s = mesh_span(id);
  return id && mesh_load_relaxed(&s->state) == SPAN_LARGE && s->page + s->npages == page;
}

/* A run for a large span: a block that may grow wants room, so the runs of
 * the biggest bin come first (the first few that follow no large block,
 * else the first that fits), then any run that fits. */
static uint32_t run_find_roomy(bool d, uint32_t npages) {
  uint64_t mask = free_bins_nonempty[d];
  if (!mask) return MESH_NIL;
  unsigned b = 63u - (unsigned)__builtin_clzll(mask), seen = 0;
  uint32_t fallback = MESH_NIL;
  for (uint32_t id = free_bins[d][b]; id && seen < 8; id = mesh_span(id)->next, seen++) {
    span_t *r = mesh_span(id);
    if (r->npages < npages) continue;
    if (!after_large(r->page)) return id;
    if (!fallback) fallback = id;
  }
  return fallback ? fallback : run_find(d, npages, 1);
}

/* Pages to skip at the start of run (page, n) for a span of npages: none,
 * unless the run follows a large block, whose room it is. Then a small
 * span takes the run's end, and so does a large one where the run ends at
 * the top (it grows on past it); elsewhere a large span takes the middle,
 * and the two blocks share the room. */
static uint32_t place_in_run(uint32_t page, uint32_t n, uint32_t npages, bool large) {
  if (!after_large(page)) return 0;
  if (large && page + n != top) return (n - npages) / 2;
  return n - npages;
}

/* Decay. dirty_low_mark is the fewest dirty pages since the epoch began:
 * that many pages went unused through the whole epoch, so the program did
 * not need them (_mesh_arena_decay returns them). Kept exact by note_dirty
 * wherever dirty pages are taken or punched. */
static uint64_t dirty_low_mark; /* (lock) */

static void note_dirty(void) {
  uint64_t d = mesh_stat_get(dirty_pages);
  if (d < dirty_low_mark) dirty_low_mark = d;
}

/* Cuts a span of npages from free run run (of the kind dirty), aligned to
 * align_pages or else placed by place_in_run; the unused head and tail go
 * back as runs of the same kind. Returns the first page; *npages grows if
 * no record is left to describe the tail. */
static uint32_t cut_run(uint32_t run, bool dirty, uint32_t *npages, uint32_t align_pages, bool large) {
  span_t *r = mesh_span(run);
  run_unlink(run);
  uint32_t rpage = r->page, rn = r->npages;
  uint32_t gap = align_pages > 1 ? align_gap(rpage, align_pages) : place_in_run(rpage, rn, *npages, large);
  uint32_t start = rpage + gap, tail = rn - gap - *npages;
  if (dirty) mesh_stat_sub(dirty_pages, rn);
  if (gap) {
    r->npages = gap;
    run_insert(run, dirty);
    if (dirty) mesh_stat_add(dirty_pages, gap);
    run = MESH_NIL;
  }
  if (tail) {
    uint32_t t = run ? run : _mesh_span_record_new();
    if (t) {
      mesh_span(t)->page = start + *npages;
      mesh_span(t)->npages = tail;
      run_insert(t, dirty);
      if (dirty) mesh_stat_add(dirty_pages, tail);
      run = MESH_NIL;
    } else {
      *npages += tail; /* out of records: keep the tail inside the span */
    }
  }
  if (run) _mesh_span_record_free(run);
  if (dirty) note_dirty(); /* after the head and tail went back */
  return start;
}

/* Takes npages from the untouched pages at the top, after a clean run of
 * the pages that align them or, above a large block, of as many pages as
 * that block has: its room to double in place. Untouched pages cost only
 * address space, so that room is left only inside the part of the arena
 * already mapped (all of it but under an address-space limit, where it
 * would bring ENOMEM closer). Returns the first page, or UINT32_MAX. */
static uint32_t cut_top(uint32_t npages, uint32_t align_pages) {
  uint32_t gap = align_gap(top, align_pages);
  if (align_pages <= 1 && after_large(top)) {
    gap = mesh_span((uint32_t)mesh_load_relaxed(&_mesh_arena.pagetable[top - 1]))->npages;
    if ((uint64_t)top + gap + npages > _mesh_arena.npages) gap = 0;
  }
  uint64_t end = (uint64_t)top + gap + npages;
  if (end > _mesh_arena.npages && !_mesh_arena_grow(end)) return UINT32_MAX;
  if (gap) {
    uint32_t g = _mesh_span_record_new();
    if (!g) return UINT32_MAX;
    mesh_span(g)->page = top;
    mesh_span(g)->npages = gap;
    top += gap;
    run_insert(g, false);
  }
  uint32_t start = top;
  top += npages;
  mesh_stat_set(arena_top_pages, top);
  return start;
}

uint32_t _mesh_arena_alloc_span(uint32_t npages, uint32_t align_pages, bool large, bool *clean) {
  uint32_t id = _mesh_span_record_new();
  if (!id) return MESH_NIL;
  uint32_t start;
  bool roomy = large && align_pages <= 1;
  uint32_t run = roomy ? run_find_roomy(true, npages) : run_find(true, npages, align_pages);
  bool dirty = run != MESH_NIL;
  if (!run) run = roomy ? run_find_roomy(false, npages) : run_find(false, npages, align_pages);
  if (run) {
    start = cut_run(run, dirty, &npages, align_pages, large);
    *clean = !dirty;
  } else {
    start = cut_top(npages, align_pages);
    if (start == UINT32_MAX) {
      _mesh_span_record_free(id);
      return MESH_NIL;
    }
    *clean = true;
  }
  if (*clean) mesh_stat_add(fresh_pages_total, npages); /* demand for new memory (trigger.c, pacing) */
  span_t *s = mesh_span(id);
  s->page = start;
  s->npages = npages;
  _mesh_pagetable_set(start, npages, start, id);
  mesh_stat_add(span_pages, npages);
  mesh_stat_add(spans_alloc_count, 1);
  mesh_stat_add(spans_live, 1);
  mesh_stat_hwm(spans_hwm, spans_live);
  return id;
}

static void scavenge_if_over(void);

void _mesh_arena_free_span(uint32_t id) {
  span_t *s = mesh_span(id);
  uint32_t n = s->npages;
  if (s->alias_next) _mesh_arena_unalias_all(id);
  mesh_store_relaxed(&s->owner, MESH_OWNER_NONE);
  s->nobjects = 0;
  mesh_stat_sub(span_pages, n);
  mesh_stat_sub(spans_live, 1);
  mesh_stat_add(spans_free_count, 1);
  if (s->flags & SPAN_FILE) { /* a destination: its memfd pages go back now */
    _mesh_arena_drop_file(id);
    return;
  }
  _mesh_pagetable_set(s->page, n, 0, MESH_NIL);
  mesh_stat_add(dirty_pages, n);
  run_insert(id, true);
  scavenge_if_over();
}

/* Punches dirty runs, largest first, until at most target pages stay dirty. */
static size_t scavenge_to(uint64_t target) {
  size_t punched = 0;
  while (free_bins_nonempty[1] && mesh_stat_get(dirty_pages) > target) {
    unsigned b = 63u - (unsigned)__builtin_clzll(free_bins_nonempty[1]);
    uint32_t id = free_bins[1][b];
    span_t *r = mesh_span(id);
    run_unlink(id);
    size_t len = (size_t)r->npages << MESH_PAGE_SHIFT;
    /* free runs are anonymous memory: dropping the pages frees them */
    if (_mesh_os_punch(-1, (void *)mesh_page_addr(r->page), 0, len) != 0)
      _mesh_warning("returning %zu bytes to the OS failed (errno %d)", len, errno);
    mesh_stat_sub(dirty_pages, r->npages);
    mesh_stat_add(pages_punched, r->npages);
    mesh_stat_add(punch_calls, 1);
    punched += len;
    run_insert(id, false);
  }
  note_dirty();
  return punched;
}

size_t _mesh_arena_scavenge(void) {
  _mesh_arena_retry_retired();
  return scavenge_to(0);
}

uint64_t _mesh_arena_decay(void) {
  uint64_t d = mesh_stat_get(dirty_pages), unused = dirty_low_mark < d ? dirty_low_mark : d;
  size_t punched = unused ? scavenge_to(d - unused) : 0;
  dirty_low_mark = mesh_stat_get(dirty_pages);
  return punched >> MESH_PAGE_SHIFT;
}

/* Over max_dirty_mb, return pages down to half of it: the hysteresis keeps
 * a workload cycling around the threshold from punching and re-faulting
 * everything each time. */
static void scavenge_if_over(void) {
  uint64_t max = (uint64_t)mesh_opt(MESH_OPT_MAX_DIRTY_MB) << (20 - MESH_PAGE_SHIFT);
  if (mesh_stat_get(dirty_pages) > max) scavenge_to(max / 2);
}

/* ---- validation: each returns the problems it found (each reported) -- */
#define BAD(...) do { bad++; _mesh_dprintf(2, "meshalloc: check: " __VA_ARGS__); } while (0)

/* The pages counted while walking the tiling, against the counters. */
typedef struct {
  uint64_t span_pages, dirty, meshed, retired, promoted, frozen;
} tiling_tally_t;

/* The first of pages [pg, pg+n) whose entry is not (pg << 32 | id), or
 * UINT32_MAX. */
static uint32_t entry_mismatch(uint32_t pg, uint32_t n, uint32_t id) {
  for (uint32_t i = 0; i < n; i++)
    if (mesh_load_relaxed(&_mesh_arena.pagetable[pg + i]) != (((uint64_t)pg << 32) | id)) return pg + i;
  return UINT32_MAX;
}

/* A virtual span at pg meshed onto span id: its alias record must be in
 * id's chain and every page must map to id. */
static int check_alias(uint32_t pg, uint32_t id, const span_t *s) {
  int bad = 0;
  uint32_t a = s->alias_next;
  while (a && mesh_span(a)->page != pg) a = mesh_span(a)->alias_next;
  if (!a || mesh_load_relaxed(&mesh_span(a)->state) != SPAN_ALIAS || mesh_load_relaxed(&mesh_span(a)->mesh_dst) != id)
    BAD("page %u: alias of span %u without a matching alias record\n", pg, id);
  if (!(s->flags & SPAN_FILE)) BAD("page %u: alias of span %u, which is not in the memfd\n", pg, id);
  /* a frozen span meshed as a source would keep its generation here */
  if (a && mesh_span_gen(mesh_span(a))) BAD("page %u: alias record %u carries a frozen generation\n", pg, a);
  uint32_t m = entry_mismatch(pg, s->npages, id);
  if (m != UINT32_MAX) BAD("alias at page %u: page %u entry mismatch\n", pg, m);
  return bad;
}

/* Free run id at pg: boundary entries only, its bin, merged with its
 * neighbour of the same kind. */
static int check_run(uint32_t pg, uint32_t id, const span_t *s) {
  int bad = 0;
  uint64_t last = mesh_load_relaxed(&_mesh_arena.pagetable[pg + s->npages - 1]);
  if ((uint32_t)last != id) BAD("free run %u: last page entry %llx\n", id, (unsigned long long)last);
  for (uint32_t i = 1; i + 1 < s->npages; i++)
    if (mesh_load_relaxed(&_mesh_arena.pagetable[pg + i])) { BAD("free run %u: interior entry set\n", id); break; }
  if (s->bin != free_bin_of(s->npages)) BAD("free run %u: wrong bin\n", id);
  uint32_t nid = run_starting_at(pg + s->npages, run_dirty(s));
  if (nid) BAD("free runs %u and %u are adjacent and not merged\n", id, nid);
  return bad;
}

/* The record id that starts at pg, by its state; its pages are tallied. */
static int check_record(uint32_t pg, uint32_t id, const span_t *s, tiling_tally_t *t) {
  int bad = 0;
  uint8_t st = mesh_load_relaxed(&s->state);
  if (st != SPAN_ATTACHED && st != SPAN_PARTIAL && st != SPAN_FULL && (s->flags & SPAN_FILE))
    BAD("span %u in state %u is marked as held in the memfd\n", id, st);
  if (st == SPAN_FREE) {
    if (run_dirty(s)) t->dirty += s->npages;
    bad += check_run(pg, id, s);
  } else if (st == SPAN_ATTACHED || st == SPAN_PARTIAL || st == SPAN_FULL || st == SPAN_LARGE) {
    t->span_pages += s->npages;
    if (s->flags & SPAN_FILE) *(mesh_span_gen(s) ? &t->frozen : &t->promoted) += s->npages;
    else if (mesh_span_gen(s)) BAD("span %u: frozen, but not in a memfd\n", id);
    uint32_t m = entry_mismatch(pg, s->npages, id);
    if (m != UINT32_MAX) BAD("span %u: page %u entry mismatch\n", id, m);
  } else if (st == SPAN_RETIRED) {
    t->retired += s->npages;
    if (mesh_span_gen(s)) t->frozen += s->npages;
    uint32_t m = entry_mismatch(pg, s->npages, id);
    if (m != UINT32_MAX) BAD("retired range %u: page %u entry mismatch\n", id, m);
  } else {
    BAD("span %u at page %u has state %u\n", id, pg, st);
  }
  return bad;
}

/* 1 (reported) when what the walk counted is not what the counter says. */
static int counter_differs(const char *what, uint64_t walked, uint64_t counted) {
  int bad = 0;
  if (walked != counted)
    BAD("%s %llu, counter says %llu\n", what, (unsigned long long)walked, (unsigned long long)counted);
  return bad;
}

static int check_counters(const tiling_tally_t *t) {
  return counter_differs("retired pages", t->retired, mesh_stat_get(retired_pages)) +
         counter_differs("span pages", t->span_pages, mesh_stat_get(span_pages)) +
         counter_differs("pages in the memfd", t->promoted, mesh_stat_get(promoted_pages)) +
         counter_differs("frozen pages", t->frozen, mesh_stat_get(frozen_pages)) +
         counter_differs("meshed pages", t->meshed, mesh_stat_get(meshed_pages)) +
         counter_differs("dirty pages", t->dirty, mesh_stat_get(dirty_pages));
}

static int check_free_bins(void) {
  int bad = 0;
  for (int d = 0; d < 2; d++)
    for (unsigned b = 0; b < MESH_FREE_BINS; b++) {
      if (!!free_bins[d][b] != !!(free_bins_nonempty[d] & (1ull << b))) BAD("free bin %d/%u mask\n", d, b);
      for (uint32_t id = free_bins[d][b]; id; id = mesh_span(id)->next)
        if (mesh_load_relaxed(&mesh_span(id)->state) != SPAN_FREE || run_dirty(mesh_span(id)) != d)
          { BAD("free bin %d/%u holds span %u\n", d, b, id); break; }
    }
  return bad;
}

/* Walks the tiling, then compares the counters and the free bins. */
int _mesh_arena_validate(void) {
  int bad = 0;
  tiling_tally_t t = {0};
  for (uint32_t pg = 0; pg < top;) {
    uint64_t e = mesh_load_relaxed(&_mesh_arena.pagetable[pg]);
    uint32_t id = (uint32_t)e;
    span_t *s = mesh_span(id);
    if (_mesh_span_record_used(id) && (uint32_t)(e >> 32) == pg && s->page != pg) {
      bad += check_alias(pg, id, s);
      t.meshed += s->npages;
      if (mesh_span_gen(s)) t.frozen += s->npages;
      pg += s->npages;
      continue;
    }
    if (!_mesh_span_record_used(id) || s->page != pg || s->npages == 0 || (uint64_t)pg + s->npages > top) {
      BAD("page %u: entry %llx does not start a span\n", pg, (unsigned long long)e);
      return bad;
    }
    bad += check_record(pg, id, s, &t);
    pg += s->npages;
  }
  bad += check_counters(&t);
  return bad + check_free_bins();
}
#undef BAD

/* Accessor for fork.c, which walks the tiling to copy the memfd's spans. */
uint32_t _mesh_arena_top(void) { return top; }

bool _mesh_arena_has_dirty(uint32_t npages) { return run_find(true, npages, 1) != MESH_NIL; }

/* Splits span id (k * npages pages) into k spans of npages; ids[0] = id.
 * Lock held. */
void _mesh_arena_split(uint32_t id, uint32_t npages, uint32_t k, uint32_t *ids) {
  span_t *s = mesh_span(id);
  uint32_t start = s->page;
  ids[0] = id;
  s->npages = npages;
  for (uint32_t i = 1; i < k; i++) {
    uint32_t r = _mesh_span_record_new();
    if (!r) { /* out of records: the rest stays with the last span made */
      mesh_span(ids[i - 1])->npages += (k - i) * npages;
      for (uint32_t j = i; j < k; j++) ids[j] = MESH_NIL;
      return;
    }
    span_t *t = mesh_span(r);
    t->page = start + i * npages;
    t->npages = npages;
    _mesh_pagetable_set(t->page, npages, t->page, r);
    ids[i] = r;
    mesh_stat_add(spans_alloc_count, 1);
    mesh_stat_add(spans_live, 1);
  }
  mesh_stat_hwm(spans_hwm, spans_live);
}

/* Grows span id by extra pages taken from the free run or the untouched
 * arena right after it. Lock held. Returns false if they are not free. */
bool _mesh_arena_grow_span(uint32_t id, uint32_t extra) {
  span_t *s = mesh_span(id);
  uint32_t end = s->page + s->npages;
  if (end == top) {
    if ((uint64_t)top + extra > _mesh_arena.npages && !_mesh_arena_grow((uint64_t)top + extra)) return false;
    top += extra;
    mesh_stat_set(arena_top_pages, top);
  } else {
    uint32_t r = run_starting_at(end, true);
    if (!r) r = run_starting_at(end, false);
    if (!r || mesh_span(r)->npages < extra) return false;
    span_t *f = mesh_span(r);
    bool dirty = run_dirty(f);
    run_unlink(r);
    if (dirty) mesh_stat_sub(dirty_pages, extra);
    if (f->npages > extra) {
      f->page += extra;
      f->npages -= extra;
      run_link(r);
    } else {
      _mesh_span_record_free(r);
    }
  }
  _mesh_pagetable_set(end, extra, s->page, id);
  s->npages += extra;
  mesh_stat_add(span_pages, extra);
  return true;
}

/* Gives the pages of span id past the first keep back as a dirty run. */
void _mesh_arena_shrink_span(uint32_t id, uint32_t keep) {
  span_t *s = mesh_span(id);
  uint32_t tail = s->npages - keep;
  uint32_t r = tail ? _mesh_span_record_new() : MESH_NIL;
  if (!r) return; /* no record to describe the tail: keep it */
  mesh_span(r)->page = s->page + keep;
  mesh_span(r)->npages = tail;
  _mesh_pagetable_set(s->page + keep, tail, 0, MESH_NIL);
  s->npages = keep;
  mesh_stat_sub(span_pages, tail);
  mesh_stat_add(dirty_pages, tail);
  run_insert(r, true);
  scavenge_if_over();
}
