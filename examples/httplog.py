"""httplog: one JSON line per HTTP connection: its request line and response status.

    mosxdp run ./examples/httplog.py --pcap tests/data/http_sizes.pcap
    mosxdp run ./examples/httplog.py --iface A --peer B --filter "tcp port 80"

It reads the first request line and the first status line of each connection from
the reassembled bytestreams (a line split over several segments is fine), then stops
monitoring the connection. docs/tutorial.md builds this file step by step.
"""
import json
import socket

from mosxdp import *

DESCRIPTION = "log each HTTP connection's request line and response status (JSON lines)"
MAX_LINE = 8192


def add_arguments(parser):
    parser.add_argument("--filter", default="tcp port 80 or tcp port 8080",
                        help="stream SYN filter (default: %(default)s)")


def endpoint(addr, port):
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def flow_state(mctx, sock):
    flow = mtcp_get_uctx(mctx, sock)
    if flow is None:                       # first callback of this flow
        cli, svr = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
        flow = {"client": endpoint(*cli), "server": endpoint(*svr),
                MOS_SIDE_SVR: b"", MOS_SIDE_CLI: b""}   # what each side's buffer gave us
        mtcp_set_uctx(mctx, sock, flow)
    return flow


def line_done(data):
    return b"\r\n" in data or len(data) >= MAX_LINE


def on_data(mctx, sock, side, event, arg):
    flow = flow_state(mctx, sock)
    buf = bytearray(4096)
    while not line_done(flow[side]):
        n = mtcp_peek(mctx, sock, side, buf, len(buf))  # side SVR: what the client sent
        if n == 0:
            break
        flow[side] += buf[:n]
    if line_done(flow[MOS_SIDE_SVR]) and line_done(flow[MOS_SIDE_CLI]):
        log(flow)                          # both lines in: stop monitoring this flow
        mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_STOP_MON, MOS_SIDE_BOTH)


def on_end(mctx, sock, side, event, arg):
    if side == MOS_SIDE_CLI:               # CONN_END comes once per side: log once
        flow = flow_state(mctx, sock)
        state = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_SVR)
        log(flow, server_state=state.name)  # an exchange that never completed


def log(flow, **extra):
    request = flow[MOS_SIDE_SVR].partition(b"\r\n")[0].decode("latin-1")
    status = flow[MOS_SIDE_CLI].partition(b"\r\n")[0].split(b" ")
    print(json.dumps({"client": flow["client"], "server": flow["server"],
                      "request": request or None,
                      "status": int(status[1]) if status[1:] and status[1].isdigit() else None,
                      **extra}), flush=True)


def setup(mctx, args):
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_bind_monitor_filter(mctx, sock, MonitorFilter(stream_syn_filter=args.filter))
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, on_end)
