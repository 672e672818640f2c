"""Outputs of `mosxdp run` offline: what a full disk, an unwritable directory, a device
that refuses writes, and links planted where files go do to the run and its files.

* A write that fails ends the run with exit status 3 and one line naming the file and
  the reason, after the rest was written: what fitted is in the files (streams as
  prefixes of the full ones, logs and pcaps as whole lines and records), other outputs
  are complete.
* An output directory that cannot take files is refused at start (exit 2, one line),
  before any other output is touched.
* A link in the output directory is never followed (flowdump takes the next suffix), and
  a link or a hard-linked file at a log's path is refused, the file it points at untouched.

Full and read-only disks are small tmpfs mounts (root; with MOSXDP_REQUIRE_PRIVILEGED=1 a
missing root fails instead of skipping, tests/conftest.py).
"""
import json
import os
import subprocess

import pytest

from integ_helpers import DATA, connlog, flowdump, mosxdp_command, read_pcap, read_streams, \
    run_mosxdp, tmpdir

HTTP = DATA / "http_sizes.pcap"
REUSE = DATA / "reuse.pcap"
PAGE = os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def tmpfs():
    """mount(size, ro=False) -> a fresh tmpfs of that size; unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def mount(size, ro=False):
        where = tmpdir("tmpfs")
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", where],
                       check=True, timeout=30)
        mounted.append(where)
        if ro:
            (where / "streams").mkdir()
            subprocess.run(["mount", "-o", "remount,ro", where], check=True, timeout=30)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", where], check=False, timeout=30)


def one_error_line(proc, *needles, code):
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mosxdp: error: "), proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


# ---------------------------------------------------------------- a full disk
def test_flowdump_on_a_full_disk_keeps_what_fits(tmpfs):
    full = flowdump(HTTP).result()
    outdir = tmpfs("64k") / "streams"
    proc = run_mosxdp("run", "flowdump", "--pcap", HTTP, "--outdir", outdir)
    one_error_line(proc, f"cannot write {outdir}/", "No space left on device",
                   "file(s) incomplete", code=3)
    got = read_streams(outdir)
    assert set(got) == set(full)                  # every file was made ...
    for name, data in got.items():
        assert full[name].startswith(data), name  # ... and holds the start of its stream
    complete = [name for name in got if got[name] == full[name]]
    cut = [name for name in got if got[name] != full[name]]
    assert complete and cut, {name: len(data) for name, data in got.items()}
    assert sum(map(len, got.values())) > 40 * 1024    # the disk's 64 KiB, less the pages
                                                      # of the files that ended in them


def merged_capture():
    """http_sizes.pcap and concurrent.pcap in one file: 12 TCP flows and 3 ICMPv6 flows
    (the captures' neighbour discovery and MLD), a log over a page."""
    path = tmpdir("merged") / "merged.pcap"
    subprocess.run(["mergecap", "-F", "pcap", "-w", path, HTTP, DATA / "concurrent.pcap"],
                   check=True, timeout=60)
    return path


def test_connlog_on_a_full_disk_keeps_whole_lines(tmpfs):
    pcap = merged_capture()
    reference = tmpdir("connlog-ref") / "conn.json"
    assert run_mosxdp("run", "connlog", "--pcap", pcap, "--output", reference).returncode == 0
    lines = reference.read_text().splitlines(keepends=True)
    assert len("".join(lines)) > PAGE and len(lines) == 15
    disk = tmpfs("64k")
    (disk / "pad").write_bytes(b"\0" * (64 * 1024 - PAGE))
    free = os.statvfs(disk)
    assert free.f_bavail * free.f_frsize == PAGE    # room for one page of the log
    out = disk / "conn.json"
    proc = run_mosxdp("run", "connlog", "--pcap", pcap, "--output", out)
    line = one_error_line(proc, f"cannot write {out}: No space left on device", code=3)
    text = out.read_text()
    kept = text.splitlines(keepends=True)
    assert 0 < len(kept) < len(lines) and kept == lines[:len(kept)]   # whole lines, in order
    assert line.endswith(f"({len(text)} bytes written, "
                         f"{len(''.join(lines)) - len(text)} not)")


def test_write_on_a_full_disk_keeps_whole_records_and_the_log(tmpfs):
    out = tmpfs("64k") / "out.pcap"
    log = tmpdir("log") / "conn.json"
    proc = run_mosxdp("run", "connlog", "--pcap", HTTP, "--output", log, "--write", out)
    one_error_line(proc, f"cannot write {out}: No space left on device", code=3)
    _, written = read_pcap(out)                     # asserts no cut record at the end
    _, frames = read_pcap(HTTP)
    assert 0 < len(written) < len(frames) and written == frames[:len(written)]
    # the run went on to the end: the log is the whole one
    assert [json.loads(line) for line in log.read_text().splitlines()] == \
        connlog(HTTP).result()


def test_a_split_runs_write_on_a_full_disk_keeps_whole_records(tmpfs):
    """Two workers: the parent copies the runs of frames forwarded unchanged with sendfile;
    the run that does not fit is cut back to the records before it."""
    out = tmpfs("256k") / "out.pcap"
    proc = run_mosxdp("run", "flowdump", "--pcap", HTTP, "--outdir", tmpdir("flows"),
                      "--write", out, "--workers", 2)
    one_error_line(proc, f"cannot write {out}: No space left on device", code=3)
    _, written = read_pcap(out)                     # asserts no cut record at the end
    _, frames = read_pcap(HTTP)
    assert 0 < len(written) < len(frames) and written == frames[:len(written)]


def test_connlog_to_a_device_that_refuses_writes():
    with open("/dev/full", "w") as full:
        proc = subprocess.run(mosxdp_command() + ["run", "connlog", "--pcap", str(HTTP)],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    one_error_line(proc, "cannot write <stdout>: No space left on device", code=3)
    proc = run_mosxdp("run", "connlog", "--pcap", HTTP, "--output", "/dev/full")
    one_error_line(proc, "cannot write /dev/full: No space left on device", code=3)


# ---------------------------------------------------- an unwritable directory
def test_an_unwritable_outdir_is_refused_at_start(tmpfs):
    outdir = tmpfs("64k", ro=True) / "streams"
    other = tmpdir("other") / "out.pcap"
    proc = run_mosxdp("run", "flowdump", "--pcap", HTTP, "--outdir", outdir, "--write", other)
    one_error_line(proc, f"flowdump: {outdir}: cannot create files in it "
                         "(Read-only file system)", code=2)
    assert not other.exists()                       # found before the run began


# ------------------------------------------------------------- planted links
def test_a_dangling_link_in_the_outdir_is_not_followed():
    """reuse.pcap: one 4-tuple, three connections (files X, Xc1, Xc2 each way). A link
    named X pointing outside makes the connections take c1, c2, c3; nothing is made
    outside and the link stays as it was."""
    clean = flowdump(REUSE).result()
    first = min(clean, key=len)                     # a name without a suffix
    outdir, outside = tmpdir("streams"), tmpdir("outside")
    (outdir / first).symlink_to(outside / "planted")
    proc = run_mosxdp("run", "flowdump", "--pcap", REUSE, "--outdir", outdir)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert os.listdir(outside) == []
    assert os.readlink(outdir / first) == str(outside / "planted")

    def shifted(name):                              # X -> Xc1, Xc1 -> Xc2 ...
        stem, sep, count = name.rpartition("c")
        return f"{stem}c{int(count) + 1}" if sep else name + "c1"
    assert read_streams(outdir) == {shifted(name): data for name, data in clean.items()}


OUTPUT_OPTIONS = [
    ("connlog", "--output", []),
    ("connlog", "--stats-json", []),
    ("connlog", "--write", []),
    ("midstat", "--output", []),
    ("simple_firewall", "--stats-output", ["--rules", os.devnull, "--output", os.devnull]),
]


@pytest.mark.parametrize("app,option,extra", OUTPUT_OPTIONS)
def test_a_link_at_an_output_path_is_refused(app, option, extra):
    where, outside = tmpdir("out"), tmpdir("outside")
    link = where / "out"
    link.symlink_to(outside / "planted")
    args = ["run", app, "--pcap", REUSE, option, link, *extra]
    if app == "connlog" and option != "--output":
        args += ["--output", os.devnull]
    proc = run_mosxdp(*args)
    one_error_line(proc, link, "is a symbolic link, not followed",
                   code=1 if option == "--write" else 2)
    assert os.listdir(outside) == [] and os.readlink(link) == str(outside / "planted")
    (outside / "planted").write_text("keep me")     # a link to a file: the same
    proc = run_mosxdp(*args)
    assert proc.returncode != 0 and (outside / "planted").read_text() == "keep me"


def test_a_hard_linked_log_is_not_truncated():
    where = tmpdir("out")
    precious = where / "precious"
    precious.write_text("keep me")
    os.link(precious, where / "conn.json")
    proc = run_mosxdp("run", "connlog", "--pcap", REUSE, "--output", where / "conn.json")
    one_error_line(proc, where / "conn.json", "has 2 hard links, not truncated", code=2)
    assert precious.read_text() == "keep me"
