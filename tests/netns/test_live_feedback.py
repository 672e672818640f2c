"""netns tier: live feedback of a running monitor: the --stats line every second
and the Prometheus endpoint (--metrics-port), during a real transfer."""
import subprocess
import sys

import pytest

from mosxdp.demo.lab import wait_attached
from mosxdp.demo.passprog import attach_to_endpoints
from mosxdp.demo.testbed import Testbed, probe
from mosxdp.engine.loss import REASONS

REASON = probe()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"netns testbed: {REASON}")


def test_stats_line_and_metrics_during_a_transfer(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "f30m").write_bytes(b"\x5a" * 30_000_000)
    with Testbed(kind="inline") as tb:
        tb.popen("srv", [sys.executable, "-m", "http.server", "8080", "-d", str(www)],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tb.wait_listen("srv", 8080)
        attach_to_endpoints(tb, python=sys.executable)
        monitor = tb.popen("mon", [sys.executable, "-m", "mosxdp.cli", "run", "connlog",
                                   "--iface", tb.iface_a, "--peer", tb.iface_b,
                                   "--output", str(tmp_path / "conn.log"),
                                   # every frame through Python (not connlog's default
                                   # state-only path): the status lines count them
                                   "--full-inspection",
                                   "--stats", "--metrics-port", "9109"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert wait_attached(tb, monitor), "the monitor did not attach"
        # Paced so that the transfer spans several status lines.
        download = tb.run("cli", ["curl", "-sS", "--max-time", "60", "--limit-rate", "8M",
                                  "-o", "/dev/null", "-w", "%{size_download}",
                                  f"http://{tb.srv_ip}:8080/f30m"], capture_output=True, text=True)
        metrics = tb.run("mon", ["curl", "-sS", "--max-time", "5", "http://127.0.0.1:9109/metrics"],
                         capture_output=True, text=True)
        tb.stop(monitor, sig=2, timeout=15)
        output = monitor.stdout.read()
    assert download.stdout == "30000000"
    frames_in = [line for line in metrics.stdout.splitlines()
                 if line.startswith("mosxdp_frames_in_total ")]
    assert frames_in and int(frames_in[0].split()[1]) > 20000, metrics.stdout[:500]
    assert 'mosxdp_core_flows_created_total 1' in metrics.stdout.splitlines()
    # every loss reason is exported, also at 0 (docs/datapath.md, Loss)
    for reason in set(REASONS) - {"tx_unsent_at_exit"}:
        assert f'mosxdp_frames_lost_total{{reason="{reason}"}} ' in metrics.stdout, reason
    status_lines = [line for line in output.splitlines() if " kpps, out " in line]
    assert len(status_lines) >= 2, output[-2000:]
    assert any("to Python" in line and "flows 1" in line for line in status_lines), status_lines
