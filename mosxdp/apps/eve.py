"""eve: one Suricata EVE JSON line per flow when it ends (``"event_type": "flow"``).

The fields and their spellings are Suricata's (every line validates against the JSON schema
of Suricata's EVE records): ``timestamp`` (ISO 8601, microseconds, UTC offset), ``flow_id``,
``event_type``, ``src_ip``, ``src_port``, ``dest_ip``, ``dest_port`` (src: the client),
``ip_v``, ``proto`` ("TCP", "UDP", "ICMP", "IPv6-ICMP"), ``app_proto``, the ``flow`` object (``pkts_toserver``,
``pkts_toclient``, ``bytes_toserver``, ``bytes_toclient``, ``bypassed``, ``start``,
``end``, ``age``, ``state``, ``bypass``, ``reason``, ``alerted``), ``community_id``, the
``tcp`` object (``tcp_flags``, ``tcp_flags_ts``, ``tcp_flags_tc``, one true boolean per flag
seen, ``state``, ``ts_gap``/``tc_gap``) and, offline, ``pcap_cnt`` and ``pcap_filename``.
UDP and ICMP flows (mosx_watch_datagrams, Zeek's flow semantics; --tcp-only turns them
off) have no ``tcp`` object; an ICMP flow has ``icmp_type`` (and ``icmp_code`` for a type
without an answer type), ``response_icmp_type`` once the responder answered, no ports.

With sessions (the default; --no-sessions: flow records only, and no flow is followed by
the session layer) it also writes a ``tls`` record per TLS handshake, an ``http`` record per
HTTP transaction and ``dns`` records (Suricata's version 3: a ``request`` and a
``response`` per DNS transaction) from the subscriptions (mosx_subscribe 'tls', 'http',
'dns'; docs/subscriptions.md), each with its flow's ``flow_id`` and ``community_id``, and
the flow record then names the flow's ``app_proto``. As zeeklog's, a flow is handed to the
kernel once its sessions are parsed; its flow record's counts stay exact.

Counted as Suricata counts: packets and whole frames' bytes (Ethernet header included)
per direction, the kernel's included for a flow handed to it (--bypass-after-bytes, as
connlog's: then also ``flow.bypassed`` with the bypassed part, ``state`` "bypassed" and
``bypass`` "capture" live, "local" offline and observe-only, where the core only counted
those frames).
docs/pipeline.md says where these records differ from Suricata's, and why. Written only
against the public mOS API; through mosx_open_sink, as connlog's lines (a file, a unix
socket or Redis).
"""
import functools
import hashlib
import json
import time

from mosxdp import (MOS_NULL, MOS_ON_CONN_NEW_DATA, MOS_SIDE_BOTH, MOS_SIDE_CLI,
                    MOS_TCP_STATE_CLI, MOS_TCP_STATE_SVR, MOSX_FLOW_STATS, SOL_MONSOCKET,
                    TH_ACK, TH_CWR, TH_ECE, TH_FIN, TH_PUSH, TH_RST, TH_SYN, TH_URG, TcpState,
                    mosx_community_id, mosx_conn_uid, mosx_frame_count, mosx_open_sink,
                    mosx_session_options, mosx_subscribe, MOSX_SINK_HELP, mtcp_getpeername,
                    mtcp_getsockopt, mtcp_register_callback)

from ._common import (add_flow_log_arguments, bypass_past, byte_count, community_id_seed,
                      flow_log_socket, split_host, watch_datagrams)

DESCRIPTION = ("log Suricata EVE JSON lines: event_type flow per flow when it ends, tls, "
               "http and dns per session")

# Suricata's TCP session state follows the server's side (a client FIN makes it
# close_wait, a server FIN fin_wait1): the emulated server's state, in its words.
_SESSION_STATE = {
    TcpState.TCP_CLOSED: "closed", TcpState.TCP_LISTEN: "none",
    TcpState.TCP_SYN_SENT: "syn_sent", TcpState.TCP_SYN_RCVD: "syn_recv",
    TcpState.TCP_ESTABLISHED: "established", TcpState.TCP_FIN_WAIT_1: "fin_wait1",
    TcpState.TCP_FIN_WAIT_2: "fin_wait2", TcpState.TCP_CLOSE_WAIT: "close_wait",
    TcpState.TCP_CLOSING: "closing", TcpState.TCP_LAST_ACK: "last_ack",
    TcpState.TCP_TIME_WAIT: "time_wait",
}
# The flow's state from the session's, as Suricata moves it.
_FLOW_STATE = {"established": "established", "fin_wait1": "established",
               "fin_wait2": "established", "closing": "established",
               "close_wait": "established", "last_ack": "closed", "time_wait": "closed",
               "closed": "closed"}
# Why the flow's record was written, in Suricata's words: it logs a flow when its flow
# manager lets it go, a closed one after a short timeout (fin, rst), an idle one after
# the flow timeout; an evicted one is forced out; at the end of the input, shutdown.
_REASON = {"fin": "timeout", "rst": "timeout", "timeout": "timeout", "evicted": "forced",
           "eof": "shutdown"}
_FLAG_NAMES = (("syn", TH_SYN), ("fin", TH_FIN), ("rst", TH_RST), ("psh", TH_PUSH),
               ("ack", TH_ACK), ("urg", TH_URG), ("ecn", TH_ECE), ("cwr", TH_CWR))
# The TLS versions as Suricata writes them (and "UNDETERMINED" without a ServerHello).
_TLS_VERSIONS = {0x0002: "SSLv2", 0x0300: "SSLv3", 0x0301: "TLSv1", 0x0302: "TLS 1.1",
                 0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}
_IP_PROTO = {"tcp": 6, "udp": 17}
# Suricata's flow_id fits in 51 bits (JSON readers that hold numbers as doubles).
_FLOW_ID_MASK = (1 << 51) - 1


def add_arguments(parser):
    parser.add_argument("--output", default="-", metavar="SINK",
                        help="where the EVE JSON lines go, one per flow: " + MOSX_SINK_HELP)
    add_flow_log_arguments(parser)
    parser.add_argument("--community-id-seed", type=community_id_seed, default=0, metavar="N",
                        help="the Community ID seed, 0 to 65535 (default 0)")
    parser.add_argument("--no-sessions", action="store_true",
                        help="write flow records only (default: also tls, http and dns "
                             "records, flows handed to the kernel once their sessions are "
                             "parsed)")
    parser.add_argument("--bypass-after-bytes", type=byte_count, default=None, metavar="N",
                        help="stream depth: once either direction passed N bytes, the kernel "
                             "forwards the rest of the flow (live: it never reaches Python)")


def iso_time(us):
    """Microseconds since the epoch as Suricata writes times: 2026-12-05T01:02:03.123456+0000
    (in UTC)."""
    seconds, micro = divmod(us, 1_000_000)
    return _iso_second(seconds) + f".{micro:06d}+0000"


@functools.lru_cache(maxsize=256)
def _iso_second(seconds):
    # A flow's records fall in a few seconds: each second is formatted once.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


# One encoder for every line (json.dumps makes one per call when given separators); the
# cycle check is off: a record is a tree.
_ENCODE = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def session_state(client, server):
    """Suricata's TCP session state from the emulated sides' final states."""
    if client == TcpState.TCP_SYN_SENT and server in (TcpState.TCP_LISTEN, TcpState.TCP_SYN_RCVD):
        return "syn_sent"     # the SYN went by (the emulated server took it), no SYN-ACK
    if server == TcpState.TCP_LISTEN:
        return "none"
    if server == TcpState.TCP_TIME_WAIT and client == TcpState.TCP_CLOSED:
        return "closed"   # the last ACK of the server's close went by
    return _SESSION_STATE[server]


def flow_id(uid):
    """An integer of 51 bits from the flow's uid (mosx_conn_uid, a SessionEvent's): the same
    for every record of one flow in a run."""
    digest = hashlib.sha1(uid.encode()).digest()
    return int.from_bytes(digest[:8], "big") & _FLOW_ID_MASK


def tls_version(server_hello):
    """Suricata's spelling of the negotiated version ("TLS 1.3", "TLSv1", ...)."""
    if server_hello is None:
        return "UNDETERMINED"
    version = server_hello.version
    if version >> 8 == 0x7F:
        return f"TLS 1.3 draft-{version & 0xFF}"
    return _TLS_VERSIONS.get(version, "UNDETERMINED")


def tls_object(s):
    """A TlsSession as Suricata's ``tls`` object."""
    tls = {}
    if s.server_name is not None:
        tls["sni"] = s.server_name
    tls["version"] = tls_version(s.server_hello)
    if s.resumed:
        tls["session_resumed"] = True
    if s.ja4:
        tls["ja4"] = s.ja4
    hello = s.client_hello
    if hello is not None and hello.alpn:
        tls["client_alpns"] = list(hello.alpn_offered)
    if s.next_protocol is not None:
        tls["server_alpns"] = [s.next_protocol]
    return tls


def http_object(t):
    """An HttpTransaction as Suricata's ``http`` object."""
    http = {}
    if t.host is not None:
        # Suricata: the Host header's name, its port apart
        http["hostname"], port = split_host(t.host)
        if port is not None:
            http["http_port"] = port
    if t.target is not None:
        http["url"] = t.target
    if t.user_agent is not None:
        http["http_user_agent"] = t.user_agent
    if t.referrer is not None:
        http["http_refer"] = t.referrer
    if t.method is not None:
        http["http_method"] = t.method
    if t.request_version is not None:
        http["protocol"] = "HTTP/" + t.request_version
    if t.status_code is not None:
        http["status"] = t.status_code
    http["length"] = t.response_body_len
    return http


class Eve:
    def __init__(self, output, seed=0, bypass_after=None, pcap=None, live=False):
        self.output = output
        self.seed = seed
        self.bypass_after = bypass_after
        self.pcap = pcap
        self.bypass_kind = "capture" if live else "local"
        self.bypassed = set()     # sockets of the flows handed to the kernel
        self.app_protos = {}      # uid -> the session type of a flow the session layer told

    def on_new_data(self, mctx, sock, side, event, arg):
        """Stream depth: hand the flow to the kernel once a direction passed N bytes."""
        if bypass_past(mctx, sock, self.bypass_after):
            self.bypassed.add(sock)

    def on_end(self, mctx, sock, side, event, arg):
        if side != MOS_SIDE_CLI:
            return  # CONN_END comes once per side; one record per flow
        stats = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOSX_FLOW_STATS)
        (orig_h, orig_p), (resp_h, resp_p) = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
        client = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_CLI)
        server = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_SVR)
        uid = mosx_conn_uid(mctx, sock)
        record = _head(stats, uid, orig_h)
        record.update({"src_port": orig_p, "dest_ip": resp_h, "dest_port": resp_p,
                       "ip_v": 6 if ":" in orig_h else 4, "proto": "TCP"})
        app_proto = self.app_protos.pop(uid, None)
        if app_proto is not None:
            record["app_proto"] = app_proto
        elif stats.stream_bytes[0] or stats.stream_bytes[1]:
            # Suricata says "failed" once a flow carried data whose protocol it could not
            # tell, and nothing for a flow without data.
            record["app_proto"] = "failed"
        session = session_state(client, server)
        # handed over by --bypass-after-bytes (the session layer's hand-over is not shown:
        # the counts include the kernel's all the same; docs/pipeline.md)
        bypassed = sock in self.bypassed
        self.bypassed.discard(sock)
        record["flow"] = self._flow(stats, bypassed, _FLOW_STATE.get(session, "new"))
        record["community_id"] = mosx_community_id(6, orig_h, resp_h, orig_p, resp_p, self.seed)
        to_server, to_client = stats.tcp_flags[0], stats.tcp_flags[1]
        tcp = {"tcp_flags": f"{to_server | to_client:02x}", "tcp_flags_ts": f"{to_server:02x}",
               "tcp_flags_tc": f"{to_client:02x}"}
        tcp.update((name, True) for name, bit in _FLAG_NAMES if (to_server | to_client) & bit)
        tcp["state"] = session
        if stats.missed_bytes[0]:
            tcp["ts_gap"] = True    # the client's stream has bytes the monitor never saw
        if stats.missed_bytes[1]:
            tcp["tc_gap"] = True
        record["tcp"] = tcp
        self._write(mctx, record)

    def on_datagram_end(self, mctx, stats):
        """A UDP or ICMP flow ended: its record (src: the originator, as Zeek's)."""
        uid = mosx_conn_uid(mctx, stats)
        record = _head(stats, uid, stats.orig_h)
        v6 = ":" in stats.orig_h
        if stats.proto == "udp":
            record.update({"src_port": stats.orig_p, "dest_ip": stats.resp_h,
                           "dest_port": stats.resp_p, "ip_v": 6 if v6 else 4, "proto": "UDP"})
        else:
            record.update({"dest_ip": stats.resp_h, "ip_v": 6 if v6 else 4,
                           "proto": "IPv6-ICMP" if v6 else "ICMP",
                           "icmp_type": stats.orig_p})
            if stats.one_way:
                record["icmp_code"] = stats.resp_p
            elif stats.pkts[1]:
                record["response_icmp_type"] = stats.resp_p
        app_proto = self.app_protos.pop(uid, None)
        if app_proto is not None:
            record["app_proto"] = app_proto
        elif stats.proto == "udp" and (stats.payload_bytes[0] or stats.payload_bytes[1]):
            record["app_proto"] = "failed"
        # Suricata: a flow is established once both directions carried a packet.
        state = "established" if stats.pkts[0] and stats.pkts[1] else "new"
        record["flow"] = self._flow(stats, stats.kernel_verdict == "bypass", state)
        record["community_id"] = mosx_community_id(stats.ip_proto, stats.orig_h, stats.resp_h,
                                                   stats.orig_p, stats.resp_p, self.seed)
        self._write(mctx, record)

    def on_session(self, mctx, event):
        """A session record of the subscriptions: Suricata's tls, http or dns record(s)."""
        if event.kind == "weird":
            return      # Suricata's anomaly records are not written
        self.app_protos[event.uid] = event.session
        if event.kind == "tls":
            self._write(mctx, self._session_head(event, "tls", tls_object(event.record)))
        elif event.kind == "http":
            record = self._session_head(event, "http", http_object(event.record))
            record["tx_id"] = event.record.trans_depth - 1
            self._write(mctx, record)
        else:
            rtt = event.record.rtt
            for dns in dns_objects(event.record):
                record = self._session_head(event, "dns", dns)
                if dns["type"] == "response" and rtt is not None:
                    record["timestamp"] = iso_time(round((event.ts + rtt) * 1_000_000))
                self._write(mctx, record)

    def _session_head(self, event, kind, body):
        record = {
            "timestamp": iso_time(round(event.ts * 1_000_000)),
            "flow_id": flow_id(event.uid), "event_type": kind,
            "src_ip": event.orig_h, "src_port": event.orig_p,
            "dest_ip": event.resp_h, "dest_port": event.resp_p,
            "ip_v": 6 if ":" in event.orig_h else 4, "proto": event.proto.upper(),
            "community_id": mosx_community_id(_IP_PROTO[event.proto], event.orig_h,
                                              event.resp_h, event.orig_p, event.resp_p,
                                              self.seed),
        }
        record[kind] = body
        return record

    def _flow(self, stats, bypassed, state):
        """A record's "flow" object, TCP, UDP and ICMP alike (``state``: unless bypassed)."""
        flow = {
            "pkts_toserver": stats.pkts[0], "pkts_toclient": stats.pkts[1],
            "bytes_toserver": stats.l2_bytes[0], "bytes_toclient": stats.l2_bytes[1],
        }
        if bypassed:
            flow["bypassed"] = {
                "pkts_toserver": stats.bypassed_pkts[0],
                "pkts_toclient": stats.bypassed_pkts[1],
                "bytes_toserver": stats.bypassed_l2_bytes[0],
                "bytes_toclient": stats.bypassed_l2_bytes[1],
            }
        flow["start"] = iso_time(stats.start_ts)
        flow["end"] = iso_time(stats.last_ts)
        flow["age"] = stats.last_ts // 1_000_000 - stats.start_ts // 1_000_000
        if bypassed:
            flow["state"] = "bypassed"
            flow["bypass"] = self.bypass_kind
        else:
            flow["state"] = state
        flow["reason"] = _REASON.get(stats.end_reason, "unknown")
        flow["alerted"] = False
        return flow

    def _write(self, mctx, record):
        if self.pcap is not None:
            record["pcap_cnt"] = mosx_frame_count(mctx)
            record["pcap_filename"] = self.pcap
        self.output.write(_ENCODE(record) + "\n")

    def close(self):
        self.output.close()


def _head(stats, uid, orig_h):
    """The fields every flow record starts with."""
    return {
        "timestamp": iso_time(stats.last_ts),
        "flow_id": flow_id(uid),
        "event_type": "flow",
        "src_ip": orig_h,
    }


def dns_objects(t):
    """A DnsTransaction as Suricata's version-3 ``dns`` objects: a request and a response,
    for the halves seen."""
    out = []
    queries = [{"rrname": t.query, "rrtype": t.qtype_name}] if t.qtype_name else []
    if t.saw_query:
        request = {"version": 3, "type": "request", "id": t.trans_id}
        if t.RD:
            request["rd"] = True
        if queries:
            request["queries"] = queries
        out.append(request)
    if t.saw_reply:
        flags = t.reply_flags
        response = {"version": 3, "type": "response", "id": t.trans_id,
                    "flags": f"{flags:x}"}
        # Suricata writes the header's flags that are set
        for name, bit in (("qr", 0x8000), ("aa", 0x0400), ("tc", 0x0200), ("rd", 0x0100),
                          ("ra", 0x0080)):
            if flags & bit:
                response[name] = True
        response["opcode"] = (flags >> 11) & 0xF
        response["rcode"] = t.rcode_name
        if queries:
            response["queries"] = queries
        if t.answer_rrs:
            response["answers"] = [{"rrname": name, "rrtype": rrtype, "ttl": ttl,
                                    "rdata": rdata}
                                   for name, rrtype, ttl, rdata in t.answer_rrs]
        out.append(response)
    return out


def setup(mctx, args):
    output = mosx_open_sink(mctx, args.output)
    bypass_after = getattr(args, "bypass_after_bytes", None)
    app = Eve(output, getattr(args, "community_id_seed", 0), bypass_after,
              pcap=getattr(args, "pcap", None),
              # Live, the kernel forwards a bypassed flow ("capture"), unless observe-only,
              # where every frame's copy still comes up and the core counts it ("local").
              live=getattr(args, "iface", None) is not None and not getattr(args, "observe", None))
    if not getattr(args, "no_sessions", False):
        # Before the flow socket: the sessions' callbacks at a flow's end (what the close
        # completes) come before its flow record, as Suricata logs a flow last.
        mosx_session_options(mctx, bypass=True)
        for session in ("tls", "http", "dns"):
            mosx_subscribe(mctx, session, app.on_session)
    sock = flow_log_socket(mctx, app.on_end, args.filter,
                           midstream=not getattr(args, "no_midstream", False))
    if bypass_after is not None:
        mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, app.on_new_data)
    watch_datagrams(mctx, args, app.on_datagram_end, bypass_after)
    return app


def teardown(app):
    app.close()
