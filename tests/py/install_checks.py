"""Scenarios for meshalloc.install(), one per fresh interpreter.

    python tests/py/install_checks.py SCENARIO [ARGS...]

Each scenario asserts what it checks and ends by printing ``OK <scenario>``;
any failure is an exception (exit 1) or a crash (a signal). The test module
tests/test_python_install.py runs them on every CPython it can build the
extension for, each in a fresh subprocess, with the environment the
scenario needs (MESHALLOC=1, PYTHONMALLOC=debug, ...). The package must be
importable (installed, or in the venv made by tests/py/build_ext.py); run
it from a directory that does not contain the source tree's ``meshalloc/``.
"""
from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading

import meshalloc

SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def owned(obj) -> bool:
    return meshalloc.owns(id(obj))


def list_items_address(lst: list) -> int:
    """Address of a list's item array (ob_item: after refcnt, type, size)."""
    return ctypes.c_void_p.from_address(id(lst) + 3 * ctypes.sizeof(ctypes.c_void_p)).value or 0


def pyapi(name, restype, *argtypes):
    fn = getattr(ctypes.pythonapi, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


def expect_refusal(words, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except meshalloc.InstallError as exc:
        assert isinstance(exc, RuntimeError)
        for word in words:
            assert word in str(exc), (word, str(exc))
        return str(exc)
    raise AssertionError("expected InstallError (%s)" % ", ".join(words))


# ---------------------------------------------------------------------------


@scenario
def basic():
    before = [("pre-%d" % i) * 2 for i in range(20000)]
    grow_before = [[i] for i in range(500)]
    assert not meshalloc.is_installed()
    assert meshalloc.installed_domains() == ()
    assert meshalloc.install() is True
    assert meshalloc.install() is False, "installing twice is a no-op"
    assert meshalloc.install(domains=("obj",)) is False
    assert meshalloc.is_installed()
    assert meshalloc.installed_domains() == ("mem", "obj"), meshalloc.installed_domains()
    alloc = meshalloc.allocators()
    assert alloc["mem"]["meshalloc"] and alloc["obj"]["meshalloc"], alloc
    assert not alloc["raw"]["hooked"], "RAW is opt-in"

    new = [("post-%d" % i) * 2 for i in range(20000)]
    assert all(owned(s) for s in new), "new objects come from meshalloc"
    assert not any(owned(s) for s in before), "old objects stay where they were"

    # foreign blocks: realloc goes to the previous allocator (never migrated)
    for lst in grow_before:
        old_items = list_items_address(lst)
        lst.extend(range(200))
        assert not meshalloc.owns(old_items)
        assert not meshalloc.owns(list_items_address(lst)), "a foreign block was migrated"
    # our blocks: realloc stays ours
    mine = [1]
    for i in range(10000):
        mine.append(i)
    assert meshalloc.owns(list_items_address(mine))
    del before, grow_before
    gc.collect()

    # the PyMem API edge cases, through the hooks
    malloc = pyapi("PyMem_Malloc", ctypes.c_void_p, ctypes.c_size_t)
    calloc = pyapi("PyMem_Calloc", ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)
    realloc = pyapi("PyMem_Realloc", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    free = pyapi("PyMem_Free", None, ctypes.c_void_p)
    p0, p1 = malloc(0), malloc(0)
    assert p0 and p1 and p0 != p1, "size 0 gives distinct non-NULL blocks"
    assert meshalloc.owns(p0)
    q = realloc(p0, 0)
    assert q, "realloc(p, 0) must not free"
    free(q)
    free(p1)
    free(None)
    c = calloc(100, 40)
    assert c and meshalloc.owns(c)
    assert ctypes.string_at(c, 4000) == b"\0" * 4000
    free(c)
    assert calloc(1 << 62, 1 << 10) is None, "calloc overflow"
    assert calloc(0, 8) is not None
    r = realloc(None, 100)
    assert r and meshalloc.owns(r)
    ctypes.memset(r, 7, 100)
    r = realloc(r, 100000)
    assert ctypes.string_at(r, 100) == b"\7" * 100
    free(r)

    assert meshalloc.check_heap() == 0
    result = meshalloc.compact()
    assert isinstance(result, tuple) and len(result) == 4
    assert result.bytes_freed == result.pages_freed * 4096 and result.pause_seconds >= 0
    n = meshalloc._gc_compactions
    meshalloc._gc_last_end = -1e18  # forget the rate limit
    gc.collect()
    if meshalloc.get_option("period_ms") > 0 and meshalloc.get_option("mesh"):
        assert meshalloc._gc_compactions == n + 1, "a full collection meshes"
    gc.collect(0)
    del new, mine
    print("OK basic")


@scenario
def raw_domain():
    raw_malloc = pyapi("PyMem_RawMalloc", ctypes.c_void_p, ctypes.c_size_t)
    raw_free = pyapi("PyMem_RawFree", None, ctypes.c_void_p)
    raw_realloc = pyapi("PyMem_RawRealloc", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    old = raw_malloc(64)
    assert not meshalloc.owns(old)
    assert meshalloc.install(domains="raw,mem,obj") is True
    assert meshalloc.installed_domains() == ("raw", "mem", "obj")
    new = raw_malloc(64)
    assert meshalloc.owns(new)
    old = raw_realloc(old, 4096)
    assert old and not meshalloc.owns(old), "foreign RAW block migrated"
    raw_free(old)
    raw_free(new)
    print("OK raw_domain")


@scenario
def env_domains():
    # MESHALLOC_DOMAINS is set by the caller
    want = tuple(os.environ["MESHALLOC_DOMAINS"].split(","))
    assert meshalloc.is_installed()
    assert meshalloc.installed_domains() == want, (meshalloc.installed_domains(), want)
    try:
        meshalloc.install(domains=("heap",))
    except ValueError:
        pass
    else:
        raise AssertionError("unknown domain accepted")
    print("OK env_domains")


@scenario
def uninstall():
    assert meshalloc.uninstall() is False
    meshalloc.install()
    a = [("a%d" % i) * 3 for i in range(5000)]
    grow = [0]
    assert owned(a[0]) and meshalloc.owns(list_items_address(grow))
    assert meshalloc.uninstall() is True
    assert meshalloc.uninstall() is False
    assert not meshalloc.is_installed()
    b = [("b%d" % i) * 3 for i in range(5000)]
    assert not any(owned(s) for s in b), "new allocations went back"
    for i in range(5000):  # realloc of an owned block keeps using meshalloc
        grow.append(i)
    assert meshalloc.owns(list_items_address(grow))
    alloc = meshalloc.allocators()
    assert alloc["obj"]["meshalloc"] and alloc["obj"]["hooked"], "the hooks stay"
    assert not alloc["obj"]["diverting"]
    del a, grow  # meshalloc blocks freed by range check
    gc.collect()
    assert meshalloc.install() is True, "install after uninstall switches back"
    c = [("c%d" % i) * 3 for i in range(100)]
    assert all(owned(s) for s in c)
    del b, c
    gc.collect()
    assert meshalloc.check_heap() == 0
    print("OK uninstall")


@scenario
def tracemalloc_refusal():
    import tracemalloc

    tracemalloc.start(5)
    expect_refusal(["tracemalloc"], meshalloc.install)
    assert not meshalloc.is_installed()
    assert meshalloc.install(restart_tracemalloc=True) is True
    assert tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 5
    x = [("t%d" % i) * 2 for i in range(2000)]
    assert all(owned(s) for s in x)
    snap = tracemalloc.take_snapshot()
    assert snap.statistics("lineno"), "tracemalloc wraps meshalloc and still traces"
    tracemalloc.stop()  # puts meshalloc's hooks back
    assert meshalloc.allocators()["obj"]["meshalloc"]
    y = [("u%d" % i) * 2 for i in range(2000)]
    assert all(owned(s) for s in y)
    del x, y, snap
    gc.collect()
    print("OK tracemalloc_refusal")


@scenario
def tracemalloc_after_install():
    import tracemalloc

    meshalloc.install()
    tracemalloc.start()
    x = [("t%d" % i) * 2 for i in range(2000)]
    assert all(owned(s) for s in x)
    current, _peak = tracemalloc.get_traced_memory()
    assert current > 2000 * 40, current
    assert meshalloc.install() is False  # no-op even while tracemalloc traces
    tracemalloc.stop()  # SPEC 7: tracemalloc.stop() after a later install
    assert meshalloc.is_installed() and meshalloc.allocators()["mem"]["meshalloc"]
    y = [("u%d" % i) * 2 for i in range(2000)]
    assert all(owned(s) for s in y)
    del x, y
    gc.collect()
    print("OK tracemalloc_after_install")


@scenario
def foreign_hook():
    """argv: directory holding the _foreign_hook extension; 'late' or 'early'."""
    sys.path.insert(0, sys.argv[2])
    when = sys.argv[3]
    import _foreign_hook

    if when == "early":  # hooked before meshalloc looked: part of the baseline
        assert _foreign_hook.install()
        assert meshalloc.install() is True
    else:
        meshalloc.version()  # loads the extension: it records the allocators
        assert _foreign_hook.install()
        under_foreign = [("f%d" % i) * 2 for i in range(2000)]
        msg = expect_refusal(["unknown allocator hook", "force=True", "_foreign_hook"],
                             meshalloc.install)
        assert not meshalloc.is_installed(), msg
        assert meshalloc.install(force=True) is True
        calls = _foreign_hook.calls()
        del under_foreign  # foreign blocks go back through the foreign hook
        gc.collect()
        assert _foreign_hook.calls() > calls + 1000
    x = [("m%d" % i) * 2 for i in range(2000)]
    assert all(owned(s) for s in x)
    assert meshalloc.allocators()["obj"]["wrapped_object"].endswith(
        os.path.basename(_foreign_hook.__file__))
    del x
    gc.collect()
    print("OK foreign_hook")


@scenario
def two_copies():
    """argv: path of another build of the _meshalloc extension."""
    import importlib.util

    assert meshalloc.install() is True
    spec = importlib.util.spec_from_file_location("othercopy._meshalloc", sys.argv[2])
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)
    for force in (False, True):
        try:
            other._install(6, force)
        except RuntimeError as exc:
            assert "another copy of meshalloc" in str(exc), str(exc)
        else:
            raise AssertionError("a second meshalloc copy wrapped the first")
    assert other.installed_domains() == 0
    print("OK two_copies")


def _compress_worker(seed: int, rounds: int, errors: list) -> None:
    import bz2
    import lzma
    import zlib

    try:
        data = (b"meshalloc %d " % seed) * 4000 + bytes(range(256)) * 40
        for _ in range(rounds):
            assert zlib.decompress(zlib.compress(data, 6)) == data
            assert bz2.decompress(bz2.compress(data, 5)) == data
            assert lzma.decompress(lzma.compress(data, preset=1)) == data
            junk = [str(i) * (i % 50) for i in range(2000)]
            d = {i: junk[i] for i in range(0, 2000, 3)}
            del junk, d
    except BaseException as exc:  # pragma: no cover - reported by the main thread
        errors.append(exc)


@scenario
def threads():
    """argv: domains (e.g. mem,obj or raw,mem,obj). The hooks go in while the
    threads already allocate (RAW callers run without the GIL)."""
    import time

    errors: list = []
    workers = [threading.Thread(target=_compress_worker, args=(k, 6, errors)) for k in range(8)]
    for t in workers:
        t.start()
    time.sleep(0.02)
    assert meshalloc.install(domains=sys.argv[2]) is True
    for _ in range(3):
        meshalloc.compact()  # meshing while the threads run
    more = [threading.Thread(target=_compress_worker, args=(k, 2, errors)) for k in range(4)]
    for t in more:
        t.start()
    for t in workers + more:
        t.join()
    assert not errors, errors
    assert meshalloc.check_heap() == 0
    print("OK threads")


def _mp_child(args):
    size, fill = args
    blob = bytes([fill]) * size
    objs = [str(i) * (size // 100 + 1) for i in range(100)]
    return (meshalloc.is_installed(), os.environ.get("MESHALLOC"), len(blob), len(objs),
            meshalloc.owns(id(objs[-1])))


SIZES = (24, 100, 600, 1000, 4000, 17000, 100000)


@scenario
def fork():
    """MESHALLOC=1 (the start-up switch) then os.fork and multiprocessing."""
    import multiprocessing

    assert meshalloc.is_installed(), "MESHALLOC=1 did not install"
    objs = {size: [bytes([k % 251]) * size for k in range(20)] for size in SIZES}
    strs = [("s%d" % i) * 5 for i in range(20000)]
    assert owned(strs[-1])
    pid = os.fork()
    if pid == 0:  # child: every inherited object intact, allocation works
        code = 0
        try:
            for size, blobs in objs.items():
                for k, b in enumerate(blobs):
                    if b != bytes([k % 251]) * size:
                        code = 3
            if strs[12345] != "s12345" * 5:
                code = 4
            more = [("c%d" % i) * 5 for i in range(20000)]
            if not all(owned(s) for s in more[:100]):
                code = 5
            del more
            gc.collect()
            if meshalloc.check_heap() != 0:
                code = 6
        except BaseException:
            code = 7
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    strs[0] = "parent" * 3  # the parent's heap is its own
    assert strs[1] == "s1" * 5

    methods = [m for m in ("fork", "spawn", "forkserver")
               if m in multiprocessing.get_all_start_methods()]
    for method in methods:
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(2) as pool:
            results = pool.map(_mp_child, [(s, s % 251) for s in SIZES])
        for installed, env, size, n, own in results:
            assert installed and env == "1" and own, (method, installed, env, own)
    del objs, strs
    print("OK fork", ",".join(methods))


@scenario
def startup():
    """Checked from inside a process started with the switch on."""
    assert meshalloc.is_installed(), "the start-up switch did not install"
    assert os.environ.get("MESHALLOC") == "1", "children must inherit the switch"
    x = [("s%d" % i) * 2 for i in range(100)]
    assert all(owned(s) for s in x)
    print("OK startup")


@scenario
def debug_hooks():
    """Run under PYTHONMALLOC=debug or -X dev: an explicit install wraps the
    debug hooks."""
    before = [("d%d" % i) * 2 for i in range(5000)]
    assert not meshalloc.is_installed(), "the start-up switch must leave debug hooks alone"
    assert meshalloc.install() is True
    assert meshalloc.allocators()["obj"]["wrapped_object"]
    x = [("x%d" % i) * 2 for i in range(5000)]
    assert all(owned(s) for s in x)
    del before  # freed through the debug hooks (checked)
    gc.collect()
    for i in range(200):
        lst = [x] * i
        lst.extend(range(100))
        del lst
    del x
    gc.collect()
    assert meshalloc.check_heap() == 0
    print("OK debug_hooks")


def _daemon_allocator(k: int) -> None:
    keep = []
    i = 0
    while True:
        i += 1
        keep.append({"k": k, "i": i, "s": "x" * (i % 300), "l": [i] * (i % 20)})
        if len(keep) > 500:
            del keep[: 250]


@scenario
def daemon_exit():
    """Daemon threads keep allocating while the interpreter exits."""
    assert meshalloc.install() is True
    import time

    for k in range(4):
        threading.Thread(target=_daemon_allocator, args=(k,), daemon=True).start()
    time.sleep(0.05)
    print("OK daemon_exit", flush=True)
    # returns with the threads still running


def _refcount_toucher(objs, stop):
    while not stop.is_set():
        for o in objs:  # every reference taken writes the object's refcount
            pass


@scenario
def faulthandler_meshing():
    """-X faulthandler: meshing with a writer thread, handler chaining.
    Run with MESH_PERIOD_MS=0 so that compact() does all the meshing."""
    import faulthandler
    import random

    assert faulthandler.is_enabled()
    assert meshalloc.is_installed()
    rng = random.Random(5)
    objs = [("k%d" % i) * 3 for i in range(300000)]
    kept = [o for o in objs if rng.random() < 0.05]
    del objs
    gc.collect()
    stop = threading.Event()
    t = threading.Thread(target=_refcount_toucher, args=(kept, stop))
    t.start()
    total = 0
    for _ in range(3):
        total += meshalloc.compact().pages_freed
    stop.set()
    t.join()
    assert all(o.startswith("k") for o in kept)
    assert meshalloc.check_heap() == 0
    if meshalloc.meshing_available():
        assert total > 0, "nothing was meshed"
    faulthandler.enable()  # re-installed after meshing started: must still chain
    meshalloc.compact()
    print("OK faulthandler_meshing pages=%d barrier_waits=%d"
          % (total, meshalloc.stats().get("mesh_barrier_waits", 0)), flush=True)
    if len(sys.argv) > 2 and sys.argv[2] == "crash":
        ctypes.string_at(0)  # a real SIGSEGV: faulthandler reports, then it crashes


@scenario
def subinterpreter():
    """3.12+: install() from a subinterpreter is refused."""
    try:
        import _interpreters as interpreters  # 3.13
    except ImportError:
        import _xxsubinterpreters as interpreters  # 3.12
    out = sys.argv[2]
    code = (
        "import meshalloc\n"
        "try:\n"
        "    meshalloc.install()\n"
        "    result = 'installed'\n"
        "except meshalloc.InstallError as exc:\n"
        "    result = 'refused: ' + str(exc)\n"
        "with open(%r, 'w') as f:\n"
        "    f.write(result)\n" % out
    )
    for kind in ("isolated", "legacy"):
        if sys.version_info >= (3, 13):
            interp = interpreters.create(kind)
        else:
            interp = interpreters.create(isolated=(kind == "isolated"))
        try:
            interpreters.run_string(interp, code)
        finally:
            interpreters.destroy(interp)
        with open(out) as f:
            result = f.read()
        assert result.startswith("refused:") and "main interpreter" in result, (kind, result)
    assert not meshalloc.is_installed()
    assert meshalloc.install() is True  # the main interpreter may
    print("OK subinterpreter")


@scenario
def fragmentation():
    """argv: 'compact' or 'plain'. Prints PSS (bytes) after the churn."""
    import json
    import random

    def pss() -> int:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        return 0

    rng = random.Random(2)
    objs = ["%08d-%s" % (i, "x" * (i % 40)) for i in range(1000000)]
    kept = [o for o in objs if rng.random() < 0.02]
    del objs
    gc.collect()
    before = pss()
    result = None
    if sys.argv[2] == "compact":
        result = meshalloc.compact()._asdict()
    after = pss()
    assert all(o[8] == "-" for o in kept)
    print(json.dumps({"installed": meshalloc.is_installed(), "kept": len(kept),
                      "pss_before": before, "pss_after": after, "compact": result}))


if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
