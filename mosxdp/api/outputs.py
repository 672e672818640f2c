"""Output files (an extension): mosx_open_output, mosx_open_outdir.

What an app writes through these is safe against planted links, checked at start, and
loud when it fails (mosxdp/io/outputs.py): a failed write is counted, the run goes on,
and the command line ends it with status 3 and one line naming the file and the reason.
"""
from .context import _stack


def mosx_open_output(mctx, path, binary=False, combine=None):
    """The output file ``path`` ('-': standard output), opened now: a symbolic link there
    is refused, a regular file emptied (not if it has other hard links). Returns an object
    with ``write(record)`` (str or bytes; one record, e.g. a line), ``flush()``, ``close()``.
    A bad path raises OSError naming it; a failed write later does not raise.

    A run split over several workers (``--workers N``, docs/workers.md) writes the records
    of all workers in the order one worker writes them. Records written at the same moment
    of the run in several workers (by a timer, which runs in each, or at teardown) are
    written one worker's after the other's; ``combine``, if given, gets them instead, as a
    list of bytes in worker order, and returns the list of records to write."""
    _stack(mctx)
    out = mctx.outputs.open_file(path, binary=binary)
    out.combine = combine
    return out


def mosx_open_outdir(mctx, path):
    """The output directory ``path`` (made if absent), checked now that the run can create
    files in it (live: with the privileges the monitor keeps after set-up). Returns an
    object with ``exists(name)``, ``create(name)`` (a new file's descriptor: O_EXCL, a
    taken name raises FileExistsError), ``write_at(fd, name, data, offset)`` and
    ``failed(name, exc, lost)``. A bad directory raises OSError naming it."""
    _stack(mctx)
    config = mctx.config
    after_drop = config.iface is not None and not config.keep_privileges
    return mctx.outputs.open_dir(path, after_drop=after_drop)
