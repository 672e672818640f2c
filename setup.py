"""The compiled hot path: Cython compiles the per-packet modules (mosxdp/core's, and the loops
of io and engine that feed it: HOT_MODULES) from their Python source, as they are
(pure-Python mode), into extension modules next to the .py files.
`pip install -e .` (scripts/setup.sh) builds them; MOSXDP_PURE_PYTHON=1 or a missing .so runs
the .py files instead (mosxdp/core/compiled.py). One small C extension, mosxdp/io/_batchio.c,
runs an output directory's file operations in batches without the GIL (its Python twin is
in mosxdp/io/filewriter.py); another, mosxdp/engine/_kerneltwin.c, is the per-frame step of
the offline model of the kernel's verdicts (its twin: mosxdp/engine/kernel_twin.py); a
third, mosxdp/engine/_splitscan.c, the loops over a split run's input (twins in
mosxdp/engine/split_feed.py).
Everything else is in pyproject.toml."""
import os
import runpy
import shutil

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HOT_MODULES = runpy.run_path("mosxdp/core/compiled.py")["HOT_MODULES"]


class ReuseBuiltExt(build_ext):
    """build_ext that takes an extension module already next to its source and newer than
    it (and than its C file) instead of compiling it again: pip builds in a fresh directory
    each time, and scripts/setup.sh, run before every test run, stays quick."""

    def build_extension(self, ext):
        target = self.get_ext_fullpath(ext.name)
        # The same file name (ABI tag included) in the source tree.
        built = os.path.join(*ext.name.split(".")[:-1], os.path.basename(target))
        sources = list(ext.sources) + [s[:-2] + ".py" for s in ext.sources if s.endswith(".c")]
        if os.path.exists(built) and all(os.path.getmtime(built) > os.path.getmtime(s)
                                         for s in sources if os.path.exists(s)):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(built, target)
            return
        super().build_extension(ext)


setup(
    ext_modules=cythonize(
        [f"mosxdp/{name.replace('.', '/')}.py" for name in HOT_MODULES],
        # Annotations stay what they are in Python (no C types, no checks): same behaviour.
        compiler_directives={"language_level": 3, "annotation_typing": False},
    ) + [Extension("mosxdp.io._batchio", ["mosxdp/io/_batchio.c"]),
         Extension("mosxdp.engine._kerneltwin", ["mosxdp/engine/_kerneltwin.c"]),
         Extension("mosxdp.engine._splitscan", ["mosxdp/engine/_splitscan.c"])],
    cmdclass={"build_ext": ReuseBuiltExt},
)
