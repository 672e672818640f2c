"""The progress line of an offline run on a terminal (tqdm, on stderr).

    big.pcap:  42%|████████▍           | 537MB/1.28GB [00:07<00:09, 310.2 kpps, flows 1021]

How far the capture file has been read against its size (bytes of the file: compressed
ones for a compressed capture; for a pipe, no bar but the frames read; in a run split over
workers, as far as the slowest worker went), frames per second over the last update and
the flows seen so far. Shown only after a second (a short run prints
nothing) and cleared at the end. The command line asks for it when stderr is a terminal
and --no-progress is absent. Nothing is added per frame: the offline engine calls
``tick`` once per batch, which looks at the clock and, at most every ``interval``
seconds, at the reader's file position (which moves a chunk of the file at a time).
"""
import os
import time

from tqdm import tqdm

#: seconds before the line shows (a run that ends sooner prints nothing)
DELAY = 1.0
#: seconds between two updates
INTERVAL = 0.25


class OfflineProgress:
    """The line of a run that has read ``position()`` bytes of ``size`` (None: a pipe, the
    line counts frames), ``frames()`` frames and made ``flows()`` flows."""

    def __init__(self, name, size, position, frames, flows, stream, delay=DELAY,
                 interval=INTERVAL, clock=time.monotonic):
        self.position = position
        self.frames = frames
        self.flows = flows
        self.interval = interval
        self.clock = clock
        self._next = clock() + interval
        self._last = (clock(), 0)       # (time, frames) of the last update
        # tqdm redraws at each update (miniters 0, mininterval 0: tick paces it) once
        # `delay` has passed; the rate and the time left are averages since the start.
        common = dict(file=stream, delay=delay, leave=False, dynamic_ncols=True, miniters=0,
                      mininterval=0, smoothing=0, desc=name, unit_scale=True)
        if size is not None:
            self.bar = tqdm(total=size, unit="B", **common,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                       "{n_fmt}B/{total_fmt}B [{elapsed}<{remaining}{postfix}]")
        else:   # a pipe: no size, the line counts frames
            self.bar = tqdm(unit=" frames", **common,
                            bar_format="{desc}: {n_fmt}{unit} [{elapsed}{postfix}]")

    @classmethod
    def of_reader(cls, reader, engine, stream, **kw):
        """The line of an offline engine reading ``reader``."""
        return cls(os.path.basename(reader.name), reader.size,
                   reader.bytes_read if reader.size is not None else lambda: engine.frames_in,
                   lambda: engine.frames_in,
                   lambda: engine.stack.counters["flows_created"], stream, **kw)

    def tick(self, force=False) -> None:
        """An update, at most every ``interval`` seconds unless ``force``."""
        now = self.clock()
        if now < self._next and not force:
            return
        self._next = now + self.interval
        frames = self.frames()
        then, before = self._last
        self._last = (now, frames)
        rate = (frames - before) / max(now - then, 1e-6)
        self.bar.set_postfix_str(f"{rate / 1e3:.1f} kpps, flows {self.flows()}", refresh=False)
        self.bar.update(self.position() - self.bar.n)

    def close(self) -> None:
        self.bar.close()
