"""Live test app for runs split over workers: each worker's flow table as it saw it. Every
packet (MOS_ON_PKT_IN) is counted by its flow (client and server endpoints) and the side
that sent it; at the end (the app's teardown, which runs in each worker) the table is
written to DIR/flows-<pid>.json. Public mOS API only.

--ready PATH is created at the first CONN_START the monitor sees.
"""
import json
import os
import sys

from mosxdp import *  # noqa: F401,F403

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import appkit  # noqa: E402

DESCRIPTION = "per-worker flow tables: packets per flow and side (netns test app)"


class FlowWorkers(appkit.ReadyApp):
    def __init__(self, args):
        super().__init__(args)
        self.flows = {}

    def on_start(self, mctx, sock, side, event, arg):
        self.mark_ready()

    def on_packet(self, mctx, sock, side, event, arg):
        cli, svr = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
        key = f"{cli[0]}:{cli[1]}-{svr[0]}:{svr[1]}"
        counts = self.flows.setdefault(key, {"cli": 0, "svr": 0})
        counts["cli" if side == MOS_SIDE_CLI else "svr"] += 1


def add_arguments(parser):
    parser.add_argument("--dir", required=True, help="where flows-<pid>.json is written")
    appkit.add_ready_argument(parser)


def setup(mctx, args):
    return appkit.watch_streams(mctx, FlowWorkers(args))


def teardown(app):
    with open(os.path.join(app.args.dir, f"flows-{os.getpid()}.json"), "w") as f:
        json.dump({"pid": os.getpid(), "flows": app.flows}, f)
