"""Spoofed SYNs sent on a raw socket (livekit.send_syns runs it in the client namespace):

    synsend.py IFNAME DST_MAC SRC_MAC DST_IP DPORT COUNT RATE SEED MSS BURST

COUNT SYNs from random sources in 198.18.0.0/15 (benchmarking range: the server has no
route back, so no answers), random ports and ISNs drawn from Random(SEED), with an MSS
option when MSS is 1; sent in bursts of BURST frames, paced to RATE frames per second (0:
as fast as the socket takes them). Prints {"sent", "seconds", "retries"} as JSON.
"""
import json
import random
import socket
import sys
import time

from mosxdp.core.frames import build_tcp_frame

ifname, dmac, smac, dst, dport, count, rate, seed, mss, burst = sys.argv[1:11]
dport, count, rate, burst = int(dport), int(count), float(rate), int(burst)
options = b"\x02\x04\x05\xb4" if mss == "1" else b""
rng = random.Random(int(seed))
dst = socket.inet_aton(dst)
dmac, smac = (bytes.fromhex(m.replace(":", "")) for m in (dmac, smac))
frames = []
for _ in range(count):
    src = bytes([198, 18 + rng.getrandbits(1), rng.getrandbits(8), rng.getrandbits(8)])
    frames.append(bytes(build_tcp_frame(dmac, smac, src, dst, rng.randrange(1024, 65536), dport,
                                        rng.getrandbits(32), 0, 0x02, 64240, options=options)))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
s.bind((ifname, 0))
send, retries = s.send, 0
started = time.monotonic()
for i in range(0, count, burst):
    for f in frames[i:i + burst]:
        while True:
            try:
                send(f)
                break
            except OSError:          # ENOBUFS: the socket's buffer is full for a moment
                retries += 1
                time.sleep(0.0002)
    if rate:
        ahead = (i + burst) / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)
print(json.dumps({"sent": count, "seconds": time.monotonic() - started, "retries": retries}))
