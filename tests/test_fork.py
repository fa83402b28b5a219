"""fork gives the child its own copy of the heap, in both directions, for
objects of 24 B ... 100 kB, with threads running, nested, with meshed spans,
and without unbounded growth; posix_spawn and vfork+exec just work
(docs/design.md and docs/meshing.md, "fork"). Runs tests/c/fork.c, one case
per process.
"""
import pytest

CASES = ["isolation", "threads", "nested", "spawn", "growth", "nofd", "snapshot"]


def run_fork_case(helpers, cbuild, case, config="release", timeout=240, **env):
    exe = cbuild("fork", config)
    r = helpers.run([exe, case], timeout=timeout, pss_cap=3 * helpers.GIB, env=helpers.env(**env))
    helpers.assert_ok(r, f"fork {case} ({config}, env {env or 'default'})")
    return r


@pytest.mark.parametrize("case", CASES)
def test_fork_child_gets_its_own_heap(helpers, cbuild, case):
    r = run_fork_case(helpers, cbuild, case)
    if case == "growth":  # 6 children and a chain of 4 each report their memory
        assert r.stdout.count("growth depth") == 10, r.describe()


@pytest.mark.parametrize("case", ["isolation", "threads", "nested", "nofd", "snapshot"])
def test_fork_child_gets_its_own_heap_with_debug_validators(helpers, cbuild, case):
    run_fork_case(helpers, cbuild, case, config="debug")


@pytest.mark.parametrize("case", ["isolation", "threads", "growth"])
def test_fork_while_meshing_eagerly(helpers, cbuild, eager_meshing_env, case):
    run_fork_case(helpers, cbuild, case, **eager_meshing_env)


@pytest.mark.parametrize("case", ["isolation", "threads", "nested", "spawn"])
def test_fork_isolation_without_memfd(helpers, cbuild, case):
    run_fork_case(helpers, cbuild, case, MESH_MEMFD="0")


@pytest.mark.parametrize("case", ["isolation", "threads", "nested", "snapshot"])
def test_fork_copy_fallback_stays_exact(helpers, cbuild, case):
    """MESH_FORK_FREEZE=0 takes the path a fork falls back to when the
    memfd cannot be frozen: the parent copies the meshed pages."""
    run_fork_case(helpers, cbuild, case, MESH_FORK_FREEZE="0")


FROZEN_CASES = ["shared", "never", "second", "refused"]


def run_frozen_case(helpers, cbuild, case, config="release", **env):
    exe = cbuild("fork_frozen", config)
    r = helpers.run([exe, case], timeout=300, pss_cap=2 * helpers.GIB, env=helpers.env(**env))
    helpers.assert_ok(r, f"fork_frozen {case} ({config}, env {env or 'default'})")
    return r


@pytest.mark.parametrize("case", FROZEN_CASES)
def test_fork_shares_the_meshed_pages_with_its_children(helpers, cbuild, case):
    """tests/c/fork_frozen.c: idle children add next to nothing for the
    meshed pages, frozen spans are never meshed again, a second fork
    freezes what was meshed since, a freeze the kernel refuses midway falls
    back to the copy."""
    r = run_frozen_case(helpers, cbuild, case)
    assert f"fork_frozen {case}: ok" in r.stdout, r.describe()


@pytest.mark.parametrize("case", ["never", "second", "refused"])
def test_frozen_generations_keep_a_valid_heap_with_debug_validators(helpers, cbuild, case):
    run_frozen_case(helpers, cbuild, case, config="debug")
