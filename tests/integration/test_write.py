"""`mosxdp run APP --pcap IN --write OUT`: the frames inline mode would transmit.

OUT is what inline mode would have transmitted: every forwarded frame in
order with the app's overwrites applied, dropped frames absent.  OUT is read
back with tshark (and with a small independent pcap reader for byte checks),
tshark validating IPv4 and TCP checksums.  The app, apps/rewrite.py, uses
only the public API: at MOS_HK_SND it overwrites 4 payload bytes of one
connection's server segments with MOS_UPDATE_TCP_CHKSUM, of another's
without it, and drops some pure ACKs of a third.
"""
import json
import struct
import subprocess

import pytest

from integ_helpers import APPS, DATA, read_pcap, run_mosxdp, tmpdir

IN = DATA / "http_sizes.pcap"
MARK = b"MOSX"
GOOD, BAD = "1", "0"      # tshark's tcp.checksum.status / ip.checksum.status values


def tshark_checks(path):
    """Per frame of `path`: (tcp.checksum.status, ip.checksum.status, tcp payload)."""
    out = subprocess.run(
        ["tshark", "-r", str(path), "-o", "tcp.check_checksum:TRUE",
         "-o", "ip.check_checksum:TRUE", "-T", "fields", "-E", "separator=/t",
         "-e", "frame.number", "-e", "tcp.checksum.status", "-e", "ip.checksum.status",
         "-e", "tcp.payload"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    rows = []
    for number, line in enumerate(out.splitlines(), 1):
        frame, tcp_status, ip_status, payload = line.split("\t")
        assert int(frame) == number
        rows.append((tcp_status, ip_status, bytes.fromhex(payload)))
    return rows


def tcp_offsets(frame):
    """(offset of the TCP header, offset of the payload) of an untagged IPv4/IPv6 frame."""
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == 0x0800:
        l4 = 14 + (frame[14] & 0xF) * 4
    else:
        assert ethertype == 0x86DD
        l4 = 14 + 40
    return l4, l4 + (frame[l4 + 12] >> 4) * 4


def test_write_without_edits_is_the_input():
    """flowdump edits nothing: OUT holds every input frame (ARP and IPv6 ND
    included), byte for byte, with its timestamp."""
    out = tmpdir("write") / "out.pcap"
    for name in ("http_sizes", "ipv6"):
        proc = run_mosxdp("run", "flowdump", "--pcap", DATA / f"{name}.pcap",
                          "--outdir", tmpdir("streams"), "--write", out)
        assert (proc.returncode, proc.stderr) == (0, "")
        in_link, in_records = read_pcap(DATA / f"{name}.pcap")
        out_link, out_records = read_pcap(out)
        assert out_link == in_link == 1
        assert out_records == in_records
        rows = tshark_checks(out)
        assert len(rows) == len(in_records)


@pytest.fixture(scope="module")
def rewritten():
    workdir = tmpdir("rewrite")
    out, log = workdir / "out.pcap", workdir / "log.json"
    proc = run_mosxdp("run", APPS / "rewrite.py", "--pcap", IN, "--write", out, "--log", log)
    assert (proc.returncode, proc.stderr) == (0, "")
    return out, json.loads(log.read_text())


def test_write_applies_drops(rewritten):
    out, log = rewritten
    _, in_records = read_pcap(IN)
    _, out_records = read_pcap(out)
    assert log["frames"] == len(in_records)         # the app saw every frame
    drops = set(log["drops"])
    assert len(drops) >= 5
    assert len(out_records) == len(in_records) - len(drops)
    # Dropped frames are absent; every other frame is there, in order, same timestamp.
    kept = [record for number, record in enumerate(in_records, 1) if number not in drops]
    assert [(s, u, len(f)) for s, u, f in out_records] == [(s, u, len(f)) for s, u, f in kept]
    for number in drops:
        frame = in_records[number - 1][2]
        l4, payload = tcp_offsets(frame)
        assert payload == len(frame) and frame[l4 + 13] == 0x10     # a pure ACK
    # tshark reads the file and counts the same frames.
    assert len(tshark_checks(out)) == len(in_records) - len(drops)


def test_write_applies_overwrites_and_checksums(rewritten):
    out, log = rewritten
    _, in_records = read_pcap(IN)
    _, out_records = read_pcap(out)
    drops = set(log["drops"])
    out_number = {}            # input frame number -> output frame number
    for number in range(1, len(in_records) + 1):
        if number not in drops:
            out_number[number] = len(out_number) + 1
    edits = {entry["frame"]: entry for entry in log["overwrites"]}
    assert any(e["tcp_chksum"] for e in edits.values())
    assert any(not e["tcp_chksum"] for e in edits.values())
    rows = tshark_checks(out)
    for number, out_no in out_number.items():
        before = in_records[number - 1][2]
        after = out_records[out_no - 1][2]
        tcp_status, ip_status, payload = rows[out_no - 1]
        if number not in edits:
            assert after == before, f"input frame {number} changed"
            if tcp_status:                              # TCP frames: input checksums are valid
                assert (tcp_status, ip_status) in ((GOOD, GOOD), (GOOD, ""))
            continue
        edit = edits[number]
        l4, start = tcp_offsets(before)
        at = start + edit["offset"]
        data = bytes.fromhex(edit["data"])
        assert after[at:at + len(data)] == data == MARK
        assert payload[edit["offset"]:edit["offset"] + len(data)] == MARK    # as tshark sees it
        # Only the payload bytes (and the TCP checksum when asked) changed.
        untouched = lambda frame: frame[:l4 + 16] + frame[l4 + 18:at] + frame[at + len(data):]
        assert untouched(after) == untouched(before)
        assert ip_status == GOOD
        if edit["tcp_chksum"]:
            assert tcp_status == GOOD, f"input frame {number}: the app asked for a valid checksum"
        else:
            assert after[l4 + 16:l4 + 18] == before[l4 + 16:l4 + 18]
            assert tcp_status == BAD, f"input frame {number}: checksum left stale, tshark must see it"
