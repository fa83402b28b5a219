"""The cffi backend: the core's raw surface from ``libmesh.so`` (ABI mode).

It offers the same functions, with the same results, as the core part of
the ``_meshalloc`` extension (csrc/faces/pymodule.c); ``meshalloc``
(``__init__.py``) builds everything users see on either.

Which copy of the core it talks to: the one whose ``mesh_*`` symbols the
process's global namespace holds (``LD_PRELOAD``, or loaded
``RTLD_GLOBAL``), the same rule the extension applies, so a process never
gets a second heap from here; otherwise the package's ``libmesh.so``, opened
``RTLD_LOCAL`` (its malloc does not replace the process's) and
``RTLD_NODELETE`` (a malloc is never unloaded while blocks from it may be
live), on the first call. (``ffi.dlopen(path, RTLD_NOLOAD)`` would be the
obvious probe, but it crashes the interpreter when the library is not
loaded, with cffi 2.0 and glibc 2.36.)
"""

from __future__ import annotations

import os
import threading
from typing import Any, List, Optional, Tuple

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


def lib() -> Any:
    """The cffi library object of the libmesh in use (opened on first use)."""
    global _lib, _preloaded, _path
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is not None:
            return _lib
        process = ffi.dlopen(None)
        try:
            process.mesh_version  # noqa: B018 -- a symbol lookup, nothing more
            _preloaded, _lib = True, process
            info = ffi.new("void *[4]")  # Dl_info: its first field is the file name
            if process.dladdr(ffi.cast("void *", process.mesh_version), info) and info[0] != ffi.NULL:
                _path = os.fsdecode(ffi.string(ffi.cast("char *", info[0])))
            return _lib
        except AttributeError:
            pass
        from . import _not_built_reason, libmesh_path

        path = libmesh_path()
        if not os.path.exists(path):
            raise ImportError("%s is missing; %s" % (path, _not_built_reason()))
        try:
            _lib = ffi.dlopen(path, ffi.RTLD_NOW | ffi.RTLD_LOCAL | getattr(ffi, "RTLD_NODELETE", 0))
        except OSError as exc:
            raise ImportError("cannot load %s: %s" % (path, exc)) from exc
        _path = path
        return _lib


def _str(ptr: Any) -> Optional[str]:
    return None if ptr == ffi.NULL else str(ffi.string(ptr).decode("utf-8", "replace"))


def _table(n: int, name: Any, doc: Any) -> List[Tuple[Optional[str], Optional[str]]]:
    return [(_str(name(i)), _str(doc(i)) if doc else None) for i in range(max(0, n))]


def _class_fields() -> int:
    n = 0
    while lib().mesh_class_stats_name(n) != ffi.NULL:
        n += 1
    return n


def version() -> Optional[str]:
    return _str(lib().mesh_version())


def is_preloaded() -> bool:
    lib()
    return _preloaded


def library_path() -> Optional[str]:
    lib()
    return _path


def stats_names() -> List[Tuple[Optional[str], Optional[str]]]:
    h = lib()
    return _table(h.mesh_stats_count(), h.mesh_stats_name, h.mesh_stats_doc)


def option_names() -> List[Tuple[Optional[str], Optional[str]]]:
    h = lib()
    return _table(h.mesh_option_count(), h.mesh_option_name, h.mesh_option_doc)


def class_names() -> List[Tuple[Optional[str], Optional[str]]]:
    return _table(_class_fields(), lib().mesh_class_stats_name, None)


def stats_read(n: int) -> List[int]:
    total = lib().mesh_stats_count()
    n = total if n < 0 or n > total else n
    out = ffi.new("uint64_t[]", n + 1)
    got = lib().mesh_stats_read(out, n)
    return [int(out[i]) for i in range(min(n, got))]


def class_stats() -> List[List[int]]:
    fields = _class_fields()
    out = ffi.new("uint64_t[]", 256 * fields)
    n = min(256, lib().mesh_class_stats(out, 256))
    return [[int(out[i * fields + j]) for j in range(fields)] for i in range(n)]


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


def scavenge() -> int:
    return int(lib().mesh_scavenge())


def check_heap() -> int:
    return int(lib().mesh_check_heap())


def print_stats(fd: int) -> None:
    lib().mesh_stats_print(fd)


def periodic_wait_ns() -> int:
    return int(lib().mesh_periodic_wait_ns())


def meshing_available() -> bool:
    return bool(lib().mesh_meshing_available())


def owns(addr: int) -> bool:
    return bool(lib().mesh_owns(ffi.cast("void *", addr)))
