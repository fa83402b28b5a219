/* reserve.c - the arena's address space: where it is, how much of it is
 * mapped, and its page table and span records, which are sized by it.
 *
 * Without an address-space limit the whole arena (arena_gb GiB) is
 * reserved at start-up with MAP_NORESERVE, costing no memory, and so are
 * the page table and the span records for all of it: nothing ever grows.
 *
 * Under a finite RLIMIT_AS every mapped byte counts against the limit,
 * touched or not, so a fixed reservation would take from the program what
 * glibc would let it have (it took a quarter of the limit, and small blocks
 * failed there). Instead the arena gets an intended range ("room": at most
 * the limit) and maps only a prefix of it, grown as spans need pages; the
 * page table and the span records follow, each a prefix of its own range
 * right after the arena's. The three ranges are one contiguous stretch of
 * address space placed well below where the kernel puts new mappings, so
 * the program's mappings (which the limit keeps smaller than it) come down
 * towards it without reaching it; each growth maps the next piece with
 * MAP_FIXED_NOREPLACE, which never takes anyone's mapping. If one is there
 * anyway the arena stops growing at that point, and large blocks go to
 * mappings of their own (direct.c), as they do when the limit is reached.
 *
 * Invariants: size (the mapped prefix) <= room, both page multiples;
 * npages == size / page; the page table has an entry for each mapped page
 * and max_spans records are mapped (>= npages + 2); room == size without a
 * limit. A pointer in [base, base + size) is the arena's (the fast paths'
 * test): nothing else can be mapped inside the prefix.
 *
 * Locking: growth runs under _mesh_global_lock. size only grows, and is
 * stored (release) after the page table and records behind it are mapped;
 * a free of a block from the new pages got that pointer from an
 * allocation made after the store, so it reads the new size.
 */
#include "internal.h"

#include <errno.h>

#define MIN_ARENA ((size_t)16 << 20)

/* Address space left unused above the arena. The kernel places the arena
 * right under the mapping before it (ld.so's, with the thread-local block
 * and libc's data), so with a power-of-two arena size the first spans sat
 * exactly 2^k below those lines: the same low 28 address bits, hence the
 * same L1 set and the same way-predictor tag on AMD, and a block there
 * evicted the thread-local heap pointer on every access (+5 ns a
 * malloc/free pair in 3 of 50 processes of perf/micro bench a, for the
 * 64-byte class). This odd-sized gap (~43 MiB, bits 13-25 mixed) moves the
 * mirror of those lines far from where a heap starts. */
#define ARENA_GUARD ((size_t)0x2B5A << MESH_PAGE_SHIFT)

static size_t page_round(size_t n) { return (n + MESH_PAGE_SIZE - 1) & ~(MESH_PAGE_SIZE - 1); }

/* ---- a fixed reservation (no limit, or no room found under one) ------ */

static bool reserve(size_t size, int fd) {
  if (fd >= 0 && _mesh_os_ftruncate(fd, size) != 0) return false;
  /* no gap under an address-space limit: it would count against it */
  size_t guard = _mesh_os_as_limit() == SIZE_MAX ? ARENA_GUARD : 0;
  void *base = _mesh_os_reserve_guarded(size, guard, -1);
  if (!base) { /* a tight address-space limit: without the gap, then */
    guard = 0;
    base = _mesh_os_reserve(size, -1);
  }
  if (!base) return false;
  size_t npages = size >> MESH_PAGE_SHIFT;
  void *pt = _mesh_os_alloc(npages * sizeof(pte_t));
  void *sp = _mesh_os_alloc((npages + 2) * sizeof(span_t));
  if (!pt || !sp) {
    if (pt) _mesh_os_free(pt, npages * sizeof(pte_t));
    if (sp) _mesh_os_free(sp, (npages + 2) * sizeof(span_t));
    _mesh_os_free(base, size + guard);
    return false;
  }
  _mesh_arena.base = (uintptr_t)base;
  _mesh_arena.size = size;
  _mesh_arena.room = size;
  _mesh_arena.npages = (uint32_t)npages;
  _mesh_arena.fd = fd;
  _mesh_arena.meshable = fd >= 0;
  _mesh_arena.memfd_mapped = fd >= 0;
  _mesh_arena.pagetable = pt;
  _mesh_arena.spans = sp;
  _mesh_arena.max_spans = (uint32_t)npages + 2;
  return true;
}

/* Halving from size until a reservation maps. */
static bool reserve_fixed(size_t want, size_t size, size_t limit, int *fd) {
  for (; size >= MIN_ARENA; size = (size / 2) & ~(MESH_PAGE_SIZE - 1)) {
    if (reserve(size, *fd)) break;
    /* A memfd that cannot be sized (odd seccomp/limits) is given up before
     * shrinking to nothing: anonymous memory still works. */
    if (*fd >= 0 && size / 2 < MIN_ARENA) {
      _mesh_warning("cannot size the arena's memfd (errno %d): running without meshing", errno);
      _mesh_os_close(*fd);
      *fd = -1;
      size = want * 2;
      if (limit != SIZE_MAX && size > limit / 2) size = limit / 2;
    }
  }
  if (!_mesh_arena.base) return false;
  if (size < want)
    _mesh_warning("arena reduced to %zu MiB (address-space limit); large blocks beyond it are mapped on their own",
                  size >> 20);
  return true;
}

/* ---- a growing prefix (under a limit) ------------------------------- */

/* The page table's and the records' ranges, and how much of each is mapped. */
static uintptr_t pt_at, sp_at;
static size_t pt_mapped, sp_mapped;
#define FIRST_GROWTH ((size_t)8 << 20) /* mapped at start-up */
#define MIN_GROWTH ((size_t)2 << 20)

/* Maps [at + *mapped, at + len) if len is more than what is mapped. */
static bool extend(uintptr_t at, size_t *mapped, size_t len) {
  if (len <= *mapped) return true;
  if (_mesh_os_map_at((void *)(at + *mapped), len - *mapped) != 0) return false;
  *mapped = len;
  return true;
}

/* Maps the arena's first `bytes`, with the page table and records they
 * need; false (nothing more mapped) if the kernel refuses. */
static bool map_prefix(size_t bytes) {
  size_t np = bytes >> MESH_PAGE_SHIFT, pt0 = pt_mapped, sp0 = sp_mapped, size = _mesh_arena.size;
  size_t pt = page_round(np * sizeof(pte_t)), sp = page_round((np + 2) * sizeof(span_t));
  if (!extend(pt_at, &pt_mapped, pt) || !extend(sp_at, &sp_mapped, sp) ||
      !extend(_mesh_arena.base, &size, bytes)) {
    int e = errno;
    /* what this growth mapped goes back: it would only count against the limit */
    if (pt_mapped > pt0) _mesh_os_free((void *)(pt_at + pt0), pt_mapped - pt0), pt_mapped = pt0;
    if (sp_mapped > sp0) _mesh_os_free((void *)(sp_at + sp0), sp_mapped - sp0), sp_mapped = sp0;
    errno = e;
    return false;
  }
  size_t recs = sp_mapped / sizeof(span_t);
  _mesh_arena.max_spans = recs > UINT32_MAX ? UINT32_MAX : (uint32_t)recs;
  _mesh_arena.npages = (uint32_t)np;
  __atomic_store_n(&_mesh_arena.size, bytes, __ATOMIC_RELEASE); /* after what it covers (top comment) */
  return true;
}

/* Places the room (arena, page table, records) twice the limit below a
 * fresh mapping: the kernel hands out new mappings from there downwards,
 * and the limit keeps all of them together smaller than that. */
static bool reserve_growing(size_t room, size_t limit, int fd) {
  room &= ~(MESH_PAGE_SIZE - 1);
  size_t np = room >> MESH_PAGE_SHIFT;
  size_t pt = page_round(np * sizeof(pte_t)), sp = page_round((np + 2) * sizeof(span_t));
  size_t stretch = room + pt + sp;
  void *probe = _mesh_os_alloc(MESH_PAGE_SIZE);
  if (!probe) return false;
  _mesh_os_free(probe, MESH_PAGE_SIZE);
  uintptr_t below = (uintptr_t)probe, dist = 2 * (uintptr_t)limit + stretch;
  if (room < MIN_ARENA || np > UINT32_MAX || limit > ((uintptr_t)1 << 44) || below < dist + ((uintptr_t)1 << 32))
    return false;
  if (fd >= 0 && _mesh_os_ftruncate(fd, room) != 0) return false;
  _mesh_arena.base = (below - dist) & ~(((uintptr_t)2 << 20) - 1);
  pt_at = _mesh_arena.base + room;
  sp_at = pt_at + pt;
  _mesh_arena.pagetable = (pte_t *)pt_at;
  _mesh_arena.spans = (span_t *)sp_at;
  _mesh_arena.room = room;
  if (!map_prefix(room < FIRST_GROWTH ? room : FIRST_GROWTH)) {
    _mesh_arena.base = 0;
    _mesh_arena.room = 0;
    return false;
  }
  _mesh_arena.fd = fd;
  _mesh_arena.meshable = fd >= 0;
  _mesh_arena.memfd_mapped = fd >= 0;
  return true;
}

/* Lock held: maps more of the arena so that it has at least `pages`
 * pages: a quarter more than it has (fewer growths, each three system
 * calls), or, if the limit refuses that, exactly what is needed. */
bool _mesh_arena_grow(uint64_t pages) {
  size_t size = _mesh_arena.size, room = _mesh_arena.room;
  if (pages > (room >> MESH_PAGE_SHIFT)) return false; /* also: no limit, all mapped */
  size_t need = (size_t)pages << MESH_PAGE_SHIFT;
  size_t step = size / 4 > MIN_GROWTH ? page_round(size / 4) : MIN_GROWTH;
  size_t more = size + step > need ? size + step : need;
  if (more > room) more = room;
  if (map_prefix(more) || (more > need && map_prefix(need))) {
    mesh_stat_add(arena_growths, 1);
    return true;
  }
  if (errno == EEXIST) { /* someone mapped into the room: the arena ends here */
    _mesh_arena.room = _mesh_arena.size;
    _mesh_warning("the arena cannot grow past %zu MiB (a mapping took the address range after it); large "
                  "blocks beyond it are mapped on their own", _mesh_arena.size >> 20);
  }
  return false;
}

bool _mesh_arena_init(void) {
  size_t want = (size_t)mesh_opt(MESH_OPT_ARENA_GB) << 30;
  if (want > ((size_t)1 << 44)) want = (size_t)1 << 44; /* 2^32 pages of 4 KiB */
  size_t limit = _mesh_os_as_limit();
  int fd = -1;
  if (mesh_opt(MESH_OPT_MEMFD)) {
    fd = _mesh_os_memfd();
    if (fd >= 0 && _mesh_os_fd_identity(fd, _mesh_arena.fd_id) != 0) {
      _mesh_os_close(fd);
      fd = -1;
    }
    if (fd < 0)
      _mesh_warning("memfd_create failed (errno %d): running without meshing", errno);
  } else {
    _mesh_warning("MESH_MEMFD=0: anonymous arena, running without meshing");
  }
  if (limit != SIZE_MAX && reserve_growing(want < limit ? want : limit, limit, fd)) return true;
  /* No room found under the limit: a fixed quarter of it, as it once was. */
  size_t size = limit != SIZE_MAX && want > limit / 4 ? limit / 4 : want;
  return reserve_fixed(want, size & ~(MESH_PAGE_SIZE - 1), limit, &fd);
}
