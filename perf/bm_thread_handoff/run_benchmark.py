"""thread_handoff: objects built in one thread and freed in another.

A pipeline of three threads joined by queue.Queue: a producer builds
request-like dicts (strs, lists, ints), a worker transforms each into a
response (new objects, the request is dropped there), a consumer
aggregates and drops the responses. Every object dies in another thread than
the one that allocated it, the case that exercises an allocator's remote-free
path (under meshalloc with MESHALLOC=1 the GIL serialises the PyMem calls;
under LD_PRELOAD the threads' own malloc traffic is concurrent too).

Timed: pushing N_ITEMS items through the pipeline per iteration (threads are
started once and reused).
"""
import queue
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

N_ITEMS = 2000
BATCH = 16  # items per queue operation: queue.Queue costs dominate otherwise

_state = {}


def worker(inq, outq):
    while True:
        batch = inq.get()
        if batch is None:
            outq.put(None)
            return
        outq.put([{"id": r["id"], "path": r["path"].upper(), "size": sum(r["sizes"]),
                   "headers": {k: v[::-1] for k, v in r["headers"].items()}} for r in batch])


def consumer(inq, done):
    total = 0
    while True:
        batch = inq.get()
        if batch is None:
            return
        for resp in batch:
            total += resp["size"] + len(resp["path"])
        if any(r["id"] == -1 for r in batch):
            done.put(total)
            total = 0


def start():
    q1, q2, done = queue.Queue(64), queue.Queue(64), queue.Queue()
    threads = [threading.Thread(target=worker, args=(q1, q2), daemon=True),
               threading.Thread(target=consumer, args=(q2, done), daemon=True)]
    for t in threads:
        t.start()
    return q1, done


def bench(loops):
    if "q" not in _state:
        _state["q"], _state["done"] = start()
    q1, done = _state["q"], _state["done"]
    n = benchlib.scaled(N_ITEMS, 40)
    t0 = time.perf_counter()
    for _ in range(loops):
        batch = []
        for i in range(n):
            last = i == n - 1
            batch.append({"id": -1 if last else i, "path": "/api/v1/items/%d" % i,
                          "sizes": [i % 7, i % 11, i % 13], "headers": {"host": "h%d" % (i % 5), "agent": "bench"}})
            if len(batch) == BATCH or last:
                q1.put(batch)
                batch = []
        done.get()
    return time.perf_counter() - t0


if __name__ == "__main__":
    ctx = benchlib.make_runner("speed", __doc__)
    ctx.runner.bench_time_func("thread_handoff", bench)
