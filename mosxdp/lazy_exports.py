"""A package's face loaded on first use (PEP 562): the package names what it exports and
from which of its modules, and a module is imported when one of its names is first read.
`import mosxdp.cli` then costs the command line's modules, not the whole API: a run's
start-up is shorter, and a split run can begin its plan while the rest is imported
(engine/split_feed.py)."""
from __future__ import annotations

import importlib


def lazy_exports(package: str, namespace: dict, exports: dict[str, tuple[str, ...]]):
    """``__getattr__`` and ``__dir__`` for the package ``package`` (its ``namespace``):
    ``exports`` maps each of its modules (relative, ``".stack"``) to the names it gives."""
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name):
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value       # read once: later reads are plain attributes
        return value

    def __dir__():
        return sorted(set(namespace) | set(module_of))

    return __getattr__, __dir__
