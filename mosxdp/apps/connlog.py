"""connlog: one JSON line per flow when it ends, with Zeek conn.log fields.

Fields: ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto duration
orig_bytes resp_bytes conn_state missed_bytes history orig_pkts orig_ip_bytes
resp_pkts resp_ip_bytes, plus client_state and server_state (the final
emulated TCP states) and end_reason (fin, rst, timeout, evicted, eof).
Written only against the public mOS API.

--bypass-after-bytes N (stream depth, as Suricata's stream.reassembly.depth with
stream.bypass): the monitor follows the first N bytes of each direction; once EITHER
direction's stream has passed N bytes (checked at each CONN_NEW_DATA, i.e. once per
batch), the rest of the flow is handed to the kernel with MOSX_BYPASS: live, its data
frames are forwarded by the XDP program and never reach Python; its SYN/FIN/RST (and
the ACK of each FIN) still do, so the flow ends as usual. The line's packet and byte
counts stay complete (the kernel's counters are merged at CONN_END; offline the core
counts the bypassed frames) and bypassed bytes are not "missed". MOSX_BYPASS rather
than MOS_STOP_MON: a socket that stopped monitoring gets no CONN_END, and connlog
needs it.
"""
import hashlib
import json
import socket
import sys

from mosxdp import (MOS_CLIBUF, MOS_HK_RCV, MOS_NULL, MOS_ON_CONN_END, MOS_ON_CONN_NEW_DATA,
                    MOSX_BYPASS, MOS_SVRBUF, MOS_SIDE_BOTH, MOS_SIDE_CLI, MOS_SOCK_MONITOR_STREAM,
                    MOS_TCP_STATE_CLI, MOS_TCP_STATE_SVR, MOSX_FLOW_STATS, SOL_MONSOCKET,
                    MonitorFilter, mtcp_bind_monitor_filter, mtcp_getpeername, mtcp_getsockopt,
                    mtcp_register_callback, mtcp_setsockopt, mtcp_socket)

DESCRIPTION = "log one Zeek conn.log-style JSON line per flow when it ends"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def add_arguments(parser):
    parser.add_argument("--output", default="-", help="JSON lines file ('-': stdout)")
    parser.add_argument("--filter", default=None, help="stream SYN filter (e.g. 'tcp port 80')")
    parser.add_argument("--bypass-after-bytes", type=_byte_count, default=None, metavar="N",
                        help="stream depth: once either direction passed N bytes, the kernel "
                             "forwards the rest of the flow (live: it never reaches Python)")


def _byte_count(text):
    import argparse
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a byte count") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a byte count is >= 0")
    return value


def conn_state(history):
    """Zeek's conn_state from the history letters (upper case: originator)."""
    syn, synack = "S" in history, "h" in history
    orig_rst, resp_rst = "R" in history, "r" in history
    orig_fin, resp_fin = "F" in history, "f" in history
    if not syn and not synack:
        return "OTH"
    if syn and not synack:
        if orig_rst:
            return "RSTOS0"
        if resp_rst:
            return "REJ"
        return "SH" if orig_fin else "S0"
    if synack and not syn:
        if resp_rst:
            return "RSTRH"
        return "SHR" if resp_fin else "OTH"
    if orig_rst:
        return "RSTO"
    if resp_rst:
        return "RSTR"
    if orig_fin and resp_fin:
        return "SF"
    if orig_fin:
        return "S2"
    if resp_fin:
        return "S3"
    return "S1"


def make_uid(*parts):
    """A Zeek-like connection uid, deterministic for a given flow and run."""
    digest = int.from_bytes(hashlib.sha1(repr(parts).encode()).digest()[:12], "big")
    chars = []
    for _ in range(17):
        digest, rem = divmod(digest, 62)
        chars.append(_BASE62[rem])
    return "C" + "".join(chars)


class ConnLog:
    def __init__(self, output, bypass_after=None):
        self.output = output
        self.flows = 0
        self.bypass_after = bypass_after
        self.bypassed = 0

    def on_new_data(self, mctx, sock, side, event, arg):
        """Stream depth: hand the flow to the kernel once a direction passed N bytes."""
        stats = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOSX_FLOW_STATS)
        if max(stats.stream_bytes[0], stats.stream_bytes[1]) >= self.bypass_after:
            mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_BYPASS, 1)
            mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, None)
            self.bypassed += 1

    def on_end(self, mctx, sock, side, event, arg):
        if side != MOS_SIDE_CLI:
            return  # CONN_END comes once per side; one line per flow
        stats = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOSX_FLOW_STATS)
        (orig_h, orig_p), (resp_h, resp_p) = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
        history = stats.history
        self.flows += 1
        record = {
            "ts": stats.start_ts / 1e6,
            "uid": make_uid(stats.start_ts, orig_h, orig_p, resp_h, resp_p, self.flows),
            "id.orig_h": orig_h, "id.orig_p": orig_p,
            "id.resp_h": resp_h, "id.resp_p": resp_p,
            "proto": "tcp",
            "duration": (stats.last_ts - stats.start_ts) / 1e6,
            "orig_bytes": stats.stream_bytes[0],
            "resp_bytes": stats.stream_bytes[1],
            "conn_state": conn_state(history),
            "missed_bytes": stats.missed_bytes[0] + stats.missed_bytes[1],
            "history": history,
            "orig_pkts": stats.pkts[0], "orig_ip_bytes": stats.ip_bytes[0],
            "resp_pkts": stats.pkts[1], "resp_ip_bytes": stats.ip_bytes[1],
            "client_state": mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_CLI).name,
            "server_state": mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_SVR).name,
            "end_reason": stats.end_reason,
        }
        self.output.write(json.dumps(record) + "\n")

    def close(self):
        if self.output is not sys.stdout:
            self.output.close()
        else:
            self.output.flush()


def setup(mctx, args):
    output = sys.stdout if args.output == "-" else open(args.output, "w")
    bypass_after = getattr(args, "bypass_after_bytes", None)
    app = ConnLog(output, bypass_after)
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    if args.filter:
        mtcp_bind_monitor_filter(mctx, sock, MonitorFilter(stream_syn_filter=args.filter))
    # State only: no bytestream buffers (mOS's no_ring_buffers, per socket).
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_CLIBUF, 0)
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVRBUF, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, app.on_end)
    if bypass_after is not None:
        mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, app.on_new_data)
    return app


def teardown(app):
    app.close()
