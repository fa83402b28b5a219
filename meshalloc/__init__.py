"""meshalloc: the Mesh compacting allocator for CPython and any C program.

Two faces of one C core:

* ``libmesh.so`` (see :func:`libmesh_path`): a drop-in malloc for
  ``LD_PRELOAD``; ``python -m meshalloc run --preload -- CMD`` sets it up.
* the ``meshalloc._meshalloc`` extension module, which can also become the
  allocator of the running interpreter: :func:`install` wraps CPython's
  ``PyMem`` allocators (``MEM`` and ``OBJ`` by default, ``RAW`` on request),
  :func:`uninstall` is a soft switch, :func:`compact` meshes now. The
  ``meshalloc-autoinstall.pth`` start-up hook installs it before user code
  when ``MESHALLOC=1`` or ``python -X meshalloc``. See docs/python.md.

The functions here (:func:`stats`, :func:`get_option`, ...) go through one
backend, picked once on first use:

* ``cext`` -- the ``_meshalloc`` extension (default);
* ``cffi`` -- the ABI-mode cffi binding to ``libmesh.so`` (``_libmesh``).

``MESHALLOC_BACKEND=cext|cffi`` forces one; the default is ``cext`` with a
fallback to ``cffi`` when the extension cannot be imported. Both backends
route to a libmesh that is already the process malloc (``LD_PRELOAD``), so a
process never runs two meshalloc heaps.

Importing this package is cheap: no backend is loaded until a function that
needs one is called.
"""

import os
import sys

# typing is imported for the type checker only: this package must stay cheap
# to import (a start-up hook imports it in every interpreter).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Protocol, Tuple

    from ._stats import Stats

    class _Backend(Protocol):
        """What both backends (_meshalloc and _libmesh) provide."""

        def version(self) -> str: ...
        def is_preloaded(self) -> bool: ...
        def library_path(self) -> Optional[str]: ...
        def stats(self) -> Dict[str, int]: ...
        def stats_docs(self) -> Dict[str, str]: ...
        def print_stats(self, fd: int = 2) -> None: ...
        def get_option(self, name: str) -> int: ...
        def set_option(self, name: str, value: int) -> None: ...
        def option_names(self) -> List[str]: ...
        def option_docs(self) -> Dict[str, str]: ...
        def meshing_available(self) -> bool: ...
        def check_heap(self) -> int: ...
        def scavenge(self) -> int: ...
        def owns(self, addr: int) -> bool: ...
        def compact(self) -> "tuple[int, int, float]": ...
        def hook_counts(self) -> Dict[str, int]: ...
        def class_stats(self) -> "List[Tuple[int, ...]]": ...

    class _Extension(_Backend, Protocol):
        """What only the ``_meshalloc`` extension provides."""

        def _install(self, mask: int, force: bool, /) -> int: ...
        def _uninstall(self) -> bool: ...
        def installed_domains(self) -> int: ...
        def allocators(self) -> Dict[str, Dict[str, object]]: ...
        def in_subinterpreter(self) -> bool: ...
        def stat(self, name: str, /) -> int: ...
        def set_install_error(self, cls: type, /) -> None: ...

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "libmesh_path",
    "backend",
    "version",
    "is_preloaded",
    "library_path",
    "stats",
    "Stats",
    "stats_docs",
    "print_stats",
    "get_option",
    "set_option",
    "option_names",
    "option_docs",
    "meshing_available",
    "check_heap",
    "scavenge",
    "owns",
    "install",
    "uninstall",
    "is_installed",
    "installed_domains",
    "allocators",
    "compact",
    "CompactResult",
    "InstallError",
    "DOMAINS",
]

BACKENDS = ("cext", "cffi")
_BACKEND_ENV = "MESHALLOC_BACKEND"

_impl: "Optional[_Backend]" = None
_impl_name: "Optional[str]" = None


def libmesh_path() -> str:
    """Absolute path of the ``libmesh.so`` shipped in this package.

    Use it as ``LD_PRELOAD=$(python -m meshalloc libpath)``.
    """
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "libmesh.so")


def _not_built_reason() -> str:
    """Why this copy of the package has no libmesh.so, for error messages.

    The usual cause is running from the root of a source checkout: the
    current directory comes first on sys.path, so its unbuilt ``meshalloc/``
    shadows the installed package."""
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(os.path.join(os.path.dirname(here), "setup_mesh.py")):
        return ("%s is meshalloc's source tree, not an installed copy: it shadows the "
                "installed package when Python starts in %s: run it from another directory"
                % (here, os.path.dirname(here)))
    return "the package was not built or installed correctly (reinstall meshalloc)"


def _load_backend() -> "_Backend":
    global _impl, _impl_name
    if _impl is not None:
        return _impl
    wanted = os.environ.get(_BACKEND_ENV, "").strip().lower() or "default"
    if wanted not in BACKENDS + ("default",):
        raise ImportError(
            "%s=%r: expected one of %s" % (_BACKEND_ENV, wanted, ", ".join(BACKENDS))
        )
    module: _Backend
    name = "cffi"
    if wanted in ("cext", "default"):
        try:
            from . import _meshalloc

            module, name = _meshalloc, "cext"
        except ImportError:
            if wanted == "cext":
                raise
    if name == "cffi":
        from . import _libmesh

        module = _libmesh
    _impl, _impl_name = module, name
    return module


def backend() -> str:
    """Name of the backend in use: ``"cext"`` or ``"cffi"``."""
    _load_backend()
    return _impl_name or ""


def version() -> str:
    """Version string of the meshalloc core in use."""
    return _load_backend().version()


def is_preloaded() -> bool:
    """True when libmesh is already the process malloc (``LD_PRELOAD``)."""
    return bool(_load_backend().is_preloaded())


def library_path() -> "Optional[str]":
    """Path of the preloaded libmesh in use, if any (cffi: or the one opened)."""
    return _load_backend().library_path()


def stats(pss: bool = False) -> "Stats":
    """A snapshot of the allocator's counters, as a :class:`Stats`.

    The core's counters (docs/options.md, by the core's names), what the
    PyMem hooks did per domain (blocks allocated, reallocated and freed by
    meshalloc, and foreign blocks handed to the wrapped allocator) and the
    installed domains, and ``size_classes``: per size class in use, its
    spans and how full they are (:class:`SizeClassStats`). With ``pss=True`` also the process's PSS
    (``pss_bytes``, else 0): reading it walks the page tables of the whole
    process, about 10 ms per 100 MiB. ``stats().to_dict()`` and
    ``stats().to_json()`` give plain data. See docs/python.md.
    """
    from ._stats import Stats, read_pss

    impl = _load_backend()
    core = impl.stats()
    # The hooks live in the extension (the cffi backend has none: zeros).
    counts = (_ext if _ext is not None else impl).hook_counts()
    return Stats.from_parts(core, counts, installed_domains(), read_pss() if pss else 0,
                            impl.class_stats())


def stats_docs() -> "Dict[str, str]":
    """The documentation line of every :class:`Stats` field, ``{name: doc}``
    (the core's fields first, then the Python side's)."""
    from ._stats import PY_FIELD_DOCS

    docs = dict(_load_backend().stats_docs())
    docs.update(PY_FIELD_DOCS)
    return docs


def __getattr__(name: str) -> object:
    # Stats lives in meshalloc._stats, imported on first use (dataclasses is
    # too slow to import at start-up).
    if name in ("Stats", "SizeClassStats"):
        from . import _stats

        return getattr(_stats, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


def print_stats(fd: int = 2) -> None:
    """Write the ``MALLOCSTATS`` summary to file descriptor ``fd``."""
    _load_backend().print_stats(fd)


def get_option(name: str) -> int:
    """Current value of option ``name``; ``KeyError`` if there is none."""
    return _load_backend().get_option(name)


def set_option(name: str, value: int) -> None:
    """Set option ``name`` at run time.

    ``KeyError`` for an unknown name, ``ValueError`` for a value out of range
    or a read-only option. The environment variable ``MESH_<NAME>`` sets the
    start-up value.
    """
    _load_backend().set_option(name, value)


def option_names() -> "List[str]":
    """Every option name, in the core's order."""
    return list(_load_backend().option_names())


def option_docs() -> "Dict[str, str]":
    """The documentation line of every option, ``{name: doc}``."""
    return _load_backend().option_docs()


def meshing_available() -> bool:
    """True when spans can be meshed (memfd-backed arena)."""
    return bool(_load_backend().meshing_available())


def check_heap() -> int:
    """Validate the whole heap; 0 when consistent, else the problem count."""
    return int(_load_backend().check_heap())


def scavenge() -> int:
    """Return dirty free pages to the OS now; returns the bytes released."""
    return int(_load_backend().scavenge())


def owns(addr: int) -> bool:
    """True if address ``addr`` lies inside the meshalloc arena."""
    return bool(_load_backend().owns(addr))


# ---- the CPython allocator (docs/python.md) ---------------------------------

DOMAINS = ("raw", "mem", "obj")
"""The PyMem domains, in CPython's order (``PYMEM_DOMAIN_RAW`` = 0 ...)."""

DEFAULT_DOMAINS = ("mem", "obj")
"""What :func:`install` covers unless told otherwise. RAW is opt-in: CPython
swaps RAW back to libc ``malloc`` for a moment during finalization, and a
daemon thread freeing a meshalloc RAW block in that window crashes the
process (docs/python.md, "Domains: MEM and OBJ by default, RAW on request")."""

_DOMAINS_ENV = "MESHALLOC_DOMAINS"
_PAGE_SIZE = 4096  # the core's page (docs/design.md)


class InstallError(RuntimeError):
    """:func:`install` refused; the message says why."""


class _SubinterpreterError(InstallError):
    """install() called from a subinterpreter (the start-up switch, which
    site.py also runs in subinterpreters, ignores it silently)."""


class CompactResult(tuple):  # type: ignore[type-arg]
    """What :func:`compact` did (a tuple of four, also by name).

    * ``pages_freed`` -- physical pages meshing freed (each mesh frees the
      source span's pages);
    * ``bytes_freed`` -- the same in bytes;
    * ``bytes_returned`` -- bytes given back to the OS during the call (freed
      pages and dirty free pages punched; another thread's activity in the
      same moment is counted too);
    * ``pause_seconds`` -- how long the call took. The GIL is released
      meanwhile, so other threads run; each meshing pass inside is bounded by
      the ``max_pause_us`` option.

    (Not a ``collections.namedtuple``: importing collections would add ~3 ms
    to every start-up with ``MESHALLOC=1``.)
    """

    __slots__ = ()
    _fields = ("pages_freed", "bytes_freed", "bytes_returned", "pause_seconds")

    def __new__(cls, pages_freed: int, bytes_freed: int, bytes_returned: int,
                pause_seconds: float) -> "CompactResult":
        return tuple.__new__(cls, (pages_freed, bytes_freed, bytes_returned, pause_seconds))

    @property
    def pages_freed(self) -> int:
        return self[0]  # type: ignore[no-any-return]

    @property
    def bytes_freed(self) -> int:
        return self[1]  # type: ignore[no-any-return]

    @property
    def bytes_returned(self) -> int:
        return self[2]  # type: ignore[no-any-return]

    @property
    def pause_seconds(self) -> float:
        return self[3]  # type: ignore[no-any-return]

    def _asdict(self) -> "Dict[str, object]":
        return dict(zip(self._fields, self))

    def __repr__(self) -> str:
        return "CompactResult(%s)" % ", ".join(
            "%s=%r" % (name, value) for name, value in zip(self._fields, self)
        )


_ext: "Optional[_Extension]" = None  # the extension once install() & co. loaded it


def _extension() -> "_Extension":
    """The ``_meshalloc`` extension, ready to install (InstallError if absent)."""
    global _ext, _impl, _impl_name
    if _ext is not None:
        return _ext
    try:
        from . import _meshalloc
    except ImportError as exc:
        if _in_subinterpreter_py():
            raise _SubinterpreterError(
                "install() must be called from the main interpreter, not a "
                "subinterpreter (%s)" % exc
            ) from None
        raise InstallError(
            "install() needs the meshalloc._meshalloc extension, which cannot "
            "be imported: %s" % exc
        ) from exc
    _meshalloc.set_install_error(InstallError)
    _ext = _meshalloc
    # One heap per process: once the extension allocates for the interpreter,
    # the module functions (stats, options, ...) must describe its heap.
    _impl, _impl_name = _meshalloc, "cext"
    return _meshalloc


def _in_subinterpreter_py() -> bool:
    """Pure-Python check (for when the extension itself cannot load)."""
    for name in ("_interpreters", "_xxsubinterpreters"):
        try:
            mod = __import__(name)
        except ImportError:
            continue
        try:
            current, main = mod.get_current(), mod.get_main()
        except Exception:  # pragma: no cover - private API drift
            return False
        if isinstance(current, tuple):
            current, main = current[0], main[0]
        return bool(current != main)
    return False


def _parse_domains(domains: object) -> int:
    """Domain names (or None: MESHALLOC_DOMAINS, else the default) -> mask."""
    source = "domains"
    if domains is None:
        env = os.environ.get(_DOMAINS_ENV, "").strip()
        if env:
            domains, source = env, _DOMAINS_ENV
        else:
            domains = DEFAULT_DOMAINS
    if isinstance(domains, str):
        names = [n for n in domains.replace(" ", ",").split(",") if n]
    else:
        names = list(domains)  # type: ignore[call-overload]
    mask = 0
    for name in names:
        key = str(name).strip().lower()
        if key.startswith("pymem_domain_"):
            key = key[len("pymem_domain_"):]
        if key == "all":
            mask |= 7
        elif key in DOMAINS:
            mask |= 1 << DOMAINS.index(key)
        else:
            raise ValueError(
                "%s: unknown PyMem domain %r (expected some of %s, or all)"
                % (source, name, ", ".join(DOMAINS))
            )
    if not mask:
        raise ValueError("%s: no PyMem domain given" % source)
    return mask


def _free_threaded() -> bool:
    # Free-threaded builds (3.13+) carry "t" in their ABI flags. Not
    # sysconfig's Py_GIL_DISABLED: importing sysconfig at start-up imports
    # threading and more, which the program may not want imported yet (gevent
    # monkey-patching, test_threading). (The extension also refuses at
    # compile time when it is built for such an interpreter.)
    return sys.version_info >= (3, 13) and "t" in getattr(sys, "abiflags", "")


def _tracemalloc_if_started() -> "Optional[object]":
    """The _tracemalloc module if tracing may be on, else None, without
    importing it at start-up: tracing is on only if the tracemalloc module
    started it (it imports _tracemalloc) or PYTHONTRACEMALLOC / -X
    tracemalloc did."""
    started = (
        "_tracemalloc" in sys.modules
        or "tracemalloc" in getattr(sys, "_xoptions", {})
        or (not sys.flags.ignore_environment and os.environ.get("PYTHONTRACEMALLOC"))
    )
    if not started:
        return None
    import _tracemalloc

    return _tracemalloc


def install(domains: object = None, force: bool = False,
            restart_tracemalloc: bool = False) -> bool:
    """Make meshalloc the allocator of this interpreter's new blocks.

    Wraps CPython's ``PyMem`` allocators of ``domains`` (names from
    ``"raw"``, ``"mem"``, ``"obj"``, or ``"all"``; default: the
    ``MESHALLOC_DOMAINS`` environment variable, else ``("mem", "obj")``).
    Blocks allocated before the call stay with the previous allocator and are
    freed through it. Returns True when something was installed, False when
    every requested domain already was (installing twice is a no-op).

    Raises :class:`InstallError` with the reason on a free-threaded build,
    from a subinterpreter, while ``tracemalloc`` is tracing (unless
    ``restart_tracemalloc=True``: tracemalloc is stopped, meshalloc
    installed, and tracemalloc restarted with the same frame limit; its
    traces so far are lost), and when an unknown allocator hook was installed
    after meshalloc was loaded (unless ``force=True``: meshalloc then wraps
    it). ``PYTHONMALLOC=debug`` / ``-X dev`` debug hooks are wrapped: blocks
    that come from meshalloc are then not debug-checked.

    After a full (generation 2) garbage collection meshalloc meshes, rate
    limited (see docs/python.md).
    """
    mask = _parse_domains(domains)
    ext = _extension()
    if ext.installed_domains() & mask == mask:
        return False
    if _free_threaded():
        raise InstallError(
            "this is a free-threaded CPython build (Py_GIL_DISABLED): its garbage "
            "collector walks mimalloc's heaps, so objects must come from mimalloc"
        )
    if ext.in_subinterpreter():
        raise _SubinterpreterError(
            "install() must be called from the main interpreter, not a "
            "subinterpreter (the allocator is process-wide)"
        )
    _tracemalloc = _tracemalloc_if_started()
    tracing = _tracemalloc is not None and _tracemalloc.is_tracing()
    if tracing and not restart_tracemalloc:
        raise InstallError(
            "tracemalloc is tracing: its hooks are on top of the allocator and "
            "tracemalloc.stop() would put back what was under them, dropping "
            "meshalloc; call install() before tracemalloc.start(), or pass "
            "restart_tracemalloc=True"
        )
    frames = _tracemalloc.get_traceback_limit() if _tracemalloc is not None and tracing else 0
    if tracing:
        _tracemalloc.stop()
    try:
        changed = ext._install(mask, bool(force))
    finally:
        if tracing:
            _tracemalloc.start(frames)
    if not _in_autoinstall or "gc" in sys.modules:
        _register_gc_callback()
    return bool(changed)


def uninstall() -> bool:
    """Soft switch: new blocks come from the previous allocators again.

    The hooks stay in place for the life of the process and keep freeing the
    blocks meshalloc handed out (restoring the previous allocator would crash
    the next free of one of them). :func:`install` turns it back on. Returns
    True when meshalloc was installed.
    """
    if _ext is None:
        return False
    return bool(_ext._uninstall())


def is_installed() -> bool:
    """True when new PyMem blocks of some domain come from meshalloc."""
    return _ext is not None and _ext.installed_domains() != 0


def installed_domains() -> "tuple[str, ...]":
    """The domains whose new blocks come from meshalloc, e.g. ``("mem", "obj")``."""
    if _ext is None:
        return ()
    mask = _ext.installed_domains()
    return tuple(name for i, name in enumerate(DOMAINS) if mask & (1 << i))


def allocators() -> "Dict[str, Dict[str, object]]":
    """Diagnostics: for each PyMem domain, the allocator in place now.

    ``{"raw"|"mem"|"obj": {"malloc": address, "object": file defining it,
    "meshalloc": is it meshalloc's hook, "baseline": is it the allocator
    recorded when the extension was loaded, "hooked", "diverting",
    "wrapped_object": file of the allocator meshalloc wraps}}``.
    """
    return _extension().allocators()


def compact() -> "CompactResult":
    """Mesh now, pass after pass, until a pass frees nothing.

    Each pass is bounded by the ``max_pause_us`` option and the GIL is
    released during the call. Returns a :class:`CompactResult`.
    """
    if _ext is not None:
        pages, returned, seconds = _ext.compact()
    else:
        pages, returned, seconds = _load_backend().compact()
    return CompactResult(int(pages), int(pages) * _PAGE_SIZE,
                         int(returned) * _PAGE_SIZE, float(seconds))


# ---- meshing after full collections ------------------------------------------

# A generation-2 collection has just visited every object, so the heap's
# fragmentation is as high as it will get: a good moment to mesh. The
# callback is cheap when it has nothing to do. It runs mesh_compact() only
# when both
#   * at least the core's wait between periodic passes passed since the last
#     one ended: `period_ms` (period_ms = 0 or mesh = 0 turn it off),
#     doubled `mesh_pace_level` times while the program takes the pages
#     meshing frees straight back (docs/meshing.md, "Pacing"), and
#   * at least 50 times the last compaction's duration passed, so that
#     meshing after collections costs at most ~2 % of the wall-clock time.
_GC_DUTY = 50.0
_gc_registered = False
_gc_last_end = -1e18
_gc_last_pause = 0.0
_gc_compactions = 0  # how many compactions the callback ran (tests, docs)


def _gc_callback(phase: str, info: "Dict[str, int]") -> None:
    global _gc_last_end, _gc_last_pause, _gc_compactions
    if phase != "stop" or info.get("generation") != 2:
        return
    ext = _ext
    if ext is None or not ext.installed_domains():
        return
    try:
        import time

        now = time.monotonic()
        period = ext.get_option("period_ms") / 1000.0
        if period <= 0 or not ext.get_option("mesh"):
            return
        try:
            level = ext.stat("mesh_pace_level")
        except KeyError:  # a preloaded libmesh.so from before pacing
            level = 0
        wait = period * (1 << level)
        if now - _gc_last_end < max(wait, _GC_DUTY * _gc_last_pause):
            return
        _pages, _returned, seconds = ext.compact()
        _gc_last_pause = seconds
        _gc_last_end = time.monotonic()
        _gc_compactions += 1
    except Exception:  # never let the allocator break a collection
        return


def _register_gc_callback() -> None:
    global _gc_registered
    if _gc_registered:
        return
    import gc

    gc.callbacks.append(_gc_callback)
    _gc_registered = True


# ---- the start-up switch (meshalloc-autoinstall.pth) --------------------------


def _debug_hooks_reason() -> "Optional[str]":
    """Why CPython's debug hooks are in place, or None."""
    pymalloc = "" if sys.flags.ignore_environment else os.environ.get("PYTHONMALLOC", "")
    if pymalloc.endswith("debug"):
        return "PYTHONMALLOC=%s" % pymalloc
    if getattr(sys.flags, "dev_mode", False) and not pymalloc:
        return "-X dev"
    return None


_autoinstall_done = False
_in_autoinstall = False

_ON = ("1", "yes", "true", "on")
_OFF = ("", "0", "no", "false", "off")


def _switch(value: "object", what: str) -> "Optional[bool]":
    """True/False for the usual spellings of on and off (any case), None
    (after one warning line) for anything else."""
    if value is True:  # a bare -X meshalloc
        return True
    v = str(value).strip().lower()
    if v in _ON:
        return True
    if v in _OFF:
        return False
    sys.stderr.write(
        "meshalloc: %s=%s is not understood (on: 1, yes, true, on; off: 0, no, false, off); "
        "meshalloc stays off\n" % (what, value)
    )
    return None


def _autoinstall() -> None:
    """Called by meshalloc-autoinstall.pth when ``MESHALLOC`` is set to
    something other than ``0`` or ``-X meshalloc`` is given. Never raises: a
    refusal is one line on stderr. Imports nothing the interpreter does not
    import anyway (the gc callback is registered only if gc already is).

    Runs once per process: site.py may process the same site-packages twice
    (a venv's ``lib64`` symlink to ``lib`` is a different path to it)."""
    global _autoinstall_done, _in_autoinstall
    if _autoinstall_done:
        return
    _autoinstall_done = True
    try:
        env = os.environ.get("MESHALLOC")
        on = _switch(env, "MESHALLOC") if env is not None else False
        xopt = getattr(sys, "_xoptions", {}).get("meshalloc")
        if xopt is not None:
            x_on = _switch(xopt, "-X meshalloc")
            if not x_on and not on:
                return
            # -X options are not passed on to child interpreters; the
            # environment is.
            os.environ["MESHALLOC"] = "1"
        elif not on:
            return
        reason = _debug_hooks_reason()
        if reason is not None:
            sys.stderr.write(
                "meshalloc: %s: the debug hooks stay in charge (call "
                "meshalloc.install() to wrap them anyway)\n" % reason
            )
            return
        # PYTHONTRACEMALLOC / -X tracemalloc started tracing before site ran:
        # restart it on top of meshalloc (only start-up traces are lost).
        _in_autoinstall = True
        try:
            install(restart_tracemalloc=True)
        finally:
            _in_autoinstall = False
    except _SubinterpreterError:
        # site.py runs in every new subinterpreter too; the main interpreter
        # installed the process-wide allocator already (or chose not to).
        return
    except Exception as exc:
        sys.stderr.write(
            "meshalloc: not installed at start-up: %s: %s\n" % (type(exc).__name__, exc)
        )
