"""``python -m meshalloc run --record FILE -- CMD`` and ``plot FILE``, against
real child processes: a fragmenting Python child in both modes, a child that
does not use meshalloc, a command that does not exist; the plot is a PNG of
the size asked for, and a missing matplotlib or a file that is no recording
gets a clear message and status.
"""
import json
import struct
import subprocess
import sys

import pytest

from test_remote_stats import installed_or_skip

# builds a fragmented heap, leaves it to automatic meshing for a while, then
# exits with a status of its own
FRAGMENT = """
import sys, time, random
d = {i: ('x%d' % i) * 3 for i in range(300000)}
keys = list(d)
random.Random(5).shuffle(keys)
for k in keys[:270000]:
    del d[k]
t = time.time()
while time.time() - t < 2.0:
    time.sleep(0.05)
    junk = [str(i) for i in range(10)]
sys.exit(3)
"""


def meshalloc_cli(helpers, tmp_path, *args, env=None, timeout=120):
    return helpers.run([sys.executable, "-m", "meshalloc", *args], timeout=timeout, cwd=tmp_path,
                       env=env or helpers.env())


def read_lines(path):
    with open(path) as f:
        return [json.loads(x) for x in f]


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", head
    return struct.unpack(">II", head[16:24])


@pytest.mark.parametrize("mode", ["meshalloc", "preload"])
def test_run_record_samples_memory_counters_and_meshing_pauses(helpers, tmp_path, mode):
    installed_or_skip(helpers, tmp_path)
    rec = tmp_path / "rec.jsonl"
    extra = ["--preload"] if mode == "preload" else []
    r = meshalloc_cli(helpers, tmp_path, "run", *extra, "--record", str(rec), "--interval", "0.1", "--",
                      sys.executable, "-c", FRAGMENT)
    assert r.returncode == 3, r.describe()  # the child's own status comes back
    assert "recorded" in r.stderr, r.describe()
    lines = read_lines(rec)
    head, samples, last = lines[0], lines[1:-1], lines[-1]
    assert head["record"] == 1 and head["command"][0] == sys.executable and head["interval"] == 0.1
    assert last["exit"] == 3 and last["t"] >= 2.0
    assert len(samples) >= 10, len(samples)
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    with_counters = [s for s in samples if s["counters"] is not None]
    assert with_counters, samples[:3]
    # the first set is whole, later ones only what changed
    assert "mesh_count" in with_counters[0]["counters"] and "fork_count" in with_counters[0]["counters"]
    assert any("fork_count" not in s["counters"] for s in with_counters[1:])
    assert all(s["pss_bytes"] > 0 for s in samples)
    assert any((s["arena_memfd_bytes"] or 0) > 0 for s in samples)

    from meshalloc import _record
    got = _record.read_record(str(rec))
    final = got["samples"][-1]["counters"]
    assert final["mesh_count"] > 0, final  # automatic meshing ran, no API call
    passes = got["passes"]
    numbers = [p["number"] for p in passes]
    assert numbers == sorted(set(numbers)) and numbers[-1] <= final["mesh_passes"]
    # every pause the log showed is recorded once, and the meshes they report
    # add up to no more than the counter says
    assert sum(p["meshes"] for p in passes) <= final["mesh_count"]
    assert sum(p["meshes"] for p in passes) > 0
    for p in passes:
        assert 0 <= p["t"] <= last["t"] + 0.5 and 0 <= p["cpu"] <= p["wall"] + 1e-6, p
        assert p["kind"] in ("triggered", "thread", "compact"), p

    png = tmp_path / "rec.png"
    r = meshalloc_cli(helpers, tmp_path, "plot", str(rec), "-o", str(png))
    helpers.assert_ok(r, "plot")
    assert png_size(png) == (1000, 600) and "wrote" in r.stdout


def test_run_record_of_a_process_without_meshalloc_keeps_its_pss(helpers, tmp_path):
    # run sets MESHALLOC=1, but python -S skips the start-up hook: the child
    # never loads meshalloc and shares no counters
    rec2 = tmp_path / "nosite.jsonl"
    r = meshalloc_cli(helpers, tmp_path, "run", "--record", str(rec2), "--interval", "0.05", "--",
                      sys.executable, "-S", "-c", "import time; x = bytearray(8 << 20); time.sleep(0.5)")
    helpers.assert_ok(r, "run --record of a child without the start-up hook")
    samples = read_lines(rec2)[1:-1]
    assert samples and all(s["counters"] is None for s in samples)
    assert max(s["pss_bytes"] for s in samples) > 8 << 20
    png = tmp_path / "nosite.png"
    helpers.assert_ok(meshalloc_cli(helpers, tmp_path, "plot", str(rec2)), "plot, default output name")
    assert png_size(png) == (1000, 600)


def test_run_record_and_plot_bad_inputs_get_a_clear_message_and_status(helpers, tmp_path):
    r = meshalloc_cli(helpers, tmp_path, "run", "--record", str(tmp_path / "x.jsonl"), "--",
                      "no-such-command-here")
    assert r.returncode == 127 and "command not found" in r.stderr, r.describe()
    r = meshalloc_cli(helpers, tmp_path, "run", "--record", str(tmp_path / "no" / "dir" / "x.jsonl"), "--",
                      "true")
    assert r.returncode == 1 and "cannot write" in r.stderr, r.describe()
    r = meshalloc_cli(helpers, tmp_path, "run", "--record", str(tmp_path / "x.jsonl"), "--interval", "0",
                      "--", "true")
    assert r.returncode == 2 and "--interval" in r.stderr, r.describe()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"something": "else"}\n')
    r = meshalloc_cli(helpers, tmp_path, "plot", str(bad))
    assert r.returncode == 1 and "not a meshalloc record" in r.stderr, r.describe()
    r = meshalloc_cli(helpers, tmp_path, "plot", str(tmp_path / "missing.jsonl"))
    assert r.returncode == 1 and "cannot read" in r.stderr, r.describe()
    r = meshalloc_cli(helpers, tmp_path, "plot", str(bad), "--label", "a", "--label", "b")
    assert r.returncode == 2 and "one --label per FILE" in r.stderr, r.describe()


def test_plot_without_matplotlib_says_how_to_get_it(helpers, tmp_path):
    rec = tmp_path / "r.jsonl"
    rec.write_text('{"record": 1, "command": ["true"], "pid": 1, "interval": 0.5, "start": 0}\n'
                   '{"t": 0.1, "pss_bytes": 1048576, "arena_memfd_bytes": null, "counters": null, "passes": []}\n'
                   '{"exit": 0, "t": 0.2}\n')
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from meshalloc import cli; sys.exit(cli.main(['plot', %r]))" % str(rec))
    r = helpers.run([sys.executable, "-c", code], timeout=60, cwd=tmp_path, env=helpers.env())
    assert r.returncode == 1 and "plot needs matplotlib" in r.stderr and "meshalloc[plot]" in r.stderr, \
        r.describe()
    assert not (tmp_path / "r.png").exists()


def test_demo_draws_its_plot_with_the_recording_code(helpers, tmp_path):
    installed_or_skip(helpers, tmp_path)
    png = tmp_path / "demo.png"
    r = meshalloc_cli(helpers, tmp_path, "demo", "--count", "200000", "--plot", str(png), timeout=300)
    helpers.assert_ok(r, "demo --plot")
    assert "wrote %s" % png in r.stdout and png_size(png) == (1000, 600)
