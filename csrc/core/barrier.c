/* barrier.c - the write barrier that makes meshing safe under writers.
 *
 * While a mesh copies a source span, the source's virtual pages are
 * read-only. A thread writing to them faults; this SIGSEGV handler sees
 * that a mesh is in progress (mesh_gen is odd), waits on a futex for it to
 * finish, and returns: the write is retried and lands, through the new
 * mapping, in the destination's physical page where the object now lives.
 *
 * Every other fault goes to the handler we displaced, as the kernel would
 * have delivered it: an SA_SIGINFO handler gets the original siginfo and
 * context, a plain handler the signal number; SIG_DFL means the default
 * action for the same signal (we restore it and let the fault recur, or
 * re-raise a signal that was sent); SIG_IGN ignores a sent signal, while a
 * real fault, which the kernel never lets a process ignore, gets SIG_DFL.
 * The handler runs with SA_NODEFER so that a previous handler that restores
 * its own predecessor (us) and re-raises - Python's faulthandler does - comes
 * straight back here with a depth mark, and we then apply the default
 * action instead of looping.
 *
 * Someone may replace our handler after us (faulthandler.enable() does).
 * _mesh_barrier_ensure(), called before every meshing pass, re-installs it
 * and chains to whatever displaced it. In libmesh.so sigaction()/signal()
 * for SIGSEGV are interposed so later handlers are chained without being
 * lost (faces/libmesh.c).
 *
 * Links: the one we displace may later put back what it saved - which may
 * be us, installed before it. We must then chain to what we chained to
 * back then, not to the one that just left (faulthandler.disable() leaves
 * a handler that returns without doing anything: a fault handed to it
 * recurs forever). So each displacement installs one of LINKS entry points
 * with the displaced handler as that link's predecessor: the entry point
 * the kernel calls says which link is live. A handler displaced again
 * reuses the link whose predecessor it already is (a program that toggles
 * faulthandler uses two links, not one per toggle); past LINKS distinct
 * predecessors the last link is reused (the older behaviour).
 *
 * A fault on an arena page with no mesh in progress may be a write that
 * raced with the end of a mesh (the page is writable again): it is retried
 * once per (address, generation); a second identical fault is real.
 * SIGBUS is never handled here: a full tmpfs is not a mesh fault.
 *
 * Async-signal-safety: the handler uses only atomics, TLS (initial-exec),
 * futex, sigaction and raise.
 */
#include "internal.h"

#include <errno.h>
#include <linux/futex.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

/* glibc's own name for sigaction: in libmesh.so "sigaction" is interposed */
extern int __sigaction(int sig, const struct sigaction *act, struct sigaction *old);

_Atomic uint32_t _mesh_mesh_gen; /* odd while a mesh has pages write-protected */

#define LINKS 8
static struct sigaction link_prev[LINKS]; /* (lock) the handler each link displaced */
static unsigned nlinks;                   /* (lock) links used */
static _Atomic int installed;
/* Frame of the handler invocation that is forwarding, 0 when none. A new
 * invocation below it on the stack is nested inside the previous handler
 * (the chain came back); one at or above it means the previous handler left
 * by longjmp and this is a fresh fault. */
static __thread uintptr_t fwd_frame __attribute__((tls_model("initial-exec")));
static __thread uintptr_t last_fault_addr __attribute__((tls_model("initial-exec")));
static __thread uint32_t last_fault_gen __attribute__((tls_model("initial-exec")));

static void futex_wait(_Atomic uint32_t *addr, uint32_t val) {
  syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *addr) {
  syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, 0x7fffffff, NULL, NULL, 0);
}

void _mesh_barrier_begin(void) {
  mesh_fetch_add_seq_cst(&_mesh_mesh_gen, 1); /* odd: protected window open */
}

void _mesh_barrier_end(void) {
  mesh_fetch_add_seq_cst(&_mesh_mesh_gen, 1); /* even: every alias is writable */
  futex_wake_all(&_mesh_mesh_gen);
}

void _mesh_barrier_wait(uint32_t gen) {
  /* a fork child, before its atfork handler, inherits the parent's open
   * barrier, which nobody there would end: it maps its heap and ends it */
  while (mesh_load_seq_cst(&_mesh_mesh_gen) == gen && !_mesh_fork_child_fault()) futex_wait(&_mesh_mesh_gen, gen);
}

static void apply_default(int sig, siginfo_t *info) {
  struct sigaction dfl;
  _mesh_fill(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  __sigaction(sig, &dfl, NULL);
  /* a sent signal will not recur by itself; a fault recurs on return */
  if (info->si_code <= 0) raise(sig);
}

static void forward(int sig, siginfo_t *info, void *ctx, uintptr_t frame, unsigned link) {
  struct sigaction p = link_prev[link];
  if (fwd_frame && frame < fwd_frame) { /* the chain came back to us: nobody else wants it */
    apply_default(sig, info);
    return;
  }
  uintptr_t saved = fwd_frame;
  if (p.sa_flags & SA_SIGINFO) {
    fwd_frame = frame;
    p.sa_sigaction(sig, info, ctx);
  } else if (p.sa_handler == SIG_DFL) {
    apply_default(sig, info);
  } else if (p.sa_handler == SIG_IGN) {
    if (info->si_code > 0) apply_default(sig, info); /* a real fault cannot be ignored */
  } else {
    fwd_frame = frame;
    p.sa_handler(sig);
  }
  fwd_frame = saved; /* not reached when the handler longjmps: see fwd_frame */
}

static void segv_handler(unsigned link, int sig, siginfo_t *info, void *ctx) {
  int saved = errno;
  uintptr_t addr = (uintptr_t)info->si_addr;
  if (info->si_code > 0 && _mesh_arena.base && addr - _mesh_arena.base < _mesh_arena.size) {
    uint32_t gen = mesh_load_seq_cst(&_mesh_mesh_gen);
    if (gen & 1) {
      if (_mesh_fork_child_fault()) { /* a fork child before its handler: its heap is mapped now */
        errno = saved;
        return;
      }
      mesh_stat_add(mesh_barrier_waits, 1);
      _mesh_barrier_wait(gen);
      errno = saved;
      return;
    }
    if (last_fault_addr != addr || last_fault_gen != gen) {
      last_fault_addr = addr;
      last_fault_gen = gen;
      errno = saved;
      return;
    }
  }
  uintptr_t frame = (uintptr_t)__builtin_frame_address(0);
  if (fwd_frame && frame >= fwd_frame) fwd_frame = 0; /* the last forward was left by longjmp */
  forward(sig, info, ctx, frame, link);
  errno = saved;
}

#define LINK_ENTRY(i) \
  static void segv_link_##i(int sig, siginfo_t *info, void *ctx) { segv_handler(i, sig, info, ctx); }
LINK_ENTRY(0)
LINK_ENTRY(1)
LINK_ENTRY(2)
LINK_ENTRY(3)
LINK_ENTRY(4)
LINK_ENTRY(5)
LINK_ENTRY(6)
LINK_ENTRY(7)
#undef LINK_ENTRY
static void (*const link_entry[LINKS])(int, siginfo_t *, void *) = {
    segv_link_0, segv_link_1, segv_link_2, segv_link_3, segv_link_4, segv_link_5, segv_link_6, segv_link_7};

/* The link whose entry point a is, or -1 if a is not ours. */
static int link_of(const struct sigaction *a) {
  if (!(a->sa_flags & SA_SIGINFO)) return -1;
  for (int i = 0; i < LINKS; i++)
    if (a->sa_sigaction == link_entry[i]) return i;
  return -1;
}

static bool same_action(const struct sigaction *a, const struct sigaction *b) {
  bool info = a->sa_flags & SA_SIGINFO;
  if (info != (bool)(b->sa_flags & SA_SIGINFO) || a->sa_flags != b->sa_flags) return false;
  if (info ? a->sa_sigaction != b->sa_sigaction : a->sa_handler != b->sa_handler) return false;
  return __builtin_memcmp(&a->sa_mask, &b->sa_mask, sizeof a->sa_mask) == 0;
}

static bool install_link(int i) {
  struct sigaction mine;
  _mesh_fill(&mine, 0, sizeof mine);
  mine.sa_sigaction = link_entry[i];
  mine.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK | SA_RESTART;
  sigemptyset(&mine.sa_mask);
  return __sigaction(SIGSEGV, &mine, NULL) == 0;
}

/* Lock held. Returns false when the handler cannot be installed (then no
 * mesh may run). */
bool _mesh_barrier_ensure(void) {
  struct sigaction cur;
  if (__sigaction(SIGSEGV, NULL, &cur) != 0) return false;
  if (link_of(&cur) >= 0) return true;
  /* chain to whatever displaced us (or was first), on the link that
   * already chains to it, else on a new one */
  int j = -1;
  for (unsigned i = 0; i < nlinks && j < 0; i++)
    if (same_action(&link_prev[i], &cur)) j = (int)i;
  if (j < 0) j = nlinks < LINKS ? (int)nlinks++ : LINKS - 1;
  link_prev[j] = cur;
  if (!install_link(j)) return false;
  mesh_store_relaxed(&installed, 1);
  return true;
}

/* libmesh.so's sigaction(SIGSEGV, ...) while our handler is installed: the
 * new handler becomes the one we forward to; the caller sees the handler it
 * replaced. Returns 0, or -1 when the barrier is not installed (the caller
 * then performs a plain sigaction). */
int _mesh_barrier_user_sigaction(const struct sigaction *act, struct sigaction *old) {
  if (!mesh_load_relaxed(&installed)) return -1;
  struct sigaction cur;
  int i;
  if (__sigaction(SIGSEGV, NULL, &cur) != 0 || (i = link_of(&cur)) < 0) return -1;
  /* No lock: sigaction must stay async-signal-safe. A crash racing with a
   * handler change may see either handler, as with a plain sigaction. */
  if (old) *old = link_prev[i];
  if (!act) return 0;
  int k = link_of(act);
  if (k < 0) link_prev[i] = *act;
  else if (k != i && !install_link(k)) return -1; /* an entry point of ours put back: that link is live again */
  return 0;
}

/* ---- system calls in flight ---------------------------------------------
 *
 * A system call that writes into a write-protected buffer does not fault:
 * it fails with EFAULT, and some calls have consumed their input by then (a
 * datagram, an eventfd count). So the calls libmesh.so wraps publish their
 * buffer ([lo, hi), the hull of all its pieces) in a slot for their whole
 * length, and mesh_pair skips a source span that meets a published buffer.
 * The handshake is Dekker's: the caller publishes, then reads mesh_gen and
 * waits while it is odd (a mesh in progress may have protected the buffer
 * before seeing the slot); the mesher makes mesh_gen odd, then reads the
 * slots. All seq_cst, so one of the two sees the other. With every slot
 * taken, the caller counts itself in slots_overflow and no mesh runs until
 * it is done. A slot whose range is being written reads as "everything". */
#define SYSCALL_SLOTS 256
#define SLOT_CLAIMED ((uintptr_t)1) /* lo while the range is being written */
static struct {
  _Atomic uintptr_t lo, hi;
} slots[SYSCALL_SLOTS];
static _Atomic uint32_t slots_used, slots_overflow;

int _mesh_syscall_enter(const void *lo, const void *hi) {
  uintptr_t l = (uintptr_t)lo, h = (uintptr_t)hi, base = _mesh_arena.base;
  if (!base || h <= l || l >= base + _mesh_arena.size || h <= base) return -1;
  int token = SYSCALL_SLOTS; /* overflow */
  mesh_fetch_add_seq_cst(&slots_used, 1);
  for (int i = 0; i < SYSCALL_SLOTS; i++) {
    uintptr_t expected = 0;
    if (mesh_load_relaxed(&slots[i].lo) == 0 &&
        atomic_compare_exchange_strong(&slots[i].lo, &expected, SLOT_CLAIMED)) {
      mesh_store_seq_cst(&slots[i].hi, h);
      mesh_store_seq_cst(&slots[i].lo, l);
      token = i;
      break;
    }
  }
  if (token == SYSCALL_SLOTS) mesh_fetch_add_seq_cst(&slots_overflow, 1);
  uint32_t gen;
  while ((gen = mesh_load_seq_cst(&_mesh_mesh_gen)) & 1) _mesh_barrier_wait(gen);
  return token;
}

void _mesh_syscall_exit(int token) {
  if (token < 0) return;
  if (token == SYSCALL_SLOTS) mesh_fetch_sub_seq_cst(&slots_overflow, 1);
  else mesh_store_seq_cst(&slots[token].lo, 0);
  mesh_fetch_sub_seq_cst(&slots_used, 1);
}

bool _mesh_syscall_overlaps(uintptr_t lo, uintptr_t hi) {
  if (!mesh_load_seq_cst(&slots_used)) return false;
  if (mesh_load_seq_cst(&slots_overflow)) return true;
  for (int i = 0; i < SYSCALL_SLOTS; i++) {
    uintptr_t l = mesh_load_seq_cst(&slots[i].lo);
    if (!l) continue;
    if (l == SLOT_CLAIMED) return true;
    if (l < hi && mesh_load_seq_cst(&slots[i].hi) > lo) return true;
  }
  return false;
}

/* fork child: the handler is inherited; nothing is protected in the child,
 * and the only thread is not inside a wrapped call. */
void _mesh_barrier_after_fork_child(void) {
  mesh_store_relaxed(&_mesh_mesh_gen, 0);
  for (int i = 0; i < SYSCALL_SLOTS; i++) mesh_store_relaxed(&slots[i].lo, 0);
  mesh_store_relaxed(&slots_used, 0);
  mesh_store_relaxed(&slots_overflow, 0);
}
