#!/usr/bin/env python3
"""Soak: iperf3 and many short curl downloads through the inline monitor running flowdump.

    .venv/bin/python scripts/soak.py [--minutes 5] [--streams 2] [--curl-workers 3]
        [--urls-per-curl 8] [--sample 5] [--warmup SECONDS] [--rss-bound-mb 20]
        [--iperf-run 30] [--iperf-bitrate RATE] [--json OUT] [--keep]

Root only. An inline testbed (client ns -- A [monitor ns] B -- server ns, XDP_PASS on the
endpoints) with `mosxdp run flowdump --iface A --peer B --stats --stats-json F` in the
monitor namespace. For --minutes:

  * iperf3: back-to-back runs of --iperf-run seconds, --streams parallel streams, IPv4 and
    IPv6 alternately (server in the server ns, client in the client ns);
  * curl: --curl-workers loops, each a curl process fetching --urls-per-curl random files
    (1 B .. 4 MiB, random bytes, IPv4 or IPv6 at random) from an HTTP/1.0 server: one TCP
    connection per file. Every completed download (curl exit 0, HTTP 200) is checked
    against the served file's sha256, and flowdump's file of the server->client direction
    (named by curl's local port) against the HTTP header + the served file;
  * the monitor's RSS (/proc/PID/status VmRSS) every --sample seconds.

flowdump writes to a tmpfs directory (/dev/shm when it exists) that is kept small as the run
goes: a download's two files are deleted once checked, stream files with more than 64 MiB
allocated (the iperf3 streams) are truncated to 0 (flowdump's pwrite at its offset then
makes a sparse file), files not written for 10 s are deleted.

At the end the monitor, which must still be running, is stopped with SIGINT; its exit code
and the --stats exit summary (`mosxdp: umem frames {...}`, `ERROR` when the UMEM frame
accounting does not balance) are checked. Printed: a summary table (connections, bytes,
Gbps, RSS over time, accounting, checks). Exit 0 when every check passes:

  monitor alive until SIGINT, exit code 0; the frame accounting balances; every completed
  download byte-identical and flowdump's file of it complete; RSS growth from the end of
  the warm-up (--warmup, default min(60 s, a quarter of the run)) to the end below
  --rss-bound-mb; some iperf3 bytes and curl downloads went through.

--json OUT writes the same figures as JSON (tests/netns/test_soak.py runs --minutes 1).
"""
import argparse
import glob
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from mosxdp.demo.lab import live_probe, rss_kib, sha256_file, xdp_on_both  # noqa: E402
from mosxdp.demo.passprog import attach_to_endpoints  # noqa: E402

PY = sys.executable
HTTP_PORT = 8080
IPERF_PORT = 5201
ATTACH_TIMEOUT = 90.0
# Served files: name -> size. Mostly small (many short connections), some larger.
FILE_SIZES = {
    "b1": 1, "b517": 517, "b1448": 1448, "b4093": 4093, "b20k": 20011, "b64k": 65536,
    "b200k": 200_003, "b1m": 1 << 20, "b4m": 4 * (1 << 20) + 7,
}
FILE_WEIGHTS = {"b1": 3, "b517": 3, "b1448": 3, "b4093": 3, "b20k": 3, "b64k": 2,
                "b200k": 2, "b1m": 1, "b4m": 1}
TRUNCATE_ALLOCATED = 64 << 20   # bytes allocated in a flowdump file before it is truncated
# curl can finish before the monitor has seen the client's last ACK; bytes that came
# before the monitor saw the window open for them reach the file at that ACK.
FLOWDUMP_LAG = 2.0
STALE_SECONDS = 10.0            # flowdump files not written for this long are deleted

def probe():
    """None when the soak can run here, else why not."""
    return live_probe(("iperf3", "curl"))


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


class Soak:
    def __init__(self, tb, args, work):
        self.tb, self.args, self.work = tb, args, work
        self.www = os.path.join(work, "www")
        self.downloads = os.path.join(work, "downloads")
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.flowdir_parent = tempfile.mkdtemp(prefix="mosxdp-soak-flows-", dir=shm)
        self.flowdir = os.path.join(self.flowdir_parent, "flows")
        self.stats_json = os.path.join(work, "stats.json")
        self.log_path = os.path.join(work, "monitor.log")
        os.makedirs(self.www)
        os.makedirs(self.downloads)
        self.digests = {}
        rng = random.Random(1)
        for name, size in FILE_SIZES.items():
            data = rng.randbytes(size)
            with open(os.path.join(self.www, name), "wb") as f:
                f.write(data)
            self.digests[name] = hashlib.sha256(data).hexdigest()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.curl = dict(connections=0, completed=0, bytes=0, mismatched=0, failed=0,
                         by_family={4: 0, 6: 0}, flowdump_ok=0, flowdump_bad=0,
                         flowdump_missing=0)
        self.failures = []          # (what, detail) of failed/mismatched downloads
        self.flowdump_problems = []
        self.iperf = dict(runs=0, failed_runs=0, bytes=0, seconds=0.0, gbps=[])
        self.iperf_errors = []
        self.rss = []               # (seconds since start, KiB)
        self.cleaner = dict(deleted=0, truncated=0, peak_bytes=0)
        self.mon = None
        self.started = None

    # ---------------------------------------------------------------- set-up
    def start(self):
        tb = self.tb
        attach_to_endpoints(tb)
        tb.popen("srv", [PY, "-m", "mosxdp.demo.server", self.www, str(HTTP_PORT)],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tb.popen("srv", ["iperf3", "-s", "-p", str(IPERF_PORT)], stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
        tb.wait_listen("srv", HTTP_PORT)
        tb.wait_listen("srv", IPERF_PORT)
        argv = [PY, "-m", "mosxdp.cli", "run", "flowdump", "--iface", tb.iface_a,
                "--peer", tb.iface_b, "--outdir", self.flowdir, "--stats",
                "--stats-json", self.stats_json]
        self.log = open(self.log_path, "w")
        self.mon = tb.popen("mon", argv, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _attached(self):
        return xdp_on_both(self.tb, timeout=10)

    def _wait_ready(self):
        """Both interfaces carry the program, then flowdump has written a warm-up flow."""
        deadline = time.monotonic() + ATTACH_TIMEOUT
        while not self._attached():
            self._check_alive("before attaching")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the monitor did not attach in {ATTACH_TIMEOUT:.0f} s")
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while not (os.path.isdir(self.flowdir) and os.listdir(self.flowdir)):
            self._check_alive("in the warm-up")
            if time.monotonic() > deadline:
                raise RuntimeError("flowdump saw no warm-up connection in 30 s")
            self.tb.run("cli", ["curl", "-sS", "--max-time", "2", "-o", "/dev/null",
                                f"http://{self.tb.srv_ip}:{HTTP_PORT}/b1"],
                        capture_output=True, timeout=10)
            time.sleep(0.05)
        for name in os.listdir(self.flowdir):
            os.unlink(os.path.join(self.flowdir, name))

    def _check_alive(self, when):
        if self.mon.poll() is not None:
            self.log.flush()
            with open(self.log_path, errors="replace") as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"the monitor exited ({self.mon.returncode}) {when}:\n{tail}")

    # ---------------------------------------------------------------- loads
    def _remaining(self):
        return self.deadline - time.monotonic()

    def iperf_loop(self):
        tb, n = self.tb, 0
        while not self.stop_event.is_set():
            seconds = min(self.args.iperf_run, int(self._remaining()))
            if seconds < 3:
                return
            host = tb.srv_ip if n % 2 == 0 else tb.srv_ip6
            n += 1
            argv = ["iperf3", "-c", host, "-p", str(IPERF_PORT), "-P", str(self.args.streams),
                    "-t", str(seconds), "-J"]
            if self.args.iperf_bitrate:
                argv += ["-b", self.args.iperf_bitrate]
            try:
                r = tb.run("cli", argv, capture_output=True, text=True, timeout=seconds + 60)
                out = json.loads(r.stdout) if r.stdout.strip() else {}
            except (subprocess.TimeoutExpired, ValueError) as exc:
                r, out = None, {"error": repr(exc)}
            received = out.get("end", {}).get("sum_received", {})
            with self.lock:
                if r is None or r.returncode != 0 or "error" in out or not received:
                    self.iperf["failed_runs"] += 1
                    self.iperf_errors.append(out.get("error") or (r.stderr[-300:] if r else "?"))
                    time.sleep(1)
                    continue
                self.iperf["runs"] += 1
                self.iperf["bytes"] += int(received["bytes"])
                self.iperf["seconds"] += float(received["seconds"])
                self.iperf["gbps"].append(round(received["bits_per_second"] / 1e9, 3))

    def curl_loop(self, worker):
        from mosxdp.apps.flowdump import endpoint_name
        tb = self.tb
        rng = random.Random(1000 + worker)
        names, weights = list(FILE_WEIGHTS), list(FILE_WEIGHTS.values())
        batch = 0
        while not self.stop_event.is_set() and self._remaining() > 1:
            batch += 1
            picks = [(rng.choices(names, weights)[0], rng.choice((4, 6)))
                     for _ in range(self.args.urls_per_curl)]
            argv = ["curl", "-sS", "-g", "--max-time", "30", "--connect-timeout", "10",
                    "-w", "%{http_code} %{size_download} %{local_port} %{exitcode}\\n"]
            outs = []
            for i, (name, family) in enumerate(picks):
                out = os.path.join(self.downloads, f"w{worker}-{batch}-{i}-{name}")
                outs.append(out)
                host = tb.srv_ip if family == 4 else f"[{tb.srv_ip6}]"
                argv += ["-o", out, f"http://{host}:{HTTP_PORT}/{name}"]
            try:
                r = tb.run("cli", argv, capture_output=True, text=True,
                           timeout=30 * len(picks) + 30)
                lines = r.stdout.splitlines()
            except subprocess.TimeoutExpired:
                lines = []
            for i, (name, family) in enumerate(picks):
                fields = lines[i].split() if i < len(lines) else []
                out = outs[i]
                with self.lock:
                    self.curl["connections"] += 1
                    self.curl["by_family"][family] += 1
                if len(fields) != 4 or fields[0] != "200" or fields[3] != "0":
                    with self.lock:
                        self.curl["failed"] += 1
                        self.failures.append(("failed", name, family, " ".join(fields) or "no result"))
                else:
                    ok = os.path.exists(out) and sha256_file(out) == self.digests[name]
                    with self.lock:
                        if ok:
                            self.curl["completed"] += 1
                            self.curl["bytes"] += FILE_SIZES[name]
                        else:
                            self.curl["mismatched"] += 1
                            self.failures.append(("mismatch", name, family, " ".join(fields)))
                    cli = (tb.cli_ip, tb.srv_ip) if family == 4 else (tb.cli_ip6, tb.srv_ip6)
                    self._check_flowdump(endpoint_name(cli[1], HTTP_PORT),
                                         endpoint_name(cli[0], int(fields[2])), name)
                try:
                    os.unlink(out)
                except OSError:
                    pass

    def _check_flowdump(self, srv, cli, name):
        """flowdump's server->client file of a completed download holds the HTTP header and
        the served file; both files of the connection are then deleted. With a reused
        4-tuple flowdump adds c1, c2...: any candidate may match."""
        good = None
        deadline = time.monotonic() + FLOWDUMP_LAG
        while True:
            candidates = glob.glob(os.path.join(glob.escape(self.flowdir), f"{srv}-{cli}*"))
            good = next((p for p in candidates if self._holds_download(p, name)), None)
            if good or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        with self.lock:
            if good:
                self.curl["flowdump_ok"] += 1
            elif candidates:
                self.curl["flowdump_bad"] += 1
                sizes = [os.path.getsize(p) for p in candidates if os.path.exists(p)]
                self.flowdump_problems.append(f"{srv}-{cli} ({name}): sizes {sizes} "
                                              f"{self._describe_mismatch(candidates, name)}")
            else:
                self.curl["flowdump_missing"] += 1
                self.flowdump_problems.append(f"{srv}-{cli} ({name}): no file")
        if good:
            suffix = good[len(os.path.join(self.flowdir, f"{srv}-{cli}")):]
            for path in (good, os.path.join(self.flowdir, f"{cli}-{srv}{suffix}")):
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _holds_download(self, path, name):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return False
        end = data.find(b"\r\n\r\n")
        return (end > 0 and data.startswith(b"HTTP/1.0 200 OK\r\n")
                and hashlib.sha256(data[end + 4:]).hexdigest() == self.digests[name])

    def _describe_mismatch(self, candidates, name):
        """Where a bad file first differs from the served file and whether that stretch is
        zeros (bytes the monitor did not write) or other bytes."""
        with open(os.path.join(self.www, name), "rb") as f:
            want = f.read()
        notes = []
        for path in candidates:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            body = data[data.find(b"\r\n\r\n") + 4:]
            first = next((i for i, (a, b) in enumerate(zip(body, want)) if a != b), None)
            if first is None:
                notes.append(f"body {len(body)} of {len(want)} bytes, a prefix")
                continue
            last = max(i for i, (a, b) in enumerate(zip(body, want)) if a != b)
            zeros = not any(body[first:last + 1])
            notes.append(f"differs at {first}..{last} ({'zeros' if zeros else 'other bytes'})")
        return "; ".join(notes)

    def cleaner_loop(self):
        while not self.stop_event.wait(2.0):
            self.clean_once()

    def clean_once(self):
        now = time.time()
        total = 0
        try:
            names = os.listdir(self.flowdir)
        except OSError:
            return
        for name in names:
            path = os.path.join(self.flowdir, name)
            try:
                st = os.stat(path)
                allocated = st.st_blocks * 512
                if allocated > TRUNCATE_ALLOCATED:
                    os.truncate(path, 0)
                    self.cleaner["truncated"] += 1
                    allocated = 0
                elif now - st.st_mtime > STALE_SECONDS:
                    os.unlink(path)
                    self.cleaner["deleted"] += 1
                    allocated = 0
                total += allocated
            except OSError:
                pass
        self.cleaner["peak_bytes"] = max(self.cleaner["peak_bytes"], total)

    def sampler_loop(self):
        pid = self.mon.pid
        while True:
            rss = rss_kib(pid)
            if rss is not None and self.mon.poll() is None:
                self.rss.append((round(time.monotonic() - self.started, 1), rss))
            if self.stop_event.wait(self.args.sample):
                return

    # ---------------------------------------------------------------- run
    def run(self):
        self.started = time.monotonic()
        self.deadline = self.started + self.args.minutes * 60
        self.cpu_start = cpu_seconds(self.mon.pid)
        threads = [threading.Thread(target=self.iperf_loop, name="iperf3")]
        threads += [threading.Thread(target=self.curl_loop, args=(w,), name=f"curl{w}")
                    for w in range(self.args.curl_workers)]
        helpers = [threading.Thread(target=self.sampler_loop, name="rss"),
                   threading.Thread(target=self.cleaner_loop, name="cleaner")]
        for t in threads + helpers:
            t.daemon = True
            t.start()
        self.died_at = None
        try:
            while time.monotonic() < self.deadline:
                if self.mon.poll() is not None:
                    self.died_at = time.monotonic() - self.started
                    break
                time.sleep(0.5)
                if self.args.progress and int(time.monotonic() - self.started) % 30 == 0:
                    self._progress()
        finally:
            # the loads finish what they started (curl batches, the last iperf3 run, which
            # ends at the deadline) and start nothing new
            self.stop_event.set()
            for t in threads:
                t.join(timeout=120)
            self.load_seconds = time.monotonic() - self.started
            self.cpu_end = cpu_seconds(self.mon.pid)
            for t in helpers:
                t.join(timeout=10)
            final = rss_kib(self.mon.pid)
            if final is not None and self.mon.poll() is None:
                self.rss.append((round(time.monotonic() - self.started, 1), final))
        self.alive_at_end = self.mon.poll() is None
        if self.alive_at_end:
            os.kill(self.mon.pid, signal.SIGINT)
        try:
            self.exit_code = self.mon.wait(60)
        except subprocess.TimeoutExpired:
            self.exit_code = None
            self.tb.stop(self.mon, signal.SIGKILL)
        self.log.close()

    def _progress(self):
        with self.lock:
            c, i = dict(self.curl), dict(self.iperf)
        rss = self.rss[-1][1] if self.rss else 0
        print(f"  t={time.monotonic() - self.started:5.0f} s  curl {c['completed']}/"
              f"{c['connections']}  iperf3 runs {i['runs']}  monitor RSS {rss / 1024:.1f} MiB",
              flush=True)
        time.sleep(1)

    # ---------------------------------------------------------------- results
    def results(self):
        with open(self.log_path, errors="replace") as f:
            log = f.read()
        accounting = re.search(r"^mosxdp: umem frames (.*)$", log, re.M)
        stats = {}
        if os.path.exists(self.stats_json):
            with open(self.stats_json) as f:
                stats = json.load(f)
        live = stats.get("live") or {}
        core = stats.get("stack") or {}
        warmup = self.args.warmup if self.args.warmup is not None else min(60.0, self.args.minutes * 15)
        after = [kib for t, kib in self.rss if t >= warmup]
        at_warmup = after[0] if after else None
        end = self.rss[-1][1] if self.rss else None
        peak = max((kib for _, kib in self.rss), default=None)
        growth = (end - at_warmup) / 1024 if at_warmup is not None and end is not None else None
        seconds = self.load_seconds
        total_bytes = self.iperf["bytes"] + self.curl["bytes"]
        cpu = (self.cpu_end - self.cpu_start
               if self.cpu_end is not None and self.cpu_start is not None else None)
        checks = {
            "monitor alive until SIGINT": self.alive_at_end,
            "monitor exit code 0": self.exit_code == 0,
            "umem frame accounting balances": bool(accounting) and "ERROR" not in accounting[0]
            and "accounting_error" not in live,
            "every completed download byte-identical": self.curl["mismatched"] == 0,
            "flowdump holds every completed download": self.curl["flowdump_bad"] == 0
            and self.curl["flowdump_missing"] == 0,
            f"RSS growth after warm-up < {self.args.rss_bound_mb} MiB":
                growth is not None and growth < self.args.rss_bound_mb,
            "iperf3 and curl traffic went through": self.iperf["bytes"] > 0
            and self.curl["completed"] > 0,
        }
        return {
            "ok": all(checks.values()),
            "checks": checks,
            "minutes": self.args.minutes,
            "seconds": round(seconds, 1),
            "monitor": {
                "exit_code": self.exit_code, "alive_at_end": self.alive_at_end,
                "died_at": self.died_at, "cpu_seconds": cpu,
                "accounting": accounting[1] if accounting else None,
                "accounting_error": live.get("accounting_error"),
                "frames": live.get("frames"), "forwarded": live.get("forwarded"),
                "dropped": live.get("dropped"), "tx_ring_full": live.get("tx_ring_full"),
                "xdp": live.get("xdp"),
                "flows_created": core.get("flows_created"), "flows_ended": core.get("flows_ended"),
                "flows_evicted": core.get("flows_evicted"),
                "buffer_overruns": core.get("buffer_overruns"),
                "callback_errors": core.get("callback_errors"),
                "summary": [line for line in log.splitlines() if line.startswith("mosxdp:")],
            },
            "rss_kib": {"samples": self.rss, "warmup_s": warmup, "at_warmup": at_warmup,
                        "end": end, "max": peak,
                        "growth_mib": None if growth is None else round(growth, 2)},
            "curl": {**self.curl, "by_family": {str(k): v for k, v in self.curl["by_family"].items()},
                     "per_second": round(self.curl["connections"] / seconds, 1),
                     "failures": self.failures[:20], "flowdump_problems": self.flowdump_problems[:20]},
            "iperf3": {**self.iperf, "errors": self.iperf_errors[:5],
                       "gbps_mean": round(self.iperf["bytes"] * 8 / self.iperf["seconds"] / 1e9, 3)
                       if self.iperf["seconds"] else 0.0},
            "total": {"bytes": total_bytes, "gbps": round(total_bytes * 8 / seconds / 1e9, 3)},
            "cleaner": dict(self.cleaner),
        }

    def close(self):
        shutil.rmtree(self.flowdir_parent, ignore_errors=True)


def print_summary(res):
    m, r, c, i = res["monitor"], res["rss_kib"], res["curl"], res["iperf3"]
    mib = lambda k: "-" if k is None else f"{k / 1024:.1f} MiB"  # noqa: E731
    rows = [
        ("duration", f"{res['seconds']:.0f} s of load ({res['minutes']:g} min)"),
        ("curl connections", f"{c['connections']} ({c['per_second']}/s; IPv4 {c['by_family']['4']}, "
                             f"IPv6 {c['by_family']['6']})"),
        ("  completed, sha256 equal", f"{c['completed']} ({c['bytes'] / 1e6:.1f} MB)"),
        ("  completed, sha256 differs", str(c["mismatched"])),
        ("  not completed (curl error)", str(c["failed"])),
        ("  flowdump file = header+body", f"{c['flowdump_ok']} (bad {c['flowdump_bad']}, missing "
                                          f"{c['flowdump_missing']})"),
        ("iperf3 runs", f"{i['runs']} x {res.get('streams', '?')} streams (failed {i['failed_runs']}), "
                        f"{i['bytes'] / 1e9:.2f} GB, {i['gbps_mean']:.2f} Gbps "
                        f"(runs: {', '.join(f'{g:.2f}' for g in i['gbps'])})"),
        ("total through the monitor", f"{res['total']['bytes'] / 1e9:.2f} GB, "
                                      f"{res['total']['gbps']:.2f} Gbps"),
        ("monitor frames", f"{m['frames']} in, {m['forwarded']} forwarded, dropped {m['dropped']}"
                           + (f"; XDP: {m['xdp'].get('rx_total')} seen, {m['xdp'].get('to_xsk')} to "
                              f"the AF_XDP sockets" if isinstance(m["xdp"], dict) else "")),
        ("monitor flows", f"{m['flows_created']} created, {m['flows_ended']} ended, "
                          f"{m['flows_evicted']} evicted; buffer overruns {m['buffer_overruns']}"),
        ("monitor CPU", "-" if m["cpu_seconds"] is None else
         f"{m['cpu_seconds']:.0f} s ({100 * m['cpu_seconds'] / res['seconds']:.0f}% of one CPU)"),
        ("RSS at warm-up end", f"{mib(r['at_warmup'])} (t={r['warmup_s']:g} s)"),
        ("RSS at end", mib(r["end"])),
        ("RSS max", mib(r["max"])),
        ("RSS growth after warm-up", "-" if r["growth_mib"] is None else f"{r['growth_mib']:+.2f} MiB"),
        ("UMEM frame accounting", m["accounting"] or "(no summary)"),
        ("monitor exit code", str(m["exit_code"])),
        ("flowdump dir peak (tmpfs)", f"{res['cleaner']['peak_bytes'] / 1e6:.0f} MB "
                                      f"(truncated {res['cleaner']['truncated']}, deleted "
                                      f"{res['cleaner']['deleted']} stale)"),
    ]
    width = max(len(k) for k, _ in rows)
    print("\nsoak summary")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    samples = r["samples"]
    if samples:
        step = max(1, len(samples) // 12)
        shown = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
        print("  RSS over time: " + ", ".join(f"{t:.0f}s {k / 1024:.1f}" for t, k in shown) + " MiB")
    print("checks:")
    for name, ok in res["checks"].items():
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    for what in ("failures", "flowdump_problems"):
        if c[what]:
            print(f"  {what}: {c[what][:5]}")
    if i["errors"]:
        print(f"  iperf3 errors: {i['errors']}")
    print(f"soak {'PASSED' if res['ok'] else 'FAILED'}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="length of the load (default 5)")
    p.add_argument("--streams", type=int, default=2, help="iperf3 parallel streams (default 2)")
    p.add_argument("--iperf-run", type=int, default=30, help="seconds per iperf3 run (default 30)")
    p.add_argument("--iperf-bitrate", help="iperf3 -b (default: unlimited)")
    p.add_argument("--curl-workers", type=int, default=3, help="parallel curl loops (default 3)")
    p.add_argument("--urls-per-curl", type=int, default=8,
                   help="downloads (one connection each) per curl process (default 8)")
    p.add_argument("--sample", type=float, default=5.0, help="RSS sampling period in s (default 5)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds before RSS must stay flat (default min(60, a quarter of the run))")
    p.add_argument("--rss-bound-mb", type=float, default=20.0,
                   help="largest RSS growth after warm-up that passes, MiB (default 20)")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress lines")
    args = p.parse_args(argv)
    why = probe()
    if why:
        print(f"soak.py: cannot run here: {why}", file=sys.stderr)
        return 2
    from mosxdp.demo.testbed import Testbed, TestbedError
    work = tempfile.mkdtemp(prefix="mosxdp-soak-")
    soak = None
    try:
        with Testbed("inline") as tb:
            soak = Soak(tb, args, work)
            soak.start()
            print(f"soak: {args.minutes:g} min, iperf3 -P {args.streams} + {args.curl_workers} curl "
                  f"loops through `mosxdp run flowdump` inline ({tb.iface_a}|{tb.iface_b})",
                  flush=True)
            soak.run()
            res = soak.results()
            res["streams"] = args.streams
    except (RuntimeError, TestbedError) as exc:
        print(f"soak.py: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("soak.py: interrupted; testbed removed", file=sys.stderr)
        return 130
    finally:
        if soak is not None:
            soak.close()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_summary(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
