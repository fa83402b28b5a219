/* types.h - every internal type of the meshalloc core, with its invariants.
 *
 * Vocabulary (the paper's): a *page* is 4 KiB; a *span* is a run of pages
 * described by one span record; the *arena* is one reserved virtual range
 * backed by a memfd so a physical span can be mapped at several virtual
 * addresses; a *thread heap* owns a *shuffle vector* per size class; the
 * *global heap* owns every span no thread heap has attached.
 *
 * Object memory and metadata never share pages: span records, the page
 * table and thread heaps live in private anonymous mappings of their own, so
 * a heap overflow cannot rewrite a bitmap, and fork's kernel copy-on-write
 * snapshots all metadata exactly while object memory (MAP_SHARED) is copied
 * by fork.c.
 *
 * Span bitmap invariant (the "exact bitmap" the mesher relies on):
 *   - a detached span's bit i is 1 iff slot i holds a live object;
 *   - an attached span's bit i is 1 iff slot i is live OR sits in the owning
 *     thread heap's shuffle vector. Frees from other threads clear bits
 *     atomically; the owner takes cleared bits back with an atomic fetch_or
 *     ("reclaim").
 *   Only detached spans are ever meshed, so the mesher sees exact bitmaps.
 *
 * Free key invariant (how a free knows a slot is already free without a
 * second bitmap): _mesh_arena.free_key is a random non-zero 64-bit value
 * drawn once per process. A slot that sits in a shuffle vector holds it in
 * its second word (bytes 8..15; every class is >= 16 bytes); a block handed
 * out never does, because the pop that hands it out stores 0 there; a free
 * slot outside every vector does not either, because whatever takes a slot
 * out of a vector without handing it out (detach) stores 0 there too. Who
 * writes it: the owner thread, when a slot enters its vector (a local free,
 * a reclaim or refill). So a free that finds the key has found a free slot;
 * a live block holds the key only if the program wrote those exact 8 bytes
 * (odds 2^-64 for any value not read out of a free slot).
 */
#ifndef MESH_TYPES_H
#define MESH_TYPES_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "atomic.h"

#ifndef MESH_DEBUG
#define MESH_DEBUG 0 /* 0 off, 1 cheap checks, 2 internal asserts, 3 validators at transitions */
#endif

#define MESH_PAGE_SHIFT 12
#define MESH_PAGE_SIZE ((size_t)1 << MESH_PAGE_SHIFT)
#define MESH_MIN_ALIGN 16

/* Size classes: 16-byte steps to 512 (pymalloc's granularity, so internal
 * fragmentation is never worse than the default), then four steps per
 * doubling to 16 KiB. Anything larger is a "large" span of its own. */
#define MESH_NUM_CLASSES 52
#define MESH_SMALL_MAX 16384
#define MESH_CLASS_LARGE 0xFF
#define MESH_SPAN_MAX_OBJECTS 256 /* bitmap is 4 words */
#define MESH_SPAN_MIN_OBJECTS 8
/* Span sizes (size_class.c, option span_pages): as small as the page
 * allows by default. Two spans of n slots at occupancy p mesh with
 * probability about (1 - p*p)^n: with 4-page spans the 64-byte class (256
 * slots) stopped meshing at ~25 % occupancy, with one page (64 slots) it
 * goes on to ~45 %. The price is a kernel mapping per meshed page instead of
 * one per four, which the mapping budget (mesh.c) bounds. */
#define MESH_BITMAP_WORDS 4

/* A thread heap attaches spans to a size class until their objects add up to
 * at most MESH_VECTOR_CAPACITY, so the shuffle vector can never overflow:
 * every entry is a distinct free slot of an attached span. */
#define MESH_VECTOR_CAPACITY 256
#define MESH_MAX_ATTACHED 8
#define MESH_FACE_COUNTS 16 /* thread_heap_t.face_counts_0 and face_lines[], see mesh_face_count() */
#define MESH_ATTACH_MAX_BYTES (128 * 1024)

/* Occupancy bins for detached partial spans: reuse prefers fuller spans.
 * A partial span with no live object is in its class's list of empty spans
 * instead, bin field MESH_BIN_EMPTY (global_heap.c). */
#define MESH_OCC_BINS 4
#define MESH_BIN_EMPTY MESH_OCC_BINS
/* A span kept by a thread heap for its next refill of the class
 * (global_heap.c, "Kept spans"), in the heap's list: bin field
 * MESH_BIN_KEPT if it is empty (it stays so), MESH_BIN_KEPT_LIVE while it
 * holds live objects (a FULL span the heap had filled). */
#define MESH_BIN_KEPT (MESH_OCC_BINS + 1)
#define MESH_BIN_KEPT_LIVE (MESH_OCC_BINS + 2)
#define mesh_bin_kept(b) ((b) >= MESH_BIN_KEPT) /* (of a PARTIAL span) */
/* Pages of kept spans a thread heap holds at most. */
#define MESH_KEPT_PAGES 32
/* Free page-run bins: exact for 1..32 pages, then one per power of two. */
#define MESH_FREE_BINS 64

#define MESH_NIL 0u              /* span id 0 is never a real span */
#define MESH_OWNER_NONE 0u        /* span->owner of a detached span */
#define MESH_OWNER_SENTINEL 0xFFFFFFFFu /* id of the empty/dead sentinel heaps */

enum span_state {
  SPAN_NONE = 0,  /* record unused (or the nil record) */
  SPAN_FREE,      /* a free page run in the arena's free bins */
  SPAN_ATTACHED,  /* small span owned by a thread heap */
  SPAN_PARTIAL,   /* detached small span with free slots, in an occupancy bin */
  SPAN_FULL,      /* detached small span with no free slot, in no list */
  SPAN_LARGE,     /* one large object */
  SPAN_ALIAS,     /* a virtual span meshed onto another span's physical pages;
                     mesh_dst names that span, which owns the bitmap */
  SPAN_RETIRED,   /* a freed alias or destination whose anonymous mapping could
                     not be restored (the kernel's mapping limit): still mapped
                     onto memfd page bits[0], never handed out, restored by a
                     later retry */
};

/* span flags */
#define SPAN_PINNED 1u /* never meshed: the program changed its pages' protection, or the
                          kernel may write into them behind libc (a stdio buffer) */
#define SPAN_FILE 2u   /* its physical pages are the memfd's, at its own page (it is, or
                          was, a meshing destination); else private anonymous memory */
/* Bits 2-7: the frozen generation (1-63) whose file a destination or a
 * retired range maps privately since a fork froze it (memfd.c, "Frozen
 * generations"); 0 for the current memfd. A frozen span is never meshed
 * again. Generations are numbered in turn and wrap after 63 (only the
 * mapping count could then take two for one). */
#define SPAN_GEN_SHIFT 2
#define SPAN_GEN_MASK 0xFCu
#define mesh_span_gen(s) (((s)->flags & SPAN_GEN_MASK) >> SPAN_GEN_SHIFT)

/* One span record: 64 bytes, one cache line. Fields marked (lock) change only
 * under the global lock; (owner) only by the attached thread heap. */
typedef struct span_s {
  _Atomic uint64_t bits[MESH_BITMAP_WORDS]; /* slot occupancy, see invariant above; FREE runs: bits[0] = 1 if dirty */
  uint32_t page;        /* (lock) first arena page; also its memfd page when SPAN_FILE */
  uint32_t npages;      /* (lock) pages in the span */
  uint32_t next;        /* (lock) link in an occupancy bin or free-run bin */
  union {
    uint32_t prev;      /* (lock) back link in a bin */
    uint32_t filler;    /* (lock) SPAN_FULL: id of the thread heap it was detached from */
    _Atomic uint32_t mesh_dst; /* SPAN_ALIAS: the span whose physical pages back this one */
  };
  _Atomic uint8_t att;  /* (lock) index of the attachment in the owner's vector; read racily by remote frees */
  uint8_t bin;          /* (lock) occupancy bin or free-run bin index */
  uint8_t naliases;     /* (lock) alias records in the chain (virtual spans backed by this one, minus 1) */
  uint8_t flags;        /* (lock) SPAN_PINNED, SPAN_FILE, the frozen generation; also keeps the record at 64 bytes */
  uint32_t alias_next;  /* (lock) next alias record in the chain of virtual spans meshed onto this span */
  /* the free path's loads: the last 8 bytes (see "Store and load zones") */
  _Atomic uint32_t owner; /* thread heap id while attached, MESH_OWNER_NONE otherwise */
  uint16_t nobjects;    /* (lock) slots in the span (1 for large) */
  uint8_t cls;          /* (lock) size class, MESH_CLASS_LARGE for large */
  _Atomic uint8_t state;/* (lock) enum span_state; read racily only as a hint */
} span_t;


_Static_assert(sizeof(span_t) == 64, "span record must stay one cache line");

/* Page-table entry: (virtual span start page << 32) | span id. The start page
 * lets a pointer's offset be computed inside whichever virtual span (original
 * or, after meshing, alias) it points into. 0 means "no span here". */
typedef _Atomic uint64_t pte_t;

/* One span attached to a shuffle vector: what the fast paths need about it
 * in one cache line, so a pop or a push indexes one array with the entry's
 * attachment number instead of three. */
typedef struct sv_attachment_s {
  uint32_t span;           /* span id */
  uint32_t pad0;
  _Atomic uint64_t *bits;  /* the span record's shared bitmap (records never move) */
  uint64_t pad1[5];        /* (which slots are in entries[] is the free key's business: see above) */
  uintptr_t base;          /* primary address of the span */
} sv_attachment_t;

_Static_assert(sizeof(sv_attachment_t) == 64, "an attachment must stay one cache line");

/* One size class's view in a thread heap. Only the owning thread touches
 * anything but the counters, which stats readers load relaxed. */
typedef struct shuffle_vector_s {
  uint32_t total_bytes;             /* sum of span bytes over attachments */
  uint8_t natt;                     /* attached spans */
  uint8_t cls;
  uint16_t total_objects;           /* sum of nobjects over attachments */
  uint64_t recip;                   /* ceil(2^32 / size): offset -> slot without a divide */
  _Atomic uint32_t len;             /* entries[0..len) are free slots, random order (store zone; 32 bits:
                                       a 16-bit one cost a zero-extension on both fast paths). Owner only,
                                       relaxed (plain moves); stats readers load it racily */
  uint8_t pad[36];
  uint32_t size;                    /* object size of the class */
  uint32_t pad1;
  _Alignas(64) sv_attachment_t att[MESH_MAX_ATTACHED]; /* each on its own cache line */
  uintptr_t entries[MESH_VECTOR_CAPACITY]; /* the free slots' primary addresses (shuffle_vector.h) */
  /* Never touched: a power-of-two size makes a class's vector one shift
   * away from the heap on both fast paths (a 1600-byte vector took three
   * instructions). Address space only: a heap is zeroed anonymous memory
   * whose untouched pages cost nothing. */
  uint8_t pad_pow2[4096 - 64 - MESH_MAX_ATTACHED * 64 - MESH_VECTOR_CAPACITY * 8];
} shuffle_vector_t;

_Static_assert(offsetof(shuffle_vector_t, att) % 64 == 0 && sizeof(shuffle_vector_t) == 4096,
               "attachment records must start on cache lines; a vector is a power of two");
/* the part of a vector that is ever used (thread_heap_bytes counts it) */
#define MESH_SV_USED_BYTES offsetof(shuffle_vector_t, pad_pow2)

/* Counters a face keeps on its hot paths (the Python hooks: per domain,
 * blocks allocated, reallocated and freed, and foreign blocks handed on),
 * in the thread heap because the fast path already holds it: no second
 * thread-local access. Written by the owner only (relaxed load + store);
 * they stay with the heap when its thread exits, so the sum over every
 * heap ever created is exact. Four per cache line, in the line's store
 * zone (see "Store and load zones" below); mesh_face_count() indexes them.
 * A thread with no heap counts into shared atomics instead (face.h). */
#define MESH_FACE_COUNTS_PER_LINE 4

typedef struct face_count_line_s {
  uint64_t load_zone[2];
  _Atomic uint64_t n[MESH_FACE_COUNTS_PER_LINE]; /* store zone */
  uint64_t tail[2];
} face_count_line_t;

typedef struct thread_heap_s {
  /* line 0 */
  struct thread_heap_s *all_next;  /* (lock) every heap ever created, for stats and fork */
  struct thread_heap_s *pool_next; /* (lock) released heaps waiting for a new thread */
  _Atomic uint64_t face_counts_0[MESH_FACE_COUNTS_PER_LINE]; /* counts 0..3 (store zone) */
  uint64_t rng;                /* per-heap random state (wyrand) */
  uint32_t id;                 /* > 0; MESH_OWNER_SENTINEL for the sentinels (load slot) */
  uint16_t live;               /* 1 while registered to a running thread */
  uint16_t shuffle;            /* allocation order mode (the shuffle option at creation) */
  /* lines 1..3: counts 4..15 */
  _Alignas(64) face_count_line_t face_lines[MESH_FACE_COUNTS / MESH_FACE_COUNTS_PER_LINE - 1];
  shuffle_vector_t sv[MESH_NUM_CLASSES];
  /* (lock) the spans this heap keeps, per class, linked by next; their pages */
  uint32_t kept[MESH_NUM_CLASSES];
  uint32_t kept_pages;
} thread_heap_t;

/* Store and load zones.
 *
 * A load whose address has the same low 12 bits as an older store still in
 * flight (a "4K alias": same offset in another page), and overlaps its
 * bytes, can be held back or replayed on x86 until the store resolves. On
 * the AMD EPYC this project is measured on, one such pair in the
 * malloc/free loop cost ~11 ns a pair (11 -> 22 ns), in the processes whose
 * physical pages happened to line up for it: a few sizes in one process in
 * four (perf/micro bench a; the offsets differ per process and per class
 * since static data, TLS and the heap come from separate mappings).
 *
 * So every structure the fast paths touch splits its cache lines the same
 * way: the fields the fast paths store to lie at line offsets [16, 48)
 * (the store zone), the other fields they load at [0, 16) or [48, 64) (the
 * load zones), where they fit in a load slot (MESH_IN_LOAD_SLOT, below). A
 * fast-path store can then never alias a fast-path load of another
 * structure, wherever the mappings land. Loads of a field the fast
 * path itself stored (sv->len) are true dependencies and stay
 * where they are. Exceptions, placed where they fall: page-table entries
 * (8 bytes anywhere), span bitmaps (32 bytes from offset 0) and the
 * entries[] array (4-byte slots anywhere; its loads read what its stores
 * wrote). Static data: the class is computed up to 1 KiB and read from a
 * zoned table above (internal.h), the arena description and the size-class
 * records are line aligned and zoned, and the thread-local block is line
 * aligned with the heap pointer first (internal.h). docs/design.md, "Store
 * and load zones", has the measurements. */
#define MESH_ZONE_START(T, f) (offsetof(T, f) % 64)
#define MESH_ZONE_END(T, f) (MESH_ZONE_START(T, f) + sizeof(((T *)0)->f))
#define MESH_IN_LOAD_ZONE(T, f) (MESH_ZONE_END(T, f) <= 16 || MESH_ZONE_START(T, f) >= 48)
#define MESH_IN_STORE_ZONE(T, f) (MESH_ZONE_START(T, f) >= 16 && MESH_ZONE_END(T, f) <= 48)
/* A load slot is the second half of a 16-byte granule in a load zone: bytes
 * 8-15 or 56-63. Blocks start on 16 bytes, and the first store to a new
 * block (a header, a reference count) is most often its first 8 bytes, so
 * it cannot alias a load slot either. */
#define MESH_IN_LOAD_SLOT(T, f)                                         \
  ((MESH_ZONE_START(T, f) >= 8 && MESH_ZONE_END(T, f) <= 16) ||         \
   (MESH_ZONE_START(T, f) >= 56 && MESH_ZONE_END(T, f) <= 64))
_Static_assert(MESH_IN_STORE_ZONE(shuffle_vector_t, len) && MESH_IN_LOAD_SLOT(shuffle_vector_t, size) &&
                   MESH_IN_LOAD_SLOT(shuffle_vector_t, recip),
               "vector header zones");
_Static_assert(MESH_IN_LOAD_SLOT(sv_attachment_t, base) &&
                   MESH_IN_LOAD_SLOT(sv_attachment_t, bits),
               "attachment zones");
_Static_assert(MESH_IN_LOAD_SLOT(span_t, owner) && MESH_IN_LOAD_SLOT(span_t, nobjects) &&
                   MESH_IN_LOAD_SLOT(span_t, cls) && MESH_IN_LOAD_SLOT(span_t, state) && MESH_IN_LOAD_ZONE(span_t, att),
               "span record zones (bits excepted)");
_Static_assert(MESH_IN_LOAD_SLOT(thread_heap_t, id) && MESH_IN_STORE_ZONE(thread_heap_t, face_counts_0) &&
                   MESH_IN_STORE_ZONE(face_count_line_t, n) && sizeof(face_count_line_t) == 64 &&
                   offsetof(thread_heap_t, face_lines) == 64 && MESH_FACE_COUNTS % MESH_FACE_COUNTS_PER_LINE == 0,
               "thread heap header zones");

/* One line per class: the free path of a span the thread does not hold
 * reads size, recip and nobjects, so they sit in a load zone (above). */
typedef struct size_class_s {
  _Alignas(64) uint32_t npages; /* pages per span */
  uint64_t recip;    /* ceil(2^32 / size) */
  uint8_t pad[40];
  uint32_t size;
  uint16_t nobjects; /* slots per span */
} size_class_t;

_Static_assert(MESH_IN_LOAD_SLOT(size_class_t, recip) && MESH_IN_LOAD_SLOT(size_class_t, size) &&
                   MESH_IN_LOAD_SLOT(size_class_t, nobjects) && sizeof(size_class_t) == 64,
               "size class zones");

/* Process-wide arena description; written at init (and by fork in the
 * child), read everywhere without a lock; under an address-space limit
 * size, npages and max_spans grow later, under the lock (reserve.c). */
typedef struct arena_s {
  /* line 0 */
  _Alignas(64) uint32_t npages; /* size / page */
  int fd;            /* memfd for meshing destinations, or -1 (no meshing) */
  uintptr_t base;    /* first byte of the arena, 0 before init (load slot) */
  uint32_t max_spans;
  bool meshable;     /* a memfd with its descriptor: aliases possible */
  bool memfd_mapped; /* spans may map the memfd (also once its descriptor was lost) */
  uint8_t pad0[2];
  uint64_t fd_id[2]; /* the memfd's (device, inode), checked before the descriptor is used */
  size_t room;       /* bytes the arena may grow to; == size without an address-space limit (reserve.c) */
  uint64_t free_key; /* the free key (see the invariant above): set at init, never 0 (load zone) */
  size_t size;       /* mapped bytes (load slot): grows only under an address-space limit */
  /* line 1 */
  uint64_t pad1;
  pte_t *pagetable;  /* npages entries (load slot) */
  uint8_t pad2[40];
  span_t *spans;     /* record array, index = span id (load slot) */
} arena_t;

_Static_assert(MESH_IN_LOAD_SLOT(arena_t, base) && MESH_IN_LOAD_SLOT(arena_t, size) && MESH_IN_LOAD_ZONE(arena_t, free_key) &&
                   MESH_IN_LOAD_SLOT(arena_t, pagetable) && MESH_IN_LOAD_SLOT(arena_t, spans) && _Alignof(arena_t) == 64 &&
                   sizeof(arena_t) == 128,
               "arena description zones");

#endif
