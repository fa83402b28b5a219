/* mesh.c - one mesh: folding a source span onto a destination span.
 *
 * Two detached spans of one size class *mesh* when their occupancy bitmaps
 * do not overlap: the live objects of the source are copied into the same
 * offsets of the destination, every virtual span of the source is remapped
 * onto the destination's physical pages (held in the memfd), and the
 * source's physical pages are freed. No pointer changes: the source's
 * addresses now reach the same objects through an alias mapping. Which
 * spans mesh, and when, is mesher.c's and pass.c's business; this file
 * makes one mesh, keeps the mapping budget, and pins spans (mesh_pin).
 *
 * One mesh, under the global lock, with the source's bits only ever being
 * cleared (by racing frees) and the destination's never set by anyone else:
 *   0. promote the destination, if it is not yet in the memfd (memfd.c:
 *      write-protected, copied into the memfd at its own page, that range
 *      mapped over it);
 *   1. write-protect every virtual span of the source (barrier.c makes
 *      writers wait; readers are unaffected);
 *   2. snap = source bitmap; destination bitmap |= snap; copy snap's slots;
 *   3. source record becomes SPAN_ALIAS -> destination (seq_cst), the page
 *      table of its virtual spans points at the destination;
 *   4. exchange the source bitmap with 0; bits in snap but no longer in the
 *      source were freed during 2-3 and are cleared in the destination;
 *   5. map each source virtual span onto the destination's memfd pages (this
 *      also lifts the protection and drops the source's anonymous pages),
 *      end the barrier; a source that was itself a destination has its
 *      memfd pages punched.
 * A free racing with this either clears the source bit before step 4 (and
 * step 4 forwards it) or finds the bit gone, sees SPAN_ALIAS and retries on
 * the destination (alloc.c), so no free is lost or reported twice.
 *
 * Budget: mappings are counted exactly (memfd.c) and a mesh is refused,
 * never aborted halfway, before max_mappings.
 *
 * Locking: a mesh, mesh_pin and the budget's limit run under the global
 * lock; the count of the program's other mappings is written without it
 * (relaxed atomics), since reading /proc/self/maps takes milliseconds.
 */
#include "internal.h"

#include <errno.h>

/* The mapping budget. The kernel refuses any new mapping of the process
 * past vm.max_map_count, and then it is someone else's mmap (or our own
 * remap) that fails, so meshing stops well before: at 3/4 of the limit, and
 * never closer to it than 1/8 of the limit counting the mappings the rest of
 * the program holds (counted at start-up and before each compaction). */
static uint64_t map_limit;
static _Atomic(uint64_t) map_others; /* written without the lock */
static _Atomic(uint64_t) map_counted_ns; /* when map_others was counted */

/* Counts the mappings that are not the arena's. Call without the lock (a
 * big /proc/self/maps takes milliseconds to read). */
void _mesh_count_other_mappings(void) {
  long all = _mesh_os_count_maps();
  uint64_t ours = mesh_stat_get(arena_mappings);
  mesh_store_relaxed(&map_others, all > 0 && (uint64_t)all > ours ? (uint64_t)all - ours : 0);
  mesh_store_relaxed(&map_counted_ns, _mesh_os_now_ns());
}

/* The program may have added mappings of its own since they were counted
 * (a free-triggered pass never counts: reading the maps file is too slow
 * for malloc). Once the process nears half the kernel's limit, a count
 * older than MAP_RECOUNT_NS is stale: inline passes stand aside and the
 * meshing thread counts again (outside the lock) before its next pass. */
#define MAP_RECOUNT_NS 500000000u
bool _mesh_mapping_count_stale(void) {
  if (mesh_opt(MESH_OPT_MAX_MAPPINGS) > 0 || !map_limit) return false;
  uint64_t used = mesh_stat_get(arena_mappings) + mesh_load_relaxed(&map_others) + map_limit / 8;
  return used >= map_limit / 2 && _mesh_os_now_ns() - mesh_load_relaxed(&map_counted_ns) >= MAP_RECOUNT_NS;
}

void _mesh_meshing_init(void) {
  map_limit = (uint64_t)_mesh_os_max_map_count();
  mesh_stat_set(arena_mappings, 1);
  mesh_stat_set(arena_mappings_hwm, 1);
  _mesh_count_other_mappings();
}

static uint64_t budget(void) {
  long opt = mesh_opt(MESH_OPT_MAX_MAPPINGS);
  if (opt > 0) return (uint64_t)opt;
  uint64_t share = map_limit / 4 * 3, reserve = mesh_load_relaxed(&map_others) + map_limit / 8;
  uint64_t room = map_limit > reserve ? map_limit - reserve : 0;
  return share < room ? share : room;
}

/* Copies one live object from the write-protected source. The program may
 * have written this object a moment ago from another thread, with no
 * synchronisation a race detector can see: the mprotect (and the kernel's
 * TLB shootdown) is what orders those writes before this read. The copy is
 * therefore kept out of ThreadSanitizer's view, and done by hand so that
 * no intercepted memcpy reports it either. Object sizes are multiples of 16. */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MESH_NO_TSAN __attribute__((no_sanitize("thread")))
#endif
#endif
#ifndef MESH_NO_TSAN
#define MESH_NO_TSAN
#endif
static MESH_NO_TSAN void copy_object(char *to, const char *from, size_t size) {
  uint64_t *d = (uint64_t *)(void *)to;
  const volatile uint64_t *s = (const volatile uint64_t *)(const void *)from;
  for (size_t i = 0; i < size / 8; i++) d[i] = s[i];
}

static bool protect(uint32_t page, uint32_t npages) {
  return _mesh_os_protect_read((void *)mesh_page_addr(page), (size_t)npages << MESH_PAGE_SHIFT) == 0;
}

static void map_or_die(uint32_t vpage, uint32_t n, uint32_t phys) {
  /* Cannot fail within the budget; if it does the heap is inconsistent. */
  if (_mesh_arena_map(vpage, n, phys) != 0)
    _mesh_fatal("meshing: remapping %u pages at page %u failed (errno %d)", n, vpage, errno);
}

/* Step 0's guard: whether a wrapped system call is writing into a virtual
 * span of the source, or into a destination about to be promoted. Asked
 * after the barrier began, so that such a call either is seen here or
 * waits. */
static bool syscall_in_pair(const span_t *d, uint32_t src_id, unsigned nv, uint32_t n) {
  uint32_t vs = src_id;
  bool busy = false;
  for (unsigned i = 0; i < nv && !busy; i++, vs = mesh_span(vs)->alias_next) {
    uintptr_t lo = mesh_page_addr(mesh_span(vs)->page);
    busy = _mesh_syscall_overlaps(lo, lo + ((uintptr_t)n << MESH_PAGE_SHIFT));
  }
  if (!busy && !(d->flags & SPAN_FILE)) {
    uintptr_t lo = mesh_page_addr(d->page);
    busy = _mesh_syscall_overlaps(lo, lo + ((uintptr_t)n << MESH_PAGE_SHIFT));
  }
  return busy;
}

/* Step 1: writers of the source wait from here on. On failure what was
 * protected is made writable again (the destination, promoted, stays so). */
static bool protect_source(uint32_t src_id, unsigned nv, uint32_t n) {
  uint32_t vs = src_id;
  for (unsigned i = 0; i < nv; i++, vs = mesh_span(vs)->alias_next) {
    if (!protect(mesh_span(vs)->page, n)) {
      for (uint32_t u = src_id; u != vs; u = mesh_span(u)->alias_next)
        if (_mesh_os_protect_rw((void *)mesh_page_addr(mesh_span(u)->page), (size_t)n << MESH_PAGE_SHIFT) != 0)
          _mesh_fatal("meshing: cannot make span pages writable again (errno %d)", errno);
      return false;
    }
  }
  return true;
}

/* Step 2: the source's live slots (snap) are marked in the destination
 * and copied there. Returns the bytes copied. */
static uint64_t copy_live(span_t *d, span_t *s, uint64_t snap[MESH_BITMAP_WORDS]) {
  uint32_t size = _mesh_classes[s->cls].size;
  char *from = (char *)mesh_page_addr(s->page), *to = (char *)mesh_page_addr(d->page);
  uint64_t copied = 0;
  for (unsigned w = 0; w < mesh_bitmap_words(s); w++) {
    snap[w] = mesh_load_seq_cst(&s->bits[w]);
    mesh_fetch_or_seq_cst(&d->bits[w], snap[w]);
    for (uint64_t b = snap[w]; b; b &= b - 1) {
      size_t off = (size_t)(w * 64 + (unsigned)__builtin_ctzll(b)) * size;
      copy_object(to + off, from + off, size);
      copied += size;
    }
  }
  return copied;
}

/* Step 3: the source's records become aliases of the destination and its
 * virtual spans' page-table entries name it. Returns the change in kernel
 * mappings that step 5 will make. */
static int redirect_source(uint32_t dst_id, uint32_t src_id, unsigned nv, uint32_t n) {
  span_t *d = mesh_span(dst_id), *s = mesh_span(src_id);
  mesh_store_seq_cst(&s->mesh_dst, dst_id);
  mesh_store_seq_cst(&s->state, SPAN_ALIAS);
  uint32_t vs = src_id;
  int delta = 0;
  for (unsigned i = 0; i < nv; i++, vs = mesh_span(vs)->alias_next) {
    span_t *v = mesh_span(vs);
    if (vs != src_id) mesh_store_seq_cst(&v->mesh_dst, dst_id);
    delta += _mesh_arena_map_delta(v->page, n, d->page);
    _mesh_pagetable_set(v->page, n, v->page, dst_id);
  }
  return delta;
}

/* Step 4: slots freed since the snapshot are cleared in the destination. */
static void forward_frees(span_t *d, span_t *s, const uint64_t snap[MESH_BITMAP_WORDS]) {
  for (unsigned w = 0; w < mesh_bitmap_words(s); w++) {
    uint64_t now = mesh_exchange_seq_cst(&s->bits[w], 0);
    uint64_t freed = snap[w] & ~now;
    if (freed) mesh_fetch_and_seq_cst(&d->bits[w], ~freed);
  }
}

/* Step 5: every virtual span of the source maps the destination's pages.
 * Returns the last record of the source's chain. */
static uint32_t remap_source(const span_t *d, uint32_t src_id, unsigned nv, uint32_t n) {
  uint32_t vs = src_id, last = src_id;
  for (unsigned i = 0; i < nv; i++, vs = mesh_span(vs)->alias_next) {
    map_or_die(mesh_span(vs)->page, n, d->page);
    last = vs;
  }
  return last;
}

/* The source's own pages: anonymous ones went with the mapping that
 * replaced them; a former destination's stay in the memfd until punched. */
static void release_source_file(span_t *s, uint32_t n) {
  if (!(s->flags & SPAN_FILE)) return;
  s->flags &= (uint8_t)~SPAN_FILE;
  mesh_stat_sub(promoted_pages, n);
  if (_mesh_arena_punch(s->page, n) != 0) {
    /* its pages stay allocated in the memfd: meshing would only cost from
     * now on (fallocate refused, e.g. by seccomp) */
    _mesh_warning("meshing: cannot return a meshed span's pages (fallocate errno %d); meshing is off from now on",
                  errno);
    _mesh_arena.meshable = false;
  }
}

/* The source's chain (itself first, last its last record) joins the
 * destination's, and the mesh is counted. */
static void join_chains(span_t *d, uint32_t src_id, uint32_t last, unsigned nv, uint32_t n, int delta,
                        uint64_t copied) {
  mesh_span(last)->alias_next = d->alias_next;
  d->alias_next = src_id;
  d->naliases = (uint8_t)(d->naliases + nv);
  mesh_stat_add(arena_mappings, delta);
  mesh_stat_hwm(arena_mappings_hwm, arena_mappings);
  mesh_stat_add(mesh_count, 1);
  mesh_stat_add(mesh_aliases, 1);
  mesh_stat_add(meshed_pages, n);
  mesh_stat_hwm(meshed_pages_hwm, meshed_pages);
  mesh_stat_add(meshed_pages_total, n);
  mesh_stat_add(mesh_bytes_copied, copied);
  mesh_stat_sub(span_pages, n);
  mesh_stat_sub(spans_live, 1);
  mesh_stat_add(spans_free_count, 1);
  if (delta <= 0) mesh_stat_add(mesh_adjacent, 1);
}

bool _mesh_mesh_pair(uint32_t dst_id, uint32_t src_id) {
  span_t *d = mesh_span(dst_id), *s = mesh_span(src_id);
  uint32_t n = s->npages;
  unsigned nv = mesh_chain_len(s);
  /* +2 for the source's own pages, +2 for promoting the destination */
  if (mesh_stat_get(arena_mappings) + 2ull * nv + 4 > budget()) {
    mesh_stat_add(mesh_budget_stops, 1);
    return false;
  }
  if (!_mesh_arena.meshable || _mesh_arena_fd() < 0) return false; /* meshing stopped in this pass, or orphaned */
  _mesh_barrier_begin();
  if (syscall_in_pair(d, src_id, nv, n)) {
    _mesh_barrier_end();
    mesh_stat_add(syscalls_in_flight_skips, 1);
    return false;
  }
  /* 0. the destination's pages move into the memfd, where the source's
   * virtual spans can map them; 1. the source is write-protected */
  if (!_mesh_arena_promote(dst_id) || !protect_source(src_id, nv, n)) {
    _mesh_barrier_end();
    return false;
  }
  uint64_t snap[MESH_BITMAP_WORDS] = {0};
  uint64_t copied = copy_live(d, s, snap);            /* 2. */
  int delta = redirect_source(dst_id, src_id, nv, n); /* 3. */
  forward_frees(d, s, snap);                          /* 4. */
  uint32_t last = remap_source(d, src_id, nv, n);     /* 5. */
  _mesh_barrier_end();
  release_source_file(s, n);
  join_chains(d, src_id, last, nv, n, delta, copied);
  return true;
}

/* Pins the spans under [addr, addr+len): they are never meshed again, as
 * source or destination (mesh.h: mesh_pin). For a page meshed already, the
 * span holding its objects is pinned (its alias keeps its mapping until
 * that span is freed). Returns the spans pinned. */
size_t mesh_pin(const void *addr, size_t len) {
  uintptr_t a = (uintptr_t)addr, base = _mesh_arena.base;
  if (!len || !base || a + len <= base || a >= base + _mesh_arena.size) return 0;
  mesh_ensure_init();
  uint32_t first = a < base ? 0 : (uint32_t)((a - base) >> MESH_PAGE_SHIFT);
  uintptr_t end = a + len > base + _mesh_arena.size ? base + _mesh_arena.size : a + len;
  uint32_t last = (uint32_t)((end - 1 - base) >> MESH_PAGE_SHIFT);
  size_t pinned = 0;
  _mesh_lock();
  for (uint32_t pg = first; pg <= last && pg < _mesh_arena_top(); pg++) {
    uint32_t id = (uint32_t)mesh_load_relaxed(&_mesh_arena.pagetable[pg]);
    if (!id) continue;
    span_t *s = mesh_span(id); /* for an alias page: the span that holds the objects */
    uint8_t st = mesh_load_relaxed(&s->state);
    if (st != SPAN_ATTACHED && st != SPAN_PARTIAL && st != SPAN_FULL) continue;
    if (!(s->flags & SPAN_PINNED)) s->flags |= SPAN_PINNED, pinned++;
  }
  mesh_stat_add(spans_pinned, pinned);
  _mesh_unlock();
  return pinned;
}
