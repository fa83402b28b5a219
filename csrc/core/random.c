/* random.c - seeds for the per-heap random generators.
 *
 * Randomized slot order is what makes two spans likely to mesh (and makes
 * heap grooming harder), so every thread heap gets its own wyrand stream.
 * With the seed option set the streams are reproducible (heap N gets a
 * stream derived from the seed and N); otherwise they come from getrandom.
 */
#include "internal.h"

static _Atomic uint64_t seed_counter;

uint64_t _mesh_random_seed(void) {
  uint64_t n = mesh_fetch_add_relaxed(&seed_counter, 1) + 1;
  long opt = mesh_opt(MESH_OPT_SEED);
  uint64_t s = opt ? (uint64_t)opt * 0x9e3779b97f4a7c15ULL + n : _mesh_os_random() ^ n;
  (void)mesh_rand(&s); /* one step so that close seeds diverge */
  return s;
}
