/* options.c - the one table of run-time options.
 *
 * Each option is a row of MESH_OPTIONS (internal.h): name, default, range,
 * whether it may change after start-up, and its doc. The environment
 * variable is MESH_<NAME> upper-cased; it is read once, at init, and ignored
 * in secure-execution mode. A value that does not parse or is out of range
 * is rejected with one warning and the default kept. Values are atomics so
 * mesh_option_set from any thread is race-free; readers use relaxed loads.
 */
#include "internal.h"

#include <errno.h>

typedef struct {
  const char *name;
  const char *env;
  long def, lo, hi;
  bool runtime;
  const char *doc;
} option_desc_t;

static const option_desc_t option_table[MESH_OPT_COUNT] = {
#define MESH_OPT_ROW(E, n, d, lo, hi, rt, doc) {#n, "MESH_" #E, d, lo, hi, rt, doc},
    MESH_OPTIONS(MESH_OPT_ROW)
#undef MESH_OPT_ROW
};

_Atomic long _mesh_options[MESH_OPT_COUNT] = {
#define MESH_OPT_DEF(E, n, d, lo, hi, rt, doc) d,
    MESH_OPTIONS(MESH_OPT_DEF)
#undef MESH_OPT_DEF
};

static bool parse_long(const char *s, long *out) {
  long v = 0;
  bool neg = false;
  if (*s == '-') neg = true, s++;
  if (!*s) return false;
  for (; *s; s++) {
    if (*s < '0' || *s > '9') return false;
    if (v > (0x7fffffffffffffffL - (*s - '0')) / 10) return false;
    v = v * 10 + (*s - '0');
  }
  *out = neg ? -v : v;
  return true;
}

void _mesh_options_init(void) {
  for (int i = 0; i < MESH_OPT_COUNT; i++) {
    const option_desc_t *d = &option_table[i];
    const char *s = _mesh_os_getenv(d->env);
    if (!s) continue;
    long v;
    if (!parse_long(s, &v) || v < d->lo || v > d->hi) {
      /* The value of verbose itself may be the bad one: default stays 1. */
      _mesh_warning("ignoring %s=%s (expected an integer in %ld..%ld); using %ld",
                    d->env, s, d->lo, d->hi, d->def);
      continue;
    }
    mesh_store_relaxed(&_mesh_options[i], v);
  }
}

static int find(const char *name) {
  if (!name) return -1;
  for (int i = 0; i < MESH_OPT_COUNT; i++)
    if (_mesh_strcmp(option_table[i].name, name) == 0) return i;
  return -1;
}

long mesh_option_get(const char *name) {
  int i = find(name);
  if (i < 0) { errno = ENOENT; return -1; }
  return mesh_opt((enum mesh_option_id)i);
}

int mesh_option_set(const char *name, long value) {
  int i = find(name);
  if (i < 0) { errno = ENOENT; return -1; }
  const option_desc_t *d = &option_table[i];
  if (value < d->lo || value > d->hi) { errno = EINVAL; return -1; }
  /* Options that shape the arena are fixed once it exists. */
  if (!d->runtime && mesh_load_acquire(&_mesh_init_state) != 0) { errno = EPERM; return -1; }
  mesh_store_relaxed(&_mesh_options[i], value);
  return 0;
}

int mesh_option_count(void) { return MESH_OPT_COUNT; }
const char *mesh_option_name(int i) { return i >= 0 && i < MESH_OPT_COUNT ? option_table[i].name : NULL; }
const char *mesh_option_doc(int i) { return i >= 0 && i < MESH_OPT_COUNT ? option_table[i].doc : NULL; }
