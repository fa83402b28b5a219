/* hazards.c - hazards that need a process of their own (docs/design.md,
 * "Hostile environments"; the signal cases: docs/meshing.md, "Why no write is
 * lost: the write barrier").
 *
 * One case per process, named by argv[1]:
 *   segv-plain            a real NULL write after the allocator started
 *                         (and after a meshing-friendly workload) still
 *                         kills the process with SIGSEGV
 *   segv-handler-before   an SA_SIGINFO handler installed before the
 *                         allocator starts still receives real faults
 *   segv-handler-after    a handler installed after the allocator started
 *                         (displacing any handler of the core) receives them
 *   segv-ignored          SIGSEGV set to SIG_IGN: a real fault still kills
 *                         the process with SIGSEGV, as the kernel does
 *   sigbus-file           touching a file mapping past EOF raises SIGBUS and
 *                         is never taken for a mesh fault (no loop, no hang)
 *   fragmented            2 % of a million small objects kept at random (the
 *                         pattern meshing targets): survivors keep their
 *                         contents, the process stays far below
 *                         vm.max_map_count, mesh_check_heap() is 0
 *   no-memfd-seccomp      memfd_create fails (seccomp, ENOSYS) from the
 *                         start: the allocator degrades (no meshing), keeps
 *                         working, forks, and says so once
 *   no-fallocate-seccomp  fallocate fails (seccomp, EPERM): free pages are
 *                         returned through their mapping (PSS drops),
 *                         meshing stops after its first refused punch, and
 *                         each kind of warning is printed once however often
 *                         it recurs (MALLOCSTATS counts the repeats)
 * The signal cases print "FAULTING" just before the fault; a handler that
 * gets the signal prints "HANDLER <signo>" and exits 42.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mesh.h"
#include "testutil.h"

static void handler(int sig, siginfo_t *si, void *uc) {
  (void)si; (void)uc;
  char msg[32];
  int n = snprintf(msg, sizeof msg, "HANDLER %d\n", sig);
  if (write(1, msg, (size_t)n) < 0) _exit(43);
  _exit(42);
}

static void install(int sig) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  if (sigaction(sig, &sa, NULL) != 0) DIE("sigaction");
}

/* A workload that leaves sparse spans behind (what meshing merges), so a
 * core that installs its fault handler lazily has done so by now. */
static void warm_up(void) {
  enum { N = 60000 };
  static void *ps[N];
  rng_t r; rng_seed(&r, 3);
  for (int i = 0; i < N; i++) ps[i] = mesh_malloc(16 + 16 * (size_t)rng_below(&r, 16));
  for (int i = 0; i < N; i++) if (rng_below(&r, 10) != 0) { mesh_free(ps[i]); ps[i] = NULL; }
  struct timespec ts = {0, 150 * 1000 * 1000};
  nanosleep(&ts, NULL);                   /* past a rate limit of 100 ms */
  for (int i = 0; i < N; i++) if (ps[i] && (i & 1)) { mesh_free(ps[i]); ps[i] = NULL; }
  mesh_scavenge();
}

static void fault_null(void) {
  printf("FAULTING\n");
  fflush(stdout);
  volatile uintptr_t where = 16;  /* opaque to the compiler: a real store */
  *(volatile int *)where = 1;
  printf("SURVIVED a NULL write\n");
  exit(3);
}

static int case_sigbus(void) {
  char path[] = "/tmp/mesh-sigbus-XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) DIE("mkstemp");
  unlink(path);
  if (ftruncate(fd, 4096) != 0) DIE("ftruncate");
  volatile char *m = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) DIE("mmap");
  m[0] = 1;
  printf("FAULTING\n");
  fflush(stdout);
  m[4096] = 1;  /* past EOF: SIGBUS */
  printf("SURVIVED a write past EOF\n");
  return 3;
}

static int count_maps(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) return -1;
  int n = 0, c;
  while ((c = fgetc(f)) != EOF) n += c == '\n';
  fclose(f);
  return n;
}

static long read_long(const char *path) {
  FILE *f = fopen(path, "r");
  long v = -1;
  if (f) { if (fscanf(f, "%ld", &v) != 1) v = -1; fclose(f); }
  return v;
}

static int case_fragmented(void) {
  enum { N = 1000000 };
  unsigned char **ps = calloc(N, sizeof *ps);
  uint32_t *tags = calloc(N, sizeof *tags);
  if (!ps || !tags) DIE("calloc");
  rng_t r; rng_seed(&r, 2024);
  for (int i = 0; i < N; i++) {
    size_t n = 16 + 16 * (size_t)(i % 8);
    ps[i] = mesh_malloc(n);
    if (!ps[i]) DIE("malloc failed at %d", i);
    tags[i] = (uint32_t)rng_next(&r);
    pat_fill(ps[i], n, tags[i]);
  }
  int kept = 0, bad = 0;
  struct timespec ts = {0, 20 * 1000 * 1000};
  for (int i = 0; i < N; i++) {
    if (rng_below(&r, 100) < 2) { kept++; continue; }
    mesh_free(ps[i]);
    ps[i] = NULL;
    if (i % 100000 == 0) nanosleep(&ts, NULL);  /* let rate-limited meshing run */
  }
  mesh_scavenge();
  for (int i = 0; i < N; i++) {
    if (!ps[i]) continue;
    size_t n = 16 + 16 * (size_t)(i % 8);
    if (pat_check(ps[i], n, tags[i]) != (size_t)-1) {
      if (bad < 5) printf("CORRUPTED survivor %p (%zu B)\n", (void *)ps[i], n);
      bad++;
    }
  }
  int maps = count_maps();
  long limit = read_long("/proc/sys/vm/max_map_count");
  printf("kept %d of %d, %d corrupted, %d mappings (max_map_count %ld)\n", kept, N, bad, maps, limit);
  int problems = mesh_check_heap();
  for (int i = 0; i < N; i++) if (ps[i]) mesh_free(ps[i]);
  problems += mesh_check_heap();
  if (problems) printf("mesh_check_heap problems: %d\n", problems);
  if (limit > 0 && maps > limit / 2) printf("TOO MANY MAPPINGS\n");
  int fail = bad || problems || (limit > 0 && maps > limit / 2);
  printf("fragmented: %s\n", fail ? "FAILED" : "ok");
  return fail ? 1 : 0;
}

/* From here on, system call nr fails with err (a seccomp filter). */
static void refuse_syscall(long nr, int err) {
  struct sock_filter filter[] = {
    BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
    BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ((unsigned)err & SECCOMP_RET_DATA)),
    BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {sizeof filter / sizeof filter[0], filter};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) DIE("no_new_privs: %s", strerror(errno));
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) DIE("seccomp: %s", strerror(errno));
}

static int case_no_memfd_seccomp(void) {
  refuse_syscall(__NR_memfd_create, ENOSYS);
  if (syscall(__NR_memfd_create, "probe", 0) != -1 || errno != ENOSYS) DIE("the seccomp filter does not work");

  int fail = 0;
  enum { N = 20000 };
  static unsigned char *ps[N];
  for (int i = 0; i < N; i++) {
    size_t n = 1 + (size_t)(i % 3000);
    ps[i] = mesh_malloc(n);
    if (!ps[i]) { printf("malloc failed\n"); return 1; }
    pat_fill(ps[i], n, (uint64_t)i);
  }
  if (mesh_meshing_available() != 0) { printf("meshing claimed available without memfd\n"); fail = 1; }
  pid_t pid = fork();
  if (pid == 0) {
    /* the child's copy of the heap must not depend on memfd either */
    int bad = 0;
    for (int i = 0; i < N; i++) {
      if (pat_check(ps[i], 1 + (size_t)(i % 3000), (uint64_t)i) != (size_t)-1) bad++;
      pat_fill(ps[i], 1 + (size_t)(i % 3000), (uint64_t)i + 7);
      if (i % 2) mesh_free(ps[i]);
    }
    void *q = mesh_malloc(100);
    _exit(bad || !q ? 1 : 0);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) { printf("fork child failed (status %#x)\n", st); fail = 1; }
  for (int i = 0; i < N; i++) {
    if (pat_check(ps[i], 1 + (size_t)(i % 3000), (uint64_t)i) != (size_t)-1) { printf("parent object changed by child\n"); fail = 1; break; }
    mesh_free(ps[i]);
  }
  if (mesh_check_heap() != 0) fail = 1;
  printf("no-memfd-seccomp: %s\n", fail ? "FAILED" : "ok");
  return fail;
}

void _mesh_warning(const char *fmt, ...); /* the core's (internal.h) */

static int case_no_fallocate_seccomp(void) {
  warm_up(); /* the heap exists before the filter: its memfd works, only punching is refused */
  refuse_syscall(__NR_fallocate, EPERM);
  if (syscall(__NR_fallocate, 0, 0, 0, 0) != -1 || errno != EPERM) DIE("the seccomp filter does not work");

  int fail = 0;
  enum { N = 400000, ROUNDS = 6 };
  static unsigned char *ps[N];
  long before = rollup_kb("Pss"), peak = before;
  for (int r = 0; r < ROUNDS; r++) {
    for (int i = 0; i < N; i++) {
      ps[i] = mesh_malloc(64);
      if (!ps[i]) { printf("malloc failed\n"); return 1; }
      pat_fill(ps[i], 64, (uint64_t)i + (uint64_t)r);
    }
    long p = rollup_kb("Pss");
    if (p > peak) peak = p;
    for (int i = 0; i < N; i++) if (i % 16) mesh_free(ps[i]), ps[i] = NULL;
    mesh_compact();
    for (int i = 0; i < N; i += 16)
      if (pat_check(ps[i], 64, (uint64_t)i + (uint64_t)r) != (size_t)-1) { printf("survivor %d changed\n", i); fail = 1; }
    for (int i = 0; i < N; i += 16) mesh_free(ps[i]), ps[i] = NULL;
    mesh_scavenge();
  }
  long after = rollup_kb("Pss");
  printf("pss before %ld peak %ld after %ld KiB, meshing_available %d\n", before, peak, after, mesh_meshing_available());
  if (after - before > (peak - before) / 2) { printf("free pages were not returned\n"); fail = 1; }
  if (mesh_check_heap() != 0) fail = 1;
  /* a warning that recurs (here called directly: the refused punches above
   * now have a way around them) is printed once and counted */
  for (int i = 0; i < 50; i++) _mesh_warning("recurring test warning %d", i);
  mesh_stats_print(1);
  printf("no-fallocate-seccomp: %s\n", fail ? "FAILED" : "ok");
  return fail;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc < 2) DIE("usage: hazards CASE");
  const char *c = argv[1];
  if (strcmp(c, "segv-plain") == 0) { warm_up(); fault_null(); }
  if (strcmp(c, "segv-handler-before") == 0) { install(SIGSEGV); warm_up(); fault_null(); }
  if (strcmp(c, "segv-handler-after") == 0) { warm_up(); install(SIGSEGV); fault_null(); }
  if (strcmp(c, "segv-ignored") == 0) { signal(SIGSEGV, SIG_IGN); warm_up(); fault_null(); }
  if (strcmp(c, "sigbus-file") == 0) { warm_up(); return case_sigbus(); }
  if (strcmp(c, "fragmented") == 0) return case_fragmented();
  if (strcmp(c, "no-memfd-seccomp") == 0) return case_no_memfd_seccomp();
  if (strcmp(c, "no-fallocate-seccomp") == 0) return case_no_fallocate_seccomp();
  DIE("unknown case %s", c);
}
