/* global_heap.c - spans no thread heap has attached, and large objects.
 *
 * Detached small spans are FULL (no free slot, in no list) or PARTIAL (in
 * one of MESH_OCC_BINS occupancy bins of their class, binned by occupancy
 * when they entered, or, with no live object, in the class's list of empty
 * spans). A refill takes spans from the fullest bin first and empty spans
 * last, so nearly-empty spans are left to drain and be released (or
 * meshed), and the spans of a chunk cut for the class stay clean until
 * needed.
 *
 * Empty spans are kept apart because they can only be attached, never
 * meshed: a partial span is linked with no live object only when it was
 * just cut from a chunk, and no free can give it one. So the mesher walks
 * the occupancy bins alone, and a heap that grows (a quarter of whose
 * partial spans were never used) costs it nothing for them. Per class the
 * number of spans in the occupancy bins (a class with fewer than two has
 * nothing to mesh) and of FULL spans (whose live objects are known without
 * reading their bitmaps) are kept as spans change lists.
 *
 * Kept spans: a span that a thread's free empties, or a FULL span that the
 * thread which filled it frees into, stays with that thread's heap (up to
 * MESH_KEPT_PAGES pages a heap), and the heap's next refill of the class
 * takes it before any other: a thread that frees what it allocated gets
 * its spans back with their pages still in its CPU's cache and the arena
 * untouched. Filed in the occupancy bins instead, a span another thread
 * was in the middle of freeing was the fullest there, so the first that
 * other refills took: with 16 threads on 2 CPUs, each preempted now and
 * then in the middle of its batch, the batches came to share spans, each
 * span left FULL again and again (1.24 M times against 0.20 M with 8
 * threads, one lock each), and the batch ran at 0.39x glibc. Sent back to
 * the arena instead of kept, each
 * emptied span was cut again for whichever thread refilled next, its
 * lines moved to the other CPU, and two threads each allocating 1000
 * blocks and freeing them ran 25-28 M operations a second in all against
 * 50-60 with one (perf/micro threads --test batch). A kept span is
 * PARTIAL, not full, with bin field MESH_BIN_KEPT (kept empty) or
 * MESH_BIN_KEPT_LIVE, in no list but its heap's, so neither the refills of
 * other threads nor the mesher see it; frees into it only clear bits (a
 * transition they call finds it kept and leaves it). Thread exit,
 * mesh_scavenge, mesh_compact and the end of each decay epoch give the
 * kept spans back, an empty one to the arena, the others to the bins
 * (_mesh_heaps_release_spare). The empty ones (kept_pages; a free that
 * empties a kept span makes it MESH_BIN_KEPT) hold the meshing thread
 * until that epoch, so an idle process holds none for longer than an
 * epoch or two; the others do not (a program with a little
 * steady activity keeps one now and then, and would keep the thread), so
 * an idle process may hold up to MESH_KEPT_PAGES pages of them a thread,
 * unmeshed, until it allocates again.
 *
 * Transitions of a detached span happen under _mesh_global_lock; the free
 * that causes one is lock-free up to the point where it sees it (after its
 * bit clear, a state other than PARTIAL: the span may be FULL; or every
 * word empty) and then calls _mesh_global_free_transition, which re-derives
 * the state from the bitmap under the lock. Detach stores owner = NONE
 * before its fetch_and of each word: a racing remote free whose clear lands
 * after that fetch_and sees owner NONE, and a state of ATTACHED or FULL, so
 * it re-checks under the lock; one that lands before it is counted by
 * detach itself. Either way no free slot is lost.
 *
 * Locking: _mesh_global_lock protects everything here and in arena.c.
 */
#include "internal.h"
#include "shuffle_vector.h"

#include <errno.h>
#include <string.h>

/* Adaptive: a thread that finds the lock taken spins a little before it
 * sleeps in the kernel. What the lock guards takes well under a
 * microsecond (a run cut or merged, some page-table entries), so with the
 * holder running on another CPU the lock is usually free before a futex
 * wait and its wake could even start: 4 threads growing blocks by realloc
 * (one lock for about four reallocs) made a median 7698 futex calls a run
 * with a plain mutex, 145 with this one. */
pthread_mutex_t _mesh_global_lock = PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP;

/* (lock) occ_bins[c][b]: the partial spans of class c with live objects
 * filed in occupancy bin b (their bin field b); empty_spans[c]: those with
 * none (bin field MESH_BIN_EMPTY). occ_count[c] counts the spans of the
 * bins, occ_changes[c] every span that entered or left them, full_count[c]
 * the FULL spans of the class. */
static uint32_t occ_bins[MESH_NUM_CLASSES][MESH_OCC_BINS];
static uint32_t empty_spans[MESH_NUM_CLASSES];
static uint8_t occ_nonempty[MESH_NUM_CLASSES];
static uint32_t occ_count[MESH_NUM_CLASSES];
static uint64_t occ_changes[MESH_NUM_CLASSES];
static uint32_t full_count[MESH_NUM_CLASSES];

void _mesh_lock(void) { pthread_mutex_lock(&_mesh_global_lock); }
void _mesh_unlock(void) { pthread_mutex_unlock(&_mesh_global_lock); }

unsigned _mesh_span_live(const span_t *s) {
  /* (the geometry read once: the seq_cst loads would make the compiler
   * read it again for every word) */
  unsigned nobjects = s->nobjects, words = mesh_bitmap_words_n(nobjects), n = 0;
  for (unsigned w = 0; w + 1 < words; w++) n += mesh_popcount64(mesh_load_seq_cst(&s->bits[w]));
  if (words) n += mesh_popcount64(mesh_load_seq_cst(&s->bits[words - 1]) & mesh_bitmap_mask_n(nobjects, words - 1));
  return n;
}

/* The head of the list a partial span with bin field b is in. */
static uint32_t *list_head(unsigned cls, unsigned b) {
  return b == MESH_BIN_EMPTY ? &empty_spans[cls] : &occ_bins[cls][b];
}

static void partial_link(uint32_t id, unsigned live) {
  span_t *s = mesh_span(id);
  unsigned b = live ? live * MESH_OCC_BINS / s->nobjects : MESH_BIN_EMPTY;
  uint32_t *head = list_head(s->cls, b);
  mesh_store_relaxed(&s->state, SPAN_PARTIAL);
  s->bin = (uint8_t)b;
  s->prev = MESH_NIL;
  s->next = *head;
  if (s->next) mesh_span(s->next)->prev = id;
  *head = id;
  if (b != MESH_BIN_EMPTY) {
    occ_nonempty[s->cls] |= (uint8_t)(1u << b);
    occ_count[s->cls]++;
    occ_changes[s->cls]++;
  }
}

void _mesh_partial_unlink(uint32_t id) {
  span_t *s = mesh_span(id);
  unsigned b = s->bin;
  uint32_t *head = list_head(s->cls, b);
  if (s->prev) mesh_span(s->prev)->next = s->next;
  else *head = s->next;
  if (s->next) mesh_span(s->next)->prev = s->prev;
  if (b != MESH_BIN_EMPTY) {
    if (!*head) occ_nonempty[s->cls] &= (uint8_t)~(1u << b);
    occ_count[s->cls]--;
    occ_changes[s->cls]++;
  }
  s->next = s->prev = MESH_NIL;
}

/* Files a detached span by its exact occupancy. */
void _mesh_file_detached(uint32_t id) {
  span_t *s = mesh_span(id);
  unsigned live = _mesh_span_live(s);
  if (live == 0) {
    _mesh_arena_free_span(id);
  } else if (live == s->nobjects) {
    mesh_store_relaxed(&s->state, SPAN_FULL);
    s->filler = MESH_OWNER_NONE; /* (detach names the heap) */
    full_count[s->cls]++;
  } else {
    partial_link(id, live);
  }
}

/* Which slots of each attachment sit in the vector, from entries[0..len):
 * an entry counts only if it names a slot of an attached span that holds
 * the free key, so a vector a fork child found half updated gives the
 * slots that were free there (thread_heap.c, _mesh_heaps_after_fork_child);
 * in any other vector every entry counts. The key is cleared as the slot
 * is counted: it is leaving the vector, and a free slot outside every
 * vector never holds the key (types.h). Owner, or the lock and a dead
 * owner; before the slots' bits are cleared, while no one else may touch
 * them. */
static void vector_slots(shuffle_vector_t *sv, uint64_t in[MESH_MAX_ATTACHED][MESH_BITMAP_WORDS]) {
  memset(in, 0, sizeof(uint64_t) * MESH_MAX_ATTACHED * MESH_BITMAP_WORDS);
  uint32_t len = mesh_load_relaxed(&sv->len);
  if (len > MESH_VECTOR_CAPACITY) len = MESH_VECTOR_CAPACITY;
  uint64_t key = _mesh_arena.free_key;
  for (uint32_t i = 0; i < len; i++) {
    unsigned slot;
    int a = mesh_sv_locate(sv, sv->entries[i], &slot);
    if (a < 0) continue;
    uint64_t *kp = mesh_slot_key(sv->entries[i]);
    if (*kp != key) continue;
    *kp = 0;
    in[a][slot >> 6] |= 1ull << (slot & 63);
  }
  mesh_store_relaxed(&sv->len, 0);
}

/* Detaches attachment a of sv, whose vector held the slots in[]: folds
 * them back into the shared bitmap, which is exact from here on. */
static void detach(thread_heap_t *h, shuffle_vector_t *sv, unsigned a, const uint64_t *in) {
  uint32_t id = sv->att[a].span;
  span_t *s = mesh_span(id);
  mesh_assert(mesh_load_relaxed(&s->owner) == h->id);
  mesh_assert_expensive(_mesh_span_validate(id) == 0);
  mesh_store_relaxed(&s->owner, MESH_OWNER_NONE);
  for (unsigned w = 0; w < mesh_bitmap_words(s); w++) {
    if (!in[w]) continue;
    uint64_t old = mesh_fetch_and_seq_cst(&s->bits[w], ~in[w]);
    uint64_t both = in[w] & ~old; /* in the vector AND freed by another thread */
    while (both) {
      unsigned slot = w * 64 + (unsigned)__builtin_ctzll(both);
      both &= both - 1;
      _mesh_report_bad_free((void *)(sv->att[a].base + (uintptr_t)slot * sv->size),
                            "double free (freed again by another thread)");
    }
  }
  _mesh_file_detached(id);
  if (mesh_load_relaxed(&s->state) == SPAN_FULL) s->filler = h->id;
}

/* Detaches every span of sv, emptying it. */
static void detach_vector(thread_heap_t *h, shuffle_vector_t *sv) {
  static const uint64_t none[MESH_BITMAP_WORDS];
  uint64_t in[MESH_MAX_ATTACHED][MESH_BITMAP_WORDS];
  bool any = mesh_load_relaxed(&sv->len) != 0; /* a refill's vector is empty */
  if (any) vector_slots(sv, in);
  for (unsigned a = 0; a < sv->natt; a++) detach(h, sv, a, any ? in[a] : none);
  sv->natt = 0;
  sv->total_objects = 0;
  sv->total_bytes = 0;
}

/* ---- kept spans ------------------------------------------------------ */

/* Keeps span id, detached, not full and in no list, in h (the heap of the
 * thread whose free emptied it, or that filled it and now frees into it);
 * false, changing nothing, if h is a sentinel, is full, or the span is more
 * than plain memory (a meshing destination, a span with aliases, a pinned
 * one: the arena undoes those when the span is empty). */
static bool keep_span(thread_heap_t *h, uint32_t id, bool empty) {
  span_t *s = mesh_span(id);
  if (h->id == MESH_OWNER_SENTINEL || !h->live || s->flags || s->alias_next ||
      h->kept_pages + s->npages > MESH_KEPT_PAGES)
    return false;
  mesh_store_relaxed(&s->state, SPAN_PARTIAL);
  s->bin = empty ? MESH_BIN_KEPT : MESH_BIN_KEPT_LIVE;
  s->prev = MESH_NIL;
  s->next = h->kept[s->cls];
  h->kept[s->cls] = id;
  h->kept_pages += s->npages;
  if (empty) mesh_stat_add(kept_pages, s->npages);
  return true;
}

/* A kept span of cls, out of h's list, or MESH_NIL. */
static uint32_t take_kept(thread_heap_t *h, unsigned cls) {
  uint32_t id = h->kept[cls];
  if (!id) return MESH_NIL;
  span_t *s = mesh_span(id);
  h->kept[cls] = s->next;
  s->next = MESH_NIL;
  h->kept_pages -= s->npages;
  if (s->bin == MESH_BIN_KEPT) mesh_stat_sub(kept_pages, s->npages);
  return id;
}

void _mesh_global_release_kept(thread_heap_t *h) {
  for (unsigned c = 0; c < MESH_NUM_CLASSES && h->kept_pages; c++)
    for (uint32_t id; (id = take_kept(h, c)) != MESH_NIL;) {
      /* a free racing this one finds the span PARTIAL in its bin (or on
       * its way there under the lock we hold) and re-derives */
      unsigned live = _mesh_span_live(mesh_span(id));
      if (live)
        partial_link(id, live);
      else
        _mesh_arena_free_span(id);
    }
}

void _mesh_global_detach_all(thread_heap_t *h) {
  for (unsigned c = 0; c < MESH_NUM_CLASSES; c++) detach_vector(h, &h->sv[c]);
  _mesh_global_release_kept(h);
}

/* A fresh span for cls. Reusing dirty (already committed) pages comes
 * first; otherwise a chunk of up to 64 clean pages is cut into several spans
 * of the class at once, the extra ones filed as empty partial spans. Spans
 * of one class then sit next to each other, so meshing can map runs of them
 * with one kernel mapping; clean pages cost no memory until touched. */
static uint32_t new_small_span(unsigned cls) {
  const size_class_t *sc = &_mesh_classes[cls];
  uint32_t k = sc->npages >= 64 ? 1 : 64 / sc->npages;
  if (k > 1 && _mesh_arena_has_dirty(sc->npages)) k = 1;
  bool clean;
  uint32_t id = _mesh_arena_alloc_span(sc->npages * k, 1, false, &clean);
  if (!id && k > 1) id = _mesh_arena_alloc_span(sc->npages * (k = 1), 1, false, &clean);
  if (!id) return MESH_NIL;
  uint32_t ids[64];
  _mesh_arena_split(id, sc->npages, k, ids);
  for (uint32_t i = 0; i < k; i++) {
    if (!ids[i]) break;
    span_t *s = mesh_span(ids[i]);
    s->nobjects = sc->nobjects;
    s->cls = (uint8_t)cls;
    s->flags = 0;
    if (i) partial_link(ids[i], 0);
  }
  return id;
}

uint32_t _mesh_partial_head(unsigned cls, unsigned bin) { return occ_bins[cls][bin]; }
unsigned _mesh_partial_count(unsigned cls) { return occ_count[cls]; }

uint64_t _mesh_partial_changes(unsigned cls) { return occ_changes[cls]; }

uint64_t _mesh_partial_live(unsigned cls) {
  uint64_t n = 0;
  for (unsigned b = 0; b < MESH_OCC_BINS; b++)
    for (uint32_t id = occ_bins[cls][b]; id; id = mesh_span(id)->next) n += _mesh_span_live(mesh_span(id));
  return n;
}

uint64_t _mesh_global_live(unsigned cls) {
  return (uint64_t)full_count[cls] * _mesh_classes[cls].nobjects + _mesh_partial_live(cls);
}

/* Fullest partial span of the class (an empty one last), or MESH_NIL. */
static uint32_t best_partial(unsigned cls) {
  unsigned m = occ_nonempty[cls];
  if (!m) return empty_spans[cls];
  unsigned b = 31u - (unsigned)__builtin_clz(m);
  return occ_bins[cls][b];
}

bool _mesh_global_refill(thread_heap_t *h, unsigned cls) {
  shuffle_vector_t *sv = &h->sv[cls];
  const size_class_t *sc = &_mesh_classes[cls];
  uint32_t span_bytes = sc->npages * (uint32_t)MESH_PAGE_SIZE;
  unsigned want = sc->nobjects < 64 ? sc->nobjects : 64; /* free slots worth a lock */
  _mesh_lock();
  _mesh_heap_sv_prepare(sv, cls);
  detach_vector(h, sv);
  unsigned free_slots = 0;
  while (sv->natt < MESH_MAX_ATTACHED && free_slots < want) {
    if (sv->natt && (sv->total_objects + sc->nobjects > MESH_VECTOR_CAPACITY ||
                     sv->total_bytes + span_bytes > MESH_ATTACH_MAX_BYTES))
      break;
    uint32_t id = take_kept(h, cls);
    if (id) {
      /* (kept: in no list) */
    } else if ((id = best_partial(cls))) {
      _mesh_partial_unlink(id);
    } else {
      if (sv->natt) break; /* a fresh span only when nothing else is attached */
      id = new_small_span(cls);
      if (!id) break;
    }
    span_t *s = mesh_span(id);
    free_slots += s->nobjects - _mesh_span_live(s);
    unsigned a = sv->natt++;
    mesh_store_relaxed(&s->att, (uint8_t)a);
    mesh_store_relaxed(&s->state, SPAN_ATTACHED);
    mesh_store_relaxed(&s->owner, h->id);
    sv->att[a].span = id;
    sv->att[a].base = mesh_page_addr(s->page);
    sv->att[a].bits = s->bits;
    mesh_assert_expensive(_mesh_span_validate(id) == 0);
    sv->total_objects = (uint16_t)(sv->total_objects + s->nobjects);
    sv->total_bytes += span_bytes;
  }
  _mesh_maybe_mesh(false);
#if MESH_DEBUG >= 3
  /* the whole heap, now and then: cheap enough for the debug test runs */
  static unsigned refills;
  if (++refills % 1024 == 0) mesh_assert(_mesh_arena_validate() == 0 && _mesh_global_validate() == 0);
#endif
  _mesh_unlock();
  return sv->natt > 0;
}

void _mesh_global_free_transition(span_t *s, uint32_t id) {
  _mesh_lock();
  uint8_t st = mesh_load_relaxed(&s->state);
  if (st == SPAN_PARTIAL && s->bin == MESH_BIN_KEPT_LIVE && _mesh_span_live(s) == 0) {
    s->bin = MESH_BIN_KEPT; /* kept empty from now on: it holds the meshing thread */
    mesh_stat_add(kept_pages, s->npages);
  }
  /* (a span kept empty: another last free of it got here first) */
  if ((st == SPAN_FULL || (st == SPAN_PARTIAL && !mesh_bin_kept(s->bin))) &&
      mesh_load_relaxed(&s->owner) == MESH_OWNER_NONE) {
    mesh_assert_expensive(_mesh_span_validate(id) == 0);
    unsigned live = _mesh_span_live(s);
    if (st == SPAN_FULL && live < s->nobjects) full_count[s->cls]--;
    if (live == 0) {
      if (st == SPAN_PARTIAL) _mesh_partial_unlink(id);
      if (!keep_span(_mesh_tls.heap, id, true)) _mesh_arena_free_span(id);
    } else if (st == SPAN_FULL && live < s->nobjects) {
      thread_heap_t *h = _mesh_tls.heap; /* it filled the span: it takes it back first */
      if (s->filler != h->id || !keep_span(h, id, false)) partial_link(id, live);
    }
  }
  _mesh_maybe_mesh(true);
  _mesh_unlock();
}

/* ---- large objects --------------------------------------------------- */

/* The last freed large block of at most PARK_PAGES pages is parked instead
 * of going back to the arena: a program that frees a block and then
 * allocates one of the same size (a buffer per request, a block realloc
 * grew past a page and freed: alloc.c) gets it back without a run cut and
 * merged and its page-table entries written twice (~900 instructions a
 * pair, ~250 this way). The parked span stays a live LARGE span of the
 * arena (span_pages, its page-table entries) whose one bit is clear, so a
 * free of it is a double free and usable_size refuses it; it is not in
 * large_bytes_in_use. mesh_scavenge, mesh_compact and the end of a decay
 * epoch return it to the arena first (_mesh_large_unpark), so at most
 * PARK_PAGES pages stay out of the dirty-page accounting, and only until
 * then. Under the lock. */
#define PARK_PAGES 4
static uint32_t parked;

void _mesh_large_unpark(void) {
  uint32_t id = parked;
  if (!id) return;
  parked = MESH_NIL;
  _mesh_arena_free_span(id);
}

static bool parkable(const span_t *s) { return s->npages <= PARK_PAGES && s->flags == 0 && !s->alias_next; }

void *_mesh_large_alloc(size_t size, size_t align, bool zero) {
  mesh_ensure_init();
  if (size > _mesh_arena.size || align > _mesh_arena.size / 2) return _mesh_direct_alloc(size, align);
  uint32_t npages = (uint32_t)((size + MESH_PAGE_SIZE - 1) >> MESH_PAGE_SHIFT);
  if (npages == 0) npages = 1;
  uint32_t align_pages = align > MESH_PAGE_SIZE ? (uint32_t)(align >> MESH_PAGE_SHIFT) : 1;
  bool clean = false;
  _mesh_lock();
  uint32_t id = parked;
  if (id && align_pages == 1 && mesh_span(id)->npages == npages) {
    parked = MESH_NIL; /* its page-table entries and geometry stand */
  } else {
    id = _mesh_arena_alloc_span(npages, align_pages, true, &clean);
    if (!id) { /* the arena is full: a mapping of its own, as far as the OS allows */
      _mesh_unlock();
      return _mesh_direct_alloc(size, align);
    }
  }
  span_t *s = mesh_span(id);
  s->nobjects = 1;
  s->cls = MESH_CLASS_LARGE;
  s->flags = 0;
  mesh_store_relaxed(&s->bits[0], 1);
  mesh_store_relaxed(&s->state, SPAN_LARGE);
  npages = s->npages;
  mesh_assert_expensive(_mesh_span_validate(id) == 0);
  mesh_stat_add(large_alloc_count, 1);
  mesh_stat_add(large_bytes_in_use, (uint64_t)npages << MESH_PAGE_SHIFT);
  void *p = (void *)mesh_page_addr(s->page);
  _mesh_unlock();
  /* Pages that never held data (fresh or punched) are already zero. */
  if (zero && !clean) memset(p, 0, (size_t)npages << MESH_PAGE_SHIFT);
  return p;
}

void _mesh_large_free(span_t *s, uint32_t id, const void *p, uint64_t pte, const void *caller) {
  if ((uintptr_t)p != mesh_page_addr((uint32_t)(pte >> 32)) || (uint32_t)(pte >> 32) != s->page) {
    _mesh_report_bad_free(p, "invalid free (pointer inside a large block)");
    return;
  }
  _mesh_lock();
  if (mesh_load_relaxed(&s->state) != SPAN_LARGE || (uint32_t)mesh_pte_of(p) != id ||
      mesh_fetch_and_seq_cst(&s->bits[0], 0) != 1) {
    _mesh_unlock();
    _mesh_report_bad_free(p, "double free");
    return;
  }
  mesh_stat_add(large_free_count, 1);
  mesh_stat_sub(large_bytes_in_use, (uint64_t)s->npages << MESH_PAGE_SHIFT);
  if (parkable(s)) {
    uint32_t before = parked;
    parked = id;
    if (!before) { /* nothing went back to the arena: nothing for the triggers */
      _mesh_unlock();
      return;
    }
    id = before;
  }
  _mesh_arena_free_span(id);
  _mesh_maybe_mesh(true);
  _mesh_unlock();
  mesh_mesher_poll_free(caller);
}

bool _mesh_large_resize(const void *p, size_t size) {
  if (size > _mesh_arena.size) return false;
  uint32_t want = (uint32_t)((size + MESH_PAGE_SIZE - 1) >> MESH_PAGE_SHIFT);
  bool ok = false;
  _mesh_lock();
  uint64_t pte = mesh_pte_of(p);
  uint32_t id = (uint32_t)pte;
  span_t *s = mesh_span(id);
  if (id && mesh_load_relaxed(&s->state) == SPAN_LARGE && (uintptr_t)p == mesh_page_addr(s->page)) {
    uint32_t have = s->npages;
    if (want > have) {
      ok = _mesh_arena_grow_span(id, want - have);
      if (ok) mesh_stat_add(large_grown_in_place, 1);
      else mesh_stat_add(large_grow_moved, 1); /* realloc copies it */
    } else if (want < have) _mesh_arena_shrink_span(id, want), ok = true;
    else ok = true;
    if (ok) {
      mesh_stat_sub(large_bytes_in_use, (uint64_t)have << MESH_PAGE_SHIFT);
      mesh_stat_add(large_bytes_in_use, (uint64_t)s->npages << MESH_PAGE_SHIFT);
    }
  }
  _mesh_unlock();
  return ok;
}

/* ---- validation ------------------------------------------------------ */

int _mesh_global_validate(void) {
  int bad = 0;
  if (parked) {
    const span_t *s = mesh_span(parked);
    if (mesh_load_relaxed(&s->state) != SPAN_LARGE || mesh_load_relaxed(&s->bits[0]) != 0 || !parkable(s)) {
      bad++;
      _mesh_dprintf(2, "meshalloc: check: parked large span %u is live or not parkable\n", parked);
    }
  }
  uint32_t full[MESH_NUM_CLASSES] = {0};
  for (uint32_t pg = 0, top = _mesh_arena_top(); pg < top;) {
    uint64_t e = mesh_load_relaxed(&_mesh_arena.pagetable[pg]);
    span_t *s = mesh_span((uint32_t)e);
    if ((uint32_t)e && s->page == pg && mesh_load_relaxed(&s->state) == SPAN_FULL) full[s->cls]++;
    pg += s->npages ? s->npages : 1;
  }
  for (unsigned c = 0; c < MESH_NUM_CLASSES; c++) {
    uint32_t linked = 0;
    for (unsigned b = 0; b <= MESH_BIN_EMPTY; b++) {
      if (b < MESH_OCC_BINS && !!occ_bins[c][b] != !!(occ_nonempty[c] & (1u << b))) {
        bad++;
        _mesh_dprintf(2, "meshalloc: check: class %u bin %u mask mismatch\n", c, b);
      }
      uint32_t prev = MESH_NIL;
      for (uint32_t id = *list_head(c, b); id; prev = id, id = mesh_span(id)->next) {
        span_t *s = mesh_span(id);
        unsigned live = _mesh_span_live(s);
        linked += b != MESH_BIN_EMPTY;
        if (mesh_load_relaxed(&s->state) != SPAN_PARTIAL || s->cls != c || s->bin != b || s->prev != prev ||
            mesh_load_relaxed(&s->owner) != MESH_OWNER_NONE || live >= s->nobjects ||
            (b == MESH_BIN_EMPTY && live)) {
          bad++;
          _mesh_dprintf(2, "meshalloc: check: span %u in class %u bin %u is inconsistent (live %u)\n", id, c, b,
                        live);
          break;
        }
      }
    }
    if (linked != occ_count[c] || full[c] != full_count[c]) {
      bad++;
      _mesh_dprintf(2, "meshalloc: check: class %u counts %u spans in its bins (%u linked), %u full (%u found)\n", c,
                    occ_count[c], linked, full_count[c], full[c]);
    }
  }
  return bad;
}

void _mesh_global_after_fork_child(void) {
  _mesh_global_lock = (pthread_mutex_t)PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP;
}
