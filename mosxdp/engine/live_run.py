"""A live run of a context (``LiveRun``): the processor, the AF_XDP or observe-only engine,
the status line and metrics, and the capability drop after set-up. engine/run.py picks it
for a context with an interface (``config.iface``); engine/live_workers.py runs one per
worker of a split live run.
"""
from __future__ import annotations

import contextlib
import sys
import time

from ..core.stack import Stack
from .hybrid import HybridProcessor, kernel_filter
from .kernel_twin import FastForwardProcessor
from .live import LiveEngine
from .observe import ObserveEngine
from .offline import cut_line
from .result import RunResult
from .status import LiveStatus, MetricsServer


class LiveRun:
    """One live run of a context, from AF_XDP sockets on its interfaces until a signal.

    The processor is the stack wrapped by ``FastForwardProcessor`` (a HybridProcessor: its
    kernel verdicts kept in the program's verdict map; stream-only flows fast-forwarded by
    the engine's loop); the XDP program is compiled with the ``KernelFilter`` of the
    sockets as they are at the start. While it runs, ``mctx.engine`` is this object: the API
    calls :meth:`filters_changed` when a filter is bound. ``print_stats``: the status line."""

    def __init__(self, mctx, print_stats=False, *, share=None, program=None, publish=None):
        """``share`` (w, N) and ``program`` (the parent's attached XdpProgram): worker w of
        a live run split over N processes (engine/live_workers.py), on its queues only;
        ``publish(status)`` then runs after each batch and idle wait (the worker's counters
        for its parent's status line and metrics)."""
        config = mctx.config
        self.mctx = mctx
        self.print_stats = print_stats
        self.publish = publish
        self.stack = mctx.stack
        self.kernel_filter = kernel_filter(self.stack)
        # Listeners that need only counters, flags and states (MOSX_STATE_ONLY) get their
        # flows handed to the kernel at their start, and those that need only the streams
        # (MOSX_STREAM_ONLY) theirs fast-forwarded by the engine (engine/kernel_twin.py),
        # unless every frame is to be inspected. (Several contexts on one run, a
        # ContextGroup: no fast forward.)
        self.processor = (FastForwardProcessor(self.stack,
                                               fast_forward=not config.full_inspection)
                          if isinstance(self.stack, Stack) else HybridProcessor(self.stack))
        self.stack.state_only = not config.full_inspection
        # Inline, the receiver of an edited stream acknowledges the edited bytes.
        self.stack.acks_on_wire = config.peer is not None
        if config.observe:
            self.engine = ObserveEngine(
                config.iface, config.peer, self.processor, batch_size=config.batch_size,
                xdp_mode=config.xdp_mode, force=config.force,
                filter_c_expr=self.kernel_filter.c_expr,
                filter_all_ip=self.kernel_filter.filter_all_ip,
                keep_attached=config.peer is not None and not config.detach_on_exit,
                snap=config.observe_snap, program=program,
                worker=share[0] if share is not None else 0)
            self._warned = False
            return
        spec = "mosxdp" if program is None else (lambda _engine: contextlib.nullcontext(program))
        self.engine = LiveEngine(
            config.iface, config.peer, self.processor, share=share, program=spec,
            queues=None if config.queues == "all" else config.queues,
            frame_count=config.frame_count, ring_size=config.ring_size,
            batch_size=min(config.batch_size, config.ring_size),
            zero_copy=config.bind == "zerocopy", xdp_mode=config.xdp_mode,
            fail_closed=config.fail_closed, force=config.force,
            filter_c_expr=self.kernel_filter.c_expr,
            filter_all_ip=self.kernel_filter.filter_all_ip,
            keep_attached=config.peer is not None and not (config.detach_on_exit or config.fail_closed))
        self._warned = False

    def filters_changed(self) -> None:
        """The program was compiled with the filters of the start: say so once when they
        change (a socket or filter added later may miss frames the kernel keeps)."""
        if not self._warned and kernel_filter(self.stack) != self.kernel_filter:
            self._warned = True
            print("mosxdp: warning: monitor filters changed after the start; the kernel "
                  "filter keeps the start's (restart to apply them)", file=sys.stderr)

    def _say_what_is_left(self) -> None:
        """One line at the exit of an inline run: the program left attached as the kernel's
        forwarder (the wire stays up), or detached (the wire is cut, and why)."""
        program, config = self.engine.program, self.mctx.config
        if config.peer is None or program is None:
            return
        left = getattr(program, "left_attached", None)
        if left:
            print("mosxdp: left the XDP program attached to %s as a kernel-only forwarder "
                  "(fail-open: the inline link stays up, unmonitored); `mosxdp detach %s` "
                  "removes it and cuts the link"
                  % (" and ".join(left), " ".join("--iface " + n for n in left)), file=sys.stderr)
        elif getattr(program, "detached", None) and len(program.detached) == len(program.modes):
            why = "--fail-closed" if config.fail_closed else "--detach-on-exit"
            print("mosxdp: detached from %s and %s (%s): the inline link between them is cut "
                  "until a monitor runs again" % (config.iface, config.peer, why), file=sys.stderr)

    def _ticks(self, status_tick):
        """What runs after each batch and idle wait: the outputs' timed flush (buffered
        lines reach their files within a second), and the status line with --stats. A
        live run also says each output's first failed write when it happens."""
        outputs = getattr(self.mctx, "outputs", None)
        if outputs is None:
            return status_tick
        outputs.announce = True
        if status_tick is None:
            return outputs.tick

        def tick():
            outputs.tick()
            status_tick()
        return tick

    def run(self) -> RunResult:
        from ..io.privileges import after_setup
        mctx, engine, processor = self.mctx, self.engine, self.processor
        config = mctx.config
        mctx.engine = self
        self.stack.wall_offset_us = (time.time_ns() - time.monotonic_ns()) // 1000
        with contextlib.ExitStack() as resources:
            if getattr(engine, "program_spec", "mosxdp") == "mosxdp":   # else a worker: its parent says it
                resources.callback(self._say_what_is_left)  # after the engine closed
            resources.enter_context(engine)
            processor.program = engine.program
            status = LiveStatus(engine, self.stack, print_lines=self.print_stats,
                                warn_percent=config.loss_warning,
                                outputs=getattr(mctx, "outputs", None))
            status_tick = status.tick if status.active else None
            if self.publish is not None:
                publish, own = self.publish, status_tick

                def status_tick():
                    if own is not None:
                        own()
                    publish(status)
            processor.tick = self._ticks(status_tick)
            metrics = None
            if config.metrics_port and self.publish is None:   # a worker's parent serves them
                metrics = resources.enter_context(
                    MetricsServer(config.metrics_port, status, start_thread=False))
            # Set-up is done (program attached, sockets and UMEM, map fds, metrics port):
            # drop the capabilities the loop and the exit do not need, before any thread.
            privileges = after_setup(config.keep_privileges)
            line = privileges.pop("line", None)
            if line and (self.print_stats or not privileges["bounding_set_reduced"]):
                print("mosxdp: " + line, file=sys.stderr)
            if metrics is not None:
                metrics.start()
            outputs = getattr(mctx, "outputs", None)
            if outputs is not None:
                outputs.start()    # the network sinks' threads, without the capabilities
            started = time.perf_counter()
            engine.run()
            seconds = time.perf_counter() - started
            if config.observe:
                snap = config.observe_snap
                line = cut_line(self.stack.counters, f"the observe-only copies ({snap - 1} "
                                f"bytes, observe_snap {snap})")
                if line:
                    print(line, file=sys.stderr)
            # Read while the sockets and the program still exist: the accounting
            # of every UMEM frame and the XDP counters.
            datapath = engine.final_stats()
            result = RunResult(
                "live", datapath["frames"], datapath["forwarded"] + datapath["outbox_sent"],
                seconds, engine.stop_reason, datapath=datapath, kernel_filter=self.kernel_filter,
                verdict_entries_left=processor.occupancy(), privileges=privileges)
            processor.program = None
        return result
