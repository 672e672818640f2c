"""A BPF ring buffer (BPF_MAP_TYPE_RINGBUF) read in place: the observe-only copies.

The kernel's layout (kernel/bpf/ringbuf.c): the map fd is mmapped as one consumer page
(read-write: the consumer position, a u64 at its start) followed by one producer page (the
producer position) and the data area, mapped twice in a row so that a record that wraps
around the end is contiguous. Each record starts on an 8-byte boundary with an 8-byte header:
a u32 length whose bit 31 says the producer is still writing it (busy) and bit 30 that it
was discarded, and a u32 page offset; the record's bytes follow.

``take`` reads every complete record after the consumer position in one pass: a Python
loop over memoryview slices, no ctypes call per record (bcc's ring_buffer_poll calls back
into Python once per record). The records stay valid until ``release`` moves the consumer
position past them, which hands their space back to the producer. x86-64 only, as the
AF_XDP rings (xsk.py): loads and stores of aligned words are ordered there.
"""
from __future__ import annotations

import mmap
import struct

__all__ = ["RingBuffer"]

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8
_u32 = struct.Struct("<I")


class RingBuffer:
    """The ring buffer map ``fd`` of ``size`` bytes (its max_entries, a power of two)."""

    def __init__(self, fd: int, size: int):
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size must be a power of two, not {size}")
        page = mmap.PAGESIZE
        self.size = size
        self._mask = size - 1
        self._cons_map = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._prod_map = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                                   offset=page)
        self._cons = memoryview(self._cons_map).cast("Q")     # [0]: consumer position
        self._prod = memoryview(self._prod_map)[:8].cast("Q")  # [0]: producer position
        self._data = memoryview(self._prod_map)[page:]
        self._pos = self._cons[0]

    def pending(self) -> int:
        """Bytes written by the producer and not yet taken."""
        return self._prod[0] - self._pos

    def take(self, max_records: int) -> list:
        """Up to ``max_records`` complete records after the last one taken, as read-only
        memoryviews of their bytes (valid until :meth:`release`)."""
        out = []
        pos = self._pos
        prod = self._prod[0]
        data = self._data
        mask = self._mask
        unpack = _u32.unpack_from
        while pos < prod and len(out) < max_records:
            at = pos & mask
            length = unpack(data, at)[0]
            if length & _BUSY:
                break                     # still being written: later records wait for it
            size = length & ~(_BUSY | _DISCARD)
            if not length & _DISCARD:
                out.append(data[at + _HDR:at + _HDR + size])
            pos += (size + _HDR + 7) & ~7
        self._pos = pos
        return out

    def release(self) -> None:
        """Give the space of every record taken back to the producer."""
        self._cons[0] = self._pos

    def close(self) -> None:
        for view in (self._cons, self._prod, self._data):
            view.release()
        for mapping in (self._cons_map, self._prod_map):
            try:
                mapping.close()
            except BufferError:
                pass    # a record view is still held: the mapping goes with its last view

    def __enter__(self) -> "RingBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
