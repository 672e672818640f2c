"""Engines: where a context's frames come from and where its verdicts go.

The offline engine replays a pcap through the core with the packet
timestamps as the clock and writes what inline mode would have transmitted:
forwarded frames (after overwrites), no dropped frames, and mtcp_sendpkt
frames in order, each before the frame whose callbacks made it. The live
engine (mosxdp.live) drives the same core from AF_XDP sockets.
"""
import sys
import time
from contextlib import nullcontext

from .core.stack import VERDICT_FORWARD
from .io.pcap import PcapReader, PcapWriter


class OfflineEngine:
    """Feeds (ts_us, frame) items to a context's stack in batches."""

    def __init__(self, mctx, source, sink=None, batch_size=64):
        self.mctx = mctx
        self.stack = mctx.stack
        self.source = source
        self.sink = sink              # fn(ts_us, frame) or None
        self.batch_size = batch_size
        self.frames_in = 0
        self.frames_out = 0
        mctx.engine = self

    def filters_changed(self):
        """Offline, filters are applied in user space only."""

    def _flush_outbox(self, ts_us):
        outbox = self.stack.outbox
        if outbox:
            if self.sink is not None:
                for frame, _port in outbox:
                    self.sink(ts_us, frame)
                    self.frames_out += 1
            outbox.clear()

    def run(self):
        stack = self.stack
        process = stack.process
        sink = self.sink
        batch_size = self.batch_size
        in_batch = 0
        ts_us = 0
        try:
            for ts_us, frame in self.source:
                verdict = process(frame, ts_us, 0)
                if stack.outbox:
                    self._flush_outbox(ts_us)
                if verdict == VERDICT_FORWARD and sink is not None:
                    sink(ts_us, frame)
                    self.frames_out += 1
                self.frames_in += 1
                in_batch += 1
                if in_batch == batch_size:
                    stack.end_batch()
                    in_batch = 0
                    self._flush_outbox(ts_us)
        finally:
            # Also when the input is cut short: what was read is complete
            # and its flows end (reason eof) before the error is reported.
            stack.finish()
            self._flush_outbox(ts_us)
        return 0


def run_offline(mctx, pcap_path, write_path=None, batch_size=64):
    with PcapReader(pcap_path) as reader:
        with (PcapWriter(write_path) if write_path else nullcontext()) as writer:
            engine = OfflineEngine(mctx, reader, writer.write if writer else None, batch_size)
            started = time.perf_counter()
            try:
                return engine.run()
            finally:
                if getattr(mctx, "stats", False):
                    print(summary_line(mctx.stack, engine.frames_in, engine.frames_out,
                                       time.perf_counter() - started), file=sys.stderr)


def summary_line(stack, frames_in, frames_out, seconds):
    """One line of what the core saw: frames, flows, and every malformation by kind."""
    c = stack.counters
    parts = [f"frames in {frames_in} out {frames_out}",
             f"{seconds:.2f} s" if seconds else "",
             f"{frames_in / seconds / 1e3:.0f} kpps" if seconds else "",
             f"tcp {c['tcp_segments']}", f"non-tcp {c['non_tcp']}", f"ip fragments {c['ip_fragments']}",
             f"flows {c['flows_created']} (ended {c['flows_ended']}, evicted {c['flows_evicted']})",
             f"orphans {c['orphans']}", f"dropped {c['dropped']}",
             f"malformed {c['malformed']}" + (
                 " (" + ", ".join(f"{k} {v}" for k, v in sorted(stack.malformed.items())) + ")"
                 if stack.malformed else ""),
             f"callback errors {c['callback_errors']}"]
    return "mosxdp: " + ", ".join(p for p in parts if p)


def run_frames(mctx, frames, batch_size=1):
    """Run crafted frames through a context; returns the transmitted frames.

    `frames` is an iterable of (ts_us, bytes-like); each is copied into a
    writable buffer, as a pcap reader or the UMEM would give it."""
    output = []
    source = ((ts, memoryview(bytearray(frame))) for ts, frame in frames)
    engine = OfflineEngine(mctx, source, lambda ts, f: output.append((ts, bytes(f))), batch_size)
    engine.run()
    return output


def run_context(mctx):
    """mtcp_app_join: run the datapath the configuration names."""
    config = mctx.config
    if config.pcap is not None:
        return run_offline(mctx, config.pcap, config.write, config.batch_size)
    if config.iface is None:
        raise OSError(22, "nothing to monitor: give a pcap file (--pcap) or an interface (--iface)")
    return run_live(mctx)


def run_live(mctx):
    """Drive the context from AF_XDP sockets on its interfaces until a signal."""
    from .live import LiveEngine
    config = mctx.config
    engine = LiveEngine(
        config.iface, config.peer, mctx.stack,
        queues=None if config.queues == "all" else config.queues,
        frame_count=config.frame_count, ring_size=config.ring_size,
        batch_size=min(config.batch_size, config.ring_size),
        zero_copy=config.bind == "zerocopy", xdp_mode=config.xdp_mode,
        fail_closed=config.fail_closed, force=config.force)
    mctx.engine = engine
    mctx.stack.wall_offset_us = (time.time_ns() - time.monotonic_ns()) // 1000
    with engine:
        engine.run()
        # Read while the sockets and the program still exist: the accounting
        # of every UMEM frame and the XDP counters.
        mctx.live_stats = engine.final_stats()
    return 0
