"""``python -m meshalloc``: locate libmesh, report on it, run a command under it.

Commands::

    libpath                   print the absolute path of the package's libmesh.so
    info [--json]             versions, paths, backend, options (value and doc)
    stats [--json] [--docs] [--summary] [--pid PID [--watch SECONDS]]
                              the counters of the heap this process uses
                              (run it under LD_PRELOAD to see a preloaded heap)
    run [--preload] -- CMD [ARGS...]
                              exec CMD with meshalloc turned on: MESHALLOC=1
                              (Python processes install meshalloc at start-up
                              through meshalloc-autoinstall.pth), or with
                              --preload libmesh.so as the process malloc

Exit status: 0 on success, 1 when libmesh cannot be found or loaded, 2 for a
usage error, 126/127 when ``run`` cannot execute CMD (as a shell would).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO

import meshalloc

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

# glibc splits LD_PRELOAD on both.
_PRELOAD_SEPARATORS = (":", " ")


from ._remote import Failure as CliError  # noqa: E402 -- one failure type for the CLI and its helpers


def _require_libmesh() -> str:
    path = meshalloc.libmesh_path()
    if not os.path.isfile(path):
        raise CliError(
            "%s is missing: %s" % (path, meshalloc._not_built_reason())
        )
    return path


def _load() -> None:
    """Load the backend now so that a failure is reported cleanly."""
    try:
        meshalloc.version()  # imports the backend and opens the library
    except (ImportError, OSError) as exc:
        raise CliError("cannot load the meshalloc core: %s" % exc) from exc


# ---- libpath -------------------------------------------------------------


def cmd_libpath(args: argparse.Namespace, out: TextIO) -> int:
    out.write(_require_libmesh() + "\n")
    return EXIT_OK


# ---- info ----------------------------------------------------------------


def _env_name(option: str) -> str:
    return "MESH_" + option.upper()


def _info() -> Dict[str, object]:
    path = meshalloc.libmesh_path()
    _load()
    docs = meshalloc.option_docs()
    options = []
    for name in meshalloc.option_names():
        options.append(
            {
                "name": name,
                "value": meshalloc.get_option(name),
                "env": _env_name(name),
                "doc": docs.get(name, ""),
            }
        )
    return {
        "package_version": meshalloc.__version__,
        "core_version": meshalloc.version(),
        "libmesh_path": path,
        "libmesh_present": os.path.isfile(path),
        "backend": meshalloc.backend(),
        "preloaded": meshalloc.is_preloaded(),
        "preloaded_path": meshalloc.library_path() if meshalloc.is_preloaded() else None,
        "meshing_available": meshalloc.meshing_available(),
        "options": options,
    }


def cmd_info(args: argparse.Namespace, out: TextIO) -> int:
    info = _info()
    if args.json:
        json.dump(info, out, indent=2)
        out.write("\n")
        return EXIT_OK
    present = "" if info["libmesh_present"] else "  (MISSING)"
    preloaded = "yes" if info["preloaded"] else "no"
    if info["preloaded"] and info["preloaded_path"]:
        preloaded += " (%s)" % info["preloaded_path"]
    rows = [
        ("meshalloc", str(info["package_version"])),
        ("core version", str(info["core_version"])),
        ("libmesh.so", "%s%s" % (info["libmesh_path"], present)),
        ("backend", str(info["backend"])),
        ("preloaded", preloaded),
        ("meshing available", "yes" if info["meshing_available"] else "no"),
    ]
    for key, value in rows:
        out.write("%-18s %s\n" % (key + ":", value))
    options = info["options"]
    assert isinstance(options, list)
    out.write("options (environment variable MESH_<NAME>):\n")
    if not options:
        out.write("  (none)\n")
    width = max([len(o["name"]) for o in options] + [4])
    vwidth = max([len(str(o["value"])) for o in options] + [5])
    for o in options:
        out.write(
            "  %-*s %*s  %s\n" % (width, o["name"], vwidth, o["value"], o["doc"])
        )
    return EXIT_OK


# ---- stats ---------------------------------------------------------------


_PAUSE_BUCKETS = (("mesh_pause_ge_5ms", ">=5ms"), ("mesh_pause_lt_5ms", "2-5ms"), ("mesh_pause_lt_2ms", "1-2ms"),
                  ("mesh_pause_lt_1ms", "0.5-1ms"), ("mesh_pause_lt_500us", "100-500us"),
                  ("mesh_pause_lt_100us", "<100us"))


def _mib(n: "Optional[int]") -> str:
    return "-" if n is None else "%.1f" % (n / 1048576.0)


def _remote_stats(args: argparse.Namespace, out: TextIO) -> int:
    from . import _remote

    got = _remote.read(args.pid)
    if args.watch is None:
        if args.json:
            json.dump(got, out, indent=2)
            out.write("\n")
            return EXIT_OK
        counters = got["counters"]
        out.write("process %d: PSS %s MiB, arena memfd %s MiB\n" % (
            args.pid, _mib(got["pss_bytes"]), _mib(got.get("arena_memfd_bytes"))))
        docs = meshalloc.stats_docs() if args.docs else {}
        width = max(len(n) for n in counters)
        vwidth = max(len(str(v)) for v in counters.values())
        for name, value in counters.items():
            line = "%-*s %*d" % (width, name, vwidth, value)
            if args.docs:
                line += "  " + docs.get(name, "")
            out.write(line + "\n")
        return EXIT_OK
    return _watch(args, out, got)


def _longest(got: "Dict[str, Any]", prev: "Dict[str, Any]", d: "Dict[str, int]") -> str:
    """The interval's longest pause, wall and CPU ms, from the pass log; its
    histogram bucket if the log no longer holds every pause of the interval
    (more than its 256 since the last line)."""
    first = prev["counters"].get("mesh_passes", 0) + 1
    last = got["counters"].get("mesh_passes", 0)
    if last < first:
        return "-"
    passes = [p for p in got.get("passes", []) if first <= p["number"] <= last]
    if len(passes) == last - first + 1:
        return "%.2f/%.2f" % (max(p["wall"] for p in passes) * 1e3, max(p["cpu"] for p in passes) * 1e3)
    return next((label for key, label in _PAUSE_BUCKETS if d.get(key, 0) > 0), "-")


def _watch(args: argparse.Namespace, out: TextIO, prev: "Dict[str, object]") -> int:
    """One line per interval: memory now, and what meshing did in the interval."""
    from . import _remote

    interval = max(0.1, float(args.watch))
    out.write("%8s %9s %9s %9s %9s %9s %8s %10s %7s %15s %9s\n" % (
        "seconds", "PSS MiB", "memfd MiB", "spans MiB", "dirty MiB", "in use", "meshes/s", "MiB/s back", "passes",
        "longest ms/CPU", "mappings"))
    t0 = time.monotonic()
    t_prev = t0
    while True:
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
        now = time.monotonic()
        dt = max(now - t_prev, 1e-9)
        c, p = got["counters"], prev["counters"]
        d = {k: c.get(k, 0) - p.get(k, 0) for k in c}
        longest = _longest(got, prev, d)
        out.write("%8.1f %9s %9s %9s %9s %9s %8.0f %10.2f %7d %15s %9d\n" % (
            now - t0, _mib(got["pss_bytes"]), _mib(got.get("arena_memfd_bytes")),
            _mib(c.get("span_pages", 0) * 4096), _mib(c.get("dirty_pages", 0) * 4096),
            _mib(c["bytes_in_use_published"]) if c.get("bytes_in_use_published_ns") else "-",
            d.get("mesh_count", 0) / dt, d.get("meshed_pages_total", 0) * 4096 / 1048576.0 / dt,
            d.get("mesh_passes", 0), longest, c.get("arena_mappings", 0)))
        out.flush()
        prev, t_prev = got, now
        if args.count and args.count > 0:
            args.count -= 1
            if args.count == 0:
                return EXIT_OK


def cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    if args.pid is not None:
        return _remote_stats(args, out)
    if args.watch is not None:
        raise CliError("--watch needs --pid (the counters of another process)", EXIT_USAGE)
    _load()
    preloaded = meshalloc.is_preloaded()
    if args.summary:
        out.flush()
        try:
            fd = out.fileno()
        except (AttributeError, OSError, ValueError):
            fd = 1  # io.UnsupportedOperation is an OSError and a ValueError
        meshalloc.print_stats(fd)
        return EXIT_OK
    values = meshalloc.stats(pss=True).to_dict()
    if args.json:
        json.dump(
            {"preloaded": preloaded, "backend": meshalloc.backend(), "stats": values},
            out,
            indent=2,
        )
        out.write("\n")
        return EXIT_OK
    out.write("backend: %s   preloaded: %s\n" % (meshalloc.backend(), preloaded))
    if not preloaded:
        out.write(
            "(libmesh is not preloaded: these are the counters of this process's "
            "own, mostly idle, heap; run under LD_PRELOAD=$(python -m meshalloc "
            "libpath) PYTHONMALLOC=malloc to see a whole process)\n"
        )
    docs = meshalloc.stats_docs() if args.docs else {}
    classes = values.pop("size_classes", [])
    shown = {
        name: (",".join(value) or "-") if isinstance(value, list) else str(value)
        for name, value in values.items()
    }
    width = max([len(name) for name in shown] + [4])
    vwidth = max([len(v) for v in shown.values()] + [5])
    for name, value in shown.items():
        line = "%-*s %*s" % (width, name, vwidth, value)
        if args.docs:
            line += "  " + docs.get(name, "")
        out.write(line + "\n")
    if classes:
        out.write("\nsize classes in use (spans: attached/partial/full; meshed: virtual spans meshed onto them)\n")
        out.write("%8s %7s %7s %15s %9s %9s %7s\n" % ("size", "span", "spans", "att/part/full", "objects",
                                                     "occupancy", "meshed"))
        for c in classes:
            out.write("%8d %6dK %7d %15s %9d %8.1f%% %7d\n" % (
                c["object_size"], c["span_bytes"] // 1024, c["spans"],
                "%d/%d/%d" % (c["spans_attached"], c["spans_partial"], c["spans_full"]),
                c["objects_in_use"], 100.0 * c["occupancy"], c["meshed_spans"]))
    return EXIT_OK


# ---- run -----------------------------------------------------------------


def _preload_env(env: Dict[str, str], libpath: str) -> None:
    """Put libpath first in LD_PRELOAD and make CPython use malloc."""
    if any(sep in libpath for sep in _PRELOAD_SEPARATORS):
        raise CliError(
            "cannot preload %r: LD_PRELOAD splits paths on ':' and ' '; install "
            "meshalloc under a path without them" % libpath
        )
    existing = env.get("LD_PRELOAD", "")
    entries = [e for e in existing.replace(" ", ":").split(":") if e]
    entries = [e for e in entries if os.path.abspath(e) != libpath]
    env["LD_PRELOAD"] = ":".join([libpath] + entries)
    # pymalloc takes its arenas with mmap, so small Python objects only reach
    # malloc (and libmesh) under PYTHONMALLOC=malloc. malloc_debug also
    # ends in malloc, so keep it if the user asked for it.
    if env.get("PYTHONMALLOC") != "malloc_debug":
        env["PYTHONMALLOC"] = "malloc"


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    command: List[str] = list(args.command)
    if not command:
        raise CliError("run: missing command (usage: run [--preload] -- CMD [ARGS...])",
                       EXIT_USAGE)
    env = dict(os.environ)
    if args.preload:
        _preload_env(env, _require_libmesh())
    else:
        # meshalloc-autoinstall.pth installs meshalloc in every Python process
        # (CMD and its children) that sees MESHALLOC=1 and has this package.
        env["MESHALLOC"] = "1"
    out.flush()
    sys.stderr.flush()
    if args.record is not None:
        from . import _record
        if args.interval <= 0:
            raise CliError("run: --interval must be positive", EXIT_USAGE)
        return _record.record(command, env, args.record, args.interval, sys.stderr)
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        raise CliError("run: %s: command not found" % command[0], EXIT_NOT_FOUND)
    except PermissionError as exc:
        raise CliError("run: %s: %s" % (command[0], exc.strerror), EXIT_CANNOT_EXECUTE)
    except OSError as exc:
        raise CliError("run: %s: %s" % (command[0], exc.strerror), EXIT_CANNOT_EXECUTE)
    return EXIT_FAILURE  # not reached: exec replaced the process


# ---- parser --------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m meshalloc",
        description="meshalloc: the Mesh compacting allocator for CPython and C.",
    )
    parser.add_argument("--version", action="version",
                        version="meshalloc %s" % meshalloc.__version__)
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")

    p = sub.add_parser("libpath", help="print the absolute path of libmesh.so",
                       description="Print the absolute path of the package's "
                                   "libmesh.so (for LD_PRELOAD).")
    p.set_defaults(func=cmd_libpath)

    p = sub.add_parser("info", help="versions, paths and options",
                       description="Print versions, the libmesh path, whether "
                                   "libmesh is preloaded, whether meshing is "
                                   "available, and every option with its value "
                                   "and documentation.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("stats", help="print the allocator's counters",
                       description="Print the counters of the heap this process "
                                   "uses. Under LD_PRELOAD that is the preloaded "
                                   "libmesh, i.e. the whole process.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--docs", action="store_true", help="add each counter's doc")
    p.add_argument("--summary", action="store_true",
                   help="print the MALLOCSTATS summary instead")
    p.add_argument("--pid", type=int, metavar="PID",
                   help="the counters of another running process that uses meshalloc (either mode), "
                        "read from the page it shares (option stats_page), without stopping it")
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="with --pid: a line every SECONDS: PSS, the arena memfd's real size, committed "
                        "bytes, bytes in use (as the process last published them), meshes and MiB given back "
                        "per second, passes and the longest pause of the interval (wall/CPU ms), kernel "
                        "mappings (Ctrl-C ends it)")
    p.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)  # --watch lines, for tests
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser(
        "run",
        help="run a command with meshalloc turned on",
        usage="python -m meshalloc run [-h] [--preload] [--record FILE [--interval S]] -- CMD [ARGS...]",
        description="Run CMD with meshalloc. With --preload: LD_PRELOAD=<libmesh.so> "
                    "(prepended to any existing value) and PYTHONMALLOC=malloc, "
                    "so the whole process, C extensions included, allocates "
                    "from meshalloc. Without it: sets MESHALLOC=1 for CMD and its "
                    "children, so every Python interpreter among them that can "
                    "import meshalloc installs it at start-up (the "
                    "meshalloc-autoinstall.pth hook: PyMem MEM and OBJ domains, "
                    "MESHALLOC_DOMAINS=raw,mem,obj adds RAW; C extensions' own "
                    "malloc calls are not covered).",
    )
    p.add_argument("--preload", action="store_true",
                   help="use libmesh.so as the process malloc (LD_PRELOAD)")
    p.add_argument("--record", metavar="FILE",
                   help="run CMD as a child and sample its PSS, arena memfd size, counters and meshing pauses "
                        "every --interval seconds into FILE (JSON lines) until it exits; "
                        "'python -m meshalloc plot FILE' draws them")
    p.add_argument("--interval", type=float, default=0.5, metavar="SECONDS",
                   help="with --record: seconds between samples (default 0.5)")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD [ARGS...]",
                   help="the command to run (put it after --)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("plot", help="draw recordings made with run --record",
                       description="Draw one or more recordings made with 'run --record' into a PNG: "
                                   "PSS, the arena memfd's blocks and committed bytes over time, and below "
                                   "them each meshing pause at its end, as high as the MiB it gave back. "
                                   "Needs matplotlib (pip install 'meshalloc[plot]').")
    p.add_argument("files", nargs="+", metavar="FILE", help="a recording (JSON lines)")
    p.add_argument("-o", "--output", metavar="PNG", help="the image to write (default: FILE with .png)")
    p.add_argument("--label", action="append", metavar="NAME",
                   help="a legend name per FILE, in order (default: the file names)")
    p.add_argument("--title", help="the plot's title")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("demo", help="fragmentation demo: pymalloc vs meshalloc",
                       description="Run a built-in fragmentation workload (1 M small "
                                   "objects, 2 %% kept) in child interpreters under "
                                   "CPython's default allocator and under meshalloc "
                                   "(MESHALLOC=1), and print PSS at the peak, after "
                                   "the frees and after compaction, with the time taken.")
    p.add_argument("--count", type=int, default=1_000_000, help="objects to allocate")
    p.add_argument("--keep", type=float, default=2.0, help="percent kept")
    p.add_argument("--plot", metavar="PNG",
                   help="also record both runs (as run --record does) and draw them into PNG (needs matplotlib)")
    p.set_defaults(func=cmd_demo)
    return parser


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from meshalloc import demo
    return demo.run(args.count, args.keep, out, plot=args.plot)


def cmd_plot(args: argparse.Namespace, out: TextIO) -> int:
    from . import _record
    if args.label and len(args.label) != len(args.files):
        raise CliError("plot: give one --label per FILE (%d files, %d labels)" % (len(args.files), len(args.label)),
                       EXIT_USAGE)
    output = args.output or os.path.splitext(args.files[0])[0] + ".png"
    w, h = _record.plot(args.files, output, args.label, args.title)
    out.write("wrote %s (%dx%d)\n" % (output, w, h))
    return EXIT_OK


def _split_command(argv: List[str]) -> "tuple[List[str], Optional[List[str]]]":
    """Split argv at the first ``--``: (meshalloc's arguments, CMD or None).

    argparse's handling of ``--`` with a remainder argument differs between
    Python versions, so ``--`` is taken out before parsing.
    """
    if "--" in argv:
        at = argv.index("--")
        return argv[:at], argv[at + 1:]
    return argv, None


def main(argv: Optional[Sequence[str]] = None, out: Optional[TextIO] = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    stream = sys.stdout if out is None else out
    parser = build_parser()
    head, tail = _split_command(args_list)
    args = parser.parse_args(head)
    if args.cmd is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if tail is not None:
        if args.cmd != "run":
            parser.error("unexpected '--' for command %r" % args.cmd)
        # "run CMD -- X": the "--" belongs to CMD.
        args.command = list(args.command) + ["--"] + tail if args.command else tail
    try:
        return int(args.func(args, stream))
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


if __name__ == "__main__":
    sys.exit(main())
