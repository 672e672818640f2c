"""The progress line of an offline run on a terminal (tqdm, on stderr).

    big.pcap:  42%|████████▍           | 537MB/1.28GB [00:07<00:09, 310.2 kpps, flows 1021]

How far the capture file has been read against its size (bytes of the file: compressed
ones for a compressed capture; for a pipe, no bar but the frames read), frames per second over
the last update and the flows seen so far. Shown only after a second (a short run prints
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
    def __init__(self, reader, engine, stream, delay=DELAY, interval=INTERVAL,
                 clock=time.monotonic):
        self.reader = reader
        self.engine = engine
        self.interval = interval
        self.clock = clock
        self._next = clock() + interval
        self._last = (clock(), 0)       # (time, frames) of the last update
        # tqdm redraws at each update (miniters 0, mininterval 0: tick paces it) once
        # `delay` has passed; the rate and the time left are averages since the start.
        common = dict(file=stream, delay=delay, leave=False, dynamic_ncols=True, miniters=0,
                      mininterval=0, smoothing=0, desc=os.path.basename(reader.name),
                      unit_scale=True)
        if reader.size is not None:
            self.bar = tqdm(total=reader.size, unit="B", **common,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                       "{n_fmt}B/{total_fmt}B [{elapsed}<{remaining}{postfix}]")
        else:   # a pipe: no size, the line counts frames
            self.bar = tqdm(unit=" frames", **common,
                            bar_format="{desc}: {n_fmt}{unit} [{elapsed}{postfix}]")

    def tick(self) -> None:
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.interval
        frames = self.engine.frames_in
        then, before = self._last
        self._last = (now, frames)
        rate = (frames - before) / max(now - then, 1e-6)
        flows = self.engine.stack.counters["flows_created"]
        self.bar.set_postfix_str(f"{rate / 1e3:.1f} kpps, flows {flows}", refresh=False)
        position = self.reader.bytes_read() if self.reader.size is not None else frames
        self.bar.update(position - self.bar.n)

    def close(self) -> None:
        self.bar.close()
