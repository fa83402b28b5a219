"""Hazards (docs/design.md, "Hostile environments"; docs/meshing.md, "Why no
write is lost: the write barrier"), each in a process of its own
(tests/c/hazards.c):
real faults still crash (or reach the program's own handler) whatever the
core does with SIGSEGV; SIGBUS is never taken for a mesh fault; a heap with
2 % survivors keeps their contents and stays far from vm.max_map_count;
no memfd (seccomp) and a small ``ulimit -v`` degrade to a working allocator.
"""
import re
import signal
import sys

import pytest


def run_hazard(helpers, cbuild, case, timeout=120, **env):
    exe = cbuild("hazards", "release")
    r = helpers.run([exe, case], timeout=timeout, pss_cap=3 * helpers.GIB, env=helpers.env(**env))
    assert not r.killed, r.describe()
    return r


@pytest.mark.parametrize("case", ["segv-plain", "segv-ignored"])
def test_real_segfault_still_kills_with_sigsegv(helpers, cbuild, case):
    r = run_hazard(helpers, cbuild, case)
    assert "FAULTING" in r.stdout, r.describe()
    assert r.returncode == -signal.SIGSEGV, f"expected death by SIGSEGV\n{r.describe()}"


@pytest.mark.parametrize("case", ["segv-handler-before", "segv-handler-after"])
def test_real_segfault_reaches_the_programs_handler(helpers, cbuild, case):
    r = run_hazard(helpers, cbuild, case)
    assert r.returncode == 42 and f"HANDLER {int(signal.SIGSEGV)}" in r.stdout, r.describe()


def test_sigbus_is_not_mistaken_for_a_mesh_fault(helpers, cbuild):
    r = run_hazard(helpers, cbuild, "sigbus-file", timeout=60)
    assert "FAULTING" in r.stdout, r.describe()
    assert r.returncode == -signal.SIGBUS, f"expected death by SIGBUS\n{r.describe()}"


def test_sparse_heap_keeps_survivors_and_mapping_count_low(helpers, cbuild):
    r = run_hazard(helpers, cbuild, "fragmented", timeout=240)
    assert r.returncode == 0 and "fragmented: ok" in r.stdout, r.describe()


def test_memfd_blocked_by_seccomp_degrades_with_one_warning(helpers, cbuild):
    r = run_hazard(helpers, cbuild, "no-memfd-seccomp")
    assert r.returncode == 0 and "no-memfd-seccomp: ok" in r.stdout, r.describe()
    warnings = [line for line in r.stderr.splitlines() if line.strip()]
    assert 1 <= len(warnings) <= 2, f"expected one warning (one more from the fork child at most):\n{r.stderr}"


def test_fallocate_blocked_by_seccomp_returns_pages_and_warns_once_per_kind(helpers, cbuild):
    r = run_hazard(helpers, cbuild, "no-fallocate-seccomp", timeout=240)
    assert r.returncode == 0 and "no-fallocate-seccomp: ok" in r.stdout, r.describe()
    warnings = [line for line in r.stderr.splitlines() if "meshalloc: warning" in line]
    assert 2 <= len(warnings) <= 3 and len(set(warnings)) == len(warnings), r.stderr
    assert "meshing is off" in r.stderr and "Meshing:            off (memfd arena" in r.stdout, r.describe()
    assert sum("recurring test warning" in w for w in warnings) == 1, r.stderr
    m = re.search(r"^Warning repeated: +recurring test warning 0 \((\d+) times, printed once\)$", r.stdout, re.M)
    assert m and int(m.group(1)) == 50, r.stdout


@pytest.mark.parametrize("program,args", [("test_api", ["3"]), ("fork", ["isolation"]), ("fork", ["threads"])])
def test_small_address_space_limit_degrades_to_a_working_allocator(helpers, cbuild, program, args):
    """``ulimit -v 2 GiB`` is far below the default 64 GiB reservation."""
    exe = cbuild(program, "release")
    limit = 2 << 30
    wrapper = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (%d, %d)); "
               "os.execv(sys.argv[1], sys.argv[1:])" % (limit, limit))
    r = helpers.run([sys.executable, "-c", wrapper, exe, *args], timeout=240, pss_cap=3 * helpers.GIB,
                    env=helpers.env())
    helpers.assert_ok(r, f"{program} {' '.join(args)} under ulimit -v 2 GiB")
    if program == "test_api":
        assert re.search(r"^\d+ passed, 0 failed$", r.stdout, re.M), r.describe()


def test_sparse_heap_keeps_survivors_with_eager_meshing(helpers, cbuild, eager_meshing_env):
    r = run_hazard(helpers, cbuild, "fragmented", timeout=240, **eager_meshing_env)
    assert r.returncode == 0 and "fragmented: ok" in r.stdout, r.describe()
