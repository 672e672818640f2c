"""Bytes the monitor never saw while the receiver has them (a hole in the capture): the
stream goes on after them once the receiver's ACK passes them, and mtcp_peek (ENODATA),
mtcp_ppeek, MOS_FRAGINFO and conn.log's missed_bytes report exactly them. Also when
MOS_ON_ERROR and window_overruns count a segment beyond the receiver's window."""
import argparse
import base64
import errno
import json
import socket
from pathlib import Path

from flowcraft import Conv, Monitor, api, reinit  # noqa: F401  (api: a fixture)
from mosxdp import *  # noqa: F401,F403
from mosxdp.apps import connlog, flowdump
from mosxdp.core.streams import MAX_HELD_BEYOND_EDGE
from mosxdp.engine import run_frames
from mosxdp.io.pcap import PcapReader

DATA = Path(__file__).resolve().parent.parent / "data"

K = 1000


def chunk(index, size=K):
    """Distinct bytes per chunk, so a byte read at the wrong offset shows."""
    return bytes((index * 7 + i) % 251 for i in range(size))


class Reader:
    """Reads the server's side (what the client sent) with mtcp_peek on every
    MOS_ON_CONN_NEW_DATA and at MOS_ON_CONN_END, as flowdump does."""

    def __init__(self, mon, side=MOS_SIDE_SVR, sock=None):
        self.side = side
        self.data = bytearray()       # what peek gave, lost bytes as zeros
        self.lost = []                # (offset, lost, hole) of each ENODATA
        self.peeks = []               # (cursor, bytes read) per NEW_DATA
        self.missed = None
        self.overruns = None
        sock = mon.sock if sock is None else sock
        mtcp_register_callback(mon.mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, self.on_data)
        mtcp_register_callback(mon.mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, self.on_end)

    def drain(self, mctx, sock):
        buf = bytearray(300)
        got = 0
        while True:
            try:
                count = mtcp_peek(mctx, sock, self.side, buf)
            except PeekOverrunError as exc:
                assert exc.errno == errno.ENODATA
                self.lost.append((len(self.data), exc.lost, exc.hole))
                self.data += bytes(exc.lost)
                continue
            if not count:
                return got
            self.data += buf[:count]
            got += count

    def on_data(self, mctx, sock, side, event, arg):
        if side == self.side:
            self.peeks.append((len(self.data), self.drain(mctx, sock)))

    def on_end(self, mctx, sock, side, event, arg):
        if side != self.side:
            return
        self.drain(mctx, sock)
        stats = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOSX_FLOW_STATS)
        self.missed = stats.missed_bytes[1 - self.side]
        self.overruns = mctx.stack.counters["buffer_overruns"]


def upload(chunks, dropped=(), ack_every=1):
    """The client sends `chunks`; those whose index is in `dropped` are not captured; the
    server acknowledges everything sent after every `ack_every` chunks."""
    conv = Conv()
    conv.handshake()
    for index, data in enumerate(chunks):
        conv.data("c", data, emit=index not in dropped)
        if (index + 1) % ack_every == 0:
            conv.ack("s")
    conv.close()
    return conv


def second_chunk_uncaptured(chunks):
    """The handshake, then the client's chunks 0 to 2 with chunk 1 not captured (a hole):
    (the conversation, chunk 1's frame, for a copy the capture shows later)."""
    conv = Conv()
    conv.handshake()
    conv.data("c", chunks[0])
    late = conv.data("c", chunks[1], emit=False)
    conv.data("c", chunks[2])
    return conv, late


def run(conv, batch_size=1, svrbuf=None, mon=None):
    mon = mon or Monitor()
    if svrbuf is not None:
        mon.setsockopt(MOS_SVRBUF, svrbuf)
    reader = Reader(mon)
    mon.run(conv, batch_size=batch_size)
    return mon, reader


def expected(chunks, dropped):
    return b"".join(bytes(len(c)) if i in dropped else c for i, c in enumerate(chunks))


# ---------------------------------------------------------------- peek across holes
def test_a_hole_the_receiver_acknowledged_is_skipped_and_reported_once(api):
    chunks = [chunk(i) for i in range(4)]
    conv, _ = second_chunk_uncaptured(chunks)   # chunk 2 held beyond the hole
    conv.ack("s")                               # the server has all three
    conv.data("c", chunks[3])
    conv.close()
    mon, reader = run(conv)
    # Chunk 2 waits behind the hole (no NEW_DATA) until the ACK passes the hole, and one
    # batch more (of one frame: chunk 3's) for a copy captured after the ACK.
    assert reader.peeks == [(0, K), (K, 2 * K)]
    assert reader.lost == [(K, K, True)]
    assert bytes(reader.data) == expected(chunks, {1})
    assert reader.missed == K
    assert mon.mctx.stack.counters["buffer_overruns"] == 0


def test_a_hole_costs_only_its_own_bytes_in_a_small_buffer(api):
    # 40 KB through a 4 KiB buffer: without the skip the hole would block delivery until
    # the window slid past it, overwriting every byte held behind it.
    chunks = [chunk(i) for i in range(40)]
    mon, reader = run(upload(chunks, dropped={3}), svrbuf=4096)
    assert reader.lost == [(3 * K, K, True)]
    assert bytes(reader.data) == expected(chunks, {3})
    assert reader.missed == K
    assert reader.overruns == 0


def test_several_holes_each_cost_their_bytes(api):
    chunks = [chunk(i, 700 + 13 * i) for i in range(30)]
    dropped = {2, 9, 10, 29}                     # adjacent ones make one hole; the last
    mon, reader = run(upload(chunks, dropped=dropped, ack_every=3), svrbuf=3000)
    holes = []
    offset = 0
    for index, data in enumerate(chunks):
        if index in dropped:
            if holes and holes[-1][0] + holes[-1][1] == offset:
                holes[-1] = (holes[-1][0], holes[-1][1] + len(data), True)
            else:
                holes.append((offset, len(data), True))
        offset += len(data)
    assert reader.lost == holes
    assert bytes(reader.data) == expected(chunks, dropped)
    assert reader.missed == sum(length for _, length, _ in holes)
    assert reader.overruns == 0


def test_bytes_lost_before_the_first_byte_seen(api):
    chunks = [chunk(i) for i in range(3)]
    conv = Conv()
    conv.handshake()
    conv.data("c", chunks[0], emit=False)
    conv.ack("s")                                # no byte held yet: the side has no buffer
    conv.data("c", chunks[1])
    conv.data("c", chunks[2])
    conv.close()
    _, reader = run(conv)
    assert reader.lost == [(0, K, True)]
    assert bytes(reader.data) == expected(chunks, {0})
    assert reader.missed == K


def test_holes_left_when_the_flow_ends_are_lost_then(api):
    chunks = [chunk(i) for i in range(3)]
    conv, _ = second_chunk_uncaptured(chunks)
    conv.rst("c")                                # no ACK ever passes the hole
    _, reader = run(conv)
    assert reader.lost == [(K, K, True)]
    assert bytes(reader.data) == expected(chunks, {1})
    assert reader.missed == K


# ------------------------------------------------------------- late copies of a hole
def test_a_copy_later_in_the_same_batch_fills_the_hole(api):
    chunks = [chunk(i) for i in range(3)]
    conv, late = second_chunk_uncaptured(chunks)
    conv.ack("s")
    conv.emit(late)                              # the capture shows it after the ACK
    conv.close()
    _, reader = run(conv, batch_size=64)
    assert reader.lost == []
    assert bytes(reader.data) == b"".join(chunks)
    assert reader.missed == 0


def test_a_copy_in_the_batch_after_the_ack_still_fills_the_hole(api):
    """A capture on a host can put a segment after the ACK of it (the two directions on
    different CPUs): the hole waits one batch after the ACK's for it."""
    chunks = [chunk(i) for i in range(3)]
    conv, late = second_chunk_uncaptured(chunks)
    conv.ack("s")
    conv.emit(late)
    conv.close()
    mon = Monitor().record(events=(MOS_ON_REXMIT,), hooks=(MOS_HK_RCV,))
    mon, reader = run(conv, batch_size=1, mon=mon)
    assert reader.lost == []
    assert bytes(reader.data) == b"".join(chunks)
    assert reader.missed == 0
    assert mon.events("REXMIT") == []


def test_a_copy_two_batches_after_the_ack_is_a_retransmission(api):
    chunks = [chunk(i) for i in range(3)]
    conv, late = second_chunk_uncaptured(chunks)
    conv.ack("s")
    conv.ack("c")
    conv.emit(late)
    conv.close()
    mon = Monitor().record(events=(MOS_ON_REXMIT,), hooks=(MOS_HK_RCV,))
    mon, reader = run(conv, batch_size=1, mon=mon)
    # Given up at the end of the batch after the ACK's: the copy changes nothing and every
    # count still agrees.
    assert reader.lost == [(K, K, True)]
    assert bytes(reader.data) == expected(chunks, {1})
    assert reader.missed == K
    assert mon.events("REXMIT") == [("REXMIT", "RCV", MOS_SIDE_SVR)]


# ------------------------------------------------------------ ppeek and fraginfo
def test_ppeek_fraginfo_and_info_in_a_skipped_hole(api):
    chunks = [chunk(i) for i in range(3)]
    conv, _ = second_chunk_uncaptured(chunks)
    conv.ack("s")
    conv.close()
    mon = Monitor()
    seen = []

    def on_data(mctx, sock, side, event, arg):
        if side != MOS_SIDE_SVR:
            return
        info = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_INFO_SVRBUF)
        frags = [(f.offset, f.len) for f in
                 mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_FRAGINFO_SVRBUF)]
        buf = bytearray(2 * K)
        probes = {}
        for off in (K - 1, K, 2 * K - 1, 2 * K):
            try:
                probes[off] = bytes(buf[:mtcp_ppeek(mctx, sock, side, buf, len(buf), off)])
            except OSError as exc:
                probes[off] = exc.errno
        seen.append(((info.tcpbi_next_byte_expected - info.tcpbi_init_seq) & 0xFFFFFFFF,
                     frags, probes))
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data)
    mon.run(conv)
    # First NEW_DATA: chunk 0; the next at the ACK's skip: in order up to 3 K, the hole a
    # gap between the two runs held.
    assert len(seen) == 2 and seen[0][:2] == (K, [(0, K)])
    end, frags, probes = seen[1]
    assert end == 3 * K
    assert frags == [(0, K), (2 * K, K)]
    assert probes == {K - 1: chunks[0][-1:], K: errno.ENODATA, 2 * K - 1: errno.ENODATA,
                      2 * K: chunks[2]}


# ---------------------------------------------------------------- window overruns
def beyond_the_window(acked):
    """The server advertises 1000 bytes; the client's next segment is seen before the ACK
    that opened the window for it. `acked`: whether the server acknowledges it."""
    conv = Conv()
    conv.handshake()
    conv.ack("s", window=K)
    conv.data("c", chunk(0))                     # fills the window
    conv.data("c", chunk(1))                     # beyond the edge the monitor knows
    if acked:
        conv.ack("s", window=K)                  # the server took both
    conv.fin("c")
    return conv


def error_log(conv):
    """(events: ("ERROR", side) and "END" in order, SO_ERROR at CONN_END, window_overruns,
    the Reader of the client's bytes)."""
    mon = Monitor()
    events, so_errors = [], []

    def on_error(mctx, sock, side, event, arg):
        events.append(("ERROR", side))

    def on_end(mctx, sock, side, event, arg):
        if side == MOS_SIDE_SVR:
            events.append("END")
            so_errors.append(mtcp_getsockopt(mctx, sock, SOL_SOCKET, SO_ERROR))
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_ERROR, MOS_NULL, on_error)
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_END, MOS_HK_SND, on_end)
    reader = Reader(mon)
    mon.run(conv)
    return events, so_errors, mon.mctx.stack.counters["window_overruns"], reader


def test_a_segment_beyond_the_window_that_the_receiver_acknowledges_is_no_error(api):
    events, so_errors, overruns, reader = error_log(beyond_the_window(acked=True))
    assert events == ["END"]
    assert so_errors == [0] and overruns == 0
    assert bytes(reader.data) == chunk(0) + chunk(1)


def test_a_segment_beyond_the_window_never_acknowledged_is_an_error_when_the_flow_ends(api):
    events, so_errors, overruns, reader = error_log(beyond_the_window(acked=False))
    assert events == [("ERROR", MOS_SIDE_SVR), "END"]     # given up before CONN_END
    assert so_errors == [errno.EMSGSIZE] and overruns == 1
    assert bytes(reader.data) == chunk(0)


def test_a_segment_beyond_the_window_with_no_room_to_wait_is_an_error_at_once(api):
    conv = Conv()
    conv.handshake()
    conv.ack("s", window=10)
    for index in range(MAX_HELD_BEYOND_EDGE + 1):
        conv.data("c", chunk(index, 20))         # each beyond the 10-byte window
    conv.rst("c")
    mon = Monitor()
    at_error = []
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_ERROR, MOS_NULL,
                           lambda mctx, sock, side, event, arg: at_error.append(
                               mctx.stack.counters["window_overruns"]))
    mon.run(conv)
    # The segment that found the waiting list full, at its arrival; the others when the
    # flow ends (one event for them all).
    assert at_error == [1, 1 + MAX_HELD_BEYOND_EDGE]


# ------------------------------------------------ a capture with holes in both directions
def app_args(module, *argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args([str(arg) for arg in argv])


def endpoint_file_name(text):
    """"10.77.0.1:37786" as flowdump (and tcpflow) name it in a file name."""
    addr, port = text.rsplit(":", 1)
    return flowdump.endpoint_name(addr, int(port))


def test_peek_flowdump_and_connlog_agree_on_the_holes_of_a_capture(api, tmp_path):
    """tests/data/holes.pcap (one hole in the request, three in the response, each
    acknowledged by its receiver): mtcp_peek's ENODATA gives exactly the holes, flowdump
    has zeros there and the sender's bytes elsewhere (and counts them lost), and conn.log's
    missed_bytes (a bufferless app: connlog) is their sum, per direction as FlowStats has
    it."""
    expected = json.loads((DATA / "holes.expected.json").read_text())
    with PcapReader(str(DATA / "holes.pcap")) as pcap:
        frames = [(ts, bytes(frame)) for ts, frame in pcap]
    mon = Monitor()
    # One listening socket per reader: a socket has one callback per event and hook.
    readers = {MOS_SIDE_SVR: Reader(mon, MOS_SIDE_SVR),
               MOS_SIDE_CLI: Reader(mon, MOS_SIDE_CLI, sock=mtcp_socket(
                   mon.mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0))}
    dump = flowdump.setup(mon.mctx, app_args(flowdump, "--outdir", tmp_path / "flows"))
    mon.run(frames, batch_size=64)
    log = tmp_path / "conn.log"
    reinit()
    ctx = mtcp_create_context(0)
    connlog_app = connlog.setup(ctx, app_args(connlog, "--output", log))
    run_frames(ctx, frames, 64)
    mtcp_destroy_context(ctx)
    connlog.teardown(connlog_app)
    (record,) = [json.loads(line) for line in log.read_text().splitlines()]

    files = {path.name: path.read_bytes() for path in (tmp_path / "flows").iterdir()}
    directions = {"client_to_server": MOS_SIDE_SVR, "server_to_client": MOS_SIDE_CLI}
    client, server = (endpoint_file_name(expected["flow"][end]) for end in ("client", "server"))
    names = {"client_to_server": f"{client}-{server}", "server_to_client": f"{server}-{client}"}
    assert sorted(files) == sorted(names.values())
    for direction, side in directions.items():
        stream = base64.b64decode(expected[direction])
        holes = [(h["offset"], h["length"], True) for h in expected["holes"]
                 if h["direction"] == direction]
        reader = readers[side]
        assert reader.lost == holes, direction
        assert bytes(reader.data) == stream
        assert reader.missed == sum(length for _, length, _ in holes)
        assert files[names[direction]] == stream
    total = sum(h["length"] for h in expected["holes"])
    assert record["missed_bytes"] == dump.lost_bytes == total


# ------------------------------------------- a hole the receiver has not got either
def sack_recovery(chunks, dropped, wscale=7):
    """A download-like upload with a large window: the chunks in `dropped` are lost on
    the way (neither the monitor nor the server sees them), the server acknowledges only
    up to the hole (duplicate ACKs) while the client sends on, then the client
    retransmits the lost chunks and the server acknowledges everything."""
    conv = Conv()
    conv.handshake(wscale_c=wscale, wscale_s=wscale)
    first_lost = min(dropped)
    hole_seq = None
    lost_frames = []
    for index, data in enumerate(chunks):
        if index == first_lost:
            hole_seq = conv.nxt["c"]
        frame = conv.data("c", data, emit=index not in dropped)
        if index in dropped:
            lost_frames.append(frame)
        if index < first_lost:
            conv.ack("s")
        elif index % 8 == 0:
            conv.ack("s", ack=hole_seq)             # duplicate ACKs: the hole is open
    for frame in lost_frames:
        conv.emit(frame)                           # the retransmissions
    conv.ack("s")
    conv.close()
    return conv


def test_out_of_order_data_beyond_the_buffer_waits_for_the_retransmission(api):
    # 100 KB go missing, then 600 KB arrive behind the hole: more than the 256 KiB
    # buffer but within the receiver's window. The server accepted every byte in the end
    # (its ACK passes them all), so the stream is complete and nothing counts as missed.
    chunks = [chunk(i) for i in range(900)]
    dropped = set(range(200, 300))
    mon, reader = run(sack_recovery(chunks, dropped), batch_size=64)
    assert reader.lost == []
    assert bytes(reader.data) == b"".join(chunks)
    assert reader.missed == 0
    assert reader.overruns == 0


def test_a_buffer_grows_only_up_to_rmem_max(api):
    # The same with a growth limit of 512 KiB: the window cannot hold the hole and the
    # 600 KB behind it, so the oldest bytes are pushed out before the retransmission
    # comes: the app is told (an overrun, not a capture hole) and reads on after them;
    # conn.log's missed_bytes stays the 100 KB the capture never had.
    reinit(rmem_max=512 * 1024)
    chunks = [chunk(i) for i in range(900)]
    dropped = set(range(200, 300))
    mon, reader = run(sack_recovery(chunks, dropped), batch_size=64)
    assert reader.lost and all(not hole for _, _, hole in reader.lost)
    assert reader.lost[0][0] == 200 * K
    gone = sum(length for _, length, _ in reader.lost)
    assert 100 * K <= gone < 200 * K
    sent = b"".join(chunks)
    assert bytes(reader.data) == sent[:200 * K] + bytes(gone) + sent[200 * K + gone:]
    assert reader.missed == 100 * K
    assert reader.overruns > 0
    assert mon.mctx.stack.counters["buffers_grown"] == 1
