"""`mosxdp demo`: real TCP through the inline monitor on a veth/netns testbed.

client netns -- veth -- [monitor netns: A | B] -- veth -- server netns

The monitor (`mosxdp run connlog --iface A --peer B`, plus flowdump in a second
run) sits in the wire; curl downloads and uploads over IPv4 and IPv6 go through
it; the summary shows each transfer's checksum check, the connlog lines and the
datapath counters. Everything is removed at the end, also on Ctrl-C.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from .lab import sha256_file, wait_attached
from .passprog import attach_to_endpoints
from .testbed import Testbed, TestbedError, probe

PORT = 8080


class DemoError(RuntimeError):
    """The demo could not run: one line says why."""


def _start_monitor(tb, python, app_argv, log_path):
    argv = [python, "-m", "mosxdp.cli", "run", *app_argv, "--iface", tb.iface_a, "--peer", tb.iface_b]
    log = open(log_path, "w")
    proc = tb.popen("mon", argv, stdout=log, stderr=subprocess.STDOUT)
    if not wait_attached(tb, proc):
        tb.stop(proc)
        log.close()
        with open(log_path) as f:
            last = f.read().strip().splitlines()[-1:] or ["(no output)"]
        raise DemoError(f"the monitor did not start: {last[0]}")
    return proc, log


def _curl(tb, url, out, upload=None, extra=()):
    argv = ["curl", "-sS", "--max-time", "60", "-o", out, "-w", "%{http_code} %{size_download} %{size_upload}"]
    if upload:
        argv += ["-T", upload, "-H", "Expect:"]
    started = time.monotonic()
    result = tb.run("cli", [*argv, *extra, url], capture_output=True, text=True)
    return result, time.monotonic() - started


SECRET = b"CONFIDENTIAL"
RULES = """# mosxdp demo rules (mOS simple_firewall format)
DROP    0.0.0.0      10.77.0.2/32  dport:8081
DROP    ::           fd77::2/128   dport:8081
"""


def _read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_demo(keep=False):
    reason = probe()
    if reason:
        print(f"mosxdp demo: cannot build the testbed here: {reason}", file=sys.stderr)
        return 1
    python = sys.executable
    work = tempfile.mkdtemp(prefix="mosxdp-demo-")
    www = os.path.join(work, "www")
    os.makedirs(www)
    for name, size in {"small.bin": 1024, "big.bin": 20 * 1024 * 1024}.items():
        with open(os.path.join(www, name), "wb") as f:
            f.write(os.urandom(size))
    with open(os.path.join(www, "secret.txt"), "wb") as f:
        f.write(b"quarterly numbers: " + SECRET + b" do not forward\n" * 1 + b"x" * 3000 + b"\n")
    upload_src = os.path.join(work, "upload.bin")
    with open(upload_src, "wb") as f:
        f.write(os.urandom(2 * 1024 * 1024))
    rules = os.path.join(work, "rules.conf")
    with open(rules, "w") as f:
        f.write(RULES)
    logs = {name: os.path.join(work, name) for name in ("conn.log", "scrub.log", "fw.json")}
    started = time.monotonic()
    results = []
    try:
        with Testbed(kind="inline") as tb:
            print(f"testbed: {tb.cli_ns} ({tb.cli_ip}, {tb.cli_ip6}) -- [{tb.mon_ns}: "
                  f"{tb.iface_a} | {tb.iface_b}] -- {tb.srv_ns} ({tb.srv_ip}, {tb.srv_ip6})")
            servers = [tb.popen("srv", [python, "-m", "mosxdp.demo.server", www, str(PORT), str(PORT + 1),
                                        "--upload-dir", work],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
            tb.wait_listen("srv", PORT)
            tb.wait_listen("srv", PORT + 1)
            attach_to_endpoints(tb, python=python)
            monitor, log = _start_monitor(
                tb, python,
                [os.path.join(os.path.dirname(__file__), "app.py"),
                 "--rules", rules, "--fw-stats", logs["fw.json"], "--pattern", SECRET.decode(),
                 "--scrub-log", logs["scrub.log"], "--conn-log", logs["conn.log"], "--stats"],
                os.path.join(work, "monitor.out"))
            print("monitor: simple_firewall + scrub + connlog, inline on A|B (XDP + AF_XDP)")
            transfers = [
                ("IPv4 download 1 KiB", f"http://{tb.srv_ip}:{PORT}/small.bin", "small.bin", None),
                ("IPv4 download 20 MiB", f"http://{tb.srv_ip}:{PORT}/big.bin", "big.bin", None),
                ("IPv6 download 20 MiB", f"http://[{tb.srv_ip6}]:{PORT}/big.bin", "big.bin", None),
                ("IPv4 upload 2 MiB", f"http://{tb.srv_ip}:{PORT}/upload.bin", None, upload_src),
            ]
            for label, url, name, upload in transfers:
                out = os.path.join(work, "got-" + label.replace(" ", "_"))
                result, seconds = _curl(tb, url, out if not upload else "/dev/null", upload,
                                        extra=("-g",))
                if upload:
                    ok = os.path.exists(os.path.join(work, "uploaded.bin")) and \
                        sha256_file(os.path.join(work, "uploaded.bin")) == sha256_file(upload_src)
                else:
                    ok = result.returncode == 0 and sha256_file(out) == sha256_file(os.path.join(www, name))
                results.append((label, ok, seconds, result.stdout.strip() or result.stderr.strip()))
            # Blocked by a firewall rule: the SYN never reaches the server.
            blocked, seconds = _curl(tb, f"http://{tb.srv_ip}:{PORT + 1}/small.bin", "/dev/null",
                                     extra=("--connect-timeout", "2"))
            results.append(("IPv4 to port 8081 (DROP rule)", blocked.returncode != 0, seconds,
                            blocked.stderr.strip() or blocked.stdout.strip()))
            # Scrubbed: the server's CONFIDENTIAL leaves the monitor as XXXXXXXXXXXX.
            scrubbed_path = os.path.join(work, "secret-received.txt")
            scrubbed, seconds = _curl(tb, f"http://{tb.srv_ip}:{PORT}/secret.txt", scrubbed_path)
            got = open(scrubbed_path, "rb").read() if os.path.exists(scrubbed_path) else b""
            results.append(("IPv4 secret.txt (scrubbed)", SECRET not in got and b"X" * len(SECRET) in got,
                            seconds, got[:40].decode(errors="replace").strip()))
            # Ctrl-C: the monitor leaves its program attached as the kernel's forwarder
            # (fail-open), so traffic still flows; `mosxdp detach` then cuts the link.
            tb.stop(monitor, sig=2, timeout=15)
            log.close()
            out = os.path.join(work, "got-after-stop")
            after, seconds = _curl(tb, f"http://{tb.srv_ip}:{PORT}/small.bin", out,
                                   extra=("--max-time", "5"))
            results.append(("1 KiB after stop (fail-open)", after.returncode == 0 and
                            sha256_file(out) == sha256_file(os.path.join(www, "small.bin")),
                            seconds, after.stdout.strip() or after.stderr.strip()))
            tb.run("mon", [python, "-m", "mosxdp.cli", "detach", "--iface", tb.iface_a,
                           "--iface", tb.iface_b], capture_output=True, text=True, timeout=60)
            for server in servers:
                tb.stop(server)
            detached = "prog/xdp" not in tb.run("mon", ["ip", "-d", "link", "show"],
                                                capture_output=True, text=True).stdout
        print()
        print("transfers through the inline monitor:")
        for label, ok, seconds, detail in results:
            print(f"  {'OK ' if ok else 'BAD'} {label:<30} {seconds:6.2f} s   {detail}")
        print()
        print("simple_firewall rule hits:")
        if os.path.exists(logs["fw.json"]):
            with open(logs["fw.json"]) as f:
                print("  " + json.dumps(json.load(f)))
        print("scrub hits:")
        for hit in _read_lines(logs["scrub.log"]):
            print(f"  {hit}")
        print("connlog (one Zeek conn.log line per flow):")
        for rec in _read_lines(logs["conn.log"]):
            print(f"  {rec['id.orig_h']}:{rec['id.orig_p']} -> {rec['id.resp_h']}:{rec['id.resp_p']}"
                  f"  {rec['conn_state']:<6} {rec['history']:<10} orig_bytes={rec['orig_bytes']}"
                  f" resp_bytes={rec['resp_bytes']} pkts={rec['orig_pkts']}/{rec['resp_pkts']}"
                  f" states={rec['client_state']}/{rec['server_state']} end={rec['end_reason']}")
        print("datapath (monitor's last words):")
        with open(os.path.join(work, "monitor.out")) as f:
            for line in f.read().splitlines()[-4:]:
                print(f"  {line}")
        print()
        print(f"XDP programs detached by `mosxdp detach`: {'yes' if detached else 'NO'}")
        print(f"demo finished in {time.monotonic() - started:.1f} s")
        return 0 if all(ok for _, ok, _, _ in results) and detached else 1
    except KeyboardInterrupt:
        print("\nmosxdp demo: interrupted; testbed removed", file=sys.stderr)
        return 130
    except (DemoError, TestbedError) as exc:
        print(f"mosxdp demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"demo files kept in {work}")
