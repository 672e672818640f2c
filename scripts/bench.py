#!/usr/bin/env python3
"""Benchmarks: packets per second through the monitor, next to a baseline.

  scripts/bench.py --offline PCAP   core throughput with no app, connlog (state
                                    only: fast-forwarded; and --full-inspection),
                                    flowdump (full reassembly) and zeeklog, and the
                                    ratio to `tcpflow -r PCAP` on the same file.
  scripts/bench.py --live           the AF_XDP datapath on a veth testbed (root).
  scripts/bench.py --live --workers N
                                    the same on veths with N queues, with rows of N
                                    worker processes next to their one-process rows.
  scripts/bench.py --callgrind PCAP instructions per frame of `mosxdp run` offline
                                    (no app, connlog, flowdump) under callgrind:
                                    repeatable whatever else the machine runs.
  scripts/bench.py --make-capture OUT [--size-mb 110]
                                    the big capture: copies of the real captures of
                                    tests/data, each copy on its own addresses and
                                    starting 20 ms after the one before (many flows at
                                    once), until OUT has the size asked for.
  scripts/bench.py --make-capture OUT --short-flows 20000
                                    N short web-like flows of 8 frames, 64 at once:
                                    the cost per flow (--offline OUT measures it).
  scripts/bench.py --sessions [--count 20 --mb 50 --parallel 4]
                                    HTTPS downloads through zeeklog (each TLS flow
                                    handed to the kernel after its handshake) next to
                                    the devmap baseline, with every body, SNI and
                                    conn.log count checked (root; scripts/bench_sessions.py).
  scripts/bench.py --workers PCAP [--max-workers N]
                                    `mosxdp run` wall time on PCAP with 1..N workers
                                    (connlog, flowdump, flowdump --write), outputs
                                    checked identical to one worker's.

Figures are printed, never asserted: tests do not time anything.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _run_offline_once(pcap, app_name, app_argv, repeat, fresh=None, config=None):
    """Best wall time of `repeat` runs of one app over the whole file, in-process, the
    app's outputs written and closed (its teardown and the context's end timed too);
    ``fresh``: a directory removed before each run (an earlier run's files would change
    what flowdump does: each connection would take the next suffix); ``config``: keys
    for mtcp_init."""
    import argparse as _argparse

    from mosxdp import api
    from mosxdp.cli import load_app
    from mosxdp.engine import OfflineEngine
    from mosxdp.io.pcap import PcapReader

    with PcapReader(pcap) as reader:
        frames = [(ts, bytearray(frame)) for ts, frame in reader]
    best = None
    for _ in range(repeat):
        if fresh is not None:
            shutil.rmtree(fresh, ignore_errors=True)
        api.mtcp_init(None, **(config or {}))
        mctx = api.mtcp_create_context(0)
        app = None
        module = None
        if app_name is not None:
            module = load_app(app_name)
            parser = _argparse.ArgumentParser()
            module.add_arguments(parser)
            app = module.setup(mctx, parser.parse_args(app_argv))
        source = [(ts, memoryview(bytearray(frame))) for ts, frame in frames]
        engine = OfflineEngine(mctx, source, None, batch_size=64)
        start = time.perf_counter()
        engine.run()
        if module is not None and hasattr(module, "teardown"):
            module.teardown(app)
        api.mtcp_destroy()
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    return len(frames), best


def bench_offline(pcap, repeat):
    workdir = tempfile.mkdtemp(prefix="mosxdp-bench-")
    try:
        rows = []
        count, no_app = _run_offline_once(pcap, None, [], repeat)
        rows.append(("no app (parse + flow table)", no_app))
        _, state = _run_offline_once(pcap, "connlog", ["--output", os.path.join(workdir, "conn.log")], repeat)
        rows.append(("connlog (state-only, fast fwd)", state))
        _, every = _run_offline_once(pcap, "connlog", ["--output", os.path.join(workdir, "conn.log")],
                                     repeat, config={"full_inspection": True})
        rows.append(("connlog --full-inspection", every))
        flows = os.path.join(workdir, "flows")
        _, full = _run_offline_once(pcap, "flowdump", ["--outdir", flows], repeat, fresh=flows)
        rows.append(("flowdump (full reassembly)", full))
        logs = os.path.join(workdir, "zeeklog")
        os.makedirs(logs)
        _, sessions = _run_offline_once(pcap, "zeeklog", ["--logdir", logs], repeat)
        rows.append(("zeeklog (sessions, then kernel)", sessions))
        tcpflow = None
        if shutil.which("tcpflow"):
            best = None
            for _ in range(repeat):
                out = os.path.join(workdir, "tcpflow")
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                subprocess.run(["tcpflow", "-r", pcap, "-o", out], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                elapsed = time.perf_counter() - start
                best = elapsed if best is None else min(best, elapsed)
            tcpflow = best
        print(f"offline benchmark: {pcap}: {count} frames, best of {repeat} runs, one core")
        print(f"{'configuration':<32} {'seconds':>9} {'kpps':>9} {'vs tcpflow wall':>16}")
        for name, seconds in rows:
            ratio = f"{seconds / tcpflow:.2f}x" if tcpflow else "n/a"
            print(f"{name:<32} {seconds:>9.3f} {count / seconds / 1e3:>9.1f} {ratio:>16}")
        if tcpflow:
            print(f"{'tcpflow -r (process wall time)':<32} {tcpflow:>9.3f} {count / tcpflow / 1e3:>9.1f} {'1.00x':>16}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _callgrind_instructions(argv):
    """Instructions callgrind counts for one run of `argv` (the whole process)."""
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"] + argv,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"bench --callgrind: {' '.join(argv)} failed:\n{out.stderr[-2000:]}")
    for line in out.stderr.splitlines():
        if "Collected :" in line:
            return int(line.rsplit(":", 1)[1])
    raise SystemExit("bench --callgrind: no 'Collected' line from valgrind")


def bench_callgrind(pcap, frames):
    """Per-frame instructions: the difference between runs over the first 2N and the first
    N frames of the capture, over N (start-up and teardown cancel out)."""
    for tool in ("valgrind", "editcap"):
        if not shutil.which(tool):
            raise SystemExit(f"bench --callgrind: {tool} is not installed")
    workdir = tempfile.mkdtemp(prefix="mosxdp-callgrind-")
    try:
        cuts = {}
        for n in (frames, 2 * frames):
            cuts[n] = os.path.join(workdir, f"first{n}.pcap")
            subprocess.run(["editcap", "-F", "pcap", "-r", pcap, cuts[n], f"1-{n}"], check=True,
                           stdout=subprocess.DEVNULL)
        no_app = os.path.join(workdir, "no_app.py")
        with open(no_app, "w") as f:
            f.write("def setup(mctx, args):\n    pass\n")   # no socket: parse and count only
        apps = [("no app", [no_app]),
                ("connlog", ["connlog", "--output", os.path.join(workdir, "conn.log")]),
                ("flowdump", ["flowdump", "--outdir", os.path.join(workdir, "flows")])]
        print(f"callgrind: {pcap}, frames {frames + 1}-{2 * frames} (instructions per frame)")
        for name, app_argv in apps:
            counts = []
            for n in (frames, 2 * frames):
                shutil.rmtree(os.path.join(workdir, "flows"), ignore_errors=True)
                counts.append(_callgrind_instructions(
                    [sys.executable, "-m", "mosxdp.cli", "run", *app_argv, "--pcap", cuts[n]]))
            print(f"{name:<10} {(counts[1] - counts[0]) / frames:>10,.0f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# =====================================================================================
# --live: the AF_XDP datapath on a veth testbed (section owned by the live datapath)
#
# One inline testbed (client ns -- A [monitor ns] B -- server ns). Every row is a
# command run in the monitor namespace; each is measured with the same three loads:
# TCP with iperf3 (1 and 4 streams) and small TCP frames from a raw-socket flooder in
# the client namespace, counted at the server's interface. Rows run in rounds
# (baseline, row 2, ..., baseline, ...) so that a noisy machine hits them alike; the
# median of the rounds is reported with [min-max] and its ratio to the baseline's median.
# Endpoints are pinned to CPU 0 and the monitor to CPU 1 when there are two CPUs.
# The endpoint veths get GRO (what a NIC has by default; it also gives them the NAPI that
# frames redirected into a veth need); --endpoint-xdp-pass uses XDP_PASS programs instead.
#
# Where the endpoints' TCP stacks run. A frame the monitor transmits into a veth is
# received by the peer veth in softirq on the CPU that sent it: without steering, the
# endpoints' IP and TCP receive run on the monitor's CPU, inside its sendto, and are billed
# to the monitor (about half of its CPU with no app). No NIC deployment has that cost. So
# every row runs with RPS on the endpoint veths steering their receive to the endpoints'
# CPU (0); rows marked "shared" keep today's layout (no RPS) to show the artefact.
#
# Per row: the median of the rounds with [min-max], its ratio to the baseline's median,
# and the monitor's CPU per data frame (user and system µs, over the TCP loads, data
# frames counted at the server's interface). The 1-minute load average is printed before
# and after the run and stored in --json.
#
# Adding a row is one line in LIVE_ROWS: (label, argv in the monitor namespace,
# AF_XDP sockets it binds[, "shared"]). "{py}", "{A}", "{B}" and "{tmp}" are substituted.
# =====================================================================================

_BASELINE_HOLDER = (
    "import signal, sys, time\n"
    "from mosxdp.io.xdp import XdpProgram\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "with XdpProgram([sys.argv[1], sys.argv[2]], peers={sys.argv[1]: sys.argv[2]}):\n"
    "    print('ready', flush=True)\n"
    "    while True: time.sleep(1)\n")

# The live engine alone, inline between A and B: with no processor (argv[3] "none": the
# fast path, descriptors move from ring to ring unread) or with the trivial processor
# that forwards every frame (argv[3] "pass": the engine's per-frame path without a core).
_ENGINE_HOLDER = (
    "import signal, sys\n"
    "from mosxdp.engine.live import VERDICT_FORWARD, LiveEngine\n"
    "class PassThrough:\n"
    "    def __init__(self):\n"
    "        self.outbox, self.counters = [], {}\n"
    "    def process(self, frame, ts_us, port):\n"
    "        return VERDICT_FORWARD\n"
    "    def end_batch(self): pass\n"
    "    def advance_clock(self, ts_us): pass\n"
    "    def finish(self): pass\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "processor = PassThrough() if sys.argv[3] == 'pass' else None\n"
    "with LiveEngine(sys.argv[1], sys.argv[2], processor) as engine:\n"
    "    engine.run()\n")

# The hybrid fast path's row: an app that stops monitoring each flow (MOS_STOP_MON, both
# sides) at its first established packet, so the rest of the flow is a kernel BYPASS.
_BYPASS_APP = (
    "import socket\n"
    "from mosxdp import *\n"
    "def on_state(mctx, sock, side, ev, arg):\n"
    "    if mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_SVR) == TcpState.TCP_ESTABLISHED:\n"
    "        mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_STOP_MON, MOS_SIDE_BOTH)\n"
    "def setup(mctx, args):\n"
    "    s = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)\n"
    "    mtcp_setsockopt(mctx, s, SOL_MONSOCKET, MOS_CLIBUF, 0)\n"
    "    mtcp_setsockopt(mctx, s, SOL_MONSOCKET, MOS_SVRBUF, 0)\n"
    "    mtcp_register_callback(mctx, s, MOS_ON_TCP_STATE_CHANGE, MOS_HK_RCV, on_state)\n")

LIVE_ROWS = [
    # label                                  argv (monitor namespace)                          sockets
    ("XDP devmap, no socket (kernel baseline)", ["{py}", "-c", _BASELINE_HOLDER, "{A}", "{B}"], 0),
    ("mosxdp inline, no app",                 ["{py}", "-c", _ENGINE_HOLDER, "{A}", "{B}", "none"], 2),
    ("mosxdp inline, pass-through processor", ["{py}", "-c", _ENGINE_HOLDER, "{A}", "{B}", "pass"], 2),
    # connlog by default: the state-only kernel path (the kernel forwards and counts the data
    # frames, Python sees SYN, FIN, RST and their ACKs); row 12 is the same app per frame
    ("connlog (state-only kernel path)",      ["{py}", "-m", "mosxdp.cli", "run", "connlog", "--iface", "{A}", "--peer", "{B}", "--output", "{tmp}/conn.log"], 2),
    ("mosxdp run flowdump (reassembly)",      ["{py}", "-m", "mosxdp.cli", "run", "flowdump", "--iface", "{A}", "--peer", "{B}", "--outdir", "{tmp}/flows"], 2),
    # connlog's counts need no Python per data frame: at its first data the flow becomes a
    # kernel BYPASS, whose per-flow counters join the line at CONN_END.
    ("connlog --bypass-after-bytes 0",        ["{py}", "-m", "mosxdp.cli", "run", "connlog", "--bypass-after-bytes", "0", "--iface", "{A}", "--peer", "{B}", "--output", "{tmp}/conn0.log"], 2),
    # zeeklog: iperf3's streams are of no session type, handed to the kernel at their first
    # bytes (a TLS flow would go after its handshake); conn.log from the kernel's counters.
    ("mosxdp run zeeklog (bypass after sessions)", ["{py}", "-m", "mosxdp.cli", "run", "zeeklog", "--iface", "{A}", "--peer", "{B}", "--logdir", "{tmp}/zeek"], 2),
    ("bypass after handshake (kernel verdict)", ["{py}", "-m", "mosxdp.cli", "run", "{tmp}/bypass_app.py", "--iface", "{A}", "--peer", "{B}"], 2),
    # today's layout, without RPS: the endpoints' receive runs on the monitor's CPU
    ("XDP devmap baseline, shared layout",    ["{py}", "-c", _BASELINE_HOLDER, "{A}", "{B}"], 0, "shared"),
    ("mosxdp inline, no app, shared layout",  ["{py}", "-c", _ENGINE_HOLDER, "{A}", "{B}", "none"], 2, "shared"),
    # observe-only: the kernel forwards, the app reads copies from a ring buffer
    # (--full-inspection: a copy of every frame, not the state-only entries)
    ("connlog --observe --full-inspection (observe-only)", ["{py}", "-m", "mosxdp.cli", "run", "connlog", "--observe", "--full-inspection", "--iface", "{A}", "--peer", "{B}", "--output", "{tmp}/conn-obs.log"], 0),
    ("flowdump --observe (observe-only)",     ["{py}", "-m", "mosxdp.cli", "run", "flowdump", "--observe", "--iface", "{A}", "--peer", "{B}", "--outdir", "{tmp}/flows-obs"], 0),
    # every frame through Python with full TCP state (the per-packet cost state-only avoids)
    ("connlog --full-inspection (every frame in Python)", ["{py}", "-m", "mosxdp.cli", "run", "connlog", "--full-inspection", "--iface", "{A}", "--peer", "{B}", "--output", "{tmp}/conn-full.log"], 2),
]

# `--live --workers N`: the testbed's veths get N RX and TX queues and the endpoints the
# steering program (symmetric RSS: a flow's frames, both ways, on its worker's queue), and
# these rows run next to their one-process forms (the rows above, on the same testbed). The
# monitor is not pinned: worker w pins itself to CPU w. The CPU figures add up the parent
# and its workers.
WORKER_ROWS = [
    ("connlog --full-inspection, {N} workers", ["{py}", "-m", "mosxdp.cli", "run", "connlog", "--full-inspection", "--workers", "{N}", "--iface", "{A}", "--peer", "{B}", "--output", "{tmp}/conn-full-w.log"], 2, "workers"),
    ("mosxdp run flowdump, {N} workers",    ["{py}", "-m", "mosxdp.cli", "run", "flowdump", "--workers", "{N}", "--iface", "{A}", "--peer", "{B}", "--outdir", "{tmp}/flows-w"], 2, "workers"),
    ("observe-only flowdump, {N} workers",  ["{py}", "-m", "mosxdp.cli", "run", "flowdump", "--observe", "--workers", "{N}", "--iface", "{A}", "--peer", "{B}", "--outdir", "{tmp}/flows-ow"], 0, "workers"),
]

# Small TCP frames (RST|ACK with a payload: the server's kernel drops them without an
# answer) sent as fast as one Python process can through an AF_PACKET socket.
_FLOODER = r'''
import socket, struct, sys, time
ifname, dmac, smac, sip, dip, size, seconds = sys.argv[1:8]
size, seconds = int(size), float(seconds)
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
src, dst = socket.inet_aton(sip), socket.inet_aton(dip)
payload = bytes(max(0, size - 54))
frames = []
for i in range(64):
    tcp = struct.pack("!HHIIBBHHH", 40000 + i, 9, 1000 + i, 1, 5 << 4, 0x14, 512, 0, 0) + payload
    tcp = tcp[:16] + struct.pack("!H", csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    frames.append(bytes.fromhex(dmac.replace(":", "")) + bytes.fromhex(smac.replace(":", "")) + b"\x08\x00" + ip + tcp)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
send = s.send
n = 0
end = time.monotonic() + seconds
while True:
    for f in frames:
        try:
            send(f)
        except OSError:
            pass
    n += 64
    if time.monotonic() >= end:
        break
print(n)
'''


def _pin(cpu):
    return ["taskset", "-c", str(cpu)] if (os.cpu_count() or 1) >= 2 and shutil.which("taskset") else []


def _link_rx(tb, ns, ifname):
    import json as _json
    r = tb.run(ns, ["ip", "-s", "-j", "link", "show", ifname], capture_output=True, text=True)
    return _json.loads(r.stdout)[0]["stats64"]["rx"]["packets"]


def _prog_id(tb, ifname):
    import json as _json
    r = tb.run("mon", ["ip", "-j", "-d", "link", "show", ifname], capture_output=True, text=True)
    try:
        return _json.loads(r.stdout)[0]["xdp"]["prog"]["id"]
    except (ValueError, KeyError, IndexError):
        return None


def _xdp_ready(tb, want_sockets, deadline, flooder, before):
    """Both monitor interfaces carry the row's XDP program (not ``before``'s, the one the
    last row left attached as the kernel's forwarder) and, when the row binds sockets,
    probe TCP frames from the client reach an AF_XDP socket (the program's to_xsk
    counter moves)."""
    from mosxdp.io.xdp import MosxdpMaps
    while time.monotonic() < deadline:
        ids = [_prog_id(tb, ifn) for ifn in (tb.iface_a, tb.iface_b)]
        if None in ids or any(i == b for i, b in zip(ids, before)):
            time.sleep(0.2)
            continue
        if not want_sockets:
            return True
        maps = MosxdpMaps.from_prog_id(ids[0])
        try:
            to_xsk = maps.counters()["to_xsk"]
            tb.run("cli", [sys.executable, flooder, tb.cli_if, tb.srv_mac, tb.cli_mac, tb.cli_ip,
                           tb.srv_ip, "60", "0"], capture_output=True)
            time.sleep(0.05)
            if maps.counters()["to_xsk"] > to_xsk:
                return True
        finally:
            maps.close()
        time.sleep(0.2)
    return False


def _observe_counts(tb):
    """(observed, observe_lost): the program's counters of copies into its ring buffer."""
    from mosxdp.io.xdp import MosxdpMaps
    prog = _prog_id(tb, tb.iface_a)
    if prog is None:
        return None
    maps = MosxdpMaps.from_prog_id(prog)
    try:
        c = maps.counters()
        return c["observed"], c["observe_lost"]
    finally:
        maps.close()


def _iperf(tb, streams, seconds):
    import json as _json
    r = tb.run("cli", _pin(0) + ["iperf3", "-c", tb.srv_ip, "-t", str(seconds), "-P", str(streams),
                                 "-J"], capture_output=True, text=True, timeout=seconds + 60)
    if r.returncode != 0:
        return None
    j = _json.loads(r.stdout)
    return j["end"]["sum_received"]["bits_per_second"] / 1e9


def _flood(tb, seconds, size, script):
    before = _link_rx(tb, "srv", tb.srv_if)
    r = tb.run("cli", _pin(0) + [sys.executable, script, tb.cli_if, tb.srv_mac, tb.cli_mac,
                                 tb.cli_ip, tb.srv_ip, str(size), str(seconds)],
               capture_output=True, text=True, timeout=seconds + 60)
    time.sleep(0.3)
    after = _link_rx(tb, "srv", tb.srv_if)
    sent = int(r.stdout.strip() or 0)
    return (after - before) / seconds / 1e3, sent / seconds / 1e3


def _cpu_ticks(pid):
    """(utime, stime) of a process and its threads, and of its living descendants (a split
    monitor's workers), in clock ticks (/proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user, system = int(fields[11]), int(fields[12])
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except (OSError, IndexError, ValueError):
        return None
    for child in children:
        ticks = _cpu_ticks(child)
        if ticks is not None:
            user, system = user + ticks[0], system + ticks[1]
    return user, system


def _steer_endpoints(tb, on):
    """RPS on the endpoint veths: their receive processing on CPU 0 (the endpoints'), or
    back where the frame was sent from (mask 0)."""
    if (os.cpu_count() or 1) < 2:
        return
    mask = "1" if on else "0"
    for ns, ifn in (("cli", tb.cli_if), ("srv", tb.srv_if)):
        tb.run(ns, ["sh", "-c", f"for q in /sys/class/net/{ifn}/queues/rx-*; do "
                                f"echo {mask} > $q/rps_cpus; done"], check=True)


def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _measure_row(tb, row, seconds, size, workdir, flooder):
    label, argv, nsock = row[:3]
    split = "workers" in row[3:]
    _steer_endpoints(tb, "shared" not in row[3:])
    subst = {"{py}": sys.executable, "{A}": tb.iface_a, "{B}": tb.iface_b, "{tmp}": workdir,
             "{N}": str(tb.rx_queues or 1)}
    argv = [subst.get(a, a) for a in argv]
    argv = [a.replace("{tmp}", workdir) for a in argv]
    if not split and "mosxdp.cli" in argv:
        argv += ["--workers", "1"]    # one process also on N queues (the default is a worker each)
    os.makedirs(os.path.join(workdir, "flows"), exist_ok=True)
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    log = open(os.path.join(workdir, "monitor.log"), "a")
    before = [_prog_id(tb, ifn) for ifn in (tb.iface_a, tb.iface_b)]
    mon = tb.popen("mon", ([] if split else _pin(1)) + argv, cwd=root, stdout=log, stderr=log)
    try:
        if not _xdp_ready(tb, nsock, time.monotonic() + 120, flooder, before) or mon.poll() is not None:
            raise RuntimeError(f"{label}: the monitor did not come up (see {log.name})")
        if split:
            time.sleep(1)   # the probe reached one worker's socket: the others' bind too
        # the monitor's CPU over the two TCP loads: share of one CPU, and µs per data frame
        pid = mon.pid   # `ip netns exec` and taskset exec in turn: this is the monitor
        copies = _observe_counts(tb) if "--observe" in argv else None
        ticks, started = _cpu_ticks(pid), time.monotonic()
        data_before = _link_rx(tb, "srv", tb.srv_if)
        res = {"tcp1": _iperf(tb, 1, seconds), "tcp4": _iperf(tb, 4, seconds)}
        after = _cpu_ticks(pid)
        data_frames = _link_rx(tb, "srv", tb.srv_if) - data_before
        if copies is not None:
            # observe-only: copies the ring buffer took and those lost over the TCP loads
            now = _observe_counts(tb)
            res["observed"], res["observe_lost"] = now[0] - copies[0], now[1] - copies[1]
        if ticks is not None and after is not None:
            hz = os.sysconf("SC_CLK_TCK")
            user, system = (after[0] - ticks[0]) / hz, (after[1] - ticks[1]) / hz
            res["cpu"] = 100.0 * (user + system) / (time.monotonic() - started)
            if data_frames > 0:
                res["us_user"] = user * 1e6 / data_frames
                res["us_sys"] = system * 1e6 / data_frames
                res["data_frames"] = data_frames
        res["kpps"], res["gen_kpps"] = _flood(tb, seconds, size, flooder)
        if mon.poll() is not None:
            raise RuntimeError(f"{label}: the monitor died during the run (see {log.name})")
        return res
    finally:
        tb.stop(mon, 2)
        log.close()


def measured(results, rnd, row, say, measure, *args):
    """One row of one round, kept in ``results[row name]`` and said in a line (``say``
    words its results); None after a line that says why it failed."""
    try:
        res = measure(*args)
    except RuntimeError as exc:
        print(f"  round {rnd + 1}: {exc}", file=sys.stderr)
        res = None
    results[row[0]].append(res)
    if res:
        print(f"  round {rnd + 1}: {row[0]}: {say(res)}", flush=True)
    return res


def _said_live(res):
    return (f"TCP 1 stream {res['tcp1'] or 0:.2f} Gbps, 4 streams {res['tcp4'] or 0:.2f} Gbps, "
            f"small frames {res['kpps']:.0f} kpps (generator {res['gen_kpps']:.0f}), monitor CPU "
            f"{res.get('cpu', 0):.0f}%, {res.get('us_user', 0):.2f} + {res.get('us_sys', 0):.2f} "
            f"µs/data frame"
            + (f", copies {res['observed']} lost {res['observe_lost']}" if "observed" in res else ""))


def bench_live(argv, rounds=3):
    import statistics
    p = argparse.ArgumentParser(prog="bench.py --live")
    p.add_argument("--seconds", type=float, default=5, help="length of each load (default 5)")
    p.add_argument("--frame-size", type=int, default=106, help="small-frame size (default 106)")
    p.add_argument("--rows", help="comma-separated row numbers to run (1 = baseline, always run)")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--endpoint-xdp-pass", action="store_true",
                   help="XDP_PASS programs on the endpoint veths instead of GRO")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="N > 1: veths with N queues, steered endpoints, and the rows of N "
                        "worker processes after the others")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers: a count from 1")
    if os.geteuid() != 0:
        print("bench.py --live: needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    for tool in ("iperf3", "ethtool", "ip", "ss"):
        if shutil.which(tool) is None:
            print(f"bench.py --live: {tool} is not installed", file=sys.stderr)
            return 2
    from mosxdp.demo.passprog import attach_to_endpoints
    from mosxdp.demo.testbed import Testbed
    rows = LIVE_ROWS
    if args.workers > 1:
        rows = rows + [(r[0].replace("{N}", str(args.workers)), *r[1:]) for r in WORKER_ROWS]
    if args.rows:
        keep = {int(x) for x in args.rows.split(",")} | {1}
        rows = [r for i, r in enumerate(rows, 1) if i in keep]
    workdir = tempfile.mkdtemp(prefix="mosxdp-bench-live-")
    flooder = os.path.join(workdir, "flood.py")
    with open(flooder, "w") as f:
        f.write(_FLOODER)
    with open(os.path.join(workdir, "bypass_app.py"), "w") as f:
        f.write(_BYPASS_APP)
    results = {r[0]: [] for r in rows}
    load_before = _loadavg()
    try:
        with Testbed("inline", rx_queues=args.workers if args.workers > 1 else None) as tb:
            if args.workers > 1:
                from mosxdp.demo.steer import steer_endpoints
                steer_endpoints(tb, python=sys.executable)
            if args.endpoint_xdp_pass:
                attach_to_endpoints(tb, python=sys.executable)
            else:
                for ns, ifn in (("cli", tb.cli_if), ("srv", tb.srv_if)):
                    tb.run(ns, ["ethtool", "-K", ifn, "gro", "on"], check=True)
            srv = tb.popen("srv", _pin(0) + ["iperf3", "-s"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            tb.wait_listen("srv", 5201)
            for rnd in range(rounds):
                for row in rows:
                    measured(results, rnd, row, _said_live, _measure_row, tb, row, args.seconds,
                             args.frame_size, workdir, flooder)
            tb.stop(srv)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = _loadavg()

    def med(label, key):
        vals = [r[key] for r in results[label] if r and r.get(key) is not None]
        if not vals:
            return None, None, None
        return statistics.median(vals), min(vals), max(vals)

    base = rows[0][0]
    print(f"\nlive benchmark: veth inline testbed, {rounds} rounds of {args.seconds:g} s, "
          f"median [min-max]; ratio = median / baseline median; "
          f"small frames: {args.frame_size}-byte TCP, counted at the server; endpoints with "
          f"{'XDP_PASS programs' if args.endpoint_xdp_pass else 'GRO'}; endpoints' receive "
          f"steered to CPU 0 by RPS except in 'shared layout' rows (ratios to the shared baseline); "
          f"monitor pinned to CPU 1; 1-minute load {load_before} before, {load_after} after "
          f"({os.cpu_count()} CPUs)")
    if args.workers > 1:
        print(f"--workers {args.workers}: veths with {args.workers} queues and the steering "
              f"program on the endpoints, for every row; worker rows unpinned (worker w on CPU "
              f"w), their CPU figures the sum of the parent and the workers")
    head = (f"{'configuration':<42} {'TCP 1 stream Gbps':>26} {'TCP 4 streams Gbps':>26} "
            f"{'small frames kpps':>26} {'monitor CPU % (TCP)':>20} {'µs/data frame usr+sys':>22}")
    print(head)
    shared_base = next((r[0] for r in rows if "shared" in r[3:] and r[2] == 0), base)
    for row in rows:
        label = row[0]
        cells = []
        for key, fmt in (("tcp1", "{:.2f}"), ("tcp4", "{:.2f}"), ("kpps", "{:.0f}")):
            m, lo, hi = med(label, key)
            b = med(shared_base if "shared" in row[3:] else base, key)[0]
            if m is None:
                cells.append(f"{'-':>26}")
                continue
            ratio = f" {m / b:.2f}x" if b else ""
            cells.append(f"{(fmt.format(m) + ' [' + fmt.format(lo) + '-' + fmt.format(hi) + ']' + ratio):>26}")
        cpu = med(label, "cpu")
        cells.append(f"{(f'{cpu[0]:.1f} [{cpu[1]:.1f}-{cpu[2]:.1f}]' if cpu[0] is not None else '-'):>20}")
        usr, sys_ = med(label, "us_user")[0], med(label, "us_sys")[0]
        cells.append(f"{(f'{usr:.2f} + {sys_:.2f}' if usr is not None else '-'):>22}")
        lost = [r["observe_lost"] for r in results[label] if r and "observe_lost" in r]
        if lost:
            cells.append(f"copies lost (TCP) {sum(lost)} in {len(lost)} rounds")
        print(f"{label:<42} " + " ".join(cells))
    if args.json:
        import json as _json
        import platform
        with open(args.json, "w") as f:
            _json.dump({"rounds": rounds, "seconds": args.seconds, "frame_size": args.frame_size,
                        "workers": args.workers,
                        "cpus": os.cpu_count(), "kernel": platform.release(),
                        "load1_before": load_before, "load1_after": load_after,
                        "rows": [{"label": r[0], "layout": next(iter(r[3:]), "rps"),
                                  "rounds": results[r[0]]} for r in rows]}, f, indent=1)
    return 0


# The real captures of tests/data (the crafted ones are variants of one flow).
_CAPTURE_SOURCES = ("http_sizes", "upload", "concurrent", "small_writes", "ipv6", "halfclose",
                    "rst_abort", "refused", "reuse")


def make_capture(out_path, size_mb, names=_CAPTURE_SOURCES):
    """Copies of the real test captures merged by time, copy k on addresses of its own
    (IPv4 10.77.0.x -> 10.(k >> 8).(k & 255).x + 100, IPv6 fd77::x -> fd77::k:x) with
    valid checksums, starting k * 20 ms after the first, until the file has size_mb MB."""
    import heapq
    import struct

    from mosxdp.core.checksum import fix_ipv4_checksum, fix_tcp_checksum
    from mosxdp.core.packet import parse_frame
    from mosxdp.io.pcap import PcapReader, PcapWriter
    data = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
    sources = []
    for name in names:
        with PcapReader(os.path.join(data, name + ".pcap")) as reader:
            frames = [(ts, bytes(frame)) for ts, frame in reader]
        sources.append((frames, sum(16 + len(f) for _, f in frames)))
    base = min(frames[0][0] for frames, _ in sources)

    def copy(k, frames):
        start = base + k * 20_000 - frames[0][0]
        for ts, frame in frames:
            buf = bytearray(frame)
            try:
                pkt = parse_frame(memoryview(buf))
            except ValueError:
                yield ts + start, bytes(buf)
                continue
            if pkt.ip_version == 4 and bytes(pkt.src[:2]) == bytes((10, 77)):
                for at in (pkt.l3_off + 12, pkt.l3_off + 16):
                    buf[at + 1:at + 3] = bytes((k >> 8 & 255, k & 255))
                    buf[at + 3] = (buf[at + 3] + 100) & 255
            elif pkt.ip_version == 6 and bytes(pkt.src[:2]) == bytes((0xfd, 0x77)):
                for at in (pkt.l3_off + 8, pkt.l3_off + 24):
                    buf[at + 12:at + 14] = struct.pack("!H", k & 0xFFFF)
            else:
                yield ts + start, bytes(buf)
                continue
            pkt = parse_frame(memoryview(buf))
            if pkt.ip_version == 4:
                fix_ipv4_checksum(pkt)
            if pkt.ip_proto == 6 and not pkt.is_fragment:
                fix_tcp_checksum(pkt)
            yield ts + start, bytes(buf)

    target = size_mb * 1_000_000
    streams, size, k = [], 24, 0
    while size < target:
        frames, nbytes = sources[k % len(sources)]
        streams.append(copy(k, frames))
        size += nbytes
        k += 1
    with PcapWriter(out_path, snaplen=262144) as writer:
        count = 0
        for ts, frame in heapq.merge(*streams, key=lambda item: item[0]):
            writer.write(ts, frame)
            count += 1
    print(f"{out_path}: {count} frames, {k} copies of {len(sources)} captures, "
          f"{os.path.getsize(out_path) / 1e6:.1f} MB")


def make_short_flows(out_path, flows, at_once=64):
    """``flows`` short web-like TCP flows (8 frames each: handshake, a 40-byte request, a
    650-byte response, FIN both ways, the last ACK), ``at_once`` of them open at a time,
    their frames interleaved at random (seeded), 20 µs apart, valid checksums: what costs
    per flow (its start, end and conn.log line), where the big capture costs per frame."""
    import random
    import struct

    from mosxdp.core.checksum import fix_ipv4_checksum, fix_tcp_checksum
    from mosxdp.core.packet import parse_frame
    from mosxdp.io.pcap import PcapWriter

    def frame(src, dst, sport, dport, seq, ack, flags, payload):
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0,
                         src, dst)
        buf = bytearray(b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip + tcp + payload)
        pkt = parse_frame(memoryview(buf))
        fix_ipv4_checksum(pkt)
        fix_tcp_checksum(pkt)
        return bytes(buf)

    rnd = random.Random(1)

    def conversation(i):
        cli, svr = bytes((10, 1, i >> 8 & 255, i & 255)), bytes((10, 2, 0, 1 + i % 50))
        port, c, s = 10000 + i % 50000, rnd.randrange(1 << 32), rnd.randrange(1 << 32)
        req = b"GET /%08d HTTP/1.1\r\nHost: x\r\n\r\n" % i
        resp = b"HTTP/1.1 200 OK\r\nContent-Length: 610\r\n\r\n" + rnd.randbytes(610)
        c1, s1 = (c + 1) & 0xFFFFFFFF, (s + 1) & 0xFFFFFFFF
        c2, s2 = (c1 + len(req)) & 0xFFFFFFFF, (s1 + len(resp)) & 0xFFFFFFFF
        up, down = (cli, svr, port, 80), (svr, cli, 80, port)
        return [up + (c, 0, 0x02, b""), down + (s, c1, 0x12, b""), up + (c1, s1, 0x10, b""),
                up + (c1, s1, 0x18, req), down + (s1, c2, 0x18, resp),
                up + (c2, s2, 0x11, b""), down + (s2, (c2 + 1) & 0xFFFFFFFF, 0x11, b""),
                up + ((c2 + 1) & 0xFFFFFFFF, (s2 + 1) & 0xFFFFFFFF, 0x10, b"")]

    ts, started, active, count = 1_700_000_000_000_000, 0, [], 0
    with PcapWriter(out_path, snaplen=262144) as writer:
        while started < flows or active:
            while len(active) < at_once and started < flows:
                active.append([conversation(started), 0])
                started += 1
            k = rnd.randrange(len(active))
            steps, at = active[k]
            writer.write(ts, frame(*steps[at]))
            ts += 20
            count += 1
            active[k][1] += 1
            if active[k][1] == len(steps):
                active.pop(k)
    print(f"{out_path}: {count} frames, {flows} flows of 8 frames, "
          f"{os.path.getsize(out_path) / 1e6:.1f} MB")


def _timed_run(argv):
    """(the process's wall time, the run's: --stats's seconds, start-up and exit left out,
    and a split run's phases: --stats-json's ``split``, None for one worker)"""
    import json
    import re
    with tempfile.NamedTemporaryFile("r", suffix=".json") as stats:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "mosxdp.cli", "run", *argv, "--stats",
                               "--stats-json", stats.name],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"bench --workers: mosxdp run {' '.join(argv)} failed: "
                             f"{proc.stderr.strip()[-500:]}")
        split = json.load(stats).get("split")
    return elapsed, float(re.search(r", ([0-9.]+) s,", proc.stderr).group(1)), split


def _same_tree(a, b):
    import filecmp
    if os.path.isdir(a):
        cmp = filecmp.dircmp(a, b)
        if cmp.left_only or cmp.right_only:
            return False
        return all(filecmp.cmp(os.path.join(a, n), os.path.join(b, n), shallow=False)
                   for n in cmp.common_files)
    return filecmp.cmp(a, b, shallow=False)


def bench_workers(pcap, max_workers, repeat):
    """Wall time of `mosxdp run` with 1..max_workers workers (each figure the median of
    `repeat` runs: the whole process, and the run without the process's start-up, as
    --stats says it: read, split, workers, merge), and the outputs compared with one
    worker's byte for byte. The worker counts take turns in each round, so that the load
    of a shared machine weighs on them alike."""
    import statistics
    # Outputs in memory when the machine has a tmpfs: the disk's write-back is not measured.
    workdir = tempfile.mkdtemp(prefix="mosxdp-bench-workers-",
                               dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    configs = [("connlog", "conn.log", lambda out: ["connlog", "--output", out]),
               ("flowdump", "flows", lambda out: ["flowdump", "--outdir", out]),
               ("flowdump --write", "out.pcap",
                lambda out: ["flowdump", "--outdir", out + ".flows", "--write", out])]
    counts = range(1, max_workers + 1)
    try:
        print(f"workers benchmark: {pcap} ({os.path.getsize(pcap) / 1e6:.0f} MB), "
              f"{os.cpu_count()} CPUs, 1-minute load {_loadavg()} before; median of "
              f"{repeat} runs [all runs]; process: the whole `mosxdp run`, run: without "
              f"its start-up (--stats); outputs in {os.path.dirname(workdir)}")
        print(f"{'configuration':<18} {'workers':>7} {'process s':>24} {'speed-up':>8} "
              f"{'run s':>24} {'speed-up':>8} {'identical':>9}  input / plan / workers / merge s")
        for label, name, argv_of in configs:
            tag = label.replace(" ", "_")
            times = {n: ([], []) for n in counts}
            phases = {n: [] for n in counts}
            for rnd in range(repeat):
                for workers in counts:
                    out = os.path.join(workdir, f"{tag}-{workers}-{rnd}", name)
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    whole, run, split = _timed_run(argv_of(out) + ["--pcap", pcap,
                                                                   "--workers", str(workers)])
                    times[workers][0].append(whole)
                    times[workers][1].append(run)
                    if split:
                        phases[workers].append(split)
                    first = os.path.join(workdir, f"{tag}-1-0", name)
                    same = _same_tree(first, out) and (
                        not label.endswith("--write") or _same_tree(first + ".flows", out + ".flows"))
                    if not same:
                        raise SystemExit(f"bench --workers: {label} with {workers} workers: "
                                         f"{out} differs from one worker's")
                    if rnd or workers > 1:
                        shutil.rmtree(os.path.dirname(out))
            base = [statistics.median(t) for t in times[1]]
            for workers in counts:
                cells = []
                for kind in (0, 1):
                    median = statistics.median(times[workers][kind])
                    runs = " ".join(f"{t:.2f}" for t in times[workers][kind])
                    cells.append(f"{f'{median:.2f} [{runs}]':>24} {base[kind] / median:>7.2f}x")
                split = ""
                if phases[workers]:
                    split = "  " + " / ".join(
                        f"{statistics.median(p[key] for p in phases[workers]):.3f}"
                        for key in ("input_seconds", "plan_seconds", "workers_seconds",
                                    "merge_seconds"))
                print(f"{label:<18} {workers:>7} {cells[0]} {cells[1]} {'yes':>9}{split}",
                      flush=True)
            shutil.rmtree(os.path.join(workdir, f"{tag}-1-0"), ignore_errors=True)
        print(f"1-minute load after: {_loadavg()}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--sessions" in argv:   # its own options and --help
        from bench_sessions import bench_sessions
        rest = [a for a in argv if a != "--sessions"]
        repeat = 3
        if "--repeat" in rest:
            i = rest.index("--repeat")
            repeat, rest = int(rest[i + 1]), rest[:i] + rest[i + 2:]
        return bench_sessions(rest, rounds=repeat)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--offline", metavar="PCAP", help="benchmark the core on a pcap file")
    parser.add_argument("--live", action="store_true", help="benchmark the AF_XDP datapath (root)")
    parser.add_argument("--sessions", action="store_true",
                        help="HTTPS downloads through zeeklog vs devmap (root; --sessions --help)")
    parser.add_argument("--callgrind", metavar="PCAP",
                        help="instructions per frame under callgrind (valgrind, editcap)")
    parser.add_argument("--frames", type=int, default=700,
                        help="with --callgrind: N, the per-frame figure is frames N+1..2N")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration (best is kept)")
    parser.add_argument("--make-capture", metavar="OUT", help="write the big capture to OUT")
    parser.add_argument("--size-mb", type=int, default=110, help="with --make-capture: its size")
    parser.add_argument("--short-flows", type=int, metavar="N",
                        help="with --make-capture: N short flows of 8 frames instead (64 at "
                             "once): the cost per flow")
    parser.add_argument("--workers", metavar="PCAP",
                        help="wall time with 1..N workers (with --live: N, rows of N workers)")
    parser.add_argument("--max-workers", type=int, default=2, help="with --workers: N")
    args, rest = parser.parse_known_args(argv)
    if args.make_capture:
        if args.short_flows:
            make_short_flows(args.make_capture, args.short_flows)
        else:
            make_capture(args.make_capture, args.size_mb)
        return 0
    if args.workers and not args.live:
        bench_workers(args.workers, args.max_workers, args.repeat)
        return 0
    if not args.offline and not args.live and not args.callgrind:
        parser.error("give --offline PCAP, --callgrind PCAP, --workers PCAP, --make-capture "
                     "OUT, --sessions and/or --live")
    if args.callgrind:
        bench_callgrind(args.callgrind, args.frames)
    if args.offline:
        bench_offline(args.offline, args.repeat)
    if args.live:
        if args.workers:    # `--live --workers N`: the live bench's, not a capture
            rest += ["--workers", args.workers]
        return bench_live(rest, rounds=args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
