"""startup: ``python -c pass`` under the run's allocator configuration.

The start-up switch (docs/python.md, "Start-up switch") is a one-line .pth
hook that imports nothing when MESHALLOC is unset; with MESHALLOC=1 it
imports meshalloc and installs the hooks before user code. So this benchmark
under the pymalloc configuration is "switch off" and under the meshalloc
configuration "switch on"; their ratio is the switch's cost. Under preload it
is the cost of loading libmesh.so as the process malloc.

The command runs in the worker's environment, which carries the
configuration's variables (the worker checked that they are in effect).

Timed by pyperf's bench_command: the wall time of spawning the interpreter
until it exits.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

COMMAND = ["-c", "pass"]

if __name__ == "__main__":
    ctx = benchlib.make_runner("command", __doc__)
    ctx.runner.bench_command("startup", [sys.executable] + COMMAND)
