"""Frames the core builds or edits for the API: mtcp_setlastpkt's in-place overwrites,
mtcp_sendpkt's frames (lengths and checksums fixed), the RSTs of mtcp_reset_conn, and the
TCP frame builder they and the tests use.

Errors are FrameError, an OSError with the errno the mOS call reports.
"""
import errno
import struct

from .constants import MOS_ETH_HDR, MOS_IP_HDR, MOS_TCP_HDR, MOS_TCP_PAYLOAD, TH_ACK, TH_RST
from .checksum import (fix_ipv4_checksum, fix_tcp_checksum, ipv4_header_checksum,
                       tcp_segment_checksum)
from .packet import (ETH_HDR_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP,
                     IPV4_CHECKSUM_OFF, IPV4_HDR_LEN, IPV6_HDR_LEN, TCP_CHECKSUM_OFF,
                     TCP_HDR_LEN, TCP_MAX_OPTIONS_LEN, PacketError, parse_cut_frame, parse_frame,
                     parse_vlan_tags)
from .tcp import SEQ_MASK, seq_delta


_IPV4_DF = 0x4000
_U16 = struct.Struct("!H")
_VLAN_TAG = struct.Struct("!HH")     # TPID, TCI
_ETH_ADDRS = struct.Struct("!6s6s")
_IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IPV6_HEADER = struct.Struct("!IHBB16s16s")
_TCP_HEADER = struct.Struct("!HHIIBBHHH")


class FrameError(OSError):
    """A frame edit or a frame to send that cannot be done (errno as the mOS call's)."""


# The header fields a parse sets, re-read after an edit of the headers.
_HEADER_FIELDS = ("vlan_ids", "l3_off", "ip_version", "ip_proto", "src", "dst", "ip_len",
                  "is_fragment", "l4_off", "sport", "dport", "seq", "ack", "flags", "window",
                  "urgent", "tcp_hdr_len", "payload_off", "payload_len")


def overwrite(pkt, region, offset, data, datalen, fix_ip_checksum, fix_tcp_checksum_):
    """mtcp_setlastpkt's MOS_OVERWRITE: `datalen` bytes of `data` (a byte memoryview) at
    `offset` in `region` (MOS_ETH_HDR, MOS_IP_HDR, MOS_TCP_HDR or MOS_TCP_PAYLOAD) of the
    packet's frame, in place; the packet's fields follow a header edit; checksums are fixed
    when asked. An edit that would leave the frame unparseable is undone."""
    if pkt.ip_version == 0 and region != MOS_ETH_HDR:
        raise FrameError(errno.EINVAL, "this frame has only an Ethernet header")
    tcp_ok = pkt.ip_proto == 6 and not pkt.is_fragment
    if region in (MOS_TCP_HDR, MOS_TCP_PAYLOAD) and not tcp_ok:
        raise FrameError(errno.EINVAL, "this packet has no TCP header")
    start, end = {
        MOS_ETH_HDR: (0, pkt.l3_off),
        MOS_IP_HDR: (pkt.l3_off, pkt.l4_off),
        MOS_TCP_HDR: (pkt.l4_off, pkt.payload_off if tcp_ok else pkt.l4_off),
        MOS_TCP_PAYLOAD: (pkt.payload_off, pkt.payload_off + pkt.payload_len if tcp_ok else 0),
    }[region]
    if end > len(pkt.buf):
        end = len(pkt.buf)   # a frame the capture cut: only what it holds can change
    if start + offset + datalen > end:
        raise FrameError(errno.EINVAL, f"offset {offset} + datalen {datalen} runs past the "
                         f"region ({end - start} bytes)")
    frame = pkt.buf
    at = start + offset
    saved = bytes(frame[at:at + datalen])
    frame[at:at + datalen] = data[:datalen]
    if region != MOS_TCP_PAYLOAD:
        try:
            fresh = (parse_frame(frame) if len(frame) == pkt.frame_len
                     else parse_cut_frame(frame, pkt.frame_len))
        except PacketError as exc:
            frame[at:at + datalen] = saved
            raise FrameError(errno.EINVAL, f"the edit makes the frame unparseable: {exc}") from None
        for name in _HEADER_FIELDS:
            setattr(pkt, name, getattr(fresh, name))
    if fix_ip_checksum and pkt.ip_version == 4:
        fix_ipv4_checksum(pkt)
    if fix_tcp_checksum_ and tcp_ok:
        fix_tcp_checksum(pkt)


def finish_frame(frame):
    """An mtcp_sendpkt frame (bytearray: Ethernet, IP, TCP headers and payload): its IP
    length field and checksums fixed. Returns its parsed Packet."""
    if len(frame) < ETH_HDR_LEN:
        raise FrameError(errno.ENODATA, "the Ethernet header is missing or too short")
    try:
        _, _, l3 = parse_vlan_tags(frame, len(frame), _U16.unpack_from(frame, 12)[0])
    except PacketError as exc:
        raise FrameError(errno.ENODATA, f"pinfo does not hold a valid Ethernet header: {exc}") from None
    if len(frame) < l3 + 20:
        raise FrameError(errno.ENODATA, "the IP header is missing or too short")
    version = frame[l3] >> 4
    if version == 4:
        frame[l3 + 2:l3 + 4] = (len(frame) - l3).to_bytes(2, "big")
    elif version == 6 and len(frame) >= l3 + 40:
        frame[l3 + 4:l3 + 6] = (len(frame) - l3 - 40).to_bytes(2, "big")
    else:
        raise FrameError(errno.ENODATA, f"IP version {version} is not 4 or 6")
    try:
        pkt = parse_frame(memoryview(frame))
    except PacketError as exc:
        raise FrameError(errno.ENODATA, f"pinfo does not hold a valid IP/TCP header: {exc}") from None
    if pkt.ip_proto != 6 or pkt.is_fragment:
        raise FrameError(errno.ENODATA, "pinfo does not hold a TCP header")
    if version == 4:
        fix_ipv4_checksum(pkt)
    fix_tcp_checksum(pkt)
    return pkt


def egress_port(flow, pkt):
    """Toward the packet's destination host: out of the port that host's own frames come
    in on (0 when unknown)."""
    if flow is not None:
        if pkt.dst == flow.addrs[0] and flow.sides[0].port is not None:
            return flow.sides[0].port
        if pkt.dst == flow.addrs[1] and flow.sides[1].port is not None:
            return flow.sides[1].port
    return 0


def reset_frames(flow):
    """mtcp_reset_conn: an RST to each end of the flow, as the other end would send it
    (its next sequence number, the ACK its receive side is at). Returns [(frame, port)]."""
    frames = []
    for sender in (0, 1):
        snd = flow.sides[sender]
        receiver = 1 - sender
        l2 = snd.l2_header or flow.sides[receiver].l2_header
        if l2 is None or snd.snd_nxt is None:
            continue
        if snd.l2_header is None:
            l2 = l2[6:12] + l2[0:6] + l2[12:]   # the receiver's header, addresses swapped
        ack = 0
        if snd.peer_base is not None:
            ack = (snd.peer_base + snd.rcv_nxt) & SEQ_MASK
        frame = build_tcp_frame(
            bytes(l2[0:6]), bytes(l2[6:12]), flow.addrs[sender], flow.addrs[receiver],
            flow.ports_tcp[sender], flow.ports_tcp[receiver], snd.snd_nxt, ack,
            TH_RST | TH_ACK, 0, vlan_ids=flow.vlan_ids)
        port = flow.sides[receiver].port
        frames.append((frame, port if port is not None else 0))
    return frames


def stream_offset(flow, pkt):
    """The offset in its receiver's stream of the packet's first payload byte (0 before the
    stream is known): PktInfo.offset of mtcp_getlastpkt."""
    sender = 0 if flow.addrs[0] == pkt.src and flow.ports_tcp[0] == pkt.sport else 1
    receiver = flow.sides[1 - sender]
    if receiver.peer_base is None:
        return 0
    nxt = (receiver.peer_base + receiver.rcv_nxt) & SEQ_MASK
    return max(0, receiver.rcv_nxt + seq_delta(pkt.seq, nxt))


def build_tcp_frame(eth_dst, eth_src, src, dst, sport, dport, seq, ack, flags, window,
                    payload=b"", *, vlan_ids=(), ttl=64, urgent=0, options=b""):
    """Build an Ethernet(+VLAN tags)/IPv4 or IPv6/TCP frame with valid checksums.

    The IP version follows the address length (4 or 16 bytes). IPv4 gets DF set and id 0;
    `ttl` is the IPv6 hop limit for IPv6. `vlan_ids` are outer first: the innermost tag is
    802.1Q (0x8100), the outer ones 802.1ad (0x88a8). `options` are padded with EOL to a
    multiple of 4 bytes. Raises ValueError for values that do not fit their fields.
    """
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise ValueError(f"addresses of {len(src)} and {len(dst)} bytes: both must be 4 "
                         "(IPv4) or both 16 (IPv6)")
    if len(eth_dst) != 6 or len(eth_src) != 6:
        raise ValueError("Ethernet addresses must be 6 bytes")
    options = bytes(options) + b"\0" * (-len(options) % 4)
    if len(options) > TCP_MAX_OPTIONS_LEN:
        raise ValueError(f"{len(options)} bytes of TCP options: at most 40 fit")
    for vlan_id in vlan_ids:
        if not 0 <= vlan_id <= 0xFFF:
            raise ValueError(f"VLAN id {vlan_id} is not in 0..4095")
    is_ipv4 = len(src) == 4
    tcp_hdr_len = TCP_HDR_LEN + len(options)
    tcp_len = tcp_hdr_len + len(payload)
    # The 16-bit length field holds the whole packet in IPv4, the payload in IPv6.
    if tcp_len + (IPV4_HDR_LEN if is_ipv4 else 0) > 0xFFFF:
        raise ValueError(f"TCP segment of {tcp_len} bytes does not fit an IP packet")
    l3_off = ETH_HDR_LEN + 4 * len(vlan_ids)
    l4_off = l3_off + (IPV4_HDR_LEN if is_ipv4 else IPV6_HDR_LEN)
    frame = bytearray(l4_off + tcp_len)

    _ETH_ADDRS.pack_into(frame, 0, eth_dst, eth_src)
    off = 12
    for depth, vlan_id in enumerate(vlan_ids):
        tpid = ETH_P_8021Q if depth == len(vlan_ids) - 1 else ETH_P_8021AD
        _VLAN_TAG.pack_into(frame, off, tpid, vlan_id)
        off += 4
    _U16.pack_into(frame, off, ETH_P_IP if is_ipv4 else ETH_P_IPV6)
    try:
        if is_ipv4:
            _IPV4_HEADER.pack_into(frame, l3_off, 0x45, 0, IPV4_HDR_LEN + tcp_len, 0, _IPV4_DF,
                                   ttl, IPPROTO_TCP, 0, src, dst)
        else:
            _IPV6_HEADER.pack_into(frame, l3_off, 6 << 28, tcp_len, IPPROTO_TCP, ttl, src, dst)
        _TCP_HEADER.pack_into(frame, l4_off, sport, dport, seq, ack, (tcp_hdr_len // 4) << 4,
                              flags, window, 0, urgent)
    except struct.error as exc:
        raise ValueError(f"cannot build TCP frame: {exc}") from None
    payload_off = l4_off + tcp_hdr_len
    frame[l4_off + TCP_HDR_LEN:payload_off] = options
    frame[payload_off:] = payload

    with memoryview(frame) as view:
        if is_ipv4:
            _U16.pack_into(frame, l3_off + IPV4_CHECKSUM_OFF,
                           ipv4_header_checksum(view[l3_off:l4_off]))
        _U16.pack_into(frame, l4_off + TCP_CHECKSUM_OFF,
                       tcp_segment_checksum(src, dst, view[l4_off:]))
    return frame
