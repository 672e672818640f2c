"""The hybrid fast path without a kernel: mosxdp.engine.hybrid and the core's bypass semantics.

* kernel_filter: which sockets' filters make the XDP program's expression, and that the
  expression (compiled with gcc against bpf/mosxdp.h) selects both directions of a flow;
* flow_key: the verdict-map key of a core flow is the one bpf/mosxdp.c builds (through
  the ctypes mirror make_flow_key, which tests/bpf checks against the program) for a
  frame of either direction, IPv4/IPv6, with and without VLAN tags;
* offline bypass/drop semantics with crafted frames;
* HybridProcessor against FakeKernel, a Python model of the program's verdict logic
  (bpf/mosxdp.c: counters per direction, SYN/FIN/RST to user space, the ACK watch):
  connlog totals through the simulated kernel equal the plain offline run's, entries
  leave with their flows (FIN, RST, idle timeout, eviction, end of input).
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from flowcraft import Conv, VerdictMap, ctx  # noqa: F401  (ctx: a fixture)

from mosxdp import *  # noqa: F401,F403
from mosxdp.core.filters import compile_filter
from mosxdp.core.packet import parse_frame
from mosxdp.engine import run_frames
from mosxdp.engine.hybrid import HybridProcessor, flow_key, kernel_filter
from mosxdp.io.bpfstructs import (MX_ACTION_BYPASS, MX_ACTION_DROP, MX_ACTION_STATE_ONLY,
                                  MX_DIR_FROM_HI, MX_DIR_FROM_LO, FlowVerdict, make_flow_key)

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
GCC = shutil.which("gcc")


def listener(mctx, syn=None, orphan=None, domain=socket.AF_UNSPEC):
    s = mtcp_socket(mctx, domain, MOS_SOCK_MONITOR_STREAM, 0)
    if syn is not None or orphan is not None:
        mtcp_bind_monitor_filter(mctx, s, MonitorFilter(stream_syn_filter=syn,
                                                        stream_orphan_filter=orphan))
    return s


def verdicts(mctx):
    """(verdicts set, entries removed) in the offline run's model of the kernel's map."""
    kernel = mctx.engine.twin.kernel
    return kernel["verdicts_set"], kernel["verdicts_removed"]


def raw_socket(mctx, flt):
    s = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_RAW, 0)
    mtcp_bind_monitor_filter(mctx, s, MonitorFilter(raw_pkt_filter=flt))
    return s


# ------------------------------------------------------------------------ kernel filter
def test_kernel_filter_from_the_sockets(ctx):
    mctx = ctx()
    assert kernel_filter(mctx.stack).c_expr == "(0)"          # no socket: nothing leaves the kernel
    listener(mctx, syn="tcp port 8080")
    kf = kernel_filter(mctx.stack)
    assert kf.c_expr is not None and not kf.filter_all_ip
    assert "v->sport" in kf.c_expr and "v->dport" in kf.c_expr
    # the orphan filter counts only when orphans can matter to the socket
    s2 = listener(mctx, syn="tcp port 9000", orphan="tcp port 7000")
    orphan_c = compile_filter("tcp port 7000").c_expr()
    without = kernel_filter(mctx.stack).c_expr
    assert compile_filter("tcp port 9000").c_expr() in without and orphan_c not in without
    mtcp_register_callback(mctx, s2, MOS_ON_ORPHAN, MOS_NULL, lambda *a: None)
    assert orphan_c in kernel_filter(mctx.stack).c_expr
    # a socket with no filter wants every TCP frame: no kernel filter
    listener(mctx)
    assert kernel_filter(mctx.stack).c_expr is None


def test_kernel_filter_orphans_matter_with_midstream_pickup(ctx):
    mctx = ctx(midstream_pickup=True)
    listener(mctx, syn="tcp port 80")   # orphan filter: none = every orphan
    assert kernel_filter(mctx.stack).c_expr is None


def test_kernel_filter_raw_sockets_filter_every_ip_frame(ctx):
    mctx = ctx()
    raw_socket(mctx, "udp port 53")
    kf = kernel_filter(mctx.stack)
    assert kf.filter_all_ip and "v->ip_proto == 17" in kf.c_expr
    listener(mctx, syn="tcp port 80")
    assert kernel_filter(mctx.stack).filter_all_ip
    mctx2_cfg = kernel_filter(mctx.stack).c_expr
    assert mctx2_cfg.count("v->ip_proto == 17") == 1      # raw filters are not swapped
    raw_socket(mctx, None)
    kf = kernel_filter(mctx.stack)
    assert kf.c_expr is None and kf.filter_all_ip


def test_kernel_filter_domain_guard(ctx):
    mctx = ctx()
    listener(mctx, syn="tcp port 80", domain=socket.AF_INET6)
    assert kernel_filter(mctx.stack).c_expr.startswith("((v->ip_version == 6 && ")


def test_c_expr_of_the_reverse_direction():
    f = compile_filter("src host 10.0.0.1 and dst port 80")
    tcp = "(v->ip_version != 0 && v->ip_proto == 6)"
    assert f.c_expr("big") == f"({tcp} && (v->ip_version == 4 && v->src[0] == 0x0a000001U) && v->dport == 0x0050)"
    assert f.c_expr("big", reverse=True) == \
        f"({tcp} && (v->ip_version == 4 && v->dst[0] == 0x0a000001U) && v->sport == 0x0050)"


def _views(frames):
    rows = []
    for frame in frames:
        p = parse_frame(memoryview(bytearray(frame)))
        rows.append((p.ip_version, p.ip_proto, p.sport or 0, p.dport or 0,
                     p.src.ljust(16, b"\0"), p.dst.ljust(16, b"\0")))
    return rows


def _c_eval(tmp_path, expr, rows):
    """Evaluate one filter expression on views with gcc, against the real bpf/mosxdp.h."""
    def arr(b):
        return "{" + ", ".join(str(x) for x in b) + "}"
    data = ",\n".join(f"{{{v}, {p}, {arr(sp.to_bytes(2, 'big'))}, {arr(dp.to_bytes(2, 'big'))}, "
                      f"{arr(s)}, {arr(d)}}}" for v, p, sp, dp, s, d in rows)
    src = (f'#include <linux/types.h>\n#include "{ROOT / "bpf" / "mosxdp.h"}"\n' + r"""
#include <stdio.h>
#include <string.h>
struct raw { unsigned char ver, proto, sport[2], dport[2], src[16], dst[16]; };
static const struct raw rows[] = {
""" + data + "};\nstatic int f(struct mx_flow_view *v) { return " + expr + r"""; }
int main(void) {
    for (unsigned i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        struct mx_flow_view v;
        memset(&v, 0, sizeof v);
        v.ip_version = rows[i].ver; v.ip_proto = rows[i].proto;
        memcpy(&v.sport, rows[i].sport, 2); memcpy(&v.dport, rows[i].dport, 2);
        memcpy(v.src, rows[i].src, 16); memcpy(v.dst, rows[i].dst, 16);
        putchar(f(&v) ? '1' : '0');
    }
    return 0;
}
""")
    c, exe = tmp_path / "kf.c", tmp_path / "kf"
    c.write_text(src)
    r = subprocess.run([GCC, "-O1", "-std=gnu11", "-Wall", "-Werror", "-o", str(exe), str(c)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[:3000]
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return [ch == "1" for ch in out]


@pytest.mark.skipif(GCC is None, reason="gcc not installed")
def test_kernel_filter_matches_both_directions_in_c(ctx, tmp_path):
    mctx = ctx()
    listener(mctx, syn="src host 10.0.0.1 and dst port 8080")
    raw_socket(mctx, "udp and src port 53")
    kf = kernel_filter(mctx.stack)
    a = Conv(cli="10.0.0.1", svr="10.0.0.2", cport=40000, sport=8080)
    a.handshake()
    a.data("s", b"reply")
    b = Conv(cli="10.0.0.3", svr="10.0.0.2", cport=40000, sport=8080)   # other client
    b.handshake()
    c = Conv(cli="10.0.0.1", svr="10.0.0.2", cport=40000, sport=9090)   # other port
    c.handshake()
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    udp_q = bytes(Ether() / IP(src="10.0.0.9", dst="10.0.0.1") / UDP(sport=53, dport=5000))
    udp_r = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.9") / UDP(sport=5000, dport=53))
    frames = [f for _, f in a.frames] + [f for _, f in b.frames] + [f for _, f in c.frames] \
        + [udp_q, udp_r]
    got = _c_eval(tmp_path, kf.c_expr, _views(frames))
    na, nb, nc = len(a.frames), len(b.frames), len(c.frames)
    assert got[:na] == [True] * na                      # SYN, SYN-ACK, ACK, the reply
    assert got[na:na + nb + nc] == [False] * (nb + nc)
    assert got[-2:] == [True, False]                    # raw filters: the frame as seen
    # the Python side agrees for the flow's SYN
    assert mctx.stack.listeners[0].syn_filter.match(parse_frame(memoryview(bytearray(a.frames[0][1]))))


# ----------------------------------------------------------------------------- flow key
def tagged(frame, vlans):
    """Insert 802.1Q tags (outermost first) after the MAC addresses."""
    tags = b"".join(b"\x81\x00" + v.to_bytes(2, "big") for v in vlans)
    return frame[:12] + tags + frame[12:]


@pytest.mark.parametrize("cli,svr,cport,sport,vlans", [
    ("10.0.0.1", "10.0.0.2", 40000, 80, ()),
    ("10.0.0.9", "10.0.0.2", 40000, 80, ()),          # client is the "hi" endpoint
    ("10.0.0.1", "10.0.0.1", 40000, 80, ()),          # same address: ports decide
    ("fd00::1", "fd00::2", 40000, 443, ()),
    ("fd00::1:0:0:9", "fd00::1:0:0:2", 5, 6, ()),
    ("10.0.0.1", "10.0.0.2", 40000, 80, (10,)),
    ("fd00::1", "fd00::2", 40000, 443, (100, 10)),
    ("10.0.0.1", "10.0.0.2", 40000, 80, (100, 10, 7)),  # only the first two ids count
])
def test_flow_key_of_a_core_flow_is_the_kernels(ctx, cli, svr, cport, sport, vlans):
    mctx = ctx()
    listener(mctx)
    conv = Conv(cli=cli, svr=svr, cport=cport, sport=sport)
    conv.handshake()
    conv.data("c", b"abc")
    conv.data("s", b"defg")
    frames = [(ts, tagged(f, vlans)) for ts, f in conv.frames]
    seen = []
    mtcp_register_callback(mctx, 1, MOS_ON_PKT_IN, MOS_HK_SND,
                           lambda m, s, side, e, a: seen.append((side, m.stack.cur_flow)))
    run_frames(mctx, frames[:-1])         # the flow is still open after these
    flow = seen[0][1]
    key, cli_dir = flow_key(flow)
    for (ts, frame), (side, _) in zip(frames, seen):
        p = parse_frame(memoryview(bytearray(frame)))
        k, d = make_flow_key(p.src, p.sport, p.dst, p.dport, vlan_ids=p.vlan_ids)
        assert bytes(k) == bytes(key)
        assert d == (cli_dir if side == MOS_SIDE_CLI else 1 - cli_dir)
    assert (key.vlan_outer, key.vlan_inner) == (tuple(vlans) + (0, 0))[:2]
    assert key.ip_version == (6 if ":" in cli else 4) and key.ip_proto == 6
    assert cli_dir in (MX_DIR_FROM_LO, MX_DIR_FROM_HI)


# -------------------------------------------------------- offline bypass / drop semantics
def connlog_lines(mctx_factory, frames, bypass_after=None, batch_size=1, kernel=None,
                  state_only=False, late=None, **config):
    """connlog on crafted frames, offline (kernel None) or through a FakeKernel (with
    ``state_only``: its listener's MOSX_STATE_ONLY takes effect, as in a live run; ``late``:
    FakeKernel.drive's)."""
    import argparse
    import tempfile

    from mosxdp.apps import connlog
    mctx = mctx_factory(**config)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conn.json"
        # TCP flows only: the kernel model here carries TCP (test_datagrams.py has the rest)
        args = argparse.Namespace(output=str(path), filter=None, bypass_after_bytes=bypass_after,
                                  tcp_only=True)
        app = connlog.setup(mctx, args)
        mctx.stack.state_only = state_only
        if kernel is None:
            run_frames(mctx, frames, batch_size)
        else:
            kernel.drive(mctx, frames, late=late)
        connlog.teardown(app)
        return [json.loads(line) for line in path.read_text().splitlines()], mctx


TOTALS = ("orig_bytes", "resp_bytes", "orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes",
          "missed_bytes", "history", "conn_state", "end_reason", "client_state", "server_state")


def download(size=200_000, seg=1448, isn_c=1000, isn_s=5000, half_close=False, **kw):
    conv = Conv(isn_c=isn_c, isn_s=isn_s, **kw)
    conv.handshake()
    conv.data("c", b"GET /big HTTP/1.1\r\n\r\n")
    if half_close:
        conv.fin("c")
    sent = 0
    while sent < size:
        n = min(seg, size - sent)
        conv.data("s", bytes(n))
        sent += n
        if (sent // seg) % 2 == 0:
            conv.ack("c")
    if half_close:
        conv.fin("s")
        conv.ack("c")
    else:
        conv.close()
    return conv


@pytest.mark.parametrize("half_close", [False, True])
def test_connlog_bypass_after_bytes_keeps_the_totals_offline(ctx, half_close):
    conv = download(half_close=half_close)
    plain, _ = connlog_lines(ctx, conv.frames)
    bypassed, mctx = connlog_lines(ctx, conv.frames, bypass_after=10_000)
    assert len(plain) == len(bypassed) == 1
    assert {k: bypassed[0][k] for k in TOTALS} == {k: plain[0][k] for k in TOTALS}
    assert plain[0]["resp_bytes"] == 200_000 and plain[0]["end_reason"] == "fin"
    assert mctx.stack.counters["bypassed_packets"] > 100


def test_bypassed_data_frames_are_forwarded_counted_not_processed(ctx):
    mctx = ctx()
    s = listener(mctx)
    pkt_in = []
    mtcp_register_callback(mctx, s, MOS_ON_PKT_IN, MOS_HK_RCV,
                           lambda m, sock, side, e, a: pkt_in.append(side))
    bypass_at = []

    def on_data(m, sock, side, e, a):
        if not bypass_at:
            bypass_at.append(len(pkt_in))
            mtcp_setsockopt(m, sock, SOL_MONSOCKET, MOSX_BYPASS, 1)
    mtcp_register_callback(mctx, s, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data)
    conv = download(size=20 * 1448)
    out = run_frames(mctx, conv.frames)
    assert [f for _, f in out] == [f for _, f in conv.frames]       # all forwarded
    # after the bypass only FIN, FIN and the ACK of the second FIN were processed
    assert len(pkt_in) - bypass_at[0] == 3
    assert verdicts(mctx) == (1, 1)


def test_drop_flow_drops_the_rest_and_counts_it(ctx):
    mctx = ctx()
    s = listener(mctx)
    ends = []

    def on_data(m, sock, side, e, a):
        mtcp_setsockopt(m, sock, SOL_MONSOCKET, MOSX_DROP_FLOW, 1)

    def on_end(m, sock, side, e, a):
        if side == MOS_SIDE_CLI:
            ends.append(mtcp_getsockopt(m, sock, SOL_MONSOCKET, MOSX_FLOW_STATS))
    mtcp_register_callback(mctx, s, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data)
    mtcp_register_callback(mctx, s, MOS_ON_CONN_END, MOS_HK_RCV, on_end)
    conv = Conv()
    conv.handshake()
    conv.data("c", b"GET / HTTP/1.0\r\n\r\n")        # the first data segment
    for _ in range(5):
        conv.data("s", b"x" * 1000)
    conv.data("c", b"more")
    out = run_frames(mctx, conv.frames)
    assert len(out) == 4                                # handshake + the first data segment
    # one drop verdict, its entry removed with the flow (the offline model of the kernel's)
    assert verdicts(mctx) == (1, 1)
    assert mctx.stack.counters["dropped"] == 6
    st = ends[0]
    assert (st.pkts[0], st.pkts[1]) == (4, 6)           # dropped frames still count


def test_stop_mon_both_asks_for_a_kernel_bypass_and_its_removal(ctx, monkeypatch):
    mctx = ctx()
    s = listener(mctx)
    mtcp_register_callback(mctx, s, MOS_ON_CONN_START, MOS_HK_RCV, lambda m, sock, side, e, a:
                           mtcp_setsockopt(m, sock, SOL_MONSOCKET, MOS_STOP_MON, MOS_SIDE_BOTH))
    flows = []
    flow_end = HybridProcessor._flow_end
    monkeypatch.setattr(HybridProcessor, "_flow_end",
                        lambda self, flow: (flows.append(flow), flow_end(self, flow)))
    conv = Conv().full()
    run_frames(mctx, conv.frames)
    assert verdicts(mctx) == (1, 1)
    assert [f.end_reason for f in flows] == ["fin"]   # the ACK of the last FIN ended it


# ---------------------------------------------------------- the model of the XDP program
class FakeKernel(VerdictMap):
    """bpf/mosxdp.c's verdict logic in Python (no filter, a socket always bound), with the
    map API of XdpProgram. ``drive`` runs frames the way the live engine does: each frame
    goes either to the processor or is handled here; end_batch after every ``batch``.
    The kernel's clock is the frame's timestamp (ns, plus the frame's number below 1000:
    frames of one microsecond keep their order)."""

    SYN, FIN, RST, ACK = 0x02, 0x01, 0x04, 0x10
    M32 = 0xFFFFFFFF

    def __init__(self, batch=4):
        self.entries = {}
        self.batch = batch
        self.to_user = self.kernel = 0
        self.now_ns = 0
        self.forwarded = []
        self.max_entries = 0

    # map API ------------------------------------------------------------------------
    def set_verdict(self, key, action, watch_any=None):
        a = {"bypass": MX_ACTION_BYPASS, "drop": MX_ACTION_DROP,
             "state_only": MX_ACTION_STATE_ONLY}.get(action, action)
        e = self.entries.setdefault(bytes(key), {
            "action": 0, "last": 0, "packets": [0, 0], "bytes": [0, 0], "frame_bytes": [0, 0],
            "ip_bytes": [0, 0], "watch": [0, 0], "armed": [0, 0], "first_data": [0, 0],
            "first_ack": [0, 0], "seq_end": [0, 0]})
        e["action"] = a
        if watch_any is not None and e["packets"] == [0, 0] and not any(e["armed"]):
            e["armed"][watch_any] = 2        # a new entry: MX_WATCH_ANY
        self.max_entries = max(self.max_entries, len(self.entries))

    def _fv(self, e):
        return FlowVerdict(e["action"], e["last"], tuple(e["packets"]), tuple(e["bytes"]),
                           tuple(e["frame_bytes"]), tuple(e["ip_bytes"]), tuple(e["watch"]),
                           tuple(e["armed"]), tuple(e["first_data"]), tuple(e["first_ack"]),
                           tuple(e["seq_end"]))

    # the program ---------------------------------------------------------------------
    def rx(self, frame):
        """True: to user space; False: handled here."""
        p = parse_frame(memoryview(bytearray(frame)))
        if p.ip_version == 0 or p.ip_proto != 6 or p.is_fragment:
            return False
        key, d = make_flow_key(p.src, p.sport, p.dst, p.dport, vlan_ids=p.vlan_ids)
        e = self.entries.get(bytes(key))
        if e is None or e["action"] not in (MX_ACTION_BYPASS, MX_ACTION_DROP, MX_ACTION_STATE_ONLY):
            return True
        e["last"] = self.now_ns
        watched = e["armed"][d] and p.flags & self.ACK and (
            e["armed"][d] == 2 or ((p.ack - e["watch"][d]) & self.M32) < 1 << 31)
        if not p.flags & (self.SYN | self.FIN | self.RST):
            if p.payload_len:
                e["first_data"][d] = e["first_data"][d] or self.now_ns
            elif p.flags & self.ACK:
                e["first_ack"][d] = e["first_ack"][d] or self.now_ns
            if not watched:
                end = (p.seq + p.payload_len) & self.M32
                if not e["packets"][d] or 0 < ((end - e["seq_end"][d]) & self.M32) < 1 << 31:
                    e["seq_end"][d] = end
                e["packets"][d] += 1
                e["bytes"][d] += p.payload_len
                e["frame_bytes"][d] += len(frame)
                e["ip_bytes"][d] += p.ip_len
                if e["action"] != MX_ACTION_DROP:
                    self.forwarded.append(frame)
                return False
            e["armed"][d] = 0
        elif e["action"] != MX_ACTION_DROP:
            if watched:
                e["armed"][d] = 0
            if p.flags & (self.SYN | self.FIN):
                e["watch"][1 - d] = (p.seq + p.payload_len + (1 if p.flags & self.SYN else 0)
                                     + (1 if p.flags & self.FIN else 0)) & self.M32
                e["armed"][1 - d] = 1
        return True

    def drive(self, mctx, frames, finish=True, late=None):
        """``late``: {i: j}, frame i (if it goes to user space) reaches the processor only
        after frame j went through the kernel (the socket's ring lags behind the kernel)."""
        proc = self.proc = HybridProcessor(mctx.stack, self)
        late = late or {}
        held = {}
        n = 0

        def up(ts, frame):
            if proc.process(memoryview(bytearray(frame)), ts, 0) == 0:
                self.forwarded.append(frame)
            proc.outbox.clear()

        for i, (ts, frame) in enumerate(frames):
            self.now_ns = ts * 1000 + i % 1000
            if self.rx(frame):
                self.to_user += 1
                if i in late:
                    held.setdefault(late[i], []).append((ts, frame))
                    continue
                up(ts, frame)
                n += 1
                if n % self.batch == 0:
                    proc.end_batch()
            else:
                self.kernel += 1
                if n % self.batch:
                    proc.end_batch()       # the engine ends a batch when the ring is empty
                    n = 0
            for ts_held, frame_held in held.pop(i, ()):
                up(ts_held, frame_held)
                proc.end_batch()
        proc.end_batch()
        if finish:
            proc.finish()
        return proc


@pytest.mark.parametrize("half_close", [False, True])
@pytest.mark.parametrize("v6", [False, True])
def test_connlog_through_the_kernel_model_equals_offline(ctx, half_close, v6):
    kw = {"cli": "fd00::1", "svr": "fd00::2"} if v6 else {}
    conv = download(size=300_000, half_close=half_close, **kw)
    plain, _ = connlog_lines(ctx, conv.frames)
    kernel = FakeKernel()
    lines, mctx = connlog_lines(ctx, conv.frames, bypass_after=65536, kernel=kernel)
    assert {k: lines[0][k] for k in TOTALS} == {k: plain[0][k] for k in TOTALS}
    assert lines[0]["resp_bytes"] == 300_000 and lines[0]["end_reason"] == "fin"
    assert lines[0]["duration"] == plain[0]["duration"]
    # most frames never reached the processor, and nothing is left in the map
    assert kernel.to_user < 0.35 * len(conv.frames), (kernel.to_user, len(conv.frames))
    assert kernel.kernel > 0 and kernel.entries == {} and kernel.max_entries == 1
    assert kernel.proc.kernel["entries_popped"] == 1
    assert sorted(kernel.forwarded) == sorted(f for _, f in conv.frames)


def test_kernel_counters_are_merged_before_conn_end(ctx):
    mctx = ctx()
    s = listener(mctx)
    seen = []
    mtcp_register_callback(mctx, s, MOS_ON_CONN_START, MOS_HK_RCV, lambda m, sock, side, e, a:
                           mtcp_setsockopt(m, sock, SOL_MONSOCKET, MOSX_BYPASS, 1))
    mtcp_register_callback(mctx, s, MOS_ON_CONN_END, MOS_HK_RCV, lambda m, sock, side, e, a:
                           seen.append(mtcp_getsockopt(m, sock, SOL_MONSOCKET, MOSX_FLOW_STATS))
                           if side == MOS_SIDE_CLI else None)
    conv = download(size=50_000)
    kernel = FakeKernel(batch=1)
    kernel.drive(mctx, conv.frames)
    st = seen[0]
    cli_frames = [f for _, f in conv.frames if parse_frame(memoryview(bytearray(f))).sport == 40000]
    srv_frames = [f for _, f in conv.frames if parse_frame(memoryview(bytearray(f))).sport == 80]
    assert (st.pkts[0], st.pkts[1]) == (len(cli_frames), len(srv_frames))
    assert st.l2_bytes[1] == sum(map(len, srv_frames))
    assert st.ip_bytes[1] == sum(len(f) - 14 for f in srv_frames)
    assert st.stream_bytes[1] == 50_000 and st.missed_bytes[1] == 0
    assert st.end_reason == "fin" and kernel.entries == {}
    assert kernel.to_user <= 8


def test_idle_bypassed_flow_lives_while_the_kernel_sees_it(ctx):
    mctx = ctx(tcp_timeout=2.0)
    s = listener(mctx)
    mtcp_register_callback(mctx, s, MOS_ON_CONN_START, MOS_HK_RCV, lambda m, sock, side, e, a:
                           mtcp_setsockopt(m, sock, SOL_MONSOCKET, MOSX_BYPASS, 1))
    ended = []
    mtcp_register_callback(mctx, s, MOS_ON_CONN_END, MOS_HK_RCV,
                           lambda m, sock, side, e, a: ended.append(m.stack.now))
    conv = Conv(dt=500_000)               # a frame every 0.5 s for 5 s: longer than the timeout
    conv.handshake()
    for _ in range(10):
        conv.data("s", b"x" * 100)
    kernel = FakeKernel(batch=1)
    proc = kernel.drive(mctx, conv.frames, finish=False)
    assert not ended and kernel.verdict_count() == 1         # alive: the kernel saw it lately
    last = conv.frames[-1][0]
    proc.advance_clock(last + 1_000_000)
    assert not ended
    proc.advance_clock(last + 2_500_000)                     # 2.5 s of silence everywhere
    assert len(ended) == 2 and kernel.verdict_count() == 0
    flow_stats = mctx.stack.counters
    assert flow_stats["flows_ended"] == 1


def test_evicted_flow_removes_its_entry(ctx):
    mctx = ctx(max_concurrency=1)
    s = listener(mctx)
    mtcp_register_callback(mctx, s, MOS_ON_CONN_START, MOS_HK_RCV, lambda m, sock, side, e, a:
                           mtcp_setsockopt(m, sock, SOL_MONSOCKET, MOSX_BYPASS, 1))
    a = Conv(cport=40001)
    a.handshake()
    a.data("s", b"x" * 100)
    b = Conv(cport=40002, t0=a.ts + 1000)
    b.handshake()
    kernel = FakeKernel(batch=1)
    proc = kernel.drive(mctx, a.frames + b.frames, finish=False)
    assert mctx.stack.counters["flows_evicted"] == 1 and kernel.verdict_count() == 1
    (key,) = kernel.entries
    assert bytes(flow_key(next(iter(mctx.stack.lru)))[0]) == key
    proc.finish()
    assert kernel.verdict_count() == 0


def get_and_40_segments():
    """A flow whose client sent a GET and whose server 40 full segments back, still open."""
    conv = Conv()
    conv.handshake()
    conv.data("c", b"GET /\r\n\r\n")
    for _ in range(40):
        conv.data("s", b"y" * 1448)
    return conv


def test_rst_ends_a_bypassed_flow_with_complete_counts(ctx):
    conv = get_and_40_segments()
    conv.rst("c")
    plain, _ = connlog_lines(ctx, conv.frames)
    kernel = FakeKernel()
    lines, _ = connlog_lines(ctx, conv.frames, bypass_after=5000, kernel=kernel)
    assert {k: lines[0][k] for k in TOTALS} == {k: plain[0][k] for k in TOTALS}
    assert lines[0]["end_reason"] == "rst" and kernel.entries == {}


@pytest.mark.parametrize("fin_after_rst", [False, True])
def test_frames_after_a_rst_stay_the_flows_in_time_wait(ctx, fin_after_rst):
    """curl closes a TLS flow before the server's close_notify comes: the client's kernel
    answers it, and the server's FIN, each with a RST (no ACK). With tcp_tw_interval the
    flow lingers after the first RST as after a close: the second RST (and a FIN that
    crossed the first) count in its one conn.log line, not lost or a flow of their own."""
    conv = get_and_40_segments()
    conv.ack("c")
    conv.data("c", b"n" * 24)                       # the client's close_notify
    conv.fin("c")
    conv.data("s", b"m" * 24)                       # the server's, after the client closed
    fin = conv.fin("s", emit=False)
    if not fin_after_rst:
        conv.emit(fin)
    conv.rst("c", ack=False)                        # for the close_notify
    if fin_after_rst:
        conv.emit(fin)
    conv.rst("c", ack=False)                        # for the FIN
    sport = [parse_frame(memoryview(bytearray(f))).sport for _, f in conv.frames]
    want = (sport.count(40000), sport.count(80))
    plain, _ = connlog_lines(ctx, conv.frames, tcp_tw_interval=2)
    kernel = FakeKernel()
    lines, _ = connlog_lines(ctx, conv.frames, bypass_after=5000, kernel=kernel,
                             tcp_tw_interval=2)
    for got in (plain, lines):
        assert len(got) == 1, got
        assert (got[0]["orig_pkts"], got[0]["resp_pkts"]) == want
        assert "R" in got[0]["history"] and got[0]["orig_bytes"] == 24 + 9, got
    assert {k: lines[0][k] for k in TOTALS} == {k: plain[0][k] for k in TOTALS}
    assert kernel.entries == {}


def test_more_than_4_gib_bypassed_stream_bytes_from_the_fin(ctx):
    """The FIN after 5 GiB in the kernel: the sequence number wraps; the kernel's payload
    count picks the right wrap."""
    mctx = ctx()
    s = listener(mctx)
    mtcp_register_callback(mctx, s, MOS_ON_CONN_START, MOS_HK_RCV, lambda m, sock, side, e, a:
                           mtcp_setsockopt(m, sock, SOL_MONSOCKET, MOSX_BYPASS, 1))
    stats = []
    mtcp_register_callback(mctx, s, MOS_ON_CONN_END, MOS_HK_RCV, lambda m, sock, side, e, a:
                           stats.append(mtcp_getsockopt(m, sock, SOL_MONSOCKET, MOSX_FLOW_STATS))
                           if side == MOS_SIDE_CLI else None)
    conv = Conv()
    conv.handshake()
    conv.data("s", b"z" * 1000)            # through the kernel (an entry exists by then)
    kernel = FakeKernel(batch=1)
    proc = kernel.drive(mctx, conv.frames, finish=False)
    (k,) = kernel.entries
    e = kernel.entries[k]
    big = 5 * 2**30 + 123
    d = flow_key(next(iter(mctx.stack.lru)))[1] ^ 1       # the server's direction
    e["packets"][d] += 1000
    e["bytes"][d] += big - 1000
    conv.nxt["s"] = (conv.nxt["s"] + big - 1000) & 0xFFFFFFFF
    tail = Conv()
    tail.__dict__.update({k2: v for k2, v in conv.__dict__.items() if k2 != "frames"})
    tail.frames = []
    tail.close()
    for ts, f in tail.frames:
        kernel.now_ns = ts * 1000
        if kernel.rx(f):
            proc.process(memoryview(bytearray(f)), ts, 0)
            proc.end_batch()
    assert stats and stats[0].stream_bytes[1] == big and stats[0].missed_bytes[1] == 0
    assert stats[0].end_reason == "fin"


# -------------------------------------------------------------------- real captures
@pytest.mark.parametrize("name", sorted(p.stem for p in DATA.glob("*.pcap")))
def test_connlog_bypass_option_same_totals_on_captures(name, tmp_path):
    from mosxdp.cli import main
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["run", "connlog", "--pcap", str(DATA / f"{name}.pcap"), "--output", str(a)]) == 0
    assert main(["run", "connlog", "--pcap", str(DATA / f"{name}.pcap"), "--output", str(b),
                 "--bypass-after-bytes", "1000"]) == 0
    la = [json.loads(x) for x in a.read_text().splitlines()]
    lb = [json.loads(x) for x in b.read_text().splitlines()]
    assert len(la) == len(lb)
    keys = [k for k in TOTALS if k != "missed_bytes"]   # gaps after the depth are not seen
    for x, y in zip(la, lb):
        assert {k: y.get(k) for k in keys} == {k: x.get(k) for k in keys}
        assert y["missed_bytes"] <= x["missed_bytes"]


# ------------------------------------------------------------------------- state only
def read_pcap(path):
    from mosxdp.io.pcap import PcapReader
    with PcapReader(str(path)) as reader:
        return [(ts, bytes(frame)) for ts, frame in reader]


@pytest.mark.parametrize("name", sorted(p.stem for p in DATA.glob("*.pcap")))
def test_state_only_connlog_through_the_kernel_model_equals_full_inspection(ctx, name):
    # Every line, field for field (ts, uid and duration too: the model's clock is the
    # capture's), as the offline run inspecting every frame writes it; most frames stay in
    # the kernel, and its entries leave with their flows.
    frames = read_pcap(DATA / f"{name}.pcap")
    full, _ = connlog_lines(ctx, frames, batch_size=64)
    kernel = FakeKernel()
    lines, _ = connlog_lines(ctx, frames, kernel=kernel, state_only=True)
    assert lines == full
    assert kernel.entries == {}
    # a handful of frames per flow reached the processor (SYN, SYN-ACK, ACK, FINs, ACKs,
    # RST, and those before the flow's entry was made), the rest stayed in the kernel
    assert kernel.to_user <= 8 * len(full) + 4, (kernel.to_user, len(full))
    assert kernel.to_user + kernel.kernel == len(frames)


@pytest.mark.parametrize("shape", ["close", "half_close", "rst", "eof", "v6"])
def test_state_only_flows_go_to_the_kernel_at_their_start(ctx, shape):
    kw = {"cli": "fd00::1", "svr": "fd00::2"} if shape == "v6" else {}
    if shape in ("rst", "eof"):               # no close: a RST, or the end of the input
        conv = Conv()
        conv.handshake()
        conv.data("c", b"GET /big HTTP/1.1\r\n\r\n")
        for i in range(0, 300_000, 1500):
            conv.data("s", bytes(1500))
            conv.ack("c")
        if shape == "rst":
            conv.rst("s")
    else:
        conv = download(size=300_000, half_close=shape == "half_close", **kw)
    frames = conv.frames
    full, _ = connlog_lines(ctx, frames)
    kernel = FakeKernel(batch=1)
    lines, mctx = connlog_lines(ctx, frames, kernel=kernel, state_only=True)
    assert lines == full and len(lines) == 1
    assert lines[0]["end_reason"] == {"rst": "rst", "eof": "eof"}.get(shape, "fin")
    assert lines[0]["resp_bytes"] == 300_000
    # SYN, SYN-ACK, its ACK (the handshake completes: no half-open flow), and the ends:
    # FIN, its ACK, FIN, its ACK at most
    assert kernel.to_user <= 7 and mctx.stack.counters["half_open_timeouts"] == 0
    assert kernel.proc.kernel["verdicts_set"] == 1 and kernel.max_entries == 1
    assert sorted(kernel.forwarded) == sorted(f for _, f in frames)


def test_state_only_stream_end_ignores_retransmitted_bytes(ctx):
    # A flow that ends without FIN or RST: its stream bytes come from the highest sequence
    # end the kernel saw, not from its payload count (which counts retransmissions twice).
    conv = Conv()
    conv.handshake()
    conv.data("c", b"GET / HTTP/1.0\r\n\r\n")
    first = conv.data("s", b"a" * 1000)
    conv.data("s", b"b" * 1000)
    conv.emit(first)                          # the first segment again
    conv.ack("c")
    full, _ = connlog_lines(ctx, conv.frames)
    kernel = FakeKernel(batch=1)
    lines, _ = connlog_lines(ctx, conv.frames, kernel=kernel, state_only=True)
    assert lines == full
    assert lines[0]["resp_bytes"] == 2000 and lines[0]["missed_bytes"] == 0
    assert lines[0]["end_reason"] == "eof" and lines[0]["history"] == "ShADd"


@pytest.mark.parametrize("server_first", [True, False])
def test_state_only_history_letters_keep_the_order_the_kernel_saw(ctx, server_first):
    # The kernel stamps the first data frame and the first bare ACK of each direction; the
    # letters of frames only it saw join the history in that order at the next merge, so a
    # server that speaks first (d before D) and one that answers (D, then a, then d) give
    # the histories of full inspection.
    conv = Conv()
    conv.handshake()
    if server_first:
        conv.data("s", b"220 ready\r\n")
        conv.data("c", b"HELO x\r\n")
        conv.ack("s")
    else:
        conv.data("c", b"GET / HTTP/1.0\r\n\r\n")
        conv.ack("s")
        conv.data("s", b"HTTP/1.0 200 OK\r\n\r\n")
    conv.close()
    full, _ = connlog_lines(ctx, conv.frames)
    kernel = FakeKernel(batch=1)
    lines, _ = connlog_lines(ctx, conv.frames, kernel=kernel, state_only=True)
    assert lines == full
    assert lines[0]["history"] == ("ShAdDaFf" if server_first else "ShADadFf")
    assert kernel.kernel >= 3     # the data frames and the bare ACK stayed in the kernel


@pytest.mark.parametrize("watch_any", [True, False])
def test_state_only_entry_catches_the_handshake_ack_after_an_unseen_synack(ctx, watch_any):
    # The entry is made at the end of the SYN's batch; the SYN-ACK is in that batch too (it
    # passed the program before the entry existed and armed nothing). The client's ACK that
    # follows still reaches the emulation (the new entry's MX_WATCH_ANY): the handshake
    # completes, the flow is not left half-open while the kernel carries its data.
    # Without it (the model made to ignore watch_any) the ACK stays in the kernel.
    conv = download(size=30_000)
    kernel = FakeKernel(batch=2)
    if not watch_any:
        plain = kernel.set_verdict
        kernel.set_verdict = lambda key, action, watch_any=None: plain(key, action)
    mctx = ctx()
    mctx.stack.state_only = True
    s = listener(mctx)
    mtcp_setsockopt(mctx, s, SOL_MONSOCKET, MOSX_STATE_ONLY, 1)
    kernel.drive(mctx, conv.frames[:8], finish=False)
    (flow,) = mctx.stack.lru
    assert (flow in mctx.stack.half_open) is not watch_any
    assert flow.sides[MOS_SIDE_SVR].state == (TCP_ESTABLISHED if watch_any else TCP_SYN_RCVD)


def test_state_only_frame_overtaken_by_the_kernel_keeps_the_carried_bytes(ctx):
    # Live: the client's handshake ACK goes to user space (the ACK watch), its request right
    # behind it through the kernel, counted; the ACK reaches the emulation after that, from
    # behind the request's bytes. Those bytes wait for the next frame ahead of them (the
    # client's FIN): delivered, not missed. The kernel stamped the ACK's letter when it came
    # in, so the history keeps the order of arrival: the line is that of full inspection
    # of the frames in the order the monitor got them.
    conv = Conv()
    conv.syn()
    conv.synack()
    conv.acked["c"] = conv.nxt["s"]
    conv.seg("c", "A")                                 # 2: the handshake's ACK
    conv.data("c", b"GET / HTTP/1.1\r\n\r\n")         # 3: through the kernel
    conv.ack("s")                                      # 4: through the kernel
    for _ in range(5):
        conv.data("s", bytes(1000))
    conv.close()
    (line,), _ = connlog_lines(ctx, conv.frames, kernel=FakeKernel(batch=1),
                               state_only=True, late={2: 4})
    full, _ = connlog_lines(ctx, conv.frames)
    assert line == full[0]
    assert line["orig_bytes"] == 18 and line["missed_bytes"] == 0 and line["history"] == "ShADadFf"


def test_state_only_needs_every_socket_of_the_flow(ctx):
    # A flow goes to the kernel at its start only when every listener it has said
    # MOSX_STATE_ONLY, and only when the run honours it (live, not --full-inspection).
    conv = Conv().full()
    for honoured, both in ((True, False), (True, True), (False, True)):
        mctx = ctx()
        mctx.stack.state_only = honoured
        a = listener(mctx)
        mtcp_setsockopt(mctx, a, SOL_MONSOCKET, MOSX_STATE_ONLY, 1)
        b = listener(mctx)
        if both:
            mtcp_setsockopt(mctx, b, SOL_MONSOCKET, MOSX_STATE_ONLY, 1)
        run_frames(mctx, conv.frames)
        assert verdicts(mctx) == ((1, 1) if honoured and both else (0, 0)), (honoured, both)


@pytest.mark.parametrize("raw_filter,handed", [("tcp port 80", False), (None, False),
                                               ("udp", True), ("tcp port 81", True)])
def test_state_only_not_for_flows_a_raw_socket_takes(ctx, raw_filter, handed):
    # A raw socket gets every frame its filter matches: a flow whose frames it takes stays
    # with the core, however its stream listeners are content with states.
    conv = Conv().full()
    mctx = ctx()
    mctx.stack.state_only = True
    s = listener(mctx)
    mtcp_setsockopt(mctx, s, SOL_MONSOCKET, MOSX_STATE_ONLY, 1)
    raw = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    if raw_filter is not None:
        mtcp_bind_monitor_filter(mctx, raw, MonitorFilter(raw_pkt_filter=raw_filter))
    run_frames(mctx, conv.frames)
    assert verdicts(mctx) == ((1, 1) if handed else (0, 0))


def test_state_only_option_errors(ctx):
    import errno
    mctx = ctx()
    s = listener(mctx)
    for bad in (2, True, "1", None):
        with pytest.raises(OSError) as exc:
            mtcp_setsockopt(mctx, s, SOL_MONSOCKET, MOSX_STATE_ONLY, bad)
        assert exc.value.errno == errno.EINVAL and "MOSX_STATE_ONLY takes 0 or 1" in str(exc.value)
    flow_socks = []
    mtcp_register_callback(mctx, s, MOS_ON_CONN_START, MOS_HK_SND,
                           lambda m, sock, side, e, a: flow_socks.append(sock))
    run_frames(mctx, Conv().full().frames)
    with pytest.raises(OSError) as exc:
        mtcp_setsockopt(mctx, flow_socks[0], SOL_MONSOCKET, MOSX_STATE_ONLY, 1)
    assert exc.value.errno in (errno.ENOTSOCK, errno.ENOTCONN)


@pytest.mark.parametrize("app", ["connlog", "midstat"])
def test_state_only_apps_offline_lines_equal_full_inspection(app, tmp_path):
    # Offline there is no kernel: every frame is inspected, with or without --full-inspection.
    from mosxdp.cli import main
    pcap = DATA / "concurrent.pcap"
    extra = ["--json", "--interval", "0.001"] if app == "midstat" else []
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", app, "--pcap", str(pcap), "--output", str(a), *extra]) == 0
    assert main(["run", app, "--pcap", str(pcap), "--output", str(b), "--full-inspection",
                 *extra]) == 0
    assert a.read_text() == b.read_text() and a.read_text().count("\n") >= 8
