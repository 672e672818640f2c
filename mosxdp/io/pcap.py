"""Offline frame source and sink: pcap / pcapng reader, classic pcap writer.

Reader
------
``PcapReader(path)`` opens a classic pcap file (either byte order, microsecond
or nanosecond magic, and the "modified" Kuznetzov variant) or a pcapng file
(any number of sections of either byte order, any number of interfaces,
``if_tsresol`` and ``if_tsoffset``; Enhanced, Simple and obsolete Packet
Blocks; every other block type is skipped).  Only Ethernet (link type 1) is
accepted.

Iterating yields ``(ts_us, frame)``: ``ts_us`` is the packet timestamp in
integer microseconds since the epoch, ``frame`` a **writable** ``memoryview``
of the captured bytes.  The whole file is loaded into one private buffer
(a ``bytearray``, or a copy-on-write ``mmap`` for large files) and every frame
is a view into it, so nothing is copied per packet and writing into a frame
(the monitor overwrites packets in place) changes only the in-memory copy,
never the file.  Callers may only rely on a view being valid until the next
item is requested; in this implementation it actually stays valid for as long
as it is referenced.

Every problem with the file is a ``PcapFormatError`` (a ``ValueError``) whose
message is one line starting with the file name.  A truncated file (a record
header or a record's data cut short) raises only after every complete packet
before the cut has been yielded; the message names the byte offset of the cut
and how many packets were read.

``reader.records()`` yields ``(ts_us, frame, orig_len)`` (``orig_len`` is the
length on the wire, larger than ``len(frame)`` when the capture was cut by a
snap length).

Writer
------
``PcapWriter(path, snaplen=65535, out=None)`` writes a classic little-endian
microsecond pcap with link type Ethernet; ``write(ts_us, frame)`` appends one
record (frames longer than ``snaplen`` are cut, the original length kept).
"""

from __future__ import annotations

import mmap
import os
import struct

__all__ = [
    "PcapFormatError",
    "PcapReader",
    "PcapWriter",
    "LINKTYPE_ETHERNET",
    "linktype_name",
]

LINKTYPE_ETHERNET = 1

_LINKTYPE_NAMES = {
    0: "NULL",
    1: "ETHERNET",
    6: "IEEE802_5",
    9: "PPP",
    10: "FDDI",
    12: "RAW",
    14: "RAW",
    101: "RAW",
    104: "C_HDLC",
    105: "IEEE802_11",
    108: "LOOP",
    113: "LINUX_SLL",
    127: "IEEE802_11_RADIOTAP",
    228: "IPV4",
    229: "IPV6",
    276: "LINUX_SLL2",
}


def linktype_name(linktype: int) -> str:
    return _LINKTYPE_NAMES.get(linktype, "unknown")


class PcapFormatError(ValueError):
    """The file is not a usable Ethernet pcap/pcapng file (one-line message)."""


# Classic pcap magics as read with a little-endian "<I".
_MAGIC_US_LE = 0xA1B2C3D4  # file written little-endian, microseconds
_MAGIC_US_BE = 0xD4C3B2A1  # file written big-endian, microseconds
_MAGIC_NS_LE = 0xA1B23C4D
_MAGIC_NS_BE = 0x4D3CB2A1
_MAGIC_KUZ_LE = 0xA1B2CD34  # "modified" pcap (24-byte record headers), microseconds
_MAGIC_KUZ_BE = 0x34CDB2A1

_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BOM = 0x1A2B3C4D
_PCAPNG_IDB = 0x00000001
_PCAPNG_OPB = 0x00000002
_PCAPNG_SPB = 0x00000003
_PCAPNG_EPB = 0x00000006

# Above this size the file is mapped copy-on-write instead of read into memory.
_MMAP_THRESHOLD = 64 << 20
# A record claiming more than this is a corrupt header, not a short file.
_MAX_RECORD = 256 << 20

_U32 = {"<": struct.Struct("<I"), ">": struct.Struct(">I")}
_PCAP_HDR = {"<": struct.Struct("<HHiIII"), ">": struct.Struct(">HHiIII")}
_REC_HDR = {"<": struct.Struct("<IIII"), ">": struct.Struct(">IIII")}
_EPB_HDR = {"<": struct.Struct("<IIIIIII"), ">": struct.Struct(">IIIIIII")}
# The obsolete packet block: the enhanced one's fields, but a 16-bit interface id
# and a 16-bit drops count (skipped) where the enhanced block has a 32-bit id.
_OPB_HDR = {"<": struct.Struct("<IIHxxIIII"), ">": struct.Struct(">IIHxxIIII")}
_SPB_HDR = {"<": struct.Struct("<III"), ">": struct.Struct(">III")}
_IDB_HDR = {"<": struct.Struct("<IIHHI"), ">": struct.Struct(">IIHHI")}
_OPT_HDR = {"<": struct.Struct("<HH"), ">": struct.Struct(">HH")}
_I64 = {"<": struct.Struct("<q"), ">": struct.Struct(">q")}


class _Interface:
    """One pcapng interface: link type, snap length and timestamp conversion."""

    __slots__ = ("linktype", "snaplen", "mul", "div", "shift", "off_us", "identity")

    def __init__(self, linktype, snaplen, mul=1, div=1, shift=0, off_us=0):
        self.linktype = linktype
        self.snaplen = snaplen
        self.mul = mul
        self.div = div
        self.shift = shift
        self.off_us = off_us
        # Microsecond resolution and no offset: the raw value is the answer.
        self.identity = mul == 1 and div == 1 and shift == 0 and off_us == 0

    def to_us(self, raw: int) -> int:
        if self.identity:
            return raw
        return (((raw * self.mul) >> self.shift) // self.div) + self.off_us


def _private_copy(path):
    """``(buffer, mapping)``: the file's bytes in a writable buffer of our own.

    Small files are read into a ``bytearray`` (mapping ``None``); large ones
    are mapped copy-on-write, and the buffer is that mapping.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size >= _MMAP_THRESHOLD:
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            return mapping, mapping
        buf = bytearray(size)
        n = f.readinto(buf)
        del buf[n:]  # fewer bytes than fstat said: the file shrank meanwhile
        return buf, None


class _ClosedOnExit:
    """``with obj:`` closes ``obj`` on the way out."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class PcapReader(_ClosedOnExit):
    """Iterate over the frames of an Ethernet pcap or pcapng file.

    ``for ts_us, frame in PcapReader(path)`` or as a context manager.  See the
    module docstring for the guarantees on ``frame``.  Attributes: ``path``,
    ``format`` ("pcap" or "pcapng"), ``linktype``, ``snaplen`` (of the first
    interface for pcapng), ``nanosecond`` (classic pcap), ``packets`` (frames
    yielded so far).
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.name = self.path if isinstance(self.path, str) else os.fsdecode(self.path)
        self.packets = 0
        self.linktype = None
        self.snaplen = None
        self.nanosecond = False
        try:
            self._buf, self._mmap = _private_copy(self.path)
        except OSError as e:
            raise PcapFormatError(f"{self.name}: cannot read: {e.strerror or e}") from None
        self._view = memoryview(self._buf)
        self._parse_header()

    # -- header --------------------------------------------------------------

    def _err(self, msg: str) -> PcapFormatError:
        return PcapFormatError(f"{self.name}: {msg}")

    def _check_linktype(self, linktype: int) -> None:
        if linktype == LINKTYPE_ETHERNET:
            return
        name = linktype_name(linktype)
        if linktype in (113, 276):
            hint = "capture with -i IFACE, not -i any"
        else:
            hint = "only Ethernet (link type 1) captures are supported"
        raise self._err(f"link type {linktype} ({name}) is not Ethernet; {hint}")

    def _parse_header(self) -> None:
        buf = self._buf
        size = len(buf)
        if size < 4:
            magic_hex = buf[:size].hex() or "empty"
            if size == 0:
                raise self._err("not a pcap or pcapng file (empty file)")
            raise self._err(f"not a pcap or pcapng file (magic 0x{magic_hex}, file is {size} bytes)")
        (magic,) = _U32["<"].unpack_from(buf, 0)
        if magic == _PCAPNG_SHB:
            self.format = "pcapng"
            self._prescan_pcapng()
            return
        classic = {
            _MAGIC_US_LE: ("<", False, 16),
            _MAGIC_US_BE: (">", False, 16),
            _MAGIC_NS_LE: ("<", True, 16),
            _MAGIC_NS_BE: (">", True, 16),
            _MAGIC_KUZ_LE: ("<", False, 24),
            _MAGIC_KUZ_BE: (">", False, 24),
        }.get(magic)
        if classic is None:
            raise self._err(f"not a pcap or pcapng file (magic 0x{bytes(buf[:4]).hex()})")
        self.format = "pcap"
        self._order, self.nanosecond, self._rec_size = classic
        if size < 24:
            raise self._err(
                f"truncated at byte offset {size}: pcap file header cut short "
                f"({size} of 24 bytes), 0 packets read")
        _vmaj, _vmin, _zone, _sigfigs, snaplen, network = _PCAP_HDR[self._order].unpack_from(buf, 4)
        linktype = network & 0xFFFF  # upper bits: FCS length flags
        self.linktype = linktype
        self.snaplen = snaplen
        self._check_linktype(linktype)

    def _prescan_pcapng(self) -> None:
        """Check the leading SHB/IDBs so that a bad file fails at open time."""
        buf = self._buf
        size = len(buf)
        off = 0
        order = None
        while off < size:
            if size - off < 12:
                return  # the iterator reports the truncation with the packet count
            (btype,) = _U32["<"].unpack_from(buf, off)
            if btype == _PCAPNG_SHB:
                order = self._shb_order(off)
            elif order is None:
                return
            else:
                (btype,) = _U32[order].unpack_from(buf, off)
                if btype != _PCAPNG_IDB:
                    return
            (blen,) = _U32[order].unpack_from(buf, off + 4)
            if blen < 12 or blen % 4 or off + blen > size:
                return  # the iterator reports it
            if btype == _PCAPNG_IDB:
                iface = self._parse_idb(order, off, blen)
                if self.linktype is None:
                    self.linktype = iface.linktype
                    self.snaplen = iface.snaplen
            off += blen

    def _shb_order(self, off: int) -> str:
        buf = self._buf
        if len(buf) - off < 12:
            raise self._err(f"truncated at byte offset {off}: section header cut short")
        (bom,) = _U32["<"].unpack_from(buf, off + 8)
        if bom == _PCAPNG_BOM:
            return "<"
        if bom == 0x4D3C2B1A:
            return ">"
        raise self._err(
            f"corrupt pcapng section header at byte offset {off} (byte-order magic 0x{bom:08x})")

    def _parse_idb(self, order: str, off: int, blen: int) -> _Interface:
        buf = self._buf
        if blen < 20:
            raise self._err(f"corrupt pcapng interface block at byte offset {off} (length {blen})")
        _t, _l, linktype, _res, snaplen = _IDB_HDR[order].unpack_from(buf, off)
        self._check_linktype(linktype)
        mul, div, shift, off_us = 1, 1, 0, 0
        opt = off + 16
        end = off + blen - 4
        oh = _OPT_HDR[order]
        while opt + 4 <= end:
            code, olen = oh.unpack_from(buf, opt)
            if code == 0:
                break
            val = opt + 4
            if val + olen > end:
                break
            if code == 9 and olen >= 1:  # if_tsresol
                r = buf[val]
                if r & 0x80:
                    mul, div, shift = 1_000_000, 1, r & 0x7F
                else:
                    if r >= 6:
                        mul, div, shift = 1, 10 ** (r - 6), 0
                    else:
                        mul, div, shift = 10 ** (6 - r), 1, 0
            elif code == 14 and olen >= 8:  # if_tsoffset, seconds
                (secs,) = _I64[order].unpack_from(buf, val)
                off_us = secs * 1_000_000
            opt = val + ((olen + 3) & ~3)
        return _Interface(linktype, snaplen, mul, div, shift, off_us)

    # -- iteration -----------------------------------------------------------

    def __iter__(self):
        if self.format == "pcap":
            return self._iter_pcap(False)
        return self._iter_pcapng(False)

    def records(self):
        """Yield ``(ts_us, frame, orig_len)``."""
        if self.format == "pcap":
            return self._iter_pcap(True)
        return self._iter_pcapng(True)

    def _truncated(self, off: int, what: str) -> PcapFormatError:
        n = self.packets
        return self._err(
            f"truncated at byte offset {off}: {what} cut short, "
            f"{n} packet{'s' if n != 1 else ''} read")

    def _iter_pcap(self, with_orig: bool):
        view = self._view
        if view is None:
            raise self._err("reader is closed")
        size = len(view)
        rec = _REC_HDR[self._order].unpack_from
        rec_size = self._rec_size
        ns = self.nanosecond
        off = 24
        count = 0
        self.packets = 0  # frames yielded by this iteration
        while off < size:
            if off + rec_size > size:
                raise self._truncated(off, f"record header ({size - off} of {rec_size} bytes)")
            sec, frac, caplen, origlen = rec(view, off)
            start = off + rec_size
            end = start + caplen
            if end > size:
                if caplen > _MAX_RECORD:
                    raise self._err(
                        f"corrupt record header at byte offset {off} "
                        f"(captured length {caplen}), {count} packets read")
                raise self._truncated(
                    start, f"packet data ({size - start} of {caplen} bytes)")
            ts = sec * 1_000_000 + (frac // 1000 if ns else frac)
            count += 1
            self.packets = count
            yield (ts, view[start:end], origlen) if with_orig else (ts, view[start:end])
            off = end

    def _iter_pcapng(self, with_orig: bool):
        view = self._view
        if view is None:
            raise self._err("reader is closed")
        size = len(view)
        off = 0
        order = None
        ifaces: list[_Interface] = []
        count = 0
        self.packets = 0  # frames yielded by this iteration
        last_ts = 0
        u32 = None
        epb = None
        opb = None
        u32le = _U32["<"].unpack_from
        while off < size:
            if off + 12 > size:
                raise self._truncated(off, f"block header ({size - off} of 12 bytes)")
            (btype,) = u32le(view, off)
            if btype == _PCAPNG_SHB:
                order = self._shb_order(off)
                u32 = _U32[order].unpack_from
                epb = _EPB_HDR[order].unpack_from
                opb = _OPB_HDR[order].unpack_from
                ifaces = []
            elif order is None:
                raise self._err(
                    f"not a pcap or pcapng file (magic 0x{bytes(view[0:4]).hex()})")
            elif order == ">":
                (btype,) = u32(view, off)
            # Packet blocks come after the loop's other branches so that an enhanced
            # packet block (nearly every block of a capture) costs one comparison.
            if btype == _PCAPNG_EPB:
                unpack = epb
            elif btype == _PCAPNG_OPB:
                unpack = opb
            else:
                (blen,) = u32(view, off + 4)
                bend = off + blen
                if bend > size or blen < 12 or blen & 3:
                    self._bad_block(off, blen, size)
                if btype == _PCAPNG_IDB:
                    ifaces.append(self._parse_idb(order, off, blen))
                    if self.linktype is None:
                        self.linktype = ifaces[-1].linktype
                        self.snaplen = ifaces[-1].snaplen
                elif btype == _PCAPNG_SPB:
                    if blen < 16:
                        self._bad_block(off, blen, size, 16)
                    if not ifaces:
                        raise self._err(f"simple packet block at byte offset {off} "
                                        "before any interface block")
                    (_t, _l, origlen) = _SPB_HDR[order].unpack_from(view, off)
                    caplen = min(origlen, blen - 16)
                    if ifaces[0].snaplen:
                        caplen = min(caplen, ifaces[0].snaplen)
                    start = off + 12
                    count += 1
                    self.packets = count
                    # A simple packet block has no timestamp: reuse the last one.
                    frame = view[start:start + caplen]
                    yield (last_ts, frame, origlen) if with_orig else (last_ts, frame)
                # every other block type (name resolution, statistics, custom,
                # decryption secrets, ...) is skipped
                off = bend
                continue
            # an enhanced or obsolete packet block
            if off + 28 > size:
                (blen,) = u32(view, off + 4)
                self._bad_block(off, blen, size, 32)
            (_t, blen, ifid, hi, lo, caplen, origlen) = unpack(view, off)
            bend = off + blen
            if bend > size or blen < 32 or blen & 3:
                self._bad_block(off, blen, size, 32)
            start = off + 28
            end = start + caplen
            if end > bend - 4:
                kind = "enhanced packet" if btype == _PCAPNG_EPB else "packet"
                raise self._err(
                    f"corrupt {kind} block at byte offset {off} "
                    f"(captured length {caplen} exceeds block length {blen})")
            if ifid >= len(ifaces):
                raise self._err(
                    f"packet block at byte offset {off} names interface {ifid}, "
                    f"but the section defines {len(ifaces)}")
            iface = ifaces[ifid]
            raw = (hi << 32) | lo
            ts = raw if iface.identity else iface.to_us(raw)
            last_ts = ts
            count += 1
            self.packets = count
            yield (ts, view[start:end], origlen) if with_orig else (ts, view[start:end])
            off = bend

    def _bad_block(self, off: int, blen: int, size: int, minlen: int = 12):
        if blen < minlen or blen & 3 or blen > _MAX_RECORD or off + blen <= size:
            raise self._err(
                f"corrupt pcapng block at byte offset {off} (block length {blen}), "
                f"{self.packets} packets read")
        raise self._truncated(off, f"block ({size - off} of {blen} bytes)")

    # -- lifetime ------------------------------------------------------------

    def close(self) -> None:
        self._view = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # frames still referenced: the mapping goes with the last one
            self._mmap = None
        self._buf = None


class PcapWriter(_ClosedOnExit):
    """Write a classic little-endian microsecond pcap, link type Ethernet.

    ``out``: where the bytes go instead of a new file at ``path``, anything whose
    ``write`` takes one whole record per call (``io.outputs.OutputFile``, which cuts a
    failed write back to whole records). The file at ``path`` is opened with O_NOFOLLOW:
    a symbolic link there is an error, never followed."""

    _hdr = struct.Struct("<IHHiIII")
    _rec = struct.Struct("<IIII")

    def __init__(self, path, snaplen: int = 65535, out=None):
        if not 0 < snaplen <= 0x7FFFFFFF:
            raise ValueError(f"snaplen must be positive, got {snaplen}")
        self.path = os.fspath(path)
        self.snaplen = snaplen
        self.packets = 0
        if out is None:
            out = open(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                               | os.O_CLOEXEC, 0o644), "wb")
        self._f = out
        out.write(self._hdr.pack(_MAGIC_US_LE, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))

    def write(self, ts_us: int, frame) -> None:
        if ts_us < 0:
            raise ValueError(f"negative timestamp {ts_us}")
        f = self._f
        if f is None:
            raise ValueError("write to a closed PcapWriter")
        n = len(frame)
        cap = n if n <= self.snaplen else self.snaplen
        sec, usec = divmod(ts_us, 1_000_000)
        # One write per record: header and frame never part on a failed write.
        f.write(self._rec.pack(sec, usec, cap, n) + (frame if cap == n else frame[:cap]))
        self.packets += 1

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
