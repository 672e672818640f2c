"""Cleanup of testbeds: the registry of the beds this process has up (unwound by an atexit
hook and on SIGTERM / SIGHUP), removing a namespace with the processes in it, and
`cleanup_stale` for what a killed run left behind (state files in /run/mosxdp-testbed name
each bed's owner)."""
from __future__ import annotations

import atexit
import os
import re
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .testbed import Testbed

STATE_DIR = "/run/mosxdp-testbed"
PREFIX_RE = re.compile(r"^mx[0-9a-f]{6}$")
_NS_SUFFIXES = ("-cli", "-srv", "-mon")

# --------------------------------------------------------------------------
# process-wide registry: atexit and signal paths

_live: dict[str, "Testbed"] = {}
_lock = threading.RLock()
_saved_handlers: dict[int, object] = {}
_atexit_registered = False


_handler_pid = 0


def _on_signal(signum, _frame):
    if os.getpid() != _handler_pid:
        # A forked child (pyroute2 forks helpers) inherited the handler: it
        # must die as it would have by default, never unwind into our frames.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)
    raise SystemExit(128 + signum)


def register(tb: "Testbed") -> None:
    global _atexit_registered, _handler_pid
    with _lock:
        _handler_pid = os.getpid()
        if not _atexit_registered:
            atexit.register(_cleanup_all)
            _atexit_registered = True
        _live[tb.prefix] = tb
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if sig in _saved_handlers:
                    continue
                try:
                    cur = signal.getsignal(sig)
                    if cur in (signal.SIG_DFL, None):
                        signal.signal(sig, _on_signal)
                        _saved_handlers[sig] = cur
                except (ValueError, OSError):
                    pass


def unregister(tb: "Testbed") -> None:
    with _lock:
        _live.pop(tb.prefix, None)
        if not _live and threading.current_thread() is threading.main_thread():
            for sig, old in list(_saved_handlers.items()):
                try:
                    if signal.getsignal(sig) is _on_signal:
                        signal.signal(sig, old if old is not None else signal.SIG_DFL)
                except (ValueError, OSError):
                    pass
                del _saved_handlers[sig]


def _cleanup_all() -> None:
    if os.getpid() != _handler_pid:
        return
    with _lock:
        beds = list(_live.values())
    for tb in beds:
        try:
            tb.close()
        except Exception:
            pass


# --------------------------------------------------------------------------
# low-level helpers


def _list_netns() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except OSError:
        return []


def _ns_pids(ns: str) -> list[int]:
    r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    if r.returncode != 0:
        return []
    return [int(x) for x in r.stdout.split() if x.isdigit()]


def _kill_pids(pids, grace: float = 1.0) -> None:
    me = os.getpid()
    pids = [p for p in pids if p != me]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _pid_alive(p)]
        if alive:
            time.sleep(0.02)
    for p in alive:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pid_alive(pid: int) -> bool:
    """True for a live (non-zombie) process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return False


def delete_netns(ns: str) -> None:
    _kill_pids(_ns_pids(ns))
    _remove_interface_locks(ns)
    r = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
    if r.returncode != 0 and os.path.exists(f"/run/netns/{ns}"):
        # Retry once: a process may have been on its way out.
        time.sleep(0.1)
        _kill_pids(_ns_pids(ns), grace=0.2)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _remove_interface_locks(ns: str) -> None:
    """The lock files (mosxdp.io.xdp.owner) of the namespace's interfaces: they go with it,
    and its processes are gone."""
    from ..io.xdp.owner import LOCK_DIR
    try:
        prefix = "netns%d-" % os.stat(f"/run/netns/{ns}").st_ino
        names = [n for n in os.listdir(LOCK_DIR) if n.startswith(prefix)]
    except OSError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(LOCK_DIR, name))
        except OSError:
            pass


def pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").replace(" ", "")
    except OSError:
        return "?"


def root_links_with_prefix(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(prefix))
    except OSError:
        return []


def cleanup_stale(prefix: str | None = None) -> list[str]:
    """Remove testbed leftovers; return the names of what was removed.

    With ``prefix``: every network namespace ``<prefix>-cli|srv|mon`` (after
    killing the processes in it) and every root-namespace link whose name starts
    with ``prefix``, whoever owns them.  Without: the leftovers of testbeds whose
    owning process is gone (a state file in /run/mosxdp-testbed names the pid),
    and namespaces of the testbed naming scheme that have no state file at all.
    """
    removed: list[str] = []
    if prefix is not None:
        if not prefix or "/" in prefix:
            raise ValueError(f"bad testbed prefix {prefix!r}")
        for ns in _list_netns():
            if ns.startswith(prefix) and ns[len(prefix):] in _NS_SUFFIXES:
                delete_netns(ns)
                removed.append(ns)
        for ln in root_links_with_prefix(prefix):
            subprocess.run(["ip", "link", "del", ln], capture_output=True)
            removed.append(ln)
        try:
            os.unlink(os.path.join(STATE_DIR, prefix))
        except OSError:
            pass
        return removed
    owners: dict[str, int] = {}
    foreign: set[str] = set()
    mypidns = pid_namespace()
    try:
        for name in os.listdir(STATE_DIR):
            try:
                with open(os.path.join(STATE_DIR, name)) as f:
                    fields = f.read().split()
                owners[name] = int(fields[0])
                if len(fields) > 2 and fields[2] != mypidns:
                    foreign.add(name)  # owner lives in another pid namespace: can't judge
            except (OSError, ValueError, IndexError):
                owners[name] = 0
    except OSError:
        pass
    prefixes = set(owners)
    for ns in _list_netns():
        for suf in _NS_SUFFIXES:
            if ns.endswith(suf) and PREFIX_RE.match(ns[: -len(suf)]):
                prefixes.add(ns[: -len(suf)])
    for p in sorted(prefixes):
        pid = owners.get(p)
        if p in foreign:
            continue
        if pid is None:
            # No state file: a bed of our naming scheme nobody owns, unless it
            # is being built right now (state file written before any netns).
            pass
        elif pid and _pid_alive(pid):
            continue
        with _lock:
            if p in _live:
                continue
        removed += cleanup_stale(p)
    return removed
