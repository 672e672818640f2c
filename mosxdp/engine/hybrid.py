"""The hybrid fast path: what the live engine keeps in the kernel for the core.

Two things, both set up by ``engine.live_run.LiveRun``:

* **The kernel filter** (``kernel_filter``): one C expression for the XDP program from
  every monitor socket's filters, so that frames no socket can want never leave the
  kernel. A listening socket contributes its SYN filter, and its orphan filter when
  orphans can matter to it (an ORPHAN callback, or ``midstream_pickup``); a raw socket
  its raw filter. A socket without a filter wants everything: then there is no kernel
  filter at all. The program evaluates the expression on the frame as seen; a flow's
  frames travel both ways, so a stream filter is evaluated on the frame and on the frame
  with source and destination swapped (``src host C`` selects C's SYN, and the server's
  replies, which have ``dst C``, must reach the core too). User space still applies each
  socket's exact filter.

* **Kernel verdicts in step with the core** (``HybridProcessor``): the live engine's
  processor is the stack wrapped so that, after every batch, clock advance and at the
  end, the stack's ``kernel_updates`` (BYPASS/DROP verdicts, removals) are written to the
  program's verdict map; the stack's ``on_flow_end`` hook removes a flow's entry and
  merges its counters (packets, IP bytes, frame bytes, payload bytes per direction, last
  seen time) into the flow before the CONN_END callbacks, and ``kernel_sync`` merges them
  without removing before the emulation processes a control frame of a bypassed flow or
  lets one idle out. Entries never outlive their flows: every flow that ends (FIN, RST,
  idle timeout, eviction, end of run) has its entry popped.

The flow key follows bpf/mosxdp.c's ``mx_flow_key_of`` exactly (``bpfstructs.make_flow_key``):
the flow's client 4-tuple, its first two VLAN ids, IPv4 or IPv6, the IP protocol. UDP and
ICMP flows (core/datagrams.py) have kernel verdicts too: their entries count every
datagram the kernel handles (no control frames), merged the same way.
"""
from __future__ import annotations

import sys

from ..core.datagrams import DatagramFlow
from ..core.tcp import add_history, seq_delta
from ..io.bpfstructs import make_flow_key

__all__ = ["KernelFilter", "kernel_filter", "flow_key", "HybridProcessor"]


def _guard(domain, expr):
    return expr if not domain else f"(v->ip_version == {domain} && {expr})"


def _raw_guard(domain, expr):
    """A raw socket's domain excludes the other IP version only (non-IP frames pass)."""
    other = 6 if domain == 4 else 4
    return expr if not domain else f"(v->ip_version != {other} && {expr})"


class KernelFilter:
    """What the XDP program filters on: ``c_expr`` (None: every TCP frame goes to user
    space), ``filter_all_ip`` (raw sockets: the filter also decides for non-TCP frames,
    IP or not), ``why`` (a short description for logs and --stats)."""

    __slots__ = ("c_expr", "filter_all_ip", "why")

    def __init__(self, c_expr, filter_all_ip, why):
        self.c_expr = c_expr
        self.filter_all_ip = filter_all_ip
        self.why = why

    def __eq__(self, other):
        return isinstance(other, KernelFilter) and (self.c_expr, self.filter_all_ip) == (
            other.c_expr, other.filter_all_ip)

    def __repr__(self):
        return f"<KernelFilter {self.why}: {self.c_expr}>"


# The frames of UDP and ICMP flows (datagram watchers; ICMPv4 is IPv4's, ICMPv6 IPv6's).
DATAGRAM_GUARD = ("(v->ip_proto == 17 || (v->ip_version == 4 && v->ip_proto == 1) || "
                  "(v->ip_version == 6 && v->ip_proto == 58))")
_EVERY_TCP = "(v->ip_version != 0 && v->ip_proto == 6)"


def kernel_filter(stack) -> KernelFilter:
    """The kernel filter for the monitor filters of ``stack`` (``Stack.monitor_filters``)
    and its UDP/ICMP flow watchers (``Stack.datagram_filters``) as they are now."""
    stream, raw = stack.monitor_filters()
    datagram = stack.datagram_filters()
    every_tcp = None
    for sock_id, _, f in stream:
        if f is None:
            if raw or datagram:
                every_tcp = sock_id
                break
            return KernelFilter(None, False, f"socket {sock_id} has no filter: every TCP frame")
    for sock_id, _, f in raw:
        if f is None:
            return KernelFilter(None, True, f"raw socket {sock_id} has no filter: every frame")
    if every_tcp is not None and raw:
        return KernelFilter(None, True, f"socket {every_tcp} has no filter: every TCP frame")
    # Each distinct stream filter as seen, then each of those on the swapped frame, then
    # the raw filters (not swapped: they select frames, not flows), then the datagram
    # watchers' filters (both ways, like stream filters: they select flows).
    both_ways = {}
    if every_tcp is not None:
        both_ways[_EVERY_TCP] = _EVERY_TCP
    else:
        for _, domain, f in stream:
            both_ways.setdefault(_guard(domain, f.c_expr()),
                                 _guard(domain, f.c_expr(reverse=True)))
    datagram_ways = {}
    for _, domain, f in datagram:
        if f is None:
            seen = swapped = _guard(domain, DATAGRAM_GUARD)
        else:
            seen = _guard(domain, f"({DATAGRAM_GUARD} && {f.c_expr()})")
            swapped = _guard(domain, f"({DATAGRAM_GUARD} && {f.c_expr(reverse=True)})")
        datagram_ways.setdefault(seen, swapped)
    parts = list(dict.fromkeys([*both_ways, *both_ways.values(),
                                *(_raw_guard(domain, f.c_expr()) for _, domain, f in raw),
                                *datagram_ways, *datagram_ways.values()]))
    if not parts:
        return KernelFilter("(0)", False, "no monitor socket: no frame")
    expr = parts[0] if len(parts) == 1 else "(" + " || ".join(parts) + ")"
    why = f"{len(stream)} stream and {len(raw)} raw filter(s)"
    if datagram:
        why += f", {len(datagram)} UDP/ICMP flow watcher(s)"
    return KernelFilter(expr, bool(raw or datagram), why)


def flow_key(flow):
    """``(MxFlowKey, client direction)`` of a core flow (TCP, or a UDP/ICMP DatagramFlow
    whose ICMP "ports" are its type and counterpart type or code): the key bpf/mosxdp.c
    builds for any frame of it, and the MX_DIR_* index of the client's (originator's)
    frames in its counters."""
    src, sport, dst, dport, vlan_ids = flow.keys[0]
    ip_proto = flow.ip_proto if isinstance(flow, DatagramFlow) else 6
    return make_flow_key(src, sport, dst, dport, vlan_ids=vlan_ids, ip_proto=ip_proto)


class HybridProcessor:
    """The stack as the live engine's processor, with the kernel verdict map in step.

    ``process`` is the stack's bound method and ``outbox`` the stack's list (the engine's
    per-frame path is unchanged); ``end_batch``, ``advance_clock`` and ``finish`` run the
    stack's and then apply its ``kernel_updates``. Set ``program`` (an ``XdpProgram``, or
    anything with set_verdict/get_verdict/pop_verdict) once the engine is entered; without
    one, updates are discarded.
    """

    def __init__(self, stack, program=None):
        self.stack = stack
        self.process = stack.process
        self.outbox = stack.outbox
        self.program = program
        self.tick = None    # called after each batch and idle poll (status line, loss check)
        self._keys = {}     # flow -> (key, client dir), flows that have or had an entry
        self._merged = {}   # flow -> counters already added to the flow (per kernel dir)
        self.kernel = dict.fromkeys((
            "verdicts_set", "verdicts_removed", "entries_popped", "merged_packets",
            "merged_ip_bytes", "syncs", "map_errors"), 0)
        stack.on_flow_end = self._flow_end
        stack.kernel_sync = self._sync

    @property
    def wire_len(self):
        """The stack's: a callable giving the length on the wire of the frame being
        processed when the datapath copied only its first bytes (else 0)."""
        return self.stack.wire_len

    @wire_len.setter
    def wire_len(self, value):
        self.stack.wire_len = value

    @property
    def wire_frames(self) -> list:
        """What leaves instead of a frame the stack answered VERDICT_REPLACED."""
        return self.stack.wire_frames

    @property
    def counters(self) -> dict:
        out = dict(self.stack.counters)
        out.update(("kernel_" + k, v) for k, v in self.kernel.items())
        return out

    # ------------------------------------------------------------ processor interface
    def end_batch(self) -> None:
        self.stack.end_batch()
        if self.stack.kernel_updates:
            self.apply()
        if self.tick is not None:
            self.tick()

    def keep_frames(self) -> None:
        self.stack.keep_frames()

    def advance_clock(self, ts_us: int) -> None:
        self.stack.advance_clock(ts_us)
        if self.stack.kernel_updates:
            self.apply()
        if self.tick is not None:
            self.tick()

    def finish(self) -> None:
        self.stack.finish()
        self.apply()

    # ------------------------------------------------------------ the verdict map
    def _key(self, flow):
        k = self._keys.get(flow)
        if k is None:
            k = self._keys[flow] = flow_key(flow)
        return k

    def apply(self) -> None:
        """Write the stack's pending kernel updates to the verdict map, in order."""
        stack = self.stack
        updates, stack.kernel_updates = stack.kernel_updates, []
        prog = self.program
        if prog is None:
            return
        for action, flow in updates:
            try:
                if action == "remove":
                    self._pop(flow)
                    self._forget(flow)
                elif not flow.destroyed:   # ended in the same batch: nothing to install
                    key, cli_dir = self._key(flow)
                    if action == "state_only":
                        # The server's SYN-ACK may have passed before the entry existed (no
                        # watch armed by it): the client's next ACK comes here all the same.
                        prog.set_verdict(key, action, watch_any=cli_dir)
                    else:
                        prog.set_verdict(key, action)
                    self.kernel["verdicts_set"] += 1
            except OSError as exc:
                self._error(exc)

    def _forget(self, flow):
        self._keys.pop(flow, None)
        self._merged.pop(flow, None)

    def _pop(self, flow):
        prog = self.program
        if prog is None or flow not in self._keys:
            return
        v = prog.pop_verdict(self._keys[flow][0])
        if v is not None:
            self.kernel["entries_popped"] += 1
            self._merge(flow, v)
        self.kernel["verdicts_removed"] += 1

    def _flow_end(self, flow) -> None:
        """stack.on_flow_end: before CONN_END, the entry goes and its counts join the flow."""
        try:
            self._pop(flow)
        except OSError as exc:
            self._error(exc)
        self._forget(flow)

    def _sync(self, flow) -> None:
        """stack.kernel_sync: the counts so far join the flow; the entry stays."""
        prog = self.program
        if prog is None or flow not in self._keys:
            return
        try:
            v = prog.get_verdict(self._keys[flow][0])
        except OSError as exc:
            self._error(exc)
            return
        self.kernel["syncs"] += 1
        if v is not None:
            self._merge(flow, v)

    def _merge(self, flow, v) -> None:
        cli_dir = self._keys[flow][1]
        now = (v.packets, v.ip_bytes, v.frame_bytes, v.bytes)
        base = self._merged.get(flow)
        if base is None or any(n[d] < b[d] for n, b in zip(now, base) for d in (0, 1)):
            base = ((0, 0),) * 4   # first merge, or an entry evicted and made again
        letters = []
        tcp = not isinstance(flow, DatagramFlow)
        for index, side in enumerate(flow.sides):
            d = cli_dir if index == 0 else 1 - cli_dir
            pkts = now[0][d] - base[0][d]
            ip_bytes = now[1][d] - base[1][d]
            l2_bytes = now[2][d] - base[2][d]
            side.pkts += pkts
            side.ip_bytes += ip_bytes
            side.l2_bytes += l2_bytes
            side.bypassed_pkts += pkts
            side.bypassed_l2_bytes += l2_bytes
            side.bypassed_bytes += now[3][d] - base[3][d]
            self.kernel["merged_packets"] += pkts
            self.kernel["merged_ip_bytes"] += ip_bytes
            if not tcp:
                continue      # a datagram flow's letters: core/datagrams.py end_flow
            if pkts:
                end = v.seq_end[d]
                if side.carried_end is None or seq_delta(end, side.carried_end) > 0:
                    side.carried_end = end
            # The history letters of frames only the kernel saw, in the order it saw them.
            letters += [(ns, index, letter) for ns, letter in ((v.first_data_ns[d], "D"),
                                                              (v.first_ack_ns[d], "A")) if ns]
        for _, index, letter in sorted(letters):
            add_history(flow, index, letter)
        self._merged[flow] = now
        last_us = v.last_seen_ns // 1000
        if last_us > flow.last_ts:
            flow.last_ts = last_us

    def _error(self, exc) -> None:
        self.kernel["map_errors"] += 1
        if self.kernel["map_errors"] <= 3:
            print(f"mosxdp: kernel verdict map: {exc}", file=sys.stderr)

    def occupancy(self) -> int | None:
        prog = self.program
        try:
            return prog.verdict_count() if prog is not None else None
        except OSError:
            return None
