"""engine/split_input.py: the classic pcap a split run's workers map, made from a capture
that is not one (pcapng, compressed, "modified" pcap). Whatever the path (the C loop
_splitscan.pcapng_to_pcap, the decompressor, the reader's frames), the copy read back
gives the frames, times and lengths that the reader gives of the original."""
import bz2
import gzip
import lzma
import os
import struct
import threading

import pytest

from mosxdp.core.compiled import PURE_PYTHON
from mosxdp.engine import split_feed
from mosxdp.engine.split_input import OutsideClassicPcap, prepare, spool
from mosxdp.io.pcap import PcapFormatError, PcapReader

from pcapforms import (_block, as_modified_pcap, as_pcapng, interface, packet, section)
from test_linklayer import ipv4_tcp

DATA = os.path.join(os.path.dirname(__file__), "..", "data")
SOURCE = os.path.join(DATA, "reuse.pcap")
C_LOOP = not PURE_PYTHON and split_feed._pcapng_to_pcap is not None


def frames_of(path):
    """(ts_us, frame bytes, length on the wire when cut else 0) of each frame, and the
    reader's error at the end (its message) or None."""
    out = []
    error = None
    with PcapReader(path) as reader:
        try:
            for ts, frame, _orig in reader.records():
                out.append((ts, bytes(frame), reader.wire_len()))
        except PcapFormatError as exc:
            error = str(exc)
    return out, error


def same_frames(capture, folder, converted):
    made = prepare(str(capture), str(folder))
    assert made.converted == converted and made.name == str(capture)
    assert open(made.path, "rb").read(4) == b"\xd4\xc3\xb2\xa1"     # little-endian us
    frames, error = frames_of(capture)
    copied, copy_error = frames_of(made.path)
    assert copied == frames and frames
    assert copy_error is None
    assert (None if made.error is None else str(made.error)) == error
    return made


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("tsresol, tsoffset", [(6, 0), (9, 0), (3, 0), (9, -7200), (6, 86400),
                                               (0x80 | 20, 0), (0x80 | 30, 5)],
                         ids=["us", "ns", "ms", "ns-offset-back", "us-offset", "2^-20",
                              "2^-30-offset"])
def test_pcapng_written_as_the_reader_reads_it(tmp_path, order, tsresol, tsoffset):
    capture = as_pcapng(SOURCE, tmp_path / "in.pcapng", order, tsresol, tsoffset, sections=2)
    same_frames(capture, tmp_path, "pcapng" if C_LOOP else "reader")


def test_a_cooked_pcapng_keeps_its_link_type_for_the_workers(tmp_path):
    capture = as_pcapng(SOURCE, tmp_path / "in.pcapng", cooked=(0, 1))
    made = same_frames(capture, tmp_path, "pcapng" if C_LOOP else "reader")
    linktype = struct.unpack_from("<I", open(made.path, "rb").read(24), 20)[0]
    assert linktype == (113 if C_LOOP else 1)


@pytest.mark.parametrize("name, make", [
    ("two link types", lambda src, dst: as_pcapng(src, dst, cooked=(1,))),
    ("modified pcap", as_modified_pcap),
])
def test_what_the_c_loop_declines_is_written_from_the_reader(tmp_path, name, make):
    same_frames(make(SOURCE, tmp_path / "in"), tmp_path, "reader")


def _pcapng_with(tmp_path, *blocks):
    path = tmp_path / "in.pcapng"
    path.write_bytes(section("<") + interface("<") + b"".join(blocks))
    return path


def test_simple_packet_blocks_and_a_truncated_end_go_through_the_reader(tmp_path):
    frame = ipv4_tcp()
    simple = _block("<", 3, struct.pack("<I", len(frame)) + frame)
    capture = _pcapng_with(tmp_path, packet("<", 0, 1_000_000, len(frame), len(frame), frame),
                           simple)
    same_frames(capture, tmp_path, "reader")
    whole = capture.read_bytes()
    capture.write_bytes(whole + packet("<", 0, 2_000_000, len(frame), len(frame), frame)[:30])
    made = same_frames(capture, tmp_path, "reader")
    assert "truncated at byte offset" in str(made.error) and "2 packets read" in str(made.error)


def test_a_frame_longer_than_its_length_on_the_wire_is_written_whole(tmp_path):
    frame = ipv4_tcp(b"x" * 40)
    capture = _pcapng_with(tmp_path, packet("<", 0, 5, len(frame), 20, frame))
    made = same_frames(capture, tmp_path, "pcapng" if C_LOOP else "reader")
    caplen, origlen = struct.unpack_from("<II", open(made.path, "rb").read(), 24 + 8)
    assert caplen == origlen == len(frame)        # as PcapWriter writes it


def test_a_time_before_1970_is_refused(tmp_path):
    frame = ipv4_tcp()
    path = tmp_path / "in.pcapng"
    path.write_bytes(section("<") + interface("<", tsoffset=-10)
                     + packet("<", 0, 1_000_000, len(frame), len(frame), frame))
    with pytest.raises(OutsideClassicPcap, match="frame 1 has a time outside 1970-2106"):
        prepare(str(path), str(tmp_path))


@pytest.mark.parametrize("kind, compress", [("gzip", gzip.compress), ("bzip2", bz2.compress),
                                            ("xz", lzma.compress)])
def test_a_compressed_capture_is_decompressed(tmp_path, kind, compress):
    classic = tmp_path / "in.pcap.z"
    classic.write_bytes(compress(open(SOURCE, "rb").read()))
    made = same_frames(classic, tmp_path, kind)
    assert made.path == str(tmp_path / "decompressed")
    ng = as_pcapng(SOURCE, tmp_path / "in.pcapng", ">", 9)
    packed = tmp_path / "in.pcapng.z"
    packed.write_bytes(compress(ng.read_bytes()))
    made = same_frames(packed, tmp_path, f"{kind} pcapng" if C_LOOP else "reader")
    assert not os.path.exists(tmp_path / "decompressed")     # removed once copied


def test_a_cut_compressed_stream_gives_the_readers_error(tmp_path):
    data = gzip.compress(open(SOURCE, "rb").read())
    capture = tmp_path / "in.pcap.gz"
    capture.write_bytes(data[:len(data) // 2])
    made = same_frames(capture, tmp_path, "reader")
    assert "gzip" in str(made.error) or "cut short" in str(made.error)


def test_a_classic_pcap_is_mapped_as_it_is(tmp_path):
    made = prepare(SOURCE, str(tmp_path))
    assert made.path == SOURCE and made.converted is None and made.error is None
    assert os.listdir(tmp_path) == []


def test_a_folder_that_cannot_take_the_copy_is_named(tmp_path):
    capture = as_pcapng(SOURCE, tmp_path / "in.pcapng")
    missing = tmp_path / "gone"
    with pytest.raises(OSError, match=f"cannot make the capture's classic pcap copy in {missing}"):
        prepare(str(capture), str(missing))


def _fifo_fed(tmp_path, data):
    """A named pipe, and the thread that writes ``data`` into it in parts."""
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)

    def feed():
        with open(fifo, "wb") as w:
            for at in range(0, len(data), 4096):
                w.write(data[at:at + 4096])

    thread = threading.Thread(target=feed)
    thread.start()
    return str(fifo), thread


@pytest.mark.parametrize("kind", ["pcap", "gzip pcapng"])
def test_a_pipe_is_read_to_its_end_into_the_folder(tmp_path, kind):
    """A named pipe's bytes, whatever their form, copied as they come; prepare() then
    reads the copy as it reads a file, under the pipe's name."""
    original = open(SOURCE, "rb").read()
    if kind != "pcap":
        original = gzip.compress(as_pcapng(SOURCE, tmp_path / "in.pcapng").read_bytes())
    fifo, thread = _fifo_fed(tmp_path, original)
    folder = tmp_path / "spool"
    folder.mkdir()
    path, name, spooled = spool(fifo, str(folder))
    thread.join()
    assert spooled and name == fifo and path == str(folder / "input")
    assert open(path, "rb").read() == original
    made = prepare(path, str(folder), name=name)
    assert made.name == fifo and made.converted == (None if kind == "pcap" else
                                                    "gzip pcapng" if C_LOOP else "reader")
    assert frames_of(made.path) == frames_of(SOURCE)


def test_a_regular_file_is_not_spooled(tmp_path):
    assert spool(SOURCE, str(tmp_path)) == (SOURCE, SOURCE, False)
    assert os.listdir(tmp_path) == []


def test_a_pipe_without_data_says_what_the_reader_says(tmp_path):
    fifo, thread = _fifo_fed(tmp_path, b"")
    with pytest.raises(PcapFormatError) as spooled:
        spool(fifo, str(tmp_path))
    thread.join()
    read, write = os.pipe()
    os.close(write)
    with pytest.raises(PcapFormatError) as one_worker:
        PcapReader(f"/proc/self/fd/{read}", name=fifo)
    os.close(read)
    assert str(spooled.value) == str(one_worker.value) == (
        f"{fifo}: not a pcap or pcapng file (no data)")


def test_a_folder_that_cannot_take_the_spooled_input_is_named(tmp_path):
    fifo, thread = _fifo_fed(tmp_path, open(SOURCE, "rb").read())
    missing = tmp_path / "gone"
    with pytest.raises(OSError, match=f"cannot copy the input \\({fifo}\\) into {missing}"):
        spool(fifo, str(missing))
    with open(fifo, "rb") as r:       # the writer's end
        r.read()
    thread.join()


def test_the_early_pass_writes_the_copy_of_a_pcapng(tmp_path):
    """With the C loops, begin_plan()'s child writes a pcapng's copy into an unnamed file
    and makes the plan of it while the command line imports: prepare() takes the copy,
    plan_split() the plan, both only for the same file; the copy is gone once closed."""
    capture = as_pcapng(SOURCE, tmp_path / "in.pcapng", ">", 9, sections=2)

    def run(folder):
        made = prepare(str(capture), str(folder))
        scan = split_feed.Scan(made.path, str(capture))
        try:
            plan = split_feed.plan_split(scan, 2)
            return made, plan, frames_of(made.path), (plan.table, list(plan.owners()))
        finally:
            scan.close()
            made.close()

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    split_feed.begin_plan(str(capture), 2)
    made, plan, frames, owners = run(tmp_path / "a")
    assert made.converted == ("pcapng" if C_LOOP else "reader") and plan.early is C_LOOP
    assert made.path.startswith("/proc/self/fd/") is C_LOOP
    assert frames == frames_of(capture) and split_feed._early is None
    if C_LOOP:
        assert not os.path.exists(made.path)        # the unnamed copy: closed, gone
        assert os.listdir(tmp_path / "a") == []     # nothing written in the spool folder
    alone, plan_alone, frames_alone, owners_alone = run(tmp_path / "b")
    assert not plan_alone.early and (frames_alone, owners_alone) == (frames, owners)

    # Another capture at that name meanwhile: the run makes its own copy of it.
    split_feed.begin_plan(str(capture), 2)
    if C_LOOP:
        os.waitid(os.P_PID, split_feed._early.pid, os.WEXITED | os.WNOWAIT)
    os.unlink(capture)
    as_pcapng(SOURCE, capture, "<", 6)
    (tmp_path / "c").mkdir()
    made, plan, frames, _ = run(tmp_path / "c")
    assert not plan.early and not made.path.startswith("/proc/self/fd/")
    assert frames == frames_of(capture)

    # A pcapng the C loop declines (a simple packet block): the child makes nothing, the
    # run writes the reader's frames.
    frame = ipv4_tcp()
    capture.write_bytes(section("<") + interface("<")
                        + _block("<", 3, struct.pack("<I", len(frame)) + frame))
    split_feed.begin_plan(str(capture), 2)
    (tmp_path / "d").mkdir()
    made, plan, frames, _ = run(tmp_path / "d")
    assert made.converted == "reader" and not plan.early and frames == frames_of(capture)
