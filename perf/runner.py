"""runner - ``python -m perf run``: every benchmark under every allocator
configuration, one pyperf JSON file per configuration.

Configurations (each an environment for the benchmark script *and* its pyperf
workers; the table is benchlib.CONFIGS):

    pymalloc   CPython's default (no allocator variable set)
    malloc     PYTHONMALLOC=malloc (every object through glibc malloc)
    meshalloc  MESHALLOC=1 (the start-up hook installs meshalloc's PyMem hooks)
    preload    LD_PRELOAD=libmesh.so PYTHONMALLOC=malloc (libmesh is the
               process malloc, C extensions included)
    NAME       from --extra NAME=/path/lib.so: LD_PRELOAD=that library
               PYTHONMALLOC=malloc (e.g. jemalloc, mimalloc)

How the environment reaches the workers: the runner starts each script with
a base environment from which every allocator variable was removed, plus the
configuration's variables, and passes ``--inherit-environ`` with exactly the
names pyperf must copy into its workers (the configuration's, and any MESH_*
option the user set). It also passes ``--alloc-config NAME`` (and, for extra
libraries, ``--alloc-lib``), which pyperf hands on to every worker; each
worker checks that the configuration is really active (perf/benchlib.py) and
fails otherwise, so a result can never silently measure the default
allocator. Before the benchmarks, a preflight run of each configuration
checks the same thing, so a broken set-up fails in seconds.

Benchmarks run one at a time. A benchmark's pyperf worker processes are
split into rounds (``--rounds``, default 3 at full scale): in each round every
configuration runs its share of the processes, the order rotating from round
to round, and appends them to its result. The first round calibrates the loop
count of each configuration; later rounds reuse it (``--loops``), so all of a
configuration's values time the same number of iterations. On a shared
machine whose speed changes by up to 2x from one second to the next (see
perf/README.md, "Stability"), this spreads each configuration's values over
the whole time the benchmark runs, instead of one burst of a few seconds per
configuration: every configuration sees the same mix of fast and slow
phases, and pyperf's standard deviation includes that mix instead of hiding
it. A benchmark's result replaces the benchmark of the same name in
``<output-dir>/<config>.json`` (other benchmarks in the file are kept). For
each fragmentation benchmark (value: settled PSS) the runner adds derived
benchmarks ``NAME.peak``, ``NAME.after_free`` and ``NAME.live`` (bytes) from
the run metadata, so ``pyperf compare_to`` shows all four.

Each script runs in its own process group under a timeout and a memory guard
(summed PSS of the group, and the machine's MemAvailable): a runaway
workload is killed, reported, and the run continues with the next one; the
exit status is non-zero if anything failed.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from . import benchlib

PERF_DIR = Path(benchlib.PERF_DIR)
REPO = PERF_DIR.parent
RESULTS = PERF_DIR / "results"
MANIFEST = PERF_DIR / "MANIFEST"
GROUPS = ("speed", "fragmentation", "system")
DEFAULT_CONFIGS = tuple(benchlib.CONFIGS)
# fragmentation metadata that become benchmarks of their own
DERIVED = ("peak", "after_free", "live")
TIMEOUTS = {"full": 1800, "fast": 300, "smoke": 180}
# default --rounds per scale: how many slices a benchmark's worker processes
# are cut into, the configurations interleaved slice by slice
ROUNDS = {"full": 3, "fast": 2, "smoke": 1}
MIB = 1 << 20


# ---------------------------------------------------------------------------
# the manifest
# ---------------------------------------------------------------------------

def load_manifest() -> List[Tuple[str, str]]:
    """[(name, group)] in manifest order."""
    out = []
    section = None
    for raw in MANIFEST.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section == "benchmarks":
            name, group = line.split()
            if group not in GROUPS:
                raise ValueError("MANIFEST: %s has unknown group %s" % (name, group))
            out.append((name, group))
    return out


def script_of(name: str) -> Path:
    return PERF_DIR / ("bm_" + name) / "run_benchmark.py"


def kind_of(name: str) -> str:
    """The benchlib.PROFILES kind a script asks for (``make_runner("speed"``)."""
    m = re.search(r'make_runner\(\s*"(\w+)"', script_of(name).read_text())
    if not m or m.group(1) not in benchlib.PROFILES:
        raise ValueError("%s: no benchlib.make_runner(KIND) call with a known kind" % script_of(name))
    return m.group(1)


def split_processes(total: int, rounds: int) -> List[int]:
    """``total`` worker processes over at most ``rounds`` rounds, as evenly as
    possible, earlier rounds taking the remainder (no empty round)."""
    rounds = max(1, min(rounds, total))
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def calibrated_loops(path: Path) -> Optional[int]:
    """The loop count of the value runs in a pyperf JSON file (None: none yet)."""
    import pyperf
    if not path.exists():
        return None
    for bench in pyperf.BenchmarkSuite.load(str(path)).get_benchmarks():
        for run in bench.get_runs():
            if run.values:
                return int(run.get_metadata()["loops"])
    return None


def select(manifest: List[Tuple[str, str]], spec: Optional[str]) -> List[Tuple[str, str]]:
    """Benchmarks named by ``spec`` (comma list of names and group names)."""
    if not spec:
        return list(manifest)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    names = {n for n, _ in manifest}
    for w in wanted:
        if w not in names and w not in GROUPS:
            sys.exit("unknown benchmark or group %r (known: %s; groups: %s)"
                     % (w, ", ".join(n for n, _ in manifest), ", ".join(GROUPS)))
    return [(n, g) for n, g in manifest if n in wanted or g in wanted]


# ---------------------------------------------------------------------------
# configurations
# ---------------------------------------------------------------------------

class Config:
    def __init__(self, name: str, env: Dict[str, str], check: str, lib: Optional[str] = None) -> None:
        self.name = name      # file name and label
        self.env = env        # variables this configuration sets
        self.check = check    # what benchlib.check() verifies (--alloc-config)
        self.lib = lib        # library that must define malloc (extra:NAME)

    def __repr__(self) -> str:
        return "%s (%s)" % (self.name, " ".join("%s=%s" % kv for kv in self.env.items()) or "default")


def make_configs(names: List[str], extras: List[str], libmesh: Optional[str]) -> List[Config]:
    """The built-in configurations named in --configs, then every --extra.
    An --extra's name may also appear in --configs (it runs once, with the
    extras), so ``--configs jemalloc --extra jemalloc=LIB`` runs only it."""
    out = []
    extra_names = {spec.partition("=")[0] for spec in extras}
    for n in names:
        if n in extra_names and n not in DEFAULT_CONFIGS:
            continue
        if n not in DEFAULT_CONFIGS:
            sys.exit("unknown configuration %r (known: %s; others with --extra NAME=LIB)"
                     % (n, ", ".join(DEFAULT_CONFIGS)))
        out.append(Config(n, benchlib.config_env(n, libmesh), n))
    for spec in extras:
        name, sep, lib = spec.partition("=")
        if not sep or not name or not lib:
            sys.exit("--extra wants NAME=/path/to/lib.so, got %r" % spec)
        if name in DEFAULT_CONFIGS:
            sys.exit("--extra %s: that name is a built-in configuration" % name)
        if not Path(lib).is_file():
            sys.exit("--extra %s: %s does not exist" % (name, lib))
        lib = str(Path(lib).resolve())
        out.append(Config(name, benchlib.config_env(name, lib), "extra:" + name, lib))
    return out


def config_env(cfg: Config) -> Dict[str, str]:
    """The whole environment of a child under ``cfg``."""
    return dict(benchlib.base_env(), **cfg.env)


def inherit_list(cfg: Config) -> List[str]:
    """Exactly the variables pyperf must copy into the workers."""
    return benchlib.inherit_names(config_env(cfg))


# ---------------------------------------------------------------------------
# running a command under a guard
# ---------------------------------------------------------------------------

def _group_pss(pgid: int) -> int:
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
            if int(stat[stat.rfind(")") + 2:].split()[2]) != pgid:
                continue
        except (OSError, ValueError, IndexError):
            continue
        total += max(0, benchlib.pss_bytes(name))  # -1: it exited meanwhile
    return total


def run_guarded(cmd: List[str], env: Dict[str, str], timeout: float, pss_cap: int,
                min_available: int = 2 << 30) -> Tuple[int, str, str, Optional[str]]:
    """Run ``cmd`` in its own process group; SIGKILL the group on timeout,
    when its summed PSS passes ``pss_cap`` or when the machine's
    MemAvailable falls below ``min_available``. Returns (rc, stdout,
    stderr, why it was killed or None)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=REPO)
    killed: List[str] = []
    done = threading.Event()
    start = time.monotonic()

    def kill(why: str) -> None:
        killed.append(why)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass

    def watch() -> None:
        while not done.wait(1.0):
            if time.monotonic() - start > timeout:
                return kill("timeout after %.0f s" % timeout)
            avail = benchlib.meminfo().get("MemAvailable", 1 << 62)
            if avail < min_available:
                return kill("MemAvailable fell to %d MiB" % (avail // MIB))
            pss = _group_pss(proc.pid)
            if pss > pss_cap:
                return kill("process group PSS %d MiB passed the cap of %d MiB" % (pss // MIB, pss_cap // MIB))

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    try:
        out, err = proc.communicate()
    finally:
        done.set()
        t.join()
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of this group only
        except OSError:
            pass
    return proc.returncode, out, err, (killed[0] if killed else None)


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------

def derived_benchmarks(bench):
    """NAME.peak / NAME.after_free / NAME.live from a fragmentation
    benchmark's run metadata (one value per run, unit byte)."""
    import pyperf
    out = []
    runs = [r for r in bench.get_runs() if r.values]
    if not runs or "frag_peak" not in runs[0].get_metadata():
        return out
    for key in DERIVED:
        new_runs = []
        for r in runs:
            md = {k: v for k, v in r.get_metadata().items() if k not in ("name", "frag_pss_series")}
            md["name"] = "%s.%s" % (bench.get_name(), key)
            md["unit"] = "byte"
            new_runs.append(pyperf.Run([max(1, int(md["frag_" + key]))], metadata=md, collect_metadata=False))
        out.append(pyperf.Benchmark(new_runs))
    return out


def merge_into(target: Path, fresh: Path) -> List[str]:
    """Put the benchmarks of ``fresh`` (plus derived ones) into ``target``,
    replacing benchmarks of the same names. Returns the names written."""
    import pyperf
    new = pyperf.BenchmarkSuite.load(str(fresh))
    benches = []
    for b in new.get_benchmarks():
        benches.append(b)
        benches.extend(derived_benchmarks(b))
    names = {b.get_name() for b in benches}
    keep = []
    if target.exists():
        old = pyperf.BenchmarkSuite.load(str(target))
        keep = [b for b in old.get_benchmarks() if b.get_name() not in names]
    suite = pyperf.BenchmarkSuite(keep + benches)
    suite.dump(str(target), replace=True)
    return [b.get_name() for b in benches]


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------

def preflight(python: str, cfg: Config) -> str:
    """Check, in a child under the configuration's environment, that the
    configuration is really active; exit with the reason if not."""
    cmd = [python, str(PERF_DIR / "benchlib.py"), cfg.check] + ([cfg.lib] if cfg.lib else [])
    rc, out, err, killed = run_guarded(cmd, config_env(cfg), 120, 1 << 30)
    if rc != 0 or killed:
        sys.exit("configuration %r does not work with %s:\n%s%s\n%s" % (
            cfg, python, err.strip(), killed or "",
            "(MESHALLOC=1 needs meshalloc installed in that interpreter, with its start-up .pth hook: "
            "`pip install .`, not an editable install)" if cfg.name == "meshalloc" else ""))
    return out.strip().splitlines()[-1]


def pyperf_args(args) -> List[str]:
    return args.pyperf_args.split() if args.pyperf_args else []


def cmd_run(args) -> int:
    python = os.path.abspath(args.python) if args.python else sys.executable
    scale = "smoke" if args.smoke else "fast" if args.fast else "full"
    out_dir = Path(args.output_dir).resolve() if args.output_dir else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    benches = select(load_manifest(), args.bench)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    needs_mesh = "preload" in names
    configs = make_configs(names, args.extra or [], benchlib.find_libmesh(python, args.lib) if needs_mesh else None)
    if not configs:
        sys.exit("no configuration selected")
    for n in ("pyperf",):
        p = subprocess.run([python, "-c", "import %s" % n], capture_output=True, text=True,
                           env=benchlib.base_env())
        if p.returncode != 0:
            sys.exit("%s cannot import %s: pip install 'meshalloc[perf]' (or pip install pyperf)" % (python, n))
    t_start = time.monotonic()
    print("perf run: %s, scale %s, %d benchmark(s) x %d configuration(s) -> %s"
          % (python, scale, len(benches), len(configs), out_dir))
    for cfg in configs:
        print("  %-10s %s" % (cfg.name, preflight(python, cfg)))
    timeout = args.timeout or TIMEOUTS[scale]
    rounds = args.rounds or ROUNDS[scale]
    extra_args = pyperf_args(args)
    fixed_loops = any(a == "--loops" or a.startswith("--loops=") for a in extra_args)
    failures = []
    for i, (name, group) in enumerate(benches):
        total = args.processes or int(benchlib.PROFILES[kind_of(name)][scale]["processes"])  # type: ignore[call-overload]
        shares = split_processes(total, rounds)
        failed = set()
        loops: Dict[str, Optional[int]] = {}
        took: Dict[str, float] = {}
        last_out: Dict[str, str] = {}
        for cfg in configs:
            fresh = out_dir / (".%s.%s.json" % (cfg.name, name))
            if fresh.exists():
                fresh.unlink()
            took[cfg.name] = 0.0
        for r, nproc in enumerate(shares):
            for cfg in benchlib.round_order(configs, i + r):
                if cfg.name in failed:
                    continue
                fresh = out_dir / (".%s.%s.json" % (cfg.name, name))
                cmd = [python, str(script_of(name)), "--quiet", "--scale", scale, "--alloc-config", cfg.check,
                       "--append", str(fresh), "--processes", str(nproc)]
                inherit = inherit_list(cfg)
                if inherit:
                    cmd += ["--inherit-environ", ",".join(inherit)]
                if cfg.lib:
                    cmd += ["--alloc-lib", cfg.lib]
                if r > 0 and not fixed_loops:
                    # the loop count the first round calibrated for this
                    # configuration (memory and heavy profiles fix it anyway)
                    if cfg.name not in loops:
                        loops[cfg.name] = calibrated_loops(fresh)
                    if loops[cfg.name]:
                        cmd += ["--loops", str(loops[cfg.name])]
                cmd += extra_args
                t0 = time.monotonic()
                rc, out, err, killed = run_guarded(cmd, config_env(cfg), timeout, args.mem_cap * MIB)
                took[cfg.name] += time.monotonic() - t0
                last_out[cfg.name] = out
                if rc != 0 or killed:
                    failed.add(cfg.name)
                    failures.append((name, cfg.name))
                    print("  FAILED %-15s %-10s (round %d/%d: %s after %.0f s)\n%s\n%s" % (
                        name, cfg.name, r + 1, len(shares), killed or "exit %d" % rc, took[cfg.name],
                        out.strip()[-2000:], err.strip()[-4000:]), flush=True)
        for cfg in configs:
            if cfg.name in failed:
                continue
            fresh = out_dir / (".%s.%s.json" % (cfg.name, name))
            out = last_out.get(cfg.name, "")
            if not fresh.exists():  # e.g. mesh_pauses outside meshalloc
                print("  %-15s %-10s %5.1f s  %s" % (name, cfg.name, took[cfg.name], out.strip().splitlines()[-1:]),
                      flush=True)
                continue
            written = merge_into(out_dir / ("%s.json" % cfg.name), fresh)
            import pyperf
            bench = pyperf.BenchmarkSuite.load(str(fresh)).get_benchmarks()[0]
            fresh.unlink()
            summary = "%s: Mean +- std dev: %s +- %s (%d values, %d rounds)" % (
                bench.get_name(), bench.format_value(bench.mean()), bench.format_value(bench.stdev())
                if bench.get_nvalue() > 1 else "-", bench.get_nvalue(), len(shares))
            print("  %-15s %-10s %5.1f s  %s" % (name, cfg.name, took[cfg.name], summary if written else out),
                  flush=True)
    print("perf run: %.0f s; results in %s" % (time.monotonic() - t_start, out_dir))
    for cfg in configs:
        print("  %s" % (out_dir / ("%s.json" % cfg.name)))
    if failures:
        print("FAILED: %s" % ", ".join("%s/%s" % f for f in failures))
        return 1
    return 0


def cmd_list(args) -> int:
    for name, group in load_manifest():
        doc = (script_of(name).read_text().split('"""')[1].strip().splitlines() or [""])[0]
        print("%-15s %-14s %s" % (name, group, doc))
    return 0


def add_arguments(r) -> None:
    """The options of `python -m perf run` (perf/cli.py)."""
    r.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help="comma list from %s (default: all four)" % ", ".join(DEFAULT_CONFIGS))
    r.add_argument("--extra", action="append", metavar="NAME=LIB",
                   help="another malloc to preload, e.g. jemalloc=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 "
                        "(repeatable)")
    r.add_argument("--bench", help="comma list of benchmark names and/or groups (speed, fragmentation, system)")
    r.add_argument("--python", help="interpreter to benchmark (absolute path; default: this one)")
    r.add_argument("--lib", help="libmesh.so for the preload configuration (default: the installed package's)")
    speed = r.add_mutually_exclusive_group()
    speed.add_argument("--fast", action="store_true",
                       help="smaller workloads, 2 processes per benchmark: checks the pipeline in a few minutes; "
                            "its numbers are not for quoting")
    speed.add_argument("--smoke", action="store_true", help="tiny workloads, one value each (tests)")
    r.add_argument("--output-dir", help="where <config>.json go (default: perf/results)")
    r.add_argument("--processes", type=int, help="pyperf worker processes per benchmark (default: per kind)")
    r.add_argument("--rounds", type=int,
                   help="split each benchmark's worker processes into this many rounds, the configurations "
                        "interleaved round by round (default: %s)" % ", ".join("%d %s" % (v, k) for k, v in
                                                                               ROUNDS.items()))
    r.add_argument("--pyperf-args", help="more pyperf options for every script, one string")
    r.add_argument("--timeout", type=float, help="seconds per benchmark script (default: 1800 full, 300 fast)")
    r.add_argument("--mem-cap", type=int, default=4096,
                   help="MiB of PSS a benchmark's process group may use before it is killed (default 4096)")
