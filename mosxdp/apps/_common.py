"""What several built-in apps share: option types, setup's check of a value that did not
come through argparse, and the sockets and options of the flow logs (connlog, eve,
zeeklog). Written only against the public mOS API, as the apps are; the leading
underscore keeps it out of `mosxdp run`'s list of apps."""
import argparse
import errno
import re
import socket

from mosxdp import (MOS_CLIBUF, MOS_HK_RCV, MOS_NULL, MOS_ON_CONN_END, MOS_ON_CONN_NEW_DATA,
                    MOS_SOCK_MONITOR_STREAM, MOS_SVRBUF, MOSX_BYPASS, MOSX_FLOW_STATS,
                    MOSX_MIDSTREAM, SOL_MONSOCKET, MonitorFilter, mosx_watch_datagrams,
                    mtcp_bind_monitor_filter, mtcp_getsockopt, mtcp_register_callback,
                    mtcp_setsockopt, mtcp_socket)

MIN_INTERVAL = 0.001
MAX_INTERVAL = 365 * 86400


_PORT_SUFFIX = re.compile(r"(.*):(\d{1,5})")


def split_host(host):
    """A Host header as (name, port or None): "example.com:8080" -> ("example.com", 8080);
    an IPv6 literal keeps its brackets ("[::1]:80" -> ("[::1]", 80))."""
    m = _PORT_SUFFIX.fullmatch(host)
    return (m.group(1), int(m.group(2))) if m else (host, None)


def integer(text, what, low=0, high=None):
    """An integer option (0x.. too) from ``low`` to ``high``; ``what`` says the range."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"{text!r}: {what}")
    return value


def community_id_seed(text):
    return integer(text, "a Community ID seed is 0 to 65535", 0, 0xFFFF)


def byte_count(text):
    return integer(text, "a byte count is >= 0")


def interval_seconds(text, zero=False):
    """An interval option in seconds; ``zero``: 0 is allowed too (the app's meaning)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not (zero and value == 0) and not MIN_INTERVAL <= value <= MAX_INTERVAL:
        # (also NaN and the infinities)
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be {'0 (only at the end) or ' if zero else ''}between "
            f"{MIN_INTERVAL} and {MAX_INTERVAL} seconds")
    return value


def check_option(option, parse, value):
    """setup's check of an option's value, which argparse checked with ``parse`` unless the
    args came from elsewhere (the API): EINVAL naming the option."""
    try:
        parse(value)
    except argparse.ArgumentTypeError as exc:
        raise OSError(errno.EINVAL, f"{option} {exc}") from None


def monitor_socket(mctx, syn_filter=None, orphans=False):
    """A listening stream socket, bound to ``syn_filter`` when one is given (``orphans``:
    also for flows picked up mid-stream, whose first frame is an orphan)."""
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    if syn_filter:
        mtcp_bind_monitor_filter(mctx, sock, MonitorFilter(
            stream_syn_filter=syn_filter, stream_orphan_filter=syn_filter if orphans else None))
    return sock


def add_flow_log_arguments(parser):
    """The options that choose a flow log's flows."""
    parser.add_argument("--filter", default=None,
                        help="stream SYN filter (e.g. 'tcp port 80'); without "
                             "--datagram-filter, no UDP or ICMP flow is logged then")
    parser.add_argument("--no-midstream", action="store_true",
                        help="log only flows whose handshake was seen (default: also flows "
                             "already under way when the capture started, as Zeek does)")
    parser.add_argument("--datagram-filter", default=None,
                        help="which UDP and ICMP flows to log (raw filter grammar, e.g. "
                             "'udp port 53 or icmp'; default: all)")
    parser.add_argument("--tcp-only", action="store_true",
                        help="log no UDP or ICMP flow (their frames then stay in the kernel)")


def flow_log_socket(mctx, on_end, syn_filter=None, midstream=True):
    """The listening socket of a flow log: ``on_end`` at CONN_END (once per side), no
    bytestream buffers (state only: mOS's no_ring_buffers, per socket), and flows already
    under way too unless ``midstream`` is false (Zeek's OTH, SF ... without S and h)."""
    sock = monitor_socket(mctx, syn_filter, orphans=True)
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_CLIBUF, 0)
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVRBUF, 0)
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_MIDSTREAM, 1 if midstream else 0)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, on_end)
    return sock


def watch_datagrams(mctx, args, on_end, bypass_after):
    """A flow log's UDP and ICMP flows (add_flow_log_arguments): none with --tcp-only, nor
    with --filter alone, which names the (TCP) flows to log."""
    datagram_filter = getattr(args, "datagram_filter", None)
    if not getattr(args, "tcp_only", False) and (datagram_filter is not None or not args.filter):
        mosx_watch_datagrams(mctx, on_end, datagram_filter, bypass_after_bytes=bypass_after)


def bypass_past(mctx, sock, depth):
    """Stream depth, at CONN_NEW_DATA: hand the flow to the kernel once either direction
    passed ``depth`` bytes (and stop this callback for it); True if it was handed over."""
    stats = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOSX_FLOW_STATS)
    if max(stats.stream_bytes[0], stats.stream_bytes[1]) < depth:
        return False
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_BYPASS, 1)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, None)
    return True
