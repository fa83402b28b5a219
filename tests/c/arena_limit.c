/* arena_limit.c - the arena under an address-space limit (RLIMIT_AS).
 *
 * Under a limit the arena maps its range as spans need it (reserve.c).
 * 1. Small blocks grow it (arena_growths > 0, arena_reserved_bytes grows)
 *    and the heap checks.
 * 2. The program maps a page of its own exactly where the arena would
 *    grow next: small blocks then fail with ENOMEM once the mapped part is
 *    full (never a crash, never the program's page), the heap checks, the
 *    page keeps the program's bytes, and large blocks still come from
 *    mappings of their own.
 * 3. Everything freed, the heap checks and small blocks come back.
 *
 * Exit 0 and "arena_limit ok" on success; failures on stderr with "FAIL".
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include "mesh.h"
#include "testutil.h"

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

static int fails;
#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); fails++; } } while (0)

/* Small blocks, linked through their first word, until malloc fails or
 * max bytes are held; returns the list. */
static void *fill(size_t size, size_t max, size_t *n) {
  void *head = NULL, *p;
  *n = 0;
  while (*n * size < max && (p = mesh_malloc(size))) {
    pat_fill(p, size, *n);
    *(void **)p = head;
    head = p;
    (*n)++;
  }
  return head;
}

static void drain(void *head) {
  while (head) {
    void *p = head;
    head = *(void **)p;
    mesh_free(p);
  }
}

int main(void) {
  struct rlimit rl = {(rlim_t)600 << 20, (rlim_t)600 << 20};
  if (setrlimit(RLIMIT_AS, &rl) != 0) DIE("setrlimit");
  size_t n;
  void *a = fill(64, (size_t)64 << 20, &n);
  uint64_t mapped = stat_get("arena_reserved_bytes");
  printf("64 MiB of small blocks: arena mapped %llu MiB in %llu growths\n", (unsigned long long)(mapped >> 20),
         (unsigned long long)stat_get("arena_growths"));
  CHECK(n * 64 == (size_t)64 << 20, "small blocks failed at %zu MiB", n * 64 >> 20);
  CHECK(stat_get("arena_growths") > 0 && mapped >= (uint64_t)64 << 20 && mapped < (uint64_t)200 << 20,
        "the arena did not grow with the blocks (%llu MiB mapped)", (unsigned long long)(mapped >> 20));
  CHECK(mesh_check_heap() == 0, "heap inconsistent after growing");

  /* a page of the program's own where the arena would grow next */
  char *end = (char *)(uintptr_t)(stat_get("arena_base") + mapped);
  char *mine = mmap(end, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  CHECK(mine == end, "could not map the page after the arena (%p, errno %d)", (void *)mine, errno);
  memset(mine, 0xa5, 4096);
  size_t m;
  void *b = fill(64, (size_t)400 << 20, &m);
  printf("then %zu MiB more before ENOMEM (errno %d), arena mapped %llu MiB\n", m * 64 >> 20, errno,
         (unsigned long long)(stat_get("arena_reserved_bytes") >> 20));
  CHECK(m * 64 < (size_t)400 << 20 && errno == ENOMEM, "small blocks went past the program's page");
  CHECK(stat_get("arena_reserved_bytes") == mapped, "the arena grew over the program's page");
  for (int i = 0; i < 4096; i++)
    if ((unsigned char)mine[i] != 0xa5) {
      CHECK(0, "the program's page changed at byte %d", i);
      break;
    }
  CHECK(mesh_check_heap() == 0, "heap inconsistent at the end of the arena");
  void *big = mesh_malloc((size_t)32 << 20);
  CHECK(big != NULL, "a large block failed once the arena could not grow (errno %d)", errno);
  if (big) memset(big, 1, (size_t)32 << 20);
  mesh_free(big);

  drain(b);
  drain(a);
  CHECK(mesh_check_heap() == 0, "heap inconsistent after freeing everything");
  void *c = fill(64, (size_t)32 << 20, &n);
  CHECK(n * 64 == (size_t)32 << 20, "small blocks failed after everything was freed");
  drain(c);
  munmap(mine, 4096);
  if (fails) return 1;
  printf("arena_limit ok\n");
  return 0;
}
