/* shuffle_vector.h - the randomized free list of one size class in one
 * thread heap (the paper's ShuffleVector).
 *
 * entries[0..len) holds the free slots of the class's attached spans, each
 * as its primary address: malloc pops the last entry, a local free
 * pushes, and every refill (new span, or slots other threads freed) puts the
 * new entries in random order (mesh_sv_fill: by default each span from a
 * random slot). Random placement is what makes two spans' occupancy bitmaps
 * likely to be disjoint (meshable): every object lands in a place drawn at
 * random when its span was filled. A local free is
 * pushed on top (LIFO) rather than swapped to a random position: the slot
 * it frees was itself drawn at random, and reusing it at once keeps the
 * cache line hot (a random swap cost ~2x on allocation-heavy Python code).
 *
 * What is in a vector: entries[0..len) are distinct free slots of the
 * attached spans, each with its bit set in the span's shared bitmap (types.h,
 * "Span bitmap invariant"; see mesh_sv_try_pop for the one race that can
 * clear it) and the free key in its second word (types.h,
 * "Free key invariant"). The owner writes the key as a slot goes in (a local
 * free, mesh_sv_fill for a reclaim or refill) and 0 as it comes out (a pop,
 * detach): a local free that finds the key is a double free, caught with
 * one load of a word the free's own block holds, without a bitmap of which
 * slots are here. Stores that put a slot in come before the store of len
 * that publishes it (release), so a fork child, which may find another
 * thread's vector half updated, can trust each entry below len whose slot
 * still holds the key (thread_heap.c, _mesh_heaps_after_fork_child).
 * Owner thread only; no atomics except len (relaxed loads and stores:
 * plain moves; stats readers load it racily).
 */
#ifndef MESH_SHUFFLE_VECTOR_H
#define MESH_SHUFFLE_VECTOR_H

#include <string.h>

#include "internal.h"

/* Entries hold the block's address itself, so a pop returns the entry (a
 * 32-bit offset | attachment index, half the bytes, took six instructions
 * more: the index split off, its attachment's base loaded and added), and
 * a free pushes the pointer it was given; the slot number (for the
 * bitmaps) is worked out beside, off the path the next malloc waits on.
 * Which attachment an entry belongs to is only asked when a vector is
 * emptied whole (detach) or checked: mesh_sv_locate. */

/* The attachment whose span holds the slot that starts at e, with the
 * slot's number in *slot; -1 if e starts no slot of an attached span (a
 * fork child may find a half-written entry: thread_heap.c). */
MESH_INLINE int mesh_sv_locate(const shuffle_vector_t *sv, uintptr_t e, unsigned *slot) {
  for (unsigned a = 0; a < sv->natt; a++) {
    uintptr_t off = e - sv->att[a].base;
    if (off >= (uintptr_t)mesh_span(sv->att[a].span)->nobjects * sv->size) continue;
    unsigned n = (unsigned)((off * sv->recip) >> 32);
    if ((uintptr_t)n * sv->size != off) return -1;
    *slot = n;
    return (int)a;
  }
  return -1;
}

/* The second word of a slot: the free key's place (types.h). */
MESH_INLINE uint64_t *mesh_slot_key(uintptr_t p) { return (uint64_t *)(p + 8); }

/* The fast path's pop: the address of the top entry's slot, taken out of
 * the vector, or NULL (vector untouched) when the vector is empty.
 *
 * Why the pop needs no look at the span's shared bitmap: a slot handed out
 * with its bit clear would come back in the next reclaim while its new
 * owner holds it (handed out twice), but every way a slot can sit here with
 * its bit clear is a double free that is refused before it changes
 * anything. A free by another thread of a slot sitting here finds the key
 * (mesh_free_shared_try); a local free of a slot another thread freed finds
 * its bit clear (mesh_free_push); a reclaim takes only slots whose bits
 * were clear (no other free can be pending on them). What is left is two
 * frees of one block racing each other on two threads, with no order
 * between them: the remote free may read the block before the local free's
 * key lands (a window of a store's way to the cache), or clear the bit
 * after a reclaim set it but before the fill wrote the key. Such a pair was
 * only ever caught when the second free landed before the slot's next pop,
 * which LIFO makes the class's next malloc on that thread; closing the
 * first few nanoseconds of that window too would take a check here on
 * every malloc (10 instructions of 40) or a fence on every free. */
MESH_INLINE void *mesh_sv_try_pop(shuffle_vector_t *sv) {
  uint32_t len = mesh_load_relaxed(&sv->len);
  if (mesh_unlikely(len == 0)) return NULL;
  len--;
  uintptr_t p = sv->entries[len];
  mesh_store_relaxed(&sv->len, len);
  *mesh_slot_key(p) = 0; /* a block handed out never holds the key */
  if (p == 0) __builtin_unreachable(); /* spans are never at 0: callers' NULL tests fold away */
  return (void *)p;
}

/* Allocation order modes (the shuffle option). */
enum { MESH_ORDER_ADDRESS = 0, MESH_ORDER_ROTATED = 1, MESH_ORDER_OBJECTS = 2 };

/* The free slots one reclaim gathered from the class's attachments: per
 * attachment a bitmap (bit i = slot i, set again in the shared bitmap by
 * the reclaim) and how many bits it holds. */
typedef struct {
  uint64_t bits[MESH_MAX_ATTACHED][MESH_BITMAP_WORDS];
  uint16_t count[MESH_MAX_ATTACHED];
} sv_gathered_t;

/* Writes attachment a's gathered slots (m of them) into entries[k..k+m),
 * in ascending slot order from position first downwards, wrapping from k
 * to k+m-1, and the free key into each slot. Pops take the last entry, so
 * they see the slots in ascending order starting from the one written at
 * k+m-1. */
MESH_INLINE void mesh_sv_write_run(shuffle_vector_t *sv, unsigned a, const uint64_t *bits, uint32_t k, uint32_t m,
                                   uint32_t first) {
  uintptr_t *e = sv->entries, base = sv->att[a].base, size = sv->size;
  uint32_t p = first;
  uint64_t key = _mesh_arena.free_key;
  for (unsigned w = 0; w < MESH_BITMAP_WORDS; w++) {
    for (uint64_t t = bits[w]; t; t &= t - 1) {
      uintptr_t q = base + (w * 64 + (unsigned)__builtin_ctzll(t)) * size;
      e[p] = q;
      *mesh_slot_key(q) = key;
      p = p == k ? k + m - 1 : p - 1;
    }
  }
}

/* Appends the gathered slots to entries[len..) in the order they will be
 * popped.
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
 * interleave instead of coinciding as they would in address order.
 *
 * The entries are written where they belong (no append-then-permute pass):
 * a reclaim is the allocator's commonest slow path. */
MESH_INLINE void mesh_sv_fill(thread_heap_t *h, shuffle_vector_t *sv, const sv_gathered_t *g) {
  uint8_t order[MESH_MAX_ATTACHED];
  unsigned n = 0;
  for (unsigned a = 0; a < sv->natt; a++)
    if (g->count[a]) order[n++] = (uint8_t)a;
  if (h->shuffle == MESH_ORDER_ROTATED)
    for (unsigned r = n; r > 1; r--) { /* random span order */
      unsigned j = mesh_rand_below(&h->rng, r);
      uint8_t t = order[r - 1];
      order[r - 1] = order[j];
      order[j] = t;
    }
  uint32_t from = mesh_load_relaxed(&sv->len), k = from;
  for (unsigned r = 0; r < n; r++) {
    /* ADDRESS pops attachment 0 first: it is written last */
    unsigned a = h->shuffle == MESH_ORDER_ADDRESS ? order[n - 1 - r] : order[r];
    uint32_t m = g->count[a];
    uint32_t rot = h->shuffle == MESH_ORDER_ROTATED && m > 1 ? mesh_rand_below(&h->rng, m) : 0;
    mesh_sv_write_run(sv, a, g->bits[a], k, m, rot ? k + rot - 1 : k + m - 1);
    k += m;
  }
  if (h->shuffle == MESH_ORDER_OBJECTS) {
    uintptr_t *e = sv->entries;
    for (uint32_t i = k; i > from + 1; i--) {
      uint32_t j = from + mesh_rand_below(&h->rng, i - from);
      uintptr_t t = e[i - 1];
      e[i - 1] = e[j];
      e[j] = t;
    }
  }
  /* after the entries and the keys (the top of the file's comment) */
  mesh_store_release(&sv->len, k);
}

#endif
