"""Subscriptions (mosx_subscribe): the filter grammar and its errors, filters that mix packet
and session fields on the real session captures, one parse per flow for all subscriptions,
flows released (and handed to the kernel) as soon as no subscription can match them, a
failing callback that does not stop the others, and fuzzed sessions that never break the
runtime."""
from __future__ import annotations

import errno
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosxdp import (Monitor, mosx_session_counts, mosx_session_options, mosx_subscribe,
                    mtcp_create_context, mtcp_destroy, mtcp_init)
from mosxdp.engine import run_frames
from mosxdp.sessions.subfilter import SubscriptionFilterError, compile_subscription
from flowcraft import Conv, Dgrams
from sessionkit import DNS_PCAP, HTTP_PCAP, TLS_PCAP


# ----------------------------------------------------------------- the grammar
ENV = {"tcp": True, "udp": False, "ipv4": True, "ipv6": False,
       "ip.src": ipaddress.ip_address("10.0.0.1"), "ip.dst": ipaddress.ip_address("10.9.0.2"),
       "tcp.sport": 40000, "tcp.dport": 443, "udp.sport": None, "udp.dport": None}


def test_filters_evaluate_in_stages_as_fields_become_known():
    f = compile_subscription('tls and tls.sni ~ "example" and tcp.dport == 443')
    assert f.session == "tls"
    assert f.evaluate(ENV) is None                              # not yet told TLS
    told = dict(ENV, tls=True)
    assert f.evaluate(told) is None                             # SNI not seen yet
    assert f.evaluate(dict(told, **{"tls.sni": "www.example.org"})) is True
    assert f.evaluate(dict(told, **{"tls.sni": "other.org"})) is False
    assert f.evaluate(dict(told, **{"tls.sni": None})) is False  # no SNI at all
    assert f.evaluate(told, final=True) is False
    assert f.evaluate(dict(ENV, **{"tcp.dport": 80})) is False  # decided by the packet alone


@pytest.mark.parametrize("text, env, want", [
    ("tls and ip.src == 10.0.0.0/8", {}, True),
    ("tls and ip.addr == 10.9.0.2", {}, True),
    ("tls and ip.addr != 10.9.0.2", {}, False),
    ("tls and not ip.dst == 10.9.0.0/16", {}, False),
    ("tls and (tcp.port == 80 or tcp.port == 40000)", {}, True),
    ("tls and udp.dport == 53", {}, False),
    ("tls and tls.established", {"tls.established": True}, True),
    ("tls.established == false", {"tls.established": True}, False),
    ("dns and dns.qtype == AAAA", {"dns.qtype": (28, "AAAA")}, True),
    ("dns.rcode >= 3", {"dns.rcode": (3, "NXDOMAIN")}, True),
    ("dns.rcode != NXDOMAIN", {"dns.rcode": (3, "NXDOMAIN")}, False),
    ('dns.answer ~ "^10\\."', {"dns.answer": ["a.test", "10.0.0.9"]}, True),
    ("http and http.status >= 400 and http.method == GET",
     {"http.status": 404, "http.method": "GET"}, True),
    ('http.host == "a\\"b"', {"http.host": 'a"b'}, True),
])
def test_tests_of_each_kind(text, env, want):
    assert compile_subscription(text).evaluate(dict(ENV, tls=True, dns=True, http=True, **env),
                                               final=True) is want


@pytest.mark.parametrize("text, message", [
    ("", "empty filter: name a session type (tls, http, dns)"),
    ("tcp.dport == 443", "'tcp.dport == 443' names no session type (tls, http, dns)"),
    ("tls and http", "one session type per filter: 'http' at 8 after 'tls'"),
    ('tls and tls.snix ~ "a"', "unknown name (known: tls.sni, tls.version, tls.cipher, "
     "tls.curve, tls.alpn, tls.ja4, tls.established, tls.resumed): 'tls.snix' at 8"),
    ("tls and (tcp.dport == 443", "expected ')' at the end"),
    ("tls and tcp.dport == 44x3", "not a number: '44x3' at 21"),
    ('tls.sni < "a"', "a text compares with ==, != or ~, not '<': '\"a\"' at 10"),
    ('tls and tls.sni ~ "("', "bad regular expression (missing ), unterminated subpattern at "
     "position 0): '\"(\"' at 18"),
    ("tls & tcp", "unexpected '&' at 4"),
    ("tls and ip.src == 10.0.0.300", "not an address or a network: '10.0.0.300' at 18"),
    ("tls and ip.src > 10.0.0.1", "an address compares with == or != only, not '>': "
     "'10.0.0.1' at 17"),
    ("tls tcp", "expected 'and', 'or' or the end: 'tcp' at 4"),
    ("tls and", "expected a test at the end"),
    ("tls.resumed == maybe", "tls.resumed is true or false (== or !=): 'maybe' at 15"),
    ("tcp.dport ~ \"4\" and tls", "'~' needs a text field, not the int field: 'tcp.dport' at 0"),
])
def test_errors_are_one_line_naming_the_token(text, message):
    with pytest.raises(SubscriptionFilterError) as info:
        compile_subscription(text)
    assert str(info.value) == message and "\n" not in message


def test_mosx_subscribe_and_options_say_einval():
    mtcp_destroy()
    mtcp_init(None)
    try:
        mctx = mtcp_create_context(0)
        with pytest.raises(OSError) as info:
            mosx_subscribe(mctx, "tls and tls.sni = 'x'", print)
        assert info.value.errno == errno.EINVAL
        assert str(info.value.strerror) == ("subscription filter \"tls and tls.sni = 'x'\": "
                                            "unexpected '=' at 16")
        with pytest.raises(OSError) as info:
            mosx_subscribe(mctx, "tls", None)
        assert info.value.errno == errno.EINVAL
        for bad in ({"bypass": 1}, {"max_transactions": 0}, {"dns_ports": [0]},
                    {"dns_ports": "53"}):
            with pytest.raises(OSError) as info:
                mosx_session_options(mctx, **bad)
            assert info.value.errno == errno.EINVAL and repr(list(bad.values())[0]) in \
                info.value.strerror
    finally:
        mtcp_destroy()


# ----------------------------------------------------------------- on the real captures
def subscribed(pcap, *filters, **options):
    """Run ``pcap`` with one subscription per filter: ([events per filter], counts, the
    stack's callback error count)."""
    got = [[] for _ in filters]
    mtcp_destroy()
    with Monitor.offline(pcap) as mon:
        if options:
            mosx_session_options(mon.mctx, **options)
        for i, text in enumerate(filters):
            mosx_subscribe(mon.mctx, text, lambda mctx, ev, i=i: got[i].append(ev))
        counts = mosx_session_counts
        stack = mon.mctx.stack
    return got, counts(mon.mctx), stack.counters["callback_errors"]


def test_packet_and_session_fields_mix_in_one_filter():
    (examples, alpha, on_443, tls12_h2), counts, errors = subscribed(
        TLS_PCAP, 'tls and tls.sni ~ "example$" and tcp.dport == 8443',
        'tls.sni == "alpha.example"', "tls and tcp.dport == 443",
        "tls and tls.version == TLSv12 and tls.alpn == h2")
    assert errors == 0
    assert sorted(e.record.server_name for e in examples) == sorted(
        ["alpha.example", "www.beta.example", "gamma.example", "delta.example", "h2.example",
         "h2-tls12.example"])          # every connection but the one without SNI
    assert [e.record.server_name for e in alpha] == ["alpha.example"]
    assert on_443 == []
    assert [e.record.server_name for e in tls12_h2] == ["h2-tls12.example"]
    # each flow parsed once: the subscriptions that match share the very record
    assert alpha[0].record is next(e.record for e in examples
                                   if e.record.server_name == "alpha.example")
    assert counts["flows"] == 7 and counts["records"] == 6 and counts["bypassed"] == 7
    e = alpha[0]
    assert (e.kind, e.session, e.proto, e.resp_h, e.resp_p) == ("tls", "tls", "tcp",
                                                               "10.77.0.2", 8443)
    assert e.uid.startswith("C") and len(e.uid) == 18


def test_address_fields_select_tcp_and_udp_flows():
    # The flows' addresses are made for the filters only when one reads them.
    (tls, both, none, v6), counts, errors = subscribed(
        TLS_PCAP, "tls", "tls and ip.src == 10.77.0.1 and ip.dst == 10.77.0.0/24",
        "tls and ip.addr == 192.0.2.9", "tls and ipv6")
    assert errors == 0 and len(tls) == 7 and v6 == [] and none == []
    assert [e.record for e in both] == [e.record for e in tls]
    (dns, server, client), _, errors = subscribed(
        DNS_PCAP, "dns", "dns and ip.dst == 10.77.0.2 and ipv4", "dns and ip.dst == 10.77.0.1")
    assert errors == 0 and client == [] and {e.proto for e in dns} == {"tcp", "udp"}
    assert [e.record for e in server] == [e.record for e in dns]


def test_a_flow_no_subscription_can_match_is_released_at_once():
    (none,), counts, _ = subscribed(TLS_PCAP, "tls and tcp.dport == 443")
    # released at each flow's first packet: never parsed, no record
    assert none == [] and counts == {"flows": 7, "released": 7, "bypassed": 7, "records": 0,
                                     "weirds": 0}
    (none,), counts, _ = subscribed(TLS_PCAP, 'tls and tls.sni == "nowhere.example"')
    # parsed to the ClientHello, whose SNI rules each flow out
    assert none == [] and counts["released"] == 7 and counts["records"] == 0
    (none,), counts, _ = subscribed(HTTP_PCAP, "tls")
    assert none == [] and counts["released"] == 7      # HTTP, not TLS: at its first bytes


def test_http_and_dns_subscriptions():
    (missing, posts), counts, _ = subscribed(
        HTTP_PCAP, "http and http.status == 404", 'http.method == POST and http.uri ~ "^/up"')
    assert [(e.record.uri, e.record.status_code) for e in missing] == [("/missing", 404)]
    assert [(e.record.method, e.record.request_body_len) for e in posts] == [("POST", 10240)]
    assert counts["bypassed"] == 0      # HTTP flows are followed to their end
    (aaaa, over_tcp, nx), _, _ = subscribed(
        DNS_PCAP, "dns and dns.qtype == AAAA", "dns and tcp", "dns.rcode == NXDOMAIN")
    assert sorted(e.record.trans_id for e in aaaa) == [0x1001, 0x4003]
    assert {e.proto for e in over_tcp} == {"tcp"} and len(over_tcp) == 4
    assert sorted((e.record.query, e.record.qtype_name, e.proto) for e in nx) == [
        ("gone.test", "AAAA", "tcp"), ("mixed.a.test", "A", "udp"), ("nothere.test", "A", "udp")]


def test_bypass_off_parses_the_same_and_hands_nothing_over():
    (a,), counts, _ = subscribed(TLS_PCAP, "tls", bypass=False)
    (b,), _, _ = subscribed(TLS_PCAP, "tls")
    assert [e.record for e in a] == [e.record for e in b] and counts["bypassed"] == 0
    assert counts["released"] == 7


def test_a_failing_callback_does_not_stop_the_others():
    got = []
    mtcp_destroy()
    with Monitor.offline(TLS_PCAP) as mon:
        def bad(mctx, event):
            raise RuntimeError("app bug")
        mosx_subscribe(mon.mctx, "tls", bad)
        mosx_subscribe(mon.mctx, "tls", lambda mctx, event: got.append(event))
        stack = mon.mctx.stack
    assert len(got) == 7 and stack.counters["callback_errors"] == 7


# ----------------------------------------------------------------- fuzzed sessions
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from("cs"), st.binary(min_size=1, max_size=300)),
                min_size=1, max_size=6),
       st.sampled_from([b"\x16\x03\x01", b"GET / HTTP/1.1\r\n", b""]),
       st.sampled_from([443, 80, 53]), st.binary(max_size=200))
def test_fuzzed_sessions_never_break_the_runtime(pieces, prefix, port, datagram):
    conv = Conv(sport=port)
    conv.handshake()
    for i, (side, data) in enumerate(pieces):
        conv.data(side, (prefix if i == 0 and side == "c" else b"") + data)
    conv.close()
    dgrams = Dgrams(t0=conv.ts + 1000)
    dgrams.udp("c", 40001, 53, datagram)
    dgrams.udp("s", 53, 40001, datagram[::-1])
    mtcp_destroy()
    mtcp_init(None)
    try:
        mctx = mtcp_create_context(0)
        events = []
        for text in ("tls", "http", "dns"):
            mosx_subscribe(mctx, text, lambda m, e: events.append(e))
        run_frames(mctx, conv.frames + dgrams.frames)
        assert mctx.stack.counters["callback_errors"] == 0
        counts = mosx_session_counts(mctx)
        assert counts["flows"] >= 1 and counts["weirds"] == sum(e.kind == "weird"
                                                                 for e in events)
        for e in events:
            assert e.kind in ("tls", "http", "dns", "weird") and e.uid.startswith("C")
    finally:
        mtcp_destroy()
