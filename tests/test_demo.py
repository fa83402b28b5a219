"""``python -m meshalloc demo`` (the README's first command) runs both
allocators in child interpreters and prints the comparison table, with
meshalloc holding less memory after the frees than pymalloc."""
import re
import sys

import pytest


def test_demo_compares_pymalloc_and_meshalloc(helpers, tmp_path):
    probe = helpers.run([sys.executable, "-c", "import meshalloc.demo"], timeout=60, cwd=tmp_path,
                        env=helpers.env())
    if probe.returncode != 0:
        pytest.skip("the meshalloc package is not installed in this interpreter")
    r = helpers.run([sys.executable, "-m", "meshalloc", "demo", "--count", "200000"], timeout=300,
                    pss_cap=2 * helpers.GIB, cwd=tmp_path, env=helpers.env())
    helpers.assert_ok(r, "python -m meshalloc demo")
    m = re.search(r"meshalloc holds ([0-9.]+)x the memory pymalloc holds", r.stdout)
    assert m and "pymalloc (default)" in r.stdout, r.describe()
    assert float(m.group(1)) < 0.8, r.describe()


REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_demo_runs_from_the_repository_root_as_the_readme_says(helpers):
    """The README runs ``pip install ".[test]" && python -m meshalloc demo`` in the
    checkout, where the unbuilt source tree comes first on sys.path."""
    probe = helpers.run([sys.executable, "-c", "import meshalloc.demo"], timeout=60, cwd="/", env=helpers.env())
    if probe.returncode != 0:
        pytest.skip("the meshalloc package is not installed in this interpreter")
    r = helpers.run([sys.executable, "-m", "meshalloc", "demo", "--count", "100000"], timeout=300,
                    pss_cap=2 * helpers.GIB, cwd=str(REPO), env=helpers.env())
    helpers.assert_ok(r, "python -m meshalloc demo (from the repository root)")
    assert "meshalloc holds" in r.stdout, r.describe()


def test_cli_in_an_unbuilt_source_tree_says_so(helpers):
    if (REPO / "meshalloc" / "libmesh.so").exists():
        pytest.skip("libmesh.so was built in place in this checkout")
    r = helpers.run([sys.executable, "-m", "meshalloc", "libpath"], timeout=60, cwd=str(REPO), env=helpers.env())
    assert r.returncode != 0, r.describe()
    assert "source tree" in r.stderr and "another directory" in r.stderr, r.describe()
