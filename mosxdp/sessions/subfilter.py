"""Subscription filters: one small grammar over a flow's packet fields and its session's
fields (docs/subscriptions.md), sans-IO.

    filter := or
    or     := and ("or" and)*
    and    := unary ("and" unary)*
    unary  := "not" unary | "(" or ")" | NAME | FIELD OP VALUE
    OP     := == != < <= > >= ~          (~: a regular expression found in the text)
    VALUE  := NUMBER | "string" | WORD   (WORD: an address, a network, a name: TLSv13, AAAA)

A NAME is a protocol (``tls``, ``http``, ``dns``: the session type; ``tcp``, ``udp``,
``ipv4``, ``ipv6``) or a field alone (true when the field is there and true or non-empty).
Exactly one session type per filter: the one it names, by itself or by its fields.

A filter is evaluated in stages, as a flow's fields become known (``evaluate``): the
packet fields at the flow's start, the session's once parsed. A field not known yet makes
a test unknown (None) and the logic three-valued (Kleene), so the runtime learns early
that no subscription can match a flow any more and stops parsing it; in ``final``
evaluation a field the session lacks (a TLS session without SNI) makes a test false.
Errors are one line naming the token (``SubscriptionFilterError``).
"""
from __future__ import annotations

import ipaddress
import re

__all__ = ["SubscriptionFilter", "SubscriptionFilterError", "SESSION_TYPES", "FIELDS",
           "compile_subscription"]

SESSION_TYPES = ("tls", "http", "dns")

# field -> kind. Packet fields are the flow's (src: the originator, the client).
FIELDS = {
    "ip.src": "addr", "ip.dst": "addr", "ip.addr": "addr",
    "tcp.sport": "int", "tcp.dport": "int", "tcp.port": "int",
    "udp.sport": "int", "udp.dport": "int", "udp.port": "int",
    "tls.sni": "str", "tls.version": "str", "tls.cipher": "str", "tls.curve": "str",
    "tls.alpn": "str", "tls.ja4": "str", "tls.established": "bool", "tls.resumed": "bool",
    "http.method": "str", "http.host": "str", "http.uri": "str", "http.user_agent": "str",
    "http.version": "str", "http.status": "int", "http.request_body_len": "int",
    "http.response_body_len": "int",
    "dns.query": "str", "dns.qtype": "code", "dns.rcode": "code", "dns.answer": "strs",
}
# A protocol name alone: the field the runtime sets for it.
PROTOCOLS = ("tls", "http", "dns", "tcp", "udp", "ipv4", "ipv6")
# Fields with two spellings: ip.addr and the *.port fields test either side.
_EITHER = {"ip.addr": ("ip.src", "ip.dst"), "tcp.port": ("tcp.sport", "tcp.dport"),
           "udp.port": ("udp.sport", "udp.dport")}
_OPS = ("==", "!=", "<=", ">=", "<", ">", "~")
_ORDERED = {"int", "code"}
_TOKEN = re.compile(r'\s*(?:(?P<op>==|!=|<=|>=|<|>|~)|(?P<paren>[()])|(?P<str>"(?:[^"\\]|\\.)*")'
                    r'|(?P<word>[A-Za-z0-9_.:/*+-]+)|(?P<bad>\S))')

UNKNOWN = None


class SubscriptionFilterError(ValueError):
    """A filter that does not parse: the message is one line naming the token."""


class SubscriptionFilter:
    """A compiled filter: ``session`` its session type, ``text`` as given, ``fields`` the
    fields it reads; ``evaluate(env, final)`` -> True, False or None (unknown)."""

    __slots__ = ("text", "session", "fields", "_fn")

    def __init__(self, text, session, fields, fn):
        self.text = text
        self.session = session
        self.fields = fields
        self._fn = fn

    def evaluate(self, env: dict, final: bool = False):
        """True/False, or None when it depends on a field ``env`` lacks and not ``final``."""
        return self._fn(env, final)

    def __repr__(self):
        return f"SubscriptionFilter({self.text!r})"


def _tokens(text):
    pos = 0
    out = []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:     # only trailing spaces are left
            break
        kind = m.lastgroup
        if kind == "bad":
            raise SubscriptionFilterError(f"unexpected {m.group(kind)!r} at {m.start(kind)}")
        out.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    return out


def _three(a, b, decisive):
    """Kleene's `and` (``decisive`` False) or `or` (``decisive`` True) of two tests: the
    decisive value as soon as one side has it (the other is not asked), the other value
    when both sides have that, else unknown."""
    other = not decisive

    def fn(env, final):
        x = a(env, final)
        if x is decisive:
            return decisive
        y = b(env, final)
        if y is decisive:
            return decisive
        return other if x is other and y is other else UNKNOWN
    return fn


def _three_not(a):
    def fn(env, final):
        x = a(env, final)
        return UNKNOWN if x is None else not x
    return fn


def _lookup(name, test):
    """A test of one field: unknown while ``env`` lacks it (not final), false once final."""
    def fn(env, final):
        if name not in env:
            return False if final else UNKNOWN
        value = env[name]
        return False if value is None else test(value)
    return fn


def _either(names, test):
    if names[0] == names[1]:
        return _lookup(names[0], test)
    return _three(_lookup(names[0], test), _lookup(names[1], test), True)


class _Parser:
    def __init__(self, text):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.sessions = {}        # session type -> the first token naming it
        self.fields = set()

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self):
        tok = self.peek()
        self.i += 1
        return tok

    def fail(self, tok, what):
        if tok is None:
            raise SubscriptionFilterError(f"{what} at the end")
        raise SubscriptionFilterError(f"{what}: {tok[1]!r} at {tok[2]}")

    def parse(self):
        if not self.toks:
            raise SubscriptionFilterError("empty filter: name a session type (tls, http, dns)")
        fn = self.or_()
        tok = self.peek()
        if tok is not None:
            self.fail(tok, "expected 'and', 'or' or the end")
        return fn

    def or_(self):
        return self._chain("or", self.and_, True)

    def and_(self):
        return self._chain("and", self.unary, False)

    def _chain(self, word, operand, decisive):
        """operand (word operand)*, left to right (``decisive``: see _three)."""
        fn = operand()
        while self.peek() is not None and self.peek()[1] == word:
            self.take()
            fn = _three(fn, operand(), decisive)
        return fn

    def unary(self):
        tok = self.take()
        if tok is None:
            self.fail(None, "expected a test")
        kind, value, _ = tok
        if kind == "word" and value == "not":
            return _three_not(self.unary())
        if kind == "paren" and value == "(":
            fn = self.or_()
            close = self.take()
            if close is None or close[1] != ")":
                self.fail(close, "expected ')'")
            return fn
        if kind != "word" or value in ("and", "or"):
            self.fail(tok, "expected a protocol or a field")
        if value in PROTOCOLS:
            self._session(value, tok)
            self.fields.add(value)
            return _lookup(value, bool)
        if value not in FIELDS:
            prefix = value.split(".")[0] + "."
            known = [f for f in FIELDS if f.startswith(prefix)] or list(PROTOCOLS)
            self.fail(tok, f"unknown name (known: {', '.join(known)})")
        self._session(value.split(".")[0], tok)
        nxt = self.peek()
        if nxt is None or nxt[0] != "op":
            self.fields.update(_EITHER.get(value, (value,)))
            return _either(_EITHER.get(value, (value, value)), bool)
        op = self.take()[1]
        return self.comparison(value, tok, op, self.take())

    def _session(self, proto, tok):
        if proto in SESSION_TYPES:
            self.sessions.setdefault(proto, tok)

    def comparison(self, field, ftok, op, vtok):
        kind = FIELDS[field]
        if vtok is None or vtok[0] not in ("str", "word"):
            self.fail(vtok, f"expected a value after {op!r}")
        raw = vtok[1]
        literal = _unquote(raw) if vtok[0] == "str" else raw
        if op == "~":
            if kind not in ("str", "strs"):
                self.fail(ftok, f"'~' needs a text field, not the {kind} field")
            try:
                regex = re.compile(literal)
            except re.error as exc:
                self.fail(vtok, f"bad regular expression ({exc})")
            test = _text_test(kind, lambda s: regex.search(s) is not None)
        elif kind == "addr":
            if op not in ("==", "!="):
                self.fail(vtok, f"an address compares with == or != only, not {op!r}")
            try:
                net = ipaddress.ip_network(literal, strict=False)
            except ValueError:
                self.fail(vtok, "not an address or a network")
            test = _addr_test(net)
        elif kind in _ORDERED:
            test = self._number_test(field, kind, op, vtok, literal)
        elif kind == "bool":
            if op not in ("==", "!=") or literal not in ("true", "false"):
                self.fail(vtok, f"{field} is true or false (== or !=)")
            want = literal == "true"
            test = (lambda v: bool(v) == want)
        else:
            if op not in ("==", "!="):
                self.fail(vtok, f"a text compares with ==, != or ~, not {op!r}")
            test = _text_test(kind, lambda s: s == literal)
        positive = test
        if op == "!=":
            test = (lambda v: not positive(v))
        names = _EITHER.get(field, (field, field))
        self.fields.update(names)
        if field in _EITHER and op == "!=":
            # "neither side is": the negation of the == test on either side
            return _three_not(_either(names, positive))
        return _either(names, test)

    def _number_test(self, field, kind, op, vtok, literal):
        if op not in ("==", "!=", "<", "<=", ">", ">="):
            self.fail(vtok, f"a number compares with == != < <= > >=, not {op!r}")
        try:
            number = int(literal, 0)
        except ValueError:
            if kind != "code" or op not in ("==", "!=") or vtok[0] != "word":
                self.fail(vtok, "not a number")
            # dns.qtype == AAAA, dns.rcode == NXDOMAIN: the name Zeek logs
            return lambda v: v[1] == literal
        compare = {"==": int.__eq__, "!=": int.__eq__, "<": int.__lt__, "<=": int.__le__,
                   ">": int.__gt__, ">=": int.__ge__}[op]
        if kind == "code":
            return lambda v: compare(v[0], number)
        return lambda v: compare(v, number)


def _unquote(raw):
    body = raw[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def _text_test(kind, test):
    if kind == "strs":
        return lambda values: any(test(v) for v in values)
    return test


def _addr_test(net):
    def test(addr):
        return addr.version == net.version and addr in net
    return test


def compile_subscription(text) -> SubscriptionFilter:
    """``text`` compiled (SubscriptionFilterError: one line naming the token)."""
    if not isinstance(text, str):
        raise SubscriptionFilterError(f"a filter is text, not {type(text).__name__}")
    parser = _Parser(text)
    fn = parser.parse()
    if not parser.sessions:
        raise SubscriptionFilterError(f"{text!r} names no session type (tls, http, dns)")
    if len(parser.sessions) > 1:
        (_, first, _), (_, second, pos) = sorted(parser.sessions.values(), key=lambda t: t[2])[:2]
        raise SubscriptionFilterError(f"one session type per filter: {second!r} at {pos} "
                                      f"after {first!r}")
    (session,) = parser.sessions
    return SubscriptionFilter(text, session, frozenset(parser.fields), fn)
