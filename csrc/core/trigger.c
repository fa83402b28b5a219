/* trigger.c - when meshing runs, and when unused free pages go back to the OS.
 *
 * pass.c knows how to mesh within a bound (a pass); this file decides when:
 *
 *   - inline: a free that makes a detached span partial or empty, and every
 *     refill of a thread heap, call _mesh_maybe_mesh with the lock held; it
 *     runs a pass when the wait since the last one (period_ms, lengthened by
 *     pacing) has elapsed, unless the mesher thread is running: then the
 *     thread has every timed duty (passes, decay, publishing the bytes in
 *     use) and a trigger only counts, without reading the clock;
 *   - the mesher thread, on demand: started when an inline pass ran out of
 *     time with work left, or when many spans became partial or empty since
 *     the last pass (a program that frees most of its heap and then idles
 *     triggers nothing more). It runs passes back to back with a gap as long
 *     as the pass (at most half of one CPU) while they find work, then at the
 *     periodic rate, and exits once a whole sweep of every class meshes
 *     nothing, the program has gone quiet and the dirty pages have decayed.
 *     An idle process therefore has no thread of ours;
 *   - with background_ms, the same thread runs for the life of the process,
 *     a pass at least every background_ms.
 *
 * Pacing (see _mesh_maybe_mesh) holds every periodic pass, inline or on the
 * thread, while the program takes the pages meshing freed straight back.
 *
 * Decay: free pages the program did not reuse during a whole dirty_decay_ms
 * epoch (the fewest dirty pages seen in it, arena.c) are returned at the
 * epoch's end, by the thread while it runs (it wakes for it), else by the
 * inline triggers.
 *
 * The thread is created (and an exited one joined) outside every lock of
 * ours, at the start of a malloc's slow path or at the end of a free
 * (_mesh_mesher_poll, _poll_free): pthread_create may itself call malloc.
 * Not at the end of a free the dynamic loader called: glibc frees a dead
 * thread's TLS blocks that way while it holds its stack cache lock, which
 * pthread_create and pthread_join take too (the thread is then started by
 * the next allocator call). It blocks every signal, so no handler of the
 * program ever runs on it while it holds the global lock or waits in a
 * mesh. fork stops it (the prepare handler joins it, so a forking program
 * never has our thread running at the fork and CPython 3.12+ has no reason
 * to warn); parent and child start a new one on their next trigger.
 *
 * Locking: pacing, the decay epoch and the activity counters are under the
 * global lock. thread_lock guards the thread's life (creation, stop, exit,
 * join) and is taken before the global lock, never while holding it.
 */
#include "internal.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <time.h>

/* ---- pacing ---------------------------------------------------------- */

/* Meshing pays for itself only if the pages it frees stay free: a program
 * that keeps allocating (a steady churn) fills the holes meshing would fold
 * away, and takes the freed pages straight back as new spans, so each mesh
 * costs a copy, system calls and page faults for nothing. So at each
 * periodic pass the pages meshing freed since the previous one are compared
 * with the clean pages new spans took meanwhile: if the program took back
 * half or more, the wait before the next pass doubles (up to PACE_MAX_LEVEL
 * doublings: 6.4 s at the default period); a pass whose pages stayed free
 * brings the wait back to period_ms. Explicit mesh_compact() is not paced.
 * All under the global lock. */
#define PACE_MAX_LEVEL 6
static uint64_t pace_meshed_mark; /* meshed_pages_total before the last pass */
static uint64_t pace_fresh_mark;  /* fresh_pages_total after it */
static uint64_t pace_dropped_mark; /* dropped_pages_total then */

/* Clean pages new spans took since the marks that were not already the
 * program's: a freed meshing destination returns its pages at once (its
 * memfd pages cannot stay dirty in an anonymous free run), and a span
 * later carved from them is the program reusing its own memory, not
 * demand that meshing's freed pages would otherwise have met. */
static uint64_t pace_taken(void) {
  uint64_t taken = mesh_stat_get(fresh_pages_total) - pace_fresh_mark;
  uint64_t dropped = mesh_stat_get(dropped_pages_total) - pace_dropped_mark;
  return taken > dropped ? taken - dropped : 0;
}

static void pace_mark_taken(void) {
  pace_fresh_mark = mesh_stat_get(fresh_pages_total);
  pace_dropped_mark = mesh_stat_get(dropped_pages_total);
}

/* Judges the meshing done since the marks (passes and compactions): true
 * if there was some, the level then updated and the marks moved on. */
static bool pace_judge(void) {
  uint64_t meshed = mesh_stat_get(meshed_pages_total);
  uint64_t freed = meshed - pace_meshed_mark, taken = pace_taken();
  if (freed == 0) return false;
  uint64_t level = mesh_stat_get(mesh_pace_level);
  if (2 * taken >= freed) {
    if (level < PACE_MAX_LEVEL) {
      mesh_stat_set(mesh_pace_level, level + 1);
      mesh_stat_add(mesh_paced, 1);
    }
  } else {
    mesh_stat_set(mesh_pace_level, 0);
  }
  pace_meshed_mark = meshed;
  pace_mark_taken();
  return true;
}

static uint64_t pass_wait_ns(long period_ms) {
  return ((uint64_t)period_ms * 1000000u) << mesh_stat_get(mesh_pace_level);
}

/* mesh.h: the same wait, for a face that meshes at moments of its own
 * choosing (the Python face, after a full garbage collection). */
long long mesh_periodic_wait_ns(void) {
  long period = mesh_opt(MESH_OPT_PERIOD_MS);
  if (period <= 0 || !_mesh_arena.meshable || !mesh_opt(MESH_OPT_MESH)) return -1;
  _mesh_lock();
  uint64_t since = _mesh_os_now_ns() - _mesh_last_pass_ns(), wait = pass_wait_ns(period);
  _mesh_unlock();
  return since >= wait ? 0 : (long long)(wait - since);
}

static uint64_t pause_budget_ns(void) { return (uint64_t)mesh_opt(MESH_OPT_MAX_PAUSE_US) * 1000u; }

/* An inline periodic pass with the pacing marks around it: the next due
 * pass judges what this one freed against what the program took since. */
static size_t paced_pass(bool *more) {
  pace_meshed_mark = mesh_stat_get(meshed_pages_total);
  size_t freed = _mesh_mesh_pass(pause_budget_ns(), MESH_PASS_triggered, more);
  pace_mark_taken();
  return freed;
}

/* ---- decay ----------------------------------------------------------- */

static uint64_t decay_epoch_ns; /* (lock) when the current decay epoch began */

/* Ends the decay epoch if dirty_decay_ms has passed: the pages that stayed
 * dirty all through it go back to the OS. Lock held. */
static void decay_tick(uint64_t now) {
  long ms = mesh_opt(MESH_OPT_DIRTY_DECAY_MS);
  if (ms <= 0 || now - decay_epoch_ns < (uint64_t)ms * 1000000u) return;
  decay_epoch_ns = now;
  _mesh_heaps_release_spare(); /* what the heaps keep decays like any freed span */
  mesh_stat_add(pages_decayed, _mesh_arena_decay());
}

/* Nanoseconds until the decay epoch ends, if dirty pages wait for it; 0 if
 * none do (or decay is off). */
static uint64_t decay_wait_ns(uint64_t now) {
  long ms = mesh_opt(MESH_OPT_DIRTY_DECAY_MS);
  if (ms <= 0 || mesh_stat_get(dirty_pages) + mesh_stat_get(kept_pages) == 0) return 0;
  uint64_t end = decay_epoch_ns + (uint64_t)ms * 1000000u;
  return end > now ? end - now : 1;
}

/* ---- the mesher thread ----------------------------------------------- */

/* Spans that became partial or empty since the last pass, past which a
 * pass that is not yet due is handed to the thread: enough freeing to be
 * worth a look even if the program never triggers again. */
#define THREAD_WAKE_FREES 64
/* Least gap between back-to-back passes of the thread, ns. Back to back
 * means a gap as long as the pass (at most half of one CPU) while the
 * program is quiet, and BUSY_GAP times the pass while it is busy
 * (program_busy): each mesh's mprotect, mmap and punch interrupt every CPU
 * that runs the program (TLB shootdowns, a VM exit each on a virtual
 * machine), a pass holds the global lock its slow paths need, and the
 * program then faults on the pages remapped under it. Measured on the 2-CPU
 * VM (a loop deleting 900 k of 1 M dict entries, then 3 s of light
 * activity; 3 runs each, interleaved): with the gap at 1x the pass while
 * busy, the loop took 2.39-2.49 s and the process settled at 79-80 MiB;
 * at 8x, 2.10-2.11 s (2.06-2.09 s without the thread) and 74-75 MiB. */
#define THREAD_MIN_GAP_NS 200000u
#define BUSY_GAP 8
#define BUSY_SHARE 4
/* The thread leaves once its work is done and the program has made no
 * allocator call that triggers a pass for this long: a busy program keeps
 * it (it sleeps between passes) instead of starting one after another. */
#define QUIET_NS 250000000u
/* Sweeps that free less than 1/THREAD_DIMINISHING of the first sweep of a
 * streak stop the back-to-back passes (as in mesh_compact). */
#define THREAD_DIMINISHING 16
#define THREAD_WINDOW 8

static pthread_mutex_t thread_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t thread_cond; /* (thread_lock) stop and exit; on CLOCK_MONOTONIC (cond_init) */
static pthread_t thread_id;                                    /* (thread_lock) */
static bool thread_alive;    /* (thread_lock) created and not yet out of its loop */
static bool thread_joinable; /* (thread_lock) created and not yet joined */
static bool thread_stop;     /* (thread_lock) fork asks it to leave */
static bool thread_failed;   /* (thread_lock) pthread_create refused once: warned */
static bool thread_restart;  /* (thread_lock) fork stopped it: start again after */
static uint64_t thread_not_before; /* (thread_lock) no start before this time (after a fork) */
#define RESTART_DELAY_NS 20000000u
/* The thread runs the periodic passes (inline passes stand aside). Set at
 * creation, cleared under the global lock when it decides to exit. */
static _Atomic bool thread_active;
/* A trigger asked for the thread; read on the way out of malloc/free. */
_Atomic bool _mesh_mesher_wanted;

/* (lock) Activity since the thread's last look, and the span frees since
 * the last pass. */
static uint64_t trigger_events, frees_since_pass;

/* (lock, thread only) The thread's view of its sweeps. */
static struct {
  uint64_t events_seen;   /* trigger_events at program_busy's last reading */
  uint64_t events_turn;   /* trigger_events at the thread's last turn */
  uint64_t sweep_freed;  /* pages freed since the current sweep of every class began */
  uint64_t streak_first; /* pages of the first sweep of the streak of back-to-back sweeps */
  unsigned idle_sweeps;  /* whole sweeps in a row that meshed nothing */
  bool backlog;          /* work is left that pays: the next pass follows after a short gap */
  bool recount;          /* count the program's mappings before the next turn */
  bool sweep_ended;      /* and count them then if the arena grew (mesh.c) */
  uint64_t active_ns;    /* the last turn that found the program busy */
  uint64_t cpu_wall, cpu_others; /* program_busy's last reading */
  bool busy;             /* and its verdict */
  unsigned win_passes;   /* back-to-back passes in the current window */
  uint64_t win_pages;    /* pages they freed */
  uint64_t last_judge;   /* when pacing last judged the thread's passes */
} th;

/* Whether the program is busy: its other threads ran more than
 * 1/BUSY_SHARE of a CPU (the thread's own CPU time taken out), or it made
 * BUSY_EVENTS or more triggering allocator calls (slow paths that take the
 * lock), judged over windows of at least BUSY_WINDOW_NS: the kernel adds up
 * other threads' CPU time at scheduler ticks, so a shorter window reads
 * noise, and a program with a little steady activity (a few allocations
 * every 100 ms) is not busy. */
#define BUSY_WINDOW_NS 20000000u
#define BUSY_EVENTS 4
static bool program_busy(uint64_t now) {
  uint64_t dw = now - th.cpu_wall;
  if (dw < BUSY_WINDOW_NS) return th.busy;
  /* (the two clocks are read one after the other: with the program idle,
   * its CPU time less ours moves by a microsecond either way between
   * readings, and an unsigned difference of -1 us read as busy; measured:
   * half the windows of an idle program, and the thread then slept 8x its
   * passes) */
  uint64_t mine = _mesh_os_thread_cpu_ns(), all = _mesh_os_process_cpu_ns();
  uint64_t others = all > mine ? all - mine : 0;
  uint64_t dc = others > th.cpu_others ? others - th.cpu_others : 0;
  th.busy = dc * BUSY_SHARE > dw || trigger_events - th.events_seen >= BUSY_EVENTS;
  th.cpu_wall = now;
  th.cpu_others = others;
  th.events_seen = trigger_events;
  return th.busy;
}

/* The thread's timed waits count on the clock of _mesh_os_now_ns: a
 * default condition counts on CLOCK_REALTIME, where a monotonic deadline
 * is decades past and every wait would end at once. */
static void cond_init(void) {
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&thread_cond, &a);
  pthread_condattr_destroy(&a);
}

static void want_thread(void) {
  if (!mesh_opt(MESH_OPT_MESHER_THREAD) || mesh_load_relaxed(&thread_active)) return;
  mesh_store_relaxed(&_mesh_mesher_wanted, true);
}

/* Decides whether the program has gone quiet (no busy window for
 * QUIET_NS). Pacing answers a program that takes the freed pages straight
 * back; one that has gone quiet takes nothing, so its pages stay free and
 * meshing pays again (frag_bands: rounds of allocation paced the thread,
 * which then slept through the idle time after the last round). */
static bool quiet_unpaced(uint64_t now) {
  if (program_busy(now)) th.active_ns = now;
  bool quiet = now - th.active_ns >= QUIET_NS;
  if (quiet && mesh_stat_get(mesh_pace_level) > 0) {
    mesh_stat_set(mesh_pace_level, 0);
    pace_meshed_mark = mesh_stat_get(meshed_pages_total);
    pace_mark_taken();
    th.backlog = true;
  }
  return quiet;
}

/* Decides, after a pass of the thread that freed pages (more: the sweep
 * of every class has not ended), whether the next pass follows back to
 * back (th.backlog). */
static void judge_sweep(size_t freed, bool more) {
  th.sweep_freed += freed;
  th.win_pages += freed;
  if (more) {
    /* inside a sweep: back to back while the last THREAD_WINDOW passes
     * freed something (a stretch of spans that fit nothing is crossed
     * at the periodic rate, not at half a CPU); a productive pass at the
     * periodic rate starts a new run */
    if (!th.backlog) th.backlog = freed > 0, th.win_passes = 0, th.win_pages = 0;
    else if (++th.win_passes == THREAD_WINDOW) th.backlog = th.win_pages > 0, th.win_passes = 0, th.win_pages = 0;
  } else { /* every class's sweep ended with this pass */
    th.sweep_ended = true;
    th.backlog = false;
    uint64_t got = th.sweep_freed;
    th.sweep_freed = 0;
    if (got == 0) {
      th.idle_sweeps++;
      th.streak_first = 0;
    } else {
      th.idle_sweeps = 0;
      if (!th.streak_first) th.streak_first = got;
      /* sweeps that still pay go on back to back: the survivors they
       * filled may fit each other again (chains grow) */
      if (got * THREAD_DIMINISHING >= th.streak_first) th.backlog = true;
      else th.streak_first = 0;
    }
  }
  if (mesh_stat_get(mesh_pace_level) > 0) th.backlog = false; /* the program takes the pages back */
}

/* Runs a due pass on the thread; returns how long it took (wall clock). */
static uint64_t thread_pass(uint64_t now, long period) {
  /* pacing judges the thread's passes at the periodic rate, not at each
   * back-to-back pass, so its window is the same as for inline passes */
  if (period > 0 && now - th.last_judge >= (uint64_t)period * 1000000u) {
    th.last_judge = now;
    if (pace_judge() && mesh_stat_get(mesh_pace_level) > 0) th.backlog = false;
  }
  /* The marks are not moved around the thread's passes: its judge, once
   * a period, weighs everything its back-to-back passes freed in the
   * period against the clean pages the program took in the same time.
   * (Marks moved around each pass would judge only the last pass against
   * the short gap after it, and a steady churn that takes every page
   * back would be meshed at half a CPU: measured 2 % of its run.) */
  bool more;
  uint64_t t0 = _mesh_os_now_ns();
  size_t freed = _mesh_mesh_pass(pause_budget_ns(), MESH_PASS_thread, &more);
  uint64_t took = _mesh_os_now_ns() - t0;
  frees_since_pass = 0;
  judge_sweep(freed, more);
  return took;
}

/* Decides when the thread's next turn is, with no pass back to back: the
 * next pass is due a wait after the last one; a sweep that found nothing
 * makes the wait longer each time while the program is busy (up to 64
 * periods): idle sweeps cost scans for nothing. Dirty pages waiting to
 * decay may call it earlier. */
static uint64_t next_turn_in(bool meshing, bool keep, uint64_t wait, uint64_t decay) {
  uint64_t next = UINT64_MAX;
  if (meshing && wait != UINT64_MAX) {
    unsigned backoff = keep ? 0 : th.idle_sweeps < PACE_MAX_LEVEL ? th.idle_sweeps : PACE_MAX_LEVEL;
    uint64_t since = _mesh_os_now_ns() - _mesh_last_pass_ns();
    next = wait << backoff;
    next = next > since ? next - since : 1;
  }
  if (decay && decay < next) next = decay;
  if (next == UINT64_MAX) next = 1000000000u; /* nothing to time: look again in a second */
  return next;
}

/* One turn of the thread, under the global lock: runs a pass if one is due,
 * decays dirty pages, and says how long to wait before the next turn.
 * Returns false when the thread should exit. */
static bool thread_turn(uint64_t *wait_ns) {
  uint64_t now = _mesh_os_now_ns();
  long period = mesh_opt(MESH_OPT_PERIOD_MS), bg = mesh_opt(MESH_OPT_BACKGROUND_MS);
  bool keep = bg > 0; /* background_ms: the thread lives as long as the process */
  bool meshing = _mesh_arena.meshable && mesh_opt(MESH_OPT_MESH) && (period > 0 || bg > 0);
  bool quiet = quiet_unpaced(now);
  decay_tick(now);
  _mesh_stats_publish(now);
  if (!keep && !mesh_opt(MESH_OPT_MESHER_THREAD)) return false;
  uint64_t wait = period > 0 ? pass_wait_ns(period) : UINT64_MAX;
  if (bg > 0 && (uint64_t)bg * 1000000u < wait) wait = (uint64_t)bg * 1000000u;
  bool due = th.backlog || now - _mesh_last_pass_ns() >= wait;
  if (meshing && due) {
    uint64_t took = thread_pass(now, period);
    if (th.backlog) {
      uint64_t gap = th.busy ? BUSY_GAP * took : took;
      *wait_ns = gap > THREAD_MIN_GAP_NS ? gap : THREAD_MIN_GAP_NS;
      return true;
    }
  }
  bool done = !meshing || th.idle_sweeps > 0;
  uint64_t decay = decay_wait_ns(now);
  /* done, and the program quiet, or busy but two whole sweeps found
   * nothing: a program with a little steady activity is not kept a thread */
  if (!keep && done && (quiet || th.idle_sweeps >= 2) && !decay) {
    _mesh_stats_publish(0); /* the last figure before the program is left alone */
    return false;
  }
  *wait_ns = next_turn_in(meshing, keep, wait, decay);
  /* the inline triggers leave publishing to the thread while it runs: it
   * wakes for it while the program makes allocator calls (an idle
   * program's figure stays as old as its last activity, and its thread
   * keeps the waits it would have) */
  bool active = trigger_events != th.events_turn;
  th.events_turn = trigger_events;
  uint64_t publish = _mesh_stats_publish_wait_ns(_mesh_os_now_ns());
  if (active && publish && publish < *wait_ns) *wait_ns = publish;
  /* Held by pacing while the program is busy: look again after QUIET_NS,
   * not a whole paced wait (up to 6.4 s) later, so that a program that has
   * just gone quiet is unpaced and compacted within half a second. (The
   * pass that ends the wait cannot tell: its judge weighs the pages the
   * program took before it went quiet.) A look is two clock reads. */
  if (meshing && !quiet && mesh_stat_get(mesh_pace_level) > 0 && *wait_ns > QUIET_NS) *wait_ns = QUIET_NS;
  return true;
}

static void *thread_main(void *arg) {
  (void)arg;
  uint64_t wait_ns = 0;
  for (;;) {
    pthread_mutex_lock(&thread_lock);
    if (wait_ns && !thread_stop) {
      uint64_t t = _mesh_os_now_ns() + wait_ns; /* the condition's clock */
      struct timespec ts = {(time_t)(t / 1000000000u), (long)(t % 1000000000u)};
      while (!thread_stop && pthread_cond_timedwait(&thread_cond, &thread_lock, &ts) != ETIMEDOUT) {
      }
    }
    bool stop = thread_stop;
    pthread_mutex_unlock(&thread_lock);
    if (stop) break;
    /* the mapping budget counts the program's own mappings, read (outside
     * the lock: a big maps file takes milliseconds) as the thread starts,
     * and as a sweep starts if the arena grew or the count is old (mesh.c) */
    if (th.recount || (th.sweep_ended && _mesh_mapping_recount_due()) || _mesh_mapping_count_stale())
      _mesh_count_other_mappings();
    th.recount = th.sweep_ended = false;
    _mesh_lock();
    if (mesh_stat_get(retired_pages)) _mesh_arena_retry_retired();
    bool go_on = thread_turn(&wait_ns);
    if (!go_on) mesh_store_relaxed(&thread_active, false);
    _mesh_unlock();
    if (!go_on) break;
  }
  pthread_mutex_lock(&thread_lock);
  thread_alive = false;
  pthread_cond_broadcast(&thread_cond);
  pthread_mutex_unlock(&thread_lock);
  return NULL;
}

/* As the process exits (atexit, registered at the first start), the
 * thread is stopped as fork stops it and joined, and none starts again: a
 * thread whose timed wait ended during exit would otherwise leave its loop
 * on its own, finished and never joined (a leak to ThreadSanitizer). The
 * wait is the rest of one pass, at most a second: an exit() from a signal
 * handler that interrupted us under the global lock must still exit. */
static bool thread_exiting; /* (thread_lock) */
static void stop_at_exit(void) {
  if (pthread_mutex_trylock(&thread_lock) != 0) return; /* a fork or a start is at it */
  thread_exiting = true;
  if (thread_alive) {
    thread_stop = true;
    pthread_cond_broadcast(&thread_cond);
    uint64_t t = _mesh_os_now_ns() + 1000000000u; /* the condition's clock */
    struct timespec ts = {(time_t)(t / 1000000000u), (long)(t % 1000000000u)};
    while (thread_alive && pthread_cond_timedwait(&thread_cond, &thread_lock, &ts) != ETIMEDOUT) {
    }
  }
  if (thread_joinable && !thread_alive) {
    pthread_join(thread_id, NULL);
    thread_joinable = false;
  }
  pthread_mutex_unlock(&thread_lock);
}

void _mesh_mesher_poll_slow(void) {
  if (pthread_mutex_trylock(&thread_lock) != 0) return; /* someone is at it (or fork) */
  if (thread_not_before && _mesh_os_now_ns() < thread_not_before) { /* wanted stays set */
    pthread_mutex_unlock(&thread_lock);
    return;
  }
  if (!mesh_exchange_acq_rel(&_mesh_mesher_wanted, false) || thread_alive || thread_failed || thread_exiting ||
      mesh_load_acquire(&_mesh_init_state) != 2) {
    pthread_mutex_unlock(&thread_lock);
    return;
  }
  if (thread_joinable) pthread_join(thread_id, NULL); /* it has left its loop: at once */
  thread_joinable = false;
  static bool exit_registered; /* (thread_lock) */
  if (!exit_registered) exit_registered = atexit(stop_at_exit) == 0;
  /* before pthread_create, which may call malloc: its triggers must see
   * the thread as running, not ask for another */
  mesh_store_relaxed(&thread_active, true);
  thread_alive = true;
  thread_stop = false;
  th.backlog = true; /* a first pass at once: the trigger found work */
  th.idle_sweeps = 0;
  th.streak_first = 0;
  th.win_passes = 0;
  th.win_pages = 0;
  th.recount = true;
  th.active_ns = th.cpu_wall = _mesh_os_now_ns();
  th.cpu_others = _mesh_os_process_cpu_ns(); /* (the thread's own CPU time starts at 0) */
  th.busy = true; /* until a window says otherwise */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread inherits it: no handler runs there */
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  int rc = pthread_create(&thread_id, &attr, thread_main, NULL);
  pthread_attr_destroy(&attr);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc == 0) {
    thread_joinable = true;
    mesh_stat_add(mesher_thread_starts, 1);
  } else {
    thread_alive = false;
    thread_failed = true;
    mesh_store_relaxed(&thread_active, false);
    _mesh_warning("cannot start the meshing thread (error %d); meshing runs inside malloc and free only", rc);
  }
  pthread_mutex_unlock(&thread_lock);
}

void _mesh_mesher_start_background(void) {
  if (mesh_opt(MESH_OPT_BACKGROUND_MS) <= 0) return;
  mesh_store_relaxed(&_mesh_mesher_wanted, true);
  _mesh_mesher_poll_slow();
}

/* fork: stop the thread before the allocator's locks are taken (it may be
 * in a pass, which ends within the pause bound) and keep thread_lock until
 * after the fork, so that no new one starts in between. */
void _mesh_mesher_before_fork(void) {
  pthread_mutex_lock(&thread_lock);
  thread_restart = false;
  if (thread_alive) {
    thread_stop = true;
    pthread_cond_broadcast(&thread_cond);
    while (thread_alive) pthread_cond_wait(&thread_cond, &thread_lock);
    thread_restart = true;
  }
  if (thread_joinable) pthread_join(thread_id, NULL);
  thread_joinable = false;
  thread_stop = false;
  mesh_store_relaxed(&thread_active, false);
}

void _mesh_mesher_after_fork(bool child) {
  bool again = thread_restart || mesh_opt(MESH_OPT_BACKGROUND_MS) > 0;
  thread_restart = false;
  /* not at once: CPython 3.12+ counts the process's threads right after
   * fork returns (to warn about forking with threads), and the malloc of
   * that very check could start it */
  thread_not_before = _mesh_os_now_ns() + RESTART_DELAY_NS;
  if (again) mesh_store_relaxed(&_mesh_mesher_wanted, true);
  if (child) {
    /* no thread here; the lock was held across fork by this thread */
    pthread_mutex_init(&thread_lock, NULL);
    cond_init();
    thread_alive = false;
  } else {
    pthread_mutex_unlock(&thread_lock);
  }
}

/* ---- the inline trigger ---------------------------------------------- */

void _mesh_maybe_mesh(bool span_freed) {
  trigger_events++;
  if (span_freed) frees_since_pass++;
  /* the thread runs the passes, the decay and the publishing, waking for
   * each: a busy program triggers tens of thousands of times a second, and
   * a clock read and the checks cost more than the rest of this call */
  if (mesh_load_relaxed(&thread_active)) return;
  uint64_t now = _mesh_os_now_ns();
  decay_tick(now);
  _mesh_stats_publish(now);
  if (decay_wait_ns(now) && span_freed) want_thread(); /* someone must decay them if the program stops */
  long period = mesh_opt(MESH_OPT_PERIOD_MS);
  if (period <= 0 || !_mesh_arena.meshable || !mesh_opt(MESH_OPT_MESH)) return;
  if (_mesh_mapping_count_stale()) {
    /* near the kernel's limit with an old count of the program's mappings:
     * the thread counts them first (without a thread, only mesh_compact()
     * counts, and inline passes wait for it) */
    want_thread();
    return;
  }
  uint64_t last = _mesh_last_pass_ns();
  if (now - last < pass_wait_ns(period) ||
      /* a wait just lengthened counts from the last pass too */
      (pace_judge() && now - last < pass_wait_ns(period))) {
    /* not due: if much was freed, the thread runs the pass when it is,
     * whether or not the program calls malloc or free again */
    if (frees_since_pass >= THREAD_WAKE_FREES) want_thread();
    return;
  }
  bool more;
  size_t freed = paced_pass(&more);
  frees_since_pass = 0;
  /* out of time with work left: the thread goes on with it, off the
   * program's path, instead of one pass per period */
  if (more && freed > 0 && mesh_stat_get(mesh_pace_level) == 0) want_thread();
}

void _mesh_triggers_init(void) {
  decay_epoch_ns = _mesh_os_now_ns();
  cond_init();
}
