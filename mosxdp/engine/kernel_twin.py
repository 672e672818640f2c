"""The kernel's per-flow verdicts, modelled for offline runs.

Live, a flow that an app hands to the kernel (MOSX_BYPASS, a session subscription done,
MOSX_STATE_ONLY at its start, a drop verdict) no longer reaches Python: the XDP program
forwards (or drops) and counts its frames in the verdict map, sends on its SYN, FIN, RST
and the ACKs of SYN and FIN, and the engine merges the counts into the flow
(engine/hybrid.py). Offline there is no kernel, and the core used to parse and count every
such frame itself. The twin does what the program does, in process: ``KernelTwin`` is the
verdict map (the same keys, the same records, bpf/mosxdp.h), ``claim`` the program's
verdict step for one frame, and ``TwinProcessor`` the live engine's HybridProcessor on it.
An offline loop asks ``claim`` first; a frame it keeps never reaches the core, which then
costs a dict lookup instead of a parse and the emulation. The outputs are the ones of a
run without the twin: the same counts, history letters in the same order (stamped with the
frame's number), the same clock, flow order and idle timeouts (the loop moves a claimed
frame's flow as the core would).

Fast forward: the flows of MOSX_STATE_ONLY listeners are not handed to the twin as live
to the kernel (the kernel's counts lose what only the emulation sees: a byte missed and
never acknowledged, a segment beyond the window), and those of MOSX_STREAM_ONLY listeners
(offline and live: FastForwardProcessor) have their payload delivered too
(fast_forward.py). The twin takes only their regular frames, those for which the emulation
would do nothing but count and move on: no SYN, FIN, RST or URG, with ACK, at the sequence
number the stream expects next, acknowledging
no byte not seen, within the window the receiver advertised, while both sides are
established and nothing waits in either stream. Before the core processes any other frame
of such a flow (or ends it) ``_ff_catch_up`` adds what the twin counted, advances both
streams and the window edges as the emulation would have, and adds the history letters in
their order; after it, ``_ff_reload`` loads the record from the emulation's state, and
says whether regular frames may be taken. The outputs are those of every frame through
the core, except what an app could read between two frames the core processes (a
timer's getsockopt sees the counts of the last one, as live with MOSX_STATE_ONLY), and
mtcp_getlastpkt in CONN_END after a timeout (the last frame the core processed).
--full-inspection turns it off.

``claim`` is C (_kerneltwin.c) unless MOSXDP_PURE_PYTHON is set or the module is missing;
``claim_python`` below is the same step in Python.
"""
from __future__ import annotations

import ctypes as ct
import struct

from ..core.compiled import PURE_PYTHON
from ..core.datagrams import DatagramFlow
from ..core.events import (EV_CONN_END, EV_CONN_NEW_DATA, EV_CONN_START, EV_ORPHAN,
                           EV_TCP_STATE_CHANGE, EV_TIMEOUT)
from ..core.tcp import SYN_RCVD
from ..io.bpfstructs import (ACTION_NAMES, ACTIONS, MX_ACTION_DROP, MX_WATCH_ANY, MX_WATCH_ARMED,
                             MxVerdict)
from . import fast_forward
from .fast_forward import catch_up, load
from .hybrid import HybridProcessor

__all__ = ["TwinRecord", "KernelTwin", "TwinProcessor", "FastForwardProcessor", "claim",
           "claim_python", "modelled", "FAST_FORWARD"]

# The action of a fast-forwarded flow's entry (no kernel has it: the twin's own), and the
# two kinds (Flow.fast_forward): counting its regular frames (MOSX_STATE_ONLY), or also
# delivering their payload to the receiver's stream (MOSX_STREAM_ONLY: fast_forward.py).
FAST_FORWARD = 4
FF_COUNTS, FF_STREAM = 1, 2
# Events that no regular frame raises: a flow whose sockets wait for others is not
# fast-forwarded (PKT_IN, CONN_NEW_DATA, REXMIT, ERROR: each would need the frame).
_FF_EVENTS = EV_CONN_START | EV_TIMEOUT | EV_TCP_STATE_CHANGE | EV_ORPHAN | EV_CONN_END
# ... and with the payload delivered, the end of the batch raises CONN_NEW_DATA as ever.
_FF_STREAM_EVENTS = _FF_EVENTS | EV_CONN_NEW_DATA
_SEQ_MASK = 0xFFFFFFFF


class TwinRecord(ct.Structure):
    """struct mx_verdict, then the TCP flags of the counted frames OR-ed per direction
    (the kernel does not keep them; Side.tcp_flags does), then a fast-forwarded flow's
    state per direction of the data (_kerneltwin.c): the next sequence number, the window's
    right edge and whether it is known, the shift of the window field of ACKs going that
    way, whether ACKs move the edges, and whether regular frames are taken; per direction of
    the data whether frames with payload are, whether the engine delivers their payload
    (FF_STREAM), and the last frame taken: its direction, its payload's place in it."""
    _fields_ = MxVerdict._fields_ + [
        ("tcp_flags", ct.c_uint8 * 2), ("pad2", ct.c_uint8 * 6),
        ("ff_next", ct.c_uint32 * 2), ("ff_edge", ct.c_uint32 * 2), ("ff_ok", ct.c_uint8),
        ("ff_edge_known", ct.c_uint8 * 2), ("ff_edge_moves", ct.c_uint8),
        ("ff_shift", ct.c_uint8 * 2), ("ff_data_ok", ct.c_uint8 * 2), ("ff_stream", ct.c_uint8),
        ("ff_last_dir", ct.c_uint8), ("ff_cli_dir", ct.c_uint8), ("pad3", ct.c_uint8),
        ("ff_last_off", ct.c_uint32), ("ff_last_len", ct.c_uint32), ("pad4", ct.c_uint8 * 4)]


_RECORD_SIZE = ct.sizeof(TwinRecord)
# fast_forward.py reads and writes the record at these offsets.
assert (fast_forward.COUNTS_AT, fast_forward.STAMPS_AT, fast_forward.FLAGS_AT,
        fast_forward.FF_AT, fast_forward.LAST_AT) == (
    TwinRecord.packets.offset, TwinRecord.first_data_ns.offset, TwinRecord.tcp_flags.offset,
    TwinRecord.ff_next.offset, TwinRecord.ff_last_dir.offset)
assert TwinRecord.ff_cli_dir.offset == fast_forward.LAST_AT + 1


def modelled(flow) -> bool:
    """Whether the twin takes the flow's frames: TCP, up to two VLAN tags, none with id 0
    (the key holds two ids, 0 for none: a tag of id 0 and no tag would meet)."""
    if isinstance(flow, DatagramFlow):
        return False      # the datagram table counts every datagram itself offline
    vlan_ids = flow.keys[0][4]
    return len(vlan_ids) <= 2 and 0 not in vlan_ids


def install_fast_forward(table, key, flow, cli_dir=0, stream=False) -> bytearray:
    """A FAST_FORWARD entry for the flow in ``table`` (taking no frame until loaded): its
    record. ``cli_dir``: the direction of the client's frames; ``stream``: the engine
    delivers the payload of the frames taken."""
    raw = bytearray(_RECORD_SIZE)
    rec = TwinRecord.from_buffer(raw)
    rec.action = FAST_FORWARD
    rec.ff_cli_dir = cli_dir
    rec.ff_stream = int(stream)
    table[bytes(key)] = (raw, flow)
    return raw


class KernelTwin:
    """The verdict map: ``table`` {bytes(MxFlowKey): (bytearray(TwinRecord), flow)}."""

    def __init__(self):
        self.table = {}

    def install(self, key, action: str, flow, watch_any: int | None = None,
                watches=(None, None)) -> None:
        """Create or change a flow's entry; an existing one keeps its counts (as
        XdpMaps.set_verdict). ``watch_any``: the direction whose first frame with ACK goes
        to the emulation; ``watches``: per direction, the acknowledgment number that arms
        its ACK watch (None: none)."""
        raw = bytes(key)
        entry = self.table.get(raw)
        if entry is None:
            entry = self.table[raw] = (bytearray(ct.sizeof(TwinRecord)), flow)
            if watch_any is not None:
                TwinRecord.from_buffer(entry[0]).watch_armed[watch_any] = MX_WATCH_ANY
        rec = TwinRecord.from_buffer(entry[0])
        rec.action = ACTIONS[action]
        for d, ack in enumerate(watches):
            if ack is not None:
                rec.ack_watch[d] = ack
                rec.watch_armed[d] = MX_WATCH_ARMED

    def install_fast_forward(self, key, flow, cli_dir=0, stream=False) -> bytearray:
        return install_fast_forward(self.table, key, flow, cli_dir, stream)

    def get_verdict(self, key):
        entry = self.table.get(bytes(key))
        return None if entry is None else TwinRecord.from_buffer_copy(entry[0])

    def pop_verdict(self, key):
        entry = self.table.pop(bytes(key), None)
        return None if entry is None else TwinRecord.from_buffer_copy(entry[0])

    def verdict_count(self) -> int:
        return len(self.table)


def _pending_watches(flow, cli_dir):
    """Per direction, the acknowledgment number of a SYN or FIN the emulation has seen and
    is waiting to see acknowledged (core/tcp.py acks_syn_or_fin): live the program arms
    such a watch when the SYN or FIN passes it, which one the emulation saw before the
    entry existed did not. Armed here, the ACK still reaches the emulation."""
    watches = [None, None]
    for index, side in enumerate(flow.sides):
        if side.fin_seq is not None and not side.fin_acked:
            ack = side.fin_seq + 1
        elif side.state == SYN_RCVD and side.isn is not None:
            ack = side.isn + 1
        else:
            continue
        # the other side's frames acknowledge it
        watches[cli_dir if index == 1 else 1 - cli_dir] = ack & 0xFFFFFFFF
    return watches


class FastForward:
    """The fast forward's part of a processor (a HybridProcessor, before it in the MRO): the
    flows' FAST_FORWARD entries in ``ff_table`` (the dict a loop gives ``claim``), and the
    stack's hooks. ``_ff_apply`` takes the stack's updates that concern it and returns the
    others, in order, for the kernel's verdict map."""

    def _ff_init(self, stack, table, enabled) -> None:
        self.ff_table = table
        self._ff = set()       # the flows fast-forwarded (their record: Flow.ff_record)
        self._ff_epoch = stack.mask_epoch
        self.kernel["fast_forwarded"] = 0
        stack.fast_forward = enabled
        stack.ff_catch_up = self._ff_catch_up
        stack.ff_reload = self._ff_reload

    def _ff_apply(self, updates) -> list:
        rest = []
        for action, flow in updates:
            if flow in self._ff:
                self._ff_leave(flow)      # a verdict of its own from now on
            if action == "fast_forward":
                if not flow.destroyed and modelled(flow):
                    self._ff_install(flow)
            else:
                rest.append((action, flow))
        return rest

    def end_batch(self) -> None:
        super().end_batch()
        self._ff_masks_changed()

    def advance_clock(self, ts_us: int) -> None:
        super().advance_clock(ts_us)
        self._ff_masks_changed()

    def _flow_end(self, flow) -> None:
        if flow in self._ff:
            self._ff_leave(flow)
        if flow.kernel_verdict is not None:
            super()._flow_end(flow)
        else:
            self._forget(flow)     # its key, kept since the fast forward began

    def _ff_install(self, flow) -> None:
        key, cli_dir = self._key(flow)
        # Counts only if every listener said MOSX_STATE_ONLY; else one wants the streams.
        stream = not all(sock.listener.state_only for sock in flow.socks)
        raw = install_fast_forward(self.ff_table, key, flow, cli_dir, stream)
        self._ff.add(flow)
        flow.fast_forward = FF_STREAM if stream else FF_COUNTS
        flow.ff_record = raw
        self._ff_reload(flow)

    def _ff_leave(self, flow) -> None:
        """The flow is no longer fast-forwarded: what the twin counted joins it first."""
        self._ff_catch_up(flow)
        self._ff.discard(flow)
        self.ff_table.pop(bytes(self._keys[flow][0]), None)
        flow.fast_forward = 0
        flow.ff_record = None

    def _ff_masks_changed(self) -> None:
        """A callback registered or went (a timer's, between frames): every fast-forwarded
        flow's sockets are looked at again."""
        if self._ff_epoch != self.stack.mask_epoch:
            self._ff_epoch = self.stack.mask_epoch
            for flow in list(self._ff):
                self._ff_catch_up(flow)
                self._ff_reload(flow)

    def _ff_catch_up(self, flow) -> None:
        """stack.ff_catch_up: the frames the twin took since the last call, as the
        emulation would have processed them (fast_forward.catch_up)."""
        if flow.fast_forward:
            self.kernel["fast_forwarded"] += catch_up(flow, flow.fast_forward == FF_STREAM)

    def _ff_reload(self, flow) -> None:
        """stack.ff_reload: the record from the emulation's state after a frame the core
        processed; regular frames are taken only if nothing but counting can follow."""
        if flow not in self._ff:
            return
        if flow.destroyed:
            self._ff_leave(flow)
            return
        stream = flow.fast_forward == FF_STREAM
        load(self.stack, flow, _FF_STREAM_EVENTS if stream else _FF_EVENTS, stream)



class FastForwardProcessor(FastForward, HybridProcessor):
    """The live engines' HybridProcessor, the kernel's verdict map in ``program``, with the
    fast forward of the flows of MOSX_STREAM_ONLY listeners (those of MOSX_STATE_ONLY
    listeners get the kernel's state_only verdict instead) in a table of its own: the
    engines' loops offer each frame to ``claim`` on ``ff_table`` first."""

    def __init__(self, stack, program=None, fast_forward=False):
        HybridProcessor.__init__(self, stack, program)
        self._ff_init(stack, {}, fast_forward)

    def apply(self) -> None:
        stack = self.stack
        stack.kernel_updates = self._ff_apply(stack.kernel_updates)
        super().apply()


def live_claim_table(proc):
    """(the table a live loop offers its frames to ``claim`` while it holds entries, the
    stack) of a processor, or (None, None): no fast forward (not a FastForwardProcessor),
    or a raw socket, which wants every frame in the core."""
    table = getattr(proc, "ff_table", None)
    if table is None or proc.stack.raw_sockets:
        return None, None
    return table, proc.stack


class TwinProcessor(FastForward, HybridProcessor):
    """HybridProcessor on a KernelTwin: the stack's verdicts go to the twin (the flows it
    models), its counts join the flows as the kernel's do live, and the frames and TCP
    segments it counted join the stack's counters. ``fast_forward``: the flows of
    MOSX_STATE_ONLY and MOSX_STREAM_ONLY listeners are fast-forwarded (the module's
    docstring), their entries in the same table."""

    def __init__(self, stack, fast_forward=False):
        HybridProcessor.__init__(self, stack, KernelTwin())
        self.table = self.program.table
        self._ff_init(stack, self.table, fast_forward)

    def apply(self) -> None:
        stack = self.stack
        updates, stack.kernel_updates = stack.kernel_updates, []
        for action, flow in self._ff_apply(updates):
            if action == "remove":
                self._pop(flow)
                self._forget(flow)
            elif not flow.destroyed and modelled(flow):
                key, cli_dir = self._key(flow)
                self.program.install(key, action, flow,
                                     cli_dir if action == "state_only" else None,
                                     _pending_watches(flow, cli_dir))
                self.kernel["verdicts_set"] += 1

    def _merge(self, flow, v) -> None:
        before = sum(side.pkts for side in flow.sides)
        super()._merge(flow, v)
        cli_dir = self._keys[flow][1]
        for index, side in enumerate(flow.sides):
            side.tcp_flags |= v.tcp_flags[cli_dir if index == 0 else 1 - cli_dir]
        counted = sum(side.pkts for side in flow.sides) - before
        counters = self.stack._counters
        counters["bypassed_packets"] += counted
        if v.action == MX_ACTION_DROP:
            counters["dropped"] += counted


_KEY = struct.Struct("16s16s2s2sHHBB2x")
_ETH_P_IP, _ETH_P_IPV6 = 0x0800, 0x86DD
_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
_SYN_FIN_RST = 0x07


def _parse(frame):
    """(key bytes, direction, flags, seq, ack, IP length, payload length) of a TCP frame
    parse_frame reads whole, else None (_kerneltwin.c's parse)."""
    n = len(frame)
    if n < 14:
        return None
    et = int.from_bytes(frame[12:14], "big")
    off = 14
    vlan = [0, 0]
    tags = 0
    while et in _VLAN_TPIDS:
        if tags == 2 or off + 4 > n:
            return None
        vid = int.from_bytes(frame[off:off + 2], "big") & 0xFFF
        if not vid:
            return None
        vlan[tags] = vid
        tags += 1
        et = int.from_bytes(frame[off + 2:off + 4], "big")
        off += 4
    if et == _ETH_P_IP:
        if off + 20 > n or frame[off] >> 4 != 4:
            return None
        ihl = (frame[off] & 0xF) * 4
        ip_len = int.from_bytes(frame[off + 2:off + 4], "big")
        if ihl < 20 or ip_len < ihl or off + ip_len > n:
            return None
        if int.from_bytes(frame[off + 6:off + 8], "big") & 0x3FFF or frame[off + 9] != 6:
            return None
        src, dst = bytes(frame[off + 12:off + 16]), bytes(frame[off + 16:off + 20])
        l4, ip_end, version = off + ihl, off + ip_len, 4
    elif et == _ETH_P_IPV6:
        if off + 40 > n or frame[off] >> 4 != 6 or frame[off + 6] != 6:
            return None
        ip_len = 40 + int.from_bytes(frame[off + 4:off + 6], "big")
        if off + ip_len > n:
            return None
        src, dst = bytes(frame[off + 8:off + 24]), bytes(frame[off + 24:off + 40])
        l4, ip_end, version = off + 40, off + ip_len, 6
    else:
        return None
    if l4 + 20 > ip_end:
        return None
    doff = (frame[l4 + 12] >> 4) * 4
    if doff < 20 or l4 + doff > ip_end:
        return None
    a = src.ljust(16, b"\0") + bytes(frame[l4:l4 + 2])
    b = dst.ljust(16, b"\0") + bytes(frame[l4 + 2:l4 + 4])
    direction = 1 if a > b else 0
    lo, hi = (b, a) if direction else (a, b)
    key = _KEY.pack(lo[:16], hi[:16], lo[16:], hi[16:], vlan[0], vlan[1], version, 6)
    seq, ack = struct.unpack_from("!II", frame, l4 + 4)
    window = int.from_bytes(frame[l4 + 14:l4 + 16], "big")
    return key, direction, frame[l4 + 13], seq, ack, ip_len, ip_end - l4 - doff, window, l4 + doff


def _after(a, b):
    """Whether sequence number a lies after b (signed 32-bit distance above 0)."""
    return 0 < (a - b) & _SEQ_MASK < 0x80000000


def _fast_forward(rec, d, flags, seq, ack, payload_len, window, payload_off):
    """_kerneltwin.c's fast_forward: whether a frame of a FAST_FORWARD entry is regular;
    if so both streams and the window edge move on (the counts are the caller's)."""
    end = (seq + payload_len) & _SEQ_MASK
    if (not rec.ff_ok or flags & 0x27 or not flags & 0x10 or seq != rec.ff_next[d]
            or _after(ack, rec.ff_next[1 - d])
            or (payload_len and (not rec.ff_data_ok[d]
                                 or (rec.ff_edge_known[d] and _after(end, rec.ff_edge[d]))))):
        return False
    if rec.ff_edge_moves:
        edge = (ack + (window << rec.ff_shift[d])) & _SEQ_MASK
        if not rec.ff_edge_known[1 - d] or _after(edge, rec.ff_edge[1 - d]):
            rec.ff_edge[1 - d] = edge
            rec.ff_edge_known[1 - d] = 1
    rec.ff_next[d] = end
    rec.ff_last_dir, rec.ff_last_off, rec.ff_last_len = d, payload_off, payload_len
    return True


def _count(rec, d, frame_len, ip_len, payload_len, flags):
    """A frame the entry keeps, counted in direction d."""
    rec.packets[d] += 1
    rec.bytes[d] += payload_len
    rec.frame_bytes[d] += frame_len
    rec.ip_bytes[d] += ip_len
    rec.tcp_flags[d] |= flags


def claim_python(table, frame, ts_us, stamp):
    """_kerneltwin.claim in Python: the flow whose entry counted the frame, or None."""
    if not table:
        return None
    parsed = _parse(frame)
    if parsed is None:
        return None
    key, d, flags, seq, ack, ip_len, payload_len, window, payload_off = parsed
    entry = table.get(key)
    if entry is None:
        return None
    raw, flow = entry
    rec = TwinRecord.from_buffer(raw)
    if rec.action == FAST_FORWARD:
        if not _fast_forward(rec, d, flags, seq, ack, payload_len, window, payload_off):
            rec.ff_ok = 0
            return None
        rec.last_seen_ns = ts_us * 1000
        if payload_len:
            if not rec.first_data_ns[d]:
                rec.first_data_ns[d] = stamp
        elif not rec.first_ack_ns[d]:
            rec.first_ack_ns[d] = stamp
        _count(rec, d, len(frame), ip_len, payload_len, flags)
        return flow
    if rec.action not in ACTION_NAMES:
        return None
    armed = rec.watch_armed[d]
    watched = bool(armed and flags & 0x10 and (
        armed == MX_WATCH_ANY or (ack - rec.ack_watch[d]) & 0xFFFFFFFF < 0x80000000))
    rec.last_seen_ns = ts_us * 1000
    if not flags & _SYN_FIN_RST:
        if payload_len:
            if not rec.first_data_ns[d]:
                rec.first_data_ns[d] = stamp
        elif flags & 0x10 and not rec.first_ack_ns[d]:
            rec.first_ack_ns[d] = stamp
        if not watched:
            end = (seq + payload_len) & 0xFFFFFFFF
            if not rec.packets[d] or 0 < (end - rec.seq_end[d]) & 0xFFFFFFFF < 0x80000000:
                rec.seq_end[d] = end
            _count(rec, d, len(frame), ip_len, payload_len, flags)
            return flow
        rec.watch_armed[d] = 0
    elif rec.action != MX_ACTION_DROP:
        if watched:
            rec.watch_armed[d] = 0
        if flags & 0x03:
            rec.ack_watch[1 - d] = (seq + payload_len + (1 if flags & 0x02 else 0)
                                    + (1 if flags & 0x01 else 0)) & 0xFFFFFFFF
            rec.watch_armed[1 - d] = MX_WATCH_ARMED
    return None


def _compiled_claim():
    try:
        from ._kerneltwin import RECORD_SIZE, claim as compiled
    except ImportError:
        return None
    assert RECORD_SIZE == ct.sizeof(TwinRecord), (RECORD_SIZE, ct.sizeof(TwinRecord))
    return compiled


claim = (None if PURE_PYTHON else _compiled_claim()) or claim_python
