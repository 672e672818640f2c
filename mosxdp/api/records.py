"""Records for existing pipelines (extensions): mosx_community_id, mosx_open_log,
mosx_frame_count.

A log opened with mosx_open_log writes through mosx_open_output (mosxdp/io/outputs.py:
bounded buffering, planted links refused, failed writes counted and reported), one
record per ``write``: a JSON line, or a line of Zeek's TSV format (mosxdp/core/zeeklog.py)
after its header. docs/pipeline.md says how the formats join up downstream.
"""
import json
import time

from ..core import zeeklog
from ..core.communityid import community_id
from .context import _stack
from .outputs import mosx_open_output

FORMATS = ("json", "tsv")


def mosx_community_id(proto, saddr, daddr, sport=None, dport=None, seed=0):
    """The Community ID v1 of a flow (mosxdp/core/communityid.py): ``proto`` its IP
    protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6), the addresses as text or packed
    bytes, the ports (ICMP: the message type and code); the same from either direction.
    ``seed`` 0 to 65535 (ValueError otherwise)."""
    return community_id(proto, saddr, daddr, sport, dport, seed)


def mosx_frame_count(mctx):
    """Frames the context's core has taken so far, the one being processed included:
    offline, in a callback, the number of the current packet in the capture (1 for the
    first, as Suricata's ``pcap_cnt`` and Wireshark's frame numbers count)."""
    return _stack(mctx).counters["frames"]


class _JsonLog:
    """One JSON object per line."""

    def __init__(self, output):
        self.output = output

    def write(self, record):
        self.output.write(json.dumps(record) + "\n")

    def close(self):
        self.output.close()


class _ZeekLog:
    """Zeek's TSV: the header now, a line per record, ``#close`` at the end."""

    def __init__(self, output, path, fields, types):
        self.output = output
        self.fields = tuple(fields)
        self.types = tuple(types)
        for line in zeeklog.header_lines(path, self.fields, self.types, time.time()):
            output.write(line)
        self._closed = False

    def write(self, record):
        self.output.write(zeeklog.record_line(record, self.fields, self.types))

    def close(self):
        if not self._closed:
            self._closed = True
            self.output.write(zeeklog.close_line(time.time()))
        self.output.close()


def mosx_open_log(mctx, path, fmt="json", *, zeek_path=None, fields=(), types=()):
    """A log of records (dicts) at ``path`` ('-': standard output), opened now as
    mosx_open_output opens it. ``fmt`` "json": one JSON object per line. "tsv": Zeek's
    TSV, whose header names the log ``zeek_path`` (conn, ...) and lists ``fields`` (a
    record's keys, in column order) and their Zeek ``types`` (time, interval, string, enum,
    addr, port, count); a key a record lacks is written unset (``-``). Returns an object
    with ``write(record)`` and ``close()`` (TSV: writes ``#close``). ValueError for an
    unknown format or type; OSError naming a path that cannot be opened."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "tsv":
        zeeklog.check_types(types)
        if not zeek_path or len(fields) != len(types) or not fields:
            raise ValueError("a TSV log needs its zeek_path, and one type per field")
    output = mosx_open_output(mctx, path)
    if fmt == "json":
        return _JsonLog(output)
    return _ZeekLog(output, zeek_path, fields, types)
