"""The test suite's own safety net works: the guarded runner kills a process
group that outgrows its PSS cap or its time, grandchildren included, and says
why (so that a runaway allocator fails a test instead of the machine)."""
import sys
import time


def test_guard_kills_a_process_group_over_its_pss_cap(helpers):
    hog = "import time\nx = []\nwhile True:\n    x.append(bytearray(16 << 20))\n    time.sleep(0.01)\n"
    r = helpers.run([sys.executable, "-c", hog], timeout=60, pss_cap=256 * helpers.MIB)
    assert r.killed and "PSS" in r.killed, r.describe()
    assert r.returncode < 0
    assert r.duration < 30


def test_guard_kills_forked_children_that_outgrow_the_cap(helpers):
    hog = ("import os, time\n"
           "if os.fork() == 0:\n"
           "    x = []\n"
           "    while True:\n"
           "        x.append(bytearray(16 << 20)); time.sleep(0.01)\n"
           "os.wait()\n")
    r = helpers.run([sys.executable, "-c", hog], timeout=60, pss_cap=256 * helpers.MIB)
    assert r.killed and "PSS" in r.killed, r.describe()


def test_guard_kills_on_timeout_including_grandchildren(helpers, tmp_path):
    marker = tmp_path / "grandchild-alive"
    script = f"(sleep 3; touch {marker}) & sleep 60"
    start = time.monotonic()
    r = helpers.run(["sh", "-c", script], timeout=1)
    assert r.killed and "timeout" in r.killed, r.describe()
    assert time.monotonic() - start < 20
    time.sleep(3.5)
    assert not marker.exists(), "a grandchild survived the group kill"
