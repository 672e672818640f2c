"""The filter tree: the node shapes the grammar builds, constant folding, and the walk that
writes a tree as one expression in a target language (Python, C).

Nodes are tuples::

    ("true",) ("false",) ("and", (kids...)) ("or", (kids...)) ("not", kid)
    ("ver", 4|6)                               ip_version == v
    ("ether", type)                            a non-IP frame of that ethertype (after VLANs)
    ("proto", n, None|4|6)                     IP (any or that version) and ip_proto == n
    ("host", dir, ver, (addr bytes, ...))      dir in "src" "dst" "or" "and"
    ("net", dir, ver, net bytes, mask bytes)
    ("port", dir, ((lo, hi), ...), guard)      guard: also test ip_proto is TCP or UDP
"""
from __future__ import annotations

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
ETH_P_ARP = 0x0806

TRUE = ("true",)
FALSE = ("false",)
ICMP_ANY = ("or", (("proto", IPPROTO_ICMP, 4), ("proto", IPPROTO_ICMPV6, 6)))
#: What a stream filter implicitly requires.
STREAM_GUARD = ("proto", IPPROTO_TCP, None)


def simplify(node):
    kind = node[0]
    if kind == "not":
        kid = simplify(node[1])
        if kid is TRUE:
            return FALSE
        if kid is FALSE:
            return TRUE
        if kid[0] == "not":
            return kid[1]
        return ("not", kid)
    if kind not in ("and", "or"):
        return node
    absorb, neutral = (FALSE, TRUE) if kind == "and" else (TRUE, FALSE)
    kids = []
    for k in node[1]:
        k = simplify(k)
        if k is absorb:
            return absorb
        if k is neutral:
            continue
        if k[0] == kind:
            kids.extend(k[1])
        else:
            kids.append(k)
    if kind == "or":
        kids = merge_or(kids)
    if not kids:
        return neutral
    if len(kids) == 1:
        return kids[0]
    return (kind, tuple(kids))


def merge_or(kids):
    """``port 80 or port 443`` -> one set test; same for hosts.  Not for 'src and dst'."""
    out = []
    where = {}
    for k in kids:
        key = None
        if k[0] == "port" and k[1] != "and":
            key = ("port", k[1], k[3])
        elif k[0] == "host" and k[1] != "and":
            key = ("host", k[1], k[2])
        if key is None:
            out.append(k)
        elif key in where:
            j = where[key]
            old = out[j]
            if k[0] == "port":
                out[j] = ("port", old[1], tuple(sorted(set(old[2]) | set(k[2]))), old[3])
            else:
                out[j] = ("host", old[1], old[2], tuple(sorted(set(old[3]) | set(k[3]))))
        else:
            where[key] = len(out)
            out.append(k)
    return out



class Renderer:
    """Writes a tree as one expression of a target language.

    A subclass names the language's words (``true``, ``false``, ``and_``, ``or_``, the
    ``field_prefix`` of the packet's attributes) and writes the leaves (``negate``,
    ``version_is``, ``ethertype_is``, ``tcp_or_udp``, ``hosts``, ``net``, ``ports``). ``reverse``: the
    expression on the packet with source and destination swapped (addresses and ports).
    """

    true = false = and_ = or_ = field_prefix = None

    def __init__(self, reverse=False):
        self.reverse = reverse

    def render(self, node):
        kind = node[0]
        if kind == "true":
            return self.true
        if kind == "false":
            return self.false
        if kind in ("and", "or"):
            op = self.and_ if kind == "and" else self.or_
            return "(" + op.join(self.render(k) for k in node[1]) + ")"
        if kind == "not":
            return self.negate(self.render(node[1]))
        if kind == "ver":
            return self.version_is(node[1])
        if kind == "ether":
            return f"({self.ip(0)}{self.and_}{self.ethertype_is(node[1])})"
        if kind == "proto":
            return f"({self.ip(node[2])}{self.and_}{self.field_prefix}ip_proto == {node[1]})"
        if kind == "host":
            _, dirq, ver, addrs = node
            sides = self.sides(dirq, "src", "dst", lambda s: self.hosts(s, addrs))
            return f"({self.ip(ver)}{self.and_}{sides})"
        if kind == "net":
            _, dirq, ver, net, mask = node
            sides = self.sides(dirq, "src", "dst", lambda s: self.net(s, net, mask))
            return f"({self.ip(ver)}{self.and_}{sides})"
        if kind == "port":
            _, dirq, ranges, guard = node
            sides = self.sides(dirq, "sport", "dport", lambda x: self.ports(x, ranges))
            if guard:
                return f"({self.ip(None)}{self.and_}{self.tcp_or_udp()}{self.and_}{sides})"
            return sides
        raise AssertionError(node)

    def ip(self, version):
        """The packet is IP (``version`` None) or IP of that version (0: not IP)."""
        field = self.field_prefix + "ip_version"
        return f"{field} != 0" if version is None else f"{field} == {version}"

    def sides(self, dirq, src, dst, cond):
        """``cond`` on the source field, the destination field, or both joined by ``dirq``."""
        if self.reverse:
            src, dst = dst, src
        src, dst = self.field_prefix + src, self.field_prefix + dst
        if dirq == "src":
            return cond(src)
        if dirq == "dst":
            return cond(dst)
        op = self.or_ if dirq == "or" else self.and_
        return f"({cond(src)}{op}{cond(dst)})"
