"""What the two live engines share (engine/live.py: AF_XDP; engine/observe.py: copies
through a BPF ring buffer): the unwinding of the set-up with signals held back, the stop,
the program's counters, the interfaces' transmit drops, the signals that stop a run.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time

from ..io.netdev import tx_dropped

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


class LiveDatapath:
    """The base of a live engine: the settings both engines take. A subclass sets
    ``counters``, enters its set-up into an ExitStack kept as ``_stack``, and may define
    ``_closed()`` (run after the unwinding)."""

    def __init__(self, ifaces: list, inline: bool, processor, *, batch_size: int = 64,
                 xdp_mode: str = "native", force: bool = False, filter_c_expr: str | None = None,
                 filter_all_ip: bool = False, keep_attached: bool = False,
                 poll_timeout_ms: int = 100):
        self.ifaces = ifaces
        self.inline = inline
        self.processor = processor
        self.batch_size = batch_size
        self.xdp_mode = xdp_mode
        self.force = force
        self.filter_c_expr = filter_c_expr
        self.filter_all_ip = filter_all_ip
        self.keep_attached = keep_attached
        self.poll_timeout_ms = poll_timeout_ms
        self.program = None
        self._stack: contextlib.ExitStack | None = None
        self._stop = threading.Event()
        self.stop_reason: str | None = None   # why run() returned (see stop())
        self._xdp_at_stop: dict | None = None
        self._tx_dropped_at_start: dict[str, int | None] = {}

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Unwind everything (reverse order). SIGINT/SIGTERM are held back meanwhile so
        that a signal cannot cut the teardown short; they are delivered afterwards."""
        stack, self._stack = self._stack, None
        if stack is None:
            return
        old = signal.pthread_sigmask(signal.SIG_BLOCK, set(_STOP_SIGNALS))
        try:
            stack.close()
        finally:
            self._closed()
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _closed(self) -> None:
        """What the engine drops once unwound."""

    def stop(self, reason: str = "stop") -> None:
        """Ask ``run`` to return (thread- and signal-safe); the first ``reason`` given
        is kept as ``stop_reason``."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop.set()

    def xdp_counters(self) -> dict | None:
        """The XDP program's counters (None without them, or when they cannot be read)."""
        if self.program is None or not hasattr(self.program, "counters"):
            return None
        try:
            return dict(self.program.counters())
        except OSError:
            return None

    def _start_tx_dropped(self) -> None:
        self._tx_dropped_at_start = {ifn: tx_dropped(ifn) for ifn in self.ifaces}

    def _device_tx_dropped(self) -> int:
        """Frames the interfaces dropped on transmit since the set-up (those that say)."""
        dropped = 0
        for ifn, start in self._tx_dropped_at_start.items():
            now = tx_dropped(ifn) if start is not None else None
            if now is not None:
                dropped += now - start
        return dropped

    def _processor_stats(self, out: dict) -> dict:
        proc = self.processor
        if proc is not None and isinstance(getattr(proc, "counters", None), dict):
            out["processor"] = dict(proc.counters)
        return out

    @contextlib.contextmanager
    def _stop_signals(self, handle_signals: bool):
        """SIGINT/SIGTERM/SIGHUP stop the run while inside (in the main thread and with
        ``handle_signals``; SIGHUP not when it is ignored, as under nohup); on the way out
        the handlers are restored and a run that ended by itself has ``stop_reason``
        "duration"."""
        saved = {}
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in _STOP_SIGNALS:
                if sig != signal.SIGHUP or signal.getsignal(sig) != signal.SIG_IGN:
                    saved[sig] = signal.signal(sig, self._stop_on_signal)
        try:
            yield
        finally:
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        if self.stop_reason is None:
            self.stop_reason = "duration"

    def _stop_on_signal(self, signum, _frame) -> None:
        self.stop(f"signal {signal.Signals(signum).name}")
