/* shuffle_vector.h - the randomized free list of one size class in one
 * thread heap (the paper's ShuffleVector).
 *
 * entries[0..len) holds the free slots of the class's attached spans, each
 * as its byte offset in the span | the attachment's index (offsets are
 * multiples of 16, indexes below 16): malloc pops the last entry, a local free
 * pushes, and every refill (new span, or slots other threads freed) puts the
 * new entries in random order (mesh_sv_shuffle: by default each span from a
 * random slot). Random placement is what makes two spans' occupancy bitmaps
 * likely to be disjoint (meshable): every object lands in a place drawn at
 * random when its span was filled. A local free is
 * pushed on top (LIFO) rather than swapped to a random position: the slot
 * it frees was itself drawn at random, and reusing it at once keeps the
 * cache line hot (a random swap cost ~2x on allocation-heavy Python code).
 *
 * att[a].local mirrors entries: bit i of att[a].local is 1 iff slot i of
 * attachment a is in entries. That is how a local double free is caught
 * (mesh_free_in, fast_path.h) before the slot could be handed out twice,
 * without touching the shared atomic bitmap.
 * Owner thread only; no atomics except the statistics counters.
 */
#ifndef MESH_SHUFFLE_VECTOR_H
#define MESH_SHUFFLE_VECTOR_H

#include <string.h>

#include "internal.h"

MESH_NOINLINE void *_mesh_sv_pop_freed(shuffle_vector_t *sv);

/* Entries hold the byte offset rather than the slot number so that the
 * address a pop returns is one add away from the entry, and the entry a
 * free pushes needs no divide: the slot number (for the bitmaps) is worked
 * out beside, off the path the next malloc waits on. */
_Static_assert(MESH_MAX_ATTACHED <= 16, "attachment indexes live in an entry's low 4 bits");
MESH_INLINE uint32_t mesh_sv_entry(unsigned a, uint32_t off) { return off | a; }
MESH_INLINE unsigned mesh_sv_entry_att(uint32_t e) { return e & 15u; }
MESH_INLINE uint32_t mesh_sv_entry_off(uint32_t e) { return e & ~15u; }
/* slot number of a byte offset that is a multiple of the size */
MESH_INLINE unsigned mesh_sv_slot(const shuffle_vector_t *sv, uint32_t off) {
  return (unsigned)(((uint64_t)off * sv->recip) >> 32);
}

/* The fast path's pop: the address of the top entry's slot, taken out of
 * the vector, or NULL (vector untouched) when the vector is empty or the
 * top slot's bit in the shared bitmap is clear. A clear bit means another
 * thread freed that slot while it sat here (a double free: the
 * attached-span invariant keeps the bit of every slot in the vector set);
 * mesh_sv_pop, on the slow path, reports it. Checking before taking keeps
 * every failure a plain "go slow" with nothing to undo. */
MESH_INLINE void *mesh_sv_try_pop(shuffle_vector_t *sv) {
  uint32_t len = sv->len;
  if (mesh_unlikely(len == 0)) return NULL;
  uint32_t e = sv->entries[len - 1], off = mesh_sv_entry_off(e);
  sv_attachment_t *at = &sv->att[mesh_sv_entry_att(e)];
  unsigned slot = mesh_sv_slot(sv, off), w = slot >> 6;
  uint64_t bit = 1ull << (slot & 63);
  if (mesh_unlikely(!(mesh_load_relaxed(&at->bits[w]) & bit))) return NULL;
  sv->len = (uint16_t)(len - 1);
  mesh_store_relaxed(&at->local[w], mesh_load_relaxed(&at->local[w]) & ~bit);
  void *p = (void *)(at->base + off);
  if (p == NULL) __builtin_unreachable(); /* spans are never at 0: callers' NULL tests fold away */
  return p;
}

/* Pops a free slot (len > 0), reporting and skipping a slot another thread
 * freed while it was free here (see mesh_sv_try_pop). */
MESH_INLINE void *mesh_sv_pop(shuffle_vector_t *sv) {
  void *p = mesh_sv_try_pop(sv);
  return mesh_likely(p != NULL) ? p : _mesh_sv_pop_freed(sv);
}

/* Adds a slot during refill (no shuffle: the caller shuffles once). */
MESH_INLINE void mesh_sv_append(shuffle_vector_t *sv, unsigned a, unsigned slot) {
  _Atomic uint64_t *w = &sv->att[a].local[slot >> 6];
  mesh_store_relaxed(w, mesh_load_relaxed(w) | 1ull << (slot & 63));
  sv->entries[sv->len++] = mesh_sv_entry(a, slot * sv->size);
}

/* Allocation order modes (the shuffle option). */
enum { MESH_ORDER_ADDRESS = 0, MESH_ORDER_ROTATED = 1, MESH_ORDER_OBJECTS = 2 };

/* Puts entries[from..len) (appended by a refill in ascending slot order,
 * attachment by attachment) in the order they will be popped.
 *
 * ROTATED (default): each span's slots pop in address order from a slot
 * drawn at random, wrapping round to its lowest; the spans come in random
 * order. OBJECTS: a Fisher-Yates shuffle of every slot (the paper's order).
 * ADDRESS: ascending addresses, to measure what randomness costs.
 *
 * Why ROTATED by default: objects allocated one after another are usually
 * walked one after another (CPython's GC lists are in allocation order), and
 * per-object randomness made every such step a cache miss the prefetcher
 * cannot hide: 3.5x pymalloc's time on allocation-heavy Python code against
 * 1.2x in address order (docs/meshing.md, "Allocation order"). Meshing keeps
 * what it needs: survivors of random frees are spread at random whatever the
 * order, and a random start per span gives survivors of periodic patterns
 * (keep every k-th object) a random phase per span, so two spans' patterns
 * interleave instead of coinciding as they would in address order. */
MESH_INLINE void mesh_sv_shuffle(thread_heap_t *h, shuffle_vector_t *sv, uint32_t from) {
  uint32_t *e = sv->entries;
  if (h->shuffle == MESH_ORDER_OBJECTS) {
    for (uint32_t i = sv->len; i > from + 1; i--) {
      uint32_t j = from + mesh_rand_below(&h->rng, i - from);
      uint32_t t = e[i - 1];
      e[i - 1] = e[j];
      e[j] = t;
    }
    return;
  }
  if (h->shuffle == MESH_ORDER_ADDRESS) {
    for (uint32_t i = from, j = sv->len; i + 1 < j; i++, j--) {
      uint32_t t = e[i];
      e[i] = e[j - 1];
      e[j - 1] = t;
    }
    return;
  }
  /* one run of entries per attachment */
  uint16_t start[MESH_MAX_ATTACHED + 1], order[MESH_MAX_ATTACHED];
  uint32_t out[MESH_VECTOR_CAPACITY];
  uint32_t nruns = 0;
  for (uint32_t i = from; i < sv->len; i++)
    if (i == from || mesh_sv_entry_att(e[i]) != mesh_sv_entry_att(e[i - 1])) start[nruns++] = (uint16_t)i;
  start[nruns] = (uint16_t)sv->len;
  for (uint32_t r = 0; r < nruns; r++) order[r] = (uint16_t)r;
  for (uint32_t r = nruns; r > 1; r--) {
    uint32_t j = mesh_rand_below(&h->rng, r);
    uint16_t t = order[r - 1];
    order[r - 1] = order[j];
    order[j] = t;
  }
  /* pops take the last entry, so a run x[0..m) rotated to start at x[rot]
   * is written as x[rot-1..0] then x[m-1..rot] */
  uint32_t k = 0;
  for (uint32_t r = 0; r < nruns; r++) {
    const uint32_t *x = e + start[order[r]];
    uint32_t m = (uint32_t)start[order[r] + 1] - start[order[r]];
    uint32_t rot = m > 1 ? mesh_rand_below(&h->rng, m) : 0;
    for (uint32_t i = rot; i > 0; i--) out[k++] = x[i - 1];
    for (uint32_t i = m; i > rot; i--) out[k++] = x[i - 1];
  }
  memcpy(e + from, out, k * sizeof out[0]);
}

#endif
