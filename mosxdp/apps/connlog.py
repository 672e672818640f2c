"""connlog: one JSON line per flow when it ends, with Zeek conn.log fields.

Fields: ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto duration
orig_bytes resp_bytes conn_state missed_bytes history orig_pkts orig_ip_bytes
resp_pkts resp_ip_bytes, plus client_state and server_state (the final
emulated TCP states) and end_reason (fin, rst, timeout, evicted, eof).
Written only against the public mOS API.
"""
import hashlib
import json
import socket
import sys

from mosxdp import (
    MOS_CLIBUF, MOS_HK_RCV, MOS_ON_CONN_END, MOS_SVRBUF, MOS_SIDE_BOTH, MOS_SIDE_CLI, MOS_SOCK_MONITOR_STREAM,
    MOS_TCP_STATE_CLI, MOS_TCP_STATE_SVR, MOSX_FLOW_STATS, SOL_MONSOCKET, MonitorFilter,
    mtcp_bind_monitor_filter, mtcp_getpeername, mtcp_getsockopt, mtcp_register_callback,
    mtcp_setsockopt, mtcp_socket,
)

DESCRIPTION = "log one Zeek conn.log-style JSON line per flow when it ends"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def add_arguments(parser):
    parser.add_argument("--output", default="-", help="JSON lines file ('-': stdout)")
    parser.add_argument("--filter", default=None, help="stream SYN filter (e.g. 'tcp port 80')")


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
    def __init__(self, output):
        self.output = output
        self.flows = 0

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
    app = ConnLog(output)
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    if args.filter:
        mtcp_bind_monitor_filter(mctx, sock, MonitorFilter(stream_syn_filter=args.filter))
    # State only: no bytestream buffers (mOS's no_ring_buffers, per socket).
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_CLIBUF, 0)
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVRBUF, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, app.on_end)
    return app


def teardown(app):
    app.close()
