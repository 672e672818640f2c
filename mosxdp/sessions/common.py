"""What the session parsers share: the two directions, the weird record, the error type.

Every parser takes the bytes of one connection (TCP: each side's reassembled stream, in
order, in pieces of any size; UDP: whole datagrams) through ``feed(direction, data, ts)``
and returns the records that those bytes completed. A parser never raises on what the
network sends: malformed input becomes a `Weird` record, named like the entries of Zeek's
weird.log, and the parser stops looking at what it can no longer make sense of.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ORIG", "RESP", "Weird", "SessionError", "text"]

# Zeek's words: the originator (the client, who opened the connection) and the responder.
# Bytes read from the mOS buffer of MOS_SIDE_SVR (what the server received) are ORIG.
ORIG = 0
RESP = 1


@dataclass(frozen=True, slots=True)
class Weird:
    """Something malformed or unexpected in a session (a row of Zeek's weird.log).

    name: the weird's name (Zeek's own name where Zeek has one for the same thing);
    addl: what exactly, for a human; direction: ORIG, RESP or None (not one side's)."""

    name: str
    addl: str = ""
    direction: int | None = None


class SessionError(ValueError):
    """Malformed protocol bytes: `name` is the weird name, the message says what was wrong."""

    def __init__(self, name: str, detail: str):
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail

    def weird(self, direction: int | None = None) -> Weird:
        return Weird(self.name, self.detail, direction)


def text(raw: bytes) -> str:
    """Protocol bytes as log text: UTF-8, any other byte as a ``\\xNN`` escape (Zeek's spelling)."""
    return raw.decode("utf-8", "backslashreplace")
