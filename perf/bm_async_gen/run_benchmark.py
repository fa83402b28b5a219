"""async_gen: asyncio tasks and generator pipelines.

Per iteration: an asyncio event loop runs N_TASKS tasks that exchange
messages through asyncio.Queue and await sleeps of zero (each await creates
coroutine frames, futures and callbacks), and a chain of generators
(read -> parse -> filter -> group) processes records lazily. Coroutine
frames, futures, small dicts and tuples come and go at a high rate.

Timed: the iterations (each creates and closes its own event loop).
"""
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import benchlib  # noqa: E402

N_TASKS = 50
MESSAGES = 20
N_RECORDS = 3000


async def producer(q, k, n):
    for i in range(n):
        await q.put({"from": k, "seq": i, "body": "m%d-%d" % (k, i)})
        if i % 5 == 0:
            await asyncio.sleep(0)


async def sink(q, total):
    got = 0
    while got < total:
        msg = await q.get()
        got += len(msg["body"]) > 0


async def main(ntasks):
    q = asyncio.Queue(maxsize=100)
    prods = [asyncio.ensure_future(producer(q, k, MESSAGES)) for k in range(ntasks)]
    await sink(q, ntasks * MESSAGES)
    await asyncio.gather(*prods)


def records(n):
    for i in range(n):
        yield "%d,%s,%d" % (i, "name%d" % (i % 97), i * 3 % 1000)


def parse(lines):
    for line in lines:
        a, b, c = line.split(",")
        yield (int(a), b, int(c))


def grouped(rows):
    groups = {}
    for i, name, v in rows:
        if v % 7:
            groups.setdefault(name, []).append((i, v))
    return groups


def bench(loops):
    ntasks = benchlib.scaled(N_TASKS, 3)
    nrec = benchlib.scaled(N_RECORDS, 50)
    t0 = time.perf_counter()
    for _ in range(loops):
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(main(ntasks))
        finally:
            loop.close()
        g = grouped(parse(records(nrec)))
        assert g
    return time.perf_counter() - t0


if __name__ == "__main__":
    ctx = benchlib.make_runner("speed", __doc__)
    ctx.runner.bench_time_func("async_gen", bench)
