"""The zeeklog app offline (`mosxdp run zeeklog --pcap P --logdir D`) on the session captures
(tests/data/sessions): ssl.log, http.log and dns.log field by field against tshark, every
session line joined to its conn.log line by uid, conn.log the same with and without the
bypass after sessions and equal to connlog's, the bypass done where it should be; crafted
malformed sessions named in weird.log while the other logs go on."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mosxdp.io.pcap import PcapWriter
from mosxdp.sessions.tls_names import version_name
from flowcraft import Conv, Dgrams
from sessionkit import DNS_PCAP, HTTP_PCAP, TLS_PCAP, first, needs_tshark, pdml, tshark_http, \
    tshark_ja4, values
from test_sessions_dns import answer_text, tshark_messages

ROOT = Path(__file__).resolve().parents[2]
LOGS = ("conn", "ssl", "http", "dns", "weird")


def run_zeeklog(pcap, logdir, *extra):
    """The app run offline: ({log name: [records]}, its stderr)."""
    r = subprocess.run([sys.executable, "-m", "mosxdp.cli", "run", "zeeklog", "--pcap", str(pcap),
                        "--logdir", str(logdir), *extra], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    logs = {}
    for name in LOGS:
        lines = (Path(logdir) / f"{name}.log").read_text().splitlines()
        logs[name] = [json.loads(line) for line in lines]
    return logs, r.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{(capture, bypass): (logs, stderr)} of the three captures, with and without bypass."""
    out = {}
    for name, pcap in (("tls", TLS_PCAP), ("http", HTTP_PCAP), ("dns", DNS_PCAP)):
        for bypass in (True, False):
            logdir = tmp_path_factory.mktemp(f"{name}-{bypass}")
            out[(name, bypass)] = run_zeeklog(pcap, logdir, *(() if bypass else ("--no-bypass",)))
    return out


def by_orig_port(lines):
    out = {}
    for line in lines:
        out.setdefault(line["id.orig_p"], []).append(line)
    return out


# ----------------------------------------------------------------- ssl.log vs tshark
@needs_tshark
def test_ssl_log_matches_tshark(runs):
    logs, _ = runs[("tls", True)]
    hellos = {}
    for fields in pdml(TLS_PCAP, "tls.handshake.type == 1 || tls.handshake.type == 2",
                       "-d", "tcp.port==8443,tls"):
        sport, dport = int(first(fields, "tcp.srcport")), int(first(fields, "tcp.dstport"))
        for htype in values(fields, "tls.handshake.type"):
            if htype in ("1", "2"):
                hellos[(sport if dport == 8443 else dport, int(htype))] = fields
    curves = {}
    for fields in pdml(TLS_PCAP, "tls.handshake.extensions_key_share_group || "
                                 "tls.handshake.server_named_curve", "-d", "tcp.port==8443,tls"):
        if int(first(fields, "tcp.srcport")) == 8443:
            shown = first(fields, "tls.handshake.extensions_key_share_group", "showname") or \
                first(fields, "tls.handshake.server_named_curve", "showname")
            curves[int(first(fields, "tcp.dstport"))] = shown.split(": ", 1)[1].split(" (")[0]
    lines = by_orig_port(logs["ssl"])
    assert len(logs["ssl"]) == 7 and len(lines) == 7 and logs["weird"] == []
    for port, (line,) in lines.items():
        ch, sh = hellos[(port, 1)], hellos[(port, 2)]
        assert line.get("server_name") == first(ch, "tls.handshake.extensions_server_name")
        assert line["ja4"] == tshark_ja4(ch)
        shown = first(sh, "tls.handshake.ciphersuite", "showname")
        assert line["cipher"] == shown.split(": ", 1)[1].rsplit(" (", 1)[0]
        selected = first(sh, "tls.handshake.extensions.supported_version")
        assert line["version"] == version_name(int(selected or first(sh, "tls.handshake.version"), 0))
        assert line.get("next_protocol") == first(sh, "tls.handshake.extensions_alpn_str")
        assert line["curve"] == curves[port]
        assert line["established"] is True and line["resumed"] is False
        assert "last_alert" not in line
        assert (line["id.resp_h"], line["id.resp_p"]) == ("10.77.0.2", 8443)
    # Zeek's spellings
    assert {line["version"] for line in logs["ssl"]} == {"TLSv13", "TLSv12"}


# ----------------------------------------------------------------- http.log vs tshark
@needs_tshark
def test_http_log_matches_tshark(runs):
    logs, _ = runs[("http", True)]
    requests, responses = tshark_http(HTTP_PCAP, 8080)
    lines = by_orig_port(logs["http"])
    assert lines.keys() == requests.keys() == responses.keys() and logs["weird"] == []
    # Zeek's host is the Host header without its port (tshark's http.host keeps it)
    for reqs in requests.values():
        for r in reqs:
            if r.get("host") is not None:
                r["host"] = re.sub(r":\d{1,5}$", "", r["host"])
    pipelined = max(lines)
    for port, txns in lines.items():
        assert [t["trans_depth"] for t in txns] == list(range(1, len(txns) + 1))
        assert [{k: t.get(k) for k in requests[port][0]} for t in txns] == requests[port]
        got = [{k: t.get(k) for k in responses[port][0]} for t in txns]
        # tshark 4.0 frames a pipelined HEAD's answer by its Content-Length (docs/sessions.md)
        assert got[:1 if port == pipelined else None] == \
            responses[port][:1 if port == pipelined else None]
        assert all(t["tags"] == [] for t in txns)
    assert len(logs["http"]) == 12


# ----------------------------------------------------------------- dns.log vs tshark
@needs_tshark
def test_dns_log_matches_tshark(runs):
    logs, _ = runs[("dns", True)]
    lines = {}
    for line in logs["dns"]:
        lines.setdefault(line["trans_id"], []).append(line)
    seen = {}
    for m in tshark_messages():
        key = (m["id"], m["dns.flags.response"])
        n = seen[key] = seen.get(key, -1) + 1
        line = lines[m["id"]][n]
        if m["dns.flags.response"] == "0":
            assert line["query"] == m["dns.qry.name"].lower()
            assert (line["qtype"], line["qclass"]) == (int(m["dns.qry.type"]),
                                                       int(m["dns.qry.class"], 0))
            assert (line["RD"], line["TC"]) == (m["dns.flags.recdesired"] == "1",
                                                m["dns.flags.truncated"] == "1")
        else:
            answers = m["rrs"][:int(m["dns.count.answers"])]
            assert line["rcode"] == int(m["dns.flags.rcode"])
            assert line.get("answers", []) == [answer_text(rr) for rr in answers]
            assert line.get("TTLs", []) == [float(rr["dns.resp.ttl"]) for rr in answers]
    assert len(logs["dns"]) == 14 and logs["weird"] == []
    # Zeek's spellings
    assert {t["qtype_name"] for t in logs["dns"]} == {"A", "AAAA", "MX", "TXT"}
    assert {t["rcode_name"] for t in logs["dns"]} == {"NOERROR", "NXDOMAIN", "REFUSED"}
    assert {t["proto"] for t in logs["dns"]} == {"udp", "tcp"}
    assert all(t["qclass_name"] == "C_INTERNET" for t in logs["dns"])


# ----------------------------------------------------------------- joins and bypass
@pytest.mark.parametrize("capture", ["tls", "http", "dns"])
def test_session_lines_join_their_conn_line_by_uid(runs, capture):
    logs, _ = runs[(capture, True)]
    conns = {line["uid"]: line for line in logs["conn"]}
    assert len(conns) == len(logs["conn"])     # a uid per flow
    sessions = logs["ssl"] + logs["http"] + logs["dns"]
    assert sessions
    for line in sessions:
        conn = conns[line["uid"]]
        assert all(line[k] == conn[k] for k in ("id.orig_h", "id.orig_p", "id.resp_h",
                                                 "id.resp_p"))
        assert conn["ts"] <= line["ts"] <= conn["ts"] + conn["duration"]
    if capture == "dns":
        assert {conns[line["uid"]]["proto"] for line in sessions} == {"udp", "tcp"}


@pytest.mark.parametrize("capture", ["tls", "http", "dns"])
def test_conn_log_is_the_same_with_and_without_bypass_and_is_connlogs(runs, capture,
                                                                       tmp_path):
    with_bypass, without = runs[(capture, True)][0], runs[(capture, False)][0]
    key = (lambda line: line["uid"])
    assert sorted(with_bypass["conn"], key=key) == sorted(without["conn"], key=key)
    for name in ("ssl", "http", "dns", "weird"):
        assert with_bypass[name] == without[name]
    pcap = {"tls": TLS_PCAP, "http": HTTP_PCAP, "dns": DNS_PCAP}[capture]
    out = tmp_path / "conn.log"
    r = subprocess.run([sys.executable, "-m", "mosxdp.cli", "run", "connlog", "--pcap", pcap,
                        "--output", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    connlog = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(connlog, key=key) == sorted(with_bypass["conn"], key=key)


def test_flows_go_to_the_kernel_after_their_sessions(runs):
    # TLS: each of the 7 handshakes; HTTP and DNS: followed to their ends
    assert "flows followed 7, handed to the kernel 7" in runs[("tls", True)][1]
    assert "handed to the kernel 0" in runs[("http", True)][1]
    assert "handed to the kernel 0" in runs[("tls", False)][1]


def test_max_transactions_stops_following_http_flows(tmp_path):
    logs, err = run_zeeklog(HTTP_PCAP, tmp_path, "--max-transactions", "1")
    assert [t["trans_depth"] for t in logs["http"]] == [1] * 7
    # all but GET /close, whose answer ends with the connection (its transaction with it)
    assert "flows followed 7, handed to the kernel 6" in err
    full, _ = run_zeeklog(HTTP_PCAP, tmp_path / "full")
    key = (lambda line: line["uid"])
    assert sorted(logs["conn"], key=key) == sorted(full["conn"], key=key)


# ----------------------------------------------------------------- malformed sessions
def crafted_pcap(path):
    """Malformed TLS, HTTP and DNS beside a good HTTP transaction and a good DNS query."""
    frames = []
    bad_tls = Conv(cport=41001, sport=443)
    bad_tls.handshake()
    # a ClientHello whose session id (32 bytes) runs past its 6-byte message
    bad_tls.data("c", b"\x16\x03\x01\x00\x0a\x01\x00\x00\x06\x03\x03\x20\x00\x00\x00")
    bad_tls.data("s", b"\x15\x03\x03\x00\x02\x02\x28")
    bad_tls.close()
    bad_http = Conv(cport=41002, sport=80, t0=2_000_000)
    bad_http.handshake()
    bad_http.data("c", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    bad_http.data("s", b"HTTP/1.1 200 OK\r\nContent-Length: zz\r\n\r\nhello")
    bad_http.close()
    good_http = Conv(cport=41003, sport=80, t0=3_000_000)
    good_http.full(b"GET /ok HTTP/1.1\r\nHost: good\r\n\r\n",
                   b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    bad_dns_tcp = Conv(cport=41004, sport=53, t0=4_000_000)
    bad_dns_tcp.handshake()
    bad_dns_tcp.data("c", b"\x00\x05\x12\x34\x01\x00\x00")         # 5 bytes: under a header
    bad_dns_tcp.close()
    dgrams = Dgrams(t0=5_000_000)
    dgrams.udp("c", 41005, 53, b"\x43\x21\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c")
    import dns.message
    query = dns.message.make_query("good.test", "A", id=0x2222)
    dgrams.udp("c", 41006, 53, query.to_wire())
    dgrams.udp("s", 53, 41006, dns.message.make_response(query).to_wire())
    for conv in (bad_tls, bad_http, good_http, bad_dns_tcp, dgrams):
        frames += conv.frames
    with PcapWriter(str(path)) as writer:
        for ts, frame in sorted(frames, key=lambda f: f[0]):
            writer.write(ts, frame)


def test_malformed_sessions_are_named_in_weird_log_and_the_rest_is_logged(tmp_path):
    pcap = tmp_path / "crafted.pcap"
    crafted_pcap(pcap)
    logs, err = run_zeeklog(pcap, tmp_path / "logs")
    assert "Traceback" not in err
    conns = {line["uid"]: line for line in logs["conn"]}
    weirds = {(w["id.orig_p"], w["name"], w["source"]) for w in logs["weird"]}
    assert weirds == {(41001, "ssl_bad_client_hello", "SSL"),
                      (41002, "bad_HTTP_reply", "HTTP"),
                      (41004, "DNS_truncated_len_lt_hdr_len", "DNS"),
                      (41005, "DNS_label_forward_compress_offset", "DNS")}, logs["weird"]
    assert len(logs["weird"]) == 4 and all(w["addl"] for w in logs["weird"])
    for w in logs["weird"]:
        assert conns[w["uid"]]["id.orig_p"] == w["id.orig_p"] and w["notice"] is False
    # the request before the bad reply is logged unanswered, as Zeek logs it
    assert sorted((t["id.orig_p"], t["uri"], t.get("status_code")) for t in logs["http"]) == \
        [(41002, "/", None), (41003, "/ok", 200)]
    assert [(t["query"], t["rcode_name"]) for t in logs["dns"] if t["id.orig_p"] == 41006] == \
        [("good.test", "NOERROR")]
    assert logs["ssl"] == []      # no hello was whole
    assert {line["id.orig_p"] for line in logs["conn"]} == {41001, 41002, 41003, 41004, 41005,
                                                             41006}


def test_a_gap_before_the_session_is_known_is_a_weird_without_source(tmp_path):
    """The capture missed a flow's first request bytes (the server acknowledged them): the
    gap reaches the runtime before any parser knows the session, so weird.log names it
    content_gap with no analyzer as source (as Zeek's core weirds), and the run goes on."""
    conv = Conv(cport=41007, sport=80)
    conv.handshake()
    conv.data("c", b"GET /lost HTTP/1.1\r\n", emit=False)
    conv.data("c", b"Host: gap\r\n\r\n")
    conv.ack("s")
    for _ in range(3):
        conv.data("c", b"more")
    conv.close()
    pcap = tmp_path / "gap.pcap"
    with PcapWriter(str(pcap)) as writer:
        for ts, frame in conv.frames:
            writer.write(ts, frame)
    logs, err = run_zeeklog(pcap, tmp_path / "logs", "--batch-size", "1")
    assert "callback" not in err, err
    (weird,) = logs["weird"]      # once, though zeeklog subscribes to three protocols
    assert (weird["id.orig_p"], weird["name"], weird["addl"], "source" in weird) == (
        41007, "content_gap", "20 bytes never seen", False)
    assert weird["uid"] == logs["conn"][0]["uid"] and logs["conn"][0]["missed_bytes"] == 20
