/* pass.c - the pause bound: a meshing pass over the classes, a
 * compaction's steps, the pause predictor, and the record of each pause.
 *
 * A pass runs the mesher (mesher.c) over the size classes in turn, from
 * the class where the last pass ran out of time, until its deadline; a
 * compaction (mesh_compact) sweeps class by class in steps, each one such
 * pause with the lock released between them. When passes run is
 * trigger.c's business: this file runs one when asked.
 *
 * Invariants:
 *   - every pass and every compaction step works until a deadline a
 *     quarter short of its budget, max_pause_us (deadline_after), holds
 *     asynchronous signals back for its length, and is recorded once
 *     (pause_done: the totals, the histogram, its kind);
 *   - the predictor's times are CPU time per unit of work (1 + the
 *     source's chain length), one per mesh made or refused by mesh.c;
 *   - last_pass_ns is when the last pass or step ended.
 *
 * Locking: passes, steps and the predictor run under the global lock;
 * mesh_compact takes it for each step and releases it between them.
 */
#include "internal.h"

static uint64_t last_pass_ns; /* (lock) */
static unsigned next_cls;     /* (lock) the class the next pass starts with */

/* (lock) Moving average and recent times of a mesh's time per unit of
 * work, used to stop before a mesh that would overrun the pause bound. A
 * mesh protects, remaps and unprotects each virtual span of the source's
 * chain (a system call each) and copies and punches once, so its time grows
 * with 1 + chain length: a chain of 100 costs ~50x a pair, and a per-mesh
 * figure let such meshes overrun the bound.
 *
 * Timed in the meshing thread's CPU time, not wall-clock time: a mesh during
 * which the thread was preempted (or its vCPU descheduled) measured 4.4 ms
 * of wall clock for 0.26 ms of work, the peak then predicted every second
 * mesh past the deadline, and for the ~300 meshes the peak took to decay
 * each pass meshed once: on the 2-CPU VM the thread ran at a fifth of its
 * speed after a 1 M-entry dict was 90 % deleted (frag_dict settled at
 * 146 MiB where compact() reached 65). Time the thread does not run is no
 * cost of the mesh and no deadline in user space can prevent it; the pass
 * still ends at its wall-clock deadline. */
static uint64_t mesh_ns_avg;
/* The last RECENT_MESHES times per unit: the prediction takes the second
 * longest of them, so one outlier (a mesh whose system calls waited for
 * another CPU to answer a TLB shootdown while its vCPU was descheduled:
 * 5 ms of CPU time for 1 mesh, seen here) changes nothing, while a run of
 * slow meshes (many mappings, a loaded machine) raises it at once. A
 * decaying peak took ~300 meshes to forget one outlier, and every pass
 * meanwhile meshed once. */
#define RECENT_MESHES 16
static uint64_t mesh_ns_recent[RECENT_MESHES];
static unsigned mesh_ns_next;

/* A mesh's work in units of one remapped virtual span: the source's chain,
 * one more, and one for promoting a destination not yet in the memfd (a
 * pwrite and a remap of its own: memfd.c). */
static uint64_t mesh_units(uint32_t dst, uint32_t src) {
  return 1u + mesh_chain_len(mesh_span(src)) + !(mesh_span(dst)->flags & SPAN_FILE);
}

/* Whether meshing src now would likely end past the deadline: its work
 * times the second longest recent (or twice the average) time per unit. */
bool _mesh_pause_predicted_past(uint32_t dst, uint32_t src, uint64_t deadline) {
  uint64_t first = 0, second = 0;
  for (unsigned i = 0; i < RECENT_MESHES; i++) {
    uint64_t x = mesh_ns_recent[i];
    if (x > first) second = first, first = x;
    else if (x > second) second = x;
  }
  uint64_t per_unit = 2 * mesh_ns_avg > second ? 2 * mesh_ns_avg : second;
  return _mesh_os_now_ns() + mesh_units(dst, src) * per_unit >= deadline;
}

/* Unlinks both spans, meshes src onto dst (mesh.c) and times it. The
 * caller files them again. */
bool _mesh_mesh_timed(uint32_t dst, uint32_t src) {
  uint64_t units = mesh_units(dst, src);
  _mesh_partial_unlink(src);
  _mesh_partial_unlink(dst);
  uint64_t m0 = _mesh_os_thread_cpu_ns();
  bool meshed = _mesh_mesh_pair(dst, src);
  uint64_t took = (_mesh_os_thread_cpu_ns() - m0) / units;
  mesh_ns_recent[mesh_ns_next++ % RECENT_MESHES] = took;
  /* the average, with each time counted at most 4x the average: an outlier
   * moves it by at most 3/8 */
  uint64_t counted = mesh_ns_avg && took > 4 * mesh_ns_avg ? 4 * mesh_ns_avg : took;
  mesh_ns_avg = (7 * mesh_ns_avg + counted) / 8;
  return meshed;
}


/* A pause's start: wall clock (what the program waits) and the thread's
 * CPU time (what the pass itself spent; the difference is time the thread
 * was not running, preempted or its vCPU descheduled, which no deadline in
 * user space can prevent: docs/meshing.md, "Pause bound"), and the
 * counters the pause's work is measured by. */
typedef struct {
  uint64_t wall, cpu, meshes, pages;
} pause_start_t;

static pause_start_t pause_begin(void) {
  return (pause_start_t){_mesh_os_now_ns(), _mesh_os_thread_cpu_ns(), mesh_stat_get(mesh_count),
                         mesh_stat_get(meshed_pages_total)};
}

/* Records one pause (a pass, or one step of a compaction) in the stats:
 * the totals, the histogram, and the work and time of its kind (who ran
 * it), so the three kinds can be compared per pass and per second. */
static void pause_done(pause_start_t t0, enum mesh_pass_kind kind) {
  uint64_t cpu = _mesh_os_thread_cpu_ns() - t0.cpu;
  uint64_t ns = _mesh_os_now_ns() - t0.wall;
  if (cpu > ns) cpu = ns; /* read inside the wall-clock interval; also a failed read (0) */
  uint64_t bound = (uint64_t)mesh_opt(MESH_OPT_MAX_PAUSE_US) * 1000u;
  uint64_t meshes = mesh_stat_get(mesh_count) - t0.meshes, pages = mesh_stat_get(meshed_pages_total) - t0.pages;
  last_pass_ns = t0.wall + ns;
  _mesh_stats_log_pass(mesh_stat_get(mesh_passes) + 1, last_pass_ns, ns, cpu, meshes, pages, kind);
  mesh_stat_add(mesh_passes, 1);
  mesh_stat_add(mesh_pause_ns_total, ns);
  if (ns > mesh_stat_get(mesh_pause_ns_max)) mesh_stat_set(mesh_pause_ns_max, ns);
  if (cpu > mesh_stat_get(mesh_pause_cpu_ns_max)) mesh_stat_set(mesh_pause_cpu_ns_max, cpu);
  if (ns > bound) mesh_stat_add(mesh_pause_over_bound, 1);
  if (cpu > bound) mesh_stat_add(mesh_pause_cpu_over_bound, 1);
  if (ns < 100000) mesh_stat_add(mesh_pause_lt_100us, 1);
  else if (ns < 500000) mesh_stat_add(mesh_pause_lt_500us, 1);
  else if (ns < 1000000) mesh_stat_add(mesh_pause_lt_1ms, 1);
  else if (ns < 2000000) mesh_stat_add(mesh_pause_lt_2ms, 1);
  else if (ns < 5000000) mesh_stat_add(mesh_pause_lt_5ms, 1);
  else mesh_stat_add(mesh_pause_ge_5ms, 1);
  switch (kind) {
#define MESH_PASS_KIND_STATS(k)       \
  case MESH_PASS_##k:                 \
    mesh_stat_add(passes_##k, 1);     \
    mesh_stat_add(meshes_##k, meshes); \
    mesh_stat_add(pages_##k, pages);  \
    mesh_stat_add(pass_ns_##k, ns);   \
    break;
    MESH_PASS_KIND_STATS(triggered)
    MESH_PASS_KIND_STATS(thread)
    MESH_PASS_KIND_STATS(compact)
#undef MESH_PASS_KIND_STATS
  }
}

uint64_t _mesh_last_pass_ns(void) { return last_pass_ns; }

/* Whether meshing is on and possible: a memfd that is still ours, and the
 * write barrier's handler in place. */
static bool can_mesh(void) {
  return _mesh_arena.meshable && mesh_opt(MESH_OPT_MESH) && _mesh_arena_fd() >= 0 && _mesh_barrier_ensure();
}

/* The work of a pass must end well before the bound: 1/4 of it is left
 * for what follows the last mesh (filing spans, statistics, the unlock) and
 * for a mesh that takes longer than predicted. One mesh of a 2-page chain
 * usually takes 20-60 us but sometimes 200-330 us (page faults on the
 * copy, the kernel's work on the mappings): with a margin of 1/8 (250 us
 * of 2 ms) a few steps in a thousand ended past the bound. */
static uint64_t deadline_after(uint64_t t0, uint64_t budget_ns) {
  return budget_ns > UINT64_MAX - t0 ? UINT64_MAX : t0 + budget_ns - budget_ns / 4;
}

/* A pass runs inside malloc or free on any thread of the program, with the
 * global lock held, and waits for nobody; but a signal handler that ran on
 * this thread in the middle of it would find the lock taken (a handler
 * that allocates) or its own object write-protected by the mesh this very
 * thread is making (a handler that writes a heap object: it would wait in
 * the barrier for itself). So asynchronous signals are held back for the
 * length of a pass (at most max_pause_us) and delivered right after it;
 * faults are not. */
size_t _mesh_mesh_pass(uint64_t budget_ns, enum mesh_pass_kind kind, bool *more) {
  *more = false;
  if (!can_mesh()) return 0;
  sigset_t old_mask;
  _mesh_os_block_async_signals(&old_mask);
  pause_start_t t0 = pause_begin();
  uint64_t deadline = deadline_after(t0.wall, budget_ns);
  size_t freed = 0;
  bool out_of_time = false, stop = false, unswept = false, step_meshed = false;
  for (unsigned k = 0; k < MESH_NUM_CLASSES && !out_of_time && !stop; k++) {
    unsigned c = (next_cls + k) % MESH_NUM_CLASSES;
    freed += _mesh_mesh_class(c, deadline, &out_of_time, &stop, &unswept, &step_meshed);
    if (!out_of_time && _mesh_os_now_ns() >= deadline) out_of_time = true;
    if (out_of_time) next_cls = c; /* resume where the budget ran out */
  }
  *more = (out_of_time || unswept) && !stop; /* work left; a budget stop ends it */
  pause_done(t0, kind);
  _mesh_os_restore_signals(&old_mask);
  return freed;
}

/* Sweeps that free less than 1/COMPACT_DIMINISHING of a class's first
 * sweep end the compaction of that class: chains keep growing a little on
 * every sweep (new random partners), but past this point a sweep costs far
 * more than it returns. */
#define COMPACT_DIMINISHING 16
#define COMPACT_MAX_SWEEPS 32

/* One bounded step of a compaction (lock held): a step of the current
 * class's sweep; a class ends when a sweep frees nothing, frees less than
 * 1/COMPACT_DIMINISHING of its first, or after COMPACT_MAX_SWEEPS. Returns
 * the pages the step freed; st->finished once every class is done (or
 * meshing became impossible). */
size_t _mesh_compact_step(compact_state_t *st, enum mesh_pass_kind kind) {
  if (st->finished) return 0;
  if (st->cls >= MESH_NUM_CLASSES || !can_mesh()) {
    st->finished = true;
    return 0;
  }
  unsigned c = st->cls;
  if (!st->in_sweep) {
    if (st->sweeps == 0) _mesh_mesher_restart(c); /* a fresh sweep of the class */
    st->in_sweep = true;
    st->sweep = 0;
  }
  uint64_t budget = (uint64_t)mesh_opt(MESH_OPT_MAX_PAUSE_US) * 1000u;
  sigset_t old_mask; /* as in a pass: no handler runs inside a step */
  _mesh_os_block_async_signals(&old_mask);
  pause_start_t t0 = pause_begin();
  bool out_of_time = false, step_meshed = false, unswept = false, stop = false;
  size_t freed = _mesh_mesh_class(c, deadline_after(t0.wall, budget), &out_of_time, &stop, &unswept, &step_meshed);
  pause_done(t0, kind);
  _mesh_os_restore_signals(&old_mask);
  st->sweep += freed;
  if (stop) {
    st->finished = true;
  } else if (!unswept) { /* the sweep ended */
    st->in_sweep = false;
    bool next = st->sweep == 0 || (st->sweeps > 0 && st->sweep * COMPACT_DIMINISHING < st->first) ||
                st->sweeps + 1 >= COMPACT_MAX_SWEEPS;
    if (st->sweeps == 0) st->first = st->sweep;
    st->sweeps++;
    if (next) {
      st->cls++;
      st->sweeps = 0;
      st->first = 0;
    }
  }
  return freed;
}

size_t mesh_compact(void) {
  mesh_ensure_init();
  size_t total = 0;
  _mesh_count_other_mappings(); /* the program may have mapped much since start-up */
  /* Class by class: whole sweeps of the class's partial spans, each made of
   * steps that hold the lock for at most the pause bound, repeated while a
   * sweep still pays (the spans it filled may mesh again, growing chains).
   * Per class, because a round-robin pass over every class never sees all
   * sweeps end in the same pass, and so cannot tell when to stop. */
  compact_state_t st = {0};
  while (!st.finished) {
    _mesh_lock();
    total += _mesh_compact_step(&st, MESH_PASS_compact);
    _mesh_unlock();
  }
  _mesh_lock();
  _mesh_heaps_release_spare(); /* the dirty pages too, as mesh_scavenge() does */
  _mesh_arena_scavenge();
  _mesh_stats_publish(0);
  _mesh_unlock();
  return total;
}

size_t mesh_compact_ex(size_t *pages_returned) {
  uint64_t before = mesh_stat_get(pages_punched);
  size_t freed = mesh_compact();
  if (pages_returned) *pages_returned = (size_t)(mesh_stat_get(pages_punched) - before);
  return freed;
}
