"""``python -m meshalloc demo``: a built-in fragmentation workload run under
CPython's default allocator and under meshalloc, side by side.

Each configuration runs in a fresh child interpreter (so neither sees the
other's heap): the child builds many small objects (strings, tuples, lists),
keeps a random few percent, drops the rest, and reports its PSS (from
/proc/self/smaps_rollup, never RSS: a meshed page is mapped twice) at the
peak, after the frees, after IDLE_S seconds of light activity with no API
call (what a program gets by itself: the headline), and after an explicit
compaction (``meshalloc.compact()`` under meshalloc; pymalloc has nothing
to compact), plus the time the allocating and freeing took. The table is
printed by the parent.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, TextIO

COUNT = 1_000_000
KEEP_PCT = 2.0
SEED = 7
IDLE_S = 2.0
PLOT_INTERVAL_S = 0.1


def _pss_kib() -> int:
    from meshalloc._remote import pss_bytes

    return (pss_bytes() or 0) // 1024


def child(count: int, keep_pct: float) -> Dict[str, Any]:
    """The workload; runs in the measured interpreter."""
    import gc
    gc.collect()
    base = _pss_kib()
    t0 = time.perf_counter()
    objs = []
    for i in range(count):
        k = i % 3
        objs.append("s%d" % (i * 7919) if k == 0 else (i, i + 1) if k == 1 else [i, "x" * (i % 64)])
    peak = _pss_kib()
    rng = random.Random(SEED)
    kept = [o for o in objs if rng.random() * 100 < keep_pct]
    del objs
    work = time.perf_counter() - t0
    after_free = _pss_kib()
    t1 = time.perf_counter()
    junk: List[Any] = []
    while time.perf_counter() - t1 < IDLE_S:  # a little activity, no meshalloc call
        time.sleep(0.1)
        junk = ["idle-%d" % i for i in range(10)]
    idle = _pss_kib()
    pause = 0.0
    installed = False
    try:
        import meshalloc
        installed = meshalloc.is_installed()
        if installed:
            pause = meshalloc.compact().pause_seconds
    except ImportError:
        pass
    compacted = _pss_kib()
    assert len(kept) > 0 and all(o is not None for o in kept) and len(junk) == 10
    return {"installed": installed, "base": base, "peak": peak, "after_free": after_free, "idle": idle,
            "compacted": compacted, "work_s": work, "pause_s": pause, "kept": len(kept)}


def _run_recorded(cmd: List[str], env: Dict[str, str], path: str) -> "subprocess.CompletedProcess[str]":
    """cmd as subprocess.run would give it, sampled into path as `run --record` does."""
    from meshalloc import _record
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        code = _record.record(cmd, env, path, PLOT_INTERVAL_S, stdout=so, stderr=se)
        so.seek(0)
        se.seek(0)
        return subprocess.CompletedProcess(cmd, code, so.read(), se.read())


def run(count: int = COUNT, keep_pct: float = KEEP_PCT, out: Optional[TextIO] = None,
        plot: Optional[str] = None) -> int:
    out = out or sys.stdout
    configs = [("pymalloc (default)", {"MESHALLOC": "0"}), ("meshalloc", {"MESHALLOC": "1"})]
    rows = []
    records = []
    tmp = tempfile.TemporaryDirectory(prefix="meshalloc-demo-") if plot else None
    for name, extra in configs:
        env = dict(os.environ)
        env.update(extra)
        env.pop("LD_PRELOAD", None)
        env.pop("PYTHONMALLOC", None)
        cmd = [sys.executable, "-m", "meshalloc.demo", "--child", str(count), str(keep_pct)]
        if tmp is not None:
            records.append(os.path.join(tmp.name, "%s.jsonl" % extra["MESHALLOC"]))
            p = _run_recorded(cmd, env, records[-1])
        else:
            p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            out.write("demo: %s failed (exit %d):\n%s\n" % (name, p.returncode, p.stderr[-2000:]))
            return 1
        r = json.loads(p.stdout.strip().splitlines()[-1])
        if r["installed"] != (extra["MESHALLOC"] == "1"):
            out.write("demo: %s did not run under the intended allocator (installed=%s)\n"
                      % (name, r["installed"]))
            return 1
        rows.append((name, r))

    def mib(kib: float) -> float:
        return kib / 1024.0

    out.write("%d small objects, a random %g %% kept (%d); PSS above each child's baseline, MiB\n\n"
              % (count, keep_pct, rows[0][1]["kept"]))
    out.write("  %-20s %8s %11s %11s %10s %9s %9s\n" % ("allocator", "peak", "after free", "idle %gs" % IDLE_S,
                                                       "compacted", "work s", "pause ms"))
    for name, r in rows:
        out.write("  %-20s %8.1f %11.1f %11.1f %10.1f %9.2f %9.1f\n" % (
            name, mib(r["peak"] - r["base"]), mib(r["after_free"] - r["base"]), mib(r["idle"] - r["base"]),
            mib(r["compacted"] - r["base"]), r["work_s"], r["pause_s"] * 1000))
    ref, mesh = rows[0][1], rows[1][1]
    if ref["idle"] > ref["base"]:
        out.write("\nmeshalloc holds %.2fx the memory pymalloc holds %g s after the frees, with no API call "
                  "(%.2fx after compact())\n"
                  % ((mesh["idle"] - mesh["base"]) / (ref["idle"] - ref["base"]), IDLE_S,
                     (mesh["compacted"] - mesh["base"]) / (ref["compacted"] - ref["base"])))
    if plot and tmp is not None:
        from meshalloc import _record, _remote
        try:
            w, h = _record.plot(records, plot, [name for name, _ in configs],
                                "demo: %d objects, %g %% kept (compact() at the end)" % (count, keep_pct))
        except _remote.Failure as exc:
            out.write("demo: %s\n" % exc)
            return 1
        finally:
            tmp.cleanup()
        out.write("\nwrote %s (%dx%d)\n" % (plot, w, h))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        print(json.dumps(child(int(argv[1]), float(argv[2]))))
        return 0
    return run()


if __name__ == "__main__":
    sys.exit(main())
