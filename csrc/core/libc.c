/* libc.c - string formatting and messages that never allocate.
 *
 * The allocator cannot call printf (it may malloc) or stdio (it locks and
 * buffers). Messages are formatted into stack buffers by a small printf
 * subset (%s %c %d %i %u %x %p %%, length l/ll/z, width, '-' and '0' flags)
 * and written with write(2). Nothing here takes a lock.
 */
#include "internal.h"

#include <errno.h>
#include <stdbool.h>

size_t _mesh_strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

int _mesh_strcmp(const char *a, const char *b) {
  while (*a && *a == *b) a++, b++;
  return (unsigned char)*a - (unsigned char)*b;
}

void _mesh_fill(void *p, int c, size_t n) {
  unsigned char *q = p;
  while (n--) *q++ = (unsigned char)c;
}

typedef struct {
  char *buf;
  size_t cap, len; /* len counts every byte produced, even past cap */
} out_t;

static void put(out_t *o, char c) {
  if (o->len + 1 < o->cap) o->buf[o->len] = c;
  o->len++;
}

static void put_padded(out_t *o, const char *s, size_t n, int width, bool left, char pad) {
  int fill = width > (int)n ? width - (int)n : 0;
  if (!left) while (fill-- > 0) put(o, pad);
  for (size_t i = 0; i < n; i++) put(o, s[i]);
  if (left) while (fill-- > 0) put(o, ' ');
}

static void put_number(out_t *o, unsigned long long v, bool neg, unsigned base,
                       int width, bool left, char pad, const char *prefix) {
  char tmp[24];
  int n = 0;
  do {
    unsigned d = (unsigned)(v % base);
    tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
    v /= base;
  } while (v);
  char digits[32];
  size_t k = 0;
  if (neg) digits[k++] = '-';
  for (const char *p = prefix; *p; p++) digits[k++] = *p;
  while (n) digits[k++] = tmp[--n];
  put_padded(o, digits, k, width, left, pad);
}

size_t _mesh_vsnprintf(char *buf, size_t cap, const char *fmt, va_list ap) {
  out_t o = {buf, cap, 0};
  for (const char *f = fmt; *f; f++) {
    if (*f != '%') { put(&o, *f); continue; }
    f++;
    bool left = false;
    char pad = ' ';
    for (;; f++) {
      if (*f == '-') left = true;
      else if (*f == '0') pad = '0';
      else break;
    }
    int width = 0;
    while (*f >= '0' && *f <= '9') width = width * 10 + (*f++ - '0');
    int lng = 0;
    while (*f == 'l' || *f == 'z') { lng++; f++; }
    switch (*f) {
    case 's': {
      const char *s = va_arg(ap, const char *);
      if (!s) s = "(null)";
      put_padded(&o, s, _mesh_strlen(s), width, left, ' ');
      break;
    }
    case 'c': { char c = (char)va_arg(ap, int); put_padded(&o, &c, 1, width, left, ' '); break; }
    case 'd': case 'i': {
      long long v = lng ? va_arg(ap, long long) : va_arg(ap, int);
      unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
      put_number(&o, u, v < 0, 10, width, left, pad, "");
      break;
    }
    case 'u': case 'x': {
      unsigned long long v = lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned);
      put_number(&o, v, false, *f == 'u' ? 10 : 16, width, left, pad, "");
      break;
    }
    case 'p':
      put_number(&o, (uintptr_t)va_arg(ap, void *), false, 16, width, left, pad, "0x");
      break;
    case '%': put(&o, '%'); break;
    case '\0': f--; break;
    default: put(&o, '%'); put(&o, *f); break;
    }
  }
  if (cap) buf[o.len < cap ? o.len : cap - 1] = '\0';
  return o.len;
}

size_t _mesh_snprintf(char *buf, size_t n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  size_t r = _mesh_vsnprintf(buf, n, fmt, ap);
  va_end(ap);
  return r;
}

static void vdprintf_(int fd, const char *prefix, const char *fmt, va_list ap) {
  char buf[1024];
  size_t n = _mesh_snprintf(buf, sizeof buf, "%s", prefix);
  if (n >= sizeof buf) n = sizeof buf - 1;
  size_t m = _mesh_vsnprintf(buf + n, sizeof buf - n, fmt, ap);
  n = n + m >= sizeof buf - 1 ? sizeof buf - 2 : n + m;
  buf[n++] = '\n';
  int saved = errno; /* messages must not disturb the caller's errno */
  _mesh_os_write_all(fd, buf, n);
  errno = saved;
}

void _mesh_dprintf(int fd, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  size_t n = _mesh_vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  int saved = errno;
  _mesh_os_write_all(fd, buf, n < sizeof buf ? n : sizeof buf - 1);
  errno = saved;
}

/* Warnings are printed once per kind (the format string: one call site,
 * one kind), so a condition that recurs on every free - a punch that
 * seccomp refuses - is one line, not thousands. Repeats are counted
 * (warnings_repeated, and per kind for the MALLOCSTATS summary, which
 * prints each kind's first message and count). Lock-free: a kind's slot
 * is claimed with a compare-and-swap on its format pointer. */
#define WARN_KINDS 32
#define WARN_TEXT 160
static _Atomic(const char *) warn_fmt[WARN_KINDS];
static _Atomic uint64_t warn_count[WARN_KINDS];
static char warn_text[WARN_KINDS][WARN_TEXT];

void _mesh_warning(const char *fmt, ...) {
  int slot = -1;
  for (int i = 0; i < WARN_KINDS && slot < 0; i++) {
    const char *f = mesh_load_acquire(&warn_fmt[i]);
    if (f == NULL) {
      const char *expected = NULL;
      if (atomic_compare_exchange_strong(&warn_fmt[i], &expected, fmt) || expected == fmt) slot = i;
    } else if (f == fmt) {
      slot = i;
    }
  }
  uint64_t seen = slot >= 0 ? mesh_fetch_add_relaxed(&warn_count[slot], 1) : 0;
  if (seen > 0) {
    mesh_stat_add(warnings_repeated, 1);
    return;
  }
  va_list ap;
  if (slot >= 0) {
    va_start(ap, fmt);
    _mesh_vsnprintf(warn_text[slot], WARN_TEXT, fmt, ap);
    va_end(ap);
  }
  if (mesh_opt(MESH_OPT_VERBOSE) < 1) return;
  va_start(ap, fmt);
  vdprintf_(2, "meshalloc: warning: ", fmt, ap);
  va_end(ap);
}

void _mesh_warnings_print(int fd) {
  for (int i = 0; i < WARN_KINDS; i++) {
    uint64_t n = mesh_load_relaxed(&warn_count[i]);
    if (n > 1) _mesh_dprintf(fd, "Warning repeated:   %s (%llu times, printed once)\n", warn_text[i], (unsigned long long)n);
  }
}

void _mesh_fatal(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vdprintf_(2, "meshalloc: fatal: ", fmt, ap);
  va_end(ap);
  _mesh_os_abort();
}

void _mesh_report_bad_free(const void *p, const char *what) {
  bool dbl = what[0] == 'd'; /* "double free ..." */
  if (dbl) mesh_stat_add(double_free_count, 1);
  else mesh_stat_add(invalid_free_count, 1);
  bool abort_ = mesh_opt(MESH_OPT_ABORT_ON_ERROR) != 0;
  char buf[256];
  size_t n = _mesh_snprintf(buf, sizeof buf, "meshalloc: %s: %p%s\n", what, p,
                            abort_ ? " (aborting; set MESH_ABORT_ON_ERROR=0 to continue)" : "");
  int saved = errno;
  _mesh_os_write_all(2, buf, n < sizeof buf ? n : sizeof buf - 1);
  errno = saved;
  if (abort_) _mesh_os_abort();
}
