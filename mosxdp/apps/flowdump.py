"""flowdump: each direction's reassembled bytestream in its own file.

Files are named as tcpflow names them: SRCIP.SRCPORT-DSTIP.DSTPORT with
zero-padded IPv4 octets and ports (IPv6 in its compressed form), and a
`c1`, `c2`... suffix when the same 4-tuple carries another connection (the
first suffix no file in the output directory has yet; a connection that
carries no data makes no file).
Bytes of a hole that is never filled are zeros, as tcpflow writes them, and so are the
payload bytes a capture cut by its snap length left out (a file ends at the last byte
seen); at exit one line on stderr says how many bytes are missing so.
Flows already under way when the capture starts are dumped too, as tcpflow does
(MOSX_MIDSTREAM on the listening socket; --no-midstream turns it off).
Written only against the public mOS API.

It needs the streams and no packet (MOSX_STREAM_ONLY on the listening socket): offline the
engine fast-forwards the flows' in-order frames, counting them and appending their payload
to the streams without the emulation, which sees the others (docs/datapath.md, Fast
forward; --full-inspection: every frame through the emulation). The files are the same.

Output (mosx_open_outdir): --outdir is made if absent and checked at start, live with the
privileges the monitor keeps after set-up, so a directory it could not write is refused
before anything is attached. Files are created O_EXCL|O_NOFOLLOW: a name already taken
(a file of an earlier run, a link, dangling or not) is never opened, followed or
truncated; the connection takes the next suffix instead. Bytes are handed over as they are
read: the directory's writer thread makes the files and writes them (pwrite, no buffer),
so the packet thread never waits for the file system. A file whose write fails keeps what
it has and gets no more; the other files go on, and the run exits 3 naming the first file
that failed and why.
"""
import ipaddress
import re
import socket

from mosxdp import (MOS_HK_RCV, MOS_HK_SND, MOS_NULL, MOS_ON_CONN_END, MOS_ON_CONN_NEW_DATA,
                    MOS_ON_CONN_START, MOS_SIDE_BOTH, MOS_SIDE_CLI, MOS_SIDE_SVR,
                    MOS_SOCK_MONITOR_STREAM, MOSX_MIDSTREAM, MOSX_STREAM_ONLY, SOL_MONSOCKET,
                    MonitorFilter,
                    PeekOverrunError, mosx_open_outdir, mosx_open_report,
                    mtcp_bind_monitor_filter, mtcp_get_uctx,
                    mtcp_getpeername, mtcp_peek, mtcp_register_callback, mtcp_set_uctx,
                    mtcp_setsockopt, mtcp_socket)

DESCRIPTION = "write each direction's reassembled bytestream to a file named like tcpflow's"


def add_arguments(parser):
    parser.add_argument("--outdir", required=True, help="directory for the stream files")
    parser.add_argument("--filter", default=None, help="stream SYN filter (e.g. 'tcp port 80')")
    parser.add_argument("--no-midstream", action="store_true",
                        help="dump only flows whose handshake was seen (default: also flows "
                             "already under way when the capture started, as tcpflow does)")


def endpoint_name(addr, port):
    """tcpflow's name of an endpoint: IPv4 as four zero-padded octets, IPv6 as text."""
    text = addr if isinstance(addr, str) else str(ipaddress.ip_address(addr))
    try:    # inet_pton: a tenth of ipaddress's cost, once per flow
        host = "%03d.%03d.%03d.%03d" % tuple(socket.inet_pton(socket.AF_INET, text))
    except OSError:
        host = str(ipaddress.ip_address(text))
    return f"{host}.{port:05d}"


class _Direction:
    """The file of one direction: bytes are written at their stream offset."""
    __slots__ = ("name", "file", "failed")

    def __init__(self, name):
        self.name = name      # without the connection suffix (the writer thread picks it)
        self.file = None      # the output directory's file, once asked for
        self.failed = False   # not made, or a write failed: later bytes are counted, not written

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


class FlowDump:
    def __init__(self, outdir):
        self.outdir = outdir  # mosx_open_outdir's: files are made and written through it
        self.buf = bytearray(1 << 16)
        self.lost_bytes = 0
        self.hole_bytes = 0   # of them, never seen (the rest were overwritten unread)

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
            "group": None,        # the two files as a group of the directory, from the first
            "ended": 0,           # sides whose end was seen
        }
        mtcp_set_uctx(mctx, sock, state)
        return state

    def _create(self, state, side):
        """Make a direction's file. A connection's two files share a suffix, the first one
        (none, c1, c2 ...) that no name of its 4-tuple has, whatever holds it (a file of an
        earlier connection or run, a link, dangling or not): the directory, not a table in
        memory, remembers earlier connections, so a flood of 4-tuples costs nothing here.
        The directory's writer thread finds the suffix when it makes the connection's first
        file (the next one when a name is taken meanwhile: files are made
        O_EXCL|O_NOFOLLOW, never opened over a name); the second file of the connection
        fails (counted) if its name was taken since."""
        group = state["group"]
        if group is None:
            group = state["group"] = self.outdir.group(
                (state[MOS_SIDE_SVR].name, state[MOS_SIDE_CLI].name))
        state[side].file = group.create(0 if side == MOS_SIDE_SVR else 1)

    def _write(self, state, side, offset, data):
        direction = state[side]
        if direction.file is None and not direction.failed:
            self._create(state, side)
        if direction.failed:
            self.outdir.skipped(len(data))
        elif not direction.file.write_at(data, offset):
            direction.failed = True
            direction.close()   # what was written stays; the run goes on

    def _drain(self, mctx, sock, side, state):
        offset = state["offset"]
        view = memoryview(self.buf)
        while True:
            try:
                count = mtcp_peek(mctx, sock, side, self.buf, len(self.buf))
            except PeekOverrunError as exc:
                # Bytes lost (overwritten, or never captured): later bytes keep their place,
                # so the file has zeros there, as tcpflow writes a hole.
                self.lost_bytes += exc.lost
                if exc.hole:
                    self.hole_bytes += exc.lost
                offset[side] += exc.lost
                continue
            if count == 0:
                return
            self._write(state, side, offset[side], view[:count])
            offset[side] += count

    def on_new_data(self, mctx, sock, side, event, arg):
        self._drain(mctx, sock, side, self._state(mctx, sock))

    def on_end(self, mctx, sock, side, event, arg):
        state = self._state(mctx, sock)
        # At the flow's end the holes left are lost: mtcp_peek reads on past them.
        self._drain(mctx, sock, side, state)
        state[side].close()
        state["ended"] += 1
        if state["ended"] == 2 and state["group"] is not None:   # CONN_END: once per side
            state["group"].close()

    def report(self):
        """The line that says which bytes the files miss (None when they miss none)."""
        return report_line(self.hole_bytes, self.lost_bytes - self.hole_bytes)


def report_line(holes, overwritten):
    """flowdump's line for ``holes`` bytes never seen and ``overwritten`` bytes lost to
    window overruns (None when both are 0)."""
    parts = []
    if holes:
        parts.append(f"{holes} stream bytes the monitor never saw (holes in the capture, or "
                     "payload its snap length cut)")
    if overwritten:
        parts.append(f"{overwritten} overwritten before they were read (window overruns)")
    if not parts:
        return None
    return "flowdump: " + " and ".join(parts) + " are zeros in the files, or absent from their ends"


_HOLES = re.compile(rb"(\d+) stream bytes the monitor never saw")
_OVERWRITTEN = re.compile(rb"(\d+) overwritten before")


def combine_reports(lines):
    """The workers' lines of a split run as one line of their counts summed."""
    def total(pattern):
        return sum(int(m.group(1)) for line in lines for m in [pattern.search(line)] if m)
    return [(report_line(total(_HOLES), total(_OVERWRITTEN)) + "\n").encode()]


def setup(mctx, args):
    app = FlowDump(mosx_open_outdir(mctx, args.outdir))
    app.summary = mosx_open_report(mctx, combine=combine_reports)
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    if args.filter:
        # Also for flows picked up mid-stream, whose first frame is an orphan.
        mtcp_bind_monitor_filter(mctx, sock, MonitorFilter(stream_syn_filter=args.filter,
                                                          stream_orphan_filter=args.filter))
    # Flows already under way are dumped too, as tcpflow does.
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_MIDSTREAM,
                    0 if getattr(args, "no_midstream", False) else 1)
    # Streams only: no callback of it reads a packet (offline, fast forward).
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_STREAM_ONLY, 1)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_START, MOS_HK_SND, app.on_start)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, app.on_new_data)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, app.on_end)
    return app


def teardown(app):
    line = app.report()
    if line:
        app.summary.write(line + "\n")
        app.summary.flush()
