"""Output files (an extension): mosx_open_output, mosx_open_outdir.

What an app writes through these is safe against planted links, checked at start, and
loud when it fails (mosxdp/io/outputs.py): a failed write is counted, the run goes on,
and the command line ends it with status 3 and one line naming the file and the reason.
"""
from .context import _stack


def mosx_open_output(mctx, path, binary=False):
    """The output file ``path`` ('-': standard output), opened now: a symbolic link there
    is refused, a regular file emptied (not if it has other hard links). Returns an object
    with ``write(record)`` (str or bytes; one record, e.g. a line), ``flush()``, ``close()``.
    A bad path raises OSError naming it; a failed write later does not raise."""
    _stack(mctx)
    return mctx.outputs.open_file(path, binary=binary)


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
