"""netns tier: the same apps offline on a capture of the traffic they saw live give the
same results (issue 5, item 3)::

    <p>-cli: cli0 <== veth ==> A [<p>-mon: mosxdp run APP --iface A --peer B] B <== veth ==> srv0 :<p>-srv

One inline testbed. simple_firewall (a DROP rule for one port, default accept) and then
scrub (--side server, mask mode, a pattern in a served file) run live, each while curl
makes connections and tcpdump captures on cli0 (client namespace) and srv0 (server
namespace). Then `mosxdp run APP --pcap CAP` runs the same app with the same options on
the capture and the results are compared: the firewall's per-rule counts
(--stats-output), scrub's hits (client, server, direction, stream offset, length, action,
masked bytes; not the timestamp).

Which capture is the live monitor's input: the monitor sits between cli0 and srv0, so it
received the client's frames as cli0 sent them and the server's frames as srv0 sent them.
cli0 alone is the wrong point: it holds the server's frames AFTER the monitor (scrub's
masked bytes, no answer to a dropped SYN). So CAP = the client -> server frames from the
cli0 capture merged (mergecap, by timestamp; one clock for all namespaces) with the
server -> client frames from the srv0 capture. The test also runs scrub on the plain cli0
capture and shows it finds nothing there (the pattern was masked before cli0 saw it).

The monitor's warm-up connections (port WARM, before the capture starts) are left out of
the captures by the filter; the live counts are taken relative to the rule table printed
when the capture started. Skipped only when a probe fails; MOSXDP_REQUIRE_PRIVILEGED=1
turns skips into failures (livekit.require_live).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import livekit
import pytest
from livekit import PY, ROOT, wait_until

pytestmark = pytest.mark.netns

PLAIN, BLOCKED, WARM = 8090, 8091, 8092
PATTERN = b"CONFIDENTIAL-5c1e"
MASK = b"#"
PATTERN_AT = (5000, 100_000)          # in secret.bin (160 KiB)
ATTACH_TIMEOUT = 60.0
READY_TIMEOUT = 30.0
CAPTURE_FILTER = f"tcp and not port {WARM}"

RULES = f"""# replay test rules, first match wins
ACCEPT  0.0.0.0   0.0.0.0   dport:{WARM}      # 1 warm-up connections
DROP    10.77.0.0/24  10.77.0.2/32  dport:{BLOCKED}   # 2 the blocked port, IPv4
DROP    ::            fd77::2/128   dport:{BLOCKED}   # 3 the blocked port, IPv6
"""

HTTPD = r'''
import http.server, socket, sys, threading
root, ports = sys.argv[1], [int(p) for p in sys.argv[2:]]

class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)
    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

for port in ports:
    threading.Thread(target=Server(("::", port), Handler).serve_forever, daemon=True).start()
threading.Event().wait()
'''


def _json_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


class Bed:
    def __init__(self, tmp: Path):
        from mosxdp.testbed import Testbed
        self.tmp, self._n = tmp, 0
        self.www = tmp / "www"
        self.www.mkdir()
        body = bytearray(os.urandom(160 * 1024))
        for at in PATTERN_AT:
            body[at:at + len(PATTERN)] = PATTERN
        assert bytes(body).count(PATTERN) == len(PATTERN_AT)
        (self.www / "secret.bin").write_bytes(bytes(body))
        (self.www / "f1k").write_bytes(os.urandom(1024))
        (self.www / "f2m").write_bytes(os.urandom(2 * 1024 * 1024))
        (self.www / "warm.txt").write_bytes(b"warm-up " + PATTERN + b" warm-up\n")
        (tmp / "httpd.py").write_text(HTTPD)
        self.tb = Testbed("inline")
        self.tb.start()
        try:
            livekit.attach_pass_programs(self.tb)
            self.httpd = self.tb.popen("srv", [PY, tmp / "httpd.py", self.www,
                                               str(PLAIN), str(BLOCKED), str(WARM)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for port in (PLAIN, BLOCKED, WARM):
                self.tb.wait_listen("srv", port)
        except BaseException:
            self.tb.close()
            raise

    def path(self, tag: str) -> Path:
        self._n += 1
        return self.tmp / f"{self._n:03d}-{tag}"

    def url(self, family, name, port):
        host = self.tb.srv_ip if family == 4 else f"[{self.tb.srv_ip6}]"
        return f"http://{host}:{port}/{name}"

    def curl(self, family, name, port=PLAIN, *extra, max_time=20):
        out = self.path(name)
        argv = ["curl", "-sS", "-g", "--fail", "--max-time", str(max_time), "-o", str(out),
                *map(str, extra), self.url(family, name, port)]
        return self.tb.popen("cli", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE), out

    def download(self, family, name, port=PLAIN, *extra, max_time=20):
        proc, out = self.curl(family, name, port, *extra, max_time=max_time)
        _, err = proc.communicate(timeout=max_time + 20)
        return proc.returncode, out, err

    def xdp_attached(self) -> set:
        return livekit.xdp_attached(self.tb, timeout=20)


class Monitor:
    """`python -m mosxdp.cli run APP --iface A --peer B ARGS` in the monitor namespace."""

    def __init__(self, bed: Bed, app: str, *args):
        self.bed = bed
        self.log_path = bed.path(f"{app}.monitor.log")
        self._log = open(self.log_path, "w")
        argv = [PY, "-m", "mosxdp.cli", "run", app, "--iface", bed.tb.iface_a,
                "--peer", bed.tb.iface_b, *map(str, args)]
        self.proc = bed.tb.popen("mon", argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(f"{app}: XDP on both monitor interfaces",
                       lambda: bed.xdp_attached() == {bed.tb.iface_a, bed.tb.iface_b},
                       ATTACH_TIMEOUT, self.alive, step=0.1)
        except BaseException:
            self.close()
            raise

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def alive(self) -> None:
        assert self.proc.poll() is None, f"monitor exited ({self.proc.returncode}):\n{self.log()}"

    def warm_up(self, seen, attempt) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not seen():
            self.alive()
            assert time.monotonic() < deadline, f"no warm-up seen:\n{self.log()}"
            attempt()
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"monitor still running:\n{self.log()}") from None
        assert rc == 0, f"monitor exit {rc}:\n{self.log()}"
        assert self.bed.xdp_attached() == set(), "XDP programs left attached"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.bed.tb.stop(self.proc, signal.SIGKILL)
        self._log.close()


class Captures:
    """tcpdump on cli0 (client namespace) and srv0 (server namespace)."""

    def __init__(self, bed: Bed, tag: str):
        self.bed, self.procs, self.errs = bed, [], []
        self.cli, self.srv = bed.path(f"{tag}.cli0.pcap"), bed.path(f"{tag}.srv0.pcap")
        for ns, ifname, path in (("cli", bed.tb.cli_if, self.cli), ("srv", bed.tb.srv_if, self.srv)):
            err = bed.path(f"{tag}.{ns}.tcpdump.err")
            f = open(err, "w")
            self.errs.append(f)
            self.procs.append(bed.tb.popen(ns, ["tcpdump", "-i", ifname, "-s", "0", "-U",
                                                "--immediate-mode", "-w", str(path),
                                                CAPTURE_FILTER],
                                           stdout=subprocess.DEVNULL, stderr=f))
            wait_until(f"tcpdump on {ifname}", lambda: "listening on" in err.read_text(), 10)

    def stop(self) -> None:
        time.sleep(0.3)
        for proc in self.procs:
            if proc.poll() is None:
                self.bed.tb.stop(proc, signal.SIGINT, timeout=10)
        for f in self.errs:
            f.close()

    def monitor_input(self) -> Path:
        """What the live monitor received: client -> server frames as cli0 sent them,
        server -> client frames as srv0 sent them, merged by timestamp."""
        tb = self.bed.tb
        cli_src = f"src host {tb.cli_ip} or src host {tb.cli_ip6}"
        srv_src = f"src host {tb.srv_ip} or src host {tb.srv_ip6}"
        c2s, s2c = self.cli.with_suffix(".c2s.pcap"), self.srv.with_suffix(".s2c.pcap")
        for src, dst, flt in ((self.cli, c2s, cli_src), (self.srv, s2c, srv_src)):
            r = subprocess.run(["tcpdump", "-r", str(src), "-w", str(dst), flt],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
        merged = self.cli.with_suffix(".monitor-input.pcap")
        r = subprocess.run(["mergecap", "-F", "pcap", "-w", str(merged), str(c2s), str(s2c)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return merged


def offline(app: str, pcap: Path, *args) -> subprocess.CompletedProcess:
    r = subprocess.run([PY, "-m", "mosxdp.cli", "run", app, "--pcap", str(pcap),
                        *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"offline {app}: rc {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def table_counts(path: Path) -> dict:
    """{rule index or 'default': flows} from the last rule table printed."""
    text = path.read_text() if path.exists() else ""
    tables = text.split("Firewall rule table")
    if len(tables) < 2:
        return {}
    last = tables[-1]
    counts = {int(i): int(n) for i, n in re.findall(r"^(\d+)\s+(\d+)\s+(?:ACCEPT|DROP)\b", last, re.M)}
    found = re.findall(r"^-\s+(\d+)\s+ACCEPT\s+\(no rule matched\)", last, re.M)
    if found:
        counts["default"] = int(found[-1])
    return counts


def stats_counts(path: Path) -> dict:
    stats = json.loads(path.read_text())
    counts = {rule["index"]: rule["flows"] for rule in stats["rules"]}
    counts["default"] = stats["default_accept"]
    return counts


def hit_key(h: dict) -> tuple:
    return (h["client"], h["server"], h["direction"], h["offset"], h["length"], h["action"],
            h["masked"])


# ------------------------------------------------------------------------------ the run
@pytest.fixture(scope="module")
def results(tmp_path_factory):
    livekit.require_live(("curl", "tcpdump", "mergecap"))
    started = time.monotonic()
    bed = Bed(tmp_path_factory.mktemp("replay"))
    res = {"bed": bed}
    try:
        # ---- simple_firewall live
        rules = bed.path("rules.conf")
        rules.write_text(RULES)
        tables, stats = bed.path("fw.tables"), bed.path("fw.json")
        mon = Monitor(bed, "simple_firewall", "--rules", rules, "--interval", 0.2,
                      "--output", tables, "--stats-output", stats)
        try:
            mon.warm_up(lambda: table_counts(tables).get(1, 0) >= 1,
                        lambda: (bed.download(4, "f1k", WARM, max_time=3), time.sleep(0.3)))
            time.sleep(0.5)                       # warm-ups done: the next table has them
            before = table_counts(tables)
            cap = Captures(bed, "fw")
            try:
                blocked = [bed.curl(f, "f1k", BLOCKED, "--connect-timeout", "1.5", max_time=5)
                           for f in (4, 6)]
                allowed = [bed.curl(f, name, PLAIN) for f, name in ((4, "f1k"), (6, "f1k"),
                                                                    (4, "f2m"))]
                rcs = [(p.communicate(timeout=40), p.returncode)[1] for p, _ in blocked + allowed]
            finally:
                cap.stop()
            assert rcs == [28, 28, 0, 0, 0], rcs
            for (_, out), name in zip(allowed, ("f1k", "f1k", "f2m")):
                assert out.read_bytes() == (bed.www / name).read_bytes()
            mon.stop()
        finally:
            mon.close()
        live = stats_counts(stats)
        res["fw_live"] = {k: live[k] - before.get(k, 0) for k in live}
        res["fw_before"] = before
        fw_input = cap.monitor_input()
        off_stats = bed.path("fw.offline.json")
        offline("simple_firewall", fw_input, "--rules", rules, "--output", os.devnull,
                "--stats-output", off_stats)
        res["fw_offline"] = stats_counts(off_stats)
        raw_stats = bed.path("fw.offline-cli0.json")
        offline("simple_firewall", cap.cli, "--rules", rules, "--output", os.devnull,
                "--stats-output", raw_stats)
        res["fw_offline_cli0"] = stats_counts(raw_stats)

        # ---- scrub live
        hits = bed.path("scrub.jsonl")
        scrub_args = ("--pattern", PATTERN.decode(), "--mask", MASK.decode(), "--side", "server")
        mon = Monitor(bed, "scrub", *scrub_args, "--log", hits)
        try:
            def warm():
                rc, out, _ = bed.download(4, "warm.txt", WARM, max_time=3)
                if rc == 0 and PATTERN not in out.read_bytes():
                    warmed.append(1)
            warmed = []
            mon.warm_up(lambda: warmed, warm)
            time.sleep(0.2)
            warm_hits = len(_json_lines(hits))
            cap = Captures(bed, "scrub")
            try:
                downloads = [bed.curl(f, "secret.bin") for f in (4, 6)] + [bed.curl(4, "f2m")]
                rcs = [(p.communicate(timeout=40), p.returncode)[1] for p, _ in downloads]
            finally:
                cap.stop()
            assert rcs == [0, 0, 0], rcs
            masked = (bed.www / "secret.bin").read_bytes().replace(PATTERN, MASK * len(PATTERN))
            assert downloads[0][1].read_bytes() == masked
            assert downloads[1][1].read_bytes() == masked
            assert downloads[2][1].read_bytes() == (bed.www / "f2m").read_bytes()
            time.sleep(0.3)
            mon.stop()
        finally:
            mon.close()
        res["scrub_live"] = _json_lines(hits)[warm_hits:]
        scrub_input = cap.monitor_input()
        off_hits = bed.path("scrub.offline.jsonl")
        offline("scrub", scrub_input, *scrub_args, "--log", off_hits)
        res["scrub_offline"] = _json_lines(off_hits)
        raw_hits = bed.path("scrub.offline-cli0.jsonl")
        offline("scrub", cap.cli, *scrub_args, "--log", raw_hits)
        res["scrub_offline_cli0"] = _json_lines(raw_hits)
        res["elapsed"] = time.monotonic() - started
        yield res
    finally:
        bed.tb.close()


# ------------------------------------------------------------------------------ tests
def test_firewall_counts_same_offline(results):
    live, off = results["fw_live"], results["fw_offline"]
    print(f"firewall live (since capture start) {live}, offline {off}, "
          f"cli0-only {results['fw_offline_cli0']}, before {results['fw_before']}")
    # two blocked connections (one per family), three allowed by default
    assert live == {1: 0, 2: 1, 3: 1, "default": 3}, live
    assert off == live
    # the firewall decides on the client's SYN, which cli0 sees before the monitor: the
    # plain cli0 capture gives the same counts (unlike scrub's, below)
    assert results["fw_offline_cli0"] == live


def test_scrub_hits_same_offline(results):
    bed = results["bed"]
    live = sorted(map(hit_key, results["scrub_live"]))
    off = sorted(map(hit_key, results["scrub_offline"]))
    print(f"scrub live {live}\nscrub offline {off}\n"
          f"cli0-only {results['scrub_offline_cli0']}\nsetup+live+offline {results['elapsed']:.1f}s")
    assert len(live) == 2 * len(PATTERN_AT), live
    assert {h[1] for h in live} == {f"{bed.tb.srv_ip}:{PLAIN}", f"[{bed.tb.srv_ip6}]:{PLAIN}"}
    header = {}                      # per flow: the response header's length
    for h in live:
        header.setdefault(h[0], h[3] - PATTERN_AT[0])
    assert all(h[2:] == ("server->client", at + header[h[0]], len(PATTERN), "mask", len(PATTERN))
               for h, at in zip(live, PATTERN_AT * 2)), live
    assert off == live


def test_client_side_capture_alone_is_not_the_monitor_input(results):
    # cli0 saw the server's frames after the monitor: the pattern masked already
    assert results["scrub_offline_cli0"] == []
