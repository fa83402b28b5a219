"""CPython's own regression tests pass with meshalloc installed by the
start-up switch (MESHALLOC=1) exactly as without it (issue 4: test_dict
test_list test_unicode test_json test_gc test_weakref test_capi).

Needs the package installed in the interpreter running the tests (as in
.ci/run), since the switch is a .pth file in site-packages.
"""
import sys

import pytest

REGRTESTS = ["test_dict", "test_list", "test_unicode", "test_json", "test_gc", "test_weakref", "test_capi"]


def test_cpython_regression_tests_pass_with_meshalloc_installed_at_start_up(helpers, tmp_path):
    probe = helpers.run([sys.executable, "-c", "import meshalloc; print(meshalloc.is_installed())"],
                        timeout=60, cwd=tmp_path, env=helpers.env(MESHALLOC="1"))
    if probe.returncode != 0 or probe.stdout.strip() != "True":
        pytest.skip("the meshalloc package (with its start-up .pth) is not installed in this interpreter")
    r = helpers.run([sys.executable, "-m", "test", *REGRTESTS], timeout=600, pss_cap=3 * helpers.GIB,
                    cwd=tmp_path, env=helpers.env(MESHALLOC="1"))
    helpers.assert_ok(r, "python -m test with MESHALLOC=1")
    assert "Result: SUCCESS" in r.stdout, r.describe()
