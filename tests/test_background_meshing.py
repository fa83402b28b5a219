"""The optional background meshing thread (MESH_BACKGROUND_MS) compacts a
program that stopped freeing; without it, nothing meshes while the program
sleeps (period_ms=0 turns off meshing on frees). tests/c/mesh_background.c."""
import re


def run_background(helpers, cbuild, **env):
    exe = cbuild("mesh_background", "release")
    r = helpers.run([exe], timeout=60, pss_cap=helpers.GIB, env=helpers.env(**env))
    helpers.assert_ok(r, "mesh_background")
    m = re.search(r"meshes (\d+) \(before the sleep (\d+)\) corrupt 0 check 0", r.stdout)
    assert m, r.describe()
    return int(m.group(1)) - int(m.group(2))


def test_background_thread_meshes_an_idle_program(helpers, cbuild):
    assert run_background(helpers, cbuild, MESH_BACKGROUND_MS="50") > 0


def test_no_background_thread_by_default(helpers, cbuild):
    assert run_background(helpers, cbuild) == 0
