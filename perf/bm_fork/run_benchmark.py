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

Memory, once per worker, into the run's metadata: a child that stays alive
(idle, before exiting) is measured as the system sees it, the growth of
``Shmem + AnonPages`` in /proc/meminfo (``fork_child_system_mb``), beside
its PSS (``fork_child_pss_mb``). PSS alone misses a meshalloc child's copy:
it is written into the child's memfd with ``pwrite`` and not mapped until
touched (docs/options.md, ``arena_memfd_bytes``).
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


def child_memory():
    """(system bytes, PSS bytes) an idle fork child adds."""
    r, w = os.pipe()
    before = benchlib.system_bytes()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, b"x")  # the child's heap is its own by now
        time.sleep(30)
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    time.sleep(0.2)
    grown = benchlib.system_bytes() - before
    pss = benchlib.pss_bytes(pid)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    os.close(r)
    return grown, pss


def prepare(runner):
    """In a worker, before pyperf copies the metadata into the run: the heap,
    and what an idle child of it costs."""
    _state["heap"] = build_heap(benchlib.scaled(HEAP_MB, 1) * 1024 * 1024)
    grown, pss = child_memory()
    runner.metadata["fork_child_system_mb"] = round(grown / 1048576.0, 1)
    runner.metadata["fork_child_pss_mb"] = round(pss / 1048576.0, 1)


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
    if ctx.runner.args.worker:
        prepare(ctx.runner)
    ctx.runner.bench_time_func("fork", bench)
