"""Community ID v1 (mosxdp/core/communityid.py) against the reference implementation (the
`communityid` package, a test dependency only).

* Every IP packet of every capture in tests/data (TCP, and the ICMPv6 of neighbour
  discovery and multicast listener reports the captures hold), parsed here with struct
  (not with mosxdp's parser), under several seeds.
* Every flow connlog logs for every capture: its community_id is the reference's for its
  4-tuple, and the flows it logs are all the TCP flows of the capture.
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
CAPTURES = sorted(DATA.glob("*.pcap"))
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
        expected = reference(6, r["id.orig_h"], r["id.resp_h"], r["id.orig_p"], r["id.resp_p"],
                             seed)
        assert r["community_id"] == expected, r
        logged.add(expected)
    in_capture = {reference(6, str(s), str(d), sp, dp, seed)
                  for proto, s, d, sp, dp in ip_packets(path) if proto == 6}
    assert logged == in_capture


HAND_BUILT = [
    (17, "192.0.2.10", "198.51.100.3", 53124, 53),
    (17, "198.51.100.3", "192.0.2.10", 53, 53124),
    (17, "2001:db8::10", "2001:db8::1", 5353, 5353),
    (132, "10.0.0.1", "10.0.0.2", 36412, 36412),
    (1, "192.0.2.10", "198.51.100.3", 8, 0),       # echo request
    (1, "198.51.100.3", "192.0.2.10", 0, 0),       # its reply
    (1, "198.51.100.3", "192.0.2.10", 13, 0),      # timestamp
    (1, "192.0.2.10", "198.51.100.3", 10, 0),      # router solicitation
    (1, "198.51.100.3", "192.0.2.10", 3, 1),       # unreachable: one way, not reordered
    (1, "192.0.2.10", "198.51.100.3", 11, 0),      # time exceeded, the other order
    (1, "10.0.0.1", "10.0.0.1", 3, 3),
    (58, "fe80::1", "ff02::1:ff00:2", 135, 0),     # neighbour solicitation
    (58, "fe80::2", "fe80::1", 136, 0),            # its advertisement
    (58, "2001:db8::2", "2001:db8::1", 128, 0),    # echo request
    (58, "2001:db8::1", "2001:db8::2", 129, 0),
    (58, "fe80::1", "ff02::16", 143, 0),           # MLDv2 report: one way
    (58, "2001:db8::9", "2001:db8::1", 1, 4),      # unreachable: one way
    (58, "fe80::1", "ff02::2", 133, 0),            # router solicitation
    (58, "fe80::1", "fe80::2", 139, 0),            # node information query
    (58, "fe80::1", "fe80::2", 144, 0),            # home agent discovery
    (6, "10.0.0.1", "10.0.0.1", 443, 80),          # equal addresses: the ports decide
    (6, "10.0.0.1", "10.0.0.1", 80, 443),
    (47, "192.0.2.10", "198.51.100.3", None, None),   # GRE: no ports
    (50, "2001:db8::2", "2001:db8::1", None, None),   # ESP
]


@pytest.mark.parametrize("proto, saddr, daddr, sport, dport", HAND_BUILT)
@pytest.mark.parametrize("seed", SEEDS)
def test_hand_built_tuples(proto, saddr, daddr, sport, dport, seed):
    ours = mosx_community_id(proto, saddr, daddr, sport, dport, seed)
    assert ours == reference(proto, saddr, daddr, sport, dport, seed)


def test_request_and_answer_make_one_flow_one_way_types_do_not():
    echo = community_id(1, "192.0.2.10", "198.51.100.3", 8, 0)
    assert community_id(1, "198.51.100.3", "192.0.2.10", 0, 0) == echo
    ns = community_id(58, "fe80::1", "fe80::2", 135, 0)
    assert community_id(58, "fe80::2", "fe80::1", 136, 0) == ns
    unreachable = community_id(1, "198.51.100.3", "192.0.2.10", 3, 1)
    assert community_id(1, "192.0.2.10", "198.51.100.3", 3, 1) != unreachable
    assert community_id(6, "10.0.0.1", "10.0.0.2", 1, 2, seed=1) != \
        community_id(6, "10.0.0.1", "10.0.0.2", 1, 2, seed=0)


@pytest.mark.parametrize("args, words", [
    ((6, "10.0.0.1", "10.0.0.2", 1, 2, 65536), "seed 65536 is not between 0 and 65535"),
    ((6, "10.0.0.1", "10.0.0.2", 1, 2, -1), "seed -1"),
    ((6, "10.0.0.1", "2001:db8::1", 1, 2, 0), "an IPv4 and an IPv6 address"),
    ((6, b"\x0a\x00\x00", "10.0.0.2", 1, 2, 0), "4 or 16 bytes, not 3"),
    ((6, "10.0.0.300", "10.0.0.2", 1, 2, 0), "does not appear to be an IPv4 or IPv6 address"),
])
def test_bad_input_is_one_clear_error(args, words):
    with pytest.raises(ValueError, match=words):
        community_id(*args)


@pytest.mark.parametrize("value, words", [("65536", "0 to 65535"), ("-1", "0 to 65535"),
                                          ("seed", "'seed' is not a number")])
def test_bad_seed_option_names_the_option(value, words, capsys):
    code = cli.main(["run", "connlog", "--pcap", str(DATA / "refused.pcap"),
                     "--community-id-seed", value])
    err = capsys.readouterr().err
    assert code == 2 and "--community-id-seed" in err and words in err
    assert len(err.strip().splitlines()) == 1
