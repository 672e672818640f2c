"""The eve app's tls, http and dns records offline on the session captures
(tests/data/sessions): every record validates against Suricata's EVE schema, the fields
equal what tshark reads in the same packets, and each session record's flow_id joins it to
exactly one flow record (same community_id, same endpoints)."""
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from sessionkit import DNS_PCAP, HTTP_PCAP, TLS_PCAP, first, needs_tshark, pdml, values

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared" / "reference" / "suricata" / "eve-schema.json"


def run_eve(pcap, *extra):
    r = subprocess.run([sys.executable, "-m", "mosxdp.cli", "run", "eve", "--pcap", str(pcap),
                        *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.fixture(scope="module")
def runs():
    return {name: run_eve(pcap) for name, pcap in
            (("tls", TLS_PCAP), ("http", HTTP_PCAP), ("dns", DNS_PCAP))}


@pytest.mark.parametrize("name", ["tls", "http", "dns"])
def test_every_record_validates_and_joins_one_flow_record(runs, name):
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    records = runs[name]
    flows = {}
    for r in records:
        validator.validate(r)
        if r["event_type"] == "flow":
            assert r["flow_id"] not in flows
            flows[r["flow_id"]] = r
    sessions = [r for r in records if r["event_type"] == name]
    assert sessions and {r["event_type"] for r in records} == {"flow", name}
    for r in sessions:
        flow = flows[r["flow_id"]]
        assert flow["app_proto"] == name
        for key in ("community_id", "src_ip", "src_port", "dest_ip", "dest_port", "proto"):
            assert r[key] == flow[key], key
        assert r["pcap_filename"] == flow["pcap_filename"]
        assert 1 <= r["pcap_cnt"] <= flow["pcap_cnt"]


def test_no_sessions_keeps_eve_flow_only(runs):
    plain = run_eve(HTTP_PCAP, "--no-sessions")
    assert {r["event_type"] for r in plain} == {"flow"}
    flows = [r for r in runs["http"] if r["event_type"] == "flow"]
    assert len(plain) == len(flows)
    strip = lambda r: {k: v for k, v in r.items() if k != "app_proto"}  # noqa: E731
    assert sorted(map(json.dumps, map(strip, plain))) == sorted(map(json.dumps, map(strip, flows)))


@needs_tshark
def test_tls_records_match_tshark(runs):
    hellos = {}
    for fields in pdml(TLS_PCAP, "tls.handshake.type == 1 || tls.handshake.type == 2",
                       "-d", "tcp.port==8443,tls"):
        sport, dport = int(first(fields, "tcp.srcport")), int(first(fields, "tcp.dstport"))
        for htype in values(fields, "tls.handshake.type"):
            hellos[(sport if dport == 8443 else dport, htype)] = fields
    records = [r for r in runs["tls"] if r["event_type"] == "tls"]
    assert len(records) == 7
    for r in records:
        tls, port = r["tls"], r["src_port"]
        ch, sh = hellos[(port, "1")], hellos[(port, "2")]
        assert tls.get("sni") == first(ch, "tls.handshake.extensions_server_name")
        chosen = int(first(sh, "tls.handshake.extensions.supported_version") or
                     first(sh, "tls.handshake.version"), 0)
        assert tls["version"] == {0x0303: "TLS 1.2", 0x0304: "TLS 1.3"}[chosen]
        assert tls.get("client_alpns", []) == values(ch, "tls.handshake.extensions_alpn_str")
        assert tls.get("server_alpns", []) == values(sh, "tls.handshake.extensions_alpn_str")
        assert tls["ja4"].startswith("t13" if "1.3" in tls["version"] else "t1")


@needs_tshark
def test_http_records_match_tshark(runs):
    requests = []
    for fields in pdml(HTTP_PCAP, "http.request"):
        port = int(first(fields, "tcp.srcport"))
        for i, method in enumerate(values(fields, "http.request.method")):
            requests.append((port, method, values(fields, "http.request.uri")[i],
                             values(fields, "http.request.version")[i],
                             values(fields, "http.user_agent")[i]
                             if len(values(fields, "http.user_agent")) > i else None))
    got = [(r["src_port"], r["http"]["http_method"], r["http"]["url"], r["http"]["protocol"],
            r["http"].get("http_user_agent")) for r in runs["http"] if r["event_type"] == "http"]
    assert sorted(got, key=repr) == sorted(requests, key=repr)
    responses = {}
    for fields in pdml(HTTP_PCAP, "http.response"):
        port = int(first(fields, "tcp.dstport"))
        responses.setdefault(port, []).extend(int(c) for c in values(fields, "http.response.code"))
    statuses = {}
    for r in runs["http"]:
        if r["event_type"] == "http":
            assert (r["http"]["hostname"], r["http"]["http_port"]) == ("10.77.0.2", 8080)
            statuses.setdefault(r["src_port"], []).append(r["http"]["status"])
    pipelined = max(statuses)
    assert statuses.keys() == responses.keys()
    for port, got in statuses.items():
        # tshark 4.0 frames a pipelined HEAD's answer by its Content-Length (docs/sessions.md):
        # past the first, that connection's answers are its and not the server's
        cut = 1 if port == pipelined else None
        assert got[:cut] == responses[port][:cut], port
    assert statuses[pipelined] == [200, 200, 200, 304]


@needs_tshark
def test_dns_records_match_tshark(runs):
    expected = []
    for fields in pdml(DNS_PCAP, "dns"):
        # a TCP segment may carry several messages (then queries only, here)
        ids, names = values(fields, "dns.id"), values(fields, "dns.qry.name")
        kinds = values(fields, "dns.flags.response")
        addresses = sorted(values(fields, "dns.a") + values(fields, "dns.aaaa"))
        for i, trans_id in enumerate(ids):
            expected.append(("response" if kinds[i] in ("1", "True") else "request",
                             int(trans_id, 0), names[i].lower() if i < len(names) else None,
                             addresses if len(ids) == 1 else []))
    got = []
    for r in runs["dns"]:
        if r["event_type"] == "dns":
            d = r["dns"]
            queries = d.get("queries", [{}])
            got.append((d["type"], d["id"], queries[0].get("rrname"),
                        sorted(a["rdata"] for a in d.get("answers", ())
                               if a["rrtype"] in ("A", "AAAA"))))
    assert sorted(got, key=repr) == sorted(expected, key=repr)
