/* face.h - the one window of the core a face may use beyond mesh.h.
 *
 * The faces (faces/libmesh.c, faces/pyhooks.c, faces/pymodule.c) include
 * mesh.h and this header and nothing else of the core, and name no
 * internal (_mesh_) symbol: what they need from inside is given here, under
 * mesh_face_* names or as the inline fast paths. tests/test_layers.py
 * checks both rules.
 *
 *   - The fast paths (fast_path.h), which the faces inline so that an
 *     allocation pays no call into the core: mesh_malloc_try,
 *     mesh_free_local (kept in line) and mesh_free_other (the frees it
 *     leaves, out of line) against the calling thread's heap
 *     (mesh_face_heap), and mesh_malloc_inline / mesh_free_inline.
 *   - The face counters: MESH_FACE_COUNTS per-thread counters a face
 *     numbers as it likes (the Python hooks: per domain, allocs, reallocs,
 *     frees and foreign ones). They live in the thread heaps (types.h),
 *     written by their thread only with a relaxed load and store, and the
 *     core sums them over every heap it ever made (mesh_face_counts_read),
 *     so no count is lost when a thread exits or forks. A thread with no
 *     heap of this copy of the core counts into shared atomics instead.
 *   - For the process-malloc face (libmesh.c): initialisation, the
 *     environment, the write barrier's SIGSEGV chaining and the system-call
 *     windows that keep a buffer from being meshed while the kernel writes
 *     into it (barrier.c).
 *
 * Everything here is thread-safe as the functions it wraps are; the
 * counters need no lock to write and take the global lock to read.
 */
#ifndef MESH_FACE_H
#define MESH_FACE_H

#include "fast_path.h"

/* ---- the fast paths ---------------------------------------------------- */

/* The calling thread's heap: never NULL, a sentinel (which serves nothing
 * and owns nothing) until its first allocation and after its exit. */
MESH_INLINE thread_heap_t *mesh_face_heap(void) { return _mesh_tls.heap; }

/* ---- the face counters ------------------------------------------------- */

/* Counter k of h, where h is the calling thread's heap and known to be a
 * real one (a fast path that just served from it or freed into it). Only
 * this thread writes it; readers load it relaxed. On x86-64 one add to
 * memory: a single instruction is as atomic to a reader as the relaxed
 * load and store, which GCC emits as three (a load, an add, a store: two
 * instructions more on every malloc and free). ThreadSanitizer builds keep
 * the C form, which it can see. */
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MESH_FACE_TSAN 1
#endif
#endif
MESH_INLINE void mesh_face_count_add(thread_heap_t *h, unsigned k) {
  _Atomic uint64_t *v = mesh_face_count(h, k);
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__) && !defined(MESH_FACE_TSAN)
  __asm__("addq $1, %0" : "+m"(*(uint64_t *)v));
#else
  mesh_store_relaxed(v, mesh_load_relaxed(v) + 1);
#endif
}

/* Counter k of the calling thread, whatever its state. */
MESH_INLINE void mesh_face_count_bump(unsigned k) {
  thread_heap_t *h = _mesh_tls.heap;
  if (mesh_likely(h->id != MESH_OWNER_SENTINEL))
    mesh_face_count_add(h, k);
  else
    _mesh_face_count_shared(k);
}

/* out[k]: counter k summed over every thread, past and present. Exact;
 * a snapshot taken while other threads count is not instantaneous. */
MESH_INLINE void mesh_face_counts_read(uint64_t out[MESH_FACE_COUNTS]) { _mesh_heaps_face_counts(out); }

/* ---- the process-malloc face -------------------------------------------- */

MESH_INLINE bool mesh_face_heap_ready(void) { return mesh_load_acquire(&_mesh_init_state) == 2; }
MESH_INLINE void mesh_face_init(void) { mesh_ensure_init(); }
/* 1 while meshing is possible: SIGSEGV must then stay deliverable */
MESH_INLINE bool mesh_face_meshable(void) { return _mesh_arena.meshable; }
/* NULL in secure-execution mode */
MESH_INLINE const char *mesh_face_getenv(const char *name) { return _mesh_os_getenv(name); }
MESH_INLINE void mesh_face_zero(void *p, size_t n) { _mesh_fill(p, 0, n); }
/* A SIGSEGV handler the program sets once the barrier is installed: 0 when
 * the barrier took it (it forwards real faults to it). */
MESH_INLINE int mesh_face_user_sigaction(const struct sigaction *act, struct sigaction *old) {
  return _mesh_barrier_user_sigaction(act, old);
}
/* A system call writing into [lo, hi) runs between these two (errno kept). */
MESH_INLINE int mesh_face_syscall_enter(const void *lo, const void *hi) { return _mesh_syscall_enter(lo, hi); }
MESH_INLINE void mesh_face_syscall_exit(int token) { _mesh_syscall_exit(token); }

#endif
