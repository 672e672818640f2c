"""Which worker a frame goes to when a run is split over several (``--workers N``).

Both directions of a flow must reach the same worker, so the hash is symmetric: each
endpoint (address, port) is mixed on its own and the two mixes are XORed. The address is
the IPv4 address, or the XOR of an IPv6 address's four 32-bit words; the port is the TCP
port, or 0 for anything else (UDP, ICMP, IP fragments go by their address pair). VLAN tags
are not hashed: a 4-tuple seen on two VLANs goes to one worker, which keeps flowdump's
per-4-tuple file suffixes in the order one worker gives them. Frames without IP go to
worker 0, and so do frames the core finds malformed (the parent's fast path for untagged
IPv4 may give one by the addresses it seems to have instead: it is only counted, wherever).

The mix is a 64-bit multiplicative hash (Fibonacci hashing), and the worker is taken from
the hash's top bits (multiplied into 0 .. N-1), simple enough for the XDP program to
compute the same value when live runs are split too:

    mix(addr, port) = (((addr << 16) | port) * 0x9E3779B97F4A7C15 mod 2**64) >> 32
    worker = ((mix(src, sport) ^ mix(dst, dport)) * N) >> 32
"""
from .packet import PacketError, parse_frame

MULTIPLIER = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def fold_address(addr) -> int:
    """An IPv4 address (4 bytes) as its integer; an IPv6 one (16 bytes) as the XOR of its
    four 32-bit words."""
    value = int.from_bytes(addr, "big")
    if len(addr) == 16:
        value = (value ^ (value >> 32) ^ (value >> 64) ^ (value >> 96)) & 0xFFFFFFFF
    return value


def endpoint_mix(addr: int, port: int) -> int:
    return ((((addr << 16) | port) * MULTIPLIER) & _MASK64) >> 32


def flow_hash(src, sport, dst, dport) -> int:
    """The symmetric hash of a flow's endpoints (addresses as bytes)."""
    return endpoint_mix(fold_address(src), sport) ^ endpoint_mix(fold_address(dst), dport)


def frame_worker(frame, workers: int) -> int:
    """The worker (0 .. workers - 1) of a frame, read with the core's own parser."""
    try:
        pkt = parse_frame(frame)
    except PacketError:
        return 0
    if not pkt.ip_version:
        return 0
    if pkt.ip_proto == 6 and not pkt.is_fragment:
        return (flow_hash(pkt.src, pkt.sport, pkt.dst, pkt.dport) * workers) >> 32
    return (flow_hash(pkt.src, 0, pkt.dst, 0) * workers) >> 32
