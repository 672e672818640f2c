"""Live test app: overwrite payload bytes of the server's segments at MOS_HK_SND
(public mOS API only).

In every server->client segment of a flow to --csum-port or --nocsum-port, each
occurrence of --marker is overwritten in place with --replacement (same length) by
mtcp_setlastpkt(MOS_OVERWRITE | MOS_TCP_PAYLOAD), with MOS_UPDATE_TCP_CHKSUM for
--csum-port and without it for --nocsum-port (the TCP checksum goes stale).
--ready: see streamhash.py.
"""
import os
import sys

from mosxdp import *  # noqa: F401,F403

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import appkit  # noqa: E402
from appkit import teardown  # noqa: E402,F401

DESCRIPTION = "overwrite a marker in server payloads, with or without the TCP checksum fix"


def add_arguments(parser):
    parser.add_argument("--marker", required=True)
    parser.add_argument("--replacement", required=True)
    parser.add_argument("--csum-port", type=int, required=True)
    parser.add_argument("--nocsum-port", type=int, required=True)
    appkit.add_arguments(parser)


class Overwrite(appkit.CountingApp):
    def __init__(self, args):
        super().__init__(args, csum=0, nocsum=0)
        self.marker = args.marker.encode()
        self.replacement = args.replacement.encode()
        if len(self.marker) != len(self.replacement):
            raise ValueError("--marker and --replacement must have the same length")

    def on_start(self, mctx, sock, side, event, arg):
        port = self.start(mctx, sock)
        if port == self.args.csum_port:
            mtcp_set_uctx(mctx, sock, "csum")
        elif port == self.args.nocsum_port:
            mtcp_set_uctx(mctx, sock, "nocsum")

    def on_packet(self, mctx, sock, side, event, arg):
        tagged = self.tagged_server_packet(mctx, sock, side)
        if tagged is None:
            return
        mode, pinfo = tagged
        payload = bytes(pinfo.payload[:pinfo.payloadlen])
        option = MOS_OVERWRITE | MOS_TCP_PAYLOAD
        if mode == "csum":
            option |= MOS_UPDATE_TCP_CHKSUM
        at = payload.find(self.marker)
        while at >= 0:
            mtcp_setlastpkt(mctx, sock, side, at, self.replacement, len(self.replacement), option)
            self.count(mode)
            at = payload.find(self.marker, at + 1)


def setup(mctx, args):
    return appkit.watch_streams(mctx, Overwrite(args))
