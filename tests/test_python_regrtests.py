"""CPython's own regression tests pass with meshalloc installed by the
start-up switch (MESHALLOC=1) exactly as without it (issue 4: test_dict
test_list test_unicode test_json test_gc test_weakref test_capi).

Needs the package installed in the interpreter running the tests (as in
.ci/run), since the switch is a .pth file in site-packages.
"""
import os
import re
import sys

import pytest

# (test_unicode became test_str in 3.13)
REGRTESTS = ["test_dict", "test_list", "test_unicode" if sys.version_info < (3, 13) else "test_str", "test_json",
             "test_gc", "test_weakref", "test_capi"]


def test_cpython_regression_tests_pass_with_meshalloc_installed_at_start_up(helpers, tmp_path):
    probe = helpers.run([sys.executable, "-c", "import meshalloc; print(meshalloc.is_installed())"],
                        timeout=60, cwd=tmp_path, env=helpers.env(MESHALLOC="1"))
    if probe.returncode != 0 or probe.stdout.strip() != "True":
        pytest.skip("the meshalloc package (with its start-up .pth) is not installed in this interpreter")
    r = helpers.run([sys.executable, "-m", "test", *REGRTESTS], timeout=600, pss_cap=3 * helpers.GIB,
                    cwd=tmp_path, env=helpers.env(MESHALLOC="1"))
    helpers.assert_ok(r, "python -m test with MESHALLOC=1")
    assert re.search(r"^(Tests )?result: SUCCESS", r.stdout, re.M | re.I), r.describe()  # 3.9 says "Tests result"


# The subset that exercises what meshalloc touches outside the heap: file
# descriptors (pass_fds, closerange, posix_spawn), signals and masks,
# faulthandler, threads and fork, process pools. Compared with the same run
# under pymalloc, test by test: a test this machine cannot pass (no
# network, a sandbox) fails in every configuration and is not meshalloc's.
HOSTILE_REGRTESTS = ["test_subprocess", "test_posix", "test_sys", "test_threading", "test_faulthandler",
                     "test_signal", "test_concurrent_futures"]


# Known differences, each with its reason (a new failure outside this list
# fails the test):
KNOWN = {
    # the child interpreters of these tests list their open descriptors, and
    # a child running meshalloc holds two memfds of its own (the arena's and
    # the counters', close-on-exec, at high numbers): the listing shows them
    "test_close_fds_when_max_fd_is_lowered": "the child's own memfds are listed",
    "test_pass_fds_redirected": "the child's own memfds are listed",
    # sys._debugmallocstats() prints pymalloc's arenas, and objects are not
    # in pymalloc's arenas when meshalloc (or malloc) serves them
    "test_debugmallocstats": "pymalloc's statistics",
}


def available(names):
    """The tests this interpreter ships (some builds prune the test suite)."""
    import sysconfig  # noqa: PLC0415
    testdir = os.path.join(sysconfig.get_path("stdlib"), "test")
    return [n for n in names if os.path.exists(os.path.join(testdir, n + ".py")) or
            os.path.isdir(os.path.join(testdir, n))]


def failed_cases(xml_path: str) -> set:
    """Names of the test methods that failed or errored, from regrtest's
    JUnit XML."""
    import xml.etree.ElementTree as ET  # noqa: PLC0415
    names = set()
    for case in ET.parse(xml_path).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            names.add(case.get("name", "").split(".")[-1])
    return names


def files_with_known_failures(xml_path: str) -> set:
    """The test files whose failed cases are all known differences."""
    import xml.etree.ElementTree as ET  # noqa: PLC0415
    known, other = set(), set()
    for case in ET.parse(xml_path).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            where = case.get("classname", "") + "." + case.get("name", "")
            f = next((p for p in where.split(".") if p.startswith("test_")), "")
            (known if case.get("name", "").split(".")[-1] in KNOWN else other).add(f)
    return known - other


def failed_files(stdout: str) -> set:
    """The test files regrtest's summary lists as failed, timed out or
    crashed (a file that hung or died has no failed case in the XML)."""
    files, listing = set(), False
    for line in stdout.splitlines():
        if re.match(r"^\d+ tests? (failed|crashed|timed out|altered the execution environment)", line) or \
                re.match(r"^(\d+ )?tests? (failed|crashed)", line):
            listing = "altered" not in line
            continue
        if listing and line.startswith("    "):
            files.update(w for w in line.split() if w.startswith("test_"))
        else:
            listing = False
    for m in re.finditer(r"^(?:\d+:\d+:\d+ .*?)?(test_\w+) (?:failed|crashed|timed out)", stdout, re.M):
        files.add(m.group(1))
    return files


def run_regrtest(helpers, tmp_path, env, what):
    xml_path = tmp_path / ("junit-%s.xml" % what.replace("=", "-"))
    r = helpers.run([sys.executable, "-m", "test", "-j2", "--timeout", "900", "--junit-xml", str(xml_path),
                     *available(HOSTILE_REGRTESTS)], timeout=2400, pss_cap=4 * helpers.GIB, cwd=tmp_path, env=env)
    assert not r.killed, r.describe()
    assert re.search(r"^(Tests )?result:", r.stdout, re.M | re.I) and xml_path.exists(), \
        f"{what}: regrtest did not finish\n{r.describe()}"
    return failed_cases(str(xml_path)), failed_files(r.stdout) - files_with_known_failures(str(xml_path)), r


def test_cpython_fd_signal_thread_and_fork_tests_pass_as_under_pymalloc(helpers, libmesh, tmp_path):
    probe = helpers.run([sys.executable, "-c", "import meshalloc; print(meshalloc.is_installed())"],
                        timeout=60, cwd=tmp_path, env=helpers.env(MESHALLOC="1"))
    if probe.returncode != 0 or probe.stdout.strip() != "True":
        pytest.skip("the meshalloc package (with its start-up .pth) is not installed in this interpreter")
    base, base_files, _ = run_regrtest(helpers, tmp_path, helpers.env(), "pymalloc")
    for what, env in (("MESHALLOC=1", helpers.env(MESHALLOC="1")),
                      ("preload", helpers.env(LD_PRELOAD=str(libmesh), PYTHONMALLOC="malloc"))):
        got, files, r = run_regrtest(helpers, tmp_path, env, what)
        new = got - base - set(KNOWN)
        assert not new, f"{what}: {sorted(new)} fail here and not under pymalloc\n{r.describe()}"
        # a file that failed here without a failed case of its own in the XML
        # (a hang ended by --timeout, a crash) is a difference too
        silent = files - base_files
        assert not silent, f"{what}: {sorted(silent)} failed, timed out or crashed here and not under " \
                           f"pymalloc\n{r.describe()}"
