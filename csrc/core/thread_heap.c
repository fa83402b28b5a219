/* thread_heap.c - per-thread heaps: creation, refill, thread exit, fork.
 *
 * Each thread's TLS holds a pointer to its heap; until its first
 * allocation it points at _mesh_empty_heap, a sentinel whose vectors are
 * all empty, so the malloc fast path needs no NULL check. The heap is
 * registered with a pthread key whose destructor detaches every span at
 * thread exit and parks the heap in a pool for the next thread.
 *
 * A thread whose heap is gone (allocating from a later TLS destructor) or
 * still being created (pthread_setspecific may allocate) uses the orphan
 * heap under _mesh_orphan_lock: slower, never wrong.
 *
 * Locking: a heap's vectors are touched only by its thread (or under
 * _mesh_orphan_lock for the orphan heap); the registry and pool are under
 * _mesh_global_lock. Stats readers load the per-class counters relaxed.
 */
#include "internal.h"
#include "shuffle_vector.h"

#include <errno.h>

__thread struct mesh_tls_s _mesh_tls __attribute__((tls_model("initial-exec"))) = {.heap = &_mesh_empty_heap,
                                                                                    .state = MESH_TLS_NONE};
thread_heap_t _mesh_empty_heap = {.id = MESH_OWNER_SENTINEL};
pthread_mutex_t _mesh_orphan_lock = PTHREAD_MUTEX_INITIALIZER;

static pthread_key_t heap_key;
static thread_heap_t *all_heaps;   /* (lock) */
static thread_heap_t *heap_pool;   /* (lock) released heaps */
/* Created on first use, under the orphan lock (most processes never need
 * it: a heap is 208 KiB of address space); read by the validators and fork under the global
 * lock, hence atomic. */
static thread_heap_t *_Atomic orphan_heap;
static uint32_t next_heap_id = 1;  /* (lock) */

static size_t heap_bytes(void) {
  return (sizeof(thread_heap_t) + MESH_PAGE_SIZE - 1) & ~(MESH_PAGE_SIZE - 1);
}

/* Lock held. */
static thread_heap_t *heap_new(void) {
  thread_heap_t *h = heap_pool;
  if (h) {
    heap_pool = h->pool_next;
  } else {
    h = _mesh_os_alloc(heap_bytes()); /* zeroed */
    if (!h) return NULL;
    h->id = next_heap_id++;
    h->all_next = all_heaps;
    all_heaps = h;
    /* the vectors are set up by their first refill (_mesh_heap_sv_prepare):
     * the pages of classes a thread never uses are never touched */
    mesh_stat_add(thread_heaps_created, 1);
    mesh_stat_add(thread_heap_bytes, offsetof(thread_heap_t, sv));
  }
  h->rng = _mesh_random_seed();
  h->shuffle = (uint16_t)mesh_opt(MESH_OPT_SHUFFLE);
  h->live = 1;
  mesh_stat_add(thread_heaps_live, 1);
  return h;
}

void _mesh_heap_sv_prepare(shuffle_vector_t *sv, unsigned cls) {
  if (sv->size) return;
  sv->cls = (uint8_t)cls;
  sv->size = _mesh_classes[cls].size;
  sv->recip = _mesh_classes[cls].recip;
  mesh_stat_add(thread_heap_bytes, MESH_SV_USED_BYTES);
}

/* Lock held. */
static void heap_retire(thread_heap_t *h) {
  _mesh_global_detach_all(h);
  h->live = 0;
  h->pool_next = heap_pool;
  heap_pool = h;
  mesh_stat_sub(thread_heaps_live, 1);
}

static void thread_exit(void *arg) {
  thread_heap_t *h = arg;
  _mesh_lock();
  heap_retire(h);
  _mesh_unlock();
  _mesh_tls.heap = &_mesh_empty_heap;
  _mesh_tls.state = MESH_TLS_DEAD;
}

void _mesh_thread_heaps_init(void) {
  if (pthread_key_create(&heap_key, thread_exit) != 0)
    _mesh_warning("pthread_key_create failed: thread heaps are not returned at thread exit");
}

/* The orphan heap, created the first time a thread needs it. Orphan lock
 * held (taken before the global lock, the lock order). */
static thread_heap_t *orphan_heap_get(void) {
  thread_heap_t *h = mesh_load_relaxed(&orphan_heap);
  if (h) return h;
  _mesh_lock();
  h = heap_new();
  if (h) mesh_stat_sub(thread_heaps_live, 1); /* not a thread */
  mesh_store_release(&orphan_heap, h);
  _mesh_unlock();
  return h;
}

/* Takes back the slots other threads freed in the class's attached spans
 * (their bits are clear) and puts them in the vector, keyed. Called only
 * with an empty vector (heap_alloc_small), so no slot taken can be in it
 * already: a free by another thread of a slot sitting in the vector is
 * refused (mesh_free_shared_try), so every clear bit is a slot outside. */
unsigned _mesh_heap_reclaim(thread_heap_t *h, shuffle_vector_t *sv) {
  sv_gathered_t g;
  unsigned got = 0;
  mesh_assert(mesh_load_relaxed(&sv->len) == 0);
  for (unsigned a = 0; a < sv->natt; a++) {
    span_t *s = mesh_span(sv->att[a].span);
    unsigned n = 0;
    for (unsigned w = 0; w < MESH_BITMAP_WORDS; w++) {
      g.bits[a][w] = 0;
      if (w >= mesh_bitmap_words(s)) continue;
      uint64_t mask = mesh_bitmap_mask(s, w);
      if ((mesh_load_relaxed(&s->bits[w]) & mask) == mask) continue; /* nothing freed: skip the RMW */
      uint64_t taken = mask & ~mesh_fetch_or_acq_rel(&s->bits[w], mask);
      g.bits[a][w] = taken;
      n += (unsigned)mesh_popcount64(taken);
    }
    g.count[a] = (uint16_t)n;
    got += n;
  }
  if (got) mesh_sv_fill(h, sv, &g);
  return got;
}

static void *heap_alloc_small(thread_heap_t *h, unsigned cls) {
  shuffle_vector_t *sv = &h->sv[cls];
  if (mesh_load_relaxed(&sv->len) == 0 && _mesh_heap_reclaim(h, sv) == 0) {
    if (!_mesh_global_refill(h, cls) || _mesh_heap_reclaim(h, sv) == 0) {
      errno = ENOMEM;
      return NULL;
    }
  }
  return mesh_sv_try_pop(sv);
}

static thread_heap_t *heap_create_for_thread(void) {
  _mesh_tls.state = MESH_TLS_CREATING;
  _mesh_lock();
  thread_heap_t *h = heap_new();
  _mesh_unlock();
  if (!h) {
    _mesh_tls.state = MESH_TLS_NONE;
    return NULL;
  }
  /* may allocate (keys past the first block): that goes to the orphan heap */
  pthread_setspecific(heap_key, h);
  /* types.h, "Store and load zones": holds if the loader honours the TLS
   * block's alignment (only speed depends on it) */
  mesh_assert((uintptr_t)&_mesh_tls.heap % 64 == offsetof(struct mesh_tls_s, heap));
  _mesh_tls.heap = h;
  _mesh_tls.state = MESH_TLS_LIVE;
  return h;
}

void *_mesh_heap_alloc_slow(size_t size) {
  mesh_ensure_init();
  /* before anything changes: pthread_create may call malloc (no malloc
   * runs under glibc's stack cache lock: see mesh_mesher_poll_free) */
  mesh_mesher_poll();
  if (size > MESH_SMALL_MAX) return _mesh_large_alloc(size, 0, false);
  unsigned cls = mesh_class_of(size);
  thread_heap_t *h = _mesh_tls.heap;
  if (h == &_mesh_empty_heap && _mesh_tls.state == MESH_TLS_NONE) h = heap_create_for_thread();
  if (h && h != &_mesh_empty_heap) return heap_alloc_small(h, cls);
  pthread_mutex_lock(&_mesh_orphan_lock);
  thread_heap_t *o = orphan_heap_get();
  void *p = NULL;
  if (o)
    p = heap_alloc_small(o, cls);
  else
    errno = ENOMEM;
  pthread_mutex_unlock(&_mesh_orphan_lock);
  mesh_stat_add(orphan_allocs, 1);
  return p;
}

static _Atomic uint64_t face_counts_shared[MESH_FACE_COUNTS];

void _mesh_face_count_shared(unsigned k) { mesh_fetch_add_relaxed(&face_counts_shared[k], 1); }

void _mesh_heaps_face_counts(uint64_t out[MESH_FACE_COUNTS]) {
  for (unsigned k = 0; k < MESH_FACE_COUNTS; k++) out[k] = mesh_load_relaxed(&face_counts_shared[k]);
  _mesh_lock();
  for (thread_heap_t *h = all_heaps; h; h = h->all_next)
    for (unsigned k = 0; k < MESH_FACE_COUNTS; k++) out[k] += mesh_load_relaxed(mesh_face_count(h, k));
  _mesh_unlock();
}

/* Live small objects, counted when asked instead of on every malloc and
 * free: bits set in live small spans, less the slots that sit in some
 * vector (set in an attached span's bitmap but free). Lock held; vectors of
 * running threads are read racily, so the figure is approximate while they
 * allocate. */
void _mesh_heap_class_stats(mesh_class_stats_t out[MESH_NUM_CLASSES]) {
  for (unsigned c = 0; c < MESH_NUM_CLASSES; c++) {
    const size_class_t *sc = &_mesh_classes[c];
    out[c] = (mesh_class_stats_t){.object_size = sc->size, .span_bytes = (uint64_t)sc->npages * MESH_PAGE_SIZE};
  }
  uint32_t top = _mesh_arena_top();
  for (uint32_t pg = 0; pg < top;) {
    uint64_t e = mesh_load_relaxed(&_mesh_arena.pagetable[pg]);
    span_t *s = mesh_span((uint32_t)e);
    uint32_t n = s->npages ? s->npages : 1;
    uint8_t st = mesh_load_relaxed(&s->state);
    if ((uint32_t)e && s->page == pg && (st == SPAN_ATTACHED || st == SPAN_PARTIAL || st == SPAN_FULL)) {
      mesh_class_stats_t *o = &out[s->cls];
      o->spans++;
      o->spans_attached += st == SPAN_ATTACHED;
      o->spans_partial += st == SPAN_PARTIAL;
      o->spans_full += st == SPAN_FULL;
      o->slots += s->nobjects;
      o->objects_in_use += _mesh_span_live(s);
      o->meshed_spans += s->naliases;
    }
    pg += n;
  }
  /* attached spans' bits are set for the slots their vectors hold too */
  for (thread_heap_t *h = all_heaps; h; h = h->all_next)
    for (unsigned c = 0; c < MESH_NUM_CLASSES; c++) {
      uint64_t k = mesh_load_relaxed(&h->sv[c].len);
      out[c].objects_in_use -= k < out[c].objects_in_use ? k : out[c].objects_in_use; /* a racing vector */
    }
}

/* The same figure from what is kept per class: the detached spans' live
 * objects (global_heap.c: FULL spans by count, the occupancy bins' bitmaps,
 * never the empty spans) and the bitmaps of the attached and the kept
 * spans, less the vectors. Its cost grows with the partial, attached and
 * kept spans, not with the heap: the stats page publishes it every half
 * second. */
void _mesh_heap_objects_in_use(uint64_t out[MESH_NUM_CLASSES]) {
  for (unsigned c = 0; c < MESH_NUM_CLASSES; c++) out[c] = _mesh_global_live(c);
  /* attachments and kept lists change only under the lock: stable here */
  for (thread_heap_t *h = all_heaps; h; h = h->all_next)
    for (unsigned c = 0; c < MESH_NUM_CLASSES; c++) {
      for (unsigned a = 0; a < h->sv[c].natt; a++) out[c] += _mesh_span_live(mesh_span(h->sv[c].att[a].span));
      for (uint32_t id = h->kept[c]; id; id = mesh_span(id)->next) out[c] += _mesh_span_live(mesh_span(id));
    }
  for (thread_heap_t *h = all_heaps; h; h = h->all_next)
    for (unsigned c = 0; c < MESH_NUM_CLASSES; c++) {
      uint64_t k = mesh_load_relaxed(&h->sv[c].len);
      out[c] -= k < out[c] ? k : out[c]; /* a racing vector */
    }
}

static int heap_validate(thread_heap_t *h) {
  int bad = 0;
#define BAD(fmt, ...) do { bad++; _mesh_dprintf(2, "meshalloc: check: heap %u: " fmt, h->id, ##__VA_ARGS__); } while (0)
  for (unsigned c = 0; c < MESH_NUM_CLASSES; c++) {
    shuffle_vector_t *sv = &h->sv[c];
    uint32_t len = mesh_load_relaxed(&sv->len);
    if (sv->natt > MESH_MAX_ATTACHED || len > MESH_VECTOR_CAPACITY) { BAD("class %u sizes\n", c); continue; }
    for (unsigned a = 0; a < sv->natt; a++) {
      span_t *s = mesh_span(sv->att[a].span);
      if (mesh_load_relaxed(&s->state) != SPAN_ATTACHED || mesh_load_relaxed(&s->owner) != h->id ||
          mesh_load_relaxed(&s->att) != a || s->cls != c || sv->att[a].base != mesh_page_addr(s->page) ||
          sv->att[a].bits != s->bits)
        BAD("class %u attachment %u (span %u) is inconsistent\n", c, a, sv->att[a].span);
    }
    /* each entry a slot of an attached span, free in its bitmap's sense
     * (bit set), keyed, and in the vector once */
    uint64_t seen[MESH_MAX_ATTACHED][MESH_BITMAP_WORDS] = {{0}};
    for (unsigned i = 0; i < len; i++) {
      unsigned slot;
      int a = mesh_sv_locate(sv, sv->entries[i], &slot);
      if (a < 0) {
        BAD("class %u: entry %u (%p) is not a slot of an attached span\n", c, i, (void *)sv->entries[i]);
        break;
      }
      uint64_t bit = 1ull << (slot & 63);
      if (seen[a][slot >> 6] & bit) BAD("class %u: slot %u/%u is in the vector twice\n", c, a, slot);
      seen[a][slot >> 6] |= bit;
      if (!(mesh_load_relaxed(&sv->att[a].bits[slot >> 6]) & bit))
        BAD("class %u: vector slot %u/%u not marked in the span bitmap\n", c, a, slot);
      if (*mesh_slot_key(sv->entries[i]) != _mesh_arena.free_key)
        BAD("class %u: vector slot %u/%u does not hold the free key\n", c, a, slot);
    }
  }
#undef BAD
  return bad;
}

/* h's kept spans: empty, detached, of their list's class, their pages
 * counted (none in a heap no thread holds). Adds the pages to *pages. */
static int kept_validate(thread_heap_t *h, uint64_t *pages) {
  int bad = 0;
  uint32_t n = 0, empty = 0;
  for (unsigned c = 0; c < MESH_NUM_CLASSES; c++)
    for (uint32_t id = h->kept[c], k = 0; id; id = mesh_span(id)->next) {
      span_t *s = mesh_span(id);
      unsigned live = _mesh_span_live(s);
      if (mesh_load_relaxed(&s->state) != SPAN_PARTIAL || !mesh_bin_kept(s->bin) || s->cls != c ||
          mesh_load_relaxed(&s->owner) != MESH_OWNER_NONE || live >= s->nobjects ||
          (s->bin == MESH_BIN_KEPT && live) || ++k > MESH_KEPT_PAGES) {
        bad++;
        _mesh_dprintf(2, "meshalloc: check: heap %u: kept span %u of class %u is inconsistent\n", h->id, id, c);
        break;
      }
      n += s->npages;
      if (s->bin == MESH_BIN_KEPT) empty += s->npages;
    }
  if (n != h->kept_pages || (n && !h->live)) {
    bad++;
    _mesh_dprintf(2, "meshalloc: check: heap %u keeps %u pages, counts %u\n", h->id, n, h->kept_pages);
  }
  *pages += empty;
  return bad;
}

/* Lock held; other threads should be quiet (their vectors are read racily). */
void _mesh_heap_validate_all(int *problems) {
  uint64_t kept = 0;
  for (thread_heap_t *h = all_heaps; h; h = h->all_next) {
    if (h->live || h == mesh_load_acquire(&orphan_heap)) *problems += heap_validate(h);
    *problems += kept_validate(h, &kept);
  }
  if (kept != mesh_stat_get(kept_pages)) {
    ++*problems;
    _mesh_dprintf(2, "meshalloc: check: heaps keep %llu pages, kept_pages says %llu\n", (unsigned long long)kept,
                  (unsigned long long)mesh_stat_get(kept_pages));
  }
}

void _mesh_heaps_release_spare(void) {
  _mesh_large_unpark();
  for (thread_heap_t *h = all_heaps; h; h = h->all_next) _mesh_global_release_kept(h);
}

/* In a fork child only the forking thread survives: every other thread
 * heap is orphaned. Their vectors may be mid-update (the threads were
 * running, without the global lock when they pushed, popped or
 * reclaimed), so detach (global_heap.c) trusts an entry below len only if
 * it names a slot of an attached span that holds the free key: a push or a
 * fill stores the key and the entry before the len that publishes them
 * (release), and a pop stores len, then 0 over the key, both before it
 * returns the block, so a block the thread had handed out is below len
 * with its key gone, or above len (the program's stores that publish the
 * block come after both). A slot in flight is then either trusted while
 * still free (its thread never handed it out) or left out: its bit stays
 * set, leaked in the child, never handed out twice. Duplicate entries
 * collapse in detach's bitmap. */
void _mesh_heaps_after_fork_child(void) {
  pthread_mutex_init(&_mesh_orphan_lock, NULL);
  thread_heap_t *mine = _mesh_tls.heap;
  for (thread_heap_t *h = all_heaps; h; h = h->all_next) {
    if (!h->live || h == mine || h == mesh_load_acquire(&orphan_heap)) continue;
    heap_retire(h);
  }
  /* keys survive fork; the current thread keeps its heap */
}
