"""dict_str: dict- and str-heavy text processing.

Builds a synthetic log of N_LINES lines, then per iteration: splits every
line, counts words and bigrams in dicts, groups lines by a key field into a
dict of lists, formats a report of the top entries with f-strings and
str.join, and upper/lower/replace-normalises fields: the inner loop of
many scripts and web back ends.

Timed: the per-iteration processing (the log text is built once).
"""
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

N_LINES = 4000
VOCAB = 800
SEED = 22


def make_log(rng, n):
    words = ["w%s%d" % ("abcdefgh"[i % 8], i) for i in range(VOCAB)]
    users = ["user%d" % i for i in range(50)]
    return ["%s %s GET /api/%s/%d %s" % (rng.choice(users), rng.choice(("INFO", "WARN", "DEBUG")),
                                         rng.choice(words), rng.randrange(10000),
                                         " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))))
            for _ in range(n)]


def process(lines):
    counts = {}
    bigrams = {}
    by_user = {}
    for line in lines:
        parts = line.split()
        by_user.setdefault(parts[0], []).append(parts[3])
        prev = None
        for w in parts[4:]:
            counts[w] = counts.get(w, 0) + 1
            if prev is not None:
                key = prev + "|" + w
                bigrams[key] = bigrams.get(key, 0) + 1
            prev = w
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:50]
    report = "\n".join(f"{w:>12} {n:6d} {w.upper()} {w.replace('w', 'W', 1)}" for w, n in top)
    paths = {u: ",".join(sorted(set(p.lower() for p in ps))) for u, ps in by_user.items()}
    return len(report) + len(bigrams) + sum(len(v) for v in paths.values())


_state = {}


def bench(loops):
    lines = _state.get("lines")
    if lines is None:
        lines = _state["lines"] = make_log(random.Random(SEED), benchlib.scaled(N_LINES, 100))
    t0 = time.perf_counter()
    for _ in range(loops):
        process(lines)
    return time.perf_counter() - t0


if __name__ == "__main__":
    ctx = benchlib.make_runner("speed", __doc__)
    ctx.runner.bench_time_func("dict_str", bench)
