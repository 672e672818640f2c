"""Bad input to `mosxdp run` never shows a traceback.

Each bad input to `mosxdp run` gives exactly one line on stderr, starting
with "mosxdp: error:", naming what is wrong, and a non-zero exit; never a
Python traceback.  A malformed frame inside a valid pcap is not an error:
it is counted, passed on unchanged (it is in --write's output) and the run
goes on.  Argument syntax errors too are one line (argparse's message, no
usage block, exit 2).
"""
import argparse
import json
import os
import shutil
import subprocess

import pytest

from integ_helpers import APPS, DATA, mosxdp_command, read_pcap, read_streams, run_mosxdp, \
    tcpflow, tmpdir, write_pcap

REUSE = DATA / "reuse.pcap"


def assert_one_line_error(proc, *needles, code=None):
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert proc.returncode != 0
    if code is not None:
        assert proc.returncode == code
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got: {proc.stderr!r}"
    assert lines[0].startswith("mosxdp: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def flowdump_on(path, *extra):
    outdir = tmpdir("streams")
    return run_mosxdp("run", "flowdump", "--pcap", path, "--outdir", outdir, *extra), outdir


# ---------------------------------------------------------------- input files
def test_a_link_type_not_read_classic():
    _, records = read_pcap(REUSE)
    path = tmpdir("wifi") / "wifi.pcap"
    write_pcap(path, records, linktype=127)          # LINKTYPE_IEEE802_11_RADIOTAP
    proc, outdir = flowdump_on(path)
    assert_one_line_error(proc, str(path), "link type 127 (IEEE802_11_RADIOTAP) is not read "
                          "here", "LINUX_SLL2 (276)")
    assert read_streams(outdir) == {}


def test_a_link_type_not_read_pcapng():
    path = tmpdir("wifi") / "wifi.pcapng"
    subprocess.run(["editcap", "-F", "pcapng", "-T", "ieee-802-11", str(REUSE), str(path)],
                   check=True, capture_output=True, timeout=60)
    proc, _ = flowdump_on(path)
    assert_one_line_error(proc, str(path), "link type 105", "is not read here")


def test_truncated_pcap_keeps_complete_packets():
    """A file cut inside a record: every complete packet before the cut is
    processed (flows end as at end of input, files written as tcpflow writes
    them from the same file; --write holds those packets), then one line
    names the cut and the exit status is non-zero."""
    data = (DATA / "http_sizes.pcap").read_bytes()
    workdir = tmpdir("truncated")
    path = workdir / "cut.pcap"
    path.write_bytes(data[:600001])
    out = workdir / "out.pcap"
    proc, outdir = flowdump_on(path, "--write", out)
    assert_one_line_error(proc, str(path), "truncated", "packets read", code=1)
    ours = read_streams(outdir)
    assert ours and ours == tcpflow(path).result()
    _, full = read_pcap(DATA / "http_sizes.pcap")
    _, written = read_pcap(out)
    complete = int(proc.stderr.split(" packets read")[0].rsplit(" ", 1)[1])
    assert 0 < complete < len(full)
    assert written == full[:complete]
    # connlog logs the flows, the cut one with end_reason eof, then reports the cut.
    log = workdir / "conn.json"
    proc = run_mosxdp("run", "connlog", "--pcap", path, "--output", log)
    assert_one_line_error(proc, "truncated")
    reasons = [json.loads(line)["end_reason"] for line in log.read_text().splitlines()]
    assert reasons == ["fin"] * 3 + ["eof"]


@pytest.mark.parametrize("cut", [10, 24 + 10])
def test_truncated_headers(cut):
    path = tmpdir("cut") / "cut.pcap"
    path.write_bytes(REUSE.read_bytes()[:cut])
    proc, _ = flowdump_on(path)
    assert_one_line_error(proc, "truncated")


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, bytes(range(256)) * 20,
                                     b"this is not a capture\n" * 50])
def test_garbage_file(content):
    path = tmpdir("garbage") / "garbage.pcap"
    path.write_bytes(content)
    proc, _ = flowdump_on(path)
    assert_one_line_error(proc, str(path))


def test_missing_file_and_directory():
    missing = tmpdir("missing") / "nothing.pcap"
    proc, _ = flowdump_on(missing)
    assert_one_line_error(proc, str(missing), "No such file")
    directory = tmpdir("dir")
    proc, _ = flowdump_on(directory)
    assert_one_line_error(proc, str(directory))


def test_write_onto_the_input_is_refused():
    path = tmpdir("same") / "in.pcap"
    shutil.copy(REUSE, path)
    proc, _ = flowdump_on(path, "--write", path)
    assert_one_line_error(proc, "--write", "input")
    assert path.read_bytes() == REUSE.read_bytes()


def test_unwritable_outputs():
    proc, _ = flowdump_on(REUSE, "--write", "/nonexistent/dir/out.pcap")
    assert_one_line_error(proc, "/nonexistent/dir/out.pcap")
    proc = run_mosxdp("run", "flowdump", "--pcap", REUSE, "--outdir", "/proc/no/such/dir")
    assert_one_line_error(proc, "/proc/no")
    proc = run_mosxdp("run", "connlog", "--pcap", REUSE, "--output", "/nonexistent/dir/c.json")
    assert_one_line_error(proc, "/nonexistent/dir/c.json")


# ------------------------------------------------------- streams and compression
HTTP = DATA / "http_sizes.pcap"


def test_stdin_fifo_and_gzip_give_the_file_s_streams():
    """`--pcap -` (a pipe on stdin), a FIFO and a gzip'd copy read as the file: the same
    streams as tcpflow writes from the file."""
    import gzip
    import threading
    expected = tcpflow(HTTP).result()
    workdir = tmpdir("streams-in")
    with open(HTTP, "rb") as stdin:
        proc = subprocess.run(mosxdp_command() + ["run", "flowdump", "--pcap", "-", "--outdir",
                                                  str(workdir / "stdin")],
                              stdin=stdin, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert read_streams(workdir / "stdin") == expected
    packed = workdir / "capture.gz"
    packed.write_bytes(gzip.compress(HTTP.read_bytes()))
    proc, outdir = flowdump_on(packed)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert read_streams(outdir) == expected
    fifo = workdir / "fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(packed.read_bytes()))
    writer.start()
    proc, outdir = flowdump_on(fifo)
    writer.join()
    assert (proc.returncode, proc.stderr) == (0, "")
    assert read_streams(outdir) == expected


def test_a_cut_gzip_capture_is_one_line_after_its_packets():
    import gzip
    workdir = tmpdir("cut-gz")
    packed = workdir / "capture.pcap.gz"
    data = gzip.compress(HTTP.read_bytes())
    packed.write_bytes(data[:len(data) // 2])
    log = workdir / "conn.json"
    proc = run_mosxdp("run", "connlog", "--pcap", packed, "--output", log)
    assert_one_line_error(proc, str(packed), "truncated at byte offset", "packets read", code=1)
    assert log.read_text().count("\n") >= 1       # the flows before the cut are logged


# ------------------------------------------------------------ apps and options
def test_unknown_app():
    proc = run_mosxdp("run", "nosuchapp", "--pcap", REUSE)
    line = assert_one_line_error(proc, "nosuchapp", code=2)
    assert "flowdump" in line and "connlog" in line          # says what exists


def test_app_file_problems():
    proc = run_mosxdp("run", tmpdir("app") / "missing.py", "--pcap", REUSE)
    assert_one_line_error(proc, "missing.py", "does not exist", code=2)
    no_setup = tmpdir("app") / "nosetup.py"
    no_setup.write_text("x = 1\n")
    proc = run_mosxdp("run", no_setup, "--pcap", REUSE)
    assert_one_line_error(proc, "setup", code=2)


@pytest.mark.parametrize("name,source,needles,code", [
    ("syntax.py", "def setup(mctx, args:\n    pass\n", ("syntax.py:1:", "(SyntaxError)"), 2),
    ("imports.py", "\nimport mosxdp_no_such_module\n",
     ("imports.py: loading raised ModuleNotFoundError: No module named "
      "'mosxdp_no_such_module' at ", "imports.py:2"), 2),
    ("raises.py", "raise RuntimeError('not today')\n",
     ("raises.py: loading raised RuntimeError: not today at ", "raises.py:1"), 2),
    ("exits.py", "import sys\nsys.exit(5)\n", ("exits.py: loading raised SystemExit: 5",), 2),
    ("badsetup.py", "def setup(mctx, args):\n    return {}['key']\n",
     ("badsetup.py: setup raised KeyError: 'key' at ", "badsetup.py:2"), 1),
    ("badargs.py", "def add_arguments(p):\n    p.add_argument('--pcap')\n"
                   "def setup(mctx, args):\n    pass\n",
     ("badargs.py: add_arguments raised ArgumentError", "badargs.py:2"), 2),
    ("notes.txt", "def setup(mctx, args):\n    pass\n", ("notes.txt' is not a .py file",), 2),
])
def test_broken_apps_are_one_line(name, source, needles, code):
    workdir = tmpdir("brokenapp")
    app = workdir / name
    app.write_text(source)
    proc = run_mosxdp("run", app, "--pcap", REUSE)
    assert_one_line_error(proc, *needles, code=code)
    # --debug adds the traceback before the line.
    proc = run_mosxdp("run", app, "--pcap", REUSE, "--debug")
    assert proc.returncode == code
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("mosxdp: error: app ")


def test_an_app_path_that_is_a_directory():
    directory = tmpdir("appdir")
    proc = run_mosxdp("run", str(directory) + "/", "--pcap", REUSE)
    assert_one_line_error(proc, "is a directory, not a .py file", code=2)


@pytest.mark.parametrize("app,flag", [("flowdump", "--outdir"), ("connlog", "--output")])
@pytest.mark.parametrize("bad", ["tcp port banana", "host 999.1.1.1", "port 80 and", "(tcp",
                                 "frobnicate"])
def test_bad_filter(app, flag, bad):
    target = tmpdir("filter") / "x"
    proc = run_mosxdp("run", app, "--pcap", REUSE, flag, target, "--filter", bad)
    assert_one_line_error(proc, "filter", code=2)


def config(text):
    path = tmpdir("config") / "mos.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,needles", [
    ('[mos]\nbogus = 1\n', ("unknown key", "bogus")),
    ('[nosuchsection]\nx = 1\n', ("unknown section", "nosuchsection")),
    ('[mos]\noverlap_policy = "middle"\n', ("overlap_policy", "'first', 'last'")),
    ('[mos]\nmidstream_pickup = "yes"\n', ("midstream_pickup", "true or false")),
    ('[mos]\nrmem_size = -1\n', ("rmem_size",)),
    ('[mos]\nmax_concurrency = 1.5\n', ("max_concurrency", "integer")),
    ('[mos]\ntcp_timeout = "long"\n', ("tcp_timeout",)),
    ('[datapath]\nbatch_size = 0\n', ("batch_size",)),
    ('mos = 3\n', ("[section]",)),
    ('[mos\noverlap_policy = ', ("not valid TOML",)),
    ('[mos]\noverlap_policy = first\n', ("not valid TOML",)),
    ('mos {\n\tforward = 1\n\tnetdev {\n', ("mos.toml:3:", "'netdev' is not closed")),
    ('mos {\n\ttcp_timeout = soon\n}\n', ("mos.toml:2:", "tcp_timeout", "integer")),
])
def test_bad_config(text, needles):
    path = config(text)
    proc, _ = flowdump_on(REUSE, "--config", path)
    assert_one_line_error(proc, str(path), *needles, code=2)


def test_mos_conf_sample_runs():
    """mOS's sample mos.conf as --config: its keys without a meaning here in one warning
    line, its stat_print as --stats; the streams are tcpflow's."""
    proc, outdir = flowdump_on(REUSE, "--config", DATA / "mos.conf")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == (f"mosxdp: warning: {DATA / 'mos.conf'}: ignored (no meaning in mosxdp): "
                        "nb_mem_channels, mos_log, arp_table, route_table, netdev dpdk1")
    assert any(line.startswith("mosxdp: ") and "frames" in line for line in lines[1:])
    assert read_streams(outdir) == tcpflow(REUSE).result()


def test_missing_config_file():
    missing = tmpdir("config") / "none.toml"
    proc, _ = flowdump_on(REUSE, "--config", missing)
    assert_one_line_error(proc, str(missing), code=2)


def test_bad_option_value_from_the_command_line():
    proc, _ = flowdump_on(REUSE, "--batch-size", "0")
    assert_one_line_error(proc, "batch_size", code=2)


def test_argparse_errors_are_one_line():
    for args, words in (
            (["run", "flowdump", "--pcap", REUSE], "the following arguments are required: --outdir"),
            (["run", "flowdump", "--pcap", REUSE, "--outdir", "x", "--batch-size", "many"],
             "argument --batch-size: invalid int value: 'many'"),
            (["run", "flowdump", "--outdir", "x"], "give --pcap IN (offline) or --iface A"),
            (["run", "connlog", "--pcap", REUSE, "--bogus-option"],
             "unrecognized arguments: --bogus-option"),
            (["status", "--bogus"], "unrecognized arguments: --bogus")):
        proc = run_mosxdp(*args)
        line = assert_one_line_error(proc, words, code=2)
        command = " ".join(map(str, args[:2 if args[0] == "run" else 1]))
        assert line.startswith(f"mosxdp: error: {command}: ")
        assert line.endswith(f"(see 'mosxdp {command} --help')")
    proc = run_mosxdp("frobnicate")
    assert_one_line_error(proc, "frobnicate", code=2)


# ----------------------------------------------------------------------- help
def test_run_help_lists_apps():
    proc = run_mosxdp("run", "--help")
    assert (proc.returncode, proc.stderr) == (0, "")
    for app in ("flowdump", "connlog"):
        assert any(line.split()[:1] == [app] for line in proc.stdout.splitlines()), proc.stdout
    assert "--pcap" in proc.stdout and "--write" in proc.stdout


@pytest.mark.parametrize("app,options", [
    ("flowdump", ["--outdir", "--filter"]),
    ("connlog", ["--output", "--filter"]),
    (str(APPS / "rewrite.py"), ["--log"]),
])
def test_app_help_shows_app_options(app, options):
    proc = run_mosxdp("run", app, "--help")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert "options:" in proc.stdout
    for option in options + ["--pcap", "--write", "--config"]:
        assert option in proc.stdout


# ------------------------------------------------- malformed frames in a pcap
def with_bad_frames():
    """reuse.pcap with three malformed frames inserted in its first connection:
    a frame shorter than an Ethernet header, a copy of a data frame cut inside
    its IPv4 packet, and a copy with IP version 7 under ethertype IPv4."""
    _, records = read_pcap(REUSE)
    data_index = next(i for i, (_, _, frame) in enumerate(records)
                      if frame[12:14] == b"\x08\x00" and len(frame) > 80)
    sec, usec, frame = records[data_index]
    cut = frame[:40]
    bad_version = bytearray(frame)
    bad_version[14] = 0x75
    bad = [(sec, usec, b"\x01\x02\x03\x04\x05\x06\x07\x08"), (sec, usec, cut),
           (sec, usec, bytes(bad_version))]
    crafted = records[:data_index] + bad[:2] + records[data_index:data_index + 1] + bad[2:] \
        + records[data_index + 1:]
    path = tmpdir("badframes") / "badframes.pcap"
    write_pcap(path, crafted)
    return path, crafted


def test_malformed_frames_are_passed_on_and_the_run_goes_on():
    path, crafted = with_bad_frames()
    workdir = tmpdir("badframes-run")
    out = workdir / "out.pcap"
    proc, outdir = flowdump_on(path, "--write", out)
    assert (proc.returncode, proc.stderr) == (0, "")
    # Passed on unchanged, in place: the output is the input.
    assert read_pcap(out)[1] == crafted
    # ... and they do not disturb the flows: the streams of the clean capture.
    assert read_streams(outdir) == tcpflow(REUSE).result()


def test_malformed_frames_are_counted():
    """The offline engine counts them by kind (the stack's counters)."""
    from mosxdp import api
    from mosxdp.apps import flowdump

    path, crafted = with_bad_frames()
    workdir = tmpdir("badframes-count")
    out = workdir / "out.pcap"
    api.mtcp_init(None, pcap=str(path), write=str(out))
    try:
        mctx = api.mtcp_create_context(0)
        flowdump.setup(mctx, argparse.Namespace(outdir=str(workdir / "streams"), filter=None))
        api.mtcp_app_join(mctx)
        counters, malformed = dict(mctx.stack.counters), dict(mctx.stack.malformed)
    finally:
        api.mtcp_destroy()
    assert counters["frames"] == len(crafted)
    assert counters["malformed"] == 3
    assert {k: v for k, v in malformed.items() if v} == {
        "truncated_l2": 1, "truncated_ipv4": 1, "ip_version": 1}
    assert read_pcap(out)[1] == crafted
