"""The writer thread of an output directory (io/outputs.py ``OutputDir``): files are made,
written and closed off the packet thread.

flowdump makes a file per stream direction and writes each stream's bytes as they come in
order. Made in the packet thread, a file costs an inode in the directory (tens to hundreds
of µs on ext4, much more on a busy disk) and every write a system call: time the packet
thread does not spend on packets. Here the packet thread only queues the operation (its
bytes copied, so a buffer it reuses may change) and goes on, handing its operations over
in lots (LOT_OPS, or at the engines' tick and at close: one lock for many); one thread
per directory runs the queue in order, a batch at a time: with the C helper (_batchio.c)
a whole batch runs with the GIL released once (a thread that takes the GIL back after each
system call waits up to a switch interval, 5 ms, while the packet thread runs), in Python
(``run_batch_python``: no compiled module, or MOSXDP_PURE_PYTHON=1) one call at a time.

What the queue holds is bounded (``MAX_QUEUED_BYTES``): past it the packet thread waits,
as it would for a synchronous write. A failure found by the writer (a file that cannot be
made, a full disk) is counted by the directory as before (``on_failure``); the file is
then marked failed and its later bytes are counted, not written. The thread starts at the
first file, again in a forked worker, and in a live run not before the outputs start
(Outputs.start, after the capability drop: capabilities are per thread, and the drop
refuses a process of more threads than one). A group of files (``FileGroup``: flowdump's
two files of a connection) shares the first free suffix, found by the writer thread too,
so the packet thread never looks a name up: such lookups waited on the writer's creates
in the same directory (the directory's lock).
"""
from __future__ import annotations

import array
import errno
import os
import threading
from collections import deque

__all__ = ["DirWriter", "FileGroup", "OutFile", "MAX_QUEUED_BYTES", "run_batch",
           "run_batch_python", "suffixed"]

CREATE, WRITE, CLOSE, GROUP = 0, 1, 2, 3     # the batch's operations (_batchio.c)
FREE_GROUP = 4                              # the writer's own: a group slot back, after its files
MAX_QUEUED_BYTES = 32 << 20       # bytes queued before the packet thread waits
# The packet thread hands its operations over in lots (one lock for many): at this many,
# or at an eighth of MAX_QUEUED_BYTES, or at a flush (the engines' tick, close).
LOT_OPS = 64
MAX_SUFFIX = 1000000              # a group's suffix numbers tried before its file fails
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def suffixed(base: bytes, number: int) -> bytes:
    """A group's name: the base, then nothing for suffix 0 and c<number> above (tcpflow's
    names for the connections of one 4-tuple)."""
    return base + b"c%d" % number if number else base


def _taken(name: bytes, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _open_in_group(dir_fd: int, groups, arg) -> int:
    """The group's file: its first one takes the first suffix no base has, and the next one
    if its name is taken meanwhile; the others take that suffix (OSError if taken)."""
    gslot, bases, index = arg
    if groups[gslot] >= 0:
        return os.open(suffixed(bases[index], groups[gslot]), _NEW_FILE, 0o644, dir_fd=dir_fd)
    for number in range(MAX_SUFFIX):
        try:
            if any(_taken(suffixed(base, number), dir_fd) for base in bases):
                continue
            fd = os.open(suffixed(bases[index], number), _NEW_FILE, 0o644, dir_fd=dir_fd)
        except FileExistsError:
            continue
        except OSError:
            groups[gslot] = number
            raise
        groups[gslot] = number
        return fd
    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST))


def run_batch_python(dir_fd: int, fds, groups, ops) -> list:
    """_batchio.run in Python: the same operations, results and failures."""
    failures = []
    for index, (kind, slot, arg, offset) in enumerate(ops):
        if kind == CREATE or kind == GROUP:
            try:
                fds[slot] = (os.open(arg, _NEW_FILE, 0o644, dir_fd=dir_fd) if kind == CREATE
                             else _open_in_group(dir_fd, groups, arg))
            except OSError as exc:
                fds[slot] = -1
                failures.append((index, exc.errno or errno.EIO, 0))
        elif kind == WRITE:
            fd = fds[slot]
            if fd < 0:
                failures.append((index, 0, len(arg)))
                continue
            done = 0
            try:
                while done < len(arg):
                    written = os.pwrite(fd, memoryview(arg)[done:], offset + done)
                    if written == 0:
                        raise OSError(errno.EIO, os.strerror(errno.EIO))
                    done += written
            except OSError as exc:
                failures.append((index, exc.errno or errno.EIO, len(arg) - done))
                os.close(fd)
                fds[slot] = -1
        else:
            fd, fds[slot] = fds[slot], -1
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError as exc:
                    if exc.errno != errno.EINTR:
                        failures.append((index, exc.errno or errno.EIO, 0))
    return failures


def _compiled_run():
    # The same switch as mosxdp/core/compiled.py (io does not import core).
    if os.environ.get("MOSXDP_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from ._batchio import run
    except ImportError:
        return None
    return run


run_batch = _compiled_run() or run_batch_python


class OutFile:
    """A file of an output directory, made by its writer: ``write_at(data, offset)``
    queues ``data`` (copied) for ``offset`` and says whether the file is still good;
    ``close()`` queues the close. ``failed``: its making or a write failed (counted).
    ``name``: a group's file has its suffix once the writer made it."""

    __slots__ = ("name", "slot", "failed", "_writer")

    def __init__(self, writer: "DirWriter", name: str, slot: int):
        self.name = name
        self.slot = slot
        self.failed = False
        self._writer = writer

    def write_at(self, data, offset: int) -> bool:
        if self.failed:
            self._writer.skipped(len(data))
            return False
        if self.slot is None:
            raise ValueError(f"{self.name}: closed")
        if len(data):
            self._writer.put(self, (WRITE, self.slot, bytes(data), offset), len(data))
        return True

    def close(self) -> None:
        if self.slot is not None:
            self._writer.put(self, (CLOSE, self.slot, None, 0), 0)
            self.slot = None


class FileGroup:
    """Files whose names share a suffix (``bases[i]`` + "", "c1", "c2" ...): the first one
    made takes the first suffix no base has yet, whatever holds the name (a file of an
    earlier run, a link, dangling or not), found by the writer thread, so the packet thread
    never looks up names. ``create(i)`` gives the file of ``bases[i]``; ``close()`` once
    no more file of the group will be made."""

    __slots__ = ("bases", "slot", "_writer")

    def __init__(self, writer: "DirWriter", bases, slot: int):
        self.bases = tuple(os.fsencode(b) for b in bases)
        self.slot = slot
        self._writer = writer

    def create(self, index: int) -> OutFile:
        return self._writer.open_in_group(self, index)

    def close(self) -> None:
        if self.slot is not None:
            self._writer.free_group(self.slot)
            self.slot = None


class DirWriter:
    """The queue and thread of one directory (``dir_fd``). ``on_failure(name, exc,
    lost)`` and ``on_skipped(size)`` count what failed (the directory's counters: called
    by the writer thread, or by the packet thread for bytes of a file known failed);
    ``on_made(count)`` the files made (by the writer thread). ``run`` False: the thread
    starts at :meth:`run_thread` (a live run's, after its capability drop), or at close;
    what is asked for meanwhile waits in the queue."""

    def __init__(self, dir_fd: int, on_failure, on_skipped, on_made=None, run=True):
        self.dir_fd = dir_fd
        self._on_failure = on_failure
        self._on_skipped = on_skipped
        self._on_made = on_made
        self._may_run = run
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._ops: list = []
        self._owners: list = []
        self._queued = 0
        self._lot: list = []                # the packet thread's (owner, op) not handed over
        self._lot_bytes = 0
        self._closing = False
        self._fds = array.array("i")
        # slots whose file the writer has closed (a deque: the writer appends, the packet
        # thread pops, each atomic, no lock)
        self._free: deque[int] = deque()
        self._next_slot = 0
        self._groups = array.array("i")     # a group's suffix number, -1 before its first file
        self._free_groups: deque[int] = deque()
        self._next_group = 0
        self.pending: set[str] = set()      # names queued to be made, not made yet
        self._thread = threading.Thread(target=self._run, name="mosxdp-outdir-writer",
                                        daemon=True)
        if self._may_run:
            self._thread.start()

    def run_thread(self) -> None:
        """Let the thread run (started now if it was waiting)."""
        self._may_run = True
        if self._pid == os.getpid() and self._thread.ident is None:
            self._thread.start()

    # ------------------------------------------------------------------ packet thread
    def open(self, name: str) -> OutFile:
        """A new file ``name`` (the caller checked that nothing has the name)."""
        if self._pid != os.getpid():
            self._start()     # a forked worker: the parent's thread is not here
        slot = self._new_slot()
        self.pending.add(name)
        out = OutFile(self, name, slot)
        self.put(out, (CREATE, slot, os.fsencode(name), 0), 0)
        return out

    def group(self, bases) -> FileGroup:
        if self._pid != os.getpid():
            self._start()
        try:
            slot = self._free_groups.pop()
        except IndexError:
            slot = self._next_group
            self._next_group += 1
        return FileGroup(self, bases, slot)

    def open_in_group(self, group: FileGroup, index: int) -> OutFile:
        if group.slot is None:
            raise ValueError("the file group is closed")
        slot = self._new_slot()
        out = OutFile(self, os.fsdecode(group.bases[index]), slot)
        self.put(out, (GROUP, slot, (group.slot, group.bases, index), 0), 0)
        return out

    def free_group(self, gslot: int) -> None:
        # after what is queued: the writer resets its suffix and takes the slot back
        self.put(None, (FREE_GROUP, 0, gslot, 0), 0)

    def _new_slot(self) -> int:
        try:
            return self._free.pop()
        except IndexError:
            self._next_slot += 1      # (read by the writer once an operation names it)
            return self._next_slot - 1

    def put(self, owner: OutFile, op: tuple, size: int) -> None:
        lot = self._lot
        lot.append((owner, op))
        self._lot_bytes += size
        if len(lot) >= LOT_OPS or self._lot_bytes >= MAX_QUEUED_BYTES >> 3:
            self.flush()

    def flush(self) -> None:
        """Hand the operations asked for so far to the writer thread (waiting while more
        than MAX_QUEUED_BYTES are queued)."""
        lot = self._lot
        if not lot or self._pid != os.getpid():
            return
        self._lot, size, self._lot_bytes = [], self._lot_bytes, 0
        with self._cond:
            while self._queued > MAX_QUEUED_BYTES and self._thread.is_alive():
                self._cond.wait()
            was_empty = not self._ops
            for owner, op in lot:
                self._ops.append(op)
                self._owners.append(owner)
            self._queued += size
            if was_empty:
                self._cond.notify_all()

    def skipped(self, size: int) -> None:
        self._on_skipped(size)

    def close(self) -> None:
        """Run what is queued, then stop the thread; files left open are closed."""
        if self._pid != os.getpid():
            return
        self.flush()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.ident is None:
            self._thread.start()      # what was queued before the thread could run
        self._thread.join()
        for slot, fd in enumerate(self._fds):
            if fd >= 0:
                os.close(fd)
                self._fds[slot] = -1

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._ops and not self._closing:
                    self._cond.wait()
                ops, owners = self._ops, self._owners
                if not ops:
                    return
                self._ops, self._owners = [], []
            if len(self._fds) < self._next_slot:
                self._fds.extend([-1] * (self._next_slot - len(self._fds)))
            if len(self._groups) < self._next_group:
                self._groups.extend([-1] * (self._next_group - len(self._groups)))
            frees = [op[2] for op in ops if op[0] == FREE_GROUP]
            if frees:
                kept = [i for i, op in enumerate(ops) if op[0] != FREE_GROUP]
                ops, owners = [ops[i] for i in kept], [owners[i] for i in kept]
            try:
                failures = run_batch(self.dir_fd, self._fds, self._groups, ops)
            except Exception as exc:       # not an OSError of one file: every file fails
                failures = [(i, errno.EIO, len(op[2]) if op[0] == WRITE else 0)
                            for i, op in enumerate(ops)]
                self._on_failure("(the writer)", OSError(errno.EIO, f"writer: {exc!r}"), 0)
            try:
                self._settle(ops, owners, failures)
            except Exception:
                pass      # counted what it could; the next batch is written all the same
            if frees:
                for gslot in frees:
                    self._groups[gslot] = -1
                with self._cond:
                    self._free_groups.extend(frees)

    def _settle(self, ops, owners, failures) -> None:
        size = 0
        try:
            for (kind, slot, arg, _offset), owner in zip(ops, owners):
                if kind == WRITE:
                    size += len(arg)
                elif kind == CREATE:
                    self.pending.discard(os.fsdecode(arg))
                elif kind == GROUP and self._groups[arg[0]] >= 0:
                    owner.name = os.fsdecode(suffixed(arg[1][arg[2]], self._groups[arg[0]]))
            if self._on_made is not None:
                made = sum(1 for op in ops if op[0] in (CREATE, GROUP))
                made -= sum(1 for index, err, _lost in failures
                            if ops[index][0] in (CREATE, GROUP))
                if made:
                    self._on_made(made)
            for index, err, lost in failures:
                owner = owners[index]
                if err == 0:
                    self._on_skipped(lost)
                    continue
                owner.failed = True
                kind = ops[index][0]
                if err == errno.EEXIST and kind == CREATE:
                    exc = OSError(err, "made by someone else after it was checked: not "
                                       "overwritten")
                elif err == errno.EEXIST and kind == GROUP:
                    exc = OSError(err, "made by someone else after the first file of its "
                                       "group: not overwritten")
                else:
                    exc = OSError(err, os.strerror(err))
                self._on_failure(owner.name, exc, lost)
        finally:
            # Whatever the counting met (a warning that could not be printed), the queue
            # moves on: the thread never stops before close().
            with self._cond:
                self._queued -= size
                self._free.extend(slot for kind, slot, _a, _o in ops if kind == CLOSE)
                self._cond.notify_all()
