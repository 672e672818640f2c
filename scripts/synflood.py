#!/usr/bin/env python3
"""SYN flood, offline: spoofed SYNs with a legitimate transfer in the middle of them.

    .venv/bin/python scripts/synflood.py [--syns 100000] [--max-concurrency 10000]
        [--memcap BYTES] [--syn-timeout 5] [--bursts 4] [--pause 6] [--response BYTES]
        [--synack-ratio 0.5] [--pcap OUT.pcap] [--uncapped]

The flood is `--syns` SYNs from random spoofed sources (198.18.0.0/15, random ports and
ISNs) to 10.1.0.2:80, in `--bursts` bursts at 20000 SYNs/s separated by `--pause` seconds
of silence; the server answers a fraction of them with a SYN-ACK (to nobody). A
legitimate HTTP transfer (10.1.0.1:40000 -> 10.1.0.2:80, a `--response`-byte answer in
1448-byte segments, ACKed every second segment) runs from before the first burst to after
the last. Frames are built with mosxdp.core.frames.build_tcp_frame in timestamp order and
fed to the offline engine (or written to `--pcap` first and replayed from it).

The monitor is a flowdump-like collector (every stream's bytes read with mtcp_peek at
CONN_NEW_DATA and CONN_END, kept only for flows that carried data) with the given limits
(max_concurrency, reassembly_memcap, tcp_syn_timeout). (flowdump itself keeps one entry per
4-tuple it ever saw, to name reused connections like tcpflow: under a flood of random
4-tuples that grows with the flood, whatever the core's limits.) Printed: the time, frames
per second, the monitor's memory (tracemalloc peak of the run; RSS growth and ru_maxrss of
this process), the flow table's largest size, the limit counters, and whether the
legitimate transfer was monitored completely (its reassembled streams equal what was sent,
CONN_END seen with end_reason fin). Exit 1 if not. `--uncapped` runs the same flood again
with no limits, for comparison.

tests/unit/test_synflood.py runs `flood()` with 20000 SYNs; this script runs 10^5.
"""
import argparse
import heapq
import os
import random
import resource
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mosxdp import api  # noqa: E402
from mosxdp.constants import (  # noqa: E402
    MOS_HK_RCV, MOS_NULL, MOS_ON_CONN_END, MOS_ON_CONN_NEW_DATA, MOS_SIDE_CLI, MOS_SIDE_SVR,
    MOS_SOCK_MONITOR_STREAM, MOSX_FLOW_STATS, SOL_MONSOCKET,
)
from mosxdp.core.frames import build_tcp_frame  # noqa: E402
from mosxdp.engine import OfflineEngine  # noqa: E402
from mosxdp.io.pcap import PcapReader, PcapWriter  # noqa: E402

MAC_C, MAC_S = b"\x02\0\0\0\1\1", b"\x02\0\0\0\1\2"
CLIENT, SERVER = bytes([10, 1, 0, 1]), bytes([10, 1, 0, 2])
CPORT, SPORT = 40000, 80
MSS = 1448
SYN, ACK, PSH_ACK, FIN_ACK, SYN_ACK = 0x02, 0x10, 0x18, 0x11, 0x12
REQUEST = b"GET /big.bin HTTP/1.0\r\nHost: 10.1.0.2\r\n\r\n"
FLOOD_RATE = 20000                  # SYNs per second within a burst
T0 = 1_700_000_000_000_000          # microseconds


def response_body(size, seed=7):
    return random.Random(seed).randbytes(size)


def legit_frames(response, start_us, end_us):
    """(ts_us, frame) of the legitimate connection, spread evenly from start to end."""
    isn_c, isn_s = 11111, 22222
    c, s = isn_c + 1, isn_s + 1
    segments = [("c", SYN, isn_c, 0, b""), ("s", SYN_ACK, isn_s, c, b""), ("c", ACK, c, s, b""),
                ("c", PSH_ACK, c, s, REQUEST)]
    c += len(REQUEST)
    header = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(response)
    body = header + response
    for index, off in enumerate(range(0, len(body), MSS)):
        chunk = body[off:off + MSS]
        segments.append(("s", PSH_ACK, s + off, c, chunk))
        if index % 2:
            segments.append(("c", ACK, c, s + off + len(chunk), b""))
    s += len(body)
    segments += [("s", FIN_ACK, s, c, b""), ("c", FIN_ACK, c, s + 1, b""),
                 ("s", ACK, s + 1, c + 1, b"")]
    step = (end_us - start_us) // len(segments)
    for i, (frm, flags, seq, ack, payload) in enumerate(segments):
        if frm == "c":
            frame = build_tcp_frame(MAC_S, MAC_C, CLIENT, SERVER, CPORT, SPORT, seq, ack, flags,
                                    65535, payload)
        else:
            frame = build_tcp_frame(MAC_C, MAC_S, SERVER, CLIENT, SPORT, CPORT, seq, ack, flags,
                                    65535, payload)
        yield start_us + i * step, frame
    return body


def flood_frames(syns, bursts, pause_us, synack_ratio, seed=1):
    """(ts_us, frame) of the spoofed SYNs (and the server's SYN-ACKs), in time order."""
    rng = random.Random(seed)
    per_burst = -(-syns // bursts)
    gap = 1_000_000 // FLOOD_RATE
    ts = T0 + 1_000_000
    sent = 0
    for _ in range(bursts):
        for _ in range(min(per_burst, syns - sent)):
            src = bytes([198, 18 + rng.getrandbits(1), rng.getrandbits(8), rng.getrandbits(8)])
            sport = 1024 + rng.getrandbits(15)
            isn = rng.getrandbits(32)
            yield ts, build_tcp_frame(MAC_S, MAC_C, src, SERVER, sport, SPORT, isn, 0, SYN, 29200,
                                      options=b"\x02\x04\x05\xb4")
            if rng.random() < synack_ratio:
                yield ts + gap // 2, build_tcp_frame(
                    MAC_C, MAC_S, SERVER, src, SPORT, sport, rng.getrandbits(32), (isn + 1) & 0xFFFFFFFF,
                    SYN_ACK, 65160, options=b"\x02\x04\x05\xb4")
            ts += gap
            sent += 1
        ts += pause_us


def scenario(syns, bursts=4, pause=6.0, response=1 << 20, synack_ratio=0.5):
    """Every frame of the run in timestamp order (a generator) and the response body."""
    pause_us = int(pause * 1e6)
    flood_us = syns * 1_000_000 // FLOOD_RATE + bursts * pause_us
    body = response_body(response)
    legit = list(legit_frames(body, T0, T0 + 2_000_000 + flood_us))
    frames = heapq.merge(legit, flood_frames(syns, bursts, pause_us, synack_ratio),
                         key=lambda item: item[0])
    header = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    return frames, header + body, len(legit)


class Collector:
    """flowdump-like: each flow's two streams, read with mtcp_peek as they arrive. A flow's
    bytes live in its socket's uctx while it lasts; at CONN_END the streams of flows that
    carried data are kept, with the end reason (flows without data leave nothing)."""

    def __init__(self, mctx):
        self.done = []                   # (client port, end_reason, {side: bytes})
        self.buf = bytearray(1 << 16)
        sock = api.mtcp_socket(mctx, 0, MOS_SOCK_MONITOR_STREAM, 0)
        api.mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, self.on_data)
        api.mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, self.on_end)

    def _drain(self, mctx, sock, side):
        streams = api.mtcp_get_uctx(mctx, sock)
        if streams is None:
            streams = {MOS_SIDE_CLI: bytearray(), MOS_SIDE_SVR: bytearray()}
            api.mtcp_set_uctx(mctx, sock, streams)
        while True:
            count = api.mtcp_peek(mctx, sock, side, self.buf, len(self.buf))
            if not count:
                return streams
            streams[side] += self.buf[:count]

    def on_data(self, mctx, sock, side, event, arg):
        self._drain(mctx, sock, side)

    def on_end(self, mctx, sock, side, event, arg):
        streams = api.mtcp_get_uctx(mctx, sock)
        if streams is None:
            return                        # no data in this flow so far
        self._drain(mctx, sock, side)
        if side == MOS_SIDE_SVR:           # the second CONN_END of the flow
            port = api.mtcp_getpeername(mctx, sock, MOS_SIDE_CLI)[1]
            reason = api.mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOSX_FLOW_STATS).end_reason
            self.done.append((port, reason, {k: bytes(v) for k, v in streams.items()}))


def _rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def flood(syns=20000, max_concurrency=2000, memcap=1 << 20, syn_timeout=5.0, bursts=4,
          pause=6.0, response=1 << 20, synack_ratio=0.5, pcap=None, measure=True):
    """Run the flood through the collector; return the figures (a dict)."""
    frames, server_stream, legit_count = scenario(syns, bursts, pause, response, synack_ratio)
    if pcap is not None:
        with PcapWriter(pcap) as writer:
            for ts, frame in frames:
                writer.write(ts, frame)
    api.mtcp_destroy()
    api.mtcp_init(None, max_concurrency=max_concurrency, reassembly_memcap=memcap,
                  tcp_syn_timeout=syn_timeout)
    try:
        mctx = api.mtcp_create_context(0)
        collector = Collector(mctx)
        stack = mctx.stack
        peak = {"flows": 0, "rss": 0}

        def source():
            lru = stack.lru
            count = 0
            items = PcapReader(pcap) if pcap is not None else frames
            for ts, frame in items:
                if len(lru) > peak["flows"]:
                    peak["flows"] = len(lru)
                count += 1
                if measure and not count % 5000:
                    peak["rss"] = max(peak["rss"], _rss_kib())
                yield ts, memoryview(bytearray(frame))

        rss_before = _rss_kib()
        maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if measure:
            tracemalloc.start()
        started = time.perf_counter()
        engine = OfflineEngine(mctx, source(), None, 64)
        engine.run()
        seconds = time.perf_counter() - started
        traced_peak = tracemalloc.get_traced_memory()[1] if measure else 0
        if measure:
            tracemalloc.stop()
        peak["rss"] = max(peak["rss"], _rss_kib())
        legit = [entry for entry in collector.done if entry[0] == CPORT]
        c = dict(stack.counters)
        return {
            "syns": syns, "frames": engine.frames_in, "legit_frames": legit_count,
            "seconds": seconds, "kpps": engine.frames_in / seconds / 1e3,
            "max_concurrency": max_concurrency, "memcap": memcap,
            "peak_flows": peak["flows"], "traced_peak_kib": traced_peak // 1024,
            "rss_growth_kib": peak["rss"] - rss_before,
            "maxrss_growth_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - maxrss_before,
            "reassembly_mem_peak": stack.reassembly_mem_peak,
            "counters": {k: c[k] for k in (
                "flows_created", "flows_ended", "flows_evicted", "half_open_evicted",
                "half_open_timeouts", "memcap_refused", "orphans", "callback_errors")},
            "legit_end": legit[0][1] if len(legit) == 1 else legit,
            "legit_complete": len(legit) == 1 and legit[0][2] == {MOS_SIDE_SVR: REQUEST,
                                                                  MOS_SIDE_CLI: server_stream},
            "flows_with_data": len(collector.done),
        }
    finally:
        api.mtcp_destroy()


def report(figures):
    c = figures["counters"]
    lines = [
        f"{figures['syns']} spoofed SYNs + {figures['legit_frames']} legitimate frames "
        f"= {figures['frames']} frames in {figures['seconds']:.1f} s ({figures['kpps']:.0f} kpps)",
        f"limits: max_concurrency {figures['max_concurrency']}, reassembly_memcap "
        f"{figures['memcap']} B; flow table peak {figures['peak_flows']} flows",
        "memory: " + (f"tracemalloc peak {figures['traced_peak_kib'] / 1024:.1f} MiB, "
                      if figures["traced_peak_kib"] else "") + "RSS growth "
        f"{figures['rss_growth_kib'] / 1024:.1f} MiB, ru_maxrss growth "
        f"{figures['maxrss_growth_kib'] / 1024:.1f} MiB, reassembly buffers peak "
        f"{figures['reassembly_mem_peak'] >> 10} KiB",
        f"flows created {c['flows_created']}, ended {c['flows_ended']}, evicted "
        f"{c['flows_evicted']} (half-open {c['half_open_evicted']}), half-open timeouts "
        f"{c['half_open_timeouts']}, memcap refused {c['memcap_refused']}, orphans {c['orphans']}",
        f"legitimate transfer: end_reason {figures['legit_end']}, streams "
        f"{'complete' if figures['legit_complete'] else 'INCOMPLETE'} "
        f"({figures['flows_with_data']} flow(s) carried data)",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--syns", type=int, default=100000)
    parser.add_argument("--max-concurrency", type=int, default=10000)
    parser.add_argument("--memcap", type=int, default=16 << 20)
    parser.add_argument("--syn-timeout", type=float, default=5.0)
    parser.add_argument("--bursts", type=int, default=4)
    parser.add_argument("--pause", type=float, default=6.0)
    parser.add_argument("--response", type=int, default=1 << 20)
    parser.add_argument("--synack-ratio", type=float, default=0.5)
    parser.add_argument("--pcap", help="write the frames to this pcap and replay it")
    parser.add_argument("--no-tracemalloc", action="store_true",
                        help="measure RSS only (tracemalloc slows the run down)")
    parser.add_argument("--uncapped", action="store_true",
                        help="then run the same flood without limits, for comparison")
    args = parser.parse_args(argv)
    kw = dict(syns=args.syns, syn_timeout=args.syn_timeout, bursts=args.bursts,
              pause=args.pause, response=args.response, synack_ratio=args.synack_ratio,
              measure=not args.no_tracemalloc)
    figures = flood(max_concurrency=args.max_concurrency, memcap=args.memcap, pcap=args.pcap, **kw)
    print(report(figures))
    ok = figures["legit_complete"] and figures["legit_end"] == "fin"
    if args.uncapped:
        print("\nwithout limits (max_concurrency 10^7, no memcap, no half-open timeout):")
        print(report(flood(max_concurrency=10 ** 7, memcap=0, **dict(kw, syn_timeout=0))))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
