"""frag_sparse: allocate N_OBJECTS small objects, keep a random KEEP_PCT %.

The classic fragmentation pattern (docs/python.md, "Meshing"): a few
survivors spread evenly over every page. pymalloc never returns a pool that
still holds one object, so it stays near its peak; glibc malloc keeps most of
its heap too; meshalloc can mesh spans whose survivors do not overlap and
return the rest.

Objects: a quarter each of ~56-byte strs, 3-tuples of ints, 65..214-byte strs
and 2-element lists, allocated interleaved (as a program builds records).

Value: PSS above the process's baseline after gc.collect() and, under
meshalloc, meshalloc.compact() ("settled"), in bytes. Run metadata: peak,
after_free, live (getsizeof of the survivors), recovery and the PSS series.
"""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

N_OBJECTS = 2_000_000
KEEP_PCT = 2
SAMPLES = 40     # PSS samples while allocating
SEED = 11


def workload(ctx):
    import gc
    n = benchlib.scaled(N_OBJECTS, 2000)
    rng = random.Random(SEED)
    gc.collect()
    rec = benchlib.PssRecorder()
    base = rec.mark("start")
    step = max(1, n // SAMPLES)
    objs = []
    append = objs.append
    for i in range(n):
        k = i & 3
        if k == 0:
            append("s%d" % (i * 7919))
        elif k == 1:
            append((i, i + 1, i + 2))
        elif k == 2:
            append("x" * (16 + i % 150))
        else:
            append([i, i])
        if i % step == 0:
            rec.mark()
    peak = rec.mark("allocated") - base
    keep = sorted(rng.sample(range(n), n * KEEP_PCT // 100))
    kept = [objs[i] for i in keep]
    del keep
    objs.clear()
    del objs
    gc.collect()
    after_free = rec.mark("freed") - base
    info = ctx.settle()
    settled = rec.mark("settled") - base
    live = benchlib.live_size([kept])
    assert all(x is not None for x in kept)
    return benchlib.frag_result(rec, base, peak, after_free, settled, live,
                                {"objects": n, "kept": len(kept), **info}, ctx=ctx)


if __name__ == "__main__":
    ctx = benchlib.make_runner("memory", __doc__)
    benchlib.memory_bench(ctx, "frag_sparse", workload)
