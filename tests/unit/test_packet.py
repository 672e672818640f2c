"""mosxdp.core.packet: golden bytes, scapy cross-checks, malformed frames, checksums, builder."""
import socket
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR
from scapy.layers.inet6 import (
    IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
    IPv6ExtHdrSegmentRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from mosxdp.constants import TH_ACK, TH_FIN, TH_PUSH, TH_SYN
from mosxdp.core.checksum import (
    checksum_update, fix_ipv4_checksum, fix_tcp_checksum, ipv4_header_checksum,
    ones_complement_sum, tcp_checksum, verify_ipv4_checksum, verify_tcp_checksum,
)
from mosxdp.core.packet import (
    PACKET_ERROR_COUNTERS, InvalidHeader, PacketError, TruncatedHeader, parse_frame,
)
from mosxdp.core.frames import build_tcp_frame

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
V4_A = socket.inet_pton(socket.AF_INET, "10.77.0.1")
V4_B = socket.inet_pton(socket.AF_INET, "10.77.0.2")
V6_A = socket.inet_pton(socket.AF_INET6, "fd77::1")
V6_B = socket.inet_pton(socket.AF_INET6, "fd77::2")


def parse(frame):
    return parse_frame(memoryview(bytearray(frame)))


# --- golden bytes --------------------------------------------------------------------------

# Ethernet / IPv4 (DF, id 0x1c46) / TCP SYN with MSS, SACK permitted, timestamps, NOP, wscale.
GOLDEN_V4_SYN = bytes.fromhex(
    "020000000002" "020000000001" "0800"                # dst, src, IPv4
    "45" "00" "003c" "1c46" "4000" "40" "06" "9c5d"     # IHL 5, len 60, DF, ttl 64, TCP, csum
    "c0a80001" "c0a800c7"                               # 192.168.0.1 > 192.168.0.199
    "c000" "0050" "01020304" "00000000"                 # 49152 > 80, seq, ack
    "a0" "02" "faf0" "0625" "0000"                      # doff 10, SYN, window, csum, urg
    "020405b4" "0402" "080a0000007b00000000" "01" "030307")

# Ethernet / 802.1Q (PCP 3, VID 100) / IPv6 / TCP PSH+ACK "hello", seq about to wrap.
GOLDEN_V6_VLAN = bytes.fromhex(
    "3333000000fb" "020000000001" "8100" "6064" "86dd"
    "60000000" "0019" "06" "40"                         # payload length 25, TCP, hop limit 64
    "fd000000000000000000000000000001" "fd000000000000000000000000000002"
    "1f90" "d431" "ffffffff" "00000001"                 # 8080 > 54321
    "50" "18" "0200" "7c2e" "0000" "68656c6c6f")

# Ethernet / ARP request.
GOLDEN_ARP = bytes.fromhex(
    "ffffffffffff" "020000000001" "0806"
    "0001" "0800" "06" "04" "0001" "020000000001" "0a4d0001" "000000000000" "0a4d0002")


def test_golden_ipv4_syn():
    pkt = parse(GOLDEN_V4_SYN)
    assert (pkt.vlan_ids, pkt.l3_off, pkt.ip_version, pkt.ip_proto) == ((), 14, 4, 6)
    assert pkt.src == bytes([192, 168, 0, 1]) and pkt.dst == bytes([192, 168, 0, 199])
    assert (pkt.ip_len, pkt.is_fragment, pkt.l4_off) == (60, False, 34)
    assert (pkt.sport, pkt.dport, pkt.seq, pkt.ack) == (49152, 80, 0x01020304, 0)
    assert (pkt.flags, pkt.window, pkt.urgent, pkt.tcp_hdr_len) == (TH_SYN, 0xFAF0, 0, 40)
    assert (pkt.payload_off, pkt.payload_len) == (74, 0)
    assert (pkt.mss, pkt.wscale, pkt.sack_ok, pkt.ts_val, pkt.ts_ecr) == (1460, 7, True, 123, 0)
    assert pkt.bad_options is False
    assert verify_ipv4_checksum(pkt) and verify_tcp_checksum(pkt)
    assert ipv4_header_checksum(GOLDEN_V4_SYN[14:34]) == 0x9C5D
    assert tcp_checksum(pkt) == 0x0625


def test_golden_ipv6_vlan():
    pkt = parse(GOLDEN_V6_VLAN)
    assert (pkt.vlan_ids, pkt.l3_off, pkt.ip_version, pkt.ip_proto) == ((100,), 18, 6, 6)
    assert pkt.src == bytes.fromhex("fd000000000000000000000000000001")
    assert pkt.dst == bytes.fromhex("fd000000000000000000000000000002")
    assert (pkt.ip_len, pkt.l4_off, pkt.sport, pkt.dport) == (65, 58, 8080, 54321)
    assert (pkt.seq, pkt.ack, pkt.flags, pkt.window) == (0xFFFFFFFF, 1, TH_PUSH | TH_ACK, 512)
    assert (pkt.tcp_hdr_len, pkt.payload_off, pkt.payload_len) == (20, 78, 5)
    assert bytes(pkt.payload) == b"hello"
    assert tcp_checksum(pkt) == 0x7C2E and verify_tcp_checksum(pkt)


def test_golden_arp_is_not_ip():
    pkt = parse(GOLDEN_ARP)
    assert (pkt.ip_version, pkt.ip_proto, pkt.src, pkt.dst, pkt.vlan_ids) == (0, 0, b"", b"", ())
    assert (pkt.l3_off, pkt.payload_off, pkt.payload_len) == (14, 14, 28)
    assert (pkt.sport, pkt.dport, pkt.seq, pkt.flags, pkt.tcp_hdr_len) == (0, 0, 0, 0, 0)
    assert (pkt.mss, pkt.ts_val, pkt.bad_options) == (None, None, False)


def test_frame_is_not_copied():
    frame = bytearray(GOLDEN_V6_VLAN)
    view = memoryview(frame)
    pkt = parse_frame(view)
    assert pkt.buf is view
    assert pkt.payload.obj is frame


def test_packet_has_slots_only():
    pkt = parse(GOLDEN_V4_SYN)
    assert not hasattr(pkt, "__dict__")
    with pytest.raises(AttributeError):
        pkt.no_such_field = 1
    with pytest.raises(AttributeError):
        pkt.no_such_field
    assert "IPv4" in repr(pkt)


# --- scapy cross-check ---------------------------------------------------------------------

def expected_from_scapy(frame):
    """The fields parse_frame must report, read from scapy's own parse of the frame."""
    layer = Ether(frame)
    vlan_ids = []
    while isinstance(layer.payload, (Dot1Q, Dot1AD)):
        layer = layer.payload
        vlan_ids.append(layer.vlan)
    ip = layer.payload
    fields = {"vlan_ids": tuple(vlan_ids), "l3_off": 14 + 4 * len(vlan_ids)}
    if isinstance(ip, IP):
        fields.update(ip_version=4, ip_proto=ip.proto, ip_len=ip.len,
                      src=socket.inet_pton(socket.AF_INET, ip.src),
                      dst=socket.inet_pton(socket.AF_INET, ip.dst),
                      l4_off=fields["l3_off"] + ip.ihl * 4)
    else:
        upper = ip.payload
        while not isinstance(upper, (TCP, UDP, Raw)) and upper.payload:
            upper = upper.payload
        fields.update(ip_version=6, ip_len=40 + ip.plen,
                      src=socket.inet_pton(socket.AF_INET6, ip.src),
                      dst=socket.inet_pton(socket.AF_INET6, ip.dst),
                      ip_proto=upper.underlayer.nh,
                      l4_off=fields["l3_off"] + len(ip) - len(upper))
    l4 = ip.getlayer(TCP) or ip.getlayer(UDP)
    fields.update(sport=l4.sport, dport=l4.dport)
    if isinstance(l4, TCP):
        fields.update(seq=l4.seq, ack=l4.ack, flags=int(l4.flags) & 0xFF, window=l4.window,
                      urgent=l4.urgptr, tcp_hdr_len=l4.dataofs * 4)
    # The bytes after scapy's L4 header up to its IP length: not l4[Raw], which is empty when
    # scapy dissects the payload by port (464, kpasswd: a Kerberos layer).
    l4_hdr = l4.dataofs * 4 if isinstance(l4, TCP) else 8
    fields["payload"] = bytes(frame[fields["l4_off"] + l4_hdr:fields["l3_off"] + fields["ip_len"]])
    options = dict(l4.options) if isinstance(l4, TCP) else {}
    fields["mss"] = options.get("MSS")
    fields["wscale"] = options.get("WScale")
    fields["sack_ok"] = "SAckOK" in options
    fields["ts_val"], fields["ts_ecr"] = options.get("Timestamp", (None, None))
    return fields


def assert_fields_match_scapy(pkt, frame):
    for field, value in expected_from_scapy(frame).items():
        actual = bytes(pkt.payload) if field == "payload" else getattr(pkt, field)
        assert actual == value, field


TS_OPTIONS = [("NOP", None), ("NOP", None), ("Timestamp", (0xDEADBEEF, 7))]
SYN_OPTIONS = [("MSS", 1440), ("SAckOK", b""), ("Timestamp", (5, 0)), ("NOP", None),
               ("WScale", 9)]
SCAPY_FRAMES = {
    "v4_syn": Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / TCP(
        sport=40000, dport=443, flags="S", seq=1, options=SYN_OPTIONS),
    "v4_ack_payload": Ether() / IP(src="1.2.3.4", dst="5.6.7.8", id=9) / TCP(
        sport=1, dport=2, flags="PA", seq=2**32 - 3, ack=99, window=0, options=TS_OPTIONS)
    / Raw(b"x" * 1001),
    "v4_ip_options": Ether() / IP(options=[IPOption_RR(routers=["1.1.1.1", "2.2.2.2"])]) / TCP(
        flags="A") / Raw(b"abc"),
    "v4_urgent": Ether() / IP() / TCP(flags="UA", urgptr=3) / Raw(b"urgent"),
    "v4_ethernet_padding": bytes(Ether() / IP() / TCP(flags="R") / Raw(b"\0")) + b"\xaa" * 5,
    "v4_udp": Ether() / IP() / UDP(sport=53, dport=5353) / Raw(b"dns"),
    "vlan_v4": Ether() / Dot1Q(vlan=4094, prio=7) / IP() / TCP(flags="FA"),
    "qinq_v4": Ether() / Dot1AD(vlan=10) / Dot1Q(vlan=20) / IP() / TCP(flags="A")
    / Raw(b"q"),
    "v6_syn": Ether() / IPv6(src="fd77::1", dst="fd77::2") / TCP(
        flags="S", options=SYN_OPTIONS),
    "v6_payload": Ether() / IPv6() / TCP(flags="PA", options=TS_OPTIONS) / Raw(b"y" * 777),
    "v6_ext_chain": Ether() / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
    / IPv6ExtHdrRouting(addresses=["fd77::9"], segleft=0) / IPv6ExtHdrDestOpt() / TCP(
        flags="A") / Raw(b"chain"),
    "v6_udp": Ether() / IPv6() / IPv6ExtHdrDestOpt() / UDP(sport=7, dport=9),
    "qinq_v6": Ether() / Dot1AD(vlan=1) / Dot1Q(vlan=2) / IPv6() / TCP(flags="A"),
}


@pytest.mark.parametrize("name", sorted(SCAPY_FRAMES))
def test_fields_match_scapy(name):
    frame = bytes(SCAPY_FRAMES[name])
    pkt = parse(frame)
    assert_fields_match_scapy(pkt, frame)
    assert pkt.payload_off + pkt.payload_len == pkt.l3_off + pkt.ip_len
    assert pkt.bad_options is False


# --- malformed frames ----------------------------------------------------------------------

V4_TCP = bytes(Ether() / IP() / TCP(flags="A") / Raw(b"data"))   # IP at 14, TCP at 34
V6_TCP = bytes(Ether() / IPv6() / TCP(flags="A") / Raw(b"data"))  # IP at 14, TCP at 54


def patch(frame, offset, fmt, *values):
    frame = bytearray(frame)
    struct.pack_into(fmt, frame, offset, *values)
    return bytes(frame)


def v6_with_ext(ext, next_header, tcp=bytes(TCP(flags="A"))):
    """An Ethernet/IPv6 frame whose payload is `ext` bytes then `tcp`."""
    payload = ext + tcp
    return (bytes(Ether(type=0x86DD)) + struct.pack("!IHBB", 6 << 28, len(payload),
                                                    next_header, 64)
            + V6_A + V6_B + payload)


MALFORMED = [
    ("empty", b"", TruncatedHeader, "truncated_l2"),
    ("13_bytes", V4_TCP[:13], TruncatedHeader, "truncated_l2"),
    ("vlan_cut", bytes(Ether(type=0x8100)) + b"\x00\x64", TruncatedHeader, "truncated_vlan"),
    ("second_vlan_cut", bytes(Ether() / Dot1AD(vlan=1, type=0x8100)) + b"\x00",
     TruncatedHeader, "truncated_vlan"),
    ("ipv4_cut", V4_TCP[:33], TruncatedHeader, "truncated_ipv4"),
    ("ipv4_version_6", patch(V4_TCP, 14, "!B", 0x65), InvalidHeader, "ip_version"),
    ("ipv4_ihl_4", patch(V4_TCP, 14, "!B", 0x44), InvalidHeader, "ipv4_ihl"),
    ("ipv4_ihl_0", patch(V4_TCP, 14, "!B", 0x40), InvalidHeader, "ipv4_ihl"),
    ("ipv4_total_below_header", patch(V4_TCP, 16, "!H", 19), InvalidHeader,
     "ipv4_total_length"),
    ("ipv4_ihl_beyond_total", patch(V4_TCP, 14, "!B", 0x4F), InvalidHeader,
     "ipv4_total_length"),
    ("ipv4_total_beyond_frame", patch(V4_TCP, 16, "!H", len(V4_TCP) - 13), TruncatedHeader,
     "truncated_ipv4"),
    ("tcp_cut_by_ip_length", patch(V4_TCP, 16, "!H", 39), TruncatedHeader, "truncated_tcp"),
    ("tcp_doff_4", patch(V4_TCP, 46, "!B", 0x40), InvalidHeader, "tcp_doff"),
    ("tcp_doff_0", patch(V4_TCP, 46, "!B", 0x00), InvalidHeader, "tcp_doff"),
    ("tcp_options_past_ip", patch(V4_TCP, 46, "!B", 0x70), TruncatedHeader, "truncated_tcp"),
    # The frame holds the 60 bytes of header, but 36 of them are Ethernet padding.
    ("tcp_options_into_padding", patch(V4_TCP + bytes(40), 46, "!B", 0xF0), TruncatedHeader,
     "truncated_tcp"),
    ("udp_cut", bytes(Ether() / IP(len=27) / UDP()), TruncatedHeader, "truncated_udp"),
    ("ipv6_cut", V6_TCP[:53], TruncatedHeader, "truncated_ipv6"),
    ("ipv6_version_4", patch(V6_TCP, 14, "!B", 0x40), InvalidHeader, "ip_version"),
    ("ipv6_payload_beyond_frame", patch(V6_TCP, 18, "!H", 25), TruncatedHeader,
     "truncated_ipv6"),
    ("ipv6_tcp_cut", patch(V6_TCP, 18, "!H", 19), TruncatedHeader, "truncated_tcp"),
    ("ipv6_tcp_doff_3", patch(V6_TCP, 66, "!B", 0x30), InvalidHeader, "tcp_doff"),
    ("ipv6_hbh_no_room", patch(V6_TCP, 18, "!HB", 1, 0), TruncatedHeader,
     "truncated_ipv6_ext"),
    ("ipv6_hbh_too_long", v6_with_ext(bytes([6, 3]) + bytes(6), 0), TruncatedHeader,
     "truncated_ipv6_ext"),
    ("ipv6_ah_too_long", v6_with_ext(bytes([6, 9]) + bytes(10), 51), TruncatedHeader,
     "truncated_ipv6_ext"),
    ("ipv6_fragment_cut", patch(V6_TCP, 18, "!HB", 6, 44), TruncatedHeader,
     "truncated_ipv6_ext"),
    ("ipv6_hbh_second", v6_with_ext(bytes([0, 0]) + bytes(6) + bytes([6, 0]) + bytes(6), 60),
     InvalidHeader, "ipv6_hbh_position"),
]


@pytest.mark.parametrize("frame, error, counter",
                         [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_frame(frame, error, counter):
    with pytest.raises(error) as caught:
        parse(frame)
    assert caught.value.counter == counter
    assert isinstance(caught.value, PacketError) and isinstance(caught.value, ValueError)
    assert str(caught.value)


def test_malformed_cases_cover_every_counter():
    assert {case[3] for case in MALFORMED} == set(PACKET_ERROR_COUNTERS)


@pytest.mark.parametrize("frame, message", [
    (patch(V4_TCP, 14, "!B", 0x44), "IPv4 IHL 4 < 5 at offset 14"),
    (patch(V4_TCP, 46, "!B", 0x40), "TCP data offset 4 < 5 at offset 34"),
    (V4_TCP[:5], "5-byte frame is shorter than an Ethernet header"),
])
def test_error_message_says_what_is_wrong(frame, message):
    with pytest.raises(PacketError, match=message):
        parse(frame)


def test_ethernet_padding_beyond_total_length_is_fine():
    frame = bytes(Ether() / IP() / TCP(flags="A")) + b"\xee" * 6   # 60-byte minimum frame
    pkt = parse(frame)
    assert (pkt.ip_len, pkt.payload_len, len(pkt.buf)) == (40, 0, 60)
    assert verify_tcp_checksum(pkt)


def test_a_total_length_of_zero_is_a_tso_segment_of_the_whole_frame():
    """A capture that saw a segment before TSO cut it (or a BIG TCP one) shows an IPv4 total
    length of 0: the packet is the rest of the frame, as Wireshark reads it. A frame with
    only the header left is still malformed."""
    payload = bytes(range(256)) * 300                   # 76,800 bytes: over 64 KiB
    frame = bytes(Ether() / IP(len=0) / TCP(sport=7, flags="PA") / payload)
    pkt = parse(frame)
    assert (pkt.ip_len, pkt.sport, pkt.payload_len) == (len(frame) - 14, 7, len(payload))
    assert bytes(pkt.payload) == payload
    with pytest.raises(InvalidHeader, match="IPv4 total length 0 < header length 20"):
        parse(patch(bytes(Ether() / IP(proto=6)), 16, "!H", 0))


def test_ipv4_options_move_tcp():
    frame = bytes(Ether() / IP(options=[IPOption_RR(routers=["9.9.9.9"] * 9)]) / TCP(sport=5))
    pkt = parse(frame)
    assert pkt.l4_off == 14 + 60 and pkt.sport == 5


# --- VLAN tags -----------------------------------------------------------------------------

def tagged(tags, inner=bytes(IP() / TCP(flags="A"))):
    """Ethernet with (tpid, tci) tags, outer first, then IPv4 `inner`."""
    out = bytearray(MAC_B + MAC_A)
    for tpid, tci in tags:
        out += struct.pack("!HH", tpid, tci)
    return bytes(out + struct.pack("!H", 0x0800) + inner)


@pytest.mark.parametrize("tags, vlan_ids", [
    ([(0x8100, 0xE064)], (100,)),                       # PCP bits are not part of the VID
    ([(0x88A8, 0x000A), (0x8100, 0x1014)], (10, 20)),   # 802.1ad QinQ, DEI on the inner
    ([(0x9100, 5), (0x8100, 6)], (5, 6)),               # pre-standard QinQ
    ([(0x88A8, 1), (0x9100, 2), (0x8100, 3)], (1, 2, 3)),
    ([(0x8100, 0xFFF)], (4095,)),
])
def test_vlan_stacks(tags, vlan_ids):
    pkt = parse(tagged(tags))
    assert pkt.vlan_ids == vlan_ids
    assert pkt.l3_off == 14 + 4 * len(tags)
    assert (pkt.ip_version, pkt.ip_proto, pkt.flags) == (4, 6, TH_ACK)
    assert verify_ipv4_checksum(pkt) and verify_tcp_checksum(pkt)


def test_vlan_tagged_arp():
    pkt = parse(bytes(Ether() / Dot1Q(vlan=7) / ARP()))
    assert (pkt.vlan_ids, pkt.ip_version, pkt.l3_off, pkt.payload_len) == ((7,), 0, 18, 28)


# --- IPv6 extension headers and fragments --------------------------------------------------

def test_ipv6_extension_chain():
    frame = bytes(Ether() / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(
        addresses=["fd77::3", "fd77::4"], segleft=0) / IPv6ExtHdrDestOpt() / TCP(
        sport=11, dport=12, flags="A") / Raw(b"z"))
    pkt = parse(frame)
    assert (pkt.ip_proto, pkt.l4_off, pkt.sport, pkt.dport) == (6, 54 + 8 + 40 + 8, 11, 12)
    assert pkt.payload_len == 1 and not pkt.is_fragment
    assert verify_tcp_checksum(pkt)


def ah(next_header, icv_len):
    """An AH header: its length field counts 4-octet units minus 2."""
    total = 12 + icv_len
    return struct.pack("!BBHII", next_header, total // 4 - 2, 0, 0x1234, 1) + bytes(icv_len)


def test_ipv6_ah_uses_its_own_length_rule():
    pkt = parse(v6_with_ext(ah(6, 12), 51))     # 24 bytes: (4 + 2) * 4
    assert (pkt.ip_proto, pkt.l4_off, pkt.flags) == (6, 54 + 24, TH_ACK)


def test_ipv6_ah_then_destination_options():
    pkt = parse(v6_with_ext(ah(60, 4) + bytes([6, 1]) + bytes(14), 51))
    assert (pkt.ip_proto, pkt.l4_off) == (6, 54 + 16 + 16)


@pytest.mark.parametrize("next_header", [50, 59])
def test_ipv6_esp_and_no_next_header_end_the_walk(next_header):
    pkt = parse(v6_with_ext(b"", next_header, tcp=b"opaque bytes"))
    assert (pkt.ip_proto, pkt.l4_off, pkt.sport, pkt.seq) == (next_header, 54, 0, 0)
    assert bytes(pkt.payload) == b"opaque bytes"


def test_ipv6_first_fragment():
    frame = bytes(Ether() / IPv6() / IPv6ExtHdrFragment(offset=0, m=1, id=7) / TCP(sport=99))
    pkt = parse(frame)
    assert (pkt.is_fragment, pkt.ip_proto, pkt.l4_off, pkt.sport) == (True, 6, 62, 0)
    assert pkt.payload_off == 62 and pkt.payload_len == 20


def test_ipv6_later_fragment():
    frame = bytes(Ether() / IPv6() / IPv6ExtHdrFragment(nh=6, offset=100, m=0) / Raw(b"t" * 8))
    pkt = parse(frame)
    assert (pkt.is_fragment, pkt.ip_proto, pkt.payload_len, pkt.flags) == (True, 6, 8, 0)
    assert (pkt.mss, pkt.bad_options) == (None, False)
    with pytest.raises(ValueError):
        tcp_checksum(pkt)


def test_ipv6_atomic_fragment_is_parsed_as_whole_packet():
    frame = bytes(Ether() / IPv6() / IPv6ExtHdrFragment(offset=0, m=0) / TCP(sport=99))
    pkt = parse(frame)
    assert (pkt.is_fragment, pkt.ip_proto, pkt.l4_off, pkt.sport) == (False, 6, 62, 99)


@pytest.mark.parametrize("flags, frag, is_fragment", [
    ("MF", 0, True), (0, 185, True), ("MF", 1, True), ("DF", 0, False), (0, 0, False),
])
def test_ipv4_fragments(flags, frag, is_fragment):
    frame = bytes(Ether() / IP(flags=flags, frag=frag, proto=6) / Raw(bytes(TCP(sport=3))))
    pkt = parse(frame)
    assert pkt.is_fragment is is_fragment
    assert (pkt.ip_proto, pkt.l4_off) == (6, 34)
    assert pkt.sport == (0 if is_fragment else 3)
    assert pkt.payload_off == (34 if is_fragment else 54)


def test_other_protocols_have_no_ports():
    pkt = parse(bytes(Ether() / IP() / ICMP() / Raw(b"ping")))
    assert (pkt.ip_proto, pkt.sport, pkt.dport, pkt.payload_off, pkt.payload_len) == (
        1, 0, 0, 34, 12)


# --- TCP options ---------------------------------------------------------------------------

def syn_with_options(options):
    """An Ethernet/IPv4/TCP SYN carrying raw option bytes (padded with EOL)."""
    return build_tcp_frame(MAC_B, MAC_A, V4_A, V4_B, 1, 2, 3, 4, TH_SYN, 5, options=options)


def option_fields(pkt):
    return pkt.mss, pkt.wscale, pkt.sack_ok, pkt.ts_val, pkt.ts_ecr, pkt.bad_options


@pytest.mark.parametrize("options, fields", [
    (b"", (None, None, False, None, None, False)),
    (b"\x02\x04\x05\xb4", (1460, None, False, None, None, False)),
    (b"\x01\x03\x03\x0e\x04\x02", (None, 14, True, None, None, False)),
    (b"\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x02", (None, None, False, 1, 2, False)),
    # length 0 or 1 and an option running past the header stop the walk: bad_options.
    (b"\x02\x04\x05\xb4\x05\x00", (1460, None, False, None, None, True)),
    (b"\x04\x01\x02\x04\x05\xb4", (None, None, False, None, None, True)),
    (b"\x02\x04\x05\xb4\x01\x08\x0a\x00", (1460, None, False, None, None, True)),
    (b"\x01\x01\x01\x02", (None, None, False, None, None, True)),   # kind with no length byte
    # Known options of the wrong size are ignored; unknown ones skipped; EOL ends the list.
    (b"\x02\x03\x05\x04\x02\x03\x04\x07\x00", (None, None, True, None, None, False)),
    (b"\xfe\x04\xab\xcd\x02\x04\x00\x40", (64, None, False, None, None, False)),
    (b"\x00\x02\x04\x05\xb4", (None, None, False, None, None, False)),
])
def test_tcp_options(options, fields):
    assert option_fields(parse(syn_with_options(options))) == fields


def test_options_of_a_non_syn_are_parsed_on_first_access():
    frame = bytes(Ether() / IP() / TCP(flags="A", options=TS_OPTIONS))
    pkt = parse(frame)
    # not parsed by parse_frame: _bad_options unset (None in the compiled Packet)
    assert getattr(pkt, "_bad_options", None) is None
    assert (pkt.ts_val, pkt.ts_ecr, pkt.mss) == (0xDEADBEEF, 7, None)


def test_parse_options_explicitly_on_a_non_syn():
    pkt = parse(bytes(Ether() / IP() / TCP(flags="A", options=[("MSS", 536)])))
    pkt.parse_options()
    assert object.__getattribute__(pkt, "_mss") == 536


def test_syn_options_are_parsed_by_parse_frame():
    pkt = parse(bytes(Ether() / IP() / TCP(flags="SA", options=[("WScale", 2)])))
    assert object.__getattribute__(pkt, "_wscale") == 2


# --- checksums -----------------------------------------------------------------------------

def naive_ones_complement_sum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


@given(st.binary(max_size=1600))
def test_ones_complement_sum_matches_naive_fold(data):
    assert ones_complement_sum(data) == naive_ones_complement_sum(data)


@given(st.binary(max_size=64).filter(lambda b: len(b) % 2 == 0), st.binary(max_size=64))
def test_ones_complement_sum_continues_from_initial(first, second):
    assert (ones_complement_sum(second, ones_complement_sum(first))
            == naive_ones_complement_sum(first + second))


def test_ones_complement_sum_edge_values():
    assert ones_complement_sum(b"") == 0
    assert ones_complement_sum(b"\0\0") == 0
    assert ones_complement_sum(b"\xff\xff") == 0xFFFF
    assert ones_complement_sum(b"\xff\xfe\x00\x01") == 0xFFFF   # nonzero data never sums to 0
    assert ones_complement_sum(b"\x01") == 0x0100


def scapy_checksums(frame):
    """(IPv4 header checksum or None, TCP checksum) as scapy computes them from scratch."""
    packet = Ether(frame)
    if IP in packet:
        del packet[IP].chksum
    del packet[TCP].chksum
    rebuilt = Ether(bytes(packet))
    return (rebuilt[IP].chksum if IP in rebuilt else None), rebuilt[TCP].chksum


def insert_ah(frame):
    """Put an AH header between the IPv6 header at offset 14 and what follows it.

    Scapy does not chain AH to later headers in IPv6, so frames with AH are made from frames
    without it; the TCP checksum is unchanged (the pseudo-header excludes extension headers).
    """
    frame = bytearray(frame[:54] + ah(frame[20], 4) + frame[54:])
    struct.pack_into("!HB", frame, 18, len(frame) - 54, 51)
    return bytes(frame)


# name: (frame, frame with the same checksums that scapy parses fully)
CHECKSUM_CASES = {name: (bytes(frame), bytes(frame)) for name, frame in {
    "v4_empty": Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(flags="S"),
    "v4_odd": Ether() / IP(src="192.0.2.1", dst="198.51.100.7", ttl=3) / TCP(flags="PA")
    / Raw(b"odd!!"),
    "v4_1460": Ether() / IP(src="10.1.2.3", dst="10.3.2.1") / TCP(
        flags="A", options=TS_OPTIONS) / Raw(bytes(range(256)) * 5 + b"z" * 180),
    "v4_ip_options": Ether() / IP(options=[IPOption_RR()]) / TCP() / Raw(b"a"),
    "vlan_v4": Ether() / Dot1Q(vlan=3) / IP() / TCP(sport=65535, dport=65535, seq=2**32 - 1),
    "v6_empty": Ether() / IPv6(src="fd77::1", dst="fd77::2") / TCP(flags="S"),
    "v6_odd": Ether() / IPv6(src="2001:db8::1", dst="2001:db8:ffff::ffff") / TCP(flags="A")
    / Raw(b"y" * 1441),
    "v6_ext": Ether() / IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP()
    / Raw(b"ext"),
    "v6_routing_type0": Ether() / IPv6(dst="fd77::10") / IPv6ExtHdrRouting(
        addresses=["fd77::11", "fd77::12"], segleft=2) / TCP() / Raw(b"r0"),
    "v6_segment_routing": Ether() / IPv6(dst="fd77::20") / IPv6ExtHdrSegmentRouting(
        addresses=["fd77::99", "fd77::21"], segleft=1) / TCP() / Raw(b"srh"),
}.items()}
ROUTED_V6 = bytes(Ether() / IPv6(dst="fd77::30") / IPv6ExtHdrRouting(
    addresses=["fd77::31"], segleft=1) / TCP(sport=8) / Raw(b"ah"))
CHECKSUM_CASES["v6_ah_then_routing"] = (insert_ah(ROUTED_V6), ROUTED_V6)


@pytest.mark.parametrize("name", sorted(CHECKSUM_CASES))
def test_checksums_match_scapy(name):
    frame, scapy_frame = CHECKSUM_CASES[name]
    pkt = parse(frame)
    ip_checksum, tcp_sum = scapy_checksums(scapy_frame)
    assert tcp_checksum(pkt) == tcp_sum
    assert verify_tcp_checksum(pkt)
    if ip_checksum is not None:
        assert ipv4_header_checksum(frame[pkt.l3_off:pkt.l4_off]) == ip_checksum
        assert verify_ipv4_checksum(pkt)


@pytest.mark.parametrize("name", sorted(CHECKSUM_CASES))
def test_fix_checksums_in_place(name):
    frame = bytearray(CHECKSUM_CASES[name][0])
    good = bytes(frame)
    pkt = parse_frame(memoryview(frame))
    struct.pack_into("!H", frame, pkt.l4_off + 16, 0xBEEF)
    assert not verify_tcp_checksum(pkt)
    fix_tcp_checksum(pkt)
    if pkt.ip_version == 4:
        struct.pack_into("!H", frame, pkt.l3_off + 10, 0)
        assert not verify_ipv4_checksum(pkt)
        fix_ipv4_checksum(pkt)
        assert verify_ipv4_checksum(pkt)
    assert bytes(frame) == good


def test_tcp_checksum_ignores_ethernet_padding():
    frame = bytes(Ether() / IP() / TCP(flags="A") / Raw(b"abc")) + b"\x55" * 3
    pkt = parse(frame)
    assert verify_tcp_checksum(pkt)
    assert tcp_checksum(pkt) == scapy_checksums(frame)[1]


def test_checksum_helpers_refuse_wrong_protocols():
    udp = parse(bytes(Ether() / IP() / UDP()))
    v6 = parse(V6_TCP)
    with pytest.raises(ValueError):
        tcp_checksum(udp)
    with pytest.raises(ValueError):
        verify_ipv4_checksum(v6)
    with pytest.raises(ValueError):
        checksum_update(0, b"ab", b"abc")


@st.composite
def frame_and_edit(draw):
    """A valid TCP frame and a replacement of bytes inside its TCP segment (not the checksum)."""
    v6 = draw(st.booleans())
    payload = draw(st.binary(max_size=200))
    frame = build_tcp_frame(MAC_B, MAC_A, V6_A if v6 else V4_A, V6_B if v6 else V4_B,
                            draw(st.integers(0, 65535)), 80, draw(st.integers(0, 2**32 - 1)),
                            0, TH_ACK, 1000, payload)
    l4_off = 54 if v6 else 34
    start = draw(st.integers(l4_off, len(frame) - 1))
    length = draw(st.integers(1, len(frame) - start))
    checksum_field = range(l4_off + 16, l4_off + 18)
    assume(start + length <= checksum_field.start or start >= checksum_field.stop)
    new = draw(st.binary(min_size=length, max_size=length))
    return frame, start, new


@given(frame_and_edit())
def test_incremental_update_equals_full_recompute(case):
    frame, start, new = case
    pkt = parse_frame(memoryview(frame))
    old = bytes(frame[start:start + len(new)])
    updated = checksum_update(tcp_checksum(pkt), old, new, start)
    frame[start:start + len(new)] = new
    assert updated == tcp_checksum(pkt)


@given(st.integers(0, 255), st.binary(min_size=4, max_size=4))
def test_incremental_update_of_ipv4_fields(ttl, new_dst):
    """TTL (even offset, one byte) and the destination (also in the TCP pseudo-header)."""
    frame = build_tcp_frame(MAC_B, MAC_A, V4_A, V4_B, 1, 2, 3, 4, TH_ACK, 5, b"x")
    pkt = parse_frame(memoryview(frame))
    ip_sum, tcp_sum = ipv4_header_checksum(frame[14:34]), tcp_checksum(pkt)
    ip_sum = checksum_update(ip_sum, frame[22:23], bytes([ttl]), 22)
    frame[22] = ttl
    ip_sum = checksum_update(ip_sum, frame[30:34], new_dst, 30)
    tcp_sum = checksum_update(tcp_sum, frame[30:34], new_dst, 30)
    frame[30:34] = new_dst
    pkt = parse_frame(memoryview(frame))
    assert ip_sum == ipv4_header_checksum(frame[14:34])
    assert tcp_sum == tcp_checksum(pkt)


@pytest.mark.parametrize("start, new", [(35, b"\x7f"), (35, b"\x01\x02\x03"), (47, b"\xff")])
def test_incremental_update_at_odd_offsets(start, new):
    frame = build_tcp_frame(MAC_B, MAC_A, V4_A, V4_B, 1, 2, 3, 4, TH_ACK, 5, b"payload")
    pkt = parse_frame(memoryview(frame))
    updated = checksum_update(tcp_checksum(pkt), bytes(frame[start:start + len(new)]), new,
                              start)
    frame[start:start + len(new)] = new
    assert updated == tcp_checksum(pkt)


# --- builder -------------------------------------------------------------------------------

@st.composite
def build_arguments(draw):
    v6 = draw(st.booleans())
    address = st.binary(min_size=16 if v6 else 4, max_size=16 if v6 else 4)
    options = draw(st.sampled_from([b"", b"\x02\x04\x05\xb4", b"\x01\x01\x08\x0a" + bytes(8),
                                    b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + bytes(8)
                                    + b"\x01\x03\x03\x07"]))
    return dict(
        eth_dst=draw(st.binary(min_size=6, max_size=6)),
        eth_src=draw(st.binary(min_size=6, max_size=6)),
        src=draw(address), dst=draw(address),
        sport=draw(st.integers(0, 65535)), dport=draw(st.integers(0, 65535)),
        seq=draw(st.integers(0, 2**32 - 1)), ack=draw(st.integers(0, 2**32 - 1)),
        flags=draw(st.integers(0, 255)), window=draw(st.integers(0, 65535)),
        payload=draw(st.binary(max_size=1500)),
        vlan_ids=tuple(draw(st.lists(st.integers(0, 4095), max_size=3))),
        ttl=draw(st.integers(0, 255)), urgent=draw(st.integers(0, 65535)), options=options)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(build_arguments())
def test_build_tcp_frame_round_trip(args):
    frame = build_tcp_frame(**args)
    pkt = parse_frame(memoryview(frame))
    assert bytes(frame[:6]) == args["eth_dst"] and bytes(frame[6:12]) == args["eth_src"]
    for field in ("src", "dst", "sport", "dport", "seq", "ack", "flags", "window", "urgent",
                  "vlan_ids"):
        assert getattr(pkt, field) == args[field], field
    assert bytes(pkt.payload) == args["payload"]
    assert pkt.ip_version == (4 if len(args["src"]) == 4 else 6)
    assert pkt.tcp_hdr_len == 20 + len(args["options"]) and not pkt.is_fragment
    assert verify_tcp_checksum(pkt)
    if pkt.ip_version == 4:
        assert verify_ipv4_checksum(pkt)

    scapy_view = Ether(bytes(frame))
    ip = scapy_view[IP] if pkt.ip_version == 4 else scapy_view[IPv6]
    if pkt.ip_version == 4:
        assert (ip.flags.DF, ip.id, ip.ttl, ip.len) == (True, 0, args["ttl"], pkt.ip_len)
    else:
        assert (ip.hlim, ip.plen) == (args["ttl"], pkt.ip_len - 40)
    ip_checksum, tcp_sum = scapy_checksums(bytes(frame))
    assert scapy_view[TCP].chksum == tcp_sum
    if ip_checksum is not None:
        assert ip.chksum == ip_checksum
    assert_fields_match_scapy(pkt, bytes(frame))


def test_build_tcp_frame_tags_and_option_padding():
    frame = build_tcp_frame(MAC_B, MAC_A, V4_A, V4_B, 1, 2, 3, 4, TH_SYN | TH_FIN, 5,
                            vlan_ids=(10, 20), options=b"\x03\x03\x07")
    assert frame[12:14] == b"\x88\xa8" and frame[16:18] == b"\x81\x00"
    pkt = parse_frame(memoryview(frame))
    assert (pkt.vlan_ids, pkt.tcp_hdr_len, pkt.wscale, pkt.bad_options) == ((10, 20), 24, 7,
                                                                            False)


@pytest.mark.parametrize("change", [
    dict(dst=V6_B), dict(src=b"\x01\x02"), dict(options=bytes(41)), dict(vlan_ids=(4096,)),
    dict(sport=65536), dict(seq=-1), dict(flags=256), dict(ttl=300), dict(eth_src=b"\x00"),
    dict(payload=bytes(65536)),
])
def test_build_tcp_frame_refuses_values_that_do_not_fit(change):
    args = dict(eth_dst=MAC_B, eth_src=MAC_A, src=V4_A, dst=V4_B, sport=1, dport=2, seq=3,
                ack=4, flags=TH_ACK, window=5)
    args.update(change)
    with pytest.raises(ValueError):
        build_tcp_frame(**args)


# --- robustness ----------------------------------------------------------------------------

def check_parse_is_safe(frame):
    """parse_frame raises only PacketError; what it returns is self-consistent and usable."""
    try:
        pkt = parse_frame(memoryview(frame))
    except PacketError as error:
        assert error.counter in PACKET_ERROR_COUNTERS
        return
    assert pkt.payload_off + pkt.payload_len <= len(frame)
    assert pkt.l3_off <= pkt.payload_off
    option_fields(pkt)
    if pkt.ip_version:
        assert pkt.l3_off + pkt.ip_len <= len(frame)
        assert pkt.l3_off < pkt.l4_off <= pkt.payload_off
    if pkt.ip_proto == 6 and not pkt.is_fragment and pkt.ip_version:
        verify_tcp_checksum(pkt)
        assert 0 <= tcp_checksum(pkt) <= 0xFFFF


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_packet_errors(data):
    check_parse_is_safe(bytearray(data))


ETHERTYPE_PREFIXES = [b"\x08\x00", b"\x86\xdd", b"\x81\x00", b"\x88\xa8", b"\x91\x00",
                      b"\x08\x06"]


@settings(max_examples=500)
@given(st.sampled_from(ETHERTYPE_PREFIXES), st.binary(max_size=160))
def test_arbitrary_bytes_after_an_ip_ethertype(ethertype, rest):
    check_parse_is_safe(bytearray(MAC_B + MAC_A + ethertype + rest))


FUZZ_SEEDS = [GOLDEN_V4_SYN, GOLDEN_V6_VLAN, bytes(SCAPY_FRAMES["v6_ext_chain"]),
              v6_with_ext(ah(6, 12), 51), bytes(SCAPY_FRAMES["qinq_v4"]),
              CHECKSUM_CASES["v6_ah_then_routing"][0], CHECKSUM_CASES["v6_segment_routing"][0]]


@settings(max_examples=500)
@given(st.sampled_from(FUZZ_SEEDS),
       st.lists(st.tuples(st.integers(0, 127), st.integers(0, 255)), max_size=4),
       st.integers(0, 140))
def test_mutated_valid_frames_raise_only_packet_errors(seed, mutations, cut):
    frame = bytearray(seed)
    for position, value in mutations:
        if position < len(frame):
            frame[position] = value
    check_parse_is_safe(frame[:len(frame) - cut] if cut < len(frame) else frame)

