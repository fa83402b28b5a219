"""frag.py - fragmentation demo: keep a random few percent of many small
objects and see how much memory each allocator still holds.

Two workloads, each run in fresh processes, configurations interleaved:

  C   fragmenter.c (built here on first use): --count small blocks of
      16..256 bytes, a random 90-98 % freed; PSS after allocating, after
      freeing, after malloc_trim(0) (glibc: trims its heap; libmesh.so:
      meshes, then returns free pages). Configurations: malloc (glibc's),
      preload (LD_PRELOAD=libmesh.so).
  py  a CPython child: --py-count small objects (strs, tuples, lists), a
      random 2 % kept, the rest dropped; PSS after allocating, after the
      frees (meshing already runs on frees under meshalloc), and after an
      explicit compaction (mesh_compact() under meshalloc, malloc_trim(0)
      under glibc, nothing more for pymalloc). The kept objects are checked
      intact at the end. Configurations: pymalloc, malloc, preload
      (benchlib.CONFIGS); the child then detects its allocator and the
      driver stops if it is not the configuration's (benchlib.check).

PSS is read by the child itself (benchlib.pss_bytes; never RSS: a meshed
page is mapped twice).

    python perf/frag/frag.py [--rounds 3] [--keep 2,5,10] [--lib PATH] [--json FILE]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import benchlib  # noqa: E402

FRAGMENTER_SRC = HERE / "fragmenter.c"
FRAGMENTER = HERE / "build" / "fragmenter"

# ---- workload parameters --------------------------------------------------
C_COUNT = 2_000_000
C_KEEP_PCTS = (2, 5, 10)       # percent kept, i.e. 98 / 95 / 90 % freed
PY_COUNT = 2_000_000
PY_KEEP_PCT = 2
SEED = 7


# ---- the Python child -------------------------------------------------------

def py_child(count: int, keep_pct: float) -> None:
    """Runs inside the measured interpreter: allocate, keep a few, report."""
    def pss() -> int:
        return benchlib.pss_bytes() // 1024

    rng = random.Random(SEED)
    gc.collect()
    base = pss()
    objs = []
    append = objs.append
    for i in range(count):
        k = i % 4
        if k == 0:
            append("s%d" % (i * 7919))                     # ~56-byte str
        elif k == 1:
            append((i, i + 1, i + 2))                     # 64-byte tuple
        elif k == 2:
            append("x" * (16 + i % 150))                  # 65..214-byte str
        else:
            append([i, i])                                # list + its item array
    after_alloc = pss()
    keep = set(rng.sample(range(count), int(count * keep_pct / 100)))
    kept = [objs[i] for i in sorted(keep)]
    del keep
    objs.clear()
    del objs
    gc.collect()
    after_free = pss()
    import ctypes
    libc = ctypes.CDLL(None)
    mesh_count = -1
    with open("/proc/self/maps") as f:
        mapped = any("libmesh" in line for line in f)
    if mapped:
        libc.mesh_compact()
    elif os.environ.get("PYTHONMALLOC") == "malloc":
        libc.malloc_trim(0)
    after_compact = pss()
    if mapped:
        mesh_count = mesh_counter("mesh_count")
    check = [objs_i for objs_i in kept]  # touch every survivor after compaction
    assert len(check) == len(kept) and all(x is not None for x in check)
    print(json.dumps({"pss_base_kb": base, "pss_alloc_kb": after_alloc, "pss_free_kb": after_free,
                      "pss_compact_kb": after_compact, "kept": len(kept), "count": count,
                      "mesh_count": mesh_count, "alloc": benchlib.detect()}))


def mesh_counter(name: str) -> int:
    """A libmesh counter through ctypes (only called after the measurement)."""
    import ctypes
    lib = ctypes.CDLL(None)
    lib.mesh_stats_name.restype = ctypes.c_char_p
    n = lib.mesh_stats_count()
    vals = (ctypes.c_uint64 * n)()
    lib.mesh_stats_read(vals, n)
    for i in range(n):
        if lib.mesh_stats_name(i) == name.encode():
            return int(vals[i])
    return -1


# ---- driver -----------------------------------------------------------------

def build_fragmenter() -> str:
    newest = max(FRAGMENTER_SRC.stat().st_mtime, (HERE.parent / "cbench.h").stat().st_mtime)
    if not FRAGMENTER.exists() or FRAGMENTER.stat().st_mtime < newest:
        FRAGMENTER.parent.mkdir(parents=True, exist_ok=True)
        cmd = [os.environ.get("CC", "cc"), "-std=c11", "-O2", "-g", "-D_GNU_SOURCE", "-Wall", "-Wextra",
               "-o", str(FRAGMENTER), str(FRAGMENTER_SRC)]
        subprocess.run(cmd, check=True)
    return str(FRAGMENTER)


def mib(kb: float) -> float:
    return kb / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description="fragmentation demo: PSS after freeing most small objects")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", default=",".join(str(k) for k in C_KEEP_PCTS),
                    help="percent kept in the C workload (comma list, 2..10 = 98..90 %% freed)")
    ap.add_argument("--count", type=int, default=C_COUNT, help="objects in the C workload")
    ap.add_argument("--py-count", type=int, default=PY_COUNT, help="objects in the Python workload")
    ap.add_argument("--only", choices=("c", "py"), help="run only one workload")
    ap.add_argument("--lib", help="path of libmesh.so")
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--py-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.py_child:
        py_child(args.py_count, PY_KEEP_PCT)
        return

    lib = benchlib.find_libmesh(args.python, args.lib)
    base = dict(benchlib.base_env(), PYTHONHASHSEED="0")  # the same dict/set layouts in every child
    cfgs = {n: benchlib.config_env(n, lib) for n in ("pymalloc", "malloc", "preload")}
    out = {"benchmark": "meshalloc-frag", "meta": benchlib.machine_meta(), "c": {}, "py": {}}
    out["meta"].update({"libmesh": lib, "rounds": args.rounds})
    t_start = time.time()
    print("frag: %d rounds, libmesh %s, loadavg %.2f" % (args.rounds, lib, benchlib.loadavg()))

    if args.only in (None, "c"):
        exe = build_fragmenter()
        names = ["malloc", "preload"]  # for a C program, glibc's malloc and libmesh.so
        keeps = [float(k) for k in args.keep.split(",") if k]
        samples = {(n, k): [] for n in names for k in keeps}
        for r in range(args.rounds):
            for k in keeps:
                for n in benchlib.round_order(names, r):
                    res = benchlib.child_json([exe, "--count", str(args.count), "--keep-pct", str(k)],
                                              dict(base, **cfgs[n]))
                    if res["libmesh"] != (n == "preload"):
                        sys.exit("configuration %s did not take effect: %r" % (n, res))
                    samples[(n, k)].append(res)
        print("\nC fragmenter: %d blocks of 16..256 B, random %%kept survive; PSS above the baseline, MiB "
              "(medians of %d)" % (args.count, args.rounds))
        print("  %-7s %6s %9s %10s %10s %10s %11s %10s" % ("alloc", "kept%", "live MiB", "allocated", "freed",
                                                         "trimmed", "trim/live", "mesh_count"))
        for k in keeps:
            row = {}
            for n in names:
                s = samples[(n, k)]
                d = {f: statistics.median(x[f] - x["pss_base_kb"] for x in s)
                     for f in ("pss_alloc_kb", "pss_free_kb", "pss_trim_kb")}
                live = s[0]["live_bytes"] / 1048576
                row[n] = d
                out["c"]["%s/keep%g" % (n, k)] = {"live_mib": live, **{f: mib(v) for f, v in d.items()},
                                                   "mesh_count": s[0]["mesh_count"], "samples": s}
                print("  %-7s %6g %9.1f %10.1f %10.1f %10.1f %11.1f %10s" % (
                    n, k, live, mib(d["pss_alloc_kb"]), mib(d["pss_free_kb"]), mib(d["pss_trim_kb"]),
                    mib(d["pss_trim_kb"]) / live, s[0]["mesh_count"] if s[0]["mesh_count"] >= 0 else "-"))
            if "malloc" in row and "preload" in row:
                print("  %-7s %6g %9s %10.3f %10.3f %10.3f   (preload/malloc)" % (
                    "ratio", k, "", row["preload"]["pss_alloc_kb"] / row["malloc"]["pss_alloc_kb"],
                    row["preload"]["pss_free_kb"] / row["malloc"]["pss_free_kb"],
                    row["preload"]["pss_trim_kb"] / row["malloc"]["pss_trim_kb"]))

    if args.only in (None, "py"):
        names = list(cfgs)
        samples = {n: [] for n in names}
        cmd = [args.python, str(Path(__file__).resolve()), "--py-child", "--py-count", str(args.py_count)]
        for r in range(args.rounds):
            for n in benchlib.round_order(names, r):
                res = benchlib.child_json(cmd, dict(base, **cfgs[n]))
                problems = benchlib.check(n, res["alloc"])
                if problems:
                    sys.exit("configuration %s did not take effect (expected: %s): %r"
                             % (n, "; ".join(problems), res))
                samples[n].append(res)
        print("\nPython: %d small objects, random %d %% kept; PSS above the child's baseline, MiB "
              "(medians of %d)" % (args.py_count, PY_KEEP_PCT, args.rounds))
        print("  %-9s %10s %10s %11s %12s %10s" % ("config", "allocated", "after free", "compacted",
                                                  "vs pymalloc", "mesh_count"))
        ref = None
        for n in names:
            s = samples[n]
            a = statistics.median(x["pss_alloc_kb"] - x["pss_base_kb"] for x in s)
            f = statistics.median(x["pss_free_kb"] - x["pss_base_kb"] for x in s)
            c = statistics.median(x["pss_compact_kb"] - x["pss_base_kb"] for x in s)
            ref = ref or c
            out["py"][n] = {"alloc_mib": mib(a), "free_mib": mib(f), "compact_mib": mib(c),
                            "mesh_count": s[0]["mesh_count"], "samples": s}
            print("  %-9s %10.1f %10.1f %11.1f %12.3f %10s" % (n, mib(a), mib(f), mib(c), c / ref,
                                                             s[0]["mesh_count"] if s[0]["mesh_count"] >= 0 else "-"))

    print("\nwall %.0f s, loadavg now %.2f" % (time.time() - t_start, benchlib.loadavg()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print("wrote %s" % args.json)


if __name__ == "__main__":
    main()
