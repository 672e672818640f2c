"""Payload edits that change a segment's length (mtcp_setlastpkt's MOS_CHOMP and
MOS_INSERT) and the sequence remapping that keeps both TCP endpoints consistent (sans-IO).

Once bytes are inserted into or deleted from one direction of a flow, its receiver counts
the stream differently from its sender. `StreamEdits` keeps that direction's edits in the
sender's numbering: *original offsets*, unwrapped, 0 at the first edited segment.

- An insert is bytes placed before original byte p, attached *left* (it goes with the
  bytes before p: a segment ending at p carries it, one starting at p does not) or
  *right* (a segment starting at p carries it). Inserts in the middle of the segment
  that made them are left; at its first byte right, at its end left.
- A deletion is a range of original bytes that never reaches the receiver.
- An overwrite (MOS_OVERWRITE in a direction that has edits) replaces original bytes
  (or changes inserted ones); the frame itself is never written: the stream the monitor
  reassembles stays the sender's.

W(o), where original offset o lands in the receiver's numbering ("wire"), is o plus the
inserted bytes before it (left inserts at p <= o, right ones at p < o) minus the deleted
bytes before it: a non-decreasing step function, kept as sorted (point, cumulative delta)
lists. A segment [a, b) leaves as [W(a), W(b)) with every edit inside it applied, so a
retransmission, cut where it may be, is edited as the first transmission was. An ACK or
the right edge of a SACK block w maps back to the largest o with W(o) <= w, a left SACK
edge to the smallest o with W(o) >= w: the sender never takes for received a byte whose
edited form the receiver lacks, and deleted bytes count as received once the receiver has
what follows them.

Bytes the monitor has forwarded already (original offsets below `fence`) may be in the
receiver's hands: size changes that touch them are refused (EditError), and a
retransmission carries only the edits recorded for it.

The edits below what the receiver acknowledged are forgotten once there are enough of
them (`prune`): only their sum stays, so memory and lookups follow the edits in flight,
not the flow's length. A late retransmission that starts below that point leaves without
its head (bytes the receiver has), from the point on.
"""
from bisect import bisect_left, bisect_right

from .constants import TH_FIN, TH_PUSH
from .checksum import checksum_update, tcp_checksum, verify_tcp_checksum
from .packet import IPV4_CHECKSUM_OFF, TCP_CHECKSUM_OFF, parse_frame
from .tcp import SEQ_MASK, seq_delta

LEFT = 0
RIGHT = 1
TCPOPT_SACK = 5
# RFC 9293 3.7.1: the MSS a sender may assume when the receiver's SYN had no MSS option.
DEFAULT_MSS = {4: 536, 6: 1220}

# Edits kept before the ones below the receiver's ACK are forgotten (at least this many,
# and twice as many as after the last time).
PRUNE_AT = 32

_ORIGINAL = 0       # a run of original bytes: (_ORIGINAL, start, end)
_INSERTED = 1       # a run of inserted bytes: (_INSERTED, (p, side))


class EditError(ValueError):
    """An edit that cannot be made (the API reports EINVAL with its message)."""


class StreamEdits:
    """One direction's edits, in the sender's numbering (see the module docstring)."""

    __slots__ = ("anchor_seq", "anchor_off", "fence", "inserts", "deletions", "overwrites",
                 "base", "acked", "_base_shift", "_prune_at",
                 "_step_x", "_step_sum", "_del_start", "_del_end", "_del_before",
                 "_span_lo", "_span_hi", "_ins_keys", "_ovr_keys", "_ins_total", "_del_total")

    def __init__(self, seq):
        # Original offset `anchor_off` is sequence number `anchor_seq`; it follows the
        # sender's newest byte, so 32-bit numbers unwrap near where the flow is.
        self.anchor_seq = seq
        self.anchor_off = 0
        self.fence = 0              # original bytes below it were forwarded
        self.inserts = {}           # (p, LEFT or RIGHT) -> bytearray
        self.deletions = []         # sorted, disjoint, non-adjacent [start, end] lists
        self.overwrites = {}        # original offset -> byte value
        self.base = 0               # edits wholly below it are forgotten (prune)
        self.acked = 0              # the receiver has every original byte below it
        self._base_shift = 0        # W(base) - base of the forgotten edits
        self._prune_at = PRUNE_AT
        self._rebuild()

    # ------------------------------------------------------------ numbering
    def offset(self, seq):
        """The original offset of sequence number `seq` of the sender."""
        return self.anchor_off + seq_delta(seq, self.anchor_seq)

    def sent(self, seq, start, end):
        """A segment [start, end) (starting at `seq`) was forwarded."""
        if end > self.fence:
            self.fence = end
        if end > self.anchor_off:
            self.anchor_seq = (seq + end - start) & SEQ_MASK
            self.anchor_off = end

    def wire(self, off):
        """W(off): the receiver's offset of original offset `off` (below `base`: as if no
        edit lay between them, the forgotten ones are only a sum)."""
        i = bisect_right(self._step_x, off)
        shift = self._base_shift + (self._step_sum[i - 1] if i else 0)
        j = bisect_right(self._del_start, off) - 1
        if j >= 0:
            end = self._del_end[j]
            shift -= self._del_before[j] + (off if off < end else end) - self._del_start[j]
        return off + shift

    def floor(self, wire_off):
        """The largest original offset o with W(o) <= wire_off."""
        lo = wire_off - self._base_shift - self._ins_total      # W(lo) <= wire_off
        hi = wire_off - self._base_shift + self._del_total + 1  # W(hi) > wire_off
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if self.wire(mid) <= wire_off:
                lo = mid
            else:
                hi = mid
        return lo

    def unmap_seq(self, wire_seq, left_edge=False):
        """The sender's sequence number for the receiver's `wire_seq`: an ACK or a SACK
        block's right edge, or with `left_edge` a SACK block's left edge."""
        wire_off = self.anchor_off + seq_delta(wire_seq, self.anchor_seq)
        if left_edge:
            off = self.floor(wire_off - 1) + 1
        else:
            off = self.floor(wire_off)
        return (wire_seq + off - wire_off) & SEQ_MASK

    def note_acked(self, off):
        """The receiver has every original byte below `off`: forget the edits below it
        when they have piled up."""
        if off <= self.acked:
            return
        self.acked = off
        if len(self._span_lo) > self._prune_at and off > self.base:
            self.prune(off)
            self._prune_at = max(PRUNE_AT, 2 * len(self._span_lo))

    def prune(self, below):
        """Forget the edits wholly below original offset `below` (keeping their sum)."""
        shift = 0
        inserts = {}
        for (p, side), data in self.inserts.items():
            if (p if side == LEFT else p + 1) <= below:
                shift += len(data)
            else:
                inserts[p, side] = data
        deletions = []
        for start, end in self.deletions:
            if end <= below:
                shift -= end - start
            else:
                deletions.append([start, end])
        self.inserts, self.deletions = inserts, deletions
        self.overwrites = {o: v for o, v in self.overwrites.items() if o >= below}
        self.base = below
        self._base_shift += shift
        self._rebuild()

    # ------------------------------------------------------------ segments
    def touched(self, start, end):
        """Whether an edit may lie in the segment [start, end) (its ends included)."""
        i = bisect_right(self._span_lo, end) - 1
        return i >= 0 and self._span_hi[i] >= start

    def runs(self, start, end):
        """The segment [start, end) as the receiver gets it: a list of runs,
        (_ORIGINAL, s, e) for original bytes [s, e) and (_INSERTED, key) for an insert."""
        keys = self._ins_keys
        lo = bisect_left(keys, (start, LEFT))
        hi = bisect_right(keys, (end, RIGHT))
        points = [key for key in keys[lo:hi]
                  if (start < key[0] if key[1] == LEFT else key[0] < end)]
        points.append(None)
        runs = []
        del_start, del_end = self._del_start, self._del_end
        d = bisect_right(del_end, start)           # the first deletion ending after start
        o = start
        for key in points:
            stop = end if key is None else key[0]
            while o < stop:
                if d < len(del_start) and del_start[d] <= o:
                    o = min(del_end[d], stop)       # inside deletion d
                    if o == del_end[d]:
                        d += 1
                    continue
                cut = del_start[d] if d < len(del_start) and del_start[d] < stop else stop
                runs.append((_ORIGINAL, o, cut))
                o = cut
            if key is not None:
                runs.append((_INSERTED, key))
        return runs

    def materialize(self, runs, start, payload):
        """The bytes of `runs` for a segment starting at `start` whose original payload
        (as it is now) is `payload`."""
        out = bytearray()
        ovr_keys = self._ovr_keys
        overwrites = self.overwrites
        for run in runs:
            if run[0] == _INSERTED:
                out += self.inserts[run[1]]
                continue
            _, s, e = run
            base = len(out) - s
            out += payload[s - start:e - start]
            if ovr_keys:
                for o in ovr_keys[bisect_left(ovr_keys, s):bisect_left(ovr_keys, e)]:
                    out[base + o] = overwrites[o]
        return bytes(out)

    def run_length(self, run):
        return run[2] - run[1] if run[0] == _ORIGINAL else len(self.inserts[run[1]])

    def frozen(self, key):
        """Whether an insert may already be in the receiver's hands."""
        p, side = key
        return p <= self.fence if side == LEFT else p < self.fence

    # ------------------------------------------------------------ changes
    def delete(self, start, end):
        ranges = sorted(self.deletions + [[start, end]])
        merged = [ranges[0]]
        for s, e in ranges[1:]:
            if s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        self.deletions = merged
        for o in [o for o in self.overwrites if start <= o < end]:
            del self.overwrites[o]

    def _rebuild(self):
        """The lookup lists, after a change of the edits."""
        steps = sorted((p if side == LEFT else p + 1, len(data))
                       for (p, side), data in self.inserts.items())
        self._step_x = [x for x, _ in steps]
        total = 0
        self._step_sum = []
        for _, size in steps:
            total += size
            self._step_sum.append(total)
        self._ins_total = total
        self._del_start = [s for s, _ in self.deletions]
        self._del_end = [e for _, e in self.deletions]
        self._del_before = []
        total = 0
        for s, e in self.deletions:
            self._del_before.append(total)
            total += e - s
        self._del_total = total
        self._ins_keys = sorted(self.inserts)
        self._ovr_keys = sorted(self.overwrites)
        spans = sorted([(p, p) for p, _ in self.inserts] + [(s, e - 1) for s, e in self.deletions]
                       + [(o, o) for o in self.overwrites])
        self._span_lo, self._span_hi = [], []
        for lo, hi in spans:
            if self._span_hi and lo <= self._span_hi[-1] + 1:
                if hi > self._span_hi[-1]:
                    self._span_hi[-1] = hi
            else:
                self._span_lo.append(lo)
                self._span_hi.append(hi)


class FrameEdit:
    """The segment being processed in a direction with edits: its payload as the receiver
    gets it (`view`, what mtcp_getlastpkt shows) and the app's edits of that view, each
    recorded in the direction's StreamEdits."""

    __slots__ = ("pkt", "sender", "edits", "seq_start", "start", "end", "trimmed", "_runs",
                 "_view", "_starts")

    def __init__(self, pkt, sender, edits):
        self.pkt = pkt
        self.sender = sender
        self.edits = edits
        seq_start = self.seq_start = edits.offset(pkt.seq)
        self.end = seq_start + pkt.payload_len
        # A late resend of bytes below the forgotten edits: only what follows them is
        # the receiver's to get.
        self.trimmed = seq_start < edits.base
        self.start = edits.base if self.trimmed else seq_start
        if self.end < self.start:
            self.end = self.start
        self._runs = self._view = self._starts = None

    def touched(self):
        """Whether the payload may differ from the sender's (view() tells)."""
        return self.trimmed or (self.start < self.end and self.edits.touched(self.start, self.end))

    def _layout(self):
        if self._runs is None:
            pkt = self.pkt
            edits = self.edits
            start, end = self.start, self.end
            if start < end and edits.touched(start, end):
                runs = edits.runs(start, end)
            else:
                runs = [(_ORIGINAL, start, end)] if start < end else []
            self._runs = runs
            payload = pkt.payload
            skip = pkt.payload_len - (end - start)
            self._view = edits.materialize(runs, start, payload[skip:] if skip else payload)
            self._starts = []
            at = 0
            for run in runs:
                self._starts.append(at)
                at += edits.run_length(run)
        return self._runs, self._starts

    def view(self):
        self._layout()
        return self._view

    def _changed(self):
        self.edits._rebuild()
        self._runs = self._view = self._starts = None

    def _pieces(self, at, length):
        """The runs under view bytes [at, at + length): (run, first, last) with the run's
        own byte indices [first, last)."""
        runs, starts = self._layout()
        if at < 0 or length < 0 or at + length > len(self._view):
            raise EditError(f"offset {at} + length {length} runs past the payload "
                            f"({len(self._view)} bytes)")
        pieces = []
        end = at + length
        i = bisect_right(starts, at) - 1 if runs else 0
        while length and i < len(runs) and starts[i] < end:
            run = runs[i]
            size = self.edits.run_length(run)
            first = max(at - starts[i], 0)
            last = min(end - starts[i], size)
            if first < last:
                pieces.append((run, first, last))
            i += 1
        return pieces

    def _check(self, pieces):
        fence = self.edits.fence
        for run, first, _ in pieces:
            if run[0] == _INSERTED:
                if self.edits.frozen(run[1]):
                    raise EditError("those inserted bytes were forwarded already: the "
                                    "receiver may have them")
            elif run[1] + first < fence:
                raise EditError(f"bytes at offset {run[1] + first - self.start} of this "
                                "payload were forwarded already (a retransmission): the "
                                "receiver may have them")

    def insert(self, at, data):
        """MOS_INSERT: `data` before view byte `at` (at the end when `at` is its length)."""
        runs, starts = self._layout()
        size = len(self._view)
        if not 0 <= at <= size:
            raise EditError(f"offset {at} is beyond the payload ({size} bytes)")
        if not data:
            return
        edits = self.edits
        if at == size:
            if runs and runs[-1][0] == _INSERTED:
                key = runs[-1][1]
            else:
                key = (self.end, LEFT)
            pos = len(edits.inserts.get(key, b""))
        else:
            i = bisect_right(starts, at) - 1
            run = runs[i]
            k = at - starts[i]
            if run[0] == _INSERTED:
                key, pos = run[1], k
            elif k == 0 and i and runs[i - 1][0] == _INSERTED:
                key = runs[i - 1][1]
                pos = len(edits.inserts[key])
            else:
                o = run[1] + k
                if o < edits.fence:
                    raise EditError(f"offset {at} of this payload was forwarded already (a "
                                    "retransmission): the receiver may have the bytes there")
                key = (o, RIGHT if o == self.start or o == edits.fence else LEFT)
                pos = 0
        if edits.frozen(key):
            raise EditError(f"offset {at} of this payload was forwarded already (a "
                            "retransmission): the receiver may have the bytes there")
        buf = edits.inserts.setdefault(key, bytearray())
        buf[pos:pos] = data
        self._changed()

    def chomp(self, at, length):
        """MOS_CHOMP: view bytes [at, at + length) deleted."""
        pieces = self._pieces(at, length)
        if not pieces:
            return
        self._check(pieces)
        edits = self.edits
        for run, first, last in reversed(pieces):
            if run[0] == _INSERTED:
                data = edits.inserts[run[1]]
                del data[first:last]
                if not data:
                    del edits.inserts[run[1]]
            else:
                edits.delete(run[1] + first, run[1] + last)
        self._changed()

    def overwrite(self, at, data):
        """MOS_OVERWRITE of the payload: view bytes from `at` replaced by `data`, recorded
        (a retransmission carries them too). Unlike a size change it may touch bytes
        forwarded before: no position moves, the receiver keeps whichever copy it got."""
        pieces = self._pieces(at, len(data))
        edits = self.edits
        pos = 0
        for run, first, last in pieces:
            chunk = data[pos:pos + last - first]
            pos += last - first
            if run[0] == _INSERTED:
                edits.inserts[run[1]][first:last] = chunk
            else:
                o = run[1] + first
                for i, value in enumerate(chunk):
                    edits.overwrites[o + i] = value
        self._changed()

    def view_frame(self):
        """The frame with the payload as the receiver will get it, for mtcp_getlastpkt:
        headers as they are (the sender's numbering), IP length fields set."""
        pkt = self.pkt
        frame = bytearray(pkt.buf[:pkt.payload_off])
        frame += self.view()
        _set_ip_length(frame, pkt, len(self._view))
        return frame


def _set_ip_length(frame, pkt, payload_len):
    """The IP length field of a frame built from `pkt`'s headers with `payload_len` bytes
    of payload (the IPv4 header checksum updated incrementally: a bad one stays bad)."""
    l3 = pkt.l3_off
    if pkt.ip_version == 4:
        old = bytes(frame[l3 + 2:l3 + 4])
        new = (pkt.payload_off - l3 + payload_len).to_bytes(2, "big")
        csum_at = l3 + IPV4_CHECKSUM_OFF
        csum = int.from_bytes(frame[csum_at:csum_at + 2], "big")
        frame[l3 + 2:l3 + 4] = new
        frame[csum_at:csum_at + 2] = checksum_update(csum, old, new, l3 + 2).to_bytes(2, "big")
    else:
        frame[l3 + 4:l3 + 6] = (pkt.payload_off - l3 - 40 + payload_len).to_bytes(2, "big")


def payload_limit(pkt, receiver_mss):
    """The most payload a segment of `pkt`'s headers may carry toward a receiver that
    announced `receiver_mss` (None: the RFC default): its MSS less the IP and TCP options
    the segment carries, and never less than the segment carried to begin with."""
    mss = receiver_mss or DEFAULT_MSS[pkt.ip_version]
    base_ip = 20 if pkt.ip_version == 4 else 40
    options = (pkt.tcp_hdr_len - 20) + (pkt.l4_off - pkt.l3_off - base_ip)
    return max(pkt.payload_len, mss - options)


def unmap_acks(pkt, edits):
    """A segment toward the sender of `edits`: its acknowledgement number and SACK blocks
    from the receiver's numbering back to the sender's, in place. The TCP checksum is
    updated incrementally (a bad one stays bad)."""
    buf = pkt.buf
    l4 = pkt.l4_off
    first = l4 + 8                       # the acknowledgement number, up to the options' end
    last = pkt.payload_off
    old = bytes(buf[first:last])
    new = bytearray(old)
    ack = edits.unmap_seq(pkt.ack)
    edits.note_acked(edits.offset(ack))
    new[0:4] = ack.to_bytes(4, "big")
    pos = 12                             # the options, in `new`
    while pos < len(new):
        kind = new[pos]
        if kind == 0:
            break
        if kind == 1:
            pos += 1
            continue
        if pos + 1 >= len(new) or new[pos + 1] < 2 or pos + new[pos + 1] > len(new):
            break
        size = new[pos + 1]
        if kind == TCPOPT_SACK and (size - 2) % 8 == 0:
            for at in range(pos + 2, pos + size, 8):
                left = edits.unmap_seq(int.from_bytes(new[at:at + 4], "big"), left_edge=True)
                right = edits.unmap_seq(int.from_bytes(new[at + 4:at + 8], "big"))
                new[at:at + 4] = left.to_bytes(4, "big")
                new[at + 4:at + 8] = right.to_bytes(4, "big")
        pos += size
    if new != old:
        buf[first:last] = new
        csum_at = l4 + TCP_CHECKSUM_OFF
        csum = int.from_bytes(buf[csum_at:csum_at + 2], "big")
        buf[csum_at:csum_at + 2] = checksum_update(csum, old, new, first).to_bytes(2, "big")
    pkt.ack = ack


def leave(edit, limit):
    """The segment of `edit` as it leaves toward its receiver: its sequence number in the
    receiver's numbering and its payload as edited. Returns None when the frame was
    rewritten in place (same length), else the frames to send instead, in order: more than
    one when the edited payload exceeds `limit` bytes (the first ones without FIN and PSH).
    The TCP checksum is right if it was right (a bad one stays bad)."""
    pkt = edit.pkt
    edits = edit.edits
    start, end = edit.start, edit.end
    seq = (pkt.seq + start - edit.seq_start) & SEQ_MASK      # that of `start`
    wire_seq = (seq + edits.wire(start) - start) & SEQ_MASK
    payload = None
    if edit.touched():
        payload = edit.view()
    edits.sent(seq, start, end)
    buf = pkt.buf
    l4 = pkt.l4_off
    if not edit.trimmed and (payload is None or len(payload) == pkt.payload_len):
        if wire_seq == pkt.seq and payload is None:
            return None
        csum_at = l4 + TCP_CHECKSUM_OFF
        csum = int.from_bytes(buf[csum_at:csum_at + 2], "big")
        old_seq = bytes(buf[l4 + 4:l4 + 8])
        new_seq = wire_seq.to_bytes(4, "big")
        buf[l4 + 4:l4 + 8] = new_seq
        csum = checksum_update(csum, old_seq, new_seq, l4 + 4)
        if payload is not None:
            first = pkt.payload_off
            old = bytes(buf[first:first + len(payload)])
            buf[first:first + len(payload)] = payload
            csum = checksum_update(csum, old, payload, first)
        buf[csum_at:csum_at + 2] = csum.to_bytes(2, "big")
        return None
    valid = verify_tcp_checksum(pkt)
    head = bytearray(buf[:pkt.payload_off])
    if edit.trimmed and edit.seq_start + pkt.payload_len < edits.base:
        head[l4 + 13] &= ~TH_FIN & 0xFF    # the receiver acknowledged this FIN already
    parts = [payload[i:i + limit] for i in range(0, len(payload), limit)] or [b""]
    frames = []
    for index, part in enumerate(parts):
        frame = bytearray(head)
        frame += part
        _set_ip_length(frame, pkt, len(part))
        frame[l4 + 4:l4 + 8] = wire_seq.to_bytes(4, "big")
        if index < len(parts) - 1:
            frame[l4 + 13] &= ~(TH_FIN | TH_PUSH) & 0xFF
        csum = tcp_checksum(parse_frame(frame))
        if not valid:
            csum ^= 1
        frame[l4 + TCP_CHECKSUM_OFF:l4 + TCP_CHECKSUM_OFF + 2] = csum.to_bytes(2, "big")
        frames.append(bytes(frame))
        wire_seq = (wire_seq + len(part)) & SEQ_MASK
    return frames
