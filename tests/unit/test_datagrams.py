"""UDP and ICMP flows (mosxdp/core/datagrams.py, mosx_watch_datagrams) and connlog's lines
for them, on crafted frames (flowcraft.Dgrams): Zeek's flow semantics (ports, roles,
conn_state, history, byte counts), idle timeouts, eviction, filters, the session hook,
kernel verdicts through a Python model of the XDP program, and bad input."""
from __future__ import annotations

import argparse
import errno
import io
import json
import socket

import pytest
from flowcraft import Conv, Dgrams, VerdictMap, ctx  # noqa: F401  (ctx: a fixture)

from mosxdp import *  # noqa: F401,F403
from mosxdp.core.datagrams import icmp_ports
from mosxdp.core.packet import parse_frame
from mosxdp.engine import run_frames
from mosxdp.engine.hybrid import HybridProcessor, flow_key, kernel_filter
from mosxdp.io.bpfstructs import MX_ACTION_BYPASS, MX_ACTION_DROP, FlowVerdict, make_flow_key


def connlog(ctx, frames, *argv, batch_size=64, kernel=None, **config):
    """connlog's lines for ``frames`` (offline, or through ``kernel``) and the context."""
    from mosxdp.apps import connlog as app_module
    parser = argparse.ArgumentParser()
    app_module.add_arguments(parser)
    mctx = ctx(**config)
    app = app_module.setup(mctx, parser.parse_args(list(argv)))
    out = app.output = _Records()
    if kernel is None:
        run_frames(mctx, frames, batch_size)
    else:
        kernel.drive(mctx, frames)
    return [json.loads(line) for line in out.getvalue().splitlines()], mctx


class _Records(io.StringIO):
    """Stands in for connlog's log: each record a JSON line, as its JSON log writes it."""

    def write(self, record):
        return super().write(json.dumps(record) + "\n")


def by_proto(lines, proto):
    return [line for line in lines if line["proto"] == proto]


# ------------------------------------------------------------------ UDP semantics
def test_udp_request_and_reply_is_one_sf_flow_with_payload_counts(ctx):
    d = Dgrams()
    q1 = d.udp("c", 40000, 5353 + 1, b"q" * 30)
    r1 = d.udp("s", 5354, 40000, b"r" * 100)
    q2 = d.udp("c", 40000, 5354, b"")
    (line,), _ = connlog(ctx, d.frames)
    assert (line["id.orig_h"], line["id.orig_p"], line["id.resp_h"], line["id.resp_p"]) == \
        ("10.0.0.1", 40000, "10.0.0.2", 5354)
    assert line["proto"] == "udp" and line["conn_state"] == "SF" and line["history"] == "Dd"
    assert (line["orig_pkts"], line["resp_pkts"]) == (2, 1)
    assert (line["orig_bytes"], line["resp_bytes"]) == (30, 100)
    assert line["orig_ip_bytes"] == len(q1) - 14 + len(q2) - 14
    assert line["resp_ip_bytes"] == len(r1) - 14
    assert line["ts"] == d.frames[0][0] / 1e6
    assert line["duration"] == pytest.approx((d.frames[-1][0] - d.frames[0][0]) / 1e6)
    assert line["missed_bytes"] == 0 and line["end_reason"] == "eof"
    assert "client_state" not in line and line["uid"].startswith("C")


def test_udp_without_a_reply_is_s0(ctx):
    d = Dgrams(cli="fd00::1", svr="fd00::2")
    for _ in range(3):
        d.udp("c", 5000, 9999, b"x" * 10)
    (line,), _ = connlog(ctx, d.frames)
    assert line["conn_state"] == "S0" and line["history"] == "D"
    assert (line["orig_pkts"], line["orig_bytes"], line["resp_pkts"]) == (3, 30, 0)
    assert line["orig_ip_bytes"] == 3 * (40 + 8 + 10)


def test_udp_reply_seen_first_from_a_server_port_flips_the_roles(ctx):
    # Zeek's likely_server_ports rule: the first datagram comes from port 53 to a port
    # that is no server's, so its receiver is the originator (history ^, SHR).
    d = Dgrams()
    d.udp("s", 53, 41000, b"a" * 60)
    (line,), _ = connlog(ctx, d.frames)
    assert (line["id.orig_h"], line["id.orig_p"], line["id.resp_p"]) == ("10.0.0.1", 41000, 53)
    assert line["history"] == "^d" and line["conn_state"] == "SHR"
    assert (line["orig_pkts"], line["resp_pkts"], line["resp_bytes"]) == (0, 1, 60)
    d.udp("c", 41000, 53, b"b" * 20)
    (line,), _ = connlog(ctx, d.frames)
    assert line["history"] == "^dD" and line["conn_state"] == "SF"
    # both ports are servers' (DHCP 68 -> 67): no flip
    d = Dgrams()
    d.udp("c", 68, 67, b"d" * 300)
    (line,), _ = connlog(ctx, d.frames)
    assert (line["id.orig_p"], line["history"], line["conn_state"]) == (68, "D", "S0")


def test_udp_flows_apart_by_ports_and_vlans(ctx):
    d = Dgrams(vlans=(10,))
    d.udp("c", 1000, 2000, b"a")
    d.udp("c", 1001, 2000, b"b")
    e = Dgrams(vlans=(11,), t0=d.ts)
    e.udp("c", 1000, 2000, b"c")
    lines, mctx = connlog(ctx, d.frames + e.frames)
    assert len(lines) == 3 and mctx.stack.counters["datagram_flows_created"] == 3


# ------------------------------------------------------------------ ICMP semantics
@pytest.mark.parametrize("v6", [False, True])
def test_ping_is_one_icmp_flow_type_and_counterpart_as_ports(ctx, v6):
    d = Dgrams(cli="fd00::1", svr="fd00::2") if v6 else Dgrams()
    for seq in range(4):
        d.ping(payload=b"p" * 48, ident=7, seq=seq)
    d.ping(payload=b"p" * 48, ident=8, seq=0)   # another ping: the same Zeek flow
    (line,), _ = connlog(ctx, d.frames)
    req, rep = (128, 129) if v6 else (8, 0)
    assert line["proto"] == "icmp" and (line["id.orig_p"], line["id.resp_p"]) == (req, rep)
    assert line["conn_state"] == "OTH" and "history" not in line
    assert (line["orig_pkts"], line["resp_pkts"]) == (5, 5)
    # bytes beyond the 8-byte ICMP header: ident/seq are in it
    assert (line["orig_bytes"], line["resp_bytes"]) == (5 * 48, 5 * 48)
    ip_hdr = 40 if v6 else 20
    assert line["orig_ip_bytes"] == 5 * (ip_hdr + 8 + 48)


def test_icmp_one_way_messages_are_flows_of_their_own_keyed_by_code(ctx):
    d = Dgrams()
    d.icmp("s", 3, code=3, payload=b"\x45" + bytes(27))       # port unreachable
    d.icmp("c", 3, code=3, payload=b"\x45" + bytes(27))       # the other way: another flow
    d.icmp("s", 3, code=1, payload=b"\x45" + bytes(27))       # host unreachable
    d.icmp("s", 3, code=3, payload=b"\x45" + bytes(27))
    lines, _ = connlog(ctx, d.frames)
    rows = sorted((l["id.orig_h"], l["id.orig_p"], l["id.resp_p"], l["orig_pkts"], l["resp_pkts"])
                  for l in lines)
    assert rows == [("10.0.0.1", 3, 3, 1, 0), ("10.0.0.2", 3, 1, 1, 0), ("10.0.0.2", 3, 3, 2, 0)]
    assert icmp_ports(1, 3, 3) == (3, 3, True) and icmp_ports(58, 135, 0) == (135, 136, False)


def test_short_icmp_is_counted_and_tracked_by_nobody(ctx):
    from scapy.layers.inet import IP
    from scapy.layers.l2 import Ether
    frames = [(1000, bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", proto=1) / b"\x08\x00"))]
    lines, mctx = connlog(ctx, frames)
    assert lines == [] and mctx.stack.counters["datagram_malformed"] == 1


def test_udp_fragments_belong_to_no_flow(ctx):
    from scapy.layers.inet import IP, UDP, fragment
    from scapy.layers.l2 import Ether
    big = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=4000, dport=4001) / (b"z" * 3000)
    frames = [(1000 + i, bytes(Ether() / f)) for i, f in enumerate(fragment(big, 1400))]
    lines, mctx = connlog(ctx, frames)
    assert len(frames) == 3 and mctx.stack.counters["ip_fragments"] == 3
    # the first fragment carries the UDP header but not the whole datagram
    assert lines == []


# ------------------------------------------------------------------ mixed with TCP
def test_tcp_udp_and_icmp_lines_together_and_tcp_only(ctx):
    conv = Conv()
    conv.full()
    d = Dgrams(t0=conv.ts)
    d.udp("c", 5000, 53, b"q")
    d.ping()
    frames = sorted(conv.frames + d.frames, key=lambda f: f[0])
    lines, _ = connlog(ctx, frames)
    assert sorted(l["proto"] for l in lines) == ["icmp", "tcp", "udp"]
    assert len({l["uid"] for l in lines}) == 3
    lines, mctx = connlog(ctx, frames, "--tcp-only")
    assert [l["proto"] for l in lines] == ["tcp"] and mctx.stack.datagrams is None
    # --filter names the flows to log: TCP ones only, unless --datagram-filter adds some
    lines, mctx = connlog(ctx, frames, "--filter", "tcp port 80")
    assert [l["proto"] for l in lines] == ["tcp"] and mctx.stack.datagrams is None
    lines, _ = connlog(ctx, frames, "--filter", "tcp port 80", "--datagram-filter", "icmp")
    assert sorted(l["proto"] for l in lines) == ["icmp", "tcp"]


def test_datagram_filter_selects_flows_by_their_first_frame(ctx):
    d = Dgrams()
    d.udp("c", 5000, 53, b"q")
    d.udp("s", 53, 5000, b"r")
    d.udp("c", 5001, 123, b"n")
    d.ping()
    lines, _ = connlog(ctx, d.frames, "--datagram-filter", "udp dst port 53 or icmp")
    assert sorted((l["proto"], l["id.resp_p"]) for l in lines) == [("icmp", 0), ("udp", 53)]
    (udp,) = by_proto(lines, "udp")
    assert udp["conn_state"] == "SF"          # the reply belongs to the selected flow
    lines, _ = connlog(ctx, d.frames, "--datagram-filter", "icmp")
    assert [l["proto"] for l in lines] == ["icmp"]


# ------------------------------------------------------------------ ends
def test_idle_timeouts_per_protocol(ctx):
    d = Dgrams()
    d.udp("c", 5000, 6000, b"1")
    d.ping()
    d.wait(5_000_000)
    d.udp("c", 5000, 6000, b"2")    # 5 s later: a new UDP flow with udp_timeout 2
    d.ping()                         # the same ICMP flow with icmp_timeout 10
    lines, _ = connlog(ctx, d.frames, udp_timeout=2, icmp_timeout=10)
    udp = by_proto(lines, "udp")
    assert [(l["orig_pkts"], l["end_reason"]) for l in udp] == [(1, "timeout"), (1, "eof")]
    (icmp,) = by_proto(lines, "icmp")
    assert (icmp["orig_pkts"], icmp["end_reason"]) == (2, "eof")
    # the default is 60 s (Zeek's); <= 0 turns it off
    lines, _ = connlog(ctx, d.frames)
    assert [l["orig_pkts"] for l in by_proto(lines, "udp")] == [2]
    d.wait(3600_000_000)
    d.udp("c", 5000, 6000, b"3")
    lines, _ = connlog(ctx, d.frames, udp_timeout=0)
    assert [l["orig_pkts"] for l in by_proto(lines, "udp")] == [3]


def test_timeout_ends_idle_flows_at_the_end_of_a_batch(ctx):
    d = Dgrams()
    d.udp("c", 5000, 6000, b"1")
    other = Dgrams(cli="10.0.0.5", t0=d.ts + 3_000_000)
    other.udp("c", 7000, 8000, b"2")
    lines, _ = connlog(ctx, d.frames + other.frames, batch_size=1, udp_timeout=2)
    # the first flow ends (timeout) when the clock passes its deadline, before the second
    assert [(l["id.orig_p"], l["end_reason"]) for l in lines] == [(5000, "timeout"),
                                                                 (7000, "eof")]


def test_max_concurrency_evicts_the_least_recently_active_datagram_flow(ctx):
    d = Dgrams()
    for port in range(3):
        d.udp("c", 5000 + port, 53, b"q")
    d.udp("c", 5000, 53, b"again")           # port 5000 is active again: 5001 is the oldest
    d.ping()
    lines, mctx = connlog(ctx, d.frames, max_concurrency=3)
    assert [(l["proto"], l["id.orig_p"], l["end_reason"]) for l in lines][0] == \
        ("udp", 5001, "evicted")
    assert mctx.stack.counters["datagram_flows_evicted"] == 1
    assert len(lines) == 4


def test_a_failing_end_callback_is_counted_and_the_run_goes_on(ctx):
    mctx = ctx()
    seen = []

    def bad(m, stats):
        seen.append(stats.orig_p)
        raise RuntimeError("app bug")
    mosx_watch_datagrams(mctx, bad)
    d = Dgrams()
    d.udp("c", 1, 2, b"x")
    d.udp("c", 3, 4, b"y")
    run_frames(mctx, d.frames)
    assert sorted(seen) == [1, 3] and mctx.stack.counters["callback_errors"] == 2


def test_stats_record_for_a_watcher(ctx):
    mctx = ctx()
    got = []
    wid = mosx_watch_datagrams(mctx, lambda m, stats: got.append((m, stats)),
                               domain=socket.AF_INET6)
    assert isinstance(wid, int)
    d = Dgrams(cli="fd00::1", svr="fd00::2", vlans=(5,))
    d.udp("c", 1234, 4321, b"abc")
    d.udp("s", 4321, 1234, b"defgh")
    v4 = Dgrams()
    v4.udp("c", 1, 2, b"not for an AF_INET6 watcher")
    run_frames(mctx, d.frames + v4.frames)
    ((m, st),) = got
    assert m is mctx and isinstance(st, DatagramFlowStats)
    assert (st.proto, st.ip_proto, st.orig_h, st.orig_p, st.resp_h, st.resp_p) == \
        ("udp", 17, "fd00::1", 1234, "fd00::2", 4321)
    assert st.vlan_ids == (5,) and st.history == "Dd" and st.end_reason == "eof"
    assert tuple(st.payload_bytes) == (3, 5) and tuple(st.pkts) == (1, 1)
    assert tuple(st.l2_bytes) == tuple(len(f) for _, f in d.frames)
    assert (st.start_ts, st.last_ts) == (d.frames[0][0], d.frames[1][0])
    assert st.kernel_verdict is None


@pytest.mark.parametrize("args,err,text", [
    (("nope",), errno.EINVAL, "not callable"),
    ((print, "udp port"), errno.EINVAL, "missing value after 'port'"),
    ((print, None, 99), errno.EAFNOSUPPORT, "AF_INET"),
    ((print, None, socket.AF_INET, -1), errno.EINVAL, "byte count"),
    ((print, None, socket.AF_INET, 1.5), errno.EINVAL, "byte count"),
])
def test_watch_datagrams_bad_arguments(ctx, args, err, text):
    mctx = ctx()
    with pytest.raises(OSError) as info:
        mosx_watch_datagrams(mctx, *args)
    assert info.value.errno == err and text in str(info.value)


# ------------------------------------------------------------------ the session hook
def test_on_datagram_hook_gets_each_datagram_of_a_flow(ctx):
    mctx = ctx()
    table = mctx.stack.datagram_table()
    got = []
    table.on_datagram.append(lambda flow, side, pkt: got.append((id(flow), side, bytes(pkt.payload))))
    d = Dgrams()
    d.udp("c", 5000, 53, b"query")
    d.udp("s", 53, 5000, b"answer")
    d.udp("c", 5001, 53, b"other")
    run_frames(mctx, d.frames)
    assert [(side, data) for _, side, data in got] == [(0, b"query"), (1, b"answer"),
                                                        (0, b"other")]
    assert got[0][0] == got[1][0] != got[2][0]
    assert mctx.stack.counters["datagram_flows_ended"] == 2


# ------------------------------------------------------------------ kernel verdicts
class DatagramKernel(VerdictMap):
    """bpf/mosxdp.c's datagram path in Python (the verdict map keyed as the program keys
    UDP and ICMP flows; every datagram of a flow with an entry is the kernel's), with the
    map API of XdpProgram; ``drive`` feeds the processor the others, end_batch after each."""

    def __init__(self):
        self.entries = {}
        self.to_user = self.kernel = 0
        self.now_ns = 0

    def set_verdict(self, key, action):
        e = self.entries.setdefault(bytes(key), {"action": 0, "last": 0, "n": [[0, 0] for _ in range(4)]})
        e["action"] = {"bypass": MX_ACTION_BYPASS, "drop": MX_ACTION_DROP}[action]

    def _fv(self, e):
        p, b, f, i = (tuple(x) for x in e["n"])
        return FlowVerdict(e["action"], e["last"], p, b, f, i)

    def rx(self, frame):
        p = parse_frame(memoryview(bytearray(frame)))
        if p.ip_proto == 17:
            sport, dport = p.sport, p.dport
            payload = p.payload_len          # parse_frame's UDP payload: after the header
        elif p.ip_proto in (1, 58) and p.payload_len >= 8:
            sport, dport, _ = icmp_ports(p.ip_proto, frame[p.l4_off], frame[p.l4_off + 1])
            payload = p.payload_len - 8      # the whole ICMP message, less its header
        else:
            return True
        key, d = make_flow_key(p.src, sport, p.dst, dport, vlan_ids=p.vlan_ids,
                               ip_proto=p.ip_proto)
        e = self.entries.get(bytes(key))
        if e is None:
            return True
        e["last"] = self.now_ns
        for row, value in zip(e["n"], (1, payload, len(frame), p.ip_len)):
            row[d] += value
        return False

    def drive(self, mctx, frames):
        proc = self.proc = HybridProcessor(mctx.stack, self)
        for ts, frame in frames:
            self.now_ns = ts * 1000
            if self.rx(frame):
                self.to_user += 1
                proc.process(memoryview(bytearray(frame)), ts, 0)
            else:
                self.kernel += 1
            proc.end_batch()
        proc.finish()


TOTALS = ("orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes", "orig_ip_bytes",
          "resp_ip_bytes", "history", "conn_state", "duration", "end_reason", "id.orig_p",
          "id.resp_p")


@pytest.mark.parametrize("kind", ["udp", "icmp", "udp6-reply-first"])
def test_bypass_after_bytes_hands_datagram_flows_to_the_kernel_totals_exact(ctx, kind):
    d = Dgrams(cli="fd00::1", svr="fd00::2") if kind.endswith("first") else Dgrams()
    for i in range(40):
        if kind == "icmp":
            d.ping(payload=b"p" * 100, seq=i)
        elif kind == "udp":
            d.udp("c", 40000, 9000, b"u" * 200)
            if i % 4 == 0:
                d.udp("s", 9000, 40000, b"v" * 20)
        else:
            d.udp("s", 53, 41000, b"r" * 300)   # the responder's datagrams only
    plain, _ = connlog(ctx, d.frames, batch_size=1)
    kernel = DatagramKernel()
    lines, mctx = connlog(ctx, d.frames, "--bypass-after-bytes", "1000", kernel=kernel)
    assert len(plain) == len(lines) == 1
    assert {k: lines[0].get(k) for k in TOTALS} == {k: plain[0].get(k) for k in TOTALS}
    # a few datagrams reached user space, the kernel had the rest; its entry left with the flow
    assert kernel.to_user <= 20 < len(d.frames) and kernel.kernel == len(d.frames) - kernel.to_user
    assert kernel.entries == {} and kernel.proc.kernel["entries_popped"] == 1
    # offline (no kernel) the option changes nothing but the verdict the flow asks for
    offline, mctx = connlog(ctx, d.frames, "--bypass-after-bytes", "1000", batch_size=1)
    assert {k: offline[0].get(k) for k in TOTALS} == {k: plain[0].get(k) for k in TOTALS}


def test_kernel_side_history_letter_and_idle_bypassed_flow(ctx):
    # The responder's datagrams all went by in the kernel: its 'd' is still in the
    # history; the flow stays while the kernel sees it, and idles out after that.
    d = Dgrams()
    d.udp("c", 40000, 9000, b"u" * 2000)
    for _ in range(5):
        d.wait(1_500_000)
        d.udp("s", 9000, 40000, b"v" * 10)
    d.wait(3_000_000)
    d.udp("c", 40001, 9000, b"next")
    kernel = DatagramKernel()
    lines, _ = connlog(ctx, d.frames, "--bypass-after-bytes", "1000", kernel=kernel,
                       udp_timeout=2)
    first = [l for l in lines if l["id.orig_p"] == 40000]
    assert [(l["history"], l["conn_state"], l["resp_pkts"], l["end_reason"]) for l in first] == \
        [("Dd", "SF", 5, "timeout")]
    assert kernel.kernel == 5


def test_kernel_filter_with_datagram_watchers(ctx):
    mctx = ctx()
    assert kernel_filter(mctx.stack).c_expr == "(0)"
    mosx_watch_datagrams(mctx, print, "udp port 53")
    kf = kernel_filter(mctx.stack)
    assert kf.filter_all_ip and "v->ip_proto == 17" in kf.c_expr and "v->ip_proto == 58" in kf.c_expr
    # a stream socket without a filter and a watcher: every TCP frame and the watched flows
    mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    kf = kernel_filter(mctx.stack)
    assert kf.c_expr.startswith("((v->ip_version != 0 && v->ip_proto == 6) || ")
    assert "watcher" in kf.why


def test_flow_key_of_a_datagram_flow(ctx):
    mctx = ctx()
    mosx_watch_datagrams(mctx, print)
    d = Dgrams(vlans=(3, 4))
    d.ping()
    mctx.stack.process(memoryview(bytearray(d.frames[0][1])), d.frames[0][0], 0)
    (flow,) = mctx.stack.datagrams.icmp_lru
    key, orig_dir = flow_key(flow)
    want, want_dir = make_flow_key(bytes([10, 0, 0, 1]), 8, bytes([10, 0, 0, 2]), 0,
                                   vlan_ids=(3, 4), ip_proto=1)
    assert bytes(key) == bytes(want) and orig_dir == want_dir


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize("key", ["udp_timeout", "icmp_timeout"])
@pytest.mark.parametrize("value,text", [("60", "expected a number"), (1e9, "must be a number"),
                                        (float("nan"), "finite")])
def test_timeout_keys_are_validated(key, value, text):
    from mosxdp.config import ConfigError, load_config
    with pytest.raises(ConfigError) as info:
        load_config(None, **{key: value})
    assert str(info.value).startswith(f"[mos] {key} = ") and text in str(info.value)
    assert "\n" not in str(info.value)
    assert getattr(load_config(None, **{key: 5}).stack_config(), key) == 5.0
