"""The monitoring stack: flows, dual-side TCP emulation, reassembly, events.

Sans-IO: `Stack.process(frame, ts_us, port)` takes one frame (a writable
memoryview), its timestamp in microseconds and the port it came in on, runs
the monitor applications' callbacks and returns the verdict. Frames made by
mtcp_sendpkt wait in `outbox` for the engine. Time only moves when the engine
says so (packet timestamps offline, a monotonic clock live), so replays are
deterministic.

Order for one TCP segment of a known flow (API.md):
  MOS_NULL PKT_IN -> sender side update -> MOS_HK_SND callbacks (side = sender)
  -> [not if dropped at HK_SND] receiver side update + reassembly
  -> MOS_HK_RCV callbacks (side = receiver) -> MOS_NULL ERROR -> verdict.
Events of one update are dispatched in ascending event-bit order.

The Stack is this module's orchestration (process, end of batch, the raw sockets and
orphans) over its parts, one module each: events.EventDispatch (callbacks, timers),
sockets.SocketTable, flow.FlowTable (flows, ends, expiry, eviction), tcp.TcpEmulation
(segments with SYN, FIN or RST) and streams.StreamDelivery (reassembly delivery,
catch-up, CONN_NEW_DATA). They are mixins rather than objects the Stack holds because
the per-frame path cannot afford an attribute hop per call: a Python call already costs
~500 instructions per frame. The common data segment is handled inline in process()
for the same reason.

Resource limits, each with a configuration key (StackConfig) and a counter:

  limit                          key                 counter(s)
  -----------------------------  ------------------  ---------------------------------------
  flows tracked at once          max_concurrency     flows_evicted (half_open_evicted of them)
  reassembly window per side     rmem_size           buffer_overruns (bytes not yet peeked lost)
  window grown behind a hole     rmem_max            buffers_grown
  all reassembly buffers         reassembly_memcap   memcap_refused
  handshake never completes      tcp_syn_timeout     half_open_timeouts
  out-of-order runs per side     max_fragments       refused_fragments

UDP and ICMP flows live in a table of their own (datagrams.DatagramTable, made by
datagram_table() when something needs them); process() hands it the non-TCP frames.
"""
from dataclasses import dataclass

# Type declarations for the compiled build (setup.py; stack.pxd cimports the types); in plain
# Python cython.locals is a decorator that changes nothing.
import cython

from .constants import (MOS_NULL, MOS_OVERLAP_POLICY_FIRST, MOS_SIDE_BOTH, MOS_SIDE_CLI,
                        MOS_SIDE_SVR, TH_ACK, TH_FIN, TH_RST, TH_SYN)
from .datagrams import (DATAGRAM_COUNTERS, DEFAULT_ICMP_TIMEOUT, DEFAULT_UDP_TIMEOUT,
                        DatagramTable)
from .edits import FrameEdit, StreamEdits, leave, payload_limit, unmap_acks
from .events import (EV_ERROR, EV_ORPHAN, EV_PKT_IN, EV_REXMIT, EV_TCP_STATE_CHANGE, HOOK_NULL,
                     HOOK_RCV, HOOK_SND, ORDER_NEW_DATA, VERDICT_DROP, VERDICT_FORWARD, VERDICT_REPLACED,
                     EventDispatch, exception_site)
from .flow import DEFAULT_TCP_SYN_TIMEOUT, Flow, FlowTable, Side
from .packet import CUT_HEADERS, Packet, PacketError, TruncatedHeader, parse_cut_frame, parse_frame
from .sockets import SocketTable
from .stack_state import StackState
from .streams import DEFAULT_REASSEMBLY_MEMCAP, StreamDelivery
from .tcp import (FINISHED_STATES, NO_DATA_STATES, SEQ_HALF, SEQ_MASK, SEQ_MOD, SYN_RCVD,
                  TcpEmulation, acks_syn_or_fin, seq_delta)

SIDE_NAMES = ("client", "server")
_SYN_FIN_RST = TH_SYN | TH_FIN | TH_RST
_NULL_SIDE = int(MOS_NULL)  # the side value raw-socket callbacks receive, as in mOS
# Kernel verdicts whose entry watches for the ACK of each SYN and FIN (bpf/mosxdp.h).
_WATCHED = ("bypass", "state_only")

# The counters of the limits (and of the odd inputs that go with them), which the run's
# summary shows when they moved.
LIMIT_COUNTERS = (
    "half_open_evicted", "half_open_timeouts", "memcap_refused", "refused_fragments",
    "bad_tcp_options", "urgent_data", "buffers_grown",
)
# Every counter of Stack.counters (all start at 0).
COUNTER_NAMES = (
    "frames", "tcp_segments", "non_tcp", "ip_fragments", "flows_created", "flows_ended",
    "flows_evicted", "orphans", "rst_ignored", "syn_payload_ignored", "window_overruns",
    "buffer_overruns", "callback_errors", "dropped", "bypassed_packets", "malformed",
    "resized_frames", "cut_frames", "cut_bytes", "cut_headers",
) + LIMIT_COUNTERS + DATAGRAM_COUNTERS


@dataclass
class StackConfig:
    """The mOS knobs of the core (see docs/config.md for the file keys)."""
    rmem_size: int = 262144          # per-side reassembly window, bytes (0: buffering off)
    # Bytes a window may grow to so that data the receiver may still accept waits behind a
    # hole instead of pushing it out (TCP windows reach MBs); 0: never grow.
    rmem_max: int = 16 << 20
    max_concurrency: int = 100000    # flows tracked at once; the least recently active goes
    tcp_timeout: float = 30.0        # idle seconds before a flow ends; <= 0 disables
    tcp_tw_interval: float = 0.0     # seconds a TIME_WAIT side keeps the flow alive
    overlap_policy: int = MOS_OVERLAP_POLICY_FIRST
    midstream_pickup: bool = False   # a non-SYN segment of no flow starts an ESTABLISHED flow
    max_fragments: int = 1024        # out-of-order fragments per side
    on_callback_error: str = "forward"   # forward | drop | stop
    # Limits: bytes over all stream buffers (0: no cap), and idle seconds of a flow whose
    # handshake has not completed (<= 0: only tcp_timeout applies).
    reassembly_memcap: int = DEFAULT_REASSEMBLY_MEMCAP
    tcp_syn_timeout: float = DEFAULT_TCP_SYN_TIMEOUT
    # Idle seconds before a UDP / ICMP flow ends (<= 0: only at the end of the run).
    udp_timeout: float = DEFAULT_UDP_TIMEOUT
    icmp_timeout: float = DEFAULT_ICMP_TIMEOUT


def _not_cut():
    """Stack.wire_len where no frame is cut (live, crafted frames)."""
    return 0


class StopMonitor(Exception):
    """Raised out of process() (or end_batch()) when a callback raised and on_callback_error
    is 'stop', or a callback called sys.exit(): ``code`` is then the exit status it asked
    for (0 for sys.exit() or sys.exit(None), 1 for a message), else 1."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


class Stack(EventDispatch, SocketTable, FlowTable, TcpEmulation, StreamDelivery, StackState):
    """One monitoring context's core (an mctx). Its per-frame attributes are StackState's
    (C fields in the compiled build)."""

    def __init__(self, config=None, handle=None, registry=None, on_callback_error=None):
        self.config = config or StackConfig()
        self.now = 0
        # Added to flow timestamps reported to apps: live clocks are monotonic,
        # logs want wall-clock time (0 offline: packet timestamps are wall-clock).
        self.wall_offset_us = 0
        self.outbox = []                     # (frame, egress port) made by mtcp_sendpkt & co
        # What leaves instead of the frame when process() says VERDICT_REPLACED.
        self.wire_frames = []
        # The ACKs toward an edited side come from a receiver that got the edited stream
        # (live inline; offline and passive the endpoints saw no edit): see _edited_frame.
        self.acks_on_wire = False
        # The input's frame number of the frame being processed, or after which the batch
        # ends, as an engine with several workers sets it (0 otherwise); order_key: see
        # flow.py ORDER_*.
        self.frame_no = 0
        self.order_key = None
        # The engine's: the length on the wire of the frame being processed when the
        # capture cut it (caplen < orig_len), else 0. Asked only of frames that do not parse.
        self.wire_len = _not_cut
        self.cut_pkt = None   # the last packet parsed from a cut frame's headers
        self._init_dispatch(handle, registry, on_callback_error)
        self._init_sockets()
        self._init_flows()
        self._init_streams()
        # Read through the `counters` property, which fills in the two counters every frame
        # moves: tcp_segments is an attribute (cheaper to bump than a dict entry), and frames
        # is the sum of the four kinds a frame is counted as (exactly one each).
        self.tcp_segments = 0
        self._counters = dict.fromkeys(COUNTER_NAMES, 0)
        self.malformed = {}
        self.datagrams = None     # DatagramTable once datagram_table() made it

    def datagram_table(self):
        """The UDP and ICMP flow table (datagrams.py), made on first use."""
        if self.datagrams is None:
            self.datagrams = DatagramTable(self)
        return self.datagrams

    @property
    def counters(self):
        """The core's counters by name (COUNTER_NAMES; the dict itself, kept up to date)."""
        counters = self._counters
        tcp_segments = counters["tcp_segments"] = self.tcp_segments
        counters["frames"] = (tcp_segments + counters["non_tcp"] + counters["ip_fragments"]
                              + counters["malformed"])
        return counters

    def monitor_filters(self):
        """What the monitor sockets can want, for a filter in front of the core (the kernel
        filter): ``(stream, raw)``, lists of ``(socket id, domain, MonitorFilter or None)``
        in socket order; None wants every frame. ``stream``: each listener's SYN filter and,
        when orphans can matter to it (an ORPHAN callback, or midstream pickup), its orphan
        filter; ``raw``: each raw socket's filter."""
        stream = []
        for sock in self.listeners:
            stream.append((sock.id, sock.domain, sock.syn_filter))
            if self._picks_up(sock) or sock.table.masks[HOOK_NULL] & EV_ORPHAN:
                stream.append((sock.id, sock.domain, sock.orphan_filter))
        raw = [(sock.id, sock.domain, sock.raw_filter) for sock in self.raw_sockets]
        return stream, raw

    def datagram_filters(self):
        """What the UDP and ICMP flow watchers want, for the kernel filter: a list of
        ``(watcher id, domain, MonitorFilter or None)``; None wants every such flow. A
        flow's frames go both ways, so the kernel tests each frame both ways too."""
        if self.datagrams is None:
            return []
        return [(w.id, w.domain, w.filter) for w in self.datagrams.watchers]

    # Compiled, the frame's Packet, its Flow and Sides, and the Stack's per-frame attributes
    # are read as C structs (packet.pxd, flow.pxd, stack_state.pxd).
    @cython.locals(self=StackState, pkt=Packet, flow=Flow, snd=Side, rcv=Side)
    def process(self, frame, ts_us, port):
        self.now = ts_us
        try:
            pkt = parse_frame(frame)
        except PacketError as exc:
            pkt = self._unparsed(frame, exc)
            if pkt is None:
                return VERDICT_FORWARD
        self.cur_pkt = pkt
        self.cur_frame = frame
        self.cur_drop = False
        # cur_flow is None here: the `finally` below resets it.
        try:
            # A non-IP frame has ip_proto 0.
            if pkt.ip_proto != 6 or pkt.is_fragment:
                if pkt.is_fragment:
                    self._counters["ip_fragments"] += 1
                else:
                    self._counters["non_tcp"] += 1
                if self.raw_sockets:
                    self._raw_packet(pkt, orphan=True)
                if self.cur_drop:
                    return VERDICT_DROP
                datagrams = self.datagrams
                if datagrams is not None and pkt.ip_version and not pkt.is_fragment:
                    drop = datagrams.process(pkt, ts_us)
                    if self._exit_work:     # a flow evicted for it ended, its callback stops
                        return self._verdict(VERDICT_DROP if drop else VERDICT_FORWARD)
                    if drop:
                        return VERDICT_DROP
                return VERDICT_FORWARD
            self.tcp_segments += 1
            if self.raw_sockets:
                key = (pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.vlan_ids)
                self._raw_packet(pkt, orphan=key not in self.flows)
                if self.cur_drop:
                    return VERDICT_DROP
            # The TCP segment is handled here, not in a method of its own (a Python call
            # costs ~500 instructions per frame). Its verdicts go through _verdict; the
            # common one, a forwarded data segment with no stop requested, is checked inline.
            # The key is made after the raw sockets' callbacks: they may rewrite the headers.
            key = (pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.vlan_ids)
            entry = self.flows.get(key)
            flags = pkt.flags
            syn_fin_rst = flags & _SYN_FIN_RST   # 0 for the common data segment: one test
            if entry is not None:
                flow, sender, snd, rcv = entry
                if syn_fin_rst and flags & TH_SYN and not flags & TH_ACK and sender == MOS_SIDE_CLI:
                    client = flow.sides[MOS_SIDE_CLI]
                    if client.isn is not None and pkt.seq != client.isn and (
                            flow.sides[MOS_SIDE_SVR].state in FINISHED_STATES
                            or client.state in FINISHED_STATES):
                        # The 4-tuple is reused by a new connection.
                        self.destroy_flow(flow, "rst" if flow.rst_seen else "fin")
                        entry = None
            if entry is None:
                if flags & TH_SYN and not flags & TH_ACK:
                    flow = self._new_flow(pkt, key, ts_us, midstream=False)
                else:
                    flow = self._orphan(pkt, key, ts_us)
                if flow is None:
                    return self._verdict(VERDICT_DROP if self.cur_drop else VERDICT_FORWARD)
                flow, sender, snd, rcv = self.flows[key]
            self.cur_flow = flow
            if flow.fast_forward:
                self.ff_catch_up(flow)   # the frames the engine took since the last one
            if flow.edits is not None:
                self._edited_frame(flow, sender, pkt)
            flow.last_ts = ts_us
            flow.last_no = self.frame_no
            self.lru.move_to_end(flow)
            snd.last_pkt = pkt
            if not flow.pkt_listed:   # its frame is copied before the engine reuses it
                flow.pkt_listed = True
                self.pkt_flows.append(flow)
            half_open = self.half_open
            if half_open and flow in half_open:   # usually empty: no lookup then
                half_open.move_to_end(flow)
            snd.pkts += 1
            snd.ip_bytes += pkt.ip_len
            snd.l2_bytes += pkt.frame_len
            snd.tcp_flags |= flags
            if snd.port is None:
                snd.port = port
                snd.l2_header = bytes(pkt.buf[:pkt.l3_off])
            if flow.bypass:
                if not syn_fin_rst and snd.snd_nxt is not None and snd.peer_base is not None \
                        and not (flags & TH_ACK and flow.kernel_verdict in _WATCHED
                                 and acks_syn_or_fin(rcv, pkt.ack)):
                    # The kernel handles such frames live (the few that reach user space
                    # meanwhile are counted here); offline we only count them.
                    self._counters["bypassed_packets"] += 1
                    carried = pkt.payload_len
                    if len(pkt.buf) < pkt.frame_len:
                        # cut by the capture's snap length: the bytes cut off are missed
                        carried = max(0, min(carried, len(pkt.buf) - pkt.payload_off))
                    snd.bypassed_bytes += carried
                    snd.bypassed_pkts += 1
                    snd.bypassed_l2_bytes += pkt.frame_len
                    end = (pkt.seq + pkt.payload_len) & SEQ_MASK
                    if snd.carried_end is None or seq_delta(end, snd.carried_end) > 0:
                        snd.carried_end = end
                    if self.kernel_sync is not None and not snd.history_bits & (
                            32 if pkt.payload_len else 4 if flags & TH_ACK else 0xFF):
                        # A new letter: those of the frames the kernel kept before come first.
                        self.kernel_sync(flow)
                    self._history(flow, snd, sender, pkt, flags)
                    return self._verdict(VERDICT_DROP if flow.kernel_verdict == "drop"
                                         else VERDICT_FORWARD)
                # SYN, FIN, RST, the first ACK of a SYN or FIN (the kernel's ACK watch), or a
                # frame of a stream not known yet: the emulation sees it, after the streams
                # the kernel carried.
                if self.kernel_sync is not None:
                    self.kernel_sync(flow)
                self._catch_up(snd, rcv, pkt)
            if syn_fin_rst or snd.snd_nxt is None or snd.peer_base is None:
                return self._verdict(self._segment(flow, pkt, sender, snd, rcv))
            # The common case, kept lean: no SYN, FIN or RST, both streams known.
            payload_len = pkt.payload_len
            if not snd.history_bits & (32 if payload_len else 4):
                self._history(flow, snd, sender, pkt, flags)
            # cur_drop is still False: a callback run since it was cleared returned above, or
            # its packet went to _segment().
            if flow.masks_epoch != self.mask_epoch:
                self._flow_masks(flow)
            null_mask, snd_mask, rcv_mask = flow.masks
            if null_mask & EV_PKT_IN:
                self._fire_flow(flow, HOOK_NULL, sender, EV_PKT_IN)
            # Sender: a segment ending at or before snd_nxt was sent before.
            snd_events = EV_PKT_IN
            seq_end = (pkt.seq + payload_len) & SEQ_MASK
            ahead = (seq_end - snd.snd_nxt) & SEQ_MASK
            if ahead and ahead < SEQ_HALF:
                snd.snd_nxt = seq_end
            elif payload_len:
                snd_events |= EV_REXMIT
                snd.rexmit = (pkt.seq, payload_len)
            snd_transitions = 0
            acked = flags & TH_ACK
            if acked:
                window_known = flow.window_known
                peer_fin_off = snd.peer_fin_off
                if window_known or peer_fin_off is not None:
                    # _sender_ack inlined for a segment without SYN (peer_base is known here).
                    rcv_nxt = snd.rcv_nxt
                    delta = (pkt.ack - snd.peer_base - rcv_nxt) & SEQ_MASK
                    ack_off = rcv_nxt + (delta - SEQ_MOD if delta >= SEQ_HALF else delta)
                    if window_known:
                        edge = ack_off + (pkt.window << snd.wscale if flow.window_scaled
                                          else pkt.window)
                        right_edge = snd.right_edge
                        if right_edge is None or edge > right_edge:
                            snd.right_edge = edge
                    if ack_off > rcv_nxt:   # it has bytes the monitor has not (yet) in order
                        self._acked_unseen(flow, sender, snd, ack_off)
                    if peer_fin_off is not None and not snd.fin_received and ack_off > peer_fin_off:
                        # The endpoint acknowledges a FIN the monitor could not deliver in
                        # order (it missed bytes before it): the endpoint has it, so do we.
                        snd_transitions = self._receive_fin(snd)
                        if snd_transitions:
                            snd_events |= EV_TCP_STATE_CHANGE
            if snd_mask & snd_events:
                self._fire_flow(flow, HOOK_SND, sender, snd_events)
            if self.cur_drop:
                self._after_packet(flow)
                return self._verdict(VERDICT_DROP)
            # Receiver.
            rcv_events = EV_PKT_IN
            rcv_transitions = 0
            if acked and (rcv.state == SYN_RCVD
                          or (rcv.fin_seq is not None and not rcv.fin_acked)):
                rcv_transitions = self._receiver_ack(rcv, pkt.ack, flags)
            if payload_len and rcv.peer_base is not None and rcv.state not in NO_DATA_STATES:
                rcv_events |= self._receive_payload(flow, pkt, 1 - sender, rcv)
            if rcv.peer_fin_off is not None and not rcv.fin_received \
                    and rcv.rcv_nxt >= rcv.peer_fin_off:
                rcv_transitions += self._receive_fin(rcv)
            if rcv_transitions:
                rcv_events |= EV_TCP_STATE_CHANGE
            if rcv_mask & rcv_events:
                self._fire_flow(flow, HOOK_RCV, 1 - sender, rcv_events & ~EV_ERROR)
            if rcv_events & EV_ERROR and null_mask & EV_ERROR:
                self._fire_flow(flow, HOOK_NULL, 1 - sender, EV_ERROR)
            if snd_transitions or rcv_transitions:
                self._after_packet(flow)
            if self.cur_drop or self._exit_work:
                return self._verdict(VERDICT_DROP if self.cur_drop else VERDICT_FORWARD)
            return VERDICT_FORWARD
        finally:
            flow = self.cur_flow
            self.cur_pkt = None
            self.cur_flow = None
            if flow is not None:
                if flow.fast_forward:
                    self.ff_reload(flow)
                elif flow.ff_wait:
                    flow.ff_wait -= 1
                    if not flow.ff_wait and not flow.rst_seen:
                        cli, svr = flow.sides
                        if cli.fin_seq is None and svr.fin_seq is None:   # its end not begun
                            self.kernel_updates.append(("fast_forward", flow))

    def _unparsed(self, frame, exc):
        """A frame parse_frame refused. One the capture cut (a snap length: the engine's
        wire_len() is longer than the frame) with all its headers is parsed from them: the
        packet goes on through process(), its missing payload lost (_receive_cut_payload).
        Else None: the frame is malformed, counted by kind (a cut inside the headers as
        cut_headers)."""
        wire_len = self.wire_len()
        if wire_len > len(frame) and isinstance(exc, TruncatedHeader):
            try:
                pkt = parse_cut_frame(frame, wire_len)
            except PacketError as cut_exc:
                exc = cut_exc
                if exc.counter == CUT_HEADERS:
                    self._counters["cut_headers"] += 1
            else:
                self._counters["cut_frames"] += 1
                self._counters["cut_bytes"] += pkt.l3_off + pkt.ip_len - len(frame)
                self.cut_pkt = pkt
                return pkt
        self._counters["malformed"] += 1
        self.malformed[exc.counter] = self.malformed.get(exc.counter, 0) + 1
        return None

    def _verdict(self, verdict):
        """A TCP segment's verdict, its drop counted, an edited segment's way out (see
        _edited_frame); StopMonitor when a callback raised and on_callback_error is 'stop'."""
        if self._exit_work:
            self._exit_work = self._stop_requested
            edit, self.cur_edit = self.cur_edit, None
            if edit is not None and edit.pkt is self.cur_pkt and verdict == VERDICT_FORWARD:
                verdict = self._leave_edited(edit)
        if verdict == VERDICT_DROP:
            self._counters["dropped"] += 1
            # A dropped frame goes back to the engine's fill ring before end_batch.
            self._keep_last_packets()
        if self._stop_requested:
            raise self._stop_error()
        return verdict

    def _edited_frame(self, flow, sender, pkt):
        """A segment of a flow with size-changing payload edits (core/edits.py). Toward a
        side whose stream was edited, its ACK and SACK blocks go back to that side's
        numbering before anything reads them (live inline only: elsewhere the receiver
        never saw the edits). From a side whose stream was edited, it gets its FrameEdit:
        callbacks see and edit its payload as the receiver will, and _leave_edited puts it
        in the receiver's numbering."""
        edits = flow.edits
        peer = edits[1 - sender]
        if peer is not None and pkt.flags & TH_ACK:
            if self.acks_on_wire:
                unmap_acks(pkt, peer)
            else:
                peer.note_acked(peer.offset(pkt.ack))
        own = edits[sender]
        if own is not None:
            self.cur_edit = FrameEdit(pkt, sender, own)
            self._exit_work = True

    def edit_current(self, sock_flow):
        """The FrameEdit of the segment being processed (a segment of `sock_flow`), made
        now if its direction has no edits yet: from here on the flow is remapped. Raises
        ValueError when the segment's size cannot change."""
        pkt = self.cur_pkt
        if pkt.flags & (TH_SYN | TH_RST) or not pkt.payload_len:
            raise ValueError("only the payload of a segment without SYN or RST can change "
                             "size (this one has " + ("SYN or RST)" if pkt.payload_len else
                                                      "no payload)"))
        if pkt is self.cut_pkt:
            raise ValueError("the capture cut this segment's payload (a snap length): its "
                             "size cannot change")
        if sock_flow.bypass:
            raise ValueError("the flow is bypassed (MOSX_BYPASS, MOSX_DROP_FLOW or MOS_STOP_MON "
                             "on every socket): its frames no longer all pass the monitor")
        edit = self.cur_edit
        if edit is not None and edit.pkt is pkt:
            return edit
        flow = sock_flow
        sender = 0 if flow.keys[0] == (pkt.src, pkt.sport, pkt.dst, pkt.dport,
                                       pkt.vlan_ids) else 1
        own = flow.edits[sender] if flow.edits is not None else None
        if own is None:
            snd = flow.sides[sender]
            seq_end = (pkt.seq + pkt.payload_len + (1 if pkt.flags & TH_FIN else 0)) & SEQ_MASK
            if snd.snd_nxt is None or seq_delta(seq_end, snd.snd_nxt) < 0 \
                    or snd.rexmit == (pkt.seq, pkt.payload_len):
                raise ValueError("this segment repeats bytes sent before (a retransmission): "
                                 "the receiver may have them, their size cannot change")
            # Everything the side sent before this segment counts as forwarded.
            own = StreamEdits(pkt.seq)
            if flow.edits is None:
                flow.edits = [None, None]
            flow.edits[sender] = own
        edit = self.cur_edit = FrameEdit(pkt, sender, own)
        self._exit_work = True
        return edit

    def _leave_edited(self, edit):
        """A forwarded segment of an edited direction, in its receiver's numbering:
        rewritten in place, or replaced by `wire_frames` (VERDICT_REPLACED)."""
        flow = self.cur_flow
        receiver = flow.sides[1 - edit.sender]
        frames = leave(edit, payload_limit(edit.pkt, receiver.mss))
        if frames is None:
            return VERDICT_FORWARD
        self.wire_frames[:] = frames     # the list itself may be shared (engine/group.py)
        # The engine may write the new frame over the old one: the flow's last packet
        # (mtcp_getlastpkt in CONN_NEW_DATA) keeps a copy.
        edit.pkt.buf = bytes(edit.pkt.buf)
        self._counters["resized_frames"] += 1
        return VERDICT_REPLACED

    @staticmethod
    def _raw_takes(sock, pkt):
        """Raw socket `sock` gets frame `pkt`."""
        # A domain excludes the other IP version; non-IP frames (ARP) are for every one.
        if sock.domain and pkt.ip_version and sock.domain != pkt.ip_version:
            return False
        return sock.raw_filter is None or sock.raw_filter.match(pkt)

    def _raw_socket_takes(self, pkt):
        """Some raw socket gets frame `pkt`."""
        return any(self._raw_takes(sock, pkt) for sock in self.raw_sockets)

    def _raw_packet(self, pkt, orphan):
        for sock in self.raw_sockets:
            # (each filter just before its callback: an earlier one may rewrite the headers)
            if not self._raw_takes(sock, pkt):
                continue
            self._fire(sock, HOOK_NULL, _NULL_SIDE, EV_PKT_IN)
            if orphan:
                self._fire(sock, HOOK_NULL, _NULL_SIDE, EV_ORPHAN)

    def _orphan(self, pkt, key, ts):
        self._counters["orphans"] += 1
        matched = []
        for sock in self.listeners:
            if sock.domain and sock.domain != pkt.ip_version:
                continue
            if sock.orphan_filter is not None and not sock.orphan_filter.match(pkt):
                continue
            matched.append(sock)
            self._fire(sock, HOOK_NULL, MOS_SIDE_BOTH, EV_ORPHAN)
        # Only the listeners that pick up mid-stream flows get a socket of the new flow.
        pickers = [sock for sock in matched if self._picks_up(sock)]
        if not pickers or pkt.flags & TH_RST:
            return None
        return self._new_flow(pkt, key, ts, midstream=True, listeners=pickers)

    def _picks_up(self, listener):
        """Midstream pickup for a listener: its MOSX_MIDSTREAM, else midstream_pickup."""
        if listener.midstream is None:
            return self.config.midstream_pickup
        return listener.midstream

    def end_batch(self):
        """End of an RX batch: CONN_NEW_DATA, then timers and timeouts."""
        self.cut_pkt = None   # nor its frame's buffer kept for it
        self._keep_last_packets()
        if self.holes_due:
            self.holes_due_now()
        flows = self.new_data_flows
        if flows:
            self.new_data_flows = []
            for flow in flows:
                if not flow.destroyed:
                    self.order_key = (ORDER_NEW_DATA, flow.data_no)
                    if flow.fast_forward:
                        self.ff_catch_up(flow)   # its counts, before its callbacks read them
                    self._flush_new_data(flow)
        try:
            self._expire()
            if self.datagrams is not None:
                self.datagrams.expire(self.now)
        finally:
            self.order_key = None
        if self._stop_requested:
            raise self._stop_error()

    def finish(self):
        """End of input: the TCP flows end (FlowTable.finish), then the UDP and ICMP ones."""
        try:
            FlowTable.finish(self)
        finally:
            if self.datagrams is not None:
                self.datagrams.finish()

    def _stop_error(self):
        if self.exit_request is None:
            return StopMonitor("stopping: a callback raised and on_callback_error is 'stop'")
        callback, exc = self.exit_request
        code = exc.code
        status = 0 if code is None else code if isinstance(code, int) else 1
        name = getattr(callback, "__qualname__", repr(callback))
        return StopMonitor(f"stopping: callback {name} called sys.exit({code!r}) at "
                           f"{exception_site(exc)}", status)

    def flow_count(self):
        """Connections tracked now (ended ones are gone from the LRU)."""
        return len(self.lru)

    def keep_frames(self):
        """An engine is about to reuse the frames it handed over (a ring's space given
        back): the flows' last packets get copies of theirs."""
        self._keep_last_packets()

    def _keep_last_packets(self):
        """Copy the frames the flows' last packets point into (the engine reuses frame
        buffers after the batch, and offline a view keeps the reader's whole chunk;
        CONN_NEW_DATA and CONN_END callbacks may still read them). Only the flows whose
        last packet was set since the last call need it (pkt_flows: the LRU's tail is not
        them when the engine took frames of other flows without the core)."""
        flows = self.pkt_flows
        if flows:
            self.pkt_flows = []
            for flow in flows:
                flow.pkt_listed = False
                for side in flow.sides:
                    pkt = side.last_pkt
                    if pkt is not None and type(pkt.buf) is not bytes:
                        pkt.buf = bytes(pkt.buf)

    def advance_clock(self, ts_us):
        if ts_us > self.now:
            self.now = ts_us
        self.end_batch()

    def queue_frame(self, frame, egress_port):
        self.outbox.append((bytes(frame), egress_port))
