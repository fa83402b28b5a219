"""The documentation names every option and stats field the core has, so a
new knob or counter cannot ship undocumented (docs/options.md is where users
look)."""
import ctypes
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def core(libmesh):
    lib = ctypes.CDLL(str(libmesh))
    for f in ("mesh_option_name", "mesh_stats_name", "mesh_option_doc", "mesh_stats_doc"):
        getattr(lib, f).restype = ctypes.c_char_p
    return lib


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def test_every_option_is_documented_with_its_environment_variable(core):
    doc = read("docs/options.md")
    for i in range(core.mesh_option_count()):
        name = core.mesh_option_name(i).decode()
        assert f"`{name}`" in doc, f"option {name} missing from docs/options.md"
        assert f"`MESH_{name.upper()}`" in doc, f"MESH_{name.upper()} missing from docs/options.md"
        assert core.mesh_option_doc(i), f"option {name} has no doc string"


def test_every_stats_field_is_documented(core):
    doc = read("docs/options.md")
    for i in range(core.mesh_stats_count()):
        name = core.mesh_stats_name(i).decode()
        assert re.search(rf"`{re.escape(name)}`", doc), f"stats field {name} missing from docs/options.md"
        assert core.mesh_stats_doc(i), f"stats field {name} has no doc string"


def test_meshing_options_are_described_in_the_meshing_doc(core):
    doc = read("docs/meshing.md")
    for name in ("mesh", "period_ms", "max_pause_us", "probes", "max_occupancy_pct", "max_chain", "max_mappings"):
        assert f"`{name}`" in doc


def test_every_python_stats_field_is_documented(helpers, tmp_path):
    """The fields meshalloc.stats() adds to the core's (the hook counters of
    the extension's table, PSS, installed domains, size classes) are in
    docs/options.md and docs/python.md, and each has a doc line for
    stats_docs(). Read from the installed package (skipped without one)."""
    code = ("import json, meshalloc\n"
            "s = meshalloc.Stats\n"
            "print(json.dumps({'added': [n for n in s.field_names() if n not in s.CORE_FIELDS],\n"
            "                  'docs': meshalloc.stats_docs()}))\n")
    r = helpers.run([sys.executable, "-c", code], timeout=60, cwd=tmp_path, env=helpers.env())
    if r.returncode != 0 and "No module named" in r.stderr:
        pytest.skip("meshalloc is not installed for %s" % sys.executable)
    helpers.assert_ok(r, "Stats fields")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    added = got["added"]
    assert "obj_foreign_frees" in added and "pss_bytes" in added, added
    assert not [n for n in added if not got["docs"].get(n)], "a Stats field without a doc line"
    for rel in ("docs/options.md", "docs/python.md"):
        doc = read(rel)
        missing = [n for n in added if f"`{n}`" not in doc]
        assert not missing, f"Stats fields missing from {rel}: {missing}"
