"""netns tier: MOS_INSERT and MOS_CHOMP live inline, between a real curl and a real Python
HTTP server that sends a close-delimited HTTP/1.0 response (no Content-Length: the
body ends with the server's FIN)::

    <p>-cli: curl ==> A [<p>-mon: mosxdp run resize.py --iface A --peer B] B ==> srv0: server

The app (tests/netns/apps/resize.py) is two apps on one context: one replaces the 6-byte
word b"Hello!" with the 9-byte b"Greetings" (MOS_INSERT of 3 bytes, then MOS_OVERWRITE),
the other deletes b"[cut]" (MOS_CHOMP). The server writes its body in parts, each its own
segment (TCP_NODELAY, a pause between writes): the word at a segment's first byte and at
its last ones, the cut as a segment's whole payload, one-byte segments around edits, and
a part of four full-size segments (inserts beyond the MSS: the monitor splits the
segment). The body is exactly what the edits make of it at curl, curl exits 0, both ends
close with FIN (the server's socket is in TIME-WAIT, the client's gone: its FIN was
acknowledged), no checksum error, and TCP retransmissions (`nstat TcpRetransSegs` in
each endpoint's namespace) stay within a small bound.
"""
from __future__ import annotations

import itertools
import json

import livekit
import pytest
from livekit import APPS, PY, Bed, wait_until

pytestmark = pytest.mark.netns

FILES_PORT, EDIT_PORT, PLAIN_PORT = 8090, 8091, 8092
WORD, REPLACEMENT, CUT = b"Hello!", b"Greetings", b"[cut]"
MSS = 1448           # 1500-byte MTU, TCP timestamps on: the payload of a full segment

# The body, written part by part.
PARTS = [
    WORD + b" at the first byte of a segment, " + CUT + b" in the middle, and " + WORD + b" again.\n",
    b"a segment that ends with the word: " + WORD,
    CUT,                                      # the whole payload goes
    b"x",                                     # one-byte segments either side of an edit
    CUT + b"y" + CUT,
    b"z",
    # Four full-size segments, each with the word twice and a cut: one byte more than
    # fits, the monitor sends each as two segments.
    b"".join(b"." * 300 + WORD + b"." * 494 + WORD + b"." * 294 + CUT
             + b"." * (MSS - 300 - 6 - 494 - 6 - 294 - 5) for _ in range(4)),
    b"the end: " + CUT + WORD + b"\n",
]
BODY = b"".join(PARTS)
EDITED = BODY.replace(WORD, REPLACEMENT).replace(CUT, b"")
# Segments with an edit: parts 0, 1, 2, 4, 7 and the four big ones.
RESIZED_PER_TRANSFER = 9
RETRANS_BOUND = 3    # per endpoint and transfer: a stray tail-loss probe, not a storm

# The server: HTTP/1.0, no Content-Length, each part of the body one send() and segment.
SERVER = r'''
import http.server, json, socket, sys, time
parts = [bytes.fromhex(p) for p in json.load(open(sys.argv[1]))]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        for part in parts:
            time.sleep(0.03)
            self.wfile.write(part)
    def log_message(self, *args):
        pass
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
for port in map(int, sys.argv[2:]):
    server = Server(("::", port), Handler)
    __import__("threading").Thread(target=server.serve_forever, daemon=True).start()
while True:
    time.sleep(3600)
'''

_client_ports = itertools.count(42000)


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    livekit.require_live(("curl", "nstat", "ss", "ethtool"))
    www = tmp_path_factory.mktemp("www")
    (www / "f1k").write_bytes(b"w" * 1024)
    tmp = tmp_path_factory.mktemp("bed")
    bed = Bed.start(www, tmp, (FILES_PORT,))
    try:
        parts = tmp / "parts.json"
        parts.write_text(json.dumps([p.hex() for p in PARTS]))
        script = tmp / "server.py"
        script.write_text(SERVER)
        bed.tb.popen("srv", [PY, script, parts, str(EDIT_PORT), str(PLAIN_PORT)])
        for port in (EDIT_PORT, PLAIN_PORT):
            bed.tb.wait_listen("srv", port)
        yield bed
    finally:
        bed.close()


@pytest.fixture(scope="module")
def mon(bed):
    log = bed.out_path("resize.json")
    stats = bed.out_path("stats.json")
    mon = bed.monitor(APPS / "resize.py", "--port", EDIT_PORT, "--word", WORD.decode(),
                      "--replacement", REPLACEMENT.decode(), "--cut", CUT.decode(),
                      "--log", log, "--stats-json", stats)
    mon.counters, mon.stats = log, stats
    yield from mon.running()


def counters(mon):
    return json.loads(mon.counters.read_text()) if mon.counters.exists() else {}


def sockets(bed, ns, port):
    """`ss` states of the TCP sockets in ``ns`` with local or remote port ``port``."""
    r = bed.sh(ns, "ss", "-tanH", f"( sport = :{port} or dport = :{port} )")
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def retransmits(bed):
    return {ns: bed.nstat(ns, "TcpRetransSegs") for ns in ("cli", "srv")}


@pytest.mark.parametrize("family", [4, 6])
def test_insert_and_chomp_reach_curl_exactly(bed, mon, family):
    before = counters(mon)
    rtx_before = retransmits(bed)
    csum_before = {ns: bed.nstat(ns, "TcpInCsumErrors") for ns in ("cli", "srv")}
    local = next(_client_ports)
    r, out = bed.download(family, "response", port=EDIT_PORT, local_port=local, max_time=20)
    assert r.returncode == 0, f"curl: {r.returncode} {r.stderr!r}\n{mon.log()}"
    got = out.read_bytes()
    assert got == EDITED, (f"curl got {len(got)} bytes, expected {len(EDITED)}:\n"
                           f"{got[:300]!r}\n{mon.log()}")
    # Both ends closed with FIN: the server (which closed first) waits in TIME-WAIT, the
    # client has no socket left (its FIN was acknowledged).
    wait_until("both ends closed",
               lambda: sockets(bed, "srv", local) == ["TIME-WAIT"] and not sockets(bed, "cli", local),
               10, mon.alive, detail=lambda: f"srv {sockets(bed, 'srv', local)} "
                                             f"cli {sockets(bed, 'cli', local)}")
    rtx = {ns: n - rtx_before[ns] for ns, n in retransmits(bed).items()}
    print(f"\nIPv{family}: TcpRetransSegs during the transfer: client {rtx['cli']}, "
          f"server {rtx['srv']}")
    assert all(n <= RETRANS_BOUND for n in rtx.values()), rtx
    for ns in ("cli", "srv"):
        assert bed.nstat(ns, "TcpInCsumErrors") == csum_before[ns]
    done = wait_until("the app's counters", lambda: (c := counters(mon)).get("cuts", 0)
                      >= before.get("cuts", 0) + BODY.count(CUT) and c, 5, mon.alive)
    assert done["words"] - before.get("words", 0) == BODY.count(WORD)
    assert done["cuts"] - before.get("cuts", 0) == BODY.count(CUT)
    assert done["refused"] == 0


def test_other_port_untouched(bed, mon):
    r, out = bed.download(4, "response", port=PLAIN_PORT, max_time=20)
    assert r.returncode == 0 and out.read_bytes() == BODY


def test_flows_stayed_in_user_space(bed, mon):
    """At the monitor's exit: frames were replaced (resized), none lost for lack of a
    UMEM frame, and no kernel verdict was ever set."""
    mon.stop_clean()
    stats = json.loads(mon.stats.read_text())
    resized = stats["stack"]["resized_frames"]
    print(f"\nframes resized {resized}, live {stats['live']['replaced']}")
    assert resized >= 2 * RESIZED_PER_TRANSFER
    assert stats["stack"]["callback_errors"] == 0
    live = stats["live"]
    assert live["replaced"] == resized and live["replaced_dropped"] == 0
    assert live["processor"]["kernel_verdicts_set"] == 0
