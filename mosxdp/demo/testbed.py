"""Network-namespace testbeds for real Linux TCP (root only).

``Testbed(kind="direct")``::

    <p>-cli: cli0 10.77.0.1/24 fd77::1/64  <== veth ==>  <p>-srv: srv0 10.77.0.2/24 fd77::2/64

``Testbed(kind="inline")``: a bump in the wire in a monitor namespace::

    <p>-cli: cli0 <== veth ==> <p>a  [<p>-mon]  <p>b <== veth ==> srv0 :<p>-srv

The monitor interfaces are up, have no addresses (IPv6 disabled on them, so no
link-local noise) and forward nothing by themselves: a monitor attached to them
does, or ``tb.kernel_forward()`` (tc mirred both ways) for a kernel-only baseline.

Everything has a unique prefix per run (``mx`` + 6 hex digits, so interface
names stay well under 15 characters).  Endpoint MTU is 1500, MACs are fixed
(client 02:77:00:00:00:01, server 02:77:00:00:00:02, monitor a/b
02:77:00:00:01:0a / 02:77:00:00:01:0b), IPv6 addresses are added without DAD.
On the endpoint veths tx checksum offload, TSO, GSO and GRO are turned off with
ethtool: frames carry valid checksums and real-size segments (XDP loses
checksum offload; captures must show what is on the wire).

Note for XDP_REDIRECT into the inline veths: a veth accepts redirected frames
only when its peer runs NAPI, i.e. the peer has an XDP program attached or GRO
enabled.  Pass ``endpoint_gro=True`` (or attach an XDP program to cli0/srv0)
when the monitor redirects with a devmap.

Cleanup (processes started through ``tb.popen``/``tb.run``, every process left
in the namespaces, the namespaces and with them the veths) runs in
``__exit__`` (also on an exception), from an ``atexit`` hook, and on SIGTERM /
SIGHUP (turned into ``SystemExit`` while a testbed is up, when no other handler
was installed).  ``cleanup_stale()`` removes what a killed run left behind.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .cleanup import (STATE_DIR, cleanup_stale, delete_netns, pid_namespace, register,
                      root_links_with_prefix, unregister)

__all__ = [
    "Testbed",
    "TestbedError",
    "cleanup_stale",
    "probe",
    "ns_exec_argv",
]

CLI_IP4, SRV_IP4, PREFIX4 = "10.77.0.1", "10.77.0.2", 24
CLI_IP6, SRV_IP6, PREFIX6 = "fd77::1", "fd77::2", 64
CLI_MAC, SRV_MAC = "02:77:00:00:00:01", "02:77:00:00:00:02"
MON_A_MAC, MON_B_MAC = "02:77:00:00:01:0a", "02:77:00:00:01:0b"
IFA_F_NODAD = 0x02
# the endpoints' own client ports; tests that fix a client port take one below
EPHEMERAL_PORTS = (50000, 60999)
# Where `python -m mosxdp...` finds the package when run inside a namespace.
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


class TestbedError(RuntimeError):
    """A testbed could not be built (the message says which step failed)."""

    __test__ = False  # not a pytest test class


def ns_exec_argv(ns: str | None) -> list[str]:
    """argv prefix that runs a command inside network namespace ``ns`` (None: here)."""
    return [] if ns is None else ["ip", "netns", "exec", ns]


def probe() -> str | None:
    """None when testbeds can be built here, else the reason why not."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) not installed"
    if shutil.which("ethtool") is None:
        return "ethtool not installed"
    try:
        from pyroute2 import netns  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the install
        return f"pyroute2 not importable: {e}"
    name = f"mxprobe{os.getpid()}"
    try:
        r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if r.returncode != 0:
            return f"cannot create a network namespace: {r.stderr.strip()}"
        r = subprocess.run(
            ["ip", "netns", "exec", name, "ip", "link", "add", "p0", "type", "veth",
             "peer", "name", "p1"], capture_output=True, text=True)
        if r.returncode != 0:
            return f"cannot create a veth pair: {r.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


class Testbed:
    """Client and server network namespaces, directly linked or through a monitor namespace.

    Parameters: ``kind`` "direct" or "inline"; ``ipv6`` (addresses fd77::1/2);
    ``rx_queues`` (veths with that many rx and tx queues); ``prefix`` (default:
    random ``mx``+6 hex); ``mtu``; ``endpoint_gro`` (leave GRO on on cli0/srv0,
    see the module docstring).

    Names: ``prefix``, ``cli_ns``, ``srv_ns``, ``mon_ns`` (None for direct),
    ``cli_if`` ("cli0"), ``srv_if`` ("srv0"), ``iface_a``/``iface_b`` (monitor
    side, None for direct), ``cli_ip``/``srv_ip`` (IPv4), ``cli_ip6``/``srv_ip6``
    (None without ipv6), ``cli_mac``/``srv_mac``, ``mon_a_mac``/``mon_b_mac``.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, kind: str = "direct", ipv6: bool = True, *, rx_queues: int | None = None,
                 prefix: str | None = None, mtu: int = 1500, endpoint_gro: bool = False):
        if kind not in ("direct", "inline"):
            raise ValueError(f"Testbed kind must be 'direct' or 'inline', not {kind!r}")
        if rx_queues is not None and not (isinstance(rx_queues, int) and 1 <= rx_queues <= 256):
            raise ValueError(f"rx_queues must be an int in 1..256, not {rx_queues!r}")
        if prefix is None:
            prefix = "mx" + secrets.token_hex(3)
        if not re.fullmatch(r"[a-z][a-z0-9]{1,11}", prefix):
            raise ValueError(f"testbed prefix must be 2-12 lowercase letters/digits, not {prefix!r}")
        self.kind = kind
        self.ipv6 = ipv6
        self.rx_queues = rx_queues
        self.prefix = prefix
        self.mtu = mtu
        self.endpoint_gro = endpoint_gro
        self.cli_ns = f"{prefix}-cli"
        self.srv_ns = f"{prefix}-srv"
        self.mon_ns = f"{prefix}-mon" if kind == "inline" else None
        self.cli_if = "cli0"
        self.srv_if = "srv0"
        self.iface_a = f"{prefix}a" if kind == "inline" else None
        self.iface_b = f"{prefix}b" if kind == "inline" else None
        self.cli_ip, self.srv_ip, self.prefixlen = CLI_IP4, SRV_IP4, PREFIX4
        self.cli_ip6 = CLI_IP6 if ipv6 else None
        self.srv_ip6 = SRV_IP6 if ipv6 else None
        self.prefixlen6 = PREFIX6
        self.cli_mac, self.srv_mac = CLI_MAC, SRV_MAC
        self.mon_a_mac = MON_A_MAC if kind == "inline" else None
        self.mon_b_mac = MON_B_MAC if kind == "inline" else None
        self._procs: list[subprocess.Popen] = []
        self._owner = os.getpid()
        self._up = False
        self._closed = False

    # -- names ---------------------------------------------------------------

    @property
    def namespaces(self) -> list[str]:
        return [n for n in (self.cli_ns, self.mon_ns, self.srv_ns) if n]

    def ns(self, which: str | None) -> str | None:
        """Resolve "cli"/"srv"/"mon" (or a full namespace name, or None = root)."""
        if which is None:
            return None
        short = {"cli": self.cli_ns, "client": self.cli_ns, "srv": self.srv_ns,
                 "server": self.srv_ns, "mon": self.mon_ns, "monitor": self.mon_ns}
        if which in short:
            if short[which] is None:
                raise ValueError(f"this {self.kind} testbed has no {which} namespace")
            return short[which]
        if which in self.namespaces:
            return which
        raise ValueError(f"{which!r} is not a namespace of testbed {self.prefix}")

    def ns_exec_argv(self, ns: str | None) -> list[str]:
        """argv prefix that runs a command in ``ns`` ("cli", "srv", "mon" or a full name)."""
        return ns_exec_argv(self.ns(ns))

    # -- commands ------------------------------------------------------------

    def run(self, ns, argv, **kw) -> subprocess.CompletedProcess:
        """``subprocess.run`` inside namespace ``ns``; the process is killed at cleanup."""
        timeout = kw.pop("timeout", None)
        check = kw.pop("check", False)
        inp = kw.pop("input", None)
        if kw.pop("capture_output", False):
            kw["stdout"] = kw["stderr"] = subprocess.PIPE
        if inp is not None:
            kw.setdefault("stdin", subprocess.PIPE)
        p = self.popen(ns, argv, **kw)
        try:
            out, err = p.communicate(inp, timeout=timeout)
        except BaseException:
            self._kill(p)
            p.communicate()
            raise
        finally:
            self._forget(p)
        cp = subprocess.CompletedProcess(p.args, p.returncode, out, err)
        if check:
            cp.check_returncode()
        return cp

    def on_endpoints(self, python: str, module: str, what: str) -> None:
        """``python -m module IFNAME`` inside the client's and the server's namespace, on
        their veth; RuntimeError naming ``what`` and the interface when one fails."""
        for ns, ifname in (("cli", self.cli_if), ("srv", self.srv_if)):
            r = self.run(ns, [python, "-m", module, ifname], cwd=_PACKAGE_PARENT,
                         capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"cannot attach {what} to {ifname}: "
                                   f"{r.stderr.strip()[-800:]}")

    def popen(self, ns, argv, **kw) -> subprocess.Popen:
        """``subprocess.Popen`` inside namespace ``ns`` in its own session; killed at cleanup."""
        if not self._up:
            raise TestbedError("testbed is not up (use it as a context manager)")
        kw.setdefault("start_new_session", True)
        argv = [os.fspath(a) for a in argv]
        p = subprocess.Popen(self.ns_exec_argv(ns) + argv, **kw)
        self._procs.append(p)
        return p

    def _forget(self, p) -> None:
        try:
            self._procs.remove(p)
        except ValueError:
            pass

    @staticmethod
    def _kill(p: subprocess.Popen, sig=signal.SIGKILL) -> None:
        if p.poll() is not None:
            return
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass

    def stop(self, p: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 5.0) -> int:
        """Signal a process started with ``popen`` (its whole session), wait; SIGKILL after timeout."""
        self._kill(p, sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill(p, signal.SIGKILL)
            p.wait()
        self._forget(p)
        return p.returncode

    def wait_listen(self, ns, port: int, timeout: float = 10.0, proto: str = "tcp") -> None:
        """Wait until something listens on ``port`` in ``ns`` (polls ``ss``)."""
        flag = "-ltnH" if proto == "tcp" else "-lunH"
        deadline = time.monotonic() + timeout
        while True:
            r = subprocess.run(self.ns_exec_argv(ns) + ["ss", flag, f"sport = :{port}"],
                               capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip():
                return
            if time.monotonic() > deadline:
                raise TestbedError(f"nothing listens on {proto} port {port} in {self.ns(ns)} "
                                   f"after {timeout}s")
            time.sleep(0.02)

    def kernel_forward(self, enable: bool = True) -> None:
        """Inline only: forward between iface_a and iface_b in the kernel (tc mirred)."""
        if self.kind != "inline":
            raise TestbedError("kernel_forward needs an inline testbed")
        for src, dst in ((self.iface_a, self.iface_b), (self.iface_b, self.iface_a)):
            if enable:
                self._ip_ok(self.mon_ns, ["tc", "qdisc", "replace", "dev", src, "clsact"])
                self._ip_ok(self.mon_ns, ["tc", "filter", "replace", "dev", src, "ingress",
                                          "pref", "1", "protocol", "all", "u32", "match", "u32",
                                          "0", "0", "action", "mirred", "egress", "redirect",
                                          "dev", dst])
            else:
                subprocess.run(self.ns_exec_argv(self.mon_ns)
                               + ["tc", "qdisc", "del", "dev", src, "clsact"], capture_output=True)

    # -- setup ---------------------------------------------------------------

    def _ip_ok(self, ns, argv) -> None:
        r = subprocess.run(ns_exec_argv(ns) + argv, capture_output=True, text=True)
        if r.returncode != 0:
            raise TestbedError(f"testbed {self.prefix}: `{' '.join(argv)}` in {ns or 'root ns'} "
                               f"failed: {r.stderr.strip() or r.returncode}")

    def _write_state(self) -> None:
        os.makedirs(STATE_DIR, exist_ok=True)
        with open(os.path.join(STATE_DIR, self.prefix), "w") as f:
            f.write(f"{os.getpid()} {self.kind} {pid_namespace()}\n")

    def start(self) -> "Testbed":
        if self._up:
            return self
        if self._closed:
            raise TestbedError("a closed testbed cannot be restarted")
        why = probe_cached()
        if why:
            raise TestbedError(f"cannot build a testbed: {why}")
        try:
            cleanup_stale()
        except Exception:
            pass
        register(self)
        self._up = True
        try:
            self._write_state()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _build(self) -> None:
        from pyroute2 import NetNS, netns

        for ns in self.namespaces:
            if os.path.exists(f"/run/netns/{ns}"):
                raise TestbedError(f"network namespace {ns} already exists")
            netns.create(ns)
        q = {}
        if self.rx_queues:
            q = {"num_rx_queues": self.rx_queues, "num_tx_queues": self.rx_queues}

        # the links
        if self.kind == "direct":
            pairs = [(self.cli_ns, self.cli_if, self.cli_mac, self.srv_ns, self.srv_if, self.srv_mac)]
        else:
            pairs = [(self.cli_ns, self.cli_if, self.cli_mac, self.mon_ns, self.iface_a, self.mon_a_mac),
                     (self.srv_ns, self.srv_if, self.srv_mac, self.mon_ns, self.iface_b, self.mon_b_mac)]
        for ns1, if1, mac1, ns2, if2, mac2 in pairs:
            with NetNS(ns1) as ipr:
                ipr.link("add", ifname=if1, kind="veth", address=mac1, mtu=self.mtu,
                         peer={"ifname": if2, "net_ns_fd": ns2, "address": mac2,
                               "mtu": self.mtu, **q}, **q)

        if self.mon_ns:
            for ifn in (self.iface_a, self.iface_b):
                self._sysctl(self.mon_ns, f"net.ipv6.conf.{ifn}.disable_ipv6", 1)
        if not self.ipv6:
            for ns, ifn in ((self.cli_ns, self.cli_if), (self.srv_ns, self.srv_if)):
                self._sysctl(ns, f"net.ipv6.conf.{ifn}.disable_ipv6", 1)

        # Clients pick their own ports from this range only, so a port a test gives curl
        # (always below it) never meets an earlier connection of the same run.
        for ns in (self.cli_ns, self.srv_ns):
            self._sysctl(ns, "net.ipv4.ip_local_port_range", "%d %d" % EPHEMERAL_PORTS)

        # addresses and link state
        ends = [(self.cli_ns, self.cli_if, self.cli_ip, self.cli_ip6),
                (self.srv_ns, self.srv_if, self.srv_ip, self.srv_ip6)]
        for ns, ifn, ip4, ip6 in ends:
            with NetNS(ns) as ipr:
                idx = ipr.link_lookup(ifname=ifn)[0]
                ipr.addr("add", index=idx, address=ip4, prefixlen=self.prefixlen)
                if ip6:
                    ipr.addr("add", index=idx, address=ip6, prefixlen=self.prefixlen6,
                             flags=IFA_F_NODAD)
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.link("set", index=lo, state="up")
            feats = ["tx", "off", "tso", "off", "gso", "off"]
            if not self.endpoint_gro:
                feats += ["gro", "off"]
            self._ip_ok(ns, ["ethtool", "-K", ifn] + feats)
        if self.mon_ns:
            with NetNS(self.mon_ns) as ipr:
                for ifn in (self.iface_a, self.iface_b, "lo"):
                    ipr.link("set", index=ipr.link_lookup(ifname=ifn)[0], state="up")
        for ns, ifn, _a, _b in ends:
            with NetNS(ns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname=ifn)[0], state="up")
        self._wait_carrier()

    def _sysctl(self, ns, key, value) -> None:
        self._ip_ok(ns, ["sysctl", "-qw", f"{key}={value}"])

    def _wait_carrier(self, timeout: float = 5.0) -> None:
        want = [(self.cli_ns, self.cli_if), (self.srv_ns, self.srv_if)]
        if self.mon_ns:
            want += [(self.mon_ns, self.iface_a), (self.mon_ns, self.iface_b)]
        deadline = time.monotonic() + timeout
        for ns, ifn in want:
            while True:
                r = subprocess.run(ns_exec_argv(ns) + ["cat", f"/sys/class/net/{ifn}/carrier",
                                                       f"/sys/class/net/{ifn}/operstate"],
                                   capture_output=True, text=True)
                lines = r.stdout.split()
                if r.returncode == 0 and lines[:1] == ["1"] and lines[1:2] == ["up"]:
                    break
                if time.monotonic() > deadline:
                    raise TestbedError(f"{ifn} in {ns} did not come up: {r.stdout.strip()!r}")
                time.sleep(0.01)

    # -- teardown ------------------------------------------------------------

    def close(self) -> None:
        """Kill every process in the testbed and remove it (idempotent, best effort)."""
        if self._closed:
            return
        if os.getpid() != self._owner:
            # A forked copy of the owner (e.g. a helper child unwinding):
            # the testbed belongs to the parent, leave it alone.
            self._closed = True
            self._up = False
            return
        self._closed = True
        try:
            for p in list(self._procs):
                self._kill(p, signal.SIGTERM)
            deadline = time.monotonic() + 1.0
            for p in list(self._procs):
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._kill(p, signal.SIGKILL)
                    try:
                        p.wait(2.0)
                    except subprocess.TimeoutExpired:
                        pass
            self._procs.clear()
            for ns in self.namespaces:
                try:
                    delete_netns(ns)
                except Exception:
                    pass
            for ln in root_links_with_prefix(self.prefix):
                subprocess.run(["ip", "link", "del", ln], capture_output=True)
            try:
                os.unlink(os.path.join(STATE_DIR, self.prefix))
            except OSError as e:
                if e.errno != errno.ENOENT:
                    pass
        finally:
            self._up = False
            unregister(self)

    def __enter__(self) -> "Testbed":
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __repr__(self) -> str:
        state = "up" if self._up else ("closed" if self._closed else "new")
        return f"<Testbed {self.kind} {self.prefix} {state}>"


_probe_result: list = []


def endpoint_command(name: str, description: str, attach):
    """The ``main(argv)`` of ``python -m mosxdp.demo.NAME IFNAME...`` (what
    ``Testbed.on_endpoints`` runs): ``attach(ifnames)`` in this namespace; one line and
    status 1 when it fails."""
    def main(argv) -> int:
        parser = argparse.ArgumentParser(prog=f"python -m mosxdp.demo.{name}",
                                         description=description)
        parser.add_argument("ifname", nargs="+", help="interface (in this network namespace)")
        args = parser.parse_args(argv)
        try:
            attach(args.ifname)
        except Exception as exc:   # bcc, libbpf and netlink errors: one line
            print(f"{name}: {exc}", file=sys.stderr)
            return 1
        return 0
    return main


def probe_cached() -> str | None:
    if not _probe_result:
        _probe_result.append(probe())
    return _probe_result[0]
