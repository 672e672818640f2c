"""Live runs split over several worker processes (``--iface A [--peer B] --workers N``):
docs/workers.md.

An AF_XDP socket gets only the frames of the (interface, RX queue) it is bound to, so the
queue decides the worker: worker w owns the RX queues q with q % N == w of every monitored
interface. Both directions of a flow reach one worker when the RSS is symmetric (a real
NIC's symmetric hash; on a veth testbed mosxdp/demo/steer.py); the XDP program computes the
flow's symmetric hash (the offline split's) and counts the frames that came in on another
worker's queue (``frames_off_worker``): those still go to the queue's worker.

The parent compiles and attaches the XDP program once (its maps: the XSKMAP, the verdicts,
the counters, shared by all), after the app's set-up, then forks the workers. Each is an
ordinary live run (``LiveRun``) on its queues with the parent's program: its own UMEM,
rings and sockets (put in the XSKMAP by itself), pinned to a CPU, its own flow table,
timers and app state; it drops its capabilities after its set-up and runs the app's
teardown at its end. The outputs the app opened are shared: the workers write whole
records to them as they come (appended, not reordered).

The parent waits: SIGINT, SIGTERM or SIGHUP is passed on to every worker, and so is the
stop of a worker whose app stopped it (sys.exit in a callback); a worker that dies is said
on one line and the run goes on (its sockets close, the kernel drops them from
the XSKMAP, and its queues take the program's no-socket path: fail-open); once all have
ended the parent adds up their counters, reads the program's, and detaches it (or, inline,
leaves it as the kernel's forwarder, as one worker does).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time

from ..core.stack import StopMonitor
from ..io.bpfstructs import MX_OBSERVE_MAX_RINGS
from .hybrid import kernel_filter
from .observe import DEFAULT_RING_BYTES
from .result import RunResult
from .forked import ForkedParent, add_dirs, describe_status, exception_line, pin, worker_exit
from .status import LiveStatus

__all__ = ["LiveSplitRun", "check_live"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STATUS_INTERVAL = 1.0      # seconds between a worker's snapshots, and between status lines
_PR_SET_PDEATHSIG = 1
# Of the frames lost by reason, those read from the program's counters (shared by all
# workers: taken once, from the parent's reading) and from the interfaces (the largest).
_XDP_LOSSES = {"xsk_redirect_error": "xsk_redirect_other", "observe_lost": "observe_lost",
               "forward_redirect_error": "forward_redirect_err"}
_DEVICE_LOSSES = ("tx_device_drop",)
# The workers' dicts of counts that add up: the processor's (kernel verdicts merged, ...) and
# the UMEM accounting (N UMEMs: their frames and where they are).
_SUMMED = ("processor", "accounting")


def check_live(config) -> None:
    """What a split live run needs: with AF_XDP sockets, an RX queue per worker on every
    interface; observe-only (a ring per worker, the flow hash picks it), at most
    MX_OBSERVE_MAX_RINGS workers. OSError (EINVAL) with one line otherwise."""
    from ..io.netdev import rx_queue_count
    workers = config.workers
    if config.observe:
        if workers > MX_OBSERVE_MAX_RINGS:
            raise OSError(errno.EINVAL, f"--workers {workers}: observe-only runs split over "
                                        f"at most {MX_OBSERVE_MAX_RINGS} workers (a ring each)")
        return
    for name in filter(None, (config.iface, config.peer)):
        try:
            available = rx_queue_count(name)
        except OSError:
            continue     # preflight names the missing interface
        bound = available if config.queues == "all" else min(config.queues, available)
        if bound < workers:
            raise OSError(errno.EINVAL, f"--workers {workers}: {name} has {bound} RX "
                          f"queue{'s' if bound != 1 else ''} to bind; each worker owns the queues "
                          f"q with q % {workers} == its index, so at most {bound} workers")


class LiveSplitRun(ForkedParent):
    """The parent's side: attach the program, fork the workers, supervise, add up."""

    def __init__(self, mctx, module, app, print_stats=False):
        super().__init__(mctx, module, app, print_stats)
        self.died = []             # lines of the workers that failed
        self.stop_reason = None
        self._off_worker_said = False

    def run(self) -> RunResult:
        from ..io.xdp import XdpProgram
        mctx = self.mctx
        config = mctx.config
        inline = config.peer is not None
        kf = kernel_filter(mctx.stack)
        program = XdpProgram(
            [config.iface] + ([config.peer] if inline else []),
            peers={config.iface: config.peer} if inline else None, mode=config.xdp_mode,
            fail_closed=config.fail_closed, filter_c_expr=kf.c_expr, force=config.force,
            filter_all_ip=kf.filter_all_ip, workers=self.workers,
            observe=(config.observe_snap, DEFAULT_RING_BYTES) if config.observe else None)
        started = time.perf_counter()
        self._dir = tempfile.mkdtemp(prefix="mosxdp-live-workers-")
        results = [None] * self.workers
        try:
            with contextlib.ExitStack() as resources:
                resources.callback(self._say_what_is_left, program)
                resources.enter_context(program)
                if inline and not (config.detach_on_exit or config.fail_closed):
                    program.keep_attached = True    # the wire stays up after the run
                    # (observe-only: the kernel forwards from the start)
                # What set-up wrote stays the parent's, written once.
                mctx.outputs.flush()
                saved = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS
                         if not (sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN)}
                try:
                    for index in range(self.workers):
                        self._fork(index, program)
                    # After the forks: the workers have neither the port nor the thread.
                    status = SplitStatus(self._dir, self.workers, program, mctx.stack)
                    if config.metrics_port:
                        from .status import MetricsServer
                        resources.enter_context(MetricsServer(config.metrics_port, status))
                    self._wait(program, status if self.print_stats else None)
                    self._check_off_worker(program)    # frames of the last second
                finally:
                    for sig, handler in saved.items():
                        signal.signal(sig, handler)
                    self._kill()
                try:
                    xdp = dict(program.counters())
                except OSError:
                    xdp = None
                entries = _occupancy(program)
            for index in range(self.workers):
                results[index] = self._result(index)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
        seconds = time.perf_counter() - started
        return self._aggregate(results, xdp, entries, kf, seconds)

    # ------------------------------------------------------------------ the workers
    def _fork(self, index, program):
        sys.stdout.flush()
        sys.stderr.flush()
        # The stop signals held back across the fork: a child gets one only once its own
        # handler is in place (it unblocks them then), never the parent's.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, set(_STOP_SIGNALS))
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            _child(self.mctx, self.module, self.app, program, index, self.workers, self._dir,
                   old, parent)
        self.pids[pid] = index
        signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _on_signal(self, signum, _frame):
        if self.stop_reason is None:
            self.stop_reason = f"signal {signal.Signals(signum).name}"
        self._tell_workers()

    def _tell_workers(self):
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def _wait(self, program, lines=None):
        """Until every worker has ended; ``lines``: the SplitStatus whose line is printed
        every second (--stats)."""
        last = lines.snapshot() if lines is not None else None
        next_line = time.monotonic() + STATUS_INTERVAL
        while self.pids:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.05)
                if time.monotonic() >= next_line:
                    next_line += STATUS_INTERVAL
                    self._check_off_worker(program)
                    if lines is not None:
                        snap = lines.snapshot()
                        print(LiveStatus.status_line(last, snap) + f", workers {len(self.pids)}",
                              file=sys.stderr, flush=True)
                        last = snap
                continue
            index = self.pids.pop(pid, None)
            if index is None:
                continue
            if status == 0 and self.stop_reason is None:
                # A worker ends by itself when an app stopped it (sys.exit in a callback,
                # on_callback_error 'stop'): the run stops, as one worker's would.
                result = self._result(index)
                if result is not None and result["stop"]:
                    self.stop_reason = "stop"
                    self._tell_workers()
            if status != 0:
                if self.mctx.config.observe:
                    share = (f"ring {index} goes unread: the kernel forwards its flows, their "
                             "copies are lost to the monitor")
                else:
                    share = f"queues (q % {self.workers} == {index}) fail open"
                line = (f"mosxdp: error: worker {index} (pid {pid}) {describe_status(status)}; its "
                        f"{share}, the other workers go on")
                print(line, file=sys.stderr, flush=True)
                self.died.append(line)

    def _check_off_worker(self, program):
        """Once: frames came in on a queue of another worker than their flow's (the NIC's
        RSS is not symmetric), so their flows are seen half by each worker."""
        if self._off_worker_said:
            return
        try:
            off = program.counters()["frames_off_worker"]
        except (OSError, KeyError):
            return
        if off:
            self._off_worker_said = True
            print(f"mosxdp: warning: {off} frame(s) came in on a queue of another worker than "
                  f"their flow's: the interfaces' RSS hash is not symmetric, so such flows are "
                  f"seen half by each of two workers (make RSS symmetric, docs/datapath.md "
                  f"\"Workers\", or run --workers 1)", file=sys.stderr, flush=True)

    def _kill(self):
        """Workers still running when the parent leaves by an exception."""
        for pid in list(self.pids):
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            self.pids.pop(pid, None)

    def _result(self, index):
        try:
            with open(os.path.join(self._dir, f"w{index}.result"), "rb") as f:
                return pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError):
            return None

    # ------------------------------------------------------------------ the end
    def _say_what_is_left(self, program):
        config = self.mctx.config
        if config.peer is None:
            return
        if program.left_attached:
            left = program.left_attached
            print("mosxdp: left the XDP program attached to %s as a kernel-only forwarder "
                  "(fail-open: the inline link stays up, unmonitored); `mosxdp detach %s` "
                  "removes it and cuts the link"
                  % (" and ".join(left), " ".join("--iface " + n for n in left)), file=sys.stderr)
        elif program.detached and len(program.detached) == len(program.modes):
            why = "--fail-closed" if config.fail_closed else "--detach-on-exit"
            print("mosxdp: detached from %s and %s (%s): the inline link between them is cut "
                  "until a monitor runs again" % (config.iface, config.peer, why), file=sys.stderr)

    def _aggregate(self, results, xdp, entries, kf, seconds):
        mctx = self.mctx
        stack = mctx.stack
        counters = stack._counters
        datapath = {}
        lost = {}
        workers = []
        privileges = None
        errors = []
        for index, r in enumerate(results):
            if r is None:
                workers.append({"index": index, "failed": True})
                continue
            if r["error"]:
                errors.append(f"worker {index} (pid {r['pid']}): {r['error']}")
            for key, value in r["counters"].items():
                if key != "tcp_segments":
                    counters[key] = counters.get(key, 0) + value
            stack.tcp_segments += r["counters"].get("tcp_segments", 0)
            for name in ("malformed", "callback_errors"):
                into = getattr(stack, name)
                for key, value in r[name].items():
                    into[key] = into.get(key, 0) + value
            stack.reassembly_mem_peak = max(stack.reassembly_mem_peak, r["reassembly_mem_peak"])
            dp = r["datapath"] or {}
            for key, value in dp.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    datapath[key] = datapath.get(key, 0) + value
                elif key in _SUMMED and isinstance(value, dict):
                    into = datapath.setdefault(key, {})
                    for k, v in value.items():
                        if isinstance(v, int) and not isinstance(v, bool):
                            into[k] = into.get(k, 0) + v
            for key, value in (dp.get("lost") or {}).items():
                if key in _DEVICE_LOSSES:
                    lost[key] = max(lost.get(key, 0), value)
                elif key not in _XDP_LOSSES:
                    lost[key] = lost.get(key, 0) + value
            if "accounting_error" in dp:
                datapath.setdefault("accounting_error", f"worker {index}: {dp['accounting_error']}")
            privileges = privileges or r["privileges"]
            self._outputs(r)
            workers.append({"index": index, "pid": r["pid"], "cpu": r["cpu"],
                            "queues": r["queues"], "frames": r["frames"],
                            "forwarded": r["forwarded"], "seconds": round(r["seconds"], 3),
                            "flows_created": r["counters"].get("flows_created", 0),
                            "exit_reason": r["exit_reason"]})
        for key, name in _XDP_LOSSES.items():
            lost[key] = (xdp or {}).get(name, 0)
        datapath["lost"] = lost
        if mctx.config.observe:
            datapath["observe"] = {"snap": mctx.config.observe_snap,
                                   "ring_bytes": DEFAULT_RING_BYTES, "rings": self.workers}
        datapath["xdp"] = xdp
        datapath["workers_failed"] = len(self.died)
        frames = datapath.get("frames", 0)
        out = datapath.get("forwarded", 0) + datapath.get("outbox_sent", 0)
        self.errors = errors
        reason = self.stop_reason or next((w["exit_reason"] for w in workers
                                           if w.get("exit_reason")), "stop")
        result = RunResult("live", frames, out, seconds, reason, datapath=datapath,
                           kernel_filter=kf, verdict_entries_left=entries,
                           privileges=privileges, workers=workers)
        self._reports([r for r in results if r is not None])
        stop = [r["stop"] for r in results if r and r["stop"]]
        for line in errors:
            print(f"mosxdp: error: {line}", file=sys.stderr)
        if stop:
            raise StopMonitor(stop[0][0], stop[0][1])
        if self.died or errors:
            raise WorkersFailed(result, len(self.died) + len(errors))
        return result

    def _reports(self, results):
        """The workers' report lines (each worker's in its order), the i-th of every worker
        combined when they all wrote as many (a worker that died wrote none)."""
        items = self.mctx.outputs.items
        for number in sorted({n for r in results for n in r["reports"]}):
            item = items[number]
            lists = [r["reports"].get(number, []) for r in results]
            if item.combine is not None and len(lists) > 1 and len(set(map(len, lists))) == 1:
                records = [record for group in zip(*lists) for record in item.combine(list(group))]
            else:
                records = [record for records in lists for record in records]
            for record in records:
                item.write(record)
            item.flush()

    def _outputs(self, r):
        """A worker's output failures and flowdump counts onto the parent's outputs."""
        outputs = self.mctx.outputs
        items = outputs.items
        for number, error, lost in r["failed_outputs"]:
            item = items[number]
            item.lost += lost
            if item.error is None:
                item.error = error
                outputs._failed(item)
        add_dirs(items, r["dirs"])


class WorkersFailed(Exception):
    """Workers of a live split run died or failed: the run's result is ``result``."""

    def __init__(self, result, count):
        super().__init__(f"{count} worker(s) failed")
        self.result = result


def _occupancy(program):
    try:
        return program.verdict_count()
    except (OSError, AttributeError):
        return None


def _child(mctx, module, app, program, index, workers, spooldir, sigmask, parent):
    """A worker's life after the fork (the stop signals blocked until its handler is in
    place, then ``sigmask``); never returns."""
    from .live_run import LiveRun

    def body():
        # The parent gone (even by SIGKILL), the worker stops too.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        cpu = pin(index, workers)
        mctx.cpu = index
        mctx.outputs.worker = index
        # The app's report lines (mosx_open_report) go to the parent, which writes them
        # once, combined (every other output is written by the worker itself).
        reports = {}
        for number, item in enumerate(mctx.outputs.items):
            if item.kind == "stderr":
                item.redirect(reports.setdefault(number, []).append)
        run = LiveRun(mctx, False, share=(index, workers), program=program,
                      publish=Publisher(os.path.join(spooldir, f"w{index}.snap")))
        engine = run.engine

        def stop(signum, _frame):
            engine.stop(f"signal {signal.Signals(signum).name}")
        # Before and after the loop (whose own handlers do the same), a stop signal stops
        # the worker at its next step, never cuts a set-up or a teardown short.
        for sig in _STOP_SIGNALS:
            if not (sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN):
                signal.signal(sig, stop)
        signal.pthread_sigmask(signal.SIG_SETMASK, sigmask)
        if os.getppid() != parent:    # it died before the death signal was asked for
            os._exit(1)
        started = time.perf_counter()
        error = stop_info = None
        result = None
        try:
            result = run.run()
        except StopMonitor as exc:
            stop_info = (str(exc), exc.code)
        except Exception as exc:
            error = exception_line(exc)
        try:
            if module is not None and hasattr(module, "teardown"):
                module.teardown(app)
        except Exception as exc:
            error = error or f"teardown: {exception_line(exc)}"
        outputs = mctx.outputs
        outputs.flush()
        outputs.close_sinks()    # this worker's network sinks drain (bounded)
        outdirs = [(number, item) for number, item in enumerate(outputs.items)
                   if item.kind == "dir"]
        for _number, item in outdirs:
            item.finish()        # its writer thread's files made, written and counted
        stack = mctx.stack
        datapath = result.datapath if result is not None else None
        return {
            "pid": os.getpid(), "cpu": cpu, "error": error, "stop": stop_info,
            "queues": sorted({s["queue"] for s in (datapath or {}).get("sockets", [])}),
            "frames": result.frames_in if result else 0,
            "forwarded": result.frames_out if result else 0,
            "seconds": time.perf_counter() - started,
            "exit_reason": result.exit_reason if result else None,
            "counters": dict(stack.counters), "malformed": dict(stack.malformed),
            "callback_errors": dict(stack.callback_errors),
            "reassembly_mem_peak": stack.reassembly_mem_peak,
            "datapath": _picklable(datapath), "privileges": result.privileges if result else None,
            "failed_outputs": [(number, item.error, item.lost)
                               for number, item in enumerate(outputs.items)
                               if getattr(item, "error", None) is not None
                               and item.kind != "dir"],
            "dirs": [(number, item.files, item.incomplete, item.lost, item.error, item.error_name)
                     for number, item in outdirs],
            "reports": reports,
        }
    worker_exit(body, spooldir, index)


def _picklable(value):
    """The datapath's statistics without what does not cross a pickle (an exception)."""
    if isinstance(value, dict):
        return {k: _picklable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_picklable(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)


class Publisher:
    """A worker's side of the live counters: at most once per STATUS_INTERVAL, its
    ``LiveStatus`` snapshot and the core's gauges into ``path`` (replaced whole), for the
    parent's status line and metrics."""

    def __init__(self, path):
        self.path = path
        self._next = 0.0

    def __call__(self, status):
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + STATUS_INTERVAL
        stack = status.stack
        data = {"snap": status.snapshot(), "counters": dict(stack.counters),
                "reassembly_mem": stack.reassembly_mem,
                "reassembly_mem_peak": stack.reassembly_mem_peak}
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "wb") as f:
                pickle.dump(data, f)
            os.replace(tmp, self.path)
        except OSError:
            pass       # the parent's line misses this worker for a second


class _StackView:
    """What the metrics read of a stack: the workers' sums (set by SplitStatus.snapshot)."""

    def __init__(self, stack):
        self.counters = dict(stack.counters)
        self.reassembly_mem = 0
        self.reassembly_mem_peak = stack.reassembly_mem_peak


class SplitStatus:
    """The parent's view of the running workers, as ``LiveStatus.snapshot`` gives one
    worker's: the sums of their last snapshots (a dead worker's last one stays in), the
    program's counters (read here, once: they are the program's, not a worker's)."""

    def __init__(self, spooldir, workers, program, stack):
        self.paths = [os.path.join(spooldir, f"w{i}.snap") for i in range(workers)]
        self.program = program
        self.stack = _StackView(stack)
        self._last = [None] * workers

    def snapshot(self):
        try:
            xdp = dict(self.program.counters())
        except OSError:
            xdp = {}
        out = {"time": time.monotonic(), "frames_in": 0, "frames_out": 0, "dropped": 0,
               "flows": 0, "callback_errors": 0, "lost": {}, "sinks": [],
               "kernel_rx": xdp.get("rx_total", 0), "kernel_to_python": xdp.get("to_xsk", 0)}
        counters, mem, peak = {}, 0, self.stack.reassembly_mem_peak
        for i, path in enumerate(self.paths):
            try:
                with open(path, "rb") as f:
                    self._last[i] = pickle.load(f)
            except (OSError, EOFError, pickle.UnpicklingError):
                pass
            data = self._last[i]
            if data is None:
                continue
            snap = data["snap"]
            for key in ("frames_in", "frames_out", "dropped", "flows", "callback_errors"):
                out[key] += snap[key]
            for key, value in snap["lost"].items():
                if key in _DEVICE_LOSSES:
                    out["lost"][key] = max(out["lost"].get(key, 0), value)
                elif key not in _XDP_LOSSES:
                    out["lost"][key] = out["lost"].get(key, 0) + value
            out["sinks"] += snap["sinks"]
            for key, value in data["counters"].items():
                counters[key] = counters.get(key, 0) + value
            mem += data["reassembly_mem"]
            peak = max(peak, data["reassembly_mem_peak"])
        for key, name in _XDP_LOSSES.items():
            out["lost"][key] = xdp.get(name, 0)
        out["lost_total"] = sum(out["lost"].values())
        if counters:
            self.stack.counters = counters
        self.stack.reassembly_mem, self.stack.reassembly_mem_peak = mem, peak
        return out
