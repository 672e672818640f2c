"""connlog's UDP and ICMP lines on a capture of real traffic (tests/data/datagrams.pcap:
ping, DNS over UDP, UDP echo, ICMP port unreachable, IPv6 ND/MLD) against tshark.

UDP: every `tshark -q -z conv,udp` conversation is one connlog line and no line is
missing: frames per direction equal orig_pkts/resp_pkts, and the conversation's bytes
(frame bytes: 14 per frame over the IP bytes, no VLAN tags here) equal orig_ip_bytes and
resp_ip_bytes plus 14 per packet; orig_bytes/resp_bytes equal the sums of tshark's
`udp.length` less 8 per datagram.

ICMP: tshark has no ICMP conversation table; its per-frame fields (`-T fields`: outer
addresses, icmp.type/icmpv6.type, codes, IP lengths) are grouped into flows by Zeek's
rule, written here from Zeek's documentation (requests paired with their replies through
their counterpart types, every other type a one-way flow keyed by its code): packets,
IP bytes and ICMP bytes beyond the 8-byte header per direction equal the lines'.
"""
from collections import defaultdict

from integ_helpers import _CONV_LINE, DATA, _run, connlog, split_endpoint

PCAP = DATA / "datagrams.pcap"
ETH = 14
# Zeek's request/reply pairs (ICMP and ICMPv6), both ways.
PAIRS = {4: {8: 0, 13: 14, 15: 16, 10: 9, 17: 18}, 6: {128: 129, 133: 134, 135: 136, 130: 131}}
for table in PAIRS.values():
    table.update({b: a for a, b in list(table.items())})


def fields(display_filter, *names):
    out = _run(["tshark", "-r", PCAP, "-Y", display_filter, "-T", "fields",
                *(x for name in names for x in ("-e", name))]).stdout.decode()
    # An ICMP error quotes an IP header: the first occurrence of a field is the outer one.
    return [[value.split(",")[0] for value in line.split("\t")] for line in out.splitlines()]


def lines(proto):
    return [line for line in connlog(PCAP).result() if line["proto"] == proto]


def test_udp_lines_equal_tshark_conv_udp():
    out = _run(["tshark", "-r", PCAP, "-q", "-z", "conv,udp"]).stdout.decode()
    conv = {}
    for row in out.splitlines():
        match = _CONV_LINE.match(row)
        if match:
            g = match.groups()
            a, b = split_endpoint(g[0]), split_endpoint(g[1])
            conv[frozenset((a, b))] = {"to": {a: (int(g[2]), g[3], g[4]),
                                              b: (int(g[5]), g[6], g[7])}}
    payload = defaultdict(int)
    for src4, src6, sport, dst4, dst6, dport, length in fields(
            "udp && !icmp && !icmpv6", "ip.src", "ipv6.src", "udp.srcport", "ip.dst",
            "ipv6.dst", "udp.dstport", "udp.length"):
        payload[(src4 or src6, int(sport), dst4 or dst6, int(dport))] += int(length) - 8
    ours = lines("udp")
    assert len(conv) == len(ours) == 12
    for line in ours:
        orig = (line["id.orig_h"], line["id.orig_p"])
        resp = (line["id.resp_h"], line["id.resp_p"])
        row = conv[frozenset((orig, resp))]["to"]
        # What an endpoint sent is what went to the other one.
        for side, (frames, size, unit) in (("orig", row[resp]), ("resp", row[orig])):
            assert line[f"{side}_pkts"] == frames, (line, row)
            if unit == "bytes":   # tshark rounds larger counts to kB
                assert line[f"{side}_ip_bytes"] + ETH * frames == int(size), (line, row)
        assert line["orig_bytes"] == payload[(*orig, *resp)]
        assert line["resp_bytes"] == payload[(*resp, *orig)]
        assert line["conn_state"] == ("SF" if line["resp_pkts"] else "S0")
        assert line["history"] == ("Dd" if line["resp_pkts"] else "D")


def test_udp_ip_bytes_equal_tshark_ip_lengths():
    ip_bytes = defaultdict(int)
    for src4, src6, sport, dst4, dst6, dport, ip_len, plen in fields(
            "udp && !icmp && !icmpv6", "ip.src", "ipv6.src", "udp.srcport", "ip.dst",
            "ipv6.dst", "udp.dstport", "ip.len", "ipv6.plen"):
        key = (src4 or src6, int(sport), dst4 or dst6, int(dport))
        ip_bytes[key] += int(ip_len) if src4 else 40 + int(plen)
    for line in lines("udp"):
        orig = (line["id.orig_h"], line["id.orig_p"])
        resp = (line["id.resp_h"], line["id.resp_p"])
        assert (line["orig_ip_bytes"], line["resp_ip_bytes"]) == \
            (ip_bytes[(*orig, *resp)], ip_bytes[(*resp, *orig)])


def test_icmp_lines_equal_tshark_per_frame_counts():
    flows = defaultdict(lambda: [[0, 0, 0], [0, 0, 0]])   # pkts, ip bytes, bytes past header
    for (src4, src6, dst4, dst6, t4, t6, c4, c6, ip_len, ihl, plen, hbh) in fields(
            "icmp || icmpv6", "ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "icmp.type",
            "icmpv6.type", "icmp.code", "icmpv6.code", "ip.len", "ip.hdr_len", "ipv6.plen",
            "ipv6.hopopts.len_oct"):
        v = 4 if src4 else 6
        src, dst = (src4, dst4) if v == 4 else (src6, dst6)
        icmp_type, code = int(t4 or t6), int(c4 or c6)
        if v == 4:
            ip_bytes, message = int(ip_len), int(ip_len) - int(ihl)
        else:
            ip_bytes, message = 40 + int(plen), int(plen) - (int(hbh) if hbh else 0)
        other = PAIRS[v].get(icmp_type)
        if other is None:                      # one-way: keyed by the code, directed
            key, side = (v, src, icmp_type, dst, code), 0
        else:                                  # the request's direction is the key's
            forward = (v, src, icmp_type, dst, other)
            reverse = (v, dst, other, src, icmp_type)
            key, side = (reverse, 1) if reverse in flows else (forward, 0)
        for i, value in enumerate((1, ip_bytes, message - 8)):
            flows[key][side][i] += value
    ours = {(6 if ":" in l["id.orig_h"] else 4, l["id.orig_h"], l["id.orig_p"], l["id.resp_h"],
             l["id.resp_p"]): l for l in lines("icmp")}
    assert set(ours) == set(flows)
    assert len(flows) == 10 and any(k[2] == 3 for k in flows) and any(k[2] == 128 for k in flows)
    for key, (orig, resp) in flows.items():
        line = ours[key]
        assert [line["orig_pkts"], line["orig_ip_bytes"], line["orig_bytes"]] == orig, line
        assert [line["resp_pkts"], line["resp_ip_bytes"], line["resp_bytes"]] == resp, line
        assert line["conn_state"] == "OTH" and "history" not in line


def test_the_tcp_flow_of_the_capture_is_logged_as_before():
    (tcp,) = [line for line in connlog(PCAP).result() if line["proto"] == "tcp"]
    assert tcp["id.resp_p"] == 53 and tcp["conn_state"] == "SF"
