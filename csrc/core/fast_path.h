/* fast_path.h - the inline fast paths of malloc and free.
 *
 * alloc.c builds mesh_malloc/mesh_free on them, and the Python face
 * (faces/pyhooks.c, through face.h) inlines them into its PyMem hooks when
 * the extension's own core is the heap, so a Python allocation pays no call
 * into the core and one range check decides "ours, free it".
 *
 *   malloc: size -> class -> vector (computed up to 1 KiB, one byte of a
 *           zoned table above: types.h, "Store and load zones"), pop the
 *           thread heap's shuffle vector.
 *   free:   one range compare (is it ours), one page-table load (which
 *           span), two compares (is the span attached to this thread, at
 *           its own address), the slot's shared bit and the free key
 *           (double free), write the key, push.
 *
 * No lock, no atomic read-modify-write, owner-thread data only, with one
 * exception: a free into a span the thread does not hold (another
 * thread's, or detached: 45 % of a single-threaded Python program's frees)
 * is one atomic bit clear, after a look at the block's key word if the
 * span is attached (mesh_free_other, mesh_free_shared_try): inline
 * functions a face calls out of line, so that the local free makes no
 * call. Everything else (an empty vector, a large block, a span meshed
 * away, a bad free, a detached span changing bins) is out of line in
 * alloc.c and thread_heap.c.
 */
#ifndef MESH_FAST_PATH_H
#define MESH_FAST_PATH_H

#include "internal.h"
#include "shuffle_vector.h"

/* The fast path proper: a block from the thread heap's shuffle vector, or
 * NULL when it cannot serve (size beyond the small classes, an empty
 * vector, a sentinel heap, a slot freed twice) and the caller must take the
 * slow path, which handles every case again from scratch. h is the calling
 * thread's heap (_mesh_tls.heap); size must be > 0. Leaves no state behind
 * on NULL, so a caller can keep its own fast path free of calls. */
MESH_INLINE void *mesh_malloc_try(thread_heap_t *h, size_t size) {
  shuffle_vector_t *sv;
  unsigned cls;
  /* size 0 wraps round and takes the slow path, which serves it as 16; the
   * commonest sizes pass one compare */
  if (mesh_likely(size - 1 < 512)) {
    cls = (unsigned)((size - 1) >> 4);
  } else {
    if (mesh_unlikely(size - 1 >= MESH_SMALL_MAX)) return NULL;
    cls = mesh_class_of(size);
  }
  sv = &h->sv[cls];
  MESH_OPAQUE(sv);
  return mesh_sv_try_pop(sv);
}

MESH_INLINE void *mesh_malloc_inline(size_t size) {
  void *p = mesh_malloc_try(_mesh_tls.heap, size);
  if (mesh_likely(p != NULL)) return p;
  return _mesh_heap_alloc_slow(size);
}

/* Clears bit b (< 64) of *word; true iff it was set. Only the old bit is
 * asked for, so GCC emits one `lock btr` (a fetch_and whose whole old word
 * is used is a load + `lock cmpxchg` loop: ~9 instructions more, a retry
 * per racing free). */
MESH_INLINE bool mesh_bit_clear_seq_cst(_Atomic uint64_t *word, unsigned b) {
  uint64_t bit = 1ull << (b & 63);
  return (mesh_fetch_and_seq_cst(word, ~bit) & bit) != 0;
}

/* After a free cleared a slot of word w of span s, not attached to the
 * caller: nothing more while the span is attached to some thread heap (its
 * owner takes the slot back at its next reclaim). A detached span that may
 * have been FULL (its state is anything but PARTIAL: FULL, or ATTACHED in
 * the moment a detach files it) or may be empty now (word w is 0) goes to
 * _mesh_after_clear, which refines and changes its bins under the lock.
 * The loads come after the clear (docs/design.md, "Fast paths and locking"):
 * a detach whose fetch_and preceded the clear has stored owner NONE before
 * it, so the owner load sees NONE, and the state is read no earlier than
 * that detach's filing could make it FULL. The record may have been
 * released and reused meanwhile: every test here only sends the free to the
 * lock, where the transition re-derives everything. */
MESH_INLINE void mesh_after_shared_clear(span_t *s, uint32_t id, unsigned w, unsigned nobjects,
                                         const void *caller) {
  if (mesh_load_seq_cst(&s->owner) != MESH_OWNER_NONE) return;
  if (mesh_unlikely(mesh_load_seq_cst(&s->state) != SPAN_PARTIAL || mesh_load_seq_cst(&s->bits[w]) == 0))
    _mesh_after_clear(s, id, nobjects, caller);
}

/* The common free into a span the caller does not hold: attached to
 * another thread, or detached and not meshed away. One atomic bit clear
 * (the span's other frees may race with it); see alloc.c and global_heap.c
 * for what follows when a detached span was full or becomes empty.
 * Returns MESH_SHARED_DONE having freed p; MESH_SHARED_IN_VECTOR having
 * changed nothing when p's block, in an attached span, holds the free key:
 * it sits in its owner's vector, a double free the caller reports (the pop
 * does not look at the bitmap: shuffle_vector.h); MESH_SHARED_NOT_DONE
 * having changed nothing (a clear of a clear bit changes nothing) in every
 * other case: a large block, a span meshed away, a bad pointer, a double
 * free the bitmap shows; _mesh_free_nonlocal then does it from scratch.
 * off is p's offset in the arena, pte its page-table entry; caller as for
 * mesh_free_other. */
enum { MESH_SHARED_NOT_DONE = 0, MESH_SHARED_DONE = 1, MESH_SHARED_IN_VECTOR = 2 };
MESH_INLINE int mesh_free_shared_try(void *p, uintptr_t off, span_t *s, uint32_t id, uint64_t pte,
                                     const void *caller) {
  _Static_assert(SPAN_PARTIAL == SPAN_ATTACHED + 1 && SPAN_FULL == SPAN_ATTACHED + 2, "the states of small spans");
  uint8_t st = mesh_load_seq_cst(&s->state);
  if (mesh_unlikely((uint8_t)(st - SPAN_ATTACHED) > 2)) return MESH_SHARED_NOT_DONE;
  /* Read before the clear, while the block is still the caller's (a free
   * slot's page may be meshed away under a reader), at the primary address
   * (mesh_free_local), and before p is known to start a slot: in the
   * 16-byte granule that holds p, so never past p's page. Only a slot in a
   * vector holds the key there, and a live block never does (types.h): a
   * block found holding it is free, or p is not a block at all, a bad free
   * either way. The span's page is stable while the block is live. */
  if (st == SPAN_ATTACHED) {
    /* (an alias may lie below its span: the difference wraps in 64 bits) */
    uintptr_t primary = ((uintptr_t)p & ~(uintptr_t)15) + (((uintptr_t)s->page - (pte >> 32)) << MESH_PAGE_SHIFT);
    if (mesh_unlikely(*mesh_slot_key(primary) == _mesh_arena.free_key)) return MESH_SHARED_IN_VECTOR;
  }
  const size_class_t *sc = &_mesh_classes[s->cls];
  uintptr_t voff = off - ((uintptr_t)(pte >> 32) << MESH_PAGE_SHIFT);
  uint32_t slot = mesh_slot_at(voff, sc->size, sc->recip, s->nobjects);
  if (mesh_unlikely(slot == MESH_NO_SLOT)) return MESH_SHARED_NOT_DONE;
  unsigned w = slot >> 6, nobjects = sc->nobjects;
  if (mesh_unlikely(!mesh_bit_clear_seq_cst(&s->bits[w], slot))) return MESH_SHARED_NOT_DONE;
  /* the bit is clear: from here the record may be reused (alloc.c) */
  mesh_after_shared_clear(s, id, w, nobjects, caller);
  return MESH_SHARED_DONE;
}

/* The local free of p, at offset off in the arena, into span s (record
 * id, page-table entry pte), which is attached to h: write the free key
 * into the block and push the slot on the vector. A bad free (not the
 * start of a block, a slot that is already free here, or one another
 * thread freed) is reported with its address and changes nothing. */
MESH_INLINE void mesh_free_push(thread_heap_t *h, void *p, uintptr_t off, uint64_t pte, span_t *s) {
  uintptr_t voff = off - ((uintptr_t)(pte >> 32) << MESH_PAGE_SHIFT);
  shuffle_vector_t *sv = &h->sv[s->cls];
  MESH_OPAQUE(sv);
  uint32_t slot = mesh_slot_at(voff, sv->size, sv->recip, s->nobjects);
  if (mesh_unlikely(slot == MESH_NO_SLOT)) {
    _mesh_report_bad_free(p, "invalid free (not the start of a block)");
    return;
  }
  /* Free here iff the shared bit is set (a clear one: another thread
   * already freed it, not yet reclaimed) and the block does not hold the
   * key (it does iff it sits in the vector: shuffle_vector.h). The bit is
   * in the span record's line, which the owner test above loaded. p is
   * the slot's primary address (mesh_free_local), the one the pop hands
   * out and the key is kept at. */
  uint64_t key = _mesh_arena.free_key, *kp = mesh_slot_key((uintptr_t)p);
  if (mesh_likely((mesh_load_relaxed(&s->bits[slot >> 6]) >> (slot & 63) & 1) && *kp != key)) {
    uint32_t len = mesh_load_relaxed(&sv->len);
    *kp = key;
    sv->entries[len] = (uintptr_t)p;
    mesh_store_release(&sv->len, len + 1); /* after the key and the entry: shuffle_vector.h */
    return;
  }
  _mesh_report_bad_free(p, "double free");
}

/* mesh_free_local's and mesh_free_in's answers */
enum { MESH_FREE_NOT_OURS = 0, MESH_FREE_LOCAL = 1, MESH_FREE_OTHER = 2 };

/* The first half of a free, the only one a fast path keeps in line.
 * Returns MESH_FREE_NOT_OURS, having touched nothing, if p is not in the
 * arena (NULL included); MESH_FREE_LOCAL having freed p (or reported a bad
 * free of it) if its span is attached to h (so h is a real heap, not a
 * sentinel); MESH_FREE_OTHER, having touched nothing, for every other
 * block of ours (another thread's span, a detached span, a large block):
 * *off and *pte are then what mesh_free_other needs to finish. Nearly half
 * of Python's frees are OTHER (their span was detached when it filled up):
 * a caller that sends them to mesh_free_other out of line (a tail call)
 * keeps the local path free of calls, so it saves no registers. h is the
 * calling thread's heap. */
MESH_INLINE int mesh_free_local(thread_heap_t *h, void *p, uintptr_t *off, uint64_t *pte) {
  *off = (uintptr_t)p - _mesh_arena.base;
  if (mesh_unlikely(*off >= _mesh_arena.size)) return MESH_FREE_NOT_OURS;
  *pte = mesh_load_relaxed(&_mesh_arena.pagetable[*off >> MESH_PAGE_SHIFT]);
  span_t *s = mesh_span((uint32_t)*pte);
  if (mesh_unlikely(mesh_load_relaxed(&s->owner) != h->id)) return MESH_FREE_OTHER;
  /* p in an alias of s (s was meshed before it was attached): freed like a
   * block of another thread's span (one bit clear; the slot comes back at
   * the next reclaim), because the key must be read and written at the
   * slot's primary address, where the pop hands it out, and since a fork
   * froze the memfd an alias and its span map their common pages
   * privately, each its own copy (docs/design.md, "fork"). */
  if (mesh_unlikely((uint32_t)(*pte >> 32) != s->page)) return MESH_FREE_OTHER;
  mesh_free_push(h, p, *off, *pte, s);
  return MESH_FREE_LOCAL;
}

/* The second half, for MESH_FREE_OTHER: frees p, at offset off in the
 * arena with page-table entry pte, into a span the caller does not hold.
 * caller: the return address of the program's free (a PyMem hook, free),
 * taken there: the core tells the dynamic loader's frees by it, and
 * reports it with a bad free. */
MESH_INLINE void mesh_free_other(void *p, uintptr_t off, uint64_t pte, const void *caller) {
  uint32_t id = (uint32_t)pte;
  span_t *s = mesh_span(id);
  int r = mesh_free_shared_try(p, off, s, id, pte, caller);
  if (mesh_likely(r == MESH_SHARED_DONE)) return;
  if (r == MESH_SHARED_IN_VECTOR) _mesh_report_bad_free(p, "double free (the slot is free in its owner's vector)");
  else _mesh_free_nonlocal(p, s, id, pte, caller);
}

/* Both halves in line: frees p if it lies in the arena, with the answers
 * of mesh_free_local. A bad free inside the arena is reported (with its
 * address) and counts as freed. */
MESH_INLINE int mesh_free_in(thread_heap_t *h, void *p) {
  uintptr_t off;
  uint64_t pte;
  int r = mesh_free_local(h, p, &off, &pte);
  if (r == MESH_FREE_OTHER) mesh_free_other(p, off, pte, __builtin_return_address(0));
  return r;
}

MESH_INLINE bool mesh_free_inline(void *p) { return mesh_free_in(_mesh_tls.heap, p) != MESH_FREE_NOT_OURS; }

#endif
