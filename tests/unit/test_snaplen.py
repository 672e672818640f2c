"""Captures cut by a snap length (``tcpdump -s N``: each record keeps the first N bytes of a
frame and its length on the wire): flows are tracked from the headers, the payload bytes the
capture left out are lost (mtcp_peek ENODATA, conn.log's missed_bytes), and a frame cut
inside its headers is malformed (cut_headers).

Cut captures are made from the real captures of tests/data by rewriting each record's
captured length (the pcap writer keeps the length on the wire), and by editcap. What they
should give is worked out from the full capture: conn.log lines as for the full capture but
missed_bytes, which grows by the cut payload bytes each flow had not seen before."""
import errno
import json
import shutil
import socket
import subprocess
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, PadN
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from flowcraft import Conv, reinit
from mosxdp import *  # noqa: F401,F403  (the public API only)
from mosxdp import cli
from mosxdp.core.packet import (CUT_HEADERS, PacketError, TruncatedHeader, parse_cut_frame,
                                parse_frame)
from mosxdp.core.stack import Stack
from mosxdp.engine import OfflineEngine
from mosxdp.engine.group import owner_index
from mosxdp.io.pcap import PcapReader, PcapWriter

DATA = Path(__file__).resolve().parent.parent / "data"
MASK = 0xFFFFFFFF
HALF = 1 << 31

# Every capture's headers fit in 96 bytes (the longest, an IPv6 SYN with options, is 94).
CAPTURES = sorted(path.name for path in DATA.glob("*.pcap"))


# ------------------------------------------------------------------ helpers
def cut_capture(src, snaplen, dst):
    """`src` as a capture made with snap length `snaplen` (records keep the wire length)."""
    with PcapReader(str(src)) as reader, PcapWriter(str(dst), snaplen=snaplen) as writer:
        for ts, frame in reader:
            writer.write(ts, frame)
    return dst


def records(path):
    with PcapReader(str(path)) as reader:
        return [(ts, bytes(frame), wire) for ts, frame, wire in reader.records()]


def run(capsys, app, *args):
    """`mosxdp run APP ARGS...` in this process: (exit code, stdout, stderr)."""
    code = cli.main(["run", app, "--on-callback-error", "stop", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def conn_log(capsys, pcap, out, *extra):
    code, _, err = run(capsys, "connlog", "--pcap", pcap, "--output", out, *extra)
    assert code == 0, err
    return [json.loads(line) for line in Path(out).read_text().splitlines()], err


def flow_key(record):
    return (record["id.orig_h"], record["id.orig_p"], record["id.resp_h"], record["id.resp_p"])


def expectation(path, snaplen):
    """From the full capture at `path`, what a capture cut at `snaplen` should give:
    counters (cut_frames, cut_bytes, cut_headers) and, per flow (4-tuple, client first as
    in conn.log) the payload bytes missed because of the cut: those whose first copy in
    capture order was cut (a later copy of a lost byte stays lost; a byte seen before
    stays seen). Also the captured and cut stream ranges of each direction."""
    counts = {"cut_frames": 0, "cut_bytes": 0, "cut_headers": 0}
    missed = {}
    ranges = {}        # (src, sport, dst, dport) -> {"first": seq, "seen": bytearray, ...}
    for _, frame in PcapReader(str(path)):
        pkt = parse_frame(frame)
        if len(frame) <= snaplen or not pkt.ip_version:
            continue
        ip_end = pkt.l3_off + pkt.ip_len
        if ip_end <= snaplen:
            continue                   # only Ethernet padding cut
        # An ICMP message's type and code are part of its header (8 bytes).
        head_end = (pkt.l4_off + 8 if pkt.ip_proto in (1, 58) and not pkt.is_fragment
                    else pkt.payload_off)
        if head_end > snaplen:
            counts["cut_headers"] += 1
            continue
        counts["cut_frames"] += 1
        counts["cut_bytes"] += ip_end - snaplen
    # Stream bytes by direction, in capture order, of the TCP frames whose headers fit;
    # a SYN with a new ISN starts the next connection of its 4-tuple (reuse.pcap).
    conns = {}         # endpoints -> [connection number, ISN of its SYN]
    for _, frame in PcapReader(str(path)):
        pkt = parse_frame(frame)
        if pkt.ip_proto != 6 or pkt.payload_off > snaplen and len(frame) > snaplen:
            continue
        ends = frozenset([(pkt.src, pkt.sport), (pkt.dst, pkt.dport)])
        conn = conns.setdefault(ends, [0, None])
        if pkt.flags & 0x12 == 0x02 and pkt.seq != conn[1]:
            conn[0] += 1 if conn[1] is not None else 0
            conn[1] = pkt.seq
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport, conn[0])
        side = ranges.setdefault(key, {"first": pkt.seq + (1 if pkt.flags & 2 else 0),
                                       "seen": bytearray(), "captured": [], "cut": []})
        if not pkt.payload_len or pkt.flags & 2:
            continue
        rel = ((pkt.seq - side["first"] + HALF) & MASK) - HALF
        kept = max(0, min(pkt.payload_len, snaplen - pkt.payload_off))
        start, split, end = rel, rel + kept, rel + pkt.payload_len
        seen = side["seen"]
        if len(seen) < end:
            seen.extend(bytes(end - len(seen)))
        new_cut = seen[split:end].count(0)
        seen[start:end] = b"\1" * (end - start)
        if split < end:
            side["cut"].append((split, end))
        if kept:
            side["captured"].append((start, split))
        if new_cut:
            missed[key] = missed.get(key, 0) + new_cut
    return counts, missed, ranges


def missed_by_flow(missed, records_):
    """The cut bytes each conn.log record's flow missed (both directions), in order."""
    out = []
    number = {}
    for record in records_:
        ends = []
        for addr, port in (("id.orig_h", "id.orig_p"), ("id.resp_h", "id.resp_p")):
            family = socket.AF_INET6 if ":" in record[addr] else socket.AF_INET
            ends.append((socket.inet_pton(family, record[addr]), record[port]))
        conn = number[flow_key(record)] = number.get(flow_key(record), -1) + 1
        (cli_, svr) = ends
        out.append(missed.get((*cli_, *svr, conn), 0) + missed.get((*svr, *cli_, conn), 0))
    return out


_full_logs = {}


def full_log(capsys, tmp_path_factory, name):
    if name not in _full_logs:
        out = tmp_path_factory.mktemp("full") / "conn.log"
        _full_logs[name] = conn_log(capsys, DATA / name, out)[0]
    return _full_logs[name]


# ------------------------------------------------------------------ connlog
@pytest.mark.parametrize("snaplen", [96, 128])
@pytest.mark.parametrize("name", CAPTURES)
def test_conn_log_of_cut_capture_is_the_full_one_but_missed_bytes(
        capsys, tmp_path, tmp_path_factory, name, snaplen):
    full = full_log(capsys, tmp_path_factory, name)
    cut = cut_capture(DATA / name, snaplen, tmp_path / "cut.pcap")
    stats = tmp_path / "stats.json"
    lines, err = conn_log(capsys, cut, tmp_path / "conn.log", "--stats-json", stats)
    counts, missed, _ = expectation(DATA / name, snaplen)
    assert counts["cut_headers"] == 0
    assert {k: v for k, v in json.loads(stats.read_text())["stack"].items()
            if k in counts} == counts
    assert json.loads(stats.read_text())["malformed"] == {}
    assert [dict(r, missed_bytes=0) for r in lines] == [dict(r, missed_bytes=0) for r in full]
    extra = missed_by_flow(missed, full)
    assert [r["missed_bytes"] for r in lines] == [
        r["missed_bytes"] + cut for r, cut in zip(full, extra)]
    if counts["cut_frames"]:
        assert (f"mosxdp: {counts['cut_frames']} frames were cut by the capture's snap length "
                f"({snaplen} bytes): flows tracked from their headers, {counts['cut_bytes']} "
                "payload bytes missing") in err
    else:
        assert "snap length" not in err


def test_a_cut_within_the_tcp_options_leaves_the_frame_malformed(capsys, tmp_path):
    """At 54 and 64 bytes the Linux TCP headers (32 bytes with timestamps) are cut: every
    TCP frame is malformed as cut_headers, no flow is tracked, the line says so, and
    --write still writes every frame as it came (length on the wire kept)."""
    for snaplen in (54, 64):
        cut = cut_capture(DATA / "http_sizes.pcap", snaplen, tmp_path / f"cut{snaplen}.pcap")
        out = tmp_path / f"out{snaplen}.pcap"
        stats = tmp_path / f"stats{snaplen}.json"
        lines, err = conn_log(capsys, cut, tmp_path / f"conn{snaplen}.log", "--write", out,
                              "--stats-json", stats)
        counts, _, _ = expectation(DATA / "http_sizes.pcap", snaplen)
        assert [line for line in lines if line["proto"] == "tcp"] == []
        # Every TCP frame of the capture, an MLD report (ICMPv6 behind a hop-by-hop
        # header, ending at 70) and at 54 a neighbour solicitation (ICMPv6 at 54 to 62).
        assert counts["cut_headers"] == 1536 + 1 + (snaplen == 54)
        stack = json.loads(stats.read_text())["stack"]
        assert {k: stack[k] for k in counts} == counts
        assert (stack["flows_created"], stack["tcp_segments"]) == (0, 0)
        assert json.loads(stats.read_text())["malformed"] == {CUT_HEADERS: counts["cut_headers"]}
        assert (f"{counts['cut_headers']} cut inside their headers counted malformed "
                "(cut_headers)") in err
        assert records(out) == records(cut)


def test_syns_cut_in_their_options_leave_the_flow_to_midstream_pickup(capsys, tmp_path):
    """shuffled_upload's data segments have 20-byte TCP headers (54 bytes in all), its SYN
    and SYN/ACK 28: at 54 the handshake is malformed and connlog picks the flow up from
    its data, every payload byte missed; at 64 it is tracked as in the full capture."""
    name = "shuffled_upload.pcap"
    full = conn_log(capsys, DATA / name, tmp_path / "full.log")[0]
    cut = cut_capture(DATA / name, 54, tmp_path / "cut54.pcap")
    stats = tmp_path / "stats.json"
    (line,), err = conn_log(capsys, cut, tmp_path / "conn54.log", "--stats-json", stats)
    counts, _, _ = expectation(DATA / name, 54)
    assert counts["cut_headers"] == 2
    assert {k: json.loads(stats.read_text())["stack"][k] for k in counts} == counts
    assert not set("Ss") & set(line["history"])
    assert line["orig_bytes"] == full[0]["orig_bytes"]
    assert line["missed_bytes"] == line["orig_bytes"] + line["resp_bytes"]
    (line64,), _ = conn_log(capsys, cut_capture(DATA / name, 64, tmp_path / "cut64.pcap"),
                            tmp_path / "conn64.log")
    assert dict(line64, missed_bytes=0) == dict(full[0], missed_bytes=0)
    assert line64["missed_bytes"] == sum(expectation(DATA / name, 64)[1].values())


# ------------------------------------------------------------------ flowdump and the API
def expected_file(full_bytes, captured, cut):
    """A flowdump file of a cut capture: the full one's bytes where captured, zeros where
    cut, ending at the last byte captured."""
    data = bytearray(len(full_bytes))
    for start, end in captured:
        data[start:end] = full_bytes[start:end]
    last = max((end for _, end in captured), default=0)
    assert all(end <= len(full_bytes) for _, end in cut)
    return bytes(data[:last])


@pytest.mark.parametrize("name,snaplen", [("http_sizes.pcap", 96), ("ipv6.pcap", 128),
                                          ("reorder.pcap", 96), ("holes.pcap", 100),
                                          ("seqwrap.pcap", 96)])
def test_flowdump_writes_the_captured_bytes_in_place(capsys, tmp_path, name, snaplen):
    code, _, _ = run(capsys, "flowdump", "--pcap", DATA / name, "--outdir", tmp_path / "full")
    assert code == 0
    cut = cut_capture(DATA / name, snaplen, tmp_path / "cut.pcap")
    code, _, err = run(capsys, "flowdump", "--pcap", cut, "--outdir", tmp_path / "cut")
    assert code == 0, err
    full = {p.name: p.read_bytes() for p in (tmp_path / "full").iterdir()}
    files = {p.name: p.read_bytes() for p in (tmp_path / "cut").iterdir()}
    _, missed, ranges = expectation(DATA / name, snaplen)
    assert sorted(files) == sorted(full)
    checked = 0
    for fname, data in full.items():
        matches = [side for key, side in ranges.items()
                   if side["captured"] and fname.startswith(
                       _endpoint(key[0], key[1]) + "-" + _endpoint(key[2], key[3]))]
        (side,) = matches
        assert files[fname] == expected_file(data, side["captured"], side["cut"]), fname
        checked += 1
    assert checked == len(full)
    holes = sum(missed.values())
    if name == "holes.pcap":
        holes += sum(h["length"] for h in json.loads(
            (DATA / "holes.expected.json").read_text())["holes"])
    assert (f"flowdump: {holes} stream bytes the monitor never saw (holes in the capture, or "
            "payload its snap length cut) are zeros in the files") in err


def _endpoint(addr, port):
    from mosxdp.apps.flowdump import endpoint_name
    return endpoint_name(addr, port)


class PeekAll:
    """Reads the client's stream (the server side's buffer) with mtcp_peek at every
    CONN_NEW_DATA and CONN_END, as flowdump does: bytes, and the holes (offset, length)."""

    def __init__(self, mctx):
        self.data = bytearray()
        self.holes = []
        self.ppeek_errors = []
        self.progress = []      # how far the stream was read after each CONN_NEW_DATA
        sock = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
        mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, self.drain)
        mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, self.drain)

    def drain(self, mctx, sock, side, event, arg):
        if side != MOS_SIDE_SVR:
            return
        if event == MOS_ON_CONN_NEW_DATA:
            self.progress.append(None)
        buf = bytearray(4096)
        while True:
            try:
                count = mtcp_peek(mctx, sock, MOS_SIDE_SVR, buf)
            except PeekOverrunError as exc:
                assert exc.hole and exc.errno == errno.ENODATA
                self.holes.append((len(self.data), exc.lost))
                try:
                    mtcp_ppeek(mctx, sock, MOS_SIDE_SVR, buf, 1, len(self.data))
                except OSError as ppeek_exc:
                    self.ppeek_errors.append(ppeek_exc.errno)
                self.data += bytes(exc.lost)
                continue
            if not count:
                if event == MOS_ON_CONN_NEW_DATA:
                    self.progress[-1] = len(self.data)
                return
            self.data += buf[:count]


def run_capture(path, make_app):
    """The capture through a fresh context as `mosxdp run` replays it; the app's object."""
    reinit()
    mctx = mtcp_create_context(0)
    app = make_app(mctx)
    with PcapReader(str(path)) as reader:
        OfflineEngine(mctx, reader, None, batch_size=1).run()
    stack = mctx.stack
    mtcp_destroy()
    return app, stack


def test_peek_reports_the_cut_bytes_as_a_hole(tmp_path):
    """A crafted upload whose segments come cut, one of them out of order and the last
    with the FIN, and no ACK from the server until the end: mtcp_peek gives the captured
    bytes in place and reports each run of cut bytes as a hole (ENODATA) as soon as the
    bytes before it are there (no ACK needed, unlike a segment the capture missed), ppeek
    says ENODATA there too."""
    conv = Conv()
    conv.handshake()
    chunks = [bytes((i * 31 + j) % 251 for j in range(300)) for i in range(5)]
    frames = [conv.data("c", chunk, emit=False) for chunk in chunks[:4]]
    for frame in (frames[0], frames[2], frames[1], frames[3]):   # 2 before 1
        conv.emit(frame)
    conv.fin("c", chunks[4])
    conv.ack("s")
    conv.fin("s")
    conv.ack("c")
    path = tmp_path / "cut.pcap"
    snaplen = 14 + 20 + 20 + 100      # 100 payload bytes of each segment
    with PcapWriter(str(path), snaplen=snaplen) as writer:
        for ts, frame in conv.frames:
            writer.write(ts, frame)
    app, stack = run_capture(path, PeekAll)
    assert stack.counters["cut_frames"] == 5
    assert stack.counters["cut_bytes"] == 5 * 200
    expected = b"".join(chunk[:100] + bytes(200) for chunk in chunks)
    assert bytes(app.data) == expected
    assert app.holes == [(300 * i + 100, 200) for i in range(5)]
    assert app.ppeek_errors == [errno.ENODATA] * 5
    # Segment 2 (before 1) brings nothing in order; 1 brings both.
    assert app.progress == [300, 900, 1200, 1500]


def test_cut_frames_of_a_flow_go_to_its_context():
    """With several contexts (mOS's one per core) a cut frame goes where its flow does."""
    conv = Conv(cport=40123)
    conv.handshake()
    frame = conv.data("c", bytes(1000))
    cut = memoryview(bytearray(frame[:96]))
    for count in (2, 3, 4, 7):
        assert owner_index(cut, count, lambda: len(frame)) == owner_index(frame, count)


# ------------------------------------------------------------------ what is a cut header
# Addresses given: scapy would otherwise look the destination up on this host.
ETHER = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


@pytest.mark.parametrize("pkt", [
    ETHER / IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_NOP()] * 8)
    / TCP(sport=1, dport=2, options=[("MSS", 1460), ("NOP", None), ("WScale", 7)])
    / Raw(bytes(500)),
    ETHER / Dot1Q(vlan=5) / Dot1Q(vlan=6) / IP(src="10.0.0.1", dst="10.0.0.2")
    / TCP(sport=1, dport=2) / Raw(bytes(500)),
    ETHER / IPv6(src="fd00::1", dst="fd00::2")
    / IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 12)])
    / TCP(sport=1, dport=2, options=[("Timestamp", (1, 2))]) / Raw(bytes(500)),
    ETHER / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=53, dport=5353) / Raw(bytes(500)),
    ETHER / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / Raw(bytes(500)),
], ids=["ipv4-options", "qinq", "ipv6-ext", "udp", "fragment"])
def test_a_frame_parses_from_its_headers_down_to_their_last_byte(pkt):
    frame = bytes(pkt)
    full = parse_frame(frame)
    end = full.payload_off
    for keep in range(end, end + 3):
        cut = memoryview(bytearray(frame[:keep]))
        parsed = parse_cut_frame(cut, len(frame))
        for field in ("vlan_ids", "l3_off", "ip_version", "ip_proto", "src", "dst", "ip_len",
                      "is_fragment", "l4_off", "sport", "dport", "seq", "ack", "flags",
                      "window", "tcp_hdr_len", "payload_off", "payload_len"):
            assert getattr(parsed, field) == getattr(full, field), (field, keep)
        assert parsed.frame_len == len(frame) and parsed.buf is cut
        assert bytes(parsed.payload) == frame[end:keep]
    for keep in range(0, end):
        cut = memoryview(bytearray(frame[:keep]))
        with pytest.raises(TruncatedHeader) as info:
            parse_cut_frame(cut, len(frame))
        assert info.value.counter == CUT_HEADERS, keep


def test_a_cut_does_not_excuse_a_malformed_frame():
    """What no cut explains stays what parse_frame calls it: an IP length past the frame
    on the wire, a bad TCP data offset in the captured bytes."""
    frame = bytes(ETHER / IP(src="10.0.0.1", dst="10.0.0.2") / TCP() / Raw(bytes(500)))
    cut = memoryview(bytearray(frame[:80]))
    with pytest.raises(TruncatedHeader) as info:
        parse_cut_frame(cut, len(frame) - 10)      # the IP packet is longer than the frame
    assert info.value.counter == "truncated_ipv4"
    bad = bytearray(frame[:80])
    bad[14 + 20 + 12] = 3 << 4                    # TCP data offset 3
    with pytest.raises(PacketError) as info:
        parse_cut_frame(memoryview(bad), len(frame))
    assert info.value.counter == "tcp_doff"


def test_a_cut_udp_frame_is_counted_with_its_missing_bytes():
    """Not only TCP: a cut UDP datagram is a non-TCP frame with cut_bytes, its raw
    socket gets it."""
    frame = bytes(ETHER / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=53, dport=9)
                  / Raw(bytes(400)))
    stack = Stack()
    stack.wire_len = lambda: len(frame)
    stack.process(memoryview(bytearray(frame[:60])), 1, 0)
    counters = stack.counters
    assert (counters["non_tcp"], counters["malformed"]) == (1, 0)
    assert (counters["cut_frames"], counters["cut_bytes"]) == (1, len(frame) - 60)
    stack.process(memoryview(bytearray(frame[:40])), 2, 0)     # cut in the UDP header
    assert stack.counters["cut_headers"] == 1 and stack.malformed == {CUT_HEADERS: 1}


# ------------------------------------------------------------------ made by a tool
@pytest.mark.skipif(shutil.which("editcap") is None, reason="editcap is not installed")
@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
def test_a_capture_cut_by_editcap(capsys, tmp_path, fmt):
    """editcap -s 96 (what tcpdump -s 96 writes when capturing): read as pcap and pcapng,
    the same records as our own cut, the same conn.log."""
    out = tmp_path / f"cut.{fmt}"
    subprocess.run(["editcap", "-F", fmt, "-s", "96", str(DATA / "ipv6.pcap"), str(out)],
                   check=True, capture_output=True)
    ours = cut_capture(DATA / "ipv6.pcap", 96, tmp_path / "ours.pcap")
    assert [(b, w) for _, b, w in records(out)] == [(b, w) for _, b, w in records(ours)]
    assert any(len(b) < w for _, b, w in records(out))
    tool_lines, err = conn_log(capsys, out, tmp_path / "tool.log")
    our_lines, _ = conn_log(capsys, ours, tmp_path / "ours.log")
    assert tool_lines == our_lines
    assert [line["proto"] for line in tool_lines].count("tcp") == 2
    assert "(96 bytes): flows tracked from their headers" in err


def test_write_keeps_the_wire_length_of_cut_frames(capsys, tmp_path):
    """--write of a cut capture: every frame as it came, the cut ones with their length on
    the wire, so the output is a cut capture too (and reads back the same)."""
    cut = cut_capture(DATA / "halfclose.pcap", 96, tmp_path / "cut.pcap")
    out = tmp_path / "out.pcap"
    code, _, err = run(capsys, "connlog", "--pcap", cut, "--output", tmp_path / "a.log",
                       "--write", out)
    assert code == 0, err
    assert records(out) == records(cut)
    again, _ = conn_log(capsys, out, tmp_path / "b.log")
    assert again == [json.loads(line) for line in (tmp_path / "a.log").read_text().splitlines()]


def test_an_edited_cut_frame_keeps_its_wire_length(capsys, tmp_path):
    """scrub masks "HTTP" in a cut capture (the pattern is in the captured bytes of the
    responses' first segments): --write gives every record with its captured and wire
    lengths as they came, the masked ones with the pattern gone."""
    cut = cut_capture(DATA / "http_sizes.pcap", 96, tmp_path / "cut.pcap")
    out = tmp_path / "out.pcap"
    code, _, err = run(capsys, "scrub", "--pcap", cut, "--pattern", "HTTP", "--write", out,
                       "--log", tmp_path / "hits.log")
    assert code == 0, err
    before, after = records(cut), records(out)
    assert [(ts, len(b), w) for ts, b, w in after] == [(ts, len(b), w) for ts, b, w in before]
    changed = [(b, a) for (_, b, w), (_, a, _) in zip(before, after) if a != b]
    assert changed and all(b"HTTP" in b and b"HTTP" not in a for b, a in changed)
    assert all(len(b) < w for (_, b, w), (_, a, _) in zip(before, after) if a != b)
    hits = (tmp_path / "hits.log").read_text().splitlines()
    assert len(hits) == len(changed)


def test_the_stats_summary_counts_the_cut(capsys, tmp_path):
    # At 64 bytes every TCP frame and the MLD report are cut in their headers, the
    # neighbour solicitation (ICMPv6 header at 54 to 62) in its payload.
    cut = cut_capture(DATA / "http_sizes.pcap", 64, tmp_path / "cut.pcap")
    code, _, err = run(capsys, "connlog", "--pcap", cut, "--output", tmp_path / "conn.log",
                       "--stats")
    assert code == 0, err
    counts, _, _ = expectation(DATA / "http_sizes.pcap", 64)
    assert counts == {"cut_frames": 1, "cut_bytes": 22, "cut_headers": 1537}
    assert (f"cut frames {counts['cut_frames']} (payload bytes missing {counts['cut_bytes']}, "
            f"cut in headers {counts['cut_headers']})") in err
    assert f"malformed {counts['cut_headers']} (cut_headers {counts['cut_headers']})" in err


@pytest.mark.parametrize("pkt", [
    ETHER / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP() / Raw(bytes(500)),
    ETHER / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest(data=bytes(500)),
], ids=["icmp", "icmpv6"])
def test_a_cut_icmp_message_needs_its_first_8_bytes(pkt):
    """An ICMP message's type and code (what its flow is keyed on) are in its first 8
    bytes: cut before their end it is cut_headers, from there it parses."""
    frame = bytes(pkt)
    full = parse_frame(frame)
    end = full.l4_off + 8
    for keep in range(full.l4_off, end):
        with pytest.raises(TruncatedHeader) as info:
            parse_cut_frame(memoryview(bytearray(frame[:keep])), len(frame))
        assert info.value.counter == CUT_HEADERS
    parsed = parse_cut_frame(memoryview(bytearray(frame[:end])), len(frame))
    assert (parsed.ip_proto, parsed.l4_off, parsed.payload_len) == (
        full.ip_proto, full.l4_off, full.payload_len)
    stack = Stack()
    ended = []
    stack.datagram_table().add_watcher(0, None, lambda handle, flow: ended.append(flow))
    stack.wire_len = lambda: len(frame)
    stack.process(memoryview(bytearray(frame[:end - 1])), 1, 0)
    stack.process(memoryview(bytearray(frame[:end])), 2, 0)
    counters = stack.counters
    assert (counters["cut_headers"], counters["cut_frames"], counters["datagram_malformed"]) == (
        1, 1, 0)
    (flow,) = {entry[0] for entry in stack.datagrams.flows.values()}
    side = flow.sides[0]
    # Counted from the headers: the message as it was on the wire.
    assert (side.pkts, side.ip_bytes, side.l2_bytes, side.payload_bytes) == (
        1, full.ip_len, len(frame), 500)


@pytest.mark.parametrize("name", ["http_sizes.pcap", "concurrent.pcap", "datagrams.pcap"])
def test_eve_records_of_a_cut_capture_flag_the_gaps(capsys, tmp_path, name):
    """eve on a capture cut at 96 bytes: every record as for the whole capture (packets
    and frame bytes on the wire, states, flags, Community ID), and the TCP ones say which
    side's stream has bytes the capture cut (tcp.ts_gap, tcp.tc_gap)."""
    def eve(pcap, out):
        # flow records only: the cut capture has no payload for the session parsers
        code, _, err = run(capsys, "eve", "--pcap", pcap, "--output", out, "--no-sessions")
        assert code == 0, err
        return [json.loads(line) for line in Path(out).read_text().splitlines()]

    def without_gaps(record):
        record = {k: v for k, v in record.items() if k != "pcap_filename"}
        if "tcp" in record:
            record["tcp"] = {k: v for k, v in record["tcp"].items()
                             if k not in ("ts_gap", "tc_gap")}
        return record
    full = eve(DATA / name, tmp_path / "full.json")
    cut = eve(cut_capture(DATA / name, 96, tmp_path / "cut.pcap"), tmp_path / "cut.json")
    assert [without_gaps(r) for r in cut] == [without_gaps(r) for r in full]
    _, missed, _ = expectation(DATA / name, 96)
    tcp = [r for r in cut if r["proto"] == "TCP"]
    assert all("ts_gap" not in r["tcp"] and "tc_gap" not in r["tcp"]
               for r in full if r["proto"] == "TCP")
    def cut_in(src, sport, dst, dport):
        """Whether this direction lost bytes to the cut (these captures reuse no tuple)."""
        family = socket.AF_INET6 if ":" in src else socket.AF_INET
        key = (socket.inet_pton(family, src), sport, socket.inet_pton(family, dst), dport, 0)
        return bool(missed.get(key))
    for record in tcp:
        ends = (record["src_ip"], record["src_port"], record["dest_ip"], record["dest_port"])
        assert record["tcp"].get("ts_gap", False) == cut_in(*ends)
        assert record["tcp"].get("tc_gap", False) == cut_in(ends[2], ends[3], ends[0], ends[1])
    assert any(r["tcp"].get("tc_gap") for r in tcp)


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=200), extra=st.integers(1, 3000), cut=st.integers(0, 200))
def test_any_cut_bytes_parse_or_raise_a_packet_error(data, extra, cut):
    """Whatever the bytes and lengths, a cut frame parses (its payload then within the
    wire length) or raises PacketError, never another exception; a real frame cut
    anywhere too."""
    frame = bytes(ETHER / IP(src="10.0.0.1", dst="10.0.0.2") / TCP() / Raw(data))
    for buf, wire in ((data, len(data) + extra), (frame[:cut], len(frame))):
        try:
            pkt = parse_cut_frame(memoryview(bytearray(buf)), wire)
        except PacketError:
            continue
        assert pkt.frame_len in (wire, len(buf))
        assert pkt.payload_off + pkt.payload_len <= wire
