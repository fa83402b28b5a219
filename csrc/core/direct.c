/* direct.c - large blocks the arena cannot hold, mapped on their own.
 *
 * The arena is one range, reserved at start-up or, under an address-space
 * limit (ulimit -v), mapped as it is used (reserve.c); a large request
 * bigger than what it has mapped, or that finds no room there (the arena
 * cannot grow: the limit, or a mapping in its way), is served here by a
 * private anonymous mapping of its own, as glibc serves blocks past its
 * mmap threshold. Such a block is never meshed (it is not in the
 * memfd) and goes back to the OS whole when freed; realloc moves it with
 * mremap. So a program can use what the limit lets it, not a quarter.
 *
 * The blocks are found by address in an open-addressing hash table
 * (linear probing, backward-shift deletion, grown at half load) in memory
 * of our own (_mesh_os_alloc). Invariants: every live direct block has
 * exactly one entry, keyed by its page-aligned start; direct_bytes_in_use
 * is the sum of their lengths.
 *
 * Locking: a mutex of its own (direct blocks never touch the arena), never
 * held across another lock. fork: the table is private memory and the
 * mappings are private, so the child has its own copy of both; the lock
 * is taken around fork (init.c's handlers) so that the copy is consistent.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <sys/mman.h>

typedef struct {
  uintptr_t addr; /* 0: empty slot */
  size_t len;     /* bytes mapped (page multiple) */
} direct_t;

static pthread_mutex_t direct_lock = PTHREAD_MUTEX_INITIALIZER;
static direct_t *table; /* (direct_lock) */
static size_t cap;      /* (direct_lock) slots, a power of two */
static size_t used;     /* (direct_lock) live entries */
/* Set (release) before the first direct block is handed out: until then
 * every lookup answers "not a direct block" without the lock, which the
 * Python face asks for every foreign block it frees (pymalloc's, from
 * before install). A pointer that is a direct block reached its user after
 * the store, so the acquire load sees it. */
static _Atomic bool any_direct;

static size_t home(uintptr_t addr) {
  uint64_t h = (uint64_t)(addr >> MESH_PAGE_SHIFT) * 0x9E3779B97F4A7C15ull;
  return (size_t)(h >> 17) & (cap - 1);
}

/* (direct_lock) The slot of addr, or of the empty slot where it would go. */
static size_t find(uintptr_t addr) {
  size_t i = home(addr);
  while (table[i].addr && table[i].addr != addr) i = (i + 1) & (cap - 1);
  return i;
}

/* (direct_lock) Doubles the table (or makes the first one). */
static bool grow(void) {
  size_t ncap = cap ? cap * 2 : 64;
  direct_t *nt = _mesh_os_alloc(ncap * sizeof *nt);
  if (!nt) return false;
  direct_t *old = table;
  size_t ocap = cap;
  table = nt;
  cap = ncap;
  for (size_t i = 0; i < ocap; i++)
    if (old[i].addr) table[find(old[i].addr)] = old[i];
  if (old) _mesh_os_free(old, ocap * sizeof *old);
  return true;
}

/* (direct_lock) Removes slot i, shifting back the entries that probed past it. */
static void remove_at(size_t i) {
  size_t j = i;
  for (;;) {
    j = (j + 1) & (cap - 1);
    if (!table[j].addr) break;
    size_t h = home(table[j].addr);
    /* j's entry may move to i if its home is not in (i, j] cyclically */
    if ((j > i && (h <= i || h > j)) || (j < i && h <= i && h > j)) {
      table[i] = table[j];
      i = j;
    }
  }
  table[i].addr = 0;
  table[i].len = 0;
  used--;
}

void *_mesh_direct_alloc(size_t size, size_t align) {
  size_t len = (size + MESH_PAGE_SIZE - 1) & ~(size_t)(MESH_PAGE_SIZE - 1);
  if (len < size || align > ((size_t)1 << 40)) {
    errno = ENOMEM;
    return NULL;
  }
  size_t extra = align > MESH_PAGE_SIZE ? align - MESH_PAGE_SIZE : 0;
  if (len + extra < len) {
    errno = ENOMEM;
    return NULL;
  }
  char *m = _mesh_os_map_anon(len + extra);
  if (!m) {
    errno = ENOMEM;
    return NULL;
  }
  char *p = m;
  if (extra) { /* trim to the alignment asked */
    p = (char *)(((uintptr_t)m + align - 1) & ~(uintptr_t)(align - 1));
    if (p > m) _mesh_os_free(m, (size_t)(p - m));
    if (p + len < m + len + extra) _mesh_os_free(p + len, (size_t)(m + len + extra - (p + len)));
  }
  pthread_mutex_lock(&direct_lock);
  if ((used + 1) * 2 > cap && !grow()) {
    pthread_mutex_unlock(&direct_lock);
    _mesh_os_free(p, len);
    errno = ENOMEM;
    return NULL;
  }
  table[find((uintptr_t)p)] = (direct_t){(uintptr_t)p, len};
  used++;
  mesh_store_release(&any_direct, true);
  pthread_mutex_unlock(&direct_lock);
  mesh_stat_add(direct_alloc_count, 1);
  mesh_stat_add(direct_bytes_in_use, len);
  return p; /* fresh anonymous pages are zero */
}

size_t _mesh_direct_size(const void *p) {
  if (((uintptr_t)p & (MESH_PAGE_SIZE - 1)) || !mesh_load_acquire(&any_direct)) return 0;
  pthread_mutex_lock(&direct_lock);
  size_t len = 0;
  if (cap) {
    size_t i = find((uintptr_t)p);
    len = table[i].addr ? table[i].len : 0;
  }
  pthread_mutex_unlock(&direct_lock);
  return len;
}

bool _mesh_direct_free(void *p) {
  if (((uintptr_t)p & (MESH_PAGE_SIZE - 1)) || !mesh_load_acquire(&any_direct)) return false;
  pthread_mutex_lock(&direct_lock);
  size_t i = cap ? find((uintptr_t)p) : 0, len = cap ? table[i].len : 0;
  bool ours = cap && table[i].addr != 0;
  if (ours) remove_at(i);
  pthread_mutex_unlock(&direct_lock);
  if (!ours) return false;
  _mesh_os_free(p, len);
  mesh_stat_add(direct_free_count, 1);
  mesh_stat_sub(direct_bytes_in_use, len);
  return true;
}

void *_mesh_direct_realloc(void *p, size_t size) {
  size_t len = (size + MESH_PAGE_SIZE - 1) & ~(size_t)(MESH_PAGE_SIZE - 1);
  if (len < size) {
    errno = ENOMEM;
    return NULL;
  }
  pthread_mutex_lock(&direct_lock);
  size_t i = cap ? find((uintptr_t)p) : 0, old = cap ? table[i].len : 0;
  if (!cap || !table[i].addr) {
    pthread_mutex_unlock(&direct_lock);
    errno = EINVAL;
    return NULL;
  }
  void *q = len == old ? p : _mesh_os_remap(p, old, len);
  if (!q) {
    pthread_mutex_unlock(&direct_lock);
    errno = ENOMEM;
    return NULL;
  }
  if (q != p) {
    remove_at(i);
    table[find((uintptr_t)q)] = (direct_t){(uintptr_t)q, len};
    used++;
  } else {
    table[i].len = len;
  }
  pthread_mutex_unlock(&direct_lock);
  mesh_stat_sub(direct_bytes_in_use, old);
  mesh_stat_add(direct_bytes_in_use, len);
  return q;
}

void _mesh_direct_before_fork(void) { pthread_mutex_lock(&direct_lock); }
void _mesh_direct_after_fork(bool child) {
  if (child) pthread_mutex_init(&direct_lock, NULL);
  else pthread_mutex_unlock(&direct_lock);
}
