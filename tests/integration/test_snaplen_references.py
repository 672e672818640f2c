"""Captures cut by a snap length against tcpflow and tshark.

Every capture of tests/data cut by `editcap -s N` (the records `tcpdump -s N` writes: the
first N bytes of each frame and its length on the wire), read by the CLI in a subprocess:

- flowdump's files equal `tcpflow -r`'s on the same cut capture, byte for byte: the bytes
  captured in place, zeros where the capture cut a segment, each file ending at the last
  byte captured. Where tcpflow goes wrong on a cut capture, flowdump is checked against the
  full capture instead (tests/unit/test_snaplen.py): on IPv6 tcpflow writes a segment's
  length on the wire, reading past the captured bytes (a junk byte, then zeros); on
  reuse.pcap it writes one file of 65629 bytes for the server's second and third
  connections. overlap_diff follows the overlap policy (test_references.py).
- connlog's packets and bytes per direction equal tshark's frame counts and frame.len sums
  (the length on the wire) per tcp.stream and sender, and its missed_bytes equal the payload
  bytes tshark shows cut (per segment, tcp.len less what frame.cap_len holds of it) whose
  first copy was cut (a retransmission does not bring a byte back, nor lose it again).
- Both say on stderr how many frames and payload bytes the snap length cut.
"""
import json
import subprocess

import pytest

from integ_helpers import (
    DATA, _run, cached, read_streams, run_mosxdp, tcpflow, tmpdir,
)

REAL = ["http_sizes", "upload", "concurrent", "refused", "rst_abort", "halfclose", "ipv6",
        "small_writes", "reuse"]
CRAFTED = ["reorder", "dup", "seqwrap", "lost", "holes", "midstream", "shuffled_upload"]
TCPFLOW_WRONG = {"ipv6", "reuse"}
SNAPS = [96, 200]


def _editcap(name, snap):
    out = tmpdir("editcap") / f"{name}-s{snap}.pcap"
    _run(["editcap", "-F", "pcap", "-s", str(snap), DATA / f"{name}.pcap", out])
    return out


def cut_pcap(name, snap):
    return cached(("editcap", name, snap), _editcap, name, snap).result()


def _tshark_segments(pcap):
    """Per TCP frame: (tcp.stream, src addr, src port, frame.len, frame.cap_len, tcp.len,
    tcp.seq relative)."""
    out = _run(["tshark", "-r", pcap, "-Y", "tcp", "-T", "fields", "-E", "separator=/t",
                "-e", "tcp.stream", "-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport",
                "-e", "frame.len", "-e", "frame.cap_len", "-e", "tcp.len",
                "-e", "tcp.seq"]).stdout.decode()
    rows = []
    for line in out.splitlines():
        stream, ip4, ip6, sport, flen, caplen, tcp_len, seq = line.split("\t")
        rows.append((int(stream), ip4 or ip6, int(sport), int(flen), int(caplen),
                     int(tcp_len), int(seq)))
    return rows


def tshark_segments(pcap):
    return cached(("segments", str(pcap)), _tshark_segments, pcap)


def mosxdp_run(app, pcap, *args):
    """(stdout, stderr) of `mosxdp run APP --pcap PCAP ARGS`, which must succeed."""
    proc = run_mosxdp("run", app, "--pcap", pcap, *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout, proc.stderr


def cut_summary(segments, snap):
    """(frames, payload bytes) the snap length cut inside their IP packet, from tshark's
    fields: a frame's payload starts at frame.len - tcp.len (no Ethernet padding here)."""
    frames = cut = 0
    for *_, flen, caplen, tcp_len, _seq in segments:
        if caplen < flen:
            frames += 1
            cut += tcp_len - max(0, caplen - (flen - tcp_len))
    assert all(caplen == min(flen, snap) for *_, flen, caplen, _, _ in segments)
    return frames, cut


@pytest.mark.parametrize("snap", SNAPS)
@pytest.mark.parametrize("name", [n for n in REAL + CRAFTED if n not in TCPFLOW_WRONG])
def test_flowdump_of_a_cut_capture_equals_tcpflow(name, snap):
    pcap = cut_pcap(name, snap)
    outdir = tmpdir("flowdump")
    _, err = mosxdp_run("flowdump", pcap, "--outdir", outdir)
    ours, theirs = read_streams(outdir), tcpflow(pcap).result()
    assert sorted(ours) == sorted(theirs)
    for fname, data in ours.items():
        assert data == theirs[fname], (fname, len(data), len(theirs[fname]))
    frames, cut = cut_summary(tshark_segments(pcap).result(), snap)
    if frames:
        assert (f"mosxdp: {frames} frames were cut by the capture's snap length ({snap} bytes): "
                f"flows tracked from their headers, {cut} payload bytes missing") in err, err
        assert "stream bytes the monitor never saw" in err
    else:
        assert "snap length" not in err


@pytest.mark.parametrize("snap", SNAPS)
@pytest.mark.parametrize("name", REAL)
def test_connlog_of_a_cut_capture_matches_tshark(name, snap):
    pcap = cut_pcap(name, snap)
    out = tmpdir("connlog") / "conn.log"
    stats = out.with_name("stats.json")
    _, err = mosxdp_run("connlog", pcap, "--output", out, "--stats-json", stats)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    records = sorted((r for r in records if r["proto"] == "tcp"), key=lambda r: r["ts"])
    segments = tshark_segments(pcap).result()
    per_sender, missed, first = {}, {}, {}
    seen = {}     # (stream, sender) -> bytearray by relative sequence number: 1 seen, 2 cut
    for index, (stream, src, sport, flen, caplen, tcp_len, seq) in enumerate(segments):
        counts = per_sender.setdefault((stream, src, sport), [0, 0])
        counts[0] += 1
        counts[1] += flen
        first.setdefault(stream, index)
        # A byte is missed when its first copy was cut (a retransmission, concurrent.pcap
        # has some, cut again or not, does not bring it back).
        kept = max(0, caplen - (flen - tcp_len))
        marks = seen.setdefault((stream, src, sport), bytearray())
        if len(marks) < seq + tcp_len:
            marks.extend(bytes(seq + tcp_len - len(marks)))
        for offset in range(seq, seq + tcp_len):
            if not marks[offset]:
                marks[offset] = 1 if offset < seq + kept else 2
    for (stream, _, _), marks in seen.items():
        missed[stream] = missed.get(stream, 0) + marks.count(2)
    # One line per tcp.stream, in the order of their first frames.
    streams = sorted(first, key=first.get)
    assert len(records) == len(streams)
    for record, stream in zip(records, streams):
        for host, port, pkts, ip_bytes in (
                ("id.orig_h", "id.orig_p", "orig_pkts", "orig_ip_bytes"),
                ("id.resp_h", "id.resp_p", "resp_pkts", "resp_ip_bytes")):
            tshark = per_sender.get((stream, record[host], record[port]), [0, 0])
            assert [record[pkts], record[ip_bytes] + 14 * record[pkts]] == tshark, (record, stream)
        assert record["missed_bytes"] == missed[stream], (record, stream)
    frames, cut = cut_summary(segments, snap)
    stack = json.loads(stats.read_text())["stack"]
    assert (stack["cut_frames"], stack["cut_bytes"], stack["cut_headers"]) == (frames, cut, 0)
    if frames:
        assert f"{frames} frames were cut by the capture's snap length ({snap} bytes)" in err


def test_tcpdump_reads_back_what_write_kept():
    """--write of a cut capture is a cut capture for tcpdump too: the same records, the
    length on the wire of each ("length N" in tcpdump's lines) as in the input."""
    pcap = cut_pcap("http_sizes", 96)
    out = tmpdir("write") / "out.pcap"
    mosxdp_run("connlog", pcap, "--output", out.with_name("conn.log"), "--write", out)

    def lines(path):
        return subprocess.run(["tcpdump", "-nn", "-r", str(path)], capture_output=True,
                              text=True, check=True).stdout.splitlines()
    ours, theirs = lines(out), lines(pcap)
    assert ours == theirs and len(ours) == 1540
    assert any("length 1448" in line for line in ours)
