"""UDP and ICMP flows (an extension: mOS monitors TCP only): mosx_watch_datagrams.

The mOS API stays TCP: UDP and ICMP reach an app through raw sockets (every frame) and,
per flow, through this watcher, which hands the app one record per UDP or ICMP flow when
the flow ends (Zeek's flow semantics: mosxdp/core/datagrams.py).
"""
import errno
import ipaddress
import socket

from ..types import DatagramFlowStats
from .context import _error, _stack
from .sockets import _DOMAINS, _compile


def _record(stack):
    def record(flow):
        stats = DatagramFlowStats()
        stats.proto = flow.proto
        stats.ip_proto = flow.ip_proto
        (src, sport, dst, dport, _), _ = flow.keys
        stats.orig_h, stats.orig_p = str(ipaddress.ip_address(src)), sport
        stats.resp_h, stats.resp_p = str(ipaddress.ip_address(dst)), dport
        stats.vlan_ids = flow.vlan_ids
        stats.start_ts = flow.start_ts + stack.wall_offset_us
        stats.last_ts = flow.last_ts + stack.wall_offset_us
        for index, side in enumerate(flow.sides):
            stats.pkts[index] = side.pkts
            stats.ip_bytes[index] = side.ip_bytes
            stats.l2_bytes[index] = side.l2_bytes
            stats.payload_bytes[index] = flow.payload_bytes(index)
            stats.bypassed_pkts[index] = side.bypassed_pkts
            stats.bypassed_l2_bytes[index] = side.bypassed_l2_bytes
        stats.history = ("^" if flow.flipped else "") + flow.history
        stats.end_reason = flow.end_reason
        stats.kernel_verdict = flow.kernel_verdict
        stats.one_way = flow.one_way
        return stats
    return record


def mosx_watch_datagrams(mctx, callback, filter=None, domain=socket.AF_UNSPEC,
                         bypass_after_bytes=None):
    """Track UDP and ICMP (v4 and v6) flows: ``callback(mctx, stats)`` runs once per flow
    when it ends (idle for udp_timeout / icmp_timeout, evicted, or the end of the run),
    with a ``DatagramFlowStats``. Returns the watcher's id.

    ``filter``: a raw-packet filter (``udp port 53``, ``icmp``, ``host 10.0.0.1``, ...)
    tested on a flow's first frame; None: every UDP and ICMP flow. Live, the XDP program
    sends the frames of matching flows (both directions) to user space, and no other
    UDP/ICMP frame. ``domain``: AF_INET, AF_INET6 or AF_UNSPEC. ``bypass_after_bytes``:
    once either direction of a flow sent that many payload bytes, the rest of the flow is
    handed to the kernel (live: forwarded by the XDP program, counted there, the counts
    merged before ``callback``), when every watcher of the flow allows it. Errors: EINVAL
    (not callable, bad filter naming its token, bad byte count), EAFNOSUPPORT."""
    stack = _stack(mctx)
    if not callable(callback):
        raise _error(errno.EINVAL, f"callback {callback!r} is not callable")
    if not isinstance(domain, int) or domain not in _DOMAINS:
        raise _error(errno.EAFNOSUPPORT, f"domain {domain!r} is not AF_INET, AF_INET6 or "
                     "AF_UNSPEC")
    if bypass_after_bytes is not None and (type(bypass_after_bytes) is not int
                                           or bypass_after_bytes < 0):
        raise _error(errno.EINVAL, f"bypass_after_bytes {bypass_after_bytes!r} is not a "
                     "byte count (an integer >= 0) or None")
    compiled = _compile(filter, raw=True)
    watcher = stack.datagram_table().add_watcher(
        _DOMAINS[domain], compiled, callback, _record(stack), bypass_after_bytes)
    if getattr(mctx.engine, "filters_changed", None) is not None:
        mctx.engine.filters_changed()
    return watcher.id
