"""meshalloc's build entry point; the build logic lives in setup_mesh.py.

Metadata is in pyproject.toml. Set MESHALLOC_DEBUG=1 for a debug core.
"""

import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
# setup_mesh names sources relative to the project root; under PEP 517 the
# root is the working directory but not necessarily on sys.path.
os.chdir(HERE)
sys.path.insert(0, HERE)

import setup_mesh  # noqa: E402

setup(
    ext_modules=setup_mesh.get_extensions(),
    cmdclass=setup_mesh.get_cmdclass(),
)
