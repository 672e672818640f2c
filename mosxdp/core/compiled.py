"""The compiled hot path and its plain-Python twin.

setup.py (run by `pip install -e .`, i.e. scripts/setup.sh) compiles HOT_MODULES with Cython,
as they are (pure-Python mode), into extension modules next to their .py files; Python's
import system prefers an extension module to a .py file of the same name. With
MOSXDP_PURE_PYTHON=1 (any value but "" and "0") a finder placed ahead of the standard ones
loads mosxdp's modules from their .py files instead, so the same source runs interpreted
(the suite runs both ways). A missing extension module is the same as pure Python for it.

No imports of mosxdp here: setup.py reads HOT_MODULES from this file alone, and
mosxdp/core/__init__.py imports it before any hot module.
"""
import importlib.machinery
import os
import sys

# The modules every frame passes through, under mosxdp: the core's, and the loops that feed
# it (the pcap readers, the offline, split and live loops, the AF_XDP rings, the observe
# ring buffer); and those every flow's end passes through in the usual apps (conn.log's
# record: its uid, Community ID and counters; the socket calls).
HOT_MODULES = ("core.packet", "core.frames", "core.reassembly", "core.streams", "core.tcp",
               "core.flow", "core.stack_state", "core.stack", "core.events", "core.sockets",
               "core.datagrams", "core.checksum", "io.pcap", "io.pcapng", "io.xsk_rings", "io.ringbuf",
               "engine.offline", "engine.split_feed", "engine.split_worker", "engine.live",
               "engine.live_frames", "engine.observe", "engine.fast_forward",
               "core.zeekconn", "core.communityid", "api.records", "api.sockets", "api.streams")

PURE_PYTHON = os.environ.get("MOSXDP_PURE_PYTHON", "") not in ("", "0")


class SourceFirstFinder:
    """A meta path finder for mosxdp.* modules: the .py file when there is one."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if path is None or not name.startswith("mosxdp."):
            return None
        import importlib.util      # here: it costs every process's start-up milliseconds
        leaf = name.rpartition(".")[2]
        for entry in path:
            source = os.path.join(entry, leaf + ".py")
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(name, source)
        return None   # a package (its __init__.py) or nothing: the standard finders


def is_compiled(module):
    """True if ``module`` was loaded from an extension module (not from Python source)."""
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)


def hot_path():
    """Which build of the hot modules runs: {"build": "compiled" | "pure" | "partial",
    "compiled": [names], "pure": [names]} (imports them)."""
    compiled, pure = [], []
    for name in HOT_MODULES:
        module = importlib.import_module(f"mosxdp.{name}")
        (compiled if is_compiled(module) else pure).append(name)
    build = "compiled" if not pure else "pure" if not compiled else "partial"
    return {"build": build, "compiled": compiled, "pure": pure}


def describe():
    """One line: which build of the hot path runs, for `mosxdp --version`."""
    state = hot_path()
    if state["build"] == "compiled":
        return f"hot path compiled (Cython): {', '.join(state['compiled'])}"
    why = "MOSXDP_PURE_PYTHON=1" if PURE_PYTHON else "no compiled modules: run scripts/setup.sh"
    if state["build"] == "pure":
        return f"hot path pure Python ({why})"
    return (f"hot path partly compiled (Cython): {', '.join(state['compiled'])}; "
            f"pure Python: {', '.join(state['pure'])}")


if PURE_PYTHON and SourceFirstFinder not in sys.meta_path:
    sys.meta_path.insert(0, SourceFirstFinder)
