"""netns tier: observe-only (`mosxdp run APP --observe`): the kernel forwards every frame
and the app reads copies from a BPF ring buffer.

Real downloads (curl, IPv4 and IPv6) through the inline testbed:
- flowdump --observe: every download byte-identical at the client, and flowdump's file of
  the server's stream equals the server's response (header + body); the XDP program copied
  frames (``observed``) and lost none at this rate, no AF_XDP socket was involved;
- connlog --observe counts every flow as connlog offline counts a capture of the same
  traffic taken behind the monitor;
- the stop leaves the program attached as the kernel's forwarder, as an inline stop does;
- split over 2 workers (`--workers 2`, on one-queue veths: observe-only needs no queues),
  each flow's frames, both directions, reach the ring of the worker its symmetric hash
  names, and only that worker's flow table.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess

import livekit
import pytest
from livekit import PY, ROOT, Bed, Monitor, Tcpdump, json_lines, sha256_file

from mosxdp.core.split import flow_hash

pytestmark = pytest.mark.netns

PORT = 8080
SIZES = {"f1k": 1024, "f300k": 300 * 1024, "f8m": 8 * 1024 * 1024}
# conn.log fields that count what the monitor saw, whatever the order of the directions
COUNTS = ("orig_pkts", "resp_pkts", "orig_bytes", "resp_bytes", "orig_ip_bytes",
          "resp_ip_bytes", "missed_bytes", "conn_state")


@pytest.fixture(scope="module")
def live_env():
    livekit.require_live(("curl", "tcpdump"))


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    return livekit.www_dir(tmp_path_factory.mktemp("www"), SIZES)


@pytest.fixture(scope="module")
def bed(live_env, www, tmp_path_factory):
    with Bed.start(www, tmp_path_factory.mktemp("bed"), (PORT,)) as bed:
        yield bed


def downloads(bed, www, rounds=2, pace=None):
    """Every file, IPv4 and IPv6, `rounds` times: each one byte-identical at the client
    (``pace``: curl's --limit-rate)."""
    done = []
    extra = ("--limit-rate", pace) if pace else ()
    for _ in range(rounds):
        for family in (4, 6):
            for name in SIZES:
                out = bed.out_path(f"{name}.v{family}")
                r = bed.tb.run("cli", bed.curl_argv(family, name, out, *extra),
                               capture_output=True, text=True, timeout=60)
                assert r.returncode == 0, r.stderr
                assert sha256_file(out) == sha256_file(www / name), (family, name)
                done.append((family, name))
    return done


def stop(mon) -> dict:
    """SIGINT, then the run's --stats-json."""
    mon.stop_clean()
    return json.loads(mon.stats_path.read_text())


def start(bed, app, *args) -> Monitor:
    stats = bed.out_path(f"{app}.stats.json")
    mon = Monitor(bed, app, "--stats-json", stats, *args)
    mon.stats_path = stats
    return mon


def test_flowdump_observe_only_keeps_every_stream(bed, www, tmp_path):
    outdir = tmp_path / "flows"
    mon = start(bed, "flowdump", "--observe", "--outdir", outdir)
    try:
        mon.warm_up(lambda: outdir.exists() and any(outdir.iterdir()))
        done = downloads(bed, www)
        stats = stop(mon)
    finally:
        mon.close()
    # flowdump files of the server's streams: the HTTP header, then the file
    bodies = {}
    for path in outdir.iterdir():
        data = path.read_bytes()
        if data.startswith(b"HTTP/1."):
            head, _, body = data.partition(b"\r\n\r\n")
            bodies.setdefault(len(body), []).append(body)
    for family, name in done:
        want = (www / name).read_bytes()
        assert want in bodies.get(len(want), []), f"no flowdump file holds {name} (v{family})"
    datapath = stats["live"]
    xdp = datapath["xdp"]
    assert datapath["sockets"] == [] and xdp["to_xsk"] == 0, datapath
    assert xdp["observed"] >= datapath["frames"] > 1000, xdp
    assert xdp["observe_lost"] == 0 and datapath["lost"]["observe_lost"] == 0, datapath["lost"]


def test_connlog_observe_only_counts_what_the_wire_carried(bed, www, tmp_path):
    # What crossed the monitor, captured behind it on srv0, read offline by connlog: the
    # same flows with the same counts as the live observe-only run's conn.log.
    live_log, pcap, offline_log = (tmp_path / "conn-live.log", tmp_path / "srv0.pcap",
                                   tmp_path / "conn-offline.log")
    # A big capture buffer, and curl paced: tcpdump must not miss what the monitor saw.
    dump = Tcpdump(bed, "srv", bed.tb.srv_if, pcap, f"tcp port {PORT}", "-B", 65536)
    try:
        mon = start(bed, "connlog", "--observe", "--output", live_log)
        try:
            mon.warm_up(lambda: live_log.exists() and live_log.stat().st_size > 0)
            downloads(bed, www, rounds=1, pace="20M")
            stop(mon)
        finally:
            mon.close()
    finally:
        report = dump.stop()
    assert re.search(r"\b0 packets dropped by kernel", report), report
    r = subprocess.run([PY, "-m", "mosxdp.cli", "run", "connlog", "--pcap", pcap, "--output",
                        offline_log], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    live = {line["id.orig_p"]: line for line in json_lines(live_log)
            if line.get("id.resp_p") == PORT}
    offline = {line["id.orig_p"]: line for line in json_lines(offline_log)}
    assert len(live) >= 2 * len(SIZES)
    assert live.keys() <= offline.keys()
    diffs = {port: {k: (live[port][k], offline[port][k]) for k in COUNTS
                    if live[port][k] != offline[port][k]} for port in live}
    assert not any(diffs.values()), diffs


def test_connlog_observe_snap_tracks_flows_from_the_headers(bed, www, tmp_path):
    # --observe-snap 128: the monitor gets each frame's first 127 bytes and its length on
    # the wire. What crossed it, captured behind it twice on srv0, whole and by
    # `tcpdump -s 127` (a headers-only capture cut where the monitor's copies are): the
    # live conn.log equals connlog's offline on the cut capture in every count, missed
    # bytes included, and on the whole one in every count but missed_bytes.
    live_log, full_pcap, cut_pcap = (tmp_path / "conn-live.log", tmp_path / "srv0.pcap",
                                     tmp_path / "srv0-s127.pcap")
    full = Tcpdump(bed, "srv", bed.tb.srv_if, full_pcap, f"tcp port {PORT}", "-B", 65536)
    try:
        cut = Tcpdump(bed, "srv", bed.tb.srv_if, cut_pcap, f"tcp port {PORT}", "-B", 65536,
                      "-s", 127)
        try:
            # every frame's copy (connlog is state-only by default: data frames stay out)
            mon = start(bed, "connlog", "--observe", "--observe-snap", 128,
                        "--full-inspection", "--output", live_log)
            try:
                mon.warm_up(lambda: live_log.exists() and live_log.stat().st_size > 0)
                downloads(bed, www, rounds=1, pace="20M")
                stats = stop(mon)
                log = mon.log()
            finally:
                mon.close()
        finally:
            cut_report = cut.stop()
    finally:
        full_report = full.stop()
    for report in (full_report, cut_report):
        assert re.search(r"\b0 packets dropped by kernel", report), report
    offline = {}
    for name, pcap in (("full", full_pcap), ("cut", cut_pcap)):
        out = tmp_path / f"conn-{name}.log"
        r = subprocess.run([PY, "-m", "mosxdp.cli", "run", "connlog", "--pcap", pcap, "--output",
                            out], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert ("snap length (127 bytes): flows tracked from their headers" in r.stderr) == (
            name == "cut"), r.stderr
        offline[name] = {line["id.orig_p"]: line for line in json_lines(out)}
    live = {line["id.orig_p"]: line for line in json_lines(live_log)
            if line.get("id.resp_p") == PORT}
    assert len(live) >= 2 * len(SIZES)
    assert live.keys() <= offline["cut"].keys() == offline["full"].keys()
    diffs = {port: {k: (live[port][k], offline["cut"][port][k]) for k in COUNTS
                    if live[port][k] != offline["cut"][port][k]} for port in live}
    assert not any(diffs.values()), diffs
    counts = [k for k in COUNTS if k != "missed_bytes"]
    diffs = {port: {k: (live[port][k], offline["full"][port][k]) for k in counts
                    if live[port][k] != offline["full"][port][k]} for port in live}
    assert not any(diffs.values()), diffs
    # The payload beyond the copies was missed: most of every download's bytes.
    for port, line in live.items():
        assert offline["full"][port]["missed_bytes"] == 0
        if line["resp_bytes"] > 100 * 1024:
            assert line["resp_bytes"] > line["missed_bytes"] > 0.9 * line["resp_bytes"], line
    stack = stats["stack"]
    assert stack["cut_frames"] > 1000 and stack["cut_headers"] == 0 and stats["malformed"] == {}
    assert stats["live"]["cut_frames"] == stack["cut_frames"], stats["live"]
    assert (f"{stack['cut_frames']} frames were cut by the observe-only copies (127 bytes, "
            f"observe_snap 128): flows tracked from their headers, {stack['cut_bytes']} payload "
            "bytes missing") in log, log


def test_observe_split_over_two_workers_gives_each_flow_to_its_hash_worker(bed, www, tmp_path):
    tables, ready = tmp_path / "tables", tmp_path / "ready"
    tables.mkdir()
    mon = start(bed, livekit.APPS / "flowworkers.py", "--observe", "--workers", 2,
                "--dir", tables, "--ready", ready)
    try:
        mon.warm_up(ready.exists)
        plan = []                           # (family, client port, the worker of its hash)
        for family, cli, srv in ((4, bed.tb.cli_ip, bed.tb.srv_ip),
                                 (6, bed.tb.cli_ip6, bed.tb.srv_ip6)):
            fam = socket.AF_INET if family == 4 else socket.AF_INET6
            for port in range(31000 + 100 * family, 31010 + 100 * family):
                worker = (flow_hash(socket.inet_pton(fam, cli), port, socket.inet_pton(fam, srv),
                                    PORT) * 2) >> 32
                plan.append((family, port, worker))
        assert {w for *_, w in plan} == {0, 1}
        for family, port, _worker in plan:
            r, got = bed.download(family, "f300k", local_port=port)
            assert r.returncode == 0, r.stderr
            assert sha256_file(got) == sha256_file(www / "f300k")
        stats = stop(mon)
    finally:
        mon.close()
    index_of = {w["pid"]: w["index"] for w in stats["workers"]}
    assert sorted(index_of.values()) == [0, 1], stats["workers"]
    holders = {}                            # flow -> [(worker, counts)]
    for path in tables.glob("flows-*.json"):
        table = json.loads(path.read_text())
        for flow, counts in table["flows"].items():
            holders.setdefault(flow, []).append((index_of[table["pid"]], counts))
    for family, port, worker in plan:
        cli, srv = ((bed.tb.cli_ip, bed.tb.srv_ip) if family == 4
                    else (bed.tb.cli_ip6, bed.tb.srv_ip6))
        held = holders.get(f"{cli}:{port}-{srv}:{PORT}")
        assert held and len(held) == 1 and held[0][0] == worker, (family, port, worker, held)
        counts = held[0][1]
        assert counts["cli"] >= 3 and counts["svr"] >= 100, (family, port, counts)
    live = stats["live"]
    assert live["xdp"]["to_xsk"] == 0 and live["observe"]["rings"] == 2, live
    assert all(w["queues"] == [] for w in stats["workers"]), stats["workers"]
    assert live["xdp"]["observe_lost"] == 0 and live["lost"]["observe_lost"] == 0, live["lost"]
    assert live["xdp"]["observed"] >= sum(w["frames"] for w in stats["workers"]) > 1000


def test_kill_9_of_an_observe_worker_leaves_the_wire_up_and_says_so(bed, www, tmp_path):
    """--observe --workers 2: kill -9 of worker 0 while a download is under way. The kernel
    forwards every frame whatever the workers do: the download completes byte-identical,
    the death is said on one line (its ring goes unread), worker 1 still dumps a new flow
    of its hash, and the run exits 1 leaving the program as the forwarder."""
    import os
    import signal

    outdir = tmp_path / "flows"
    mon = start(bed, "flowdump", "--observe", "--workers", 2, "--outdir", outdir)
    try:
        mon.warm_up(lambda: outdir.exists() and any(outdir.iterdir()))
        children = livekit.worker_pids(mon, 2)
        out = tmp_path / "f8m.v4"
        proc = bed.tb.popen("cli", bed.curl_argv(4, "f8m", out, "--limit-rate", "2M"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        livekit.wait_until("the download under way",
                           lambda: out.exists() and out.stat().st_size > 1 << 20, 30, mon.alive)
        os.kill(children[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert sha256_file(out) == sha256_file(www / "f8m")
        # a new flow of worker 1's hash: dumped
        cli, srv = socket.inet_aton(bed.tb.cli_ip), socket.inet_aton(bed.tb.srv_ip)
        port = next(p for p in range(32000, 33000) if (flow_hash(cli, p, srv, PORT) * 2) >> 32 == 1)
        r, got = bed.download(4, "f300k", local_port=port)
        assert r.returncode == 0 and sha256_file(got) == sha256_file(www / "f300k")
        body = (www / "f300k").read_bytes()
        livekit.wait_until("worker 1 dumped the new flow", lambda: any(
            p.read_bytes().endswith(body) for p in outdir.iterdir() if f".{port:05d}" in p.name),
            10, mon.alive)
        _log, died = livekit.stop_after_worker_died(mon, 0)
        assert "its ring 0 goes unread: the kernel forwards its flows" in died, died
        assert bed.detach().returncode == 0
    finally:
        mon.close()
