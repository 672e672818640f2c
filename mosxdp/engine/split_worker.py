"""A worker process of a split run (engine/workers.py), after the fork: it walks the
parent's plan of the capture (engine/split_feed.py), runs the offline engine's loop on the
frames of its buckets, and keeps everything it writes with its place in the run, for the
parent's merge (engine/split_merge.py).
"""
from __future__ import annotations

import marshal
import mmap
import os
import shutil
import struct
import time

# The compiled build's declarations (split_worker.pxd); decorators that change nothing in
# plain Python.
import cython

from ..core.stack import VERDICT_FORWARD, VERDICT_REPLACED, StopMonitor
from .forked import exception_line, pin, worker_exit
from .fast_forward import deliver
from .kernel_twin import FF_STREAM, TwinProcessor, claim
from ..io.linklayer import LINK_LAYERS
from .split_feed import PCAP_MAGIC, Scan

if cython.compiled:
    from cython.cimports.cpython.memoryview import PyMemoryView_GET_BUFFER
else:
    from ..core.flow import Flow
    from ..core.stack_state import StackState

FRAME_KEY = (0,)                      # Stack.order_key while a frame is processed
# The board the workers and the parent share (an anonymous map, int64s), per worker: the
# frame where it stopped the run (or past any), the input's frames and bytes it walked, the
# flows it created.
BOARD = 4
TEARDOWN_KEY = (99,)
# --write records: an app's frame (sent, or the frames replacing the input's), or the
# input's frame dropped or changed in place.
OUT, VERDICT = 0, 1


class WorkerFailed(Exception):
    """A worker died or failed: the run's one line (the command line prints it as an
    error)."""


class ParentGone(Exception):
    """The parent of a split run died (kill -9): its workers stop and clean up."""


class _Spool:
    """A worker's records of one output, each with its place in the run; written to a
    file in blocks (marshal: one load per block in the merge, not one per record)."""

    def __init__(self, stack, path):
        self.stack = stack
        self.path = path
        self.file = open(path, "wb")
        self.block = []
        self.seq = 0

    def write(self, data):
        stack = self.stack
        self.seq += 1
        self.block.append(((stack.frame_no, stack.order_key or FRAME_KEY, self.seq), bytes(data)))
        if len(self.block) >= 1024:
            marshal.dump(self.block, self.file)
            self.block = []

    def close(self):
        if self.block:
            marshal.dump(self.block, self.file)
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
        self.places.append((stack.frame_no, stack.order_key or FRAME_KEY))

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

    def add(self, number, kind, ts, frames, key=FRAME_KEY):
        self.seq += 1
        self.block.append(((number, key, self.seq), kind, ts, frames))
        if len(self.block) >= 1024:
            marshal.dump(self.block, self.file)
            self.block = []

    def sent(self, ts):
        outbox = self.outbox
        for (frame, _port), (number, key) in zip(outbox, outbox.places):
            self.add(number, OUT, ts, [frame], key)
        outbox.clear()

    def close(self):
        if self.block:
            marshal.dump(self.block, self.file)
        self.file.close()
        return self.path



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
        self.cut_length = 0           # the longest captured length of a cut frame
        self.cut_records = 0          # frames the capture cut (shorter than on the wire)
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
        # As an offline run: the kernel's verdicts in process, and the flows of
        # MOSX_STATE_ONLY listeners fast-forwarded (engine/kernel_twin.py).
        self.twin = TwinProcessor(self.stack,
                                  fast_forward=not self.mctx.config.full_inspection)

    def filters_changed(self):
        """Offline, filters are applied in user space only."""

    # Compiled, the per-frame offsets, lengths and the timestamp are C integers, the plan's
    # arrays typed memoryviews, and a frame the twin kept updates its Flow and the Stack as
    # C struct members.
    @cython.locals(i=cython.Py_ssize_t, count=cython.Py_ssize_t, number=cython.Py_ssize_t,
                   current=cython.Py_ssize_t, left=cython.Py_ssize_t,
                   batch_size=cython.Py_ssize_t, me=cython.int, workers=cython.Py_ssize_t,
                   off=cython.Py_ssize_t, next_off=cython.Py_ssize_t,
                   own_last=cython.Py_ssize_t, own_ts=cython.longlong,
                   sec=cython.longlong, frac=cython.longlong, caplen=cython.Py_ssize_t,
                   wire=cython.Py_ssize_t, ts=cython.longlong, end_ts=cython.longlong,
                   little=cython.bint, ns=cython.bint, cutting=cython.bint, w=cython.Py_ssize_t,
                   table="const unsigned char[:]", buckets="const unsigned short[:]",
                   sizes="const unsigned int[:]", board="long long[:]",
                   flow=Flow, state=StackState)
    def run(self, plan, board, parent):
        """Walk the plan: process the frames of this worker's buckets, end a batch after
        every batch_size frames of the input (whoever's), and stop early when another
        worker stopped the run (its frame on the ``board``) or the parent is gone. At each
        batch end the worker's progress goes on the board (BOARD above)."""
        stack = self.stack
        process = stack.process
        f = open(self.path, "rb")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)   # writable, private
        view = memoryview(mm)
        with open(self.path, "rb") as probe:
            order, ns = PCAP_MAGIC[probe.read(4)]
        link = LINK_LAYERS.get(Scan.linktype_of(mm, order))
        rec = struct.Struct(order + "IIII").unpack_from
        little = order == "<"
        batch_size = self.mctx.config.batch_size
        me = self.index
        table = plan.table
        workers = len(board) // BOARD
        counters = stack._counters
        verdicts = self.verdicts
        outbox = stack.outbox
        twin = self.twin
        table_kept = twin.table
        lru, half_open = stack.lru, stack.half_open
        state = stack
        frames_in = 0
        ended = None              # (frames, clock) where the input ended for this worker
        stop = None
        # The current frame's length on the wire when its capture cut it, else 0: the core
        # parses such a frame from its headers (Stack.wire_len), as a one-worker run does.
        cut = [0]
        cutting = False           # cut[0] is set (a C flag: no list read per frame)
        stack.wire_len = lambda: cut[0]
        number = 0                # the input's frames walked
        left = batch_size         # frames until the batch ends
        off = next_off = 24
        # The timestamp of this worker's last frame: another link layer's Ethernet header
        # is written over its record header, so a batch end that is this worker's frame
        # takes its time from here.
        own_last = -1
        own_ts = 0
        try:
            for chunk, sizes_array, count in plan.chunks:
                buckets = chunk
                sizes = sizes_array
                for i in range(count):
                    if left == 0:
                        left = batch_size
                        if own_last == number - 1:
                            end_ts = own_ts
                        else:
                            # (once a batch: the struct call costs nothing that matters)
                            sec, frac, caplen, wire = rec(mm, off)
                            end_ts = sec * 1_000_000 + (frac // 1000 if ns else frac)
                        self._end_batch(number - 1, end_ts)
                        if os.getppid() != parent:
                            raise ParentGone
                        board[me * BOARD + 1] = number
                        board[me * BOARD + 2] = next_off
                        board[me * BOARD + 3] = counters["flows_created"]
                        for w in range(workers):
                            if board[w * BOARD] < number:
                                # Another worker stopped the run at a frame this batch
                                # passed: end here, as a run on one worker ends there.
                                ended = (number, end_ts)
                        if ended is not None:
                            break
                    left -= 1
                    current = number
                    number += 1
                    off = next_off
                    next_off = off + sizes[i]
                    if table[buckets[i]] != me:
                        continue
                    if cython.compiled:
                        # The record header read in place, as io/pcap.py's reader does.
                        read_header(cython.cast(cython.p_uchar,
                                                PyMemoryView_GET_BUFFER(view).buf) + off,
                                    little, cython.address(sec), cython.address(frac),
                                    cython.address(caplen), cython.address(wire))
                    else:
                        sec, frac, caplen, wire = rec(mm, off)
                    ts = sec * 1_000_000 + (frac // 1000 if ns else frac)
                    own_last = current
                    own_ts = ts
                    if link is None:
                        frame = view[off + 16:off + 16 + caplen]
                    else:
                        frame, grown = link.ethernet(view, off, off + 16, off + 16 + caplen)
                        caplen += grown
                        wire += grown
                    if caplen < wire:
                        cut[0] = wire
                        cutting = True
                        self.cut_records += 1
                        if caplen > self.cut_length:
                            self.cut_length = caplen
                    elif cutting:
                        cut[0] = 0
                        cutting = False
                    stack.frame_no = current
                    frames_in += 1
                    if table_kept and caplen == wire and not stack.raw_sockets:
                        flow = claim(table_kept, frame, ts, current + 1)
                        if flow is not None:
                            # kept by the kernel's verdict (engine/offline.py's loop)
                            state.now = flow.last_ts = ts
                            state.tcp_segments += 1
                            flow.last_no = current
                            if flow.fast_forward == FF_STREAM:
                                deliver(state, flow, frame)
                            lru.move_to_end(flow)
                            if half_open and flow in half_open:
                                half_open.move_to_end(flow)
                            if verdicts is not None and flow.kernel_verdict == "drop":
                                verdicts.add(current, VERDICT, ts, [])
                            continue
                    if verdicts is None:
                        process(frame, ts, 0)
                        if stack.kernel_updates:
                            twin.apply()
                        if outbox:
                            outbox.clear()
                        continue
                    original = bytes(frame)
                    verdict = process(frame, ts, 0)
                    if stack.kernel_updates:
                        twin.apply()
                    if outbox:
                        verdicts.sent(ts)
                    if verdict == VERDICT_FORWARD:
                        # (memoryview == bytes compares item by item: 20x slower)
                        if frame.tobytes() != original:
                            verdicts.add(current, VERDICT, ts, [bytes(frame)])
                    else:
                        verdicts.add(current, VERDICT, ts,
                                     [bytes(f) for f in stack.wire_frames]
                                     if verdict == VERDICT_REPLACED else [])
                else:
                    continue
                break
            else:
                if left == 0 and number:
                    # The input's last frame ends a batch.
                    self._end_batch(number - 1, plan.last_ts)
                ended = (plan.frames, plan.last_ts)
                board[me * BOARD + 1] = number
                board[me * BOARD + 2] = next_off
        except StopMonitor as exc:
            stop = (str(exc), exc.code, stack.frame_no)
            board[me * BOARD] = stack.frame_no
        finally:
            self.frames_in = frames_in
            # As the offline engine: what was read ends (reason eof), also when cut short
            # (then at the frame where it stopped).
            if ended is not None:
                stack.frame_no, stack.now = ended
            try:
                self.twin.finish()
            except StopMonitor as exc:
                stop = stop or (str(exc), exc.code, stack.frame_no)
            self._flush(stack.now)
            view.release()
        return stop

    def _end_batch(self, end_no, ts):
        stack = self.stack
        stack.frame_no = end_no
        stack.now = ts
        self.twin.end_batch()
        self._flush(ts)

    def _flush(self, ts):
        """The frames the apps sent at the end of a batch or of the input."""
        if self.stack.outbox:
            if self.verdicts is not None:
                self.verdicts.sent(ts)
            self.stack.outbox.clear()

    def teardown(self, module, app):
        """The app's teardown in this worker (what it writes comes after everything else)."""
        self.stack.order_key = TEARDOWN_KEY
        if module is not None and hasattr(module, "teardown"):
            module.teardown(app)

    def result(self, stop, error, seconds):
        stack = self.stack
        for _number, spool in self.spools:
            spool.close()
        write_path = None
        if self.verdicts is not None:
            write_path = self.verdicts.close()
        outdirs = [(number, item) for number, item in enumerate(self.mctx.outputs.items)
                   if item.kind == "dir"]
        for _number, item in outdirs:
            item.finish()       # its writer thread's files made, written and counted
        dirs = [(number, item.files, item.incomplete, item.lost, item.error, item.error_name)
                for number, item in outdirs]
        return {
            "counters": dict(stack.counters), "malformed": dict(stack.malformed),
            "callback_errors": dict(stack.callback_errors),
            "reassembly_mem_peak": stack.reassembly_mem_peak, "frames_in": self.frames_in,
            "cut_length": self.cut_length, "cut_records": self.cut_records,
            "spools": [(number, spool.path) for number, spool in self.spools],
            "write": write_path, "dirs": dirs, "stop": stop, "error": error,
            "seconds": seconds, "pid": os.getpid(),
        }


def child(mctx, module, app, index, workers, plan, board, parent, spooldir, done_fd):
    """A worker's life after the fork; never returns."""
    def body():
        pin(index, workers)
        worker = _Worker(mctx, index, plan.path, mctx.config.write, spooldir)
        worker.prepare()
        started = time.perf_counter()
        error = None
        stop = None
        try:
            stop = worker.run(plan, board, parent)
        except ParentGone:
            # Nobody merges what this worker wrote: its spool goes, and so does it.
            shutil.rmtree(spooldir, ignore_errors=True)
            os._exit(1)
        except KeyboardInterrupt:
            error = "interrupted"
        except WorkerFailed as exc:
            error = str(exc)
        except Exception as exc:
            error = exception_line(exc)
        try:
            worker.teardown(module, app)
        except Exception as exc:
            error = error or f"teardown: {exception_line(exc)}"
        return worker.result(stop, error, time.perf_counter() - started)
    worker_exit(body, spooldir, index, done_fd)
