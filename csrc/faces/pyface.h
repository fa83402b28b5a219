/* pyface.h - what the two files of the CPython face share.
 *
 * pymodule.c is the module: it picks the backend (the extension's own core
 * or a libmesh.so already in the process), offers the core's raw surface
 * to meshalloc/__init__.py and installs the hooks. pyhooks.c is the hooks:
 * the PyMem allocator functions, what they wrap and what they count. Both
 * see the core through mesh.h and core/face.h only.
 *
 * `py_api` is written once, at module init under the GIL, before any hook
 * can run, and only read afterwards: it needs no lock.
 */
#ifndef MESH_PYFACE_H
#define MESH_PYFACE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "../core/face.h"
#include "../mesh.h"

/* The entry points the face calls, as one list:
 * X(field, symbol, return type, parameter list). */
#define MESH_PY_ENTRIES(X)                                                  \
    X(version, "mesh_version", const char *, (void))                        \
    X(malloc, "mesh_malloc", void *, (size_t))                              \
    X(calloc, "mesh_calloc", void *, (size_t, size_t))                      \
    X(realloc, "mesh_realloc", void *, (void *, size_t))                    \
    X(free, "mesh_free", void, (void *))                                    \
    X(owns, "mesh_owns", int, (const void *))                               \
    X(compact_ex, "mesh_compact_ex", size_t, (size_t *))                    \
    X(periodic_wait_ns, "mesh_periodic_wait_ns", long long, (void))         \
    X(scavenge, "mesh_scavenge", size_t, (void))                            \
    X(check_heap, "mesh_check_heap", int, (void))                           \
    X(meshing_available, "mesh_meshing_available", int, (void))             \
    X(option_get, "mesh_option_get", long, (const char *))                  \
    X(option_set, "mesh_option_set", int, (const char *, long))             \
    X(option_count, "mesh_option_count", int, (void))                       \
    X(option_name, "mesh_option_name", const char *, (int))                 \
    X(option_doc, "mesh_option_doc", const char *, (int))                   \
    X(stats_count, "mesh_stats_count", int, (void))                         \
    X(stats_name, "mesh_stats_name", const char *, (int))                   \
    X(stats_doc, "mesh_stats_doc", const char *, (int))                     \
    X(stats_read, "mesh_stats_read", int, (uint64_t *, int))                \
    X(stats_print, "mesh_stats_print", void, (int))                         \
    X(class_stats, "mesh_class_stats", int, (mesh_class_stats_t *, int))    \
    X(class_stats_name, "mesh_class_stats_name", const char *, (int))

typedef struct mesh_py_api_s {
#define X(field, symbol, ret, params) ret (*field) params;
    MESH_PY_ENTRIES(X)
#undef X
} mesh_py_api_t;

extern mesh_py_api_t py_api;   /* the backend in use (pymodule.c) */
extern int py_preloaded;       /* 1 when py_api points into a preloaded libmesh */

/* ---- pyhooks.c ---- */
#define PY_NDOMAINS 3
extern const char *const py_domain_names[PY_NDOMAINS];  /* "raw", "mem", "obj" */
extern const char *const py_domain_macros[PY_NDOMAINS]; /* "PYMEM_DOMAIN_RAW", ... */
extern PyMemAllocatorEx py_saved[PY_NDOMAINS];   /* what each hook wraps */
const PyMemAllocatorEx *py_hooks_of(void); /* the hooks install() sets: py_preloaded decides which */
/* Sends domain d's new blocks to meshalloc (on) or to py_saved[d] again. */
void py_divert(int d, int on);
int py_diverting(int d);
/* Module functions: the hook counters' names and docs, and their values. */
PyObject *py_hook_names(PyObject *self, PyObject *unused);
PyObject *py_hook_counts(PyObject *self, PyObject *unused);

#endif
