/* fork_frozen.c - a fork freezes the memfd instead of copying it
 * (docs/design.md, "fork"): every mapping of the meshed pages becomes
 * private, so parent and children share them copy-on-write, and later
 * meshes go to a new memfd. One case per process, named by argv[1]:
 *   shared   after meshing, 4 children forked from the heap sleep: the
 *            system's Shmem and the children's memfds grow by less than a
 *            tenth of the meshed bytes (a copy would add them 4 times);
 *            each child reads every object intact, then writes, frees,
 *            allocates, meshes and validates its heap; the parent's
 *            objects are unchanged by all that.
 *   never    frozen spans are never meshed again: objects freed in them
 *            leave them sparse, a compaction meshes only the unfrozen
 *            spans, every object stays intact, and freeing everything in
 *            the frozen generation leaves a valid heap with no frozen page.
 *   second   a second fork after more meshing freezes what was promoted
 *            since (a second generation) and nothing else; a child of each
 *            fork keeps its own snapshot.
 *   refused  the kernel refuses a remap midway through the freeze (the
 *            core's test hook): the ranges done are put back on the shared
 *            file, that fork copies instead, exactly, and the next one
 *            freezes.
 * The arena's mapping count stays the kernel's throughout (the parent is
 * no fork child). Exit 0 on success; failures on stderr with "FAIL".
 */
#include <dirent.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mesh.h"
#include "testutil.h"

static const char *g_who = "parent";
static int g_fail;

#define FAIL(...) do { fprintf(stderr, "FAIL [%s pid %d] ", g_who, (int)getpid()); \
                       fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); fflush(stderr); g_fail++; } while (0)

/* ---- populations: small objects, most freed, then meshed ------------------ */
typedef struct {
  unsigned char **p;
  uint32_t *n;
  uint32_t *k; /* each object's number, for its tag and its share (k % step) */
  int count;  /* live objects, p[0..count) */
  uint64_t id; /* tags differ between populations */
} pop_t;

static uint64_t tag_of(const pop_t *pop, uint64_t gen, int i) { return (pop->id * 64 + gen) * 10000019u + (uint64_t)i; }

/* n objects of 16-128 B, keep_pct of them kept at random (gen 1 written);
 * what meshing then merges. */
static void pop_build(pop_t *pop, uint64_t id, int n, int keep_pct) {
  pop->p = calloc((size_t)n, sizeof *pop->p);
  pop->n = calloc((size_t)n, sizeof *pop->n);
  pop->k = calloc((size_t)n, sizeof *pop->k);
  if (!pop->p || !pop->n || !pop->k) DIE("calloc");
  pop->id = id;
  rng_t r;
  rng_seed(&r, id);
  for (int i = 0; i < n; i++) {
    pop->n[i] = 16 + 16 * (uint32_t)rng_below(&r, 8);
    if (!(pop->p[i] = mesh_malloc(pop->n[i]))) DIE("malloc failed");
  }
  pop->count = 0;
  for (int i = 0; i < n; i++) {
    if ((int)rng_below(&r, 100) < keep_pct) {
      pop->p[pop->count] = pop->p[i];
      pop->n[pop->count] = pop->n[i];
      pop->k[pop->count] = (uint32_t)pop->count;
      pat_fill(pop->p[pop->count], pop->n[pop->count], tag_of(pop, 1, pop->count));
      pop->count++;
    } else {
      mesh_free(pop->p[i]);
    }
  }
}

static void pop_write(pop_t *pop, uint64_t gen, int step) {
  for (int i = 0; i < pop->count; i++)
    if (pop->k[i] % step == 0) pat_fill(pop->p[i], pop->n[i], tag_of(pop, gen, pop->k[i]));
}

/* Objects numbered k % step == 0 read gen, the others gen_else (0: any). */
static int pop_verify(const pop_t *pop, uint64_t gen, int step, uint64_t gen_else, const char *what) {
  int bad = 0;
  for (int i = 0; i < pop->count; i++) {
    uint64_t g = pop->k[i] % step == 0 ? gen : gen_else;
    if (g && pat_check(pop->p[i], pop->n[i], tag_of(pop, g, pop->k[i])) != (size_t)-1 && bad++ < 3)
      FAIL("%s: object %d (%p, %u B) is not generation %llu", what, i, (void *)pop->p[i], pop->n[i],
           (unsigned long long)g);
  }
  if (bad) FAIL("%s: %d of %d objects wrong", what, bad, pop->count);
  return bad;
}

/* Frees the objects numbered k % step == rem (all for step 1); the rest
 * move down. */
static void pop_free(pop_t *pop, int step, int rem) {
  int k = 0;
  for (int i = 0; i < pop->count; i++) {
    if ((int)(pop->k[i] % step) == rem) mesh_free(pop->p[i]);
    else pop->p[k] = pop->p[i], pop->n[k] = pop->n[i], pop->k[k] = pop->k[i], k++;
  }
  pop->count = k;
}

/* ---- plumbing --------------------------------------------------------------- */
static void sig_send(int fd) { char c = 'x'; if (write(fd, &c, 1) != 1) DIE("pipe write"); }
static void sig_wait(int fd) { char c; if (read(fd, &c, 1) != 1) DIE("pipe read (peer died?)"); }

static void reap(pid_t pid, const char *what) {
  int st;
  if (waitpid(pid, &st, 0) != pid) { FAIL("%s: waitpid failed", what); return; }
  if (WIFSIGNALED(st)) FAIL("%s: killed by signal %d", what, WTERMSIG(st));
  else if (WEXITSTATUS(st) != 0) FAIL("%s: exited with %d", what, WEXITSTATUS(st));
}

static pid_t fork_checked(void) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) DIE("fork failed");
  return pid;
}

static void child_exit(void) {
  fflush(stdout);
  fflush(stderr);
  _exit(g_fail ? 1 : 0);
}

static void check_heap(const char *what) {
  int problems = mesh_check_heap();
  if (problems) FAIL("%s: mesh_check_heap() = %d", what, problems);
}

static void check_mappings(const char *what) {
  uint64_t ours = stat_get("arena_mappings");
  int kernel = maps_count();
  if (ours != (uint64_t)kernel)
    FAIL("%s: arena_mappings %llu, the kernel has %d", what, (unsigned long long)ours, kernel);
}

static void require_meshed(void) {
  if (stat_get("promoted_pages") == 0 || stat_get("meshed_pages") == 0)
    DIE("nothing meshed (promoted %llu, meshed %llu): the case needs meshed spans",
        (unsigned long long)stat_get("promoted_pages"), (unsigned long long)stat_get("meshed_pages"));
}

/* The system's shared memory (memfd and tmpfs pages), in bytes. */
static long long shmem_bytes(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  if (!f) DIE("open /proc/meminfo");
  char line[256];
  long long kb = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "Shmem: %lld kB", &kb) == 1) break;
  fclose(f);
  return kb * 1024;
}

/* The smallest of a few samples: other processes' shared memory only adds
 * noise, and a sample without their growth is the truer one. */
static long long shmem_low(void) {
  long long low = shmem_bytes();
  for (int i = 0; i < 4; i++) {
    usleep(50000);
    long long v = shmem_bytes();
    if (v < low) low = v;
  }
  return low;
}

/* Bytes the arena memfds open in process pid hold. */
static long long memfd_bytes(pid_t pid) {
  char dir[64], path[320], link[256];
  snprintf(dir, sizeof dir, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(dir);
  if (!d) return 0;
  long long total = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    ssize_t k = readlink(path, link, sizeof link - 1);
    struct stat st;
    if (k <= 0) continue;
    link[k] = 0;
    if (strstr(link, "memfd:meshalloc") && stat(path, &st) == 0) total += (long long)st.st_blocks * 512;
  }
  closedir(d);
  return total;
}

/* ---- shared ------------------------------------------------------------------ */
enum { CHILDREN = 4, SHARED_OBJS = 1200000 };

static void shared_child(pop_t *a, int c, int up, int down) {
  static char who[32];
  snprintf(who, sizeof who, "child %d", c);
  g_who = who;
  pop_verify(a, 1, 1, 0, "the child reads every inherited object");
  sig_send(up);
  sig_wait(down); /* the parent has measured */
  pop_write(a, 2 + (uint64_t)c, 3);
  pop_free(a, 4, 1);
  pop_t b;
  pop_build(&b, 100 + (uint64_t)c, SHARED_OBJS / 8, 20);
  mesh_compact();
  pop_verify(a, 2 + (uint64_t)c, 3, 1, "the child's writes after its meshing");
  pop_verify(&b, 1, 1, 0, "the child's own objects after its meshing");
  check_heap("child after writing, freeing, allocating and meshing");
  pop_free(a, 1, 0);
  pop_free(&b, 1, 0);
  check_heap("child after freeing everything");
  child_exit();
}

static void case_shared(void) {
  pop_t a;
  pop_build(&a, 1, SHARED_OBJS, 20);
  mesh_compact();
  require_meshed();
  long long meshed = (long long)stat_get("promoted_pages") * 4096;
  long long shm0 = shmem_low();
  pid_t pids[CHILDREN];
  int up[CHILDREN][2], down[CHILDREN][2];
  for (int c = 0; c < CHILDREN; c++) {
    if (pipe(up[c]) || pipe(down[c])) DIE("pipe");
    if ((pids[c] = fork_checked()) == 0) shared_child(&a, c, up[c][1], down[c][0]);
  }
  for (int c = 0; c < CHILDREN; c++) sig_wait(up[c][0]);
  long long shm = shmem_low() - shm0, fds = 0; /* the parent's own memfd is new and empty */
  for (int c = 0; c < CHILDREN; c++) fds += memfd_bytes(pids[c]);
  printf("meshed %lld KiB; %d idle children: Shmem %+lld KiB, memfds %+lld KiB; freezes %llu, frozen pages %llu\n",
         meshed >> 10, CHILDREN, shm >> 10, fds >> 10, (unsigned long long)stat_get("freezes"),
         (unsigned long long)stat_get("frozen_pages"));
  if (shm > meshed / 10) FAIL("the idle children added %lld KiB of Shmem (meshed: %lld KiB)", shm >> 10, meshed >> 10);
  if (fds > meshed / 10) FAIL("the memfds grew by %lld KiB (meshed: %lld KiB)", fds >> 10, meshed >> 10);
  if (stat_get("freezes") != 1 || stat_get("promoted_pages") != 0 || stat_get("fork_copy_bytes_last") != 0)
    FAIL("the first fork did not freeze the memfd (freezes %llu)", (unsigned long long)stat_get("freezes"));
  check_mappings("parent after the freeze");
  for (int c = 0; c < CHILDREN; c++) sig_send(down[c][1]);
  pop_write(&a, 9, 2); /* the parent writes too, while the children do */
  for (int c = 0; c < CHILDREN; c++) reap(pids[c], "shared child");
  pop_verify(&a, 9, 2, 1, "the parent's objects, whatever its children did");
  check_heap("parent after the children");
  check_mappings("parent after its writes");
  pop_free(&a, 1, 0);
  check_heap("parent after freeing everything");
  if (stat_get("frozen_pages") != 0)
    FAIL("frozen_pages %llu after freeing everything", (unsigned long long)stat_get("frozen_pages"));
  check_mappings("parent after freeing everything");
}

/* ---- never ------------------------------------------------------------------- */
static void case_never(void) {
  pop_t a, b;
  pop_build(&a, 2, 300000, 30);
  mesh_compact();
  require_meshed();
  pid_t pid = fork_checked();
  if (pid == 0) {
    g_who = "child";
    pop_verify(&a, 1, 1, 0, "the child's snapshot");
    child_exit();
  }
  reap(pid, "child");
  uint64_t frozen = stat_get("frozen_pages"), meshes = stat_get("mesh_count");
  if (!frozen || stat_get("promoted_pages")) FAIL("the fork froze nothing (frozen_pages %llu)", (unsigned long long)frozen);
  /* the frozen spans turn sparse: 4 in 5 of their objects go */
  for (int r = 1; r < 5; r++) pop_free(&a, 5, r);
  pop_build(&b, 3, 300000, 20); /* unfrozen spans, as sparse */
  mesh_compact();
  uint64_t frozen_after = stat_get("frozen_pages"), meshes_after = stat_get("mesh_count");
  printf("frozen pages %llu -> %llu, meshes %llu -> %llu, promoted %llu\n", (unsigned long long)frozen,
         (unsigned long long)frozen_after, (unsigned long long)meshes, (unsigned long long)meshes_after,
         (unsigned long long)stat_get("promoted_pages"));
  if (meshes_after == meshes) FAIL("the unfrozen spans did not mesh");
  if (frozen_after > frozen) FAIL("frozen pages grew: %llu -> %llu", (unsigned long long)frozen, (unsigned long long)frozen_after);
  pop_verify(&a, 1, 1, 0, "objects in frozen spans after a compaction");
  pop_verify(&b, 1, 1, 0, "objects meshed after the freeze");
  check_heap("after meshing around the frozen spans");
  check_mappings("after meshing around the frozen spans");
  pop_free(&a, 1, 0);
  check_heap("after freeing the frozen generation's objects");
  check_mappings("after freeing the frozen generation's objects");
  pop_verify(&b, 1, 1, 0, "objects meshed after the freeze, the frozen ones gone");
  pop_free(&b, 1, 0); /* some of b went into free slots of frozen spans */
  check_heap("at the end");
  if (stat_get("frozen_pages") != 0 || stat_get("meshed_pages") != 0)
    FAIL("frozen_pages %llu, meshed_pages %llu after freeing everything", (unsigned long long)stat_get("frozen_pages"),
         (unsigned long long)stat_get("meshed_pages"));
  check_mappings("at the end");
}

/* ---- second ------------------------------------------------------------------ */
static void case_second(void) {
  pop_t a, b;
  pop_build(&a, 4, 300000, 25);
  mesh_compact();
  require_meshed();
  int up[2], down[2];
  if (pipe(up) || pipe(down)) DIE("pipe");
  pid_t first = fork_checked();
  if (first == 0) {
    g_who = "first child";
    sig_wait(down[0]); /* the parent has meshed again and forked again */
    pop_verify(&a, 1, 1, 0, "the first child's snapshot, after the parent's second fork");
    pop_write(&a, 5, 2);
    pop_free(&a, 3, 0);
    mesh_compact();
    check_heap("the first child");
    child_exit();
  }
  uint64_t frozen1 = stat_get("frozen_pages");
  pop_write(&a, 2, 2);
  pop_build(&b, 5, 300000, 25);
  mesh_compact();
  require_meshed();
  uint64_t promoted = stat_get("promoted_pages"), meshed = stat_get("meshed_pages");
  pid_t second = fork_checked();
  if (second == 0) {
    g_who = "second child";
    pop_verify(&a, 2, 2, 1, "the second child's snapshot of the first generation");
    pop_verify(&b, 1, 1, 0, "the second child's snapshot of the second generation");
    pop_write(&b, 7, 1);
    pop_free(&a, 1, 0);
    mesh_compact();
    pop_verify(&b, 7, 1, 0, "the second child's writes");
    check_heap("the second child");
    child_exit();
  }
  printf("first freeze %llu frozen pages; second: %llu promoted since (%llu meshed), %llu frozen in all, "
         "freezes %llu\n", (unsigned long long)frozen1, (unsigned long long)promoted, (unsigned long long)meshed,
         (unsigned long long)stat_get("frozen_pages"), (unsigned long long)stat_get("freezes"));
  if (stat_get("freezes") != 2 || stat_get("promoted_pages") != 0 || stat_get("fork_copy_bytes_last") != 0)
    FAIL("the second fork did not freeze what was promoted since");
  if (stat_get("frozen_pages") <= frozen1) FAIL("the second fork froze nothing new");
  check_mappings("after the second freeze");
  sig_send(down[1]);
  pop_write(&b, 3, 3);
  reap(second, "second child");
  reap(first, "first child");
  pop_verify(&a, 2, 2, 1, "the parent's first generation");
  pop_verify(&b, 3, 3, 1, "the parent's second generation");
  check_heap("parent after both children");
  pop_free(&a, 1, 0);
  pop_free(&b, 1, 0);
  check_heap("parent at the end");
  if (stat_get("frozen_pages") != 0) FAIL("frozen_pages %llu at the end", (unsigned long long)stat_get("frozen_pages"));
  check_mappings("parent at the end");
}

/* ---- refused ----------------------------------------------------------------- */
void _mesh_os_fail_mappings(unsigned nth, unsigned count, void (*at_failure)(void)); /* os.c, tests only */

/* Runs of adjacent memfd mappings in the arena: prepare's mprotect calls,
 * one a run, which come before the freeze's remaps. */
static int memfd_runs(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) DIE("open /proc/self/maps");
  uint64_t lo = stat_get("arena_base"), hi = lo + stat_get("arena_reserved_bytes");
  char line[512];
  unsigned long long prev_end = 0;
  int runs = 0;
  while (fgets(line, sizeof line, f)) {
    unsigned long long a, b;
    if (sscanf(line, "%llx-%llx", &a, &b) != 2 || a >= hi || b <= lo) continue;
    bool memfd = strstr(line, "memfd:meshalloc-arena") != NULL;
    if (memfd && a != prev_end) runs++;
    prev_end = memfd ? b : 0;
  }
  fclose(f);
  return runs;
}

/* A child that reads generation gen in objects k % step == 0 (1 in the
 * others), writes, meshes and validates its heap. */
static void fork_and_verify(pop_t *a, uint64_t gen, int step, const char *who) {
  pid_t pid = fork_checked();
  if (pid == 0) {
    g_who = who;
    pop_verify(a, gen, step, 1, "the child's snapshot");
    pop_write(a, 4, 2);
    mesh_compact();
    pop_verify(a, 4, 2, 0, "the child's writes");
    check_heap("the child");
    child_exit();
  }
  reap(pid, who);
}

static void case_refused(void) {
  pop_t a;
  mesh_option_set("mesher_thread", 0); /* no pass of its own between the hook's arming and the fork */
  pop_build(&a, 6, 300000, 25);
  mesh_compact();
  require_meshed();
  uint64_t failures = stat_get("mesh_remap_failures");
  _mesh_os_fail_mappings((unsigned)memfd_runs() + 10, 1, NULL); /* the 10th remap of the freeze */
  fork_and_verify(&a, 1, 1, "child of the refused freeze");
  _mesh_os_fail_mappings(0, 0, NULL);
  printf("refused: freezes %llu, copied %llu bytes, refusals %llu -> %llu\n",
         (unsigned long long)stat_get("freezes"), (unsigned long long)stat_get("fork_copy_bytes_last"),
         (unsigned long long)failures, (unsigned long long)stat_get("mesh_remap_failures"));
  if (stat_get("freezes") != 0 || stat_get("fork_copy_bytes_last") == 0 || stat_get("promoted_pages") == 0 ||
      stat_get("mesh_remap_failures") != failures + 1)
    FAIL("the refused freeze did not fall back to the copy");
  pop_verify(&a, 1, 1, 0, "the parent after the refused freeze");
  check_heap("the parent after the refused freeze");
  check_mappings("the parent after the refused freeze");
  pop_write(&a, 2, 3);
  fork_and_verify(&a, 2, 3, "child of the next fork");
  if (stat_get("freezes") != 1 || stat_get("promoted_pages") != 0) FAIL("the next fork did not freeze");
  pop_verify(&a, 2, 3, 1, "the parent at the end");
  check_mappings("the parent after the freeze");
  pop_free(&a, 1, 0);
  check_heap("the parent at the end");
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  const char *c = argc > 1 ? argv[1] : "";
  if (!mesh_meshing_available()) {
    printf("fork_frozen %s: SKIP (no meshing)\n", c);
    return 0;
  }
  if (strcmp(c, "shared") == 0) case_shared();
  else if (strcmp(c, "never") == 0) case_never();
  else if (strcmp(c, "second") == 0) case_second();
  else if (strcmp(c, "refused") == 0) case_refused();
  else DIE("usage: fork_frozen shared|never|second|refused");
  printf("fork_frozen %s: %s\n", c, g_fail ? "FAILED" : "ok");
  return g_fail ? 1 : 0;
}
