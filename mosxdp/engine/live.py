"""The live engine: AF_XDP sockets on real interfaces feeding a frame processor.

``LiveEngine`` runs a processor (``mosxdp.core.stack.Stack`` or anything with the same
interface: ``process(frame, ts_us, port) -> verdict``, ``outbox``, ``end_batch()``,
``advance_clock(ts_us)``, ``finish()``) on every frame the XDP program redirects to our
sockets:

* inline (``iface`` A, ``peer`` B): A's frames leave through B's TX ring and B's through
  A's, by moving the descriptor inside one shared UMEM (no byte copy); a drop verdict
  returns the frame to a fill ring;
* passive (``iface`` or ``ifaces``): every frame is recycled to the fill ring after
  processing; the processor's outbox frames leave through the monitored interface.

Everything is entered through one ``contextlib.ExitStack`` and unwound in reverse
order: XSKMAP entries removed (the XDP program then takes the kernel path: fail-open,
or drop with ``fail_closed``), sockets and UMEM deleted, XDP program detached (or, with
``keep_attached``, left attached: its kernel path goes on forwarding after the stop).
"""

from __future__ import annotations

import contextlib
import select
import time

from ..io import libxdp as _x
from ..io.xsk import M32, AccountingError, Umem, rx_queue_count, tx_queue_count, \
    xskmap_delete, xskmap_update
from .datapath import LiveDatapath, monotonic_us as _monotonic_us
from .fast_forward import took
from .kernel_twin import claim, live_claim_table
from .live_frames import FrameMoves
from .loss import lost_frames

__all__ = ["LiveEngine", "VERDICT_FORWARD", "VERDICT_DROP", "VERDICT_REPLACED"]

VERDICT_FORWARD = 0
VERDICT_DROP = 1
VERDICT_REPLACED = 2   # forward the processor's wire_frames instead (the size changed)
_POLLIN = select.POLLIN


# The UMEM by default: a ring's worth of frames per socket bound, at least 4096 (one queue
# inline: 2 sockets) and at most 32768 (128 MiB). A fixed 4096 over the sockets of every queue
# left each socket of a 2-queue pair ~1000 frames, too few for one TCP stream's bursts: the
# kernel dropped its frames (fill ring empty) until the stream stalled.
UMEM_FRAMES_MIN, UMEM_FRAMES_MAX = 4096, 32768


def umem_frames(sockets: int, ring_size: int) -> int:
    return max(UMEM_FRAMES_MIN, min(UMEM_FRAMES_MAX, sockets * ring_size))


class _Lane:
    """One RX socket and where its frames go."""

    __slots__ = ("sock", "port", "fwd", "egress")

    def __init__(self, sock, port, fwd, egress):
        self.sock = sock      # the RX socket
        self.port = port      # port number given to the processor
        self.fwd = fwd        # TX socket for forwarded frames (inline), else None
        self.egress = egress  # egress port -> TX socket for outbox frames


class LiveEngine(FrameMoves, LiveDatapath):
    """AF_XDP datapath around a processor. A context manager; :meth:`run` loops.

    Parameters:
      ``iface``: interface A (str), or for passive mode a list of interfaces;
      ``peer``: interface B (inline mode) or None (passive);
      ``processor``: the frame processor; None = forward (inline) / recycle (passive)
        every frame without looking at it (the fast path: descriptors move ring to ring);
      ``queues``: RX queues to bind per interface (default: all of each interface);
      ``share``: (w, N), a worker of a run split over N processes (engine/live_workers.py):
        of those queues, only the q with q % N == w;
      ``frame_count``: UMEM frames (default: ``umem_frames`` of the sockets bound);
      ``ring_size``: size of every RX, TX, fill and completion ring;
      ``batch_size``: most frames taken from one RX ring per batch;
      ``zero_copy``: bind with XDP_ZEROCOPY instead of XDP_COPY; ``need_wakeup``;
      ``xdp_mode``: "native", "generic" or "auto" (how the XDP program is attached);
      ``fail_closed``: the program drops instead of forwarding when no socket is bound;
      ``program``: "mosxdp" (``mosxdp.io.xdp.XdpProgram``, default), "libxdp"
        (libxdp's default per-queue redirect program: tests without ours), or a
        callable ``(engine) -> context manager`` whose value has ``xsks_map_fd`` and
        ``xsk_index(ifname, queue)``;
      ``poll_timeout_ms``: idle wait before ``advance_clock``;
      ``check_accounting``: verify the frame accounting after every loop iteration;
      ``filter_c_expr``: the monitor filter's C expression for the XDP program (None:
        every TCP frame comes to user space); ``filter_all_ip``: the expression also decides
        for non-TCP frames, IP or not (raw sockets); ``force``: replace a foreign XDP program;
      ``keep_attached``: once the sockets are up, the XDP program stays attached when the
        engine closes (inline: its kernel path goes on forwarding between the interfaces,
        fail-open). At the stop the sockets leave the XSKMAP first and the frames already in
        their rings are still handled, so the wire does not pause for the end of the run.
        A stop asked for during the set-up (KeyboardInterrupt) once the program is
        attached does the same; a set-up that fails otherwise leaves its program attached
        only if it replaced a mosxdp program on every interface (the wire was up before).
    """

    def __init__(self, iface, peer: str | None = None, processor=None, *,
                 queues: int | None = None, frame_count: int | None = None,
                 frame_size: int = 4096, ring_size: int = 2048, batch_size: int = 64,
                 zero_copy: bool = False, need_wakeup: bool = True, xdp_mode: str = "native",
                 fail_closed: bool = False, program="mosxdp", poll_timeout_ms: int = 100,
                 check_accounting: bool = False, filter_c_expr: str | None = None,
                 filter_all_ip: bool = False, force: bool = False, keep_attached: bool = False,
                 share: tuple[int, int] | None = None):
        ifaces = [iface] if isinstance(iface, str) else list(iface)
        if not ifaces:
            raise ValueError("LiveEngine needs at least one interface")
        if peer is not None:
            if len(ifaces) != 1:
                raise ValueError("inline mode takes one iface and one peer")
            if peer == ifaces[0]:
                raise ValueError("iface and peer must differ")
            ifaces.append(peer)
        if len(set(ifaces)) != len(ifaces):
            raise ValueError(f"interface listed twice: {ifaces}")
        # Validated where they enter (config.py, the command lines).
        assert xdp_mode in ("native", "generic", "auto"), xdp_mode
        assert 1 <= batch_size <= ring_size, (batch_size, ring_size)
        super().__init__(ifaces, peer is not None, processor, batch_size=batch_size,
                         xdp_mode=xdp_mode, force=force, filter_c_expr=filter_c_expr,
                         filter_all_ip=filter_all_ip, keep_attached=keep_attached,
                         poll_timeout_ms=poll_timeout_ms)
        self.queues = queues
        self.share = share
        self.frame_count = frame_count
        self.frame_size = frame_size
        self.ring_size = ring_size
        self.zero_copy = zero_copy
        self.need_wakeup = need_wakeup
        self.fail_closed = fail_closed
        self.program_spec = program
        self.check = check_accounting
        self.umem: Umem | None = None
        self.lanes: list[_Lane] = []
        self.sockets = []
        self._xskmap = None  # (XSKMAP fd, indexes we set)
        # tx_ring_full: times a full TX ring held frames back (or dropped some: their
        # count is tx_ring_full_dropped)
        self.counters = dict.fromkeys((
            "batches", "frames", "forwarded", "dropped", "outbox_sent", "outbox_dropped",
            "recycled", "tx_ring_full", "tx_ring_full_dropped", "polls", "idle_timeouts",
            "replaced", "replaced_dropped"), 0)
        self.frames_by_port: list[int] = []

    # ------------------------------------------------------------------ setup
    def __enter__(self) -> "LiveEngine":
        with contextlib.ExitStack() as stack:
            try:
                self._open(stack)
            except KeyboardInterrupt:
                # a stop asked for during the set-up (Ctrl-C, or SIGTERM turned into this):
                # once the program is attached, like a stop of the running loop
                if self.keep_attached and hasattr(self.program, "keep_attached"):
                    self.program.keep_attached = True
                raise
            self._stack = stack.pop_all()
        return self

    def _closed(self) -> None:
        self._xskmap = None
        self.lanes, self.sockets = [], []

    def _open(self, stack: contextlib.ExitStack) -> None:
        _x.load()  # a clear error when libxdp is missing, before anything is attached
        self._start_tx_dropped()
        self.lanes, self.sockets = [], []
        nq = {}
        for ifn in self.ifaces:
            avail = rx_queue_count(ifn)
            want = avail if self.queues is None else self.queues
            if not 1 <= want <= avail:
                raise ValueError(f"{ifn} has {avail} RX queue(s); cannot bind {want}")
            own = list(range(want))
            if self.share is not None:
                worker, workers = self.share
                own = [q for q in own if q % workers == worker]
                if not own:
                    raise ValueError(f"{ifn} has {want} RX queue(s) to bind: none for worker "
                                     f"{worker} of {workers}")
            nq[ifn] = own
        nsock = sum(map(len, nq.values()))
        frames = self.frame_count or umem_frames(nsock, self.ring_size)
        use_libxdp = self.program_spec == "libxdp"
        if not use_libxdp:
            self.program = stack.enter_context(self._program_context())
            replaced = getattr(self.program, "replaced", {})
            if (self.keep_attached and len(replaced) == len(self.ifaces)
                    and "foreign" not in replaced.values()):
                self.program.keep_attached = True  # a failure from here leaves the wire up
        bind = _x.XDP_ZEROCOPY if self.zero_copy else _x.XDP_COPY
        if self.need_wakeup:
            bind |= _x.XDP_USE_NEED_WAKEUP
        self.umem = umem = stack.enter_context(Umem(
            frames, self.frame_size, fill_size=self.ring_size, comp_size=self.ring_size,
            bind_flags=bind))
        xdp_flags = {"native": _x.XDP_FLAGS_DRV_MODE, "generic": _x.XDP_FLAGS_SKB_MODE,
                     "auto": 0}[self.xdp_mode]
        by_iface = {}
        for ifn in self.ifaces:
            by_iface[ifn] = [umem.socket(ifn, q, rx_size=self.ring_size, tx_size=self.ring_size,
                                         xdp_flags=xdp_flags, inhibit_prog_load=not use_libxdp)
                             for q in nq[ifn]]
        self.sockets = [s for ifn in self.ifaces for s in by_iface[ifn]]
        # Frames first, then the XSKMAP entries: the kernel redirects only to a socket
        # that has somewhere to put the frame. Each socket gets its share (fewer frames
        # than fill-ring slots, as 4096 frames for 4 rings of 2048: the first sockets
        # must not take them all), 64 kept back for the outbox as in the housekeeping.
        share = max(1, (len(umem.free) - 64) // len(self.sockets))
        for s in self.sockets:
            s.fill_from(umem.free, share)
        if self.program is not None:
            map_fd = self.program.xsks_map_fd
            self._xskmap = (map_fd, entries := [])
            stack.callback(self._unmap, map_fd, entries)
            for s in self.sockets:
                idx = self.program.xsk_index(s.ifname, s.queue)
                xskmap_update(map_fd, idx, s.fd)
                entries.append(idx)
        # lanes: where each socket's frames go
        txq = {ifn: max(1, min(len(by_iface[ifn]), tx_queue_count(ifn))) for ifn in self.ifaces}

        def tx_sock(ifn, q):
            socks = by_iface[ifn]
            return socks[q % txq[ifn]]

        for port, ifn in enumerate(self.ifaces):
            for s in by_iface[ifn]:
                if self.inline:
                    other = self.ifaces[1 - port]
                    egress = [tx_sock(self.ifaces[0], s.queue), tx_sock(self.ifaces[1], s.queue)]
                    self.lanes.append(_Lane(s, port, tx_sock(other, s.queue), egress))
                else:
                    own = tx_sock(ifn, s.queue)
                    self.lanes.append(_Lane(s, port, None, [own] * len(self.ifaces)))
        self.frames_by_port = [0] * len(self.ifaces)
        if self.keep_attached and hasattr(self.program, "keep_attached"):
            self.program.keep_attached = True

    def _program_context(self):
        spec = self.program_spec
        if callable(spec):
            return spec(self)
        if spec != "mosxdp":
            raise ValueError(f"program must be 'mosxdp', 'libxdp' or a callable, not {spec!r}")
        from ..io.xdp import XdpProgram
        peers = {self.ifaces[0]: self.ifaces[1]} if self.inline else None
        return XdpProgram(self.ifaces, peers=peers, mode=self.xdp_mode,
                          fail_closed=self.fail_closed, filter_c_expr=self.filter_c_expr,
                          force=self.force, filter_all_ip=self.filter_all_ip)

    @staticmethod
    def _unmap(map_fd, entries) -> None:
        for idx in entries:
            xskmap_delete(map_fd, idx)
        entries.clear()

    def quiesce(self, settle: float = 0.02) -> None:
        """Take our sockets out of the XSKMAP (frames take the kernel path: forwarded, or
        dropped with fail_closed), let frames in flight land, finish sending."""
        if self._xskmap is not None:
            self._unmap(*self._xskmap)
        time.sleep(settle)
        self._flush_outbox_and_tx()

    def final_stats(self) -> dict:
        """Quiesce, then :meth:`stats` with the checked frame accounting and the audit
        of every frame's place (``accounting_error`` when they do not balance); ``lost``
        also counts the frames still on a TX ring (``tx_unsent_at_exit``)."""
        # the program's counters while our sockets were in
        xdp = self._xdp_at_stop if self._xdp_at_stop is not None else self.xdp_counters()
        self.quiesce()
        st = self.stats()
        if xdp is not None:
            st["xdp_after_quiesce"] = st.get("xdp")
            st["xdp"] = xdp
            st["lost"] = self._lost(st["sockets"], xdp)
        try:
            st["accounting"] = self.umem.check_accounting()
            st["audit"] = self.umem.audit()
        except AccountingError as exc:
            st["accounting_error"] = str(exc)
        st["lost"]["tx_unsent_at_exit"] = (st["accounting"] or {}).get("tx", 0)
        return st

    # ------------------------------------------------------------------ control
    def accounting(self) -> dict:
        return self.umem.accounting()

    def stats(self) -> dict:
        out = dict(self.counters)
        out["frames_by_port"] = list(self.frames_by_port)
        out["accounting"] = self.umem.accounting() if self.umem else None
        out["sockets"] = [s.stats() for s in self.sockets if not s.closed]
        if self.program is not None and hasattr(self.program, "counters"):
            try:
                out["xdp"] = dict(self.program.counters())
            except Exception as exc:  # stats must not fail
                out["xdp"] = {"error": repr(exc)}
        out["lost"] = self._lost(out["sockets"], out.get("xdp"))
        return self._processor_stats(out)

    def _lost(self, sockets: list[dict], xdp: dict | None) -> dict:
        return lost_frames(self.counters, sockets, xdp, zero_copy=self.zero_copy,
                           device_tx_dropped=self._device_tx_dropped())

    def lost(self, xdp: dict | None = None) -> dict:
        """Frames lost so far by reason (mosxdp.engine.loss), from the kernel's statistics
        of every socket and interface, the program's counters ``xdp`` (read here when
        None) and the engine's counters. A few system calls per socket and interface:
        once per status interval, not per batch."""
        if xdp is None:
            xdp = self.xdp_counters()
        return self._lost([s.stats() for s in self.sockets if not s.closed], xdp)

    # ------------------------------------------------------------------ loop
    def run(self, duration: float | None = None, *, handle_signals: bool = True) -> dict:
        """Process frames until :meth:`stop`, SIGINT/SIGTERM/SIGHUP (when run in the main
        thread and ``handle_signals``; SIGHUP not when it is ignored, as under nohup) or
        ``duration`` seconds. Returns :meth:`stats`."""
        if self.umem is None:
            raise RuntimeError("LiveEngine.run() outside its context (use `with LiveEngine(...)`)")
        with self._stop_signals(handle_signals):
            self._loop(duration)
            if self.processor is not None:
                self.processor.finish()
                self._flush_outbox_and_tx()
        return self.stats()

    def _idle(self, poller, deadline) -> bool:
        """Wait for frames; False when it is time to stop."""
        if self._stop.is_set():
            return False
        timeout = self.poll_timeout_ms
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            timeout = min(timeout, max(1, int(left * 1000)))
        for s in self.sockets:
            if s.tx_pending():
                timeout = 0  # the kernel still has frames to send: keep kicking
                s.kick()
        self.counters["polls"] += 1
        events = poller.poll(timeout)
        if not events and timeout:
            self.counters["idle_timeouts"] += 1
            if self.processor is not None:
                self.processor.advance_clock(_monotonic_us())
                self._send_outbox_idle()
        return True

    def _poller(self):
        p = select.poll()
        for s in self.sockets:
            p.register(s.fd, _POLLIN)
        return p

    def _loop(self, duration) -> None:
        """Turns until stopped: one batch from each lane, then the rings' housekeeping, and
        a poll when no lane had frames. What a batch is depends on the processor (one
        helper call per batch; the per-frame work stays inside the helper's own loop)."""
        if self.processor is not None:
            take = self._process_batch
        elif self.inline:
            take = self._forward_batch
        else:
            take = self._recycle_batch
        poller = self._poller()
        deadline = None if duration is None else time.monotonic() + duration
        lanes = self.lanes
        c = self.counters
        stop = self._stop
        while not stop.is_set():
            work = 0
            for ln in lanes:
                work += take(ln)
            if work:
                c["batches"] += 1
                c["frames"] += work
            self._housekeeping()
            if not work and not self._idle(poller, deadline):
                break
            if deadline is not None and work and time.monotonic() > deadline:
                break
        if self.keep_attached and self._xskmap is not None:
            self._hand_over(take)
        if self.processor is None:
            c["forwarded" if self.inline else "recycled"] = c["frames"]

    def _hand_over(self, take) -> None:
        """The stop of an engine that leaves its program attached: the sockets leave the
        XSKMAP (new frames take the kernel path at once), then what is already in the RX
        rings is taken as usual until they stay empty (0.5 s at most)."""
        if hasattr(self.program, "counters"):
            try:
                self._xdp_at_stop = dict(self.program.counters())
            except OSError:
                pass
        self._unmap(*self._xskmap)
        c = self.counters
        quiet_since = None
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            work = 0
            for ln in self.lanes:
                work += take(ln)
            self._housekeeping()
            if work:
                c["batches"] += 1
                c["frames"] += work
                quiet_since = None
                continue
            now = time.monotonic()
            if quiet_since is None:
                quiet_since = now
            elif now - quiet_since > 0.005:  # frames redirected before the unmap have landed
                break
            time.sleep(0.001)

    def _forward_batch(self, ln: _Lane) -> int:
        """No processor, inline: descriptors move from the RX ring to the peer's TX ring."""
        s, fwd_sock = ln.sock, ln.fwd
        n = fwd_sock.tx_forward_from(s, self.batch_size)
        if n:
            self.frames_by_port[ln.port] += n
        elif s.rx_avail():
            self.counters["tx_ring_full"] += 1
            fwd_sock.kick()
            fwd_sock.reap_into(self.umem.free)
        return n

    def _recycle_batch(self, ln: _Lane) -> int:
        """No processor, passive: the frames go straight back to the fill ring."""
        d = ln.sock.rx_take(self.batch_size)
        if d is None:
            return 0
        n = len(d) >> 1
        self._refill(ln.sock, d[0::2])
        self.frames_by_port[ln.port] += n
        return n

    def _process_batch(self, ln: _Lane) -> int:
        """One batch of a lane through the processor. Inline, forwarded frames leave through
        the peer's TX ring and dropped ones go back to the fill ring; passive, every frame
        goes back to the fill ring. Outbox frames leave before the frame that made them."""
        s = ln.sock
        fwd_sock = ln.fwd
        c = self.counters
        umem = self.umem
        limit = self.batch_size
        if fwd_sock is not None:
            space = fwd_sock.tx_free()
            if space < limit:
                fwd_sock.kick()
                fwd_sock.reap_into(umem.free)
                space = fwd_sock.tx_free()
                if space < limit:
                    limit = space
                    if not limit:
                        if s.rx_avail():
                            c["tx_ring_full"] += 1
                        return 0
        d = s.rx_take(limit)
        if d is None:
            return 0
        n = len(d) >> 1
        port = ln.port
        self.frames_by_port[port] += n
        proc = self.processor
        process = proc.process
        buf = umem.buf
        ts = _monotonic_us()
        # The fast forward (kernel_twin.FastForwardProcessor): the regular frames of its
        # flows are taken before the core, and forwarded (stamped in TCP segment order,
        # which orders their history letters).
        ff, stack = live_claim_table(proc)
        # fwd stays None while every frame so far is forwarded and nothing was
        # sent (the common case: then the batch's own descriptor list is what
        # goes out); the first drop or outbox frame switches to a list.
        fwd = None
        recycle = []
        extra = None  # outbox frames for other TX sockets: {sock: flat list}
        try:
            if fwd_sock is None:  # passive: every frame goes back to the fill ring
                fwd = []
                for i in range(0, n + n, 2):
                    a = d[i]
                    frame = buf[a:a + (d[i + 1] & M32)]
                    if ff:
                        flow = claim(ff, frame, ts, stack.tcp_segments + 1)
                        if flow is not None:
                            took(stack, flow, frame, ts)
                            continue
                    process(frame, ts, port)
                    if proc.outbox:
                        extra = self._take_outbox(ln, None, extra)
                recycle = d[0::2]
            else:
                for i in range(0, n + n, 2):
                    a = d[i]
                    frame = buf[a:a + (d[i + 1] & M32)]
                    if ff:
                        flow = claim(ff, frame, ts, stack.tcp_segments + 1)
                        if flow is not None:
                            took(stack, flow, frame, ts)
                            if fwd is not None:
                                fwd.append(a)
                                fwd.append(d[i + 1])
                            continue
                    v = process(frame, ts, port)
                    if proc.outbox:
                        if fwd is None:
                            fwd = d[:i]
                        extra = self._take_outbox(ln, fwd, extra)
                    if v == VERDICT_FORWARD:
                        if fwd is not None:
                            fwd.append(a)
                            fwd.append(d[i + 1])
                    else:
                        if fwd is None:
                            fwd = d[:i]
                        if v == VERDICT_REPLACED:
                            self._put_replacement(a, proc.wire_frames, fwd)
                        else:
                            recycle.append(a)
                if fwd is None:
                    fwd = d
        except BaseException:
            self._give_back(d, fwd or [], extra)
            raise
        if self.inline:
            c["dropped"] += len(recycle)
        else:
            c["recycled"] += n
        if fwd:
            put = fwd_sock.tx_put(fwd)
            c["forwarded"] += put
            if put < len(fwd) >> 1:  # TX ring full: the rest is dropped
                lost = fwd[2 * put::2]
                c["tx_ring_full"] += 1
                c["tx_ring_full_dropped"] += len(lost)
                recycle += lost
        if extra:
            self._send_extra(extra)
        if recycle:
            self._refill(s, recycle)
        proc.end_batch()
        if proc.outbox:
            self._send_outbox_idle()
        return n
