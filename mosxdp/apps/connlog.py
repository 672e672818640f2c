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
datapath option) brings every frame through the monitor; offline every frame is inspected
anyway.

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
import argparse
import hashlib
import re
import socket

from mosxdp import (MOS_CLIBUF, MOS_HK_RCV, MOS_NULL, MOS_ON_CONN_END, MOS_ON_CONN_NEW_DATA,
                    MOSX_BYPASS, MOSX_MIDSTREAM, MOSX_STATE_ONLY, MOS_SVRBUF, MOS_SIDE_BOTH, MOS_SIDE_CLI, MOS_SOCK_MONITOR_STREAM,
                    MOS_TCP_STATE_CLI, MOS_TCP_STATE_SVR, MOSX_FLOW_STATS, SOL_MONSOCKET,
                    MOSX_SINK_HELP, MonitorFilter, mtcp_bind_monitor_filter, mtcp_getpeername,
                    mtcp_getsockopt, mosx_community_id, mosx_open_log, mosx_watch_datagrams,
                    mtcp_register_callback, mtcp_setsockopt, mtcp_socket)

DESCRIPTION = ("log one Zeek conn.log line per flow when it ends (JSON or Zeek TSV; live: "
               "state-only, see --full-inspection)")
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# The columns of --format tsv, with their Zeek types (conn.log's own, then ours).
FIELDS = (
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
    ("id.resp_h", "addr"), ("id.resp_p", "port"), ("proto", "enum"), ("duration", "interval"),
    ("orig_bytes", "count"), ("resp_bytes", "count"), ("conn_state", "string"),
    ("missed_bytes", "count"), ("history", "string"), ("orig_pkts", "count"),
    ("orig_ip_bytes", "count"), ("resp_pkts", "count"), ("resp_ip_bytes", "count"),
    ("client_state", "string"), ("server_state", "string"), ("end_reason", "string"),
    ("community_id", "string"),
)


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
    parser.add_argument("--filter", default=None,
                        help="stream SYN filter (e.g. 'tcp port 80'); without "
                             "--datagram-filter, no UDP or ICMP flow is logged then")
    parser.add_argument("--no-midstream", action="store_true",
                        help="log only flows whose handshake was seen (default: also flows "
                             "already under way when the capture started, as Zeek does)")
    parser.add_argument("--datagram-filter", default=None,
                        help="which UDP and ICMP flows to log (raw filter grammar, e.g. "
                             "'udp port 53 or icmp'; default: all)")
    parser.add_argument("--tcp-only", action="store_true",
                        help="log no UDP or ICMP flow (their frames then stay in the kernel)")
    parser.add_argument("--bypass-after-bytes", type=_byte_count, default=None, metavar="N",
                        help="stream depth: follow every frame until either direction passed "
                             "N bytes, then the kernel forwards the rest of the flow (live: it "
                             "never reaches Python). Without it, live flows are state-only: the "
                             "kernel forwards and counts their data frames, the monitor sees "
                             "SYN, FIN, RST and their ACKs, the lines are the same "
                             "(--full-inspection: every frame through the monitor)")


def community_id_seed(text):
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text!r}: a Community ID seed is 0 to 65535")
    return value


def _byte_count(text):
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a byte count") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a byte count is >= 0")
    return value


# Zeek's TCP endpoint states (TCP_ENDPOINT_*).
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)
_RSTOS0 = re.compile(r"\^?S[^HAFGIQ]*R.*")


def zeek_states(history):
    """Each endpoint's final state as Zeek's TCP analyzer sets it, replayed over the history
    letters (upper case: originator), which come in the order the packets did: only a
    side's first A or D matters to it (an inactive side becomes PARTIAL, or ESTABLISHED
    after the peer's SYN-ACK), and SYN, FIN and RST move it as Zeek does. A side never seen
    stays INACTIVE; one seen only mid-stream is PARTIAL until its FIN or RST."""
    state = {True: INACTIVE, False: INACTIVE}
    prev = dict(state)

    def move(side, new):
        prev[side], state[side] = state[side], new

    for letter in history.lstrip("^"):
        orig, kind = letter.isupper(), letter.upper()
        me, peer = state[orig], state[not orig]
        if me == INACTIVE:
            if kind == "S" or kind == "H":
                if orig:
                    move(orig, SYN_ACK_SENT if kind == "H" else SYN_SENT)
                else:
                    if peer == SYN_SENT or (kind == "S" and peer == SYN_ACK_SENT):
                        move(not orig, ESTABLISHED)
                    move(orig, ESTABLISHED)
            elif kind == "F":
                move(orig, CLOSED)
            elif kind == "R":
                move(orig, RESET)
            elif not orig and kind == "A" and state[True] == SYN_SENT:
                pass   # an ACK of the SYN before the SYN-ACK does not make a partial side
            elif peer == ESTABLISHED:
                move(orig, ESTABLISHED)   # the SYN was missed, the SYN-ACK was not
            else:
                move(orig, PARTIAL)
        elif me in (SYN_SENT, SYN_ACK_SENT):
            if kind == "F":
                move(orig, CLOSED)
            elif kind == "R":
                move(orig, RESET)
        elif me in (ESTABLISHED, PARTIAL):
            if kind == "S" and me == PARTIAL and peer == INACTIVE:
                move(orig, SYN_SENT)
            elif kind == "F":
                move(orig, CLOSED)
                if peer == RESET and prev[not orig] == CLOSED:
                    move(not orig, CLOSED)   # FIN then RST from the peer: a normal close
            elif kind == "R":
                move(orig, RESET)
        elif me == CLOSED and kind == "R" and peer != CLOSED:
            move(orig, RESET)
    return state[True], state[False]


def conn_state(history, orig_bytes=0, resp_bytes=0):
    """Zeek's conn_state (base/protocols/conn/main.zeek) from the endpoints' final states:
    a flow without a handshake is OTH while open, SF once both sides sent a FIN, SH or SHR
    when one did, RSTRH or OTH after a RST."""
    os_, rs = zeek_states(history)
    o_inactive = os_ in (INACTIVE, PARTIAL)
    r_inactive = rs in (INACTIVE, PARTIAL)
    if rs == RESET:
        if os_ in (SYN_SENT, SYN_ACK_SENT) or (os_ == RESET and orig_bytes == resp_bytes == 0):
            return "REJ"
        return "RSTRH" if o_inactive else "RSTR"
    if os_ == RESET:
        if r_inactive:
            return "RSTOS0" if _RSTOS0.fullmatch(history) else "OTH"
        return "RSTO"
    if os_ == CLOSED and rs == CLOSED:
        return "SF"
    if os_ == CLOSED:
        return "SH" if r_inactive else "S2"
    if rs == CLOSED:
        return "SHR" if o_inactive else "S3"
    if os_ == SYN_SENT and rs == INACTIVE:
        return "S0"
    if os_ == ESTABLISHED and rs == ESTABLISHED:
        return "S1"
    return "OTH"


def make_uid(*parts):
    """A Zeek-like connection uid, deterministic for a given flow and run."""
    digest = int.from_bytes(hashlib.sha1(repr(parts).encode()).digest()[:12], "big")
    chars = []
    for _ in range(17):
        digest, rem = divmod(digest, 62)
        chars.append(_BASE62[rem])
    return "C" + "".join(chars)


class ConnLog:
    def __init__(self, output, bypass_after=None, seed=0):
        self.output = output
        self.seed = seed
        self.flows = 0
        self.bypass_after = bypass_after
        self.bypassed = 0

    def on_new_data(self, mctx, sock, side, event, arg):
        """Stream depth: hand the flow to the kernel once a direction passed N bytes."""
        stats = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOSX_FLOW_STATS)
        if max(stats.stream_bytes[0], stats.stream_bytes[1]) >= self.bypass_after:
            mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_BYPASS, 1)
            mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, None)
            self.bypassed += 1

    def on_end(self, mctx, sock, side, event, arg):
        if side != MOS_SIDE_CLI:
            return  # CONN_END comes once per side; one line per flow
        stats = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOSX_FLOW_STATS)
        (orig_h, orig_p), (resp_h, resp_p) = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
        history = stats.history
        if history[:1].islower():
            # The first packet came from the responder: a flow picked up mid-stream whose
            # client the core guessed (by port) is the other side. Zeek marks that flip so.
            history = "^" + history
        self.flows += 1
        record = {
            "ts": stats.start_ts / 1e6,
            # Of the flow alone (not of the lines before it): the same with --workers.
            "uid": make_uid(stats.start_ts, orig_h, orig_p, resp_h, resp_p, stats.vlan_ids),
            "id.orig_h": orig_h, "id.orig_p": orig_p,
            "id.resp_h": resp_h, "id.resp_p": resp_p,
            "proto": "tcp",
            "duration": (stats.last_ts - stats.start_ts) / 1e6,
            "orig_bytes": stats.stream_bytes[0],
            "resp_bytes": stats.stream_bytes[1],
            "conn_state": conn_state(history, stats.stream_bytes[0], stats.stream_bytes[1]),
            # Bytes never captured that the receiver acknowledged or that lay below the
            # furthest byte seen: what mtcp_peek reports as holes, flowdump's zeros.
            "missed_bytes": stats.missed_bytes[0] + stats.missed_bytes[1],
            "history": history,
            "orig_pkts": stats.pkts[0], "orig_ip_bytes": stats.ip_bytes[0],
            "resp_pkts": stats.pkts[1], "resp_ip_bytes": stats.ip_bytes[1],
            "client_state": mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_CLI).name,
            "server_state": mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_SVR).name,
            "end_reason": stats.end_reason,
            "community_id": mosx_community_id(6, orig_h, resp_h, orig_p, resp_p, self.seed),
        }
        self.output.write(record)

    def on_datagram_end(self, mctx, stats):
        """A UDP or ICMP flow ended: its line."""
        self.flows += 1
        udp = stats.proto == "udp"
        if udp:
            orig, resp = stats.pkts[0] > 0, stats.pkts[1] > 0
            state = ("SF" if resp else "S0") if orig else ("SHR" if resp else "OTH")
        else:
            state = "OTH"
        record = {
            "ts": stats.start_ts / 1e6,
            "uid": make_uid(stats.start_ts, stats.orig_h, stats.orig_p, stats.resp_h,
                            stats.resp_p, stats.vlan_ids, stats.proto),
            "id.orig_h": stats.orig_h, "id.orig_p": stats.orig_p,
            "id.resp_h": stats.resp_h, "id.resp_p": stats.resp_p,
            "proto": stats.proto,
            "duration": (stats.last_ts - stats.start_ts) / 1e6,
            "orig_bytes": stats.payload_bytes[0],
            "resp_bytes": stats.payload_bytes[1],
            "conn_state": state,
            "missed_bytes": 0,
        }
        if stats.history:
            record["history"] = stats.history
        record.update({
            "orig_pkts": stats.pkts[0], "orig_ip_bytes": stats.ip_bytes[0],
            "resp_pkts": stats.pkts[1], "resp_ip_bytes": stats.ip_bytes[1],
            "end_reason": stats.end_reason,
            "community_id": mosx_community_id(stats.ip_proto, stats.orig_h, stats.resp_h,
                                              stats.orig_p, stats.resp_p, self.seed),
        })
        self.output.write(record)

    def close(self):
        self.output.close()


def setup(mctx, args):
    output = mosx_open_log(mctx, args.output, getattr(args, "format", "json"), zeek_path="conn",
                           fields=[name for name, _ in FIELDS], types=[kind for _, kind in FIELDS])
    bypass_after = getattr(args, "bypass_after_bytes", None)
    app = ConnLog(output, bypass_after, getattr(args, "community_id_seed", 0))
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    if args.filter:
        # Also for flows picked up mid-stream, whose first frame is an orphan.
        mtcp_bind_monitor_filter(mctx, sock, MonitorFilter(stream_syn_filter=args.filter,
                                                          stream_orphan_filter=args.filter))
    # State only: no bytestream buffers (mOS's no_ring_buffers, per socket).
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_CLIBUF, 0)
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVRBUF, 0)
    # Flows already under way get a line too (Zeek's OTH, SF ... without S and h).
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_MIDSTREAM,
                    0 if getattr(args, "no_midstream", False) else 1)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, app.on_end)
    if bypass_after is not None:
        mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, app.on_new_data)
    else:
        # Counters, flags and states are all a line needs: live, the kernel keeps them for
        # the data frames (--full-inspection turns this off).
        mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_STATE_ONLY, 1)
    datagram_filter = getattr(args, "datagram_filter", None)
    # --filter alone names the (TCP) flows to log: no UDP or ICMP flow then.
    if not getattr(args, "tcp_only", False) and (datagram_filter is not None or not args.filter):
        mosx_watch_datagrams(mctx, app.on_datagram_end, datagram_filter,
                             bypass_after_bytes=bypass_after)
    return app


def teardown(app):
    app.close()
