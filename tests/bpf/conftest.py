"""Fixtures of the bpf tier: a probe (root, bcc, kernel headers, libbpf) and test devices.

A failed probe skips the tier, or fails it when MOSXDP_REQUIRE_PRIVILEGED=1 (CI, where
skipping silently would hide a broken datapath).
"""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

pytestmark = pytest.mark.bpf


def _probe() -> str | None:
    """Why the bpf tier cannot run here, or None."""
    try:
        from mosxdp.io import libbpf, xdp
    except Exception as e:  # pragma: no cover - import problems are bugs, show them
        return "mosxdp.io.xdp not importable: %s" % e
    try:
        xdp.check_privileges()
        xdp.check_environment()
        libbpf.load()
    except xdp.XdpError as e:
        return str(e)
    if subprocess.run(["ip", "-V"], capture_output=True).returncode != 0:
        return "iproute2 (`ip`) not available"
    return None


def require_privileged(reason: str | None) -> None:
    """Skip on a failed probe, or fail when MOSXDP_REQUIRE_PRIVILEGED=1."""
    if reason is None:
        return
    if os.environ.get("MOSXDP_REQUIRE_PRIVILEGED") == "1":
        pytest.fail("bpf tier required (MOSXDP_REQUIRE_PRIVILEGED=1) but: " + reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def bpf_env():
    require_privileged(_probe())


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class NetDevs:
    """Uniquely named test devices in the current network namespace.

    a <-> pa   veth pair, 2 RX/TX queues each (a: the monitored side)
    b <-> pb   veth pair, 2 RX/TX queues each (b: the inline peer)
    d          ifb device (no native XDP)
    """

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.a, self.pa = "mx%sa" % tag, "mx%sA" % tag
        self.b, self.pb = "mx%sb" % tag, "mx%sB" % tag
        self.d = "mx%sd" % tag
        self.created: list[str] = []

    def create(self) -> "NetDevs":
        for x, y in ((self.a, self.pa), (self.b, self.pb)):
            _ip("link", "add", x, "numtxqueues", "2", "numrxqueues", "2", "type", "veth",
                "peer", "name", y, "numtxqueues", "2", "numrxqueues", "2")
            self.created.append(x)
        _ip("link", "add", self.d, "type", "ifb")
        self.created.append(self.d)
        return self

    def up(self, *names: str) -> None:
        for n in names:
            _ip("link", "set", n, "up")

    def ifindex(self, name: str) -> int:
        return int(open("/sys/class/net/%s/ifindex" % name).read())

    def remove(self) -> None:
        for n in self.created:
            _ip("link", "del", n, check=False)
        self.created = []


@pytest.fixture(scope="module")
def netdevs(bpf_env):
    devs = NetDevs()
    try:
        devs.create()
        yield devs
    finally:
        devs.remove()
