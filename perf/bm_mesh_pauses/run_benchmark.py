"""mesh_pauses: how long meshing stops the program, after a fragmenting run.

Allocates N_OBJECTS small objects, keeps a random KEEP_PCT % (meshing
already runs on frees, rate-limited), then calls meshalloc.compact(), and
reads the pause fields of meshalloc.stats(): the pass count, the histogram
buckets (mesh_pause_lt_100us ... mesh_pause_ge_5ms), the total and the
maximum, in wall-clock time and in the meshing thread's CPU time (the
difference is time the thread was not running: preempted by another
process, or the VM's vCPU descheduled), and how many passes went over the
bound by either measure. Each meshing pass is bounded by the max_pause_us
option.

Value: the longest single meshing pause of the run, in seconds (one fresh
process per value). The histogram, the mean pause and compact()'s own
duration are in the run metadata. Only meaningful where meshalloc is the
allocator: under the other configurations the script records nothing.
"""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

N_OBJECTS = 1_000_000
KEEP_PCT = 5
SEED = 31
PAUSE_FIELDS = ("mesh_passes", "mesh_count", "mesh_pause_lt_100us", "mesh_pause_lt_500us", "mesh_pause_lt_1ms",
                "mesh_pause_lt_2ms", "mesh_pause_lt_5ms", "mesh_pause_ge_5ms", "mesh_pause_ns_total",
                "mesh_pause_ns_max", "mesh_pause_cpu_ns_max", "mesh_pause_over_bound", "mesh_pause_cpu_over_bound")


def workload(ctx):
    import gc
    import meshalloc
    n = benchlib.scaled(N_OBJECTS, 2000)
    rng = random.Random(SEED)
    objs = [("p%d" % i) if i & 1 else (i, i) for i in range(n)]
    kept = [objs[i] for i in sorted(rng.sample(range(n), n * KEEP_PCT // 100))]
    del objs
    gc.collect()
    r = meshalloc.compact()
    stats = benchlib.meshalloc_stats()
    out = {k: int(stats.get(k, 0)) for k in PAUSE_FIELDS}
    out["compact_pause_s"] = float(r.pause_seconds)
    passes = max(1, out["mesh_passes"])
    out["mean_pause_s"] = out["mesh_pause_ns_total"] / passes / 1e9
    out["max_pause_s"] = out["mesh_pause_ns_max"] / 1e9
    out["max_pause_cpu_s"] = out["mesh_pause_cpu_ns_max"] / 1e9
    out["kept"] = len(kept)
    return out


def pause_bench(ctx):
    if not ctx.is_worker:
        ctx.runner.bench_time_func("mesh_pause_max", benchlib._never_called)
        return
    res = workload(ctx)
    md = {"pause_" + k: v for k, v in res.items()}
    value = max(res["max_pause_s"], 1e-9)  # pyperf refuses 0 (no pass ran)
    ctx.runner.bench_time_func("mesh_pause_max", lambda loops: value * loops, metadata=md)


if __name__ == "__main__":
    ctx = benchlib.make_runner("memory", __doc__)
    if not ctx.meshing:
        print("mesh_pauses: skipped, meshalloc is not the allocator in configuration %s" % ctx.config)
        sys.exit(0)
    pause_bench(ctx)
