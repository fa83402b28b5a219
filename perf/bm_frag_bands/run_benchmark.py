"""frag_bands: rounds of strings in shifting size bands, 25 % of each kept.

After the Mesh paper's Ruby experiment (PLDI 2019, section 6): a program
whose typical object size drifts over time. Each round allocates about
ROUND_BYTES of strs with lengths drawn from the round's band, keeps a random
KEEP_PCT % of them for the rest of the run and drops the others. Pages of an
earlier band keep their quarter of survivors while the next band needs other
size classes, so a non-compacting allocator holds every round's pages.

Value: settled PSS above the baseline, bytes (see bm_frag_sparse).
"""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

# (min, max) str length per round: small, growing past pymalloc's 512-byte
# limit, then small again
BANDS = ((8, 48), (40, 120), (100, 240), (200, 480), (400, 1000), (16, 200))
ROUND_BYTES = 40 * 1024 * 1024
KEEP_PCT = 25
SAMPLES_PER_ROUND = 10
SEED = 13


def workload(ctx):
    import gc
    rng = random.Random(SEED)
    gc.collect()
    rec = benchlib.PssRecorder()
    base = rec.mark("start")
    kept = []
    total = 0
    for r, (lo, hi) in enumerate(BANDS):
        count = benchlib.scaled(ROUND_BYTES // ((lo + hi) // 2 + 49), 500)
        step = max(1, count // SAMPLES_PER_ROUND)
        rnd, span = rng.random, hi - lo + 1
        strs = []
        for i in range(count):
            strs.append(("%x" % (i * 2654435761 & 0xffff)) * ((lo + int(rnd() * span)) // 4 + 1))
            if i % step == 0:
                rec.mark()
        total += count
        rec.mark("round %d allocated" % r)
        kept.extend(rng.sample(strs, count * KEEP_PCT // 100))
        del strs
        rec.mark("round %d freed" % r)
    gc.collect()
    after_free = rec.mark("freed") - base
    peak = rec.peak - base
    info = ctx.settle()
    settled = rec.mark("settled") - base
    live = benchlib.live_size([kept])
    return benchlib.frag_result(rec, base, peak, after_free, settled, live,
                                {"strings": total, "kept": len(kept), **info}, ctx=ctx)


if __name__ == "__main__":
    ctx = benchlib.make_runner("memory", __doc__)
    benchlib.memory_bench(ctx, "frag_bands", workload)
