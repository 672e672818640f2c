"""netns tier: the live monitor's capabilities after set-up (docs/datapath.md, "Privileges").

Inline testbed (mosxdp.demo.testbed), XDP pass programs on the endpoints::

    cli: cli0 <==> A [mon: mosxdp run connlog --iface A --peer B] B <==> srv0 :8080 srv

* by default the running monitor (every thread of it, the metrics server's included) has
  only CAP_NET_ADMIN in its effective, permitted and bounding sets, nothing inheritable
  or ambient, and no_new_privs; a 20 MB download through it is byte-identical, the
  verdict map works (``--bypass-after-bytes 65536``: the flow is bypassed in the kernel
  and its counters merged back without a map error), --stats-json (in a directory root
  does not own) says what was kept, and after SIGINT (with --detach-on-exit: the exit
  detaches, with the CAP_NET_ADMIN kept for it) neither interface has XDP;
* ``--keep-privileges`` leaves the capabilities as they were and no_new_privs unset.

Skipped when the probe fails (not root, no AF_XDP, no bcc/libxdp, no curl); with
MOSXDP_REQUIRE_PRIVILEGED=1 a failed probe fails instead.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess

import livekit
import pytest
from livekit import PY, ROOT, sha256_file

from mosxdp.io.privileges import cap_names, read_status

pytestmark = pytest.mark.netns

NET_ADMIN = 1 << 12
SIZE = 20_000_000
METRICS_PORT = 9119


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    livekit.require_live(("curl",))
    from mosxdp.demo.testbed import Testbed
    www = tmp_path_factory.mktemp("www")
    (www / "f20m").write_bytes(os.urandom(SIZE))
    with Testbed(kind="inline") as tb:
        livekit.attach_pass_programs(tb)
        tb.popen("srv", [PY, "-m", "http.server", "8080", "-d", str(www)],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tb.wait_listen("srv", 8080)
        yield tb, www


def run_monitor(tb, out, extra=()):
    """Start connlog inline, detaching at exit; returns (process, log path) once both
    interfaces have XDP."""
    log = out / "monitor.log"
    with open(log, "w") as f:
        proc = tb.popen("mon", [PY, "-m", "mosxdp.cli", "run", "connlog",
                                "--iface", tb.iface_a, "--peer", tb.iface_b,
                                "--output", str(out / "conn.log"), "--detach-on-exit",
                                "--tcp-only", *extra],
                        cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)

    def alive():
        assert proc.poll() is None, f"the monitor exited: {log.read_text()[-2000:]}"
    livekit.wait_until("XDP on both monitor interfaces",
                       lambda: livekit.xdp_attached(tb) == {tb.iface_a, tb.iface_b}, 60, alive)
    return proc, log


def _threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def download(tb, www, out):
    """20 MB through the monitor, byte-identical (so its loop runs: set-up is over)."""
    got = out / "got"
    r = tb.run("cli", ["curl", "-sS", "--max-time", "60", "-o", str(got),
                       f"http://{tb.srv_ip}:8080/f20m"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sha256_file(got) == sha256_file(www / "f20m")


def stop(tb, proc, log):
    code = tb.stop(proc, sig=signal.SIGINT, timeout=20)
    assert code == 0, log.read_text()[-2000:]
    assert livekit.xdp_attached(tb) == set(), "XDP left attached after SIGINT: " + log.read_text()


def test_only_net_admin_remains_and_everything_works(bed, tmp_path):
    tb, www = bed
    # --stats-json in a directory that is not root's: written at exit without
    # CAP_DAC_OVERRIDE because it was opened at set-up
    outdir = tmp_path / "user-owned"
    outdir.mkdir()
    os.chown(outdir, 65534, 65534)
    outdir.chmod(0o755)
    stats_json = outdir / "stats.json"
    proc, log = run_monitor(tb, tmp_path, ["--bypass-after-bytes", "65536", "--stats",
                                           "--stats-json", str(stats_json),
                                           "--metrics-port", str(METRICS_PORT)])
    # The metrics thread starts after the drop: wait for it, then check every thread.
    livekit.wait_until("the metrics thread", lambda: _threads(proc.pid) >= 2, 10)
    for tid in os.listdir(f"/proc/{proc.pid}/task"):
        st = read_status(f"{proc.pid}/task/{tid}")
        assert (st["CapEff"], st["CapPrm"], st["CapBnd"], st["CapInh"], st["CapAmb"],
                st["NoNewPrivs"]) == (NET_ADMIN, NET_ADMIN, NET_ADMIN, 0, 0, 1), (tid, st)
    metrics = tb.run("mon", ["curl", "-sS", "--max-time", "5",
                             f"http://127.0.0.1:{METRICS_PORT}/metrics"],
                     capture_output=True, text=True)
    assert "mosxdp_frames_in_total" in metrics.stdout, metrics.stderr

    download(tb, www, tmp_path)
    stop(tb, proc, log)

    text = log.read_text()
    assert "mosxdp: privileges: kept CAP_NET_ADMIN, dropped" in text, text[-2000:]
    assert "not detached" not in text and "verdict map:" not in text, text[-2000:]
    stats = json.loads(stats_json.read_text())["live"]
    priv = stats["privileges"]
    assert priv["kept"] == ["CAP_NET_ADMIN"] and "CAP_BPF" in priv["dropped"]
    assert priv["no_new_privs"] and priv["bounding_set_reduced"] and not priv["keep_privileges"]
    kernel = stats["processor"]
    # the verdict map was written, read and emptied through its fd after the drop
    assert kernel["kernel_verdicts_set"] >= 1 and kernel["kernel_entries_popped"] >= 1
    assert kernel["kernel_merged_packets"] > 1000 and kernel["kernel_map_errors"] == 0
    assert stats["verdict_entries_left"] == 0
    conn = [json.loads(line) for line in (tmp_path / "conn.log").read_text().splitlines()]
    assert [c["resp_bytes"] >= SIZE for c in conn] == [True], conn


def test_keep_privileges_keeps_them(bed, tmp_path):
    tb, www = bed
    mine = read_status()
    proc, log = run_monitor(tb, tmp_path, ["--keep-privileges",
                                           "--stats-json", str(tmp_path / "stats.json")])
    download(tb, www, tmp_path)
    st = read_status(proc.pid)
    stop(tb, proc, log)
    assert (st["CapEff"], st["CapPrm"], st["CapBnd"], st["NoNewPrivs"]) == (
        mine["CapEff"], mine["CapPrm"], mine["CapBnd"], 0), (st, mine)
    assert st["CapEff"] & ~NET_ADMIN, "this test means nothing without more than CAP_NET_ADMIN"
    priv = json.loads((tmp_path / "stats.json").read_text())["live"]["privileges"]
    assert priv["keep_privileges"] and priv["dropped"] == [] and not priv["no_new_privs"]
    assert priv["kept"] == cap_names(mine["CapEff"])
