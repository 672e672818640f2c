"""`mosxdp run APP --pcap IN --workers N`: a run split over N processes by flow writes what
one process writes (docs/workers.md).

Every capture of tests/data, and a capture of many overlapping flows made of copies of
them (scripts/bench.py --make-capture, 3 MB), goes through connlog, flowdump and
flowdump --write with 1, 2 and 3 workers; the outputs are compared byte for byte. Short
timeouts and small batches put flow ends on timers and at batch ends, where the workers'
outputs interleave. scrub (in-place masking, frames held and sent later by timers, resets)
and simple_firewall (drops, counts over all flows) are compared the same way; midstat's
tables hold the same rows per refresh. A worker that dies fails the run with one line,
a callback's stop stops it, Ctrl-C stops every process, and nothing is left running.
"""
import filecmp
import importlib.util
import json
import os
import signal
import subprocess
import time

import pytest

from integ_helpers import DATA, REPO, cached, mosxdp_command, run_mosxdp, tmpdir
from pcapforms import as_modified_pcap, as_pcapng, rewritten

CAPTURES = sorted(p for p in DATA.iterdir() if p.suffix == ".pcap")
WORKERS = (1, 2, 3)
SHORT = tmpdir("config") / "short.toml"
SHORT.write_text("[mos]\ntcp_timeout = 0.005\ntcp_syn_timeout = 0.002\ntcp_tw_interval = 0.003\n")


def _bench():
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _many_flows():
    """A 3 MB capture of copies of the small real captures, each on its own addresses."""
    path = tmpdir("many") / "many.pcap"
    _bench().make_capture(str(path), 3, ("halfclose", "rst_abort", "ipv6", "reuse", "refused"))
    return path


def many_flows():
    return cached("many-flows", _many_flows).result()


def _run_app(argv, outputs):
    """One run; its exit code, stderr and the files it wrote."""
    proc = run_mosxdp(*argv)
    return proc.returncode, proc.stderr, outputs


def outputs_of(pcap, workers, *extra):
    """Futures of connlog and flowdump --write on `pcap` with `workers` workers."""
    out = tmpdir(f"w{workers}")
    conn = cached(("connlog", str(pcap), workers, extra), _run_app,
                  ["run", "connlog", "--pcap", pcap, "--output", out / "conn.log",
                   "--workers", workers, *extra], out / "conn.log")
    dump = cached(("flowdump", str(pcap), workers, extra), _run_app,
                  ["run", "flowdump", "--pcap", pcap, "--outdir", out / "flows",
                   "--write", out / "out.pcap", "--workers", workers, *extra],
                  (out / "flows", out / "out.pcap"))
    return conn, dump


def same_dir(a, b):
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only, (cmp.left_only, cmp.right_only)
    for name in cmp.common_files:
        assert filecmp.cmp(a / name, b / name, shallow=False), name
    return len(cmp.common_files)


def check_identical(pcap, *extra):
    runs = {n: outputs_of(pcap, n, *extra) for n in WORKERS}
    results = {n: (conn.result(), dump.result()) for n, (conn, dump) in runs.items()}
    for n, (conn, dump) in results.items():
        assert conn[0] == 0 and dump[0] == 0, (pcap.name, n, conn[1], dump[1])
    (_, _, log1), (_, _, (flows1, write1)) = results[1]
    for n in WORKERS[1:]:
        (_, _, log), (_, _, (flows, write)) = results[n]
        assert log.read_bytes() == log1.read_bytes(), f"{pcap.name}: conn.log with {n} workers"
        same_dir(flows1, flows)
        assert write.read_bytes() == write1.read_bytes(), f"{pcap.name}: --write with {n} workers"
    return log1.read_text().splitlines(), flows1


@pytest.mark.parametrize("pcap", CAPTURES, ids=lambda p: p.stem)
def test_capture_outputs_identical_with_workers(pcap):
    for n in WORKERS:       # start every run before waiting for one
        outputs_of(pcap, n)
        outputs_of(pcap, n, "--batch-size", "5", "--config", SHORT)
    lines, flows = check_identical(pcap)
    check_identical(pcap, "--batch-size", "5", "--config", SHORT)
    tcp_flows = {"refused", "rst_abort"}   # every capture has TCP flows
    assert lines or pcap.stem in tcp_flows


def test_many_flows_identical_with_workers():
    pcap = many_flows()
    for extra in ((), ("--batch-size", "7", "--config", SHORT)):
        for n in WORKERS:
            outputs_of(pcap, n, *extra)
    lines, flows = check_identical(pcap)
    assert len(lines) > 50 and len(os.listdir(flows)) > 50
    lines, _ = check_identical(pcap, "--batch-size", "7", "--config", SHORT)
    reasons = {json.loads(line)["end_reason"] for line in lines}
    assert "timeout" in reasons and {"fin", "rst"} & reasons   # ends on timers, at frames
    # The flows are spread: each of 3 workers has some (the summary counts them).
    stats = tmpdir("s") / "stats.json"
    proc = run_mosxdp("run", "connlog", "--pcap", pcap, "--output", tmpdir("s") / "c.log",
                      "--workers", 3, "--stats", "--stats-json", stats)
    assert proc.returncode == 0 and proc.stderr.rstrip().endswith("workers 3"), proc.stderr
    # The plan's pass began before the imports (with the C loops: not in pure Python).
    split = json.loads(stats.read_text())["split"]
    pure = os.environ.get("MOSXDP_PURE_PYTHON", "") not in ("", "0")
    assert split["plan_early"] is not pure and split["plan_parts"] >= 1, split


@pytest.mark.parametrize("order, nanosecond", [(">", False), ("<", True), (">", True)],
                         ids=["big-endian", "nanosecond", "big-endian-nanosecond"])
def test_other_byte_orders_and_resolutions_identical_with_workers(order, nanosecond):
    """The plan's C pass, its resync, the workers' reads of the record headers and the
    merge of --write (not a verbatim copy then: PcapWriter writes little-endian
    microseconds) on a capture of another byte order or timestamp resolution."""
    pcap = rewritten(many_flows(), tmpdir("order") / "other.pcap", order, nanosecond)
    for extra in ((), ("--batch-size", "7", "--config", SHORT)):
        for n in WORKERS:
            outputs_of(pcap, n, *extra)
        lines, _ = check_identical(pcap, *extra)
        assert len(lines) > 50


def test_a_capture_cut_by_a_snap_length_identical_with_workers():
    """Frames cut by a snap length are parsed from their headers in every worker, and
    --write keeps their length on the wire, changed in place (scrub) or not."""
    pcap = tmpdir("cut") / "cut.pcap"
    subprocess.run(["editcap", "-F", "pcap", "-s", "80", many_flows(), pcap], check=True)
    lines, _ = check_identical(pcap)
    assert any(json.loads(line)["missed_bytes"] for line in lines)
    said = {n: run_mosxdp("run", "connlog", "--pcap", pcap, "--output", tmpdir("c") / "c.log",
                          "--workers", n).stderr for n in (1, 2)}
    assert said[1] == said[2] and "were cut by the capture's snap length (80 bytes)" in said[1]
    out = _identical_runs(["scrub", "--pattern", "HTTP", "--side", "both", "--log",
                           "{out}/hits.log", "--write", "{out}/out.pcap"],
                          ["hits.log", "out.pcap"], pcap)
    assert (out / "hits.log").read_text()


def _identical_runs(app_argv, files, pcap):
    """app_argv (with {out}) run with 1, 2, 3 workers: every named output file identical."""
    outs = {}
    for n in WORKERS:
        out = tmpdir(f"app{n}")
        argv = [a.replace("{out}", str(out)) if isinstance(a, str) else a for a in app_argv]
        proc = run_mosxdp("run", *argv, "--pcap", pcap, "--workers", n)
        assert proc.returncode == 0, proc.stderr
        outs[n] = out
    for n in WORKERS[1:]:
        for name in files:
            assert (outs[n] / name).read_bytes() == (outs[1] / name).read_bytes(), (name, n)
    return outs[1]


def test_scrub_masks_holds_and_resets_identically():
    pcap = many_flows()
    out = _identical_runs(["scrub", "--pattern", "HTTP", "--side", "both", "--log",
                           "{out}/hits.log", "--write", "{out}/out.pcap"],
                          ["hits.log", "out.pcap"], pcap)
    assert len((out / "hits.log").read_text().splitlines()) > 10
    # Frames ending with the pattern's start are held and sent later (timers, mtcp_sendpkt).
    _identical_runs(["scrub", "--pattern", r"\x00\x00", "--hold-ms", "5", "--log",
                     "{out}/hits.log", "--write", "{out}/out.pcap"], ["hits.log", "out.pcap"],
                    pcap)
    _identical_runs(["scrub", "--pattern", "HTTP/1.0", "--reset", "--side", "server", "--log",
                     "{out}/hits.log", "--write", "{out}/out.pcap"], ["hits.log", "out.pcap"],
                    pcap)


def test_simple_firewall_counts_summed_identically():
    pcap = many_flows()
    rules = tmpdir("rules") / "rules.conf"
    rules.write_text("DROP 0.0.0.0 0.0.0.0 dport:7000\nACCEPT 0.0.0.0 0.0.0.0 dport:8080\n")
    out = _identical_runs(["simple_firewall", "--rules", rules, "--interval", "0.5", "--output",
                           "{out}/table.txt", "--stats-output", "{out}/stats.json", "--write",
                           "{out}/out.pcap"], ["table.txt", "stats.json", "out.pcap"], pcap)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rules"][0]["flows"] > 0 and stats["dropped_frames"] > 0


def _midstat(pcap, workers, *extra):
    out = tmpdir("midstat") / "out"
    proc = run_mosxdp("run", "midstat", "--pcap", pcap, "--output", out, "--workers", workers,
                      *extra)
    assert proc.returncode == 0, proc.stderr
    return out.read_text()


def test_midstat_tables_hold_the_same_rows():
    for pcap, extra in ((DATA / "concurrent.pcap", ("--interval", "0.001", "--batch-size", "8")),
                        (many_flows(), ("--interval", "0.2"))):
        tables = {}
        for n in WORKERS:
            text = _midstat(pcap, n, *extra)
            tables[n] = [sorted(line.split()[:1] + line.split()[2:] for line in t.splitlines()[1:])
                         for t in text.split("\n\n") if t.strip()]
            cpus = {line.split()[1] for t in text.split("\n\n") for line in t.splitlines()[1:]}
            assert cpus <= {str(i) for i in range(n)}
        assert any(len(rows) > 1 for rows in tables[1])
        assert tables[2] == tables[1] and tables[3] == tables[1]
        docs = {n: [json.loads(line) for line in _midstat(pcap, n, "--json", *extra).splitlines()]
                for n in WORKERS}
        for n in WORKERS[1:]:
            assert [d["ts"] for d in docs[n]] == [d["ts"] for d in docs[1]]
            for mine, one in zip(docs[n], docs[1]):
                strip = lambda flows: sorted(json.dumps({k: v for k, v in f.items()
                                                         if k not in ("sock", "cpu")}, sort_keys=True)
                                             for f in flows)
                assert strip(mine["flows"]) == strip(one["flows"])


# ---------------------------------------------------------------- failures
CRASH_APP = """
import os, signal, socket
from mosxdp import MOS_HK_RCV, MOS_ON_CONN_END, MOS_SOCK_MONITOR_STREAM, mtcp_register_callback, mtcp_socket
ended = []
def on_end(mctx, sock, side, event, arg):
    ended.append(sock)
    if len(ended) == {when}:
        {action}
def setup(mctx, args):
    sock = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, on_end)
"""


def _app(name, **fields):
    path = tmpdir("apps") / f"{name}.py"
    path.write_text(CRASH_APP.format(**fields))
    return path


def _left_running(marker):
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line]


def test_a_worker_that_dies_fails_the_run():
    app = _app("dies", when=10, action="os.kill(os.getpid(), signal.SIGKILL)")
    started = time.monotonic()
    proc = run_mosxdp("run", app, "--pcap", many_flows(), "--workers", 2, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mosxdp: error: worker "), proc.stderr
    assert "killed by signal 9 (SIGKILL) during the run; the run is stopped" in lines[0]
    assert time.monotonic() - started < 30
    assert not _left_running(str(app))


def test_a_callbacks_stop_stops_the_split_run():
    app = _app("stops", when=10, action="raise SystemExit(4)")
    proc = run_mosxdp("run", app, "--pcap", many_flows(), "--workers", 2, timeout=60)
    assert proc.returncode == 4
    assert proc.stderr.splitlines() == [
        f"mosxdp: error: stopping: callback on_end called sys.exit(4) at {app}:8"]
    assert not _left_running(str(app))


def test_ctrl_c_stops_every_worker():
    out = tmpdir("int")
    pcap = tmpdir("big") / "big.pcap"
    _bench().make_capture(str(pcap), 30)
    proc = subprocess.Popen(
        mosxdp_command() + ["run", "flowdump", "--pcap", str(pcap), "--outdir", str(out),
                            "--workers", "2"],
        start_new_session=True, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
    deadline = time.monotonic() + 30
    while len(_session(proc.pid)) < 3 and time.monotonic() < deadline:   # the 2 workers run
        time.sleep(0.02)
    assert proc.poll() is None
    os.killpg(proc.pid, signal.SIGINT)       # what a terminal's Ctrl-C does
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert _session(proc.pid) == []


def test_workers_of_a_killed_parent_stop_and_clean_up():
    """kill -9 of the parent: its workers notice at their next batch end, remove the
    spool directory nobody will merge, and end; nothing is left running."""
    out = tmpdir("orphans")
    spool = tmpdir("orphans-tmp")
    pcap = tmpdir("big-orphans") / "big.pcap"
    _bench().make_capture(str(pcap), 30)
    proc = subprocess.Popen(
        mosxdp_command() + ["run", "flowdump", "--pcap", str(pcap), "--outdir", str(out),
                            "--workers", "2", "--batch-size", "1"],
        start_new_session=True, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, TMPDIR=str(spool)))
    deadline = time.monotonic() + 30
    running = 0
    while running < 3 and time.monotonic() < deadline:   # the 2 workers run
        time.sleep(0.02)
        running = len(_session(proc.pid))
    # Killed as soon as the workers are seen (not after another look: on a loaded machine
    # the workers could end in between).
    os.kill(proc.pid, signal.SIGKILL)
    assert running == 3
    proc.communicate(timeout=20)
    deadline = time.monotonic() + 20
    while _session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _session(proc.pid) == []
    assert list(spool.iterdir()) == []


def _session(sid):
    out = subprocess.run(["pgrep", "-s", str(sid)], capture_output=True, text=True).stdout
    return out.split()


def _stdin_run(workers, argv, source, pipe):
    """A run whose capture is the standard input: ``source``'s bytes through a pipe a
    writer fills while the run reads (``pipe``), or the file itself redirected."""
    cmd = mosxdp_command() + ["run", *[str(a) for a in argv], "--pcap", "-",
                              "--workers", str(workers)]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    with open(source, "rb") as f:
        if not pipe:
            return subprocess.run(cmd, stdin=f, capture_output=True, text=True, cwd=REPO,
                                  timeout=60, env=env)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=REPO, env=env)
        # Through the pipe's 64 KiB: the run waits for more many times.
        out, err = proc.communicate(f.read(), timeout=60)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(), err.decode())


def _stdin_forms():
    """The many-flows capture as it may come down a pipe: classic, gzip, pcapng; cut
    short; and no capture at all."""
    folder = tmpdir("stdin-forms")
    src = many_flows()
    forms = {"pcap": src, "gzip": folder / "many.gz", "pcapng": folder / "many.pcapng",
             "cut": folder / "cut.pcap", "junk": folder / "junk", "empty": folder / "empty"}
    FORMS["gzip"][0](src, forms["gzip"])
    FORMS["editcap-pcapng"][0](src, forms["pcapng"])
    data = src.read_bytes()
    forms["cut"].write_bytes(data[:len(data) // 2 + 3])
    forms["junk"].write_bytes(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n" * 50)
    forms["empty"].write_bytes(b"")
    return forms


@pytest.mark.parametrize("form", ["pcap", "gzip", "pcapng", "cut", "junk", "empty"])
def test_the_standard_input_split_as_one_worker_reads_it(form):
    """--pcap - with workers: the input is read to its end into the spool folder, then
    split; the outputs, the lines and the exit code are those of one worker reading the
    same bytes from the same pipe; a capture redirected from a file is mapped, not
    copied."""
    source = cached("stdin-forms", _stdin_forms).result()[form]
    results = {}
    for n in (1, 2, 3):
        out = tmpdir(f"stdin-{form}-{n}")
        argv = ["flowdump", "--outdir", out / "flows", "--write", out / "out.pcap",
                "--batch-size", "7", "--config", SHORT, "--stats-json", out / "s.json"]
        proc = _stdin_run(n, argv, source, pipe=True)
        results[n] = (proc.returncode, proc.stderr, out)
    rc1, err1, out1 = results[1]
    if form in ("pcap", "gzip", "pcapng"):
        assert rc1 == 0 and err1 == "", err1
        assert len(os.listdir(out1 / "flows")) > 50
    else:
        assert rc1 == 1 and err1.startswith("mosxdp: error: stdin: "), err1
    for n in (2, 3):
        rc, err, out = results[n]
        assert (rc, err) == (rc1, err1), (n, err, err1)
        same_dir(out1 / "flows", out / "flows")
        assert (out / "out.pcap").exists() == (out1 / "out.pcap").exists()
        if (out1 / "out.pcap").exists():
            assert (out / "out.pcap").read_bytes() == (out1 / "out.pcap").read_bytes()
        if rc == 0:
            split = json.loads((out / "s.json").read_text())["split"]
            assert split["input_spooled"] is True, split
    # Redirected from the file: the run maps it (no copy), and ends as one worker does
    # (an empty file is one, not a pipe without data).
    redirected = {}
    for n in (1, 2):
        out = tmpdir(f"stdin-{form}-file-{n}")
        argv = ["flowdump", "--outdir", out / "flows", "--write", out / "out.pcap",
                "--batch-size", "7", "--config", SHORT, "--stats-json", out / "s.json"]
        proc = _stdin_run(n, argv, source, pipe=False)
        redirected[n] = (proc.returncode, proc.stderr, out)
    (rc, err, out), (rc_one, err_one, _) = redirected[2], redirected[1]
    assert (rc, err) == (rc_one, err_one), (err, err_one)
    if form != "empty":
        assert (rc, err) == (rc1, err1), err
    if rc == 0:
        same_dir(out1 / "flows", out / "flows")
        assert json.loads((out / "s.json").read_text())["split"]["input_spooled"] is False


def test_a_named_pipe_is_read_to_its_end_and_split(tmp_path):
    """--workers with a named pipe as the capture: read once, to its end, then split;
    the conn.log of one worker reading the file."""
    fifo = tmp_path / "capture.pcap"
    os.mkfifo(fifo)
    writer = subprocess.Popen(f"cat {many_flows()} > {fifo}", shell=True)
    proc = run_mosxdp("run", "connlog", "--pcap", fifo, "--output", tmp_path / "c.log",
                      "--workers", "2", timeout=60)
    writer.wait(timeout=20)
    assert proc.returncode == 0, proc.stderr
    conn, _ = outputs_of(many_flows(), 1)
    rc, err, log1 = conn.result()
    assert rc == 0 and (tmp_path / "c.log").read_bytes() == log1.read_bytes(), err


def test_ctrl_c_while_the_standard_input_is_read_leaves_nothing(tmp_path):
    """A pipe that does not end: Ctrl-C stops the run at once (130), as with one worker,
    and the spool folder is gone."""
    spool = tmp_path / "tmp"
    spool.mkdir()
    for n in (1, 2):
        proc = subprocess.Popen(
            mosxdp_command() + ["run", "connlog", "--pcap", "-", "--output",
                                str(tmp_path / "c.log"), "--workers", str(n)],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            env=dict(os.environ, TMPDIR=str(spool)),
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.default_int_handler))
        with open(many_flows(), "rb") as f:
            proc.stdin.write(f.read(1 << 16))
        proc.stdin.flush()
        deadline = time.monotonic() + 20
        while n == 2 and not any(spool.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.02)        # the spool folder is made: the run reads the pipe
        time.sleep(0.3)
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 130 and b"Traceback" not in err, err
        assert list(spool.iterdir()) == []


# ---------------------------------------------------------------- bad values
@pytest.mark.parametrize("argv, needle", [
    (["--workers", "-1"], "[datapath] workers = -1: must be between 1 and"),
    (["--workers", "two"], "argument --workers: 'two': \"auto\" or a count of processes"),
    (["--workers", "100000"], "[datapath] workers = 100000: must be between 1 and"),
])
def test_bad_workers_values_are_one_line(argv, needle):
    args = ["run", "connlog", "--pcap", DATA / "reuse.pcap", "--workers", "2", *argv]
    proc = run_mosxdp(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [proc.stderr.splitlines()[0]]
    assert proc.stderr.startswith("mosxdp: error: ") and needle in proc.stderr, proc.stderr


def test_workers_config_key_and_refusals():
    cfg = tmpdir("cfg") / "w.toml"
    cfg.write_text('[datapath]\nworkers = "two"\n')
    proc = run_mosxdp("run", "connlog", "--pcap", DATA / "reuse.pcap", "--config", cfg)
    assert proc.returncode == 2 and "[datapath] workers = 'two': expected an integer" in proc.stderr
    cfg.write_text("[datapath]\nworkers = 2\n")
    out = tmpdir("cfgrun") / "conn.log"
    proc = run_mosxdp("run", "connlog", "--pcap", DATA / "concurrent.pcap", "--config", cfg,
                      "--output", out, "--stats", "--tcp-only")
    assert proc.returncode == 0 and "workers 2" in proc.stderr and len(out.read_text().splitlines()) == 8
    proc = run_mosxdp("run", "nat", "--nat-ip", "10.77.0.9", "--pcap", DATA / "reuse.pcap",
                      "--workers", 2)
    assert proc.returncode == 2 and proc.stderr.startswith(
        "mosxdp: error: --workers 2: app nat runs on one worker: its port pool"), proc.stderr


def _lossy():
    """Copies of the captures with holes: flows that lose bytes on every worker."""
    path = tmpdir("lossy") / "lossy.pcap"
    _bench().make_capture(str(path), 1, ("holes", "lost"))
    return path


@pytest.mark.parametrize("app, argv, capture", [
    ("zeeklog", ["--logdir", "{out}"], lambda: DATA / "sessions" / "http.pcap"),
    ("zeeklog", ["--logdir", "{out}"], lambda: DATA / "sessions" / "tls.pcap"),
    ("scrub", ["--pattern", "HTTP", "--side", "both"], many_flows),
    ("flowdump", ["--outdir", "{out}"], _lossy),
])
def test_the_apps_summary_line_is_one_workers(app, argv, capture):
    """An app's summary at teardown (mosx_open_report): one line of the counts of all
    workers, after the run's own lines, as one worker prints it."""
    pcap = capture()
    errs = {}
    for n in WORKERS:
        out = tmpdir(f"summary-{app}-{n}") / "out"
        proc = run_mosxdp("run", app, *[a.format(out=out) for a in argv], "--pcap", pcap,
                          "--workers", n)
        assert proc.returncode == 0, proc.stderr
        errs[n] = proc.stderr
    assert errs[1].startswith(f"{app}: ") and len(errs[1].splitlines()) == 1, errs[1]
    assert errs[2] == errs[1] and errs[3] == errs[1], errs


PURE = os.environ.get("MOSXDP_PURE_PYTHON", "") not in ("", "0")
# Each form of the many-flows capture: how it is made, and what the split run's classic
# pcap copy is made from (engine/split_input.py; in pure Python the reader writes every
# pcapng copy).
FORMS = {
    "editcap-pcapng": (lambda src, dst: subprocess.run(["editcap", "-F", "pcapng", src, dst],
                                                       check=True), "pcapng"),
    "pcapng-big-endian-ns-offset-sections": (
        lambda src, dst: as_pcapng(src, dst, ">", 9, -3600, sections=3), "pcapng"),
    "pcapng-cooked": (lambda src, dst: as_pcapng(src, dst, cooked=(0, 1)), "pcapng"),
    "pcapng-two-link-types": (lambda src, dst: as_pcapng(src, dst, cooked=(1,)), "reader"),
    "modified-pcap": (as_modified_pcap, "reader"),
    "gzip": (lambda src, dst: subprocess.run(f"gzip -c {src} > {dst}", shell=True, check=True),
             "gzip"),
    "xz-pcapng": (lambda src, dst: subprocess.run(
        f"editcap -F pcapng {src} - | xz -c > {dst}", shell=True, check=True), "xz pcapng"),
}


@pytest.mark.parametrize("form", sorted(FORMS))
def test_other_capture_forms_identical_with_workers(form):
    """A pcapng, compressed or "modified" capture: the split run maps a classic pcap copy
    of it, and writes what one worker writes reading the capture itself, which is what
    one worker writes of the classic capture."""
    make, converted = FORMS[form]
    pcap = tmpdir("form") / f"many.{form}"
    make(many_flows(), pcap)
    for n in WORKERS:
        outputs_of(pcap, n, "--batch-size", "7", "--config", SHORT)
    lines, _ = check_identical(pcap, "--batch-size", "7", "--config", SHORT)
    classic, _ = check_identical(many_flows(), "--batch-size", "7", "--config", SHORT)
    assert lines == classic and len(lines) > 50
    stats = tmpdir("form-stats") / "stats.json"
    proc = run_mosxdp("run", "connlog", "--pcap", pcap, "--output", tmpdir("f") / "c.log",
                      "--workers", 2, "--stats-json", stats)
    assert proc.returncode == 0, proc.stderr
    if PURE and converted.endswith("pcapng"):
        converted = "reader"
    split = json.loads(stats.read_text())["split"]
    assert split["input_converted"] == converted and split["input_seconds"] >= 0, split


@pytest.mark.parametrize("form", ["pcapng", "gzip"])
def test_a_cut_capture_of_another_form_ends_as_with_one_worker(form):
    """The frames before the cut are processed, the same line names the cut, the run
    ends with 1."""
    whole = tmpdir("cut") / f"whole.{form}"
    FORMS["editcap-pcapng" if form == "pcapng" else "gzip"][0](many_flows(), whole)
    data = whole.read_bytes()
    pcap = tmpdir("cut") / f"cut.{form}"
    pcap.write_bytes(data[:len(data) * 2 // 3 + 5])
    results = {}
    for n in (1, 2):
        out = tmpdir(f"cut{n}")
        proc = run_mosxdp("run", "flowdump", "--pcap", pcap, "--outdir", out / "flows",
                          "--write", out / "out.pcap", "--workers", n)
        results[n] = (proc.returncode, proc.stderr, out)
    (rc1, err1, out1), (rc2, err2, out2) = results[1], results[2]
    assert rc1 == rc2 == 1 and err1 == err2 and "truncated at byte offset" in err1, (err1, err2)
    assert err1.startswith(f"mosxdp: error: {pcap}: ")
    same_dir(out1 / "flows", out2 / "flows")
    assert (out1 / "out.pcap").read_bytes() == (out2 / "out.pcap").read_bytes()
    assert len((out1 / "out.pcap").read_bytes()) > len(data) // 3


@pytest.mark.parametrize("pcap", CAPTURES, ids=lambda p: p.stem)
def test_eve_records_identical_with_workers(pcap):
    """EVE records (their pcap_cnt: the input's packet number, not the worker's) and the
    UDP/ICMP flows' ends (after the TCP flows', as one context ends them) merge as one
    worker writes them."""
    runs = {}
    for n in WORKERS:
        out = tmpdir(f"eve{n}") / "eve.json"
        proc = run_mosxdp("run", "eve", "--pcap", pcap, "--output", out, "--workers", n)
        assert proc.returncode == 0, proc.stderr
        runs[n] = out.read_bytes()
    for n in WORKERS[1:]:
        assert runs[n] == runs[1], f"{pcap.name}: eve with {n} workers"


def test_a_network_sink_gets_the_merged_records(tmp_path):
    """A unix-socket sink opened by the app's setup: the parent sends the workers' merged
    records, the same bytes as a file gets from one worker."""
    import socket
    import threading
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    got = bytearray()

    def serve():
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                got.extend(data)

    reader = threading.Thread(target=serve, daemon=True)
    reader.start()
    proc = run_mosxdp("run", "connlog", "--pcap", DATA / "datagrams.pcap", "--output",
                      f"unix:{path}", "--workers", 2, "--stats")
    reader.join(20)
    server.close()
    assert proc.returncode == 0, proc.stderr
    one = tmpdir("sink1") / "conn.log"
    assert run_mosxdp("run", "connlog", "--pcap", DATA / "datagrams.pcap", "--output",
                      one).returncode == 0
    assert bytes(got) == one.read_bytes() and got.count(b"\n") > 10
