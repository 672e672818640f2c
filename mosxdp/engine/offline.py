"""Engines: where a context's frames come from and where its verdicts go.

The offline engine replays a pcap through the core with the packet
timestamps as the clock and writes what inline mode would have transmitted:
forwarded frames (after overwrites), no dropped frames, and mtcp_sendpkt
frames in order, each before the frame whose callbacks made it. The live
engine (mosxdp.engine.live) drives the same core from AF_XDP sockets.
"""
import contextlib
import sys
import time
from contextlib import nullcontext

from .callback_log import counts_text
from ..core.stack import VERDICT_FORWARD
from ..io.pcap import PcapReader, PcapWriter
from .status import LiveStatus, MetricsServer


# --write keeps whole frames: the largest IPv4 or IPv6 packet with its Ethernet header and
# tags is over 65535 bytes (tcpdump's default snap length is 262144 too).
WRITE_SNAPLEN = 262144


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
        # The frame count lives in a local while the loop runs (cheaper than an attribute):
        # stored at each batch's end and, also when an exception cuts the run short, at the end.
        frames_in = self.frames_in
        batch_end = frames_in + batch_size
        ts_us = 0
        try:
            for ts_us, frame in self.source:
                verdict = process(frame, ts_us, 0)
                if stack.outbox:
                    self._flush_outbox(ts_us)
                if sink is not None and verdict == VERDICT_FORWARD:
                    sink(ts_us, frame)
                    self.frames_out += 1
                frames_in += 1
                if frames_in == batch_end:
                    batch_end += batch_size
                    self.frames_in = frames_in
                    stack.end_batch()
                    self._flush_outbox(ts_us)
        finally:
            self.frames_in = frames_in
            # Also when the input is cut short: what was read is complete
            # and its flows end (reason eof) before the error is reported.
            stack.finish()
            self._flush_outbox(ts_us)
        return 0


def run_offline(mctx, pcap_path, write_path=None, batch_size=64):
    with PcapReader(pcap_path) as reader:
        with (PcapWriter(write_path, snaplen=WRITE_SNAPLEN) if write_path else nullcontext()) as writer:
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
             f"callback errors {c['callback_errors']}" + (
                 f" ({counts_text(stack)})" if stack.callback_errors else ""),
             _limits_text(stack)]
    return "mosxdp: " + ", ".join(p for p in parts if p)


def _limits_text(stack):
    """The limits (core/stack.py LIMIT_COUNTERS) that triggered, and the reassembly memory peak."""
    c = stack.counters
    parts = [f"{label} {c[name]}" for name, label in (
        ("half_open_evicted", "half-open evicted"), ("half_open_timeouts", "half-open timeouts"),
        ("memcap_refused", "memcap refused"), ("refused_fragments", "fragments refused"),
        ("buffer_overruns", "buffer overruns"), ("window_overruns", "window overruns"),
        ("rst_ignored", "rst ignored"), ("syn_payload_ignored", "syn payload ignored"),
        ("bad_tcp_options", "bad tcp options"), ("urgent_data", "urgent data"))
        if c.get(name)]
    peak = getattr(stack, "reassembly_mem_peak", 0)
    if peak:
        parts.append(f"reassembly memory peak {peak >> 10} KiB")
    return "limits: " + ", ".join(parts) if parts else ""


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
    """Drive the context from AF_XDP sockets on its interfaces until a signal.

    The hybrid fast path (mosxdp.engine.hybrid): the XDP program filters with the sockets'
    monitor filters as they are now, and the stack's kernel verdicts are kept in its
    verdict map (the processor is the stack wrapped by HybridProcessor)."""
    from .hybrid import HybridProcessor, kernel_filter
    from ..io.privileges import after_setup
    from .live import LiveEngine
    config = mctx.config
    kfilter = kernel_filter(mctx.stack)
    processor = HybridProcessor(mctx.stack)
    program = "mosxdp"
    if kfilter.filter_all_ip:
        def program(eng):
            from ..io.xdp import XdpProgram
            return XdpProgram(eng.ifaces, peers={eng.ifaces[0]: eng.ifaces[1]} if eng.inline else None,
                              mode=eng.xdp_mode, fail_closed=eng.fail_closed,
                              filter_c_expr=kfilter.c_expr, force=eng.force, filter_all_ip=True)
    engine = LiveEngine(
        config.iface, config.peer, processor,
        queues=None if config.queues == "all" else config.queues,
        frame_count=config.frame_count, ring_size=config.ring_size,
        batch_size=min(config.batch_size, config.ring_size),
        zero_copy=config.bind == "zerocopy", xdp_mode=config.xdp_mode,
        fail_closed=config.fail_closed, force=config.force,
        filter_c_expr=kfilter.c_expr, program=program)
    warned = []

    def filters_changed():
        # The program was compiled with the filters of the start: say so once when
        # they change (a socket or filter added later may miss frames the kernel keeps).
        if not warned and kernel_filter(mctx.stack) != kfilter:
            warned.append(True)
            print("mosxdp: warning: monitor filters changed after the start; the kernel "
                  "filter keeps the start's (restart to apply them)", file=sys.stderr)
    engine.filters_changed = filters_changed
    mctx.engine = engine
    mctx.kernel_filter = kfilter
    mctx.stack.wall_offset_us = (time.time_ns() - time.monotonic_ns()) // 1000
    with contextlib.ExitStack() as resources:
        resources.enter_context(engine)
        processor.program = engine.program
        status = LiveStatus(engine, mctx.stack)
        if getattr(mctx, "stats", False):
            processor.tick = status.tick
        metrics = None
        if config.metrics_port:
            metrics = resources.enter_context(
                MetricsServer(config.metrics_port, status, start_thread=False))
        # Set-up is done (program attached, sockets and UMEM, map fds, metrics port):
        # drop the capabilities the loop and the exit do not need, before any thread.
        privileges = after_setup(config.keep_privileges)
        line = privileges.pop("line", None)
        if line and (getattr(mctx, "stats", False) or not privileges["bounding_set_reduced"]):
            print("mosxdp: " + line, file=sys.stderr)
        if metrics is not None:
            metrics.start()
        engine.run()
        # Read while the sockets and the program still exist: the accounting
        # of every UMEM frame and the XDP counters.
        stats = mctx.live_stats = engine.final_stats()
        stats["kernel_filter"] = {"c_expr": kfilter.c_expr, "all_ip": kfilter.filter_all_ip,
                                  "why": kfilter.why}
        stats["verdict_entries_left"] = processor.occupancy()
        stats["privileges"] = privileges
        processor.program = None
    return 0
