/* shuffle_vector.h - the randomized free list of one size class in one
 * thread heap (the paper's ShuffleVector).
 *
 * entries[0..len) holds the free slots of the class's attached spans, each
 * as (attachment << 8 | slot): malloc pops the last entry, a local free
 * pushes, and every refill (new span, or slots other threads freed) is
 * followed by a Fisher-Yates shuffle. Random placement is what makes two
 * spans' occupancy bitmaps likely to be disjoint (meshable): every object
 * lands in a slot drawn at random when its span was filled. A local free is
 * pushed on top (LIFO) rather than swapped to a random position: the slot
 * it frees was itself drawn at random, and reusing it at once keeps the
 * cache line hot (a random swap cost ~2x on allocation-heavy Python code).
 *
 * local[a] mirrors entries: bit i of local[a] is 1 iff slot i of attachment a
 * is in entries. That is how a local double free is caught before the slot
 * could be handed out twice, without touching the shared atomic bitmap.
 * Owner thread only; no atomics except the statistics counters.
 */
#ifndef MESH_SHUFFLE_VECTOR_H
#define MESH_SHUFFLE_VECTOR_H

#include "internal.h"

MESH_NOINLINE void *_mesh_sv_pop_freed(shuffle_vector_t *sv, unsigned a, unsigned slot);

/* Pops a free slot. The slot's bit in the shared bitmap must still be set
 * (attached-span invariant); a clear bit means another thread freed it
 * while it sat here - a double free - and it is not handed out. */
MESH_INLINE void *mesh_sv_pop(shuffle_vector_t *sv) {
  uint16_t e = sv->entries[--sv->len];
  unsigned a = e >> 8, slot = e & 0xFFu;
  mesh_store_relaxed(&sv->local[a][slot >> 6], mesh_load_relaxed(&sv->local[a][slot >> 6]) & ~(1ull << (slot & 63)));
  if (mesh_unlikely(!(mesh_load_relaxed(&mesh_span(sv->span[a])->bits[slot >> 6]) >> (slot & 63) & 1)))
    return _mesh_sv_pop_freed(sv, a, slot);
  return (void *)(sv->base[a] + (uintptr_t)slot * sv->size);
}

/* Returns false (and changes nothing) if the slot is already free here. */
MESH_INLINE bool mesh_sv_push(shuffle_vector_t *sv, unsigned a, unsigned slot) {
  uint64_t bit = 1ull << (slot & 63);
  _Atomic uint64_t *w = &sv->local[a][slot >> 6];
  uint64_t v = mesh_load_relaxed(w);
  if (mesh_unlikely(v & bit)) return false;
  mesh_store_relaxed(w, v | bit);
  sv->entries[sv->len++] = (uint16_t)(a << 8 | slot);
  return true;
}

/* Adds a slot during refill (no shuffle: the caller shuffles once). */
MESH_INLINE void mesh_sv_append(shuffle_vector_t *sv, unsigned a, unsigned slot) {
  mesh_store_relaxed(&sv->local[a][slot >> 6], mesh_load_relaxed(&sv->local[a][slot >> 6]) | 1ull << (slot & 63));
  sv->entries[sv->len++] = (uint16_t)(a << 8 | slot);
}

MESH_INLINE void mesh_sv_shuffle(thread_heap_t *h, shuffle_vector_t *sv) {
  if (!h->shuffle) { /* ascending addresses pop first */
    for (uint32_t i = 0, j = sv->len; i + 1 < j; i++, j--) {
      uint16_t t = sv->entries[i];
      sv->entries[i] = sv->entries[j - 1];
      sv->entries[j - 1] = t;
    }
    return;
  }
  for (uint32_t i = sv->len; i > 1; i--) {
    uint32_t j = mesh_rand_below(&h->rng, i);
    uint16_t t = sv->entries[i - 1];
    sv->entries[i - 1] = sv->entries[j];
    sv->entries[j] = t;
  }
}

#endif
