"""httplog, written with the facade (mosxdp.Monitor): the same output as httplog.py.

    mosxdp run ./examples/httplog_facade.py --pcap tests/data/http_sizes.pcap
"""
import json

from mosxdp import MOS_HK_RCV, MOS_NULL, MOS_ON_CONN_END, MOS_ON_CONN_NEW_DATA, MOS_SIDE_CLI, \
    MOS_SIDE_SVR, Monitor

DESCRIPTION = "log each HTTP connection's request line and response status (facade version)"
MAX_LINE = 8192


def add_arguments(parser):
    parser.add_argument("--filter", default="tcp port 80 or tcp port 8080",
                        help="stream SYN filter (default: %(default)s)")


def endpoint(addr, port):
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def line_done(data):
    return b"\r\n" in data or len(data) >= MAX_LINE


def log(mon, sock, **extra):
    flow = mon.uctx(sock, dict)
    request = flow.get(MOS_SIDE_SVR, b"").partition(b"\r\n")[0].decode("latin-1")
    status = flow.get(MOS_SIDE_CLI, b"").partition(b"\r\n")[0].split(b" ")
    cli, svr = mon.peers(sock)
    print(json.dumps({"client": endpoint(*cli), "server": endpoint(*svr),
                      "request": request or None,
                      "status": int(status[1]) if status[1:] and status[1].isdigit() else None,
                      **extra}), flush=True)


def setup(mctx, args):
    mon = Monitor(mctx)

    @mon.on(MOS_ON_CONN_NEW_DATA, MOS_NULL, syn_filter=args.filter)
    def on_data(mctx, sock, side, event, arg):
        flow = mon.uctx(sock, dict)
        if not line_done(flow.get(side, b"")):
            flow[side] = flow.get(side, b"") + mon.read(sock, side, MAX_LINE)
        if line_done(flow.get(MOS_SIDE_SVR, b"")) and line_done(flow.get(MOS_SIDE_CLI, b"")):
            log(mon, sock)
            mon.stop(sock)

    @mon.on(MOS_ON_CONN_END, MOS_HK_RCV, syn_filter=args.filter)
    def on_end(mctx, sock, side, event, arg):
        if side == MOS_SIDE_CLI:
            log(mon, sock, server_state=mon.state(sock, MOS_SIDE_SVR).name)
