"""C-compatible structures of the mOS API (ctypes layouts, C field names)."""
import ctypes


class PktInfo(ctypes.Structure):
    """struct pkt_info: metadata of a frame in host byte order.

    `ethh`, `iph`, `tcph` and `payload` are writable memoryviews into the copy
    of the frame that mtcp_getlastpkt made (C pointers into that copy). The
    copy buffer is reused by the next mtcp_getlastpkt call on the context.
    `cur_ts` is in milliseconds modulo 2**32, as mOS's.
    """
    _fields_ = [
        ("cur_ts", ctypes.c_uint32),
        ("in_ifidx", ctypes.c_int8),
        ("eth_len", ctypes.c_uint16),
        ("ip_len", ctypes.c_uint16),
        ("offset", ctypes.c_uint64),
        ("payloadlen", ctypes.c_uint16),
        ("seq", ctypes.c_uint32),
        ("ack_seq", ctypes.c_uint32),
        ("window", ctypes.c_uint16),
    ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.ethh = None
        self.iph = None
        self.tcph = None
        self.payload = None

    def frame(self):
        """The whole copied frame (bytes), as mtcp_sendpkt would rebuild it."""
        parts = [self.ethh, self.iph, self.tcph, self.payload]
        return b"".join(bytes(p) for p in parts if p is not None)


class TcpBufInfo(ctypes.Structure):
    """struct tcp_buf_info (sequence numbers, modulo 2**32)."""
    _fields_ = [(name, ctypes.c_uint32) for name in (
        "tcpbi_init_seq", "tcpbi_last_byte_read", "tcpbi_next_byte_expected",
        "tcpbi_last_byte_received")]

    def __repr__(self):
        return ("TcpBufInfo(init_seq={0.tcpbi_init_seq}, last_byte_read={0.tcpbi_last_byte_read}, "
                "next_byte_expected={0.tcpbi_next_byte_expected}, "
                "last_byte_received={0.tcpbi_last_byte_received})").format(self)


class TcpRingFragment(ctypes.Structure):
    """struct tcp_ring_fragment: a run of buffered bytes at a stream offset."""
    _fields_ = [("offset", ctypes.c_uint64), ("len", ctypes.c_uint32)]

    def __repr__(self):
        return f"TcpRingFragment(offset={self.offset}, len={self.len})"

    def __eq__(self, other):
        if isinstance(other, TcpRingFragment):
            return (self.offset, self.len) == (other.offset, other.len)
        if isinstance(other, tuple):
            return (self.offset, self.len) == other
        return NotImplemented


class FlowStats(ctypes.Structure):
    """mosxdp extension (MOSX_FLOW_STATS): per-side counters of a flow.

    Index 0 is what the client sent, 1 what the server sent. Packet and byte
    counts include frames handled by a kernel verdict once merged.
    """
    _fields_ = [
        ("start_ts", ctypes.c_uint64),        # microseconds
        ("last_ts", ctypes.c_uint64),
        ("pkts", ctypes.c_uint64 * 2),
        ("ip_bytes", ctypes.c_uint64 * 2),
        ("l2_bytes", ctypes.c_uint64 * 2),
        ("stream_bytes", ctypes.c_uint64 * 2),   # bytes of stream extent (received + missed)
        ("missed_bytes", ctypes.c_uint64 * 2),
        # The part of pkts and l2_bytes a bypass verdict handled (MOSX_BYPASS: the kernel's
        # frames once merged, offline the frames the core only counted).
        ("bypassed_pkts", ctypes.c_uint64 * 2),
        ("bypassed_l2_bytes", ctypes.c_uint64 * 2),
        ("tcp_flags", ctypes.c_uint8 * 2),       # the TCP flags of every segment, OR-ed
    ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.history = ""
        self.end_reason = None
        self.vlan_ids = ()     # the flow's VLAN tags, outermost first


class DatagramFlowStats(ctypes.Structure):
    """mosxdp extension (mosx_watch_datagrams): one UDP or ICMP flow when it ended.

    Index 0 is what the originator sent, 1 what the responder sent (Zeek's orig/resp).
    ``payload_bytes``: UDP payload bytes, or ICMP bytes beyond the 8-byte ICMP header.
    Counts include datagrams the kernel handled for a flow with a kernel verdict.
    Attributes beside the C fields: ``proto`` ("udp" or "icmp"), ``ip_proto`` (17, 1, 58),
    ``orig_h``/``orig_p``/``resp_h``/``resp_p`` (addresses as text; ICMP "ports": the type
    and the counterpart type or code), ``vlan_ids``, ``history`` (UDP: "D"/"d" at each
    side's first datagram, "^" first when the roles were flipped; ICMP: ""),
    ``end_reason`` (timeout, evicted, eof), ``kernel_verdict`` (None, "bypass", "drop"),
    ``one_way`` (ICMP: a message type without an answer type, whose responder "port" is
    the code). ``bypassed_pkts``/``bypassed_l2_bytes``: the part of ``pkts``/``l2_bytes``
    the kernel handled.
    """
    _fields_ = [
        ("start_ts", ctypes.c_uint64),        # microseconds, wall clock
        ("last_ts", ctypes.c_uint64),
        ("pkts", ctypes.c_uint64 * 2),
        ("ip_bytes", ctypes.c_uint64 * 2),
        ("l2_bytes", ctypes.c_uint64 * 2),
        ("payload_bytes", ctypes.c_uint64 * 2),
        ("bypassed_pkts", ctypes.c_uint64 * 2),
        ("bypassed_l2_bytes", ctypes.c_uint64 * 2),
    ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.proto = self.orig_h = self.resp_h = None
        self.ip_proto = self.orig_p = self.resp_p = 0
        self.vlan_ids = ()
        self.history = ""
        self.end_reason = None
        self.kernel_verdict = None
        self.one_way = False


class MtcpConf(ctypes.Structure):
    """struct mtcp_conf (the fields mtcp_getconf/mtcp_setconf exchange)."""
    _fields_ = [(name, ctypes.c_int) for name in (
        "num_cores", "max_concurrency", "max_num_buffers", "rcvbuf_size", "sndbuf_size",
        "tcp_timewait", "tcp_timeout")]


class Timeval(ctypes.Structure):
    """struct timeval, for mtcp_settimer's timeout: `timeval(1, 0)` is one second."""
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]

    def __repr__(self):
        return f"timeval(tv_sec={self.tv_sec}, tv_usec={self.tv_usec})"


timeval = Timeval


class MonitorFilter:
    """union monitor_filter: raw_pkt_filter for raw sockets, the two stream
    filters for stream sockets. None means "everything"."""

    __slots__ = ("raw_pkt_filter", "stream_syn_filter", "stream_orphan_filter")

    def __init__(self, raw_pkt_filter=None, stream_syn_filter=None, stream_orphan_filter=None):
        self.raw_pkt_filter = raw_pkt_filter
        self.stream_syn_filter = stream_syn_filter
        self.stream_orphan_filter = stream_orphan_filter


monitor_filter = MonitorFilter


class SessionEvent:
    """mosxdp extension (mosx_subscribe): one session record handed to a subscription.

    ``kind``: "tls", "http", "dns" (``record`` a TlsSession, HttpTransaction or
    DnsTransaction of mosxdp.sessions, Zeek's field names) or "weird" (``record`` a Weird:
    ``name``, ``addl``, ``direction``); ``session``: the session type of the flow ("tls",
    "http", "dns"); ``uid``: the flow's uid, the one mosx_conn_record gives its conn.log
    record; ``ts``: seconds since the epoch (the record's own time when it has one, else the
    time it was made); ``proto``: "tcp" or "udp"; ``orig_h``/``orig_p``/``resp_h``/``resp_p``:
    the flow's originator (client) and responder, as text and numbers."""

    __slots__ = ("kind", "session", "record", "uid", "ts", "proto", "orig_h", "orig_p",
                 "resp_h", "resp_p")

    def __init__(self, kind, session, record, uid, ts, proto, orig_h, orig_p, resp_h, resp_p):
        self.kind = kind
        self.session = session
        self.record = record
        self.uid = uid
        self.ts = ts
        self.proto = proto
        self.orig_h, self.orig_p, self.resp_h, self.resp_p = orig_h, orig_p, resp_h, resp_p

    def __repr__(self):
        return (f"<SessionEvent {self.kind} {self.uid} {self.orig_h}:{self.orig_p} -> "
                f"{self.resp_h}:{self.resp_p}/{self.proto}>")
