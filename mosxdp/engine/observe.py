"""The observe-only live engine: the kernel forwards, the monitor reads copies.

For apps that only watch (no verdict, edit or injected frame), the XDP program built with
``observe`` (mosxdp.io.xdp.XdpProgram) sends every frame meant for user space on its kernel
path (inline: to the peer through the devmap; passive: XDP_PASS) after copying its first
``snap`` bytes into a BPF ring buffer. This engine reads that ring in place
(mosxdp.io.ringbuf): no AF_XDP socket, no UMEM, no transmit by Python, so the wire runs at
the kernel's speed whatever Python does; what Python cannot keep up with is lost to the
monitor only (``observe_lost``, counted by the program, reported with the other losses),
and the stream reassembly marks the bytes it never saw as missed.

The processor is the same as the AF_XDP engine's (``process(frame, ts_us, port)``,
``end_batch()``, ``advance_clock(ts_us)``, ``finish()``, ``outbox``, and ``keep_frames()``
if it keeps views of frames: called before the ring's space goes back): its verdicts have no
effect (the frame is gone already) and frames it sends are not sent; both are counted
(``verdicts_ignored``, ``outbox_dropped``) and said once.
"""
from __future__ import annotations

import contextlib
import select
import sys
import time

from ..io.ringbuf import RingBuffer
from .datapath import LiveDatapath, monotonic_us as _monotonic_us
from .fast_forward import took
from .kernel_twin import claim, live_claim_table
from .loss import lost_frames

__all__ = ["ObserveEngine", "DEFAULT_SNAP", "DEFAULT_RING_BYTES"]

DEFAULT_SNAP = 2048                 # bytes copied per frame (at most 2047 of them: a 1500-MTU frame whole)
DEFAULT_RING_BYTES = 16 << 20       # ~10,000 full-size frames of slack behind the kernel
_HDR = 24                           # struct mx_observed
_HEAD = __import__("struct").Struct("<QIII")


class ObserveEngine(LiveDatapath):
    """Observe-only datapath around a processor; a context manager like LiveEngine.

    ``iface``/``peer``: as LiveEngine (inline when ``peer`` is given, else passive);
    ``batch_size``: most records handed to the processor between two ``end_batch``;
    ``snap``, ``ring_bytes``: the copy length (a power of two: a copy holds a frame's first
    ``snap - 1`` bytes, and a frame longer than that is handed to the processor cut, its
    length on the wire given by the processor's ``wire_len``) and the ring's size (a power
    of two, at least a page); ``program`` and ``worker``: worker w of a run split over
    several processes (engine/live_workers.py) reads ring w of the parent's attached
    program (the copies of the flows the hash gives it); the other keywords as
    LiveEngine's."""

    inline: bool

    def __init__(self, iface, peer: str | None = None, processor=None, *,
                 snap: int = DEFAULT_SNAP, ring_bytes: int = DEFAULT_RING_BYTES,
                 program=None, worker: int = 0, **settings):
        ifaces = [iface] if isinstance(iface, str) else list(iface)
        if peer is not None:
            ifaces.append(peer)
        # settings: LiveDatapath's (batch_size, xdp_mode, force, filter_c_expr, ...)
        super().__init__(ifaces, peer is not None, processor, **settings)
        self.peer = peer
        self.snap = snap
        self.ring_bytes = ring_bytes
        self.ring: RingBuffer | None = None
        self._shared_program = program
        self.worker = worker
        self.sockets: list = []              # none: the status and loss code read this
        self.umem = None
        self._said_ignored = False
        self.counters = dict.fromkeys((
            "batches", "frames", "forwarded", "dropped", "outbox_sent", "outbox_dropped",
            "verdicts_ignored", "cut_frames", "polls", "idle_timeouts"), 0)
        self.frames_by_port = [0] * len(ifaces)
        # The length on the wire of the record being processed when its copy was cut by the
        # snap length, else 0: the processor's wire_len() (the core parses a cut frame
        # from its headers, as it does a pcap record cut by a capture's snap length).
        self._cut_len = 0

    # ------------------------------------------------------------------ setup
    def __enter__(self) -> "ObserveEngine":
        from ..io.xdp import XdpProgram
        self._start_tx_dropped()
        with contextlib.ExitStack() as stack:
            if self._shared_program is not None:
                self.program = self._shared_program     # the parent's: it detaches it
            else:
                peers = {self.ifaces[0]: self.peer} if self.inline else None
                self.program = stack.enter_context(XdpProgram(
                    self.ifaces[:1] if self.inline else self.ifaces, peers=peers,
                    mode=self.xdp_mode, filter_c_expr=self.filter_c_expr, force=self.force,
                    filter_all_ip=self.filter_all_ip, observe=(self.snap, self.ring_bytes)))
                if self.keep_attached:
                    # The kernel forwards from the start: the wire never depended on us.
                    self.program.keep_attached = True
            fd, size = self.program.observed_ring(self.worker)
            self.ring = stack.enter_context(RingBuffer(fd, size))
            self._stack = stack.pop_all()
        return self

    def _closed(self) -> None:
        self.ring = None

    # ------------------------------------------------------------------ stats
    def lost(self, xdp: dict | None = None) -> dict:
        if xdp is None:
            xdp = self.xdp_counters()
        return lost_frames(self.counters, [], xdp, device_tx_dropped=self._device_tx_dropped())

    def stats(self) -> dict:
        out = dict(self.counters)
        out["frames_by_port"] = list(self.frames_by_port)
        out["accounting"] = None
        out["sockets"] = []
        out["observe"] = {"snap": self.snap, "ring_bytes": self.ring_bytes, "ring": self.worker}
        xdp = self.xdp_counters()
        if xdp is not None:
            out["xdp"] = xdp
        out["lost"] = self.lost(xdp)
        return self._processor_stats(out)

    def final_stats(self) -> dict:
        st = self.stats()
        st["lost"]["tx_unsent_at_exit"] = 0
        return st

    # ------------------------------------------------------------------ loop
    def run(self, duration: float | None = None, *, handle_signals: bool = True) -> dict:
        """Read copies until :meth:`stop`, SIGINT/SIGTERM/SIGHUP or ``duration`` seconds."""
        if self.ring is None:
            raise RuntimeError("ObserveEngine.run() outside its context")
        proc = self.processor
        if proc is not None and hasattr(proc, "wire_len"):
            proc.wire_len = self._wire_len
        with self._stop_signals(handle_signals):
            self._loop(duration)
            # What the kernel copied before the stop is still read.
            while self._batch():
                pass
            if self.processor is not None:
                self.processor.finish()
                self._outbox()
        return self.stats()

    def _loop(self, duration) -> None:
        poller = select.poll()
        poller.register(self.program.observed_ring(self.worker)[0], select.POLLIN)
        deadline = None if duration is None else time.monotonic() + duration
        c = self.counters
        stop = self._stop
        proc = self.processor
        while not stop.is_set():
            if self._batch():
                continue
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                timeout = min(self.poll_timeout_ms, max(1, int(left * 1000)))
            else:
                timeout = self.poll_timeout_ms
            c["polls"] += 1
            if not poller.poll(timeout):
                c["idle_timeouts"] += 1
                if proc is not None:
                    proc.advance_clock(_monotonic_us())
                    self._outbox()

    def _batch(self) -> int:
        """One batch of records through the processor; returns how many."""
        ring = self.ring
        records = ring.take(self.batch_size)
        if not records:
            return 0
        c = self.counters
        proc = self.processor
        by_port = self.frames_by_port
        unpack = _HEAD.unpack_from
        n = len(records)
        if proc is None:
            for rec in records:
                by_port[unpack(rec)[1]] += 1
        else:
            process = proc.process
            ignored = 0
            cut = 0
            # The fast forward (kernel_twin.FastForwardProcessor): the regular frames of its
            # flows, copied whole, are taken before the core (stamped in TCP segment order).
            ff, stack = live_claim_table(proc)
            for rec in records:
                ts_ns, slot, frame_len, cap = unpack(rec)
                by_port[slot] += 1
                frame = rec[_HDR:_HDR + cap]
                if frame_len != cap:
                    cut += 1
                    self._cut_len = frame_len
                else:
                    if self._cut_len:
                        self._cut_len = 0
                    if ff:
                        ts_us = ts_ns // 1000
                        flow = claim(ff, frame, ts_us, stack.tcp_segments + 1)
                        if flow is not None:
                            took(stack, flow, frame, ts_us)
                            continue
                if process(frame, ts_ns // 1000, slot):
                    ignored += 1
            if ignored:
                c["verdicts_ignored"] += ignored
                self._say_ignored()
            if cut:
                c["cut_frames"] += cut
            # The flows' last packets point into the ring: copied before its space goes
            # back to the kernel (the batch's CONN_NEW_DATA callbacks may read them).
            keep = getattr(proc, "keep_frames", None)
            if keep is not None:
                keep()
        del records
        ring.release()
        c["batches"] += 1
        c["frames"] += n
        c["forwarded"] += n
        if proc is not None:
            proc.end_batch()
            self._outbox()
        return n

    def _wire_len(self) -> int:
        return self._cut_len

    def _outbox(self) -> None:
        proc = self.processor
        if proc is not None and proc.outbox:
            self.counters["outbox_dropped"] += len(proc.outbox)
            proc.outbox.clear()
            self._say_ignored()

    def _say_ignored(self) -> None:
        if not self._said_ignored:
            self._said_ignored = True
            print("mosxdp: warning: observe-only: the kernel forwards every frame, so drop "
                  "and modify verdicts and frames the app sends have no effect (counted as "
                  "verdicts_ignored and outbox_dropped)", file=sys.stderr, flush=True)
