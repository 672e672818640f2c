"""Resource limits (mosxdp/core/stack.py, flow.py and streams.py; docs/config.md "Limits"): each has a configuration
key, a documented default, and a counter that moves when it triggers."""
import errno
from pathlib import Path

import pytest

from flowcraft import Conv, Monitor, api, reinit  # noqa: F401  (api: a fixture)
from mosxdp import *  # noqa: F401,F403
from mosxdp.config import ConfigError, load_config
from mosxdp.core.flow import DEFAULT_TCP_SYN_TIMEOUT
from mosxdp.core.streams import DEFAULT_REASSEMBLY_MEMCAP
from mosxdp.core.stack import LIMIT_COUNTERS, StackConfig
from mosxdp.engine import summary_line


def end_reasons(mon):
    """{flow socket: end_reason} collected at CONN_END (HK_RCV, server side)."""
    reasons = {}

    def at_end(mctx, sock, side, ev, arg):
        if side == MOS_SIDE_SVR:
            reasons[sock] = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOSX_FLOW_STATS).end_reason
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_END, MOS_HK_RCV, at_end)
    return reasons


def ports_by_socket(mon):
    ports = {}

    def at_start(mctx, sock, side, ev, arg):
        ports[sock] = mtcp_getpeername(mctx, sock, MOS_SIDE_CLI)[1]
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_START, MOS_HK_SND, at_start)
    return ports


def counters(mon):
    return mon.mctx.stack.counters


# -------------------------------------------------------------------- defaults and keys
def test_documented_defaults():
    config = load_config(None)
    assert (config.max_concurrency, config.rmem_size, config.reassembly_memcap,
            config.tcp_syn_timeout, config.tcp_timeout, config.max_fragments) == \
        (100000, 262144, 1 << 30, 5.0, 30.0, 1024)
    assert StackConfig().reassembly_memcap == DEFAULT_REASSEMBLY_MEMCAP == 1 << 30
    assert StackConfig().tcp_syn_timeout == DEFAULT_TCP_SYN_TIMEOUT == 5.0
    # The half-open timeout is shorter than the established one.
    assert config.tcp_syn_timeout < config.tcp_timeout
    with open(Path(__file__).resolve().parents[2] / "docs" / "config.md") as f:
        doc = f.read()
    for line in ("reassembly_memcap = 1073741824", "tcp_syn_timeout = 5",
                 "max_concurrency = 100000", "max_fragments = 1024", "rmem_size = 262144"):
        assert line in doc


def test_limit_keys_from_file_and_validation(tmp_path):
    path = tmp_path / "limits.toml"
    path.write_text("[mos]\nreassembly_memcap = 65536\ntcp_syn_timeout = 1.5\n")
    config = load_config(str(path))
    stack_config = config.stack_config()
    assert (stack_config.reassembly_memcap, stack_config.tcp_syn_timeout) == (65536, 1.5)
    for text, words in (("reassembly_memcap = -1", "must be between 0 and "),
                        ("reassembly_memcap = 1.5", "expected an integer"),
                        ("tcp_syn_timeout = 'fast'", "expected a number")):
        path.write_text(f"[mos]\n{text}\n")
        with pytest.raises(ConfigError, match=words):
            load_config(str(path))


def test_limit_counters_start_at_zero(api):
    stack = mtcp_create_context(0).stack
    for name in LIMIT_COUNTERS + ("flows_evicted", "buffer_overruns", "window_overruns"):
        assert stack.counters[name] == 0
    assert stack.reassembly_mem == 0 and not stack.half_open


# ------------------------------------------------------------ max_concurrency, eviction
def test_eviction_takes_a_half_open_flow_before_an_established_one(api):
    reinit(max_concurrency=3)
    mon = Monitor()
    reasons = end_reasons(mon)
    ports = ports_by_socket(mon)
    legit = Conv(cport=40000)
    legit.handshake()
    legit.data("c", b"GET /")
    frames = list(legit.frames)
    t = legit.ts
    for i in range(5):             # spoofed SYNs: the table holds 3 flows
        spoof = Conv(cli=f"192.0.2.{i + 1}", cport=50000 + i, t0=t + i * 10)
        frames.append((t + i * 10, spoof.syn(emit=False)))
    # Meanwhile the established flow was the least recently active one.
    legit.ts = t + 1000
    legit.data("s", b"200 OK")
    legit.close()
    frames += legit.frames[4:]
    mon.run(sorted(frames, key=lambda item: item[0]))
    c = counters(mon)
    assert c["flows_created"] == 6
    assert c["flows_evicted"] == 3 and c["half_open_evicted"] == 3
    by_port = {ports[s]: r for s, r in reasons.items()}
    assert by_port[40000] == "fin"                   # the established flow was never evicted
    assert sorted(r for p, r in by_port.items() if p != 40000) == ["eof"] * 2 + ["evicted"] * 3


def test_eviction_falls_back_to_the_least_recently_active_flow(api):
    reinit(max_concurrency=2)
    mon = Monitor()
    reasons = end_reasons(mon)
    ports = ports_by_socket(mon)
    frames = []
    for i, t0 in enumerate((1_000_000, 2_000_000, 3_000_000)):
        conv = Conv(cport=40000 + i, t0=t0)
        conv.handshake()
        frames += conv.frames
    mon.run(frames)
    c = counters(mon)
    assert c["flows_evicted"] == 1 and c["half_open_evicted"] == 0
    assert {ports[s]: r for s, r in reasons.items()} == {40000: "evicted", 40001: "eof",
                                                         40002: "eof"}


# ------------------------------------------------------------------ tcp_syn_timeout
def _half_open_and_established(wait_us, syn_again_at=None):
    mon = Monitor()
    reasons = end_reasons(mon)
    ports = ports_by_socket(mon)
    half = Conv(cport=41000)
    half.syn()
    half.synack()                  # SYN-ACK, no final ACK: the server side stays SYN_RCVD
    est = Conv(cport=42000)
    est.handshake()
    frames = half.frames + est.frames
    if syn_again_at is not None:
        frames.append((half.ts + syn_again_at, half.syn(emit=False)))
    tick = Conv(cport=43000, t0=est.ts + wait_us)       # moves the clock
    tick.handshake()
    mon.run(sorted(frames + tick.frames, key=lambda item: item[0]))
    return mon, {ports[s]: r for s, r in reasons.items()}


def test_half_open_flow_times_out_before_an_idle_established_one(api):
    mon, reasons = _half_open_and_established(6_000_000)
    assert reasons == {41000: "timeout", 42000: "eof", 43000: "eof"}
    c = counters(mon)
    assert c["half_open_timeouts"] == 1 and c["flows_evicted"] == 0


def test_half_open_timeout_counts_idle_time_not_age(api):
    # A SYN retransmitted 3 s in keeps the flow for another 5 s of idle time.
    mon, reasons = _half_open_and_established(6_000_000, syn_again_at=3_000_000)
    assert reasons[41000] == "eof"
    assert counters(mon)["half_open_timeouts"] == 0


def test_half_open_timeout_off_leaves_only_the_idle_timeout(api):
    reinit(tcp_syn_timeout=0)
    mon, reasons = _half_open_and_established(6_000_000)
    assert reasons[41000] == "eof"
    reinit(tcp_syn_timeout=0)
    mon, reasons = _half_open_and_established(31_000_000)
    assert reasons == {41000: "timeout", 42000: "timeout", 43000: "eof"}   # tcp_timeout
    assert counters(mon)["half_open_timeouts"] == 0


def test_completed_handshake_leaves_the_half_open_set(api):
    mon = Monitor()
    conv = Conv()
    conv.syn()
    conv.synack()
    seen = []

    def look(mctx, sock, side, ev, arg):
        seen.append(len(mctx.stack.half_open))
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_PKT_IN, MOS_HK_RCV, look)
    conv.acked["c"] = conv.nxt["s"]
    conv.seg("c", "A")
    conv.data("c", b"x")
    mon.run(conv)
    assert seen == [1, 1, 1, 0]    # (seen before _after_packet of the ACK runs)
    assert not mon.mctx.stack.half_open


# -------------------------------------------------------------------- reassembly_memcap
def test_memcap_refuses_a_buffer_and_frees_it_at_flow_end(api):
    reinit(rmem_size=4096, reassembly_memcap=3 * 4096)
    mon = Monitor()
    got = {}

    def at_end(mctx, sock, side, ev, arg):
        port = mtcp_getpeername(mctx, sock, MOS_SIDE_CLI)[1]
        try:
            buf = bytearray(64)
            got[port, side] = bytes(buf[:mtcp_ppeek(mctx, sock, side, buf, 64, 0)])
        except OSError as exc:
            got[port, side] = (errno.errorcode[exc.errno],
                               mtcp_getsockopt(mctx, sock, SOL_SOCKET, SO_ERROR))
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_END, MOS_HK_RCV, at_end)
    errors = []
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_ERROR, MOS_NULL,
                           lambda mctx, sock, side, ev, arg: errors.append(side))
    a, b = Conv(cport=40000), Conv(cport=40001, t0=1_000_100)
    for conv in (a, b):
        conv.handshake()
    a.data("c", b"a-request")
    a.data("s", b"a-response")      # two buffers charged
    b.data("c", b"b-request")       # the third fits
    b.data("s", b"b-response")      # the fourth would exceed the cap
    a.close()
    c = Conv(cport=40002, t0=a.ts + 1000)   # after a ended: room again
    c.handshake()
    c.data("c", b"c-request")
    mon.run(sorted(a.frames + b.frames + c.frames, key=lambda item: item[0]))
    stack = mon.mctx.stack
    assert stack.counters["memcap_refused"] == 1
    assert errors == [MOS_SIDE_CLI]
    assert got[40001, MOS_SIDE_CLI] == ("EINVAL", errno.ENOMEM)   # buffering off, SO_ERROR
    assert got[40001, MOS_SIDE_SVR] == b"b-request"
    assert got[40000, MOS_SIDE_CLI] == b"a-response"
    assert got[40002, MOS_SIDE_SVR] == b"c-request"
    assert stack.reassembly_mem_peak == 3 * 4096
    assert stack.reassembly_mem == 0 and not stack.buffer_mem


def test_memcap_zero_means_no_cap(api):
    reinit(rmem_size=4096, reassembly_memcap=0)
    mon = Monitor()
    frames = []
    for i in range(4):
        conv = Conv(cport=40000 + i, t0=1_000_000 + i)
        conv.handshake()
        conv.data("c", b"x")
        conv.data("s", b"y")
        frames += conv.frames
    mon.run(sorted(frames, key=lambda item: item[0]))
    assert counters(mon)["memcap_refused"] == 0
    assert mon.mctx.stack.reassembly_mem_peak == 8 * 4096


# -------------------------------------------------------------------- max_fragments
def test_refused_fragments_are_counted_by_the_stack(api):
    reinit(max_fragments=2)
    mon = Monitor()
    conv = Conv()
    conv.handshake()
    base = conv.nxt["c"]
    for k in (2, 4, 6, 8):                 # four disjoint runs after a hole
        conv.data("c", b"%d" % k, seq=base + k * 10)
    mon.run(conv)
    assert counters(mon)["refused_fragments"] == 2


# ----------------------------------------------------------------------- --stats
def test_summary_line_shows_the_limits_that_triggered(api):
    reinit(max_concurrency=1, max_fragments=1)
    mon = Monitor()
    conv = Conv()
    conv.handshake()
    base = conv.nxt["c"]
    conv.data("c", b"a", seq=base + 10)
    conv.data("c", b"b", seq=base + 20)
    other = Conv(cport=40001, t0=conv.ts)
    other.syn()
    mon.run(conv.frames + other.frames)
    line = summary_line(mon.mctx.stack, 7, 7, 0)
    assert "evicted 1" in line and "fragments refused 1" in line
    assert "reassembly memory peak 256 KiB" in line
