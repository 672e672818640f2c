#!/usr/bin/env python3
"""Make the test captures in tests/data (root: network namespaces and tcpdump).

Real captures: each scenario runs in a fresh ``Testbed(kind="direct")`` (client
namespace cli0 10.77.0.1 / fd77::1, server namespace srv0 10.77.0.2 / fd77::2,
checksum offload, TSO, GSO and GRO off) with ``tcpdump -i srv0 -s 0 -U`` running
in the server namespace from before the first packet until after the last.

Crafted captures: derived with scapy from the 100 KB download flow of
http_sizes.pcap (reordered, duplicated, overlapping with different bytes,
sequence numbers wrapping past 2**32, a segment lost for good, a capture that
starts after the handshake); every rewritten packet gets valid IPv4/TCP checksums.

Finally every capture is checked (all IPv4 header and TCP checksums valid, no
kernel drops while capturing) and tests/data/README.md is rewritten with the
files, their packets, flows and sizes.

    .venv/bin/python scripts/make_captures.py [--only NAME ...] [--outdir DIR]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mosxdp.io.pcap import PcapReader, PcapWriter  # noqa: E402
from mosxdp.demo.testbed import Testbed, probe  # noqa: E402

PY = sys.executable
HTTP_PORT = 8080
SEED = 0x6D6F73  # "mos": file contents are reproducible, ISNs and times are not

# ---------------------------------------------------------------------------
# programs run inside the namespaces

# The start of a program that reads what a peer sends until a condition holds or it closes.
RECV_UNTIL = r'''
def recv_until(conn, done, size=65536):
    got = b""
    while not done(got):
        chunk = conn.recv(size)
        if not chunk:
            break
        got += chunk
    return got
'''

UPLOAD_SERVER = r'''
import hashlib, http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def _body(self):
        n = int(self.headers.get("Content-Length", "0"))
        parts, got = [], 0
        while got < n:
            chunk = self.rfile.read(min(65536, n - got))
            if not chunk:
                break
            parts.append(chunk); got += len(chunk)
        return b"".join(parts)
    def do_PUT(self):
        data = self._body()
        body = ("%s %d %s\n" % (self.command, len(data), hashlib.sha256(data).hexdigest())).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_PUT
    def log_message(self, *a):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
'''

HALFCLOSE_SERVER = RECV_UNTIL + r'''
import hashlib, random, socket, sys, time
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2]))); ls.listen(1)
c, _ = ls.accept()
c.sendall(b"HELLO half-close server\n")
got = recv_until(c, lambda got: False)    # up to the client's FIN
c.sendall(("received %d bytes sha256 %s\n" % (len(got), hashlib.sha256(got).hexdigest())).encode())
rnd = random.Random(int(sys.argv[3]))
tail = rnd.randbytes(48000)
for i in range(0, len(tail), 8000):   # data after the peer's FIN, in several writes
    c.sendall(tail[i:i + 8000]); time.sleep(0.005)
c.close()
'''

HALFCLOSE_CLIENT = RECV_UNTIL + r'''
import hashlib, random, socket, sys
rnd = random.Random(int(sys.argv[3]))
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
hello = s.recv(100)
data = rnd.randbytes(20000)
s.sendall(data)
s.shutdown(socket.SHUT_WR)
back = recv_until(s, lambda got: False)
s.close()
want = ("received %d bytes sha256 %s\n" % (len(data), hashlib.sha256(data).hexdigest())).encode()
assert back.startswith(want), back[:200]
print(len(hello), len(data), len(back))
'''

RST_ABORT_CLIENT = r'''
import socket, struct, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(("GET /%s HTTP/1.0\r\nHost: %s\r\nUser-Agent: abort-client\r\n\r\n" % (sys.argv[3], sys.argv[1])).encode())
got = 0
while got < int(sys.argv[4]):
    chunk = s.recv(16384)
    if not chunk:
        sys.exit("server closed before the abort")
    got += len(chunk)
s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
s.close()                           # linger 0: RST instead of FIN
print(got)
'''

# small_writes.pcap: both ends send messages of a 2-byte length and that many random
# bytes; an empty message (length 0) ends a phase.
MESSAGES = r'''
import random, socket, struct, sys
buf = b""
def need(conn, n):
    global buf
    while len(buf) < n:
        chunk = conn.recv(65536)
        if not chunk:
            raise SystemExit("eof")
        buf += chunk
    out, buf = buf[:n], buf[n:]
    return out
def recv_message(conn):
    (n,) = struct.unpack("!H", need(conn, 2))
    return need(conn, n)
def send_random(conn, rnd, longest):
    m = rnd.randint(1, longest)
    conn.sendall(struct.pack("!H", m) + rnd.randbytes(m))
'''

SMALL_SERVER = MESSAGES + r'''
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2]))); ls.listen(1)
c, _ = ls.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rnd = random.Random(int(sys.argv[3]) + 1)
while recv_message(c):              # ping-pong: one reply per message
    send_random(c, rnd, 300)
for i in range(120):                # burst: many small writes without waiting
    send_random(c, rnd, 64)
c.sendall(struct.pack("!H", 0))
while c.recv(65536):
    pass
c.close()
'''

SMALL_CLIENT = MESSAGES + r'''
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rnd = random.Random(int(sys.argv[3]))
for i in range(300):
    send_random(s, rnd, 200)
    recv_message(s)
for i in range(120):                # burst the other way round
    send_random(s, rnd, 64)
s.sendall(struct.pack("!H", 0))
count = 0
while recv_message(s):
    count += 1
s.shutdown(socket.SHUT_WR)
while s.recv(65536):
    pass
s.close()
print(count)
'''

REUSE_SERVER = RECV_UNTIL + r'''
import socket, sys
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((sys.argv[1], int(sys.argv[2]))); ls.listen(4)
for i in range(int(sys.argv[3])):
    c, peer = ls.accept()
    req = recv_until(c, lambda got: got.endswith(b"\n"), 4096)
    c.sendall(b"connection %d from port %d: %s" % (i + 1, peer[1], req))
    c.close()                       # server closes first: TIME_WAIT on the server
'''

REUSE_CLIENT = RECV_UNTIL + r'''
import socket, sys, time
for i in range(int(sys.argv[5])):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[3], int(sys.argv[4])))
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.sendall(b"request %d on a reused 4-tuple\n" % (i + 1))
    got = recv_until(s, lambda got: False, 4096)
    s.close()
    assert got.startswith(b"connection %d" % (i + 1)), got
    time.sleep(0.3)
print("ok")
'''

# ---------------------------------------------------------------------------
# capture plumbing


class Capture:
    """tcpdump in the server namespace on srv0, from before traffic until after it."""

    def __init__(self, tb: Testbed, tmpdir: Path, name: str):
        self.tb = tb
        self.path = tmpdir / name
        self.name = name
        self.proc = None
        self.stderr = b""

    def __enter__(self):
        argv = ["tcpdump", "-i", self.tb.srv_if, "-s", "0", "-U", "-n", "-B", "16384", "--immediate-mode",
                "-Z", "root", "-w", str(self.path)]
        self.proc = self.tb.popen("srv", argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        buf = b""
        fd = self.proc.stderr.fileno()
        while b"listening on" not in buf:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"tcpdump did not start: {buf.decode(errors='replace')}")
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                buf += os.read(fd, 4096)
        self.stderr = buf
        time.sleep(0.1)
        return self

    def __exit__(self, *exc):
        time.sleep(0.4)  # the last ACKs
        if self.proc is not None:
            self.tb.stop(self.proc, signal.SIGINT, timeout=5)
            self.stderr += self.proc.stderr.read()
            self.proc.stderr.close()
        return False

    def check(self):
        text = self.stderr.decode(errors="replace")
        if "0 packets dropped by kernel" not in text:
            raise RuntimeError(f"{self.name}: tcpdump dropped packets: {text.strip()}")
        return text


def run_ok(tb: Testbed, ns: str, argv, timeout=60, **kw) -> str:
    r = tb.run(ns, argv, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))[:200]} in {ns}: exit {r.returncode}: "
                           f"{r.stderr.strip()[-800:]}")
    return r.stdout


def http_server(tb: Testbed, directory: Path, bind: str, port: int = HTTP_PORT):
    p = tb.popen("srv", [PY, "-m", "http.server", str(port), "--bind", bind,
                         "--directory", str(directory)],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tb.wait_listen("srv", port)
    return p


def python_server(tb: Testbed, source: str, port: int, *args: str):
    """Run the program ``source`` in srv with argv (server address, port, *args) until it listens."""
    tb.popen("srv", [PY, "-c", source, tb.srv_ip, str(port), *args],
             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tb.wait_listen("srv", port)


def python_client(tb: Testbed, source: str, port: int, *args: str) -> str:
    """Run the program ``source`` in cli with argv (server address, port, *args); its stdout."""
    return run_ok(tb, "cli", [PY, "-c", source, tb.srv_ip, str(port), *args])


def python_pair(tb: Testbed, cap, port: int, server: str, client: str, server_args=(),
                client_args=()) -> None:
    """The Python program ``server`` listening on ``port``, then, captured, ``client``."""
    python_server(tb, server, port, *server_args)
    with cap:
        python_client(tb, client, port, *client_args)


def write_files(directory: Path, sizes: dict[str, int], seed: int) -> dict[str, bytes]:
    rnd = random.Random(seed)
    out = {}
    for name, size in sizes.items():
        data = rnd.randbytes(size)
        (directory / name).write_bytes(data)
        out[name] = data
    return out


def captured_gets(tb, cap, work: Path, base_url: str, files: dict[str, bytes]) -> None:
    """GET each file from ``base_url`` one after another under ``cap``; check the bytes."""
    with cap:
        for name, data in files.items():
            out = work / f"got-{name}"
            run_ok(tb, "cli", ["curl", "-sS", "--fail", "-g", "-o", str(out), f"{base_url}/{name}"])
            assert out.read_bytes() == data, name


# ---------------------------------------------------------------------------
# real scenarios: each returns a short description for the README


def sc_http_sizes(tb, cap, work):
    files = write_files(work, {"empty.bin": 0, "1k.bin": 1024, "100k.bin": 102400,
                               "1m.bin": 1048576}, SEED)
    http_server(tb, work, tb.srv_ip)
    captured_gets(tb, cap, work, f"http://{tb.srv_ip}:{HTTP_PORT}", files)
    return ("4 sequential `curl` GETs against `python3 -m http.server` (HTTP/1.0, the server "
            "closes first) of random files of 0 B, 1 KiB, 100 KiB and 1 MiB "
            "(empty.bin, 1k.bin, 100k.bin, 1m.bin).")


def sc_upload(tb, cap, work):
    data = random.Random(SEED + 1).randbytes(204800)
    src = work / "upload.bin"
    src.write_bytes(data)
    python_server(tb, UPLOAD_SERVER, HTTP_PORT)
    want = hashlib.sha256(data).hexdigest()
    url = f"http://{tb.srv_ip}:{HTTP_PORT}/upload"
    with cap:
        out1 = run_ok(tb, "cli", ["curl", "-sS", "--fail", "-H", "Expect:", "-T", str(src), url])
        out2 = run_ok(tb, "cli", ["curl", "-sS", "--fail", "-H", "Expect:",
                                  "-H", "Content-Type: application/octet-stream",
                                  "--data-binary", f"@{src}", url])
    assert out1.strip() == f"PUT 204800 {want}", out1
    assert out2.strip() == f"POST 204800 {want}", out2
    return ("2 uploads of the same random 200 KiB body to a tiny Python HTTP server that "
            "answers with the body's length and SHA-256: `curl -T` (PUT), then "
            "`curl --data-binary` (POST); `Expect:` disabled.")


def sc_concurrent(tb, cap, work):
    files = write_files(work, {f"c{i}.bin": 131072 for i in range(8)}, SEED + 2)
    http_server(tb, work, tb.srv_ip)
    argv = ["curl", "-sS", "--fail", "--parallel", "--parallel-immediate", "--parallel-max", "8"]
    for name in files:
        argv += ["-o", str(work / f"got-{name}"), f"http://{tb.srv_ip}:{HTTP_PORT}/{name}"]
    with cap:
        run_ok(tb, "cli", argv)
    for name, data in files.items():
        assert (work / f"got-{name}").read_bytes() == data, name
    return ("8 concurrent GETs of 8 different random 128 KiB files (c0.bin .. c7.bin) with "
            "`curl --parallel --parallel-immediate --parallel-max 8` against `python3 -m "
            "http.server`: the connections overlap in time.")


def sc_refused(tb, cap, work):
    with cap:
        r = tb.run("cli", ["curl", "-sS", f"http://{tb.srv_ip}:81/"], capture_output=True,
                   text=True, timeout=30)
    assert r.returncode == 7, (r.returncode, r.stderr)
    return "`curl` to 10.77.0.2:81 where nothing listens: SYN answered by RST/ACK."


def sc_rst_abort(tb, cap, work):
    write_files(work, {"1m.bin": 1048576}, SEED)
    http_server(tb, work, tb.srv_ip)
    with cap:
        python_client(tb, RST_ABORT_CLIENT, HTTP_PORT, "1m.bin", "65536")
    return ("A Python client sends `GET /1m.bin` to `python3 -m http.server`, reads at "
            "least 64 KiB of the 1 MiB answer, then closes with SO_LINGER {1, 0}: an RST from "
            "the client in the middle of the transfer, no FIN from either side (the server "
            "never sends most of the file).")


def sc_halfclose(tb, cap, work):
    python_pair(tb, cap, 7000, HALFCLOSE_SERVER, HALFCLOSE_CLIENT, [str(SEED)], [str(SEED)])
    return ("Python client/server on port 7000: the server greets (24 B), the client sends "
            "20000 random bytes and shuts down its write side (FIN); after that FIN the "
            "server sends a 93-byte receipt line and 48000 more bytes in 6 writes, then "
            "closes.")


def sc_ipv6(tb, cap, work):
    files = write_files(work, {"1k.bin": 1024, "100k.bin": 102400}, SEED + 3)
    http_server(tb, work, tb.srv_ip6)
    captured_gets(tb, cap, work, f"http://[{tb.srv_ip6}]:{HTTP_PORT}", files)
    return ("2 `curl` GETs over IPv6 (fd77::1 -> [fd77::2]:8080) against `python3 -m "
            "http.server --bind fd77::2`: random files of 1 KiB and 100 KiB.")


def sc_small_writes(tb, cap, work):
    python_pair(tb, cap, 7002, SMALL_SERVER, SMALL_CLIENT, [str(SEED)], [str(SEED)])
    return ("Python client/server with TCP_NODELAY on port 7002: 300 ping-pong rounds "
            "(length-prefixed messages of 1-200 B from the client, 1-300 B back), then "
            "120 back-to-back small writes each way; the client closes first.")


def sc_reuse(tb, cap, work):
    n = 3
    python_pair(tb, cap, 7003, REUSE_SERVER, REUSE_CLIENT, [str(n)], [tb.cli_ip, "40000", str(n)])
    return ("3 sequential connections on the same 4-tuple 10.77.0.1:40000 -> 10.77.0.2:7003 "
            "(the client binds the port with SO_REUSEADDR; the server closes first, so its "
            "TIME_WAIT accepts the next SYN): the 4-tuple is reused twice.")


def sc_datagrams(tb, cap, work):
    server = tb.popen("srv", [PY, "-m", "mosxdp.demo.dgram", "serve", tb.srv_ip, tb.srv_ip6],
                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    if server.stdout.readline().strip() != b"ready":
        raise RuntimeError("mosxdp.demo.dgram serve did not start")
    with cap:
        run_ok(tb, "cli", ["ping", "-c", "3", "-i", "0.2", "-s", "56", tb.srv_ip])
        run_ok(tb, "cli", ["ping", "-6", "-c", "2", "-i", "0.2", "-s", "100", tb.srv_ip6])
        run_ok(tb, "cli", [PY, "-m", "mosxdp.demo.dgram", "client", tb.srv_ip, "--seed",
                           str(SEED), "--echo", "20", "--tcp"], cwd=ROOT)
        run_ok(tb, "cli", [PY, "-m", "mosxdp.demo.dgram", "client", tb.srv_ip6, "--seed",
                           str(SEED + 1), "--echo", "5"], cwd=ROOT)
    return ("UDP and ICMP of real tools: `ping` (3 echoes over IPv4, 2 over IPv6), then "
            "`python -m mosxdp.demo.dgram client` against its DNS responder and UDP echo "
            "server (`serve`) over IPv4 and IPv6: 4 DNS queries each over UDP (A, AAAA, "
            "NXDOMAIN, a 4-label name; each from its own port), 20 (IPv4) and 5 (IPv6) echo "
            "datagrams of 0 to 1400 bytes, 2 datagrams to a closed port (ICMP port "
            "unreachable), one DNS query over TCP (IPv4); IPv6 ND/MLD as it happened.")


REAL = OrderedDict([
    ("http_sizes.pcap", sc_http_sizes),
    ("upload.pcap", sc_upload),
    ("concurrent.pcap", sc_concurrent),
    ("refused.pcap", sc_refused),
    ("rst_abort.pcap", sc_rst_abort),
    ("halfclose.pcap", sc_halfclose),
    ("ipv6.pcap", sc_ipv6),
    ("small_writes.pcap", sc_small_writes),
    ("reuse.pcap", sc_reuse),
    ("datagrams.pcap", sc_datagrams),
])


def record(name: str, scenario, outdir: Path, prefix: str = "mxcap") -> str:
    """Run ``scenario(tb, cap, work)`` on a fresh direct testbed and keep its capture as
    ``outdir / name``; returns the scenario's description. A capture that is not clean
    (Capture.check) is made again, three attempts at most."""
    last = None
    for _attempt in range(3):
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            tmp = Path(tmp)
            os.chmod(tmp, 0o755)
            work = tmp / "work"
            work.mkdir()
            os.chmod(work, 0o755)
            with Testbed(kind="direct") as tb:
                cap = Capture(tb, tmp, name)
                desc = scenario(tb, cap, work)
                try:
                    cap.check()
                except RuntimeError as e:
                    last = e
                    continue
            shutil.copyfile(cap.path, outdir / name)
            return desc
    raise RuntimeError(f"{name}: no clean capture in 3 attempts: {last}")


def make_real(name: str, outdir: Path) -> str:
    return record(name, REAL[name], outdir)


# ---------------------------------------------------------------------------
# crafted variants (scapy)

CRAFTED = ["reorder.pcap", "dup.pcap", "overlap_diff.pcap", "seqwrap.pcap", "lost.pcap",
           "holes.pcap", "midstream.pcap", "shuffled_upload.pcap"]


def load_flow(path: Path, pred):
    """(ts_us, scapy packet) list of the first TCP flow of ``path`` for which pred(flow) holds."""
    from scapy.layers.l2 import Ether
    from scapy.layers.inet import TCP

    flows: dict = OrderedDict()
    with PcapReader(path) as r:
        for ts, frame in r:
            p = Ether(bytes(frame))
            if TCP not in p:
                continue
            ip = p.payload
            key = tuple(sorted([(ip.src, p[TCP].sport), (ip.dst, p[TCP].dport)]))
            flows.setdefault(key, []).append((ts, p))
    for pkts in flows.values():
        if pred(pkts):
            return pkts
    raise RuntimeError(f"{path}: no flow matches")


def flow_roles(pkts):
    from scapy.layers.inet import TCP
    syn = next(p for _, p in pkts if p[TCP].flags & 0x02 and not p[TCP].flags & 0x10)
    return (syn.payload.src, syn[TCP].sport)


def is_c2s(p, client):
    from scapy.layers.inet import TCP
    return (p.payload.src, p[TCP].sport) == client


def refresh(p):
    """Rebuild with fresh IP length/checksum and TCP checksum."""
    from scapy.layers.l2 import Ether
    from scapy.layers.inet import IP, TCP
    p = p.copy()
    if IP in p:
        del p[IP].len
        del p[IP].chksum
    else:
        del p.payload.plen
    del p[TCP].chksum
    return Ether(bytes(p))


def with_payload(p, seq, payload: bytes):
    from scapy.layers.inet import TCP
    from scapy.packet import Raw
    q = p.copy()
    q[TCP].seq = seq
    q[TCP].remove_payload()
    q[TCP].add_payload(Raw(payload))
    return refresh(q)


def monotone(items):
    out, last = [], 0
    for ts, p in items:
        last = max(last, ts)
        out.append((last, p))
    return out


def write_pcap(path: Path, items):
    with PcapWriter(path) as w:
        for ts, p in monotone(items):
            w.write(ts, bytes(p))


def data_segments(pkts, client, c2s: bool):
    from scapy.layers.inet import TCP
    return [i for i, (_, p) in enumerate(pkts)
            if is_c2s(p, client) == c2s and len(bytes(p[TCP].payload)) > 0]


def streams(items, client, policy: str):
    """Naive reassembly: (c2s, s2c) bytes, holes as zeros; FIRST keeps the first copy of a
    byte, LAST the last one (capture order)."""
    from scapy.layers.inet import TCP
    isn = {}
    for _, p in items:
        if p[TCP].flags & 0x02:
            isn.setdefault(is_c2s(p, client), p[TCP].seq)
    out = {}
    for d in (True, False):
        buf, have = bytearray(), bytearray()
        for _, p in items:
            if is_c2s(p, client) != d:
                continue
            data = bytes(p[TCP].payload)
            if not data:
                continue
            base = isn[d] if d in isn else None
            if base is None:
                raise RuntimeError("no SYN for a direction")
            off = (p[TCP].seq - base - 1) % (1 << 32)
            end = off + len(data)
            if end > len(buf):
                buf.extend(bytes(end - len(buf)))
                have.extend(bytes(end - len(have)))
            for i, b in enumerate(data):
                if policy == "LAST" or not have[off + i]:
                    buf[off + i] = b
                    have[off + i] = 1
        out[d] = bytes(buf)
    return out[True], out[False]


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def flow_desc(pkts, client):
    from scapy.layers.inet import TCP
    p = next(p for _, p in pkts if is_c2s(p, client))
    return {"client": f"{p.payload.src}:{p[TCP].sport}", "server": f"{p.payload.dst}:{p[TCP].dport}"}


def write_holes_expected(path: Path, description: str, flow: dict, holes: list, c: bytes,
                         s: bytes) -> None:
    """The sidecar of a capture with holes: the streams (base64, missing bytes as zeros)."""
    path.write_text(json.dumps({
        "description": description,
        "flow": flow,
        "holes": holes,
        "client_to_server": b64(c),
        "server_to_client": b64(s),
        "sha256": {"client_to_server": hashlib.sha256(c).hexdigest(),
                   "server_to_client": hashlib.sha256(s).hexdigest()},
    }, indent=1) + "\n")


def make_crafted(outdir: Path) -> dict[str, str]:
    from scapy.layers.inet import TCP

    def is_100k(pkts):
        s2c = sum(len(bytes(p[TCP].payload)) for _, p in pkts if p[TCP].sport == HTTP_PORT)
        return 102400 < s2c < 103400

    pkts = load_flow(outdir / "http_sizes.pcap", is_100k)
    client = flow_roles(pkts)
    c2s_idx = data_segments(pkts, client, True)
    s2c_idx = data_segments(pkts, client, False)
    assert len(c2s_idx) == 1 and len(s2c_idx) > 40, (len(c2s_idx), len(s2c_idx))
    orig_c2s, orig_s2c = streams(pkts, client, "FIRST")
    fdesc = flow_desc(pkts, client)
    base = (f"the 100 KiB GET flow of http_sizes.pcap ({fdesc['client']} -> {fdesc['server']}, "
            f"{len(pkts)} packets, {len(orig_c2s)} B request, {len(orig_s2c)} B response)")
    desc = {}

    # reorder: s2c data segments #3<->#4, #10 moved after #13, #30 after #31
    items = list(pkts)
    order = list(range(len(items)))

    def move_after(a, b):
        order.remove(a)
        order.insert(order.index(b) + 1, a)
    d = s2c_idx
    move_after(d[3], d[4])
    move_after(d[10], d[13])
    move_after(d[30], d[31])
    write_pcap(outdir / "reorder.pcap", [items[i] for i in order])
    desc["reorder.pcap"] = (f"From {base}: server data segments reordered (segment 3 after 4, "
                            "10 after 13, 30 after 31, counting data segments from 0); "
                            "timestamps kept non-decreasing. Expected streams: the original ones.")

    # dup: the request twice, s2c #3 twice in a row, #10 again after #15, a pure ACK twice,
    # and the server's FIN twice
    items = []
    acks = [i for i, (_, p) in enumerate(pkts) if is_c2s(p, client) and i not in c2s_idx
            and not p[TCP].flags & 0x03 and i > c2s_idx[0]]
    fin = next(i for i, (_, p) in enumerate(pkts) if not is_c2s(p, client) and p[TCP].flags & 0x01)
    for i, it in enumerate(pkts):
        items.append(it)
        if i in (c2s_idx[0], d[3], acks[2], fin):
            items.append(it)
        if i == d[15]:
            items.append((it[0], pkts[d[10]][1]))
    write_pcap(outdir / "dup.pcap", items)
    desc["dup.pcap"] = (f"From {base}: duplicated segments: the request, server data segment 3 "
                        "(back to back), server data segment 10 again after segment 15, one "
                        "pure ACK and the server's FIN. Expected streams: the original ones.")

    # overlap_diff
    items = []
    req_i = c2s_idx[0]
    req = pkts[req_i][1]
    req_data = bytes(req[TCP].payload)
    rs = req[TCP].seq
    alt = lambda b: bytes(x ^ 0x5A for x in b)  # noqa: E731  every byte differs
    a_end, b_start = 60, 40
    seg_a = with_payload(req, rs, req_data[:a_end])
    seg_b = with_payload(req, (rs + b_start) % (1 << 32),
                         alt(req_data[b_start:a_end]) + req_data[a_end:])
    s5 = pkts[d[5]][1]
    s5_data = bytes(s5[TCP].payload)
    s5_end = s5[TCP].seq + len(s5_data)
    s6_data = bytes(pkts[d[6]][1][TCP].payload)
    span = orig_s2c  # server stream by offset
    isn_s = next(p[TCP].seq for _, p in pkts if not is_c2s(p, client) and p[TCP].flags & 0x02)
    off5_end = (s5_end - isn_s - 1) % (1 << 32)
    cross = with_payload(s5, (s5_end - 500) % (1 << 32), alt(span[off5_end - 500:off5_end + 500]))
    s18 = pkts[d[18]][1]
    s18_data = bytes(s18[TCP].payload)
    inner = s18_data[:400] + alt(s18_data[400:500]) + s18_data[500:]
    again18 = with_payload(s18, s18[TCP].seq, inner)
    assert len(s6_data) > 500
    for i, (ts, p) in enumerate(pkts):
        if i == req_i:
            items.append((ts, seg_a))
            items.append((ts, seg_b))
            continue
        items.append((ts, p))
        if i == d[5]:
            items.append((ts, cross))
        if i == d[20]:
            items.append((ts, again18))
    write_pcap(outdir / "overlap_diff.pcap", items)
    exp = {}
    for pol in ("FIRST", "LAST"):
        c, s = streams(items, client, pol)
        exp[pol] = (c, s)
    assert exp["FIRST"] != exp["LAST"]
    assert exp["FIRST"][0] == orig_c2s
    sidecar = {
        "description": "Expected reassembled bytestreams of overlap_diff.pcap under overlap "
                       "policy FIRST (the first copy of a byte wins) and LAST (the last copy in "
                       "capture order wins); base64. Offsets are stream offsets (0 = first byte "
                       "after the SYN).",
        "flow": fdesc,
        "overlaps": [
            {"direction": "client_to_server", "offset": b_start, "length": a_end - b_start,
             "note": "request split into [0,60) and [40,end); [40,60) differs"},
            {"direction": "server_to_client", "offset": off5_end - 500, "length": 1000,
             "note": "crafted segment straddling data segments 5 and 6, all bytes differ"},
            {"direction": "server_to_client",
             "offset": (s18[TCP].seq - isn_s - 1) % (1 << 32) + 400, "length": 100,
             "note": "data segment 18 sent again after segment 20, 100 bytes differ"},
        ],
        "FIRST": {"client_to_server": b64(exp["FIRST"][0]), "server_to_client": b64(exp["FIRST"][1])},
        "LAST": {"client_to_server": b64(exp["LAST"][0]), "server_to_client": b64(exp["LAST"][1])},
        "sha256": {pol: {"client_to_server": hashlib.sha256(exp[pol][0]).hexdigest(),
                         "server_to_client": hashlib.sha256(exp[pol][1]).hexdigest()}
                   for pol in ("FIRST", "LAST")},
    }
    (outdir / "overlap_diff.expected.json").write_text(json.dumps(sidecar, indent=1) + "\n")
    desc["overlap_diff.pcap"] = (
        f"From {base}: overlapping segments whose common bytes differ: the request split into "
        "[0,60) and [40,end) with [40,60) altered in the second; a crafted 1000-byte segment "
        "straddling server data segments 5 and 6 (sent between them, every byte altered); "
        "server data segment 18 sent again after segment 20 with 100 bytes altered. "
        "overlap_diff.expected.json: both streams under FIRST and LAST (base64, sha256).")

    # seqwrap: ISNs moved so both directions wrap past 2**32
    isn_c = next(p[TCP].seq for _, p in pkts if is_c2s(p, client) and p[TCP].flags & 0x02)
    new_isn_c = (1 << 32) - 30          # wraps inside the request segment
    new_isn_s = (1 << 32) - 50000 - 777  # wraps inside a data segment ~49 KB in
    off_c = (new_isn_c - isn_c) % (1 << 32)
    off_s = (new_isn_s - isn_s) % (1 << 32)
    items = []
    for ts, p in pkts:
        q = p.copy()
        mine, theirs = (off_c, off_s) if is_c2s(p, client) else (off_s, off_c)
        q[TCP].seq = (q[TCP].seq + mine) % (1 << 32)
        if q[TCP].flags & 0x10:
            q[TCP].ack = (q[TCP].ack + theirs) % (1 << 32)
        opts = []
        for o in q[TCP].options:
            if o[0] == "SAck":
                o = ("SAck", tuple((v + theirs) % (1 << 32) for v in o[1]))
            opts.append(o)
        q[TCP].options = opts
        items.append((ts, refresh(q)))
    c, s = streams(items, client, "FIRST")
    assert (c, s) == (orig_c2s, orig_s2c)
    write_pcap(outdir / "seqwrap.pcap", items)
    desc["seqwrap.pcap"] = (
        f"From {base}: every sequence and acknowledgment number (and SACK block) shifted by a "
        f"constant per direction: client ISN 0x{new_isn_c:08x} (the request's bytes wrap past "
        f"2**32 inside its one segment), server ISN 0x{new_isn_s:08x} (wraps about 50 KB into "
        "the response, inside a segment). Expected streams: the original ones.")

    # lost: one server data segment removed for good
    gone = d[7]
    items = [it for i, it in enumerate(pkts) if i != gone]
    g = pkts[gone][1]
    g_off = (g[TCP].seq - isn_s - 1) % (1 << 32)
    g_len = len(bytes(g[TCP].payload))
    c, s = streams(items, client, "FIRST")
    assert s[:g_off] == orig_s2c[:g_off] and s[g_off:g_off + g_len] == bytes(g_len)
    assert s[g_off + g_len:] == orig_s2c[g_off + g_len:]
    write_pcap(outdir / "lost.pcap", items)
    write_holes_expected(
        outdir / "lost.expected.json",
        "Expected reassembled bytestreams of lost.pcap (base64): the missing bytes are zeros.",
        fdesc, [{"direction": "server_to_client", "offset": g_off, "length": g_len}], c, s)
    desc["lost.pcap"] = (
        f"From {base}: server data segment 7 ({g_len} B at stream offset {g_off}) removed; the "
        "client's later ACKs still cover it (lost by the capture, not the network). "
        "lost.expected.json: both streams with the hole as zeros (base64, sha256).")

    # holes: bytes lost by the capture in both directions (the receivers' ACKs cover them)
    req_seg = pkts[c2s_idx[0]][1]
    req_bytes = bytes(req_seg[TCP].payload)
    cuts = (0, 30, 60, len(req_bytes))
    pieces = [with_payload(req_seg, (req_seg[TCP].seq + a) % (1 << 32), req_bytes[a:b])
              for a, b in zip(cuts, cuts[1:])]
    gone = {d[5], d[20], d[21], d[-2]}
    assert d[-1] == max(d) and pkts[d[-1]][1][TCP].flags & 0x01   # the FIN follows d[-2]
    items = []
    for i, (ts, p) in enumerate(pkts):
        if i == c2s_idx[0]:
            items += [(ts, pieces[0]), (ts, pieces[2])]            # the middle third is lost
        elif i not in gone:
            items.append((ts, p))
    holes = [{"direction": "client_to_server", "offset": cuts[1], "length": cuts[2] - cuts[1]}]
    for first, last in ((d[5], d[5]), (d[20], d[21]), (d[-2], d[-2])):
        start = (pkts[first][1][TCP].seq - isn_s - 1) % (1 << 32)
        end = (pkts[last][1][TCP].seq - isn_s - 1) % (1 << 32) + len(bytes(pkts[last][1][TCP].payload))
        holes.append({"direction": "server_to_client", "offset": start, "length": end - start})
    c, s = streams(items, client, "FIRST")
    for name, got, orig in (("client_to_server", c, orig_c2s), ("server_to_client", s, orig_s2c)):
        want = bytearray(orig)
        for hole in holes:
            if hole["direction"] == name:
                want[hole["offset"]:hole["offset"] + hole["length"]] = bytes(hole["length"])
        assert got == bytes(want), name
    write_pcap(outdir / "holes.pcap", items)
    write_holes_expected(
        outdir / "holes.expected.json",
        "Expected reassembled bytestreams of holes.pcap (base64): the missing bytes are zeros; "
        "every hole is covered by the receiver's ACKs.", fdesc, holes, c, s)
    desc["holes.pcap"] = (
        f"From {base}: bytes lost by the capture in both directions, every one acknowledged by "
        f"its receiver: the request split into [0,{cuts[1]}), [{cuts[1]},{cuts[2]}) and "
        f"[{cuts[2]},{cuts[3]}) with the middle piece left out; server data segments 5, 20 "
        "and 21 (one hole of two segments) and the one before the last (followed by the last, "
        "which carries the FIN) left out. holes.expected.json: the holes (direction, offset, "
        "length) and both streams with the holes as zeros (base64, sha256).")

    # midstream: the handshake is not in the capture
    hs_end = next(i for i, (_, p) in enumerate(pkts)
                  if is_c2s(p, client) and not p[TCP].flags & 0x02 and p[TCP].flags & 0x10)
    items = pkts[hs_end + 1:]
    assert all(not p[TCP].flags & 0x02 for _, p in items)
    write_pcap(outdir / "midstream.pcap", items)
    desc["midstream.pcap"] = (
        f"From {base}: the capture starts after the three-way handshake (SYN, SYN/ACK and the "
        f"handshake ACK left out; {len(items)} packets, first one the request). Expected "
        "streams: the original ones (request and response complete).")
    return desc


def make_shuffled_upload(outdir: Path) -> dict[str, str]:
    """A 1 MiB HTTP PUT as a capture at the client shows it (built frame by frame, no
    testbed): the client sends up to the server's window edge as the server's ACKs come
    back, then its data segments are shuffled within consecutive groups of 3, so some
    are seen before the ACK that opened the window for them."""
    from mosxdp.core.frames import build_tcp_frame
    SYN, FIN, PSH, ACK = 0x02, 0x01, 0x08, 0x10
    seed = 10
    rnd = random.Random(seed)
    body = rnd.randbytes(1 << 20)
    head = (b"PUT /up.bin HTTP/1.1\r\nHost: 10.77.0.2:8080\r\nContent-Length: %d\r\n\r\n"
            % len(body))
    upload = head + body
    reply = b"HTTP/1.0 200 OK\r\nContent-Length: 65\r\n\r\n" + hashlib.sha256(body).hexdigest().encode() + b"\n"
    cmac, smac = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
    cip, sip, cport, sport = bytes([10, 77, 0, 1]), bytes([10, 77, 0, 2]), 41000, 8080
    cisn, sisn, mss, wscale = 0x1c2d3e4f, 0x7a6b5c4d, 1460, 7
    opts = struct.pack("!BBH", 2, 4, mss) + b"\x01\x03\x03" + bytes([wscale])

    def c2s(seq, ack, flags, win, payload=b"", options=b""):
        return build_tcp_frame(smac, cmac, cip, sip, cport, sport, seq & 0xffffffff,
                               ack & 0xffffffff, flags, win, payload, options=options)

    def s2c(seq, ack, flags, win, payload=b"", options=b""):
        return build_tcp_frame(cmac, smac, sip, cip, sport, cport, seq & 0xffffffff,
                               ack & 0xffffffff, flags, win, payload, options=options)

    rtt = 80          # ticks of 25 us: an ACK reaches the client 1 ms after its segment left
    rwnd = 64 * 1024  # the server's receive window in bytes (scaled by 128 on the wire)
    frames = [("ack", c2s(cisn, 0, SYN, 64240, options=opts)),
              ("ack", s2c(sisn, cisn + 1, SYN | ACK, 65160, options=opts)),
              ("ack", c2s(cisn + 1, sisn + 1, ACK, 502))]
    sent = acked = 0
    arrivals = []           # (tick the server's ACK reaches the client, acked offset, window)
    unacked_segs = 0
    tick = 0
    while acked < len(upload):
        while arrivals and arrivals[0][0] <= tick:
            _, acked, win = arrivals.pop(0)
            frames.append(("ack", s2c(sisn + 1, cisn + 1 + acked, ACK, win >> wscale)))
        edge = acked + rwnd
        if sent < len(upload) and sent < edge:
            n = min(mss, len(upload) - sent, edge - sent)
            frames.append(("data", c2s(cisn + 1 + sent, sisn + 1, ACK | PSH, 502,
                                       upload[sent:sent + n])))
            sent += n
            unacked_segs += 1
            if unacked_segs == 2 or sent == len(upload):
                unacked_segs = 0
                # The server's app reads in bursts: the window it advertises wobbles.
                win = rwnd - rnd.choice((0, 0, 0, 128, 256, 512))
                arrivals.append((tick + rtt, sent, win))
        tick += 1
    frames.append(("ack", s2c(sisn + 1, cisn + 1 + len(upload), ACK | PSH, 502, reply)))
    # HTTP/1.0: the server closes first.
    frames.append(("ack", s2c(sisn + 1 + len(reply), cisn + 1 + len(upload), ACK | FIN, 502)))
    frames.append(("ack", c2s(cisn + 1 + len(upload), sisn + 2 + len(reply), ACK | FIN, 502)))
    frames.append(("ack", s2c(sisn + 2 + len(reply), cisn + 2 + len(upload), ACK, 502)))
    # Shuffle the client's data segments within consecutive groups of 3 slots.
    slots = [i for i, (kind, _) in enumerate(frames) if kind == "data"]
    order = [f for _, f in frames]
    for g in range(0, len(slots), 3):
        group = slots[g:g + 3]
        moved = [order[i] for i in group]
        rnd.shuffle(moved)
        for i, f in zip(group, moved):
            order[i] = f
    name = "shuffled_upload.pcap"
    with PcapWriter(outdir / name) as w:
        for i, f in enumerate(order):
            w.write(1_700_000_000_000_000 + i * 25, f)
    (outdir / "shuffled_upload.expected.json").write_text(json.dumps({
        "description": "Expected bytestreams of shuffled_upload.pcap: the request is a PUT "
                       "header and random.Random(10).randbytes(1 << 20); no byte is missing.",
        "flow": {"client": "10.77.0.1:41000", "server": "10.77.0.2:8080"},
        "length": {"client_to_server": len(upload), "server_to_client": len(reply)},
        "sha256": {"client_to_server": hashlib.sha256(upload).hexdigest(),
                   "server_to_client": hashlib.sha256(reply).hexdigest()},
    }, indent=1) + "\n")
    return {name: (
        "Built frame by frame (no testbed): a 1 MiB HTTP PUT (10.77.0.1:41000 -> "
        "10.77.0.2:8080, MSS 1460, window scale 7) as a capture at the client shows it: the "
        "client sends up to the server's 64 KiB window edge as the server's ACKs come back "
        "(one per 2 segments, 1 RTT = 80 segment times later), then the client's data "
        "segments are shuffled within consecutive groups of 3 (random.Random(10)), so many "
        "are seen before the ACK that opened the window for them; the server accepted and "
        "acknowledged every byte. shuffled_upload.expected.json: lengths and SHA-256 of both "
        "streams (the sender's bytes).")}


# ---------------------------------------------------------------------------
# verification and README


def ones(data: bytes) -> int:
    if len(data) & 1:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def check_frame(frame: bytes) -> tuple | None:
    """(checksums_ok, (src, sport, dst, dport), flags, seq, payload_len) of a TCP frame."""
    off = 12
    et = struct.unpack_from("!H", frame, off)[0]
    off += 2
    while et in (0x8100, 0x88A8):
        et = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
    if et == 0x0800:
        ihl = (frame[off] & 0xF) * 4
        tot = struct.unpack_from("!H", frame, off + 2)[0]
        if frame[off + 9] != 6:
            return None
        ok = ones(frame[off:off + ihl]) == 0xFFFF
        src, dst = frame[off + 12:off + 16], frame[off + 16:off + 20]
        l4 = frame[off + ihl:off + tot]
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(l4))
    elif et == 0x86DD:
        plen = struct.unpack_from("!H", frame, off + 4)[0]
        if frame[off + 6] != 6:
            return None
        ok = True
        src, dst = frame[off + 8:off + 24], frame[off + 24:off + 40]
        l4 = frame[off + 40:off + 40 + plen]
        pseudo = src + dst + struct.pack("!IxxxB", len(l4), 6)
    else:
        return None
    ok = ok and ones(pseudo + l4) == 0xFFFF
    sport, dport, seq = struct.unpack_from("!HHI", l4, 0)
    doff = (l4[12] >> 4) * 4
    return ok, (src, sport, dst, dport), l4[13], seq, len(l4) - doff


def summarize(path: Path) -> dict:
    """Packets, TCP packets, bad checksums, 4-tuples, connections, payload bytes, size.

    A connection is a distinct (4-tuple, SYN sequence number) (a retransmitted SYN has the
    same one), plus every 4-tuple seen without a SYN."""
    pkts = tcp = bad = payload = 0
    tuples, syns = set(), set()
    with PcapReader(path) as r:
        for _ts, frame in r:
            pkts += 1
            info = check_frame(bytes(frame))
            if info is None:
                continue
            ok, t, flags, seq, plen = info
            tcp += 1
            bad += not ok
            payload += plen
            key = tuple(sorted([t[:2], t[2:]]))
            tuples.add(key)
            if flags & 0x02 and not flags & 0x10:
                syns.add((key, seq))
    nconn = len(syns) + len(tuples - {k for k, _ in syns})
    return {"packets": pkts, "tcp_packets": tcp, "bad_checksums": bad,
            "tuples": len(tuples), "connections": nconn, "payload": payload,
            "size": path.stat().st_size}


README_HEAD = """\
# Test captures

Made by `scripts/make_captures.py` (root; regenerate with
`.venv/bin/python scripts/make_captures.py`, or `--only NAME` for some). File contents
come from a fixed seed, so the files served and uploaded are the same on every run; ISNs,
ephemeral ports, TCP timestamps, HTTP `Date:` headers and capture times are those of the run.

Real captures: one scenario each, run between two network namespaces of a fresh
`mosxdp.demo.testbed.Testbed(kind="direct")` (client `cli0` 10.77.0.1 / fd77::1, server `srv0`
10.77.0.2 / fd77::2, MTU 1500, tx checksum offload, TSO, GSO and GRO off on both veths, so
every segment is real-size and every checksum is valid), recorded with
`tcpdump -i srv0 -s 0 -U -B 16384 -w FILE` inside the server namespace, started before the
first packet and stopped with SIGINT after the last (no kernel drops). Link type Ethernet,
classic pcap, microsecond timestamps. Non-TCP frames (ARP, IPv6 ND/MLD) are kept.

Crafted captures: scapy rewrites of one real flow, written with `mosxdp.io.pcap.PcapWriter`;
every packet has valid IPv4 header and TCP checksums (checked by the script and by
`tests/unit/test_pcap.py`). Timestamps are kept non-decreasing.

Columns: packets (all / TCP), distinct TCP 4-tuples, TCP connections (one per distinct
SYN, so a reused 4-tuple counts once per connection, as `tshark -z conv,tcp` lists them,
plus 4-tuples seen without a SYN), TCP payload bytes summed over every segment
(retransmissions and duplicates included), file size in bytes.

| file | packets | 4-tuples | connections | TCP payload | size | what |
|---|---|---|---|---|---|---|
"""


def write_readme(outdir: Path, descs: dict[str, str]) -> None:
    rows = []
    total = 0
    for name in list(REAL) + CRAFTED:
        path = outdir / name
        if not path.exists():
            continue
        s = summarize(path)
        total += s["size"]
        rows.append(f"| `{name}` | {s['packets']} / {s['tcp_packets']} | {s['tuples']} | "
                    f"{s['connections']} | {s['payload']} | {s['size']} | "
                    f"{descs.get(name, '')} |")
    sidecars = """
Not a capture: `mos.conf` is mOS's sample configuration as its `setup.sh` writes it from
`.standalone-template.conf` for two DPDK ports (`dpdk0`, `dpdk1`, CPU mask 0x0001,
`nb_mem_channels = 4`, `forward = 1`); see docs/config.md (mos.conf).

Sidecars:

- `overlap_diff.expected.json`: the flow, where the overlaps are (direction, stream offset,
  length) and both reassembled streams under overlap policy FIRST and under LAST
  (`FIRST.client_to_server`, ... base64, plus their SHA-256). Under LAST the last copy of a
  byte in capture order wins (what tcpflow writes); under FIRST the first copy (what
  tshark's follow shows).
- `lost.expected.json`: the flow, the hole (direction, offset, length) and both streams with
  the hole's bytes as zeros (base64, SHA-256).
- `holes.expected.json`: the flow, the holes (direction, offset, length; one in the request,
  three in the response) and both streams with the holes' bytes as zeros (base64, SHA-256).
- `shuffled_upload.expected.json`: the flow, the lengths and SHA-256 of both streams.
- `descriptions.json`: the "what" column of this table, kept so `--only` reruns keep it.

What the reference tools give on these files (tshark 4.0.17 `-q -z follow,tcp,raw,N`,
tcpflow 1.6.1 `-r`, checked when the files were made):

- Every real capture: both tools give the same bytes for every flow and direction (in
  reuse.pcap tcpflow names the 2nd and 3rd connection's files with the suffixes `c1`, `c2`).
- overlap_diff.pcap: tshark gives the FIRST streams, tcpflow the LAST ones.
- lost.pcap: tcpflow writes the hole as 1448 zero bytes; tshark writes the text marker
  `[1448 bytes missing in capture file].` (37 bytes) in its place.
- holes.pcap: tcpflow writes every hole as zeros (the expected streams); tshark writes its
  marker for each (`[30 bytes missing in capture file].`, `[1448 ...]`, `[2896 ...]`).
- reorder.pcap: tcpflow gives the original stream; tshark gives it for the segments that
  are one place out of order, but prints the missing-bytes marker for the segment that
  arrives three segments late and drops that segment's bytes.
- seqwrap.pcap, dup.pcap, midstream.pcap: both tools give the original streams.
- shuffled_upload.pcap: tcpflow gives the sender's bytes.

Total size of the pcaps: {total} bytes.
""".replace("{total}", str(total))
    (outdir / "README.md").write_text(README_HEAD + "\n".join(rows) + "\n" + sidecars)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outdir", type=Path, default=ROOT / "tests" / "data")
    ap.add_argument("--only", nargs="*", default=None,
                    help="scenario file names (e.g. upload.pcap, or 'crafted')")
    args = ap.parse_args(argv)
    why = probe()
    if why:
        print(f"make_captures: cannot build testbeds: {why}", file=sys.stderr)
        return 2
    outdir = args.outdir
    outdir.mkdir(parents=True, exist_ok=True)
    desc_file = outdir / "descriptions.json"
    descs = json.loads(desc_file.read_text()) if desc_file.exists() else {}
    want = set(args.only) if args.only else None
    for name in REAL:
        if want is not None and name not in want:
            continue
        t0 = time.monotonic()
        descs[name] = make_real(name, outdir)
        print(f"{name}: {(outdir / name).stat().st_size} bytes in {time.monotonic() - t0:.1f}s")
    if want is None or "crafted" in want or want & set(CRAFTED):
        descs.update(make_crafted(outdir))
        descs.update(make_shuffled_upload(outdir))
        print("crafted captures written")
    bad = []
    for name in list(REAL) + CRAFTED:
        path = outdir / name
        if path.exists():
            s = summarize(path)
            if s["bad_checksums"]:
                bad.append(f"{name}: {s['bad_checksums']} bad checksums")
    desc_file.write_text(json.dumps(descs, indent=1, sort_keys=True) + "\n")
    write_readme(outdir, descs)
    if bad:
        print("make_captures: " + "; ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
