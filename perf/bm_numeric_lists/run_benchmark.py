"""numeric_lists: pure-Python numeric code on lists and tuples.

Per iteration: a small n-body-style step over a list of particles held as
tuples of floats (every update allocates new tuples and floats), a dense
matrix product on lists of lists, a running statistics pass with zip and
sum, and a sort of (key, value) tuples. Floats and tuples are the most
frequently allocated objects in this kind of code.

Timed: the iterations (the inputs are built once).
"""
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

N_PARTICLES = 60
MATRIX = 30
SAMPLES = 3000
SEED = 26


def step(particles, dt=0.01):
    out = []
    for i, (x, y, vx, vy, m) in enumerate(particles):
        ax = ay = 0.0
        for j, (x2, y2, _, _, m2) in enumerate(particles):
            if i != j:
                dx, dy = x2 - x, y2 - y
                d2 = dx * dx + dy * dy + 1e-3
                f = m2 / (d2 * math.sqrt(d2))
                ax += dx * f
                ay += dy * f
        out.append((x + vx * dt, y + vy * dt, vx + ax * dt, vy + ay * dt, m))
    return out


def matmul(a, b):
    bt = list(zip(*b))
    return [[sum(x * y for x, y in zip(row, col)) for col in bt] for row in a]


_state = {}


def bench(loops):
    st = _state
    if not st:
        rng = random.Random(SEED)
        n = benchlib.scaled(N_PARTICLES, 5)
        st["p"] = [(rng.random(), rng.random(), 0.0, 0.0, rng.random() + 0.5) for _ in range(n)]
        m = benchlib.scaled(MATRIX, 4)
        st["a"] = [[rng.random() for _ in range(m)] for _ in range(m)]
        st["xs"] = [rng.gauss(0, 1) for _ in range(benchlib.scaled(SAMPLES, 50))]
    t0 = time.perf_counter()
    for _ in range(loops):
        st["p"] = step(st["p"])
        c = matmul(st["a"], st["a"])
        xs = st["xs"]
        mean = sum(xs) / len(xs)
        var = sum((x - mean) ** 2 for x in xs) / len(xs)
        pairs = sorted(zip((round(x, 2) for x in xs), range(len(xs))))
        assert c and var >= 0 and pairs
    return time.perf_counter() - t0


if __name__ == "__main__":
    ctx = benchlib.make_runner("speed", __doc__)
    ctx.runner.bench_time_func("numeric_lists", bench)
