"""Live test app: a PKT_IN callback (MOS_HK_RCV) that raises on every --every'th call.

The monitor goes on (on_callback_error forward by default): every frame is still
forwarded. At teardown the app writes {"calls": N, "raised": M} to --count, its own count
of the callback's invocations and of the exceptions it raised, to be compared with the
monitor's `callback errors` count. Public mOS API only.

--ready PATH is created at the first call (frames reach the app).
"""
import json
import os
import socket
import sys

from mosxdp import *  # noqa: F401,F403

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import appkit  # noqa: E402

DESCRIPTION = "raise in a PKT_IN callback on every Nth packet (netns test app)"


class EveryNth(RuntimeError):
    pass


def add_arguments(parser):
    parser.add_argument("--every", type=int, default=10, help="raise on every Nth call")
    parser.add_argument("--count", required=True, help="JSON written at teardown")
    appkit.add_ready_argument(parser, "at the first call")


class RaiseEvery(appkit.ReadyApp):
    def __init__(self, args):
        super().__init__(args)
        self.every = args.every
        self.count_path = args.count
        self.calls = 0
        self.raised = 0

    def on_packet(self, mctx, sock, side, event, arg):
        self.calls += 1
        self.mark_ready()
        if self.calls % self.every == 0:
            self.raised += 1
            raise EveryNth(f"raise_every.py: call {self.calls} (raise number {self.raised})")


def setup(mctx, args):
    app = RaiseEvery(args)
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_RCV, app.on_packet)
    return app


def teardown(app):
    with open(app.count_path, "w") as f:
        json.dump({"calls": app.calls, "raised": app.raised}, f)
