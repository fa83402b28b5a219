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
 * Invariants:
 *   - a record id in [1, rec_top) is either in use (state != SPAN_NONE) or
 *     on the recycled list (rec_free, linked by next), never both; ids at
 *     or past rec_top were never handed out;
 *   - a recycled record is reset when handed out again: empty bitmap, no
 *     owner, no links, no aliases, state SPAN_NONE until its user sets one;
 *   - each page-table entry is (virtual span start << 32 | id), or 0;
 *   - _mesh_span_validate states what a span in each state must look like.
 *
 * Locking: records are handed out and recycled, and page-table entries
 * written, under _mesh_global_lock. The free paths read the page table and
 * a record's owner, state and bitmap without the lock (relaxed loads): a
 * legal free only reads entries of a span that cannot change while it has
 * a live object.
 */
#include "internal.h"

static uint32_t rec_top = 1;         /* span records ever used; id 0 is nil */
static uint32_t rec_free = MESH_NIL; /* recycled records, linked by next */

uint32_t _mesh_span_record_new(void) {
  uint32_t id;
  if (rec_free != MESH_NIL) {
    id = rec_free;
    rec_free = mesh_span(id)->next;
  } else {
    if (rec_top >= _mesh_arena.max_spans) return MESH_NIL;
    id = rec_top++;
  }
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
  s->next = rec_free;
  rec_free = id;
}

bool _mesh_span_record_used(uint32_t id) { return id != MESH_NIL && id < rec_top; }

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
  if (id == MESH_NIL || id >= rec_top) { BAD("bad id"); return bad; }
  if ((uint64_t)s->page + s->npages > top || s->npages == 0) BAD("pages %u+%u outside [0,%u)", s->page, s->npages, top);
  if (st == SPAN_FREE || st == SPAN_NONE || st == SPAN_RETIRED) return bad;
  if (st == SPAN_ALIAS) {
    uint32_t d = mesh_load_relaxed(&s->mesh_dst);
    if (!d || d >= rec_top || mesh_load_relaxed(&mesh_span(d)->state) == SPAN_ALIAS) BAD("alias of %u", d);
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
