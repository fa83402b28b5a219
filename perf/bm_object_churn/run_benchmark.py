"""object_churn: an object graph that is partly rebuilt all the time.

A pool of POOL_TREES trees of plain class instances (each with its own
``__dict__``, a name str, a list of children and a parent pointer) is kept
alive; every iteration replaces REPLACE random subtrees in random trees and
walks one tree. Long-lived nodes end up interleaved with short-lived ones,
the pattern of a server's in-memory model or an AST being transformed.

Timed: the iterations (the initial pool is built outside the timed region).
"""
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

POOL_TREES = 200
DEPTH = 5
FANOUT = 3
REPLACE = 20
SEED = 21


class Node:
    def __init__(self, name, parent):
        self.name = name
        self.parent = parent
        self.children = []
        self.weight = len(name)


def build(rng, depth, parent, prefix):
    node = Node("%s.%d" % (prefix, rng.randrange(1000)), parent)
    if depth:
        node.children = [build(rng, depth - 1, node, node.name) for _ in range(rng.randint(1, FANOUT))]
    return node


def walk(node):
    total = node.weight
    for c in node.children:
        total += walk(c)
    return total


_state = {}


def bench(loops):
    rng = random.Random(SEED)
    pool = _state.get("pool")
    if pool is None:
        pool = _state["pool"] = [build(rng, DEPTH, None, "t%d" % i) for i in range(benchlib.scaled(POOL_TREES, 10))]
    t0 = time.perf_counter()
    for _ in range(loops):
        for _ in range(REPLACE):
            node = pool[rng.randrange(len(pool))]
            while node.children and rng.random() < 0.6:
                node = node.children[rng.randrange(len(node.children))]
            depth = rng.randint(1, DEPTH - 1)
            node.children = [build(rng, depth, node, node.name) for _ in range(FANOUT)]
        walk(pool[rng.randrange(len(pool))])
    return time.perf_counter() - t0


if __name__ == "__main__":
    ctx = benchlib.make_runner("speed", __doc__)
    ctx.runner.bench_time_func("object_churn", bench)
