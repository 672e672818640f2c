"""netns tier: UDP and ICMP flows through the live inline monitor running connlog::

    <p>-cli: cli0 <== veth ==> A [<p>-mon: mosxdp run connlog --iface A --peer B] B <== veth ==> srv0 :<p>-srv

Real `ping` (IPv4 and IPv6) and real UDP (`python -m mosxdp.demo.dgram`: DNS queries to
its responder, echo datagrams, datagrams to a closed port) cross the monitor; connlog's
lines for them, written when the monitor stops, carry what the client sent and received
(its own report, and ping's counts). With --bypass-after-bytes, a UDP flow is handed to
the kernel's per-flow verdict: the XDP program forwards and counts its datagrams, and the
line's counts are still exact. The set-up is livekit's (Bed, Monitor).
"""
from __future__ import annotations

import json
import os
import subprocess

import livekit
import pytest
from livekit import PY, ROOT, Bed, json_lines, wait_until

pytestmark = pytest.mark.netns

PORT = 8080


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    livekit.require_live(("curl", "ping", "ss", "ethtool"))
    www = tmp_path_factory.mktemp("www")
    (www / "f1k").write_bytes(os.urandom(1024))
    b = Bed.start(www, tmp_path_factory.mktemp("dgram"), (PORT,))
    try:
        server = b.tb.popen("srv", [PY, "-m", "mosxdp.demo.dgram", "serve", b.tb.srv_ip,
                                    b.tb.srv_ip6], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
        assert server.stdout.readline().strip() == b"ready"
        yield b
    finally:
        b.close()


def monitor(bed, log, *args):
    """connlog on the bed, returned once it logged its warm-up connection."""
    return bed.monitor("connlog", "--output", log, *args,
                       ready=lambda: log.exists() and log.stat().st_size > 0)


def client(bed, addr, *args):
    r = bed.sh("cli", PY, "-m", "mosxdp.demo.dgram", "client", addr, *args)
    return json.loads(r.stdout)


def flows(lines, proto, **match):
    """The lines of ``proto`` whose id.orig_h, id.orig_p ... are as given (orig_h=...)."""
    return [x for x in lines if x["proto"] == proto
            and all(x["id." + k] == v for k, v in match.items())]


def test_ping_dns_and_udp_through_the_inline_monitor_are_logged(bed):
    tb = bed.tb
    log = bed.out_path("conn.json")
    mon = monitor(bed, log)
    try:
        bed.sh("cli", "ping", "-c", "4", "-i", "0.2", "-s", "56", tb.srv_ip)
        bed.sh("cli", "ping", "-6", "-c", "3", "-i", "0.2", "-s", "100", tb.srv_ip6)
        v4 = client(bed, tb.srv_ip, "--echo", "12", "--seed", "1")
        v6 = client(bed, tb.srv_ip6, "--echo", "5", "--seed", "2")
        mon.stop_clean()
    finally:
        mon.close()
    lines = json_lines(log)
    (ping4,) = flows(lines, "icmp", orig_h=tb.cli_ip, orig_p=8, resp_h=tb.srv_ip, resp_p=0)
    assert (ping4["orig_pkts"], ping4["resp_pkts"]) == (4, 4)
    assert (ping4["orig_bytes"], ping4["resp_bytes"]) == (4 * 56, 4 * 56)
    assert ping4["orig_ip_bytes"] == ping4["resp_ip_bytes"] == 4 * (20 + 8 + 56)
    assert ping4["conn_state"] == "OTH" and "history" not in ping4 and ping4["duration"] > 0.5
    (ping6,) = flows(lines, "icmp", orig_h=tb.cli_ip6, orig_p=128, resp_h=tb.srv_ip6, resp_p=129)
    assert (ping6["orig_pkts"], ping6["resp_pkts"], ping6["orig_bytes"]) == (3, 3, 300)
    assert ping6["resp_ip_bytes"] == 3 * (40 + 8 + 100)
    for addr, report, cli, hdr in ((tb.srv_ip, v4, tb.cli_ip, 28), (tb.srv_ip6, v6, tb.cli_ip6, 48)):
        for q in report["dns"]:
            (line,) = flows(lines, "udp", orig_h=cli, orig_p=q["port"], resp_h=addr, resp_p=53)
            assert (line["conn_state"], line["history"]) == ("SF", "Dd"), line
            assert (line["orig_pkts"], line["resp_pkts"]) == (1, 1), line
            assert (line["orig_bytes"], line["resp_bytes"]) == (q["query"], q["answer"])
            assert line["orig_ip_bytes"] == hdr + q["query"]
        (echo,) = flows(lines, "udp", orig_p=report["echo_port"], resp_h=addr, resp_p=7005)
        sizes = report["echo"]
        assert echo["orig_pkts"] == echo["resp_pkts"] == len(sizes)
        assert echo["orig_bytes"] == echo["resp_bytes"] == sum(sizes)
        assert echo["orig_ip_bytes"] == hdr * len(sizes) + sum(sizes)
        (closed,) = flows(lines, "udp", resp_h=addr, resp_p=7006)
        assert (closed["conn_state"], closed["history"], closed["orig_pkts"]) == ("S0", "D", 2)
    # the server's answers to the closed port: one-way ICMP flows keyed by type and code
    (unreach4,) = flows(lines, "icmp", orig_h=tb.srv_ip, orig_p=3, resp_p=3)
    (unreach6,) = flows(lines, "icmp", orig_h=tb.srv_ip6, orig_p=1, resp_p=4)
    assert unreach4["orig_pkts"] >= 1 and unreach6["orig_pkts"] >= 1
    assert unreach4["resp_pkts"] == 0 and unreach4["conn_state"] == "OTH"
    assert all(x["end_reason"] == "eof" for x in lines if x["proto"] != "tcp")
    assert len({x["uid"] for x in lines}) == len(lines)


def test_udp_flow_bypassed_to_the_kernel_keeps_exact_counts(bed):
    tb = bed.tb
    log = bed.out_path("conn-bypass.json")
    mon = monitor(bed, log, "--bypass-after-bytes", 3000)
    try:
        report = client(bed, tb.srv_ip, "--echo", "60", "--seed", "3")
        counters = wait_until("the kernel's verdict counts", lambda: (
            lambda c: c if c.get("verdict_bypass", 0) > 0 else None)(bed.xdp_counters()), 10)
        mon.stop_clean()
    finally:
        mon.close()
    (echo,) = flows(json_lines(log), "udp", orig_p=report["echo_port"], resp_p=7005)
    sizes = report["echo"]
    assert echo["orig_pkts"] == echo["resp_pkts"] == 60
    assert echo["orig_bytes"] == echo["resp_bytes"] == sum(sizes)
    assert echo["orig_ip_bytes"] == echo["resp_ip_bytes"] == 28 * 60 + sum(sizes)
    assert (echo["conn_state"], echo["history"]) == ("SF", "Dd")
    # most of the echo's 120 datagrams were forwarded by the kernel's verdict, not Python
    assert counters["verdict_bypass"] >= 60, counters
