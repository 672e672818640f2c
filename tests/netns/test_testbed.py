"""mosxdp.demo.testbed: real namespaces and veths (root).

Skips only when the probe fails (not root, no network namespaces, no veth); with
MOSXDP_REQUIRE_PRIVILEGED=1 a failed probe is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mosxdp.demo import testbed
from mosxdp.demo.testbed import Testbed, cleanup_stale, probe

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def netns_env():
    why = probe()
    if why is None:
        return
    if os.environ.get("MOSXDP_REQUIRE_PRIVILEGED") == "1":
        pytest.fail(f"netns tier required (MOSXDP_REQUIRE_PRIVILEGED=1) but: {why}", pytrace=False)
    pytest.skip(why)


def netns_list() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


PING_PY = textwrap.dedent(r'''
    import os, socket, struct, sys, time
    dst = sys.argv[1]
    v6 = ":" in dst
    fam, proto, typ = ((socket.AF_INET6, socket.IPPROTO_ICMPV6, 128) if v6
                       else (socket.AF_INET, socket.IPPROTO_ICMP, 8))
    s = socket.socket(fam, socket.SOCK_RAW, proto)
    s.settimeout(2)
    ident = os.getpid() & 0xFFFF
    body = struct.pack("!BBHHH", typ, 0, 0, ident, 1) + b"mosxdp-ping!"  # even length
    if not v6:  # ICMPv6 checksums are filled in by the kernel
        c = sum(struct.unpack("!%dH" % (len(body) // 2), body))
        c = (c & 0xFFFF) + (c >> 16); c = (c & 0xFFFF) + (c >> 16)
        body = body[:2] + struct.pack("!H", ~c & 0xFFFF) + body[4:]
    s.sendto(body, (dst, 0))
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        data, addr = s.recvfrom(2048)
        icmp = data if v6 else data[(data[0] & 15) * 4:]
        if icmp[0] == (129 if v6 else 0) and struct.unpack("!H", icmp[4:6])[0] == ident:
            sys.exit(0)
    sys.exit(1)
''')


def ping(tb: Testbed, ns: str, dst: str) -> bool:
    if shutil.which("ping"):
        argv = ["ping", "-c", "1", "-W", "2", dst]
    else:
        argv = [sys.executable, "-c", PING_PY, dst]
    return tb.run(ns, argv, capture_output=True, timeout=10).returncode == 0


def ip_json(tb: Testbed, ns: str, *args) -> list:
    return json.loads(tb.run(ns, ["ip", "-j", *args], capture_output=True, text=True,
                             check=True).stdout)


def tcp_connect(tb: Testbed, ns: str, host: str, port: int) -> str:
    code = ("import socket,sys\n"
            "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)\n"
            " print('connected')\n"
            "except ConnectionRefusedError: print('refused')\n"
            "except OSError: print('timeout')\n")
    return tb.run(ns, [sys.executable, "-c", code, host, str(port)], capture_output=True,
                  text=True, timeout=10).stdout.strip()


def until_refused(tb: Testbed, ns: str, host: str, port: int, seconds: float = 15) -> bool:
    """Whether a connection to the closed port is refused (it got there) within seconds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if tcp_connect(tb, ns, host, port) == "refused":
            return True
    return False


# ---------------------------------------------------------------------------


def test_direct_connectivity_ping_and_http(tmp_path):
    content = os.urandom(150_000)
    (tmp_path / "blob.bin").write_bytes(content)
    with Testbed(kind="direct") as tb:
        assert ping(tb, "cli", tb.srv_ip)
        assert ping(tb, "srv", tb.cli_ip6)
        srv = tb.popen("srv", [sys.executable, "-m", "http.server", "8000", "--bind", "::",
                               "--directory", str(tmp_path)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tb.wait_listen("srv", 8000)
        for host in (tb.srv_ip, f"[{tb.srv_ip6}]"):
            out = tmp_path / "got.bin"
            r = tb.run("cli", ["curl", "-sS", "--fail", "-g", "-o", str(out),
                               f"http://{host}:8000/blob.bin"], capture_output=True, text=True,
                       timeout=30)
            assert r.returncode == 0, r.stderr
            assert out.read_bytes() == content
            out.unlink()
        assert tb.stop(srv) is not None
        # the server namespace cannot reach the root namespace's addresses: isolated
        assert ip_json(tb, "cli", "route", "show", "default") == []


def test_direct_layout_addresses_offloads():
    with Testbed(kind="direct") as tb:
        assert tb.cli_ns == f"{tb.prefix}-cli" and tb.srv_ns == f"{tb.prefix}-srv"
        assert tb.mon_ns is None and tb.iface_a is None and tb.iface_b is None
        assert {tb.cli_ns, tb.srv_ns} <= netns_list()
        for ns, ifn, ip4, ip6, mac in ((tb.cli_ns, tb.cli_if, tb.cli_ip, tb.cli_ip6, tb.cli_mac),
                                       (tb.srv_ns, tb.srv_if, tb.srv_ip, tb.srv_ip6, tb.srv_mac)):
            (link,) = ip_json(tb, ns, "addr", "show", "dev", ifn)
            assert link["mtu"] == 1500 and link["operstate"] == "UP"
            assert link["address"] == mac
            addrs = {(a["family"], a["local"], a["prefixlen"]) for a in link["addr_info"]}
            assert ("inet", ip4, 24) in addrs and ("inet6", ip6, 64) in addrs
            feats = tb.run(ns, ["ethtool", "-k", ifn], capture_output=True, text=True).stdout
            for f in ("tx-checksumming", "tcp-segmentation-offload",
                      "generic-segmentation-offload", "generic-receive-offload"):
                assert f"{f}: off" in feats, f
        assert tb.ns_exec_argv("cli") == ["ip", "netns", "exec", tb.cli_ns]
        assert tb.ns_exec_argv(tb.srv_ns) == ["ip", "netns", "exec", tb.srv_ns]
        assert testbed.ns_exec_argv(None) == []
        with pytest.raises(ValueError):
            tb.ns("mon")
        assert len(tb.prefix) + 1 <= 15


def test_inline_layout_and_kernel_forwarding():
    with Testbed(kind="inline") as tb:
        assert tb.mon_ns == f"{tb.prefix}-mon"
        assert (tb.iface_a, tb.iface_b) == (f"{tb.prefix}a", f"{tb.prefix}b")
        assert max(len(tb.iface_a), len(tb.iface_b)) <= 15
        links = {l["ifname"]: l for l in ip_json(tb, "mon", "addr")}
        for ifn in (tb.iface_a, tb.iface_b):
            assert links[ifn]["operstate"] == "UP" and links[ifn]["mtu"] == 1500
            assert links[ifn]["addr_info"] == []  # no IPv4, no IPv6 (not even link-local)
        # nothing forwards between a and b until something does
        assert tcp_connect(tb, "cli", tb.srv_ip, 9) == "timeout"
        tb.kernel_forward()
        # The failed attempt above left the server's neighbour entry FAILED: under load
        # the next resolution can take longer than one connect's second, so retry.
        assert until_refused(tb, "cli", tb.srv_ip, 9)
        assert ping(tb, "cli", tb.srv_ip6)
        tb.kernel_forward(False)
        assert tcp_connect(tb, "cli", tb.srv_ip, 9) == "timeout"


def test_rx_queues():
    with Testbed(kind="inline", rx_queues=4) as tb:
        for ns, ifn in ((tb.cli_ns, tb.cli_if), (tb.mon_ns, tb.iface_a),
                        (tb.mon_ns, tb.iface_b), (tb.srv_ns, tb.srv_if)):
            q = tb.run(ns, ["ls", f"/sys/class/net/{ifn}/queues"], capture_output=True,
                       text=True).stdout.split()
            assert sum(x.startswith("rx-") for x in q) == 4, (ifn, q)
            assert sum(x.startswith("tx-") for x in q) == 4, (ifn, q)


def test_ipv6_off():
    with Testbed(kind="direct", ipv6=False) as tb:
        assert tb.cli_ip6 is None
        (link,) = ip_json(tb, "cli", "addr", "show", "dev", tb.cli_if)
        assert {a["family"] for a in link["addr_info"]} == {"inet"}
        assert ping(tb, "cli", tb.srv_ip)


def test_two_testbeds_coexist():
    with Testbed() as a, Testbed() as b:
        assert a.prefix != b.prefix
        assert ping(a, "cli", a.srv_ip) and ping(b, "cli", b.srv_ip)


# ---------------------------------------------------------------------------
# cleanup


def test_cleanup_after_exit_kills_processes():
    with Testbed(kind="inline") as tb:
        names = set(tb.namespaces)
        p = tb.popen("srv", ["sleep", "300"])
        # a grandchild that is not ours at all: found through `ip netns pids`
        tb.run("cli", ["sh", "-c", "setsid sleep 301 </dev/null >/dev/null 2>&1 &"], check=True)
        time.sleep(0.2)
        orphans = [int(x) for x in subprocess.run(["ip", "netns", "pids", tb.cli_ns],
                                                  capture_output=True, text=True).stdout.split()]
        assert orphans
        assert names <= netns_list()
    assert not names & netns_list()
    assert p.poll() is not None
    deadline = time.monotonic() + 3
    while any(alive(x) for x in orphans) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(x) for x in orphans)
    assert not os.path.exists(os.path.join(testbed.STATE_DIR, tb.prefix))
    with pytest.raises(testbed.TestbedError):
        tb.popen("cli", ["true"])


def test_cleanup_after_an_exception():
    with pytest.raises(RuntimeError, match="boom"):
        with Testbed(kind="inline") as tb:
            names = set(tb.namespaces)
            assert names <= netns_list()
            raise RuntimeError("boom")
    assert not names & netns_list()


def test_cleanup_when_setup_fails(monkeypatch):
    def broken(self):
        raise testbed.TestbedError("injected failure")
    tb = Testbed(kind="direct")
    orig = Testbed._wait_carrier
    monkeypatch.setattr(Testbed, "_wait_carrier", broken)
    with pytest.raises(testbed.TestbedError, match="injected"):
        with tb:
            pass
    monkeypatch.setattr(Testbed, "_wait_carrier", orig)
    assert not set(tb.namespaces) & netns_list()


CHILD = textwrap.dedent('''
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from mosxdp.demo.testbed import Testbed
    with Testbed(kind=sys.argv[2]) as tb:
        tb.popen("srv", ["sleep", "300"])
        print(tb.prefix, flush=True)
        time.sleep(300)
''')


def start_child(kind="inline"):
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), kind], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    prefix = p.stdout.readline().strip()
    assert prefix, "child did not build a testbed"
    return p, prefix


def names_of(prefix):
    return {f"{prefix}-cli", f"{prefix}-srv", f"{prefix}-mon"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_cleanup_on_signal(sig):
    p, prefix = start_child()
    assert names_of(prefix) <= netns_list()
    p.send_signal(sig)
    assert p.wait(20) != 0
    p.stdout.close()
    assert not names_of(prefix) & netns_list()


def test_cleanup_stale_after_sigkill():
    p, prefix = start_child()
    p.kill()
    p.wait(10)
    p.stdout.close()
    assert names_of(prefix) <= netns_list()  # SIGKILL: nothing could clean up
    removed = cleanup_stale()
    assert names_of(prefix) <= set(removed)
    assert not names_of(prefix) & netns_list()


def test_cleanup_stale_by_prefix_and_live_beds_are_kept():
    p, prefix = start_child(kind="direct")
    try:
        with Testbed() as mine:
            cleanup_stale()  # the child is alive and so are we: nothing removed
            assert {f"{prefix}-cli", f"{prefix}-srv"} <= netns_list()
            assert set(mine.namespaces) <= netns_list()
            removed = cleanup_stale(prefix)
            assert {f"{prefix}-cli", f"{prefix}-srv"} == set(removed)
            assert not {f"{prefix}-cli", f"{prefix}-srv"} & netns_list()
            assert set(mine.namespaces) <= netns_list()
    finally:
        p.kill()
        p.wait(10)
        p.stdout.close()
        cleanup_stale(prefix)
