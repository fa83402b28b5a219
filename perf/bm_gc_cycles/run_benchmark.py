"""gc_cycles: reference cycles that only the cyclic GC can free.

Per iteration: builds N_RINGS doubly linked rings of objects that also
point at their owner (every node is in a cycle), keeps a random few rings
alive in a bounded pool and drops the rest, then calls gc.collect() every
COLLECT_EVERY iterations. The automatic collections triggered by the
allocations run too. Under meshalloc a full collection may also mesh
(rate-limited by its period_ms option): that is part of what this measures.

Timed: the iterations, collections included, in the steady state. A full
collection walks every tracked object, the pool's included, so an iteration
with an empty pool costs ~30 % less than one with a full pool (2.4 vs 3.5 ms
here). The pool fills after POOL / 3 iterations; before this was done
untimed, pyperf's values fell partly or wholly in the filling phase depending
on the loop count it calibrated (32 in one run, 64 in the next), so two runs
measured different workloads. Each worker therefore first runs the same
iterations untimed until the pool has turned over once (the kept rings are
then scattered among freed memory as in the timed part), and the collection
cadence counts iterations across calls, not from 0 in every call.
"""
import gc
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

N_RINGS = 100
RING_LEN = 20
POOL = 300
COLLECT_EVERY = 5
SEED = 25


class Ring:
    def __init__(self):
        self.nodes = []


class Link:
    __slots__ = ("prev", "next", "owner", "payload")


def make_ring(n, i):
    ring = Ring()
    prev = None
    first = None
    for j in range(n):
        link = Link()
        link.owner = ring
        link.payload = {"i": i, "j": j}
        link.prev = prev
        link.next = None
        if prev is not None:
            prev.next = link
        else:
            first = link
        prev = link
        ring.nodes.append(link)
    prev.next = first
    first.prev = prev
    return ring


_state = {"pool": [], "it": 0, "rng": None}


def iterate(loops, rings):
    st = _state
    rng = st["rng"]
    pool = st["pool"]
    it = st["it"]
    for _ in range(loops):
        made = [make_ring(RING_LEN, k) for k in range(rings)]
        pool.extend(rng.sample(made, 3))
        if len(pool) > POOL:
            del pool[:len(pool) - POOL]
        del made
        if it % COLLECT_EVERY == 0:
            gc.collect()
        it += 1
    st["it"] = it


def bench(loops):
    rings = benchlib.scaled(N_RINGS, 5)
    if _state["rng"] is None:
        # untimed: reach the steady state (pool full, turned over once)
        _state["rng"] = random.Random(SEED)
        iterate(-(-POOL // 3), rings)
    t0 = time.perf_counter()
    iterate(loops, rings)
    return time.perf_counter() - t0


if __name__ == "__main__":
    ctx = benchlib.make_runner("speed", __doc__)
    ctx.runner.bench_time_func("gc_cycles", bench)
