"""The sample apps (midstat, simple_firewall, nat, scrub) offline: real captures in
tests/data and crafted scapy conversations, run through the CLI (`mosxdp run APP --pcap
IN --write OUT`) in this process; outputs are checked with scapy and the mosxdp pcap
reader."""
import argparse
import errno
import ipaddress
import json
import os

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from mosxdp import cli, mtcp_create_context, mtcp_destroy, mtcp_init
from mosxdp.io.pcap import PcapReader, PcapWriter

DATA = os.path.join(os.path.dirname(__file__), "..", "data")
MAC = {"c": "02:00:00:00:00:01", "s": "02:00:00:00:00:02"}
MASK32 = 0xFFFFFFFF


# ------------------------------------------------------------------ helpers
class Talk:
    """One crafted TCP connection; frames are (ts_us, bytes) in `frames`.

    `wire` overrides how the client appears on the wire for one frame (NAT tests:
    the server answers the NAT address)."""

    def __init__(self, cli=("10.0.0.1", 40000), svr=("10.0.0.2", 80), isn_c=1000, isn_s=5000,
                 t0=1_000_000, dt=1000, frames=None):
        self.ep = {"c": cli, "s": svr}
        self.nxt = {"c": isn_c, "s": isn_s}
        self.isn = dict(self.nxt)
        self.ts = t0
        self.dt = dt
        self.frames = [] if frames is None else frames

    def wait(self, us):
        self.ts += us

    def seg(self, frm, flags, payload=b"", seq=None, wire=None, advance=True):
        to = "s" if frm == "c" else "c"
        src, dst = self.ep[frm], self.ep[to]
        if wire is not None:
            src, dst = (wire, dst) if frm == "c" else (src, wire)
        if seq is None:
            seq = self.nxt[frm]
        ack = self.nxt[to] if "A" in flags else 0
        ip = IPv6(src=src[0], dst=dst[0]) if ":" in src[0] else IP(src=src[0], dst=dst[0])
        pkt = (Ether(src=MAC[frm], dst=MAC[to]) / ip /
               TCP(sport=src[1], dport=dst[1], flags=flags, seq=seq & MASK32, ack=ack & MASK32,
                   window=65535))
        if payload:
            pkt = pkt / Raw(payload)
        frame = bytes(pkt)
        if advance:
            self.nxt[frm] = max(self.nxt[frm], seq + len(payload) + ("S" in flags) + ("F" in flags))
        self.frames.append((self.ts, frame))
        self.ts += self.dt
        return frame

    def handshake(self, wire=None):
        self.seg("c", "S")
        self.seg("s", "SA", wire=wire)
        self.seg("c", "A")
        return self

    def data(self, frm, payload, wire=None, **kw):
        return self.seg(frm, "PA", payload, wire=wire, **kw)

    def close(self, wire=None):
        self.seg("c", "FA")
        self.seg("s", "FA", wire=wire)
        self.seg("c", "A")
        return self


def write_pcap(path, frames):
    with PcapWriter(str(path)) as writer:
        for ts, frame in sorted(frames, key=lambda item: item[0]):
            writer.write(ts, frame)
    return str(path)


def read_pcap(path):
    with PcapReader(str(path)) as reader:
        return [(ts, bytes(frame)) for ts, frame in reader]


def run(capsys, app, *args):
    """`mosxdp run APP ARGS...` in this process: (exit code, stdout, stderr). A callback
    that raises stops the run (StopMonitor propagates), so app bugs fail the test."""
    code = cli.main(["run", app, "--on-callback-error", "stop", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def checksums_ok(frame):
    pkt = Ether(frame)
    good = True
    if IP in pkt:
        stated = pkt[IP].chksum
        fresh = pkt[IP].copy()
        del fresh.chksum
        good &= IP(bytes(fresh)).chksum == stated
    stated = pkt[TCP].chksum
    rebuilt = pkt.copy()
    del rebuilt[TCP].chksum
    good &= Ether(bytes(rebuilt))[TCP].chksum == stated
    return good


def ports_of(frame):
    pkt = Ether(frame)
    return (pkt[TCP].sport, pkt[TCP].dport) if TCP in pkt else ()


def tcp_frames(frames):
    """[(scapy packet, bytes)] of the TCP frames."""
    result = []
    for _, frame in frames:
        pkt = Ether(frame)
        if TCP in pkt:
            result.append((pkt, frame))
    return result


def client_ports(path):
    """Client ports of the connections of a capture, in SYN order."""
    ports = []
    for pkt, _ in tcp_frames(read_pcap(path)):
        if pkt[TCP].flags == "S" and pkt[TCP].sport not in ports:
            ports.append(pkt[TCP].sport)
    return ports


def json_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------ midstat
def test_midstat_states_change_over_time(tmp_path, capsys):
    frames = []
    t = Talk(frames=frames)
    t.seg("c", "S"); t.wait(1_500_000)
    t.seg("s", "SA"); t.wait(1_500_000)
    t.seg("c", "A"); t.wait(1_500_000)
    t.data("c", b"hello"); t.seg("s", "A"); t.wait(1_500_000)
    t.seg("c", "FA"); t.wait(1_500_000)
    t.seg("s", "FA"); t.wait(1_500_000)
    t.seg("c", "A"); t.wait(1_500_000)
    later = Talk(cli=("10.0.0.3", 40001), t0=t.ts, frames=frames)
    later.seg("c", "S")
    pcap = write_pcap(tmp_path / "in.pcap", frames)
    out = tmp_path / "midstat.json"
    code, _, _ = run(capsys, "midstat", "--pcap", pcap, "--json", "--output", out, "--batch-size", 1)
    assert code == 0
    lines = json_lines(out)
    assert [line["ts"] for line in lines] == sorted(line["ts"] for line in lines)
    seen = []
    for line in lines:
        for flow in line["flows"]:
            if flow["client_port"] == 40000:
                assert (flow["client_addr"], flow["server_addr"], flow["server_port"]) == \
                    ("10.0.0.1", "10.0.0.2", 80)
                states = (flow["client_state"], flow["server_state"])
                if not seen or seen[-1] != states:
                    seen.append(states)
    assert seen == [
        ("SYN_SENT", "SYN_RCVD"), ("ESTABLISHED", "SYN_RCVD"), ("ESTABLISHED", "ESTABLISHED"),
        ("FIN_WAIT_1", "CLOSE_WAIT"), ("TIME_WAIT", "LAST_ACK")]
    # The first flow left the table when it ended; the second one is listed.
    assert lines[-1]["flows"] and all(f["client_port"] == 40001 for f in lines[-1]["flows"])
    assert any(line["flows"] == [] for line in lines)
    # One refresh per second of packet time (a 1.5 s gap: one refresh).
    assert len(lines) >= 8


def test_midstat_table_on_concurrent_capture(tmp_path, capsys):
    pcap = os.path.join(DATA, "concurrent.pcap")
    code, out, _ = run(capsys, "midstat", "--pcap", pcap, "--interval", "0.001", "--batch-size", 8)
    assert code == 0
    tables = [t for t in out.split("\n\n") if t.strip()]
    assert len(tables) >= 8
    assert all(t.splitlines()[0].split() == ["Proto", "CPU", "Client", "Address", "Client", "State",
                                             "Server", "Address", "Server", "State"] for t in tables)
    rows = [line.split() for t in tables for line in t.splitlines()[1:]]
    assert {row[2] for row in rows} == {f"10.77.0.1:{port}" for port in client_ports(pcap)}
    assert {row[4] for row in rows} == {"10.77.0.2:8080"}
    assert max(len(t.splitlines()) - 1 for t in tables) == 8      # the 8 flows overlap
    assert {"ESTABLISHED"} <= {row[3] for row in rows} | {row[5] for row in rows}


def test_midstat_json_real_captures(tmp_path, capsys):
    for name, family in (("http_sizes.pcap", 4), ("ipv6.pcap", 6)):
        pcap = os.path.join(DATA, name)
        out = tmp_path / (name + ".json")
        code, _, _ = run(capsys, "midstat", "--pcap", pcap, "--json", "--output", out,
                         "--interval", "0.005", "--batch-size", 4)
        assert code == 0
        lines = json_lines(out)
        flows = {(f["client_port"], f["client_addr"]) for line in lines for f in line["flows"]}
        assert {port for port, _ in flows} == set(client_ports(pcap))
        assert all(ipaddress.ip_address(addr).version == family for _, addr in flows)
        per_flow = {}
        for line in lines:
            for f in line["flows"]:
                per_flow.setdefault(f["client_port"], set()).add((f["client_state"], f["server_state"]))
        # Each long enough flow is seen in more than one state.
        assert sum(len(states) > 1 for states in per_flow.values()) >= 1


# ---------------------------------------------------------- simple_firewall
MOS_SAMPLE_RULES = """# Simple firewall rules
#(act)  (src)        (dst)        (port)
DROP    10.0.0.0/24  10.0.0.0/24  dport:80
ACCEPT  10.0.1.7     10.0.1.9     sport:1024
ACCEPT  10.0.2.7     10.0.2.9
ACCEPT  10.0.3.0/24  10.0.3.0/24"""


def firewall(capsys, tmp_path, rules, frames_or_pcap, *extra):
    rules_path = tmp_path / "rules.conf"
    rules_path.write_text(rules)
    pcap = frames_or_pcap if isinstance(frames_or_pcap, str) else \
        write_pcap(tmp_path / "in.pcap", frames_or_pcap)
    out, stats = tmp_path / "out.pcap", tmp_path / "stats.json"
    code, stdout, stderr = run(capsys, "simple_firewall", "--pcap", pcap, "--rules", rules_path,
                               "--write", out, "--stats-output", stats, *extra)
    assert code == 0, stderr
    with open(stats) as f:
        return read_pcap(pcap), read_pcap(out), json.load(f), stdout


def test_firewall_real_capture_blocks_and_allows(tmp_path, capsys):
    pcap = os.path.join(DATA, "concurrent.pcap")
    ports = client_ports(pcap)
    assert len(ports) == 8
    blocked = ports[1], ports[5]
    rules = (f"# block two of the eight GETs\n\n"
             f"DROP 10.77.0.1 10.77.0.2/32 sport:{blocked[0]} dport:8080   # one\n"
             f"DROP 10.77.0.0/16 10.77.0.2 dport:8080 sport:{blocked[1]}\n"
             f"ACCEPT 10.77.0.1 0.0.0.0/0 dport:8080\n"
             f"DROP 0.0.0.0 0.0.0.0\n")
    frames_in, frames_out, stats, stdout = firewall(capsys, tmp_path, rules, pcap)
    assert [rule["flows"] for rule in stats["rules"]] == [1, 1, 6, 0]
    assert [rule["line"] for rule in stats["rules"]] == [3, 4, 5, 6]
    assert stats["default_accept"] == 0 and stats["flows"] == 8
    # Every frame of the two blocked flows is gone (SYN included); the rest is unchanged.
    expected = [frame for ts, frame in frames_in if not set(ports_of(frame)) & set(blocked)]
    assert [frame for _, frame in frames_out] == expected
    assert len(expected) < len(frames_in) - 100
    assert "Firewall rule table" in stdout
    last_table = stdout.split("Firewall rule table")[-1].splitlines()
    assert last_table[2].split()[:3] == ["1", "1", "DROP"]
    assert last_table[4].split()[:3] == ["3", "6", "ACCEPT"]


def test_firewall_crafted_first_match_masks_ports_default(tmp_path, capsys):
    frames = []
    conns = {
        # DROP 10.0.0.0/24 -> 10.0.0.0/24 dport:80, with a retransmitted SYN and the
        # server's answers (as a capture at the server would hold them).
        "dropped": Talk(("10.0.0.5", 41000), ("10.0.0.9", 80), t0=1_000_000, frames=frames),
        # Matches rule 2 (ACCEPT by sport) before rule 3 (DROP everything from 10.0.1.7).
        "first_match": Talk(("10.0.1.7", 1024), ("10.0.1.9", 443), t0=1_000_100, frames=frames),
        "rule3": Talk(("10.0.1.7", 1025), ("10.0.1.9", 443), t0=1_000_200, frames=frames),
        "v6": Talk(("fd00::1", 42000), ("fd00::2", 8080), t0=1_000_300, frames=frames),
        "default": Talk(("192.168.1.1", 43000), ("192.168.1.2", 22), t0=1_000_400, frames=frames),
        # dport:80 outside 10.0.0.0/24: no rule -> default ACCEPT.
        "other_net": Talk(("10.0.9.5", 41001), ("10.0.0.9", 80), t0=1_000_500, frames=frames),
    }
    for name, talk in conns.items():
        talk.seg("c", "S")
        if name == "dropped":
            talk.seg("c", "S", seq=talk.isn["c"])        # retransmitted SYN
        talk.seg("s", "SA")
        talk.seg("c", "A")
        talk.data("c", b"request " + name.encode())
        talk.data("s", b"response")
        talk.close()
    rules = ("DROP    10.0.0.0/24  10.0.0.0/24  dport:80\n"
             "ACCEPT  10.0.1.7     10.0.1.9     sport:1024\n"
             "DROP    10.0.1.7     0.0.0.0\n"
             "DROP    fd00::/64    fd00::2      dport:8080  # IPv6 (mosxdp extension)\n")
    frames_in, frames_out, stats, _ = firewall(capsys, tmp_path, rules, frames, "--batch-size", 1)
    assert [rule["flows"] for rule in stats["rules"]] == [1, 1, 1, 1]
    assert stats["default_accept"] == 2
    out_ports = {p for _, frame in frames_out for p in ports_of(frame)}
    assert out_ports == {1024, 443, 43000, 22, 41001, 80}
    expected = [frame for _, frame in frames_in if not set(ports_of(frame)) & {41000, 1025, 42000}]
    assert [frame for _, frame in frames_out] == expected
    # SYN (twice in the first flow), SYN-ACK and both FINs reached the app and were
    # dropped there; the core dropped the other frames of the flows.
    assert stats["dropped_frames"] == 5 + 4 + 4


def test_firewall_accepts_mos_sample_config(tmp_path, capsys):
    frames = []
    Talk(("10.0.0.1", 5555), ("10.0.0.2", 80), frames=frames).handshake().close()
    Talk(("10.0.1.7", 1024), ("10.0.1.9", 80), t0=2_000_000, frames=frames).handshake().close()
    frames_in, frames_out, stats, _ = firewall(capsys, tmp_path, MOS_SAMPLE_RULES, frames)
    assert [(r["action"], r["src"], r["dst"], r["sport"], r["dport"], r["flows"])
            for r in stats["rules"]] == [
        ("DROP", "10.0.0.0/24", "10.0.0.0/24", 0, 80, 1),
        ("ACCEPT", "10.0.1.7", "10.0.1.9", 1024, 0, 1),
        ("ACCEPT", "10.0.2.7", "10.0.2.9", 0, 0, 0),
        ("ACCEPT", "10.0.3.0/24", "10.0.3.0/24", 0, 0, 0)]
    assert len(frames_out) == 6 and all(1024 in ports_of(f) for _, f in frames_out)


@pytest.mark.parametrize("line, words", [
    ("DENY 10.0.0.1 10.0.0.2", "unknown action 'DENY'"),
    ("drop 10.0.0.1 10.0.0.2", "unknown action 'drop'"),
    ("DROP 10.0.0.1", "needs a source and a destination"),
    ("DROP", "needs a source and a destination"),
    ("DROP 10.0.0.300 10.0.0.2", "invalid IP address '10.0.0.300'"),
    ("DROP 10.0.0.1/33 10.0.0.2", "invalid netmask '33'"),
    ("DROP 10.0.0.1/ 10.0.0.2", "invalid netmask ''"),
    ("ACCEPT 10.0.0.1 10.0.0.2 port:80", "invalid port field 'port:80'"),
    ("ACCEPT 10.0.0.1 10.0.0.2 dport:65536", "invalid port 'dport:65536'"),
    ("ACCEPT 10.0.0.1 10.0.0.2 sport:-1", "invalid port 'sport:-1'"),
    ("ACCEPT 10.0.0.1 10.0.0.2 dport:http", "invalid port 'dport:http'"),
])
def test_firewall_bad_rule_names_the_line(tmp_path, capsys, line, words):
    rules = tmp_path / "bad.conf"
    rules.write_text(f"# comment\n\nACCEPT 10.0.0.1 10.0.0.2\n   # another\n{line}\nDROP 1.2.3.4 5.6.7.8\n")
    pcap = os.path.join(DATA, "refused.pcap")
    code, out, err = run(capsys, "simple_firewall", "--pcap", pcap, "--rules", rules)
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"mosxdp: error: simple_firewall: {rules}:5: ")
    assert words in err


def test_firewall_rule_limit_and_missing_file(tmp_path, capsys):
    pcap = os.path.join(DATA, "refused.pcap")
    rules = tmp_path / "many.conf"
    rules.write_text("# many\n" + "ACCEPT 10.0.0.1 10.0.0.2\n" * 1024)
    code, _, err = run(capsys, "simple_firewall", "--pcap", pcap, "--rules", rules)
    assert code == 0, err
    rules.write_text("# many\n" + "ACCEPT 10.0.0.1 10.0.0.2\n" * 1025)
    code, _, err = run(capsys, "simple_firewall", "--pcap", pcap, "--rules", rules)
    assert code == 2 and f"{rules}:1026: more than 1024 rules" in err
    missing = tmp_path / "nope.conf"
    code, _, err = run(capsys, "simple_firewall", "--pcap", pcap, "--rules", missing)
    assert code == 2 and str(missing) in err and err.count("\n") == 1


# ---------------------------------------------------------------------- nat
NAT = "192.0.2.1"


def nat_run(capsys, tmp_path, frames_or_pcap, *extra):
    pcap = frames_or_pcap if isinstance(frames_or_pcap, str) else \
        write_pcap(tmp_path / "in.pcap", frames_or_pcap)
    out, stats, log = tmp_path / "out.pcap", tmp_path / "stats.json", tmp_path / "nat.log"
    code, _, err = run(capsys, "nat", "--pcap", pcap, "--write", out, "--stats-output", stats,
                       "--log", log, *extra)
    assert code == 0, err
    assert err.startswith("nat: ")
    with open(stats) as f:
        return read_pcap(out), json.load(f), json_lines(log)


def nat_conversation(frames, cli, svr, wire, t0, request, response, close=True, view="in"):
    """One connection as the NAT receives it (view "in": the server answers `wire`) or
    as it should leave it (view "out": the client appears as `wire`)."""
    t = Talk(cli, svr, t0=t0, dt=1000, frames=frames)
    cw, sw = (None, wire) if view == "in" else (wire, None)
    t.seg("c", "S", wire=cw)
    t.seg("s", "SA", wire=sw)
    t.seg("c", "A", wire=cw)
    t.data("c", request, wire=cw)
    t.data("s", response, wire=sw)
    if close:
        t.seg("c", "FA", wire=cw)
        t.seg("s", "FA", wire=sw)
        t.seg("c", "A", wire=cw)
    return t


def test_nat_rewrites_both_directions_and_returns_ports(tmp_path, capsys):
    def script(view):
        frames = []
        # A and B overlap in time; C starts after A ended and gets the next free port
        # (the pool is FIFO: A's port went back to its end).
        nat_conversation(frames, ("10.0.0.1", 40000), ("10.0.0.2", 80), (NAT, 20000),
                         1_000_000, b"GET /a", b"200 a", view=view)
        nat_conversation(frames, ("10.0.0.3", 40000), ("10.0.0.2", 80), (NAT, 20001),
                         1_000_500, b"GET /b", b"200 b" * 100, view=view)
        nat_conversation(frames, ("10.0.0.1", 40001), ("203.0.113.5", 443), (NAT, 20002),
                         2_000_000, b"hello", b"world", view=view)
        # Not from --inside-net: not translated.
        nat_conversation(frames, ("198.51.100.7", 5000), ("10.0.0.2", 80), None,
                         3_000_000, b"x", b"y")
        # For the NAT address, but no mapping: passes unchanged.
        Talk((NAT, 20009), ("10.0.0.2", 80), t0=3_500_000, frames=frames).seg("s", "A")
        return frames
    frames_in, expected = script("in"), script("out")
    out, stats, log = nat_run(capsys, tmp_path, frames_in, "--nat-ip", NAT,
                              "--port-range", "20000-20009", "--inside-net", "10.0.0.0/24",
                              "--batch-size", 1)
    assert [frame for _, frame in out] == [frame for _, frame in sorted(expected, key=lambda x: x[0])]
    assert all(checksums_ok(frame) for _, frame in out)
    assert stats["mapped"] == stats["released"] == 3
    assert stats["in_use"] == 0 and stats["free_ports"] == stats["pool_size"] == 10
    assert stats["translated_out"] == 3 * 5 and stats["translated_in"] == 3 * 3
    assert [(rec["event"], rec["client"], rec["nat"]) for rec in log] == [
        ("map", "10.0.0.1:40000", f"{NAT}:20000"), ("map", "10.0.0.3:40000", f"{NAT}:20001"),
        ("unmap", "10.0.0.1:40000", f"{NAT}:20000"), ("unmap", "10.0.0.3:40000", f"{NAT}:20001"),
        ("map", "10.0.0.1:40001", f"{NAT}:20002"), ("unmap", "10.0.0.1:40001", f"{NAT}:20002")]


def test_nat_port_pool_exhausted_then_reused(tmp_path, capsys):
    frames = []
    nat_conversation(frames, ("10.0.0.1", 40000), ("10.0.0.2", 80), (NAT, 30000),
                     1_000_000, b"a", b"b")
    # Starts while the only port is taken: its SYN is dropped, and all that follows.
    nat_conversation(frames, ("10.0.0.3", 40000), ("10.0.0.2", 80), (NAT, 30000),
                     1_000_500, b"c", b"d")
    # After the first connection ended: the port is free again.
    nat_conversation(frames, ("10.0.0.4", 40000), ("10.0.0.2", 80), (NAT, 30000),
                     2_000_000, b"e", b"f")
    out, stats, log = nat_run(capsys, tmp_path, frames, "--nat-ip", NAT, "--port-range", "30000-30000",
                              "--batch-size", 1)
    assert stats["no_port_drops"] == 1 and stats["mapped"] == stats["released"] == 2
    assert stats["free_ports"] == 1
    dsts = {Ether(f)[IP].dst for _, f in out}
    assert "10.0.0.3" not in dsts and {"10.0.0.1", "10.0.0.4"} <= dsts
    assert all(Ether(f)[IP].src in ("10.0.0.2", NAT) for _, f in out)
    assert [rec["event"] for rec in log] == ["map", "no_port", "unmap", "map", "unmap"]


def test_nat_translates_late_frames_of_an_ended_connection(tmp_path, capsys):
    """The flow ends at the client's last ACK (tcp_tw_interval 0); the server's FIN comes
    again (that ACK was lost) and the client ACKs it again: both frames are orphans to the
    stack, and both still get the connection's translation: the inside address does not
    leak. A frame that comes after the port serves another connection passes unchanged."""
    def script(view):
        frames = []
        cw, sw = ((NAT, 30000), None) if view == "out" else (None, (NAT, 30000))
        talk = nat_conversation(frames, ("10.0.0.1", 40000), ("10.0.0.2", 80), (NAT, 30000),
                                1_000_000, b"GET /", b"200", view=view)
        talk.wait(200_000)
        talk.seg("s", "FA", seq=talk.nxt["s"] - 1, wire=sw, advance=False)
        talk.seg("c", "A", wire=cw)
        nat_conversation(frames, ("10.0.0.3", 40001), ("10.0.0.2", 80), (NAT, 30000),
                         2_000_000, b"GET /b", b"200 b", view=view)
        talk.wait(2_000_000)
        talk.seg("c", "A")          # the port is 10.0.0.3's now
        return frames
    out, stats, log = nat_run(capsys, tmp_path, script("in"), "--nat-ip", NAT,
                              "--port-range", "30000-30000", "--batch-size", 1)
    expected = script("out")
    assert [frame for _, frame in out] == [frame for _, frame in sorted(expected, key=lambda x: x[0])]
    assert all(checksums_ok(frame) for _, frame in out)
    assert stats["late_translated_in"] == 1 and stats["late_translated_out"] == 1
    assert [rec["event"] for rec in log] == ["map", "unmap", "map", "unmap"]


@pytest.mark.parametrize("name, nat_ip", [("upload.pcap", NAT), ("ipv6.pcap", "2001:db8::1")])
def test_nat_round_trip_on_real_capture(tmp_path, capsys, name, nat_ip):
    """The server's half of a real capture is rewritten to answer the NAT address; the
    NAT's output must give the client exactly the original frames, and the server
    frames from the NAT address with valid checksums."""
    original = read_pcap(os.path.join(DATA, name))
    ports = client_ports(os.path.join(DATA, name))
    nat_port = {port: 40000 + index for index, port in enumerate(ports)}
    server = {Ether(f)[TCP].dport for _, f in original if TCP in Ether(f) and Ether(f)[TCP].flags == "S"}
    transformed = []
    for ts, frame in original:
        pkt = Ether(frame)
        if TCP in pkt and pkt[TCP].sport in server:
            ip = pkt[IP] if IP in pkt else pkt[IPv6]
            ip.dst = nat_ip
            pkt[TCP].dport = nat_port[pkt[TCP].dport]
            if IP in pkt:
                del pkt[IP].chksum
            del pkt[TCP].chksum
            frame = bytes(pkt)
        transformed.append((ts, frame))
    out, stats, log = nat_run(capsys, tmp_path, transformed, "--nat-ip", nat_ip,
                              "--port-range", f"40000-{40000 + len(ports) + 10}")
    assert len(out) == len(original)
    to_server = 0
    for (_, got), (_, want) in zip(out, original):
        pkt, orig = Ether(got), Ether(want)
        if TCP in orig and orig[TCP].dport in server:
            to_server += 1
            ip, orig_ip = (pkt[IP], orig[IP]) if IP in orig else (pkt[IPv6], orig[IPv6])
            assert (ip.src, pkt[TCP].sport) == (nat_ip, nat_port[orig[TCP].sport])
            assert (ip.dst, pkt[TCP].dport) == (orig_ip.dst, orig[TCP].dport)
            assert (pkt[TCP].seq, pkt[TCP].ack, bytes(pkt[TCP].payload)) == \
                (orig[TCP].seq, orig[TCP].ack, bytes(orig[TCP].payload))
            assert checksums_ok(got)
        else:
            assert got == want     # to the client (or not TCP): the original frame
    assert to_server > 20
    assert stats["mapped"] == stats["released"] == len(ports)
    assert stats["in_use"] == 0 and stats["free_ports"] == stats["pool_size"]
    assert stats["translated_in"] == len(original) - to_server - sum(
        1 for _, f in original if TCP not in Ether(f))


def test_nat_bad_arguments(tmp_path, capsys):
    pcap = os.path.join(DATA, "refused.pcap")
    for args, words in ((["--nat-ip", "300.1.1.1"], "is not an IP address"),
                        (["--nat-ip", NAT, "--port-range", "9-2"], "--port-range '9-2'"),
                        (["--nat-ip", NAT, "--port-range", "80"], "expected A-B"),
                        (["--nat-ip", NAT, "--inside-net", "fd00::/8"], "different IP versions")):
        code, _, err = run(capsys, "nat", "--pcap", pcap, *args)
        assert code == 2 and words in err and err.count("\n") == 1


# -------------------------------------------------------------------- scrub
def scrub_run(capsys, tmp_path, frames_or_pcap, *extra):
    pcap = frames_or_pcap if isinstance(frames_or_pcap, str) else \
        write_pcap(tmp_path / "in.pcap", frames_or_pcap)
    out, log = tmp_path / "out.pcap", tmp_path / "hits.json"
    code, _, err = run(capsys, "scrub", "--pcap", pcap, "--write", out, "--log", log, *extra)
    assert code == 0, err
    assert err.startswith("scrub: ")
    return read_pcap(out), json_lines(log)


def streams(capsys, tmp_path, pcap, name):
    """Each direction's reassembled bytes (flowdump), by tcpflow file name."""
    outdir = tmp_path / name
    code, _, err = run(capsys, "flowdump", "--pcap", pcap, "--outdir", outdir)
    assert code == 0, err
    return {entry: (outdir / entry).read_bytes() for entry in sorted(os.listdir(outdir))}


def data_frames(frames, sport):
    """(seq, payload) of the data frames sent from port `sport`, in output order."""
    result = []
    for pkt, _ in tcp_frames(frames):
        if pkt[TCP].sport == sport and len(pkt[TCP].payload):
            result.append((pkt[TCP].seq, bytes(pkt[TCP].payload)))
    return result


def split_script(masked=False):
    """Patterns split over 2 and 3 segments, one inside a segment, and a false start."""
    def m(text):
        return text.replace(b"SECRET", b"######") if masked else text
    frames = []
    t = Talk(frames=frames).handshake()
    parts_c = [b"hello SEC", b"RET world, SE", b"LF SECRET"]         # "SE" + "LF": no match
    parts_s = [b"xxxSE", b"CR", b"ETyy", b"S"]                         # 3 segments, then a tail
    whole_c, whole_s = m(b"".join(parts_c)), m(b"".join(parts_s))
    at_c = at_s = 0
    for part_c, part_s in zip(parts_c + [b""], parts_s):
        t.data("c", whole_c[at_c:at_c + len(part_c)]) if part_c else None
        at_c += len(part_c)
        t.data("s", whole_s[at_s:at_s + len(part_s)])
        at_s += len(part_s)
    t.close()
    return frames


def test_scrub_masks_pattern_split_across_segments(tmp_path, capsys):
    frames_in = split_script()
    out, hits = scrub_run(capsys, tmp_path, frames_in, "--pattern", "SECRET", "--mask", "#",
                          "--batch-size", 1)
    expected = split_script(masked=True)
    # Every frame leaves, masked where the pattern was, checksums valid...
    assert sorted(f for _, f in out) == sorted(f for _, f in expected)
    assert all(checksums_ok(f) for _, f in out)
    # ...and each direction's data frames in their order.
    for port in (40000, 80):
        assert data_frames(out, port) == data_frames(expected, port)
    assert data_frames(out, 40000)[:2] == [(1001, b"hello ###"), (1010, b"### world, SE")]
    assert data_frames(out, 80)[:3] == [(5001, b"xxx##"), (5006, b"##"), (5008, b"##yy")]
    assert sorted((h["direction"], h["offset"], h["length"], h["masked"], h["action"]) for h in hits) == [
        ("client->server", 6, 6, 6, "mask"), ("client->server", 25, 6, 6, "mask"),
        ("server->client", 3, 6, 6, "mask")]
    assert all(h["client"] == "10.0.0.1:40000" and h["server"] == "10.0.0.2:80" for h in hits)


def test_scrub_hold_timeout_and_no_hold(tmp_path, capsys):
    def script():
        frames = []
        t = Talk(frames=frames).handshake()
        t.data("c", b"hello SEC")
        t.wait(100_000)
        t.seg("s", "A")                 # 100 ms later: the held frame's time is up
        t.data("c", b"RET")
        t.close()
        return frames
    for extra, first in ((["--hold-ms", "20"], b"hello SEC"), (["--hold-ms", "0"], b"hello SEC"),
                         (["--hold-ms", "500"], b"hello ###")):
        out, hits = scrub_run(capsys, tmp_path, script(), "--pattern", "SECRET", "--mask", "#",
                              "--batch-size", 1, *extra)
        assert data_frames(out, 40000) == [(1001, first), (1010, b"###")]
        assert [(h["offset"], h["masked"]) for h in hits] == [(6, 6 if first.endswith(b"#") else 3)]
        assert len(out) == len(script())


def test_scrub_reset(tmp_path, capsys):
    frames = []
    t = Talk(frames=frames).handshake()
    t.data("c", b"hello ")
    t.seg("s", "A")
    t.data("c", b"the SEC")                           # held: could be the start
    t.data("c", b"RET is out")                        # completes it: reset
    t.data("c", b"more")
    t.data("s", b"answer")
    t.close()
    clean = Talk(("10.0.0.7", 41000), t0=t.ts, frames=frames).handshake()
    clean.data("c", b"nothing to see")
    clean.close()
    out, hits = scrub_run(capsys, tmp_path, frames, "--pattern", "SECRET", "--reset", "--batch-size", 1)
    assert [(h["direction"], h["offset"], h["action"]) for h in hits] == [("client->server", 10, "reset")]
    pkts = [Ether(f) for _, f in out]
    rsts = [p for p in pkts if p[TCP].flags.R]
    assert [(p[IP].src, p[IP].dst, p[TCP].sport, p[TCP].dport, p[TCP].seq, p[TCP].ack, str(p[TCP].flags))
            for p in rsts] == [
        # To the server: the first byte it did not get ("the SEC" was held, then dropped).
        ("10.0.0.1", "10.0.0.2", 40000, 80, 1007, 5001, "RA"),
        # To the client: what it acknowledged of the server's stream.
        ("10.0.0.2", "10.0.0.1", 80, 40000, 5001, 1024, "RA")]
    assert all(checksums_ok(f) for _, f in out)
    first = [p for p in pkts if p[TCP].sport == 40000 or p[TCP].dport == 40000]
    assert data_frames(out, 40000) == [(1001, b"hello ")]
    assert len(first) == 3 + 2 + 2          # handshake, "hello " and its ACK, the two RSTs
    assert data_frames(out, 41000) == [(1001, b"nothing to see")]
    assert sum(1 for p in pkts if 41000 in (p[TCP].sport, p[TCP].dport)) == 7


def test_scrub_real_capture_streams(tmp_path, capsys):
    pattern = b"\x00\x01"
    for name in ("http_sizes.pcap", "seqwrap.pcap"):
        pcap = os.path.join(DATA, name)
        out, hits = scrub_run(capsys, tmp_path, pcap, "--pattern", "\\x00\\x01", "--mask", "\\xff")
        before = streams(capsys, tmp_path, pcap, name + ".in")
        after = streams(capsys, tmp_path, str(tmp_path / "out.pcap"), name + ".out")
        assert after.keys() == before.keys()
        assert sum(data.count(pattern) for data in before.values()) == len(hits) >= 3
        for key, data in before.items():
            assert after[key] == data.replace(pattern, b"\xff\xff"), key
        assert all(h["masked"] == 2 for h in hits)
        assert len(out) == len(read_pcap(pcap))


def test_scrub_side_and_reordered_capture(tmp_path, capsys):
    pcap = os.path.join(DATA, "http_sizes.pcap")
    scrub_run(capsys, tmp_path, pcap, "--pattern", "HTTP/1.", "--side", "server")
    before = streams(capsys, tmp_path, pcap, "in")
    after = streams(capsys, tmp_path, str(tmp_path / "out.pcap"), "out")
    for key, data in before.items():
        from_server = key.startswith("010.077.000.002.08080")
        assert b"HTTP/1." in data
        assert after[key] == (data.replace(b"HTTP/1.", b"*******") if from_server else data)
    # Reordered segments: every occurrence is found once, at its stream offset.
    pcap = os.path.join(DATA, "reorder.pcap")
    _, hits = scrub_run(capsys, tmp_path, pcap, "--pattern", "\\x00", "--side", "server")
    stream = [data for key, data in streams(capsys, tmp_path, pcap, "r").items()
              if key.startswith("010.077.000.002")][0]
    assert [h["offset"] for h in hits] == [i for i, byte in enumerate(stream) if byte == 0]


@pytest.mark.parametrize("name", ["small_writes.pcap", "upload.pcap"])
def test_scrub_pattern_across_a_real_segment_boundary(tmp_path, capsys, name):
    """A pattern made of the last 2 bytes of a real segment and the first 2 of the next."""
    pcap = os.path.join(DATA, name)
    segments = [(p, bytes(p[TCP].payload)) for p, _ in tcp_frames(read_pcap(pcap)) if len(p[TCP].payload)]
    pattern = None
    for (a, data_a), (b, data_b) in zip(segments, segments[1:]):
        if a[TCP].sport == b[TCP].sport and a[TCP].seq + len(data_a) == b[TCP].seq:
            candidate = data_a[-2:] + data_b[:2]
            if len(set(candidate)) == 4:
                pattern = candidate
                break
    assert pattern is not None
    out, hits = scrub_run(capsys, tmp_path, pcap, "--pattern", "".join(f"\\x{c:02x}" for c in pattern),
                          "--mask", "\\xee")
    before = streams(capsys, tmp_path, pcap, "in")
    after = streams(capsys, tmp_path, str(tmp_path / "out.pcap"), "out")
    assert sum(data.count(pattern) for data in before.values()) == len(hits) >= 1
    assert all(h["masked"] == 4 for h in hits)
    for key, data in before.items():
        assert after[key] == data.replace(pattern, b"\xee" * 4), key
    assert sorted(len(f) for _, f in out) == sorted(len(f) for _, f in read_pcap(pcap))


def test_scrub_reset_on_real_capture(tmp_path, capsys):
    pcap = os.path.join(DATA, "http_sizes.pcap")
    port = client_ports(pcap)[3]          # GET /1m.bin
    out, hits = scrub_run(capsys, tmp_path, pcap, "--pattern", "GET /1m.bin", "--reset", "--side", "client")
    assert [(h["client"], h["offset"], h["action"]) for h in hits] == [(f"10.77.0.1:{port}", 0, "reset")]
    flow = [Ether(f) for _, f in out if port in ports_of(f)]
    rsts = [p for p in flow if p[TCP].flags.R]
    assert [(p[TCP].sport, str(p[TCP].flags)) for p in rsts] == [(port, "RA"), (8080, "RA")]
    assert not any(len(p[TCP].payload) for p in flow)      # neither the request nor the answer
    assert len(flow) == 3 + 2
    others = [f for _, f in read_pcap(pcap) if port not in ports_of(f)]
    assert [f for _, f in out if port not in ports_of(f)] == others


def test_bad_app_arguments_give_one_line(capsys):
    """A bad value is one line naming the option, exit 2: the option types' (argparse, before
    any set-up) or setup()'s."""
    pcap = os.path.join(DATA, "refused.pcap")
    for app, args, words in (
            ("scrub", ["--pattern", ""], "scrub: --pattern must not be empty"),
            ("scrub", ["--pattern", "\\x0"], "scrub: --pattern '\\\\x0'"),
            ("scrub", ["--pattern", "a", "--mask", ""], "scrub: --mask must not be empty"),
            ("scrub", ["--pattern", "a", "--filter", "tcp port"], "scrub: "),
            ("scrub", ["--pattern", "a", "--hold-ms", "-1"],
             "run scrub: argument --hold-ms: '-1': must be between 0 and 60000 milliseconds"),
            ("scrub", ["--pattern", "a", "--hold-ms", "nan"], "argument --hold-ms: 'nan'"),
            ("scrub", ["--pattern", "a", "--hold-ms", "inf"], "argument --hold-ms: 'inf'"),
            ("midstat", ["--interval", "0"],
             "run midstat: argument --interval: '0': must be between 0.001 and 31536000"),
            ("midstat", ["--interval", "1e-300"], "argument --interval: '1e-300'"),
            ("midstat", ["--interval", "soon"], "argument --interval: 'soon' is not a number"),
            ("simple_firewall", ["--rules", os.devnull, "--interval", "-1"],
             "run simple_firewall: argument --interval: '-1': must be 0 (only at the end) or"),
            ("simple_firewall", ["--rules", os.devnull, "--interval", "1e308"], "'1e308'"),
            ("simple_firewall", ["--rules", os.devnull, "--interval", "nan"], "'nan'"),
            ("connlog", ["--bypass-after-bytes", "-3"], "a byte count is >= 0")):
        code, _, err = run(capsys, app, "--pcap", pcap, *args)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("mosxdp: error: ") and words in err, err


@pytest.mark.parametrize("app,option,value", [("midstat", "interval", float("inf")),
                                              ("midstat", "interval", 0.0),
                                              ("simple_firewall", "interval", float("nan")),
                                              ("scrub", "hold_ms", -1.0)])
def test_setup_checks_values_given_without_the_command_line(app, option, value):
    """setup() called with a namespace of its own (not argparse's) checks them the same."""
    import importlib
    module = importlib.import_module(f"mosxdp.apps.{app}")
    args = argparse.Namespace(pattern="a", mask="*", reset=False, side="both", hold_ms=50.0,
                              log=None, filter=None, interval=1.0, json=False, output=os.devnull,
                              rules=os.devnull, stats_output=None)
    setattr(args, option, value)
    mtcp_init(None)
    try:
        with pytest.raises(OSError) as info:
            module.setup(mtcp_create_context(0), args)
    finally:
        mtcp_destroy()
    assert info.value.errno == errno.EINVAL
    assert f"--{option.replace('_', '-')} {value!r}: must be" in info.value.strerror


# ------------------------------------------------------------------ flowdump
def test_flowdump_second_run_into_same_outdir_takes_next_suffix(tmp_path, capsys):
    """The output directory, not a table in memory, decides tcpflow's c1, c2 suffixes:
    a second run into the same directory keeps the first run's files and adds its own
    with the next free suffix, byte-identical to the first."""
    pcap = os.path.join(DATA, "reuse.pcap")
    first = streams(capsys, tmp_path, pcap, "out")
    assert any(name.endswith("c1") for name in first)     # the capture reuses a 4-tuple
    again = streams(capsys, tmp_path, pcap, "out")
    assert {k: v for k, v in again.items() if k in first} == first
    added = {k: v for k, v in again.items() if k not in first}
    assert len(added) == len(first)
    def split(name):
        stem, _, count = name.rpartition("c") if name[-2:-1] == "c" else (name, "", "0")
        return stem, int(count)
    connections = 1 + max(count for _, count in map(split, first))
    for name, data in first.items():
        stem, count = split(name)
        assert added[f"{stem}c{count + connections}"] == data


def test_flowdump_keeps_nothing_for_flows_without_data(tmp_path, capsys):
    """A SYN flood (3000 4-tuples, no data) makes no file, and a data flow after it gets
    its plain name."""
    frames = []
    for i in range(3000):
        Talk(cli=(f"10.1.{i >> 8}.{i & 255}", 1024 + i), isn_c=i, t0=1_000_000 + 100 * i,
             frames=frames).seg("c", "S")
    talk = Talk(t0=2_000_000, frames=frames).handshake()
    talk.data("c", b"GET /")
    talk.close()
    pcap = tmp_path / "flood.pcap"
    write_pcap(pcap, frames)
    outdir = tmp_path / "flood"
    code, _, err = run(capsys, "flowdump", "--pcap", pcap, "--outdir", outdir)
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in outdir.iterdir()} == {
        "010.000.000.001.40000-010.000.000.002.00080": b"GET /"}
