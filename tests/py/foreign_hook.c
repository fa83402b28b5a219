/* foreign_hook.c - a third-party PyMem hook, for meshalloc's "unknown hook"
 * refusal (docs/python.md, "Refusals"). Module `_foreign_hook`:
 *
 *   install()  wraps the MEM and OBJ domains with pass-through hooks that
 *              count their calls (the way a profiler would); once only.
 *   calls()    the number of hooked calls so far.
 *
 * Built by tests/test_python_install.py against each interpreter's headers:
 *   cc -shared -fPIC -I<include> foreign_hook.c -o _foreign_hook<EXT_SUFFIX>
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdatomic.h>

static PyMemAllocatorEx prev_mem, prev_obj;
static atomic_ulong ncalls;
static int installed;

#define WRAP(name, prev)                                                       \
    static void *name##_malloc(void *ctx, size_t n) {                          \
        (void)ctx; atomic_fetch_add(&ncalls, 1);                               \
        return prev.malloc(prev.ctx, n);                                       \
    }                                                                          \
    static void *name##_calloc(void *ctx, size_t a, size_t b) {                \
        (void)ctx; atomic_fetch_add(&ncalls, 1);                               \
        return prev.calloc(prev.ctx, a, b);                                    \
    }                                                                          \
    static void *name##_realloc(void *ctx, void *p, size_t n) {                \
        (void)ctx; atomic_fetch_add(&ncalls, 1);                               \
        return prev.realloc(prev.ctx, p, n);                                   \
    }                                                                          \
    static void name##_free(void *ctx, void *p) {                              \
        (void)ctx; atomic_fetch_add(&ncalls, 1);                               \
        prev.free(prev.ctx, p);                                                \
    }

WRAP(mem, prev_mem)
WRAP(obj, prev_obj)

static PyObject *fh_install(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    if (installed)
        Py_RETURN_FALSE;
    PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &prev_mem);
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &prev_obj);
    PyMemAllocatorEx mem = {prev_mem.ctx, mem_malloc, mem_calloc, mem_realloc, mem_free};
    PyMemAllocatorEx obj = {prev_obj.ctx, obj_malloc, obj_calloc, obj_realloc, obj_free};
    PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &mem);
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &obj);
    installed = 1;
    Py_RETURN_TRUE;
}

static PyObject *fh_calls(PyObject *self, PyObject *unused) {
    (void)self; (void)unused;
    return PyLong_FromUnsignedLong(atomic_load(&ncalls));
}

static PyMethodDef methods[] = {
    {"install", fh_install, METH_NOARGS, "wrap MEM and OBJ with counting hooks"},
    {"calls", fh_calls, METH_NOARGS, "hooked calls so far"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_foreign_hook", NULL, -1, methods,
                                 NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__foreign_hook(void) { return PyModule_Create(&def); }
