"""Captures made on a host, as users make them: `tcpdump -i any` (Linux cooked v2, and v1
with `-y LINUX_SLL`) of real HTTP downloads over a namespace's loopback, whose segments
are up to 64 KiB (the loopback's MTU, as GRO and TSO give a host capture). flowdump reads
them offline with every byte captured: its files equal tcpflow's (holes included, when
tcpdump dropped frames), and when nothing was dropped, the server's stream ends with the
file served and both captures give the same files; connlog's packet and byte counts
equal tshark's."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from livekit import PY, require_live, wait_until

SIZE = 3 << 20


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    """(the file served, {"sll2": path, "sll": path}, {kind: frames tcpdump dropped}) of
    three downloads, IPv4 and IPv6."""
    require_live(("tcpdump", "curl", "tcpflow", "tshark"))
    work = tmp_path_factory.mktemp("host")
    served = work / "www" / "big.bin"
    served.parent.mkdir()
    served.write_bytes(os.urandom(SIZE))
    ns = f"mxhost{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    procs = []

    def inside(argv):
        return ["ip", "netns", "exec", ns, *map(str, argv)]
    try:
        subprocess.run(inside(["ip", "link", "set", "lo", "up"]), check=True)
        server = subprocess.Popen(inside([PY, "-m", "http.server", "8080", "--bind", "::",
                                          "--directory", served.parent]),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(server)

        def listening():
            probe = subprocess.run(inside(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                           "http://127.0.0.1:8080/"]), capture_output=True,
                                   text=True)
            return probe.stdout == "200"
        wait_until("the HTTP server", listening, 10)
        paths = {"sll2": work / "any.pcap", "sll": work / "any-sll.pcap"}
        for kind, path in paths.items():
            err = path.with_suffix(".err")
            extra = ["-y", "LINUX_SLL"] if kind == "sll" else []
            with open(err, "w") as err_file:
                procs.append(subprocess.Popen(
                    inside(["tcpdump", "-i", "any", "-s", "0", "-B", "65536", "-U",
                            "--immediate-mode", *extra, "-w", path, "tcp port 8080"]),
                    stdout=subprocess.DEVNULL, stderr=err_file))
            wait_until(f"tcpdump ({kind})", lambda: "listening on" in err.read_text(), 10)

        for url in ("http://127.0.0.1:8080/big.bin", "http://[::1]:8080/big.bin",
                    "http://127.0.0.1:8080/big.bin"):
            got = subprocess.run(inside(["curl", "-s", "--fail", url]), capture_output=True,
                                 timeout=60)
            assert got.returncode == 0 and got.stdout == served.read_bytes()
        time.sleep(0.5)
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGINT)     # tcpdump: its counts on stderr
            proc.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], check=False)
    dropped = {}
    for kind, path in paths.items():
        report = path.with_suffix(".err").read_text()
        match = re.search(r"(\d+) packets? dropped by kernel", report)
        assert match, report
        dropped[kind] = int(match.group(1))
    return served, paths, dropped


def mosxdp(*args):
    return subprocess.run([PY, "-m", "mosxdp.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


# flowdump's line when the capture missed bytes (frames tcpdump dropped)
MISSED = re.compile(r"flowdump: \d+ stream bytes the monitor never saw \(holes in the "
                    r"capture, or payload its snap length cut\) are zeros in the files, or "
                    r"absent from their ends\n")


def streams(directory: Path) -> dict:
    return {p.name: p.read_bytes() for p in directory.iterdir()
            if p.is_file() and p.name != "report.xml"}


def test_flowdump_reads_any_captures_with_every_byte(captures, tmp_path):
    served, paths, dropped = captures
    got = {}
    for kind, path in paths.items():
        proc = mosxdp("run", "flowdump", "--pcap", path, "--outdir", tmp_path / kind)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "" or (dropped[kind] and MISSED.fullmatch(proc.stderr)), (
            dropped, proc.stderr)
        got[kind] = streams(tmp_path / kind)
    tcpflow_dir = tmp_path / "tcpflow"
    subprocess.run(["tcpflow", "-r", paths["sll"], "-o", tcpflow_dir], check=True,
                   capture_output=True, timeout=120)
    assert got["sll"] == streams(tcpflow_dir)
    if not dropped["sll2"]:
        responses = [data for name, data in got["sll2"].items() if ".08080-" in name]
        assert len(responses) == 3 and all(data.endswith(served.read_bytes())
                                           for data in responses)
        if not dropped["sll"]:
            assert got["sll2"] == got["sll"]


def test_connlog_counts_what_tshark_counts(captures, tmp_path):
    """Per connection and direction, connlog's packets and IP bytes are tshark's frames and
    the sum of their IP lengths (the cooked header is not part of them)."""
    _, paths, dropped = captures
    out = tmp_path / "conn.json"
    proc = mosxdp("run", "connlog", "--pcap", paths["sll2"], "--output", out)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    fields = subprocess.run(["tshark", "-r", paths["sll2"], "-Y", "tcp", "-T", "fields",
                             "-E", "separator=,", "-e", "tcp.srcport", "-e", "tcp.dstport",
                             "-e", "ip.len", "-e", "ipv6.plen"],
                            capture_output=True, text=True, check=True, timeout=120).stdout
    counted = {}
    for line in fields.splitlines():
        sport, dport, ip_len, plen = line.split(",")
        client, to_server = (int(sport), True) if dport == "8080" else (int(dport), False)
        ip_bytes = int(ip_len) if ip_len else int(plen) + 40
        pkts = counted.setdefault(client, [0, 0, 0, 0])
        pkts[0 if to_server else 1] += 1
        pkts[2 if to_server else 3] += ip_bytes
    assert len(records) == 3 and all(r["conn_state"] == "SF" for r in records), records
    assert {r["id.orig_p"]: [r["orig_pkts"], r["resp_pkts"], r["orig_ip_bytes"],
                             r["resp_ip_bytes"]] for r in records} == counted
    assert all(r["resp_bytes"] > SIZE for r in records)
    assert dropped["sll2"] or all(r["missed_bytes"] == 0 for r in records)
