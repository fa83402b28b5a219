/* memfd.c - the arena's memfd: the physical pages that several virtual
 * spans can share, and the kernel mappings that make them do so.
 *
 * Backing. A span's pages are private anonymous memory until meshing makes
 * it a destination: it is then promoted (its pages copied into the memfd at
 * the memfd page equal to its arena page, and that file range mapped shared
 * over it; SPAN_FILE), so that the virtual spans meshed onto it (aliases)
 * can map the same pages. Everything else never touches the memfd: a fork
 * child shares it copy-on-write through the kernel, exactly, and only the
 * memfd's pages need fork.c's care (frozen, or copied). A destination that is
 * freed, and every alias, get fresh anonymous pages back (and become clean
 * free runs of arena.c), or are retired when the kernel refuses.
 *
 * Frozen generations. A fork with pages in the memfd normally freezes it
 * (fork.c): every mapping of the file, destination, alias or retired range,
 * is replaced by a private mapping of the same offsets, and later
 * promotions go to a new memfd. Nobody writes the old file again: each
 * process that writes a page of it gets a private copy, so parent and child
 * share every unwritten meshed page. Those spans carry the generation in
 * their flags (types.h) and stay as they are until freed: never meshed
 * again (their aliases stop sharing a page at the first write, and a copy
 * through the destination's address would read stale bytes of objects that
 * live at an alias), never punched (other processes may read the file);
 * when freed, their ranges get anonymous pages like any other.
 *
 * Invariants (checked by _mesh_arena_validate):
 *   - only live spans carry SPAN_FILE; every alias's destination does; free
 *     runs are anonymous; promoted_pages counts the SPAN_FILE pages of the
 *     current memfd (generation 0), frozen_pages every virtual page that
 *     maps a frozen generation (destinations, aliases, retired ranges);
 *   - arena_mappings is the exact number of kernel mappings the arena
 *     costs: every remapping adds what _mesh_arena_map_delta says it does;
 *   - a retired range keeps the memfd pages it maps (bits[0]), is on the
 *     retired list and in no free bin, and its page-table entries name its
 *     SPAN_RETIRED record, which every free path rejects.
 *
 * Locking: everything here runs under _mesh_global_lock (or in a fork
 * child before it runs a second thread). _mesh_arena_phys_of reads the page
 * table like the free paths do, with relaxed loads.
 */
#include "internal.h"

#include <errno.h>

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

/* ---- aliases (meshing) ------------------------------------------------
 * The kernel keeps one mapping (VMA) per run of arena pages of one kind:
 * anonymous pages, or memfd pages whose offsets are contiguous. phys_of
 * (page) is the memfd page behind a virtual page (its own for a
 * destination, the destination's for an alias), or MESH_PHYS_ANON. A
 * "break" at page x means pages x-1 and x cannot share a mapping (nor can
 * pages of different files, or private and shared mappings of one: a
 * frozen generation's pages are keyed apart from the current memfd's), so the
 * arena costs 1 + breaks mappings; remapping a range changes breaks only at
 * its two edges, which lets meshing count its mappings exactly and prefer
 * partners that continue a neighbour's run (the kernel then merges the
 * VMAs). Anonymous neighbours are counted as merged, which the kernel does
 * for mappings made with the same flags (a fork child may keep some apart:
 * the count of the process's other mappings, taken now and then, absorbs
 * the difference). */

/* What the kernel's mapping at a virtual page is made of: the generation
 * of the file (0: the current memfd) above the file's page, or ANON_KEY. */
#define ANON_KEY UINT64_MAX
static uint64_t map_key(uint32_t page) {
  uint64_t e = mesh_load_relaxed(&_mesh_arena.pagetable[page]);
  uint32_t id = (uint32_t)e, vstart = (uint32_t)(e >> 32);
  if (!id) return ANON_KEY;
  span_t *s = mesh_span(id);
  uint64_t gen = (uint64_t)mesh_span_gen(s) << 32;
  if (mesh_load_relaxed(&s->state) == SPAN_RETIRED)
    return gen | ((uint32_t)mesh_load_relaxed(&s->bits[0]) + (page - vstart));
  if (s->page != vstart || (s->flags & SPAN_FILE)) return gen | (s->page + (page - vstart)); /* alias, or a destination */
  return ANON_KEY;
}

/* The current memfd's page behind a virtual page (what meshing can continue
 * or share), or MESH_PHYS_ANON (anonymous memory, or a frozen generation). */
uint32_t _mesh_arena_phys_of(uint32_t page) {
  uint64_t k = map_key(page);
  return k >> 32 ? MESH_PHYS_ANON : (uint32_t)k;
}

static int brk_between(uint64_t left, uint64_t right) {
  if (left == ANON_KEY || right == ANON_KEY) return left != right;
  return right != left + 1;
}

static int brk_at(uint32_t x, uint64_t key_x) {
  if (x == 0 || x >= _mesh_arena.npages) return 0;
  return brk_between(map_key(x - 1), key_x);
}

/* Change in arena mappings if virtual pages [vpage, vpage+n) were mapped
 * onto memfd pages starting at phys (MESH_PHYS_ANON: anonymous memory). */
int _mesh_arena_map_delta(uint32_t vpage, uint32_t n, uint32_t phys) {
  uint32_t end = vpage + n;
  uint64_t key = phys == MESH_PHYS_ANON ? ANON_KEY : phys; /* new mappings are of the current memfd */
  int before = brk_at(vpage, map_key(vpage));
  int after = brk_at(vpage, key);
  if (end < _mesh_arena.npages) {
    uint64_t ke = map_key(end);
    before += brk_between(map_key(end - 1), ke);
    after += brk_between(key == ANON_KEY ? key : key + n - 1, ke);
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

/* A call of a promotion was refused (counted with meshing's refusals). */
static void promote_refused(void) {
  mesh_stat_add(mesh_remap_failures, 1);
  _mesh_warning("meshing: the kernel refused to move a span into the memfd (errno %d; the mapping limit?); "
                "that mesh was not made and meshing goes on", errno);
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
  int delta = _mesh_arena_map_delta(s->page, n, s->page);
  if (_mesh_os_protect_read(addr, len) != 0) {
    promote_refused();
    return false;
  }
  bool copied = _mesh_os_pwrite_all(fd, addr, len, off) == 0;
  if (!copied || _mesh_os_map_fixed(addr, len, fd, off) != 0) {
    int e = errno;
    promote_refused();
    /* The kernel refused before touching the old mapping: the anonymous
     * pages are still there, only protected. Should lifting that be refused
     * too, the copy in the memfd is complete: mapping it is the promotion. */
    if (_mesh_os_protect_rw(addr, len) == 0) {
      punch(off, len, false);
      errno = e;
      return false;
    }
    if (!copied || _mesh_os_map_fixed(addr, len, fd, off) != 0)
      _mesh_fatal("meshing: cannot make span pages writable again after a failed promotion (errno %d)", errno);
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

static void retire(uint32_t a, uint32_t phys, unsigned gen) {
  span_t *r = mesh_span(a);
  r->nobjects = 0;
  r->flags = (uint8_t)((r->flags & ~(SPAN_FILE | SPAN_GEN_MASK)) | (gen << SPAN_GEN_SHIFT));
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
    if (mesh_span_gen(r)) mesh_stat_sub(frozen_pages, r->npages);
    r->flags &= (uint8_t)~SPAN_GEN_MASK;
    mesh_store_relaxed(&r->bits[0], 0);
    _mesh_pagetable_set(r->page, r->npages, 0, MESH_NIL);
    _mesh_arena_run_insert(a, false);
  }
}

/* Undoes every alias of span id before its pages are freed: each aliased
 * virtual span gets fresh anonymous pages and becomes a clean free run, or
 * is retired if the kernel refuses the mapping (keeping the generation it
 * maps). Lock held. */
void _mesh_arena_unalias_all(uint32_t id) {
  span_t *s = mesh_span(id);
  unsigned gen = mesh_span_gen(s);
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
    if (restored && gen) mesh_stat_sub(frozen_pages, r->npages);
    if (restored) {
      mesh_stat_add(arena_mappings, d);
      _mesh_pagetable_set(r->page, r->npages, 0, MESH_NIL);
      r->nobjects = 0;
      _mesh_arena_run_insert(a, false);
    } else {
      retire(a, s->page, gen);
    }
    a = next;
  }
}

/* A freed destination (aliases already undone): its memfd pages are
 * returned (first, while they are still mapped here: an orphaned arena
 * returns them through the mapping) and its range gets fresh anonymous
 * pages, a clean free run; or it is retired, still mapping those returned,
 * so zero, pages. Lock held. */
void _mesh_arena_drop_file(uint32_t id) {
  span_t *s = mesh_span(id);
  uint32_t n = s->npages;
  unsigned gen = mesh_span_gen(s);
  size_t len = (size_t)n << MESH_PAGE_SHIFT;
  if (!gen) { /* a frozen generation is never punched: other processes may read it */
    mesh_stat_sub(promoted_pages, n);
    mesh_stat_add(punch_calls, 1);
    if (punch((size_t)s->page << MESH_PAGE_SHIFT, len, true) != 0)
      _mesh_warning("returning %zu bytes of the memfd failed (errno %d)", len, errno);
  }
  int d = _mesh_arena_map_delta(s->page, n, MESH_PHYS_ANON);
  if (_mesh_arena_map(s->page, n, MESH_PHYS_ANON) != 0) { /* a frozen one stays counted as such */
    retire(id, s->page, gen);
    return;
  }
  if (gen) mesh_stat_sub(frozen_pages, n);
  s->flags &= (uint8_t)~(SPAN_FILE | SPAN_GEN_MASK);
  mesh_stat_add(arena_mappings, d);
  mesh_stat_add(dropped_pages_total, n);
  _mesh_pagetable_set(s->page, n, 0, MESH_NIL);
  _mesh_arena_run_insert(id, false);
}

/* ---- generations (fork.c freezes one; lock held) -----------------------
 * The numbers only tell apart the files a process maps for the mapping
 * count; they are the process's own (a fork child numbers on from its
 * parent's, in its own address space). */
static unsigned last_gen; /* (lock) the generation the last freeze made, 1-63 */

unsigned _mesh_arena_next_gen(void) {
  last_gen = last_gen % (SPAN_GEN_MASK >> SPAN_GEN_SHIFT) + 1;
  return last_gen;
}

int _mesh_arena_new_memfd(uint64_t id[2]) {
  int fd = _mesh_os_memfd();
  if (fd >= 0 && (_mesh_os_fd_identity(fd, id) != 0 || _mesh_os_ftruncate(fd, _mesh_arena.room) != 0)) {
    _mesh_os_close(fd);
    fd = -1;
  }
  return fd;
}

void _mesh_arena_switch_memfd(int fd, const uint64_t id[2]) {
  int old = _mesh_arena_fd(); /* -1 if the program closed or reused it: then it is left alone */
  if (old >= 0) _mesh_os_close(old);
  _mesh_arena.fd = fd;
  _mesh_arena.fd_id[0] = id[0];
  _mesh_arena.fd_id[1] = id[1];
}
