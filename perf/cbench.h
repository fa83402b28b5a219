/* cbench.h - what the C benchmarks share: PSS read from smaps_rollup, and
 * the splitmix64 step. Header-only: each benchmark is one source file built
 * on its own (perf/micro/Makefile, perf/frag/frag.py).
 */
#ifndef MESH_PERF_CBENCH_H
#define MESH_PERF_CBENCH_H

#include <stdint.h>
#include <stdio.h>

/* This process's PSS in KiB ("Pss:" of /proc/self/smaps_rollup; never RSS,
 * which counts a meshed page once per mapping), or -1 if unavailable. */
static inline long cb_pss_kb(void) {
  FILE *f = fopen("/proc/self/smaps_rollup", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "Pss: %ld kB", &v) == 1) break;
  fclose(f);
  return v;
}

/* One splitmix64 step: deterministic, so every allocator sees the same
 * sequence of sizes and frees. */
static inline uint64_t cb_splitmix(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

#endif
