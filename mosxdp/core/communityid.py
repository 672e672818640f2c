"""Community ID v1 (https://github.com/corelight/community-id-spec): one string per flow,
the same for both directions and on every sensor and tool that computes it (Zeek,
Suricata, Arkime, Elastic ...), so records of one flow join across them.

``"1:" + base64(sha1(seed, lower endpoint address, higher endpoint address, protocol, 0,
lower endpoint port, higher endpoint port))``: the endpoints are put in order (the smaller
address first, the smaller port when the addresses are equal), so both directions hash
alike. Seed and ports are 16-bit big-endian, addresses 4 or 16 bytes, protocol one byte
and one zero byte of padding. ICMP and ICMPv6 have no ports: the message type stands for
the source port and, for a type that has a counterpart (an echo request and its reply,
a solicitation and its advertisement), the counterpart's type for the destination port,
so that request and answer make one flow; any other type is a one-way flow whose code
stands for the destination port and whose endpoints are not reordered. Protocols other
than TCP, UDP, SCTP, ICMP and ICMPv6 hash without ports.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import socket
import struct

__all__ = ["community_id", "PROTO_ICMP", "PROTO_TCP", "PROTO_UDP", "PROTO_ICMPV6", "PROTO_SCTP"]

PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6, PROTO_SCTP = 1, 6, 17, 58, 132
_PORTED = frozenset((PROTO_TCP, PROTO_UDP, PROTO_SCTP))

# The message types whose answer is another type, both ways (the spec's table, as Zeek
# pairs them): echo, timestamp, information, router and address mask for ICMP.
_ICMP_PAIRS = {8: 0, 13: 14, 15: 16, 10: 9, 17: 18}
# ICMPv6: echo, multicast listener query/report, router and neighbor solicitation /
# advertisement, node information (who-are-you), home agent address discovery.
_ICMPV6_PAIRS = {128: 129, 130: 131, 133: 134, 135: 136, 139: 140, 144: 145}
_COUNTERPART = {
    PROTO_ICMP: {**_ICMP_PAIRS, **{v: k for k, v in _ICMP_PAIRS.items()}},
    PROTO_ICMPV6: {**_ICMPV6_PAIRS, **{v: k for k, v in _ICMPV6_PAIRS.items()}},
}
_SEED = struct.Struct("!H")
_PROTO_PORTS = struct.Struct("!BxHH")
_PROTO = struct.Struct("!Bx")


def _packed(addr) -> bytes:
    """An address as its 4 or 16 network-order bytes: from text, bytes or an ipaddress."""
    if isinstance(addr, (bytes, bytearray, memoryview)):
        addr = bytes(addr)
        if len(addr) not in (4, 16):
            raise ValueError(f"a packed address has 4 or 16 bytes, not {len(addr)}")
        return addr
    if isinstance(addr, str):
        # inet_pton: the same bytes as ipaddress for every address both read, at a tenth of
        # the cost (once per flow that ends); ipaddress for the rest (a scope id) and errors.
        try:
            return socket.inet_pton(socket.AF_INET6 if ":" in addr else socket.AF_INET, addr)
        except OSError:
            addr = ipaddress.ip_address(addr)
    return addr.packed


def community_id(proto: int, saddr, daddr, sport: int | None = None, dport: int | None = None,
                 seed: int = 0) -> str:
    """The Community ID v1 of a flow seen from ``saddr``/``sport`` to ``daddr``/``dport``
    (either direction gives the same). For ICMP and ICMPv6, ``sport`` is the message type
    and ``dport`` its code. ``seed``: 0 to 65535, the same on every sensor whose records
    are to join. Raises ValueError for addresses of two families or a bad seed."""
    if not 0 <= seed <= 0xFFFF:
        raise ValueError(f"community id seed {seed!r} is not between 0 and 65535")
    src, dst = _packed(saddr), _packed(daddr)
    if len(src) != len(dst):
        raise ValueError("community id: an IPv4 and an IPv6 address in one flow")
    one_way = False
    if proto in _COUNTERPART:
        counterpart = _COUNTERPART[proto].get(sport)
        if counterpart is None:
            one_way = True          # (type, code): no answer type, no reordering
        else:
            dport = counterpart
    elif proto not in _PORTED:
        sport = dport = None
    if not one_way and (src > dst or (src == dst and sport is not None and dport is not None
                                      and sport > dport)):
        src, dst, sport, dport = dst, src, dport, sport
    if sport is None or dport is None:
        tail = _PROTO.pack(proto)
    else:
        tail = _PROTO_PORTS.pack(proto, sport, dport)
    digest = hashlib.sha1(_SEED.pack(seed) + src + dst + tail).digest()
    return "1:" + base64.b64encode(digest).decode("ascii")
