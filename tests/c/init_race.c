/* init_race.c - the first allocations of several threads race the core's
 * initialisation.
 *
 *   init_race [THREADS]   THREADS threads (default 4), released together by a
 *                         barrier before anything of the core ran, each
 *                         allocate blocks of every size kind (up to 512 bytes,
 *                         513-1024, the table-driven classes above 1 KiB, and
 *                         large), write and check them, and free them.
 *
 * The point is under ThreadSanitizer: a fast path that reads state while
 * another thread's first call is still initialising it must do so through
 * atomics (the allocation is then sent to the slow path, which waits for
 * initialisation). Prints "init_race ok".
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "mesh.h"
#include "testutil.h"

static pthread_barrier_t start;

static void *first_calls(void *arg) {
  uint64_t t = (uint64_t)(uintptr_t)arg;
  /* the first call reads the class table (sizes above 1 KiB) */
  static const size_t sizes[] = {2000, 5000, 12000, 16, 100, 512, 600, 1000, 70000, 300000};
  pthread_barrier_wait(&start);
  for (int round = 0; round < 50; round++) {
    void *p[sizeof sizes / sizeof sizes[0]];
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
      p[i] = mesh_malloc(sizes[i]);
      if (!p[i]) DIE("malloc(%zu) failed", sizes[i]);
      pat_fill_sparse(p[i], sizes[i], t * 1000 + i, 64);
    }
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
      if (pat_check_sparse(p[i], sizes[i], t * 1000 + i, 64) != (size_t)-1) DIE("block of %zu corrupted", sizes[i]);
      mesh_free(p[i]);
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? (int)parse_u64(argv[1], 4) : 4;
  if (n < 2 || n > 64) DIE("THREADS must be 2..64");
  pthread_t th[64];
  if (pthread_barrier_init(&start, NULL, (unsigned)n)) DIE("pthread_barrier_init");
  for (int i = 0; i < n; i++)
    if (pthread_create(&th[i], NULL, first_calls, (void *)(uintptr_t)(i + 1))) DIE("pthread_create");
  for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
  if (mesh_check_heap() != 0) DIE("heap check failed");
  puts("init_race ok");
  return 0;
}
