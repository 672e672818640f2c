"""The per-frame and per-catch-up steps of fast forward (engine/kernel_twin.py), compiled.

``took``: a frame the twin took for a flow, as the core would have had it: the clock, the
flow's last activity and place in the LRU and half-open orders, the TCP segment count, and
for an FF_STREAM flow its payload (``deliver``). The live engines' loops call it.

``deliver``: the payload of a frame the twin took for an FF_STREAM flow, appended to its
receiver's stream as the emulation appends an in-order segment (core/streams.py
_receive_payload), so the end of the batch raises CONN_NEW_DATA for the same bytes. The
twin took the frame only if it is the next in order, inside the window, and the
receiver's buffer ends where its stream does.

``load``: the record from the emulation's state after a frame the core processed (what
the twin checks a frame against), and whether it takes frames at all.

``catch_up``: what the twin counted since the last call joins the flow as the emulation
would have made it: counts, the senders' next sequence numbers, the streams (FF_COUNTS:
their payload was not delivered), the window edges, the history letters in order.

Both read the twin's record (a bytearray: _kerneltwin.c struct kt_record, whose offsets
kernel_twin.py's TwinRecord checks against these).
"""
from __future__ import annotations

import struct

import cython

from ..core.tcp import ESTABLISHED, add_history

if cython.compiled:
    from cython.cimports.cpython.bytearray import PyByteArray_AS_STRING
else:
    from ..core.flow import Flow, Side
    from ..core.reassembly import StreamBuffer
    from ..core.stack_state import StackState

# In the twin's record (_kerneltwin.c struct kt_record, the machine's order): the counts
# (packets, bytes, frame_bytes, ip_bytes per direction), the first-data and first-ACK
# stamps, the TCP flags, the fast-forward state (ff_next, ff_edge, ff_ok, ff_edge_known,
# ff_edge_moves), and ff_last_dir, ff_cli_dir, ff_last_off, ff_last_len.
COUNTS_AT, STAMPS_AT, FLAGS_AT, FF_AT, LAST_AT = 16, 96, 136, 144, 169
_COUNTS = struct.Struct("<8Q")
_STAMPS = struct.Struct("<4Q")
_FF_HEAD = struct.Struct("<2I2IB2BB")
_FF_LOAD = struct.Struct("<2I2IB2BB2B2B")   # ff_next .. ff_data_ok
_LAST = struct.Struct("<BBxII")
_CLEAR = bytes(FF_AT - COUNTS_AT)
_LAST_AT = cython.declare(cython.Py_ssize_t, LAST_AT)
_SEQ_MASK = 0xFFFFFFFF


@cython.locals(stack=StackState, flow=Flow, rcv=Side, buf=StreamBuffer, raw=bytearray,
               p=cython.p_uchar,
               d=cython.int, cli_dir=cython.int, off=cython.Py_ssize_t, n=cython.Py_ssize_t,
               receiver=cython.int)
def deliver(stack, flow, frame) -> None:
    """The payload of the frame the twin just took for ``flow`` (a FF_STREAM flow): into
    the receiving side's stream."""
    raw = flow.ff_record
    if cython.compiled:
        p = cython.cast(cython.p_uchar, PyByteArray_AS_STRING(raw)) + _LAST_AT
        d = p[0]
        cli_dir = p[1]
        off = cython.cast(cython.pointer(cython.uint), p + 3)[0]
        n = cython.cast(cython.pointer(cython.uint), p + 7)[0]
    else:
        d, cli_dir, off, n = _LAST.unpack_from(raw, _LAST_AT)
    if not n:
        return
    receiver = 1 if d == cli_dir else 0      # the client's frames go to the server (1)
    rcv = flow.sides[receiver]
    before = rcv.rcv_nxt
    buf = rcv.buf
    if buf is not None:
        if before + n - buf._capacity > rcv.flush_mark and flow.pending_data >> receiver & 1:
            stack._flush_before_overrun(flow, receiver, rcv, before + n - buf._capacity)
        head = buf.head
        buf.insert(before, frame[off:off + n])
        rcv_nxt = rcv.rcv_nxt = buf.next_offset
        if buf.head != head:
            stack._overrun(flow, receiver, buf.head)
    else:
        rcv_nxt = rcv.rcv_nxt = before + n
    rcv.first_payload_seen = True
    rcv.unique_bytes += n
    if rcv_nxt > rcv.max_end:
        rcv.max_end = rcv_nxt
    if rcv_nxt > before:
        if not flow.pending_data:
            stack.new_data_flows.append(flow)
            flow.data_no = stack.frame_no
        flow.pending_data |= 1 << receiver


@cython.locals(flow=Flow, side=Side, peer=Side, raw=bytearray, cli_dir=cython.int,
               index=cython.int, d=cython.int, sent=cython.longlong, dist=cython.longlong,
               delivered=cython.bint)
def catch_up(flow, delivered) -> int:
    """The frames the twin took for ``flow`` since the last call (``delivered``: their
    payload is in the streams already), as the emulation would have processed them; the
    record's counts and stamps cleared. Returns the number of frames."""
    raw = flow.ff_record
    counts = _COUNTS.unpack_from(raw, COUNTS_AT)
    frames = counts[0] + counts[1]
    if not frames:
        return 0
    stamps = _STAMPS.unpack_from(raw, STAMPS_AT)
    nxt0, nxt1, edge0, edge1, _ok, known0, known1, moves = _FF_HEAD.unpack_from(raw, FF_AT)
    nxt, edge, known = (nxt0, nxt1), (edge0, edge1), (known0, known1)
    cli_dir = raw[LAST_AT + 1]
    sides = flow.sides
    letters = []
    for index in range(2):
        d = cli_dir if index == 0 else 1 - cli_dir
        side = sides[index]
        peer = sides[1 - index]
        side.pkts += counts[d]
        side.ip_bytes += counts[6 + d]
        side.l2_bytes += counts[4 + d]
        side.tcp_flags |= raw[FLAGS_AT + d]
        sent = counts[2 + d]
        if sent:
            side.snd_nxt = nxt[d]
            if not delivered:
                peer.rcv_nxt += sent
                peer.unique_bytes += sent
                if peer.rcv_nxt > peer.max_end:
                    peer.max_end = peer.rcv_nxt
                peer.first_payload_seen = True
                if peer.buf is not None:
                    peer.buf.skip(peer.rcv_nxt)
        if stamps[d]:
            letters.append((stamps[d], index, "D"))
        if stamps[2 + d]:
            letters.append((stamps[2 + d], index, "A"))
    if moves:
        for index in range(2):
            # the edge of the data toward this side, in its stream's offsets
            d = 1 - cli_dir if index == 0 else cli_dir
            if known[d]:
                side = sides[index]
                dist = (edge[d] - nxt[d]) & _SEQ_MASK
                side.right_edge = side.rcv_nxt + (dist - (1 << 32) if dist >= 1 << 31 else dist)
    if letters:
        letters.sort()
        for _, index, letter in letters:
            add_history(flow, index, letter)
    raw[COUNTS_AT:FF_AT] = _CLEAR
    return frames


@cython.locals(flow=Flow, side=Side, peer=Side, cli=Side, svr=Side, raw=bytearray,
               cli_dir=cython.int, index=cython.int, d=cython.int, ok=cython.bint,
               moves=cython.int, stream=cython.bint, allowed=cython.longlong,
               null_mask=cython.longlong, snd_mask=cython.longlong, rcv_mask=cython.longlong)
def load(stack, flow, allowed, stream) -> None:
    """After a frame the core processed: the record's next sequence numbers, window edges
    and shifts from the emulation's state, and whether regular frames are taken: both
    sides established, no bypass or edit, no socket waiting for an event outside
    ``allowed``, in each direction every byte sent received in order, no FIN pending,
    nothing beyond the window. ``stream``: payload is delivered (taken only where the
    receiver's buffer ends where its stream does, or it needs none)."""
    raw = flow.ff_record
    cli_dir = raw[LAST_AT + 1]
    sides = flow.sides
    cli = sides[0]
    svr = sides[1]
    ok = (cli.state == ESTABLISHED and svr.state == ESTABLISHED and not flow.bypass
          and flow.edits is None)
    if ok:
        null_mask, snd_mask, rcv_mask = stack._flow_masks(flow)
        ok = not (null_mask | snd_mask | rcv_mask) & ~allowed
    nxt, edge, known, shift, data = [0, 0], [0, 0], [0, 0], [0, 0], [0, 0]
    moves = 1 if flow.window_known else 0
    for index in range(2):
        if not ok:
            break
        d = cli_dir if index == 0 else 1 - cli_dir
        side = sides[index]           # the data's sender
        peer = sides[1 - index]       # and its receiver
        if side.snd_nxt is None or peer.peer_base is None or peer.peer_fin_off is not None \
                or peer.beyond_edge is not None or peer.skip_to > peer.rcv_nxt \
                or peer.max_end > peer.rcv_nxt:
            ok = False
            break
        nxt[d] = (peer.peer_base + peer.rcv_nxt) & _SEQ_MASK
        if side.snd_nxt != nxt[d]:
            ok = False         # bytes sent beyond those received in order
            break
        buf = peer.buf
        data[d] = 1 if not stream or (buf is None and not peer.bufsize) or (
            buf is not None and buf.next_offset == peer.rcv_nxt) else 0
        if peer.right_edge is not None:
            if not -(1 << 30) < peer.right_edge - peer.rcv_nxt < 1 << 30:
                ok = False
                break
            edge[d] = (peer.peer_base + peer.right_edge) & _SEQ_MASK
            known[d] = 1
        if moves:
            scale = (side.wscale or 0) if flow.window_scaled else 0
            if not 0 <= scale <= 14:
                ok = False
                break
            shift[d] = scale
    _FF_LOAD.pack_into(raw, FF_AT, nxt[0], nxt[1], edge[0], edge[1], 1 if ok else 0,
                       known[0], known[1], moves, shift[0], shift[1], data[0], data[1])


@cython.locals(stack=StackState, flow=Flow)
def took(stack, flow, frame, ts_us) -> None:
    """The bookkeeping of a frame ``claim`` took for ``flow`` (the offline loops do the
    same inline)."""
    stack.now = flow.last_ts = ts_us
    stack.tcp_segments += 1
    flow.last_no = stack.frame_no
    stack.lru.move_to_end(flow)
    half_open = stack.half_open
    if half_open and flow in half_open:
        half_open.move_to_end(flow)
    if flow.fast_forward == 2:       # FF_STREAM
        deliver(stack, flow, frame)
