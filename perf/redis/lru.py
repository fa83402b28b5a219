"""lru.py - the Mesh paper's Redis experiment, side by side.

A Redis LRU cache (``maxmemory 100mb``, ``allkeys-lru``, no persistence) is
filled by ``redis-benchmark`` with 240-byte values, then with 492-byte values
over the same key space, so the cache evicts the small values as the large
ones arrive; then the server sits idle. A non-compacting allocator keeps the
pages of the evicted small values, each pinned by a few survivors; Mesh gives
them back.

Reported per configuration (each a fresh ``redis-server``): the server's PSS
right after the fill, and after IDLE seconds with no command at all (the
headline: what a user gets without asking), Redis's own ``used_memory`` and,
under meshalloc, the server's ``MALLOCSTATS`` summary at exit. Configurations
run interleaved, rotating which goes first.

    jemalloc   Debian's redis-server as built (linked with libjemalloc)
    preload    the same binary under LD_PRELOAD=libmesh.so (benchlib's
               preload: Redis calls the unprefixed malloc, so meshalloc
               serves every allocation), with MALLOCSTATS=2
    malloc     optional (--configs): glibc's malloc cannot be preloaded
               over the jemalloc linked in, so this needs a redis-server
               built with MALLOC=libc (--glibc-server PATH)

Needs redis-server and redis-benchmark on PATH (Debian: redis-server,
redis-tools). Not part of the test suite.

    python perf/redis/lru.py [--rounds 2] [--idle 10] [--lib PATH] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import benchlib  # noqa: E402

MAXMEMORY = "100mb"
PHASES = ((240, 1_000_000), (492, 1_000_000))  # (value bytes, SET requests)
KEYSPACE = 1_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_cmd(port: int, *args: str) -> str:
    out = subprocess.run(["redis-cli", "-p", str(port)] + list(args), capture_output=True, text=True,
                         timeout=60)
    return out.stdout


def info_memory(port: int) -> dict:
    d = {}
    for line in redis_cmd(port, "INFO", "memory").splitlines():
        if ":" in line:
            k, v = line.strip().split(":", 1)
            d[k] = v
    return d


def wait_ready(port: int, proc: subprocess.Popen) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise RuntimeError("redis-server exited with %s" % proc.returncode)
        if redis_cmd(port, "PING").strip() == "PONG":
            return
        time.sleep(0.05)
    raise RuntimeError("redis-server did not answer")


def run_one(server: str, env: dict, idle: float, workdir: str) -> dict:
    port = free_port()
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--maxmemory", MAXMEMORY, "--maxmemory-policy", "allkeys-lru", "--dir", workdir,
            "--daemonize", "no", "--logfile", ""]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_ready(port, proc)
        base = benchlib.pss_bytes(proc.pid) // 1024
        t0 = time.monotonic()
        for size, n in PHASES:
            subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-n", str(n), "-r", str(KEYSPACE),
                            "-d", str(size), "-P", "16", "-q"], check=True, capture_output=True, timeout=600)
        fill_s = time.monotonic() - t0
        filled = benchlib.pss_bytes(proc.pid) // 1024
        series = [(0.0, filled)]
        t1 = time.monotonic()
        while time.monotonic() - t1 < idle:
            time.sleep(0.5)
            series.append((round(time.monotonic() - t1, 2), benchlib.pss_bytes(proc.pid) // 1024))
        mem = info_memory(port)
        keys = redis_cmd(port, "DBSIZE").strip()
        redis_cmd(port, "SHUTDOWN", "NOSAVE")
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {
        "base_kib": base, "filled_kib": filled, "idle_kib": series[-1][1], "fill_s": round(fill_s, 2),
        "used_memory": int(mem.get("used_memory", 0)), "keys": int(keys or 0), "series": series,
        "mallocstats": err.splitlines()[next((i for i, l in enumerate(err.splitlines()) if l.startswith("MESH COUNT:")),
                                            len(err.splitlines())):],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="the Mesh paper's Redis LRU experiment, side by side")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of idle after the fill (default 10)")
    ap.add_argument("--lib", help="path of libmesh.so")
    ap.add_argument("--configs", default="jemalloc,preload")
    ap.add_argument("--glibc-server", help="a redis-server built with MALLOC=libc, for the malloc configuration")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    for tool in ("redis-server", "redis-benchmark", "redis-cli"):
        if not shutil.which(tool):
            sys.exit("%s not found (Debian: apt-get install redis-server redis-tools)" % tool)
    names = [c for c in args.configs.split(",") if c]
    lib = benchlib.find_libmesh(sys.executable, args.lib) if "preload" in names else None
    base = benchlib.base_env()
    configs = {"jemalloc": ("redis-server", base)}
    if "preload" in names:
        configs["preload"] = ("redis-server", dict(base, MALLOCSTATS="2", **benchlib.config_env("preload", lib)))
    if args.glibc_server:
        configs["malloc"] = (args.glibc_server, base)
    for n in names:
        if n not in configs:
            sys.exit("unknown configuration %r (known: %s)" % (n, ", ".join(configs)))
    results = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as wd:
        for r in range(args.rounds):
            for n in benchlib.round_order(names, r):
                server, env = configs[n]
                res = run_one(server, env, args.idle, wd)
                results[n].append(res)
                print("round %d %-9s base %5.1f MiB  filled %6.1f MiB  idle %6.1f MiB  used_memory %5.1f MiB  keys %d  fill %.1f s"
                      % (r, n, res["base_kib"] / 1024, res["filled_kib"] / 1024, res["idle_kib"] / 1024, res["used_memory"] / 2**20,
                         res["keys"], res["fill_s"]), flush=True)
    print()
    print("%-9s %12s %12s %14s" % ("config", "filled MiB", "idle MiB", "used_memory"))
    for n in names:
        rs = results[n]
        print("%-9s %12.1f %12.1f %14.1f" % (n, statistics.median(x["filled_kib"] for x in rs) / 1024,
                                              statistics.median(x["idle_kib"] for x in rs) / 1024,
                                              statistics.median(x["used_memory"] for x in rs) / 2**20))
    if "preload" in results and results["preload"][-1]["mallocstats"]:
        print("\nmeshalloc's MALLOCSTATS at exit (last round):")
        print("\n".join(results["preload"][-1]["mallocstats"]))
    if args.json:
        meta = benchlib.machine_meta()
        meta.update({"maxmemory": MAXMEMORY, "phases": PHASES, "keyspace": KEYSPACE, "idle_s": args.idle,
                     "libmesh": lib})
        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
