"""``python -m meshalloc demo``: a built-in fragmentation workload run under
CPython's default allocator and under meshalloc, side by side.

Each configuration runs in a fresh child interpreter (neither sees the
other's heap). The child builds many small objects, keeps a random few
percent, and reports its PSS (never RSS: a meshed page is mapped twice) at
the peak, after the frees, after IDLE_S seconds of light activity with no
API call (what a program gets by itself: the headline) and after
``meshalloc.compact()``, plus the time the work took.
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
CONFIGS = (("pymalloc (default)", "0"), ("meshalloc", "1"))  # (name, MESHALLOC)


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
    pause, installed = 0.0, False
    try:
        import meshalloc
        installed = meshalloc.is_installed()
        if installed:
            pause = meshalloc.compact().pause_seconds
    except ImportError:
        pass
    assert len(kept) > 0 and all(o is not None for o in kept) and len(junk) == 10
    return {"installed": installed, "base": base, "peak": peak, "after_free": after_free,
            "idle": idle, "compacted": _pss_kib(), "work_s": work, "pause_s": pause,
            "kept": len(kept)}


def _run_child(count: int, keep_pct: float, on: str, record: Optional[str]) -> "Dict[str, Any]":
    """The child's report under MESHALLOC=on, sampled into record as `run --record` does."""
    env = dict(os.environ, MESHALLOC=on)
    env.pop("LD_PRELOAD", None)
    env.pop("PYTHONMALLOC", None)
    cmd = [sys.executable, "-m", "meshalloc.demo", "--child", str(count), str(keep_pct)]
    if record is None:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        code, stdout, stderr = p.returncode, p.stdout, p.stderr
    else:
        from meshalloc import _record
        with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
            code = _record.record(cmd, env, record, PLOT_INTERVAL_S, stdout=so, stderr=se)
            so.seek(0)
            se.seek(0)
            stdout, stderr = so.read(), se.read()
    if code != 0:
        raise RuntimeError("failed (exit %d):\n%s" % (code, stderr[-2000:]))
    got: Dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    if got["installed"] != (on == "1"):
        raise RuntimeError("did not run under the intended allocator (installed=%s)"
                           % got["installed"])
    return got


def _table(out: TextIO, count: int, keep_pct: float, rows: List[Any]) -> None:
    out.write("%d small objects, a random %g %% kept (%d); PSS above each child's baseline, MiB\n\n"
              % (count, keep_pct, rows[0][1]["kept"]))
    out.write("  %-20s %8s %11s %11s %10s %9s %9s\n" % (
        "allocator", "peak", "after free", "idle %gs" % IDLE_S, "compacted", "work s", "pause ms"))
    for name, r in rows:
        mib = [(r[k] - r["base"]) / 1024.0 for k in ("peak", "after_free", "idle", "compacted")]
        out.write("  %-20s %8.1f %11.1f %11.1f %10.1f %9.2f %9.1f\n"
                  % (name, *mib, r["work_s"], r["pause_s"] * 1000))
    ref, mesh = rows[0][1], rows[1][1]
    if ref["idle"] > ref["base"]:
        out.write("\nmeshalloc holds %.2fx the memory pymalloc holds %g s after the frees, with no "
                  "API call (%.2fx after compact())\n"
                  % ((mesh["idle"] - mesh["base"]) / (ref["idle"] - ref["base"]), IDLE_S,
                     (mesh["compacted"] - mesh["base"]) / (ref["compacted"] - ref["base"])))


def run(count: int = COUNT, keep_pct: float = KEEP_PCT, out: Optional[TextIO] = None,
        plot: Optional[str] = None) -> int:
    out = out or sys.stdout
    from meshalloc import _record, _remote
    with tempfile.TemporaryDirectory(prefix="meshalloc-demo-") as tmp:
        records = [os.path.join(tmp, "%s.jsonl" % on) for _name, on in CONFIGS]
        rows = []
        for (name, on), record in zip(CONFIGS, records):
            try:
                rows.append((name, _run_child(count, keep_pct, on, record if plot else None)))
            except RuntimeError as exc:
                out.write("demo: %s %s\n" % (name, exc))
                return 1
        _table(out, count, keep_pct, rows)
        if plot:
            try:
                w, h = _record.plot(records, plot, [name for name, _on in CONFIGS],
                                    "demo: %d objects, %g %% kept (compact() at the end)"
                                    % (count, keep_pct))
            except _remote.Failure as exc:
                out.write("demo: %s\n" % exc)
                return 1
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
