"""What meshalloc-autoinstall.pth costs at interpreter start (docs/python.md).

    python tests/py/startup_cost.py [--runs N] [PYTHON]

PYTHON (default: this interpreter) must have meshalloc installed with its
start-up ``.pth`` in site-packages; give an absolute path (a venv's
``bin/python``). Runs ``PYTHON -c pass`` N times (default 200) in each of
three configurations, interleaved (one run of each per round, the order
rotating every round):

* ``no-pth``:  the ``.pth`` renamed away (the baseline);
* ``off``:     the ``.pth`` present, ``MESHALLOC`` unset (what everybody pays);
* ``on``:      the ``.pth`` present and ``MESHALLOC=1`` (installs meshalloc);

and prints the median, the 10th and 90th percentile wall time of each, the
median CPU time (user + system, from ``getrusage``: less disturbed by other
load than wall time), and the medians' differences to ``no-pth``. The ``.pth`` is renamed back when the
script ends, also on an error or Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

PTH = "meshalloc-autoinstall.pth"


def site_packages(python: str) -> str:
    code = "import meshalloc, os; print(os.path.dirname(os.path.dirname(meshalloc.__file__)))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True,
                          cwd="/", timeout=60).stdout.strip()


def one_run(python: str, env: dict) -> "tuple[float, float]":
    """(wall seconds, CPU seconds of the child: user + system)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([python, "-c", "pass"], env=env, check=True, cwd="/",
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def pct(values: list, q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("python", nargs="?", default=sys.executable)
    args = ap.parse_args(argv)
    python = os.path.abspath(args.python)
    site = site_packages(python)
    pth, hidden = os.path.join(site, PTH), os.path.join(site, PTH + ".measuring")
    if not os.path.isfile(pth):
        raise SystemExit("%s is missing: install meshalloc with pip first" % pth)
    base_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("MESH", "PYTHON")) and k not in ("LD_PRELOAD",)}
    configs = {
        "no-pth": (False, base_env),
        "off": (True, base_env),
        "on": (True, dict(base_env, MESHALLOC="1")),
    }
    times: dict = {name: [] for name in configs}
    cpu: dict = {name: [] for name in configs}
    names = list(configs)
    try:
        for name in names:  # warm the page cache
            one_run(python, configs[name][1])
        for r in range(args.runs):
            order = names[r % 3:] + names[:r % 3]
            for name in order:
                with_pth, env = configs[name]
                if with_pth and not os.path.exists(pth):
                    os.rename(hidden, pth)
                elif not with_pth and os.path.exists(pth):
                    os.rename(pth, hidden)
                wall, used = one_run(python, env)
                times[name].append(wall)
                cpu[name].append(used)
    finally:
        if os.path.exists(hidden):
            os.rename(hidden, pth)
    print("%s, %d runs each of `-c pass`, interleaved (ms)" % (python, args.runs))
    print("%-8s %8s %8s %8s %10s %10s %10s" % ("", "median", "p10", "p90", "vs no-pth",
                                               "CPU med", "vs no-pth"))
    base = statistics.median(times["no-pth"])
    cbase = statistics.median(cpu["no-pth"])
    for name in names:
        med, cmed = statistics.median(times[name]), statistics.median(cpu[name])
        print("%-8s %8.2f %8.2f %8.2f %+10.2f %10.2f %+10.2f" % (
            name, med * 1e3, pct(times[name], 0.1) * 1e3, pct(times[name], 0.9) * 1e3,
            (med - base) * 1e3, cmed * 1e3, (cmed - cbase) * 1e3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
