"""fork: os.fork() of an interpreter holding a HEAP_MB heap of Python objects.

Each worker builds a deterministic heap of mixed objects (small strs,
tuples, dicts, lists of ints, bytes up to 4 KiB) until its PSS has grown by
HEAP_MB, then times fork() + the child's immediate os._exit(0) + waitpid().
pymalloc's and glibc's heaps are copy-on-write and cost the kernel only page
tables; so is meshalloc's, but for meshed spans, whose pages live in a
shared memfd and are copied for the child before the clone (docs/design.md,
"fork"). (The original Mesh copied the whole heap: 206 ms vs pymalloc's 9 ms
for 200 MB.)

Timed: fork through waitpid, one fork per value (the heap is built outside
the timed region, once per worker).

Memory, once per worker, into the run's metadata:
- an idle child as the system sees it, the growth of ``Shmem + AnonPages``
  in /proc/meminfo (``fork_child_system_mb``), beside its PSS
  (``fork_child_pss_mb``); PSS alone misses memfd pages written with
  ``pwrite`` and not yet touched;
- a preforked service: PREFORK workers forked from the heap, idle
  (``prefork_idle_added_mb``) or each rewriting a tenth of the objects
  (``prefork_rewrite_added_mb``): what they add to the parent's memory,
  the sum of every process's PSS (shared pages split between them) plus the
  bytes the workers' arena memfds hold that no PSS shows;
- a meshed heap: another heap of HEAP_MB thinned to a quarter of its
  objects and, under meshalloc, compacted (``meshed_memfd_mb``: what
  meshing put in the memfd), then the first fork after the compaction
  (``meshed_first_fork_ms``: where the memfd is frozen or copied), the
  median of the next forks (``meshed_fork_ms``) and PREFORK idle workers
  (``prefork_meshed_idle_added_mb``). That case runs in a child of the
  worker, so nothing of it is left in the heap the timed forks copy.
"""
import json
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


PREFORK = 4


def footprint(pid):
    return benchlib.pss_bytes(pid) + benchlib.memfd_bytes(pid)


def prefork_added(heap, rewrite):
    """Bytes PREFORK workers add once each has (if rewrite) rewritten every
    tenth object of its share of the heap, and then idles."""
    before = footprint(os.getpid())
    pids, pipes = [], []
    for w in range(PREFORK):
        r, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            if rewrite:
                for chunk in heap[w::PREFORK]:
                    for k in range(0, len(chunk), 10):
                        chunk[k] = ("rewritten", k)
            os.write(wfd, b"x")
            time.sleep(60)
            os._exit(0)
        os.close(wfd)
        pids.append(pid)
        pipes.append(r)
    for r in pipes:
        os.read(r, 1)
        os.close(r)
    time.sleep(0.3)
    total = footprint(os.getpid()) + sum(footprint(p) for p in pids)
    for p in pids:
        os.kill(p, 9)
        os.waitpid(p, 0)
    return total - before


def timed_fork():
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return time.perf_counter() - t0


def meshed_case(metadata):
    heap = build_heap(benchlib.scaled(HEAP_MB, 1) * 1024 * 1024)
    for chunk in heap:
        chunk[:] = chunk[::4]
    promoted = 0
    mod = sys.modules.get("meshalloc")
    if mod is not None and (mod.is_installed() or mod.is_preloaded()):
        mod.compact()
        promoted = mod.stats().promoted_pages * 4096
    first = timed_fork()
    rest = sorted(timed_fork() for _ in range(7))
    metadata["meshed_memfd_mb"] = round(promoted / 1048576.0, 1)
    metadata["meshed_first_fork_ms"] = round(first * 1000, 1)
    metadata["meshed_fork_ms"] = round(rest[len(rest) // 2] * 1000, 1)
    metadata["prefork_meshed_idle_added_mb"] = round(prefork_added(heap, False) / 1048576.0, 1)


def meshed_case_in_child(runner):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        metadata = {}
        try:
            meshed_case(metadata)
        finally:
            os.write(w, json.dumps(metadata).encode())
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 4096)
        if not chunk:
            break
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    runner.metadata.update(json.loads(data or b"{}"))


def prepare(runner):
    """In a worker, before pyperf copies the metadata into the run: the heap,
    and what an idle child and a set of preforked workers of it cost."""
    meshed_case_in_child(runner)
    _state["heap"] = build_heap(benchlib.scaled(HEAP_MB, 1) * 1024 * 1024)
    grown, pss = child_memory()
    runner.metadata["fork_child_system_mb"] = round(grown / 1048576.0, 1)
    runner.metadata["fork_child_pss_mb"] = round(pss / 1048576.0, 1)
    for key, rewrite in (("prefork_idle_added_mb", False), ("prefork_rewrite_added_mb", True)):
        runner.metadata[key] = round(prefork_added(_state["heap"], rewrite) / 1048576.0, 1)


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
