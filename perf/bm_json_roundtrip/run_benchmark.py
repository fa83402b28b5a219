"""json_roundtrip: json.dumps and json.loads of API-like documents.

N_DOCS documents (nested dicts and lists of strs, ints, floats, bools and
None, like a paginated REST response) are encoded, decoded and re-encoded
with different options per iteration. Decoding creates every object anew,
so this is allocation-heavy as much as it is parser work.

Timed: the round trips (the documents are built once).
"""
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

N_DOCS = 40
ITEMS_PER_DOC = 50
SEED = 23


def make_doc(rng, i):
    return {"page": i, "next": "/items?page=%d" % (i + 1), "total": 10_000,
            "items": [{"id": i * 1000 + j, "name": "item-%d-%d" % (i, j), "price": round(rng.random() * 100, 2),
                       "tags": ["t%d" % rng.randrange(50) for _ in range(rng.randint(0, 5))],
                       "stock": {"warehouse": "w%d" % rng.randrange(9), "count": rng.randrange(1000),
                                 "reserved": rng.random() < 0.1},
                       "note": None if rng.random() < 0.7 else "n" * rng.randrange(5, 120)}
                      for j in range(ITEMS_PER_DOC)]}


_state = {}


def bench(loops):
    docs = _state.get("docs")
    if docs is None:
        rng = random.Random(SEED)
        docs = _state["docs"] = [make_doc(rng, i) for i in range(benchlib.scaled(N_DOCS, 2))]
    t0 = time.perf_counter()
    for _ in range(loops):
        for d in docs:
            s = json.dumps(d)
            back = json.loads(s)
            json.dumps(back, sort_keys=True, indent=1)
    return time.perf_counter() - t0


if __name__ == "__main__":
    ctx = benchlib.make_runner("speed", __doc__)
    ctx.runner.bench_time_func("json_roundtrip", bench)
