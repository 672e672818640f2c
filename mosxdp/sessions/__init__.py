"""Session parsers (sans-IO): TLS handshakes, HTTP/1.x transactions and DNS messages.

Each parser follows one connection: ``feed(direction, data, ts=None)`` with the next bytes
of one direction (ORIG: client to server, RESP: server to client; TCP: the reassembled
stream in pieces of any size; UDP: one whole datagram) returns the records those bytes
completed, and ``close()`` returns what the end of the connection completes. Malformed
input never raises: it becomes a `Weird` record. docs/sessions.md lists the fields.
"""
from .common import ORIG, RESP, SessionError, Weird
from .dns import DnsParser, DnsTransaction
from .http import HttpParser, HttpTransaction
from .tls import ClientHello, ServerHello, TlsParser, TlsSession

__all__ = ["ORIG", "RESP", "Weird", "SessionError", "TlsParser", "ClientHello", "ServerHello",
           "TlsSession", "HttpParser", "HttpTransaction", "DnsParser", "DnsTransaction"]
