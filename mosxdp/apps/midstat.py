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
the table (ESTABLISHED, FIN_WAIT_1, ...). `--output` may name a unix socket, or with
`--json` a Redis server, instead of a file (docs/outputs.md, Sinks).

Time: the timer runs on the context's clock, so offline (--pcap) it follows the
packet timestamps and fires at the end of the RX batch (--batch-size) in which a
second of packet time has passed; a quiet stretch of several seconds gives one
refresh, not one per second. The first refresh comes at the end of the first
batch. Flows that start without a SYN (midstream pickup) raise no CONN_START and
are not listed, as in mOS. Reassembly buffers are turned off, and the listening socket says
it needs only states (MOSX_STATE_ONLY): live, the kernel forwards the flows' data frames
and the monitor sees only SYN, FIN, RST and the ACK of each SYN and FIN, which is all the
states change on; offline the engine fast-forwards them the same way, the states unchanged
(--full-inspection: every frame through the monitor).

Workers (`--workers N`, offline): each worker has the table of its flows, and its timer
fires at the same points of the input as one worker's. At each refresh the workers'
tables are merged into one (combine): the rows of worker 0, then worker 1's ..., each row
with its worker in the CPU column (and "cpu" in --json), as mOS prints one table per core.
The rows are those of a run on one worker; their order and CPU column differ.
"""
import errno
import ipaddress
import json

from mosxdp import (MOS_CLIBUF, MOS_HK_SND, MOS_ON_CONN_END, MOS_ON_CONN_START, MOS_SIDE_BOTH,
                    MOS_SIDE_CLI, MOS_SVRBUF, MOS_TCP_STATE_CLI, MOSX_STATE_ONLY,
                    MOS_TCP_STATE_SVR, SOL_MONSOCKET, mtcp_cb_get_ts, mtcp_getpeername,
                    mtcp_getsockopt, mtcp_register_callback, MOSX_SINK_HELP, mosx_open_sink,
                    mtcp_setsockopt, mtcp_settimer)

from ._common import MAX_INTERVAL, MIN_INTERVAL, check_option, interval_seconds, monitor_socket

DESCRIPTION = ("netstat-like table of monitored flows and their emulated TCP states, every "
               "second (live: state-only, see --full-inspection)")
TIMER_ID = 0
HEADER = "Proto CPU Client Address        Client State Server Address        Server State"


def add_arguments(parser):
    parser.add_argument("--json", action="store_true", help="one JSON line per refresh")
    parser.add_argument("--output", default="-", metavar="SINK",
                        help="where the tables (--json: the JSON lines) go: " + MOSX_SINK_HELP
                             + "; Redis with --json only")
    parser.add_argument("--interval", type=interval_seconds, default=1.0, metavar="SECONDS",
                        help=f"seconds between refreshes, {MIN_INTERVAL} to {MAX_INTERVAL} "
                             "(default 1)")
    parser.add_argument("--filter", default=None, help="stream SYN filter (e.g. 'tcp port 80')")


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
        # A worker of a split run is its own CPU (mctx.cpu); one context is its cpu.
        cpu = getattr(mctx, "cpu", self.cpu)
        rows = []
        for sock, (cli, svr) in self.flows.items():
            try:
                cli_state = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_CLI)
                svr_state = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_SVR)
            except OSError:
                continue   # ended between two refreshes without telling us
            rows.append({
                "sock": sock, "cpu": cpu,
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
            lines = [HEADER]
            for row in rows:
                lines.append(f"{'tcp':<5} {row['cpu']:<3} "
                             f"{endpoint(row['client_addr'], row['client_port']):<21} "
                             f"{row['client_state']:<12} "
                             f"{endpoint(row['server_addr'], row['server_port']):<21} "
                             f"{row['server_state']:<12}".rstrip())
            out.write("\n".join(lines) + "\n\n")
        out.flush()

    def close(self):
        self.output.close()


def combine_tables(records):
    """The tables the workers print at one refresh as one (mosx_open_output's combine)."""
    rows = [line for record in records for line in record.split(b"\n")[1:] if line]
    return [b"\n".join([HEADER.encode()] + rows) + b"\n\n"]


def combine_json(records):
    """The --json lines the workers write at one refresh as one."""
    docs = [json.loads(record) for record in records]
    flows = [flow for doc in docs for flow in doc["flows"]]
    return [json.dumps({"ts": docs[0]["ts"], "flows": flows}) + "\n"]


def setup(mctx, args):
    check_option("--interval", interval_seconds, args.interval)
    sock = monitor_socket(mctx, args.filter)
    output = mosx_open_sink(mctx, args.output,
                            combine=combine_json if args.json else combine_tables)
    if output.kind == "redis" and not args.json:
        # A Redis entry is one record: a JSON line, not a table of several.
        raise OSError(errno.EINVAL, f"--output {output.name}: Redis takes one record per "
                                    "entry: add --json")
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
