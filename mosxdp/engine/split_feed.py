"""The input of a split run (engine/workers.py): the capture mapped, and a plan of its
records that every worker reads: per frame its bucket of the symmetric flow hash of
core/split.py and its record's length, and the bucket table that gives each bucket a
worker, balanced over the whole capture. The parent makes the plan in one pass before
the fork; each worker then walks it and processes the frames of its buckets. The loop over
the records is C (_splitscan.c) unless MOSXDP_PURE_PYTHON is set or the module is missing;
its twin here in Python does the same.
"""
from __future__ import annotations

import mmap
import os
import struct
from array import array

from ..core.compiled import PURE_PYTHON
from ..core.split import BUCKET_BITS, BUCKET_SHIFT, MULTIPLIER, balance, frame_hash
from ..io.linklayer import LINK_LAYERS
from ..io.pcap import _MAX_RECORD, LINKTYPE_ETHERNET, PcapFormatError, PcapReader

# Frames per chunk of the plan's arrays (6 bytes a frame: 384 KiB a chunk).
CHUNK_FRAMES = 1 << 16
# The bucket of a frame without IP: worker 0 (the table's last entry).
NO_IP_BUCKET = 1 << BUCKET_BITS
PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", False), b"\xa1\xb2\xc3\xd4": (">", False),
              b"\x4d\x3c\xb2\xa1": ("<", True), b"\xa1\xb2\x3c\x4d": (">", True)}
_MASK64 = (1 << 64) - 1
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


class Scan:
    """The records of a classic pcap file, mapped: (frame number, record offset, ts)."""

    def __init__(self, path):
        self.path = path
        self.file = open(path, "rb")
        size = os.fstat(self.file.fileno()).st_size
        # Read-only and shared: populated at once (one pass of the kernel over the page
        # cache instead of a fault per page while counting; the split reads every page).
        self.map = mmap.mmap(self.file.fileno(), 0, flags=mmap.MAP_SHARED | _POPULATE,
                             prot=mmap.PROT_READ) if size else b""
        self.order, self.nanosecond = PCAP_MAGIC[bytes(self.map[:4])]
        self.record = struct.Struct(self.order + "IIII")
        self.size = size
        self.linktype = self.linktype_of(self.map, self.order)
        self.link = LINK_LAYERS.get(self.linktype)

    @staticmethod
    def linktype_of(mm, order):
        """The capture's link type (the reader refused the link types not read)."""
        (network,) = struct.unpack_from(order + "I", mm, 20)
        return network & 0xFFFF

    def ethernet(self, start, caplen, origlen=None):
        """The record's frame at ``start`` as the core gets it: as it is in an Ethernet
        capture, else an Ethernet copy (the map is read-only). With ``origlen``: (the frame,
        its length on the wire when the capture cut it, else 0)."""
        frame = memoryview(self.map)[start:start + caplen]
        grown = 0
        if self.link is not None:
            frame, grown = self.link.ethernet(memoryview(bytearray(frame)), 0, 0, caplen)
        if origlen is None:
            return frame
        return frame, origlen + grown if caplen < origlen else 0

    def close(self):
        if isinstance(self.map, mmap.mmap):
            try:
                self.map.close()
            except BufferError:
                pass      # a view is still held (a failed merge): freed with it
        self.file.close()

    def check_end(self, off):
        """At the last whole record: the reader's error for what follows it, if any (a
        record cut short), so that the message is the one of a run on one worker."""
        if off == self.size:
            return None
        try:
            with PcapReader(self.path) as reader:
                for _ in reader:
                    pass
        except PcapFormatError as exc:
            return exc
        return None


class Plan:
    """A split run's input as its workers read it, made by the parent before the fork and
    only read after it: the capture's records in order, in chunks of (buckets, sizes,
    count): each frame's bucket (uint16; NO_IP_BUCKET for a frame without IP) and its
    record's length in the file (uint32, header included); ``table``, the worker of each
    bucket; the number of frames, the last one's timestamp, and the reader's error for what
    follows the last whole record (None when the capture ends there)."""

    def __init__(self, chunks, table, frames, last_ts, error):
        self.chunks = chunks
        self.table = table
        self.frames = frames
        self.last_ts = last_ts
        self.error = error

    def owners(self):
        """The worker of each frame, in order."""
        table = self.table
        for buckets, _sizes, count in self.chunks:
            for i in range(count):
                yield table[buckets[i]]


def plan_split(scan, workers):
    """One pass over the capture up to its last whole record: every frame's bucket and
    record length, the frames per bucket, and from them the bucket table (core/split.py's
    balance: the largest buckets first, each to the worker with the fewest frames)."""
    counts = array("q", bytes(8 << BUCKET_BITS))
    mm = scan.map
    little = scan.order == "<"
    chunks = []
    off = 24
    last = None
    frames = 0
    more = True
    while more:
        buckets = array("H", bytes(2 * CHUNK_FRAMES))
        sizes = array("I", bytes(4 * CHUNK_FRAMES))
        n = 0
        while n < CHUNK_FRAMES:
            off, n = _scan_records(mm, off, little, counts, scan.linktype, buckets, sizes, n)
            if n == CHUNK_FRAMES:
                break
            record = _record_at(scan, off)
            if record is None:
                more = False
                break
            # A frame off the fast path: its hash by the core's parser.
            start, caplen = record
            value = frame_hash(scan.ethernet(start, caplen))
            bucket = NO_IP_BUCKET if value is None else value >> BUCKET_SHIFT
            counts[0 if value is None else bucket] += 1
            buckets[n] = bucket
            sizes[n] = 16 + caplen
            off = start + caplen
            n += 1
        if n:
            chunks.append((buckets, sizes, n))
            frames += n
            last = off - sizes[n - 1]
    table = bytes(balance(counts, workers)) + b"\x00"       # NO_IP_BUCKET: worker 0
    last_ts = _ts(mm, last, little, scan.nanosecond) if last is not None else 0
    return Plan(chunks, table, frames, last_ts, scan.check_end(off))


def _record_at(scan, off):
    """(start, caplen) of the whole record at ``off``, or None at the end of the capture or
    where a record is cut short or corrupt (check_end names it)."""
    if off + 16 > scan.size:
        return None
    caplen = struct.unpack_from(scan.order + "I", scan.map, off + 8)[0]
    start = off + 16
    if start + caplen > scan.size or caplen > _MAX_RECORD:
        return None
    return start, caplen


def _ts(mm, at, little, ns):
    sec, frac = struct.unpack_from("<II" if little else ">II", mm, at)
    return sec * 1_000_000 + (frac // 1000 if ns else frac)


# -- the per-record loops: _splitscan.c, or these twins -------------------------------------

_ADDRESSES = struct.Struct("!II").unpack_from
_TUPLE4 = struct.Struct("!IIHH").unpack_from


def _fast_hash(mm, start, caplen):
    """The flow hash of an untagged IPv4 frame without IP options (core/split.py, read
    here in one unpack), or None for any other frame: the core's parser reads those."""
    if caplen < 38 or mm[start + 12:start + 15] != b"\x08\x00\x45":
        return None
    if mm[start + 23] == 6 and not (mm[start + 20] & 0x3F or mm[start + 21]):
        src, dst, sport, dport = _TUPLE4(mm, start + 26)
    else:
        # Not TCP, or a fragment: by the address pair.
        src, dst = _ADDRESSES(mm, start + 26)
        sport = dport = 0
    return ((((src << 16) | sport) * MULTIPLIER & _MASK64) >> 32) \
        ^ ((((dst << 16) | dport) * MULTIPLIER & _MASK64) >> 32)


def _fast_record(mm, off, caplen_at):
    """(start, caplen, flow hash) of the whole record at ``off`` when its frame is on the
    fast path, else None (the end, a record cut short, or a frame the parser must read)."""
    if off + 16 > len(mm):
        return None
    caplen = caplen_at(mm, off + 8)[0]
    start = off + 16
    if start + caplen > len(mm) or caplen > _MAX_RECORD:
        return None
    value = _fast_hash(mm, start, caplen)
    return None if value is None else (start, caplen, value)


def scan_records(mm, off, little, counts, linktype, buckets, sizes, index):
    """From the record at ``off`` (frame number ``index``) on: each fast-path frame's bucket
    counted in ``counts`` and stored in ``buckets[index]``, its record's length in
    ``sizes[index]``; stops at the end, a record cut short, a frame off the fast path (here
    every frame of a link type other than Ethernet) or when the arrays are full. Returns
    (offset of the first record not read, index)."""
    if linktype != LINKTYPE_ETHERNET:
        return off, index
    caplen_at = struct.Struct(("<" if little else ">") + "I").unpack_from
    room = min(len(buckets), len(sizes))
    while index < room:
        record = _fast_record(mm, off, caplen_at)
        if record is None:
            break
        start, caplen, value = record
        bucket = value >> BUCKET_SHIFT
        counts[bucket] += 1
        buckets[index] = bucket
        sizes[index] = 16 + caplen
        off = start + caplen
        index += 1
    return off, index


try:
    if PURE_PYTHON:
        raise ImportError
    from ._splitscan import scan_records as _scan_records
except ImportError:
    _scan_records = scan_records
