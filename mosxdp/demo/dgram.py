"""UDP traffic for the testbed: a tiny DNS responder with a UDP echo port, and the client
that talks to them (captures, live tests). Standard library only.

    python -m mosxdp.demo.dgram serve ADDR [ADDR ...]
        DNS on UDP and TCP port 53 of each address (A and AAAA answers, one per label of
        the name; NXDOMAIN for names starting with "nx"; no answer record for other
        types), UDP echo on port 7005. Prints "ready" once every socket is bound.

    python -m mosxdp.demo.dgram client ADDR [--seed N] [--echo N] [--tcp]
        A fixed set of DNS queries over UDP (A, AAAA, NXDOMAIN, a 4-label name; each from
        its own source port), N echo datagrams of seeded random sizes (0..1400 bytes) from
        one source port, 2 datagrams to port 7006 (nothing listens: ICMP port
        unreachable), and with --tcp one DNS query over TCP. Checks every answer and
        prints one JSON line: what it sent and received per exchange.
"""
from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import sys
import threading

DNS_PORT = 53
ECHO_PORT = 7005
CLOSED_PORT = 7006
QUERIES = (("example.test", 1), ("www.example.test", 28), ("nx.example.test", 1),
           ("a.b.c.example.test", 1))
_HEADER = struct.Struct("!HHHHHH")


def _question(name: str, qtype: int) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return labels + b"\0" + struct.pack("!HH", qtype, 1)


def query(tid: int, name: str, qtype: int) -> bytes:
    """A recursive DNS query for ``name``."""
    return _HEADER.pack(tid, 0x0100, 1, 0, 0, 0) + _question(name, qtype)


def answer(message: bytes) -> bytes:
    """The responder's answer to a query (raises ValueError for anything else)."""
    if len(message) < 12:
        raise ValueError("short DNS message")
    tid, _flags, qdcount = struct.unpack_from("!HHH", message)
    if qdcount != 1:
        raise ValueError("one question expected")
    pos, labels = 12, []
    while True:
        size = message[pos]
        if not size:
            break
        labels.append(message[pos + 1:pos + 1 + size].decode())
        pos += 1 + size
    qtype, _qclass = struct.unpack_from("!HH", message, pos + 1)
    question = message[12:pos + 5]
    if labels and labels[0].startswith("nx"):
        return _HEADER.pack(tid, 0x8183, 1, 0, 0, 0) + question
    if qtype == 1:
        rdatas = [bytes([192, 0, 2, n]) for n in range(1, len(labels) + 1)]
    elif qtype == 28:
        rdatas = [bytes.fromhex("20010db8") + bytes(11) + bytes([n])
                  for n in range(1, len(labels) + 1)]
    else:
        rdatas = []
    records = b"".join(struct.pack("!HHHIH", 0xC00C, qtype, 1, 300, len(r)) + r for r in rdatas)
    return _HEADER.pack(tid, 0x8180, 1, len(rdatas), 0, 0) + question + records


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _serve_udp(sock, reply):
    while True:
        data, peer = sock.recvfrom(65535)
        try:
            sock.sendto(reply(data), peer)
        except ValueError:
            pass


def _recv_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _serve_tcp(listener):
    while True:
        conn, _ = listener.accept()
        with conn:
            try:
                (size,) = struct.unpack("!H", _recv_exact(conn, 2))
                out = answer(_recv_exact(conn, size))
                conn.sendall(struct.pack("!H", len(out)) + out)
            except (ConnectionError, ValueError):
                pass


def serve(addrs) -> None:
    threads = []
    for addr in addrs:
        fam = _family(addr)
        for port, reply in ((DNS_PORT, answer), (ECHO_PORT, lambda data: data)):
            sock = socket.socket(fam, socket.SOCK_DGRAM)
            sock.bind((addr, port))
            threads.append(threading.Thread(target=_serve_udp, args=(sock, reply), daemon=True))
        listener = socket.socket(fam, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((addr, DNS_PORT))
        listener.listen(8)
        threads.append(threading.Thread(target=_serve_tcp, args=(listener,), daemon=True))
    for t in threads:
        t.start()
    print("ready", flush=True)
    threading.Event().wait()


def _exchange(sock, data, peer, tries=3):
    for _ in range(tries):
        sock.sendto(data, peer)
        try:
            got, _ = sock.recvfrom(65535)
            return got
        except socket.timeout:
            continue
    raise SystemExit(f"no answer from {peer} after {tries} tries")


def client(addr: str, seed: int, echo: int, tcp: bool) -> dict:
    fam = _family(addr)
    report = {"dns": [], "echo": [], "closed": 0, "tcp": None}
    for tid, (name, qtype) in enumerate(QUERIES, 1):
        with socket.socket(fam, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            q = query(tid, name, qtype)
            got = _exchange(sock, q, (addr, DNS_PORT))
            if got != answer(q):
                raise SystemExit(f"wrong answer to {name}: {got.hex()}")
            report["dns"].append({"port": sock.getsockname()[1], "query": len(q),
                                  "answer": len(got)})
    rnd = random.Random(seed)
    with socket.socket(fam, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sizes = [0] + [rnd.randrange(1, 1401) for _ in range(max(0, echo - 1))]
        for size in sizes[:echo]:
            data = rnd.randbytes(size)
            if _exchange(sock, data, (addr, ECHO_PORT)) != data:
                raise SystemExit("echo differs")
            report["echo"].append(size)
        report["echo_port"] = sock.getsockname()[1]
    with socket.socket(fam, socket.SOCK_DGRAM) as sock:
        for _ in range(2):
            sock.sendto(b"nobody here", (addr, CLOSED_PORT))
            report["closed"] += 1
    if tcp:
        q = query(99, "tcp.example.test", 1)
        with socket.create_connection((addr, DNS_PORT), timeout=5) as conn:
            conn.sendall(struct.pack("!H", len(q)) + q)
            (size,) = struct.unpack("!H", _recv_exact(conn, 2))
            if _recv_exact(conn, size) != answer(q):
                raise SystemExit("wrong answer over TCP")
        report["tcp"] = size
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mosxdp.demo.dgram", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("addrs", nargs="+")
    c = sub.add_parser("client")
    c.add_argument("addr")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--echo", type=int, default=20)
    c.add_argument("--tcp", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        serve(args.addrs)
        return 0
    print(json.dumps(client(args.addr, args.seed, args.echo, args.tcp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
