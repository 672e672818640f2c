"""netns tier: the same apps offline on a capture of the traffic they saw live give the
same results::

    <p>-cli: cli0 <== veth ==> A [<p>-mon: mosxdp run APP --iface A --peer B] B <== veth ==> srv0 :<p>-srv

One inline testbed. simple_firewall (a DROP rule for one port, default accept), scrub
(--side server, mask mode, a pattern in a served file), midstat (--json) and nat
(--nat-ip) run live, each while connections are made and tcpdump captures on cli0 (client
namespace) and srv0 (server namespace). Then `mosxdp run APP --pcap CAP` runs the same app
with the same options on the capture and the results are compared: the firewall's
per-rule counts (--stats-output), scrub's hits (client, server, direction, stream offset,
length, action, masked bytes; not the timestamp), midstat's flows and held states, nat's
translations.

midstat: a paced download of an endless stream (killed at the end: RST), a connection
held idle then half-closed by the server, a refused connection (RST) and a quick
download. Refreshes come at least --interval apart, live by the clock, offline by packet
timestamps (--batch-size 1), so which refresh catches a short state (handshake, close) is
a matter of timing. Both list only the connections made (addresses and ports), and per
flow the distinct states listed at two refreshes in a row or more are the same: the
states held HELD seconds (ESTABLISHED; CLOSE_WAIT / FIN_WAIT_2); the short-lived
connections have none.

nat: the server namespace routes only to NAT_IP (livekit.route_via_nat, undone after);
default configuration (a flow ends at its last ACK: nat translates the frames that come
after, so which frames came after the end does not matter).
Before the capture the warm-ups leave the port pool in its first order, as offline starts
with it; each connection's SYN waits for the previous one's mapping. Compared: nat's log
(map and unmap, client, server, NAT address and port) per connection; the translated
frames, which are after the monitor: what the server received on srv0 (NAT_IP:port ->
server) and the client on cli0 (server -> client) against the frames `--write OUT` gives
offline: the same 4-tuples, every checksum valid, and every frame received live is in OUT
byte for byte (OUT may have more only by frames a veth lost live).

Which capture is the live monitor's input: the monitor sits between cli0 and srv0, so it
received the client's frames as cli0 sent them and the server's frames as srv0 sent them.
cli0 alone is the wrong point: it holds the server's frames AFTER the monitor (scrub's
masked bytes, no answer to a dropped SYN). So CAP = the client -> server frames from the
cli0 capture merged (mergecap, by timestamp; one clock for all namespaces) with the
server -> client frames from the srv0 capture (for nat: before their translation back
to the client). The test also runs scrub on the plain cli0
capture and shows it finds nothing there (the pattern was masked before cli0 saw it).

The monitor's warm-up connections (port WARM, before the capture starts) are left out of
the captures by the filter (and of midstat's listing); the live firewall counts are taken
relative to the rule table printed when the capture started. Skipped only when a probe
fails; MOSXDP_REQUIRE_PRIVILEGED=1 turns skips into failures (livekit.require_live).
"""
from __future__ import annotations

import collections
import ipaddress
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import livekit
import pytest
from livekit import PY, ROOT, Bed, Monitor, Tcpdump, json_lines, wait_until

from mosxdp.core import checksum, packet
from mosxdp.io.pcap import PcapReader

pytestmark = pytest.mark.netns

PLAIN, BLOCKED, WARM = 8090, 8091, 8092
CLOSED = 8093                         # nothing listens: the server answers a SYN with RST
PATTERN = b"CONFIDENTIAL-5c1e"
MASK = b"#"
PATTERN_AT = (5000, 100_000)          # in secret.bin (160 KiB)
CAPTURE_FILTER = f"tcp and not port {WARM}"
MIDSTAT_INTERVAL = 0.3                # midstat --interval
HELD = 2.0                            # seconds a held state lasts: >= 3 refreshes
NAT_IP = "10.88.0.1"                  # outside 10.77.0.0/24: the server routes only to it
NAT_PORTS = (20000, 20003)            # a pool of 4, as many as the capture's connections

RULES = f"""# replay test rules, first match wins
ACCEPT  0.0.0.0   0.0.0.0   dport:{WARM}      # 1 warm-up connections
DROP    10.77.0.0/24  10.77.0.2/32  dport:{BLOCKED}   # 2 the blocked port, IPv4
DROP    ::            fd77::2/128   dport:{BLOCKED}   # 3 the blocked port, IPv6
"""


class Captures:
    """tcpdump on cli0 (client namespace) and srv0 (server namespace)."""

    def __init__(self, bed: Bed, tag: str):
        self.bed = bed
        self.cli, self.srv = bed.out_path(f"{tag}.cli0.pcap"), bed.out_path(f"{tag}.srv0.pcap")
        self.dumps = [Tcpdump(bed, ns, ifname, path, CAPTURE_FILTER)
                      for ns, ifname, path in (("cli", bed.tb.cli_if, self.cli),
                                               ("srv", bed.tb.srv_if, self.srv))]

    def stop(self) -> None:
        time.sleep(0.3)
        for dump in self.dumps:
            dump.stop(settle=0)

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


def midstat_flows(path: Path) -> dict:
    """{(client addr, port, server addr, port): [(client state, server state) per refresh
    that lists the flow]} from midstat --json, the warm-up flows left out."""
    flows = {}
    for rec in json_lines(path):
        for f in rec["flows"]:
            if f["server_port"] != WARM:
                key = (f["client_addr"], f["client_port"], f["server_addr"], f["server_port"])
                flows.setdefault(key, []).append((f["client_state"], f["server_state"]))
    return flows


def held_states(flows: dict) -> dict:
    """Per flow, the distinct states it was listed in over two refreshes in a row or more.
    Refreshes are at least an interval apart live and offline, so a state that lasted less
    than one (a handshake, a close) is listed at most once, and which refresh catches it
    depends on timing; a state held for HELD seconds is listed 3 times or more in both."""
    held = {}
    for key, states in flows.items():
        seq = []
        for state, run in itertools.groupby(states):
            if len(list(run)) >= 2 and (not seq or seq[-1] != state):
                seq.append(state)
        if seq:
            held[key] = seq
    return held


def nat_events(path: Path, clients) -> dict:
    """{client: [(event, server, nat)]} from nat --log, for the given client endpoints."""
    events = {c: [] for c in clients}
    for e in json_lines(path):
        if e.get("client") in events:
            events[e["client"]].append((e["event"], e["server"], e["nat"]))
    return events


def nat_pool(path: Path) -> tuple:
    """nat's port pool (FIFO) and ports in use after the events of its --log so far."""
    pool, in_use = collections.deque(range(NAT_PORTS[0], NAT_PORTS[1] + 1)), set()
    for e in json_lines(path):
        port = int(e["nat"].rsplit(":", 1)[1]) if "nat" in e else None
        if e["event"] == "map":
            assert pool.popleft() == port, (e, pool)
            in_use.add(port)
        elif e["event"] == "unmap":
            in_use.discard(port)
            pool.append(port)
    return tuple(pool), in_use


def tcp_frames(path: Path) -> list:
    """[(src, sport, dst, dport, IP packet bytes, checksums valid)] of a pcap's TCP frames."""
    out = []
    for _, frame in PcapReader(str(path)):
        pkt = packet.parse_frame(bytes(frame))
        if pkt.ip_proto != socket.IPPROTO_TCP:
            continue
        ok = checksum.verify_tcp_checksum(pkt) and (pkt.ip_version == 6 or
                                                    checksum.verify_ipv4_checksum(pkt))
        out.append((str(ipaddress.ip_address(pkt.src)), pkt.sport,
                    str(ipaddress.ip_address(pkt.dst)), pkt.dport,
                    bytes(pkt.buf[pkt.l3_off:pkt.payload_off + pkt.payload_len]), ok))
    return out


# ------------------------------------------------------------------------------ the run
@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    livekit.require_live(("curl", "tcpdump", "mergecap"))
    tmp = tmp_path_factory.mktemp("replay")
    www = tmp / "www"
    www.mkdir()
    body = bytearray(os.urandom(160 * 1024))
    for at in PATTERN_AT:
        body[at:at + len(PATTERN)] = PATTERN
    assert bytes(body).count(PATTERN) == len(PATTERN_AT)
    (www / "secret.bin").write_bytes(bytes(body))
    (www / "f1k").write_bytes(os.urandom(1024))
    (www / "f2m").write_bytes(os.urandom(2 * 1024 * 1024))
    (www / "warm.txt").write_bytes(b"warm-up " + PATTERN + b" warm-up\n")
    # paced: a rate-limited curl paces the wire (else the server sends megabytes into the
    # receive buffer at once and the connection is quiet after)
    bed = Bed.start(www, tmp, (PLAIN, BLOCKED, WARM), paced=True)
    try:
        yield bed
    finally:
        bed.close()


@pytest.fixture(scope="module")
def results(bed):
    started = time.monotonic()
    res = {"bed": bed}
    # ---- simple_firewall live
    rules = bed.out_path("rules.conf")
    rules.write_text(RULES)
    tables, stats = bed.out_path("fw.tables"), bed.out_path("fw.json")
    mon = Monitor(bed, "simple_firewall", "--rules", rules, "--interval", 0.2,
                  "--output", tables, "--stats-output", stats)
    try:
        mon.warm_up(lambda: table_counts(tables).get(1, 0) >= 1,
                    lambda: (bed.download(4, "f1k", port=WARM, max_time=3), time.sleep(0.3)))
        time.sleep(0.5)                       # warm-ups done: the next table has them
        before = table_counts(tables)
        cap = Captures(bed, "fw")
        try:
            blocked = [bed.start_download(f, "f1k", "--connect-timeout", "1.5", port=BLOCKED,
                                          max_time=5)
                       for f in (4, 6)]
            allowed = [bed.start_download(f, name) for f, name in ((4, "f1k"), (6, "f1k"),
                                                                (4, "f2m"))]
            rcs = [(p.communicate(timeout=40), p.returncode)[1] for p, _ in blocked + allowed]
        finally:
            cap.stop()
        assert rcs == [28, 28, 0, 0, 0], rcs
        for (_, out), name in zip(allowed, ("f1k", "f1k", "f2m")):
            assert out.read_bytes() == (bed.www / name).read_bytes()
        mon.stop_clean()
    finally:
        mon.close()
    live = stats_counts(stats)
    res["fw_live"] = {k: live[k] - before.get(k, 0) for k in live}
    res["fw_before"] = before
    fw_input = cap.monitor_input()
    off_stats = bed.out_path("fw.offline.json")
    offline("simple_firewall", fw_input, "--rules", rules, "--output", os.devnull,
            "--stats-output", off_stats)
    res["fw_offline"] = stats_counts(off_stats)
    raw_stats = bed.out_path("fw.offline-cli0.json")
    offline("simple_firewall", cap.cli, "--rules", rules, "--output", os.devnull,
            "--stats-output", raw_stats)
    res["fw_offline_cli0"] = stats_counts(raw_stats)

    # ---- scrub live
    hits = bed.out_path("scrub.jsonl")
    scrub_args = ("--pattern", PATTERN.decode(), "--mask", MASK.decode(), "--side", "server")
    mon = Monitor(bed, "scrub", *scrub_args, "--log", hits)
    try:
        def warm():
            r, out = bed.download(4, "warm.txt", port=WARM, max_time=3)
            if r.returncode == 0 and PATTERN not in out.read_bytes():
                warmed.append(1)
        warmed = []
        mon.warm_up(lambda: warmed, warm)
        time.sleep(0.2)
        warm_hits = len(json_lines(hits))
        cap = Captures(bed, "scrub")
        try:
            downloads = [bed.start_download(f, "secret.bin") for f in (4, 6)] + \
                [bed.start_download(4, "f2m")]
            rcs = [(p.communicate(timeout=40), p.returncode)[1] for p, _ in downloads]
        finally:
            cap.stop()
        assert rcs == [0, 0, 0], rcs
        masked = (bed.www / "secret.bin").read_bytes().replace(PATTERN, MASK * len(PATTERN))
        assert downloads[0][1].read_bytes() == masked
        assert downloads[1][1].read_bytes() == masked
        assert downloads[2][1].read_bytes() == (bed.www / "f2m").read_bytes()
        time.sleep(0.3)
        mon.stop_clean()
    finally:
        mon.close()
    res["scrub_live"] = json_lines(hits)[warm_hits:]
    scrub_input = cap.monitor_input()
    off_hits = bed.out_path("scrub.offline.jsonl")
    offline("scrub", scrub_input, *scrub_args, "--log", off_hits)
    res["scrub_offline"] = json_lines(off_hits)
    raw_hits = bed.out_path("scrub.offline-cli0.jsonl")
    offline("scrub", cap.cli, *scrub_args, "--log", raw_hits)
    res["scrub_offline_cli0"] = json_lines(raw_hits)
    res["elapsed"] = time.monotonic() - started
    return res


@pytest.fixture(scope="module")
def midstat_run(bed):
    """midstat live while a paced download (killed at the end: RST), a connection held
    idle then half-closed, a refused connection and a quick download run; then offline on
    the capture (--batch-size 1: a refresh as soon as the interval has passed)."""
    tb, res = bed.tb, {}
    args = ("--json", "--interval", MIDSTAT_INTERVAL)
    out = bed.out_path("midstat.jsonl")
    local = dict(paced=43001, half=43002, refused=43003, quick=43004)
    res["flows"] = {
        "paced": (tb.cli_ip, local["paced"], tb.srv_ip, PLAIN),
        "half": (tb.cli_ip6, local["half"], tb.srv_ip6, PLAIN),
        "refused": (tb.cli_ip, local["refused"], tb.srv_ip, CLOSED),
        "quick": (tb.cli_ip6, local["quick"], tb.srv_ip6, PLAIN),
    }
    mon = Monitor(bed, "midstat", *args, "--output", out)
    try:
        def warm_listed():
            return any(f["server_port"] == WARM for rec in json_lines(out) for f in rec["flows"])
        mon.warm_up(warm_listed, lambda: bed.hold(4, WARM, 0, 3 * MIDSTAT_INTERVAL).communicate(
            timeout=20))
        cap = Captures(bed, "midstat")
        try:
            # an endless stream at 1 MB/s (killed when the rest is done): its frames, a
            # window's worth at most 0.25 s apart, are the offline clock while the held
            # connection is idle (offline, a quiet stretch gets one refresh at most: no
            # packet, no time)
            # (paced by the server: midstat is state-only, the kernel forwards the stream at
            # its speed, past curl's --limit-rate)
            paced, _ = bed.start_download(4, "stream/1000000000?rate=1000000",
                                          local_port=local["paced"], max_time=60)
            try:
                key = res["flows"]["paced"]
                wait_until("the paced download listed ESTABLISHED",
                           lambda: ("ESTABLISHED", "ESTABLISHED") in midstat_flows(out).get(key, []),
                           15, mon.alive)
                # connected, idle HELD s, GET, the server's FIN, HELD s half-closed, close
                half = bed.hold(6, PLAIN, local["half"], HELD, "f1k", HELD)
                time.sleep(0.2)
                res["refused_rc"] = bed.download(4, "f1k", port=CLOSED, local_port=local["refused"],
                                                 max_time=5)[0].returncode
                r, got = bed.download(6, "f1k", local_port=local["quick"])
                assert r.returncode == 0 and got.read_bytes() == (bed.www / "f1k").read_bytes(), r.stderr
                half_out, half_err = half.communicate(timeout=30)
                assert half.returncode == 0 and half_out == b"eof\n", half_err
                time.sleep(2 * MIDSTAT_INTERVAL)
                assert paced.poll() is None, "the paced download ended before the others"
            finally:
                tb.stop(paced, signal.SIGKILL)
            wait_until("the paced download gone from midstat's table",
                       lambda: all(f["client_port"] != local["paced"]
                                   for f in json_lines(out)[-1]["flows"]), 10, mon.alive)
        finally:
            cap.stop()
        mon.stop_clean()
    finally:
        mon.close()
    res["live"] = midstat_flows(out)
    off = bed.out_path("midstat.offline.jsonl")
    offline("midstat", cap.monitor_input(), *args, "--batch-size", 1, "--output", off)
    res["offline"] = midstat_flows(off)
    return res


@pytest.fixture(scope="module")
def nat_run(bed):
    """nat live (the server routes only to NAT_IP) while a 2 MiB download, a 1 KiB one, a
    refused connection and a half-closed one go through it, one SYN after the other's
    mapping; then offline on the monitor's input with --write."""
    tb, res = bed.tb, {"bed": bed}
    args = ("--nat-ip", NAT_IP, "--port-range", "%d-%d" % NAT_PORTS,
            "--inside-net", f"10.77.0.0/{tb.prefixlen}")
    log = bed.out_path("nat.jsonl")
    local = dict(bulk=44001, small=44002, refused=44003, half=44004)
    clients = {name: f"{tb.cli_ip}:{port}" for name, port in local.items()}
    res["clients"] = clients
    livekit.route_via_nat(tb, NAT_IP)
    try:
        mon = Monitor(bed, "nat", *args, "--log", log)
        try:
            # ready: a download went through; and the pool back in its first order, as
            # offline starts with it (each warm-up takes the first port and returns it last)
            fresh = tuple(range(NAT_PORTS[0], NAT_PORTS[1] + 1))

            def warm():
                if bed.download(4, "f1k", port=WARM, max_time=3)[0].returncode == 0:
                    wait_until("the warm-up's port returned", lambda: not nat_pool(log)[1], 5)
            mon.warm_up(lambda: json_lines(log) and nat_pool(log) == (fresh, set()), warm)
            cap = Captures(bed, "nat")
            try:
                def mapped(name):
                    wait_until(f"{name} mapped", lambda: nat_events(log, [clients[name]])[
                        clients[name]], 10, mon.alive)
                bulk, bulk_out = bed.start_download(4, "f2m", local_port=local["bulk"])
                mapped("bulk")
                small = bed.download(4, "f1k", local_port=local["small"])
                refused = bed.download(4, "f1k", port=CLOSED, local_port=local["refused"],
                                       max_time=5)
                half = bed.hold(4, PLAIN, local["half"], 0.5, "f1k")
                half_out, half_err = half.communicate(timeout=30)
                _, bulk_err = bulk.communicate(timeout=40)
                assert bulk.returncode == 0, bulk_err
                assert bulk_out.read_bytes() == (bed.www / "f2m").read_bytes()
                assert small[0].returncode == 0
                assert small[1].read_bytes() == (bed.www / "f1k").read_bytes()
                assert refused[0].returncode == 7, refused   # connection refused: the RST came back
                assert half.returncode == 0 and half_out == b"eof\n", half_err
                wait_until("every port returned",
                           lambda: all(len(ev) == 2 for ev in nat_events(log, clients.values())
                                       .values()), 10, mon.alive)
            finally:
                cap.stop()
            mon.stop_clean()
        finally:
            mon.close()
    finally:
        tb.run("srv", ["ip", "route", "del", f"{NAT_IP}/32"], timeout=10)
        tb.run("srv", ["ip", "route", "add", f"10.77.0.0/{tb.prefixlen}", "dev", tb.srv_if],
               timeout=10)
    res["live_log"] = nat_events(log, clients.values())
    res["live_to_srv"] = [f for f in tcp_frames(cap.srv) if f[2] == tb.srv_ip]
    res["live_to_cli"] = [f for f in tcp_frames(cap.cli) if f[2] == tb.cli_ip]
    off_log, written = bed.out_path("nat.offline.jsonl"), bed.out_path("nat.offline-out.pcap")
    offline("nat", cap.monitor_input(), *args, "--log", off_log, "--write", written)
    res["offline_log"] = nat_events(off_log, clients.values())
    res["offline_frames"] = tcp_frames(written)
    return res


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


def test_midstat_flows_and_held_states_same_offline(midstat_run):
    flows = midstat_run["flows"]
    live, off = midstat_run["live"], midstat_run["offline"]
    print(f"midstat live {live}\nmidstat offline {off}")
    assert midstat_run["refused_rc"] == 7, midstat_run["refused_rc"]
    # listed only the connections made, with their addresses and ports
    assert set(live) <= set(flows.values()), live
    assert set(off) <= set(flows.values()), off
    held = held_states(live)
    assert held == {
        flows["paced"]: [("ESTABLISHED", "ESTABLISHED")],
        flows["half"]: [("ESTABLISHED", "ESTABLISHED"), ("CLOSE_WAIT", "FIN_WAIT_2")],
    }, live
    assert held_states(off) == held
    # the paced download: listed at several refreshes both ways (the clock offline is the
    # packets' timestamps)
    assert len(off[flows["paced"]]) >= 4 and len(live[flows["paced"]]) >= 4, (live, off)


def test_nat_translations_same_offline(nat_run):
    bed, clients = nat_run["bed"], nat_run["clients"]
    tb = bed.tb
    live_log, off_log = nat_run["live_log"], nat_run["offline_log"]
    print(f"nat live {live_log}\nnat offline {off_log}")
    # each connection: the next port of the pool (one SYN after the other), returned at
    # its end; the same offline
    servers = dict(bulk=PLAIN, small=PLAIN, refused=CLOSED, half=PLAIN)
    want = {client: [(event, f"{tb.srv_ip}:{servers[name]}", f"{NAT_IP}:{NAT_PORTS[0] + i}")
                     for event in ("map", "unmap")]
            for i, (name, client) in enumerate(clients.items())}
    assert live_log == want, live_log
    assert off_log == want, off_log
    # the frames: to the server from NAT_IP:port only, to the client from the server only
    # (none left untranslated), every checksum valid
    nat_port = {int(c.rsplit(":", 1)[1]): NAT_PORTS[0] + i for i, c in enumerate(clients.values())}
    to_srv = {(NAT_IP, nat_port[int(c.rsplit(":", 1)[1])], tb.srv_ip, servers[name])
              for name, c in clients.items()}
    to_cli = {(tb.srv_ip, servers[name], tb.cli_ip, int(c.rsplit(":", 1)[1]))
              for name, c in clients.items()}
    off = nat_run["offline_frames"]
    off_srv = [f for f in off if f[2] == tb.srv_ip]
    off_cli = [f for f in off if f[2] == tb.cli_ip]
    assert len(off_srv) + len(off_cli) == len(off), {f[:4] for f in off}
    for name, live_frames, off_frames, tuples in (("to the server", nat_run["live_to_srv"], off_srv, to_srv),
                                                 ("to the client", nat_run["live_to_cli"], off_cli, to_cli)):
        assert {f[:4] for f in live_frames} == tuples, (name, {f[:4] for f in live_frames})
        assert {f[:4] for f in off_frames} == tuples, (name, {f[:4] for f in off_frames})
        assert all(f[5] for f in live_frames), name
        assert all(f[5] for f in off_frames), name
        # byte for byte: every frame the receiver got live is one the monitor writes
        # offline; offline has more only by frames a veth lost live (retransmitted)
        live_bytes, off_bytes = {f[4] for f in live_frames}, {f[4] for f in off_frames}
        missing = live_bytes - off_bytes
        assert not missing, (name, len(missing), len(live_bytes))
        extra = len(off_bytes - live_bytes)
        print(f"{name}: {len(live_bytes)} frames live, {len(off_bytes)} offline, {extra} "
              "offline only")
        assert extra <= max(5, len(off_bytes) // 100), (name, extra, len(off_bytes))
    assert len(off_cli) > 2 * 1024 * 1024 // 1500, len(off_cli)
