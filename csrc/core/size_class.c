/* size_class.c - the size-class table and the size -> class lookups.
 *
 * Classes: 16..512 in 16-byte steps (32 classes), then 4 per doubling up to
 * 16 KiB (20 classes). Each class's span is the fewest pages, from those
 * that hold MESH_SPAN_MIN_OBJECTS (or the span_pages option, if more),
 * whose tail waste is at most 1/28 of the span; where none of the next four
 * sizes is, the one of them with the least waste. Small spans mesh best
 * (types.h); the waste rule keeps memory lost to span tails under ~3.6 %.
 * It was 1/40 (2.5 %): 1/28 gives 208, 304 and 496 bytes one page instead
 * of 2, 3 and 4 (19, 13 and 8 slots instead of 39, 40 and 33) and 416
 * bytes 2 pages instead of 3, for 2-3 points more tail in those classes;
 * their spans then mesh at the occupancy the one-page classes reach
 * (frag_bands: 45 % -> 60-70 %, docs/meshing.md).
 * The class records and the class table are filled once by init before any
 * allocation. Up to 1 KiB the class of a size is computed (mesh_class_of,
 * internal.h); above, one byte of a table laid out in load zones (types.h)
 * gives it.
 */
#include "internal.h"

size_class_t _mesh_classes[MESH_NUM_CLASSES];
_Alignas(64) _Atomic uint8_t _mesh_class_by_128[(MESH_SMALL_MAX / 128 / 32 + 1) * 64];

static uint32_t class_size(unsigned c) {
  if (c < 32) return 16u * (c + 1);
  unsigned k = c - 32;             /* 0..19 */
  uint32_t base = 512u << (k / 4); /* 512, 1024, ... */
  return base + (base / 4) * (k % 4 + 1);
}

void _mesh_size_classes_init(void) {
  uint32_t least = (uint32_t)mesh_opt(MESH_OPT_SPAN_PAGES); /* options are read first */
  for (unsigned c = 0; c < MESH_NUM_CLASSES; c++) {
    uint32_t size = class_size(c);
    uint32_t first = (uint32_t)((size * MESH_SPAN_MIN_OBJECTS + MESH_PAGE_SIZE - 1) / MESH_PAGE_SIZE);
    uint32_t most = (uint32_t)((size * MESH_SPAN_MAX_OBJECTS + MESH_PAGE_SIZE - 1) / MESH_PAGE_SIZE);
    if (first < least) first = least < most ? least : most;
    uint32_t best_pages = 0;
    uint64_t best_waste = 0;
    for (uint32_t p = first; p < first + 4; p++) {
      uint64_t bytes = (uint64_t)p * MESH_PAGE_SIZE, n = bytes / size;
      if (n > MESH_SPAN_MAX_OBJECTS) n = MESH_SPAN_MAX_OBJECTS;
      uint64_t waste = bytes - n * size;
      if (waste * 28 <= bytes) { /* good enough: the smallest such span */
        best_pages = p;
        break;
      }
      if (!best_pages || waste * best_pages < best_waste * p) best_waste = waste, best_pages = p;
    }
    size_class_t *sc = &_mesh_classes[c];
    sc->size = size;
    sc->npages = best_pages;
    uint64_t n = (uint64_t)best_pages * MESH_PAGE_SIZE / size;
    sc->nobjects = (uint16_t)(n > MESH_SPAN_MAX_OBJECTS ? MESH_SPAN_MAX_OBJECTS : n);
    sc->recip = ((1ull << 32) + size - 1) / size;
  }
  unsigned c = 0;
  for (unsigned i = 0; i <= MESH_SMALL_MAX / 128; i++) {
    while (_mesh_classes[c].size < i * 128u) c++;
    mesh_store_relaxed(&_mesh_class_by_128[MESH_CLASS_BY_128_SLOT(i)], (uint8_t)c);
  }
  /* mesh_class_of must give the smallest class that holds the size. Each of
   * its pieces is monotonic in the size, so being right at both ends of
   * every class makes it right everywhere: checked once here. */
  for (unsigned k = 0; k < MESH_NUM_CLASSES; k++) {
    size_t lo = k ? _mesh_classes[k - 1].size + 1 : 1, hi = _mesh_classes[k].size;
    if (mesh_class_of(lo) != k || mesh_class_of(hi) != k)
      _mesh_fatal("size classes: mesh_class_of disagrees with the class table at class %u", k);
  }
}

int _mesh_class_for_aligned(size_t size, size_t align) {
  if (size > MESH_SMALL_MAX || align > MESH_PAGE_SIZE) return -1;
  /* Spans start on a page, so slot i is at base + i*size: every slot is
   * aligned iff size is a multiple of align. */
  for (unsigned c = mesh_class_of(size); c < MESH_NUM_CLASSES; c++)
    if (_mesh_classes[c].size % align == 0) return (int)c;
  return -1;
}
