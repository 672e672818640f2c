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
"""
import errno
import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass

from .constants import (
    MOS_NULL,
    MOS_OVERLAP_POLICY_FIRST,
    MOS_OVERLAP_POLICY_LAST,
    MOS_SIDE_BOTH,
    MOS_SIDE_CLI,
    MOS_SIDE_SVR,
    TH_ACK,
    TH_FIN,
    TH_RST,
    TH_SYN,
    TH_URG,
)
from . import limits, tcp
from .events import (
    EV_CONN_END,
    EV_CONN_NEW_DATA,
    EV_CONN_START,
    EV_ERROR,
    EV_ORPHAN,
    EV_PKT_IN,
    EV_REXMIT,
    EV_TCP_STATE_CHANGE,
    HOOK_NULL,
    HOOK_RCV,
    HOOK_SND,
    CallbackTable,
    EventRegistry,
)
from .packet import PacketError, parse_frame
from .reassembly import StreamBuffer
from .tcp import SEQ_HALF, SEQ_MASK, SEQ_MOD, seq_delta

VERDICT_FORWARD = 0
VERDICT_DROP = 1

SIDE_NAMES = ("client", "server")
_SYN_ACK = TH_SYN | TH_ACK
_SYN_FIN_RST = TH_SYN | TH_FIN | TH_RST
_NO_DATA_STATES = (tcp.CLOSED, tcp.LISTEN)
_SYN_RCVD = tcp.SYN_RCVD
_NULL_SIDE = int(MOS_NULL)  # the side value raw-socket callbacks receive, as in mOS


@dataclass
class StackConfig:
    """The mOS knobs of the core (see docs/config.md for the file keys)."""
    rmem_size: int = 262144          # per-side reassembly window, bytes (0: buffering off)
    max_concurrency: int = 100000    # flows tracked at once; the least recently active goes
    tcp_timeout: float = 30.0        # idle seconds before a flow ends; <= 0 disables
    tcp_tw_interval: float = 0.0     # seconds a TIME_WAIT side keeps the flow alive
    overlap_policy: int = MOS_OVERLAP_POLICY_FIRST
    midstream_pickup: bool = False   # a non-SYN segment of no flow starts an ESTABLISHED flow
    max_fragments: int = 1024        # out-of-order fragments per side
    on_callback_error: str = "forward"   # forward | drop | stop
    # Limits (core/limits.py): bytes over all stream buffers (0: no cap), and idle seconds
    # of a flow whose handshake has not completed (<= 0: only tcp_timeout applies).
    reassembly_memcap: int = limits.DEFAULT_REASSEMBLY_MEMCAP
    tcp_syn_timeout: float = limits.DEFAULT_TCP_SYN_TIMEOUT


class StopMonitor(Exception):
    """Raised out of process() when on_callback_error is 'stop'."""


class Side:
    """One emulated endpoint: what it sent and what it received."""
    __slots__ = (
        "state", "isn", "snd_nxt", "fin_seq", "fin_acked", "wscale", "syn_seen",
        "peer_base", "rcv_nxt", "buf", "bufsize", "policy", "right_edge",
        "peer_fin_off", "fin_received", "unique_bytes", "max_end", "first_payload_seen",
        "pkts", "ip_bytes", "l2_bytes", "history_bits", "l2_header", "port",
        "bypassed_bytes",
    )

    def __init__(self, state, bufsize, policy):
        self.state = state
        self.isn = None            # our initial sequence number
        self.snd_nxt = None        # highest sequence number we sent, + 1
        self.fin_seq = None        # sequence number of our FIN
        self.fin_acked = False
        self.wscale = None         # our window scale option (SYN)
        self.syn_seen = False
        self.peer_base = None      # peer's sequence number of stream offset 0 (peer ISN + 1)
        self.rcv_nxt = 0           # offset of the first byte not yet received in order
        self.buf = None
        self.bufsize = bufsize
        self.policy = policy
        self.right_edge = None     # offset just beyond the window we advertised
        self.peer_fin_off = None
        self.fin_received = False
        self.unique_bytes = 0
        self.max_end = 0
        self.first_payload_seen = False
        self.pkts = 0              # packets this side sent
        self.ip_bytes = 0
        self.l2_bytes = 0
        self.history_bits = 0
        self.l2_header = None      # Ethernet (+tags) header of this side's first frame
        self.port = None           # port this side's frames come in on
        # Payload bytes this side sent in frames of a bypassed flow that the emulation did
        # not process (the kernel's, once merged, and the bypass path's), since its stream
        # was last caught up (_catch_up).
        self.bypassed_bytes = 0


class Flow:
    __slots__ = (
        "keys", "ip_version", "vlan_ids", "addrs", "ports_tcp", "sides", "socks",
        "start_ts", "last_ts", "history", "end_reason", "pending_data", "bypass",
        "rst_seen", "tw_deadline", "window_scaled", "window_known",
        "destroyed", "midstream", "kernel_verdict", "masks", "masks_epoch",
    )

    def __init__(self, key_cli, key_svr, pkt, ts):
        self.keys = (key_cli, key_svr)
        self.ip_version = pkt.ip_version
        self.vlan_ids = pkt.vlan_ids
        self.addrs = (key_cli[0], key_cli[2])
        self.ports_tcp = (key_cli[1], key_cli[3])
        self.sides = None
        self.socks = []
        self.start_ts = ts
        self.last_ts = ts
        self.history = []
        self.end_reason = None
        self.pending_data = 0      # bit i: side i has new in-order data this batch
        self.bypass = False
        self.rst_seen = False
        self.tw_deadline = None
        self.window_scaled = False
        self.window_known = False
        self.destroyed = False
        self.midstream = False
        self.kernel_verdict = None
        self.masks = (0, 0, 0)     # union over the flow's sockets: (MOS_NULL, HK_SND, HK_RCV)
        self.masks_epoch = -1


class Listener:
    """A MOS_SOCK_MONITOR_STREAM socket: the template of its flows' sockets."""
    __slots__ = ("id", "domain", "syn_filter", "orphan_filter", "table", "bufsize", "policy",
                 "closed")
    kind = "listener"

    def __init__(self, sock_id, domain):
        self.id = sock_id
        self.domain = domain          # 0: both, 4 or 6
        self.syn_filter = None
        self.orphan_filter = None
        self.table = CallbackTable()
        self.bufsize = [None, None]   # None: rmem_size
        self.policy = [None, None]
        self.closed = False


class RawSocket:
    __slots__ = ("id", "domain", "raw_filter", "table")
    kind = "raw"

    def __init__(self, sock_id, domain):
        self.id = sock_id
        self.domain = domain
        self.raw_filter = None
        self.table = CallbackTable()


class FlowSocket:
    """A MOS_SOCK_MONITOR_STREAM_ACTIVE socket: one listener's view of one flow."""
    __slots__ = ("id", "listener", "flow", "table", "peek_off", "monitoring", "uctx",
                 "so_error")
    kind = "flow"

    def __init__(self, sock_id, listener, flow):
        self.id = sock_id
        self.listener = listener
        self.flow = flow
        self.table = listener.table
        self.peek_off = [0, 0]
        self.monitoring = [True, True]
        self.uctx = None
        self.so_error = 0


class Stack:
    """One monitoring context's core (an mctx)."""

    def __init__(self, config=None, handle=None, registry=None, on_callback_error=None):
        self.config = config or StackConfig()
        self.handle = handle                 # what callbacks receive as mctx
        self.registry = registry or EventRegistry()
        # directed 4-tuple (+ VLANs) -> (flow, sender side index, sender Side, receiver Side)
        self.flows = {}
        self.lru = OrderedDict()             # flow -> None, least recently active first
        self.sockets = {}                    # id -> Listener | RawSocket | FlowSocket
        self.listeners = []
        self.raw_sockets = []
        self.ended_socket_ids = deque(maxlen=65536)
        self._ended_lookup = set()
        self.outbox = []
        self.kernel_updates = []             # (action, flow) for the engine's kernel verdict map
        # Hooks of an engine with a kernel verdict map (None: sans-IO, offline). Both take a
        # flow with a kernel verdict and add what the kernel counted for it to its sides
        # (Side.pkts/ip_bytes/l2_bytes/bypassed_bytes) and move flow.last_ts to the kernel's
        # last-seen time. on_flow_end also removes the kernel entry: it runs in destroy_flow
        # before the CONN_END callbacks. kernel_sync runs before the emulation processes a
        # frame of a bypassed flow, and before such a flow would idle out.
        self.on_flow_end = None
        self.kernel_sync = None
        self.now = 0
        # Added to flow timestamps reported to apps: live clocks are monotonic,
        # logs want wall-clock time (0 offline: packet timestamps are wall-clock).
        self.wall_offset_us = 0
        self.timers = []
        self._timer_seq = 0
        self.new_data_flows = []
        self.tw_flows = []
        # Read through the `counters` property, which fills in the two counters every frame
        # moves: tcp_segments is an attribute (cheaper to bump than a dict entry), and frames
        # is the sum of the four kinds a frame is counted as (exactly one each).
        self.tcp_segments = 0
        self._counters = {
            "frames": 0, "tcp_segments": 0, "non_tcp": 0, "ip_fragments": 0,
            "flows_created": 0, "flows_ended": 0, "flows_evicted": 0, "orphans": 0,
            "rst_ignored": 0, "syn_payload_ignored": 0, "window_overruns": 0,
            "buffer_overruns": 0, "callback_errors": 0, "dropped": 0, "bypassed_packets": 0,
            "malformed": 0,
        }
        for name in limits.LIMIT_COUNTERS:
            self._counters[name] = 0
        self.half_open = OrderedDict()       # flows before the handshake's end, LRU first
        self.buffer_mem = {}                 # flow -> bytes of stream buffers charged
        self.reassembly_mem = 0              # sum of buffer_mem (reassembly_memcap)
        self.reassembly_mem_peak = 0
        self.malformed = {}
        self.callback_errors = {}
        self.on_callback_error = on_callback_error   # fn(callback, exc, count) for logging
        self._stop_requested = False
        # Packet context of the callback being run.
        self.cur_pkt = None
        self.cur_frame = None
        self.cur_flow = None
        self.cur_drop = False
        self.cur_sock = None
        self.cur_hook = None
        self.cur_side = None
        self._next_socket_id = 1
        # Bumped whenever a registration or a socket's monitoring changes, so
        # flows recompute the event masks they cache.
        self.mask_epoch = 0

    @property
    def counters(self):
        """The core's counters by name (the dict itself: limits.py adds to it)."""
        counters = self._counters
        tcp_segments = counters["tcp_segments"] = self.tcp_segments
        counters["frames"] = (tcp_segments + counters["non_tcp"] + counters["ip_fragments"]
                              + counters["malformed"])
        return counters

    # ----------------------------------------------------------------- sockets
    def new_socket_id(self):
        sock_id = self._next_socket_id
        self._next_socket_id += 1
        return sock_id

    def add_listener(self, sock_id, domain):
        sock = Listener(sock_id, domain)
        self.sockets[sock_id] = sock
        self.listeners.append(sock)
        return sock

    def add_raw_socket(self, sock_id, domain):
        sock = RawSocket(sock_id, domain)
        self.sockets[sock_id] = sock
        self.raw_sockets.append(sock)
        return sock

    def socket_ended(self, sock_id):
        return sock_id in self._ended_lookup

    def _retire_socket_id(self, sock_id):
        if len(self.ended_socket_ids) == self.ended_socket_ids.maxlen:
            self._ended_lookup.discard(self.ended_socket_ids[0])
        self.ended_socket_ids.append(sock_id)
        self._ended_lookup.add(sock_id)
        self.sockets.pop(sock_id, None)

    def close_socket(self, sock):
        self.mask_epoch += 1
        if sock.kind == "listener":
            for cbs in sock.table.callbacks.values():
                cbs.clear()
            for hook in sock.table.masks:
                sock.table.masks[hook] = 0
                sock.table.wanted_udes[hook] = frozenset()
            sock.closed = True
            self.listeners.remove(sock)
            self.sockets.pop(sock.id, None)
        elif sock.kind == "raw":
            self.raw_sockets.remove(sock)
            self.sockets.pop(sock.id, None)
        else:
            self.stop_monitoring(sock, MOS_SIDE_BOTH)
            if sock in sock.flow.socks:
                sock.flow.socks.remove(sock)
            self._retire_socket_id(sock.id)

    def register(self, sock, event, hook, callback):
        table = sock.table
        if sock.kind == "flow" and table is sock.listener.table:
            table = sock.table = table.copy()
        table.set(self.registry, event, hook, callback)
        self.mask_epoch += 1

    def _flow_masks(self, flow):
        """The events any socket of the flow waits for, per hook (cached)."""
        if flow.masks_epoch != self.mask_epoch:
            null_mask = snd_mask = rcv_mask = 0
            for sock in flow.socks:
                masks = sock.table.masks
                null_mask |= masks[HOOK_NULL]
                snd_mask |= masks[HOOK_SND]
                rcv_mask |= masks[HOOK_RCV]
            flow.masks = (null_mask, snd_mask, rcv_mask)
            flow.masks_epoch = self.mask_epoch
        return flow.masks

    def stop_monitoring(self, sock, side):
        sides = (MOS_SIDE_CLI, MOS_SIDE_SVR) if side == MOS_SIDE_BOTH else (side,)
        for s in sides:
            sock.monitoring[s] = False
        self.mask_epoch += 1
        flow = sock.flow
        if not flow.destroyed and not any(any(fs.monitoring) for fs in flow.socks):
            # Nobody looks at this flow any more: the rest of it bypasses user space.
            self.set_bypass(flow, "bypass")

    def set_bypass(self, flow, action):
        if flow.kernel_verdict == action:
            return
        flow.kernel_verdict = action
        flow.bypass = True
        self.kernel_updates.append((action, flow))

    # ------------------------------------------------------------------ timers
    def add_timer(self, timer_id, timeout_us, callback):
        self._timer_seq += 1
        heapq.heappush(self.timers, (self.now + timeout_us, self._timer_seq, timer_id, callback))

    def _run_timers(self):
        timers = self.timers
        while timers and timers[0][0] <= self.now:
            _, _, timer_id, callback = heapq.heappop(timers)
            self._call(callback, timer_id, 0, 0, None, no_packet=True)

    # -------------------------------------------------------------- callbacks
    def _call(self, callback, sock_id, side, event, arg, no_packet=False):
        saved = (self.cur_side, self.cur_pkt)
        self.cur_side = side
        if no_packet:
            self.cur_pkt = None
        try:
            callback(self.handle, sock_id, side, event, arg)
        except Exception as exc:  # an app bug must not stop the datapath
            self._callback_failed(callback, exc)
        finally:
            self.cur_side, self.cur_pkt = saved

    def _callback_failed(self, callback, exc):
        self._counters["callback_errors"] += 1
        name = getattr(callback, "__qualname__", repr(callback))
        count = self.callback_errors.get(name, 0) + 1
        self.callback_errors[name] = count
        if self.on_callback_error is not None:
            self.on_callback_error(callback, exc, count)
        policy = self.config.on_callback_error
        if policy == "drop":
            self.cur_drop = True
        elif policy == "stop":
            self._stop_requested = True

    def _fire(self, sock, hook, side, event):
        table = sock.table
        if not table.masks[hook] & event:
            return
        self.cur_sock = sock
        self.cur_hook = hook
        callback = table.callbacks[hook].get(event)
        if callback is not None:
            self._call(callback, sock.id, side, event, None)
        udes = self.registry.defined_on.get(event)
        if udes:
            self._fire_udes(sock, hook, side, event, udes)
        # Outside filters and callbacks mtcp_raise_event has no socket to raise on.
        self.cur_sock = self.cur_hook = None

    def _fire_udes(self, sock, hook, side, base, udes):
        wanted = sock.table.wanted_udes[hook]
        for ude in udes:
            if ude.event_id not in wanted:
                continue
            self.cur_sock, self.cur_hook, self.cur_side = sock, hook, side
            try:
                matched = ude.filter(self.handle, sock.id, side, base, ude.arg)
            except Exception as exc:
                self._callback_failed(ude.filter, exc)
                matched = False
            if matched:
                self.fire_user_event(sock, hook, side, ude.event_id)

    def fire_user_event(self, sock, hook, side, event_id):
        ude = self.registry.udes[event_id]
        callback = sock.table.callbacks[hook].get(event_id)
        if callback is not None:
            self.cur_sock, self.cur_hook = sock, hook
            self._call(callback, sock.id, side, event_id, ude.arg)
        children = self.registry.defined_on.get(event_id)
        if children:
            self._fire_udes(sock, hook, side, event_id, children)

    def _fire_flow(self, flow, hook, side, events):
        """Raise `events` (a bit set) at `hook` for `side` on every socket of the flow."""
        for sock in flow.socks:
            if not sock.monitoring[side] or not sock.table.masks[hook] & events:
                continue
            bit = 1
            remaining = events
            while remaining:
                if remaining & bit:
                    if not sock.monitoring[side]:
                        break   # a callback of this packet stopped monitoring (MOS_STOP_MON)
                    self._fire(sock, hook, side, bit)
                    remaining &= ~bit
                bit <<= 1

    # --------------------------------------------------------------- packets
    def process(self, frame, ts_us, port):
        self.now = ts_us
        try:
            pkt = parse_frame(frame)
        except PacketError as exc:
            self._counters["malformed"] += 1
            self.malformed[exc.counter] = self.malformed.get(exc.counter, 0) + 1
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
                return VERDICT_DROP if self.cur_drop else VERDICT_FORWARD
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
                            flow.sides[MOS_SIDE_SVR].state in tcp.FINISHED_STATES
                            or client.state in tcp.FINISHED_STATES):
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
            flow.last_ts = ts_us
            self.lru.move_to_end(flow)
            half_open = self.half_open
            if half_open and flow in half_open:   # usually empty: no lookup then
                half_open.move_to_end(flow)
            snd.pkts += 1
            snd.ip_bytes += pkt.ip_len
            snd.l2_bytes += pkt.frame_len
            if snd.port is None:
                snd.port = port
                snd.l2_header = bytes(pkt.buf[:pkt.l3_off])
            if flow.bypass:
                if not syn_fin_rst and not (
                        flags & TH_ACK and rcv.fin_seq is not None and not rcv.fin_acked
                        and flow.kernel_verdict == "bypass"
                        and seq_delta(pkt.ack, rcv.fin_seq) > 0):
                    # The kernel handles such frames live (the few that reach user space
                    # meanwhile are counted here); offline we only count them.
                    self._counters["bypassed_packets"] += 1
                    snd.bypassed_bytes += pkt.payload_len
                    self._history(flow, snd, sender, pkt, flags)
                    return self._verdict(VERDICT_DROP if flow.kernel_verdict == "drop"
                                         else VERDICT_FORWARD)
                # SYN, FIN, RST, or the first ACK of a FIN (the kernel's ACK watch): the
                # emulation sees it, after the streams the kernel carried.
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
            if acked and (rcv.state == _SYN_RCVD
                          or (rcv.fin_seq is not None and not rcv.fin_acked)):
                rcv_transitions = self._receiver_ack(rcv, pkt.ack, flags)
            if payload_len and rcv.peer_base is not None and rcv.state not in _NO_DATA_STATES:
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
            if self.cur_drop or self._stop_requested:
                return self._verdict(VERDICT_DROP if self.cur_drop else VERDICT_FORWARD)
            return VERDICT_FORWARD
        finally:
            self.cur_pkt = None
            self.cur_flow = None

    def _verdict(self, verdict):
        """A TCP segment's verdict, its drop counted; StopMonitor when a callback raised
        and on_callback_error is 'stop'."""
        if verdict == VERDICT_DROP:
            self._counters["dropped"] += 1
        if self._stop_requested:
            raise StopMonitor("stopping: a callback raised and on_callback_error is 'stop'")
        return verdict

    def _raw_packet(self, pkt, orphan):
        for sock in self.raw_sockets:
            if sock.domain and sock.domain != pkt.ip_version:
                continue
            if sock.raw_filter is not None and not sock.raw_filter.match(pkt):
                continue
            self._fire(sock, HOOK_NULL, _NULL_SIDE, EV_PKT_IN)
            if orphan:
                self._fire(sock, HOOK_NULL, _NULL_SIDE, EV_ORPHAN)

    def _catch_up(self, snd, rcv, pkt):
        """A segment of a bypassed flow: the bytes `snd` sent before it went through the
        kernel (or the bypass path), so its receiver's stream jumps to the segment's
        sequence number as if they had arrived; they count as received, not missed.
        The stream buffer stops (there is a gap nobody will fill) and the receive
        window is unknown until the receiver's next ACK."""
        if rcv.peer_base is None or pkt.flags & TH_SYN:
            return
        carried = snd.bypassed_bytes
        snd.bypassed_bytes = 0
        ahead = (pkt.seq - rcv.peer_base - rcv.rcv_nxt) & SEQ_MASK
        if carried >= SEQ_HALF:
            # More than 2 GiB went by: the wrap count comes from the bytes carried (an
            # upper bound: retransmissions count too), the nearest distance that fits.
            dist = ahead + ((carried - ahead + SEQ_HALF) // SEQ_MOD) * SEQ_MOD
        else:
            dist = ahead - SEQ_MOD if ahead >= SEQ_HALF else ahead
        if dist <= 0:
            return
        end = rcv.rcv_nxt + dist
        if rcv.peer_fin_off is not None and end > rcv.peer_fin_off:
            end = rcv.peer_fin_off
        if end <= rcv.rcv_nxt:
            return
        rcv.unique_bytes += end - rcv.rcv_nxt
        rcv.rcv_nxt = end
        if end > rcv.max_end:
            rcv.max_end = end
        rcv.buf = None
        rcv.bufsize = 0
        rcv.right_edge = None

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
        if not self.config.midstream_pickup or not matched or pkt.flags & TH_RST:
            return None
        return self._new_flow(pkt, key, ts, midstream=True, listeners=matched)

    def _new_flow(self, pkt, key, ts, midstream, listeners=None):
        if listeners is None:
            listeners = [sock for sock in self.listeners
                         if (not sock.domain or sock.domain == pkt.ip_version)
                         and (sock.syn_filter is None or sock.syn_filter.match(pkt))]
        if not listeners:
            return None
        if len(self.lru) >= self.config.max_concurrency:
            limits.evict_one(self)
        client_is_sender = True
        if midstream:
            # Without the handshake, guess the client: the receiver of a
            # SYN-ACK, else the side with the higher (ephemeral) port.
            if pkt.flags & _SYN_ACK == _SYN_ACK:
                client_is_sender = False
            else:
                client_is_sender = pkt.sport > pkt.dport
        reverse = (pkt.dst, pkt.dport, pkt.src, pkt.sport, pkt.vlan_ids)
        key_cli, key_svr = (key, reverse) if client_is_sender else (reverse, key)
        flow = Flow(key_cli, key_svr, pkt, ts)
        default = self.config.rmem_size
        bufsizes = []
        policies = []
        for s in (MOS_SIDE_CLI, MOS_SIDE_SVR):
            sizes = [default if sock.bufsize[s] is None else sock.bufsize[s] for sock in listeners]
            bufsizes.append(max(sizes))
            chosen = [sock.policy[s] for sock in listeners if sock.policy[s] is not None]
            policies.append(chosen[-1] if chosen else self.config.overlap_policy)
        if midstream:
            flow.midstream = True
            flow.sides = [Side(tcp.ESTABLISHED, bufsizes[0], policies[0]),
                          Side(tcp.ESTABLISHED, bufsizes[1], policies[1])]
        else:
            flow.sides = [Side(tcp.CLOSED, bufsizes[0], policies[0]),
                          Side(tcp.LISTEN, bufsizes[1], policies[1])]
        cli, svr = flow.sides
        self.flows[key_cli] = (flow, MOS_SIDE_CLI, cli, svr)
        self.flows[key_svr] = (flow, MOS_SIDE_SVR, svr, cli)
        self.lru[flow] = None
        if not midstream:
            self.half_open[flow] = None
        for listener in listeners:
            sock = FlowSocket(self.new_socket_id(), listener, flow)
            self.sockets[sock.id] = sock
            flow.socks.append(sock)
        self._counters["flows_created"] += 1
        return flow

    def _history(self, flow, snd, sender, pkt, flags):
        """Zeek's conn.log history letters (upper case: originator)."""
        if flags & TH_SYN:
            letter, bit = ("H", 2) if flags & TH_ACK else ("S", 1)
        elif flags & TH_RST:
            letter, bit = "R", 16
        elif flags & TH_FIN:
            letter, bit = "F", 8
        elif pkt.payload_len:
            letter, bit = "D", 32
        elif flags & TH_ACK:
            letter, bit = "A", 4
        else:
            return
        if not snd.history_bits & bit:
            snd.history_bits |= bit
            flow.history.append(letter if sender == MOS_SIDE_CLI else letter.lower())
        if pkt.payload_len and flags & (TH_SYN | TH_FIN | TH_RST) and not snd.history_bits & 32:
            snd.history_bits |= 32
            flow.history.append("D" if sender == MOS_SIDE_CLI else "d")

    def _rst_acceptable(self, pkt, snd, rcv):
        """RFC 793/5961: an RST counts only inside the receiver's window."""
        if rcv.state == tcp.SYN_SENT:
            return bool(pkt.flags & TH_ACK) and rcv.isn is not None and pkt.ack == (rcv.isn + 1) & SEQ_MASK
        if rcv.peer_base is None:
            return True
        nxt_seq = (rcv.peer_base + rcv.rcv_nxt) & SEQ_MASK
        delta = seq_delta(pkt.seq, nxt_seq)
        if rcv.right_edge is not None:
            window = max(rcv.right_edge - rcv.rcv_nxt, 1)
        else:
            window = 1 << 30
        return 0 <= delta < window or (delta == -1 and rcv.fin_received)

    def _segment(self, flow, pkt, sender, snd, rcv):
        """A segment with SYN, FIN or RST, or one of a stream not yet known."""
        flags = pkt.flags
        seq = pkt.seq
        payload_len = pkt.payload_len
        receiver = 1 - sender
        self._history(flow, snd, sender, pkt, flags)
        self.cur_drop = False
        null_mask, snd_mask, rcv_mask = self._flow_masks(flow)
        if null_mask & EV_PKT_IN:
            self._fire_flow(flow, HOOK_NULL, sender, EV_PKT_IN)

        rst_ok = False
        if flags & TH_RST:
            rst_ok = self._rst_acceptable(pkt, snd, rcv)
            if not rst_ok:
                self._counters["rst_ignored"] += 1

        # ------------------------------------------------ sender side update
        snd_events = EV_PKT_IN
        snd_transitions = 0
        seq_end = (seq + payload_len + (1 if flags & TH_SYN else 0) + (1 if flags & TH_FIN else 0)) & SEQ_MASK
        if flags & TH_SYN:
            if snd.syn_seen and snd.isn == seq:
                snd_events |= EV_REXMIT
            else:
                # A new ISN, or a first SYN after the stream was based elsewhere (data or
                # an ACK seen before the SYN): offset 0 moves, the stream starts over.
                if snd.syn_seen or (rcv.peer_base is not None
                                    and rcv.peer_base != (seq + 1) & SEQ_MASK):
                    self._restart_side(flow, snd, rcv)
                snd.syn_seen = True
                snd.isn = seq
                snd.snd_nxt = seq_end
                rcv.peer_base = (seq + 1) & SEQ_MASK
                if not flags & TH_ACK:
                    nxt = tcp.next_state(tcp.SENDER_TRANSITIONS, snd.state, tcp.SEND_SYN)
                    if nxt is not None:
                        snd.state = nxt
                        snd_transitions += 1
                        if sender == MOS_SIDE_CLI:
                            snd_events |= EV_CONN_START
                pkt.parse_options()
                if pkt.bad_options:
                    self._counters["bad_tcp_options"] += 1
                # RFC 7323 2.3: a shift count above 14 is used as 14 (as Linux does).
                snd.wscale = pkt.wscale if pkt.wscale is None or pkt.wscale <= 14 else 14
                if flags & TH_ACK:
                    flow.window_known = rcv.syn_seen
                    flow.window_scaled = snd.wscale is not None and rcv.wscale is not None
        elif snd.snd_nxt is None:
            snd.snd_nxt = seq_end
            if rcv.peer_base is None:
                rcv.peer_base = seq  # mid-stream: offset 0 is the first byte seen
        else:
            if payload_len and seq_delta(seq_end, snd.snd_nxt) <= 0 and not flags & TH_FIN:
                snd_events |= EV_REXMIT
            if seq_delta(seq_end, snd.snd_nxt) > 0:
                snd.snd_nxt = seq_end
        if flags & TH_FIN:
            fin_seq = (seq + payload_len + (1 if flags & TH_SYN else 0)) & SEQ_MASK
            if snd.fin_seq is None:
                snd.fin_seq = fin_seq
                nxt = tcp.next_state(tcp.SENDER_TRANSITIONS, snd.state, tcp.SEND_FIN)
                if nxt is not None:
                    snd.state = nxt
                    snd_transitions += 1
            elif snd.fin_seq == fin_seq:
                snd_events |= EV_REXMIT
        if flags & TH_ACK:
            snd_transitions += self._sender_ack(flow, pkt, snd)
        if rst_ok and snd.state != tcp.CLOSED:
            snd.state = tcp.CLOSED
            snd_transitions += 1
        if snd_transitions:
            snd_events |= EV_TCP_STATE_CHANGE
        if snd_mask & snd_events:
            self._fire_flow(flow, HOOK_SND, sender, snd_events)
        if self.cur_drop:
            # Fix (API.md): a packet dropped at HK_SND never reaches the receiver.
            self._after_packet(flow)
            return VERDICT_DROP

        # ---------------------------------------------- receiver side update
        rcv_events = EV_PKT_IN
        rcv_transitions = 0
        if rst_ok:
            flow.rst_seen = True
            if rcv.state != tcp.CLOSED:
                rcv.state = tcp.CLOSED
                rcv_transitions += 1
        else:
            if flags & TH_ACK:
                rcv_transitions += self._receiver_ack(rcv, pkt.ack, flags)
            if flags & TH_SYN:
                if snd_events & EV_REXMIT:
                    rcv_events |= EV_REXMIT
                if flags & TH_ACK:
                    # Also when it repeats the sender's SYN: in a simultaneous open the
                    # SYN-ACK carries the ISN of the crossing SYN and completes the open.
                    if rcv.isn is not None and pkt.ack == (rcv.isn + 1) & SEQ_MASK:
                        nxt = tcp.next_state(tcp.RECEIVER_TRANSITIONS, rcv.state, tcp.RECV_SYNACK)
                        if nxt is not None:
                            rcv.state = nxt
                            rcv_transitions += 1
                elif not snd_events & EV_REXMIT:
                    nxt = tcp.next_state(tcp.RECEIVER_TRANSITIONS, rcv.state, tcp.RECV_SYN)
                    if nxt is not None:
                        if rcv.state == tcp.LISTEN and receiver == MOS_SIDE_SVR:
                            rcv_events |= EV_CONN_START
                        rcv.state = nxt
                        rcv_transitions += 1
            if payload_len:
                if flags & TH_SYN:
                    # Like a non-TFO Linux receiver: data on a SYN is not delivered.
                    self._counters["syn_payload_ignored"] += 1
                elif rcv.peer_base is not None and rcv.state not in _NO_DATA_STATES:
                    rcv_events |= self._receive_payload(flow, pkt, receiver, rcv)
            if flags & TH_FIN and rcv.peer_base is not None and rcv.peer_fin_off is None:
                fin_seq = (seq + payload_len + (1 if flags & TH_SYN else 0)) & SEQ_MASK
                nxt_seq = (rcv.peer_base + rcv.rcv_nxt) & SEQ_MASK
                rcv.peer_fin_off = rcv.rcv_nxt + seq_delta(fin_seq, nxt_seq)
            elif flags & TH_FIN and rcv.fin_received:
                rcv_events |= EV_REXMIT
            if rcv.peer_fin_off is not None and not rcv.fin_received and rcv.rcv_nxt >= rcv.peer_fin_off:
                rcv_transitions += self._receive_fin(rcv)
        if rcv_transitions:
            rcv_events |= EV_TCP_STATE_CHANGE
        if rcv_mask & rcv_events:
            self._fire_flow(flow, HOOK_RCV, receiver, rcv_events & ~EV_ERROR)
        if rcv_events & EV_ERROR and null_mask & EV_ERROR:
            self._fire_flow(flow, HOOK_NULL, receiver, EV_ERROR)
        self._after_packet(flow)
        return VERDICT_DROP if self.cur_drop else VERDICT_FORWARD

    def _receiver_ack(self, rcv, ack, flags):
        """What an ACK arriving at `rcv` acknowledges of what it sent."""
        transitions = 0
        if rcv.isn is not None and rcv.state == tcp.SYN_RCVD and not flags & TH_SYN \
                and seq_delta(ack, rcv.isn) > 0:
            rcv.state = tcp.ESTABLISHED
            transitions += 1
        if rcv.fin_seq is not None and not rcv.fin_acked and seq_delta(ack, rcv.fin_seq) > 0:
            rcv.fin_acked = True
            nxt = tcp.next_state(tcp.RECEIVER_TRANSITIONS, rcv.state, tcp.RECV_ACK_OF_FIN)
            if nxt is not None:
                rcv.state = nxt
                transitions += 1
        return transitions

    def _restart_side(self, flow, snd, rcv):
        """A new SYN with another ISN: the stream starts over."""
        rcv.rcv_nxt = 0
        rcv.buf = None
        rcv.first_payload_seen = False
        rcv.peer_fin_off = None
        rcv.fin_received = False
        rcv.right_edge = None
        snd.fin_seq = None
        for sock in flow.socks:
            sock.peek_off[1 - flow.sides.index(snd)] = 0

    def _sender_ack(self, flow, pkt, snd):
        """What the sender's ACK tells about its own receive side; returns the
        number of state transitions it caused."""
        ack = pkt.ack
        if snd.peer_base is None:
            snd.peer_base = ack  # no handshake seen: offset 0 is the next byte expected
            return 0
        rcv_nxt = snd.rcv_nxt
        delta = (ack - snd.peer_base - rcv_nxt) & SEQ_MASK
        ack_off = rcv_nxt + (delta - SEQ_MOD if delta >= SEQ_HALF else delta)
        if flow.window_known and not pkt.flags & TH_SYN:
            window = pkt.window << snd.wscale if flow.window_scaled else pkt.window
            edge = ack_off + window
            if snd.right_edge is None or edge > snd.right_edge:
                snd.right_edge = edge
        if snd.peer_fin_off is not None and not snd.fin_received and ack_off > snd.peer_fin_off:
            # The endpoint acknowledges a FIN the monitor could not deliver in
            # order (it missed bytes before it): the endpoint has it, so do we.
            return self._receive_fin(snd)
        return 0

    def _receive_fin(self, side):
        side.fin_received = True
        nxt = tcp.next_state(tcp.RECEIVER_TRANSITIONS, side.state, tcp.RECV_FIN)
        if nxt is None:
            return 0
        side.state = nxt
        return 1

    def _receive_payload(self, flow, pkt, receiver, rcv):
        """Reassemble the segment's payload into the receiver's buffer."""
        events = 0
        before = rcv.rcv_nxt
        delta = (pkt.seq - rcv.peer_base - before) & SEQ_MASK
        offset = before + (delta - SEQ_MOD if delta >= SEQ_HALF else delta)
        start = pkt.payload_off
        length = pkt.payload_len
        end = offset + length
        if offset < 0:
            start -= offset
            offset = 0
        peer_fin_off = rcv.peer_fin_off
        if peer_fin_off is not None and end > peer_fin_off:
            end = peer_fin_off  # nothing exists beyond the FIN
        edge = rcv.right_edge
        if edge is not None and end > edge:
            if not (length == 1 and offset == edge):   # a zero-window probe is legal
                events |= EV_ERROR
                self._counters["window_overruns"] += 1
                for sock in flow.socks:
                    sock.so_error = errno.EMSGSIZE
            end = edge  # the receiver discards what lies beyond its window
        if end <= offset:
            if length:
                events |= EV_REXMIT if offset < rcv.rcv_nxt or end < offset else 0
            return events
        if pkt.flags & TH_URG:
            self._counters["urgent_data"] += 1   # delivered in-stream (docs/config.md)
        buf = rcv.buf
        if buf is None and rcv.bufsize:
            if limits.reserve_buffer(self, flow, rcv):
                buf = rcv.buf = StreamBuffer(rcv.bufsize, rcv.policy,
                                             max_fragments=self.config.max_fragments)
            else:
                events |= EV_ERROR              # reassembly_memcap: this side is not buffered
        if buf is not None:
            head_before = buf.head
            overlapped = buf.insert(offset, pkt.buf[start:start + (end - offset)])
            if buf.last_insert_refused:
                self._counters["refused_fragments"] += 1
            rcv_nxt = rcv.rcv_nxt = buf.next_offset
            head = buf.head
            if head != head_before:
                for sock in flow.socks:
                    if sock.peek_off[receiver] < head and sock.monitoring[receiver]:
                        events |= EV_ERROR
                        sock.so_error = errno.ENOBUFS
                        self._counters["buffer_overruns"] += 1
        else:
            overlapped = (end if end < before else before) - offset
            if overlapped < 0:
                overlapped = 0
            rcv_nxt = before
            if offset <= before < end:
                rcv_nxt = rcv.rcv_nxt = end
        rcv.first_payload_seen = True
        rcv.unique_bytes += (end - offset) - overlapped
        if end > rcv.max_end:
            rcv.max_end = end
        if overlapped:
            events |= EV_REXMIT
        if rcv_nxt > before:
            if not flow.pending_data:
                self.new_data_flows.append(flow)
            flow.pending_data |= 1 << receiver
        return events

    def _after_packet(self, flow):
        if flow in self.half_open:
            limits.handshake_progress(self, flow)
        cli, svr = flow.sides
        if cli.state in tcp.FINISHED_STATES and svr.state in tcp.FINISHED_STATES:
            if flow.rst_seen or self.config.tcp_tw_interval <= 0 or (
                    cli.state == tcp.CLOSED and svr.state == tcp.CLOSED):
                self.destroy_flow(flow, "rst" if flow.rst_seen else "fin")
            elif flow.tw_deadline is None:
                flow.tw_deadline = self.now + int(self.config.tcp_tw_interval * 1e6)
                self.tw_flows.append(flow)

    # ----------------------------------------------------------- flow ends
    def destroy_flow(self, flow, reason):
        if flow.destroyed:
            return
        self._flush_new_data(flow)
        flow.destroyed = True
        flow.end_reason = reason
        if flow.kernel_verdict is not None and self.on_flow_end is not None:
            # The kernel's counters join the flow's before anyone reads its totals.
            self.on_flow_end(flow)
        saved_pkt = self.cur_pkt
        self.cur_pkt = None   # CONN_END has no packet context
        try:
            for side in (MOS_SIDE_CLI, MOS_SIDE_SVR):
                self._fire_flow(flow, HOOK_SND, side, EV_CONN_END)
                self._fire_flow(flow, HOOK_RCV, side, EV_CONN_END)
        finally:
            self.cur_pkt = saved_pkt
        for key in flow.keys:
            self.flows.pop(key, None)
        self.lru.pop(flow, None)
        limits.forget_flow(self, flow)
        if flow.kernel_verdict is not None:
            self.kernel_updates.append(("remove", flow))
        for sock in flow.socks:
            self._retire_socket_id(sock.id)
        # Break the flow <-> socket cycle: an ended flow is freed at once, not whenever the
        # cyclic GC runs (under a SYN flood, ended flows would pile up until then).
        flow.socks = []
        self._counters["flows_ended"] += 1

    def _flush_new_data(self, flow):
        pending = flow.pending_data
        if not pending:
            return
        flow.pending_data = 0
        saved_pkt = self.cur_pkt
        self.cur_pkt = None
        try:
            for side in (MOS_SIDE_CLI, MOS_SIDE_SVR):
                if pending & (1 << side):
                    self._fire_flow(flow, HOOK_NULL, side, EV_CONN_NEW_DATA)
        finally:
            self.cur_pkt = saved_pkt

    def end_batch(self):
        """End of an RX batch: CONN_NEW_DATA, then timers and timeouts."""
        flows = self.new_data_flows
        if flows:
            self.new_data_flows = []
            for flow in flows:
                if not flow.destroyed:
                    self._flush_new_data(flow)
        self._expire()
        if self._stop_requested:
            raise StopMonitor("stopping: a callback raised and on_callback_error is 'stop'")

    def advance_clock(self, ts_us):
        if ts_us > self.now:
            self.now = ts_us
        self.end_batch()

    def _expire(self):
        now = self.now
        if self.timers and self.timers[0][0] <= now:
            self._run_timers()
        if self.tw_flows:
            waiting = []
            for flow in self.tw_flows:
                if flow.destroyed:
                    continue
                if flow.tw_deadline <= now:
                    self.destroy_flow(flow, "fin")
                else:
                    waiting.append(flow)
            self.tw_flows = waiting
        if self.half_open and self.config.tcp_syn_timeout > 0:
            limits.expire_half_open(self, now)
        timeout = self.config.tcp_timeout
        if timeout > 0:
            limit = now - int(timeout * 1e6)
            lru = self.lru
            sync = self.kernel_sync
            while lru:
                flow = next(iter(lru))
                if flow.last_ts > limit:
                    break
                if flow.kernel_verdict is not None and sync is not None:
                    # Idle here, maybe busy in the kernel: its last-seen time decides.
                    sync(flow)
                    if flow.last_ts > limit:
                        lru.move_to_end(flow)
                        continue
                self.destroy_flow(flow, "timeout")

    def finish(self):
        """End of input: every flow still open ends with reason 'eof'."""
        self.end_batch()
        for flow in list(self.lru):
            self.destroy_flow(flow, "eof")

    # ------------------------------------------------------ helpers for api
    def stream_buffer(self, sock, side):
        return sock.flow.sides[side].buf

    def set_buffer_size(self, flow_side, size):
        if flow_side.first_payload_seen and size:
            raise OSError(errno.EINVAL, "the buffer size of a flow can change only before its "
                          "first payload byte (or to 0, which turns buffering off)")
        flow_side.bufsize = size
        if size == 0:
            flow_side.buf = None
        elif flow_side.buf is not None:
            flow_side.buf.resize(size)

    def set_overlap_policy(self, flow_side, policy):
        if policy not in (MOS_OVERLAP_POLICY_FIRST, MOS_OVERLAP_POLICY_LAST):
            raise OSError(errno.EINVAL, f"overlap policy {policy!r} is not "
                          "MOS_OVERLAP_POLICY_FIRST (0) or MOS_OVERLAP_POLICY_LAST (1)")
        flow_side.policy = policy
        if flow_side.buf is not None:
            flow_side.buf.policy = policy

    def queue_frame(self, frame, egress_port):
        self.outbox.append((bytes(frame), egress_port))
