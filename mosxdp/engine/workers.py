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
"""
from __future__ import annotations

import errno
import heapq
import marshal
import mmap
import os
import pickle
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from array import array

from ..core.split import MULTIPLIER, frame_worker
from ..core.stack import VERDICT_FORWARD, VERDICT_REPLACED, StopMonitor
from ..io.pcap import _MAX_RECORD, PcapFormatError, PcapReader, PcapWriter
from .offline import WRITE_SNAPLEN, summary_line
from .result import RunResult

# Frames per message to the workers (rounded up to whole batches); a pipe holds a few.
CHUNK_FRAMES = 4096
PIPE_BYTES = 1 << 20
_MSG = struct.Struct("<qqqq")         # first frame number, frames, own frames, batch ends
_FRAME_KEY = (0,)                     # Stack.order_key while a frame is processed
_TEARDOWN_KEY = (99,)
_PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", False), b"\xa1\xb2\xc3\xd4": (">", False),
               b"\x4d\x3c\xb2\xa1": ("<", True), b"\xa1\xb2\x3c\x4d": (">", True)}
_MASK64 = (1 << 64) - 1
# --write records: an app's frame (sent, or the frames replacing the input's), or the
# input's frame dropped or changed in place.
_OUT, _VERDICT = 0, 1


def max_workers() -> int:
    return 4 * (os.cpu_count() or 1)


def check_input(config) -> None:
    """What a split run needs of its input: a classic pcap file (the workers map it).
    OSError (EINVAL) with one line otherwise."""
    workers = config.workers
    if config.iface is not None:
        raise OSError(errno.EINVAL, f"[datapath] workers = {workers}: live runs use one worker "
                                    "for now; several workers split offline runs (--pcap)")
    if config.pcap == "-":
        raise OSError(errno.EINVAL, f"--workers {workers}: each worker reads the capture "
                                    "itself: give a file, not the standard input")
    with PcapReader(config.pcap) as reader:
        if reader.compression or reader.format != "pcap":
            what = f"{reader.compression}-compressed" if reader.compression else "pcapng"
            raise OSError(errno.EINVAL, f"--workers {workers}: {config.pcap} is {what}; a "
                          "split run maps a classic pcap file (convert it first: editcap -F "
                          "pcap IN OUT, after decompressing)")


class WorkerFailed(Exception):
    """A worker died or failed: the run's one line (the command line prints it as an
    error)."""


class _Scan:
    """The records of a classic pcap file, mapped: (frame number, record offset, ts)."""

    def __init__(self, path):
        self.path = path
        self.file = open(path, "rb")
        size = os.fstat(self.file.fileno()).st_size
        self.map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self.order, self.nanosecond = _PCAP_MAGIC[bytes(self.map[:4])]
        self.record = struct.Struct(self.order + "IIII")
        self.size = size

    def close(self):
        if isinstance(self.map, mmap.mmap):
            try:
                self.map.close()
            except BufferError:
                pass      # a view is still held (a failed merge): freed with it
        self.file.close()

    def check_end(self, off):
        """At the last whole record: the reader's error for what follows it, if any (a
        record cut short), so that the message is the one of a run on one worker."""
        if off == self.size:
            return None
        try:
            with PcapReader(self.path) as reader:
                for _ in reader:
                    pass
        except PcapFormatError as exc:
            return exc
        return None


def _split(scan, workers, batch_size, send):
    """Read the records and give each its worker; ``send(worker, message)`` says whether
    the worker goes on (False: it stopped, and so does the split, after this chunk).
    Returns (frames, last ts, error or None)."""
    mm = scan.map
    size = scan.size
    caplen_at = struct.Struct(scan.order + "I").unpack_from
    ts_at = struct.Struct(scan.order + "II").unpack_from
    ns = scan.nanosecond
    last = 24
    addresses = struct.Struct("!II").unpack_from     # the hash of core/split.py, inline
    tuple4 = struct.Struct("!IIHH").unpack
    known = {}
    mul = MULTIPLIER
    chunk = -(-CHUNK_FRAMES // batch_size) * batch_size
    off = 24
    index = 0

    def _ts(at):
        sec, frac = ts_at(mm, at)
        return sec * 1_000_000 + (frac // 1000 if ns else frac)

    while True:
        first = index
        own = [(array("q"), array("q")) for _ in range(workers)]
        ends = array("q")
        limit = first + chunk
        while index < limit and off + 16 <= size:
            caplen = caplen_at(mm, off + 8)[0]
            start = off + 16
            if start + caplen > size or caplen > _MAX_RECORD:
                break     # check_end names it
            # A TCP segment of untagged IPv4 without options: its worker by its addresses
            # and ports, kept per direction (a dict lookup costs less than the hash).
            if caplen >= 38 and mm[start + 12:start + 15] == b"\x08\x00\x45" \
                    and mm[start + 23] == 6 and not (mm[start + 20] & 0x3F or mm[start + 21]):
                key = mm[start + 26:start + 38]
                worker = known.get(key)
                if worker is None:
                    src, dst, sport, dport = tuple4(key)
                    worker = known[key] = ((((((src << 16) | sport) * mul & _MASK64) >> 32)
                                            ^ ((((dst << 16) | dport) * mul & _MASK64) >> 32))
                                           * workers) >> 32
                    if len(known) > 1 << 16:
                        known.clear()
            elif caplen >= 38 and mm[start + 12:start + 15] == b"\x08\x00\x45":
                # Not TCP, or a fragment: by the address pair.
                src, dst = addresses(mm, start + 26)
                worker = (((((src << 16) * mul & _MASK64) >> 32)
                           ^ (((dst << 16) * mul & _MASK64) >> 32)) * workers) >> 32
            else:
                worker = frame_worker(memoryview(mm)[start:start + caplen], workers)
            numbers, offsets = own[worker]
            numbers.append(index)
            offsets.append(off)
            last = off
            off = start + caplen
            index += 1
            if index % batch_size == 0:
                ends.append(_ts(last))
        if index == first:
            break
        going = True
        for worker, (numbers, offsets) in enumerate(own):
            going &= send(worker, _MSG.pack(first, index - first, len(numbers), len(ends))
                          + numbers.tobytes() + offsets.tobytes() + ends.tobytes())
        if not going:
            return index, _ts(last), None
        if index < limit:
            break
    return index, _ts(last) if index else 0, scan.check_end(off)


class _Spool:
    """A worker's records of one output, each with its place in the run."""

    def __init__(self, stack, path):
        self.stack = stack
        self.path = path
        self.file = open(path, "wb", buffering=1 << 16)
        self.seq = 0

    def write(self, data):
        stack = self.stack
        self.seq += 1
        marshal.dump(((stack.frame_no, stack.order_key or _FRAME_KEY, self.seq), bytes(data)),
                     self.file)

    def close(self):
        self.file.close()


class _PlacedOutbox(list):
    """Stack.outbox of a worker with --write: each frame an app sends keeps the place in
    the run where it was sent (a frame's callbacks, or a phase of a batch's end), which
    orders it among the other workers' as one worker's outbox would."""

    def __init__(self, stack):
        super().__init__()
        self.stack = stack
        self.places = []

    def append(self, item):
        super().append(item)
        stack = self.stack
        self.places.append((stack.frame_no, stack.order_key or _FRAME_KEY))

    def clear(self):
        super().clear()
        self.places.clear()


class _Verdicts:
    """A worker's --write records: per frame of its own, what differs from "forwarded
    unchanged", and the frames the apps sent, each with its place; written to a file
    as they come (marshal, in blocks)."""

    def __init__(self, stack, path):
        self.stack = stack
        self.outbox = stack.outbox = _PlacedOutbox(stack)
        self.path = path
        self.file = open(path, "wb")
        self.block = []
        self.seq = 0

    def add(self, number, kind, ts, frames, key=_FRAME_KEY):
        self.seq += 1
        self.block.append(((number, key, self.seq), kind, ts, frames))
        if len(self.block) >= 1024:
            marshal.dump(self.block, self.file)
            self.block = []

    def sent(self, ts):
        outbox = self.outbox
        for (frame, _port), (number, key) in zip(outbox, outbox.places):
            self.add(number, _OUT, ts, [frame], key)
        outbox.clear()

    def close(self):
        if self.block:
            marshal.dump(self.block, self.file)
        self.file.close()
        return self.path


def _records(path):
    with open(path, "rb") as f:
        while True:
            try:
                yield marshal.load(f)
            except EOFError:
                return


class _Worker:
    """One worker process's run (after the fork)."""

    def __init__(self, mctx, index, path, write, spooldir):
        self.mctx = mctx
        self.stack = mctx.stack
        self.index = index
        self.path = path
        self.write = write
        self.spooldir = spooldir
        self.frames_in = 0
        self.verdicts = None
        self.spools = []

    def prepare(self):
        mctx = self.mctx
        mctx.cpu = self.index
        mctx.outputs.worker = self.index
        for number, item in enumerate(mctx.outputs.items):
            if hasattr(item, "redirect"):
                spool = _Spool(self.stack, os.path.join(self.spooldir, f"w{self.index}-o{number}"))
                item.redirect(spool.write)
                self.spools.append((number, spool))
        if self.write:
            self.verdicts = _Verdicts(self.stack, os.path.join(self.spooldir, f"w{self.index}-write"))
        mctx.engine = self

    def filters_changed(self):
        """Offline, filters are applied in user space only."""

    def run(self, rd):
        stack = self.stack
        process = stack.process
        f = open(self.path, "rb")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)   # writable, private
        view = memoryview(mm)
        with open(self.path, "rb") as probe:
            order, ns = _PCAP_MAGIC[probe.read(4)]
        rec = struct.Struct(order + "IIII").unpack_from
        batch_size = self.mctx.config.batch_size
        verdicts = self.verdicts
        outbox = stack.outbox
        frames_in = 0
        last_ts = 0
        stop = total = None
        try:
            while True:
                head = rd.read(_MSG.size)
                if len(head) < _MSG.size:
                    raise WorkerFailed("the parent stopped sending frames")
                first, count, n_own, n_ends = _MSG.unpack(head)
                if first < 0:
                    total, last_ts = count, n_own
                    break
                body = rd.read(8 * (2 * n_own + n_ends))
                numbers = array("q")
                numbers.frombytes(body[:8 * n_own])
                offsets = array("q")
                offsets.frombytes(body[8 * n_own:16 * n_own])
                ends = array("q")
                ends.frombytes(body[16 * n_own:])
                k = 0
                for b in range(n_ends + 1):
                    end_no = first + (b + 1) * batch_size - 1 if b < n_ends else first + count
                    while k < n_own and numbers[k] <= end_no:
                        number = numbers[k]
                        off = offsets[k]
                        k += 1
                        sec, frac, caplen, _ = rec(mm, off)
                        ts = sec * 1_000_000 + (frac // 1000 if ns else frac)
                        frame = view[off + 16:off + 16 + caplen]
                        stack.frame_no = number
                        frames_in += 1
                        if verdicts is None:
                            process(frame, ts, 0)
                            if outbox:
                                outbox.clear()
                            continue
                        original = bytes(frame)
                        verdict = process(frame, ts, 0)
                        if outbox:
                            verdicts.sent(ts)
                        if verdict == VERDICT_FORWARD:
                            # (memoryview == bytes compares item by item: 20x slower)
                            if frame.tobytes() != original:
                                verdicts.add(number, _VERDICT, ts, [bytes(frame)])
                        else:
                            verdicts.add(number, _VERDICT, ts,
                                         [bytes(f) for f in stack.wire_frames]
                                         if verdict == VERDICT_REPLACED else [])
                    if b < n_ends:
                        stack.frame_no = end_no
                        stack.now = ends[b]
                        stack.end_batch()
                        self._flush(ends[b])
        except StopMonitor as exc:
            stop = (str(exc), exc.code, stack.frame_no)
        finally:
            self.frames_in = frames_in
            # As the offline engine: what was read ends (reason eof), also when cut short
            # (then at the frame where it stopped).
            if total is not None:
                stack.frame_no = total
                stack.now = last_ts
            try:
                stack.finish()
            except StopMonitor as exc:
                stop = stop or (str(exc), exc.code, stack.frame_no)
            self._flush(stack.now)
            view.release()
        return stop

    def _flush(self, ts):
        """The frames the apps sent at the end of a batch or of the input."""
        if self.stack.outbox:
            if self.verdicts is not None:
                self.verdicts.sent(ts)
            self.stack.outbox.clear()

    def teardown(self, module, app):
        """The app's teardown in this worker (what it writes comes after everything else)."""
        self.stack.order_key = _TEARDOWN_KEY
        if module is not None and hasattr(module, "teardown"):
            module.teardown(app)

    def result(self, stop, error, seconds):
        stack = self.stack
        for _number, spool in self.spools:
            spool.close()
        write_path = None
        if self.verdicts is not None:
            write_path = self.verdicts.close()
        dirs = [(number, item.files, item.incomplete, item.lost, item.error, item.error_name)
                for number, item in enumerate(self.mctx.outputs.items)
                if hasattr(item, "write_at")]
        return {
            "counters": dict(stack.counters), "malformed": dict(stack.malformed),
            "callback_errors": dict(stack.callback_errors),
            "reassembly_mem_peak": stack.reassembly_mem_peak, "frames_in": self.frames_in,
            "spools": [(number, spool.path) for number, spool in self.spools],
            "write": write_path, "dirs": dirs, "stop": stop, "error": error,
            "seconds": seconds, "pid": os.getpid(),
        }


def _pin(index, workers):
    """Worker ``index`` on its own CPU when the process may use at least ``workers``."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if len(cpus) < workers:
        return None
    os.sched_setaffinity(0, {cpus[index]})
    return cpus[index]


def _exception_line(exc):
    from ..core.events import exception_site
    text = str(exc).splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}{': ' + text if text else ''} at {exception_site(exc)}"


def _child(mctx, module, app, index, workers, rd, spooldir):
    """A worker's life after the fork; never returns."""
    code = 0
    try:
        _pin(index, workers)
        worker = _Worker(mctx, index, mctx.config.pcap, mctx.config.write, spooldir)
        worker.prepare()
        started = time.perf_counter()
        error = None
        stop = None
        try:
            stop = worker.run(rd)
        except KeyboardInterrupt:
            error = "interrupted"
        except WorkerFailed as exc:
            error = str(exc)
        except Exception as exc:
            error = _exception_line(exc)
        try:
            worker.teardown(module, app)
        except Exception as exc:
            error = error or f"teardown: {_exception_line(exc)}"
        result = worker.result(stop, error, time.perf_counter() - started)
        with open(os.path.join(spooldir, f"w{index}.result"), "wb") as f:
            pickle.dump(result, f)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _describe(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {sig} ({signal.Signals(sig).name})"
    return f"exited with status {os.WEXITSTATUS(status)}"


class SplitRun:
    """The parent's side: fork the workers, split the input, merge what they wrote."""

    def __init__(self, mctx, module, app, print_stats=False):
        self.mctx = mctx
        self.module = module
        self.app = app
        self.print_stats = print_stats
        self.workers = mctx.config.workers
        self.pids = {}                            # running workers: pid -> index
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
        scan = _Scan(config.pcap)
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
                    _child(mctx, self.module, self.app, index, workers,
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

        frames, last_ts, error = _split(scan, self.workers, self.mctx.config.batch_size, send)
        for worker in range(self.workers):
            send(worker, _MSG.pack(-1, frames, last_ts, 0))
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
            raise WorkerFailed(f"worker {worker} (pid {pid}) {_describe(status)} during the "
                               "run; the run is stopped")
        return pid

    def _wait(self):
        while self.pids:
            pid, status = os.wait()
            index = self.pids.pop(pid, None)
            if index is None:
                continue
            if status != 0:
                raise WorkerFailed(f"worker {index} (pid {pid}) {_describe(status)} during "
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
                _merge_output(item, paths)
        for r in results:
            for number, files, incomplete, lost, error, name in r["dirs"]:
                out = items[number]
                out.files += files
                out.incomplete += incomplete
                out.lost += lost
                if error is not None and out.error is None:
                    out.error, out.error_name = error, name
        if writer is None:
            return 0
        return _merge_write(writer, scan, frames, [r["write"] for r in results])

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


def _merge_output(item, paths):
    """The workers' records of one output into it, in the order of the run."""
    streams = [((key[0], key[1], worker, key[2]), data)
               for worker, path in enumerate(paths) if path
               for key, data in _records(path)]
    streams.sort(key=lambda r: r[0])
    combine = getattr(item, "combine", None)
    i = 0
    while i < len(streams):
        place = streams[i][0][:2]
        j = i + 1
        while j < len(streams) and streams[j][0][:2] == place:
            j += 1
        group = streams[i:j]
        if combine is not None and len({r[0][2] for r in group}) > 1:
            for record in combine([data for _, data in group]):
                item.write(record)
        else:
            for _, data in group:
                item.write(data)
        i = j


def _verdict_records(worker, path):
    """One worker's --write records, in its order (which is the run's)."""
    last = None
    with open(path, "rb") as f:
        while True:
            try:
                block = marshal.load(f)
            except EOFError:
                return
            for key, kind, ts, data in block:
                place = (key[0], key[1], worker, key[2])
                if last is not None and place < last:
                    raise WorkerFailed(f"worker {worker}: its --write records are out of order "
                                       f"({last} then {place})")
                last = place
                yield place, kind, ts, data


def _merge_write(writer, scan, frames, paths):
    """--write: the input's frames in their order, as the workers' verdicts say, with the
    frames the apps sent where one worker sends them. A run of frames forwarded unchanged
    whose records PcapWriter would write as they are in the input (little-endian
    microseconds, not cut by a snap length) is copied in one write."""
    records = heapq.merge(*(_verdict_records(w, p) for w, p in enumerate(paths)),
                          key=lambda r: r[0])
    mm = scan.map
    rec = scan.record.unpack_from
    ns = scan.nanosecond
    verbatim = scan.order == "<" and not ns
    out = writer._f
    view = memoryview(mm)

    def copy(start, end):
        for at in range(start, end, 1 << 20):
            out.write(view[at:min(end, at + (1 << 20))])

    write = writer.write
    written = 0
    pending = next(records, None)
    off = 24
    run_start = off          # input bytes not yet written, all verbatim records
    for number in range(frames):
        sec, frac, caplen, origlen = rec(mm, off)
        start = off + 16
        end = start + caplen
        if pending is None or pending[0][0] != number:
            # Nothing happened to this frame: forwarded as it came.
            if verbatim and caplen == origlen:
                off = end
                written += 1
                continue
            if run_start < off:
                copy(run_start, off)
            write(sec * 1_000_000 + (frac // 1000 if ns else frac), mm[start:end])
            written += 1
            off = run_start = end
            continue
        if run_start < off:
            copy(run_start, off)
        own = True
        # Sent by its callbacks (before it), then its own verdict; then the batch's end.
        while pending is not None and pending[0][0] == number and pending[0][1] == _FRAME_KEY:
            _, kind, rts, data = pending
            for frame in data:
                write(rts, frame)
                written += 1
            if kind == _VERDICT:
                own = False
            pending = next(records, None)
        if own:
            write(sec * 1_000_000 + (frac // 1000 if ns else frac), mm[start:end])
            written += 1
        while pending is not None and pending[0][0] == number:
            for frame in pending[3]:
                write(pending[2], frame)
                written += 1
            pending = next(records, None)
        off = run_start = end
    if run_start < off:
        copy(run_start, off)
    view.release()
    while pending is not None:
        for frame in pending[3]:
            write(pending[2], frame)
            written += 1
        pending = next(records, None)
    return written
