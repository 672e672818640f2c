"""A callback that raises never stops the datapath (docs/config.md "Callback exceptions").

On tests/data/http_sizes.pcap, flowdump runs next to a callback that raises on every tenth
packet: the streams are still byte-identical to tcpflow's, the error count is exact, the
first exception of each callback is logged once (one line naming the app's line; the record
holds the traceback, which --debug shows), the counts are printed at exit and by --stats,
and the run ends non-zero. A callback that calls sys.exit() stops the run after its packet,
with one line naming where, and its exit status.
"""
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mosxdp import *  # noqa: F401,F403
from mosxdp import cli

REPO = Path(__file__).resolve().parents[2]
PCAP = REPO / "tests" / "data" / "http_sizes.pcap"
TCP_PACKETS = 1536                 # tests/data/README.md: 1540 packets, 1536 TCP

RAISER_APP = '''
"""flowdump, plus a callback that raises on every tenth TCP packet."""
import socket

from mosxdp import MOS_HK_SND, MOS_ON_PKT_IN, MOS_SOCK_MONITOR_STREAM
from mosxdp import mtcp_register_callback, mtcp_socket
from mosxdp.apps import flowdump

add_arguments = flowdump.add_arguments


class Raiser:
    calls = 0

    def on_packet(self, mctx, sock, side, event, arg):
        Raiser.calls += 1
        if Raiser.calls % 10 == 0:
            raise RuntimeError(f"packet {Raiser.calls}")


def setup(mctx, args):
    app = flowdump.setup(mctx, args)
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_SND, Raiser().on_packet)
    return app


def teardown(app):
    print(f"raiser: {Raiser.calls} calls", flush=True)
'''


@pytest.fixture
def raiser_app(tmp_path):
    path = tmp_path / "raiser.py"
    path.write_text(RAISER_APP)
    return path


def read_streams(directory):
    return {p.name: p.read_bytes() for p in Path(directory).iterdir()
            if p.is_file() and p.name not in ("report.xml", "alerts.txt")}


def tcpflow_streams(tmp_path):
    if shutil.which("tcpflow") is None:
        pytest.skip("tcpflow is not installed (scripts/setup.sh installs it)")
    outdir = tmp_path / "tcpflow"
    outdir.mkdir()
    subprocess.run(["tcpflow", "-r", str(PCAP), "-o", str(outdir)], capture_output=True,
                   check=True, timeout=120)
    return read_streams(outdir)


def run_cli(*args):
    mtcp_destroy()
    try:
        return cli.main([str(a) for a in args])
    finally:
        mtcp_destroy()


def test_raising_every_tenth_packet_keeps_streams_identical(tmp_path, raiser_app, capsys, caplog):
    clean, raised = tmp_path / "clean", tmp_path / "raised"
    assert run_cli("run", "flowdump", "--pcap", PCAP, "--outdir", clean) == 0
    with caplog.at_level(logging.ERROR, logger="mosxdp.callbacks"):
        code = run_cli("run", raiser_app, "--pcap", PCAP, "--outdir", raised, "--stats")
    out, err = capsys.readouterr()
    assert code == 1
    calls = int(re.search(r"raiser: (\d+) calls", out).group(1))
    assert calls == TCP_PACKETS               # one call per TCP packet: none was skipped
    expected = calls // 10
    # The streams: as without the raising callback, and as tcpflow writes them.
    streams = read_streams(raised)
    assert len(streams) == 8 and streams == read_streams(clean)    # 4 GETs, both ways
    assert streams == tcpflow_streams(tmp_path)
    # The count is exact, everywhere it is shown.
    assert f"callback errors {expected} (Raiser.on_packet {expected})" in err
    assert f"mosxdp: {expected} callback exceptions (on_callback_error forward): " \
           f"Raiser.on_packet {expected}" in err
    # Logged once for this callback: one line naming the app's line; the record keeps the
    # traceback for a logging configuration that wants it.
    records = [r for r in caplog.records if r.name == "mosxdp.callbacks"]
    assert len(records) == 1 and records[0].exc_info[0] is RuntimeError
    message = records[0].getMessage()
    assert "Raiser.on_packet raised RuntimeError: packet 10" in message
    assert f"at {raiser_app}:{RAISE_LINE}" in message
    assert str(records[0].exc_info[1]) == "packet 10"


# The file's line number (splitlines counts from 0).
RAISE_LINE = RAISER_APP.splitlines().index('            raise RuntimeError(f"packet {Raiser.calls}")') + 1


def run_command(*args, env=None):
    """The command as a user runs it: a subprocess without any logging configuration."""
    env = dict({k: v for k, v in os.environ.items() if k != "MOSXDP_DEBUG"},
               PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "mosxdp.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)


def test_one_line_on_stderr_of_the_command_and_exit_1(tmp_path, raiser_app):
    proc = run_command("run", raiser_app, "--pcap", PCAP, "--outdir", tmp_path / "out")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"mosxdp: error: callback mosxdp_user_app_raiser.Raiser.on_packet raised RuntimeError: "
        f"packet 10 at {raiser_app}:{RAISE_LINE} (the datapath goes on; further exceptions of "
        "this callback are counted, not logged)",
        f"mosxdp: {TCP_PACKETS // 10} callback exceptions (on_callback_error forward): "
        f"Raiser.on_packet {TCP_PACKETS // 10}"]
    # The streams are all there, as without the raising callback.
    assert len(read_streams(tmp_path / "out")) == 8


@pytest.mark.parametrize("how", [("--debug",), ()])
def test_debug_shows_the_traceback(tmp_path, raiser_app, how):
    proc = run_command("run", raiser_app, "--pcap", PCAP, "--outdir", tmp_path / "out", *how,
                       env={} if how else {"MOSXDP_DEBUG": "1"})
    assert proc.returncode == 1
    assert proc.stderr.count("Traceback (most recent call last)") == 1
    assert proc.stderr.count("RuntimeError: packet 10") == 2     # the line, the traceback's last


EXIT_APP = '''
import socket
import sys

from mosxdp import MOS_HK_SND, MOS_ON_PKT_IN, MOS_SOCK_MONITOR_STREAM
from mosxdp import mtcp_register_callback, mtcp_socket
from mosxdp.apps import connlog

add_arguments = connlog.add_arguments
seen = []


def on_packet(mctx, sock, side, event, arg):
    seen.append(1)
    if len(seen) == 100:
        sys.exit(STATUS)


def setup(mctx, args):
    app = connlog.setup(mctx, args)
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_SND, on_packet)
    return app


def teardown(app):
    connlog.teardown(app)
    print(f"exit app: {len(seen)} calls", file=sys.stderr)
'''


@pytest.mark.parametrize("status,code,prefix", [(3, 3, "mosxdp: error: "), (None, 0, "mosxdp: "),
                                                ("'bye'", 1, "mosxdp: error: ")])
def test_sys_exit_in_a_callback_stops_the_run_and_says_where(tmp_path, status, code, prefix):
    app = tmp_path / "exiter.py"
    app.write_text(EXIT_APP.replace("STATUS", str(status)))
    log = tmp_path / "conn.json"
    proc = run_command("run", app, "--pcap", PCAP, "--output", log)
    assert proc.returncode == code, proc.stderr
    line = EXIT_APP.splitlines().index("        sys.exit(STATUS)") + 1
    shown = "None" if status is None else str(status)
    assert proc.stderr.splitlines() == [
        "exit app: 100 calls",
        f"{prefix}stopping: callback on_packet called sys.exit({shown}) at {app}:{line}"]
    # The flows open at the stop are logged (end_reason eof): no line is lost.
    reasons = [json.loads(x)["end_reason"] for x in log.read_text().splitlines()]
    assert reasons and reasons[-1] == "eof"


def test_drop_policy_drops_exactly_the_failing_packets(tmp_path, raiser_app, capsys, caplog):
    from mosxdp.io.pcap import PcapReader
    out = tmp_path / "out.pcap"
    code = run_cli("run", raiser_app, "--pcap", PCAP, "--outdir", tmp_path / "d", "--write", out,
                   "--on-callback-error", "drop", "--stats")
    err = capsys.readouterr().err
    assert code == 1
    with PcapReader(str(out)) as reader:
        written = sum(1 for _ in reader)
    assert written == 1540 - TCP_PACKETS // 10
    assert f"dropped {TCP_PACKETS // 10}" in err


def test_stop_policy_stops_with_one_line(tmp_path, raiser_app, capsys, caplog):
    code = run_cli("run", raiser_app, "--pcap", PCAP, "--outdir", tmp_path / "d",
                   "--on-callback-error", "stop")
    out, err = capsys.readouterr()
    assert code == 1
    assert "mosxdp: error: stopping: a callback raised and on_callback_error is 'stop'" in err
    assert "raiser: 10 calls" in out            # stopped after the packet that raised
    assert "mosxdp: 1 callback exception (on_callback_error stop): Raiser.on_packet 1" in err


def test_each_callback_is_logged_once_and_counted_apart(caplog):
    mtcp_destroy()
    mtcp_init(None)
    try:
        from flowcraft import Conv, Monitor
        mon = Monitor()

        def always(mctx, sock, side, ev, arg):
            raise ValueError("always")

        def on_end(mctx, sock, side, ev, arg):
            raise KeyError("end")
        mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_PKT_IN, MOS_HK_RCV, always)
        mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_END, MOS_HK_SND, on_end)
        with caplog.at_level(logging.ERROR, logger="mosxdp.callbacks"):
            mon.run(Conv().full())
        stack = mon.mctx.stack
        names = {name.rsplit(".", 1)[-1]: count for name, count in stack.callback_errors.items()}
        assert names == {"always": 8, "on_end": 2}
        assert stack.counters["callback_errors"] == 10
        assert len([r for r in caplog.records if r.name == "mosxdp.callbacks"]) == 2
    finally:
        mtcp_destroy()
