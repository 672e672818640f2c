"""Fast forward (engine/kernel_twin.py): offline, the regular frames of a state-only or
stream-only flow are counted by the twin (a stream-only flow's payload appended to its
stream) and the emulation is brought up to date before each other frame. Whatever the
traffic (loss, reordering, duplicates, retransmissions, small and zero windows, window
scaling, acknowledgments of bytes never seen, resets, flows left open), connlog's lines and
flowdump's files are those of --full-inspection, where every frame goes through the core."""
from __future__ import annotations

from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosxdp import cli
from mosxdp.core import flow as flow_module
from mosxdp.engine import kernel_twin
from mosxdp.io.pcap import PcapWriter

from flowcraft import Conv

DATA = Path(__file__).resolve().parents[1] / "data"

STEP = st.tuples(st.sampled_from(["c", "s"]),                 # who sends
                 st.sampled_from(["data", "data", "data", "ack", "ack_ahead", "keepalive"]),
                 st.integers(1, 1400),                        # payload size
                 st.sampled_from([None, None, 0, 1, 200, 3000]))   # window field
PERTURB = st.lists(st.tuples(st.sampled_from(["drop", "dup", "swap"]), st.integers(0, 200)),
                   max_size=4)


def conversation(wscales, steps, ending, cport):
    c = Conv(cport=cport, isn_c=0xFFFFF000 + cport, isn_s=7 * cport)
    c.handshake(*wscales)
    for frm, kind, size, window in steps:
        kw = {} if window is None else {"window": window}
        if kind == "data":
            c.data(frm, bytes([cport & 0xFF]) * size, **kw)
        elif kind == "ack":
            c.ack(frm, **kw)
        elif kind == "ack_ahead":      # acknowledges bytes the capture never had
            c.ack(frm, ack=(c.nxt["s" if frm == "c" else "c"] + size) & 0xFFFFFFFF, **kw)
        else:                          # a keepalive: one byte below the next
            c.seg(frm, "A", b"k", seq=(c.nxt[frm] - 1) & 0xFFFFFFFF, advance=False)
    if ending == "close":
        c.close()
    elif ending == "rst":
        c.rst("s")
    return c.frames


def perturbed(frames, perturb):
    head, rest = frames[:3], list(frames[3:])
    for kind, at in perturb:
        if not rest:
            break
        i = at % len(rest)
        if kind == "drop":
            del rest[i]
        elif kind == "dup":
            rest.insert(i, rest[i])
        elif i + 1 < len(rest):
            rest[i], rest[i + 1] = rest[i + 1], rest[i]
    return head + rest


def _connlog(pcap, out, *extra):
    assert cli.main(["run", "connlog", "--output", str(out), "--pcap", str(pcap),
                     "--no-progress", *extra]) == 0
    return out.read_text()


# A stream-only app that logs what each CONN_NEW_DATA reads and the flow's counters then,
# and each flow's conn.log record at its end: every stream byte and count must match.
STREAM_APP = """
import json
import socket

from mosxdp import *


def add_arguments(parser):
    parser.add_argument("--output")


def setup(mctx, args):
    out = open(args.output, "w")
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_STREAM_ONLY, 1)
    buf = bytearray(1 << 16)

    def on_data(mctx, s, side, event, arg):
        try:
            n = mtcp_peek(mctx, s, side, buf, len(buf))
        except PeekOverrunError as exc:
            n = -exc.lost
        st = mtcp_getsockopt(mctx, s, SOL_MONSOCKET, MOSX_FLOW_STATS)
        out.write(json.dumps([s, side, n, bytes(buf[:max(n, 0)]).hex(), list(st.pkts),
                              list(st.ip_bytes), list(st.stream_bytes), list(st.missed_bytes),
                              st.history]) + "\\n")

    def on_end(mctx, s, side, event, arg):
        if side == MOS_SIDE_CLI:
            out.write(json.dumps(mosx_conn_record(mctx, s)) + "\\n")

    mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, on_end)
    return out


def teardown(out):
    out.close()
"""


def _stream_app(pcap, app, out, *extra):
    assert cli.main(["run", str(app), "--output", str(out), "--pcap", str(pcap),
                     "--no-progress", *extra]) == 0
    return out.read_text()


def _flowdump(pcap, out, *extra):
    """flowdump's files: {name: bytes}."""
    assert cli.main(["run", "flowdump", "--outdir", str(out), "--pcap", str(pcap),
                     "--no-progress", *extra]) == 0
    return {p.name: p.read_bytes() for p in out.iterdir()}


FLOW = st.tuples(st.tuples(st.sampled_from([None, 0, 2, 7, 14]), st.sampled_from([None, 0, 3, 9])),
                 st.lists(STEP, min_size=1, max_size=14), PERTURB,
                 st.sampled_from(["close", "rst", "open"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(FLOW, min_size=1, max_size=3),
       st.sampled_from([1, 2, 5, flow_module.FF_AFTER_FRAMES]))
def test_connlog_lines_and_flowdump_files_equal_those_of_full_inspection(tmp_path_factory,
                                                                         flows, after):
    """``after``: the frames the core processes before the fast forward begins (the
    default's, and earlier ones, which the conversations here are long enough to leave)."""
    with mock.patch.object(flow_module, "FF_AFTER_FRAMES", after):
        _equal_to_full_inspection(tmp_path_factory.mktemp("ff"), flows)


def _equal_to_full_inspection(tmp, flows):
    frames = []
    for n, (wscales, steps, perturb, ending) in enumerate(flows):
        frames += perturbed(conversation(wscales, steps, ending, 40000 + n), perturb)
    frames.sort(key=lambda item: item[0])      # the flows interleaved by time
    pcap = tmp / "in.pcap"
    with PcapWriter(pcap) as writer:
        for ts, frame in frames:
            writer.write(ts, frame)
    fast = _connlog(pcap, tmp / "fast.log")
    full = _connlog(pcap, tmp / "full.log", "--full-inspection")
    assert fast == full
    assert _flowdump(pcap, tmp / "fast") == _flowdump(pcap, tmp / "full", "--full-inspection")
    app = tmp / "stream_app.py"
    app.write_text(STREAM_APP)
    assert _stream_app(pcap, app, tmp / "fast.txt") == \
        _stream_app(pcap, app, tmp / "full.txt", "--full-inspection")


def test_regular_frames_are_fast_forwarded(tmp_path, monkeypatch):
    """The equality above is not the twin standing aside: in a plain conversation the
    frames between the core's first FF_AFTER_FRAMES (its handshake and first segments) and
    the FINs are taken."""
    taken = []
    catch_up = kernel_twin.TwinProcessor._ff_catch_up

    def counted(self, flow):
        rec = kernel_twin.TwinRecord.from_buffer(flow.ff_record)
        taken.append(tuple(rec.packets))
        return catch_up(self, flow)

    monkeypatch.setattr(kernel_twin.TwinProcessor, "_ff_catch_up", counted)
    c = Conv()
    c.handshake(7, 7)
    for _ in range(10):
        c.data("c", b"q" * 100)
        c.data("s", b"r" * 1000)
    c.close()
    pcap = tmp_path / "in.pcap"
    with PcapWriter(pcap) as writer:
        for ts, frame in c.frames:
            writer.write(ts, frame)
    fast = _connlog(pcap, tmp_path / "fast.log")
    # the 20 data frames but those among the first FF_AFTER_FRAMES (3 handshake frames)
    assert sum(map(sum, taken)) == 20 - (flow_module.FF_AFTER_FRAMES - 3)
    assert fast == _connlog(pcap, tmp_path / "full.log", "--full-inspection")
    assert '"orig_pkts": 14' in fast and '"resp_bytes": 10000' in fast


def test_a_short_flow_is_not_fast_forwarded(tmp_path, monkeypatch):
    """A flow of fewer frames than FF_AFTER_FRAMES never gets an entry: every frame of it
    goes through the core, which is cheaper than the entry for so few."""
    installed = []
    install = kernel_twin.TwinProcessor._ff_install
    monkeypatch.setattr(kernel_twin.TwinProcessor, "_ff_install",
                        lambda self, flow: installed.append(flow) or install(self, flow))
    frames = []
    for n, rounds in enumerate((1, 10)):       # a short flow (left open), then a long one
        c = Conv(cport=41000 + n, t0=1_000_000 + 500 * n)
        c.handshake(7, 7)
        for _ in range(rounds):
            c.data("c", b"q" * 100)
            c.data("s", b"r" * 1000)
        if n:
            c.close()
        else:
            assert len(c.frames) < flow_module.FF_AFTER_FRAMES
        frames += c.frames
    pcap = tmp_path / "in.pcap"
    with PcapWriter(pcap) as writer:
        for ts, frame in sorted(frames, key=lambda item: item[0]):
            writer.write(ts, frame)
    fast = _connlog(pcap, tmp_path / "fast.log")
    assert [f.ports_tcp[0] for f in installed] == [41001]
    assert fast == _connlog(pcap, tmp_path / "full.log", "--full-inspection")


def _offline(app_name, argv, capture, check_batch=None):
    """Run an app in process on a capture; ``check_batch(stack)`` after each batch's end.
    Returns the engine."""
    import argparse

    from mosxdp import api
    from mosxdp.cli import load_app
    from mosxdp.engine import OfflineEngine
    from mosxdp.io.pcap import PcapReader

    api.mtcp_destroy()
    api.mtcp_init(None)
    mctx = api.mtcp_create_context(0)
    module = load_app(app_name)
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    app = module.setup(mctx, parser.parse_args(argv))
    with PcapReader(capture) as reader:
        engine = OfflineEngine(mctx, reader, None, batch_size=8)
        if check_batch is not None:
            end_batch = engine.stack.end_batch

            def checked():
                end_batch()
                check_batch(engine.stack)
            engine.stack.end_batch = checked
        engine.run()
    module.teardown(app)
    api.mtcp_destroy()
    return engine


def test_nothing_of_a_flow_is_kept_after_its_end(tmp_path):
    """The twin lets go of every fast-forwarded flow at its end (its entry, its key: the
    flow and its buffers are freed), and each batch's end copies the frames of the last
    packets the core kept, also of flows the twin took frames of since (a view would keep
    the reader's whole chunk alive)."""
    def views_copied(stack):
        for flow in stack.lru:
            for side in flow.sides:
                assert side.last_pkt is None or type(side.last_pkt.buf) is bytes

    for app, argv, capture in (
            ("flowdump", ["--outdir", str(tmp_path / "flows")], DATA / "concurrent.pcap"),
            ("connlog", ["--output", str(tmp_path / "conn.log")], DATA / "concurrent.pcap"),
            ("connlog", ["--output", str(tmp_path / "conn2.log")], DATA / "http_sizes.pcap")):
        twin = _offline(app, argv, capture, views_copied).twin
        assert twin.kernel["fast_forwarded"] > 100, app
        assert not twin.table and not twin._ff and not twin._keys, app
