"""The observe-only engine's batch (mosxdp/engine/observe.py) over a ring buffer: the
records are views of the ring's memory, valid until their space goes back to the kernel,
which may write new copies there at once. Whatever the core keeps of a frame past the
batch (the flows' last packets, which CONN_NEW_DATA and CONN_END callbacks read) must be
a copy made before that."""
from __future__ import annotations

import socket
import struct

from flowcraft import Conv, api  # noqa: F401  (api: a fixture)

from mosxdp import (MOS_HK_RCV, MOS_ON_CONN_END, MOS_SOCK_MONITOR_STREAM,
                    mtcp_create_context, mtcp_register_callback, mtcp_socket)
from mosxdp.engine.hybrid import HybridProcessor
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
