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
import time

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
    period = meshalloc.get_option("period_ms")
    if period > 0 and meshalloc.get_option("mesh") and meshalloc.meshing_available():
        # the core's wait between periodic passes (period_ms << mesh_pace_level)
        # decides: passed (1 ms since the compaction above), a full collection meshes
        meshalloc.set_option("period_ms", 1)
        meshalloc._gc_last_pause = 0.0  # forget the duty limit
        for _ in range(5):  # (a pass of the meshing thread may have just ended)
            time.sleep(0.1)
            gc.collect()
            if meshalloc._gc_compactions > n:
                break
        assert meshalloc._gc_compactions == n + 1, "a full collection meshes"
        # within the wait: not again
        meshalloc.set_option("period_ms", 600000)
        gc.collect()
        assert meshalloc._gc_compactions == n + 1, "compacted again within the wait"
        meshalloc.set_option("period_ms", period)
    gc.collect(0)
    del new, mine
    print("OK basic")


@scenario
def realloc_classes():
    """PyMem_Realloc/PyObject_Realloc through the hooks, across size classes
    (16 B ... 64 KiB large blocks) up and down: every step keeps the bytes
    it can, the block stays meshalloc's, and a size within the block's
    class keeps its address; a list grown item by item keeps its items."""
    assert meshalloc.install() or meshalloc.is_installed()
    for api in ("PyMem", "PyObject"):
        malloc_ = pyapi(api + "_Malloc", ctypes.c_void_p, ctypes.c_size_t)
        realloc_ = pyapi(api + "_Realloc", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
        free_ = pyapi(api + "_Free", None, ctypes.c_void_p)
        p = malloc_(16)
        ctypes.memmove(p, bytes(range(16)), 16)
        kept = bytes(range(16))
        for size in (24, 100, 513, 4000, 17000, 65536, 3000, 200, 17, 16, 1):
            q = realloc_(p, size)
            assert q and meshalloc.owns(q), (api, size, q)
            n = min(len(kept), size)
            assert ctypes.string_at(q, n) == kept[:n], (api, size)
            fresh = bytes((size * 7 + i) & 255 for i in range(size))
            ctypes.memmove(q, fresh, size)
            kept = fresh
            same = realloc_(q, size)  # the same size: no move
            assert same == q, (api, size, q, same)
            p = q
        free_(p)
    items = []
    for i in range(100000):
        items.append(i * 3)
    assert meshalloc.owns(list_items_address(items))
    assert items[::25000] == [0, 75000, 150000, 225000] and sum(items) == 3 * 99999 * 100000 // 2
    print("OK realloc_classes")


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
    # docs/python.md, "Refusals": tracemalloc.stop() after a later install
    tracemalloc.stop()
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
          % (total, meshalloc.stats().mesh_barrier_waits), flush=True)
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


# ---------------------------------------------------------------------------
# stats(): the typed snapshot and the hook counters (docs/python.md)


def _hook_values(s) -> dict:
    return {name: getattr(s, name) for name in s.HOOK_FIELDS}


def _assert_monotonic(earlier, later) -> None:
    a, b = _hook_values(earlier), _hook_values(later)
    for name in a:
        assert b[name] >= a[name], (name, a[name], b[name])


@scenario
def stats():
    import dataclasses
    import json

    s0 = meshalloc.stats()
    assert isinstance(s0, meshalloc.Stats) and dataclasses.is_dataclass(s0)
    assert s0.extra == {}, "the core and the package disagree: %r" % s0.extra
    for f in dataclasses.fields(s0):
        value = getattr(s0, f.name)
        if f.name in ("installed_domains", "size_classes"):
            assert value == (), (f.name, value)  # no heap yet: no spans
        elif f.name != "extra":
            assert type(value) is int, (f.name, value)
    assert all(v == 0 for v in _hook_values(s0).values()), _hook_values(s0)
    assert s0.pss_bytes == 0 and s0.meshing_available in (0, 1)
    assert meshalloc.stats(pss=True).pss_bytes > 0

    before = [("pre-%d" % i) * 2 for i in range(20000)]
    foreign_list = [0] * 8
    assert meshalloc.install() is True
    s1 = meshalloc.stats()
    assert s1.installed_domains == ("mem", "obj"), s1.installed_domains

    new = [("post-%d" % i) * 2 for i in range(20000)]
    s2 = meshalloc.stats()
    # the new strings (about 60 bytes each) are live objects of their classes
    in_classes = sum(c.objects_in_use for c in s2.size_classes)
    assert isinstance(s2.size_classes[0], meshalloc.SizeClassStats) and in_classes >= 20000, s2.size_classes
    assert s2.obj_allocs - s1.obj_allocs >= 20000, (s1.obj_allocs, s2.obj_allocs)
    del before
    s3 = meshalloc.stats()
    assert s3.obj_foreign_frees - s2.obj_foreign_frees >= 20000
    del new
    s4 = meshalloc.stats()
    assert s4.obj_frees - s3.obj_frees >= 20000
    # a list's item array is a MEM block: growing it reallocates
    foreign_list.extend(range(5000))
    owned_list = [0]
    for i in range(5000):
        owned_list.append(i)
    s5 = meshalloc.stats()
    assert s5.mem_foreign_reallocs > s4.mem_foreign_reallocs, "foreign realloc not counted"
    assert s5.mem_reallocs > s4.mem_reallocs, "realloc of a meshalloc block not counted"
    assert s5.mem_allocs > 0 and s5.mem_frees > 0
    assert s5.raw_allocs == s5.raw_frees == s5.raw_foreign_frees == 0, "RAW is not installed"
    assert s5.foreign_frees == s5.raw_foreign_frees + s5.mem_foreign_frees + s5.obj_foreign_frees
    assert s5.foreign_reallocs == (s5.raw_foreign_reallocs + s5.mem_foreign_reallocs
                                   + s5.obj_foreign_reallocs)
    for earlier, later in ((s0, s1), (s1, s2), (s2, s3), (s3, s4), (s4, s5)):
        _assert_monotonic(earlier, later)

    d = s5.to_dict()
    assert list(d)[:len(meshalloc.Stats.CORE_FIELDS)] == list(meshalloc.Stats.CORE_FIELDS)
    assert d["installed_domains"] == ["mem", "obj"] and "extra" not in d
    assert json.loads(s5.to_json()) == d
    assert meshalloc.Stats.from_dict(json.loads(s5.to_json())) == s5
    docs = meshalloc.stats_docs()
    assert not [name for name in d if not docs.get(name)], "fields without a doc line"

    # after uninstall(): nothing new comes from meshalloc, frees still counted
    keep = [("k%d" % i) * 2 for i in range(1000)]
    assert meshalloc.uninstall() is True
    s6 = meshalloc.stats()
    junk = [("u%d" % i) * 2 for i in range(1000)]
    del keep, junk
    s7 = meshalloc.stats()
    assert s7.obj_allocs == s6.obj_allocs, "allocation counted after uninstall()"
    assert s7.obj_frees - s6.obj_frees >= 1000
    assert s7.installed_domains == ()
    print("OK stats")


def _raw_worker(fn, rounds, done, release):
    fn(rounds)  # one ctypes call: a C loop without the GIL
    done.release()
    release.wait()


@scenario
def stats_threads():
    """argv: path of hook_bench.so (tests/py/hook_bench.c). C threads
    allocate and free exact numbers of RAW blocks without the GIL while
    Python threads churn objects: no count may be lost, neither while the
    threads live nor after they exit (their counts are folded)."""
    meshalloc.install(domains="raw,mem,obj")
    fn = ctypes.CDLL(sys.argv[2]).bench_raw  # CDLL: the GIL is released
    fn.restype = ctypes.c_uint64
    fn.argtypes = [ctypes.c_long]
    nthreads, rounds = 4, 3000
    expected = nthreads * rounds * 64
    errors: list = []
    previous = meshalloc.stats()
    for attempt in range(3):
        start = meshalloc.stats()
        done = threading.Semaphore(0)
        release = threading.Event()
        workers = [threading.Thread(target=_raw_worker, args=(fn, rounds, done, release))
                   for _ in range(nthreads)]
        churn = [threading.Thread(target=_compress_worker, args=(k, 1, errors)) for k in range(2)]
        for t in workers + churn:
            t.start()
        for _ in range(nthreads):
            done.acquire()
        alive = meshalloc.stats()  # the workers' counters are still per-thread
        release.set()
        for t in workers + churn:
            t.join()
        end = meshalloc.stats()  # ... and now folded into the retired totals
        assert not errors, errors
        for s in (alive, end):
            got_a, got_f = s.raw_allocs - start.raw_allocs, s.raw_frees - start.raw_frees
            assert expected <= got_a <= expected + 50000, (attempt, expected, got_a)
            assert expected <= got_f <= expected + 50000, (attempt, expected, got_f)
        for earlier, later in ((previous, start), (start, alive), (alive, end)):
            _assert_monotonic(earlier, later)
        previous = end
    print("OK stats_threads")


@scenario
def stats_fork():
    """A fork child (while another thread that has counted is alive) sees
    the parent's counts and keeps counting."""
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
    meshalloc.install()
    ready, stop = threading.Event(), threading.Event()

    def lingering():
        junk = [("t%d" % i) * 3 for i in range(3000)]
        del junk
        ready.set()
        stop.wait()

    t = threading.Thread(target=lingering)
    t.start()
    ready.wait()
    parent = meshalloc.stats()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child = meshalloc.stats()
            _assert_monotonic(parent, child)
            objs = [("c%d" % i) * 3 for i in range(5000)]
            later = meshalloc.stats()
            assert later.obj_allocs - child.obj_allocs >= 5000
            del objs
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    stop.set()
    t.join()
    assert status == 0, "fork child failed (status %d)" % status
    _assert_monotonic(parent, meshalloc.stats())
    print("OK stats_fork")


@scenario
def free_threaded_python():
    """The Python-side refusal of a free-threaded build, faked."""
    import contextlib
    import io

    meshalloc._free_threaded = lambda: True
    msg = expect_refusal(["free-threaded", "Py_GIL_DISABLED", "mimalloc"], meshalloc.install)
    assert not meshalloc.is_installed()
    assert not any(a["hooked"] for a in meshalloc.allocators().values())
    err = io.StringIO()
    os.environ["MESHALLOC"] = "1"
    with contextlib.redirect_stderr(err):
        meshalloc._autoinstall()  # the start-up switch: one line, no exception
    assert err.getvalue() == "meshalloc: not installed at start-up: InstallError: %s\n" % msg, \
        err.getvalue()
    assert not meshalloc.is_installed()
    print("OK free_threaded_python")


@scenario
def free_threaded_extension():
    """Run with an extension built with -DMESHALLOC_TEST_FREE_THREADED: the
    C check refuses even though the Python check lets it through."""
    assert not meshalloc._free_threaded()
    expect_refusal(["free-threaded", "Py_GIL_DISABLED"], meshalloc.install)
    assert not meshalloc.is_installed()
    assert not any(a["hooked"] for a in meshalloc.allocators().values())
    print("OK free_threaded_extension")


if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
