"""Multi-threaded stress: remote frees through queues, realloc, a thread-exit
storm, content checks on every block and mesh_check_heap() == 0 at the end.

tests/c/stress.c takes ``seed workers iterations storm_threads``; the seed is
printed by the program and appears in the test id, so a failure replays with
``stress SEED ...``.
"""
import os
import random
import re

import pytest

# one fixed-but-new seed per session, printed in the test id
SESSION_SEED = int(os.environ.get("MESH_TEST_SEED", random.SystemRandom().randrange(1, 1 << 31)))


def run_stress(helpers, cbuild, config, seed, workers, iters, storm, timeout=240, **env):
    exe = cbuild("stress", config)
    r = helpers.run([exe, seed, workers, iters, storm], timeout=timeout, pss_cap=3 * helpers.GIB,
                    env=helpers.env(**env))
    if r.killed or r.returncode != 0 or not re.search(r"^stress ok seed=", r.stdout, re.M):
        pytest.fail(f"stress failed; replay with: stress {seed} {workers} {iters} {storm} "
                    f"(env {env or 'default'})\n{r.describe()}", pytrace=False)
    return r


@pytest.mark.parametrize("seed", [1, 2, SESSION_SEED])
def test_stress_remote_frees_and_thread_exit_storm(helpers, cbuild, seed):
    run_stress(helpers, cbuild, "release", seed, 4, 400000, 300)


def test_stress_with_debug_validators(helpers, cbuild):
    run_stress(helpers, cbuild, "debug", 3, 3, 60000, 150)


def test_thread_exit_storm_with_little_else_running(helpers, cbuild):
    run_stress(helpers, cbuild, "release", 4, 1, 2000, 800)


def test_stress_with_meshing_at_every_opportunity(helpers, cbuild, eager_meshing_env):
    run_stress(helpers, cbuild, "release", 5, 4, 400000, 200, **eager_meshing_env)


def test_stress_without_memfd(helpers, cbuild):
    run_stress(helpers, cbuild, "release", 6, 4, 100000, 200, MESH_MEMFD="0")


def run_realloc_grow(helpers, cbuild, config, threads, rounds, limit_kib, seed, timeout=240, **env):
    exe = cbuild("realloc_grow", config)
    args = [exe, threads, rounds, limit_kib, seed]
    r = helpers.run(args, timeout=timeout, pss_cap=3 * helpers.GIB, env=helpers.env(**env))
    m = re.search(r"^realloc_grow ok .* grown_in_place=(\d+) moved=(\d+)", r.stdout, re.M)
    if r.killed or r.returncode != 0 or not m:
        pytest.fail(f"realloc_grow failed; replay with: {' '.join(map(str, args[1:]))} "
                    f"(env {env or 'default'})\n{r.describe()}", pytrace=False)
    return int(m.group(1)), int(m.group(2))


@pytest.mark.parametrize("seed", [1, SESSION_SEED])
def test_concurrent_realloc_growth_keeps_contents(helpers, cbuild, seed):
    """Four threads grow blocks to 1 MiB at once beside small and large
    blocks of their own, content checked at every step. Each thread's
    growing block has the free pages after it to itself (arena.c's
    placement): most growth is in place. Before that, two threads' blocks
    were carved next to each other and copied each other away at most
    steps (about one copy per two in-place growths here)."""
    in_place, moved = run_realloc_grow(helpers, cbuild, "release", 4, 60, 1024, seed)
    assert in_place > 0
    assert moved * 5 < in_place, f"{moved} copies for {in_place} in-place growths"


def test_concurrent_realloc_growth_with_debug_validators(helpers, cbuild):
    run_realloc_grow(helpers, cbuild, "debug", 3, 12, 512, 3)


def test_concurrent_realloc_growth_meshing_at_every_opportunity(helpers, cbuild, eager_meshing_env):
    run_realloc_grow(helpers, cbuild, "release", 4, 30, 1024, 4, **eager_meshing_env)
