"""Live test app: count the ARP frames a raw socket sees (public mOS API only).

An AF_INET raw socket, as a mOS app opens it, with raw_pkt_filter "arp": the frames must
come from the XDP program to user space (non-IP frames) and be forwarded after the
callback. --ready: see streamhash.py (an unfiltered listener sees every CONN_START).
"""
import os
import socket
import sys

from mosxdp import *  # noqa: F401,F403

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import appkit  # noqa: E402
from appkit import teardown  # noqa: E402,F401

DESCRIPTION = "count ARP frames on a raw socket (netns test app)"


def add_arguments(parser):
    appkit.add_arguments(parser)


class RawArp(appkit.CountingApp):
    def __init__(self, args):
        super().__init__(args, arp=0, not_arp=0)

    def on_raw(self, mctx, sock, side, event, arg):
        mtcp_getlastpkt(mctx, sock, side, self.pinfo)
        ethh = bytes(self.pinfo.ethh)
        self.count("arp" if ethh[-2:] == b"\x08\x06" else "not_arp")


def setup(mctx, args):
    app = RawArp(args)
    app.watch_ready(mctx)
    raw = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    mtcp_bind_monitor_filter(mctx, raw, MonitorFilter(raw_pkt_filter="arp"))
    mtcp_register_callback(mctx, raw, MOS_ON_PKT_IN, MOS_NULL, app.on_raw)
    return app
