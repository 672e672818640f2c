"""netns tier: live runs split over worker processes (`mosxdp run APP --iface A --peer B
--workers 2`, mosxdp.engine.live_workers) with real curl downloads through the inline
testbed, every veth with 2 RX and 2 TX queues::

    cli0 <==> A [mon: mosxdp run ... --workers 2] B <==> srv0

The endpoints' veths carry the steering program (mosxdp.demo.steer: the frame's hash set to
the flow's symmetric hash, so the kernel sends it on the TX queue of its worker, and the
monitor's veth receives it on that RX queue): symmetric RSS, as a real NIC does it.

* 16 parallel downloads (8 flows hashed to each worker, IPv4 and IPv6): each flow's packets,
  both directions, are in exactly one worker's flow table (the flowworkers test app writes
  each worker's table at its teardown), each worker got its own queue and flows, the XDP
  program counted no frame off its worker, and every download is byte-identical; the
  parent's status line (--stats) and Prometheus metrics (--metrics-port) add the workers up;
* connlog with 2 workers writes the lines connlog with 1 worker writes for the same
  downloads (as sets; masked: the clock, the client port, the ACK counts);
* kill -9 of the worker of a download in progress: its queues fail open (the kernel path
  forwards), the download completes with the same sha256, the death is said on one line,
  the other worker goes on and the run exits 1 at SIGTERM; nothing is left attached;
* a clean SIGTERM (with --detach-on-exit): exit 0, every worker gone, each ran the app's
  teardown, nothing left attached;
* a callback that stops its worker (--on-callback-error stop) stops the run: exit 1;
* an app's summary line at teardown (scrub's) is one line of every worker's counts;
* passive (--iface A alone): each flow's SYNs reach one worker, none off its worker;
* without the steering program, frames off their worker are counted and still forwarded.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import time

import livekit
import pytest
from livekit import Bed, Monitor, json_lines, sha256_file, wait_until

from mosxdp.core.split import flow_hash

pytestmark = pytest.mark.netns

PORT = 8080
QUEUES = 2
METRICS_PORT = 9761
SIZES = {"f1k": 1024, "f256k": 256 * 1024, "f2m": 2 * 1024 * 1024, "f60m": 60 * 1024 * 1024}
# Two runs of the same downloads differ in the clock, the client's port (and so the
# community id) and in how many ACKs the endpoints sent (delayed ACKs follow the timing);
# the bytes each way, the states and how each flow ended are the same.
VOLATILE = ("ts", "uid", "duration", "id.orig_p", "community_id", "orig_pkts", "resp_pkts",
            "orig_ip_bytes", "resp_ip_bytes")
ORDER = ("history", "client_state", "server_state")   # see tests/netns/test_state_only.py
APPS = livekit.APPS


@pytest.fixture(scope="module")
def live_env():
    livekit.require_live(("curl",))


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    d = tmp_path_factory.mktemp("www")
    for name, size in SIZES.items():
        (d / name).write_bytes(os.urandom(size))
    return d


@pytest.fixture(scope="module")
def bed(live_env, www, tmp_path_factory):
    from mosxdp.demo.steer import steer_endpoints
    bed = Bed.start(www, tmp_path_factory.mktemp("bed"), (PORT,), rx_queues=QUEUES)
    try:
        steer_endpoints(bed.tb)
        yield bed
    finally:
        bed.close()


@pytest.fixture(autouse=True)
def detached_after(bed):
    """A test that fails with the program attached (fail-open) leaves the next one a clean
    pair of interfaces: one failure, not a cascade."""
    yield
    if bed.xdp_attached():
        bed.detach()


_next_port = [20000]


def ports_for(bed, family, worker, count):
    """``count`` client ports whose flow to the server hashes to ``worker``."""
    tb = bed.tb
    fam = socket.AF_INET if family == 4 else socket.AF_INET6
    cli = socket.inet_pton(fam, tb.cli_ip if family == 4 else tb.cli_ip6)
    srv = socket.inet_pton(fam, tb.srv_ip if family == 4 else tb.srv_ip6)
    out = []
    while len(out) < count:
        port = _next_port[0]
        _next_port[0] += 1
        if (flow_hash(cli, port, srv, PORT) * QUEUES) >> 32 == worker:
            out.append(port)
    return out


def downloads(bed, www, plan, *extra):
    """Parallel downloads [(family, name, local port)], each byte-identical."""
    started = [(bed.start_download(family, name, *extra, local_port=port), name, port)
               for family, name, port in plan]
    for (proc, out), name, port in started:
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, (name, port, err)
        assert sha256_file(out) == sha256_file(www / name), (name, port)


def monitor(bed, app, *args):
    stats = bed.out_path("stats.json")
    mon = Monitor(bed, app, "--workers", QUEUES, "--stats-json", stats, *args)
    mon.stats_path = stats
    return mon


def worker_pids(mon) -> list[int]:
    return livekit.worker_pids(mon, QUEUES)


def test_each_flow_both_directions_reaches_one_worker(bed, www):
    tables = bed.out_path("tables")
    tables.mkdir()
    ready = bed.out_path("ready")
    mon = monitor(bed, APPS / "flowworkers.py", "--dir", tables, "--ready", ready, "--stats",
                  "--metrics-port", METRICS_PORT)
    try:
        mon.warm_up(ready.exists)
        plan = [(family, name, port) for family in (4, 6) for worker in range(QUEUES)
                for port, name in zip(ports_for(bed, family, worker, 4),
                                      ("f1k", "f256k", "f2m", "f256k"))]
        assert len(plan) == 16
        downloads(bed, www, plan)

        def metrics():
            r = bed.sh("mon", "curl", "-sS", f"http://127.0.0.1:{METRICS_PORT}/metrics")
            return {m[0]: float(m[1]) for m in
                    (line.split() for line in r.stdout.splitlines() if line[:1] != "#")}
        # the parent serves the workers' sums (each publishes once a second)
        values = wait_until("the metrics count the downloads", lambda: (lambda m: m if
                            m.get("mosxdp_core_flows_created_total", 0) >= 16 else None)(metrics()),
                            10, mon.alive)
        assert values["mosxdp_frames_in_total"] > 1000, values
        assert values["mosxdp_kernel_to_python_frames_total"] >= values["mosxdp_frames_in_total"]
        mon.stop_clean()
    finally:
        mon.close()
    files = sorted(tables.glob("flows-*.json"))
    assert len(files) == QUEUES, files
    seen = {}                                     # flow -> the pids whose table holds it
    for path in files:
        table = json.loads(path.read_text())
        for flow, counts in table["flows"].items():
            seen.setdefault(flow, []).append((table["pid"], counts))
    for family, name, port in plan:
        cli = bed.tb.cli_ip if family == 4 else bed.tb.cli_ip6
        srv = bed.tb.srv_ip if family == 4 else bed.tb.srv_ip6
        holders = seen.get(f"{cli}:{port}-{srv}:{PORT}")
        assert holders and len(holders) == 1, (family, port, holders)
        (_pid, counts), = holders
        assert counts["cli"] >= 3 and counts["svr"] >= 3, (family, port, counts)
    stats = json.loads(mon.stats_path.read_text())
    workers = stats["workers"]
    assert [w["queues"] for w in workers] == [[0], [1]], workers
    pids = {w["pid"] for w in workers}
    assert pids == {json.loads(p.read_text())["pid"] for p in files}
    # each worker: the 8 planned flows of its hash (and maybe warm-up ones)
    assert all(w["flows_created"] >= 8 for w in workers), workers
    xdp = stats["live"]["xdp"]
    assert xdp["frames_off_worker"] == 0, xdp
    assert "not symmetric" not in mon.log()
    assert xdp["to_xsk"] >= sum(w["frames"] for w in workers) > 0, (xdp, workers)
    assert stats["live"]["workers_failed"] == 0
    assert "accounting_error" not in stats["live"], stats["live"]
    # --stats: a status line of the sums every second, then the per-worker line
    log = mon.log()
    assert ", workers 2" in log and "mosxdp: workers 2: 0 (pid " in log, log


def _connlog(bed, www, workers, plan):
    log = bed.out_path("conn.log")
    stats = bed.out_path("stats.json")
    # A closed flow stays in TIME_WAIT, as Zeek keeps a connection after its close: an ACK that
    # reaches the monitor after the last one joins its flow instead of starting a line of its own.
    conf = bed.out_path("tw.toml")
    conf.write_text("[mos]\ntcp_tw_interval = 2\n")
    mon = Monitor(bed, "connlog", "--output", log, "--workers", workers, "--stats-json", stats,
                  "--config", conf)
    try:
        mon.warm_up(lambda: len(json_lines(log)) > 0)
        warm = len(json_lines(log))
        downloads(bed, www, plan)
        mon.stop_clean()
    finally:
        mon.close()
    lines = json_lines(log)[warm:]
    ports = {port for _f, _n, port in plan}
    lines = [x for x in lines if x["id.orig_p"] in ports]
    assert len(lines) == len(plan), (workers, lines)
    return [json.dumps({k: v for k, v in x.items() if k not in VOLATILE + ORDER}, sort_keys=True)
            for x in lines], json.loads(stats.read_text())


def test_connlog_two_workers_equals_one(bed, www):
    def plan():
        return [(family, name, port) for family in (4, 6) for worker in range(QUEUES)
                for port, name in zip(ports_for(bed, family, worker, 3), ("f1k", "f256k", "f2m"))]
    one, _ = _connlog(bed, www, 1, plan())
    two, stats = _connlog(bed, www, 2, plan())
    assert sorted(one) == sorted(two)
    assert len(set(two)) == 6, two      # (family, size) once per worker of the hash
    live = stats["live"]
    assert live["xdp"]["frames_off_worker"] == 0
    assert len(stats["workers"]) == 2
    # the workers' kernel-verdict bookkeeping adds up to the program's counts
    assert live["processor"]["kernel_merged_packets"] == live["xdp"]["verdict_state_only"] > 0
    assert live["verdict_entries_left"] == 0
    assert live["accounting"]["total"] == live["accounting"]["frames"] == 2 * 4096


def test_kill_9_of_a_worker_fails_its_queues_open(bed, www):
    ready = bed.out_path("ready")
    tables = bed.out_path("tables")
    tables.mkdir()
    mon = monitor(bed, APPS / "flowworkers.py", "--dir", tables, "--ready", ready, "--stats")
    try:
        mon.warm_up(ready.exists)
        port, = ports_for(bed, 4, 1, 1)
        (proc, out) = bed.start_download(4, "f60m", "--limit-rate", "20M", local_port=port,
                                         max_time=60)
        # the worker of queue 1 (its child of the monitor), once the download is under way
        wait_until("the download under way", lambda: out.exists() and out.stat().st_size > 4 << 20,
                   30, mon.alive)
        children = worker_pids(mon)
        os.kill(children[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert sha256_file(out) == sha256_file(www / "f60m")
        # the other worker goes on
        downloads(bed, www, [(4, "f256k", p) for p in ports_for(bed, 4, 0, 2)])
        mon.alive()
        log, died = livekit.stop_after_worker_died(mon, 1)
        assert "its queues (q % 2 == 1) fail open" in died, died
        # --stats: the survivor's line, the dead one said failed
        assert "mosxdp: workers 2: 0 (pid " in log and "; 1 failed" in log, log
        r = bed.detach()
        assert r.returncode == 0, r.stderr
        assert bed.xdp_attached() == set()
    finally:
        mon.close()
    stats = json.loads(mon.stats_path.read_text())
    assert stats["live"]["workers_failed"] == 1
    assert stats["workers"][1].get("failed"), stats["workers"]
    # the kernel path took the dead worker's frames: no socket at its index
    assert stats["live"]["xdp"]["no_xsk_fallback"] > 0, stats["live"]["xdp"]


def test_sigterm_stops_every_worker_and_leaves_nothing_but_the_fail_open_program(bed, www):
    ready = bed.out_path("ready")
    tables = bed.out_path("tables")
    tables.mkdir()
    mon = monitor(bed, APPS / "flowworkers.py", "--dir", tables, "--ready", ready,
                  "--detach-on-exit")
    try:
        mon.warm_up(ready.exists)
        children = worker_pids(mon)
        rc = mon.stop(signal.SIGTERM)
        assert rc == 0, mon.log()
        for pid in children:
            assert not os.path.exists(f"/proc/{pid}"), pid
        assert bed.xdp_attached() == set(), mon.log()
        assert livekit.LINK_CUT in mon.log() or "detached from" in mon.log(), mon.log()
    finally:
        mon.close()
    # each worker ran the app's teardown
    assert len(list(tables.glob("flows-*.json"))) == QUEUES


def test_the_apps_summary_is_one_line_of_every_worker(bed, www):
    """scrub's line at teardown (mosx_open_report): the workers give it to the parent,
    which writes one line of their counts summed, as one worker prints it."""
    log = bed.out_path("hits.json")
    mon = monitor(bed, "scrub", "--pattern", "curl/", "--side", "both", "--log", log)
    try:
        mon.warm_up(lambda: len(json_lines(log)) > 0)
        downloads(bed, www, [(4, "f1k", port) for worker in range(QUEUES)
                             for port in ports_for(bed, 4, worker, 2)])
        mon.stop_clean()
    finally:
        mon.close()
    hits = json_lines(log)
    lines = [line for line in mon.log().splitlines() if line.startswith("scrub: ")]
    assert len(lines) == 1, mon.log()
    assert lines[0].startswith(f"scrub: {len(hits)} hits, "), (lines, len(hits))
    assert len({(h["client"], h["server"]) for h in hits}) >= 1 + 2 * QUEUES


def test_a_callback_that_stops_its_worker_stops_the_run(bed, www):
    """--on-callback-error stop in one worker: the parent stops the other, the run exits 1
    with the callback's line, the program is left attached fail-open (inline)."""
    mon = monitor(bed, APPS / "crash.py", "--raise-in", "callback", "--port", PORT,
                  "--on-callback-error", "stop")
    try:
        children = worker_pids(mon)

        def stopped():
            # until a worker's socket gets a SYN (before, it takes the kernel path)
            bed.curl("--max-time", 2, "-o", "/dev/null", bed.url(4, "f1k"), timeout=20)
            return mon.proc.poll() is not None
        wait_until("the run stopped by the callback", stopped, 60, step=0.2, detail=mon.log)
        rc = mon.wait(30)
        log = mon.log()
        assert rc == 1, log
        assert "raised in the CONN_START callback" in log, log
        for pid in children:
            assert not os.path.exists(f"/proc/{pid}"), pid
        assert livekit.LEFT_FAIL_OPEN in log, log
        assert bed.detach().returncode == 0
        assert bed.xdp_attached() == set()
    finally:
        mon.close()


def test_passive_split_gives_each_flow_to_one_worker(bed, www):
    """Passive (`--iface A`, no peer: the frames end at the monitor, as on a mirror port):
    the client's SYNs of 8 flows (each retried by its curl) come in on the queue of their
    hash's worker and each flow is in one worker's table."""
    tables = bed.out_path("tables")
    tables.mkdir()
    # no ARP through a passive monitor: the server's address, as the inline monitor forwards it
    bed.sh("cli", "ip", "neigh", "replace", bed.tb.srv_ip, "lladdr", bed.tb.srv_mac, "dev",
           bed.tb.cli_if, "nud", "permanent")
    log = bed.out_path("passive.log")
    stats = bed.out_path("stats.json")
    ready = bed.out_path("ready")
    argv = [livekit.PY, "-m", "mosxdp.cli", "run", APPS / "flowworkers.py", "--iface",
            bed.tb.iface_a, "--workers", str(QUEUES), "--dir", tables, "--stats-json", stats,
            "--ready", ready]
    with open(log, "w") as out:
        proc = bed.tb.popen("mon", argv, cwd=livekit.ROOT, stdout=out, stderr=out)
    try:
        def warm():
            # a SYN that a worker saw: its sockets are in the map (the other's at the same
            # time, give or take a few milliseconds)
            assert proc.poll() is None, log.read_text()
            bed.curl("--max-time", 1, "-o", "/dev/null", bed.url(4, "f1k"), timeout=10)
            return ready.exists()
        wait_until("a worker saw a SYN", warm, 60, step=0.2, detail=log.read_text)
        time.sleep(0.5)
        plan = [(4, "f1k", port) for worker in range(QUEUES)
                for port in ports_for(bed, 4, worker, 4)]
        started = [bed.start_download(family, name, local_port=port, max_time=4)[0]
                   for family, name, port in plan]
        for p in started:
            p.communicate(timeout=30)
            assert p.returncode == 28     # nothing answers: the monitor took the SYNs
        assert proc.poll() is None, log.read_text()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            bed.tb.stop(proc, signal.SIGKILL)
    seen = {}
    for path in tables.glob("flows-*.json"):
        table = json.loads(path.read_text())
        for flow, counts in table["flows"].items():
            seen.setdefault(flow, []).append(counts)
    for _f, _n, port in plan:
        holders = seen.get(f"{bed.tb.cli_ip}:{port}-{bed.tb.srv_ip}:{PORT}")
        assert holders and len(holders) == 1 and holders[0]["cli"] >= 2, (port, holders)
    st = json.loads(stats.read_text())
    assert st["live"]["xdp"]["frames_off_worker"] == 0, st["live"]["xdp"]
    assert [w["queues"] for w in st["workers"]] == [[0], [1]]
    assert bed.xdp_attached() == set(), log.read_text()



def test_without_symmetric_steering_frames_off_worker_are_counted_and_still_forwarded(
        live_env, www, tmp_path_factory):
    """The same veths without the steering program: the kernel picks each socket's TX queue
    by its own hash, so frames come in on queues of other workers than their flow's. The
    program counts them (frames_off_worker) and their queue's worker still forwards them:
    every download is byte-identical."""
    with Bed.start(www, tmp_path_factory.mktemp("unsteered"), (PORT,), rx_queues=QUEUES) as raw:
        tables = raw.out_path("tables")
        tables.mkdir()
        ready = raw.out_path("ready")
        mon = monitor(raw, APPS / "flowworkers.py", "--dir", tables, "--ready", ready)
        try:
            mon.warm_up(ready.exists)
            downloads(raw, www, [(4, "f256k", port) for worker in range(QUEUES)
                                 for port in ports_for(raw, 4, worker, 8)])
            mon.stop_clean()
        finally:
            mon.close()
        xdp = json.loads(mon.stats_path.read_text())["live"]["xdp"]
        assert xdp["frames_off_worker"] > 0, xdp
        assert xdp["to_xsk"] > xdp["frames_off_worker"], xdp
        said = [x for x in mon.log().splitlines() if "RSS hash is not symmetric" in x]
        assert len(said) == 1 and said[0].startswith("mosxdp: warning: "), mon.log()


def test_one_process_on_two_queues_keeps_full_speed_streams_going(bed, www):
    """One process (`--workers 1`) on both queues of A and B: 4 sockets on one UMEM, whose
    default size grows with the sockets (a ring's worth each). With the former fixed 4096
    frames each socket had ~1000, too few for a stream's bursts at full speed: the kernel
    dropped its frames (fill ring empty) until both downloads stalled (this test then
    failed: `frame_count = 4096` still shows it)."""
    log = bed.out_path("conn.log")
    mon = Monitor(bed, "connlog", "--workers", 1, "--full-inspection", "--output", log)
    try:
        mon.warm_up(lambda: log.exists() and log.stat().st_size > 0)
        downloads(bed, www, [(4, "f60m", port) for worker in range(QUEUES)
                             for port in ports_for(bed, 4, worker, 1)])
        mon.stop_clean()
    finally:
        mon.close()


def test_without_workers_a_run_on_two_queues_has_a_worker_per_queue(bed, www):
    """The default (`workers = "auto"`): one worker per RX queue up to the CPUs, here 2
    (the bed's veths have 2 queues; the machine at least 2 CPUs), said in --stats-json."""
    if len(os.sched_getaffinity(0)) < QUEUES:
        pytest.skip(f"needs {QUEUES} CPUs")
    log = bed.out_path("conn.log")
    stats = bed.out_path("stats.json")
    mon = Monitor(bed, "connlog", "--output", log, "--stats-json", stats)
    try:
        assert len(worker_pids(mon)) == QUEUES
        mon.warm_up(lambda: log.exists() and log.stat().st_size > 0)
        downloads(bed, www, [(4, "f256k", p) for w in range(QUEUES) for p in ports_for(bed, 4, w, 1)])
        mon.stop_clean()
    finally:
        mon.close()
    workers = json.loads(stats.read_text())["workers"]
    assert len(workers) == QUEUES and all(w["flows_created"] > 0 for w in workers), workers
