"""mosxdp.Monitor, the Pythonic facade over the mtcp_* API, offline on the captures in
tests/data: decorators, the runtime context manager, timers, shorthands, and that its
errors are the mtcp_* errors."""
import errno
import os

import pytest
from scapy.layers.inet import TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

import mosxdp
from mosxdp import (
    MOS_HK_RCV, MOS_HK_SND, MOS_NULL, MOS_ON_CONN_END, MOS_ON_CONN_NEW_DATA, MOS_ON_CONN_START,
    MOS_ON_ORPHAN, MOS_ON_PKT_IN, MOS_ON_TCP_STATE_CHANGE, MOS_SIDE_BOTH, MOS_SIDE_CLI,
    MOS_SIDE_SVR, MOS_SOCK_MONITOR_STREAM, Monitor, MtcpConf, TcpState, mtcp_destroy, mtcp_getconf,
    mtcp_getpeername, mtcp_socket,
)
from mosxdp.io.pcap import PcapReader

DATA = os.path.join(os.path.dirname(__file__), "..", "data")
HTTP = os.path.join(DATA, "http_sizes.pcap")
IPV6 = os.path.join(DATA, "ipv6.pcap")


@pytest.fixture(autouse=True)
def clean_runtime():
    mtcp_destroy()
    yield
    mtcp_destroy()


def frames(path):
    with PcapReader(path) as reader:
        return [Ether(bytes(frame)) for _, frame in reader]


def streams(path):
    """{(client port, side whose buffer holds it): payload bytes} from the capture, with
    scapy (no retransmissions in http_sizes.pcap / ipv6.pcap: every byte is new)."""
    sizes = {}
    for pkt in frames(path):
        if TCP in pkt and Raw in pkt:
            tcp = pkt[TCP]
            # The server's buffer (MOS_SIDE_SVR) holds what the client sent.
            key = (tcp.sport, MOS_SIDE_SVR) if tcp.dport == 8080 else (tcp.dport, MOS_SIDE_CLI)
            sizes[key] = sizes.get(key, 0) + len(pkt[Raw])
    return sizes


def runtime_gone():
    with pytest.raises(OSError) as info:
        mtcp_getconf(MtcpConf())
    return info.value.errno == errno.EPERM


# ---------------------------------------------------------------- context manager
@pytest.mark.parametrize("path", [HTTP, IPV6])
def test_offline_block_replays_the_capture_then_destroys(path):
    got = {}
    ended = []
    with Monitor.offline(path) as mon:
        @mon.on(MOS_ON_CONN_NEW_DATA, MOS_NULL, syn_filter="tcp port 8080")
        def on_data(mctx, sock, side, event, arg):
            assert mctx is mon.mctx and event == MOS_ON_CONN_NEW_DATA
            (_, cport), _ = mon.peers(sock)
            got[(cport, side)] = got.get((cport, side), 0) + len(mon.read(sock, side))

        @mon.on(MOS_ON_CONN_END, MOS_HK_RCV, syn_filter="tcp port 8080")
        def on_end(mctx, sock, side, event, arg):
            ended.append((sock, side))
        assert got == {}                      # nothing runs inside the block
    assert mon.ran
    assert got == streams(path)
    assert len(ended) == 2 * len({port for port, _ in got})   # once per side per flow
    assert runtime_gone()


def test_explicit_run_inside_the_block_is_not_repeated():
    starts = []
    with Monitor.offline(HTTP) as mon:
        mon.on(MOS_ON_CONN_START, MOS_HK_SND)(lambda *a: starts.append(a[1]))
        mon.run()
        assert len(starts) == 4
    assert len(starts) == 4


def test_exception_in_the_block_runs_nothing_and_destroys():
    calls = []
    with pytest.raises(KeyError):
        with Monitor.offline(HTTP) as mon:
            mon.on(MOS_ON_PKT_IN, MOS_HK_SND)(lambda *a: calls.append(a))
            raise KeyError("app bug")
    assert calls == [] and not mon.ran
    assert runtime_gone()


def test_configuration_keywords_and_write(tmp_path):
    out = tmp_path / "out.pcap"
    batches = []
    with Monitor.offline(HTTP, str(out), batch_size=1, rmem_size=4096) as mon:
        @mon.on(MOS_ON_CONN_NEW_DATA)        # MOS_NULL is the default hook
        def on_data(mctx, sock, side, event, arg):
            batches.append(len(mon.read(sock, side)))
        conf = mtcp_getconf(MtcpConf())
        assert conf.rcvbuf_size == 4096
    # batch_size=1: one segment per CONN_NEW_DATA, so a 4 KiB window never overruns.
    assert max(batches) <= 1448 and sum(batches) == sum(streams(HTTP).values())
    assert len(frames(str(out))) == len(frames(HTTP))      # everything forwarded
    with pytest.raises(OSError) as info:
        with Monitor.offline(HTTP, batch_size=0):
            pass
    assert info.value.errno == errno.EINVAL and "batch_size" in info.value.strerror
    assert runtime_gone()


def test_live_sets_the_mode_and_cleans_up():
    for peer, mode in ((None, "passive"), ("mxpeer0", "inline")):
        with pytest.raises(RuntimeError):
            with Monitor.live("mxnone0", peer, cpu=0) as mon:
                assert (mon.mctx.config.mode, mon.mctx.config.iface, mon.mctx.config.peer) == \
                    (mode, "mxnone0", peer)
                raise RuntimeError("stop before attaching anything")
        assert runtime_gone()


# --------------------------------------------------------------------- decorators
def test_sockets_are_shared_per_filter_and_functions_returned():
    with Monitor.offline(HTTP) as mon:
        def cb(*args):
            pass
        assert mon.on(MOS_ON_CONN_START, MOS_HK_SND, syn_filter="tcp port 8080")(cb) is cb
        mon.on(MOS_ON_CONN_END, MOS_HK_SND, syn_filter="tcp port 8080")(cb)
        a = mon.socket(syn_filter="tcp port 8080")
        assert mon.socket(syn_filter="tcp port 8080") == a
        assert mon.socket(syn_filter="tcp port 80") != a
        assert mon.socket() not in (a, mon.socket(raw_filter="ip6"))
        assert mon.socket(raw_filter="ip6") == mon.socket(raw_filter="ip6")
        assert len(set(mon._sockets.values())) == 4
        mon.ran = True                        # nothing to replay in this test


def test_stacked_decorators_and_two_listeners_see_each_flow():
    seen = []
    with Monitor.offline(HTTP) as mon:
        @mon.on(MOS_ON_CONN_START, MOS_HK_SND)
        @mon.on(MOS_ON_CONN_END, MOS_HK_SND)
        def both(mctx, sock, side, event, arg):
            seen.append(("all", event, side))

        @mon.on(MOS_ON_CONN_START, MOS_HK_SND, syn_filter="dst port 8080")
        def filtered(mctx, sock, side, event, arg):
            seen.append(("8080", event, side))
    assert seen.count(("all", MOS_ON_CONN_START, MOS_SIDE_CLI)) == 4
    assert seen.count(("all", MOS_ON_CONN_END, MOS_SIDE_CLI)) == 4
    assert seen.count(("all", MOS_ON_CONN_END, MOS_SIDE_SVR)) == 4
    assert seen.count(("8080", MOS_ON_CONN_START, MOS_SIDE_CLI)) == 4


def test_explicit_socket_and_state_shorthand():
    changes = []
    with Monitor.offline(HTTP) as mon:
        sock = mtcp_socket(mon.mctx, 0, MOS_SOCK_MONITOR_STREAM, 0)

        @mon.on(MOS_ON_TCP_STATE_CHANGE, MOS_HK_RCV, sock=sock)
        def on_state(mctx, s, side, event, arg):
            changes.append((side, mon.state(s, side)))
    assert mon._sockets == {}                 # the given socket was used, none was made
    assert changes.count((MOS_SIDE_SVR, TcpState.TCP_SYN_RCVD)) == 4
    assert all(isinstance(state, TcpState) for _, state in changes)


def test_raw_socket_sees_every_matching_frame():
    count = {"pkt": 0, "orphan": 0}
    with Monitor.offline(IPV6) as mon:
        @mon.on(MOS_ON_PKT_IN, raw_filter="ip6 and not tcp")
        def raw(mctx, sock, side, event, arg):
            assert side == MOS_NULL           # raw sockets get MOS_NULL as the side
            count["pkt"] += 1

        @mon.on(MOS_ON_ORPHAN, raw_filter="ip6 and not tcp")
        def orphan(mctx, sock, side, event, arg):
            count["orphan"] += 1
    expected = sum(1 for pkt in frames(IPV6) if IPv6 in pkt and TCP not in pkt)
    assert expected > 0 and count == {"pkt": expected, "orphan": expected}


# -------------------------------------------------------------------------- timers
def test_every_rearms_until_false_and_after_fires_once():
    ticks, stopped, once = [], [], []
    with Monitor.offline(HTTP, batch_size=1) as mon:
        @mon.every(0.05)
        def tick(mctx, timer_id, side, event, arg):
            ticks.append(mosxdp.mtcp_cb_get_ts(mctx))

        @mon.every(0.05, id=7)
        def stop_after_two(mctx, timer_id, side, event, arg):
            assert timer_id == 7
            stopped.append(timer_id)
            return len(stopped) < 2

        @mon.after(0.2)
        def one_shot(mctx, timer_id, side, event, arg):
            once.append(mosxdp.mtcp_cb_get_ts(mctx))
    # The clock is packet time: a timer fires at the end of the first batch (here: frame)
    # at or after its deadline, and `every` re-arms from that moment. Timers armed before
    # the first packet count from 0, so they fire at the first frame.
    with PcapReader(HTTP) as reader:
        stamps = [ts for ts, _ in reader]
    expected, deadline = [], 50_000
    for ts in stamps:
        if ts >= deadline:
            expected.append(ts)
            deadline = ts + 50_000
    assert ticks == expected and len(ticks) >= 3
    assert stopped == [7, 7]
    assert once == [stamps[0]]


# ---------------------------------------------------------------------- shorthands
def test_read_limit_and_uctx_and_stop():
    reads, contexts, after_stop = [], [], []
    with Monitor.offline(HTTP) as mon:
        @mon.on(MOS_ON_CONN_NEW_DATA)
        def on_data(mctx, sock, side, event, arg):
            state = mon.uctx(sock, dict)
            contexts.append(state)        # kept: an id is unique only while its object lives
            if state.get("stopped"):
                after_stop.append(sock)
            if side == MOS_SIDE_CLI:
                first = mon.read(sock, side, 10)
                rest = mon.read(sock, side)
                reads.append((len(first), first + rest))
                state["stopped"] = True
                mon.stop(sock)                # MOS_STOP_MON, both sides
    assert all(n <= 10 for n, _ in reads)
    assert [data[:15] for _, data in reads] == [b"HTTP/1.0 200 OK"] * 4
    assert after_stop == []                   # a stopped flow raises no more events
    assert mon.uctx is not None and len({id(state) for state in contexts}) >= 4


def test_errors_are_the_mtcp_errors():
    with Monitor.offline(HTTP) as mon:
        with pytest.raises(OSError) as info:
            mon.on(MOS_ON_CONN_END)(lambda *a: None)      # CONN_END is not raised at MOS_NULL
        assert info.value.errno == errno.EINVAL and "MOS_NULL" in info.value.strerror
        with pytest.raises(OSError) as info:
            mon.on(MOS_ON_CONN_START, MOS_HK_SND, syn_filter="tcp port http")(lambda *a: None)
        assert info.value.errno == errno.EINVAL and "http" in info.value.strerror
        with pytest.raises(OSError) as info:
            mon.after(-1)(lambda *a: None)
        assert info.value.errno == errno.EINVAL
        with pytest.raises(OSError) as info:
            mon.peers(12345)
        assert info.value.errno == errno.EBADF
        mon.ran = True
    with pytest.raises(OSError) as info:
        Monitor("not a context")
    assert info.value.errno == errno.EACCES
    with pytest.raises(OSError) as info:
        with Monitor.offline(HTTP, cpu=-1):
            pass
    assert info.value.errno == errno.EINVAL and runtime_gone()


def test_callbacks_keep_the_mos_signature():
    """A facade callback is a plain mOS callback: mtcp_* calls work on its arguments."""
    peers = []
    with Monitor.offline(IPV6) as mon:
        @mon.on(MOS_ON_CONN_START, MOS_HK_SND)
        def on_start(mctx, sock, side, event, arg):
            peers.append(mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH))
    assert [(cli[0], svr) for cli, svr in peers] == [("fd77::1", ("fd77::2", 8080))] * 2


def test_star_import_stays_the_c_api():
    namespace = {}
    exec("from mosxdp import *", namespace)
    assert "Monitor" not in namespace         # `from mosxdp import Monitor` to use the facade
    assert "mtcp_peek" in namespace and mosxdp.Monitor is Monitor
