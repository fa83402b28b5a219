/* fast_path.h - the inline fast paths of malloc and free.
 *
 * alloc.c builds mesh_malloc/mesh_free on them, and the Python face
 * (faces/pymodule.c) inlines them into its PyMem hooks when the extension's
 * own core is the heap, so a Python allocation pays no call into the core
 * and one range check decides "ours, free it" (the hook used to call
 * mesh_owns and then mesh_free, which checked the range again).
 *
 *   malloc: size -> class (table), pop the thread heap's shuffle vector.
 *   free:   one range compare (is it ours), one page-table load (which
 *           span), one compare (is the span attached to this thread), push.
 *
 * No lock, no atomic read-modify-write. Everything else (an empty vector,
 * another thread's span, a detached span, a large block, a bad free) is out
 * of line in alloc.c and thread_heap.c. Owner-thread data only.
 */
#ifndef MESH_FAST_PATH_H
#define MESH_FAST_PATH_H

#include "internal.h"
#include "shuffle_vector.h"

MESH_INLINE void *mesh_malloc_inline(size_t size) {
  thread_heap_t *h = _mesh_tls.heap; /* a sentinel with empty vectors before the first refill */
  if (mesh_likely(size <= MESH_SMALL_MAX)) {
    shuffle_vector_t *sv = &h->sv[mesh_class_of(size)];
    if (mesh_likely(sv->len != 0)) return mesh_sv_pop(sv);
  }
  return _mesh_heap_alloc_slow(size);
}

/* Frees p if it lies in the arena and returns true; returns false, having
 * touched nothing, if it does not (NULL included). A bad free inside the
 * arena is reported (with its address) and returns true. */
MESH_INLINE bool mesh_free_inline(void *p) {
  uintptr_t off = (uintptr_t)p - _mesh_arena.base;
  if (mesh_unlikely(off >= _mesh_arena.size)) return false;
  uint64_t pte = mesh_load_relaxed(&_mesh_arena.pagetable[off >> MESH_PAGE_SHIFT]);
  uint32_t id = (uint32_t)pte;
  span_t *s = mesh_span(id);
  thread_heap_t *h = _mesh_tls.heap;
  if (mesh_likely(mesh_load_relaxed(&s->owner) == h->id)) {
    uintptr_t voff = off - ((uintptr_t)(pte >> 32) << MESH_PAGE_SHIFT);
    shuffle_vector_t *sv = &h->sv[s->cls];
    uint32_t slot = (uint32_t)((voff * sv->recip) >> 32);
    if (mesh_unlikely(slot * sv->size != voff || slot >= s->nobjects)) {
      _mesh_report_bad_free(p, "invalid free (not the start of a block)");
      return true;
    }
    /* a clear shared bit: another thread already freed it (not yet reclaimed) */
    if (mesh_unlikely(!(mesh_load_relaxed(&s->bits[slot >> 6]) >> (slot & 63) & 1) ||
                      !mesh_sv_push(sv, mesh_load_relaxed(&s->att), slot)))
      _mesh_report_bad_free(p, "double free");
    return true;
  }
  _mesh_free_nonlocal(p, s, id, pte);
  return true;
}

#endif
