"""Output files that never follow a planted link and never lose data silently.

Every file the command line and the sample apps write goes through here (apps through
``mosx_open_output`` and ``mosx_open_outdir``, mosxdp/api/outputs.py).

``Outputs`` holds a run's outputs (``mctx.outputs``, one per context). A write that fails
does not raise: it is counted on its output and the run goes on (the other outputs and
the wire are not affected); at the end ``failure_lines`` gives one line per output that
lost data, which the command line prints before it exits with status 3. With
``announce`` (live runs) the first failure of each output is said when it happens too.

``OutputFile`` is a file the user named ('-': standard output). It is opened at start
with O_NOFOLLOW (a symbolic link at that name is refused, never followed) and without
O_TRUNC: a regular file is emptied only once fstat showed it has no other hard link.
Each ``write`` is one record (a line, a pcap record, a whole JSON document), gathered in
a buffer of at most FLUSH_BYTES, written when it is full, by ``Outputs.tick`` at least
every FLUSH_SECONDS, and at ``flush`` and ``close``. When a write fails part-way, a
regular file is cut back to its last whole record, so what the file holds always parses
and is the start of what the run meant to write: an output that failed is not written
again (a log with a hole in it would look whole), its later records are counted as lost.

``open_sink`` opens what a log app's ``--output`` names (mosxdp/io/sinks.py): a path is an
``OutputFile``, '-' standard output, ``unix:PATH`` and ``redis://...`` a ``NetworkSink``,
which never blocks the run, counts what it drops rather than failing (its losses do not
make the exit status 3: they are said at the end, ``sink_lines``), and sends from a thread
of its own that ``start`` starts once the run is set up.

``OutputDir`` is a directory in which files are created during the run (flowdump). It is
made if absent and opened at start; ``check_writable`` creates and removes a probe file
in it with the privileges the run will have (live: in a child process that dropped them
as the monitor does after set-up), so a directory the running monitor could not write is
refused before anything is attached. Files are created relative to its descriptor with
O_CREAT|O_EXCL|O_NOFOLLOW: an existing name (a file of another run, a planted file or
link, dangling or not) is never opened, followed or truncated.
"""
from __future__ import annotations

import errno
import os
import stat
import sys
import threading
import time
from bisect import bisect_right

from .filewriter import _NEW_FILE, DirWriter, FileGroup, OutFile

__all__ = ["FLUSH_BYTES", "FLUSH_SECONDS", "Outputs", "OutputFile", "StdoutFile", "StderrFile",
           "OutputDir"]

FLUSH_BYTES = 1 << 16
FLUSH_SECONDS = 1.0



def _named(exc: OSError, path: str, text: str | None = None) -> OSError:
    """``exc`` as an OSError naming ``path`` (``text``: another message)."""
    return OSError(exc.errno, text or exc.strerror or str(exc), path)


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


class Outputs:
    """A run's outputs: opens them, flushes them on time, and says which lost data."""

    def __init__(self):
        self.items = []
        self.announce = False     # say each output's first failure when it happens
        self._next_tick = 0.0
        self._started = False
        # A worker of a split run (engine/workers.py): the parent opened the outputs, and
        # writes them; one opened by a worker would be written by each.
        self.worker = None

    def open_file(self, path, *, binary: bool = False) -> "OutputFile | StdoutFile":
        """The output ``path`` ('-': standard output, ``binary``: its byte stream), opened
        now; OSError naming it."""
        path = os.fspath(path)
        self._check_not_worker(path)
        out = StdoutFile(self, binary) if path == "-" else OutputFile(self, path)
        self.items.append(out)
        return out

    def open_stderr(self) -> "StderrFile":
        """The process's standard error as an output (an app's report lines)."""
        out = StderrFile(self)
        self.items.append(out)
        return out

    def open_sink(self, spec: str, *, option: str = "--output", after_drop: bool = False):
        """What ``spec`` names (sinks.parse_sink): a file, standard output, or a network
        sink connected now if its server is up. OSError with one line naming ``option``
        for a bad spec, a file that cannot be opened, or a server that refuses the sink;
        ``after_drop``: a live run that drops its privileges after set-up."""
        from .sinks import SinkSpecError, open_network_sink, parse_sink, redact
        try:
            parsed = parse_sink(spec)
        except SinkSpecError as exc:
            raise OSError(errno.EINVAL, f"{option} {redact(str(spec))}: {exc}") from None
        if not parsed.network:
            return self.open_file("-" if parsed.kind == "stdout" else parsed.path)
        try:
            sink = open_network_sink(parsed, after_drop=after_drop)
        except OSError as exc:
            raise OSError(exc.errno, f"{option} {parsed.name}: {exc.strerror}") from None
        self.items.append(sink)
        if self._started:
            sink.start()
        return sink

    def start(self) -> None:
        """The run is set up (live: privileges dropped): the network sinks' threads start,
        and the output directories' writer threads may."""
        self._started = True
        for sink in self.sinks():
            sink.start()
        for item in self.items:
            if item.kind == "dir":
                item.writer_may_run()

    def sinks(self) -> list:
        """The network sinks (unix socket, Redis), in the order they were opened."""
        return [item for item in self.items if getattr(item, "network", False)]

    def close_sinks(self) -> None:
        """Drain and close the network sinks (each for a bounded time)."""
        for sink in self.sinks():
            sink.close()

    def sink_lines(self, every: bool = False) -> list[str]:
        """At the end: one line per network sink that lost records (``every``: per sink)."""
        return [sink.summary_line() for sink in self.sinks() if every or sink.lost]

    def open_dir(self, path, *, after_drop: bool = False) -> "OutputDir":
        """The output directory ``path`` (made if absent), checked writable now, as the run
        will be (``after_drop``: a live run that drops its privileges after set-up)."""
        self._check_not_worker(os.fspath(path))
        out = OutputDir(self, os.fspath(path))
        try:
            out.check_writable(after_drop)
        except OSError:
            out.close()
            raise
        # A live run drops its capabilities, per thread and only while it has one thread:
        # the writer thread waits for start() (after the drop) to run.
        out.writer_waits = after_drop and not self._started
        self.items.append(out)
        return out

    def _check_not_worker(self, path) -> None:
        if self.worker is not None:
            raise OSError(errno.EINVAL, f"{path}: opened by worker {self.worker} of a split "
                          "run (--workers): open the app's outputs in its setup()")

    def tick(self) -> None:
        """The engines call this after each batch and idle wait: every FLUSH_SECONDS,
        whatever is buffered is written."""
        now = time.monotonic()
        if now < self._next_tick:
            return
        self._next_tick = now + FLUSH_SECONDS
        self.flush()

    def flush(self) -> None:
        for item in self.items:
            item.flush()

    def close(self) -> None:
        """Flush and close every output still open (the apps close theirs first)."""
        for item in self.items:
            item.close()

    def failed(self) -> list:
        return [item for item in self.items if item.error is not None]

    def failure_lines(self) -> list[str]:
        """One line per output that lost data: its path, the first error, what was lost."""
        return [item.failure_line() for item in self.failed()]

    def _failed(self, item) -> None:
        if self.announce:
            print(f"mosxdp: warning: {item.failure_text()}; the run goes on and will exit "
                  "non-zero", file=sys.stderr, flush=True)


class OutputFile:
    """A file named by the user: records are buffered (bounded) and written in order."""

    kind = "file"

    def __init__(self, outputs: Outputs, path: str):
        self.outputs = outputs
        self.path = path
        self.error = None       # the first failure (OSError)
        self.written = 0        # bytes in the file
        self.lost = 0           # bytes of records that did not get there
        self._buf = bytearray()
        self._ends = []         # where each buffered record ends
        self._fd = self._open(path)
        self._regular = stat.S_ISREG(os.fstat(self._fd).st_mode)
        self._dead = False      # failed: not written again
        self._closed = False
        self._sink = None       # redirect()'s
        self.combine = None     # see mosx_open_output
        self._reserved = 0      # reserve()'s end: allocated beyond the file's size

    @staticmethod
    def _open(path: str) -> int:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP and os.path.islink(path):
                raise _named(exc, path, "is a symbolic link, not followed (name the file "
                                        "it points to)") from None
            raise _named(exc, path) from None
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    raise OSError(errno.EMLINK, f"has {st.st_nlink} hard links, not truncated "
                                                "(remove it, or name another file)", path)
                os.ftruncate(fd, 0)
        except OSError as exc:
            os.close(fd)
            raise (exc if exc.filename else _named(exc, path)) from None
        return fd

    def write(self, data) -> None:
        """One record (str: as UTF-8), written whole or not at all. Never raises for the
        file's sake: a failure is counted (``error``, ``lost``)."""
        if self._closed and self._sink is None:
            raise ValueError(f"write to {self.path} after close")
        if isinstance(data, str):
            data = data.encode()
        if self._sink is not None:
            self._sink(data)
            return
        if self._dead:
            self.lost += len(data)
            return
        buf = self._buf
        buf += data
        self._ends.append(len(buf))
        if len(buf) >= FLUSH_BYTES:
            self.flush()

    def copy_range(self, fd, offset: int, count: int, whole=None) -> None:
        """``count`` bytes of the file ``fd`` from ``offset``, after what is buffered:
        copied by the kernel (sendfile: page cache to page cache, not through this
        process), else read and written. A failure is counted as a write's; a regular file
        is cut back to the records it holds whole: ``whole(n)``, the bytes of whole records
        in the first n copied (None: the copy is one record)."""
        if self._sink is not None:
            self.write(os.pread(fd, count, offset))
            return
        self.flush()
        if self._dead:
            self.lost += count
            return
        done = 0
        try:
            while done < count:
                try:
                    sent = os.sendfile(self._fd, fd, offset + done, count - done)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    sent = os.write(self._fd, os.pread(fd, min(count - done, 1 << 20),
                                                       offset + done))
                if sent == 0:
                    raise OSError(errno.EIO, "the input ended before the bytes to copy")
                done += sent
        except OSError as exc:
            kept = done
            if self._regular and done:
                cut = whole(done) if whole is not None else 0
                try:
                    os.ftruncate(self._fd, self.written + cut)
                    kept = cut
                except OSError:
                    pass
            self._dead = True
            self.written += kept
            self.lost += count - kept
            self._record(exc)
            return
        self.written += done

    def reserve(self, count: int) -> None:
        """Allocate the next ``count`` bytes of the file now, its size unchanged
        (fallocate, FALLOC_FL_KEEP_SIZE): the pages a later copy_range fills are made
        while the process waits for something else (a split run's workers). Best effort:
        nothing where the file system cannot; what is not written is given back at
        close."""
        if not self._regular or self._dead or self._sink is not None or count <= 0:
            return
        if _fallocate(self._fd, _FALLOC_FL_KEEP_SIZE, self.written, count):
            self._reserved = self.written + count

    def redirect(self, sink) -> None:
        """From now on each record goes to ``sink(bytes)``, never to the file: a worker
        process of a split run (engine/workers.py), whose parent writes the file. Flush
        before: what is buffered stays the parent's."""
        self._clear()
        self._sink = sink
        self._closed = True     # the file is the parent's: flush and close do nothing here

    def flush(self) -> None:
        buf = self._buf
        if not buf:
            return
        done = 0
        try:
            with memoryview(buf) as view:
                while done < len(buf):
                    done += os.write(self._fd, view[done:])
        except OSError as exc:
            self._write_failed(exc, done)
        else:
            self.written += done
        self._clear()

    def _clear(self) -> None:
        self._buf.clear()
        self._ends.clear()

    def _whole(self, done: int) -> int:
        """How many of the first ``done`` buffered bytes are whole records."""
        i = bisect_right(self._ends, done)
        return self._ends[i - 1] if i else 0

    def _write_failed(self, exc: OSError, done: int) -> None:
        kept = done
        if self._regular:
            whole = self._whole(done)
            if whole < done:
                try:
                    os.ftruncate(self._fd, self.written + whole)
                    kept = whole
                except OSError:
                    pass     # the cut record stays: it is in the file
        self._dead = True
        self.written += kept
        self.lost += len(self._buf) - kept
        self._record(exc)

    def _record(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc
            self.outputs._failed(self)

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._reserved > self.written:
            try:
                # to its own size: what was allocated past it goes back (ext4, tmpfs)
                os.ftruncate(self._fd, self.written)
            except OSError:
                pass
        try:
            os.close(self._fd)
        except OSError as exc:      # a network file system may report write errors here
            self._record(exc)

    def failure_text(self) -> str:
        return f"cannot write {self.path}: {_reason(self.error)}"

    def failure_line(self) -> str:
        return f"{self.failure_text()} ({self.written} bytes written, {self.lost} not)"


_FALLOC_FL_KEEP_SIZE = 1


def _fallocate(fd, mode, offset, count) -> bool:
    """fallocate(2) (Python has posix_fallocate only, which grows the file): True when done."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    call = libc.fallocate
    call.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return call(fd, mode, offset, count) == 0


class StdoutFile:
    """'-': the process's standard output (``sys.stdout`` when opened), through its own
    buffer; after a failure it is not written again, and its descriptor is pointed at
    /dev/null so that the interpreter's exit does not try again."""

    path = "<stdout>"
    kind = "stdout"

    def __init__(self, outputs: Outputs, binary: bool = False):
        self.outputs = outputs
        self.binary = binary
        stream = self._stream()
        if stream is None:
            # The process began with the descriptor closed (Python's sys.stdout is None).
            raise OSError(errno.EBADF, f"the process has no {self.path[1:-1]} (its "
                                       "descriptor was closed)", self.path)
        self.stream = stream.buffer if binary else stream
        self.error = None
        self.lost = 0           # bytes given after the failure
        self._sink = None
        self.combine = None

    @staticmethod
    def _stream():
        return sys.stdout

    def redirect(self, sink) -> None:
        """As OutputFile.redirect: records go to ``sink(bytes)``, not to standard output."""
        self._sink = sink

    def write(self, data) -> None:
        if self._sink is not None:
            self._sink(data.encode() if isinstance(data, str) else bytes(data))
            return
        if self.error is not None:
            self.lost += len(data)
            return
        if not self.binary and isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data).decode()
        try:
            self.stream.write(data)
        except OSError as exc:
            self._failed(exc)

    def flush(self) -> None:
        if self.error is None and self._sink is None:
            try:
                self.stream.flush()
            except OSError as exc:
                self._failed(exc)

    def close(self) -> None:
        self.flush()

    def _failed(self, exc: OSError) -> None:
        self.error = exc
        try:
            fd = self.stream.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None
        if fd is not None:
            devnull = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
            os.dup2(devnull, fd)
            os.close(devnull)
        self.outputs._failed(self)

    def failure_text(self) -> str:
        return f"cannot write {self.path}: {_reason(self.error)}"

    def failure_line(self) -> str:
        return self.failure_text() + (f" ({self.lost} more bytes not written after that)"
                                      if self.lost else "")


class StderrFile(StdoutFile):
    """The process's standard error (``sys.stderr`` when opened), as StdoutFile; when the
    process began without one, what is written goes nowhere, as a ``print`` to it."""

    path = "<stderr>"
    kind = "stderr"

    @staticmethod
    def _stream():
        return sys.stderr or open(os.devnull, "w")


class OutputDir:
    """A directory for files created during the run, each written at offsets by its
    owner (``create`` gives an OutFile: ``write_at``, ``close``); the files are made and
    written by the directory's writer thread (io/filewriter.py), in the order asked;
    failures are counted per directory."""

    kind = "dir"

    def __init__(self, outputs: Outputs, path: str):
        self.outputs = outputs
        self.path = path
        self.files = 0          # files created
        self.incomplete = 0     # files that could not be created or written whole
        self.lost = 0           # bytes not written
        self.error = None       # the first failure (OSError) ...
        self.error_name = None  # ... and its file's name
        self._writer = None     # its thread starts with the first file ...
        self.writer_waits = False   # ... or, while this is set, at writer_may_run()
        self._count_lock = threading.Lock()   # the writer thread counts too
        try:
            os.makedirs(path, exist_ok=True)
            self._fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileExistsError as exc:
            raise _named(exc, path, "exists and is not a directory") from None
        except OSError as exc:
            raise _named(exc, path) from None

    def _probe(self) -> int:
        """0 when a new file can be made and removed here, else the errno."""
        name = f".mosxdp-probe-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            os.close(os.open(name, _NEW_FILE, 0o600, dir_fd=self._fd))
            os.unlink(name, dir_fd=self._fd)
        except OSError as exc:
            return exc.errno or errno.EIO
        return 0

    def check_writable(self, after_drop: bool = False) -> None:
        """OSError naming the directory unless the run can create files in it."""
        err = None
        if after_drop:
            from .privileges import as_after_setup
            err = as_after_setup(self._probe)
        if err is None:
            err = self._probe()
        elif err and not self._probe():
            raise OSError(err, f"not writable by the live monitor once it dropped its "
                               f"privileges after set-up ({os.strerror(err)}): use a "
                               "directory whose permissions let root in (without "
                               "CAP_DAC_OVERRIDE), or --keep-privileges", self.path)
        if err:
            raise OSError(err, f"cannot create files in it ({os.strerror(err)})", self.path)

    def _dir_fd(self) -> int:
        if self._fd is None:     # dir_fd=None would mean the current directory
            raise ValueError(f"{self.path}: the output directory is closed")
        return self._fd

    def exists(self, name: str) -> bool:
        """Whether ``name`` is taken, by anything (a dangling link too), or is a file
        this run has asked for and the writer has not made yet."""
        if self._writer is not None and name in self._writer.pending:
            return True
        try:
            os.stat(name, dir_fd=self._dir_fd(), follow_symlinks=False)
        except OSError:
            return False
        return True

    def create(self, name: str) -> OutFile:
        """A new file ``name`` (O_CREAT|O_EXCL|O_NOFOLLOW, mode 644), made by the writer
        thread. FileExistsError when the name is taken now (nothing is asked for); a
        failure of the writer to make it (a name taken meanwhile, no space, ...) is
        counted and marks the file failed."""
        if self.exists(name):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), name)
        return self._dir_writer().open(name)

    def group(self, bases) -> FileGroup:
        """Files named ``bases[i]`` + a suffix they share, the first of "", "c1", "c2" ...
        that no base has when the group's first file is made (checked and made by the
        writer thread: the packet thread never looks a name up); ``group.create(i)`` gives
        the file of ``bases[i]``, ``group.close()`` ends the group (io/filewriter.py)."""
        return self._dir_writer().group(bases)

    def _dir_writer(self) -> DirWriter:
        if self._writer is None:
            self._writer = DirWriter(self._dir_fd(), self.failed, self.skipped, self._made,
                                     run=not self.writer_waits)
        return self._writer

    def writer_may_run(self) -> None:
        """The run is set up: the writer thread runs what is queued, and what comes."""
        self.writer_waits = False
        if self._writer is not None:
            self._writer.run_thread()

    def _made(self, count: int) -> None:
        with self._count_lock:
            self.files += count

    def failed(self, name: str, exc: OSError, lost: int = 0) -> None:
        """The file ``name`` is incomplete (``lost`` bytes of it not written)."""
        with self._count_lock:
            self.incomplete += 1
            self.lost += lost
            first = self.error is None
            if first:
                self.error, self.error_name = exc, name
        if first:
            self.outputs._failed(self)

    def skipped(self, size: int) -> None:
        """``size`` more bytes of a file that failed before were not written."""
        with self._count_lock:
            self.lost += size

    def flush(self) -> None:
        """What the packet thread asked for so far goes to the writer thread."""
        if self._writer is not None:
            self._writer.flush()

    def finish(self) -> None:
        """Everything asked for is done (made, written, closed, failures counted)."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def close(self) -> None:
        self.finish()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def failure_text(self) -> str:
        return f"cannot write {os.path.join(self.path, self.error_name)}: {_reason(self.error)}"

    def failure_line(self) -> str:
        return (f"{self.failure_text()} ({self.incomplete} file(s) incomplete, {self.lost} "
                f"bytes not written)")
