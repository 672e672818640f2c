"""netns tier: real Linux TCP through the live AF_XDP engine (mosxdp.engine.live), run by
xsk_runner (tests/netns/xsk_runner.py) with its test processors.

Topology (mosxdp.demo.testbed, inline)::

    <p>-cli: cli0 <== veth ==> A [<p>-mon: python -m tests.netns.xsk_runner --iface A --peer B] B <== veth ==> srv0 :<p>-srv

The endpoints get an XDP_PASS program (a veth accepts frames redirected into it only
when its peer runs NAPI: the kernel path of our program is a devmap redirect). The
monitor runs as a subprocess in the monitor namespace and writes its statistics (frame
accounting, audit, XDP counters) as JSON when it stops.

Skipped when a probe fails (not root, no AF_XDP, no bcc/libxdp, no curl/iperf3); with
MOSXDP_REQUIRE_PRIVILEGED=1 a failed probe fails instead.
"""
from __future__ import annotations

import json
import platform
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import livekit
import pytest
from livekit import PY, ROOT, sha256_file

pytestmark = pytest.mark.netns

HTTP_PORT, BLOCKED_PORT = 8080, 8081
MONITOR_START_TIMEOUT = 120.0  # bcc compiles the XDP program at start


# ------------------------------------------------------------------------------ probe
@pytest.fixture(scope="session")
def live_env():
    livekit.require_live(("curl", "iperf3", "ethtool"))


# ------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    d = livekit.www_dir(tmp_path_factory.mktemp("www"), {"f1k": 1024, "f20m": 20 * 1024 * 1024})
    return d, {p.name: (p, sha256_file(p)) for p in sorted(d.iterdir())}


class Bed:
    """An inline testbed ready for the monitor: pass programs on the endpoints, an HTTP
    server (GET files, PUT -> sha256 of the body) on two ports, an iperf3 server."""

    def __init__(self, tb, www: Path, tmp: Path):
        self.tb, self.www, self.tmp = tb, www, tmp
        livekit.attach_pass_programs(tb, subprocess=True)
        self.httpd = livekit.start_server(tb, www, (HTTP_PORT, BLOCKED_PORT))
        self.iperf_srv = tb.popen("srv", ["iperf3", "-s"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        tb.wait_listen("srv", 5201)
        self._n = 0

    def url(self, family: int, path: str, port: int = HTTP_PORT) -> str:
        host = self.tb.srv_ip if family == 4 else f"[{self.tb.srv_ip6}]"
        return f"http://{host}:{port}/{path}"

    def curl(self, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.tb.run("cli", ["curl", "-sS", "-g", "--fail", *args], capture_output=True,
                           text=True, timeout=timeout)

    def download(self, family: int, name: str, *extra, timeout: float = 120):
        self._n += 1
        out = self.tmp / f"dl{self._n}-{name}"
        r = self.curl("-o", str(out), *extra, self.url(family, name), timeout=timeout)
        return r, out

    def upload(self, family: int, path: Path) -> subprocess.CompletedProcess:
        return self.curl("-H", "Expect:", "-T", str(path), self.url(family, "upload"))

    def iperf(self, seconds: float, streams: int = 1, family: int = 4) -> dict:
        host = self.tb.srv_ip if family == 4 else self.tb.srv_ip6
        r = self.tb.run("cli", ["iperf3", "-c", host, "-t", str(seconds), "-P", str(streams), "-J"],
                        capture_output=True, text=True, timeout=seconds + 60)
        assert r.returncode == 0, f"iperf3 failed: {r.stdout[-2000:]} {r.stderr[-2000:]}"
        return json.loads(r.stdout)

    def xdp_attached(self) -> set:
        return livekit.xdp_attached(self.tb, check=False, timeout=None)

    def monitor(self, *args, **kw) -> "Monitor":
        return Monitor(self, *args, **kw)


class Monitor:
    """``python -m tests.netns.xsk_runner --iface A --peer B`` in the monitor namespace."""

    _seq = 0

    def __init__(self, bed: Bed, *args, wait_ready: bool = True):
        Monitor._seq += 1
        tb = bed.tb
        self.bed = bed
        self.stats_path = bed.tmp / f"monitor{Monitor._seq}.json"
        self.err_path = bed.tmp / f"monitor{Monitor._seq}.err"
        self._err = open(self.err_path, "w")
        argv = [PY, "-m", "tests.netns.xsk_runner", "--iface", tb.iface_a, "--peer", tb.iface_b,
                "--stats", str(self.stats_path), *map(str, args)]
        self.proc = tb.popen("mon", argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._err,
                             text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._reader, daemon=True).start()
        if wait_ready:
            self.wait_ready()

    def _reader(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            if "ready" in line:
                self._ready.set()
        self._ready.set()

    def wait_ready(self):
        assert self._ready.wait(MONITOR_START_TIMEOUT), "monitor did not start in time"
        assert self.proc.poll() is None, f"monitor died at start: {self.stderr()}"

    def stderr(self) -> str:
        self._err.flush()
        return self.err_path.read_text()[-4000:]

    def send_signal(self, sig) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._err.flush()

    def stop(self, sig=signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.send_signal(sig)
        return self.wait(timeout)

    def stats(self) -> dict:
        assert self.stats_path.exists(), f"no statistics written; stderr: {self.stderr()}"
        return json.loads(self.stats_path.read_text())

    def close(self):
        if self.proc.poll() is None:
            self.bed.tb.stop(self.proc, signal.SIGKILL)
        self._err.close()


def make_bed(tmp_path, www, **kw):
    from mosxdp.demo.testbed import Testbed
    tb = Testbed("inline", **kw)
    tb.__enter__()
    try:
        return tb, Bed(tb, www, tmp_path)
    except BaseException:
        tb.__exit__(*sys.exc_info())
        raise


@pytest.fixture
def fresh_bed(live_env, payloads, tmp_path):
    """A new inline testbed for one test (factory: kwargs for Testbed)."""
    made = []

    def make(**kw):
        tb, bed = make_bed(tmp_path, payloads[0], **kw)
        made.append(tb)
        return bed

    yield make
    for tb in made:
        tb.__exit__(None, None, None)


def assert_balanced(stats: dict) -> None:
    acc = stats["accounting"]
    assert "accounting_error" not in stats, stats["accounting_error"]
    assert acc["total"] == acc["frames"], acc
    assert min(acc[k] for k in ("fill", "rx", "app", "tx", "completion", "free")) >= 0, acc
    audit = stats["audit"]
    assert audit["duplicates"] == 0 and audit["invalid"] == 0, audit
    assert audit["unseen"] == audit["unseen_expected"], audit


# ------------------------------------------------------------------------------ transfers
@pytest.fixture(scope="module")
def shared(live_env, payloads, tmp_path_factory):
    """One testbed and one monitor (DropSyn on BLOCKED_PORT, accounting checked after
    every loop iteration) for the transfer tests; the last test stops it."""
    tmp = tmp_path_factory.mktemp("shared")
    tb, bed = make_bed(tmp, payloads[0])
    mon = None
    try:
        mon = bed.monitor("--check-accounting", "--drop-syn-port", BLOCKED_PORT)
        yield bed, mon
    finally:
        if mon is not None:
            mon.close()
        tb.__exit__(None, None, None)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("name", ["f1k", "f20m"])
def test_download_byte_identical(shared, payloads, family, name):
    bed, mon = shared
    r, out = bed.download(family, name)
    assert r.returncode == 0, f"curl failed: {r.stderr}; monitor: {mon.stderr()}"
    assert sha256_file(out) == payloads[1][name][1]


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("name", ["f1k", "f20m"])
def test_upload_byte_identical(shared, payloads, family, name):
    bed, mon = shared
    path, digest = payloads[1][name]
    r = bed.upload(family, path)
    assert r.returncode == 0, f"curl failed: {r.stderr}; monitor: {mon.stderr()}"
    assert r.stdout.strip() == digest


@pytest.mark.parametrize("family", [4, 6])
def test_syn_drop_blocks_one_port(shared, family):
    bed, mon = shared
    r = bed.curl("--connect-timeout", "2", "-o", "/dev/null", bed.url(family, "f1k", BLOCKED_PORT),
                 timeout=30)
    assert r.returncode == 28, f"curl to the blocked port: rc {r.returncode} {r.stderr}"
    r, _ = bed.download(family, "f1k", "--connect-timeout", "5")
    assert r.returncode == 0, r.stderr


def test_million_frames(shared):
    """>= 10^6 frames through the per-frame path, accounting checked at every loop."""
    bed, mon = shared
    deadline = time.monotonic() + 120
    frames = 0
    while True:
        bed.iperf(4, streams=4)
        # frames received by A and B so far (the monitor's own count is checked when it
        # stops, in the next test)
        frames = _link_rx_packets(bed)
        if frames >= 1_100_000 or time.monotonic() > deadline:
            break
    assert frames >= 1_100_000, f"only {frames} frames in 120 s"
    assert mon.proc.poll() is None, f"monitor died: {mon.stderr()}"
    _MILLION_RAN.append(True)


_MILLION_RAN: list = []


def _link_rx_packets(bed) -> int:
    n = 0
    for ifn in (bed.tb.iface_a, bed.tb.iface_b):
        r = bed.tb.run("mon", ["ip", "-s", "-j", "link", "show", ifn], capture_output=True, text=True)
        n += json.loads(r.stdout)[0]["stats64"]["rx"]["packets"]
    return n


def test_accounting_balances_after_transfers(shared):
    bed, mon = shared
    rc = mon.stop(signal.SIGINT)
    assert rc == 0, f"monitor exit {rc}: {mon.stderr()}"
    st = mon.stats()
    assert st["error"] is None, st["error"]
    assert_balanced(st)
    if _MILLION_RAN:
        assert st["frames"] >= 1_000_000, st["frames"]
    # every TCP frame went through our sockets, none took the kernel fallback
    assert st["xdp"]["to_xsk"] >= st["frames"] - st["accounting"]["rx"], st["xdp"]
    assert st["xdp"]["no_xsk_fallback"] == 0, st["xdp"]
    assert st["processor"]["syn_dropped"] >= 2, st["processor"]
    assert st["tx_ring_full"] == 0, st
    if tuple(map(int, platform.release().split(".")[:2])) >= (6, 17):
        # XDP_MAX_TX_SKB_BUDGET: one sendto may send a whole batch, not 32 frames
        assert all(s["tx_budget"] > 32 for s in st["sockets"]), st["sockets"]
    assert st["forwarded"] + st["dropped"] == st["frames"], st
    assert all(n > 0 for n in st["frames_by_port"]), st["frames_by_port"]
    assert not bed.xdp_attached(), bed.xdp_attached()


# ------------------------------------------------------------------------------ queues
def test_two_rx_queues_all_forwarded(fresh_bed, payloads):
    bed = fresh_bed(rx_queues=2)
    mon = bed.monitor("--check-accounting")
    # many connections: their flows hash onto both TX queues of cli0/srv0, so onto both
    # RX queues of A and B
    for i in range(8):
        r, out = bed.download(4 if i % 2 else 6, "f1k")
        assert r.returncode == 0, r.stderr
        assert sha256_file(out) == payloads[1]["f1k"][1]
    bed.iperf(2, streams=8)
    rc = mon.stop(signal.SIGTERM)
    assert rc == 0, mon.stderr()
    st = mon.stats()
    assert_balanced(st)
    socks = {(s["ifname"], s["queue"]): s for s in st["sockets"]}
    assert len(socks) == 4, socks.keys()
    for ifn in (bed.tb.iface_a, bed.tb.iface_b):
        for q in (0, 1):
            assert socks[(ifn, q)]["rx_frames"] > 0, (ifn, q, socks[(ifn, q)])
    assert st["forwarded"] == st["frames"] and st["dropped"] == 0, st
    assert st["xdp"]["no_xsk_fallback"] == 0, st["xdp"]
    rx_a = sum(socks[(bed.tb.iface_a, q)]["rx_frames"] for q in (0, 1))
    tx_b = sum(socks[(bed.tb.iface_b, q)]["tx_frames"] for q in (0, 1))
    assert rx_a == tx_b, (rx_a, tx_b)


# ------------------------------------------------------------------------------ exits
@pytest.mark.parametrize("how", ["normal", "sigint", "sigterm", "exception"])
def test_exit_detaches_everything(fresh_bed, how):
    bed = fresh_bed()
    args = {"normal": ["--duration", "3"], "exception": ["--crash-after", "20"]}.get(how, [])
    mon = bed.monitor(*args)
    assert set(bed.xdp_attached()) == {bed.tb.iface_a, bed.tb.iface_b}
    r, _ = bed.download(4, "f1k")
    if how == "exception":
        bed.download(4, "f1k", "--max-time", "3")  # the monitor dies on its 20th frame
        rc = mon.wait()
        assert rc == 1, f"rc {rc}: {mon.stderr()}"
        assert "crash_after" in mon.stderr()
    else:
        assert r.returncode == 0, r.stderr
        if how == "sigint":
            mon.send_signal(signal.SIGINT)
        elif how == "sigterm":
            mon.send_signal(signal.SIGTERM)
        rc = mon.wait()
        assert rc == 0, f"rc {rc}: {mon.stderr()}"
    assert not bed.xdp_attached(), bed.xdp_attached()
    st = mon.stats()
    assert_balanced(st)
    if how == "exception":
        assert "crash_after" in st["error"]


# ------------------------------------------------------------------------------ kill -9
def _size(path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_kill9_mid_transfer_fails_open(fresh_bed, payloads):
    bed = fresh_bed()
    mon = bed.monitor()
    out = bed.tmp / "kill9.out"
    # 20 MB at 2 MB/s: about 10 s; the monitor dies after 1 s. Receive buffers hold a
    # few MB at most, so most of the file crosses A and B after the kill.
    curl = bed.tb.popen("cli", ["curl", "-sS", "-g", "--fail", "--limit-rate", "2M",
                                "--max-time", "60", "-o", str(out), bed.url(4, "f20m")],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    assert curl.poll() is None, "transfer ended before the kill"
    mon.send_signal(signal.SIGKILL)
    mon.wait()
    at_kill = _size(out)
    assert at_kill < 12 * 1024 * 1024, f"{at_kill} bytes had arrived at the kill: too late"
    # the program stays attached: forwarding in the kernel is its job now
    assert set(bed.xdp_attached()) == {bed.tb.iface_a, bed.tb.iface_b}
    _, err = curl.communicate(timeout=90)
    assert curl.returncode == 0, err
    assert sha256_file(out) == payloads[1]["f20m"][1]


def test_kill9_mid_transfer_fails_closed(fresh_bed):
    bed = fresh_bed()
    # A small receive buffer: autotuning lets it grow to tcp_rmem's maximum (32 MB here),
    # which the server fills at wire speed before the kill and curl drains at 2 MB/s for
    # many seconds after it (CI saw the file still growing 6 s after the kill).
    r = bed.tb.run("cli", ["sysctl", "-qw", "net.ipv4.tcp_rmem=4096 65536 262144"],
                   capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    mon = bed.monitor("--fail-closed")
    out = bed.tmp / "kill9.out"
    # an endless-enough stream at 2 MB/s; after the kill, once the data already in the
    # client's receive buffer is read, the file must stop growing
    curl = bed.tb.popen("cli", ["curl", "-sS", "-g", "--fail", "--limit-rate", "2M",
                                "--max-time", "60", "-o", str(out),
                                bed.url(4, f"stream/{1 << 30}")],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    assert curl.poll() is None, "transfer ended before the kill"
    mon.send_signal(signal.SIGKILL)
    mon.wait()
    assert set(bed.xdp_attached()) == {bed.tb.iface_a, bed.tb.iface_b}
    try:
        time.sleep(5)  # the receive buffer (at most 256 KiB) drains meanwhile
        before = _size(out)
        time.sleep(4)
        after = _size(out)
        assert curl.poll() is None or curl.returncode != 0
        assert after == before, f"the transfer went on after the kill ({before} -> {after} bytes)"
    finally:
        bed.tb.stop(curl, signal.SIGKILL)


# ------------------------------------------------------------------------------ real core
def test_real_stack_forwards_byte_identical(fresh_bed, payloads):
    """The core's Stack (no app) as the processor: transfers intact, accounting balanced."""
    bed = fresh_bed()
    mon = bed.monitor("--check-accounting", "--processor", "mosxdp.core.stack:Stack")
    for family in (4, 6):
        r, out = bed.download(family, "f20m")
        assert r.returncode == 0, f"curl failed: {r.stderr}; monitor: {mon.stderr()}"
        assert sha256_file(out) == payloads[1]["f20m"][1]
        path, digest = payloads[1]["f20m"]
        r = bed.upload(family, path)
        assert r.returncode == 0 and r.stdout.strip() == digest, r.stderr
    assert mon.stop(signal.SIGTERM) == 0, mon.stderr()
    st = mon.stats()
    assert_balanced(st)
    assert st["forwarded"] == st["frames"] > 4 * 14000, st
    assert isinstance(st.get("processor"), dict), st.get("processor")


# ------------------------------------------------------------------------------ passive
def test_passive_on_a_mirror_port(fresh_bed, payloads):
    """Passive mode: the monitored interface receives a copy of the traffic (tc mirred
    mirror of A's and B's ingress, which the kernel forwards between A and B); every
    frame is consumed and recycled, the transfer is untouched."""
    bed = fresh_bed()
    tb = bed.tb
    mir_tx, mir_rx = f"{tb.prefix}m", f"{tb.prefix}n"

    def mon_ok(*argv):
        r = tb.run("mon", list(argv), capture_output=True, text=True)
        assert r.returncode == 0, f"{argv}: {r.stderr}"

    mon_ok("ip", "link", "add", mir_tx, "type", "veth", "peer", "name", mir_rx)
    mon_ok("sysctl", "-qw", f"net.ipv6.conf.{mir_rx}.disable_ipv6=1")
    mon_ok("sysctl", "-qw", f"net.ipv6.conf.{mir_tx}.disable_ipv6=1")
    mon_ok("ip", "link", "set", mir_tx, "up")
    mon_ok("ip", "link", "set", mir_rx, "up")
    for src, dst in ((tb.iface_a, tb.iface_b), (tb.iface_b, tb.iface_a)):
        mon_ok("tc", "qdisc", "add", "dev", src, "clsact")
        mon_ok("tc", "filter", "add", "dev", src, "ingress", "protocol", "all", "u32", "match", "u32", "0", "0",
               "action", "mirred", "egress", "mirror", "dev", mir_tx, "pipe",
               "action", "mirred", "egress", "redirect", "dev", dst)
    stats_path = bed.tmp / "passive.json"
    proc = tb.popen("mon", [PY, "-m", "tests.netns.xsk_runner", "--iface", mir_rx, "--check-accounting",
                            "--stats", str(stats_path)], cwd=ROOT, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "ready" in line, proc.stderr.read() if proc.poll() is not None else line
    r, out = bed.download(4, "f20m")
    assert r.returncode == 0, r.stderr
    assert sha256_file(out) == payloads[1]["f20m"][1]
    tb.stop(proc, signal.SIGINT)
    assert proc.returncode == 0, proc.stderr.read()
    st = json.loads(stats_path.read_text())
    assert_balanced(st)
    assert st["frames"] >= 14000, st["frames"]  # 20 MB in ~1448-byte segments, plus ACKs
    assert st["recycled"] == st["frames"] and st["forwarded"] == 0, st


# ------------------------------------------------------------------------------ outbox
def test_outbox_frames_are_sent_out_of_the_right_port(fresh_bed):
    """A processor answers SYNs to BLOCKED_PORT with a RST (outbox, egress = ingress
    port): curl is refused at once (exit 7) instead of timing out; the other port works."""
    bed = fresh_bed()
    mon = bed.monitor("--check-accounting", "--processor",
                      "RstInjector")
    t0 = time.monotonic()
    r = bed.curl("--connect-timeout", "5", "-o", "/dev/null", bed.url(4, "f1k", BLOCKED_PORT),
                 timeout=30)
    assert r.returncode == 7, f"curl rc {r.returncode}: {r.stderr}; monitor: {mon.stderr()}"
    assert time.monotonic() - t0 < 4
    r, _ = bed.download(4, "f1k")
    assert r.returncode == 0, r.stderr
    assert mon.stop(signal.SIGINT) == 0, mon.stderr()
    st = mon.stats()
    assert_balanced(st)
    assert st["outbox_sent"] >= 1 and st["outbox_dropped"] == 0, st
    assert st["processor"]["syn_dropped"] == st["outbox_sent"], st
