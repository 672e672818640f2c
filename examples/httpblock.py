"""httpblock: drop HTTP requests for a path prefix, reset their connections, count.

    mosxdp run ./examples/httpblock.py --pcap tests/data/http_sizes.pcap --block /1m --write out.pcap
    mosxdp run ./examples/httpblock.py --iface A --peer B --block /admin/

Packet-level work (docs/tutorial.md, steps 7 and 8): at MOS_HK_SND of every client
segment, mtcp_getlastpkt gives the frame; the one that starts the client's stream
(pinfo.offset 0) holds the request line. A request for a blocked path is dropped
(mtcp_setlastpkt MOS_DROP) and the connection reset at both ends (mtcp_reset_conn).
A timer re-armed in its own callback prints the counters every --interval seconds.
"""
import json
import socket

from mosxdp import *

DESCRIPTION = "drop HTTP requests for a path prefix and reset their connections"
TIMER_ID = 1


def add_arguments(parser):
    parser.add_argument("--block", required=True, metavar="PREFIX", help="path prefix to block")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between counter lines")


class Blocker:
    def __init__(self, prefix, interval):
        self.prefix = prefix.encode()
        self.interval = interval
        self.counts = {"requests": 0, "blocked": 0}

    def on_packet(self, mctx, sock, side, event, arg):
        if side != MOS_SIDE_CLI:           # at MOS_HK_SND, side is the sender
            return
        pinfo = PktInfo()
        mtcp_getlastpkt(mctx, sock, side, pinfo)
        if pinfo.offset != 0 or pinfo.payloadlen == 0:
            return                          # not the segment that starts the request
        words = bytes(pinfo.payload[:pinfo.payloadlen]).split(b" ", 2)
        self.counts["requests"] += 1
        if len(words) == 3 and words[1].startswith(self.prefix):
            mtcp_setlastpkt(mctx, sock, side, 0, None, 0, MOS_DROP)
            mtcp_reset_conn(mctx, sock)
            self.counts["blocked"] += 1
            (cli, cport), (svr, sport) = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
            print(json.dumps({"blocked": words[1].decode("latin-1"), "client": cli,
                              "client_port": cport, "server": svr, "server_port": sport}))

    def on_timer(self, mctx, timer_id, side, event, arg):
        print(json.dumps({"ts": mtcp_cb_get_ts(mctx) / 1e6, **self.counts}))
        mtcp_settimer(mctx, TIMER_ID, self.interval, self.on_timer)   # one-shot: re-arm


def setup(mctx, args):
    app = Blocker(args.block, args.interval)
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_SND, app.on_packet)
    mtcp_settimer(mctx, TIMER_ID, args.interval, app.on_timer)
    return app


def teardown(app):
    print(json.dumps({"final": True, **app.counts}))
