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


def _pure_packet_module():
    """mosxdp/core/packet.py run as Python source whatever the build (a module of its own)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "mosxdp.core._packet_source", os.path.join(ROOT, "mosxdp", "core", "packet.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_PACKET_FIELDS = ("frame_len", "vlan_ids", "l3_off", "ip_version", "ip_proto", "src", "dst",
                  "ip_len", "is_fragment", "l4_off", "sport", "dport", "seq", "ack", "flags",
                  "window", "urgent", "tcp_hdr_len", "payload_off", "payload_len", "mss",
                  "wscale", "sack_ok", "ts_val", "ts_ecr", "bad_options")


def _parsed(module, frame):
    try:
        pkt = module.parse_frame(memoryview(bytearray(frame)))
    except module.PacketError as exc:
        return ("error", type(exc).__name__, exc.counter, str(exc))
    return tuple(getattr(pkt, name) for name in _PACKET_FIELDS) + (bytes(pkt.payload),)


def test_parse_frame_gives_the_packet_its_source_gives():
    """The compiled parse_frame (its fast path for TCP in untagged IPv4 included) and the
    Python source: the same fields, or the same error, for every frame of the captures and
    for each of them cut and with a byte changed in its headers."""
    from mosxdp.core import packet as built
    from mosxdp.io.pcap import PcapReader
    source = _pure_packet_module()
    frames = []
    for name in sorted(os.listdir(DATA)):
        if name.endswith(".pcap"):
            with PcapReader(os.path.join(DATA, name)) as reader:
                frames.extend(bytes(frame) for _, frame in reader)
    rng = __import__("random").Random(11)
    mutated = []
    for frame in rng.sample(frames, min(len(frames), 3000)):
        cut = bytearray(frame[:rng.randrange(len(frame) + 1)])
        mutated.append(bytes(cut))
        changed = bytearray(frame)
        at = rng.randrange(min(len(changed), 70))
        changed[at] = rng.randrange(256)
        mutated.append(bytes(changed))
    fast = 0
    for frame in frames + mutated:
        assert _parsed(built, frame) == _parsed(source, frame), frame.hex()
        fast += frame[12:15] == b"\x08\x00\x45" and len(frame) >= 54 and frame[23] == 6
    assert fast > len(frames) // 2      # the fast path's frames are most of them
