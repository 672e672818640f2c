"""Live test app: drop every SYN to one server port at MOS_HK_SND (public mOS API only).

The listening socket's SYN filter selects the flows to --port. CONN_START (the client's
first SYN, at HK_SND) drops the SYN with mtcp_setlastpkt(MOS_DROP); the retransmitted
SYNs of the same connection raise no second CONN_START, so PKT_IN at HK_SND drops
them too. --ready: see streamhash.py (an unfiltered socket sees every CONN_START).
"""
import os
import socket
import sys

from mosxdp import *  # noqa: F401,F403

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import appkit  # noqa: E402
from appkit import teardown  # noqa: E402,F401

DESCRIPTION = "drop SYNs to one port (netns test app)"


def add_arguments(parser):
    parser.add_argument("--port", type=int, required=True, help="server port whose SYNs are dropped")
    appkit.add_arguments(parser)


class DropSyn(appkit.CountingApp):
    def __init__(self, args):
        super().__init__(args, conn_start=0, syn_dropped=0)

    def on_start(self, mctx, sock, side, event, arg):
        self.counters["conn_start"] += 1
        mtcp_set_uctx(mctx, sock, "blocked")
        mtcp_setlastpkt(mctx, sock, side, 0, b"", 0, MOS_DROP)
        self.count("syn_dropped")

    def on_packet(self, mctx, sock, side, event, arg):
        if side != MOS_SIDE_CLI or mtcp_get_uctx(mctx, sock) != "blocked":
            return
        mtcp_getlastpkt(mctx, sock, side, self.pinfo)
        if self.pinfo.tcph[13] & TH_SYN:
            mtcp_setlastpkt(mctx, sock, side, 0, b"", 0, MOS_DROP)
            self.count("syn_dropped")


def setup(mctx, args):
    app = DropSyn(args)
    app.watch_ready(mctx)
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_bind_monitor_filter(mctx, sock, MonitorFilter(stream_syn_filter=f"tcp dst port {args.port}"))
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_START, MOS_HK_SND, app.on_start)
    mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_SND, app.on_packet)
    return app
