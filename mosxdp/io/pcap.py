"""Offline frame source and sink: pcap / pcapng reader, classic pcap writer.

Reader
------
``PcapReader(path)`` reads a classic pcap file (either byte order, microsecond
or nanosecond magic, and the "modified" Kuznetzov variant) or a pcapng file
(any number of sections of either byte order, any number of interfaces,
``if_tsresol`` and ``if_tsoffset``; Enhanced, Simple and obsolete Packet
Blocks; every other block type is skipped: io/pcapng.py).  The link layer is Ethernet, or
one that io/linklayer.py turns into Ethernet in place (Linux cooked SLL and SLL2, raw IP,
IPv4, IPv6, BSD loopback): the frames are always Ethernet frames, ``linktype`` says what
the capture holds.  ``path`` ``"-"`` is the standard input; a pipe or FIFO is read as a
stream like a file, and a capture compressed with gzip, bzip2 or xz (known by
its magic bytes, whatever its name) is decompressed as it is read.

Iterating yields ``(ts_us, frame)``: ``ts_us`` is the packet timestamp in
integer microseconds since the epoch, ``frame`` a **writable** ``memoryview``
of the captured bytes.  The input is read in chunks of about a megabyte into
buffers of the reader's own, and every frame is a view into one of them, so
nothing is copied per packet, writing into a frame (the monitor overwrites
packets in place) never changes the file, and memory stays bounded whatever the
size of the input: a chunk is freed when no frame of it is referenced any more.
Callers may only rely on a view being valid until the next item is requested;
in this implementation it actually stays valid for as long as it is referenced.
A reader is iterated once (a stream cannot be read twice).

Every problem with the input is a ``PcapFormatError`` (a ``ValueError``) whose
message is one line starting with the file name.  A truncated file (a record
header or a record's data cut short, or a compressed stream without its end)
raises only after every complete packet before the cut has been yielded; the
message names the byte offset of the cut (in the decompressed data) and how
many packets were read.

``reader.records()`` yields ``(ts_us, frame, orig_len)`` (``orig_len`` is the
length on the wire, larger than ``len(frame)`` when the capture was cut by a
snap length).  Either way ``reader.cut_frames`` counts such frames,
``reader.wire_len()`` is the current frame's ``orig_len`` when it was cut (else
0), for a consumer that iterates ``(ts_us, frame)``.

Writer
------
``PcapWriter(path, snaplen=65535, out=None)`` writes a classic little-endian
microsecond pcap with link type Ethernet; ``write(ts_us, frame, wire_len=0)``
appends one record (frames longer than ``snaplen`` are cut, the original length
kept; ``wire_len``: the length on the wire of a frame that came cut).
"""

from __future__ import annotations

import io
import os
import stat
import struct

# The compiled build's declarations (setup.py); decorators that change nothing in plain
# Python.
import cython

from .linklayer import LINK_LAYERS
from .pcapng import MAX_RECORD as _MAX_RECORD, PCAPNG_SHB, PcapngBlocks

if cython.compiled:
    from cython.cimports.cpython.bytearray import PyByteArray_FromStringAndSize
    from cython.cimports.cpython.memoryview import PyMemoryView_GET_BUFFER

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


_LINKTYPES_READ = ("the link types read are Ethernet (1), " + ", ".join(
    f"{layer.name} ({number})" for number, layer in sorted(LINK_LAYERS.items())))


class PcapFormatError(ValueError):
    """The file is not a usable Ethernet pcap/pcapng file (one-line message)."""


# Classic pcap magics as read with a little-endian "<I".
_MAGIC_US_LE = 0xA1B2C3D4  # file written little-endian, microseconds
_MAGIC_US_BE = 0xD4C3B2A1  # file written big-endian, microseconds
_MAGIC_NS_LE = 0xA1B23C4D
_MAGIC_NS_BE = 0x4D3CB2A1
_MAGIC_KUZ_LE = 0xA1B2CD34  # "modified" pcap (24-byte record headers), microseconds
_MAGIC_KUZ_BE = 0x34CDB2A1

# Bytes read at a time (one buffer; frames are views into it).
_CHUNK = 1 << 20
# A long record's buffer grows by at most this much per read: a corrupt length costs only
# what the input really holds.
_MAX_GROW = 16 << 20
# Compressed captures, by their magic bytes: (name, the module that opens them). The
# modules are imported when a capture needs one (a few ms of every start otherwise).
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _open_compressed(name, f):
    """(a binary stream of ``f``'s decompressed bytes, the errors its decompressor raises)."""
    if name == "gzip":
        import gzip
        import zlib
        return gzip.GzipFile(fileobj=f, mode="rb"), (zlib.error,)
    if name == "bzip2":
        import bz2
        return bz2.BZ2File(f, mode="rb"), ()
    import lzma
    return lzma.LZMAFile(f, mode="rb"), (lzma.LZMAError,)

_MAGIC = struct.Struct("<I")
_PCAP_HDR = {"<": struct.Struct("<HHiIII"), ">": struct.Struct(">HHiIII")}
_REC_HDR = {"<": struct.Struct("<IIII"), ">": struct.Struct(">IIII")}


class _Rejoined(io.RawIOBase):
    """A stream with its first bytes (read to see what it is) put back in front."""

    def __init__(self, head, rest):
        self._head = memoryview(head)
        self._rest = rest

    def readable(self):
        return True

    def readinto(self, b):
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._rest.readinto(b)


class _ClosedOnExit:
    """``with obj:`` closes ``obj`` on the way out."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def empty_input_error(name, regular) -> PcapFormatError:
    """The reader's error for an input without a byte: an empty file, or no data from a
    pipe (or a decompressor)."""
    return PcapFormatError(f"{name}: not a pcap or pcapng file "
                           f"({'empty file' if regular else 'no data'})")


class PcapReader(PcapngBlocks, _ClosedOnExit):
    """Iterate over the frames of a pcap or pcapng capture, as Ethernet frames.

    ``for ts_us, frame in PcapReader(path)`` or as a context manager.  See the
    module docstring for the guarantees on ``frame``.  Attributes: ``path``,
    ``name`` (for messages: the path, "stdin" for ``-``, or the ``name`` given),
    ``format`` ("pcap" or "pcapng"), ``compression``
    (None, "gzip", "bzip2" or "xz"), ``linktype``, ``snaplen`` (of the first
    interface for pcapng), ``nanosecond`` (classic pcap), ``packets`` (frames
    yielded so far), ``cut_frames`` (of them, those cut by a snap length), ``cut_length``
    (the longest of those: the snap length that cut them, whatever the header says),
    ``size`` (of a regular file, compressed or not: None for a pipe), and ``bytes_read()``.
    """

    def __init__(self, path, name=None):
        self.path = os.fspath(path)
        stdin = self.path in ("-", b"-")
        self.name = name or ("stdin" if stdin else (
            self.path if isinstance(self.path, str) else os.fsdecode(self.path)))
        self.packets = 0
        self.cut_frames = 0
        self.linktype = None
        self._link = None             # classic pcap: the LinkLayer of a non-Ethernet capture
        self.snaplen = None
        self.nanosecond = False
        self.compression = None
        self._read_errors = (OSError, ValueError)   # and the decompressor's, if any
        self._cut = (0, 0)            # (packet number, wire length) of the last cut frame
        self.cut_length = 0           # the longest captured length of a cut frame
        self._eof = False
        self._compressed_cut = False  # the decompressor met the end of its input early
        self._base = 0                # offset in the (decompressed) input of _view[0]
        self._view = memoryview(b"")
        self._iterated = False
        self._file = None
        self._raw = None              # the input as opened, under any decompressor
        self.size = None
        try:
            if stdin:
                if os.isatty(0):
                    raise self._err("the standard input is a terminal: pipe a capture into "
                                    "it (tcpdump -w - ... | mosxdp run ... --pcap -)")
                self._file = open(0, "rb", closefd=False)
            else:
                self._file = open(self.path, "rb")
            self._raw = self._file
            st = os.fstat(self._raw.fileno())
            self._regular = stat.S_ISREG(st.st_mode)
            if self._regular:
                self.size = st.st_size
            self._more(0, 6)
            self._decompress()
        except OSError as e:
            self.close()
            raise self._err(f"cannot read: {e.strerror or e}") from None
        except BaseException:
            self.close()
            raise
        self._parse_header()

    # -- input ---------------------------------------------------------------

    def _more(self, off: int, need: int):
        """Make ``need`` bytes from ``off`` of the current buffer available, reading on:
        returns ``(view, size, off)`` of the buffer to go on with (a new one holding the
        unread rest at offset 0, unless the input ended). Fewer than ``need`` bytes after
        ``off`` means the input has no more."""
        view = self._view
        if self._eof:
            return view, len(view), off
        rest = len(view) - off
        size = rest + max(_CHUNK, min(need - rest, _MAX_GROW))
        # Compiled, not zeroed first (a megabyte a chunk): the read fills it, and what it
        # does not fill is cut off below.
        buf = PyByteArray_FromStringAndSize(cython.NULL, size) if cython.compiled \
            else bytearray(size)
        buf[:rest] = view[off:]
        n = rest
        # At most one read of the stream below per call: what a pipe or a decompressor has
        # now, never a wait for more, nor data lost when the next read fails.
        read = self._file.readinto1
        try:
            while True:
                with memoryview(buf) as free:
                    got = read(free[n:])
                if not got:
                    self._eof = True
                    break
                n += got
                if n >= need:
                    break
                if n == len(buf):
                    buf.extend(bytes(max(_CHUNK, min(need - n, _MAX_GROW))))
        except EOFError:
            # The decompressor's input ended inside a compressed stream.
            self._eof = self._compressed_cut = True
        except self._read_errors as e:
            if self.compression is None and isinstance(e, OSError):
                raise self._err(f"cannot read at byte offset {self._base + len(view)}: "
                                f"{e.strerror or e}, {self.packets} packets read") from None
            raise self._err(f"corrupt {self.compression} data after byte offset "
                            f"{self._base + len(view)} of the decompressed capture: {e}, "
                            f"{self.packets} packets read") from None
        del buf[n:]
        self._base += off
        self._view = view = memoryview(buf)
        return view, n, 0

    def _decompress(self) -> None:
        """A compressed capture is read through its decompressor (known by its magic)."""
        head = bytes(self._view)
        for magic, name in _COMPRESSED:
            if head.startswith(magic):
                self.compression = name
                self._file, errors = _open_compressed(
                    name, io.BufferedReader(_Rejoined(head, self._file)))
                self._read_errors = (OSError, ValueError) + errors
                self._view = memoryview(b"")
                self._eof = False
                self._more(0, 6)
                return
        if head.startswith(_ZSTD_MAGIC):
            raise self._err("compressed with zstd, which is not read here: decompress it "
                            "first (zstd -dc FILE | mosxdp run ... --pcap -)")

    def _end_of_input(self) -> None:
        """The input ended at a record boundary: complete, unless a compressed stream ended
        without its end marker."""
        if self._compressed_cut:
            n = self.packets
            raise self._err(f"truncated at byte offset {self._base + len(self._view)}: the "
                            f"{self.compression} stream is cut short, {n} "
                            f"packet{'s' if n != 1 else ''} read")

    def bytes_read(self) -> int | None:
        """How far the input file has been read, in bytes of the file (of its compressed
        form for a compressed capture; the reader reads ahead by up to a chunk): the
        progress of a run against ``size``. None for a pipe, or once closed."""
        if not self._regular or self._file is None:
            return None
        return os.lseek(self._raw.fileno(), 0, os.SEEK_CUR)

    def wire_len(self) -> int:
        """The length on the wire of the frame just yielded when the capture cut it (its
        caplen < orig_len), else 0."""
        number, length = self._cut
        return length if number == self.packets else 0

    # -- header --------------------------------------------------------------

    def _err(self, msg: str) -> PcapFormatError:
        return PcapFormatError(f"{self.name}: {msg}")

    def _check_linktype(self, linktype: int):
        """The ``LinkLayer`` that makes Ethernet frames of the link type's (None for
        Ethernet); PcapFormatError for a link type not read here."""
        if linktype == LINKTYPE_ETHERNET:
            return None
        link = LINK_LAYERS.get(linktype)
        if link is None:
            raise self._err(f"link type {linktype} ({linktype_name(linktype)}) is not read "
                            f"here: {_LINKTYPES_READ}")
        return link

    def _parse_header(self) -> None:
        view = self._view
        size = len(view)
        if size < 4:
            self._end_of_input()
            if size == 0:
                raise empty_input_error(self.name, self._regular and not self.compression)
            raise self._err(f"not a pcap or pcapng file (magic 0x{bytes(view).hex()}, file is "
                            f"{size} bytes)")
        (magic,) = _MAGIC.unpack_from(view, 0)
        if magic == PCAPNG_SHB:
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
            raise self._err(f"not a pcap or pcapng file (magic 0x{bytes(view[:4]).hex()})")
        self.format = "pcap"
        self._order, self.nanosecond, self._rec_size = classic
        if size < 24:
            view, size, _ = self._more(0, 24)
        if size < 24:
            self._end_of_input()
            raise self._err(
                f"truncated at byte offset {size}: pcap file header cut short "
                f"({size} of 24 bytes), 0 packets read")
        _vmaj, _vmin, _zone, _sigfigs, snaplen, network = _PCAP_HDR[self._order].unpack_from(view, 4)
        linktype = network & 0xFFFF  # upper bits: FCS length flags
        self.linktype = linktype
        self.snaplen = snaplen
        self._link = self._check_linktype(linktype)

    # -- iteration -----------------------------------------------------------

    def __iter__(self):
        return self._iterate(False)

    def records(self):
        """Yield ``(ts_us, frame, orig_len)``."""
        return self._iterate(True)

    def _iterate(self, with_orig: bool):
        if self._file is None:
            raise self._err("reader is closed")
        if self._iterated:
            raise self._err("a capture is read once: open it again to read it again")
        self._iterated = True
        self.packets = 0
        if self.format == "pcap":
            return self._iter_pcap(with_orig)
        return self._iter_pcapng(with_orig)

    def _cut_frame(self, number: int, caplen: int, origlen: int) -> None:
        """Frame ``number`` was cut by a snap length (``caplen`` of ``origlen`` bytes)."""
        self.cut_frames += 1
        self._cut = (number, origlen)
        if caplen > self.cut_length:
            self.cut_length = caplen

    def _truncated(self, off: int, what: str) -> PcapFormatError:
        n = self.packets
        return self._err(
            f"truncated at byte offset {self._base + off}: {what} cut short, "
            f"{n} packet{'s' if n != 1 else ''} read")

    # Compiled, the offsets, lengths and the timestamp are C integers.
    @cython.locals(size=cython.Py_ssize_t, rec_size=cython.Py_ssize_t, off=cython.Py_ssize_t,
                   start=cython.Py_ssize_t, end=cython.Py_ssize_t, count=cython.Py_ssize_t,
                   sec=cython.longlong, frac=cython.longlong, caplen=cython.Py_ssize_t,
                   origlen=cython.Py_ssize_t, ts=cython.longlong, ns=cython.bint,
                   little=cython.bint, grown=cython.Py_ssize_t)
    def _iter_pcap(self, with_orig: bool):
        view = self._view
        size = len(view)
        rec = _REC_HDR[self._order].unpack_from
        little = self._order == "<"
        rec_size = self._rec_size
        ns = self.nanosecond
        link = self._link
        off = 24 - self._base
        count = 0
        while True:
            if off + rec_size > size:
                view, size, off = self._more(off, rec_size)
                if off == size:
                    self._end_of_input()
                    return
                if off + rec_size > size:
                    raise self._truncated(off, f"record header ({size - off} of {rec_size} bytes)")
            if cython.compiled:
                # The record header read in place (rec's four fields, either byte order).
                read_header(cython.cast(cython.p_uchar, PyMemoryView_GET_BUFFER(view).buf) + off,
                            little, cython.address(sec), cython.address(frac),
                            cython.address(caplen), cython.address(origlen))
            else:
                sec, frac, caplen, origlen = rec(view, off)
            start = off + rec_size
            end = start + caplen
            if end > size:
                if caplen > _MAX_RECORD:
                    raise self._err(
                        f"corrupt record header at byte offset {self._base + off} "
                        f"(captured length {caplen}), {count} packets read")
                view, size, off = self._more(off, rec_size + caplen)
                start = off + rec_size
                end = start + caplen
                if end > size:
                    raise self._truncated(
                        start, f"packet data ({size - start} of {caplen} bytes)")
            ts = sec * 1_000_000 + (frac // 1000 if ns else frac)
            count += 1
            self.packets = count
            if link is None:
                frame = view[start:end]
            else:
                frame, grown = link.ethernet(view, off, start, end)
                caplen += grown
                origlen += grown
            if caplen < origlen:
                self._cut_frame(count, caplen, origlen)
            yield (ts, frame, origlen) if with_orig else (ts, frame)
            off = end

    # -- lifetime ------------------------------------------------------------

    def close(self) -> None:
        """Close the input (frames already yielded stay valid while referenced)."""
        f, self._file = self._file, None
        if f is not None:
            f.close()
        self._view = memoryview(b"")


def read_header(p, little, sec, frac, caplen, origlen):
    """A classic pcap record header at p: its four fields into the integers the last four
    arguments point to (compiled build only: a C function, pcap.pxd, that
    engine/split_worker.py uses too)."""
    sec[0] = read_u32(p, little)
    frac[0] = read_u32(p + 4, little)
    caplen[0] = read_u32(p + 8, little)
    origlen[0] = read_u32(p + 12, little)


def read_u32(p, little):
    """The 32-bit unsigned integer at p (compiled build only)."""
    if little:
        return p[0] | (p[1] << 8) | (p[2] << 16) | (cython.cast(cython.uint, p[3]) << 24)
    return p[3] | (p[2] << 8) | (p[1] << 16) | (cython.cast(cython.uint, p[0]) << 24)


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

    def write(self, ts_us: int, frame, wire_len: int = 0) -> None:
        if ts_us < 0:
            raise ValueError(f"negative timestamp {ts_us}")
        f = self._f
        if f is None:
            raise ValueError("write to a closed PcapWriter")
        n = cap = len(frame)
        if n > self.snaplen:
            cap = self.snaplen
        if wire_len > n:
            n = wire_len
        sec, usec = divmod(ts_us, 1_000_000)
        # One write per record: header and frame never part on a failed write.
        f.write(self._rec.pack(sec, usec, cap, n) + (frame if cap == len(frame) else frame[:cap]))
        self.packets += 1

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
