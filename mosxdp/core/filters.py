"""Monitor filters: the mOS filter grammar compiled to a Python predicate and a C expression.

``mtcp_bind_monitor_filter`` takes pcap-like filter strings.  This module parses one into a
small AST, folds constants, and compiles it twice:

* into **one Python function** (source generated from the AST with every constant inlined,
  compiled once) that tests a parsed packet: ``MonitorFilter.match(pkt) -> bool``;
* into **one C expression** over ``struct mx_flow_view *v`` for the XDP program, so that frames
  no filter wants never leave the kernel: ``MonitorFilter.c_expr()``.

Sans-IO: stdlib only.  ``ipaddress`` is used at compile time, never per packet.

Grammar (a subset of pcap-filter(7), written from its documentation)::

    filter    := <empty> | expr
    expr      := unary (('and' | '&&' | '&' | 'or' | '||' | '|') unary)*
    unary     := ('not' | '!') unary | '(' expr ')' | primitive
    primitive := PROTO                                   tcp; raw only: ip ip6 udp icmp icmp6
               | ('ip' | 'ip6')? 'proto' PROTONUM        raw only; 0-255 or tcp/udp/icmp/icmp6
               | PROTO? DIR? TYPE? VALUE ['mask' MASK]   e.g. "tcp src port 80", "src 10.0.0.1"
    DIR       := 'src' | 'dst' | 'src or dst' | 'dst or src' | 'src and dst' | 'dst and src'
    TYPE      := 'host' | 'net' | 'port' | 'portrange'

Decisions (each as pcap does it unless noted):

* Precedence: ``not`` binds tightest; ``and`` and ``or`` have **equal precedence and associate
  left to right**, so ``a or b and c`` is ``(a or b) and c``.  Use parentheses.
* No direction means ``src or dst``.  No type: an address is ``host``, ``ADDR/LEN`` is ``net``.
* A bare value after ``and``/``or``/``not`` repeats the previous primitive's qualifiers:
  ``port 80 or 443`` is ``port 80 or port 443``, ``tcp dst port 22 or 23`` keeps ``tcp dst``.
* ``net ADDR`` without a length is a /32 (/128) network.  Host bits set in ``net`` are an error
  (``net 10.1.2.3/8``), as are abbreviated networks (``net 10``).  ``mask`` may be
  non-contiguous and works for IPv6 too (an extension).
* ``port``/``portrange`` match TCP and UDP (pcap also matches SCTP), decimal numbers only, no
  service names.  ``ip``/``ip6`` mean IPv4/IPv6; ``icmp`` means ICMPv4 or ICMPv6 (pcap: v4
  only) and ``icmp6`` ICMPv6; ``proto N`` alone means either IP version (an extension).
* A protocol keyword right before a primitive restricts it: ``tcp port 80`` is
  ``tcp and port 80``; ``ip host ::1`` (version clash) and ``icmp port 1`` are errors.
* Keywords are case-insensitive.  ``&``/``|`` are plain and/or (there is no arithmetic).
* A stream filter (``raw=False``) implicitly means ``tcp and (FILTER)`` and refuses the raw-only
  keywords.  ``None``, ``""`` or only blanks put no constraint: everything (every TCP packet
  for a stream filter) matches.

Packet attributes read by ``match`` (docs/internal/contracts.md, core/packet.py):
``ip_version`` (4, 6, 0 = not IP), ``ip_proto``, ``src``/``dst`` (4 or 16 bytes), ``sport``/
``dport`` (host order).  ``ip_version`` is tested before anything else; ``ip_proto`` only when
``ip_version`` is 4 or 6; ports only when ``ip_proto`` is TCP or UDP.
"""
from __future__ import annotations

import errno as _errno
import ipaddress
import re
import sys
from functools import lru_cache

__all__ = ["FilterError", "MonitorFilter", "compile_filter", "MAX_DEPTH"]

#: Deepest nesting accepted (parentheses, ``not``, alternations of and/or).  Keeps the parser,
#: the generated Python and the generated C well inside every recursion/nesting limit.
MAX_DEPTH = 48

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58

_PROTO_WORDS = frozenset({"tcp", "udp", "ip", "ip6", "icmp", "icmp6"})
_RAW_ONLY = frozenset({"udp", "ip", "ip6", "icmp", "icmp6", "proto"})
_DIR_WORDS = frozenset({"src", "dst"})
_TYPE_WORDS = frozenset({"host", "net", "port", "portrange"})
_KEYWORDS = _PROTO_WORDS | _DIR_WORDS | _TYPE_WORDS | {"proto", "mask", "not", "and", "or"}
_PROTO_NAMES = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "icmp": IPPROTO_ICMP,
                "icmp6": IPPROTO_ICMPV6}

_TOKEN_RE = re.compile(r"\s*(?:(&&?|\|\|?|!|\(|\))|([A-Za-z0-9_.:/-]+))", re.ASCII)
_DIGITS_RE = re.compile(r"[0-9]+", re.ASCII)
_RANGE_RE = re.compile(r"([0-9]+)-([0-9]+)", re.ASCII)
_OP_KINDS = {"&": "and", "&&": "and", "|": "or", "||": "or", "!": "not", "(": "(", ")": ")"}


class FilterError(ValueError):
    """A filter that does not compile.  ``mtcp_bind_monitor_filter`` maps it to EINVAL.

    Attributes: ``text`` (the filter), ``reason``, ``token`` (the offending token or None at
    the end of the filter), ``position`` (1-based token index, None for a lexical error or the
    end), ``offset`` (character offset in ``text``).
    """

    errno = _errno.EINVAL

    def __init__(self, text, reason, token=None, position=None, offset=None):
        self.text = text
        self.reason = reason
        self.token = token
        self.position = position
        self.offset = offset
        if position is not None:
            where = f"at token {position}"
        elif offset is not None:
            where = f"at offset {offset}"
        else:
            where = "at end of filter"
        super().__init__(f"bad filter {text!r}: {reason} {where}")

    def __reduce__(self):
        return (type(self), (self.text, self.reason, self.token, self.position, self.offset))


class _Tok:
    __slots__ = ("kind", "text", "low", "offset", "index")

    def __init__(self, kind, text, offset, index):
        self.kind = kind        # 'word', 'and', 'or', 'not', '(', ')'
        self.text = text
        self.low = text.lower()
        self.offset = offset
        self.index = index      # 0-based


def _tokenize(text):
    toks = []
    pos = 0
    n = len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n\f\v":
            pos += 1
        if pos >= n:
            return toks
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise FilterError(text, f"unexpected character {text[pos]!r}", token=text[pos],
                              offset=pos)
        op, word = m.group(1), m.group(2)
        start = m.start(1) if op is not None else m.start(2)
        if op is not None:
            toks.append(_Tok(_OP_KINDS[op], op, start, len(toks)))
        else:
            low = word.lower()
            kind = low if low in ("and", "or", "not") else "word"
            toks.append(_Tok(kind, word, start, len(toks)))
        pos = m.end()


# ---------------------------------------------------------------------------------------------
# AST: tuples.
#   ("true",) ("false",) ("and", (kids...)) ("or", (kids...)) ("not", kid)
#   ("ver", 4|6)                               ip_version == v
#   ("proto", n, None|4|6)                     IP (any or that version) and ip_proto == n
#   ("host", dir, ver, (addr bytes, ...))      dir in "src" "dst" "or" "and"
#   ("net", dir, ver, net bytes, mask bytes)
#   ("port", dir, ((lo, hi), ...), guard)      guard: also test ip_proto is TCP or UDP
TRUE = ("true",)
FALSE = ("false",)
_ICMP_ANY = ("or", (("proto", IPPROTO_ICMP, 4), ("proto", IPPROTO_ICMPV6, 6)))


class _Parser:
    def __init__(self, text, toks, raw):
        self.text = text
        self.toks = toks
        self.raw = raw
        self.i = 0
        self.nest = 0
        self.last = None  # qualifiers of the previous primitive: (proto tok, dir, type)

    # -- helpers ---------------------------------------------------------------------------
    def peek(self, k=0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def fail(self, reason, tok=None):
        if tok is None:
            raise FilterError(self.text, reason)
        raise FilterError(self.text, reason, token=tok.text, position=tok.index + 1,
                          offset=tok.offset)

    def prev(self):
        return self.toks[self.i - 1] if self.i > 0 else None

    # -- grammar ---------------------------------------------------------------------------
    def parse(self):
        node, _ = self.expr()
        tok = self.peek()
        if tok is not None:
            if tok.kind == ")":
                self.fail("unbalanced ')'", tok)
            if tok.kind == "word" and tok.low not in _KEYWORDS and not _is_value(tok.low):
                self.fail(f"unknown word '{tok.text}'", tok)
            self.fail(f"unexpected '{tok.text}' after '{self.prev().text}' "
                      "(expected 'and', 'or' or the end)", tok)
        return node

    def expr(self):
        node, depth = self.unary()
        while True:
            tok = self.peek()
            if tok is None or tok.kind not in ("and", "or"):
                return node, depth
            self.i += 1
            if self.peek() is None:
                self.fail(f"missing operand after '{tok.text}'", tok)
            rhs, rdepth = self.unary()
            if node[0] == tok.kind:
                node = (tok.kind, node[1] + (rhs,))
                depth = max(depth, rdepth + 1)
            else:
                node = (tok.kind, (node, rhs))
                depth = max(depth, rdepth) + 1
            if depth > MAX_DEPTH:
                self.fail(f"filter nested too deeply (more than {MAX_DEPTH} levels)", tok)

    def unary(self):
        tok = self.peek()
        if tok is None:
            prev = self.prev()
            self.fail(f"missing operand after '{prev.text}'", prev)
        if tok.kind in ("not", "("):
            self.nest += 1
            if self.nest > MAX_DEPTH:
                self.fail(f"filter nested too deeply (more than {MAX_DEPTH} levels)", tok)
            self.i += 1
            if tok.kind == "not":
                if self.peek() is None:
                    self.fail(f"missing operand after '{tok.text}'", tok)
                kid, depth = self.unary()
                node, depth = ("not", kid), depth + 1
            else:
                nxt = self.peek()
                if nxt is not None and nxt.kind == ")":
                    self.fail("empty parentheses", tok)
                node, depth = self.expr()
                close = self.peek()
                if close is None:
                    self.fail("unbalanced '(': missing ')'", tok)
                if close.kind != ")":
                    if close.kind == "word" and close.low not in _KEYWORDS \
                            and not _is_value(close.low):
                        self.fail(f"unknown word '{close.text}'", close)
                    self.fail(f"unexpected '{close.text}' (expected 'and', 'or' or ')')", close)
                self.i += 1
            self.nest -= 1
            if depth > MAX_DEPTH:
                self.fail(f"filter nested too deeply (more than {MAX_DEPTH} levels)", tok)
            return node, depth
        if tok.kind in ("and", "or"):
            self.fail(f"missing operand before '{tok.text}'", tok)
        if tok.kind == ")":
            self.fail("missing operand before ')'", tok)
        return self.primitive(), 1

    def primitive(self):
        tok = self.peek()
        w = tok.low
        if w in _RAW_ONLY and not self.raw:
            self.fail(f"'{tok.text}' is only allowed in raw packet filters "
                      "(a stream filter matches TCP only)", tok)
        if w == "proto":
            self.i += 1
            self.last = None
            return ("proto", self.proto_number(tok), None)
        if w in _PROTO_WORDS:
            self.i += 1
            nxt = self.peek()
            nlow = nxt.low if nxt is not None and nxt.kind == "word" else None
            if nlow == "proto":
                if w not in ("ip", "ip6"):
                    self.fail(f"'proto' must follow 'ip' or 'ip6', not '{tok.text}'", nxt)
                self.i += 1
                self.last = None
                return ("proto", self.proto_number(nxt), 4 if w == "ip" else 6)
            if nlow in _DIR_WORDS or nlow in _TYPE_WORDS:
                return self.qualified(tok)
            self.last = None
            return self.proto_node(w)
        if w in _DIR_WORDS or w in _TYPE_WORDS:
            return self.qualified(None)
        if w == "mask":
            self.fail("'mask' must follow 'net ADDR'", tok)
        if _is_value(w):
            self.i += 1
            if self.last is not None:
                proto, dirq, typ = self.last
                return self.build(proto, dirq, typ, tok)
            return self.build(None, "or", None, tok)
        self.fail(f"unknown word '{tok.text}'", tok)

    def proto_node(self, w):
        if w == "tcp":
            return TRUE if not self.raw else ("proto", IPPROTO_TCP, None)
        if w == "udp":
            return ("proto", IPPROTO_UDP, None)
        if w == "ip":
            return ("ver", 4)
        if w == "ip6":
            return ("ver", 6)
        if w == "icmp":
            return _ICMP_ANY
        return ("proto", IPPROTO_ICMPV6, 6)  # icmp6

    def proto_number(self, kw):
        tok = self.peek()
        if tok is None or tok.kind != "word":
            self.fail(f"missing protocol number after '{kw.text}'", tok if tok else kw)
        self.i += 1
        if tok.low in _PROTO_NAMES:
            return _PROTO_NAMES[tok.low]
        if not _DIGITS_RE.fullmatch(tok.text):
            self.fail(f"bad protocol '{tok.text}' (a number 0-255 or tcp, udp, icmp, icmp6)",
                      tok)
        n = _small_int(tok.text)
        if n > 255:
            self.fail(f"protocol {tok.text} out of range 0-255", tok)
        return n

    def qualified(self, proto):
        dirq = "or"
        tok = self.peek()
        if tok.low in _DIR_WORDS:
            self.i += 1
            dirq = tok.low
            conj, other = self.peek(), self.peek(1)
            if conj is not None and conj.kind in ("and", "or") and other is not None \
                    and other.kind == "word" and other.low in _DIR_WORDS \
                    and other.low != tok.low:
                self.i += 2
                dirq = conj.kind
        typ = None
        tok = self.peek()
        if tok is not None and tok.kind == "word" and tok.low in _TYPE_WORDS:
            self.i += 1
            typ = tok.low
        val = self.peek()
        after = self.prev()
        if val is None:
            self.fail(f"missing value after '{after.text}'", after)
        if val.kind != "word" or val.low in _KEYWORDS:
            what = "an address" if typ in (None, "host", "net") else "a port"
            self.fail(f"expected {what} after '{after.text}', got '{val.text}'", val)
        self.i += 1
        return self.build(proto, dirq, typ, val)

    def build(self, proto, dirq, typ, val):
        text = val.text
        if typ is None:
            if "/" in text:
                typ = "net"
            elif _DIGITS_RE.fullmatch(text) or _RANGE_RE.fullmatch(text):
                self.fail(f"'{text}' needs a qualifier ('port {text}' or "
                          f"'portrange {text}'?)", val)
            else:
                typ = "host"
        pw = proto.low if proto is not None else None
        if typ in ("host", "net"):
            leaf, ver = self.address_leaf(dirq, typ, val)
            need = {"ip": 4, "ip6": 6, "icmp6": 6}.get(pw)
            if need is not None and ver != need:
                self.fail(f"'{proto.text}' cannot qualify an IPv{ver} address '{text}'", val)
        else:
            if pw in ("icmp", "icmp6"):
                self.fail(f"'{proto.text}' cannot qualify '{typ}'", proto)
            lo, hi = self.port_range(typ, val)
            guard = self.raw and pw not in ("tcp", "udp")
            if (lo, hi) == (0, 65535) and not guard:
                leaf = TRUE
            else:
                leaf = ("port", dirq, ((lo, hi),), guard)
        self.last = (proto, dirq, typ)
        if proto is None:
            return leaf
        return ("and", (self.proto_node(pw), leaf))

    def port_range(self, typ, val):
        text = val.text
        if typ == "port":
            if _RANGE_RE.fullmatch(text):
                self.fail(f"bad port '{text}' (use 'portrange {text}')", val)
            if not _DIGITS_RE.fullmatch(text):
                self.fail(f"bad port '{text}' (a decimal number 0-65535)", val)
            n = _small_int(text)
            if n > 65535:
                self.fail(f"port {text} out of range 0-65535", val)
            return n, n
        m = _RANGE_RE.fullmatch(text)
        if m is None:
            self.fail(f"bad port range '{text}' (expected A-B, e.g. 1024-65535)", val)
        lo, hi = _small_int(m.group(1)), _small_int(m.group(2))
        for part, n in ((m.group(1), lo), (m.group(2), hi)):
            if n > 65535:
                self.fail(f"port {part} out of range 0-65535 in '{text}'", val)
        if lo > hi:
            self.fail(f"bad port range '{text}': start {lo} greater than end {hi}", val)
        return lo, hi

    def address_leaf(self, dirq, typ, val):
        text = val.text
        if typ == "host":
            if "/" in text:
                self.fail(f"'host' takes an address, not a prefix: '{text}' (use 'net')", val)
            addr = self.address(text, val, "address")
            return ("host", dirq, addr.version, (addr.packed,)), addr.version
        # net: ADDR, ADDR/LEN or ADDR mask MASK
        nxt = self.peek()
        if nxt is not None and nxt.kind == "word" and nxt.low == "mask":
            if "/" in text:
                self.fail(f"'mask' cannot follow a prefix length ('{text}')", nxt)
            self.i += 1
            mtok = self.peek()
            if mtok is None or mtok.kind != "word" or mtok.low in _KEYWORDS:
                self.fail("missing mask after 'mask'", mtok if mtok is not None else nxt)
            self.i += 1
            addr = self.address(text, val, "address")
            mask = self.address(mtok.text, mtok, "mask")
            if mask.version != addr.version:
                self.fail(f"mask '{mtok.text}' is IPv{mask.version} but address '{text}' is "
                          f"IPv{addr.version}", mtok)
            mask_int = int(mask)
            what = f"{text} mask {mtok.text}"
        else:
            if "/" in text:
                a_text, _, len_text = text.partition("/")
                addr = self.address(a_text, val, "address")
                if not _DIGITS_RE.fullmatch(len_text) or _small_int(len_text) > addr.max_prefixlen:
                    self.fail(f"bad prefix length '/{len_text}' in '{text}' "
                              f"(0-{addr.max_prefixlen} for IPv{addr.version})", val)
                plen = _small_int(len_text)
            else:
                addr = self.address(text, val, "address")
                plen = addr.max_prefixlen
            bits = addr.max_prefixlen
            mask_int = ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
            what = text
        addr_int = int(addr)
        if addr_int & ~mask_int:
            self.fail(f"non-network bits set in '{what}'", val)
        ver = addr.version
        nbytes = 4 if ver == 4 else 16
        full = (1 << (8 * nbytes)) - 1
        if mask_int == 0:
            return ("ver", ver), ver
        if mask_int == full:
            return ("host", dirq, ver, (addr.packed,)), ver
        return ("net", dirq, ver, addr.packed, mask_int.to_bytes(nbytes, "big")), ver

    def address(self, text, tok, what):
        try:
            return ipaddress.ip_address(text)
        except ValueError:
            self.fail(f"bad {what} '{text}'", tok)


def _is_value(low):
    """Could this word be an address, prefix, number or port range (not a keyword)?"""
    return low not in _KEYWORDS and (low[:1].isdigit() or ":" in low or "." in low
                                    or "/" in low)


def _small_int(digits):
    """int() of a decimal digit string, without Python's huge-int conversion limit."""
    stripped = digits.lstrip("0") or "0"
    return int(stripped) if len(stripped) <= 12 else 1 << 64


# ---------------------------------------------------------------------------------------------
# Constant folding and merging.

def _simplify(node):
    kind = node[0]
    if kind == "not":
        kid = _simplify(node[1])
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
        k = _simplify(k)
        if k is absorb:
            return absorb
        if k is neutral:
            continue
        if k[0] == kind:
            kids.extend(k[1])
        else:
            kids.append(k)
    if kind == "or":
        kids = _merge_or(kids)
    if not kids:
        return neutral
    if len(kids) == 1:
        return kids[0]
    return (kind, tuple(kids))


def _merge_or(kids):
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


# ---------------------------------------------------------------------------------------------
# Python code generation.

def _py_sides(dirq, names, cond):
    if dirq == "src":
        return cond(names[0])
    if dirq == "dst":
        return cond(names[1])
    op = " or " if dirq == "or" else " and "
    return f"({cond(names[0])}{op}{cond(names[1])})"


def _py_net(s, net, mask):
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


def _py_ports(x, ranges):
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


def _py(node):
    kind = node[0]
    if kind == "true":
        return "True"
    if kind == "false":
        return "False"
    if kind in ("and", "or"):
        return "(" + f" {kind} ".join(_py(k) for k in node[1]) + ")"
    if kind == "not":
        return f"(not {_py(node[1])})"
    if kind == "ver":
        return f"p.ip_version == {node[1]}"
    if kind == "proto":
        ver = "p.ip_version != 0" if node[2] is None else f"p.ip_version == {node[2]}"
        return f"({ver} and p.ip_proto == {node[1]})"
    if kind == "host":
        _, dirq, ver, addrs = node
        if len(addrs) == 1:
            cond = lambda s: f"{s} == {addrs[0]!r}"  # noqa: E731
        else:
            lit = "{" + ", ".join(repr(a) for a in addrs) + "}"
            cond = lambda s: f"{s} in {lit}"  # noqa: E731
        return f"(p.ip_version == {ver} and {_py_sides(dirq, ('p.src', 'p.dst'), cond)})"
    if kind == "net":
        _, dirq, ver, net, mask = node
        sides = _py_sides(dirq, ("p.src", "p.dst"), lambda s: _py_net(s, net, mask))
        return f"(p.ip_version == {ver} and {sides})"
    if kind == "port":
        _, dirq, ranges, guard = node
        sides = _py_sides(dirq, ("p.sport", "p.dport"), lambda x: _py_ports(x, ranges))
        if guard:
            return (f"(p.ip_version != 0 and p.ip_proto in ({IPPROTO_TCP}, {IPPROTO_UDP}) "
                    f"and {sides})")
        return sides
    raise AssertionError(node)


# ---------------------------------------------------------------------------------------------
# C code generation: struct mx_flow_view { __u8 ip_version, ip_proto; __be16 sport, dport;
# __u32 src[4], dst[4]; } with addresses and ports in network byte order.  Constants are the
# in-memory (byte-swapped on little-endian) values, computed here for `byteorder`.

def _c_sides(dirq, names, cond):
    if dirq == "src":
        return cond(names[0])
    if dirq == "dst":
        return cond(names[1])
    op = " || " if dirq == "or" else " && "
    return f"({cond(names[0])}{op}{cond(names[1])})"


def _c_words(s, data, mask, bo):
    parts = []
    for w in range(len(data) // 4):
        m = int.from_bytes(mask[4 * w:4 * w + 4], bo)
        d = int.from_bytes(data[4 * w:4 * w + 4], bo)
        if m == 0:
            continue
        if m == 0xFFFFFFFF:
            parts.append(f"{s}[{w}] == {d:#010x}U")
        else:
            parts.append(f"({s}[{w}] & {m:#010x}U) == {d:#010x}U")
    if not parts:
        return "1"
    return parts[0] if len(parts) == 1 else "(" + " && ".join(parts) + ")"


def _c_ports(x, ranges, bo):
    if bo == "little":
        host = f"((((__u32){x} & 0xffU) << 8) | ((__u32){x} >> 8))"
    else:
        host = f"((__u32){x})"
    parts = []
    for lo, hi in ranges:
        if lo == hi:
            parts.append(f"{x} == {int.from_bytes(lo.to_bytes(2, 'big'), bo):#06x}")
        elif lo == 0 and hi == 65535:
            return "1"
        elif lo == 0:
            parts.append(f"{host} <= {hi}U")
        elif hi == 65535:
            parts.append(f"{host} >= {lo}U")
        else:
            parts.append(f"({host} >= {lo}U && {host} <= {hi}U)")
    return parts[0] if len(parts) == 1 else "(" + " || ".join(parts) + ")"


def _c(node, bo):
    kind = node[0]
    if kind == "true":
        return "1"
    if kind == "false":
        return "0"
    if kind in ("and", "or"):
        op = " && " if kind == "and" else " || "
        return "(" + op.join(_c(k, bo) for k in node[1]) + ")"
    if kind == "not":
        return f"(!({_c(node[1], bo)}))"  # '!' binds tighter than '==' in C
    if kind == "ver":
        return f"(v->ip_version == {node[1]})"
    if kind == "proto":
        ver = "v->ip_version != 0" if node[2] is None else f"v->ip_version == {node[2]}"
        return f"({ver} && v->ip_proto == {node[1]})"
    if kind == "host":
        _, dirq, ver, addrs = node

        def cond(s):
            alts = [_c_words(s, a, b"\xff" * len(a), bo) for a in addrs]
            return alts[0] if len(alts) == 1 else "(" + " || ".join(alts) + ")"
        return f"(v->ip_version == {ver} && {_c_sides(dirq, ('v->src', 'v->dst'), cond)})"
    if kind == "net":
        _, dirq, ver, net, mask = node
        sides = _c_sides(dirq, ("v->src", "v->dst"), lambda s: _c_words(s, net, mask, bo))
        return f"(v->ip_version == {ver} && {sides})"
    if kind == "port":
        _, dirq, ranges, guard = node
        sides = _c_sides(dirq, ("v->sport", "v->dport"), lambda x: _c_ports(x, ranges, bo))
        if guard:
            return (f"(v->ip_version != 0 && (v->ip_proto == {IPPROTO_TCP} || "
                    f"v->ip_proto == {IPPROTO_UDP}) && {sides})")
        return sides
    raise AssertionError(node)


# ---------------------------------------------------------------------------------------------

_STREAM_GUARD = ("proto", IPPROTO_TCP, None)


class MonitorFilter:
    """A compiled monitor filter (immutable; ``compile_filter`` caches them).

    ``match(pkt) -> bool``: the generated predicate itself (an instance attribute, so a call
    costs one Python function call).  ``text``: the filter as given (None for none).  ``raw``:
    a raw packet filter (else a stream filter, which implicitly requires TCP).
    ``matches_everything``: the filter puts no constraint on the packets its socket type sees
    (every frame for a raw filter, every TCP packet for a stream filter): an empty filter, or
    one that folds to true (``tcp`` as a stream filter).  ``source``: the generated Python.
    """

    __slots__ = ("text", "raw", "matches_everything", "match", "source", "_expr", "_c_cache")

    def __init__(self, text, raw, expr):
        self.text = text
        self.raw = raw
        self._expr = expr                       # simplified, without the stream TCP guard
        self.matches_everything = expr is TRUE
        self._c_cache = {}
        full = expr if raw else _simplify(("and", (_STREAM_GUARD, expr)))
        body = _py(full)
        self.source = f"def _mx_filter(p):\n    return {body}\n"
        code = compile(self.source, f"<mosxdp filter {text!r}>", "exec")
        namespace = {"__builtins__": {}}
        exec(code, namespace)  # our generated code only: constants come from the parser
        self.match = namespace["_mx_filter"]

    def c_expr(self, byteorder: str | None = None) -> str:
        """The predicate as a C expression over ``struct mx_flow_view *v``.

        Constants are laid out for ``byteorder`` ("little"/"big"; default: this host's, the
        host that compiles and runs the XDP program).
        """
        bo = byteorder or sys.byteorder
        if bo not in ("little", "big"):
            raise ValueError(f"byteorder must be 'little' or 'big', not {byteorder!r}")
        out = self._c_cache.get(bo)
        if out is None:
            full = self._expr if self.raw else _simplify(("and", (_STREAM_GUARD, self._expr)))
            out = _c(full, bo)
            if not out.startswith("("):
                out = f"({out})"
            self._c_cache[bo] = out
        return out

    def __repr__(self):
        kind = "raw" if self.raw else "stream"
        return f"<MonitorFilter {kind} {self.text!r}>"


@lru_cache(maxsize=256)
def _compile(text, raw):
    toks = _tokenize(text) if text is not None else []
    if not toks:
        return MonitorFilter(text, raw, TRUE)
    expr = _Parser(text, toks, raw).parse()
    return MonitorFilter(text, raw, _simplify(expr))


def compile_filter(text: str | None, *, raw: bool = False) -> MonitorFilter:
    """Compile a monitor filter.  ``raw=True`` for a raw packet filter (``raw_pkt_filter``),
    else a stream filter (``stream_syn_filter``/``stream_orphan_filter``).

    Raises ``FilterError`` (a ValueError) naming the offending token and its position.
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise FilterError(bytes(text).decode("ascii", "replace"),
                              "filter is not ASCII") from None
    if text is not None and not isinstance(text, str):
        raise TypeError(f"a filter is a str or None, not {type(text).__name__}")
    return _compile(text, bool(raw))
