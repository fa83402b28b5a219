"""frag_dict: build a dict of N_ENTRIES records, delete a random DELETE_PCT %.

A cache or index that is mostly emptied and then kept: the surviving keys
and values are spread over every page the dict's entries were allocated
from. The dict's own table does not shrink on deletion (CPython resizes only
on insertion), so it is live data here.

Entry: key ``"user:%07d"`` (a ~58-byte str), value a 2-tuple of a small str
and an int (tuple + str + int: three small objects).

Value: settled PSS above the baseline, bytes (see bm_frag_sparse).
"""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

N_ENTRIES = 1_000_000
DELETE_PCT = 90
SAMPLES = 40
SEED = 12


def workload(ctx):
    import gc
    n = benchlib.scaled(N_ENTRIES, 2000)
    rng = random.Random(SEED)
    gc.collect()
    rec = benchlib.PssRecorder()
    base = rec.mark("start")
    step = max(1, n // SAMPLES)
    d = {}
    for i in range(n):
        d["user:%07d" % i] = ("name-%d" % (i * 31), i * 1000 + 7)
        if i % step == 0:
            rec.mark()
    peak = rec.mark("built") - base
    doomed = rng.sample(range(n), n * DELETE_PCT // 100)
    for j, i in enumerate(doomed):
        del d["user:%07d" % i]
        if j % step == 0:
            rec.mark()
    del doomed
    gc.collect()
    after_free = rec.mark("deleted") - base
    info = ctx.settle()
    settled = rec.mark("settled") - base
    live = benchlib.live_size([d])
    assert len(d) == n - n * DELETE_PCT // 100
    return benchlib.frag_result(rec, base, peak, after_free, settled, live, {"entries": n, "left": len(d), **info},
                                ctx=ctx)


if __name__ == "__main__":
    ctx = benchlib.make_runner("memory", __doc__)
    benchlib.memory_bench(ctx, "frag_dict", workload)
