"""Community ID v1 (mosxdp/core/communityid.py) against the reference implementation (the
`communityid` package, a test dependency only).

* Every IP packet of every capture in tests/data and tests/data/sessions (TCP, UDP, and the ICMPv6 of neighbour
  discovery and multicast listener reports the captures hold), parsed here with struct
  (not with mosxdp's parser), under several seeds.
* Every flow connlog logs for every capture: its community_id is the reference's for its
  flow tuple, and the flows it logs are all the TCP, UDP and ICMP flows of the capture.
* Hand-built UDP, SCTP, ICMP and ICMPv6 tuples (request/answer types, one-way types,
  either direction, equal addresses), IPv4 and IPv6, and a protocol without ports.
"""
import ipaddress
import json
import struct
from pathlib import Path

import communityid
import pytest

from mosxdp import cli, mosx_community_id
from mosxdp.core.communityid import community_id

DATA = Path(__file__).resolve().parents[1] / "data"
CAPTURES = sorted(DATA.glob("*.pcap")) + sorted(DATA.glob("sessions/*.pcap"))
SEEDS = (0, 1, 4242, 65535)
_EXT_HEADERS = (0, 43, 60)   # IPv6 hop-by-hop, routing, destination options


def reference(proto, saddr, daddr, sport=None, dport=None, seed=0):
    make = {6: communityid.FlowTuple.make_tcp, 17: communityid.FlowTuple.make_udp,
            132: communityid.FlowTuple.make_sctp, 1: communityid.FlowTuple.make_icmp,
            58: communityid.FlowTuple.make_icmp6}.get(proto)
    tpl = (make(saddr, daddr, sport, dport) if make else
           communityid.FlowTuple.make_ip(saddr, daddr, proto))
    value = communityid.CommunityID(seed).calc(tpl)
    assert value is not None
    return value


def ip_packets(path):
    """(proto, src, dst, sport or ICMP type, dport or ICMP code) of every IPv4/IPv6 packet
    (not a fragment) of a classic pcap, read with struct."""
    data = path.read_bytes()
    magic, = struct.unpack_from("<I", data, 0)
    assert magic == 0xA1B2C3D4
    offset = 24
    while offset < len(data):
        _sec, _usec, incl, _orig = struct.unpack_from("<IIII", data, offset)
        frame = data[offset + 16:offset + 16 + incl]
        offset += 16 + incl
        ethertype, = struct.unpack_from("!H", frame, 12)
        l3 = 14
        if ethertype == 0x0800:
            ihl = (frame[l3] & 0x0F) * 4
            if struct.unpack_from("!H", frame, l3 + 6)[0] & 0x3FFF:
                continue
            proto = frame[l3 + 9]
            src, dst = frame[l3 + 12:l3 + 16], frame[l3 + 16:l3 + 20]
            l4 = l3 + ihl
        elif ethertype == 0x86DD:
            proto = frame[l3 + 6]
            src, dst = frame[l3 + 8:l3 + 24], frame[l3 + 24:l3 + 40]
            l4 = l3 + 40
            while proto in _EXT_HEADERS:
                proto, length = frame[l4], (frame[l4 + 1] + 1) * 8
                l4 += length
        else:
            continue
        if proto in (6, 17, 132):
            sport, dport = struct.unpack_from("!HH", frame, l4)
        elif proto in (1, 58):
            sport, dport = frame[l4], frame[l4 + 1]
        else:
            sport = dport = None
        yield proto, ipaddress.ip_address(src), ipaddress.ip_address(dst), sport, dport


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
def test_every_packet_of_every_capture(path):
    seen = {}
    for proto, src, dst, sport, dport in ip_packets(path):
        seen[proto] = seen.get(proto, 0) + 1
        for seed in SEEDS:
            ours = community_id(proto, str(src), str(dst), sport, dport, seed)
            assert ours == reference(proto, str(src), str(dst), sport, dport, seed), \
                (proto, src, dst, sport, dport, seed)
            # packed addresses too, and the answer's direction gives the same for TCP
            assert community_id(proto, src.packed, dst.packed, sport, dport, seed) == ours
            if proto == 6:
                assert community_id(proto, str(dst), str(src), dport, sport, seed) == ours
    assert seen.get(6)


def test_the_captures_hold_icmpv6_too():
    """What the test above met besides TCP: neighbour solicitations and advertisements, a
    router solicitation (types with an answer type) and MLDv2 reports (one way, behind a
    hop-by-hop header)."""
    kinds = {sport for path in CAPTURES for proto, _s, _d, sport, _c in ip_packets(path)
             if proto == 58}
    assert {133, 135, 136, 143} <= kinds, kinds


@pytest.mark.parametrize("path", CAPTURES, ids=lambda p: p.stem)
@pytest.mark.parametrize("seed", (0, 9))
def test_connlog_community_id_of_every_flow(path, seed, tmp_path, capsys):
    out = tmp_path / "conn.json"
    code = cli.main(["run", "connlog", "--pcap", str(path), "--output", str(out),
                     "--community-id-seed", str(seed), "--on-callback-error", "stop"])
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records
    logged = set()
    for r in records:
        proto = {"tcp": 6, "udp": 17}.get(r["proto"]) or (58 if ":" in r["id.orig_h"] else 1)
        # an ICMP flow's id.resp_p is the answer's type (the reference maps a request type
        # to it whatever the code) or, for a one-way type, the code
        expected = reference(proto, r["id.orig_h"], r["id.resp_h"], r["id.orig_p"],
                             r["id.resp_p"], seed)
        assert r["community_id"] == expected, r
        logged.add(expected)
    in_capture = {reference(proto, str(s), str(d), sp, dp, seed)
                  for proto, s, d, sp, dp in ip_packets(path) if proto in (1, 6, 17, 58)}
    assert logged == in_capture
