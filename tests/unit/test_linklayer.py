"""mosxdp.io.linklayer through PcapReader: captures of Linux cooked (SLL, SLL2), raw IP, IPv4,
IPv6, NULL and LOOP link layers read as the Ethernet frames the core parses."""

from __future__ import annotations

import struct

import pytest

import mosxdp.io.pcap as pcap_module
from mosxdp.core.packet import parse_frame
from mosxdp.io.pcap import PcapReader

from test_pcap import classic, epb, idb, shb, spb

MAC = bytes.fromhex("02aabbccddee")
ZERO = bytes(6)
TS = 1_700_000_000_000_000


def ipv4_tcp(payload: bytes = b"hello") -> bytes:
    """An IPv4 TCP segment 10.0.0.1:40000 -> 10.0.0.2:80 with ``payload``."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1000, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    return ip + tcp


def ipv6_tcp(payload: bytes = b"hello") -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1000, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    return struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, bytes(15) + b"\x01",
                       bytes(15) + b"\x02") + tcp


def ether(ethertype: int, l3: bytes, source: bytes = ZERO) -> bytes:
    return ZERO + source + struct.pack("!H", ethertype) + l3


def sll(protocol: int, l3: bytes, addr: bytes = MAC, pkttype: int = 0) -> bytes:
    return struct.pack("!HHH8sH", pkttype, 1, len(addr), addr.ljust(8, b"\0"), protocol) + l3


def sll2(protocol: int, l3: bytes, addr: bytes = MAC, pkttype: int = 4) -> bytes:
    return struct.pack("!HHIHBB8s", protocol, 0, 3, 1, pkttype, len(addr),
                       addr.ljust(8, b"\0")) + l3


def read(path):
    with PcapReader(path) as reader:
        return [(ts, bytes(frame)) for ts, frame in reader]


V4, V6 = ipv4_tcp(), ipv6_tcp()

CASES = {
    "sll-ipv4": (113, sll(0x0800, V4), ether(0x0800, V4, MAC)),
    "sll-ipv6-no-address": (113, sll(0x86DD, V6, addr=b""), ether(0x86DD, V6)),
    "sll-vlan": (113, sll(0x8100, b"\x00\x2a\x08\x00" + V4),
                 ether(0x8100, b"\x00\x2a\x08\x00" + V4, MAC)),
    "sll-arp": (113, sll(0x0806, bytes(28)), ether(0x0806, bytes(28), MAC)),
    "sll2-ipv4": (276, sll2(0x0800, V4), ether(0x0800, V4, MAC)),
    "sll2-ipv6": (276, sll2(0x86DD, V6), ether(0x86DD, V6, MAC)),
    "raw-ipv4": (101, V4, ether(0x0800, V4)),
    "raw-ipv6": (101, V6, ether(0x86DD, V6)),
    "raw-not-ip": (101, b"\x00" * 30, ether(0, b"\x00" * 30)),
    "raw-dlt12": (12, V4, ether(0x0800, V4)),
    "raw-dlt14": (14, V6, ether(0x86DD, V6)),
    "ipv4": (228, V4, ether(0x0800, V4)),
    "ipv6": (229, V6, ether(0x86DD, V6)),
    "null-little": (0, struct.pack("<I", 2) + V4, ether(0x0800, V4)),
    "null-big-endian-host": (0, struct.pack(">I", 2) + V4, ether(0x0800, V4)),
    "null-linux-ipv6": (0, struct.pack("<I", 10) + V6, ether(0x86DD, V6)),
    "null-bsd-ipv6": (0, struct.pack("<I", 24) + V6, ether(0x86DD, V6)),
    "null-freebsd-ipv6": (0, struct.pack(">I", 28) + V6, ether(0x86DD, V6)),
    "null-macos-ipv6": (0, struct.pack("<I", 30) + V6, ether(0x86DD, V6)),
    "null-unknown-family": (0, struct.pack("<I", 99) + V4, ether(0, V4)),
    "loop-ipv4": (108, struct.pack(">I", 2) + V4, ether(0x0800, V4)),
    "loop-ipv6": (108, struct.pack(">I", 24) + V6, ether(0x86DD, V6)),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("order", ["<", ">"])
def test_classic_captures_read_as_ethernet(tmp_path, name, order):
    linktype, record, expected = CASES[name]
    path = tmp_path / "x.pcap"
    path.write_bytes(classic(order, [(TS, record), (TS + 1, record)], linktype=linktype))
    before = path.read_bytes()
    with PcapReader(path) as reader:
        frames = [(ts, bytes(frame)) for ts, frame in reader]
        assert reader.linktype == linktype
    assert frames == [(TS, expected), (TS + 1, expected)]
    assert path.read_bytes() == before     # rewritten in the reader's buffer, not the file


@pytest.mark.parametrize("name", sorted(CASES))
def test_pcapng_enhanced_and_simple_blocks_read_as_ethernet(tmp_path, name):
    linktype, record, expected = CASES[name]
    path = tmp_path / "x.pcapng"
    path.write_bytes(shb("<") + idb("<", linktype=linktype) + epb("<", 0, TS, record)
                     + spb("<", record))
    assert read(path) == [(TS, expected), (TS, expected)]


def test_interfaces_of_several_link_types_in_one_pcapng(tmp_path):
    plain = ether(0x0800, V4, MAC)
    path = tmp_path / "mixed.pcapng"
    path.write_bytes(shb("<") + idb("<") + idb("<", linktype=276) + idb("<", linktype=101)
                     + epb("<", 0, TS, plain) + epb("<", 1, TS + 1, sll2(0x0800, V4))
                     + epb("<", 2, TS + 2, V4))
    assert read(path) == [(TS, plain), (TS + 1, ether(0x0800, V4, MAC)),
                          (TS + 2, ether(0x0800, V4))]


def test_the_frames_are_writable_and_the_core_parses_them(tmp_path):
    path = tmp_path / "sll.pcap"
    path.write_bytes(classic("<", [(TS, sll(0x8100, b"\x00\x2a\x08\x00" + V4))], linktype=113))
    with PcapReader(path) as reader:
        ((_, frame),) = list(reader)
        frame[0] = 0xFF
        pkt = parse_frame(frame)
    assert (pkt.vlan_ids, pkt.sport, pkt.dport, pkt.payload_len) == ((42,), 40000, 80, 5)


def test_a_frame_shorter_than_its_link_header_comes_as_it_came(tmp_path):
    path = tmp_path / "short.pcap"
    path.write_bytes(classic("<", [(TS, b"\x00" * 10), (TS + 1, sll(0x0800, V4))],
                             linktype=113))
    assert read(path) == [(TS, b"\x00" * 10), (TS + 1, ether(0x0800, V4, MAC))]
    raw = tmp_path / "empty.pcap"
    raw.write_bytes(classic("<", [(TS, b"")], linktype=101))
    assert read(raw) == [(TS, b"")]


def test_a_cut_frame_keeps_its_length_on_the_wire_as_ethernet(tmp_path):
    record = sll2(0x0800, V4)
    path = tmp_path / "cut.pcap"
    data = bytearray(classic("<", [(TS, record[:50])], linktype=276))
    struct.pack_into("<I", data, 24 + 12, len(record))      # orig_len: the whole record
    path.write_bytes(bytes(data))
    with PcapReader(path) as reader:
        ((ts, frame, orig_len),) = list(reader.records())
        assert bytes(frame) == ether(0x0800, V4, MAC)[:44]
        assert orig_len == len(V4) + 14
        assert reader.cut_frames == 1
    with PcapReader(path) as reader:
        for _ in reader:
            assert reader.wire_len() == len(V4) + 14


@pytest.mark.parametrize("chunk", [64, 97, 256])
def test_records_across_chunk_boundaries(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(pcap_module, "_CHUNK", chunk)
    records = [(TS + i, sll(0x0800, ipv4_tcp(bytes([i]) * (i * 7 % 90)))) for i in range(40)]
    path = tmp_path / "chunks.pcap"
    path.write_bytes(classic("<", records, linktype=113))
    assert read(path) == [(ts, ether(0x0800, rec[16:], MAC)) for ts, rec in records]
