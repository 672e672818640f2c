"""Crafted TCP conversations (scapy) and a recording harness for the mtcp_* API tests.

`Conv` keeps the sequence numbers of both directions of one connection, so a test reads as
the conversation it is: ``c.handshake(); c.data("c", b"GET /"); c.fin("c")``. Every
method builds one frame, appends ``(ts_us, bytes)`` to ``c.frames`` (unless
``emit=False``, for reordering by hand) and returns the bytes. The clock moves by ``dt``
microseconds per frame, or by ``c.wait(us)``.

Sides are named "c" (the client: the sender of the first SYN) and "s".

`VerdictMap` is the map API of XdpProgram over a dict, for the tests' models of the XDP
program.

`Monitor` is a context with one stream listener (and optionally a raw socket) whose
callbacks append `Call` records to ``mon.log``; `Monitor.run` drives frames through
mosxdp.engine.run_frames.
"""
import socket
from dataclasses import dataclass, field

import pytest

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from mosxdp import *  # noqa: F401,F403  (the public API only)
from mosxdp import MosEvent
from mosxdp.engine import run_frames

MAC = {"c": "02:00:00:00:00:01", "s": "02:00:00:00:00:02"}
SEQ_MASK = 0xFFFFFFFF
OTHER = {"c": "s", "s": "c"}


@pytest.fixture
def api():
    """A fresh mtcp_init(None) for the test, mtcp_destroy() after it."""
    mtcp_destroy()
    mtcp_init(None)
    yield
    mtcp_destroy()


def reinit(**config):
    """mtcp_destroy(), then mtcp_init(None, **config)."""
    mtcp_destroy()
    mtcp_init(None, **config)


@pytest.fixture
def ctx():
    """``ctx(**config)``: a fresh mtcp_init(None, **config) and its context 0;
    mtcp_destroy() after the test."""
    def make(**config):
        reinit(**config)
        return mtcp_create_context(0)
    yield make
    mtcp_destroy()


class Conv:
    """One TCP connection between a client "c" and a server "s"."""

    def __init__(self, cli="10.0.0.1", svr="10.0.0.2", cport=40000, sport=80,
                 isn_c=1000, isn_s=5000, t0=1_000_000, dt=1000, win=65535):
        self.addr = {"c": cli, "s": svr}
        self.port = {"c": cport, "s": sport}
        self.v6 = ":" in cli
        self.isn = {"c": isn_c & SEQ_MASK, "s": isn_s & SEQ_MASK}
        # Next sequence number each side sends, and what it acknowledges.
        self.nxt = {"c": isn_c & SEQ_MASK, "s": isn_s & SEQ_MASK}
        self.acked = {"c": 0, "s": 0}
        self.win = {"c": win, "s": win}
        self.ts = t0
        self.dt = dt
        self.frames = []

    # ----------------------------------------------------------------- building
    def wait(self, us):
        self.ts += us

    def packet(self, frm, flags, payload=b"", seq=None, ack=None, window=None, options=None):
        """The scapy packet of one segment from `frm` (nothing is recorded)."""
        to = OTHER[frm]
        if seq is None:
            seq = self.nxt[frm]
        if ack is None:
            ack = self.acked[frm] if "A" in flags else 0
        if window is None:
            window = self.win[frm]
        ip = (IPv6(src=self.addr[frm], dst=self.addr[to]) if self.v6
              else IP(src=self.addr[frm], dst=self.addr[to]))
        tcp = TCP(sport=self.port[frm], dport=self.port[to], flags=flags, seq=seq & SEQ_MASK,
                  ack=ack & SEQ_MASK, window=window, options=options or [])
        pkt = Ether(src=MAC[frm], dst=MAC[to]) / ip / tcp
        if payload:
            pkt = pkt / Raw(payload)
        return pkt

    def seg(self, frm, flags, payload=b"", seq=None, ack=None, window=None, options=None,
            emit=True, advance=True):
        """One segment; advances `frm`'s next sequence number past it (if beyond)."""
        explicit = seq is not None
        if seq is None:
            seq = self.nxt[frm]
        frame = bytes(self.packet(frm, flags, payload, seq, ack, window, options))
        if advance:
            end = (seq + len(payload) + ("S" in flags) + ("F" in flags)) & SEQ_MASK
            if not explicit or ((end - self.nxt[frm]) & SEQ_MASK) < (1 << 31):
                self.nxt[frm] = end
        if emit:
            self.emit(frame)
        return frame

    def emit(self, frame, ts=None):
        if ts is None:
            ts = self.ts
            self.ts += self.dt
        self.frames.append((ts, frame))
        return frame

    # ------------------------------------------------------------ conversation
    def syn(self, wscale=None, emit=True, frm="c", **kw):
        opts = [("MSS", 1460)] + ([("WScale", wscale)] if wscale is not None else [])
        return self.seg(frm, "S", seq=self.isn[frm], options=opts, emit=emit, **kw)

    def synack(self, wscale=None, emit=True, **kw):
        self.acked["s"] = (self.isn["c"] + 1) & SEQ_MASK
        opts = [("MSS", 1460)] + ([("WScale", wscale)] if wscale is not None else [])
        return self.seg("s", "SA", seq=self.isn["s"], options=opts, emit=emit, **kw)

    def ack(self, frm, emit=True, **kw):
        self.acked[frm] = kw.pop("ack", None) or self.acked_now(frm)
        return self.seg(frm, "A", emit=emit, **kw)

    def acked_now(self, frm):
        """What `frm` acknowledges now: everything the other side sent."""
        return self.nxt[OTHER[frm]]

    def handshake(self, wscale_c=None, wscale_s=None):
        self.syn(wscale=wscale_c)
        self.synack(wscale=wscale_s)
        self.acked["c"] = self.nxt["s"]
        self.seg("c", "A")

    def data(self, frm, payload, seq=None, emit=True, flags="PA", **kw):
        self.acked[frm] = self.nxt[OTHER[frm]]
        return self.seg(frm, flags, payload, seq=seq, emit=emit, **kw)

    def fin(self, frm, payload=b"", emit=True, **kw):
        self.acked[frm] = self.nxt[OTHER[frm]]
        return self.seg(frm, "FA", payload, emit=emit, **kw)

    def rst(self, frm, seq=None, emit=True, ack=True):
        self.acked[frm] = self.nxt[OTHER[frm]]
        return self.seg(frm, "RA" if ack else "R", seq=seq, emit=emit, advance=False)

    def close(self):
        """FIN from the client, FIN+ACK from the server, last ACK from the client."""
        self.fin("c")
        self.fin("s")
        self.ack("c")

    def full(self, request=b"GET / HTTP/1.0\r\n\r\n", response=b"HTTP/1.0 200 OK\r\n\r\nhi"):
        self.handshake()
        self.data("c", request)
        self.data("s", response)
        self.close()
        return self


class Dgrams:
    """UDP and ICMP datagrams between two hosts "c" and "s": each method builds one frame,
    appends ``(ts_us, bytes)`` to ``frames`` and returns the bytes; the clock moves by
    ``dt`` microseconds per frame, or by ``wait(us)``. ``vlans``: 802.1Q tags, outer first."""

    def __init__(self, cli="10.0.0.1", svr="10.0.0.2", t0=1_000_000, dt=1000, vlans=()):
        self.addr = {"c": cli, "s": svr}
        self.v6 = ":" in cli
        self.ts = t0
        self.dt = dt
        self.vlans = vlans
        self.frames = []

    def wait(self, us):
        self.ts += us

    def _emit(self, frm, l4):
        from scapy.layers.l2 import Dot1Q
        to = OTHER[frm]
        ip = (IPv6(src=self.addr[frm], dst=self.addr[to]) if self.v6
              else IP(src=self.addr[frm], dst=self.addr[to]))
        l2 = Ether(src=MAC[frm], dst=MAC[to])
        for vid in self.vlans:
            l2 = l2 / Dot1Q(vlan=vid)
        frame = bytes(l2 / ip / l4)
        self.ts += self.dt
        self.frames.append((self.ts, frame))
        return frame

    def udp(self, frm, sport, dport, payload=b""):
        from scapy.layers.inet import UDP
        return self._emit(frm, UDP(sport=sport, dport=dport) / Raw(payload))

    def icmp(self, frm, icmp_type, code=0, payload=b"", ident=1, seq=1):
        """ICMP (or ICMPv6 between IPv6 hosts) of any type; echo types get ident/seq."""
        if self.v6:
            from scapy.layers.inet6 import ICMPv6Unknown
            body = ident.to_bytes(2, "big") + seq.to_bytes(2, "big") + payload
            return self._emit(frm, ICMPv6Unknown(type=icmp_type, code=code, msgbody=body))
        from scapy.layers.inet import ICMP
        return self._emit(frm, ICMP(type=icmp_type, code=code, id=ident, seq=seq) / Raw(payload))

    def ping(self, payload=b"x" * 56, ident=1, seq=1):
        """An echo request from c and its reply."""
        req, rep = (128, 129) if self.v6 else (8, 0)
        return (self.icmp("c", req, payload=payload, ident=ident, seq=seq),
                self.icmp("s", rep, payload=payload, ident=ident, seq=seq))


def base_of(frame):
    """The scapy packet of a frame, with its checksums as they are in the bytes."""
    return Ether(frame)


def checksums_ok(frame):
    """True when the IPv4 header checksum (if any) and the TCP checksum are valid."""
    pkt = Ether(frame)
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    tcp = pkt[TCP]
    good = True
    if IP in pkt:
        stated = ip.chksum
        fresh = IP(bytes(ip))
        del fresh.chksum
        good &= IP(bytes(fresh))[IP].chksum == stated
    stated = tcp.chksum
    del tcp.chksum
    rebuilt = Ether(bytes(pkt))
    good &= rebuilt[TCP].chksum == stated
    return good


def tcp_of(frame):
    return Ether(frame)[TCP]


def payload_of(frame):
    return bytes(Ether(frame)[TCP].payload)


# ------------------------------------------------------------------ monitor
ALL_HOOK_EVENTS = (MOS_ON_PKT_IN, MOS_ON_CONN_START, MOS_ON_REXMIT, MOS_ON_TCP_STATE_CHANGE,
                   MOS_ON_CONN_END)
NULL_EVENTS = (MOS_ON_CONN_NEW_DATA, MOS_ON_ERROR)
HOOK_NAMES = {int(MOS_HK_SND): "SND", int(MOS_HK_RCV): "RCV", int(MOS_NULL): "NULL"}


@dataclass
class Call:
    event: str
    hook: str
    side: int
    sock: int
    cli: object = None        # TcpState of each side when the callback ran
    svr: object = None
    extra: dict = field(default_factory=dict)


def ev_name(event):
    try:
        return MosEvent(event).name.replace("MOS_ON_", "")
    except ValueError:
        return hex(event)


class Monitor:
    """A context with one stream listener; records callbacks."""

    def __init__(self, cpu=0, domain=socket.AF_INET):
        self.mctx = mtcp_create_context(cpu)
        self.sock = mtcp_socket(self.mctx, domain, MOS_SOCK_MONITOR_STREAM, 0)
        self.log = []
        self.hooks = {}          # (event, hook) -> extra function(mctx, sock, side, event)
        self.out = None

    def record(self, events=ALL_HOOK_EVENTS, hooks=(MOS_HK_SND, MOS_HK_RCV), extra=None):
        """Register a recording callback for each event at each hook."""
        for event in events:
            for hook in hooks:
                mtcp_register_callback(self.mctx, self.sock, event, hook,
                                       self.recorder(hook, extra))
        return self

    def record_null(self, events=NULL_EVENTS, extra=None):
        for event in events:
            mtcp_register_callback(self.mctx, self.sock, event, MOS_NULL,
                                   self.recorder(MOS_NULL, extra))
        return self

    def recorder(self, hook, extra=None):
        hook_name = HOOK_NAMES[int(hook)]

        def cb(mctx, sock, side, event, arg):
            call = Call(ev_name(event), hook_name, side, sock)
            if side in (MOS_SIDE_CLI, MOS_SIDE_SVR):
                try:
                    call.cli = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_CLI)
                    call.svr = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_SVR)
                except OSError:
                    pass
            self.log.append(call)
            if extra is not None:
                extra(mctx, sock, side, event, call)
        return cb

    def run(self, frames, batch_size=1):
        if isinstance(frames, Conv):
            frames = frames.frames
        self.out = run_frames(self.mctx, frames, batch_size)
        return self.out

    def events(self, *names, hook=None, side=None):
        """(event, hook, side) tuples of the log, optionally filtered."""
        return [(c.event, c.hook, c.side) for c in self.log
                if (not names or c.event in names) and (hook is None or c.hook == hook)
                and (side is None or c.side == side)]

    def count(self, name, hook=None, side=None):
        return len(self.events(name, hook=hook, side=side))

    def setsockopt(self, opt, value):
        mtcp_setsockopt(self.mctx, self.sock, SOL_MONSOCKET, opt, value)


class VerdictMap:
    """The verdict-map API of XdpProgram (get_verdict, pop_verdict, verdict_count) over
    ``self.entries`` ({key bytes: entry}), for the tests' Python models of bpf/mosxdp.c; a
    model says how its entries read as a FlowVerdict (``_fv``) and sets them."""

    def _fv(self, entry):
        raise NotImplementedError

    def get_verdict(self, key):
        e = self.entries.get(bytes(key))
        return None if e is None else self._fv(e)

    def pop_verdict(self, key):
        e = self.entries.pop(bytes(key), None)
        return None if e is None else self._fv(e)

    def verdict_count(self):
        return len(self.entries)
