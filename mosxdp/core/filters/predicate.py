"""The Python predicate of a filter tree: source with every constant inlined, compiled once
into one function of a parsed packet (core/packet.py's attributes)."""
from __future__ import annotations

from .tree import IPPROTO_TCP, IPPROTO_UDP, Renderer


class PythonRenderer(Renderer):
    true, false, and_, or_, field_prefix = "True", "False", " and ", " or ", "p."

    def negate(self, expr):
        return f"(not {expr})"

    def version_is(self, version):
        return self.ip(version)

    def ethertype_is(self, ethertype):
        return f"p.buf[p.l3_off - 2:p.l3_off] == {ethertype.to_bytes(2, 'big')!r}"

    def tcp_or_udp(self):
        return f"p.ip_proto in ({IPPROTO_TCP}, {IPPROTO_UDP})"

    def hosts(self, s, addrs):
        if len(addrs) == 1:
            return f"{s} == {addrs[0]!r}"
        return f"{s} in {{{', '.join(repr(a) for a in addrs)}}}"

    def net(self, s, net, mask):
        """Byte runs of the mask as slices, partial bytes masked."""
        parts = []
        i, n = 0, len(mask)
        while i < n:
            m = mask[i]
            if m == 0xFF:
                j = i
                while j < n and mask[j] == 0xFF:
                    j += 1
                if j - i == 1:
                    parts.append(f"{s}[{i}] == {net[i]}")
                elif i == 0:
                    parts.append(f"{s}[:{j}] == {net[:j]!r}")
                else:
                    parts.append(f"{s}[{i}:{j}] == {net[i:j]!r}")
                i = j
            else:
                if m:
                    parts.append(f"({s}[{i}] & {m:#04x}) == {net[i]:#04x}")
                i += 1
        if not parts:
            return "True"
        return parts[0] if len(parts) == 1 else "(" + " and ".join(parts) + ")"

    def ports(self, x, ranges):
        """Single ports as one set test, ranges as chained comparisons."""
        singles = sorted(lo for lo, hi in ranges if lo == hi)
        parts = []
        if len(singles) == 1:
            parts.append(f"{x} == {singles[0]}")
        elif singles:
            parts.append(f"{x} in {{{', '.join(map(str, singles))}}}")
        for lo, hi in ranges:
            if lo == hi:
                continue
            if lo == 0 and hi == 65535:
                return "True"
            parts.append(f"{lo} <= {x} <= {hi}")
        return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"



def compile_predicate(tree, text):
    """``(source, function)``: the generated Python of ``tree`` and the compiled predicate
    ``fn(packet) -> bool`` (``text``, the filter as given, names it in tracebacks)."""
    source = f"def _mx_filter(p):\n    return {PythonRenderer().render(tree)}\n"
    code = compile(source, f"<mosxdp filter {text!r}>", "exec")
    namespace = {"__builtins__": {}}
    exec(code, namespace)  # our generated code only: constants come from the parser
    return source, namespace["_mx_filter"]
