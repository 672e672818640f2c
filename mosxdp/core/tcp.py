"""Per-side TCP state emulation: the transition table, in one place.

The monitor keeps one emulated endpoint per side of a connection. A segment
updates its sender first (what the sender must be in after sending it) and then
its receiver (what the receiver must be in after accepting it). Each table
maps (state, input) to the next state; an input absent from a state's row
leaves the state unchanged. The stack (stack.py) derives the inputs from the
segment and decides acceptability (in-window RST, ACK of our SYN/FIN, FIN in
order); this module only knows the states.
"""
from .constants import TcpState

CLOSED = TcpState.TCP_CLOSED
LISTEN = TcpState.TCP_LISTEN
SYN_SENT = TcpState.TCP_SYN_SENT
SYN_RCVD = TcpState.TCP_SYN_RCVD
ESTABLISHED = TcpState.TCP_ESTABLISHED
FIN_WAIT_1 = TcpState.TCP_FIN_WAIT_1
FIN_WAIT_2 = TcpState.TCP_FIN_WAIT_2
CLOSE_WAIT = TcpState.TCP_CLOSE_WAIT
CLOSING = TcpState.TCP_CLOSING
LAST_ACK = TcpState.TCP_LAST_ACK
TIME_WAIT = TcpState.TCP_TIME_WAIT

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
