"""The writer thread of an output directory (mosxdp/io/filewriter.py) and its batch of file
operations, compiled (mosxdp/io/_batchio.c, without the GIL) and in Python: the same
files, the same failures, whichever runs.

Failures are real ones from the kernel: a name that exists (EEXIST), RLIMIT_FSIZE (EFBIG)
in a forked child.
"""
import array
import errno
import os
import resource
import threading

import pytest
from forked import in_child

from mosxdp.io import _batchio, filewriter
from mosxdp.io.filewriter import CLOSE, CREATE, GROUP, WRITE, DirWriter

BATCHES = {"compiled": _batchio.run, "python": filewriter.run_batch_python}


def GROUPS(count=4):
    return array.array("i", [-1] * count)


@pytest.fixture(params=sorted(BATCHES))
def run_batch(request):
    return BATCHES[request.param]


def _dir(path):
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def test_a_batch_makes_writes_and_closes_in_order(tmp_path, run_batch):
    (tmp_path / "taken").write_bytes(b"older")
    dfd = _dir(tmp_path)
    fds = array.array("i", [-1] * 3)
    try:
        failures = run_batch(dfd, fds, GROUPS(), [
            (CREATE, 0, b"a", 0),
            (WRITE, 0, b"world", 6),             # out of order: a hole, then filled
            (WRITE, 0, b"hello ", 0),
            (CREATE, 1, b"taken", 0),            # never opened, never truncated
            (WRITE, 1, b"xyz", 0),               # to the file that failed: not written
            (CREATE, 2, b"b", 0),
            (CLOSE, 0, None, 0),
        ])
        assert failures == [(3, errno.EEXIST, 0), (4, 0, 3)]
        assert fds[0] == -1 and fds[1] == -1 and fds[2] >= 0
        assert run_batch(dfd, fds, GROUPS(), [(WRITE, 2, b"", 0), (CLOSE, 2, None, 0)]) == []
    finally:
        os.close(dfd)
    assert (tmp_path / "a").read_bytes() == b"hello world"
    assert (tmp_path / "taken").read_bytes() == b"older"
    assert (tmp_path / "b").read_bytes() == b""
    assert oct((tmp_path / "a").stat().st_mode & 0o777) == oct(0o644)


def test_a_group_takes_the_first_suffix_none_of_its_names_has(tmp_path, run_batch):
    """Files of a group share a suffix ("", c1, c2 ...): the first one no base has, whatever
    holds it (a file, a dangling link); a later group of the same bases takes the next; a
    name taken after the group's first file fails its file, never opened."""
    (tmp_path / "a").write_bytes(b"older")
    (tmp_path / "bc1").symlink_to(tmp_path / "nowhere")
    dfd = _dir(tmp_path)
    fds, groups = array.array("i", [-1] * 4), GROUPS(2)
    bases = (b"a", b"b")
    try:
        failures = run_batch(dfd, fds, groups, [
            (GROUP, 0, (0, bases, 1), 0),        # the group's first file: b, suffix c2
            (WRITE, 0, b"B", 0),
            (GROUP, 1, (1, bases, 0), 0),        # another group: c2 is taken now, so c3
            (GROUP, 2, (0, bases, 0), 0),        # the first group's other file: ac2
        ])
        assert failures == [] and list(groups) == [2, 3]
        (tmp_path / "bc3").write_bytes(b"someone else")
        failures = run_batch(dfd, fds, groups, [(GROUP, 3, (1, bases, 1), 0),
                                                (WRITE, 3, b"x", 0)])
        assert failures == [(0, errno.EEXIST, 0), (1, 0, 1)] and fds[3] == -1
        for slot in range(3):
            os.close(fds[slot])
    finally:
        os.close(dfd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "ac2", "ac3", "bc1", "bc2", "bc3"]
    assert (tmp_path / "bc2").read_bytes() == b"B" and (tmp_path / "bc3").read_bytes() == b"someone else"
    assert not (tmp_path / "nowhere").exists()


def test_a_failed_write_keeps_what_it_wrote_and_closes_the_file(tmp_path, run_batch):
    def child():
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (100, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        dfd = _dir(tmp_path)
        fds = array.array("i", [-1])
        failures = run_batch(dfd, fds, GROUPS(), [(CREATE, 0, b"a", 0), (WRITE, 0, b"x" * 150, 0),
                                        (WRITE, 0, b"y" * 10, 150)])
        return [list(f) for f in failures], fds[0]     # JSON from the child
    failures, fd = in_child(child)
    assert failures == [[1, errno.EFBIG, 50], [2, 0, 10]] and fd == -1
    assert (tmp_path / "a").read_bytes() == b"x" * 100


def test_bad_operations_are_refused_before_anything_runs(tmp_path):
    dfd = _dir(tmp_path)
    try:
        with pytest.raises(TypeError, match="array"):
            _batchio.run(dfd, array.array("q", [-1]), GROUPS(), [])
        with pytest.raises(ValueError, match="op 1"):
            _batchio.run(dfd, array.array("i", [-1]), GROUPS(), [(CREATE, 0, b"a", 0),
                                                                 (WRITE, 5, b"x", 0)])
        with pytest.raises(TypeError, match="op 0"):
            _batchio.run(dfd, array.array("i", [-1]), GROUPS(), [(CREATE, 0, "a", 0)])
        with pytest.raises(ValueError, match="op 0"):
            _batchio.run(dfd, array.array("i", [-1]), GROUPS(), [(GROUP, 0, (7, (b"a",), 0), 0)])
    finally:
        os.close(dfd)
    assert os.listdir(tmp_path) == []


class Counts:
    def __init__(self):
        self.failures, self.skipped = [], 0

    def failed(self, name, exc, lost=0):
        self.failures.append((name, exc.errno, lost))

    def skip(self, size):
        self.skipped += size


@pytest.mark.parametrize("build", sorted(BATCHES))
def test_many_files_from_the_packet_thread_land_whole(tmp_path, monkeypatch, build):
    """Files made, written in pieces and closed from this thread while the writer runs:
    every byte in place; slots of closed files are reused (the descriptor table stays
    small); a queue bound of one byte makes every put wait for the writer, and nothing
    is lost."""
    monkeypatch.setattr(filewriter, "run_batch", BATCHES[build])
    monkeypatch.setattr(filewriter, "MAX_QUEUED_BYTES", 1)
    counts = Counts()
    dfd = _dir(tmp_path)
    writer = DirWriter(dfd, counts.failed, counts.skip)
    want = {}
    try:
        for n in range(300):
            f = writer.open(f"f{n}")
            data = os.urandom(n * 7)
            for start in range(0, len(data), 100):
                assert f.write_at(data[start:start + 100], start)
            f.close()
            want[f"f{n}"] = data
        writer.close()
    finally:
        os.close(dfd)
    assert counts.failures == [] and counts.skipped == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == want
    assert len(writer._fds) < 50 and writer.pending == set()
    assert not any(t.name == "mosxdp-outdir-writer" and t.is_alive() for t in threading.enumerate())


def test_a_forked_worker_starts_its_own_writer(tmp_path):
    counts = Counts()
    dfd = _dir(tmp_path)
    writer = DirWriter(dfd, counts.failed, counts.skip)
    first = writer.open("parent")
    first.write_at(b"p", 0)
    first.close()

    def child():
        f = writer.open("child")          # the parent's thread is not in this process
        f.write_at(b"c", 0)
        f.close()
        writer.close()
        return (tmp_path / "child").read_text()
    try:
        assert in_child(child) == "c"
        writer.close()
    finally:
        os.close(dfd)
    assert (tmp_path / "parent").read_bytes() == b"p"


def test_a_batch_that_raises_fails_its_files_and_the_writer_goes_on(tmp_path, monkeypatch):
    """A bug in a batch (not an OSError of one file) fails that batch's files, counted, and
    the next batch is written by the same thread: it never stops before close()."""
    import time
    calls = []

    def flaky(dir_fd, fds, groups, ops):
        calls.append(len(ops))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return filewriter.run_batch_python(dir_fd, fds, groups, ops)
    monkeypatch.setattr(filewriter, "run_batch", flaky)
    counts = Counts()
    dfd = _dir(tmp_path)
    writer = DirWriter(dfd, counts.failed, counts.skip)
    try:
        first = writer.open("first")
        writer.flush()                        # the lot so far to the writer
        deadline = time.monotonic() + 10
        while not first.failed:               # the first batch ran (and raised)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not first.write_at(b"lost", 0)  # known failed: counted, not queued
        second = writer.open("second")
        assert second.write_at(b"kept", 0)
        second.close()
        writer.close()
    finally:
        os.close(dfd)
    assert ("(the writer)", errno.EIO, 0) in counts.failures and counts.skipped == 4
    assert not second.failed and len(calls) >= 2
    assert (tmp_path / "second").read_bytes() == b"kept" and not (tmp_path / "first").exists()


@pytest.mark.parametrize("build", sorted(BATCHES))
def test_groups_from_the_packet_thread_share_their_suffix(tmp_path, monkeypatch, build):
    """200 connections of one 4-tuple, each a group of two files made and closed in turn:
    each takes the next suffix (the directory remembers, not the writer), a file's name
    has its suffix once made, and group slots are reused once the writer is done with them
    (no queued bytes allowed: each put waits for the writer, so few are in flight)."""
    monkeypatch.setattr(filewriter, "run_batch", BATCHES[build])
    monkeypatch.setattr(filewriter, "MAX_QUEUED_BYTES", 0)
    counts, made = Counts(), []
    dfd = _dir(tmp_path)
    writer = DirWriter(dfd, counts.failed, counts.skip, made.append)
    files = []
    try:
        for n in range(200):
            group = writer.group(("x-y", "y-x"))
            for index in (1, 0):
                f = group.create(index)
                f.write_at(b"%d" % n, 0)
                f.close()
                files.append(f)
            group.close()
        writer.close()
    finally:
        os.close(dfd)
    assert counts.failures == [] and sum(made) == 400
    names = {p.name: p.read_text() for p in tmp_path.iterdir()}
    suffix = lambda n: f"c{n}" if n else ""     # noqa: E731
    assert names == {f"{base}{suffix(n)}": str(n) for n in range(200) for base in ("x-y", "y-x")}
    assert files[-1].name == "x-yc199" and files[-2].name == "y-xc199"
    assert len(writer._groups) < 20


def test_a_live_runs_writer_waits_for_the_start_after_the_capability_drop(tmp_path):
    """A live run drops its capabilities after set-up, per thread and only while it has one
    thread: a file asked for before that (in an app's setup) is queued, no thread runs
    until the outputs start, then it is made and written."""
    from mosxdp.io import outputs as O

    def writer_threads():
        return [t for t in threading.enumerate() if t.name == "mosxdp-outdir-writer"]
    outputs = O.Outputs()
    d = outputs.open_dir(tmp_path / "out", after_drop=True)
    before = len(writer_threads())
    f = d.create("early")
    assert f.write_at(b"queued", 0)
    assert len(writer_threads()) == before and not (tmp_path / "out" / "early").exists()
    outputs.start()
    f.close()
    d.finish()
    assert (tmp_path / "out" / "early").read_bytes() == b"queued" and d.files == 1
    # at close, what a run that never started queued is written all the same
    d2 = O.Outputs().open_dir(tmp_path / "out2", after_drop=True)
    d2.create("late").write_at(b"x", 0)
    d2.close()
    assert (tmp_path / "out2" / "late").read_bytes() == b"x"


def _wait_for(path, data):
    import time
    deadline = time.monotonic() + 10
    while not (path.exists() and path.read_bytes() == data):
        assert time.monotonic() < deadline, path
        time.sleep(0.005)


def test_the_packet_thread_hands_its_operations_over_in_lots(tmp_path, monkeypatch):
    """One lock for many operations: they reach the writer LOT_OPS at a time, or at a
    flush (the engines' tick) or close, in the order asked for."""
    import time
    monkeypatch.setattr(filewriter, "LOT_OPS", 4)
    counts = Counts()
    dfd = _dir(tmp_path)
    writer = DirWriter(dfd, counts.failed, counts.skip)
    try:
        a = writer.open("a")
        a.write_at(b"x", 0)
        time.sleep(0.05)
        assert not (tmp_path / "a").exists()      # two operations: still the thread's
        writer.flush()
        _wait_for(tmp_path / "a", b"x")
        b = writer.open("b")
        b.write_at(b"1", 0)
        b.write_at(b"2", 1)
        a.write_at(b"y", 1)                        # the fourth: the lot goes
        _wait_for(tmp_path / "b", b"12")
        _wait_for(tmp_path / "a", b"xy")
        b.write_at(b"3", 2)
        a.close()
        b.close()
        writer.close()                             # what is left goes first
    finally:
        os.close(dfd)
    assert counts.failures == [] and counts.skipped == 0
    assert (tmp_path / "b").read_bytes() == b"123" and len(writer._fds) == 2
