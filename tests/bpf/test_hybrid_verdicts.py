"""The XDP program's side of the hybrid path under BPF_PROG_TEST_RUN: the verdict key of a
core flow (mosxdp.engine.hybrid.flow_key) is the one the program builds for frames of both
directions; the ACK watch; the kernel filter from kernel_filter() matches both directions
of a flow; non-TCP frames with filter_all_ip. (The hybrid path live:
tests/netns/test_hybrid.py.)
"""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from flowcraft import Conv  # noqa: E402

pytestmark = pytest.mark.bpf

AF_XDP = 44


@pytest.fixture
def prog_run(bpf_env):
    """A loaded program (filter as given), loopback configured as a passive interface
    with an AF_XDP socket in its XSKMAP slot: run(frame) -> counter deltas."""
    from mosxdp.io import xdp
    from mosxdp.io.bpfstructs import MX_IF_FILTER_ALL_IP, MxIfConfig
    made = []

    def make(c_expr=None, all_ip=False):
        p = xdp.compile_program(c_expr)
        made.append(p)
        sock = socket.socket(AF_XDP, socket.SOCK_RAW, 0)
        made.append(sock)
        p.maps.set_iface_config(1, MxIfConfig(0, 0, 0, MX_IF_FILTER_ALL_IP if all_ip else 0))
        p.maps.set_xsk(0, sock.fileno())

        def run(frame):
            before = p.maps.counters()
            xdp.prog_test_run(p.prog_fd, frame, ifindex=1, rx_queue=0)
            after = p.maps.counters()
            return {k: after[k] - before[k] for k in after if after[k] != before[k]}
        return p, run

    yield make
    for x in reversed(made):
        x.close()


def _tagged(frame, vlans):
    return frame[:12] + b"".join(b"\x81\x00" + v.to_bytes(2, "big") for v in vlans) + frame[12:]


def _core_flow(frames):
    """The core's Flow for these frames (a stack with one listener)."""
    from mosxdp.core.stack import Stack
    st = Stack()
    st.add_listener(st.new_socket_id(), 0)
    for ts, f in frames:
        st.process(memoryview(bytearray(f)), ts, 0)
    (flow,) = st.lru
    return flow


USER = {"rx_total": 1, "to_xsk": 1}
BYPASS = {"rx_total": 1, "pass": 1, "verdict_bypass": 1}
CTRL = {"rx_total": 1, "to_xsk": 1, "verdict_ctrl": 1}


@pytest.mark.parametrize("cli,svr,vlans", [
    ("10.0.0.1", "10.0.0.2", ()), ("10.0.0.9", "10.0.0.2", ()), ("10.0.0.1", "10.0.0.1", ()),
    ("fd00::1", "fd00::2", ()), ("fd00::1:0:0:9", "fd00::1:0:0:2", (7,)),
    ("10.0.0.1", "10.0.0.2", (100, 10)),
])
def test_program_keys_a_core_flow_like_hybrid_flow_key(prog_run, cli, svr, vlans):
    from mosxdp.engine.hybrid import flow_key
    conv = Conv(cli=cli, svr=svr)
    conv.handshake()
    c2s = conv.data("c", b"x" * 100)
    s2c = conv.data("s", b"y" * 300)
    frames = [(ts, _tagged(f, vlans)) for ts, f in conv.frames]
    flow = _core_flow(frames)
    key, cli_dir = flow_key(flow)
    p, run = prog_run()
    p.maps.set_verdict(key, "bypass")
    c2s, s2c = _tagged(c2s, vlans), _tagged(s2c, vlans)
    assert run(c2s) == BYPASS
    assert run(s2c) == BYPASS and run(s2c) == BYPASS
    v = p.maps.get_verdict(key)
    assert v.packets[cli_dir] == 1 and v.packets[1 - cli_dir] == 2
    assert v.bytes[cli_dir] == 100 and v.bytes[1 - cli_dir] == 600
    hdr = 14 + 4 * len(vlans)
    assert v.frame_bytes[cli_dir] == len(c2s) and v.ip_bytes[cli_dir] == len(c2s) - hdr
    assert v.ip_bytes[1 - cli_dir] == 2 * (len(s2c) - hdr)


def test_program_ack_watch_sends_the_ack_of_each_fin_to_user_space(prog_run):
    from mosxdp.engine.hybrid import flow_key
    conv = Conv()
    conv.handshake()
    flow = _core_flow(conv.frames)
    key, cli_dir = flow_key(flow)
    p, run = prog_run()
    p.maps.set_verdict(key, "bypass")
    assert run(conv.data("s", b"z" * 50)) == BYPASS
    early_ack = conv.ack("c")                      # acks data only
    fin = conv.fin("s", b"last")
    assert run(fin) == CTRL
    v = p.maps.get_verdict(key)
    assert v.watch_armed[cli_dir] == 1 and v.ack_watch[cli_dir] == (conv.nxt["s"]) & 0xFFFFFFFF
    assert run(early_ack) == BYPASS                # below the FIN: still the kernel's
    ack_of_fin = conv.ack("c")
    assert run(ack_of_fin) == CTRL                 # the first ACK of the FIN: user space
    assert run(ack_of_fin) == BYPASS               # once
    assert p.maps.get_verdict(key).watch_armed == (0, 0)
    # DROP entries arm nothing
    p.maps.set_verdict(key, "drop")
    assert run(conv.fin("c")) == CTRL
    assert run(conv.ack("s")) == {"rx_total": 1, "drop": 1, "verdict_drop": 1}


@pytest.mark.parametrize("all_ip", [False, True])
def test_program_kernel_filter_both_directions_and_non_tcp(prog_run, all_ip):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from mosxdp.core.filters import compile_filter
    from mosxdp.core.stack import Stack
    from mosxdp.engine.hybrid import kernel_filter
    st = Stack()
    ls = st.add_listener(st.new_socket_id(), 0)
    ls.syn_filter = compile_filter("src host 10.0.0.1 and dst port 8080")
    if all_ip:
        rs = st.add_raw_socket(st.new_socket_id(), 0)
        rs.raw_filter = compile_filter("udp dst port 53", raw=True)
    kf = kernel_filter(st)
    assert kf.filter_all_ip == all_ip
    p, run = prog_run(kf.c_expr, kf.filter_all_ip)
    a = Conv(cli="10.0.0.1", svr="10.0.0.2", sport=8080)
    a.handshake()
    a.data("s", b"reply")
    for _, f in a.frames:
        assert run(f) == USER
    b = Conv(cli="10.0.0.3", svr="10.0.0.2", sport=8080)
    b.handshake()
    for _, f in b.frames:
        assert run(f) == {"rx_total": 1, "pass": 1, "filter_miss": 1}
    q = bytes(Ether() / IP(src="10.0.0.9", dst="10.0.0.1") / UDP(sport=5000, dport=53))
    r = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.9") / UDP(sport=53, dport=5000))
    assert run(q) == (USER if all_ip else {"rx_total": 1, "pass": 1, "not_tcp": 1})
    assert run(r) == {"rx_total": 1, "pass": 1, "not_tcp": 1}


@pytest.mark.parametrize("domain", [0, 4])
def test_program_arp_raw_filter_sends_non_ip_frames_to_user_space(prog_run, domain):
    # A raw socket's `arp` filter (any domain: it excludes only the other IP version)
    # brings ARP frames, VLAN-tagged too, to user space; other non-IP frames stay.
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import ARP, Ether

    from mosxdp.core.filters import compile_filter
    from mosxdp.core.stack import Stack
    from mosxdp.engine.hybrid import kernel_filter
    st = Stack()
    rs = st.add_raw_socket(st.new_socket_id(), domain)
    rs.raw_filter = compile_filter("arp", raw=True)
    kf = kernel_filter(st)
    assert kf.filter_all_ip
    p, run = prog_run(kf.c_expr, kf.filter_all_ip)
    arp = bytes(Ether() / ARP(psrc="10.0.0.1", pdst="10.0.0.2"))
    assert run(arp) == USER
    assert run(_tagged(arp, (5,))) == USER
    assert run(bytes(Ether(type=0x88CC) / (b"\x00" * 46))) == {"rx_total": 1, "pass": 1,
                                                              "not_ip": 1}
    assert run(bytes(Ether() / IP() / UDP())) == {"rx_total": 1, "pass": 1, "not_tcp": 1}


def test_program_raw_socket_without_filter_gets_non_ip_frames(prog_run):
    from scapy.layers.l2 import ARP, Ether

    from mosxdp.core.stack import Stack
    from mosxdp.engine.hybrid import kernel_filter
    st = Stack()
    st.add_raw_socket(st.new_socket_id(), 4)
    kf = kernel_filter(st)
    p, run = prog_run(kf.c_expr, kf.filter_all_ip)
    assert run(bytes(Ether() / ARP())) == USER
    assert run(bytes(Ether(type=0x88CC) / (b"\x00" * 46))) == USER


def _datagram_stack(filter_text=None):
    """A stack whose datagram table tracks the flows ``filter_text`` selects (None: all)."""
    from mosxdp.core.filters import compile_filter
    from mosxdp.core.stack import Stack
    st = Stack()
    st.datagram_table().add_watcher(0, compile_filter(filter_text, raw=True)
                                    if filter_text else None, lambda handle, flow: None)
    return st


def _datagram_pair(kind, vlans):
    """(originator's frame, responder's frame, payload bytes of each) of one flow."""
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    if kind == "udp4":
        a = Ether() / IP(src="10.0.0.9", dst="10.0.0.1") / UDP(sport=40000, dport=53) / Raw(b"q" * 30)
        b = Ether() / IP(src="10.0.0.1", dst="10.0.0.9") / UDP(sport=53, dport=40000) / Raw(b"r" * 90)
        sizes = (30, 90)
    elif kind == "udp6":
        a = Ether() / IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=5000, dport=5001) / Raw(b"q" * 7)
        b = Ether() / IPv6(src="fd00::2", dst="fd00::1") / UDP(sport=5001, dport=5000) / Raw(b"r" * 11)
        sizes = (7, 11)
    elif kind == "icmp4":
        a = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=7, seq=1) / Raw(b"p" * 56)
        b = Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=0, id=7, seq=1) / Raw(b"p" * 56)
        sizes = (56, 56)
    else:
        a = Ether() / IPv6(src="fd00::9", dst="fd00::2") / ICMPv6EchoRequest(id=7) / Raw(b"p" * 20)
        b = Ether() / IPv6(src="fd00::2", dst="fd00::9") / ICMPv6EchoReply(id=7) / Raw(b"p" * 20)
        sizes = (20, 20)
    return _tagged(bytes(a), vlans), _tagged(bytes(b), vlans), sizes


@pytest.mark.parametrize("kind,vlans", [("udp4", ()), ("udp6", (7,)), ("icmp4", ()),
                                        ("icmp6", (100, 10))])
def test_program_keys_a_core_datagram_flow_like_hybrid_flow_key(prog_run, kind, vlans):
    # A UDP or ICMP flow of the core (datagrams.py) has the key the program builds for
    # both directions (ICMP: type and counterpart type); a BYPASS entry then forwards
    # every datagram in the kernel and counts it per direction, payload bytes beyond the
    # 8-byte UDP/ICMP header; a DROP entry drops them; without an entry the kernel
    # filter sends both directions to user space.
    from mosxdp.engine.hybrid import flow_key, kernel_filter
    st = _datagram_stack()
    orig, resp, (osize, rsize) = _datagram_pair(kind, vlans)
    st.process(memoryview(bytearray(orig)), 1000, 0)
    (flow,) = st.datagrams.udp_lru if kind.startswith("udp") else st.datagrams.icmp_lru
    key, orig_dir = flow_key(flow)
    kf = kernel_filter(st)
    assert kf.filter_all_ip
    p, run = prog_run(kf.c_expr, kf.filter_all_ip)
    assert run(orig) == USER and run(resp) == USER
    p.maps.set_verdict(key, "bypass")
    assert run(orig) == BYPASS
    assert run(resp) == BYPASS and run(resp) == BYPASS
    v = p.maps.get_verdict(key)
    assert v.packets[orig_dir] == 1 and v.packets[1 - orig_dir] == 2
    assert v.bytes[orig_dir] == osize and v.bytes[1 - orig_dir] == 2 * rsize
    hdr = 14 + 4 * len(vlans)
    assert v.frame_bytes[orig_dir] == len(orig) and v.ip_bytes[orig_dir] == len(orig) - hdr
    assert v.ip_bytes[1 - orig_dir] == 2 * (len(resp) - hdr)
    p.maps.set_verdict(key, "drop")
    assert run(resp) == {"rx_total": 1, "drop": 1, "verdict_drop": 1}


def test_program_datagram_flows_only_with_filter_all_ip_and_their_filter(prog_run):
    # Without MX_IF_FILTER_ALL_IP (no raw socket, no datagram watcher) a UDP frame takes
    # the kernel path even when its flow has an entry; with a watcher's filter, only the
    # flows it selects come to user space, other UDP and ICMP stay in the kernel; an ICMP
    # message shorter than its 8-byte header is no flow of anyone's.
    from scapy.layers.inet import ICMP, IP, UDP
    from scapy.layers.l2 import Ether

    from mosxdp.engine.hybrid import flow_key, kernel_filter
    st = _datagram_stack("udp port 53")
    orig, resp, _ = _datagram_pair("udp4", ())
    st.process(memoryview(bytearray(orig)), 1000, 0)
    (flow,) = st.datagrams.udp_lru
    key, _ = flow_key(flow)
    p, run = prog_run(None, False)
    p.maps.set_verdict(key, "bypass")
    assert run(orig) == {"rx_total": 1, "pass": 1, "not_tcp": 1}
    p, run = prog_run(*(lambda kf: (kf.c_expr, kf.filter_all_ip))(kernel_filter(st)))
    assert run(orig) == USER and run(resp) == USER
    other = bytes(Ether() / IP(src="10.0.0.9", dst="10.0.0.1") / UDP(sport=40000, dport=54))
    ping = bytes(Ether() / IP(src="10.0.0.9", dst="10.0.0.1") / ICMP())
    short = bytes(Ether() / IP(src="10.0.0.9", dst="10.0.0.1", proto=1) / b"\x08\x00\x00")
    for frame in (other, ping, short):
        assert run(frame) == {"rx_total": 1, "pass": 1, "not_tcp": 1}


# ------------------------------------------------------------------------- state only
STATE_ONLY = {"rx_total": 1, "pass": 1, "verdict_state_only": 1}


def test_program_state_only_counts_stamps_and_watches_the_handshake_and_fins(prog_run):
    # The entry is made after the SYN (as the live run does): the SYN-ACK arms the client's
    # watch, its handshake ACK goes to user space; data frames and bare ACKs stay in the
    # kernel, counted, the first of each kind per direction stamped (the watched ACK too,
    # though it goes on to user space), the highest sequence end kept (a retransmission
    # does not lower it); each FIN and its first ACK go up.
    import time

    from mosxdp.engine.hybrid import flow_key
    from mosxdp.io.bpfstructs import MX_ACTION_STATE_ONLY, MX_WATCH_ARMED
    conv = Conv()
    conv.syn()
    flow = _core_flow(conv.frames)
    key, cli_dir = flow_key(flow)
    srv_dir = 1 - cli_dir
    p, run = prog_run()
    p.maps.set_verdict(key, "state_only")
    assert run(conv.synack()) == CTRL
    v = p.maps.get_verdict(key)
    assert v.watch_armed[cli_dir] == MX_WATCH_ARMED and v.ack_watch[cli_dir] == 5001
    conv.acked["c"] = conv.nxt["s"]
    t0 = time.monotonic_ns()
    assert run(conv.seg("c", "A")) == CTRL                 # the handshake's ACK
    t1 = time.monotonic_ns()
    assert run(conv.data("c", b"GET / HTTP/1.0\r\n\r\n")) == STATE_ONLY
    first = conv.data("s", b"a" * 1000)
    assert run(first) == STATE_ONLY
    assert run(conv.data("s", b"b" * 500)) == STATE_ONLY
    assert run(first) == STATE_ONLY                        # retransmitted
    assert run(conv.ack("c")) == STATE_ONLY                # the client's first bare ACK
    v = p.maps.get_verdict(key)
    assert v.action == MX_ACTION_STATE_ONLY and v.watch_armed == (0, 0)
    assert v.packets[cli_dir] == 2 and v.packets[srv_dir] == 3
    assert v.bytes[srv_dir] == 2500 and v.bytes[cli_dir] == 18
    assert v.seq_end[srv_dir] == 5001 + 1500 and v.seq_end[cli_dir] == 1001 + 18
    assert t0 <= v.first_ack_ns[cli_dir] <= t1 <= v.first_data_ns[cli_dir] <= v.first_data_ns[srv_dir]
    assert v.first_ack_ns[srv_dir] == 0                    # the server sent no bare ACK
    assert run(conv.fin("s")) == CTRL
    assert p.maps.get_verdict(key).ack_watch[cli_dir] == 5001 + 1500 + 1
    assert run(conv.ack("c")) == CTRL                      # the ACK of the server's FIN
    assert run(conv.fin("c")) == CTRL
    assert run(conv.ack("s")) == CTRL
    v = p.maps.get_verdict(key)
    assert v.packets == (2, 3) if cli_dir == 0 else v.packets == (3, 2)
    assert v.watch_armed == (0, 0)


def test_program_state_only_watch_any_takes_the_first_frame_with_ack(prog_run):
    # A new entry made with watch_any: the server's SYN-ACK went by before it existed, so
    # the client's next frame with ACK set goes to user space (once), whatever it acks.
    from mosxdp.engine.hybrid import flow_key
    from mosxdp.io.bpfstructs import MX_WATCH_ANY
    conv = Conv()
    conv.syn()
    conv.synack()
    flow = _core_flow(conv.frames)
    key, cli_dir = flow_key(flow)
    p, run = prog_run()
    p.maps.set_verdict(key, "state_only", watch_any=cli_dir)
    assert p.maps.get_verdict(key).watch_armed[cli_dir] == MX_WATCH_ANY
    assert run(conv.data("s", b"banner")) == STATE_ONLY    # the other direction: not watched
    conv.acked["c"] = conv.nxt["s"]
    assert run(conv.seg("c", "A")) == CTRL
    assert run(conv.data("c", b"x" * 10)) == STATE_ONLY
    v = p.maps.get_verdict(key)
    assert v.watch_armed == (0, 0) and v.packets[cli_dir] == 1   # the ACK was not counted
    assert 0 < v.first_ack_ns[cli_dir] < v.first_data_ns[cli_dir]


@pytest.mark.parametrize("shape", ["close", "rst", "retransmit"])
def test_program_state_only_connlog_equals_full_inspection(prog_run, shape, tmp_path):
    # connlog through the real program and the hybrid processor (batches of one frame:
    # each verdict is in the map before the next frame) writes the line of full inspection
    # (clock-dependent fields aside: the program's clock is not the frames'), and only
    # the handshake, FIN/RST frames and their ACKs reached user space.
    import argparse
    import json

    from mosxdp import mtcp_create_context, mtcp_destroy, mtcp_init
    from mosxdp.apps import connlog
    from mosxdp.engine import run_frames
    from mosxdp.engine.hybrid import HybridProcessor

    conv = Conv()
    conv.handshake()
    conv.data("c", b"GET /big HTTP/1.1\r\n\r\n")
    segs = [conv.data("s", bytes(1448)) for _ in range(40)]
    conv.ack("c")
    if shape == "retransmit":
        conv.emit(segs[3])
        conv.ack("c")
    if shape == "rst":
        conv.rst("s")
    else:
        conv.close()

    def lines(program):
        mtcp_destroy()
        mtcp_init(None)
        mctx = mtcp_create_context(0)
        out = tmp_path / f"conn{len(list(tmp_path.iterdir()))}.json"
        app = connlog.setup(mctx, argparse.Namespace(output=str(out), filter=None,
                                                     bypass_after_bytes=None, tcp_only=True))
        up = 0
        if program is None:
            run_frames(mctx, conv.frames, 1)
        else:
            mctx.stack.state_only = True
            proc = HybridProcessor(mctx.stack, program)
            for ts, frame in conv.frames:
                if run(frame).get("to_xsk"):
                    up += 1
                    proc.process(memoryview(bytearray(frame)), ts, 0)
                proc.end_batch()
            proc.finish()
            assert proc.kernel["verdicts_set"] == 1 and program.verdict_count() == 0
        connlog.teardown(app)
        mtcp_destroy()
        return [json.loads(x) for x in out.read_text().splitlines()], up

    p, run = prog_run()
    full, _ = lines(None)
    got, up = lines(p.maps)       # the verdict map API the live run's program offers
    clock = ("ts", "duration", "uid")
    assert len(got) == 1 and {k: v for k, v in got[0].items() if k not in clock} == \
        {k: v for k, v in full[0].items() if k not in clock}
    assert full[0]["resp_bytes"] == 40 * 1448 and full[0]["missed_bytes"] == 0
    # SYN, SYN-ACK, ACK; the client's FIN, the server's FIN (which acks it), the last ACK
    # (or one RST)
    assert up == (4 if shape == "rst" else 6), up
