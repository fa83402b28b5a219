/* libmesh.c - face 2: the core as the process malloc (LD_PRELOAD or link).
 *
 * Exports the malloc family with glibc's names and semantics, plus the
 * public mesh_* API (mesh.h). Everything else in the library is hidden
 * (-fvisibility=hidden), so two copies of the core never see each other's
 * symbols. A constructor initialises the heap while the process is still
 * single-threaded, which also registers the fork handlers before any other
 * library's; with MALLOCSTATS=1 a destructor prints the summary at exit.
 * There is no teardown: blocks are still freed after the destructor runs.
 *
 * Two more things only the process-malloc face can do (core/barrier.c):
 *   - sigaction()/signal() for SIGSEGV are interposed: once the write
 *     barrier is installed, a handler the program sets later becomes the one
 *     the barrier forwards real faults to, instead of displacing it;
 *   - read, pread, readv, recv, recvfrom and recvmsg retry when the kernel
 *     failed with EFAULT because the buffer was write-protected by a mesh in
 *     progress (the kernel does not fault on a user buffer, it fails).
 */
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "../core/fast_path.h"
#include "../core/internal.h"

#define EXPORT __attribute__((visibility("default")))

/* malloc and free inline the core's fast paths: a call to the exported
 * mesh_malloc/mesh_free would go through the PLT (they are interposable
 * public symbols). A pointer that is not ours goes to mesh_free, which
 * reports it. */
EXPORT void *malloc(size_t size) { return mesh_malloc_inline(size); }
EXPORT void free(void *p) {
  if (mesh_unlikely(!mesh_free_inline(p)) && p) mesh_free(p);
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
  size_t before = mesh_load_relaxed(&_mesh_counters[MESH_CTR_pages_punched]);
  return mesh_compact() > 0 || mesh_load_relaxed(&_mesh_counters[MESH_CTR_pages_punched]) > before;
}

/* Initialise at load only when this copy is the process malloc (preloaded
 * or linked): a copy opened with dlopen (the cffi binding) must not start a
 * heap nobody allocates from. */
__attribute__((constructor)) static void libmesh_init(void) {
  Dl_info self, found;
  void *m = dlsym(RTLD_DEFAULT, "malloc");
  if (m && dladdr(m, &found) && dladdr((void *)libmesh_init, &self) && found.dli_fbase == self.dli_fbase)
    mesh_ensure_init();
}

__attribute__((destructor)) static void libmesh_fini(void) {
  const char *s = _mesh_os_getenv("MALLOCSTATS");
  if (!s || !*s || (s[0] == '0' && !s[1]) || mesh_load_acquire(&_mesh_init_state) != 2) return;
  mesh_stats_print(2);
  if (s[0] == '2' && !s[1]) mesh_stats_print_all(2); /* MALLOCSTATS=2: every counter too */
}

/* ---- SIGSEGV handlers stay chained behind the write barrier ------------ */

extern int __sigaction(int sig, const struct sigaction *act, struct sigaction *old);

EXPORT int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  if (sig == SIGSEGV && _mesh_barrier_user_sigaction(act, old) == 0) return 0;
  return __sigaction(sig, act, old);
}

EXPORT sighandler_t signal(int sig, sighandler_t handler) {
  /* glibc's signal(): BSD semantics, SA_RESTART, the signal blocked in it */
  struct sigaction act, old;
  _mesh_fill(&act, 0, sizeof act);
  act.sa_handler = handler;
  sigemptyset(&act.sa_mask);
  sigaddset(&act.sa_mask, sig);
  act.sa_flags = SA_RESTART;
  if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
  return (old.sa_flags & SA_SIGINFO) ? (sighandler_t)(void *)old.sa_sigaction : old.sa_handler;
}

/* ---- system calls that write into user buffers ------------------------- */

static bool in_arena(const void *buf, size_t len) {
  uintptr_t b = (uintptr_t)buf, base = _mesh_arena.base;
  return len && base && b < base + _mesh_arena.size && b + len > base;
}

/* A call that failed with EFAULT on a heap buffer while a mesh ran during
 * it is retried once the mesh is over: the buffer is writable again and the
 * kernel consumed nothing (it fails before copying anything). */
static bool retry_efault(ssize_t r, uint32_t gen_before, bool heap_buffer) {
  if (r >= 0 || errno != EFAULT || !heap_buffer) return false;
  uint32_t gen = mesh_load_seq_cst(&_mesh_mesh_gen);
  if (gen == gen_before && !(gen & 1)) return false; /* no mesh meanwhile: a real EFAULT */
  if (gen & 1) _mesh_barrier_wait(gen);
  mesh_stat_add(mesh_efault_retries, 1);
  return true;
}

#define REAL(name) \
  static _Atomic(void *) real_##name; \
  void *fn_##name = mesh_load_relaxed(&real_##name); \
  if (!fn_##name) { fn_##name = dlsym(RTLD_NEXT, #name); mesh_store_relaxed(&real_##name, fn_##name); }

static bool iov_in_arena(const struct iovec *iov, int n) {
  for (int i = 0; i < n; i++)
    if (in_arena(iov[i].iov_base, iov[i].iov_len)) return true;
  return false;
}

EXPORT ssize_t read(int fd, void *buf, size_t n) {
  REAL(read)
  ssize_t r;
  uint32_t g;
  do g = mesh_load_seq_cst(&_mesh_mesh_gen), r = ((ssize_t(*)(int, void *, size_t))fn_read)(fd, buf, n);
  while (retry_efault(r, g, in_arena(buf, n)));
  return r;
}

EXPORT ssize_t pread(int fd, void *buf, size_t n, off_t off) {
  REAL(pread)
  ssize_t r;
  uint32_t g;
  do g = mesh_load_seq_cst(&_mesh_mesh_gen), r = ((ssize_t(*)(int, void *, size_t, off_t))fn_pread)(fd, buf, n, off);
  while (retry_efault(r, g, in_arena(buf, n)));
  return r;
}

EXPORT ssize_t pread64(int fd, void *buf, size_t n, off_t off) { return pread(fd, buf, n, off); }

EXPORT ssize_t readv(int fd, const struct iovec *iov, int cnt) {
  REAL(readv)
  ssize_t r;
  uint32_t g;
  do g = mesh_load_seq_cst(&_mesh_mesh_gen), r = ((ssize_t(*)(int, const struct iovec *, int))fn_readv)(fd, iov, cnt);
  while (retry_efault(r, g, iov_in_arena(iov, cnt)));
  return r;
}

EXPORT ssize_t recv(int fd, void *buf, size_t n, int flags) {
  REAL(recv)
  ssize_t r;
  uint32_t g;
  do g = mesh_load_seq_cst(&_mesh_mesh_gen), r = ((ssize_t(*)(int, void *, size_t, int))fn_recv)(fd, buf, n, flags);
  while (retry_efault(r, g, in_arena(buf, n)));
  return r;
}

EXPORT ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *addr, socklen_t *alen) {
  REAL(recvfrom)
  ssize_t r;
  uint32_t g;
  do g = mesh_load_seq_cst(&_mesh_mesh_gen),
     r = ((ssize_t(*)(int, void *, size_t, int, struct sockaddr *, socklen_t *))fn_recvfrom)(fd, buf, n, flags, addr, alen);
  while (retry_efault(r, g, in_arena(buf, n)));
  return r;
}

EXPORT ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
  REAL(recvmsg)
  ssize_t r;
  uint32_t g;
  do g = mesh_load_seq_cst(&_mesh_mesh_gen), r = ((ssize_t(*)(int, struct msghdr *, int))fn_recvmsg)(fd, msg, flags);
  while (retry_efault(r, g, iov_in_arena(msg->msg_iov, (int)msg->msg_iovlen) ||
                               in_arena(msg->msg_control, msg->msg_controllen)));
  return r;
}
