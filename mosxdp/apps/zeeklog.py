"""zeeklog: Zeek's conn.log, ssl.log, http.log, dns.log and weird.log, as JSON lines, in
--logdir D.

conn.log has connlog's lines (every TCP, UDP and ICMP flow when it ends; the same fields,
uids and counts: mosx_conn_record). The session logs come from subscriptions
(mosx_subscribe 'tls', 'http', 'dns'; docs/subscriptions.md), one line per TLS handshake,
HTTP transaction and DNS transaction, with Zeek's field names and spellings
(docs/sessions.md), and the flow's ``uid`` and ``id`` fields, so that each joins its
conn.log line by ``uid``. weird.log has one line per malformed or unexpected thing in a
session (``name`` as Zeek names it, ``addl``, ``source`` the analyzer: SSL, HTTP, DNS).

By default a flow is handed to the kernel once its sessions are parsed (MOSX_BYPASS): a TLS
flow after its handshake, a flow of no session type at its first bytes, a UDP flow that is
not DNS at its first datagram; HTTP and DNS flows are followed to their end, or for
--max-transactions transactions. Live, the kernel then forwards the rest of the flow and
counts it; conn.log's counts stay exact. --no-bypass keeps every flow in the monitor (the
sessions are the same; the flows' frames all come up). Written only against the public
mOS API.
"""
import os

from mosxdp import (MOS_SIDE_CLI, mosx_conn_record, mosx_open_log, mosx_open_outdir,
                    mosx_open_report, mosx_session_counts, mosx_session_options,
                    mosx_subscribe, mosx_sum_counts, mosx_watch_datagrams)

from ._common import community_id_seed, flow_log_socket, integer, split_host

DESCRIPTION = "write Zeek's conn.log, ssl.log, http.log, dns.log and weird.log (JSON lines)"
LOGS = ("conn", "ssl", "http", "dns", "weird")
_SOURCES = {"tls": "SSL", "http": "HTTP", "dns": "DNS"}


def add_arguments(parser):
    parser.add_argument("--logdir", required=True, metavar="D",
                        help="the directory of the logs (made if absent): conn.log, ssl.log, "
                             "http.log, dns.log, weird.log")
    parser.add_argument("--no-bypass", action="store_true",
                        help="keep every flow in the monitor (default: hand a flow to the "
                             "kernel once its sessions are parsed)")
    parser.add_argument("--max-transactions", type=_positive, default=None, metavar="N",
                        help="follow an HTTP or DNS flow for at most N transactions "
                             "(default: to its end)")
    parser.add_argument("--dns-port", type=_port, action="append", default=None, metavar="P",
                        help="a port whose TCP and UDP flows are DNS (repeatable; default "
                             "53, 5353, 5355)")
    parser.add_argument("--community-id-seed", type=community_id_seed, default=0, metavar="N",
                        help="conn.log's Community ID seed, 0 to 65535 (default 0)")


def _positive(text):
    return integer(text, "a transaction count is >= 1", 1)


def _port(text):
    return integer(text, "a port is 1 to 65535", 1, 65535)


def _conn_id(event):
    return {"ts": event.ts, "uid": event.uid, "id.orig_h": event.orig_h,
            "id.orig_p": event.orig_p, "id.resp_h": event.resp_h, "id.resp_p": event.resp_p}


def _set(record, **fields):
    """Zeek's JSON leaves an unset field out."""
    record.update((name, value) for name, value in fields.items() if value is not None)
    return record


def ssl_line(event):
    s = event.record
    return _set(_conn_id(event), version=s.version, cipher=s.cipher, curve=s.curve,
                server_name=s.server_name, resumed=s.resumed, last_alert=s.last_alert,
                next_protocol=s.next_protocol, established=s.established, ja4=s.ja4)


def http_line(event):
    t = event.record
    # Zeek's host is the Host header's name, without its port
    host = split_host(t.host)[0] if t.host is not None else None
    return _set(_conn_id(event), trans_depth=t.trans_depth, method=t.method, host=host,
                uri=t.uri, referrer=t.referrer, version=t.version, user_agent=t.user_agent,
                origin=t.origin, request_body_len=t.request_body_len,
                response_body_len=t.response_body_len, status_code=t.status_code,
                status_msg=t.status_msg, info_code=t.info_code, info_msg=t.info_msg, tags=[])


def dns_line(event):
    t = event.record
    line = _set(_conn_id(event), proto=t.proto, trans_id=t.trans_id, rtt=t.rtt, query=t.query,
                qclass=t.qclass, qclass_name=t.qclass_name, qtype=t.qtype,
                qtype_name=t.qtype_name, rcode=t.rcode, rcode_name=t.rcode_name, AA=t.AA,
                TC=t.TC, RD=t.RD, RA=t.RA, Z=t.Z)
    if t.answers:      # Zeek's answers and TTLs are unset for a message without answers
        line["answers"] = list(t.answers)
        line["TTLs"] = list(t.TTLs)
    line["rejected"] = t.rejected
    return line


def weird_line(event):
    """A weird of a session's parser has its analyzer as source; one of the stream under it
    (content_gap, before the session was known) has none, as Zeek's core weirds."""
    w = event.record
    return _set(_conn_id(event), name=w.name, addl=w.addl or None, notice=False,
                peer="mosxdp", source=_SOURCES.get(event.session))


class ZeekLog:
    def __init__(self, logs, seed=0):
        self.logs = logs
        self.seed = seed
        self.lines = dict.fromkeys(LOGS, 0)

    def write(self, name, line):
        self.lines[name] += 1
        self.logs[name].write(line)

    def on_end(self, mctx, sock, side, event, arg):
        if side == MOS_SIDE_CLI:    # CONN_END comes once per side; one line per flow
            self.write("conn", mosx_conn_record(mctx, sock, self.seed))

    def on_datagram_end(self, mctx, stats):
        self.write("conn", mosx_conn_record(mctx, stats, self.seed))

    def on_session(self, mctx, event):
        if event.kind == "weird":
            self.write("weird", weird_line(event))
        elif event.kind == "tls":
            self.write("ssl", ssl_line(event))
        elif event.kind == "http":
            self.write("http", http_line(event))
        else:
            self.write("dns", dns_line(event))

    def close(self):
        for log in self.logs.values():
            log.close()


def setup(mctx, args):
    mosx_open_outdir(mctx, args.logdir)      # made if absent, checked writable now
    logs = {name: mosx_open_log(mctx, os.path.join(args.logdir, f"{name}.log"), "json",
                                option="--logdir") for name in LOGS}
    app = ZeekLog(logs, args.community_id_seed)
    bypass = not args.no_bypass
    mosx_session_options(mctx, bypass=bypass, max_transactions=args.max_transactions,
                         dns_ports=args.dns_port)
    # conn.log: a state-only socket (no buffers), flows picked up mid-stream too, as connlog.
    flow_log_socket(mctx, app.on_end)
    # Byte threshold 0: a UDP/ICMP flow no session follows goes to the kernel at once.
    mosx_watch_datagrams(mctx, app.on_datagram_end, bypass_after_bytes=0 if bypass else None)
    for session in ("tls", "http", "dns"):
        mosx_subscribe(mctx, session, app.on_session)
    app.mctx = mctx
    # The summary line (stderr): one line of the counts summed over workers.
    app.report = mosx_open_report(mctx, combine=mosx_sum_counts)
    return app


def teardown(app):
    counts = mosx_session_counts(app.mctx)
    app.report.write(f"zeeklog: {', '.join(f'{n}.log {app.lines[n]}' for n in LOGS)}; flows "
                     f"followed {counts['flows']}, handed to the kernel {counts['bypassed']}\n")
    app.report.flush()
    app.close()
