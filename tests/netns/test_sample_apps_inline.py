"""netns tier: the sample apps (midstat, simple_firewall, nat, scrub) on real traffic
through the live inline monitor, `mosxdp run APP --iface A --peer B`::

    <p>-cli: cli0 <== veth ==> A [<p>-mon: mosxdp run APP --iface A --peer B] B <== veth ==> srv0 :<p>-srv

The apps are run by name, exactly as a user runs them; they are observed only through
their own outputs (midstat's JSON lines, the firewall's rule tables and --stats-output,
nat's --log and --stats-output, scrub's hit log), the bytes curl receives, the kernels'
SNMP counters, `ss`, the server's access log and a capture on srv0.

The endpoints carry an XDP_PASS program (a veth takes frames redirected into its peer
only when the receiving end runs XDP). The server namespace runs a dual-stack HTTP/1.0
server that logs each request's peer address. The client's tcp_rmem is capped, so a
rate-limited curl paces the wire. A monitor is ready when A and B carry an XDP program
and the app has seen a warm-up connection (the XDP program is attached before the AF_XDP
sockets are in its map: a SYN meanwhile takes the kernel path). The set-up (Bed,
Monitor, Tcpdump) is livekit's.

One testbed for midstat, simple_firewall and scrub (a monitor per class, stopped at the
end of the class), one for nat (its server namespace routes only to the NAT address).
Skipped only when a probe fails (not root, no netns, no bcc/libxdp/AF_XDP, a tool
missing); tests/conftest.py turns skips into failures with MOSXDP_REQUIRE_PRIVILEGED=1.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import struct
import time
from pathlib import Path

import livekit
import pytest
from livekit import Bed, Monitor, Tcpdump, json_lines, sha256_file, wait_until

pytestmark = pytest.mark.netns

PLAIN, BLOCKED, WARM, OTHER = 8080, 8081, 8082, 8083
SERVER_PORTS = (PLAIN, BLOCKED, WARM, OTHER)
SPORT_BLOCKED = 45999            # the firewall's sport rule
SIZES = {"f1k": 1024, "f2m": 2 * 1024 * 1024, "f20m": 20 * 1024 * 1024}
PATTERN = b"CONFIDENTIAL-7f3a"   # scrub's pattern
MASK = b"#"
MSS = {4: 1500 - 20 - 20 - 12, 6: 1500 - 40 - 20 - 12}   # MTU 1500, TCP timestamps on
SPLIT_AT = 4                     # pattern bytes in the first of the two segments
NAT_IP = "10.88.0.1"             # outside 10.77.0.0/24: the server routes only to it
NAT_PORTS = (20000, 20002)
NAT_POOL = NAT_PORTS[1] - NAT_PORTS[0] + 1
CLOSING = {"FIN_WAIT_1", "FIN_WAIT_2", "CLOSE_WAIT", "CLOSING", "LAST_ACK", "TIME_WAIT",
           "CLOSED"}


# ------------------------------------------------------------------------------ probe
@pytest.fixture(scope="module")
def live_env():
    livekit.require_live(("curl", "tcpdump", "nstat", "ethtool", "ss"))


# ------------------------------------------------------------------------------ data
def split_body(family: int) -> bytes:
    """8 KiB of random bytes with PATTERN at body offset MSS-SPLIT_AT: the server sends
    its header block in a segment of its own, so the body's first segment ends with
    PATTERN[:SPLIT_AT] and the next one starts with the rest."""
    body = bytearray(os.urandom(8192))
    at = MSS[family] - SPLIT_AT
    body[at:at + len(PATTERN)] = PATTERN
    assert bytes(body).count(PATTERN) == 1
    return bytes(body)


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    d = livekit.www_dir(tmp_path_factory.mktemp("www"), SIZES)
    for family in (4, 6):
        (d / f"split{family}.bin").write_bytes(split_body(family))
    (d / "warm.txt").write_bytes(b"warm-up " + PATTERN + b" warm-up\n")
    return d


_client_ports = itertools.count(42000)


@pytest.fixture(scope="module")
def bed(live_env, www, tmp_path_factory):
    bed = Bed.start(www, tmp_path_factory.mktemp("bed"), SERVER_PORTS, paced=True, access_log=True)
    try:
        yield bed
    finally:
        bed.close()


# ------------------------------------------------------------------------------ midstat
class TestMidstat:
    """midstat --json: a rate-limited download is listed with both sides ESTABLISHED while
    it runs; after it the flow goes through closing states and leaves the table."""

    @pytest.fixture(scope="class")
    @classmethod
    def mon(cls, bed, www):
        out = bed.out_path("midstat.jsonl")
        mon = Monitor(bed, "midstat", "--json", "--output", out, "--interval", 0.5)
        mon.out, mon.warm = out, None

        def seen_port():
            return any(f["client_port"] == mon.warm for rec in json_lines(out)
                       for f in rec["flows"])

        def hold():
            mon.warm = next(_client_ports)
            bed.hold(4, WARM, mon.warm, 1.2).communicate(timeout=20)
            time.sleep(0.6)      # one more refresh

        yield from mon.running(seen_port, hold)

    @staticmethod
    def states(mon, port):
        """[(ts, client_state, server_state) or (ts, None) when not listed] per refresh."""
        rows, listed = [], False
        for rec in json_lines(mon.out):
            flows = [f for f in rec["flows"] if f["client_port"] == port]
            if flows:
                listed = True
                rows.append((rec["ts"], flows[0]["client_state"], flows[0]["server_state"], flows[0]))
            elif listed:
                rows.append((rec["ts"], None, None, None))
        return rows

    @pytest.mark.parametrize("family", [4, 6])
    def test_flow_and_state_changes(self, bed, mon, www, family):
        port = next(_client_ports)
        # 2 MiB at 1 MiB/s (paced by the server: midstat is state-only, the kernel forwards
        # the data at its speed, past curl's --limit-rate): about 2 s, four refreshes or more.
        curl, out = bed.start_download(family, "f2m?rate=1048576", local_port=port)
        with bed.killed_after(curl):
            running = wait_until("the download listed ESTABLISHED/ESTABLISHED",
                            lambda: [r for r in self.states(mon, port)
                                     if r[1:3] == ("ESTABLISHED", "ESTABLISHED")],
                            10, mon.alive)
            assert curl.poll() is None, "the download ended before midstat listed it"
            _, err = curl.communicate(timeout=60)
        assert curl.returncode == 0, err
        assert sha256_file(out) == sha256_file(www / "f2m")
        flow = running[0][3]
        cli_ip = bed.tb.cli_ip if family == 4 else bed.tb.cli_ip6
        srv_ip = bed.tb.srv_ip if family == 4 else bed.tb.srv_ip6
        assert (flow["client_addr"], flow["server_addr"], flow["server_port"]) == \
            (cli_ip, srv_ip, PLAIN), flow
        ended = time.monotonic()
        # after the transfer: the flow leaves the table (CONN_END), maybe after closing states
        rows = wait_until("the flow gone from midstat's table",
                     lambda: (lambda rows: rows if rows and rows[-1][1] is None else None)(
                         self.states(mon, port)), 10, mon.alive)
        seq = [r[1:3] for r in rows]
        established = [i for i, s in enumerate(seq) if s == ("ESTABLISHED", "ESTABLISHED")]
        assert len(established) >= 2, seq     # listed over several refreshes while running
        after = seq[established[-1] + 1:]
        assert after and after[-1] == (None, None), seq
        # whatever was listed between ESTABLISHED and gone is a closing state
        for cli_state, svr_state in after[:-1]:
            assert {cli_state, svr_state} & CLOSING, seq
            assert {cli_state, svr_state} <= CLOSING | {"ESTABLISHED"}, seq
        # ... and the flow never comes back
        time.sleep(max(0.0, 1.1 - (time.monotonic() - ended)))
        assert self.states(mon, port)[-1][1] is None

    def test_half_closed_flow(self, bed, mon, www):
        """The server closes first and the client holds its side open for 1.5 s: midstat
        lists the flow as client CLOSE_WAIT / server FIN_WAIT_2 in that time, then it
        leaves the table when the client closes."""
        port = next(_client_ports)
        hold = bed.hold(4, PLAIN, port, 1.5, "f1k")
        with bed.killed_after(hold):
            out, err = hold.communicate(timeout=20)
        assert hold.returncode == 0 and out == b"eof\n", err
        rows = wait_until("the flow gone from midstat's table",
                     lambda: (lambda rows: rows if rows and rows[-1][1] is None else None)(
                         self.states(mon, port)), 10, mon.alive)
        seq = [r[1:3] for r in rows]
        half = [i for i, s in enumerate(seq) if s == ("CLOSE_WAIT", "FIN_WAIT_2")]
        assert len(half) >= 2, seq          # 1.5 s at 0.5 s refreshes
        # nothing but closing states after it
        assert all(s[0] is None or set(s) <= CLOSING for s in seq[half[0]:]), seq


# ------------------------------------------------------------------------------ simple_firewall
RULES = f"""# live test rules (mOS simple_firewall format), first match wins
ACCEPT  0.0.0.0         10.77.0.2       dport:{WARM}     # 1 warm-up connections
DROP    10.77.0.0/24    10.77.0.2/32    dport:{BLOCKED}  # 2 blocked port, IPv4
DROP    ::              fd77::2/128     dport:{BLOCKED}  # 3 blocked port, IPv6
DROP    10.77.0.1       0.0.0.0 sport:{SPORT_BLOCKED} dport:{OTHER}   # 4 one client port
ACCEPT  10.77.0.1/32    10.77.0.2       dport:{PLAIN}    # 5 explicit accept, IPv4 only
"""


class TestSimpleFirewall:
    """simple_firewall --rules: DROP rules stop the connection (the server never sees it),
    ACCEPT rules and the default let downloads through byte-identical, and the per-rule
    counts (--stats-output) are the connections made."""

    made = {1: 0, 2: 0, 3: 0, 4: 0, 5: 0, "default": 0}

    @pytest.fixture(scope="class")
    @classmethod
    def mon(cls, bed):
        rules = bed.out_path("rules.conf")
        rules.write_text(RULES)
        tables, stats = bed.out_path("fw.tables"), bed.out_path("fw.json")
        datapath = bed.out_path("fw.datapath.json")
        mon = Monitor(bed, "simple_firewall", "--rules", rules, "--interval", 0.2,
                      "--output", tables, "--stats-output", stats, "--stats-json", datapath)
        mon.tables, mon.stats, mon.datapath = tables, stats, datapath

        def warm():
            bed.download(4, "f1k", port=WARM, max_time=3)
            time.sleep(0.3)       # the next table

        yield from mon.running(lambda: cls.table_count(mon, 1) >= 1, warm)

    @staticmethod
    def table_count(mon, index):
        """Rule ``index``'s count in the last table printed."""
        if not mon.tables.exists():
            return 0
        found = re.findall(rf"^{index}\s+(\d+)\s+(?:ACCEPT|DROP)\b", mon.tables.read_text(), re.M)
        return int(found[-1]) if found else 0

    def blocked(self, bed, family, rule, **kw):
        opens = bed.nstat("srv", "TcpPassiveOpens")
        started = time.monotonic()
        r, out = bed.download(family, "f1k", "--connect-timeout", 2, max_time=10, **kw)
        assert r.returncode == 28, f"rc {r.returncode} {r.stderr!r} (expected a connect timeout)"
        assert time.monotonic() - started >= 1.5
        self.made[rule] += 1
        assert bed.nstat("srv", "TcpPassiveOpens") == opens, "a connection reached the server"
        assert not (out.exists() and out.stat().st_size)

    def allowed(self, bed, www, family, name, rule, **kw):
        opens = bed.nstat("srv", "TcpPassiveOpens")
        r, out = bed.download(family, name, **kw)
        assert r.returncode == 0, r.stderr
        self.made[rule] += 1
        assert sha256_file(out) == sha256_file(www / name)
        assert bed.nstat("srv", "TcpPassiveOpens") == opens + 1

    @pytest.mark.parametrize("family,rule", [(4, 2), (6, 3)])
    def test_drop_rule_blocks_port(self, bed, mon, www, family, rule):
        self.blocked(bed, family, rule, port=BLOCKED)
        # the same client, another port: allowed (rule 5 for IPv4, the default for IPv6)
        self.allowed(bed, www, family, "f1k", 5 if family == 4 else "default")

    def test_accept_rule_bypass_download(self, bed, mon, www):
        self.allowed(bed, www, 4, "f20m", 5)

    def test_sport_rule_first_match_and_default(self, bed, mon, www):
        self.blocked(bed, 4, 4, port=OTHER, local_port=SPORT_BLOCKED)
        self.allowed(bed, www, 4, "f2m", "default", port=OTHER)
        self.allowed(bed, www, 6, "f2m", "default", port=OTHER, local_port=SPORT_BLOCKED)

    def test_counts_match_connections(self, bed, mon):
        # the live tables count as we go ...
        wait_until("the rule table's counts", lambda: all(
            self.table_count(mon, i) == self.made[i] for i in (2, 3, 4, 5)), 5, mon.alive)
        mon.stop_clean()
        # ... and the final counts are the connections made, rule by rule
        stats = json.loads(mon.stats.read_text())
        counts = {rule["index"]: rule["flows"] for rule in stats["rules"]}
        assert 1 <= counts[1] <= mon.warmups, (counts, mon.warmups)
        assert {i: counts[i] for i in (2, 3, 4, 5)} == {i: self.made[i] for i in (2, 3, 4, 5)}, \
            (stats, self.made)
        assert stats["default_accept"] == self.made["default"], (stats, self.made)
        assert stats["flows"] == sum(counts.values()) + stats["default_accept"]
        # each blocked connection: its first SYN at least was dropped by the app
        assert stats["dropped_frames"] >= self.made[2] + self.made[3] + self.made[4], stats
        assert [(r["action"], r["line"]) for r in stats["rules"]] == \
            [("ACCEPT", 2), ("DROP", 3), ("DROP", 4), ("DROP", 5), ("ACCEPT", 6)]
        # every decision became a kernel verdict (ACCEPT: bypass, DROP: drop); the accepted
        # downloads' data went through the kernel, not user space
        live = json.loads(mon.datapath.read_text())["live"]
        assert live["processor"]["kernel_verdicts_set"] == stats["flows"], live["processor"]
        assert live["xdp"]["verdict_bypass"] > SIZES["f20m"] // 1448, live["xdp"]
        assert live["frames"] < 500, live["frames"]


# ------------------------------------------------------------------------------ scrub
def _tcp_segments(pcap: Path, server_port: int, client_port: int) -> list[tuple[int, bytes]]:
    """(seq, payload) of the server -> client segments with data, from a capture."""
    from mosxdp.io.pcap import PcapReader
    segs = []
    with PcapReader(str(pcap)) as reader:
        for _ts, frame in reader:
            frame = bytes(frame)
            etype = struct.unpack_from("!H", frame, 12)[0]
            if etype == 0x0800:
                ihl = (frame[14] & 0x0F) * 4
                total = struct.unpack_from("!H", frame, 16)[0]
                proto, l4, end = frame[23], 14 + ihl, 14 + total
            elif etype == 0x86DD:
                proto, l4 = frame[20], 54
                end = l4 + struct.unpack_from("!H", frame, 18)[0]
            else:
                continue
            if proto != 6:
                continue
            sport, dport, seq = struct.unpack_from("!HHI", frame, l4)
            payload = frame[l4 + (frame[l4 + 12] >> 4) * 4:end]
            if (sport, dport) == (server_port, client_port) and payload:
                segs.append((seq, payload))
    return segs


def _server_capture(bed) -> Tcpdump:
    """tcpdump on srv0 in the server namespace: what the server sent."""
    return Tcpdump(bed, "srv", bed.tb.srv_if, bed.out_path("srv0.pcap"), f"tcp port {PLAIN}")


class TestScrub:
    """scrub --side server: a pattern split across two TCP segments of the server's
    response arrives masked (same length, the rest byte-identical) and is logged once
    (the hit log is read while the monitor runs); with --reset the client's connection
    is reset at the pattern."""

    @staticmethod
    def start(bed, *extra):
        """A scrub monitor; ``mon.warm`` makes a warm-up download, ``mon.warm_ports`` holds
        those that went through the app."""
        log = bed.out_path("scrub.jsonl")
        mon = Monitor(bed, "scrub", "--pattern", PATTERN.decode(), "--mask", MASK.decode(),
                      "--side", "server", "--log", log, *extra)
        mon.hits = log
        mon.warm_ports, mon.warm_tried, mon.clients = set(), set(), set()
        expect_rc = 56 if "--reset" in extra else 0

        def warm():
            port = next(_client_ports)
            mon.warm_tried.add(port)
            r, out = bed.download(4, "warm.txt", port=WARM, local_port=port, max_time=3)
            if r.returncode == expect_rc and not (out.exists() and PATTERN in out.read_bytes()):
                mon.warm_ports.add(port)      # it went through the app
        mon.warm = warm
        return mon

    @pytest.fixture(scope="class")
    @classmethod
    def mon(cls, bed):
        mon = cls.start(bed)
        yield from mon.running(lambda: mon.warm_ports, mon.warm)

    @staticmethod
    def check_split(capture, port):
        """The capture shows PATTERN split by a segment boundary; its stream offset."""
        segs = _tcp_segments(capture.path, PLAIN, port)
        assert segs, "nothing captured"
        base = segs[0][0]          # the header block: offset 0 of the response stream
        stream = bytearray()
        ends = set()
        for seq, payload in segs:
            off = (seq - base) & 0xFFFFFFFF
            stream[off:off + len(payload)] = payload
            ends.add(off + len(payload))
        pos = bytes(stream).find(PATTERN)
        assert pos >= 0
        assert pos + SPLIT_AT in ends, \
            f"PATTERN at {pos} is not split after {SPLIT_AT} bytes: segments end at {sorted(ends)}"
        return pos

    @staticmethod
    def hits_of(mon, client, timeout=5.0):
        """The hit log's lines for one client endpoint (written as they happen)."""
        wait_until(f"a hit for {client}", lambda: [h for h in json_lines(mon.hits)
                                               if h["client"] == client], timeout, mon.alive)
        time.sleep(0.2)            # no second one
        return [h for h in json_lines(mon.hits) if h["client"] == client]

    @pytest.mark.parametrize("family", [4, 6])
    def test_mask_split_pattern(self, bed, mon, www, family):
        name = f"split{family}.bin"
        port = next(_client_ports)
        capture = _server_capture(bed)
        try:
            r, out = bed.download(family, name, local_port=port)
        finally:
            capture.stop()
        assert r.returncode == 0, f"{r.stderr!r}\n{mon.log()}"
        body = (www / name).read_bytes()
        got = out.read_bytes()
        assert PATTERN not in got
        assert got == body.replace(PATTERN, MASK * len(PATTERN)), "not exactly the masked body"
        pos = self.check_split(capture, port)
        cli_ip = bed.tb.cli_ip if family == 4 else f"[{bed.tb.cli_ip6}]"
        srv_ip = bed.tb.srv_ip if family == 4 else f"[{bed.tb.srv_ip6}]"
        hits = self.hits_of(mon, f"{cli_ip}:{port}")
        assert hits == [{**hits[0], "server": f"{srv_ip}:{PLAIN}", "direction": "server->client",
                         "offset": pos, "length": len(PATTERN), "action": "mask",
                         "masked": len(PATTERN)}], hits
        # the same file again: masked again, one more hit; the log holds nothing else
        # than the warm-ups and these downloads' hits
        again = next(_client_ports)
        r, out = bed.download(family, name, local_port=again)
        assert r.returncode == 0 and out.read_bytes() == got
        assert [h["offset"] for h in self.hits_of(mon, f"{cli_ip}:{again}")] == [pos]
        mon.clients |= {f"{cli_ip}:{port}", f"{cli_ip}:{again}"}
        warm = {f"{bed.tb.cli_ip}:{p}" for p in mon.warm_tried}
        assert {h["client"] for h in json_lines(mon.hits)} - warm == mon.clients


class TestScrubReset:
    """scrub --reset (a run of its own): at the split pattern the held first part and the
    completing frame are dropped and both ends get an RST: curl fails with 56 (connection
    reset), the client's TcpEstabResets grows, and no byte from the pattern's frame on
    arrives."""

    def test_reset_at_split_pattern(self, bed, www):
        mon = TestScrub.start(bed, "--reset")
        try:
            mon.warm_up(lambda: mon.warm_ports, mon.warm)
            port = next(_client_ports)
            resets = bed.nstat("cli", "TcpEstabResets")
            capture = _server_capture(bed)
            try:
                r, out = bed.download(4, "split4.bin", local_port=port, max_time=10)
            finally:
                capture.stop()
            assert r.returncode == 56, f"curl rc {r.returncode}: {r.stderr!r}\n{mon.log()}"
            assert b"reset" in r.stderr.lower(), r.stderr
            assert bed.nstat("cli", "TcpEstabResets") > resets
            body = (www / "split4.bin").read_bytes()
            got = out.read_bytes() if out.exists() else b""
            # nothing from the frame that ends with the pattern's start on
            assert len(got) <= MSS[4] - SPLIT_AT and body.startswith(got), len(got)
            pos = TestScrub.check_split(capture, port)
            hits = TestScrub.hits_of(mon, f"{bed.tb.cli_ip}:{port}")
            assert [(h["action"], h["offset"], h["length"], h["direction"]) for h in hits] == \
                [("reset", pos, len(PATTERN), "server->client")], hits
            # a file without the pattern still downloads
            r, out = bed.download(4, "f2m")
            assert r.returncode == 0 and sha256_file(out) == sha256_file(www / "f2m")
            mon.stop_clean()
        finally:
            mon.close()


# ------------------------------------------------------------------------------ nat
class TestNat:
    """nat --nat-ip: the server namespace has no route to the client's network, only a
    host route (and a static neighbour) for the NAT address. Downloads through the
    monitor complete byte-identical (valid checksums both ways), the server sees only
    the NAT address and pool ports, and every port is returned."""

    @pytest.fixture(scope="class")
    @classmethod
    def nat_bed(cls, live_env, www, tmp_path_factory):
        bed = Bed.start(www, tmp_path_factory.mktemp("natbed"), SERVER_PORTS, paced=True,
                        access_log=True)
        try:
            livekit.route_via_nat(bed.tb, NAT_IP)
            yield bed
        finally:
            bed.close()

    @pytest.fixture(scope="class")
    @classmethod
    def mon(cls, nat_bed):
        bed = nat_bed
        log, stats = bed.out_path("nat.jsonl"), bed.out_path("nat.json")
        # forwarded by the kernel (no NAT), the server cannot answer the client
        opens = bed.nstat("srv", "TcpPassiveOpens")
        bed.tb.kernel_forward(True)
        try:
            r, _ = bed.download(4, "f1k", "--connect-timeout", 2, max_time=3)
        finally:
            bed.tb.kernel_forward(False)
        assert r.returncode == 28, (r.returncode, r.stderr)
        assert bed.nstat("srv", "TcpPassiveOpens") == opens
        mon = Monitor(bed, "nat", "--nat-ip", NAT_IP, "--port-range", "%d-%d" % NAT_PORTS,
                      "--inside-net", "10.77.0.0/24", "--log", log, "--stats-output", stats)
        mon.nat_log, mon.stats = log, stats
        ok = []

        def warm():
            r, _ = bed.download(4, "f1k", port=WARM, max_time=2)
            if r.returncode == 0:
                ok.append(1)

        yield from mon.running(lambda: ok, warm)

    def test_transfers_through_nat(self, nat_bed, mon, www):
        bed = nat_bed
        csum = {ns: bed.nstat(ns, "TcpInCsumErrors") for ns in ("cli", "srv")}
        ports = [next(_client_ports), next(_client_ports)]
        # a slow download: while it runs, both ends' view of the connection
        curl, out = bed.start_download(4, "f2m", "--limit-rate", "1M", local_port=ports[0])
        with bed.killed_after(curl):
            def srv_view():
                r = bed.sh("srv", "ss", "-tnH", "state", "established", f"sport = :{PLAIN}")
                return r.stdout.strip()
            seen = wait_until("the connection in the server's ss", srv_view, 10, mon.alive)
            cli_view = bed.sh("cli", "ss", "-tnH", "state", "established",
                              f"sport = :{ports[0]}").stdout
            _, err = curl.communicate(timeout=60)
        assert curl.returncode == 0, err
        assert sha256_file(out) == sha256_file(www / "f2m")
        peers = re.findall(r"\s\[?(?:::ffff:)?([0-9.]+)\]?:(\d+)\s*$", seen, re.M)   # the peer
        assert len(peers) == 1 and peers[0][0] == NAT_IP, seen
        assert NAT_PORTS[0] <= int(peers[0][1]) <= NAT_PORTS[1], seen
        assert f"{bed.tb.cli_ip}:{ports[0]}" in cli_view and f"{bed.tb.srv_ip}:{PLAIN}" in cli_view
        # full speed, 20 MiB
        r, out = bed.download(4, "f20m", local_port=ports[1])
        assert r.returncode == 0, r.stderr
        assert sha256_file(out) == sha256_file(www / "f20m")
        for ns, before in csum.items():
            assert bed.nstat(ns, "TcpInCsumErrors") == before, ns
        # the server's access log: the NAT address and pool ports only
        served = [row for row in bed.access() if row[2] == PLAIN]
        assert [row[3] for row in served] == ["'GET /f2m HTTP/1.1'", "'GET /f20m HTTP/1.1'"], served
        assert {row[0] for row in bed.access()} == {NAT_IP}, bed.access()
        assert all(NAT_PORTS[0] <= row[1] <= NAT_PORTS[1] for row in bed.access())
        nat_ports = [row[1] for row in served]
        assert len(set(nat_ports)) == 2

        def entries(local):
            return [(e["event"], e["nat"], e["server"]) for e in json_lines(mon.nat_log)
                    if e.get("client") == f"{bed.tb.cli_ip}:{local}"]
        # each connection: its port mapped, and returned at CONN_END (the log is live)
        for local, nat_port in zip(ports, nat_ports):
            want = [(ev, f"{NAT_IP}:{nat_port}", f"{bed.tb.srv_ip}:{PLAIN}")
                    for ev in ("map", "unmap")]
            wait_until(f"map and unmap of {local}", lambda: entries(local) == want, 5, mon.alive)
        # the pool has NAT_POOL ports and more connections than that were made: a
        # returned port is given out again
        local = next(_client_ports)
        r, out = bed.download(4, "f1k", port=OTHER, local_port=local)
        assert r.returncode == 0 and sha256_file(out) == sha256_file(www / "f1k"), r.stderr
        wait_until("the last unmap", lambda: len(entries(local)) == 2, 5, mon.alive)
        log = json_lines(mon.nat_log)
        reused = entries(local)[0][1]
        first_unmap = next(i for i, e in enumerate(log)
                           if e["event"] == "unmap" and e["nat"] == reused)
        assert first_unmap < next(i for i, e in enumerate(log)
                                  if e.get("client") == f"{bed.tb.cli_ip}:{local}"), log
        assert {row[0] for row in bed.access()} == {NAT_IP}, bed.access()
        mon.stop_clean()
        stats = json.loads(mon.stats.read_text())
        assert stats["mapped"] == stats["released"] == len(log) // 2 > NAT_POOL, stats
        assert stats["in_use"] == 0 and stats["free_ports"] == stats["pool_size"] == NAT_POOL
        assert stats["translated_out"] > 100 and stats["translated_in"] > SIZES["f20m"] // 1448, stats
        assert stats["no_port_drops"] == 0, stats
