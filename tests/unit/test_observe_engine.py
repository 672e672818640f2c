"""The observe-only engine's batch (mosxdp/engine/observe.py) over a ring buffer: the
records are views of the ring's memory, valid until their space goes back to the kernel,
which may write new copies there at once. Whatever the core keeps of a frame past the
batch (the flows' last packets, which CONN_NEW_DATA and CONN_END callbacks read) must be
a copy made before that. And the live fast forward of stream-only flows through it."""
from __future__ import annotations

import socket
import struct

from flowcraft import Conv, api, reinit  # noqa: F401  (api: a fixture)

from mosxdp import (MOS_HK_RCV, MOS_NULL, MOS_ON_CONN_END, MOS_ON_CONN_NEW_DATA,
                    MOS_SOCK_MONITOR_STREAM, MOSX_FLOW_STATS, MOSX_STREAM_ONLY, SOL_MONSOCKET,
                    mtcp_create_context, mtcp_getsockopt, mtcp_peek, mtcp_register_callback,
                    mtcp_setsockopt, mtcp_socket)
from mosxdp.engine.hybrid import HybridProcessor
from mosxdp.engine.kernel_twin import FastForwardProcessor
from mosxdp.engine.observe import ObserveEngine

_HEAD = struct.Struct("<QIII4x")    # struct mx_observed: ts_ns, slot, frame_len, cap


class ReusedRing:
    """A ring whose released space the producer overwrites at once."""

    def __init__(self, frames):
        self.data = bytearray()
        self.spans = []
        for ts_us, frame in frames:
            start = len(self.data)
            self.data += _HEAD.pack(ts_us * 1000, 0, len(frame), len(frame)) + frame
            self.spans.append((start, len(self.data)))
        self.view = memoryview(self.data)

    def take(self, max_records):
        taken, self.spans = self.spans[:max_records], self.spans[max_records:]
        self._taken = taken
        return [self.view[a:b] for a, b in taken]

    def release(self):
        for a, b in self._taken:
            self.data[a:b] = b"\xee" * (b - a)


def test_last_packets_are_copied_before_the_ring_space_goes_back(api):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, lambda *a: None)
    c = Conv()
    c.handshake()
    c.data("c", b"GET / HTTP/1.0\r\n\r\n")
    c.data("s", b"HTTP/1.0 200 OK\r\n\r\nhello")
    frames = {bytes(f) for _, f in c.frames}
    engine = ObserveEngine("lo", processor=HybridProcessor(mctx.stack), batch_size=64)
    engine.ring = ReusedRing(c.frames)
    assert engine._batch() == len(c.frames)
    (flow,) = mctx.stack.lru
    for side in flow.sides:
        assert type(side.last_pkt.buf) is bytes and bytes(side.last_pkt.buf) in frames


def _observe_stream_only(frames, fast_forward):
    """A stream-only listener through the observe engine's batches: the bytes read at each
    CONN_NEW_DATA per side, the packet counts at the flow's end, the processor."""
    reinit()
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_STREAM_ONLY, 1)
    got = {0: [], 1: []}
    buf = bytearray(1 << 16)
    counts = []

    def on_data(mctx, s, side, event, arg):
        got[side].append(bytes(buf[:mtcp_peek(mctx, s, side, buf, len(buf))]))

    def on_end(mctx, s, side, event, arg):
        st = mtcp_getsockopt(mctx, s, SOL_MONSOCKET, MOSX_FLOW_STATS)
        counts.append((tuple(st.pkts), tuple(st.ip_bytes), st.history))

    mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, on_end)
    proc = FastForwardProcessor(mctx.stack, fast_forward=fast_forward)
    engine = ObserveEngine("lo", processor=proc, batch_size=4)
    engine.ring = ReusedRing(frames)
    while engine._batch():
        pass
    proc.finish()
    return got, counts, proc


def test_stream_only_flows_are_fast_forwarded_with_their_bytes(api):
    """A MOSX_STREAM_ONLY listener's flow (flowdump's): once its entry is in place (the
    end of the batch of its first frame), its in-order frames are taken before the core
    and their payload delivered; what CONN_NEW_DATA reads, batch by batch, and the counts
    and history at the flow's end are those of every frame through the core."""
    c = Conv()
    c.handshake()
    for n in range(12):
        c.data("c", b"q%02d" % n)
        c.data("s", b"r%02d" % n * 100)
    c.close()
    got, counts, proc = _observe_stream_only(c.frames, True)
    assert proc.kernel["fast_forwarded"] > 15
    assert b"".join(got[1]) == b"".join(b"q%02d" % n for n in range(12))   # to the server
    assert b"".join(got[0]) == b"".join(b"r%02d" % n * 100 for n in range(12))
    assert counts[0][0] == (16, 14)
    full_got, full_counts, full = _observe_stream_only(c.frames, False)
    assert full.kernel["fast_forwarded"] == 0
    assert (got, counts) == (full_got, full_counts)
