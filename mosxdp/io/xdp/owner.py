"""Who owns an interface's XDP attachment: one lock file per interface, flock'ed by the
monitor that attached mosxdp's program there.

``/run/mosxdp/netns<INODE>-if<IFINDEX>.lock`` (an interface is an ifindex in one network
namespace, so the namespace's inode is in the name). The file says which process holds it
and in what state (``pid``, ``state``, ``program``, ``iface``, ``peer`` lines). The lock is
what counts, not the file: the kernel releases a flock when its holder dies, so a monitor
killed with ``kill -9`` leaves a file nobody holds, and its program is stale. A monitor that
stops and leaves its program attached on purpose (fail-open) writes ``state fail-open``
and releases the lock; whoever takes the lock next finds that record and replaces the
program without calling it stale. A monitor that detaches removes the file.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from dataclasses import dataclass

from ..errors import XdpError

__all__ = ["LOCK_DIR", "Holder", "InterfaceLock", "InUse", "netns_inode", "lock_path",
           "acquire", "acquire_all", "holder_of", "check_free"]

#: Where the lock files live (a tmpfs: cleared at boot, like the attachments).
LOCK_DIR = "/run/mosxdp"

RUNNING = "running"
FAIL_OPEN = "fail-open"


class InUse(XdpError):
    """The interface is held by a live monitor."""

    def __init__(self, ifname: str, holder: "Holder"):
        self.ifname = ifname
        self.holder = holder
        who = "mosxdp PID %d" % holder.pid if holder.pid else "another mosxdp process"
        super().__init__("%s in use by %s" % (ifname, who))


@dataclass(frozen=True)
class Holder:
    """What a lock file says (``held``: a live process holds its lock)."""
    pid: int | None = None
    state: str | None = None
    program: int | None = None
    iface: str | None = None
    peer: str | None = None
    held: bool = False

    @classmethod
    def parse(cls, text: str, held: bool = False) -> "Holder":
        fields: dict[str, str] = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            fields[key] = value.strip()

        def number(key):
            value = fields.get(key, "")
            return int(value) if value.isdigit() else None
        return cls(number("pid"), fields.get("state") or None, number("program"),
                   fields.get("iface") or None, fields.get("peer") or None, held)

    def text(self) -> str:
        lines = ["pid %d" % self.pid, "state %s" % self.state]
        if self.program:
            lines.append("program %d" % self.program)
        for key in ("iface", "peer"):
            if getattr(self, key):
                lines.append("%s %s" % (key, getattr(self, key)))
        return "\n".join(lines) + "\n"


def netns_inode(netns: str | None = None) -> int:
    """The inode of a network namespace: ours, or an ip-netns name's."""
    path = "/run/netns/%s" % netns if netns else "/proc/self/ns/net"
    try:
        return os.stat(path).st_ino
    except OSError as e:
        raise XdpError("cannot identify network namespace %s: %s" % (netns or "of this process",
                                                                     e.strerror)) from None


def lock_path(ifindex: int, netns: str | None = None) -> str:
    return os.path.join(LOCK_DIR, "netns%d-if%d.lock" % (netns_inode(netns), ifindex))


def _lock_dir() -> str:
    """LOCK_DIR, created if needed; refused when someone else could put files in it."""
    try:
        os.mkdir(LOCK_DIR, 0o755)
    except FileExistsError:
        pass
    except OSError as e:
        raise XdpError("cannot create %s (%s): mosxdp records there which monitor owns an "
                       "interface; run as root" % (LOCK_DIR, e.strerror)) from None
    st = os.lstat(LOCK_DIR)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        raise XdpError("%s must be a directory owned by root (or by this user) that only its "
                       "owner can write; remove it and run again" % LOCK_DIR)
    return LOCK_DIR


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace")


class InterfaceLock:
    """A held lock of one interface (``previous``: what the file said when taken)."""

    def __init__(self, ifname: str, path: str, fd: int, previous_text: str):
        self.ifname = ifname
        self.path = path
        self.fd: int | None = fd
        self._previous_text = previous_text
        self.previous = Holder.parse(previous_text)

    def record(self, state: str = RUNNING, *, program: int | None = None,
               peer: str | None = None) -> None:
        """Write who holds the lock (this process) and in what state."""
        self._write(Holder(os.getpid(), state, program, self.ifname, peer).text())

    def _write(self, text: str) -> None:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, text.encode(), 0)

    def release(self, *, keep_record: bool = False) -> None:
        """Give the lock up; the file is removed unless ``keep_record`` (a program stays
        attached: the next owner reads what was left)."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            if not keep_record:
                try:
                    os.unlink(self.path)  # still holding the lock: nobody took it meanwhile
                except OSError:
                    pass
        finally:
            os.close(fd)

    def restore(self) -> None:
        """Give the lock up as it was found (nothing was changed on the interface): the
        earlier record back, or no file when there was none."""
        if self.fd is not None and self._previous_text:
            self._write(self._previous_text)
        self.release(keep_record=bool(self._previous_text))


def acquire(ifname: str, ifindex: int, *, netns: str | None = None) -> InterfaceLock:
    """Take the lock of one interface; ``InUse`` when a live process holds it. The file's
    earlier record, if any, is the lock's ``previous``; nothing is written yet."""
    path = os.path.join(_lock_dir(), os.path.basename(lock_path(ifindex, netns)))
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise XdpError("cannot open %s: %s" % (path, e.strerror)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_of_held(fd)
            os.close(fd)
            raise InUse(ifname, holder) from None
        except BaseException:
            os.close(fd)
            raise
        # The holder before us may have removed the file after we opened it: our lock is
        # then on a file nobody else will find. Take the one at the path instead.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return InterfaceLock(ifname, path, fd, _read(fd))
        os.close(fd)


def _holder_of_held(fd: int) -> Holder:
    """The record of a lock someone holds (which writes it just after taking it)."""
    for _ in range(20):
        holder = Holder.parse(_read(fd), held=True)
        if holder.pid:
            return holder
        time.sleep(0.01)
    return holder


def acquire_all(names: dict[str, int]) -> list[InterfaceLock]:
    """The locks of every interface ({name: ifindex}), each recording this process, or
    none of them: the first one in use raises ``InUse`` after the others were given back
    as they were found."""
    locks: list[InterfaceLock] = []
    try:
        for name, ifindex in names.items():
            locks.append(acquire(name, ifindex))
    except BaseException:
        for lock in locks:
            lock.restore()
        raise
    for lock in locks:
        lock.record()
    return locks


def holder_of(ifindex: int, *, netns: str | None = None) -> Holder | None:
    """What the lock file of an interface says, and whether a live process holds it
    (read only; None when there is no file)."""
    try:
        fd = os.open(lock_path(ifindex, netns), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP):
            return None
        raise XdpError("cannot read %s: %s" % (lock_path(ifindex, netns), e.strerror)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_of_held(fd)
        return Holder.parse(_read(fd))
    finally:
        os.close(fd)


def check_free(ifnames) -> None:
    """``InUse`` for the first of ``ifnames`` (in this network namespace) a live monitor
    holds: an early look, before an app creates its outputs (the lock itself is taken
    when the program is set up). Unknown names are left to that set-up to report."""
    import socket
    for name in ifnames:
        try:
            ifindex = socket.if_nametoindex(name)
        except OSError:
            continue
        holder = holder_of(ifindex)
        if holder is not None and holder.held:
            raise InUse(name, holder)
