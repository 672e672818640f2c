"""TLS handshake parser over the two reassembled TCP bytestreams (sans-IO).

`TlsParser.feed(direction, data, ts)` takes each side's stream in order and in pieces of any
size: a record may be split across pieces and a handshake message across records. It returns

* `ClientHello` and `ServerHello` records as soon as each is complete (a HelloRetryRequest is
  a `ServerHello` with ``hello_retry`` set);
* one `TlsSession` (the ssl.log row: version, cipher, curve, server_name, resumed,
  last_alert, next_protocol, established, ja4) once the handshake is over: established, or
  failed (a fatal alert, or bytes that are not TLS), or at `close`;
* `Weird` records for what is malformed.

After the session record `done` is true and `feed` ignores its input: the runtime can stop
reassembling the flow (and hand it to the kernel).

`established` follows Zeek: for TLS 1.2 and older, the first record after both sides have
sent ChangeCipherSpec; for TLS 1.3 (where ChangeCipherSpec is only a compatibility
gesture) the first encrypted record from the client once the server has sent its
encrypted flight, i.e. the client's Finished. In TLS 1.3 the server's ALPN choice travels
in the encrypted EncryptedExtensions: ``next_protocol`` is then None and
``next_protocol_encrypted`` True.

`parse_client_hello` and `parse_server_hello` parse one handshake message body and raise
`TlsError` on malformed bytes; `ja4` computes FoxIO's JA4 client fingerprint.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from struct import unpack_from

from .common import ORIG, RESP, SessionError, Weird, text
from .tls_names import alert_name, cipher_name, group_name, is_grease, version_name

__all__ = ["TlsParser", "ClientHello", "ServerHello", "TlsSession", "TlsError",
           "parse_client_hello", "parse_server_hello", "ja4"]

CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT = 20, 21, 22, 23, 24
HS_CLIENT_HELLO, HS_SERVER_HELLO, HS_SERVER_KEY_EXCHANGE, HS_SERVER_HELLO_DONE = 1, 2, 12, 14
EXT_SERVER_NAME, EXT_SUPPORTED_GROUPS, EXT_SIGNATURE_ALGORITHMS, EXT_ALPN = 0, 10, 13, 16
EXT_PRE_SHARED_KEY, EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE = 41, 43, 51
TLS13 = 0x0304

# A record's payload is at most 2**14 bytes, plus 2048 of expansion when encrypted (RFC 5246).
MAX_RECORD = 2**14 + 2048
# The largest hello or key exchange message kept whole; every other message is skipped
# without being buffered (a certificate chain may be large, and we do not read it).
MAX_MESSAGE = 2**16
# The ServerHello random that marks a HelloRetryRequest (RFC 8446, 4.1.3).
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")


class TlsError(SessionError):
    """Malformed TLS bytes (`name` is the weird name)."""


class _Reader:
    """Bounds-checked big-endian reads over one handshake message body."""

    __slots__ = ("buf", "pos", "end", "what")

    def __init__(self, buf: memoryview, what: str, pos: int = 0, end: int | None = None):
        self.buf, self.pos, self.what = buf, pos, what
        self.end = len(buf) if end is None else end

    def need(self, n: int, field_name: str) -> None:
        if self.pos + n > self.end:
            raise TlsError(f"ssl_bad_{self.what}",
                           f"{field_name} needs {n} bytes, {self.end - self.pos} left")

    def u8(self, field_name: str) -> int:
        self.need(1, field_name)
        self.pos += 1
        return self.buf[self.pos - 1]

    def u16(self, field_name: str) -> int:
        self.need(2, field_name)
        self.pos += 2
        return unpack_from("!H", self.buf, self.pos - 2)[0]

    def take(self, n: int, field_name: str) -> memoryview:
        self.need(n, field_name)
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def vector(self, len_size: int, field_name: str) -> "_Reader":
        """The sub-reader over a length-prefixed vector; this reader moves past it."""
        n = self.u8(field_name) if len_size == 1 else self.u16(field_name)
        self.need(n, field_name)
        sub = _Reader(self.buf, self.what, self.pos, self.pos + n)
        self.pos += n
        return sub

    def u16_list(self, len_size: int, field_name: str) -> tuple[int, ...]:
        sub = self.vector(len_size, field_name)
        if (sub.end - sub.pos) % 2:
            raise TlsError(f"ssl_bad_{self.what}", f"{field_name} has an odd length")
        return unpack_from(f"!{(sub.end - sub.pos) // 2}H", sub.buf, sub.pos)

    def left(self) -> int:
        return self.end - self.pos

    def rest(self) -> memoryview:
        out = self.buf[self.pos:self.end]
        self.pos = self.end
        return out


def _extensions(r: _Reader) -> list[tuple[int, _Reader]]:
    """(type, reader over its data) for each extension; none when the block is absent."""
    if r.left() == 0:
        return []
    block = r.vector(2, "extensions")
    out = []
    while block.left():
        ext_type = block.u16("extension type")
        out.append((ext_type, block.vector(2, f"extension {ext_type}")))
    return out


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The client's offer, as sent (GREASE values included, in their order)."""

    legacy_version: int
    session_id: bytes
    cipher_suites: tuple[int, ...]
    extensions: tuple[int, ...]
    server_names: tuple[str, ...] = ()
    supported_versions: tuple[int, ...] = ()
    alpn: tuple[bytes, ...] = ()
    supported_groups: tuple[int, ...] = ()
    signature_algorithms: tuple[int, ...] = ()
    ja4: str = ""

    @property
    def server_name(self) -> str | None:
        """The first host name of the SNI extension (what ssl.log logs), or None."""
        return self.server_names[0] if self.server_names else None

    @property
    def version(self) -> int:
        """The highest version offered: supported_versions (GREASE ignored), else the legacy one."""
        offered = [v for v in self.supported_versions if not is_grease(v)]
        return max(offered) if offered else self.legacy_version

    @property
    def alpn_offered(self) -> tuple[str, ...]:
        return tuple(text(p) for p in self.alpn)


@dataclass(frozen=True, slots=True)
class ServerHello:
    """The server's choice (or, with hello_retry, its HelloRetryRequest)."""

    legacy_version: int
    session_id: bytes
    cipher_suite: int
    extensions: tuple[int, ...]
    selected_version: int | None = None  # the supported_versions extension, when present
    alpn: bytes | None = None
    key_share_group: int | None = None
    pre_shared_key: bool = False
    hello_retry: bool = False

    @property
    def version(self) -> int:
        return self.legacy_version if self.selected_version is None else self.selected_version

    @property
    def version_name(self) -> str:
        return version_name(self.version)

    @property
    def cipher(self) -> str:
        return cipher_name(self.cipher_suite)


@dataclass(slots=True)
class TlsSession:
    """One ssl.log row (Zeek's field names), plus the hellos it was made from."""

    ts: float | None = None
    version: str | None = None
    cipher: str | None = None
    curve: str | None = None
    server_name: str | None = None
    resumed: bool = False
    last_alert: str | None = None
    next_protocol: str | None = None
    next_protocol_encrypted: bool = False
    established: bool = False
    ja4: str | None = None
    client_hello: ClientHello | None = field(default=None, repr=False)
    server_hello: ServerHello | None = field(default=None, repr=False)


def parse_client_hello(body: memoryview | bytes) -> ClientHello:
    """A ClientHello handshake message body (after the 4-byte handshake header)."""
    r = _Reader(memoryview(body), "client_hello")
    legacy_version = r.u16("legacy_version")
    r.take(32, "random")
    session_id = bytes(r.vector(1, "session_id").rest())
    suites = r.u16_list(2, "cipher_suites")
    r.vector(1, "compression_methods")
    exts, names, versions, alpn, groups, sigalgs = [], (), (), (), (), ()
    for ext_type, e in _extensions(r):
        exts.append(ext_type)
        if ext_type == EXT_SERVER_NAME:
            names = _server_names(e)
        elif ext_type == EXT_SUPPORTED_VERSIONS:
            sub = e.vector(1, "supported_versions")
            if sub.left() % 2:
                raise TlsError("ssl_bad_client_hello", "supported_versions has an odd length")
            versions = unpack_from(f"!{sub.left() // 2}H", sub.buf, sub.pos)
        elif ext_type == EXT_ALPN:
            alpn = _protocols(e)
        elif ext_type == EXT_SUPPORTED_GROUPS:
            groups = e.u16_list(2, "supported_groups")
        elif ext_type == EXT_SIGNATURE_ALGORITHMS:
            sigalgs = e.u16_list(2, "signature_algorithms")
    hello = ClientHello(legacy_version, session_id, tuple(suites), tuple(exts), names,
                        tuple(versions), alpn, tuple(groups), tuple(sigalgs))
    object.__setattr__(hello, "ja4", ja4(hello))
    return hello


def _server_names(e: _Reader) -> tuple[str, ...]:
    names = []
    block = e.vector(2, "server_name_list")
    while block.left():
        name_type = block.u8("server name type")
        name = block.vector(2, "server name").rest()
        if name_type == 0:  # host_name
            names.append(text(bytes(name)))
    return tuple(names)


def _protocols(e: _Reader) -> tuple[bytes, ...]:
    block = e.vector(2, "protocol_name_list")
    out = []
    while block.left():
        out.append(bytes(block.vector(1, "protocol name").rest()))
    return tuple(out)


def parse_server_hello(body: memoryview | bytes) -> ServerHello:
    """A ServerHello (or HelloRetryRequest) handshake message body."""
    r = _Reader(memoryview(body), "server_hello")
    legacy_version = r.u16("legacy_version")
    random = bytes(r.take(32, "random"))
    session_id = bytes(r.vector(1, "session_id").rest())
    suite = r.u16("cipher_suite")
    r.u8("compression_method")
    exts, selected, alpn, group, psk = [], None, None, None, False
    for ext_type, e in _extensions(r):
        exts.append(ext_type)
        if ext_type == EXT_SUPPORTED_VERSIONS:
            selected = e.u16("selected_version")
        elif ext_type == EXT_ALPN:
            protocols = _protocols(e)
            if len(protocols) != 1:
                raise TlsError("ssl_bad_server_hello", f"ALPN selects {len(protocols)} protocols")
            alpn = protocols[0]
        elif ext_type == EXT_KEY_SHARE:
            group = e.u16("key_share group")
        elif ext_type == EXT_PRE_SHARED_KEY:
            psk = True
    return ServerHello(legacy_version, session_id, suite, tuple(exts), selected, alpn, group,
                       psk, random == HRR_RANDOM)


# ----------------------------------------------------------------------------- JA4
def _ja4_version(version: int) -> str:
    return {0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3",
            0x0002: "s2", 0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3"}.get(version, "00")


def _ja4_alpn(alpn: tuple[bytes, ...]) -> str:
    if not alpn or not alpn[0]:
        return "00"
    first = alpn[0]
    ends = chr(first[0]) + chr(first[-1])
    if ends.isascii() and ends.isalnum():
        return ends
    hexed = first.hex()
    return hexed[0] + hexed[-1]


def _ja4_hash(items: str) -> str:
    return hashlib.sha256(items.encode()).hexdigest()[:12] if items else "000000000000"


def ja4(hello: ClientHello, transport: str = "t") -> str:
    """FoxIO's JA4 (github.com/FoxIO-LLC/ja4, technical_details/JA4.md) of a ClientHello:
    ``t13d1516h2_8daaf6152771_e5627efa2ab1``. GREASE values are left out everywhere;
    ``transport`` is "t" (TLS over TCP), "q" (QUIC) or "d" (DTLS)."""
    suites = [s for s in hello.cipher_suites if not is_grease(s)]
    exts = [e for e in hello.extensions if not is_grease(e)]
    head = (f"{transport}{_ja4_version(hello.version)}"
            f"{'d' if EXT_SERVER_NAME in exts else 'i'}"
            f"{min(len(suites), 99):02d}{min(len(exts), 99):02d}{_ja4_alpn(hello.alpn)}")
    cipher_list = ",".join(f"{s:04x}" for s in sorted(suites))
    ext_list = ",".join(f"{e:04x}" for e in sorted(exts)
                        if e not in (EXT_SERVER_NAME, EXT_ALPN))
    sigalgs = ",".join(f"{s:04x}" for s in hello.signature_algorithms if not is_grease(s))
    ext_hash = _ja4_hash(f"{ext_list}_{sigalgs}" if ext_list and sigalgs else ext_list)
    return f"{head}_{_ja4_hash(cipher_list)}_{ext_hash}"


# ----------------------------------------------------------------------------- the parser
# The hellos: the direction each comes from, the weird when it comes from the other, its parser.
_HELLOS = {
    HS_CLIENT_HELLO: (ORIG, "ssl_client_hello_from_responder", parse_client_hello),
    HS_SERVER_HELLO: (RESP, "ssl_server_hello_from_originator", parse_server_hello),
}


class TlsParser:
    """The TLS handshake of one TCP connection, fed with both reassembled streams."""

    def __init__(self):
        self._records = (bytearray(), bytearray())  # unparsed record bytes per direction
        self._hs = (bytearray(), bytearray())       # plaintext handshake bytes per direction
        self._skip = [0, 0]                         # bytes of an unread message still to skip
        self._ccs = [False, False]                  # TLS <= 1.2: this side sent ChangeCipherSpec
        self._encrypted = [False, False]            # TLS 1.3: this side sent an encrypted record
        self._server_hello_done = False
        self.session = TlsSession()
        self.client_hello: ClientHello | None = None
        self.server_hello: ServerHello | None = None
        self.done = False

    @property
    def established(self) -> bool:
        return self.session.established

    def feed(self, direction: int, data, ts: float | None = None) -> list:
        """The records that ``data`` (the next bytes of ``direction``'s stream) completed."""
        if self.done or not data:
            return []
        out: list = []
        if self.session.ts is None:
            self.session.ts = ts
        buf = self._records[direction]
        buf += data
        try:
            self._parse_records(direction, buf, out)
        except TlsError as exc:
            out.append(exc.weird(direction))
            self._finish(out)
        return out

    def close(self) -> list:
        """End of the connection: the session record if it was not given yet."""
        out: list = []
        if not self.done:
            self._finish(out)
        return out

    # -- records
    def _parse_records(self, d: int, buf: bytearray, out: list) -> None:
        pos, n = 0, len(buf)
        while n - pos >= 5 and not self.done:
            ctype, major, minor, length = unpack_from("!BBBH", buf, pos)
            if not CHANGE_CIPHER_SPEC <= ctype <= HEARTBEAT or major != 3:
                what = "first" if self.client_hello is None else "a"
                raise TlsError("ssl_not_tls",
                               f"{what} record starts with {bytes(buf[pos:pos + 3]).hex()}")
            if length > MAX_RECORD:
                raise TlsError("ssl_record_too_long", f"record of {length} bytes")
            if n - pos - 5 < length:
                break
            start = pos + 5
            pos = start + length
            self._record(d, ctype, buf, start, pos, out)
        del buf[:pos]

    def _record(self, d: int, ctype: int, buf: bytearray, start: int, end: int, out: list):
        tls13 = self.server_hello is not None and self.server_hello.version == TLS13
        if ctype == CHANGE_CIPHER_SPEC:
            # Before the ServerHello (after a HelloRetryRequest) and in TLS 1.3 it is only
            # a compatibility gesture; in TLS <= 1.2 what follows it is encrypted.
            if self.server_hello is not None and not tls13:
                self._ccs[d] = True
        elif ctype == ALERT:
            if not self._ccs[d] and not self._encrypted[d] and end - start >= 2:
                level, desc = buf[end - 2], buf[end - 1]  # the last alert of the record
                self.session.last_alert = alert_name(desc)
                if level == 2:  # fatal: the handshake is over
                    self._finish(out)
        elif ctype == HANDSHAKE and not self._ccs[d]:
            if tls13 and d == RESP:
                raise TlsError("ssl_plaintext_after_server_hello",
                               "plaintext handshake record from a TLS 1.3 server")
            self._hs[d].extend(buf[start:end])
            self._handshake(d, out)
        elif ctype in (HANDSHAKE, APPLICATION_DATA):
            self._encrypted_record(d, tls13, out)

    def _encrypted_record(self, d: int, tls13: bool, out: list) -> None:
        if self.server_hello is None:
            return  # early data, or records of a session we saw start in the middle
        if tls13:
            self._encrypted[d] = True
            done = d == ORIG and self._encrypted[RESP]
        else:
            done = self._ccs[ORIG] and self._ccs[RESP]
        if done:
            self.session.established = True
            self._finish(out)

    # -- handshake messages
    def _handshake(self, d: int, out: list) -> None:
        hs = self._hs[d]
        pos, n = 0, len(hs)
        while not self.done:
            if self._skip[d]:
                take = min(self._skip[d], n - pos)
                pos += take
                self._skip[d] -= take
                if self._skip[d]:
                    break
            if n - pos < 4:
                break
            mtype, hi, lo = unpack_from("!BBH", hs, pos)
            length = hi << 16 | lo
            if mtype not in (HS_CLIENT_HELLO, HS_SERVER_HELLO, HS_SERVER_KEY_EXCHANGE):
                if mtype == HS_SERVER_HELLO_DONE and d == RESP:
                    self._server_hello_done = True
                pos += 4
                self._skip[d] = length
                continue
            if length > MAX_MESSAGE:
                raise TlsError("ssl_handshake_message_too_long",
                               f"handshake message type {mtype} of {length} bytes")
            if n - pos - 4 < length:
                break
            body = bytes(hs[pos + 4:pos + 4 + length])
            pos += 4 + length
            self._message(d, mtype, body, out)
        del hs[:pos]

    def _message(self, d: int, mtype: int, body: bytes, out: list) -> None:
        hello_kind = _HELLOS.get(mtype)
        if hello_kind is not None:
            side, wrong_side, parse = hello_kind
            if d != side:
                out.append(Weird(wrong_side, "", d))
                return
            try:
                hello = parse(body)
            except TlsError as exc:
                out.append(exc.weird(d))
                return
            if mtype == HS_CLIENT_HELLO:
                self._client_hello(hello, d, out)
            out.append(hello)
            if mtype == HS_SERVER_HELLO and not hello.hello_retry:
                self._server_hello(hello)
        elif d == RESP and self.server_hello is not None and "ECDHE" in self.session.cipher \
                and len(body) >= 3 and body[0] == 3:  # ServerKeyExchange, named_curve
            self.session.curve = group_name(unpack_from("!H", body, 1)[0])

    def _client_hello(self, hello: ClientHello, d: int, out: list) -> None:
        if self.client_hello is None:  # the first one (not a retry) is the fingerprint
            self.client_hello = hello
            self.session.client_hello = hello
            self.session.server_name = hello.server_name
            self.session.ja4 = hello.ja4
            if len(hello.server_names) > 1:
                out.append(Weird("SSL_many_server_names", str(len(hello.server_names)), d))

    def _server_hello(self, hello: ServerHello) -> None:
        self.server_hello = hello
        s = self.session
        s.server_hello = hello
        s.version = hello.version_name
        s.cipher = hello.cipher
        if hello.version == TLS13:
            s.next_protocol_encrypted = True
            s.resumed = hello.pre_shared_key
            if hello.key_share_group is not None:
                s.curve = group_name(hello.key_share_group)
        elif hello.alpn is not None:
            s.next_protocol = text(hello.alpn)

    def _finish(self, out: list) -> None:
        """The handshake is over (or cannot be followed): give the session record once."""
        self.done = True
        for buf in self._records + self._hs:
            buf.clear()
        s = self.session
        if self.server_hello is not None and self.server_hello.version != TLS13:
            # TLS <= 1.2: an abbreviated handshake (the server's ChangeCipherSpec with no
            # ServerHelloDone before it) resumes a session, by session ID or by ticket.
            s.resumed = self._ccs[RESP] and not self._server_hello_done
        if self.client_hello is not None or self.server_hello is not None:
            out.append(s)
