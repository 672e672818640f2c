"""StreamBuffer: golden cases, then a hypothesis state machine against a naive model."""
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mosxdp.constants import MOS_OVERLAP_POLICY_FIRST as FIRST
from mosxdp.constants import MOS_OVERLAP_POLICY_LAST as LAST
from mosxdp.core.reassembly import DEFAULT_MAX_FRAGMENTS, StreamBuffer


# -- golden cases ---------------------------------------------------------------------------

def test_empty_buffer():
    sb = StreamBuffer(16)
    assert (sb.head, sb.next_offset, sb.last_received_end, sb.held_bytes) == (0, 0, 0, 0)
    assert sb.fragments() == []
    assert sb.read(0, 10) == b""
    assert sb.policy == FIRST
    assert sb.max_fragments == DEFAULT_MAX_FRAGMENTS
    assert sb.refused_fragments == 0 and not sb.last_insert_refused


def test_in_order():
    sb = StreamBuffer(64)
    assert sb.insert(0, b"hello ") == 0
    assert sb.insert(6, b"world") == 0
    assert sb.next_offset == 11 == sb.last_received_end
    assert sb.fragments() == [(0, 11)]
    assert sb.read(0, 100) == b"hello world"
    assert sb.read(6, 3) == b"wor"
    assert sb.held_bytes == 11


def test_out_of_order_fills_hole():
    sb = StreamBuffer(64)
    sb.insert(10, b"KLMNO")
    assert sb.next_offset == 0
    assert sb.fragments() == [(10, 5)]
    assert sb.last_received_end == 15
    sb.insert(0, b"ABCDE")
    assert sb.fragments() == [(0, 5), (10, 5)]
    assert sb.next_offset == 5
    assert sb.insert(5, b"FGHIJ") == 0
    assert sb.fragments() == [(0, 15)]
    assert sb.next_offset == 15
    assert sb.read(0, 15) == b"ABCDEFGHIJKLMNO"


def test_holes_and_read_stops_at_hole():
    sb = StreamBuffer(64)
    sb.insert(0, b"abc")
    sb.insert(5, b"fg")
    sb.insert(9, b"j")
    assert sb.fragments() == [(0, 3), (5, 2), (9, 1)]
    assert sb.read(0, 10) == b"abc"
    assert sb.read(1, 10) == b"bc"
    assert sb.read(3, 10) == b""  # hole
    assert sb.read(5, 10) == b"fg"
    assert sb.read(9, 10) == b"j"
    assert sb.read(10, 10) == b""
    assert sb.read(0, 0) == b""
    assert sb.held_bytes == 6
    with pytest.raises(ValueError):
        sb.read(0, -1)


def test_touching_runs_merge():
    sb = StreamBuffer(64)
    sb.insert(4, b"efgh")
    sb.insert(12, b"mn")
    sb.insert(8, b"ijkl")  # touches both neighbours, overlaps neither
    assert sb.fragments() == [(4, 10)]
    assert sb.read(4, 100) == b"efghijklmn"


@pytest.mark.parametrize("policy, at, data, overlapped, expected", [
    (FIRST, 1, b"XYZ", 3, b"abcdef"), (LAST, 1, b"XYZ", 3, b"aXYZef"),       # inside
    (FIRST, 4, b"WXXY", 2, b"abcdefXY"), (LAST, 4, b"WXXY", 2, b"abcdWXXY"),  # extends
], ids=["inside-first", "inside-last", "extends-first", "extends-last"])
def test_overlap_policy(policy, at, data, overlapped, expected):
    sb = StreamBuffer(64, policy)
    sb.insert(0, b"abcdef")
    assert sb.insert(at, data) == overlapped
    assert sb.read(0, len(expected)) == expected
    assert sb.fragments() == [(0, len(expected))]
    assert sb.next_offset == len(expected)


@pytest.mark.parametrize("policy", [FIRST, LAST])
def test_exact_duplicate(policy):
    sb = StreamBuffer(64, policy)
    sb.insert(0, b"0123456789")
    assert sb.insert(0, b"0123456789") == 10
    assert sb.insert(3, b"345") == 3
    assert sb.fragments() == [(0, 10)]
    assert sb.read(0, 10) == b"0123456789"


@pytest.mark.parametrize("policy, expected", [(FIRST, b"aZbbZZccZd"), (LAST, b"ZZZZZZZZZZ")])
def test_overlap_across_several_fragments(policy, expected):
    sb = StreamBuffer(64, policy)
    sb.insert(0, b"a")
    sb.insert(2, b"bb")
    sb.insert(6, b"cc")
    sb.insert(9, b"d")
    # Overlaps 1 + 2 + 2 + 1 held bytes; the three holes are new.
    assert sb.insert(0, b"Z" * 10) == 6
    assert sb.fragments() == [(0, 10)]
    assert sb.read(0, 10) == expected


def test_overlap_counts_only_held_bytes_with_holes_inside():
    sb = StreamBuffer(64)
    sb.insert(2, b"cd")
    sb.insert(6, b"gh")
    assert sb.insert(3, b"DEFG") == 2  # 'd' at 3 and 'g' at 6
    assert sb.read(2, 10) == b"cdEFgh"


def test_window_slide_discards_oldest_bytes():
    sb = StreamBuffer(8)
    sb.insert(0, b"abcdef")
    sb.insert(6, b"ghij")  # end 10 > 0 + 8: head moves to 2
    assert sb.head == 2
    assert sb.fragments() == [(2, 8)]
    assert sb.read(0, 4) == b""  # below head
    assert sb.read(2, 100) == b"cdefghij"
    assert sb.next_offset == 10
    assert sb.last_received_end == 10


def test_window_slide_discards_holes():
    sb = StreamBuffer(8)
    sb.insert(0, b"ab")
    sb.insert(4, b"ef")
    assert sb.next_offset == 2
    sb.insert(10, b"kl")  # head -> 4: the hole [2, 4) is gone, the run at 4 is now first
    assert sb.head == 4
    assert sb.fragments() == [(4, 2), (10, 2)]
    assert sb.next_offset == 6
    sb.insert(13, b"n")  # head -> 6: next_offset stays at head since byte 6 is missing
    assert sb.head == 6
    assert sb.fragments() == [(10, 2), (13, 1)]
    assert sb.next_offset == 6


def test_window_slide_into_the_middle_of_a_run():
    sb = StreamBuffer(8)
    sb.insert(0, b"abcd")
    sb.insert(7, b"hijkl")  # head -> 4; run [0, 4) dropped whole
    assert sb.head == 4
    assert sb.fragments() == [(7, 5)]
    sb.insert(13, b"n")  # head -> 6: the run at 7 survives whole
    sb.insert(14, b"op")  # head -> 8: clips the run at 7
    assert sb.head == 8
    assert sb.fragments() == [(8, 4), (13, 3)]
    assert sb.read(8, 10) == b"ijkl"


def test_slide_drops_a_run_ending_exactly_at_the_new_head():
    sb = StreamBuffer(4)
    sb.insert(0, b"ab")
    sb.insert(5, b"f")
    # Ends at 6: head -> 2, so [0, 2) is dropped although it touches the new bytes.
    assert sb.insert(2, b"CDEF") == 1
    assert sb.head == 2
    assert sb.fragments() == [(2, 4)]
    assert sb.read(2, 4) == b"CDEf"


def test_grow_keeps_the_bytes_of_a_wrapped_ring():
    sb = StreamBuffer(8)
    sb.insert(0, b"abcdef")
    sb.insert(9, b"jkl")        # head -> 4, the ring wraps: [4, 6) and [9, 12) held
    assert sb.head == 4
    sb.grow(32)
    assert sb.capacity == 32
    assert sb.fragments() == [(4, 2), (9, 3)]
    assert sb.read(4, 10) == b"ef" and sb.read(9, 10) == b"jkl"
    sb.insert(30, b"z")         # fits the wider window: nothing slides
    assert sb.head == 4
    sb.insert(6, b"ghi")
    assert sb.read(4, 100) == b"efghijkl"
    sb.grow(16)                 # never shrinks
    assert sb.capacity == 32


def test_jump_far_ahead_discards_everything_before():
    sb = StreamBuffer(16)
    sb.insert(0, b"x" * 10)
    big = 2**63 + 5
    assert sb.insert(big, b"far") == 0
    assert sb.head == big + 3 - 16
    assert sb.fragments() == [(big, 3)]
    assert sb.next_offset == sb.head
    assert sb.read(big, 3) == b"far"
    assert sb.last_received_end == big + 3


def test_insert_longer_than_capacity_keeps_its_tail():
    sb = StreamBuffer(4)
    assert sb.insert(0, b"abcdefghij") == 0
    assert sb.head == 6
    assert sb.fragments() == [(6, 4)]
    assert sb.read(6, 4) == b"ghij"
    # An in-order append longer than the ring takes the general path too.
    sb.insert(10, b"klmnopq")
    assert sb.read(sb.head, 10) == b"nopq"


def test_ring_wrap():
    sb = StreamBuffer(10)
    stream = bytes(range(97, 97 + 26))
    for off in range(0, 26, 3):
        sb.insert(off, stream[off:off + 3])
        assert sb.read(sb.head, 10) == stream[sb.head:off + 3]
    assert sb.head == 16
    buf = bytearray(10)
    assert sb.read_into(17, buf) == 9
    assert bytes(buf[:9]) == stream[17:26]
    assert sb.read_into(5, buf) == 0


def test_wrap_out_of_order_and_overwrite_last():
    sb = StreamBuffer(8, LAST)
    sb.insert(0, b"01234567")
    sb.insert(14, b"EF")  # head -> 8; everything held is dropped
    assert sb.fragments() == [(14, 2)]
    sb.insert(9, b"9ABCD")  # wraps: offset 9 -> slot 1 ... offset 13 -> slot 5
    assert sb.fragments() == [(9, 7)]
    assert sb.insert(12, b"cdeF") == 4
    assert sb.read(9, 10) == b"9ABcdeF"
    assert sb.next_offset == 8  # byte 8 was never received


def test_data_below_head_is_overlap():
    sb = StreamBuffer(4)
    sb.insert(0, b"abcdef")  # head 2
    assert sb.insert(0, b"AB") == 2
    assert sb.insert(0, b"ABCD") == 4  # 2 below head + 2 held
    assert sb.insert(1, b"BCDEFGH") == 5  # 1 below head + 4 held; 2 new bytes, head -> 4
    assert sb.head == 4
    assert sb.read(4, 4) == b"efGH"
    assert sb.fragments() == [(4, 4)]


def test_overlap_counted_even_when_slide_discards_it():
    sb = StreamBuffer(4)
    sb.insert(0, b"ab")
    # 'ab' was held when the insert arrived, then the slide drops its first bytes.
    assert sb.insert(0, b"ABCDEFGH") == 2
    assert sb.fragments() == [(4, 4)]
    assert sb.read(4, 4) == b"EFGH"


def test_policy_setter_and_switch():
    sb = StreamBuffer(16)
    sb.insert(0, b"aaaa")
    sb.policy = LAST
    sb.insert(0, b"bb")
    sb.policy = FIRST
    assert sb.insert(1, b"cccc") == 3
    assert sb.read(0, 10) == b"bbaac"


def test_zero_length_and_negative_offsets():
    sb = StreamBuffer(16)
    assert sb.insert(5, b"") == 0
    assert sb.fragments() == [] and sb.last_received_end == 0
    with pytest.raises(ValueError):
        sb.insert(-1, b"x")
    with pytest.raises(ValueError):
        sb.insert(-1, b"")
    sb.insert(0, b"x")
    with pytest.raises(ValueError):
        sb.insert(-1, b"x")
    assert sb.fragments() == [(0, 1)]


def test_bytes_like_inputs():
    sb = StreamBuffer(8)
    frame = bytearray(b"....payload")
    sb.insert(0, memoryview(frame)[4:])
    sb.insert(7, bytearray(b"!!"))  # in-order append that wraps the ring and slides head
    assert sb.head == 1
    assert sb.read(1, 8) == b"ayload!!"


def test_resize():
    sb = StreamBuffer(16)
    sb.resize(4)
    assert sb.capacity == 4
    sb.insert(3, b"")  # a no-op is not an insert
    sb.resize(8)
    sb.insert(0, b"abcdefghij")
    assert sb.head == 2
    with pytest.raises(ValueError):
        sb.resize(32)
    with pytest.raises(ValueError):
        StreamBuffer(16).resize(0)
    with pytest.raises(ValueError):
        StreamBuffer(0)
    with pytest.raises(ValueError):
        StreamBuffer(-5)


def test_max_fragments_must_be_positive():
    with pytest.raises(ValueError):
        StreamBuffer(16, max_fragments=0)


def test_repr_shows_the_window():
    sb = StreamBuffer(16)
    sb.insert(4, b"xy")
    assert repr(sb) == ("StreamBuffer(capacity=16, policy=0, head=0, next_offset=0, "
                        "fragments=[(4, 2)])")


def test_refused_fragments():
    sb = StreamBuffer(64, max_fragments=2)
    sb.insert(0, b"ab")
    sb.insert(10, b"kl")
    assert sb.insert(20, b"uv") == 0
    assert sb.last_insert_refused and sb.refused_fragments == 1
    assert sb.fragments() == [(0, 2), (10, 2)]
    assert sb.last_received_end == 12  # refused data was not received
    # Data touching a held run is never refused, nor data that is all overlap.
    sb.insert(12, b"mn")
    assert not sb.last_insert_refused
    assert sb.insert(0, b"AB") == 2
    sb.insert(5, b"f")
    assert sb.last_insert_refused and sb.refused_fragments == 2
    # Closing the hole frees a slot.
    sb.insert(2, b"cdefghij")
    assert sb.fragments() == [(0, 14)]
    sb.insert(20, b"uv")
    assert not sb.last_insert_refused
    assert sb.fragments() == [(0, 14), (20, 2)]


def test_refusal_clears_on_next_fast_path_insert():
    sb = StreamBuffer(64, max_fragments=1)
    sb.insert(0, b"ab")
    sb.insert(5, b"f")
    assert sb.last_insert_refused
    sb.insert(2, b"cd")  # in-order append: must report not refused
    assert not sb.last_insert_refused
    assert sb.fragments() == [(0, 4)]


def test_refusal_counts_runs_surviving_the_slide():
    sb = StreamBuffer(8, max_fragments=2)
    sb.insert(0, b"a")
    sb.insert(2, b"c")
    # Ends at 12: head would move to 4 and drop both runs, so this one fits.
    sb.insert(10, b"kl")
    assert not sb.last_insert_refused
    assert sb.fragments() == [(10, 2)]


def test_refused_insert_reports_overlap_below_head():
    sb = StreamBuffer(8, max_fragments=1)
    sb.insert(0, b"ab")
    sb.insert(6, b"ghij")  # head -> 2 drops [0, 2): fits, the hole [2, 6) is at head
    assert sb.fragments() == [(6, 4)] and sb.head == 2
    assert sb.insert(1, b"BC") == 1  # byte 1 below head; [2, 3) would be a second run
    assert sb.last_insert_refused and sb.refused_fragments == 1
    assert sb.fragments() == [(6, 4)]


# -- lost bytes (skip) ------------------------------------------------------------------------

def test_skip_gives_up_the_holes_below_and_goes_on_after_them():
    sb = StreamBuffer(64)
    sb.insert(0, b"a" * 10)
    sb.insert(20, b"c" * 10)
    sb.insert(40, b"e" * 5)
    assert sb.next_offset == 10
    assert sb.skip(25) == 10                       # [10, 20) lost; the run at 20 joins
    assert sb.next_offset == 30
    assert sb.lost() == [(10, 20)] and sb.lost_bytes == 10
    assert sb.fragments() == [(0, 10), (20, 10), (40, 5)]   # the lost range is a gap
    assert sb.held_bytes == 25
    assert sb.read(0, 100) == b"a" * 10            # reads stop at a lost range
    assert sb.read(10, 5) == b"" and sb.lost_at(12) == 8 and sb.lost_at(20) == 0
    assert sb.read(20, 100) == b"c" * 10
    assert sb.skip(30) == 0                        # nothing to give up
    assert sb.skip(50) == 15                       # [30, 40) and [45, 50)
    assert sb.lost() == [(10, 20), (30, 40), (45, 50)] and sb.next_offset == 50
    assert sb.last_received_end == 50


def test_in_order_data_after_a_skip_takes_the_fast_path():
    sb = StreamBuffer(64)
    sb.insert(0, b"ab")
    sb.skip(10)
    sb.insert(10, b"kl")
    assert sb.next_offset == 12 and sb.fragments() == [(0, 2), (10, 2)]
    assert sb.lost() == [(2, 10)]


@pytest.mark.parametrize("policy", [FIRST, LAST])
def test_a_late_copy_of_lost_bytes_is_overlap_and_stays_lost(policy):
    sb = StreamBuffer(64, policy)
    sb.insert(0, b"ab")
    sb.insert(6, b"gh")
    sb.skip(8)
    assert sb.insert(1, b"BCDEFG") == 6            # lost bytes count as received before
    assert sb.lost() == [(2, 6)] and sb.lost_at(2) == 4
    assert sb.read(0, 10) == (b"aB" if policy == LAST else b"ab")


def test_a_skip_past_the_window_moves_head():
    sb = StreamBuffer(16)
    sb.insert(0, b"abcd")
    assert sb.skip(40) == 36
    assert sb.head == 24 and sb.next_offset == 40
    assert sb.lost() == [(24, 40)] and sb.fragments() == []
    assert sb.lost_at(30) == 10 and sb.read(24, 4) == b""


def test_skip_before_anything_is_held():
    sb = StreamBuffer(16)
    assert sb.skip(5) == 5
    assert sb.next_offset == 5 and sb.lost() == [(0, 5)]
    sb.insert(5, b"fg")
    assert sb.read(5, 9) == b"fg" and sb.fragments() == [(5, 2)]


def test_lost_ranges_are_bounded_by_max_fragments():
    sb = StreamBuffer(64, max_fragments=2)
    for start in (0, 10, 20):
        sb.insert(start, b"x" * 5)
        sb.skip(start + 10)
    # A third lost range moves head past the oldest one.
    assert sb.lost() == [(15, 20), (25, 30)]
    assert sb.head == 10 and sb.next_offset == 30


def test_mark_lost_ahead_of_a_hole_is_held_lost_until_the_hole_fills():
    sb = StreamBuffer(64)
    sb.insert(0, b"a" * 10)
    sb.insert(20, b"c" * 5)                        # a cut segment: 5 bytes kept ...
    assert sb.mark_lost(25, 30) == 5               # ... and 5 cut, beyond the hole [10, 20)
    assert sb.next_offset == 10 and sb.lost() == [(25, 30)]
    assert sb.fragments() == [(0, 10), (20, 5)]
    sb.insert(10, b"b" * 10)                       # the hole fills: the stream goes on
    assert sb.next_offset == 30 and sb.lost_at(25) == 5
    assert sb.read(0, 100) == b"a" * 10 + b"b" * 10 + b"c" * 5
    assert sb.insert(25, b"late!") == 5            # a later copy: overlap, stays lost


def test_mark_lost_keeps_held_bytes_and_orders_the_lost_ranges():
    sb = StreamBuffer(64)
    sb.insert(0, b"a" * 5)
    sb.insert(30, b"x" * 4)
    assert sb.mark_lost(28, 40) == 8               # [28, 30) and [34, 40); [30, 34) held
    assert sb.lost() == [(28, 30), (34, 40)]
    assert sb.skip(15) == 10                       # a lost range below the others
    assert sb.lost() == [(5, 15), (28, 30), (34, 40)]
    assert sb.mark_lost(10, 28) == 13              # from next_offset: skip(28)
    assert sb.lost() == [(5, 30), (34, 40)] and sb.next_offset == 40
    assert sb.read(30, 10) == b"x" * 4


# -- naive model ----------------------------------------------------------------------------

def _runs(offsets):
    runs = []
    for off in sorted(offsets):
        if runs and runs[-1][0] + runs[-1][1] == off:
            runs[-1][1] += 1
        else:
            runs.append([off, 1])
    return [tuple(r) for r in runs]


class NaiveStream:
    """A dict offset -> byte with the same window, policy and fragment-cap rules, and a set
    of lost offsets (skip): received for overlaps, the cap and next_offset, never read."""

    def __init__(self, capacity, policy, max_fragments):
        self.capacity = capacity
        self.policy = policy
        self.max_fragments = max_fragments
        self.held = {}
        self.lost = set()
        self.head = 0
        self.last_received_end = 0
        self.refused = 0
        self.last_refused = False

    def fragments(self):
        return _runs(self.held)

    def lost_ranges(self):
        return [(off, off + length) for off, length in _runs(self.lost)]

    def _slide(self, head):
        self.head = max(self.head, head)
        self.held = {off: b for off, b in self.held.items() if off >= self.head}
        self.lost = {off for off in self.lost if off >= self.head}

    def insert(self, offset, data):
        if not data:
            return 0
        end = offset + len(data)
        overlap = sum(1 for off in range(offset, end)
                      if off < self.head or off in self.held or off in self.lost)
        saved = dict(self.held), set(self.lost), self.head
        self._slide(end - self.capacity)
        runs = len(_runs(set(self.held) | self.lost))
        for off, byte in zip(range(offset, end), data):
            if off >= self.head and off not in self.lost and (
                    self.policy == LAST or off not in self.held):
                self.held[off] = byte
        # Refused: it adds a run (a skip may have left one more than the cap already).
        if len(_runs(set(self.held) | self.lost)) > max(self.max_fragments, runs):
            self.held, self.lost, self.head = saved
            self.refused += 1
            self.last_refused = True
            return overlap
        self.last_refused = False
        self.last_received_end = max(self.last_received_end, end)
        return overlap

    def skip(self, to):
        start = self.next_offset
        if to <= start:
            return 0
        gaps = {off for off in range(start, to) if off not in self.held and off not in self.lost}
        self.lost |= gaps
        self.last_received_end = max(self.last_received_end, to)
        self._slide(to - self.capacity)
        ranges = self.lost_ranges()
        if len(ranges) > self.max_fragments:
            self._slide(ranges[-1 - self.max_fragments][1])
        return len(gaps)

    def mark_lost(self, start, end):
        if start <= self.next_offset:
            return self.skip(end)
        saved = dict(self.held), set(self.lost), self.head
        self._slide(end - self.capacity)
        runs = len(_runs(set(self.held) | self.lost))
        gaps = {off for off in range(max(start, self.head), end)
                if off not in self.held and off not in self.lost}
        self.lost |= gaps
        # Refused as the insert of as many bytes would be.
        if len(_runs(set(self.held) | self.lost)) > max(self.max_fragments, runs):
            self.held, self.lost, self.head = saved
            self.refused += 1
            self.last_refused = True
            return 0
        self.last_refused = False
        self.last_received_end = max(self.last_received_end, end)
        ranges = self.lost_ranges()
        if len(ranges) > self.max_fragments:
            self._slide(ranges[-1 - self.max_fragments][1])
        return len(gaps)

    @property
    def next_offset(self):
        off = self.head
        while off in self.held or off in self.lost:
            off += 1
        return off

    def lost_at(self, offset):
        count = 0
        while offset >= self.head and offset + count in self.lost:
            count += 1
        return count

    def read(self, offset, max_len):
        if offset < self.head:
            return b""
        out = bytearray()
        while len(out) < max_len and offset + len(out) in self.held:
            out.append(self.held[offset + len(out)])
        return bytes(out)


class ReassemblyMachine(RuleBasedStateMachine):
    """Random inserts, policy switches and reads; every observable must match the model."""

    @initialize(capacity=st.integers(1, 24), policy=st.sampled_from([FIRST, LAST]),
                max_fragments=st.sampled_from([1, 2, 3, 5, DEFAULT_MAX_FRAGMENTS]),
                ring=st.integers(1, 24))
    def setup(self, capacity, policy, max_fragments, ring):
        # A ring smaller than the window grows (laid out anew) as the bytes come.
        self.sb = StreamBuffer(capacity, policy, max_fragments=max_fragments, ring=ring)
        self.model = NaiveStream(capacity, policy, max_fragments)

    def _insert(self, offset, data):
        assert self.sb.insert(offset, data) == self.model.insert(offset, data)
        assert self.sb.last_insert_refused == self.model.last_refused

    @rule(rel=st.integers(-30, 50), data=st.binary(max_size=40))
    def insert_near_head(self, rel, data):
        self._insert(max(0, self.model.head + rel), data)

    @rule(data=st.binary(min_size=1, max_size=30))
    def append_in_order(self, data):
        self._insert(self.model.last_received_end, data)

    @rule(start=st.tuples(st.integers(0, 63), st.integers(-2, 2)),
          stop=st.tuples(st.integers(0, 63), st.integers(-2, 2)), fill=st.binary(min_size=60))
    def insert_between_boundaries(self, start, stop, fill):
        # Edge cases live at run edges, head and head + capacity: start and end there.
        model = self.model
        edges = [model.head, model.head + model.capacity]
        for off, length in model.fragments():
            edges += [off, off + length]
        offset = max(0, edges[start[0] % len(edges)] + start[1])
        end = edges[stop[0] % len(edges)] + stop[1]
        self._insert(offset, fill[:max(0, end - offset)])

    @rule(gap=st.integers(1, 2**64), data=st.binary(min_size=1, max_size=8))
    def jump_ahead(self, gap, data):
        self._insert(self.model.last_received_end + gap, data)

    @rule(rel=st.integers(-3, 40))
    def skip(self, rel):
        # The receiver acknowledged up to there: what is not held there is lost.
        to = max(0, self.model.next_offset + rel)
        assert self.sb.skip(to) == self.model.skip(to)

    @rule(rel=st.integers(-3, 40), length=st.integers(1, 30))
    def mark_lost(self, rel, length):
        # A segment's tail the capture cut: lost wherever it lies.
        start = max(0, self.model.next_offset + rel)
        assert self.sb.mark_lost(start, start + length) == self.model.mark_lost(
            start, start + length)
        assert self.sb.last_insert_refused == self.model.last_refused or rel <= 0

    @rule(more=st.integers(0, 40))
    def grow(self, more):
        # The window widens in place: every held byte stays where it was.
        self.sb.grow(self.model.capacity + more)
        self.model.capacity += more

    @rule(policy=st.sampled_from([FIRST, LAST]))
    def set_policy(self, policy):
        self.sb.policy = self.model.policy = policy

    @rule(rel=st.integers(-8, 50), max_len=st.integers(0, 50))
    def read(self, rel, max_len):
        offset = max(0, self.model.head + rel)
        expected = self.model.read(offset, max_len)
        assert self.sb.read(offset, max_len) == expected
        buf = bytearray(max_len)
        assert self.sb.read_into(offset, buf) == len(expected)
        assert bytes(buf[:len(expected)]) == expected
        assert self.sb.lost_at(offset) == self.model.lost_at(offset)

    @invariant()
    def observables_match(self):
        sb, model = self.sb, self.model
        assert sb.head == model.head
        assert sb.next_offset == model.next_offset
        assert sb.last_received_end == model.last_received_end
        assert sb.fragments() == model.fragments()
        assert sb.held_bytes == len(model.held)
        assert sb.lost() == model.lost_ranges()
        assert sb.lost_bytes == len(model.lost)
        assert sb.refused_fragments == model.refused
        # A skip can add the run it gives up at head: one more than the cap.
        assert len(_runs(set(model.held) | model.lost)) <= sb.max_fragments + 1
        assert len(sb.lost()) <= sb.max_fragments
        for off, length in sb.fragments():
            assert sb.read(off, length + 1) == model.read(off, length + 1)


ReassemblyMachine.TestCase.settings = settings(
    max_examples=600, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestReassemblyMachine = ReassemblyMachine.TestCase
