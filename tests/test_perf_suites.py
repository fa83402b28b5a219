"""perf/: every pyperf benchmark runs (tiny workloads, one value), the runner
hands each allocator configuration to the pyperf workers and the workers
report what they really ran under, a worker without its configuration fails
instead of measuring the default allocator, and the report is built from the
results.

Every benchmark process goes through the guarded runner of conftest.py
(timeout and memory watchdog). ``--scale smoke`` shrinks the workload
constants to ~1 % and runs one process with one value, so the whole module
takes well under a minute on 2 cores.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

pyperf = pytest.importorskip("pyperf", reason="pyperf is in the test extra: pip install '.[test]'")

REPO = Path(__file__).resolve().parent.parent
PERF = REPO / "perf"
CONFIGS = ("pymalloc", "malloc", "meshalloc", "preload")


def _perf_package():
    """perf/ as a package, without putting the repository on sys.path (its
    meshalloc/ source tree would shadow the installed package)."""
    if "perf.runner" not in sys.modules:
        spec = importlib.util.spec_from_file_location("perf", PERF / "__init__.py",
                                                      submodule_search_locations=[str(PERF)])
        pkg = importlib.util.module_from_spec(spec)
        sys.modules["perf"] = pkg
        spec.loader.exec_module(pkg)
        importlib.import_module("perf.runner")
    return sys.modules["perf.benchlib"], sys.modules["perf.runner"]


benchlib, runner = _perf_package()
MANIFEST = runner.load_manifest()


@pytest.fixture(scope="module")
def meshalloc_installed(helpers, tmp_path_factory):
    """True when this interpreter has meshalloc installed with its start-up
    hook (MESHALLOC=1 works); the meshalloc and preload configurations need it."""
    tmp = tmp_path_factory.mktemp("probe")
    r = helpers.run([sys.executable, "-c", "import meshalloc; print(meshalloc.is_installed())"], timeout=60,
                    cwd=tmp, env=helpers.env(MESHALLOC="1"))
    return r.returncode == 0 and r.stdout.strip().endswith("True")


def load(path):
    return pyperf.BenchmarkSuite.load(str(path))


def test_manifest_names_every_benchmark_directory_and_the_three_groups():
    names = [n for n, _ in MANIFEST]
    dirs = sorted(p.name[3:] for p in PERF.glob("bm_*") if (p / "run_benchmark.py").is_file())
    assert sorted(names) == dirs
    groups = {g: [n for n, gg in MANIFEST if gg == g] for g in ("speed", "fragmentation", "system")}
    assert len(groups["speed"]) >= 8
    assert set(groups["fragmentation"]) == {"frag_sparse", "frag_dict", "frag_bands", "frag_lru"}
    assert set(groups["system"]) == {"startup", "fork", "mesh_pauses"}


@pytest.mark.parametrize("name", [n for n, _ in MANIFEST])
def test_benchmark_runs_once_in_smoke_mode_and_records_its_configuration(name, helpers, tmp_path,
                                                                         meshalloc_installed):
    env = helpers.env()
    config = "pymalloc"
    if name == "mesh_pauses":  # only meaningful where meshalloc allocates
        if not meshalloc_installed:
            pytest.skip("meshalloc is not installed in this interpreter")
        env, config = helpers.env(MESHALLOC="1"), "meshalloc"
    out = tmp_path / "out.json"
    r = helpers.run([sys.executable, PERF / ("bm_%s" % name) / "run_benchmark.py", "--scale", "smoke", "--quiet",
                     "--output", out], timeout=120, pss_cap=1 << 30, cwd=tmp_path, env=env)
    helpers.assert_ok(r, name)
    suite = load(out)
    (bench,) = suite.get_benchmarks()
    md = [run.get_metadata() for run in bench.get_runs() if run.values]
    assert md, r.describe()
    for m in md:
        assert m["alloc_config"] == config and m["scale"] == "smoke" and m["git_revision"]
    if name.startswith("frag_"):
        m = md[0]
        assert bench.get_unit() == "byte"
        for key in ("peak", "after_free", "settled", "compacted", "live", "recovery", "base"):
            assert "frag_" + key in m, key
        series = json.loads(m["frag_pss_series"])
        # settled (no API call) comes first, then the explicit compaction
        assert len(series) >= 5 and [s[2] for s in series[-2:]] == ["settled", "compacted"]
        assert m["frag_peak"] >= m["frag_settled"] > 0


def test_worker_without_its_configuration_fails_instead_of_measuring_pymalloc(helpers, tmp_path):
    # a pyperf worker asked for meshalloc but started without MESHALLOC=1 (as
    # when the variable is not in --inherit-environ) must not produce a value
    script = PERF / "bm_json_roundtrip" / "run_benchmark.py"
    r = helpers.run([sys.executable, script, "--worker", "--scale", "smoke", "--alloc-config", "meshalloc",
                     "--loops", "1", "--values", "1", "--warmups", "0"], timeout=60, pss_cap=1 << 30,
                    cwd=tmp_path, env=helpers.env())
    assert r.returncode != 0, r.describe()
    assert "is NOT active in this worker process" in r.stderr and "MESHALLOC=1" in r.stderr, r.describe()


def test_workers_inherit_exactly_the_allocator_variables_and_mesh_options():
    env = {"PATH": "/bin", "MESHALLOC": "1", "MESH_PERIOD_MS": "5", "LD_PRELOAD": "/x.so", "HOME": "/root"}
    assert benchlib.inherit_names(env) == ["LD_PRELOAD", "MESHALLOC", "MESH_PERIOD_MS"]
    assert benchlib.expected_from_env(env) == "meshalloc"
    assert benchlib.expected_from_env({"LD_PRELOAD": "/a/libmesh.so", "PYTHONMALLOC": "malloc"}) == "preload"
    assert benchlib.expected_from_env({"LD_PRELOAD": "/a/libjemalloc.so.2"}) == "extra:libjemalloc.so.2"
    assert benchlib.expected_from_env({"PYTHONMALLOC": "malloc"}) == "malloc"


def test_an_extra_library_named_in_configs_runs_once_and_alone(tmp_path):
    _, runner = _perf_package()
    lib = tmp_path / "libfake.so"
    lib.write_bytes(b"")
    configs = runner.make_configs(["fake"], ["fake=%s" % lib], None)
    assert [(c.name, c.env["LD_PRELOAD"], c.env["PYTHONMALLOC"]) for c in configs] == \
        [("fake", str(lib.resolve()), "malloc")]
    both = runner.make_configs(["pymalloc", "fake"], ["fake=%s" % lib], None)
    assert [c.name for c in both] == ["pymalloc", "fake"]


def test_rounds_split_every_benchmarks_processes_without_empty_rounds():
    _, runner = _perf_package()
    assert runner.split_processes(9, 3) == [3, 3, 3]
    assert runner.split_processes(6, 4) == [2, 2, 1, 1]
    assert runner.split_processes(2, 3) == [1, 1]
    assert runner.split_processes(1, 1) == [1]
    for name, group in MANIFEST:
        kind = runner.kind_of(name)
        assert kind in benchlib.PROFILES
        assert (kind == "memory") == (group == "fragmentation" or name == "mesh_pauses"), name


def test_gc_cycles_times_only_the_steady_state(monkeypatch):
    # the pool of kept rings must be full before the first timed iteration
    # (an empty pool makes the collections ~30 % cheaper), and the
    # collection cadence must not restart with every call
    monkeypatch.syspath_prepend(str(PERF))
    spec = importlib.util.spec_from_file_location("_bm_gc_cycles", PERF / "bm_gc_cycles" / "run_benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod.benchlib, "_scale_name", "smoke")
    collects = []
    monkeypatch.setattr(mod.gc, "collect", lambda *a: collects.append(len(mod._state["pool"])))
    mod.bench(1)
    assert len(mod._state["pool"]) == mod.POOL
    before = len(collects)
    for _ in range(2 * mod.COLLECT_EVERY):
        mod.bench(1)
    assert len(collects) - before == 2


def test_recovery_is_peak_minus_settled_over_peak_minus_live():
    rec = benchlib.PssRecorder()
    rec.samples = [[0.0, 1000, "start"], [0.5, 1000 + 500, ""], [1.0, 1000 + 200, "settled"]]
    rec.peak = 1500
    res = benchlib.frag_result(rec, 1000, 500, 400, 200, 100)
    assert res["recovery"] == pytest.approx((500 - 200) / (500 - 100))
    assert json.loads(res["pss_series"]) == [[0.0, 0, "start"], [0.5, 500], [1.0, 200, "settled"]]


def test_live_size_counts_each_object_once_and_skips_small_ints():
    s = "x" * 100
    n = 10 ** 6
    roots = [[s, s, (s, n)], {"k": s}]
    expect = (sys.getsizeof(roots[0]) + sys.getsizeof(roots[1]) + sys.getsizeof(s) + sys.getsizeof((s, n))
              + sys.getsizeof(n) + sys.getsizeof("k"))
    assert benchlib.live_size(roots) == expect
    assert benchlib.live_size([[1, 2, 3]]) == sys.getsizeof([1, 2, 3])


def _perf_trees():
    """{path relative to perf/: its AST} of every Python file in perf/."""
    return {p.relative_to(PERF).as_posix(): ast.parse(p.read_text(), str(p)) for p in sorted(PERF.rglob("*.py"))}


def _strings_by_function(tree):
    """(name of the innermost enclosing function or "<module>", string
    constant) for every string in the code, docstrings left out."""
    out = []

    def visit(node, where):
        body = getattr(node, "body", None)
        doc = (body[0].value if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
               and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else None)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
            elif isinstance(child, ast.Expr) and child.value is doc:
                continue
            elif isinstance(child, ast.Constant) and isinstance(child.value, str):
                out.append((where, child.value))
            else:
                visit(child, where)

    visit(tree, "<module>")
    return out


def test_perf_reads_pss_and_meminfo_in_one_function_each():
    # one reader of each: copies drift apart in units, fallbacks and what
    # they count (six PSS readers had grown in perf/ before benchlib's)
    found = {"smaps": set(), "Pss:": set(), "meminfo": set()}
    for rel, tree in _perf_trees().items():
        for where, text in _strings_by_function(tree):
            for needle in found:
                if needle in text:
                    found[needle].add((rel, where))
    assert found == {"smaps": {("benchlib.py", "pss_bytes")}, "Pss:": {("benchlib.py", "pss_bytes")},
                     "meminfo": {("benchlib.py", "meminfo")}}


def test_perf_modules_import_no_circle():
    # the bm_* scripts and the older runners import benchlib as a top-level
    # module (perf/ on sys.path), the package's modules import each other
    # relatively; both are edges between the same modules
    trees = _perf_trees()
    mods = {"perf." + rel[:-3].replace("/", ".") for rel in trees}
    edges = {}
    for rel, tree in trees.items():
        src = "perf." + rel[:-3].replace("/", ".")
        pkg = src.rsplit(".", 1)[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = (pkg + ("." + node.module if node.module else "")) if node.level == 1 else node.module or ""
                targets = [base] + [base + "." + a.name for a in node.names]
            else:
                continue
            for t in targets:
                t = t if t.startswith("perf.") else "perf." + t
                if t in mods and t != src:
                    edges.setdefault(src, set()).add(t)
    assert {"perf.instructions", "perf.runner", "perf.report"} <= edges["perf.cli"]
    assert "perf.benchlib" in edges["perf.bm_fork.run_benchmark"] and "perf.benchlib" in edges["perf.churn.churn"]
    assert "perf.benchlib" not in edges, "benchlib imports nothing from perf/: %s" % edges.get("perf.benchlib")
    done, path = set(), []

    def walk(m):
        assert m not in path, "import circle: %s" % " -> ".join(path[path.index(m):] + [m])
        if m in done:
            return
        path.append(m)
        for t in sorted(edges.get(m, ())):
            walk(t)
        path.pop()
        done.add(m)

    for m in sorted(mods):
        walk(m)


@pytest.fixture(scope="module")
def smoke_results(helpers, tmp_path_factory, meshalloc_installed):
    """`python -m perf run --smoke` of one speed and one fragmentation
    benchmark under all four configurations."""
    if not meshalloc_installed:
        pytest.skip("meshalloc (with its start-up hook) is not installed in this interpreter: pip install .")
    out = tmp_path_factory.mktemp("perf_results")
    r = helpers.run([sys.executable, "-m", "perf", "run", "--smoke", "--bench", "json_roundtrip,frag_sparse",
                     "--configs", ",".join(CONFIGS), "--output-dir", out], timeout=240, pss_cap=2 << 30,
                    cwd=REPO, env=helpers.env())
    helpers.assert_ok(r, "python -m perf run --smoke")
    return out


def test_runner_workers_report_the_allocator_each_configuration_asked_for(smoke_results):
    for config in CONFIGS:
        suite = load(smoke_results / ("%s.json" % config))
        names = set(suite.get_benchmark_names())
        assert {"json_roundtrip", "frag_sparse", "frag_sparse.peak", "frag_sparse.after_free",
                "frag_sparse.live"} <= names
        for bench in suite.get_benchmarks():
            for run in bench.get_runs():
                if not run.values:
                    continue
                m = run.get_metadata()
                assert m["alloc_config"] == config
                lib = os.path.basename(m["alloc_malloc_library"])
                installed, preloaded = m["alloc_meshalloc_installed"], m["alloc_libmesh_preloaded"]
                actual = {"pymalloc": (m["alloc_pymem"] == "pymalloc" and not installed and "libc" in lib),
                          "malloc": (m["alloc_pymem"] == "malloc" and not installed and "libc" in lib),
                          "meshalloc": (installed == 1 and not preloaded and "MESHALLOC=1" in m["alloc_env"]
                                        and "meshalloc_options" in m),
                          "preload": (preloaded == 1 and "libmesh" in lib and m["alloc_pymem"] == "malloc")}
                assert actual[config], (config, bench.get_name(), m)


def test_pyperf_compare_to_reads_the_runner_output(smoke_results, helpers, tmp_path):
    r = helpers.run([sys.executable, "-m", "pyperf", "compare_to", smoke_results / "pymalloc.json",
                     smoke_results / "meshalloc.json", "--table"], timeout=60, cwd=tmp_path, env=helpers.env())
    helpers.assert_ok(r, "pyperf compare_to")
    assert "frag_sparse" in r.stdout and "json_roundtrip" in r.stdout


def test_runner_interleaves_rounds_into_one_result_per_configuration(helpers, tmp_path):
    out = tmp_path / "res"
    r = helpers.run([sys.executable, "-m", "perf", "run", "--smoke", "--bench", "gc_cycles", "--configs",
                     "pymalloc,malloc", "--rounds", "2", "--processes", "2", "--output-dir", out],
                    timeout=240, pss_cap=2 << 30, cwd=REPO, env=helpers.env())
    helpers.assert_ok(r, "python -m perf run --rounds 2")
    assert "(2 values, 2 rounds)" in r.stdout, r.describe()
    for config in ("pymalloc", "malloc"):
        (bench,) = load(out / ("%s.json" % config)).get_benchmarks()
        runs = [run for run in bench.get_runs() if run.values]
        assert len(runs) == 2
        assert {run.get_metadata()["alloc_config"] for run in runs} == {config}
        assert len({run.get_metadata()["loops"] for run in runs}) == 1
    assert not list(out.glob(".*.json"))


def test_report_writes_tables_and_plots_from_the_results(smoke_results, helpers, tmp_path):
    try:
        import matplotlib  # noqa: F401
        plots = []
    except ImportError:
        plots = ["--no-plots"]
    md = tmp_path / "benchmarks.md"
    r = helpers.run([sys.executable, "-m", "perf", "report", "--results", smoke_results, "--repeat", smoke_results,
                     "--out", md, "--img-dir", tmp_path / "img"] + plots, timeout=120, cwd=REPO, env=helpers.env())
    helpers.assert_ok(r, "python -m perf report")
    text = md.read_text()
    for needle in ("## Speed", "## Fragmentation", "recovery", "json_roundtrip", "meshalloc / pymalloc",
                   "## Run-to-run agreement", "AMD" if "AMD" in open("/proc/cpuinfo").read() else "CPUs"):
        assert needle in text, needle
    if not plots:
        assert (tmp_path / "img" / "pss_frag_sparse.png").stat().st_size > 1000
        assert (tmp_path / "img" / "speed_ratios.png").is_file()


def test_micro_bench_pools_the_rounds_of_every_process_and_names_the_worst(cbuilder, helpers, tmp_path):
    # perf/micro/bench.c against the release core: with --procs 3 each section
    # runs in three processes and its table and JSON hold all their rounds
    import subprocess
    cc, flags = helpers.configs["release"]
    bench = tmp_path / "bench"
    cmd = [cc, *flags, "-I%s" % (REPO / "csrc"), "-I%s" % (REPO / "csrc" / "core"), str(PERF / "micro" / "bench.c"),
           *map(str, cbuilder.core("release")), "-o", str(bench), "-pthread", "-lm"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-4000:]
    for procs in (1, 3):
        out = tmp_path / ("micro%d.json" % procs)
        r = helpers.run([bench, "--tests", "a", "--rounds", "2", "--procs", str(procs), "--target-ms", "1",
                         "--json", out], timeout=120, pss_cap=1 << 30, cwd=tmp_path, env=helpers.env())
        helpers.assert_ok(r, "bench --procs %d" % procs)
        assert ("worst proc" in r.stdout) == (procs > 1), r.stdout
        doc = json.loads(out.read_text())
        assert doc["meta"]["procs"] == procs and doc["meta"]["rounds"] == 2
        assert len(doc["results"]) == 10
        for res in doc["results"]:
            assert len(res["rounds"]["glibc"]) == len(res["rounds"]["mesh"]) == 2 * procs
            assert res["paired_ratio_min"] <= res["paired_ratio_median"] <= res["paired_ratio_max"]
            # the worst process's median lies within the pooled range
            assert res["paired_ratio_min"] <= res["paired_ratio_worst_proc"] <= res["paired_ratio_max"]
            if procs == 1:
                assert res["paired_ratio_worst_proc"] == res["paired_ratio_median"]
    r = helpers.run([bench, "--rounds", "100", "--procs", "3"], timeout=30, pss_cap=1 << 30, cwd=tmp_path,
                    env=helpers.env())
    assert r.returncode == 2 and "usage" in r.stderr, r.describe()


def test_instruction_mode_counts_every_configuration_and_the_report_shows_the_ratios(meshalloc_installed, helpers,
                                                                                      tmp_path):
    import shutil
    if not shutil.which("valgrind") or not shutil.which("callgrind_annotate"):
        pytest.fail("valgrind is needed (apt-get install valgrind; .ci/run installs it)", pytrace=False)
    if not meshalloc_installed:
        pytest.skip("meshalloc (with its start-up .pth) is not installed in this interpreter")
    out = tmp_path / "res"
    r = helpers.run([sys.executable, "-m", "perf", "instructions", "--scale", "smoke", "--bench", "object_churn",
                     "--configs", "meshalloc,preload", "--loops", "2", "--output-dir", out],
                    timeout=600, pss_cap=2 << 30, cwd=REPO, env=helpers.env())
    helpers.assert_ok(r, "python -m perf instructions")
    doc = json.loads((out / "instructions.json").read_text())
    assert doc["configs"] == ["pymalloc", "meshalloc", "preload"] and doc["loops"] == [1, 3]
    per = doc["results"]["object_churn"]
    for config in ("pymalloc", "meshalloc", "preload"):
        c = per[config]
        # whole process > start-up run > 0; the allocator's share is part of the whole
        assert c["whole"] > c["startup"] > 0 and 0 < c["per_loop"] < c["whole"], (config, c)
        assert 0 < c["allocator"] < c["whole"], (config, c)
    # meshalloc's code is counted as allocator code: more of it than pymalloc's obmalloc.c
    assert per["meshalloc"]["allocator"] > per["pymalloc"]["allocator"]
    # time-driven work is a part of meshalloc's (every refill asks the inline
    # trigger whether a pass is due); pymalloc has none
    assert per["pymalloc"]["time_driven"] == 0
    for config in ("meshalloc", "preload"):
        assert 0 < per[config]["time_driven"] < per[config]["allocator"], (config, per[config])
    assert "geometric mean" in r.stdout
    # the report puts the table beside the wall-clock one
    for config in ("pymalloc", "meshalloc"):
        r = helpers.run([sys.executable, "-m", "perf", "run", "--smoke", "--bench", "object_churn", "--configs",
                         config, "--output-dir", out], timeout=240, pss_cap=2 << 30, cwd=REPO, env=helpers.env())
        helpers.assert_ok(r, "python -m perf run (%s)" % config)
    md = tmp_path / "benchmarks.md"
    r = helpers.run([sys.executable, "-m", "perf", "report", "--results", out, "--out", md, "--no-plots"],
                    timeout=120, cwd=REPO, env=helpers.env())
    helpers.assert_ok(r, "python -m perf report")
    text = md.read_text()
    assert "### Instructions" in text and "| object_churn |" in text.split("### Instructions")[1], text


def _microtable():
    _perf_package()
    return importlib.import_module("perf.microtable")


def test_micro_table_cells_run_under_glibc_and_libmesh_and_report_positive_rates(helpers, tmp_path):
    # perf/micro/threads.c built as the Makefile builds it (warnings are
    # errors here), one tiny cell per test kind at 2 threads, under glibc and
    # under LD_PRELOAD=libmesh.so; each child names the malloc it ran with
    import math
    import subprocess
    microtable = _microtable()
    lib = benchlib.find_libmesh()
    if lib is None:
        pytest.skip("no libmesh.so: install meshalloc (pip install .) or build csrc/build/libmesh.so (make -C csrc)")
    prog = tmp_path / "threads"
    p = subprocess.run(["gcc", "-std=c11", "-O2", "-D_GNU_SOURCE", "-pthread", "-Wall", "-Wextra", "-Werror",
                        str(PERF / "micro" / "threads.c"), "-o", str(prog), "-pthread", "-ldl"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-4000:]
    steps, n = 0, 64  # realloc: CPython's growth, new = old + old/8 + 16 rounded to 16, from 64 B to the size
    while n < 1 << 16:
        n, steps = (n + (n >> 3) + 16) & ~15, steps + 1
    cells = {"pair": (64, 20000, 1), "batch": (64, 5, 1000), "remote": (64, 5000, 1), "realloc": (1 << 16, 5, steps)}
    assert {t[1] for t in microtable.TESTS} == set(cells), "every test kind of the table is exercised here"
    for preload in (None, lib):
        for test, (size, iters, ops_per_iter) in cells.items():
            env = helpers.env(**({"LD_PRELOAD": preload} if preload else {}))
            r = helpers.run([prog, "--test", test, "--size", size, "--threads", 2, "--iters", iters], timeout=60,
                            pss_cap=1 << 30, cwd=tmp_path, env=env)
            helpers.assert_ok(r, "threads --test %s under %s" % (test, preload or "glibc"))
            d = json.loads(r.stdout.strip().splitlines()[-1])
            assert d["test"] == test and d["threads"] == 2 and d["iters"] == iters, d
            assert all(math.isfinite(d[k]) and d[k] > 0 for k in ("seconds", "mops", "ns_per_op_thread")), d
            assert d["ops"] == 2 * iters * ops_per_iter, d
            # the two figures describe the same run: ops / seconds, and seconds over one thread's ops
            assert d["mops"] == pytest.approx(d["ops"] / d["seconds"] / 1e6, rel=1e-3), d
            assert d["ns_per_op_thread"] == pytest.approx(d["seconds"] * 1e9 / (d["ops"] / 2), rel=1e-3), d
            assert microtable.runs_under("meshalloc" if preload else "glibc", preload, d["malloc_library"]), d


def test_micro_table_driver_keeps_every_round_and_the_report_shows_its_table(helpers, tmp_path):
    # the whole command at a tiny size: 2 rounds of 2 rows at 1 and 3 threads
    import shutil
    import statistics
    out = tmp_path / "res"
    r = helpers.run([sys.executable, "-m", "perf", "micro-table", "--allocators", "glibc,meshalloc", "--tests",
                     "pair16,remote64", "--threads", "1,3", "--rounds", "2", "--target-ms", "2", "--output-dir", out],
                    timeout=120, pss_cap=1 << 30, cwd=REPO, env=helpers.env())
    helpers.assert_ok(r, "python -m perf micro-table")
    doc = json.loads((out / "micro_table.json").read_text())
    assert [(c["test"], c["threads"]) for c in doc["cells"]] == [("pair16", 1), ("pair16", 3), ("remote64", 1),
                                                                  ("remote64", 3)]
    assert all(t["iters"] >= 1 for t in doc["tests"])
    ran = [n for n, a in doc["allocators"].items() if a["installed"]]
    assert ran[0] == "glibc"
    for c in doc["cells"]:
        assert set(c["results"]) == set(ran)
        for name, res in c["results"].items():
            assert len(res["mops"]) == len(res["ns_per_op_thread"]) == 2 and min(res["mops"]) > 0
            assert res["median_mops"] == statistics.median(res["mops"])
            assert res["paired_min"] <= res["paired_median"] <= res["paired_max"]
        assert c["results"]["glibc"]["ratio"] == 1.0
    assert "| malloc+free pair, 16 B | 1 |" in r.stdout
    # rows with more threads than CPUs are marked as oversubscribed; the
    # cross-thread test runs two threads per T
    pair3, remote3 = [line for line in r.stdout.splitlines() if line.startswith("|  | 3")]
    assert ("| 3\\* |" in pair3) == (doc["cpus"] < 3) and ("| 3\\* |" in remote3) == (doc["cpus"] < 6)
    # the report adds the section when the file sits beside the pyperf results
    res = tmp_path / "run"
    shutil.copytree(REPO / "perf" / "report_data" / "run1", res)
    shutil.copy(out / "micro_table.json", res)
    md = tmp_path / "benchmarks.md"
    r = helpers.run([sys.executable, "-m", "perf", "report", "--results", res, "--out", md, "--no-plots"],
                    timeout=120, cwd=REPO, env=helpers.env())
    helpers.assert_ok(r, "python -m perf report")
    text = md.read_text()
    assert "## C allocators side by side" in text and "| malloc+free pair, 16 B | 1 |" in text
    assert text.index("## System") < text.index("## C allocators side by side") < text.index("## Reproduce")


def test_micro_table_shows_a_missing_allocator_as_not_installed():
    microtable = _microtable()
    assert microtable.find_library("jemalloc", dirs=[]) is None
    assert all(os.path.isdir(d) for d in microtable.library_dirs())
    cell = {"mops": [2.0], "ns_per_op_thread": [500.0], "median_mops": 2.0, "median_ns_per_op_thread": 500.0,
            "ratio": 1.0, "paired_min": 1.0, "paired_median": 1.0, "paired_max": 1.0}
    doc = {"cpus": 2, "cpu_model": "x", "date": "d", "revision": "r", "rounds": 1, "loadavg": [0.0, 0.0],
           "threads": [1], "tests": [{"key": "pair16", "test": "pair", "size": 16, "label": "pair 16", "iters": 1}],
           "allocators": {"glibc": {"lib": None, "installed": True, "version": "glibc"},
                          "jemalloc": {"lib": None, "installed": False, "version": ""}},
           "cells": [{"test": "pair16", "threads": 1, "results": {"glibc": cell}}]}
    text = "\n".join(microtable.section(doc))
    assert "| pair 16 | 1 | 2 (500) | not installed |" in text and "jemalloc: not installed" in text
    assert "oversubscription" not in text
