"""The parent's merge of a split run (engine/workers.py): the workers' records of each
output, and their --write verdicts over the input's frames, in the order of the run.
"""
from __future__ import annotations

import heapq
import marshal

from .split_worker import FRAME_KEY, VERDICT, WorkerFailed


def _records(path):
    """A worker's records of one output (engine/split_worker.py's _Spool: in blocks)."""
    with open(path, "rb") as f:
        while True:
            try:
                yield from marshal.load(f)
            except EOFError:
                return


def merge_output(item, paths):
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


class _Offsets:
    """The record offsets of frame numbers asked in increasing order, added up from the
    plan's record lengths (engine/split_feed.py) instead of read from each header."""

    def __init__(self, plan):
        self.chunks = plan.chunks
        self.k = self.i = self.number = 0
        self.off = 24

    def at(self, number):
        while self.number < number and self.k < len(self.chunks):
            _, sizes, count = self.chunks[self.k]
            take = min(count - self.i, number - self.number)
            self.off += sum(sizes[self.i:self.i + take])
            self.i += take
            self.number += take
            if self.i == count:
                self.k += 1
                self.i = 0
        return self.off


def merge_write(writer, scan, plan, frames, paths, uncut):
    """--write: the input's frames in their order, as the workers' verdicts say, with the
    frames the apps sent where one worker sends them. A run of frames forwarded unchanged
    whose records PcapWriter would write as they are in the input (little-endian
    microseconds, not cut by a snap length) is copied whole, by the kernel when the output
    is a file (OutputFile.copy_range). ``uncut``: no frame of the capture was cut (no
    worker saw one): then every frame between two frames with verdicts is such a frame,
    and the merge reads only the headers of the frames with verdicts."""
    records = heapq.merge(*(_verdict_records(w, p) for w, p in enumerate(paths)),
                          key=lambda r: r[0])
    rec = scan.record.unpack_from
    ns = scan.nanosecond
    # Records PcapWriter writes as they are: little-endian microseconds of Ethernet frames.
    verbatim = scan.order == "<" and not ns and scan.link is None
    whole_runs = verbatim and uncut
    offsets = _Offsets(plan)
    ethernet = scan.ethernet
    out = writer._f
    copy_range = getattr(out, "copy_range", None)

    def whole(start):
        """For copy_range, of a copy from ``start``: the bytes of whole records in its
        first n bytes."""
        def records_in(n):
            at = start
            while at + 16 <= start + n:
                following = at + 16 + rec(mm, at)[2]
                if following > start + n:
                    break
                at = following
            return at - start
        return records_in

    def copy(start, end):
        if copy_range is not None:
            copy_range(scan.fd, start, end - start, whole(start))
            return
        view = memoryview(mm)
        for at in range(start, end, 1 << 20):
            out.write(view[at:min(end, at + (1 << 20))])
        view.release()

    write = writer.write
    # Mapped, not populated: only the pages of the headers read are faulted in.
    mm = scan.map
    written = 0
    pending = next(records, None)
    number = 0
    off = 24
    run_start = off          # input bytes not yet written, all verbatim records
    while number < frames:
        target = frames if pending is None else min(pending[0][0], frames)
        if whole_runs and number < target:
            # Nothing happened to these frames: forwarded as they came, copied as they are.
            off = offsets.at(target)
            written += target - number
            number = target
            continue
        sec, frac, caplen, origlen = rec(mm, off)
        start = off + 16
        end = start + caplen
        if number < target:
            # Nothing happened to this frame: forwarded as it came.
            if verbatim and caplen == origlen:
                off = end
                written += 1
                number += 1
                continue
            if run_start < off:
                copy(run_start, off)
            frame, wire = ethernet(start, caplen, origlen)
            write(sec * 1_000_000 + (frac // 1000 if ns else frac), frame, wire)
            written += 1
            off = run_start = end
            number += 1
            continue
        if run_start < off:
            copy(run_start, off)
        own = True
        # Sent by its callbacks (before it), then its own verdict; then the batch's end.
        frame, wire = ethernet(start, caplen, origlen)
        while pending is not None and pending[0][0] == number and pending[0][1] == FRAME_KEY:
            _, kind, rts, data = pending
            for out_frame in data:
                # The input's frame changed in place keeps its length on the wire (as
                # engine/offline.py's _sink_cut writes it).
                write(rts, out_frame, wire if kind == VERDICT and len(out_frame) == len(frame)
                      else 0)
                written += 1
            if kind == VERDICT:
                own = False
            pending = next(records, None)
        if own:
            write(sec * 1_000_000 + (frac // 1000 if ns else frac), frame, wire)
            written += 1
        while pending is not None and pending[0][0] == number:
            for frame in pending[3]:
                write(pending[2], frame)
                written += 1
            pending = next(records, None)
        off = run_start = end
        if whole_runs:
            offsets.at(number + 1)
        number += 1
    if run_start < off:
        copy(run_start, off)
    while pending is not None:
        for frame in pending[3]:
            write(pending[2], frame)
            written += 1
        pending = next(records, None)
    return written
