"""flowdump: each direction's reassembled bytestream in its own file.

Files are named as tcpflow names them: SRCIP.SRCPORT-DSTIP.DSTPORT with
zero-padded IPv4 octets and ports (IPv6 in its compressed form), and a
`c1`, `c2`... suffix when the same 4-tuple carries another connection (the
first suffix no file in the output directory has yet; a connection that
carries no data makes no file).
Bytes of a hole that is never filled are zeros, as tcpflow writes them.
Flows already under way when the capture starts are dumped too, as tcpflow does
(MOSX_MIDSTREAM on the listening socket; --no-midstream turns it off).
Written only against the public mOS API.
"""
import errno
import ipaddress
import os
import socket

from mosxdp import (MOS_HK_RCV, MOS_HK_SND, MOS_NULL, MOS_ON_CONN_END, MOS_ON_CONN_NEW_DATA,
                    MOS_ON_CONN_START, MOS_SIDE_BOTH, MOS_SIDE_CLI, MOS_SIDE_SVR,
                    MOS_SOCK_MONITOR_STREAM, MOSX_MIDSTREAM, SOL_MONSOCKET, MonitorFilter,
                    PeekOverrunError, mtcp_bind_monitor_filter, mtcp_get_uctx, mtcp_getpeername,
                    mtcp_peek, mtcp_register_callback, mtcp_set_uctx, mtcp_setsockopt,
                    mtcp_socket)

DESCRIPTION = "write each direction's reassembled bytestream to a file named like tcpflow's"


def add_arguments(parser):
    parser.add_argument("--outdir", required=True, help="directory for the stream files")
    parser.add_argument("--filter", default=None, help="stream SYN filter (e.g. 'tcp port 80')")
    parser.add_argument("--no-midstream", action="store_true",
                        help="dump only flows whose handshake was seen (default: also flows "
                             "already under way when the capture started, as tcpflow does)")


def endpoint_name(addr, port):
    ip = ipaddress.ip_address(addr)
    if ip.version == 4:
        host = ".".join(f"{int(octet):03d}" for octet in str(ip).split("."))
    else:
        host = str(ip)
    return f"{host}.{port:05d}"


class _Direction:
    """The file of one direction: bytes are written at their stream offset."""
    __slots__ = ("name", "fd", "written_to")

    def __init__(self, name):
        self.name = name      # without the connection suffix, chosen when the file is made
        self.fd = None
        self.written_to = 0

    def write_at(self, offset, data):
        os.pwrite(self.fd, data, offset)
        self.written_to = max(self.written_to, offset + len(data))

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class FlowDump:
    def __init__(self, outdir):
        self.outdir = outdir
        self.buf = bytearray(1 << 16)
        self.lost_bytes = 0
        self.files = 0

    def on_start(self, mctx, sock, side, event, arg):
        self._state(mctx, sock)

    def _state(self, mctx, sock):
        state = mtcp_get_uctx(mctx, sock)
        if state is not None:
            return state
        cli, svr = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
        cli_name, svr_name = endpoint_name(*cli), endpoint_name(*svr)
        # The server side's buffer holds what the client sent, and vice versa.
        state = {
            MOS_SIDE_SVR: _Direction(f"{cli_name}-{svr_name}"),
            MOS_SIDE_CLI: _Direction(f"{svr_name}-{cli_name}"),
            "offset": {MOS_SIDE_CLI: 0, MOS_SIDE_SVR: 0},
            "suffix": None,
        }
        mtcp_set_uctx(mctx, sock, state)
        return state

    def _create(self, state, side):
        """Open a direction's file. A connection's suffix is the first one (none, c1, c2 ...)
        that no file of its 4-tuple has: the directory, not a table in memory, remembers
        earlier connections, so a flood of 4-tuples costs nothing here."""
        outdir = self.outdir
        suffix = state["suffix"]
        if suffix is None:
            names = (state[MOS_SIDE_SVR].name, state[MOS_SIDE_CLI].name)
            count = 0
            while any(os.path.exists(os.path.join(outdir, n + (f"c{count}" if count else "")))
                      for n in names):
                count += 1
            suffix = state["suffix"] = f"c{count}" if count else ""
        path = os.path.join(outdir, state[side].name + suffix)
        try:
            state[side].fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            hint = ""
            if exc.errno in (errno.EACCES, errno.EPERM):
                hint = (" (after set-up the live monitor runs without CAP_DAC_OVERRIDE: use an"
                        " --outdir that root owns, or run with --keep-privileges)")
            raise OSError(exc.errno, f"flowdump: cannot create {path}: {exc.strerror}{hint}") from None
        self.files += 1

    def _drain(self, mctx, sock, side, state):
        direction = state[side]
        offset = state["offset"]
        view = memoryview(self.buf)
        while True:
            try:
                count = mtcp_peek(mctx, sock, side, self.buf, len(self.buf))
            except PeekOverrunError as exc:
                # Bytes lost (overwritten, or never captured): later bytes keep their place,
                # so the file has zeros there, as tcpflow writes a hole.
                self.lost_bytes += exc.lost
                offset[side] += exc.lost
                continue
            if count == 0:
                return
            if direction.fd is None:
                self._create(state, side)
            direction.write_at(offset[side], view[:count])
            offset[side] += count

    def on_new_data(self, mctx, sock, side, event, arg):
        self._drain(mctx, sock, side, self._state(mctx, sock))

    def on_end(self, mctx, sock, side, event, arg):
        state = self._state(mctx, sock)
        # At the flow's end the holes left are lost: mtcp_peek reads on past them.
        self._drain(mctx, sock, side, state)
        state[side].close()


def setup(mctx, args):
    os.makedirs(args.outdir, exist_ok=True)
    app = FlowDump(args.outdir)
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    if args.filter:
        # Also for flows picked up mid-stream, whose first frame is an orphan.
        mtcp_bind_monitor_filter(mctx, sock, MonitorFilter(stream_syn_filter=args.filter,
                                                          stream_orphan_filter=args.filter))
    # Flows already under way are dumped too, as tcpflow does.
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_MIDSTREAM,
                    0 if getattr(args, "no_midstream", False) else 1)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_START, MOS_HK_SND, app.on_start)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, app.on_new_data)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, app.on_end)
    return app
