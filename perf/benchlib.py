"""benchlib - what every benchmark in perf/ shares: the allocator
configurations, how memory is read, and the pyperf plumbing of the
bm_<name>/run_benchmark.py scripts.

Users: the pyperf scripts (``import benchlib`` with perf/ on sys.path), the
``python -m perf`` commands (runner.py, instructions.py, report.py, as
``perf.benchlib``) and the older runners (churn/, frag/, redis/). It imports
nothing from perf/, so it can never be part of an import circle, and it
imports the heavy modules (ctypes, subprocess, argparse, pyperf) only in the
functions that need them: churn.py reads its PSS with this module loaded.

* **Configurations**: one name per way of choosing the allocator, and one
  table of the environment variables each sets (:data:`CONFIGS`; extra
  libraries such as jemalloc get :data:`EXTRA`'s). Every child process starts
  from :func:`base_env`, this environment less every allocator variable, so
  no configuration silently inherits another's choice; ``MESH_*`` options
  pass through to all.
* **The allocator configuration is checked in every process.** A pyperf
  script is told which configuration it should run under (``--alloc-config
  NAME``, which the manager passes on to its workers; without it, the
  manager infers it from its own environment). Each process -- manager and
  every worker -- then *detects* what is really active (which library
  defines the process's ``malloc``, what CPython's PyMem allocator is,
  whether meshalloc's hooks are installed) and exits with an error when it
  does not match. A worker that lost ``MESHALLOC=1`` or ``LD_PRELOAD`` on the
  way (pyperf workers only inherit whitelisted environment variables)
  therefore fails the benchmark instead of silently measuring the default
  allocator. The manager also adds the variables that select an allocator to
  pyperf's ``--inherit-environ``.
* **Run metadata**: the requested and detected configuration, the library
  that defines ``malloc``, the PyMem allocator, meshalloc's options (when it
  is active), the ``MESH_*`` environment, the scale and the git revision of
  the repository are stored in every run's pyperf metadata. (pyperf records
  the Python version and executable itself.)
* **Scales**: ``--scale full|fast|smoke`` multiplies the workload constants
  (:func:`scaled`) and picks pyperf's process/value counts (:data:`PROFILES`),
  so one script serves real runs, quick runs and CI smoke tests.

Memory benchmarks (the fragmentation suite) measure one fresh process per
value: :func:`memory_bench` runs the workload in the worker *before* handing
pyperf the already-measured number, so that the PSS time series and the
other quantities of that very run can go into the run's metadata (pyperf
copies metadata before it calls the benchmark function).

Memory is PSS (:func:`pss_bytes`, the one reader of ``smaps_rollup`` in
perf/'s Python), never RSS: after meshing, one physical page is mapped at two
addresses and RSS counts it twice. What the whole machine holds is
:func:`system_bytes` (Shmem + AnonPages of /proc/meminfo): it also sees
memfd pages that no process maps, which PSS misses.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence

# str paths, and annotations with builtin types only: pathlib and typing
# would add ~1.3 MiB to the PSS that churn.py reports
PERF_DIR = os.path.dirname(os.path.realpath(__file__))
REPO = os.path.dirname(PERF_DIR)

# ---------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------

# The variables each configuration sets. LIB stands for the preloaded
# library: libmesh.so for preload, the named library for an extra
# configuration (``--extra NAME=LIB``, e.g. jemalloc), which sets EXTRA. In a
# C program (perf/frag, perf/redis) PYTHONMALLOC means nothing: there malloc
# is glibc's malloc and preload is libmesh.so.
LIB = "<lib>"
CONFIGS: dict[str, dict[str, str]] = {
    "pymalloc": {},                                         # CPython's default
    "malloc": {"PYTHONMALLOC": "malloc"},                   # every object through glibc malloc
    "meshalloc": {"MESHALLOC": "1"},                        # the start-up hook installs meshalloc's PyMem hooks
    "preload": {"LD_PRELOAD": LIB, "PYTHONMALLOC": "malloc"},  # libmesh.so is the process malloc
}
EXTRA = {"LD_PRELOAD": LIB, "PYTHONMALLOC": "malloc"}

# Environment variables that select an allocator or its options: removed
# from every child's base environment; pyperf workers must inherit the ones
# a configuration sets (and the MESH_* options).
ALLOCATOR_VARS = ("LD_PRELOAD", "PYTHONMALLOC", "MESHALLOC", "MESHALLOC_DOMAINS", "MESHALLOC_BACKEND",
                  "MALLOCSTATS", "PYTHONDEVMODE")
OPTION_PREFIX = "MESH_"


def config_env(name: str, lib: str | None = None) -> dict[str, str]:
    """The variables configuration ``name`` sets (a name not in CONFIGS is an
    extra library's), with ``lib`` as the preloaded library."""
    want = CONFIGS.get(name, EXTRA)
    if LIB in want.values() and not lib:
        sys.exit("configuration %s preloads a library and none was found (for libmesh.so: install meshalloc "
                 "into the benchmarked interpreter, `make -C csrc`, or --lib PATH)" % name)
    return {k: v.replace(LIB, lib or "") for k, v in want.items()}


def base_env() -> dict[str, str]:
    """This process's environment without any variable that selects an
    allocator, nor the scale of a pyperf script (MESH_* options are kept:
    they are passed on to every configuration and recorded in the metadata)."""
    return {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARS and k != "MESHPERF_SCALE"}


def find_libmesh(python: str = sys.executable, explicit: str | None = None) -> str | None:
    """libmesh.so for the preload configuration: ``explicit`` (--lib), else
    the one shipped in ``python``'s installed meshalloc (the same build as its
    extension), else csrc/build/libmesh.so; None if there is none."""
    import subprocess
    if explicit:
        p = os.path.realpath(explicit)
        if not os.path.isfile(p):
            sys.exit("libmesh.so not found at %s" % p)
        return p
    try:
        # -I and cwd=/ so that this source tree's meshalloc/ cannot shadow
        # the installed package
        r = subprocess.run([python, "-I", "-c", "import meshalloc; print(meshalloc.libmesh_path())"],
                           capture_output=True, text=True, timeout=60, cwd="/", env=base_env())
        cand = r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else ""
        if cand and os.path.isfile(cand):
            return cand
    except (OSError, subprocess.SubprocessError):
        pass
    built = os.path.join(REPO, "csrc", "build", "libmesh.so")
    return built if os.path.isfile(built) else None


def child_json(cmd: list[str], env: dict[str, str]) -> dict:
    """Run a measuring child of the older runners and return the JSON of its
    last output line; exit with its stderr if it fails."""
    import subprocess
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        sys.exit("%s failed (exit %d):\n%s" % (" ".join(cmd), out.returncode, out.stderr[-3000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def inherit_names(env=None) -> list[str]:
    """Variables a pyperf worker must inherit for the allocator to be the
    same as its manager's: those of ALLOCATOR_VARS and every MESH_* option."""
    env = os.environ if env is None else env
    return sorted(n for n in env if n in ALLOCATOR_VARS or n.startswith(OPTION_PREFIX))


def expected_from_env(env=None) -> str:
    """The configuration a standalone run's environment asks for."""
    env = os.environ if env is None else env
    pre = env.get("LD_PRELOAD", "")
    if env.get("MESHALLOC") == "1":
        return "meshalloc"
    if pre:
        return "preload" if "libmesh" in pre else "extra:" + os.path.basename(pre.split()[0])
    if env.get("PYTHONMALLOC") == "malloc":
        return "malloc"
    return "pymalloc"


def round_order(names: Sequence, r: int) -> list:
    """The configurations of round ``r``, rotated so that over the rounds
    every one runs first, second, ... equally often (a slow minute on the
    shared machine then hits them alike)."""
    k = r % len(names)
    return list(names[k:]) + list(names[:k])


# ---------------------------------------------------------------------------
# scales
# ---------------------------------------------------------------------------

# Workload constants are written for the full scale; the others multiply
# them. fast is for smoke-testing the whole pipeline in minutes: its numbers
# are not meant to be quoted.
SCALES = {"full": 1.0, "fast": 0.2, "smoke": 0.01}

# pyperf Runner defaults per kind of benchmark and scale (command-line
# options such as -p still override them).
PROFILES: dict[str, dict[str, dict[str, object]]] = {
    # timed Python code: pyperf calibrates the loop count. Full scale: 9
    # processes of 2 values rather than 6 of 3 -- the values of one process
    # fall in the same phase of this shared VM's speed (which flips by up to
    # 1.8x, in phases of 0.3 s to several seconds, perf/README.md
    # "Stability"), so more, shorter processes sample more phases.
    "speed": {"full": {"processes": 9, "values": 2},
              "fast": {"processes": 2, "values": 2, "min_time": 0.05},
              "smoke": {"processes": 1, "values": 1, "warmups": 0, "loops": 1}},
    # one fresh process per value, no warm-up: memory is a property of the run.
    # 6 at full scale: each process draws its own allocation order, and with
    # 3 the spread was too narrow an estimate (a repeat of frag_bands moved
    # 0.3 %, six times the spread 3 processes gave)
    "memory": {"full": {"processes": 6, "values": 1, "warmups": 0, "loops": 1},
               "fast": {"processes": 2, "values": 1, "warmups": 0, "loops": 1},
               "smoke": {"processes": 1, "values": 1, "warmups": 0, "loops": 1}},
    # a command timed from outside (start-up)
    "command": {"full": {"processes": 9, "values": 2},
                "fast": {"processes": 2, "values": 3},
                "smoke": {"processes": 1, "values": 1, "warmups": 0, "loops": 1}},
    # an expensive set-up (a big heap) then a few timed operations
    "heavy": {"full": {"processes": 4, "values": 3, "warmups": 1, "loops": 1},
              "fast": {"processes": 2, "values": 2, "warmups": 1, "loops": 1},
              "smoke": {"processes": 1, "values": 1, "warmups": 0, "loops": 1}},
}

_scale_name = "full"


def scaled(n: int, minimum: int = 1) -> int:
    """A workload constant at the current scale."""
    return max(minimum, int(n * SCALES[_scale_name]))


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------

def pss_bytes(pid: object = "self") -> int:
    """A process's PSS in bytes (this one by default), from
    /proc/PID/smaps_rollup; -1 when it cannot be read (the process is gone,
    or a kernel without smaps_rollup). PSS, not RSS: a meshed page mapped at
    two addresses counts once."""
    try:
        with open("/proc/%s/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return -1


def meminfo() -> dict[str, int]:
    """/proc/meminfo as {field: value}, kB fields in bytes."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            v = rest.split()
            out[key] = int(v[0]) * (1024 if v[1:] == ["kB"] else 1)
    return out


def system_bytes() -> int:
    """Shmem + AnonPages of the whole machine, bytes: its growth is what a
    process costs the system, memfd pages that nobody maps included."""
    m = meminfo()
    return m.get("Shmem", 0) + m.get("AnonPages", 0)


def memfd_bytes(pid: object = "self") -> int:
    """Bytes the arena memfds of a process really hold (their allocated
    blocks): pages written with pwrite and not yet touched, which its PSS
    does not show; 0 for a process without meshalloc."""
    total = 0
    d = "/proc/%s/fd" % pid
    try:
        names = os.listdir(d)
    except OSError:
        return 0
    for n in names:
        try:
            if "meshalloc-arena" in os.readlink(os.path.join(d, n)):
                total += os.stat(os.path.join(d, n)).st_blocks * 512
        except OSError:
            pass
    return total


_SHARED_INTS = range(-5, 257)


def live_size(roots) -> int:
    """Bytes of the objects reachable from ``roots`` through lists, tuples,
    dicts and sets (the containers the workloads build), each object counted
    once, as ``sys.getsizeof`` sees it. Small ints and interned singletons are
    shared with the interpreter and not counted. An estimate of the live
    data the allocator must keep, without the allocator's own rounding."""
    seen = set()
    total = 0
    stack = list(roots)
    getsizeof = sys.getsizeof
    while stack:
        o = stack.pop()
        if o is None or o is True or o is False or id(o) in seen:
            continue
        if type(o) is int and o in _SHARED_INTS:
            continue
        seen.add(id(o))
        total += getsizeof(o)
        t = type(o)
        if t is list or t is tuple or t is set or t is frozenset:
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
    return total


class PssRecorder:
    """PSS samples over time for one workload run: ``mark(label)`` reads PSS
    and remembers (seconds since start, bytes, label). Reading smaps_rollup
    costs ~0.1-1 ms (it walks every mapping), so workloads sample at a few
    dozen points, never inside timed code."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.samples: list[list[object]] = []
        self.peak = 0

    def mark(self, label: str = "") -> int:
        p = pss_bytes()
        if p < 0:
            raise RuntimeError("cannot read this process's PSS")
        self.peak = max(self.peak, p)
        self.samples.append([round(time.perf_counter() - self.t0, 4), p, label])
        return p

    def series_json(self, base: int) -> str:
        """Compact JSON ``[[t, pss_above_base, label], ...]`` (labels only where set):
        fits a pyperf metadata value (one line)."""
        rows = [[t, p - base, lab] if lab else [t, p - base] for t, p, lab in self.samples]
        return json.dumps(rows, separators=(",", ":"))


# ---------------------------------------------------------------------------
# what is really active in this process
# ---------------------------------------------------------------------------

def malloc_library() -> str:
    """Real path of the shared object that defines this process's ``malloc``
    (global symbol lookup, as every caller of malloc sees it)."""
    import ctypes

    class _DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

    libc = ctypes.CDLL(None)
    addr = ctypes.cast(libc.malloc, ctypes.c_void_p).value
    info = _DlInfo()
    dladdr = libc.dladdr
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    if not dladdr(ctypes.c_void_p(addr), ctypes.byref(info)) or not info.dli_fname:
        return "?"
    return os.path.realpath(info.dli_fname.decode())


def _pymem_allocator_via_stats() -> str:
    """Fallback when _testcapi is missing: sys._debugmallocstats() writes
    pymalloc's arena statistics to fd 2 only when pymalloc is in use."""
    import tempfile
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            sys._debugmallocstats()  # type: ignore[attr-defined]
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    return "pymalloc" if "arenas" in text else "malloc"


def pymem_allocator() -> str:
    """CPython's name for its PyMem allocator ("pymalloc", "malloc",
    "pymalloc_debug", ...); "hooked" when a non-default hook such as
    meshalloc's is installed."""
    try:
        import _testcapi  # type: ignore[import-not-found]
    except ImportError:
        return _pymem_allocator_via_stats()
    try:
        return str(_testcapi.pymem_getallocatorsname())
    except RuntimeError:  # "cannot get allocators name": a custom hook
        return "hooked"


def detect() -> dict[str, object]:
    """What allocator this process really runs under."""
    mod = sys.modules.get("meshalloc")
    installed = bool(mod is not None and mod.is_installed())
    lib = malloc_library()
    preloaded = "libmesh" in os.path.basename(lib)
    if preloaded:
        try:
            import meshalloc
            preloaded = bool(meshalloc.is_preloaded())
        except ImportError:
            pass  # libmesh is the malloc; the package just is not importable
    return {"malloc_library": lib, "pymem": pymem_allocator(), "meshalloc_installed": installed,
            "libmesh_preloaded": preloaded}


def check(config: str, actual: dict[str, object], extra_lib: str | None = None) -> list[str]:
    """Mismatches between configuration ``config`` and ``actual`` (empty: OK)."""
    lib = str(actual["malloc_library"])
    libc_malloc = "libc" in os.path.basename(lib)
    problems = []

    def want(cond: bool, what: str) -> None:
        if not cond:
            problems.append(what)

    if config == "pymalloc":
        want(actual["pymem"] == "pymalloc", "PyMem allocator is pymalloc")
        want(not actual["meshalloc_installed"], "meshalloc is not installed")
        want(libc_malloc, "malloc is glibc's")
    elif config == "malloc":
        want(actual["pymem"] == "malloc", "PYTHONMALLOC=malloc is in effect")
        want(not actual["meshalloc_installed"], "meshalloc is not installed")
        want(libc_malloc, "malloc is glibc's")
    elif config == "meshalloc":
        want(bool(actual["meshalloc_installed"]), "meshalloc.is_installed() (MESHALLOC=1)")
        want(not actual["libmesh_preloaded"], "libmesh is not preloaded")
    elif config == "preload":
        want(bool(actual["libmesh_preloaded"]), "libmesh.so is the process malloc (meshalloc.is_preloaded())")
        want(actual["pymem"] == "malloc", "PYTHONMALLOC=malloc is in effect")
        want(not actual["meshalloc_installed"], "meshalloc's hooks are not installed")
    elif config.startswith("extra:"):
        if extra_lib:
            want(lib == os.path.realpath(extra_lib), "malloc comes from %s" % extra_lib)
        else:
            want(not libc_malloc, "malloc is not glibc's")
        want(actual["pymem"] == "malloc", "PYTHONMALLOC=malloc is in effect")
    else:
        problems.append("a known configuration (got %r)" % config)
    return problems


def meshalloc_active(actual: dict[str, object]) -> bool:
    return bool(actual["meshalloc_installed"] or actual["libmesh_preloaded"])


def meshalloc_options() -> str:
    """``name=value,...`` of every meshalloc option (when meshalloc is active)."""
    import meshalloc
    return ",".join("%s=%s" % (n, meshalloc.get_option(n)) for n in meshalloc.option_names())


def meshalloc_stats() -> dict[str, int]:
    """meshalloc.stats() as a dict, whether it returns a dict or a typed
    object with to_dict()."""
    import meshalloc
    s = meshalloc.stats()
    return dict(s.to_dict() if hasattr(s, "to_dict") else s)


# The idle period after a fragmentation workload's frees, seconds (full
# scale; shorter at the small scales): what a program gets with no API call.
IDLE_S = 3.0


def settle() -> dict[str, object]:
    """The 'settled' step: what the program gets with no API call. The
    workload goes on lightly for IDLE_S seconds (a few small allocations
    every 100 ms, as a service between requests does), so that whatever the
    allocator does by itself (meshalloc's meshing thread, inline passes,
    decay of free pages) has happened. No gc.collect(), no compact(): the
    explicit figure is taken after it (:func:`compact_step`)."""
    idle = IDLE_S * min(1.0, max(0.1, SCALES[_scale_name]))
    t0 = time.perf_counter()
    keep: list[object] = []
    while time.perf_counter() - t0 < idle:
        time.sleep(0.1)
        keep.append(["idle-%d" % i for i in range(10)])
        if len(keep) > 5:
            keep.pop(0)
    return {"idle_s": round(idle, 3)}


def compact_step(actual: dict[str, object]) -> dict[str, object]:
    """The 'compacted' step, after the settled PSS was read: gc.collect(),
    then meshalloc.compact() when meshalloc is the allocator; nothing else
    otherwise (no malloc_trim: the default allocators are measured as a
    program would see them)."""
    import gc
    t0 = time.perf_counter()
    gc.collect()
    out: dict[str, object] = {}
    if meshalloc_active(actual):
        import meshalloc
        r = meshalloc.compact()
        out = {"compact_pages_freed": int(r.pages_freed), "compact_pause_s": float(r.pause_seconds)}
    out["compact_s"] = time.perf_counter() - t0
    return out


def git_revision() -> str:
    """The repository's revision (+dirty), or MESHPERF_REVISION when set:
    perf/instructions.py sets it, because under valgrind a subprocess's vfork
    runs as a fork without atfork handlers, whose child shares meshalloc's
    heap with the parent until it execs (docs/design.md, "fork")."""
    import subprocess
    if os.environ.get("MESHPERF_REVISION"):
        return os.environ["MESHPERF_REVISION"]
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("+dirty" if dirty else "")) if rev else "unknown"


def loadavg() -> float:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return -1.0


def machine_meta() -> dict[str, object]:
    """Where a result of the older runners (churn/, frag/, redis/) was
    measured (the pyperf scripts get theirs from pyperf)."""
    return {"python": sys.executable, "python_version": sys.version.split()[0], "nproc": os.cpu_count(),
            "loadavg": loadavg(), "uname": " ".join(os.uname())}


# ---------------------------------------------------------------------------
# the pyperf runner
# ---------------------------------------------------------------------------

class Context:
    """What a benchmark script knows after :func:`make_runner`."""

    def __init__(self, runner, config: str, actual: dict[str, object]) -> None:
        self.runner = runner
        self.config = config
        self.actual = actual
        self.meshing = meshalloc_active(actual)

    @property
    def is_worker(self) -> bool:
        return bool(self.runner.args.worker)

    def settle(self) -> dict[str, object]:
        return settle()

    def compact(self) -> dict[str, object]:
        return compact_step(self.actual)


def make_runner(kind: str, description: str = "") -> Context:
    """Create the script's pyperf Runner, check the allocator configuration
    in this process and record it in the run metadata."""
    global _scale_name
    import argparse
    import pyperf

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--scale", choices=sorted(SCALES), default=os.environ.get("MESHPERF_SCALE", "full"))
    known, _ = pre.parse_known_args()
    _scale_name = known.scale

    def pass_args(cmd: list[str], args) -> None:
        cmd.extend(["--scale", args.scale, "--alloc-config", args.alloc_config, "--git-revision", args.git_revision])
        if args.alloc_lib:
            cmd.extend(["--alloc-lib", args.alloc_lib])

    runner = pyperf.Runner(add_cmdline_args=pass_args, **PROFILES[kind][_scale_name])  # type: ignore[arg-type]
    if description:
        runner.argparser.description = description
    ap = runner.argparser
    ap.add_argument("--scale", choices=sorted(SCALES), default=_scale_name,
                    help="workload size: full (default), fast (pipeline checks) or smoke (CI)")
    ap.add_argument("--alloc-config", default=None,
                    help="configuration this run must measure (pymalloc, malloc, meshalloc, preload, extra:NAME); "
                         "default: inferred from the environment; every worker checks it is really active")
    ap.add_argument("--alloc-lib", default=None, help="for extra:NAME, the library that must define malloc")
    ap.add_argument("--git-revision", default=None, help=argparse.SUPPRESS)
    args = runner.parse_args()
    if not args.alloc_config:
        args.alloc_config = expected_from_env()
    if not args.git_revision:
        args.git_revision = git_revision()
    if not args.worker:
        # the variables selecting this process's allocator must reach the
        # workers (pyperf passes only a whitelist of the environment)
        args.inherit_environ = sorted(set(args.inherit_environ or []) | set(inherit_names()))

    actual = detect()
    problems = check(args.alloc_config, actual, args.alloc_lib)
    if problems:
        sys.stderr.write("meshalloc perf: configuration %r is NOT active in this %s process (pid %d):\n  expected: %s"
                         "\n  detected: %s\n  relevant environment: %s\n"
                         % (args.alloc_config, "worker" if args.worker else "manager", os.getpid(),
                            "; ".join(problems), json.dumps(actual),
                            {n: os.environ[n] for n in inherit_names()}))
        sys.exit(3)

    md = runner.metadata
    md["alloc_config"] = args.alloc_config
    md["alloc_malloc_library"] = str(actual["malloc_library"])
    md["alloc_pymem"] = str(actual["pymem"])
    md["alloc_meshalloc_installed"] = int(bool(actual["meshalloc_installed"]))
    md["alloc_libmesh_preloaded"] = int(bool(actual["libmesh_preloaded"]))
    env_desc = " ".join("%s=%s" % (n, os.environ[n]) for n in inherit_names())
    md["alloc_env"] = env_desc or "(none)"
    md["scale"] = _scale_name
    md["git_revision"] = args.git_revision
    if meshalloc_active(actual):
        import meshalloc
        md["meshalloc_options"] = meshalloc_options()
        md["meshalloc_version"] = meshalloc.version()
        md["meshalloc_domains"] = ",".join(meshalloc.installed_domains()) or "preloaded"
    return Context(runner, args.alloc_config, actual)


def memory_bench(ctx: Context, name: str, workload: Callable[[Context], dict[str, object]],
                 value_key: str = "settled") -> None:
    """Register a memory benchmark measured once per worker process.

    ``workload(ctx)`` returns a dict with at least ``value_key``; every
    int/float/str entry becomes run metadata (a str must be one line). The
    benchmark's value is ``result[value_key]`` in bytes (at least 1: pyperf
    refuses zero). A script registers one memory benchmark: a worker runs the
    workload before pyperf tells it which task it has."""
    if not ctx.is_worker:
        ctx.runner.bench_time_func(name, _never_called, metadata={"unit": "byte"})
        return
    result = workload(ctx)
    value = max(1, int(result[value_key]))
    md: dict[str, object] = {"unit": "byte"}
    for k, v in result.items():
        if isinstance(v, (int, float, str)) and not isinstance(v, bool):
            md["frag_" + k if not k.startswith("frag_") else k] = v
    ctx.runner.bench_time_func(name, lambda loops: value * loops, metadata=md)


def _never_called(loops):  # pragma: no cover - only workers run benchmarks
    raise AssertionError("the manager process does not run benchmarks")


# meshalloc's passes by who ran them (stats fields <what>_<kind>)
PASS_KINDS = ("triggered", "thread", "compact")
PASS_FIELDS = ("passes", "meshes", "pages", "pass_ns")


def frag_result(rec: PssRecorder, base: int, peak: int, after_free: int, settled: int, live: int,
                extra: dict[str, object] | None = None, ctx: Context | None = None) -> dict[str, object]:
    """The dict a fragmentation workload returns: PSS above the process's
    baseline at the peak, after the frees, settled (after an idle period,
    no API call: the headline) and compacted (then gc.collect() and, under
    meshalloc, compact(): taken here, after the settled figure), the live
    bytes, and recovery = (peak - settled) / (peak - live)."""
    peak = max(peak, rec.peak - base)
    out: dict[str, object] = {"base": base, "peak": peak, "after_free": after_free, "settled": settled,
                              "live": live}
    if extra:
        out.update(extra)
    if ctx is not None:
        out.update(ctx.compact())
        out["compacted"] = rec.mark("compacted") - base
    out["pss_series"] = rec.series_json(base)
    denom = peak - live
    out["recovery"] = round((peak - settled) / denom, 4) if denom > 0 else 0.0
    if "compact_pages_freed" in out:
        # meshalloc: what limits meshing in a big heap is the kernel mappings
        # it used; and who meshed (inline passes, the meshing thread,
        # compact()). Read only now, after the PSS figures: the first stats()
        # call imports and allocates (1.6 MiB of PSS on frag_sparse).
        st = meshalloc_stats()
        for k in ("mesh_count", "mesh_adjacent", "arena_mappings", "mesh_budget_stops", "mesher_thread_starts") + \
                tuple("%s_%s" % (f, kind) for kind in PASS_KINDS for f in PASS_FIELDS):
            if k in st:
                out[k] = int(st[k])
    return out


def main_detect() -> None:
    """``python perf/benchlib.py [CONFIG]``: print what this process runs under
    (and exit 3 if CONFIG is given and not active)."""
    if os.environ.get("MESHALLOC") == "1" or "meshalloc" in sys.modules:
        import meshalloc  # noqa: F401  (already imported by the start-up hook)
    actual = detect()
    print(json.dumps(actual))
    if len(sys.argv) > 1:
        problems = check(sys.argv[1], actual, sys.argv[2] if len(sys.argv) > 2 else None)
        if problems:
            sys.stderr.write("configuration %s is not active: expected %s\n" % (sys.argv[1], "; ".join(problems)))
            sys.exit(3)


if __name__ == "__main__":
    main_detect()
