"""Per-side TCP state emulation: the transition table, in one place.

The monitor keeps one emulated endpoint per side of a connection. A segment
updates its sender first (what the sender must be in after sending it) and then
its receiver (what the receiver must be in after accepting it). Each table
maps (state, input) to the next state; an input absent from a state's row
leaves the state unchanged. The stack (stack.py) derives the inputs from the
segment and decides acceptability (in-window RST, ACK of our SYN/FIN, FIN in
order) in `TcpEmulation`, the Stack's part that updates both sides for a segment with
SYN, FIN or RST (the common data segment is inlined in Stack.process); every state
change goes through `next_state` and the tables.
"""
# Type declarations for the compiled build (tcp.pxd cimports the types, named here as
# strings: flow.py imports this module); decorators that change nothing in plain Python.
import cython

from .constants import (MOS_SIDE_CLI, MOS_SIDE_SVR, TH_ACK, TH_FIN, TH_RST, TH_SYN, TcpState)
from .events import (EV_CONN_START, EV_ERROR, EV_PKT_IN, EV_REXMIT, EV_TCP_STATE_CHANGE,
                     HOOK_NULL, HOOK_RCV, HOOK_SND, VERDICT_DROP, VERDICT_FORWARD)

# The states by their short names (iterating the enum gives its members in C order).
(CLOSED, LISTEN, SYN_SENT, SYN_RCVD, ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING,
 LAST_ACK, TIME_WAIT) = TcpState

# Inputs.
SEND_SYN = "send_syn"          # a SYN without ACK leaves this side
SEND_SYNACK = "send_synack"    # a SYN+ACK leaves this side
SEND_FIN = "send_fin"          # the first transmission of this side's FIN
RECV_SYN = "recv_syn"          # a SYN without ACK arrives
RECV_SYNACK = "recv_synack"    # a SYN+ACK acknowledging our SYN arrives
RECV_ACK_OF_SYN = "recv_ack_of_syn"
RECV_ACK_OF_FIN = "recv_ack_of_fin"
RECV_FIN = "recv_fin"          # the peer's FIN, once every byte before it arrived
RST = "rst"                    # an acceptable RST, sent or received

SENDER_TRANSITIONS = {
    CLOSED: {SEND_SYN: SYN_SENT},
    SYN_RCVD: {SEND_FIN: FIN_WAIT_1},
    ESTABLISHED: {SEND_FIN: FIN_WAIT_1},
    CLOSE_WAIT: {SEND_FIN: LAST_ACK},
}

RECEIVER_TRANSITIONS = {
    LISTEN: {RECV_SYN: SYN_RCVD},
    # Simultaneous open: our SYN crossed the peer's.
    SYN_SENT: {RECV_SYNACK: ESTABLISHED, RECV_SYN: SYN_RCVD},
    SYN_RCVD: {RECV_ACK_OF_SYN: ESTABLISHED, RECV_SYNACK: ESTABLISHED},
    ESTABLISHED: {RECV_FIN: CLOSE_WAIT},
    FIN_WAIT_1: {RECV_ACK_OF_FIN: FIN_WAIT_2, RECV_FIN: CLOSING},
    FIN_WAIT_2: {RECV_FIN: TIME_WAIT},
    CLOSING: {RECV_ACK_OF_FIN: TIME_WAIT},
    LAST_ACK: {RECV_ACK_OF_FIN: CLOSED},
}

# An acceptable RST closes either side from any state.
for _state in TcpState:
    if _state != CLOSED:
        SENDER_TRANSITIONS.setdefault(_state, {})[RST] = CLOSED
        RECEIVER_TRANSITIONS.setdefault(_state, {})[RST] = CLOSED
del _state

# States in which a side has sent its FIN (its stream has an end).
FIN_SENT_STATES = frozenset({FIN_WAIT_1, FIN_WAIT_2, CLOSING, LAST_ACK, TIME_WAIT})
# States in which a side is finished: the flow ends when both sides are here.
FINISHED_STATES = frozenset({CLOSED, TIME_WAIT})
# States in which a side takes no payload (nothing to deliver it to).
NO_DATA_STATES = (CLOSED, LISTEN)


def next_state(table, state, event):
    """The state after `event`, or None when the event does not apply."""
    row = table.get(state)
    if row is None:
        return None
    return row.get(event)


SEQ_MOD = 1 << 32
SEQ_HALF = 1 << 31
SEQ_MASK = SEQ_MOD - 1


def seq_delta(a, b):
    """Signed distance a - b in sequence space (RFC 1982 style)."""
    d = (a - b) & SEQ_MASK
    return d - SEQ_MOD if d >= SEQ_HALF else d


def acks_syn_or_fin(rcv, ack):
    """An ACK arriving at `rcv` acknowledges its SYN (while SYN_RCVD) or its FIN for the
    first time: a state change the emulation must see (the kernel's ACK watch)."""
    if rcv.fin_seq is not None and not rcv.fin_acked and seq_delta(ack, rcv.fin_seq) > 0:
        return True
    return rcv.state == SYN_RCVD and rcv.isn is not None and seq_delta(ack, rcv.isn) > 0


# Zeek's history letters (upper case: originator) and their bits in Side.history_bits.
HISTORY_BITS = {"S": 1, "H": 2, "A": 4, "F": 8, "R": 16, "D": 32}


def add_history(flow, side_index, letter):
    """Side `side_index` of `flow` sent a frame of history letter `letter` (upper case):
    the letter joins the flow's history unless that side had it already."""
    side = flow.sides[side_index]
    bit = HISTORY_BITS[letter]
    if not side.history_bits & bit:
        side.history_bits |= bit
        flow.history.append(letter if side_index == MOS_SIDE_CLI else letter.lower())


class TcpEmulation:
    """The Stack's part that updates both emulated sides for a segment with SYN, FIN or
    RST, or one of a stream not yet known (a mixin: called from Stack.process)."""

    # Compiled, the Stack's per-frame attributes, the packet, the flow and its sides are
    # read as C structs (tcp.pxd).
    @cython.locals(self="StackState", flow="Flow", pkt="Packet", snd="Side")
    def _history(self, flow, snd, sender, pkt, flags):
        """Zeek's conn.log history letters (upper case: originator)."""
        if flags & TH_SYN:
            letter, bit = ("H", 2) if flags & TH_ACK else ("S", 1)
        elif flags & TH_RST:
            letter, bit = "R", 16
        elif flags & TH_FIN:
            letter, bit = "F", 8
        elif pkt.payload_len:
            letter, bit = "D", 32
        elif flags & TH_ACK:
            letter, bit = "A", 4
        else:
            return
        if not snd.history_bits & bit:
            snd.history_bits |= bit
            flow.history.append(letter if sender == MOS_SIDE_CLI else letter.lower())
        if pkt.payload_len and flags & (TH_SYN | TH_FIN | TH_RST) and not snd.history_bits & 32:
            snd.history_bits |= 32
            flow.history.append("D" if sender == MOS_SIDE_CLI else "d")

    @cython.locals(pkt="Packet", snd="Side", rcv="Side")
    def _rst_acceptable(self, pkt, snd, rcv):
        """RFC 793/5961: an RST counts only inside the receiver's window."""
        if rcv.state == SYN_SENT:
            return bool(pkt.flags & TH_ACK) and rcv.isn is not None and pkt.ack == (rcv.isn + 1) & SEQ_MASK
        if rcv.peer_base is None:
            return True
        nxt_seq = (rcv.peer_base + rcv.rcv_nxt) & SEQ_MASK
        delta = seq_delta(pkt.seq, nxt_seq)
        if rcv.right_edge is not None:
            window = max(rcv.right_edge - rcv.rcv_nxt, 1)
        else:
            window = 1 << 30
        return 0 <= delta < window or (delta == -1 and rcv.fin_received)

    @cython.locals(self="StackState", flow="Flow", pkt="Packet", snd="Side", rcv="Side")
    def _segment(self, flow, pkt, sender, snd, rcv):
        """A segment with SYN, FIN or RST, or one of a stream not yet known."""
        flags = pkt.flags
        seq = pkt.seq
        payload_len = pkt.payload_len
        receiver = 1 - sender
        self._history(flow, snd, sender, pkt, flags)
        self.cur_drop = False
        null_mask, snd_mask, rcv_mask = self._flow_masks(flow)
        if null_mask & EV_PKT_IN:
            self._fire_flow(flow, HOOK_NULL, sender, EV_PKT_IN)

        rst_ok = False
        if flags & TH_RST:
            rst_ok = self._rst_acceptable(pkt, snd, rcv)
            if not rst_ok:
                self._counters["rst_ignored"] += 1

        # ------------------------------------------------ sender side update
        snd_events = EV_PKT_IN
        snd_transitions = 0
        seq_end = (seq + payload_len + (1 if flags & TH_SYN else 0) + (1 if flags & TH_FIN else 0)) & SEQ_MASK
        if flags & TH_SYN:
            if snd.syn_seen and snd.isn == seq:
                snd_events |= EV_REXMIT
            else:
                # A new ISN, or a first SYN after the stream was based elsewhere (data or
                # an ACK seen before the SYN): offset 0 moves, the stream starts over.
                if snd.syn_seen or (rcv.peer_base is not None
                                    and rcv.peer_base != (seq + 1) & SEQ_MASK):
                    self._restart_side(flow, snd, rcv)
                snd.syn_seen = True
                snd.isn = seq
                snd.snd_nxt = seq_end
                rcv.peer_base = (seq + 1) & SEQ_MASK
                if not flags & TH_ACK:
                    nxt = next_state(SENDER_TRANSITIONS, snd.state, SEND_SYN)
                    if nxt is not None:
                        snd.state = nxt
                        snd_transitions += 1
                        if sender == MOS_SIDE_CLI:
                            snd_events |= EV_CONN_START
                pkt.parse_options()
                if pkt.bad_options:
                    self._counters["bad_tcp_options"] += 1
                # RFC 7323 2.3: a shift count above 14 is used as 14 (as Linux does).
                snd.wscale = pkt.wscale if pkt.wscale is None or pkt.wscale <= 14 else 14
                snd.mss = pkt.mss
                if flags & TH_ACK:
                    flow.window_known = rcv.syn_seen
                    flow.window_scaled = snd.wscale is not None and rcv.wscale is not None
        elif snd.snd_nxt is None:
            snd.snd_nxt = seq_end
            if rcv.peer_base is None:
                rcv.peer_base = seq  # mid-stream: offset 0 is the first byte seen
        else:
            if payload_len and seq_delta(seq_end, snd.snd_nxt) <= 0 and not flags & TH_FIN:
                snd_events |= EV_REXMIT
                snd.rexmit = (seq, payload_len)
            if seq_delta(seq_end, snd.snd_nxt) > 0:
                snd.snd_nxt = seq_end
        if flags & TH_ACK:
            # Before the FIN: a FIN that acknowledges the peer's FIN was sent after that FIN
            # arrived (ESTABLISHED -> CLOSE_WAIT -> LAST_ACK, not FIN_WAIT_1 -> CLOSING).
            snd_transitions += self._sender_ack(flow, pkt, sender, snd)
        if flags & TH_FIN:
            fin_seq = (seq + payload_len + (1 if flags & TH_SYN else 0)) & SEQ_MASK
            if snd.fin_seq is None:
                snd.fin_seq = fin_seq
                nxt = next_state(SENDER_TRANSITIONS, snd.state, SEND_FIN)
                if nxt is not None:
                    snd.state = nxt
                    snd_transitions += 1
            elif snd.fin_seq == fin_seq:
                snd_events |= EV_REXMIT
                snd.rexmit = (seq, payload_len)
        if rst_ok:
            nxt = next_state(SENDER_TRANSITIONS, snd.state, RST)
            if nxt is not None:
                snd.state = nxt
                snd_transitions += 1
        if snd_transitions:
            snd_events |= EV_TCP_STATE_CHANGE
        if snd_mask & snd_events:
            self._fire_flow(flow, HOOK_SND, sender, snd_events)
        if self.cur_drop:
            # Fix (API.md): a packet dropped at HK_SND never reaches the receiver.
            self._after_packet(flow)
            return VERDICT_DROP

        # ---------------------------------------------- receiver side update
        rcv_events = EV_PKT_IN
        rcv_transitions = 0
        if rst_ok:
            flow.rst_seen = True
            nxt = next_state(RECEIVER_TRANSITIONS, rcv.state, RST)
            if nxt is not None:
                rcv.state = nxt
                rcv_transitions += 1
        else:
            if flags & TH_ACK:
                rcv_transitions += self._receiver_ack(rcv, pkt.ack, flags)
            if flags & TH_SYN:
                if snd_events & EV_REXMIT:
                    rcv_events |= EV_REXMIT
                if flags & TH_ACK:
                    # Also when it repeats the sender's SYN: in a simultaneous open the
                    # SYN-ACK carries the ISN of the crossing SYN and completes the open.
                    if rcv.isn is not None and pkt.ack == (rcv.isn + 1) & SEQ_MASK:
                        nxt = next_state(RECEIVER_TRANSITIONS, rcv.state, RECV_SYNACK)
                        if nxt is not None:
                            rcv.state = nxt
                            rcv_transitions += 1
                elif not snd_events & EV_REXMIT:
                    nxt = next_state(RECEIVER_TRANSITIONS, rcv.state, RECV_SYN)
                    if nxt is not None:
                        if rcv.state == LISTEN and receiver == MOS_SIDE_SVR:
                            rcv_events |= EV_CONN_START
                        rcv.state = nxt
                        rcv_transitions += 1
            if payload_len:
                if flags & TH_SYN:
                    # Like a non-TFO Linux receiver: data on a SYN is not delivered.
                    self._counters["syn_payload_ignored"] += 1
                elif rcv.peer_base is not None and rcv.state not in NO_DATA_STATES:
                    rcv_events |= self._receive_payload(flow, pkt, receiver, rcv)
            if flags & TH_FIN and rcv.peer_base is not None and rcv.peer_fin_off is None:
                fin_seq = (seq + payload_len + (1 if flags & TH_SYN else 0)) & SEQ_MASK
                nxt_seq = (rcv.peer_base + rcv.rcv_nxt) & SEQ_MASK
                rcv.peer_fin_off = rcv.rcv_nxt + seq_delta(fin_seq, nxt_seq)
            elif flags & TH_FIN and rcv.fin_received:
                rcv_events |= EV_REXMIT
            if rcv.peer_fin_off is not None and not rcv.fin_received and rcv.rcv_nxt >= rcv.peer_fin_off:
                rcv_transitions += self._receive_fin(rcv)
        if rcv_transitions:
            rcv_events |= EV_TCP_STATE_CHANGE
        if rcv_mask & rcv_events:
            self._fire_flow(flow, HOOK_RCV, receiver, rcv_events & ~EV_ERROR)
        if rcv_events & EV_ERROR and null_mask & EV_ERROR:
            self._fire_flow(flow, HOOK_NULL, receiver, EV_ERROR)
        self._after_packet(flow)
        return VERDICT_DROP if self.cur_drop else VERDICT_FORWARD

    @cython.locals(self="StackState", rcv="Side")
    def _receiver_ack(self, rcv, ack, flags):
        """What an ACK arriving at `rcv` acknowledges of what it sent."""
        transitions = 0
        if rcv.isn is not None and rcv.state == SYN_RCVD and not flags & TH_SYN \
                and seq_delta(ack, rcv.isn) > 0:
            rcv.state = RECEIVER_TRANSITIONS[SYN_RCVD][RECV_ACK_OF_SYN]
            transitions += 1
        if rcv.fin_seq is not None and not rcv.fin_acked and seq_delta(ack, rcv.fin_seq) > 0:
            rcv.fin_acked = True
            nxt = next_state(RECEIVER_TRANSITIONS, rcv.state, RECV_ACK_OF_FIN)
            if nxt is not None:
                rcv.state = nxt
                transitions += 1
        return transitions

    def _restart_side(self, flow, snd, rcv):
        """A new SYN with another ISN: the stream starts over."""
        rcv.rcv_nxt = rcv.skip_to = rcv.skip_due = 0
        rcv.buf = rcv.peer_fin_off = rcv.right_edge = rcv.beyond_edge = None
        rcv.first_payload_seen = rcv.fin_received = False
        snd.fin_seq = None
        for sock in flow.socks:
            sock.peek_off[1 - flow.sides.index(snd)] = 0

    @cython.locals(self="StackState", flow="Flow", pkt="Packet", snd="Side")
    def _sender_ack(self, flow, pkt, sender, snd):
        """What the sender's ACK tells about its own receive side; returns the
        number of state transitions it caused."""
        ack = pkt.ack
        if snd.peer_base is None:
            snd.peer_base = ack  # no handshake seen: offset 0 is the next byte expected
            return 0
        rcv_nxt = snd.rcv_nxt
        delta = (ack - snd.peer_base - rcv_nxt) & SEQ_MASK
        ack_off = rcv_nxt + (delta - SEQ_MOD if delta >= SEQ_HALF else delta)
        if flow.window_known and not pkt.flags & TH_SYN:
            window = pkt.window << snd.wscale if flow.window_scaled else pkt.window
            edge = ack_off + window
            if snd.right_edge is None or edge > snd.right_edge:
                snd.right_edge = edge
        if ack_off > rcv_nxt:   # it has bytes the monitor has not (yet) in order
            self._acked_unseen(flow, sender, snd, ack_off)
        if snd.peer_fin_off is not None and not snd.fin_received and ack_off > snd.peer_fin_off:
            # The endpoint acknowledges a FIN the monitor could not deliver in
            # order (it missed bytes before it): the endpoint has it, so do we.
            return self._receive_fin(snd)
        return 0

    @cython.locals(self="StackState", side="Side")
    def _receive_fin(self, side):
        side.fin_received = True
        nxt = next_state(RECEIVER_TRANSITIONS, side.state, RECV_FIN)
        if nxt is None:
            return 0
        side.state = nxt
        return 1
