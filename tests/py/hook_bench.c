/* hook_bench.c - the cost of one trip through the PyMem hooks, from C.
 *
 * Loaded with ctypes.PyDLL by hook_bench.py (the GIL stays held, as it is
 * for any MEM/OBJ caller). Each function runs `rounds` rounds of 64
 * allocations of 16..128 bytes followed by their 64 frees through one PyMem
 * domain and returns the time in nanoseconds. A Python-level benchmark
 * would bury the few nanoseconds a hook adds under the interpreter's own
 * work; this measures the hook path itself. Built without -lpython: the
 * PyMem functions resolve against the interpreter that loads it.
 *
 *   cc -O2 -shared -fPIC -o hook_bench.so hook_bench.c
 */
#include <stddef.h>
#include <stdint.h>
#include <time.h>

void *PyObject_Malloc(size_t size);
void *PyObject_Realloc(void *p, size_t size);
void PyObject_Free(void *p);
void *PyMem_Malloc(size_t size);
void PyMem_Free(void *p);
void *PyMem_RawMalloc(size_t size);
void PyMem_RawFree(void *p);

#define BATCH 64

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

#define BENCH(name, alloc, release)                                   \
    uint64_t name(long rounds) {                                      \
        void *volatile ring[BATCH];                                   \
        uint64_t t0 = now_ns();                                       \
        for (long r = 0; r < rounds; r++) {                           \
            for (int k = 0; k < BATCH; k++)                           \
                ring[k] = alloc((size_t)(16 + (k & 7) * 16));         \
            for (int k = 0; k < BATCH; k++)                           \
                release(ring[k]);                                     \
        }                                                             \
        return now_ns() - t0;                                         \
    }

BENCH(bench_obj, PyObject_Malloc, PyObject_Free)
BENCH(bench_mem, PyMem_Malloc, PyMem_Free)
BENCH(bench_raw, PyMem_RawMalloc, PyMem_RawFree)

/* malloc, grow once (a realloc), free. */
uint64_t bench_obj_realloc(long rounds) {
    void *volatile ring[BATCH];
    uint64_t t0 = now_ns();
    for (long r = 0; r < rounds; r++) {
        for (int k = 0; k < BATCH; k++)
            ring[k] = PyObject_Malloc((size_t)(16 + (k & 7) * 16));
        for (int k = 0; k < BATCH; k++)
            ring[k] = PyObject_Realloc(ring[k], (size_t)(32 + (k & 7) * 32));
        for (int k = 0; k < BATCH; k++)
            PyObject_Free(ring[k]);
    }
    return now_ns() - t0;
}
