"""Build meshalloc's CPython extension for another interpreter, quickly.

The test venv has one Python; the plugin must work on every CPython from
``pyenv versions`` (docs/python.md, "Tests"). ``setup.py build_ext`` needs
setuptools in each interpreter (3.12+ pyenv builds have none) and recompiles
the core every time, so this helper compiles the core once (it does not
depend on the Python version) with setup_mesh.py's flags and ``MESH_API=``
(the extension's core stays private), then compiles the CPython face
(``setup_mesh.PY_FACE_SOURCES``) against each interpreter's headers and links
``_meshalloc<EXT_SUFFIX>``.

The result is a throw-away venv (``--without-pip``) per interpreter whose
site-packages holds a copy of the ``meshalloc`` package with the new
extension, libmesh.so when one is available, and the start-up
``meshalloc-autoinstall.pth``, so the start-up switch works as in a real
install.

    python tests/py/build_ext.py PYTHON OUTDIR    # prints the venv's python
"""
from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _setup_mesh():
    sys.path.insert(0, str(REPO))
    try:
        import setup_mesh  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    return setup_mesh


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError("command failed (%d): %s\n%s%s" % (p.returncode, " ".join(map(str, cmd)),
                                                             p.stdout[-3000:], p.stderr[-3000:]))
    return p


def cflags() -> list:
    sm = _setup_mesh()
    os.environ.pop("MESHALLOC_DEBUG", None)
    return list(sm.compile_args()) + ["-DMESH_API="] + ["-I%s" % (REPO / d) for d in sm.INCLUDE_DIRS]


def build_core(objdir: Path, cc: str = "gcc") -> list:
    """The core's object files (compiled once, in parallel)."""
    objdir.mkdir(parents=True, exist_ok=True)
    flags = cflags()
    sources = sorted((REPO / "csrc" / "core").glob("*.c"))
    objs = [objdir / (s.stem + ".o") for s in sources]
    headers = list((REPO / "csrc").glob("*.h")) + list((REPO / "csrc" / "core").glob("*.h"))
    newest_header = max((h.stat().st_mtime for h in headers), default=0)

    def one(pair):
        src, obj = pair
        if not obj.exists() or obj.stat().st_mtime < max(src.stat().st_mtime, newest_header):
            _run([cc, *flags, "-c", src, "-o", obj], timeout=300)

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        list(ex.map(one, zip(sources, objs)))
    return objs


def interpreter_info(python: str) -> dict:
    code = ("import json, sys, sysconfig; print(json.dumps({'include': sysconfig.get_paths()['include'],"
            " 'suffix': sysconfig.get_config_var('EXT_SUFFIX'), 'version': '%d.%d' % sys.version_info[:2]}))")
    return json.loads(_run([python, "-I", "-c", code], timeout=60).stdout)


def build_venv(python: str, outdir: Path, core_objs: list, cc: str = "gcc",
               extra_cflags: tuple = ()) -> Path:
    """A venv for ``python`` with meshalloc in its site-packages; returns its python.

    ``extra_cflags`` go to the compilation of the CPython face only (the tests
    use ``-DMESHALLOC_TEST_FREE_THREADED``)."""
    sm = _setup_mesh()
    outdir = Path(outdir)
    info = interpreter_info(python)
    venv = outdir / ("venv-" + info["version"])
    if venv.exists():
        shutil.rmtree(venv)
    _run([python, "-m", "venv", "--without-pip", venv], timeout=120)
    vpy = venv / "bin" / "python"
    purelib = Path(_run([vpy, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        timeout=60).stdout.strip())
    pkg = purelib / "meshalloc"
    shutil.copytree(REPO / "meshalloc", pkg,
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    face_objs = []
    for src in sm.PY_FACE_SOURCES:
        face_objs.append(outdir / ("%s-%s.o" % (Path(src).stem, info["version"])))
        _run([cc, *cflags(), *extra_cflags, "-I" + info["include"], "-c", REPO / src, "-o", face_objs[-1]],
             timeout=300)
    _run([cc, "-shared", "-pthread", "-o", pkg / ("_meshalloc" + info["suffix"]), *face_objs, *core_objs,
          "-ldl"], timeout=300)
    libmesh = _installed_libmesh()
    if libmesh is not None:
        shutil.copy2(libmesh, pkg / "libmesh.so")
    (purelib / sm.PTH_NAME).write_text(sm.PTH_LINE)
    return vpy


def _installed_libmesh():
    for base in sys.path:
        cand = Path(base or ".") / "meshalloc" / "libmesh.so"
        if cand.is_file():
            return cand
    built = REPO / "csrc" / "build" / "libmesh.so"
    return built if built.is_file() else None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print(__doc__)
        return 2
    python, out = argv
    out = Path(out).resolve()
    objs = build_core(out / "core")
    print(build_venv(python, out, objs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
