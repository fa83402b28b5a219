"""run.py - churn.py under allocator configurations, side by side.

The configurations are benchlib's: pymalloc, malloc and preload by default,
meshalloc (MESHALLOC=1: needs meshalloc installed in --python) and
--extra NAME=LIB on request. A child whose detected allocator is not its
configuration's stops the run (benchlib.check).

Every measurement is a fresh subprocess of this interpreter (sys.executable,
or --python). Configurations are interleaved round by round, rotating which
goes first, so machine noise spreads over all of them. Reported: median of
the workload's own timing of its measured region, its ratio to pymalloc
(ratio of medians, and the range of the per-round paired ratios), and the
median PSS the child read at the end.

    python perf/churn/run.py [--rounds 5] [--lib PATH] [--configs ...] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import benchlib  # noqa: E402

WORKLOAD = HERE / "churn.py"


def main() -> None:
    ap = argparse.ArgumentParser(description="churn.py under allocator configurations, side by side")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--lib", help="path of libmesh.so (default: the installed package's, else csrc/build/libmesh.so)")
    ap.add_argument("--python", default=sys.executable, help="interpreter to run the workload with (absolute path)")
    ap.add_argument("--configs", default="pymalloc,malloc,preload",
                    help="comma list from %s and --extra names" % ", ".join(benchlib.CONFIGS))
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=LIB", help="another malloc to preload")
    ap.add_argument("--json", metavar="FILE", help="also write all samples as JSON")
    ap.add_argument("--workload-rounds", type=int, help="passed to churn.py --rounds")
    args = ap.parse_args()

    extras = dict(spec.split("=", 1) for spec in args.extra)
    names = [c for c in args.configs.split(",") if c]
    for n in names:
        if n not in benchlib.CONFIGS and n not in extras:
            sys.exit("unknown configuration %r (known: %s, or --extra NAME=LIB)" % (n, ", ".join(benchlib.CONFIGS)))
    lib = benchlib.find_libmesh(args.python, args.lib) if "preload" in names else None
    all_cfgs = {n: benchlib.config_env(n, extras.get(n, lib)) for n in names}
    extra = ["--rounds", str(args.workload_rounds)] if args.workload_rounds else []
    base = dict(benchlib.base_env(), PYTHONHASHSEED="0")  # the same dict/set layouts in every child
    meta = benchlib.machine_meta()
    meta.update({"python": args.python, "libmesh": lib, "rounds": args.rounds, "workload": str(WORKLOAD),
                 "configs": all_cfgs})
    print("churn: %s, %d rounds, configs %s\nlibmesh: %s  loadavg %.2f" % (
        args.python, args.rounds, ", ".join(names), lib, meta["loadavg"]))

    # the children import benchlib before they read their PSS: a benchlib
    # compiled in each (no .pyc, e.g. under PYTHONDONTWRITEBYTECODE) would add
    # ~2 MiB to it
    subprocess.run([args.python, "-m", "py_compile", benchlib.__file__], check=True)
    samples = {n: [] for n in names}
    t_start = time.time()
    for r in range(args.rounds):
        line = []
        for n in benchlib.round_order(names, r):
            res = benchlib.child_json([args.python, str(WORKLOAD), "--json"] + extra, dict(base, **all_cfgs[n]))
            # guard against silently measuring the wrong allocator
            problems = benchlib.check(n if n in benchlib.CONFIGS else "extra:" + n, res["alloc"], extras.get(n))
            if problems:
                sys.exit("configuration %s did not take effect (expected: %s): %r" % (n, "; ".join(problems), res))
            samples[n].append(res)
            line.append("%s %.2fs" % (n, res["time_s"]))
        print("  round %d: %s" % (r, ", ".join(line)), flush=True)

    checks = {res["checksum"] for n in names for res in samples[n]}
    if len(checks) != 1:
        print("WARNING: checksums differ between runs: %s" % sorted(checks))

    ref = names[0]
    print("\n  %-9s %7s %6s %6s %13s  %7s %6s %6s  %7s %6s %7s" % (
        "config", "wall s", "ratio", "paired", "min..max", "cpu s", "ratio", "paired", "PSS MiB", "ratio",
        "HWM MiB"))
    summary = {}
    ref_pss = statistics.median(s["pss_kb"] for s in samples[ref])
    for n in names:
        row = {}
        for key in ("time_s", "cpu_s"):
            med = statistics.median(s[key] for s in samples[n])
            ref_med = statistics.median(s[key] for s in samples[ref])
            paired = [a[key] / b[key] for a, b in zip(samples[n], samples[ref])]
            row[key] = med
            row[key + "_ratio"] = med / ref_med
            row[key + "_paired_median"] = statistics.median(paired)
            row[key + "_paired_min"] = min(paired)
            row[key + "_paired_max"] = max(paired)
        pss = statistics.median(s["pss_kb"] for s in samples[n])
        hwm = statistics.median(s["hwm_kb"] for s in samples[n])
        row.update({"pss_mib": pss / 1024, "pss_ratio": pss / ref_pss, "hwm_mib": hwm / 1024})
        summary[n] = row
        print("  %-9s %7.3f %6.3f %6.3f %6.3f..%-6.3f %7.3f %6.3f %6.3f  %7.1f %6.3f %7.1f" % (
            n, row["time_s"], row["time_s_ratio"], row["time_s_paired_median"], row["time_s_paired_min"],
            row["time_s_paired_max"], row["cpu_s"], row["cpu_s_ratio"], row["cpu_s_paired_median"],
            pss / 1024, pss / ref_pss, hwm / 1024))
    for n in names:
        if "mesh_pass_s" in samples[n][0]:
            frac = statistics.median(s["mesh_pass_s"] / s["time_s"] for s in samples[n])
            summary[n]["mesh_pass_fraction"] = frac
            print("  %-9s time in meshing passes %.3f %% of the run (median), %d meshes in the last run"
                  % (n, 100 * frac, samples[n][-1]["mesh_count"]))
    if "preload" in samples and "malloc" in samples:
        for key, label in (("time_s", "wall"), ("cpu_s", "cpu")):
            paired = [a[key] / b[key] for a, b in zip(samples["preload"], samples["malloc"])]
            summary.setdefault("preload_vs_malloc", {})[key] = {
                "paired_median": statistics.median(paired), "paired_min": min(paired), "paired_max": max(paired)}
            print("  preload/malloc %-4s paired median %.3f (min..max %.3f..%.3f)"
                  % (label, statistics.median(paired), min(paired), max(paired)))
    print("\n  ratio = median / median of %s (< 1 is faster, or smaller); paired = median and range of the"
          "\n  per-round ratios; cpu = the child's CPU time over the measured region (less disturbed by other"
          "\n  jobs than wall time); PSS read by the child at the end; wall %.0f s, loadavg now %.2f"
          % (ref, time.time() - t_start, benchlib.loadavg()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"benchmark": "meshalloc-churn", "meta": meta, "summary": summary, "samples": samples}, f,
                      indent=1)
        print("wrote %s" % args.json)


if __name__ == "__main__":
    main()
