"""The cffi backend: the core part of the ``_meshalloc`` extension's surface (typed in
``_meshalloc.pyi``) from the ``libmesh.so`` the process has, else the package's (ABI mode;
docs/python.md, "Backends").
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any, Callable, List, Optional, Tuple

from cffi import FFI  # type: ignore[import-untyped,unused-ignore]

ffi = FFI()
# The part of csrc/mesh.h this binding calls. mesh_class_stats fills rows
# of uint64_t (the struct's only type), as many as mesh_class_stats_name
# names, so its layout is not repeated here.
ffi.cdef(
    """
    const char *mesh_version(void);
    int    mesh_owns(const void *p);
    size_t mesh_scavenge(void);
    int    mesh_check_heap(void);
    int    mesh_meshing_available(void);
    size_t mesh_compact_ex(size_t *pages_returned);
    long long mesh_periodic_wait_ns(void);
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
    int    mesh_class_stats(uint64_t *out, int n);
    const char *mesh_class_stats_name(int i);
    int    dladdr(const void *addr, void *info);
    """
)

_lock = threading.Lock()
_lib: Optional[Any] = None
_preloaded = False
_path: Optional[str] = None
Table = List[Tuple[Optional[str], Optional[str]]]


def _open() -> Any:
    """The preloaded core if the process has one, else the package's copy."""
    global _preloaded, _path
    process = ffi.dlopen(None)
    # A symbol lookup, not ffi.dlopen(path, RTLD_NOLOAD): that crashes the
    # interpreter when the library is not loaded (cffi 2.0, glibc 2.36).
    if hasattr(process, "mesh_version"):
        _preloaded = True
        info = ffi.new("void *[4]")  # Dl_info: its first field is the file name
        if process.dladdr(ffi.cast("void *", process.mesh_version), info) and info[0] != ffi.NULL:
            _path = os.fsdecode(ffi.string(ffi.cast("char *", info[0])))
        return process
    from . import _not_built_reason, libmesh_path
    path = libmesh_path()
    if not os.path.exists(path):
        raise ImportError("%s is missing; %s" % (path, _not_built_reason()))
    try:
        found = ffi.dlopen(path, ffi.RTLD_NOW | ffi.RTLD_LOCAL | getattr(ffi, "RTLD_NODELETE", 0))
    except OSError as exc:
        raise ImportError("cannot load %s: %s" % (path, exc)) from exc
    _path = path
    return found


def lib() -> Any:
    """The cffi library object of the libmesh in use (opened on first use)."""
    global _lib
    with _lock:
        if _lib is None:
            _lib = _open()
    return _lib


def _str(ptr: Any) -> Optional[str]:
    return None if ptr == ffi.NULL else str(ffi.string(ptr).decode("utf-8", "replace"))


def _table(count: int, name: Any, doc: Any = None) -> Table:
    return [(_str(name(i)), _str(doc(i)) if doc else None) for i in range(max(0, count))]


def _class_fields() -> int:
    """How many fields mesh_class_stats fills per class (its names end with NULL)."""
    return next(n for n in itertools.count() if lib().mesh_class_stats_name(n) == ffi.NULL)


def _forward(symbol: str, result: Callable[[Any], Any]) -> Callable[..., Any]:
    """A function calling the core's ``symbol`` and converting its result."""
    return lambda *args: result(getattr(lib(), symbol)(*args))


version = _forward("mesh_version", _str)
scavenge = _forward("mesh_scavenge", int)
check_heap = _forward("mesh_check_heap", int)
print_stats = _forward("mesh_stats_print", lambda _none: None)
periodic_wait_ns = _forward("mesh_periodic_wait_ns", int)
meshing_available = _forward("mesh_meshing_available", bool)


def is_preloaded() -> bool:
    lib()
    return _preloaded


def library_path() -> Optional[str]:
    lib()
    return _path


def stats_names() -> Table:
    return _table(lib().mesh_stats_count(), lib().mesh_stats_name, lib().mesh_stats_doc)


def option_names() -> Table:
    return _table(lib().mesh_option_count(), lib().mesh_option_name, lib().mesh_option_doc)


def class_names() -> Table:
    return _table(_class_fields(), lib().mesh_class_stats_name)


def stats_read(n: int) -> List[int]:
    total = lib().mesh_stats_count()
    n = total if n < 0 or n > total else n
    out = ffi.new("uint64_t[]", n + 1)
    got = lib().mesh_stats_read(out, n)
    return list(out)[:min(n, got)]


def class_stats() -> List[List[int]]:
    fields = _class_fields()
    out = ffi.new("uint64_t[]", 256 * fields)
    n = min(256, lib().mesh_class_stats(out, 256))
    return [list(out[i * fields:(i + 1) * fields]) for i in range(n)]


def option_get(name: str) -> Tuple[int, int]:
    ffi.errno = 0
    value = int(lib().mesh_option_get(name.encode()))
    return value, ffi.errno if value == -1 else 0


def option_set(name: str, value: int) -> int:
    ffi.errno = 0
    return 0 if lib().mesh_option_set(name.encode(), value) == 0 else int(ffi.errno)


def compact() -> Tuple[int, int]:
    returned = ffi.new("size_t *")
    pages = int(lib().mesh_compact_ex(returned))
    return pages, int(returned[0])


def owns(addr: int) -> bool:
    return bool(lib().mesh_owns(ffi.cast("void *", addr)))
