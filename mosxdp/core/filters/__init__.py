"""Monitor filters: the mOS filter grammar compiled to a Python predicate and C expressions.

``mtcp_bind_monitor_filter`` takes pcap-like filter strings (the grammar: ``grammar.py``).
One is parsed into a small tree with its constants folded (``tree.py``) and compiled:

* into **one Python function** that tests a parsed packet: ``MonitorFilter.match(pkt) -> bool``
  (``predicate.py``);
* into **C expressions** over ``struct mx_flow_view *v`` for the XDP program, on the frame as
  seen or with its sides swapped: ``MonitorFilter.c_expr(byteorder, reverse)`` (``c_expr.py``).

Sans-IO: stdlib only.  ``ipaddress`` is used at compile time, never per packet.
"""
from __future__ import annotations

import sys
from functools import lru_cache

from .c_expr import c_expression
from .grammar import MAX_DEPTH, FilterError, parse
from .predicate import compile_predicate
from .tree import STREAM_GUARD, TRUE, simplify

__all__ = ["FilterError", "MonitorFilter", "compile_filter", "MAX_DEPTH"]


class MonitorFilter:
    """A compiled monitor filter (immutable; ``compile_filter`` caches them).

    ``match(pkt) -> bool``: the generated predicate itself (an instance attribute, so a call
    costs one Python function call).  ``text``: the filter as given (None for none).  ``raw``:
    a raw packet filter (else a stream filter, which implicitly requires TCP).
    ``matches_everything``: the filter puts no constraint on the packets its socket type sees
    (every frame for a raw filter, every TCP packet for a stream filter): an empty filter, or
    one that folds to true (``tcp`` as a stream filter).  ``source``: the generated Python.
    """

    __slots__ = ("text", "raw", "matches_everything", "match", "source", "_tree", "_c_cache")

    def __init__(self, text, raw, expr):
        self.text = text
        self.raw = raw
        self.matches_everything = expr is TRUE
        # What is compiled: a stream filter's tree with its TCP requirement.
        self._tree = expr if raw else simplify(("and", (STREAM_GUARD, expr)))
        self._c_cache = {}
        self.source, self.match = compile_predicate(self._tree, text)

    def c_expr(self, byteorder: str | None = None, reverse: bool = False) -> str:
        """The predicate as a C expression over ``struct mx_flow_view *v``.

        Constants are laid out for ``byteorder`` ("little"/"big"; default: this host's, the
        host that compiles and runs the XDP program).  ``reverse``: the predicate on the frame
        with source and destination (addresses and ports) swapped, so that a filter on a
        flow's first packet can select its replies too.
        """
        bo = byteorder or sys.byteorder
        if bo not in ("little", "big"):
            raise ValueError(f"byteorder must be 'little' or 'big', not {byteorder!r}")
        out = self._c_cache.get((bo, reverse))
        if out is None:
            out = self._c_cache[bo, reverse] = c_expression(self._tree, bo, reverse)
        return out

    def __repr__(self):
        kind = "raw" if self.raw else "stream"
        return f"<MonitorFilter {kind} {self.text!r}>"


@lru_cache(maxsize=256)
def _compile(text, raw):
    return MonitorFilter(text, raw, parse(text, raw))


def compile_filter(text: str | None, *, raw: bool = False) -> MonitorFilter:
    """Compile a monitor filter.  ``raw=True`` for a raw packet filter (``raw_pkt_filter``),
    else a stream filter (``stream_syn_filter``/``stream_orphan_filter``).

    Raises ``FilterError`` (a ValueError) naming the offending token and its position.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise FilterError(bytes(text).decode("ascii", "replace"),
                              "filter is not ASCII") from None
    if text is not None and not isinstance(text, str):
        raise TypeError(f"a filter is a str or None, not {type(text).__name__}")
    return _compile(text, bool(raw))
