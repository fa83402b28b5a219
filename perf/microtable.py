"""microtable - ``python -m perf micro-table``: malloc in C, 1 to 16 threads,
under glibc, meshalloc and the allocators Debian packages, side by side.

perf/micro/threads.c is a plain-malloc program (malloc, free, realloc, no
allocator API), so ``LD_PRELOAD`` alone picks the allocator: nothing for
glibc, ``libmesh.so`` for meshalloc (found as ``python -m perf run`` finds
it, benchlib.find_libmesh), and ``libjemalloc.so.2``,
``libtcmalloc_minimal.so.4`` and ``libmimalloc.so.2`` from the multiarch
library directories (``apt-get install libjemalloc2 libtcmalloc-minimal4
libmimalloc2.0``). One that is not found is "not installed" in the table,
not an error: nothing else needs them.

One process of threads.c is one cell: a test (pair of one small block at
16/64/256 B, a batch freed in random order, cross-thread frees through
rings, realloc growth to 1 MiB) at one thread count. The iteration count
of each test is calibrated once, under glibc with one thread (one pair),
and every allocator and thread count then does that much work per thread,
so a cell with T threads does T times the work of the 1-thread cell.

Rounds: every round runs every (test, threads) cell under every allocator
back to back, the allocators' order rotating from round to round
(benchlib.round_order), so a slow second of the shared machine hits them
alike. Per cell the table reports the median over the rounds of the
throughput (M ops/s summed over threads) and of the per-thread ns/op, and
per allocator its throughput ratio to glibc's (> 1: faster), with the
per-round paired ratios kept in the JSON (``~`` in the table where they
straddle 1.0). Each child reports the library that defines its malloc; a
cell that did not run under its allocator stops the run.

Rows whose thread count exceeds the machine's CPUs measure
oversubscription (threads taking turns on the CPUs), which the table says.

Results go to ``<output-dir>/micro_table.json``; ``python -m perf report``
adds the table to docs/benchmarks.md when that file sits beside the pyperf
results (``section``, rendered from the JSON alone).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import benchlib

RESULT_FILE = "micro_table.json"
MICRO = Path(benchlib.PERF_DIR) / "micro"
BINARY = MICRO / "build" / "threads"
REF = "glibc"

# The allocators in table order, and the library names each may be
# installed under (first found wins). glibc is the absence of a preload;
# meshalloc's library is found by benchlib.find_libmesh.
ALLOCATORS = ("glibc", "meshalloc", "jemalloc", "tcmalloc", "mimalloc")
SONAMES = {"jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
           "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc_minimal.so",
                        "libtcmalloc.so"),
           "mimalloc": ("libmimalloc.so.2", "libmimalloc.so")}

# The table's rows: key, threads.c's test and size, label.
TESTS = (
    ("pair16", "pair", 16, "malloc+free pair, 16 B"),
    ("pair64", "pair", 64, "malloc+free pair, 64 B"),
    ("pair256", "pair", 256, "malloc+free pair, 256 B"),
    ("batch64", "batch", 64, "batch: 1000 × 64 B, freed in random order"),
    ("remote64", "remote", 64, "cross-thread free, 64 B (T producer/consumer pairs)"),
    ("realloc1M", "realloc", 1 << 20, "realloc growth by 1/8, 64 B → 1 MiB"),
)
DEFAULT_THREADS = (1, 2, 4, 8, 16)


def add_arguments(ap) -> None:
    ap.add_argument("--allocators", default=",".join(ALLOCATORS),
                    help="comma list among %s (default: all; glibc is always run, as the reference)"
                         % ",".join(ALLOCATORS))
    ap.add_argument("--tests", default=",".join(t[0] for t in TESTS),
                    help="comma list of rows among %s" % ",".join(t[0] for t in TESTS))
    ap.add_argument("--threads", default=",".join(map(str, DEFAULT_THREADS)), help="thread counts (default 1,2,4,8,16)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5; medians over them)")
    ap.add_argument("--target-ms", type=float, default=40,
                    help="work per thread, calibrated under glibc with one thread (default 40 ms)")
    ap.add_argument("--lib", help="libmesh.so (default: the installed package's, else csrc/build/libmesh.so)")
    ap.add_argument("--with", dest="with_", action="append", default=[], metavar="NAME=LIB",
                    help="use LIB for allocator NAME instead of searching the library directories")
    ap.add_argument("--output-dir", help="where micro_table.json goes (default: perf/results)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per cell (default 300)")


# ---------------------------------------------------------------------------
# finding the allocators
# ---------------------------------------------------------------------------

def library_dirs() -> List[str]:
    """Where a distribution puts shared libraries: the multiarch directories
    first (Debian, Ubuntu), then the lib64 and plain ones (Fedora, Arch, a
    local build)."""
    arch = sysconfig.get_config_var("MULTIARCH") or "%s-linux-gnu" % platform.machine()
    dirs = ["/usr/lib/" + arch, "/lib/" + arch, "/usr/local/lib/" + arch, "/usr/lib64", "/lib64", "/usr/lib",
            "/lib", "/usr/local/lib"]
    seen, out = set(), []
    for d in dirs:
        real = os.path.realpath(d)
        if real not in seen and os.path.isdir(d):
            seen.add(real)
            out.append(d)
    return out


def find_library(name: str, dirs: Optional[List[str]] = None) -> Optional[str]:
    for soname in SONAMES[name]:
        for d in dirs if dirs is not None else library_dirs():
            path = os.path.join(d, soname)
            if os.path.isfile(path):
                return path
    return None


def package_version(path: str) -> str:
    """The Debian package and version that installed ``path`` ("" when
    there is no dpkg or it does not know the file)."""
    try:
        owner = subprocess.run(["dpkg", "-S", os.path.realpath(path)], capture_output=True, text=True, timeout=30)
        if owner.returncode != 0 or ":" not in owner.stdout:
            return ""
        pkg = owner.stdout.split(":", 1)[0].split(",")[0].strip()
        ver = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True,
                             timeout=30)
        return "%s %s" % (pkg, ver.stdout.strip()) if ver.returncode == 0 else pkg
    except (OSError, subprocess.SubprocessError):
        return ""


def locate(names: List[str], libmesh: Optional[str], given: Dict[str, str]) -> Dict[str, Dict[str, object]]:
    """{name: {"lib": path or None, "installed": bool, "version": str}}."""
    out: Dict[str, Dict[str, object]] = {}
    for name in names:
        if name == REF:
            out[name] = {"lib": None, "installed": True, "version": "glibc " + platform.libc_ver()[1]}
            continue
        lib = given.get(name) or (libmesh if name == "meshalloc" else find_library(name))
        if lib and not os.path.isfile(lib):
            sys.exit("%s: no library at %s" % (name, lib))
        version = ("meshalloc " + benchlib.git_revision()) if name == "meshalloc" else (package_version(lib) if lib
                                                                                      else "")
        out[name] = {"lib": lib, "installed": bool(lib), "version": version}
    return out


def runs_under(name: str, lib: Optional[str], reported: str) -> bool:
    """Whether the library a child reports for malloc is the one its cell
    asked for (glibc's libc for the reference)."""
    if lib is None:
        return os.path.basename(reported).startswith("libc.so")
    return os.path.realpath(reported) == os.path.realpath(lib)


# ---------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------

def build() -> Path:
    p = subprocess.run(["make", "-C", str(MICRO), "build/threads"], capture_output=True, text=True, timeout=300)
    if p.returncode != 0 or not BINARY.is_file():
        sys.exit("building perf/micro/build/threads failed:\n%s%s" % (p.stdout[-3000:], p.stderr[-3000:]))
    return BINARY


def child(cmd: List[str], lib: Optional[str], timeout: float) -> Dict[str, object]:
    env = benchlib.base_env()
    if lib:
        env["LD_PRELOAD"] = lib
    line = " ".join(map(str, cmd))
    try:
        p = subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit("%s%s: no result within %.0f s" % ("LD_PRELOAD=%s " % lib if lib else "", line, timeout))
    if p.returncode != 0:
        sys.exit("%s%s exited %d: %s" % ("LD_PRELOAD=%s " % lib if lib else "", line, p.returncode,
                                         p.stderr[-2000:]))
    return json.loads(p.stdout.strip().splitlines()[-1])


def calibrate(binary: Path, tests, target_ms: float, timeout: float) -> Dict[str, int]:
    """Iterations per thread for each row, found once under glibc."""
    return {key: int(child([binary, "--test", test, "--size", size, "--calibrate", "--target-ms", target_ms],
                           None, timeout)["iters"])
            for key, test, size, _ in tests}


def cell(binary: Path, name: str, lib: Optional[str], test: str, size: int, threads: int, iters: int,
         timeout: float) -> Dict[str, object]:
    r = child([binary, "--test", test, "--size", size, "--threads", threads, "--iters", iters], lib, timeout)
    if not runs_under(name, lib, str(r["malloc_library"])):
        sys.exit("the %s cell ran with malloc from %s, not %s: its preload did not take"
                 % (name, r["malloc_library"], lib or "glibc's libc"))
    return r


def summarize(mops: Dict[str, List[float]], ns: Dict[str, List[float]]) -> Dict[str, Dict[str, object]]:
    """Per allocator: medians over the rounds, the ratio of its median
    throughput to glibc's and the per-round (paired) ratios."""
    out: Dict[str, Dict[str, object]] = {}
    ref = mops[REF]
    for name, vals in mops.items():
        paired = [x / r for x, r in zip(vals, ref)]
        out[name] = {"mops": vals, "ns_per_op_thread": ns[name], "median_mops": statistics.median(vals),
                     "median_ns_per_op_thread": statistics.median(ns[name]),
                     "ratio": statistics.median(vals) / statistics.median(ref),
                     "paired_min": min(paired), "paired_median": statistics.median(paired),
                     "paired_max": max(paired)}
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cmd_micro_table(args) -> int:
    wanted = [n.strip() for n in args.allocators.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in ALLOCATORS]
    keys = [k.strip() for k in args.tests.split(",") if k.strip()]
    tests = [t for t in TESTS if t[0] in keys]
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    if unknown or len(tests) != len(keys) or not threads or min(threads) < 1 or args.rounds < 1:
        sys.exit("micro-table: unknown allocator %s or test in %s, or bad --threads/--rounds"
                 % (unknown, args.tests))
    names = [REF] + [n for n in ALLOCATORS if n in wanted and n != REF]
    given = dict(w.split("=", 1) for w in args.with_ if "=" in w)
    if len(given) != len(args.with_) or not set(given) <= set(ALLOCATORS) - {REF}:
        sys.exit("micro-table: --with takes NAME=LIB, NAME among %s" % ",".join(ALLOCATORS[1:]))
    libmesh = benchlib.find_libmesh(explicit=args.lib) if "meshalloc" in names else None
    allocs = locate(names, libmesh, given)
    running = [n for n in names if allocs[n]["installed"]]
    for n in names:
        a = allocs[n]
        print("%-10s %s" % (n, (a["lib"] or "(no preload)") + (" " + str(a["version"]) if a["version"] else "")
                            if a["installed"] else "not installed"), file=sys.stderr)
    binary = build()
    t_start = time.time()
    load0 = benchlib.loadavg()
    revision = benchlib.git_revision()  # before the run: what was measured
    iters = calibrate(binary, tests, args.target_ms, args.timeout)
    mops = {(k, t): {n: [] for n in running} for k, *_ in tests for t in threads}
    ns = {(k, t): {n: [] for n in running} for k, *_ in tests for t in threads}
    for r in range(args.rounds):
        order = benchlib.round_order(running, r)
        for key, test, size, _ in tests:
            for t in threads:
                for n in order:
                    res = cell(binary, n, allocs[n]["lib"], test, size, t, iters[key], args.timeout)  # type: ignore
                    mops[key, t][n].append(float(res["mops"]))  # type: ignore[arg-type]
                    ns[key, t][n].append(float(res["ns_per_op_thread"]))  # type: ignore[arg-type]
        print("round %d/%d done (%.0f s)" % (r + 1, args.rounds, time.time() - t_start), file=sys.stderr)
    doc = {
        "kind": "micro_table",
        "date": datetime.datetime.fromtimestamp(t_start, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": round((time.time() - t_start) / 60, 1),
        "revision": revision,
        # the CPUs this process may run on (taskset, cgroups): what the threads share
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "loadavg": [load0, benchlib.loadavg()],
        "rounds": args.rounds,
        "target_ms": args.target_ms,
        "threads": threads,
        "allocators": {n: allocs[n] for n in names},
        "tests": [{"key": k, "test": test, "size": size, "label": label, "iters": iters[k]}
                  for k, test, size, label in tests],
        "cells": [{"test": k, "threads": t, "results": summarize(mops[k, t], ns[k, t])}
                  for k, *_ in tests for t in threads],
    }
    out_dir = Path(args.output_dir) if args.output_dir else Path(benchlib.PERF_DIR) / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / RESULT_FILE
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print("\n".join(table(doc) + [""] + notes(doc)))
    print("\nwrote %s" % out, file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# the table (printed, and in docs/benchmarks.md)
# ---------------------------------------------------------------------------

def fmt_num(x: float) -> str:
    return "%.3g" % x if x < 100 else "%.0f" % x


def table(doc: Dict[str, object]) -> List[str]:
    """One row per (test, threads): glibc's median throughput and per-thread
    ns/op, and every other allocator's throughput ratio to glibc's with its
    own median throughput."""
    allocs: Dict[str, Dict[str, object]] = doc["allocators"]  # type: ignore[assignment]
    cpus = int(doc["cpus"])  # type: ignore[arg-type]
    others = [n for n in allocs if n != REF]
    labels = {t["key"]: t["label"] for t in doc["tests"]}  # type: ignore[union-attr]
    per_t = {t["key"]: 2 if t["test"] == "remote" else 1 for t in doc["tests"]}  # type: ignore[union-attr]
    head = ["test", "T", "glibc: M ops/s (ns/op per thread)"] + ["%s / glibc (M ops/s)" % n for n in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (1 + len(others))]
    last = None
    for c in doc["cells"]:  # type: ignore[union-attr]
        res = c["results"]
        ref = res[REF]
        t = int(c["threads"])
        over = t * per_t[c["test"]] > cpus
        row = [labels[c["test"]] if c["test"] != last else "", "%d%s" % (t, "\\*" if over else ""),
               "%s (%s)" % (fmt_num(ref["median_mops"]), fmt_num(ref["median_ns_per_op_thread"]))]
        last = c["test"]
        for n in others:
            if not allocs[n]["installed"]:
                row.append("not installed")
                continue
            x = res[n]
            unresolved = x["paired_min"] < 1.0 < x["paired_max"]
            row.append("%s%.2fx (%s)" % ("~" if unresolved else "", x["ratio"], fmt_num(x["median_mops"])))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def notes(doc: Dict[str, object]) -> List[str]:
    """How to read the table, from the run's own data: paragraphs."""
    allocs: Dict[str, Dict[str, object]] = doc["allocators"]  # type: ignore[assignment]
    cpus = int(doc["cpus"])  # type: ignore[arg-type]
    remote = any(t["test"] == "remote" for t in doc["tests"])  # type: ignore[union-attr]
    over = [t for t in doc["threads"] if t * (2 if remote else 1) > cpus]  # type: ignore[union-attr]
    versions = "; ".join("%s: %s" % (n, a["version"] or a["lib"]) if a["installed"] else "%s: not installed" % n
                         for n, a in allocs.items())
    out = ["**Run:** %d CPUs (%s), %s, revision %s, %d interleaved rounds, load average %.1f at the start and "
           "%.1f at the end. Allocators: %s."
           % (cpus, doc["cpu_model"], doc["date"], doc["revision"], doc["rounds"], doc["loadavg"][0],  # type: ignore
              doc["loadavg"][1], versions), "",  # type: ignore[index]
           "**Reading it:** each figure is a median over the rounds. Ratio = throughput / glibc's throughput "
           "(> 1: faster than glibc); `~` marks a ratio whose per-round paired ratios straddle 1.0 (not "
           "resolved). Every thread (in the cross-thread test, every producer/consumer pair) does the same "
           "work at every T, so throughput is summed over the threads, and ns/op per thread is the wall time "
           "over one thread's ops. The cross-thread test pins each pair's producer and consumer to two "
           "different CPUs, so that the scheduler's placement does not decide the figure (a pair sharing one "
           "CPU hands blocks over a ring-full at a time, in one cache)."]
    if over:
        out += ["", "**Rows marked \\*** have more threads than the machine's %d CPUs%s: they measure "
                "oversubscription, threads taking turns on the CPUs, not parallel scaling."
                % (cpus, " (the cross-thread test runs 2T threads)" if remote else "")]
    return out


def section(doc: Dict[str, object]) -> List[str]:
    """The report's section (perf/report.py)."""
    return (["## C allocators side by side", "",
             "perf/micro/threads.c calls only malloc, free and realloc, so `LD_PRELOAD` picks the allocator "
             "(`python -m perf micro-table`, perf/README.md). Each cell: one process running T threads of the "
             "same work (calibrated once under glibc, the same counts for every allocator); the allocators "
             "run back to back for each cell, their order rotating from round to round.", ""]
            + notes(doc) + [""] + table(doc) + [""])
