"""examples/simple_firewall.py, the line-by-line port of mOS's simple_firewall sample, run as
mOS runs it (its own main(), `-c MOS_CONF -f RULES -n CORES`) on real captures: which frames
it forwards (its configuration's `write`), the rule tables it prints, its errors; and the
same rules through mosxdp's own app (`mosxdp run simple_firewall`) for the same verdicts.

The capture is five real ones of tests/data in their capture order (they were recorded one
after the other, seconds apart): 4 GETs to port 8080, 8 concurrent GETs to 8080, a refused
connection to port 81, a half-closed exchange on port 7000, a ping-pong on port 7002.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from mosxdp import cli
from mosxdp.io.pcap import PcapReader, PcapWriter

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")
PORT = os.path.join(ROOT, "examples", "simple_firewall.py")
CAPTURES = ("http_sizes", "concurrent", "refused", "halfclose", "small_writes")


def read_frames(path):
    with PcapReader(str(path)) as reader:
        return [(ts, bytes(frame)) for ts, frame in reader]


def tcp_of(frame):
    pkt = Ether(frame)
    return pkt[TCP] if TCP in pkt and IP in pkt else None


def is_client_syn(frame):
    tcp = tcp_of(frame)
    return tcp is not None and tcp.flags == "S"


def client_port(frame):
    """The client's port of a TCP frame of the captures (the server ports are below 10000)."""
    tcp = tcp_of(frame)
    return None if tcp is None else (tcp.sport if tcp.sport > 10000 else tcp.dport)


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """The five captures as one, in time order; and the client port of each connection
    (by SYN, in order) per capture."""
    frames, ports = [], {}
    for name in CAPTURES:
        part = read_frames(os.path.join(DATA, f"{name}.pcap"))
        ports[name] = [client_port(f) for _, f in part if is_client_syn(f)]
        frames += part
    assert [ts for ts, _ in frames] == sorted(ts for ts, _ in frames)
    path = tmp_path_factory.mktemp("capture") / "five.pcap"
    with PcapWriter(str(path)) as writer:
        for ts, frame in frames:
            writer.write(ts, frame)
    return str(path), frames, ports


def rules_for(ports):
    c = ports["concurrent"]
    return (f"# block two of the eight concurrent GETs and the port 7000 exchange\n"
            f"DROP    10.77.0.1     10.77.0.2/32  sport:{c[1]} dport:8080\n"
            f"DROP    10.77.0.0/16  10.77.0.2     dport:8080 sport:{c[5]}   # by port, any order\n"
            f"\n"
            f"DROP    10.77.0.1     10.77.0.2     dport:7000\n"
            f"ACCEPT  10.77.0.1     0.0.0.0/0     dport:8080\n")


def run_port(tmp_path, pcap, rules, *args, write="out.pcap"):
    """The port in ``tmp_path`` with a TOML configuration naming ``pcap``: (exit code,
    stdout, stderr, the frames it forwarded)."""
    (tmp_path / "rules.conf").write_text(rules)
    (tmp_path / "offline.conf").write_text(f'[datapath]\npcap = "{pcap}"\nwrite = "{write}"\n')
    r = subprocess.run([sys.executable, PORT, "-c", "offline.conf", "-f", "rules.conf", *args],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = tmp_path / write
    return r.returncode, r.stdout, r.stderr, read_frames(out) if out.exists() else None


def last_table(stdout):
    """The rows of the last rule table printed."""
    table = stdout.split("Firewall rule table\n")[-1]
    return table.split("\n-----")[0].splitlines()[1:]


def test_port_drops_the_syns_of_drop_rules_and_counts_them(tmp_path, capture):
    pcap, frames, ports = capture
    code, stdout, stderr, out = run_port(tmp_path, pcap, rules_for(ports), "-n", "1")
    assert code == 0 and stderr == "", stderr
    c = ports["concurrent"]
    blocked = {c[1], c[5], ports["halfclose"][0]}
    # What the C program does: the first SYN of a DROP flow is dropped; every other frame
    # of the capture is forwarded unchanged, in order (live the server never answers).
    expected = [(ts, f) for ts, f in frames if not (is_client_syn(f) and client_port(f) in blocked)]
    assert len(expected) == len(frames) - 3
    assert out == expected
    # The rule table, printed each second of packet time, as the C program prints it.
    assert stdout.count("Firewall rule table") >= 5         # the captures span 7.5 s
    assert last_table(stdout) == [
        f"1     1       DROP     10.77.0.1          10.77.0.2          sport:{c[1]:<6}dport:8080  ",
        f"2     1       DROP     10.77.0.0/16       10.77.0.2          sport:{c[5]:<6}dport:8080  ",
        "3     1       DROP     10.77.0.1          10.77.0.2          dport:7000  ",
        "4     10      ACCEPT   10.77.0.1          0.0.0.0/0          dport:8080  "]
    assert re.search(r"\n\[      main:\s*\d+\] Message test thread 0 joined\.\n$", stdout)


def test_port_one_context_per_core_gives_the_same_result(tmp_path, capture):
    """-n 2 (the default on a 2-core machine): two contexts, each with its listener and
    callback, share the capture (each flow to one of them); the result is the same."""
    if os.sysconf("SC_NPROCESSORS_ONLN") < 2:
        pytest.skip("one CPU: the port refuses -n 2 as the C program does")
    pcap, _, ports = capture
    results = []
    for cores in ("1", "2"):
        run_dir = tmp_path / cores
        run_dir.mkdir()
        results.append(run_port(run_dir, pcap, rules_for(ports), "-n", cores))
    (code1, stdout1, _, out1), (code2, stdout2, stderr2, out2) = results
    assert code2 == 0 and stderr2 == "", stderr2
    assert out2 == out1
    assert last_table(stdout2) == last_table(stdout1)
    assert stdout2.count("Firewall rule table") == stdout1.count("Firewall rule table")
    assert "thread 0 joined" in stdout2 and "thread 1 joined" in stdout2


def test_port_and_mosxdp_app_same_verdicts(tmp_path, capture, capsys):
    """mosxdp's own simple_firewall on the same rules: the same connections blocked, the
    same counts, the other connections forwarded unchanged. (The app also drops the rest of
    a blocked flow, which only a recorded capture holds.)"""
    pcap, frames, ports = capture
    rules = rules_for(ports)
    code, stdout, _, port_out = run_port(tmp_path, pcap, rules, "-n", "1")
    assert code == 0
    app_out, stats = tmp_path / "app.pcap", tmp_path / "app.json"
    assert cli.main(["run", "simple_firewall", "--pcap", pcap, "--rules", str(tmp_path / "rules.conf"),
                     "--write", str(app_out), "--stats-output", str(stats),
                     "--on-callback-error", "stop"]) == 0
    capsys.readouterr()
    app = json.loads(stats.read_text())
    port_counts = [int(row.split()[1]) for row in last_table(stdout)]
    assert [rule["flows"] for rule in app["rules"]] == port_counts == [1, 1, 1, 10]
    assert app["default_accept"] == 2                        # ports 81 and 7002

    def syn_ports(out):
        return {client_port(f) for _, f in out if is_client_syn(f)}

    all_syns = {client_port(f) for _, f in frames if is_client_syn(f)}
    c = ports["concurrent"]
    blocked = {c[1], c[5], ports["halfclose"][0]}
    assert syn_ports(port_out) == syn_ports(read_frames(app_out)) == all_syns - blocked
    passed = [(ts, f) for ts, f in frames if client_port(f) not in blocked]
    assert [x for x in read_frames(app_out) if client_port(x[1]) not in blocked] == passed
    assert [x for x in port_out if client_port(x[1]) not in blocked] == passed
    assert not [f for _, f in read_frames(app_out) if client_port(f) in blocked]


def test_port_runs_from_its_directory_with_the_shipped_configuration(tmp_path):
    """`cd examples; python3 simple_firewall.py -c config/offline.conf`, as in mOS (the
    rules file is the default config/simple_firewall.conf: mOS's rules and two for the
    testbed's addresses)."""
    (tmp_path / "examples").mkdir()
    shutil.copytree(os.path.join(ROOT, "examples", "config"), tmp_path / "examples" / "config")
    os.symlink(os.path.join(ROOT, "tests"), tmp_path / "tests")
    r = subprocess.run([sys.executable, PORT, "-c", "config/offline.conf"], cwd=tmp_path / "examples",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    rows = last_table(r.stdout)
    assert [row.split()[:3] for row in rows] == [
        ["1", "0", "DROP"], ["2", "0", "ACCEPT"], ["3", "0", "ACCEPT"], ["4", "0", "ACCEPT"],
        ["5", "0", "DROP"], ["6", "8", "ACCEPT"]]                 # concurrent.pcap: 8 GETs
    assert read_frames(tmp_path / "examples" / "simple_firewall.out.pcap") == \
        read_frames(os.path.join(DATA, "concurrent.pcap"))


@pytest.mark.parametrize("rule, function, message", [
    ("DENY 10.0.0.1 10.0.0.2", "ParseConfigFile", "Unknown rule action [DENY 10.0.0.1 10.0.0.2]."),
    ("DROP10.0.0.1 10.0.0.2", "ParseConfigFile", "Invalid format [DROP10.0.0.1 10.0.0.2]."),
    ("DROP 10.0.0.1", "ParseConfigFile", "Invalid format [DROP 10.0.0.1]."),
    ("DROP 10.0.0.300 10.0.0.2", "ExtractIPAddress", "Invalid IP address [10.0.0.300]"),
    ("DROP 10.0.0.1/33 10.0.0.2", "ExtractIPAddress", "Invalid netmask [33]"),
    ("DROP 10.0.0.1/2x 10.0.0.2", "ExtractIPAddress", "Invalid netmask format [2x]"),
    ("DROP 10.0.0.1 10.0.0.2 port:80", "ExtractPort", "Invalid rule in port setup [port:80]"),
    ("DROP 10.0.0.1 10.0.0.2 dport:80x", "ExtractPort", "Invalid port format [80x]"),
    ("DROP 10.0.0.1 10.0.0.2 dport:65537", "ExtractPort", "Invalid port [65537]"),
])
def test_port_bad_rule_one_line_as_c(tmp_path, rule, function, message):
    """EXIT_WITH_ERROR's line: "[%10s:%4d] errno: %u" and the message, then exit 1."""
    code, stdout, stderr, out = run_port(tmp_path, os.path.join(DATA, "refused.pcap"),
                                         f"# rules\nACCEPT 10.0.0.1 10.0.0.2\n{rule}   # bad\n")
    assert code == 1 and stdout == "" and out is None
    line = int(re.match(r"\[\s*\w+:\s*(\d+)\]", stderr).group(1))
    assert stderr == "[%10s:%4d] errno: 0 %s\n" % (function, line, message)


def test_port_missing_files_and_bad_mos_conf(tmp_path):
    pcap = os.path.join(DATA, "refused.pcap")
    r = subprocess.run([sys.executable, PORT, "-c", "nope.conf"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "Failed to initialize mtcp. (" in r.stderr and "nope.conf" in r.stderr
    (tmp_path / "mos.conf").write_text("mos {\n\tforward = 1\n\tnetdev {\n\t\teth1 0x0001\n}\n")
    r = subprocess.run([sys.executable, PORT, "-c", "mos.conf"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "Failed to initialize mtcp. (mos.conf:1: block 'mos' is not closed" in r.stderr
    code, stdout, stderr, _ = run_port(tmp_path, pcap, "")
    assert code == 0 and "Firewall rule table" in stdout        # no rules: every flow accepted
    r = subprocess.run([sys.executable, PORT, "-c", "offline.conf", "-f", "none.conf"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.endswith("Firewall rule file none.conf is not found.\n")
    r = subprocess.run([sys.executable, PORT, "-x"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("Usage: ")     # as the C program


def test_port_rule_limit(tmp_path, capture):
    pcap, frames, _ = capture
    code, stdout, stderr, _ = run_port(tmp_path, pcap, "DROP 10.0.0.1 10.0.0.2\n" * 1025)
    assert code == 1 and stdout == ""
    assert stderr.endswith("errno: 0 Exceeded max number of rules (1024)\n")
    # 1024 rules: no room for the end mark; a flow no rule matches is accepted (C's
    # assert(0) is compiled out).
    code, stdout, stderr, out = run_port(tmp_path, pcap, "DROP 10.0.0.1 10.0.0.2\n" * 1024)
    assert code == 0 and stderr == "", stderr
    assert out == frames and len(last_table(stdout)) == 1024
