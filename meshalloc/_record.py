"""A timeline of a process's memory: ``run --record FILE`` and ``plot FILE``.

A record is JSON lines (docs/python.md, "A timeline"); a sample holds only the counters that
changed since the previous one, ``read_record`` rebuilds whole sets.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from . import _remote
from ._remote import MIB, PAGE, Failure


def cannot_run(command: Sequence[str], exc: OSError) -> Failure:
    """Why command could not start, with a shell's exit status (127: not found, else 126)."""
    if isinstance(exc, FileNotFoundError):
        return Failure("run: %s: command not found" % command[0], 127)
    return Failure("run: %s: %s" % (command[0], exc.strerror), 126)


def _sample(pid: int, t0: float, counters: Dict[str, int],
            last_pass: int) -> Tuple[Dict[str, Any], int]:
    """One line of the record, and the number of the newest pass it holds."""
    line: Dict[str, Any] = {"t": round(time.monotonic() - t0, 4)}
    try:
        got = _remote.read(pid)
    except Failure:
        line.update(pss_bytes=_remote.pss_bytes(pid), arena_memfd_bytes=None, counters=None,
                    passes=[])
        return line, last_pass
    changed = {k: v for k, v in got["counters"].items() if counters.get(k) != v}
    counters.update(changed)
    passes = [dict(p, t=round(p["end"] - t0, 4)) for p in got["passes"] if p["number"] > last_pass]
    line.update(pss_bytes=got["pss_bytes"], arena_memfd_bytes=got.get("arena_memfd_bytes"),
                counters=changed, passes=passes)
    return line, max([last_pass] + [p["number"] for p in passes])


def record(command: Sequence[str], env: Dict[str, str], path: str, interval: float,
           err: Optional[TextIO] = None, stdout: Any = None, stderr: Any = None) -> int:
    """Runs command with env, sampling it into path every interval seconds; returns
    its exit status (128 + N if signal N ended it). stdout, stderr: Popen's."""
    interval = max(0.01, float(interval))
    try:
        f = open(path, "w")
    except OSError as exc:
        raise Failure("run --record: cannot write %s: %s" % (path, exc.strerror)) from None
    with f:
        t0 = time.monotonic()
        try:
            child = subprocess.Popen(list(command), env=env, stdout=stdout, stderr=stderr)
        except OSError as exc:
            raise cannot_run(command, exc) from None
        f.write(json.dumps({"record": 1, "command": list(command), "pid": child.pid,
                            "interval": interval, "start": t0}) + "\n")
        counters: Dict[str, int] = {}
        last_pass, status = 0, None
        try:
            while status is None:
                line, last_pass = _sample(child.pid, t0, counters, last_pass)
                status = child.poll()  # after the sample: a zombie's /proc is still readable
                if line["pss_bytes"] is not None:
                    f.write(json.dumps(line) + "\n")
                    f.flush()
                if status is None:
                    try:
                        status = child.wait(max(0.0, t0 + line["t"] + interval - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        pass
        except KeyboardInterrupt:
            status = child.wait()  # the terminal sent SIGINT to the child as well
        code = status if status >= 0 else 128 - status
        f.write(json.dumps({"exit": code, "t": round(time.monotonic() - t0, 4)}) + "\n")
    if err is not None:
        err.write("meshalloc: recorded %s (exit status %d)\n" % (path, code))
    return code


def read_record(path: str) -> Dict[str, Any]:
    """{"header", "samples" (counters rebuilt whole), "passes", "exit"}."""
    try:
        with open(path) as f:
            lines = [json.loads(x) for x in f if x.strip()]
    except OSError as exc:
        raise Failure("cannot read %s: %s" % (path, exc.strerror)) from None
    except ValueError as exc:
        raise Failure("%s is not a meshalloc record: %s" % (path, exc)) from None
    if not lines or not isinstance(lines[0], dict) or lines[0].get("record") != 1:
        raise Failure("%s is not a meshalloc record (no header line)" % path)
    samples, counters, status = [], {}, None
    for x in lines[1:]:
        if "exit" in x:
            status = x["exit"]
            continue
        if x.get("counters") is not None:
            counters.update(x["counters"])
            x = dict(x, counters=dict(counters))
        samples.append(x)
    return {"header": lines[0], "samples": samples, "exit": status,
            "passes": [p for s in samples for p in s.get("passes", [])]}


# The memory lines of a plot: (label, line style, MiB of a sample and its counters, or None).
_CURVES = (
    ("PSS", "-", lambda s, c: (s["pss_bytes"] or 0) / MIB),
    ("arena memfd blocks", "--",
     lambda s, c: None if s.get("arena_memfd_bytes") is None else s["arena_memfd_bytes"] / MIB),
    ("committed", ":",
     lambda s, c: (c.get("span_pages", 0) + c.get("dirty_pages", 0)) * PAGE / MIB if c else None),
    ("in use", "-.", lambda s, c: c["bytes_in_use_published"] / MIB
     if c and c.get("bytes_in_use_published_ns") else None),
)


def plot(paths: Sequence[str], output: str, labels: Optional[Sequence[str]] = None,
         title: Optional[str] = None) -> Tuple[int, int]:
    """Draws the recordings into output (PNG); returns its size in pixels."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise Failure("plot needs matplotlib: pip install 'meshalloc[plot]' "
                      "(or pip install matplotlib)") from None
    records = [read_record(p) for p in paths]
    names: List[str] = list(labels) if labels else [os.path.basename(p) for p in paths]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), dpi=100, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (rec, label) in enumerate(zip(records, names)):
        color = colors[i % len(colors)]
        for name, style, mib in _CURVES:
            points = [(s["t"], mib(s, s.get("counters") or {})) for s in rec["samples"]]
            points = [p for p in points if p[1] is not None]
            if points:
                top.plot(*zip(*points), color=color, linestyle=style,
                         label="%s: %s" % (label, name))
        meshing = [p for p in rec["passes"] if p["meshes"] > 0]
        if meshing:
            bottom.vlines([p["t"] for p in meshing], 0, [p["pages"] * PAGE / MIB for p in meshing],
                          color=color, label="%s: %d pauses that meshed" % (label, len(meshing)))
    top.set_ylabel("MiB")
    top.set_title(title or "memory over time (meshalloc run --record)")
    bottom.set_ylabel("MiB given back\nper pause")
    bottom.set_xlabel("seconds since start")
    for ax in (top, bottom):
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    try:
        fig.savefig(output, format="png")
    except OSError as exc:
        raise Failure("plot: cannot write %s: %s" % (output, exc.strerror)) from None
    finally:
        plt.close(fig)
    w, h = fig.get_size_inches() * fig.dpi
    return int(round(w)), int(round(h))
