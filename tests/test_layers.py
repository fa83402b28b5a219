"""The core's layer rule holds: a file calls only lower layers, except for
the upward calls docs/design.md lists with their reasons.

Both tables are read from docs/design.md ("Layers, lowest first" and the
table of upward calls), so the rule and its exceptions are written once.
The calls are found in the sources with a small C scanner (comments and
strings removed; a definition is a name followed by a parameter list and a
body): crude, but the core's style (one function per definition, cross-file
names starting with ``mesh_`` or ``_mesh_``) makes it exact enough, and the
test checks that it finds every file's definitions.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "csrc" / "core"
DESIGN = ROOT / "docs" / "design.md"

# inline helpers of internal.h that stand for a call into another file
THROUGH = {"mesh_ensure_init": "_mesh_init_slow", "mesh_mesher_poll": "_mesh_mesher_poll_slow",
           "mesh_mesher_poll_free": "_mesh_mesher_poll_slow"}


def strip_c(src: str) -> str:
    src = re.sub(r"/\*.*?\*/", " ", src, flags=re.S)
    src = re.sub(r"//[^\n]*", " ", src)
    src = re.sub(r"'(\\.|[^'\\])'", "0", src)
    return re.sub(r'"(\\.|[^"\\])*"', '""', src)


def table_rows(text: str, header: str) -> List[List[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def layers() -> Dict[str, int]:
    """{core file: layer number}, from docs/design.md's layer table."""
    rows = table_rows(DESIGN.read_text(), "| layer | file | concept |")
    out: Dict[str, int] = {}
    level = -1
    for name, files, _concept in rows:
        if name:
            level += 1
        for f in re.findall(r"`([\w./]+)`", files):
            if not f.startswith("faces/"):
                out[f] = level
    return out


def allowed() -> Set[Tuple[str, str]]:
    """{(caller file or '*', callee function)}, from the table of upward calls."""
    out = set()
    for caller, callee, _why in table_rows(DESIGN.read_text(), "| caller | callee | why |"):
        files = re.findall(r"`([^`]+)`", caller)
        for fn in re.findall(r"`(_?mesh_\w+)`", callee.split("(")[0]):
            for f in files:
                out.add((f, fn))
    return out


DEF = re.compile(r"^[A-Za-z_][\w \t\*]*?\b(_?mesh_\w+)\s*\([^;{)]*(?:\([^)]*\)[^;{)]*)*\)\s*\{", re.M)
CALL = re.compile(r"\b(_?mesh_\w+)\s*\(")


def definitions(files: List[Path]) -> Dict[str, str]:
    defs: Dict[str, str] = {}
    for f in files:
        for m in DEF.finditer(strip_c(f.read_text())):
            defs.setdefault(m.group(1), f.name)
    return defs


def upward_calls() -> Set[Tuple[str, str, str]]:
    """{(caller file, callee function, callee file)} going up a layer."""
    level = layers()
    files = sorted(p for p in CORE.iterdir() if p.suffix in (".c", ".h"))
    defs = definitions(files)
    found = set()
    for f in files:
        if f.name in ("internal.h", "types.h", "atomic.h"):  # declarations and support inlines
            continue
        for m in CALL.finditer(strip_c(f.read_text())):
            name = THROUGH.get(m.group(1), m.group(1))
            target = defs.get(name)
            if target and target != f.name and level[target] > level[f.name]:
                found.add((f.name, name, target))
    return found


def test_every_core_file_has_a_documented_layer():
    level = layers()
    files = {p.name for p in CORE.iterdir() if p.suffix in (".c", ".h")}
    missing = files - set(level) - {"types.h"}
    assert not missing, "files with no layer in docs/design.md: %s" % sorted(missing)
    assert level["os.c"] == 0 and level["init.c"] > level["mesh.c"] > level["arena.c"] > level["stats.c"]


def test_the_scanner_finds_the_definitions_it_needs():
    defs = definitions(sorted(CORE.glob("*.c")))
    for name, where in {"_mesh_lock": "global_heap.c", "_mesh_maybe_mesh": "trigger.c",
                        "_mesh_init_slow": "init.c", "mesh_compact": "pass.c", "_mesh_arena_punch": "memfd.c",
                        "_mesh_mesh_pair": "mesh.c", "_mesh_mesh_class": "mesher.c",
                        "_mesh_arena_alloc_span": "arena.c", "_mesh_span_record_new": "span.c",
                        "_mesh_os_now_ns": "os.c", "_mesh_heap_class_stats": "thread_heap.c"}.items():
        assert defs.get(name) == where, (name, defs.get(name))


def test_no_core_file_calls_up_a_layer_unless_documented():
    ok = allowed()
    bad = sorted((caller, fn, target) for caller, fn, target in upward_calls()
                 if (caller, fn) not in ok and ("*", fn) not in ok)
    assert not bad, ("upward calls not listed in docs/design.md (caller, function, its file): %s" % bad)


def test_every_documented_upward_call_still_exists():
    found = {(caller, fn) for caller, fn, _ in upward_calls()}
    callers_of = {fn for _, fn in found}
    stale = sorted((c, fn) for c, fn in allowed() if (c, fn) not in found and not (c == "*" and fn in callers_of))
    assert not stale, "docs/design.md lists upward calls the code no longer makes: %s" % stale


FACES = ROOT / "csrc" / "faces"


def test_faces_see_the_core_only_through_mesh_h_and_face_h():
    """A face includes no core header but mesh.h and core/face.h (a face's
    own headers aside) and names no internal (_mesh_) symbol: face.h gives
    it what it needs from inside, so that window is written down once."""
    files = sorted(p for p in FACES.iterdir() if p.suffix in (".c", ".h"))
    assert {"libmesh.c", "pymodule.c", "pyhooks.c"} <= {p.name for p in files}
    for f in files:
        text = f.read_text()
        local = re.findall(r'#include\s+"([^"]+)"', text)
        core = [inc for inc in local if not (FACES / inc).is_file()]
        assert set(core) <= {"../mesh.h", "../core/face.h"}, (f.name, core)
        internal = sorted(set(re.findall(r"\b_mesh_\w+", strip_c(text))))
        assert not internal, (f.name, internal)
