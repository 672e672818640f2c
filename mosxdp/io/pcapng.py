"""pcapng blocks for io/pcap.py's PcapReader: sections of either byte order, interface
blocks (``if_tsresol``, ``if_tsoffset``), Enhanced, Simple and obsolete Packet Blocks; every
other block type is skipped.
"""
from __future__ import annotations

import struct

# The compiled build's declarations (setup.py); decorators that change nothing in plain
# Python.
import cython

if cython.compiled:
    from cython.cimports.cpython.memoryview import PyMemoryView_GET_BUFFER

# A record claiming more than this is a corrupt header, not a short file (both formats).
MAX_RECORD = 256 << 20

PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BOM = 0x1A2B3C4D
_PCAPNG_IDB = 0x00000001
_PCAPNG_OPB = 0x00000002
_PCAPNG_SPB = 0x00000003
_PCAPNG_EPB = 0x00000006

_U32 = {"<": struct.Struct("<I"), ">": struct.Struct(">I")}
_I64 = {"<": struct.Struct("<q"), ">": struct.Struct(">q")}
_EPB_HDR = {"<": struct.Struct("<IIIIIII"), ">": struct.Struct(">IIIIIII")}
# The obsolete packet block: the enhanced one's fields, but a 16-bit interface id
# and a 16-bit drops count (skipped) where the enhanced block has a 32-bit id.
_OPB_HDR = {"<": struct.Struct("<IIHxxIIII"), ">": struct.Struct(">IIHxxIIII")}
_SPB_HDR = {"<": struct.Struct("<III"), ">": struct.Struct(">III")}
_IDB_HDR = {"<": struct.Struct("<IIHHI"), ">": struct.Struct(">IIHHI")}
_OPT_HDR = {"<": struct.Struct("<HH"), ">": struct.Struct(">HH")}


class _Interface:
    """One pcapng interface: link type (and its ``LinkLayer``, None for Ethernet), snap
    length and timestamp conversion."""

    __slots__ = ("linktype", "link", "snaplen", "mul", "div", "shift", "off_us", "identity")

    def __init__(self, linktype, link, snaplen, mul=1, div=1, shift=0, off_us=0):
        self.linktype = linktype
        self.link = link
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


class PcapngBlocks:
    """A mixin of PcapReader: the pcapng side of the reader. Needs the reader's input
    (``_view``, ``_base``, ``_more``), its messages (``_err``, ``_truncated``), its
    ``_check_linktype``, ``_cut_frame`` and the attributes ``packets``, ``linktype``
    and ``snaplen``."""

    def _prescan_pcapng(self) -> None:
        """Check the leading SHB/IDBs (those in the first chunk) so that a bad file fails at
        open time."""
        buf = self._view
        size = len(buf)
        off = 0
        order = None
        while off < size:
            if size - off < 12:
                return  # the iterator reports the truncation with the packet count
            (btype,) = _U32["<"].unpack_from(buf, off)
            if btype == PCAPNG_SHB:
                order = self._shb_order(buf, off)
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
                iface = self._parse_idb(buf, order, off, blen)
                if self.linktype is None:
                    self.linktype = iface.linktype
                    self.snaplen = iface.snaplen
            off += blen

    def _shb_order(self, buf, off: int) -> str:
        if len(buf) - off < 12:
            raise self._err(f"truncated at byte offset {self._base + off}: section header cut short")
        (bom,) = _U32["<"].unpack_from(buf, off + 8)
        if bom == _PCAPNG_BOM:
            return "<"
        if bom == 0x4D3C2B1A:
            return ">"
        raise self._err(
            f"corrupt pcapng section header at byte offset {self._base + off} (byte-order "
            f"magic 0x{bom:08x})")

    def _parse_idb(self, buf, order: str, off: int, blen: int) -> _Interface:
        if blen < 20:
            raise self._err(f"corrupt pcapng interface block at byte offset {self._base + off} "
                            f"(length {blen})")
        _t, _l, linktype, _res, snaplen = _IDB_HDR[order].unpack_from(buf, off)
        link = self._check_linktype(linktype)
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
        return _Interface(linktype, link, snaplen, mul, div, shift, off_us)

    # Compiled, the offsets, lengths and the packet block's fields are C integers, read in
    # place (the timestamp stays a Python integer: an interface's resolution may make it
    # any size).
    @cython.locals(size=cython.Py_ssize_t, off=cython.Py_ssize_t, bend=cython.Py_ssize_t,
                   blen=cython.Py_ssize_t, btype=cython.uint, start=cython.Py_ssize_t,
                   end=cython.Py_ssize_t, count=cython.Py_ssize_t, caplen=cython.Py_ssize_t,
                   origlen=cython.Py_ssize_t, ifid=cython.Py_ssize_t, hi=cython.ulonglong,
                   lo=cython.ulonglong, little=cython.bint, p=cython.p_uchar,
                   grown=cython.Py_ssize_t)
    def _iter_pcapng(self, with_orig: bool):
        view = self._view
        size = len(view)
        off = -self._base
        order = None
        ifaces: list[_Interface] = []
        count = 0
        last_ts = 0
        u32 = None
        epb = None
        opb = None
        u32le = _U32["<"].unpack_from
        little = True
        while True:
            if off + 12 > size:
                view, size, off = self._more(off, 12)
                if off == size:
                    self._end_of_input()
                    return
                if off + 12 > size:
                    raise self._truncated(off, f"block header ({size - off} of 12 bytes)")
            if cython.compiled:
                p = cython.cast(cython.p_uchar, PyMemoryView_GET_BUFFER(view).buf) + off
                btype = _u32_at(p, True)
            else:
                (btype,) = u32le(view, off)
            if btype == PCAPNG_SHB:
                order = self._shb_order(view, off)
                little = order == "<"
                u32 = _U32[order].unpack_from
                epb = _EPB_HDR[order].unpack_from
                opb = _OPB_HDR[order].unpack_from
                ifaces = []
            elif order is None:
                raise self._err(
                    f"not a pcap or pcapng file (magic 0x{bytes(view[off:off + 4]).hex()})")
            elif not little:
                btype = _u32_at(p, False) if cython.compiled else u32(view, off)[0]
            blen = _u32_at(p + 4, little) if cython.compiled else u32(view, off + 4)[0]
            bend = off + blen
            if bend > size:
                if blen < 12 or blen & 3 or blen > MAX_RECORD:
                    self._bad_block(off, blen)
                view, size, off = self._more(off, blen)
                bend = off + blen
                if bend > size:
                    raise self._truncated(off, f"block ({size - off} of {blen} bytes)")
            # Packet blocks come first: an enhanced packet block (nearly every block of a
            # capture) costs one comparison.
            if btype == _PCAPNG_EPB or btype == _PCAPNG_OPB:
                if blen < 32 or blen & 3:
                    self._bad_block(off, blen)
                if cython.compiled and btype == _PCAPNG_EPB:
                    p = cython.cast(cython.p_uchar, PyMemoryView_GET_BUFFER(view).buf) + off
                    ifid = _u32_at(p + 8, little)
                    hi = _u32_at(p + 12, little)
                    lo = _u32_at(p + 16, little)
                    caplen = _u32_at(p + 20, little)
                    origlen = _u32_at(p + 24, little)
                else:
                    (_t, _l, ifid, hi, lo, caplen, origlen) = (
                        epb if btype == _PCAPNG_EPB else opb)(view, off)
                start = off + 28
                end = start + caplen
                if end > bend - 4:
                    kind = "enhanced packet" if btype == _PCAPNG_EPB else "packet"
                    raise self._err(
                        f"corrupt {kind} block at byte offset {self._base + off} "
                        f"(captured length {caplen} exceeds block length {blen})")
                if ifid >= len(ifaces):
                    raise self._err(
                        f"packet block at byte offset {self._base + off} names interface "
                        f"{ifid}, but the section defines {len(ifaces)}")
                iface = ifaces[ifid]
                raw = (hi << 32) | lo
                ts = raw if iface.identity else iface.to_us(raw)
                last_ts = ts
                count += 1
                self.packets = count
                if iface.link is None:
                    frame = view[start:end]
                else:
                    frame, grown = iface.link.ethernet(view, off, start, end)
                    caplen += grown
                    origlen += grown
                if caplen < origlen:
                    self._cut_frame(count, caplen, origlen)
                yield (ts, frame, origlen) if with_orig else (ts, frame)
                off = bend
                continue
            if blen < 12 or blen & 3:
                self._bad_block(off, blen)
            if btype == _PCAPNG_IDB:
                ifaces.append(self._parse_idb(view, order, off, blen))
                if self.linktype is None:
                    self.linktype = ifaces[-1].linktype
                    self.snaplen = ifaces[-1].snaplen
            elif btype == _PCAPNG_SPB:
                if blen < 16:
                    self._bad_block(off, blen)
                if not ifaces:
                    raise self._err(f"simple packet block at byte offset {self._base + off} "
                                    "before any interface block")
                (_t, _l, origlen) = _SPB_HDR[order].unpack_from(view, off)
                caplen = min(origlen, blen - 16)
                if ifaces[0].snaplen:
                    caplen = min(caplen, ifaces[0].snaplen)
                start = off + 12
                count += 1
                self.packets = count
                # A simple packet block has no timestamp: reuse the last one.
                if ifaces[0].link is None:
                    frame = view[start:start + caplen]
                else:
                    frame, grown = ifaces[0].link.ethernet(view, off, start, start + caplen)
                    caplen += grown
                    origlen += grown
                if caplen < origlen:
                    self._cut_frame(count, caplen, origlen)
                yield (last_ts, frame, origlen) if with_orig else (last_ts, frame)
            # every other block type (name resolution, statistics, custom,
            # decryption secrets, ...) is skipped
            off = bend

    def _bad_block(self, off: int, blen: int):
        raise self._err(
            f"corrupt pcapng block at byte offset {self._base + off} (block length {blen}), "
            f"{self.packets} packets read")


@cython.cfunc
@cython.inline
@cython.locals(p=cython.p_uchar, little=cython.bint)
@cython.returns(cython.uint)
def _u32_at(p, little):
    """The 32-bit unsigned integer at p (compiled build only)."""
    if little:
        return p[0] | (p[1] << 8) | (p[2] << 16) | (cython.cast(cython.uint, p[3]) << 24)
    return p[3] | (p[2] << 8) | (p[1] << 16) | (cython.cast(cython.uint, p[0]) << 24)
