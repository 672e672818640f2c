#!/usr/bin/env python3
"""Make the session test captures in tests/data/sessions (root: network namespaces, tcpdump).

Each capture is real traffic between the two namespaces of a fresh
``Testbed(kind="direct")`` (client 10.77.0.1, server 10.77.0.2), recorded by tcpdump on the
server's veth exactly as scripts/make_captures.py records its captures (its `Capture` class):

* tls.pcap: a Python TLS server (self-signed certificate made here with openssl) on port
  8443, answering one HTTP/1.1 request per connection (or, when h2 was negotiated, a short
  line); clients: curl with several SNI names (``--resolve``), TLS 1.3 and 1.2, chosen cipher
  suites and groups, ALPN http/1.1 or none, one connection to the bare address (no SNI), and
  Python ssl clients offering h2 (TLS 1.3: ALPN encrypted; TLS 1.2: ALPN in the ServerHello).
* http.pcap: a Python HTTP/1.1 server on port 8080 (Content-Length, chunked, 404, HEAD,
  304, POST, a close-delimited answer); clients: curl HTTP/1.0, curl keep-alive with several
  URLs, curl HEAD, curl POST, a percent-encoded URI, and a Python client that pipelines four
  requests (GET, HEAD, chunked GET, conditional GET) in one write.
* dns.pcap: a dnspython responder on 10.77.0.2:53 (UDP and TCP) with A (two addresses),
  AAAA, MX (two), TXT (several strings), CNAME chains, NXDOMAIN (SOA in the authority),
  REFUSED, and a TXT too big for UDP (answered truncated, TC set, then asked again over TCP);
  clients: dnspython queries over UDP (several from one socket: one flow, several
  transactions) and over TCP (three queries on one connection, written in one piece).

tests/data/sessions/README.md is rewritten with the files and what each holds.

    .venv/bin/python scripts/make_session_captures.py [--only tls http dns] [--outdir DIR]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_captures import (RECV_UNTIL, Capture, python_client, python_pair,  # noqa: E402
                           python_server, record, run_ok)
from mosxdp.demo.testbed import Testbed, probe  # noqa: E402

TLS_PORT, HTTP_PORT, DNS_PORT = 8443, 8080, 53

TLS_SERVER = RECV_UNTIL + r'''
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
ctx.set_alpn_protocols(["h2", "http/1.1"])
ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES")
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2]))); ls.listen(8)
while True:
    raw, _ = ls.accept()
    try:
        s = ctx.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError):
        raw.close(); continue
    try:
        if s.selected_alpn_protocol() == "h2":
            s.recv(100); s.sendall(b"h2 selected\n")
        else:
            recv_until(s, lambda got: b"\r\n\r\n" in got, 4096)
            body = b"hello over " + s.version().encode() + b"\n"
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                      b"Connection: close\r\n\r\n%s" % (len(body), body))
        s.unwrap()
    except (ssl.SSLError, OSError):
        pass
    finally:
        raw.close()
'''

TLS_H2_CLIENT = r'''
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.maximum_version = ssl.TLSVersion[sys.argv[4]]
ctx.set_alpn_protocols(sys.argv[5].split(","))
with socket.create_connection((sys.argv[1], int(sys.argv[2]))) as raw:
    with ctx.wrap_socket(raw, server_hostname=sys.argv[3]) as s:
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        got = s.recv(100)
        print(s.version(), s.selected_alpn_protocol(), got.decode().strip())
'''

HTTP_SERVER = r'''
import http.server, sys
BODY = bytes(range(256)) * 12
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a):
        pass
    def _file(self, head):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("ETag", '"v1"')
        self.end_headers()
        if not head:
            self.wfile.write(BODY)
    def do_HEAD(self):
        self._file(True)
    def do_GET(self):
        if self.path.startswith("/file"):
            if self.headers.get("If-None-Match") == '"v1"':
                self.send_response(304); self.send_header("ETag", '"v1"'); self.end_headers()
            else:
                self._file(False)
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"first chunk\n", b"x" * 3000, b"last\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/close":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until the connection closes\n" * 40)
            self.close_connection = True
        else:
            self.send_error(404, "Not Found")
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        data = self.rfile.read(n)
        body = b"got %d bytes\n" % len(data)
        self.send_response(201, "Created")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
'''

PIPELINE_CLIENT = RECV_UNTIL + r'''
import socket, sys
host = "%s:%s" % (sys.argv[1], sys.argv[2])
reqs = (b"GET /file HTTP/1.1\r\nHost: %s\r\nUser-Agent: pipeline-client/1\r\n\r\n"
        b"HEAD /file HTTP/1.1\r\nHost: %s\r\nUser-Agent: pipeline-client/1\r\n\r\n"
        b"GET /chunked HTTP/1.1\r\nHost: %s\r\nUser-Agent: pipeline-client/1\r\n\r\n"
        b"GET /file HTTP/1.1\r\nHost: %s\r\nUser-Agent: pipeline-client/1\r\n"
        b"If-None-Match: \"v1\"\r\nConnection: close\r\n\r\n") % ((host.encode(),) * 4)
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(reqs)
got = recv_until(s, lambda got: False)
assert got.count(b"HTTP/1.1 ") == 4, got[:300]
print(len(got))
'''

DNS_SERVER = r'''
import socket, struct, sys, threading
import dns.flags, dns.message, dns.rcode, dns.rdatatype, dns.rrset
ZONE = {
    ("a.test.", "A"): [(300, "A", ["10.77.0.10", "10.77.0.11"])],
    ("v6.test.", "AAAA"): [(120, "AAAA", ["fd77::10"])],
    ("mail.test.", "MX"): [(3600, "MX", ["10 mx1.test.", "20 mx2.test."])],
    ("txt.test.", "TXT"): [(60, "TXT", ['"v=spf1 -all" "second string"', '"another record"'])],
    ("www.test.", "A"): [(30, "CNAME", ["web.test."]), (30, "CNAME", ["edge.test."]),
                         (45, "A", ["10.77.0.20"])],
    ("big.test.", "TXT"): [(10, "TXT", ['"%s"' % ("%02d" % i * 100) for i in range(12)])],
}
SOA = "ns.test. admin.test. 1 3600 600 86400 300"
def answer(wire, tcp):
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA | dns.flags.RA
    qs = q.question[0]
    name, qtype = qs.name.to_text(), dns.rdatatype.to_text(qs.rdtype)
    if name == "refused.test.":
        r.set_rcode(dns.rcode.REFUSED); r.flags &= ~dns.flags.AA
    elif (name, qtype) in ZONE:
        owner = name
        for ttl, rtype, values in ZONE[(name, qtype)]:
            r.answer.append(dns.rrset.from_text_list(owner, ttl, "IN", rtype, values))
            if rtype == "CNAME":
                owner = values[0]
    else:
        r.set_rcode(dns.rcode.NXDOMAIN)
        r.authority.append(dns.rrset.from_text("test.", 300, "IN", "SOA", SOA))
    out = r.to_wire()
    if not tcp and len(out) > 512:
        r.answer.clear(); r.flags |= dns.flags.TC
        out = r.to_wire()
    return out
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], int(sys.argv[2])))
    while True:
        wire, peer = s.recvfrom(65535)
        s.sendto(answer(wire, False), peer)
def serve_tcp(c):
    buf = b""
    while True:
        chunk = c.recv(65535)
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 2 and len(buf) - 2 >= struct.unpack("!H", buf[:2])[0]:
            n = struct.unpack("!H", buf[:2])[0]
            out = answer(buf[2:2 + n], True)
            buf = buf[2 + n:]
            c.sendall(struct.pack("!H", len(out)) + out)
    c.close()
threading.Thread(target=udp, daemon=True).start()
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2]))); ls.listen(8)
while True:
    c, _ = ls.accept()
    threading.Thread(target=serve_tcp, args=(c,), daemon=True).start()
'''

DNS_CLIENT = r'''
import socket, struct, sys
import dns.flags, dns.message, dns.query, dns.rcode
srv, port = sys.argv[1], int(sys.argv[2])
def q(name, rtype, qid):
    return dns.message.make_query(name, rtype, id=qid)
# several transactions on one UDP flow (one socket)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("", 40053)); s.settimeout(5)
for qid, (name, rtype) in enumerate([("a.test", "A"), ("v6.test", "AAAA"), ("mail.test", "MX"),
                                     ("txt.test", "TXT"), ("www.test", "A"),
                                     ("nothere.test", "A"), ("refused.test", "A"),
                                     ("MiXeD.a.test", "A")], 0x1000):
    s.sendto(q(name, rtype, qid).to_wire(), (srv, port))
    r = dns.message.from_wire(s.recv(65535))
    assert r.id == qid
s.close()
# one query per flow, as a resolver library does
r = dns.query.udp(q("a.test", "A", 0x2001), srv, port=port, timeout=5)
assert len(r.answer[0]) == 2, r
# truncated over UDP, asked again over TCP
r = dns.query.udp(q("big.test", "TXT", 0x3001), srv, port=port, timeout=5)
assert r.flags & dns.flags.TC, r
r = dns.query.tcp(q("big.test", "TXT", 0x3001), srv, port=port, timeout=5)
assert not r.flags & dns.flags.TC and len(r.answer[0]) == 12
# three queries written at once on one TCP connection
wires = [q(n, t, i).to_wire() for n, t, i in [("a.test", "A", 0x4001),
                                               ("mail.test", "MX", 0x4002),
                                               ("gone.test", "AAAA", 0x4003)]]
c = socket.create_connection((srv, port), timeout=5)
c.sendall(b"".join(struct.pack("!H", len(w)) + w for w in wires))
buf, got = b"", []
while len(got) < 3:
    buf += c.recv(65535)
    while len(buf) >= 2 and len(buf) - 2 >= struct.unpack("!H", buf[:2])[0]:
        n = struct.unpack("!H", buf[:2])[0]
        got.append(dns.message.from_wire(buf[2:2 + n])); buf = buf[2 + n:]
c.close()
assert [m.id for m in got] == [0x4001, 0x4002, 0x4003]
assert got[2].rcode() == dns.rcode.NXDOMAIN
print("ok")
'''


def curl(tb: Testbed, *args: str) -> str:
    return run_ok(tb, "cli", ["curl", "-sS", "--max-time", "20", *args])


def sc_tls(tb: Testbed, cap: Capture, work: Path) -> str:
    cert, key = work / "cert.pem", work / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                    "-subj", "/CN=mosxdp.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    python_server(tb, TLS_SERVER, TLS_PORT, str(cert), str(key))
    ip = tb.srv_ip

    def get(name: str | None, *opts: str) -> None:
        host = name or ip
        resolve = ["--resolve", f"{name}:{TLS_PORT}:{ip}"] if name else []
        out = curl(tb, "-k", *resolve, *opts, f"https://{host}:{TLS_PORT}/")
        assert out.startswith("hello over TLSv1."), out

    with cap:
        get("alpha.example", "--http1.1", "--tlsv1.3")
        get("www.beta.example", "--http1.1", "--tlsv1.3", "--tls13-ciphers",
            "TLS_CHACHA20_POLY1305_SHA256", "--curves", "P-256")
        get("gamma.example", "--http1.1", "--tlsv1.2", "--tls-max", "1.2")
        get("delta.example", "--no-alpn", "--tlsv1.2", "--tls-max", "1.2", "--ciphers",
            "ECDHE-RSA-AES128-SHA256", "--curves", "P-384")
        get(None, "--http1.1")
        for name, version in (("h2.example", "TLSv1_3"), ("h2-tls12.example", "TLSv1_2")):
            out = python_client(tb, TLS_H2_CLIENT, TLS_PORT, name, version, "h2,http/1.1")
            assert out.split()[1] == "h2", out
    return ("Python TLS server (ssl, self-signed RSA certificate, ALPN h2/http/1.1, TLS 1.2 "
            "minimum) on 10.77.0.2:8443, 7 connections: curl --http1.1 TLS 1.3 SNI "
            "alpha.example; curl TLS 1.3 TLS_CHACHA20_POLY1305_SHA256 over P-256 SNI "
            "www.beta.example; curl TLS 1.2 SNI gamma.example; curl TLS 1.2 --no-alpn "
            "ECDHE-RSA-AES128-SHA256 over P-384 SNI delta.example; curl to the bare address "
            "(no SNI); Python clients offering h2,http/1.1 with SNI h2.example (TLS 1.3) and "
            "h2-tls12.example (TLS 1.2), h2 selected.")


def sc_http(tb: Testbed, cap: Capture, work: Path) -> str:
    python_server(tb, HTTP_SERVER, HTTP_PORT)
    base = f"http://{tb.srv_ip}:{HTTP_PORT}"
    upload = work / "upload.bin"
    upload.write_bytes(bytes(range(256)) * 40)
    with cap:
        curl(tb, "--http1.0", "-o", "/dev/null", f"{base}/file")
        curl(tb, "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", "-A", "keepalive/1",
             f"{base}/file", f"{base}/chunked", f"{base}/missing")
        curl(tb, "-I", f"{base}/file")
        curl(tb, "-H", "Expect:", "--data-binary", f"@{upload}", "-e", "http://ref.test/",
             "-H", "Origin: http://origin.test", f"{base}/upload")
        curl(tb, "-o", "/dev/null", f"{base}/file%20name?q=a%2Fb")
        curl(tb, "-o", "/dev/null", f"{base}/close")
        python_client(tb, PIPELINE_CLIENT, HTTP_PORT)
    return ("Python HTTP/1.1 server (http.server) on 10.77.0.2:8080; clients: curl --http1.0 "
            "GET /file; curl keep-alive GET /file, /chunked (chunked), /missing (404) on one "
            "connection; curl -I (HEAD /file, Content-Length but no body); curl POST 10240 B "
            "with Referer and Origin (201); curl GET /file%20name?q=a%2Fb; curl GET /close "
            "(no Content-Length, ends with the connection); a Python client pipelining GET "
            "/file, HEAD /file, GET /chunked and a conditional GET (304) in one write.")


def sc_dns(tb: Testbed, cap: Capture, work: Path) -> str:
    python_pair(tb, cap, DNS_PORT, DNS_SERVER, DNS_CLIENT)
    return ("dnspython responder on 10.77.0.2:53 (UDP and TCP), dnspython clients: 8 queries "
            "from one UDP socket (port 40053: A with two answers, AAAA, MX with two, TXT "
            "with two records of several strings, A through two CNAMEs, NXDOMAIN with an SOA, "
            "REFUSED, a mixed-case name); one A query on its own socket; a TXT too big for "
            "UDP (TC set, no answers) asked again over TCP; 3 queries (A, MX, NXDOMAIN AAAA) "
            "written at once on one TCP connection.")


SCENARIOS = {"tls": sc_tls, "http": sc_http, "dns": sc_dns}


def make(name: str, outdir: Path) -> str:
    return record(f"{name}.pcap", SCENARIOS[name], outdir, prefix="mxsess")


README = """\
# Session test captures

Made by `scripts/make_session_captures.py` (root; `--only tls http dns` for some), recorded
like the captures one directory up (`tcpdump -i srv0 -s 0 -U` in the server namespace of a
fresh `Testbed(kind="direct")`, client 10.77.0.1, server 10.77.0.2, offloads off, no kernel
drops). Certificates, TLS randoms and keys, ports and times are those of the run. The tests
(tests/unit/test_sessions_*.py) compare what the parsers read in them with what
`tshark -T fields` reads.

| file | size | what |
|---|---|---|
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outdir", type=Path, default=ROOT / "tests" / "data" / "sessions")
    ap.add_argument("--only", nargs="*", choices=list(SCENARIOS), default=list(SCENARIOS))
    args = ap.parse_args(argv)
    why = probe()
    if why:
        print(f"make_session_captures: cannot build testbeds: {why}", file=sys.stderr)
        return 2
    args.outdir.mkdir(parents=True, exist_ok=True)
    descs_path = args.outdir / "descriptions.txt"
    descs = dict(line.split("\t", 1) for line in descs_path.read_text().splitlines()) \
        if descs_path.exists() else {}
    for name in args.only:
        descs[name] = make(name, args.outdir)
        print(f"{name}.pcap: {(args.outdir / f'{name}.pcap').stat().st_size} bytes")
    descs_path.write_text("".join(f"{k}\t{v}\n" for k, v in sorted(descs.items())))
    rows = [f"| `{k}.pcap` | {(args.outdir / f'{k}.pcap').stat().st_size} | {v} |"
            for k, v in sorted(descs.items()) if (args.outdir / f"{k}.pcap").exists()]
    (args.outdir / "README.md").write_text(README + "\n".join(rows) + "\n\n`descriptions.txt` "
                                           "keeps the last column across `--only` runs.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
