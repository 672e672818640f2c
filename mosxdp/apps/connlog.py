"""connlog: one line per flow when it ends, with Zeek conn.log fields.

Fields: ts uid id.orig_h id.orig_p id.resp_h id.resp_p proto duration
orig_bytes resp_bytes conn_state missed_bytes history orig_pkts orig_ip_bytes
resp_pkts resp_ip_bytes, plus client_state and server_state (the final
emulated TCP states), end_reason (fin, rst, timeout, evicted, eof) and community_id
(Community ID v1, --community-id-seed; Zeek's community-id package names it so).
Written only against the public mOS API.

UDP and ICMP flows get lines too (mosx_watch_datagrams; --tcp-only turns them off, and
their frames then stay in the kernel), with Zeek's flow semantics: proto "udp" or
"icmp" (ICMPv6 too), ICMP "ports" are the message type (id.orig_p) and the counterpart
type or the code (id.resp_p), orig_bytes/resp_bytes count UDP payload bytes (ICMP: bytes
beyond the 8-byte ICMP header), conn_state is SF (both sides sent), S0 (only the
originator), SHR (only the responder: the roles were flipped, the capture missed the
request) for UDP and OTH for ICMP, history has D/d for UDP (a leading ^ when Zeek's
likely-server-port rule flipped the roles) and is absent for ICMP, missed_bytes is 0, and
there are no client_state/server_state. They end after udp_timeout / icmp_timeout idle
seconds (default 60, as Zeek), at eviction, or at the end of the run.
--datagram-filter selects them (raw filter grammar: e.g. 'udp port 53 or icmp'), as
--filter selects TCP flows; --filter without --datagram-filter logs TCP flows only.

--format json (the default): one JSON object per line, as Zeek's JSON logs. --format tsv:
Zeek's TSV (its default format: #separator, #fields, #types ... header, #close at the end).

Each line is written when its flow ends, in that order (through mosx_open_log and
mosx_open_sink: to a file at most 64 KiB or one second behind; a symbolic link at --output
is refused; a write that fails is counted and the run exits 3 with the file named).
--output may name a unix socket or a Redis server instead (docs/outputs.md, Sinks): each
JSON line is then one record there, sent from a queue that never holds the monitor up.

Flows already under way when the capture starts are logged too, as Zeek logs them
(MOSX_MIDSTREAM on the listening socket; --no-midstream turns it off): history without
S and h (a leading ^ when the first packet was the responder's), conn_state from Zeek's
endpoint states (OTH while open, SF when both sides sent a FIN, SH/SHR/RSTRH ...).

State only: connlog needs counters, flags and state changes, not payload, so its listening
socket says so (MOSX_STATE_ONLY). Live, each flow is handed to the kernel at its start: the
XDP program forwards its data frames and counts them (packets, bytes, the history letters
D and A, the highest sequence end, per direction) and sends only the SYN, FIN and RST
frames and the ACK of each SYN and FIN on to the monitor, which merges the kernel's counts
before it handles them: the lines are those of full inspection. --full-inspection (a
datapath option) brings every frame through the monitor. Offline the engine fast-forwards
such flows: it counts their regular frames (in order, inside the window) and the emulation
sees the rest, its state brought up to date first, so the lines are those of full
inspection (docs/datapath.md, Fast forward).

--bypass-after-bytes N (stream depth, as Suricata's stream.reassembly.depth with
stream.bypass): the monitor follows the first N bytes of each direction; once EITHER
direction's stream has passed N bytes (checked at each CONN_NEW_DATA, i.e. once per
batch), the rest of the flow is handed to the kernel with MOSX_BYPASS: live, its data
frames are forwarded by the XDP program and never reach Python; its SYN/FIN/RST (and
the ACK of each FIN) still do, so the flow ends as usual. A UDP or ICMP flow is handed
over once either direction sent N payload bytes, and ends on its idle timeout (the
kernel's last-seen time decides). The line's packet and byte
counts stay complete (the kernel's counters are merged at CONN_END; offline the core
counts the bypassed frames) and bypassed bytes are not "missed". MOSX_BYPASS rather
than MOS_STOP_MON: a socket that stopped monitoring gets no CONN_END, and connlog
needs it. With it, flows are inspected in full until N bytes (not state only).
"""
from mosxdp import (MOS_NULL, MOS_ON_CONN_NEW_DATA, MOSX_CONN_FIELDS, MOSX_STATE_ONLY,
                    MOS_SIDE_CLI, SOL_MONSOCKET, MOSX_SINK_HELP, mosx_conn_record, mosx_open_log,
                    mtcp_register_callback, mtcp_setsockopt)

from ._common import (add_flow_log_arguments, bypass_past, byte_count, community_id_seed,
                      flow_log_socket, watch_datagrams)

DESCRIPTION = ("log one Zeek conn.log line per flow when it ends (JSON or Zeek TSV; live: "
               "state-only, see --full-inspection)")
# The columns of --format tsv, with their Zeek types (conn.log's own, then ours).
FIELDS = MOSX_CONN_FIELDS


def add_arguments(parser):
    parser.add_argument("--output", default="-", metavar="SINK",
                        help="where the lines go, one per flow: " + MOSX_SINK_HELP +
                             "; --format tsv needs a file or '-'")
    parser.add_argument("--format", choices=("json", "tsv"), default="json",
                        help="json: one JSON object per line (default); tsv: Zeek's TSV "
                             "with its #fields/#types header")
    parser.add_argument("--community-id-seed", type=community_id_seed, default=0, metavar="N",
                        help="the Community ID seed, 0 to 65535 (default 0; the same on "
                             "every sensor and tool whose records are to join)")
    add_flow_log_arguments(parser)
    parser.add_argument("--bypass-after-bytes", type=byte_count, default=None, metavar="N",
                        help="stream depth: follow every frame until either direction passed "
                             "N bytes, then the kernel forwards the rest of the flow (live: it "
                             "never reaches Python). Without it, live flows are state-only: the "
                             "kernel forwards and counts their data frames, the monitor sees "
                             "SYN, FIN, RST and their ACKs, the lines are the same "
                             "(--full-inspection: every frame through the monitor)")


class ConnLog:
    def __init__(self, output, bypass_after=None, seed=0):
        self.output = output
        self.seed = seed
        self.flows = 0
        self.bypass_after = bypass_after
        self.bypassed = 0

    def on_new_data(self, mctx, sock, side, event, arg):
        """Stream depth: hand the flow to the kernel once a direction passed N bytes."""
        if bypass_past(mctx, sock, self.bypass_after):
            self.bypassed += 1

    def on_end(self, mctx, sock, side, event, arg):
        if side != MOS_SIDE_CLI:
            return  # CONN_END comes once per side; one line per flow
        self.flows += 1
        self.output.write(mosx_conn_record(mctx, sock, self.seed))

    def on_datagram_end(self, mctx, stats):
        """A UDP or ICMP flow ended: its line."""
        self.flows += 1
        self.output.write(mosx_conn_record(mctx, stats, self.seed))

    def close(self):
        self.output.close()


def setup(mctx, args):
    output = mosx_open_log(mctx, args.output, getattr(args, "format", "json"), zeek_path="conn",
                           fields=[name for name, _ in FIELDS], types=[kind for _, kind in FIELDS])
    bypass_after = getattr(args, "bypass_after_bytes", None)
    app = ConnLog(output, bypass_after, getattr(args, "community_id_seed", 0))
    sock = flow_log_socket(mctx, app.on_end, args.filter,
                           midstream=not getattr(args, "no_midstream", False))
    if bypass_after is not None:
        mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, app.on_new_data)
    else:
        # Counters, flags and states are all a line needs: live, the kernel keeps them for
        # the data frames (--full-inspection turns this off).
        mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_STATE_ONLY, 1)
    watch_datagrams(mctx, args, app.on_datagram_end, bypass_after)
    return app


def teardown(app):
    app.close()
