"""run.py - churn.py under three allocator configurations, side by side.

    pymalloc  CPython's default small-object allocator
    glibc     PYTHONMALLOC=malloc (every object through glibc malloc)
    mesh      PYTHONMALLOC=malloc LD_PRELOAD=libmesh.so (every object, and C
              extensions' malloc, through meshalloc)

Every measurement is a fresh subprocess of this interpreter (sys.executable,
or --python). Configurations are interleaved round by round, rotating which
goes first, so machine noise spreads over all of them. Reported: median of
the workload's own timing of its measured region, its ratio to pymalloc
(ratio of medians, and the range of the per-round paired ratios), and the
median PSS the child read from /proc/self/smaps_rollup at the end.

    python perf/churn/run.py [--rounds 5] [--lib PATH] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import perfutil  # noqa: E402

WORKLOAD = HERE / "churn.py"


def run_one(python: str, env: dict, extra: list) -> dict:
    out = subprocess.run([python, str(WORKLOAD), "--json"] + extra, env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        sys.exit("churn.py failed (exit %d):\n%s" % (out.returncode, out.stderr[-3000:]))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description="churn.py under pymalloc, glibc and meshalloc, side by side")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--lib", help="path of libmesh.so (default: csrc/build/libmesh.so, else the installed package)")
    ap.add_argument("--python", default=sys.executable, help="interpreter to run the workload with (absolute path)")
    ap.add_argument("--configs", default="pymalloc,glibc,mesh")
    ap.add_argument("--json", metavar="FILE", help="also write all samples as JSON")
    ap.add_argument("--workload-rounds", type=int, help="passed to churn.py --rounds")
    args = ap.parse_args()

    lib = perfutil.find_libmesh(args.lib)
    all_cfgs = perfutil.python_configs(lib)
    # the installed extension's PyMem hooks (the start-up switch); needs
    # meshalloc installed in --python, so it is not a default
    all_cfgs["meshalloc"] = {"MESHALLOC": "1"}
    names = [c for c in args.configs.split(",") if c]
    for n in names:
        if n not in all_cfgs:
            sys.exit("unknown configuration %r (known: %s)" % (n, ", ".join(all_cfgs)))
    extra = ["--rounds", str(args.workload_rounds)] if args.workload_rounds else []
    base = perfutil.base_env()
    meta = perfutil.machine_meta()
    meta.update({"python": args.python, "libmesh": lib, "rounds": args.rounds, "workload": str(WORKLOAD),
                 "configs": {n: all_cfgs[n] for n in names}})
    print("churn: %s, %d rounds, configs %s\nlibmesh: %s  loadavg %.2f" % (
        args.python, args.rounds, ", ".join(names), lib, meta["loadavg"]))

    samples = {n: [] for n in names}
    t_start = time.time()
    for r in range(args.rounds):
        line = []
        for n in perfutil.round_order(names, r):
            env = dict(base)
            env.update(all_cfgs[n])
            res = run_one(args.python, env, extra)
            # guard against silently measuring the wrong allocator
            want_mesh = "LD_PRELOAD" in all_cfgs[n]
            want_active = want_mesh or "MESHALLOC" in all_cfgs[n]
            if (res["libmesh_loaded"] != want_mesh or res.get("meshalloc_active", False) != want_active
                    or res["pythonmalloc"] != all_cfgs[n].get("PYTHONMALLOC", "")):
                sys.exit("configuration %s did not take effect: %r" % (n, res))
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
    ref_pss = perfutil.median(s["pss_kb"] for s in samples[ref])
    for n in names:
        row = {}
        for key in ("time_s", "cpu_s"):
            med = perfutil.median(s[key] for s in samples[n])
            ref_med = perfutil.median(s[key] for s in samples[ref])
            paired = [a[key] / b[key] for a, b in zip(samples[n], samples[ref])]
            row[key] = med
            row[key + "_ratio"] = med / ref_med
            row[key + "_paired_median"] = perfutil.median(paired)
            row[key + "_paired_min"] = min(paired)
            row[key + "_paired_max"] = max(paired)
        pss = perfutil.median(s["pss_kb"] for s in samples[n])
        hwm = perfutil.median(s["hwm_kb"] for s in samples[n])
        row.update({"pss_mib": pss / 1024, "pss_ratio": pss / ref_pss, "hwm_mib": hwm / 1024})
        summary[n] = row
        print("  %-9s %7.3f %6.3f %6.3f %6.3f..%-6.3f %7.3f %6.3f %6.3f  %7.1f %6.3f %7.1f" % (
            n, row["time_s"], row["time_s_ratio"], row["time_s_paired_median"], row["time_s_paired_min"],
            row["time_s_paired_max"], row["cpu_s"], row["cpu_s_ratio"], row["cpu_s_paired_median"],
            pss / 1024, pss / ref_pss, hwm / 1024))
    for n in names:
        if "mesh_pass_s" in samples[n][0]:
            frac = perfutil.median(s["mesh_pass_s"] / s["time_s"] for s in samples[n])
            summary[n]["mesh_pass_fraction"] = frac
            print("  %-9s time in meshing passes %.3f %% of the run (median), %d meshes in the last run"
                  % (n, 100 * frac, samples[n][-1]["mesh_count"]))
    if "mesh" in samples and "glibc" in samples:
        for key, label in (("time_s", "wall"), ("cpu_s", "cpu")):
            paired = [a[key] / b[key] for a, b in zip(samples["mesh"], samples["glibc"])]
            summary.setdefault("mesh_vs_glibc", {})[key] = {
                "paired_median": perfutil.median(paired), "paired_min": min(paired), "paired_max": max(paired)}
            print("  mesh/glibc %-4s paired median %.3f (min..max %.3f..%.3f)"
                  % (label, perfutil.median(paired), min(paired), max(paired)))
    print("\n  ratio = median / median of %s (< 1 is faster, or smaller); paired = median and range of the"
          "\n  per-round ratios; cpu = the child's CPU time over the measured region (less disturbed by other"
          "\n  jobs than wall time); PSS read by the child at the end; wall %.0f s, loadavg now %.2f"
          % (ref, time.time() - t_start, perfutil.loadavg()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"benchmark": "meshalloc-churn", "meta": meta, "summary": summary, "samples": samples}, f,
                      indent=1)
        print("wrote %s" % args.json)


if __name__ == "__main__":
    main()
