"""Reproduction: RAW blocks freed by a daemon thread at exit (docs/python.md,
"Domains: MEM and OBJ by default, RAW on request").

CPython swaps the RAW domain back to libc malloc for short windows during
finalization (_PyMem_SetDefaultAllocator in the import, path-config and
runtime teardown). A daemon thread that frees a meshalloc RAW block inside
such a window hands it to libc free(), and glibc aborts ("free(): invalid
pointer"). This script starts daemon threads that hammer PyMem_RawMalloc /
PyMem_RawFree through ctypes (ctypes.CDLL releases the GIL around each call,
so the calls run while the main thread finalizes) and lets the interpreter
exit under them, N times, each in a fresh process.

Two ways to hammer (``--mode``):

* ``c`` (the default when a C compiler is found): each daemon thread makes
  one ctypes call into ``raw_hammer.c`` (built on the fly), a C loop of
  ``PyMem_RawMalloc``/``PyMem_RawFree`` that never returns, so the thread
  keeps allocating and freeing while the main thread finalizes, exactly
  like a C library's worker thread would;
* ``ctypes``: each call goes through ctypes from Python code. Between
  calls the thread needs the GIL, which a finalizing interpreter never
  gives back, so this barely reaches the windows (0 crashes in hundreds of
  runs on 3.9-3.13 here); it is kept as the pure-Python variant.

    python tests/py/raw_at_exit.py --runs 200                  # RAW installed
    python tests/py/raw_at_exit.py --runs 200 --domains mem,obj  # the default

Prints one line per failed run and a summary ``raw_at_exit: F/N runs failed
(...)``; exits 0 when every run exited cleanly, 1 otherwise. With
``--domains none`` meshalloc is not installed at all (the control).
The package must be importable by the interpreter running the script
(``PYTHONPATH`` is passed on to the runs).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

CHILD_CODE = r"""
import ctypes, os, sys, threading, time
domains = sys.argv[1]
threads = int(sys.argv[2])
hammer_so = sys.argv[3]
if domains != "none":
    import meshalloc
    meshalloc.install(domains=domains)
    assert meshalloc.is_installed(), "not installed"
if hammer_so:
    c_loop = ctypes.CDLL(hammer_so).raw_hammer
    c_loop.argtypes = [ctypes.c_uint]
    for k in range(threads):
        threading.Thread(target=c_loop, args=(k + 1,), daemon=True).start()
    time.sleep(0.05)
    sys.exit(0)
lib = ctypes.CDLL(None)  # the interpreter's own PyMem_Raw* (global symbols)
raw_malloc = lib.PyMem_RawMalloc
raw_malloc.restype = ctypes.c_void_p
raw_malloc.argtypes = [ctypes.c_size_t]
raw_free = lib.PyMem_RawFree
raw_free.restype = None
raw_free.argtypes = [ctypes.c_void_p]

def hammer(seed):
    # A ring of live blocks, so frees hit blocks allocated long before (and
    # possibly in another allocator state than) the free.
    ring = [None] * 64
    i = seed
    while True:
        i = (i * 1103515245 + 12345) & 0x7fffffff
        slot = i & 63
        if ring[slot] is not None:
            raw_free(ring[slot])
        ring[slot] = raw_malloc(16 + (i >> 8) % 2000)

for k in range(threads):
    threading.Thread(target=hammer, args=(k + 1,), daemon=True).start()
time.sleep(0.05)
# Returning from the main module now: finalization runs under the hammering.
"""


HERE = os.path.dirname(os.path.abspath(__file__))


def build_hammer(outdir: str) -> str:
    """Compile raw_hammer.c into outdir; returns the .so path."""
    import shutil

    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("no C compiler (set CC, or use --mode ctypes)")
    out = os.path.join(outdir, "raw_hammer.so")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", out, os.path.join(HERE, "raw_hammer.c")],
                   check=True)
    return out


def run_once(python: str, domains: str, threads: int, timeout: float,
             hammer_so: str = "") -> "tuple[int, str]":
    env = dict(os.environ)
    try:
        p = subprocess.run([python, "-c", CHILD_CODE, domains, str(threads), hammer_so],
                           capture_output=True, text=True, timeout=timeout, env=env,
                           errors="replace")
    except subprocess.TimeoutExpired:
        return -999, "timeout after %.0fs" % timeout
    return p.returncode, (p.stderr or "").strip()


def describe(rc: int) -> str:
    if rc == -999:
        return "timeout"
    if rc < 0:
        import signal
        try:
            return "signal %s" % signal.Signals(-rc).name
        except ValueError:
            return "signal %d" % -rc
    return "exit %d" % rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20, help="fresh processes to run (default 20)")
    ap.add_argument("--domains", default="raw,mem,obj",
                    help="domains to install (default raw,mem,obj; 'none' = not installed)")
    ap.add_argument("--threads", type=int, default=4, help="hammering daemon threads per run")
    ap.add_argument("--python", default=sys.executable, help="interpreter to test")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per run")
    ap.add_argument("--quiet", action="store_true", help="only the summary line")
    ap.add_argument("--mode", choices=("auto", "c", "ctypes"), default="auto",
                    help="c: a C loop per thread (default when a compiler exists); "
                         "ctypes: one ctypes call per operation")
    args = ap.parse_args(argv)

    import shutil
    import tempfile

    mode = args.mode
    if mode == "auto":
        mode = "c" if (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")) else "ctypes"
    tmp = tempfile.mkdtemp(prefix="raw_at_exit.")
    try:
        hammer_so = build_hammer(tmp) if mode == "c" else ""
        return _runs(args, mode, hammer_so)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _runs(args, mode: str, hammer_so: str) -> int:
    failures = 0
    kinds: dict = {}
    start = time.monotonic()
    for i in range(args.runs):
        rc, err = run_once(args.python, args.domains, args.threads, args.timeout, hammer_so)
        if rc != 0:
            failures += 1
            what = describe(rc)
            kinds[what] = kinds.get(what, 0) + 1
            if not args.quiet:
                last = err.splitlines()[-1] if err else ""
                print("run %d: %s %s" % (i + 1, what, last[:200]), flush=True)
    detail = ", ".join("%s: %d" % kv for kv in sorted(kinds.items())) or "all clean"
    print("raw_at_exit: %d/%d runs failed (%s; domains=%s, mode=%s, python %s, %.1fs)"
          % (failures, args.runs, detail, args.domains, mode, args.python,
             time.monotonic() - start), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
