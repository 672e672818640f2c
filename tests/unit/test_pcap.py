"""mosxdp.io.pcap: classic pcap and pcapng reading, writing, and the shipped captures."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from mosxdp.io.pcap import PcapFormatError, PcapReader, PcapWriter

DATA = Path(__file__).resolve().parent.parent / "data"


def frame(n: int, fill: int = 0) -> bytes:
    """An Ethernet frame of n bytes (n >= 14)."""
    body = bytes((fill + i) & 0xFF for i in range(n - 14))
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + body


FRAMES = [(1_700_000_000_000_000 + i * 1234, frame(60 + i * 37 % 1400, i)) for i in range(50)]


def read_all(path):
    with PcapReader(path) as r:
        return [(ts, bytes(f)) for ts, f in r]


# ---------------------------------------------------------------------------
# writers for hand-made files


def classic(order: str, records, magic=0xA1B2C3D4, linktype=1, snaplen=65535, ns=False) -> bytes:
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)
    for ts_us, data in records:
        sec, frac = divmod(ts_us, 1_000_000)
        if ns:
            frac *= 1000
        out += struct.pack(order + "IIII", sec, frac, len(data), len(data)) + data
    return out


def pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


def block(order: str, btype: int, body: bytes) -> bytes:
    body = pad4(body)
    n = len(body) + 12
    return struct.pack(order + "II", btype, n) + body + struct.pack(order + "I", n)


def opt(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + pad4(value)


def shb(order: str) -> bytes:
    body = struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    return block(order, 0x0A0D0D0A, body)


def idb(order: str, linktype=1, snaplen=0, tsresol=None, tsoffset=None) -> bytes:
    opts = b""
    if tsresol is not None:
        opts += opt(order, 9, bytes([tsresol]))
    if tsoffset is not None:
        opts += opt(order, 14, struct.pack(order + "q", tsoffset))
    if opts:
        opts += opt(order, 0, b"")
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen) + opts)


def epb(order: str, ifid: int, raw_ts: int, data: bytes, orig=None) -> bytes:
    body = struct.pack(order + "IIIII", ifid, raw_ts >> 32, raw_ts & 0xFFFFFFFF, len(data),
                       len(data) if orig is None else orig) + pad4(data)
    return block(order, 6, body)


def spb(order: str, data: bytes) -> bytes:
    return block(order, 3, struct.pack(order + "I", len(data)) + pad4(data))


def opb(order: str, ifid: int, raw_ts: int, data: bytes) -> bytes:
    body = struct.pack(order + "HHIIII", ifid, 0, raw_ts >> 32, raw_ts & 0xFFFFFFFF,
                       len(data), len(data)) + pad4(data)
    return block(order, 2, body)


# ---------------------------------------------------------------------------
# classic pcap


def test_round_trip(tmp_path):
    p = tmp_path / "rt.pcap"
    with PcapWriter(p) as w:
        for ts, f in FRAMES:
            w.write(ts, f)
        w.write(5, bytearray(frame(64)))
        w.write(6, memoryview(frame(70)))
    assert w.packets == 52
    got = read_all(p)
    assert got == FRAMES + [(5, frame(64)), (6, frame(70))]
    with PcapReader(p) as r:
        assert (r.format, r.linktype, r.snaplen, r.nanosecond) == ("pcap", 1, 65535, False)
        list(r)
        assert r.packets == 52


def test_frames_are_writable_views_and_the_file_is_untouched(tmp_path):
    p = tmp_path / "w.pcap"
    with PcapWriter(p) as w:
        w.write(1, frame(60, 1))
        w.write(2, frame(61, 2))
    before = p.read_bytes()
    seen = []
    with PcapReader(p) as r:
        for ts, f in r:
            assert isinstance(f, memoryview) and not f.readonly
            f[0:6] = b"\xff" * 6
            f[-1] ^= 0xFF
            seen.append(bytes(f))
    assert p.read_bytes() == before
    assert seen[0][:6] == b"\xff" * 6 and seen[1][:6] == b"\xff" * 6
    assert len(seen[0]) == 60 and len(seen[1]) == 61


@pytest.mark.parametrize("chunk", [1, 7, 100, 1 << 20])
@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_records_across_chunk_boundaries(tmp_path, monkeypatch, kind, chunk):
    """The input is read a chunk at a time: records cut by a chunk's end come whole, and a
    frame of an earlier chunk stays valid (and writable) while referenced."""
    import mosxdp.io.pcap as pcapmod
    monkeypatch.setattr(pcapmod, "_CHUNK", chunk)
    p = tmp_path / f"chunks.{kind}"
    if kind == "pcap":
        p.write_bytes(classic("<", FRAMES))
    else:
        p.write_bytes(shb("<") + idb("<") + b"".join(epb("<", 0, ts, f) for ts, f in FRAMES))
    before = p.read_bytes()
    views = []
    with PcapReader(p) as r:
        for ts, f in r:
            assert not f.readonly
            f[0] = 0xEE
            views.append((ts, f))
    assert [(ts, bytes(v)) for ts, v in views] == [(ts, b"\xee" + f[1:]) for ts, f in FRAMES]
    assert p.read_bytes() == before


def test_writer_snaplen_and_orig_len(tmp_path):
    p = tmp_path / "snap.pcap"
    with PcapWriter(p, snaplen=100) as w:
        w.write(7, frame(300))
        w.write(8, frame(80))
    with PcapReader(p) as r:
        assert r.snaplen == 100
        recs = [(ts, bytes(f), n) for ts, f, n in r.records()]
    assert recs == [(7, frame(300)[:100], 300), (8, frame(80), 80)]


def test_writer_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError):
        PcapWriter(tmp_path / "x.pcap", snaplen=0)
    with PcapWriter(tmp_path / "y.pcap") as w:
        with pytest.raises(ValueError):
            w.write(-1, frame(60))
    with pytest.raises(ValueError):
        w.write(1, frame(60))


@pytest.mark.parametrize("order", ["<", ">"])
def test_classic_both_byte_orders(tmp_path, order):
    p = tmp_path / "o.pcap"
    p.write_bytes(classic(order, FRAMES[:5]))
    assert read_all(p) == FRAMES[:5]


@pytest.mark.parametrize("order", ["<", ">"])
def test_classic_nanosecond(tmp_path, order):
    p = tmp_path / "ns.pcap"
    recs = [(1_000_000_123_456, frame(60))]
    raw = struct.pack(order + "IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)
    raw += struct.pack(order + "IIII", 1_000_000, 123_456_789, 60, 60) + frame(60)
    p.write_bytes(raw)
    with PcapReader(p) as r:
        assert r.nanosecond
        got = [(ts, bytes(f)) for ts, f in r]
    assert got == recs  # 123456789 ns -> 123456 us (truncated)


def test_classic_modified_kuznetzov(tmp_path):
    raw = struct.pack("<IHHiIII", 0xA1B2CD34, 2, 4, 0, 0, 65535, 1)
    raw += struct.pack("<IIII", 10, 20, 60, 60) + bytes(8) + frame(60)
    p = tmp_path / "kuz.pcap"
    p.write_bytes(raw)
    assert read_all(p) == [(10_000_020, frame(60))]


def test_empty_capture_has_no_packets(tmp_path):
    p = tmp_path / "e.pcap"
    with PcapWriter(p):
        pass
    assert read_all(p) == []


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 * 1_000_000 - 1), st.binary(min_size=14, max_size=300)),
                max_size=20))
def test_round_trip_property(tmp_path_factory, recs):
    p = tmp_path_factory.mktemp("prop") / "p.pcap"
    with PcapWriter(p) as w:
        for ts, data in recs:
            w.write(ts, data)
    assert read_all(p) == recs


# ---------------------------------------------------------------------------
# pcapng


@pytest.mark.parametrize("order", ["<", ">"])
def test_pcapng_hand_made(tmp_path, order):
    f1, f2, f3, f4, f5 = (frame(60 + i, i) for i in range(5))
    raw = shb(order)
    raw += idb(order)                                    # if 0: microseconds
    raw += idb(order, tsresol=9, tsoffset=100)           # if 1: ns, +100 s
    raw += block(order, 4, b"\x01\x00\x04\x00\x0a\x00\x00\x01host\x00\x00\x00\x00")  # NRB
    raw += epb(order, 0, 1_600_000_000_123_456, f1)
    raw += epb(order, 1, 1_600_000_000_123_456_789, f2)
    raw += block(order, 0x0BAD, b"custom block")         # unknown: skipped
    raw += spb(order, f3)                                # no timestamp: the last one
    raw += opb(order, 0, 1_600_000_001_000_000, f4)
    raw += block(order, 5, struct.pack(order + "III", 0, 0, 0))  # ISB: skipped
    raw += idb(order, tsresol=0x80 | 20)                 # if 2: 2^-20 s
    raw += epb(order, 2, (5 << 20) | (1 << 19), f5)     # 5.5 s
    p = tmp_path / "h.pcapng"
    p.write_bytes(raw)
    with PcapReader(p) as r:
        assert r.format == "pcapng" and r.linktype == 1
        got = [(ts, bytes(f)) for ts, f in r]
    assert got == [
        (1_600_000_000_123_456, f1),
        (1_600_000_000_123_456 + 100_000_000, f2),
        (1_600_000_000_123_456 + 100_000_000, f3),
        (1_600_000_001_000_000, f4),
        (5_500_000, f5),
    ]


def test_pcapng_several_sections_of_both_orders(tmp_path):
    a, b = frame(70, 1), frame(80, 2)
    raw = shb("<") + idb("<", tsresol=9) + epb("<", 0, 2_000_000_000, a)
    raw += shb(">") + idb(">") + epb(">", 0, 3_000_000, b)
    p = tmp_path / "multi.pcapng"
    p.write_bytes(raw)
    assert read_all(p) == [(2_000_000, a), (3_000_000, b)]


def test_pcapng_epb_orig_len_and_padding(tmp_path):
    data = frame(61)  # not a multiple of 4
    p = tmp_path / "pad.pcapng"
    p.write_bytes(shb("<") + idb("<") + epb("<", 0, 9, data, orig=1500) + epb("<", 0, 10, data))
    with PcapReader(p) as r:
        recs = [(ts, bytes(f), n) for ts, f, n in r.records()]
    assert recs == [(9, data, 1500), (10, data, 61)]


def test_pcapng_frames_are_writable(tmp_path):
    p = tmp_path / "w.pcapng"
    p.write_bytes(shb("<") + idb("<") + epb("<", 0, 1, frame(60)))
    with PcapReader(p) as r:
        for _ts, f in r:
            assert not f.readonly
            f[:2] = b"\x00\x00"


def test_pcapng_written_by_scapy(tmp_path):
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.utils import PcapNgWriter

    pkts = []
    for i in range(5):
        p = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000 + i, dport=80) / (b"x" * i)
        p.time = 1_700_000_000 + i * 0.25
        pkts.append(p)
    path = tmp_path / "scapy.pcapng"
    with PcapNgWriter(str(path)) as w:
        for p in pkts:
            w.write(p)
    assert path.read_bytes()[:4] == b"\x0a\x0d\x0d\x0a"
    got = read_all(path)
    assert [f for _, f in got] == [bytes(p) for p in pkts]
    assert [ts for ts, _ in got] == [1_700_000_000_000_000 + i * 250_000 for i in range(5)]


needs_editcap = pytest.mark.skipif(shutil.which("editcap") is None, reason="editcap not installed")


@needs_editcap
@pytest.mark.parametrize("fmt", ["pcapng", "nsecpcap"])
def test_converted_by_editcap(tmp_path, fmt):
    src = tmp_path / "src.pcap"
    with PcapWriter(src) as w:
        for ts, f in FRAMES:
            w.write(ts, f)
    dst = tmp_path / f"dst.{fmt}"
    subprocess.run(["editcap", "-F", fmt, str(src), str(dst)], check=True, capture_output=True)
    with PcapReader(dst) as r:
        assert r.format == ("pcapng" if fmt == "pcapng" else "pcap")
        got = [(ts, bytes(f)) for ts, f in r]
    assert got == FRAMES


@needs_editcap
def test_editcap_pcapng_of_a_shipped_capture():
    src = DATA / "halfclose.pcap"
    if not src.exists():
        pytest.skip("tests/data not generated")
    dst_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    dst = dst_dir / f"mosxdp-test-{os.getpid()}.pcapng"
    try:
        subprocess.run(["editcap", "-F", "pcapng", str(src), str(dst)], check=True,
                       capture_output=True)
        assert read_all(dst) == read_all(src)
    finally:
        dst.unlink(missing_ok=True)


# ---------------------------------------------------------------------------
# errors


def error_of(path) -> str:
    with pytest.raises(PcapFormatError) as ei:
        with PcapReader(path) as r:
            for _ in r:
                pass
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_link_types_not_read_are_refused_with_those_that_are(tmp_path):
    p = tmp_path / "wifi.pcap"
    p.write_bytes(classic("<", [(1, b"\x00" * 40)], linktype=127))
    with pytest.raises(PcapFormatError) as ei:
        PcapReader(p)
    assert str(ei.value) == (
        f"{p}: link type 127 (IEEE802_11_RADIOTAP) is not read here: the link types read are "
        "Ethernet (1), NULL (0), RAW (12), RAW (14), RAW (101), LOOP (108), LINUX_SLL (113), "
        "IPV4 (228), IPV6 (229), LINUX_SLL2 (276)")
    q = tmp_path / "ppp.pcapng"
    q.write_bytes(shb("<") + idb("<", linktype=9) + epb("<", 0, 1, b"\x00" * 20))
    assert "link type 9 (PPP) is not read here: " in error_of(q)


def test_an_interface_not_read_later_in_a_pcapng(tmp_path):
    p = tmp_path / "late.pcapng"
    p.write_bytes(shb("<") + idb("<") + epb("<", 0, 1, frame(60)) + idb("<", linktype=105))
    got = []
    with pytest.raises(PcapFormatError, match="link type 105"):
        with PcapReader(p) as r:
            for ts, f in r:
                got.append(bytes(f))
    assert got == [frame(60)]


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("cut", ["header", "data"])
def test_truncated_classic(tmp_path, order, cut):
    full = classic(order, FRAMES[:3])
    lens = [24] + [16 + len(f) for _, f in FRAMES[:3]]
    start3 = sum(lens[:3])  # offset of the third record
    if cut == "header":
        raw, where = full[:start3 + 7], start3
    else:
        raw, where = full[:start3 + 16 + 5], start3 + 16
    p = tmp_path / "t.pcap"
    p.write_bytes(raw)
    got = []
    with pytest.raises(PcapFormatError) as ei:
        with PcapReader(p) as r:
            for ts, f in r:
                got.append((ts, bytes(f)))
    assert got == FRAMES[:2]  # every complete packet first
    msg = str(ei.value)
    assert msg.startswith(f"{p}: truncated at byte offset {where}: ")
    assert msg.endswith("cut short, 2 packets read")
    assert ("record header" if cut == "header" else "packet data") in msg


def test_truncated_file_header(tmp_path):
    p = tmp_path / "h.pcap"
    p.write_bytes(classic("<", [])[:10])
    assert error_of(p) == f"{p}: truncated at byte offset 10: pcap file header cut short (10 of 24 bytes), 0 packets read"


@pytest.mark.parametrize("cut", [5, 30, -3])
def test_truncated_pcapng(tmp_path, cut):
    good = shb("<") + idb("<") + epb("<", 0, 1, frame(60))
    last = epb("<", 0, 2, frame(90))
    p = tmp_path / "t.pcapng"
    p.write_bytes(good + last[:cut])
    got = []
    with pytest.raises(PcapFormatError) as ei:
        with PcapReader(p) as r:
            for ts, f in r:
                got.append(bytes(f))
    assert got == [frame(60)]
    assert f"truncated at byte offset {len(good)}" in str(ei.value)
    assert str(ei.value).endswith("1 packet read")


def test_corrupt_pcapng_block_length(tmp_path):
    p = tmp_path / "c.pcapng"
    bad = bytearray(epb("<", 0, 1, frame(60)))
    struct.pack_into("<I", bad, 4, 13)  # not a multiple of 4
    p.write_bytes(shb("<") + idb("<") + bytes(bad))
    assert "corrupt" in error_of(p)


@pytest.mark.parametrize("content", [b"hello world, this is not a capture file at all",
                                     b"\x7fELF\x02\x01\x01" + bytes(64),
                                     b"GIF89a" + bytes(30)])
def test_garbage(tmp_path, content):
    p = tmp_path / "g.bin"
    p.write_bytes(content)
    assert error_of(p) == f"{p}: not a pcap or pcapng file (magic 0x{content[:4].hex()})"


def test_empty_and_tiny_files(tmp_path):
    p = tmp_path / "empty.pcap"
    p.write_bytes(b"")
    assert error_of(p) == f"{p}: not a pcap or pcapng file (empty file)"
    q = tmp_path / "tiny.pcap"
    q.write_bytes(b"\xd4\xc3")
    assert "not a pcap or pcapng file (magic 0xd4c3" in error_of(q)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.pcap"
    assert error_of(p).startswith(f"{p}: cannot read: ")


def test_interface_index_out_of_range(tmp_path):
    p = tmp_path / "i.pcapng"
    p.write_bytes(shb("<") + idb("<") + epb("<", 3, 1, frame(60)))
    assert "interface 3" in error_of(p)


# ---------------------------------------------------------------------------
# streams, compressed captures, bounded memory


def capture_bytes(kind):
    if kind == "pcap":
        return classic("<", FRAMES)
    return shb("<") + idb("<") + b"".join(epb("<", 0, ts, f) for ts, f in FRAMES)


COMPRESSORS = {
    "gzip": lambda b: __import__("gzip").compress(b, compresslevel=1),
    "bzip2": lambda b: __import__("bz2").compress(b),
    "xz": lambda b: __import__("lzma").compress(b),
}


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
@pytest.mark.parametrize("compression", [None, "gzip", "bzip2", "xz"])
def test_compressed_captures_are_known_by_their_magic(tmp_path, kind, compression):
    data = capture_bytes(kind)
    if compression:
        data = COMPRESSORS[compression](data)
    p = tmp_path / "capture.bin"          # the name says nothing
    p.write_bytes(data)
    with PcapReader(p) as r:
        got = [(ts, bytes(f)) for ts, f in r]
        assert (r.format, r.compression) == (kind, compression)
    assert got == FRAMES


@pytest.mark.parametrize("compression", ["gzip", "bzip2", "xz"])
def test_a_cut_compressed_capture_keeps_its_complete_packets(tmp_path, compression):
    """A compressed stream cut short: the packets before the cut, then one line; also when
    the cut falls between two records (the end marker is what is missing)."""
    full = classic("<", FRAMES * 40)
    packed = COMPRESSORS[compression](full)
    p = tmp_path / "cut"
    p.write_bytes(packed[:len(packed) - 20])
    got = []
    with pytest.raises(PcapFormatError) as info:
        with PcapReader(p) as r:
            for ts, f in r:
                got.append((ts, bytes(f)))
    message = str(info.value)
    assert message.startswith(f"{p}: truncated at byte offset ")
    assert message.endswith(f"{len(got)} packets read") and "\n" not in message
    assert got == (FRAMES * 40)[:len(got)]
    # A cut at a record boundary of the decompressed data: only the end marker lacks.
    whole = classic("<", FRAMES)
    stream = __import__("zlib").compressobj(wbits=31)
    p.write_bytes(stream.compress(whole) + stream.flush(__import__("zlib").Z_FULL_FLUSH))
    with pytest.raises(PcapFormatError, match="the gzip stream is cut short, 50 packets read"):
        with PcapReader(p) as r:
            assert sum(1 for _ in r) == 50


def test_corrupt_compressed_data_and_zstd(tmp_path):
    p = tmp_path / "bad.gz"
    p.write_bytes(b"\x1f\x8b" + b"this is not deflate data" * 4)
    assert error_of(p).startswith(f"{p}: corrupt gzip data after byte offset 0 of the "
                                  "decompressed capture: ")
    z = tmp_path / "capture.pcap.zst"
    z.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(40))
    assert error_of(z) == (f"{z}: compressed with zstd, which is not read here: decompress it "
                           "first (zstd -dc FILE | mosxdp run ... --pcap -)")


def read_through_a_pipe(data, path_of_pipe):
    """Read ``data`` written into a pipe by another thread, in small writes with pauses (a
    capture tool's pace): the frames as bytes."""
    import threading
    import time

    def feed(fd):
        with os.fdopen(fd, "wb") as w:
            for i in range(0, len(data), 997):
                w.write(data[i:i + 997])
                w.flush()
                if i % 20 == 0:
                    time.sleep(0.001)

    read_fd, write_fd = os.pipe()
    if path_of_pipe is not None:
        os.close(read_fd)
        os.close(write_fd)
        os.mkfifo(path_of_pipe)
        feeder = threading.Thread(target=lambda: feed(os.open(path_of_pipe, os.O_WRONLY)))
        feeder.start()
        with PcapReader(path_of_pipe) as r:
            got = [(ts, bytes(f)) for ts, f in r]
    else:
        feeder = threading.Thread(target=feed, args=(write_fd,))
        feeder.start()
        saved = os.dup(0)
        os.dup2(read_fd, 0)
        os.close(read_fd)
        try:
            with PcapReader("-") as r:
                assert r.name == "stdin"
                got = [(ts, bytes(f)) for ts, f in r]
        finally:
            os.dup2(saved, 0)
            os.close(saved)
    feeder.join()
    return got


@pytest.mark.parametrize("compression", [None, "gzip"])
@pytest.mark.parametrize("how", ["stdin", "fifo"])
def test_stdin_and_fifos_are_read_as_streams(tmp_path, how, compression):
    data = capture_bytes("pcapng" if how == "fifo" else "pcap")
    if compression:
        data = COMPRESSORS[compression](data)
    got = read_through_a_pipe(data, tmp_path / "fifo" if how == "fifo" else None)
    assert got == FRAMES


def test_an_empty_pipe_is_no_data(tmp_path):
    fifo = tmp_path / "empty-fifo"
    os.mkfifo(fifo)
    import threading
    closer = threading.Thread(target=lambda: os.close(os.open(fifo, os.O_WRONLY)))
    closer.start()
    assert error_of(fifo) == f"{fifo}: not a pcap or pcapng file (no data)"
    closer.join()


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_large_captures_are_read_in_bounded_memory(tmp_path, compression):
    """A 32 MiB capture (gzip'd: its 32 MiB decompressed) read whole: the reader's Python
    allocations peak at a few chunks, not the file's size."""
    import tracemalloc
    one = classic("<", FRAMES)[24:]
    p = tmp_path / "large.pcap"
    with open(p, "wb") as f:
        f.write(classic("<", []))
        for _ in range((32 << 20) // len(one)):
            f.write(one)
    total = p.stat().st_size
    if compression:
        packed = tmp_path / "large.pcap.gz"
        with open(p, "rb") as src, __import__("gzip").open(packed, "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        p = packed
    tracemalloc.start()
    try:
        frames = 0
        with PcapReader(p) as r:
            for ts, f in r:
                frames += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert frames == (total - 24) // len(one) * len(FRAMES)
    assert peak < 8 << 20, f"peak {peak >> 20} MiB reading {total >> 20} MiB"


# ---------------------------------------------------------------------------
# the shipped captures (tests/data, made by scripts/make_captures.py)


def ones(b: bytes) -> int:
    """The 16-bit one's-complement sum of ``b``: 0xFFFF over data with a valid checksum.
    Folding the carries keeps the sum modulo 0xFFFF, and a non-zero sum never folds to 0."""
    s = sum(struct.unpack(f"!{len(b) // 2}H", b[:len(b) & ~1])) + (b[-1] << 8 if len(b) & 1 else 0)
    return (s - 1) % 0xFFFF + 1 if s else 0


def tcp_of(f: bytes):
    """(checksums_ok, src, sport, dst, dport, flags, seq, payload) or None."""
    et = struct.unpack_from("!H", f, 12)[0]
    off = 14
    if et == 0x0800:
        ihl = (f[off] & 0xF) * 4
        tot = struct.unpack_from("!H", f, off + 2)[0]
        if f[off + 9] != 6:
            return None
        src, dst = f[off + 12:off + 16], f[off + 16:off + 20]
        l4 = f[off + ihl:off + tot]
        ok = ones(f[off:off + ihl]) == 0xFFFF
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(l4))
    elif et == 0x86DD:
        if f[off + 6] != 6:
            return None
        plen = struct.unpack_from("!H", f, off + 4)[0]
        src, dst = f[off + 8:off + 24], f[off + 24:off + 40]
        l4 = f[off + 40:off + 40 + plen]
        ok = True
        pseudo = src + dst + struct.pack("!IxxxB", len(l4), 6)
    else:
        return None
    ok = ok and ones(pseudo + l4) == 0xFFFF
    sport, dport, seq = struct.unpack_from("!HHI", l4)
    return ok, src, sport, dst, dport, l4[13], seq, bytes(l4[(l4[12] >> 4) * 4:])


SHIPPED = sorted(DATA.glob("*.pcap"))
needs_data = pytest.mark.skipif(not SHIPPED, reason="tests/data not generated")


@needs_data
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_capture_reads_and_checksums_are_valid(path):
    with PcapReader(path) as r:
        assert r.linktype == 1
        n_tcp = bad = 0
        for _ts, f in r:
            t = tcp_of(bytes(f))
            if t is not None:
                n_tcp += 1
                bad += not t[0]
    assert n_tcp > 0 and bad == 0


@needs_data
def test_readme_lists_every_capture():
    readme = (DATA / "README.md").read_text()
    listed = set(re.findall(r"^\| `([^`]+\.pcap)` \|", readme, re.M))
    assert listed == {p.name for p in SHIPPED}
    total = sum(p.stat().st_size for p in SHIPPED)
    assert total < 8 * 1024 * 1024


def naive_streams(path, policy):
    """{(src, sport): bytes} with holes as zeros; FIRST or LAST copy of a byte wins."""
    isn, segs = {}, []
    with PcapReader(path) as r:
        for _ts, f in r:
            t = tcp_of(bytes(f))
            if t is None:
                continue
            _ok, src, sport, _dst, _dport, flags, seq, payload = t
            if flags & 0x02:
                isn.setdefault((src, sport), seq)
            elif payload:
                segs.append(((src, sport), seq, payload))
    held = {}                                  # per direction: {stream offset: byte}
    for key, seq, payload in segs:
        stream = held.setdefault(key, {})
        off = (seq - isn[key] - 1) % 2**32
        for i, b in enumerate(payload):
            if policy == "LAST" or off + i not in stream:
                stream[off + i] = b
    return {k: bytes(stream.get(i, 0) for i in range(max(stream) + 1))
            for k, stream in held.items()}


def client_key(path):
    with PcapReader(path) as r:
        for _ts, f in r:
            t = tcp_of(bytes(f))
            if t and t[5] & 0x12 == 0x02:
                return (t[1], t[2])


@needs_data
@pytest.mark.parametrize("policy", ["FIRST", "LAST"])
def test_overlap_sidecar_matches_the_capture(policy):
    exp = json.loads((DATA / "overlap_diff.expected.json").read_text())
    streams = naive_streams(DATA / "overlap_diff.pcap", policy)
    ck = client_key(DATA / "overlap_diff.pcap")
    (sk,) = [k for k in streams if k != ck]
    assert streams[ck] == base64.b64decode(exp[policy]["client_to_server"])
    assert streams[sk] == base64.b64decode(exp[policy]["server_to_client"])
    assert exp["FIRST"]["client_to_server"] != exp["LAST"]["client_to_server"]
    assert exp["FIRST"]["server_to_client"] != exp["LAST"]["server_to_client"]


@needs_data
@pytest.mark.parametrize("name", ["lost", "holes"])
def test_holes_sidecar_matches_the_capture(name):
    exp = json.loads((DATA / f"{name}.expected.json").read_text())
    streams = naive_streams(DATA / f"{name}.pcap", "FIRST")
    ck = client_key(DATA / f"{name}.pcap")
    (sk,) = [k for k in streams if k != ck]
    expected = {"client_to_server": base64.b64decode(exp["client_to_server"]),
                "server_to_client": base64.b64decode(exp["server_to_client"])}
    assert streams[ck] == expected["client_to_server"]
    assert streams[sk] == expected["server_to_client"]
    assert exp["holes"]
    for hole in exp["holes"]:
        data = expected[hole["direction"]]
        assert data[hole["offset"]:hole["offset"] + hole["length"]] == bytes(hole["length"])


@needs_data
@pytest.mark.parametrize("name", ["reorder", "dup", "seqwrap"])
def test_crafted_variants_keep_the_original_streams(name):
    ref = json.loads((DATA / "overlap_diff.expected.json").read_text())["FIRST"]
    exp_c = base64.b64decode(ref["client_to_server"])
    streams = naive_streams(DATA / f"{name}.pcap", "LAST")
    ck = client_key(DATA / f"{name}.pcap")
    (sk,) = [k for k in streams if k != ck]
    assert streams[ck] == exp_c
    base = naive_streams(DATA / "lost.pcap", "FIRST")  # same flow, one hole
    lost = json.loads((DATA / "lost.expected.json").read_text())["holes"][0]
    o, n = lost["offset"], lost["length"]
    s = streams[sk]
    b = base[[k for k in base if k != client_key(DATA / "lost.pcap")][0]]
    assert s[:o] == b[:o] and s[o + n:] == b[o + n:] and len(s) == len(b)


@needs_data
def test_seqwrap_really_wraps():
    with PcapReader(DATA / "seqwrap.pcap") as r:
        seqs = [t[6] for _ts, f in r if (t := tcp_of(bytes(f))) and t[7]]
    assert max(seqs) > 2**32 - 100_000 and min(seqs) < 100_000


@needs_data
def test_midstream_has_no_handshake():
    with PcapReader(DATA / "midstream.pcap") as r:
        flags = [t[5] for _ts, f in r if (t := tcp_of(bytes(f)))]
    assert flags and not any(fl & 0x02 for fl in flags)
