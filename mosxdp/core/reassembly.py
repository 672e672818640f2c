"""Bytestream reassembly: an infinite but windowed buffer over 64-bit stream offsets.

A `StreamBuffer` holds the bytes one side of a connection received, addressed by stream
offsets (0 = first payload byte after the SYN; Python ints, so they never wrap). Only the
window ``[head, head + capacity)`` is kept: data ending beyond it moves `head` forward and
the oldest bytes (and holes) are dropped, as mOS does with its tcp ring buffer.

Storage is a ``bytearray`` ring indexed by ``offset % len(ring)``, so a contiguous range is
at most two slice copies. The ring starts at INITIAL_RING bytes (or the capacity, if
smaller) and doubles, laid out anew, whenever bytes to store would reach past
``head + len(ring)``, up to ``capacity``: a flow of a few kB never allocates (nor zeroes)
the whole window, which is most flows, while a long stream pays its growth once. Which
offsets are actually held is kept as sorted, disjoint, non-touching runs in
two parallel lists (``_starts``, ``_ends``) searched with `bisect`.

A hole the receiver is known to have (its ACK passed it) while the bytes never reached
us is *lost*: `skip` makes it part of the runs, so the stream goes on after it, and
records it in two more lists (``_lost_starts``, ``_lost_ends``). Reads stop at a lost
range and `fragments` leaves it out, as a gap.

Sans-IO: stdlib and mosxdp.constants only.
"""
from bisect import bisect_left, bisect_right

# The compiled build's declarations (reassembly.pxd); decorators that change nothing in
# plain Python.
import cython

from .constants import MOS_OVERLAP_POLICY_FIRST, MOS_OVERLAP_POLICY_LAST

if cython.compiled:
    from cython.cimports.cpython.buffer import PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
    from cython.cimports.cpython.bytearray import PyByteArray_AS_STRING
    from cython.cimports.libc.string import memcpy

__all__ = ["StreamBuffer", "DEFAULT_MAX_FRAGMENTS"]

# Bounds the run lists so a peer sending many tiny out-of-order segments cannot make each
# insert O(n) on a huge list.
DEFAULT_MAX_FRAGMENTS = 1024

OVERLAP_POLICIES = (MOS_OVERLAP_POLICY_FIRST, MOS_OVERLAP_POLICY_LAST)

# The ring's first size: a few full-size segments.
INITIAL_RING = 16384


def _copy_into(ring, pos, data, n):
    """Copy the n bytes of ``data`` (a contiguous buffer of n bytes) into the bytearray
    ``ring`` at ``pos`` (in range) with one memcpy; False for any other ``data``, which the
    caller copies by slice assignment. Compiled build only."""
    try:
        PyObject_GetBuffer(data, cython.address(view), PyBUF_SIMPLE)
    except (TypeError, BufferError, ValueError):
        return False
    copied = view.len == n
    if copied:
        memcpy(PyByteArray_AS_STRING(ring) + pos, view.buf, n)
    PyBuffer_Release(cython.address(view))
    return copied


class StreamBuffer:
    """The received bytes of one side, within a window of `capacity` bytes.

    `insert` stores data and returns how many of its bytes had been received before
    (held, or below `head` and therefore already discarded). Overlapping bytes are
    resolved by `policy`: MOS_OVERLAP_POLICY_FIRST keeps the held bytes,
    MOS_OVERLAP_POLICY_LAST overwrites them.

    At most `max_fragments` runs are held (``len(fragments()) <= max_fragments``). An
    insert that would create one more run (new data touching no held run) is refused:
    nothing changes but `refused_fragments` (incremented) and `last_insert_refused`
    (True until the next non-empty insert); the overlap count is returned as usual.

    `skip(to)` gives up the bytes below `to` that are not held: they are lost, and the
    in-order stream (`next_offset`) continues after them. `mark_lost(start, end)` gives up
    a range anywhere (bytes a capture cut off their segment). A lost byte counts as received
    for the overlap count, the fragment cap and `next_offset`, never for reads, `held_bytes`
    or `fragments`. At most `max_fragments` lost ranges are kept: more move `head` past the
    oldest.
    """

    # `head` and `next_offset` are plain attributes (read-only for callers), kept up to
    # date by every insert: the stack reads them for each segment.
    __slots__ = ("_capacity", "_policy", "_max_fragments", "_ring", "_ring_len", "_view", "head",
                 "next_offset", "_starts", "_ends", "_tail", "refused_fragments",
                 "last_insert_refused", "_lost_starts", "_lost_ends")

    def __init__(self, capacity: int, policy: int = MOS_OVERLAP_POLICY_FIRST, *,
                 max_fragments: int = DEFAULT_MAX_FRAGMENTS, ring: int = INITIAL_RING):
        if max_fragments < 1:
            raise ValueError(f"max_fragments must be >= 1, not {max_fragments!r}")
        if ring < 1:
            raise ValueError(f"ring must be >= 1 byte, not {ring!r}")
        self._ring_len = ring      # the ring's first length (_alloc caps it at the capacity)
        self._alloc(capacity)
        self.policy = policy
        self._max_fragments = max_fragments
        # Oldest offset of the window: every byte below it is discarded.
        self.head = 0
        # End of the contiguous run from head (== head when the byte at head is missing).
        self.next_offset = 0
        self._starts: list[int] = []
        self._ends: list[int] = []
        # Lost ranges (see skip and mark_lost), sorted and disjoint, each inside a held run
        # (below next_offset, or beyond it for mark_lost). Ranges below head may linger
        # (the insert fast path does not look at them): readers clip at head.
        self._lost_starts: list[int] = []
        self._lost_ends: list[int] = []
        # End of the last held run, or None before the first insert and right after a
        # refused one: insert() takes its fast path when offset == _tail.
        self._tail = None
        self.refused_fragments = 0
        self.last_insert_refused = False

    def _alloc(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be > 0 bytes, not {capacity!r}")
        self._capacity = capacity
        if self._ring_len > capacity:
            self._ring_len = capacity
        self._ring = bytearray(self._ring_len)
        self._view = memoryview(self._ring)

    def _fit(self, end: int) -> int:
        """Grow the ring so that [head, end) fits (at most to the capacity: bytes below
        ``end - capacity`` are about to leave the window); returns its new length. Every
        byte stored is in [head, head + old length) (an insert may be half done, its runs
        not yet recorded), so that whole range is copied to its new place."""
        old_len = self._ring_len
        size = old_len
        while size < end - self.head and size < self._capacity:
            size *= 2
        if size > self._capacity:
            size = self._capacity
        if size == old_len:
            return size
        old_view = self._view
        ring = bytearray(size)
        start = self.head
        stop = start + old_len
        while start < stop:
            src = start % old_len
            dst = start % size
            n = min(stop - start, old_len - src, size - dst)
            ring[dst:dst + n] = old_view[src:src + n]
            start += n
        self._ring = ring
        self._view = memoryview(ring)
        self._ring_len = size
        return size

    # -- configuration ------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def max_fragments(self) -> int:
        return self._max_fragments

    @property
    def policy(self) -> int:
        return self._policy

    @policy.setter
    def policy(self, value: int) -> None:
        assert value in OVERLAP_POLICIES, value   # checked where it enters (config, API)
        self._policy = int(value)

    def resize(self, capacity: int) -> None:
        """Change the capacity; only allowed while nothing was ever inserted."""
        # The first non-empty insert can never be refused, and a run never disappears
        # without a newer one taking its place.
        if self._ends:
            raise ValueError("cannot resize a stream buffer after data was inserted")
        self._alloc(capacity)

    def grow(self, capacity: int) -> None:
        """Widen the window to `capacity` bytes, keeping every byte held (a smaller value
        changes nothing). The ring grows when bytes beyond its length come (_fit)."""
        if capacity > self._capacity:
            self._capacity = capacity

    # -- state --------------------------------------------------------------------------

    @property
    def last_received_end(self) -> int:
        """Largest end offset of any insert that was not refused, or of a skip (0 before
        the first)."""
        # Held bytes are only ever discarded from below, so this is the last run's end.
        ends = self._ends
        return ends[-1] if ends else 0

    @property
    def held_bytes(self) -> int:
        return sum(length for _, length in self.fragments())

    @property
    def lost_bytes(self) -> int:
        """Bytes of the lost ranges still in the window."""
        return sum(end - start for start, end in self.lost())

    def lost(self) -> list[tuple[int, int]]:
        """The lost ranges in the window as (start, end), in offset order."""
        head = self.head
        return [(start if start > head else head, end)
                for start, end in zip(self._lost_starts, self._lost_ends) if end > head]

    def lost_at(self, offset: int) -> int:
        """How many lost bytes follow `offset` when it is in a lost range, else 0."""
        if offset < self.head or not self._lost_starts:
            return 0
        idx = bisect_right(self._lost_starts, offset) - 1
        if idx < 0 or self._lost_ends[idx] <= offset:
            return 0
        return self._lost_ends[idx] - offset

    def fragments(self) -> list[tuple[int, int]]:
        """Held runs as (offset, length), in offset order; a lost range is a gap between two."""
        runs = [(s, e - s) for s, e in zip(self._starts, self._ends)]
        lost = self.lost()
        if not lost:
            return runs
        held = []
        index = 0
        for start, length in runs:
            end = start + length
            while index < len(lost) and lost[index][1] <= start:
                index += 1
            cursor = start
            while index < len(lost) and lost[index][0] < end:
                if lost[index][0] > cursor:
                    held.append((cursor, lost[index][0] - cursor))
                cursor = lost[index][1]
                index += 1
            if cursor < end:
                held.append((cursor, end - cursor))
        return held

    # -- insert -------------------------------------------------------------------------

    def insert(self, offset: int, data) -> int:
        """Store bytes-like `data` at stream `offset`; return the count of overlapped bytes."""
        # Fast path: append at most one window to the end of the last run (in-order data,
        # also behind a hole). It overlaps nothing and creates no run, so it is never
        # refused. Empty data passes through it unchanged, as a no-op.
        n = len(data)
        if offset == self._tail and n <= self._capacity:
            end = offset + n
            cap = self._capacity
            size = self._ring_len
            if end - self.head > size and size < cap:
                size = self._fit(end)
            pos = offset % size
            if pos + n > size:
                self._store(offset, data)
            elif not (cython.compiled and _copy_into(self._ring, pos, data, n)):
                self._ring[pos:pos + n] = data
            starts, ends = self._starts, self._ends
            self._tail = ends[-1] = end
            head = end - cap
            if head > self.head:
                # The ring slots just written held bytes below the new head: no loss.
                self.head = head
                if starts[0] < head:
                    if ends[0] > head:
                        starts[0] = head
                    else:
                        self._discard_below(head)
            else:
                head = self.head
            self.next_offset = ends[0] if starts[0] == head else head
            return 0
        return self._insert(offset, data, n)

    def fill(self, offset: int, data) -> int:
        """insert() under MOS_OVERLAP_POLICY_FIRST whatever the policy: held bytes stay."""
        policy = self._policy
        self._policy = MOS_OVERLAP_POLICY_FIRST
        try:
            return self.insert(offset, data)
        finally:
            self._policy = policy

    def _insert(self, offset: int, data, n: int) -> int:
        if offset < 0:
            raise ValueError(f"stream offset must be >= 0, not {offset!r}")
        if n == 0:
            return 0
        end = offset + n
        head = self.head
        starts, ends = self._starts, self._ends
        self.last_insert_refused = False

        # Overlap counts what was received before this insert (below head, or held),
        # even where the window slide below discards it right after.
        if offset < head:
            if end <= head:
                return n
            below = head - offset
            start = head
        else:
            below = 0
            start = offset
        # Runs [lo, hi) touch or overlap [start, end) and will merge with it; a run
        # that only touches adds 0 to the overlap.
        lo = bisect_left(ends, start)
        hi = bisect_right(starts, end)
        overlap = below
        for idx in range(lo, hi):
            run_start = starts[idx]
            run_end = ends[idx]
            overlap += ((run_end if run_end < end else end)
                        - (run_start if run_start > start else start))
        if overlap == n:
            # Nothing new (a retransmission), hence no slide: only LAST rewrites bytes.
            if self._policy == MOS_OVERLAP_POLICY_LAST:
                self._store(start, memoryview(data)[below:])
            return n

        # Window slide: runs ending at or below the new head disappear entirely (also
        # those that touched or overlapped the new bytes below it).
        new_head = end - self._capacity
        dead = 0
        if new_head > head:
            dead = bisect_right(ends, new_head)
            if new_head > start:
                start = new_head
            if lo < dead:
                lo = dead
        if lo >= hi and len(ends) - dead >= self._max_fragments:
            self.refused_fragments += 1
            self.last_insert_refused = True
            # Route the next insert through here so it clears last_insert_refused.
            self._tail = None
            return overlap

        if new_head > head:
            self.head = head = new_head
            self._discard_below(new_head)
            lo -= dead
            hi -= dead

        if overlap == below or self._policy == MOS_OVERLAP_POLICY_LAST:
            self._store(start, data if start == offset else memoryview(data)[start - offset:])
        else:
            # FIRST: fill only the gaps between the held runs.
            view = memoryview(data)
            cursor = start
            for idx in range(lo, hi):
                run_start = starts[idx]
                if run_start > cursor:
                    self._store(cursor, view[cursor - offset:run_start - offset])
                if ends[idx] > cursor:
                    cursor = ends[idx]
            if cursor < end:
                self._store(cursor, view[cursor - offset:])

        if lo < hi:
            run_start = starts[lo]
            run_end = ends[hi - 1]
            starts[lo:hi] = (run_start if run_start < start else start,)
            ends[lo:hi] = (run_end if run_end > end else end,)
        else:
            starts.insert(lo, start)
            ends.insert(lo, end)
        self._tail = ends[-1]
        self.next_offset = ends[0] if starts[0] == head else head
        return overlap

    def _discard_below(self, head: int) -> None:
        """Drop the runs, or the parts of a run, below the (new) head, and the lost ranges
        ending there."""
        starts, ends = self._starts, self._ends
        dead = bisect_right(ends, head)
        if dead:
            del starts[:dead], ends[:dead]
        if starts and starts[0] < head:
            starts[0] = head
        lost_ends = self._lost_ends
        if lost_ends:
            dead = bisect_right(lost_ends, head)
            if dead:
                del self._lost_starts[:dead], lost_ends[:dead]

    # -- lost bytes ---------------------------------------------------------------------

    def skip(self, to: int) -> int:
        """The receiver has every byte below `to`: give up those not held as lost, so that
        `next_offset` reaches `to` (or the end of the run held there). Returns the number of
        bytes newly lost. Ending beyond ``head + capacity`` moves `head` to
        ``to - capacity``; more than `max_fragments` lost ranges move it past the oldest."""
        nxt = self.next_offset
        if to <= nxt:
            return 0
        head = self.head
        starts, ends = self._starts, self._ends
        self._discard_below(head)    # lost ranges the insert fast path left below head
        # The runs from the first beyond next_offset to the last starting at or before `to`
        # merge with [head, next_offset) into one run; the gaps between them are lost.
        first = 1 if starts and starts[0] == head else 0
        last = bisect_right(starts, to)
        cursor = nxt
        gaps = []
        for idx in range(first, last):
            if starts[idx] > cursor:
                gaps.append((cursor, starts[idx]))
            cursor = ends[idx]
        if cursor < to:
            gaps.append((cursor, to))
        end = ends[last - 1] if last and ends[last - 1] > to else to
        starts[:last] = (head,)
        ends[:last] = (end,)
        for gap_start, gap_end in gaps:
            self._add_lost(gap_start, gap_end)
        if to - self._capacity > head:
            self.head = head = to - self._capacity
            self._discard_below(head)
        self._bound_lost()
        # After a refusal the next insert must take the slow path (it clears the flag).
        self._tail = ends[-1] if ends and not self.last_insert_refused else None
        self.next_offset = ends[0] if starts and starts[0] == self.head else self.head
        return sum(gap_end - gap_start for gap_start, gap_end in gaps)

    def mark_lost(self, start: int, end: int) -> int:
        """The bytes [start, end) will never be seen (a capture cut them off their segment):
        they count as received, like the bytes `skip` gives up, and are lost. From at or
        below `next_offset` this is ``skip(end)``; further on, the range is held as received
        but lost, and the in-order stream goes on past it once the bytes before it are
        there. Bytes already held in the range stay. Returns the number of bytes newly lost;
        like an insert, a range that would make one run more than `max_fragments` is
        refused (`refused_fragments`, `last_insert_refused`) and loses nothing."""
        if start <= self.next_offset:
            return self.skip(end)
        starts, ends = self._starts, self._ends
        gaps = []
        cursor = start
        for idx in range(bisect_right(ends, start), len(starts)):
            if starts[idx] >= end:
                break
            if starts[idx] > cursor:
                gaps.append((cursor, starts[idx]))
            if ends[idx] > cursor:
                cursor = ends[idx]
        if cursor < end:
            gaps.append((cursor, end))
        # Zeros stand in the ring where nothing was held (reads stop at a lost range).
        self.fill(start, bytes(end - start))
        if self.last_insert_refused:
            return 0
        lost = 0
        for gap_start, gap_end in gaps:
            if gap_start < self.head:      # the window slid past it while filling
                gap_start = self.head
            if gap_start < gap_end:
                self._add_lost(gap_start, gap_end)
                lost += gap_end - gap_start
        self._bound_lost()
        return lost

    def _add_lost(self, start: int, end: int) -> None:
        """Record [start, end) (no byte of it lost yet) among the lost ranges, in order,
        joined to a range it touches."""
        lost_starts, lost_ends = self._lost_starts, self._lost_ends
        idx = bisect_left(lost_ends, start)
        if idx < len(lost_ends) and lost_ends[idx] == start:
            lost_ends[idx] = end
            if idx + 1 < len(lost_starts) and lost_starts[idx + 1] == end:
                lost_ends[idx] = lost_ends[idx + 1]
                del lost_starts[idx + 1], lost_ends[idx + 1]
        elif idx < len(lost_starts) and lost_starts[idx] == end:
            lost_starts[idx] = start
        else:
            lost_starts.insert(idx, start)
            lost_ends.insert(idx, end)

    def _bound_lost(self) -> None:
        """At most `max_fragments` lost ranges: more move `head` past the oldest."""
        lost_ends = self._lost_ends
        if len(lost_ends) <= self._max_fragments:
            return
        self._discard_below(self.head)     # ranges left below head do not count
        if len(lost_ends) <= self._max_fragments:
            return
        self.head = head = lost_ends[-1 - self._max_fragments]
        self._discard_below(head)
        starts, ends = self._starts, self._ends
        self._tail = ends[-1] if ends and not self.last_insert_refused else None
        self.next_offset = ends[0] if starts and starts[0] == head else head

    def _store(self, offset: int, chunk) -> None:
        """Copy bytes-like chunk (at most capacity bytes, inside the window) into the ring."""
        n = len(chunk)
        size = self._ring_len
        if offset + n - self.head > size and size < self._capacity:
            size = self._fit(offset + n)
        pos = offset % size
        split = size - pos
        if n <= split:
            self._ring[pos:pos + n] = chunk
        else:
            chunk = memoryview(chunk)
            self._ring[pos:] = chunk[:split]
            self._ring[:n - split] = chunk[split:]

    # -- read ---------------------------------------------------------------------------

    def _span(self, offset: int, max_len: int) -> int:
        """How many bytes are held contiguously from offset, up to max_len."""
        if max_len < 0:
            raise ValueError(f"max_len must be >= 0, not {max_len!r}")
        if offset < self.head:
            return 0
        idx = bisect_right(self._starts, offset) - 1
        if idx < 0:
            return 0
        run_end = self._ends[idx]
        if run_end <= offset:
            return 0
        lost_starts = self._lost_starts
        if lost_starts:
            idx = bisect_right(lost_starts, offset)
            if idx and self._lost_ends[idx - 1] > offset:
                return 0
            if idx < len(lost_starts) and lost_starts[idx] < run_end:
                run_end = lost_starts[idx]
        return min(run_end - offset, max_len)

    def read(self, offset: int, max_len: int) -> bytes:
        """Up to max_len held bytes from offset, stopping at a hole (b"" if none held)."""
        n = self._span(offset, max_len)
        if not n:
            return b""
        pos = offset % self._ring_len
        split = self._ring_len - pos
        view = self._view
        if n <= split:
            return bytes(view[pos:pos + n])
        return b"".join((view[pos:], view[:n - split]))

    def read_into(self, offset: int, buffer) -> int:
        """Like read(offset, len(buffer)) but fills writable `buffer`; returns the count."""
        target = memoryview(buffer)
        n = self._span(offset, len(target))
        if not n:
            return 0
        pos = offset % self._ring_len
        split = self._ring_len - pos
        view = self._view
        if n <= split:
            target[:n] = view[pos:pos + n]
        else:
            target[:split] = view[pos:]
            target[split:n] = view[:n - split]
        return n

    def __repr__(self) -> str:
        return (f"StreamBuffer(capacity={self._capacity}, policy={self._policy}, "
                f"head={self.head}, next_offset={self.next_offset}, "
                f"fragments={self.fragments()})")
