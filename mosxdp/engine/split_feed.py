"""The input of a split run (engine/workers.py): the capture mapped, and its records given
to the workers by the symmetric flow hash of core/split.py, through a bucket table that
balances the workers' frames over the whole capture, in messages of chunks. The loops over
the records are C (_splitscan.c) unless MOSXDP_PURE_PYTHON is set or the module is
missing; their twins here in Python do the same.

A message (``MSG``) is the first frame number of its chunk, the chunk's frames, how many
are the worker's own and how many batches end in it; then the own frames' numbers in the
input, their record offsets and the timestamps of the batch ends (arrays of int64). A
first frame number below zero ends the input: (-1, frames, last timestamp, 0).
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

# Frames per message to the workers (rounded up to whole batches); a pipe holds a few.
CHUNK_FRAMES = 4096
MSG = struct.Struct("<qqqq")          # first frame number, frames, own frames, batch ends
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


def bucket_counts(scan):
    """Frames per bucket of the flow hash (core/split.py) over the whole capture, up to its
    last whole record: what balance() fills the bucket table from."""
    counts = array("q", bytes(8 << BUCKET_BITS))
    mm = scan.map
    off = 24
    while True:
        off = _count_buckets(mm, off, scan.order == "<", counts, scan.linktype)
        record = _record_at(scan, off)
        if record is None:
            return counts
        start, caplen = record
        value = frame_hash(scan.ethernet(start, caplen))
        counts[0 if value is None else value >> BUCKET_SHIFT] += 1   # worker 0: any bucket
        off = start + caplen


def split_records(scan, workers, batch_size, send):
    """Give each record its worker by the bucket table balanced over the capture (one pass
    to count, one to split); ``send(worker, message)`` says whether the worker goes on
    (False: it stopped, and so does the split, after this chunk). Returns (frames, last
    ts, error or None)."""
    table = bytes(balance(bucket_counts(scan), workers))
    mm = scan.map
    little = scan.order == "<"
    ns = scan.nanosecond
    chunk = -(-CHUNK_FRAMES // batch_size) * batch_size
    off = 24
    index = 0
    last = 24
    while True:
        first = index
        limit = first + chunk
        numbers = [array("q", bytes(8 * chunk)) for _ in range(workers)]
        offsets = [array("q", bytes(8 * chunk)) for _ in range(workers)]
        owned = array("q", bytes(8 * workers))
        ends = array("q", bytes(8 * (chunk // batch_size)))
        n_ends = 0
        while index < limit:
            index, off, last, n_ends = _assign(mm, off, last, little, ns, index, limit,
                                               batch_size, table, numbers, offsets, owned,
                                               ends, n_ends, scan.linktype)
            if index == limit:
                break
            record = _record_at(scan, off)
            if record is None:
                break
            # A frame off the fast path: its hash by the core's parser.
            start, caplen = record
            value = frame_hash(scan.ethernet(start, caplen))
            worker = 0 if value is None else table[value >> BUCKET_SHIFT]
            n_ends = _give(mm, little, ns, batch_size, worker, index, off, numbers, offsets,
                           owned, ends, n_ends)
            last = off
            off = start + caplen
            index += 1
        if index == first:
            break
        going = True
        tail = ends[:n_ends].tobytes()
        for worker in range(workers):
            own = owned[worker]
            going &= send(worker, MSG.pack(first, index - first, own, n_ends)
                          + numbers[worker][:own].tobytes() + offsets[worker][:own].tobytes()
                          + tail)
        if not going:
            return index, _ts(mm, last, little, ns), None
        if index < limit:
            break
    return index, _ts(mm, last, little, ns) if index else 0, scan.check_end(off)


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


def count_buckets(mm, off, little, counts, linktype):
    """Count the fast-path frames' buckets into ``counts`` from the record at ``off`` on;
    returns the offset of the first record it did not count: the end, a record cut short,
    or a frame off the fast path (here every frame of a link type other than Ethernet)."""
    if linktype != LINKTYPE_ETHERNET:
        return off
    caplen_at = struct.Struct(("<" if little else ">") + "I").unpack_from
    while True:
        record = _fast_record(mm, off, caplen_at)
        if record is None:
            return off
        start, caplen, value = record
        counts[value >> BUCKET_SHIFT] += 1
        off = start + caplen


def assign(mm, off, last, little, ns, index, limit, batch_size, table, numbers, offsets,
           owned, ends, n_ends, linktype):
    """Give the records from ``off`` (frame number ``index``) their workers by ``table``
    until frame ``limit``, the end, a record cut short or a frame off the fast path:
    each worker's frame numbers and offsets go to numbers[w] and offsets[w] at owned[w]
    (then counted), the timestamp of every batch's last frame to ``ends`` at ``n_ends``.
    Returns (index, off, offset of the last record given (``last`` if none), n_ends)."""
    if linktype != LINKTYPE_ETHERNET:
        return index, off, last, n_ends
    caplen_at = struct.Struct(("<" if little else ">") + "I").unpack_from
    while index < limit:
        record = _fast_record(mm, off, caplen_at)
        if record is None:
            break
        start, caplen, value = record
        n_ends = _give(mm, little, ns, batch_size, table[value >> BUCKET_SHIFT], index, off,
                       numbers, offsets, owned, ends, n_ends)
        last = off
        off = start + caplen
        index += 1
    return index, off, last, n_ends


def _give(mm, little, ns, batch_size, worker, index, off, numbers, offsets, owned, ends,
          n_ends):
    """Frame ``index`` (its record at ``off``) to ``worker``; returns n_ends, one more when
    the frame ends a batch (its timestamp in ``ends``)."""
    numbers[worker][owned[worker]] = index
    offsets[worker][owned[worker]] = off
    owned[worker] += 1
    if (index + 1) % batch_size == 0:
        ends[n_ends] = _ts(mm, off, little, ns)
        n_ends += 1
    return n_ends


try:
    if PURE_PYTHON:
        raise ImportError
    from ._splitscan import assign as _assign, count_buckets as _count_buckets
except ImportError:
    _assign, _count_buckets = assign, count_buckets
