"""Where a port of a mOS app would break, item by item (mOS parity of the API), through the
public API; each value or behaviour is the one of mOS's headers and core/src/mos_api.c."""
import errno
import os
import socket

import pytest

from flowcraft import Conv, Monitor, api, tcp_of  # noqa: F401  (api: a fixture)
from mosxdp import *  # noqa: F401,F403
from mosxdp.engine import OfflineEngine


@pytest.fixture
def mon(api):
    """flowcraft's Monitor: one listening stream socket, run over crafted frames."""
    return Monitor()


def test_socket_type_numbers_are_mtcp_api_h():
    # enum socket_type of mtcp_api.h, in its order.
    assert [(t.name, int(t)) for t in SocketType] == [
        ("MOS_SOCK_UNUSED", 0), ("MOS_SOCK_STREAM_LISTEN", 1), ("MOS_SOCK_PROXY_LISTEN", 2),
        ("MOS_SOCK_MONITOR_STREAM", 3), ("MOS_SOCK_STREAM", 4), ("MOS_SOCK_PROXY", 5),
        ("MOS_SOCK_MONITOR_STREAM_ACTIVE", 6), ("MOS_SOCK_MONITOR_RAW", 7),
        ("MOS_SOCK_EPOLL", 8), ("MOS_SOCK_PIPE", 9)]


def test_socket_accepts_the_c_numbers(api):
    # A port that passes the C numbers literally gets the same sockets.
    mctx = mtcp_create_context(0)
    listener = mtcp_socket(mctx, socket.AF_INET, 3, 0)
    raw = mtcp_socket(mctx, socket.AF_INET, 7, 0)
    mtcp_bind_monitor_filter(mctx, listener, MonitorFilter(stream_syn_filter="tcp"))
    mtcp_bind_monitor_filter(mctx, raw, MonitorFilter(raw_pkt_filter="tcp"))
    for other in (0, 1, 2, 4, 5, 6, 8, 9):
        try:
            mtcp_socket(mctx, socket.AF_INET, other, 0)
        except OSError as exc:
            assert exc.errno == errno.EINVAL
        else:
            raise AssertionError(f"socket type {other} accepted")


def last_packet(mctx, sock, side):
    """mtcp_getlastpkt's PktInfo."""
    pinfo = PktInfo()
    mtcp_getlastpkt(mctx, sock, side, pinfo)
    return pinfo


def seen(mctx, sock, side):
    """mtcp_getlastpkt as (payload, seq, tcp flags), or the errno it raised."""
    pinfo = PktInfo()
    try:
        mtcp_getlastpkt(mctx, sock, side, pinfo)
    except OSError as exc:
        return exc.errno
    return bytes(pinfo.payload), pinfo.seq, bytes(pinfo.tcph)[13]


def run_reusing_buffers(mctx, frames, batch_size):
    """Run frames as the live engine gives them: views into a few buffers that the next
    batch overwrites (the UMEM's frames are reused once their batch is done)."""
    pool = [bytearray(2048) for _ in range(batch_size)]

    def source():
        for index, (ts, frame) in enumerate(frames):
            slot = pool[index % batch_size]
            slot[:len(frame)] = frame
            yield ts, memoryview(slot)[:len(frame)]
    OfflineEngine(mctx, source(), None, batch_size).run()


def test_getlastpkt_in_new_data_is_the_packet_that_raised_it(mon):
    conv = Conv()
    conv.handshake()
    conv.data("c", b"abc")
    last = conv.data("c", b"defg")
    got = []
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_NEW_DATA, MOS_NULL,
                           lambda mctx, s, side, ev, arg: got.append((side, seen(mctx, s, side))))
    run_reusing_buffers(mon.mctx, conv.frames, batch_size=len(conv.frames))
    # One NEW_DATA for the two segments of the batch: the packet is the last of them.
    assert got == [(MOS_SIDE_SVR, (b"defg", tcp_of(last).seq, 0x18))]


def test_getlastpkt_in_conn_end_raised_by_a_packet_is_that_packet(mon):
    conv = Conv().full()
    got = []
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_END, MOS_HK_RCV,
                           lambda mctx, s, side, ev, arg: got.append((side, seen(mctx, s, side))))
    mon.run(conv)
    final = tcp_of(conv.frames[-1][1])            # the client's last ACK ends the flow
    assert sorted(got) == [(side, (b"", final.seq, 0x10)) for side in (0, 1)]


def test_getlastpkt_in_conn_end_without_packet_survives_buffer_reuse(mon):
    # The flow ends at the end of the input (no packet): each side gets the last packet it
    # received, although the buffers its frames came in were overwritten by a later flow.
    conv = Conv()
    conv.handshake()
    request = conv.data("c", b"req")
    response = conv.data("s", b"resp")
    other = Conv(cport=40001, t0=conv.ts)
    other.handshake()
    other.data("c", b"x" * 40)
    got = {}

    def on_end(mctx, s, side, ev, arg):
        if mtcp_getpeername(mctx, s, MOS_SIDE_CLI)[1] == 40000:
            got[side] = seen(mctx, s, side)
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_END, MOS_HK_RCV, on_end)
    run_reusing_buffers(mon.mctx, conv.frames + other.frames, batch_size=2)
    assert got == {MOS_SIDE_SVR: (b"req", tcp_of(request).seq, 0x18),
                   MOS_SIDE_CLI: (b"resp", tcp_of(response).seq, 0x18)}


def test_getlastpkt_in_a_timer_still_has_no_packet(mon):
    result = []

    def on_start(mctx, s, side, ev, arg):
        mtcp_settimer(mctx, 1, 0.0001,
                      lambda mctx, tid, *rest: result.append(seen(mctx, s, MOS_SIDE_CLI)))
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_START, MOS_HK_SND, on_start)
    mon.run(Conv().full())
    assert result == [errno.ENODATA]


def test_setlastpkt_conflicting_actions_eagain(mon):
    # mos_api.c: not exactly one of DROP, OVERWRITE, CHOMP, INSERT is EAGAIN, before anything
    # else about the edit is looked at; the packet is then forwarded unchanged.
    conv = Conv().full()
    results = []

    def on_data(mctx, s, side, ev, arg):
        pinfo = last_packet(mctx, s, side)
        if not pinfo.payloadlen or results:
            return
        for option in (0, MOS_DROP | MOS_OVERWRITE, MOS_OVERWRITE | MOS_INSERT | MOS_TCP_PAYLOAD,
                       MOS_CHOMP | MOS_DROP | MOS_IP_HDR):
            try:
                mtcp_setlastpkt(mctx, s, side, 0, b"XX", 2, option)
            except OSError as exc:
                results.append(exc.errno)
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_PKT_IN, MOS_HK_SND, on_data)
    out = mon.run(conv)
    assert results == [errno.EAGAIN] * 4
    assert [frame for _, frame in out] == [frame for _, frame in conv.frames]


def test_getsockopt_mos_timestamp_is_the_flows_last_activity(mon):
    conv = Conv().full()
    got = []

    def record(mctx, s, side, ev, arg):
        got.append((ev, mtcp_getsockopt(mctx, s, SOL_MONSOCKET, MOS_TIMESTAMP),
                    mtcp_cb_get_ts(mctx)))
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_PKT_IN, MOS_HK_RCV, record)
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_END, MOS_HK_RCV, record)
    mon.run(conv)
    # In a packet's callback: that packet's time, the clock mtcp_cb_get_ts reads.
    pkt_in = [(ts, now) for ev, ts, now in got if ev == MOS_ON_PKT_IN]
    assert [ts for ts, _ in pkt_in] == [ts for ts, _ in conv.frames]
    assert all(ts == now for ts, now in pkt_in)
    # At the end: the flow's last packet, whichever side sent it.
    assert {ts for ev, ts, _ in got if ev == MOS_ON_CONN_END} == {conv.frames[-1][0]}


def test_setsockopt_mos_frag_buf_takes_zero_and_releases_that_sides_buffer(mon):
    conv = Conv()
    conv.handshake()
    conv.data("c", b"request")
    conv.data("s", b"response")
    conv.data("c", b"more")
    got = {}

    def on_data(mctx, s, side, ev, arg):
        if side != MOS_SIDE_SVR or got:
            return
        for bad in (1, 4096, -1, None, True):
            try:
                mtcp_setsockopt(mctx, s, SOL_MONSOCKET, MOS_FRAG_SVRBUF, bad)
            except OSError as exc:
                got.setdefault("bad", set()).add(exc.errno)
        got["set"] = mtcp_setsockopt(mctx, s, SOL_MONSOCKET, MOS_FRAG_SVRBUF, 0)
        got["svrbuf"] = mtcp_getsockopt(mctx, s, SOL_MONSOCKET, MOS_SVRBUF)
        try:
            mtcp_ppeek(mctx, s, MOS_SIDE_SVR, bytearray(16), 16, 0)
        except OSError as exc:
            got["peek"] = exc.errno
        got["clibuf"] = mtcp_getsockopt(mctx, s, SOL_MONSOCKET, MOS_CLIBUF)
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data)
    # On a listener mOS changes nothing (0 is accepted).
    assert mtcp_setsockopt(mon.mctx, mon.sock, SOL_MONSOCKET, MOS_FRAG_CLIBUF, 0) == 0
    mon.run(conv)
    assert got["bad"] == {errno.EINVAL}
    assert got["set"] == 0 and got["svrbuf"] == 0
    assert got["peek"] == errno.EINVAL            # that side no longer buffers
    assert got["clibuf"] > 0                      # the other side does


def test_unregister_callback_stops_the_callback(mon):
    conv = Conv().full()
    seen_pkts = []

    def on_pkt(mctx, s, side, ev, arg):
        seen_pkts.append(s)
        if len(seen_pkts) == 2:
            assert mtcp_unregister_callback(mctx, mon.sock, MOS_ON_PKT_IN, MOS_HK_SND) == 0
            # The flow socket inherited the listener's table when the flow began.
            assert mtcp_unregister_callback(mctx, s, MOS_ON_PKT_IN, MOS_HK_SND) == 0
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_PKT_IN, MOS_HK_SND, on_pkt)
    mon.run(conv)
    assert len(seen_pkts) == 2
    # Its arguments are checked as mtcp_register_callback's.
    for args in ((404, MOS_ON_PKT_IN, MOS_HK_SND), (mon.sock, 3, MOS_HK_SND),
                 (mon.sock, MOS_ON_CONN_END, MOS_NULL)):
        try:
            mtcp_unregister_callback(mon.mctx, *args)
        except OSError as exc:
            assert exc.errno == errno.EINVAL
        else:
            raise AssertionError(args)


def test_clonepkt_copy_outlives_the_next_getlastpkt(mon):
    conv = Conv().full()
    clones = []

    def on_pkt(mctx, s, side, ev, arg):
        pinfo = last_packet(mctx, s, side)
        clone, frame = PktInfo(), bytearray(2048)
        assert mtcp_clonepkt(clone, frame, pinfo) is None       # void in C
        clones.append(clone)
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_PKT_IN, MOS_HK_SND, on_pkt)
    mon.run(conv)
    assert [c.frame() for c in clones] == [frame for _, frame in conv.frames]
    request = clones[3]
    assert bytes(request.payload) == b"GET / HTTP/1.0\r\n\r\n"
    assert request.payloadlen == len(request.payload) and request.seq == tcp_of(conv.frames[3][1]).seq
    assert request.eth_len == len(conv.frames[3][1])
    # Bad arguments (C would crash on them) are EINVAL.
    for args in ((None, bytearray(2048), request), (PktInfo(), bytearray(2048), PktInfo()),
                 (PktInfo(), bytearray(10), request), (PktInfo(), b"x" * 2048, request)):
        try:
            mtcp_clonepkt(*args)
        except OSError as exc:
            assert exc.errno == errno.EINVAL
        else:
            raise AssertionError(args)


def test_get_connection_cnt_counts_the_tracked_connections(mon):
    first = Conv()
    first.handshake()
    second = Conv(cport=40001, t0=first.ts)
    second.handshake()
    second.close()
    counts = []
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_START, MOS_HK_SND,
                           lambda mctx, *rest: counts.append(mtcp_get_connection_cnt(mctx)))
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_END, MOS_HK_RCV,
                           lambda mctx, *rest: counts.append(mtcp_get_connection_cnt(mctx)))
    assert mtcp_get_connection_cnt(mon.mctx) == 0
    mon.run(first.frames + second.frames)
    # CONN_START of each flow, then the second's end (twice, once per side; it is still
    # counted while its CONN_END runs), then the first's at the end of input.
    assert counts == [1, 2, 2, 2, 1, 1]
    assert mtcp_get_connection_cnt(mon.mctx) == 0
    try:
        mtcp_get_connection_cnt(None)
    except OSError as exc:
        assert exc.errno == errno.EACCES


def test_new_calls_are_exported():
    import mosxdp
    for name in ("mtcp_unregister_callback", "mtcp_clonepkt", "mtcp_get_connection_cnt"):
        assert name in mosxdp.__all__ and name in globals()


def in_thread(fn):
    """fn() on another thread: its result or the OSError it raised."""
    import threading
    box = []

    def target():
        try:
            box.append(fn())
        except OSError as exc:
            box.append(exc)
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return box[0]


def test_calls_from_another_thread_than_the_contexts_eperm(mon):
    # The calls mos_api.c and api.c check against the context's thread.
    conv = Conv().full()
    flow = []
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_START, MOS_HK_SND,
                           lambda mctx, s, *rest: flow.append(s))
    mtcp_setsockopt(mon.mctx, mon.sock, SOL_MONSOCKET, MOS_CLIBUF, 4096)
    checked = []

    def on_data(mctx, s, side, ev, arg):
        if checked:
            return
        buf = bytearray(64)
        calls = {
            "peek": lambda: mtcp_peek(mctx, s, side, buf, 64),
            "ppeek": lambda: mtcp_ppeek(mctx, s, side, buf, 64, 0),
            "getlastpkt": lambda: mtcp_getlastpkt(mctx, s, side, PktInfo()),
            "setlastpkt": lambda: mtcp_setlastpkt(mctx, s, side, 0, b"", 0, MOS_DROP),
            "sendpkt": lambda: mtcp_sendpkt(mctx, s, PktInfo()),
            "set_uctx": lambda: mtcp_set_uctx(mctx, s, 1),
            "get_uctx": lambda: mtcp_get_uctx(mctx, s),
            "getpeername": lambda: mtcp_getpeername(mctx, s, MOS_SIDE_CLI),
            "cb_get_ts": lambda: mtcp_cb_get_ts(mctx),
            "getsockopt": lambda: mtcp_getsockopt(mctx, s, SOL_MONSOCKET, MOS_TCP_STATE_CLI),
        }
        for name, call in calls.items():
            result = in_thread(call)
            checked.append((name, result.errno if isinstance(result, OSError) else result))
        # Here, on the context's thread, they work.
        assert mtcp_getpeername(mctx, s, MOS_SIDE_CLI)[1] == 40000
        # mOS does not check these: another thread may call them.
        checked.append(("others", in_thread(lambda: (
            mtcp_getsockopt(mctx, s, SOL_SOCKET, SO_ERROR),
            mtcp_setsockopt(mctx, s, SOL_MONSOCKET, MOS_CLIOVERLAP, MOS_OVERLAP_POLICY_LAST),
            mtcp_register_callback(mctx, s, MOS_ON_REXMIT, MOS_HK_SND, None),
            mtcp_get_connection_cnt(mctx)))))
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data)
    mon.run(conv)
    assert checked[:-1] == [(name, errno.EPERM) for name, _ in checked[:-1]]
    assert len(checked) == 11
    assert checked[-1] == ("others", (0, 0, 0, 1))


def test_the_thread_running_mtcp_app_join_owns_the_context(tmp_path):
    # mOS's context thread runs the callbacks; here it is the thread that runs mtcp_app_join.
    from mosxdp.io.pcap import PcapWriter
    pcap = tmp_path / "flow.pcap"
    with PcapWriter(str(pcap)) as writer:
        for ts, frame in Conv().full().frames:
            writer.write(ts, frame)
    mtcp_destroy()
    mtcp_init(None, pcap=str(pcap))
    try:
        mctx = mtcp_create_context(0)
        sock = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
        read = []

        def on_data(mctx, s, side, ev, arg):
            buf = bytearray(64)
            read.append(bytes(buf[:mtcp_peek(mctx, s, side, buf, 64)]))
        mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data)
        assert in_thread(lambda: mtcp_app_join(mctx)) == 0
        assert sorted(read) == [b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nhi"]
        # ... and this thread is now another one.
        try:
            mtcp_cb_get_ts(mctx)
        except OSError as exc:
            assert exc.errno == errno.EPERM
        else:
            raise AssertionError("mtcp_cb_get_ts from the creating thread after app_join")
    finally:
        mtcp_destroy()


def test_raw_pkt_filter_arp_gets_arp_frames(api):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import ARP, Dot1Q, Ether
    from mosxdp.engine import run_frames
    arp = bytes(Ether() / ARP(psrc="10.0.0.1", pdst="10.0.0.2"))
    tagged = bytes(Ether() / Dot1Q(vlan=5) / ARP(psrc="10.0.0.1", pdst="10.0.0.2"))
    lldp = bytes(Ether(type=0x88CC) / (b"\x00" * 46))
    udp = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP())
    conv = Conv().full()
    frames = [(1, arp), (2, lldp), (3, udp), (4, tagged)] + conv.frames
    mctx = mtcp_create_context(0)
    got = {}
    # A mOS app's raw socket is AF_INET: ARP (not IP) reaches it all the same.
    for domain, text in ((socket.AF_INET, "arp"), (socket.AF_UNSPEC, "arp or udp"),
                         (socket.AF_INET, None)):
        raw = mtcp_socket(mctx, domain, MOS_SOCK_MONITOR_RAW, 0)
        mtcp_bind_monitor_filter(mctx, raw, MonitorFilter(raw_pkt_filter=text))
        got[raw] = []

        def on_pkt(mctx, s, side, ev, arg):
            pinfo = last_packet(mctx, s, side)
            got[s].append(bytes(pinfo.ethh) + bytes(pinfo.iph) + bytes(pinfo.tcph)
                          + bytes(pinfo.payload))
        mtcp_register_callback(mctx, raw, MOS_ON_PKT_IN, MOS_NULL, on_pkt)
    run_frames(mctx, frames)
    arp_only, arp_udp, everything = got.values()
    assert len(arp_only) == 2 and arp_only[0][12:14] == b"\x08\x06"
    assert arp_only[1][16:18] == b"\x08\x06"          # after the VLAN tag
    assert len(arp_udp) == 3
    assert len(everything) == len(frames)


def test_arp_is_a_raw_filter_word_without_qualifiers(api):
    mctx = mtcp_create_context(0)
    listener = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    raw = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    for sock, ft in ((listener, MonitorFilter(stream_syn_filter="arp")),
                     (raw, MonitorFilter(raw_pkt_filter="arp host 10.0.0.1")),
                     (raw, MonitorFilter(raw_pkt_filter="arp port 1"))):
        try:
            mtcp_bind_monitor_filter(mctx, sock, ft)
        except OSError as exc:
            assert exc.errno == errno.EINVAL and "arp" in exc.strerror
        else:
            raise AssertionError(ft.stream_syn_filter or ft.raw_pkt_filter)
    assert mtcp_bind_monitor_filter(mctx, raw, MonitorFilter(raw_pkt_filter="not arp")) == 0


def test_reset_conn_is_mos_api_not_an_extension(mon):
    # mos_api.c has mtcp_reset_conn: RSTs to both ends; a listener is EINVAL there.
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    section = doc[doc.index("### mtcp_reset_conn"):doc.index("## Timers and the clock")]
    assert "C:      int mtcp_reset_conn(mctx_t mctx, int sock);" in section
    extensions = doc[doc.index("## mosxdp extensions"):doc.index("## The facade")]
    assert "mtcp_reset_conn" not in extensions
    conv = Conv()
    conv.handshake()
    conv.data("c", b"GET /")
    done = []

    def on_data(mctx, s, side, ev, arg):
        if not done:
            done.append(mtcp_reset_conn(mctx, s))
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data)
    out = mon.run(conv)
    assert done == [0]
    rsts = [tcp_of(frame) for _, frame in out if tcp_of(frame).flags & 0x04]
    assert sorted(t.dport for t in rsts) == [80, 40000]
    try:
        mtcp_reset_conn(mon.mctx, mon.sock)
    except OSError as exc:
        assert exc.errno == errno.EINVAL
    else:
        raise AssertionError("mtcp_reset_conn on a listener")


def test_struct_timeval_for_settimer(mon):
    # struct timeval tv = {0, 2500}; mtcp_settimer(mctx, id, &tv, cb)
    tv = timeval(tv_sec=0, tv_usec=2500)
    assert (tv.tv_sec, tv.tv_usec) == (0, 2500) and timeval is Timeval
    assert "timeval" in __import__("mosxdp").__all__
    fired = []
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_START, MOS_HK_SND,
                           lambda mctx, s, side, ev, arg: mtcp_settimer(
                               mctx, 7, tv, lambda mctx, tid, *rest: fired.append(
                                   (tid, mtcp_cb_get_ts(mctx)))))
    mon.run(Conv(t0=1_000_000, dt=1000).full(), batch_size=1)
    assert fired == [(7, 1_003_000)]          # the first packet clock at or after +2.5 ms


def _contexts_per_core(pcap, cores, write=None):
    """mOS's main(): mtcp_init, a context per core set up alike (a listener with a PKT_IN
    callback, a timer re-armed every 0.1 s), then mtcp_app_join of each in turn. Returns
    (frames seen by (cpu, client port, side), timer calls per cpu, the joins' results)."""
    import collections
    seen = collections.Counter()
    ticks = collections.Counter()

    def on_packet(mctx, sock, side, ev, arg):
        (_, cport), _ = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
        seen[(mctx.cpu, cport, side)] += 1

    def tick(mctx, tid, *rest):
        ticks[mctx.cpu] += 1
        mtcp_settimer(mctx, tid, timeval(0, 100_000), tick)
    mtcp_destroy()
    mtcp_init(None, pcap=pcap, write=write)
    try:
        contexts = []
        for core in range(cores):
            mctx = mtcp_create_context(core)
            sock = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
            mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_SND, on_packet)
            mtcp_settimer(mctx, 1, timeval(0, 100_000), tick)
            contexts.append(mctx)
        joins = [mtcp_app_join(mctx) for mctx in contexts]
    finally:
        mtcp_destroy()
    return seen, ticks, joins


@pytest.mark.skipif(os.cpu_count() < 2, reason="a second context needs a second CPU")
def test_contexts_per_core_share_the_input_each_flow_to_one(tmp_path):
    pcap = os.path.join(os.path.dirname(__file__), "..", "data", "concurrent.pcap")
    seen, ticks, joins = _contexts_per_core(pcap, 2, write=str(tmp_path / "out.pcap"))
    assert joins == [0, 0]
    owner = {}
    for (cpu, cport, side), count in seen.items():
        assert owner.setdefault(cport, cpu) == cpu, "a flow seen by two contexts"
    assert len(owner) == 8 and set(owner.values()) == {0, 1}
    # The capture went through once: each of its TCP frames was seen once, at HK_SND.
    alone, alone_ticks, _ = _contexts_per_core(pcap, 1)
    assert sum(seen.values()) == sum(alone.values()) == 1016
    assert {(cport, side): n for (_, cport, side), n in seen.items()} == \
        {(cport, side): n for (_, cport, side), n in alone.items()}
    # Both contexts' timers ran on the datapath's clock, as the one context's alone.
    assert ticks[0] == ticks[1] == alone_ticks[0] >= 2
    with open(pcap, "rb") as a, open(tmp_path / "out.pcap", "rb") as b:
        assert len(b.read()) == len(a.read())        # written once, every frame forwarded


@pytest.mark.skipif(os.cpu_count() < 2, reason="a second context needs a second CPU")
def test_joining_the_other_context_from_another_thread_waits_for_the_run(tmp_path):
    import threading
    import time
    pcap = os.path.join(os.path.dirname(__file__), "..", "data", "concurrent.pcap")
    mtcp_destroy()
    mtcp_init(None, pcap=pcap)
    try:
        first, second = mtcp_create_context(0), mtcp_create_context(1)
        started = threading.Event()
        done = []

        def slow(mctx, sock, side, ev, arg):
            started.set()
            time.sleep(0.2)
            done.append(time.monotonic())
        sock = mtcp_socket(first, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
        mtcp_register_callback(first, sock, MOS_ON_CONN_START, MOS_HK_SND, slow)
        sock = mtcp_socket(second, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
        mtcp_register_callback(second, sock, MOS_ON_CONN_START, MOS_HK_SND, slow)
        runner = threading.Thread(target=mtcp_app_join, args=(first,))
        runner.start()
        assert started.wait(30)
        assert mtcp_app_join(second) == 0        # as pthread_join: returns when the run ends
        returned = time.monotonic()
        runner.join()
        assert len(done) == 8 and returned >= max(done)
    finally:
        mtcp_destroy()


def test_a_context_alone_runs_again_at_its_next_join(tmp_path):
    pcap = os.path.join(os.path.dirname(__file__), "..", "data", "refused.pcap")
    mtcp_destroy()
    mtcp_init(None, pcap=pcap)
    try:
        mctx = mtcp_create_context(0)
        sock = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
        syns = []
        mtcp_register_callback(mctx, sock, MOS_ON_CONN_START, MOS_HK_SND,
                               lambda *a: syns.append(1))
        assert mtcp_app_join(mctx) == 0 and mtcp_app_join(mctx) == 0
        assert len(syns) == 2
    finally:
        mtcp_destroy()


def test_stat_print_prints_the_counters_at_mtcp_app_join(tmp_path, capsys):
    # mos.conf's stat_print (TOML stats): mOS's stack prints its statistics by itself.
    pcap = os.path.join(os.path.dirname(__file__), "..", "data", "refused.pcap")
    conf = tmp_path / "mos.conf"
    conf.write_text("mos {\n\tstat_print = eth0\n}\n")
    for stats in (True, False):
        mtcp_destroy()
        mtcp_init(str(conf) if stats else None, pcap=pcap)
        try:
            mtcp_app_join(mtcp_create_context(0))
        finally:
            mtcp_destroy()
        err = capsys.readouterr().err
        assert ("mosxdp: frames in 4 out 0" in err) is stats, err
