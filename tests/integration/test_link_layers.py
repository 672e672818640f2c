"""Captures of other link layers than Ethernet (io/linklayer.py), and captures of large
segments (GRO/TSO, a loopback's 64 KiB ones), against the Ethernet original and tcpflow.

The shipped captures are rewritten to Linux cooked (SLL, SLL2), raw IP and BSD loopback
(NULL) link layers by taking each frame's Ethernet header off and putting the other link
header on: flowdump's files and connlog's records must be those of the Ethernet original,
and flowdump's files those tcpflow writes from the rewritten file (tcpflow reads every one
of these but SLL2).
"""
import struct

import pytest

from integ_helpers import DATA, connlog, flowdump, read_pcap, run_mosxdp, tcpflow, tmpdir, \
    write_pcap

CAPTURES = ["http_sizes", "concurrent", "ipv6", "reuse", "reorder"]
SENDER = bytes.fromhex("02000000aa01")


def cooked(frame):
    return struct.pack("!HHH8sH", 0, 1, 6, frame[6:12] + bytes(2), struct.unpack_from(
        "!H", frame, 12)[0]) + frame[14:]


def cooked2(frame):
    return struct.pack("!HHIHBB8s", struct.unpack_from("!H", frame, 12)[0], 0, 2, 1, 0, 6,
                       frame[6:12] + bytes(2)) + frame[14:]


def null(frame):
    # IPv6 as Linux numbers it (10), the one family tcpflow takes for it here; the BSDs'
    # and macOS's are in tests/unit/test_linklayer.py
    family = 2 if frame[12:14] == b"\x08\x00" else 10
    return struct.pack("<I", family) + frame[14:]


def raw(frame):
    return frame[14:]


# link type: how an Ethernet frame without VLAN tag becomes one of it (raw IP and a
# loopback carry no ARP: such frames are left out)
LINKS = {113: cooked, 276: cooked2, 101: raw, 0: null}
IP_ONLY = {101, 0}


def relinked(name, linktype):
    linktype_in, records = read_pcap(DATA / f"{name}.pcap")
    assert linktype_in == 1
    out = []
    for sec, usec, frame in records:
        ip = frame[12:14] in (b"\x08\x00", b"\x86\xdd")
        if ip or linktype not in IP_ONLY:
            out.append((sec, usec, LINKS[linktype](frame)))
    path = tmpdir("relinked") / f"{name}-{linktype}.pcap"
    write_pcap(path, out, linktype)
    return path


@pytest.mark.parametrize("linktype", sorted(LINKS))
@pytest.mark.parametrize("name", CAPTURES)
def test_flowdump_and_connlog_read_other_link_layers_as_ethernet(name, linktype):
    path = relinked(name, linktype)
    original = DATA / f"{name}.pcap"
    streams = flowdump(path).result()
    assert streams and streams == flowdump(original).result()
    if linktype != 276:     # tcpflow: "unknown datalink type 276"
        assert streams == tcpflow(path).result()
    assert connlog(path).result() == connlog(original).result()


@pytest.mark.parametrize("linktype", [276, 101])
def test_a_split_run_of_another_link_layer_writes_what_one_worker_writes(linktype):
    path = relinked("concurrent", linktype)
    outputs = {}
    for workers in (1, 2):
        out = tmpdir(f"split{workers}")
        proc = run_mosxdp("run", "flowdump", "--pcap", path, "--outdir", out / "flows",
                          "--write", out / "out.pcap", "--workers", workers)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        proc = run_mosxdp("run", "connlog", "--pcap", path, "--output", out / "conn.log",
                          "--workers", workers)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        outputs[workers] = {p.relative_to(out): p.read_bytes()
                            for p in out.rglob("*") if p.is_file()}
    assert outputs[1] == outputs[2]
    assert len(outputs[1]) > 3


def large_segments(path, sizes, lost=()):
    """A conversation whose data segments are ``sizes`` bytes each (up to 64 KiB, as GRO and
    TSO give them to a capture on a host), one way then the other, the receiver
    acknowledging every second one (window scale 7 both ways); the segments whose index is
    in ``lost`` are left out of the capture (their bytes zeros in what is returned), as a
    capture that drops frames has them; returns what each side sent."""
    cli, srv = ("10.9.0.1", 40001), ("10.9.0.2", 8080)
    macs = {"c": bytes.fromhex("02000000aa02"), "s": SENDER}
    records, sent = [], {"c": b"", "s": b""}
    seq = {"c": 1000, "s": 5000}
    clock = [1_700_000_000_000_000]

    def segment(who, flags, payload=b"", captured=True):
        src, dst = (cli, srv) if who == "c" else (srv, cli)
        other = "s" if who == "c" else "c"
        options = b"\x01\x03\x03\x07" if flags & 0x02 else b""    # NOP, window scale 7
        tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], seq[who] & 0xFFFFFFFF,
                          seq[other] & 0xFFFFFFFF if flags & 0x10 else 0,
                          (5 + len(options) // 4) << 4, flags, 65535, 0, 0) + options + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0,
                         bytes(map(int, src[0].split("."))), bytes(map(int, dst[0].split("."))))
        clock[0] += 10
        if captured:
            records.append((clock[0] // 1_000_000, clock[0] % 1_000_000,
                            macs[other] + macs[who] + b"\x08\x00" + ip + tcp))
        seq[who] += len(payload) + (1 if flags & 0x03 else 0)
        sent[who] += payload if captured else bytes(len(payload))

    segment("c", 0x02)
    segment("s", 0x12)
    segment("c", 0x10)
    for who, peer in (("c", "s"), ("s", "c")):
        for i, size in enumerate(sizes):
            segment(who, 0x18, bytes((i * 7 + j) & 0xFF for j in range(size)),
                    captured=i not in lost)
            if i % 2:
                segment(peer, 0x10)
        segment(peer, 0x10)
    segment("c", 0x11)
    segment("s", 0x11)
    segment("c", 0x10)
    write_pcap(path, records)
    return sent


def test_segments_larger_than_a_batch_fits_lose_nothing():
    """A batch of 64 frames brings 2.5 MB of 60 KB segments, ten times a stream buffer:
    flowdump, which reads at each CONN_NEW_DATA, still writes every byte."""
    path = tmpdir("gro") / "gro.pcap"
    sent = large_segments(path, [60_000] * 64 + [1_000, 65_000])
    streams = flowdump(path).result()
    assert sorted(len(data) for data in streams.values()) == sorted(
        len(data) for data in sent.values())
    assert sorted(streams.values()) == sorted(sent.values())
    assert streams == tcpflow(path).result()
    (record,) = connlog(path).result()
    assert (record["orig_bytes"], record["resp_bytes"], record.get("missed_bytes", 0)) == (
        len(sent["c"]), len(sent["s"]), 0)


def test_the_bytes_before_a_hole_survive_the_window_behind_it():
    """A capture that dropped a segment: the receiver acknowledges the hole with the
    window behind it (more than a stream buffer) in one batch. The bytes before the hole
    are written, the hole is zeros, as tcpflow writes them."""
    path = tmpdir("lossy") / "lossy.pcap"
    sent = large_segments(path, [20_000] * 4 + [60_000] * 10, lost={4})
    streams = flowdump(path).result()
    assert sorted(streams.values()) == sorted(sent.values())
    assert streams == tcpflow(path).result()


def test_tso_segments_with_a_total_length_of_zero_are_read_whole():
    """A capture that saw segments before TSO cut them shows their IPv4 total length as 0
    (tshark reads the rest of the frame; tcpflow drops them): flowdump writes every byte and
    connlog counts the frames' IP bytes."""
    path = tmpdir("tso") / "tso.pcap"
    sent = large_segments(path, [20_000] * 6)
    _, records = read_pcap(path)
    zeroed = [(sec, usec, frame[:16] + b"\x00\x00" + frame[18:] if len(frame) > 1000 else frame)
              for sec, usec, frame in records]
    write_pcap(path, zeroed)
    assert sorted(flowdump(path).result().values()) == sorted(sent.values())
    (record,) = connlog(path).result()
    assert (record["orig_bytes"], record["resp_bytes"], record["missed_bytes"]) == (
        len(sent["c"]), len(sent["s"]), 0)
    assert record["orig_ip_bytes"] + record["resp_ip_bytes"] == sum(
        len(frame) - 14 for _, _, frame in zeroed)
