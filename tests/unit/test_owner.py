"""Interface ownership (mosxdp.io.xdp.owner): the lock file of an interface is held by a
live process and released by the kernel when that process dies, whatever the file says;
what a released file says (a stale owner, a fail-open program) is read by the next owner;
the lock directory and files are not followed through symlinks. Real processes and
flock, in a temporary lock directory."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from mosxdp.io.errors import XdpError
from mosxdp.io.xdp import owner


@pytest.fixture
def lock_dir(tmp_path, monkeypatch):
    d = tmp_path / "run-mosxdp"
    monkeypatch.setattr(owner, "LOCK_DIR", str(d))
    return d


def hold_in_child(lock_dir, ifindex, *, state="running"):
    """A child process that takes the lock of (our netns, ifindex), records itself, says
    "held" and sleeps."""
    code = textwrap.dedent(f"""
        import sys, time
        from mosxdp.io.xdp import owner
        owner.LOCK_DIR = {str(lock_dir)!r}
        lock = owner.acquire("ifx", {ifindex})
        lock.record({state!r}, program=42, peer="ify")
        print("held", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_holder_refuses_others_and_is_named(lock_dir):
    child = hold_in_child(lock_dir, 7)
    try:
        with pytest.raises(owner.InUse) as ei:
            owner.acquire("ifx", 7)
        assert str(ei.value) == f"ifx in use by mosxdp PID {child.pid}"
        held = owner.holder_of(7)
        assert held.held and held.pid == child.pid and held.program == 42 and held.peer == "ify"
        # another interface is free
        other = owner.acquire("ifz", 8)
        other.release()
    finally:
        child.kill()
        child.wait()


def test_a_dead_holder_releases_and_its_record_is_read(lock_dir):
    child = hold_in_child(lock_dir, 7)
    child.send_signal(signal.SIGKILL)
    child.wait()
    found = owner.holder_of(7)
    assert not found.held and found.pid == child.pid and found.state == "running"
    lock = owner.acquire("ifx", 7)
    assert lock.previous.pid == child.pid and lock.previous.program == 42
    lock.record(program=43)
    assert owner.holder_of(7) == owner.Holder(os.getpid(), "running", 43, "ifx", None, True)
    lock.release()
    assert owner.holder_of(7) is None and not os.listdir(lock_dir)


def test_fail_open_record_outlives_the_lock_and_restore_gives_it_back(lock_dir):
    lock = owner.acquire("ifx", 7)
    lock.record(owner.FAIL_OPEN, program=42, peer="ify")
    lock.release(keep_record=True)
    left = owner.holder_of(7)
    assert (left.state, left.program, left.peer, left.held) == ("fail-open", 42, "ify", False)
    # a run that takes the lock and then gives up without touching anything
    lock = owner.acquire("ifx", 7)
    assert lock.previous.state == "fail-open"
    lock.record(program=99)
    lock.restore()
    assert owner.holder_of(7).state == "fail-open" and owner.holder_of(7).program == 42


def test_acquire_all_is_all_or_nothing(lock_dir):
    child = hold_in_child(lock_dir, 8)
    try:
        with pytest.raises(owner.InUse, match="ify in use by mosxdp PID %d" % child.pid):
            owner.acquire_all({"ifx": 7, "ify": 8})
        assert owner.holder_of(7) is None  # given back: no file left
    finally:
        child.kill()
        child.wait()
    locks = owner.acquire_all({"ifx": 7, "ify": 8})
    assert all(owner.holder_of(i).pid == os.getpid() for i in (7, 8))
    for lock in locks:
        lock.release()


def test_lock_file_symlink_is_not_followed(lock_dir, tmp_path):
    lock_dir.mkdir(mode=0o755)
    target = tmp_path / "elsewhere"
    os.symlink(target, owner.lock_path(7))
    with pytest.raises(XdpError, match="cannot open .*netns.*-if7.lock"):
        owner.acquire("ifx", 7)
    assert not target.exists()


def test_lock_dir_others_can_write_is_refused(lock_dir):
    lock_dir.mkdir()
    os.chmod(lock_dir, 0o777)
    with pytest.raises(XdpError, match="must be a directory owned by root"):
        owner.acquire("ifx", 7)


def test_lock_dir_symlink_is_refused(lock_dir, tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    os.symlink(real, lock_dir)
    with pytest.raises(XdpError, match="must be a directory"):
        owner.acquire("ifx", 7)
    assert not os.listdir(real)


def test_the_network_namespace_is_part_of_the_name(lock_dir):
    ino = os.stat("/proc/self/ns/net").st_ino
    assert owner.lock_path(7) == os.path.join(str(lock_dir), f"netns{ino}-if7.lock")
    with pytest.raises(XdpError, match="network namespace nosuchns"):
        owner.lock_path(7, "nosuchns")
