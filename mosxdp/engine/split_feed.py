"""The input of a split run (engine/workers.py): the capture, and a plan of its records
that every worker reads: per frame its bucket of the symmetric flow hash of core/split.py
and its record's length, and the bucket table that gives each bucket a worker, balanced
over the whole capture. The parent makes the plan in one pass before the fork (in parts
read by threads on a large capture), or takes the pass a child process began while the
command line imported the package (begin_plan); each worker then walks it and processes
the frames of its buckets. The loop over the records is C (_splitscan.c) unless
MOSXDP_PURE_PYTHON is set or the module is missing; its twin here in Python does the same.
"""
from __future__ import annotations

import atexit
import errno
import marshal
import mmap
import os
import signal
import stat
import struct
import sys
import threading
from array import array

from ..core.compiled import PURE_PYTHON
from ..core.split import BUCKET_BITS, BUCKET_SHIFT, MULTIPLIER, balance, frame_hash
from ..io.linklayer import LINK_LAYERS
from ..io.pcap import _MAX_RECORD, LINKTYPE_ETHERNET, PcapFormatError, PcapReader

# Frames per chunk of the plan's arrays (6 bytes a frame: 384 KiB a chunk).
CHUNK_FRAMES = 1 << 16
# The least of the capture a thread of the plan's pass reads; what a part reads at once;
# what resync() looks through for a part's first record.
PART_BYTES = 8 << 20
BLOCK_BYTES = 1 << 20
RESYNC_BYTES = 4 << 20
# The bucket of a frame without IP: worker 0 (the table's last entry).
NO_IP_BUCKET = 1 << BUCKET_BITS
PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", False), b"\xa1\xb2\xc3\xd4": (">", False),
              b"\x4d\x3c\xb2\xa1": ("<", True), b"\xa1\xb2\x3c\x4d": (">", True)}
_MASK64 = (1 << 64) - 1


class Scan:
    """A classic pcap file as a split run reads it: its header, reads of its records for
    the plan's pass (os.preadv into a block per part: no page tables to build and tear
    down), and a read-only map for the merge of --write."""

    def __init__(self, path, name=None):
        self.path = path
        self.name = path if name is None else name      # the capture's, for messages
        self.file = open(path, "rb", buffering=0)
        self.fd = self.file.fileno()
        self.size = os.fstat(self.fd).st_size
        header = os.pread(self.fd, 24, 0)
        self.order, self.nanosecond = PCAP_MAGIC[header[:4]]
        self.record = struct.Struct(self.order + "IIII")
        self.linktype = self.linktype_of(header, self.order)
        self.link = LINK_LAYERS.get(self.linktype)
        self._map = None

    @staticmethod
    def linktype_of(mm, order):
        """The capture's link type (the reader refused the link types not read)."""
        (network,) = struct.unpack_from(order + "I", mm, 20)
        return network & 0xFFFF

    @property
    def map(self):
        if self._map is None:
            self._map = mmap.mmap(self.fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        return self._map

    def ethernet(self, start, caplen, origlen=None):
        """The record's frame at ``start`` in the map as the core gets it: as it is in an
        Ethernet capture, else an Ethernet copy (the map is read-only). With ``origlen``:
        (the frame, its length on the wire when the capture cut it, else 0)."""
        frame, grown = self.as_ethernet(memoryview(self.map)[start:start + caplen])
        if origlen is None:
            return frame
        return frame, origlen + grown if caplen < origlen else 0

    def as_ethernet(self, frame):
        """(``frame`` as the core gets it, the bytes its link header grew by)."""
        if self.link is None:
            return frame, 0
        return self.link.ethernet(memoryview(bytearray(frame)), 0, 0, len(frame))

    def read_ts(self, at):
        """The timestamp of the record at ``at`` (microseconds)."""
        return _ts(os.pread(self.fd, 8, at), 0, self.order == "<", self.nanosecond)

    def close(self):
        if self._map is not None:
            try:
                self._map.close()
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
            if self.name == self.path:
                return exc
            # The copy of a compressed capture (engine/split_input.py): its offsets are
            # those the reader names in the decompressed capture.
            return PcapFormatError(f"{self.name}{str(exc)[len(self.path):]}")
        return None


class Plan:
    """A split run's input as its workers read it, made by the parent before the fork and
    only read after it: the capture's records in order, in chunks of (buckets, sizes,
    count): each frame's bucket (uint16; NO_IP_BUCKET for a frame without IP) and its
    record's length in the file (uint32, header included); ``table``, the worker of each
    bucket; the number of frames, the last one's timestamp, and the reader's error for what
    follows the last whole record (None when the capture ends there); ``path``, the file
    the workers map."""

    def __init__(self, chunks, table, frames, last_ts, error, parts=1, early=False, path=None):
        self.path = path
        self.parts = parts              # the parts of the pass kept (read at once)
        self.early = early              # the pass begin_plan() began
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


def plan_split(scan, workers, parts=None):
    """One pass over the capture up to its last whole record: every frame's bucket and
    record length, the frames per bucket, and from them the bucket table (core/split.py's
    balance: the largest buckets first, each to the worker with the fewest frames).

    The pass is cut in ``parts`` (by default one per worker, up to the CPUs the process may
    use, when the capture is large enough to pay for a thread), read at once in threads:
    each part begins at a record header found by resync() near its share of the file, and
    is kept only when the part before it ends exactly there (a walk from the first record
    only lands on record headers); otherwise the pass goes on from where that part ended.
    Without ``parts``, the pass begin_plan() began on the same file is taken when there
    is one."""
    read = _take_early(scan) if parts is None else None
    early = read is not None
    if not early:
        read = _read_parts(scan, parts or _parts(scan.size, workers, _cpus()))
    starts, found = read
    counts = array("q", bytes(8 << BUCKET_BITS))
    chunks = []
    last = None
    off = 24
    kept = 0
    for k, result in enumerate(found):
        rest = starts[k] != off
        kept += not rest
        if rest:
            # The part before ended elsewhere (its guess was no record header, or the
            # capture is cut short before it): the pass goes on from there, alone.
            result = _scan_part(scan, off, -1)
        part_chunks, part_counts, off, part_last = result
        for bucket, count in enumerate(part_counts):
            counts[bucket] += count
        chunks += part_chunks
        last = part_last if part_last is not None else last
        if rest:
            break
    frames = sum(count for _, _, count in chunks)
    table = bytes(balance(counts, workers)) + b"\x00"       # NO_IP_BUCKET: worker 0
    last_ts = scan.read_ts(last) if last is not None else 0
    return Plan(chunks, table, frames, last_ts, scan.check_end(off), kept, early, scan.path)


def _parts(size, workers, cpus):
    return max(1, min(workers, cpus, size // PART_BYTES))


def _read_parts(scan, parts):
    """The pass in ``parts`` read at once: (the offset where each part begins, each part's
    (chunks, counts, offset where its walk stopped, offset of its last record))."""
    little = scan.order == "<"
    starts = [24]
    for k in range(1, parts):
        guess = scan.size * k // parts
        window = os.pread(scan.fd, RESYNC_BYTES, guess)
        at = _resync(window, 0, little, scan.nanosecond)
        if at >= 0 and guess + at > starts[-1]:
            starts.append(guess + at)
    stops = starts[1:] + [-1]
    found = [None] * len(starts)
    failed = []

    def part(k):
        try:
            found[k] = _scan_part(scan, starts[k], stops[k])
        except BaseException as exc:     # re-raised by the caller's thread
            failed.append(exc)

    threads = [threading.Thread(target=part, args=(k,), daemon=True)
               for k in range(1, len(starts))]
    for thread in threads:
        thread.start()
    part(0)
    for thread in threads:
        thread.join()
    if failed:
        raise failed[0]
    return starts, found


# The pass begun by begin_plan(), until plan_split() takes it.
_early = None


def begin_plan(path, workers):
    """Begin the pass of a split run's plan over the capture file at ``path`` before the
    run needs it: the command line calls this first thing when it names a capture file
    and workers. A child process reads the file while the parent imports the package and
    sets the app up (about 50 ms: on two CPUs the plan of 110 MB is then ready when the
    run comes to it). Of a pcapng file the child first writes the classic pcap copy the
    workers map (engine/split_input.py) into an unnamed file in the temporary folder
    (O_TMPFILE: gone with the last descriptor), and makes the pass of the copy. plan_split() takes the pass when it is of the same file (device,
    inode, size, modification time); what the pass meets (no such file, a file cut
    short) is left to the run's own reading to name. Only with the C loops, for a classic
    pcap file of at most EARLY_MAX_BYTES.

    A new interpreter (posix_spawn), neither a thread nor a fork: beside a thread, or with
    a forked child holding its pages (each first write a copy), the parent's imports took
    as long as the pass saved."""
    global _early
    if _early is not None:
        _early.cancel()          # a pass no run took (the last one failed before its plan)
        _early = None
    if _scan_blocks is scan_blocks or not sys.executable:
        return
    try:
        # A regular file only: the child must not open a pipe, whose bytes are the run's.
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > EARLY_MAX_BYTES:
            return
        with open(path, "rb", buffering=0) as f:
            magic = f.read(4)
        if magic in PCAP_MAGIC:
            _early = _EarlyPass(path, workers)
        elif magic == PCAPNG_MAGIC and _pcapng_to_pcap is not None:
            _early = _EarlyPass(path, workers, copy=True)
    except OSError:
        _early = None


# The descriptors of the memory file the child writes the pass to, and of the unnamed file
# it writes a pcapng capture's classic pcap copy to.
EARLY_FD = 3
COPY_FD = 4
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
# The largest capture whose pass begins early. The child reads in one part (a CPU left
# to the parent's imports): 110 MB in about the parent's start-up, while a larger capture
# makes the parent wait for it longer than the parts it reads itself take (550 MB on two
# CPUs: the plan ready 0.115 s into the run instead of 0.050 s).
EARLY_MAX_BYTES = 192 << 20


def _identity(fd):
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class _EarlyPass:
    """The child process of begin_plan(): it writes the pass (marshal) to a memory file
    and ends (_early_child); take() waits for it and reads the pass back. With ``copy``
    (a pcapng capture), the child writes the classic pcap copy first, and copy_of() gives
    it to the run."""

    def __init__(self, path, workers, copy=False):
        self.fd = os.memfd_create("mosxdp-plan", os.MFD_CLOEXEC)
        self.copy_fd = None
        self._read = None           # the child's pass once read: (identity, starts, parts, copy)
        actions = [(os.POSIX_SPAWN_DUP2, self.fd, EARLY_FD)]
        try:
            if copy:
                self.copy_fd = os.open(_temp_folder(), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC,
                                       0o600)
                actions.append((os.POSIX_SPAWN_DUP2, self.copy_fd, COPY_FD))
            # The folder holding this mosxdp, alone: the child imports nothing else (-S).
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            argv = [sys.executable, "-S", "-c",
                    "from mosxdp.engine.split_feed import _early_child; _early_child()",
                    path, str(workers), str(os.getpid()), "copy" if copy else "map"]
            self.pid = os.posix_spawn(sys.executable, argv, dict(os.environ, PYTHONPATH=root),
                                      file_actions=actions)
        except OSError:
            self._close()
            raise
        atexit.register(self.cancel)

    def _result(self):
        """The child's pass, waited for and read once: (identity of the capture, starts,
        parts, identity of the copy or None), or None when it made none."""
        if self.pid is not None:
            _, status = os.waitpid(self.pid, 0)
            atexit.unregister(self.cancel)
            self.pid = None
            self._read = False
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                with open(self.fd, "rb", closefd=False) as f:
                    f.seek(0)
                    self._read = marshal.loads(f.read())
        return self._read or None

    def copy_of(self, path):
        """A descriptor (the caller's to close) of the classic pcap copy the child wrote
        of the capture at ``path``, or None."""
        read = self._result()
        if read is None or self.copy_fd is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if tuple(read[0]) != (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns):
            return None
        return os.dup(self.copy_fd)

    def take(self, scan):
        """The pass as _read_parts gives it when the child read ``scan``'s file (the
        capture, or the copy of it), else None."""
        try:
            read = self._result()
        finally:
            self._close()
        if read is None:
            return None
        identity, starts, parts, copy = read
        if tuple(identity if copy is None else copy) != _identity(scan.fd):
            return None
        found = [([(array("H", b), array("I", s), n) for b, s, n in chunks], array("q", counts),
                  off, last) for chunks, counts, off, last in parts]
        return starts, found

    def cancel(self):
        """The run ended without taking the pass: the child is ended and reaped."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pid = None
        self._close()

    def _close(self):
        for fd in (self.fd, self.copy_fd):
            if fd is not None:
                os.close(fd)
        self.fd = self.copy_fd = None


def _temp_folder():
    """Where the copy of a pcapng capture goes: TMPDIR's folder as tempfile finds it,
    without importing tempfile (a few ms of the start-up this pass exists to shorten)."""
    for name in ("TMPDIR", "TEMP", "TMP"):
        folder = os.environ.get(name)
        if folder:
            return folder
    return "/tmp"


def early_copy(path):
    """A descriptor of the classic pcap copy of the pcapng capture at ``path`` that
    begin_plan's child wrote (the caller's to close), or None."""
    return None if _early is None else _early.copy_of(path)


def _early_child():
    """The process begin_plan() starts (``path workers parent map|copy`` in sys.argv): the
    pass, written to EARLY_FD (with ``copy``, of the classic pcap copy of the pcapng at
    ``path``, written to COPY_FD first); exit status 1, silent, when it cannot be made."""
    code = 1
    try:
        path, workers, parent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        copy = sys.argv[4] == "copy"
        # Killed with the parent: a pass of gigabytes outlives no run.
        _die_with_parent()
        if os.getppid() == parent:
            copied = None
            if copy:
                identity = copy_pcapng(path, COPY_FD)
                if identity is None:
                    raise OSError(errno.EINVAL, path)     # the run makes the copy itself
                path = f"/proc/self/fd/{COPY_FD}"
            scan = Scan(path)
            try:
                # Before the reading: a file changed meanwhile is not the parent's.
                if copy:
                    copied = _identity(scan.fd)
                else:
                    identity = _identity(scan.fd)
                if not stat.S_ISREG(os.fstat(scan.fd).st_mode):
                    raise OSError(errno.EINVAL, path)
                # A CPU left to the parent, which imports meanwhile.
                starts, found = _read_parts(scan, _parts(scan.size, workers, _cpus() - 1))
            finally:
                scan.close()
            parts = [([(b.tobytes(), s.tobytes(), n) for b, s, n in chunks], counts.tobytes(),
                      off, last) for chunks, counts, off, last in found]
            with open(EARLY_FD, "wb") as out:
                out.write(marshal.dumps((identity, starts, parts, copied)))
            code = 0
    except BaseException:
        pass
    os._exit(code)


def copy_pcapng(path, out_fd):
    """The pcapng capture at ``path`` written to ``out_fd`` as the classic pcap a split
    run's workers map (_splitscan.pcapng_to_pcap): the capture's identity, taken before
    the reading, or None when the C loop declines it or is not built, or the file is
    empty or not regular (the run then writes the reader's frames: split_input.py)."""
    if _pcapng_to_pcap is None:
        return None
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None
        identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
            mm.madvise(mmap.MADV_SEQUENTIAL)
            done = _pcapng_to_pcap(mm, out_fd)
    if done is None or (done[0] != LINKTYPE_ETHERNET and done[0] not in LINK_LAYERS):
        return None                 # the reader names the link type
    return identity


def _take_early(scan):
    """The early pass's (starts, parts) when it read this scan's file, else None."""
    global _early
    early, _early = _early, None
    return None if early is None else early.take(scan)


def _scan_part(scan, off, stop_at):
    """The records from ``off`` up to the one at ``stop_at`` (-1: the end), read in blocks:
    (chunks, counts, offset where the walk stopped, offset of its last record or None)."""
    counts = array("q", bytes(8 << BUCKET_BITS))
    little = scan.order == "<"
    caplen_at = struct.Struct(scan.order + "I").unpack_from
    fd, size = scan.fd, scan.size
    end = size if stop_at < 0 else stop_at
    block = bytearray(BLOCK_BYTES)
    base, have = off, 0              # the block holds the file's bytes [base, base + have)
    chunks = []
    last = None
    more = True
    while more:
        buckets = array("H", bytes(2 * CHUNK_FRAMES))
        sizes = array("I", bytes(4 * CHUNK_FRAMES))
        n = 0
        while n < CHUNK_FRAMES:
            if off >= end:
                more = False
                break
            off, n, base, have = _scan_blocks(fd, block, base, have, off, end, size, little,
                                              counts, scan.linktype, buckets, sizes, n)
            if n == CHUNK_FRAMES or off >= end:
                continue
            # Stopped at a record not whole in the block (the end, or larger than the
            # block), or at a frame off the fast path.
            rel = off - base
            with memoryview(block) as whole, whole[:have] as view:
                caplen = caplen_at(view, rel + 8)[0] if rel + 16 <= have else None
                if caplen is not None and caplen > _MAX_RECORD:
                    more = False               # corrupt: check_end names it
                    break
                if caplen is None or rel + 16 + caplen > have:
                    if base + have >= size:
                        more = False           # the end, or a record cut short
                        break
                    if len(block) < 16 + (caplen or 0):
                        block = bytearray(16 + caplen)
                    base, have = off, 0
                    continue
                # A frame off the fast path: its hash by the core's parser.
                frame, _ = scan.as_ethernet(view[rel + 16:rel + 16 + caplen])
            value = frame_hash(frame)
            bucket = NO_IP_BUCKET if value is None else value >> BUCKET_SHIFT
            counts[0 if value is None else bucket] += 1
            buckets[n] = bucket
            sizes[n] = 16 + caplen
            off += 16 + caplen
            n += 1
        if n:
            chunks.append((buckets, sizes, n))
            last = off - sizes[n - 1]
    return chunks, counts, off, last


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


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


def scan_records(mm, off, stop_at, little, counts, linktype, buckets, sizes, index):
    """From the record at ``off`` (frame number ``index``) on, up to the record at
    ``stop_at`` (-1: the end): each fast-path frame's bucket counted in ``counts`` and
    stored in ``buckets[index]``, its record's length in ``sizes[index]``; stops at or past
    stop_at, at the end, a record cut short, a frame off the fast path (here every frame of
    a link type other than Ethernet) or when the arrays are full. Returns (offset of the
    first record not read, index)."""
    if linktype != LINKTYPE_ETHERNET:
        return off, index
    caplen_at = struct.Struct(("<" if little else ">") + "I").unpack_from
    room = min(len(buckets), len(sizes))
    if stop_at < 0:
        stop_at = len(mm)
    while index < room and off < stop_at:
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


def scan_blocks(fd, block, base, have, off, stop_at, size, little, counts, linktype, buckets,
                sizes, index):
    """scan_records over the file itself: ``block`` holds the file's bytes [base, base +
    have); when the walk stops at a record not whole in it, the block is read again from
    that record and the walk goes on. Returns (offset, index, base, have): stopped at
    stop_at, at the end of the file (``size``) or a record cut short there, at a frame off
    the fast path, when the arrays are full, or at a record larger than the block."""
    room = min(len(buckets), len(sizes))
    caplen_at = struct.Struct(("<" if little else ">") + "I").unpack_from
    if stop_at < 0 or stop_at > size:
        stop_at = size
    while True:
        with memoryview(block) as whole, whole[:have] as view:
            rel, index = _scan_records(view, off - base, stop_at - base, little, counts,
                                       linktype, buckets, sizes, index)
            off = base + rel
            if index == room or off >= stop_at:
                break
            caplen = caplen_at(view, rel + 8)[0] if rel + 16 <= have else None
            if caplen is not None and rel + 16 + caplen <= have and caplen <= _MAX_RECORD:
                break                       # a frame off the fast path
            if base + have >= size:
                break                       # the end, or a record cut short there
            if caplen is not None and (caplen > _MAX_RECORD or 16 + caplen > len(block)):
                break                       # corrupt, or larger than the block
            if rel == 0 and have == len(block):
                break
        base = off
        have = os.preadv(fd, [block], base)
    return off, index, base, have


def resync(mm, at, little, ns):
    """The first offset at or after ``at`` (within 8 MiB) where 16 record headers follow
    one another as a capture's do, or reach its end exactly; -1 if none. A guess:
    plan_split keeps a part that begins there only when the walk before lands on it."""
    fmt = struct.Struct(("<" if little else ">") + "IIII").unpack_from
    frac_max = 1_000_000_000 if ns else 1_000_000
    size = len(mm)
    for start in range(at, min(size, at + (8 << 20))):
        pos = start
        prev = None
        k = 0
        while k < 16 and pos + 16 <= size:
            sec, frac, caplen, origlen = fmt(mm, pos)
            if (frac >= frac_max or caplen == 0 or caplen > origlen or caplen > _MAX_RECORD
                    or pos + 16 + caplen > size
                    or (prev is not None and abs(sec - prev) > 86400)):
                break
            prev = sec
            pos += 16 + caplen
            k += 1
        if k == 16 or (k and pos == size):
            return start
    return -1


try:
    if PURE_PYTHON:
        raise ImportError
    from ._splitscan import (die_with_parent as _die_with_parent,
                             pcapng_to_pcap as _pcapng_to_pcap, resync as _resync,
                             scan_blocks as _scan_blocks, scan_records as _scan_records)
except ImportError:
    _resync, _scan_blocks, _scan_records = resync, scan_blocks, scan_records
    _pcapng_to_pcap = None
