"""Header views over a frame (sans-IO); the checksums are core/checksum.py.

`parse_frame` reads Ethernet (with any stack of 802.1Q/802.1ad tags), IPv4 or IPv6 (with
extension headers) and TCP or UDP headers straight out of the frame buffer with precompiled
`struct.Struct` objects: the frame is never copied, and the `Packet` it returns keeps the
buffer so that checksums can be fixed in place. This is the per-packet hot path: the common
Ethernet/IPv4/TCP case costs two unpacks (Ethernet type with the IPv4 header, then TCP) and no
work for what nobody reads (TCP options are parsed for SYN segments only, otherwise on first
access).

Malformed frames raise a `PacketError` subclass whose `counter` names the malformation, so the
caller can count it and move on; no other exception escapes `parse_frame`.
"""
import struct

import cython

if cython.compiled:
    from cython.cimports.cpython.buffer import PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
    from cython.cimports.cpython.bytes import PyBytes_FromStringAndSize

from .constants import TH_SYN

ETH_HDR_LEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
# 802.1Q, 802.1ad, and the pre-standard QinQ tag still found on older switches.
VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100))
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

IPPROTO_HOPOPTS = 0
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ROUTING = 43
IPPROTO_FRAGMENT = 44
IPPROTO_AH = 51
IPPROTO_ICMPV6 = 58
# Extension headers whose length field counts 8-octet units beyond the first 8 (RFC 8200,
# RFC 6564): hop-by-hop, routing, destination options, mobility, HIP, shim6, experimental.
# Any other next header (ESP, No Next Header, TCP, ...) ends the walk.
IPV6_EXT_HEADERS_8_OCTET = frozenset((0, 43, 60, 135, 139, 140, 253, 254))

IPV4_HDR_LEN = 20
IPV6_HDR_LEN = 40
TCP_HDR_LEN = 20
UDP_HDR_LEN = 8
ICMP_HDR_LEN = 8   # type, code, checksum and the 4 bytes every message has (RFC 792, 4443)
TCP_MAX_OPTIONS_LEN = 40

TCPOPT_EOL = 0
TCPOPT_NOP = 1
TCPOPT_MSS = 2
TCPOPT_WSCALE = 3
TCPOPT_SACK_PERMITTED = 4
TCPOPT_TIMESTAMP = 8

_IPV4_FRAGMENT_BITS = 0x3FFF  # MF flag and fragment offset; DF is not fragmentation
_IPV4_NO_OPTIONS = 0x45  # version 4, IHL 5
_IPV6_FRAGMENT_BITS = 0xFFF9  # fragment offset and M flag

_ETHERTYPE = struct.Struct("!H")
_VLAN_TAG = struct.Struct("!HH")  # TCI, next ethertype
# version/IHL, total length, flags/fragment offset, protocol, source, destination
_IPV4 = struct.Struct("!BxH2xHxB2x4s4s")
# The ethertype of an untagged frame, then the _IPV4 fields behind it.
_ETH_IPV4 = struct.Struct("!12xHBxH2xHxB2x4s4s")
_ETH_IPV4_LEN = _ETH_IPV4.size
# version/traffic class/flow label, payload length, next header, source, destination
_IPV6 = struct.Struct("!IHBx16s16s")
_IPV6_EXT = struct.Struct("!BB")  # next header, length
_IPV6_FRAGMENT = struct.Struct("!BxH")  # next header, offset/flags
# ports, seq, ack, data offset, flags, window, urgent pointer (checksum skipped)
_TCP = struct.Struct("!HHIIBBH2xH")
_UDP_PORTS = struct.Struct("!HH")
_ICMP_TYPE_CODE = struct.Struct("!BB")
_U16 = struct.Struct("!H")
_TIMESTAMPS = struct.Struct("!II")

TCP_CHECKSUM_OFF = 16
IPV4_CHECKSUM_OFF = 10


class PacketError(ValueError):
    """A frame that cannot be parsed; `counter` names the malformation, for statistics."""

    def __init__(self, counter, message):
        super().__init__(message)
        self.counter = counter


class TruncatedHeader(PacketError):
    """A header runs past the end of the frame, or of the IP packet that holds it."""


class InvalidHeader(PacketError):
    """A header field holds a value no valid packet can have."""


# Every `counter` parse_frame can raise, so that statistics can start them at zero.
PACKET_ERROR_COUNTERS = (
    "truncated_l2", "truncated_vlan", "truncated_ipv4", "truncated_ipv6",
    "truncated_ipv6_ext", "truncated_tcp", "truncated_udp",
    "ip_version", "ipv4_ihl", "ipv4_total_length", "ipv6_hbh_position", "tcp_doff",
)
# What parse_cut_frame raises for a frame cut inside its headers.
CUT_HEADERS = "cut_headers"

def _lazy_option(name):
    """A TCP option field of Packet, parsed from the header on first read."""
    slot = "_" + name

    def get(self):
        # _bad_options is a bool once the options are parsed: unset before (None in the
        # compiled Packet, whose fields always hold a value).
        if getattr(self, "_bad_options", None) is None:
            self.parse_options()
        return getattr(self, slot)
    return property(get, doc=f"TCP option field {name}, parsed on first read")


class Packet:
    """Parsed headers of one frame: ints in host order, addresses as bytes, offsets into `buf`
    (of `frame_len` bytes).

    Fields that a protocol does not have are 0 (b"" for addresses): a non-IP frame has only the
    L2 fields and payload_off/payload_len covering the L2 payload; a fragment or a protocol
    other than TCP/UDP has no ports, and its payload is everything after the IP headers.
    TCP option fields (mss, wscale, sack_ok, ts_val, ts_ecr, bad_options) are filled by
    parse_frame for SYN segments only; for other segments the first read of one of them
    calls parse_options(), which can also be called directly.
    """

    __slots__ = (
        "buf", "frame_len", "vlan_ids", "l3_off", "ip_version", "ip_proto", "src", "dst", "ip_len",
        "is_fragment", "l4_off", "sport", "dport", "seq", "ack", "flags", "window", "urgent",
        "tcp_hdr_len", "payload_off", "payload_len",
        # the option fields' storage, behind the lazy properties below
        "_mss", "_wscale", "_sack_ok", "_ts_val", "_ts_ecr", "_bad_options",
    )

    @property
    def payload(self):
        """The L4 payload as a memoryview slice of `buf` (Ethernet padding excluded)."""
        start = self.payload_off
        return memoryview(self.buf)[start:start + self.payload_len]

    def parse_options(self):
        """Parse the TCP options into mss, wscale, sack_ok, ts_val, ts_ecr, bad_options.

        Absent options are None (sack_ok False). An option whose length is < 2 or runs past
        the header stops the walk with bad_options True, like Linux does; the segment itself
        stays valid. A known option of the wrong size is ignored, as Linux ignores it.
        wscale is the raw shift count (the receiver clamps it to 14).
        """
        self._mss = self._wscale = self._ts_val = self._ts_ecr = None
        self._sack_ok = self._bad_options = False
        if self.ip_proto != IPPROTO_TCP or self.is_fragment:
            return
        buf = self.buf
        pos = self.l4_off + TCP_HDR_LEN
        end = self.l4_off + self.tcp_hdr_len
        while pos < end:
            kind = buf[pos]
            if kind == TCPOPT_EOL:
                return
            if kind == TCPOPT_NOP:
                pos += 1
                continue
            if pos + 1 >= end or buf[pos + 1] < 2 or pos + buf[pos + 1] > end:
                self._bad_options = True
                return
            length = buf[pos + 1]
            if kind == TCPOPT_MSS and length == 4:
                self._mss = _U16.unpack_from(buf, pos + 2)[0]
            elif kind == TCPOPT_WSCALE and length == 3:
                self._wscale = buf[pos + 2]
            elif kind == TCPOPT_SACK_PERMITTED and length == 2:
                self._sack_ok = True
            elif kind == TCPOPT_TIMESTAMP and length == 10:
                self._ts_val, self._ts_ecr = _TIMESTAMPS.unpack_from(buf, pos + 2)
            pos += length

    # Plain slots for every header field keep attribute reads on CPython's fast path (a
    # __getattr__ on the class would slow every read); only the options are properties.
    mss = _lazy_option("mss")
    wscale = _lazy_option("wscale")
    sack_ok = _lazy_option("sack_ok")
    ts_val = _lazy_option("ts_val")
    ts_ecr = _lazy_option("ts_ecr")
    bad_options = _lazy_option("bad_options")

    def __repr__(self):
        if not self.ip_version:
            return f"<Packet non-IP vlans={self.vlan_ids} l3_off={self.l3_off}>"
        return (f"<Packet IPv{self.ip_version} proto={self.ip_proto} {self.src.hex()}:{self.sport}"
                f" > {self.dst.hex()}:{self.dport} ip_len={self.ip_len}"
                f"{' fragment' if self.is_fragment else ''} seq={self.seq} ack={self.ack}"
                f" flags={self.flags:#04x} payload_len={self.payload_len}>")


def parse_frame(buf):
    """Parse the headers of an Ethernet frame held in `buf` (a memoryview, or any buffer).

    Raises TruncatedHeader or InvalidHeader (PacketError) for a malformed frame, and
    nothing else for any input. A non-IP ethertype is not an error: ip_version is 0.
    """
    frame_len = len(buf)
    if cython.compiled and frame_len >= _FAST_MIN_LEN:
        pkt = _parse_tcp_ipv4(buf, frame_len)
        if pkt is not None:
            return pkt
    if frame_len < ETH_HDR_LEN:
        raise TruncatedHeader(
            "truncated_l2", f"{frame_len}-byte frame is shorter than an Ethernet header")
    if frame_len >= _ETH_IPV4_LEN:
        # Read as if untagged IPv4 (the usual frame): one unpack instead of two.
        ethertype, version_ihl, ip_len, fragment, ip_proto, src, dst = _ETH_IPV4.unpack_from(buf)
    else:
        ethertype = _ETHERTYPE.unpack_from(buf, 12)[0]
    l3_off = ETH_HDR_LEN
    vlan_ids = ()
    if ethertype != ETH_P_IP and ethertype in VLAN_TPIDS:   # an int test first: the usual frame
        vlan_ids, ethertype, l3_off = parse_vlan_tags(buf, frame_len, ethertype)

    pkt = Packet()   # no __init__: cheaper than object.__new__(Packet)
    pkt.buf = buf
    pkt.frame_len = frame_len
    pkt.vlan_ids = vlan_ids
    pkt.l3_off = l3_off

    if ethertype == ETH_P_IP:
        if frame_len < l3_off + IPV4_HDR_LEN:
            raise TruncatedHeader(
                "truncated_ipv4", f"IPv4 header at offset {l3_off} runs past the "
                f"{frame_len}-byte frame")
        if l3_off != ETH_HDR_LEN:   # tagged: the first unpack read tags, not these fields
            version_ihl, ip_len, fragment, ip_proto, src, dst = _IPV4.unpack_from(buf, l3_off)
        if version_ihl == _IPV4_NO_OPTIONS:
            ip_hdr_len = IPV4_HDR_LEN   # the common case, in one comparison
        else:
            if version_ihl >> 4 != 4:
                raise _wrong_ip_version(version_ihl >> 4, ETH_P_IP, l3_off)
            ip_hdr_len = (version_ihl & 0xF) * 4
            if ip_hdr_len < IPV4_HDR_LEN:
                raise InvalidHeader(
                    "ipv4_ihl", f"IPv4 IHL {version_ihl & 0xF} < 5 at offset {l3_off}")
        if ip_len < ip_hdr_len:
            if ip_len or frame_len - l3_off <= ip_hdr_len:
                raise InvalidHeader(
                    "ipv4_total_length", f"IPv4 total length {ip_len} < header length "
                    f"{ip_hdr_len} at offset {l3_off}")
            # Total length 0 with more than a header: a segment captured before TSO cut it
            # (or a BIG TCP one, over 64 KiB): the packet is the rest of the frame, as
            # Wireshark reads it.
            ip_len = frame_len - l3_off
        ip_end = l3_off + ip_len
        if ip_end > frame_len:
            raise _past_frame("truncated_ipv4", f"IPv4 total length {ip_len}", l3_off, frame_len)
        l4_off = l3_off + ip_hdr_len
        is_fragment = (fragment & _IPV4_FRAGMENT_BITS) != 0
        pkt.ip_version = 4
    elif ethertype == ETH_P_IPV6:
        ip_proto, src, dst, ip_len, l4_off, is_fragment = _parse_ipv6(buf, frame_len, l3_off)
        ip_end = l3_off + ip_len
        pkt.ip_version = 6
    else:
        pkt.ip_version = pkt.ip_proto = pkt.ip_len = pkt.l4_off = 0
        pkt.src = pkt.dst = b""
        pkt.is_fragment = False
        pkt.payload_off = l3_off
        pkt.payload_len = frame_len - l3_off
        _clear_l4(pkt)
        return pkt

    pkt.ip_proto = ip_proto
    pkt.src = src
    pkt.dst = dst
    pkt.ip_len = ip_len
    pkt.is_fragment = is_fragment
    pkt.l4_off = l4_off

    if ip_proto == IPPROTO_TCP and not is_fragment:
        if l4_off + TCP_HDR_LEN > ip_end:
            raise TruncatedHeader(
                "truncated_tcp", f"TCP header at offset {l4_off} runs past the IP packet "
                f"ending at {ip_end}")
        (pkt.sport, pkt.dport, pkt.seq, pkt.ack, data_offset, flags, pkt.window,
         pkt.urgent) = _TCP.unpack_from(buf, l4_off)
        tcp_hdr_len = (data_offset >> 4) * 4
        if tcp_hdr_len < TCP_HDR_LEN:
            raise InvalidHeader(
                "tcp_doff", f"TCP data offset {data_offset >> 4} < 5 at offset {l4_off}")
        payload_off = l4_off + tcp_hdr_len
        if payload_off > ip_end:
            raise TruncatedHeader(
                "truncated_tcp", f"TCP header of {tcp_hdr_len} bytes at offset {l4_off} runs "
                f"past the IP packet ending at {ip_end}")
        pkt.flags = flags
        pkt.tcp_hdr_len = tcp_hdr_len
        pkt.payload_off = payload_off
        pkt.payload_len = ip_end - payload_off
        if flags & TH_SYN:
            pkt.parse_options()
        return pkt

    _clear_l4(pkt)
    if ip_proto == IPPROTO_UDP and not is_fragment:
        if l4_off + UDP_HDR_LEN > ip_end:
            raise TruncatedHeader(
                "truncated_udp", f"UDP header at offset {l4_off} runs past the IP packet "
                f"ending at {ip_end}")
        pkt.sport, pkt.dport = _UDP_PORTS.unpack_from(buf, l4_off)
        l4_off += UDP_HDR_LEN
    pkt.payload_off = l4_off
    pkt.payload_len = ip_end - l4_off
    return pkt


# The compiled build reads the usual frame, TCP in untagged IPv4 without options, straight
# from its bytes (_parse_tcp_ipv4) instead of through two struct unpacks: a fifth of
# parse_frame's instructions. Any other frame, and any frame that is not whole and valid
# there, takes the general path, which gives the same Packet (or the error).
_FAST_MIN_LEN = ETH_HDR_LEN + IPV4_HDR_LEN + TCP_HDR_LEN


def _parse_tcp_ipv4(buf, frame_len):
    """parse_frame's Packet for a whole, valid TCP segment in untagged IPv4 without options
    (not a fragment); None for any other frame. Compiled build only: the frame's bytes are
    read through its buffer (Ethernet 14 bytes, IPv4 20, TCP from offset 34)."""
    try:
        PyObject_GetBuffer(buf, cython.address(view), PyBUF_SIMPLE)
    except (TypeError, BufferError, ValueError):
        return None         # not a contiguous buffer of bytes: the general path reads it
    try:
        b = cython.cast(cython.p_uchar, view.buf)
        if b[12] != 0x08 or b[13] != 0x00 or b[14] != 0x45 or b[23] != 6 \
                or (b[20] & 0x3F) or b[21]:
            return None
        ip_len = (b[16] << 8) | b[17]
        tcp_hdr_len = (b[46] >> 4) * 4
        ip_end = 14 + ip_len
        if ip_end > frame_len or tcp_hdr_len < 20 or 34 + tcp_hdr_len > ip_end:
            return None
        pkt = Packet()
        pkt.buf = buf
        pkt.frame_len = frame_len
        pkt.vlan_ids = ()
        pkt.l3_off = 14
        pkt.ip_version = 4
        pkt.ip_proto = 6
        pkt.src = PyBytes_FromStringAndSize(cython.cast(cython.p_char, b + 26), 4)
        pkt.dst = PyBytes_FromStringAndSize(cython.cast(cython.p_char, b + 30), 4)
        pkt.ip_len = ip_len
        pkt.is_fragment = False
        pkt.l4_off = 34
        pkt.sport = (b[34] << 8) | b[35]
        pkt.dport = (b[36] << 8) | b[37]
        pkt.seq = (cython.cast(cython.uint, b[38]) << 24) | (b[39] << 16) | (b[40] << 8) | b[41]
        pkt.ack = (cython.cast(cython.uint, b[42]) << 24) | (b[43] << 16) | (b[44] << 8) | b[45]
        flags = b[47]
        pkt.flags = flags
        pkt.window = (b[48] << 8) | b[49]
        pkt.urgent = (b[52] << 8) | b[53]
        pkt.tcp_hdr_len = tcp_hdr_len
        pkt.payload_off = 34 + tcp_hdr_len
        pkt.payload_len = ip_end - (34 + tcp_hdr_len)
    finally:
        PyBuffer_Release(cython.address(view))
    if flags & TH_SYN:
        pkt.parse_options()
    return pkt


def parse_cut_frame(buf, wire_len):
    """Parse the headers of a frame a capture cut by its snap length: `buf` holds the first
    bytes of a frame of `wire_len` bytes on the wire.

    When every header (Ethernet with its VLAN tags, IP with its options or extension
    headers, TCP with its options, UDP, ICMP's first 8 bytes) was captured, the Packet is
    the one parse_frame would give for the whole frame: `frame_len` is `wire_len`, `ip_len` and `payload_len`
    come from the IP header, and `buf` is the captured bytes, so the payload's tail is
    missing (``len(pkt.buf) < pkt.frame_len`` tells such a packet; its `payload` view has
    only the captured bytes). A frame whose IP packet was captured whole is parse_frame's.

    Raises TruncatedHeader "cut_headers" when the cut is inside the headers, and what
    parse_frame raises for a frame the cut does not explain (a field no packet can have,
    an IP length past the frame on the wire).
    """
    try:
        return parse_frame(buf)
    except InvalidHeader:
        raise           # read from captured bytes: not the cut's doing
    except TruncatedHeader as exc:
        first = exc
    captured = len(buf)
    if captured < ETH_HDR_LEN:
        raise _cut_headers(captured, wire_len)
    ethertype = _ETHERTYPE.unpack_from(buf, 12)[0]
    try:
        _, ethertype, l3_off = parse_vlan_tags(buf, captured, ethertype)
    except TruncatedHeader:
        raise _cut_headers(captured, wire_len) from None
    # Where the IP length field is, and how much of the packet it leaves out.
    if ethertype == ETH_P_IP:
        fixed, length_off, uncounted = IPV4_HDR_LEN, l3_off + 2, 0
    elif ethertype == ETH_P_IPV6:
        fixed, length_off, uncounted = IPV6_HDR_LEN, l3_off + 4, IPV6_HDR_LEN
    else:
        raise first
    if captured < l3_off + fixed:
        raise _cut_headers(captured, wire_len)
    ip_len = _U16.unpack_from(buf, length_off)[0] + uncounted
    ip_end = l3_off + ip_len
    if ip_end <= captured or ip_end > wire_len:
        raise first     # not cut inside the IP packet, or longer than the frame on the wire
    # Parsed as if the IP packet ended where the capture does: a header that runs past
    # the captured bytes is then a truncation.
    head = bytearray(buf)
    _U16.pack_into(head, length_off, captured - l3_off - uncounted)
    try:
        pkt = parse_frame(head)
    except TruncatedHeader:
        raise _cut_headers(captured, wire_len) from None
    except InvalidHeader as exc:
        if exc.counter == "ipv4_total_length":   # the IPv4 options are cut
            raise _cut_headers(captured, wire_len) from None
        raise
    if (pkt.ip_proto in (IPPROTO_ICMP, IPPROTO_ICMPV6) and not pkt.is_fragment
            and captured < pkt.l4_off + ICMP_HDR_LEN):
        raise _cut_headers(captured, wire_len)   # its type and code are part of the header
    pkt.buf = buf
    pkt.frame_len = wire_len
    pkt.ip_len = ip_len
    pkt.payload_len = ip_end - pkt.payload_off
    return pkt


def _cut_headers(captured, wire_len):
    return TruncatedHeader(CUT_HEADERS, f"the capture kept {captured} of the frame's "
                           f"{wire_len} bytes: its headers are cut")


def icmp_type_code(pkt):
    """(type, code) of an unfragmented ICMP or ICMPv6 packet parsed by parse_frame (whose
    payload is then the whole ICMP message). Raises TruncatedHeader ('truncated_icmp') when
    the message is shorter than the 8-byte header every ICMP message has."""
    if pkt.payload_len < ICMP_HDR_LEN:
        raise TruncatedHeader(
            "truncated_icmp", f"{pkt.payload_len}-byte ICMP message at offset {pkt.l4_off} is "
            f"shorter than its {ICMP_HDR_LEN}-byte header")
    return _ICMP_TYPE_CODE.unpack_from(pkt.buf, pkt.l4_off)


def _wrong_ip_version(version, ethertype, l3_off):
    return InvalidHeader("ip_version", f"IP version {version} under ethertype {ethertype:#06x} "
                         f"at offset {l3_off}")


def _past_frame(counter, what, l3_off, frame_len):
    return TruncatedHeader(counter, f"{what} at offset {l3_off} runs past the {frame_len}-byte "
                           "frame")


def _clear_l4(pkt):
    pkt.sport = pkt.dport = pkt.seq = pkt.ack = pkt.flags = pkt.window = pkt.urgent = 0
    pkt.tcp_hdr_len = 0


def parse_vlan_tags(buf, frame_len, ethertype):
    """Walk a stack of VLAN tags from the Ethernet header's `ethertype`; return (vlan ids outer
    first, inner ethertype, L3 offset)."""
    vlan_ids = ()
    off = ETH_HDR_LEN
    while ethertype in VLAN_TPIDS:
        if off + 4 > frame_len:
            raise TruncatedHeader(
                "truncated_vlan", f"VLAN tag at offset {off - 2} runs past the "
                f"{frame_len}-byte frame")
        tci, ethertype = _VLAN_TAG.unpack_from(buf, off)
        vlan_ids += (tci & 0xFFF,)  # stacks are 1 or 2 tags deep: cheaper than a list
        off += 4
    return vlan_ids, ethertype, off


def _parse_ipv6(buf, frame_len, l3_off):
    """Parse an IPv6 header and walk its extension headers.

    Returns (upper-layer protocol, src, dst, ip_len, offset of the upper-layer header,
    is_fragment). The walk ends at a Fragment header (the rest of the chain may be in
    another fragment), at ESP (encrypted) and at No Next Header; an atomic fragment
    (offset 0, M clear: RFC 6946) is not a fragment and the walk goes on past it.
    """
    if frame_len < l3_off + IPV6_HDR_LEN:
        raise _past_frame("truncated_ipv6", "IPv6 header", l3_off, frame_len)
    version_class_flow, payload_len, next_header, src, dst = _IPV6.unpack_from(buf, l3_off)
    if version_class_flow >> 28 != 6:
        raise _wrong_ip_version(version_class_flow >> 28, ETH_P_IPV6, l3_off)
    ip_len = IPV6_HDR_LEN + payload_len
    ip_end = l3_off + ip_len
    if ip_end > frame_len:
        raise _past_frame("truncated_ipv6", f"IPv6 payload length {payload_len}", l3_off,
                          frame_len)
    off = l3_off + IPV6_HDR_LEN
    while True:
        if next_header in IPV6_EXT_HEADERS_8_OCTET:
            if next_header == IPPROTO_HOPOPTS and off != l3_off + IPV6_HDR_LEN:
                raise InvalidHeader(
                    "ipv6_hbh_position", f"IPv6 hop-by-hop options header at offset {off} "
                    "does not follow the IPv6 header")
            unit, extra = 8, 1
        elif next_header == IPPROTO_AH:
            unit, extra = 4, 2  # AH counts 4-octet units beyond the first 8 octets
        elif next_header == IPPROTO_FRAGMENT:
            if off + 8 > ip_end:
                raise TruncatedHeader(
                    "truncated_ipv6_ext", f"IPv6 fragment header at offset {off} runs past "
                    f"the IP packet ending at {ip_end}")
            following, offset_flags = _IPV6_FRAGMENT.unpack_from(buf, off)
            off += 8
            if offset_flags & _IPV6_FRAGMENT_BITS:
                return following, src, dst, ip_len, off, True
            next_header = following
            continue
        else:
            return next_header, src, dst, ip_len, off, False
        if off + 2 > ip_end:
            raise TruncatedHeader(
                "truncated_ipv6_ext", f"IPv6 extension header {next_header} at offset {off} "
                f"runs past the IP packet ending at {ip_end}")
        following, length = _IPV6_EXT.unpack_from(buf, off)
        ext_len = (length + extra) * unit
        if off + ext_len > ip_end:
            raise TruncatedHeader(
                "truncated_ipv6_ext", f"IPv6 extension header {next_header} of {ext_len} "
                f"bytes at offset {off} runs past the IP packet ending at {ip_end}")
        next_header = following
        off += ext_len
