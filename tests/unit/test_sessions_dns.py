"""mosxdp.sessions.dns: DNS over UDP and TCP in a real capture compared with tshark (query,
type, class, rcode, flags, answers and TTLs), Zeek's spellings and pairing rules, malformed
and fuzzed messages."""
from __future__ import annotations

import struct

import dns.flags
import dns.message
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosxdp.sessions import ORIG, RESP, DnsParser, DnsTransaction, Weird
from sessionkit import DNS_PCAP, feed_all, first, needs_tshark, pdml, tcp_chunks, \
    udp_datagrams

PORT = 53
_TYPES = {"1": "A", "28": "AAAA", "5": "CNAME", "15": "MX", "16": "TXT", "6": "SOA"}


def parse_capture():
    """{trans_id: [DnsTransaction, ...]} of every UDP flow and TCP connection, and weirds."""
    txns, weirds = {}, []
    flows: dict[tuple, DnsParser] = {}
    records = []
    for key, direction, payload, ts in udp_datagrams(DNS_PCAP, PORT):
        parser = flows.setdefault(key, DnsParser("udp"))
        records += parser.feed(direction, payload, ts)
    for parser in flows.values():
        records += parser.close()
    for chunks in tcp_chunks(DNS_PCAP, PORT).values():
        records += feed_all(DnsParser("tcp"), chunks)
    for r in records:
        if isinstance(r, Weird):
            weirds.append(r)
        else:
            txns.setdefault(r.trans_id, []).append(r)
    return txns, weirds


@pytest.fixture(scope="module")
def parsed():
    return parse_capture()


def tshark_messages():
    """[(is response, fields of interest)] for every DNS message tshark sees, in order."""
    out = []
    for fields in pdml(DNS_PCAP, "dns"):
        # one TCP segment may carry several messages: split at each transaction id
        msgs, cur = [], None
        for f in fields:
            name = f.get("name")
            if name == "dns.id":
                cur = {"id": int(f.get("show"), 0), "rrs": []}
                msgs.append(cur)
            elif cur is None:
                continue
            elif name in ("dns.flags.response", "dns.flags.rcode", "dns.flags.authoritative",
                          "dns.flags.truncated", "dns.flags.recdesired",
                          "dns.flags.recavail", "dns.count.answers", "dns.qry.name",
                          "dns.qry.type", "dns.qry.class"):
                cur.setdefault(name, f.get("show"))
            elif name == "dns.resp.name":
                cur["rrs"].append({})
            elif cur["rrs"] and name in ("dns.resp.type", "dns.resp.ttl", "dns.a", "dns.aaaa",
                                         "dns.cname", "dns.mx.mail_exchange", "dns.soa.mname"):
                cur["rrs"][-1][name] = f.get("show")
            elif cur["rrs"] and name == "dns.txt":
                cur["rrs"][-1].setdefault("txt", []).append(f.get("show"))
        out += msgs
    return out


def answer_text(rr: dict) -> str:
    kind = _TYPES[rr["dns.resp.type"]]
    if kind == "TXT":
        return " ".join(f"TXT {len(s)} {s}" for s in rr["txt"])
    return {"A": rr.get("dns.a"), "AAAA": rr.get("dns.aaaa"), "CNAME": rr.get("dns.cname"),
            "MX": rr.get("dns.mx.mail_exchange")}[kind]


@needs_tshark
def test_every_transaction_matches_tshark(parsed):
    txns, weirds = parsed
    assert weirds == []
    seen = {}
    messages = tshark_messages()
    for m in messages:
        # each id is asked once per flow; 0x3001 twice (UDP, then TCP): pair them in order
        n = seen.get((m["id"], m["dns.flags.response"]), 0)
        seen[(m["id"], m["dns.flags.response"])] = n + 1
        txn = txns[m["id"]][n]
        if m["dns.flags.response"] == "0":
            assert txn.query == m["dns.qry.name"].lower()
            assert (txn.qtype, txn.qclass) == (int(m["dns.qry.type"]), int(m["dns.qry.class"], 0))
            assert (txn.RD, txn.TC) == (m["dns.flags.recdesired"] == "1",
                                        m["dns.flags.truncated"] == "1")
        else:
            answers = m["rrs"][:int(m["dns.count.answers"])]
            assert txn.rcode == int(m["dns.flags.rcode"])
            assert txn.answers == [answer_text(rr) for rr in answers]
            assert txn.TTLs == [float(rr["dns.resp.ttl"]) for rr in answers]
            if answers:  # Zeek takes AA and RA from a response with answers
                assert (txn.AA, txn.RA) == (m["dns.flags.authoritative"] == "1",
                                            m["dns.flags.recavail"] == "1")
    # 8 + 1 queries over UDP, the big one over UDP and TCP, 3 on one TCP connection
    assert sum(len(v) for v in txns.values()) == 14 and len(messages) == 28


def test_zeek_spellings_and_pairing(parsed):
    txns, _ = parsed
    one = {tid: v[0] for tid, v in txns.items()}
    assert all(t.saw_query and t.saw_reply for v in txns.values() for t in v)
    assert [(one[i].qtype_name, one[i].rcode_name, one[i].rejected) for i in
            (0x1000, 0x1001, 0x1002, 0x1005, 0x1006, 0x4003)] == [
        ("A", "NOERROR", False), ("AAAA", "NOERROR", False), ("MX", "NOERROR", False),
        ("A", "NXDOMAIN", False), ("A", "REFUSED", True), ("AAAA", "NXDOMAIN", False)]
    assert one[0x1000].qclass_name == "C_INTERNET" and one[0x1000].proto == "udp"
    assert one[0x1007].query == "mixed.a.test"          # lowercased, as Zeek logs it
    assert one[0x1004].answers == ["web.test", "edge.test", "10.77.0.20"]
    assert one[0x1002].answers == ["mx1.test", "mx2.test"]
    assert one[0x1001].answers == ["fd77::10"] and one[0x1001].TTLs == [120.0]
    assert one[0x1000].rtt is not None and 0 < one[0x1000].rtt < 1
    udp_big, tcp_big = txns[0x3001]
    assert (udp_big.proto, udp_big.answers, tcp_big.proto, len(tcp_big.answers)) == \
        ("udp", [], "tcp", 12)
    assert [t.proto for t in (one[0x4001], one[0x4002], one[0x4003])] == ["tcp"] * 3


# ----------------------------------------------------------------- crafted messages
def query(name="q.test", rtype="A", qid=1):
    return dns.message.make_query(name, rtype, id=qid)


def response(q, *rrsets, rcode=0, flags=0):
    r = dns.message.make_response(q)
    for rrset in rrsets:
        r.answer.append(rrset)
    r.set_rcode(rcode)
    r.flags |= flags
    return r


def test_queries_and_responses_pair_by_id_first_come_first_served():
    p = DnsParser()
    q1, q2, q3 = query(qid=5), query("b.test", qid=5), query("c.test", qid=6)
    assert p.feed(ORIG, q1.to_wire(), 1.0) + p.feed(ORIG, q2.to_wire(), 1.1) == []
    out = p.feed(RESP, response(q3).to_wire(), 1.2)   # an answer nobody asked for (yet)
    out += p.feed(RESP, response(q1).to_wire(), 1.3)
    assert [t.query for t in out] == ["q.test"]
    rest = p.close()
    assert [(t.query, t.saw_query, t.saw_reply) for t in rest] == [
        ("b.test", True, False), (None, False, True)]


def test_txt_and_unknown_types_are_spelled_like_zeek():
    q = query("t.test", "TXT")
    r = response(q, dns.rrset.from_text("t.test.", 5, "IN", "TXT", '"ab" "c d"'),
                 dns.rrset.from_text("t.test.", 5, "IN", "TYPE999", r"\# 2 abcd"))
    p = DnsParser()
    p.feed(ORIG, q.to_wire())
    (t,) = p.feed(RESP, r.to_wire())
    assert t.answers == ["TXT 2 ab TXT 3 c d", "<unknown type=999>"]


def test_flags_follow_zeek():
    q = query()
    q.flags |= dns.flags.TC
    r = response(q, dns.rrset.from_text("q.test.", 1, "IN", "A", "1.2.3.4"),
                 flags=dns.flags.AA | dns.flags.RA)
    p = DnsParser()
    p.feed(ORIG, q.to_wire())
    (t,) = p.feed(RESP, r.to_wire())
    assert (t.AA, t.TC, t.RD, t.RA) == (True, True, True, True)
    # no answers: AA and RA are not taken from the response
    p.feed(ORIG, query(qid=2).to_wire())
    (t,) = p.feed(RESP, response(query(qid=2), rcode=3, flags=dns.flags.AA).to_wire())
    assert (t.AA, t.rcode_name, t.rejected) == (False, "NXDOMAIN", True)


def test_other_opcodes_are_not_logged():
    q = query()
    q.set_opcode(dns.opcode.NOTIFY)
    p = DnsParser()
    assert p.feed(ORIG, q.to_wire()) == [] and p.close() == []


def test_tcp_messages_split_anywhere_and_several_per_segment():
    wires = [query(qid=i).to_wire() for i in range(3)]
    stream = b"".join(struct.pack("!H", len(w)) + w for w in wires)
    answers = b"".join(struct.pack("!H", len(w)) + w for w in
                       (response(dns.message.from_wire(x)).to_wire() for x in wires))
    for cut in range(len(stream)):
        p = DnsParser("tcp")
        out = p.feed(ORIG, stream[:cut]) + p.feed(ORIG, stream[cut:])
        out += p.feed(RESP, answers[:cut]) + p.feed(RESP, answers[cut:])
        assert [t.trans_id for t in out] == [0, 1, 2]


# ----------------------------------------------------------------- malformed
def test_short_messages_are_named():
    (w,) = DnsParser().feed(ORIG, b"\x00\x01\x00")
    assert w.name == "DNS_truncated_len_lt_hdr_len"


def test_a_forward_compression_pointer_is_named_and_the_query_kept():
    head = struct.pack("!6H", 9, 0x0100, 1, 0, 0, 0)
    wire = head + b"\xc0\x20" + b"\x00\x01\x00\x01"     # points past itself
    p = DnsParser()
    out = p.feed(ORIG, wire)
    assert [w.name for w in out] == ["DNS_label_forward_compress_offset"]
    (t,) = p.close()
    assert t.trans_id == 9 and t.query is None and t.saw_query


def test_a_truncated_answer_keeps_what_parsed():
    q = query()
    wire = response(q, dns.rrset.from_text("q.test.", 7, "IN", "A", "1.2.3.4"),
                    dns.rrset.from_text("q.test.", 7, "IN", "A", "5.6.7.8")).to_wire()
    p = DnsParser()
    p.feed(ORIG, q.to_wire())
    out = p.feed(RESP, wire[:-2])
    weirds = [r for r in out if isinstance(r, Weird)]
    (t,) = [r for r in out if isinstance(r, DnsTransaction)]
    assert weirds and t.rcode == 0 and t.answers in (["1.2.3.4"], [])


def test_an_incomplete_tcp_message_is_named_at_close():
    p = DnsParser("tcp")
    w = query().to_wire()
    assert p.feed(ORIG, struct.pack("!H", len(w)) + w[:5]) == []
    assert [r.name for r in p.close() if isinstance(r, Weird)] == ["DNS_truncated_tcp_message"]


def test_a_bad_transport_is_a_clear_error():
    with pytest.raises(ValueError, match="'udp' or 'tcp'"):
        DnsParser("sctp")


# ----------------------------------------------------------------- fuzz
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([ORIG, RESP]), st.binary(max_size=120)), max_size=8),
       st.sampled_from(["udp", "tcp"]))
def test_random_bytes_never_raise(chunks, transport):
    out = feed_all(DnsParser(transport), chunks)
    assert all(isinstance(r, (DnsTransaction, Weird)) for r in out)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_real_messages_never_raise(data):
    datagrams = [(d, payload) for _k, d, payload, _ts in udp_datagrams(DNS_PCAP, PORT)]
    d, wire = datagrams[data.draw(st.integers(0, len(datagrams) - 1))]
    wire = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 6))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    wire = wire[:data.draw(st.integers(0, len(wire)))]
    out = DnsParser().feed(d, bytes(wire))
    assert all(isinstance(r, (DnsTransaction, Weird)) for r in out)
