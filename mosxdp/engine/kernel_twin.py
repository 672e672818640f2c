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
frame's flow as the core would). (Offline the flows of MOSX_STATE_ONLY listeners stay with
the core: only the emulation counts missed bytes exactly, engine/run.py.)

``claim`` is C (_kerneltwin.c) unless MOSXDP_PURE_PYTHON is set or the module is missing;
``claim_python`` below is the same step in Python.
"""
from __future__ import annotations

import ctypes as ct
import struct

from ..core.compiled import PURE_PYTHON
from ..core.datagrams import DatagramFlow
from ..core.tcp import SYN_RCVD
from ..io.bpfstructs import (ACTION_NAMES, ACTIONS, MX_ACTION_DROP, MX_WATCH_ANY, MX_WATCH_ARMED,
                             MxVerdict)
from .hybrid import HybridProcessor

__all__ = ["TwinRecord", "KernelTwin", "TwinProcessor", "claim", "claim_python", "modelled"]


class TwinRecord(ct.Structure):
    """struct mx_verdict, then the TCP flags of the counted frames OR-ed per direction
    (the kernel does not keep them; Side.tcp_flags does)."""
    _fields_ = MxVerdict._fields_ + [("tcp_flags", ct.c_uint8 * 2), ("pad2", ct.c_uint8 * 6)]


def modelled(flow) -> bool:
    """Whether the twin takes the flow's frames: TCP, up to two VLAN tags, none with id 0
    (the key holds two ids, 0 for none: a tag of id 0 and no tag would meet)."""
    if isinstance(flow, DatagramFlow):
        return False      # the datagram table counts every datagram itself offline
    vlan_ids = flow.keys[0][4]
    return len(vlan_ids) <= 2 and 0 not in vlan_ids


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


class TwinProcessor(HybridProcessor):
    """HybridProcessor on a KernelTwin: the stack's verdicts go to the twin (the flows it
    models), its counts join the flows as the kernel's do live, and the frames and TCP
    segments it counted join the stack's counters."""

    def __init__(self, stack):
        super().__init__(stack, KernelTwin())
        self.table = self.program.table

    def apply(self) -> None:
        stack = self.stack
        updates, stack.kernel_updates = stack.kernel_updates, []
        for action, flow in updates:
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
    return key, direction, frame[l4 + 13], seq, ack, ip_len, ip_end - l4 - doff


def claim_python(table, frame, ts_us, stamp):
    """_kerneltwin.claim in Python: the flow whose entry counted the frame, or None."""
    if not table:
        return None
    parsed = _parse(frame)
    if parsed is None:
        return None
    key, d, flags, seq, ack, ip_len, payload_len = parsed
    entry = table.get(key)
    if entry is None:
        return None
    raw, flow = entry
    rec = TwinRecord.from_buffer(raw)
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
            rec.packets[d] += 1
            rec.bytes[d] += payload_len
            rec.frame_bytes[d] += len(frame)
            rec.ip_bytes[d] += ip_len
            rec.tcp_flags[d] |= flags
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
