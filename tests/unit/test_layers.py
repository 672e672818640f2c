"""The direction of imports between the layers (docs: DESIGN.md, "Layers"), read with `ast`
from the source files, so it holds for imports inside functions, relative imports and
imports under TYPE_CHECKING alike:

* `mosxdp/core` imports nothing outside `mosxdp.core` but the standard library and
  `cython` (the compiled build's type declarations, decorators that do nothing in plain
  Python, and `cython.cimports` of CPython's C API and the C library, imported under
  `if cython.compiled`);
* `mosxdp/io` imports nothing of `mosxdp.core`, `mosxdp.engine`, `mosxdp.api` or the
  public face that re-exports them (`mosxdp`, `mosxdp.constants`, `mosxdp.types`,
  `mosxdp.facade`);
* `mosxdp/engine` imports nothing of the public face (`mosxdp.api`, `mosxdp.cli`,
  `mosxdp.facade`) nor of `mosxdp.demo`, which nothing in core, io or engine uses;
* `mosxdp/apps` and `examples` import of mosxdp only the public namespace: `mosxdp`,
  `mosxdp.constants`, `mosxdp.types` (what `mosxdp/__init__.py` re-exports); the apps
  also their own helpers in `mosxdp.apps` (`_common`, under the same rule);
* `mosxdp/sessions` imports of mosxdp only `mosxdp.sessions`, and besides the standard
  library only the protocol libraries it wraps (httptools, dnspython): it is sans-IO;
* `scripts` import nothing from `tests/`.

A name imported from a package (`from mosxdp import api`) counts as the submodule when
there is one, else as the package itself. `importlib.import_module("...")` and
`__import__("...")` with a literal name count too.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = frozenset(sys.stdlib_module_names)
PUBLIC = ("mosxdp", "mosxdp.constants", "mosxdp.types")


def module_name(path: Path) -> tuple[str, bool]:
    """(dotted name, is a package) of a source file under ROOT."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path, source: str | None = None):
    """(line, imported module) for every import in a file, anywhere in it."""
    source = path.read_text() if source is None else source
    name, is_pkg = module_name(path)
    package = name if is_pkg else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if alias.name != "*" and is_module(sub) else target
        elif isinstance(node, ast.Call) and node.args and \
                isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value


def within(target: str, *packages: str) -> bool:
    return any(target == p or target.startswith(p + ".") for p in packages)


def core_rule(target: str) -> str | None:
    if within(target, "mosxdp.core") or target.split(".")[0] in STDLIB or target == "cython" \
            or target.startswith(("cython.cimports.cpython.", "cython.cimports.libc.")):
        return None
    return "core imports only mosxdp.core, the standard library and cython"


def io_rule(target: str) -> str | None:
    if within(target, "mosxdp.core", "mosxdp.engine", "mosxdp.api", "mosxdp.facade",
              "mosxdp.demo") or target in PUBLIC:
        return "io imports nothing of core, engine, api, demo or the public face over them"
    return None


def engine_rule(target: str) -> str | None:
    if within(target, "mosxdp.api", "mosxdp.cli", "mosxdp.facade", "mosxdp.demo") or \
            target in PUBLIC:
        return "engine imports nothing of the public face or of demo"
    return None


# Modules that live under tests/ (the helpers a test imports by their bare name).
TEST_MODULES = frozenset(p.stem for p in (ROOT / "tests").rglob("*.py")) | {"tests"}


SESSION_LIBRARIES = ("httptools", "dns")


def sessions_rule(target: str) -> str | None:
    if within(target, "mosxdp.sessions", *SESSION_LIBRARIES) or target.split(".")[0] in STDLIB:
        return None
    return "sessions imports only mosxdp.sessions, httptools, dnspython and the standard library"


def scripts_rule(target: str) -> str | None:
    if target.split(".")[0] in TEST_MODULES:
        return "scripts import nothing from tests/"
    return None


def public_rule(target: str) -> str | None:
    if within(target, "mosxdp") and target not in PUBLIC:
        return f"apps and examples import of mosxdp only {', '.join(PUBLIC)}"
    return None


def apps_rule(target: str) -> str | None:
    if within(target, "mosxdp.apps"):
        return None
    return public_rule(target)


RULES = {
    "mosxdp/core": core_rule,
    "mosxdp/io": io_rule,
    "mosxdp/engine": engine_rule,
    "mosxdp/sessions": sessions_rule,
    "scripts": scripts_rule,
    "mosxdp/apps": apps_rule,
    "examples": public_rule,
}


def violations(folder: str, rule, files=None) -> list[str]:
    """``file:line: imports X (why)`` for each forbidden import under ``folder``;
    ``files``: {path: source} instead of the files on disk."""
    if files is None:
        files = {p: None for p in sorted((ROOT / folder).rglob("*.py"))}
    found = []
    for path, source in files.items():
        for line, target in sorted(imports(path, source)):
            why = rule(target)
            if why:
                found.append(f"{path.relative_to(ROOT)}:{line}: imports {target} ({why})")
    return found


@pytest.mark.parametrize("folder", list(RULES))
def test_imports_follow_the_layers(folder):
    assert (ROOT / folder).is_dir(), folder
    found = violations(folder, RULES[folder])
    assert not found, "forbidden imports:\n" + "\n".join(found)


# ------------------------------------------------------------------------------ the checker
def test_checker_sees_relative_local_and_dynamic_imports():
    path = ROOT / "mosxdp" / "io" / "example.py"
    source = ("import os\n"
              "from . import xsk\n"
              "def f():\n"
              "    from ..core import packet\n"
              "    from .. import engine\n"
              "    import importlib\n"
              "    return importlib.import_module('mosxdp.api')\n")
    assert violations("mosxdp/io", io_rule, {path: source}) == [
        "mosxdp/io/example.py:4: imports mosxdp.core.packet (" + io_rule("mosxdp.core") + ")",
        "mosxdp/io/example.py:5: imports mosxdp.engine (" + io_rule("mosxdp.engine") + ")",
        "mosxdp/io/example.py:7: imports mosxdp.api (" + io_rule("mosxdp.api") + ")",
    ]


def test_checker_resolves_names_from_packages():
    path = ROOT / "mosxdp" / "apps" / "example.py"
    source = ("from mosxdp import *\n"
              "from mosxdp import Monitor, mtcp_socket\n"
              "from mosxdp.constants import MOS_DROP\n"
              "from mosxdp import api\n"
              "from ..core.packet import parse_frame\n"
              "from ._common import monitor_socket\n")
    assert [v.split(" (")[0] for v in violations("mosxdp/apps", apps_rule, {path: source})] == [
        "mosxdp/apps/example.py:4: imports mosxdp.api",
        "mosxdp/apps/example.py:5: imports mosxdp.core.packet",
    ]


def test_core_may_use_only_the_standard_library():
    assert core_rule("collections.abc") is None and core_rule("mosxdp.core.tcp") is None
    assert core_rule("cython") is None   # pure-Python mode declarations
    assert core_rule("cython.cimports.cpython.bytes") is None   # the C API, compiled only
    assert core_rule("cython.cimports.libc.string") is None
    assert core_rule("cython.cimports.numpy")
    assert core_rule("mosxdp.constants") and core_rule("scapy.all") and core_rule("mosxdp")
