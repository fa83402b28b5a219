"""``python -m meshalloc stats --pid PID [--watch S]`` against real processes:
a Python child under ``MESHALLOC=1``, a C program under ``LD_PRELOAD``, and
the bad inputs (no such process, a process without meshalloc, one started
with ``MESH_STATS_PAGE=0``). The counters come from the page the process
shares; reading them must not stop it.
"""
import json
import os
import subprocess
import sys
import time

import pytest

CHILD = """
import sys, time
x = [str(i) * 3 for i in range(300000)]
del x[::2]
import meshalloc
meshalloc.compact()
print("ready", flush=True)
sys.stdin.readline()          # until the test is done reading
"""


def start(helpers, env, tmp_path, code=CHILD):
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    line = p.stdout.readline()
    assert line.strip() == "ready", p.stderr.read()
    return p


def stop(p):
    p.stdin.write("\n")
    p.stdin.flush()
    p.wait(timeout=60)


def cli(helpers, tmp_path, *args):
    return helpers.run([sys.executable, "-m", "meshalloc", "stats", *args], timeout=60, cwd=tmp_path,
                       env=helpers.env())


def installed_or_skip(helpers, tmp_path):
    r = helpers.run([sys.executable, "-c", "import meshalloc; print(meshalloc.is_installed())"], timeout=60,
                    cwd=tmp_path, env=helpers.env(MESHALLOC="1"))
    if r.returncode != 0 or r.stdout.strip() != "True":
        pytest.skip("meshalloc (with its start-up .pth) is not installed in this interpreter")


@pytest.mark.parametrize("mode", ["meshalloc", "preload"])
def test_stats_pid_reads_the_counters_of_a_running_process(helpers, libmesh, tmp_path, mode):
    installed_or_skip(helpers, tmp_path)
    env = helpers.env(MESHALLOC="1") if mode == "meshalloc" else \
        helpers.env(LD_PRELOAD=str(libmesh), PYTHONMALLOC="malloc")
    p = start(helpers, env, tmp_path)
    try:
        t0 = time.monotonic()
        r = cli(helpers, tmp_path, "--pid", str(p.pid), "--json")
        took = time.monotonic() - t0
        helpers.assert_ok(r, "stats --pid --json")
        got = json.loads(r.stdout)
        c = got["counters"]
        assert got["pid"] == p.pid and c["mesh_count"] > 0 and c["passes_compact"] > 0, c
        assert c["meshed_pages_total"] >= c["mesh_count"] and c["span_pages"] > 0
        assert got["pss_bytes"] > 0 and got["arena_memfd_bytes"] > 0
        # bytes in use, as the process published them (it walks its own spans)
        assert 0 < c["bytes_in_use_published"] <= c["span_pages"] * 4096 + c["direct_bytes_in_use"], c
        assert 0 < c["bytes_in_use_published_ns"] / 1e9 <= time.monotonic()
        # the pass log: compact()'s steps, each with its end, wall and CPU time
        steps = [q for q in got["passes"] if q["kind"] == "compact"]
        assert steps and sum(q["meshes"] for q in got["passes"]) <= c["mesh_count"], got["passes"][-3:]
        assert all(0 <= q["cpu"] <= q["wall"] + 1e-6 and q["end"] <= time.monotonic() for q in steps)
        assert got["passes"][-1]["number"] == c["mesh_passes"]
        assert p.poll() is None, "the process stopped"
        r = cli(helpers, tmp_path, "--pid", str(p.pid), "--watch", "0.2", "--count", "2")
        helpers.assert_ok(r, "stats --pid --watch")
        lines = r.stdout.strip().splitlines()
        assert lines[0].split()[:3] == ["seconds", "PSS", "MiB"] and len(lines) == 3, r.stdout
        r = cli(helpers, tmp_path, "--pid", str(p.pid), "--docs")
        helpers.assert_ok(r, "stats --pid --docs")
        assert "mesh_count" in r.stdout and "meshes performed" in r.stdout
    finally:
        stop(p)
    assert took < 10  # a fresh interpreter, mostly; the read itself is a few ms


def test_stats_pid_of_a_c_program_under_preload(helpers, libmesh, tmp_path):
    r0 = subprocess.Popen(["sleep", "30"], env=helpers.env(LD_PRELOAD=str(libmesh)))
    try:
        time.sleep(0.3)
        r = cli(helpers, tmp_path, "--pid", str(r0.pid), "--json")
        helpers.assert_ok(r, "stats --pid of sleep under preload")
        assert "mesh_count" in json.loads(r.stdout)["counters"]
    finally:
        r0.kill()
        r0.wait()


def test_stats_pid_bad_inputs_get_a_clear_message_and_status(helpers, libmesh, tmp_path):
    r = cli(helpers, tmp_path, "--pid", "999999999")
    assert r.returncode == 2 and "no process 999999999" in r.stderr, r.describe()
    plain = subprocess.Popen(["sleep", "30"], env=helpers.env())
    off = subprocess.Popen(["sleep", "30"], env=helpers.env(LD_PRELOAD=str(libmesh), MESH_STATS_PAGE="0"))
    try:
        time.sleep(0.3)
        r = cli(helpers, tmp_path, "--pid", str(plain.pid))
        assert r.returncode == 1 and "does not use meshalloc" in r.stderr, r.describe()
        r = cli(helpers, tmp_path, "--pid", str(off.pid))
        assert r.returncode == 1 and "shares no counters" in r.stderr, r.describe()
    finally:
        for q in (plain, off):
            q.kill()
            q.wait()
    r = cli(helpers, tmp_path, "--watch", "1")
    assert r.returncode == 2 and "--watch needs --pid" in r.stderr, r.describe()


def test_fork_child_has_counters_of_its_own(helpers, libmesh, tmp_path):
    """After fork the child's page is its own: the parent's counters do not
    move when the child allocates, and each process shows its own."""
    installed_or_skip(helpers, tmp_path)
    code = CHILD.replace('print("ready", flush=True)', '''
import os
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    y = [str(i) * 5 for i in range(200000)]
    del y[::2]
    meshalloc.compact()
    os.write(w, b"x")
    time.sleep(30)
    os._exit(0)
os.read(r, 1)
print(pid, flush=True)
print("ready", flush=True)''')
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=helpers.env(MESHALLOC="1"))
    child = int(p.stdout.readline())
    assert p.stdout.readline().strip() == "ready"
    try:
        parent_c = json.loads(cli(helpers, tmp_path, "--pid", str(p.pid), "--json").stdout)["counters"]
        child_c = json.loads(cli(helpers, tmp_path, "--pid", str(child), "--json").stdout)["counters"]
        assert child_c["passes_compact"] > parent_c["passes_compact"], (parent_c["passes_compact"],
                                                                       child_c["passes_compact"])
        # the child starts from the counters as they were at the fork
        assert child_c["fork_count"] == parent_c["fork_count"]
        assert child_c["meshed_pages_total"] > parent_c["meshed_pages_total"]
    finally:
        os.kill(child, 9)
        stop(p)
