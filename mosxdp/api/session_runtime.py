"""The runtime of subscriptions (api/subscriptions.py has the calls): a context's
SessionRuntime, made at its first subscription or option, so that a run without
subscriptions never imports the session parsers (dnspython, httptools)."""
import errno
import ipaddress
import re
import socket

from .. import constants as C
from ..core.datagrams import IPPROTO_UDP
from ..core.zeekconn import datagram_uid
from ..sessions import ORIG, RESP, DnsParser, HttpParser, TlsParser, Weird
from ..sessions.dns import DnsTransaction
from ..sessions.http import HttpTransaction
from ..sessions.tls import ClientHello, ServerHello, TlsSession
from ..types import SessionEvent
from .context import _flow_sock, _stack
from .events import mtcp_register_callback
from .records import tcp_flow_uid
from .sockets import _compile, _peer, mtcp_get_uctx, mtcp_setsockopt, mtcp_socket
from .streams import PeekOverrunError, _readable, peek_into

DEFAULT_DNS_PORTS = (53, 5353, 5355)     # DNS, mDNS, LLMNR: Zeek's DNS ports
_TLS_RECORD = re.compile(rb"\x16\x03[\x00-\x04]")
_METHOD = re.compile(rb"[A-Z]{3,12} ")
_METHODS = frozenset((b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT",
                      b"TRACE", b"PATCH", b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY",
                      b"MOVE", b"LOCK", b"UNLOCK", b"SEARCH", b"REPORT", b"MKCALENDAR"))
_SNIFF = 16            # client bytes enough to tell TLS or an HTTP method
_PARSERS = {"tls": TlsParser, "http": HttpParser}


class Subscription:
    __slots__ = ("id", "filter", "callback")

    def __init__(self, sub_id, compiled, callback):
        self.id = sub_id
        self.filter = compiled
        self.callback = callback


class _Flow:
    """The runtime's state of one flow it follows."""
    __slots__ = ("session", "parser", "subs", "env", "uid", "peers", "proto", "head",
                 "transactions", "released", "sock")

    def __init__(self, env, uid, peers, proto, sock=None):
        self.session = None      # "tls", "http", "dns" once told
        self.parser = None
        self.subs = None         # the subscriptions that may still match
        self.env = env           # the filter fields known so far
        self.uid = uid
        self.peers = peers       # (orig_h, orig_p, resp_h, resp_p)
        self.proto = proto
        self.head = b""          # client bytes held until the session type is told
        self.transactions = 0
        self.released = False
        self.sock = sock


def _host(packed):
    """An address's text as mtcp_getpeername gives it: IPv4 by inet_ntop (a tenth of
    ipaddress's cost), IPv6 by ipaddress (glibc writes some IPv6 addresses otherwise)."""
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    return str(ipaddress.ip_address(packed))


def _env(proto, src, orig_p, dst, resp_p, addresses):
    """The packet fields of a flow whose packed addresses are ``src`` and ``dst``; with
    ``addresses`` false (no subscription's filter reads them) without ip.src and ip.dst,
    which cost the most to make."""
    tcp = proto == "tcp"
    # The other transport's ports are known to be absent (a test of them is false).
    env = {"tcp": tcp, "udp": not tcp, "ipv4": len(src) == 4, "ipv6": len(src) == 16,
           "tcp.sport": orig_p if tcp else None, "tcp.dport": resp_p if tcp else None,
           "udp.sport": None if tcp else orig_p, "udp.dport": None if tcp else resp_p}
    if addresses:
        env["ip.src"], env["ip.dst"] = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    return env


def _record_fields(record):
    """The filter fields of a record (mosxdp/sessions/subfilter.py FIELDS)."""
    if isinstance(record, TlsSession):
        return {"tls.sni": record.server_name, "tls.version": record.version,
                "tls.cipher": record.cipher, "tls.curve": record.curve,
                "tls.alpn": record.next_protocol, "tls.ja4": record.ja4,
                "tls.established": record.established, "tls.resumed": record.resumed}
    if isinstance(record, ClientHello):
        return {"tls.sni": record.server_name, "tls.ja4": record.ja4}
    if isinstance(record, ServerHello):
        fields = {"tls.version": record.version_name, "tls.cipher": record.cipher}
        if record.alpn is not None:
            fields["tls.alpn"] = record.alpn.decode("utf-8", "backslashreplace")
        return fields
    if isinstance(record, HttpTransaction):
        return {"http.method": record.method, "http.host": record.host, "http.uri": record.uri,
                "http.user_agent": record.user_agent, "http.version": record.version,
                "http.status": record.status_code,
                "http.request_body_len": record.request_body_len,
                "http.response_body_len": record.response_body_len}
    if isinstance(record, DnsTransaction):
        return {"dns.query": record.query,
                "dns.qtype": None if record.qtype is None else (record.qtype, record.qtype_name),
                "dns.rcode": None if record.rcode is None else (record.rcode, record.rcode_name),
                "dns.answer": record.answers}
    return {}


class SessionRuntime:
    """The subscriptions of one context and the flows they follow."""

    def __init__(self, mctx):
        self.mctx = mctx
        self.stack = _stack(mctx)
        self.subs = []
        self.bypass = True
        self.max_transactions = None
        self.dns_ports = frozenset(DEFAULT_DNS_PORTS)
        self.sock = None
        self.watcher = None
        self.udp = {}                 # datagram flow -> _Flow
        self.view = memoryview(bytearray(65536))    # what _read peeks into
        self._addresses = (0, False)  # (subscriptions looked at, one reads addresses)
        self.counts = dict.fromkeys(("flows", "released", "bypassed", "records", "weirds"), 0)

    # -- set-up
    def start(self):
        """The runtime's socket, callbacks and UDP hook (once, at the first subscription)."""
        mctx = self.mctx
        sock = mtcp_socket(mctx, socket.AF_UNSPEC, C.MOS_SOCK_MONITOR_STREAM, 0)
        mtcp_setsockopt(mctx, sock, C.SOL_MONSOCKET, C.MOSX_MIDSTREAM, 0)
        # Per packet, as the receiving side's stream grows: the two sides' bytes reach the
        # parsers in the order they crossed the monitor (a TLS 1.3 handshake is established
        # by a client record after the server's flight), not a batch's side by side.
        mtcp_register_callback(mctx, sock, C.MOS_ON_PKT_IN, C.MOS_HK_RCV, self.on_data)
        mtcp_register_callback(mctx, sock, C.MOS_ON_CONN_END, C.MOS_HK_RCV, self.on_end)
        self.sock = sock
        self._watch_udp()

    def _watch_udp(self):
        """A UDP watcher for the DNS ports (the kernel sends their datagrams up), and the
        session hook that reads them."""
        table = self.stack.datagram_table()
        if self.watcher is not None:
            table.watchers.remove(self.watcher)
        text = " or ".join(f"udp port {port}" for port in sorted(self.dns_ports)) or "udp and not udp"
        self.watcher = table.add_watcher(0, _compile(text, raw=True), self.on_udp_end,
                                         lambda flow: flow, 0 if self.bypass else None)
        if self.on_datagram not in table.on_datagram:
            table.on_datagram.append(self.on_datagram)
        engine = getattr(self.mctx, "engine", None)
        if getattr(engine, "filters_changed", None) is not None:
            engine.filters_changed()

    def _reads_addresses(self):
        """Whether a subscription's filter reads ip.src or ip.dst (ip.addr reads both)."""
        if self._addresses[0] != len(self.subs):
            self._addresses = (len(self.subs), any(
                field in ("ip.src", "ip.dst") for sub in self.subs for field in sub.filter.fields))
        return self._addresses[1]

    def now(self):
        stack = self.stack
        return (stack.now + stack.wall_offset_us) / 1e6

    # -- TCP
    def on_data(self, mctx, sock, side, event, arg):
        flow = mtcp_get_uctx(mctx, sock)
        if flow is None:
            flow = self._new_tcp(mctx, sock)
            if flow is None:
                return
        try:
            data = self._read(sock, side)
        except PeekOverrunError as exc:
            what = "never seen" if exc.hole else "overwritten before they were read"
            self._weird(flow, Weird("content_gap", f"{exc.lost} bytes {what}", None),
                        self.now())
            self._release(flow)
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # Another socket of the app handed the flow to the kernel (its buffers are
            # gone): what the parser holds is given, and the flow is let go.
            self._close(flow)
            self._release(flow)
            return
        if not data:
            return
        ts = self.now()
        # what the server received is the client's
        orig, resp = (data, b"") if side == C.MOS_SIDE_SVR else (b"", data)
        if flow.session is None:
            if not self._tell(flow, orig, resp):
                return
            orig, flow.head = flow.head, b""
        parser = flow.parser
        if orig:
            self._records(flow, parser.feed(ORIG, orig, ts), ts)
        if resp and not flow.released:
            self._records(flow, parser.feed(RESP, resp, ts), ts)
        if not flow.released and (parser.done or not flow.subs or (
                self.max_transactions is not None
                and flow.transactions >= self.max_transactions)):
            self._release(flow)

    def _new_tcp(self, mctx, sock):
        # (mtcp_getpeername's and MOSX_FLOW_STATS's values, read from the flow once)
        stack = self.stack
        sock_obj = _flow_sock(stack, sock, errno.EBADF)
        tcp = sock_obj.flow
        cli, svr = _peer(tcp, C.MOS_SIDE_CLI), _peer(tcp, C.MOS_SIDE_SVR)
        (orig_h, orig_p), (resp_h, resp_p) = cli, svr
        flow = _Flow(_env("tcp", tcp.addrs[C.MOS_SIDE_CLI], orig_p, tcp.addrs[C.MOS_SIDE_SVR],
                          resp_p, self._reads_addresses()),
                     tcp_flow_uid(stack, tcp, cli, svr), (orig_h, orig_p, resp_h, resp_p),
                     "tcp", sock)
        sock_obj.uctx = flow
        self.counts["flows"] += 1
        flow.subs = [s for s in self.subs if s.filter.evaluate(flow.env) is not False]
        if not flow.subs:
            self._release(flow)
            return None
        return flow

    def _read(self, sock, side):
        # mtcp_peek's checks (a callback of the runtime's socket runs on the context's
        # thread, with the runtime's buffer): once for all the reads
        sock_obj, flow_side = _readable(self.stack, sock, side, errno.ENOTSOCK)
        view = self.view
        size = len(view)
        count = peek_into(sock_obj, flow_side, side, view, size)
        if not count:
            return b""     # most packets: an ACK, a SYN or FIN
        chunks = [bytes(view[:count])]
        while True:
            count = peek_into(sock_obj, flow_side, side, view, size)
            if not count:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.append(bytes(view[:count]))

    def _tell(self, flow, orig, resp):
        """The session type of a TCP flow from its first bytes: True once told and kept."""
        head = flow.head = flow.head + orig
        if flow.peers[1] in self.dns_ports or flow.peers[3] in self.dns_ports:
            return self._begin(flow, "dns", DnsParser("tcp"))
        if not head:
            if resp:      # the server spoke first: neither TLS nor HTTP
                self._release(flow)
            return False
        if _TLS_RECORD.match(head):
            return self._begin(flow, "tls", TlsParser())
        m = _METHOD.match(head)
        if m and m.group()[:-1] in _METHODS:
            return self._begin(flow, "http", HttpParser())
        if len(head) < _SNIFF and re.fullmatch(rb"\x16(\x03)?|[A-Z]{1,12}", head):
            return False  # a prefix of either: wait for more
        self._release(flow)
        return False

    def _begin(self, flow, session, parser):
        env = flow.env
        for name in ("tls", "http", "dns"):
            env[name] = name == session
        flow.session = session
        flow.subs = [s for s in flow.subs if s.filter.session == session
                     and s.filter.evaluate(env) is not False]
        if not flow.subs:
            self._release(flow)
            return False
        flow.parser = parser
        return True

    def on_end(self, mctx, sock, side, event, arg):
        if side != C.MOS_SIDE_CLI:
            return      # CONN_END comes once per side
        flow = mtcp_get_uctx(mctx, sock)
        if flow is not None:
            self._close(flow)

    # -- UDP
    def on_datagram(self, dflow, side, pkt):
        flow = self.udp.get(dflow)
        if flow is None:
            if self.watcher not in dflow.watchers or dflow.ip_proto != IPPROTO_UDP:
                return
            flow = self._new_udp(dflow)
            if flow is None:
                return
        if flow.released:
            return
        ts = self.now()
        self._records(flow, flow.parser.feed(ORIG if side == 0 else RESP, bytes(pkt.payload),
                                             ts), ts)
        if not flow.released and (not flow.subs or (
                self.max_transactions is not None
                and flow.transactions >= self.max_transactions)):
            self._release(flow, dflow)

    def _new_udp(self, dflow):
        (src, sport, dst, dport, vlan_ids), _ = dflow.keys
        orig_h, resp_h = _host(src), _host(dst)
        uid = datagram_uid(dflow.start_ts + self.stack.wall_offset_us, orig_h, sport, resp_h,
                           dport, vlan_ids, dflow.proto)
        flow = _Flow(_env("udp", src, sport, dst, dport, self._reads_addresses()), uid,
                     (orig_h, sport, resp_h, dport), "udp")
        self.udp[dflow] = flow
        self.counts["flows"] += 1
        flow.subs = list(self.subs)
        if not self._begin(flow, "dns", DnsParser("udp")):
            self._release(flow, dflow)
            return None
        dflow.session = flow
        return flow

    def on_udp_end(self, mctx, dflow):
        flow = self.udp.pop(dflow, None)
        if flow is not None:
            self._close(flow)

    # -- records
    def _records(self, flow, records, ts):
        for record in records:
            if isinstance(record, Weird):
                self._weird(flow, record, ts)
                continue
            fields = _record_fields(record)
            if isinstance(record, (ClientHello, ServerHello)):
                # The hellos make fields known early: subscriptions that cannot match drop out.
                flow.env.update(fields)
                flow.subs = [s for s in flow.subs if s.filter.evaluate(flow.env) is not False]
                continue
            flow.transactions += 1
            env = dict(flow.env)
            env.update(fields)
            event = None
            for sub in flow.subs:
                if sub.filter.evaluate(env, True):
                    if event is None:
                        event = self._event(flow, flow.session, record,
                                            ts if record.ts is None else record.ts)
                        self.counts["records"] += 1
                    self._call(sub, event)

    def _weird(self, flow, weird, ts):
        """A weird goes once to each callback of the flow's subscriptions (before its session
        is known, those of every protocol may share one)."""
        self.counts["weirds"] += 1
        event = self._event(flow, "weird", weird, ts)
        called = []
        for sub in flow.subs or ():
            if sub.callback not in called:
                called.append(sub.callback)
                self._call(sub, event)

    def _event(self, flow, kind, record, ts):
        orig_h, orig_p, resp_h, resp_p = flow.peers
        return SessionEvent(kind, flow.session, record, flow.uid, ts, flow.proto, orig_h,
                            orig_p, resp_h, resp_p)

    def _call(self, sub, event):
        try:
            sub.callback(self.mctx, event)
        except Exception as exc:     # an app bug must not stop the other subscriptions
            self.stack._callback_failed(sub.callback, exc)

    # -- the end of following a flow
    def _release(self, flow, dflow=None):
        """No subscription needs more of the flow: stop reading it, hand it to the kernel."""
        if flow.released:
            return
        flow.released = True
        flow.parser = None     # what it holds is not wanted (or the stream has a gap)
        self.counts["released"] += 1
        if flow.sock is not None:
            mtcp_register_callback(self.mctx, flow.sock, C.MOS_ON_PKT_IN, C.MOS_HK_RCV, None)
            if self.bypass:
                mtcp_setsockopt(self.mctx, flow.sock, C.SOL_MONSOCKET, C.MOSX_BYPASS, 1)
                self.counts["bypassed"] += 1
        elif dflow is not None:
            dflow.session = None
            if self.bypass and not dflow.destroyed:
                self.stack.datagrams.set_verdict(dflow, "bypass")
                self.counts["bypassed"] += 1

    def _close(self, flow):
        """The end of the flow: what its parser still holds (an HTTP body delimited by the
        close, unanswered requests, unpaired DNS halves, a TLS session never finished)."""
        parser, flow.parser = flow.parser, None
        if parser is not None and flow.subs:
            ts = self.now()
            self._records(flow, parser.close(), ts)
