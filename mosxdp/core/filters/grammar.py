"""The monitor filter grammar: tokens, the parser, and the errors that name a token.

Grammar (a subset of pcap-filter(7), written from its documentation)::

    filter    := <empty> | expr
    expr      := unary (('and' | '&&' | '&' | 'or' | '||' | '|') unary)*
    unary     := ('not' | '!') unary | '(' expr ')' | primitive
    primitive := PROTO                                   tcp; raw only: ip ip6 udp icmp icmp6 arp
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
  only) and ``icmp6`` ICMPv6; ``proto N`` alone means either IP version (an extension);
  ``arp`` means the ARP ethertype (after VLAN tags) and takes no qualifier (pcap's
  ``arp host`` is refused).
* A protocol keyword right before a primitive restricts it: ``tcp port 80`` is
  ``tcp and port 80``; ``ip host ::1`` (version clash) and ``icmp port 1`` are errors.
* Keywords are case-insensitive.  ``&``/``|`` are plain and/or (there is no arithmetic).
* A stream filter (``raw=False``) implicitly means ``tcp and (FILTER)`` and refuses the raw-only
  keywords.  ``None``, ``""`` or only blanks put no constraint: everything (every TCP packet
  for a stream filter) matches.

Packet attributes read by ``match`` (docs/internal/contracts.md, core/packet.py):
``ip_version`` (4, 6, 0 = not IP), ``ip_proto``, ``src``/``dst`` (4 or 16 bytes), ``sport``/
``dport`` (host order); for ``arp`` of a non-IP frame, the ethertype before ``l3_off`` in
``buf``.  ``ip_version`` is tested before anything else; ``ip_proto`` only when
``ip_version`` is 4 or 6; ports only when ``ip_proto`` is TCP or UDP.
"""
from __future__ import annotations

import errno as _errno
import ipaddress
import re

from .tree import (ETH_P_ARP, ICMP_ANY, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
                   TRUE, simplify)

#: Deepest nesting accepted (parentheses, ``not``, alternations of and/or).  Keeps the parser,
#: the generated Python and the generated C well inside every recursion/nesting limit.
MAX_DEPTH = 48

_PROTO_WORDS = frozenset({"tcp", "udp", "ip", "ip6", "icmp", "icmp6", "arp"})
_RAW_ONLY = frozenset({"udp", "ip", "ip6", "icmp", "icmp6", "arp", "proto"})
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



def parse(text, raw):
    """The simplified tree of a filter (``TRUE`` for none or only blanks), without the TCP
    requirement of a stream filter (``raw`` False)."""
    toks = _tokenize(text) if text is not None else []
    if not toks:
        return TRUE
    return simplify(_Parser(text, toks, raw).parse())


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
                if w == "arp":
                    self.fail(f"'{tok.text}' takes no qualifier (ARP has no IP header or "
                              "ports here)", nxt)
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
            return ICMP_ANY
        if w == "arp":
            return ("ether", ETH_P_ARP)
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

