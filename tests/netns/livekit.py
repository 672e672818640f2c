"""Helpers shared by the netns tier's live tests: the environment probe's skip-or-fail
(the probe itself, like the other lab checks, is mosxdp.demo.lab), XDP_PASS programs on the
endpoint veths, the monitor interfaces' `prog/xdp` readiness, the server namespace routed
to a NAT address only, spoofed SYNs (`send_syns`), kernel SNMP counters, sha256 digests, a
process's RSS, a polling wait, HOLD (a client that holds a connection open), and the inline
set-up of the app tests: `www_dir` (files of random bytes to serve), `Bed` (testbed, HTTP
server, clients; closed on leaving a `with`), `serving` (a module's Bed with its files),
`Monitor` (`mosxdp run APP` in the monitor namespace) and `Tcpdump`."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from mosxdp.demo.lab import live_probe as probe, rss_kib, sha256_file, xdp_on_both  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
APPS = Path(__file__).resolve().parent / "apps"      # the test apps (public API only)


# ------------------------------------------------------------------------------ probe
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


# ------------------------------------------------------------------------------ testbed
def attach_pass_programs(tb, *, subprocess: bool = False) -> None:
    """XDP_PASS on cli0 and srv0 (a veth takes frames redirected into its peer only when
    the receiving end runs XDP): from this process into each namespace, or with
    ``subprocess`` from a Python run inside each namespace."""
    from mosxdp.demo.passprog import attach_to_endpoints
    attach_to_endpoints(tb, python=PY if subprocess else None)


def start_server(tb, www: Path, ports, *extra) -> subprocess.Popen:
    """`mosxdp.demo.server` serving ``www`` on ``ports`` in the server namespace, returned
    once every port listens."""
    httpd = tb.popen("srv", [PY, "-m", "mosxdp.demo.server", www, *map(str, ports), *extra],
                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for port in ports:
        tb.wait_listen("srv", port)
    return httpd


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


def xdp_prog_ids(tb, *, timeout: float | None = 10) -> dict:
    """{monitor interface: id of the XDP program `ip -d link` shows on it}."""
    ids = {}
    for ifname in (tb.iface_a, tb.iface_b):
        r = tb.run("mon", ["ip", "-d", "link", "show", ifname], capture_output=True,
                   text=True, timeout=timeout)
        assert r.returncode == 0, f"ip -d link show {ifname} in mon: {r.stderr.strip()}"
        m = re.search(r"prog/xdp id (\d+)", r.stdout)
        if m:
            ids[ifname] = int(m.group(1))
    return ids


def mosxdp_cli(tb, *argv, ns="mon", timeout=60) -> subprocess.CompletedProcess:
    """`python -m mosxdp.cli ARGV` in a namespace of the testbed (text output)."""
    return tb.run(ns, [PY, "-m", "mosxdp.cli", *map(str, argv)], cwd=ROOT, capture_output=True,
                  text=True, timeout=timeout)


LEFT_FAIL_OPEN = "left the XDP program attached to"   # the inline monitor's line at a stop
LINK_CUT = "the inline link is cut"                   # `mosxdp detach` on an inline link


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
def www_dir(path: Path, sizes: dict) -> Path:
    """A web root at ``path`` of files of random bytes, {name: size}."""
    for name, size in sizes.items():
        (path / name).write_bytes(os.urandom(size))
    return path


def send_syns(tb, dport: int, count: int, rate: float, *, seed: int, mss: bool = False,
                burst: int = 1, timeout: float = 180) -> dict:
    """``count`` spoofed SYNs from the client namespace to the server's ``dport``
    (synsend.py: seeded random sources, ports and ISNs), paced to ``rate`` per second in
    bursts of ``burst``: its {"sent", "seconds", "retries"}."""
    r = tb.run("cli", [PY, Path(__file__).resolve().parent / "synsend.py", tb.cli_if,
                       tb.srv_mac, tb.cli_mac, tb.srv_ip, str(dport), str(count), str(rate),
                       str(seed), "1" if mss else "0", str(burst)],
               cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_until(what, cond, timeout, alive=None, step=0.05, detail=None):
    """Poll ``cond()`` until it is true (returned); ``alive()`` is called between polls,
    ``detail()`` (a log tail) ends the message of a timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if alive is not None:
            alive()
        assert time.monotonic() < deadline, \
            f"{what}: not within {timeout}s" + (f"\n{detail()}" if detail else "")
        time.sleep(step)


def json_lines(path: Path) -> list[dict]:
    """The JSON lines of a log an app writes as it goes (a line being written is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


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


# ------------------------------------------------------------------------------ inline bed
ATTACH_TIMEOUT = 60.0            # bcc compiles the XDP program at start
READY_TIMEOUT = 30.0
PACED_RMEM = "4096 65536 262144"


class Bed:
    """An inline testbed ready for a monitor: XDP_PASS on cli0/srv0, `mosxdp.demo.server`
    serving ``www`` on ``ports`` (the first is the clients' default), HOLD as
    ``hold.py`` in ``tmp``. ``paced``: the client's receive buffer capped, so a
    rate-limited curl paces the wire (autotuned, the kernel takes megabytes at wire speed).
    ``access_log``: the server logs each request's peer (`access()`)."""

    def __init__(self, tb, www: Path, tmp: Path, ports, *, paced=False, access_log=False):
        self.tb, self.www, self.tmp, self.port = tb, www, tmp, ports[0]
        self._n = 0
        attach_pass_programs(tb)
        if paced:
            self.sh("cli", "sysctl", "-qw", f"net.ipv4.tcp_rmem={PACED_RMEM}")
        self.hold_script = tmp / "hold.py"
        self.hold_script.write_text(HOLD)
        self.access_log = None
        extra = ()
        if access_log:
            self.access_log = self.out_path("access.log")
            self.access_log.touch()
            extra = ("--access-log", self.access_log)
        self.httpd = start_server(tb, www, ports, *extra)

    @classmethod
    def start(cls, www: Path, tmp: Path, ports, *, rx_queues=None, **kw) -> "Bed":
        """A new inline testbed made ready (closed again if that fails); ``rx_queues``:
        veths with that many RX and TX queues."""
        from mosxdp.demo.testbed import Testbed
        tb = Testbed("inline", rx_queues=rx_queues)
        tb.start()
        try:
            return cls(tb, www, tmp, ports, **kw)
        except BaseException:
            tb.close()
            raise

    def close(self) -> None:
        self.tb.close()

    def __enter__(self) -> "Bed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def sh(self, ns, *argv, check=True) -> subprocess.CompletedProcess:
        r = self.tb.run(ns, list(map(str, argv)), capture_output=True, text=True, timeout=20)
        if check:
            assert r.returncode == 0, f"{' '.join(map(str, argv))} in {ns}: {r.stderr.strip()}"
        return r

    def out_path(self, tag: str) -> Path:
        """A fresh path in the bed's directory, numbered in order of use."""
        self._n += 1
        return self.tmp / f"{self._n:03d}-{tag.replace('/', '-')}"

    # -- clients
    def url(self, family: int, path: str, port: int | None = None) -> str:
        host = self.tb.srv_ip if family == 4 else f"[{self.tb.srv_ip6}]"
        return f"http://{host}:{port or self.port}/{path}"

    def curl(self, *args, timeout: float = 60) -> subprocess.CompletedProcess:
        """curl in the client namespace; stdout is bytes."""
        return self.tb.run("cli", ["curl", "-sS", "-g", "--fail", *map(str, args)],
                           capture_output=True, timeout=timeout)

    def curl_argv(self, family, name, out, *extra, port=None, local_port=None, max_time=30):
        argv = ["curl", "-sS", "-g", "--fail", "--max-time", str(max_time), "-o", str(out),
                *map(str, extra)]
        if local_port:
            argv += ["--local-port", str(local_port)]
        return argv + [self.url(family, name, port)]

    def download(self, family, name, *extra, port=None, local_port=None, max_time=30):
        """GET ``name`` into a fresh file: (CompletedProcess, the file)."""
        out = self.out_path(name)
        r = self.tb.run("cli", self.curl_argv(family, name, out, *extra, port=port,
                                              local_port=local_port, max_time=max_time),
                        capture_output=True, timeout=max_time + 30)
        return r, out

    def start_download(self, family, name, *extra, port=None, local_port=None, max_time=30):
        """`download` in the background: (Popen, the file)."""
        out = self.out_path(name)
        return self.tb.popen("cli", self.curl_argv(family, name, out, *extra, port=port,
                                                   local_port=local_port, max_time=max_time),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE), out

    def upload(self, family, path, *extra, port=None, local_port=None, max_time=30):
        """PUT ``path``: stdout is the sha256 of what the server received."""
        args = ["--max-time", max_time, "-H", "Expect:", "-T", path, *extra]
        if local_port:
            args += ["--local-port", local_port]
        return self.curl(*args, self.url(family, "upload", port), timeout=max_time + 30)

    def hold(self, family, port, local, secs, *get) -> subprocess.Popen:
        """HOLD from the client: a connection held open (after GET [BEFORE]: half-closed)."""
        host = self.tb.srv_ip if family == 4 else self.tb.srv_ip6
        return self.tb.popen("cli", [PY, self.hold_script, host,
                                     *map(str, (port, local, secs, *get))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    @contextlib.contextmanager
    def killed_after(self, proc):
        """The block runs; then ``proc`` (a client) is killed if it is still running."""
        try:
            yield proc
        finally:
            if proc.poll() is None:
                self.tb.stop(proc, signal.SIGKILL)

    # -- observations
    def nstat(self, ns: str, name: str) -> int:
        return nstat(self.tb, ns, name, timeout=20)

    def xdp_attached(self) -> set:
        return xdp_attached(self.tb, timeout=20)

    def xdp_prog_ids(self) -> dict:
        return xdp_prog_ids(self.tb, timeout=20)

    def detach(self, *extra) -> subprocess.CompletedProcess:
        """`mosxdp detach --iface A --iface B` in the monitor namespace."""
        return mosxdp_cli(self.tb, "detach", "--iface", self.tb.iface_a, "--iface",
                          self.tb.iface_b, *extra)

    def xdp_status(self) -> str:
        """The attached programs and their counters (`mosxdp status` data), for messages."""
        code = ("import json, sys; from mosxdp.io import xdp; "
                "print(json.dumps(xdp.status(sys.argv[1:])))")
        r = self.tb.run("mon", [PY, "-c", code, self.tb.iface_a, self.tb.iface_b], cwd=ROOT,
                        capture_output=True, text=True, timeout=30)
        return r.stdout.strip() or r.stderr.strip()[-2000:]

    def xdp_counters(self) -> dict:
        """The counters of the one program attached to A and B."""
        status = json.loads(self.xdp_status())
        programs = list(status["programs"].values())
        assert len(programs) == 1 and "counters" in programs[0], status
        return programs[0]["counters"]

    def access(self) -> list[tuple[str, int, int, str]]:
        """The server's access log: (peer address, peer port, server port, request line)."""
        rows = []
        for line in self.access_log.read_text().splitlines():
            host, port, sport, request = line.split(" ", 3)
            rows.append((host, int(port), int(sport), request))
        return rows

    def monitor(self, app, *args, ready=True) -> "Monitor":
        """A monitor whose app has seen a warm-up download: ``ready`` True waits for the
        app's --ready file, a callable for it to be true; False returns at once."""
        if ready is False:
            return Monitor(self, app, *args, attach=False)
        mon = Monitor(self, app, *args, ready_file=ready is True)
        try:
            mon.warm_up(mon.ready_path.exists if ready is True else ready)
        except BaseException:
            mon.close()
            raise
        return mon


@contextlib.contextmanager
def serving(tmp_path_factory, sizes: dict, ports):
    """A `Bed` serving files of random bytes ({name: size}) on ``ports``, for a module's
    tests; closed on the way out."""
    www = www_dir(tmp_path_factory.mktemp("www"), sizes)
    with Bed.start(www, tmp_path_factory.mktemp("bed"), ports) as bed:
        yield bed


class Monitor:
    """`python -m mosxdp.cli run APP --iface A --peer B ARGS` in the monitor namespace,
    its output in a log; by default returned once A and B carry its XDP program (a new
    one: not a program an earlier monitor left), whose ids are then ``prog_ids``.
    ``ready_file``: the app is given `--ready` (``ready_path``). ``standalone``: APP is a
    program with its own main() (a mOS-style port that names A and B in its mos.conf), run
    as `python APP ARGS` in the directory ``cwd``."""

    def __init__(self, bed: Bed, app, *args, ready_file=False, attach=True, standalone=False,
                 cwd=ROOT):
        self.bed = bed
        self.prog_ids = None
        self._stopped_clean = False
        self._ids_before = bed.xdp_prog_ids()
        name = Path(str(app)).stem
        self.log_path = bed.out_path(f"{name}.monitor.log")
        if standalone:
            argv = [PY, str(app), *map(str, args)]
        else:
            argv = [PY, "-m", "mosxdp.cli", "run", str(app), "--iface", bed.tb.iface_a,
                    "--peer", bed.tb.iface_b, *map(str, args)]
        if ready_file:
            self.ready_path = bed.out_path(f"{name}.ready")
            argv += ["--ready", self.ready_path]
        self._log = open(self.log_path, "w")
        self.proc = bed.tb.popen("mon", argv, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)
        if attach:
            try:
                self.wait_attached()
            except BaseException:
                self.close()
                raise

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def alive(self) -> None:
        assert self.proc.poll() is None, f"monitor exited ({self.proc.returncode}):\n{self.log()}"

    def wait_attached(self, timeout=ATTACH_TIMEOUT) -> None:
        both = {self.bed.tb.iface_a, self.bed.tb.iface_b}

        def ours():
            ids = self.bed.xdp_prog_ids()
            new = set(ids) == both and all(ids[n] != self._ids_before.get(n) for n in both)
            return ids if new else None
        self.prog_ids = wait_until("XDP on both monitor interfaces", ours, timeout, self.alive,
                                   step=0.1, detail=self.log)

    def warm_up(self, seen, attempt=None, timeout=READY_TIMEOUT) -> int:
        """Warm-up connections until ``seen()``: the app saw one (the XDP program is
        attached before the AF_XDP sockets are in its map: a SYN meanwhile takes the
        kernel path). ``attempt`` defaults to a 1 KiB download; returns the attempts."""
        attempts = 0
        deadline = time.monotonic() + timeout
        while not seen():
            self.alive()
            assert time.monotonic() < deadline, \
                f"the app saw no warm-up connection in {timeout}s:\n{self.log()}"
            if attempt is None:
                self.bed.curl("--max-time", 2, "-o", "/dev/null", self.bed.url(4, "f1k"),
                              timeout=10)
            else:
                attempt()
            attempts += 1
            time.sleep(0.1)
        self.warmups = attempts
        return attempts

    def running(self, seen=None, attempt=None):
        """For a fixture, ``yield from mon.running(seen, attempt)``: warm up (with ``seen``),
        hand the monitor out, then `stop_clean`; closed whatever happens."""
        try:
            if seen is not None:
                self.warm_up(seen, attempt)
            yield self
            self.stop_clean()
        finally:
            self.close()

    def send_signal(self, sig) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout=30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"monitor still running after {timeout}s:\n{self.log()}") from None

    def stop(self, sig=signal.SIGINT, timeout=30) -> int:
        """Signal the monitor (unless it has exited) and wait: its exit code."""
        if self.proc.poll() is None:
            self.send_signal(sig)
        return self.wait(timeout)

    def stop_clean(self, timeout=30) -> None:
        """SIGINT: the monitor exits 0 leaving its program attached on A and B as the
        kernel's forwarder (fail-open), and says so; `mosxdp detach` then removes it,
        saying that this cuts the link, and nothing is left attached. Once only: a test
        may stop the monitor of a fixture that stops it too."""
        if self._stopped_clean:
            return
        rc = self.stop(signal.SIGINT, timeout)
        assert rc == 0, f"monitor exit {rc}:\n{self.log()}"
        ids = self.bed.xdp_prog_ids()
        assert ids == (self.prog_ids or ids) and len(ids) == 2, (ids, self.prog_ids, self.log())
        assert LEFT_FAIL_OPEN in self.log(), self.log()
        r = self.bed.detach()
        assert r.returncode == 0 and LINK_CUT in r.stderr, (r.stdout, r.stderr)
        assert self.bed.xdp_attached() == set(), "XDP programs left attached after detach"
        self._stopped_clean = True

    def close(self) -> None:
        if self.proc.poll() is None:
            self.bed.tb.stop(self.proc, signal.SIGKILL)
        self._log.close()


class Tcpdump:
    """tcpdump writing ``path`` on ``ifname`` in namespace ``ns`` of a bed, returned once
    it listens; ``opts`` go before the filter ``expr``."""

    def __init__(self, bed: Bed, ns: str, ifname: str, path: Path, expr: str, *opts):
        self.tb, self.path = bed.tb, path
        self.err_path = path.with_name(path.name + ".tcpdump.err")
        self._err = open(self.err_path, "w")
        self.proc = bed.tb.popen(ns, ["tcpdump", "-i", ifname, "-s", "0", "-U", "--immediate-mode",
                                      *map(str, opts), "-w", path, expr],
                                 stdout=subprocess.DEVNULL, stderr=self._err)
        wait_until(f"tcpdump on {ifname}", lambda: "listening on" in self.err_path.read_text(), 10)

    def stop(self, settle: float = 0.2) -> str:
        """After ``settle`` seconds (the last frames), SIGINT: tcpdump's closing report."""
        time.sleep(settle)
        if self.proc.poll() is None:
            self.tb.stop(self.proc, signal.SIGINT, timeout=10)
        self._err.close()
        return self.err_path.read_text()


def worker_pids(mon, count) -> list[int]:
    """The ``count`` worker processes of a split monitor, once it has forked all of them
    (it attaches the program first, so a test that has seen the attach may be ahead of
    the forks)."""
    path = f"/proc/{mon.proc.pid}/task/{mon.proc.pid}/children"

    def forked():
        pids = [int(p) for p in open(path).read().split()]
        return pids if len(pids) == count else None
    return wait_until(f"{count} workers forked", forked, 30, mon.alive, step=0.05,
                      detail=mon.log)


def stop_after_worker_died(mon, index) -> tuple[str, str]:
    """SIGTERM to a split monitor one of whose workers (``index``) was killed by SIGKILL:
    it exits 1, says the death on one line and leaves its program as the forwarder.
    Returns (its log, that line)."""
    rc = mon.stop(signal.SIGTERM)
    log = mon.log()
    assert rc == 1, log
    died = [x for x in log.splitlines() if f"worker {index} (pid" in x]
    assert len(died) == 1 and "killed by signal 9 (SIGKILL)" in died[0], log
    assert LEFT_FAIL_OPEN in log, log
    return log, died[0]
