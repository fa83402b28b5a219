"""A timeline of a process's memory: ``run --record FILE`` and ``plot FILE``.

``record`` starts a command and, until it exits, samples at a fixed interval
what ``stats --pid`` reads (``_remote``): the child's PSS, the bytes its arena
memfd really holds, and its counters, plus the meshing pauses its pass log
shows since the previous sample. It writes them to FILE as JSON lines:

- a header: ``{"record": 1, "command": [...], "pid": N, "interval": S, "start": T}``
  (T: ``time.monotonic()`` when the child started);
- one line per sample: ``{"t": seconds since start, "pss_bytes": N,
  "arena_memfd_bytes": N or null, "counters": {...} or null, "passes": [...]}``.
  ``counters`` holds only the counters that changed since the previous
  sample (all of them in the first one that has any), so a long recording
  stays small; ``read_record`` rebuilds whole sets. It is ``null`` while the
  child shares no counters (not started yet, or not using meshalloc). Each
  pass is ``_remote``'s entry with ``t`` (its end, seconds since start);
- a last line: ``{"exit": status, "t": seconds}``.

A sample costs the child nothing on its hot paths: the counters are read
from the page it shares and PSS from ``/proc/PID/smaps_rollup``.

``plot`` draws one or more recordings: memory over time (PSS, the memfd's
blocks, committed arena bytes, bytes in use as the child published them) above, and below it each meshing pause as a
mark at its end, its height the MiB it gave back. It needs matplotlib (the
``plot`` extra) and says so when it is missing.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Any, Dict, Optional, Sequence, TextIO, Tuple

from . import _remote

MIB = 1048576.0


def _sample(pid: int, t0: float, last_counters: Dict[str, int], last_pass: int) -> Tuple[Dict[str, Any], int]:
    """One line of the record, and the number of the newest pass it holds."""
    now = time.monotonic()
    line: Dict[str, Any] = {"t": round(now - t0, 4)}
    try:
        got = _remote.read(pid)
    except _remote.Failure:
        line.update({"pss_bytes": _remote.pss_bytes(pid), "arena_memfd_bytes": None, "counters": None, "passes": []})
        return line, last_pass
    counters = got["counters"]
    assert isinstance(counters, dict)
    changed = {k: v for k, v in counters.items() if last_counters.get(k) != v}
    last_counters.update(counters)
    passes = []
    for p in got.get("passes", []):  # type: ignore[union-attr]
        if p["number"] > last_pass:
            passes.append(dict(p, t=round(p["end"] - t0, 4)))
    if passes:
        last_pass = max(p["number"] for p in passes)
    line.update({"pss_bytes": got["pss_bytes"], "arena_memfd_bytes": got.get("arena_memfd_bytes"),
                 "counters": changed, "passes": passes})
    return line, last_pass


def record(command: Sequence[str], env: Dict[str, str], path: str, interval: float,
           err: Optional[TextIO] = None, stdout: Any = None, stderr: Any = None) -> int:
    """Runs command with env, sampling it into path every interval seconds;
    returns its exit status (128 + N if a signal N ended it). stdout: where
    the child's standard output goes (Popen's argument; default ours), stderr
    likewise."""
    interval = max(0.01, float(interval))
    try:
        f = open(path, "w")
    except OSError as exc:
        raise _remote.Failure("run --record: cannot write %s: %s" % (path, exc.strerror)) from None
    with f:
        t0 = time.monotonic()
        try:
            child = subprocess.Popen(list(command), env=env, stdout=stdout, stderr=stderr)
        except FileNotFoundError:
            raise _remote.Failure("run: %s: command not found" % command[0], 127) from None
        except OSError as exc:
            raise _remote.Failure("run: %s: %s" % (command[0], exc.strerror), 126) from None
        f.write(json.dumps({"record": 1, "command": list(command), "pid": child.pid, "interval": interval,
                            "start": t0}) + "\n")
        counters: Dict[str, int] = {}
        last_pass = 0
        status = None
        try:
            while status is None:
                line, last_pass = _sample(child.pid, t0, counters, last_pass)
                status = child.poll()  # after the sample: a zombie's /proc is still readable
                if line["pss_bytes"] is not None:
                    f.write(json.dumps(line) + "\n")
                    f.flush()
                if status is None:
                    deadline = t0 + line["t"] + interval
                    try:
                        status = child.wait(max(0.0, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        pass
        except KeyboardInterrupt:
            # the terminal sent SIGINT to the child as well; wait for it
            status = child.wait()
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
        raise _remote.Failure("cannot read %s: %s" % (path, exc.strerror)) from None
    except ValueError as exc:
        raise _remote.Failure("%s is not a meshalloc record: %s" % (path, exc)) from None
    if not lines or not isinstance(lines[0], dict) or lines[0].get("record") != 1:
        raise _remote.Failure("%s is not a meshalloc record (no header line)" % path)
    samples, passes, status = [], [], None
    counters: Dict[str, int] = {}
    for x in lines[1:]:
        if "exit" in x:
            status = x["exit"]
            continue
        if x.get("counters") is not None:
            counters.update(x["counters"])
            x = dict(x, counters=dict(counters))
        samples.append(x)
        passes.extend(x.get("passes", []))
    return {"header": lines[0], "samples": samples, "passes": passes, "exit": status}


def _committed(s: Dict[str, Any]) -> Optional[float]:
    c = s.get("counters")
    if not c:
        return None
    return (c.get("span_pages", 0) + c.get("dirty_pages", 0)) * 4096 / MIB


def plot(paths: Sequence[str], output: str, labels: Optional[Sequence[str]] = None,
         title: Optional[str] = None) -> Tuple[int, int]:
    """Draws the recordings into output (PNG); returns its size in pixels."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise _remote.Failure("plot needs matplotlib: pip install 'meshalloc[plot]' (or pip install matplotlib)") \
            from None
    records = [read_record(p) for p in paths]
    labels = list(labels) if labels else [os.path.basename(p) for p in paths]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), dpi=100, sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (rec, label) in enumerate(zip(records, labels)):
        color = colors[i % len(colors)]
        samples = rec["samples"]
        t = [s["t"] for s in samples]
        top.plot(t, [(s["pss_bytes"] or 0) / MIB for s in samples], color=color, label="%s: PSS" % label)
        memfd = [(s["t"], s["arena_memfd_bytes"] / MIB) for s in samples if s.get("arena_memfd_bytes") is not None]
        if memfd:
            top.plot(*zip(*memfd), color=color, linestyle="--", label="%s: arena memfd blocks" % label)
        committed = [(s["t"], _committed(s)) for s in samples if _committed(s) is not None]
        if committed:
            top.plot(*zip(*committed), color=color, linestyle=":", label="%s: committed" % label)
        in_use = [(s["t"], s["counters"]["bytes_in_use_published"] / MIB) for s in samples
                  if s.get("counters") and s["counters"].get("bytes_in_use_published_ns")]
        if in_use:
            top.plot(*zip(*in_use), color=color, linestyle="-.", label="%s: in use" % label)
        meshing = [p for p in rec["passes"] if p["meshes"] > 0]
        if meshing:
            bottom.vlines([p["t"] for p in meshing], 0, [p["pages"] * 4096 / MIB for p in meshing], color=color,
                          label="%s: %d pauses that meshed" % (label, len(meshing)))
    top.set_ylabel("MiB")
    top.set_ylim(bottom=0)
    top.grid(True, alpha=0.3)
    top.legend(loc="best", fontsize="small")
    top.set_title(title or "memory over time (meshalloc run --record)")
    bottom.set_ylabel("MiB given back\nper pause")
    bottom.set_xlabel("seconds since start")
    bottom.set_ylim(bottom=0)
    bottom.grid(True, alpha=0.3)
    if bottom.get_legend_handles_labels()[0]:
        bottom.legend(loc="best", fontsize="small")
    fig.tight_layout()
    try:
        fig.savefig(output, format="png")
    except OSError as exc:
        raise _remote.Failure("plot: cannot write %s: %s" % (output, exc.strerror)) from None
    finally:
        plt.close(fig)
    w, h = fig.get_size_inches() * fig.dpi
    return int(round(w)), int(round(h))
