"""What the two split runs share (offline: engine/workers.py, live: engine/live_workers.py):
the parent's bookkeeping of its workers, a worker's CPU, and a worker's end (its result
pickled into the spool directory, the process gone without running the parent's exit
handlers)."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback


def describe_status(status) -> str:
    """A wait status as the end of a sentence: how a worker ended."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by signal {sig} ({signal.Signals(sig).name})"
    return f"exited with status {os.WEXITSTATUS(status)}"


def exception_line(exc) -> str:
    from ..core.events import exception_site
    text = str(exc).splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}{': ' + text if text else ''} at {exception_site(exc)}"


def pin(index, workers):
    """Worker ``index`` on its own CPU when the process may use at least ``workers``."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if len(cpus) < workers:
        return None
    os.sched_setaffinity(0, {cpus[index]})
    return cpus[index]


def worker_exit(body, spooldir, index, done_fd=None):
    """Run a worker's ``body`` after the fork, pickle what it returns to ``w{index}.result``
    for the parent, say so with a byte on ``done_fd`` (the parent merges while this process
    is still being torn down) and end the process (status 1 when anything escaped); never
    returns."""
    code = 0
    try:
        result = body()
        with open(os.path.join(spooldir, f"w{index}.result"), "wb") as f:
            pickle.dump(result, f)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            if done_fd is not None and code == 0:
                os.write(done_fd, b"\x01")
        finally:
            os._exit(code)


def add_dirs(items, dirs) -> None:
    """Add a worker's per-flow directory outputs (its result's ``dirs``) to the parent's."""
    for number, files, incomplete, lost, error, name in dirs:
        out = items[number]
        out.files += files
        out.incomplete += incomplete
        out.lost += lost
        if error is not None and out.error is None:
            out.error, out.error_name = error, name


class ForkedParent:
    """The parent's side of a split run: the context, the app, and its running workers."""

    def __init__(self, mctx, module, app, print_stats=False):
        self.mctx = mctx
        self.module = module
        self.app = app
        self.print_stats = print_stats
        self.workers = mctx.config.workers
        self.pids = {}             # running workers: pid -> index
