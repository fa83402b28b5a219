"""``python -m meshalloc``: locate libmesh, report on it, run a command under it.

Each command is a ``cmd_*`` function whose docstring is its ``--help`` (the first line: its
summary); exit statuses are in docs/python.md, "Command line".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO

import meshalloc

from . import _remote
from ._remote import MIB, PAGE
from ._remote import Failure as CliError  # one failure type for the CLI and its helpers

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _require_libmesh() -> str:
    path = meshalloc.libmesh_path()
    if not os.path.isfile(path):
        raise CliError("%s is missing: %s" % (path, meshalloc._not_built_reason()))
    return path


def _load() -> None:
    """Load the backend now so that a failure is reported cleanly."""
    try:
        meshalloc.version()  # imports the backend and opens the library
    except (ImportError, OSError) as exc:
        raise CliError("cannot load the meshalloc core: %s" % exc) from exc


def _json(out: TextIO, data: object) -> int:
    json.dump(data, out, indent=2)
    out.write("\n")
    return EXIT_OK


def _table(out: TextIO, values: Dict[str, Any], docs: Dict[str, str], indent: str = "") -> None:
    """One line per name: its value and its doc, names and values aligned."""
    width = max([len(name) for name in values] + [4])
    vwidth = max([len(str(value)) for value in values.values()] + [5])
    for name, value in values.items():
        out.write(("%s%-*s %*s  %s" % (indent, width, name, vwidth, value, docs.get(name, "")))
                  .rstrip() + "\n")


def _mib(n: Optional[int]) -> str:
    return "-" if n is None else "%.1f" % (n / MIB)


def cmd_libpath(args: argparse.Namespace, out: TextIO) -> int:
    """print the absolute path of libmesh.so

    Print the absolute path of the package's libmesh.so (for LD_PRELOAD)."""
    out.write(_require_libmesh() + "\n")
    return EXIT_OK


def cmd_info(args: argparse.Namespace, out: TextIO) -> int:
    """versions, paths and options

    Print versions, the libmesh path, whether libmesh is preloaded, whether
    meshing is available, and every option with its value and documentation."""
    path = meshalloc.libmesh_path()
    _load()
    preloaded, docs = meshalloc.is_preloaded(), meshalloc.option_docs()
    values = {name: meshalloc.get_option(name) for name in docs}
    info = {"package_version": meshalloc.__version__, "core_version": meshalloc.version(),
            "libmesh_path": path, "libmesh_present": os.path.isfile(path),
            "backend": meshalloc.backend(), "preloaded": preloaded,
            "preloaded_path": meshalloc.library_path() if preloaded else None,
            "meshing_available": meshalloc.meshing_available(),
            "options": [{"name": name, "value": values[name], "env": "MESH_" + name.upper(),
                         "doc": doc} for name, doc in docs.items()]}
    if args.json:
        return _json(out, info)
    where = " (%s)" % info["preloaded_path"] if info["preloaded_path"] else ""
    for key, value in (("meshalloc", meshalloc.__version__), ("core version", info["core_version"]),
                       ("libmesh.so", path + ("" if info["libmesh_present"] else "  (MISSING)")),
                       ("backend", info["backend"]),
                       ("preloaded", "yes" + where if preloaded else "no"),
                       ("meshing available", "yes" if info["meshing_available"] else "no")):
        out.write("%-18s %s\n" % (key + ":", value))
    out.write("options (environment variable MESH_<NAME>):\n")
    _table(out, values, docs, "  ")
    return EXIT_OK


# The pause histogram's buckets, longest first, for an interval the pass log no longer covers.
_PAUSE_BUCKETS = (("mesh_pause_ge_5ms", ">=5ms"), ("mesh_pause_lt_5ms", "2-5ms"),
                  ("mesh_pause_lt_2ms", "1-2ms"), ("mesh_pause_lt_1ms", "0.5-1ms"),
                  ("mesh_pause_lt_500us", "100-500us"), ("mesh_pause_lt_100us", "<100us"))


def _longest(got: Dict[str, Any], prev: Dict[str, Any], d: Dict[str, int]) -> str:
    """The interval's longest pause, wall and CPU ms, from the pass log; its
    histogram bucket if the log no longer holds every pause of the interval."""
    first = prev["counters"].get("mesh_passes", 0) + 1
    last = got["counters"].get("mesh_passes", 0)
    if last < first:
        return "-"
    passes = [p for p in got["passes"] if first <= p["number"] <= last]
    if len(passes) == last - first + 1:
        return "%.2f/%.2f" % tuple(max(p[k] for p in passes) * 1e3 for k in ("wall", "cpu"))
    return next((label for key, label in _PAUSE_BUCKETS if d.get(key, 0) > 0), "-")


def _watch(args: argparse.Namespace, out: TextIO, prev: Dict[str, Any]) -> int:
    """One line per interval (args.count lines if set): memory now, meshing in the interval."""
    interval, lines = max(0.1, float(args.watch)), args.count if args.count > 0 else -1
    out.write("%8s %9s %9s %9s %9s %9s %8s %10s %7s %15s %9s\n" % (
        "seconds", "PSS MiB", "memfd MiB", "spans MiB", "dirty MiB", "in use", "meshes/s",
        "MiB/s back", "passes", "longest ms/CPU", "mappings"))
    t0 = t_prev = time.monotonic()
    while lines != 0:
        try:
            time.sleep(interval)
            got = _remote.read(args.pid)
        except KeyboardInterrupt:
            return EXIT_OK
        except CliError as exc:
            if exc.status == 2 and not os.path.exists("/proc/%d" % args.pid):
                out.write("process %d exited\n" % args.pid)
                return EXIT_OK
            raise
        now, c, p = time.monotonic(), got["counters"], prev["counters"]
        d = {k: c.get(k, 0) - p.get(k, 0) for k in c}
        dt = max(now - t_prev, 1e-9)
        in_use = _mib(c["bytes_in_use_published"]) if c.get("bytes_in_use_published_ns") else "-"
        out.write("%8.1f %9s %9s %9s %9s %9s %8.0f %10.2f %7d %15s %9d\n" % (
            now - t0, _mib(got["pss_bytes"]), _mib(got.get("arena_memfd_bytes")),
            _mib(c.get("span_pages", 0) * PAGE), _mib(c.get("dirty_pages", 0) * PAGE), in_use,
            d.get("mesh_count", 0) / dt, d.get("meshed_pages_total", 0) * PAGE / MIB / dt,
            d.get("mesh_passes", 0), _longest(got, prev, d), c.get("arena_mappings", 0)))
        out.flush()
        prev, t_prev, lines = got, now, lines - 1
    return EXIT_OK


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    """print the allocator's counters

    Print the counters of the heap this process uses. Under LD_PRELOAD that
    is the preloaded libmesh, i.e. the whole process."""
    if args.pid is not None:
        got = _remote.read(args.pid)
        if args.watch is not None:
            return _watch(args, out, got)
        if args.json:
            return _json(out, got)
        out.write("process %d: PSS %s MiB, arena memfd %s MiB\n" % (
            args.pid, _mib(got["pss_bytes"]), _mib(got.get("arena_memfd_bytes"))))
        _table(out, got["counters"], meshalloc.stats_docs() if args.docs else {})
        return EXIT_OK
    if args.watch is not None:
        raise CliError("--watch needs --pid (the counters of another process)", EXIT_USAGE)
    _load()
    if args.summary:
        out.flush()
        try:
            fd = out.fileno()
        except (AttributeError, OSError, ValueError):
            fd = 1  # io.UnsupportedOperation is an OSError and a ValueError
        meshalloc.print_stats(fd)
        return EXIT_OK
    preloaded, values = meshalloc.is_preloaded(), meshalloc.stats(pss=True).to_dict()
    if args.json:
        return _json(out, {"preloaded": preloaded, "backend": meshalloc.backend(), "stats": values})
    out.write("backend: %s   preloaded: %s\n" % (meshalloc.backend(), preloaded))
    if not preloaded:
        out.write("(libmesh is not preloaded: these are the counters of this process's own, mostly "
                  "idle, heap; run under LD_PRELOAD=$(python -m meshalloc libpath) "
                  "PYTHONMALLOC=malloc to see a whole process)\n")
    classes = values.pop("size_classes", [])
    _table(out, {name: (",".join(value) or "-") if isinstance(value, list) else value
                 for name, value in values.items()}, meshalloc.stats_docs() if args.docs else {})
    if classes:
        out.write("\nsize classes in use (spans: attached/partial/full; meshed: virtual spans "
                  "meshed onto them)\n%8s %7s %7s %15s %9s %9s %7s\n"
                  % ("size", "span", "spans", "att/part/full", "objects", "occupancy", "meshed"))
    for c in classes:
        out.write("%8d %6dK %7d %15s %9d %8.1f%% %7d\n" % (
            c["object_size"], c["span_bytes"] // 1024, c["spans"],
            "%d/%d/%d" % (c["spans_attached"], c["spans_partial"], c["spans_full"]),
            c["objects_in_use"], 100.0 * c["occupancy"], c["meshed_spans"]))
    return EXIT_OK


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    """run a command with meshalloc turned on

    Run CMD with MESHALLOC=1, so that every Python interpreter of its tree
    installs meshalloc at start-up (PyMem only), or with --preload under
    LD_PRELOAD=<libmesh.so> PYTHONMALLOC=malloc: the whole process."""
    from . import _record
    command: List[str] = list(args.command)
    if not command:
        raise CliError("run: missing command (usage: run [--preload] -- CMD [ARGS...])", EXIT_USAGE)
    env = dict(os.environ)
    if args.preload:  # libmesh.so first in LD_PRELOAD, and CPython on malloc
        libpath = _require_libmesh()
        if ":" in libpath or " " in libpath:  # glibc splits LD_PRELOAD on both
            raise CliError("cannot preload %r: LD_PRELOAD splits paths on ':' and ' '; install "
                           "meshalloc under a path without them" % libpath)
        entries = [e for e in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if e]
        env["LD_PRELOAD"] = ":".join([libpath] + [e for e in entries
                                                  if os.path.abspath(e) != libpath])
        # pymalloc takes its arenas with mmap, so small Python objects only reach malloc (and
        # libmesh) under PYTHONMALLOC=malloc; malloc_debug also ends in malloc: it stays.
        if env.get("PYTHONMALLOC") != "malloc_debug":
            env["PYTHONMALLOC"] = "malloc"
    else:
        env["MESHALLOC"] = "1"  # read by meshalloc-autoinstall.pth in every Python of CMD's tree
    out.flush()
    sys.stderr.flush()
    if args.record is not None:
        if args.interval <= 0:
            raise CliError("run: --interval must be positive", EXIT_USAGE)
        return _record.record(command, env, args.record, args.interval, sys.stderr)
    try:
        os.execvpe(command[0], command, env)
    except OSError as exc:
        raise _record.cannot_run(command, exc) from None
    return EXIT_FAILURE  # not reached: exec replaced the process


def cmd_plot(args: argparse.Namespace, out: TextIO) -> int:
    """draw recordings made with run --record

    Draw one or more recordings made with 'run --record' into a PNG: PSS, the
    arena memfd's blocks and committed bytes over time, and below them each
    meshing pause at its end, as high as the MiB it gave back. Needs
    matplotlib (pip install 'meshalloc[plot]')."""
    from . import _record
    if args.label and len(args.label) != len(args.files):
        raise CliError("plot: give one --label per FILE (%d files, %d labels)"
                       % (len(args.files), len(args.label)), EXIT_USAGE)
    output = args.output or os.path.splitext(args.files[0])[0] + ".png"
    w, h = _record.plot(args.files, output, args.label, args.title)
    out.write("wrote %s (%dx%d)\n" % (output, w, h))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    """fragmentation demo: pymalloc vs meshalloc

    Run a built-in fragmentation workload (1 M small objects, 2 % kept) in
    child interpreters under CPython's default allocator and under meshalloc
    (MESHALLOC=1), and print PSS at the peak, after the frees and after
    compaction, with the time taken."""
    from meshalloc import demo
    return demo.run(args.count, args.keep, out, plot=args.plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m meshalloc", description="meshalloc: the "
                                     "Mesh compacting allocator for CPython and C.")
    parser.add_argument("--version", action="version",
                        version="meshalloc %s" % meshalloc.__version__)
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    cmd = {}
    for func in (cmd_libpath, cmd_info, cmd_stats, cmd_run, cmd_plot, cmd_demo):
        summary, _, description = (func.__doc__ or "").partition("\n")
        cmd[func.__name__[4:]] = p = sub.add_parser(func.__name__[4:], help=summary,
                                                    description=description)
        p.set_defaults(func=func)
    for name in ("info", "stats"):
        cmd[name].add_argument("--json", action="store_true", help="print JSON")
    p = cmd["stats"]
    p.add_argument("--docs", action="store_true", help="add each counter's doc")
    p.add_argument("--summary", action="store_true", help="print the MALLOCSTATS summary instead")
    p.add_argument("--pid", type=int, metavar="PID", help="the counters of another running "
                   "process that uses meshalloc, read without stopping it (option stats_page)")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="with --pid: a line of memory "
                   "and meshing figures every SECONDS (docs/python.md; Ctrl-C ends it)")
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)  # --watch lines (tests)
    p = cmd["run"]
    p.usage = ("python -m meshalloc run [-h] [--preload] [--record FILE [--interval S]] -- "
               "CMD [ARGS...]")
    p.add_argument("--preload", action="store_true",
                   help="use libmesh.so as the process malloc (LD_PRELOAD)")
    p.add_argument("--record", metavar="FILE", help="run CMD as a child and sample its memory, "
                   "counters and pauses into FILE (JSON lines; 'plot FILE' draws them)")
    p.add_argument("--interval", type=float, default=0.5, metavar="SECONDS",
                   help="with --record: seconds between samples (default 0.5)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD [ARGS...]",
                   help="the command to run (put it after --)")
    p = cmd["plot"]
    p.add_argument("files", nargs="+", metavar="FILE", help="a recording (JSON lines)")
    p.add_argument("-o", "--output", metavar="PNG",
                   help="the image to write (default: FILE with .png)")
    p.add_argument("--label", action="append", metavar="NAME",
                   help="a legend name per FILE, in order (default: the file names)")
    p.add_argument("--title", help="the plot's title")
    p = cmd["demo"]
    p.add_argument("--count", type=int, default=1_000_000, help="objects to allocate")
    p.add_argument("--keep", type=float, default=2.0, help="percent kept")
    p.add_argument("--plot", metavar="PNG", help="also record both runs (as run --record does) "
                   "and draw them into PNG (needs matplotlib)")
    return parser


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # "--" is taken out before parsing: argparse's handling of it with a
    # remainder argument differs between Python versions.
    at = args_list.index("--") if "--" in args_list else len(args_list)
    args = parser.parse_args(args_list[:at])
    if args.cmd is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if at < len(args_list):
        if args.cmd != "run":
            parser.error("unexpected '--' for command %r" % args.cmd)
        # "run CMD -- X": the "--" belongs to CMD.
        tail = args_list[at + 1:]
        args.command = list(args.command) + ["--"] + tail if args.command else tail
    try:
        return int(args.func(args, sys.stdout if out is None else out))
    except CliError as exc:
        sys.stderr.write("meshalloc: %s\n" % exc)
        return exc.status
    except BrokenPipeError:
        # `python -m meshalloc stats | head`: not an error worth a traceback.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK

