"""Checks and measures of a live run on the lab's testbed, shared by the tests, the demo and
scripts/soak.py: can the live datapath run here, is the XDP program on both monitor
interfaces (and waiting for it), a process's RSS, a file's digest."""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import time


def live_probe(tools=(), *, libbpf: bool = False) -> str | None:
    """None when the live datapath can run here (root, netns, libxdp, AF_XDP sockets, the
    XDP program buildable, every one of ``tools`` installed), else why not."""
    if os.geteuid() != 0:
        return "not root"
    try:
        from . import testbed
    except Exception as exc:  # pragma: no cover - an import error is a bug: show it
        return f"mosxdp.demo.testbed not importable: {exc}"
    why = testbed.probe()
    if why:
        return why
    from ..io import libxdp
    try:
        libxdp.load()
    except libxdp.LibxdpMissing as exc:
        return str(exc)
    try:
        socket.socket(libxdp.AF_XDP, socket.SOCK_RAW, 0).close()
    except OSError as exc:
        return f"no AF_XDP sockets in this kernel: {exc}"
    try:
        from ..io import libbpf as libbpf_binding, xdp
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


def xdp_on_both(tb, timeout: float | None = None) -> bool:
    """At least two links of the monitor namespace carry an XDP program."""
    r = tb.run("mon", ["ip", "-d", "link", "show"], capture_output=True, text=True,
               timeout=timeout)
    return r.stdout.count("prog/xdp") >= 2


def wait_attached(tb, proc, timeout: float = 60.0) -> bool:
    """Wait until both monitor interfaces carry an XDP program (False when ``proc``, the
    monitor, exits first or ``timeout`` seconds pass)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if xdp_on_both(tb):
            time.sleep(0.5)   # the program is attached before the sockets are bound
            return True
        time.sleep(0.2)
    return False


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


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
