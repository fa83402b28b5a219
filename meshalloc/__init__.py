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

This module is the whole user-facing surface: dicts, dataclasses,
exceptions and their texts. Under it, one of two backends with the same
small raw surface (counters as a list, names and docs from the core's
tables, options returning an errno, compaction returning pages), picked
once on first use:

* ``cext`` -- the ``_meshalloc`` extension (default; csrc/faces/pymodule.c);
* ``cffi`` -- the ABI-mode cffi binding to ``libmesh.so`` (``_libmesh``).

``MESHALLOC_BACKEND=cext|cffi`` forces one; the default is ``cext`` with a
fallback to ``cffi`` when the extension cannot be imported. Both route to a
libmesh that is already the process malloc (``LD_PRELOAD``), so a process
never runs two meshalloc heaps. Every name this package reports (stats
fields, size-class fields, options, PyMem domains, hook counters) comes from
the C tables: a counter added in C needs nothing here.

Importing this package is cheap: no backend is loaded until a function that
needs one is called.
"""

import os
import sys

# typing is imported for the type checker only: this package must stay cheap
# to import (a start-up hook imports it in every interpreter).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar, Dict, List, Optional, Protocol, Sequence, Tuple

    Table = List[Tuple[Optional[str], Optional[str]]]

    class _Backend(Protocol):
        """The raw surface both backends offer (_meshalloc and _libmesh)."""

        def version(self) -> Optional[str]: ...
        def is_preloaded(self) -> bool: ...
        def library_path(self) -> Optional[str]: ...
        def stats_names(self) -> Table: ...
        def option_names(self) -> Table: ...
        def class_names(self) -> Table: ...
        def stats_read(self, n: int, /) -> List[int]: ...
        def class_stats(self) -> List[List[int]]: ...
        def option_get(self, name: str, /) -> Tuple[int, int]: ...
        def option_set(self, name: str, value: int, /) -> int: ...
        def compact(self) -> Tuple[int, int]: ...
        def scavenge(self) -> int: ...
        def check_heap(self) -> int: ...
        def print_stats(self, fd: int, /) -> None: ...
        def periodic_wait_ns(self) -> int: ...
        def meshing_available(self) -> bool: ...
        def owns(self, addr: int, /) -> bool: ...

    class _Extension(_Backend, Protocol):
        """What only the ``_meshalloc`` extension offers: the hooks."""

        DOMAINS: Tuple[str, ...]

        def hook_names(self) -> Table: ...
        def hook_counts(self) -> List[int]: ...
        def install_refusal(self) -> int: ...
        def _install(self, mask: int, force: bool, /) -> int: ...
        def _uninstall(self) -> bool: ...
        def installed_domains(self) -> int: ...
        def allocators(self) -> Dict[str, Dict[str, object]]: ...
        def set_install_error(self, cls: type, /) -> None: ...

__version__ = "0.1.0"

__all__ = [
    "__version__", "libmesh_path", "backend", "version", "is_preloaded", "library_path", "stats", "Stats",
    "SizeClassStats", "stats_docs", "print_stats", "get_option", "set_option", "option_names", "option_docs",
    "meshing_available", "check_heap", "scavenge", "owns", "install", "uninstall", "is_installed",
    "installed_domains", "allocators", "compact", "CompactResult", "InstallError", "DOMAINS",
]

BACKENDS = ("cext", "cffi")
_BACKEND_ENV = "MESHALLOC_BACKEND"
_PAGE_SIZE = 4096  # the core's page (docs/design.md)

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
        raise ImportError("%s=%r: expected one of %s" % (_BACKEND_ENV, wanted, ", ".join(BACKENDS)))
    module: "_Backend"
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
    return _load_backend().version() or ""


def is_preloaded() -> bool:
    """True when libmesh is already the process malloc (``LD_PRELOAD``)."""
    return bool(_load_backend().is_preloaded())


def library_path() -> "Optional[str]":
    """Path of the preloaded libmesh in use, if any (cffi: or the one opened)."""
    return _load_backend().library_path()


def print_stats(fd: int = 2) -> None:
    """Write the ``MALLOCSTATS`` summary to file descriptor ``fd``."""
    _load_backend().print_stats(int(fd))


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
    """True if address ``addr`` lies inside the meshalloc arena (it is
    compared, never read)."""
    import operator

    value = operator.index(addr)
    if not 0 <= value <= 2 * sys.maxsize + 1:
        raise OverflowError("address does not fit a pointer")
    return bool(_load_backend().owns(value))


# ---- options ----------------------------------------------------------------


def _option_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError("option name must be str, not %s" % type(name).__name__)
    if "\0" in name:
        raise ValueError("embedded null character in option name")
    return name


def get_option(name: str) -> int:
    """Current value of option ``name``; ``KeyError`` if there is none."""
    value, err = _load_backend().option_get(_option_name(name))
    if err:
        raise KeyError(name)
    return int(value)


def set_option(name: str, value: int) -> None:
    """Set option ``name`` at run time.

    ``KeyError`` for an unknown name, ``ValueError`` for a value out of range
    or a read-only option. The environment variable ``MESH_<NAME>`` sets the
    start-up value.
    """
    import errno

    _option_name(name)
    if not isinstance(value, int):
        raise TypeError("option value must be int, not %s" % type(value).__name__)
    try:
        err = _load_backend().option_set(name, value)
    except OverflowError:  # beyond a C long
        raise ValueError("value %r for option %r is out of range" % (value, name)) from None
    if err == errno.ENOENT:
        raise KeyError(name)
    if err == errno.EINVAL:
        raise ValueError("invalid value %d for option %r (out of range or read-only)" % (value, name))
    if err == errno.EPERM:
        raise ValueError("option %r can only be set before the heap starts (environment variable MESH_%s)"
                         % (name, name.upper()))
    if err:
        raise OSError(err, os.strerror(err))


def option_names() -> "List[str]":
    """Every option name, in the core's order (environment: ``MESH_<NAME>``)."""
    return [name for name, _doc in _load_backend().option_names() if name]


def option_docs() -> "Dict[str, str]":
    """The documentation line of every option, ``{name: doc}``."""
    return {name: doc or "" for name, doc in _load_backend().option_names() if name}


# ---- stats() ----------------------------------------------------------------

# The fields stats() adds to the C tables' (docs/options.md, docs/python.md).
_PY_FIELDS: "Dict[str, Tuple[Any, str]]" = {
    "pss_bytes": (0, "proportional set size of the whole process (/proc/self/smaps_rollup), bytes; only read "
                     "by stats(pss=True), else 0"),
    "installed_domains": ((), "the PyMem domains whose new blocks come from meshalloc now, e.g. "
                              "(\"mem\", \"obj\")"),
    "size_classes": ((), "per size class with spans: the fields of mesh_class_stats (object_size, span_bytes, "
                         "spans: attached/partial/full, slots, objects_in_use, meshed_spans) and occupancy "
                         "(objects_in_use / slots)"),
    "extra": (None, "fields from_dict() was given that this heap's stats table does not have (a snapshot "
                    "from another version); normally empty"),
}


class _SizeClassBase:
    """Methods of SizeClassStats, whose fields are the core's
    ``mesh_class_stats`` fields (``MESH_CLASS_STATS`` in csrc/mesh.h)."""

    FIELDS: "ClassVar[Tuple[str, ...]]" = ()
    if TYPE_CHECKING:
        def __init__(self, *values: int, **named: int) -> None: ...
        def __getattr__(self, name: str) -> int: ...

    @property
    def occupancy(self) -> float:
        """Live objects / slots of the class's spans (0.0 with no spans)."""
        slots = getattr(self, "slots")
        return float(getattr(self, "objects_in_use")) / slots if slots else 0.0

    def to_dict(self) -> "Dict[str, Any]":
        d: "Dict[str, Any]" = {name: getattr(self, name) for name in self.FIELDS}
        d["occupancy"] = round(self.occupancy, 4)
        return d


class _StatsBase:
    """Methods of Stats, whose fields are built from the C tables."""

    CORE_FIELDS: "ClassVar[Tuple[str, ...]]" = ()
    HOOK_FIELDS: "ClassVar[Tuple[str, ...]]" = ()
    if TYPE_CHECKING:
        installed_domains: Tuple[str, ...]
        size_classes: "Tuple[_SizeClassBase, ...]"
        extra: Dict[str, int]

        def __init__(self, **values: Any) -> None: ...
        def __getattr__(self, name: str) -> int: ...

    @classmethod
    def field_names(cls) -> "Tuple[str, ...]":
        """Every field, in order (``extra`` included)."""
        return cls.CORE_FIELDS + cls.HOOK_FIELDS + tuple(_PY_FIELDS)

    def to_dict(self) -> "Dict[str, Any]":
        """``{field: value}`` in field order: ints, ``installed_domains`` as a
        list of str, ``size_classes`` as a list of dicts; the ``extra`` fields
        (normally none) are flattened into the dict. ``json.dumps`` accepts it
        as it is."""
        out: "Dict[str, Any]" = {}
        for name in self.field_names()[:-1]:
            value = getattr(self, name)
            if name == "installed_domains":
                value = list(value)
            elif name == "size_classes":
                value = [c.to_dict() for c in value]
            out[name] = value
        for name, value in self.extra.items():
            out.setdefault(name, value)
        return out

    def to_json(self, **kwargs: "Any") -> str:
        """:meth:`to_dict` as JSON (``kwargs`` go to ``json.dumps``)."""
        import json

        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: "Dict[str, Any]") -> "_StatsBase":
        """The inverse of :meth:`to_dict` (e.g. after ``json.loads``)."""
        known = set(cls.field_names())
        values: "Dict[str, Any]" = {}
        extra: "Dict[str, int]" = dict(data.get("extra") or {})
        for name, value in data.items():
            if name == "installed_domains":
                values[name] = tuple(value)
            elif name == "size_classes":
                values[name] = tuple(_size_class_type()(**{k: int(c.get(k, 0)) for k in _size_class_type().FIELDS})
                                     for c in value)
            elif name in known and name != "extra":
                values[name] = int(value)
            elif name != "extra":
                extra[name] = int(value)
        return cls(extra=extra, **values)


_types: "Dict[str, Any]" = {}


def _dataclass(name: str, fields: "Sequence[Tuple[str, Any]]", base: type, **namespace: "Any") -> "Any":
    import dataclasses

    spec = [(n, type(d) if d is not None else dict,
             dataclasses.field(default_factory=dict, hash=False) if d is None else dataclasses.field(default=d))
            for n, d in fields]
    return dataclasses.make_dataclass(name, spec, bases=(base,), frozen=True,
                                      namespace=dict(namespace, __module__=__name__))


def _size_class_type() -> "Any":
    if "SizeClassStats" not in _types:
        names = tuple(n for n, _doc in _load_backend().class_names() if n)
        _types["SizeClassStats"] = _dataclass("SizeClassStats", [(n, 0) for n in names], _SizeClassBase,
                                              FIELDS=names, __doc__=_SizeClassBase.__doc__)
    return _types["SizeClassStats"]


def _hooks() -> "Optional[_Extension]":
    """The extension, which keeps the hook counters, or None without it."""
    if _ext is not None:
        return _ext
    try:
        from . import _meshalloc
    except ImportError:
        return None
    return _meshalloc


def _stats_type() -> "Any":
    if "Stats" not in _types:
        core = tuple(n for n, _doc in _load_backend().stats_names() if n)
        hooks = _hooks()
        hook = tuple(n for n, _doc in hooks.hook_names() if n) if hooks is not None else ()
        fields = [(n, 0) for n in core + hook] + [(n, d) for n, (d, _doc) in _PY_FIELDS.items()]
        _types["Stats"] = _dataclass("Stats", fields, _StatsBase, CORE_FIELDS=core, HOOK_FIELDS=hook,
                                     __doc__=_STATS_DOC)
    return _types["Stats"]


_STATS_DOC = """A snapshot of meshalloc's counters (:func:`meshalloc.stats`), a frozen dataclass.

Its fields, in order: the core's stats table under the core's names
(``CORE_FIELDS``, docs/options.md), what the PyMem hooks did
(``HOOK_FIELDS``: exact per-thread counts summed when read), then
``pss_bytes``, ``installed_domains`` (a tuple of str), ``size_classes`` (a
tuple of :class:`SizeClassStats`) and ``extra`` (a dict, normally empty).
``to_dict()`` and ``to_json()`` give plain data."""


def __getattr__(name: str) -> "Any":
    # Stats and SizeClassStats are built from the core's tables on first use;
    # DOMAINS is the extension's.
    if name == "Stats":
        return _stats_type()
    if name == "SizeClassStats":
        return _size_class_type()
    if name == "DOMAINS":
        return tuple(_extension(False).DOMAINS)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


if TYPE_CHECKING:
    Stats = _StatsBase
    SizeClassStats = _SizeClassBase
    DOMAINS: Tuple[str, ...]


def stats(pss: bool = False) -> "Stats":
    """A snapshot of the allocator's counters, as a :class:`Stats`.

    The core's counters (docs/options.md, by the core's names), what the
    PyMem hooks did per domain (blocks allocated, reallocated and freed by
    meshalloc, and foreign blocks handed to the wrapped allocator), the
    installed domains, and ``size_classes``: per size class in use, its
    spans and how full they are (:class:`SizeClassStats`). With ``pss=True``
    also the process's PSS (``pss_bytes``, else 0): reading it walks the page
    tables of the whole process, about 10 ms per 100 MiB. ``stats().to_dict()``
    and ``stats().to_json()`` give plain data. See docs/python.md.
    """
    impl = _load_backend()
    cls = _stats_type()
    values: "Dict[str, Any]" = dict(zip(cls.CORE_FIELDS, impl.stats_read(-1)))
    hooks = _hooks()
    if hooks is not None and cls.HOOK_FIELDS:
        values.update(zip(cls.HOOK_FIELDS, hooks.hook_counts()))
    sc = _size_class_type()
    rows = (dict(zip(sc.FIELDS, row)) for row in impl.class_stats())
    values["size_classes"] = tuple(sc(**r) for r in rows if r.get("spans") or r.get("meshed_spans"))
    values["installed_domains"] = installed_domains()
    if pss:
        from ._remote import pss_bytes

        values["pss_bytes"] = pss_bytes() or 0
    return cls(**values)  # type: ignore[no-any-return]


def stats_docs() -> "Dict[str, str]":
    """The documentation line of every :class:`Stats` field, ``{name: doc}``
    (the core's fields first, then the hooks', then the Python side's)."""
    hooks = _hooks()
    rows = list(_load_backend().stats_names()) + (list(hooks.hook_names()) if hooks is not None else [])
    docs = {name: doc or "" for name, doc in rows if name}
    docs.update((name, doc) for name, (_d, doc) in _PY_FIELDS.items())
    return docs


# ---- the CPython allocator (docs/python.md) ---------------------------------

DEFAULT_DOMAINS = ("mem", "obj")
"""What :func:`install` covers unless told otherwise. RAW is opt-in: CPython
swaps RAW back to libc ``malloc`` for a moment during finalization, and a
daemon thread freeing a meshalloc RAW block in that window crashes the
process (docs/python.md, "Domains: MEM and OBJ by default, RAW on request")."""

_DOMAINS_ENV = "MESHALLOC_DOMAINS"
_NOT_MAIN = "install() must be called from the main interpreter, not a subinterpreter"
# The refusals the extension reports by number (install_refusal(), _install()).
_REFUSALS = {
    1: "this is a free-threaded CPython build (Py_GIL_DISABLED): its garbage collector walks mimalloc's heaps, "
       "so objects must come from mimalloc",
    2: _NOT_MAIN + " (the allocator is process-wide)",
}


class InstallError(RuntimeError):
    """:func:`install` refused; the message says why."""


class _SubinterpreterError(InstallError):
    """install() called from a subinterpreter (the start-up switch, which
    site.py also runs in subinterpreters, ignores it silently)."""


def _refuse(code: int) -> None:
    if code > 0:
        raise (_SubinterpreterError if code == 2 else InstallError)(_REFUSALS[code])


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

    pages_freed = property(lambda self: self[0])
    bytes_freed = property(lambda self: self[1])
    bytes_returned = property(lambda self: self[2])
    pause_seconds = property(lambda self: self[3])

    def _asdict(self) -> "Dict[str, object]":
        return dict(zip(self._fields, self))

    def __repr__(self) -> str:
        return "CompactResult(%s)" % ", ".join("%s=%r" % kv for kv in zip(self._fields, self))


_ext: "Optional[_Extension]" = None  # the extension once install() & co. loaded it


def _extension(for_install: bool = True) -> "_Extension":
    """The ``_meshalloc`` extension, ready to install (InstallError if absent)."""
    global _ext, _impl, _impl_name
    if _ext is not None:
        return _ext
    try:
        from . import _meshalloc
    except ImportError as exc:
        if _in_subinterpreter_py():
            raise _SubinterpreterError("%s (%s)" % (_NOT_MAIN, exc)) from None
        raise InstallError("install() needs the meshalloc._meshalloc extension, which cannot be imported: %s"
                           % exc) from exc
    if not for_install:
        return _meshalloc
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


def _parse_domains(domains: object, known: "Tuple[str, ...]") -> int:
    """Domain names (or None: MESHALLOC_DOMAINS, else the default) -> mask."""
    source = "domains"
    if domains is None:
        env = os.environ.get(_DOMAINS_ENV, "").strip()
        domains, source = (env, _DOMAINS_ENV) if env else (DEFAULT_DOMAINS, source)
    names = [n for n in domains.replace(" ", ",").split(",") if n] if isinstance(domains, str) \
        else list(domains)  # type: ignore[call-overload]
    mask = 0
    for name in names:
        key = str(name).strip().lower()
        key = key[len("pymem_domain_"):] if key.startswith("pymem_domain_") else key
        if key == "all":
            mask |= (1 << len(known)) - 1
        elif key in known:
            mask |= 1 << known.index(key)
        else:
            raise ValueError("%s: unknown PyMem domain %r (expected some of %s, or all)"
                             % (source, name, ", ".join(known)))
    if not mask:
        raise ValueError("%s: no PyMem domain given" % source)
    return mask


def _free_threaded() -> bool:
    # Free-threaded builds (3.13+) carry "t" in their ABI flags. Not
    # sysconfig's Py_GIL_DISABLED: importing sysconfig at start-up imports
    # threading and more, which the program may not want imported yet (gevent
    # monkey-patching, test_threading). (The extension refuses too when it is
    # built for such an interpreter: install_refusal().)
    return sys.version_info >= (3, 13) and "t" in getattr(sys, "abiflags", "")


def _tracemalloc_if_started() -> "Optional[Any]":
    """The _tracemalloc module if tracing may be on, else None, without
    importing it at start-up: tracing is on only if the tracemalloc module
    started it (it imports _tracemalloc) or PYTHONTRACEMALLOC / -X
    tracemalloc did."""
    started = ("_tracemalloc" in sys.modules or "tracemalloc" in getattr(sys, "_xoptions", {})
               or (not sys.flags.ignore_environment and os.environ.get("PYTHONTRACEMALLOC")))
    if not started:
        return None
    import _tracemalloc

    return _tracemalloc


def install(domains: object = None, force: bool = False, restart_tracemalloc: bool = False) -> bool:
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
    ext = _extension()
    mask = _parse_domains(domains, tuple(ext.DOMAINS))
    if ext.installed_domains() & mask == mask:
        return False
    _refuse(1 if _free_threaded() else ext.install_refusal())
    tm = _tracemalloc_if_started()
    tracing = tm is not None and tm.is_tracing()
    if tracing and not restart_tracemalloc:
        raise InstallError(
            "tracemalloc is tracing: its hooks are on top of the allocator and tracemalloc.stop() would put "
            "back what was under them, dropping meshalloc; call install() before tracemalloc.start(), or pass "
            "restart_tracemalloc=True")
    frames = tm.get_traceback_limit() if tracing else 0
    if tracing:
        tm.stop()
    try:
        changed = ext._install(mask, bool(force))
    finally:
        if tracing:
            tm.start(frames)
    _refuse(-changed)
    if not _in_autoinstall or "gc" in sys.modules:
        _register_gc_callback()
    return changed > 0


def uninstall() -> bool:
    """Soft switch: new blocks come from the previous allocators again.

    The hooks stay in place for the life of the process and keep freeing the
    blocks meshalloc handed out (restoring the previous allocator would crash
    the next free of one of them). :func:`install` turns it back on. Returns
    True when meshalloc was installed.
    """
    return _ext is not None and bool(_ext._uninstall())


def is_installed() -> bool:
    """True when new PyMem blocks of some domain come from meshalloc."""
    return _ext is not None and _ext.installed_domains() != 0


def installed_domains() -> "Tuple[str, ...]":
    """The domains whose new blocks come from meshalloc, e.g. ``("mem", "obj")``."""
    if _ext is None:
        return ()
    mask = _ext.installed_domains()
    return tuple(name for i, name in enumerate(_ext.DOMAINS) if mask & (1 << i))


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
    import time

    start = time.monotonic()
    pages, returned = (_ext or _load_backend()).compact()
    seconds = time.monotonic() - start
    return CompactResult(int(pages), int(pages) * _PAGE_SIZE, int(returned) * _PAGE_SIZE, seconds)


# ---- meshing after full collections ------------------------------------------

# A generation-2 collection has just visited every object, so the heap's
# fragmentation is as high as it will get: a good moment to mesh. The
# callback is cheap when it has nothing to do. It runs compact() only when
# both
#   * the core says a periodic pass is due (mesh_periodic_wait_ns: its wait
#     between periodic passes, with pacing, has passed; off with mesh = 0 or
#     period_ms = 0), and
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

        if ext.periodic_wait_ns() != 0 or time.monotonic() - _gc_last_end < _GC_DUTY * _gc_last_pause:
            return
        _gc_last_pause = compact().pause_seconds
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
    if v in _ON or v in _OFF:
        return v in _ON
    sys.stderr.write("meshalloc: %s=%s is not understood (on: 1, yes, true, on; off: 0, no, false, off); "
                     "meshalloc stays off\n" % (what, value))
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
            if not _switch(xopt, "-X meshalloc") and not on:
                return
            # -X options are not passed on to child interpreters; the
            # environment is.
            os.environ["MESHALLOC"] = "1"
        elif not on:
            return
        reason = _debug_hooks_reason()
        if reason is not None:
            sys.stderr.write("meshalloc: %s: the debug hooks stay in charge (call meshalloc.install() to wrap "
                             "them anyway)\n" % reason)
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
        sys.stderr.write("meshalloc: not installed at start-up: %s: %s\n" % (type(exc).__name__, exc))
