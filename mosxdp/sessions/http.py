"""HTTP/1.x transactions over the two reassembled TCP bytestreams, with llhttp (httptools).

`HttpParser.feed(direction, data, ts)` takes the client's stream (ORIG) and the server's
(RESP) in order, in pieces of any size, and returns an `HttpTransaction` (an http.log row,
Zeek's field names) each time a response completes, matched to its request in order
(pipelining and keep-alive), plus `Weird` records. `close()` returns what is still open: a
response delimited by the end of the connection, requests never answered.

Feed each batch's client bytes before its server bytes: a response is matched to the oldest
request still waiting. Response bytes that arrive while no request is waiting are held
(up to `HOLD_LIMIT`) until a request comes, because how a response is framed depends on its
request: the answer to HEAD has no body whatever its Content-Length says, and a 2xx answer to
CONNECT starts a tunnel. llhttp cannot be told about HEAD through httptools, so such a
response is given to llhttp only up to the end of its header block and its message is ended
here. 1xx responses (llhttp gives them no body, as it does for 204 and 304) fill
``info_code``/``info_msg`` and the transaction waits for the final response.

After a tunnel starts (101 Switching Protocols, or a 2xx answer to CONNECT) the parser is
`done`: nothing after it is HTTP. A side whose bytes llhttp rejects is not parsed further
(llhttp cannot find the next message), with a ``bad_HTTP_request`` / ``bad_HTTP_reply`` weird.

Field semantics follow Zeek's http.log: ``uri`` is the request target with %XX escapes
decoded, ``host`` the Host header as sent (port included), ``version`` the response's
("1.1"), body lengths count the body after chunked framing is removed (not decoded from any
Content-Encoding), ``status_code``/``status_msg`` are the final response's.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

import httptools

from .common import ORIG, RESP, Weird, text

__all__ = ["HttpParser", "HttpTransaction", "HOLD_LIMIT"]

# Response bytes held while no request is waiting; beyond this they are parsed as an
# unmatched reply (a capture that sees only the server's side).
HOLD_LIMIT = 65536
# The longest header block searched for its end when llhttp must not see the body.
MAX_HEADER_BLOCK = 65536

# Where the chunked-body scanner is: in a size line, in chunk data, in the trailer.
_SIZE, _DATA, _TRAILER = 0, 1, 2

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


def unescape_uri(raw: bytes) -> str:
    """The request target with every %XX escape decoded (what Zeek logs as ``uri``)."""
    return text(_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), raw))


@dataclass(slots=True)
class HttpTransaction:
    """One request and its response (an http.log row; Zeek's field names)."""

    ts: float | None = None
    trans_depth: int = 0
    method: str | None = None
    host: str | None = None
    uri: str | None = None
    referrer: str | None = None
    version: str | None = None
    user_agent: str | None = None
    origin: str | None = None
    request_body_len: int = 0
    response_body_len: int = 0
    status_code: int | None = None
    status_msg: str | None = None
    info_code: int | None = None
    info_msg: str | None = None
    # Beyond Zeek's fields, for Suricata's EVE (url, protocol): the request target as sent
    # (escapes kept) and the request line's version.
    target: str | None = None
    request_version: str | None = None


class _Request:
    """llhttp callbacks for the client's side."""

    def __init__(self, owner: "HttpParser"):
        self.owner = owner
        self.url = bytearray()
        self.txn: HttpTransaction | None = None

    def on_message_begin(self):
        self.url.clear()
        self.txn = HttpTransaction(ts=self.owner._ts)

    def on_url(self, url: bytes):
        self.url += url

    def on_header(self, name: bytes, value: bytes):
        field = _REQUEST_HEADERS.get(name.lower())
        if field is not None:
            setattr(self.txn, field, text(value))

    def on_headers_complete(self):
        txn = self.txn
        txn.method = self.owner._req_parser.get_method().decode("ascii", "replace")
        txn.uri = unescape_uri(bytes(self.url))
        txn.target = text(bytes(self.url))
        txn.request_version = self.owner._req_parser.get_http_version()
        self.owner._number(txn)
        self.owner._pending.append(txn)

    def on_body(self, body: bytes):
        self.txn.request_body_len += len(body)


_REQUEST_HEADERS = {b"host": "host", b"user-agent": "user_agent", b"referer": "referrer",
                    b"origin": "origin"}


class _Response:
    """llhttp callbacks for the server's side."""

    def __init__(self, owner: "HttpParser"):
        self.owner = owner
        self.idle = True           # between two messages
        self.status = bytearray()
        self.txn: HttpTransaction | None = None
        self.code = 0
        self.content_length: int | None = None
        self.chunked = False
        self.body = 0

    def on_message_begin(self):
        self.idle = False
        self.status.clear()
        self.txn, self.code, self.content_length, self.chunked, self.body = None, 0, None, \
            False, 0

    def on_status(self, status: bytes):
        self.status += status

    def on_header(self, name: bytes, value: bytes):
        name = name.lower()
        if name == b"content-length" and value.strip().isdigit():
            self.content_length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            self.chunked = True

    def on_headers_complete(self):
        owner = self.owner
        self.code = owner._resp_parser.get_status_code()
        txn = self.txn = owner._answered()
        msg = text(bytes(self.status))
        if 100 <= self.code <= 199:
            txn.info_code, txn.info_msg = self.code, msg
        txn.status_code, txn.status_msg = self.code, msg
        txn.version = owner._resp_parser.get_http_version()

    def on_body(self, body: bytes):
        self.body += len(body)
        self.txn.response_body_len += len(body)

    def on_message_complete(self):
        self.idle = True
        if not 100 <= self.code <= 199:
            self.owner._response_done(self.txn)


def _lenient(parser):
    """llhttp as an observer reads headers: a header value with a control byte (a user agent
    with \x01, say) is the endpoints' business, as in Zeek, not a failed request."""
    parser.set_dangerous_leniencies(lenient_headers=True)
    return parser


class HttpParser:
    """The HTTP/1.x transactions of one TCP connection, fed with both reassembled streams."""

    def __init__(self):
        self._req = _Request(self)
        self._resp = _Response(self)
        self._req_parser = _lenient(httptools.HttpRequestParser(self._req))
        self._resp_parser = _lenient(httptools.HttpResponseParser(self._resp))
        self._pending: deque[HttpTransaction] = deque()  # requests waiting for their response
        self._rbuf = bytearray()       # response bytes not given to llhttp yet
        self._qheld = bytearray()      # client bytes after an upgrade request, until its answer
        self._upgrade: HttpTransaction | None = None
        self._chunk_state, self._chunk_left = _SIZE, 0
        self._stopped = [False, False]
        self._depth = 0
        self._ts: float | None = None
        self._out: list = []
        self.done = False

    # -- API
    def feed(self, direction: int, data, ts: float | None = None) -> list:
        """The records that ``data`` (the next bytes of ``direction``'s stream) completed."""
        if self.done or not data or self._stopped[direction]:
            return []
        self._ts = ts
        if direction == ORIG:
            if self._upgrade is not None:
                self._hold_request_bytes(data)
            else:
                self._feed_requests(data)
            if self._rbuf and not self._stopped[RESP]:
                self._feed_responses(final=False)  # held response bytes may now have a request
        else:
            self._rbuf += data
            self._feed_responses(final=False)
        return self._take()

    def close(self) -> list:
        """End of the connection: the open response (delimited by the close) and the
        requests never answered, in order."""
        self._flush()
        return self._take()

    def _flush(self) -> None:
        if self.done:
            return
        if self._rbuf and not self._stopped[RESP]:
            self._feed_responses(final=True)
        if not self.done and not self._resp.idle and self._resp.txn is not None:
            self._response_done(self._resp.txn)
        while self._pending:
            self._out.append(self._pending.popleft())
        self.done = True

    # -- requests
    def _feed_requests(self, data) -> None:
        try:
            self._req_parser.feed_data(data)
        except httptools.HttpParserUpgrade as up:
            # CONNECT, or Upgrade: whether the rest is HTTP depends on the answer.
            self._upgrade = self._req.txn
            self._qheld += memoryview(data)[up.args[0]:]
        except httptools.HttpParserError as exc:
            self._stop(ORIG, "bad_HTTP_request", exc)

    def _hold_request_bytes(self, data) -> None:
        self._qheld += data
        if len(self._qheld) > HOLD_LIMIT:
            self._stop(ORIG, "HTTP_upgrade_without_reply",
                       f"{len(self._qheld)} bytes after an upgrade request with no answer")

    # -- responses
    def _feed_responses(self, final: bool) -> None:
        """Give llhttp one response message at a time (its header block, then exactly its
        body), so that the next message starts only once the request it answers is known."""
        resp, buf = self._resp, self._rbuf
        while buf and not self._stopped[RESP] and not self.done:
            if resp.idle:
                if not self._pending and not final and len(buf) <= HOLD_LIMIT:
                    return  # wait for the request this answers
                if not self._header_block(final):
                    return
                continue
            if resp.chunked:
                n = self._chunked_span()
                if n == 0:
                    return
            elif resp.content_length is not None:
                n = resp.content_length - resp.body
            else:
                n = len(buf)  # delimited by the end of the connection
            n = len(buf) if n <= 0 else min(n, len(buf))
            chunk = bytes(buf[:n])
            del buf[:n]
            self._execute_response(chunk)

    def _header_block(self, final: bool) -> bool:
        """Give llhttp the status line and headers of the next response. A response to HEAD
        has no body and a 2xx to CONNECT starts a tunnel, whatever the headers announce:
        their message ends here. False when the block is not complete yet."""
        buf = self._rbuf
        start = len(buf) - len(buf.lstrip(b"\r\n"))
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buf) <= MAX_HEADER_BLOCK and not final:
                return False
            end = len(buf) - 4  # no end in sight: let llhttp judge what there is
        block = bytes(buf[:end + 4])
        del buf[:end + 4]
        txn = self._pending[0] if self._pending else None
        self._execute_response(block)
        resp = self._resp
        if resp.idle or self._stopped[RESP] or self.done or txn is None or resp.txn is not txn:
            return True
        if txn.method == "CONNECT" and 200 <= resp.code <= 299:
            self._tunnel(txn)
        elif txn.method == "HEAD":
            self._response_done(txn)
            resp.idle = True
            # llhttp still waits for the body the headers announce: start a fresh one.
            self._resp_parser = _lenient(httptools.HttpResponseParser(resp))
        elif resp.chunked:
            self._chunk_state, self._chunk_left = _SIZE, 0
        return True

    def _chunked_span(self) -> int:
        """How many of the held bytes belong to the chunked body being parsed (its framing
        read just far enough to find its end; llhttp checks it)."""
        buf, pos = self._rbuf, 0
        while pos < len(buf):
            if self._chunk_state == _DATA:
                take = min(self._chunk_left, len(buf) - pos)
                pos += take
                self._chunk_left -= take
                if self._chunk_left == 0:
                    self._chunk_state = _SIZE
                continue
            nl = buf.find(b"\n", pos)
            if nl < 0:
                # a size or trailer line still incomplete; an absurdly long one goes to
                # llhttp, which rejects it
                return pos if len(buf) - pos <= MAX_HEADER_BLOCK else len(buf)
            line = bytes(buf[pos:nl]).rstrip(b"\r")
            pos = nl + 1
            if self._chunk_state == _TRAILER:
                if not line:
                    return pos  # the empty line after the last chunk ends the message
                continue
            try:
                size = int(line.split(b";", 1)[0].strip() or b"x", 16)
            except ValueError:
                return len(buf)  # not a chunk size: llhttp reports it
            if size:
                self._chunk_state, self._chunk_left = _DATA, size + 2  # the data and its CRLF
            else:
                self._chunk_state = _TRAILER
        return pos

    def _execute_response(self, chunk: bytes) -> None:
        try:
            self._resp_parser.feed_data(chunk)
        except httptools.HttpParserUpgrade:
            if self._resp.code == 101:
                self._tunnel(self._resp.txn)
        except httptools.HttpParserError as exc:
            self._stop(RESP, "bad_HTTP_reply", exc)

    # -- transactions
    def _number(self, txn: HttpTransaction) -> None:
        self._depth += 1
        txn.trans_depth = self._depth

    def _answered(self) -> HttpTransaction:
        """The transaction a response whose headers just completed belongs to."""
        if self._pending:
            return self._pending[0]
        self._out.append(Weird("unmatched_HTTP_reply", "", RESP))
        txn = HttpTransaction(ts=self._ts)
        self._number(txn)
        self._pending.append(txn)
        return txn

    def _response_done(self, txn: HttpTransaction) -> None:
        if self._pending and self._pending[0] is txn:
            self._pending.popleft()
        self._out.append(txn)
        if txn is self._upgrade and not self.done:  # the answer to CONNECT/Upgrade was not a tunnel
            self._upgrade = None
            held, self._qheld = bytes(self._qheld), bytearray()
            if held:
                self._feed_requests(held)

    def _tunnel(self, txn: HttpTransaction) -> None:
        """The answer ``txn`` got starts a tunnel: the rest of the connection is not HTTP."""
        self.done = True
        self._response_done(txn)
        self._rbuf.clear()
        self._qheld.clear()
        while self._pending:
            self._out.append(self._pending.popleft())

    def _stop(self, direction: int, name: str, why) -> None:
        self._stopped[direction] = True
        self._out.append(Weird(name, str(why), direction))
        if direction == RESP:
            self._rbuf.clear()
        if all(self._stopped):
            self._flush()

    def _take(self) -> list:
        out, self._out = self._out, []
        return out
