"""`mosxdp demo`: real TCP through the inline monitor on a veth/netns testbed.

client netns -- veth -- [monitor netns: A | B] -- veth -- server netns

The monitor (`mosxdp run connlog --iface A --peer B`, plus flowdump in a second
run) sits in the wire; curl downloads and uploads over IPv4 and IPv6 go through
it; the summary shows each transfer's checksum check, the connlog lines and the
datapath counters. Everything is removed at the end, also on Ctrl-C.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from .testbed import Testbed, probe

PORT = 8080


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wait_attached(tb, timeout=60.0):
    """The monitor is ready when both interfaces carry an XDP program."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = tb.run("mon", ["ip", "-d", "link", "show"], capture_output=True, text=True).stdout
        if out.count("prog/xdp") >= 2:
            time.sleep(0.5)
            return True
        time.sleep(0.2)
    return False


def _attach_endpoint_programs(tb, python):
    """A veth takes frames redirected into its peer only when it runs XDP itself."""
    code = ("import os, sys; from mosxdp.io.xdp import attach_pass_program; "
            "os.close(attach_pass_program(sys.argv[1]).fd)")
    for ns, ifname in (("cli", tb.cli_if), ("srv", tb.srv_if)):
        result = tb.run(ns, [python, "-c", code, ifname], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"cannot attach the XDP pass program to {ifname}: "
                               f"{result.stderr.strip().splitlines()[-1:]}")


def _start_monitor(tb, python, app_argv, log_path):
    argv = [python, "-m", "mosxdp.cli", "run", *app_argv, "--iface", tb.iface_a, "--peer", tb.iface_b]
    log = open(log_path, "w")
    proc = tb.popen("mon", argv, stdout=log, stderr=subprocess.STDOUT)
    if not _wait_attached(tb):
        tb.stop(proc)
        log.close()
        raise RuntimeError("the monitor did not attach within 60 s; see " + log_path)
    return proc, log


def _curl(tb, url, out, upload=None, extra=()):
    argv = ["curl", "-sS", "--max-time", "60", "-o", out, "-w", "%{http_code} %{size_download} %{size_upload}"]
    if upload:
        argv += ["-T", upload, "-H", "Expect:"]
    started = time.monotonic()
    result = tb.run("cli", [*argv, *extra, url], capture_output=True, text=True)
    return result, time.monotonic() - started


def run_demo(keep=False):
    reason = probe()
    if reason:
        print(f"mosxdp demo: cannot build the testbed here: {reason}", file=sys.stderr)
        return 1
    python = sys.executable
    work = tempfile.mkdtemp(prefix="mosxdp-demo-")
    www = os.path.join(work, "www")
    os.makedirs(www)
    files = {"small.bin": 1024, "big.bin": 20 * 1024 * 1024}
    for name, size in files.items():
        with open(os.path.join(www, name), "wb") as f:
            f.write(os.urandom(size))
    upload_src = os.path.join(work, "upload.bin")
    with open(upload_src, "wb") as f:
        f.write(os.urandom(2 * 1024 * 1024))
    conn_log = os.path.join(work, "conn.log")
    started = time.monotonic()
    results = []
    try:
        with Testbed(kind="inline") as tb:
            print(f"testbed: {tb.cli_ns} ({tb.cli_ip}, {tb.cli_ip6}) -- [{tb.mon_ns}: "
                  f"{tb.iface_a} | {tb.iface_b}] -- {tb.srv_ns} ({tb.srv_ip}, {tb.srv_ip6})")
            server = tb.popen("srv", [python, "-m", "mosxdp.demo_server", str(PORT), www, work],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            tb.wait_listen("srv", PORT)
            _attach_endpoint_programs(tb, python)
            monitor, log = _start_monitor(
                tb, python, ["connlog", "--output", conn_log], os.path.join(work, "connlog.out"))
            print("monitor: mosxdp run connlog --iface A --peer B (inline, AF_XDP)")
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
                        _sha256(os.path.join(work, "uploaded.bin")) == _sha256(upload_src)
                else:
                    ok = result.returncode == 0 and _sha256(out) == _sha256(os.path.join(www, name))
                results.append((label, ok, seconds, result.stdout.strip() or result.stderr.strip()))
            tb.stop(monitor, timeout=15)
            log.close()
            tb.stop(server)
            detached = "prog/xdp" not in tb.run("mon", ["ip", "-d", "link", "show"],
                                                capture_output=True, text=True).stdout
        print()
        print("transfers through the inline monitor (sha256 of what arrived vs what was sent):")
        for label, ok, seconds, detail in results:
            print(f"  {'OK ' if ok else 'BAD'} {label:<22} {seconds:6.2f} s   curl: {detail}")
        print()
        print("connlog (one Zeek conn.log line per flow, written by the monitor):")
        if os.path.exists(conn_log):
            with open(conn_log) as f:
                for line in f:
                    rec = json.loads(line)
                    print(f"  {rec['id.orig_h']}:{rec['id.orig_p']} -> {rec['id.resp_h']}:{rec['id.resp_p']}"
                          f"  {rec['conn_state']:<4} {rec['history']:<10} orig_bytes={rec['orig_bytes']}"
                          f" resp_bytes={rec['resp_bytes']} pkts={rec['orig_pkts']}/{rec['resp_pkts']}"
                          f" states={rec['client_state']}/{rec['server_state']} end={rec['end_reason']}")
        print()
        print(f"XDP programs detached after exit: {'yes' if detached else 'NO'}")
        print(f"demo finished in {time.monotonic() - started:.1f} s")
        return 0 if all(ok for _, ok, _, _ in results) and detached else 1
    except KeyboardInterrupt:
        print("\nmosxdp demo: interrupted; testbed removed", file=sys.stderr)
        return 130
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"demo files kept in {work}")
