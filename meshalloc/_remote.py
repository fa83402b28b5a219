"""Reading another process's meshalloc counters (``stats --pid``) and PSS.

The counters page (memfd ``meshalloc-stats``), its names and the pass log: docs/python.md.
"""

import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional

MAGIC = b"MESHSTAT"
PAGE = 4096
MIB = 1048576.0
PASS_KINDS = ("triggered", "thread", "compact")


class Failure(Exception):
    """What the CLI reports as ``meshalloc: <message>``, exiting with ``status``
    (here 2: no such process or no access; 1: it shares no counters)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _fd_targets(pid: int) -> "Dict[str, str]":
    """{kind: /proc/PID/fd/N} for the process's memfds of meshalloc (stats, arena)."""
    base = "/proc/%d/fd" % pid
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        raise Failure("no process %d" % pid, 2) from None
    except PermissionError:
        raise Failure("cannot look into process %d: it belongs to another user" % pid, 2) from None
    found: "Dict[str, str]" = {}
    for n in names:
        try:
            target = os.readlink("%s/%s" % (base, n))
        except OSError:
            continue
        for kind in ("meshalloc-stats", "meshalloc-arena"):
            if target.startswith("/memfd:" + kind):
                found.setdefault(kind, "%s/%s" % (base, n))
    return found


def pss_bytes(pid: "int | str" = "self") -> "Optional[int]":
    """A process's PSS in bytes, None if unreadable (never RSS: a meshed page is mapped twice)."""
    try:
        with open("/proc/%s/smaps_rollup" % pid, "rb") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(b"Pss:"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pass_log(data: bytes, length: int, words: int) -> "List[Dict[str, object]]":
    """The pass log's pauses, oldest first, less those being written (an entry's
    number is its first and last word); ``end`` is ``time.monotonic()`` seconds."""
    if words < 8 or len(data) < length * words * 8:
        return []
    entries = [{"number": e[0], "end": e[1] / 1e9, "wall": e[2] / 1e9, "cpu": e[3] / 1e9,
                "meshes": e[4], "pages": e[5],
                "kind": PASS_KINDS[e[6]] if e[6] < len(PASS_KINDS) else str(e[6])}
               for e in struct.iter_unpack("<%dQ" % words, data[:length * words * 8])
               if e[0] != 0 and e[0] == e[words - 1]]
    return sorted(entries, key=lambda x: x["number"])


def read(pid: int) -> "Dict[str, Any]":
    """{"pid", "counters": {name: value}, "pss_bytes", "arena_memfd_bytes", "passes"}."""
    fds = _fd_targets(pid)
    if "meshalloc-stats" not in fds:
        why = "it does not use meshalloc"
        if "meshalloc-arena" in fds:
            why = ("it uses meshalloc, but shares no counters (started with MESH_STATS_PAGE=0, "
                   "or it closed the descriptor)")
        raise Failure("process %d: %s" % (pid, why), 1)
    try:
        with open(fds["meshalloc-stats"], "rb") as f:
            data = f.read(2 * PAGE)
            ours = len(data) == 2 * PAGE and data[PAGE:PAGE + 8] == MAGIC
            version, count, width = struct.unpack_from("<III", data, PAGE + 8) if ours else (0,) * 3
            log = b"", 0, 0
            if version >= 2:
                offset, length, words = struct.unpack_from("<III", data, PAGE + 20)
                f.seek(offset)
                log = f.read(length * words * 8), length, words
    except PermissionError:
        raise Failure("cannot read process %d's counters: it belongs to another user" % pid,
                      2) from None
    except OSError as exc:
        raise Failure("process %d: %s" % (pid, exc), 2) from None
    if not ours:
        raise Failure("process %d: its counters page is not one this meshalloc reads" % pid, 1)
    if version not in (1, 2) or width != 8 or count > PAGE // 8:
        raise Failure("process %d: counters page version %d (this meshalloc reads 1 and 2)"
                      % (pid, version), 1)
    names = data[PAGE + (32 if version >= 2 else 24):2 * PAGE].split(b"\0")[:count]
    values = struct.unpack_from("<%dQ" % count, data, 0)
    out = {"pid": pid, "counters": {n.decode(): v for n, v in zip(names, values)},
           "pss_bytes": pss_bytes(pid), "passes": _pass_log(*log)}
    if "meshalloc-arena" in fds:
        try:
            out["arena_memfd_bytes"] = os.stat(fds["meshalloc-arena"]).st_blocks * 512
        except OSError:
            out["arena_memfd_bytes"] = None
    return out
