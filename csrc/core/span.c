/* span.c - span records and the page table that maps pages to them.
 *
 * A span record (types.h, span_t: 64 bytes) describes one run of arena
 * pages: a span of one size class, a large span, a free page run, an alias
 * (a virtual span meshed onto another span) or a retired range. Records live
 * in one array reserved with the arena (_mesh_arena.spans) and never move,
 * so a thread heap may keep a pointer to a record's bitmap while the span is
 * attached. Record 0 is nil: a page-table entry of 0 means "no span here".
 *
 * Where each state is entered: arena.c (FREE: free page runs; a span of
 * the arena's pages handed out), global_heap.c (ATTACHED, PARTIAL, FULL,
 * LARGE: attach and detach, the free transitions; they stay there, beside
 * the occupancy bins and the lock-free free path they update, which a move
 * would only split), mesh.c (ALIAS) and memfd.c (RETIRED).
 *
 * Record memory follows the records in use, not their peak. Free ids are
 * handed out lowest first (a bitmap with summary levels: a few ctz per
 * record), so records in use gather at the bottom of the array and the
 * pages above drain; a page of 64 free records is returned to the OS
 * (MADV_DONTNEED) at the end of a decay epoch in which none of its records
 * was handed out (hysteresis: a workload cycling around a page boundary
 * keeps it), or at once by an explicit scavenge. A returned page reads as
 * zeros, and a record of zeros is nil-like for every racy reader: state
 * SPAN_NONE, owner MESH_OWNER_NONE, no bits, no objects (asserted below).
 *
 * Invariants (checked by _mesh_span_records_validate):
 *   - a record id in [1, rec_top) is either in use (handed out, not freed)
 *     or free (its bit set in the free index), never both; ids at or past
 *     rec_top were never handed out;
 *   - a free record reads as state SPAN_NONE; no page-table entry, thread
 *     heap attachment or alias chain names it (the arena and global heap
 *     validators check the names), so returning its page hides nothing;
 *   - summary bit j of level l is set iff word j of level l-1 is nonzero;
 *   - a record page holding a record in use is marked resident; a page is
 *     returned only when all 64 of its records are free;
 *   - a handed-out record is reset: empty bitmap, no owner, no links, no
 *     aliases, state SPAN_NONE until its user sets one;
 *   - each page-table entry is (virtual span start << 32 | id), or 0;
 *   - _mesh_span_validate states what a span in each state must look like.
 *
 * Locking: records are handed out, freed and returned, and page-table
 * entries written, under _mesh_global_lock. The free paths read the page
 * table and a record's owner, state and bitmap without the lock (relaxed
 * loads): a legal free only reads entries of a span that cannot change
 * while it has a live object; a racy read of a freed record (after the
 * free's bit clear) reads its old contents or zeros, both nil-like.
 */
#include "internal.h"

_Static_assert(SPAN_NONE == 0 && MESH_OWNER_NONE == 0 && MESH_NIL == 0,
               "a returned record page reads as zeros: a zero record must read as unused");
#define RECS_PER_PAGE (MESH_PAGE_SIZE / sizeof(span_t))
_Static_assert(RECS_PER_PAGE == 64, "a word of the free index is one page of records");
#define MAX_LEVELS 6 /* 64^6 ids: more than 2^32 */

static uint32_t rec_top = 1; /* records ever handed out; id 0 is nil */
/* The free index: levels[0] bit i = record i is free (i < rec_top);
 * levels[l] bit j = word j of levels[l-1] is nonzero; the last level is one
 * word. Per record page k (= word k of levels[0]): resident bit k, the page
 * was touched since it was last returned; recent bit k, one of its records
 * was handed out in this decay epoch. All in the records' mapping. */
static uint64_t *levels[MAX_LEVELS];
static unsigned nlevels;
static uint64_t *resident, *recent;
static size_t map_bytes;
/* Kept here and published with plain stores (a counter's atomic add on
 * every record handed out and freed cost ~3 % of perf/micro bench c). */
static uint64_t nfree, npages_in, npages_free;

static void publish(void) {
  mesh_stat_set(span_records_live, rec_top - 1 - nfree);
  mesh_stat_set(span_records_top, rec_top);
  mesh_stat_set(span_record_pages, npages_in);
  mesh_stat_set(span_record_pages_free, npages_free);
}

static bool bit_get(const uint64_t *m, uint32_t k) { return m[k >> 6] >> (k & 63) & 1; }
static void bit_set(uint64_t *m, uint32_t k) { m[k >> 6] |= 1ull << (k & 63); }
static void bit_clear(uint64_t *m, uint32_t k) { m[k >> 6] &= ~(1ull << (k & 63)); }
static size_t words_for(uint64_t bits) { return (size_t)((bits + 63) >> 6); }

/* Maps the record array for max records, with its free index after it.
 * Pages are touched only as records are handed out. */
bool _mesh_span_records_reserve(uint32_t max) {
  size_t rec_bytes = ((size_t)max * sizeof(span_t) + MESH_PAGE_SIZE - 1) & ~(MESH_PAGE_SIZE - 1);
  size_t nwords[MAX_LEVELS], total = 0, pages_words = words_for(words_for(max));
  unsigned n = 0;
  for (size_t w = words_for(max);; w = words_for(w)) {
    nwords[n++] = w;
    total += w;
    if (w == 1) break;
  }
  map_bytes = rec_bytes + (total + 2 * pages_words) * sizeof(uint64_t);
  char *p = _mesh_os_alloc(map_bytes);
  if (!p) return false;
  uint64_t *w = (uint64_t *)(p + rec_bytes);
  for (unsigned l = 0; l < n; w += nwords[l++]) levels[l] = w;
  nlevels = n;
  resident = w;
  recent = w + pages_words;
  _mesh_arena.spans = (span_t *)p;
  _mesh_arena.max_spans = max;
  return true;
}

void _mesh_span_records_unreserve(void) {
  _mesh_os_free(_mesh_arena.spans, map_bytes);
  _mesh_arena.spans = NULL;
  _mesh_arena.max_spans = 0;
}

static void index_set(uint64_t i) {
  for (unsigned l = 0; l < nlevels; l++, i >>= 6) {
    uint64_t *w = &levels[l][i >> 6], old = *w;
    *w = old | 1ull << (i & 63);
    if (old) break;
  }
}

static void index_clear(uint64_t i) {
  for (unsigned l = 0; l < nlevels; l++, i >>= 6) {
    uint64_t *w = &levels[l][i >> 6];
    if ((*w &= ~(1ull << (i & 63))) != 0) break;
  }
}

/* The lowest free id, or MESH_NIL: one ctz per level, top down. */
static uint32_t index_lowest(void) {
  if (!levels[nlevels - 1][0]) return MESH_NIL;
  uint64_t i = 0;
  for (unsigned l = nlevels; l-- > 0;) i = i << 6 | (unsigned)__builtin_ctzll(levels[l][i]);
  return (uint32_t)i;
}

static bool page_all_free(uint32_t k) { return levels[0][k] == ~0ull; }

uint32_t _mesh_span_record_new(void) {
  uint32_t id = index_lowest();
  if (id) {
    if (page_all_free(id >> 6) && bit_get(resident, id >> 6)) npages_free--;
    index_clear(id);
    nfree--;
  } else {
    if (rec_top >= _mesh_arena.max_spans) return MESH_NIL;
    id = rec_top++;
  }
  if (!bit_get(resident, id >> 6)) {
    bit_set(resident, id >> 6);
    npages_in++;
  }
  bit_set(recent, id >> 6);
  publish();
  span_t *s = mesh_span(id);
  for (int w = 0; w < MESH_BITMAP_WORDS; w++) mesh_store_relaxed(&s->bits[w], 0);
  s->page = s->npages = 0;
  s->next = s->prev = MESH_NIL;
  mesh_store_relaxed(&s->owner, MESH_OWNER_NONE);
  s->nobjects = 0;
  s->cls = 0;
  mesh_store_relaxed(&s->state, SPAN_NONE);
  mesh_store_relaxed(&s->att, 0);
  s->bin = 0;
  s->flags = 0;
  s->naliases = 0;
  s->alias_next = MESH_NIL;
  return id;
}

void _mesh_span_record_free(uint32_t id) {
  span_t *s = mesh_span(id);
  mesh_store_relaxed(&s->state, SPAN_NONE);
  s->nobjects = 0;
  index_set(id);
  nfree++;
  if (page_all_free(id >> 6)) npages_free++; /* its page is resident: id was in use */
  publish();
}

bool _mesh_span_record_used(uint32_t id) { return id != MESH_NIL && id < rec_top && !bit_get(levels[0], id); }

/* Returns pages [first, first + n) of the record array to the OS. */
static void return_pages(uint32_t first, uint32_t n) {
  if (!n) return;
  void *p = (char *)_mesh_arena.spans + ((size_t)first << MESH_PAGE_SHIFT);
  if (_mesh_os_punch(-1, p, 0, (size_t)n << MESH_PAGE_SHIFT) != 0)
    _mesh_warning("returning %u pages of span records to the OS failed", n);
  npages_in -= n;
  npages_free -= n;
  publish();
  mesh_stat_add(span_record_pages_returned, n);
  mesh_stat_add(punch_calls, 1);
}

/* Returns the record pages whose 64 records are all free: every one (all),
 * or those none of whose records was handed out in the decay epoch that
 * ends here (a new one begins). Adjacent pages go in one call. Lock held. */
size_t _mesh_span_records_return(bool all) {
  uint32_t npages = rec_top / RECS_PER_PAGE, run = 0, len = 0; /* whole pages below rec_top */
  size_t returned = 0;
  for (uint32_t k = 0; k < npages; k++) {
    bool go = bit_get(resident, k) && page_all_free(k) && (all || !bit_get(recent, k));
    if (go) {
      bit_clear(resident, k);
      if (!len) run = k;
      len++;
      continue;
    }
    return_pages(run, len);
    returned += len;
    len = 0;
  }
  return_pages(run, len);
  returned += len;
  for (size_t w = 0; w < words_for(words_for(rec_top)); w++) recent[w] = 0;
  return returned;
}

#define BAD(fmt, ...) do { bad++; _mesh_dprintf(2, "meshalloc: check: " fmt "\n", ##__VA_ARGS__); } while (0)

/* The ids of record page k in [1, rec_top), as a mask of its index word. */
static uint64_t page_ids(uint32_t k) {
  uint64_t n = rec_top - (uint64_t)k * RECS_PER_PAGE, m = n >= 64 ? ~0ull : (1ull << n) - 1;
  return k ? m : m & ~1ull;
}

/* The free index: each summary level against the level below. */
static int check_levels(void) {
  int bad = 0;
  size_t n = words_for(rec_top);
  if (levels[0][0] & 1) BAD("free index: the nil record is free");
  if (levels[0][n - 1] & ~page_ids((uint32_t)n - 1) & ~1ull) BAD("free index: ids past the top are free");
  for (unsigned l = 1; l < nlevels; l++, n = words_for(n))
    for (size_t j = 0; j < n; j++)
      if (!!levels[l - 1][j] != bit_get(levels[l], (uint32_t)j)) {
        BAD("free index: level %u, bit %zu disagrees with the word below", l, j);
        break;
      }
  return bad;
}

/* The free index against the records, the resident pages and the
 * counters. Lock held. */
int _mesh_span_records_validate(void) {
  int bad = check_levels();
  uint64_t free_seen = 0, pages = 0, pages_free = 0;
  for (uint32_t id = 1; id < rec_top; id++)
    if (bit_get(levels[0], id)) {
      free_seen++;
      if (mesh_load_relaxed(&mesh_span(id)->state) != SPAN_NONE) BAD("span %u is free with state %u", id,
                                                                      mesh_load_relaxed(&mesh_span(id)->state));
    }
  for (uint32_t k = 0; k < words_for(rec_top); k++) {
    if (!bit_get(resident, k)) {
      if ((levels[0][k] & page_ids(k)) != page_ids(k)) BAD("record page %u holds records in use, not resident", k);
      continue;
    }
    pages++;
    pages_free += page_all_free(k);
  }
  if (mesh_stat_get(span_records_live) != rec_top - 1 - free_seen || mesh_stat_get(span_records_top) != rec_top)
    BAD("records: %u ids, %llu free; counters say %llu in use, top %llu", rec_top, (unsigned long long)free_seen,
        (unsigned long long)mesh_stat_get(span_records_live), (unsigned long long)mesh_stat_get(span_records_top));
  if (mesh_stat_get(span_record_pages) != pages || mesh_stat_get(span_record_pages_free) != pages_free)
    BAD("record pages: %llu resident, %llu of them free; counters say %llu and %llu", (unsigned long long)pages,
        (unsigned long long)pages_free, (unsigned long long)mesh_stat_get(span_record_pages),
        (unsigned long long)mesh_stat_get(span_record_pages_free));
  return bad;
}
#undef BAD

void _mesh_pagetable_set(uint32_t first, uint32_t npages, uint32_t vstart, uint32_t id) {
  uint64_t e = id == MESH_NIL ? 0 : ((uint64_t)vstart << 32) | id;
  for (uint32_t i = 0; i < npages; i++) mesh_store_relaxed(&_mesh_arena.pagetable[first + i], e);
}

/* One span's invariants (debug builds check it at every transition). */
int _mesh_span_validate(uint32_t id) {
  int bad = 0;
  span_t *s = mesh_span(id);
  uint8_t st = mesh_load_relaxed(&s->state);
  uint32_t top = _mesh_arena_top();
#define BAD(fmt, ...) do { bad++; _mesh_dprintf(2, "meshalloc: check: span %u: " fmt "\n", id, ##__VA_ARGS__); } while (0)
  if (!_mesh_span_record_used(id)) { BAD("bad id"); return bad; }
  if ((uint64_t)s->page + s->npages > top || s->npages == 0) BAD("pages %u+%u outside [0,%u)", s->page, s->npages, top);
  if (st == SPAN_FREE || st == SPAN_NONE || st == SPAN_RETIRED) return bad;
  if (st == SPAN_ALIAS) {
    uint32_t d = mesh_load_relaxed(&s->mesh_dst);
    if (!_mesh_span_record_used(d) || mesh_load_relaxed(&mesh_span(d)->state) == SPAN_ALIAS) BAD("alias of %u", d);
    return bad;
  }
  for (uint32_t i = 0; i < s->npages && !bad; i++)
    if (mesh_load_relaxed(&_mesh_arena.pagetable[s->page + i]) != (((uint64_t)s->page << 32) | id))
      BAD("page %u does not map to the span", s->page + i);
  if (st == SPAN_LARGE) {
    if (s->nobjects != 1 || s->cls != MESH_CLASS_LARGE) BAD("large span with %u objects", s->nobjects);
  } else {
    const size_class_t *sc = &_mesh_classes[s->cls];
    if (s->cls >= MESH_NUM_CLASSES || s->nobjects != sc->nobjects || s->npages != sc->npages)
      BAD("class %u geometry %u objects/%u pages", s->cls, s->nobjects, s->npages);
    for (unsigned w = mesh_bitmap_words(s); w < MESH_BITMAP_WORDS; w++)
      if (mesh_load_relaxed(&s->bits[w])) BAD("bits set past the last slot");
    if (s->nobjects && (mesh_load_relaxed(&s->bits[mesh_bitmap_words(s) - 1]) & ~mesh_bitmap_mask(s, mesh_bitmap_words(s) - 1)))
      BAD("bits set past the last slot");
    bool owned = mesh_load_relaxed(&s->owner) != MESH_OWNER_NONE;
    if (owned != (st == SPAN_ATTACHED)) BAD("state %u but owner %u", st, mesh_load_relaxed(&s->owner));
  }
#undef BAD
  return bad;
}
