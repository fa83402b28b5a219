"""Shared fixtures for the meshalloc test suite.

* ``cbuild(program, config)`` compiles ``tests/c/<program>.c`` together with
  every ``csrc/core/*.c`` (not through libmesh.so, so that sanitizers can
  intercept libc's malloc while the core is reached through ``mesh_*``).
  The core's object files are compiled once per configuration and session.
  Configurations: ``release`` (gcc, the project's flags), ``debug`` (gcc,
  ``-DMESH_DEBUG=3``: validators on), ``asan`` (clang, ASan+UBSan) and
  ``tsan`` (clang, TSan).
* ``run_guarded(cmd, ...)`` runs a subprocess in its own process group under
  a timeout *and* a memory guard: a watchdog thread polls
  ``/proc/meminfo`` MemAvailable and the summed PSS of the process group
  (``/proc/PID/smaps_rollup``) and kills the whole group when the machine
  gets low on memory or the group passes the test's PSS cap. Every test that
  forks, stresses or preloads goes through it.
* ``libmesh`` finds the ``libmesh.so`` to preload: the installed package's
  (``python -m meshalloc libpath``) when importable, else
  ``csrc/build/libmesh.so``, else it runs ``make -C csrc``.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CSRC = REPO / "csrc"
CORE = CSRC / "core"
TESTS_C = Path(__file__).resolve().parent / "c"

# The project's compile flags (csrc/cflags.txt, which csrc/Makefile and
# setup_mesh.py read too); tests add -O2 -g.
BASE_FLAGS = ["-O2", "-g"] + [line.strip() for line in (CSRC / "cflags.txt").read_text().splitlines()
                              if line.strip() and not line.startswith("#")]
LIBS = ["-pthread", "-ldl", "-lm", "-lrt"]

CONFIGS = {
    "release": ("gcc", BASE_FLAGS),
    "debug": ("gcc", BASE_FLAGS + ["-DMESH_DEBUG=3"]),
    "asan": ("clang", [f for f in BASE_FLAGS if f != "-O2"]
             + ["-O1", "-DMESH_DEBUG=3", "-fsanitize=address,undefined",
                "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]),
    "tsan": ("clang", [f for f in BASE_FLAGS if f != "-O2"]
             + ["-O1", "-fsanitize=thread", "-fno-omit-frame-pointer"]),
}

# Environment a sanitized binary runs with: errors are fatal and non-zero.
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:exitcode=86:allow_user_segv_handler=1:"
                    "handle_segv=1:detect_stack_use_after_return=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1:exitcode=87",
    "TSAN_OPTIONS": "halt_on_error=1:exitcode=88:second_deadlock_stack=1:report_signal_unsafe=0",
}

# Variables that would change which allocator or which options a child uses.
_SCRUB_PREFIXES = ("MESH_", "MESHALLOC")
_SCRUB_NAMES = {"MALLOCSTATS", "LD_PRELOAD", "PYTHONMALLOC", "ASAN_OPTIONS", "UBSAN_OPTIONS",
                "TSAN_OPTIONS", "MALLOC_CHECK_", "MALLOC_PERTURB_", "GLIBC_TUNABLES"}

GIB = 1 << 30
MIB = 1 << 20


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without allocator settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in _SCRUB_NAMES and not k.startswith(_SCRUB_PREFIXES)}
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---------------------------------------------------------------------------
# memory guard
# ---------------------------------------------------------------------------
def mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # fields after the command name, which may contain spaces and ')'
        rest = stat[stat.rfind(")") + 2:].split()
        if len(rest) > 2 and int(rest[2]) == pgid:
            pids.append(int(name))
    return pids


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclasses.dataclass
class RunResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration: float
    peak_pss: int
    killed: str | None  # why the guard killed the group, or None

    def describe(self, tail: int = 60) -> str:
        def cut(text: str) -> str:
            lines = text.splitlines()
            if len(lines) > tail:
                lines = [f"... ({len(lines) - tail} lines cut)"] + lines[-tail:]
            return "\n".join(lines)
        rc = self.returncode
        how = f"signal {signal.Signals(-rc).name}" if rc < 0 and -rc in signal.valid_signals() else f"exit {rc}"
        return (f"command: {' '.join(map(str, self.args))}\n"
                f"result: {how} after {self.duration:.1f}s, peak group PSS {self.peak_pss / MIB:.0f} MiB"
                + (f"\nKILLED BY GUARD: {self.killed}" if self.killed else "")
                + f"\n--- stdout ---\n{cut(self.stdout)}\n--- stderr ---\n{cut(self.stderr)}")


def run_guarded(cmd, *, timeout: float, pss_cap: int = 2 * GIB, min_available: int = 4 * GIB,
                env: dict | None = None, cwd=None, input: str | bytes | None = None,
                text: bool = True, poll: float = 0.2) -> RunResult:
    """Runs ``cmd`` in a new process group under a timeout and a memory guard.

    The group is SIGKILLed when it outlives ``timeout`` seconds, when the
    machine's MemAvailable drops below ``min_available`` bytes, or when the
    summed PSS of the group passes ``pss_cap`` bytes. Leftover members of the
    group (orphaned grandchildren) are killed when the command finishes.
    """
    cmd = [str(c) for c in cmd]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                            start_new_session=True, text=text,
                            errors="replace" if text else None)
    pgid = proc.pid
    state = {"killed": None, "peak": 0}
    done = threading.Event()

    def kill_group(reason: str) -> None:
        if state["killed"] is None:
            state["killed"] = reason
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def watchdog() -> None:
        while not done.wait(poll):
            avail = mem_available_bytes()
            if avail < min_available:
                kill_group(f"MemAvailable {avail / MIB:.0f} MiB fell below {min_available / MIB:.0f} MiB")
                return
            pss = sum(_pss_bytes(p) for p in _group_pids(pgid))
            state["peak"] = max(state["peak"], pss)
            if pss > pss_cap:
                kill_group(f"process group PSS {pss / MIB:.0f} MiB passed the cap of {pss_cap / MIB:.0f} MiB")
                return
            if time.monotonic() - start > timeout:
                kill_group(f"timeout after {timeout:.0f}s")
                return

    guard = threading.Thread(target=watchdog, daemon=True)
    guard.start()
    try:
        out, err = proc.communicate(input=input, timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        kill_group(f"timeout after {timeout:.0f}s (pipes still open)")
        out, err = proc.communicate()
    finally:
        done.set()
        guard.join()
        try:  # orphans of this command only: its own process group
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return RunResult(cmd, proc.returncode, out or ("" if text else b""), err or ("" if text else b""),
                     time.monotonic() - start, state["peak"], state["killed"])




def assert_ok(result: RunResult, what: str = "", expect_rc: int = 0) -> None:
    """Fails with the command's output tail unless it exited with ``expect_rc``
    and was not killed by the guard."""
    if result.killed or result.returncode != expect_rc:
        pytest.fail(f"{what or 'command'} failed (expected exit {expect_rc})\n{result.describe()}",
                    pytrace=False)


@pytest.fixture(scope="session")
def helpers():
    """What test modules use (as a fixture, so that they need not import
    conftest, whatever pytest's import mode): ``run`` (the guarded runner),
    ``env`` (a clean environment plus settings), ``assert_ok``, ``GIB``/``MIB``."""
    import types
    return types.SimpleNamespace(run=run_guarded, env=clean_env, assert_ok=assert_ok, GIB=GIB, MIB=MIB,
                                 sanitizer_env=SANITIZER_ENV, configs=CONFIGS, repo=REPO)


# ---------------------------------------------------------------------------
# building the C tests
# ---------------------------------------------------------------------------
def core_sources() -> list[Path]:
    return sorted(CORE.glob("*.c"))


def include_flags() -> list[str]:
    flags = [f"-I{CSRC}", f"-I{CORE}", f"-I{TESTS_C}"]
    return flags


class CBuilder:
    def __init__(self, root: Path):
        self.root = root
        self.lock = threading.Lock()
        self.core_objs: dict[str, list[Path]] = {}
        self.binaries: dict[tuple[str, str], Path] = {}
        self.errors: dict[str, str] = {}

    def _compile(self, cc: str, flags: list[str], src: Path, out: Path) -> None:
        cmd = [cc, *flags, *include_flags(), "-c", str(src), "-o", str(out)]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"compiling {src.name} failed:\n{' '.join(cmd)}\n{p.stderr[-6000:]}")

    def core(self, config: str) -> list[Path]:
        if config in self.errors:
            raise RuntimeError(self.errors[config])
        if config in self.core_objs:
            return self.core_objs[config]
        srcs = core_sources()
        if not srcs:
            raise RuntimeError(f"no core sources: {CORE}/*.c does not exist yet")
        cc, flags = CONFIGS[config]
        outdir = self.root / config
        outdir.mkdir(parents=True, exist_ok=True)
        objs = [outdir / (s.stem + ".o") for s in srcs]
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
                list(ex.map(lambda so: self._compile(cc, flags, so[0], so[1]), zip(srcs, objs)))
        except RuntimeError as e:
            self.errors[config] = str(e)
            raise
        self.core_objs[config] = objs
        return objs

    def build(self, program: str, config: str = "release") -> Path:
        with self.lock:
            key = (program, config)
            if key in self.binaries:
                return self.binaries[key]
            cc, flags = CONFIGS[config]
            if shutil.which(cc) is None:
                if cc == "clang":
                    why = "clang is not installed (.ci/run installs clang and libclang-rt-14-dev)"
                    if os.environ.get("MESHALLOC_REQUIRE_SANITIZERS"):
                        pytest.fail(why + "; MESHALLOC_REQUIRE_SANITIZERS is set", pytrace=False)
                    _SANITIZER_SKIPS.append(why)
                    pytest.skip(why)
                pytest.fail(f"{cc} is not installed", pytrace=False)
            try:
                objs = self.core(config)
            except RuntimeError as e:
                pytest.fail(str(e), pytrace=False)
            src = TESTS_C / f"{program}.c"
            out = self.root / config / program
            cmd = [cc, *flags, *include_flags(), str(src), *map(str, objs), "-o", str(out), *LIBS]
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                pytest.fail(f"building {program} ({config}) failed:\n{' '.join(cmd)}\n{p.stderr[-6000:]}",
                            pytrace=False)
            self.binaries[key] = out
            return out


@pytest.fixture(scope="session")
def cbuilder(tmp_path_factory) -> CBuilder:
    return CBuilder(tmp_path_factory.mktemp("cbuild"))


@pytest.fixture(scope="session")
def cbuild(cbuilder):
    """``cbuild(program, config="release") -> Path`` of the built test binary."""
    return cbuilder.build


@pytest.fixture(scope="session")
def core_options(cbuild) -> dict[str, int]:
    """The core's option table as ``{name: value}`` (default environment)."""
    exe = cbuild("options_dump")
    r = run_guarded([exe], timeout=60, env=clean_env())
    assert_ok(r, "options_dump")
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^option (\S+) (-?\d+)$", r.stdout, re.M)}


@pytest.fixture(scope="session")
def eager_meshing_env(core_options) -> dict[str, str]:
    """Environment that makes the core mesh at every opportunity: its
    rate-limit option (a name containing "period", e.g. period_ms,
    docs/meshing.md "Options") set to 1. Skips when the core has no such
    option (no meshing yet)."""
    names = [n for n in core_options if "period" in n]
    if not names:
        pytest.skip("the core has no meshing rate-limit option (*period*) yet")
    return {"MESH_" + names[0].upper(): "1"}


# ---------------------------------------------------------------------------
# libmesh.so for LD_PRELOAD
# ---------------------------------------------------------------------------
def _installed_libmesh(tmp: Path) -> Path | None:
    try:
        # -I and a neutral cwd: the source tree's meshalloc/ must not shadow
        # the installed package (which is the one with a built libmesh.so)
        p = subprocess.run([sys.executable, "-I", "-m", "meshalloc", "libpath"], cwd=tmp,
                           capture_output=True, text=True, timeout=60, env=clean_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    lines = p.stdout.strip().splitlines()
    path = Path(lines[-1].strip()) if lines else None
    return path if path and path.is_file() else None


@pytest.fixture(scope="session")
def libmesh(tmp_path_factory) -> Path:
    override = os.environ.get("MESH_TEST_LIBMESH")
    if override:
        return Path(override)
    tmp = tmp_path_factory.mktemp("libpath")
    found = _installed_libmesh(tmp)
    if found:
        return found
    built = CSRC / "build" / "libmesh.so"
    if not built.is_file():
        p = subprocess.run(["make", "-C", str(CSRC)], capture_output=True, text=True, timeout=600)
        if p.returncode != 0 or not built.is_file():
            pytest.fail(f"no libmesh.so: meshalloc is not installed and `make -C csrc` failed:\n"
                        f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}", pytrace=False)
    return built


_SANITIZER_SKIPS: list = []


def pytest_terminal_summary(terminalreporter):
    """A sanitizer run that did not happen is said at the end, loudly: the
    ASan/UBSan/TSan builds are what catch the races and overflows."""
    if _SANITIZER_SKIPS:
        terminalreporter.write_sep("!", "SANITIZER TESTS DID NOT RUN (%d skipped): %s"
                                   % (len(_SANITIZER_SKIPS), _SANITIZER_SKIPS[0]), red=True, bold=True)


def pytest_report_header(config):
    n = len(core_sources())
    return [f"meshalloc core sources: {n} file(s) in {CORE}",
            f"clang: {shutil.which('clang') or 'not installed'}"]
