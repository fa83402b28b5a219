"""Meshing with no API call (tests/c/mesh_idle.c, and a Python child).

A program that frees most of its heap and then only sleeps is compacted by
the on-demand meshing thread, which exits once its work is done; with
mesher_thread=0 nothing meshes while the program sleeps (the control). A
steady churn is not meshed for nothing. fork stops the thread (the parent
has one thread at the fork) and both processes go on.
"""
import json
import sys
import textwrap

import pytest

from test_meshing import SESSION_SEED, run_c


@pytest.mark.parametrize("seed", [1, SESSION_SEED])
def test_an_idle_program_is_compacted_without_a_call_and_the_thread_exits(helpers, cbuild, seed):
    r = run_c(helpers, cbuild, "mesh_idle", ["idle", seed], timeout=120)
    assert "idle ok" in r.stdout, r.describe()


def test_without_the_meshing_thread_an_idle_program_is_not_meshed(helpers, cbuild):
    r = run_c(helpers, cbuild, "mesh_idle", ["idle", 1], timeout=120, env_extra={"MESH_MESHER_THREAD": "0"})
    assert "idle ok" in r.stdout, r.describe()


def test_the_meshing_thread_with_debug_validators(helpers, cbuild):
    r = run_c(helpers, cbuild, "mesh_idle", ["idle", SESSION_SEED], config="debug", timeout=240)
    assert "idle ok" in r.stdout, r.describe()


def test_a_steady_churn_is_not_meshed_for_nothing(helpers, cbuild):
    r = run_c(helpers, cbuild, "mesh_idle", ["churn", SESSION_SEED], timeout=120)
    assert "churn ok" in r.stdout, r.describe()


@pytest.mark.parametrize("seed", [1, SESSION_SEED])
def test_fork_stops_the_meshing_thread_and_both_processes_go_on(helpers, cbuild, seed):
    r = run_c(helpers, cbuild, "mesh_idle", ["fork", seed], timeout=120)
    assert "fork ok" in r.stdout, r.describe()


PY_CHILD = textwrap.dedent("""
    import json, os, random, sys, time
    import meshalloc
    from meshalloc._remote import pss_bytes as pss

    def threads():
        with open("/proc/self/status") as f:
            return int(f.read().split("Threads:")[1].split()[0])

    rng = random.Random(5)
    d = {}
    for i in range(200000):
        d["k%07d" % i] = ("v-%d" % i, i)
    peak = pss()
    for i in rng.sample(range(200000), 180000):
        del d["k%07d" % i]
    after = pss()
    # light activity, and no meshalloc call until the end
    t0 = time.monotonic()
    while time.monotonic() - t0 < 6 and (threads() > 1 or time.monotonic() - t0 < 1):
        time.sleep(0.1)
        junk = ["x%d" % i for i in range(20)]
    settled = pss()
    ok = all(d["k%07d" % i] == ("v-%d" % i, i) for i in range(200000) if "k%07d" % i in d)
    out = {"peak": peak, "after": after, "settled": settled, "ok": ok, "threads": threads()}
    if meshalloc.is_installed() or meshalloc.is_preloaded():
        s = meshalloc.stats()
        out.update(meshes_thread=s.meshes_thread)
    print(json.dumps(out))
""")


def run_dict_child(helpers, script, **env):
    r = helpers.run([sys.executable, str(script)], timeout=120, pss_cap=2 * helpers.GIB, env=helpers.env(**env))
    helpers.assert_ok(r, f"dict child ({env})")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ok"], out
    return out


@pytest.mark.parametrize("mode", ["plugin", "preload"])
def test_a_python_program_that_deletes_most_of_a_dict_gets_memory_back_without_a_call(helpers, libmesh, tmp_path,
                                                                                     mode):
    script = tmp_path / "child.py"
    script.write_text(PY_CHILD)
    env = {"MESHALLOC": "1"} if mode == "plugin" else {"LD_PRELOAD": str(libmesh), "PYTHONMALLOC": "malloc"}
    out = run_dict_child(helpers, script, **env)
    control = run_dict_child(helpers, script)  # pymalloc keeps what the deletion left pinned
    assert out["meshes_thread"] > 0, out  # the thread did the work, not a compact() call
    assert out["threads"] == 1, out  # the thread exited
    assert out["settled"] < 0.6 * control["settled"], (out, control)
