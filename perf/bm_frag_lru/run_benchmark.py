"""frag_lru: an LRU cache under churn whose values change size over time.

After the Mesh paper's Redis experiment (PLDI 2019, section 6): a cache
bounded by the bytes of its values (like Redis' maxmemory with LRU
eviction) is filled with small values, then with larger ones, then with
medium ones; each phase evicts the previous phase's values one by one, in
LRU order, which leaves their pages sparsely occupied by the entries that
happened to be touched recently. Gets (a hit moves the entry to the MRU
end) are mixed with sets.

"after_free" is PSS at the end of the churn (evictions are the frees);
"settled" after gc.collect() and, under meshalloc, compact(); "live" the
cache's keys, values and table.

Value: settled PSS above the baseline, bytes (see bm_frag_sparse).
"""
import random
import sys
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

CACHE_BYTES = 48 * 1024 * 1024          # budget for the values' lengths
PHASES = ((64, 160), (400, 900), (160, 320))  # value length (min, max) per phase
OPS_PER_PHASE = 400_000
KEYSPACE = 1_000_000
GET_PCT = 30
SAMPLES_PER_PHASE = 15
SEED = 14


def workload(ctx):
    import gc
    rng = random.Random(SEED)
    budget = benchlib.scaled(CACHE_BYTES, 64 * 1024)
    ops = benchlib.scaled(OPS_PER_PHASE, 3000)
    keyspace = benchlib.scaled(KEYSPACE, 6000)
    gc.collect()
    rec = benchlib.PssRecorder()
    base = rec.mark("start")
    cache = OrderedDict()
    used = 0
    hits = evictions = 0
    step = max(1, ops // SAMPLES_PER_PHASE)
    rnd = rng.random
    for phase, (lo, hi) in enumerate(PHASES):
        for i in range(ops):
            key = "k%d" % int(rnd() * keyspace)
            if rnd() * 100 < GET_PCT:
                if key in cache:
                    cache.move_to_end(key)
                    hits += 1
            else:
                n = lo + int(rnd() * (hi - lo + 1))
                old = cache.pop(key, None)
                if old is not None:
                    used -= len(old)
                cache[key] = ("%d:" % i) * (n // 8) + "#" * (n % 8)
                used += len(cache[key])
                while used > budget:
                    _, v = cache.popitem(last=False)
                    used -= len(v)
                    evictions += 1
            if i % step == 0:
                rec.mark()
        rec.mark("phase %d" % phase)
    gc.collect()
    after_free = rec.mark("churned") - base
    peak = rec.peak - base
    info = ctx.settle()
    settled = rec.mark("settled") - base
    live = benchlib.live_size([cache])  # OrderedDict.__sizeof__ includes its node table
    return benchlib.frag_result(rec, base, peak, after_free, settled, live,
                                {"entries": len(cache), "hits": hits, "evictions": evictions, **info}, ctx=ctx)


if __name__ == "__main__":
    ctx = benchlib.make_runner("memory", __doc__)
    benchlib.memory_bench(ctx, "frag_lru", workload)
