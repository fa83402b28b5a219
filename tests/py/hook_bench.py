"""The cost of meshalloc's PyMem hooks, side by side (docs/python.md).

    python tests/py/hook_bench.py [--rounds N] LABEL=PYTHON [LABEL=PYTHON ...]

Each LABEL=PYTHON is an interpreter that can import meshalloc (for example
two venvs made by tests/py/build_ext.py from two versions of the face).
A label ending in ``:off`` runs that interpreter without meshalloc
(pymalloc), for reference. Every round starts one fresh process per
interpreter, in rotating order, with ``MESHALLOC=1
MESHALLOC_DOMAINS=raw,mem,obj``; each process measures

* ``obj``, ``mem``, ``raw``: ns per allocation+free pair, 64 blocks of
  16..128 bytes allocated then freed, through ``PyObject_Malloc``,
  ``PyMem_Malloc``, ``PyMem_RawMalloc`` (``hook_bench.c``, a C loop called
  once through ctypes: the hook path without the interpreter around it);
* ``realloc``: ns per malloc+realloc+free through the OBJ domain;
* ``py``: ns per item of ``[str(i) + "x" for i in range(1000)]`` followed
  by dropping the list (the interpreter's own allocation pattern);

taking the best of 5 repeats. The summary gives the median and the minimum
over rounds for each interpreter and the ratio to the first one.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import ctypes, json, sys, time
so, want = sys.argv[1], sys.argv[2]
if want == "on":
    import meshalloc
    assert meshalloc.installed_domains() == ("raw", "mem", "obj"), meshalloc.installed_domains()
lib = ctypes.PyDLL(so)
ROUNDS = 20000
out = {}
for name in ("obj", "mem", "raw", "realloc"):
    fn = getattr(lib, "bench_obj_realloc" if name == "realloc" else "bench_" + name)
    fn.restype = ctypes.c_uint64
    fn.argtypes = [ctypes.c_long]
    fn(2000)
    out[name] = min(fn(ROUNDS) for _ in range(5)) / (ROUNDS * 64.0)
def work():
    t0 = time.perf_counter_ns()
    for _ in range(200):
        x = [str(i) + "x" for i in range(1000)]
        del x
    return (time.perf_counter_ns() - t0) / 200000.0
work()
out["py"] = min(work() for _ in range(5))
print(json.dumps(out))
"""

FIELDS = ("obj", "mem", "raw", "realloc", "py")


def build(workdir: Path) -> Path:
    so = workdir / "hook_bench.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(so), str(HERE / "hook_bench.c")],
                   check=True, timeout=120)
    return so


def run_one(python: str, so: Path, on: bool) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MESH", "PYTHONMALLOC", "LD_PRELOAD"))}
    if on:
        env.update(MESHALLOC="1", MESHALLOC_DOMAINS="raw,mem,obj")
    p = subprocess.run([python, "-c", CHILD, str(so), "on" if on else "off"], env=env,
                       capture_output=True, text=True, timeout=300, cwd=tempfile.gettempdir())
    if p.returncode != 0:
        raise SystemExit("%s failed:\n%s" % (python, p.stderr[-3000:]))
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("interpreters", nargs="+", metavar="LABEL=PYTHON")
    args = ap.parse_args(argv)
    interps = []
    for item in args.interpreters:
        label, _, python = item.partition("=")
        interps.append((label, python, not label.endswith(":off")))
    results: dict = {label: {f: [] for f in FIELDS} for label, _, _ in interps}
    with tempfile.TemporaryDirectory() as tmp:
        so = build(Path(tmp))
        for r in range(args.rounds):
            order = interps[r % len(interps):] + interps[:r % len(interps)]
            for label, python, on in order:
                got = run_one(python, so, on)
                for f in FIELDS:
                    results[label][f].append(got[f])
            print("round %d/%d done" % (r + 1, args.rounds), file=sys.stderr, flush=True)
    first = interps[0][0]
    for what, agg in (("median", statistics.median), ("min", min)):
        table = {label: {f: agg(v) for f, v in res.items()} for label, res in results.items()}
        print("%s ns over %d rounds (ratio to %s)" % (what, args.rounds, first))
        print("%-16s" % "" + "".join("%18s" % f for f in FIELDS))
        for label, row in table.items():
            cells = "".join("%10.2f (%5.3f)" % (row[f], row[f] / table[first][f]) for f in FIELDS)
            print("%-16s%s" % (label, cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
