"""netns tier: the eve app live, with real curl downloads through an inline monitor::

    cli: cli0 <==> A [mon: mosxdp run eve --iface A --peer B --bypass-after-bytes 65536] B <==> srv0 :8080 srv

A 1 KiB download over IPv4 and 1 MiB downloads over IPv4 and IPv6 (the larger ones pass
the stream depth: the kernel forwards the rest of them). Each gets one EVE flow record
that validates against Suricata's schema, whose packets and frame bytes per direction
equal what tcpdump saw on srv0 for that connection (the monitor forwards frames
unchanged), whose TCP flags per direction equal the OR of the flags tshark reads there,
whose community_id is the reference package's, and, for the two bypassed downloads,
which says the kernel ("capture") took most of the answer (`flow.bypassed`). No pcap
fields live. The downloads arrive byte-identical.

Skipped when the probe fails (not root, no AF_XDP, no bcc/libxdp, no curl/tcpdump/tshark);
with MOSXDP_REQUIRE_PRIVILEGED=1 a failed probe fails instead.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import communityid
import jsonschema
import livekit
import pytest
from livekit import Bed, Tcpdump, json_lines, sha256_file

pytestmark = pytest.mark.netns

PORT = 8080
DEPTH = 65536
SCHEMA = Path(livekit.ROOT).parent / "shared" / "reference" / "suricata" / "eve-schema.json"
DOWNLOADS = [(4, "f1k", 43101), (4, "f1m", 43102), (6, "f1m", 43103)]


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    livekit.require_live(("curl", "tcpdump", "tshark"))
    www = tmp_path_factory.mktemp("www")
    (www / "f1k").write_bytes(os.urandom(1024))
    (www / "f1m").write_bytes(os.urandom(1 << 20))
    bed = Bed.start(www, tmp_path_factory.mktemp("bed"), (PORT,))
    yield bed
    bed.close()


def wire_truth(pcap: Path, port: int):
    """From tshark on tcpdump's capture: {sender (addr, port): [frames, frame bytes,
    OR of TCP flags]} of the connection from client port ``port``."""
    out = subprocess.run(["tshark", "-r", pcap, "-Y", f"tcp.port == {port}", "-T", "fields",
                          "-E", "separator=/t", "-e", "ip.src", "-e", "ipv6.src",
                          "-e", "tcp.srcport", "-e", "frame.len", "-e", "tcp.flags"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    truth = {}
    for line in out.splitlines():
        ip4, ip6, sport, flen, flags = line.split("\t")
        count = truth.setdefault((ip4 or ip6, int(sport)), [0, 0, 0])
        count[0] += 1
        count[1] += int(flen)
        count[2] |= int(flags, 16) & 0xFF
    return truth


def test_eve_records_of_live_downloads(bed):
    tb = bed.tb
    log = bed.out_path("eve.json")
    capture = bed.out_path("srv0.pcap")
    mon = bed.monitor("eve", "--output", log, "--bypass-after-bytes", DEPTH,
                      ready=lambda: json_lines(log))
    try:
        dump = Tcpdump(bed, "srv", tb.srv_if, capture, f"tcp port {PORT}")
        try:
            for family, name, local_port in DOWNLOADS:
                r, got = bed.download(family, name, local_port=local_port)
                assert r.returncode == 0, (r.stderr, mon.log())
                assert sha256_file(got) == sha256_file(bed.www / name)
        finally:
            report = dump.stop(settle=0.5)
        assert "\n0 packets dropped by kernel" in report, report
        mon.stop_clean()
    finally:
        mon.close()

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    records = json_lines(log)
    assert len(records) == len(log.read_text().splitlines())    # every line whole
    for record in records:
        validator.validate(record)
        assert "pcap_cnt" not in record and "pcap_filename" not in record
    for family, name, local_port in DOWNLOADS:
        client = (tb.cli_ip if family == 4 else tb.cli_ip6, local_port)
        server = (tb.srv_ip if family == 4 else tb.srv_ip6, PORT)
        mine = [r for r in records if r["event_type"] == "flow"
                and (r["src_ip"], r.get("src_port")) == client]
        assert len(mine) == 1, (client, records)
        record = mine[0]
        flow, tcp = record["flow"], record["tcp"]
        assert (record["dest_ip"], record["dest_port"], record["ip_v"]) == server + (family,)
        assert record["community_id"] == communityid.CommunityID().calc(
            communityid.FlowTuple.make_tcp(client[0], server[0], client[1], server[1]))
        truth = wire_truth(capture, local_port)
        assert [flow["pkts_toserver"], flow["bytes_toserver"], int(tcp["tcp_flags_ts"], 16)] \
            == truth[client], (record, truth)
        assert [flow["pkts_toclient"], flow["bytes_toclient"], int(tcp["tcp_flags_tc"], 16)] \
            == truth[server], (record, truth)
        assert tcp["state"] == "closed" and flow["reason"] == "timeout"
        if name == "f1k":
            assert flow["state"] == "closed" and "bypassed" not in flow, record
            continue
        assert flow["state"] == "bypassed" and flow["bypass"] == "capture", record
        part = flow["bypassed"]
        # the kernel took the answer past the first 64 KiB, all but a few frames of it
        assert part["bytes_toclient"] > 0.9 * ((1 << 20) - DEPTH), record
        assert part["pkts_toclient"] < flow["pkts_toclient"]
        assert 0 < part["pkts_toserver"] < flow["pkts_toserver"]
