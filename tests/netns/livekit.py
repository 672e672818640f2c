"""Helpers shared by the netns tier's live tests and scripts/soak.py (which puts this
folder on sys.path): the environment probe and its skip-or-fail, XDP_PASS programs on the
endpoint veths, the monitor interfaces' `prog/xdp` readiness, the server namespace routed
to a NAT address only, kernel SNMP counters, sha256 digests, a process's RSS, a polling
wait, and HOLD (a client that holds a connection open)."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


# ------------------------------------------------------------------------------ probe
def probe(tools=(), *, libbpf: bool = False) -> str | None:
    """None when the live datapath can run here (root, netns, libxdp, AF_XDP sockets, the
    XDP program buildable, every one of ``tools`` installed), else why not."""
    if os.geteuid() != 0:
        return "not root"
    try:
        from mosxdp.demo import testbed
    except Exception as exc:  # pragma: no cover - an import error is a bug: show it
        return f"mosxdp.demo.testbed not importable: {exc}"
    why = testbed.probe()
    if why:
        return why
    from mosxdp.io import libxdp
    try:
        libxdp.load()
    except libxdp.LibxdpMissing as exc:
        return str(exc)
    try:
        socket.socket(libxdp.AF_XDP, socket.SOCK_RAW, 0).close()
    except OSError as exc:
        return f"no AF_XDP sockets in this kernel: {exc}"
    try:
        from mosxdp.io import libbpf as libbpf_binding, xdp
        xdp.check_privileges()
        xdp.check_environment()
        if libbpf:
            libbpf_binding.load()
    except Exception as exc:
        return f"the XDP program cannot be built here: {exc}"
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


_PROBED: dict = {}


def require_live(tools=(), *, libbpf: bool = False) -> None:
    """Skip the requesting test when `probe` fails (probed once per argument set); with
    MOSXDP_REQUIRE_PRIVILEGED=1 fail instead."""
    import pytest
    key = (tuple(tools), libbpf)
    if key not in _PROBED:
        _PROBED[key] = probe(tools, libbpf=libbpf)
    why = _PROBED[key]
    if why is None:
        return
    if os.environ.get("MOSXDP_REQUIRE_PRIVILEGED") == "1":
        pytest.fail(f"netns tier required (MOSXDP_REQUIRE_PRIVILEGED=1) but: {why}", pytrace=False)
    pytest.skip(why)


# ------------------------------------------------------------------------------ digests
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ testbed
def attach_pass_programs(tb, *, subprocess: bool = False) -> None:
    """XDP_PASS on cli0 and srv0 (a veth takes frames redirected into its peer only when
    the receiving end runs XDP): from this process into each namespace, or with
    ``subprocess`` from a Python run inside each namespace."""
    from mosxdp.demo.passprog import attach_to_endpoints
    attach_to_endpoints(tb, python=PY if subprocess else None)


def route_via_nat(tb, nat_ip: str) -> None:
    """The server namespace routes to ``nat_ip`` only (a host route and a static neighbour:
    the client's MAC, as the inline monitor forwards frames unchanged), not to the client's
    network: it can answer the client only through a NAT. The client gets a static
    neighbour for the server (no ARP through the monitor)."""
    def ip(ns, *argv, check=True):
        r = tb.run(ns, ["ip", *argv], capture_output=True, text=True, timeout=10)
        assert not check or r.returncode == 0, f"ip {' '.join(argv)} in {ns}: {r.stderr.strip()}"
        return r
    ip("srv", "route", "del", f"10.77.0.0/{tb.prefixlen}", "dev", tb.srv_if)
    ip("srv", "route", "add", f"{nat_ip}/32", "dev", tb.srv_if)
    ip("srv", "neigh", "replace", nat_ip, "lladdr", tb.cli_mac, "dev", tb.srv_if, "nud", "permanent")
    ip("cli", "neigh", "replace", tb.srv_ip, "lladdr", tb.srv_mac, "dev", tb.cli_if, "nud", "permanent")
    r = ip("srv", "route", "get", tb.cli_ip, check=False)
    assert r.returncode != 0, f"the server still routes to the client: {r.stdout}"
    assert tb.srv_if in ip("srv", "route", "get", nat_ip).stdout


def xdp_attached(tb, *, check: bool = True, timeout: float | None = 10) -> set:
    """The monitor interfaces (A, B) that carry an XDP program (`ip -d link` shows prog/xdp)."""
    found = set()
    for ifname in (tb.iface_a, tb.iface_b):
        r = tb.run("mon", ["ip", "-d", "link", "show", ifname], capture_output=True,
                   text=True, timeout=timeout)
        if check:
            assert r.returncode == 0, f"ip -d link show {ifname} in mon: {r.stderr.strip()}"
        if "prog/xdp" in r.stdout:
            found.add(ifname)
    return found


def xdp_on_both(tb, timeout: float | None = None) -> bool:
    """At least two links of the monitor namespace carry an XDP program."""
    r = tb.run("mon", ["ip", "-d", "link", "show"], capture_output=True, text=True,
               timeout=timeout)
    return r.stdout.count("prog/xdp") >= 2


def nstat(tb, ns: str, name: str, timeout: float = 10) -> int:
    """A kernel SNMP counter (absolute value) in namespace ``ns``."""
    r = tb.run(ns, ["nstat", "-asz", name], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"nstat -asz {name} in {ns}: {r.stderr.strip()}"
    for line in r.stdout.splitlines():
        fields = line.split()
        if fields and fields[0] == name:
            return int(fields[1])
    raise AssertionError(f"nstat has no {name}: {r.stdout!r}")


# ------------------------------------------------------------------------------ processes
def rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def wait_until(what, cond, timeout, alive=None, step=0.05):
    """Poll ``cond()`` until it is true (returned); ``alive()`` is called between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if alive is not None:
            alive()
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(step)


# ------------------------------------------------------------------------------ clients
# HOST PORT LOCAL SECS [PATH [BEFORE]]: connect from port LOCAL (0: any) and hold the
# connection open SECS seconds; with a PATH: first wait BEFORE seconds (default 0), GET
# it, read to the server's FIN ("eof" on stdout), then hold the half-closed connection
# open SECS seconds before closing our side.
HOLD = r'''
import socket, sys, time
host, port, local, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", local))
s.settimeout(secs + 10)
s.connect((host, port))
if len(sys.argv) > 5:
    time.sleep(float(sys.argv[6]) if len(sys.argv) > 6 else 0.0)
    s.sendall(f"GET /{sys.argv[5]} HTTP/1.0\r\n\r\n".encode())
    while s.recv(65536):
        pass
    print("eof", flush=True)
time.sleep(secs)
s.close()
'''
