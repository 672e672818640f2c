"""Internet checksums of the frames core/packet.py parses: the ones' complement sum
(RFC 1071), the IPv4 header and TCP segment checksums (IPv4 and IPv6 pseudo-headers, the
final destination of a routing header), and the incremental update (RFC 1624).

Checksums use the identity 2**16 == 1 (mod 0xFFFF): the ones' complement sum of big-endian
16-bit words is the value of the bytes as one big-endian integer, modulo 0xFFFF.
`int.from_bytes` and `%` run in C, several times faster than summing unpacked words.
"""
from __future__ import annotations

import struct

from .packet import (IPPROTO_AH, IPPROTO_FRAGMENT, IPPROTO_ROUTING, IPPROTO_TCP,
                     IPV4_CHECKSUM_OFF, IPV6_HDR_LEN, TCP_CHECKSUM_OFF)

_U16 = struct.Struct("!H")


def _word_sum(data):
    """The ones' complement sum of data's big-endian 16-bit words, modulo 0xFFFF (0..0xFFFE).

    An odd last byte is the high byte of a word padded with zero. Long data is cut in two
    at an even offset, where hi * 2**(8*k) + lo == hi + lo (mod 0xFFFF): reducing the sum
    of two half-size ints is faster than reducing one int of the full size.
    """
    size = len(data)
    if size <= 512:
        value = int.from_bytes(data, "big")
        return (value << 8 if size & 1 else value) % 0xFFFF
    half = size >> 2 << 1
    tail = int.from_bytes(data[half:], "big")
    return (int.from_bytes(data[:half], "big") + (tail << 8 if size & 1 else tail)) % 0xFFFF


def _checksum_of(word_sum):
    """The checksum field for a word sum that excludes the field (data known to be nonzero)."""
    folded = word_sum % 0xFFFF
    # folded == 0 stands for an end-around-carry sum of 0xFFFF (nonzero data), checksum 0.
    return 0xFFFF - folded if folded else 0


def ones_complement_sum(data, initial=0):
    """The 16-bit ones' complement sum of data (RFC 1071), folded and not inverted.

    Words are big-endian; an odd last byte is padded with a zero byte. `initial` is a
    previous sum to continue from (each earlier piece must have had an even length).
    All-zero data sums to 0; any other data to a value in 1..0xFFFF.
    """
    folded = (_word_sum(data) + initial) % 0xFFFF
    if folded or not (initial or any(data)):
        return folded
    return 0xFFFF  # a nonzero sum that is a multiple of 0xFFFF folds to 0xFFFF, not 0


def ipv4_header_checksum(header):
    """The checksum field an IPv4 header should carry (its current field is ignored)."""
    stored = _U16.unpack_from(header, IPV4_CHECKSUM_OFF)[0]
    return _checksum_of(_word_sum(header) - stored)


def _ipv4_header(pkt):
    if pkt.ip_version != 4:
        raise ValueError(f"not an IPv4 packet: {pkt!r}")
    return memoryview(pkt.buf)[pkt.l3_off:pkt.l4_off]


def verify_ipv4_checksum(pkt):
    """True when the IPv4 header checksum is right (the header sums to ones' complement zero)."""
    return _word_sum(_ipv4_header(pkt)) == 0


def fix_ipv4_checksum(pkt):
    """Write the right IPv4 header checksum into pkt.buf (which must be writable)."""
    checksum = ipv4_header_checksum(_ipv4_header(pkt))
    _U16.pack_into(pkt.buf, pkt.l3_off + IPV4_CHECKSUM_OFF, checksum)
    return checksum


def _tcp_word_sum(src, dst, segment):
    """Word sum of a TCP segment with its IPv4 or IPv6 pseudo-header.

    Both pseudo-headers sum to src + dst + protocol + segment length: the IPv6 32-bit length
    and the zero padding fold to the same words.
    """
    return (_word_sum(segment) + int.from_bytes(src, "big") + int.from_bytes(dst, "big")
            + IPPROTO_TCP + len(segment))


def tcp_segment_checksum(src, dst, segment):
    """The checksum of a TCP segment (its checksum field zero) between two addresses."""
    return _checksum_of(_tcp_word_sum(src, dst, segment))


def _pseudo_header_dst(pkt):
    """The destination of the pseudo-header: for IPv6, the final destination (RFC 8200 8.1).

    A Routing header with segments left names the final destination: the last address of
    type 0 and type 2 (Mobile IPv6) headers, segment list[0] of a Segment Routing header.
    (A Home Address destination option, which would replace the source, is not handled.)
    """
    if pkt.ip_version == 4 or pkt.l4_off == pkt.l3_off + IPV6_HDR_LEN:
        return pkt.dst
    buf = pkt.buf
    next_header = buf[pkt.l3_off + 6]
    off = pkt.l3_off + IPV6_HDR_LEN
    while off < pkt.l4_off:
        length = buf[off + 1]
        if next_header == IPPROTO_ROUTING and buf[off + 3] and length >= 2:
            routing_type = buf[off + 2]
            if routing_type in (0, 2):
                return bytes(buf[off + 8 * length - 8:off + 8 * length + 8])
            if routing_type == 4:
                return bytes(buf[off + 8:off + 24])
        if next_header == IPPROTO_AH:
            header_len = (length + 2) * 4
        elif next_header == IPPROTO_FRAGMENT:
            header_len = 8
        else:
            header_len = (length + 1) * 8
        next_header = buf[off]
        off += header_len
    return pkt.dst


def _tcp_segment(pkt):
    if pkt.ip_proto != IPPROTO_TCP or pkt.is_fragment or not pkt.tcp_hdr_len:
        raise ValueError(f"not an unfragmented TCP packet: {pkt!r}")
    # The segment ends where the IP packet ends, not where the frame does (Ethernet padding).
    return memoryview(pkt.buf)[pkt.l4_off:pkt.l3_off + pkt.ip_len]


def tcp_checksum(pkt):
    """The checksum field pkt's TCP segment should carry (its current field is ignored)."""
    segment = _tcp_segment(pkt)
    stored = _U16.unpack_from(segment, TCP_CHECKSUM_OFF)[0]
    return _checksum_of(_tcp_word_sum(pkt.src, _pseudo_header_dst(pkt), segment) - stored)


def verify_tcp_checksum(pkt):
    """True when the TCP checksum is right (sum with pseudo-header is ones' complement zero)."""
    return _tcp_word_sum(pkt.src, _pseudo_header_dst(pkt), _tcp_segment(pkt)) % 0xFFFF == 0


def fix_tcp_checksum(pkt):
    """Write the right TCP checksum into pkt.buf (which must be writable)."""
    checksum = tcp_checksum(pkt)
    _U16.pack_into(pkt.buf, pkt.l4_off + TCP_CHECKSUM_OFF, checksum)
    return checksum


def checksum_update(csum, old, new, offset=0):
    """RFC 1624 incremental update: the checksum after `old` bytes were replaced by `new`.

    `csum` is the valid checksum before the change; `old` and `new` must have equal lengths.
    `offset` is where the bytes start; only its parity matters: even means `old[0]` is the
    high byte of a 16-bit word of the checksummed data. Offsets in the frame have the same
    parity as offsets in the IP header or the TCP segment, because every IP and TCP header
    starts at an even frame offset, so a frame offset can be passed as is.
    """
    if len(old) != len(new):
        raise ValueError(f"replacement of {len(old)} bytes by {len(new)} bytes: "
                         "lengths must be equal")
    delta = int.from_bytes(new, "big") - int.from_bytes(old, "big")
    if (offset + len(old)) & 1:
        delta <<= 8  # the last byte is a high byte: move every byte up to its word position
    # HC' = ~(~HC + ~m + m') (RFC 1624 eqn 3), with ~m + m' computed as m' - m mod 0xFFFF.
    return _checksum_of(0xFFFF - csum + delta)
