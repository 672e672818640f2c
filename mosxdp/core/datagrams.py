"""UDP and ICMP flows: a flow table of their own, with Zeek's flow semantics.

The mOS API is TCP only, and stays so. UDP and ICMP (v4 and v6) get flows here, for what
needs them per flow: conn.log lines (``watchers``, through the public
``mosx_watch_datagrams``) and a session layer (``on_datagram``, an internal hook). The
table exists once something asks for it (``Stack.datagram_table``); until then a non-TCP
frame costs the Stack one attribute test.

Flows as Zeek makes them (base/protocols/conn and its UDP and ICMP packet analyzers):

* UDP: one flow per 5-tuple (and VLAN ids), both directions. The originator sent the
  first datagram, unless its source port is a likely server port and its destination port
  is not (``LIKELY_UDP_SERVER_PORTS``): then the roles flip (``flipped``, history ``^``).
  History: ``D`` at the originator's first datagram, ``d`` at the responder's.
* ICMP: the "ports" are the message type (originator side) and, for a type with a
  counterpart (echo request/reply, timestamp, router solicitation/advertisement, neighbour
  solicitation/advertisement, ...), the counterpart type, so that a request and its reply
  are one flow; for any other type the code, and the flow is one-way (its replies, if
  any, are flows of their own). The ICMP identifier is not part of the flow, as in Zeek:
  two pings between the same hosts at the same time are one flow. No history letters.
* Bytes: UDP payload bytes (IP payload less the 8-byte UDP header: the UDP length field
  less 8 for every well-formed datagram) and ICMP bytes beyond the 8-byte ICMP header;
  packets and IP bytes as for TCP. Checksums are not verified (live, offloading leaves
  them unfinished on the wire). IP fragments are not part of any flow (the Stack counts
  them in ``ip_fragments``; the XDP program leaves them to the kernel).
* A flow ends after ``udp_timeout`` / ``icmp_timeout`` idle seconds (Zeek's
  udp_inactivity_timeout and icmp_inactivity_timeout are 60 s), when ``max_concurrency``
  datagram flows are tracked and a new one starts (the least recently active ends,
  'evicted'), and at the end of the run ('eof').

Kernel verdicts: a flow whose watchers all gave ``bypass_after`` bytes is handed to the
kernel once either direction sent that many payload bytes (``kernel_updates``, written to
the XDP verdict map by the engine); the kernel then forwards its datagrams and counts
them, and the counts join the flow before it ends (``on_flow_end``/``kernel_sync``, the
same hooks as TCP flows). Offline the core counts every datagram itself.

The session-layer hook: ``on_datagram`` is a list of callables ``fn(flow, side, pkt)``,
called for every datagram of a tracked flow that is not handed to the kernel, in arrival
order, after the flow's counters moved. ``side`` is 0 for the originator, 1 for the
responder; ``pkt`` is the core/packet.py Packet (``pkt.payload`` the UDP payload, or the
whole ICMP message), valid during the call only. The flow object lives until its end
(``flow.destroyed``). Such a hook is trusted core code: an exception it raises propagates.
While the hook keeps state in ``flow.session`` (not None) the watchers' byte threshold does
not hand the flow to the kernel: the session layer does, with ``set_verdict``.
"""
from collections import OrderedDict

from .events import ORDER_ICMP_EOF, ORDER_ICMP_IDLE, ORDER_UDP_EOF, ORDER_UDP_IDLE
from .packet import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_UDP, PacketError, icmp_type_code

DEFAULT_UDP_TIMEOUT = 60.0    # Zeek's udp_inactivity_timeout
DEFAULT_ICMP_TIMEOUT = 60.0   # Zeek's icmp_inactivity_timeout

# The UDP ports Zeek's default scripts register with their analyzers (its
# likely_server_ports): DNS, mDNS, LLMNR, NetBIOS-NS, DHCP, Kerberos, NTP, SNMP, syslog,
# RADIUS, SIP, QUIC.
LIKELY_UDP_SERVER_PORTS = frozenset((53, 67, 68, 88, 123, 137, 161, 162, 443, 514, 1812, 5060,
                                     5353, 5355))

# ICMP types with a counterpart (Zeek's ICMP4_counterpart / ICMP6_counterpart).
_ICMP4_COUNTERPART = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 9: 10, 17: 18, 18: 17}
_ICMP6_COUNTERPART = {128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131,
                      131: 130, 139: 140, 140: 139, 144: 145, 145: 144}

PROTO_NAMES = {IPPROTO_UDP: "udp", IPPROTO_ICMP: "icmp", IPPROTO_ICMPV6: "icmp"}

# Counters of the table, kept in the Stack's counters (stack.COUNTER_NAMES).
DATAGRAM_COUNTERS = ("datagram_flows_created", "datagram_flows_ended", "datagram_flows_evicted",
                     "datagram_malformed")


def icmp_ports(ip_proto, icmp_type, code):
    """(originator "port", responder "port", one-way) of an ICMP message, as Zeek keys it."""
    counterparts = _ICMP4_COUNTERPART if ip_proto == IPPROTO_ICMP else _ICMP6_COUNTERPART
    other = counterparts.get(icmp_type)
    if other is None:
        return icmp_type, code, True
    return icmp_type, other, False


class DatagramSide:
    """What one endpoint of a datagram flow sent (bypassed_*: what the kernel counted for a
    flow with a kernel verdict, merged by the engine: payload bytes, packets, frame bytes)."""
    __slots__ = ("pkts", "ip_bytes", "l2_bytes", "payload_bytes", "bypassed_bytes",
                 "bypassed_pkts", "bypassed_l2_bytes")

    def __init__(self):
        self.pkts = self.ip_bytes = self.l2_bytes = self.payload_bytes = 0
        self.bypassed_bytes = self.bypassed_pkts = self.bypassed_l2_bytes = 0


class DatagramFlow:
    """One UDP or ICMP flow. ``keys``: (originator's directed key, responder's), each
    (src, sport, dst, dport, vlan_ids) with ICMP "ports"; ``sides``: [originator,
    responder] DatagramSide; times in the Stack's clock (microseconds)."""
    __slots__ = ("keys", "ip_proto", "ip_version", "vlan_ids", "sides", "start_ts", "last_ts",
                 "history", "flipped", "one_way", "end_reason", "destroyed", "kernel_verdict",
                 "last_no",
                 "watchers", "session")

    def __init__(self, key_orig, key_resp, ip_proto, pkt, ts, flipped, one_way, watchers):
        self.keys = (key_orig, key_resp)
        self.ip_proto = ip_proto
        self.ip_version = pkt.ip_version
        self.vlan_ids = pkt.vlan_ids
        self.sides = [DatagramSide(), DatagramSide()]
        self.start_ts = self.last_ts = ts
        self.history = ""
        self.flipped = flipped
        self.one_way = one_way
        self.end_reason = None
        self.destroyed = False
        self.kernel_verdict = None     # None, "bypass" or "drop"
        self.watchers = watchers
        self.last_no = 0               # Stack.frame_no when last active (workers' order)
        self.session = None            # the session layer's state while it parses the flow

    @property
    def proto(self):
        """Zeek's proto field: "udp" or "icmp" (ICMPv6 too)."""
        return PROTO_NAMES[self.ip_proto]

    def payload_bytes(self, side):
        """Payload bytes that side sent, the kernel's included."""
        s = self.sides[side]
        return s.payload_bytes + s.bypassed_bytes


class DatagramWatcher:
    """Who wants the flows of a filter: ``callback(handle, record(flow))`` when each ends;
    ``bypass_after``: payload bytes after which the flow may go to the kernel (None: never)."""
    __slots__ = ("id", "domain", "filter", "callback", "record", "bypass_after")

    def __init__(self, watch_id, domain, filter, callback, record, bypass_after):
        self.id = watch_id
        self.domain = domain       # 0: both IP versions, 4 or 6
        self.filter = filter       # core.filters MonitorFilter (raw grammar) or None
        self.callback = callback
        self.record = record
        self.bypass_after = bypass_after


class DatagramTable:
    """The UDP and ICMP flows of one Stack (``owner``: its clock, config, counters,
    callback error handling and kernel hooks)."""

    def __init__(self, owner):
        self.owner = owner
        config = owner.config
        # directed key (ip_proto, src, sport, dst, dport, vlan_ids) -> (flow, side index)
        self.flows = {}
        # Least recently active first, one order per timeout: UDP, ICMP.
        self.udp_lru = OrderedDict()
        self.icmp_lru = OrderedDict()
        # Idle microseconds before a flow ends (0: never).
        self.udp_timeout_us = int(config.udp_timeout * 1e6) if config.udp_timeout > 0 else 0
        self.icmp_timeout_us = int(config.icmp_timeout * 1e6) if config.icmp_timeout > 0 else 0
        self.max_flows = config.max_concurrency
        self.watchers = []
        self.on_datagram = []
        self._next_id = 1
        self._bypass_after = None    # the smallest threshold if every watcher has one

    def add_watcher(self, domain, filter, callback, record=None, bypass_after=None):
        watcher = DatagramWatcher(self._next_id, domain, filter, callback,
                                  record or (lambda flow: flow), bypass_after)
        self._next_id += 1
        self.watchers.append(watcher)
        limits = [w.bypass_after for w in self.watchers]
        self._bypass_after = None if None in limits else min(limits)
        return watcher

    def flow_count(self):
        return len(self.udp_lru) + len(self.icmp_lru)

    # ------------------------------------------------------------------ per datagram
    def process(self, pkt, ts):
        """Account one unfragmented IP frame of the Stack. True: drop it (the flow's kernel
        verdict is DROP and this frame reached user space before the kernel had it)."""
        ip_proto = pkt.ip_proto
        if ip_proto == IPPROTO_UDP:
            sport, dport, one_way = pkt.sport, pkt.dport, False
            payload = pkt.payload_len
        elif (ip_proto == IPPROTO_ICMP and pkt.ip_version == 4) or (
                ip_proto == IPPROTO_ICMPV6 and pkt.ip_version == 6):
            try:
                icmp_type, code = icmp_type_code(pkt)
            except PacketError:
                self.owner._counters["datagram_malformed"] += 1
                return False
            sport, dport, one_way = icmp_ports(ip_proto, icmp_type, code)
            payload = pkt.payload_len - 8
        else:
            return False
        entry = self.flows.get((ip_proto, pkt.src, sport, pkt.dst, dport, pkt.vlan_ids))
        if entry is not None:
            # Idle past its timeout since the last end of batch: this datagram starts anew.
            flow = entry[0]
            timeout = self.udp_timeout_us if ip_proto == IPPROTO_UDP else self.icmp_timeout_us
            if timeout and ts - flow.last_ts >= timeout and self._idle(flow, ts - timeout):
                self.end_flow(flow, "timeout")
                entry = None
        if entry is None:
            entry = self._new_flow(pkt, ip_proto, sport, dport, one_way, ts)
            if entry is None:
                return False
        flow, side = entry
        s = flow.sides[side]
        if not s.pkts and ip_proto == IPPROTO_UDP:
            flow.history += "d" if side else "D"
        s.pkts += 1
        s.ip_bytes += pkt.ip_len
        s.l2_bytes += pkt.frame_len
        s.payload_bytes += payload
        flow.last_ts = ts
        flow.last_no = self.owner.frame_no
        (self.udp_lru if ip_proto == IPPROTO_UDP else self.icmp_lru).move_to_end(flow)
        verdict = flow.kernel_verdict
        if verdict is None:
            for hook in self.on_datagram:
                hook(flow, side, pkt)
            limit = self._bypass_after
            if limit is not None and s.payload_bytes >= limit and self._may_bypass(flow):
                flow.kernel_verdict = "bypass"
                self.owner.kernel_updates.append(("bypass", flow))
            return False
        return verdict == "drop"

    def set_verdict(self, flow, action):
        """Hand the rest of ``flow`` to the kernel: "bypass" (forward) or "drop"."""
        if flow.destroyed or flow.kernel_verdict == action:
            return
        flow.kernel_verdict = action
        self.owner.kernel_updates.append((action, flow))

    def _may_bypass(self, flow):
        for watcher in flow.watchers:
            limit = watcher.bypass_after
            if limit is None or max(s.payload_bytes for s in flow.sides) < limit:
                return False
        # A flow the session layer still parses stays (it hands the flow over itself).
        return flow.session is None

    def _new_flow(self, pkt, ip_proto, sport, dport, one_way, ts):
        watchers = [w for w in self.watchers
                    if (not w.domain or w.domain == pkt.ip_version)
                    and (w.filter is None or w.filter.match(pkt))]
        if not watchers and not self.on_datagram:
            return None
        if self.flow_count() >= self.max_flows:
            self._evict_one()
        src, dst, vlan_ids = pkt.src, pkt.dst, pkt.vlan_ids
        flipped = (ip_proto == IPPROTO_UDP and sport in LIKELY_UDP_SERVER_PORTS
                   and dport not in LIKELY_UDP_SERVER_PORTS)
        forward = (src, sport, dst, dport, vlan_ids)
        reverse = (dst, dport, src, sport, vlan_ids)
        key_orig, key_resp = (reverse, forward) if flipped else (forward, reverse)
        flow = DatagramFlow(key_orig, key_resp, ip_proto, pkt, ts, flipped, one_way, watchers)
        flows = self.flows
        flows[(ip_proto, *key_orig)] = (flow, 0)
        if not one_way:
            flows[(ip_proto, *key_resp)] = (flow, 1)
        (self.udp_lru if ip_proto == IPPROTO_UDP else self.icmp_lru)[flow] = None
        self.owner._counters["datagram_flows_created"] += 1
        return (flow, 1 if flipped else 0)

    # ------------------------------------------------------------------ ends
    def end_flow(self, flow, reason):
        """The end of a flow: the kernel's counts join it, each of its watchers gets its
        record, its keys go."""
        if flow.destroyed:
            return
        flow.destroyed = True
        flow.end_reason = reason
        owner = self.owner
        if flow.kernel_verdict is not None and owner.on_flow_end is not None:
            owner.on_flow_end(flow)
            if flow.ip_proto == IPPROTO_UDP:
                # A side whose only datagrams the kernel carried still has its letter.
                for side, letter in ((0, "D"), (1, "d")):
                    if flow.sides[side].pkts and letter not in flow.history:
                        flow.history += letter
        for watcher in flow.watchers:
            callback = watcher.callback
            try:
                callback(owner.handle, watcher.record(flow))
            except Exception as exc:   # an app bug must not stop the datapath
                owner._callback_failed(callback, exc)
            except SystemExit as exc:
                owner._callback_exit(callback, exc)
        flows = self.flows
        for key in flow.keys:
            entry = flows.get((flow.ip_proto, *key))
            if entry is not None and entry[0] is flow:
                del flows[(flow.ip_proto, *key)]
        (self.udp_lru if flow.ip_proto == IPPROTO_UDP else self.icmp_lru).pop(flow, None)
        if flow.kernel_verdict is not None:
            owner.kernel_updates.append(("remove", flow))
        flow.watchers = ()
        owner._counters["datagram_flows_ended"] += 1

    def _idle(self, flow, limit):
        """Whether ``flow`` was last active at or before ``limit``: idle here may be busy
        in the kernel, whose last-seen time then decides."""
        sync = self.owner.kernel_sync
        if flow.kernel_verdict is not None and sync is not None:
            sync(flow)
        return flow.last_ts <= limit

    def expire(self, now):
        """End the flows idle for their protocol's timeout (unless it is off)."""
        owner = self.owner
        for order, timeout, phase in ((self.udp_lru, self.udp_timeout_us, ORDER_UDP_IDLE),
                                      (self.icmp_lru, self.icmp_timeout_us, ORDER_ICMP_IDLE)):
            if not timeout:
                continue
            limit = now - timeout
            while order:
                flow = next(iter(order))
                if flow.last_ts > limit:
                    break
                if not self._idle(flow, limit):
                    order.move_to_end(flow)
                    continue
                owner.order_key = (phase, flow.last_no)
                self.end_flow(flow, "timeout")

    def _evict_one(self):
        heads = [next(iter(order)) for order in (self.udp_lru, self.icmp_lru) if order]
        victim = min(heads, key=lambda flow: flow.last_ts)
        self.owner._counters["datagram_flows_evicted"] += 1
        self.end_flow(victim, "evicted")

    def finish(self):
        """End of input: every flow still open ends with reason 'eof'."""
        owner = self.owner
        try:
            for order, phase in ((self.udp_lru, ORDER_UDP_EOF), (self.icmp_lru, ORDER_ICMP_EOF)):
                for flow in list(order):
                    owner.order_key = (phase, flow.last_no)
                    self.end_flow(flow, "eof")
        finally:
            owner.order_key = None
