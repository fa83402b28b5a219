"""Build helper for meshalloc: the extension objects and the build_ext that
knows how to produce a plain shared library.

setup.py stays short and asks this module for everything. One C core
(csrc/core/*.c, globbed at build time so new files are picked up) is compiled
twice, once for each face:

* ``meshalloc/libmesh.so`` -- a plain shared library (drop-in malloc for
  LD_PRELOAD, also what the cffi binding opens). No ABI tag in its name, no
  ``PyInit_`` export, no libpython: it must be loadable into any process.
* ``meshalloc._meshalloc`` -- the CPython extension. It compiles the core with
  ``MESH_API`` defined empty so that, under ``-fvisibility=hidden``, its copy
  of the mesh_* functions stays private: a preloaded libmesh.so can then never
  interpose on (or be confused with) the extension's own core.

Environment variables read at build time:

* ``MESHALLOC_DEBUG=1`` -- build the core with ``-DMESH_DEBUG=3 -O1 -g``
  (every validator on, assertions enabled).

setuptools' ``build_clib`` and ``setuptools.extension.Library`` only make
static archives on Linux, hence the small subclasses below.

The start-up switch (docs/python.md, "Start-up switch") is a one-line
``meshalloc-autoinstall.pth`` at the top of site-packages. setuptools cannot
put package data outside a package, so :class:`MeshBuildPy` writes the file
into the root of the build directory, from where the wheel (and ``pip
install .``) puts it next to the ``meshalloc`` package. Editable installs do
not get it.
"""

import glob
import os

from setuptools import Extension
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

# Flags shared by both faces: csrc/cflags.txt, the one place they are
# written (csrc/Makefile and the tests read it too). They come after
# Python's own CFLAGS on the command line, so -O2 here wins over the
# interpreter's -O3.
def _shared_cflags() -> list:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "cflags.txt")
    with open(path) as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


CORE_CFLAGS = ["-O2"] + _shared_cflags()
DEBUG_CFLAGS = ["-DMESH_DEBUG=3", "-O1", "-g", "-UNDEBUG"]
CORE_LDFLAGS = ["-pthread"]

INCLUDE_DIRS = ["csrc", os.path.join("csrc", "core")]


class SharedLibrary(Extension):
    """A C shared library shipped inside the package, not a Python module.

    Its file name is ``<last name component>.so`` with no ABI tag, it exports
    no ``PyInit_`` function and it is not linked against libpython.
    """


class MeshBuildExt(build_ext):
    """build_ext that can also build a :class:`SharedLibrary`.

    Each extension gets its own temporary directory because the two faces
    compile the same core sources with different flags (``MESH_API``): with a
    shared directory the second face would overwrite the first one's objects,
    and a parallel build (``-j``) would race on them. Parallel building is
    turned off for the same reason; the core is small.
    """

    def finalize_options(self):
        super().finalize_options()
        self.parallel = False

    def _shared_library(self, name):
        """The SharedLibrary whose (full or last-component) name is ``name``."""
        last = name.split(".")[-1]
        for ext in self.extensions:
            if isinstance(ext, SharedLibrary) and (
                ext.name == name or ext.name.split(".")[-1] == last
            ):
                return ext
        return None

    def get_ext_filename(self, fullname):
        # Called with either "meshalloc.libmesh" or just "libmesh".
        if self._shared_library(fullname) is not None:
            parts = fullname.split(".")
            parts[-1] += ".so"
            return os.path.join(*parts)
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext):
        if isinstance(ext, SharedLibrary):
            return list(ext.export_symbols or [])
        return super().get_export_symbols(ext)

    def get_libraries(self, ext):
        if isinstance(ext, SharedLibrary):
            return list(ext.libraries or [])
        return super().get_libraries(ext)

    def build_extension(self, ext):
        saved_temp = self.build_temp
        saved_linker = getattr(self.compiler, "linker_so", None)
        self.build_temp = os.path.join(saved_temp, ext.name)
        if isinstance(ext, SharedLibrary) and saved_linker is not None:
            # The interpreter's LDSHARED carries an rpath to its own lib
            # directory; a malloc meant for any process has no use for it.
            self.compiler.linker_so = [
                arg for arg in saved_linker if not arg.startswith("-Wl,-rpath")
            ]
        try:
            super().build_extension(ext)
        finally:
            self.build_temp = saved_temp
            if saved_linker is not None:
                self.compiler.linker_so = saved_linker


# The start-up hook. site.py executes a .pth line that starts with "import";
# when MESHALLOC is unset, empty or "0" and there is no -X meshalloc, the
# line imports nothing (os and sys are already loaded) and costs
# microseconds. Any other value goes to _autoinstall, which knows the
# spellings (1/yes/true/on, 0/no/false/off) and warns about the rest.
PTH_NAME = "meshalloc-autoinstall.pth"
PTH_LINE = (
    "import os, sys; "
    "(os.environ.get('MESHALLOC', '0') not in ('', '0') or 'meshalloc' in sys._xoptions) "
    "and __import__('meshalloc')._autoinstall()\n"
)


class MeshBuildPy(build_py):
    """build_py that also writes the start-up .pth into the build root."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, PTH_NAME)
        self.mkpath(self.build_lib)
        with open(target, "w", encoding="ascii") as f:
            f.write(PTH_LINE)

    def get_outputs(self, include_bytecode=1):
        return list(super().get_outputs(include_bytecode)) + [
            os.path.join(self.build_lib, PTH_NAME)
        ]


def _debug_enabled():
    return os.environ.get("MESHALLOC_DEBUG", "").strip() not in ("", "0")


def _sorted_glob(pattern):
    return sorted(glob.glob(pattern))


def core_sources():
    """Every C file of the core, relative to the project root."""
    sources = _sorted_glob(os.path.join("csrc", "core", "*.c"))
    if not sources:
        raise RuntimeError(
            "no C sources found in csrc/core/; run the build from the "
            "meshalloc source tree (or an sdist of it)"
        )
    return sources


def core_headers():
    return _sorted_glob(os.path.join("csrc", "*.h")) + _sorted_glob(
        os.path.join("csrc", "core", "*.h")
    ) + _sorted_glob(os.path.join("csrc", "faces", "*.h"))


def compile_args():
    args = list(CORE_CFLAGS)
    if _debug_enabled():
        args += DEBUG_CFLAGS
    return args


# The CPython face: the module and its PyMem hooks (tests/py/build_ext.py
# compiles the same list).
PY_FACE_SOURCES = [os.path.join("csrc", "faces", "pymodule.c"), os.path.join("csrc", "faces", "pyhooks.c")]


def get_extensions():
    """The two faces of meshalloc, built from the same core sources."""
    core = core_sources()
    headers = core_headers()
    cflags = compile_args()

    libmesh = SharedLibrary(
        "meshalloc.libmesh",
        sources=core + [os.path.join("csrc", "faces", "libmesh.c")],
        include_dirs=list(INCLUDE_DIRS),
        depends=headers,
        extra_compile_args=list(cflags),
        # -z defs: every symbol must resolve against libc/libpthread at link
        # time, so a stray reference to a libpython symbol fails the build
        # instead of failing the first program that preloads the library.
        extra_link_args=CORE_LDFLAGS + ["-Wl,-z,defs", "-Wl,-soname,libmesh.so"],
    )

    pymodule = Extension(
        "meshalloc._meshalloc",
        sources=core + PY_FACE_SOURCES,
        include_dirs=list(INCLUDE_DIRS),
        depends=headers,
        # Keep the extension's core private (see the module docstring).
        define_macros=[("MESH_API", "")],
        extra_compile_args=list(cflags),
        extra_link_args=list(CORE_LDFLAGS),
        # dlsym() to find a preloaded libmesh; a stub in glibc >= 2.34.
        libraries=["dl"],
    )
    return [libmesh, pymodule]


def get_cmdclass():
    return {"build_ext": MeshBuildExt, "build_py": MeshBuildPy}
