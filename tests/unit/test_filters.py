"""Monitor filters: grammar, errors, match() semantics, and the C expression against match()."""
import ipaddress
import random
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mosxdp.core.filters import MAX_DEPTH, FilterError, MonitorFilter, compile_filter

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="gcc not installed")


def pkt(src, dst, sport=None, dport=None, proto=TCP):
    """A fake Packet with the contract's attributes.  No sport/dport attributes at all for
    protocols without ports, so a filter that reads them there raises AttributeError."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    assert s.version == d.version
    ns = SimpleNamespace(ip_version=s.version, ip_proto=proto, src=s.packed, dst=d.packed)
    if proto in (TCP, UDP):
        ns.sport, ns.dport = sport or 0, dport or 0
    return ns


NON_IP = SimpleNamespace(ip_version=0)  # ARP: nothing beyond L2 parsed, no other attributes

T4 = pkt("10.0.0.1", "192.168.1.20", 40000, 80)
T4R = pkt("192.168.1.20", "10.0.0.1", 80, 40000)
U4 = pkt("10.0.0.1", "8.8.8.8", 5353, 53, proto=UDP)
I4 = pkt("10.0.0.1", "8.8.8.8", proto=ICMP)
T6 = pkt("2001:db8::1", "2001:db8:1::80", 50000, 443)
U6 = pkt("fe80::1", "ff02::fb", 5353, 5353, proto=UDP)
I6 = pkt("fe80::1", "ff02::1", proto=ICMP6)
GRE4 = pkt("10.0.0.1", "10.0.0.2", proto=47)
ALL = {"T4": T4, "T4R": T4R, "U4": U4, "I4": I4, "T6": T6, "U6": U6, "I6": I6,
       "GRE4": GRE4, "NON_IP": NON_IP}


def matching(text, raw=False):
    f = compile_filter(text, raw=raw)
    got = set()
    for name, p in ALL.items():
        r = f.match(p)
        assert type(r) is bool, (text, name, r)
        if r:
            got.add(name)
    return got


# -- matches --------------------------------------------------------------------------------

STREAM_CASES = [
    (None, {"T4", "T4R", "T6"}),
    ("", {"T4", "T4R", "T6"}),
    ("   ", {"T4", "T4R", "T6"}),
    ("tcp", {"T4", "T4R", "T6"}),
    ("port 80", {"T4", "T4R"}),
    ("tcp port 80", {"T4", "T4R"}),
    ("dst port 80", {"T4"}),
    ("src port 80", {"T4R"}),
    ("tcp dst port 80", {"T4"}),
    ("port 443", {"T6"}),
    ("port 80 or 443", {"T4", "T4R", "T6"}),
    ("port 80 or port 443", {"T4", "T4R", "T6"}),
    ("dst port 22 or 80", {"T4"}),
    ("src and dst port 80", set()),
    ("src or dst port 40000", {"T4", "T4R"}),
    ("dst or src port 40000", {"T4", "T4R"}),
    ("portrange 1-1023", {"T4", "T4R", "T6"}),
    ("dst portrange 1-1023", {"T4", "T6"}),
    ("src portrange 40000-65535", {"T4", "T6"}),
    ("src portrange 0-100", {"T4R"}),
    ("portrange 0-65535", {"T4", "T4R", "T6"}),
    ("portrange 81-442", set()),
    ("host 10.0.0.1", {"T4", "T4R"}),
    ("src host 10.0.0.1", {"T4"}),
    ("dst host 10.0.0.1", {"T4R"}),
    ("src 10.0.0.1", {"T4"}),
    ("10.0.0.1", {"T4", "T4R"}),
    ("host 10.0.0.1 or 2001:db8::1", {"T4", "T4R", "T6"}),
    ("src and dst host 10.0.0.1", set()),
    ("src and dst net 0.0.0.0/0", {"T4", "T4R"}),
    ("net 10.0.0.0/8", {"T4", "T4R"}),
    ("src net 10.0.0.0/8", {"T4"}),
    ("dst net 192.168.0.0/16", {"T4"}),
    ("net 192.168.1.16/28", {"T4", "T4R"}),
    ("net 192.168.1.0/28", set()),
    ("net 192.168.1.20", {"T4", "T4R"}),
    ("net 192.168.1.20/32", {"T4", "T4R"}),
    ("192.168.0.0/16", {"T4", "T4R"}),
    ("src 192.168.0.0/16", {"T4R"}),
    ("net 0.0.0.0/0", {"T4", "T4R"}),
    ("net ::/0", {"T6"}),
    ("net 10.0.0.0 mask 255.0.0.0", {"T4", "T4R"}),
    ("net 10.0.0.0 mask 255.0.0.255", set()),
    ("net 10.0.0.1 mask 255.0.0.255", {"T4", "T4R"}),
    ("dst net 192.0.0.20 mask 255.0.0.255", {"T4"}),
    ("net 2001:db8::/32", {"T6"}),
    ("dst net 2001:db8:1::/48", {"T6"}),
    ("src net 2001:db8:1::/48", set()),
    ("net 2001:db8::/33", {"T6"}),
    ("net 2001:db8:8000::/33", set()),
    ("net 2001:db8:: mask ffff:ffff::", {"T6"}),
    ("host 2001:DB8::1", {"T6"}),
    ("host ::ffff:10.0.0.1", set()),
    ("not port 80", {"T6"}),
    ("! port 80", {"T6"}),
    ("not dst port 80", {"T4R", "T6"}),
    ("!src host 10.0.0.1", {"T4R", "T6"}),
    ("!port 80", {"T6"}),
    ("not not port 80", {"T4", "T4R"}),
    ("not tcp", set()),
    ("host 10.0.0.1 and port 80", {"T4", "T4R"}),
    ("host 10.0.0.1 && dst port 80", {"T4"}),
    ("host 10.0.0.1 & dst port 80", {"T4"}),
    ("port 443 || dst port 80", {"T4", "T6"}),
    ("port 443 | dst port 80", {"T4", "T6"}),
    ("TCP PORT 80 OR 443", {"T4", "T4R", "T6"}),
    ("(port 80)", {"T4", "T4R"}),
    ("((((port 80))))", {"T4", "T4R"}),
    ("host 10.0.0.1 and not 192.168.1.99", {"T4", "T4R"}),
    ("host 10.0.0.1 and not 192.168.1.20", set()),
    ("port 80 and not 40000", set()),
    ("net 2001:db8::/32 or src 10.0.0.0/8", {"T4", "T6"}),
    ("tcp src port 40000 or 50000", {"T4", "T6"}),
]


@pytest.mark.parametrize("text,expected", STREAM_CASES)
def test_stream_filter_matches(text, expected):
    assert matching(text) == expected


RAW_CASES = [
    (None, set(ALL)),
    ("", set(ALL)),
    ("tcp", {"T4", "T4R", "T6"}),
    ("udp", {"U4", "U6"}),
    ("icmp", {"I4", "I6"}),
    ("icmp6", {"I6"}),
    ("ip", {"T4", "T4R", "U4", "I4", "GRE4"}),
    ("ip6", {"T6", "U6", "I6"}),
    ("not ip and not ip6", {"NON_IP"}),
    ("not tcp", {"U4", "I4", "U6", "I6", "GRE4", "NON_IP"}),
    ("ip proto 47", {"GRE4"}),
    ("ip proto 17", {"U4"}),
    ("ip6 proto 17", {"U6"}),
    ("proto 17", {"U4", "U6"}),
    ("ip proto udp", {"U4"}),
    ("ip6 proto icmp6", {"I6"}),
    ("port 53", {"U4"}),
    ("port 5353", {"U4", "U6"}),
    ("udp port 5353", {"U4", "U6"}),
    ("tcp port 5353", set()),
    ("src and dst port 5353", {"U6"}),
    ("udp src and dst port 5353", {"U6"}),
    ("portrange 0-65535", {"T4", "T4R", "T6", "U4", "U6"}),
    ("not port 80", {"T6", "U4", "U6", "I4", "I6", "GRE4", "NON_IP"}),
    ("host 10.0.0.1", {"T4", "T4R", "U4", "I4", "GRE4"}),
    ("ip host 10.0.0.1", {"T4", "T4R", "U4", "I4", "GRE4"}),
    ("ip6 host fe80::1", {"U6", "I6"}),
    ("ip6 net ff02::/16", {"U6", "I6"}),
    ("ip src 10.0.0.1 and ip6", set()),
    ("icmp and host 8.8.8.8", {"I4"}),
    ("udp or icmp", {"U4", "U6", "I4", "I6"}),
    ("ip and udp dst port 53", {"U4"}),
    ("ip port 5353", {"U4"}),
    ("dst net ff00::/8", {"U6", "I6"}),
    ("not net 10.0.0.0/8", {"T6", "U6", "I6", "NON_IP"}),
]


@pytest.mark.parametrize("text,expected", RAW_CASES)
def test_raw_filter_matches(text, expected):
    assert matching(text, raw=True) == expected


def test_match_returns_bool_and_is_the_generated_function():
    f = compile_filter("port 80")
    assert f.match(T4) is True and f.match(T6) is False
    assert "p.sport" in f.source and "def " in f.source
    # one plain function call per packet: no bound-method wrapper
    assert f.match.__name__ == "_mx_filter"


def test_memoryview_addresses():
    p = pkt("10.0.0.1", "192.168.1.20", 40000, 80)
    p.src, p.dst = memoryview(p.src), memoryview(p.dst)
    assert compile_filter("net 10.0.0.0/8 and host 192.168.1.20").match(p)
    assert compile_filter("src net 10.0.0.1 mask 255.0.0.255").match(p)


# -- precedence -----------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    # and/or have equal precedence and associate to the left, as in pcap:
    # "tcp or udp and port 53" == "(tcp or udp) and port 53"
    ("tcp or udp and port 53", {"U4"}),
    ("(tcp or udp) and port 53", {"U4"}),
    ("tcp or (udp and port 53)", {"T4", "T4R", "T6", "U4"}),
    ("port 53 and udp or tcp", {"U4", "T4", "T4R", "T6"}),
    ("port 53 and (udp or tcp)", {"U4"}),
    ("icmp or tcp and ip6", {"I6", "T6"}),
    ("icmp or (tcp and ip6)", {"I4", "I6", "T6"}),
    # not binds tighter than and/or
    ("not tcp and ip", {"U4", "I4", "GRE4"}),
    ("not (tcp and ip)", {"T6", "U4", "U6", "I4", "I6", "GRE4", "NON_IP"}),
    ("not tcp or ip", {"T4", "T4R", "U4", "U6", "I4", "I6", "GRE4", "NON_IP"}),
    ("not (tcp or ip)", {"U6", "I6", "NON_IP"}),
    ("!tcp && !udp && ip", {"I4", "GRE4"}),
    ("! ( tcp || udp ) && ip", {"I4", "GRE4"}),
])
def test_precedence(text, expected):
    assert matching(text, raw=True) == expected


# -- empty filters, matches_everything, caching -----------------------------------------------

@pytest.mark.parametrize("text,raw,everything", [
    (None, False, True), ("", False, True), (" \t", True, True), ("tcp", False, True),
    ("tcp or port 80", False, True), ("tcp", True, False), ("not not tcp", False, True),
    ("port 80", False, False), ("portrange 0-65535", False, True),
    ("net 0.0.0.0/0", False, False), (None, True, True),
])
def test_matches_everything(text, raw, everything):
    f = compile_filter(text, raw=raw)
    assert isinstance(f, MonitorFilter)
    assert f.matches_everything is everything
    assert f.text == text and f.raw is raw


def test_none_raw_matches_anything():
    f = compile_filter(None, raw=True)
    assert all(f.match(p) for p in ALL.values())
    assert f.c_expr() == "(1)"


def test_stream_filter_is_tcp_only_even_when_empty():
    f = compile_filter(None)
    assert [n for n, p in ALL.items() if f.match(p)] == ["T4", "T4R", "T6"]
    assert "ip_proto == 6" in f.c_expr()


def test_compile_is_cached_and_accepts_bytes():
    assert compile_filter("port 80") is compile_filter("port 80")
    assert compile_filter("port 80") is not compile_filter("port 80", raw=True)
    assert compile_filter(b"port 80").match(T4)
    with pytest.raises(TypeError):
        compile_filter(80)
    with pytest.raises(FilterError, match="not ASCII"):
        compile_filter(b"port \xff")


def test_repr():
    assert repr(compile_filter("port 80", raw=True)) == "<MonitorFilter raw 'port 80'>"


# -- errors ---------------------------------------------------------------------------------

ERROR_CASES = [
    # (text, raw, fragment of the reason, offending token, 1-based position)
    ("tcp port 99999", False, "port 99999 out of range 0-65535", "99999", 3),
    ("port 65536", False, "out of range 0-65535", "65536", 2),
    ("port 1" + "0" * 5000, False, "out of range 0-65535", "1" + "0" * 5000, 2),
    ("port http", False, "bad port 'http'", "http", 2),
    ("port 1-2", False, "use 'portrange 1-2'", "1-2", 2),
    ("port -1", False, "bad port '-1'", "-1", 2),
    ("portrange 1024-80", False, "start 1024 greater than end 80", "1024-80", 2),
    ("portrange 80", False, "bad port range '80'", "80", 2),
    ("portrange 1-70000", False, "port 70000 out of range 0-65535", "1-70000", 2),
    ("portrange 1-2-3", False, "bad port range", "1-2-3", 2),
    ("host 1.2.3", False, "bad address '1.2.3'", "1.2.3", 2),
    ("host 1.2.3.256", False, "bad address '1.2.3.256'", "1.2.3.256", 2),
    ("host 10.0.0.0/8", False, "not a prefix", "10.0.0.0/8", 2),
    ("host 2001:db8:::1", False, "bad address", "2001:db8:::1", 2),
    ("host fe80::1%eth0", False, "unexpected character '%'", "%", None),
    ("net 10.1.2.3/8", False, "non-network bits set in '10.1.2.3/8'", "10.1.2.3/8", 2),
    ("net 10.0.0.0/33", False, "bad prefix length '/33'", "10.0.0.0/33", 2),
    ("net 2001:db8::/129", False, "bad prefix length '/129'", "2001:db8::/129", 2),
    ("net 10.0.0.0/x", False, "bad prefix length '/x'", "10.0.0.0/x", 2),
    ("net 10/8", False, "bad address '10'", "10/8", 2),
    ("net 10.0.0.0 mask 255.0.0", False, "bad mask '255.0.0'", "255.0.0", 4),
    ("net 10.1.0.0 mask 255.0.0.0", False, "non-network bits set in '10.1.0.0 mask 255.0.0.0'",
     "10.1.0.0", 2),
    ("net 10.0.0.0 mask ffff::", False, "mask 'ffff::' is IPv6", "ffff::", 4),
    ("net 10.0.0.0/8 mask 255.0.0.0", False, "'mask' cannot follow a prefix length", "mask", 3),
    ("net 10.0.0.0 mask", False, "missing mask after 'mask'", "mask", 3),
    ("net 10.0.0.0 mask and tcp", False, "missing mask after 'mask'", "and", 4),
    ("mask 255.0.0.0", False, "'mask' must follow 'net ADDR'", "mask", 1),
    ("foo", False, "unknown word 'foo'", "foo", 1),
    ("tcp and foo", False, "unknown word 'foo'", "foo", 3),
    ("tcp foo", False, "unknown word 'foo'", "foo", 2),
    ("(tcp foo)", False, "unknown word 'foo'", "foo", 3),
    ("tcp tcp", False, "unexpected 'tcp' after 'tcp'", "tcp", 2),
    ("port 80 443", False, "unexpected '443' after '80'", "443", 3),
    ("(port 80 443)", False, "unexpected '443'", "443", 4),
    ("80", False, "'80' needs a qualifier", "80", 1),
    ("tcp or 80", False, "'80' needs a qualifier", "80", 3),
    ("1-2", False, "needs a qualifier", "1-2", 1),
    ("src", False, "missing value after 'src'", "src", 1),
    ("src or dst", False, "missing value after 'dst'", "dst", 3),
    ("port", False, "missing value after 'port'", "port", 1),
    ("dst port and tcp", False, "expected a port after 'port', got 'and'", "and", 3),
    ("host tcp", False, "expected an address after 'host', got 'tcp'", "tcp", 2),
    ("src )", False, "got ')'", ")", 2),
    ("(tcp", False, "unbalanced '(': missing ')'", "(", 1),
    ("((tcp)", False, "unbalanced '('", "(", 1),
    ("tcp)", False, "unbalanced ')'", ")", 2),
    ("(tcp))", False, "unbalanced ')'", ")", 4),
    (")", False, "missing operand before ')'", ")", 1),
    ("()", False, "empty parentheses", "(", 1),
    ("tcp and ()", False, "empty parentheses", "(", 3),
    ("(tcp and)", False, "missing operand before ')'", ")", 4),
    ("tcp and", False, "missing operand after 'and'", "and", 2),
    ("tcp ||", False, "missing operand after '||'", "||", 2),
    ("and tcp", False, "missing operand before 'and'", "and", 1),
    ("tcp and or port 1", False, "missing operand before 'or'", "or", 3),
    ("not", False, "missing operand after 'not'", "not", 1),
    ("tcp and !", False, "missing operand after '!'", "!", 3),
    ("udp", False, "'udp' is only allowed in raw packet filters", "udp", 1),
    ("tcp or icmp", False, "'icmp' is only allowed in raw packet filters", "icmp", 3),
    ("ip", False, "'ip' is only allowed in raw", "ip", 1),
    ("ip6 host ::1", False, "'ip6' is only allowed in raw", "ip6", 1),
    ("ip proto 6", False, "'ip' is only allowed in raw", "ip", 1),
    ("proto 6", False, "'proto' is only allowed in raw", "proto", 1),
    ("not icmp6", False, "'icmp6' is only allowed in raw", "icmp6", 2),
    ("ip proto 256", True, "protocol 256 out of range 0-255", "256", 3),
    ("ip proto gre", True, "bad protocol 'gre'", "gre", 3),
    ("ip proto", True, "missing protocol number after 'proto'", "proto", 2),
    ("tcp proto 6", True, "'proto' must follow 'ip' or 'ip6', not 'tcp'", "proto", 2),
    ("ip host ::1", True, "'ip' cannot qualify an IPv6 address '::1'", "::1", 3),
    ("ip6 net 10.0.0.0/8", True, "'ip6' cannot qualify an IPv4 address", "10.0.0.0/8", 3),
    ("icmp6 host 10.0.0.1", True, "'icmp6' cannot qualify an IPv4 address", "10.0.0.1", 3),
    ("icmp port 7", True, "'icmp' cannot qualify 'port'", "icmp", 1),
    ("tcp port 80 = 1", False, "unexpected character '='", "=", None),
    ("tcp[13] & 2 != 0", False, "unexpected character '['", "[", None),
    ("port 80 or \"x\"", False, "unexpected character '\"'", '"', None),
]


@pytest.mark.parametrize("text,raw,reason,token,position", ERROR_CASES)
def test_errors(text, raw, reason, token, position):
    with pytest.raises(FilterError) as ei:
        compile_filter(text, raw=raw)
    e = ei.value
    assert isinstance(e, ValueError)
    msg = str(e)
    assert msg.startswith(f"bad filter {text!r}: ")
    assert reason in msg and reason in e.reason
    assert e.token == token
    assert e.position == position
    assert e.text == text
    if position is not None:
        assert msg.endswith(f" at token {position}")
        assert text[e.offset:].startswith(token)
    else:
        assert msg.endswith(f" at offset {e.offset}")
        assert text[e.offset] == token
    import errno
    assert e.errno == errno.EINVAL


def test_error_message_example_from_brief():
    with pytest.raises(FilterError) as ei:
        compile_filter("tcp port 99999")
    assert str(ei.value) == ("bad filter 'tcp port 99999': port 99999 out of range 0-65535 "
                             "at token 3")


def test_error_pickles():
    import pickle
    with pytest.raises(FilterError) as ei:
        compile_filter("port x")
    e = pickle.loads(pickle.dumps(ei.value))
    assert str(e) == str(ei.value) and e.position == 2 and e.token == "x"


def test_depth_limit():
    ok = "(" * (MAX_DEPTH - 2) + "port 80" + ")" * (MAX_DEPTH - 2)
    assert compile_filter(ok).match(T4)
    with pytest.raises(FilterError, match="nested too deeply"):
        compile_filter("(" * 500 + "tcp" + ")" * 500)
    with pytest.raises(FilterError, match="nested too deeply"):
        compile_filter("not " * 500 + "tcp")
    # alternating and/or nests to the left without parentheses
    alt = " ".join(f"port {i} {'and' if i % 2 else 'or'}" for i in range(1, 400)) + " port 1"
    with pytest.raises(FilterError, match="nested too deeply"):
        compile_filter(alt)


DEEP_PATTERNS = [
    lambda i, t: f"not (port {i} and ({t}))",     # not/and alternation: most parentheses
    lambda i, t: f"not (host 10.0.0.{i % 250} or {t})",
    lambda i, t: f"({t}) and port {i} or port {i + 1}",
    lambda i, t: f"(({t}))",
    lambda i, t: f"! {t}",
    lambda i, t: f"not (src net 2001:db8::/{i % 90 + 32} && !({t}))",
]


def deepest_legal(pattern):
    """Wrap a filter with `pattern` until it is refused; return the last accepted filter."""
    text, last = "port 1", None
    for i in range(200):
        try:
            f = compile_filter(text, raw=True)
        except FilterError as e:
            assert "nested too deeply" in str(e)
            return last, i
        last = f
        text = pattern(i, text)
    raise AssertionError("never refused")


@pytest.mark.parametrize("k", range(len(DEEP_PATTERNS)))
def test_deep_but_legal_filters_compile_in_python_and_c(k, tmp_path):
    f, levels = deepest_legal(DEEP_PATTERNS[k])
    assert levels >= 10
    for p in ALL.values():
        assert type(f.match(p)) is bool
    if GCC:
        src = tmp_path / "deep.c"
        src.write_text(C_PRELUDE + f"int f(struct mx_flow_view *v) {{ return {f.c_expr()}; }}\n")
        r = subprocess.run([GCC, "-fsyntax-only", *C_FLAGS, str(src)], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr[:2000]


def test_long_flat_filters():
    ports = [80, *range(1000, 3000)]
    f = compile_filter(" or ".join(f"port {i}" for i in ports))
    assert f.match(T4) and not f.match(T6)
    f = compile_filter(" and ".join(f"not port {i}" for i in ports), raw=True)
    assert f.match(T6) and not f.match(T4)


# -- C expression ---------------------------------------------------------------------------

C_PRELUDE = r"""
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef __u16 __be16;
struct mx_flow_view {
    __u8 ip_version;
    __u8 ip_proto;
    __be16 sport;
    __be16 dport;
    __u32 src[4];
    __u32 dst[4];
};
"""

C_FLAGS = ["-std=c11", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"]

# The XDP program's own definition of the struct (bpf/mosxdp.h: __be32 addresses, a pad).
REAL_HEADER = Path(__file__).resolve().parents[2] / "bpf" / "mosxdp.h"
PRELUDES = {"standalone": C_PRELUDE}
if REAL_HEADER.exists():
    PRELUDES["bpf/mosxdp.h"] = f'#include <linux/types.h>\n#include "{REAL_HEADER}"\n'


def test_c_expr_constants_and_byteorder():
    f = compile_filter("dst port 80")
    assert f.c_expr("little").endswith("v->dport == 0x5000)")
    assert f.c_expr("big").endswith("v->dport == 0x0050)")
    f = compile_filter("host 10.0.0.1", raw=True)
    assert "0x0100000aU" in f.c_expr("little")
    assert "0x0a000001U" in f.c_expr("big")
    assert f.c_expr() == f.c_expr(sys.byteorder)
    with pytest.raises(ValueError):
        f.c_expr("middle")


SYNTAX_FILTERS = [text for text, _ in STREAM_CASES] + [text for text, _ in RAW_CASES]


@needs_gcc
@pytest.mark.parametrize("prelude", list(PRELUDES))
def test_c_expr_is_valid_c(tmp_path, prelude):
    funcs = []
    for i, text in enumerate(SYNTAX_FILTERS):
        f = compile_filter(text, raw=True)
        for bo in ("little", "big"):
            funcs.append(f"int f{i}_{bo}(struct mx_flow_view *v) {{ return {f.c_expr(bo)}; }}")
        if text is None or " udp" not in f" {text}" and "ip" not in (text or "") \
                and "icmp" not in (text or "") and "proto" not in (text or ""):
            funcs.append(f"int s{i}(struct mx_flow_view *v) "
                         f"{{ return {compile_filter(text).c_expr()}; }}")
    src = tmp_path / "syntax.c"
    src.write_text(PRELUDES[prelude] + "\n".join(funcs) + "\n")
    r = subprocess.run([GCC, "-fsyntax-only", *C_FLAGS, str(src)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[:4000]


def _c_bytes(b):
    return "{" + ", ".join(str(x) for x in b) + "}"


def run_c_harness(tmp_path, filters, packets, prelude=C_PRELUDE):
    """Evaluate each filter's C expression on each packet with gcc; returns rows of 0/1."""
    rows = []
    for p in packets:
        ver = p.ip_version
        if ver:
            src, dst = p.src.ljust(16, b"\0"), p.dst.ljust(16, b"\0")
            proto = p.ip_proto
        else:
            src = dst = b"\0" * 16
            proto = 0
        sport = getattr(p, "sport", 0).to_bytes(2, "big")
        dport = getattr(p, "dport", 0).to_bytes(2, "big")
        rows.append(f"{{{ver}, {proto}, {_c_bytes(sport)}, {_c_bytes(dport)}, "
                    f"{_c_bytes(src)}, {_c_bytes(dst)}}}")
    funcs = [f"static int f{i}(struct mx_flow_view *v) {{ return {f.c_expr()}; }}"
             for i, f in enumerate(filters)]
    src = prelude + r"""
#include <stdio.h>
#include <string.h>
struct raw { unsigned char ver, proto, sport[2], dport[2], src[16], dst[16]; };
static const struct raw pkts[] = {
""" + ",\n".join(rows) + "\n};\n" + "\n".join(funcs) + """
static int (*const fs[])(struct mx_flow_view *) = {""" + ", ".join(
        f"f{i}" for i in range(len(filters))) + r"""};
int main(void) {
    for (unsigned i = 0; i < sizeof pkts / sizeof pkts[0]; i++) {
        struct mx_flow_view v;
        memset(&v, 0, sizeof v);
        v.ip_version = pkts[i].ver;
        v.ip_proto = pkts[i].proto;
        memcpy(&v.sport, pkts[i].sport, 2);
        memcpy(&v.dport, pkts[i].dport, 2);
        memcpy(v.src, pkts[i].src, 16);
        memcpy(v.dst, pkts[i].dst, 16);
        for (unsigned k = 0; k < sizeof fs / sizeof fs[0]; k++)
            putchar(fs[k](&v) ? '1' : '0');
        putchar('\n');
    }
    return 0;
}
"""
    c = tmp_path / "harness.c"
    exe = tmp_path / "harness"
    c.write_text(src)
    r = subprocess.run([GCC, "-O1", *C_FLAGS, "-o", str(exe), str(c)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[:4000]
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return [[ch == "1" for ch in line] for line in out.split()]


@needs_gcc
@pytest.mark.parametrize("prelude", list(PRELUDES))
def test_c_expr_agrees_with_match_on_the_tables(tmp_path, prelude):
    filters = [compile_filter(t) for t, _ in STREAM_CASES]
    filters += [compile_filter(t, raw=True) for t, _ in STREAM_CASES + RAW_CASES]
    packets = list(ALL.values()) + EXTRA_PACKETS
    table = run_c_harness(tmp_path, filters, packets, PRELUDES[prelude])
    for p, row in zip(packets, table):
        for f, c_result in zip(filters, row):
            assert f.match(p) == c_result, (f, p, f.c_expr())


# -- generated filters against an independent oracle ------------------------------------------

ADDRS4 = ["10.0.0.1", "10.0.0.2", "10.1.2.3", "192.168.1.20", "192.168.1.200", "8.8.8.8",
          "172.16.5.4", "0.0.0.0", "255.255.255.255"]
ADDRS6 = ["2001:db8::1", "2001:db8:1::80", "2001:db8:8000::1", "fe80::1", "ff02::fb", "::1",
          "::", "ffff:ffff::1"]
NETS4 = ["10.0.0.0/8", "10.0.0.0/30", "192.168.1.0/24", "192.168.1.128/25", "0.0.0.0/0",
         "172.16.0.0/12", "10.0.0.2/31", "8.8.8.8/32", "192.168.0.0/20"]
NETS6 = ["2001:db8::/32", "2001:db8:8000::/33", "fe80::/10", "ff00::/8", "::/0", "::1/128",
         "2001:db8::/47", "ffff:fffe::/31"]
MASKS4 = [("10.0.0.0", "255.0.0.0"), ("192.0.1.0", "255.0.255.0"), ("0.0.0.2", "0.0.0.3"),
          ("8.8.8.8", "255.255.255.255")]
PORTS = [0, 1, 22, 53, 80, 443, 1023, 1024, 5353, 40000, 65535]
PROTOS = [TCP, UDP, ICMP, ICMP6, 47]


def _packets(rng, n):
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.05:
            out.append(NON_IP)
            continue
        pool = ADDRS4 if r < 0.55 else ADDRS6
        proto = rng.choice(PROTOS)
        if proto == ICMP and pool is ADDRS6:
            proto = ICMP6
        out.append(pkt(rng.choice(pool), rng.choice(pool), rng.choice(PORTS),
                       rng.choice(PORTS), proto))
    return out


EXTRA_PACKETS = _packets(random.Random(7), 60)


def _ip(p, side):
    return ipaddress.ip_address(bytes(getattr(p, side)))


def _dir_fn(dirq, fn):
    """fn(p, side) -> bool, combined per the direction qualifier."""
    if dirq == "src":
        return lambda p: fn(p, "src")
    if dirq == "dst":
        return lambda p: fn(p, "dst")
    if dirq in ("", "src or dst", "dst or src"):
        return lambda p: fn(p, "src") or fn(p, "dst")
    return lambda p: fn(p, "src") and fn(p, "dst")


def _is_ip(p):
    return p.ip_version in (4, 6)


def _has_ports(p):
    return _is_ip(p) and p.ip_proto in (TCP, UDP)


def gen_filter(rng, raw, depth=0):
    """A random filter text and an oracle predicate for it, written independently of the
    compiler (ipaddress for addresses, composites always parenthesized)."""
    if depth < 3 and rng.random() < 0.45:
        kind = rng.choice(["not", "and", "or"])
        a_text, a_fn = gen_filter(rng, raw, depth + 1)
        if kind == "not":
            word = rng.choice(["not", "!"])
            return f"{word} ({a_text})", lambda p: not a_fn(p)
        b_text, b_fn = gen_filter(rng, raw, depth + 1)
        if kind == "and":
            word = rng.choice(["and", "&&", "&", "AND"])
            return f"({a_text}) {word} ({b_text})", lambda p: a_fn(p) and b_fn(p)
        word = rng.choice(["or", "||", "|"])
        return f"({a_text}) {word} ({b_text})", lambda p: a_fn(p) or b_fn(p)
    dirq = rng.choice(["", "src", "dst", "src or dst", "dst or src", "src and dst"])
    dq = f"{dirq} " if dirq else ""
    choices = ["tcp", "host", "net", "port", "portrange", "tcpport"]
    if raw:
        choices += ["udp", "icmp", "ip", "ip6", "proto", "mask", "udpport"]
    c = rng.choice(choices)
    if c == "tcp":
        return "tcp", lambda p: _is_ip(p) and p.ip_proto == TCP
    if c == "udp":
        return "udp", lambda p: _is_ip(p) and p.ip_proto == UDP
    if c == "icmp":
        return "icmp", lambda p: (p.ip_version == 4 and p.ip_proto == ICMP) or \
            (p.ip_version == 6 and p.ip_proto == ICMP6)
    if c in ("ip", "ip6"):
        v = 4 if c == "ip" else 6
        return c, lambda p: p.ip_version == v
    if c == "proto":
        n = rng.choice(PROTOS)
        pre = rng.choice(["ip", "ip6", ""])
        if pre == "":
            return f"proto {n}", lambda p: _is_ip(p) and p.ip_proto == n
        v = 4 if pre == "ip" else 6
        return f"{pre} proto {n}", lambda p: p.ip_version == v and p.ip_proto == n
    if c == "host":
        a = ipaddress.ip_address(rng.choice(ADDRS4 + ADDRS6))
        kw = rng.choice(["host ", ""]) if dirq else "host "
        return f"{dq}{kw}{a}", _dir_fn(dirq, lambda p, s: p.ip_version == a.version
                                       and _ip(p, s) == a)
    if c == "net":
        n = ipaddress.ip_network(rng.choice(NETS4 + NETS6))
        return f"{dq}net {n}", _dir_fn(dirq, lambda p, s: p.ip_version == n.version
                                       and _ip(p, s) in n)
    if c == "mask":
        a, m = rng.choice(MASKS4)
        ai, mi = int(ipaddress.ip_address(a)), int(ipaddress.ip_address(m))
        return f"{dq}net {a} mask {m}", _dir_fn(
            dirq, lambda p, s: p.ip_version == 4 and int(_ip(p, s)) & mi == ai)
    if c in ("port", "tcpport", "udpport"):
        n = rng.choice(PORTS)
        pre = {"port": "", "tcpport": "tcp ", "udpport": "udp "}[c]
        proto_ok = {"port": _has_ports, "tcpport": lambda p: _is_ip(p) and p.ip_proto == TCP,
                    "udpport": lambda p: _is_ip(p) and p.ip_proto == UDP}[c]
        f = _dir_fn(dirq, lambda p, s: getattr(p, s[0] + "port") == n)
        return f"{pre}{dq}port {n}", lambda p: proto_ok(p) and f(p)
    lo, hi = sorted((rng.choice(PORTS), rng.choice(PORTS)))
    f = _dir_fn(dirq, lambda p, s: lo <= getattr(p, s[0] + "port") <= hi)
    return f"{dq}portrange {lo}-{hi}", lambda p: _has_ports(p) and f(p)


def _oracle(raw, fn):
    if raw:
        return fn
    return lambda p: _is_ip(p) and p.ip_proto == TCP and fn(p)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), raw=st.booleans())
def test_generated_filters_match_oracle(seed, raw):
    rng = random.Random(seed)
    text, fn = gen_filter(rng, raw)
    f = compile_filter(text, raw=raw)
    oracle = _oracle(raw, fn)
    for p in list(ALL.values()) + EXTRA_PACKETS:
        assert f.match(p) == oracle(p), (text, p, f.source)


@needs_gcc
def test_generated_filters_c_agrees_with_match(tmp_path):
    rng = random.Random(20240601)
    filters, oracles = [], []
    for i in range(250):
        raw = i % 2 == 0
        text, fn = gen_filter(rng, raw)
        filters.append(compile_filter(text, raw=raw))
        oracles.append(_oracle(raw, fn))
    packets = list(ALL.values()) + _packets(random.Random(11), 80)
    table = run_c_harness(tmp_path, filters, packets)
    assert len(table) == len(packets)
    for p, row in zip(packets, table):
        for f, oracle, c_result in zip(filters, oracles, row):
            expected = oracle(p)
            assert f.match(p) == expected, (f.text, p)
            assert c_result == expected, (f.text, p, f.c_expr())


# -- robustness: token soup -----------------------------------------------------------------

SOUP = ["tcp", "udp", "ip", "ip6", "icmp", "icmp6", "proto", "src", "dst", "host", "net",
        "mask", "port", "portrange", "and", "or", "not", "&&", "||", "&", "|", "!", "(", ")",
        "10.0.0.1", "10.0.0.0/8", "10.1.0.0/8", "::1", "fe80::/10", "2001:db8::/129",
        "255.255.0.0", "ffff::", "80", "0", "65535", "65536", "99999999999999999999",
        "1-1024", "1024-1", "1-2-3", "foo", "-", "/", ".", ":", "1.2.3", "/8", "tcp[",
        "=", "\"", "é", "", " ", "\t"]


@settings(max_examples=1500, deadline=None)
@given(tokens=st.lists(st.sampled_from(SOUP), max_size=14), raw=st.booleans(),
       glue=st.sampled_from([" ", "", "  "]))
def test_token_soup_never_crashes(tokens, raw, glue):
    text = glue.join(tokens)
    try:
        f = compile_filter(text, raw=raw)
    except FilterError as e:
        assert str(e).startswith("bad filter ")
        return
    for p in ALL.values():
        assert type(f.match(p)) is bool
    assert isinstance(f.c_expr(), str) and isinstance(f.c_expr("big"), str)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40), raw=st.booleans())
def test_arbitrary_text_never_crashes(text, raw):
    try:
        f = compile_filter(text, raw=raw)
    except FilterError:
        return
    for p in ALL.values():
        assert type(f.match(p)) is bool


# -- with the real parser ---------------------------------------------------------------------

def test_on_parsed_frames():
    from mosxdp.core.frames import build_tcp_frame
    from mosxdp.core.packet import parse_frame
    mac = b"\x02\0\0\0\0\x01"

    def frame(src, dst, sport, dport, **kw):
        s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
        return parse_frame(memoryview(build_tcp_frame(mac, mac, s, d, sport, dport, 1, 0,
                                                      0x02, 65535, **kw)))

    p4 = frame("10.0.0.1", "192.168.1.20", 40000, 80, vlan_ids=(7,))
    p6 = frame("2001:db8::1", "2001:db8:1::80", 50000, 443)
    arp = parse_frame(memoryview(bytearray(mac + mac + b"\x08\x06" + b"\0" * 28)))
    for text, raw, expected in [
        ("tcp port 80 and src net 10.0.0.0/8", False, (True, False, False)),
        ("dst net 2001:db8:1::/48 and dst port 443", False, (False, True, False)),
        (None, False, (True, True, False)),
        ("not ip and not ip6", True, (False, False, True)),
        ("host 192.168.1.20 or 2001:db8::1", True, (True, True, False)),
    ]:
        f = compile_filter(text, raw=raw)
        assert (f.match(p4), f.match(p6), f.match(arp)) == expected, text
