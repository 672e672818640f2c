"""What the counting test apps (dropsyn, overwrite, reset) share: the --log counters file,
rewritten whenever the counters change (the tests read it while the monitor runs), the
--ready file, created at the first CONN_START (see streamhash.py), and the packets of the
flows an app tagged (its uctx). Public mOS API only. An app file imports this after
putting its own folder on sys.path (`mosxdp run` loads apps by path)."""
import json
import os
import socket

from mosxdp import MOS_HK_SND, MOS_ON_CONN_START, MOS_ON_PKT_IN, MOS_SIDE_BOTH, MOS_SIDE_SVR, \
    MOS_SOCK_MONITOR_STREAM, PktInfo, mtcp_get_uctx, mtcp_getlastpkt, mtcp_getpeername, \
    mtcp_register_callback, mtcp_socket


def add_arguments(parser):
    parser.add_argument("--log", required=True, help="JSON counters, rewritten on change")
    add_ready_argument(parser)


def add_ready_argument(parser, when="at the first CONN_START"):
    parser.add_argument("--ready", help=f"file created {when}")


class ReadyApp:
    """An app with a --ready file: created once, at the first ``mark_ready``."""

    def __init__(self, args):
        self.args = args
        self.ready = args.ready

    def mark_ready(self) -> None:
        if self.ready:
            open(self.ready, "w").close()
            self.ready = None


class CountingApp(ReadyApp):
    def __init__(self, args, **counters):
        super().__init__(args)
        self.counters = counters
        self.pinfo = PktInfo()

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] += n
        self.save()

    def save(self) -> None:
        tmp = self.args.log + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.counters, f)
        os.replace(tmp, self.args.log)

    def watch_ready(self, mctx) -> None:
        """An unfiltered stream socket, which sees every CONN_START, for the ready file
        (the app's own sockets may filter)."""
        watch = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
        mtcp_register_callback(mctx, watch, MOS_ON_CONN_START, MOS_HK_SND,
                               lambda mctx, sock, side, event, arg: self.mark_ready())

    def start(self, mctx, sock) -> int:
        """At CONN_START: the ready file; the flow's server port."""
        self.mark_ready()
        _cli, (_addr, port) = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
        return port

    def tagged_server_packet(self, mctx, sock, side):
        """(the flow's uctx, the PktInfo of the packet) for a packet of the server in a flow
        the app tagged; else None."""
        if side != MOS_SIDE_SVR:
            return None
        tag = mtcp_get_uctx(mctx, sock)
        if tag is None:
            return None
        mtcp_getlastpkt(mctx, sock, side, self.pinfo)
        return tag, self.pinfo


def watch_streams(mctx, app):
    """A stream socket whose CONN_START and PKT_IN, both at MOS_HK_SND, call
    ``app.on_start`` and ``app.on_packet``; returns ``app`` (setup's result)."""
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_START, MOS_HK_SND, app.on_start)
    mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_SND, app.on_packet)
    return app


def teardown(app):
    app.save()
