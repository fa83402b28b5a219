/* pymodule.c - the CPython face: the `_meshalloc` extension module's glue.
 *
 * This file is Python glue only. It sees the core through mesh.h and nothing
 * else, and it is the one file of the extension that includes Python.h. It
 * may allocate with PyMem (it runs as ordinary Python code); the core below it
 * never calls back into Python.
 *
 * One heap per process (SPEC 2). When libmesh.so is already in the process
 * (LD_PRELOAD, or dlopen'ed RTLD_GLOBAL) its mesh_* functions are visible to
 * dlsym(RTLD_DEFAULT); the module then routes every call to that copy and the
 * extension's own core is never touched, so it never starts a second heap.
 * The extension's core is built with MESH_API defined empty (setup_mesh.py):
 * its mesh_* symbols are hidden, so they cannot be what dlsym finds and a
 * preloaded library cannot interpose on them.
 *
 * The backend is chosen once, at module init, under the GIL, and never
 * changes afterwards: `api` is written before the module object exists and
 * only read after, so it needs no lock.
 *
 * Builds with CPython 3.9-3.13 (single-phase init, no limited API).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "mesh.h"

/* ---- the backend table ------------------------------------------------ */

/* The entry points this module calls, as one list:
 * X(field, symbol, return type, parameter list). */
#define MESH_PY_ENTRIES(X)                                                  \
    X(version, "mesh_version", const char *, (void))                        \
    X(owns, "mesh_owns", int, (const void *))                               \
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
    X(stats_print, "mesh_stats_print", void, (int))

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
    if (!PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "option name must be str, not %.100s",
                     Py_TYPE(arg)->tp_name);
        return NULL;
    }
    const char *name = PyUnicode_AsUTF8(arg);
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
