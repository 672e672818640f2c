"""Engines: where a context's frames come from and where its verdicts go.

The offline engine replays a pcap through the core with the packet
timestamps as the clock and writes what inline mode would have transmitted:
forwarded frames (after overwrites, and as MOS_CHOMP/MOS_INSERT edited them), no
dropped frames, and mtcp_sendpkt frames in order, each before the frame whose callbacks
made it. The live
engine (mosxdp.engine.live) drives the same core from AF_XDP sockets; mosxdp.engine.run
chooses between them.
"""
import sys
import time
from contextlib import nullcontext

import cython

from ..core.stack import VERDICT_FORWARD, VERDICT_REPLACED, Stack
from ..io.pcap import PcapReader, PcapWriter
from .callback_log import counts_text
from .fast_forward import deliver
from .kernel_twin import FF_STREAM, TwinProcessor, claim
from .result import RunResult

if not cython.compiled:
    from ..core.flow import Flow
    from ..core.stack_state import StackState


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
        self.seconds = 0.0
        self.progress = None          # with tick(): called after each batch (a progress line)
        mctx.engine = self
        # A pcap reader knows which frames its capture cut (a snap length): the core
        # parses those from their headers, and the sink gets their length on the wire.
        wire_len = getattr(source, "wire_len", None)
        if wire_len is not None:
            self.stack.wire_len = wire_len
        self._wire_len = wire_len
        # The kernel's verdicts, in process (engine/kernel_twin.py): the frames of a flow
        # handed to the kernel are counted by the twin as the XDP program counts them live.
        # (Several contexts on one engine, a ContextGroup: their stacks count them.) It
        # fast-forwards the flows of MOSX_STATE_ONLY listeners (not with --full-inspection).
        config = getattr(mctx, "config", None)
        full = config is not None and config.full_inspection
        self.twin = (TwinProcessor(self.stack, fast_forward=not full)
                     if isinstance(self.stack, Stack) else None)

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

    def _sink_cut(self, ts_us, frame, verdict, wire):
        if verdict == VERDICT_FORWARD:
            frames = (frame,)
        elif verdict == VERDICT_REPLACED:
            frames = self.stack.wire_frames
        else:
            return
        for out in frames:
            if len(out) == len(frame):
                self.sink(ts_us, out, wire)
            else:
                self.sink(ts_us, out)
            self.frames_out += 1

    # Compiled, a frame the twin kept updates its flow and the stack as C struct members
    # (offline.pxd): `state` is the stack when there is a twin (a Stack), else None.
    @cython.locals(flow=Flow, state=StackState)
    def run(self) -> RunResult:
        """Every frame of the source through the stack, then the stack's end of run."""
        started = time.perf_counter()
        stack = self.stack
        process = stack.process
        sink = self.sink
        batch_size = self.batch_size
        # The frame count lives in a local while the loop runs (cheaper than an attribute):
        # stored at each batch's end and, also when an exception cuts the run short, at the end.
        frames_in = self.frames_in
        batch_end = frames_in + batch_size
        outputs = getattr(self.mctx, "outputs", None)
        tick = outputs.tick if outputs is not None else _no_tick
        if outputs is not None:
            outputs.start()        # the network sinks' threads
        if self.progress is not None:
            tick = _both(tick, self.progress.tick)
        ts_us = 0
        wire_len = self._wire_len
        twin = self.twin
        table = twin.table if twin is not None else {}
        processor = twin if twin is not None else stack
        lru, half_open = (stack.lru, stack.half_open) if twin is not None else (None, None)
        state = stack if twin is not None else None
        try:
            for ts_us, frame in self.source:
                flow = None
                if table and not stack.raw_sockets and (wire_len is None or not wire_len()):
                    flow = claim(table, frame, ts_us, frames_in + 1)
                if flow is not None:
                    # Kept by the kernel's verdict: the flow is active as the core would
                    # have it (its clock, last frame, place in the LRU and half-open orders).
                    state.now = flow.last_ts = ts_us
                    state.tcp_segments += 1
                    flow.last_no = state.frame_no
                    if flow.fast_forward == FF_STREAM:
                        deliver(state, flow, frame)   # its payload into the stream
                    lru.move_to_end(flow)
                    if half_open and flow in half_open:
                        half_open.move_to_end(flow)
                    if sink is not None and flow.kernel_verdict != "drop":
                        sink(ts_us, frame)
                        self.frames_out += 1
                else:
                    verdict = process(frame, ts_us, 0)
                    if twin is not None and stack.kernel_updates:
                        twin.apply()   # at once: the next frame may be the flow's
                    if stack.outbox:
                        self._flush_outbox(ts_us)
                    if sink is None:
                        pass
                    elif wire_len is not None and wire_len():
                        # A record its capture cut goes out cut, with its length on the wire
                        # (an edit keeps a cut frame's length: sink(ts, frame, wire length)).
                        self._sink_cut(ts_us, frame, verdict, wire_len())
                    elif verdict == VERDICT_FORWARD:
                        sink(ts_us, frame)
                        self.frames_out += 1
                    elif verdict == VERDICT_REPLACED:
                        for edited in stack.wire_frames:
                            sink(ts_us, edited)
                            self.frames_out += 1
                frames_in += 1
                if frames_in == batch_end:
                    batch_end += batch_size
                    self.frames_in = frames_in
                    processor.end_batch()
                    self._flush_outbox(ts_us)
                    tick()
        finally:
            self.frames_in = frames_in
            # Also when the input is cut short: what was read is complete
            # and its flows end (reason eof) before the error is reported.
            processor.finish()
            self._flush_outbox(ts_us)
            self.seconds = time.perf_counter() - started
        return RunResult("offline", self.frames_in, self.frames_out, self.seconds, "end of input")


def _no_tick():
    """Outputs.tick for a context without outputs."""


def _both(first, second):
    def tick():
        first()
        second()
    return tick


def run_offline(mctx, pcap_path, write_path=None, batch_size=64, print_stats=False,
                progress=False) -> RunResult:
    """Replay a pcap file through the context; with ``write_path``, write what inline mode
    would transmit (one of the context's outputs: a failed write is counted there and the
    run goes on). The summary line (``print_stats``) is printed also when the run fails.
    ``progress``: the progress line on stderr (mosxdp.engine.progress; the command line
    asks for it on a terminal)."""
    with PcapReader(pcap_path) as reader:
        writer = None
        if write_path:
            outputs = getattr(mctx, "outputs", None)
            out = outputs.open_file(write_path, binary=True) if outputs is not None else None
            writer = PcapWriter(write_path, snaplen=WRITE_SNAPLEN, out=out)
        with writer if writer is not None else nullcontext():
            engine = OfflineEngine(mctx, reader, writer.write if writer else None, batch_size)
            bar = None
            if progress:
                from .progress import OfflineProgress
                bar = engine.progress = OfflineProgress.of_reader(reader, engine, sys.stderr)
            try:
                return engine.run()
            finally:
                if bar is not None:
                    bar.close()
                if print_stats:
                    print(summary_line(mctx.stack, engine.frames_in, engine.frames_out,
                                       engine.seconds), file=sys.stderr)
                snap = reader.cut_length
                line = cut_line(mctx.stack.counters, "the capture's snap length"
                                + (f" ({snap} bytes)" if snap else ""))
                if line:
                    print(line, file=sys.stderr)


def cut_line(counters, what):
    """The line that says `what` (a capture's snap length, the observe-only copy length)
    cut frames inside their IP packet (None when it did not)."""
    frames, headers = counters["cut_frames"], counters["cut_headers"]
    if not frames and not headers:
        return None
    line = (f"mosxdp: {_count(frames + headers, 'frame')} {'was' if frames + headers == 1 else 'were'} "
            f"cut by {what}: flows tracked from their headers, "
            f"{_count(counters['cut_bytes'], 'payload byte')} missing (holes to the apps, "
            "missed_bytes in connlog)")
    if headers:
        line += (f"; {headers} cut inside {'its' if headers == 1 else 'their'} headers "
                 "counted malformed (cut_headers)")
    return line


def _count(n, noun):
    return f"{n} {noun}{'' if n == 1 else 's'}"


def summary_line(stack, frames_in, frames_out, seconds):
    """One line of what the core saw: frames, flows, and every malformation by kind."""
    c = stack.counters
    parts = [f"frames in {frames_in} out {frames_out}",
             f"{seconds:.2f} s" if seconds else "",
             f"{frames_in / seconds / 1e3:.0f} kpps" if seconds else "",
             f"tcp {c['tcp_segments']}", f"non-tcp {c['non_tcp']}", f"ip fragments {c['ip_fragments']}",
             f"flows {c['flows_created']} (ended {c['flows_ended']}, evicted {c['flows_evicted']})",
             f"udp/icmp flows {c['datagram_flows_created']} (ended {c['datagram_flows_ended']}, "
             f"evicted {c['datagram_flows_evicted']})" if c.get("datagram_flows_created") else "",
             f"orphans {c['orphans']}", f"dropped {c['dropped']}",
             (f"cut frames {c['cut_frames']} (payload bytes missing "
              f"{c['cut_bytes']}, cut in headers {c['cut_headers']})"
              if c.get("cut_frames") or c.get("cut_headers") else ""),
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
