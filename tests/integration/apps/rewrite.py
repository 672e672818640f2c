"""Test app for --write: drops and overwrites packets at MOS_HK_SND (public API only).

Connections are numbered in the order of their CONN_START (client side):
- connection 0: the first 4 payload bytes of every server segment become
  b"MOSX", with MOS_UPDATE_TCP_CHKSUM (the TCP checksum stays valid);
- connection 1: the same overwrite without it (the checksum goes stale);
- connection 2: every third pure ACK of the client is dropped.
Frames are numbered from 1 in input order by a raw socket's PKT_IN, which
runs before the stream callbacks of the same frame; the log (JSON) lists
what was done to which input frame.
"""
import json
import socket

from mosxdp import (
    MOS_DROP, MOS_HK_SND, MOS_NULL, MOS_ON_CONN_START, MOS_ON_PKT_IN, MOS_OVERWRITE,
    MOS_SIDE_CLI, MOS_SIDE_SVR, MOS_SOCK_MONITOR_RAW, MOS_SOCK_MONITOR_STREAM, MOS_TCP_PAYLOAD,
    MOS_UPDATE_TCP_CHKSUM, PktInfo, mtcp_get_uctx, mtcp_getlastpkt, mtcp_register_callback,
    mtcp_set_uctx, mtcp_setlastpkt, mtcp_socket,
)

DESCRIPTION = "drop and overwrite packets at HK_SND (integration test app for --write)"
MARK = b"MOSX"
TH_ACK = 0x10


def add_arguments(parser):
    parser.add_argument("--log", required=True, help="JSON file: what was done to which frame")


class Rewrite:
    def __init__(self, path):
        self.path = path
        self.frame = 0
        self.connections = 0
        self.acks = 0
        self.pinfo = PktInfo()
        self.log = {"frames": 0, "drops": [], "overwrites": []}

    def on_frame(self, mctx, sock, side, event, arg):
        self.frame += 1

    def on_start(self, mctx, sock, side, event, arg):
        if side == MOS_SIDE_CLI:
            mtcp_set_uctx(mctx, sock, self.connections)
            self.connections += 1

    def on_packet(self, mctx, sock, side, event, arg):
        number = mtcp_get_uctx(mctx, sock)
        if number is None:
            return
        pinfo = self.pinfo
        mtcp_getlastpkt(mctx, sock, side, pinfo)
        if number in (0, 1) and side == MOS_SIDE_SVR and pinfo.payloadlen >= len(MARK):
            option = MOS_OVERWRITE | MOS_TCP_PAYLOAD
            if number == 0:
                option |= MOS_UPDATE_TCP_CHKSUM
            mtcp_setlastpkt(mctx, sock, side, 0, MARK, len(MARK), option)
            self.log["overwrites"].append({"frame": self.frame, "offset": 0, "data": MARK.hex(),
                                           "tcp_chksum": number == 0})
        elif number == 2 and side == MOS_SIDE_CLI and pinfo.payloadlen == 0 \
                and pinfo.tcph[13] == TH_ACK:
            self.acks += 1
            if self.acks % 3 == 0:
                mtcp_setlastpkt(mctx, sock, side, 0, b"", 0, MOS_DROP)
                self.log["drops"].append(self.frame)


def setup(mctx, args):
    app = Rewrite(args.log)
    raw = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_RAW, 0)
    mtcp_register_callback(mctx, raw, MOS_ON_PKT_IN, MOS_NULL, app.on_frame)
    stream = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_register_callback(mctx, stream, MOS_ON_CONN_START, MOS_HK_SND, app.on_start)
    mtcp_register_callback(mctx, stream, MOS_ON_PKT_IN, MOS_HK_SND, app.on_packet)
    return app


def teardown(app):
    app.log["frames"] = app.frame
    with open(app.path, "w") as f:
        json.dump(app.log, f)
