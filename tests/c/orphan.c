/* orphan.c - the arena after the program closed or replaced its memfd's
 * descriptor (white box: includes the core's internal.h).
 *
 * A fragmented heap is meshed; then the program closes the memfd's
 * descriptor and puts a file of its own at that number (dup2). From then
 * on meshalloc must never touch that file, stop meshing, and still undo
 * every alias (a freed meshed span gets zero pages), return free pages, and
 * keep every object. The primitive that stands in for the descriptor is
 * checked directly: zero anonymous pages mapped over a restored range.
 *
 * Exit 0 and "orphan ok" on success; failures on stderr with "FAIL".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"
#include "mesh.h"
#include "testutil.h"

#define N 100000
#define FILE_BYTES (256 * 1024)

static int fails;
#define CHECK(cond, ...) do { if (!(cond)) { fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
    fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); fails++; } } while (0)

static unsigned char *obj[N];
static rng_t rng;
static uint64_t next(void) { return rng_next(&rng); }

static void fill(size_t i, unsigned tag) { memset(obj[i], (int)((i * 7 + tag) & 255), 64); }
static int intact(size_t i, unsigned tag) {
  for (int k = 0; k < 64; k++)
    if (obj[i][k] != (unsigned char)((i * 7 + tag) & 255)) return 0;
  return 1;
}

static void verify(unsigned tag, const char *when) {
  for (size_t i = 0; i < N; i++)
    if (obj[i] && !intact(i, tag)) {
      CHECK(0, "%s: object %zu changed", when, i);
      return;
    }
}

static void file_check(int fd, const char *when) {
  static unsigned char buf[FILE_BYTES];
  CHECK(pread(fd, buf, FILE_BYTES, 0) == FILE_BYTES, "%s: pread", when);
  for (size_t k = 0; k < FILE_BYTES; k++)
    if (buf[k] != (unsigned char)(k * 13 + 5)) {
      CHECK(0, "%s: the program's file changed at byte %zu", when, k);
      return;
    }
  CHECK(lseek(fd, 0, SEEK_END) == FILE_BYTES, "%s: the program's file changed size", when);
}

int main(void) {
  rng_seed(&rng, 88172645463325252ull);
  for (size_t i = 0; i < N; i++) {
    obj[i] = mesh_malloc(64);
    fill(i, 1);
  }
  for (size_t i = 0; i < N; i++)
    if (next() % 10) mesh_free(obj[i]), obj[i] = NULL;
  CHECK(mesh_meshing_available(), "meshing not available at start");
  CHECK(mesh_compact() > 0, "nothing meshed before the descriptor was closed");
  CHECK(stat_get("meshed_pages") > 0, "no aliases");

  /* a large block whose pages are the memfd's, for the primitives below */
  unsigned char *l = mesh_malloc(3 * MESH_PAGE_SIZE);
  uint64_t meshed_before = stat_get("meshed_pages");

  /* the program: closes the memfd's number and puts its own file there */
  int memfd = _mesh_arena.fd;
  char name[64];
  snprintf(name, sizeof name, "orphan-%d.dat", (int)getpid());
  int own = open(name, O_RDWR | O_CREAT | O_TRUNC, 0600);
  CHECK(own >= 0, "open");
  unlink(name);
  static unsigned char buf[FILE_BYTES];
  for (size_t k = 0; k < FILE_BYTES; k++) buf[k] = (unsigned char)(k * 13 + 5);
  CHECK(pwrite(own, buf, FILE_BYTES, 0) == FILE_BYTES, "pwrite");
  close(memfd);
  CHECK(dup2(own, memfd) == memfd, "dup2");

  verify(1, "after the descriptor was replaced");
  for (size_t i = 0; i < N; i++)
    if (obj[i]) fill(i, 2); /* writes through aliases */
  CHECK(mesh_compact() == 0, "meshed with a descriptor that is not the arena's");
  CHECK(!mesh_meshing_available(), "meshing still reported available");
  CHECK(fcntl(memfd, F_GETFD) >= 0, "the program's descriptor was closed by meshalloc");
  verify(2, "after a compaction");

  /* churn: frees undo aliases, new spans reuse pages, scavenge returns them */
  for (int r = 0; r < 4; r++) {
    for (size_t i = 0; i < N; i++)
      if (obj[i] && next() % 2) mesh_free(obj[i]), obj[i] = NULL;
      else if (!obj[i] && next() % 8 == 0) obj[i] = mesh_malloc(64), fill(i, 2);
    mesh_scavenge();
    CHECK(mesh_check_heap() == 0, "heap inconsistent in round %d", r);
  }
  verify(2, "after the churn");
  /* everything freed: meshed spans that empty are restored (those a thread
   * heap still holds keep their aliases), then a new heap for the fork */
  for (size_t i = 0; i < N; i++)
    if (obj[i]) mesh_free(obj[i]), obj[i] = NULL;

  CHECK(stat_get("meshed_pages") < meshed_before, "freeing meshed spans undid no alias (%llu of %llu left)",
        (unsigned long long)stat_get("meshed_pages"), (unsigned long long)meshed_before);

  /* the descriptor-free primitive, on the large block of 3 pages: a range
   * given back its own pages gets fresh anonymous zero pages */
  uint32_t p = (uint32_t)(((uintptr_t)l - _mesh_arena.base) >> MESH_PAGE_SHIFT);
  memset(l, 0x5A, 2 * MESH_PAGE_SIZE);
  volatile unsigned char *vl = l;
  CHECK(_mesh_arena_map(p + 1, 1, MESH_PHYS_ANON) == 0, "restoring without a descriptor (errno %d)", errno);
  CHECK(vl[MESH_PAGE_SIZE] == 0 && vl[2 * MESH_PAGE_SIZE - 1] == 0, "a restored page is not zero");
  vl[MESH_PAGE_SIZE] = 1;
  CHECK(vl[0] == 0x5A && vl[MESH_PAGE_SIZE] == 1, "the restored page is not a page of its own");
  /* and a memfd page cannot be mapped without its descriptor: an error, never another file */
  CHECK(_mesh_arena_map(p + 1, 1, p) != 0, "mapped a memfd page without the memfd's descriptor");
  mesh_free(l);

  for (size_t i = 0; i < N; i += 3) obj[i] = mesh_malloc(64), fill(i, 2);
  CHECK(mesh_check_heap() == 0, "heap inconsistent after the new allocations");

  /* a fork child copies the heap (no memfd to share it through) */
  pid_t pid = fork();
  if (pid == 0) {
    for (size_t i = 0; i < N; i++)
      if (obj[i]) fill(i, 3);
    for (size_t i = 0; i < N; i += 2)
      if (obj[i]) mesh_free(obj[i]), obj[i] = NULL;
    _exit(mesh_check_heap() == 0 ? 0 : 3);
  }
  int st;
  CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0, "fork child failed (%#x)", st);
  verify(2, "after the fork child rewrote its copy");

  for (size_t i = 0; i < N; i++)
    if (obj[i]) mesh_free(obj[i]), obj[i] = NULL;
  CHECK(mesh_check_heap() == 0, "heap inconsistent at the end");
  file_check(own, "at the end");
  file_check(memfd, "at the end (the replaced number)");
  if (fails) return 1;
  printf("orphan ok\n");
  return 0;
}
