"""The offline model of the kernel's verdicts (mosxdp/engine/kernel_twin.py, _kerneltwin.c).

* the key a claimed frame is looked up by is the program's (make_flow_key), both
  directions, IPv4 and IPv6, untagged and with one or two VLAN tags;
* claim counts what bpf/mosxdp.c counts and sends on what it sends on (SYN, FIN, RST, the
  ACK watch), the C step and the Python step alike, also on fuzzed frames;
* a frame that parse_frame does not read whole (or reads otherwise) is never claimed;
* offline runs give the same outputs with the twin as without it (every frame through the
  core) on every capture of tests/data: flows handed over after a depth (connlog, eve),
  after their sessions (zeeklog), dropped and accepted by a firewall, and the flows of
  state-only and stream-only listeners fast-forwarded (connlog, midstat, flowdump);
* fast forward takes exactly the regular frames (in order, acknowledging what was seen,
  inside the window; no SYN, FIN, RST, URG) and stops at any other, the C step and the
  Python step alike.
"""
from __future__ import annotations

import ctypes as ct
import filecmp
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mosxdp import cli
from mosxdp.core.frames import build_tcp_frame
from mosxdp.core.packet import PacketError, parse_frame
from mosxdp.engine import offline
from mosxdp.engine.kernel_twin import KernelTwin, TwinRecord, claim_python
from mosxdp.io.bpfstructs import MX_WATCH_ANY, make_flow_key
from mosxdp.io.pcap import PcapReader

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
CAPTURES = sorted(DATA.glob("*.pcap")) + sorted((DATA / "sessions").glob("*.pcap"))

try:
    from mosxdp.engine import _kerneltwin
    STEPS = {"c": _kerneltwin.claim, "python": claim_python}
except ImportError:        # not built (pure-Python runs): the Python step alone
    _kerneltwin = None
    STEPS = {"python": claim_python}

MAC_A, MAC_B = b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02"
V4 = (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
V6 = (bytes.fromhex("fd000000000000000000000000000001"),
      bytes.fromhex("fd000000000000000000000000000002"))
SYN, FIN, RST, PSH, ACK = 0x02, 0x01, 0x04, 0x08, 0x10


def frame(src, dst, sport, dport, seq, ack, flags, payload=b"", vlan_ids=()):
    return bytearray(build_tcp_frame(MAC_B, MAC_A, src, dst, sport, dport, seq, ack, flags,
                                     65535, payload, vlan_ids=vlan_ids))


class Flow:
    """What the table's second item stands for (the loop only needs it back)."""


def table_for(src, dst, sport, dport, vlan_ids=(), action="bypass", **kw):
    twin = KernelTwin()
    flow = Flow()
    key, cli_dir = make_flow_key(src, sport, dst, dport, vlan_ids=vlan_ids)
    twin.install(key, action, flow, **kw)
    return twin, key, cli_dir, flow


def record(twin, key):
    return TwinRecord.from_buffer_copy(twin.table[bytes(key)][0])


def test_the_c_record_is_the_python_record():
    if _kerneltwin is None:
        pytest.skip("the C step is not built")
    assert _kerneltwin.RECORD_SIZE == ct.sizeof(TwinRecord)
    assert _kerneltwin.KEY_SIZE == len(bytes(make_flow_key(*V4[:1], 1, V4[1], 2)[0]))


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("addrs", [V4, V6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("vlan_ids", [(), (7,), (7, 300)], ids=["untagged", "vlan", "qinq"])
def test_a_data_frame_of_an_entry_is_counted_in_its_direction(step, addrs, vlan_ids):
    claim = STEPS[step]
    src, dst = addrs
    twin, key, cli_dir, flow = table_for(src, dst, 40000, 80, vlan_ids)
    out = frame(src, dst, 40000, 80, 1000, 5000, ACK | PSH, b"x" * 100, vlan_ids)
    back = frame(dst, src, 80, 40000, 5000, 1100, ACK, b"", vlan_ids)
    assert claim(twin.table, memoryview(out), 7, 1) is flow
    assert claim(twin.table, memoryview(back), 9, 2) is flow
    rec = record(twin, key)
    pkt = parse_frame(memoryview(out))
    assert list(rec.packets) == [1, 1]
    assert rec.bytes[cli_dir] == 100 and rec.bytes[1 - cli_dir] == 0
    assert rec.ip_bytes[cli_dir] == pkt.ip_len and rec.frame_bytes[cli_dir] == len(out)
    assert rec.frame_bytes[1 - cli_dir] == len(back)
    assert rec.seq_end[cli_dir] == 1100 and rec.seq_end[1 - cli_dir] == 5000
    assert (rec.first_data_ns[cli_dir], rec.first_ack_ns[1 - cli_dir]) == (1, 2)
    assert rec.last_seen_ns == 9000
    assert rec.tcp_flags[cli_dir] == ACK | PSH and rec.tcp_flags[1 - cli_dir] == ACK
    # another flow (a port, a tag, the other IP version) is not this entry's
    for other in (frame(src, dst, 40001, 80, 1, 1, ACK, b"y", vlan_ids),
                  frame(src, dst, 40000, 80, 1, 1, ACK, b"y", (9,))):
        assert claim(twin.table, memoryview(other), 10, 3) is None


@pytest.mark.parametrize("step", STEPS)
def test_syn_fin_rst_go_on_and_the_ack_watch_takes_the_ack_of_a_fin(step):
    claim = STEPS[step]
    src, dst = V4
    twin, key, cli_dir, flow = table_for(src, dst, 40000, 80)
    fin = frame(src, dst, 40000, 80, 2000, 7000, FIN | ACK)
    assert claim(twin.table, memoryview(fin), 1, 1) is None
    # the server's data before acknowledging the FIN is the kernel's; its ACK of it is not
    assert claim(twin.table, memoryview(frame(dst, src, 80, 40000, 7000, 2000, ACK, b"z")),
                 2, 2) is flow
    assert claim(twin.table, memoryview(frame(dst, src, 80, 40000, 7001, 2001, ACK)), 3, 3) is None
    # then the watch is spent: the next ACK is counted
    assert claim(twin.table, memoryview(frame(dst, src, 80, 40000, 7001, 2001, ACK)), 4, 4) is flow
    rst = frame(dst, src, 80, 40000, 7001, 2001, RST)
    assert claim(twin.table, memoryview(rst), 5, 5) is None
    assert list(record(twin, key).packets) == [0, 2] if cli_dir == 0 else [2, 0]


@pytest.mark.parametrize("step", STEPS)
def test_watch_any_and_a_pending_watch_from_install(step):
    claim = STEPS[step]
    src, dst = V4
    twin, key, cli_dir, flow = table_for(src, dst, 40000, 80, action="state_only",
                                         watch_any=make_flow_key(src, 40000, dst, 80)[1])
    assert record(twin, key).watch_armed[cli_dir] == MX_WATCH_ANY
    ack = frame(src, dst, 40000, 80, 1001, 5001, ACK)
    assert claim(twin.table, memoryview(ack), 1, 1) is None      # the first ACK goes on
    assert claim(twin.table, memoryview(ack), 2, 2) is flow
    # an entry made with a pending FIN's watch (the emulation saw the FIN first)
    watches = [None, None]
    watches[1 - cli_dir] = 9001
    twin2, key2, _, flow2 = table_for(src, dst, 40000, 80, watches=watches)
    early = frame(dst, src, 80, 40000, 100, 9000, ACK)
    late = frame(dst, src, 80, 40000, 100, 9001, ACK)
    assert claim(twin2.table, memoryview(early), 1, 1) is flow2
    assert claim(twin2.table, memoryview(late), 2, 2) is None


def _malformed():
    src, dst = V4
    good = frame(src, dst, 40000, 80, 1, 1, ACK, b"abc")
    out = {}
    out["truncated"] = good[:40]
    bad = bytearray(good)
    bad[14] = 0x44                      # IHL 4
    out["ihl"] = bad
    bad = bytearray(good)
    bad[20] = 0x20                      # more fragments
    out["fragment"] = bad
    bad = bytearray(good)
    bad[16:18] = (2000).to_bytes(2, "big")   # IP length past the frame
    out["ip_length"] = bad
    bad = bytearray(good)
    bad[14 + 20 + 12] = 0x40            # TCP data offset 4
    out["doff"] = bad
    out["three_tags"] = frame(src, dst, 40000, 80, 1, 1, ACK, b"abc", (5, 6, 7))
    out["vlan_0"] = frame(src, dst, 40000, 80, 1, 1, ACK, b"abc", (0,))
    s6, d6 = V6
    ext = bytearray(frame(s6, d6, 40000, 80, 1, 1, ACK, b"abc"))
    ext[14 + 6] = 60                    # a destination options header before TCP
    out["ipv6_extension"] = ext
    return out


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("name", list(_malformed()))
def test_frames_not_read_whole_go_to_the_core(step, name):
    bad = _malformed()[name]
    twin = KernelTwin()
    src, dst = V4
    for addrs, tags in ((V4, ()), (V6, ()), (V4, (5, 6)), (V4, (5,))):
        key, _ = make_flow_key(addrs[0], 40000, addrs[1], 80, vlan_ids=tags)
        twin.install(key, "bypass", Flow())
    assert STEPS[step](twin.table, memoryview(bad), 1, 1) is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 63), st.integers(0, 2 ** 32 - 1),
                          st.integers(0, 2 ** 32 - 1), st.binary(max_size=40),
                          st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)),
                                   max_size=2)),
                min_size=1, max_size=25))
def test_fuzzed_frames_the_c_step_is_the_python_step(frames):
    if _kerneltwin is None:
        pytest.skip("the C step is not built")
    src, dst = V4
    twins = []
    for _ in range(2):
        twin, key, cli_dir, flow = table_for(src, dst, 40000, 80, action="state_only",
                                             watch_any=make_flow_key(src, 40000, dst, 80)[1])
        twins.append((twin, flow))
    for number, (out, flags, seq, ack, payload, flips) in enumerate(frames, 1):
        a, b = (src, dst) if out else (dst, src)
        f = frame(a, b, 40000 if out else 80, 80 if out else 40000, seq, ack, flags, payload)
        for pos, value in flips:         # mutations: some frames become malformed
            if pos < len(f):
                f[pos] = value
        got = []
        for (twin, flow), step in zip(twins, (_kerneltwin.claim, claim_python)):
            got.append(step(twin.table, memoryview(bytearray(f)), number * 3, number) is flow)
        assert got[0] == got[1]
        if got[0]:
            pkt = parse_frame(memoryview(bytearray(f)))    # what is claimed parses
            assert pkt.ip_proto == 6 and not pkt.flags & (SYN | FIN | RST)
        assert {k: bytes(v[0]) for k, v in twins[0][0].table.items()} == \
            {k: bytes(v[0]) for k, v in twins[1][0].table.items()}


def test_claimed_frames_parse_to_the_same_counts():
    """Every frame of the captures that the C step claims is one parse_frame reads whole,
    and the counts are parse_frame's."""
    step = STEPS.get("c", claim_python)
    for path in CAPTURES:
        with PcapReader(path) as reader:
            frames = [bytearray(f) for _ts, f in reader]
        for f in frames:
            try:
                pkt = parse_frame(memoryview(f))
            except PacketError:
                pkt = None
            twin = KernelTwin()
            if pkt is not None and pkt.ip_proto == 6 and not pkt.is_fragment:
                key, d = make_flow_key(pkt.src, pkt.sport, pkt.dst, pkt.dport,
                                       vlan_ids=pkt.vlan_ids)
                twin.install(key, "bypass", Flow())
            got = step(twin.table, memoryview(f), 1, 1)
            if got is None:
                continue
            assert pkt is not None and not pkt.flags & (SYN | FIN | RST), path
            rec = record(twin, key)
            assert (rec.packets[d], rec.bytes[d], rec.ip_bytes[d], rec.frame_bytes[d]) == \
                (1, pkt.payload_len, pkt.ip_len, pkt.frame_len), path


# ----------------------------------------------------------------------------- end to end
RUNS = {
    # MOSX_STATE_ONLY listeners: their flows fast-forwarded; MOSX_STREAM_ONLY: with payload
    "connlog": lambda d: ["connlog", "--output", d / "conn.log"],
    "midstat": lambda d: ["midstat", "--json", "--output", d / "midstat.json"],
    "flowdump": lambda d: ["flowdump", "--outdir", d / "flows"],
    "connlog-depth": lambda d: ["connlog", "--bypass-after-bytes", "500", "--output", d / "conn.log"],
    "zeeklog": lambda d: ["zeeklog", "--logdir", d],
    "eve-depth": lambda d: ["eve", "--bypass-after-bytes", "1000", "--output", d / "eve.json"],
    "firewall": lambda d: ["simple_firewall", "--rules", _rules(d), "--stats-output",
                           d / "stats.json"],
}


def _rules(d: Path) -> Path:
    """Drop the flows to port 8080 (a drop verdict from their SYN on), accept the rest."""
    path = d / "rules.conf"
    path.write_text("DROP 0.0.0.0 0.0.0.0 dport:8080\nACCEPT 0.0.0.0 0.0.0.0\n")
    return path


def _run(argv, out: Path, capture: Path, *extra):
    code = cli.main(["run", *map(str, argv), "--pcap", str(capture), "--write",
                     str(out / "out.pcap"), *extra])
    assert code == 0, (argv, capture)


def _same_tree(a: Path, b: Path):
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files, \
        (cmp.left_only, cmp.right_only, cmp.diff_files)
    for sub in cmp.common_dirs:
        _same_tree(a / sub, b / sub)


@pytest.mark.parametrize("run", RUNS)
def test_outputs_with_the_twin_equal_those_without(run, tmp_path, monkeypatch, capsys):
    claimed = []
    step = offline.claim

    def counted(*args):
        flow = step(*args)
        claimed.append(flow is not None)
        return flow

    for capture in CAPTURES:
        name = capture.stem
        for kind in ("twin", "core"):
            (tmp_path / name / kind).mkdir(parents=True)
        with monkeypatch.context() as m:
            m.setattr(offline, "claim", counted)
            _run(RUNS[run](tmp_path / name / "twin"), tmp_path / name / "twin", capture)
        with monkeypatch.context() as m:   # every frame through the core
            m.setattr(offline, "claim", lambda *a: None)
            _run(RUNS[run](tmp_path / name / "core"), tmp_path / name / "core", capture)
        _same_tree(tmp_path / name / "twin", tmp_path / name / "core")
    assert sum(claimed) > 1000, run      # the twin took its part of the frames
    capsys.readouterr()


# ----------------------------------------------------------------------------- fast forward
def ff_table(src, dst, sport, dport, nxt, edges=(None, None), shift=(0, 0), moves=True,
             data_ok=(1, 1)):
    """A FAST_FORWARD entry loaded as TwinProcessor._ff_reload loads it: per direction of
    the data (client's first), the next sequence number, the window's right edge, and
    whether frames with payload are taken."""
    twin = KernelTwin()
    flow = Flow()
    key, cli_dir = make_flow_key(src, sport, dst, dport)
    rec = TwinRecord.from_buffer(twin.install_fast_forward(key, flow))
    dirs = (cli_dir, 1 - cli_dir)
    for i, d in enumerate(dirs):
        rec.ff_next[d] = nxt[i]
        if edges[i] is not None:
            rec.ff_edge[d], rec.ff_edge_known[d] = edges[i], 1
        rec.ff_shift[d] = shift[i]
        rec.ff_data_ok[d] = data_ok[i]
    rec.ff_edge_moves = int(moves)
    rec.ff_ok = 1
    return twin, key, dirs, flow


@pytest.mark.parametrize("step", STEPS)
def test_fast_forward_takes_in_order_frames_and_moves_both_streams(step):
    claim = STEPS[step]
    src, dst = V4
    twin, key, (c, s), flow = ff_table(src, dst, 40000, 80, (1000, 5000), (1000 + 65535, None),
                                       shift=(2, 0))
    up = frame(src, dst, 40000, 80, 1000, 5000, ACK | PSH, b"x" * 100)
    down = frame(dst, src, 80, 40000, 5000, 1100, ACK, b"y" * 10)
    ack = frame(src, dst, 40000, 80, 1100, 5010, ACK)
    for number, f in enumerate((up, down, ack), 1):
        assert claim(twin.table, memoryview(f), number, number) is flow
    rec = record(twin, key)
    assert (rec.ff_next[c], rec.ff_next[s]) == (1100, 5010)
    # the last frame taken, for the engine's delivery of its payload: none (a bare ACK)
    assert (rec.ff_last_dir, rec.ff_last_len) == (c, 0)
    assert (rec.packets[c], rec.packets[s], rec.bytes[c], rec.bytes[s]) == (2, 1, 100, 10)
    assert (rec.first_data_ns[c], rec.first_data_ns[s], rec.first_ack_ns[c]) == (1, 2, 3)
    # the client's ACKs move the edge of the server's data: ack + (window << its shift)
    assert rec.ff_edge_known[s] and rec.ff_edge[s] == (5010 + (65535 << 2)) & 0xFFFFFFFF
    # and the server's ACK (window 65535, shift 0) that of the client's
    assert rec.ff_edge[c] == 1100 + 65535


@pytest.mark.parametrize("step", STEPS)
def test_fast_forward_payload_only_where_its_stream_takes_it(step):
    """ff_data_ok per direction: the server's receiving buffer is not made yet (the
    emulation makes it at the first byte): the client's data is refused, its bare ACKs and
    the server's data are taken; a frame taken says where its payload lies."""
    claim = STEPS[step]
    src, dst = V4
    twin, key, (c, s), flow = ff_table(src, dst, 40000, 80, (1000, 5000), data_ok=(0, 1))
    down = frame(dst, src, 80, 40000, 5000, 1000, ACK | PSH, b"y" * 10)
    assert claim(twin.table, memoryview(down), 1, 1) is flow
    rec = record(twin, key)
    assert (rec.ff_last_dir, rec.ff_last_off, rec.ff_last_len) == (s, 14 + 20 + 20, 10)
    assert claim(twin.table, memoryview(frame(src, dst, 40000, 80, 1000, 5010, ACK)), 2, 2) is flow
    up = frame(src, dst, 40000, 80, 1000, 5010, ACK | PSH, b"x")
    assert claim(twin.table, memoryview(up), 3, 3) is None
    assert record(twin, key).ff_ok == 0


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("case", ["gap", "rexmit", "acks_unseen", "beyond_edge", "syn", "fin",
                                  "rst", "urg", "no_ack", "not_loaded"])
def test_fast_forward_refuses_any_other_frame_and_stops(step, case):
    claim = STEPS[step]
    src, dst = V4
    twin, key, (c, s), flow = ff_table(src, dst, 40000, 80, (1000, 5000), (1050, None))
    seq, ack, flags, payload = 1000, 5000, ACK, b"x" * 10
    if case == "gap":
        seq = 1001
    elif case == "rexmit":
        seq = 999
    elif case == "acks_unseen":
        ack = 5001
    elif case == "beyond_edge":
        payload = b"x" * 51
    elif case in ("syn", "fin", "rst", "urg"):
        flags |= {"syn": SYN, "fin": FIN, "rst": RST, "urg": 0x20}[case]
    elif case == "no_ack":
        flags = PSH
    else:
        TwinRecord.from_buffer(twin.table[bytes(key)][0]).ff_ok = 0
    odd = frame(src, dst, 40000, 80, seq, ack, flags, payload)
    assert claim(twin.table, memoryview(odd), 1, 1) is None
    rec = record(twin, key)
    assert rec.ff_ok == 0 and list(rec.packets) == [0, 0] and rec.ff_next[c] == 1000
    # nothing more is taken until the engine loads the record again
    regular = frame(src, dst, 40000, 80, 1000, 5000, ACK, b"x" * 10)
    assert claim(twin.table, memoryview(regular), 2, 2) is None


@settings(max_examples=300, deadline=None)
@given(st.tuples(st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1),
                 st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1),
                 st.integers(0, 14), st.integers(0, 14), st.booleans(), st.booleans(),
                 st.tuples(st.integers(0, 1), st.integers(0, 1))),
       st.lists(st.tuples(st.booleans(), st.booleans(), st.sampled_from([ACK, ACK | PSH, ACK | 0x20,
                                                                        PSH, ACK | FIN]),
                          st.integers(-3, 3), st.integers(-3, 3), st.binary(max_size=40),
                          st.integers(0, 65535)),
                min_size=1, max_size=25))
def test_fuzzed_fast_forward_the_c_step_is_the_python_step(start, frames):
    """Frames near the expected sequence and acknowledgment numbers: both steps take the
    same ones and leave the same records."""
    if _kerneltwin is None:
        pytest.skip("the C step is not built")
    n0, n1, e0, e1, sh0, sh1, known, moves, data_ok = start
    src, dst = V4
    twins = [ff_table(src, dst, 40000, 80, (n0, n1), (e0, e1) if known else (None, None),
                      (sh0, sh1), moves, data_ok) for _ in range(2)]
    for number, (out, reload, flags, dseq, dack, payload, window) in enumerate(frames, 1):
        for twin, key, _, _ in twins:
            if reload:
                TwinRecord.from_buffer(twin.table[bytes(key)][0]).ff_ok = 1
        rec = record(twins[0][0], twins[0][1])
        c, s = twins[0][2]
        d, other = (c, s) if out else (s, c)
        seq = (rec.ff_next[d] + dseq) & 0xFFFFFFFF
        ack = (rec.ff_next[other] + dack) & 0xFFFFFFFF
        a, b = (src, dst) if out else (dst, src)
        f = bytearray(build_tcp_frame(MAC_B, MAC_A, a, b, 40000 if out else 80,
                                      80 if out else 40000, seq, ack, flags, window, payload))
        got = [step(twin.table, memoryview(bytearray(f)), number, number) is flow
               for (twin, _, _, flow), step in zip(twins, (_kerneltwin.claim, claim_python))]
        assert got[0] == got[1]
        assert bytes(twins[0][0].table[bytes(twins[0][1])][0]) == \
            bytes(twins[1][0].table[bytes(twins[1][1])][0])
