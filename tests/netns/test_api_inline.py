"""netns tier: the mOS API live inline, through `mosxdp run APP --iface A --peer B`: stream
reassembly of real transfers, flowdump against tcpflow, dropping SYNs, overwriting payload
with and without the checksum update, resets (mtcp_sendpkt, mtcp_reset_conn), fail-open
and fail-closed after kill -9, and what each exit leaves attached. Through the real monitor
(mosxdp.cli -> engine.run.run -> LiveRun) and apps written against the public API only
(tests/netns/apps/*.py)::

    <p>-cli: cli0 <== veth ==> A [<p>-mon: mosxdp run APP --iface A --peer B] B <== veth ==> srv0 :<p>-srv

The endpoints carry an XDP_PASS program (a veth takes frames redirected into its peer
only when the receiving end runs XDP). The server namespace runs a dual-stack HTTP
server on every port the tests use (GET serves files, PUT answers the sha256 of the
body). A monitor is ready when both A and B carry an XDP program and its app has seen a
connection (the apps' --ready file, or flowdump's first stream file): before that a SYN
could still take the kernel path. The set-up (Bed, Monitor, Tcpdump) is livekit's.

Testbeds and monitors are shared per class (one app per class); every subprocess has a
timeout. Skipped only when a probe fails (not root, no netns, no bcc/libxdp/AF_XDP, a
tool missing); tests/conftest.py turns skips into failures with MOSXDP_REQUIRE_PRIVILEGED=1.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import livekit
import pytest
from livekit import APPS, PACED_RMEM, Bed, Tcpdump, sha256_bytes, sha256_file

pytestmark = pytest.mark.netns

PLAIN, BLOCKED, CSUM, NOCSUM, RST_SENDPKT, RST_CONN, CRASH = range(8080, 8087)
SERVER_PORTS = (PLAIN, BLOCKED, CSUM, NOCSUM, RST_SENDPKT, RST_CONN, CRASH)
MARKER = b"<<mosxdp-marker-0123456789>>"
REPLACEMENT = b"[[REWRITTEN by the mOS app]]"
assert len(MARKER) == len(REPLACEMENT)
SIZES = {"f1k": 1024, "f20m": 20 * 1024 * 1024}


# ------------------------------------------------------------------------------ probe
TOOLS = ("curl", "tcpdump", "tcpflow", "nstat", "ethtool")


@pytest.fixture(scope="module")
def live_env():
    livekit.require_live(TOOLS)


# ------------------------------------------------------------------------------ data
@pytest.fixture(scope="module")
def www(tmp_path_factory):
    """Served files: f1k and f20m (random), marked.bin (random with MARKER at 300 and
    700: one segment holds both)."""
    d = livekit.www_dir(tmp_path_factory.mktemp("www"), SIZES)
    body = bytearray(os.urandom(1024))
    for at in (300, 700):
        body[at:at + len(MARKER)] = MARKER
    assert bytes(body).count(MARKER) == 2
    (d / "marked.bin").write_bytes(bytes(body))
    return d


_client_ports = itertools.count(41000)


@pytest.fixture
def bed_factory(live_env, www, tmp_path_factory):
    """Testbeds that live as long as the requesting fixture/test."""
    made = []

    def make():
        bed = Bed.start(www, tmp_path_factory.mktemp("bed"), SERVER_PORTS)
        made.append(bed)
        return bed

    yield make
    for bed in made:
        bed.close()


@pytest.fixture(scope="class")
def class_bed(live_env, www, tmp_path_factory):
    bed = Bed.start(www, tmp_path_factory.mktemp("bed"), SERVER_PORTS)
    try:
        yield bed
    finally:
        bed.close()


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _read_counters(path: Path, key: str, at_least: int, timeout=5.0) -> dict:
    """The app's counters file once ``key`` reaches ``at_least`` (apps rewrite it on change)."""
    deadline = time.monotonic() + timeout
    while True:
        counters = _json(path)
        if counters.get(key, 0) >= at_least or time.monotonic() > deadline:
            return counters
        time.sleep(0.05)


def _counting_monitor(bed, app, *args):
    """A monitor running the test app APPS/``app``.py, whose counters file (its --log) is
    ``mon.counters``; closed at the end."""
    log = bed.out_path(f"{app}.json")
    mon = bed.monitor(APPS / f"{app}.py", *args, "--log", log)
    mon.counters = log
    try:
        yield mon
    finally:
        mon.close()


# ------------------------------------------------------------------------------ transfers
class TestTransfers:
    """Downloads and uploads through the inline monitor running a monitoring app
    (streamhash: sha256 of each direction's reassembled stream) arrive byte-identical; the
    app's own view of each flow matches what was transferred."""

    @pytest.fixture(scope="class")
    @classmethod
    def mon(cls, class_bed):
        log = class_bed.out_path("flows.jsonl")
        mon = class_bed.monitor(APPS / "streamhash.py", "--log", log)
        mon.flows = log
        try:
            yield mon
        finally:
            mon.close()

    @staticmethod
    def flow_record(mon, local_port, timeout=10.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            if mon.flows.exists():
                for line in mon.flows.read_text().splitlines():
                    rec = json.loads(line)
                    if rec["cli"][1] == local_port:
                        return rec
            assert time.monotonic() < deadline, \
                f"the app logged no flow from client port {local_port}:\n{mon.log()}"
            time.sleep(0.05)

    @staticmethod
    def split_head(rec, direction):
        """The HTTP header block at the start of one direction of the app's stream."""
        head = bytes.fromhex(rec[f"{direction}_head"])
        end = head.find(b"\r\n\r\n")
        assert end > 0, head
        return head[:end + 4]

    @pytest.mark.parametrize("family", [4, 6])
    @pytest.mark.parametrize("name", ["f1k", "f20m"])
    def test_download(self, class_bed, mon, www, family, name):
        port = next(_client_ports)
        r, out = class_bed.download(family, name, local_port=port)
        assert r.returncode == 0, f"curl: {r.stderr!r}\n{mon.log()}"
        assert sha256_file(out) == sha256_file(www / name)
        rec = self.flow_record(mon, port)
        assert rec["lost"] == 0, rec
        request = self.split_head(rec, "c2s")
        assert request.startswith(f"GET /{name} HTTP/1.1\r\n".encode()), request
        assert rec["c2s_len"] == len(request)
        headers = self.split_head(rec, "s2c")
        assert headers.startswith(b"HTTP/1.0 200 OK\r\n"), headers
        assert rec["s2c_len"] == len(headers) + SIZES[name]
        assert rec["s2c_sha256"] == sha256_bytes(headers + (www / name).read_bytes())

    @pytest.mark.parametrize("family", [4, 6])
    @pytest.mark.parametrize("name", ["f1k", "f20m"])
    def test_upload(self, class_bed, mon, www, family, name):
        port = next(_client_ports)
        body = (www / name).read_bytes()
        r = class_bed.upload(family, www / name, local_port=port)
        assert r.returncode == 0, f"curl: {r.stderr!r}\n{mon.log()}"
        assert r.stdout.decode() == sha256_bytes(body), "the server received other bytes"
        rec = self.flow_record(mon, port)
        assert rec["lost"] == 0, rec
        request = self.split_head(rec, "c2s")
        assert request.startswith(b"PUT /upload HTTP/1.1\r\n"), request
        assert f"Content-Length: {len(body)}\r\n".encode() in request
        assert rec["c2s_len"] == len(request) + len(body)
        assert rec["c2s_sha256"] == sha256_bytes(request + body)
        headers = self.split_head(rec, "s2c")
        assert rec["s2c_len"] == len(headers) + 64

    def test_sigint_leaves_the_link_up_until_detach(self, class_bed, mon, www):
        """A normal exit (SIGINT) leaves the program attached to A and B as the kernel's
        forwarder: a download still arrives; `mosxdp detach` removes it and cuts the link."""
        assert class_bed.xdp_prog_ids() == mon.prog_ids
        rc = mon.stop(signal.SIGINT)
        assert rc == 0, mon.log()
        assert class_bed.xdp_prog_ids() == mon.prog_ids, mon.log()
        assert livekit.LEFT_FAIL_OPEN in mon.log(), mon.log()
        r, out = class_bed.download(4, "f1k", max_time=5)
        assert r.returncode == 0 and sha256_file(out) == sha256_file(www / "f1k"), r
        r = class_bed.detach()
        assert r.returncode == 0 and livekit.LINK_CUT in r.stderr, (r.stdout, r.stderr)
        assert class_bed.xdp_attached() == set()
        # the kernel path between A and B is gone with the program
        r, _ = class_bed.download(4, "f1k", max_time=2)
        assert r.returncode == 28, r


# ------------------------------------------------------------------------------ flowdump
class TestFlowdumpLive:
    """`mosxdp run flowdump` live inline writes exactly the bytes transferred:
    its files for a flow equal tcpflow's on a tcpdump capture taken in the server
    namespace, and hold the HTTP request/response around the served file."""

    def test_flowdump_matches_capture(self, class_bed, www):
        from mosxdp.apps.flowdump import endpoint_name
        bed = class_bed
        tb = bed.tb
        outdir = bed.out_path("flowdump")
        mon = bed.monitor("flowdump", "--outdir", outdir,
                          ready=lambda: outdir.exists() and any(outdir.iterdir()))
        cap = bed.out_path("server.pcap")
        ports = {"download": next(_client_ports), "upload": next(_client_ports)}
        try:
            dump = Tcpdump(bed, "srv", tb.srv_if, cap, f"tcp port {ports['download']} or tcp port "
                                                       f"{ports['upload']}", "-B", 32768)
            r, out = bed.download(4, "f20m", local_port=ports["download"])
            assert r.returncode == 0, r.stderr
            assert sha256_file(out) == sha256_file(www / "f20m")
            r = bed.upload(6, www / "f20m", local_port=ports["upload"])
            assert r.returncode == 0, r.stderr
            stats = dump.stop(settle=0.3)  # the last FIN/ACKs
            captured = re.search(r"^(\d+) packets captured$", stats, re.M)
            received = re.search(r"^(\d+) packets received by filter$", stats, re.M)
            assert captured and received and captured[1] == received[1], stats
            assert re.search(r"^0 packets dropped by kernel$", stats, re.M), stats
            assert mon.stop(signal.SIGINT) == 0, mon.log()
        finally:
            mon.close()
        ref = bed.out_path("tcpflow")
        r = subprocess.run(["tcpflow", "-r", cap, "-o", ref], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr

        served = (www / "f20m").read_bytes()
        flows = {
            "download": (endpoint_name(tb.cli_ip, ports["download"]), endpoint_name(tb.srv_ip, PLAIN)),
            "upload": (endpoint_name(tb.cli_ip6, ports["upload"]), endpoint_name(tb.srv_ip6, PLAIN)),
        }
        for what, (cli, srv) in flows.items():
            c2s, s2c = f"{cli}-{srv}", f"{srv}-{cli}"
            live = {p.name for p in outdir.iterdir() if cli in p.name}
            offline = {p.name for p in ref.iterdir() if cli in p.name}
            assert live == {c2s, s2c}, (what, live)
            assert offline == live, (what, offline, live)
            for name in live:
                assert sha256_file(outdir / name) == sha256_file(ref / name), \
                    f"{what}: flowdump's {name} differs from tcpflow's on the capture"
            if what == "download":
                request, response = (outdir / c2s).read_bytes(), (outdir / s2c).read_bytes()
                assert request.startswith(b"GET /f20m HTTP/1.1\r\n") and request.endswith(b"\r\n\r\n")
                header_end = response.index(b"\r\n\r\n") + 4
                assert response.startswith(b"HTTP/1.0 200 OK\r\n")
                assert response[header_end:] == served
            else:
                request, response = (outdir / c2s).read_bytes(), (outdir / s2c).read_bytes()
                header_end = request.index(b"\r\n\r\n") + 4
                assert request.startswith(b"PUT /upload HTTP/1.1\r\n")
                assert request[header_end:] == served
                assert response.endswith(b"\r\n\r\n" + sha256_bytes(served).encode())


# ------------------------------------------------------------------------------ SYN drop
class TestDropSyn:
    """A callback that drops SYNs (MOS_DROP at CONN_START/HK_SND, then PKT_IN for
    the retransmitted SYNs) makes curl to that port fail while another port works."""

    @pytest.fixture(scope="class")
    @classmethod
    def mon(cls, class_bed):
        yield from _counting_monitor(class_bed, "dropsyn", "--port", BLOCKED)

    @pytest.mark.parametrize("family", [4, 6])
    def test_blocked_port_fails_other_port_works(self, class_bed, mon, www, family):
        bed = class_bed
        before = _json(mon.counters).get("syn_dropped", 0)
        opens = bed.nstat("srv", "TcpPassiveOpens")
        r = bed.curl("--connect-timeout", 3, "-o", "/dev/null", bed.url(family, "f1k", BLOCKED),
                     timeout=30)
        assert r.returncode == 28, f"curl to the blocked port: rc {r.returncode} {r.stderr!r}"
        assert bed.nstat("srv", "TcpPassiveOpens") == opens, "a connection reached the server"
        # the first SYN and at least one retransmission were dropped
        counters = _read_counters(mon.counters, "syn_dropped", before + 2)
        assert counters["syn_dropped"] >= before + 2, (counters, mon.log())
        r, out = bed.download(family, "f1k", "--connect-timeout", 5)
        assert r.returncode == 0, r.stderr
        assert sha256_file(out) == sha256_file(www / "f1k")
        assert bed.nstat("srv", "TcpPassiveOpens") == opens + 1


# ------------------------------------------------------------------------------ raw ARP
class TestRawArp:
    """An AF_INET raw socket with raw_pkt_filter "arp" sees the ARP frames live (non-IP
    frames leave the kernel for a raw socket's filter) and they are forwarded."""

    @pytest.fixture(scope="class")
    @classmethod
    def mon(cls, class_bed):
        yield from _counting_monitor(class_bed, "rawarp")

    def test_arp_reaches_the_raw_socket_and_is_forwarded(self, class_bed, mon, www):
        bed = class_bed
        before = _json(mon.counters).get("arp", 0)
        bed.sh("cli", "ip", "neigh", "flush", "all")
        r, out = bed.download(4, "f1k", "--connect-timeout", 5)
        assert r.returncode == 0, r.stderr          # the client's ARP request got its answer
        assert sha256_file(out) == sha256_file(www / "f1k")
        counters = _read_counters(mon.counters, "arp", before + 2)
        assert counters["arp"] >= before + 2, (counters, mon.log())   # request and reply
        assert counters["not_arp"] == 0, counters


# ------------------------------------------------------------------------------ overwrite
class TestOverwrite:
    """MARKER in the server's response is overwritten at MOS_HK_SND with
    same-length bytes; with MOS_UPDATE_TCP_CHKSUM the client receives them, without it
    the client's kernel drops the segment (TcpInCsumErrors grows) and the transfer
    stalls: the modified bytes never arrive."""

    @pytest.fixture(scope="class")
    @classmethod
    def mon(cls, class_bed):
        yield from _counting_monitor(class_bed, "overwrite", "--marker", MARKER.decode(),
                                     "--replacement", REPLACEMENT.decode(), "--csum-port", CSUM,
                                     "--nocsum-port", NOCSUM)

    @pytest.mark.parametrize("family", [4, 6])
    def test_with_checksum_update_arrives_modified(self, class_bed, mon, www, family):
        bed = class_bed
        before = _json(mon.counters).get("csum", 0)
        errors = bed.nstat("cli", "TcpInCsumErrors")
        r, out = bed.download(family, "marked.bin", port=CSUM)
        assert r.returncode == 0, f"{r.stderr!r}\n{mon.log()}"
        original = (www / "marked.bin").read_bytes()
        got = out.read_bytes()
        assert got == original.replace(MARKER, REPLACEMENT), "not exactly the overwritten bytes"
        assert got.count(REPLACEMENT) == 2 and MARKER not in got
        assert bed.nstat("cli", "TcpInCsumErrors") == errors
        assert _read_counters(mon.counters, "csum", before + 2)["csum"] >= before + 2
        # the same file from a port the app leaves alone is untouched
        r, out = bed.download(family, "marked.bin", port=PLAIN)
        assert r.returncode == 0 and out.read_bytes() == original

    @pytest.mark.parametrize("family", [4, 6])
    def test_without_checksum_update_is_dropped(self, class_bed, mon, family):
        bed = class_bed
        before = _json(mon.counters).get("nocsum", 0)
        errors = bed.nstat("cli", "TcpInCsumErrors")
        r, out = bed.download(family, "marked.bin", port=NOCSUM, max_time=3)
        assert r.returncode == 28, f"expected a stall (28), got {r.returncode}: {r.stderr!r}"
        got = out.read_bytes() if out.exists() else b""
        assert REPLACEMENT not in got and MARKER not in got, got[:200]
        # the segment and its retransmissions were overwritten, and each was dropped
        counters = _read_counters(mon.counters, "nocsum", before + 2)
        assert counters["nocsum"] >= before + 2, counters
        grown = bed.nstat("cli", "TcpInCsumErrors") - errors
        assert grown >= 2, f"TcpInCsumErrors grew by {grown}"


# ------------------------------------------------------------------------------ resets
class TestReset:
    """An RST built from mtcp_getlastpkt and sent with mtcp_sendpkt, and
    mtcp_reset_conn, reset a running 20 MB download after its first MB."""

    @pytest.fixture(scope="class")
    @classmethod
    def mon(cls, class_bed):
        yield from _counting_monitor(class_bed, "reset", "--sendpkt-port", RST_SENDPKT,
                                     "--reset-conn-port", RST_CONN, "--after", 1 << 20)

    @pytest.mark.parametrize("family", [4, 6])
    @pytest.mark.parametrize("port,key", [(RST_SENDPKT, "sendpkt_rst"), (RST_CONN, "reset_conn")],
                             ids=["sendpkt", "reset_conn"])
    def test_rst_resets_running_download(self, class_bed, mon, family, port, key):
        bed = class_bed
        before = _json(mon.counters).get(key, 0)
        resets = {ns: bed.nstat(ns, "TcpEstabResets") for ns in ("cli", "srv")}
        r, out = bed.download(family, "f20m", port=port, max_time=20)
        assert r.returncode == 56, f"curl rc {r.returncode}: {r.stderr!r}\n{mon.log()}"
        assert b"Connection reset by peer" in r.stderr, r.stderr
        size = out.stat().st_size if out.exists() else 0
        # The reset comes at a server segment at stream offset >= 1 MiB, and the stream
        # starts with the HTTP response header (well under 1 KiB), which is not in the file.
        assert (1 << 20) - 1024 <= size < SIZES["f20m"], size
        assert _read_counters(mon.counters, key, before + 1)[key] >= before + 1
        # both kernels saw their established connection reset
        for ns in ("cli", "srv"):
            assert bed.nstat(ns, "TcpEstabResets") > resets[ns], ns


# ------------------------------------------------------------------------------ fail-open/closed
@pytest.mark.parametrize("fail_closed", [False, True], ids=["fail-open", "fail-closed"])
def test_kill9_mid_transfer(bed_factory, www, fail_closed):
    """kill -9 of the monitor mid-transfer: the program stays attached; the
    transfer completes through the kernel path (fail-open) or stalls (--fail-closed)."""
    bed = bed_factory()
    # tcp_rmem's maximum here is 32 MB: the client kernel would take the whole file at
    # wire speed while curl reads it slowly. A small receive buffer paces the wire.
    bed.sh("cli", "sysctl", "-qw", f"net.ipv4.tcp_rmem={PACED_RMEM}")
    log = bed.out_path("flows.jsonl")
    mon = bed.monitor(APPS / "streamhash.py", "--log", log,
                      *(["--fail-closed"] if fail_closed else []))
    out = bed.out_path("kill9.out")
    size = lambda: out.stat().st_size if out.exists() else 0  # noqa: E731
    try:
        # 20 MB at 6 MB/s: about 3.5 s; the monitor dies after 1 s.
        curl = bed.tb.popen("cli", ["curl", "-sS", "-g", "--fail", "--limit-rate", "6M",
                                    "--max-time", "30", "-o", out, bed.url(4, "f20m")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.0)
        assert curl.poll() is None, "the transfer ended before the kill"
        mon.send_signal(signal.SIGKILL)
        assert mon.wait(10) == -signal.SIGKILL
        at_kill = size()
        before = bed.xdp_counters()  # from here on no socket is bound
        assert bed.xdp_attached() == {bed.tb.iface_a, bed.tb.iface_b}, \
            "the XDP program must stay attached when the monitor dies"
        if fail_closed:
            # what was in the client's small receive buffer trickles out, then nothing
            time.sleep(0.5)
            stalled_at = size()
            time.sleep(2.5)
            assert curl.poll() is None, f"curl ended ({curl.returncode}) although the path is closed"
            stalled = (stalled_at, size())
            bed.tb.stop(curl, signal.SIGKILL)
        else:
            _, err = curl.communicate(timeout=60)
        after = bed.xdp_counters()
    finally:
        mon.close()
    delta = {k: after[k] - before.get(k, 0) for k in after}
    assert at_kill < SIZES["f20m"] * 3 // 4, f"{at_kill} bytes already there at the kill"
    if fail_closed:
        assert stalled[0] == stalled[1] < SIZES["f20m"], (at_kill, stalled)
        # frames meant for the (gone) sockets were dropped, none took the kernel path
        assert delta["fail_closed_drop"] > 0 and delta["no_xsk_fallback"] == 0, delta
    else:
        assert curl.returncode == 0, f"{err!r}; {delta}\n{mon.log()}"
        assert sha256_file(out) == sha256_file(www / "f20m")
        # the rest of the file took the kernel path (no socket left in the XSKMAP)
        assert delta["no_xsk_fallback"] > 1000, delta
        assert delta["fail_closed_drop"] == 0, delta


# ------------------------------------------------------------------------------ exits
class TestExits:
    """What each exit leaves on A and B: after SIGTERM, also right after the attach, and
    after an exception in a callback (--on-callback-error stop) the program stays as the
    kernel's forwarder (fail-open, said in one line) until `mosxdp detach`; an exception
    in the app's setup (before anything is attached) and --detach-on-exit leave nothing.
    (SIGINT: TestTransfers.test_sigint_leaves_the_link_up_until_detach.)"""

    @staticmethod
    def assert_left_fail_open(bed, mon):
        assert bed.xdp_prog_ids() == mon.prog_ids, mon.log()
        assert livekit.LEFT_FAIL_OPEN in mon.log(), mon.log()
        r = bed.detach()
        assert r.returncode == 0 and livekit.LINK_CUT in r.stderr, (r.stdout, r.stderr)
        assert bed.xdp_attached() == set()

    def test_sigterm(self, class_bed, www):
        bed = class_bed
        mon = bed.monitor(APPS / "streamhash.py", "--log", bed.out_path("flows.jsonl"))
        try:
            r, out = bed.download(6, "f1k")
            assert r.returncode == 0 and sha256_file(out) == sha256_file(www / "f1k")
            assert mon.stop(signal.SIGTERM) == 0, mon.log()
        finally:
            mon.close()
        self.assert_left_fail_open(bed, mon)

    def test_sigterm_right_after_attach(self, class_bed):
        """SIGTERM as soon as the programs are attached, before the monitor's loop (and its
        own signal handling) runs: the monitor unwinds and leaves the program all the same."""
        bed = class_bed
        mon = bed.monitor(APPS / "streamhash.py", "--log", bed.out_path("flows.jsonl"),
                          ready=False)
        try:
            mon.wait_attached()
            rc = mon.stop(signal.SIGTERM)
        finally:
            mon.close()
        assert rc in (0, 130), f"rc {rc}:\n{mon.log()}"
        self.assert_left_fail_open(bed, mon)

    def test_detach_on_exit(self, class_bed):
        bed = class_bed
        mon = bed.monitor(APPS / "streamhash.py", "--log", bed.out_path("flows.jsonl"),
                          "--detach-on-exit")
        try:
            assert mon.stop(signal.SIGTERM) == 0, mon.log()
        finally:
            mon.close()
        assert bed.xdp_attached() == set(), mon.log()
        assert "detached from %s and %s (--detach-on-exit)" % (bed.tb.iface_a, bed.tb.iface_b) \
            in mon.log(), mon.log()

    def test_exception_in_setup(self, class_bed):
        bed = class_bed
        mon = bed.monitor(APPS / "crash.py", "--raise-in", "setup", ready=False)
        try:
            rc = mon.wait(60)
        finally:
            mon.close()
        assert rc == 1, mon.log()
        assert "raised in setup" in mon.log()
        assert bed.xdp_attached() == set(), mon.log()

    def test_exception_in_callback_with_stop(self, class_bed):
        bed = class_bed
        mon = bed.monitor(APPS / "crash.py", "--raise-in", "callback", "--port", CRASH,
                          "--on-callback-error", "stop")
        try:
            bed.curl("--max-time", 3, "-o", "/dev/null", bed.url(4, "f1k", CRASH), timeout=20)
            rc = mon.wait(30)
        finally:
            mon.close()
        assert rc == 1, mon.log()
        assert "raised in the CONN_START callback" in mon.log(), mon.log()
        self.assert_left_fail_open(bed, mon)
