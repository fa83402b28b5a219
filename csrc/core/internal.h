/* internal.h - every cross-file function of the core, grouped by the file
 * that defines it, plus the few inline helpers the fast paths share.
 *
 * Name tiers: public mesh_* (mesh.h), cross-file _mesh_*, everything else
 * static. Layers, lowest first: os.c → libc.c, options.c, stats.c,
 * random.c, size_class.c → span.c, reserve.c, arena.c, memfd.c → direct.c →
 * global_heap.c, thread_heap.c → barrier.c, mesh.c, mesher.c, pass.c,
 * trigger.c → alloc.c, fast_path.h, fork.c, init.c → faces/. A file calls
 * only lower layers, but for the few upward calls docs/design.md lists with
 * their reasons (initialisation on first use, the global lock, stats that
 * walk the heaps, the inline trigger); tests/test_layers.py checks the code
 * against that page.
 *
 * Lock order (the only locks in the core), outermost first:
 *   1. _mesh_orphan_lock  - serialises threads whose heap is gone (thread
 *                           exit destructors already ran) on the orphan heap
 *   2. _mesh_global_lock  - global heap: arena page runs, span records,
 *                           occupancy bins, thread-heap registry, stats
 * Fast paths (thread heap pop/push, remote bit clear) take neither.
 */
#ifndef MESH_INTERNAL_H
#define MESH_INTERNAL_H

#include <signal.h>
#include <stdarg.h>
#include <sys/types.h>

#include "../mesh.h"
#include "types.h"

#define mesh_likely(x) __builtin_expect(!!(x), 1)
#define mesh_unlikely(x) __builtin_expect(!!(x), 0)
#define MESH_INLINE static inline __attribute__((always_inline))
#define MESH_NOINLINE __attribute__((noinline))
/* Makes the compiler forget what it knows about x's value (no code). On a
 * pointer into a big struct array it stops GCC from folding every field
 * access into "base + index * stride + offset" arithmetic of its own: the
 * fast paths then address fields off the one pointer. */
#define MESH_OPAQUE(x) __asm__("" : "+r"(x))

#include "os.h" /* the platform layer (os.c) */

/* ---- libc.c: formatting and messages without malloc or stdio -------- */
size_t _mesh_vsnprintf(char *buf, size_t n, const char *fmt, va_list ap);
size_t _mesh_snprintf(char *buf, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void _mesh_dprintf(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void _mesh_warning(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void _mesh_warnings_print(int fd); /* the kinds that repeated, with their counts */
void _mesh_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
/* A detected invalid or double free: reports the address, counts it, and
 * aborts when the abort_on_error option is set. */
__attribute__((cold)) void _mesh_report_bad_free(const void *p, const char *what);
int _mesh_strcmp(const char *a, const char *b);
size_t _mesh_strlen(const char *s);
void _mesh_fill(void *p, int c, size_t n);

/* ---- options.c ------------------------------------------------------ */
/* X(ENUM, name, default, min, max, settable_at_runtime, doc) */
#define MESH_OPTIONS(X) \
  X(ARENA_GB, arena_gb, 64, 1, 4096, 0, \
    "virtual address space of the arena, in GiB: reserved at start-up, or under a finite RLIMIT_AS mapped as it is used (up to the limit)") \
  X(STATS_PAGE, stats_page, 1, 0, 1, 0, \
    "share the counters and the log of the last 256 meshing pauses in pages other processes of the same user can read (python -m meshalloc stats --pid, run --record); 0 keeps them private") \
  X(MEMFD, memfd, 1, 0, 1, 0, \
    "back the arena with a memfd so spans can be meshed; 0 uses anonymous memory (no meshing)") \
  X(MAX_DIRTY_MB, max_dirty_mb, 32, 0, 1048576, 1, \
    "freed pages kept for reuse before they are returned to the OS, in MiB") \
  X(ABORT_ON_ERROR, abort_on_error, 1, 0, 1, 1, \
    "abort the process after reporting a double or invalid free (0: report and continue)") \
  X(VERBOSE, verbose, 1, 0, 1, 1, \
    "1 prints warnings on stderr, each kind once (repeats are counted in warnings_repeated); 0 silences them") \
  X(MESH, mesh, 1, 0, 1, 1, \
    "mesh spans (needs the memfd arena); 0 keeps the allocator but never meshes") \
  X(PERIOD_MS, period_ms, 100, 0, 86400000, 1, \
    "minimum time between meshing passes triggered by frees and refills, ms; 0 = only explicit compaction") \
  X(MAX_PAUSE_US, max_pause_us, 2000, 50, 10000000, 1, \
    "time bound of one meshing pass, us; leftover work resumes at the next trigger") \
  X(BACKGROUND_MS, background_ms, 0, 0, 86400000, 0, \
    "keep the meshing thread for the life of the process, a pass at least every this many ms; 0 = the thread runs only while there is work (start-up only)") \
  X(MESHER_THREAD, mesher_thread, 1, 0, 1, 1, \
    "1 = a meshing thread starts when much was freed and exits when the work is done, so an idle program is compacted; 0 = passes run only inside malloc and free") \
  X(DIRTY_DECAY_MS, dirty_decay_ms, 1000, 0, 86400000, 1, \
    "free pages the program did not reuse for this long (one to two periods) are returned to the OS, ms; 0 = keep up to max_dirty_mb") \
  X(MESHER, mesher, 0, 0, 1, 1, \
    "how partners are found: 0 = best fit (each span onto the densest kept span it fits), 1 = the paper's split mesher (random halves, random probes)") \
  X(PROBES, probes, 512, 1, 4096, 1, \
    "partners each candidate span is tried against (the paper's t; 512 = about every partner of a batch)") \
  X(MAX_OCCUPANCY_PCT, max_occupancy_pct, 80, 1, 99, 1, \
    "spans fuller than this percentage are not meshing candidates") \
  X(MAX_CHAIN, max_chain, 256, 2, 256, 1, \
    "virtual spans that may share one physical span") \
  X(MAX_MAPPINGS, max_mappings, 0, 0, 100000000, 1, \
    "kernel mappings the arena may use; 0 = 3/4 of vm.max_map_count, less if needed to keep 1/8 of it free counting the rest of the program's mappings. Meshing stops (never aborts) there") \
  X(FORK_FREEZE, fork_freeze, 1, 0, 1, 1, \
    "1 = a fork freezes the memfd: its pages stay shared copy-on-write with the child (O(mappings)), never meshed or returned while a process maps them; 0 = the parent copies them for the child (O(meshed pages)), the fallback") \
  X(SHUFFLE, shuffle, 1, 0, 2, 0, \
    "allocation order within spans: 1 = address order from a random slot of each span, 2 = every object at random (the paper), 0 = address order") \
  X(SEED, seed, 0, 0, 0x7fffffffffffffffL, 0, \
    "seed for the randomized allocation order; 0 draws one from the OS") \
  X(SPAN_PAGES, span_pages, 1, 1, 4, 0, \
    "least pages per span of a small class: 1 meshes at higher occupancy; 4 meshes four pages per kernel mapping, for heaps that would reach the mapping budget")

/* values of the mesher option */
enum { MESH_MESHER_BEST = 0, MESH_MESHER_SPLIT = 1 };

enum mesh_option_id {
#define MESH_OPT_ENUM(E, n, d, lo, hi, rt, doc) MESH_OPT_##E,
  MESH_OPTIONS(MESH_OPT_ENUM)
#undef MESH_OPT_ENUM
  MESH_OPT_COUNT
};
extern _Atomic long _mesh_options[MESH_OPT_COUNT];
void _mesh_options_init(void);
MESH_INLINE long mesh_opt(enum mesh_option_id id) { return mesh_load_relaxed(&_mesh_options[id]); }

/* ---- stats.c -------------------------------------------------------- */
/* Counters kept in the global stats array, updated under the global lock
 * or with relaxed atomics. Derived fields are computed in stats.c. */
#define MESH_COUNTERS(X) \
  X(mesh_count, "meshes performed (source spans folded onto a destination)") \
  X(meshed_pages, "virtual pages currently backed by another span's physical pages") \
  X(meshed_pages_hwm, "peak of meshed_pages") \
  X(meshed_pages_total, "pages freed by meshing, summed over the process lifetime") \
  X(mesh_aliases, "virtual spans currently meshed onto another span's physical pages") \
  X(arena_mappings, "kernel mappings (VMAs) the arena uses now: 1 plus one per break (a change between anonymous memory and the memfd, or a jump in memfd offsets)") \
  X(arena_mappings_hwm, "peak of arena_mappings") \
  X(mesh_passes, "meshing passes run (each one bounded pause)") \
  X(mesh_pause_ns_total, "time spent in meshing passes, ns") \
  X(mesh_pause_ns_max, "longest meshing pass, ns") \
  X(mesh_pause_cpu_ns_max, "longest meshing pass in the meshing thread's CPU time, ns (wall clock less time it was not running)") \
  X(mesh_pause_over_bound, "meshing passes whose wall-clock time exceeded max_pause_us") \
  X(mesh_pause_cpu_over_bound, "meshing passes whose CPU time exceeded max_pause_us") \
  X(mesh_pause_lt_100us, "meshing passes shorter than 100 us") \
  X(mesh_pause_lt_500us, "meshing passes of 100-500 us") \
  X(mesh_pause_lt_1ms, "meshing passes of 0.5-1 ms") \
  X(mesh_pause_lt_2ms, "meshing passes of 1-2 ms") \
  X(mesh_pause_lt_5ms, "meshing passes of 2-5 ms") \
  X(mesh_pause_ge_5ms, "meshing passes of 5 ms or more") \
  X(mesh_bytes_copied, "bytes of live objects copied by meshing") \
  X(mesh_adjacent, "meshes whose alias continued a neighbour's mapping (no new VMA)") \
  X(mesh_budget_stops, "times meshing stopped because the mapping budget was reached") \
  X(mesh_remap_failures, "mapping calls of a mesh (promotion, protection, remapping) the kernel refused, e.g. at vm.max_map_count: each mesh was undone, the heap unchanged") \
  X(mesh_pace_level, "periodic meshing waits period_ms << this: raised while the program takes the pages meshing freed straight back") \
  X(mesh_paced, "times pacing lengthened the wait between periodic passes") \
  X(mesh_sweeps_skipped, "sweeps of a size class skipped: no span of it changed since its last sweep found nothing to mesh") \
  X(passes_triggered, "meshing passes run inside malloc and free (period_ms)") \
  X(meshes_triggered, "meshes done by those passes") \
  X(pages_triggered, "pages freed by those passes") \
  X(pass_ns_triggered, "time spent in those passes, ns") \
  X(passes_thread, "meshing passes run by the meshing thread") \
  X(meshes_thread, "meshes done by the meshing thread") \
  X(pages_thread, "pages freed by the meshing thread") \
  X(pass_ns_thread, "time the meshing thread spent in passes, ns") \
  X(passes_compact, "steps of explicit compactions (mesh_compact, meshalloc.compact)") \
  X(meshes_compact, "meshes done by explicit compactions") \
  X(pages_compact, "pages freed by explicit compactions") \
  X(pass_ns_compact, "time spent in steps of explicit compactions, ns") \
  X(mesher_thread_starts, "times the meshing thread was started (it exits when its work is done)") \
  X(mesh_barrier_waits, "writes that faulted on a span being meshed and waited for it") \
  X(spans_alloc_count, "span records created (the original's MH Alloc Count)") \
  X(spans_free_count, "span records released (the original's MH Free Count)") \
  X(spans_live, "spans currently in use") \
  X(spans_hwm, "peak of spans_live (the original's MH High Water Mark)") \
  X(large_alloc_count, "large allocations (> 16 KiB, and blocks realloc grew past a page)") \
  X(large_free_count, "large frees") \
  X(large_bytes_in_use, "bytes in live large spans (page rounded; not the parked one)") \
  X(large_grown_in_place, "large blocks grown by realloc into the free pages after them") \
  X(large_grow_moved, "large blocks realloc had to copy to grow (the pages after them were taken)") \
  X(direct_alloc_count, "large blocks mapped on their own, outside the arena (it could not hold them: address-space limit)") \
  X(direct_free_count, "direct blocks freed") \
  X(direct_bytes_in_use, "bytes in live direct blocks (page rounded)") \
  X(span_pages, "arena pages held by live spans (the parked large span included)") \
  X(dirty_pages, "free arena pages not yet returned to the OS") \
  X(kept_pages, "pages of empty spans thread heaps keep for their next refill") \
  X(arena_top_pages, "arena pages ever used (high-water mark of the bump pointer)") \
  X(pages_punched, "free pages returned to the OS, summed") \
  X(pages_decayed, "free pages returned because they went unused for dirty_decay_ms (part of pages_punched)") \
  X(dropped_pages_total, "pages of freed meshing destinations returned to the OS at once (a later span on them is not new demand for pacing), summed") \
  X(fresh_pages_total, "pages of new spans carved from clean memory (never used, or returned to the OS), summed") \
  X(punch_calls, "fallocate(PUNCH_HOLE)/madvise calls made to return pages") \
  X(thread_heaps_created, "thread heaps created") \
  X(thread_heaps_live, "thread heaps attached to running threads") \
  X(thread_heap_bytes, "bytes of thread heaps in use: a header per heap and a shuffle vector per size class it has used") \
  X(fork_count, "forks that prepared the memfd's pages for the child: froze them (see freezes) or copied them") \
  X(fork_copy_bytes_last, "bytes the last fork copied for its child (the meshing destinations' pages; 0 when it froze them)") \
  X(fork_copy_ns_last, "time the last fork spent freezing the memfd or preparing the child's copy, ns (other threads touching meshed pages wait that long)") \
  X(fork_copy_ns_max, "longest fork freeze or copy, ns") \
  X(double_free_count, "double frees detected") \
  X(invalid_free_count, "frees of pointers that are not a live block start") \
  X(orphan_allocs, "allocations served after the thread's heap was released (thread exit)") \
  X(spans_pinned, "spans pinned against meshing (mesh_pin: mprotect, pkey_mprotect, setvbuf under libmesh.so)") \
  X(syscalls_in_flight_skips, "meshes skipped because a wrapped system call was writing into the source span (libmesh.so)") \
  X(promoted_pages, "pages of live spans held in the current memfd (meshing destinations since the last fork): the only arena pages a fork copies; the rest is private anonymous memory, shared copy-on-write with a fork child") \
  X(frozen_pages, "virtual pages (destinations, their aliases, retired ranges) mapping a frozen generation: a memfd a fork made private in the parent and the child, never meshed or punched again") \
  X(freezes, "forks that froze the memfd (made every mapping of it private and moved later meshes to a new memfd) instead of copying it") \
  X(arena_growths, "times the arena's mapped part grew (only under an address-space limit, where it is mapped as needed)") \
  X(retired_pages, "virtual pages of freed meshed spans whose own mapping could not be restored (mapping limit): set aside, retried later") \
  X(warnings_repeated, "warnings not printed because one of the same kind already was") \
  X(bytes_in_use_published, "bytes_in_use as last published for readers in other processes (stats --pid): at most every 500 ms, by allocator slow paths and the meshing thread; 0 before the first") \
  X(bytes_in_use_published_ns, "when bytes_in_use_published was computed (CLOCK_MONOTONIC, ns)")

enum mesh_counter_id {
#define MESH_CTR_ENUM(n, doc) MESH_CTR_##n,
  MESH_COUNTERS(MESH_CTR_ENUM)
#undef MESH_CTR_ENUM
  MESH_CTR_COUNT
};
#define MESH_STATS_SLOTS 512 /* one page of counters */
/* The pass log: the last MESH_PASS_LOG pauses (passes and compaction
 * steps), MESH_PASS_LOG_WORDS words each, in pages of their own that the
 * stats memfd shares after the counters' (stats.c), so that a reader in
 * another process sees when each pause ended, what it cost and what it did
 * (stats --watch, run --record). Written under the global lock; an entry's
 * first and last word are its number (mesh_passes after it), set to 0
 * before the other words and to the number after them, so a reader that
 * copies the pages while a pass writes can tell a torn entry. Words:
 * number, end (CLOCK_MONOTONIC ns), wall ns, CPU ns, meshes, pages freed,
 * kind (enum mesh_pass_kind), number. */
#define MESH_PASS_LOG 256
#define MESH_PASS_LOG_WORDS 8
extern _Atomic uint64_t _mesh_pass_log[MESH_PASS_LOG * MESH_PASS_LOG_WORDS];
void _mesh_stats_log_pass(uint64_t number, uint64_t end_ns, uint64_t wall_ns, uint64_t cpu_ns, uint64_t meshes,
                          uint64_t pages, unsigned kind);
extern _Atomic uint64_t _mesh_counters[MESH_STATS_SLOTS];
void _mesh_stats_page_init(void);            /* at init: the counters' page becomes shareable */
void _mesh_stats_publish(uint64_t now);      /* (lock) bytes_in_use_published, if due (now = 0: now) */
uint64_t _mesh_stats_publish_wait_ns(uint64_t now); /* (lock) ns until the next is due (>= 1); 0: never */
void _mesh_stats_page_before_fork(void);      /* prepare handler: the values the child starts from */
void _mesh_stats_page_after_fork_child(void); /* the child's counters stop being the parent's */
#define mesh_stat_add(name, v) mesh_fetch_add_relaxed(&_mesh_counters[MESH_CTR_##name], (uint64_t)(v))
#define mesh_stat_sub(name, v) mesh_fetch_add_relaxed(&_mesh_counters[MESH_CTR_##name], -(uint64_t)(v))
#define mesh_stat_get(name) mesh_load_relaxed(&_mesh_counters[MESH_CTR_##name])
#define mesh_stat_set(name, v) mesh_store_relaxed(&_mesh_counters[MESH_CTR_##name], (uint64_t)(v))
/* raise a high-water mark (caller holds the global lock or tolerates a race) */
#define mesh_stat_hwm(hwm, cur) do { uint64_t c_ = mesh_stat_get(cur); \
    if (c_ > mesh_stat_get(hwm)) mesh_stat_set(hwm, c_); } while (0)

/* ---- size_class.c --------------------------------------------------- */
extern size_class_t _mesh_classes[MESH_NUM_CLASSES];
void _mesh_size_classes_init(void);
/* Classes of the sizes above 512 bytes, by (size + 127) >> 7 (0..128),
 * 32 entries per cache line, in the line's load zones (types.h, "Store and
 * load zones"): entry i sits at line i / 32, byte i % 16, plus 48 for the
 * second 16 of the 32. A table, not arithmetic: the highest-bit instruction
 * the arithmetic needs (bsr) made the malloc+free pair 3-5 ns slower above
 * 512 bytes on the AMD machine this is measured on. */
#define MESH_CLASS_BY_128_SLOT(i) ((((i) >> 5) << 6) | ((i) & 15) | (((i) & 16) * 3))
/* Atomic (relaxed: plain loads on x86-64) because the fast path may read it
 * while the first allocations of two threads race initialisation: the
 * sentinel heap then sends the allocation to the slow path whatever class
 * was read, but the read itself must not be a data race. */
extern _Atomic uint8_t _mesh_class_by_128[(MESH_SMALL_MAX / 128 / 32 + 1) * 64];
/* The class of a size 513..MESH_SMALL_MAX (mesh_class_of computes it up to 1 KiB). */
MESH_INLINE unsigned mesh_class_above_512(size_t size) {
  return mesh_load_relaxed(&_mesh_class_by_128[MESH_CLASS_BY_128_SLOT((size + 127) >> 7)]);
}
/* The class of a size 0..MESH_SMALL_MAX (0 is served as 16 bytes). */
MESH_INLINE unsigned mesh_class_of(size_t size) {
  if (mesh_likely(size <= 512)) return size ? (unsigned)((size - 1) >> 4) : 0;
  if (size <= 1024) return 28u + (unsigned)((size - 1) >> 7); /* 640, 768, 896, 1024 */
  return mesh_class_above_512(size);
}
/* Smallest class whose size is a multiple of align (align <= page), or -1. */
int _mesh_class_for_aligned(size_t size, size_t align);

/* ---- random.c ------------------------------------------------------- */
uint64_t _mesh_random_seed(void);
MESH_INLINE uint64_t mesh_rand(uint64_t *state) { /* wyrand */
  *state += 0xa0761d6478bd642fULL;
  __uint128_t m = (__uint128_t)*state * (*state ^ 0xe7037ed1a0b428dbULL);
  return (uint64_t)(m >> 64) ^ (uint64_t)m;
}
/* uniform in [0, n) without a divide (Lemire's multiply-shift) */
MESH_INLINE uint32_t mesh_rand_below(uint64_t *state, uint32_t n) {
  return (uint32_t)(((uint64_t)(uint32_t)mesh_rand(state) * n) >> 32);
}

/* ---- span.c (global lock held for everything that changes state) ---- */
uint32_t _mesh_span_record_new(void);
void _mesh_span_record_free(uint32_t id);
bool _mesh_span_record_used(uint32_t id); /* id names a record handed out at some time */
void _mesh_pagetable_set(uint32_t first, uint32_t npages, uint32_t vstart, uint32_t id);
int _mesh_span_validate(uint32_t id); /* lock held */

/* ---- reserve.c: the arena's address space -------------------------- */
bool _mesh_arena_init(void);
/* Lock held: maps the arena (and its page table and records) up to at
 * least pages pages; false if it cannot grow (no limit: all is mapped). */
bool _mesh_arena_grow(uint64_t pages);

/* ---- arena.c (global lock held for everything that changes state) ---- */
extern arena_t _mesh_arena;
/* A span of npages whose first page is aligned to align_pages (power of
 * two, 1 = any); sets its page-table entries. large: for a large block,
 * which may grow in place and so is placed with room after it. *clean
 * says whether the pages are known zero. Returns MESH_NIL when the arena
 * is exhausted. */
uint32_t _mesh_arena_alloc_span(uint32_t npages, uint32_t align_pages, bool large, bool *clean);
/* Returns the span's pages as a dirty free run, clears its page-table
 * entries and recycles the record. May scavenge. */
void _mesh_arena_free_span(uint32_t id);
bool _mesh_arena_grow_span(uint32_t id, uint32_t extra);
void _mesh_arena_shrink_span(uint32_t id, uint32_t keep);
size_t _mesh_arena_scavenge(void);
/* Ends a decay epoch: returns the pages that stayed dirty all through it
 * (how many); the next epoch starts from the dirty pages now. */
uint64_t _mesh_arena_decay(void);
/* Turns record id (page, npages set) into a free run of that kind, merged
 * with its neighbours. */
void _mesh_arena_run_insert(uint32_t id, bool dirty);
int _mesh_arena_validate(void);
uint32_t _mesh_arena_top(void);
bool _mesh_arena_has_dirty(uint32_t npages);
void _mesh_arena_split(uint32_t id, uint32_t npages, uint32_t k, uint32_t *ids);

/* ---- memfd.c (global lock held) -------------------------------------- */
/* The memfd page behind a virtual arena page, or MESH_PHYS_ANON for private
 * anonymous memory (every page but meshing destinations and their aliases). */
#define MESH_PHYS_ANON UINT32_MAX
uint32_t _mesh_arena_phys_of(uint32_t page);
int _mesh_arena_map_delta(uint32_t vpage, uint32_t n, uint32_t phys);
int _mesh_arena_map(uint32_t vpage, uint32_t n, uint32_t phys);
int _mesh_arena_punch(uint32_t page, uint32_t n);
/* Moves a live span's pages into the memfd (at its own page) so that other
 * virtual spans can be mapped onto them; a meshing barrier must be open.
 * Returns false, with the span unchanged, if the kernel refuses. */
bool _mesh_arena_promote(uint32_t id);
/* The memfd's descriptor if it still names the arena's memfd; else -1 (the
 * arena is then orphaned: no meshing, the number never used again). */
int _mesh_arena_fd(void);
void _mesh_arena_retry_retired(void); /* lock held: restores retired ranges the kernel now lets us map */
/* A span being freed: its aliases get anonymous pages back (clean runs, or
 * retired); a destination's memfd pages are returned and its range becomes
 * a clean run (or is retired). */
void _mesh_arena_unalias_all(uint32_t id);
void _mesh_arena_drop_file(uint32_t id);
/* Freezing (fork.c): the next frozen generation's number (1-63, in
 * turn); a new memfd sized like the arena (its identity in id), or -1; the
 * arena promotes into fd from now on, and the old descriptor is closed (the
 * file lives on in the private mappings of it). */
unsigned _mesh_arena_next_gen(void);
int _mesh_arena_new_memfd(uint64_t id[2]);
void _mesh_arena_switch_memfd(int fd, const uint64_t id[2]);

/* Bits set in x. The x86-64 baseline has no popcnt, and
 * __builtin_popcountll there is a call into libgcc (seen at 0.5 % of a
 * Python run, from the meshing passes' occupancy counts): the instruction
 * where the CPU has it (nearly every x86-64 since 2008: one instruction
 * where the arithmetic below takes twelve; refills, span transitions and
 * meshing passes count a span's live objects this way), else arithmetic. */
MESH_INLINE unsigned mesh_popcount64(uint64_t x) {
#if defined(__x86_64__)
  if (mesh_likely(_mesh_os_has_popcnt)) {
    uint64_t n;
    __asm__("popcnt %1, %0" : "=r"(n) : "rm"(x) : "cc");
    return (unsigned)n;
  }
#endif
  x = x - ((x >> 1) & 0x5555555555555555ull);
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return (unsigned)((x * 0x0101010101010101ull) >> 56);
}
MESH_INLINE span_t *mesh_span(uint32_t id) { return &_mesh_arena.spans[id]; }
MESH_INLINE bool mesh_in_arena(const void *p) {
  return (uintptr_t)p - _mesh_arena.base < _mesh_arena.size;
}
MESH_INLINE uint64_t mesh_pte_of(const void *p) {
  return mesh_load_relaxed(&_mesh_arena.pagetable[((uintptr_t)p - _mesh_arena.base) >> MESH_PAGE_SHIFT]);
}
MESH_INLINE uintptr_t mesh_page_addr(uint32_t page) {
  return _mesh_arena.base + ((uintptr_t)page << MESH_PAGE_SHIFT);
}
/* Bitmap geometry from an object count, so paths that must not read a span
 * record (a remote free after its bit is clear) can use the class table. */
MESH_INLINE unsigned mesh_bitmap_words_n(unsigned nobjects) { return (nobjects + 63u) >> 6; }
MESH_INLINE uint64_t mesh_bitmap_mask_n(unsigned nobjects, unsigned w) {
  unsigned rest = nobjects - w * 64u;
  return rest >= 64 ? ~0ull : ((1ull << rest) - 1);
}
/* The slot whose start is byte offset voff of a span of nobjects slots of
 * size bytes (recip = ceil(2^32 / size): a multiply, not a divide), or
 * MESH_NO_SLOT if voff is not a slot's start: inside a block, or in the
 * span's tail. */
#define MESH_NO_SLOT UINT32_MAX
MESH_INLINE uint32_t mesh_slot_at(uintptr_t voff, uint32_t size, uint64_t recip, unsigned nobjects) {
  uint32_t slot = (uint32_t)((voff * recip) >> 32);
  return mesh_likely(slot * size == voff && slot < nobjects) ? slot : MESH_NO_SLOT;
}
MESH_INLINE unsigned mesh_bitmap_words(const span_t *s) { return mesh_bitmap_words_n(s->nobjects); }
MESH_INLINE uint64_t mesh_bitmap_mask(const span_t *s, unsigned w) { return mesh_bitmap_mask_n(s->nobjects, w); }

/* ---- global_heap.c -------------------------------------------------- */
extern pthread_mutex_t _mesh_global_lock;
void _mesh_lock(void);
void _mesh_unlock(void);
/* Replace the attachments of class cls (all exhausted) by spans with free
 * slots; returns false when the arena is exhausted. Takes the lock. */
bool _mesh_global_refill(thread_heap_t *h, unsigned cls);
/* Detach every span of h (thread exit, fork child orphans). Lock held. */
void _mesh_global_detach_all(thread_heap_t *h); /* and gives back its kept spans */
void _mesh_global_release_kept(thread_heap_t *h); /* (lock) its kept spans to the arena */
/* A non-local free saw a bitmap word go from full or to empty. */
void _mesh_global_free_transition(span_t *s, uint32_t id);
void *_mesh_large_alloc(size_t size, size_t align, bool zero);
void _mesh_large_free(span_t *s, uint32_t id, const void *p, uint64_t pte, const void *caller);
/* Resizes the large block p in place; false if it cannot (then move it). */
bool _mesh_large_resize(const void *p, size_t size);
void _mesh_large_unpark(void); /* (lock) the parked large span back to the arena */

/* ---- direct.c: large blocks mapped outside the arena ----------------- */
void *_mesh_direct_alloc(size_t size, size_t align); /* zeroed; NULL + ENOMEM */
size_t _mesh_direct_size(const void *p);             /* 0 if p is not a direct block */
bool _mesh_direct_free(void *p);                     /* false if p is not a direct block */
void *_mesh_direct_realloc(void *p, size_t size);    /* NULL (p untouched) on failure */
void _mesh_direct_before_fork(void);
void _mesh_direct_after_fork(bool child);
int _mesh_global_validate(void);
/* for the mesher (lock held) */
uint32_t _mesh_partial_head(unsigned cls, unsigned bin);
unsigned _mesh_partial_count(unsigned cls); /* spans in the class's occupancy bins */
/* Spans that entered or left the class's occupancy bins so far: while it
 * stays the same, a span can change there only by losing live objects. */
uint64_t _mesh_partial_changes(unsigned cls);
uint64_t _mesh_partial_live(unsigned cls);  /* live objects in the class's occupancy bins */
/* Live objects in the detached spans of class cls: the FULL spans' slots
 * (a free into one takes the lock before its span leaves FULL) and the
 * bitmaps of the spans in the occupancy bins. */
uint64_t _mesh_global_live(unsigned cls);
void _mesh_partial_unlink(uint32_t id);
void _mesh_file_detached(uint32_t id);
unsigned _mesh_span_live(const span_t *s);
void _mesh_global_after_fork_child(void);

/* A face's counter k (< MESH_FACE_COUNTS) in heap h: four per cache line,
 * in the store zone of the header's lines (types.h). */
MESH_INLINE _Atomic uint64_t *mesh_face_count(thread_heap_t *h, unsigned k) {
  return k < MESH_FACE_COUNTS_PER_LINE
             ? &h->face_counts_0[k]
             : &h->face_lines[k / MESH_FACE_COUNTS_PER_LINE - 1].n[k % MESH_FACE_COUNTS_PER_LINE];
}

/* ---- thread_heap.c -------------------------------------------------- */
/* Line aligned, the heap pointer every fast path loads in a load slot
 * whatever the thread-local block's address (types.h, "Store and load
 * zones"). */
struct mesh_tls_s {
  _Alignas(64) int state; /* MESH_TLS_* */
  thread_heap_t *heap;    /* never NULL: a sentinel until the first allocation */
};
_Static_assert(MESH_IN_LOAD_SLOT(struct mesh_tls_s, heap), "the thread-local heap pointer's zone");
enum { MESH_TLS_NONE = 0, MESH_TLS_CREATING, MESH_TLS_LIVE, MESH_TLS_DEAD };
extern __thread struct mesh_tls_s _mesh_tls __attribute__((tls_model("initial-exec")));
extern thread_heap_t _mesh_empty_heap;
extern pthread_mutex_t _mesh_orphan_lock;
void _mesh_thread_heaps_init(void);
void *_mesh_heap_alloc_slow(size_t size);
/* Takes back the slots other threads freed in h's attachments of sv's class
 * (atomic fetch_or per word) into the shuffle vector; returns how many. */
unsigned _mesh_heap_reclaim(thread_heap_t *h, shuffle_vector_t *sv);
/* (lock) Sets up class cls's vector in its heap on first use. */
void _mesh_heap_sv_prepare(shuffle_vector_t *sv, unsigned cls);
/* Face count k of a thread with no heap of this core (before its first
 * allocation, after its exit, or when another copy of the core is the
 * process's heap): one atomic add to a shared counter. */
void _mesh_face_count_shared(unsigned k);
/* The sum of face counts over every heap ever created and the shared ones
 * (takes the lock). */
void _mesh_heaps_face_counts(uint64_t out[MESH_FACE_COUNTS]);
void _mesh_heap_validate_all(int *problems);
void _mesh_heaps_after_fork_child(void);
/* (lock) The parked large block and every heap's kept spans to the arena. */
void _mesh_heaps_release_spare(void);
/* (lock) Per-class spans and live objects (mesh_class_stats). */
void _mesh_heap_class_stats(mesh_class_stats_t out[MESH_NUM_CLASSES]);
/* (lock) Per-class live objects alone, as _mesh_heap_class_stats counts
 * them, without its walk of every span. */
void _mesh_heap_objects_in_use(uint64_t out[MESH_NUM_CLASSES]);

/* ---- alloc.c -------------------------------------------------------- */
/* caller: the return address of the allocator entry point the program
 * called (free, a PyMem hook), for mesh_mesher_poll_free. */
void _mesh_free_nonlocal(void *p, span_t *s, uint32_t id, uint64_t pte, const void *caller);
/* The lock-free free's follow-up when a detached span may have been FULL
 * or may be empty (fast_path.h, mesh_after_shared_clear). */
void _mesh_after_clear(span_t *s, uint32_t id, unsigned nobjects, const void *caller);

/* ---- barrier.c ------------------------------------------------------ */
extern _Atomic uint32_t _mesh_mesh_gen;
void _mesh_barrier_begin(void);
void _mesh_barrier_end(void);
void _mesh_barrier_wait(uint32_t gen);
bool _mesh_barrier_ensure(void);
struct sigaction;
int _mesh_barrier_user_sigaction(const struct sigaction *act, struct sigaction *old);
void _mesh_barrier_after_fork_child(void);
/* System calls that write into user memory, wrapped by libmesh.so: the
 * buffer is published for the length of the call, and no mesh protects a
 * span under it meanwhile (the kernel would fail with EFAULT, after having
 * consumed a datagram, an eventfd count...). enter waits out a mesh in
 * progress; it returns a token for exit (-1: the buffer is not in the
 * arena, nothing to do). errno is preserved by exit. */
int _mesh_syscall_enter(const void *lo, const void *hi);
void _mesh_syscall_exit(int token);
bool _mesh_syscall_overlaps(uintptr_t lo, uintptr_t hi); /* mesher: a published buffer meets [lo, hi) */

/* ---- mesh.c --------------------------------------------------------- */
void _mesh_meshing_init(void);
/* Lock held: meshes src onto dst (both detached and unlinked). Returns
 * false, with nothing changed, if the mapping budget or the kernel refuses. */
bool _mesh_mesh_pair(uint32_t dst_id, uint32_t src_id);
void _mesh_count_other_mappings(void); /* without the lock: refresh the mapping budget */
bool _mesh_mapping_count_stale(void); /* near the kernel's limit, and counted too long ago */
bool _mesh_mapping_recount_due(void); /* a sweep ends: the arena grew, or the count is old */
/* The virtual spans a span's chain maps: itself and its aliases. */
MESH_INLINE unsigned mesh_chain_len(const span_t *s) { return 1u + s->naliases; }

/* ---- mesher.c (lock held) ------------------------------------------- */
void _mesh_mesher_init(void);
/* Meshes class cls until deadline; returns pages freed. Sets *out_of_time,
 * *stop (mapping budget), *more (sweep or batch goes on), *step_meshed. */
size_t _mesh_mesh_class(unsigned cls, uint64_t deadline, bool *out_of_time, bool *stop, bool *more,
                        bool *step_meshed);
void _mesh_mesher_restart(unsigned cls); /* a fresh sweep of cls, no batch open */

/* ---- pass.c (lock held) --------------------------------------------- */
/* Who ran a pass; each kind has its own stats (passes_*, meshes_*, ...). */
enum mesh_pass_kind { MESH_PASS_triggered, MESH_PASS_thread, MESH_PASS_compact };
/* One pass bounded by budget_ns; returns physical pages freed. */
size_t _mesh_mesh_pass(uint64_t budget_ns, enum mesh_pass_kind kind, bool *more); /* *more: work left */
uint64_t _mesh_last_pass_ns(void); /* when the last pass or step ended */
/* A compaction in bounded steps (mesh_compact): zero-initialised, then
 * _mesh_compact_step with the lock held until finished. */
typedef struct {
  unsigned cls, sweeps;
  size_t first, sweep;
  bool in_sweep, finished;
} compact_state_t;
size_t _mesh_compact_step(compact_state_t *st, enum mesh_pass_kind kind);
/* Whether meshing src now would likely end past deadline (the pause predictor). */
bool _mesh_pause_predicted_past(uint32_t dst, uint32_t src, uint64_t deadline);
/* Unlinks both, meshes src onto dst, times it; the caller files them again. */
bool _mesh_mesh_timed(uint32_t dst, uint32_t src);

/* ---- trigger.c ------------------------------------------------------ */
void _mesh_triggers_init(void);
/* Lock held: counts the event and runs a bounded pass when one is due;
 * span_freed: a free made a detached span partial or empty, or freed a
 * large block. */
void _mesh_maybe_mesh(bool span_freed);
extern _Atomic bool _mesh_mesher_wanted;
void _mesh_mesher_poll_slow(void);
/* Outside every lock, where a malloc or free has finished its work:
 * starts the meshing thread if a trigger asked for it. */
MESH_INLINE void mesh_mesher_poll(void) {
  if (mesh_unlikely(mesh_load_relaxed(&_mesh_mesher_wanted))) _mesh_mesher_poll_slow();
}
/* The same at the end of a free, which the dynamic loader may have called
 * (caller: the free's return address) while glibc holds its stack cache
 * lock, which pthread_create and pthread_join take: the thread is then left
 * to the next allocator call. */
extern uintptr_t _mesh_ldso_lo, _mesh_ldso_len; /* the dynamic loader's code (init.c) */
MESH_INLINE void mesh_mesher_poll_free(const void *caller) {
  if (mesh_unlikely(mesh_load_relaxed(&_mesh_mesher_wanted)) && (uintptr_t)caller - _mesh_ldso_lo >= _mesh_ldso_len)
    _mesh_mesher_poll_slow();
}
void _mesh_mesher_start_background(void); /* after init, outside every lock */
void _mesh_mesher_before_fork(void);
void _mesh_mesher_after_fork(bool child);

/* ---- fork.c --------------------------------------------------------- */
void _mesh_fork_register(void);
/* The barrier's fault handler, in a fork child that faults on a meshed
 * range before its atfork handler ran: maps the child's copy there and
 * returns true (the access is retried); false anywhere else. */
bool _mesh_fork_child_fault(void);

/* ---- init.c --------------------------------------------------------- */
extern _Atomic int _mesh_init_state; /* 0 none, 1 running, 2 done */
void _mesh_init_slow(void);
MESH_INLINE void mesh_ensure_init(void) {
  if (mesh_unlikely(mesh_load_acquire(&_mesh_init_state) != 2)) _mesh_init_slow();
}

/* ---- debug assertions ------------------------------------------------ */
#if MESH_DEBUG >= 2
#define mesh_assert(x) do { if (mesh_unlikely(!(x))) \
    _mesh_fatal("assertion failed: %s (%s:%d)", #x, __FILE__, __LINE__); } while (0)
#else
#define mesh_assert(x) ((void)0)
#endif
#if MESH_DEBUG >= 3
#define mesh_assert_expensive(x) mesh_assert(x)
#else
#define mesh_assert_expensive(x) ((void)0)
#endif

#endif
