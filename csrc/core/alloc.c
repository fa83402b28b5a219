/* alloc.c - the public entry points: malloc family semantics on top of
 * thread heaps (small) and the global heap (large).
 *
 * Fast paths (fast_path.h), no lock and no atomic RMW.
 * Everything else (empty vector, another thread's span, detached spans,
 * large blocks) is out of line. A free of a span attached to another thread
 * or detached is one atomic bit clear; the global lock is taken only when
 * that clear changes what the global heap must know (see global_heap.c).
 *
 * Validation happens on every path: a pointer must be inside the arena,
 * map to a live span, sit on a slot boundary, and its slot must be live.
 * Anything else is reported with its address (never silently ignored).
 */
#include "internal.h"
#include "fast_path.h"

#include <errno.h>
#include <string.h>

/* ---- free ------------------------------------------------------------ */

static MESH_NOINLINE void bad_free(const void *p, const char *what) { _mesh_report_bad_free(p, what); }

/* The states a block can be freed from (a bit per enum span_state). */
#define FREEABLE_STATES (1u << SPAN_ATTACHED | 1u << SPAN_PARTIAL | 1u << SPAN_FULL | 1u << SPAN_ALIAS)

/* Clears slot's bit in the span that holds p's objects now: a span meshed
 * away forwards to the span that now holds them. Returns that span, or NULL
 * after reporting a double free. A clear the fast try made and found the
 * bit already clear is simply repeated (clearing a clear bit changes
 * nothing). */
static MESH_NOINLINE span_t *clear_slow(const void *p, span_t *s, uint32_t *id, uint32_t slot) {
  for (;;) {
    while (mesh_load_seq_cst(&s->state) == SPAN_ALIAS) {
      *id = mesh_load_seq_cst(&s->mesh_dst);
      s = mesh_span(*id);
    }
    if (mesh_bit_clear_seq_cst(&s->bits[slot >> 6], slot)) return s;
    /* Bit already clear: a double free, unless a mesh moved the bitmap to
     * its destination between our state check and the clear (mesh.c). */
    if (mesh_load_seq_cst(&s->state) != SPAN_ALIAS) {
      bad_free(p, "double free");
      return NULL;
    }
  }
}

/* After a free cleared a slot of detached span s (and the inline
 * tests found the span maybe FULL or maybe empty): moves the span to the
 * partial bins if it is FULL, or frees it if it is empty, under the lock,
 * where _mesh_global_free_transition re-derives both from the bitmap. A
 * PARTIAL span goes there only when every word is 0: of two last frees on
 * different words (seq_cst clears and loads) at least one sees that. */
void _mesh_after_clear(span_t *s, uint32_t id, unsigned nobjects, const void *caller) {
  if (mesh_load_seq_cst(&s->state) == SPAN_PARTIAL) {
    for (unsigned i = 0; i < mesh_bitmap_words_n(nobjects); i++)
      if (mesh_load_seq_cst(&s->bits[i]) != 0) return;
  }
  _mesh_global_free_transition(s, id);
  mesh_mesher_poll_free(caller); /* the free is done: a place to start a thread, unless the loader called */
}

/* Every free into a span not attached to the caller that
 * mesh_free_shared_try (fast_path.h) did not do: large blocks, spans meshed
 * away (the bit is cleared in the span that holds the objects now), double
 * and invalid frees. Starts from scratch: the fast try changed nothing. */
void _mesh_free_nonlocal(void *p, span_t *s, uint32_t id, uint64_t pte, const void *caller) {
  uint8_t st = mesh_load_relaxed(&s->state);
  if (mesh_unlikely(st == SPAN_LARGE)) {
    _mesh_large_free(s, id, p, pte, caller);
    return;
  }
  if (mesh_unlikely(id == MESH_NIL || st > SPAN_ALIAS || !(FREEABLE_STATES >> st & 1u))) {
    bad_free(p, id == MESH_NIL ? "invalid free (not an allocated block)" : "double free or invalid free");
    return;
  }
  /* The offset inside the virtual span the pointer is in: the same slot in
   * every span of a meshed chain, which all share the class geometry. */
  uintptr_t voff = (uintptr_t)p - mesh_page_addr((uint32_t)(pte >> 32));
  const size_class_t *sc = &_mesh_classes[s->cls];
  uint32_t slot = mesh_slot_at(voff, sc->size, sc->recip, s->nobjects);
  if (mesh_unlikely(slot == MESH_NO_SLOT)) {
    bad_free(p, "invalid free (not the start of a block)");
    return;
  }
  /* Once the bit is clear this free no longer keeps the span alive and the
   * record may be released and reused under us: everything needed below is
   * read before, or comes from the immutable class table. */
  unsigned nobjects = sc->nobjects;
  s = clear_slow(p, s, &id, slot);
  if (s) mesh_after_shared_clear(s, id, slot >> 6, nobjects, caller);
}

void mesh_free(void *p) {
  if (mesh_unlikely(!mesh_free_inline(p)) && p && !_mesh_direct_free(p))
    bad_free(p, "invalid free (pointer not from this heap)");
}

/* ---- malloc ---------------------------------------------------------- */

void *mesh_malloc(size_t size) { return mesh_malloc_inline(size); }

/* Size of the live block p, or 0 (after a report when report is set) if p
 * is not a live block start of this heap; *large tells whether it is a
 * large block of the arena (whole pages, any size). */
static size_t block_size_of(const void *p, bool report, bool *large) {
  *large = false;
  if (!mesh_in_arena(p)) {
    size_t direct = _mesh_direct_size(p);
    if (direct) return direct;
    if (report) bad_free(p, "invalid pointer (not from this heap)");
    return 0;
  }
  uint64_t pte = mesh_pte_of(p);
  uint32_t id = (uint32_t)pte;
  span_t *s = mesh_span(id);
  while (id != MESH_NIL && mesh_load_seq_cst(&s->state) == SPAN_ALIAS) {
    id = mesh_load_seq_cst(&s->mesh_dst);
    s = mesh_span(id);
  }
  uint8_t st = mesh_load_relaxed(&s->state);
  uintptr_t voff = (uintptr_t)p - mesh_page_addr((uint32_t)(pte >> 32));
  if (id != MESH_NIL && st == SPAN_LARGE && voff == 0 && mesh_load_relaxed(&s->bits[0])) {
    *large = true;
    return (size_t)s->npages << MESH_PAGE_SHIFT;
  }
  if (id != MESH_NIL && (st == SPAN_ATTACHED || st == SPAN_PARTIAL || st == SPAN_FULL)) {
    const size_class_t *sc = &_mesh_classes[s->cls];
    uint32_t slot = mesh_slot_at(voff, sc->size, sc->recip, s->nobjects);
    if (slot != MESH_NO_SLOT && (mesh_load_relaxed(&s->bits[slot >> 6]) >> (slot & 63) & 1)) return sc->size;
  }
  if (report) bad_free(p, "invalid pointer (not a live block)");
  return 0;
}

size_t mesh_usable_size(const void *p) {
  bool large;
  return p ? block_size_of(p, false, &large) : 0;
}

int mesh_owns(const void *p) { return mesh_in_arena(p) || (p && _mesh_direct_size(p) != 0); }

size_t mesh_span_of(const void *p, void **start) {
  if (!mesh_in_arena(p)) return 0;
  uint64_t pte = mesh_pte_of(p);
  uint32_t id = (uint32_t)pte;
  if (id == MESH_NIL) return 0;
  uint8_t st = mesh_load_relaxed(&mesh_span(id)->state);
  if (st == SPAN_FREE || st == SPAN_NONE || st == SPAN_RETIRED) return 0;
  if (start) *start = (void *)mesh_page_addr((uint32_t)(pte >> 32));
  return (size_t)mesh_span(id)->npages << MESH_PAGE_SHIFT;
}

void *mesh_calloc(size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  if (total > MESH_SMALL_MAX) return _mesh_large_alloc(total, 0, true);
  void *p = mesh_malloc(total);
  if (p) memset(p, 0, total);
  return p;
}

/* The size a growing realloc asks for: what it was asked, plus a quarter.
 * A block that grows through realloc usually goes on growing (CPython's
 * lists and bytearrays by 1/8 a step, +16 bytes), and every change of small
 * class is a copy: with the headroom about every other step copies instead
 * of every one, and a large block grows by runs of pages, one lock for two
 * steps. The price: a block grown by realloc holds up to a quarter more
 * than asked (usable_size reports it) until it is freed or shrunk. */
static size_t grow_target(size_t size) {
  size_t more = size / 4;
  return size + more < size ? size : size + more;
}

/* A block that realloc grows past this many bytes moves to whole pages (a
 * large block of the arena), where the next growth extends it in place
 * into the free pages after it (arena.c keeps other spans out of that
 * room) instead of copying it into the next small class: growing a block
 * 1/8 a step from 0 to 64 KiB copied 45 KiB with small classes up to
 * 16 KiB, 12 KiB this way. Only realloc's growth does this: a malloc of the
 * same size, or a realloc that shrinks to a small size, takes a small
 * class, which wastes less. Below one page the page would waste more
 * than the copies cost. */
#define REALLOC_PAGED_MIN MESH_PAGE_SIZE

/* Whether a small block of old usable bytes keeps a realloc to size <= old
 * in place: its class is at most the one grow_target(size) would pick. */
static bool small_keeps(size_t old, size_t size) {
  size_t g = grow_target(size);
  if (g >= old) return true; /* realloc's growth steps: no lookup */
  return mesh_class_of(old) <= mesh_class_of(g);
}

/* The size of p if it is a live block of a small span that is not meshed
 * away (realloc's common case, read as the free path reads it), else 0 and
 * block_size_of sorts it out. */
static inline size_t small_block_size(const void *p) {
  uintptr_t off = (uintptr_t)p - _mesh_arena.base;
  if (mesh_unlikely(off >= _mesh_arena.size)) return 0;
  uint64_t pte = mesh_load_relaxed(&_mesh_arena.pagetable[off >> MESH_PAGE_SHIFT]);
  span_t *s = mesh_span((uint32_t)pte);
  uint8_t st = mesh_load_seq_cst(&s->state);
  if (mesh_unlikely((uint8_t)(st - SPAN_ATTACHED) > 2)) return 0;
  const size_class_t *sc = &_mesh_classes[s->cls];
  uintptr_t voff = off - ((uintptr_t)(pte >> 32) << MESH_PAGE_SHIFT);
  uint32_t slot = mesh_slot_at(voff, sc->size, sc->recip, s->nobjects);
  if (mesh_unlikely(slot == MESH_NO_SLOT) || !(mesh_load_relaxed(&s->bits[slot >> 6]) >> (slot & 63) & 1)) return 0;
  return sc->size;
}

/* Moves p (old usable bytes) to a new block of want bytes, or of size if
 * that fails (the headroom is a wish, and its failure leaves errno alone).
 * A growing move past REALLOC_PAGED_MIN takes whole pages. */
static void *realloc_move(void *p, size_t old, size_t size, size_t want) {
  void *q;
  if (want > old && want > REALLOC_PAGED_MIN && want <= MESH_SMALL_MAX) q = _mesh_large_alloc(want, 0, false);
  else q = mesh_malloc_inline(want);
  if (mesh_unlikely(!q) && want != size) {
    int saved = errno;
    q = mesh_malloc_inline(size);
    if (q) errno = saved;
  }
  if (!q) return NULL; /* errno set; p untouched */
  memcpy(q, p, size < old ? size : old);
  mesh_free(p);
  return q;
}

/* Every realloc of a live block p to size > 0 but a small block that
 * stays (mesh_realloc); old is small_block_size(p). */
static MESH_NOINLINE void *realloc_slow(void *p, size_t size, size_t old) {
  if (mesh_likely(old != 0)) {
    if (size <= old) return small_keeps(old, size) ? p : realloc_move(p, old, size, size);
    return realloc_move(p, old, size, grow_target(size));
  }
  bool large;
  old = block_size_of(p, true, &large);
  if (old == 0) {
    errno = EINVAL;
    return NULL;
  }
  /* A large block grows into the free pages after it, or gives back its
   * tail, in place; it is copied only when the pages after it are taken,
   * or to a small class when it shrinks to a small size. A direct block
   * moves with mremap, or out to the heap when it shrinks to small. */
  if (!mesh_in_arena(p)) {
    if (size > MESH_SMALL_MAX) return _mesh_direct_realloc(p, size);
  } else if (!large) { /* a small block of a span meshed away */
    if (size <= old && small_keeps(old, size)) return p;
  } else if (size > old) {
    if (_mesh_large_resize(p, grow_target(size))) return p;
  } else if (size > old / 2 || grow_target(size) > old - MESH_PAGE_SIZE) {
    return p; /* (no bigger than a growing realloc to size makes it: the same size never moves it) */
  } else if (size > MESH_SMALL_MAX) {
    if (_mesh_large_resize(p, size)) return p;
  }
  return realloc_move(p, old, size, size > old ? grow_target(size) : size);
}

/* A small block stays while it is no bigger than a growing realloc to the
 * new size would make it (so the same size never moves a block that grew
 * with headroom): half of a growing block's reallocs, and the only case
 * kept here, so that it saves no registers; one that grows moves with
 * headroom. */
void *mesh_realloc(void *p, size_t size) {
  if (mesh_likely(p != NULL && size != 0)) {
    size_t old = small_block_size(p);
    if (old >= size && grow_target(size) >= old) return p;
    return realloc_slow(p, size, old);
  }
  if (!p) return mesh_malloc(size);
  mesh_free(p); /* glibc: realloc(p, 0) frees and returns NULL */
  return NULL;
}

void *mesh_reallocarray(void *p, size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return mesh_realloc(p, total);
}

static bool pow2(size_t x) { return x && !(x & (x - 1)); }

static void *aligned(size_t align, size_t size) {
  if (align <= MESH_MIN_ALIGN) return mesh_malloc(size);
  mesh_ensure_init();
  int c = _mesh_class_for_aligned(size ? size : 1, align);
  if (c >= 0) return mesh_malloc(_mesh_classes[c].size);
  return _mesh_large_alloc(size, align, false);
}

void *mesh_memalign(size_t align, size_t size) {
  if (!pow2(align)) { /* glibc rounds up; we are stricter only for 0 */
    if (align == 0) return mesh_malloc(size);
    size_t a = 1;
    while (a < align && a) a <<= 1;
    if (!a) { errno = EINVAL; return NULL; }
    align = a;
  }
  return aligned(align, size);
}

int mesh_posix_memalign(void **out, size_t align, size_t size) {
  if (!pow2(align) || align % sizeof(void *) != 0) return EINVAL;
  int saved = errno;
  void *p = aligned(align, size);
  if (!p) {
    errno = saved;
    return ENOMEM;
  }
  *out = p;
  return 0;
}

void *mesh_aligned_alloc(size_t align, size_t size) {
  if (!pow2(align)) {
    errno = EINVAL;
    return NULL;
  }
  return aligned(align, size);
}

void *mesh_valloc(size_t size) { return aligned(MESH_PAGE_SIZE, size); }

void *mesh_pvalloc(size_t size) {
  size_t rounded = (size + MESH_PAGE_SIZE - 1) & ~(MESH_PAGE_SIZE - 1);
  if (rounded < size) {
    errno = ENOMEM;
    return NULL;
  }
  return aligned(MESH_PAGE_SIZE, rounded ? rounded : MESH_PAGE_SIZE);
}

/* ---- heap control ---------------------------------------------------- */

size_t mesh_scavenge(void) {
  mesh_ensure_init();
  _mesh_lock();
  _mesh_heaps_release_spare(); /* what the heaps keep for reuse too */
  size_t n = _mesh_arena_scavenge();
  _mesh_unlock();
  return n;
}

int mesh_check_heap(void) {
  mesh_ensure_init();
  int bad = 0;
  _mesh_lock();
  bad += _mesh_arena_validate();
  bad += _mesh_global_validate();
  _mesh_heap_validate_all(&bad);
  _mesh_unlock();
  return bad;
}

int mesh_meshing_available(void) {
  mesh_ensure_init();
  return _mesh_arena.meshable;
}

const char *mesh_version(void) { return MESH_VERSION_STRING; }
