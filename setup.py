"""The compiled hot path: Cython compiles the per-packet modules of mosxdp/core from their
Python source, as they are (pure-Python mode), into extension modules next to the .py files.
`pip install -e .` (scripts/setup.sh) builds them; MOSXDP_PURE_PYTHON=1 or a missing .so runs
the .py files instead (mosxdp/_compiled.py). Everything else is in pyproject.toml."""
import runpy

from Cython.Build import cythonize
from setuptools import setup

HOT_MODULES = runpy.run_path("mosxdp/_compiled.py")["HOT_MODULES"]

setup(ext_modules=cythonize(
    [f"mosxdp/core/{name}.py" for name in HOT_MODULES],
    # Annotations stay what they are in Python (no C types, no checks): same behaviour.
    compiler_directives={"language_level": 3, "annotation_typing": False},
))
