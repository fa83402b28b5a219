"""report - ``python -m perf report``: pyperf results -> docs/benchmarks.md
and docs/img/*.png.

Reads ``<results>/<config>.json`` (as written by ``python -m perf run``),
takes pymalloc as the reference and writes:

* speed: each configuration's mean time as a ratio to pymalloc's, with the
  spread propagated from the two standard deviations pyperf reports
  (r * sqrt((sd_x/mean_x)^2 + (sd_ref/mean_ref)^2)); a ratio whose spread
  reaches 1.0 is marked as not resolved; the geometric mean of the ratios;
* fragmentation: PSS above the process's baseline at the peak, after the
  frees, settled (after an idle period, no API call), compacted (then gc.collect() and, under meshalloc, compact()), the
  live bytes, and recovery = (peak - settled) / (peak - live), each as mean
  and standard deviation over the runs;
* system: start-up, fork with a big heap, and the meshing pause
  distribution from meshalloc.stats();
* with ``micro_table.json`` beside the pyperf results (``python -m perf
  micro-table``): the C allocators side by side, rendered by microtable.py;
* with ``--repeat DIR``: a second run of the same configurations, benchmark
  by benchmark, and whether each mean lies within the spread of the first;
* plots (matplotlib, the ``perf`` extra): PSS over time of each
  fragmentation workload per configuration, speed ratios, recovery.

Nothing here runs benchmarks; the report can be regenerated from the JSON
files at any time.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import statistics
from pathlib import Path
from typing import Dict, List, Tuple

from . import benchlib, microtable
from .runner import REPO, load_manifest

ORDER = tuple(benchlib.CONFIGS)
# results of the other commands that sit beside the pyperf files: not suites
SIDE_FILES = ("instructions.json", microtable.RESULT_FILE)
REF = "pymalloc"
MIB = 1 << 20
FRAG_KEYS = ("peak", "after_free", "settled", "compacted", "live")
PAUSE_BUCKETS = (("< 100 us", "mesh_pause_lt_100us"), ("100-500 us", "mesh_pause_lt_500us"),
                 ("0.5-1 ms", "mesh_pause_lt_1ms"), ("1-2 ms", "mesh_pause_lt_2ms"),
                 ("2-5 ms", "mesh_pause_lt_5ms"), (">= 5 ms", "mesh_pause_ge_5ms"))


def add_arguments(ap) -> None:
    ap.add_argument("--results", default=str(REPO / "perf" / "results"), help="directory of <config>.json")
    ap.add_argument("--repeat", help="directory of a second run of some configurations (run-to-run agreement)")
    ap.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    ap.add_argument("--img-dir", default=str(REPO / "docs" / "img"))
    ap.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    ap.add_argument("--title", default="meshalloc benchmarks")
    ap.add_argument("--notes", help="a file whose text is put under the title (e.g. how the run was made)")


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------

def load_dir(path: str) -> Dict[str, object]:
    """{config: pyperf.BenchmarkSuite} in report order."""
    import pyperf
    d = Path(path)
    found = {p.name[:-len(".json")] if p.name.endswith(".json") else p.name[:-len(".json.gz")]: p
             for p in sorted(d.glob("*.json*")) if not p.name.startswith(".") and p.name not in SIDE_FILES}
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    return {n: pyperf.BenchmarkSuite.load(str(found[n])) for n in names}


def bench(suite, name: str):
    try:
        return suite.get_benchmark(name)
    except KeyError:
        return None


def run_metadata(b) -> List[Dict[str, object]]:
    return [r.get_metadata() for r in b.get_runs() if r.values]


def mean_std(xs: List[float]) -> Tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def stats_of(b) -> Tuple[float, float, int]:
    vals = b.get_values()
    m, s = mean_std(list(vals))
    return m, s, len(vals)


def ratio(b, ref) -> Tuple[float, float]:
    """mean_b / mean_ref and its spread from both standard deviations."""
    mb, sb, _ = stats_of(b)
    mr, sr, _ = stats_of(ref)
    r = mb / mr
    return r, r * math.sqrt((sb / mb) ** 2 + (sr / mr) ** 2)


def fmt_ratio(r: float, spread: float) -> str:
    mark = "" if abs(r - 1.0) > spread else " ~"
    return "%.2fx ±%.2f%s" % (r, spread, mark)


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return "%.2f s" % seconds
    if seconds >= 1e-3:
        return "%.2f ms" % (seconds * 1e3)
    return "%.1f us" % (seconds * 1e6)


def fmt_ms_pm(m: float, s: float) -> str:
    return "%s ±%s" % (fmt_time(m), fmt_time(s))


# ---------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------

def names_in_group(suites, group: str) -> List[str]:
    manifest = [n for n, g in load_manifest() if g == group]
    present = set()
    for s in suites.values():
        present.update(s.get_benchmark_names())
    alias = {"mesh_pauses": "mesh_pause_max"}
    return [alias.get(n, n) for n in manifest if alias.get(n, n) in present]


def machine_section(suites) -> List[str]:
    any_suite = next(iter(suites.values()))
    md = any_suite.get_benchmarks()[0].get_runs()[-1].get_metadata()
    dates = sorted(str(m.get("date", ""))[:16] for s in suites.values() for b in s.get_benchmarks()
                   for m in run_metadata(b) if m.get("date"))
    scales = sorted({str(m.get("scale")) for s in suites.values() for b in s.get_benchmarks()
                     for m in run_metadata(b) if m.get("scale")})
    loads = sorted(float(m["load_avg_1min"]) for s in suites.values() for b in s.get_benchmarks()
                   for m in run_metadata(b) if "load_avg_1min" in m)
    revs = sorted({str(m.get("git_revision")) for s in suites.values() for b in s.get_benchmarks()
                   for m in run_metadata(b) if m.get("git_revision")})
    lines = [
        "| | |", "|---|---|",
        "| machine | %s, %s CPUs (`nproc` = %s), %s |" % (md.get("cpu_model_name", "?"), md.get("cpu_count", "?"),
                                                         md.get("cpu_count", "?"), md.get("platform", "?")),
        "| Python | %s (`%s`) |" % (md.get("python_version", "?"), md.get("python_executable", "?")),
        "| pyperf | %s |" % md.get("perf_version", "?"),
        "| dates | %s .. %s |" % (dates[0] if dates else "?", dates[-1] if dates else "?"),
        "| scale | %s |" % ", ".join(scales),
        "| load average (1 min) at the runs | %s |" % (
            "%.2f .. %.2f, median %.2f" % (loads[0], loads[-1], statistics.median(loads)) if loads else "?"),
        "| git revision | %s |" % ", ".join(revs),
    ]
    for cfg, s in suites.items():
        b = s.get_benchmarks()[0]
        m = run_metadata(b)[0]
        desc = "`%s`; malloc from `%s`; PyMem `%s`" % (m.get("alloc_env"), os.path.basename(
            str(m.get("alloc_malloc_library", "?"))), m.get("alloc_pymem"))
        if m.get("meshalloc_options"):
            desc += "; meshalloc %s (%s)" % (m.get("meshalloc_version"), m.get("meshalloc_domains"))
        lines.append("| config **%s** | %s |" % (cfg, desc))
    opts = {str(run_metadata(b)[0].get("meshalloc_options")) for s in suites.values() for b in s.get_benchmarks()
            if run_metadata(b) and run_metadata(b)[0].get("meshalloc_options")}
    if opts:
        lines.append("| meshalloc options | `%s` |" % "`, `".join(sorted(opts)))
    return lines


def speed_section(suites, names) -> Tuple[List[str], Dict[str, Dict[str, Tuple[float, float]]]]:
    ref = suites.get(REF)
    others = [c for c in suites if c != REF]
    head = "| benchmark | %s (mean ±sd) | %s |" % (REF, " | ".join("%s / %s" % (c, REF) for c in others))
    lines = [head, "|---" * (2 + len(others)) + "|"]
    ratios: Dict[str, Dict[str, Tuple[float, float]]] = {c: {} for c in others}
    for n in names:
        rb = bench(ref, n) if ref else None
        if rb is None:
            continue
        m, s, k = stats_of(rb)
        cells = []
        for c in others:
            b = bench(suites[c], n)
            if b is None:
                cells.append("–")
                continue
            r, sp = ratio(b, rb)
            ratios[c][n] = (r, sp)
            cells.append(fmt_ratio(r, sp))
        lines.append("| %s | %s | %s |" % (n, fmt_ms_pm(m, s), " | ".join(cells)))
    geo = []
    for c in others:
        rs = [r for r, _ in ratios[c].values()]
        geo.append("**%.2fx**" % math.exp(sum(math.log(r) for r in rs) / len(rs)) if rs else "–")
    lines.append("| geometric mean | | %s |" % " | ".join(geo))
    return lines, ratios


def frag_rows(suites, names) -> Tuple[List[str], Dict[str, Dict[str, Dict[str, Tuple[float, float]]]]]:
    lines = ["| workload | config | peak MiB | after free MiB | **settled MiB** (no call) | compacted MiB | live MiB | "
             "recovery | settled / %s |" % REF, "|---|---|---|---|---|---|---|---|---|"]
    table: Dict[str, Dict[str, Dict[str, Tuple[float, float]]]] = {}
    for n in names:
        table[n] = {}
        ref_settled = None
        for c, s in suites.items():
            b = bench(s, n)
            if b is None:
                continue
            mds = run_metadata(b)
            # (runs from before the compacted figure existed settled by compacting)
            row = {k: mean_std([float(m.get("frag_" + k, m["frag_settled"])) for m in mds]) for k in FRAG_KEYS}
            row["recovery"] = mean_std([float(m["frag_recovery"]) * 100 for m in mds])
            table[n][c] = row
            if c == REF:
                ref_settled = row["settled"][0]
            rel = "%.2fx" % (row["settled"][0] / ref_settled) if ref_settled else "–"
            lines.append("| %s | %s | %s | %s | %s | %s | %s | %.0f %% ±%.0f | %s |" % (
                n, c, *("%.1f ±%.1f" % (row[k][0] / MIB, row[k][1] / MIB) for k in FRAG_KEYS),
                row["recovery"][0], row["recovery"][1], rel))
    return lines, table


def system_section(suites) -> List[str]:
    lines = []
    ref = suites.get(REF)
    for n, what in (("startup", "`python -c pass`"), ("fork", "fork() + child `_exit` + waitpid")):
        rows = []
        for c, s in suites.items():
            b = bench(s, n)
            if b is None:
                continue
            m, sd, k = stats_of(b)
            rb = bench(ref, n) if ref else None
            rel = fmt_ratio(*ratio(b, rb)) if rb is not None and c != REF else ""
            extra = ""
            if n == "fork":
                mds = run_metadata(b)
                extra = " (heap %s MB)" % mds[0].get("fork_heap_mb", "?")
                if all("prefork_idle_added_mb" in m for m in mds):
                    extra += "; 4 preforked workers add %.1f MB idle, %.1f MB rewriting a tenth of the objects" % (
                        statistics.mean(float(m["prefork_idle_added_mb"]) for m in mds),
                        statistics.mean(float(m["prefork_rewrite_added_mb"]) for m in mds))
                if all("meshed_fork_ms" in m for m in mds):
                    mean = lambda key: statistics.mean(float(m[key]) for m in mds)  # noqa: E731
                    extra += ("; thinned to a quarter and meshed (%.1f MB in the memfd): first fork %.1f ms, "
                              "then %.1f ms, 4 idle workers add %.1f MB") % (
                        mean("meshed_memfd_mb"), mean("meshed_first_fork_ms"), mean("meshed_fork_ms"),
                        mean("prefork_meshed_idle_added_mb"))
            rows.append("| %s | %s | %s | %d%s |" % (c, fmt_ms_pm(m, sd), rel, k, extra))
        if rows:
            lines += ["", "**%s** — %s:" % (n, what), "", "| config | mean ±sd | vs %s | values |" % REF,
                      "|---|---|---|---|"] + rows
    prow = []
    for c, s in suites.items():
        b = bench(s, "mesh_pause_max")
        if b is None:
            continue
        mds = run_metadata(b)
        hist = [sum(int(m.get("pause_" + f, 0)) for m in mds) for _, f in PAUSE_BUCKETS]
        passes = sum(int(m.get("pause_mesh_passes", 0)) for m in mds)
        meshes = statistics.mean(int(m.get("pause_mesh_count", 0)) for m in mds)
        mean_p = statistics.mean(float(m.get("pause_mean_pause_s", 0)) for m in mds)
        max_p = max(float(m.get("pause_max_pause_s", 0)) for m in mds)
        # CPU-time figures exist in runs recorded since the stats kept them
        cpu = [float(m["pause_max_pause_cpu_s"]) for m in mds if "pause_max_pause_cpu_s" in m]
        max_cpu = fmt_time(max(cpu)) if cpu else "n/a"
        over = ("%d / %d" % (sum(int(m.get("pause_mesh_pause_over_bound", 0)) for m in mds),
                             sum(int(m.get("pause_mesh_pause_cpu_over_bound", 0)) for m in mds)) if cpu else "n/a")
        comp = statistics.mean(float(m.get("pause_compact_pause_s", 0)) for m in mds)
        prow.append("| %s | %d | %d | %s | %s | %s | %s | %s | %s | %s |" % (
            c, len(mds), passes, " / ".join(str(h) for h in hist), fmt_time(mean_p), fmt_time(max_p), max_cpu,
            over, fmt_time(comp), "%.0f" % meshes))
    if prow:
        lines += ["", "**meshing pauses** — after a fragmenting workload (1 M small objects, 5 %% kept) and "
                  "`meshalloc.compact()`, from `meshalloc.stats()`; histogram buckets %s, summed over the runs:"
                  % " / ".join(lab for lab, _ in PAUSE_BUCKETS), "",
                  "| config | runs | passes | histogram | mean pause | max pause | max CPU time of a pass "
                  "| passes over max_pause_us (wall / CPU) | compact() call | meshes per run |",
                  "|---|---|---|---|---|---|---|---|---|---|"] + prow + [
                  "", "Wall clock is what the program waited; CPU time leaves out time the meshing thread "
                  "was not running (preempted, or its vCPU descheduled): docs/meshing.md, \"Triggers and pauses\"."]
    return lines


def repeat_section(first, second) -> Tuple[List[str], str]:
    lines = ["| config | benchmark | run 1 mean ±sd | run 2 mean ±sd | change | within spread |",
             "|---|---|---|---|---|---|"]
    agree = total = 0
    for c, s2 in second.items():
        s1 = first.get(c)
        if s1 is None:
            continue
        for b2 in s2.get_benchmarks():
            n = b2.get_name()
            if "." in n:  # derived from a fragmentation run: same runs as NAME
                continue
            b1 = bench(s1, n)
            if b1 is None:
                continue
            m1, sd1, _ = stats_of(b1)
            m2, sd2, _ = stats_of(b2)
            change = (m2 - m1) / m1
            ok = abs(m2 - m1) <= sd1 + sd2
            agree += ok
            total += 1
            fmt = (lambda m, sd: "%.1f ±%.1f MiB" % (m / MIB, sd / MIB)) if b1.get_unit() == "byte" else fmt_ms_pm
            lines.append("| %s | %s | %s | %s | %+.1f %% | %s |" % (c, n, fmt(m1, sd1), fmt(m2, sd2), change * 100,
                                                                  "yes" if ok else "**no**"))
    return lines, "%d of %d benchmarks" % (agree, total)


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------

COLORS = dict(zip(ORDER, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
# for --extra libraries, in the order they are first drawn
EXTRA_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")


def color_of(config: str) -> str:
    if config not in COLORS:
        used = sum(1 for c in COLORS if c not in ORDER)
        COLORS[config] = EXTRA_COLORS[used % len(EXTRA_COLORS)]
    return COLORS[config]


def _grouped_bars(plt, path, labels, bars, size, ylabel, title, baseline=None):
    """One group of bars per label, one bar per configuration: bars maps a
    configuration to [(value, spread), ...] in label order."""
    fig, ax = plt.subplots(figsize=size)
    width = 0.8 / max(1, len(bars))
    for i, (c, vals) in enumerate(bars.items()):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [v[0] for v in vals], width, yerr=[v[1] for v in vals], label=c, color=color_of(c), capsize=2)
    if baseline is not None:
        ax.axhline(baseline, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center",
                       fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

def plot_all(suites, frag_names, speed_ratios, frag_table, img_dir: Path) -> List[Tuple[str, str]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for n in frag_names:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        for c, s in suites.items():
            b = bench(s, n)
            if b is None:
                continue
            mds = run_metadata(b)
            # the run whose settled value is the median one
            md = sorted(mds, key=lambda m: m["frag_settled"])[len(mds) // 2]
            series = json.loads(str(md["frag_pss_series"]))
            ts = [p[0] for p in series]
            ys = [p[1] / MIB for p in series]
            ax.plot(ts, ys, label=c, color=color_of(c), linewidth=1.4)
            ax.plot(ts[-1:], ys[-1:], "o", color=color_of(c))
            ax.axhline(float(md["frag_live"]) / MIB, color=color_of(c), linewidth=0.5, linestyle=":")
        ax.set_xlabel("seconds since the workload started")
        ax.set_ylabel("PSS above baseline (MiB)")
        ax.set_title("%s: PSS over time (dot: settled; dotted: live bytes)" % n, fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = img_dir / ("pss_%s.png" % n)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        out.append((n, path.name))
    configs = [c for c in speed_ratios if speed_ratios[c]]
    if configs:
        names = sorted({n for c in configs for n in speed_ratios[c]},
                       key=lambda n: list(speed_ratios[configs[0]]).index(n) if n in speed_ratios[configs[0]] else 99)
        bars = {c: [speed_ratios[c].get(n, (float("nan"), 0)) for n in names] for c in configs}
        path = _grouped_bars(plt, img_dir / "speed_ratios.png", names, bars, (8, 3.8),
                             "time / pymalloc's (lower is faster)",
                             "speed suite: mean time relative to pymalloc (error bars: spread)", baseline=1.0)
        out.append(("speed", path.name))
    if frag_table:
        cfgs = [c for c in suites if any(c in frag_table[n] for n in frag_table)]
        wl = list(frag_table)
        bars = {c: [frag_table[n].get(c, {}).get("recovery", (0, 0)) for n in wl] for c in cfgs}
        path = _grouped_bars(plt, img_dir / "recovery.png", wl, bars, (7, 3.4), "recovery %",
                             "fragmentation: recovery = (peak - settled) / (peak - live)")
        out.append(("recovery", path.name))
    return out


# ---------------------------------------------------------------------------
# the page
# ---------------------------------------------------------------------------

def instructions_section(doc: Dict[str, object]) -> List[str]:
    """The instruction counts of `python -m perf instructions` (perf/instructions.py)."""
    from .instructions import table
    configs = [c for c in doc["configs"] if c != "pymalloc"]  # type: ignore[union-attr]
    return ["### Instructions", "",
            "The same speed benchmarks counted in instructions under callgrind (`python -m perf instructions`, "
            "%s, revision %s, scale %s): a count does not depend on the machine's phase, so these ratios hold "
            "where the wall-clock ones above carry ±0.2. Each cell: the whole process's instructions (a run of "
            "%d loops, start-up included) / per loop of the benchmark (the difference from a run of 1 loop, "
            "start-up cancelled) / instructions in allocator code (meshalloc's core and hooks, pymalloc's "
            "obmalloc.c, glibc's malloc.c) / the allocator's less its time-driven work (the meshing thread "
            "and the passes and publications the inline trigger ran because their time had come: under "
            "callgrind the program runs ~50x slower while those periods stay in real time, so that work "
            "weighs ~50x more against the program's than it does natively), as ratios to pymalloc's. "
            "PYTHONHASHSEED is fixed; pymalloc's "
            "counts then repeat to 0.01 %%, meshalloc's to about ±2 %% (its randomised allocation order and "
            "the meshing thread's timing)." % (doc["date"], doc["revision"], doc["scale"],
                                               doc["loops"][1]),  # type: ignore[index]
            ""] + table(doc["results"], configs).splitlines() + [""]  # type: ignore[arg-type]


def main(args) -> int:
    suites = load_dir(args.results)
    if not suites:
        raise SystemExit("no <config>.json in %s: run `python -m perf run` first" % args.results)
    out = Path(args.out)
    img_dir = Path(args.img_dir)
    speed_names = names_in_group(suites, "speed")
    frag_names = names_in_group(suites, "fragmentation")
    lines = ["# %s" % args.title, "",
             "<!-- generated by `python -m perf report` on %s; edit perf/report.py, not this file -->"
             % datetime.date.today().isoformat(), ""]
    if args.notes:
        lines += [Path(args.notes).read_text().rstrip(), ""]
    lines += ["## Run", ""] + machine_section(suites) + [""]
    speed_lines, ratios = speed_section(suites, speed_names)
    frag_lines, frag_table = frag_rows(suites, frag_names)
    plots = [] if args.no_plots else plot_all(suites, frag_names, ratios, frag_table, img_dir)
    rel_img = os.path.relpath(img_dir, out.parent)
    lines += ["## Speed", "",
              "Mean time per iteration of each benchmark under pymalloc, and every other configuration's mean "
              "as a ratio to it (< 1 is faster). ±: the spread, propagated from the standard deviations pyperf "
              "reports for the two configurations; `~` marks a ratio whose spread reaches 1.0 (not resolved).",
              ""] + speed_lines + [""]
    for key, name in plots:
        if key == "speed":
            lines += ["![speed ratios](%s/%s)" % (rel_img, name), ""]
    instr = Path(args.results) / "instructions.json"
    if instr.exists():
        lines += instructions_section(json.loads(instr.read_text()))
    lines += ["## Fragmentation", "",
              "PSS above the process's baseline, in MiB (mean ±sd over the runs, one fresh process each): at "
              "the peak, after the frees, **settled**: after 3 s of light activity with no API call (what a "
              "program gets by itself: meshalloc's meshing thread and inline passes), then **compacted**: "
              "after `gc.collect()` and, under meshalloc, `meshalloc.compact()` (nothing else for the other "
              "allocators), and the live bytes "
              "(`sys.getsizeof` of what the workload keeps). recovery = (peak − settled) / (peak − live): 0 % "
              "keeps everything, 100 % gets down to the live data.", ""] + frag_lines + [""]
    for key, name in plots:
        if key == "recovery":
            lines += ["![recovery](%s/%s)" % (rel_img, name), ""]
    for key, name in plots:
        if key in frag_names:
            lines += ["![%s PSS over time](%s/%s)" % (key, rel_img, name), ""]
    lines += ["## System", ""] + system_section(suites) + [""]
    micro = Path(args.results) / microtable.RESULT_FILE
    if micro.exists():
        lines += microtable.section(json.loads(micro.read_text()))
    if args.repeat:
        second = load_dir(args.repeat)
        rep_lines, summary = repeat_section(suites, second)
        lines += ["## Run-to-run agreement", "",
                  "The same configurations run a second time (results in `%s`), compared benchmark by "
                  "benchmark: *within spread* means |mean₂ − mean₁| ≤ sd₁ + sd₂. **%s agree.**"
                  % (os.path.relpath(args.repeat, REPO), summary), ""] + rep_lines + [""]
    lines += ["## Reproduce", "",
              "```",
              "pip install '.[perf]'                        # meshalloc, pyperf, matplotlib",
              "python -m perf run                           # perf/results/<config>.json",
              "python -m perf report                        # this page and docs/img/*.png",
              "python -m pyperf compare_to perf/results/pymalloc.json perf/results/meshalloc.json --table",
              "```", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("wrote %s%s" % (out, "" if not plots else " and %d plot(s) in %s" % (len(plots), img_dir)))
    return 0
