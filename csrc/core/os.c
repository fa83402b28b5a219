/* os.c - the platform layer: every system call the core makes is here.
 *
 * Contract for the layers above: nothing here allocates, uses stdio or
 * takes a lock; every function is async-signal-safe except _mesh_os_getenv
 * (it reads environ, fine at init). Failures are returned, never fatal,
 * so callers can degrade (no memfd -> anonymous arena) instead of aborting.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <cpuid.h>
#include <elf.h>
#endif

#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif
#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif

/* The lowest descriptor number the arena's memfd may take: high, so that
 * it is not the number the program's next open() expects (a process started
 * with stdin or stdout closed would otherwise get the heap as fd 0 or 1, and
 * tests that compare a child's descriptors with the ones they passed would
 * see it), and out of the way of a closerange(3, 1024) where the limit
 * allows. Capped: the kernel's descriptor table grows to the number used. */
#define MEMFD_FLOOR_MAX 1088
static int memfd_floor(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur <= 16) return 3;
  rlim_t cur = rl.rlim_cur;
  if (cur > MEMFD_FLOOR_MAX + 64) return MEMFD_FLOOR_MAX;
  return (int)(cur - cur / 8); /* the top eighth of a small table */
}

int _mesh_os_memfd(void) { return _mesh_os_memfd_named("meshalloc-arena"); }

int _mesh_os_memfd_named(const char *name) {
#ifdef SYS_memfd_create
  /* close-on-exec: the heap must never leak into an exec'd child */
  int fd = (int)syscall(SYS_memfd_create, name, MFD_CLOEXEC);
  if (fd < 0) return fd;
  int high = fcntl(fd, F_DUPFD_CLOEXEC, memfd_floor());
  if (high >= 0) { /* else (table full above the floor) the low number will do */
    close(fd);
    fd = high;
  }
  return fd;
#else
  errno = ENOSYS;
  return -1;
#endif
}

int _mesh_os_fd_identity(int fd, uint64_t id[2]) {
  struct stat st;
  if (syscall(SYS_fstat, fd, &st) != 0) return -1; /* raw: libmesh.so wraps fstat */
  id[0] = (uint64_t)st.st_dev;
  id[1] = (uint64_t)st.st_ino;
  return 0;
}

uint64_t _mesh_os_fd_blocks(int fd) {
  struct stat st;
  if (syscall(SYS_fstat, fd, &st) != 0) return 0; /* raw: libmesh.so wraps fstat */
  return (uint64_t)st.st_blocks;
}

/* Fault injection for the tests (tests/c/mesh_faults.c): the calls that
 * change an arena mapping (the MAP_FIXED mmaps and the mprotects below)
 * count down from armed_nth; the nth one and the `count - 1` after it fail
 * with ENOMEM before reaching the kernel, as the kernel's own do at
 * vm.max_map_count (that check comes before the old mapping is touched).
 * The test's `at_failure`, if any, runs first (to write objects at that
 * moment). Disarmed (0) in every program but those tests: one relaxed load. */
static _Atomic unsigned armed_nth, armed_count;
static void (*armed_hook)(void);

void _mesh_os_fail_mappings(unsigned nth, unsigned count, void (*at_failure)(void)) {
  armed_hook = at_failure;
  mesh_store_relaxed(&armed_count, count);
  mesh_store_relaxed(&armed_nth, nth);
}

static bool injected_failure(void) {
  unsigned n = mesh_load_relaxed(&armed_nth);
  if (mesh_likely(n == 0)) return false;
  if (n > 1) {
    mesh_store_relaxed(&armed_nth, n - 1);
    return false;
  }
  unsigned c = mesh_load_relaxed(&armed_count);
  if (c <= 1) mesh_store_relaxed(&armed_nth, 0);
  else mesh_store_relaxed(&armed_count, c - 1);
  if (armed_hook) armed_hook();
  errno = ENOMEM;
  return true;
}

int _mesh_os_map_anon_fixed(void *addr, size_t len) {
  if (injected_failure()) return -1;
  void *p = mmap(addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? -1 : 0;
}

int _mesh_os_remove(void *addr, size_t len) {
  if (madvise(addr, len, MADV_REMOVE) == 0) return 0;
  return madvise(addr, len, MADV_DONTNEED); /* a private (restored) range: dropping its pages frees them */
}

void *_mesh_os_reserve(size_t size, int fd) {
  void *p;
  if (fd >= 0)
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  else
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

/* Maps fresh anonymous memory exactly at addr, and only where nothing is
 * mapped yet: EEXIST if something is (a kernel before 4.17 takes the flag
 * as a hint, so an answer elsewhere is undone and reported the same way). */
int _mesh_os_map_at(void *addr, size_t len) {
  void *p = mmap(addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE,
                 -1, 0);
  if (p == MAP_FAILED) return -1;
  if (p != addr) {
    munmap(p, len);
    errno = EEXIST;
    return -1;
  }
  return 0;
}

void *_mesh_os_reserve_guarded(size_t size, size_t guard, int fd) {
  char *r = mmap(NULL, size + guard, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) return NULL;
  /* the memfd over the front, or the anonymous front made usable */
  int rc = fd >= 0 ? _mesh_os_map_fixed(r, size, fd, 0) : (int)syscall(SYS_mprotect, r, size, PROT_READ | PROT_WRITE);
  if (rc != 0) {
    int e = errno;
    munmap(r, size + guard);
    errno = e;
    return NULL;
  }
  return r;
}

int _mesh_os_map_fixed(void *addr, size_t len, int fd, size_t off) {
  if (injected_failure()) return -1;
  /* Same flags as the reservation, or the kernel will not merge neighbours.
   * The raw system call, not libc's mmap: remapping a span onto identical
   * contents is invisible to the program, but a race detector's mmap
   * interceptor would treat it as a write to every object in the range and
   * report every concurrent reader. */
  long r = syscall(SYS_mmap, addr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_NORESERVE, fd,
                   (off_t)off);
  return r == -1 ? -1 : 0; /* syscall() sets errno; user addresses are positive */
}

/* A private, read-only view of the file: the kernel gives whoever writes
 * it (after mprotect) a page of its own, copied from the file's, so the
 * file itself is never written through it. Raw call, as above. */
int _mesh_os_map_frozen(void *addr, size_t len, int fd, size_t off) {
  if (injected_failure()) return -1;
  long r = syscall(SYS_mmap, addr, len, PROT_READ, MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd, (off_t)off);
  return r == -1 ? -1 : 0;
}

int _mesh_os_punch(int fd, void *addr, size_t off, size_t len) {
  /* madvise(DONTNEED) does not free shmem pages; only a hole in the memfd does. */
  if (fd >= 0) return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len);
  return madvise(addr, len, MADV_DONTNEED);
}

void *_mesh_os_alloc(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

void _mesh_os_free(void *p, size_t size) { munmap(p, size); }

/* Next data byte at or after off in fd, or -1 (none left or unsupported). */
long long _mesh_os_seek_data(int fd, size_t off) { return (long long)lseek(fd, (off_t)off, SEEK_DATA); }
long long _mesh_os_seek_hole(int fd, size_t off) { return (long long)lseek(fd, (off_t)off, SEEK_HOLE); }

int _mesh_os_ftruncate(int fd, size_t size) { return ftruncate(fd, (off_t)size); }
int _mesh_os_close(int fd) { return close(fd); }
ssize_t _mesh_os_read(int fd, void *buf, size_t len) {
  ssize_t r;
  do r = syscall(SYS_read, fd, buf, len); while (r < 0 && errno == EINTR); /* raw: libmesh.so wraps read */
  return r;
}

int _mesh_os_write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t r = write(fd, p, len);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    len -= (size_t)r;
  }
  return 0;
}

int _mesh_os_pwrite_all(int fd, const void *buf, size_t len, size_t off) {
  /* The raw system call: the buffer may be heap pages other threads wrote
   * a moment ago, ordered only by the write protection meshing and fork
   * put on them, which a race detector's pwrite interceptor cannot see. */
  const char *p = buf;
  while (len > 0) {
    ssize_t r = (ssize_t)syscall(SYS_pwrite64, fd, p, len, (off_t)off);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    p += r;
    off += (size_t)r;
    len -= (size_t)r;
  }
  return 0;
}

uint64_t _mesh_os_random(void) {
  uint64_t v = 0;
#ifdef SYS_getrandom
  if (syscall(SYS_getrandom, &v, sizeof v, 0x0001 /* GRND_NONBLOCK */) == (long)sizeof v) return v;
#endif
  /* no entropy source: mix the clock and an address (ASLR) */
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL ^ (uint64_t)(uintptr_t)&v ^ (uint64_t)getpid() << 32;
}

/* A clock in ns; 0 if it cannot be read. */
static uint64_t clock_ns(clockid_t clock) {
  struct timespec ts;
  if (clock_gettime(clock, &ts) != 0) return 0;
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t _mesh_os_now_ns(void) { return clock_ns(CLOCK_MONOTONIC); }

/* The calling thread's CPU time: the scheduler's run time for it, which
 * leaves out time spent preempted and (with paravirtual steal accounting)
 * time the VM's vCPU was not running. A system call, not a vDSO read: for
 * once-per-pass use. */
uint64_t _mesh_os_thread_cpu_ns(void) { return clock_ns(CLOCK_THREAD_CPUTIME_ID); }

/* Every thread's CPU time; other threads' is brought up to date at
 * scheduler ticks, so read it over windows of tens of ms. */
uint64_t _mesh_os_process_cpu_ns(void) { return clock_ns(CLOCK_PROCESS_CPUTIME_ID); }

bool _mesh_os_secure(void) { return getauxval(AT_SECURE) != 0; }

bool _mesh_os_has_popcnt;

void _mesh_os_cpu_init(void) {
#if defined(__x86_64__)
  unsigned a, b, c, d;
  _mesh_os_has_popcnt = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_POPCNT);
#endif
}

const char *_mesh_os_getenv(const char *name) {
  /* setuid/setgid programs ignore tunables, as glibc ignores MALLOC_* */
  if (_mesh_os_secure()) return NULL;
  return getenv(name);
}

size_t _mesh_os_as_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return SIZE_MAX;
  return (size_t)rl.rlim_cur;
}

void _mesh_os_abort(void) {
  /* abort() may run atexit-like cleanup in some libcs; raise directly and
   * make sure SIGABRT is not blocked or ignored. */
  signal(SIGABRT, SIG_DFL);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGABRT);
  sigprocmask(SIG_UNBLOCK, &set, NULL);
  raise(SIGABRT);
  _exit(134);
}


/* Memory for a program's block: committed as glibc's mmap'd blocks are (no
 * MAP_NORESERVE), so a request the system cannot back fails here, with
 * ENOMEM, instead of being killed later. */
void *_mesh_os_map_anon(size_t size) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

void *_mesh_os_remap(void *p, size_t old_len, size_t new_len) {
  void *q = mremap(p, old_len, new_len, MREMAP_MAYMOVE);
  return q == MAP_FAILED ? NULL : q;
}

void *_mesh_os_move_over(void *src, size_t len, void *dst) {
  void *p = mremap(src, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
  return p == MAP_FAILED ? NULL : p;
}

/* raw: libmesh.so's mprotect pins spans (and takes the lock this caller holds) */
int _mesh_os_protect_read(void *addr, size_t len) {
  if (injected_failure()) return -1;
  return (int)syscall(SYS_mprotect, addr, len, PROT_READ);
}
int _mesh_os_advise_fork(void *addr, size_t len, bool dontfork) {
  return madvise(addr, len, dontfork ? MADV_DONTFORK : MADV_DOFORK);
}
int _mesh_os_protect_rw(void *addr, size_t len) {
  if (injected_failure()) return -1;
  return (int)syscall(SYS_mprotect, addr, len, PROT_READ | PROT_WRITE);
}

long _mesh_os_max_map_count(void) {
  int fd = open("/proc/sys/vm/max_map_count", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 65530;
  char buf[32];
  ssize_t n = _mesh_os_read(fd, buf, sizeof buf - 1);
  close(fd);
  long v = 0;
  for (ssize_t i = 0; i < n && buf[i] >= '0' && buf[i] <= '9'; i++) v = v * 10 + (buf[i] - '0');
  return v > 0 ? v : 65530;
}

/* The process's kernel mappings now (lines of /proc/self/maps), or -1.
 * Read in pieces on the stack: no malloc, so callable under the lock.
 * The file stays open at a high descriptor number and is re-read from
 * offset 0: an open() per count, from the meshing thread, would take the
 * lowest free number for a moment, and a program started with stdin
 * closed could see its own first open() get 1 instead of 0. Its identity
 * is checked before each read (the program may close and reuse the
 * number); a fork child opens its own (_mesh_os_after_fork_child). */
static int maps_fd = -1;
static uint64_t maps_id[2];

static int maps_open(void) {
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  int high = fcntl(fd, F_DUPFD_CLOEXEC, memfd_floor());
  if (high >= 0) close(fd), fd = high;
  if (_mesh_os_fd_identity(fd, maps_id) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

long _mesh_os_count_maps(void) {
  uint64_t id[2];
  if (maps_fd >= 0 && (_mesh_os_fd_identity(maps_fd, id) != 0 || id[0] != maps_id[0] || id[1] != maps_id[1]))
    maps_fd = -1; /* not ours any more: left alone */
  if (maps_fd < 0 && (maps_fd = maps_open()) < 0) return -1;
  char buf[4096];
  long lines = 0;
  size_t off = 0;
  ssize_t n;
  while ((n = syscall(SYS_pread64, maps_fd, buf, sizeof buf, (off_t)off)) > 0) {
    off += (size_t)n;
    for (ssize_t i = 0; i < n; i++) lines += buf[i] == '\n';
  }
  return n < 0 ? -1 : lines;
}

/* fork child: the inherited maps descriptor reads the parent's mappings */
void _mesh_os_after_fork_child(void) {
  uint64_t id[2];
  if (maps_fd >= 0 && _mesh_os_fd_identity(maps_fd, id) == 0 && id[0] == maps_id[0] && id[1] == maps_id[1])
    close(maps_fd);
  maps_fd = -1;
}

/* Blocks every signal but the synchronous ones (a fault in this thread must
 * still be delivered) in the calling thread, saving the old mask. */
void _mesh_os_block_async_signals(sigset_t *old) {
  sigset_t set;
  sigfillset(&set);
  sigdelset(&set, SIGSEGV);
  sigdelset(&set, SIGBUS);
  sigdelset(&set, SIGFPE);
  sigdelset(&set, SIGILL);
  sigdelset(&set, SIGTRAP);
  sigdelset(&set, SIGSYS);
  syscall(SYS_rt_sigprocmask, SIG_BLOCK, &set, old, _NSIG / 8);
}

void _mesh_os_restore_signals(const sigset_t *old) { syscall(SYS_rt_sigprocmask, SIG_SETMASK, old, NULL, _NSIG / 8); }

/* The dynamic loader's code, from its ELF headers in memory (AT_BASE is
 * where the kernel loaded it; 0 for a static program). No dladdr: that
 * takes the loader's lock, and this runs inside the first malloc. */
void _mesh_os_loader_text(uintptr_t *lo, uintptr_t *len) {
  *lo = *len = 0;
  uintptr_t base = (uintptr_t)getauxval(AT_BASE);
  if (!base) return;
  const Elf64_Ehdr *eh = (const Elf64_Ehdr *)base;
  if (__builtin_memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_phentsize != sizeof(Elf64_Phdr)) return;
  const Elf64_Phdr *ph = (const Elf64_Phdr *)(base + eh->e_phoff);
  uintptr_t first = UINTPTR_MAX, last = 0;
  for (unsigned i = 0; i < eh->e_phnum; i++) {
    if (ph[i].p_type != PT_LOAD || !(ph[i].p_flags & PF_X)) continue;
    if (base + ph[i].p_vaddr < first) first = base + ph[i].p_vaddr;
    if (base + ph[i].p_vaddr + ph[i].p_memsz > last) last = base + ph[i].p_vaddr + ph[i].p_memsz;
  }
  if (last > first) {
    *lo = first;
    *len = last - first;
  }
}
