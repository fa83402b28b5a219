/* mesh.h - the public C API of the meshalloc core.
 *
 * Every function here is exported from libmesh.so (and compiled into the
 * CPython extension). The malloc family itself (malloc, free, ...) is exported
 * only by libmesh.so's face; these mesh_-prefixed twins are what tests,
 * the cffi binding and the Python extension call.
 *
 * Semantics follow glibc: errno = ENOMEM on exhaustion or a huge request,
 * EINVAL on a bad alignment, mesh_malloc(0) returns a unique non-NULL block,
 * every block is at least 16-byte aligned, a failed realloc leaves the block
 * intact. None of these functions ever aborts on a bad request; a detected
 * invalid or double free is reported with its address (and aborts when the
 * abort_on_error option is 1, the default).
 */
#ifndef MESH_H
#define MESH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#ifndef MESH_API
#define MESH_API __attribute__((visibility("default")))
#endif

#define MESH_VERSION_STRING "0.1.0"

/* ---- allocation ------------------------------------------------------ */
MESH_API void  *mesh_malloc(size_t size);
MESH_API void   mesh_free(void *p);
MESH_API void  *mesh_calloc(size_t count, size_t size);
MESH_API void  *mesh_realloc(void *p, size_t size);
MESH_API void  *mesh_reallocarray(void *p, size_t count, size_t size);
MESH_API void  *mesh_memalign(size_t alignment, size_t size);
MESH_API int    mesh_posix_memalign(void **out, size_t alignment, size_t size);
MESH_API void  *mesh_aligned_alloc(size_t alignment, size_t size);
MESH_API void  *mesh_valloc(size_t size);
MESH_API void  *mesh_pvalloc(size_t size);
MESH_API size_t mesh_usable_size(const void *p);

/* 1 if p lies inside this heap's arena (one range compare; p is never read). */
MESH_API int    mesh_owns(const void *p);
/* Introspection for tests and debugging: the size in bytes of the span
 * holding the block p, and in *start its first byte (of the virtual span p
 * is in: a meshed alias reports its own range). 0 if p is not in a span. */
MESH_API size_t mesh_span_of(const void *p, void **start);

/* ---- heap control ---------------------------------------------------- */
/* Returns dirty free pages to the OS now; returns the number of bytes punched. */
MESH_API size_t mesh_scavenge(void);
/* Runs every structure validator over the whole heap. Returns 0 when the heap
 * is consistent, otherwise the number of problems found (each one reported
 * on stderr). Takes the global lock; meant for tests and debugging. */
MESH_API int    mesh_check_heap(void);
/* 1 when the arena is backed by a memfd (meshing possible), 0 in the
 * degraded fallback (anonymous memory, no meshing). */
MESH_API int    mesh_meshing_available(void);
/* Meshes now, class by class, in steps of at most max_pause_us (the lock
 * released between steps), sweep after sweep while a sweep still frees at
 * least 1/16 of what the class's first one did; then returns freed pages to
 * the OS. Returns the number of physical pages meshing freed. */
MESH_API size_t mesh_compact(void);
/* mesh_compact, also telling in *pages_returned (if not NULL) how many
 * pages went back to the OS during the call: freed by meshing, and dirty
 * free pages (another thread's activity meanwhile included). */
MESH_API size_t mesh_compact_ex(size_t *pages_returned);
/* How long until the next periodic meshing pass is due, in ns: 0 when it
 * is due now, -1 when periodic meshing is off (option mesh or period_ms 0,
 * or no meshing possible). The wait is period_ms, doubled mesh_pace_level
 * times, from the end of the last pass or compaction step. */
MESH_API long long mesh_periodic_wait_ns(void);
MESH_API const char *mesh_version(void);

/* ---- options ----------------------------------------------------------
 * Options have one lower-case name each ("max_dirty_mb"); the environment
 * variable is MESH_<NAME> in upper case (MESH_MAX_DIRTY_MB). Values are
 * integers. get returns -1 and sets errno=ENOENT for an unknown name; set
 * returns 0, or -1 with errno EINVAL (value out of range), EPERM (option
 * fixed once the heap exists, e.g. arena_gb) or ENOENT (unknown name). */
MESH_API long   mesh_option_get(const char *name);
MESH_API int    mesh_option_set(const char *name, long value);
/* Number of options, and the name/doc of option i (NULL past the end). */
MESH_API int    mesh_option_count(void);
MESH_API const char *mesh_option_name(int i);
MESH_API const char *mesh_option_doc(int i);

/* ---- statistics -------------------------------------------------------
 * Stats are a table of named 64-bit counters. mesh_stats_read fills out[]
 * (up to n entries) with a consistent-enough snapshot and returns the number
 * of fields. Names are stable; docs/options.md lists them. The counters
 * come first and cost a load each; the derived fields after them (bytes in
 * use, metadata...) walk the heap, and are computed only when n reaches
 * them. */
MESH_API int    mesh_stats_count(void);
MESH_API const char *mesh_stats_name(int i);
MESH_API const char *mesh_stats_doc(int i);
MESH_API int    mesh_stats_read(uint64_t *out, int n);
/* Per size class: its spans and how full they are. mesh_class_stats fills
 * out[0..n) (classes in size order) under the global lock, walking the span
 * table (cost grows with the heap: for monitoring, not hot loops), and
 * returns the number of classes. Every field is a uint64_t, in the order of
 * MESH_CLASS_STATS, so bindings need no layout knowledge beyond the field
 * names mesh_class_stats_name(i) gives (NULL past the end).
 * X(field, doc): */
#define MESH_CLASS_STATS(X)                                                                        \
  X(object_size, "bytes per object of the class")                                                  \
  X(span_bytes, "bytes per span (1-4 pages)")                                                      \
  X(spans, "physical spans of the class: attached + partial + full")                               \
  X(spans_attached, "attached to a thread heap (allocating)")                                      \
  X(spans_partial, "detached, with free slots (reusable, meshing candidates)")                     \
  X(spans_full, "detached, every slot live")                                                       \
  X(slots, "object slots in those spans")                                                          \
  X(objects_in_use, "live objects (slots waiting in thread heaps excluded)")                       \
  X(meshed_spans, "virtual spans meshed onto the class's spans (each saved one span of memory)")
typedef struct mesh_class_stats_s {
#define MESH_CLASS_FIELD(name, doc) uint64_t name;
  MESH_CLASS_STATS(MESH_CLASS_FIELD)
#undef MESH_CLASS_FIELD
} mesh_class_stats_t;
MESH_API const char *mesh_class_stats_name(int i);
MESH_API int    mesh_class_stats(mesh_class_stats_t *out, int n);
/* Never meshes the spans under [addr, addr+len) again (as source or
 * destination): for memory whose protection the program changes, or that
 * the kernel writes behind libc's back. Returns the spans newly pinned.
 * libmesh.so calls it from mprotect, pkey_mprotect and setvbuf. */
MESH_API size_t mesh_pin(const void *addr, size_t len);
/* Writes the MALLOCSTATS summary to file descriptor fd. */
MESH_API void   mesh_stats_print(int fd);
/* Every field of the stats table, one "name value" line each. */
MESH_API void   mesh_stats_print_all(int fd);

#ifdef __cplusplus
}
#endif
#endif /* MESH_H */
