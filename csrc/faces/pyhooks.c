/* pyhooks.c - the PyMem hooks: the allocator functions install() puts on
 * each PyMem domain, and what they count (docs/python.md, "How the hooks
 * work").
 *
 * Each hook WRAPS the allocator that was in place (after start-up an
 * extension may only wrap, never replace): py_saved[d] is a copy of it,
 * made at install time, and every block that is not ours (one range
 * compare; the block is never read) goes back to it, with its own ctx, on
 * free and realloc. A foreign block is never migrated on realloc: its size
 * is unknown. py_saved[] also holds the allocators in place at module
 * load, so a hook can never see an all-zero copy.
 *
 * The hooks never look at their ctx argument: PyMem_SetAllocator copies
 * the struct without a lock and a RAW caller on another thread may see a
 * torn (function, ctx) pair. Each domain has its own functions reading
 * py_saved[d] instead, and the ctx installed with them is the wrapped
 * allocator's own, so every torn pair is still a consistent one.
 *
 * uninstall() is a soft switch: diverting[d] goes to 0 and new blocks come
 * from the wrapped allocator again, but the hooks stay for the life of the
 * process and keep freeing (and reallocating) meshalloc blocks by range
 * check: restoring the wrapped allocator would crash its next free of one.
 *
 * Thread safety: the hooks run concurrently (RAW from any thread without
 * the GIL; MEM/OBJ from subinterpreters with their own GIL on 3.12+). They
 * touch the core (thread-safe), py_saved[] (written only while the domain
 * is not hooked yet), the atomic diverting[] flags and the calling thread's
 * face counters (core/face.h: its thread heap, no atomic read-modify-write
 * on the fast paths). pymodule.c installs them under the main
 * interpreter's GIL.
 */
#include "pyface.h"

#include <stdatomic.h>

_Static_assert(PYMEM_DOMAIN_RAW == 0 && PYMEM_DOMAIN_MEM == 1 && PYMEM_DOMAIN_OBJ == 2 && PY_NDOMAINS == 3,
               "domain numbers index the tables");
const char *const py_domain_names[PY_NDOMAINS] = {"raw", "mem", "obj"};
const char *const py_domain_macros[PY_NDOMAINS] = {"PYMEM_DOMAIN_RAW", "PYMEM_DOMAIN_MEM", "PYMEM_DOMAIN_OBJ"};

PyMemAllocatorEx py_saved[PY_NDOMAINS];

/* diverting[d]: where domain d's new blocks come from. INLINE: the
 * extension's own core, whose fast paths the hooks inline; API: a
 * preloaded libmesh.so, through py_api. */
enum { DIVERT_OFF = 0, DIVERT_INLINE = 1, DIVERT_API = 2 };
static _Atomic int diverting[PY_NDOMAINS];
#define DIVERTING(d) atomic_load_explicit(&diverting[(d)], memory_order_relaxed)

void py_divert(int d, int on) {
    atomic_store(&diverting[d], on ? (py_preloaded ? DIVERT_API : DIVERT_INLINE) : DIVERT_OFF);
}

int py_diverting(int d) { return DIVERTING(d) != DIVERT_OFF; }

/* ---- the counters ------------------------------------------------------ */

/* What the hooks did, per domain, as face counters of the core (exact,
 * no atomic read-modify-write on the fast paths: core/face.h). Each row
 * is one counter per domain, "<domain>_<name>"; a row marked summed also
 * has a total over the domains, "<name>". X(name, summed, doc): */
#define PY_HOOK_COUNTERS(X)                                                                              \
    X(allocs, 0, "blocks meshalloc handed out through this domain's malloc and calloc (a realloc of NULL " \
                 "counts as a malloc)")                                                                 \
    X(reallocs, 0, "realloc calls on a block meshalloc owns (served by meshalloc)")                      \
    X(frees, 0, "frees of blocks meshalloc owns")                                                        \
    X(foreign_reallocs, 1, "realloc calls on a block meshalloc does not own, handed to the wrapped "     \
                           "allocator (never migrated)")                                                \
    X(foreign_frees, 1, "frees of blocks meshalloc does not own, handed to the wrapped allocator")

enum {
#define X(name, summed, doc) HC_##name,
    PY_HOOK_COUNTERS(X)
#undef X
    HC_N
};
static const struct { const char *name, *doc; int summed; } hc_rows[HC_N] = {
#define X(name, summed, doc) {#name, doc, summed},
    PY_HOOK_COUNTERS(X)
#undef X
};
#define FC(d, k) ((unsigned)((d) * HC_N + (k)))
_Static_assert(PY_NDOMAINS * HC_N <= MESH_FACE_COUNTS, "a face counter per domain and row");

PyObject *py_hook_names(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    PyObject *out = PyList_New(0);
    for (int d = 0; out != NULL && d <= PY_NDOMAINS; d++) {
        for (int k = 0; out != NULL && k < HC_N; k++) {
            PyObject *row;
            if (d < PY_NDOMAINS)
                row = Py_BuildValue("(NN)", PyUnicode_FromFormat("%s_%s", py_domain_names[d], hc_rows[k].name),
                                    PyUnicode_FromFormat("%s: %s", py_domain_macros[d] + sizeof "PYMEM_DOMAIN_" - 1, hc_rows[k].doc));
            else if (hc_rows[k].summed)
                row = Py_BuildValue("(sN)", hc_rows[k].name,
                                    PyUnicode_FromFormat("%s of all domains: %s_%s + %s_%s + %s_%s",
                                                         hc_rows[k].name, py_domain_names[0], hc_rows[k].name,
                                                         py_domain_names[1], hc_rows[k].name,
                                                         py_domain_names[2], hc_rows[k].name));
            else
                continue;
            if (row == NULL || PyList_Append(out, row) < 0)
                Py_CLEAR(out);
            Py_XDECREF(row);
        }
    }
    return out;
}

/* The values, in the order of py_hook_names. */
PyObject *py_hook_counts(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    uint64_t fc[MESH_FACE_COUNTS];
    mesh_face_counts_read(fc);
    PyObject *out = PyList_New(0);
    for (int d = 0; out != NULL && d <= PY_NDOMAINS; d++) {
        for (int k = 0; out != NULL && k < HC_N; k++) {
            uint64_t v = 0;
            if (d < PY_NDOMAINS)
                v = fc[FC(d, k)];
            else if (hc_rows[k].summed)
                v = fc[FC(0, k)] + fc[FC(1, k)] + fc[FC(2, k)];
            else
                continue;
            PyObject *value = PyLong_FromUnsignedLongLong(v);
            if (value == NULL || PyList_Append(out, value) < 0)
                Py_CLEAR(out);
            Py_XDECREF(value);
        }
    }
    return out;
}

/* ---- the hook bodies --------------------------------------------------- */

/* Each hook is a fast path with no call in it and one out-of-line slow
 * path that handles every case again from scratch (the hook set for a
 * preloaded libmesh.so is the slow paths alone: see the end of the file).
 * The fast path applies when the domain is diverted to the extension's own
 * core (DIVERT_INLINE): malloc pops the thread heap's shuffle vector
 * (mesh_malloc_try), free does the range check and the local push
 * (mesh_free_local; every other free goes out of line), and the count goes
 * into the thread heap the fast path already holds. Keeping calls out of
 * the fast path lets the compiler skip the register saves a call would
 * need: the hooks are a third of the allocator's instructions on Python
 * code. */

static inline __attribute__((always_inline)) void count(int d, int k) { mesh_face_count_bump(FC(d, k)); }

static __attribute__((noinline)) void *hook_malloc_slow(int d, size_t n) {
    if (DIVERTING(d)) {
        size_t m = n != 0 ? n : 1;  /* size 0: distinct, non-NULL */
        void *p = py_preloaded ? py_api.malloc(m) : mesh_malloc(m);
        if (p != NULL) {
            count(d, HC_allocs);
            return p;
        }
        /* Arena exhausted: the wrapped allocator may still have memory; its
         * block is freed through it again by the range check. */
    }
    return py_saved[d].malloc(py_saved[d].ctx, n);
}

static inline __attribute__((always_inline)) void *hook_malloc(int d, size_t n) {
    /* (n == 0 needs no test: mesh_malloc_try leaves it to the slow path,
     * which serves it as 1) */
    if (mesh_likely(DIVERTING(d) == DIVERT_INLINE)) {
        thread_heap_t *h = mesh_face_heap();
        void *p = mesh_malloc_try(h, n);
        if (mesh_likely(p != NULL)) {  /* so h is a real heap, not the sentinel */
            mesh_face_count_add(h, FC(d, HC_allocs));
            return p;
        }
    }
    return hook_malloc_slow(d, n);
}

static inline __attribute__((always_inline)) void *hook_calloc(int d, size_t nelem, size_t elsize) {
    if (DIVERTING(d)) {
        /* tracemalloc and the debug hooks call calloc directly, so the
         * overflow check belongs here, not only in the core. */
        if (elsize != 0 && nelem > SIZE_MAX / elsize)
            return NULL;
        if (nelem == 0 || elsize == 0)
            nelem = elsize = 1;
        void *p = py_api.calloc(nelem, elsize);
        if (p != NULL) {
            count(d, HC_allocs);
            return p;
        }
    }
    return py_saved[d].calloc(py_saved[d].ctx, nelem, elsize);
}

static inline __attribute__((always_inline)) void *hook_realloc(int d, void *p, size_t n) {
    if (p == NULL)
        return hook_malloc(d, n);
    if (py_api.owns(p)) {  /* ours stays ours, also after uninstall() */
        count(d, HC_reallocs);
        return py_api.realloc(p, n != 0 ? n : 1);  /* realloc(p, 0) never frees */
    }
    count(d, HC_foreign_reallocs);
    return py_saved[d].realloc(py_saved[d].ctx, p, n);  /* never migrated */
}

static __attribute__((noinline)) void hook_free_slow(int d, void *p) {
    if (p == NULL)
        return;
    if (py_api.owns(p)) {  /* stays true after uninstall(): ours is freed here */
        py_api.free(p);
        count(d, HC_frees);
        return;
    }
    count(d, HC_foreign_frees);
    py_saved[d].free(py_saved[d].ctx, p);
}

/* A free of ours the local fast path did not take (another thread's
 * span, a detached one, a large block), out of line with what the fast
 * path worked out and the hook's return address. */
static inline __attribute__((always_inline)) void hook_free_other(int d, void *p, uintptr_t off, uint64_t pte,
                                                                  const void *caller) {
    mesh_free_other(p, off, pte, caller);
    count(d, HC_frees);  /* the heap may be the sentinel */
}
/* (one out-of-line copy per domain, so each counts with a constant index) */
#define FREE_OTHER(name, d)                                                                           \
    static __attribute__((noinline)) void name##_free_other(void *p, uintptr_t off, uint64_t pte,    \
                                                            const void *caller) {                    \
        hook_free_other((d), p, off, pte, caller);                                                    \
    }
FREE_OTHER(raw, PYMEM_DOMAIN_RAW)
FREE_OTHER(mem, PYMEM_DOMAIN_MEM)
FREE_OTHER(obj, PYMEM_DOMAIN_OBJ)
#undef FREE_OTHER

static inline __attribute__((always_inline)) void hook_free(int d, void *p) {
    /* Not only while diverting: after uninstall() our blocks still come
     * back here. */
    thread_heap_t *h = mesh_face_heap();
    uintptr_t off;
    uint64_t pte;
    int r = mesh_free_local(h, p, &off, &pte);
    if (mesh_likely(r == MESH_FREE_LOCAL)) {  /* h is a real heap */
        mesh_face_count_add(h, FC(d, HC_frees));
        return;
    }
    if (r == MESH_FREE_OTHER)
        (d == PYMEM_DOMAIN_RAW ? raw_free_other : d == PYMEM_DOMAIN_MEM ? mem_free_other : obj_free_other)(
            p, off, pte, __builtin_return_address(0));
    else
        hook_free_slow(d, p);
}

/* The hooks of each domain: one set inlines the extension's own core (its
 * fast paths), the other calls a preloaded libmesh.so through py_api.
 * Which applies is known at module load (py_preloaded), so the fast paths
 * never test it. */
#define MESH_PY_DEFINE_HOOKS(name, d)                                                                 \
    static void *name##_malloc(void *ctx, size_t n) {                                                 \
        (void)ctx;                                                                                    \
        return hook_malloc((d), n);                                                                   \
    }                                                                                                 \
    static void *name##_calloc(void *ctx, size_t nelem, size_t elsize) {                              \
        (void)ctx;                                                                                    \
        return hook_calloc((d), nelem, elsize);                                                       \
    }                                                                                                 \
    static void *name##_realloc(void *ctx, void *p, size_t n) {                                       \
        (void)ctx;                                                                                    \
        return hook_realloc((d), p, n);                                                               \
    }                                                                                                 \
    static void name##_free(void *ctx, void *p) {                                                     \
        (void)ctx;                                                                                    \
        hook_free((d), p);                                                                            \
    }                                                                                                 \
    static void *name##_malloc_api(void *ctx, size_t n) {                                             \
        (void)ctx;                                                                                    \
        return hook_malloc_slow((d), n);                                                              \
    }                                                                                                 \
    static void name##_free_api(void *ctx, void *p) {                                                 \
        (void)ctx;                                                                                    \
        hook_free_slow((d), p);                                                                       \
    }

MESH_PY_DEFINE_HOOKS(raw, PYMEM_DOMAIN_RAW)
MESH_PY_DEFINE_HOOKS(mem, PYMEM_DOMAIN_MEM)
MESH_PY_DEFINE_HOOKS(obj, PYMEM_DOMAIN_OBJ)

#define HOOKS(name, api)                                                                             \
    {.ctx = NULL, .malloc = name##_malloc##api, .calloc = name##_calloc, .realloc = name##_realloc,   \
     .free = name##_free##api}
static const PyMemAllocatorEx hooks_inline[PY_NDOMAINS] = {HOOKS(raw, ), HOOKS(mem, ), HOOKS(obj, )};
static const PyMemAllocatorEx hooks_api[PY_NDOMAINS] = {HOOKS(raw, _api), HOOKS(mem, _api), HOOKS(obj, _api)};
#undef HOOKS

const PyMemAllocatorEx *py_hooks_of(void) { return py_preloaded ? hooks_api : hooks_inline; }

