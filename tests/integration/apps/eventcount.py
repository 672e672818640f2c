"""Test app: counts events and writes them as JSON at the end (public API only).

frames: PKT_IN on a raw socket (every parseable frame); orphans: ORPHAN on a
stream socket; conn_start / conn_end: per side, at HK_SND / HK_RCV.
"""
import json
import socket

from mosxdp import (
    MOS_HK_RCV, MOS_HK_SND, MOS_NULL, MOS_ON_CONN_END, MOS_ON_CONN_START, MOS_ON_ORPHAN,
    MOS_ON_PKT_IN, MOS_SOCK_MONITOR_RAW, MOS_SOCK_MONITOR_STREAM, mtcp_register_callback,
    mtcp_socket,
)

DESCRIPTION = "count frames, orphans and connection starts/ends (integration test app)"


def add_arguments(parser):
    parser.add_argument("--counts", required=True, help="JSON file written at the end")


class Counts:
    def __init__(self, path):
        self.path = path
        self.counts = {"frames": 0, "orphans": 0, "conn_start": 0, "conn_end": 0}

    def bump(self, name):
        def callback(mctx, sock, side, event, arg):
            self.counts[name] += 1
        return callback


def setup(mctx, args):
    app = Counts(args.counts)
    raw = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_RAW, 0)
    mtcp_register_callback(mctx, raw, MOS_ON_PKT_IN, MOS_NULL, app.bump("frames"))
    stream = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_register_callback(mctx, stream, MOS_ON_ORPHAN, MOS_NULL, app.bump("orphans"))
    mtcp_register_callback(mctx, stream, MOS_ON_CONN_START, MOS_HK_SND, app.bump("conn_start"))
    mtcp_register_callback(mctx, stream, MOS_ON_CONN_END, MOS_HK_RCV, app.bump("conn_end"))
    return app


def teardown(app):
    with open(app.path, "w") as f:
        json.dump(app.counts, f)
