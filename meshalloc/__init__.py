"""meshalloc: the Mesh compacting allocator for CPython and any C program (docs/python.md).

Every name it reports comes from the C tables. A start-up hook imports this in every interpreter,
so importing stays cheap: typing is for the type checker only, backends load on first use.
"""

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar, Dict, List, Optional, Tuple
    Table = List[Tuple[Optional[str], Optional[str]]]

__version__ = "0.1.0"

__all__ = [
    "__version__", "libmesh_path", "backend", "version", "is_preloaded", "library_path", "stats",
    "Stats", "SizeClassStats", "stats_docs", "print_stats", "get_option", "set_option",
    "option_names", "option_docs", "meshing_available", "check_heap", "scavenge", "owns",
    "install", "uninstall", "is_installed", "installed_domains", "allocators", "compact",
    "CompactResult", "InstallError", "DOMAINS",
]

_PAGE_SIZE = 4096  # the core's page (docs/design.md)
# The backend (the _meshalloc extension, or _libmesh: its core part through cffi), and
# _ext: the extension once install() & co. loaded it.
_impl: "Any" = None
_ext: "Any" = None


def libmesh_path() -> str:
    """Absolute path of the package's ``libmesh.so``, for ``LD_PRELOAD``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "libmesh.so")


def _not_built_reason() -> str:
    """Why this copy of the package has no libmesh.so, for error messages."""
    here = os.path.dirname(os.path.abspath(__file__))
    if os.path.isfile(os.path.join(os.path.dirname(here), "setup_mesh.py")):
        # the current directory comes first on sys.path, before the installed package
        return ("%s is meshalloc's source tree, not an installed copy: it shadows the installed "
                "package when Python starts in %s: run it from another directory"
                % (here, os.path.dirname(here)))
    return "the package was not built or installed correctly (reinstall meshalloc)"


def _load_backend() -> "Any":
    """The backend: the extension unless ``MESHALLOC_BACKEND=cffi`` or it cannot load."""
    global _impl
    if _impl is None:
        wanted = os.environ.get("MESHALLOC_BACKEND", "").strip().lower()
        if wanted not in ("", "cext", "cffi"):
            raise ImportError("MESHALLOC_BACKEND=%r: expected one of cext, cffi" % wanted)
        if wanted != "cffi":
            try:
                from . import _meshalloc
                _impl = _meshalloc
            except ImportError:
                if wanted == "cext":
                    raise
        if _impl is None:
            from . import _libmesh
            _impl = _libmesh
    return _impl


def backend() -> str:
    """Name of the backend in use: ``"cext"`` or ``"cffi"``."""
    return "cffi" if _load_backend().__name__.endswith("._libmesh") else "cext"


def version() -> str:
    """Version string of the meshalloc core in use."""
    return str(_load_backend().version() or "")


def is_preloaded() -> bool:
    """True when libmesh is already the process malloc (``LD_PRELOAD``)."""
    return bool(_load_backend().is_preloaded())


def library_path() -> "Optional[str]":
    """Path of the preloaded libmesh in use, if any (cffi: or the one opened)."""
    path: "Optional[str]" = _load_backend().library_path()
    return path


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
    """True if address ``addr`` lies inside the meshalloc arena (compared, never read)."""
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
    """Set option ``name`` now (``MESH_<NAME>`` at start-up); KeyError, ValueError if not."""
    import errno
    _option_name(name)
    if not isinstance(value, int):
        raise TypeError("option value must be int, not %s" % type(value).__name__)
    try:
        err = _load_backend().option_set(name, value)
    except OverflowError:  # beyond a C long
        raise ValueError("value %r for option %r is out of range" % (value, name)) from None
    if err:
        raise {errno.ENOENT: KeyError(name),
               errno.EINVAL: ValueError("invalid value %d for option %r (out of range or "
                                        "read-only)" % (value, name)),
               errno.EPERM: ValueError("option %r can only be set before the heap starts "
                                       "(environment variable MESH_%s)" % (name, name.upper())),
               }.get(err, OSError(err, os.strerror(err)))


def option_docs() -> "Dict[str, str]":
    """The documentation line of every option, ``{name: doc}``, in the core's order."""
    return {name: doc or "" for name, doc in _load_backend().option_names() if name}


def option_names() -> "List[str]":
    """Every option name, in the core's order (environment: ``MESH_<NAME>``)."""
    return list(option_docs())


# ---- stats() ----------------------------------------------------------------

# The fields stats() adds to the C tables': {name: (default, doc)}.
_PY_FIELDS: "Dict[str, Tuple[Any, str]]" = {
    "pss_bytes": (0, "the process's proportional set size, bytes; read by stats(pss=True), else 0"),
    "installed_domains": ((), "the PyMem domains whose new blocks come from meshalloc now"),
    "size_classes": ((), "per size class with spans: mesh_class_stats's fields and occupancy"),
    "extra": (None, "fields from_dict() got that this heap's stats table lacks; normally empty"),
}


def _names(table: "Table") -> "Tuple[str, ...]":
    return tuple(name for name, _doc in table if name)


def _hook_table() -> "Table":
    """The extension's hook counters, (name, doc) rows; none without it."""
    try:
        from . import _meshalloc
    except ImportError:
        return []
    return _meshalloc.hook_names()


class _SizeClassBase:
    """One size class's spans: the core's ``mesh_class_stats`` fields (csrc/mesh.h)."""

    FIELDS: "ClassVar[Tuple[str, ...]]" = ()
    if TYPE_CHECKING:
        def __init__(self, **values: int) -> None: ...
        def __getattr__(self, name: str) -> int: ...

    @property
    def occupancy(self) -> float:
        """Live objects / slots of the class's spans (0.0 with no spans)."""
        return float(self.objects_in_use) / self.slots if self.slots else 0.0

    def to_dict(self) -> "Dict[str, Any]":
        return dict({n: getattr(self, n) for n in self.FIELDS}, occupancy=round(self.occupancy, 4))


class _StatsBase:
    """A snapshot of meshalloc's counters (:func:`meshalloc.stats`), a frozen dataclass whose
    fields are ``CORE_FIELDS``, ``HOOK_FIELDS`` and four more (docs/python.md, "stats()")."""

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
        """``{field: value}`` in field order as plain data, ``extra`` flattened in."""
        out = {name: getattr(self, name) for name in self.field_names()[:-1]}
        out["installed_domains"] = list(self.installed_domains)
        out["size_classes"] = [c.to_dict() for c in self.size_classes]
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out

    def to_json(self, **kwargs: "Any") -> str:
        """:meth:`to_dict` as JSON (``kwargs`` go to ``json.dumps``)."""
        import json
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, data: "Dict[str, Any]") -> "_StatsBase":
        """The inverse of :meth:`to_dict` (e.g. after ``json.loads``)."""
        known, sc = set(cls.field_names()), _type("SizeClassStats")
        extra: "Dict[str, int]" = dict(data.get("extra") or {})
        values: "Dict[str, Any]" = {"extra": extra}
        for name, value in data.items():
            if name == "installed_domains":
                values[name] = tuple(value)
            elif name == "size_classes":
                values[name] = tuple(sc(**{k: int(c.get(k, 0)) for k in sc.FIELDS}) for c in value)
            elif name != "extra":
                (values if name in known else extra)[name] = int(value)
        return cls(**values)


_types: "Dict[str, Any]" = {}


def _type(name: str) -> "Any":
    """Stats or SizeClassStats: a frozen dataclass built from the core's tables on first use."""
    if name not in _types:
        import dataclasses
        if name == "Stats":
            core, hook = _names(_load_backend().stats_names()), _names(_hook_table())
            fields = [(n, 0) for n in core + hook] + [(n, d) for n, (d, _) in _PY_FIELDS.items()]
            base: type = _StatsBase
            names = {"CORE_FIELDS": core, "HOOK_FIELDS": hook}
        else:
            classes = _names(_load_backend().class_names())
            fields, base, names = [(n, 0) for n in classes], _SizeClassBase, {"FIELDS": classes}
        # a field whose default is None is the extra dict, left out of the hash
        spec = [(n, dict, dataclasses.field(default_factory=dict, hash=False)) if d is None
                else (n, type(d), dataclasses.field(default=d)) for n, d in fields]
        _types[name] = dataclasses.make_dataclass(
            name, spec, bases=(base,), frozen=True,
            namespace=dict(names, __module__=__name__, __doc__=base.__doc__))
    return _types[name]


def __getattr__(name: str) -> "Any":
    # Stats and SizeClassStats are built on first use; DOMAINS is the extension's.
    if name in ("Stats", "SizeClassStats"):
        return _type(name)
    if name == "DOMAINS":
        return tuple(_extension(False).DOMAINS)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


if TYPE_CHECKING:
    Stats = _StatsBase
    SizeClassStats = _SizeClassBase
    DOMAINS: Tuple[str, ...]


def stats(pss: bool = False) -> "Stats":
    """A :class:`Stats` of the allocator's counters; ``pss=True`` also reads PSS (slow)."""
    impl, cls, sc = _load_backend(), _type("Stats"), _type("SizeClassStats")
    values: "Dict[str, Any]" = dict(zip(cls.CORE_FIELDS, impl.stats_read(-1)))
    if cls.HOOK_FIELDS:
        from . import _meshalloc
        values.update(zip(cls.HOOK_FIELDS, _meshalloc.hook_counts()))
    classes = (sc(**dict(zip(sc.FIELDS, row))) for row in impl.class_stats())
    values["size_classes"] = tuple(c for c in classes if c.spans or c.meshed_spans)
    values["installed_domains"] = installed_domains()
    if pss:
        from ._remote import pss_bytes
        values["pss_bytes"] = pss_bytes() or 0
    return cls(**values)  # type: ignore[no-any-return]


def stats_docs() -> "Dict[str, str]":
    """The documentation line of every :class:`Stats` field, ``{name: doc}``."""
    docs = {name: doc or "" for name, doc in _load_backend().stats_names() + _hook_table() if name}
    docs.update((name, doc) for name, (_default, doc) in _PY_FIELDS.items())
    return docs


# ---- the CPython allocator (docs/python.md) ---------------------------------

# RAW is opt-in: CPython swaps RAW back to libc malloc for moments of its
# finalization (docs/python.md, "Domains: MEM and OBJ by default, RAW on request").
DEFAULT_DOMAINS = ("mem", "obj")
_NOT_MAIN = "install() must be called from the main interpreter, not a subinterpreter"
# The refusals the extension reports by number (install_refusal(), _install()).
_REFUSALS = {
    1: "this is a free-threaded CPython build (Py_GIL_DISABLED): its garbage collector walks "
       "mimalloc's heaps, so objects must come from mimalloc",
    2: _NOT_MAIN + " (the allocator is process-wide)",
}


class InstallError(RuntimeError):
    """:func:`install` refused; the message says why."""


class _SubinterpreterError(InstallError):
    """install() called from a subinterpreter (which the start-up switch ignores)."""


def _refuse(code: int) -> None:
    if code > 0:
        raise (_SubinterpreterError if code == 2 else InstallError)(_REFUSALS[code])


class CompactResult(tuple):  # type: ignore[type-arg]
    """What :func:`compact` did, also by name; not a namedtuple: importing collections
    would slow every start-up with MESHALLOC=1 (docs/python.md)."""

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


def _extension(for_install: bool = True) -> "Any":
    """The ``_meshalloc`` extension, ready to install (InstallError if absent)."""
    global _ext, _impl
    if _ext is not None:
        return _ext
    try:
        from . import _meshalloc
    except ImportError as exc:
        if _in_subinterpreter_py():
            raise _SubinterpreterError("%s (%s)" % (_NOT_MAIN, exc)) from None
        raise InstallError("install() needs the meshalloc._meshalloc extension, which cannot be "
                           "imported: %s" % exc) from exc
    if for_install:
        _meshalloc.set_install_error(InstallError)
        # one heap per process: once the extension allocates, every function describes its heap
        _ext = _impl = _meshalloc
    return _meshalloc


def _in_subinterpreter_py() -> bool:
    """Pure-Python check (for when the extension itself cannot load)."""
    for name in ("_interpreters", "_xxsubinterpreters"):
        try:
            mod = __import__(name)
            current, main = mod.get_current(), mod.get_main()
        except ImportError:
            continue
        except Exception:  # pragma: no cover - private API drift
            return False
        if isinstance(current, tuple):  # 3.13: (id, whence)
            current, main = current[0], main[0]
        return bool(current != main)
    return False


def _parse_domains(domains: "Any", known: "Tuple[str, ...]") -> int:
    """Domain names (or None: MESHALLOC_DOMAINS, else the default) -> mask."""
    source = "domains"
    if domains is None:
        env = os.environ.get("MESHALLOC_DOMAINS", "").strip()
        domains, source = (env, "MESHALLOC_DOMAINS") if env else (DEFAULT_DOMAINS, source)
    if isinstance(domains, str):
        domains = [n for n in domains.replace(" ", ",").split(",") if n]
    mask = 0
    for name in list(domains):
        key = str(name).strip().lower()
        key = key[len("pymem_domain_"):] if key.startswith("pymem_domain_") else key
        if key not in known + ("all",):
            raise ValueError("%s: unknown PyMem domain %r (expected some of %s, or all)"
                             % (source, name, ", ".join(known)))
        mask |= (1 << len(known)) - 1 if key == "all" else 1 << known.index(key)
    if not mask:
        raise ValueError("%s: no PyMem domain given" % source)
    return mask


def _free_threaded() -> bool:
    # A free-threaded build (3.13+) has "t" in its ABI flags. Not sysconfig's
    # Py_GIL_DISABLED: importing sysconfig at start-up imports threading,
    # which a program may need to import first itself (gevent).
    return sys.version_info >= (3, 13) and "t" in getattr(sys, "abiflags", "")


def install(domains: object = None, force: bool = False, restart_tracemalloc: bool = False) -> bool:
    """Make meshalloc the allocator of new blocks of the PyMem ``domains`` (default
    ``MESHALLOC_DOMAINS``, else mem and obj); False when it already was (docs/python.md)."""
    ext = _extension()
    mask = _parse_domains(domains, tuple(ext.DOMAINS))
    if ext.installed_domains() & mask == mask:
        return False
    _refuse(1 if _free_threaded() else ext.install_refusal())
    # Only tracemalloc, PYTHONTRACEMALLOC or -X tracemalloc start tracing: no import otherwise.
    started = ("_tracemalloc" in sys.modules or "tracemalloc" in getattr(sys, "_xoptions", {})
               or (not sys.flags.ignore_environment and os.environ.get("PYTHONTRACEMALLOC")))
    tm: "Any" = __import__("_tracemalloc") if started else None
    tracing = tm is not None and tm.is_tracing()
    if tracing and not restart_tracemalloc:
        raise InstallError(
            "tracemalloc is tracing: its hooks are on top of the allocator and tracemalloc.stop() "
            "would put back what was under them, dropping meshalloc; call install() before "
            "tracemalloc.start(), or pass restart_tracemalloc=True")
    frames = tm.get_traceback_limit() if tracing else 0
    if tracing:
        tm.stop()
    try:
        changed = int(ext._install(mask, bool(force)))
    finally:
        if tracing:
            tm.start(frames)
    _refuse(-changed)
    if not _in_autoinstall or "gc" in sys.modules:
        import gc
        if _gc_callback not in gc.callbacks:
            gc.callbacks.append(_gc_callback)
    return changed > 0


def uninstall() -> bool:
    """Soft switch: new blocks come from the previous allocators; True when installed."""
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
    """Diagnostics: the allocator in place for each PyMem domain (docs/python.md)."""
    return dict(_extension().allocators())


def compact() -> "CompactResult":
    """Mesh now, pass after pass, until a pass frees nothing (the GIL is released)."""
    import time
    start = time.monotonic()
    pages, returned = (_ext or _load_backend()).compact()
    return CompactResult(int(pages), int(pages) * _PAGE_SIZE, int(returned) * _PAGE_SIZE,
                         time.monotonic() - start)


# ---- meshing after full collections ------------------------------------------

# After a generation-2 collection fragmentation is as high as it gets: mesh then, when the
# core says a periodic pass is due and 50 times the last compaction's duration passed
# (at most ~2 % of the wall-clock time).
_GC_DUTY = 50.0
_gc_last_end = -1e18
_gc_last_pause = 0.0
_gc_compactions = 0  # how many compactions the callback ran (tests, docs)


def _gc_callback(phase: str, info: "Dict[str, int]") -> None:
    global _gc_last_end, _gc_last_pause, _gc_compactions
    if phase != "stop" or info.get("generation") != 2 or not is_installed():
        return
    try:
        import time
        waited = time.monotonic() - _gc_last_end
        if _ext.periodic_wait_ns() == 0 and waited >= _GC_DUTY * _gc_last_pause:
            _gc_last_pause = compact().pause_seconds
            _gc_last_end = time.monotonic()
            _gc_compactions += 1
    except Exception:  # never let the allocator break a collection
        return


# ---- the start-up switch (meshalloc-autoinstall.pth) --------------------------


_autoinstall_done = False
_in_autoinstall = False


def _switch(value: "object", what: str) -> "Optional[bool]":
    """True/False for the spellings of on and off, None (with a warning) for anything else."""
    if value is True:  # a bare -X meshalloc
        return True
    v = str(value).strip().lower()
    if v in ("1", "yes", "true", "on", "", "0", "no", "false", "off"):
        return v in ("1", "yes", "true", "on")
    sys.stderr.write("meshalloc: %s=%s is not understood (on: 1, yes, true, on; off: 0, no, false, "
                     "off); meshalloc stays off\n" % (what, value))
    return None


def _autoinstall() -> None:
    """The start-up switch of meshalloc-autoinstall.pth; never raises, runs once per process
    (site.py may see a site-packages twice: a venv's ``lib64`` link), docs/python.md."""
    global _autoinstall_done, _in_autoinstall
    if _autoinstall_done:
        return
    _autoinstall_done = True
    try:
        env = os.environ.get("MESHALLOC")
        on = env is not None and _switch(env, "MESHALLOC")
        xopt = getattr(sys, "_xoptions", {}).get("meshalloc")
        if xopt is not None and (_switch(xopt, "-X meshalloc") or on):
            os.environ["MESHALLOC"] = "1"  # -X options are not passed on to child interpreters
        elif not on:
            return
        # CPython's debug hooks are in place: PYTHONMALLOC=*debug, or -X dev without PYTHONMALLOC
        pymalloc = "" if sys.flags.ignore_environment else os.environ.get("PYTHONMALLOC", "")
        reason = ("PYTHONMALLOC=%s" % pymalloc if pymalloc.endswith("debug") else
                  "-X dev" if getattr(sys.flags, "dev_mode", False) and not pymalloc else None)
        if reason is not None:
            sys.stderr.write("meshalloc: %s: the debug hooks stay in charge (call "
                             "meshalloc.install() to wrap them anyway)\n" % reason)
            return
        # PYTHONTRACEMALLOC / -X tracemalloc started tracing before site ran:
        # restart it on top of meshalloc (only start-up traces are lost).
        _in_autoinstall = True
        try:
            install(restart_tracemalloc=True)
        finally:
            _in_autoinstall = False
    except _SubinterpreterError:
        return  # site.py runs in subinterpreters too; the main interpreter decided
    except Exception as exc:
        sys.stderr.write("meshalloc: not installed at start-up: %s: %s\n"
                         % (type(exc).__name__, exc))
