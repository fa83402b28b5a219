/* fork.c - giving a fork child its own heap.
 *
 * Object memory is a MAP_SHARED memfd: after a plain fork parent and child
 * would write into the same pages. So the child, in its atfork handler and
 * before any other code of its own runs, copies every live span into a new
 * memfd (one pwrite per run of adjacent live spans, not per page) and maps
 * it over the whole arena in one mmap(MAP_FIXED). Free runs are not copied:
 * in the child they read as zero and are filed as clean.
 *
 * Metadata (span records, page table, thread heaps) is private anonymous
 * memory, so the kernel's copy-on-write already gives the child an exact
 * snapshot of it. Locks: prepare takes the orphan lock then the global lock
 * (the documented order); the child re-initialises both, the parent
 * releases them only after the child has finished copying (it waits on a
 * pipe, which also ends if the child dies), so no span can be reused or
 * punched under the child's copy. Threads of the parent other than the
 * forking one keep running and may write their own objects during the
 * copy; the child may then see those writes (docs/design.md).
 *
 * In the anonymous fallback arena the kernel's copy-on-write is correct and
 * nothing is copied. vfork and posix_spawn run no atfork handler and share
 * memory until exec, which needs nothing.
 */
#include "internal.h"

#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int fork_pipe[2] = {-1, -1};
static bool fork_active; /* the prepare handler ran with an initialised heap */

/* ---- the parent's wait without a descriptor ----------------------------
 *
 * The parent waits for the child's byte on a pipe, whose end of file also
 * tells it the child died. When no pipe can be made (every descriptor
 * taken, RLIMIT_NOFILE), it waits on a page of shared anonymous memory
 * instead, which needs no descriptor: the child writes its pid there first
 * and sets `done` (a futex) once it has its own heap. The parent wakes
 * every 10 ms to ask whether that pid has exited (waitid with WNOWAIT,
 * which leaves the status for the program to collect). A child that died
 * before writing its pid is waited for HANDSHAKE_MAX_NS, then the parent
 * goes on: nothing is left to protect. Without this wait the parent's
 * writes after fork returned reached the child's copy. The page is made in
 * prepare, before the clone; the child replaces its inherited one with a
 * page of its own once done, for its own forks. */
typedef struct {
  _Atomic uint32_t done;
  _Atomic int32_t pid;
} handshake_t;
static handshake_t *handshake;  /* mapped on the first fork that needs it */
static bool handshake_armed;    /* this fork waits on it */
static int saved_errno;
#define HANDSHAKE_MAX_NS 5000000000ull

static handshake_t *handshake_page(void) {
  void *p = mmap(NULL, MESH_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : (handshake_t *)p;
}

static bool child_exited(pid_t pid) {
  siginfo_t info;
  info.si_pid = 0;
  if (waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0) return errno == ECHILD;
  return info.si_pid == pid;
}

static void handshake_wait(void) {
  /* (FUTEX_WAIT, not the private kind: the word is shared with the child) */
  uint64_t start = _mesh_os_now_ns();
  while (!mesh_load_acquire(&handshake->done)) {
    struct timespec ts = {0, 10000000};
    syscall(SYS_futex, (uint32_t *)&handshake->done, FUTEX_WAIT, 0, &ts, NULL, 0);
    if (mesh_load_acquire(&handshake->done)) break;
    pid_t pid = mesh_load_acquire(&handshake->pid);
    if (pid > 0 ? child_exited(pid) : _mesh_os_now_ns() - start > HANDSHAKE_MAX_NS) break;
  }
}

static void handshake_signal(void) {
  mesh_store_release(&handshake->done, 1);
  syscall(SYS_futex, (uint32_t *)&handshake->done, FUTEX_WAKE, 1, NULL, NULL, 0);
  /* a page of its own: the inherited one is the parent's */
  void *p = mmap(handshake, MESH_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
  if (p == MAP_FAILED) {
    munmap(handshake, MESH_PAGE_SIZE);
    handshake = NULL;
  }
}

static void prepare(void) {
  fork_active = mesh_load_acquire(&_mesh_init_state) == 2;
  if (!fork_active) return;
  _mesh_mesher_before_fork(); /* before the locks: it may be in a pass */
  fork_pipe[0] = fork_pipe[1] = -1;
  handshake_armed = false;
  /* the parent waits until the child has its own heap and counters: both
   * are shared memory until then */
  if ((_mesh_arena.memfd_mapped || _mesh_stats_page_shared()) && _mesh_os_pipe(fork_pipe) != 0) {
    int why = errno;
    if (!handshake) handshake = handshake_page();
    if (handshake) {
      mesh_store_relaxed(&handshake->done, 0);
      mesh_store_relaxed(&handshake->pid, 0);
      handshake_armed = true;
    } else {
      _mesh_warning("fork: neither a pipe (errno %d) nor a shared page for the handshake; the parent will "
                    "not wait for the child's heap copy", why);
    }
  }
  pthread_mutex_lock(&_mesh_orphan_lock);
  _mesh_lock();
  _mesh_direct_before_fork();
  /* last, right before the clone: a failed fork sets errno, which the
   * parent handler reads (it is given no pid) */
  saved_errno = errno;
  errno = 0;
}

static void parent(void) {
  if (!fork_active) return;
  bool failed = errno != 0; /* no child: nobody to wait for */
  if (fork_pipe[0] >= 0) {
    _mesh_os_close(fork_pipe[1]);
    char c;
    _mesh_os_read(fork_pipe[0], &c, 1); /* returns at the child's byte or its exit */
    _mesh_os_close(fork_pipe[0]);
  } else if (handshake_armed && !failed) {
    handshake_wait();
  }
  if (!failed) errno = saved_errno;
  _mesh_direct_after_fork(false);
  _mesh_unlock();
  pthread_mutex_unlock(&_mesh_orphan_lock);
  _mesh_mesher_after_fork(false);
}

/* After the whole arena was mapped onto the child's memfd: map every alias
 * back onto its destination's pages, so the child keeps the savings. */
static bool remap_aliases(void) {
  uint32_t top = _mesh_arena_top();
  for (uint32_t pg = 0; pg < top;) {
    uint64_t e = mesh_load_relaxed(&_mesh_arena.pagetable[pg]);
    span_t *s = mesh_span((uint32_t)e);
    uint32_t n = s->npages ? s->npages : 1;
    if ((uint32_t)e && s->page != pg && _mesh_arena_map(pg, n, s->page) != 0) return false;
    pg += n;
  }
  return true;
}

/* Copies the len bytes of the arena at virtual offset voff, which the
 * parent's memfd holds at file offset foff (they differ for an alias),
 * skipping holes of that file (pages never written, or punched): a large
 * block that was allocated but barely touched costs the child nothing. The
 * holes are found at the file offset: asked at an alias's own offset (its
 * own pages were punched when it was meshed) every meshed page read as a
 * hole, and the anonymous copy left the child's objects there zero. Goes to
 * fd at voff, or to dst + voff. */
static long long copy_data(int fd, char *dst, size_t voff, size_t foff, size_t len) {
  size_t end = foff + len;
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
    size_t at = voff + ((size_t)data - foff); /* the virtual offset of the data */
    const void *src = (const void *)(_mesh_arena.base + at);
    if (fd >= 0) {
      if (_mesh_os_pwrite_all(fd, src, stop - (size_t)data, at) != 0) return -1;
    } else {
      __builtin_memcpy(dst + at, src, stop - (size_t)data);
    }
    copied += (long long)(stop - (size_t)data);
    voff += stop - foff;
    foff = stop;
  }
  return copied;
}

/* Copies live spans of the arena into fd at their own offsets, or, when fd
 * is -1, into the anonymous mapping dst, every alias included (the copy
 * cannot alias). One copy_data per run of spans adjacent both in the arena
 * and in the memfd. Returns the bytes copied or -1. */
static long long copy_live(int fd, char *dst, bool with_aliases) {
  uint32_t top = _mesh_arena_top();
  long long copied = 0;
  uint32_t run_start = 0, run_file = 0, run_len = 0;
  for (uint32_t pg = 0; pg <= top;) {
    bool live = false;
    uint32_t n = 1, file = pg;
    if (pg < top) {
      uint64_t e = mesh_load_relaxed(&_mesh_arena.pagetable[pg]);
      span_t *s = mesh_span((uint32_t)e);
      n = s->npages ? s->npages : 1;
      file = (uint32_t)e ? s->page : pg; /* an alias's pages are its destination's */
      /* each physical span once, unless the copy cannot alias */
      uint8_t st = mesh_load_relaxed(&s->state);
      live = st != SPAN_FREE && st != SPAN_RETIRED && (with_aliases || s->page == pg);
    }
    if (live && run_len && run_start + run_len == pg && run_file + run_len == file) {
      run_len += n;
    } else {
      if (run_len) {
        long long c = copy_data(fd, dst, (size_t)run_start << MESH_PAGE_SHIFT, (size_t)run_file << MESH_PAGE_SHIFT,
                                (size_t)run_len << MESH_PAGE_SHIFT);
        if (c < 0) return -1;
        copied += c;
      }
      run_start = pg;
      run_file = file;
      run_len = live ? n : 0;
    }
    pg += n;
  }
  return copied;
}

static void child(void) {
  if (!fork_active) return;
  errno = saved_errno;
  if (handshake_armed) mesh_store_release(&handshake->pid, (int32_t)syscall(SYS_getpid));
  _mesh_stats_page_after_fork_child(); /* first: every counter bumped from here is the child's */
  _mesh_os_after_fork_child();
  _mesh_direct_after_fork(true);
  _mesh_global_after_fork_child();
  _mesh_barrier_after_fork_child();
  if (_mesh_arena.memfd_mapped) {
    uint64_t t0 = _mesh_os_now_ns();
    /* a descriptor the program closed or reused is neither read nor closed
     * here; the copy then goes to anonymous memory, as without a memfd */
    bool own = _mesh_arena_fd() >= 0;
    int fd = own ? _mesh_os_memfd() : -1;
    long long copied = -1;
    uint64_t id[2];
    if (fd >= 0 && _mesh_os_fd_identity(fd, id) == 0 && _mesh_os_ftruncate(fd, _mesh_arena.size) == 0) {
      copied = copy_live(fd, NULL, false);
      if (copied >= 0 && _mesh_os_map_fixed((void *)_mesh_arena.base, _mesh_arena.size, fd, 0) != 0) copied = -1;
    }
    if (copied >= 0) {
      _mesh_os_close(_mesh_arena.fd);
      _mesh_arena.fd = fd;
      _mesh_arena.fd_id[0] = id[0];
      _mesh_arena.fd_id[1] = id[1];
      if (!remap_aliases()) _mesh_fatal("fork child: cannot re-create meshed mappings (errno %d)", errno);
      _mesh_arena_retry_retired(); /* their own pages are mapped again already: file them as free */
    } else {
      /* No second memfd (fd limit, seccomp): give the child a private
       * anonymous copy instead; it keeps working without meshing. */
      if (fd >= 0) _mesh_os_close(fd);
      char *tmp = _mesh_os_reserve(_mesh_arena.size, -1);
      if (!tmp) _mesh_fatal("fork child: cannot copy the heap (no memfd, no memory, errno %d)", errno);
      copied = copy_live(-1, tmp, true);
      if (!_mesh_os_move_over(tmp, _mesh_arena.size, (void *)_mesh_arena.base))
        _mesh_fatal("fork child: cannot move the heap copy into place (errno %d)", errno);
      if (own) _mesh_os_close(_mesh_arena.fd);
      _mesh_arena.fd = -1;
      _mesh_arena.meshable = false;
      _mesh_arena.memfd_mapped = false;
      _mesh_arena_retry_retired();
      if (own) _mesh_warning("fork child: no memfd for the heap copy; this process runs without meshing");
    }
    _mesh_arena_forget_dirty();
    uint64_t ns = _mesh_os_now_ns() - t0;
    mesh_stat_add(fork_count, 1);
    mesh_stat_set(fork_copy_bytes_last, copied);
    mesh_stat_set(fork_copy_ns_last, ns);
    if (ns > mesh_stat_get(fork_copy_ns_max)) mesh_stat_set(fork_copy_ns_max, ns);
  }
  if (fork_pipe[1] >= 0) {
    _mesh_os_close(fork_pipe[0]);
    _mesh_os_write_all(fork_pipe[1], "", 1);
    _mesh_os_close(fork_pipe[1]);
  } else if (handshake_armed) {
    handshake_signal();
  }
  _mesh_heaps_after_fork_child();
  _mesh_mesher_after_fork(true);
}

void _mesh_fork_register(void) {
  if (pthread_atfork(prepare, parent, child) != 0)
    _mesh_warning("pthread_atfork failed: fork children would share the parent's heap pages");
}
