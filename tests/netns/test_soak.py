"""netns tier: the one-minute soak, `scripts/soak.py --minutes 1`.

iperf3 (2 streams) and three loops of short curl downloads through the inline monitor
running flowdump for a minute (the script: `scripts/soak.py`, 5 minutes by default; its
figures for the full run are in the commit that added it). Asserted from its JSON:

  * no crash: the monitor is alive until the SIGINT that stops it, and exits 0;
  * the UMEM frame accounting of the --stats exit summary balances (no ERROR);
  * every completed download is byte-identical (sha256), flowdump's file of it holds the
    HTTP header and the served file, and no download failed;
  * the monitor's RSS grows by less than RSS_BOUND_MIB from the end of the warm-up (15 s)
    to the end.

The RSS bound: measured here, a one-minute run grows by ~0.3 MiB over ~2000 connections
and the 5-minute soak by 1.75 MiB over ~12000: ~150 bytes per connection, flowdump's
table of every 4-tuple it has seen (it names a reused 4-tuple's files c1, c2... as
tcpflow does); with an app that keeps no such table the RSS is flat (+0.05 MiB in
2 minutes). 8 MiB is 25 times the measured growth and is crossed by any leak that
matters: a flow kept with its state (several KiB) per connection, a stream buffer
(256 KiB) per flow, or 4 bytes per frame over the ~2 million frames of the minute.

Skipped only when the probe fails (root, netns, AF_XDP, bcc, iperf3, curl);
tests/conftest.py turns skips into failures with MOSXDP_REQUIRE_PRIVILEGED=1.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.netns

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "soak.py"
RSS_BOUND_MIB = 8.0

_spec = importlib.util.spec_from_file_location("soak", SCRIPT)
soak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak)


def test_one_minute_soak(tmp_path):
    why = soak.probe()
    if why:
        pytest.skip(why)
    out = tmp_path / "soak.json"
    proc = subprocess.Popen([sys.executable, SCRIPT, "--minutes", "1", "--sample", "3",
                             "--rss-bound-mb", str(RSS_BOUND_MIB), "--json", out, "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        # SIGTERM: the script's testbed removes itself (namespaces, processes)
        proc.terminate()
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"soak.py still running after 300 s:\n{stdout[-4000:]}{stderr[-4000:]}")
    report = stdout[-4000:] + stderr[-4000:]
    print(report)
    assert out.exists(), f"soak.py exited {proc.returncode} without results:\n{report}"
    res = json.loads(out.read_text())
    mon, curl, rss = res["monitor"], res["curl"], res["rss_kib"]
    # no crash
    assert mon["alive_at_end"], report
    assert mon["exit_code"] == 0, report
    # frame accounting
    assert mon["accounting"] and "ERROR" not in mon["accounting"], report
    assert mon["accounting_error"] is None, report
    assert mon["frames"] == mon["forwarded"] and mon["frames"] > 100_000, mon
    # downloads
    assert curl["completed"] > 200, curl
    assert curl["mismatched"] == 0, curl["failures"]
    assert curl["failed"] == 0, curl["failures"]
    assert curl["flowdump_ok"] == curl["completed"], curl["flowdump_problems"]
    assert res["iperf3"]["bytes"] > 0 and res["iperf3"]["failed_runs"] == 0, res["iperf3"]
    # memory flat after the warm-up
    assert rss["warmup_s"] == 15 and len(rss["samples"]) >= 15, rss
    assert rss["growth_mib"] is not None and rss["growth_mib"] < RSS_BOUND_MIB, rss
    assert res["ok"] and proc.returncode == 0, report
