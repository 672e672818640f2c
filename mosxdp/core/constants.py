"""mOS constants with the numeric values of mos_api.h / mtcp_api.h.

Enums are IntEnum/IntFlag so that they compare equal to the C numbers and a
port of a C app can use them unchanged. Their members are module names too
(MOS_ON_PKT_IN, MOS_HK_SND, TCP_ESTABLISHED, ...), as in C.
"""
from enum import IntEnum, IntFlag

# Sides of a monitored connection.
MOS_SIDE_CLI = 0
MOS_SIDE_SVR = 1
MOS_SIDE_BOTH = 2


class MosEvent(IntFlag):
    """Built-in events (enum mos_event_type)."""
    MOS_NULL_EVENT = 0
    MOS_ON_PKT_IN = 1 << 0
    MOS_ON_PKT_OUT = 1 << 1          # deprecated in mOS, never raised
    MOS_ON_CONN_START = 1 << 2
    MOS_ON_CONN_SETUP = 1 << 3       # deprecated in mOS, never raised
    MOS_ON_CONN_NEW_DATA = 1 << 4
    MOS_ON_ERROR = 1 << 5
    MOS_ON_TIMEOUT = 1 << 6
    MOS_ON_TCP_STATE_CHANGE = 1 << 7
    MOS_ON_ORPHAN = 1 << 8
    MOS_ON_REXMIT = 1 << 9
    MOS_ON_CONN_END = 1 << 10
    MOS_ON_DEBUG_MESSAGE = 1 << 11


class MosHook(IntFlag):
    """Hook points (enum mtcp_hook_point)."""
    MOS_NULL = 1 << 29
    MOS_HK_RCV = 1 << 30
    MOS_HK_SND = 1 << 31


globals().update(MosEvent.__members__)
globals().update(MosHook.__members__)

# Built-in events are bits 0..11; user-defined events take bits 32..63 so an
# event id stays a uint64_t like mOS's event_t.
BUILTIN_EVENTS = 0xFFF
UDE_FIRST_BIT = 32
UDE_LAST_BIT = 63

# mtcp_setlastpkt options.
MOS_ETH_HDR = 1 << 0
MOS_IP_HDR = 1 << 1
MOS_TCP_HDR = 1 << 2
MOS_TCP_PAYLOAD = 1 << 3
MOS_UPDATE_IP_CHKSUM = 1 << 4
MOS_UPDATE_TCP_CHKSUM = 1 << 5
MOS_DROP = 1 << 6
MOS_OVERWRITE = 1 << 7
MOS_CHOMP = 1 << 8
MOS_INSERT = 1 << 9


class SocketType(IntEnum):
    """enum socket_type of mtcp_api.h, in its order (only the monitor types are usable)."""
    MOS_SOCK_UNUSED = 0
    MOS_SOCK_STREAM_LISTEN = 1
    MOS_SOCK_PROXY_LISTEN = 2
    MOS_SOCK_MONITOR_STREAM = 3
    MOS_SOCK_STREAM = 4
    MOS_SOCK_PROXY = 5
    MOS_SOCK_MONITOR_STREAM_ACTIVE = 6
    MOS_SOCK_MONITOR_RAW = 7
    MOS_SOCK_EPOLL = 8
    MOS_SOCK_PIPE = 9


globals().update(SocketType.__members__)

# Socket option levels and names.
SOL_SOCKET = 0xFFFF
SOL_MONSOCKET = 0xFFFE
SO_ERROR = 4  # Linux value, as mtcp's SO_ERROR mirrors it

MOS_FRAGINFO_CLIBUF = 0x01
MOS_FRAGINFO_SVRBUF = 0x02
MOS_INFO_CLIBUF = 0x03
MOS_INFO_SVRBUF = 0x04
MOS_TCP_STATE_CLI = 0x05
MOS_TCP_STATE_SVR = 0x06
MOS_TIMESTAMP = 0x07
MOS_CLIBUF = 0x09
MOS_SVRBUF = 0x0A
MOS_SEQ_REMAP = 0x0B
MOS_STOP_MON = 0x0C
MOS_FRAG_CLIBUF = 0x0D
MOS_FRAG_SVRBUF = 0x0E
MOS_CLIOVERLAP = 0x0F
MOS_SVROVERLAP = 0x10
# mosxdp extensions: hand the rest of a flow to the kernel (see docs).
MOSX_BYPASS = 0x100
MOSX_DROP_FLOW = 0x101
MOSX_FLOW_STATS = 0x102   # getsockopt: a FlowStats of the flow (packets, bytes, history)
MOSX_MIDSTREAM = 0x103    # setsockopt on a listener: 1 picks up flows without a handshake, 0 never
MOSX_STATE_ONLY = 0x104   # setsockopt on a listener: 1 its flows need only counters, flags and states
MOSX_STREAM_ONLY = 0x105  # setsockopt on a listener: 1 its flows need their streams, no packet

MOS_OVERLAP_POLICY_FIRST = 0
MOS_OVERLAP_POLICY_LAST = 1
MOS_OVERLAP_CNT = 2


class TcpState(IntEnum):
    """enum tcpstate: the emulated state of one side."""
    TCP_CLOSED = 0
    TCP_LISTEN = 1
    TCP_SYN_SENT = 2
    TCP_SYN_RCVD = 3
    TCP_ESTABLISHED = 4
    TCP_FIN_WAIT_1 = 5
    TCP_FIN_WAIT_2 = 6
    TCP_CLOSE_WAIT = 7
    TCP_CLOSING = 8
    TCP_LAST_ACK = 9
    TCP_TIME_WAIT = 10
    # The seed man page's spelling, kept as an alias of TCP_FIN_WAIT_2.
    TCP_FINE_WAIT_2 = 6


globals().update(TcpState.__members__)

# TCP header flag bits.
TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_PUSH = 0x08
TH_ACK = 0x10
TH_URG = 0x20
TH_ECE = 0x40
TH_CWR = 0x80
