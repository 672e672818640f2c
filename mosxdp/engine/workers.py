"""Offline runs split over several worker processes (``--workers N``): docs/workers.md.

The parent has set the context up (the app's setup ran, its outputs are open) and forks N
workers, each with that context. It then reads the capture once (a classic pcap file,
mapped), gives each frame to a worker by the symmetric flow hash of core/split.py, and
sends each worker, per chunk of frames, where its frames are in the file and their
numbers in the input, with the timestamp of the last frame of every batch. Frames do not
cross the pipes: each worker maps the file itself and reads its frames from the page cache.

A worker runs the offline engine's loop on its frames with the frame numbers of the input:
its batches end where one worker's would (every batch_size frames of the input, whoever's
they are), at the clock of the batch's last frame, so timers, idle timeouts and
CONN_NEW_DATA come at the same points of the input as with one worker. Everything it
writes through mosx_open_output, and the frames --write gets, is kept with its place in
the run (Stack.frame_no and Stack.order_key, the phase and the flow order one context
would run it in), and the parent merges the workers' records by that place: the output is
the one worker's. flowdump's files are made by the workers themselves in the shared
directory (one file per direction of a flow, all of a 4-tuple's flows on one worker).

This module is the parent's side (fork, feed, wait, merge); the input's split and the
messages are engine/split_feed.py, a worker's run engine/split_worker.py, the merge of
their records engine/split_merge.py.
"""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import signal
import sys
import tempfile
import time

from ..core.stack import StopMonitor
from ..io.pcap import PcapReader, PcapWriter
from .forked import ForkedParent, add_dirs, describe_status
from .offline import WRITE_SNAPLEN, cut_line, summary_line
from .result import RunResult
from .split_feed import MSG, Scan, split_records
from .split_merge import merge_output, merge_write
from .split_worker import WorkerFailed, child

__all__ = ["SplitRun", "WorkerFailed", "check_input", "max_workers"]

PIPE_BYTES = 1 << 20


def max_workers() -> int:
    return 4 * (os.cpu_count() or 1)


def check_input(config) -> None:
    """What a split run needs of its input: offline a classic pcap file (the workers map
    it), live an RX queue per worker (engine/live_workers.py). OSError (EINVAL) with one
    line otherwise."""
    workers = config.workers
    if config.iface is not None:
        from .live_workers import check_live
        check_live(config)
        return
    if config.pcap == "-":
        raise OSError(errno.EINVAL, f"--workers {workers}: each worker reads the capture "
                                    "itself: give a file, not the standard input")
    with PcapReader(config.pcap) as reader:
        if reader.compression or reader.format != "pcap":
            what = f"{reader.compression}-compressed" if reader.compression else "pcapng"
            raise OSError(errno.EINVAL, f"--workers {workers}: {config.pcap} is {what}; a "
                          "split run maps a classic pcap file (convert it first: editcap -F "
                          "pcap IN OUT, after decompressing)")


class SplitRun(ForkedParent):
    """The parent's side: fork the workers, split the input, merge what they wrote."""

    def __init__(self, mctx, module, app, print_stats=False):
        super().__init__(mctx, module, app, print_stats)
        self.done = [None] * self.workers         # pids of the workers that ended

    def run(self) -> RunResult:
        mctx = self.mctx
        config = mctx.config
        workers = self.workers
        started = time.perf_counter()
        outputs = mctx.outputs
        writer = None
        if config.write:
            out = outputs.open_file(config.write, binary=True)
            writer = PcapWriter(config.write, snaplen=WRITE_SNAPLEN, out=out)
        # What setup wrote stays the parent's, written once.
        outputs.flush()
        spooldir = self._dir = tempfile.mkdtemp(prefix="mosxdp-workers-")
        scan = Scan(config.pcap)
        pipes = []
        try:
            for index in range(workers):
                rd, wr = os.pipe()
                try:
                    import fcntl
                    fcntl.fcntl(wr, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
                except OSError:
                    pass     # the default size: the parent waits more often
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    os.close(wr)
                    for other in pipes:
                        os.close(other)
                    child(mctx, self.module, self.app, index, workers,
                           os.fdopen(rd, "rb", buffering=PIPE_BYTES), spooldir)
                os.close(rd)
                pipes.append(wr)
                self.pids[pid] = index
            frames, last_ts, error = self._feed(scan, pipes)
            results = self._wait()
            # The network sinks' threads, after the forks (a forked child gets no thread):
            # the parent sends the merged records.
            outputs.start()
            frames_out = self._merge(results, writer, scan, frames)
        except BaseException:
            self._kill()
            raise
        finally:
            for fd in pipes:
                try:
                    os.close(fd)
                except OSError:
                    pass
            scan.close()
            if writer is not None:
                writer.flush()
            shutil.rmtree(spooldir, ignore_errors=True)
        seconds = time.perf_counter() - started
        self._aggregate(results)
        stops = sorted((r["stop"][2], r["stop"]) for r in results if r["stop"])
        if self.print_stats:
            print(summary_line(mctx.stack, frames, frames_out, seconds)
                  + f", workers {workers}", file=sys.stderr)
        snap = max(r.get("cut_length", 0) for r in results)
        line = cut_line(mctx.stack.counters, "the capture's snap length"
                        + (f" ({snap} bytes)" if snap else ""))
        if line:
            print(line, file=sys.stderr)
        if error is not None:
            raise error
        if stops:
            message, code, _ = stops[0][1]
            raise StopMonitor(message, code)
        return RunResult("offline", frames, frames_out, seconds, "end of input",
                         workers=self.worker_stats)

    def _feed(self, scan, pipes):
        stopped = set()

        def send(worker, message):
            if worker in stopped:
                return False
            try:
                _write_all(pipes[worker], message)
            except BrokenPipeError:
                # A worker that stopped the run (sys.exit in a callback, on_callback_error
                # 'stop') left with its results; any other end is a failure.
                pid = self.ended(worker)
                self._result(worker, pid)
                stopped.add(worker)
                return False
            return True

        frames, last_ts, error = split_records(scan, self.workers, self.mctx.config.batch_size, send)
        for worker in range(self.workers):
            send(worker, MSG.pack(-1, frames, last_ts, 0))
            os.close(pipes[worker])
            pipes[worker] = -1
        return frames, last_ts, error

    def ended(self, worker):
        """Wait for a worker whose pipe broke: its pid; WorkerFailed unless it exited 0."""
        pid = next((p for p, i in self.pids.items() if i == worker), None)
        _, status = os.waitpid(pid, 0)
        del self.pids[pid]
        self.done[worker] = pid
        if status != 0:
            raise WorkerFailed(f"worker {worker} (pid {pid}) {describe_status(status)} during the "
                               "run; the run is stopped")
        return pid

    def _wait(self):
        while self.pids:
            pid, status = os.wait()
            index = self.pids.pop(pid, None)
            if index is None:
                continue
            if status != 0:
                raise WorkerFailed(f"worker {index} (pid {pid}) {describe_status(status)} during "
                                   "the run; the run is stopped")
            self.done[index] = pid
        return [self._result(i, pid) for i, pid in enumerate(self.done)]

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

    def _merge(self, results, writer, scan, frames):
        items = self.mctx.outputs.items
        for number, item in enumerate(items):
            paths = [dict(r["spools"]).get(number) for r in results]
            if any(paths):
                merge_output(item, paths)
        for r in results:
            add_dirs(items, r["dirs"])
        if writer is None:
            return 0
        return merge_write(writer, scan, frames, [r["write"] for r in results])

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


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        done = os.write(fd, view)
        view = view[done:]
