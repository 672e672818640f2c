"""mosxdp.sessions.tls: TLS handshakes in real captures compared field by field with tshark,
JA4 against FoxIO's specification, real OpenSSL handshakes (TLS 1.2, 1.3, HelloRetryRequest,
a failed handshake) through memory BIOs, and malformed and fuzzed bytes."""
from __future__ import annotations

import ssl
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosxdp.sessions import ORIG, RESP, ClientHello, ServerHello, TlsParser, TlsSession, Weird
from mosxdp.sessions.tls import TlsError, ja4, parse_client_hello, parse_server_hello
from mosxdp.sessions.tls_names import cipher_name, version_name
from sessionkit import (TLS_PCAP, feed_all, first, ints, mutated_chunks, needs_tshark, pdml,
                        tcp_chunks, tshark_ja4, values)

PORT = 8443


def records(chunks):
    out = feed_all(TlsParser(), chunks)
    return ([r for r in out if isinstance(r, ClientHello)],
            [r for r in out if isinstance(r, ServerHello)],
            [r for r in out if isinstance(r, TlsSession)],
            [r for r in out if isinstance(r, Weird)])


@pytest.fixture(scope="module")
def capture():
    return tcp_chunks(TLS_PCAP, PORT)


@pytest.fixture(scope="module")
def tshark_hellos():
    """{(client port, handshake type): the PDML fields of that hello}."""
    out = {}
    for fields in pdml(TLS_PCAP, "tls.handshake.type == 1 || tls.handshake.type == 2",
                       "-d", f"tcp.port=={PORT},tls"):
        sport, dport = int(first(fields, "tcp.srcport")), int(first(fields, "tcp.dstport"))
        for htype in values(fields, "tls.handshake.type"):
            if htype in ("1", "2"):
                out[(sport if dport == PORT else dport, int(htype))] = fields
    return out


# ----------------------------------------------------------------- real captures vs tshark
@needs_tshark
def test_every_hello_in_the_capture_matches_tshark(capture, tshark_hellos):
    assert len(capture) == 7
    for port, chunks in capture.items():
        (ch,), (sh,), (session,), weirds = records(chunks)
        assert weirds == []
        t = tshark_hellos[(port, 1)]
        assert ch.server_name == first(t, "tls.handshake.extensions_server_name")
        assert ch.legacy_version == int(first(t, "tls.handshake.version"), 0)
        assert list(ch.cipher_suites) == ints(t, "tls.handshake.ciphersuite")
        assert list(ch.extensions) == ints(t, "tls.handshake.extension.type")
        assert list(ch.supported_versions) == ints(t, "tls.handshake.extensions.supported_version")
        assert list(ch.alpn_offered) == values(t, "tls.handshake.extensions_alpn_str")
        assert list(ch.supported_groups) == ints(t, "tls.handshake.extensions_supported_group")
        assert list(ch.signature_algorithms) == ints(t, "tls.handshake.sig_hash_alg")
        assert ch.ja4 == session.ja4 == tshark_ja4(t)

        t = tshark_hellos[(port, 2)]
        assert sh.cipher_suite == int(first(t, "tls.handshake.ciphersuite"), 0)
        shown = first(t, "tls.handshake.ciphersuite", "showname")  # "Cipher Suite: NAME (0x...)"
        assert session.cipher == shown.split(": ", 1)[1].rsplit(" (", 1)[0]
        selected = first(t, "tls.handshake.extensions.supported_version")
        negotiated = int(selected or first(t, "tls.handshake.version"), 0)
        assert session.version == version_name(negotiated)
        alpn = first(t, "tls.handshake.extensions_alpn_str")
        assert session.next_protocol == alpn
        assert session.established and not session.resumed and session.last_alert is None


@needs_tshark
def test_the_curve_is_the_servers_key_share_or_key_exchange_group(capture):
    groups = {}
    for fields in pdml(TLS_PCAP, "tls.handshake.extensions_key_share_group || "
                                 "tls.handshake.server_named_curve", "-d", f"tcp.port=={PORT},tls"):
        if int(first(fields, "tcp.srcport")) != PORT:
            continue
        shown = first(fields, "tls.handshake.extensions_key_share_group", "showname") or \
            first(fields, "tls.handshake.server_named_curve", "showname")
        groups[int(first(fields, "tcp.dstport"))] = shown.split(": ", 1)[1].split(" (")[0]
    got = {port: records(chunks)[2][0].curve for port, chunks in capture.items()}
    assert got == groups


def test_what_the_capture_negotiated(capture):
    sessions = [records(chunks)[2][0] for chunks in capture.values()]
    assert [(s.server_name, s.version, s.cipher, s.next_protocol, s.next_protocol_encrypted)
            for s in sessions] == [
        ("alpha.example", "TLSv13", "TLS_AES_256_GCM_SHA384", None, True),
        ("www.beta.example", "TLSv13", "TLS_CHACHA20_POLY1305_SHA256", None, True),
        ("gamma.example", "TLSv12", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "http/1.1", False),
        ("delta.example", "TLSv12", "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", None, False),
        (None, "TLSv13", "TLS_AES_256_GCM_SHA384", None, True),
        ("h2.example", "TLSv13", "TLS_AES_256_GCM_SHA384", None, True),
        ("h2-tls12.example", "TLSv12", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "h2", False),
    ]
    assert [s.ja4[:10] for s in sessions] == ["t13d0412h1", "t13d0212h1", "t12d2807h1",
                                              "t12d020600", "t13i3111h1", "t13d3112h2",
                                              "t12d2808h2"]


def test_byte_by_byte_feeding_gives_the_same_records(capture):
    for chunks in capture.values():
        whole = records(chunks)
        bytewise = [(d, bytes([b])) for d, data in chunks for b in data]
        assert records(bytewise) == whole


def test_the_parser_is_done_at_established_and_ignores_the_rest(capture):
    chunks = next(iter(capture.values()))
    parser = TlsParser()
    for i, (direction, data) in enumerate(chunks):
        got = parser.feed(direction, data)
        if any(isinstance(r, TlsSession) for r in got):
            break
    assert parser.done and parser.established
    assert i < len(chunks) - 1                      # application data still followed
    assert all(parser.feed(d, data) == [] for d, data in chunks[i + 1:])
    assert parser.close() == []


# ----------------------------------------------------------------- JA4 (FoxIO's spec)
SPEC_CIPHERS = [0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013,
                0xc014, 0x009c, 0x009d, 0x002f, 0x0035]
SPEC_EXTS = [0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023,
             0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015]
SPEC_SIGALGS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]


def client_hello_body(suites, exts: dict, version=0x0303, session_id=b"") -> bytes:
    """A ClientHello message body with these cipher suites and {type: data} extensions."""
    ext_bytes = b"".join(struct.pack("!HH", t, len(d)) + d for t, d in exts.items())
    return (struct.pack("!H", version) + bytes(32) + bytes([len(session_id)]) + session_id +
            struct.pack("!H", 2 * len(suites)) + struct.pack(f"!{len(suites)}H", *suites) +
            b"\x01\x00" + struct.pack("!H", len(ext_bytes)) + ext_bytes)


def u16s(values_, len_size=2):
    body = struct.pack(f"!{len(values_)}H", *values_)
    return (struct.pack("!H", len(body)) if len_size == 2 else bytes([len(body)])) + body


def alpn_ext(*protocols: bytes) -> bytes:
    body = b"".join(bytes([len(p)]) + p for p in protocols)
    return struct.pack("!H", len(body)) + body


def sni_ext(name: bytes) -> bytes:
    entry = b"\x00" + struct.pack("!H", len(name)) + name
    return struct.pack("!H", len(entry)) + entry


def spec_hello(alpn=(b"h2",), sigalgs=SPEC_SIGALGS, grease=True) -> ClientHello:
    exts = {}
    for t in SPEC_EXTS:
        exts[t] = {0x0000: sni_ext(b"example.com"), 0x0010: alpn_ext(*alpn),
                   0x002b: u16s([0x0a0a, 0x0304, 0x0303], 1),
                   0x000d: u16s(list(sigalgs)), 0x000a: u16s([29])}.get(t, b"")
    suites = SPEC_CIPHERS
    if grease:  # GREASE anywhere changes nothing
        exts = {0x2a2a: b"", **exts, 0xfafa: b"\x00"}
        suites = [0x5a5a] + suites
    return parse_client_hello(client_hello_body(suites, exts))


def test_ja4_of_the_spec_example():
    hello = spec_hello()
    assert hello.ja4 == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert spec_hello(grease=False).ja4 == hello.ja4
    # no signature algorithms: the extension list alone is hashed, without an underscore
    assert spec_hello(sigalgs=()).ja4 == "t13d1516h2_8daaf6152771_6d807ffa2a79"


@pytest.mark.parametrize("first_alpn, code", [
    (b"h2", "h2"), (b"http/1.1", "h1"), (b"h", "hh"), (b"\xab", "ab"), (b"\xab\xcd", "ad"),
    (b"\x30\xab", "3b"), (b"\x30\x31\xab\xcd", "3d"), (b"\x30\xab\xcd\x31", "01"),
])
def test_ja4_alpn_characters(first_alpn, code):
    assert spec_hello(alpn=(first_alpn, b"http/1.1")).ja4[8:10] == code


def test_ja4_without_ciphers_extensions_or_sni():
    hello = parse_client_hello(client_hello_body([], {}, version=0x0301))
    assert hello.ja4 == "t10i000000_000000000000_000000000000"
    assert ja4(hello, transport="q").startswith("q10i")


# ----------------------------------------------------------------- real OpenSSL handshakes
@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "30", "-subj", "/CN=t.test",
                    "-keyout", str(d / "k.pem"), "-out", str(d / "c.pem")],
                   check=True, capture_output=True)
    return str(d / "c.pem"), str(d / "k.pem")


def handshake(cert, *, client_max=ssl.TLSVersion.TLSv1_3, server_curve=None, sni="m.test",
              client_alpn=("h2", "http/1.1"), fail=False):
    """A real handshake between two OpenSSL endpoints through memory BIOs: the byte
    chunks each side wrote, in order, as (direction, bytes)."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(*cert)
    sctx.set_alpn_protocols(["http/1.1"])
    if server_curve:
        sctx.set_ecdh_curve(server_curve)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    cctx.maximum_version = client_max
    if fail:
        cctx.verify_mode = ssl.CERT_REQUIRED  # the self-signed certificate is refused
    if client_alpn:
        cctx.set_alpn_protocols(list(client_alpn))
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = cctx.wrap_bio(bios[0], bios[1], server_hostname=sni)
    server = sctx.wrap_bio(bios[2], bios[3], server_side=True)
    chunks = []
    for _ in range(8):
        for end in (client, server):
            try:
                end.do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLCertVerificationError, ssl.SSLError):
                pass
        for direction, src, dst in ((ORIG, bios[1], bios[2]), (RESP, bios[3], bios[0])):
            data = src.read()
            if data:
                chunks.append((direction, data))
                dst.write(data)
    if not fail:
        client.write(b"GET / HTTP/1.1\r\n\r\n")
        chunks.append((ORIG, bios[1].read()))
    return chunks


def test_tls13_handshake_through_openssl(cert):
    (ch,), (sh,), (s,), weirds = records(handshake(cert))
    assert weirds == [] and s.established and s.version == "TLSv13"
    assert s.server_name == "m.test" and ch.alpn_offered == ("h2", "http/1.1")
    assert s.next_protocol is None and s.next_protocol_encrypted
    assert sh.key_share_group == 29 and s.curve == "x25519" and not sh.hello_retry


def test_tls12_handshake_through_openssl(cert):
    (ch,), (sh,), (s,), weirds = records(handshake(cert, client_max=ssl.TLSVersion.TLSv1_2,
                                                   client_alpn=("http/1.1",)))
    assert weirds == [] and s.established and s.version == "TLSv12"
    assert s.cipher == cipher_name(sh.cipher_suite) and s.cipher.startswith("TLS_ECDHE_ECDSA_")
    assert s.next_protocol == "http/1.1" and not s.next_protocol_encrypted
    assert s.curve == "x25519" and not s.resumed


def test_hello_retry_request_is_followed_to_the_real_server_hello(cert):
    # The server accepts only P-256; OpenSSL's client sends an x25519 key share first.
    hellos, server_hellos, (s,), weirds = records(handshake(cert, server_curve="prime256v1"))
    assert weirds == [] and len(hellos) == 2
    assert [h.hello_retry for h in server_hellos] == [True, False]
    assert s.established and s.version == "TLSv13" and s.curve == "secp256r1"
    assert s.ja4 == hellos[0].ja4  # the fingerprint is the first ClientHello's


def test_a_failed_handshake_ends_with_its_alert(cert):
    (ch,), (sh,), (s,), weirds = records(handshake(cert, fail=True, client_max=ssl.TLSVersion.TLSv1_2))
    assert not s.established and s.last_alert in ("bad_certificate", "unknown_ca")
    assert weirds == []


# ----------------------------------------------------------------- malformed bytes
def record(ctype: int, body: bytes, version=0x0303) -> bytes:
    return struct.pack("!BHH", ctype, version, len(body)) + body


def handshake_msg(mtype: int, body: bytes) -> bytes:
    return struct.pack("!B", mtype) + len(body).to_bytes(3, "big") + body


def test_every_truncation_of_a_client_hello_is_a_typed_error():
    body = client_hello_body(SPEC_CIPHERS, {0: sni_ext(b"a.test"), 16: alpn_ext(b"h2"),
                                            43: u16s([0x0304], 1), 13: u16s(SPEC_SIGALGS)})
    assert parse_client_hello(body).server_name == "a.test"
    for n in range(len(body)):
        if n == 2 + 32 + 1 + 2 + 30 + 2:  # ends right after the compression methods: legal
            continue
        with pytest.raises(TlsError) as info:
            parse_client_hello(body[:n])
        assert info.value.name == "ssl_bad_client_hello"


def test_bad_lengths_inside_a_hello_are_weird_and_the_handshake_goes_on():
    bad_sni = client_hello_body([0x1301], {0: b"\x00\x09\x00\x00\x05ab"})  # list longer than data
    stream = record(22, handshake_msg(1, bad_sni))
    parser = TlsParser()
    (weird,) = parser.feed(ORIG, stream)
    assert weird.name == "ssl_bad_client_hello" and weird.direction == ORIG
    assert not parser.done


def test_an_odd_length_cipher_list_is_named():
    body = bytearray(client_hello_body([0x1301], {}))
    body[35:37] = b"\x00\x01"
    with pytest.raises(TlsError, match="cipher_suites"):
        parse_client_hello(bytes(body))


def test_server_hello_selecting_two_alpn_protocols_is_malformed():
    alpn = alpn_ext(b"h2", b"h3")
    body = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x13\x01\x00" +
            struct.pack("!HHH", 4 + len(alpn), 16, len(alpn)) + alpn)
    with pytest.raises(TlsError, match="ALPN selects 2"):
        parse_server_hello(body)


@pytest.mark.parametrize("stream, name", [
    (b"GET / HTTP/1.1\r\n\r\n", "ssl_not_tls"),
    (record(22, b"", version=0x0203), "ssl_not_tls"),
    (struct.pack("!BHH", 23, 0x0303, 30000), "ssl_record_too_long"),
    (record(22, b"\x01" + (2**17).to_bytes(3, "big")), "ssl_handshake_message_too_long"),
])
def test_streams_that_cannot_be_followed_stop_the_parser(stream, name):
    parser = TlsParser()
    got = parser.feed(ORIG, stream)
    assert [w.name for w in got if isinstance(w, Weird)][-1] == name
    assert parser.done and parser.feed(ORIG, stream) == [] and parser.close() == []


def test_a_truncated_handshake_gives_the_session_at_close(capture):
    chunks = next(iter(capture.values()))
    parser = TlsParser()
    parser.feed(*chunks[0])                  # the ClientHello
    d, flight = chunks[1]                    # the server's first flight, its end missing
    parser.feed(d, flight[:-7])
    (session,) = parser.close()
    assert isinstance(session, TlsSession) and not session.established
    assert session.server_name is not None


# ----------------------------------------------------------------- fuzz
chunkings = st.lists(st.tuples(st.sampled_from([ORIG, RESP]), st.binary(max_size=300)),
                     max_size=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=chunkings)
def test_random_bytes_never_raise(chunks):
    out = feed_all(TlsParser(), chunks)
    assert all(isinstance(r, (ClientHello, ServerHello, TlsSession, Weird)) for r in out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_real_handshakes_never_raise(capture, data):
    chunks, i, d, blob = mutated_chunks(capture, data, 8)
    cut = data.draw(st.integers(0, len(blob)))
    mutated = chunks[:i] + [(d, bytes(blob[:cut])), (d, bytes(blob[cut:]))] + chunks[i + 1:]
    feed_all(TlsParser(), mutated)
