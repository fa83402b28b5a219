"""The public C API (csrc/mesh.h) behaves as its contract says.

Runs tests/c/test_api.c (string-named checks), tests/c/test_order.c
(randomized allocation order) and tests/c/options_dump.c (options read from
the environment), each in a fresh process linked against the core sources.
"""
import os
import re
import shutil
import sys
import tempfile

import pytest


def failing_checks(stdout: str) -> list[str]:
    return re.findall(r"^FAIL (\S+)", stdout, re.M)


def assert_all_checks_pass(r, what):
    summary = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M)
    if r.killed or r.returncode != 0 or not summary or summary.group(2) != "0":
        pytest.fail(f"{what}: failing checks {failing_checks(r.stdout)}\n{r.describe(tail=120)}",
                    pytrace=False)
    assert int(summary.group(1)) > 0


@pytest.mark.parametrize("config", ["release", "debug"])
def test_api_contract_holds(helpers, cbuild, config):
    exe = cbuild("test_api", config)
    r = helpers.run([exe, "1"], timeout=300, pss_cap=3 * helpers.GIB, env=helpers.env())
    assert_all_checks_pass(r, f"test_api ({config})")
    assert r.stderr.strip() == "", f"unexpected messages on stderr:\n{r.stderr}"


def test_api_contract_holds_with_another_seed(helpers, cbuild):
    exe = cbuild("test_api", "release")
    r = helpers.run([exe, "987654321"], timeout=300, pss_cap=3 * helpers.GIB, env=helpers.env())
    assert_all_checks_pass(r, "test_api (seed 987654321)")


@pytest.mark.parametrize("config", ["release", "debug"])
def test_api_contract_holds_with_a_small_arena_and_direct_blocks(helpers, cbuild, config):
    """MESH_ARENA_GB=1: blocks bigger than the arena are mapped on their own
    (malloc, calloc, memalign, realloc up, down to a small block, free)."""
    exe = cbuild("test_api", config)
    r = helpers.run([exe, "3"], timeout=300, pss_cap=3 * helpers.GIB, env=helpers.env(MESH_ARENA_GB="1"))
    assert_all_checks_pass(r, f"test_api with MESH_ARENA_GB=1 ({config})")
    assert "info direct_blocks" in r.stdout and "direct_blocks skipped" not in r.stdout, r.stdout


def test_api_contract_holds_without_memfd(helpers, cbuild):
    """MESH_MEMFD=0 forces the fallback: everything still works and meshing
    is reported unavailable."""
    exe = cbuild("test_api", "release")
    r = helpers.run([exe, "2"], timeout=300, pss_cap=3 * helpers.GIB, env=helpers.env(MESH_MEMFD="0"))
    assert_all_checks_pass(r, "test_api with MESH_MEMFD=0")
    assert "info meshing_available 0" in r.stdout


def test_disabling_memfd_warns_exactly_once(helpers, cbuild):
    """Running without meshing is announced with one warning (docs/design.md,
    "Hostile environments")."""
    exe = cbuild("options_dump", "release")
    r = helpers.run([exe], timeout=60, env=helpers.env(MESH_MEMFD="0"))
    assert r.returncode == 0 and "meshing_available 0" in r.stdout, r.describe()
    warnings = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(warnings) == 1, f"expected exactly one warning on stderr, got {warnings}"


@pytest.mark.parametrize("mode", ["default", "1", "2"])
def test_allocation_order_within_spans_is_randomized(helpers, cbuild, mode):
    """Default/1: each span starts at a random slot; 2: every object at random."""
    exe = cbuild("test_order", "release")
    env = helpers.env() if mode == "default" else helpers.env(MESH_SHUFFLE=mode)
    r = helpers.run([exe], timeout=120, env=env)
    assert_all_checks_pass(r, "test_order")
    assert re.search(r"^info shuffle %s$" % ("1" if mode == "default" else mode), r.stdout, re.M), r.describe()


def test_address_order_is_caught_by_the_order_checks(helpers, cbuild):
    """MESH_SHUFFLE=0 hands out slots in address order: the checks must see it."""
    exe = cbuild("test_order", "release")
    r = helpers.run([exe], timeout=120, env=helpers.env(MESH_SHUFFLE="0"))
    assert r.returncode != 0 and len(failing_checks(r.stdout)) >= 8, r.describe()


def _signature(r):
    m = re.search(r"^signature (.*)$", r.stdout, re.M)
    assert m, r.describe()
    return m.group(1)


def test_allocation_order_differs_between_processes(helpers, cbuild):
    exe = cbuild("test_order", "release")
    runs = [helpers.run([exe], timeout=120, env=helpers.env()) for _ in range(2)]
    for r in runs:
        assert not r.killed, r.describe()
    a, b = (_signature(r) for r in runs)
    assert a != b, f"two processes allocated the 64-byte class in the same order: {a}"


def test_allocation_order_follows_the_seed_option(helpers, cbuild):
    exe = cbuild("test_order", "release")
    probe = helpers.run([exe], timeout=120, env=helpers.env())
    m = re.search(r"^info seed-option (\S+)$", probe.stdout, re.M)
    if not m:
        pytest.skip("the core has no seed option; order randomness is covered by the test above")
    var = "MESH_" + m.group(1).upper()
    sig = {}
    for seed in ("1", "2"):
        r = helpers.run([exe], timeout=120, env=helpers.env(**{var: seed}))
        assert not r.killed, r.describe()
        sig[seed] = _signature(r)
    assert sig["1"] != sig["2"], f"{var}=1 and {var}=2 gave the same allocation order"
    again = helpers.run([exe], timeout=120, env=helpers.env(**{var: "1"}))
    assert _signature(again) == sig["1"], f"{var}=1 twice gave different orders: the seed does not reproduce"


def _options(r):
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^option (\S+) (-?\d+)$", r.stdout, re.M)}


def test_options_are_read_from_the_environment(helpers, cbuild):
    exe = cbuild("options_dump", "release")
    r = helpers.run([exe], timeout=60, env=helpers.env(MESH_ABORT_ON_ERROR="0"))
    assert r.returncode == 0, r.describe()
    assert _options(r).get("abort_on_error") == 0, r.describe()


def test_invalid_option_value_warns_and_keeps_the_default(helpers, cbuild):
    exe = cbuild("options_dump", "release")
    r = helpers.run([exe], timeout=60, env=helpers.env(MESH_ABORT_ON_ERROR="banana"))
    assert r.returncode == 0, r.describe()
    assert _options(r).get("abort_on_error") == 1, r.describe()
    assert re.search(r"abort_on_error|ABORT_ON_ERROR", r.stderr), \
        f"no warning naming the option on stderr:\n{r.describe()}"


def test_every_option_has_a_documented_environment_variable(helpers, cbuild, core_options):
    assert core_options, "the core reports no options"
    assert "abort_on_error" in core_options
    assert core_options["abort_on_error"] == 1


def test_environment_options_are_ignored_for_setuid_programs(helpers, cbuild, tmp_path_factory):
    """In secure-execution mode (AT_SECURE: a setuid program run by another
    user) MESH_* variables are ignored, like glibc's tunables (docs/options.md,
    "Options"; docs/design.md, "Hostile environments")."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a setuid binary and run it as nobody")
    exe = cbuild("options_dump", "release")
    d = tempfile.mkdtemp(prefix="mesh-suid-", dir="/tmp")  # reachable by nobody
    try:
        os.chmod(d, 0o755)
        target = os.path.join(d, "options_dump")
        shutil.copy(exe, target)
        as_nobody = ("import os, sys; os.setgid(65534); os.setuid(65534); "
                     "os.execv(sys.argv[1], sys.argv[1:])")
        results = {}
        for mode in (0o755, 0o4755):
            os.chmod(target, mode)
            r = helpers.run([sys.executable, "-c", as_nobody, target], timeout=60,
                            env=helpers.env(MESH_ABORT_ON_ERROR="0"))
            assert r.returncode == 0, r.describe()
            results[mode] = _options(r).get("abort_on_error")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    assert results[0o755] == 0, "control: a plain program run as nobody reads MESH_ABORT_ON_ERROR"
    assert results[0o4755] == 1, "a setuid program honoured MESH_ABORT_ON_ERROR from the environment"
