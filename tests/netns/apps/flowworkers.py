"""Live test app for runs split over workers: each worker's flow table as it saw it. Every
packet (MOS_ON_PKT_IN) is counted by its flow (client and server endpoints) and the side
that sent it; at the end (the app's teardown, which runs in each worker) the table is
written to DIR/flows-<pid>.json. Public mOS API only.

--ready PATH is created at the first CONN_START the monitor sees.
"""
import json
import os
import socket

from mosxdp import *  # noqa: F401,F403

DESCRIPTION = "per-worker flow tables: packets per flow and side (netns test app)"


def add_arguments(parser):
    parser.add_argument("--dir", required=True, help="where flows-<pid>.json is written")
    parser.add_argument("--ready", help="file created at the first CONN_START")


class FlowWorkers:
    def __init__(self, args):
        self.dir = args.dir
        self.ready = args.ready
        self.flows = {}

    def on_start(self, mctx, sock, side, event, arg):
        if self.ready:
            open(self.ready, "w").close()
            self.ready = None

    def on_packet(self, mctx, sock, side, event, arg):
        cli, svr = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
        key = f"{cli[0]}:{cli[1]}-{svr[0]}:{svr[1]}"
        counts = self.flows.setdefault(key, {"cli": 0, "svr": 0})
        counts["cli" if side == MOS_SIDE_CLI else "svr"] += 1


def setup(mctx, args):
    app = FlowWorkers(args)
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_START, MOS_HK_SND, app.on_start)
    mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_SND, app.on_packet)
    return app


def teardown(app):
    with open(os.path.join(app.dir, f"flows-{os.getpid()}.json"), "w") as f:
        json.dump({"pid": os.getpid(), "flows": app.flows}, f)
