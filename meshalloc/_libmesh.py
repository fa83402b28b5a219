"""cffi (ABI mode) binding to libmesh.so, the meshalloc core as a plain library.

Which copy of the core this talks to:

* If the process already has libmesh (``LD_PRELOAD``, or loaded
  ``RTLD_GLOBAL`` by someone), its ``mesh_*`` symbols are visible through
  ``ffi.dlopen(None)`` (the process's global namespace) and that copy is
  used: a process never gets a second meshalloc heap from this module.
* Otherwise the ``libmesh.so`` shipped inside the package is opened by path
  (``RTLD_LOCAL``, so its malloc does not replace the process's), and kept
  loaded for the life of the process (``RTLD_NODELETE``: a malloc is never
  unloaded while blocks from it may be live).

``ffi.dlopen(path, RTLD_NOLOAD)`` is not used to probe for a preloaded copy:
it crashes the interpreter (cffi 2.0, glibc 2.36) when the library is not
already loaded.

The library is opened lazily, on the first call that needs it; importing this
module only builds the ``FFI`` object.
"""

from __future__ import annotations

import errno
import operator
import os
import threading
from typing import Any, Dict, List, Optional, Tuple

from cffi import FFI  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "ffi",
    "lib",
    "libmesh_path",
    "is_preloaded",
    "library_path",
    "version",
    "owns",
    "stats",
    "hook_counts",
    "class_stats",
    "stats_docs",
    "print_stats",
    "get_option",
    "set_option",
    "option_names",
    "option_docs",
    "meshing_available",
    "check_heap",
    "scavenge",
    "compact",
]

ffi = FFI()

# The public API of csrc/mesh.h (kept in the same order). The allocation
# functions are declared too so that tests can drive the core directly.
ffi.cdef(
    """
    void  *mesh_malloc(size_t size);
    void   mesh_free(void *p);
    void  *mesh_calloc(size_t count, size_t size);
    void  *mesh_realloc(void *p, size_t size);
    void  *mesh_reallocarray(void *p, size_t count, size_t size);
    void  *mesh_memalign(size_t alignment, size_t size);
    int    mesh_posix_memalign(void **out, size_t alignment, size_t size);
    void  *mesh_aligned_alloc(size_t alignment, size_t size);
    void  *mesh_valloc(size_t size);
    void  *mesh_pvalloc(size_t size);
    size_t mesh_usable_size(const void *p);
    int    mesh_owns(const void *p);

    size_t mesh_scavenge(void);
    int    mesh_check_heap(void);
    int    mesh_meshing_available(void);
    size_t mesh_compact(void);
    const char *mesh_version(void);

    long   mesh_option_get(const char *name);
    int    mesh_option_set(const char *name, long value);
    int    mesh_option_count(void);
    const char *mesh_option_name(int i);
    const char *mesh_option_doc(int i);

    int    mesh_stats_count(void);
    const char *mesh_stats_name(int i);
    const char *mesh_stats_doc(int i);
    int    mesh_stats_read(uint64_t *out, int n);
    void   mesh_stats_print(int fd);
    typedef struct mesh_class_stats_s {
        uint64_t object_size, span_bytes, spans, spans_attached, spans_partial,
                 spans_full, slots, objects_in_use, meshed_spans;
    } mesh_class_stats_t;
    int    mesh_class_stats(mesh_class_stats_t *out, int n);
    """
)

# Separate FFI for libc's dladdr, used only to name the preloaded library.
_dl_ffi = FFI()
_dl_ffi.cdef(
    """
    typedef struct {
        const char *dli_fname;
        void       *dli_fbase;
        const char *dli_sname;
        void       *dli_saddr;
    } Dl_info;
    int dladdr(const void *addr, Dl_info *info);
    """
)

_LONG_MIN = -(1 << (8 * ffi.sizeof("long") - 1))
_LONG_MAX = (1 << (8 * ffi.sizeof("long") - 1)) - 1
_ADDR_LIMIT = 1 << (8 * ffi.sizeof("void *"))

_lock = threading.Lock()
_lib: Optional[Any] = None
_preloaded = False
_library_path: Optional[str] = None


def libmesh_path() -> str:
    """Absolute path of the libmesh.so shipped in this package."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "libmesh.so")


def _find_preloaded() -> Optional[Any]:
    """The process's global namespace if it already holds libmesh, else None."""
    process = ffi.dlopen(None)
    try:
        process.mesh_version  # noqa: B018 -- a symbol lookup, nothing more
    except AttributeError:
        return None
    return process


def _name_of(handle: Any) -> Optional[str]:
    """Path of the object file that defines handle's mesh_version, if known."""
    try:
        libc = _dl_ffi.dlopen(None)
        info = _dl_ffi.new("Dl_info *")
        addr = _dl_ffi.cast("void *", int(ffi.cast("uintptr_t", handle.mesh_version)))
        if libc.dladdr(addr, info) != 0 and info.dli_fname != _dl_ffi.NULL:
            return os.fsdecode(_dl_ffi.string(info.dli_fname))
    except (AttributeError, OSError, TypeError):
        pass
    return None


def lib() -> Any:
    """The cffi library object of the libmesh in use (opened on first use)."""
    global _lib, _preloaded, _library_path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        process = _find_preloaded()
        if process is not None:
            _preloaded = True
            _library_path = _name_of(process)
            _lib = process
            return _lib
        path = libmesh_path()
        if not os.path.exists(path):
            from . import _not_built_reason

            raise ImportError("%s is missing; %s" % (path, _not_built_reason()))
        flags = ffi.RTLD_NOW | ffi.RTLD_LOCAL | getattr(ffi, "RTLD_NODELETE", 0)
        try:
            handle = ffi.dlopen(path, flags)
        except OSError as exc:
            raise ImportError("cannot load %s: %s" % (path, exc)) from exc
        _preloaded = False
        _library_path = path
        _lib = handle
        return _lib


def is_preloaded() -> bool:
    """True when the process already had libmesh (LD_PRELOAD) and it is used."""
    lib()
    return _preloaded


def library_path() -> Optional[str]:
    """Path of the libmesh in use (the preloaded one, or the package's)."""
    lib()
    return _library_path


def _str(ptr: Any) -> Optional[str]:
    if ptr == ffi.NULL:
        return None
    return str(ffi.string(ptr).decode("utf-8", "replace"))


def _name_bytes(name: str) -> bytes:
    if not isinstance(name, str):
        raise TypeError("option name must be str, not %s" % type(name).__name__)
    if "\0" in name:
        raise ValueError("embedded null character in option name")
    return name.encode("utf-8")


def version() -> str:
    """Version string of the meshalloc core in use."""
    return _str(lib().mesh_version()) or ""


def owns(addr: int) -> bool:
    """True if addr lies inside the meshalloc arena (compared, never read)."""
    value = operator.index(addr)
    if value < 0 or value >= _ADDR_LIMIT:
        raise OverflowError("address does not fit a pointer")
    return bool(lib().mesh_owns(ffi.cast("void *", value)))


def stats() -> Dict[str, int]:
    """A snapshot of the core's counters, by name, in the core's order."""
    handle = lib()
    count = max(0, handle.mesh_stats_count())
    if count == 0:
        return {}
    values = ffi.new("uint64_t[]", count)
    got = min(count, handle.mesh_stats_read(values, count))
    result: Dict[str, int] = {}
    for i in range(got):
        name = _str(handle.mesh_stats_name(i))
        if name is not None:
            result[name] = int(values[i])
    return result


def class_stats() -> List[Tuple[int, ...]]:
    """One tuple per size class: the fields of mesh_class_stats_t in order."""
    handle = lib()
    out = ffi.new("mesh_class_stats_t[]", 256)
    n = min(256, max(0, handle.mesh_class_stats(out, 256)))
    return [(c.object_size, c.span_bytes, c.spans, c.spans_attached, c.spans_partial, c.spans_full,
             c.slots, c.objects_in_use, c.meshed_spans) for c in (out[i] for i in range(n))]


def hook_counts() -> Dict[str, int]:
    """The PyMem hook counters: none here (the hooks live in the extension)."""
    return {}


def stats_docs() -> Dict[str, str]:
    """The documentation line of every counter, by name."""
    handle = lib()
    result: Dict[str, str] = {}
    for i in range(max(0, handle.mesh_stats_count())):
        name = _str(handle.mesh_stats_name(i))
        if name is not None:
            result[name] = _str(handle.mesh_stats_doc(i)) or ""
    return result


def print_stats(fd: int = 2) -> None:
    """Write the MALLOCSTATS summary to file descriptor fd."""
    lib().mesh_stats_print(operator.index(fd))


def get_option(name: str) -> int:
    """Current value of an option; KeyError if there is no such option."""
    raw = _name_bytes(name)
    handle = lib()
    ffi.errno = 0
    value = handle.mesh_option_get(raw)
    if value == -1 and ffi.errno == errno.ENOENT:
        raise KeyError(name)
    return int(value)


def set_option(name: str, value: int) -> None:
    """Set an option at run time.

    KeyError if there is no such option, ValueError if the value is out of
    range or the option is read-only (start-up options cannot change once the
    heap is running).
    """
    raw = _name_bytes(name)
    if not isinstance(value, int):
        raise TypeError("option value must be int, not %s" % type(value).__name__)
    if not _LONG_MIN <= value <= _LONG_MAX:
        raise ValueError("value %r for option %r is out of range" % (value, name))
    handle = lib()
    ffi.errno = 0
    if handle.mesh_option_set(raw, int(value)) == 0:
        return
    err = ffi.errno
    if err == errno.ENOENT or name not in option_names():
        raise KeyError(name)
    if err == errno.EINVAL:
        raise ValueError(
            "invalid value %d for option %r (out of range or read-only)" % (value, name)
        )
    if err == errno.EPERM:
        # A start-up option once the heap is running.
        raise ValueError(
            "option %r can only be set before the heap starts (environment "
            "variable MESH_%s)" % (name, name.upper())
        )
    raise OSError(err, os.strerror(err))


def option_names() -> List[str]:
    """Every option name, in the core's order (environment: MESH_<NAME>)."""
    handle = lib()
    names = []
    for i in range(max(0, handle.mesh_option_count())):
        name = _str(handle.mesh_option_name(i))
        if name is not None:
            names.append(name)
    return names


def option_docs() -> Dict[str, str]:
    """The documentation line of every option, by name."""
    handle = lib()
    result: Dict[str, str] = {}
    for i in range(max(0, handle.mesh_option_count())):
        name = _str(handle.mesh_option_name(i))
        if name is not None:
            result[name] = _str(handle.mesh_option_doc(i)) or ""
    return result


def meshing_available() -> bool:
    """True when the arena is memfd-backed and spans can be meshed."""
    return bool(lib().mesh_meshing_available())


def check_heap() -> int:
    """Run every heap validator; 0 when consistent, else the problem count."""
    return int(lib().mesh_check_heap())


def scavenge() -> int:
    """Return dirty free pages to the OS now; returns the bytes released."""
    return int(lib().mesh_scavenge())


def compact() -> "tuple[int, int, float]":
    """Mesh now until a pass frees nothing (mesh_compact).

    Returns (pages freed by meshing, pages returned to the OS during the
    call, seconds the call took), like the extension's compact().
    """
    import time

    handle = lib()
    before = stats().get("pages_punched", 0)
    start = time.monotonic()
    pages = int(handle.mesh_compact())
    seconds = time.monotonic() - start
    after = stats().get("pages_punched", 0)
    return pages, max(0, after - before), seconds
