/* raw_hammer.c - a C loop of PyMem_RawMalloc / PyMem_RawFree without the GIL.
 *
 * Loaded with ctypes.CDLL by raw_at_exit.py; ctypes releases the GIL for the
 * call, so raw_hammer() keeps allocating and freeing RAW blocks while the
 * main thread finalizes the interpreter (docs/python.md, "Domains: MEM and
 * OBJ by default, RAW on request"). It never returns.
 * Built without -lpython: PyMem_Raw* resolve against the interpreter that
 * loads it.
 *
 *   cc -O2 -shared -fPIC -o raw_hammer.so raw_hammer.c
 */
#include <stddef.h>
#include <stdint.h>

void *PyMem_RawMalloc(size_t size);
void PyMem_RawFree(void *p);

void raw_hammer(unsigned seed) {
    void *ring[64] = {0};
    uint32_t x = seed * 2654435761u + 1;
    for (;;) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        unsigned slot = x & 63;
        PyMem_RawFree(ring[slot]);  /* NULL is fine */
        ring[slot] = PyMem_RawMalloc(16 + (x >> 8) % 2000);
    }
}
