/* libmesh.c - face 2: the core as the process malloc (LD_PRELOAD or link).
 *
 * Exports the malloc family with glibc's names and semantics, plus the
 * public mesh_* API (mesh.h). Everything else in the library is hidden
 * (-fvisibility=hidden), so two copies of the core never see each other's
 * symbols. A constructor initialises the heap while the process is still
 * single-threaded, which also registers the fork handlers before any other
 * library's; with MALLOCSTATS=1 a destructor prints the summary at exit.
 * There is no teardown: blocks are still freed after the destructor runs.
 */
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "../core/internal.h"

#define EXPORT __attribute__((visibility("default")))

EXPORT void *malloc(size_t size) { return mesh_malloc(size); }
EXPORT void free(void *p) { mesh_free(p); }
EXPORT void cfree(void *p) { mesh_free(p); }
EXPORT void *calloc(size_t n, size_t size) { return mesh_calloc(n, size); }
EXPORT void *realloc(void *p, size_t size) { return mesh_realloc(p, size); }
EXPORT void *reallocarray(void *p, size_t n, size_t size) { return mesh_reallocarray(p, n, size); }
EXPORT void *memalign(size_t align, size_t size) { return mesh_memalign(align, size); }
EXPORT int posix_memalign(void **out, size_t align, size_t size) { return mesh_posix_memalign(out, align, size); }
EXPORT void *aligned_alloc(size_t align, size_t size) { return mesh_aligned_alloc(align, size); }
EXPORT void *valloc(size_t size) { return mesh_valloc(size); }
EXPORT void *pvalloc(size_t size) { return mesh_pvalloc(size); }
EXPORT size_t malloc_usable_size(void *p) { return mesh_usable_size(p); }
EXPORT int malloc_trim(size_t pad) {
  (void)pad;
  return mesh_scavenge() > 0;
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
  if (s && *s && !(s[0] == '0' && !s[1]) && mesh_load_acquire(&_mesh_init_state) == 2) mesh_stats_print(2);
}
