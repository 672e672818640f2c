"""The capture a split run's workers map (engine/workers.py): a classic pcap file. Any
other capture the reader reads (pcapng, compressed with gzip, bzip2 or xz, the
"modified" pcap) is first written as one into the run's spool folder, with the frames,
timestamps and lengths the reader gives a run on one worker, so the outputs stay those of
one worker:

- a compressed capture is decompressed (the decompressor's own loop, no frame read);
- a pcapng capture is written record by record by _splitscan.pcapng_to_pcap (C), when the
  reader would read it without a word: whole, no simple or obsolete packet blocks, its
  interfaces of one link type (of a capture up to split_feed.EARLY_MAX_BYTES, by the
  child process of split_feed.begin_plan while the command line imports the package,
  into an unnamed file);
- anything else, and a capture the reader ends with an error (cut short, corrupt), is
  written from the reader's own frames; the error is kept and the run raises it at its
  end, as one worker does after its last whole frame.

The copy takes the capture's size in the spool folder (TMPDIR, else /tmp) for the run.
"""
from __future__ import annotations

import errno
import os
import stat
import struct

from ..io.pcap import (_COMPRESSED, LINKTYPE_ETHERNET, PcapFormatError, PcapReader,
                       _open_compressed, empty_input_error)
from .split_feed import copy_pcapng, early_copy

# The classic pcap magics a split run maps as they are (split_feed.PCAP_MAGIC).
CLASSIC = (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
COPY_BYTES = 1 << 20
_HEADER = struct.Struct("<IHHiIII")
_RECORD = struct.Struct("<IIII")
_MAX_SECONDS = (1 << 32) - 1


class SplitInput:
    """The file the workers map (``path``), the name the run's messages give it
    (``name``), the reader's error at the end of the capture when the copy was written
    from its frames (else None), and what the copy was made from (``converted``: None
    when the capture is mapped as it is, else "pcapng", "gzip", "gzip pcapng", "reader"
    and so on)."""

    def __init__(self, path, name, error=None, converted=None, fd=None):
        self.path = path
        self.name = name
        self.error = error
        self.converted = converted
        self._fd = fd               # the unnamed copy's descriptor (path: /proc/self/fd/N)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def spool(path, folder, progress=False):
    """The capture of a split run as a file every worker can map: ``path`` itself when it
    is a regular file; else (``-``, the standard input; a pipe; a FIFO) the bytes it
    gives, read to their end before any worker starts and written as they come into
    ``folder`` (compressed or not: prepare() reads the copy as it reads a file). Returns
    (the file, the name the run's messages give the capture, whether the file is such a
    copy). OSError naming the folder when the copy cannot be made; the reader's error for
    a terminal or an input it cannot open."""
    name = "stdin" if path == "-" else path
    if path == "-":
        if os.isatty(0):
            PcapReader("-")         # raises the reader's own line for a terminal
        source = 0
    else:
        try:
            source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            PcapReader(path).close()    # raises the reader's own line (cannot read: ...)
            raise
    try:
        st = os.fstat(source)
        if stat.S_ISREG(st.st_mode) and (source != 0 or os.lseek(0, 0, os.SEEK_CUR) == 0):
            # A regular file (a capture redirected into the standard input too): mapped.
            return (path if source != 0 else "/proc/self/fd/0"), name, False
        dest = os.path.join(folder, "input")
        try:
            with open(dest, "wb", buffering=0) as out:
                copied = _copy_stream(source, out.fileno(), name, progress)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot copy the input ({name}) into {folder} "
                                     f"(TMPDIR): {exc.strerror or exc}") from None
        if not copied:
            raise empty_input_error(name, False)    # what the reader says of an empty pipe
        return dest, name, True
    finally:
        if source != 0:
            os.close(source)


def _copy_stream(source, out_fd, name, progress):
    """Everything ``source`` gives, to its end, into ``out_fd`` (a pipe moved by splice:
    no copy through this process; anything else read and written): the bytes copied."""
    bar = None
    if progress:
        import sys

        from tqdm import tqdm
        bar = tqdm(unit="B", unit_scale=True, delay=1.0, leave=False, dynamic_ncols=True,
                   file=sys.stderr, desc=f"{name}: read to its end before the split")
    try:
        splice = getattr(os, "splice", None)
        buf = None
        copied = 0
        while True:
            n = -1
            if splice is not None:
                try:
                    n = splice(source, out_fd, COPY_BYTES)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    splice = None       # not a pipe: read and write
            if n < 0:
                if buf is None:
                    buf = bytearray(COPY_BYTES)
                n = os.readv(source, [buf])
                with memoryview(buf)[:n] as chunk:
                    done = 0
                    while done < n:
                        done += os.write(out_fd, chunk[done:])
            if n == 0:
                return copied
            copied += n
            if bar is not None:
                bar.update(n)
    finally:
        if bar is not None:
            bar.close()


def prepare(path, folder, progress=False, name=None) -> SplitInput:
    """The classic pcap of the capture at ``path`` for a split run, written into
    ``folder`` when the capture is not one. OSError when the copy cannot be made (the
    message names the folder) or holds a time a classic pcap cannot; PcapFormatError as
    the reader raises it at open. ``name``: the capture's in messages (default ``path``;
    spool()'s name for a copy of the standard input or a pipe)."""
    name = path if name is None else name
    head = _head(path)
    if head[:4] in CLASSIC:
        return SplitInput(path, name)
    fd = early_copy(path)
    if fd is not None:
        # Written while the command line imported the package (split_feed.begin_plan).
        return SplitInput(f"/proc/self/fd/{fd}", name, None, "pcapng", fd)
    compression = next((kind for magic, kind in _COMPRESSED if head.startswith(magic)), None)
    decompressed = os.path.join(folder, "decompressed")
    mapped = None               # the decompressed file when the workers map it
    try:
        source = path
        if compression is not None:
            if not _decompress(path, name, compression, decompressed, progress):
                return _from_reader(path, name, folder, progress)
            source = decompressed
            if _head(source)[:4] in CLASSIC:
                mapped = decompressed
                return SplitInput(source, name, None, compression)
        converted = _pcapng(source, os.path.join(folder, "capture.pcap"))
        if converted is None:
            return _from_reader(path, name, folder, progress)
        what = "pcapng" if compression is None else f"{compression} pcapng"
        return SplitInput(converted, name, None, what)
    except OutsideClassicPcap:
        raise
    except OSError as exc:
        raise OSError(exc.errno, f"cannot make the capture's classic pcap copy in {folder} "
                                 f"(TMPDIR): {exc.strerror or exc}") from None
    finally:
        if mapped is None and os.path.exists(decompressed):
            os.unlink(decompressed)     # its space, while the run lasts


class OutsideClassicPcap(OSError):
    """A frame's time that a classic pcap cannot hold (before 1970 or past 2106)."""


def _head(path):
    with open(path, "rb") as f:
        return f.read(6)


def _decompress(path, name, compression, dest, progress):
    """``path``'s decompressed bytes into ``dest``: False when the decompressor fails (a
    stream cut short or corrupt: the reader then names it)."""
    with open(path, "rb") as raw, open(dest, "wb") as out:
        stream, errors = _open_compressed(compression, raw)
        bar = _bar(name, os.fstat(raw.fileno()).st_size, progress)
        buf = bytearray(COPY_BYTES)
        try:
            with stream, memoryview(buf) as view:
                while True:
                    try:
                        n = stream.readinto(view)
                    except (EOFError, OSError, ValueError, *errors):
                        # Cut short, corrupt, or unreadable: the reader names it.
                        return False
                    if not n:
                        return True
                    out.write(view[:n])
                    if bar is not None:
                        bar.update(raw.tell() - bar.n)
        finally:
            if bar is not None:
                bar.close()


def _pcapng(source, dest):
    """``source`` (pcapng) as a classic pcap at ``dest`` by the C loop, or None when the
    reader must read it (or the loop is not built)."""
    with open(dest, "wb") as out:
        done = copy_pcapng(source, out.fileno())
    if done is None:
        os.unlink(dest)
        return None
    return dest


def _from_reader(path, name, folder, progress):
    """The reader's frames of ``path`` (Ethernet, microseconds) as a classic pcap: what a
    run on one worker reads, error included."""
    dest = os.path.join(folder, "capture.pcap")
    error = None
    with PcapReader(path, name) as reader, open(dest, "wb") as out:
        bar = _bar(name, reader.size, progress)
        out.write(_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET))
        parts = []
        held = 0
        try:
            for ts, frame, origlen in reader.records():
                sec, usec = divmod(ts, 1_000_000)
                if not 0 <= sec <= _MAX_SECONDS:
                    raise OutsideClassicPcap(errno.EINVAL, f"{reader.name}: frame {reader.packets} has a "
                                  "time outside 1970-2106, which a split run's classic pcap "
                                  "cannot hold: run it with one worker")
                caplen = len(frame)
                parts.append(_RECORD.pack(sec, usec, caplen, max(caplen, origlen)))
                parts.append(frame.tobytes())
                held += 16 + caplen
                if held >= COPY_BYTES:
                    out.write(b"".join(parts))
                    parts.clear()
                    held = 0
                    if bar is not None:
                        bar.update((reader.bytes_read() or 0) - bar.n)
        except PcapFormatError as exc:
            error = exc
        finally:
            if bar is not None:
                bar.close()
        out.write(b"".join(parts))
    return SplitInput(dest, name, error, "reader")


def _bar(name, size, progress):
    """The line shown while a long copy is made (on a terminal, after a second)."""
    if not progress or size is None:
        return None
    import sys

    from tqdm import tqdm
    return tqdm(total=size, unit="B", unit_scale=True, delay=1.0, leave=False,
                dynamic_ncols=True, file=sys.stderr,
                desc=f"{os.path.basename(name)}: to classic pcap")
