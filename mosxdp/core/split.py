"""Which worker a frame goes to when a run is split over several (``--workers N``).

Both directions of a flow must reach the same worker, so the hash is symmetric: each
endpoint (address, port) is mixed on its own and the two mixes are XORed. The address is
the IPv4 address, or the XOR of an IPv6 address's four 32-bit words; the port is the TCP
port, or 0 for anything else (UDP, ICMP, IP fragments go by their address pair). VLAN tags
are not hashed: a 4-tuple seen on two VLANs goes to one worker, which keeps flowdump's
per-4-tuple file suffixes in the order one worker gives them. Frames without IP go to
worker 0, and so do frames the core finds malformed (the parent's fast path for untagged
IPv4 may give one by the addresses it seems to have instead: it is only counted, wherever).

The mix is a 64-bit multiplicative hash (Fibonacci hashing), simple enough for the XDP
program to compute the same value when live runs are split too:

    mix(addr, port) = (((addr << 16) | port) * 0x9E3779B97F4A7C15 mod 2**64) >> 32
    hash = mix(src, sport) ^ mix(dst, dport)

Live, the worker is taken from the hash's top bits (frame_worker: ``(hash * N) >> 32``).
Offline, the hash's top BUCKET_BITS bits pick a bucket and a table gives each bucket its
worker, as a NIC's RSS indirection table does. The parent knows the whole capture before
it splits it, so it counts each bucket's frames first and fills the table to balance them
(balance(): the largest bucket first, each to the worker with the fewest frames so far):
with the hash alone, a few heavy flows, or flows whose hashes cluster, leave one worker
with most of the work (57 % of the frames of bench.py's capture with 2 workers).
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


def frame_hash(frame):
    """The flow hash of a frame, read with the core's own parser; None for a frame without
    IP, or malformed (they go to worker 0)."""
    try:
        pkt = parse_frame(frame)
    except PacketError:
        return None
    if not pkt.ip_version:
        return None
    if pkt.ip_proto == 6 and not pkt.is_fragment:
        return flow_hash(pkt.src, pkt.sport, pkt.dst, pkt.dport)
    return flow_hash(pkt.src, 0, pkt.dst, 0)


def frame_worker(frame, workers: int) -> int:
    """The worker (0 .. workers - 1) of a frame by the hash's top bits, as the XDP program
    picks it live."""
    value = frame_hash(frame)
    return 0 if value is None else (value * workers) >> 32


# Buckets of the offline split's table: many more than the heavy flows of a capture, few
# enough that counting and balancing them costs nothing.
BUCKET_BITS = 12
BUCKET_SHIFT = 32 - BUCKET_BITS


def balance(counts, workers: int) -> list:
    """The bucket table (a worker per bucket) that spreads ``counts`` (frames per bucket)
    over the workers: the buckets from the largest down (the lower number first among
    equals), each to the worker with the fewest frames so far (the lower number among
    equals). Longest-processing-time first: no worker gets more than 4/3 of the best
    possible share, and with many small buckets the shares are equal to a bucket."""
    loads = [0] * workers
    table = [0] * len(counts)
    for bucket in sorted(range(len(counts)), key=lambda b: (-counts[b], b)):
        worker = loads.index(min(loads))
        table[bucket] = worker
        loads[worker] += counts[bucket]
    return table
