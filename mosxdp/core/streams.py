"""Stream delivery: a segment's payload into its receiver's reassembly buffer, the catch-up
of a stream the kernel carried while its flow was bypassed, and MOS_ON_CONN_NEW_DATA.

`StreamDelivery` is one of the Stack's parts (see stack.py). It also charges stream buffers
to the reassembly memcap: a side's StreamBuffer is allocated at its first payload byte and
its capacity is charged to `reassembly_mem` from then until its flow ends. When the charge
would exceed `reassembly_memcap` the side runs without a buffer (as with buffering off:
state, events and counters go on, mtcp_peek/ppeek say EINVAL), its sockets get SO_ERROR
ENOMEM and MOS_ON_ERROR, and `memcap_refused` counts it.
"""
import errno
from copy import copy

# Type declarations for the compiled build (streams.pxd cimports the types); in plain Python
# cython.locals is a decorator that changes nothing.
import cython

from .constants import MOS_SIDE_CLI, MOS_SIDE_SVR, TH_SYN, TH_URG
from .events import EV_CONN_NEW_DATA, EV_ERROR, EV_REXMIT, HOOK_NULL
from .flow import Flow, Side
from .packet import Packet
from .stack_state import StackState
from .reassembly import OVERLAP_POLICIES, StreamBuffer
from .tcp import SEQ_HALF, SEQ_MASK, SEQ_MOD

DEFAULT_REASSEMBLY_MEMCAP = 1 << 30   # bytes over all stream buffers (4096 of 256 KiB)
# Segments a side holds beyond the window edge it advertised, waiting for its ACK.
MAX_HELD_BEYOND_EDGE = 64


def carried_distance(snd, rcv, seq):
    """How far sequence number `seq` of `snd` lies beyond `rcv`'s in-order stream, the bytes
    `snd` sent in frames the emulation did not see (Side.bypassed_bytes) telling the wraps:
    beyond 2 GiB the count is an upper bound (retransmissions count too), and the nearest
    distance that fits it is taken."""
    carried = snd.bypassed_bytes
    ahead = (seq - rcv.peer_base - rcv.rcv_nxt) & SEQ_MASK
    if carried >= SEQ_HALF:
        return ahead + ((carried - ahead + SEQ_HALF) // SEQ_MOD) * SEQ_MOD
    return ahead - SEQ_MOD if ahead >= SEQ_HALF else ahead


class StreamDelivery:
    """The Stack's stream delivery (a mixin: the per-frame path calls these without a hop)."""

    def _init_streams(self):
        self.new_data_flows = []             # flows with new in-order data this batch
        self.holes_due = {}                  # flows with acknowledged holes (holes_due_now)
        self.buffer_mem = {}                 # flow -> bytes of stream buffers charged
        self.reassembly_mem = 0              # sum of buffer_mem (reassembly_memcap)
        self.reassembly_mem_peak = 0

    def _reserve_buffer(self, flow, rcv):
        """Charge a new stream buffer of rcv.bufsize bytes to the reassembly memcap.

        Returns True when it fits. Otherwise the side's buffering is turned off
        (rcv.bufsize = 0), its sockets get SO_ERROR ENOMEM, and False is returned: the
        caller raises MOS_ON_ERROR."""
        size = rcv.bufsize
        cap = self.config.reassembly_memcap
        if cap and self.reassembly_mem + size > cap:
            self._counters["memcap_refused"] += 1
            rcv.bufsize = 0
            for sock in flow.socks:
                sock.so_error = errno.ENOMEM
            return False
        self.buffer_mem[flow] = self.buffer_mem.get(flow, 0) + size
        self.reassembly_mem += size
        if self.reassembly_mem > self.reassembly_mem_peak:
            self.reassembly_mem_peak = self.reassembly_mem
        return True

    def _release_buffers(self, flow):
        """A flow ends: its buffers' memory is free."""
        charged = self.buffer_mem.pop(flow, 0)
        if charged:
            self.reassembly_mem -= charged

    # Compiled, the segment's Packet, its Flow, the receiving Side and the Stack's per-frame
    # attributes are read as C structs (one segment in two comes here).
    @cython.locals(self=StackState, flow=Flow, pkt=Packet, rcv=Side, buf=StreamBuffer)
    def _receive_payload(self, flow, pkt, receiver, rcv):
        """Reassemble the segment's payload into the receiver's buffer."""
        if pkt is self.cut_pkt:
            return self._receive_cut_payload(flow, pkt, receiver, rcv)
        events = 0
        before = rcv.rcv_nxt
        delta = (pkt.seq - rcv.peer_base - before) & SEQ_MASK
        offset = before + (delta - SEQ_MOD if delta >= SEQ_HALF else delta)
        start = pkt.payload_off
        length = pkt.payload_len
        end = offset + length
        if offset < 0:
            start -= offset
            offset = 0
        peer_fin_off = rcv.peer_fin_off
        if peer_fin_off is not None and end > peer_fin_off:
            end = peer_fin_off  # nothing exists beyond the FIN
        edge = rcv.right_edge
        if edge is not None and end > edge:
            # The edge is only what the monitor saw: the ACK that opened the window for
            # these bytes may come later in its capture order. They wait for an ACK, and
            # are an error only when given up (here when too many wait; _reject_held).
            if not self._hold_beyond_edge(rcv, pkt, start - offset,
                                          edge if edge > offset else offset, end,
                                          length == 1 and offset == edge):
                events |= EV_ERROR
                self._window_overrun(flow, 1)
            end = edge
        if end <= offset:
            if length:
                events |= EV_REXMIT if offset < rcv.rcv_nxt or end < offset else 0
            return events
        if pkt.flags & TH_URG:
            self._counters["urgent_data"] += 1   # delivered in-stream (docs/config.md)
        buf = rcv.buf
        if buf is None and rcv.bufsize:
            buf, events = self._new_buffer(flow, rcv, events)
        if buf is not None:
            head_before = buf.head
            if offset > buf.next_offset and end - buf._capacity > buf.next_offset:
                self._grow(flow, buf, end)
            if end - buf._capacity > rcv.flush_mark and flow.pending_data >> receiver & 1:
                self._flush_before_overrun(flow, receiver, rcv, end - buf._capacity)
            overlapped = buf.insert(offset, pkt.buf[start:start + (end - offset)])
            if buf.last_insert_refused:
                self._counters["refused_fragments"] += 1
                # Not held, so not received: the bytes a new copy does not bring are lost.
                overlapped = end - offset
            rcv_nxt = rcv.rcv_nxt = buf.next_offset
            head = buf.head
            if head != head_before:
                for sock in flow.socks:   # _overrun inline: the per-segment path
                    if sock.peek_off[receiver] < head and sock.monitoring[receiver]:
                        events |= EV_ERROR
                        sock.so_error = errno.ENOBUFS
                        self._counters["buffer_overruns"] += 1
        else:
            overlapped = (end if end < before else before) - offset
            if overlapped < 0:
                overlapped = 0
            rcv_nxt = before
            if offset <= before < end:
                rcv_nxt = rcv.rcv_nxt = end
        rcv.first_payload_seen = True
        rcv.unique_bytes += (end - offset) - overlapped
        if end > rcv.max_end:
            rcv.max_end = end
        if overlapped:
            events |= EV_REXMIT
        if rcv_nxt > before:
            if not flow.pending_data:
                self.new_data_flows.append(flow)
                flow.data_no = self.frame_no
            flow.pending_data |= 1 << receiver
        return events

    def _receive_cut_payload(self, flow, pkt, receiver, rcv):
        """A segment whose payload the capture cut (a snap length): the bytes captured are
        delivered as any segment's, and the rest are lost at once, as the bytes of a
        segment the capture missed are once its receiver acknowledges them: mtcp_peek
        reports them (ENODATA), missed_bytes counts them. No copy can bring them: it would
        be cut the same way. Missing bytes beyond the receiver's window edge wait for its
        ACK, as a missed segment's would (_acked_unseen)."""
        captured = len(pkt.buf) - pkt.payload_off
        events = 0
        if captured > 0:
            part = copy(pkt)
            part.payload_len = captured
            events = self._receive_payload(flow, part, receiver, rcv)
        else:
            captured = 0
        # The missing bytes' stream offsets, found as _receive_payload finds a segment's.
        before = rcv.rcv_nxt
        delta = (pkt.seq + captured - rcv.peer_base - before) & SEQ_MASK
        offset = before + (delta - SEQ_MOD if delta >= SEQ_HALF else delta)
        end = offset + pkt.payload_len - captured
        if offset < 0:
            offset = 0
        if rcv.peer_fin_off is not None and end > rcv.peer_fin_off:
            end = rcv.peer_fin_off
        if rcv.right_edge is not None and end > rcv.right_edge:
            end = rcv.right_edge
        if end <= offset:
            return events
        buf = rcv.buf
        if buf is None and rcv.bufsize:
            buf, events = self._new_buffer(flow, rcv, events)
        if buf is not None:
            head_before = buf.head
            refused = buf.refused_fragments
            if offset > buf.next_offset and end - buf.capacity > buf.next_offset:
                self._grow(flow, buf, end)
            overlapped = (end - offset) - buf.mark_lost(offset, end)
            if buf.refused_fragments != refused:
                self._counters["refused_fragments"] += 1
            rcv.rcv_nxt = buf.next_offset
            if buf.head != head_before:
                events |= self._overrun(flow, receiver, buf.head)
        else:
            overlapped = max(0, min(end, before) - offset)
            if offset <= before < end:
                rcv.rcv_nxt = end
        rcv.first_payload_seen = True
        if end > rcv.max_end:
            rcv.max_end = end
        if overlapped:
            events |= EV_REXMIT
        if rcv.rcv_nxt > before:
            if not flow.pending_data:
                self.new_data_flows.append(flow)
            flow.pending_data |= 1 << receiver
        return events

    def _grow(self, flow, buf, end):
        """Data behind a hole would push the hole out of the window: the receiver has not
        got those bytes either (it may only accept what its window allows, and the
        retransmission is still to come), so widen the window to hold up to `end`, doubling,
        within rmem_max and the reassembly memcap. What does not fit is given up as before
        (buffer_overruns)."""
        cap = buf.capacity
        limit = self.config.rmem_max
        if limit <= cap:
            return
        size = cap
        need = end - buf.head
        while size < need:
            size *= 2
        if size > limit:
            size = limit
        extra = size - cap
        memcap = self.config.reassembly_memcap
        if memcap and self.reassembly_mem + extra > memcap:
            self._counters["memcap_refused"] += 1
            return
        buf.grow(size)
        self.buffer_mem[flow] = self.buffer_mem.get(flow, 0) + extra
        self.reassembly_mem += extra
        if self.reassembly_mem > self.reassembly_mem_peak:
            self.reassembly_mem_peak = self.reassembly_mem
        self._counters["buffers_grown"] += 1

    def _new_buffer(self, flow, rcv, events):
        """(the side's stream buffer, events): the buffer made at its first byte, or None
        and EV_ERROR added when reassembly_memcap refuses it (this side is not buffered).
        Bytes the stream passed before then were lost."""
        if not self._reserve_buffer(flow, rcv):
            return None, events | EV_ERROR
        buf = rcv.buf = StreamBuffer(rcv.bufsize, rcv.policy,
                                     max_fragments=self.config.max_fragments)
        if rcv.rcv_nxt:
            buf.skip(rcv.rcv_nxt)
        return buf, events

    def _overrun(self, flow, receiver, head):
        """The buffer's head moved past bytes a monitoring socket had not peeked yet: those
        sockets lose them (ENOBUFS); EV_ERROR if any did, else 0."""
        events = 0
        for sock in flow.socks:
            if sock.peek_off[receiver] < head and sock.monitoring[receiver]:
                events = EV_ERROR
                sock.so_error = errno.ENOBUFS
                self._counters["buffer_overruns"] += 1
        return events

    def _hold_beyond_edge(self, rcv, pkt, base, offset, end, probe):
        """Keep [offset, end) of the segment (payload byte i at pkt.buf[base + i]) until the
        receiver acknowledges it (_accept_acked) or the flow ends (_reject_held). False
        when it is given up at once as an error: MAX_HELD_BEYOND_EDGE segments wait
        already (a zero-window probe, `probe`, is never an error)."""
        held = rcv.beyond_edge
        if held is None:
            held = rcv.beyond_edge = []
        elif len(held) >= MAX_HELD_BEYOND_EDGE:
            return probe     # a zero-window probe is legal: never an error
        data = bytes(pkt.buf[base + offset:base + end]) if rcv.bufsize else None
        held.append((offset, end, data, probe))
        return True

    def _window_overrun(self, flow, count):
        """`count` segments beyond the receiver's window are given up."""
        self._counters["window_overruns"] += count
        for sock in flow.socks:
            sock.so_error = errno.EMSGSIZE

    def _reject_held(self, flow, receiver, rcv):
        """The segments still held beyond rcv's window edge never join the stream (its
        flow ends): each is a window overrun, and MOS_ON_ERROR is raised."""
        rejected = sum(1 for entry in rcv.beyond_edge if not entry[3])
        rcv.beyond_edge = None
        if rejected:
            self._window_overrun(flow, rejected)
            self._fire_flow(flow, HOOK_NULL, receiver, EV_ERROR)

    def _acked_unseen(self, flow, receiver, rcv, ack_off):
        """The receiver acknowledged up to ack_off, beyond the monitor's in-order stream:
        bytes held beyond the window edge below it join the stream, the stream extends at
        least to it, and the bytes below it the monitor has not seen by the end of the
        next batch are lost there (holes_due_now: a hole in the capture, the stream goes on
        after it; a copy captured after the ACK, as a capture on a host reorders them, still
        fills it)."""
        if rcv.beyond_edge is not None:
            self._accept_acked(flow, receiver, rcv, ack_off)
        fin_off = rcv.peer_fin_off
        if fin_off is not None and ack_off > fin_off:
            ack_off = fin_off    # the FIN takes a sequence number, not a stream byte
        if ack_off > rcv.max_end:
            rcv.max_end = ack_off
        # In a bypassed flow such bytes went through the kernel: _catch_up counts them.
        if ack_off > rcv.rcv_nxt and ack_off > rcv.skip_to and not flow.bypass:
            rcv.skip_to = ack_off
            self.holes_due[flow] = None

    def _skip_lost(self, flow, receiver, rcv, to):
        """The receiver has every byte below `to`: those the monitor has not seen are lost
        (mtcp_peek reports them with ENODATA; a later copy is a retransmission), and the
        in-order stream goes on after them, so the bytes held beyond a hole are delivered."""
        before = rcv.rcv_nxt
        buf = rcv.buf
        if buf is not None:
            head = buf.head
            buf.skip(to)
            rcv.rcv_nxt = buf.next_offset
            if buf.head != head:
                self._count_overrun(flow, receiver, buf.head)
        else:
            rcv.rcv_nxt = to    # no byte held yet, or not buffered: nothing to keep
        if rcv.rcv_nxt > before:
            if not flow.pending_data:
                self.new_data_flows.append(flow)
                flow.data_no = self.frame_no
            flow.pending_data |= 1 << receiver

    def _end_streams(self, flow):
        """A flow ends: held segments never acknowledged are given up, and the holes below
        the furthest byte seen are lost (nothing can fill them now)."""
        for receiver, rcv in enumerate(flow.sides):
            if rcv.beyond_edge is not None:
                self._reject_held(flow, receiver, rcv)
            if rcv.max_end > rcv.rcv_nxt and not flow.bypass:
                self._skip_lost(flow, receiver, rcv, rcv.max_end)

    def _accept_acked(self, flow, receiver, rcv, ack_off):
        """The receiver acknowledged up to ack_off: the held bytes below it were accepted
        although they lay beyond the window edge the monitor knew; they join the stream
        where no copy of theirs arrived since (as under MOS_OVERLAP_POLICY_FIRST)."""
        waiting = []
        before = rcv.rcv_nxt
        for offset, end, data, probe in rcv.beyond_edge:
            if offset >= ack_off:
                waiting.append((offset, end, data, probe))
                continue
            if end > ack_off:    # only the acknowledged part is proven
                cut = ack_off - offset
                waiting.append((ack_off, end, data[cut:] if data is not None else None, probe))
                data = data[:cut] if data is not None else None
                end = ack_off
            buf = rcv.buf
            if buf is None and rcv.bufsize:
                buf, _ = self._new_buffer(flow, rcv, 0)
            if buf is not None and data is not None:
                head_before = buf.head
                if offset > buf.next_offset and end - buf.capacity > buf.next_offset:
                    self._grow(flow, buf, end)
                overlapped = buf.fill(offset, data)
                if buf.last_insert_refused:
                    self._counters["refused_fragments"] += 1
                    overlapped = end - offset     # not held: not received
                rcv.rcv_nxt = buf.next_offset
                if buf.head != head_before:
                    self._count_overrun(flow, receiver, buf.head)
            else:
                nxt = rcv.rcv_nxt
                overlapped = max(0, min(end, nxt) - offset)
                if offset <= nxt < end:
                    rcv.rcv_nxt = end
            rcv.unique_bytes += (end - offset) - overlapped
            if end > rcv.max_end:
                rcv.max_end = end
            rcv.first_payload_seen = True
        rcv.beyond_edge = waiting or None
        if rcv.rcv_nxt > before:
            if not flow.pending_data:
                self.new_data_flows.append(flow)
                flow.data_no = self.frame_no
            flow.pending_data |= 1 << receiver

    def _count_overrun(self, flow, receiver, head):
        """The buffer's window slid to head outside a segment's delivery: sockets that had
        not read below it lost bytes, and MOS_ON_ERROR is raised at once."""
        if self._overrun(flow, receiver, head):
            self._fire_flow(flow, HOOK_NULL, receiver, EV_ERROR)

    def _catch_up(self, snd, rcv, pkt):
        """A segment of a bypassed flow: the bytes `snd` sent before it went through the
        kernel (or the bypass path), so its receiver's stream jumps to the segment's
        sequence number as if they had arrived; they count as received, not missed, up to
        the payload those frames carried (a stream that moved further than that missed the
        rest: a lower bound, as retransmissions count too). The stream buffer stops (there
        is a gap nobody will fill) and the receive window is unknown until the receiver's
        next ACK."""
        if rcv.peer_base is None or pkt.flags & TH_SYN:
            return
        dist = carried_distance(snd, rcv, pkt.seq)
        if dist <= 0:
            # A frame from behind the carried bytes (live, one that came through user space
            # while later ones went by in the kernel): they wait for the next frame.
            return
        carried = snd.bypassed_bytes
        snd.bypassed_bytes = 0
        end = rcv.rcv_nxt + dist
        if rcv.peer_fin_off is not None and end > rcv.peer_fin_off:
            end = rcv.peer_fin_off
        if end <= rcv.rcv_nxt:
            return
        rcv.unique_bytes += min(end - rcv.rcv_nxt, carried)
        rcv.rcv_nxt = end
        if end > rcv.max_end:
            rcv.max_end = end
        rcv.buf = rcv.beyond_edge = None
        rcv.bufsize = 0
        rcv.right_edge = None

    def carried_extent(self, snd, rcv):
        """The stream extent (offset) `rcv` has from `snd`, the bytes carried in frames the
        emulation did not see included: where `snd`'s highest sequence end in them lies."""
        extent = rcv.max_end if rcv.max_end > rcv.rcv_nxt else rcv.rcv_nxt
        if snd.carried_end is None:
            return extent
        if rcv.peer_base is None:     # no stream base: only the bytes' count tells
            return max(extent, rcv.rcv_nxt + snd.bypassed_bytes)
        dist = carried_distance(snd, rcv, snd.carried_end)
        end = rcv.rcv_nxt + dist
        if rcv.peer_fin_off is not None and end > rcv.peer_fin_off:
            end = rcv.peer_fin_off
        return end if end > extent else extent

    def _flush_before_overrun(self, flow, receiver, rcv, head):
        """CONN_NEW_DATA is raised once a batch, at its end; a batch of large segments (a
        capture of GRO or TSO frames, a loopback's 64 KiB ones), or of the bytes after a
        hole, can bring more than the receiver's buffer holds before then. When moving the
        buffer's head to ``head`` would push out bytes that a socket which read its stream
        at the last CONN_NEW_DATA has not read, the flow's CONN_NEW_DATA is raised now,
        before the segment goes in, so that an app that reads at each CONN_NEW_DATA loses
        nothing. A socket that did not read then is not called again for it; the flow's
        place in the batch's order is taken again by the bytes that follow."""
        mark = rcv.flush_mark
        for sock in flow.socks:
            read = sock.peek_off[receiver]
            if mark <= read < head and sock.monitoring[receiver]:
                break
        else:
            return
        if flow.fast_forward:
            self.ff_catch_up(flow)   # its counts, before its callbacks read them
        self.new_data_flows.remove(flow)
        self._flush_new_data(flow)

    def holes_due_now(self):
        """At the end of a batch, before its CONN_NEW_DATA: the bytes a receiver acknowledged
        by the end of the last batch (skip_due) and no copy filled are lost now, and the
        stream goes on after them; those acknowledged since (skip_to) get one batch more,
        for a copy that a capture on a host put after the ACK."""
        due = self.holes_due
        self.holes_due = {}
        for flow in due:
            if flow.destroyed:
                continue
            for receiver in (MOS_SIDE_CLI, MOS_SIDE_SVR):
                rcv = flow.sides[receiver]
                if rcv.skip_due > rcv.rcv_nxt:
                    self._skip_lost(flow, receiver, rcv, rcv.skip_due)
                if rcv.skip_to > rcv.rcv_nxt:
                    rcv.skip_due = rcv.skip_to
                    self.holes_due[flow] = None

    def _flush_new_data(self, flow):
        pending = flow.pending_data
        if not pending:
            return
        cli, svr = flow.sides
        flow.pending_data = 0
        if pending & 1:
            cli.flush_mark = cli.rcv_nxt
        if pending & 2:
            svr.flush_mark = svr.rcv_nxt
        saved_pkt = self.cur_pkt
        self.cur_pkt = None
        try:
            for side in (MOS_SIDE_CLI, MOS_SIDE_SVR):
                if pending & (1 << side):
                    self._fire_flow(flow, HOOK_NULL, side, EV_CONN_NEW_DATA)
        finally:
            self.cur_pkt = saved_pkt

    def stream_buffer(self, sock, side):
        return sock.flow.sides[side].buf

    def set_buffer_size(self, flow_side, size):
        if flow_side.first_payload_seen and size:
            raise OSError(errno.EINVAL, "the buffer size of a flow can change only before its "
                          "first payload byte (or to 0, which turns buffering off)")
        flow_side.bufsize = size
        if size == 0:
            flow_side.buf = None
        elif flow_side.buf is not None:
            flow_side.buf.resize(size)

    def set_overlap_policy(self, flow_side, policy):
        assert policy in OVERLAP_POLICIES, policy   # the API checked it
        flow_side.policy = policy
        if flow_side.buf is not None:
            flow_side.buf.policy = policy
