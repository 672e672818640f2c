"""mosxdp: the mOS monitoring stack in Python on eBPF/XDP.

`from mosxdp import *` gives the whole mOS API: the mtcp_* calls, the MOS_*
constants with their C values, and the C structures (PktInfo, TcpBufInfo,
TcpRingFragment) plus TcpState.

The names are loaded on first use (PEP 562): `import mosxdp.cli` imports the command
line's modules, not the whole API, so that a run's start-up is short and a split run
begins its plan while the rest is imported (engine/split_feed.py).
"""
import importlib

from .core import compiled  # noqa: F401  (first: MOSXDP_PURE_PYTHON=1 acts before the imports below)
from .lazy_exports import lazy_exports

_TYPES = ("DatagramFlowStats", "FlowStats", "MonitorFilter", "MtcpConf", "PktInfo", "SessionEvent",
          "TcpBufInfo", "TcpRingFragment", "Timeval", "monitor_filter", "timeval")
# In __all__ besides the API's calls and the constants' upper-case names.
_NAMED = ["TcpState", "MosEvent", "MosHook", "SocketType", "DatagramFlowStats", "FlowStats", "MonitorFilter",
          "MtcpConf", "PktInfo", "TcpBufInfo", "TcpRingFragment", "monitor_filter", "Timeval", "timeval",
          "SessionEvent"]
# The package's folders and modules, read as attributes (`mosxdp.engine`) without an import.
_PARTS = ("api", "apps", "cli", "config", "constants", "core", "demo", "engine", "facade", "io", "sessions",
          "types")
# Monitor: explicit import only, not in __all__ (`import *` stays the C API).
_structure_or_monitor, _structures_dir = lazy_exports(
    __name__, globals(), {".types": _TYPES, ".facade": ("Monitor",)})


def _module(name):
    # Not `from . import`: that asks this module's __getattr__ for the name first.
    return importlib.import_module(name, __name__)


def _constants():
    constants = _module(".constants")
    return {name: value for name, value in vars(constants).items() if not name.startswith("_")}


def _all():
    api = _module(".api")
    return list(api.__all__) + [name for name in sorted(_constants())
                                if name.isupper() or name.startswith(("MOS", "TCP_", "SOL_", "SO_", "TH_"))
                                ] + _NAMED


def __getattr__(name):
    if name in _PARTS:
        return _module("." + name)
    if name in _TYPES or name == "Monitor":
        return _structure_or_monitor(name)
    api = _module(".api")
    constants = _constants()
    if name == "__all__":
        value = _all()
    elif name in api.__all__:
        value = getattr(api, name)
    elif name in constants:
        value = constants[name]
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    api = _module(".api")
    return sorted(set(globals()) | set(api.__all__) | set(_constants()) | set(_structures_dir()))
