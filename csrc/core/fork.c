/* fork.c - a fork child gets the heap exactly as it was at the clone.
 *
 * Most of the arena is private anonymous memory (arena.c), and so is every
 * piece of metadata (span records, page table, thread heaps): the kernel's
 * copy-on-write gives the child an exact snapshot of those at no cost.
 * Only the meshing destinations live in the memfd, shared, with every alias
 * mapped onto them; in a plain fork those would stay the same pages in
 * both processes. So prepare (the parent, last of the prepare handlers,
 * the locks taken) opens a meshing barrier, write-protects every virtual
 * range of the current memfd (destinations, aliases, retired ranges; a
 * thread that writes one now waits in the barrier) and then, normally,
 * freezes the memfd:
 *
 *   1. each range is mapped again, MAP_PRIVATE, onto the same offsets of
 *      the same file (still read-only): the contents are the file's, so
 *      nothing is copied;
 *   2. the ranges get write permission back, the barrier ends, and the
 *      arena moves to a new memfd for every later promotion; the old
 *      descriptor is closed (the private mappings keep the file). Its
 *      spans carry the generation's number and are never meshed again
 *      (memfd.c, "Frozen generations").
 *   clone: the kernel copies private mappings exactly, page by page on the
 *   first write of either process, as it does anonymous memory. Nobody
 *   writes the frozen file again, so parent and children share every
 *   meshed page they do not write. The child makes its own memfd for its
 *   own meshes (child_own_memfd): the parent's new one is not its.
 *
 * So fork costs O(mappings) once per generation (a later fork with nothing
 * promoted since does nothing at all), and it is an exact snapshot at the
 * clone even with other threads writing: no write is lost by the remap
 * (the protection holds writers back, the file has every byte) and after
 * it the mappings are private, like anonymous memory.
 *
 * The copy, the fallback. Where a freeze cannot be undone should the kernel
 * refuse a remap midway (a range left writable: pinned spans, whose
 * protection the program set, and ranges a wrapped system call is writing
 * into, barrier.c), where the kernel refuses one (the done ranges are then
 * put back on the shared file, untouched since they were protected), or
 * without a new memfd or with MESH_FORK_FREEZE=0, prepare copies instead:
 *
 *   prepare: mark the ranges MADV_DONTFORK (the child gets no mapping
 *     there), copy the destinations' pages into a new memfd, the child's,
 *     at the same offsets (holes skipped), snapshot the counters.
 *   parent: drop DONTFORK and the protection, end the barrier, close the
 *     child's memfd, unlock.
 *   child: map the new memfd over the ranges (destinations at their own
 *     pages, aliases onto their destination's). glibc runs code in the
 *     child before any atfork handler (it resets the locks of every stdio
 *     FILE, which may sit in a meshed span); such an access finds no
 *     mapping and faults, and the barrier's handler then maps the child's
 *     heap first (_mesh_fork_child_fault).
 *
 * That costs O(meshed pages) a fork. A write racing the fork into an
 * unprotected range may or may not reach the child, as with any write
 * racing a fork. Without our fault handler installed nothing is protected,
 * frozen or marked DONTFORK. Without a memfd for the child (descriptor
 * table full, seccomp), the copy goes into private anonymous memory, one
 * copy per virtual range (aliases cannot share it), which the child moves
 * into place with mremap; that child runs without meshing. vfork and
 * posix_spawn run no atfork handler and share memory until exec, which
 * needs nothing. A fork made without atfork handlers (a raw clone system
 * call) shares the current memfd's pages, and only those, with its parent.
 *
 * Locks: prepare takes the orphan lock then the global lock (the
 * documented order); the child re-initialises both, the parent releases
 * them after the clone. The parent never waits for the child.
 */
#include "internal.h"

#include <errno.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static bool fork_active;             /* the prepare handler ran with an initialised heap */
static _Atomic int32_t fork_parent;  /* the forking process's pid from prepare on; 0 when no copy waits */
static int child_fd = -1;            /* the child's memfd, made in prepare */
static char *child_copy;             /* or the anonymous copy, with aliases */
static size_t child_copy_len;
static bool child_taken;             /* the child mapped its heap (the copy's one use) */
static bool copy_failed;             /* neither copy could be made: the child cannot run on */
static bool child_received_memfd;    /* the child maps the memfd prepared for it */
static bool guarded;                 /* prepare protected the ranges and marked them DONTFORK */

/* ---- the memfd's virtual ranges ----------------------------------------- */

enum range_kind { RANGE_DEST, RANGE_ALIAS, RANGE_RETIRED };

typedef void (*range_fn)(uint32_t vpage, uint32_t n, uint32_t phys, enum range_kind kind, void *arg);

/* The record the page table names at pg (a destination for its aliases). */
static bool pinned_at(uint32_t pg) {
  return mesh_span((uint32_t)mesh_load_relaxed(&_mesh_arena.pagetable[pg]))->flags & SPAN_PINNED;
}

/* Calls fn for every virtual span backed by the current memfd, in address
 * order: a frozen generation's ranges are private mappings already, which
 * the kernel's fork copies exactly. Lock held (or in the child,
 * single-threaded). */
static void each_range(range_fn fn, void *arg) {
  uint32_t top = _mesh_arena_top();
  for (uint32_t pg = 0; pg < top;) {
    uint64_t e = mesh_load_relaxed(&_mesh_arena.pagetable[pg]);
    uint32_t id = (uint32_t)e;
    if (!id) { /* interior of a free run cannot be reached: runs are skipped whole */
      pg++;
      continue;
    }
    span_t *s = mesh_span(id);
    uint32_t n = s->npages ? s->npages : 1;
    uint8_t st = mesh_load_relaxed(&s->state);
    if (mesh_span_gen(s)) { /* frozen: private already */
      pg += n;
      continue;
    }
    if (st == SPAN_RETIRED)
      fn(pg, n, (uint32_t)mesh_load_relaxed(&s->bits[0]), RANGE_RETIRED, arg);
    else if ((uint32_t)(e >> 32) == pg && s->page != pg)
      fn(pg, n, s->page, RANGE_ALIAS, arg);
    else if (s->flags & SPAN_FILE && st != SPAN_FREE)
      fn(pg, n, pg, RANGE_DEST, arg);
    pg += n;
  }
}

/* Adjacent ranges joined, for the calls that take any mapped range
 * (mprotect, madvise): one call per run instead of one per span. */
typedef struct {
  uint32_t start, len;
  int (*op)(void *addr, size_t len, void *arg);
  void *arg;
  int failures;
} joined_t;

static void join_flush(joined_t *j) {
  if (j->len && j->op((void *)mesh_page_addr(j->start), (size_t)j->len << MESH_PAGE_SHIFT, j->arg) != 0)
    j->failures++;
  j->len = 0;
}

static void join_add(uint32_t vpage, uint32_t n, uint32_t phys, enum range_kind kind, void *arg) {
  (void)phys;
  (void)kind;
  joined_t *j = arg;
  /* the program set these pages' protection itself (mesh_pin): it is
   * neither tightened nor lifted here */
  if (pinned_at(vpage)) {
    join_flush(j);
    return;
  }
  if (j->len && j->start + j->len == vpage) {
    j->len += n;
    return;
  }
  join_flush(j);
  j->start = vpage;
  j->len = n;
}

static int each_run(int (*op)(void *, size_t, void *), void *arg) {
  joined_t j = {0, 0, op, arg, 0};
  each_range(join_add, &j);
  join_flush(&j);
  return j.failures;
}

/* ---- prepare ------------------------------------------------------------- */

static int protect_unless_in_call(void *addr, size_t len, void *arg) {
  (void)arg;
  uintptr_t lo = (uintptr_t)addr;
  /* a wrapped call writing here would fail with EFAULT: left writable */
  if (_mesh_syscall_overlaps(lo, lo + len)) return 0;
  return _mesh_os_protect_read(addr, len);
}

static int unprotect(void *addr, size_t len, void *arg) {
  (void)arg;
  return _mesh_os_protect_rw(addr, len);
}

static int advise(void *addr, size_t len, void *arg) { return _mesh_os_advise_fork(addr, len, *(bool *)arg); }

/* Copies the len bytes of the arena at virtual offset voff, which the
 * parent's memfd holds at file offset foff (they differ for an alias),
 * skipping holes of that file (pages never written, or punched): the holes
 * are found at the file offset, where the data is. Goes to fd at voff, or
 * to dst. Returns the bytes copied or -1. */
static long long copy_data(int fd, char *dst, size_t voff, size_t foff, size_t len) {
  size_t end = foff + len, start = foff;
  long long copied = 0;
  while (foff < end) {
    long long data = _mesh_os_seek_data(_mesh_arena.fd, foff);
    if (data < 0) { /* ENXIO: only holes up to the end of the file */
      if (errno == ENXIO) break;
      data = (long long)foff; /* no SEEK_DATA: copy everything */
    }
    if ((size_t)data >= end) break;
    long long hole = _mesh_os_seek_hole(_mesh_arena.fd, (size_t)data);
    size_t stop = hole < 0 || (size_t)hole > end ? end : (size_t)hole;
    size_t at = voff + ((size_t)data - start); /* the virtual offset of the data */
    const void *src = (const void *)(_mesh_arena.base + at);
    if (fd >= 0) {
      if (_mesh_os_pwrite_all(fd, src, stop - (size_t)data, (size_t)data) != 0) return -1;
    } else {
      __builtin_memcpy(dst + ((size_t)data - start), src, stop - (size_t)data);
    }
    copied += (long long)(stop - (size_t)data);
    foff = stop;
  }
  return copied;
}

typedef struct {
  long long copied;
  size_t pos; /* anonymous copy: where the next range goes */
} copy_state_t;

static void copy_range(uint32_t vpage, uint32_t n, uint32_t phys, enum range_kind kind, void *arg) {
  copy_state_t *c = arg;
  if (c->copied < 0 || kind == RANGE_RETIRED) return; /* retired ranges hold nothing */
  size_t voff = (size_t)vpage << MESH_PAGE_SHIFT, foff = (size_t)phys << MESH_PAGE_SHIFT,
         len = (size_t)n << MESH_PAGE_SHIFT;
  long long k;
  if (child_fd >= 0) {
    if (kind != RANGE_DEST) return; /* an alias shares its destination's copy */
    k = copy_data(child_fd, NULL, voff, foff, len);
  } else {
    k = copy_data(-1, child_copy + c->pos, voff, foff, len);
    c->pos += len;
  }
  c->copied = k < 0 ? -1 : c->copied + k;
}

static void count_range(uint32_t vpage, uint32_t n, uint32_t phys, enum range_kind kind, void *arg) {
  (void)vpage;
  (void)phys;
  if (kind != RANGE_RETIRED) *(size_t *)arg += (size_t)n << MESH_PAGE_SHIFT;
}

/* The child's copy: a memfd, or else private anonymous memory. Returns the
 * bytes copied, or -1 when neither could be made. */
static long long prepare_copy(void) {
  child_fd = _mesh_arena_fd() >= 0 ? _mesh_os_memfd() : -1;
  if (child_fd >= 0 && _mesh_os_ftruncate(child_fd, _mesh_arena.room) != 0) {
    _mesh_os_close(child_fd);
    child_fd = -1;
  }
  if (child_fd < 0) {
    child_copy_len = 0;
    each_range(count_range, &child_copy_len);
    child_copy = child_copy_len ? _mesh_os_alloc(child_copy_len) : NULL;
    if (child_copy_len && !child_copy) return -1;
  }
  copy_state_t c = {0, 0};
  each_range(copy_range, &c);
  return c.copied;
}

static void drop_copy(void) {
  if (child_fd >= 0) _mesh_os_close(child_fd);
  if (child_copy) _mesh_os_free(child_copy, child_copy_len);
  child_fd = -1;
  child_copy = NULL;
  child_copy_len = 0;
}

/* ---- freezing ------------------------------------------------------------ */

static void count_all(uint32_t vpage, uint32_t n, uint32_t phys, enum range_kind kind, void *arg) {
  (void)vpage;
  (void)phys;
  (void)kind;
  *(size_t *)arg += n;
}

/* A range the freeze could not undo should the kernel refuse a remap
 * midway: not protected, so a write may have reached a private page of it
 * (pinned, or a system call is writing into it). */
static void count_unguarded(uint32_t vpage, uint32_t n, uint32_t phys, enum range_kind kind, void *arg) {
  (void)phys;
  (void)kind;
  uintptr_t lo = mesh_page_addr(vpage);
  if (pinned_at(vpage) || _mesh_syscall_overlaps(lo, lo + ((uintptr_t)n << MESH_PAGE_SHIFT))) ++*(unsigned *)arg;
}

/* The freeze's remaps, one a run of ranges whose virtual pages and file
 * pages both follow on (a run the kernel holds as one mapping already):
 * 9 500 calls where the ranges were 14 000, on perf/bm_fork's meshed heap. */
typedef struct {
  int fd;                /* the memfd being frozen */
  unsigned done, undone; /* ranges remapped privately; of those, put back */
  bool refused;
  uint32_t vpage, n, phys; /* the run not yet remapped, of `ranges` ranges */
  unsigned ranges;
} freeze_t;

static void freeze_flush(freeze_t *f) {
  if (!f->ranges || f->refused) return;
  if (_mesh_os_map_frozen((void *)mesh_page_addr(f->vpage), (size_t)f->n << MESH_PAGE_SHIFT, f->fd,
                          (size_t)f->phys << MESH_PAGE_SHIFT) != 0)
    f->refused = true;
  else
    f->done += f->ranges;
  f->ranges = 0;
}

static void freeze_range(uint32_t vpage, uint32_t n, uint32_t phys, enum range_kind kind, void *arg) {
  (void)kind;
  freeze_t *f = arg;
  if (f->ranges && vpage == f->vpage + f->n && phys == f->phys + f->n) {
    f->n += n;
    f->ranges++;
    return;
  }
  freeze_flush(f);
  f->vpage = vpage;
  f->n = n;
  f->phys = phys;
  f->ranges = 1;
}

/* The first f->done ranges go back onto the shared file, protected again:
 * nothing wrote them meanwhile, so the file holds all their bytes. */
static void thaw_range(uint32_t vpage, uint32_t n, uint32_t phys, enum range_kind kind, void *arg) {
  (void)kind;
  freeze_t *f = arg;
  if (f->undone == f->done) return;
  f->undone++;
  void *addr = (void *)mesh_page_addr(vpage);
  size_t len = (size_t)n << MESH_PAGE_SHIFT;
  if (_mesh_os_map_fixed(addr, len, f->fd, (size_t)phys << MESH_PAGE_SHIFT) != 0 ||
      _mesh_os_protect_read(addr, len) != 0)
    _mesh_fatal("fork: cannot undo a refused freeze of the meshed heap (errno %d)", errno);
}

/* The generation's number goes on the destinations and retired ranges
 * (an alias is frozen with its destination). */
static void mark_frozen(uint32_t vpage, uint32_t n, uint32_t phys, enum range_kind kind, void *arg) {
  (void)n;
  (void)phys;
  if (kind == RANGE_ALIAS) return;
  span_t *s = mesh_span((uint32_t)mesh_load_relaxed(&_mesh_arena.pagetable[vpage]));
  s->flags = (uint8_t)(s->flags | (*(unsigned *)arg << SPAN_GEN_SHIFT));
}

/* Freezes the current memfd (the top comment's way): every range of it,
 * all protected, is mapped privately at the same offsets, then given write
 * permission back, and the arena moves to a new memfd. The kernel counts
 * the same mappings as before (neighbours of one file stay contiguous).
 * Returns false with every range as it was, protected and shared, where
 * a range is not protected or the kernel refuses: the copy is made then.
 * Locks held, barrier open. */
static bool freeze(int unprotected) {
  unsigned unguarded = 0;
  each_range(count_unguarded, &unguarded);
  int old = _mesh_arena_fd();
  uint64_t id[2];
  int fd = unprotected || unguarded || old < 0 || !mesh_opt(MESH_OPT_FORK_FREEZE) ? -1 : _mesh_arena_new_memfd(id);
  if (fd < 0) return false;
  freeze_t f = {old, 0, 0, false, 0, 0, 0, 0};
  each_range(freeze_range, &f);
  freeze_flush(&f);
  if (f.refused) {
    int e = errno;
    each_range(thaw_range, &f);
    _mesh_os_close(fd);
    mesh_stat_add(mesh_remap_failures, 1);
    _mesh_warning("fork: the kernel refused to freeze the meshed pages (errno %d; the mapping limit?): "
                  "they are copied for the child instead", e);
    return false;
  }
  if (each_run(unprotect, NULL) != 0)
    _mesh_fatal("fork: cannot make frozen meshed pages writable again (errno %d)", errno);
  size_t pages = 0;
  each_range(count_all, &pages); /* before the marks: they end each_range's visits */
  unsigned gen = _mesh_arena_next_gen();
  each_range(mark_frozen, &gen);
  mesh_stat_add(frozen_pages, pages);
  mesh_stat_set(promoted_pages, 0);
  _mesh_arena_switch_memfd(fd, id);
  mesh_stat_add(freezes, 1);
  return true;
}

static void note_prepared(uint64_t t0, uint64_t copied) {
  uint64_t ns = _mesh_os_now_ns() - t0;
  mesh_stat_add(fork_count, 1);
  mesh_stat_set(fork_copy_bytes_last, copied);
  mesh_stat_set(fork_copy_ns_last, ns);
  if (ns > mesh_stat_get(fork_copy_ns_max)) mesh_stat_set(fork_copy_ns_max, ns);
}

static void prepare_child_heap(void);

static void prepare(void) {
  fork_active = mesh_load_acquire(&_mesh_init_state) == 2;
  if (!fork_active) return;
  _mesh_mesher_before_fork(); /* before the locks: it may be in a pass */
  pthread_mutex_lock(&_mesh_orphan_lock);
  _mesh_lock();
  _mesh_direct_before_fork();
  child_taken = false;
  copy_failed = false;
  child_received_memfd = false;
  size_t current = 0; /* pages of the current memfd's ranges: a frozen generation needs nothing */
  if (_mesh_arena.memfd_mapped && (mesh_stat_get(promoted_pages) || mesh_stat_get(retired_pages)))
    each_range(count_all, &current);
  if (current) prepare_child_heap();
  _mesh_stats_page_before_fork(); /* last: the counters as the child will start */
}

/* The freeze, or else the copy (the top comment). Locks held. */
static void prepare_child_heap(void) {
  int saved = errno;
  uint64_t t0 = _mesh_os_now_ns();
  /* Our fault handler first, for the child's faults (a handler installed
   * on top of it since the last pass is chained, not lost). Without it
   * nothing may be protected, so nothing is frozen: the ranges are copied
   * as they are, and the child inherits the parent's mapping until its
   * handler maps the copy. */
  guarded = _mesh_barrier_ensure();
  _mesh_barrier_begin();
  int unprotected = guarded ? each_run(protect_unless_in_call, NULL) : 1;
  if (freeze(unprotected)) {
    _mesh_barrier_end(); /* the kernel's clone copies private mappings exactly */
    note_prepared(t0, 0);
    errno = saved;
    return;
  }
  if (guarded) {
    /* refused (mapping limit): the child maps over what it inherits */
    bool dontfork = true;
    each_run(advise, &dontfork);
  }
  long long copied = prepare_copy();
  if (copied < 0) {
    /* The child would share the memfd's pages with the parent. It cannot
     * run on with wrong data, so it stops with a clear message
     * (_mesh_fatal) rather than later in silence. */
    drop_copy();
    copy_failed = true;
  }
  mesh_store_release(&fork_parent, (int32_t)syscall(SYS_getpid));
  note_prepared(t0, copied < 0 ? 0 : (uint64_t)copied);
  errno = saved;
}

static void parent(void) {
  if (!fork_active) return;
  int saved = errno; /* a failed fork's errno is the program's to read */
  if (mesh_load_relaxed(&fork_parent)) {
    mesh_store_release(&fork_parent, 0);
    bool dofork = false;
    if (guarded) {
      each_run(advise, &dofork);
      if (each_run(unprotect, NULL) != 0)
        _mesh_fatal("fork: cannot make meshed pages writable again (errno %d)", errno);
    }
    _mesh_barrier_end();
    drop_copy();
  }
  _mesh_direct_after_fork(false);
  _mesh_unlock();
  pthread_mutex_unlock(&_mesh_orphan_lock);
  _mesh_mesher_after_fork(false);
  errno = saved;
}

/* ---- the child ------------------------------------------------------------ */

static void map_range(uint32_t vpage, uint32_t n, uint32_t phys, enum range_kind kind, void *arg) {
  size_t *pos = arg;
  void *addr = (void *)mesh_page_addr(vpage);
  size_t len = (size_t)n << MESH_PAGE_SHIFT;
  int rc;
  if (kind == RANGE_RETIRED) /* nothing to keep: fresh pages, filed as free by the retry */
    rc = _mesh_os_map_anon_fixed(addr, len);
  else if (child_fd >= 0)
    rc = _mesh_os_map_fixed(addr, len, child_fd, (size_t)phys << MESH_PAGE_SHIFT);
  else {
    rc = _mesh_os_move_over(child_copy + *pos, len, addr) ? 0 : -1;
    *pos += len;
  }
  if (rc != 0) _mesh_fatal("fork child: cannot map its copy of the meshed heap (errno %d)", errno);
}

/* Maps the copy prepared by the parent over the memfd's ranges. Runs once,
 * from the atfork handler or from the first fault on one of those ranges
 * (before the handler), with every signal blocked: a handler touching the
 * heap would fault in here again. Touches no counter: the child's counter
 * page is made after this. */
static void take_heap(void) {
  if (child_taken) return;
  sigset_t all, old;
  sigfillset(&all);
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, sizeof(uint64_t));
  if (!child_taken && mesh_load_acquire(&fork_parent)) {
    if (copy_failed) _mesh_fatal("fork child: the parent could not copy the meshed heap for it (errno %d)", errno);
    size_t pos = 0;
    each_range(map_range, &pos);
    if (child_fd >= 0) {
      uint64_t id[2];
      /* the parent's descriptor, inherited, is closed only if the number
       * is still the parent's memfd (never a file of the program's) */
      int old = _mesh_arena.fd;
      if (old >= 0 && _mesh_os_fd_identity(old, id) == 0 && id[0] == _mesh_arena.fd_id[0] &&
          id[1] == _mesh_arena.fd_id[1])
        _mesh_os_close(old);
      _mesh_arena.fd = child_fd;
      if (_mesh_os_fd_identity(child_fd, _mesh_arena.fd_id) != 0) _mesh_arena.fd_id[0] = _mesh_arena.fd_id[1] = 0;
      child_fd = -1;
      child_received_memfd = true;
    } else if (child_copy) {
      /* moved into place piece by piece; what is left of the mapping goes */
      _mesh_os_free(child_copy, child_copy_len);
      child_copy = NULL;
    }
  }
  child_taken = true;
  _mesh_barrier_after_fork_child(); /* the parent's open barrier ends here: nothing is protected in the child */
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, sizeof(uint64_t));
}

bool _mesh_fork_child_fault(void) {
  int32_t p = mesh_load_acquire(&fork_parent);
  if (!p || child_taken || (int32_t)syscall(SYS_getpid) == p) return false;
  take_heap();
  return true;
}

/* The child's own memfd where the parent had one. Received from prepare;
 * or made here when the parent prepared no copy (nothing was meshed),
 * since parent and child would otherwise promote spans into one file at the
 * same offsets. A child that got the anonymous copy runs without meshing:
 * its destinations are private pages now, which no alias can share. */
static void child_own_memfd(bool prepared, bool received) {
  if (!_mesh_arena.memfd_mapped || received) return;
  int old = _mesh_arena_fd(); /* -1 if the program closed or reused it: then it is left alone */
  int fd = !prepared && _mesh_arena.meshable ? _mesh_os_memfd() : -1;
  uint64_t id[2];
  if (fd >= 0 && (_mesh_os_fd_identity(fd, id) != 0 || _mesh_os_ftruncate(fd, _mesh_arena.room) != 0)) {
    _mesh_os_close(fd);
    fd = -1;
  }
  if (old >= 0) _mesh_os_close(old);
  _mesh_arena.fd = fd;
  if (fd >= 0) {
    _mesh_arena.fd_id[0] = id[0];
    _mesh_arena.fd_id[1] = id[1];
    return;
  }
  _mesh_arena.meshable = false;
  _mesh_arena.memfd_mapped = false; /* what the memfd held is private memory now */
  if (old >= 0) _mesh_warning("fork child: no memfd of its own; this process runs without meshing");
}

static void child(void) {
  if (!fork_active) return;
  int saved = errno;
  take_heap();
  bool prepared = mesh_load_relaxed(&fork_parent) != 0;
  mesh_store_relaxed(&fork_parent, 0);
  _mesh_stats_page_after_fork_child(); /* every counter bumped from here is the child's */
  _mesh_os_after_fork_child();
  _mesh_direct_after_fork(true);
  _mesh_global_after_fork_child();
  _mesh_barrier_after_fork_child();
  child_own_memfd(prepared, child_received_memfd);
  if (prepared) _mesh_arena_retry_retired(); /* their ranges got fresh pages: file them as free */
  _mesh_heaps_after_fork_child();
  _mesh_mesher_after_fork(true);
  errno = saved;
}

void _mesh_fork_register(void) {
  if (pthread_atfork(prepare, parent, child) != 0)
    _mesh_warning("pthread_atfork failed: fork children would share the parent's meshed pages");
}
