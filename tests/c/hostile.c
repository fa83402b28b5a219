/* hostile.c - legal programs that once broke meshalloc, each a case.
 *
 * A plain C program: it uses only the malloc family and libc, and is run
 * twice by tests/test_hostile.py, under LD_PRELOAD=libmesh.so and under
 * glibc as the control, where every case passes. Where meshalloc is the
 * malloc it also reaches mesh_compact() through dlsym, so meshing and
 * returning pages happen at known points; under glibc that is a no-op.
 *
 * Cases (argv[1]):
 *   closerange   a fragmented heap; the program closes every descriptor
 *                from 3 up (what daemonizers do), opens its own files,
 *                which take the freed numbers, and keeps allocating,
 *                freeing and compacting: the files keep every byte the
 *                program wrote and the heap every survivor.
 *   dup2-over    the program dup2()s its own file onto every descriptor
 *                number it has not opened itself (so onto the arena's
 *                memfd too, if it sees one): same checks.
 *   closerange-fork  as closerange, then fork: the child overwrites every
 *                survivor and frees half; the parent's heap and files
 *                are unchanged.
 *   alarm-writer a SIGALRM handler (every 200 us, for 3 s) adds one to a
 *                counter inside a heap object while the program frees,
 *                allocates and compacts: the handler may interrupt a
 *                meshing pass on the very thread it runs on. The process
 *                finishes, and the counters add up to the handler's calls.
 *   many-mappings  after start-up the program maps 30 000 pages of its own,
 *                then frees 90 % of a big heap and idles while meshing runs
 *                on its own: the process stays clear of vm.max_map_count
 *                (the program can still map 2 000 more pages).
 *   dgram        a thread recv()s 200 000 numbered datagrams, and reads an
 *                eventfd, into heap buffers that live among garbage (so
 *                their spans are meshed) while the main thread churns and
 *                compacts: every datagram arrives, in order, no EFAULT,
 *                and the eventfd counts add up.
 *   mprotect     page-sized, page-aligned heap blocks among garbage, a third
 *                made read-only, a third PROT_NONE, while the program churns
 *                and compacts: every protection is still in place after
 *                (/proc/self/maps), the read-only ones keep their bytes,
 *                and the mesher never touches the PROT_NONE ones.
 *   blocked-writers  a thread that blocked every signal (the "one sigwait
 *                thread" pattern) writes heap objects in a loop, and a
 *                SIGALRM handler installed with a full sa_mask writes them
 *                too, while the program compacts: the process finishes and
 *                every write is counted.
 *   addr-limit [BYTES]  run under an address-space limit (ulimit -v): one
 *                8 MiB block, then blocks of BYTES (1 MiB) until malloc
 *                fails; prints how many MiB it got (the test compares that
 *                with glibc's).
 *   stdio-reader a thread writes 300 000 numbered lines into a pipe; the
 *                main thread reads them with fgets, and with fread into a
 *                heap buffer, from FILEs whose buffers stdio allocated
 *                itself among page-sized garbage (so their spans are
 *                meshing candidates), while a third thread churns that
 *                garbage and compacts: every line arrives, in order, and
 *                no read fails (stdio's refills are read(2) calls inside
 *                libc, which no wrapper sees).
 *   stdio-closed started with stdin and stdout closed: the program's first
 *                open() gets descriptor 0, as POSIX promises, and what it
 *                writes there is not the heap.
 *
 * Prints "<case>: ok" on success; exits non-zero with a reason otherwise.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <stdatomic.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOBJ 200000
#define FILE_BYTES (1 << 20)

static void die(const char *what) {
  fprintf(stderr, "FAIL: %s (errno %d)\n", what, errno);
  exit(1);
}

static size_t (*compact_fn)(void);

static void compact(void) {
  if (compact_fn) compact_fn();
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

/* The heap: NOBJ blocks of 16-256 bytes, each filled with a pattern of its
 * index, so a lost or moved byte is found. */
static unsigned char *obj[NOBJ];
static size_t objlen[NOBJ];

static void fill(size_t i) {
  objlen[i] = 16 + next() % 241;
  obj[i] = malloc(objlen[i]);
  if (!obj[i]) die("malloc");
  for (size_t k = 0; k < objlen[i]; k++) obj[i][k] = (unsigned char)(i * 31 + k);
}

static void check_heap(const char *when) {
  for (size_t i = 0; i < NOBJ; i++) {
    if (!obj[i]) continue;
    for (size_t k = 0; k < objlen[i]; k++)
      if (obj[i][k] != (unsigned char)(i * 31 + k)) {
        fprintf(stderr, "FAIL: object %zu byte %zu changed %s\n", i, k, when);
        exit(1);
      }
  }
}

static void fragment(void) {
  for (size_t i = 0; i < NOBJ; i++) fill(i);
  for (size_t i = 0; i < NOBJ; i++)
    if (next() % 10) {
      free(obj[i]);
      obj[i] = NULL;
    }
}

/* Work that makes an allocator mesh, punch and map: rounds of refilling
 * and freeing, a compaction after each. */
static void churn(int rounds) {
  for (int r = 0; r < rounds; r++) {
    for (size_t i = 0; i < NOBJ; i++)
      if (!obj[i] && next() % 4 == 0) fill(i);
    for (size_t i = 0; i < NOBJ; i++)
      if (obj[i] && next() % 3 == 0) {
        free(obj[i]);
        obj[i] = NULL;
      }
    compact();
  }
}

/* The program's own files: each written with a pattern of its descriptor
 * number, read back at the end. */
#define NFILES 8
static int files[NFILES];
static char paths[NFILES][64];

static void file_pattern(unsigned char *buf, int n) {
  for (size_t k = 0; k < FILE_BYTES; k++) buf[k] = (unsigned char)(n * 7 + k * 13 + (k >> 12));
}

static void open_files(void) {
  unsigned char *buf = malloc(FILE_BYTES);
  if (!buf) die("malloc");
  for (int n = 0; n < NFILES; n++) {
    snprintf(paths[n], sizeof paths[n], "hostile-%d-%d.dat", (int)getpid(), n);
    files[n] = open(paths[n], O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (files[n] < 0) die("open");
    file_pattern(buf, n);
    if (pwrite(files[n], buf, FILE_BYTES, 0) != FILE_BYTES) die("pwrite");
  }
  free(buf);
}

static void check_files(void) {
  unsigned char *want = malloc(FILE_BYTES), *got = malloc(FILE_BYTES);
  if (!want || !got) die("malloc");
  for (int n = 0; n < NFILES; n++) {
    off_t size = lseek(files[n], 0, SEEK_END);
    if (size != FILE_BYTES) {
      fprintf(stderr, "FAIL: file %d (fd %d) is %lld bytes, wrote %d\n", n, files[n], (long long)size, FILE_BYTES);
      exit(1);
    }
    if (pread(files[n], got, FILE_BYTES, 0) != FILE_BYTES) die("pread");
    file_pattern(want, n);
    if (memcmp(want, got, FILE_BYTES) != 0) {
      size_t k = 0;
      while (want[k] == got[k]) k++;
      fprintf(stderr, "FAIL: file %d (fd %d) changed at byte %zu\n", n, files[n], k);
      exit(1);
    }
    close(files[n]);
    unlink(paths[n]);
  }
  free(want);
  free(got);
}

static int open_max(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1 << 20)) return 1 << 20;
  return (int)rl.rlim_cur;
}

static int case_closerange(void) {
  fragment();
  compact();
  int top = open_max();
  for (int fd = 3; fd < top; fd++) close(fd); /* closerange(3, OPEN_MAX) */
  open_files();
  churn(6);
  check_heap("after the churn");
  check_files();
  return 0;
}

static int case_closerange_fork(void) {
  fragment();
  compact();
  int top = open_max();
  for (int fd = 3; fd < top; fd++) close(fd);
  open_files();
  churn(2);
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    for (size_t i = 0; i < NOBJ; i++)
      if (obj[i]) {
        memset(obj[i], 0xA5, objlen[i]);
        if (i % 2) free(obj[i]), obj[i] = NULL;
      }
    compact();
    _exit(0);
  }
  int status;
  if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "FAIL: the fork child failed (status %#x)\n", status);
    exit(1);
  }
  check_heap("after the fork child wrote its copy");
  churn(2);
  check_heap("after the churn");
  check_files();
  return 0;
}

#define NCOUNTERS 20000
static uint64_t *volatile counters[NCOUNTERS];
static volatile sig_atomic_t alarms;

static void on_alarm(int sig) {
  (void)sig;
  int saved = errno;
  for (int k = 0; k < NCOUNTERS; k++) counters[k][1]++; /* writes into heap objects, some being meshed */
  alarms++;
  errno = saved;
}

/* The counters live among garbage, so their spans are meshed: each among
 * nine blocks of its size that die, in a heap of which 90 % is freed. */
static void sparse_counters(void) {
  for (size_t i = 0; i < NOBJ; i++) fill(i);
  static void *junk[NCOUNTERS * 9];
  for (int k = 0; k < NCOUNTERS; k++) {
    if (!(counters[k] = calloc(1, 48))) die("calloc");
    for (int j = 0; j < 9; j++)
      if (!(junk[k * 9 + j] = malloc(48))) die("malloc");
  }
  for (int j = 0; j < NCOUNTERS * 9; j++) free(junk[j]);
  for (size_t i = 0; i < NOBJ; i++)
    if (next() % 10) free(obj[i]), obj[i] = NULL;
}

/* on_alarm every usec microseconds; full_mask: every signal blocked while it runs */
static void start_alarms(long usec, bool full_mask) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sa.sa_flags = SA_RESTART;
  if (full_mask) sigfillset(&sa.sa_mask);
  else sigemptyset(&sa.sa_mask);
  if (sigaction(SIGALRM, &sa, NULL) != 0) die("sigaction");
  struct itimerval it = {{0, usec}, {0, usec}};
  if (setitimer(ITIMER_REAL, &it, NULL) != 0) die("setitimer");
}

static int case_alarm_writer(void) {
  sparse_counters();
  start_alarms(200, false);
  struct timespec t0, t;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  do {
    churn(1);
    clock_gettime(CLOCK_MONOTONIC, &t);
  } while ((t.tv_sec - t0.tv_sec) * 1000000000L + (t.tv_nsec - t0.tv_nsec) < 3000000000L);
  struct itimerval off = {{0, 0}, {0, 0}};
  setitimer(ITIMER_REAL, &off, NULL);
  check_heap("after the alarms");
  for (int k = 0; k < NCOUNTERS; k++)
    if (counters[k][1] != (uint64_t)alarms) {
      fprintf(stderr, "FAIL: %d alarms, counter %d says %llu\n", (int)alarms, k, (unsigned long long)counters[k][1]);
      return 1;
    }
  if (alarms < 100) {
    fprintf(stderr, "FAIL: only %d alarms\n", (int)alarms);
    return 1;
  }
  fprintf(stderr, "%d alarms\n", (int)alarms);
  return 0;
}

static int count_maps(void) {
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) die("open maps");
  int n = 0, c;
  while ((c = fgetc(f)) != EOF) n += c == '\n';
  fclose(f);
  return n;
}

static int case_many_mappings(void) {
  free(malloc(16)); /* the allocator starts (and counts the mappings) with few */
  FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
  int limit = 65530;
  if (f) {
    if (fscanf(f, "%d", &limit) != 1) limit = 65530;
    fclose(f);
  }
  int own = limit * 45 / 100;
  for (int i = 0; i < own; i++)
    if (mmap(NULL, 4096, i % 2 ? PROT_READ : PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED)
      die("mmap of the program's own pages");
  enum { M = 2500000 };
  static void *blk[M];
  for (int i = 0; i < M; i++)
    if (!(blk[i] = malloc(64))) die("malloc");
  for (int i = 0; i < M; i++)
    if (next() % 10) free(blk[i]), blk[i] = NULL;
  int peak = 0;
  for (int t = 0; t < 40; t++) { /* 4 s of light activity, no call */
    struct timespec ts = {0, 100000000};
    nanosleep(&ts, NULL);
    free(malloc(100));
    int m = count_maps();
    if (m > peak) peak = m;
  }
  int extra = 0;
  void *more[2000];
  for (; extra < 2000; extra++)
    if ((more[extra] = mmap(NULL, 4096, extra % 2 ? PROT_READ : PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) ==
        MAP_FAILED)
      break;
  fprintf(stderr, "limit %d, own %d, peak mappings %d, %d more pages mapped\n", limit, own, peak, extra);
  if (extra < 2000) {
    fprintf(stderr, "FAIL: the program could map only %d more pages\n", extra);
    return 1;
  }
  for (int i = 0; i < M; i++) free(blk[i]);
  return 0;
}

#define NDGRAM 200000
static int dgram_fds[2], efd;
static int raw_syscalls; /* dgram-syscall: the receiver calls syscall(2) with numbers */
static volatile int dgram_failed;

static void *dgram_receiver(void *arg) {
  (void)arg;
  enum { NBUF = 4096 };
  static uint32_t *bufs[NBUF];
  static void *junk[NBUF * 7];
  for (int i = 0; i < NBUF; i++) { /* each buffer among seven blocks of its size that die */
    if (!(bufs[i] = malloc(48))) die("malloc");
    for (int j = 0; j < 7; j++)
      if (!(junk[i * 7 + j] = malloc(48))) die("malloc");
  }
  for (int j = 0; j < NBUF * 7; j++) free(junk[j]);
  uint64_t counted = 0;
  for (uint32_t want = 0; want < NDGRAM; want++) {
    if (want % NBUF == 0 && want) { /* new buffers, in new sparse spans, keep meshing busy */
      for (int i = 0; i < NBUF; i++) {
        free(bufs[i]);
        if (!(bufs[i] = malloc(48))) die("malloc");
        for (int j = 0; j < 7; j++)
          if (!(junk[i * 7 + j] = malloc(48))) die("malloc");
      }
      for (int j = 0; j < NBUF * 7; j++) free(junk[j]);
    }
    uint32_t *b = bufs[want % NBUF];
    ssize_t r = raw_syscalls ? syscall(SYS_recvfrom, dgram_fds[1], b, 48, 0, NULL, NULL) : recv(dgram_fds[1], b, 48, 0);
    if (r != 48 || b[0] != want) {
      fprintf(stderr, "FAIL: datagram %u: recv returned %zd (errno %d), got number %u\n", want, r, errno,
              r >= 4 ? b[0] : 0);
      dgram_failed = 1;
      return NULL;
    }
    if (want % 64 == 63) {
      uint64_t *c = (uint64_t *)bufs[(want + 1) % NBUF];
      ssize_t r8 = raw_syscalls ? syscall(SYS_read, efd, c, 8) : read(efd, c, 8);
      if (r8 == 8) counted += *c;
      else if (r8 >= 0 || errno != EAGAIN) { /* EAGAIN: the sender is behind, nothing posted yet */
        fprintf(stderr, "FAIL: eventfd read failed (errno %d)\n", errno);
        dgram_failed = 1;
        return NULL;
      }
    }
  }
  uint64_t *c = (uint64_t *)bufs[0], rest = 0;
  while (read(efd, c, 8) == 8) rest += *c; /* non-blocking: what is left */
  if (counted + rest != NDGRAM) {
    fprintf(stderr, "FAIL: eventfd counted %llu, posted %d\n", (unsigned long long)(counted + rest), NDGRAM);
    dgram_failed = 1;
  }
  for (int i = 0; i < NBUF; i++) free(bufs[i]);
  return NULL;
}

static int case_dgram(void) {
  if (socketpair(AF_UNIX, SOCK_DGRAM, 0, dgram_fds) != 0) die("socketpair");
  int big = 1 << 20;
  setsockopt(dgram_fds[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  setsockopt(dgram_fds[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  if ((efd = eventfd(0, EFD_NONBLOCK)) < 0) die("eventfd");
  for (size_t i = 0; i < NOBJ; i++) fill(i);
  pthread_t t;
  if (pthread_create(&t, NULL, dgram_receiver, NULL) != 0) die("pthread_create");
  uint32_t msg[12] = {0};
  for (uint32_t k = 0; k < NDGRAM; k++) {
    msg[0] = k;
    uint64_t one = 1; /* posted before its datagram: the receiver never waits for it */
    if (write(efd, &one, 8) != 8) die("eventfd write");
    while (send(dgram_fds[0], msg, sizeof msg, 0) != (ssize_t)sizeof msg)
      if (errno != EAGAIN && errno != ENOBUFS && errno != EINTR) die("send");
    if (k % 2000 == 0) compact();
    if (k % 20000 == 0) churn(1); /* frees, allocations and a compaction */
    if (dgram_failed) break;
  }
  pthread_join(t, NULL);
  check_heap("after the datagrams");
  return dgram_failed;
}

/* ---- stdio-reader ---------------------------------------------------------- */
/* a counter of meshalloc's, through dlsym (0 under glibc) */
static uint64_t stat_of(const char *name) {
  int (*count)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "mesh_stats_count");
  const char *(*name_of)(int) = (const char *(*)(int))dlsym(RTLD_DEFAULT, "mesh_stats_name");
  int (*read_all)(uint64_t *, int) = (int (*)(uint64_t *, int))dlsym(RTLD_DEFAULT, "mesh_stats_read");
  if (!count || !name_of || !read_all) return 0;
  uint64_t v[512];
  int n = read_all(v, 512 < count() ? 512 : count());
  for (int i = 0; i < n && i < 512; i++)
    if (!strcmp(name_of(i), name)) return v[i];
  return 0;
}

#define NLINES 300000
#define NGARBAGE 6000
static void *garbage[NGARBAGE];
static atomic_int reader_done;
static int line_fds[2], block_fds[2];

static void *line_writer(void *arg) {
  (void)arg;
  FILE *out = fdopen(line_fds[1], "w");
  FILE *blocks = fdopen(block_fds[1], "w");
  if (!out || !blocks) die("fdopen for writing");
  static uint32_t block[2048];
  for (int k = 0; k < NLINES; k++) {
    fprintf(out, "%08d\n", k);
    if (k % 1000 == 0) { /* a block for fread every 1000 lines */
      for (int j = 0; j < 2048; j++) block[j] = (uint32_t)(k * 2048 + j);
      if (fwrite(block, sizeof block, 1, blocks) != 1) die("fwrite");
      fflush(blocks);
    }
  }
  fprintf(out, "END\n");
  fclose(out);
  fclose(blocks);
  return NULL;
}

static void *garbage_churner(void *arg) {
  (void)arg;
  uint64_t r = 0x2545F4914F6CDD1Dull;
  while (!atomic_load(&reader_done)) {
    for (int i = 0; i < NGARBAGE; i++) {
      r ^= r << 13, r ^= r >> 7, r ^= r << 17;
      if (r % 8 == 0) {
        free(garbage[i]);
        garbage[i] = (r >> 8) % 10 == 0 ? malloc(4096) : NULL;
      }
    }
    compact();
  }
  return NULL;
}

static int case_stdio_reader(void) {
  if (pipe(line_fds) != 0 || pipe(block_fds) != 0) die("pipe");
  for (int i = 0; i < NGARBAGE / 2; i++) garbage[i] = malloc(4096);
  FILE *in = fdopen(line_fds[0], "r"), *blocks = fdopen(block_fds[0], "r");
  if (!in || !blocks) die("fdopen for reading");
  pthread_t w, c;
  if (pthread_create(&w, NULL, line_writer, NULL) != 0) die("pthread_create");
  char line[64];
  /* the first reads make stdio allocate both buffers, among the garbage */
  if (!fgets(line, sizeof line, in) || atoi(line) != 0) die("first line");
  static uint32_t first[2048];
  if (fread(first, sizeof first, 1, blocks) != 1 || first[5] != 5) die("first block");
  /* where meshalloc is the malloc: the buffers stdio allocated itself (both
   * read FILEs' and the writer's) are pinned, never meshed */
  uint64_t pinned = stat_of("spans_pinned");
  if (compact_fn && pinned < 2) {
    fprintf(stderr, "FAIL: stdio's own buffers are not pinned (spans_pinned %llu)\n", (unsigned long long)pinned);
    return 1;
  }
  for (int i = NGARBAGE / 2; i < NGARBAGE; i++) garbage[i] = malloc(4096);
  for (int i = 0; i < NGARBAGE; i++)
    if (i % 10) {
      free(garbage[i]);
      garbage[i] = NULL;
    }
  if (pthread_create(&c, NULL, garbage_churner, NULL) != 0) die("pthread_create");
  uint32_t *block = malloc(2048 * sizeof *block); /* fread straight into a heap buffer */
  int next_line = 1, next_block = 1, failed = 0;
  while (fgets(line, sizeof line, in)) {
    if (!strcmp(line, "END\n")) break;
    if (atoi(line) != next_line) {
      fprintf(stderr, "FAIL: line %d arrived as %s", next_line, line);
      failed = 1;
      break;
    }
    next_line++;
    if (next_line % 1000 == 1 && next_line > 1) {
      if (fread(block, 2048 * sizeof *block, 1, blocks) != 1) {
        fprintf(stderr, "FAIL: fread of block %d failed (error %d, errno %d)\n", next_block, ferror(blocks),
                errno);
        failed = 1;
        break;
      }
      for (int j = 0; j < 2048; j++)
        if (block[j] != (uint32_t)(next_block * 1000 * 2048 + j)) {
          fprintf(stderr, "FAIL: block %d word %d is %u\n", next_block, j, block[j]);
          failed = 1;
          break;
        }
      next_block++;
    }
  }
  if (!failed && next_line != NLINES) {
    fprintf(stderr, "FAIL: %d of %d lines read (fgets: error %d, errno %d)\n", next_line, NLINES, ferror(in),
            errno);
    failed = 1;
  }
  atomic_store(&reader_done, 1);
  pthread_join(c, NULL);
  if (!failed) pthread_join(w, NULL);
  free(block);
  return failed;
}

static int prot_of(const void *p) { /* 'r', 'w', 'x' bits of the mapping holding p, -1 if none */
  FILE *f = fopen("/proc/self/maps", "r");
  if (!f) die("open maps");
  char line[512];
  int prot = -1;
  while (fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    char perms[8];
    if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) == 3 && (uintptr_t)p >= lo && (uintptr_t)p < hi) {
      prot = (perms[0] == 'r') | (perms[1] == 'w') << 1 | (perms[2] == 'x') << 2;
      break;
    }
  }
  fclose(f);
  return prot;
}

static int case_mprotect(void) {
  enum { NP = 3000 };
  static unsigned char *pg[NP];
  static void *junk[NP * 5];
  long ps = sysconf(_SC_PAGESIZE);
  for (int i = 0; i < NP; i++) {
    if (posix_memalign((void **)&pg[i], (size_t)ps, (size_t)ps)) die("posix_memalign");
    memset(pg[i], i & 255, (size_t)ps);
    for (int j = 0; j < 5; j++)
      if (posix_memalign(&junk[i * 5 + j], (size_t)ps, (size_t)ps)) die("posix_memalign");
  }
  for (int j = 0; j < NP * 5; j++) free(junk[j]);
  for (size_t i = 0; i < NOBJ; i++) fill(i);
  for (int i = 0; i < NP; i++)
    if (i % 3 && mprotect(pg[i], (size_t)ps, i % 3 == 1 ? PROT_READ : PROT_NONE) != 0) die("mprotect");
  churn(4);
  int bad = 0;
  for (int i = 0; i < NP && bad < 5; i++) {
    int want = i % 3 == 0 ? 3 : i % 3 == 1 ? 1 : 0, got = prot_of(pg[i]);
    if (got != want) {
      fprintf(stderr, "FAIL: block %d at %p: protection %d, the program set %d\n", i, (void *)pg[i], got, want);
      bad++;
    } else if (want && pg[i][ps - 1] != (unsigned char)(i & 255)) {
      fprintf(stderr, "FAIL: block %d changed\n", i);
      bad++;
    }
  }
  for (int i = 0; i < NP; i++) {
    if (i % 3) mprotect(pg[i], (size_t)ps, PROT_READ | PROT_WRITE);
    free(pg[i]);
  }
  check_heap("after the protected blocks");
  return bad != 0;
}

static volatile int writers_stop;
static volatile uint64_t writer_rounds;

static void *blocked_writer(void *arg) {
  (void)arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, NULL);
  while (!writers_stop) {
    for (int k = 0; k < NCOUNTERS; k++) counters[k][2]++;
    writer_rounds++;
  }
  return NULL;
}

static int case_blocked_writers(void) {
  sparse_counters();
  pthread_t t;
  if (pthread_create(&t, NULL, blocked_writer, NULL) != 0) die("pthread_create");
  start_alarms(500, true); /* the handler runs with everything blocked */
  for (int r = 0; r < 12; r++) churn(1);
  struct itimerval off = {{0, 0}, {0, 0}};
  setitimer(ITIMER_REAL, &off, NULL);
  writers_stop = 1;
  pthread_join(t, NULL);
  check_heap("after the writers");
  for (int k = 0; k < NCOUNTERS; k++)
    if (counters[k][1] != (uint64_t)alarms || counters[k][2] < writer_rounds || counters[k][2] > writer_rounds + 1) {
      fprintf(stderr, "FAIL: counter %d: %llu alarms of %d, %llu writes of %llu rounds\n", k,
              (unsigned long long)counters[k][1], (int)alarms, (unsigned long long)counters[k][2],
              (unsigned long long)writer_rounds);
      return 1;
    }
  fprintf(stderr, "%d alarms, %llu writer rounds\n", (int)alarms, (unsigned long long)writer_rounds);
  return 0;
}

static int case_addr_limit(size_t block) {
  void *big = malloc(8 << 20);
  if (!big) {
    fprintf(stderr, "FAIL: malloc(8 MiB) failed under the limit (errno %d)\n", errno);
    return 1;
  }
  memset(big, 1, 8 << 20);
  void *head = NULL, *p; /* the blocks, linked through their first word */
  size_t n = 0;
  while ((p = malloc(block))) {
    *(void **)p = head;
    head = p;
    n++;
  }
  if (errno != ENOMEM) fprintf(stderr, "FAIL: errno %d, not ENOMEM, when malloc failed\n", errno);
  void *r = realloc(big, 24 << 20); /* grows, or fails cleanly at the limit */
  if (r) big = r;
  while (head) {
    p = head;
    head = *(void **)p;
    free(p);
  }
  free(big);
  void *again = malloc(4 << 20), *small = malloc(block); /* what was freed is there again */
  if (!again || !small) {
    fprintf(stderr, "FAIL: malloc failed after everything was freed\n");
    return 1;
  }
  free(again);
  free(small);
  fprintf(stderr, "addr-limit: %zu MiB\n", ((n * block) >> 20) + 8);
  return errno == ENOMEM || errno == 0 ? 0 : 1;
}

static int case_dup2_over(void) {
  fragment();
  compact();
  open_files();
  /* every open descriptor that is not stdio or the program's own */
  DIR *d = opendir("/proc/self/fd");
  if (!d) die("opendir /proc/self/fd");
  int others[64], nothers = 0, dfd = dirfd(d);
  struct dirent *e;
  while ((e = readdir(d)) && nothers < 64) {
    int fd = atoi(e->d_name);
    if (e->d_name[0] == '.' || fd < 3 || fd == dfd) continue;
    int mine = 0;
    for (int n = 0; n < NFILES; n++) mine |= files[n] == fd;
    if (!mine) others[nothers++] = fd;
  }
  closedir(d);
  for (int i = 0; i < nothers; i++)
    if (dup2(files[0], others[i]) < 0) die("dup2");
  churn(6);
  check_heap("after the churn");
  check_files();
  return 0;
}

static int case_stdio_closed(void) {
  if (fcntl(0, F_GETFD) >= 0 || fcntl(1, F_GETFD) >= 0) {
    fprintf(stderr, "FAIL: descriptor 0 or 1 is open at start (it must be started with both closed)\n");
    return 1;
  }
  fragment();
  compact();
  int fd = open("/dev/null", O_RDONLY);
  if (fd != 0) {
    fprintf(stderr, "FAIL: the first open() got descriptor %d, not 0\n", fd);
    return 1;
  }
  char name[64];
  snprintf(name, sizeof name, "hostile-out-%d.txt", (int)getpid());
  int out = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (out != 1) {
    fprintf(stderr, "FAIL: the second open() got descriptor %d, not 1\n", out);
    return 1;
  }
  for (int i = 0; i < 20000; i++) printf("line %d of what the program prints\n", i);
  fflush(stdout);
  churn(3);
  check_heap("after printing");
  off_t size = lseek(1, 0, SEEK_END);
  close(1);
  unlink(name);
  if (size < 20000 * 30) {
    fprintf(stderr, "FAIL: stdout file has %lld bytes\n", (long long)size);
    return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: hostile addr-limit|closerange|closerange-fork|alarm-writer|blocked-writers|many-mappings|dgram|mprotect|dup2-over|stdio-closed|stdio-reader|dgram-syscall [seed]\n");
    return 2;
  }
  if (argc > 2) rng ^= strtoull(argv[2], NULL, 0) * 0x2545f4914f6cdd1dull;
  compact_fn = (size_t(*)(void))dlsym(RTLD_DEFAULT, "mesh_compact");
  int rc;
  if (!strcmp(argv[1], "closerange")) rc = case_closerange();
  else if (!strcmp(argv[1], "dup2-over")) rc = case_dup2_over();
  else if (!strcmp(argv[1], "closerange-fork")) rc = case_closerange_fork();
  else if (!strcmp(argv[1], "alarm-writer")) rc = case_alarm_writer();
  else if (!strcmp(argv[1], "many-mappings")) rc = case_many_mappings();
  else if (!strcmp(argv[1], "dgram")) rc = case_dgram();
  else if (!strcmp(argv[1], "dgram-syscall")) raw_syscalls = 1, rc = case_dgram();
  else if (!strcmp(argv[1], "addr-limit")) rc = case_addr_limit(argc > 2 ? (size_t)strtoull(argv[2], NULL, 0) : (size_t)1 << 20);
  else if (!strcmp(argv[1], "blocked-writers")) rc = case_blocked_writers();
  else if (!strcmp(argv[1], "mprotect")) rc = case_mprotect();
  else if (!strcmp(argv[1], "stdio-closed")) rc = case_stdio_closed();
  else if (!strcmp(argv[1], "stdio-reader")) rc = case_stdio_reader();
  else {
    fprintf(stderr, "unknown case %s\n", argv[1]);
    return 2;
  }
  if (rc == 0) fprintf(stderr, "%s: ok\n", argv[1]);
  return rc;
}
