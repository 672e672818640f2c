"""The compiled hot path (setup.py, mosxdp/core/compiled.py): after scripts/setup.sh the hot
modules (HOT_MODULES: the core's and the loops of io and engine that feed it) are Cython
extension modules, MOSXDP_PURE_PYTHON=1 runs their .py
files, and both builds give the same outputs and counters on real captures."""
import importlib.machinery
import json
import os
import subprocess
import sys

import pytest

from mosxdp.core import compiled as _compiled
from mosxdp.core.events import exception_site
from mosxdp.core.reassembly import StreamBuffer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")


def _env(pure):
    env = dict(os.environ)
    env.pop("MOSXDP_PURE_PYTHON", None)
    if pure:
        env["MOSXDP_PURE_PYTHON"] = "1"
    return env


def _mosxdp(args, pure, cwd):
    return subprocess.run([sys.executable, "-m", "mosxdp.cli", *args], env=_env(pure), cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_setup_built_every_hot_module():
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    missing = [name for name in _compiled.HOT_MODULES
               if not os.path.isfile(os.path.join(ROOT, "mosxdp", *name.split(".")) + suffix)]
    assert missing == [], f"scripts/setup.sh built no extension module for {missing}"


def test_this_process_runs_the_build_its_environment_asks_for():
    state = _compiled.hot_path()
    if _compiled.PURE_PYTHON:
        assert state == {"build": "pure", "compiled": [], "pure": list(_compiled.HOT_MODULES)}
    else:
        assert state == {"build": "compiled", "compiled": list(_compiled.HOT_MODULES), "pure": []}


@pytest.mark.parametrize("pure", [False, True])
def test_version_names_the_build_in_use(pure, tmp_path):
    out = _mosxdp(["--version"], pure, tmp_path)
    assert out.returncode == 0, out.stderr
    if pure:
        assert out.stdout.endswith(": hot path pure Python (MOSXDP_PURE_PYTHON=1)\n")
    else:
        assert out.stdout.endswith(
            ": hot path compiled (Cython): " + ", ".join(_compiled.HOT_MODULES) + "\n")


# Captures with reordering, holes, overlaps that differ, sequence wrap, reuse of a 4-tuple,
# RST, midstream pickup, IPv6, UDP/ICMP, lost segments and duplicates.
CAPTURES = ["reorder", "holes", "overlap_diff", "seqwrap", "reuse", "rst_abort", "midstream",
            "ipv6", "datagrams", "lost", "dup", "halfclose", "concurrent"]


def _outputs(pure, workdir):
    """conn.log, flowdump's files and the --stats-json counters of every capture, run with
    one build."""
    os.makedirs(workdir)
    found = {}
    for name in CAPTURES:
        pcap = os.path.join(DATA, name + ".pcap")
        for app, argv in (("connlog", ["--output", f"{name}.conn.log"]),
                          ("flowdump", ["--outdir", f"{name}.flows"])):
            stats = f"{name}.{app}.json"
            out = _mosxdp(["run", app, *argv, "--pcap", pcap, "--stats-json", stats, "--no-progress"],
                          pure, workdir)
            assert out.returncode == 0, out.stderr
            counters = json.load(open(os.path.join(workdir, stats)))
            assert counters.pop("hot_path")["build"] == ("pure" if pure else "compiled")
            found[stats] = counters
    for base, _, files in os.walk(workdir):
        for file in files:
            if not file.endswith(".json"):
                path = os.path.join(base, file)
                found[os.path.relpath(path, workdir)] = open(path, "rb").read()
    return found


def test_compiled_and_pure_builds_write_the_same_outputs(tmp_path):
    compiled = _outputs(False, tmp_path / "compiled")
    pure = _outputs(True, tmp_path / "pure")
    assert sorted(compiled) == sorted(pure)
    assert sum(name.endswith(".conn.log") for name in compiled) == len(CAPTURES)
    assert sum(os.sep in name for name in compiled) > 2 * len(CAPTURES)   # flowdump's files
    for name in compiled:
        assert compiled[name] == pure[name], name


def _bad_call():
    return StreamBuffer("not a size")


def test_exception_site_names_the_caller_of_a_compiled_module(tmp_path, monkeypatch):
    # A compiled module's frames carry its source path relative to the project root: from
    # another directory they are still mosxdp's own, and the report names this file.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError) as info:
        _bad_call()
    assert exception_site(info.value) == f"{__file__}:{_bad_call.__code__.co_firstlineno + 1}"
