"""instructions - ``python -m perf instructions``: the speed benchmarks under
every allocator configuration, counted in instructions instead of seconds.

Wall-clock ratios on a shared VM move by +-0.2 from run to run; instruction
counts do not depend on the machine's phase. Each benchmark script runs as a
single pyperf worker (no calibration: ``--worker --loops L --warmups 0
--values 1``) under ``valgrind --tool=callgrind``, twice per configuration:
once with ``--loops 1`` and once with ``--loops 1+K``. Reported:

- **whole process**: the instructions of the ``1+K`` run, start-up included
  (the interpreter's own allocations are allocator work too);
- **per loop**: (``1+K`` run - ``1`` run) / K, which cancels the start-up
  and leaves the benchmark's own work;
- **allocator**: the ``1+K`` run's instructions in allocator code, found by
  callgrind_annotate (self cost per function): meshalloc's core and hooks
  (``csrc/``, ``libmesh.so``, ``_meshalloc``), pymalloc (``obmalloc.c``),
  glibc's malloc (``malloc/malloc.c``, ``malloc/arena.c``), and any library
  whose name holds jemalloc, mimalloc or tcmalloc.

Ratios are to pymalloc in the same run; the last rows are geometric means.
The configurations are the runner's (``perf/runner.py``); results go to
``<output-dir>/instructions.json``, which ``python -m perf report`` shows
beside the wall-clock table when it finds it.

    python -m perf instructions [--bench speed] [--configs pymalloc,meshalloc,preload] [--loops K]
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

from . import benchlib, runner

ALLOC_FILES = ("csrc/", "obmalloc.c", "malloc/malloc.c", "malloc/arena.c", "malloc/hooks.c")
ALLOC_OBJECTS = ("libmesh", "_meshalloc", "jemalloc", "mimalloc", "tcmalloc")
LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S.*)$")


def total_of(out_file: Path) -> int:
    for line in out_file.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError("%s: no totals line" % out_file)


def allocator_of(out_file: Path) -> int:
    """Instructions in allocator functions (self cost), by file and object.

    Only the per-function table is read: with source annotation on, the
    annotated files' call lines ("=> file:function (Nx)") carry inclusive
    costs that the pattern would match too (they made meshalloc's allocator
    code look 2x bigger than it is)."""
    p = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", "--inclusive=no", str(out_file)],
                       capture_output=True, text=True, timeout=600)
    total = 0
    for line in p.stdout.splitlines():
        m = LINE.match(line)
        if not m or "PROGRAM TOTALS" in m.group(2) or m.group(2).startswith("=>"):
            continue
        where = m.group(2)
        if any(f in where.split(":", 1)[0] for f in ALLOC_FILES) or any(o in where for o in ALLOC_OBJECTS):
            total += int(m.group(1).replace(",", ""))
    return total


TIME_DRIVEN = ("thread_main", "_mesh_maybe_mesh")


def time_driven_of(out_file: Path) -> int:
    """Allocator instructions that the clock decides, not the program's calls:
    the meshing thread (thread_main) and what the inline trigger ran when a
    pass or a publication was due (_mesh_maybe_mesh), inclusive. Callgrind
    slows the program ~50x while the periods (period_ms, the publication's
    500 ms, the decay epoch) stay in real time, so this share runs ~50x more
    often against the program's work than it does natively."""
    p = subprocess.run(["callgrind_annotate", "--auto=no", "--threshold=100", "--inclusive=yes", str(out_file)],
                       capture_output=True, text=True, timeout=600)
    # (the inclusive table may list a function twice, with its path as
    # recorded and relative to the current directory: counted once)
    found: Dict[str, int] = {}
    for line in p.stdout.splitlines():
        m = LINE.match(line)
        if not m or m.group(2).startswith("=>"):
            continue
        where = m.group(2).split(" [", 1)[0]
        if "csrc/" in where and where.rsplit(":", 1)[-1] in TIME_DRIVEN:
            key = where[where.index("csrc/"):]
            found[key] = max(found.get(key, 0), int(m.group(1).replace(",", "")))
    return sum(found.values())


def count(python: str, cfg: runner.Config, name: str, loops: int, scale: str, work: Path, revision: str) -> Path:
    out = work / ("%s.%s.%d.cg" % (cfg.name, name, loops))
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=%s" % out, "--dump-instr=no",
           "--trace-children=no", python, str(runner.script_of(name)), "--worker", "--loops", str(loops),
           "--warmups", "0", "--values", "1", "--scale", scale, "--alloc-config", cfg.check]
    if cfg.lib:
        cmd += ["--alloc-lib", cfg.lib]
    # (a fixed hash seed: with a random one, dict layouts and so counts
    # differ from process to process by a few per cent)
    env = dict(runner.config_env(cfg), MESHPERF_REVISION=revision, PYTHONHASHSEED="0")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0 or not out.exists():
        raise RuntimeError("%s under %s (loops %d) failed (exit %d):\n%s" % (
            name, cfg.name, loops, p.returncode, p.stderr[-3000:]))
    return out


def geomean(xs: List[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def table(results: Dict[str, Dict[str, Dict[str, float]]], configs: List[str]) -> str:
    """Markdown: per benchmark, each configuration's four ratios to pymalloc
    (the last: allocator instructions less the time-driven ones)."""
    head = "| benchmark | " + " | ".join("%s whole / per loop / allocator / calls" % c for c in configs) + " |"
    rows = [head, "|---|" + "---|" * len(configs)]
    ratios: Dict[str, List[List[float]]] = {c: [[], [], [], []] for c in configs}
    for name, per in results.items():
        ref = per.get("pymalloc")
        cells = []
        for c in configs:
            r = per.get(c)
            if not r or not ref:
                cells.append("-")
                continue
            ref_alloc = ref["allocator"] or float("nan")
            four = [r["whole"] / ref["whole"], r["per_loop"] / ref["per_loop"], r["allocator"] / ref_alloc,
                    (r["allocator"] - r.get("time_driven", 0)) / ref_alloc]
            for k in range(4):
                if four[k] == four[k]:
                    ratios[c][k].append(four[k])
            cells.append("%.3f / %.3f / %.2f / %.2f" % tuple(four))
        rows.append("| %s | %s |" % (name, " | ".join(cells)))
    rows.append("| **geometric mean** | %s |" % " | ".join(
        "**%.3f / %.3f / %.2f / %.2f**" % tuple(geomean(ratios[c][k]) for k in range(4)) for c in configs))
    return "\n".join(rows)


def cmd_instructions(args) -> int:
    python = os.path.abspath(args.python) if args.python else sys.executable
    for tool in ("valgrind", "callgrind_annotate"):
        if subprocess.run(["sh", "-c", "command -v %s" % tool], capture_output=True).returncode != 0:
            sys.exit("perf instructions needs %s (apt-get install valgrind)" % tool)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    if "pymalloc" not in names:
        names.insert(0, "pymalloc")  # the reference
    configs = runner.make_configs(names, args.extra or [],
                                  benchlib.find_libmesh(python, args.lib) if "preload" in names else None)
    benches = runner.select(runner.load_manifest(), args.bench or "speed")
    out_dir = Path(args.output_dir).resolve() if args.output_dir else runner.RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    k = max(1, args.loops)
    print("perf instructions: %s, scale %s, loops 1 and %d, %d benchmark(s) x %d configuration(s)"
          % (python, args.scale, 1 + k, len(benches), len(configs)), flush=True)
    results: Dict[str, Dict[str, Dict[str, float]]] = {}
    failed = []
    revision = benchlib.git_revision()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="perf-instr-") as tmp:
        work = Path(tmp)
        for name, _group in benches:
            results[name] = {}
            for cfg in configs:
                try:
                    small = total_of(count(python, cfg, name, 1, args.scale, work, revision))
                    big_file = count(python, cfg, name, 1 + k, args.scale, work, revision)
                    big = total_of(big_file)
                    alloc = allocator_of(big_file)
                    timed = time_driven_of(big_file)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    failed.append("%s/%s" % (name, cfg.name))
                    print("  FAILED %s %s: %s" % (name, cfg.name, exc), flush=True)
                    continue
                results[name][cfg.name] = {"whole": big, "per_loop": (big - small) / k, "allocator": alloc,
                                            "time_driven": timed, "startup": small}
                print("  %-15s %-10s whole %14d  per loop %13.0f  allocator %13d  of it time-driven %11d" % (
                    name, cfg.name, big, (big - small) / k, alloc, timed), flush=True)
                for f in work.glob("*.cg"):
                    f.unlink()
    doc = {"python": python, "scale": args.scale, "loops": [1, 1 + k], "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                              time.gmtime()),
           "configs": [c.name for c in configs], "results": results,
           "revision": revision}
    path = out_dir / "instructions.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print("\nratios to pymalloc (whole process / per loop / allocator / allocator less time-driven):\n")
    print(table(results, [c.name for c in configs if c.name != "pymalloc"]))
    print("\nperf instructions: %.0f s; %s" % (time.monotonic() - t0, path))
    if failed:
        print("FAILED: %s" % ", ".join(failed))
        return 1
    return 0


def add_arguments(p) -> None:
    p.add_argument("--configs", default="pymalloc,meshalloc,preload",
                   help="comma list from %s and --extra names "
                        "(pymalloc, the reference, is always added)" % ", ".join(benchlib.CONFIGS))
    p.add_argument("--extra", action="append", metavar="NAME=LIB", help="another malloc to preload (repeatable)")
    p.add_argument("--bench", help="benchmarks and/or groups (default: speed)")
    p.add_argument("--python", help="interpreter to count (absolute path; default: this one)")
    p.add_argument("--lib", help="libmesh.so for the preload configuration (default: the installed package's)")
    p.add_argument("--scale", default="full", choices=("full", "fast", "smoke"), help="workload size (default full)")
    p.add_argument("--loops", type=int, default=3, metavar="K",
                   help="the second run's extra loops: per loop = (run of 1+K - run of 1) / K (default 3)")
    p.add_argument("--output-dir", help="where instructions.json goes (default: perf/results)")
