"""meshalloc: the Mesh compacting allocator for CPython and any C program.

Two faces of one C core:

* ``libmesh.so`` (see :func:`libmesh_path`): a drop-in malloc for
  ``LD_PRELOAD``; ``python -m meshalloc run --preload -- CMD`` sets it up.
* the ``meshalloc._meshalloc`` extension module.

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

from __future__ import annotations

import os

# typing is imported for the type checker only: this package must stay cheap
# to import (a start-up hook imports it in every interpreter).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Protocol

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

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "libmesh_path",
    "backend",
    "version",
    "is_preloaded",
    "library_path",
    "stats",
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
]

BACKENDS = ("cext", "cffi")
_BACKEND_ENV = "MESHALLOC_BACKEND"

_impl: Optional[_Backend] = None
_impl_name: Optional[str] = None


def libmesh_path() -> str:
    """Absolute path of the ``libmesh.so`` shipped in this package.

    Use it as ``LD_PRELOAD=$(python -m meshalloc libpath)``.
    """
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "libmesh.so")


def _load_backend() -> _Backend:
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


def library_path() -> Optional[str]:
    """Path of the preloaded libmesh in use, if any (cffi: or the one opened)."""
    return _load_backend().library_path()


def stats() -> Dict[str, int]:
    """A snapshot of the allocator's counters, ``{name: value}``."""
    return _load_backend().stats()


def stats_docs() -> Dict[str, str]:
    """The documentation line of every counter, ``{name: doc}``."""
    return _load_backend().stats_docs()


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


def option_names() -> List[str]:
    """Every option name, in the core's order."""
    return list(_load_backend().option_names())


def option_docs() -> Dict[str, str]:
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
