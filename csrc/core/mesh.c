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
 *   3. map each source virtual span onto the destination's memfd pages
 *      (this also lifts the protection and drops the source's anonymous
 *      pages; writes through it now land in the copies);
 *   4. source record becomes SPAN_ALIAS -> destination (seq_cst), the page
 *      table of its virtual spans points at the destination;
 *   5. exchange the source bitmap with 0; bits in snap but no longer in the
 *      source were freed during 2-4 and are cleared in the destination;
 *      end the barrier; a source that was itself a destination has its
 *      memfd pages punched.
 * A free racing with this either clears the source bit before step 5 (and
 * step 5 forwards it) or finds the bit gone, sees SPAN_ALIAS and retries on
 * the destination (alloc.c), so no free is lost or reported twice.
 *
 * Every mapping call is made before step 4, the first change a racing free
 * can see, so a mesh the kernel refuses halfway is undone, never left half
 * made. The kernel refuses (ENOMEM at vm.max_map_count, which the program's
 * own mappings can reach) before it touches the old mapping, so a failed
 * call leaves that range as it was: a failed promotion or protection is
 * rolled back by lifting what was protected; a failed step 3 gives the
 * virtual spans already remapped their own pages back (undo_remap). Each
 * refusal is counted (mesh_remap_failures) and warned about once. Only a
 * second refusal, of a call that restores the state the kernel had a moment
 * before, is fatal: the heap could not be made consistent again.
 *
 * Budget: mappings are counted exactly (memfd.c) and a mesh is refused
 * before max_mappings.
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
 * the program holds (counted at start-up, before each compaction, and by
 * the meshing thread: see _mesh_mapping_recount_due). */
static uint64_t map_limit;
static _Atomic(uint64_t) map_others; /* written without the lock */
static _Atomic(uint64_t) map_counted_ns; /* when map_others was counted */
static _Atomic(uint64_t) map_counted_ours; /* arena_mappings then */

/* Counts the mappings that are not the arena's. Call without the lock (a
 * big /proc/self/maps takes milliseconds to read). */
void _mesh_count_other_mappings(void) {
  long all = _mesh_os_count_maps();
  uint64_t ours = mesh_stat_get(arena_mappings);
  mesh_store_relaxed(&map_others, all > 0 && (uint64_t)all > ours ? (uint64_t)all - ours : 0);
  mesh_store_relaxed(&map_counted_ours, ours);
  mesh_store_relaxed(&map_counted_ns, _mesh_os_now_ns());
}

/* Whether the meshing thread should count again as a sweep ends. The count
 * matters only for what meshing may add: the budget it sets is spent by
 * new mappings of the arena. So it is taken again once the arena added
 * 1/64 of the kernel's limit since the last count (bounding what meshing
 * can add on a stale count), and at least every MAP_REFRESH_NS; not at
 * every sweep, as a sweep of a heap that meshes nothing would then read
 * the whole maps file for nothing. */
#define MAP_REFRESH_NS 10000000000ull
bool _mesh_mapping_recount_due(void) {
  if (mesh_opt(MESH_OPT_MAX_MAPPINGS) > 0 || !map_limit) return false;
  uint64_t grown = mesh_stat_get(arena_mappings) - mesh_load_relaxed(&map_counted_ours);
  return (int64_t)grown >= (int64_t)(map_limit / 64) ||
         _mesh_os_now_ns() - mesh_load_relaxed(&map_counted_ns) >= MAP_REFRESH_NS;
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

/* A mapping call of a mesh was refused and the mesh undone. */
static void note_refusal(void) {
  mesh_stat_add(mesh_remap_failures, 1);
  _mesh_warning("meshing: the kernel refused a mapping call (errno %d; the mapping limit?); that mesh was undone "
                "and meshing goes on", errno);
}

/* Lifts the protection meshing put on a virtual span (the state it had a
 * moment before: a refusal here cannot be undone). */
static void unprotect_or_die(uint32_t page, uint32_t n) {
  if (_mesh_os_protect_rw((void *)mesh_page_addr(page), (size_t)n << MESH_PAGE_SHIFT) != 0)
    _mesh_fatal("meshing: cannot make span pages writable again (errno %d)", errno);
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
      note_refusal();
      for (uint32_t u = src_id; u != vs; u = mesh_span(u)->alias_next) unprotect_or_die(mesh_span(u)->page, n);
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

/* Step 4: the source's records become aliases of the destination and its
 * virtual spans' page-table entries name it. Returns the change in kernel
 * mappings that step 3 made. */
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

/* Step 5: slots freed since the snapshot are cleared in the destination. */
static void forward_frees(span_t *d, span_t *s, const uint64_t snap[MESH_BITMAP_WORDS]) {
  for (unsigned w = 0; w < mesh_bitmap_words(s); w++) {
    uint64_t now = mesh_exchange_seq_cst(&s->bits[w], 0);
    uint64_t freed = snap[w] & ~now;
    if (freed) mesh_fetch_and_seq_cst(&d->bits[w], ~freed);
  }
}

/* Step 3: every virtual span of the source maps the destination's pages.
 * Returns how many do: nv, or the index of the one the kernel refused. */
static unsigned remap_source(const span_t *d, uint32_t src_id, unsigned nv, uint32_t n) {
  uint32_t vs = src_id;
  for (unsigned i = 0; i < nv; i++, vs = mesh_span(vs)->alias_next)
    if (_mesh_arena_map(mesh_span(vs)->page, n, d->page) != 0) return i;
  return nv;
}

/* Step 3 was refused at virtual span `failed` of the source's chain; no
 * record has changed yet, and that span still maps its old pages. The
 * spans before it map the destination's pages, writable, so the latest
 * data of the source's objects is there: those spans are protected again,
 * the objects written back into the source's memfd pages (a source with
 * more than one virtual span is a destination itself), and the spans
 * mapped onto those pages again; the rest get write permission back, and
 * the destination forgets the copied slots. A free racing this only ever
 * saw the source (its bits, its page-table entries). */
static void undo_remap(span_t *d, span_t *s, uint32_t src_id, unsigned failed, uint32_t n,
                       const uint64_t snap[MESH_BITMAP_WORDS]) {
  note_refusal();
  uint32_t vs = src_id;
  unsigned i = 0;
  if (failed > 0) {
    for (; i < failed; i++, vs = mesh_span(vs)->alias_next)
      if (!protect(mesh_span(vs)->page, n)) _mesh_fatal("meshing: cannot undo a refused remapping (errno %d)", errno);
    uint32_t size = _mesh_classes[s->cls].size;
    const char *from = (const char *)mesh_page_addr(d->page);
    int fd = _mesh_arena_fd();
    for (unsigned w = 0; w < mesh_bitmap_words(s); w++)
      for (uint64_t b = snap[w]; b; b &= b - 1) {
        size_t off = (size_t)(w * 64 + (unsigned)__builtin_ctzll(b)) * size;
        if (fd < 0 || _mesh_os_pwrite_all(fd, from + off, size, ((size_t)s->page << MESH_PAGE_SHIFT) + off) != 0)
          _mesh_fatal("meshing: cannot undo a refused remapping (errno %d)", errno);
      }
    vs = src_id;
    for (i = 0; i < failed; i++, vs = mesh_span(vs)->alias_next)
      if (_mesh_arena_map(mesh_span(vs)->page, n, s->page) != 0)
        _mesh_fatal("meshing: cannot undo a refused remapping (errno %d)", errno);
  }
  for (; vs; vs = mesh_span(vs)->alias_next) unprotect_or_die(mesh_span(vs)->page, n);
  for (unsigned w = 0; w < mesh_bitmap_words(s); w++)
    if (snap[w]) mesh_fetch_and_seq_cst(&d->bits[w], ~snap[w]);
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
static void join_chains(span_t *d, uint32_t src_id, unsigned nv, uint32_t n, int delta, uint64_t copied) {
  uint32_t last = src_id;
  while (mesh_span(last)->alias_next) last = mesh_span(last)->alias_next;
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
  uint64_t copied = copy_live(d, s, snap); /* 2. */
  unsigned mapped = remap_source(d, src_id, nv, n); /* 3. */
  if (mapped < nv) {
    undo_remap(d, s, src_id, mapped, n, snap);
    _mesh_barrier_end();
    return false;
  }
  int delta = redirect_source(dst_id, src_id, nv, n); /* 4. */
  forward_frees(d, s, snap);                          /* 5. */
  _mesh_barrier_end();
  release_source_file(s, n);
  join_chains(d, src_id, nv, n, delta, copied);
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
