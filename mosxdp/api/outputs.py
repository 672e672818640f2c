"""Outputs (an extension): mosx_open_output, mosx_open_sink, mosx_open_outdir,
mosx_open_report and mosx_sum_counts.

What an app writes to a file through these is safe against planted links, checked at
start, and loud when it fails (mosxdp/io/outputs.py): a failed write is counted, the run
goes on, and the command line ends it with status 3 and one line naming the file and the
reason. A log app's records can go to a unix socket or a Redis server instead
(mosx_open_sink, mosxdp/io/sinks.py): the run never waits for them, and what they drop is
counted and said.
"""
import re

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


#: The help of a log app's --output (connlog, nat --log, scrub --log, ...).
MOSX_SINK_HELP = ("FILE, '-' (stdout), unix:PATH (a unix stream socket), "
                  "redis://HOST[:PORT][/DB]?key=KEY&mode=list|stream|channel or "
                  "redis+unix:///SOCKET?key=KEY&mode=... (docs/outputs.md, Sinks)")


def mosx_open_sink(mctx, spec, option="--output", combine=None):
    """Where a log app's records go, ``spec`` as a user gives it (``option``: the option
    that named it, for messages):

    * a path: the file, as ``mosx_open_output`` opens it; '-': standard output;
    * ``unix:PATH``: a unix stream socket, the records as written (JSON lines);
    * ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?PARAMS]`` or
      ``redis+unix://[[USER]:PASSWORD@]/PATH/TO/SOCKET[?PARAMS]``: a Redis server, each
      record (its final newline taken off) one RPUSH (``mode=list``, the default), XADD
      (``mode=stream``, in the entry's field ``field``, default ``json``) or PUBLISH
      (``mode=channel``) to ``key`` (default ``mosxdp``).

    Returns an object with ``write(record)`` (str or bytes: one record, e.g. a JSON line),
    ``flush()``, ``close()`` and ``kind`` ("file", "stdout", "unix" or "redis"). A network
    sink never blocks: records wait in a bounded queue, then are dropped and counted; it
    reconnects by itself. A bad spec, a file that cannot be opened, or a server that
    refuses the sink (a wrong password) raises OSError with one line naming ``option``.
    A run split over workers merges the records as ``mosx_open_output`` does (``combine``
    the same)."""
    _stack(mctx)
    config = mctx.config
    after_drop = config.iface is not None and not config.keep_privileges
    out = mctx.outputs.open_sink(spec, option=option, after_drop=after_drop)
    out.combine = combine
    return out


def mosx_open_report(mctx, combine=None):
    """The run's standard error as an output, for an app's report lines (its summary at
    teardown): ``write(line)`` (the line with its newline), ``flush()``, ``close()``. With
    one worker a line goes out when written, as a ``print`` to stderr; a run split over
    workers writes the workers' lines where one worker writes them, and at a moment of
    every worker (a timer, the teardown) gives them to ``combine`` as mosx_open_output
    does: ``mosx_sum_counts`` makes one line of lines that differ only in their counts."""
    _stack(mctx)
    out = mctx.outputs.open_stderr()
    out.combine = combine
    return out


_COUNT = re.compile(rb"\d+")


def mosx_sum_counts(records):
    """Records (bytes) that are the same text but for their whole numbers, as one record
    with each number the sum of those at its place ("scrub: 3 hits" and "scrub: 4 hits":
    "scrub: 7 hits"). Records that differ otherwise are returned as they are."""
    texts = {tuple(_COUNT.split(record)) for record in records}
    if len(texts) != 1:
        return list(records)
    counts = [[int(n) for n in _COUNT.findall(record)] for record in records]
    sums = iter(str(sum(column)).encode() for column in zip(*counts))
    return [_COUNT.sub(lambda _match: next(sums), records[0])]


def mosx_open_outdir(mctx, path):
    """The output directory ``path`` (made if absent), checked now that the run can create
    files in it (live: with the privileges the monitor keeps after set-up). Returns an
    object with ``exists(name)``, ``create(name)`` (a new file made by the directory's
    writer thread: O_EXCL, a name taken now raises FileExistsError; the file has
    ``write_at(data, offset)``, ``close()`` and ``failed``), ``failed(name, exc, lost)`` and
    ``skipped(size)``. A bad directory raises OSError naming it."""
    _stack(mctx)
    config = mctx.config
    after_drop = config.iface is not None and not config.keep_privileges
    return mctx.outputs.open_dir(path, after_drop=after_drop)
