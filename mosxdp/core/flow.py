"""The flow table: flows and their two emulated sides, flow creation, the ends of flows,
and one expiry mechanism for idle flows, half-open flows and `max_concurrency`.

A flow is *half-open* from its SYN until the server side leaves LISTEN/SYN_RCVD (the
client's ACK of the SYN-ACK, or anything later): a spoofed SYN never gets there.
`half_open` orders these flows by last activity, like `lru` orders all flows, so timing
them out (tcp_syn_timeout, counted in half_open_timeouts) and picking an eviction victim
cost O(1) per flow. Idle flows end after tcp_timeout.

Eviction (a new flow while `max_concurrency` flows are tracked): the least recently
active half-open flow if there is one (half_open_evicted), else the least recently active
flow (flows_evicted counts both). A SYN flood therefore only ever evicts its own flows
while established ones stay.

`FlowTable` is one of the Stack's parts (see stack.py).
"""
from collections import OrderedDict

from .constants import MOS_SIDE_CLI, MOS_SIDE_SVR, TH_ACK, TH_SYN
from .events import (EV_CONN_END, HOOK_RCV, HOOK_SND, ORDER_EOF, ORDER_HALF_OPEN, ORDER_IDLE,
                     ORDER_TIME_WAIT)
from .sockets import FlowSocket
from .tcp import CLOSED, ESTABLISHED, FINISHED_STATES, LISTEN, SYN_RCVD

DEFAULT_TCP_SYN_TIMEOUT = 5.0         # idle seconds of a half-open flow
# A flow that may be fast-forwarded (engine/kernel_twin.py) is, after the core processed
# this many of its frames (its handshake and first segments), unless its end began by
# then: with fewer frames in all, its entry, loads and catch-ups would cost more than the
# frames they take.
FF_AFTER_FRAMES = 8

# Server-side states of a flow whose handshake has not completed.
HALF_OPEN_STATES = frozenset((LISTEN, SYN_RCVD))
_SYN_ACK = TH_SYN | TH_ACK


class Side:
    """One emulated endpoint: what it sent and what it received."""
    __slots__ = (
        "state", "isn", "snd_nxt", "fin_seq", "fin_acked", "wscale", "syn_seen",
        "peer_base", "rcv_nxt", "buf", "bufsize", "policy", "right_edge",
        "peer_fin_off", "fin_received", "unique_bytes", "max_end", "first_payload_seen",
        "pkts", "ip_bytes", "l2_bytes", "tcp_flags", "history_bits", "l2_header", "port",
        "bypassed_bytes", "bypassed_pkts", "bypassed_l2_bytes", "carried_end", "beyond_edge",
        "last_pkt", "skip_to", "skip_due", "mss", "rexmit", "flush_mark",
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
        # The furthest offset an ACK of ours passed beyond rcv_nxt: what is missing below it
        # at the end of the next batch is lost (streams.py holes_due_now); 0 when none.
        self.skip_to = 0
        # skip_to as it was at the end of the last batch: what is still missing below it at
        # the end of this one is lost (a copy captured just after the ACK still fills it).
        self.skip_due = 0
        self.buf = None
        self.bufsize = bufsize
        self.policy = policy
        self.right_edge = None     # offset just beyond the window we advertised
        # Segments seen beyond right_edge, [(offset, end, bytes or None, zero-window probe)],
        # until an ACK of ours covers them or the flow ends (streams.py _hold_beyond_edge);
        # None when there are none.
        self.beyond_edge = None
        self.peer_fin_off = None
        self.fin_received = False
        self.unique_bytes = 0
        self.max_end = 0
        self.first_payload_seen = False
        self.pkts = 0              # packets this side sent
        self.ip_bytes = 0
        self.l2_bytes = 0
        self.tcp_flags = 0         # the TCP flags of every segment this side sent, OR-ed
        self.history_bits = 0
        self.l2_header = None      # Ethernet (+tags) header of this side's first frame
        self.port = None           # port this side's frames come in on
        # Payload bytes this side sent in frames of a bypassed flow that the emulation did
        # not process (the kernel's, once merged, and the bypass path's), since its stream
        # was last caught up (_catch_up).
        self.bypassed_bytes = 0
        # Frames of this side that a bypass verdict handled (in the kernel, or counted only
        # by the bypass path) and their bytes, whole frames: part of pkts and l2_bytes.
        self.bypassed_pkts = 0
        self.bypassed_l2_bytes = 0
        # The highest sequence number + payload length of those frames (the kernel's seq_end
        # once merged), None before the first: where this side's stream reached.
        self.carried_end = None
        # The last Packet this side sent, for mtcp_getlastpkt in CONN_NEW_DATA and CONN_END
        # (Stack._keep_last_packets turns its buffer into a copy before the frame is reused).
        self.last_pkt = None
        self.mss = None            # the MSS option of our SYN
        self.rexmit = None         # (seq, payload length) of our last retransmission
        # rcv_nxt when CONN_NEW_DATA was last raised for this side (streams.py
        # _flush_before_overrun).
        self.flush_mark = 0


class Flow:
    __slots__ = (
        "keys", "ip_version", "vlan_ids", "addrs", "ports_tcp", "sides", "socks",
        "start_ts", "last_ts", "history", "end_reason", "pending_data", "bypass",
        "rst_seen", "tw_deadline", "window_scaled", "window_known",
        "destroyed", "midstream", "kernel_verdict", "masks", "masks_epoch", "edits",
        "last_no", "tw_no", "data_no", "fast_forward", "ff_record", "pkt_listed", "ff_wait",
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
        # [client's, server's] core/edits.py StreamEdits once a payload edit changed a
        # segment's size (None before): its frames are remapped, never bypassed.
        self.edits = None
        # Stack.frame_no when the flow was last active, entered TIME_WAIT, and was put in
        # new_data_flows: the places a single context gives it in the LRU, tw_flows and
        # new_data_flows, which order the output of several workers (engine/workers.py).
        self.last_no = self.tw_no = self.data_no = 0
        # The engine takes its regular frames (engine/kernel_twin.py, fast forward) and
        # brings the emulation up to date before each frame it processes (Stack.process):
        # 0 not, FF_COUNTS counting them, FF_STREAM also delivering their payload. Its
        # record in the engine's table: ff_record.
        self.fast_forward = 0
        self.ff_record = None
        # Frames the core still processes before the fast forward is asked for (0: not
        # waiting): FF_AFTER_FRAMES from its start if it may be fast-forwarded.
        self.ff_wait = 0
        # In Stack.pkt_flows: a side's last packet was set since the last copy of them.
        self.pkt_listed = False


class FlowTable:
    """The Stack's flows (a mixin: the per-frame path calls these without a hop)."""

    def _init_flows(self):
        # directed 4-tuple (+ VLANs) -> (flow, sender side index, sender Side, receiver Side)
        self.flows = {}
        self.lru = OrderedDict()             # flow -> None, least recently active first
        self.half_open = OrderedDict()       # flows before the handshake's end, LRU first
        self.tw_flows = []                   # flows waiting out tcp_tw_interval
        self.kernel_updates = []             # (action, flow) for the engine's kernel verdict map
        # Hooks of an engine with a kernel verdict map (None: sans-IO, offline). Both take a
        # flow with a kernel verdict and add what the kernel counted for it to its sides
        # (Side.pkts/ip_bytes/l2_bytes/bypassed_*) and move flow.last_ts to the kernel's
        # last-seen time. on_flow_end also removes the kernel entry: it runs in destroy_flow
        # before the CONN_END callbacks. kernel_sync runs before the emulation processes a
        # frame of a bypassed flow, and before such a flow would idle out.
        self.on_flow_end = None
        self.kernel_sync = None
        # Listeners' MOSX_STATE_ONLY takes effect: set by a live run with a kernel verdict map
        # (not with --full-inspection).
        self.state_only = False
        # Offline, the same listeners' flows (and those of MOSX_STREAM_ONLY listeners, their
        # payload delivered too) are fast-forwarded instead (set by the offline engine, not
        # with --full-inspection): the engine takes their regular frames and the emulation
        # sees the others, its state brought up to date first (engine/kernel_twin.py). The
        # hooks take the flow: ff_catch_up before the core reads it (a frame, the end of the
        # batch, the flow's end), ff_reload after a frame.
        self.fast_forward = False
        self.ff_catch_up = self.ff_reload = None
        # Flows whose last packets were set since the frames were last kept (pkt_listed).
        self.pkt_flows = []

    def _new_flow(self, pkt, key, ts, midstream, listeners=None):
        if listeners is None:
            listeners = [sock for sock in self.listeners
                         if (not sock.domain or sock.domain == pkt.ip_version)
                         and (sock.syn_filter is None or sock.syn_filter.match(pkt))]
        if not listeners:
            return None
        if len(self.lru) >= self.config.max_concurrency:
            self._evict_one()
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
            flow.sides = [Side(ESTABLISHED, bufsizes[0], policies[0]),
                          Side(ESTABLISHED, bufsizes[1], policies[1])]
        else:
            flow.sides = [Side(CLOSED, bufsizes[0], policies[0]),
                          Side(LISTEN, bufsizes[1], policies[1])]
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
        if self.state_only and listeners and all(ls.state_only for ls in listeners) \
                and not self._raw_socket_takes(pkt):
            # Every socket of it needs only counters, flags and states, and no raw socket
            # takes its frames: the kernel forwards and counts its frames from now on, the
            # emulation sees its SYN, FIN, RST and the ACKs of SYN and FIN (Stack.process),
            # and its history letters come with the counts.
            self.set_bypass(flow, "state_only")
        elif self.fast_forward and all(ls.state_only or ls.stream_only for ls in listeners) \
                and not self._raw_socket_takes(pkt):
            # Asked for after its first frames (Stack.process): a short flow would cost
            # more to fast-forward than its few regular frames save.
            flow.ff_wait = FF_AFTER_FRAMES
        return flow

    def set_bypass(self, flow, action):
        """Hand the rest of the flow to the kernel: action "bypass", "drop" or "state_only"
        (bpf/mosxdp.h MX_ACTION_*)."""
        if flow.kernel_verdict == action:
            return
        if action == "bypass" and flow.edits is not None:
            # Its frames still need remapping: they keep coming to the core, which only
            # counts them (as offline) and stops its emulation.
            flow.bypass = True
            return
        flow.kernel_verdict = action
        flow.bypass = True
        self.kernel_updates.append((action, flow))

    def _after_packet(self, flow):
        if flow in self.half_open and flow.sides[MOS_SIDE_SVR].state not in HALF_OPEN_STATES:
            del self.half_open[flow]   # the handshake is complete
        cli, svr = flow.sides
        if cli.state in FINISHED_STATES and svr.state in FINISHED_STATES:
            # With tcp_tw_interval a reset flow lingers too (as Zeek keeps a connection after
            # its RST): the frames that crossed the RST, and the peer's RST for each of them,
            # are still the flow's, not orphans or a new flow.
            if self.config.tcp_tw_interval <= 0:
                self.destroy_flow(flow, "rst" if flow.rst_seen else "fin")
            elif flow.tw_deadline is None:
                flow.tw_deadline = self.now + int(self.config.tcp_tw_interval * 1e6)
                flow.tw_no = self.frame_no
                self.tw_flows.append(flow)

    def destroy_flow(self, flow, reason):
        if flow.destroyed:
            return
        if flow.fast_forward:
            self.ff_catch_up(flow)
        self._end_streams(flow)
        self._flush_new_data(flow)
        flow.destroyed = True
        flow.end_reason = reason
        if (flow.kernel_verdict is not None or flow.fast_forward) and self.on_flow_end is not None:
            # The kernel's (or the fast-forward's) counters join the flow's before anyone
            # reads its totals.
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
        self.half_open.pop(flow, None)
        self._release_buffers(flow)
        if flow.kernel_verdict is not None:
            self.kernel_updates.append(("remove", flow))
        for sock in flow.socks:
            self._retire_socket_id(sock.id)
        # Break the flow <-> socket cycle: an ended flow is freed at once, not whenever the
        # cyclic GC runs (under a SYN flood, ended flows would pile up until then).
        flow.socks = []
        self._counters["flows_ended"] += 1

    def _expire(self):
        """Timers, TIME_WAIT ends, then idle flows: half-open ones after tcp_syn_timeout,
        any after tcp_timeout."""
        now = self.now
        if self.timers and self.timers[0][0] <= now:
            self._run_timers()
        if self.tw_flows:
            waiting = []
            for flow in self.tw_flows:
                if flow.destroyed:
                    continue
                if flow.tw_deadline <= now:
                    self.order_key = (ORDER_TIME_WAIT, flow.tw_no)
                    self.destroy_flow(flow, "rst" if flow.rst_seen else "fin")
                else:
                    waiting.append(flow)
            self.tw_flows = waiting
        if self.half_open and self.config.tcp_syn_timeout > 0:
            self._expire_idle(self.half_open, now - int(self.config.tcp_syn_timeout * 1e6),
                              "half_open_timeouts", ORDER_HALF_OPEN)
        timeout = self.config.tcp_timeout
        if timeout > 0:
            self._expire_idle(self.lru, now - int(timeout * 1e6), None, ORDER_IDLE)

    def _expire_idle(self, order, limit, counter, phase):
        """End the flows of `order` (least recently active first) last active at or before
        `limit` (end_reason 'timeout'), counting them in `counter` when given."""
        sync = self.kernel_sync
        while order:
            flow = next(iter(order))
            if flow.last_ts > limit:
                break
            if flow.kernel_verdict is not None and sync is not None:
                # Idle here, maybe busy in the kernel: its last-seen time decides.
                sync(flow)
                if flow.last_ts > limit:
                    order.move_to_end(flow)
                    continue
            if counter is not None:
                self._counters[counter] += 1
            self.order_key = (phase, flow.last_no)
            self.destroy_flow(flow, "timeout")

    def _evict_one(self):
        """Make room for one flow: end the least recently active half-open flow, else the
        least recently active flow (end_reason 'evicted')."""
        if self.half_open:
            victim = next(iter(self.half_open))
            self._counters["half_open_evicted"] += 1
        else:
            victim = next(iter(self.lru))
        self._counters["flows_evicted"] += 1
        self.destroy_flow(victim, "evicted")

    def finish(self):
        """End of input: every flow still open ends with reason 'eof' (also when the run
        stops: StopMonitor out of end_batch comes after the flows' ends)."""
        try:
            self.end_batch()
        finally:
            for flow in list(self.lru):
                self.order_key = (ORDER_EOF, flow.last_no)
                self.destroy_flow(flow, "eof")
            self.order_key = None
