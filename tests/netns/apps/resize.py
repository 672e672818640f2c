"""Live test app: two apps on one context change the size of the server's payload at
MOS_HK_SND, on the flows to --port (public mOS API only):

- the word app replaces every --word in a server segment with --replacement, longer by k
  bytes: MOS_INSERT of k bytes where the word starts, then MOS_OVERWRITE of the
  replacement over it (the word and the inserted bytes);
- the cut app deletes every --cut with MOS_CHOMP.

Each looks at the payload as mtcp_getlastpkt shows it, i.e. with the edits made so far
(the other app's too): a retransmission already carries its edits, there is nothing left
to find. --log: JSON counters (words, cuts, refused: edits the stack refused), written
at each flow's end (a file write per edit would slow the segments down enough for the
server's tail-loss probes); --ready: see streamhash.py.
"""
import os
import socket
import sys

from mosxdp import *  # noqa: F401,F403

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import appkit  # noqa: E402
from appkit import teardown  # noqa: E402,F401

DESCRIPTION = "replace a word by a longer one (MOS_INSERT) and delete bytes (MOS_CHOMP)"


def add_arguments(parser):
    parser.add_argument("--port", type=int, required=True, help="edit the flows to this port")
    parser.add_argument("--word", required=True)
    parser.add_argument("--replacement", required=True)
    parser.add_argument("--cut", required=True)
    appkit.add_arguments(parser)


class App:
    """One of the two apps: its own stream socket, flows to --port tagged at CONN_START."""

    def __init__(self, mctx, counters, args):
        self.counters = counters
        self.args = args
        self.sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
        mtcp_register_callback(mctx, self.sock, MOS_ON_CONN_START, MOS_HK_SND, self.on_start)
        mtcp_register_callback(mctx, self.sock, MOS_ON_PKT_IN, MOS_HK_SND, self.on_packet)
        mtcp_register_callback(mctx, self.sock, MOS_ON_CONN_END, MOS_HK_SND, self.on_end)

    def on_start(self, mctx, sock, side, event, arg):
        if self.counters.start(mctx, sock) == self.args.port:
            mtcp_set_uctx(mctx, sock, "edit")

    def on_packet(self, mctx, sock, side, event, arg):
        tagged = self.counters.tagged_server_packet(mctx, sock, side)
        if tagged is None:
            return
        _, pinfo = tagged
        payload = bytes(pinfo.payload[:pinfo.payloadlen])
        # Right to left: an edit moves nothing before it.
        for at in reversed(occurrences(payload, self.needle)):
            try:
                self.edit(mctx, sock, side, at)
            except OSError:
                self.counters.counters["refused"] += 1
            else:
                self.counters.counters[self.name] += 1

    def on_end(self, mctx, sock, side, event, arg):
        if side == MOS_SIDE_SVR and mtcp_get_uctx(mctx, sock) is not None:
            self.counters.save()


def occurrences(data, needle):
    found = []
    at = data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + len(needle))
    return found


class WordApp(App):
    name = "words"

    def __init__(self, mctx, counters, args):
        super().__init__(mctx, counters, args)
        self.needle = args.word.encode()
        self.replacement = args.replacement.encode()
        self.extra = len(self.replacement) - len(self.needle)
        if self.extra <= 0:
            raise ValueError("--replacement must be longer than --word")

    def edit(self, mctx, sock, side, at):
        mtcp_setlastpkt(mctx, sock, side, at, self.replacement, self.extra,
                        MOS_INSERT | MOS_TCP_PAYLOAD)
        mtcp_setlastpkt(mctx, sock, side, at, self.replacement, len(self.replacement),
                        MOS_OVERWRITE | MOS_TCP_PAYLOAD | MOS_UPDATE_TCP_CHKSUM)


class CutApp(App):
    name = "cuts"

    def __init__(self, mctx, counters, args):
        super().__init__(mctx, counters, args)
        self.needle = args.cut.encode()

    def edit(self, mctx, sock, side, at):
        mtcp_setlastpkt(mctx, sock, side, at, None, len(self.needle),
                        MOS_CHOMP | MOS_TCP_PAYLOAD | MOS_UPDATE_TCP_CHKSUM)


def setup(mctx, args):
    counters = appkit.CountingApp(args, words=0, cuts=0, refused=0)
    WordApp(mctx, counters, args)
    CutApp(mctx, counters, args)
    return counters
