"""mosxdp.sessions.http: HTTP/1.x transactions in a real capture compared with tshark, message
framing that depends on the request (HEAD, CONNECT, 1xx, 204, 304, close-delimited) on
crafted streams cut at every place, a property test over generated pipelines, malformed and
fuzzed bytes."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosxdp.sessions import ORIG, RESP, HttpParser, HttpTransaction, Weird
from mosxdp.sessions.http import HOLD_LIMIT
from sessionkit import HTTP_PCAP, feed_all, mutated_chunks, needs_tshark, tcp_chunks, tshark_http

PORT = 8080


def transactions(chunks):
    out = feed_all(HttpParser(), chunks)
    return [r for r in out if isinstance(r, HttpTransaction)], \
        [r for r in out if isinstance(r, Weird)]


@pytest.fixture(scope="module")
def capture():
    return tcp_chunks(HTTP_PCAP, PORT)


# ----------------------------------------------------------------- the real capture vs tshark
@needs_tshark
def test_requests_and_responses_match_tshark(capture):
    requests, responses = tshark_http(HTTP_PCAP, PORT)
    assert capture.keys() == requests.keys() == responses.keys()
    pipelined = max(capture)
    for port, chunks in capture.items():
        txns, weirds = transactions(chunks)
        assert weirds == []
        got_requests = [{k: getattr(t, k) for k in requests[port][0]} for t in txns]
        assert got_requests == requests[port]
        got_responses = [{k: getattr(t, k) for k in responses[port][0]} for t in txns]
        if port == pipelined:
            # tshark 4.0 gives the pipelined HEAD's answer the body its Content-Length
            # announces (the next answers' bytes): only its first response is framed right.
            assert got_responses[0] == responses[port][0]
        else:
            assert got_responses == responses[port]


def test_what_the_capture_holds(capture):
    rows = [[(t.trans_depth, t.method, t.uri, t.status_code, t.request_body_len,
              t.response_body_len) for t in transactions(chunks)[0]]
            for chunks in capture.values()]
    assert rows == [
        [(1, "GET", "/file", 200, 0, 3072)],
        [(1, "GET", "/file", 200, 0, 3072), (2, "GET", "/chunked", 200, 0, 3017),
         (3, "GET", "/missing", 404, 0, 330)],
        [(1, "HEAD", "/file", 200, 0, 0)],
        [(1, "POST", "/upload", 201, 10240, 16)],
        [(1, "GET", "/file name?q=a/b", 200, 0, 3072)],
        [(1, "GET", "/close", 200, 0, 1120)],
        [(1, "GET", "/file", 200, 0, 3072), (2, "HEAD", "/file", 200, 0, 0),
         (3, "GET", "/chunked", 200, 0, 3017), (4, "GET", "/file", 304, 0, 0)],
    ]
    post = transactions(capture[sorted(capture)[3]])[0][0]
    assert (post.referrer, post.origin, post.status_msg) == ("http://ref.test/",
                                                             "http://origin.test", "Created")


def test_byte_by_byte_and_response_first_feeding_give_the_same_transactions(capture):
    for chunks in capture.values():
        whole = transactions(chunks)
        assert transactions([(d, bytes([b])) for d, data in chunks for b in data]) == whole
        # every response byte before any request byte: held until the requests come
        resp_first = [c for c in chunks if c[0] == RESP] + [c for c in chunks if c[0] == ORIG]
        if sum(len(d) for direction, d in chunks if direction == RESP) <= HOLD_LIMIT:
            assert transactions(resp_first) == whole


# ----------------------------------------------------------------- framing by the request
REQS = (b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
        b"HEAD /b HTTP/1.1\r\nHost: h\r\n\r\n"
        b"POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\nbody"
        b"DELETE /d HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /e HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /f HTTP/1.1\r\nHost: h\r\n\r\n")
RESPS = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\n0\r\n"
         b"Trailer: x\r\n\r\n"
         b"HTTP/1.1 200 OK\r\nContent-Length: 9999\r\n\r\n"
         b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
         b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
         b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n"
         b"HTTP/1.0 200 OK\r\n\r\nthe rest until close")
EXPECTED = [("GET", 200, None, 0, 4), ("HEAD", 200, None, 0, 0), ("POST", 201, 100, 4, 2),
            ("DELETE", 204, None, 0, 0), ("GET", 304, None, 0, 0), ("GET", 200, None, 0, 20)]


def summary(txns):
    return [(t.method, t.status_code, t.info_code, t.request_body_len, t.response_body_len)
            for t in txns]


@pytest.mark.parametrize("cut", range(0, len(RESPS) + 1, 7))
def test_pipelined_head_1xx_204_304_and_close_delimited_at_every_cut(cut):
    chunks = [(ORIG, REQS), (RESP, RESPS[:cut]), (RESP, RESPS[cut:])]
    txns, weirds = transactions(chunks)
    assert weirds == [] and summary(txns) == EXPECTED
    assert txns[5].version == "1.0" and txns[2].info_msg == "Continue"


def test_responses_interleaved_with_their_requests_byte_by_byte():
    chunks = []
    for i in range(max(len(REQS), len(RESPS))):
        chunks += [(ORIG, REQS[i:i + 1]), (RESP, RESPS[i:i + 1])]
    assert summary(transactions(chunks)[0]) == EXPECTED


def test_connect_answered_2xx_is_a_tunnel_and_ends_the_parser():
    parser = HttpParser()
    out = parser.feed(ORIG, b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n\x16\x03\x01")
    out += parser.feed(RESP, b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x03\x00")
    (txn,) = out
    assert (txn.method, txn.uri, txn.status_code, txn.response_body_len) == \
        ("CONNECT", "a.test:443", 200, 0)
    assert parser.done and parser.feed(ORIG, b"GET / HTTP/1.1\r\n\r\n") == []


def test_connect_refused_goes_on_as_http():
    txns, weirds = transactions([
        (ORIG, b"CONNECT a.test:443 HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n"),
        (RESP, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno!"
               b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")])
    assert weirds == [] and summary(txns) == [("CONNECT", 403, None, 0, 3),
                                              ("GET", 200, None, 0, 0)]


def test_switching_protocols_is_a_tunnel():
    parser = HttpParser()
    out = parser.feed(ORIG, b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                            b"\r\n\x81\x05hello")
    out += parser.feed(RESP, b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                             b"Upgrade: websocket\r\n\r\n\x81\x02hi")
    (txn,) = out
    assert (txn.status_code, txn.info_code) == (101, 101) and parser.done


def test_upgrade_refused_goes_on_as_http():
    txns, _ = transactions([
        (ORIG, b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
               b"GET /b HTTP/1.1\r\n\r\n"),
        (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
               b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nyz")])
    assert [(t.uri, t.response_body_len) for t in txns] == [("/ws", 1), ("/b", 2)]


def test_open_requests_and_a_truncated_response_are_given_at_close():
    parser = HttpParser()
    assert parser.feed(ORIG, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n") == []
    assert parser.feed(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart") == []
    first_, second = parser.close()
    assert (first_.uri, first_.status_code, first_.response_body_len) == ("/1", 200, 4)
    assert (second.uri, second.status_code) == ("/2", None)


# ----------------------------------------------------------------- malformed bytes
def test_a_reply_without_request_is_unmatched():
    txns, weirds = transactions([(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")])
    assert [w.name for w in weirds] == ["unmatched_HTTP_reply"]
    assert (txns[0].method, txns[0].status_code, txns[0].response_body_len) == (None, 200, 1)


@pytest.mark.parametrize("request_bytes", [
    b"\x16\x03\x01\x02\x00\x01\x00", b"GET / HTTP/9.9\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
])
def test_bad_requests_are_named_and_stop_that_side(request_bytes):
    parser = HttpParser()
    out = parser.feed(ORIG, request_bytes)
    assert [w.name for w in out] == ["bad_HTTP_request"] and out[0].direction == ORIG
    assert parser.feed(ORIG, b"GET / HTTP/1.1\r\n\r\n") == []


def test_a_control_byte_in_a_header_value_is_logged_not_a_bad_request():
    # An observer logs what the endpoints exchanged (Zeek does): llhttp's strict header
    # values would drop the whole request.
    ua = "caf\u00e9 \x01".encode()
    txns, weirds = transactions([(ORIG, b"GET /ua HTTP/1.1\r\nHost: h:80\r\nUser-Agent: " + ua
                                  + b"\r\n\r\n"),
                                 (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-B: \x7f\r\n\r\nok")])
    assert weirds == []
    assert [(t.method, t.uri, t.user_agent, t.status_code, t.response_body_len) for t in txns] == \
        [("GET", "/ua", "caf\u00e9 \x01", 200, 2)]


def test_a_bad_reply_keeps_the_request_for_the_log():
    txns, weirds = transactions([(ORIG, b"GET /x HTTP/1.1\r\n\r\n"),
                                 (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: zz\r\n\r\n")])
    assert [w.name for w in weirds] == ["bad_HTTP_reply"]
    assert [(t.uri, t.status_code) for t in txns] == [("/x", None)]


def test_a_bad_chunk_size_is_a_bad_reply():
    txns, weirds = transactions([(ORIG, b"GET /x HTTP/1.1\r\n\r\n"),
                                 (RESP, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                        b"zz\r\nabc\r\n0\r\n\r\n")])
    assert [w.name for w in weirds] == ["bad_HTTP_reply"]


def test_reply_bytes_beyond_the_hold_limit_are_parsed_unmatched():
    body = b"x" * (HOLD_LIMIT + 10)
    parser = HttpParser()
    out = parser.feed(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert [type(r).__name__ for r in out] == ["Weird", "HttpTransaction"]
    assert out[1].response_body_len == len(body)


# ----------------------------------------------------------------- properties and fuzz
def message(draw, kind):
    """(request bytes, response bytes, expected summary row) of one generated exchange."""
    method = draw(st.sampled_from(["GET", "HEAD", "POST", "PUT", "OPTIONS"]))
    req_body = draw(st.binary(max_size=40)) if method in ("POST", "PUT") else b""
    req = f"{method} /{draw(st.integers(0, 99))} HTTP/1.1\r\nHost: h\r\n".encode()
    req += b"Content-Length: %d\r\n\r\n" % len(req_body) + req_body if req_body else b"\r\n"
    code = draw(st.sampled_from([200, 201, 204, 304, 404]))
    body = b"" if code in (204, 304) else draw(st.binary(max_size=60))
    info = draw(st.booleans())
    resp = b"HTTP/1.1 100 Continue\r\n\r\n" if info else b""
    resp += b"HTTP/1.1 %d X\r\n" % code
    if code in (204, 304) or not draw(st.booleans()):
        resp += b"Content-Length: %d\r\n\r\n" % len(body)
        resp += b"" if method == "HEAD" else body
    else:
        resp += b"Transfer-Encoding: chunked\r\n\r\n"
        if method != "HEAD":
            pos = 0
            while pos < len(body):
                n = draw(st.integers(1, len(body) - pos))
                resp += b"%x\r\n%s\r\n" % (n, body[pos:pos + n])
                pos += n
            resp += b"0\r\n\r\n"
    sent = 0 if method == "HEAD" else len(body)
    return req, resp, (method, code, 100 if info else None, len(req_body), sent)


@st.composite
def conversations(draw):
    exchanges = [message(draw, i) for i in range(draw(st.integers(1, 5)))]
    reqs = b"".join(e[0] for e in exchanges)
    resps = b"".join(e[1] for e in exchanges)
    cuts = sorted(draw(st.lists(st.integers(0, max(len(reqs), len(resps))), max_size=6)))
    chunks, last = [], 0
    for cut in cuts + [max(len(reqs), len(resps))]:
        chunks += [(ORIG, reqs[last:cut]), (RESP, resps[last:cut])]
        last = cut
    return chunks, [e[2] for e in exchanges]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations())
def test_generated_pipelines_cut_anywhere_parse_exactly(conversation):
    chunks, expected = conversation
    txns, weirds = transactions(chunks)
    assert weirds == [] and summary(txns) == expected


chunkings = st.lists(st.tuples(st.sampled_from([ORIG, RESP]),
                               st.one_of(st.binary(max_size=200),
                                         st.sampled_from([REQS[:60], RESPS[:80], b"\r\n",
                                                          b"HTTP/1.1 200 OK\r\n"]))),
                     max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunkings)
def test_random_bytes_never_raise(chunks):
    out = feed_all(HttpParser(), chunks)
    assert all(isinstance(r, (HttpTransaction, Weird)) for r in out)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_real_conversations_never_raise(capture, data):
    chunks, i, d, blob = mutated_chunks(capture, data, 6)
    feed_all(HttpParser(), chunks[:i] + [(d, bytes(blob))] + chunks[i + 1:])
