"""The C expression of a filter tree, for the XDP program (bpf/mosxdp.c), so that frames no
filter wants never leave the kernel.

It reads ``struct mx_flow_view { __u8 ip_version, ip_proto; __be16 sport, dport, ethertype;
__u32 src[4], dst[4]; } *v`` with addresses, ports and the ethertype in network byte order.  Constants are the in-memory
(byte-swapped on little-endian) values, computed for the byte order of the host that compiles
and runs the program.
"""
from __future__ import annotations

from .tree import IPPROTO_TCP, IPPROTO_UDP, Renderer


class CRenderer(Renderer):
    true, false, and_, or_, field_prefix = "1", "0", " && ", " || ", "v->"

    def __init__(self, byteorder, reverse=False):
        super().__init__(reverse)
        self.bo = byteorder

    def negate(self, expr):
        return f"(!({expr}))"  # '!' binds tighter than '==' in C

    def version_is(self, version):
        return f"({self.ip(version)})"

    def ethertype_is(self, ethertype):
        return f"v->ethertype == {int.from_bytes(ethertype.to_bytes(2, 'big'), self.bo):#06x}"

    def tcp_or_udp(self):
        return f"(v->ip_proto == {IPPROTO_TCP} || v->ip_proto == {IPPROTO_UDP})"

    def hosts(self, s, addrs):
        alts = [self.words(s, a, b"\xff" * len(a)) for a in addrs]
        return alts[0] if len(alts) == 1 else "(" + " || ".join(alts) + ")"

    def net(self, s, net, mask):
        return self.words(s, net, mask)

    def words(self, s, data, mask):
        """``data`` under ``mask`` compared as the 32-bit words of the view's array ``s``."""
        parts = []
        for w in range(len(data) // 4):
            m = int.from_bytes(mask[4 * w:4 * w + 4], self.bo)
            d = int.from_bytes(data[4 * w:4 * w + 4], self.bo)
            if m == 0:
                continue
            if m == 0xFFFFFFFF:
                parts.append(f"{s}[{w}] == {d:#010x}U")
            else:
                parts.append(f"({s}[{w}] & {m:#010x}U) == {d:#010x}U")
        if not parts:
            return "1"
        return parts[0] if len(parts) == 1 else "(" + " && ".join(parts) + ")"

    def ports(self, x, ranges):
        if self.bo == "little":
            host = f"((((__u32){x} & 0xffU) << 8) | ((__u32){x} >> 8))"
        else:
            host = f"((__u32){x})"
        parts = []
        for lo, hi in ranges:
            if lo == hi:
                parts.append(f"{x} == {int.from_bytes(lo.to_bytes(2, 'big'), self.bo):#06x}")
            elif lo == 0 and hi == 65535:
                return "1"
            elif lo == 0:
                parts.append(f"{host} <= {hi}U")
            elif hi == 65535:
                parts.append(f"{host} >= {lo}U")
            else:
                parts.append(f"({host} >= {lo}U && {host} <= {hi}U)")
        return parts[0] if len(parts) == 1 else "(" + " || ".join(parts) + ")"


def c_expression(tree, byteorder, reverse=False):
    """``tree`` as a parenthesised C expression; ``reverse``: on the frame with source and
    destination swapped (a flow's other direction)."""
    out = CRenderer(byteorder, reverse).render(tree)
    return out if out.startswith("(") else f"({out})"
