"""Live test app (monitoring only): per-flow sha256 and length of each direction's
reassembled bytestream, one JSON line per flow when it ends. Public mOS API only.

--ready PATH is created at the first CONN_START the monitor sees: the datapath is
live (frames reach the app), so the test can start.
"""
import hashlib
import json
import os
import socket
import sys

from mosxdp import *  # noqa: F401,F403

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import appkit  # noqa: E402

HEAD = 1024  # first bytes of each direction, logged (HTTP headers)
DESCRIPTION = "sha256 + length of each direction's bytestream per flow (netns test app)"


def add_arguments(parser):
    parser.add_argument("--log", required=True, help="JSON lines: one per ended flow")
    appkit.add_ready_argument(parser)


class StreamHash(appkit.ReadyApp):
    def __init__(self, args):
        super().__init__(args)
        self.log = open(args.log, "a", buffering=1)
        self.buf = bytearray(1 << 16)

    def on_start(self, mctx, sock, side, event, arg):
        self.mark_ready()
        cli, svr = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
        # index by the side whose buffer holds the bytes: SVR = what the client sent
        mtcp_set_uctx(mctx, sock, {"cli": cli, "svr": svr,
                                   MOS_SIDE_SVR: [hashlib.sha256(), 0, b""],
                                   MOS_SIDE_CLI: [hashlib.sha256(), 0, b""],
                                   "lost": 0})

    def _drain(self, mctx, sock, side, state):
        digest = state[side]
        view = memoryview(self.buf)
        while True:
            try:
                count = mtcp_peek(mctx, sock, side, self.buf, len(self.buf))
            except PeekOverrunError as exc:
                state["lost"] += exc.lost
                continue
            if not count:
                return
            digest[0].update(view[:count])
            if digest[1] < HEAD:
                digest[2] += bytes(view[:min(count, HEAD - digest[1])])
            digest[1] += count

    def on_data(self, mctx, sock, side, event, arg):
        state = mtcp_get_uctx(mctx, sock)
        if state is not None:
            self._drain(mctx, sock, side, state)

    def on_end(self, mctx, sock, side, event, arg):
        state = mtcp_get_uctx(mctx, sock)
        if state is None or side != MOS_SIDE_CLI:
            return
        for s in (MOS_SIDE_CLI, MOS_SIDE_SVR):
            self._drain(mctx, sock, s, state)
        c2s, s2c = state[MOS_SIDE_SVR], state[MOS_SIDE_CLI]
        self.log.write(json.dumps({
            "cli": list(state["cli"]), "svr": list(state["svr"]),
            "c2s_len": c2s[1], "c2s_sha256": c2s[0].hexdigest(), "c2s_head": c2s[2].hex(),
            "s2c_len": s2c[1], "s2c_sha256": s2c[0].hexdigest(), "s2c_head": s2c[2].hex(),
            "lost": state["lost"]}) + "\n")


def setup(mctx, args):
    app = StreamHash(args)
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_START, MOS_HK_SND, app.on_start)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, app.on_data)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, app.on_end)
    return app


def teardown(app):
    app.log.close()
