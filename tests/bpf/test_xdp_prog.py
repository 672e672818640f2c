"""The XDP program under BPF_PROG_TEST_RUN, table-driven: crafted frames in, expected
action and exact counter deltas out, for passive and inline interfaces, with and without
an AF_XDP socket in the XSKMAP, fail-open and fail-closed, per-flow verdicts and a
monitor filter.

With BPF_PROG_TEST_RUN a redirect (XSKMAP or DEVMAP) only reports XDP_REDIRECT; which
one happened, and why, is read from the counters. An AF_XDP socket need not be bound
to sit in the XSKMAP, which is all the program's lookup sees.
"""
from __future__ import annotations

import socket
import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.ipsec import AH, ESP
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from mosxdp.io import libbpf, xdp
from mosxdp.io.bpfstructs import (ACTION_COUNTERS, COUNTER_NAMES, MX_ACTION_BYPASS, MX_ACTION_DROP,
                                  MX_ACTION_STATE_ONLY,
                                  MX_DIR_FROM_HI, MX_DIR_FROM_LO, MX_IF_BYPASS_CONSUME,
                                  MX_IF_FAIL_CLOSED, MX_IF_INLINE, MX_MAX_QUEUES, MxIfConfig,
                                  make_flow_key)
from mosxdp.io.uapi import AF_XDP, XDP_DROP, XDP_PASS, XDP_REDIRECT

pytestmark = pytest.mark.bpf

REDIRECT, PASS, DROP = XDP_REDIRECT, XDP_PASS, XDP_DROP
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"
CLI4, SRV4 = "10.0.0.1", "10.0.0.2"
CLI6, SRV6 = "fd00::1", "fd00::2"
SLOT_A, SLOT_B = 1, 3  # non-zero slots: the index arithmetic is exercised


# ---------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------

def eth(vlans=(), outer_tpid=0x8100):
    """Ethernet + VLAN tags (outermost first; the outermost uses outer_tpid)."""
    p = Ether(src=MAC_A, dst=MAC_B)
    for i, v in enumerate(vlans):
        p = p / (Dot1AD(vlan=v) if (i == 0 and outer_tpid == 0x88A8) else Dot1Q(vlan=v))
    return p


def tcp4(flags="A", sport=1234, dport=80, payload=b"hello", src=CLI4, dst=SRV4, vlans=(),
         outer_tpid=0x8100, **ipkw):
    return bytes(eth(vlans, outer_tpid) / IP(src=src, dst=dst, **ipkw)
                 / TCP(sport=sport, dport=dport, flags=flags) / payload)


def tcp6(flags="A", sport=1234, dport=80, payload=b"hello", src=CLI6, dst=SRV6, vlans=(), ext=()):
    p = eth(vlans) / IPv6(src=src, dst=dst)
    for e in ext:
        p = p / e
    return bytes(p / TCP(sport=sport, dport=dport, flags=flags) / payload)


def patched(frame: bytes, offset: int, value: int) -> bytes:
    b = bytearray(frame)
    b[offset] = value
    return bytes(b)


def hbh():
    return IPv6ExtHdrHopByHop()


# Frames that carry a TCP segment user space should see (class "user"), and where they
# end (header_end: the first byte after the TCP header; shorter prefixes are truncated).
USER_FRAMES = {
    "ipv4_tcp": (tcp4(), 14 + 20 + 20),
    "ipv4_tcp_syn": (tcp4("S", payload=b""), 54),
    "ipv4_tcp_options": (tcp4(options=[IPOption_NOP()] * 8), 14 + 28 + 20),
    "ipv4_tcp_no_payload": (tcp4(payload=b""), 54),
    "ipv4_tcp_ethernet_padding": (tcp4(payload=b"") + bytes(6), 54),
    "ipv4_tcp_payload_cut": (tcp4(payload=b"x" * 100)[:60], 54),
    "ipv4_tcp_with_tcp_options": (bytes(eth() / IP(src=CLI4, dst=SRV4) / TCP(
        sport=1234, dport=80, flags="S", options=[("MSS", 1460), ("WScale", 7), ("SAckOK", b"")])), 54 + 12),
    "ipv6_tcp": (tcp6(), 14 + 40 + 20),
    "ipv6_tcp_hbh_dst_rt": (tcp6(ext=(hbh(), IPv6ExtHdrDestOpt(), IPv6ExtHdrRouting())), 14 + 40 + 8 + 8 + 8 + 20),
    "ipv6_tcp_ah": (tcp6(ext=(AH(nh=6, payloadlen=4, spi=1, icv=b"\x00" * 12),)), 14 + 40 + 24 + 20),
    "ipv6_tcp_8_ext": (tcp6(ext=tuple(IPv6ExtHdrDestOpt() for _ in range(8))), 14 + 40 + 64 + 20),
    "vlan_tcp": (tcp4(vlans=(10,)), 18 + 40),
    "qinq_8021ad_tcp": (tcp4(vlans=(100, 10), outer_tpid=0x88A8), 22 + 40),
    "qinq_8100_8100_tcp": (tcp4(vlans=(100, 10)), 22 + 40),
    "vlan4_tcp": (tcp4(vlans=(1, 2, 3, 4)), 14 + 16 + 40),
    "vlan_ipv6_tcp": (tcp6(vlans=(20,)), 18 + 60),
    "qinq_ipv6_tcp": (tcp6(vlans=(20, 30)), 22 + 60),
}

# Frames that take the kernel path for a reason, whatever the sockets and fail_closed.
KERNEL_FRAMES = {
    # not IP
    "arp": (bytes(eth() / ARP(psrc=CLI4, pdst=SRV4)), "not_ip"),
    "vlan_arp": (bytes(eth((5,)) / ARP(psrc=CLI4, pdst=SRV4)), "not_ip"),
    "lldp_like": (bytes(Ether(src=MAC_A, dst=MAC_B, type=0x88CC) / (b"\x00" * 46)), "not_ip"),
    # not TCP
    "ipv4_udp": (bytes(eth() / IP(src=CLI4, dst=SRV4) / UDP(sport=53, dport=53) / b"q"), "not_tcp"),
    "ipv4_icmp": (bytes(eth() / IP(src=CLI4, dst=SRV4) / ICMP()), "not_tcp"),
    "ipv6_udp": (bytes(eth() / IPv6(src=CLI6, dst=SRV6) / UDP(sport=53, dport=53) / b"q"), "not_tcp"),
    "ipv6_icmp6": (bytes(eth() / IPv6(src=CLI6, dst=SRV6) / ICMPv6EchoRequest()), "not_tcp"),
    "ipv6_esp": (bytes(eth() / IPv6(src=CLI6, dst=SRV6) / ESP(spi=1, seq=1, data=b"x" * 16)), "not_tcp"),
    "ipv6_hbh_udp": (bytes(eth() / IPv6(src=CLI6, dst=SRV6) / hbh() / UDP()), "not_tcp"),
    "vlan_udp": (bytes(eth((7,)) / IP(src=CLI4, dst=SRV4) / UDP()), "not_tcp"),
    # fragments
    "ipv4_first_fragment": (bytes(eth() / IP(src=CLI4, dst=SRV4, flags="MF", proto=6)
                                  / TCP(sport=1234, dport=80) / (b"x" * 16)), "ip_fragment"),
    "ipv4_later_fragment": (bytes(eth() / IP(src=CLI4, dst=SRV4, frag=3, proto=6) / (b"x" * 24)), "ip_fragment"),
    "ipv6_fragment": (tcp6(ext=(IPv6ExtHdrFragment(offset=0, m=1, id=7),)), "ip_fragment"),
    "ipv6_hbh_fragment": (tcp6(ext=(hbh(), IPv6ExtHdrFragment(offset=5, m=0, id=7))), "ip_fragment"),
    # malformed or beyond the parser bounds
    "ipv4_ihl4": (patched(tcp4(), 14, 0x44), "unparsed"),
    "ipv4_ihl0": (patched(tcp4(), 14, 0x40), "unparsed"),
    "ipv4_ihl15_short_frame": (patched(tcp4(payload=b""), 14, 0x4F), "unparsed"),
    "ipv4_version6": (patched(tcp4(), 14, 0x65), "unparsed"),
    "ipv4_tot_len_below_ihl": (patched(patched(tcp4(), 16, 0), 17, 10), "unparsed"),
    "ipv4_tot_len_below_tcp": (patched(patched(tcp4(), 16, 0), 17, 30), "unparsed"),
    "ipv6_version4": (patched(tcp6(), 14, 0x40), "unparsed"),
    "ipv6_payload_len_below_ext": (patched(patched(tcp6(ext=(hbh(),)), 18, 0), 19, 4), "unparsed"),
    "tcp_doff4": (patched(tcp4(payload=b"x" * 20), 14 + 20 + 12, 0x40), "unparsed"),
    "tcp_doff15_short": (patched(tcp4(payload=b"x" * 10), 14 + 20 + 12, 0xF0), "unparsed"),
    "vlan5_too_deep": (tcp4(vlans=(1, 2, 3, 4, 5)), "unparsed"),
    "ipv6_9_ext_too_many": (tcp6(ext=tuple(IPv6ExtHdrDestOpt() for _ in range(9))), "unparsed"),
}

# Every prefix of these frames that cuts a header short is "unparsed".
TRUNCATE = ["ipv4_tcp", "ipv4_tcp_options", "ipv6_tcp", "ipv6_tcp_hbh_dst_rt", "ipv6_tcp_ah",
            "vlan_tcp", "qinq_8021ad_tcp", "ipv4_tcp_with_tcp_options"]
TRUNCATED = [("%s[:%d]" % (name, n), USER_FRAMES[name][0][:n])
             for name in TRUNCATE for n in range(14, USER_FRAMES[name][1])]

# (inline, socket bound, fail_closed)
CONFIGS = {
    "passive_socket": (False, True, False),
    "passive_nosocket": (False, False, False),
    "passive_nosocket_failclosed": (False, False, True),
    "passive_socket_failclosed": (False, True, True),
    "inline_socket": (True, True, False),
    "inline_nosocket": (True, False, False),
    "inline_nosocket_failclosed": (True, False, True),
}


# ---------------------------------------------------------------------------------------
# harness
# ---------------------------------------------------------------------------------------

class Harness:
    """One loaded program, the test devices and AF_XDP sockets to put into its XSKMAP."""

    def __init__(self, prog: xdp.LoadedProgram, devs):
        self.prog, self.maps, self.devs = prog, prog.maps, devs
        self.ifa, self.ifb = devs.ifindex(devs.a), devs.ifindex(devs.b)
        self.socks = [socket.socket(AF_XDP, socket.SOCK_RAW, 0) for _ in range(2)]
        self.bound: set[int] = set()

    def close(self):
        for s in self.socks:
            s.close()

    def configure(self, *, inline=False, fail_closed=False, consume=False, devmap=True):
        flags = (MX_IF_INLINE if inline else 0) | (MX_IF_FAIL_CLOSED if fail_closed else 0)
        flags |= MX_IF_BYPASS_CONSUME if consume else 0
        self.maps.set_iface_config(self.ifa, MxIfConfig(SLOT_A, SLOT_B, self.ifb, flags))
        self.maps.set_iface_config(self.ifb, MxIfConfig(SLOT_B, SLOT_A, self.ifa, flags))
        if devmap:
            self.maps.set_tx_port(SLOT_A, self.ifa)
            self.maps.set_tx_port(SLOT_B, self.ifb)
        else:
            import ctypes as ct
            lib = libbpf.load()
            for slot in (SLOT_A, SLOT_B):
                k = ct.c_uint32(slot)
                lib.bpf_map_delete_elem(self.maps.fds["tx_ports"], ct.byref(k))
        self.unbind_all()
        self.maps.clear_verdicts()

    def bind(self, slot: int, queue: int, sock: int = 0):
        idx = slot * MX_MAX_QUEUES + queue
        self.maps.set_xsk(idx, self.socks[sock].fileno())
        self.bound.add(idx)

    def unbind_all(self):
        for idx in self.bound:
            self.maps.clear_xsk(idx)
        self.bound.clear()

    def run(self, frame: bytes, *, iface: str = "a", queue: int = 0) -> tuple[int, dict[str, int]]:
        ifindex = {"a": self.ifa, "b": self.ifb}.get(iface, iface)
        before = self.maps.counters()
        action, _ = xdp.prog_test_run(self.prog.prog_fd, frame, ifindex=ifindex, rx_queue=queue)
        after = self.maps.counters()
        delta = {k: after[k] - before[k] for k in COUNTER_NAMES if after[k] != before[k]}
        # invariant: every frame counted once in rx_total and in exactly one action counter
        assert delta.get("rx_total") == 1, delta
        assert sum(delta.get(k, 0) for k in ACTION_COUNTERS) == 1, delta
        return action, delta


def kernel_path(inline: bool, **reasons) -> tuple[int, dict[str, int]]:
    if inline:
        return REDIRECT, {"rx_total": 1, "kernel_forward": 1, **reasons}
    return PASS, {"rx_total": 1, "pass": 1, **reasons}


def expect_user(inline: bool, sock: bool, fail_closed: bool) -> tuple[int, dict[str, int]]:
    if sock:
        return REDIRECT, {"rx_total": 1, "to_xsk": 1}
    if fail_closed:
        return DROP, {"rx_total": 1, "drop": 1, "fail_closed_drop": 1}
    return kernel_path(inline, no_xsk_fallback=1)


@pytest.fixture(scope="module")
def prog(netdevs):
    with xdp.compile_program() as p:
        yield p


@pytest.fixture(scope="module")
def h(prog, netdevs):
    harness = Harness(prog, netdevs)
    yield harness
    harness.close()


# ---------------------------------------------------------------------------------------
# classification x configuration
# ---------------------------------------------------------------------------------------

def configured(h, config: str) -> tuple[bool, bool, bool]:
    """Configure the harness as CONFIGS[config] says; returns (inline, sock, fail_closed)."""
    inline, sock, fail_closed = CONFIGS[config]
    h.configure(inline=inline, fail_closed=fail_closed)
    if sock:
        h.bind(SLOT_A, 0)
    return inline, sock, fail_closed


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", USER_FRAMES)
def test_tcp_frames_go_to_user_space(h, name, config):
    inline, sock, fail_closed = configured(h, config)
    assert h.run(USER_FRAMES[name][0]) == expect_user(inline, sock, fail_closed)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", KERNEL_FRAMES)
def test_other_frames_take_the_kernel_path(h, name, config):
    inline, _sock, _fail_closed = configured(h, config)
    frame, reason = KERNEL_FRAMES[name]
    assert h.run(frame) == kernel_path(inline, **{reason: 1})


@pytest.mark.parametrize("inline", [False, True], ids=["passive", "inline"])
@pytest.mark.parametrize("name,frame", TRUNCATED, ids=[t[0] for t in TRUNCATED])
def test_truncated_frames_are_never_dropped(h, name, frame, inline):
    h.configure(inline=inline, fail_closed=True)  # even fail-closed: doubt never drops
    h.bind(SLOT_A, 0)
    assert h.run(frame) == kernel_path(inline, unparsed=1)


def test_frame_shorter_than_ethernet_is_unparsed_if_test_run_accepts_it(h):
    h.configure(inline=False, fail_closed=True)
    for n in range(1, 14):
        try:
            action, delta = h.run(tcp4()[:n])
        except OSError:
            continue  # BPF_PROG_TEST_RUN refuses frames shorter than ETH_HLEN
        assert (action, delta) == kernel_path(False, unparsed=1)


# ---------------------------------------------------------------------------------------
# XSKMAP indexing, interfaces, devmap
# ---------------------------------------------------------------------------------------

def test_xskmap_index_is_slot_times_max_queues_plus_rx_queue(h):
    h.configure(inline=True)
    h.bind(SLOT_A, 1)
    frame = tcp4()
    assert h.run(frame, queue=1) == (REDIRECT, {"rx_total": 1, "to_xsk": 1})
    # queue 0 of A, and queue 1 of B (other slot) find no socket
    assert h.run(frame, queue=0) == kernel_path(True, no_xsk_fallback=1)
    assert h.run(frame, iface="b", queue=1) == kernel_path(True, no_xsk_fallback=1)
    h.bind(SLOT_B, 1, sock=1)
    assert h.run(frame, iface="b", queue=1) == (REDIRECT, {"rx_total": 1, "to_xsk": 1})


def test_unconfigured_interface_passes(h, netdevs):
    h.configure(inline=True, fail_closed=True)
    h.bind(SLOT_A, 0)
    assert h.run(tcp4(), iface=netdevs.ifindex(netdevs.pa)) == (PASS, {"rx_total": 1, "pass": 1, "no_config": 1})


def test_inline_without_devmap_entry_passes(h):
    h.configure(inline=True, devmap=False)
    assert h.run(bytes(eth() / ARP())) == (PASS, {"rx_total": 1, "pass": 1, "devmap_miss": 1, "not_ip": 1})
    h.configure(inline=True)


def test_socket_removed_from_xskmap_falls_back(h):
    h.configure(inline=False)
    h.bind(SLOT_A, 0)
    assert h.run(tcp4())[0] == REDIRECT
    h.unbind_all()
    assert h.run(tcp4()) == kernel_path(False, no_xsk_fallback=1)


# ---------------------------------------------------------------------------------------
# per-flow verdicts
# ---------------------------------------------------------------------------------------

def flow_key(src, sport, dst, dport, vlans=()):
    return make_flow_key(socket.inet_pton(socket.AF_INET6 if ":" in src else socket.AF_INET, src), sport,
                         socket.inet_pton(socket.AF_INET6 if ":" in dst else socket.AF_INET, dst), dport,
                         vlan_ids=vlans)


def test_flow_key_is_the_same_for_both_directions():
    k1, d1 = flow_key(CLI4, 1234, SRV4, 80)
    k2, d2 = flow_key(SRV4, 80, CLI4, 1234)
    assert bytes(k1) == bytes(k2) and {d1, d2} == {MX_DIR_FROM_LO, MX_DIR_FROM_HI}
    k3, _ = flow_key(CLI4, 1234, SRV4, 80, vlans=(10,))
    assert bytes(k3) != bytes(k1)


@pytest.mark.parametrize("fam", ["v4", "v6", "v6_same_prefix", "same_addr", "vlan", "qinq"])
@pytest.mark.parametrize("inline", [False, True], ids=["passive", "inline"])
def test_bypass_verdict_forwards_and_counts_both_directions(h, fam, inline):
    h.configure(inline=inline)
    h.bind(SLOT_A, 0)
    cli, srv, cport, sport, vlans = {
        "v4": (CLI4, SRV4, 40000, 80, ()),
        "v6": (CLI6, SRV6, 40000, 80, ()),
        "v6_same_prefix": ("fd00::1:0:0:9", "fd00::1:0:0:2", 40000, 80, ()),
        "same_addr": (CLI4, CLI4, 40000, 80, ()),
        "vlan": (CLI4, SRV4, 40000, 80, (10,)),
        "qinq": (CLI6, SRV6, 40000, 80, (100, 10)),
    }[fam]
    mk = tcp6 if ":" in cli else tcp4
    c2s = mk("A", cport, sport, b"x" * 100, cli, srv, vlans=vlans)
    s2c = mk("PA", sport, cport, b"y" * 300, srv, cli, vlans=vlans)
    key, cdir = flow_key(cli, cport, srv, sport, vlans)
    h.maps.set_verdict(key, "bypass")
    t0 = time.monotonic_ns()
    assert h.run(c2s) == kernel_path(inline, verdict_bypass=1)
    assert h.run(s2c) == kernel_path(inline, verdict_bypass=1)
    assert h.run(s2c) == kernel_path(inline, verdict_bypass=1)
    v = h.maps.get_verdict(key)
    assert v.action == MX_ACTION_BYPASS
    sdir = 1 - cdir
    assert v.packets[cdir] == 1 and v.packets[sdir] == 2
    assert v.bytes[cdir] == 100 and v.bytes[sdir] == 600
    assert v.frame_bytes[cdir] == len(c2s) and v.frame_bytes[sdir] == 2 * len(s2c)
    assert t0 <= v.last_seen_ns <= time.monotonic_ns()
    # the same flow on another VLAN, or another flow, is not affected
    other = mk("A", cport, sport, b"x", cli, srv, vlans=(99,))
    assert h.run(other) == (REDIRECT, {"rx_total": 1, "to_xsk": 1})
    popped = h.maps.pop_verdict(key)
    assert popped.packets == v.packets and h.maps.get_verdict(key) is None
    assert h.run(c2s) == (REDIRECT, {"rx_total": 1, "to_xsk": 1})


@pytest.mark.parametrize("inline", [False, True], ids=["passive", "inline"])
def test_drop_verdict_drops_and_counts(h, inline):
    h.configure(inline=inline)
    h.bind(SLOT_A, 0)
    key, cdir = flow_key(CLI4, 1234, SRV4, 80)
    h.maps.set_verdict(key, MX_ACTION_DROP)
    for frame in (tcp4("A", 1234, 80, b"abc"), tcp4("PA", 80, 1234, b"defg", SRV4, CLI4)):
        assert h.run(frame) == (DROP, {"rx_total": 1, "drop": 1, "verdict_drop": 1})
    v = h.maps.get_verdict(key)
    assert v.packets == (1, 1) and v.bytes[cdir] == 3 and v.bytes[1 - cdir] == 4


@pytest.mark.parametrize("action", [MX_ACTION_BYPASS, MX_ACTION_DROP, MX_ACTION_STATE_ONLY],
                         ids=["bypass", "drop", "state_only"])
@pytest.mark.parametrize("flags", ["S", "SA", "FA", "R", "RA"])
def test_syn_fin_rst_of_a_verdict_flow_still_go_to_user_space(h, action, flags):
    h.configure(inline=True)
    h.bind(SLOT_A, 0)
    key, _ = flow_key(CLI4, 1234, SRV4, 80)
    h.maps.set_verdict(key, action)
    assert h.run(tcp4(flags, 80, 1234, b"", SRV4, CLI4)) == (REDIRECT, {"rx_total": 1, "to_xsk": 1, "verdict_ctrl": 1})
    v = h.maps.get_verdict(key)
    assert v.packets == (0, 0) and v.last_seen_ns > 0  # user space counts what it sees


@pytest.mark.parametrize("action", [MX_ACTION_BYPASS, MX_ACTION_DROP, MX_ACTION_STATE_ONLY],
                         ids=["bypass", "drop", "state_only"])
def test_control_frame_of_verdict_flow_without_socket_follows_the_verdict(h, action):
    h.configure(inline=True, fail_closed=True)
    key, _ = flow_key(CLI4, 1234, SRV4, 80)
    h.maps.set_verdict(key, action)
    got = h.run(tcp4("FA", 1234, 80, b""))
    if action == MX_ACTION_DROP:
        assert got == (DROP, {"rx_total": 1, "drop": 1, "verdict_drop": 1, "verdict_ctrl": 1, "no_xsk_fallback": 1})
    elif action == MX_ACTION_STATE_ONLY:
        assert got == kernel_path(True, verdict_state_only=1, verdict_ctrl=1, no_xsk_fallback=1)
    else:
        assert got == kernel_path(True, verdict_bypass=1, verdict_ctrl=1, no_xsk_fallback=1)
    assert sum(h.maps.get_verdict(key).packets) == 1


def test_passive_bypass_consume_drops_instead_of_passing(h):
    h.configure(inline=False, consume=True)
    key, _ = flow_key(CLI4, 1234, SRV4, 80)
    h.maps.set_verdict(key, "bypass")
    assert h.run(tcp4()) == (DROP, {"rx_total": 1, "drop": 1, "verdict_bypass": 1})


def test_set_verdict_keeps_counters_and_iteration_sees_entries(h):
    h.configure(inline=True)
    key, cdir = flow_key(CLI6, 5555, SRV6, 443)
    h.maps.set_verdict(key, "bypass")
    h.run(tcp6("A", 5555, 443, b"z" * 10))
    h.maps.set_verdict(key, "drop")
    assert h.run(tcp6("A", 5555, 443, b"z" * 10))[0] == DROP
    v = h.maps.get_verdict(key)
    assert v.packets[cdir] == 2 and v.bytes[cdir] == 20 and v.action_name == "drop"
    entries = dict((bytes(k), v) for k, v in h.maps.verdicts())
    assert bytes(key) in entries and h.maps.verdict_count() == 1
    with pytest.raises(ValueError):
        h.maps.set_verdict(key, "forward")


def test_unknown_verdict_action_is_ignored(h):
    import ctypes as ct
    from mosxdp.io.bpfstructs import MxVerdict
    h.configure(inline=True)
    h.bind(SLOT_A, 0)
    key, _ = flow_key(CLI4, 1234, SRV4, 80)
    v = MxVerdict(action=7)
    libbpf.check(libbpf.load().bpf_map_update_elem(h.maps.fds["verdicts"], ct.byref(key), ct.byref(v), 0), "upd")
    assert h.run(tcp4()) == (REDIRECT, {"rx_total": 1, "to_xsk": 1})


# ---------------------------------------------------------------------------------------
# monitor filter (generated header)
# ---------------------------------------------------------------------------------------

PORT_8080 = "v->ip_proto == 6 && (v->sport == bpf_htons(8080) || v->dport == bpf_htons(8080))"


@pytest.fixture(scope="module")
def hf(netdevs):
    with xdp.compile_program(PORT_8080) as p:
        harness = Harness(p, netdevs)
        yield harness
        harness.close()


@pytest.mark.parametrize("inline", [False, True], ids=["passive", "inline"])
def test_filter_sends_only_matching_frames_to_user_space(hf, inline):
    hf.configure(inline=inline)
    hf.bind(SLOT_A, 0)
    for frame in (tcp4(dport=8080), tcp4(sport=8080, dport=1234), tcp6(dport=8080), tcp4(dport=8080, vlans=(3,))):
        assert hf.run(frame) == (REDIRECT, {"rx_total": 1, "to_xsk": 1})
    for frame in (tcp4(dport=9090), tcp6(sport=9090, dport=1234), tcp4(dport=8081, vlans=(3,))):
        assert hf.run(frame) == kernel_path(inline, filter_miss=1)
    # not TCP is classified before the filter
    assert hf.run(bytes(eth() / IP(src=CLI4, dst=SRV4) / UDP(dport=8080)))[1].get("not_tcp") == 1


def test_filter_miss_does_not_hide_control_frames_of_verdict_flows(hf):
    hf.configure(inline=True)
    hf.bind(SLOT_A, 0)
    key, _ = flow_key(CLI4, 1234, SRV4, 9090)
    hf.maps.set_verdict(key, "bypass")
    assert hf.run(tcp4("F", 1234, 9090, b"")) == (REDIRECT, {"rx_total": 1, "to_xsk": 1, "verdict_ctrl": 1})
    assert hf.run(tcp4("A", 1234, 9090)) == kernel_path(True, verdict_bypass=1)


def test_filter_on_addresses(netdevs):
    expr = "v->ip_version == 4 && v->dst[0] == bpf_htonl(0x0A000002)"  # dst 10.0.0.2
    with xdp.compile_program(expr) as p:
        hh = Harness(p, netdevs)
        try:
            hh.configure(inline=False)
            hh.bind(SLOT_A, 0)
            assert hh.run(tcp4())[0] == REDIRECT
            assert hh.run(tcp4(dst="10.0.0.3")) == kernel_path(False, filter_miss=1)
            assert hh.run(tcp6()) == kernel_path(False, filter_miss=1)
        finally:
            hh.close()


def test_bad_filter_expression_is_a_clear_error(bpf_env):
    with pytest.raises(xdp.XdpError) as ei:
        xdp.compile_program("v->no_such_field == 1")
    assert "no_such_field" in str(ei.value) and "filter" in str(ei.value)


def test_filter_header_text():
    assert "return 1;" in xdp.filter_header_text(None)
    assert "return (v->dport == 1) ? 1 : 0;" in xdp.filter_header_text("v->dport == 1")
    with pytest.raises(xdp.XdpError):
        xdp.filter_header_text("1 */ int x; /*")


# ---------------------------------------------------------------------------------------
# observe-only: a copy into the ring buffer, then the kernel path
# ---------------------------------------------------------------------------------------

OBSERVE_RING = 4096 * 4     # small: a few frames fill it


@pytest.fixture(scope="module")
def ho(netdevs):
    with xdp.compile_program(extra_cflags=("-DMX_OBSERVE_SNAP=2048",
                                           "-DMX_OBSERVE_PAGES=%d" % (OBSERVE_RING // 4096))) as p:
        harness = Harness(p, netdevs)
        yield harness
        harness.close()


def observed_ring(ho):
    from mosxdp.io.ringbuf import RingBuffer
    return RingBuffer(ho.prog.bpf[b"observed"].map_fd, OBSERVE_RING)


@pytest.mark.parametrize("inline", [False, True], ids=["passive", "inline"])
def test_observe_copies_the_frame_and_takes_the_kernel_path(ho, inline):
    from mosxdp.io.bpfstructs import MX_IF_OBSERVE, MxObserved
    ho.configure(inline=inline)
    ho.maps.set_iface_config(ho.ifa, MxIfConfig(SLOT_A, SLOT_B, ho.ifb,
                                                (MX_IF_INLINE if inline else 0) | MX_IF_OBSERVE))
    ho.bind(SLOT_A, 0)     # a socket in the XSKMAP changes nothing: observe-only uses none
    frames = [tcp4(payload=b"x" * n) for n in (0, 5, 1400)] + [tcp6("S", payload=b"")]
    with observed_ring(ho) as ring:
        ring.take(1 << 20)
        ring.release()                        # whatever an earlier test left
        for frame in frames:
            assert ho.run(frame) == kernel_path(inline, observed=1)
        records = ring.take(100)
        got = []
        for rec in records:
            hdr = MxObserved.from_buffer_copy(rec[:24])
            got.append((hdr.slot, hdr.frame_len, hdr.cap_len, bytes(rec[24:24 + hdr.cap_len])))
        del records, rec
        ring.release()
    assert got == [(SLOT_A, len(f), len(f), f) for f in frames]


def test_observe_counts_the_copies_a_full_ring_has_no_room_for(ho):
    from mosxdp.io.bpfstructs import MX_IF_OBSERVE
    ho.configure(inline=True)
    ho.maps.set_iface_config(ho.ifa, MxIfConfig(SLOT_A, SLOT_B, ho.ifb, MX_IF_INLINE | MX_IF_OBSERVE))
    frame = tcp4(payload=b"y" * 1400)
    with observed_ring(ho) as ring:
        ring.take(1 << 20)
        ring.release()
        outcomes = [ho.run(frame) for _ in range(OBSERVE_RING // 1400 + 4)]
        kept = len(ring.take(1000))
        ring.release()
    lost = [o for o in outcomes if o == kernel_path(True, observe_lost=1)]
    assert lost and kept + len(lost) == len(outcomes)
    # every frame went on, copied or not
    assert all(o[0] == REDIRECT for o in outcomes)


@pytest.mark.parametrize("snap", [128, 16384])
def test_observe_copies_the_first_snap_minus_one_bytes_with_the_wire_length(netdevs, snap):
    """--observe-snap: a copy holds the frame's first snap - 1 bytes and its length on the
    wire (what the engine gives the core to parse a cut frame from its headers); a
    frame no longer than that is copied whole. 16384, the largest, loads too."""
    from mosxdp.io.bpfstructs import MX_IF_OBSERVE, MxObserved
    from mosxdp.io.ringbuf import RingBuffer
    with xdp.compile_program(extra_cflags=("-DMX_OBSERVE_SNAP=%d" % snap,
                                           "-DMX_OBSERVE_PAGES=%d" % (OBSERVE_RING // 4096))) as p:
        h = Harness(p, netdevs)
        try:
            h.configure(inline=True)
            h.maps.set_iface_config(h.ifa, MxIfConfig(SLOT_A, SLOT_B, h.ifb,
                                                      MX_IF_INLINE | MX_IF_OBSERVE))
            # the last frame: snap - 1 bytes, or a whole 1514-byte frame
            frames = [tcp4(payload=b"x" * 1400), tcp6(payload=b"y" * 40),
                      tcp4(payload=b"z" * (min(snap - 1, 1514) - 54))]
            with RingBuffer(p.bpf[b"observed"].map_fd, OBSERVE_RING) as ring:
                for frame in frames:
                    assert h.run(frame) == kernel_path(True, observed=1)
                got = []
                records = ring.take(100)
                for rec in records:
                    hdr = MxObserved.from_buffer_copy(rec[:24])
                    got.append((hdr.frame_len, hdr.cap_len, bytes(rec[24:24 + hdr.cap_len])))
                del records, rec
                ring.release()
        finally:
            h.close()
    want = [(len(f), min(len(f), snap - 1), f[:snap - 1]) for f in frames]
    assert got == want
    assert (got[0][1] < got[0][0]) == (snap == 128)


# ---------------------------------------------------------------------------------------
# a run split over workers (-DMX_WORKERS=2): the queue's worker against the flow's hash
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hw(netdevs):
    with xdp.compile_program(extra_cflags=("-DMX_WORKERS=2",)) as p:
        harness = Harness(p, netdevs)
        yield harness
        harness.close()


def test_frames_off_worker_counts_by_the_offline_splits_hash(hw):
    """On each of the two queues, random IPv4 and IPv6 TCP and UDP frames: frames_off_worker
    counts exactly those whose worker by mosxdp.core.split (the offline split) is not the
    queue's, in both directions of a flow; every frame still goes to the queue's socket."""
    import random

    from mosxdp.core.split import frame_worker
    from mosxdp.io.bpfstructs import MX_IF_FILTER_ALL_IP
    hw.configure()
    hw.maps.set_iface_config(hw.ifa, MxIfConfig(SLOT_A, SLOT_B, hw.ifb, MX_IF_FILTER_ALL_IP))
    hw.bind(SLOT_A, 0, 0)
    hw.bind(SLOT_A, 1, 1)
    rng = random.Random(15)
    off = {True: 0, False: 0}
    for _ in range(200):
        if rng.random() < 0.5:
            a, b = (socket.inet_ntop(socket.AF_INET, rng.randbytes(4)) for _ in range(2))
            ip = IP(src=a, dst=b)
        else:
            a, b = (socket.inet_ntop(socket.AF_INET6, rng.randbytes(16)) for _ in range(2))
            ip = IPv6(src=a, dst=b)
        l4 = (TCP if rng.random() < 0.8 else UDP)(sport=rng.randrange(1, 65536),
                                                  dport=rng.randrange(1, 65536))
        for frame in (bytes(eth() / ip / l4 / b"x"),
                      bytes(eth() / ip.__class__(src=ip.dst, dst=ip.src)
                            / l4.__class__(sport=l4.dport, dport=l4.sport) / b"x")):
            worker = frame_worker(frame, 2)
            for queue in (0, 1):
                action, delta = hw.run(frame, queue=queue)
                assert action == REDIRECT and delta.get("to_xsk") == 1, delta
                expect = int(queue != worker)
                assert delta.get("frames_off_worker", 0) == expect, (ip, l4, queue, worker)
                off[bool(expect)] += 1
    assert off[True] == off[False] == 400     # 200 flows x 2 directions x 2 queues


def test_observe_split_copies_each_frame_into_its_flow_workers_ring(netdevs):
    """Observe-only split over 8 workers (the most): random IPv4 and IPv6 TCP and UDP
    frames, both directions of each flow, each copied into the ring of the worker
    mosxdp.core.split gives its flow (observed, observed1 ... observed7), and only there."""
    import random

    from mosxdp.core.split import frame_worker
    from mosxdp.io.bpfstructs import MX_IF_FILTER_ALL_IP, MX_IF_OBSERVE, MX_OBSERVE_MAX_RINGS
    from mosxdp.io.ringbuf import RingBuffer
    workers = MX_OBSERVE_MAX_RINGS
    with xdp.compile_program(extra_cflags=("-DMX_OBSERVE_SNAP=2048", "-DMX_OBSERVE_PAGES=%d"
                                           % (OBSERVE_RING // 4096), "-DMX_WORKERS=%d" % workers)) as p:
        h = Harness(p, netdevs)
        try:
            h.configure(inline=True)
            h.maps.set_iface_config(h.ifa, MxIfConfig(SLOT_A, SLOT_B, h.ifb, MX_IF_INLINE
                                                      | MX_IF_OBSERVE | MX_IF_FILTER_ALL_IP))
            rings = [RingBuffer(p.bpf[b"observed%d" % w if w else b"observed"].map_fd, OBSERVE_RING)
                     for w in range(workers)]
            rng = random.Random(8)
            seen = [0] * workers
            try:
                for _ in range(60):
                    fam, ipcls = (socket.AF_INET, IP) if rng.random() < 0.5 else (socket.AF_INET6, IPv6)
                    a, b = (socket.inet_ntop(fam, rng.randbytes(4 if fam == socket.AF_INET else 16))
                            for _ in range(2))
                    l4 = TCP if rng.random() < 0.8 else UDP
                    sport, dport = rng.randrange(1, 65536), rng.randrange(1, 65536)
                    for frame in (bytes(eth() / ipcls(src=a, dst=b) / l4(sport=sport, dport=dport) / b"x"),
                                  bytes(eth() / ipcls(src=b, dst=a) / l4(sport=dport, dport=sport) / b"x")):
                        worker = frame_worker(frame, workers)
                        assert h.run(frame) == kernel_path(True, observed=1)
                        got = [len(ring.take(10)) for ring in rings]
                        for ring in rings:
                            ring.release()
                        assert got == [int(w == worker) for w in range(workers)], (worker, got)
                        seen[worker] += 1
            finally:
                for ring in rings:
                    ring.close()
        finally:
            h.close()
    assert all(seen), seen        # every ring got some


def test_observe_split_over_more_workers_than_rings_is_refused(bpf_env):
    from mosxdp.io.bpfstructs import MX_OBSERVE_MAX_RINGS
    with pytest.raises(xdp.XdpError, match="at most MX_OBSERVE_MAX_RINGS workers"):
        xdp.compile_program(extra_cflags=("-DMX_OBSERVE_SNAP=2048", "-DMX_OBSERVE_PAGES=4",
                                          "-DMX_WORKERS=%d" % (MX_OBSERVE_MAX_RINGS + 1)))
