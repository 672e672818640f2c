"""netns tier: what a live run refuses at start, before the app's set-up creates any
output and before any XDP program is attached: one line naming the option and what is
wrong, and nothing left behind.

    <p>-cli: cli0 <== veth ==> A [<p>-mon: mosxdp run connlog --iface A --peer B ...] B <== veth ==> srv0

(a) --metrics-port on a port another process of the namespace listens on (it used to be
    "Address already in use" without the port, after attaching);
(b) [datapath] queues beyond the interface's RX queues (a traceback after attaching);
(c) an --iface / --peer that does not exist in the namespace;
(d) not root (a traceback-free line that used to come after the app's set-up).
The testbed is livekit's (mosxdp.demo.testbed); skipped only when a probe fails.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from livekit import PY, ROOT, require_live, xdp_attached

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def tb():
    require_live(("ip",))
    from mosxdp.demo.testbed import Testbed
    bed = Testbed("inline")
    bed.start()
    try:
        yield bed
    finally:
        bed.close()


def run_monitor(tb, tmp_path, *args, prefix=()):
    """`mosxdp run connlog` in the monitor namespace: (CompletedProcess, its --output)."""
    out = tmp_path / "conn.json"
    argv = [*prefix, PY, "-m", "mosxdp.cli", "run", "connlog", "--output", str(out),
            *map(str, args)]
    proc = tb.run("mon", argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    return proc, out


def assert_refused(tb, proc, out, line, code):
    assert (proc.returncode, proc.stderr) == (code, line + "\n"), proc.stderr
    assert not out.exists(), "the app's set-up ran"
    assert xdp_attached(tb) == set(), "an XDP program is attached"


def test_metrics_port_in_use(tb, tmp_path):
    port = 19123
    listener = tb.popen("mon", [PY, "-c", (
        "import socket, time; s = socket.socket(); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); print('up', flush=True); time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "up"
        proc, out = run_monitor(tb, tmp_path, "--iface", tb.iface_a, "--peer", tb.iface_b,
                                "--metrics-port", port)
        assert_refused(tb, proc, out, f"mosxdp: error: --metrics-port {port}: cannot listen on "
                       f"127.0.0.1:{port}: Address already in use", 1)
    finally:
        listener.kill()
        listener.wait()


def test_more_queues_than_the_interface_has(tb, tmp_path):
    config = tmp_path / "queues.toml"
    config.write_text("[datapath]\nqueues = 8\n")
    proc, out = run_monitor(tb, tmp_path, "--iface", tb.iface_a, "--peer", tb.iface_b,
                            "--config", config)
    assert_refused(tb, proc, out, f"mosxdp: error: [datapath] queues = 8: {tb.iface_a} has "
                   "1 RX queue", 2)


@pytest.mark.parametrize("which", ["iface", "peer"])
def test_an_interface_that_does_not_exist(tb, tmp_path, which):
    names = {"iface": tb.iface_a, "peer": tb.iface_b, which: "mosxdp-none0"}
    proc, out = run_monitor(tb, tmp_path, "--iface", names["iface"], "--peer", names["peer"])
    assert_refused(tb, proc, out, f"mosxdp: error: --{which} mosxdp-none0: no such interface "
                   "in this network namespace (ip link shows them)", 2)


def test_not_root(tb, tmp_path):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed")
    tmp_path.chmod(0o777)
    proc, out = run_monitor(tb, tmp_path, "--iface", tb.iface_a, "--peer", tb.iface_b,
                            prefix=("setpriv", "--reuid=65534", "--regid=65534",
                                    "--clear-groups"))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("mosxdp: error: not running as root (missing CAP_NET_ADMIN")
    assert not out.exists() and xdp_attached(tb) == set()
