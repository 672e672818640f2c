"""bpfstructs.py against the compiled program: struct sizes and field offsets (from the
types bcc derives for the map keys and values), constants and counter names (from the
header text and the maps' sizes). A hand-kept mirror that drifts fails here."""
from __future__ import annotations

import ctypes as ct
import re

import pytest

from mosxdp.io import bpfstructs as bs
from mosxdp.io import libbpf, xdp

pytestmark = pytest.mark.bpf

HEADER = (xdp.BPF_DIR / "mosxdp.h").read_text()

PROBE = b"""
#include "mosxdp.h"
BPF_ARRAY(p_view, struct mx_flow_view, 1);
BPF_ARRAY(p_key, struct mx_flow_key, 1);
BPF_ARRAY(p_verdict, struct mx_verdict, 1);
BPF_ARRAY(p_cfg, struct mx_if_config, 1);
BPF_ARRAY(p_obs, struct mx_observed, 1);
int probe(struct xdp_md *ctx) { return XDP_PASS; }
"""


@pytest.fixture(scope="module")
def layout(bpf_env):
    from bcc import BPF
    b = BPF(text=PROBE, cflags=["-I" + str(xdp.BPF_DIR)])
    types = {n: b[n.encode()].Leaf for n in ("p_view", "p_key", "p_verdict", "p_cfg", "p_obs")}
    yield types
    b.cleanup()


@pytest.fixture(scope="module")
def prog(bpf_env):
    with xdp.compile_program() as p:
        yield p


def assert_same_layout(mirror, compiled):
    assert ct.sizeof(mirror) == ct.sizeof(compiled), mirror.__name__
    cfields = [f[0] for f in compiled._fields_ if not f[0].startswith("__pad")]
    mfields = [f[0] for f in mirror._fields_]
    assert mfields == cfields, mirror.__name__
    for name in mfields:
        m, c = getattr(mirror, name), getattr(compiled, name)
        assert (m.offset, m.size) == (c.offset, c.size), "%s.%s" % (mirror.__name__, name)


@pytest.mark.parametrize("mirror,probe", [
    (bs.MxFlowView, "p_view"), (bs.MxFlowKey, "p_key"),
    (bs.MxVerdict, "p_verdict"), (bs.MxIfConfig, "p_cfg"), (bs.MxObserved, "p_obs"),
])
def test_struct_layouts_match_the_header(layout, mirror, probe):
    assert_same_layout(mirror, layout[probe])


def test_program_map_types_match_the_mirrors(prog):
    t = prog.tables
    assert_same_layout(bs.MxFlowKey, t["verdicts"].Key)
    assert_same_layout(bs.MxVerdict, t["verdicts"].Leaf)
    assert_same_layout(bs.MxIfConfig, t["if_config"].Leaf)
    assert ct.sizeof(t["if_config"].Key) == 4
    assert t["counters"].max_entries == len(bs.COUNTER_NAMES)
    assert t["xsks_map"].max_entries == bs.MX_XSKMAP_SIZE
    assert t["tx_ports"].max_entries == bs.MX_MAX_SLOTS
    assert t["verdicts"].max_entries == bs.MX_VERDICT_ENTRIES
    assert t["if_config"].max_entries == bs.MX_MAX_IFACES


def header_defines() -> dict[str, int]:
    raw = dict(re.findall(r"^#define\s+(MX_\w+)\s+(.+?)\s*(?:/\*.*)?$", HEADER, re.M))
    values: dict[str, int] = {}

    def ev(name):
        if name not in values:
            expr = re.sub(r"(\d+)U\b", r"\1", raw[name])
            expr = re.sub(r"\bMX_\w+\b", lambda m: str(ev(m.group(0))), expr)
            assert re.fullmatch(r"[\d\s()<>*+|-]+", expr), (name, expr)
            values[name] = eval(expr)  # digits and operators only
        return values[name]

    for n in raw:
        ev(n)
    return values


def test_constants_match_the_header():
    defines = header_defines()
    assert len(defines) >= 15
    for name, value in defines.items():
        assert getattr(bs, name) == value, name


def test_counter_names_match_the_enum():
    body = re.search(r"enum mx_counter \{(.*?)\};", HEADER, re.S).group(1)
    names = re.findall(r"^\s*MX_CNT_(\w+)", body, re.M)
    assert names[-1] == "_MAX"
    assert tuple(n.lower() for n in names[:-1]) == bs.COUNTER_NAMES
    assert set(bs.ACTION_COUNTERS) <= set(bs.COUNTER_NAMES)


def test_make_flow_key_orders_like_the_kernel():
    # byte order of the key, independent of the program (the kernel side is covered by
    # the verdict tests, which look up keys built here)
    k, d = bs.make_flow_key(bytes([10, 0, 0, 2]), 80, bytes([10, 0, 0, 1]), 40000)
    assert d == bs.MX_DIR_FROM_HI
    raw = bytes(k)
    assert raw[0:4] == bytes([10, 0, 0, 1]) and raw[16:20] == bytes([10, 0, 0, 2])
    assert raw[32:36] == (40000).to_bytes(2, "big") + (80).to_bytes(2, "big")
    assert k.lo_port == 40000 and k.hi_port == 80
    k6, d6 = bs.make_flow_key(bytes(15) + b"\x01", 5, bytes(15) + b"\x01", 4, vlan_ids=(4095, 7, 9))
    assert d6 == bs.MX_DIR_FROM_HI and (k6.lo_port, k6.hi_port) == (4, 5)
    assert (k6.vlan_outer, k6.vlan_inner, k6.ip_version, k6.ip_proto) == (4095, 7, 6, 6)
    with pytest.raises(ValueError):
        bs.make_flow_key(bytes(4), 1, bytes(16), 2)


def test_redirect_error_counting_is_told_the_program_maps(prog):
    assert prog.count_redirect_errors() is None
    ids = prog.bpf[b"redirect_maps"]
    assert [ids[ids.Key(i)].value for i in (bs.MX_REDIRECT_MAP_XSK, bs.MX_REDIRECT_MAP_DEVMAP)] == \
        [libbpf.map_id(prog.maps.fds["xsks_map"]), libbpf.map_id(prog.maps.fds["tx_ports"])]
    assert ids.max_entries == bs.MX_REDIRECT_MAPS
