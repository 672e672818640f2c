"""Link layers other than Ethernet, read as Ethernet: a capture of ``tcpdump -i any`` (Linux
cooked, SLL and SLL2), of a tunnel or of many public datasets (raw IP), of a BSD or macOS
loopback (NULL, LOOP) gives the monitor the frames a NIC would, so the core parses one link
layer whatever the input.

``LINK_LAYERS`` maps each link type read here to a ``LinkLayer``; ``PcapReader`` gives
every frame of such an interface to ``LinkLayer.ethernet``, which replaces the link header by
an Ethernet header: destination 00:00:00:00:00:00, source the sender's link address when
the header carries a 6-byte one (SLL, SLL2; else zeros), and the EtherType of the packet
inside. The 14 bytes are written in place, over the link header and the record header the
reader has already read, so nothing is copied per frame (a record without 14 bytes in front
of its packet, a pcapng simple packet block of raw IP, is copied). A frame too short for its
link header is given as it came: the core counts it malformed.
"""
from __future__ import annotations

import struct

__all__ = ["LINK_LAYERS", "LinkLayer"]

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
_ETH_HEADER = 14
_ZERO_MAC = bytes(6)
_BE16 = struct.Struct(">H")
_NULL_AF = struct.Struct("=I")

# The address families of IPv6 on the systems whose loopback captures carry them (Linux 10,
# NetBSD/OpenBSD 24, FreeBSD 28, macOS 30); IPv4 is 2 everywhere.
_AF_INET6 = frozenset((10, 24, 28, 30))


def _ip_version_type(view, at: int) -> int:
    """The EtherType of the IP packet at ``at`` by its version nibble (0: not IP)."""
    version = view[at] >> 4
    return ETH_P_IP if version == 4 else ETH_P_IPV6 if version == 6 else 0


def _family_type(family: int) -> int:
    return ETH_P_IP if family == 2 else ETH_P_IPV6 if family in _AF_INET6 else 0


class LinkLayer:
    """One link type: its name, the length of its header, and how a frame of it becomes an
    Ethernet frame (``ethernet``)."""

    __slots__ = ("linktype", "name", "header")

    def __init__(self, linktype: int, name: str, header: int):
        self.linktype = linktype
        self.name = name
        self.header = header

    def ethertype_and_source(self, view, start: int) -> tuple[int, bytes]:
        raise NotImplementedError

    def ethernet(self, view, floor: int, start: int, end: int):
        """``(frame, grown)``: the record of ``view[start:end]`` (whose bytes from ``floor``
        on may be overwritten) as an Ethernet frame, and how many bytes longer than the
        record it is (negative: shorter)."""
        header = self.header
        if end - start < header or (header == 0 and end == start):
            return view[start:end], 0
        ethertype, source = self.ethertype_and_source(view, start)
        at = start + header - _ETH_HEADER
        ether = _ZERO_MAC + source + _BE16.pack(ethertype)
        if at >= floor:
            view[at:at + _ETH_HEADER] = ether
            return view[at:end], _ETH_HEADER - header
        frame = bytearray(ether)
        frame += view[start + header:end]
        return memoryview(frame), _ETH_HEADER - header


class _Cooked(LinkLayer):
    """Linux cooked capture v1 (SLL, 16 bytes): packet type, ARPHRD type, address length,
    8 address bytes, protocol. libpcap puts a stripped VLAN tag back after it (protocol
    0x8100), which the core reads as on Ethernet."""

    def ethertype_and_source(self, view, start):
        (halen,) = _BE16.unpack_from(view, start + 4)
        source = bytes(view[start + 6:start + 12]) if halen == 6 else _ZERO_MAC
        return _BE16.unpack_from(view, start + 14)[0], source


class _Cooked2(LinkLayer):
    """Linux cooked capture v2 (SLL2, 20 bytes): protocol, reserved, interface index,
    ARPHRD type, packet type, address length, 8 address bytes."""

    def ethertype_and_source(self, view, start):
        source = bytes(view[start + 12:start + 18]) if view[start + 11] == 6 else _ZERO_MAC
        return _BE16.unpack_from(view, start)[0], source


class _Raw(LinkLayer):
    """Raw IP: the packet's first nibble says IPv4 or IPv6."""

    def ethertype_and_source(self, view, start):
        return _ip_version_type(view, start), _ZERO_MAC


class _Fixed(LinkLayer):
    """Only IPv4 (LINKTYPE_IPV4) or only IPv6 (LINKTYPE_IPV6)."""

    __slots__ = ("ethertype",)

    def __init__(self, linktype, name, ethertype):
        super().__init__(linktype, name, 0)
        self.ethertype = ethertype

    def ethertype_and_source(self, view, start):
        return self.ethertype, _ZERO_MAC


class _Null(LinkLayer):
    """BSD loopback (NULL): a 4-byte address family in the byte order of the host that
    captured, which libpcap too tells apart by its value."""

    def ethertype_and_source(self, view, start):
        (family,) = _NULL_AF.unpack_from(view, start)
        if family > 0xFFFF:
            family = int.from_bytes(family.to_bytes(4, "little"), "big")
        return _family_type(family), _ZERO_MAC


class _Loop(LinkLayer):
    """OpenBSD loopback (LOOP): the address family in network byte order."""

    def ethertype_and_source(self, view, start):
        return _family_type(int.from_bytes(view[start:start + 4], "big")), _ZERO_MAC


LINK_LAYERS = {layer.linktype: layer for layer in (
    _Null(0, "NULL", 4),
    _Raw(12, "RAW", 0),
    _Raw(14, "RAW", 0),
    _Raw(101, "RAW", 0),
    _Loop(108, "LOOP", 4),
    _Cooked(113, "LINUX_SLL", 16),
    _Fixed(228, "IPV4", ETH_P_IP),
    _Fixed(229, "IPV6", ETH_P_IPV6),
    _Cooked2(276, "LINUX_SLL2", 20),
)}
