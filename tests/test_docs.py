"""The documentation names every option and stats field the core has, so a
new knob or counter cannot ship undocumented (docs/options.md is where users
look)."""
import ctypes
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


def _stats_module():
    """meshalloc/_stats.py of this tree, loaded by path (pure Python: no
    build needed, and never an installed copy of another version)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("meshalloc_stats_under_test",
                                                  os.path.join(ROOT, "meshalloc", "_stats.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses looks the module up
    spec.loader.exec_module(mod)
    return mod


def test_every_python_stats_field_is_documented():
    """The fields meshalloc.stats() adds to the core's (hook counters, PSS,
    installed domains) are in docs/options.md and docs/python.md, and each
    has a doc line for stats_docs()."""
    mod = _stats_module()
    core = set(mod.CORE_FIELDS)
    added = [n for n in mod.Stats.field_names() if n not in core]
    assert set(added) == set(mod.PY_FIELD_DOCS), "a Stats field without a doc line (PY_FIELD_DOCS)"
    for rel in ("docs/options.md", "docs/python.md"):
        doc = read(rel)
        missing = [n for n in added if f"`{n}`" not in doc]
        assert not missing, f"Stats fields missing from {rel}: {missing}"
