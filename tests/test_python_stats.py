"""meshalloc.stats(): the Stats dataclass against the C tables, the CLI's JSON,
the package's typing (py.typed, mypy --strict when installed).

The hook counters themselves are checked in fresh interpreters by
tests/test_python_install.py (scenarios ``stats``, ``stats_threads``,
``stats_fork`` in tests/py/install_checks.py), on every CPython.
"""
from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A neutral working directory from which the installed package (with
    its extension) is the one imported; skips when there is none."""
    cwd = tmp_path_factory.mktemp("stats-neutral")
    p = subprocess.run([sys.executable, "-c", "import meshalloc._meshalloc"], cwd=cwd,
                       capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        pytest.skip("meshalloc with its extension is not installed for %s" % sys.executable)
    return cwd


def _core_names(libmesh, table):
    lib = ctypes.CDLL(str(libmesh))
    fn = getattr(lib, table)
    fn.restype = ctypes.c_char_p
    names, i = [], 0
    while fn(i) is not None:
        names.append(fn(i).decode())
        i += 1
    return names


def test_stats_fields_are_the_c_tables(helpers, installed, libmesh):
    """Stats has every field of the core's stats table, by name and in
    order, then the hook counters of the extension's table, then the
    Python side's; SizeClassStats has mesh_class_stats's fields. They are
    read from the C tables, so a counter added in C shows up with nothing
    to change in Python. Both backends."""
    code = ("import dataclasses, json, meshalloc\n"
            "s = meshalloc.stats()\n"
            "print(json.dumps({'core': list(s.CORE_FIELDS), 'hooks': list(s.HOOK_FIELDS),\n"
            "    'fields': list(s.field_names()), 'extra': s.extra, 'dict': list(s.to_dict()),\n"
            "    'classes': list(meshalloc.SizeClassStats.FIELDS), 'docs': meshalloc.stats_docs(),\n"
            "    'types': {f.name: type(getattr(s, f.name)).__name__ for f in dataclasses.fields(s)}}))\n")
    core = _core_names(libmesh, "mesh_stats_name")
    classes = _core_names(libmesh, "mesh_class_stats_name")
    for got in json_from_both_backends(helpers, installed, code, "Stats fields"):
        assert got["core"] == core, set(got["core"]) ^ set(core)
        hooks = ["%s_%s" % (d, k) for d in ("raw", "mem", "obj")
                 for k in ("allocs", "reallocs", "frees", "foreign_reallocs", "foreign_frees")]
        assert got["hooks"] == hooks + ["foreign_reallocs", "foreign_frees"], got["hooks"]
        tail = ["pss_bytes", "installed_domains", "size_classes", "extra"]
        assert got["fields"] == core + got["hooks"] + tail and got["extra"] == {}
        assert got["dict"] == got["fields"][:-1]
        assert got["classes"] == classes and "meshed_spans" in classes
        assert all(got["types"][n] == "int" for n in got["fields"][:-3]), got["types"]
        assert all(got["docs"].get(n) for n in got["fields"]), [n for n in got["fields"] if not got["docs"].get(n)]


def test_to_dict_round_trip_keeps_unknown_fields_in_extra(helpers, installed):
    code = ("import json, meshalloc\n"
            "s = meshalloc.stats(pss=True)\n"
            "d = s.to_dict(); d['brand_new'] = 7\n"
            "t = meshalloc.Stats.from_dict(d)\n"
            "hash(s)\n"  # a frozen snapshot: usable as a key
            "print(json.dumps({'same': meshalloc.Stats.from_dict(json.loads(s.to_json())) == s,\n"
            "    'extra': t.extra, 'back': t.to_dict() == d, 'pss': s.pss_bytes,\n"
            "    'totals': s.foreign_frees == s.raw_foreign_frees + s.mem_foreign_frees + s.obj_foreign_frees}))\n")
    for got in json_from_both_backends(helpers, installed, code, "to_dict round trip"):
        assert got == {"same": True, "extra": {"brand_new": 7}, "back": True, "pss": got["pss"], "totals": True}
        assert got["pss"] > 0


def json_from_both_backends(helpers, cwd, code, what, timeout=60):
    """The JSON last printed by code in a fresh interpreter under MESHALLOC=1,
    with the extension's backend and then with the cffi one."""
    for env in ({"MESHALLOC": "1"}, {"MESHALLOC": "1", "MESHALLOC_BACKEND": "cffi"}):
        r = helpers.run([sys.executable, "-c", code], timeout=timeout, cwd=cwd, env=helpers.env(**env))
        helpers.assert_ok(r, "%s (%s)" % (what, env))
        yield json.loads(r.stdout.strip().splitlines()[-1])


def test_size_classes_count_the_live_objects_of_each_class(helpers, installed):
    """stats().size_classes: the class of 64-byte objects holds the strings
    kept alive, the per-class objects add up to small_objects_in_use, and the
    classes survive a JSON round trip. Both backends."""
    code = ("import json, meshalloc\n"
            "keep = [b'x' * 20 + b'%07d' % i for i in range(50000)]\n"  # bytes of 60-64 B each
            "s = meshalloc.stats()\n"
            "c64 = [c for c in s.size_classes if c.object_size == 64]\n"
            "total = sum(c.objects_in_use for c in s.size_classes)\n"
            "back = meshalloc.Stats.from_dict(json.loads(s.to_json()))\n"
            "print(json.dumps({'c64': c64[0].to_dict() if c64 else None, 'total': total,\n"
            "                  'small': s.small_objects_in_use, 'round_trip': back == s}))\n")
    for got in json_from_both_backends(helpers, installed, code, "size_classes"):
        c64 = got["c64"]
        assert c64 and c64["objects_in_use"] >= 50000, got
        assert c64["slots"] >= c64["objects_in_use"] and c64["spans"] * c64["span_bytes"] >= c64["slots"] * 64, got
        assert 0 < c64["occupancy"] <= 1 and c64["spans"] == c64["spans_attached"] + c64["spans_partial"] + c64["spans_full"]
        assert abs(got["total"] - got["small"]) <= got["small"] // 100 + 64, got
        assert got["round_trip"], got


def test_cffi_backend_reads_the_preloaded_heap(helpers, installed, libmesh):
    """Under LD_PRELOAD the cffi backend reads the counters of the preloaded
    heap the interpreter allocates from: its live objects and size classes
    (MESHALLOC=1 would switch to the extension, so this is the cffi path)."""
    code = ("import json, meshalloc\n"
            "keep = [b'x' * 20 + b'%07d' % i for i in range(50000)]\n"
            "s = meshalloc.stats()\n"
            "print(json.dumps({'backend': meshalloc.backend(), 'preloaded': meshalloc.is_preloaded(),\n"
            "    'small': s.small_objects_in_use, 'classes': len(s.size_classes),\n"
            "    'owned': meshalloc.owns(id(keep[0]))}))\n")
    env = helpers.env(LD_PRELOAD=str(libmesh), PYTHONMALLOC="malloc", MESHALLOC_BACKEND="cffi")
    r = helpers.run([sys.executable, "-c", code], timeout=60, cwd=installed, env=env)
    helpers.assert_ok(r, "cffi backend under LD_PRELOAD")
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["backend"] == "cffi" and got["preloaded"] and got["owned"], got
    assert got["small"] >= 50000 and got["classes"] > 0, got


def test_span_pages_option_sets_the_span_size_of_small_classes(helpers, installed):
    """MESH_SPAN_PAGES: by default the 64-byte class uses one-page spans (64
    slots: they mesh at higher occupancy); MESH_SPAN_PAGES=4 gives it
    4-page spans of 256 slots; a class that needs more pages for 8 objects
    keeps them either way."""
    code = ("import json, meshalloc\n"
            "keep = [b'x' * 20 + b'%07d' % i for i in range(2000)] + [b'y' * 2000 for i in range(64)]\n"
            "s = meshalloc.stats()\n"
            "print(json.dumps({c.object_size: c.span_bytes for c in s.size_classes if c.spans}))\n")
    got = {}
    for pages in ("", "1", "4"):
        env = {"MESHALLOC": "1"}
        if pages:
            env["MESH_SPAN_PAGES"] = pages
        r = helpers.run([sys.executable, "-c", code], timeout=60, cwd=installed, env=helpers.env(**env))
        helpers.assert_ok(r, "span_pages=%r" % pages)
        got[pages] = {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    assert got[""][64] == got["1"][64] == 4096, got
    assert got["4"][64] == 16384, got
    big = [k for k in got["1"] if k >= 2048]
    assert big and all(got["1"][k] == got["4"][k] >= 8 * k for k in big), got


def test_span_tail_waste_up_to_1_28_keeps_spans_at_one_page(helpers, installed):
    """The span of a class is the fewest pages whose tail waste is at most
    1/28: 208, 304 and 496 bytes fit one page with 3.1-3.5 % left over
    (they took 2, 3 and 4 pages under the old 1/40), 416 bytes two pages
    (3.5 %; 3 before). Fewer slots per span mesh at higher occupancy."""
    code = ("import json, sys, meshalloc\n"
            "keep = [b'%d' % i + b'x' * n for n in (160, 260, 370, 450) for i in range(100)]\n"
            "s = meshalloc.stats()\n"
            "print(json.dumps({c.object_size: c.span_bytes for c in s.size_classes if c.spans}))\n")
    r = helpers.run([sys.executable, "-c", code], timeout=60, cwd=installed, env=helpers.env(MESHALLOC="1"))
    helpers.assert_ok(r, "span sizes")
    got = {int(k): v for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items()}
    assert (got[208], got[304], got[416], got[496]) == (4096, 4096, 8192, 4096), got


def test_cli_stats_json(helpers, installed):
    """python -m meshalloc stats --json prints JSON with every Stats field;
    under MESHALLOC=1 the CLI's own interpreter is installed."""
    r = helpers.run([sys.executable, "-c", "import json, meshalloc; print(json.dumps(meshalloc.Stats.field_names()))"],
                    timeout=60, cwd=installed, env=helpers.env())
    helpers.assert_ok(r, "Stats.field_names()")
    names = json.loads(r.stdout)
    for env, domains in (({}, []), ({"MESHALLOC": "1"}, ["mem", "obj"])):
        r = helpers.run([sys.executable, "-m", "meshalloc", "stats", "--json"], timeout=60,
                        cwd=installed, env=helpers.env(**env))
        helpers.assert_ok(r, "meshalloc stats --json")
        out = json.loads(r.stdout)
        assert set(out) == {"preloaded", "backend", "stats"}
        stats = out["stats"]
        assert [k for k in stats] == [n for n in names if n != "extra"]
        assert stats["installed_domains"] == domains
        assert stats["pss_bytes"] > 0, "the CLI reads PSS"
        if domains:
            assert stats["obj_allocs"] > 0
    r = helpers.run([sys.executable, "-m", "meshalloc", "stats", "--docs"], timeout=60,
                    cwd=installed, env=helpers.env(MESHALLOC="1"))
    helpers.assert_ok(r, "meshalloc stats --docs")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("obj_foreign_frees "))
    assert "does not own" in line
    assert any(ln.split()[:2] == ["installed_domains", "mem,obj"] for ln in r.stdout.splitlines())


def test_py_typed_is_installed(installed):
    p = subprocess.run([sys.executable, "-c", "import meshalloc, os; print(os.path.dirname("
                        "meshalloc.__file__))"], cwd=installed, capture_output=True, text=True,
                       timeout=60, check=True)
    pkg = Path(p.stdout.strip())
    for name in ("py.typed", "_meshalloc.pyi"):
        assert (pkg / name).is_file(), "%s is not installed with the package" % name


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_mypy_strict(helpers, tmp_path):
    """The public API type-checks under mypy --strict (skipped without mypy)."""
    files = [str(ROOT / "meshalloc" / n) for n in ("__init__.py", "cli.py")]
    r = helpers.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental",
                     "--cache-dir", str(tmp_path / "cache"), *files], timeout=300, cwd=ROOT,
                    env=helpers.env())
    helpers.assert_ok(r, "mypy --strict")


def test_fork_child_shares_the_heap_meshed_or_not(helpers, installed):
    """The arena is private anonymous memory but for meshing destinations:
    a fork child shares the parent's objects copy-on-write (its private
    dirty memory stays small, its memfd holds nothing it was not given).
    The memfd's pages (promoted_pages) are frozen, not copied: nothing is
    copied, the child's memfd stays empty, the parent's pages now map a
    frozen generation (frozen_pages, freezes) and its current memfd is
    empty. Both backends' stats read it."""
    code = ("import json, os, meshalloc\n"
            "def private_dirty():\n"
            "    with open('/proc/self/smaps_rollup') as f:\n"
            "        return sum(int(l.split()[1]) * 1024 for l in f if l.startswith('Private_Dirty:'))\n"
            "def fork_and_measure(keep):\n"
            "    r, w = os.pipe()\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        dirty = private_dirty()\n"
            "        ok = all(k == b'y' * 200 + b'%07d' % i for i, k in keep)\n"
            "        s = meshalloc.stats()\n"
            "        os.write(w, json.dumps({'memfd': s.arena_memfd_bytes, 'dirty': dirty, 'ok': ok}).encode())\n"
            "        os._exit(0)\n"
            "    os.close(w)\n"
            "    child = json.loads(os.read(r, 4096))\n"
            "    os.waitpid(pid, 0)\n"
            "    return child\n"
            "meshalloc.set_option('mesh', 0)\n"
            "keep = [(i, b'y' * 200 + b'%07d' % i) for i in range(200000)]\n"  # ~50 MB of live objects
            "s = meshalloc.stats()\n"
            "unmeshed = {'live': s.small_bytes_in_use, 'promoted': s.promoted_pages, 'child': fork_and_measure(keep)}\n"
            "meshalloc.set_option('mesh', 1)\n"
            "keep = keep[::4]\n"
            "meshalloc.compact()\n"
            # (no pass after this one: a pass between the fork and the last
            # stats call, which a loaded machine made likely, promotes pages
            # the fork never saw)
            "meshalloc.set_option('period_ms', 0)\n"
            "s = meshalloc.stats()\n"
            "meshed = {'promoted': s.promoted_pages, 'memfd': s.arena_memfd_bytes, 'child': fork_and_measure(keep)}\n"
            "s = meshalloc.stats()\n"
            "meshed.update(copied=s.fork_copy_bytes_last, frozen=s.frozen_pages, freezes=s.freezes,\n"
            "              promoted_after=s.promoted_pages)\n"
            "print(json.dumps({'unmeshed': unmeshed, 'meshed': meshed}))\n")
    for got in json_from_both_backends(helpers, installed, code, "fork sharing", timeout=120):
        un, me = got["unmeshed"], got["meshed"]
        assert un["live"] > 40 << 20 and un["promoted"] < 64 and un["child"]["ok"], got  # (start-up meshes)
        # nothing meshed: the child's heap is the parent's pages, shared
        assert un["child"]["memfd"] < 1 << 20 and un["child"]["dirty"] < un["live"] // 4, got
        # meshed: the destinations' pages were frozen, shared with the child, not copied
        assert me["promoted"] > 1000 and me["child"]["ok"], got
        assert me["copied"] == 0 and me["child"]["memfd"] < 1 << 20 and me["freezes"] >= 1, got
        assert me["frozen"] >= me["promoted"] and me["promoted_after"] == 0, got
