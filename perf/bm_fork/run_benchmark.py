"""fork: os.fork() of an interpreter holding a HEAP_MB heap of Python objects.

Each worker builds a deterministic heap of mixed objects (small strs,
tuples, dicts, lists of ints, bytes up to 4 KiB) until its PSS has grown by
HEAP_MB, then times fork() + the child's immediate os._exit(0) + waitpid().
meshalloc's object memory is a MAP_SHARED memfd, so a child must copy the
live heap into a memfd of its own before it runs any code, and fork()
returns in the parent only after that copy; pymalloc's and glibc's heaps are
copy-on-write and cost the kernel only page tables. (The original Mesh took
206 ms vs pymalloc's 9 ms for 200 MB: docs/design.md, "fork".)

Timed: fork through waitpid, one fork per value (the heap is built outside
the timed region, once per worker).
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

HEAP_MB = 200

_state = {}


def build_heap(target_bytes):
    start = benchlib.pss_bytes()
    heap = []
    i = 0
    while True:
        chunk = []
        for j in range(2000):
            k = (i + j) % 5
            if k == 0:
                chunk.append("str-%d" % (i + j))
            elif k == 1:
                chunk.append((i, j, "t%d" % j))
            elif k == 2:
                chunk.append({"a": i, "b": j, "c": str(j)})
            elif k == 3:
                chunk.append([i * 1000 + j] * (1 + j % 8))
            else:
                chunk.append(b"x" * (64 + (i * 37 + j * 101) % 4000))
        heap.append(chunk)
        i += 2000
        if benchlib.pss_bytes() - start >= target_bytes:
            return heap


def bench(loops):
    if "heap" not in _state:
        _state["heap"] = build_heap(benchlib.scaled(HEAP_MB, 1) * 1024 * 1024)
    total = 0.0
    for _ in range(loops):
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        total += time.perf_counter() - t0
    return total


if __name__ == "__main__":
    ctx = benchlib.make_runner("heavy", __doc__)
    ctx.runner.metadata["fork_heap_mb"] = benchlib.scaled(HEAP_MB, 1)
    ctx.runner.bench_time_func("fork", bench)
