"""perfutil - what the perf/ runners share: finding libmesh.so, allocator
configurations as environments, PSS, medians and interleaved round order.

Each runner starts every measurement in a fresh subprocess of the *same*
interpreter binary (``sys.executable``, an absolute path: never the pyenv
``python3`` shim, which is a bash script that spawns more processes) and
interleaves the configurations round by round, so a slow minute on the shared
machine hits every configuration alike. Results are medians and ratios.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "perf" / "results"

# Variables that select an allocator; removed from the base environment so a
# configuration can never silently inherit another one's choice.
ALLOCATOR_VARS = ("LD_PRELOAD", "PYTHONMALLOC", "MESHALLOC", "MALLOCSTATS", "PYTHONDEVMODE")


def find_libmesh(explicit: Optional[str] = None) -> str:
    """--lib PATH, else csrc/build/libmesh.so of this repo, else the
    installed package's copy (``python -m meshalloc libpath``)."""
    if explicit:
        p = Path(explicit).resolve()
        if not p.is_file():
            sys.exit("libmesh.so not found at %s" % p)
        return str(p)
    p = REPO / "csrc" / "build" / "libmesh.so"
    if p.is_file():
        return str(p)
    try:
        out = subprocess.run([sys.executable, "-m", "meshalloc", "libpath"], capture_output=True,
                             text=True, timeout=60, cwd="/")
        cand = out.stdout.strip()
        if out.returncode == 0 and cand and Path(cand).is_file():
            return cand
    except (OSError, subprocess.SubprocessError):
        pass
    sys.exit("cannot find libmesh.so: build it with `make -C csrc`, install meshalloc, or pass --lib PATH")


def base_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARS}
    env["PYTHONHASHSEED"] = "0"  # same dict/set layouts in every child
    return env


def python_configs(lib: str) -> Dict[str, Dict[str, str]]:
    """The three ways a CPython process can get its small-object memory."""
    return {
        "pymalloc": {},
        "glibc": {"PYTHONMALLOC": "malloc"},
        "mesh": {"PYTHONMALLOC": "malloc", "LD_PRELOAD": lib},
    }


def c_configs(lib: str) -> Dict[str, Dict[str, str]]:
    return {"glibc": {}, "mesh": {"LD_PRELOAD": lib}}


def round_order(names: Sequence[str], r: int) -> List[str]:
    """Rotate the configurations each round, so every one runs first, second,
    ... equally often."""
    k = r % len(names)
    return list(names[k:]) + list(names[:k])


def read_pss_kb(pid: object = "self") -> int:
    """Pss of a process in KiB from /proc/PID/smaps_rollup (-1 if unreadable).
    PSS, not RSS: a meshed physical page mapped twice is counted once."""
    try:
        with open("/proc/%s/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return statistics.median(xs) if xs else float("nan")


def loadavg() -> float:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return -1.0


def machine_meta() -> Dict[str, object]:
    return {
        "python": sys.executable,
        "python_version": sys.version.split()[0],
        "nproc": os.cpu_count(),
        "loadavg": loadavg(),
        "uname": " ".join(os.uname()),
    }
