/* stats.c - the stats table: one list of named counters (MESH_COUNTERS in
 * internal.h) plus a few fields derived when read.
 *
 * Counters are relaxed atomics bumped on slow paths only; the small-object
 * fast paths count into their thread heap's shuffle vector and are summed
 * here under the global lock. A read is a consistent-enough snapshot, not a
 * linearizable one: figures from different threads may be a few operations
 * apart. The summary printer formats into a stack buffer (no malloc).
 */
#include "internal.h"

/* The counters fill one page of their own. At init (option stats_page) it
 * becomes the first page of a memfd ("meshalloc-stats") mapped over the
 * array in place, so that nothing that bumps a counter changes and another
 * process of the same user can open the memfd through /proc/PID/fd and
 * read the counters while this one runs (python -m meshalloc stats --pid).
 * The file's next page describes them: STATS_MAGIC, a version, the number
 * of counters, then their names, NUL-separated, in order. */
_Alignas(4096) _Atomic uint64_t _mesh_counters[MESH_STATS_SLOTS];
_Alignas(4096) _Atomic uint64_t _mesh_pass_log[MESH_PASS_LOG * MESH_PASS_LOG_WORDS];
_Static_assert(sizeof _mesh_pass_log % 4096 == 0, "the pass log fills whole pages");



/* Derived fields: X(name, doc) computed in stats_fill below. */
#define MESH_DERIVED(X) \
  X(small_bytes_in_use, "bytes in live small objects (class size, not request size)") \
  X(small_objects_in_use, "live small objects") \
  X(bytes_in_use, "small_bytes_in_use + large_bytes_in_use + direct_bytes_in_use") \
  X(arena_reserved_bytes, "virtual bytes of the arena mapped (all of it, arena_gb, without an address-space limit; the part grown so far under one)") \
  X(arena_base, "first address of the arena: its mappings in /proc/PID/maps are the lines within [arena_base, arena_base + arena_reserved_bytes)") \
  X(arena_committed_bytes, "arena bytes backed by memory or kept dirty: spans + dirty free pages") \
  X(metadata_bytes, "bytes of metadata in use: span records, page table, thread heaps") \
  X(meshing_available, "1 when the arena is memfd-backed and spans can be meshed") \
  X(meshed_bytes_per_mapping, "meshed bytes per kernel mapping meshing added: meshed_pages x 4 KiB / (arena_mappings - 1)") \
  X(arena_memfd_bytes, "bytes the arena's current memfd really holds (its allocated blocks, fstat): pages a fork child wrote with pwrite, or never mapped, count here but not in PSS or RSS; 0 without a memfd; a frozen generation, whose descriptor is closed, is not counted (see frozen_pages)")

enum {
#define MESH_DER_ENUM(n, doc) MESH_DER_##n,
  MESH_DERIVED(MESH_DER_ENUM)
#undef MESH_DER_ENUM
  MESH_DER_COUNT
};

static const char *const names[] = {
#define MESH_NAME(n, doc) #n,
    MESH_COUNTERS(MESH_NAME) MESH_DERIVED(MESH_NAME)
#undef MESH_NAME
};
static const char *const docs[] = {
#define MESH_DOC(n, doc) doc,
    MESH_COUNTERS(MESH_DOC) MESH_DERIVED(MESH_DOC)
#undef MESH_DOC
};

#define STATS_TOTAL (MESH_CTR_COUNT + MESH_DER_COUNT)

int mesh_stats_count(void) { return STATS_TOTAL; }
const char *mesh_stats_name(int i) { return i >= 0 && i < STATS_TOTAL ? names[i] : NULL; }
const char *mesh_stats_doc(int i) { return i >= 0 && i < STATS_TOTAL ? docs[i] : NULL; }

static const char *const class_names[] = {
#define MESH_NAME(n, doc) #n,
    MESH_CLASS_STATS(MESH_NAME)
#undef MESH_NAME
};
#define CLASS_FIELDS ((int)(sizeof class_names / sizeof class_names[0]))
_Static_assert(sizeof(mesh_class_stats_t) == CLASS_FIELDS * sizeof(uint64_t), "mesh_class_stats_t is uint64_t only");

const char *mesh_class_stats_name(int i) { return i >= 0 && i < CLASS_FIELDS ? class_names[i] : NULL; }

int mesh_class_stats(mesh_class_stats_t *out, int n) {
  mesh_class_stats_t cs[MESH_NUM_CLASSES];
  if (mesh_load_acquire(&_mesh_init_state) == 2) {
    _mesh_lock();
    _mesh_heap_class_stats(cs);
    _mesh_unlock();
  } else {
    for (unsigned c = 0; c < MESH_NUM_CLASSES; c++) cs[c] = (mesh_class_stats_t){0};
  }
  for (int i = 0; i < n && i < MESH_NUM_CLASSES; i++) out[i] = cs[i];
  return MESH_NUM_CLASSES;
}

/* The counters, and the derived fields if asked: those walk every span
 * and vector under the lock (bytes in use), so a reader of counters only
 * does not pay for them. */
static void stats_fill(uint64_t v[STATS_TOTAL], bool derived) {
  for (int i = 0; i < MESH_CTR_COUNT; i++) v[i] = mesh_load_relaxed(&_mesh_counters[i]);
  uint64_t *d = v + MESH_CTR_COUNT;
  for (int i = 0; i < MESH_DER_COUNT; i++) d[i] = 0;
  if (!derived) return;
  uint64_t sb = 0, so = 0;
  if (mesh_load_acquire(&_mesh_init_state) == 2) {
    mesh_class_stats_t cs[MESH_NUM_CLASSES];
    mesh_class_stats(cs, MESH_NUM_CLASSES);
    for (unsigned c = 0; c < MESH_NUM_CLASSES; c++) {
      so += cs[c].objects_in_use;
      sb += cs[c].objects_in_use * cs[c].object_size;
    }
    d[MESH_DER_metadata_bytes] = (uint64_t)v[MESH_CTR_arena_top_pages] * sizeof(pte_t) +
                                 (uint64_t)(v[MESH_CTR_spans_hwm] + 64) * sizeof(span_t) +
                                 v[MESH_CTR_thread_heap_bytes];
  }
  d[MESH_DER_small_bytes_in_use] = sb;
  d[MESH_DER_small_objects_in_use] = so;
  d[MESH_DER_bytes_in_use] = sb + v[MESH_CTR_large_bytes_in_use] + v[MESH_CTR_direct_bytes_in_use];
  d[MESH_DER_arena_reserved_bytes] = _mesh_arena.size;
  d[MESH_DER_arena_base] = _mesh_arena.base;
  d[MESH_DER_arena_committed_bytes] =
      (v[MESH_CTR_span_pages] + v[MESH_CTR_dirty_pages]) * MESH_PAGE_SIZE;
  d[MESH_DER_meshing_available] = _mesh_arena.meshable;
  uint64_t extra = v[MESH_CTR_arena_mappings] > 1 ? v[MESH_CTR_arena_mappings] - 1 : 0;
  d[MESH_DER_meshed_bytes_per_mapping] = extra ? v[MESH_CTR_meshed_pages] * MESH_PAGE_SIZE / extra : 0;
  int afd = _mesh_arena.memfd_mapped ? _mesh_arena_fd() : -1;
  d[MESH_DER_arena_memfd_bytes] = afd >= 0 ? _mesh_os_fd_blocks(afd) * 512u : 0;
}

int mesh_stats_read(uint64_t *out, int n) {
  uint64_t v[STATS_TOTAL];
  stats_fill(v, n > MESH_CTR_COUNT);
  for (int i = 0; i < n && i < STATS_TOTAL; i++) out[i] = v[i];
  return STATS_TOTAL;
}

/* MB with one decimal, from a page count, without floating point. */
static void fmt_mb(char *buf, size_t n, uint64_t pages) {
  uint64_t tenths = (pages * MESH_PAGE_SIZE * 10 + (1 << 19)) >> 20;
  _mesh_snprintf(buf, n, "%llu.%llu", (unsigned long long)(tenths / 10), (unsigned long long)(tenths % 10));
}

void mesh_stats_print(int fd) {
  uint64_t v[STATS_TOTAL];
  stats_fill(v, true);
  const uint64_t *d = v + MESH_CTR_COUNT;
  char total[32], hwm[32], inuse[32], committed[32], memfd[32];
  /* The original printed meshes x one page as "Meshed MB (total)"; here it
   * is the real number of pages meshing freed. */
  fmt_mb(total, sizeof total, v[MESH_CTR_meshed_pages_total]);
  fmt_mb(hwm, sizeof hwm, v[MESH_CTR_meshed_pages_hwm]);
  fmt_mb(inuse, sizeof inuse, (d[MESH_DER_bytes_in_use] + MESH_PAGE_SIZE - 1) / MESH_PAGE_SIZE);
  fmt_mb(committed, sizeof committed, d[MESH_DER_arena_committed_bytes] / MESH_PAGE_SIZE);
  fmt_mb(memfd, sizeof memfd, d[MESH_DER_arena_memfd_bytes] / MESH_PAGE_SIZE);
  _mesh_dprintf(fd,
                "MESH COUNT:         %llu\n"
                "Meshed MB (total):  %s\n"
                "Meshed pages HWM:   %llu\n"
                "Meshed MB HWM:      %s\n"
                "MH Alloc Count:     %llu\n"
                "MH Free  Count:     %llu\n"
                "MH High Water Mark: %llu\n"
                "In use MB:          %s\n"
                "Committed MB:       %s\n"
                "Memfd MB:           %s\n"
                "Mappings:           %llu (meshed KiB per added mapping: %llu)\n"
                "Mesh passes:        %llu (max pause %llu us, max CPU time %llu us)\n"
                "Meshing:            %s\n",
                (unsigned long long)v[MESH_CTR_mesh_count], total,
                (unsigned long long)v[MESH_CTR_meshed_pages_hwm], hwm,
                (unsigned long long)v[MESH_CTR_spans_alloc_count],
                (unsigned long long)v[MESH_CTR_spans_free_count],
                (unsigned long long)v[MESH_CTR_spans_hwm], inuse, committed, memfd,
                (unsigned long long)v[MESH_CTR_arena_mappings],
                (unsigned long long)(d[MESH_DER_meshed_bytes_per_mapping] >> 10),
                (unsigned long long)v[MESH_CTR_mesh_passes], (unsigned long long)(v[MESH_CTR_mesh_pause_ns_max] / 1000),
                (unsigned long long)(v[MESH_CTR_mesh_pause_cpu_ns_max] / 1000),
                d[MESH_DER_meshing_available] ? "available (memfd arena)"
                : _mesh_arena.memfd_mapped    ? "off (memfd arena; meshing stopped, see the warning)"
                                              : "off (anonymous arena)");
  _mesh_warnings_print(fd);
}

void mesh_stats_print_all(int fd) {
  uint64_t v[STATS_TOTAL];
  stats_fill(v, true);
  for (int i = 0; i < STATS_TOTAL; i++)
    _mesh_dprintf(fd, "%-28s %llu\n", names[i], (unsigned long long)v[i]);
}

void _mesh_stats_log_pass(uint64_t number, uint64_t end_ns, uint64_t wall_ns, uint64_t cpu_ns, uint64_t meshes,
                          uint64_t pages, unsigned kind) {
  _Atomic uint64_t *e = &_mesh_pass_log[(number % MESH_PASS_LOG) * MESH_PASS_LOG_WORDS];
  mesh_store_relaxed(&e[0], 0);
  mesh_store_relaxed(&e[MESH_PASS_LOG_WORDS - 1], 0);
  atomic_thread_fence(memory_order_release);
  mesh_store_relaxed(&e[1], end_ns);
  mesh_store_relaxed(&e[2], wall_ns);
  mesh_store_relaxed(&e[3], cpu_ns);
  mesh_store_relaxed(&e[4], meshes);
  mesh_store_relaxed(&e[5], pages);
  mesh_store_relaxed(&e[6], kind);
  atomic_thread_fence(memory_order_release);
  mesh_store_relaxed(&e[MESH_PASS_LOG_WORDS - 1], number);
  mesh_store_relaxed(&e[0], number);
}

/* ---- the shared page ---------------------------------------------------- */

#define STATS_MAGIC "MESHSTAT"
/* 2: the pass log's file offset, length and entry words follow the
 * header; the names start at byte 32 */
#define STATS_VERSION 2u
#define STATS_LOG_OFFSET (2 * 4096)
static int stats_fd = -1;
static uint64_t stats_fd_id[2]; /* its (device, inode): the program may close the number and reuse it */

/* Maps a memfd holding the page's current values over the page; false if
 * not possible (the page then stays as it was). */
static bool share_page(const uint64_t *values) {
  int fd = _mesh_os_memfd_named("meshalloc-stats");
  if (fd < 0) return false;
  char desc[4096];
  _mesh_fill(desc, 0, sizeof desc);
  __builtin_memcpy(desc, STATS_MAGIC, 8);
  uint32_t head[6] = {STATS_VERSION, (uint32_t)MESH_CTR_COUNT, (uint32_t)sizeof(uint64_t),
                      STATS_LOG_OFFSET, MESH_PASS_LOG, MESH_PASS_LOG_WORDS};
  size_t n = 8 + sizeof head;
  __builtin_memcpy(desc + 8, head, sizeof head);
  for (int i = 0; i < MESH_CTR_COUNT && n < sizeof desc - 1; i++) {
    size_t len = _mesh_strlen(names[i]) + 1;
    if (n + len > sizeof desc) break;
    __builtin_memcpy(desc + n, names[i], len);
    n += len;
  }
  if (_mesh_os_ftruncate(fd, STATS_LOG_OFFSET + sizeof _mesh_pass_log) != 0 ||
      _mesh_os_pwrite_all(fd, values, sizeof _mesh_counters, 0) != 0 ||
      _mesh_os_pwrite_all(fd, desc, sizeof desc, 4096) != 0 ||
      _mesh_os_pwrite_all(fd, (const void *)_mesh_pass_log, sizeof _mesh_pass_log, STATS_LOG_OFFSET) != 0 ||
      _mesh_os_map_fixed((void *)_mesh_pass_log, sizeof _mesh_pass_log, fd, STATS_LOG_OFFSET) != 0) {
    _mesh_os_close(fd);
    return false;
  }
  /* the counters last: the page that must not fail half-way (a failed map
   * of the log above leaves the log private, as it was) */
  if (_mesh_os_map_fixed((void *)_mesh_counters, sizeof _mesh_counters, fd, 0) != 0) {
    _mesh_os_map_anon_fixed((void *)_mesh_pass_log, sizeof _mesh_pass_log); /* emptied: only a log */
    _mesh_os_close(fd);
    return false;
  }
  stats_fd = fd;
  if (_mesh_os_fd_identity(fd, stats_fd_id) != 0) stats_fd_id[0] = stats_fd_id[1] = 0;
  return true;
}


/* Bytes in use need the bitmaps of the partial and attached spans read
 * under the lock, which a reader in another process cannot do; so while
 * the page is shared the process publishes the figure itself, from the
 * slow paths that hold the lock anyway (the inline trigger, the meshing
 * thread's turns): at most every PUBLISH_NS, and at most PUBLISH_SHARE of
 * the time elapsed, so that a heap with many partial spans publishes less
 * often instead of paying more. The share is of time as the process sees
 * it, so a program slowed down as a whole (under valgrind) spends the same
 * fraction of its work on publishing. The figure is counted as
 * mesh_class_stats counts it, from the per-class counts instead of a walk
 * of every span (_mesh_heap_objects_in_use): FULL spans, most of a heap
 * that does not fragment, cost nothing. */
#define PUBLISH_NS 500000000ull
#define PUBLISH_SHARE 1000u /* at most 1/1000 of the time */
static uint64_t publish_last, publish_wait = PUBLISH_NS; /* (lock) */

uint64_t _mesh_stats_publish_wait_ns(uint64_t now) {
  if (stats_fd < 0) return 0;
  return now - publish_last < publish_wait ? publish_wait - (now - publish_last) : 1;
}

void _mesh_stats_publish(uint64_t now) {
  uint64_t last = publish_last, wait = publish_wait;
  if (stats_fd < 0 || (now && now - last < wait)) return;
  if (!now) now = _mesh_os_now_ns(); /* forced: the program goes quiet (thread exit, compaction) */
  uint64_t live[MESH_NUM_CLASSES], sb = 0;
  _mesh_heap_objects_in_use(live);
  for (unsigned c = 0; c < MESH_NUM_CLASSES; c++) sb += live[c] * _mesh_classes[c].size;
  mesh_stat_set(bytes_in_use_published, sb + mesh_stat_get(large_bytes_in_use) + mesh_stat_get(direct_bytes_in_use));
  mesh_stat_set(bytes_in_use_published_ns, now);
  publish_last = _mesh_os_now_ns();
  uint64_t took = publish_last - now;
  publish_wait = took * PUBLISH_SHARE > PUBLISH_NS ? took * PUBLISH_SHARE : PUBLISH_NS;
}

void _mesh_stats_page_init(void) {
  if (mesh_opt(MESH_OPT_STATS_PAGE)) share_page((const uint64_t *)_mesh_counters);
}

/* The counters as they were at the fork: the page is shared memory, and
 * the parent goes on writing it while the child makes its own. Taken in
 * the prepare handler, under the global lock. */
static uint64_t fork_snapshot[MESH_STATS_SLOTS];

void _mesh_stats_page_before_fork(void) {
  if (stats_fd >= 0) __builtin_memcpy(fork_snapshot, (const void *)_mesh_counters, sizeof fork_snapshot);
}

/* fork child: the page is shared with the parent. A new memfd of its own,
 * or else private memory, with the values of the fork. */
void _mesh_stats_page_after_fork_child(void) {
  if (stats_fd < 0) return;
  int parent_fd = stats_fd;
  uint64_t parent_id[2] = {stats_fd_id[0], stats_fd_id[1]}, now[2];
  stats_fd = -1;
  if (!share_page(fork_snapshot)) {
    _mesh_os_map_anon_fixed((void *)_mesh_counters, sizeof _mesh_counters);
    __builtin_memcpy((void *)_mesh_counters, fork_snapshot, sizeof fork_snapshot);
    _mesh_os_map_anon_fixed((void *)_mesh_pass_log, sizeof _mesh_pass_log); /* the parent's passes: emptied */
  }
  /* the parent keeps its own; closed here only if the number is still it */
  if (_mesh_os_fd_identity(parent_fd, now) == 0 && now[0] == parent_id[0] && now[1] == parent_id[1])
    _mesh_os_close(parent_fd);
}
