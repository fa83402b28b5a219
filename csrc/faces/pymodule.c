/* pymodule.c - the CPython face: the `_meshalloc` extension module's glue.
 *
 * This file is Python glue only. It sees the core through mesh.h, except
 * that the PyMem hooks inline the core's malloc and free fast paths
 * (core/fast_path.h) when the extension's own core is the heap, and it is
 * the one file of the extension that includes Python.h. It
 * may allocate with PyMem (it runs as ordinary Python code); the core below it
 * never calls back into Python.
 *
 * One heap per process (docs/python.md, "How the hooks work"). When libmesh.so
 * is already in the process (LD_PRELOAD, or dlopen'ed RTLD_GLOBAL) its mesh_*
 * functions are visible to dlsym(RTLD_DEFAULT); the module then routes every
 * call to that copy and the extension's own core is never touched, so it
 * never starts a second heap.
 * The extension's core is built with MESH_API defined empty (setup_mesh.py):
 * its mesh_* symbols are hidden, so they cannot be what dlsym finds and a
 * preloaded library cannot interpose on them.
 *
 * The backend is chosen once, at module init, under the GIL, and never
 * changes afterwards: `api` is written before the module object exists and
 * only read after, so it needs no lock.
 *
 * The module can also become the interpreter's allocator: _install() wraps
 * the PyMem domains with hooks that send new blocks to the backend and every
 * other block back to the allocator they wrapped (see "the PyMem hooks"
 * below and docs/python.md; meshalloc/__init__.py's install() is the
 * public entry point). With libmesh.so preloaded the hooks use the preloaded
 * heap like every other call here.
 *
 * Builds with CPython 3.9-3.13 (single-phase init, no limited API).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "mesh.h"
#include "fast_path.h" /* the hooks' inline fast paths */

/* ---- the backend table ------------------------------------------------ */

/* The entry points this module calls, as one list:
 * X(field, symbol, return type, parameter list). */
#define MESH_PY_ENTRIES(X)                                                  \
    X(version, "mesh_version", const char *, (void))                        \
    X(malloc, "mesh_malloc", void *, (size_t))                              \
    X(calloc, "mesh_calloc", void *, (size_t, size_t))                      \
    X(realloc, "mesh_realloc", void *, (void *, size_t))                    \
    X(free, "mesh_free", void, (void *))                                    \
    X(owns, "mesh_owns", int, (const void *))                               \
    X(compact, "mesh_compact", size_t, (void))                              \
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
    X(class_stats, "mesh_class_stats", int, (mesh_class_stats_t *, int))

typedef struct mesh_py_api_s {
#define X(field, symbol, ret, params) ret (*field) params;
    MESH_PY_ENTRIES(X)
#undef X
} mesh_py_api_t;

/* The extension's own core. */
static const mesh_py_api_t local_api = {
#define X(field, symbol, ret, params) .field = mesh_##field,
    MESH_PY_ENTRIES(X)
#undef X
};

static mesh_py_api_t api;          /* the backend in use, set at init */
static int api_preloaded;          /* 1 when api points into another library */
static const char *api_library;    /* that library's path (dladdr), or NULL */

_Static_assert(sizeof(void *) == sizeof(void (*)(void)),
               "dlsym results are stored as function pointers");

/* Routes to a libmesh already in the process, if there is one.
 * Returns 0 (with `api` set) or -1 with a Python exception set when a
 * libmesh is present but lacks an entry point (a different version). */
static int select_backend(void) {
    void *probe = dlsym(RTLD_DEFAULT, "mesh_version");
    void *own;
    const char *(*own_version)(void) = mesh_version;
    memcpy(&own, &own_version, sizeof own);
    if (probe == NULL || probe == own) {
        api = local_api;
        api_preloaded = 0;
        api_library = NULL;
        return 0;
    }

    mesh_py_api_t found;
    memset(&found, 0, sizeof found);
#define X(field, symbol, ret, params)                                       \
    do {                                                                    \
        void *sym_ = dlsym(RTLD_DEFAULT, symbol);                           \
        if (sym_ == NULL) {                                                 \
            PyErr_Format(PyExc_ImportError,                                 \
                         "a libmesh is already loaded in this process but " \
                         "it has no %s; it does not match meshalloc %s",    \
                         symbol, MESH_VERSION_STRING);                      \
            return -1;                                                      \
        }                                                                   \
        memcpy(&found.field, &sym_, sizeof sym_);                           \
    } while (0);
    MESH_PY_ENTRIES(X)
#undef X

    Dl_info info;
    api_library = NULL;
    if (dladdr(probe, &info) != 0 && info.dli_fname != NULL)
        api_library = info.dli_fname;  /* owned by the loader, stays valid */
    api = found;
    api_preloaded = 1;
    return 0;
}

/* ---- helpers ---------------------------------------------------------- */

static PyObject *str_or_none(const char *s) {
    if (s == NULL)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

/* The index of option `name`, or -1. */
static int option_index(const char *name) {
    int n = api.option_count();
    for (int i = 0; i < n; i++) {
        const char *cand = api.option_name(i);
        if (cand != NULL && strcmp(cand, name) == 0)
            return i;
    }
    return -1;
}

/* ---- the PyMem hooks (docs/python.md) --------------------------------- */

/* install() puts one WRAPPING hook on each selected PyMem domain (after
 * start-up an extension may only wrap the allocator in place: docs/python.md,
 * "How the hooks work"). The previous allocator of each domain is copied into
 * saved[] at install time; every block that is not ours (one range compare,
 * the block is never read) goes back to it, with its own ctx, on free and
 * realloc. A foreign block is never migrated on realloc: its size is unknown.
 *
 * The hooks never look at their ctx argument: PyMem_SetAllocator copies the
 * struct without a lock and a RAW caller on another thread may see a torn
 * (function, ctx) pair. Each domain has its own set of functions reading the
 * static saved[] copy instead, and the ctx we install is the previous
 * allocator's own ctx, so every torn pair is still a consistent one. saved[]
 * is filled with the allocators in place at module load too, so a hook can
 * never see an all-zero copy.
 *
 * uninstall() is a soft switch (docs/python.md, the section of that name):
 * diverting[d] goes to 0 and new allocations go to the previous allocator
 * again, but the hooks stay in place for the life of the process and keep
 * freeing (and reallocating) meshalloc blocks by range check. Restoring the
 * previous allocator would make the next free of a meshalloc block crash it.
 *
 * Thread safety: the hooks are called concurrently (RAW from any thread
 * without the GIL; MEM/OBJ from subinterpreters with their own GIL on
 * 3.12+). They touch only the core (thread-safe), the read-only saved[],
 * the atomic diverting[] flag and the calling thread's own counters (see
 * "hook counters" below). install/uninstall run under the main
 * interpreter's GIL. */

#include <stdatomic.h>
#include <time.h>

_Static_assert(PYMEM_DOMAIN_RAW == 0 && PYMEM_DOMAIN_MEM == 1 && PYMEM_DOMAIN_OBJ == 2,
               "domain numbers index the tables below");
#define NDOMAINS 3

static const char *const domain_names[NDOMAINS] = {"raw", "mem", "obj"};
static const char *const domain_macros[NDOMAINS] = {
    "PYMEM_DOMAIN_RAW", "PYMEM_DOMAIN_MEM", "PYMEM_DOMAIN_OBJ"};

static PyMemAllocatorEx saved[NDOMAINS];      /* the wrapped allocators */
static _Atomic int diverting[NDOMAINS];       /* DIVERT_*: new blocks from meshalloc */
static int hooked[NDOMAINS];                  /* our hook is in place (GIL) */

/* The allocators in place when this module was loaded: a later change by
 * somebody else is an "unknown hook". When tracemalloc was tracing at load,
 * its hooks were on top and what lies under them is unknown to us: the
 * baseline is then adopted at the first install (after tracemalloc stopped). */
static PyMemAllocatorEx baseline[NDOMAINS];
static int baseline_adopt;

static PyObject *install_error;               /* meshalloc.InstallError */
static int stats_at_exit;                     /* Py_AtExit registered */

#define DIVERTING(d) atomic_load_explicit(&diverting[(d)], memory_order_relaxed)

/* ---- hook counters ----------------------------------------------------- */

/* What the hooks did, per domain: blocks meshalloc handed out (malloc and
 * calloc), reallocated and freed, and blocks it did not own that it handed
 * to the wrapped allocator (realloc and free). meshalloc.stats() reports
 * them (docs/python.md).
 *
 * The hooks are the allocation fast path, so a count costs no atomic
 * read-modify-write. The fast paths (own core, see "the hook bodies")
 * count allocs and frees in the calling thread's heap, which the core keeps
 * for the life of the process (mesh_face_count()); every other
 * count goes to a per-thread block: each thread has its own block of counters
 * (_Thread_local, initial-exec: one %fs-relative access) that only that
 * thread writes, with a relaxed load and a relaxed store (a plain mov/add/
 * mov on x86-64, no lock prefix). Readers load the same words relaxed, so
 * nothing is a data race and no update is ever lost: the counts are exact;
 * only a snapshot taken while other threads allocate is not instantaneous.
 *
 * A counter that is still 0 takes the slow path: that is the fast path's
 * only test. A thread's block joins the list `counts_all` the first time it
 * counts (under `counts_lock`), together with a pthread key whose
 * destructor, at thread exit, adds the block into `counts_retired`, takes
 * it off the list before the thread's TLS goes away and zeroes it. A count
 * that comes after that destructor (a later destructor freeing a block) or
 * while the thread's block is being set up goes straight to
 * `counts_retired` with an atomic add: rare, so the cost does not matter.
 * In a fork child only the forking thread exists: the child handler folds
 * the other threads' blocks (still mapped: the child has a copy of their
 * stacks) into `counts_retired` and drops them from the list.
 *
 * Lock order: `counts_lock` is a leaf (the core's lock, taken to sum the
 * heaps' counts, is taken after it is released). Nothing that allocates runs under it
 * (pthread_setspecific may call malloc, so it runs before the lock), and the
 * reader copies the sums out before it builds Python objects. */

#include <pthread.h>

enum {
    HC_ALLOCS,            /* malloc + calloc served by meshalloc */
    HC_REALLOCS,          /* realloc of a meshalloc block */
    HC_FREES,             /* free of a meshalloc block */
    HC_FOREIGN_REALLOCS,  /* realloc of a block meshalloc does not own */
    HC_FOREIGN_FREES,     /* free of a block meshalloc does not own */
    HC_N
};
static const char *const hc_names[HC_N] = {
    "allocs", "reallocs", "frees", "foreign_reallocs", "foreign_frees"};

enum { HC_NEW = 0, HC_ACTIVE = 1, HC_OFF = 2 };

/* The hooks' fast paths count allocs and frees in the thread heap instead
 * (mesh_face_count(), see "the hook bodies"); this is the index. */
#define FACE_COUNT(d, what) ((d) * 2 + ((what) == HC_FREES))
_Static_assert(NDOMAINS * 2 <= MESH_FACE_COUNTS, "face_counts holds allocs and frees per domain");

typedef struct hook_counts_s {
    _Atomic uint64_t n[NDOMAINS][HC_N];  /* written by the owning thread only */
    struct hook_counts_s *prev, *next;   /* counts_all, under counts_lock */
    int state;                           /* owning thread only */
} hook_counts_t;

static _Thread_local hook_counts_t tls_counts
    __attribute__((tls_model("initial-exec")));

static pthread_mutex_t counts_lock = PTHREAD_MUTEX_INITIALIZER;
static hook_counts_t counts_all = {.prev = &counts_all, .next = &counts_all};
static _Atomic uint64_t counts_retired[NDOMAINS][HC_N];
static pthread_key_t counts_key;
static int counts_key_ok;  /* set once at module init, before any install */

static void counts_retire_locked(hook_counts_t *c) {
    for (int d = 0; d < NDOMAINS; d++)
        for (int k = 0; k < HC_N; k++)
            atomic_fetch_add_explicit(
                &counts_retired[d][k],
                atomic_load_explicit(&c->n[d][k], memory_order_relaxed),
                memory_order_relaxed);
    c->prev->next = c->next;
    c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* The pthread key destructor: the thread is exiting. */
static void counts_thread_exit(void *arg) {
    hook_counts_t *c = arg;
    pthread_mutex_lock(&counts_lock);
    if (c->next != NULL)
        counts_retire_locked(c);
    /* Zero counters send every later count of this thread (a later
     * destructor freeing a block) to the slow path, hence counts_retired. */
    for (int d = 0; d < NDOMAINS; d++)
        for (int k = 0; k < HC_N; k++)
            atomic_store_explicit(&c->n[d][k], 0, memory_order_relaxed);
    c->state = HC_OFF;
    pthread_mutex_unlock(&counts_lock);
}

static __attribute__((noinline, cold)) void hc_bump_slow(int d, int what) {
    hook_counts_t *c = &tls_counts;
    if (c->state == HC_ACTIVE) {  /* the first count of this kind */
        atomic_store_explicit(&c->n[d][what], 1, memory_order_relaxed);
        return;
    }
    if (c->state == HC_NEW && counts_key_ok) {
        c->state = HC_OFF;  /* a count from inside pthread_setspecific is safe */
        if (pthread_setspecific(counts_key, c) == 0) {
            pthread_mutex_lock(&counts_lock);
            c->prev = &counts_all;
            c->next = counts_all.next;
            counts_all.next->prev = c;
            counts_all.next = c;
            pthread_mutex_unlock(&counts_lock);
            c->state = HC_ACTIVE;
            atomic_store_explicit(&c->n[d][what], 1, memory_order_relaxed);
            return;
        }
    }
    atomic_fetch_add_explicit(&counts_retired[d][what], 1, memory_order_relaxed);
}

static inline __attribute__((always_inline)) void hc_bump(int d, int what) {
    /* Single writer: load + store, not an atomic add (no lock prefix). A
     * counter is 0 only until this thread's first count of that kind, so
     * "0" doubles as "maybe not registered yet": no separate state test. */
    _Atomic uint64_t *v = &tls_counts.n[d][what];
    uint64_t old = atomic_load_explicit(v, memory_order_relaxed);
    if (__builtin_expect(old == 0, 0)) {
        hc_bump_slow(d, what);
        return;
    }
    atomic_store_explicit(v, old + 1, memory_order_relaxed);
}

/* Sum of every thread's counters into out (NDOMAINS * HC_N values). */
static void counts_read(uint64_t out[NDOMAINS][HC_N]) {
    pthread_mutex_lock(&counts_lock);
    for (int d = 0; d < NDOMAINS; d++)
        for (int k = 0; k < HC_N; k++)
            out[d][k] = atomic_load_explicit(&counts_retired[d][k], memory_order_relaxed);
    for (hook_counts_t *c = counts_all.next; c != &counts_all; c = c->next)
        for (int d = 0; d < NDOMAINS; d++)
            for (int k = 0; k < HC_N; k++)
                out[d][k] += atomic_load_explicit(&c->n[d][k], memory_order_relaxed);
    pthread_mutex_unlock(&counts_lock);
    if (!api_preloaded) {  /* the hooks' fast paths count in the thread heaps */
        uint64_t fc[MESH_FACE_COUNTS];
        _mesh_heaps_face_counts(fc);
        for (int d = 0; d < NDOMAINS; d++) {
            out[d][HC_ALLOCS] += fc[FACE_COUNT(d, HC_ALLOCS)];
            out[d][HC_FREES] += fc[FACE_COUNT(d, HC_FREES)];
        }
    }
}

static void counts_prefork(void) { pthread_mutex_lock(&counts_lock); }
static void counts_postfork_parent(void) { pthread_mutex_unlock(&counts_lock); }
static void counts_postfork_child(void) {
    /* Only this thread survives: fold the others into counts_retired. */
    hook_counts_t *self = &tls_counts, *c = counts_all.next;
    while (c != &counts_all) {
        hook_counts_t *next = c->next;
        if (c != self)
            counts_retire_locked(c);
        c = next;
    }
    pthread_mutex_init(&counts_lock, NULL);
}

static void counts_init(void) {
    static int done;
    if (done)
        return;
    done = 1;
    counts_key_ok = pthread_key_create(&counts_key, counts_thread_exit) == 0;
    if (pthread_atfork(counts_prefork, counts_postfork_parent, counts_postfork_child) != 0)
        counts_key_ok = 0;  /* no safe fork story: count in counts_retired */
}

/* ---- the hook bodies --------------------------------------------------- */

/* Each hook is a fast path with no call in it and one out-of-line slow
 * path that handles every case again from scratch (it is also the only
 * path when libmesh.so is the backend). The fast path applies when the
 * domain is diverted to the extension's own core (DIVERT_INLINE): malloc
 * pops the thread heap's shuffle vector (mesh_malloc_try), free does the
 * range check and the local push (mesh_free_in), and the allocs/frees
 * count goes into the thread heap the core code already holds
 * (mesh_face_count()) instead of a second thread-local block.
 * Keeping calls out of the fast path lets the compiler skip the register
 * saves a call would need: the hooks are a third of the allocator's
 * instructions on Python code. */

enum { DIVERT_OFF = 0, DIVERT_INLINE = 1, DIVERT_API = 2 };

/* The diverting[] value of a domain turned on: the inline fast paths serve
 * it unless a preloaded libmesh.so is the heap (then only its API does). */
static int divert_on(void) { return api_preloaded ? DIVERT_API : DIVERT_INLINE; }

static inline __attribute__((always_inline)) void
face_count(thread_heap_t *h, int d, int what) {
    _Atomic uint64_t *v = mesh_face_count(h, FACE_COUNT(d, what));
    atomic_store_explicit(v, atomic_load_explicit(v, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

static __attribute__((noinline)) void *hook_malloc_slow(int d, size_t n) {
    if (DIVERTING(d)) {
        size_t m = n != 0 ? n : 1;  /* size 0: distinct, non-NULL */
        void *p = api_preloaded ? api.malloc(m) : mesh_malloc(m);
        if (p != NULL) {
            hc_bump(d, HC_ALLOCS);
            return p;
        }
        /* Arena exhausted: the wrapped allocator may still have memory; its
         * block is freed through it again by the range check. */
    }
    return saved[d].malloc(saved[d].ctx, n);
}

static inline __attribute__((always_inline)) void *hook_malloc(int d, size_t n) {
    /* (n == 0 needs no test: mesh_malloc_try leaves it to the slow path,
     * which serves it as 1) */
    if (mesh_likely(DIVERTING(d) == DIVERT_INLINE)) {
        thread_heap_t *h = _mesh_tls.heap;
        void *p = mesh_malloc_try(h, n);
        if (mesh_likely(p != NULL)) {  /* so h is a real heap, not the sentinel */
            face_count(h, d, HC_ALLOCS);
            return p;
        }
    }
    return hook_malloc_slow(d, n);
}

static inline __attribute__((always_inline)) void *
hook_calloc(int d, size_t nelem, size_t elsize) {
    if (DIVERTING(d)) {
        /* tracemalloc and the debug hooks call calloc directly, so the
         * overflow check belongs here, not only in the core. */
        if (elsize != 0 && nelem > SIZE_MAX / elsize)
            return NULL;
        if (nelem == 0 || elsize == 0)
            nelem = elsize = 1;
        void *p = api.calloc(nelem, elsize);
        if (p != NULL) {
            hc_bump(d, HC_ALLOCS);
            return p;
        }
    }
    return saved[d].calloc(saved[d].ctx, nelem, elsize);
}

static inline __attribute__((always_inline)) void *
hook_realloc(int d, void *p, size_t n) {
    if (p == NULL)
        return hook_malloc(d, n);
    if (api.owns(p)) {  /* ours stays ours, also after uninstall() */
        hc_bump(d, HC_REALLOCS);
        return api.realloc(p, n != 0 ? n : 1);  /* realloc(p, 0) never frees */
    }
    hc_bump(d, HC_FOREIGN_REALLOCS);
    return saved[d].realloc(saved[d].ctx, p, n);  /* never migrated */
}

static __attribute__((noinline)) void hook_free_slow(int d, void *p) {
    if (p == NULL)
        return;
    if (api.owns(p)) {  /* stays true after uninstall(): ours is freed here */
        api.free(p);
        hc_bump(d, HC_FREES);
        return;
    }
    hc_bump(d, HC_FOREIGN_FREES);
    saved[d].free(saved[d].ctx, p);
}

static inline __attribute__((always_inline)) void hook_free(int d, void *p) {
    if (mesh_likely(!api_preloaded)) {
        /* One range check decides ours or not (NULL is not ours); ours is
         * freed at once. Not only while diverting: after uninstall() our
         * blocks still come back here. */
        thread_heap_t *h = _mesh_tls.heap;
        int r = mesh_free_in(h, p);
        if (mesh_likely(r == MESH_FREE_LOCAL)) {  /* h is a real heap */
            face_count(h, d, HC_FREES);
            return;
        }
        if (r == MESH_FREE_OTHER) {  /* h may be a sentinel: the thread's own block */
            hc_bump(d, HC_FREES);
            return;
        }
    }
    hook_free_slow(d, p);
}

#define MESH_PY_DEFINE_HOOKS(name, d)                                       \
    static void *name##_malloc(void *ctx, size_t n) {                       \
        (void)ctx;                                                          \
        return hook_malloc((d), n);                                         \
    }                                                                       \
    static void *name##_calloc(void *ctx, size_t nelem, size_t elsize) {    \
        (void)ctx;                                                          \
        return hook_calloc((d), nelem, elsize);                             \
    }                                                                       \
    static void *name##_realloc(void *ctx, void *p, size_t n) {             \
        (void)ctx;                                                          \
        return hook_realloc((d), p, n);                                     \
    }                                                                       \
    static void name##_free(void *ctx, void *p) {                           \
        (void)ctx;                                                          \
        hook_free((d), p);                                                  \
    }

MESH_PY_DEFINE_HOOKS(raw, PYMEM_DOMAIN_RAW)
MESH_PY_DEFINE_HOOKS(mem, PYMEM_DOMAIN_MEM)
MESH_PY_DEFINE_HOOKS(obj, PYMEM_DOMAIN_OBJ)

static const PyMemAllocatorEx hooks[NDOMAINS] = {
    {.ctx = NULL, .malloc = raw_malloc, .calloc = raw_calloc,
     .realloc = raw_realloc, .free = raw_free},
    {.ctx = NULL, .malloc = mem_malloc, .calloc = mem_calloc,
     .realloc = mem_realloc, .free = mem_free},
    {.ctx = NULL, .malloc = obj_malloc, .calloc = obj_calloc,
     .realloc = obj_realloc, .free = obj_free},
};

static int same_functions(const PyMemAllocatorEx *a, const PyMemAllocatorEx *b) {
    return a->malloc == b->malloc && a->calloc == b->calloc &&
           a->realloc == b->realloc && a->free == b->free;
}

static int same_allocator(const PyMemAllocatorEx *a, const PyMemAllocatorEx *b) {
    return a->ctx == b->ctx && same_functions(a, b);
}

/* The object file that defines function pointer fn (dladdr), or NULL; and
 * its load address in *base. */
static const char *object_of(void *(*fn)(void *, size_t), void **base) {
    Dl_info info;
    void *addr;
    memcpy(&addr, &fn, sizeof addr);
    *base = NULL;
    if (addr == NULL || dladdr(addr, &info) == 0)
        return NULL;
    *base = info.dli_fbase;
    return info.dli_fname;
}

static void *own_base(void) {
    void *base;
    (void)object_of(raw_malloc, &base);
    return base;
}

/* 1 when fn lives in another copy of this extension (another meshalloc
 * install in the same process: it must not be wrapped, one heap only). */
static int other_meshalloc(void *(*fn)(void *, size_t), const char **path) {
    void *base;
    const char *file = object_of(fn, &base);
    *path = file;
    if (file == NULL || base == NULL || base == own_base())
        return 0;
    const char *slash = strrchr(file, '/');
    const char *name = slash != NULL ? slash + 1 : file;
    return strncmp(name, "_meshalloc", 10) == 0;
}

static PyObject *refuse(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    PyObject *msg = PyUnicode_FromFormatV(fmt, ap);
    va_end(ap);
    if (msg != NULL) {
        PyErr_SetObject(install_error != NULL ? install_error : PyExc_RuntimeError, msg);
        Py_DECREF(msg);
    }
    return NULL;
}

static void print_stats_at_exit(void) {
    /* Called by Py_FinalizeEx after everything else; plain C, no Python. */
    api.stats_print(2);
}

static int env_flag(const char *name) {
    const char *s = getenv(name);
    return s != NULL && s[0] != '\0' && !(s[0] == '0' && s[1] == '\0');
}

static unsigned domain_mask(_Atomic int *flags_or_null) {
    unsigned mask = 0;
    for (int d = 0; d < NDOMAINS; d++)
        if (flags_or_null != NULL ? atomic_load(&flags_or_null[d]) : hooked[d])
            mask |= 1u << d;
    return mask;
}

PyDoc_STRVAR(install_doc,
"_install(mask: int, force: bool) -> int\n\n"
"Wrap the PyMem domains in mask (bit 0 RAW, 1 MEM, 2 OBJ) with meshalloc's\n"
"hooks and divert their new allocations to meshalloc. Returns the number of\n"
"domains newly diverted (0: nothing to do). Raises the class given to\n"
"set_install_error() with the reason when it refuses. Use\n"
"meshalloc.install(), which also handles tracemalloc and the defaults.");

static PyObject *py_install(PyObject *self, PyObject *args) {
    (void)self;
    unsigned int mask;
    int force;
    if (!PyArg_ParseTuple(args, "Ip:_install", &mask, &force))
        return NULL;
    if (mask == 0 || (mask & ~7u) != 0) {
        PyErr_Format(PyExc_ValueError, "domain mask %u: expected 1..7", mask);
        return NULL;
    }
#if defined(Py_GIL_DISABLED) || defined(MESHALLOC_TEST_FREE_THREADED)
    /* MESHALLOC_TEST_FREE_THREADED: the test suite builds a copy with this
     * refusal on to test it (tests/test_python_install.py). */
    return refuse("this is a free-threaded CPython build (Py_GIL_DISABLED): its "
                  "garbage collector walks mimalloc's heaps, so objects must come "
                  "from mimalloc");
#endif
    if (PyInterpreterState_Get() != PyInterpreterState_Main())
        return refuse("install() must be called from the main interpreter, not "
                      "a subinterpreter (the allocator is process-wide)");

    unsigned newly = mask & ~domain_mask(diverting);
    if (newly == 0)
        return PyLong_FromLong(0);  /* installing twice is a no-op */

    /* Check every domain to hook before hooking any: all or nothing. */
    for (int d = 0; d < NDOMAINS; d++) {
        if (!(mask & (1u << d)) || hooked[d])
            continue;
        PyMemAllocatorEx current;
        PyMem_GetAllocator((PyMemAllocatorDomain)d, &current);
        const char *path;
        if (other_meshalloc(current.malloc, &path))
            return refuse("another copy of meshalloc (%s) is already installed on "
                          "%s; a process must never run two meshalloc heaps",
                          path != NULL ? path : "?", domain_macros[d]);
        if (!baseline_adopt && !force && !same_allocator(&current, &baseline[d])) {
            void *base;
            const char *file = object_of(current.malloc, &base);
            return refuse("an unknown allocator hook was installed on %s after "
                          "meshalloc was loaded (its malloc is in %s); meshalloc "
                          "would wrap it: pass force=True if that is intended",
                          domain_macros[d],
                          file != NULL ? file : "an unknown object");
        }
    }

    /* Start the heap now, not inside the first hooked allocation. */
    void *probe = api.malloc(1);
    if (probe == NULL)
        return refuse("the meshalloc heap cannot start (errno %d)", errno);
    api.free(probe);

    for (int d = 0; d < NDOMAINS; d++) {
        if (!(newly & (1u << d)))
            continue;
        if (hooked[d]) {  /* after uninstall(): the hook is still in place */
            atomic_store(&diverting[d], divert_on());
            continue;
        }
        /* The previous allocator, as it is now (the struct is copied). */
        PyMem_GetAllocator((PyMemAllocatorDomain)d, &saved[d]);
        atomic_store(&diverting[d], divert_on());
        atomic_thread_fence(memory_order_seq_cst);  /* saved[] before the hook */
        PyMemAllocatorEx hook = hooks[d];
        hook.ctx = saved[d].ctx;  /* see above: a torn pair stays consistent */
        PyMem_SetAllocator((PyMemAllocatorDomain)d, &hook);
        hooked[d] = 1;
    }
    if (baseline_adopt) {
        for (int d = 0; d < NDOMAINS; d++) {
            if (hooked[d])
                baseline[d] = saved[d];  /* what we wrapped */
            else
                PyMem_GetAllocator((PyMemAllocatorDomain)d, &baseline[d]);
        }
        baseline_adopt = 0;
    }
    if (!stats_at_exit && !api_preloaded && env_flag("MALLOCSTATS")) {
        /* libmesh.so prints its own summary when it is the process malloc. */
        if (Py_AtExit(print_stats_at_exit) == 0)
            stats_at_exit = 1;
    }
    return PyLong_FromLong(__builtin_popcount(newly));
}

PyDoc_STRVAR(uninstall_doc,
"_uninstall() -> bool\n\n"
"Soft switch: new allocations go back to the wrapped allocators; the hooks\n"
"stay and keep freeing meshalloc blocks. True if anything was diverted.");

static PyObject *py_uninstall(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    int any = 0;
    for (int d = 0; d < NDOMAINS; d++)
        if (atomic_exchange(&diverting[d], 0) != 0)
            any = 1;
    return PyBool_FromLong(any);
}

PyDoc_STRVAR(installed_domains_doc,
"installed_domains() -> int\n\n"
"Mask of the domains whose new allocations come from meshalloc now\n"
"(bit 0 RAW, bit 1 MEM, bit 2 OBJ).");

static PyObject *py_installed_domains(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return PyLong_FromUnsignedLong(domain_mask(diverting));
}

PyDoc_STRVAR(hooked_domains_doc,
"hooked_domains() -> int\n\n"
"Mask of the domains that carry meshalloc's hook (it stays after\n"
"uninstall()).");

static PyObject *py_hooked_domains(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return PyLong_FromUnsignedLong(domain_mask(NULL));
}

PyDoc_STRVAR(allocators_doc,
"allocators() -> dict[str, dict]\n\n"
"For each domain ('raw', 'mem', 'obj'): the allocator in place now\n"
"(malloc address and the object file defining it), whether it is\n"
"meshalloc's hook, whether it is the one recorded when the module was\n"
"loaded, and the wrapped allocator's object file when hooked.");

static PyObject *describe_allocator(int d) {
    PyMemAllocatorEx cur;
    void *addr, *base;
    PyMem_GetAllocator((PyMemAllocatorDomain)d, &cur);
    memcpy(&addr, &cur.malloc, sizeof addr);
    const char *file = object_of(cur.malloc, &base);
    const char *wrapped = NULL;
    if (hooked[d])
        wrapped = object_of(saved[d].malloc, &base);
    return Py_BuildValue(
        "{s:K,s:s,s:O,s:O,s:O,s:O,s:s}",
        "malloc", (unsigned long long)(uintptr_t)addr,
        "object", file != NULL ? file : "",
        "meshalloc", same_functions(&cur, &hooks[d]) ? Py_True : Py_False,
        "baseline", (!baseline_adopt && same_allocator(&cur, &baseline[d])) ? Py_True : Py_False,
        "hooked", hooked[d] ? Py_True : Py_False,
        "diverting", DIVERTING(d) ? Py_True : Py_False,
        "wrapped_object", wrapped != NULL ? wrapped : "");
}

static PyObject *py_allocators(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    PyObject *result = PyDict_New();
    for (int d = 0; result != NULL && d < NDOMAINS; d++) {
        PyObject *item = describe_allocator(d);
        if (item == NULL || PyDict_SetItemString(result, domain_names[d], item) < 0)
            Py_CLEAR(result);
        Py_XDECREF(item);
    }
    return result;
}

PyDoc_STRVAR(hook_counts_doc,
"hook_counts() -> dict[str, int]\n\n"
"What the PyMem hooks did, summed over every thread (exact; a snapshot\n"
"taken while other threads allocate is not instantaneous):\n"
"'<domain>_allocs' (malloc and calloc served by meshalloc),\n"
"'<domain>_reallocs', '<domain>_frees' (of meshalloc blocks),\n"
"'<domain>_foreign_reallocs', '<domain>_foreign_frees' (blocks meshalloc\n"
"does not own, handed to the wrapped allocator), for domain raw, mem, obj.");

static PyObject *py_hook_counts(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    uint64_t sums[NDOMAINS][HC_N];
    counts_read(sums);  /* before anything allocates: see "hook counters" */
    PyObject *result = PyDict_New();
    for (int d = 0; result != NULL && d < NDOMAINS; d++) {
        for (int k = 0; result != NULL && k < HC_N; k++) {
            char name[64];
            snprintf(name, sizeof name, "%s_%s", domain_names[d], hc_names[k]);
            PyObject *value = PyLong_FromUnsignedLongLong(sums[d][k]);
            if (value == NULL || PyDict_SetItemString(result, name, value) < 0)
                Py_CLEAR(result);
            Py_XDECREF(value);
        }
    }
    return result;
}

PyDoc_STRVAR(in_subinterpreter_doc,
"in_subinterpreter() -> bool\n\n"
"True when called from an interpreter other than the main one.");

static PyObject *py_in_subinterpreter(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return PyBool_FromLong(PyInterpreterState_Get() != PyInterpreterState_Main());
}

PyDoc_STRVAR(set_install_error_doc,
"set_install_error(cls) -> None\n\n"
"The exception class install refusals raise (meshalloc.InstallError).");

static PyObject *py_set_install_error(PyObject *self, PyObject *cls) {
    (void)self;
    if (!PyExceptionClass_Check(cls)) {
        PyErr_SetString(PyExc_TypeError, "expected an exception class");
        return NULL;
    }
    Py_INCREF(cls);
    Py_XSETREF(install_error, cls);
    Py_RETURN_NONE;
}

/* Index of stats field `name`, or -1. */
static int stats_index(const char *name) {
    int n = api.stats_count();
    for (int i = 0; i < n; i++) {
        const char *cand = api.stats_name(i);
        if (cand != NULL && strcmp(cand, name) == 0)
            return i;
    }
    return -1;
}

/* Reads fields 0..index only: a counter then costs no heap walk (the
 * derived fields, which walk it, come after the counters). */
static uint64_t stats_field(int index) {
    uint64_t values[256];
    if (index < 0 || index >= 256)
        return 0;
    int got = api.stats_read(values, index + 1);
    return index < got ? values[index] : 0;
}

PyDoc_STRVAR(stat_doc,
"stat(name: str) -> int\n\n"
"One field of the core's stats table, by name (KeyError if there is none):\n"
"cheaper than stats() for code that needs one figure, e.g. the\n"
"after-collection compaction reading mesh_pace_level.");

/* The str argument of a by-name lookup as UTF-8, or NULL with TypeError
 * (what: "option", "stats field") set. */
static const char *name_arg(PyObject *arg, const char *what) {
    if (!PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s name must be str, not %.100s", what,
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    return PyUnicode_AsUTF8(arg);
}

static PyObject *py_stat(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = name_arg(arg, "stats field");
    if (name == NULL)
        return NULL;
    int i = stats_index(name);
    if (i < 0) {
        PyErr_SetObject(PyExc_KeyError, arg);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong((unsigned long long)stats_field(i));
}

PyDoc_STRVAR(compact_doc,
"compact() -> tuple[int, int, float]\n\n"
"Mesh now until a pass frees nothing (mesh_compact), with the GIL released.\n"
"Returns (pages freed by meshing, pages returned to the OS during the call,\n"
"seconds the call took). Use meshalloc.compact().");

static PyObject *py_compact(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    static int punched = -2;
    if (punched == -2)
        punched = stats_index("pages_punched");
    size_t pages;
    uint64_t before, after;
    struct timespec t0, t1;
    Py_BEGIN_ALLOW_THREADS
    before = stats_field(punched);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pages = api.compact();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    after = stats_field(punched);
    Py_END_ALLOW_THREADS
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    return Py_BuildValue("(nKd)", (Py_ssize_t)pages,
                         (unsigned long long)(after > before ? after - before : 0), seconds);
}

/* Called at module load: the allocators in place now are the known ones. */
static int record_baseline(void) {
    for (int d = 0; d < NDOMAINS; d++) {
        PyMem_GetAllocator((PyMemAllocatorDomain)d, &baseline[d]);
        saved[d] = baseline[d];
    }
    baseline_adopt = 0;
    /* Tracing is on only if the tracemalloc module started it (then
     * _tracemalloc is imported) or PYTHONTRACEMALLOC / -X tracemalloc did
     * at start-up; otherwise _tracemalloc is not imported here, so that the
     * start-up switch imports nothing the interpreter would not. */
    PyObject *name = PyUnicode_FromString("_tracemalloc");
    if (name == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *tm = PyImport_GetModule(name); /* only if already imported */
    Py_DECREF(name);
    if (tm == NULL && PyErr_Occurred()) PyErr_Clear();
    if (tm == NULL) {
        PyObject *xopts = PySys_GetXOptions(); /* borrowed */
        const char *env = getenv("PYTHONTRACEMALLOC");
        bool asked = (env != NULL && *env) || (xopts != NULL && PyDict_GetItemString(xopts, "tracemalloc") != NULL);
        if (!asked) return 0;
        tm = PyImport_ImportModule("_tracemalloc");
    }
    if (tm == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *tracing = PyObject_CallMethod(tm, "is_tracing", NULL);
    Py_DECREF(tm);
    if (tracing == NULL) {
        PyErr_Clear();
        return 0;
    }
    baseline_adopt = PyObject_IsTrue(tracing) == 1;
    Py_DECREF(tracing);
    return 0;
}

/* ---- module functions ------------------------------------------------- */

PyDoc_STRVAR(version_doc,
"version() -> str\n\n"
"Version string of the meshalloc core in use.");

static PyObject *py_version(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return str_or_none(api.version());
}

PyDoc_STRVAR(owns_doc,
"owns(addr: int) -> bool\n\n"
"True if the address lies inside the meshalloc arena. The address is\n"
"compared, never read.");

static PyObject *py_owns(PyObject *self, PyObject *arg) {
    (void)self;
    PyObject *index = PyNumber_Index(arg);
    if (index == NULL)
        return NULL;
    unsigned long long addr = PyLong_AsUnsignedLongLong(index);
    Py_DECREF(index);
    if (addr == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (addr > (unsigned long long)UINTPTR_MAX) {
        PyErr_SetString(PyExc_OverflowError, "address does not fit a pointer");
        return NULL;
    }
    return PyBool_FromLong(api.owns((const void *)(uintptr_t)addr));
}

PyDoc_STRVAR(stats_doc,
"stats() -> dict[str, int]\n\n"
"A snapshot of the core's counters, by name, in the core's order.");

static PyObject *py_stats(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    uint64_t small[128];
    uint64_t *values = small;
    int n = api.stats_count();
    if (n < 0)
        n = 0;
    if ((size_t)n > sizeof small / sizeof small[0]) {
        values = PyMem_New(uint64_t, (size_t)n);
        if (values == NULL)
            return PyErr_NoMemory();
    }
    int got = n > 0 ? api.stats_read(values, n) : 0;
    if (got > n)
        got = n;

    PyObject *result = PyDict_New();
    for (int i = 0; result != NULL && i < got; i++) {
        const char *name = api.stats_name(i);
        if (name == NULL)
            continue;
        PyObject *value = PyLong_FromUnsignedLongLong(values[i]);
        if (value == NULL || PyDict_SetItemString(result, name, value) < 0)
            Py_CLEAR(result);
        Py_XDECREF(value);
    }
    if (values != small)
        PyMem_Free(values);
    return result;
}

PyDoc_STRVAR(class_stats_doc,
"class_stats() -> list[tuple[int, ...]]\n\n"
"One tuple per size class, the fields of mesh_class_stats_t in order.");

static PyObject *py_class_stats(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    enum { MAX_CLASSES = 256 };
    mesh_class_stats_t *cs = PyMem_New(mesh_class_stats_t, MAX_CLASSES);
    if (cs == NULL)
        return PyErr_NoMemory();
    int n = api.class_stats(cs, MAX_CLASSES);
    if (n > MAX_CLASSES)
        n = MAX_CLASSES;
    PyObject *result = PyList_New(0);
    for (int i = 0; result != NULL && i < n; i++) {
        const mesh_class_stats_t *c = &cs[i];
        PyObject *t = Py_BuildValue("(KKKKKKKKK)", (unsigned long long)c->object_size,
                                    (unsigned long long)c->span_bytes, (unsigned long long)c->spans,
                                    (unsigned long long)c->spans_attached, (unsigned long long)c->spans_partial,
                                    (unsigned long long)c->spans_full, (unsigned long long)c->slots,
                                    (unsigned long long)c->objects_in_use, (unsigned long long)c->meshed_spans);
        if (t == NULL || PyList_Append(result, t) < 0)
            Py_CLEAR(result);
        Py_XDECREF(t);
    }
    PyMem_Free(cs);
    return result;
}

PyDoc_STRVAR(stats_docs_doc,
"stats_docs() -> dict[str, str]\n\n"
"The documentation line of every counter, by name.");

static PyObject *py_stats_docs(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    PyObject *result = PyDict_New();
    int n = api.stats_count();
    for (int i = 0; result != NULL && i < n; i++) {
        const char *name = api.stats_name(i);
        if (name == NULL)
            continue;
        PyObject *doc = str_or_none(api.stats_doc(i));
        if (doc == NULL || PyDict_SetItemString(result, name, doc) < 0)
            Py_CLEAR(result);
        Py_XDECREF(doc);
    }
    return result;
}

PyDoc_STRVAR(print_stats_doc,
"print_stats(fd: int = 2) -> None\n\n"
"Write the MALLOCSTATS summary to file descriptor fd (stderr by default).");

static PyObject *py_print_stats(PyObject *self, PyObject *args) {
    (void)self;
    int fd = 2;
    if (!PyArg_ParseTuple(args, "|i:print_stats", &fd))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    api.stats_print(fd);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

PyDoc_STRVAR(get_option_doc,
"get_option(name: str) -> int\n\n"
"Current value of an option. KeyError if there is no such option.");

static PyObject *py_get_option(PyObject *self, PyObject *arg) {
    (void)self;
    const char *name = name_arg(arg, "option");
    if (name == NULL)
        return NULL;
    errno = 0;
    long value = api.option_get(name);
    if (value == -1 && errno == ENOENT) {
        PyErr_SetObject(PyExc_KeyError, arg);
        return NULL;
    }
    return PyLong_FromLong(value);
}

PyDoc_STRVAR(set_option_doc,
"set_option(name: str, value: int) -> None\n\n"
"Set an option at run time. KeyError if there is no such option,\n"
"ValueError if the value is out of range or the option is read-only\n"
"(start-up options cannot change once the heap is running).");

static PyObject *py_set_option(PyObject *self, PyObject *args, PyObject *kwds) {
    (void)self;
    static char *kwlist[] = {"name", "value", NULL};
    PyObject *name_obj, *value_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UO:set_option", kwlist,
                                     &name_obj, &value_obj))
        return NULL;
    const char *name = PyUnicode_AsUTF8(name_obj);
    if (name == NULL)
        return NULL;
    if (!PyLong_Check(value_obj)) {
        PyErr_Format(PyExc_TypeError, "option value must be int, not %.100s",
                     Py_TYPE(value_obj)->tp_name);
        return NULL;
    }
    long value = PyLong_AsLong(value_obj);
    if (value == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "value %R for option '%s' is out of range",
                     value_obj, name);
        return NULL;
    }
    errno = 0;
    if (api.option_set(name, value) == 0)
        Py_RETURN_NONE;
    int err = errno;
    if (err == ENOENT || option_index(name) < 0) {
        PyErr_SetObject(PyExc_KeyError, name_obj);
    } else if (err == EINVAL) {
        PyErr_Format(PyExc_ValueError,
                     "invalid value %ld for option '%s' (out of range or "
                     "read-only)", value, name);
    } else if (err == EPERM) {
        /* A start-up option once the heap is running. */
        PyObject *upper = PyObject_CallMethod(name_obj, "upper", NULL);
        if (upper != NULL) {
            PyErr_Format(PyExc_ValueError,
                         "option '%s' can only be set before the heap starts "
                         "(environment variable MESH_%U)", name, upper);
            Py_DECREF(upper);
        }
    } else {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
    }
    return NULL;
}

PyDoc_STRVAR(option_names_doc,
"option_names() -> list[str]\n\n"
"Every option name, in the core's order. The environment variable of an\n"
"option is MESH_<NAME> in upper case.");

static PyObject *py_option_names(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    PyObject *result = PyList_New(0);
    int n = api.option_count();
    for (int i = 0; result != NULL && i < n; i++) {
        const char *name = api.option_name(i);
        if (name == NULL)
            continue;
        PyObject *s = str_or_none(name);
        if (s == NULL || PyList_Append(result, s) < 0)
            Py_CLEAR(result);
        Py_XDECREF(s);
    }
    return result;
}

PyDoc_STRVAR(option_docs_doc,
"option_docs() -> dict[str, str]\n\n"
"The documentation line of every option, by name.");

static PyObject *py_option_docs(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    PyObject *result = PyDict_New();
    int n = api.option_count();
    for (int i = 0; result != NULL && i < n; i++) {
        const char *name = api.option_name(i);
        if (name == NULL)
            continue;
        PyObject *doc = str_or_none(api.option_doc(i));
        if (doc == NULL || PyDict_SetItemString(result, name, doc) < 0)
            Py_CLEAR(result);
        Py_XDECREF(doc);
    }
    return result;
}

PyDoc_STRVAR(meshing_available_doc,
"meshing_available() -> bool\n\n"
"True when the arena is memfd-backed and spans can be meshed; False in\n"
"the degraded fallback (anonymous memory, no meshing).");

static PyObject *py_meshing_available(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return PyBool_FromLong(api.meshing_available());
}

PyDoc_STRVAR(check_heap_doc,
"check_heap() -> int\n\n"
"Run every validator over the whole heap. Returns 0 when the heap is\n"
"consistent, otherwise the number of problems (each reported on stderr).");

static PyObject *py_check_heap(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    int problems;
    /* Takes the core's global lock; the core never needs the GIL, so
     * dropping it here cannot deadlock and lets other threads run. */
    Py_BEGIN_ALLOW_THREADS
    problems = api.check_heap();
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(problems);
}

PyDoc_STRVAR(scavenge_doc,
"scavenge() -> int\n\n"
"Return dirty free pages to the OS now; returns the bytes released.");

static PyObject *py_scavenge(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    size_t bytes;
    Py_BEGIN_ALLOW_THREADS
    bytes = api.scavenge();
    Py_END_ALLOW_THREADS
    return PyLong_FromSize_t(bytes);
}

PyDoc_STRVAR(is_preloaded_doc,
"is_preloaded() -> bool\n\n"
"True when this module routes to a libmesh already loaded in the process\n"
"(LD_PRELOAD) instead of its own copy of the core.");

static PyObject *py_is_preloaded(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return PyBool_FromLong(api_preloaded);
}

PyDoc_STRVAR(library_path_doc,
"library_path() -> str | None\n\n"
"Path of the preloaded libmesh this module routes to, or None when it uses\n"
"its own core.");

static PyObject *py_library_path(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    if (!api_preloaded)
        Py_RETURN_NONE;
    return PyUnicode_DecodeFSDefault(api_library != NULL ? api_library : "");
}

static PyMethodDef meshalloc_methods[] = {
    {"version", py_version, METH_NOARGS, version_doc},
    {"owns", py_owns, METH_O, owns_doc},
    {"stats", py_stats, METH_NOARGS, stats_doc},
    {"stat", py_stat, METH_O, stat_doc},
    {"class_stats", py_class_stats, METH_NOARGS, class_stats_doc},
    {"stats_docs", py_stats_docs, METH_NOARGS, stats_docs_doc},
    {"print_stats", py_print_stats, METH_VARARGS, print_stats_doc},
    {"get_option", py_get_option, METH_O, get_option_doc},
    {"set_option", (PyCFunction)(void (*)(void))py_set_option,
     METH_VARARGS | METH_KEYWORDS, set_option_doc},
    {"option_names", py_option_names, METH_NOARGS, option_names_doc},
    {"option_docs", py_option_docs, METH_NOARGS, option_docs_doc},
    {"meshing_available", py_meshing_available, METH_NOARGS,
     meshing_available_doc},
    {"check_heap", py_check_heap, METH_NOARGS, check_heap_doc},
    {"scavenge", py_scavenge, METH_NOARGS, scavenge_doc},
    {"is_preloaded", py_is_preloaded, METH_NOARGS, is_preloaded_doc},
    {"library_path", py_library_path, METH_NOARGS, library_path_doc},
    {"_install", py_install, METH_VARARGS, install_doc},
    {"_uninstall", py_uninstall, METH_NOARGS, uninstall_doc},
    {"installed_domains", py_installed_domains, METH_NOARGS, installed_domains_doc},
    {"hooked_domains", py_hooked_domains, METH_NOARGS, hooked_domains_doc},
    {"allocators", py_allocators, METH_NOARGS, allocators_doc},
    {"in_subinterpreter", py_in_subinterpreter, METH_NOARGS, in_subinterpreter_doc},
    {"set_install_error", py_set_install_error, METH_O, set_install_error_doc},
    {"compact", py_compact, METH_NOARGS, compact_doc},
    {"hook_counts", py_hook_counts, METH_NOARGS, hook_counts_doc},
    {NULL, NULL, 0, NULL},
};

PyDoc_STRVAR(module_doc,
"The meshalloc core as a CPython extension.\n\n"
"Routes to a preloaded libmesh.so when the process has one, so a process\n"
"never runs two meshalloc heaps.");

static struct PyModuleDef meshalloc_module = {
    PyModuleDef_HEAD_INIT,
    "_meshalloc",       /* m_name */
    module_doc,         /* m_doc */
    -1,                 /* m_size: global state (the backend) */
    meshalloc_methods,  /* m_methods */
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__meshalloc(void) {
    if (select_backend() < 0)
        return NULL;
    if (record_baseline() < 0)
        return NULL;
    counts_init();
    PyObject *module = PyModule_Create(&meshalloc_module);
    if (module == NULL)
        return NULL;
    if (PyModule_AddStringConstant(module, "HEADER_VERSION",
                                   MESH_VERSION_STRING) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
