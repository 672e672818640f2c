"""The input of a split run (engine/workers.py): the capture mapped, and its records given
to the workers by the symmetric flow hash of core/split.py, in messages of chunks.

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

from ..core.split import MULTIPLIER, frame_worker
from ..io.pcap import _MAX_RECORD, PcapFormatError, PcapReader

# Frames per message to the workers (rounded up to whole batches); a pipe holds a few.
CHUNK_FRAMES = 4096
MSG = struct.Struct("<qqqq")          # first frame number, frames, own frames, batch ends
PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", False), b"\xa1\xb2\xc3\xd4": (">", False),
              b"\x4d\x3c\xb2\xa1": ("<", True), b"\xa1\xb2\x3c\x4d": (">", True)}
_MASK64 = (1 << 64) - 1


class Scan:
    """The records of a classic pcap file, mapped: (frame number, record offset, ts)."""

    def __init__(self, path):
        self.path = path
        self.file = open(path, "rb")
        size = os.fstat(self.file.fileno()).st_size
        self.map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self.order, self.nanosecond = PCAP_MAGIC[bytes(self.map[:4])]
        self.record = struct.Struct(self.order + "IIII")
        self.size = size

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


def split_records(scan, workers, batch_size, send):
    """Read the records and give each its worker; ``send(worker, message)`` says whether
    the worker goes on (False: it stopped, and so does the split, after this chunk).
    Returns (frames, last ts, error or None)."""
    mm = scan.map
    size = scan.size
    caplen_at = struct.Struct(scan.order + "I").unpack_from
    ts_at = struct.Struct(scan.order + "II").unpack_from
    ns = scan.nanosecond
    last = 24
    addresses = struct.Struct("!II").unpack_from     # the hash of core/split.py, inline
    tuple4 = struct.Struct("!IIHH").unpack
    known = {}
    mul = MULTIPLIER
    chunk = -(-CHUNK_FRAMES // batch_size) * batch_size
    off = 24
    index = 0

    def _ts(at):
        sec, frac = ts_at(mm, at)
        return sec * 1_000_000 + (frac // 1000 if ns else frac)

    while True:
        first = index
        own = [(array("q"), array("q")) for _ in range(workers)]
        ends = array("q")
        limit = first + chunk
        while index < limit and off + 16 <= size:
            caplen = caplen_at(mm, off + 8)[0]
            start = off + 16
            if start + caplen > size or caplen > _MAX_RECORD:
                break     # check_end names it
            # A TCP segment of untagged IPv4 without options: its worker by its addresses
            # and ports, kept per direction (a dict lookup costs less than the hash).
            if caplen >= 38 and mm[start + 12:start + 15] == b"\x08\x00\x45" \
                    and mm[start + 23] == 6 and not (mm[start + 20] & 0x3F or mm[start + 21]):
                key = mm[start + 26:start + 38]
                worker = known.get(key)
                if worker is None:
                    src, dst, sport, dport = tuple4(key)
                    worker = known[key] = ((((((src << 16) | sport) * mul & _MASK64) >> 32)
                                            ^ ((((dst << 16) | dport) * mul & _MASK64) >> 32))
                                           * workers) >> 32
                    if len(known) > 1 << 16:
                        known.clear()
            elif caplen >= 38 and mm[start + 12:start + 15] == b"\x08\x00\x45":
                # Not TCP, or a fragment: by the address pair.
                src, dst = addresses(mm, start + 26)
                worker = (((((src << 16) * mul & _MASK64) >> 32)
                           ^ (((dst << 16) * mul & _MASK64) >> 32)) * workers) >> 32
            else:
                worker = frame_worker(memoryview(mm)[start:start + caplen], workers)
            numbers, offsets = own[worker]
            numbers.append(index)
            offsets.append(off)
            last = off
            off = start + caplen
            index += 1
            if index % batch_size == 0:
                ends.append(_ts(last))
        if index == first:
            break
        going = True
        for worker, (numbers, offsets) in enumerate(own):
            going &= send(worker, MSG.pack(first, index - first, len(numbers), len(ends))
                          + numbers.tobytes() + offsets.tobytes() + ends.tobytes())
        if not going:
            return index, _ts(last), None
        if index < limit:
            break
    return index, _ts(last) if index else 0, scan.check_end(off)
