/* arena.c - the meshable arena: one reserved virtual range of private
 * anonymous memory, carved into spans and free page runs, plus a memfd that
 * holds the physical pages of meshing destinations.
 *
 * Backing. A span's pages are private anonymous memory until meshing makes
 * it a destination: it is then promoted (its pages copied into the memfd at
 * the memfd page equal to its arena page, and that file range mapped shared
 * over it; SPAN_FILE), so that the virtual spans meshed onto it (aliases)
 * can map the same pages. Everything else never touches the memfd: a fork
 * child shares it copy-on-write through the kernel, exactly, and only the
 * memfd's pages need a copy of their own (fork.c). A destination that is
 * freed, and every alias, get fresh anonymous pages back.
 *
 * Invariants (checked by _mesh_arena_validate):
 *   - pages [0, top) are tiled exactly by span records: walking from page 0
 *     by each record's npages visits every live span and free run once;
 *   - every page of a live span has page-table entry (vstart << 32 | id);
 *     a free run has entries only on its first and last page, its interior
 *     is 0, so a stray free into free memory finds "no span";
 *   - pages >= top were never handed out and are untouched anonymous memory;
 *   - only live spans carry SPAN_FILE; every alias's destination does; free
 *     runs are anonymous; promoted_pages counts the SPAN_FILE pages;
 *   - free runs are homogeneous: all dirty (touched, still committed) or all
 *     clean (returned/never used); neighbours of the same kind are merged;
 *   - dirty_pages <= max_dirty_mb after every free (scavenge returns all).
 *
 * Locking: everything that changes state runs under _mesh_global_lock. The
 * page table is read without a lock (relaxed loads) by free paths: a legal
 * free only reads entries of a span that cannot change while it has a live
 * object.
 */
#include "internal.h"

#include <errno.h>

arena_t _mesh_arena = {.fd = -1};

static uint32_t top;                 /* bump pointer in pages */
static uint32_t rec_top = 1;         /* span records ever used; id 0 is nil */
static uint32_t rec_free = MESH_NIL; /* recycled records, linked by next */
static uint32_t free_bins[2][MESH_FREE_BINS]; /* [dirty][bin] list heads */
static uint64_t free_bins_nonempty[2];

#define MIN_ARENA ((size_t)16 << 20)

/* Address space left unused above the arena. The kernel places the arena
 * right under the mapping before it (ld.so's, with the thread-local block
 * and libc's data), so with a power-of-two arena size the first spans sat
 * exactly 2^k below those lines: the same low 28 address bits, hence the
 * same L1 set and the same way-predictor tag on AMD, and a block there
 * evicted the thread-local heap pointer on every access (+5 ns a
 * malloc/free pair in 3 of 50 processes of perf/micro bench a, for the
 * 64-byte class). This odd-sized gap (~43 MiB, bits 13-25 mixed) moves the
 * mirror of those lines far from where a heap starts. */
#define ARENA_GUARD ((size_t)0x2B5A << MESH_PAGE_SHIFT)

/* ---- the memfd's descriptor ------------------------------------------
 *
 * The descriptor is a number in the program's table: the program may close
 * it (closerange, a daemonizer closing everything) and the number may then
 * be reused for one of its own files. Every use of it is preceded by a check
 * that it still names the arena's memfd (device and inode, recorded at
 * creation). When it does not, the arena is orphaned: the number is never
 * used again (not even closed: it may be the program's file now), meshing
 * stops, and what still needs the memfd manages without: existing
 * destinations and aliases keep their mappings, freed ones get anonymous
 * pages, a destination's memfd pages are returned through its mapping
 * (MADV_REMOVE), and a fork child gets an anonymous copy of them.
 * Locking: called with the global lock held (or in the fork child). */
static void orphan(int fd) {
  _mesh_arena.fd = -1;
  _mesh_arena.meshable = false;
  _mesh_warning("the arena's memfd (descriptor %d) was closed or replaced by the program; meshing is off "
                "from now on, and that descriptor is left alone", fd);
}

int _mesh_arena_fd(void) {
  int fd = _mesh_arena.fd;
  if (fd < 0) return -1;
  uint64_t id[2];
  if (_mesh_os_fd_identity(fd, id) != 0 || id[0] != _mesh_arena.fd_id[0] || id[1] != _mesh_arena.fd_id[1]) {
    orphan(fd);
    return -1;
  }
  return fd;
}

/* Returns [off, off+len) of the memfd to the OS. own_mapping: the range is
 * mapped at its own offsets (a live destination), so an orphaned arena can
 * still free it through the mapping; otherwise (a former destination now
 * mapped elsewhere) it is reachable only through the descriptor, and
 * without one it stays. */
static int punch(size_t off, size_t len, bool own_mapping) {
  void *addr = (void *)(_mesh_arena.base + off);
  int fd = _mesh_arena_fd();
  if (fd >= 0 || !_mesh_arena.memfd_mapped) {
    int rc = _mesh_os_punch(fd, addr, off, len);
    /* fallocate refused (seccomp, a filesystem without holes): a range
     * mapped at its own offsets can still be freed through its mapping */
    if (rc != 0 && fd >= 0 && own_mapping) rc = _mesh_os_remove(addr, len);
    return rc;
  }
  return own_mapping ? _mesh_os_remove(addr, len) : 0;
}

static bool reserve(size_t size, int fd) {
  if (fd >= 0 && _mesh_os_ftruncate(fd, size) != 0) return false;
  /* no gap under an address-space limit: it would count against it */
  size_t guard = _mesh_os_as_limit() == SIZE_MAX ? ARENA_GUARD : 0;
  void *base = _mesh_os_reserve_guarded(size, guard, -1);
  if (!base) { /* a tight address-space limit: without the gap, then */
    guard = 0;
    base = _mesh_os_reserve(size, -1);
  }
  if (!base) return false;
  size_t npages = size >> MESH_PAGE_SHIFT;
  void *pt = _mesh_os_alloc(npages * sizeof(pte_t));
  void *sp = _mesh_os_alloc((npages + 2) * sizeof(span_t));
  if (!pt || !sp) {
    if (pt) _mesh_os_free(pt, npages * sizeof(pte_t));
    if (sp) _mesh_os_free(sp, (npages + 2) * sizeof(span_t));
    _mesh_os_free(base, size + guard);
    return false;
  }
  _mesh_arena.base = (uintptr_t)base;
  _mesh_arena.size = size;
  _mesh_arena.npages = (uint32_t)npages;
  _mesh_arena.fd = fd;
  _mesh_arena.meshable = fd >= 0;
  _mesh_arena.memfd_mapped = fd >= 0;
  _mesh_arena.pagetable = pt;
  _mesh_arena.spans = sp;
  _mesh_arena.max_spans = (uint32_t)npages + 2;
  return true;
}

bool _mesh_arena_init(void) {
  size_t want = (size_t)mesh_opt(MESH_OPT_ARENA_GB) << 30;
  if (want > ((size_t)1 << 44)) want = (size_t)1 << 44; /* 2^32 pages of 4 KiB */
  size_t limit = _mesh_os_as_limit();
  size_t size = want;
  /* Leave most of a finite address-space limit to the program itself. */
  if (limit != SIZE_MAX && size > limit / 4) size = limit / 4;
  size &= ~(MESH_PAGE_SIZE - 1);

  int fd = -1;
  if (mesh_opt(MESH_OPT_MEMFD)) {
    fd = _mesh_os_memfd();
    if (fd >= 0 && _mesh_os_fd_identity(fd, _mesh_arena.fd_id) != 0) {
      _mesh_os_close(fd);
      fd = -1;
    }
    if (fd < 0)
      _mesh_warning("memfd_create failed (errno %d): running without meshing", errno);
  } else {
    _mesh_warning("MESH_MEMFD=0: anonymous arena, running without meshing");
  }
  for (; size >= MIN_ARENA; size = (size / 2) & ~(MESH_PAGE_SIZE - 1)) {
    if (reserve(size, fd)) break;
    /* A memfd that cannot be sized (odd seccomp/limits) is given up before
     * shrinking to nothing: anonymous memory still works. */
    if (fd >= 0 && size / 2 < MIN_ARENA) {
      _mesh_warning("cannot size the arena's memfd (errno %d): running without meshing", errno);
      _mesh_os_close(fd);
      fd = -1;
      size = want * 2;
      if (limit != SIZE_MAX && size > limit / 2) size = limit / 2;
    }
  }
  if (!_mesh_arena.base) return false;
  if (size < want)
    _mesh_warning("arena reduced to %zu MiB (address-space limit); large blocks beyond it are mapped on their own",
                  size >> 20);
  return true;
}

/* ---- span records -------------------------------------------------- */

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

void _mesh_pagetable_set(uint32_t first, uint32_t npages, uint32_t vstart, uint32_t id) {
  uint64_t e = id == MESH_NIL ? 0 : ((uint64_t)vstart << 32) | id;
  for (uint32_t i = 0; i < npages; i++) mesh_store_relaxed(&_mesh_arena.pagetable[first + i], e);
}

/* ---- free page runs ------------------------------------------------ */

static unsigned free_bin_of(uint32_t npages) {
  if (npages <= 32) return npages - 1;
  unsigned lg = 31u - (unsigned)__builtin_clz(npages); /* >= 5 */
  unsigned b = 32 + lg - 5;
  return b < MESH_FREE_BINS ? b : MESH_FREE_BINS - 1;
}

static bool run_dirty(const span_t *r) { return mesh_load_relaxed(&r->bits[0]) != 0; }

static void run_link(uint32_t id) {
  span_t *r = mesh_span(id);
  unsigned d = run_dirty(r), b = free_bin_of(r->npages);
  r->bin = (uint8_t)b;
  r->prev = MESH_NIL;
  r->next = free_bins[d][b];
  if (r->next) mesh_span(r->next)->prev = id;
  free_bins[d][b] = id;
  free_bins_nonempty[d] |= 1ull << b;
  /* boundary entries let neighbours find this run when they are freed */
  _mesh_pagetable_set(r->page, 1, r->page, id);
  _mesh_pagetable_set(r->page + r->npages - 1, 1, r->page, id);
}

static void run_unlink(uint32_t id) {
  span_t *r = mesh_span(id);
  unsigned d = run_dirty(r), b = r->bin;
  if (r->prev) mesh_span(r->prev)->next = r->next;
  else free_bins[d][b] = r->next;
  if (r->next) mesh_span(r->next)->prev = r->prev;
  if (!free_bins[d][b]) free_bins_nonempty[d] &= ~(1ull << b);
  _mesh_pagetable_set(r->page, 1, 0, MESH_NIL);
  _mesh_pagetable_set(r->page + r->npages - 1, 1, 0, MESH_NIL);
}

/* The free run of the same dirtiness that ends right before page, if any. */
static uint32_t run_ending_at(uint32_t page, bool dirty) {
  if (page == 0) return MESH_NIL;
  uint32_t id = (uint32_t)mesh_load_relaxed(&_mesh_arena.pagetable[page - 1]);
  span_t *r = mesh_span(id);
  if (id && mesh_load_relaxed(&r->state) == SPAN_FREE && r->page + r->npages == page && run_dirty(r) == dirty)
    return id;
  return MESH_NIL;
}

static uint32_t run_starting_at(uint32_t page, bool dirty) {
  if (page >= top) return MESH_NIL;
  uint32_t id = (uint32_t)mesh_load_relaxed(&_mesh_arena.pagetable[page]);
  span_t *r = mesh_span(id);
  if (id && mesh_load_relaxed(&r->state) == SPAN_FREE && r->page == page && run_dirty(r) == dirty) return id;
  return MESH_NIL;
}

/* Turns record id (page, npages set) into a free run, merged with
 * neighbours of the same kind, and links it. */
static void run_insert(uint32_t id, bool dirty) {
  span_t *r = mesh_span(id);
  mesh_store_relaxed(&r->state, SPAN_FREE);
  mesh_store_relaxed(&r->bits[0], dirty ? 1u : 0u);
  uint32_t left = run_ending_at(r->page, dirty);
  if (left) {
    run_unlink(left);
    r->page = mesh_span(left)->page;
    r->npages += mesh_span(left)->npages;
    _mesh_span_record_free(left);
  }
  uint32_t right = run_starting_at(r->page + r->npages, dirty);
  if (right) {
    run_unlink(right);
    r->npages += mesh_span(right)->npages;
    _mesh_span_record_free(right);
  }
  run_link(id);
}

static uint32_t align_gap(uint32_t page, uint32_t align_pages) {
  if (align_pages <= 1) return 0;
  uintptr_t abs = (_mesh_arena.base >> MESH_PAGE_SHIFT) + page;
  return (uint32_t)((align_pages - (abs & (align_pages - 1))) & (align_pages - 1));
}

/* First run in the dirty (d=1) or clean (d=0) bins that fits. */
static uint32_t run_find(bool d, uint32_t npages, uint32_t align_pages) {
  uint32_t need = npages + (align_pages > 1 ? align_pages - 1 : 0);
  if (need < npages) return MESH_NIL;
  unsigned b = free_bin_of(need);
  uint64_t mask = free_bins_nonempty[d] & (~0ull << b);
  while (mask) {
    unsigned i = (unsigned)__builtin_ctzll(mask);
    mask &= mask - 1;
    for (uint32_t id = free_bins[d][i]; id; id = mesh_span(id)->next) {
      span_t *r = mesh_span(id);
      if (r->npages >= npages + align_gap(r->page, align_pages)) return id;
    }
  }
  return MESH_NIL;
}

/* Decay. dirty_low_mark is the fewest dirty pages since the epoch began:
 * that many pages went unused through the whole epoch, so the program did
 * not need them (_mesh_arena_decay returns them). Kept exact by note_dirty
 * wherever dirty pages are taken or punched. */
static uint64_t dirty_low_mark; /* (lock) */

static void note_dirty(void) {
  uint64_t d = mesh_stat_get(dirty_pages);
  if (d < dirty_low_mark) dirty_low_mark = d;
}

uint32_t _mesh_arena_alloc_span(uint32_t npages, uint32_t align_pages, bool *clean) {
  uint32_t id = _mesh_span_record_new();
  if (!id) return MESH_NIL;
  uint32_t start;
  uint32_t run = run_find(true, npages, align_pages);
  bool dirty = run != MESH_NIL;
  if (!run) run = run_find(false, npages, align_pages);
  if (run) {
    span_t *r = mesh_span(run);
    run_unlink(run);
    uint32_t gap = align_gap(r->page, align_pages);
    uint32_t rpage = r->page, rn = r->npages;
    start = rpage + gap;
    if (dirty) mesh_stat_sub(dirty_pages, rn);
    /* the unused head and tail go back as runs of the same kind */
    uint32_t tail = rn - gap - npages;
    if (gap) {
      r->npages = gap;
      run_insert(run, dirty);
      if (dirty) mesh_stat_add(dirty_pages, gap);
      run = MESH_NIL;
    }
    if (tail) {
      uint32_t t = run ? run : _mesh_span_record_new();
      if (t) {
        mesh_span(t)->page = start + npages;
        mesh_span(t)->npages = tail;
        run_insert(t, dirty);
        if (dirty) mesh_stat_add(dirty_pages, tail);
        run = MESH_NIL;
      } else {
        npages += tail; /* out of records: keep the tail inside the span */
      }
    }
    if (run) _mesh_span_record_free(run);
    if (dirty) note_dirty(); /* after the head and tail went back */
    *clean = !dirty;
  } else {
    uint32_t gap = align_gap(top, align_pages);
    if ((uint64_t)top + gap + npages > _mesh_arena.npages) {
      _mesh_span_record_free(id);
      return MESH_NIL;
    }
    if (gap) {
      uint32_t g = _mesh_span_record_new();
      if (!g) { _mesh_span_record_free(id); return MESH_NIL; }
      mesh_span(g)->page = top;
      mesh_span(g)->npages = gap;
      top += gap;
      run_insert(g, false);
    }
    start = top;
    top += npages;
    mesh_stat_set(arena_top_pages, top);
    *clean = true;
  }
  if (*clean) mesh_stat_add(fresh_pages_total, npages); /* demand for new memory (mesh.c, pacing) */
  span_t *s = mesh_span(id);
  s->page = start;
  s->npages = npages;
  _mesh_pagetable_set(start, npages, start, id);
  mesh_stat_add(span_pages, npages);
  mesh_stat_add(spans_alloc_count, 1);
  mesh_stat_add(spans_live, 1);
  mesh_stat_hwm(spans_hwm, spans_live);
  return id;
}

static void unalias_all(uint32_t id);
static void drop_file(uint32_t id);
static void scavenge_if_over(void);

void _mesh_arena_free_span(uint32_t id) {
  span_t *s = mesh_span(id);
  uint32_t n = s->npages;
  if (s->alias_next) unalias_all(id);
  mesh_store_relaxed(&s->owner, MESH_OWNER_NONE);
  s->nobjects = 0;
  mesh_stat_sub(span_pages, n);
  mesh_stat_sub(spans_live, 1);
  mesh_stat_add(spans_free_count, 1);
  if (s->flags & SPAN_FILE) { /* a destination: its memfd pages go back now */
    drop_file(id);
    return;
  }
  _mesh_pagetable_set(s->page, n, 0, MESH_NIL);
  mesh_stat_add(dirty_pages, n);
  run_insert(id, true);
  scavenge_if_over();
}

/* Punches dirty runs, largest first, until at most target pages stay dirty. */
static size_t scavenge_to(uint64_t target) {
  size_t punched = 0;
  while (free_bins_nonempty[1] && mesh_stat_get(dirty_pages) > target) {
    unsigned b = 63u - (unsigned)__builtin_clzll(free_bins_nonempty[1]);
    uint32_t id = free_bins[1][b];
    span_t *r = mesh_span(id);
    run_unlink(id);
    size_t len = (size_t)r->npages << MESH_PAGE_SHIFT;
    /* free runs are anonymous memory: dropping the pages frees them */
    if (_mesh_os_punch(-1, (void *)mesh_page_addr(r->page), 0, len) != 0)
      _mesh_warning("returning %zu bytes to the OS failed (errno %d)", len, errno);
    mesh_stat_sub(dirty_pages, r->npages);
    mesh_stat_add(pages_punched, r->npages);
    mesh_stat_add(punch_calls, 1);
    punched += len;
    run_insert(id, false);
  }
  note_dirty();
  return punched;
}

size_t _mesh_arena_scavenge(void) {
  _mesh_arena_retry_retired();
  return scavenge_to(0);
}

uint64_t _mesh_arena_decay(void) {
  uint64_t d = mesh_stat_get(dirty_pages), unused = dirty_low_mark < d ? dirty_low_mark : d;
  size_t punched = unused ? scavenge_to(d - unused) : 0;
  dirty_low_mark = mesh_stat_get(dirty_pages);
  return punched >> MESH_PAGE_SHIFT;
}

/* Over max_dirty_mb, return pages down to half of it: the hysteresis keeps
 * a workload cycling around the threshold from punching and re-faulting
 * everything each time. */
static void scavenge_if_over(void) {
  uint64_t max = (uint64_t)mesh_opt(MESH_OPT_MAX_DIRTY_MB) << (20 - MESH_PAGE_SHIFT);
  if (mesh_stat_get(dirty_pages) > max) scavenge_to(max / 2);
}

/* Walks the tiling; returns the number of problems (each reported). */
int _mesh_arena_validate(void) {
  int bad = 0;
  uint64_t span_pages = 0, dirty = 0, meshed = 0, retired = 0, promoted = 0;
#define BAD(...) do { bad++; _mesh_dprintf(2, "meshalloc: check: " __VA_ARGS__); } while (0)
  for (uint32_t pg = 0; pg < top;) {
    uint64_t e = mesh_load_relaxed(&_mesh_arena.pagetable[pg]);
    uint32_t id = (uint32_t)e;
    span_t *s = mesh_span(id);
    if (id && id < rec_top && (uint32_t)(e >> 32) == pg && s->page != pg) {
      /* a virtual span meshed onto span id: its alias record must be in
       * id's chain and every page must map to id */
      uint32_t a = s->alias_next;
      while (a && mesh_span(a)->page != pg) a = mesh_span(a)->alias_next;
      if (!a || mesh_load_relaxed(&mesh_span(a)->state) != SPAN_ALIAS || mesh_load_relaxed(&mesh_span(a)->mesh_dst) != id)
        BAD("page %u: alias of span %u without a matching alias record\n", pg, id);
      if (!(s->flags & SPAN_FILE)) BAD("page %u: alias of span %u, which is not in the memfd\n", pg, id);
      for (uint32_t i = 0; i < s->npages; i++)
        if (mesh_load_relaxed(&_mesh_arena.pagetable[pg + i]) != (((uint64_t)pg << 32) | id)) {
          BAD("alias at page %u: page %u entry mismatch\n", pg, pg + i);
          break;
        }
      meshed += s->npages;
      pg += s->npages;
      continue;
    }
    if (!id || id >= rec_top || s->page != pg || s->npages == 0 || (uint64_t)pg + s->npages > top) {
      BAD("page %u: entry %llx does not start a span\n", pg, (unsigned long long)e);
      return bad;
    }
    uint8_t st = mesh_load_relaxed(&s->state);
    if (st != SPAN_ATTACHED && st != SPAN_PARTIAL && st != SPAN_FULL && (s->flags & SPAN_FILE))
      BAD("span %u in state %u is marked as held in the memfd\n", id, st);
    if (st == SPAN_FREE) {
      if (run_dirty(s)) dirty += s->npages;
      uint64_t last = mesh_load_relaxed(&_mesh_arena.pagetable[pg + s->npages - 1]);
      if ((uint32_t)last != id) BAD("free run %u: last page entry %llx\n", id, (unsigned long long)last);
      for (uint32_t i = 1; i + 1 < s->npages; i++)
        if (mesh_load_relaxed(&_mesh_arena.pagetable[pg + i])) { BAD("free run %u: interior entry set\n", id); break; }
      if (s->bin != free_bin_of(s->npages)) BAD("free run %u: wrong bin\n", id);
      uint32_t nid = run_starting_at(pg + s->npages, run_dirty(s));
      if (nid) BAD("free runs %u and %u are adjacent and not merged\n", id, nid);
    } else if (st == SPAN_ATTACHED || st == SPAN_PARTIAL || st == SPAN_FULL || st == SPAN_LARGE) {
      span_pages += s->npages;
      if (s->flags & SPAN_FILE) promoted += s->npages;
      for (uint32_t i = 0; i < s->npages; i++)
        if (mesh_load_relaxed(&_mesh_arena.pagetable[pg + i]) != (((uint64_t)pg << 32) | id)) {
          BAD("span %u: page %u entry mismatch\n", id, pg + i);
          break;
        }
    } else if (st == SPAN_RETIRED) {
      retired += s->npages;
      for (uint32_t i = 0; i < s->npages; i++)
        if (mesh_load_relaxed(&_mesh_arena.pagetable[pg + i]) != (((uint64_t)pg << 32) | id)) {
          BAD("retired range %u: page %u entry mismatch\n", id, pg + i);
          break;
        }
    } else {
      BAD("span %u at page %u has state %u\n", id, pg, st);
    }
    pg += s->npages;
  }
  if (retired != mesh_stat_get(retired_pages))
    BAD("retired pages %llu, counter says %llu\n", (unsigned long long)retired,
        (unsigned long long)mesh_stat_get(retired_pages));
  if (span_pages != mesh_stat_get(span_pages))
    BAD("span pages %llu, counter says %llu\n", (unsigned long long)span_pages,
        (unsigned long long)mesh_stat_get(span_pages));
  if (promoted != mesh_stat_get(promoted_pages))
    BAD("pages in the memfd %llu, counter says %llu\n", (unsigned long long)promoted,
        (unsigned long long)mesh_stat_get(promoted_pages));
  if (meshed != mesh_stat_get(meshed_pages))
    BAD("meshed pages %llu, counter says %llu\n", (unsigned long long)meshed,
        (unsigned long long)mesh_stat_get(meshed_pages));
  if (dirty != mesh_stat_get(dirty_pages))
    BAD("dirty pages %llu, counter says %llu\n", (unsigned long long)dirty,
        (unsigned long long)mesh_stat_get(dirty_pages));
  for (int d = 0; d < 2; d++)
    for (unsigned b = 0; b < MESH_FREE_BINS; b++) {
      if (!!free_bins[d][b] != !!(free_bins_nonempty[d] & (1ull << b))) BAD("free bin %d/%u mask\n", d, b);
      for (uint32_t id = free_bins[d][b]; id; id = mesh_span(id)->next)
        if (mesh_load_relaxed(&mesh_span(id)->state) != SPAN_FREE || run_dirty(mesh_span(id)) != d)
          { BAD("free bin %d/%u holds span %u\n", d, b, id); break; }
    }
#undef BAD
  return bad;
}

/* Accessor for fork.c, which walks the tiling to copy the memfd's spans. */
uint32_t _mesh_arena_top(void) { return top; }

/* One span's invariants (debug builds check it at every transition). */
int _mesh_span_validate(uint32_t id) {
  int bad = 0;
  span_t *s = mesh_span(id);
  uint8_t st = mesh_load_relaxed(&s->state);
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

/* ---- aliases (meshing) ------------------------------------------------
 * The kernel keeps one mapping (VMA) per run of arena pages of one kind:
 * anonymous pages, or memfd pages whose offsets are contiguous. phys_of
 * (page) is the memfd page behind a virtual page (its own for a
 * destination, the destination's for an alias), or MESH_PHYS_ANON. A
 * "break" at page x means pages x-1 and x cannot share a mapping, so the
 * arena costs 1 + breaks mappings; remapping a range changes breaks only at
 * its two edges, which lets meshing count its mappings exactly and prefer
 * partners that continue a neighbour's run (the kernel then merges the
 * VMAs). Anonymous neighbours are counted as merged, which the kernel does
 * for mappings made with the same flags (a fork child may keep some apart:
 * the count of the process's other mappings, taken now and then, absorbs
 * the difference). */

uint32_t _mesh_arena_phys_of(uint32_t page) {
  uint64_t e = mesh_load_relaxed(&_mesh_arena.pagetable[page]);
  uint32_t id = (uint32_t)e, vstart = (uint32_t)(e >> 32);
  if (!id) return MESH_PHYS_ANON;
  span_t *s = mesh_span(id);
  if (mesh_load_relaxed(&s->state) == SPAN_RETIRED) return (uint32_t)mesh_load_relaxed(&s->bits[0]) + (page - vstart);
  if (s->page != vstart || (s->flags & SPAN_FILE)) return s->page + (page - vstart); /* alias, or a destination */
  return MESH_PHYS_ANON;
}

static int brk_between(uint32_t left, uint32_t right) {
  if (left == MESH_PHYS_ANON || right == MESH_PHYS_ANON) return left != right;
  return right != left + 1;
}

static int brk_at(uint32_t x, uint32_t phys_x) {
  if (x == 0 || x >= _mesh_arena.npages) return 0;
  return brk_between(_mesh_arena_phys_of(x - 1), phys_x);
}

/* Change in arena mappings if virtual pages [vpage, vpage+n) were mapped
 * onto memfd pages starting at phys (MESH_PHYS_ANON: anonymous memory). */
int _mesh_arena_map_delta(uint32_t vpage, uint32_t n, uint32_t phys) {
  uint32_t end = vpage + n;
  int before = brk_at(vpage, _mesh_arena_phys_of(vpage));
  int after = brk_at(vpage, phys);
  if (end < _mesh_arena.npages) {
    uint32_t pe = _mesh_arena_phys_of(end);
    before += brk_between(_mesh_arena_phys_of(end - 1), pe);
    after += brk_between(phys == MESH_PHYS_ANON ? phys : phys + n - 1, pe);
  }
  return after - before;
}

/* Maps virtual pages [vpage, vpage+n) onto memfd pages at phys (read-write,
 * shared), or onto fresh anonymous pages for MESH_PHYS_ANON. Also replaces
 * a read-only protection left by meshing. */
int _mesh_arena_map(uint32_t vpage, uint32_t n, uint32_t phys) {
  void *addr = (void *)mesh_page_addr(vpage);
  size_t len = (size_t)n << MESH_PAGE_SHIFT;
  if (phys == MESH_PHYS_ANON) return _mesh_os_map_anon_fixed(addr, len);
  int fd = _mesh_arena_fd();
  if (fd >= 0) return _mesh_os_map_fixed(addr, len, fd, (size_t)phys << MESH_PAGE_SHIFT);
  errno = EBADF; /* no memfd, or orphaned: meshing is off, nothing asks for this */
  return -1;
}

int _mesh_arena_punch(uint32_t page, uint32_t n) {
  mesh_stat_add(punch_calls, 1);
  return punch((size_t)page << MESH_PAGE_SHIFT, (size_t)n << MESH_PAGE_SHIFT, false);
}

/* Promotion: the span's pages are copied into the memfd at its own page,
 * then that file range is mapped over it. The caller holds a meshing
 * barrier open; the span is write-protected from before the copy until the
 * new mapping replaces the old one (and lifts the protection), so a write
 * from another thread waits in the barrier and lands in the memfd page. A
 * program write in flight in a system call cannot be waited for: the caller
 * skips spans in such calls (barrier.c). */
bool _mesh_arena_promote(uint32_t id) {
  span_t *s = mesh_span(id);
  uint32_t n = s->npages;
  if (s->flags & SPAN_FILE) return true;
  int fd = _mesh_arena_fd();
  if (fd < 0) return false;
  void *addr = (void *)mesh_page_addr(s->page);
  size_t len = (size_t)n << MESH_PAGE_SHIFT, off = (size_t)s->page << MESH_PAGE_SHIFT;
  if (_mesh_os_protect_read(addr, len) != 0) return false;
  int delta = _mesh_arena_map_delta(s->page, n, s->page);
  if (_mesh_os_pwrite_all(fd, addr, len, off) != 0 || _mesh_os_map_fixed(addr, len, fd, off) != 0) {
    int e = errno;
    /* the anonymous pages are still there, only protected */
    if (_mesh_os_protect_rw(addr, len) != 0)
      _mesh_fatal("meshing: cannot make span pages writable again after a failed promotion (errno %d)", errno);
    punch(off, len, false);
    errno = e;
    return false;
  }
  s->flags |= SPAN_FILE;
  mesh_stat_add(arena_mappings, delta);
  mesh_stat_hwm(arena_mappings_hwm, arena_mappings);
  mesh_stat_add(promoted_pages, n);
  return true;
}

/* ---- retired ranges ----------------------------------------------------
 * Giving a freed alias or destination anonymous pages again is one mmap
 * that may split a VMA; at the kernel's mapping limit (the program's own
 * mappings can take it there) it fails. The range is then set aside instead
 * of aborting: it keeps the mapping it has (memfd pages, noted in bits[0] so
 * that the mapping count stays exact), is never handed out (its page-table
 * entries name a SPAN_RETIRED record, which every free path rejects), and
 * is retried at each scavenge and meshing-thread turn. Lock held
 * throughout. */
static uint32_t retired_head = MESH_NIL; /* SPAN_RETIRED records, linked by next */

static void retire(uint32_t a, uint32_t phys) {
  span_t *r = mesh_span(a);
  r->nobjects = 0;
  r->flags &= (uint8_t)~SPAN_FILE;
  mesh_store_relaxed(&r->bits[0], phys);
  mesh_store_relaxed(&r->state, SPAN_RETIRED);
  _mesh_pagetable_set(r->page, r->npages, r->page, a);
  r->next = retired_head;
  retired_head = a;
  mesh_stat_add(retired_pages, r->npages);
  _mesh_warning("cannot give a freed meshed span its own pages back (errno %d; the kernel's mapping limit?): "
                "its pages are set aside and retried later", errno);
}

void _mesh_arena_retry_retired(void) {
  uint32_t *link = &retired_head;
  while (*link) {
    uint32_t a = *link;
    span_t *r = mesh_span(a);
    int d = _mesh_arena_map_delta(r->page, r->npages, MESH_PHYS_ANON);
    if (_mesh_arena_map(r->page, r->npages, MESH_PHYS_ANON) != 0) return; /* still at the limit: later */
    *link = r->next;
    mesh_stat_add(arena_mappings, d);
    mesh_stat_sub(retired_pages, r->npages);
    mesh_store_relaxed(&r->bits[0], 0);
    _mesh_pagetable_set(r->page, r->npages, 0, MESH_NIL);
    run_insert(a, false);
  }
}

/* Undoes every alias of span id before its pages are freed: each aliased
 * virtual span gets fresh anonymous pages and becomes a clean free run, or
 * is retired if the kernel refuses the mapping. Lock held. */
static void unalias_all(uint32_t id) {
  span_t *s = mesh_span(id);
  uint32_t a = s->alias_next;
  s->alias_next = MESH_NIL;
  s->naliases = 0;
  while (a) {
    span_t *r = mesh_span(a);
    uint32_t next = r->alias_next;
    int d = _mesh_arena_map_delta(r->page, r->npages, MESH_PHYS_ANON);
    bool restored = _mesh_arena_map(r->page, r->npages, MESH_PHYS_ANON) == 0;
    mesh_stat_sub(meshed_pages, r->npages);
    mesh_stat_sub(mesh_aliases, 1);
    r->alias_next = MESH_NIL;
    if (restored) {
      mesh_stat_add(arena_mappings, d);
      _mesh_pagetable_set(r->page, r->npages, 0, MESH_NIL);
      r->nobjects = 0;
      run_insert(a, false);
    } else {
      retire(a, s->page);
    }
    a = next;
  }
}

/* A freed destination (aliases already undone): its memfd pages are
 * returned (first, while they are still mapped here: an orphaned arena
 * returns them through the mapping) and its range gets fresh anonymous
 * pages, a clean free run; or it is retired, still mapping those returned,
 * so zero, pages. Lock held. */
static void drop_file(uint32_t id) {
  span_t *s = mesh_span(id);
  uint32_t n = s->npages;
  size_t len = (size_t)n << MESH_PAGE_SHIFT;
  mesh_stat_sub(promoted_pages, n);
  mesh_stat_add(punch_calls, 1);
  if (punch((size_t)s->page << MESH_PAGE_SHIFT, len, true) != 0)
    _mesh_warning("returning %zu bytes of the memfd failed (errno %d)", len, errno);
  int d = _mesh_arena_map_delta(s->page, n, MESH_PHYS_ANON);
  if (_mesh_arena_map(s->page, n, MESH_PHYS_ANON) != 0) {
    retire(id, s->page);
    return;
  }
  s->flags &= (uint8_t)~SPAN_FILE;
  mesh_stat_add(arena_mappings, d);
  _mesh_pagetable_set(s->page, n, 0, MESH_NIL);
  run_insert(id, false);
}

bool _mesh_arena_has_dirty(uint32_t npages) { return run_find(true, npages, 1) != MESH_NIL; }

/* Splits span id (k * npages pages) into k spans of npages; ids[0] = id.
 * Lock held. */
void _mesh_arena_split(uint32_t id, uint32_t npages, uint32_t k, uint32_t *ids) {
  span_t *s = mesh_span(id);
  uint32_t start = s->page;
  ids[0] = id;
  s->npages = npages;
  for (uint32_t i = 1; i < k; i++) {
    uint32_t r = _mesh_span_record_new();
    if (!r) { /* out of records: the rest stays with the last span made */
      mesh_span(ids[i - 1])->npages += (k - i) * npages;
      for (uint32_t j = i; j < k; j++) ids[j] = MESH_NIL;
      return;
    }
    span_t *t = mesh_span(r);
    t->page = start + i * npages;
    t->npages = npages;
    _mesh_pagetable_set(t->page, npages, t->page, r);
    ids[i] = r;
    mesh_stat_add(spans_alloc_count, 1);
    mesh_stat_add(spans_live, 1);
  }
  mesh_stat_hwm(spans_hwm, spans_live);
}

/* Grows span id by extra pages taken from the free run or the untouched
 * arena right after it. Lock held. Returns false if they are not free. */
bool _mesh_arena_grow_span(uint32_t id, uint32_t extra) {
  span_t *s = mesh_span(id);
  uint32_t end = s->page + s->npages;
  if (end == top) {
    if ((uint64_t)top + extra > _mesh_arena.npages) return false;
    top += extra;
    mesh_stat_set(arena_top_pages, top);
  } else {
    uint32_t r = run_starting_at(end, true);
    if (!r) r = run_starting_at(end, false);
    if (!r || mesh_span(r)->npages < extra) return false;
    span_t *f = mesh_span(r);
    bool dirty = run_dirty(f);
    run_unlink(r);
    if (dirty) mesh_stat_sub(dirty_pages, extra);
    if (f->npages > extra) {
      f->page += extra;
      f->npages -= extra;
      run_link(r);
    } else {
      _mesh_span_record_free(r);
    }
  }
  _mesh_pagetable_set(end, extra, s->page, id);
  s->npages += extra;
  mesh_stat_add(span_pages, extra);
  return true;
}

/* Gives the pages of span id past the first keep back as a dirty run. */
void _mesh_arena_shrink_span(uint32_t id, uint32_t keep) {
  span_t *s = mesh_span(id);
  uint32_t tail = s->npages - keep;
  uint32_t r = tail ? _mesh_span_record_new() : MESH_NIL;
  if (!r) return; /* no record to describe the tail: keep it */
  mesh_span(r)->page = s->page + keep;
  mesh_span(r)->npages = tail;
  _mesh_pagetable_set(s->page + keep, tail, 0, MESH_NIL);
  s->npages = keep;
  mesh_stat_sub(span_pages, tail);
  mesh_stat_add(dirty_pages, tail);
  run_insert(r, true);
  scavenge_if_over();
}
