"""Evasion-relevant TCP handling (docs/config.md "Evasion-relevant choices"), each on a crafted
conversation: what the monitor delivers in the reassembled streams, which events it raises
and which counters move."""
import errno

import pytest
from scapy.layers.inet import TCP

from flowcraft import Conv, Monitor, api, reinit  # noqa: F401  (api: a fixture)
from mosxdp import *  # noqa: F401,F403


class Watch:
    """A monitor that records, per flow socket, both streams and the end reason at CONN_END,
    the number of CONN_NEW_DATA, and (event, hook, side) of ERROR and REXMIT."""

    def __init__(self):
        self.mon = Monitor()
        self.ends = {}          # sock -> {"reason":, MOS_SIDE_CLI: bytes, MOS_SIDE_SVR: bytes}
        self.events = []
        self.new_data = 0
        mctx, sock = self.mon.mctx, self.mon.sock
        mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, self._end)
        mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, self._new_data)
        mtcp_register_callback(mctx, sock, MOS_ON_ERROR, MOS_NULL, self._event("ERROR"))
        mtcp_register_callback(mctx, sock, MOS_ON_REXMIT, MOS_HK_RCV, self._event("REXMIT"))

    def _event(self, name):
        def cb(mctx, sock, side, ev, arg):
            self.events.append((name, side))
        return cb

    def _new_data(self, mctx, sock, side, ev, arg):
        self.new_data += 1

    def _end(self, mctx, sock, side, ev, arg):
        entry = self.ends.setdefault(sock, {})
        entry["reason"] = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOSX_FLOW_STATS).end_reason
        buf = bytearray(1 << 16)
        try:
            entry[side] = bytes(buf[:mtcp_ppeek(mctx, sock, side, buf, len(buf), 0)])
        except OSError as exc:
            entry[side] = b"" if exc.errno == errno.ENODATA else exc

    def run(self, frames, **kw):
        self.mon.run(frames, **kw)
        return self

    @property
    def counters(self):
        return self.mon.mctx.stack.counters

    def only_flow(self):
        assert len(self.ends) == 1, self.ends
        return next(iter(self.ends.values()))


def server_stream(conv) -> bytes:
    """What the server side of the one flow of ``conv`` received, in the monitor's view."""
    return Watch().run(conv).only_flow()[MOS_SIDE_SVR]


def emit_with(conv, frm, flags, payload=b"", **fields):
    """One segment from `frm` with TCP header fields set by hand (urgptr, options, chksum)."""
    conv.acked[frm] = conv.nxt[{"c": "s", "s": "c"}[frm]]
    pkt = conv.packet(frm, flags, payload, conv.nxt[frm], conv.acked[frm])
    for name, value in fields.items():
        setattr(pkt[TCP], name, value)
    conv.nxt[frm] = (conv.nxt[frm] + len(payload)) & 0xFFFFFFFF
    return conv.emit(bytes(pkt))


# -------------------------------------------------------------------------- RST
@pytest.mark.parametrize("offset", [70000, 10 ** 6, -1, -5000])
def test_rst_outside_the_window_is_ignored(api, offset):
    conv = Conv()                         # windows of 65535 bytes, no scaling
    conv.handshake()
    conv.data("c", b"GET /")
    conv.data("s", b"200 OK")
    conv.rst("c", seq=conv.nxt["c"] + offset)
    conv.data("c", b" more")
    conv.close()
    w = Watch().run(conv)
    flow = w.only_flow()
    assert w.counters["rst_ignored"] == 1
    assert flow["reason"] == "fin"
    assert flow[MOS_SIDE_SVR] == b"GET / more"


def test_rst_in_window_ends_the_flow_and_later_data_is_not_delivered(api):
    conv = Conv()
    conv.handshake()
    conv.data("c", b"GET /")
    conv.rst("c", seq=conv.nxt["c"] + 100)      # inside the window: accepted (RFC 793)
    conv.data("c", b"evil")
    w = Watch().run(conv)
    flow = w.only_flow()
    assert flow["reason"] == "rst" and flow[MOS_SIDE_SVR] == b"GET /"
    assert w.counters["rst_ignored"] == 0
    assert w.counters["orphans"] == 1              # the data after the RST has no flow


def test_data_after_rst_is_picked_up_midstream_when_enabled(api):
    # The documented way to keep watching a 4-tuple whose data goes on after an RST the
    # endpoint ignored (a Linux endpoint challenges in-window RSTs that are not exact).
    reinit(midstream_pickup=True)
    conv = Conv()
    conv.handshake()
    conv.data("c", b"GET /")
    conv.rst("c", seq=conv.nxt["c"] + 100)
    conv.data("c", b"evil")
    conv.data("s", b"200")
    w = Watch().run(conv)
    reasons = sorted(entry["reason"] for entry in w.ends.values())
    assert reasons == ["eof", "rst"]
    picked = next(entry for entry in w.ends.values() if entry["reason"] == "eof")
    assert picked[MOS_SIDE_SVR] == b"evil" and picked[MOS_SIDE_CLI] == b"200"


# --------------------------------------------------------------------- SYN with data
def test_syn_payload_is_not_delivered(api):
    conv = Conv()
    conv.seg("c", "S", b"EVIL", seq=conv.isn["c"], options=[("MSS", 1460)])
    conv.nxt["c"] = conv.isn["c"] + 1           # the server acknowledges the SYN only
    conv.synack()
    conv.acked["c"] = conv.nxt["s"]
    conv.seg("c", "A")
    conv.data("c", b"GOOD")
    conv.close()
    w = Watch().run(conv)
    flow = w.only_flow()
    assert flow[MOS_SIDE_SVR] == b"GOOD" and flow["reason"] == "fin"
    assert w.counters["syn_payload_ignored"] == 1


def test_synack_payload_is_not_delivered(api):
    conv = Conv()
    conv.syn()
    conv.acked["s"] = conv.nxt["c"]
    conv.seg("s", "SA", b"EVIL", seq=conv.isn["s"], options=[("MSS", 1460)])
    conv.nxt["s"] = conv.isn["s"] + 1
    conv.acked["c"] = conv.nxt["s"]
    conv.seg("c", "A")
    conv.data("s", b"banner")
    w = Watch().run(conv)
    assert w.only_flow()[MOS_SIDE_CLI] == b"banner"
    assert w.counters["syn_payload_ignored"] == 1


# ---------------------------------------------------------------------- urgent data
def test_urgent_data_is_delivered_in_stream(api):
    conv = Conv()
    conv.handshake()
    conv.data("c", b"GET ")
    emit_with(conv, "c", "PAU", b"/XY", urgptr=2)   # the urgent pointer points into it
    conv.data("c", b" HTTP/1.0")
    conv.close()
    w = Watch().run(conv)
    # Every byte, the urgent one included (SO_OOBINLINE semantics, RFC 6093).
    assert w.only_flow()[MOS_SIDE_SVR] == b"GET /XY HTTP/1.0"
    assert w.counters["urgent_data"] == 1
    assert not [e for e in w.events if e[0] == "ERROR"]


# ----------------------------------------------------------- old retransmissions
@pytest.mark.parametrize("policy,expected", [("first", b"hello world"),
                                             ("last", b"HELLO world")])
def test_segment_entirely_before_the_window_is_not_delivered_again(api, policy, expected):
    reinit(overlap_policy=policy)
    conv = Conv()
    conv.handshake()
    base = conv.nxt["c"]
    conv.data("c", b"hello")
    conv.data("c", b" world")
    conv.data("c", b"HELLO", seq=base)          # old sequence numbers, other bytes
    conv.data("c", b"xxH", seq=base - 2)        # starts before the stream's first byte
    conv.close()
    w = Watch().run(conv, batch_size=1)
    flow = w.only_flow()
    assert flow[MOS_SIDE_SVR] == expected       # LAST rewrites held bytes, never re-delivers
    assert w.new_data == 2                      # "hello" and " world" only
    assert w.events.count(("REXMIT", MOS_SIDE_SVR)) == 2
    assert w.counters["window_overruns"] == 0


def test_segment_straddling_the_next_byte_delivers_only_the_new_bytes(api):
    conv = Conv()
    conv.handshake()
    base = conv.nxt["c"]
    conv.data("c", b"hello")
    conv.data("c", b"XXXXX world", seq=base)
    conv.close()
    w = Watch().run(conv)
    assert w.only_flow()[MOS_SIDE_SVR] == b"hello world"
    assert ("REXMIT", MOS_SIDE_SVR) in w.events


# -------------------------------------------------------------- zero-window probes
def test_zero_window_probes_are_not_errors(api):
    conv = Conv()
    conv.handshake()
    conv.data("c", b"x" * 100)
    conv.ack("s", window=0)                            # the server's window closes
    conv.seg("c", "A", seq=conv.nxt["c"] - 1, advance=False)     # Linux probe: no data, seq - 1
    conv.data("c", b"y", advance=False)                 # BSD probe: one byte at the edge
    conv.data("c", b"y", advance=False)
    conv.ack("s", window=1000)                          # the window opens
    conv.data("c", b"yz")
    conv.close()
    w = Watch().run(conv)
    assert w.only_flow()[MOS_SIDE_SVR] == b"x" * 100 + b"yz"
    assert w.counters["window_overruns"] == 0
    assert not [e for e in w.events if e[0] == "ERROR"]


def test_two_bytes_into_a_zero_window_are_an_error(api):
    conv = Conv()
    conv.handshake()
    conv.data("c", b"x" * 100)
    conv.ack("s", window=0)
    conv.data("c", b"yy", advance=False)
    w = Watch().run(conv)
    assert w.only_flow()[MOS_SIDE_SVR] == b"x" * 100
    assert w.counters["window_overruns"] == 1
    assert ("ERROR", MOS_SIDE_SVR) in w.events


# --------------------------------------------------------------------- window scale
@pytest.mark.parametrize("shift", [14, 20, None])
def test_window_scale_shift_is_clamped_to_14(api, shift):
    conv = Conv()
    conv.handshake(wscale_c=shift, wscale_s=shift)
    conv.ack("s", window=1)                       # 1 << 14 = 16384 bytes (1 unscaled)
    conv.data("c", b"a" * 10000)
    conv.data("c", b"b" * 10000)                  # ends at 20000: beyond 16384
    w = Watch().run(conv)
    expected = 1 if shift is None else 16384
    assert len(w.only_flow()[MOS_SIDE_SVR]) == expected
    assert w.counters["window_overruns"] == (2 if shift is None else 1)


def test_window_scale_only_when_both_syns_carry_it(api):
    conv = Conv()
    conv.handshake(wscale_c=None, wscale_s=7)
    conv.ack("s", window=100)
    conv.data("c", b"a" * 150)
    w = Watch().run(conv)
    assert w.only_flow()[MOS_SIDE_SVR] == b"a" * 100
    assert w.counters["window_overruns"] == 1


# ------------------------------------------------------------ timestamps, checksums
def test_paws_is_not_enforced(api):
    conv = Conv()
    ts = lambda val: [("NOP", None), ("NOP", None), ("Timestamp", (val, 0))]  # noqa: E731
    conv.seg("c", "S", seq=conv.isn["c"], options=[("MSS", 1460)] + ts(1000))
    conv.acked["s"] = conv.nxt["c"]
    conv.seg("s", "SA", seq=conv.isn["s"], options=[("MSS", 1460)] + ts(5000))
    conv.acked["c"] = conv.nxt["s"]
    conv.seg("c", "A", options=ts(1001))
    conv.data("c", b"new ", options=ts(1002))
    conv.data("c", b"old", options=ts(10))        # ts_val went backwards: PAWS would drop it
    conv.close()
    assert server_stream(conv) == b"new old"


def test_tcp_checksums_are_not_verified(api):
    conv = Conv()
    conv.handshake()
    emit_with(conv, "c", "PA", b"bad-sum", chksum=0x1234)
    conv.close()
    assert server_stream(conv) == b"bad-sum"


def test_data_beyond_the_fin_is_not_delivered(api):
    conv = Conv()
    conv.handshake()
    conv.data("c", b"req")
    fin_seq = conv.nxt["c"]
    conv.fin("c")
    conv.data("c", b"after-fin", seq=fin_seq + 1)
    conv.fin("s")
    conv.ack("c")
    assert server_stream(conv) == b"req"
