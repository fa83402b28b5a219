/* mesh_background.c - the background meshing thread compacts a program
 * that does nothing after its frees.
 *
 * Allocates 100 k 64-byte objects, frees 95 % of them, turns off meshing on
 * frees (period_ms=0) and sleeps: with MESH_BACKGROUND_MS set, meshes happen
 * during the sleep; without it, none do. Every survivor is checked after.
 * Prints "meshes N" and exits 0 when the contents are intact.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mesh.h"
#include "testutil.h"

int main(void) {
  enum { N = 100000, SIZE = 64 };
  static unsigned char *p[N];
  for (int i = 0; i < N; i++) {
    p[i] = mesh_malloc(SIZE);
    pat_fill(p[i], SIZE, (uint64_t)i);
  }
  if (mesh_option_set("period_ms", 0) != 0) return 2;
  for (int i = 0; i < N; i++)
    if (i % 20) mesh_free(p[i]), p[i] = NULL;
  uint64_t before = stat_get("mesh_count");
  usleep(500000);
  uint64_t after = stat_get("mesh_count");
  int bad = 0;
  for (int i = 0; i < N; i++)
    if (p[i] && pat_check(p[i], SIZE, (uint64_t)i) != (size_t)-1) bad++;
  printf("meshes %llu (before the sleep %llu) corrupt %d check %d\n", (unsigned long long)after,
         (unsigned long long)before, bad, mesh_check_heap());
  return bad != 0;
}
