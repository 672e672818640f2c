"""Shared by the session parser tests: the session captures' streams as the runtime delivers
them, and what tshark reads in the same captures."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import strategies as st

from mosxdp import MOS_NULL, MOS_ON_CONN_NEW_DATA, MOS_SIDE_SVR, Monitor, mtcp_destroy
from mosxdp.io.pcap import PcapReader
from mosxdp.sessions import ORIG, RESP
from mosxdp.sessions.common import text

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "sessions")
TLS_PCAP = os.path.join(DATA, "tls.pcap")
HTTP_PCAP = os.path.join(DATA, "http.pcap")
DNS_PCAP = os.path.join(DATA, "dns.pcap")

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None,
                                  reason="tshark not installed (scripts/setup.sh installs it)")


def tcp_chunks(pcap: str, port: int) -> dict[int, list[tuple[int, bytes]]]:
    """{client port: [(ORIG or RESP, bytes), ...]}: each connection's new in-order bytes as
    mosxdp's offline runtime reassembles them, one packet per batch, in delivery order."""
    chunks: dict[int, list[tuple[int, bytes]]] = {}
    mtcp_destroy()
    with Monitor.offline(pcap, batch_size=1) as mon:
        @mon.on(MOS_ON_CONN_NEW_DATA, MOS_NULL, syn_filter=f"tcp port {port}")
        def on_data(mctx, sock, side, event, arg):
            (_, cport), _ = mon.peers(sock)
            data = mon.read(sock, side)
            if data:
                # the server's buffer holds what the client sent
                chunks.setdefault(cport, []).append((ORIG if side == MOS_SIDE_SVR else RESP,
                                                     data))
    return dict(sorted(chunks.items()))


def feed_all(parser, chunks) -> list:
    """Every record a parser gives for ``chunks`` and at close."""
    out = []
    for direction, data in chunks:
        out += parser.feed(direction, data)
    return out + parser.close()


def mutated_chunks(capture: dict, data, most: int) -> tuple[list, int, int, bytearray]:
    """A conversation of ``capture`` (tcp_chunks) with 1 to ``most`` random bytes of one
    chunk changed, drawn with hypothesis' ``data``: (its chunks, the chunk's index, its
    direction, its changed bytes); the caller puts them back in place."""
    chunks = list(capture.values())[data.draw(st.integers(0, len(capture) - 1))]
    i = data.draw(st.integers(0, len(chunks) - 1))
    d, blob = chunks[i]
    blob = bytearray(blob)
    for _ in range(data.draw(st.integers(1, most))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    return chunks, i, d, blob


def udp_datagrams(pcap: str, port: int) -> list[tuple[tuple, int, bytes, float]]:
    """(flow key, ORIG/RESP, payload, ts) of every UDP datagram to or from ``port``, in
    capture order; the flow key is (client address, client port)."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    out = []
    with PcapReader(pcap) as reader:
        for ts, frame in reader:
            pkt = Ether(bytes(frame))
            if UDP not in pkt or port not in (pkt[UDP].sport, pkt[UDP].dport):
                continue
            orig = pkt[UDP].dport == port
            key = (pkt[IP].src, pkt[UDP].sport) if orig else (pkt[IP].dst, pkt[UDP].dport)
            out.append((key, ORIG if orig else RESP, bytes(pkt[UDP].payload), ts / 1e6))
    return out


def pdml(pcap: str, display_filter: str, *options: str) -> list[list[ET.Element]]:
    """tshark's PDML for the packets ``display_filter`` selects: per packet, its <field>s."""
    out = subprocess.run(["tshark", "-r", pcap, "-n", *options, "-Y", display_filter,
                          "-T", "pdml"], capture_output=True, check=True).stdout
    return [list(pkt.iter("field")) for pkt in ET.fromstring(out).iter("packet")]


def values(fields: list[ET.Element], name: str, attr: str = "show") -> list[str]:
    return [f.get(attr) for f in fields if f.get("name") == name]


def first(fields: list[ET.Element], name: str, attr: str = "show") -> str | None:
    found = values(fields, name, attr)
    return found[0] if found else None


def ints(fields, name):
    return [int(v, 0) for v in values(fields, name)]


def tshark_http(pcap: str, port: int) -> tuple[dict, dict]:
    """(requests, responses) per client port as tshark reads the HTTP flows to ``port``,
    each a list of dicts named as HttpTransaction's fields (and http.log's)."""
    requests, responses = {}, {}
    for fields in pdml(pcap, "http.request || http.response"):
        src, dst = int(first(fields, "tcp.srcport")), int(first(fields, "tcp.dstport"))
        if dst == port:
            for i, method in enumerate(values(fields, "http.request.method")):
                requests.setdefault(src, []).append({
                    "method": method,
                    "uri": text(unquote_to_bytes(values(fields, "http.request.uri")[i])),
                    "host": values(fields, "http.host")[i],
                    "user_agent": values(fields, "http.user_agent")[i],
                    "referrer": (values(fields, "http.referer") or [None])[0]})
        elif first(fields, "http.response.code") is not None:
            sizes = values(fields, "http.file_data", "size")
            responses.setdefault(dst, []).append({
                "status_code": int(first(fields, "http.response.code")),
                "status_msg": first(fields, "http.response.phrase"),
                "version": first(fields, "http.response.version").removeprefix("HTTP/"),
                "response_body_len": int(sizes[0]) if sizes else 0})
    return requests, responses


def tshark_ja4(fields) -> str:
    """JA4 assembled from tshark's reading of a ClientHello, by the rules of FoxIO's spec."""
    from mosxdp.sessions.tls_names import is_grease
    suites = [s for s in ints(fields, "tls.handshake.ciphersuite") if not is_grease(s)]
    exts = [e for e in ints(fields, "tls.handshake.extension.type") if not is_grease(e)]
    versions = [v for v in ints(fields, "tls.handshake.extensions.supported_version")
                if not is_grease(v)]
    version = max(versions) if versions else int(first(fields, "tls.handshake.version"), 0)
    alpn = values(fields, "tls.handshake.extensions_alpn_str")
    sigalgs = [s for s in ints(fields, "tls.handshake.sig_hash_alg") if not is_grease(s)]
    code = {0x0304: "13", 0x0303: "12"}[version]
    a = (f"t{code}{'d' if 0 in exts else 'i'}{len(suites):02d}{len(exts):02d}"
         f"{alpn[0][0] + alpn[0][-1] if alpn else '00'}")
    b = hashlib.sha256(",".join(f"{s:04x}" for s in sorted(suites)).encode()).hexdigest()[:12]
    c_in = ",".join(f"{e:04x}" for e in sorted(exts) if e not in (0, 16))
    if sigalgs:
        c_in += "_" + ",".join(f"{s:04x}" for s in sigalgs)
    return f"{a}_{b}_{hashlib.sha256(c_in.encode()).hexdigest()[:12]}"
