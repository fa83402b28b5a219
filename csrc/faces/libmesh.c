/* libmesh.c - face 2: the core as the process malloc (LD_PRELOAD or link).
 *
 * Exports the malloc family with glibc's names and semantics, plus the
 * public mesh_* API (mesh.h). Everything else in the library is hidden
 * (-fvisibility=hidden), so two copies of the core never see each other's
 * symbols. A constructor initialises the heap while the process is still
 * single-threaded, which also registers the fork handlers before any other
 * library's; with MALLOCSTATS=1 a destructor prints the summary at exit.
 * There is no teardown: blocks are still freed after the destructor runs.
 * It sees the core through mesh.h and core/face.h only.
 *
 * Two more things only the process-malloc face can do (core/barrier.c):
 *   - sigaction()/signal() for SIGSEGV are interposed: once the write
 *     barrier is installed, a handler the program sets later becomes the one
 *     the barrier forwards real faults to, instead of displacing it;
 *   - the system calls that write into user buffers (read, recv, poll,
 *     fstat, getrandom, ... below) publish their buffer while they run, so
 *     that no mesh write-protects it under them (the kernel would fail with
 *     EFAULT rather than fault, after having consumed a datagram);
 *   - mprotect, pkey_mprotect and setvbuf pin the spans they touch: never
 *     meshed, so the program's protections stay and stdio's reads land;
 *     so are the buffers stdio allocates itself and directory streams.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../core/face.h"
#include "../mesh.h"

#define EXPORT __attribute__((visibility("default")))

/* malloc and free inline the core's fast paths: a call to the exported
 * mesh_malloc/mesh_free would go through the PLT (they are interposable
 * public symbols). A pointer that is not ours goes to mesh_free, which
 * reports it. */
static void pin_if_stdio_buffer(void *p, size_t size, const void *caller);
/* (blocks of STDIO_BUF_MIN bytes or more may be a stdio buffer: see
 * "memory the program protects or hands to stdio" below) */
#define STDIO_BUF_MIN 512
/* Everything malloc's fast path leaves: an empty vector, a size past the
 * small classes or 0, a block that may be a stdio buffer. Out of line, so
 * the fast path makes no call (it saves no registers); caller is malloc's
 * return address. p: what the fast path popped, or NULL. */
static __attribute__((noinline)) void *malloc_other(size_t size, void *p, const void *caller) {
  if (!p) p = mesh_malloc_inline(size);
  if (size >= STDIO_BUF_MIN) pin_if_stdio_buffer(p, size, caller);
  return p;
}

EXPORT void *malloc(size_t size) {
  void *p = mesh_malloc_try(mesh_face_heap(), size);
  if (mesh_likely(p != NULL) && mesh_likely(size < STDIO_BUF_MIN)) return p;
  return malloc_other(size, p, __builtin_return_address(0));
}
/* A free of ours but not local (another thread's span, a detached one, a
 * large block), out of line; caller is free's return address (the core
 * tells the dynamic loader's frees by it). */
static __attribute__((noinline)) void free_other(void *p, uintptr_t off, uint64_t pte, const void *caller) {
  mesh_free_other(p, off, pte, caller);
}

EXPORT void free(void *p) {
  uintptr_t off;
  uint64_t pte;
  int r = mesh_free_local(mesh_face_heap(), p, &off, &pte);
  if (mesh_likely(r == MESH_FREE_LOCAL)) return;
  if (r == MESH_FREE_OTHER)
    free_other(p, off, pte, __builtin_return_address(0));
  else if (p)
    mesh_free(p); /* the direct allocator's, or not ours: mesh_free reports it */
}

EXPORT void cfree(void *p) { free(p); }
EXPORT void *calloc(size_t n, size_t size) { return mesh_calloc(n, size); }
EXPORT void *realloc(void *p, size_t size) { return mesh_realloc(p, size); }
EXPORT void *reallocarray(void *p, size_t n, size_t size) { return mesh_reallocarray(p, n, size); }
EXPORT void *memalign(size_t align, size_t size) { return mesh_memalign(align, size); }
EXPORT int posix_memalign(void **out, size_t align, size_t size) { return mesh_posix_memalign(out, align, size); }
EXPORT void *aligned_alloc(size_t align, size_t size) { return mesh_aligned_alloc(align, size); }
EXPORT void *valloc(size_t size) { return mesh_valloc(size); }
EXPORT void *pvalloc(size_t size) { return mesh_pvalloc(size); }
EXPORT size_t malloc_usable_size(void *p) { return mesh_usable_size(p); }
/* glibc's "give free memory back to the OS": here that means meshing
 * (mesh_compact also returns dirty free pages). */
EXPORT int malloc_trim(size_t pad) {
  (void)pad;
  size_t returned;
  return mesh_compact_ex(&returned) > 0 || returned > 0;
}

/* Initialise at load only when this copy is the process malloc (preloaded
 * or linked): a copy opened with dlopen (the cffi binding) must not start a
 * heap nobody allocates from. */
static int (*real_clock_gettime)(clockid_t, struct timespec *); /* see clock_gettime below */

static void find_stdio_allocator(void);

__attribute__((constructor)) static void libmesh_init(void) {
  real_clock_gettime = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
  Dl_info self, found;
  void *m = dlsym(RTLD_DEFAULT, "malloc");
  if (m && dladdr(m, &found) && dladdr((void *)libmesh_init, &self) && found.dli_fbase == self.dli_fbase) {
    mesh_face_init();
    find_stdio_allocator();
  }
}

__attribute__((destructor)) static void libmesh_fini(void) {
  const char *s = mesh_face_getenv("MALLOCSTATS");
  if (!s || !*s || (s[0] == '0' && !s[1]) || !mesh_face_heap_ready()) return;
  mesh_stats_print(2);
  if (s[0] == '2' && !s[1]) mesh_stats_print_all(2); /* MALLOCSTATS=2: every counter too */
}

/* the libc function a wrapper stands in front of, looked up once */
#define REAL(name) \
  static _Atomic(void *) real_##name; \
  void *fn_##name = mesh_load_relaxed(&real_##name); \
  if (!fn_##name) { fn_##name = dlsym(RTLD_NEXT, #name); mesh_store_relaxed(&real_##name, fn_##name); }

/* ---- SIGSEGV handlers stay chained behind the write barrier ------------ */

extern int __sigaction(int sig, const struct sigaction *act, struct sigaction *old);

/* A write to a span being meshed is a SIGSEGV the barrier waits out. The
 * kernel kills a process whose thread faults with SIGSEGV blocked (a
 * thread that blocked everything to leave signals to one sigwait thread,
 * or a handler whose sa_mask is full), so while meshing is possible SIGSEGV
 * is never blocked: it is taken out of the sets given to sigprocmask,
 * pthread_sigmask and sigaction's sa_mask. A real fault behaves as before
 * (blocking a synchronous SIGSEGV never deferred it: the kernel kills); a
 * SIGSEGV sent with kill() is delivered at once instead of waiting. */
static const sigset_t *segv_unblocked(const sigset_t *set, sigset_t *copy) {
  if (!set || !mesh_face_meshable() || !sigismember(set, SIGSEGV)) return set;
  *copy = *set;
  sigdelset(copy, SIGSEGV);
  return copy;
}

EXPORT int sigprocmask(int how, const sigset_t *set, sigset_t *old) {
  REAL(sigprocmask)
  sigset_t copy;
  if (how != SIG_UNBLOCK) set = segv_unblocked(set, &copy);
  return ((int (*)(int, const sigset_t *, sigset_t *))fn_sigprocmask)(how, set, old);
}

EXPORT int pthread_sigmask(int how, const sigset_t *set, sigset_t *old) {
  REAL(pthread_sigmask)
  sigset_t copy;
  if (how != SIG_UNBLOCK) set = segv_unblocked(set, &copy);
  return ((int (*)(int, const sigset_t *, sigset_t *))fn_pthread_sigmask)(how, set, old);
}

EXPORT int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  struct sigaction copy;
  if (act && mesh_face_meshable() && sigismember(&act->sa_mask, SIGSEGV)) {
    copy = *act;
    sigdelset(&copy.sa_mask, SIGSEGV);
    act = &copy;
  }
  if (sig == SIGSEGV && mesh_face_user_sigaction(act, old) == 0) return 0;
  return __sigaction(sig, act, old);
}

EXPORT sighandler_t signal(int sig, sighandler_t handler) {
  /* glibc's signal(): BSD semantics, SA_RESTART, the signal blocked in it */
  struct sigaction act, old;
  mesh_face_zero(&act, sizeof act);
  act.sa_handler = handler;
  sigemptyset(&act.sa_mask);
  sigaddset(&act.sa_mask, sig);
  act.sa_flags = SA_RESTART;
  if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
  return (old.sa_flags & SA_SIGINFO) ? (sighandler_t)(void *)old.sa_sigaction : old.sa_handler;
}

/* ---- system calls that write into user buffers ------------------------- */

/* A system call that writes into a heap buffer a mesh has write-protected
 * fails with EFAULT instead of faulting, and may have consumed its input
 * first (a datagram, an eventfd count). Each wrapper below publishes the
 * buffer's range for the length of the call (core/barrier.c: the mesher
 * skips a source span under a published buffer, and the call waits out a
 * mesh already in progress), so these calls never see a protected page.
 * Calls libc makes internally (stdio's reads into its own buffer) are not
 * interposable: setvbuf pins a heap buffer the program gives stdio, the
 * buffers stdio allocates itself and directory streams are pinned too, and
 * fread publishes the caller's buffer (below, "memory the program protects
 * or hands to stdio"; docs/meshing.md, "System calls"). */

/* [lo, hi) of a buffer, as char pointers */
#define SPAN_OF(buf, len) (const char *)(buf), (const char *)(buf) + (len)

/* WRAP(ret, name, (params), (args), SPAN_OF(buf, len)): name(args) with
 * the buffer published */
#define WRAP(ret, name, params, args, range)                 \
  EXPORT ret name params {                                  \
    REAL(name)                                              \
    int token_ = mesh_face_syscall_enter(range);                \
    ret r_ = ((ret(*) params)fn_##name) args;               \
    mesh_face_syscall_exit(token_);                             \
    return r_;                                              \
  }

/* the hull of the pieces of an iovec that lie anywhere (the core ignores
 * a hull outside the arena) */
static void iov_hull(const struct iovec *iov, long n, const char **lo, const char **hi) {
  const char *l = (const char *)UINTPTR_MAX, *h = NULL;
  for (long i = 0; i < n; i++) {
    if (!iov[i].iov_len) continue;
    const char *b = (const char *)iov[i].iov_base;
    if (b < l) l = b;
    if (b + iov[i].iov_len > h) h = b + iov[i].iov_len;
  }
  *lo = h ? l : NULL;
  *hi = h;
}

static void msg_hull(const struct msghdr *m, const char **lo, const char **hi) {
  iov_hull(m->msg_iov, (long)m->msg_iovlen, lo, hi);
  const char *pieces[4] = {(const char *)m->msg_name, (const char *)m->msg_name + m->msg_namelen,
                           (const char *)m->msg_control, (const char *)m->msg_control + m->msg_controllen};
  for (int k = 0; k < 4; k += 2) {
    if (pieces[k + 1] == pieces[k]) continue;
    if (!*hi || pieces[k] < *lo) *lo = pieces[k];
    if (pieces[k + 1] > *hi) *hi = pieces[k + 1];
  }
}

WRAP(ssize_t, read, (int fd, void *buf, size_t n), (fd, buf, n), SPAN_OF(buf, n))
WRAP(ssize_t, pread, (int fd, void *buf, size_t n, off_t off), (fd, buf, n, off), SPAN_OF(buf, n))
WRAP(ssize_t, pread64, (int fd, void *buf, size_t n, off_t off), (fd, buf, n, off), SPAN_OF(buf, n))
WRAP(ssize_t, recv, (int fd, void *buf, size_t n, int flags), (fd, buf, n, flags), SPAN_OF(buf, n))
WRAP(ssize_t, recvfrom, (int fd, void *buf, size_t n, int flags, struct sockaddr *a, socklen_t *al),
     (fd, buf, n, flags, a, al), SPAN_OF(buf, n))
WRAP(int, epoll_wait, (int fd, struct epoll_event *ev, int n, int t), (fd, ev, n, t),
     SPAN_OF(ev, (size_t)(n > 0 ? n : 0) * sizeof *ev))
WRAP(int, epoll_pwait, (int fd, struct epoll_event *ev, int n, int t, const sigset_t *m), (fd, ev, n, t, m),
     SPAN_OF(ev, (size_t)(n > 0 ? n : 0) * sizeof *ev))
WRAP(int, poll, (struct pollfd *p, nfds_t n, int t), (p, n, t), SPAN_OF(p, n * sizeof *p))
WRAP(int, ppoll, (struct pollfd *p, nfds_t n, const struct timespec *t, const sigset_t *m), (p, n, t, m),
     SPAN_OF(p, n * sizeof *p))
WRAP(int, fstat, (int fd, struct stat *st), (fd, st), SPAN_OF(st, sizeof *st))
WRAP(int, stat, (const char *path, struct stat *st), (path, st), SPAN_OF(st, sizeof *st))
WRAP(int, lstat, (const char *path, struct stat *st), (path, st), SPAN_OF(st, sizeof *st))
WRAP(int, fstatat, (int dfd, const char *path, struct stat *st, int fl), (dfd, path, st, fl), SPAN_OF(st, sizeof *st))
WRAP(int, statx, (int dfd, const char *path, int fl, unsigned mask, struct statx *st), (dfd, path, fl, mask, st),
     SPAN_OF(st, sizeof *st))
WRAP(char *, getcwd, (char *buf, size_t n), (buf, n), SPAN_OF(buf, n))
WRAP(ssize_t, readlink, (const char *path, char *buf, size_t n), (path, buf, n), SPAN_OF(buf, n))
WRAP(ssize_t, readlinkat, (int dfd, const char *path, char *buf, size_t n), (dfd, path, buf, n), SPAN_OF(buf, n))
WRAP(ssize_t, getrandom, (void *buf, size_t n, unsigned fl), (buf, n, fl), SPAN_OF(buf, n))
/* clock_gettime is called by the core itself, under its lock: the real one
 * is looked up in the constructor, never here (dlsym may allocate) */
EXPORT int clock_gettime(clockid_t c, struct timespec *ts) {
  int token = mesh_face_syscall_enter(SPAN_OF(ts, sizeof *ts));
  int r = real_clock_gettime ? real_clock_gettime(c, ts) : (int)syscall(SYS_clock_gettime, c, ts);
  mesh_face_syscall_exit(token);
  return r;
}
WRAP(pid_t, waitpid, (pid_t pid, int *st, int o), (pid, st, o), SPAN_OF(st, st ? sizeof *st : 0))
WRAP(pid_t, wait4, (pid_t pid, int *st, int o, struct rusage *ru), (pid, st, o, ru), SPAN_OF(st, st ? sizeof *st : 0))
WRAP(int, pipe, (int fds[2]), (fds), SPAN_OF(fds, 2 * sizeof(int)))
WRAP(int, pipe2, (int fds[2], int fl), (fds, fl), SPAN_OF(fds, 2 * sizeof(int)))
WRAP(int, socketpair, (int d, int t, int p, int sv[2]), (d, t, p, sv), SPAN_OF(sv, 2 * sizeof(int)))
WRAP(int, accept, (int fd, struct sockaddr *a, socklen_t *al), (fd, a, al), SPAN_OF(a, a && al ? *al : 0))
WRAP(int, accept4, (int fd, struct sockaddr *a, socklen_t *al, int fl), (fd, a, al, fl),
     SPAN_OF(a, a && al ? *al : 0))
WRAP(int, getsockopt, (int fd, int lv, int name, void *v, socklen_t *vl), (fd, lv, name, v, vl),
     SPAN_OF(v, v && vl ? *vl : 0))

EXPORT ssize_t readv(int fd, const struct iovec *iov, int cnt) {
  REAL(readv)
  const char *lo, *hi;
  iov_hull(iov, cnt, &lo, &hi);
  int token = mesh_face_syscall_enter(lo, hi);
  ssize_t r = ((ssize_t(*)(int, const struct iovec *, int))fn_readv)(fd, iov, cnt);
  mesh_face_syscall_exit(token);
  return r;
}

EXPORT ssize_t preadv(int fd, const struct iovec *iov, int cnt, off_t off) {
  REAL(preadv)
  const char *lo, *hi;
  iov_hull(iov, cnt, &lo, &hi);
  int token = mesh_face_syscall_enter(lo, hi);
  ssize_t r = ((ssize_t(*)(int, const struct iovec *, int, off_t))fn_preadv)(fd, iov, cnt, off);
  mesh_face_syscall_exit(token);
  return r;
}

EXPORT ssize_t preadv64(int fd, const struct iovec *iov, int cnt, off_t off) { return preadv(fd, iov, cnt, off); }

EXPORT ssize_t preadv2(int fd, const struct iovec *iov, int cnt, off_t off, int fl) {
  REAL(preadv2)
  const char *lo, *hi;
  iov_hull(iov, cnt, &lo, &hi);
  int token = mesh_face_syscall_enter(lo, hi);
  ssize_t r = ((ssize_t(*)(int, const struct iovec *, int, off_t, int))fn_preadv2)(fd, iov, cnt, off, fl);
  mesh_face_syscall_exit(token);
  return r;
}

#if defined(__x86_64__)
/* syscall(2) with a number: the calls that write into a buffer the
 * program passes get it published as their libc wrappers do; any other
 * number is passed on as it is (docs/meshing.md, "System calls"). The
 * core's own raw system calls come here too under libmesh.so, with buffers
 * on the stack, outside the arena, which the core ignores. */
static void syscall_range(long nr, const long a[6], const char **lo, const char **hi) {
  const char *p = NULL;
  size_t n = 0;
  switch (nr) {
    case SYS_read: case SYS_pread64: case SYS_getdents64: case SYS_readlinkat:
      if (nr == SYS_readlinkat) p = (const char *)a[2], n = (size_t)a[3];
      else p = (const char *)a[1], n = (size_t)a[2];
      break;
    case SYS_readlink: case SYS_getcwd:
      if (nr == SYS_getcwd) p = (const char *)a[0], n = (size_t)a[1];
      else p = (const char *)a[1], n = (size_t)a[2];
      break;
    case SYS_recvfrom: p = (const char *)a[1], n = (size_t)a[2]; break;
    case SYS_getrandom: p = (const char *)a[0], n = (size_t)a[1]; break;
    case SYS_readv: case SYS_preadv: case SYS_preadv2:
      iov_hull((const struct iovec *)a[1], a[2], lo, hi);
      return;
    case SYS_recvmsg:
      msg_hull((const struct msghdr *)a[1], lo, hi);
      return;
    case SYS_epoll_wait: case SYS_epoll_pwait:
      p = (const char *)a[1], n = (size_t)a[2] * sizeof(struct epoll_event);
      break;
    case SYS_poll: case SYS_ppoll: p = (const char *)a[0], n = (size_t)a[1] * sizeof(struct pollfd); break;
    case SYS_fstat: p = (const char *)a[1], n = sizeof(struct stat); break;
    case SYS_newfstatat: p = (const char *)a[2], n = sizeof(struct stat); break;
    case SYS_statx: p = (const char *)a[4], n = 256; break;
    case SYS_wait4: p = (const char *)a[1], n = a[1] ? sizeof(int) : 0; break;
    case SYS_clock_gettime: p = (const char *)a[1], n = sizeof(struct timespec); break;
    default: break;
  }
  *lo = p;
  *hi = p ? p + n : NULL;
}

/* The system call itself, not libc's syscall(): this one is it, for the
 * whole process and for the core's own raw calls too, and looking libc's up
 * with dlsym from inside the first malloc is not safe. */
static long raw_syscall6(long nr, long a, long b, long c, long d, long e, long f) {
  register long r10 __asm__("r10") = d, r8 __asm__("r8") = e, r9 __asm__("r9") = f;
  long r;
  __asm__ volatile("syscall" : "=a"(r) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  if ((unsigned long)r > -4096UL) {
    errno = (int)-r;
    return -1;
  }
  return r;
}

EXPORT long syscall(long nr, ...) {
  va_list ap;
  va_start(ap, nr);
  long a[6];
  for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
  va_end(ap);
  const char *lo = NULL, *hi = NULL;
  syscall_range(nr, a, &lo, &hi);
  int token = lo && hi > lo ? mesh_face_syscall_enter(lo, hi) : -1;
  long r = raw_syscall6(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
  int saved = errno;
  mesh_face_syscall_exit(token);
  errno = saved;
  return r;
}
#endif

EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
  REAL(recvmsg)
  const char *lo, *hi;
  msg_hull(msg, &lo, &hi);
  int token = mesh_face_syscall_enter(lo, hi);
  ssize_t r = ((ssize_t(*)(int, struct msghdr *, int))fn_recvmsg)(fd, msg, flags);
  mesh_face_syscall_exit(token);
  return r;
}

EXPORT int recvmmsg(int fd, struct mmsghdr *v, unsigned n, int flags, struct timespec *t) {
  REAL(recvmmsg)
  const char *lo = NULL, *hi = NULL;
  for (unsigned i = 0; i < n; i++) {
    const char *l, *h;
    msg_hull(&v[i].msg_hdr, &l, &h);
    if (h && (!hi || l < lo)) lo = l;
    if (h > hi) hi = h;
  }
  const char *vl = (const char *)v, *vh = vl + n * sizeof *v; /* msg_len is written too */
  if (!hi || vl < lo) lo = vl;
  if (vh > hi) hi = vh;
  int token = mesh_face_syscall_enter(lo, hi);
  int r = ((int (*)(int, struct mmsghdr *, unsigned, int, struct timespec *))fn_recvmmsg)(fd, v, n, flags, t);
  mesh_face_syscall_exit(token);
  return r;
}

/* ---- memory the program protects or hands to stdio ------------------------- */

/* A span whose pages the program protects must never be meshed: a mesh
 * remaps its pages read-write (the protection would be lost) and copies
 * from or into them (a fault in the mesher). So is a buffer the program
 * gives stdio: stdio's reads into it are libc-internal system calls. */
EXPORT int mprotect(void *addr, size_t len, int prot) {
  mesh_pin(addr, len);
  return (int)syscall(SYS_mprotect, addr, len, prot);
}

EXPORT int pkey_mprotect(void *addr, size_t len, int prot, int pkey) {
  REAL(pkey_mprotect)
  mesh_pin(addr, len);
  return ((int (*)(void *, size_t, int, int))fn_pkey_mprotect)(addr, len, prot, pkey);
}

EXPORT int setvbuf(FILE *f, char *buf, int mode, size_t size) {
  REAL(setvbuf)
  if (buf) mesh_pin(buf, size);
  return ((int (*)(FILE *, char *, int, size_t))fn_setvbuf)(f, buf, mode, size);
}

EXPORT void setbuf(FILE *f, char *buf) { setvbuf(f, buf, buf ? _IOFBF : _IONBF, BUFSIZ); }

/* The buffers stdio allocates itself: glibc's _IO_file_doallocate mallocs
 * a FILE's buffer (st_blksize bytes) at the FILE's first read or write, and
 * stdio's refills read(2) into it from inside libc, where no wrapper sees
 * the call. A mesh that write-protected it under such a read failed the
 * read with EFAULT after the kernel had taken the bytes from a pipe or a
 * socket: fgets() then returned NULL, and the data was gone. So a block
 * malloc'd from inside that function (its return address in the function's
 * code, found once at start-up with dladdr1) is pinned. Only blocks of
 * STDIO_BUF_MIN bytes or more are looked at: two compares on the paths of
 * larger mallocs. */
static uintptr_t stdio_alloc_lo, stdio_alloc_len;

static void find_stdio_allocator(void) {
  void *f = dlsym(RTLD_DEFAULT, "_IO_file_doallocate");
  Dl_info info;
  const ElfW(Sym) *sym = NULL;
  if (f && dladdr1(f, &info, (void **)&sym, RTLD_DL_SYMENT) && sym && sym->st_size) {
    stdio_alloc_len = sym->st_size;
    stdio_alloc_lo = (uintptr_t)f;
  }
}

static void pin_if_stdio_buffer(void *p, size_t size, const void *caller) {
  if (p && (uintptr_t)caller - stdio_alloc_lo < stdio_alloc_len) mesh_pin(p, size);
}

/* fread of a request at least as large as the FILE's buffer reads straight
 * into the caller's buffer, with libc's internal read(2): published like a
 * read() for the length of the call. */
static size_t product_or_max(size_t a, size_t b) {
  size_t r;
  return __builtin_mul_overflow(a, b, &r) ? SIZE_MAX : r;
}
WRAP(size_t, fread, (void *buf, size_t sz, size_t n, FILE *f), (buf, sz, n, f), SPAN_OF(buf, product_or_max(sz, n)))
#undef fread_unlocked /* a macro of <stdio.h> with optimisation on */
WRAP(size_t, fread_unlocked, (void *buf, size_t sz, size_t n, FILE *f), (buf, sz, n, f),
     SPAN_OF(buf, product_or_max(sz, n)))

/* A directory stream's buffer is filled by libc's internal getdents64: the
 * DIR opendir returns (its buffer inside the same block) is pinned. (An
 * opendir that libc makes for itself, as scandir does, is not seen.) */
EXPORT DIR *opendir(const char *name) {
  REAL(opendir)
  DIR *d = ((DIR * (*)(const char *)) fn_opendir)(name);
  if (d) mesh_pin(d, mesh_usable_size(d));
  return d;
}

EXPORT DIR *fdopendir(int fd) {
  REAL(fdopendir)
  DIR *d = ((DIR * (*)(int)) fn_fdopendir)(fd);
  if (d) mesh_pin(d, mesh_usable_size(d));
  return d;
}

EXPORT void setbuffer(FILE *f, char *buf, size_t size) { setvbuf(f, buf, buf ? _IOFBF : _IONBF, size); }
