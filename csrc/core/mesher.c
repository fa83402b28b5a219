/* mesher.c - which spans mesh: the best-fit mesher (and the paper's split
 * mesher, option mesher=1), one size class at a time.
 *
 * A batch of candidates of a class (detached PARTIAL spans under
 * max_occupancy_pct, chains not at max_chain) is sorted densest first and
 * placed span by span: each is meshed onto the densest span already kept
 * whose bitmap it does not overlap (up to `probes` tried), or kept itself.
 * Before those, the partner that would continue a neighbour's mapping is
 * tried: if the virtual page left of the source maps to memfd page P-1,
 * meshing onto the span at P lets the kernel merge the two VMAs, so one
 * mapping covers many meshed pages (memfd.c); after a mesh the spans next
 * to both are meshed the same way while that adds no mapping (a run).
 * Sweeps repeat, so chains grow. Each mesh is made by mesh.c; the pause
 * bound, a pass over the classes and a compaction are pass.c's.
 *
 * Invariants, between steps as within one:
 *   - cand[0..batch.total) holds distinct span ids, the open batch of class
 *     batch.cls; clive[q] is cand[q]'s live count when last looked at, a
 *     hint: the lock is dropped between steps, so every span is checked
 *     again (is_candidate) before it is used;
 *   - kept[0..nkept) are positions in cand[] of spans that stay physical,
 *     densest first (best fit; the split mesher keeps its second half);
 *   - each class's sweep cursor names the span its next step walks from,
 *     or MESH_NIL once the sweep is complete;
 *   - a valid idle[c] describes class c as a sweep that found no pair saw
 *     it; a sweep that would see the same is skipped (idle_again).
 *
 * Pause bound: a step stops at its deadline, and before a mesh that the
 * pause predictor (pass.c) says would end past it; the batch stays open
 * for the class's next step.
 *
 * Locking: everything here runs under the global lock (the statics are
 * marked (lock)).
 */
#include "internal.h"

#include <limits.h>

#define MAX_CANDIDATES 1024
static uint32_t cand[MAX_CANDIDATES]; /* (lock) scratch for one class */
/* (lock) The best-fit state of the open batch (see _mesh_mesh_class): clive[i]
 * is cand[i]'s live count when it was last looked at (a hint: racing
 * frees only lower it); kept[0..nkept) are positions in cand[] of the
 * spans that stay physical, densest first. */
static uint16_t clive[MAX_CANDIDATES];
static uint16_t kept[MAX_CANDIDATES];
static unsigned nkept;
static uint64_t mesh_rng; /* (lock) the split mesher's random halves and probe starts */
static struct { uint32_t id; uint8_t bin; } cursor[MESH_NUM_CLASSES]; /* (lock) where each class's sweep goes on */
/* (lock) What the last sweep of each class saw, if it was made in one step
 * and found no pair to mesh (idle_again): its bin changes, its bins' live
 * objects, the meshes made anywhere, and the bounds. */
static struct idle_sweep {
  bool valid;
  uint64_t changes, live, meshes;
  unsigned max_live, max_chain, probes;
} idle[MESH_NUM_CLASSES];

static bool disjoint(const span_t *a, const span_t *b) {
  for (unsigned w = 0; w < mesh_bitmap_words(a); w++)
    if (mesh_load_relaxed(&a->bits[w]) & mesh_load_relaxed(&b->bits[w])) return false;
  return true;
}

/* A span that may take part in a mesh of class cls: detached with free
 * slots, in a partial bin (not a heap's kept span), not empty, not too
 * full, chain not at its cap, neither pinned nor frozen (a fork froze its
 * pages: its aliases may no longer share them, memfd.c). Reads only the
 * span's record, which stays valid memory whatever became of the span. */
static bool is_candidate(uint32_t id, unsigned cls, unsigned max_live, unsigned max_chain) {
  span_t *s = mesh_span(id);
  if (mesh_load_relaxed(&s->state) != SPAN_PARTIAL || mesh_bin_kept(s->bin) || s->cls != cls ||
      (s->flags & (SPAN_PINNED | SPAN_GEN_MASK))) return false;
  unsigned live = _mesh_span_live(s);
  return live && live <= max_live && mesh_chain_len(s) < max_chain;
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
  if (mesh_chain_len(src) > PRICED_CHAIN_MAX) return 2 * (int)mesh_chain_len(src);
  uint32_t dst_page = mesh_span(dst_id)->page;
  /* promoting the destination splits its anonymous neighbourhood */
  int cost = mesh_span(dst_id)->flags & SPAN_FILE ? 0 : _mesh_arena_map_delta(dst_page, src->npages, dst_page);
  uint32_t v = src_id;
  for (unsigned i = 0; i < mesh_chain_len(src); i++, v = mesh_span(v)->alias_next)
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
      if (a->npages != n || b->npages != n || !disjoint(a, b) || mesh_chain_len(a) + mesh_chain_len(b) > max_chain ||
          alias_cost(s2, d2) > 0)
        break;
      if (_mesh_pause_predicted_past(d2, s2, deadline)) {
        *out_of_time = true;
        return freed;
      }
      unsigned live = _mesh_span_live(a) + _mesh_span_live(b);
      if (!_mesh_mesh_timed(d2, s2)) {
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

/* Seeds the split mesher's random halves and probe starts. */
void _mesh_mesher_init(void) { mesh_rng = _mesh_random_seed(); }

/* What one step of a class works with: the class's bounds, the deadline,
 * and the flags it reports to its pass (see _mesh_mesh_class). */
typedef struct {
  unsigned cls, nobjects, max_live, max_chain, probes;
  uint64_t deadline;
  bool *out_of_time, *stop, *step_meshed;
} class_step_t;

/* A source's partner, and the partners it was chosen from. */
typedef struct {
  uint32_t partner;        /* MESH_NIL: nothing fits the source */
  int pick;                /* the partner's position in kept[], or -1 */
  int pick_adj;            /* which neighbour's continuation it is (0, 1), or -1 */
  bool l_is_src;           /* the source is meshed onto the partner, else the reverse */
  int best;                /* kernel mappings the chosen mesh adds */
  uint32_t adj_id[2];      /* the neighbours' continuations that may be tried, MESH_NIL where none */
  int adj[2], adj_cand[2]; /* their positions in kept[] and in cand[], or -1 */
} choice_t;

/* Decides the halves of the paper's split mesher: random halves, the first
 * half meshed onto the second, each span in at most one mesh per batch.
 * Returns the sources (the first half). */
static unsigned split_halves(unsigned n) {
  for (unsigned i = n; i > 1; i--) {
    unsigned j = mesh_rand_below(&mesh_rng, i);
    uint32_t t = cand[i - 1];
    uint16_t tl = clive[i - 1];
    cand[i - 1] = cand[j], clive[i - 1] = clive[j];
    cand[j] = t, clive[j] = tl;
  }
  for (unsigned i = n / 2; i < n; i++) kept[nkept++] = (uint16_t)i;
  return n / 2;
}

/* Decides which spans this step works through: the open batch of the
 * class, or a new one collected and sorted densest first (sets *more if
 * the sweep goes on). False if there are fewer than two candidates. */
static bool open_batch(const class_step_t *c, bool *more) {
  if (batch.open && batch.cls == c->cls) return true;
  batch.open = false;
  unsigned n = collect(c->cls, c->max_live, c->max_chain, c->deadline, more);
  if (n < 2) return false;
  /* (already past the deadline: the loop of _mesh_mesh_class stops at once
   * and the batch waits, sorted, for the next step) */
  for (unsigned i = 0; i < n; i++) clive[i] = (uint16_t)_mesh_span_live(mesh_span(cand[i]));
  n = sort_by_live(n);
  batch.total = n;
  nkept = 0;
  batch.split = mesh_opt(MESH_OPT_MESHER) == MESH_MESHER_SPLIT;
  if (batch.split) n = split_halves(n);
  batch.cls = c->cls;
  batch.n = n;
  batch.next = 0;
  batch.open = true;
  return true;
}

/* Decides which neighbours' continuations cand[i] may take as partner. They
 * may be outside the kept list (in no batch, or sources still to come):
 * they are tried anyway, except by the split mesher, whose partners are its
 * half, and except sources already placed. */
static void neighbour_partners(const class_step_t *c, unsigned i, choice_t *ch) {
  ch->adj[0] = ch->adj[1] = ch->adj_cand[0] = ch->adj_cand[1] = -1;
  adjacent_partners(mesh_span(cand[i]), c->cls, c->max_chain, ch->adj_id);
  for (int a = 0; a < 2; a++) {
    if (!ch->adj_id[a]) continue;
    ch->adj_cand[a] = cand_pos(ch->adj_id[a], batch.total);
    ch->adj[a] = ch->adj_cand[a] >= 0 ? kept_pos((unsigned)ch->adj_cand[a]) : -1;
    if (ch->adj[a] < 0 && (batch.split || (ch->adj_cand[a] >= 0 && (unsigned)ch->adj_cand[a] <= i)))
      ch->adj_id[a] = MESH_NIL;
  }
}

/* Decides whether partner r (at pos in kept[], neighbour which or -1),
 * which fits cand[i], beats the best so far: fewer kernel mappings added,
 * in either direction; ties go to the one tried first, the densest. */
static void weigh_partner(unsigned i, uint32_t r_id, int pos, int which, choice_t *ch) {
  int fwd = alias_cost(cand[i], r_id), back = alias_cost(r_id, cand[i]);
  if (fwd < ch->best) ch->best = fwd, ch->pick = pos, ch->partner = r_id, ch->l_is_src = true, ch->pick_adj = which;
  if (back < ch->best) ch->best = back, ch->pick = pos, ch->partner = r_id, ch->l_is_src = false, ch->pick_adj = which;
}

/* Decides cand[i]'s partner. Partners are tried densest first (after the
 * ones that would continue a neighbour's mapping); of the first few
 * disjoint ones, the pair and direction that adds the fewest kernel
 * mappings is taken: an alias in the middle of an identity-mapped run
 * splits it (+2), one next to another alias may cost +1 or 0, one
 * continuing a neighbour's run merges (<= 0). The mapping budget, not the
 * copying, is what limits meshing in a big heap.
 *
 * The kept list is densest first. Spans with more live objects than cand[i]
 * has free slots cannot take it (from 0 to least: skipped). Those it would
 * fit only by a fluke if the two bitmaps were random (from least to likely,
 * fit_limit) are tried last: otherwise the densest kept spans take every
 * probe of every span and the sparser ones it would likely fit are never
 * tried. They are still tried, for bitmaps that are not random
 * (complementary patterns). The split mesher probes its half from a random
 * place. */
static void choose_partner(const class_step_t *c, unsigned i, choice_t *ch) {
  span_t *l = mesh_span(cand[i]);
  ch->partner = MESH_NIL, ch->pick = ch->pick_adj = -1, ch->l_is_src = true, ch->best = INT_MAX;
  neighbour_partners(c, i, ch);
  unsigned least = 0, likely = 0, start = 0;
  if (batch.split)
    start = nkept ? mesh_rand_below(&mesh_rng, nkept) : 0;
  else
    least = kept_past(c->nobjects - clive[i]), likely = kept_past(fit_limit(c->nobjects, clive[i]));
  unsigned compared = 0, tried = nkept - least < c->probes ? nkept - least : c->probes;
  /* k = 0, 1: the neighbours' continuations; k = 2..tried + 1: the probes, p = k - 2 */
  for (unsigned k = 0; ch->best > 0 && compared < PARTNERS_COMPARED && k <= tried + 1; k++) {
    /* hundreds of probes touch hundreds of span records: the probe loop
     * itself must respect the pause bound */
    if ((k & 63) == 63 && _mesh_os_now_ns() >= c->deadline) break;
    if (k < 2 && !ch->adj_id[k]) continue;
    unsigned p = k - 2; /* probe number, from 0 */
    int pos = k < 2         ? ch->adj[k]
              : batch.split ? (int)((start + p) % nkept)
                            : (int)(p < nkept - likely ? likely + p : least + (p - (nkept - likely)));
    if (k >= 2 && (pos < 0 || pos == ch->adj[0] || pos == ch->adj[1])) continue;
    uint32_t r_id = k < 2 ? ch->adj_id[k] : cand[kept[pos]];
    span_t *r = mesh_span(r_id);
    /* (a kept span is filled past max_live: that bound is for choosing
     * candidates, and a sparse span may still fit a dense one) */
    if (!disjoint(l, r) || mesh_chain_len(l) + mesh_chain_len(r) > c->max_chain ||
        (k >= 2 && !is_candidate(r_id, c->cls, c->nobjects, c->max_chain))) /* the neighbours' are, by their finding */
      continue;
    compared++;
    weigh_partner(i, r_id, pos, k < 2 ? (int)k : -1, ch);
  }
}

/* Decides where the survivor of cand[i]'s mesh stands, live objects now:
 * j is the partner's place in cand[] if it was kept (else -1). */
static void refile_survivor(const class_step_t *c, unsigned i, const choice_t *ch, int j, unsigned live) {
  if (j >= 0) {
    /* the survivor takes the kept place, at its new density; meshed once
     * (split) or full, it is no longer a partner */
    unsigned sv = ch->l_is_src ? (unsigned)j : i;
    clive[sv] = (uint16_t)live;
    kept_remove((unsigned)ch->pick);
    if (!batch.split && live < c->nobjects) kept_insert(sv);
  } else if (ch->l_is_src) {
    if (ch->pick_adj >= 0 && ch->adj_cand[ch->pick_adj] >= 0) /* a source still to come */
      clive[ch->adj_cand[ch->pick_adj]] = (uint16_t)live;
  } else if (live < c->nobjects) { /* l survives: kept, at its density */
    clive[i] = (uint16_t)live;
    kept_insert(i);
  }
}

/* What the loop over a batch's sources does after one of them. */
enum { SOURCE_NEXT, SOURCE_HALT, SOURCE_HALT_AFTER };

/* Decides whether cand[i]'s mesh with its partner runs in this step, runs
 * it, and extends the run of aliases from it; adds the pages freed. A mesh
 * that would likely end past the deadline waits for the next step: its
 * work times the recent peak (or twice the average) time per unit must
 * still fit. The first mesh of a step always runs, so meshing progresses
 * even where one mesh takes longer than the bound (sanitizers, huge
 * chains); of the step, not of the class, so a class reached just before
 * the deadline does not run a first mesh unchecked. */
static int mesh_with_partner(const class_step_t *c, unsigned i, const choice_t *ch, size_t *freed) {
  int j = ch->pick >= 0 ? kept[ch->pick] : -1; /* the partner's place in cand[], if kept */
  unsigned partner_live = j >= 0 ? clive[j] : _mesh_span_live(mesh_span(ch->partner));
  uint32_t src = ch->l_is_src ? cand[i] : ch->partner, dst = ch->l_is_src ? ch->partner : cand[i];
  if (*c->step_meshed && _mesh_pause_predicted_past(dst, src, c->deadline)) {
    *c->out_of_time = true;
    return SOURCE_HALT;
  }
  *c->step_meshed = true;
  uint32_t pages = mesh_span(src)->npages;
  bool meshed = _mesh_mesh_timed(dst, src);
  if (meshed) {
    *freed += pages;
    refile_survivor(c, i, ch, j, (unsigned)clive[i] + partner_live);
  } else {
    _mesh_file_detached(src);
    *c->stop = true;
  }
  _mesh_file_detached(dst);
  if (meshed && !batch.split)
    *freed += extend_run(src, dst, c->cls, c->max_chain, c->deadline, c->out_of_time, c->stop);
  if (*c->stop) return SOURCE_HALT;
  if (*c->out_of_time || _mesh_os_now_ns() >= c->deadline) {
    *c->out_of_time = true;
    return SOURCE_HALT_AFTER;
  }
  return SOURCE_NEXT;
}

/* Decides whether a fresh sweep of a class would find no pair, as its last
 * one did. Best fit is deterministic (not the split mesher), so it would if
 * no span entered or left the class's bins (a span gains live objects only
 * while attached or meshed), their live objects add up to the same (frees
 * only lower each span's), no mesh anywhere changed whose mapping a span
 * could continue (adjacent_partners), and the bounds are the same. */
static bool idle_again(const class_step_t *c, uint64_t changes, uint64_t live, uint64_t meshes) {
  const struct idle_sweep *m = &idle[c->cls];
  return m->valid && m->changes == changes && m->live == live && m->meshes == meshes &&
         m->max_live == c->max_live && m->max_chain == c->max_chain && m->probes == c->probes;
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
size_t _mesh_mesh_class(unsigned cls, uint64_t deadline, bool *out_of_time, bool *stop, bool *more,
                        bool *step_meshed) {
  bool batch_here = batch.open && batch.cls == cls;
  if (!batch_here && _mesh_partial_count(cls) < 2) {
    cursor[cls].id = MESH_NIL; /* nothing to mesh, nothing to walk: the sweep is complete */
    return 0;
  }
  const size_class_t *sc = &_mesh_classes[cls];
  class_step_t c = {.cls = cls, .nobjects = sc->nobjects, .deadline = deadline, .out_of_time = out_of_time,
                    .stop = stop, .step_meshed = step_meshed};
  c.max_live = (unsigned)(sc->nobjects * (uint64_t)mesh_opt(MESH_OPT_MAX_OCCUPANCY_PCT) / 100);
  c.max_chain = (unsigned)mesh_opt(MESH_OPT_MAX_CHAIN);
  c.probes = (unsigned)mesh_opt(MESH_OPT_PROBES);
  bool fresh = !batch_here && !cursor[cls].id; /* a sweep starts with this step */
  /* the class as this sweep starts, for idle_again; only a class one step
   * can sweep: its bins' walk then costs no more than collecting them */
  bool memo = fresh && _mesh_partial_count(cls) <= MAX_CANDIDATES && mesh_opt(MESH_OPT_MESHER) != MESH_MESHER_SPLIT;
  uint64_t changes = 0, live = 0, meshes = 0;
  if (memo) {
    changes = _mesh_partial_changes(cls), live = _mesh_partial_live(cls), meshes = mesh_stat_get(mesh_count);
    if (idle_again(&c, changes, live, meshes)) {
      mesh_stat_add(mesh_sweeps_skipped, 1);
      return 0;
    }
  }
  bool opened = open_batch(&c, more);
  size_t freed = 0;
  unsigned i = batch.next;
  for (; opened && i < batch.n; i++) {
    if (_mesh_os_now_ns() >= deadline) { /* a vDSO read: ~20 ns against ~60 us per mesh */
      *out_of_time = true;
      break;
    }
    if (!is_candidate(cand[i], cls, c.max_live, c.max_chain)) continue;
    choice_t ch;
    choose_partner(&c, i, &ch);
    if (!ch.partner) {
      if (!batch.split) kept[nkept++] = (uint16_t)i; /* no older span is sparser: the order holds */
      continue;
    }
    int next = mesh_with_partner(&c, i, &ch, &freed);
    if (next == SOURCE_HALT_AFTER) i++;
    if (next != SOURCE_NEXT) break;
  }
  /* found nothing: all of the class collected and placed in this step, no
   * mesh tried, no probe loop cut short by the deadline */
  if (memo && (!opened || i >= batch.n) && !freed && !*stop && !*out_of_time && !cursor[cls].id &&
      _mesh_os_now_ns() < deadline)
    idle[cls] = (struct idle_sweep){true, changes, live, meshes, c.max_live, c.max_chain, c.probes};
  if (!opened) return 0;
  batch.next = i;
  if (i >= batch.n || *stop) batch.open = false; /* the batch is done */
  if (batch.open || cursor[cls].id) *more = true; /* the rest of the batch or of the sweep */
  return freed;
}

/* Compaction starts a fresh sweep of class cls: from the heads of its bins,
 * with no batch left open. */
void _mesh_mesher_restart(unsigned cls) {
  cursor[cls].id = MESH_NIL;
  batch.open = false;
}
