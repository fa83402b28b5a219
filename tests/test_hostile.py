"""Legal programs that once broke meshalloc (tests/c/hostile.c and Python
children), each in a fresh process with a memory watchdog, under
LD_PRELOAD=libmesh.so (or MESHALLOC=1) and under the system allocator as the
control: a case that fails under glibc or pymalloc is a broken test, not a
meshalloc bug.

The arena's memfd is a descriptor in the program's table. The program may
close it (closerange), reuse its number for a file of its own, or start with
stdio closed; meshalloc must then never write into the program's files,
never crash, and keep every object.
"""
import re
import signal
import subprocess
import sys
import textwrap

import pytest


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """The plain C program (no core linked: it gets meshalloc only by preload)."""
    d = tmp_path_factory.mktemp("hostile")
    exe = d / "hostile"
    src = __import__("pathlib").Path(__file__).resolve().parent / "c" / "hostile.c"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(exe), str(src), "-ldl"], check=True, timeout=120)
    return exe


def run_case(helpers, cmd, env, cwd, timeout=180):
    r = helpers.run(cmd, timeout=timeout, env=env, cwd=cwd, pss_cap=3 * helpers.GIB)
    assert not r.killed, r.describe()
    return r


CONFIGS = ["glibc", "preload"]


def case_env(helpers, libmesh, config, **extra):
    if config == "preload":
        return helpers.env(LD_PRELOAD=str(libmesh), **extra)
    return helpers.env(**extra)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("case", ["closerange", "closerange-fork", "dup2-over"])
def test_program_that_closes_or_reuses_the_memfd_number_keeps_its_files_and_heap(
        helpers, libmesh, hostile, tmp_path, config, case):
    # (without the meshing thread: a pass or a decay of that thread in flight
    # while the program swaps the number is an open hazard, docs/design.md
    # "Hostile environments"; this checks every call the program makes)
    r = run_case(helpers, [str(hostile), case], case_env(helpers, libmesh, config, MESH_MESHER_THREAD="0"), tmp_path)
    assert r.returncode == 0 and f"{case}: ok" in r.stderr, r.describe()
    warnings = [line for line in r.stderr.splitlines() if "meshalloc: warning" in line]
    assert len(warnings) <= 1, f"one warning at most:\n{r.stderr}"
    if config == "preload" and warnings:
        assert "memfd" in warnings[0] and "left alone" in warnings[0], r.stderr


@pytest.mark.parametrize("config", CONFIGS)
def test_signal_handler_writing_heap_objects_during_meshing_finishes(helpers, libmesh, hostile, tmp_path, config):
    r = run_case(helpers, [str(hostile), "alarm-writer"], case_env(helpers, libmesh, config), tmp_path, timeout=60)
    assert r.returncode == 0 and "alarm-writer: ok" in r.stderr, r.describe()


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("thread", ["1", "0"])
def test_program_with_many_mappings_of_its_own_can_still_map_more(helpers, libmesh, hostile, tmp_path, config,
                                                                  thread):
    env = case_env(helpers, libmesh, config, MESH_MESHER_THREAD=thread)
    r = run_case(helpers, [str(hostile), "many-mappings"], env, tmp_path, timeout=120)
    assert r.returncode == 0 and "many-mappings: ok" in r.stderr, r.describe()


@pytest.mark.parametrize("config", CONFIGS)
def test_writers_that_block_every_signal_survive_meshing(helpers, libmesh, hostile, tmp_path, config):
    """A thread with every signal blocked, and a handler with a full
    sa_mask, write heap objects while the program compacts."""
    r = run_case(helpers, [str(hostile), "blocked-writers"], case_env(helpers, libmesh, config), tmp_path,
                 timeout=120)
    assert r.returncode == 0 and "blocked-writers: ok" in r.stderr, r.describe()


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("case", ["dgram", "dgram-syscall"])  # libc's wrappers; syscall(2) with numbers
def test_datagrams_and_eventfd_counts_received_into_meshed_buffers_are_never_lost(
        helpers, libmesh, hostile, tmp_path, config, case):
    r = run_case(helpers, [str(hostile), case], case_env(helpers, libmesh, config), tmp_path, timeout=120)
    assert r.returncode == 0 and f"{case}: ok" in r.stderr, r.describe()


@pytest.mark.parametrize("config", CONFIGS)
def test_stdio_reads_into_buffers_stdio_allocated_itself_are_never_lost(helpers, libmesh, hostile, tmp_path,
                                                                      config):
    r = run_case(helpers, [str(hostile), "stdio-reader"], case_env(helpers, libmesh, config), tmp_path, timeout=120)
    assert r.returncode == 0 and "stdio-reader: ok" in r.stderr, r.describe()


@pytest.mark.parametrize("config", CONFIGS)
def test_blocks_the_program_protects_keep_their_protection(helpers, libmesh, hostile, tmp_path, config):
    r = run_case(helpers, [str(hostile), "mprotect"], case_env(helpers, libmesh, config), tmp_path, timeout=120)
    assert r.returncode == 0 and "mprotect: ok" in r.stderr, r.describe()


@pytest.mark.parametrize("limit_kib", [200000, 1000000])
@pytest.mark.parametrize("block", [64, 1 << 20])
def test_address_space_limit_leaves_the_program_what_glibc_would(helpers, libmesh, hostile, tmp_path, limit_kib,
                                                                  block):
    """Under ulimit -v the arena is mapped as it is used (small blocks once
    stopped at a quarter of the limit) and large blocks that do not fit are
    mapped on their own: an 8 MiB block, then blocks until ENOMEM, reach
    at least 90 % of what glibc reaches."""
    limit = limit_kib * 1024
    wrapper = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (%d, %d)); "
               "os.execv(sys.argv[1], sys.argv[1:])" % (limit, limit))
    got = {}
    for config in CONFIGS:
        r = run_case(helpers, [sys.executable, "-c", wrapper, str(hostile), "addr-limit", str(block)],
                     case_env(helpers, libmesh, config), tmp_path, timeout=120)
        assert r.returncode == 0 and "addr-limit: ok" in r.stderr, r.describe()
        got[config] = int(re.search(r"addr-limit: (\d+) MiB", r.stderr).group(1))
    assert got["preload"] >= 0.9 * got["glibc"], got


@pytest.mark.parametrize("config", ["release", "debug"])
def test_arena_grows_under_an_address_space_limit_and_stops_at_a_mapping_in_its_way(helpers, cbuild, tmp_path,
                                                                                  config):
    """tests/c/arena_limit.c: under RLIMIT_AS the arena grows with its small
    blocks; a page the program maps where it would grow next ends it there
    (ENOMEM for small blocks, one warning, the page untouched), and large
    blocks still come from mappings of their own."""
    r = run_case(helpers, [str(cbuild("arena_limit", config))], helpers.env(), tmp_path, timeout=120)
    helpers.assert_ok(r, "arena_limit")
    assert "arena_limit ok" in r.stdout
    assert r.stderr.count("meshalloc: warning") == 1 and "cannot grow past" in r.stderr, r.stderr


@pytest.mark.parametrize("config", ["meshalloc", "pymalloc"])
def test_python_under_an_address_space_limit_gets_memory_error_not_a_crash(helpers, tmp_path, config):
    """MESHALLOC=1 under ulimit -v: a list of bytes objects grows until
    MemoryError, which the program catches and goes on from."""
    limit = 400 << 20
    code = ("import resource, os, sys\n"
            "x = []\n"
            "try:\n"
            "    while True:\n"
            "        x.append(b'x' * (16 + len(x) % 500))\n"
            "except MemoryError:\n"
            "    n = len(x)\n"
            "del x\n"
            "y = [b'again' * 10 for _ in range(100000)]\n"
            "print('objects', n, 'then', len(y))\n")
    wrapper = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, (%d, %d)); "
               "os.execv(sys.executable, [sys.executable, '-c', sys.argv[1]])" % (limit, limit))
    env = helpers.env(MESHALLOC="1") if config == "meshalloc" else helpers.env()
    r = helpers.run([sys.executable, "-c", wrapper, code], timeout=120, env=env, cwd=tmp_path,
                    pss_cap=2 * helpers.GIB)
    assert not r.killed and r.returncode == 0, r.describe()
    m = re.search(r"objects (\d+) then 100000", r.stdout)
    assert m and int(m.group(1)) > 100000, r.describe()


@pytest.mark.parametrize("config", CONFIGS)
def test_program_started_with_stdio_closed_gets_descriptor_0_for_its_first_file(
        helpers, libmesh, hostile, tmp_path, config):
    cmd = ["sh", "-c", f'exec 0<&- 1>&- "{hostile}" stdio-closed']
    r = run_case(helpers, cmd, case_env(helpers, libmesh, config), tmp_path)
    assert r.returncode == 0 and "stdio-closed: ok" in r.stderr, r.describe()


@pytest.mark.parametrize("config", CONFIGS)
def test_shell_that_redirects_descriptor_3_runs_its_commands(helpers, libmesh, tmp_path, config):
    """bash under preload had its memfd at 3; ``exec 3>file`` replaced it."""
    script = "exec 3>out.txt; for i in 1 2 3 4 5; do env true || exit 9; ls / >/dev/null || exit 8; done; echo kept >&3"
    r = run_case(helpers, ["bash", "-c", script], case_env(helpers, libmesh, config), tmp_path)
    assert r.returncode == 0, r.describe()
    assert (tmp_path / "out.txt").read_text() == "kept\n"


def test_memfd_sits_at_a_high_descriptor_number(helpers, libmesh, tmp_path):
    code = textwrap.dedent("""
        import os
        def target(n):
            try:
                return os.readlink('/proc/self/fd/' + n)
            except FileNotFoundError:  # the listing's own descriptor
                return ''
        mem = [int(n) for n in os.listdir('/proc/self/fd') if 'meshalloc-arena' in target(n)]
        print(mem, open(os.devnull).fileno())
    """)
    r = run_case(helpers, [sys.executable, "-c", code],
                 helpers.env(LD_PRELOAD=str(libmesh), PYTHONMALLOC="malloc"), tmp_path)
    helpers.assert_ok(r, "python under preload")
    mem, first = r.stdout.split("]")
    mem = [int(x) for x in mem.strip("[ ").split(",") if x.strip()]
    assert len(mem) == 1 and mem[0] >= 64, r.stdout
    assert int(first) < 64, r.stdout


PY_CLOSERANGE = textwrap.dedent("""
    import os, random, resource, meshalloc
    rng = random.Random(7)
    objs = [("%d" % i) * rng.randint(1, 20) for i in range(400000)]
    keep = {i: objs[i] for i in range(0, len(objs), 10)}
    del objs
    meshalloc.compact()
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    files = []
    for n in range(6):
        f = open("user-%d.dat" % n, "w+b")
        f.write(bytes((n * 7 + k) & 255 for k in range(1 << 18)))
        f.flush()
        files.append(f)
    for r in range(5):
        junk = [("%d" % i) * rng.randint(1, 20) for i in range(200000)]
        del junk[::2]
        meshalloc.compact()
        del junk
    for n, f in enumerate(files):
        f.seek(0)
        assert f.read() == bytes((n * 7 + k) & 255 for k in range(1 << 18)), "file %d changed" % n
    assert all(v == ("%d" % i) * (len(v) // len("%d" % i)) for i, v in keep.items())
    print("closerange: ok")
""")


@pytest.mark.parametrize("config", ["pymalloc", "meshalloc", "preload"])
def test_python_closerange_keeps_files_and_objects(helpers, libmesh, tmp_path, config):
    env = {"pymalloc": helpers.env(), "meshalloc": helpers.env(MESHALLOC="1"),
           "preload": helpers.env(LD_PRELOAD=str(libmesh), PYTHONMALLOC="malloc")}[config]
    code = PY_CLOSERANGE
    if config == "pymalloc":
        code = code.replace("import os, random, resource, meshalloc", "import os, random, resource") \
                   .replace("meshalloc.compact()", "pass")
    r = run_case(helpers, [sys.executable, "-c", code], env, tmp_path, timeout=300)
    helpers.assert_ok(r, f"closerange under {config}")
    assert "closerange: ok" in r.stdout
    assert r.stderr.count("meshalloc: warning") <= 1, r.stderr


@pytest.mark.parametrize("config", ["release", "debug"])
def test_orphaned_arena_keeps_objects_and_never_touches_the_programs_file(helpers, cbuild, tmp_path, config):
    # (without the meshing thread: see the test above)
    r = run_case(helpers, [str(cbuild("orphan", config))], helpers.env(MESH_MESHER_THREAD="0"), tmp_path, timeout=300)
    helpers.assert_ok(r, "orphan")
    assert "orphan ok" in r.stdout
    assert r.stderr.count("meshalloc: warning") == 1 and "left alone" in r.stderr, r.stderr


FAULTHANDLER_CASES = {
    # faulthandler put back the handler it saved (meshalloc's, or the
    # default) while meshalloc chained to faulthandler's: the crash must
    # still end the process, not loop in a disabled handler
    "disabled": "faulthandler.enable(); COMPACT; faulthandler.disable(); CRASH",
    "toggled": "faulthandler.enable(); COMPACT; faulthandler.disable(); faulthandler.enable(); COMPACT; "
               "faulthandler.disable(); COMPACT; CRASH",
    "enabled": "faulthandler.enable(); COMPACT; CRASH",
    "sent": "faulthandler.enable(); COMPACT; faulthandler.disable(); os.kill(os.getpid(), signal.SIGSEGV); "
            "time.sleep(5)",
}


@pytest.mark.parametrize("config", ["pymalloc", "meshalloc", "preload"])
@pytest.mark.parametrize("case", sorted(FAULTHANDLER_CASES))
def test_real_fault_after_faulthandler_changes_kills_with_sigsegv(helpers, libmesh, tmp_path, config, case):
    env = {"pymalloc": helpers.env(), "meshalloc": helpers.env(MESHALLOC="1"),
           "preload": helpers.env(LD_PRELOAD=str(libmesh), PYTHONMALLOC="malloc")}[config]
    compact = "pass" if config == "pymalloc" else "meshalloc.compact()"
    code = ("import ctypes, faulthandler, os, signal, time\n"
            + ("" if config == "pymalloc" else "import meshalloc\n")
            + "x = [str(i) * 5 for i in range(200000)]; del x[::3]\n"
            + FAULTHANDLER_CASES[case].replace("COMPACT", compact).replace("CRASH", "ctypes.string_at(0)"))
    r = helpers.run([sys.executable, "-c", code], timeout=60, env=env, cwd=tmp_path)
    assert not r.killed, f"the process did not end (a fault loop?)\n{r.describe()}"
    assert r.returncode == -signal.SIGSEGV, r.describe()
    if case == "enabled":
        assert "Fatal Python error" in r.stderr, r.describe()


@pytest.mark.parametrize("config", ["release", "debug"])
def test_program_at_the_kernels_mapping_limit_never_aborts_the_allocator(helpers, cbuild, tmp_path, config):
    """The program maps pages of its own up to vm.max_map_count; restoring
    freed aliases then fails: the ranges are set aside and restored later."""
    r = run_case(helpers, [str(cbuild("maplimit", config))], helpers.env(), tmp_path, timeout=300)
    helpers.assert_ok(r, "maplimit")
    assert "maplimit ok" in r.stdout
    assert r.stderr.count("meshalloc: warning") == 1 and "set aside" in r.stderr, r.stderr


@pytest.mark.parametrize("config", ["release", "debug"])
def test_mapping_call_refused_in_the_middle_of_a_mesh_undoes_that_mesh(helpers, cbuild, tmp_path, config):
    """The n-th mapping call of a compaction fails with ENOMEM, as at
    vm.max_map_count (tests/c/mesh_faults.c, for every n, sources with and
    without aliases): the mesh is undone, counted and warned about once, the
    heap checks, every object keeps its bytes, and meshing goes on."""
    r = run_case(helpers, [str(cbuild("mesh_faults", config))], helpers.env(), tmp_path, timeout=300)
    helpers.assert_ok(r, "mesh_faults")
    assert "mesh_faults ok" in r.stdout
    refusals = [line for line in r.stderr.splitlines() if "refused" in line]
    assert 1 <= len(refusals) <= 2, r.stderr  # one for a promotion, one for the rest of a mesh
