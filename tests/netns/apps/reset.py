"""Live test app: reset running transfers (public mOS API only).

Once the server has sent --after bytes on a flow:
- to --sendpkt-port: an RST toward the client is built from mtcp_getlastpkt of the
  server's segment being processed (same addresses, ports and sequence number, flags
  RST|ACK, no payload) and sent with mtcp_sendpkt (again on the next segments, at
  most --max-rst times, in case the first was not in the client's window);
- to --reset-conn-port: mtcp_reset_conn (an RST to both ends), once.
--ready: see streamhash.py.
"""
import os
import sys

from mosxdp import *  # noqa: F401,F403

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import appkit  # noqa: E402
from appkit import teardown  # noqa: E402,F401

DESCRIPTION = "reset transfers with mtcp_sendpkt (RST from mtcp_getlastpkt) or mtcp_reset_conn"


def add_arguments(parser):
    parser.add_argument("--sendpkt-port", type=int, required=True)
    parser.add_argument("--reset-conn-port", type=int, required=True)
    parser.add_argument("--after", type=int, default=1 << 20, help="server bytes before the reset")
    parser.add_argument("--max-rst", type=int, default=20)
    appkit.add_arguments(parser)


class Reset(appkit.CountingApp):
    def __init__(self, args):
        super().__init__(args, sendpkt_rst=0, reset_conn=0, rst_seq=[])

    def on_start(self, mctx, sock, side, event, arg):
        port = self.start(mctx, sock)
        if port == self.args.sendpkt_port:
            mtcp_set_uctx(mctx, sock, ["sendpkt", 0])
        elif port == self.args.reset_conn_port:
            mtcp_set_uctx(mctx, sock, ["reset_conn", 0])

    def on_packet(self, mctx, sock, side, event, arg):
        tagged = self.tagged_server_packet(mctx, sock, side)
        if tagged is None:
            return
        state, pinfo = tagged
        if not pinfo.payloadlen or pinfo.offset < self.args.after:
            return
        if state[0] == "sendpkt":
            if state[1] >= self.args.max_rst:
                return
            pinfo.tcph[13] = TH_RST | TH_ACK
            pinfo.payloadlen = 0
            mtcp_sendpkt(mctx, sock, pinfo)
            state[1] += 1
            self.counters["rst_seq"].append([pinfo.seq, pinfo.offset])
            self.count("sendpkt_rst")
        elif not state[1]:
            state[1] = 1
            mtcp_reset_conn(mctx, sock)
            self.count("reset_conn")


def setup(mctx, args):
    return appkit.watch_streams(mctx, Reset(args))
