"""Offline runs split over several worker processes (``--workers N``): docs/workers.md.

The parent has set the context up (the app's setup ran, its outputs are open). It reads
the capture once (a classic pcap file; the pass may have begun before the imports, in a
child process: split_feed.begin_plan) and makes the plan every worker reads:
each frame's bucket of the symmetric flow hash of core/split.py and its record's length,
and a table that gives each bucket a worker, balanced over the capture. It then forks N
workers, each with that context and that plan. Each worker maps the file itself, walks
the plan and processes the frames of its buckets: frames never cross a pipe.

A worker runs the offline engine's loop on its frames with the frame numbers of the input:
its batches end where one worker's would (every batch_size frames of the input, whoever's
they are), at the clock of the batch's last frame, so timers, idle timeouts and
CONN_NEW_DATA come at the same points of the input as with one worker. Everything it
writes through mosx_open_output, and the frames --write gets, is kept with its place in
the run (Stack.frame_no and Stack.order_key, the phase and the flow order one context
would run it in), and the parent merges the workers' records by that place: the output is
the one worker's. flowdump's files are made by the workers themselves in the shared
directory (one file per direction of a flow, all of a 4-tuple's flows on one worker).

This module is the parent's side (plan, fork, wait, merge); the plan is
engine/split_feed.py, a worker's run engine/split_worker.py, the merge of their records
engine/split_merge.py.
"""
from __future__ import annotations

import gc
import mmap
import os
import pickle
import select
import shutil
import signal
import sys
import tempfile
import time

from ..core.stack import StopMonitor
from ..io.pcap import PcapWriter
from .forked import ForkedParent, add_dirs, describe_status
from .offline import WRITE_SNAPLEN, cut_line, summary_line
from .result import RunResult
from .split_feed import Scan, plan_split
from .split_input import prepare, spool
from .split_merge import merge_output, merge_write
from .split_worker import BOARD, WorkerFailed, child

__all__ = ["SplitRun", "WorkerFailed", "check_input", "max_workers"]

# A worker's stop slot before it stops the run: past any frame number.
NOT_STOPPED = (1 << 63) - 1


def max_workers() -> int:
    return 4 * (os.cpu_count() or 1)


def check_input(config) -> None:
    """What a split run needs of its input: offline, nothing more than one worker (the
    workers map the capture, or its copy: engine/split_input.py); live, an RX queue per
    worker (engine/live_workers.py). OSError (EINVAL) with one line otherwise."""
    if config.iface is not None:
        from .live_workers import check_live
        check_live(config)


class _Held:
    """An output's merged records kept to be written later (write_out)."""

    def __init__(self, item):
        self.item = item
        self.combine = item.combine
        self.records = []

    def write(self, record):
        self.records.append(record)

    def write_out(self):
        for record in self.records:
            self.item.write(record)
        self.item.flush()


class SplitRun(ForkedParent):
    """The parent's side: plan the input, fork the workers, merge what they wrote."""

    def __init__(self, mctx, module, app, print_stats=False, progress=False):
        super().__init__(mctx, module, app, print_stats)
        self.progress = progress        # the progress line on stderr (a terminal)
        self._done_fds = []     # per worker, the pipe on which it says its result is written
        self._reports = []      # _Held: the app's report lines, written after the run's

    def run(self) -> RunResult:
        mctx = self.mctx
        config = mctx.config
        workers = self.workers
        started = time.perf_counter()
        outputs = mctx.outputs
        writer = None
        spooldir = self._dir = tempfile.mkdtemp(prefix="mosxdp-workers-")
        scan = source = None
        # The board (split_worker.BOARD): each worker's frame when it stopped the run (a
        # callback's sys.exit: the others end at their next batch end past it) and its
        # progress. Shared: an anonymous map, made before the fork.
        shared = mmap.mmap(-1, 8 * BOARD * workers)
        board = memoryview(shared).cast("q")
        try:
            path, name, spooled = spool(config.pcap, spooldir, self.progress)
            source = prepare(path, spooldir, self.progress, name)
            if spooled and path != source.path:
                os.unlink(path)     # copied again (pcapng, compressed): its space back
            scan = Scan(source.path, source.name)
            if config.write:
                # Once the input opened as a capture, as one worker opens it.
                out = outputs.open_file(config.write, binary=True)
                writer = PcapWriter(config.write, snaplen=WRITE_SNAPLEN, out=out)
            # What setup wrote stays the parent's, written once.
            outputs.flush()
            prepared = time.perf_counter()
            plan = plan_split(scan, workers)
            if source.error is not None:
                plan.error = source.error
            planned = time.perf_counter()
            for w in range(workers):
                board[w * BOARD] = NOT_STOPPED
            parent = os.getpid()
            # The objects of the set-up frozen across the forks: a worker's collections
            # do not walk them, so their pages stay shared (gc.freeze's documented use).
            gc.freeze()
            try:
                for index in range(workers):
                    sys.stdout.flush()
                    sys.stderr.flush()
                    rd, wr = os.pipe()
                    pid = os.fork()
                    if pid == 0:
                        os.close(rd)
                        for fd in self._done_fds:
                            os.close(fd)
                        child(mctx, self.module, self.app, index, workers, plan, board,
                              parent, spooldir, wr)
                    os.close(wr)
                    self._done_fds.append(rd)
                    self.pids[pid] = index
            finally:
                gc.unfreeze()
            if writer is not None:
                # The output's pages made while the workers run: the merge only fills them.
                reserve = getattr(writer._f, "reserve", None)
                if reserve is not None:
                    reserve(scan.size)
            results = self._wait(self._progress(scan, board))
            waited = time.perf_counter()
            stops = sorted((r["stop"][2], r["stop"]) for r in results if r["stop"])
            # Stopped by a callback: the input ends at its frame, as with one worker.
            frames = stops[0][0] if stops else plan.frames
            # The network sinks' threads, after the forks (a forked child gets no thread):
            # the parent sends the merged records.
            outputs.start()
            frames_out = self._merge(results, writer, scan, plan, frames)
        except BaseException:
            self._kill()
            raise
        finally:
            for fd in self._done_fds:
                os.close(fd)
            self._done_fds = []
            self._reap()
            board.release()
            shared.close()
            if scan is not None:
                scan.close()
            if source is not None:
                source.close()
            if writer is not None:
                writer.flush()
            shutil.rmtree(spooldir, ignore_errors=True)
        ended = time.perf_counter()
        seconds = ended - started
        self._aggregate(results)
        phases = {"input_spooled": spooled, "input_converted": source.converted,
                  "input_seconds": round(prepared - started, 4),
                  "plan_seconds": round(planned - prepared, 4), "plan_parts": plan.parts,
                  "plan_early": plan.early,
                  "workers_seconds": round(waited - planned, 4),
                  "merge_seconds": round(ended - waited, 4)}
        if self.print_stats:
            print(summary_line(mctx.stack, frames, frames_out, seconds)
                  + f", workers {workers}", file=sys.stderr)
        snap = max(r.get("cut_length", 0) for r in results)
        line = cut_line(mctx.stack.counters, "the capture's snap length"
                        + (f" ({snap} bytes)" if snap else ""))
        if line:
            print(line, file=sys.stderr)
        for held in self._reports:
            held.write_out()
        if plan.error is not None:
            raise plan.error
        if stops:
            message, code, _ = stops[0][1]
            raise StopMonitor(message, code)
        return RunResult("offline", frames, frames_out, seconds, "end of input",
                         workers=self.worker_stats, split=phases)

    def _wait(self, progress=None):
        """Each worker's result, as soon as it says it wrote it (its process may still be
        ending); WorkerFailed at once for a worker that ends without it. ``progress``:
        ticked every ``progress.interval`` meanwhile, closed at the end."""
        poller = select.poll()
        index_of = {}
        for index, fd in enumerate(self._done_fds):
            poller.register(fd, select.POLLIN)
            index_of[fd] = index
        pid_of = {index: pid for pid, index in self.pids.items()}
        results = [None] * self.workers
        timeout = None if progress is None else int(progress.interval * 1000)
        try:
            while index_of:
                for fd, _events in poller.poll(timeout):
                    index = index_of.pop(fd)
                    poller.unregister(fd)
                    if os.read(fd, 1):
                        results[index] = self._result(index, pid_of[index])
                        continue
                    pid = pid_of[index]
                    _, status = os.waitpid(pid, 0)
                    del self.pids[pid]
                    raise WorkerFailed(f"worker {index} (pid {pid}) {describe_status(status)} "
                                       "during the run; the run is stopped")
                if progress is not None:
                    progress.tick(force=not index_of)
        finally:
            if progress is not None:
                progress.close()
        return results

    def _progress(self, scan, board):
        """The progress line of the run (engine/progress.py), as far as its slowest worker
        went, or None."""
        if not self.progress:
            return None
        from .progress import OfflineProgress
        workers = self.workers

        def walked(field):
            return min(board[w * BOARD + field] for w in range(workers))

        return OfflineProgress(os.path.basename(scan.name), scan.size,
                               lambda: max(walked(2), 24), lambda: walked(1),
                               lambda: sum(board[w * BOARD + 3] for w in range(workers)),
                               sys.stderr)

    def _reap(self):
        """The workers' processes, ended or ending (killed when the run failed)."""
        for pid in list(self.pids):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            del self.pids[pid]

    def _result(self, index, pid):
        path = os.path.join(self._dir, f"w{index}.result")
        try:
            with open(path, "rb") as f:
                result = pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError):
            raise WorkerFailed(f"worker {index} (pid {pid}) ended without its results") from None
        if result["error"]:
            raise WorkerFailed(f"worker {index} (pid {pid}): {result['error']}")
        return result

    def _kill(self):
        for pid in list(self.pids):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            self.pids.pop(pid, None)

    def _merge(self, results, writer, scan, plan, frames):
        items = self.mctx.outputs.items
        self._reports = []
        for number, item in enumerate(items):
            paths = [dict(r["spools"]).get(number) for r in results]
            if any(paths):
                if getattr(item, "kind", None) == "stderr":
                    # An app's report lines (mosx_open_report): written after the run's
                    # own lines, where one worker's teardown writes them.
                    held = _Held(item)
                    merge_output(held, paths)
                    self._reports.append(held)
                else:
                    merge_output(item, paths)
        for r in results:
            add_dirs(items, r["dirs"])
        if writer is None:
            return 0
        return merge_write(writer, scan, plan, frames, [r["write"] for r in results],
                           uncut=not any(r["cut_records"] for r in results))

    def _aggregate(self, results):
        stack = self.mctx.stack
        counters = stack._counters
        for r in results:
            for key, value in r["counters"].items():
                if key not in ("frames", "tcp_segments"):
                    counters[key] = counters.get(key, 0) + value
            stack.tcp_segments += r["counters"]["tcp_segments"]
            for key, value in r["malformed"].items():
                stack.malformed[key] = stack.malformed.get(key, 0) + value
            for key, value in r["callback_errors"].items():
                stack.callback_errors[key] = stack.callback_errors.get(key, 0) + value
            stack.reassembly_mem_peak = max(stack.reassembly_mem_peak, r["reassembly_mem_peak"])
        self.worker_stats = [{"frames": r["frames_in"], "seconds": round(r["seconds"], 3),
                              "pid": r["pid"]} for r in results]

