"""Output files (mosxdp/io/outputs.py): links never followed, files never truncated behind
the user's back, bounded buffering, and failures counted with what was kept.

Write failures are real ones from the kernel: RLIMIT_FSIZE (a write past the limit is cut
short, the next one fails with EFBIG; Python ignores SIGXFSZ) in a forked child, so the
limit never touches the test process.
"""
import errno
import os
import resource
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from forked import in_child

from mosxdp.io import outputs as O

ROOT = os.geteuid() == 0


def with_size_limit(size, body):
    """body(Outputs()) in a child process whose files cannot grow past ``size`` bytes (a
    write beyond fails with EFBIG): its result."""
    def run():
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        return body(O.Outputs())
    return in_child(run)


# ------------------------------------------------------------------ opening
def test_a_link_at_the_output_path_is_refused_not_followed(tmp_path):
    outputs = O.Outputs()
    target = tmp_path / "elsewhere" / "target"
    target.parent.mkdir()
    link = tmp_path / "out.json"
    link.symlink_to(target)                        # dangling
    with pytest.raises(OSError) as info:
        outputs.open_file(link)
    assert info.value.errno == errno.ELOOP and info.value.filename == str(link)
    assert "symbolic link, not followed" in info.value.strerror
    assert not target.exists()
    target.write_text("keep me")                   # and to an existing file
    with pytest.raises(OSError, match="symbolic link"):
        outputs.open_file(link)
    assert target.read_text() == "keep me"


def test_a_hard_linked_file_is_not_truncated(tmp_path):
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    out = tmp_path / "out.json"
    os.link(precious, out)
    with pytest.raises(OSError) as info:
        O.Outputs().open_file(out)
    assert info.value.errno == errno.EMLINK and info.value.filename == str(out)
    assert "2 hard links, not truncated" in info.value.strerror
    assert precious.read_text() == "keep me"


def test_a_plain_file_is_replaced_and_a_missing_directory_named(tmp_path):
    out = tmp_path / "out.json"
    out.write_text("an older run's lines\n" * 10)
    f = O.Outputs().open_file(out)
    assert out.read_bytes() == b""
    f.write("new\n")
    f.close()
    assert out.read_text() == "new\n"
    missing = tmp_path / "no" / "such" / "out.json"
    with pytest.raises(OSError) as info:
        O.Outputs().open_file(missing)
    assert info.value.filename == str(missing) and info.value.errno == errno.ENOENT


# ------------------------------------------------------------------ buffering
def test_records_are_buffered_bounded_and_flushed_by_tick(tmp_path):
    outputs = O.Outputs()
    path = tmp_path / "out.log"
    f = outputs.open_file(path)
    f.write("one\n")
    f.write(b"two\n")
    assert path.read_bytes() == b""                # buffered ...
    outputs.tick()                                 # ... until the first tick
    assert path.read_bytes() == b"one\ntwo\n"
    f.write("three\n")
    outputs.tick()                                 # within FLUSH_SECONDS of the last: kept
    assert path.read_bytes() == b"one\ntwo\n"
    big = "x" * (O.FLUSH_BYTES - 1) + "\n"
    f.write(big)                                   # the buffer reached FLUSH_BYTES
    assert path.read_bytes() == b"one\ntwo\nthree\n" + big.encode()
    f.write("tail\n")
    f.close()
    assert path.read_bytes().endswith(b"\ntail\n")
    assert (f.written, f.lost, f.error) == (path.stat().st_size, 0, None)
    assert outputs.failure_lines() == []


@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_reserved_pages_are_filled_by_copy_range_and_the_rest_given_back(tmp_path, where):
    """reserve() allocates ahead with the file's size unchanged (a reader sees only what was
    written), copy_range() fills it from another file, and close() gives back what was
    reserved and not written: the file ends as big as what it holds, on a disk (ext4) and
    in memory (tmpfs)."""
    base = tmp_path if where == "tmp" else Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        source = base / "in.bin"
        source.write_bytes(bytes(range(256)) * 4096)           # 1 MiB
        outputs = O.Outputs()
        path = base / "out.bin"
        f = outputs.open_file(path)
        f.write(b"head")
        f.reserve(8 << 20)
        assert path.stat().st_size == 0                          # nothing visible yet
        assert path.stat().st_blocks * 512 >= 8 << 20            # but allocated
        with open(source, "rb") as src:
            f.copy_range(src.fileno(), 4096, 65536)
        f.close()
        data = path.read_bytes()
        assert data == b"head" + (bytes(range(256)) * 4096)[4096:4096 + 65536]
        assert (f.written, f.lost, f.error) == (len(data), 0, None)
        assert path.stat().st_blocks * 512 < 1 << 20             # the rest given back
    finally:
        if where == "shm":
            shutil.rmtree(base)


# ------------------------------------------------------------------ failures
def test_a_failed_write_keeps_whole_records_and_the_file_gets_no_more(tmp_path):
    path = tmp_path / "out.log"

    def run(outputs):
        f = outputs.open_file(path)
        for i in range(5):
            f.write(f"{i:03d}" + "r" * 296 + "\n")   # 300-byte records
        f.flush()                                  # 1000 bytes go out, then EFBIG
        after_failure = path.read_bytes()
        f.write("s" * 49 + "\n")                   # would fit under the limit: the file
        f.write("t" * 99 + "\n")                   # stays the start of the output
        f.close()
        return {"after_failure": after_failure.decode(), "file": path.read_text(),
                "written": f.written, "lost": f.lost, "errno": f.error.errno,
                "lines": outputs.failure_lines()}

    out = with_size_limit(1000, run)
    lines = [f"{i:03d}" + "r" * 296 for i in range(3)]
    assert out["after_failure"] == "".join(line + "\n" for line in lines)   # cut to 900
    assert out["file"] == out["after_failure"]
    assert (out["written"], out["lost"], out["errno"]) == (900, 2 * 300 + 50 + 100, errno.EFBIG)
    assert out["lines"] == [f"cannot write {path}: File too large (900 bytes written, 750 not)"]


def test_pcap_records_are_never_cut(tmp_path):
    from mosxdp.io.pcap import PcapReader, PcapWriter
    path = tmp_path / "out.pcap"
    frames = [bytes([i]) * (100 + i) for i in range(20)]

    def run(outputs):
        out = outputs.open_file(path, binary=True)
        with PcapWriter(path, out=out) as writer:
            for i, frame in enumerate(frames):
                writer.write(1_000_000 + i, frame)
        return {"failed": [item.path for item in outputs.failed()], "errno": out.error.errno}

    assert with_size_limit(1000, run) == {"failed": [str(path)], "errno": errno.EFBIG}
    with PcapReader(str(path)) as reader:
        got = [bytes(frame) for _, frame in reader]
    assert 0 < len(got) < len(frames) and got == frames[:len(got)]
    assert path.stat().st_size <= 1000


def test_a_device_that_failed_is_not_written_again():
    outputs = O.Outputs()
    f = outputs.open_file("/dev/full")
    f.write("a line\n")
    f.flush()
    f.write("another\n")
    f.close()
    assert f.error.errno == errno.ENOSPC and (f.written, f.lost) == (0, 15)
    assert outputs.failure_lines() == [
        "cannot write /dev/full: No space left on device (0 bytes written, 15 not)"]


# ------------------------------------------------------------------ directories
def test_a_new_file_never_opens_a_taken_name(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    outdir = tmp_path / "out"
    d = O.Outputs().open_dir(outdir)               # made, checked
    (outdir / "dangling").symlink_to(outside / "created")
    (outdir / "existing").write_bytes(b"older")
    for name in ("dangling", "existing"):
        assert d.exists(name)
        with pytest.raises(FileExistsError):
            d.create(name)
    assert not (outside / "created").exists() and (outdir / "existing").read_bytes() == b"older"
    assert not d.exists("fresh")
    f = d.create("fresh")
    assert d.exists("fresh")                       # asked for: taken, made or not yet
    with pytest.raises(FileExistsError):
        d.create("fresh")
    buf = bytearray(b"world")
    assert f.write_at(memoryview(buf), 6)
    buf[:] = b"WORLD"                              # the bytes were taken at the call
    assert f.write_at(b"hello ", 0)
    f.close()
    d.finish()                                     # the writer thread has done it all
    assert (outdir / "fresh").read_bytes() == b"hello world"
    assert stat.S_IMODE((outdir / "fresh").stat().st_mode) == 0o644
    assert d.error is None and sorted(os.listdir(outdir)) == ["dangling", "existing", "fresh"]


def test_a_failed_file_is_counted_with_its_name(tmp_path):
    outdir = tmp_path / "out"

    def run(outputs):
        d = outputs.open_dir(outdir)
        f = d.create("a")
        queued = f.write_at(b"x" * 150, 0)        # fails in the writer thread
        d.finish()
        later = f.write_at(b"y" * 50, 150)        # known failed: counted, not written
        return {"queued": queued, "failed": f.failed, "later": later,
                "size": (outdir / "a").stat().st_size, "lines": outputs.failure_lines()}

    out = with_size_limit(100, run)
    assert out["queued"] and out["failed"] and not out["later"] and out["size"] == 100
    assert out["lines"] == [f"cannot write {outdir / 'a'}: File too large "
                            "(1 file(s) incomplete, 100 bytes not written)"]


def test_an_outdir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(OSError, match="exists and is not a directory") as info:
        O.Outputs().open_dir(path)
    assert info.value.filename == str(path)


@pytest.mark.skipif(not ROOT, reason="root writes anywhere only with CAP_DAC_OVERRIDE")
def test_an_outdir_the_dropped_monitor_cannot_write_is_found_before(tmp_path):
    """A directory of another user: root writes there only through CAP_DAC_OVERRIDE,
    which the live monitor drops after set-up; the check, made before it, says so (and
    without the drop the same directory is fine)."""
    outdir = tmp_path / "users"
    outdir.mkdir()
    os.chown(outdir, 65534, 65534)
    outdir.chmod(0o755)
    O.Outputs().open_dir(outdir).close()            # with every privilege: writable
    with pytest.raises(OSError) as info:
        O.Outputs().open_dir(outdir, after_drop=True)
    assert info.value.errno == errno.EACCES and info.value.filename == str(outdir)
    assert "once it dropped its privileges" in info.value.strerror
    assert "--keep-privileges" in info.value.strerror
    assert os.listdir(outdir) == []                 # the probes left nothing
    outdir.chmod(0o777)                             # its permissions let root in
    O.Outputs().open_dir(outdir, after_drop=True).close()
    assert os.listdir(outdir) == []


# ------------------------------------------------------------------ the API
@pytest.mark.skipif(os.cpu_count() < 2, reason="a second context needs a second CPU")
def test_contexts_of_one_run_share_its_outputs(tmp_path):
    """Two contexts joined in one run: each app's file gets its flows' lines, --write gets
    every frame, and a failed output of either is the run's (one Outputs per runtime)."""
    import argparse

    from mosxdp import api
    from mosxdp.apps import connlog
    pcap = os.path.join(os.path.dirname(__file__), "..", "data", "concurrent.pcap")
    api.mtcp_destroy()
    api.mtcp_init(None, pcap=pcap, write=str(tmp_path / "out.pcap"))
    try:
        contexts = [api.mtcp_create_context(cpu) for cpu in (0, 1)]
        assert contexts[0].outputs is contexts[1].outputs
        apps = [connlog.setup(mctx, argparse.Namespace(output=str(tmp_path / f"conn{n}.json"),
                                                       filter=None, tcp_only=True))
                for n, mctx in enumerate(contexts)]
        full = api.mosx_open_output(contexts[1], "/dev/full")
        full.write("a line\n")
        assert api.mtcp_app_join(contexts[0]) == 0
        for app in apps:
            connlog.teardown(app)
        outputs = contexts[0].outputs
        outputs.close()
        assert outputs.failure_lines() == [
            "cannot write /dev/full: No space left on device (0 bytes written, 7 not)"]
    finally:
        api.mtcp_destroy()
    lines = [(tmp_path / f"conn{n}.json").read_text().splitlines() for n in (0, 1)]
    assert all(lines) and len(lines[0]) + len(lines[1]) == 8
    with open(pcap, "rb") as f:
        assert (tmp_path / "out.pcap").read_bytes() == f.read()   # every frame, once


# ------------------------------------------------------------------ report lines
def test_the_report_output_writes_to_standard_error_at_once(capsys):
    outputs = O.Outputs()
    report = outputs.open_stderr()
    report.write("app: 3 hits\n")
    assert capsys.readouterr().err == "app: 3 hits\n"
    assert report.kind == "stderr" and report.path == "<stderr>"
    spooled = []
    report.redirect(spooled.append)          # a worker of a split run
    report.write("app: 4 hits\n")
    assert spooled == [b"app: 4 hits\n"] and capsys.readouterr().err == ""


def test_sum_counts_makes_one_line_of_lines_that_differ_in_their_counts():
    from mosxdp.api import mosx_sum_counts
    assert mosx_sum_counts([b"scrub: 3 hits, 10 bytes in 2 frames\n",
                            b"scrub: 4 hits, 0 bytes in 5 frames\n",
                            b"scrub: 0 hits, 7 bytes in 0 frames\n"]) == [
        b"scrub: 7 hits, 17 bytes in 7 frames\n"]
    other = [b"a: 3 of x\n", b"a: 4 of y\n"]
    assert mosx_sum_counts(other) == other
    assert mosx_sum_counts([b"no counts\n", b"no counts\n"]) == [b"no counts\n"]


def test_flowdump_combines_its_lines_of_lost_bytes():
    from mosxdp.apps.flowdump import combine_reports, report_line
    holes, both = report_line(5, 0), report_line(2, 3)
    assert report_line(0, 0) is None and "5 stream bytes" in holes and "3 overwritten" in both
    assert combine_reports([(holes + "\n").encode(), (both + "\n").encode()]) == [
        (report_line(7, 3) + "\n").encode()]


def test_a_closed_standard_output_or_error(monkeypatch):
    """A process begun with its descriptor closed (sys.stdout None): '-' is refused at
    open with one line; report lines go nowhere, as a print to it would."""
    outputs = O.Outputs()
    monkeypatch.setattr("sys.stdout", None)
    with pytest.raises(OSError) as exc:
        outputs.open_file("-")
    assert exc.value.errno == errno.EBADF and "the process has no stdout" in str(exc.value)
    monkeypatch.setattr("sys.stderr", None)
    report = outputs.open_stderr()
    report.write("app: 1 hit\n")
    report.flush()
    assert report.error is None
