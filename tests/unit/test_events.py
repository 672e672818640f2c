"""Firing rules of the mOS events (API.md "Events and callbacks"), event by event, on crafted
TCP conversations driven through mosxdp.engine.run_frames. Only observable behaviour: which
callbacks run, with which side and hook, what the API returns inside them, what is
transmitted."""
import errno
import socket

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from flowcraft import (Conv, Monitor, api, checksums_ok, payload_of,  # noqa: F401  (api: a fixture)
                       reinit, tcp_of)
from mosxdp import *  # noqa: F401,F403

ALL_STATES = set(TcpState)     # the TCP_FINE_WAIT_2 alias is not a member of its own


def capture(fn, *args):
    try:
        return fn(*args)
    except OSError as exc:
        return exc


def state_of(mctx, sock, side):
    opt = MOS_TCP_STATE_CLI if side == MOS_SIDE_CLI else MOS_TCP_STATE_SVR
    return mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, opt)


def read_all(mctx, sock, side, size=4096):
    buf = bytearray(size)
    n = mtcp_ppeek(mctx, sock, side, buf, size, 0)
    return bytes(buf[:n])


def last_packet(mctx, sock, side) -> PktInfo:
    """mtcp_getlastpkt into a new PktInfo."""
    pinfo = PktInfo()
    mtcp_getlastpkt(mctx, sock, side, pinfo)
    return pinfo


def on(mon, event, hook, fn):
    """Register fn(mctx, sock, side, event, arg) without recording."""
    mtcp_register_callback(mon.mctx, mon.sock, event, hook, fn)


def streams_at_end(mon):
    """{side: bytes buffered for that side} captured at CONN_END (HK_RCV) of each flow.
    (Also records CONN_END at HK_RCV in mon.log.)"""
    got = {}

    def at_end(mctx, sock, side, ev, call):
        try:
            got[side] = read_all(mctx, sock, side)
        except OSError as exc:
            got[side] = exc
    mon.record(events=(MOS_ON_CONN_END,), hooks=(MOS_HK_RCV,), extra=at_end)
    return got


# ------------------------------------------------------------------ CONN_START
def test_conn_start_client_at_snd_on_syn_server_at_rcv(api):
    mon = Monitor()
    states = []

    def states_at_start(mctx, sock, side, ev, call):
        states.append((call.hook, side, call.cli, call.svr))
    mon.record(events=(MOS_ON_CONN_START,), extra=states_at_start)
    mon.run(Conv().full())
    assert mon.events() == [("CONN_START", "SND", MOS_SIDE_CLI), ("CONN_START", "RCV", MOS_SIDE_SVR)]
    assert states == [("SND", MOS_SIDE_CLI, TCP_SYN_SENT, TCP_LISTEN),
                      ("RCV", MOS_SIDE_SVR, TCP_SYN_SENT, TCP_SYN_RCVD)]


def test_retransmitted_syn_raises_rexmit_not_conn_start(api):
    mon = Monitor().record(events=(MOS_ON_CONN_START, MOS_ON_REXMIT, MOS_ON_TCP_STATE_CHANGE))
    conv = Conv()
    conv.syn()
    conv.syn()
    conv.syn()
    conv.synack()
    conv.ack("c")
    mon.run(conv)
    assert mon.count("CONN_START") == 2            # once per side, on the first SYN only
    assert mon.events("REXMIT") == [("REXMIT", "SND", MOS_SIDE_CLI), ("REXMIT", "RCV", MOS_SIDE_SVR)] * 2
    # The retransmissions change no state.
    assert mon.count("TCP_STATE_CHANGE") == 4


def test_retransmitted_synack_and_fin_raise_rexmit(api):
    mon = Monitor().record(events=(MOS_ON_REXMIT, MOS_ON_TCP_STATE_CHANGE))
    conv = Conv()
    conv.syn()
    synack = conv.synack()
    conv.emit(synack)
    conv.ack("c")
    fin = conv.fin("c")
    conv.emit(fin)
    conv.fin("s")
    conv.ack("c")
    mon.run(conv)
    assert mon.events("REXMIT") == [("REXMIT", "SND", MOS_SIDE_SVR), ("REXMIT", "RCV", MOS_SIDE_CLI),
                                    ("REXMIT", "SND", MOS_SIDE_CLI), ("REXMIT", "RCV", MOS_SIDE_SVR)]


@pytest.mark.parametrize("tw_interval", [0, 60])
def test_new_isn_syn_on_a_finished_tuple_starts_a_new_flow(api, tw_interval):
    reinit(tcp_tw_interval=tw_interval)     # 60 s: the first flow still lingers in TIME_WAIT
    mon = Monitor().record(events=(MOS_ON_CONN_START, MOS_ON_CONN_END))
    first = Conv().full()
    second = Conv(isn_c=900000, isn_s=700000, t0=first.ts).full()
    mon.run(first.frames + second.frames)
    starts = [c.sock for c in mon.log if c.event == "CONN_START"]
    assert len(starts) == 4 and starts[0] == starts[1] != starts[2] == starts[3]
    # The first flow ends (4 calls) before the second starts.
    assert [(c.event, c.sock) for c in mon.log][2:6] == [("CONN_END", starts[0])] * 4
    assert mon.count("CONN_END") == 8


# ------------------------------------------------------------------ CONN_END
def _end_reason_run(reason):
    """Run a flow that ends for `reason`; return (monitor, CONN_END records, flow socket)."""
    if reason == "timeout":
        reinit(tcp_timeout=2)
    elif reason == "evicted":
        reinit(max_concurrency=1)
    mon = Monitor()
    ends = []
    flows = []

    def at_start(mctx, sock, side, ev, arg):
        flows.append(sock)

    def at_end(mctx, sock, side, ev, arg):
        stats = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOSX_FLOW_STATS)
        pinfo = capture(mtcp_getlastpkt, mctx, sock, side, PktInfo())
        ends.append((sock, side, stats.end_reason, pinfo, mtcp_cb_get_ts(mctx)))
    on(mon, MOS_ON_CONN_START, MOS_HK_SND, at_start)
    for hook in (MOS_HK_SND, MOS_HK_RCV):
        mon.record(events=(MOS_ON_CONN_END,), hooks=(hook,),
                   extra=lambda mctx, sock, side, ev, call: at_end(mctx, sock, side, ev, None))
    conv = Conv()
    conv.handshake()
    conv.data("c", b"hello")
    frames = conv.frames
    if reason == "fin":
        conv.close()
    elif reason == "rst":
        conv.rst("c")
    elif reason in ("timeout", "evicted"):
        if reason == "timeout":
            conv.wait(3_000_000)
        other = Conv(cport=40001, t0=conv.ts)
        other.syn()
        frames = conv.frames + other.frames
    mon.run(frames)
    return mon, ends, flows[0]


@pytest.mark.parametrize("reason", ["fin", "rst", "timeout", "evicted", "eof"])
def test_conn_end_once_per_side_at_both_hooks(api, reason):
    mon, ends, flow_sock = _end_reason_run(reason)
    mine = [(c.hook, c.side) for c in mon.log if c.event == "CONN_END" and c.sock == flow_sock]
    assert sorted(mine) == sorted([("SND", 0), ("RCV", 0), ("SND", 1), ("RCV", 1)])
    reasons = {end[2] for end in ends if end[0] == flow_sock}
    assert reasons == {reason}
    for _, _, _, pinfo, _ in ends:   # the packet that raised CONN_END, or the last (as mOS)
        assert pinfo == 0
    if reason == "timeout":
        # At the packet clock: when the clock passed last activity + tcp_timeout.
        assert all(ts >= 1_003_000 + 2_000_000 for s, _, _, _, ts in ends if s == flow_sock)
    # Afterwards the flow socket is gone.
    with pytest.raises(OSError) as info:
        mtcp_peek(mon.mctx, flow_sock, MOS_SIDE_SVR, bytearray(8))
    assert info.value.errno == errno.ENOTCONN


def test_conn_end_timeout_not_before_idle_time(api):
    reinit(tcp_timeout=2)
    mon = Monitor().record(events=(MOS_ON_CONN_END,))
    conv = Conv()
    conv.handshake()
    conv.wait(1_500_000)
    other = Conv(cport=40001, t0=conv.ts)
    other.syn()
    mon.run(conv.frames + other.frames, batch_size=1)
    # Both flows only end at the end of input: 1.5 s idle is no timeout.
    ends = [c for c in mon.log if c.event == "CONN_END"]
    assert len(ends) == 8 and len({c.sock for c in ends}) == 2


# ----------------------------------------------------------- TCP_STATE_CHANGE
def transitions(mon):
    """(side, new state of that side) of every TCP_STATE_CHANGE callback, in order."""
    return [(c.side, c.cli if c.side == MOS_SIDE_CLI else c.svr)
            for c in mon.log if c.event == "TCP_STATE_CHANGE"]


def test_state_change_on_every_transition_of_a_normal_close(api):
    mon = Monitor().record(events=(MOS_ON_TCP_STATE_CHANGE,))
    conv = Conv()
    conv.handshake()
    conv.data("c", b"req")
    conv.data("s", b"resp")
    conv.fin("c")
    conv.ack("s")                   # the client's FIN acknowledged alone: FIN_WAIT_2
    conv.data("s", b"more")         # data after the client's FIN (half close)
    conv.fin("s")
    conv.ack("c")
    mon.run(conv)
    C, S = MOS_SIDE_CLI, MOS_SIDE_SVR
    assert transitions(mon) == [
        (C, TCP_SYN_SENT), (S, TCP_SYN_RCVD), (C, TCP_ESTABLISHED), (S, TCP_ESTABLISHED),
        (C, TCP_FIN_WAIT_1), (S, TCP_CLOSE_WAIT), (C, TCP_FIN_WAIT_2), (S, TCP_LAST_ACK),
        (C, TCP_TIME_WAIT), (S, TCP_CLOSED)]
    # A sender's change is seen at HK_SND, a receiver's at HK_RCV.
    hooks = [(c.hook, c.side) for c in mon.log if c.event == "TCP_STATE_CHANGE"]
    assert hooks[:4] == [("SND", C), ("RCV", S), ("RCV", C), ("RCV", S)]


def test_state_change_simultaneous_open(api):
    flags = []

    def packet_flags(mctx, sock, side, ev, call):
        if ev == MOS_ON_TCP_STATE_CHANGE:
            pinfo = last_packet(mctx, sock, side)
            flags.append(pinfo.tcph[13])
    mon = Monitor().record(events=(MOS_ON_TCP_STATE_CHANGE, MOS_ON_CONN_START), extra=packet_flags)
    conv = Conv()
    conv.syn()
    conv.syn(frm="s")                                   # the SYNs cross
    conv.acked["c"] = conv.nxt["s"]
    conv.seg("c", "SA", seq=conv.isn["c"], advance=False)
    conv.acked["s"] = conv.nxt["c"]
    conv.seg("s", "SA", seq=conv.isn["s"], advance=False)
    conv.data("c", b"hi")
    conv.data("s", b"yo")
    states = streams_at_end(mon)
    mon.run(conv)
    C, S = MOS_SIDE_CLI, MOS_SIDE_SVR
    assert transitions(mon) == [(C, TCP_SYN_SENT), (S, TCP_SYN_RCVD), (C, TCP_SYN_RCVD),
                                (S, TCP_ESTABLISHED), (C, TCP_ESTABLISHED)]
    # Each SYN-ACK, acknowledging the crossing SYN, completes the open of its receiver.
    assert flags == [0x02, 0x02, 0x02, 0x12, 0x12]
    assert mon.count("CONN_START") == 2
    assert states == {C: b"yo", S: b"hi"}


def test_state_change_simultaneous_close(api):
    mon = Monitor().record(events=(MOS_ON_TCP_STATE_CHANGE, MOS_ON_CONN_END))
    conv = Conv()
    conv.handshake()
    c_fin = conv.fin("c", emit=False)
    conv.acked["s"] = conv.nxt["c"] - 1                 # the FINs cross: neither acks the other
    s_fin = conv.seg("s", "FA", emit=False)
    conv.emit(c_fin)
    conv.emit(s_fin)
    conv.ack("c")
    conv.ack("s")
    mon.run(conv)
    C, S = MOS_SIDE_CLI, MOS_SIDE_SVR
    assert transitions(mon)[4:] == [(C, TCP_FIN_WAIT_1), (S, TCP_CLOSE_WAIT), (S, TCP_LAST_ACK),
                                    (C, TCP_CLOSING), (S, TCP_CLOSED), (C, TCP_TIME_WAIT)]
    assert mon.count("CONN_END") == 4


def test_a_fin_that_acknowledges_the_peers_fin_comes_after_it(api):
    # The server's FIN follows a segment the monitor missed, so the FIN is not delivered in
    # order; the client's FIN acknowledges it: the client received it before it sent its
    # own (CLOSE_WAIT, then LAST_ACK: one change seen at HK_SND), it did not close first
    # (FIN_WAIT_1, then CLOSING), and the server's last ACK closes it (not TIME_WAIT).
    mon = Monitor().record(events=(MOS_ON_TCP_STATE_CHANGE, MOS_ON_CONN_END))
    conv = Conv()
    conv.handshake()
    conv.data("c", b"req")
    conv.data("s", b"x" * 100, emit=False)            # never seen
    conv.fin("s")
    conv.fin("c")                                     # acks the server's FIN
    conv.ack("s")
    mon.run(conv)
    C, S = MOS_SIDE_CLI, MOS_SIDE_SVR
    assert transitions(mon)[4:] == [(S, TCP_FIN_WAIT_1), (C, TCP_LAST_ACK), (S, TCP_TIME_WAIT),
                                    (C, TCP_CLOSED)]
    assert mon.count("CONN_END") == 4


def test_all_eleven_states_reachable(api):
    seen = set()

    def collect(mctx, sock, side, ev, call):
        seen.update({call.cli, call.svr})
    scenarios = []
    normal = Conv()
    normal.handshake()
    normal.fin("c")
    normal.ack("s")
    normal.fin("s")
    normal.ack("c")
    scenarios.append(normal)
    crossing = Conv(cport=40001)
    crossing.handshake()
    crossing.fin("c")
    crossing.acked["s"] = crossing.nxt["c"] - 1       # the FINs cross
    crossing.seg("s", "FA")
    crossing.ack("c")
    crossing.ack("s")
    scenarios.append(crossing)
    for conv in scenarios:
        mon = Monitor().record(events=(MOS_ON_TCP_STATE_CHANGE, MOS_ON_CONN_START, MOS_ON_PKT_IN),
                               extra=collect)
        mon.run(conv)
        mtcp_destroy_context(mon.mctx)
    assert {s for s in seen if s is not None} == ALL_STATES
    assert len(ALL_STATES) == 11


# ------------------------------------------------------------------------ RST
@pytest.mark.parametrize("offset,accepted", [(0, True), (100, True), (999, True),
                                             (1000, False), (10 ** 6, False), (-5, False)])
def test_rst_in_window_accepted_out_of_window_ignored(api, offset, accepted):
    mon = Monitor().record(events=(MOS_ON_TCP_STATE_CHANGE, MOS_ON_CONN_END))
    reasons = []

    def at_end(mctx, sock, side, ev, call):
        if ev == MOS_ON_CONN_END:
            reasons.append(mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOSX_FLOW_STATS).end_reason)
    mon.record(events=(MOS_ON_CONN_END,), hooks=(MOS_HK_SND,), extra=at_end)
    conv = Conv()
    conv.win["c"] = 1000              # the client's receive window: 1000 bytes
    conv.handshake()
    conv.data("c", b"hello")
    conv.rst("s", seq=conv.nxt["s"] + offset)
    conv.data("c", b"more")
    streams = streams_at_end(mon)
    mon.run(conv)
    after_handshake = transitions(mon)[4:]
    if accepted:
        assert after_handshake == [(MOS_SIDE_SVR, TCP_CLOSED), (MOS_SIDE_CLI, TCP_CLOSED)]
        assert set(reasons) == {"rst"}
        assert streams[MOS_SIDE_SVR] == b"hello"        # nothing after the RST
    else:
        assert after_handshake == []
        assert set(reasons) == {"eof"}
        assert streams[MOS_SIDE_SVR] == b"hellomore"


def test_rst_answering_syn_needs_the_right_ack(api):
    mon = Monitor().record(events=(MOS_ON_TCP_STATE_CHANGE,))
    conv = Conv()
    conv.syn()
    conv.acked["s"] = conv.isn["c"] + 7                      # acks nothing the client sent
    conv.seg("s", "RA", seq=0, advance=False)
    conv.acked["s"] = conv.nxt["c"]
    conv.seg("s", "RA", seq=0, advance=False)               # a refused connection
    mon.run(conv)
    assert transitions(mon)[2:] == [(MOS_SIDE_SVR, TCP_CLOSED), (MOS_SIDE_CLI, TCP_CLOSED)]


# -------------------------------------------------------------- CONN_NEW_DATA
@pytest.mark.parametrize("batch,expected", [
    (1, [1, 1, 0, 1, 0]),       # one call per data segment
    (5, [1, 0, 1]),             # [SYN, SYN-ACK, ACK, a, b]: SVR once; [c, d, e]: CLI, SVR once
    (100, [0, 1]),              # one batch: once per side
])
def test_new_data_once_per_batch_per_side(api, batch, expected):
    mon = Monitor().record_null(events=(MOS_ON_CONN_NEW_DATA,))
    conv = Conv()
    conv.handshake()
    for frm, data in (("c", b"a"), ("c", b"b"), ("s", b"c"), ("c", b"d"), ("s", b"e")):
        conv.data(frm, data)
    mon.run(conv, batch_size=batch)
    assert [side for _, _, side in mon.events()] == expected


def test_new_data_not_raised_for_out_of_order_until_the_hole_fills(api):
    mon = Monitor()
    got = []

    def peek(mctx, sock, side, ev, call):
        buf = bytearray(64)
        got.append(bytes(buf[:mtcp_peek(mctx, sock, side, buf)]))
    mon.record_null(events=(MOS_ON_CONN_NEW_DATA,), extra=peek)
    conv = Conv()
    conv.handshake()
    a = conv.data("c", b"first-", emit=False)
    conv.data("c", b"second")
    conv.emit(a)
    mon.run(conv)
    assert got == [b"first-second"]


# --------------------------------------------------------------------- REXMIT
def test_rexmit_on_overlapping_payload(api):
    mon = Monitor().record(events=(MOS_ON_REXMIT,))
    conv = Conv()
    conv.handshake()
    base = conv.nxt["c"]
    conv.data("c", b"abcdef", seq=base)
    conv.data("c", b"klmn", seq=base + 10)          # out of order: no overlap
    conv.data("c", b"efghij", seq=base + 4)         # overlaps "ef" and fills the hole
    conv.data("c", b"abcdef", seq=base)             # a full retransmission
    streams = streams_at_end(mon)
    mon.run(conv)
    assert mon.events("REXMIT") == [("REXMIT", "SND", 0), ("REXMIT", "RCV", 1)] * 2
    assert streams[MOS_SIDE_SVR] == b"abcdefghijklmn"


def test_no_rexmit_at_the_receiver_for_reordered_disjoint_data(api):
    mon = Monitor().record(events=(MOS_ON_REXMIT,))
    conv = Conv()
    conv.handshake()
    base = conv.nxt["c"]
    conv.data("c", b"0123", seq=base + 4)
    conv.data("c", b"0123", seq=base)
    conv.data("s", b"x")
    mon.run(conv)
    # Nothing overlapped bytes the receiver had: no REXMIT at HK_RCV. (At HK_SND the
    # reordered segment lies below the sender's highest sequence number; the monitor cannot
    # tell it from a retransmission, so that hook is not asserted.)
    assert mon.events("REXMIT", hook="RCV") == []


# ---------------------------------------------------------------------- ERROR
def test_error_on_receive_window_overrun_with_window_scale(api):
    mon = Monitor()
    so_errors = []
    mon.record_null(events=(MOS_ON_ERROR,), extra=lambda mctx, sock, side, ev, call: so_errors.append(
        mtcp_getsockopt(mctx, sock, SOL_SOCKET, SO_ERROR)))
    conv = Conv()
    conv.handshake(wscale_c=2, wscale_s=2)
    conv.ack("s", window=4)                 # 4 << 2: the server takes 16 bytes
    conv.data("c", b"x" * 16)               # fills the window exactly: no error
    conv.data("c", b"y" * 2)                # beyond it
    streams = streams_at_end(mon)
    mon.run(conv)
    assert mon.events("ERROR") == [("ERROR", "NULL", MOS_SIDE_SVR)]
    assert so_errors == [errno.EMSGSIZE]
    assert streams[MOS_SIDE_SVR] == b"x" * 16     # what lies beyond the window is discarded


def recorded_errors(conv, svrbuf=None) -> list:
    """The ERROR events a monitor (with MOS_SVRBUF ``svrbuf``) records over ``conv``."""
    mon = Monitor().record_null(events=(MOS_ON_ERROR,))
    if svrbuf is not None:
        mon.setsockopt(MOS_SVRBUF, svrbuf)
    mon.run(conv)
    return mon.events()


def test_window_without_scale_is_not_scaled(api):
    def client_sends(n):
        conv = Conv()
        conv.handshake(wscale_c=2)              # only one side offers: no scaling
        conv.ack("s", window=4)
        conv.data("c", b"x" * n)
        return conv

    assert recorded_errors(client_sends(4)) == []
    reinit()
    assert recorded_errors(client_sends(16)) == [("ERROR", "NULL", MOS_SIDE_SVR)]


def test_error_on_buffer_overrun_of_unpeeked_bytes(api):
    conv = Conv()
    conv.handshake()
    conv.data("c", b"a" * 10)
    conv.data("c", b"b" * 10)
    assert recorded_errors(conv, svrbuf=16) == [("ERROR", "NULL", MOS_SIDE_SVR)]


def draining_monitor(svrbuf):
    """(a Monitor recording ERROR whose server buffer holds ``svrbuf`` bytes, the list of
    what its CONN_NEW_DATA callback reads at each call)."""
    mon = Monitor().record_null(events=(MOS_ON_ERROR,))
    mon.setsockopt(MOS_SVRBUF, svrbuf)
    got = []

    def drain(mctx, sock, side, ev, arg):
        buf = bytearray(64)
        got.append(bytes(buf[:mtcp_peek(mctx, sock, side, buf)]))
    on(mon, MOS_ON_CONN_NEW_DATA, MOS_NULL, drain)
    return mon, got


def test_no_error_when_the_socket_peeks_in_time(api):
    mon, got = draining_monitor(16)
    conv = Conv()
    conv.handshake()
    for chunk in (b"a" * 10, b"b" * 10, b"c" * 10):
        conv.data("c", chunk)
    mon.run(conv, batch_size=1)
    assert mon.events("ERROR") == []
    assert b"".join(got) == b"a" * 10 + b"b" * 10 + b"c" * 10


def test_a_batch_bigger_than_the_buffer_raises_new_data_before_it_would_overrun(api):
    """CONN_NEW_DATA is raised once a batch, at its end, unless the batch brings more than
    the buffer holds: then before the segment that would push out unread bytes, so that a
    socket that reads at each CONN_NEW_DATA loses nothing (large GRO/TSO segments)."""
    mon, got = draining_monitor(16)
    conv = Conv()
    conv.handshake()
    for chunk in (b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 4):
        conv.data("c", chunk)
    mon.run(conv, batch_size=64)
    assert mon.events("ERROR") == []
    # Before b (a would be pushed out), before c, then at the end of the batch (c, d).
    assert got == [b"a" * 10, b"b" * 10, b"c" * 10 + b"d" * 4]


def test_a_socket_that_does_not_read_gets_one_early_new_data(api):
    """A full buffer whose socket does not read at CONN_NEW_DATA: it gets one early
    CONN_NEW_DATA, not one at every segment."""
    mon = Monitor()
    mon.setsockopt(MOS_SVRBUF, 16)
    calls = []
    on(mon, MOS_ON_CONN_NEW_DATA, MOS_NULL, lambda *args: calls.append(args[2]))
    conv = Conv()
    conv.handshake()
    for i in range(40):
        conv.data("c", bytes([65 + i % 26]) * 2)
    mon.run(conv, batch_size=64)
    # 80 bytes: early before byte 16 would push out byte 0, then at the end of the batch.
    assert calls == [MOS_SIDE_SVR] * 2


def test_peek_after_overrun_raises_enodata_with_count_then_continues(api):
    mon = Monitor()
    mon.setsockopt(MOS_SVRBUF, 16)
    results = []
    read_sizes = [6, 64]

    def on_error(mctx, sock, side, ev, arg):
        buf = bytearray(read_sizes.pop(0))
        try:
            mtcp_peek(mctx, sock, side, buf)
        except PeekOverrunError as exc:
            results.append(("lost", exc.errno, exc.lost))
        n = mtcp_peek(mctx, sock, side, buf)
        results.append(bytes(buf[:n]))
    on(mon, MOS_ON_ERROR, MOS_NULL, on_error)
    conv = Conv()
    conv.handshake()
    conv.data("c", b"0123456789")
    conv.data("c", b"abcdefghij")           # 20 bytes in a 16-byte window: 4 lost
    conv.data("c", b"KLMNOPQRSTUVWXYZ")     # the window moves to 20..36: 10 unread bytes lost
    mon.run(conv)
    assert results == [("lost", errno.ENODATA, 4), b"456789",
                       ("lost", errno.ENODATA, 10), b"KLMNOPQRSTUVWXYZ"]


# ------------------------------------------------------------------------ UDEs
def test_ude_filter_gates_and_nests(api):
    mon = Monitor()
    calls = []

    def is_request(mctx, sock, side, ev, arg):
        calls.append(("filter", arg, side))
        return read_all(mctx, sock, side).startswith(b"GET")

    def is_complete(mctx, sock, side, ev, arg):
        calls.append(("nested filter", arg, side))
        return read_all(mctx, sock, side).endswith(b"\r\n\r\n")

    request = mtcp_define_event(MOS_ON_CONN_NEW_DATA, is_request, "req")
    complete = mtcp_define_event(request, is_complete, "done")

    def cb(mctx, sock, side, ev, arg):
        calls.append(("cb", ev, arg, side))
    on(mon, request, MOS_NULL, cb)
    on(mon, complete, MOS_NULL, cb)
    conv = Conv()
    conv.handshake()
    conv.data("c", b"GET / HTTP/1.1\r\n")
    conv.data("s", b"HTTP/1.1 100 Continue\r\n\r\n")
    conv.data("c", b"\r\n")
    mon.run(conv)
    S, C = MOS_SIDE_SVR, MOS_SIDE_CLI
    assert calls == [
        ("filter", "req", S), ("cb", request, "req", S), ("nested filter", "done", S),
        ("filter", "req", C),                                    # gated: no callback, no nesting
        ("filter", "req", S), ("cb", request, "req", S), ("nested filter", "done", S),
        ("cb", complete, "done", S),
    ]


def test_ude_filters_run_only_when_someone_waits(api):
    mon = Monitor()
    calls = []
    mtcp_define_event(MOS_ON_PKT_IN, lambda *a: calls.append(a) or True, None)
    mon.run(Conv().full())
    assert calls == []


def test_same_definition_same_event_id(api):
    def f(*a):
        return True

    def g(*a):
        return True
    ude = mtcp_define_event(MOS_ON_CONN_NEW_DATA, f, None)
    assert mtcp_define_event(MOS_ON_CONN_NEW_DATA, f, None) == ude
    assert mtcp_define_event(MOS_ON_CONN_NEW_DATA, f, "x") != ude
    assert mtcp_define_event(MOS_ON_CONN_NEW_DATA, g, None) != ude
    assert mtcp_define_event(MOS_ON_PKT_IN, f, None) != ude
    nested = mtcp_define_event(ude, f, None)
    assert mtcp_define_event(ude, f, None) == nested != ude
    # Allocated events are always new.
    assert mtcp_alloc_event(ude) != mtcp_alloc_event(ude)


def test_alloc_and_raise_inside_a_filter_triggers_the_child(api):
    mon = Monitor()
    children = {}
    hits = []

    def classify(mctx, sock, side, ev, arg):
        pinfo = last_packet(mctx, sock, side)
        flags = pinfo.tcph[13]
        if flags & TH_SYN:
            mtcp_raise_event(mctx, children["syn"])
        if flags & TH_FIN:
            mtcp_raise_event(mctx, children["fin"])
        return False            # the parent itself never fires

    parent = mtcp_define_event(MOS_ON_PKT_IN, classify, None)
    children["syn"] = mtcp_alloc_event(parent)
    children["fin"] = mtcp_alloc_event(parent)
    names = {children["syn"]: "syn", children["fin"]: "fin"}

    def cb(mctx, sock, side, ev, arg):
        pinfo = last_packet(mctx, sock, side)    # the child still has the packet
        hits.append((names.get(ev, ev), side, pinfo.tcph[13]))
    on(mon, children["syn"], MOS_HK_SND, cb)
    on(mon, children["fin"], MOS_HK_RCV, cb)
    on(mon, parent, MOS_HK_RCV, cb)
    mon.run(Conv().full())
    assert hits == [("syn", MOS_SIDE_CLI, 0x02), ("syn", MOS_SIDE_SVR, 0x12),
                    ("fin", MOS_SIDE_SVR, 0x11), ("fin", MOS_SIDE_CLI, 0x11)]


def test_raise_event_inside_a_callback(api):
    mon = Monitor()
    child = mtcp_alloc_event(MOS_ON_CONN_START)
    hits = []
    on(mon, MOS_ON_CONN_START, MOS_HK_SND, lambda mctx, sock, side, ev, arg: mtcp_raise_event(mctx, child))
    on(mon, child, MOS_HK_SND, lambda mctx, sock, side, ev, arg: hits.append((ev, side)))
    mon.run(Conv().full())
    assert hits == [(child, MOS_SIDE_CLI)]


# ------------------------------------------------------- setlastpkt at the hooks
def _overwrite_run(option, hook=MOS_HK_SND):
    mon = Monitor()
    seen = []

    def edit(mctx, sock, side, ev, arg):
        pinfo = last_packet(mctx, sock, side)
        if pinfo.payloadlen:
            mtcp_setlastpkt(mctx, sock, side, 6, b"EVIL", 4, option)

    def new_data(mctx, sock, side, ev, arg):
        buf = bytearray(64)
        seen.append(bytes(buf[:mtcp_peek(mctx, sock, side, buf)]))
    on(mon, MOS_ON_PKT_IN, hook, edit)
    on(mon, MOS_ON_CONN_NEW_DATA, MOS_NULL, new_data)
    conv = Conv()
    conv.handshake()
    original = conv.data("c", b"hello world!")
    mon.run(conv)
    return mon, seen, original


def test_overwrite_at_hk_snd_is_buffered_and_forwarded(api):
    mon, seen, original = _overwrite_run(MOS_OVERWRITE | MOS_TCP_PAYLOAD | MOS_UPDATE_TCP_CHKSUM)
    assert seen == [b"hello EVILd!"]
    frame = mon.out[-1][1]
    assert payload_of(frame) == b"hello EVILd!"
    assert len(frame) == len(original)
    assert checksums_ok(frame)
    assert not checksums_ok(original[:-6] + b"EVILd!")   # the same edit with a stale checksum


def test_overwrite_without_checksum_update_leaves_it_stale(api):
    mon, seen, original = _overwrite_run(MOS_OVERWRITE | MOS_TCP_PAYLOAD)
    frame = mon.out[-1][1]
    assert payload_of(frame) == b"hello EVILd!" and seen == [b"hello EVILd!"]
    assert tcp_of(frame).chksum == tcp_of(original).chksum
    assert not checksums_ok(frame)


def test_overwrite_at_hk_rcv_is_forwarded_but_not_buffered(api):
    mon, seen, original = _overwrite_run(MOS_OVERWRITE | MOS_TCP_PAYLOAD | MOS_UPDATE_TCP_CHKSUM,
                                         hook=MOS_HK_RCV)
    assert seen == [b"hello world!"]              # the receiver buffered it before the edit
    assert payload_of(mon.out[-1][1]) == b"hello EVILd!"
    assert checksums_ok(mon.out[-1][1])


def test_header_overwrite_with_ip_checksum_update(api):
    mon = Monitor()
    infos = []

    def edit(mctx, sock, side, ev, arg):
        pinfo = last_packet(mctx, sock, side)
        if pinfo.payloadlen:
            mtcp_setlastpkt(mctx, sock, side, 8, bytes([7]), 1,                  # TTL 7
                            MOS_OVERWRITE | MOS_IP_HDR | MOS_UPDATE_IP_CHKSUM)
            mtcp_setlastpkt(mctx, sock, side, 14, (1234).to_bytes(2, "big"), 2,  # window
                            MOS_OVERWRITE | MOS_TCP_HDR | MOS_UPDATE_TCP_CHKSUM)
            mtcp_getlastpkt(mctx, sock, side, pinfo)
            infos.append(pinfo.window)
    on(mon, MOS_ON_PKT_IN, MOS_HK_SND, edit)
    conv = Conv()
    conv.handshake()
    conv.data("c", b"data")
    mon.run(conv)
    frame = mon.out[-1][1]
    assert Ether(frame)[IP].ttl == 7 and tcp_of(frame).window == 1234
    assert checksums_ok(frame)
    assert infos == [1234]                        # seq/ack/window are re-read after the edit


def _drop_run(hook, drop_fin=True):
    mon = Monitor().record(events=(MOS_ON_TCP_STATE_CHANGE, MOS_ON_REXMIT), hooks=(MOS_HK_RCV,))
    seen = []

    def drop(mctx, sock, side, ev, arg):
        pinfo = last_packet(mctx, sock, side)
        if pinfo.payloadlen or (drop_fin and pinfo.tcph[13] & TH_FIN):
            mtcp_setlastpkt(mctx, sock, side, 0, None, 0, MOS_DROP)

    def new_data(mctx, sock, side, ev, arg):
        buf = bytearray(64)
        seen.append(bytes(buf[:mtcp_peek(mctx, sock, side, buf)]))
    on(mon, MOS_ON_PKT_IN, hook, drop)
    on(mon, MOS_ON_CONN_NEW_DATA, MOS_NULL, new_data)
    fragments = []
    on(mon, MOS_ON_CONN_END, MOS_HK_SND, lambda mctx, sock, side, ev, arg: fragments.append(
        mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_FRAGINFO_SVRBUF)) if side == 1 else None)
    conv = Conv()
    conv.handshake()
    conv.data("c", b"secret")
    conv.fin("c")
    mon.run(conv)
    return mon, conv, seen, fragments


def test_drop_at_hk_snd_is_not_applied_to_the_receiver(api):
    mon, conv, seen, fragments = _drop_run(MOS_HK_SND)
    assert seen == [] and fragments == [[]]       # nothing in the server's buffer
    # The FIN never reached the server either: it stays ESTABLISHED (no CLOSE_WAIT).
    assert transitions(mon) == [(1, TCP_SYN_RCVD), (0, TCP_ESTABLISHED), (1, TCP_ESTABLISHED)]
    sent = [f for _, f in mon.out]
    assert sent == [f for _, f in conv.frames[:3]]  # both dropped frames are absent


def test_drop_at_hk_rcv_is_buffered_but_not_forwarded(api):
    mon, conv, seen, fragments = _drop_run(MOS_HK_RCV, drop_fin=False)
    assert seen == [b"secret"]
    assert [f for _, f in mon.out] == [f for _, f in conv.frames if f != conv.frames[3][1]]


def test_dropped_then_retransmitted_segment_is_buffered(api):
    mon = Monitor()
    dropped = []
    seen = []

    def drop_first(mctx, sock, side, ev, arg):
        pinfo = last_packet(mctx, sock, side)
        if pinfo.payloadlen and not dropped:
            dropped.append(pinfo.seq)
            mtcp_setlastpkt(mctx, sock, side, 0, None, 0, MOS_DROP)
    on(mon, MOS_ON_PKT_IN, MOS_HK_SND, drop_first)
    on(mon, MOS_ON_CONN_NEW_DATA, MOS_NULL, lambda mctx, sock, side, ev, arg: seen.append(
        read_all(mctx, sock, side)))
    conv = Conv()
    conv.handshake()
    seg = conv.data("c", b"again")
    conv.emit(seg)
    mon.run(conv)
    assert seen == [b"again"]
    assert [f for _, f in mon.out].count(seg) == 1


# ----------------------------------------------------------------- packets
def test_getlastpkt_fields(api):
    mon = Monitor()
    infos = []

    def grab(mctx, sock, side, ev, arg):
        pinfo = last_packet(mctx, sock, side)
        infos.append((side, pinfo.seq, pinfo.ack_seq, pinfo.payloadlen, pinfo.offset, pinfo.window,
                      pinfo.eth_len, pinfo.ip_len, pinfo.cur_ts, bytes(pinfo.payload),
                      pinfo.frame()))
        # The copy is the caller's: writing into it changes nothing that is forwarded.
        if pinfo.payloadlen:
            pinfo.payload[0:1] = b"#"
    on(mon, MOS_ON_PKT_IN, MOS_HK_RCV, grab)
    conv = Conv(isn_c=1000, isn_s=5000, t0=2_000_000)
    conv.handshake()
    conv.data("c", b"hello", window=333)
    conv.data("c", b"world")
    conv.data("s", b"ok")
    mon.run(conv)
    data = [i for i in infos if i[3]]
    assert [i[:10] for i in data] == [
        (1, 1001, 5001, 5, 0, 333, 14 + 20 + 20 + 5, 20 + 20 + 5, 2003, b"hello"),
        (1, 1006, 5001, 5, 5, 65535, 59, 45, 2004, b"world"),
        (0, 5001, 1011, 2, 0, 65535, 56, 42, 2005, b"ok"),
    ]
    frames = [f for _, f in conv.frames]
    assert [i[10] for i in infos] == frames            # views over a copy of each frame
    assert [f for _, f in mon.out] == frames


def test_getlastpkt_ipv6_fields(api):
    mon = Monitor(domain=socket.AF_INET6)
    infos = []

    def grab(mctx, sock, side, ev, arg):
        pinfo = last_packet(mctx, sock, side)
        if pinfo.payloadlen:
            infos.append((pinfo.seq, pinfo.offset, pinfo.ip_len, len(pinfo.iph), len(pinfo.tcph),
                          bytes(pinfo.payload)))
    on(mon, MOS_ON_PKT_IN, MOS_HK_SND, grab)
    conv = Conv(cli="2001:db8::1", svr="2001:db8::2")
    conv.handshake()
    conv.data("c", b"six")
    mon.run(conv)
    assert infos == [(1001, 0, 40 + 20 + 3, 40, 20, b"six")]


def test_sendpkt_frames_precede_the_current_frame_with_valid_checksums(api):
    mon = Monitor(domain=socket.AF_INET6)

    def inject(mctx, sock, side, ev, arg):
        pinfo = last_packet(mctx, sock, side)
        if pinfo.payloadlen:
            pinfo.payload[:3] = b"INJ"
            pinfo.tcph[16:18] = b"\x00\x00"               # garbage checksum: sendpkt fixes it
            mtcp_sendpkt(mctx, sock, pinfo)
    on(mon, MOS_ON_PKT_IN, MOS_HK_SND, inject)
    conv = Conv(cli="2001:db8::1", svr="2001:db8::2")
    conv.handshake()
    original = conv.data("c", b"payload")
    conv.ack("s")
    mon.run(conv)
    out = [f for _, f in mon.out]
    assert len(out) == len(conv.frames) + 1
    assert out[3] != original and payload_of(out[3]) == b"INJload"
    assert out[4] == original                            # the processed frame comes after
    assert all(checksums_ok(f) for f in out)
    assert Ether(out[3])[IPv6].plen == 20 + 7


def test_reset_conn_sends_rst_to_both_ends_before_the_frame(api):
    mon = Monitor()
    done = []

    def reset(mctx, sock, side, ev, arg):
        if not done:
            done.append(mtcp_reset_conn(mctx, sock))
    on(mon, MOS_ON_CONN_NEW_DATA, MOS_NULL, reset)
    conv = Conv()
    conv.handshake()
    conv.data("c", b"abc")
    mon.run(conv, batch_size=1)
    out = [f for _, f in mon.out]
    assert out[:4] == [f for _, f in conv.frames]
    rsts = [Ether(f) for f in out[4:]]
    assert len(rsts) == 2 and all(checksums_ok(f) for f in out[4:])
    to_server = next(p for p in rsts if p[IP].dst == "10.0.0.2")
    to_client = next(p for p in rsts if p[IP].dst == "10.0.0.1")
    assert to_server[TCP].flags.R and to_client[TCP].flags.R
    assert (to_server[TCP].sport, to_server[TCP].dport, to_server[TCP].seq) == (40000, 80, 1004)
    assert (to_client[TCP].sport, to_client[TCP].dport, to_client[TCP].seq) == (80, 40000, 5001)


def test_reset_conn_inside_a_packet_callback_precedes_that_frame(api):
    mon = Monitor()

    def reset(mctx, sock, side, ev, arg):
        pinfo = last_packet(mctx, sock, side)
        if pinfo.payloadlen:
            mtcp_reset_conn(mctx, sock)
    on(mon, MOS_ON_PKT_IN, MOS_HK_RCV, reset)
    conv = Conv()
    conv.handshake()
    data = conv.data("c", b"abc")
    mon.run(conv)
    out = [f for _, f in mon.out]
    assert [tcp_of(f).flags.R for f in out[3:5]] == [True, True]
    assert out[5] == data


# -------------------------------------------------------------- MOS_STOP_MON
def test_stop_mon_stops_callbacks_for_that_side(api):
    mon = Monitor().record(events=(MOS_ON_PKT_IN,)).record_null(events=(MOS_ON_CONN_NEW_DATA,))
    on(mon, MOS_ON_CONN_START, MOS_HK_RCV, lambda mctx, sock, side, ev, arg: mtcp_setsockopt(
        mctx, sock, SOL_MONSOCKET, MOS_STOP_MON, MOS_SIDE_CLI))
    conv = Conv()
    conv.handshake()
    conv.data("c", b"to server")
    conv.data("s", b"to client")
    out = mon.run(conv)
    sides_after = {side for _, _, side in mon.events()[2:]}
    assert sides_after == {MOS_SIDE_SVR}
    assert mon.events("CONN_NEW_DATA") == [("CONN_NEW_DATA", "NULL", MOS_SIDE_SVR)]
    assert len(out) == len(conv.frames)


def test_stop_mon_both_stops_everything_and_forwards(api):
    mon = Monitor().record(events=(MOS_ON_PKT_IN, MOS_ON_TCP_STATE_CHANGE, MOS_ON_CONN_END))
    mon.record_null(events=(MOS_ON_CONN_NEW_DATA,))
    on(mon, MOS_ON_CONN_START, MOS_HK_RCV, lambda mctx, sock, side, ev, arg: mtcp_setsockopt(
        mctx, sock, SOL_MONSOCKET, MOS_STOP_MON, MOS_SIDE_BOTH))
    conv = Conv().full()
    out = mon.run(conv)
    # Immediately: not even the TCP_STATE_CHANGE of the same packet (raised after CONN_START),
    # and no CONN_END.
    assert mon.events() == [("PKT_IN", "SND", 0), ("TCP_STATE_CHANGE", "SND", 0),
                            ("PKT_IN", "RCV", 1)]
    assert [f for _, f in out] == [f for _, f in conv.frames]


def test_stop_mon_of_one_socket_leaves_the_other(api):
    mon = Monitor().record(events=(MOS_ON_PKT_IN,))
    other = mtcp_socket(mon.mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    theirs = []
    mtcp_register_callback(mon.mctx, other, MOS_ON_PKT_IN, MOS_HK_RCV,
                           lambda mctx, sock, side, ev, arg: theirs.append(side))
    on(mon, MOS_ON_CONN_START, MOS_HK_SND, lambda mctx, sock, side, ev, arg: mtcp_setsockopt(
        mctx, sock, SOL_MONSOCKET, MOS_STOP_MON, MOS_SIDE_BOTH))
    conv = Conv().full()
    mon.run(conv)
    assert mon.events() == [("PKT_IN", "SND", 0)]
    assert len(theirs) == len(conv.frames)


# -------------------------------------------------------------------- timers
def test_settimer_fires_once_at_the_packet_clock(api):
    mon = Monitor()
    fired = []
    armed = []

    def tick(mctx, timer_id, side, ev, arg):
        fired.append((timer_id, side, ev, arg, mtcp_cb_get_ts(mctx)))

    def at_start(mctx, sock, side, ev, arg):
        armed.append(mtcp_cb_get_ts(mctx))
        mtcp_settimer(mctx, 42, 0.0025, tick)                  # 2.5 ms
        mtcp_settimer(mctx, 43, (0, 10_000), tick)             # struct timeval: 10 ms
    on(mon, MOS_ON_CONN_START, MOS_HK_SND, at_start)
    seen_ts = []
    on(mon, MOS_ON_PKT_IN, MOS_HK_SND, lambda mctx, sock, side, ev, arg: seen_ts.append(
        (mtcp_cb_get_ts(mctx), len(fired))))
    conv = Conv(t0=5_000_000, dt=1000)
    conv.handshake()
    for _ in range(4):
        conv.data("c", b"x")                                   # 5.003 .. 5.006 s
    mon.run(conv, batch_size=1)
    assert armed == [5_000_000]
    assert fired == [(42, 0, 0, None, 5_003_000)]              # first clock >= 5.0025 s
    # Before the deadline's packet nothing had fired; 43 (5.010 s) never came due.
    assert (5_002_000, 0) in seen_ts and (5_004_000, 1) in seen_ts


# ------------------------------------------------------- sequence number wrap
@pytest.mark.parametrize("v6", [False, True])
def test_sequence_wrap_reassembles(api, v6):
    mon = Monitor(domain=socket.AF_UNSPEC)
    info = []

    def at_end(mctx, sock, side, ev, arg):
        if side == MOS_SIDE_SVR:
            info.append((read_all(mctx, sock, side),
                         mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_INFO_SVRBUF),
                         mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_FRAGINFO_SVRBUF)))
    on(mon, MOS_ON_CONN_END, MOS_HK_RCV, at_end)
    addrs = {"cli": "2001:db8::1", "svr": "2001:db8::2"} if v6 else {}
    conv = Conv(isn_c=2 ** 32 - 6, isn_s=2 ** 32 - 1, **addrs)
    conv.handshake()
    chunks = [conv.data("c", part, emit=False) for part in (b"0123", b"4567", b"89ab", b"cdef")]
    for index in (1, 3, 0, 2):                # reordered across the wrap
        conv.emit(chunks[index])
    conv.data("s", b"server")
    mon.run(conv)
    data, buf_info, fragments = info[0]
    assert data == b"0123456789abcdef"
    assert buf_info.tcpbi_init_seq == 2 ** 32 - 5
    assert buf_info.tcpbi_next_byte_expected == (2 ** 32 - 5 + 16) % 2 ** 32
    assert buf_info.tcpbi_last_byte_received == (2 ** 32 - 5 + 16) % 2 ** 32
    assert fragments == [TcpRingFragment(0, 16)]


# ------------------------------------------------------------- overlap policy
@pytest.mark.parametrize("policy,expected", [(MOS_OVERLAP_POLICY_FIRST, b"BBAAAACC"),
                                             (MOS_OVERLAP_POLICY_LAST, b"BBBBAACC")])
def test_overlap_policy_set_at_conn_start(api, policy, expected):
    mon = Monitor()
    on(mon, MOS_ON_CONN_START, MOS_HK_SND, lambda mctx, sock, side, ev, arg: mtcp_setsockopt(
        mctx, sock, SOL_MONSOCKET, MOS_SVROVERLAP, policy))
    streams = streams_at_end(mon)
    conv = Conv()
    conv.handshake()
    base = conv.nxt["c"]
    conv.data("c", b"AAAA", seq=base + 2)
    conv.data("c", b"BBBB", seq=base)
    conv.data("c", b"CC", seq=base + 6)
    mon.run(conv)
    assert streams[MOS_SIDE_SVR] == expected


# ---------------------------------------------------------- orphans, pickup
def test_orphans_raise_orphan_on_listeners(api):
    mon = Monitor().record(events=(MOS_ON_PKT_IN, MOS_ON_CONN_START))
    other = mtcp_socket(mon.mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    six = mtcp_socket(mon.mctx, socket.AF_INET6, MOS_SOCK_MONITOR_STREAM, 0)
    orphans = []

    def orphan(mctx, sock, side, ev, arg):
        pinfo = last_packet(mctx, sock, side)       # the orphan packet itself
        orphans.append((sock, side, pinfo.seq, bytes(pinfo.payload)))
    for s in (mon.sock, other, six):
        mtcp_register_callback(mon.mctx, s, MOS_ON_ORPHAN, MOS_NULL, orphan)
    mtcp_bind_monitor_filter(mon.mctx, other, MonitorFilter(stream_orphan_filter="dst port 9"))
    conv = Conv(isn_c=100)
    conv.data("c", b"mid", seq=101)
    conv.fin("s", seq=7)
    mon.run(conv)
    assert orphans == [(mon.sock, MOS_SIDE_BOTH, 101, b"mid"), (mon.sock, MOS_SIDE_BOTH, 7, b"")]
    assert mon.log == []                               # no flow, no flow events


def test_midstream_pickup_starts_established(api):
    reinit(midstream_pickup=True)
    mon = Monitor().record(events=(MOS_ON_CONN_START, MOS_ON_PKT_IN, MOS_ON_CONN_END))
    orphans = []
    on(mon, MOS_ON_ORPHAN, MOS_NULL, lambda mctx, sock, side, ev, arg: orphans.append(side))
    streams = streams_at_end(mon)
    conv = Conv()
    conv.data("c", b"mid-")
    conv.data("c", b"stream")
    conv.data("s", b"reply")
    mon.run(conv)
    assert orphans == [MOS_SIDE_BOTH]                  # the first packet had no flow
    assert mon.count("CONN_START") == 0
    first = mon.log[0]
    assert (first.event, first.hook, first.side) == ("PKT_IN", "SND", MOS_SIDE_CLI)
    assert (first.cli, first.svr) == (TCP_ESTABLISHED, TCP_ESTABLISHED)
    assert streams == {MOS_SIDE_SVR: b"mid-stream", MOS_SIDE_CLI: b"reply"}
    assert mon.count("CONN_END") == 4


# ------------------------------------------------------------- order, domains
def test_order_raw_pkt_in_then_snd_then_rcv(api):
    mon = Monitor()
    raw = mtcp_socket(mon.mctx, socket.AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    order = []
    mtcp_register_callback(mon.mctx, raw, MOS_ON_PKT_IN, MOS_NULL,
                           lambda mctx, sock, side, ev, arg: order.append(("raw", side)))
    on(mon, MOS_ON_PKT_IN, MOS_NULL, lambda mctx, sock, side, ev, arg: order.append(("NULL", side)))
    on(mon, MOS_ON_PKT_IN, MOS_HK_SND, lambda mctx, sock, side, ev, arg: order.append(("SND", side)))
    on(mon, MOS_ON_PKT_IN, MOS_HK_RCV, lambda mctx, sock, side, ev, arg: order.append(("RCV", side)))
    conv = Conv()
    conv.syn()
    conv.synack()
    mon.run(conv)
    null = int(MOS_NULL)
    assert order == [("raw", null), ("NULL", 0), ("SND", 0), ("RCV", 1),
                     ("raw", null), ("NULL", 1), ("SND", 1), ("RCV", 0)]


@pytest.mark.parametrize("domain,sees", [(socket.AF_INET, {4}), (socket.AF_INET6, {6}),
                                         (socket.AF_UNSPEC, {4, 6})])
def test_socket_domain_selects_ip_version(api, domain, sees):
    mon = Monitor(domain=domain)
    versions = []

    def at_start(mctx, sock, side, ev, arg):
        addr, _ = mtcp_getpeername(mctx, sock, MOS_SIDE_CLI)
        versions.append(6 if ":" in addr else 4)
    on(mon, MOS_ON_CONN_START, MOS_HK_SND, at_start)
    v4 = Conv().full()
    v6 = Conv(cli="2001:db8::1", svr="2001:db8::2", t0=v4.ts).full()
    mon.run(v4.frames + v6.frames)
    assert set(versions) == sees and len(versions) == len(sees)


def test_ipv6_flow_end_to_end(api):
    mon = Monitor(domain=socket.AF_INET6).record()
    streams = streams_at_end(mon)
    conv = Conv(cli="2001:db8::10", svr="2001:db8::20").full()
    out = mon.run(conv)
    assert streams == {MOS_SIDE_SVR: b"GET / HTTP/1.0\r\n\r\n", MOS_SIDE_CLI: b"HTTP/1.0 200 OK\r\n\r\nhi"}
    assert mon.count("CONN_START") == 2 and mon.count("CONN_END") == 4
    assert [f for _, f in out] == [f for _, f in conv.frames]
