"""ctypes mirrors of bpf/mosxdp.h: the structs and constants shared with the XDP program.

Kept by hand so that user space can use them without compiling anything;
tests/bpf/test_structs.py checks every size and field offset against the types bcc
derives from the compiled program, and every constant and counter name against the
header text. Change bpf/mosxdp.h and this file together.

Byte order is in the types, as in the header: network-order fields are declared with
big-endian ctypes types (reading ``key.lo_port`` gives the port number); addresses are
raw network-order bytes (``c_ubyte * 16``, ``__be32[4]`` in C; IPv4 in the first 4).
"""
from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass

__all__ = [
    "MX_MAX_QUEUES", "MX_MAX_SLOTS", "MX_XSKMAP_SIZE", "MX_MAX_IFACES", "MX_VERDICT_ENTRIES",
    "MX_MAX_VLAN_DEPTH", "MX_MAX_IPV6_EXT",
    "MX_IF_INLINE", "MX_IF_FAIL_CLOSED", "MX_IF_BYPASS_CONSUME", "MX_IF_FILTER_ALL_IP",
    "MX_IF_OBSERVE", "MxObserved",
    "MX_ACTION_BYPASS", "MX_ACTION_DROP", "MX_ACTION_STATE_ONLY", "ACTION_NAMES", "ACTIONS",
    "MX_WATCH_ARMED", "MX_WATCH_ANY", "MX_DIR_FROM_LO", "MX_DIR_FROM_HI", "MX_NUM_DIRS",
    "COUNTER_NAMES", "COUNTER_INDEX", "ACTION_COUNTERS",
    "MX_OBSERVE_MAX_RINGS", "MX_REDIRECT_MAP_XSK", "MX_REDIRECT_MAP_DEVMAP", "MX_REDIRECT_MAPS",
    "MxIfConfig", "MxFlowView", "MxFlowKey", "MxVerdict", "FlowVerdict", "make_flow_key",
]

_be16 = ct.c_uint16.__ctype_be__
_addr16 = ct.c_ubyte * 16

# ---- sizes (mosxdp.h) ---------------------------------------------------------------
MX_MAX_QUEUES = 64   # RX queues per interface in the XSKMAP
MX_MAX_SLOTS = 16    # interfaces per program
MX_XSKMAP_SIZE = MX_MAX_SLOTS * MX_MAX_QUEUES
MX_MAX_IFACES = MX_MAX_SLOTS
MX_VERDICT_ENTRIES = 65536
MX_OBSERVE_MAX_RINGS = 8   # observe-only rings, one per worker of a split run
# parser limits: VLAN tags, IPv6 extension headers
MX_MAX_VLAN_DEPTH, MX_MAX_IPV6_EXT = 4, 8

# ---- mx_if_config.flags -------------------------------------------------------------
MX_IF_INLINE = 1 << 0
MX_IF_FAIL_CLOSED = 1 << 1
MX_IF_BYPASS_CONSUME = 1 << 2
MX_IF_FILTER_ALL_IP = 1 << 3
MX_IF_OBSERVE = 1 << 4

# ---- verdicts (mx_verdict.action) and the directions of its counters ------------------
MX_ACTION_BYPASS, MX_ACTION_DROP, MX_ACTION_STATE_ONLY = 1, 2, 3
ACTION_NAMES = {MX_ACTION_BYPASS: "bypass", MX_ACTION_DROP: "drop",
                MX_ACTION_STATE_ONLY: "state_only"}
ACTIONS = {name: action for action, name in ACTION_NAMES.items()}   # the core's names
MX_WATCH_ARMED, MX_WATCH_ANY = 1, 2     # mx_verdict.watch_armed
MX_DIR_FROM_LO, MX_DIR_FROM_HI = 0, 1
MX_NUM_DIRS = 2

# ---- counters (enum mx_counter, in order) ---------------------------------------------
COUNTER_NAMES: tuple[str, ...] = (
    "rx_total",
    "to_xsk",
    "kernel_forward",
    "pass",
    "drop",
    "no_config",
    "not_ip",
    "not_tcp",
    "ip_fragment",
    "unparsed",
    "filter_miss",
    "verdict_bypass",
    "verdict_drop",
    "verdict_state_only",
    "verdict_ctrl",
    "no_xsk_fallback",
    "fail_closed_drop",
    "devmap_miss",
    "xsk_redirect_err",
    "xsk_redirect_other",
    "forward_redirect_err",
    "observed",
    "observe_lost",
    "frames_off_worker",
)
COUNTER_INDEX = {name: i for i, name in enumerate(COUNTER_NAMES)}
# Exactly one of these per frame: rx_total == sum of them.
ACTION_COUNTERS = ("to_xsk", "kernel_forward", "pass", "drop")

# ---- redirect_maps indexes: the program's own map ids, for mosxdp_redirect_err --------
MX_REDIRECT_MAP_XSK, MX_REDIRECT_MAP_DEVMAP, MX_REDIRECT_MAPS = 0, 1, 2


class MxIfConfig(ct.Structure):
    """struct mx_if_config: value of if_config (key: ingress ifindex, host-order u32)."""
    _fields_ = [(n, ct.c_uint32) for n in ("slot", "egress_slot", "egress_ifindex", "flags")]


class MxObserved(ct.Structure):
    """struct mx_observed: header of a record in the observed ringbuf (frame bytes follow)."""
    _fields_ = [("ts_ns", ct.c_uint64), ("slot", ct.c_uint32), ("frame_len", ct.c_uint32),
                ("cap_len", ct.c_uint32), ("pad", ct.c_uint32)]


class MxFlowView(ct.Structure):
    """struct mx_flow_view: what a generated filter expression sees (not canonical)."""
    _fields_ = [
        ("ip_version", ct.c_uint8),
        ("ip_proto", ct.c_uint8),
        ("sport", _be16),
        ("dport", _be16),
        ("ethertype", _be16),
        ("src", _addr16),
        ("dst", _addr16),
    ]


class MxFlowKey(ct.Structure):
    """struct mx_flow_key: key of the verdicts LRU hash, one entry for both directions."""
    _fields_ = [
        ("lo_addr", _addr16),
        ("hi_addr", _addr16),
        ("lo_port", _be16),
        ("hi_port", _be16),
        ("vlan_outer", ct.c_uint16),
        ("vlan_inner", ct.c_uint16),
        ("ip_version", ct.c_uint8),
        ("ip_proto", ct.c_uint8),
        ("pad", ct.c_uint8 * 2),
    ]

    def addresses(self) -> tuple[bytes, bytes]:
        """(lo, hi) addresses: 4 bytes for IPv4, 16 for IPv6."""
        n = 4 if self.ip_version == 4 else 16
        return bytes(self.lo_addr)[:n], bytes(self.hi_addr)[:n]

    def as_tuple(self) -> tuple:
        """Hashable value form: (ip_version, lo_addr, lo_port, hi_addr, hi_port, vlan_outer, vlan_inner)."""
        lo, hi = self.addresses()
        return (self.ip_version, lo, self.lo_port, hi, self.hi_port, self.vlan_outer, self.vlan_inner)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return "MxFlowKey%r" % (self.as_tuple(),)


class MxVerdict(ct.Structure):
    """struct mx_verdict: value of the verdicts LRU hash."""
    _fields_ = [
        ("action", ct.c_uint32),
        ("pad", ct.c_uint32),
        ("last_seen_ns", ct.c_uint64),
        ("packets", ct.c_uint64 * MX_NUM_DIRS),
        ("bytes", ct.c_uint64 * MX_NUM_DIRS),
        ("frame_bytes", ct.c_uint64 * MX_NUM_DIRS),
        ("ip_bytes", ct.c_uint64 * MX_NUM_DIRS),
        ("ack_watch", ct.c_uint32 * MX_NUM_DIRS),
        ("watch_armed", ct.c_uint32 * MX_NUM_DIRS),
        ("first_data_ns", ct.c_uint64 * MX_NUM_DIRS),
        ("first_ack_ns", ct.c_uint64 * MX_NUM_DIRS),
        ("seq_end", ct.c_uint32 * MX_NUM_DIRS),
    ]


@dataclass(frozen=True)
class FlowVerdict:
    """A snapshot of one verdict entry; tuples are indexed by MX_DIR_FROM_LO / MX_DIR_FROM_HI."""
    action: int
    last_seen_ns: int
    packets: tuple[int, int]
    bytes: tuple[int, int]
    frame_bytes: tuple[int, int]
    ip_bytes: tuple[int, int] = (0, 0)
    ack_watch: tuple[int, int] = (0, 0)
    watch_armed: tuple[int, int] = (0, 0)
    first_data_ns: tuple[int, int] = (0, 0)
    first_ack_ns: tuple[int, int] = (0, 0)
    seq_end: tuple[int, int] = (0, 0)

    @classmethod
    def from_struct(cls, v: MxVerdict) -> "FlowVerdict":
        return cls(v.action, v.last_seen_ns, tuple(v.packets), tuple(v.bytes), tuple(v.frame_bytes),
                   tuple(v.ip_bytes), tuple(v.ack_watch), tuple(v.watch_armed),
                   tuple(v.first_data_ns), tuple(v.first_ack_ns), tuple(v.seq_end))

    @property
    def action_name(self) -> str:
        return ACTION_NAMES.get(self.action, str(self.action))


def _addr_bytes(addr: bytes) -> bytes:
    addr = bytes(addr)
    if len(addr) == 4:
        return addr + bytes(12)
    if len(addr) == 16:
        return addr
    raise ValueError("address must be 4 (IPv4) or 16 (IPv6) bytes, got %d" % len(addr))


def make_flow_key(src: bytes, sport: int, dst: bytes, dport: int, *,
                  vlan_ids: tuple[int, ...] = (), ip_proto: int = 6) -> tuple[MxFlowKey, int]:
    """The canonical verdict-map key of a frame from (src, sport) to (dst, dport).

    Addresses are network-order bytes (4 or 16), ports host-order ints, ``vlan_ids`` the
    frame's VLAN ids outermost first (only the first two are part of the key). Returns
    ``(key, direction)`` where direction is MX_DIR_FROM_LO or MX_DIR_FROM_HI for this
    frame's source: the same rule as mx_flow_key_of() in bpf/mosxdp.c.
    """
    if len(src) != len(dst):
        raise ValueError("src and dst must be of the same IP version")
    s, d = _addr_bytes(src), _addr_bytes(dst)
    a = s + int(sport).to_bytes(2, "big")
    b = d + int(dport).to_bytes(2, "big")
    key = MxFlowKey()
    if a > b:
        direction = MX_DIR_FROM_HI
        key.lo_addr[:], key.hi_addr[:] = d, s
        key.lo_port, key.hi_port = dport, sport
    else:
        direction = MX_DIR_FROM_LO
        key.lo_addr[:], key.hi_addr[:] = s, d
        key.lo_port, key.hi_port = sport, dport
    vl = tuple(vlan_ids) + (0, 0)
    key.vlan_outer = vl[0] & 0x0FFF
    key.vlan_inner = vl[1] & 0x0FFF
    key.ip_version = 4 if len(src) == 4 else 6
    key.ip_proto = ip_proto
    return key, direction
