"""The C sources stay readable in pieces: no file of csrc/ over 600 lines and
no function over 80 (docs/design.md, "Concept → file"). The Python package
stays small as a whole: meshalloc/*.py together under MAX_PACKAGE_LINES, in
lines of at most 100 characters (so the count cannot be met by packing
lines); what needs explaining goes to docs/python.md.

Functions are found with a small scanner: comments, strings, character
constants and preprocessor lines are blanked (newlines kept, so line
numbers stay true), and a function is a brace at file level that follows a
parameter list; it spans from the line of its name to its closing brace.
The core's style (one definition per function, no K&R definitions, no
braces in macros at file level) makes that exact enough, and the test
checks the scanner against the definitions tests/test_layers.py finds.

Run as a script to list the functions over a limit:
``python tests/test_source_size.py [LIMIT]``.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import List, Tuple

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
PACKAGE = ROOT / "meshalloc"
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
MAX_PACKAGE_LINES = 1500
MAX_PYTHON_LINE = 100

TOKEN = re.compile(r"""/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|^[ \t]*\#(?:[^\n]*\\\n)*[^\n]*""",
                   re.S | re.M)


def blank(src: str) -> str:
    return TOKEN.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), src)


def _matching(s: str, i: int, step: int, opening: str, closing: str) -> int:
    """Index of the bracket matching the one at i, scanning by step."""
    depth = 0
    while True:
        if s[i] == opening:
            depth += 1
        elif s[i] == closing:
            depth -= 1
            if depth == 0:
                return i
        i += step


def functions(src: str) -> List[Tuple[str, int, int]]:
    """[(name, first line, lines)] of the function definitions in src."""
    s = blank(src)
    out = []
    depth, i = 0, 0
    while i < len(s):
        c = s[i]
        if c == "{" and depth == 0:
            j = i - 1
            while j >= 0 and s[j].isspace():
                j -= 1
            if j >= 0 and s[j] == ")":
                name = re.search(r"(\w+)\s*$", s[:_matching(s, j, -1, ")", "(")])
                end = _matching(s, i, 1, "{", "}")
                first = s.count("\n", 0, name.start(1)) + 1
                out.append((name.group(1), first, s.count("\n", 0, end) + 2 - first))
                i = end + 1
                continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        i += 1
    return out


def sources() -> List[Path]:
    return sorted(p for p in CSRC.rglob("*") if p.suffix in (".c", ".h") and "build" not in p.parts)


def long_functions(limit: int) -> List[Tuple[int, str, str]]:
    """[(lines, file:line, name)] of every function over limit lines."""
    out = []
    for f in sources():
        for name, line, n in functions(f.read_text()):
            if n > limit:
                out.append((n, "%s:%d" % (f.relative_to(CSRC), line), name))
    return sorted(out, reverse=True)


def test_the_scanner_finds_every_core_definition_with_its_length():
    from test_layers import CORE, definitions
    found = {}
    for f in sorted(CORE.glob("*.c")):
        for name, line, n in functions(f.read_text()):
            found.setdefault(name, (f.name, n))
    for name, where in definitions(sorted(CORE.glob("*.c"))).items():
        assert name in found and found[name][0] == where, (name, where, found.get(name))
    # one-line functions count one line; a known multi-line one, its lines
    assert found["_mesh_arena_top"][1] == 1
    text = (CORE / "span.c").read_text().splitlines()
    start = next(i for i, l in enumerate(text) if l.startswith("void _mesh_span_record_free("))
    assert found["_mesh_span_record_free"][1] == text.index("}", start) - start + 1


def test_no_c_source_file_is_over_600_lines():
    big = sorted((len(f.read_text().splitlines()), str(f.relative_to(CSRC))) for f in sources())
    over = [b for b in big if b[0] > MAX_FILE_LINES]
    assert not over, "files of csrc/ over %d lines: %s" % (MAX_FILE_LINES, over)


def test_no_c_function_is_over_80_lines():
    over = long_functions(MAX_FUNCTION_LINES)
    assert not over, "functions over %d lines (split them into named steps): %s" % (MAX_FUNCTION_LINES, over)



def package_lines():
    """{file name: its lines} of meshalloc/*.py."""
    return {p.name: p.read_text().splitlines() for p in sorted(PACKAGE.glob("*.py"))}


def test_the_python_package_is_under_its_line_budget():
    sizes = {name: len(lines) for name, lines in package_lines().items()}
    assert sum(sizes.values()) < MAX_PACKAGE_LINES, \
        "meshalloc/*.py: %d lines, the budget is %d: %s" % (sum(sizes.values()), MAX_PACKAGE_LINES, sizes)


def test_no_python_package_line_is_over_100_characters():
    long = ["%s:%d" % (name, i + 1) for name, lines in package_lines().items()
            for i, line in enumerate(lines) if len(line) > MAX_PYTHON_LINE]
    assert not long, "lines of meshalloc/ over %d characters: %s" % (MAX_PYTHON_LINE, long)


if __name__ == "__main__":
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else MAX_FUNCTION_LINES
    for n, where, name in long_functions(limit):
        print("%5d  %-28s %s" % (n, where, name))
