"""Test app: sleeps --ms milliseconds on every TCP segment of a flow (public API only), so
that a run over a small capture lasts long enough for the progress line."""
import socket
import time

from mosxdp import (MOS_HK_SND, MOS_ON_PKT_IN, MOS_SOCK_MONITOR_STREAM, mtcp_register_callback,
                    mtcp_socket)

DESCRIPTION = "sleep on every segment (integration test app)"


def add_arguments(parser):
    parser.add_argument("--ms", type=float, default=1.0, help="milliseconds per segment")


def setup(mctx, args):
    seconds = args.ms / 1000

    def on_segment(mctx, sock, side, event, arg):
        time.sleep(seconds)

    sock = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_SND, on_segment)
