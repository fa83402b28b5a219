/* pymodule.c - the CPython face: the `_meshalloc` extension module.
 *
 * The module offers meshalloc/__init__.py the core's raw surface (counters
 * as a list, names and docs from the core's tables, options returning an
 * errno, compaction returning pages) and installs the PyMem hooks
 * (pyhooks.c). Dicts, exceptions and their texts are the Python layer's;
 * the only refusals written here are the ones only C can see (another copy
 * of meshalloc, an unknown hook, a heap that cannot start). It sees the
 * core through mesh.h and core/face.h, and may allocate with PyMem (it runs
 * as ordinary Python code); the core below it never calls back into Python.
 *
 * One heap per process (docs/python.md, "How the hooks work"). When
 * libmesh.so is already in the process (LD_PRELOAD, or dlopen'ed
 * RTLD_GLOBAL) its mesh_* functions are visible to dlsym(RTLD_DEFAULT);
 * the module then routes every call to that copy and the extension's own
 * core is never started. The extension's core is built with MESH_API
 * defined empty (setup_mesh.py): its mesh_* symbols are hidden, so they
 * cannot be what dlsym finds and a preloaded library cannot interpose on
 * them. The backend is chosen once, at module init, under the GIL.
 *
 * Builds with CPython 3.9-3.13 (single-phase init, no limited API).
 */
#include "pyface.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

/* ---- the backend ------------------------------------------------------ */

static const mesh_py_api_t local_api = {
#define X(field, symbol, ret, params) .field = mesh_##field,
    MESH_PY_ENTRIES(X)
#undef X
};

mesh_py_api_t py_api;
int py_preloaded;
static const char *api_library; /* the preloaded library's path (dladdr), or NULL */

_Static_assert(sizeof(void *) == sizeof(void (*)(void)), "dlsym results are stored as function pointers");

/* Routes to a libmesh already in the process, if there is one. Returns 0
 * or -1 with ImportError set when that libmesh lacks an entry point. */
static int select_backend(void) {
    void *probe = dlsym(RTLD_DEFAULT, "mesh_version");
    void *own;
    const char *(*own_version)(void) = mesh_version;
    memcpy(&own, &own_version, sizeof own);
    py_api = local_api;
    if (probe == NULL || probe == own)
        return 0;
    mesh_py_api_t found;
#define X(field, symbol, ret, params)                                                      \
    do {                                                                                   \
        void *sym_ = dlsym(RTLD_DEFAULT, symbol);                                          \
        if (sym_ == NULL) {                                                                \
            PyErr_Format(PyExc_ImportError,                                                \
                         "a libmesh is already loaded in this process but it has no %s; "  \
                         "it does not match meshalloc %s", symbol, MESH_VERSION_STRING);   \
            return -1;                                                                     \
        }                                                                                  \
        memcpy(&found.field, &sym_, sizeof sym_);                                          \
    } while (0);
    MESH_PY_ENTRIES(X)
#undef X
    Dl_info info;
    if (dladdr(probe, &info) != 0 && info.dli_fname != NULL)
        api_library = info.dli_fname; /* owned by the loader, stays valid */
    py_api = found;
    py_preloaded = 1;
    return 0;
}

/* ---- the core's raw surface ------------------------------------------- */

static PyObject *str_or_none(const char *s) {
    if (s == NULL)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

/* [(name, doc)] of one of the core's tables; doc None where it has none. */
static PyObject *name_table(int n, const char *(*name)(int), const char *(*doc)(int)) {
    PyObject *out = PyList_New(0);
    for (int i = 0; out != NULL && i < n; i++) {
        PyObject *row = Py_BuildValue("(NN)", str_or_none(name(i)), str_or_none(doc ? doc(i) : NULL));
        if (row == NULL || PyList_Append(out, row) < 0)
            Py_CLEAR(out);
        Py_XDECREF(row);
    }
    return out;
}

static int class_count(void) {
    int n = 0;
    while (py_api.class_stats_name(n) != NULL)
        n++;
    return n;
}

static PyObject *py_version(PyObject *self, PyObject *unused) { return str_or_none(py_api.version()); }
static PyObject *py_is_preloaded(PyObject *self, PyObject *unused) { return PyBool_FromLong(py_preloaded); }

static PyObject *py_library_path(PyObject *self, PyObject *unused) {
    if (!py_preloaded)
        Py_RETURN_NONE;
    return PyUnicode_DecodeFSDefault(api_library != NULL ? api_library : "");
}

static PyObject *py_stats_names(PyObject *self, PyObject *unused) {
    return name_table(py_api.stats_count(), py_api.stats_name, py_api.stats_doc);
}

static PyObject *py_option_names(PyObject *self, PyObject *unused) {
    return name_table(py_api.option_count(), py_api.option_name, py_api.option_doc);
}

static PyObject *py_class_names(PyObject *self, PyObject *unused) {
    return name_table(class_count(), py_api.class_stats_name, NULL);
}

/* A list of ints from n uint64_t values. */
static PyObject *int_list(const uint64_t *v, int n) {
    PyObject *out = PyList_New(n);
    for (int i = 0; out != NULL && i < n; i++) {
        PyObject *x = PyLong_FromUnsignedLongLong(v[i]);
        if (x == NULL)
            Py_CLEAR(out);
        else
            PyList_SET_ITEM(out, i, x);
    }
    return out;
}

/* stats_read(n): the first n fields of the stats table (all if n < 0).
 * The counters come first and cost a load each; the derived fields after
 * them walk the heap, and are computed only when n reaches them. */
static PyObject *py_stats_read(PyObject *self, PyObject *arg) {
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    int total = py_api.stats_count();
    if (n < 0 || n > total)
        n = total;
    uint64_t *v = PyMem_New(uint64_t, (size_t)n + 1);
    if (v == NULL)
        return PyErr_NoMemory();
    int got = py_api.stats_read(v, (int)n);
    PyObject *out = int_list(v, got < n ? got : (int)n);
    PyMem_Free(v);
    return out;
}

/* One list of field values per size class, in the core's field order. */
static PyObject *py_class_stats(PyObject *self, PyObject *unused) {
    enum { MAX_CLASSES = 256 };
    int fields = class_count();
    mesh_class_stats_t *cs = PyMem_New(mesh_class_stats_t, MAX_CLASSES);
    if (cs == NULL)
        return PyErr_NoMemory();
    int n = py_api.class_stats(cs, MAX_CLASSES);
    PyObject *out = PyList_New(0);
    for (int i = 0; out != NULL && i < n && i < MAX_CLASSES; i++) {
        PyObject *row = int_list((const uint64_t *)&cs[i], fields);
        if (row == NULL || PyList_Append(out, row) < 0)
            Py_CLEAR(out);
        Py_XDECREF(row);
    }
    PyMem_Free(cs);
    return out;
}

/* option_get(name) -> (value, errno) */
static PyObject *py_option_get(PyObject *self, PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s:option_get", &name))
        return NULL;
    errno = 0;
    long value = py_api.option_get(name);
    return Py_BuildValue("(li)", value, value == -1 ? errno : 0);
}

/* option_set(name, value) -> errno (0: set); OverflowError beyond a long */
static PyObject *py_option_set(PyObject *self, PyObject *args) {
    const char *name;
    long value;
    if (!PyArg_ParseTuple(args, "sl:option_set", &name, &value))
        return NULL;
    errno = 0;
    return PyLong_FromLong(py_api.option_set(name, value) == 0 ? 0 : errno);
}

/* The calls below take the core's global lock or do real work; the core
 * never needs the GIL, so dropping it cannot deadlock and lets other
 * threads run. */

/* compact() -> (pages freed by meshing, pages returned to the OS) */
static PyObject *py_compact(PyObject *self, PyObject *unused) {
    size_t pages, returned;
    Py_BEGIN_ALLOW_THREADS
    pages = py_api.compact_ex(&returned);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(nn)", (Py_ssize_t)pages, (Py_ssize_t)returned);
}

static PyObject *py_scavenge(PyObject *self, PyObject *unused) {
    size_t bytes;
    Py_BEGIN_ALLOW_THREADS
    bytes = py_api.scavenge();
    Py_END_ALLOW_THREADS
    return PyLong_FromSize_t(bytes);
}

static PyObject *py_check_heap(PyObject *self, PyObject *unused) {
    int problems;
    Py_BEGIN_ALLOW_THREADS
    problems = py_api.check_heap();
    Py_END_ALLOW_THREADS
    return PyLong_FromLong(problems);
}

static PyObject *py_print_stats(PyObject *self, PyObject *arg) {
    int fd = PyLong_AsLong(arg);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    py_api.stats_print(fd);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_periodic_wait_ns(PyObject *self, PyObject *unused) {
    return PyLong_FromLongLong(py_api.periodic_wait_ns());
}

static PyObject *py_meshing_available(PyObject *self, PyObject *unused) {
    return PyBool_FromLong(py_api.meshing_available());
}

/* owns(addr): the address is compared, never read */
static PyObject *py_owns(PyObject *self, PyObject *arg) {
    void *p = PyLong_AsVoidPtr(arg);
    if (p == NULL && PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(py_api.owns(p));
}

/* ---- installing the hooks (docs/python.md) ---------------------------- */

static int hooked[PY_NDOMAINS];   /* our hook is in place (GIL) */
static PyObject *install_error;   /* meshalloc.InstallError */
static int stats_at_exit;         /* Py_AtExit registered */

/* The allocators in place when this module was loaded: a later change by
 * somebody else is an "unknown hook". When tracemalloc was tracing at load,
 * its hooks were on top and what lies under them is unknown to us: the
 * baseline is then adopted at the first install (after tracemalloc stopped). */
static PyMemAllocatorEx baseline[PY_NDOMAINS];
static int baseline_adopt;

/* Was tracing on at load? Only if the tracemalloc module started it (then
 * _tracemalloc is imported) or PYTHONTRACEMALLOC / -X tracemalloc did;
 * _tracemalloc is not imported otherwise, so that the start-up switch
 * imports nothing the interpreter would not. */
static int tracing_at_load(void) {
    PyObject *name = PyUnicode_FromString("_tracemalloc");
    PyObject *tm = name != NULL ? PyImport_GetModule(name) : NULL;
    Py_XDECREF(name);
    if (tm == NULL) {
        PyErr_Clear();
        PyObject *xopts = PySys_GetXOptions(); /* borrowed */
        const char *env = getenv("PYTHONTRACEMALLOC");
        if (!(env != NULL && *env) && !(xopts != NULL && PyDict_GetItemString(xopts, "tracemalloc") != NULL))
            return 0;
        tm = PyImport_ImportModule("_tracemalloc");
    }
    PyObject *tracing = tm != NULL ? PyObject_CallMethod(tm, "is_tracing", NULL) : NULL;
    Py_XDECREF(tm);
    int on = tracing != NULL && PyObject_IsTrue(tracing) == 1;
    Py_XDECREF(tracing);
    PyErr_Clear();
    return on;
}

static void record_baseline(void) {
    for (int d = 0; d < PY_NDOMAINS; d++) {
        PyMem_GetAllocator((PyMemAllocatorDomain)d, &baseline[d]);
        py_saved[d] = baseline[d];
    }
    baseline_adopt = tracing_at_load();
}

static int same_functions(const PyMemAllocatorEx *a, const PyMemAllocatorEx *b) {
    return a->malloc == b->malloc && a->calloc == b->calloc && a->realloc == b->realloc && a->free == b->free;
}

static int same_allocator(const PyMemAllocatorEx *a, const PyMemAllocatorEx *b) {
    return a->ctx == b->ctx && same_functions(a, b);
}

/* The object file that defines function pointer fn (dladdr), or NULL; its
 * load address in *base. */
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

/* 1 when fn lives in another copy of this extension (another meshalloc
 * install in the same process: it must not be wrapped, one heap only). */
static int other_meshalloc(void *(*fn)(void *, size_t), const char **path) {
    void *base, *own;
    const char *file = object_of(fn, &base);
    (void)object_of(py_hooks_of()[0].malloc, &own);
    *path = file;
    if (file == NULL || base == NULL || base == own)
        return 0;
    const char *slash = strrchr(file, '/');
    return strncmp(slash != NULL ? slash + 1 : file, "_meshalloc", 10) == 0;
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

static unsigned diverted_mask(void) {
    unsigned mask = 0;
    for (int d = 0; d < PY_NDOMAINS; d++)
        mask |= (unsigned)py_diverting(d) << d;
    return mask;
}

/* install_refusal() -> 0, or why install() cannot work here: 1 this is a
 * free-threaded build, 2 this is not the main interpreter (the Python
 * layer words them). */
static int refusal(void) {
#if defined(Py_GIL_DISABLED) || defined(MESHALLOC_TEST_FREE_THREADED)
    /* MESHALLOC_TEST_FREE_THREADED: the test suite builds a copy with this
     * refusal on to test it (tests/test_python_install.py). */
    return 1;
#endif
    return PyInterpreterState_Get() != PyInterpreterState_Main() ? 2 : 0;
}

static PyObject *py_install_refusal(PyObject *self, PyObject *unused) { return PyLong_FromLong(refusal()); }

/* Every domain of mask that is to be hooked may be: all or nothing. */
static int check_domains(unsigned mask, int force) {
    for (int d = 0; d < PY_NDOMAINS; d++) {
        if (!(mask & (1u << d)) || hooked[d])
            continue;
        PyMemAllocatorEx current;
        PyMem_GetAllocator((PyMemAllocatorDomain)d, &current);
        const char *path;
        void *base;
        if (other_meshalloc(current.malloc, &path)) {
            refuse("another copy of meshalloc (%s) is already installed on %s; a process must never run two "
                   "meshalloc heaps", path != NULL ? path : "?", py_domain_macros[d]);
            return -1;
        }
        if (!baseline_adopt && !force && !same_allocator(&current, &baseline[d])) {
            const char *file = object_of(current.malloc, &base);
            refuse("an unknown allocator hook was installed on %s after meshalloc was loaded (its malloc is in "
                   "%s); meshalloc would wrap it: pass force=True if that is intended",
                   py_domain_macros[d], file != NULL ? file : "an unknown object");
            return -1;
        }
    }
    return 0;
}

static void print_stats_at_exit(void) { py_api.stats_print(2); } /* by Py_FinalizeEx, after all else */

static void after_install(void) {
    if (baseline_adopt) {
        for (int d = 0; d < PY_NDOMAINS; d++) {
            if (hooked[d])
                baseline[d] = py_saved[d]; /* what we wrapped */
            else
                PyMem_GetAllocator((PyMemAllocatorDomain)d, &baseline[d]);
        }
        baseline_adopt = 0;
    }
    const char *s = getenv("MALLOCSTATS");
    /* libmesh.so prints its own summary when it is the process malloc */
    if (!stats_at_exit && !py_preloaded && s != NULL && *s && strcmp(s, "0") != 0)
        stats_at_exit = Py_AtExit(print_stats_at_exit) == 0;
}

/* _install(mask, force) -> domains newly diverted (0: nothing to do), or
 * -refusal(); raises InstallError for the refusals written here. */
static PyObject *py_install(PyObject *self, PyObject *args) {
    unsigned int mask;
    int force;
    if (!PyArg_ParseTuple(args, "Ip:_install", &mask, &force))
        return NULL;
    if (mask == 0 || (mask & ~7u) != 0)
        return PyErr_Format(PyExc_ValueError, "domain mask %u: expected 1..7", mask);
    if (refusal() != 0)
        return PyLong_FromLong(-refusal());
    unsigned newly = mask & ~diverted_mask();
    if (newly == 0)
        return PyLong_FromLong(0); /* installing twice is a no-op */
    if (check_domains(mask, force) < 0)
        return NULL;
    void *probe = py_api.malloc(1); /* start the heap now, not in the first hooked allocation */
    if (probe == NULL)
        return refuse("the meshalloc heap cannot start (errno %d)", errno);
    py_api.free(probe);
    for (int d = 0; d < PY_NDOMAINS; d++) {
        if (!(newly & (1u << d)))
            continue;
        if (!hooked[d]) /* (after uninstall() the hook is still in place) */
            PyMem_GetAllocator((PyMemAllocatorDomain)d, &py_saved[d]); /* the struct is copied */
        py_divert(d, 1);
        if (!hooked[d]) {
            atomic_thread_fence(memory_order_seq_cst); /* py_saved[d] before the hook */
            PyMemAllocatorEx hook = py_hooks_of()[d];
            hook.ctx = py_saved[d].ctx; /* a torn (function, ctx) pair stays consistent: pyhooks.c */
            PyMem_SetAllocator((PyMemAllocatorDomain)d, &hook);
            hooked[d] = 1;
        }
    }
    after_install();
    return PyLong_FromLong(__builtin_popcount(newly));
}

/* _uninstall() -> True if anything was diverted (the hooks stay) */
static PyObject *py_uninstall(PyObject *self, PyObject *unused) {
    unsigned was = diverted_mask();
    for (int d = 0; d < PY_NDOMAINS; d++)
        py_divert(d, 0);
    return PyBool_FromLong(was != 0);
}

static PyObject *py_installed_domains(PyObject *self, PyObject *unused) {
    return PyLong_FromUnsignedLong(diverted_mask());
}

static PyObject *describe_allocator(int d) {
    PyMemAllocatorEx cur;
    void *addr, *base;
    PyMem_GetAllocator((PyMemAllocatorDomain)d, &cur);
    memcpy(&addr, &cur.malloc, sizeof addr);
    const char *file = object_of(cur.malloc, &base);
    const char *wrapped = hooked[d] ? object_of(py_saved[d].malloc, &base) : NULL;
    return Py_BuildValue("{s:K,s:s,s:O,s:O,s:O,s:O,s:s}", "malloc", (unsigned long long)(uintptr_t)addr,
                         "object", file != NULL ? file : "",
                         "meshalloc", same_functions(&cur, &py_hooks_of()[d]) ? Py_True : Py_False,
                         "baseline", (!baseline_adopt && same_allocator(&cur, &baseline[d])) ? Py_True : Py_False,
                         "hooked", hooked[d] ? Py_True : Py_False,
                         "diverting", py_diverting(d) ? Py_True : Py_False,
                         "wrapped_object", wrapped != NULL ? wrapped : "");
}

/* allocators() -> {domain: {...}}: the allocator in place now */
static PyObject *py_allocators(PyObject *self, PyObject *unused) {
    PyObject *out = PyDict_New();
    for (int d = 0; out != NULL && d < PY_NDOMAINS; d++) {
        PyObject *item = describe_allocator(d);
        if (item == NULL || PyDict_SetItemString(out, py_domain_names[d], item) < 0)
            Py_CLEAR(out);
        Py_XDECREF(item);
    }
    return out;
}

static PyObject *py_set_install_error(PyObject *self, PyObject *cls) {
    if (!PyExceptionClass_Check(cls))
        return PyErr_Format(PyExc_TypeError, "expected an exception class");
    Py_INCREF(cls);
    Py_XSETREF(install_error, cls);
    Py_RETURN_NONE;
}

/* ---- the module ------------------------------------------------------- */

/* The Python layer (meshalloc/__init__.py) documents each of these; the
 * cffi backend (meshalloc/_libmesh.py) offers the same names for the core. */
#define FN(name, flags) {#name, (PyCFunction)(void (*)(void))py_##name, flags, NULL}
static PyMethodDef methods[] = {
    FN(version, METH_NOARGS),          FN(is_preloaded, METH_NOARGS),      FN(library_path, METH_NOARGS),
    FN(stats_names, METH_NOARGS),      FN(option_names, METH_NOARGS),      FN(class_names, METH_NOARGS),
    FN(stats_read, METH_O),            FN(class_stats, METH_NOARGS),       FN(option_get, METH_VARARGS),
    FN(option_set, METH_VARARGS),      FN(compact, METH_NOARGS),           FN(scavenge, METH_NOARGS),
    FN(check_heap, METH_NOARGS),       FN(print_stats, METH_O),            FN(periodic_wait_ns, METH_NOARGS),
    FN(meshing_available, METH_NOARGS), FN(owns, METH_O),
    FN(hook_names, METH_NOARGS),       FN(hook_counts, METH_NOARGS),       FN(install_refusal, METH_NOARGS),
    {"_install", py_install, METH_VARARGS, NULL},
    {"_uninstall", py_uninstall, METH_NOARGS, NULL},
    FN(installed_domains, METH_NOARGS), FN(allocators, METH_NOARGS),     FN(set_install_error, METH_O),
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "_meshalloc",
    "The meshalloc core as a CPython extension: the raw surface meshalloc/__init__.py builds on.",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__meshalloc(void) {
    if (select_backend() < 0)
        return NULL;
    record_baseline();
    PyObject *module = PyModule_Create(&module_def);
    PyObject *domains = Py_BuildValue("(sss)", py_domain_names[0], py_domain_names[1], py_domain_names[2]);
    if (module == NULL || domains == NULL || PyModule_AddObject(module, "DOMAINS", domains) < 0 ||
        PyModule_AddStringConstant(module, "HEADER_VERSION", MESH_VERSION_STRING) < 0) {
        Py_XDECREF(domains);
        Py_XDECREF(module);
        return NULL;
    }
    return module;
}
