"""churn.py - a Python allocation-churn workload.

Each round builds an object graph the way ordinary interpreter code does
(records as dicts holding small strs, ints beyond the small-int cache,
tuples, lists and float dicts; indexes keyed by name and tag; CSV-like
lines formatted, split and parsed back; a sort), keeps a few records alive
in a bounded survivor pool with random eviction (so long-lived objects end up
interleaved with garbage, which is what fragments a heap) and drops the rest.
Some records point at each other, so the cyclic GC has real work too.

Deterministic: a fixed seed, and run.py sets PYTHONHASHSEED=0, so every
allocator configuration executes exactly the same object operations (the
printed checksum must match across configurations).

Only the rounds are timed (wall clock, and the process's CPU time, which a
busy machine disturbs less: time spent descheduled is not counted). After
them the process reads its own PSS (benchlib.pss_bytes, with the survivor
pool still alive), then detects which allocator it ran under
(benchlib.detect, which loads ctypes: after the PSS), and prints one JSON
line (--json) or a short text report.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
import benchlib  # noqa: E402  (no pathlib here: it would add to the PSS this reports)

# ---- workload parameters (module constants, as in pyperformance) ----------
SEED = 20190622          # PLDI 2019
ROUNDS = 20
RECORDS_PER_ROUND = 5000
SURVIVOR_FRACTION = 0.04  # records kept alive per round
SURVIVOR_CAP = 15000      # pool size; beyond it random survivors are evicted
NWORDS = 3000


def make_words(rng: random.Random) -> list:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 10))) for _ in range(NWORDS)]


def make_record(rng: random.Random, words: list, i: int) -> dict:
    return {
        "id": 100_000 + i,
        "name": "%s_%d" % (rng.choice(words), i),
        "tags": tuple(rng.sample(words, rng.randint(1, 4))),
        "scores": [rng.randint(0, 1_000_000) for _ in range(rng.randint(2, 8))],
        "attrs": {w: rng.random() for w in rng.sample(words, 3)},
        "peer": None,
    }


def one_round(rng: random.Random, words: list, r: int, n: int, survivors: list) -> int:
    recs = [make_record(rng, words, r * n + i) for i in range(n)]
    # a graph: a tenth of the records point at another one, some both ways
    for rec in recs[:: 10]:
        other = recs[rng.randrange(n)]
        rec["peer"] = other
        if rng.random() < 0.5:
            other["peer"] = rec
    by_name = {rec["name"]: rec for rec in recs}
    by_tag: dict = {}
    for rec in recs:
        for t in rec["tags"]:
            by_tag.setdefault(t, []).append(rec["id"])
    lines = ["%d,%s,%s,%d" % (rec["id"], rec["name"], "|".join(rec["tags"]), sum(rec["scores"])) for rec in recs]
    parsed = [tuple(line.split(",")) for line in lines]
    total = sum(int(p[3]) for p in parsed)
    top = sorted(recs, key=lambda rec: (-sum(rec["scores"]), rec["name"]))[:50]
    popular = sorted(by_tag.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:20]
    merged = {}
    for rec in top:
        merged.update(rec["attrs"])
    for rec in recs:
        if rng.random() < SURVIVOR_FRACTION:
            survivors.append(rec)
    while len(survivors) > SURVIVOR_CAP:
        k = rng.randrange(len(survivors))
        survivors[k] = survivors[-1]
        survivors.pop()
    return (total + len(by_name) + len(popular) + len(merged) + top[0]["id"]) % 1_000_000_007


def status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def meshing_figures(actual: dict) -> dict:
    """Time and work of meshalloc's passes in this process, when meshalloc is
    the allocator (MESHALLOC=1, or libmesh.so preloaded): what pacing must
    keep small on a churn that meshing cannot help for long."""
    if not benchlib.meshalloc_active(actual):
        return {}
    st = benchlib.meshalloc_stats()
    return {"mesh_pass_s": st["mesh_pause_ns_total"] / 1e9,
            **{k: st[k] for k in ("mesh_passes", "mesh_count", "meshed_pages_total", "dirty_pages", "pages_decayed",
                                  "mesher_thread_starts")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    ap.add_argument("--records", type=int, default=RECORDS_PER_ROUND)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args()

    rng = random.Random(SEED)
    words = make_words(rng)
    survivors: list = []
    checksum = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    for r in range(args.rounds):
        checksum = (checksum * 31 + one_round(rng, words, r, args.records, survivors)) % 1_000_000_007
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0

    result = {
        "time_s": elapsed,
        "cpu_s": cpu,
        "pss_kb": benchlib.pss_bytes() // 1024,
        "rss_kb": status_kb("VmRSS"),
        "hwm_kb": status_kb("VmHWM"),
        "checksum": checksum,
        "survivors": len(survivors),
        "python": sys.version.split()[0],
        "config": benchlib.expected_from_env(),
        "alloc": benchlib.detect(),
    }
    result.update(meshing_figures(result["alloc"]))
    if args.json:
        print(json.dumps(result))
    else:
        print("churn: %.3f s, PSS %.1f MiB, VmHWM %.1f MiB, checksum %d (%s: PyMem %s, malloc from %s)"
              % (elapsed, result["pss_kb"] / 1024, result["hwm_kb"] / 1024, checksum, result["config"],
                 result["alloc"]["pymem"], result["alloc"]["malloc_library"]))
        if "mesh_pass_s" in result:
            print("meshing: %d passes, %d meshes, %.4f s in passes (%.2f %% of the run)"
                  % (result["mesh_passes"], result["mesh_count"], result["mesh_pass_s"],
                     100 * result["mesh_pass_s"] / elapsed))


if __name__ == "__main__":
    main()
