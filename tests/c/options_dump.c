/* options_dump.c - prints the option and stats tables as the core sees them.
 *
 * Exercises mesh_option_* and mesh_stats_* from a fresh process, so that the
 * pytest side can check how environment variables (MESH_<NAME>) are read:
 * valid values applied, invalid ones rejected with a warning and the default
 * kept. One allocation is made first so that the core initializes.
 * Output: "option NAME VALUE" and "stat NAME VALUE" lines, then
 * "meshing_available N".
 */
#include <stdint.h>
#include <stdio.h>

#include "mesh.h"

int main(void) {
  mesh_free(mesh_malloc(1));
  for (int i = 0, n = mesh_option_count(); i < n; i++) {
    const char *name = mesh_option_name(i);
    if (name) printf("option %s %ld\n", name, mesh_option_get(name));
  }
  uint64_t vals[1024];
  int n = mesh_stats_read(vals, 1024);
  for (int i = 0; i < n && i < 1024; i++) {
    const char *name = mesh_stats_name(i);
    if (name) printf("stat %s %llu\n", name, (unsigned long long)vals[i]);
  }
  printf("meshing_available %d\n", mesh_meshing_available());
  return 0;
}
