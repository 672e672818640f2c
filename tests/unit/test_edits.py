"""Size-changing payload edits (MOS_CHOMP, MOS_INSERT) and the sequence remapping behind
them, on the sans-IO core (mosxdp/core/edits.py) and through the public API.

The core tests play a sender whose segments the "app" edits (FrameEdit) and a receiver
that assembles the frames that leave (`leave`) by their sequence numbers. The receiver's
stream must be exactly the segments' edited payloads one after the other; a
retransmission, cut anywhere, must bring the same bytes at the same place; the receiver's
ACK and SACK edges must map back to the sender's numbering without claiming a byte whose
edited form the receiver lacks.

The API tests run the stack as inline mode does (ACKs toward an edited side come from a
receiver that got the edited stream) with a simulated client that acknowledges what it
received, including SACK blocks and a lost segment; offline, frames written with --write
carry the edits.
"""
import errno
import random
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowcraft import api  # noqa: F401  (a fixture)
from mosxdp import *  # noqa: F401,F403  (the public API only, for the API tests)
from mosxdp.core.edits import EditError, FrameEdit, StreamEdits, leave, payload_limit, unmap_acks
from mosxdp.core.frames import build_tcp_frame
from mosxdp.core.checksum import verify_tcp_checksum
from mosxdp.core.packet import parse_frame
from mosxdp.core.tcp import seq_delta
from mosxdp.engine.group import GroupContext
from mosxdp.engine.offline import OfflineEngine

MAC_C, MAC_S = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
IP_C, IP_S = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
PORT_C, PORT_S = 40000, 80
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MASK = 0xFFFFFFFF


# ------------------------------------------------------------------ core helpers
def server_segment(seq, payload, flags=PSH | ACK, ack=1):
    """A parsed, writable server-to-client segment."""
    frame = build_tcp_frame(MAC_S, MAC_C, IP_S, IP_C, PORT_S, PORT_C, seq & MASK, ack, flags,
                            65535, payload)
    return parse_frame(memoryview(frame))


def sack_option(blocks):
    opt = bytes([1, 1, 5, 2 + 8 * len(blocks)])
    for left, right in blocks:
        opt += (left & MASK).to_bytes(4, "big") + (right & MASK).to_bytes(4, "big")
    return opt


def client_ack(ack, sack=(), bad_checksum=False):
    frame = build_tcp_frame(MAC_C, MAC_S, IP_C, IP_S, PORT_C, PORT_S, 1, ack & MASK, ACK,
                            65535, options=sack_option(sack) if sack else b"")
    if bad_checksum:
        frame[14 + 20 + 16] ^= 0x55
    return parse_frame(memoryview(frame))


def sack_blocks(pkt):
    """The SACK blocks of a parsed segment, as scapy reads its options."""
    from scapy.layers.inet import TCP
    for name, value in TCP(bytes(pkt.buf[pkt.l4_off:pkt.payload_off])).options:
        if name == "SAck":
            return [(value[i], value[i + 1]) for i in range(0, len(value), 2)]
    return []


class WireReceiver:
    """The receiving end in the core tests: bytes by wire offset from `seq0`; every byte
    written twice must be the same."""

    def __init__(self, seq0):
        self.seq0 = seq0
        self.bytes = {}

    def take(self, frame):
        pkt = parse_frame(memoryview(bytearray(frame)))
        assert verify_tcp_checksum(pkt), "a frame left with a bad TCP checksum"
        off = seq_delta(pkt.seq, self.seq0)
        for i, value in enumerate(bytes(pkt.payload)):
            old = self.bytes.setdefault(off + i, value)
            assert old == value, f"wire offset {off + i} got {value!r} after {old!r}"
        return off, bytes(pkt.payload), pkt

    def stream(self):
        size = len(self.bytes)
        assert sorted(self.bytes) == list(range(size)), "the receiver's stream has holes"
        return bytes(self.bytes[i] for i in range(size))


def send(edits, seq, payload, receiver, ops=(), limit=1 << 16, flags=PSH | ACK):
    """One segment through the monitor: `ops` applied to its FrameEdit (each checked
    against the same edit of a plain bytearray), then out; returns the view and the
    frames the receiver took."""
    pkt = server_segment(seq, payload, flags)
    edit = FrameEdit(pkt, 1, edits)
    model = bytearray(edit.view())
    for op, at, arg in ops:
        if op == "insert":
            edit.insert(at, arg)
            model[at:at] = arg
        elif op == "chomp":
            edit.chomp(at, arg)
            del model[at:at + arg]
        else:
            edit.overwrite(at, arg)
            model[at:at + len(arg)] = arg
        assert edit.view() == bytes(model), (op, at, arg)
    view = edit.view()
    frames = leave(edit, limit)
    taken = [receiver.take(frame) for frame in frames] if frames is not None \
        else [receiver.take(bytes(pkt.buf))]
    assert b"".join(payload for _, payload, _ in taken) == view
    return view, taken


# ------------------------------------------------------------------ core: fixed cases
def test_word_replaced_and_bytes_deleted_in_two_segments():
    isn = 5000
    edits = StreamEdits(isn)
    rx = WireReceiver(isn)
    seg1 = b"HTTP/1.0 200 OK\r\n\r\nHello! world"
    seg2 = b" and DELETEME here"
    at = seg1.index(b"Hello!")
    view1, [(off1, _, _)] = send(edits, isn, seg1, rx,
                                 [("insert", at, b"xxx"), ("overwrite", at, b"Greetings")])
    view2, [(off2, _, _)] = send(edits, isn + len(seg1), seg2, rx,
                                 [("chomp", seg2.index(b"DELETEME"), 8)])
    assert (off1, off2) == (0, len(seg1) + 3)
    assert rx.stream() == b"HTTP/1.0 200 OK\r\n\r\nGreetings world and  here"
    # A bare segment after both: shifted by +3 - 8.
    fin = server_segment(isn + len(seg1) + len(seg2), b"", FIN | ACK)
    assert leave(FrameEdit(fin, 1, edits), 1460) is None
    assert fin.seq == isn + len(seg1) + len(seg2)          # the parsed (sender's) number
    assert int.from_bytes(fin.buf[38:42], "big") == isn + len(seg1) + len(seg2) - 5
    assert verify_tcp_checksum(fin)
    # The receiver's ACK of everything and the FIN maps back to the sender's FIN + 1.
    end_wire = isn + len(rx.stream()) + 1
    assert edits.unmap_seq(end_wire & MASK) == (isn + len(seg1) + len(seg2) + 1) & MASK


def test_retransmissions_carry_the_same_edits_wherever_they_are_cut():
    isn = 1000
    edits = StreamEdits(isn)
    rx = WireReceiver(isn)
    data = bytes(random.Random(7).randrange(256) for _ in range(300))
    send(edits, isn, data[:100], rx, [("insert", 50, b"INS"), ("chomp", 10, 5)])
    send(edits, isn + 100, data[100:200], rx, [("insert", 0, b"<<"), ("overwrite", 101, b"!")])
    send(edits, isn + 200, data[200:300], rx, [("chomp", 90, 10), ("insert", 90, b">>")])
    stream = rx.stream()
    assert len(stream) == 300 + 3 - 5 + 2 - 10 + 2
    # Resent as it was, coalesced, split elsewhere, and starting inside a deletion.
    for start, end in ((0, 100), (100, 200), (0, 300), (37, 163), (12, 13), (150, 295),
                       (295, 300), (290, 300), (200, 201)):
        edit = FrameEdit(server_segment(isn + start, data[start:end]), 1, edits)
        with pytest.raises(EditError):
            edit.insert(0, b"late")          # the receiver may have these bytes: frozen
        frames = leave(edit, 1 << 16)
        for frame in frames or [bytes(edit.pkt.buf)]:
            rx.take(frame)                   # asserts every byte lands where it was
    assert rx.stream() == stream


def test_acks_and_sack_edges_map_back():
    isn = 7000
    edits = StreamEdits(isn)
    rx = WireReceiver(isn)
    send(edits, isn, b"a" * 10, rx, [("insert", 10, b"+++")])            # 10 -> 13 bytes
    send(edits, isn + 10, b"b" * 10, rx, [("chomp", 0, 4)])                # 10 -> 6
    send(edits, isn + 20, b"c" * 10, rx, [("insert", 0, b"#")])            # 10 -> 11
    # Wire: a*10 +++ | b*6 | # c*10 ; wire offsets 0, 13, 19, 30.
    assert [edits.wire(o) for o in (0, 10, 11, 14, 15, 20, 21, 30)] == [0, 13, 13, 13, 14, 19, 21, 30]
    # Wire 10 and 12: the receiver lacks (part of) the insert after byte 9: byte 10 is not
    # acknowledged (a resend from 9 carries the insert). Wire 13: the 4 deleted bytes
    # count as received.
    cases = {0: 0, 10: 9, 12: 9, 13: 14, 19: 20, 20: 20, 21: 21, 30: 30}
    for wire_off, orig_off in cases.items():
        assert edits.unmap_seq(isn + wire_off) == isn + orig_off, wire_off
    # Left SACK edges round up: [13, 19) holds b's last 6 bytes and the 4 deleted before.
    assert edits.unmap_seq(isn + 13, left_edge=True) == isn + 10
    assert edits.unmap_seq(isn + 19, left_edge=True) == isn + 20
    ack = client_ack(isn + 13, sack=[(isn + 19, isn + 30)])
    unmap_acks(ack, edits)
    assert ack.ack == isn + 14 and int.from_bytes(ack.buf[42:46], "big") == isn + 14
    assert sack_blocks(ack) == [(isn + 20, isn + 30)]
    assert verify_tcp_checksum(ack)
    bad = client_ack(isn + 13, bad_checksum=True)
    unmap_acks(bad, edits)
    assert bad.ack == isn + 14 and not verify_tcp_checksum(bad)   # a bad one stays bad


@pytest.mark.parametrize("before_wrap", [4, 1])
def test_sequence_wrap_inside_an_edited_segment(before_wrap):
    """The segment starts 4 (or 1) bytes before sequence number 2**32 and is edited at
    the wrap and beyond it."""
    isn = (1 << 32) - before_wrap
    edits = StreamEdits(isn)
    rx = WireReceiver(isn)
    payload = bytes(range(65, 65 + 12))
    send(edits, isn, payload, rx, [("insert", before_wrap, b"@@"), ("chomp", before_wrap + 3, 1)])
    view, [(off, _, pkt)] = send(edits, (isn + 12) & MASK, b"tail", rx)
    assert off == 13 and pkt.seq == (isn + 13) & MASK
    assert rx.stream() == payload[:before_wrap] + b"@@" + payload[before_wrap:before_wrap + 1] \
        + payload[before_wrap + 2:] + b"tail"
    assert edits.unmap_seq((isn + 13 + 4) & MASK) == (isn + 12 + 4) & MASK


def test_one_byte_segments():
    isn = 100
    edits = StreamEdits(isn)
    rx = WireReceiver(isn)
    send(edits, isn, b"A", rx, [("insert", 0, b"<")])        # before its only byte
    send(edits, isn + 1, b"B", rx, [("insert", 1, b">")])    # after it
    view, [(off, payload, pkt)] = send(edits, isn + 2, b"C", rx, [("chomp", 0, 1)])
    assert view == b"" and payload == b"" and off == 4 and pkt.flags == PSH | ACK
    send(edits, isn + 3, b"D", rx)
    assert rx.stream() == b"<AB>D"
    # Each one resent alone lands where it did: the inserts go with their own segment.
    for i, byte in enumerate(b"ABCD"):
        frames = leave(FrameEdit(server_segment(isn + i, bytes([byte])), 1, edits), 1460)
        assert frames is None or len(frames) == 1
    assert [edits.unmap_seq(isn + w) - isn for w in range(6)] == [0, 0, 1, 1, 3, 4]


def test_oversized_edit_is_split_at_the_receivers_mss():
    isn = 1
    edits = StreamEdits(isn)
    rx = WireReceiver(isn)
    pkt = server_segment(isn, b"x" * 1000, PSH | ACK | FIN)
    assert payload_limit(pkt, 1460) == 1460 and payload_limit(pkt, None) == 1000
    edit = FrameEdit(pkt, 1, edits)
    edit.insert(500, b"y" * 700)
    frames = leave(edit, payload_limit(pkt, 1460))
    taken = [rx.take(frame) for frame in frames]
    assert [len(p) for _, p, _ in taken] == [1460, 240]
    assert [t.flags for _, _, t in taken] == [ACK, PSH | ACK | FIN]
    assert rx.stream() == b"x" * 500 + b"y" * 700 + b"x" * 500


def test_bad_checksum_stays_bad_when_resized():
    edits = StreamEdits(1)
    pkt = server_segment(1, b"hello world")
    pkt.buf[14 + 20 + 16] ^= 0xFF
    edit = FrameEdit(pkt, 1, edits)
    edit.insert(5, b",")
    [frame] = leave(edit, 1460)
    out = parse_frame(memoryview(bytearray(frame)))
    assert bytes(out.payload) == b"hello, world" and not verify_tcp_checksum(out)


def test_edits_below_the_receivers_ack_are_forgotten():
    """A long flow edited in every segment keeps only the edits in flight; a late resend
    from below the forgotten ones leaves from where the receiver's ACK was, its FIN
    dropped when the receiver has that too."""
    isn = 40_000
    edits = StreamEdits(isn)
    rx = WireReceiver(isn)
    chunk = b"0123456789" * 10
    for i in range(400):
        send(edits, isn + 100 * i, chunk, rx, [("insert", 3, b"+"), ("chomp", 50, 2)])
        if i % 4 == 3 and i < 396:   # the receiver acknowledges everything, now and then
            unmap_acks(client_ack(isn + len(rx.stream())), edits)
    stream = rx.stream()
    assert stream == (chunk[:3] + b"+" + chunk[3:49] + chunk[51:]) * 400
    assert len(edits.inserts) + len(edits.deletions) <= 2 * 40 and edits.base > 30_000
    # Everything acknowledged, FIN included (and forgotten, now): a resend of the last
    # segment with the FIN.
    edits._prune_at = 0
    unmap_acks(client_ack(isn + len(stream) + 1), edits)
    assert edits.base == 40_001 and not edits.inserts
    pkt = server_segment(isn + 39_900, chunk, PSH | ACK | FIN)
    [frame] = leave(FrameEdit(pkt, 1, edits), 1460)
    off, payload, out = rx.take(frame)
    assert (off, payload, out.flags) == (len(stream) + 1, b"", PSH | ACK)
    # A resend from below an ACK in the middle: its bytes land where they did.
    edits2 = StreamEdits(isn)
    rx2 = WireReceiver(isn)
    for i in range(100):
        send(edits2, isn + 100 * i, chunk, rx2, [("insert", 3, b"+"), ("chomp", 50, 2)])
    edits2._prune_at = 0
    # Wire 99 * 5 + 30: view byte 30 of segment 5 ("012+..."), original byte 500 + 29.
    ack = client_ack(isn + 99 * 5 + 30)
    unmap_acks(ack, edits2)
    assert ack.ack == isn + 529 and edits2.base == 529
    for start, end in ((4000, 5200), (4950, 5050), (100, 9000)):
        edit = FrameEdit(server_segment(isn + start, (chunk * 100)[start:end]), 1, edits2)
        for frame in leave(edit, 1 << 16) or [bytes(edit.pkt.buf)]:
            rx2.take(frame)
    assert rx2.stream() == stream[:len(rx2.stream())] and len(rx2.stream()) == 9900


# ------------------------------------------------------------------ core: property
@st.composite
def edited_streams(draw):
    size = draw(st.integers(1, 400))
    data = bytes(draw(st.binary(min_size=size, max_size=size)))
    cuts = sorted(set(draw(st.lists(st.integers(1, size - 1), max_size=8)))) if size > 1 else []
    bounds = list(zip([0] + cuts, cuts + [size]))
    ops = []
    for start, end in bounds:
        seg_ops = []
        length = end - start
        for _ in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["insert", "chomp", "overwrite"]))
            at = draw(st.integers(0, length))
            if kind == "insert":
                arg = draw(st.binary(min_size=1, max_size=6))
                length += len(arg)
            elif kind == "chomp":
                arg = draw(st.integers(0, length - at))
                length -= arg
            else:
                arg = draw(st.binary(min_size=0, max_size=length - at))
            seg_ops.append((kind, at, arg))
        ops.append(seg_ops)
    isn = draw(st.one_of(st.integers(0, MASK), st.integers(MASK - 500, MASK)))
    resend = draw(st.lists(st.tuples(st.integers(0, size), st.integers(0, size)), max_size=6))
    acks = draw(st.lists(st.integers(0, size + 40), max_size=8))
    acked = draw(st.one_of(st.none(), st.integers(0, size)))
    return data, bounds, ops, isn, resend, acks, acked


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edited_streams())
def test_remapping_property(case):
    data, bounds, ops, isn, resend, acks, acked = case
    edits = StreamEdits(isn)
    rx = WireReceiver(isn)
    views = []
    for (start, end), seg_ops in zip(bounds, ops):
        view, _ = send(edits, isn + start, data[start:end], rx, seg_ops)
        views.append(view)
    stream = rx.stream()
    assert stream == b"".join(views)
    # W is non-decreasing and ends where the receiver's stream does.
    wires = [edits.wire(o) for o in range(len(data) + 1)]
    assert wires == sorted(wires) and wires[0] == 0 and wires[-1] == len(stream)
    base = 0
    if acked is not None:
        # The receiver acknowledged `acked`: the edits below it are forgotten, W from it
        # on stays, and a resend from below it leaves without its head.
        edits.prune(acked)
        base = edits.base
        assert base == acked and [edits.wire(o) for o in range(base, len(data) + 1)] == wires[base:]
    for first, last in resend:
        start, end = min(first, last), max(first, last)
        edit = FrameEdit(server_segment(isn + start, data[start:end]), 1, edits)
        frames = leave(edit, 1 << 16)
        for frame in frames or [bytes(edit.pkt.buf)]:
            off, payload, _ = rx.take(frame)
            assert off == wires[max(start, base)] and off + len(payload) == wires[max(end, base)]
    assert rx.stream() == stream
    for wire_off in acks:
        if wire_off < wires[base]:
            continue
        o = seq_delta(edits.unmap_seq((isn + wire_off) & MASK), isn)
        # The largest original offset whose edited bytes before it the receiver has.
        assert edits.wire(o) <= wire_off < edits.wire(o + 1)
        left = seq_delta(edits.unmap_seq((isn + wire_off) & MASK, left_edge=True), isn)
        # The smallest original offset whose edited bytes from it on the receiver has.
        assert edits.wire(left) >= wire_off
        assert left - 1 < base or edits.wire(left - 1) < wire_off


# ------------------------------------------------------------------ API, inline
class Client:
    """The client end: takes the frames the monitor sends it, acknowledges what it has in
    order (in the numbering it received), with SACK blocks for what lies beyond."""

    def __init__(self, server_isn):
        self.base = (server_isn + 1) & MASK
        self.bytes = {}
        self.fin_off = None

    def take(self, pkt):
        assert verify_tcp_checksum(pkt)
        off = seq_delta(pkt.seq, self.base)
        for i, value in enumerate(bytes(pkt.payload)):
            assert self.bytes.setdefault(off + i, value) == value
        if pkt.flags & FIN:
            self.fin_off = off + pkt.payload_len

    def nxt(self):
        n = 0
        while n in self.bytes:
            n += 1
        return n

    def ack_seq(self):
        n = self.nxt()
        return (self.base + n + (1 if self.fin_off is not None and n >= self.fin_off else 0)) & MASK

    def sacks(self):
        n = self.nxt()
        blocks = []
        for off in sorted(o for o in self.bytes if o > n):
            if blocks and blocks[-1][1] == off:
                blocks[-1][1] = off + 1
            else:
                blocks.append([off, off + 1])
        return [((self.base + a) & MASK, (self.base + b) & MASK) for a, b in blocks]

    def stream(self):
        return bytes(self.bytes[i] for i in range(self.nxt()))


def c2s(seq, ack, flags, payload=b"", options=b""):
    return build_tcp_frame(MAC_C, MAC_S, IP_C, IP_S, PORT_C, PORT_S, seq & MASK, ack & MASK,
                           flags, 65535, payload, options=options)


def s2c(seq, ack, flags, payload=b"", options=b""):
    return build_tcp_frame(MAC_S, MAC_C, IP_S, IP_C, PORT_S, PORT_C, seq & MASK, ack & MASK,
                           flags, 65535, payload, options=options)


MSS_1460 = bytes([2, 4, 0x05, 0xB4])
REQUEST = b"GET / HTTP/1.0\r\n\r\n"
SEGMENTS = [b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nHello! ",
            b"this line has DELETEME in it, ",
            b"and Hello! again at the end."]
EDITED = (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nGreetings this line has "
          b" in it, and Greetings again at the end.")


class Editor:
    """Two apps on one context: one replaces b"Hello!" by b"Greetings" (MOS_INSERT of 3
    bytes, then MOS_OVERWRITE), the other deletes b"DELETEME" (MOS_CHOMP); both at
    MOS_HK_SND on the server's segments. Also reads the client's receive stream."""

    def __init__(self, mctx):
        self.mctx = mctx
        self.replaced = self.deleted = 0
        self.stream = bytearray()
        self.ends = 0
        self.pinfo = PktInfo()
        for handler in (self.replace, self.delete):
            sock = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
            mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_SND, handler)
        mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, self.read)
        mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_SND, self.end)

    def payload(self, sock, side):
        mtcp_getlastpkt(self.mctx, sock, side, self.pinfo)
        return bytes(self.pinfo.payload[:self.pinfo.payloadlen])

    def replace(self, mctx, sock, side, event, arg):
        if side != MOS_SIDE_SVR:
            return
        at = self.payload(sock, side).find(b"Hello!")
        if at >= 0:
            mtcp_setlastpkt(mctx, sock, side, at, b"...", 3, MOS_INSERT | MOS_TCP_PAYLOAD)
            mtcp_setlastpkt(mctx, sock, side, at, b"Greetings", 9,
                            MOS_OVERWRITE | MOS_TCP_PAYLOAD | MOS_UPDATE_TCP_CHKSUM)
            self.replaced += 1

    def delete(self, mctx, sock, side, event, arg):
        if side != MOS_SIDE_SVR:
            return
        at = self.payload(sock, side).find(b"DELETEME")
        if at >= 0:
            mtcp_setlastpkt(mctx, sock, side, at, None, 8, MOS_CHOMP | MOS_TCP_PAYLOAD)
            self.deleted += 1

    def read(self, mctx, sock, side, event, arg):
        if side == MOS_SIDE_CLI:
            buf = bytearray(4096)
            n = mtcp_peek(mctx, sock, side, buf)
            self.stream += buf[:n]

    def end(self, mctx, sock, side, event, arg):
        self.ends += 1


def run_inline(script, acks_on_wire=True, contexts=1):
    """Run `script(client, lose, mctx)` (a generator of frames) through a context (or
    several on one datapath, each with its Editor) as inline mode does; frames the monitor
    sends toward the client go to `client`, but for as many as the script last put in
    `lose`. Returns (the editor of the flow's context, client, frames toward the server,
    that context's stack)."""
    mctxs = [mtcp_create_context(cpu) for cpu in range(contexts)]
    editors = [Editor(m) for m in mctxs]
    mctx = mctxs[0] if contexts == 1 else GroupContext(mctxs)
    stack = mctx.stack
    stack.acks_on_wire = acks_on_wire
    client = Client(server_isn=5000)
    to_server = []
    lose = []

    def sink(ts, frame):
        pkt = parse_frame(memoryview(bytearray(frame)))
        if pkt.dport == PORT_C:
            if lose and lose[-1]:
                lose[-1] -= 1
                return
            client.take(pkt)
        else:
            to_server.append(pkt)

    frames = ((ts, memoryview(frame)) for ts, frame in
              enumerate(script(client, lose, mctx), start=1_000_000))
    OfflineEngine(mctx, frames, sink, batch_size=1).run()
    if contexts == 1:
        return editors[0], client, to_server, stack
    [index] = [i for i, m in enumerate(mctxs) if m.stack.counters["flows_created"]]
    return editors[index], client, to_server, mctxs[index].stack


def conversation(client, lose, mctx=None):
    """Handshake, request; the response in three segments of which the first is lost
    between the monitor and the client and resent; FIN from the server, then the client's.
    The client's ACKs (with SACK blocks) say what `client` has at the time."""
    yield c2s(1000, 0, SYN, options=MSS_1460)
    yield s2c(5000, 1001, SYN | ACK, options=MSS_1460)
    yield c2s(1001, 5001, ACK)
    yield c2s(1001, 5001, PSH | ACK, REQUEST)
    ack = 1001 + len(REQUEST)
    seq = 5001
    starts = []
    for payload in SEGMENTS:
        starts.append(seq)
        seq += len(payload)
    lose.append(1)                              # the first one never reaches the client
    yield s2c(starts[0], ack, PSH | ACK, SEGMENTS[0])
    for i in (1, 2):
        yield s2c(starts[i], ack, PSH | ACK, SEGMENTS[i])
        yield c2s(ack, client.ack_seq(), ACK, options=sack_option(client.sacks()))
    yield s2c(starts[0], ack, PSH | ACK, SEGMENTS[0])            # the retransmission
    yield c2s(ack, client.ack_seq(), ACK)
    yield s2c(seq, ack, FIN | ACK)
    yield c2s(ack, client.ack_seq(), ACK)
    yield c2s(ack, client.ack_seq(), FIN | ACK)
    yield s2c(seq + 1, ack + 1, ACK)


RESPONSE_END = 5001 + sum(map(len, SEGMENTS))


@pytest.mark.parametrize("contexts", [1, 2])
def test_inline_insert_and_chomp_end_to_end(api, contexts):
    editor, client, to_server, stack = run_inline(conversation, contexts=contexts)
    assert client.stream() == EDITED and client.fin_off == len(EDITED)
    assert (editor.replaced, editor.deleted) == (2, 1)      # the retransmission needs none
    assert bytes(editor.stream) == b"".join(SEGMENTS)       # the app reads the sender's bytes
    assert editor.ends == 2 and stack.flow_count() == 0 and stack.counters["flows_ended"] == 1
    # What the server got: ACKs and SACK blocks in its own numbering.
    starts = [5001, 5001 + len(SEGMENTS[0]), 5001 + len(SEGMENTS[0]) + len(SEGMENTS[1])]
    acks = [(p.ack, sack_blocks(p)) for p in to_server if p.flags == ACK][1:]
    assert acks == [(5001, [(starts[1], starts[2])]), (5001, [(starts[1], RESPONSE_END)]),
                    (RESPONSE_END, []), (RESPONSE_END + 1, [])]
    assert to_server[-1].flags == FIN | ACK and to_server[-1].ack == RESPONSE_END + 1
    assert all(verify_tcp_checksum(p) for p in to_server)
    assert stack.counters["resized_frames"] == 4   # each response segment, and the resend


def test_offline_edits_leave_acks_alone(api):
    """Offline (and passive) the endpoints never saw the edits: ACKs toward the edited
    side pass unchanged (here the client's, made in the edited numbering, stay so)."""
    editor, client, to_server, stack = run_inline(conversation, acks_on_wire=False)
    assert client.stream() == EDITED
    assert [p.ack for p in to_server[-2:]] == [5001 + len(EDITED) + 1] * 2


def test_edited_flow_stays_in_the_core_after_stop_monitoring(api):
    contexts = []

    def script(client, lose, mctx):
        contexts.append(mctx)
        for index, frame in enumerate(conversation(client, lose)):
            yield frame
            if index == 4:             # the first response segment was edited: stop
                for sock in [s for s in mctx.stack.sockets.values() if s.kind == "flow"]:
                    mtcp_setsockopt(mctx, sock.id, SOL_MONSOCKET, MOS_STOP_MON, MOS_SIDE_BOTH)
    editor, client, to_server, stack = run_inline(script)
    # No kernel verdict was asked for: the core remapped the rest of the flow (without
    # emulating it: the later segments reached no app).
    assert contexts[0].engine.twin.kernel["verdicts_set"] == 0
    assert stack.counters["bypassed_packets"] > 0
    assert client.stream() == EDITED[:EDITED.index(b"Greetings ") + 10] + SEGMENTS[1] + SEGMENTS[2]
    assert client.fin_off == len(client.stream())
    assert [p.ack for p in to_server[-2:]] == [RESPONSE_END + 1] * 2


def test_write_holds_the_edited_frames(api, tmp_path):
    """Offline, --write gets the frames as edited: the server's in the client's
    numbering, the client's (from a capture without edits) as they were."""
    from mosxdp.engine.offline import run_offline
    from mosxdp.io.pcap import PcapReader, PcapWriter
    capture_path = tmp_path / "in.pcap"
    client = Client(5000)
    frames = []
    lose = []
    for frame in conversation(client, lose):
        pkt = parse_frame(memoryview(bytearray(frame)))
        if pkt.dport == PORT_C and not (lose and lose[-1]):
            client.take(pkt)                  # the client as it was, without the monitor
        elif pkt.dport == PORT_C:
            lose[-1] -= 1
        frames.append(bytes(frame))
    with PcapWriter(str(capture_path)) as writer:
        for ts, frame in enumerate(frames, start=1_000_000):
            writer.write(ts, frame)
    mctx = mtcp_create_context(0)
    editor = Editor(mctx)
    out = tmp_path / "out.pcap"
    result = run_offline(mctx, str(capture_path), str(out))
    with PcapReader(str(out)) as reader:
        written = [bytes(frame) for _, frame in reader]
    assert result.frames_out == len(written) == len(frames) == 15
    assert (editor.replaced, editor.deleted) == (2, 1)
    rx = WireReceiver(5001)
    for frame, before in zip(written, frames):
        pkt = parse_frame(memoryview(bytearray(frame)))
        assert verify_tcp_checksum(pkt)
        if pkt.sport == PORT_C:
            assert frame == before
        elif pkt.payload_len:
            rx.take(frame)
        elif pkt.flags & FIN:
            assert pkt.seq == 5001 + len(EDITED)
    assert rx.stream() == EDITED


def test_refused_on_a_bypassed_flow_and_on_a_first_retransmission(api):
    """A flow handed to the kernel cannot change size (its frames no longer all pass);
    nor can a retransmission in a direction not edited yet (the receiver may have it)."""
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    results = []
    seen = []

    def on_packet(mctx, s, side, event, arg):
        pinfo = PktInfo()
        mtcp_getlastpkt(mctx, s, side, pinfo)
        if side != MOS_SIDE_SVR or not pinfo.payloadlen:
            return
        seen.append(pinfo.seq)
        if len(seen) == 2:        # the resend of the first response segment
            results.append(capture_errno(mctx, s, side))
            mtcp_setsockopt(mctx, s, SOL_MONSOCKET, MOSX_BYPASS, 1)
        elif len(seen) == 3:      # the FIN segment of the bypassed flow (with its payload)
            results.append(capture_errno(mctx, s, side))
    mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_SND, on_packet)

    def frames():
        yield c2s(1000, 0, SYN, options=MSS_1460)
        yield s2c(5000, 1001, SYN | ACK, options=MSS_1460)
        yield c2s(1001, 5001, ACK)
        yield s2c(5001, 1001, PSH | ACK, b"first")
        yield s2c(5001, 1001, PSH | ACK, b"first")
        yield s2c(5006, 1001, FIN | ACK, b"last")
    OfflineEngine(mctx, ((ts, memoryview(f)) for ts, f in enumerate(frames(), 1)), None).run()
    assert results == [errno.EINVAL, errno.EINVAL]
    assert mctx.stack.counters["resized_frames"] == 0


def capture_errno(mctx, sock, side):
    try:
        mtcp_setlastpkt(mctx, sock, side, 0, b"+", 1, MOS_INSERT | MOS_TCP_PAYLOAD)
    except OSError as exc:
        return exc.errno
    return 0
