"""midstat: a netstat-like table of the flows being monitored, refreshed every second.

A port of mOS's `midstat` sample, written only against the public API. A flow
enters the table at MOS_ON_CONN_START (client side, HK_SND: its first SYN) and
leaves it at MOS_ON_CONN_END. Every `--interval` seconds (default 1) a timer set
with mtcp_settimer, and re-armed in its own callback, prints one row per flow:
client and server address:port and the emulated TCP state of each side
(mtcp_getsockopt MOS_TCP_STATE_CLI / MOS_TCP_STATE_SVR, read at print time).

    Proto CPU Client Address        Client State Server Address        Server State
    tcp   0   10.77.0.1:37786       ESTABLISHED  10.77.0.2:8080        ESTABLISHED

`--json` prints one JSON line per refresh instead:
``{"ts": SECONDS, "flows": [{"sock", "client_addr", "client_port", "client_state",
"server_addr", "server_port", "server_state"}, ...]}`` with the states' names as in
the table (ESTABLISHED, FIN_WAIT_1, ...).

Time: the timer runs on the context's clock, so offline (--pcap) it follows the
packet timestamps and fires at the end of the RX batch (--batch-size) in which a
second of packet time has passed; a quiet stretch of several seconds gives one
refresh, not one per second. The first refresh comes at the end of the first
batch. Flows that start without a SYN (midstream pickup) raise no CONN_START and
are not listed, as in mOS. Reassembly buffers are turned off, and the listening socket says
it needs only states (MOSX_STATE_ONLY): live, the kernel forwards the flows' data frames
and the monitor sees only SYN, FIN, RST and the ACK of each SYN and FIN, which is all the
states change on (--full-inspection: every frame through the monitor).
"""
import argparse
import errno
import ipaddress
import json
import socket

from mosxdp import (MOS_CLIBUF, MOS_HK_SND, MOS_ON_CONN_END, MOS_ON_CONN_START, MOS_SIDE_BOTH,
                    MOS_SIDE_CLI, MOS_SOCK_MONITOR_STREAM, MOS_SVRBUF, MOS_TCP_STATE_CLI,
                    MOSX_STATE_ONLY,
                    MOS_TCP_STATE_SVR, SOL_MONSOCKET, MonitorFilter, mtcp_bind_monitor_filter,
                    mtcp_cb_get_ts, mtcp_getpeername, mtcp_getsockopt, mtcp_register_callback,
                    mosx_open_output, mtcp_setsockopt, mtcp_settimer, mtcp_socket)

DESCRIPTION = ("netstat-like table of monitored flows and their emulated TCP states, every "
               "second (live: state-only, see --full-inspection)")
TIMER_ID = 0


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="one JSON line per refresh")
    parser.add_argument("--output", default="-", help="where the tables go ('-': stdout)")
    parser.add_argument("--interval", type=interval_seconds, default=1.0, metavar="SECONDS",
                        help=f"seconds between refreshes, {MIN_INTERVAL} to {MAX_INTERVAL} "
                             "(default 1)")
    parser.add_argument("--filter", default=None, help="stream SYN filter (e.g. 'tcp port 80')")


MIN_INTERVAL = 0.001
MAX_INTERVAL = 365 * 86400


def interval_seconds(text):
    """--interval as argparse reads it (setup checks a value given otherwise the same)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:        # also NaN and the infinities
        raise argparse.ArgumentTypeError(
            f"{text!r}: must be between {MIN_INTERVAL} and {MAX_INTERVAL} seconds")
    return value


def state_name(state):
    return state.name[len("TCP_"):] if state is not None else "-"


def endpoint(addr, port):
    text = f"[{addr}]" if ipaddress.ip_address(addr).version == 6 else addr
    return f"{text}:{port}"


class MidStat:
    def __init__(self, mctx, output, as_json, interval, cpu=0):
        self.mctx = mctx
        self.output = output
        self.as_json = as_json
        self.interval = interval
        self.cpu = cpu
        self.flows = {}          # sock -> ((client addr, port), (server addr, port)), in start order
        self.refreshes = 0

    # ------------------------------------------------------------ callbacks
    def on_start(self, mctx, sock, side, event, arg):
        if side == MOS_SIDE_CLI and sock not in self.flows:
            self.flows[sock] = tuple(mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH))

    def on_end(self, mctx, sock, side, event, arg):
        self.flows.pop(sock, None)

    def on_timer(self, mctx, timer_id, side, event, arg):
        self.refresh(mctx)
        mtcp_settimer(mctx, TIMER_ID, self.interval, self.on_timer)

    # -------------------------------------------------------------- output
    def rows(self, mctx):
        rows = []
        for sock, (cli, svr) in self.flows.items():
            try:
                cli_state = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_CLI)
                svr_state = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_SVR)
            except OSError:
                continue   # ended between two refreshes without telling us
            rows.append({
                "sock": sock,
                "client_addr": cli[0], "client_port": cli[1], "client_state": state_name(cli_state),
                "server_addr": svr[0], "server_port": svr[1], "server_state": state_name(svr_state),
            })
        return rows

    def refresh(self, mctx):
        self.refreshes += 1
        rows = self.rows(mctx)
        out = self.output
        if self.as_json:
            out.write(json.dumps({"ts": mtcp_cb_get_ts(mctx) / 1e6, "flows": rows}) + "\n")
        else:
            lines = ["Proto CPU Client Address        Client State Server Address        Server State"]
            for row in rows:
                lines.append(f"{'tcp':<5} {self.cpu:<3} "
                             f"{endpoint(row['client_addr'], row['client_port']):<21} "
                             f"{row['client_state']:<12} "
                             f"{endpoint(row['server_addr'], row['server_port']):<21} "
                             f"{row['server_state']:<12}".rstrip())
            out.write("\n".join(lines) + "\n\n")
        out.flush()

    def close(self):
        self.output.close()


def setup(mctx, args):
    try:
        interval_seconds(args.interval)
    except argparse.ArgumentTypeError as exc:
        raise OSError(errno.EINVAL, f"--interval {exc}") from None
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    if args.filter:
        mtcp_bind_monitor_filter(mctx, sock, MonitorFilter(stream_syn_filter=args.filter))
    output = mosx_open_output(mctx, args.output)
    app = MidStat(mctx, output, args.json, args.interval, getattr(mctx, "cpu", 0))
    # State only: no bytestream buffers.
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_CLIBUF, 0)
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVRBUF, 0)
    # Only the states are shown: live, the kernel forwards the data frames.
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_STATE_ONLY, 1)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_START, MOS_HK_SND, app.on_start)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_SND, app.on_end)
    mtcp_settimer(mctx, TIMER_ID, args.interval, app.on_timer)
    return app


def teardown(app):
    app.close()
