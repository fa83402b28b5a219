"""``python -m meshalloc demo``: a fragmentation workload in two fresh child interpreters,
under CPython's default allocator and under meshalloc; README.md, "Try it", explains the
figures (PSS after IDLE_S seconds with no API call is the headline).
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

from meshalloc._remote import MIB, Failure, pss_bytes

COUNT = 1_000_000
KEEP_PCT = 2.0
SEED = 7
IDLE_S = 2.0
PLOT_INTERVAL_S = 0.1
CONFIGS = (("pymalloc (default)", "0"), ("meshalloc", "1"))  # (name, MESHALLOC)
PHASES = ("peak", "after_free", "idle", "compacted")  # the PSS figures of the table


def child(count: int, keep_pct: float) -> Dict[str, Any]:
    """The workload; runs in the measured interpreter."""
    import gc
    gc.collect()
    got: Dict[str, Any] = {"base": pss_bytes() or 0}
    t0 = time.perf_counter()
    objs = []
    for i in range(count):
        k = i % 3
        objs.append("s%d" % (i * 7919) if k == 0 else (i, i + 1) if k == 1 else [i, "x" * (i % 64)])
    got["peak"] = pss_bytes() or 0
    rng = random.Random(SEED)
    kept = [o for o in objs if rng.random() * 100 < keep_pct]
    del objs
    got["work_s"] = time.perf_counter() - t0
    got["after_free"] = pss_bytes() or 0
    t1 = time.perf_counter()
    junk: List[Any] = []
    while time.perf_counter() - t1 < IDLE_S:  # a little activity, no meshalloc call
        time.sleep(0.1)
        junk = ["idle-%d" % i for i in range(10)]
    got["idle"] = pss_bytes() or 0
    import meshalloc
    got["installed"] = meshalloc.is_installed()
    got["pause_s"] = meshalloc.compact().pause_seconds if got["installed"] else 0.0
    assert len(kept) > 0 and all(o is not None for o in kept) and len(junk) == 10
    return dict(got, compacted=pss_bytes() or 0, kept=len(kept))


def _run_child(name: str, on: str, count: int, keep_pct: float,
               record: Optional[str]) -> Dict[str, Any]:
    """The child's report under MESHALLOC=on, sampled into record as `run --record` does."""
    from meshalloc import _record
    env = dict({k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC")},
               MESHALLOC=on)
    cmd = [sys.executable, "-m", "meshalloc.demo", "--child", str(count), str(keep_pct)]
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        if record is None:
            code = subprocess.call(cmd, env=env, stdout=so, stderr=se, timeout=900)
        else:
            code = _record.record(cmd, env, record, PLOT_INTERVAL_S, stdout=so, stderr=se)
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read(), se.read()
    if code != 0:
        raise RuntimeError("%s failed (exit %d):\n%s" % (name, code, stderr[-2000:]))
    got: Dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    if got["installed"] != (on == "1"):
        raise RuntimeError("%s did not run under the intended allocator (installed=%s)"
                           % (name, got["installed"]))
    return got


def _table(out: TextIO, count: int, keep_pct: float, rows: List[Any]) -> None:
    """The children's figures, PSS above each one's baseline in MiB, and the headline."""
    out.write("%d small objects, a random %g %% kept (%d); PSS above each child's baseline, MiB\n\n"
              % (count, keep_pct, rows[0][1]["kept"]))
    out.write("  %-20s %8s %11s %11s %10s %9s %9s\n" % (
        "allocator", "peak", "after free", "idle %gs" % IDLE_S, "compacted", "work s", "pause ms"))
    for name, r in rows:
        out.write("  %-20s %8.1f %11.1f %11.1f %10.1f %9.2f %9.1f\n" % (
            name, *[(r[k] - r["base"]) / MIB for k in PHASES], r["work_s"], r["pause_s"] * 1000))
    ref, mesh = rows[0][1], rows[1][1]
    if ref["idle"] > ref["base"]:
        out.write("\nmeshalloc holds %.2fx the memory pymalloc holds %g s after the frees, with no "
                  "API call (%.2fx after compact())\n"
                  % ((mesh["idle"] - mesh["base"]) / (ref["idle"] - ref["base"]), IDLE_S,
                     (mesh["compacted"] - mesh["base"]) / (ref["compacted"] - ref["base"])))


def run(count: int = COUNT, keep_pct: float = KEEP_PCT, out: Optional[TextIO] = None,
        plot: Optional[str] = None) -> int:
    """Runs both children, prints their table, draws them into plot (a PNG) if given."""
    out = out or sys.stdout
    from meshalloc import _record
    with tempfile.TemporaryDirectory(prefix="meshalloc-demo-") as tmp:
        records = [os.path.join(tmp, "%s.jsonl" % on) for _name, on in CONFIGS]
        try:
            rows = [(name, _run_child(name, on, count, keep_pct, record if plot else None))
                    for (name, on), record in zip(CONFIGS, records)]
            _table(out, count, keep_pct, rows)
            if plot:
                w, h = _record.plot(records, plot, [name for name, _on in CONFIGS],
                                    "demo: %d objects, %g %% kept (compact() at the end)"
                                    % (count, keep_pct))
                out.write("\nwrote %s (%dx%d)\n" % (plot, w, h))
        except (RuntimeError, Failure) as exc:
            out.write("demo: %s\n" % exc)
            return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``--child COUNT KEEP_PCT``: the workload, its report as JSON; else the demo."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        print(json.dumps(child(int(argv[1]), float(argv[2]))))
        return 0
    return run()


if __name__ == "__main__":
    sys.exit(main())
