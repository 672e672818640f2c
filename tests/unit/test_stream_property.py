"""Property test of the bytes an app gets through the public API.

Hypothesis draws a client-to-server stream, cuts it into segments, and plays a connection
as a capture at the client would show it: the client sends up to the server's window
edge, the server acknowledges what it got one round later, and the capture shows some
data segments out of order (shuffled within groups of 3, so some come before the ACK that
opened the window for them, though never after the ACK of their own bytes), some not at
all (holes: the server got them, its ACKs cover them), some twice (retransmissions) and
some extra segments over bytes already sent (overlaps, with the sender's bytes). Sequence
numbers may wrap; receive buffers may be far smaller than the stream, under both overlap
policies.

An app reads with mtcp_peek on every MOS_ON_CONN_NEW_DATA and at MOS_ON_CONN_END, as
flowdump does. The invariants: every byte read equals the sender's byte at its offset,
and peek gives every byte of the stream in order or counts it in an ENODATA. With a
buffer that has room for the stream, nothing the server acknowledged is lost: the bytes
read are the sender's bytes minus the holes, peek's ENODATA reports exactly the holes
(flagged as holes, at their offsets), conn.log's missed_bytes (MOSX_FLOW_STATS) counts
exactly them too, MOS_FRAGINFO shows them as gaps and mtcp_ppeek gives ENODATA in them.
With a small buffer, missed_bytes counts at least the holes and at most the bytes the app
did not get (the app reads as soon as data is new, so what it loses beyond the holes is
what the monitor could not hold).
"""
import bisect
import errno
import random
import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowcraft import api  # noqa: F401  (a fixture)
from mosxdp import *  # noqa: F401,F403  (the public API only)
from mosxdp.core.frames import build_tcp_frame
from mosxdp.engine import run_frames

MAC_C, MAC_S = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
IP_C, IP_S = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
PORT_C, PORT_S = 40000, 80
SYN, FIN, PSH, ACK = 0x02, 0x01, 0x08, 0x10
MASK = 0xFFFFFFFF


def c2s(seq, ack, flags, window, payload=b""):
    return build_tcp_frame(MAC_S, MAC_C, IP_C, IP_S, PORT_C, PORT_S, seq & MASK, ack & MASK,
                           flags, window, payload)


def s2c(seq, ack, flags, window, payload=b""):
    return build_tcp_frame(MAC_C, MAC_S, IP_S, IP_C, PORT_S, PORT_C, seq & MASK, ack & MASK,
                           flags, window, payload)


@st.composite
def captures(draw):
    """(frames, stream, 1 per lost byte) of one upload as a capture at the client shows it;
    a byte is lost when no captured segment carries it before an ACK of the server passes it."""
    size = draw(st.integers(1, 3000))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    rnd = random.Random(seed)
    stream = rnd.randbytes(size)
    isn_c = draw(st.one_of(st.integers(0, MASK), st.integers(MASK - 3000, MASK)))
    isn_s = draw(st.integers(0, MASK))
    window = draw(st.integers(1, 2000))
    longest = draw(st.integers(1, 400))
    cuts, at = [], 0
    while at < size:
        n = min(rnd.randint(1, longest), size - at)
        cuts.append((at, at + n))
        at += n
    # What the client sent and when the server's ACKs came back, as the client saw it.
    timeline = [("syn", c2s(isn_c, 0, SYN, 65535)),
                ("syn", s2c(isn_s, isn_c + 1, SYN | ACK, window)),
                ("syn", c2s(isn_c + 1, isn_s + 1, ACK, 65535))]
    acked, index = 0, 0
    while index < len(cuts):
        sent = acked
        while index < len(cuts) and cuts[index][1] <= acked + window:
            start, end = cuts[index]
            timeline.append(("data", (start, end)))
            sent = end
            index += 1
        if sent == acked:                      # a segment larger than the window:
            timeline.append(("data", cuts[index]))   # the server takes it in parts
            sent = cuts[index][1]
            index += 1
        acked = sent
        timeline.append(("ack", (acked, s2c(isn_s + 1, isn_c + 1 + acked, ACK,
                                            max(window - rnd.choice((0, 0, 1, 7)), 1)))))
    slots = [i for i, (kind, _) in enumerate(timeline) if kind == "data"]
    group = draw(st.sampled_from((1, 2, 3)))
    for first in range(0, len(slots), group):
        chosen = slots[first:first + group]
        moved = [timeline[i] for i in chosen]
        rnd.shuffle(moved)
        for i, item in zip(chosen, moved):
            timeline[i] = item
    timeline = acks_after_their_bytes(timeline)
    # 1 where a captured segment carries the byte before an ACK of the server passed it
    # (once passed, a byte not seen is lost: a later copy comes too late).
    seen = bytearray(size)
    acked = 0
    frames = []

    def carry(lo, hi):
        lo = max(lo, acked)
        seen[lo:hi] = b"\1" * max(0, hi - lo)

    for kind, item in timeline:
        if kind == "syn":
            frames.append(item)
            continue
        if kind == "ack":
            acked = max(acked, item[0])
            frames.append(item[1])
            continue
        start, end = item
        if len(cuts) > 1 and rnd.random() < draw_p(draw, "hole"):
            continue
        frames.append(c2s(isn_c + 1 + start, isn_s + 1, ACK | PSH, 65535, stream[start:end]))
        carry(start, end)
        if rnd.random() < draw_p(draw, "again"):
            # A retransmission, or a segment over bytes already sent: the sender's bytes.
            lo = rnd.randint(0, end - 1)
            hi = rnd.randint(lo + 1, end)
            frames.append(c2s(isn_c + 1 + lo, isn_s + 1, ACK | PSH, 65535, stream[lo:hi]))
            carry(lo, hi)
    frames += [c2s(isn_c + 1 + size, isn_s + 1, ACK | FIN, 65535),
               s2c(isn_s + 1, isn_c + 2 + size, ACK | FIN, window),
               c2s(isn_c + 2 + size, isn_s + 2, ACK, 65535)]
    return frames, stream, bytes(1 - b for b in seen)


def acks_after_their_bytes(timeline):
    """The timeline with each of the server's ACKs moved after every data segment whose
    bytes it acknowledges (a capture at the client sees a segment leave before the ACK of
    it comes back), the ACKs in their order; a segment may still come before the ACK that
    opened the window for it."""
    placed = []                  # (sort key, index, entry)
    data = sorted((item[1], i) for i, (kind, item) in enumerate(timeline) if kind == "data")
    last_covered = []            # last_covered[k]: highest index of data[:k + 1]
    for _, i in data:
        last_covered.append(max(i, last_covered[-1]) if last_covered else i)
    floor = -1.0
    for i, (kind, item) in enumerate(timeline):
        key = float(i)
        if kind == "ack":
            covered = bisect.bisect_right(data, (item[0], len(timeline)))
            if covered:
                key = max(key, last_covered[covered - 1] + 0.5)
            key = floor = max(key, floor)
        placed.append((key, i, (kind, item)))
    return [entry for _, _, entry in sorted(placed)]


def draw_p(draw, what):
    return draw(st.sampled_from((0.0, 0.05, 0.3)), label=what)


class Reader:
    """An app reading the server's side (client-to-server bytes) as flowdump does."""

    def __init__(self, mctx, sock):
        self.got = {}             # stream offset -> byte read there
        self.cursor = 0           # stream offset of the next byte mtcp_peek gives
        self.in_order = 0         # bytes mtcp_peek gave
        self.enodata = 0          # bytes PeekOverrunError said were lost
        self.holes = set()        # offsets PeekOverrunError reported as a hole
        self.missed = None        # conn.log's missed_bytes of the client's stream
        self.fragments = None     # MOS_FRAGINFO_SVRBUF at MOS_ON_CONN_END
        self.ppeek_in_holes = []  # (offset, errno) of mtcp_ppeek at each hole's start
        self.buf = bytearray(700)
        mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, self.drain)
        mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, self.end)

    def keep(self, offset, count):
        for i in range(count):
            assert self.got.setdefault(offset + i, self.buf[i]) == self.buf[i], offset + i

    def drain(self, mctx, sock, side, event, arg):
        if side != MOS_SIDE_SVR:
            return
        while True:
            try:
                count = mtcp_peek(mctx, sock, side, self.buf)
            except PeekOverrunError as exc:
                assert exc.errno == errno.ENODATA
                if exc.hole:
                    self.holes.update(range(self.cursor, self.cursor + exc.lost))
                self.enodata += exc.lost
                self.cursor += exc.lost
                continue
            if not count:
                return
            self.keep(self.cursor, count)
            self.cursor += count
            self.in_order += count

    def end(self, mctx, sock, side, event, arg):
        if side != MOS_SIDE_SVR:
            return
        self.drain(mctx, sock, side, event, arg)
        self.fragments = [(f.offset, f.len) for f in
                          mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_FRAGINFO_SVRBUF)]
        for offset, length in self.fragments:
            position = offset
            while position < offset + length:
                count = mtcp_ppeek(mctx, sock, side, self.buf, len(self.buf), position)
                self.keep(position, count)
                position += count
        for offset in sorted(self.holes):
            if offset - 1 not in self.holes:
                try:
                    mtcp_ppeek(mctx, sock, side, self.buf, len(self.buf), offset)
                    self.ppeek_in_holes.append((offset, 0))
                except OSError as exc:
                    self.ppeek_in_holes.append((offset, exc.errno))
        stats = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOSX_FLOW_STATS)
        self.missed = stats.missed_bytes[MOS_SIDE_CLI]


def play(frames, bufsize, policy):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVRBUF, bufsize)
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVROVERLAP, policy)
    reader = Reader(mctx, sock)
    run_frames(mctx, [(1_000_000 + 10 * i, frame) for i, frame in enumerate(frames)], 1)
    mtcp_destroy_context(mctx)
    return reader


POLICIES = st.sampled_from((MOS_OVERLAP_POLICY_FIRST, MOS_OVERLAP_POLICY_LAST))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(capture=captures(), policy=POLICIES)
def test_a_buffer_with_room_loses_only_the_holes(api, capture, policy):
    frames, stream, missing = capture
    reader = play(frames, len(stream) + 1, policy)
    assert reader.missed is not None, "no MOS_ON_CONN_END"
    for offset, value in reader.got.items():
        assert value == stream[offset], f"byte {offset} differs from the sender's"
    holes = {offset for offset in range(len(stream)) if missing[offset]}
    # Delivered in order: the sender's bytes minus the holes; each hole reported once,
    # as a hole, by ENODATA; conn.log counts the same bytes.
    assert reader.cursor == len(stream)
    assert set(reader.got) == set(range(len(stream))) - holes
    assert reader.in_order == len(stream) - len(holes)
    assert reader.holes == holes
    assert reader.enodata == len(holes) == reader.missed
    # MOS_FRAGINFO shows the holes as gaps; mtcp_ppeek says ENODATA in them.
    held = {offset + i for offset, length in reader.fragments for i in range(length)}
    assert held == set(range(len(stream))) - holes
    assert all(err == errno.ENODATA for _, err in reader.ppeek_in_holes)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(capture=captures(), policy=POLICIES, bufsize=st.integers(1, 1500))
def test_a_small_buffer_gives_only_the_senders_bytes(api, capture, policy, bufsize):
    frames, stream, missing = capture
    reader = play(frames, bufsize, policy)
    assert reader.missed is not None, "no MOS_ON_CONN_END"
    for offset, value in reader.got.items():
        assert value == stream[offset], f"byte {offset} differs from the sender's"
    # Peek gives every byte in order or counts it lost (ENODATA), never skips one
    # silently, up to the stream's end.
    assert reader.cursor == reader.in_order + reader.enodata == len(stream)
    # conn.log counts every byte no segment carried, and only bytes the app did not get.
    assert sum(missing) <= reader.missed <= reader.enodata
    assert reader.holes <= {offset for offset in range(len(stream)) if missing[offset]}
