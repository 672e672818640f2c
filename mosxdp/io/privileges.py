"""Capabilities: the check before XDP set-up, and the drop once the live datapath is set up.

:func:`check_privileges` reads the effective set (/proc/self/status) and says what is
missing for loading and attaching XDP programs. Loading and attaching the XDP program,
creating the AF_XDP sockets and registering the UMEM need root's capabilities; the running
loop and the clean exit need far less (see
``RUNTIME_CAPS`` and docs/datapath.md, "Privileges"). :func:`drop_to` keeps only the
given capabilities in the effective and permitted sets, empties the inheritable and
ambient sets, removes every other capability from the bounding set and sets
no_new_privs, all through ctypes on libc (capget/capset, prctl).

Capabilities belong to a thread, not to the process: :func:`drop_to` refuses to run
while the process has more than one thread (a thread started before the drop would keep
everything).
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass, field

from .errors import XdpError

__all__ = ["CAP_NAMES", "RUNTIME_CAPS", "PrivilegeError", "DropResult", "cap_number",
           "cap_names", "mask_of", "plan", "read_status", "drop_to", "last_cap", "runtime_caps",
           "effective_caps", "check_privileges", "as_after_setup"]

#: linux/capability.h, by number.
CAP_NAMES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)
CAP_SETPCAP = CAP_NAMES.index("CAP_SETPCAP")

#: What the live monitor needs after set-up: CAP_NET_ADMIN to detach its XDP programs
#: over netlink at exit (RTM_SETLINK). Nothing else: the rings and the UMEM are memory
#: mapped, and since Linux 6.5 bpf() map commands on an fd already open need no
#: capability even with kernel.unprivileged_bpf_disabled (only map and program creation
#: and the *_GET_FD_BY_ID commands do, and those happen at set-up).
RUNTIME_CAPS = ("CAP_NET_ADMIN",)


def runtime_caps(release: str | None = None, unprivileged_bpf_disabled: str | None = None) -> tuple:
    """RUNTIME_CAPS for this kernel: before Linux 6.5, kernel.unprivileged_bpf_disabled
    (non-zero) refused every bpf() command without CAP_BPF, the verdict map updates of
    the running loop included, so CAP_BPF stays. The arguments default to this machine's
    ``uname -r`` and sysctl (a test passes others)."""
    if release is None:
        release = os.uname().release
    if unprivileged_bpf_disabled is None:
        try:
            with open("/proc/sys/kernel/unprivileged_bpf_disabled") as f:
                unprivileged_bpf_disabled = f.read()
        except OSError:
            unprivileged_bpf_disabled = "0"
    numbers = []
    for part in release.split("-")[0].split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits) if digits else 0)
    if tuple(numbers) < (6, 5) and unprivileged_bpf_disabled.strip() not in ("", "0"):
        return RUNTIME_CAPS + ("CAP_BPF",)
    return RUNTIME_CAPS


class PrivilegeError(OSError):
    """The drop could not be done (the message says which step and why)."""


def cap_number(name: str) -> int:
    """The number of a capability given as "CAP_NET_ADMIN", "net_admin" or "12"."""
    text = name.strip()
    if text.isdigit():
        return int(text)
    text = text.upper()
    if not text.startswith("CAP_"):
        text = "CAP_" + text
    try:
        return CAP_NAMES.index(text)
    except ValueError:
        raise ValueError(f"unknown capability {name!r}") from None


def cap_names(mask: int) -> list[str]:
    """The capabilities of a bit mask, by name (``cap_N`` beyond the known ones)."""
    return [CAP_NAMES[n] if n < len(CAP_NAMES) else f"cap_{n}"
            for n in range(mask.bit_length()) if mask >> n & 1]


def mask_of(names) -> int:
    mask = 0
    for name in names:
        mask |= 1 << (name if isinstance(name, int) else cap_number(name))
    return mask


def last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return len(CAP_NAMES) - 1


@dataclass
class Plan:
    """What a drop will do, from the sets as they are (pure: tested without root)."""
    effective: int      # the new effective set (= the new permitted set)
    kept: int           # capabilities kept
    missing: int        # wanted but not in the permitted set: cannot be kept
    dropped: int        # in the permitted set or the bounding set now, and going
    bounding_drop: list[int] = field(default_factory=list)  # numbers for PR_CAPBSET_DROP
    can_drop_bounding: bool = True   # CAP_SETPCAP is effective


def plan(keep: int, permitted: int, effective: int, bounding: int) -> Plan:
    """The sets after keeping ``keep`` (a mask) out of the current ones."""
    kept = keep & permitted
    return Plan(effective=kept, kept=kept, missing=keep & ~permitted,
                dropped=(permitted | bounding) & ~keep,
                bounding_drop=[n for n in range(bounding.bit_length())
                               if bounding >> n & 1 and not keep >> n & 1],
                can_drop_bounding=bool(effective >> CAP_SETPCAP & 1))


# ------------------------------------------------------------------------------ libc
class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522   # two _CapData: capabilities 0-31 and 32-63
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_libc = None


def _lib():
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        for fn in (libc.capget, libc.capset):
            fn.argtypes = [ctypes.POINTER(_CapHeader), ctypes.POINTER(_CapData)]
            fn.restype = ctypes.c_int
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                               ctypes.c_ulong]
        libc.prctl.restype = ctypes.c_int
        _libc = libc
    return _libc


def _fail(what: str) -> PrivilegeError:
    err = ctypes.get_errno()
    return PrivilegeError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg2: int = 0, arg3: int = 0, what: str = "prctl") -> int:
    ret = _lib().prctl(option, arg2, arg3, 0, 0)
    if ret < 0:
        raise _fail(what)
    return ret


def _capget() -> tuple[int, int, int]:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if _lib().capget(ctypes.byref(header), data) != 0:
        raise _fail("capget")
    join = lambda attr: getattr(data[0], attr) | getattr(data[1], attr) << 32  # noqa: E731
    return join("effective"), join("permitted"), join("inheritable")


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        data[i].effective = effective >> 32 * i & 0xFFFFFFFF
        data[i].permitted = permitted >> 32 * i & 0xFFFFFFFF
        data[i].inheritable = inheritable >> 32 * i & 0xFFFFFFFF
    if _lib().capset(ctypes.byref(header), data) != 0:
        raise _fail("capset")


def _bounding() -> int:
    mask = 0
    for n in range(last_cap() + 1):
        if _prctl(PR_CAPBSET_READ, n, what=f"PR_CAPBSET_READ {n}") == 1:
            mask |= 1 << n
    return mask


def read_status(pid: int | str = "self") -> dict:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb (masks) and NoNewPrivs of /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith("Cap"):
                out[key] = int(value, 16)
            elif key == "NoNewPrivs":
                out[key] = int(value)
    return out


def effective_caps() -> int:
    """This process's effective capability set (CapEff); all of them for root when
    /proc cannot say."""
    try:
        caps = read_status().get("CapEff")
    except OSError:
        caps = None
    if caps is None:
        return (1 << 64) - 1 if os.geteuid() == 0 else 0
    return caps


def check_privileges() -> None:
    """Raise XdpError unless this process may load and attach XDP programs."""
    caps = effective_caps()
    missing = []
    if not caps & mask_of(["CAP_NET_ADMIN"]):
        missing.append("CAP_NET_ADMIN")
    if not caps & mask_of(["CAP_BPF", "CAP_SYS_ADMIN"]):  # CAP_SYS_ADMIN: kernels before CAP_BPF
        missing.append("CAP_BPF")
    if missing:
        if os.geteuid() != 0:
            what = "not running as root (missing %s)" % " and ".join(missing)
        else:
            what = "running as root but without %s (a restricted container?)" % " and ".join(missing)
        raise XdpError(
            "%s: loading and attaching XDP programs needs CAP_BPF and CAP_NET_ADMIN (bcc also "
            "uses CAP_PERFMON and CAP_SYS_ADMIN). Run as root (sudo), or grant the capabilities, "
            "e.g. `sudo setpriv --inh-caps +bpf,+net_admin,+perfmon,+sys_admin --ambient-caps "
            "+bpf,+net_admin,+perfmon,+sys_admin -- mosxdp ...`" % what)


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


# ------------------------------------------------------------------------------ drop
@dataclass
class DropResult:
    kept: list[str]
    dropped: list[str]
    bounding_kept: bool          # the bounding set could not be reduced (no CAP_SETPCAP)
    no_new_privs: bool = True

    def line(self) -> str:
        """One line for the start-up log."""
        kept = ", ".join(self.kept) or "no capability"
        text = f"privileges: kept {kept}, dropped {len(self.dropped)} other(s); no_new_privs set"
        if self.bounding_kept:
            text += " (bounding set unchanged: no CAP_SETPCAP)"
        return text

    def as_dict(self) -> dict:
        return {"kept": self.kept, "dropped": self.dropped,
                "bounding_set_reduced": not self.bounding_kept,
                "no_new_privs": self.no_new_privs}


def drop_to(keep=RUNTIME_CAPS) -> DropResult:
    """Keep only ``keep`` (names or numbers) in this process's capability sets.

    Order matters: the bounding set first (PR_CAPBSET_DROP needs CAP_SETPCAP, which the
    capset then removes), then the ambient set, then capset, then no_new_privs. Raises
    PrivilegeError when a step fails, or when a capability to keep is not permitted (the
    caller would fail later, at a worse time)."""
    threads = _thread_count()
    if threads != 1:
        raise PrivilegeError(0, f"cannot drop capabilities: the process has {threads} threads "
                                "and capabilities are per thread")
    want = mask_of(keep)
    effective, permitted, _inheritable = _capget()
    p = plan(want, permitted, effective, _bounding())
    if p.missing:
        raise PrivilegeError(0, "cannot keep %s: not in the permitted set"
                             % ", ".join(cap_names(p.missing)))
    if p.can_drop_bounding:
        for n in p.bounding_drop:
            _prctl(PR_CAPBSET_DROP, n, what=f"PR_CAPBSET_DROP {cap_names(1 << n)[0]}")
    # Ambient capabilities would survive an execve; they must go before the
    # inheritable set shrinks anyway.
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, what="PR_CAP_AMBIENT_CLEAR_ALL")
    _capset(p.effective, p.kept, 0)
    # Nothing executed from now on can gain privileges (setuid, file capabilities, or
    # root's execve regaining the full bounding set).
    _prctl(PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
    return DropResult(kept=cap_names(p.kept), dropped=cap_names(p.dropped),
                      bounding_kept=not p.can_drop_bounding)


def as_after_setup(check) -> int | None:
    """``check()`` (returns an errno, 0 when fine) run in a forked child that first drops
    to ``runtime_caps()`` as the live monitor does after set-up: what a file operation will
    do in the running monitor, found before set-up. None when the child could not drop
    (the caller checks with the privileges it has)."""
    pid = os.fork()
    if pid == 0:  # the child, one thread: it never returns
        code = 255
        try:
            drop_to(runtime_caps())
            code = check()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return None if not 0 <= code < 255 else code


def after_setup(keep_all: bool = False) -> dict:
    """The live engine's step between set-up and the loop: drop to ``runtime_caps()``
    (``keep_all``: keep everything, the opt-out). Returns what was kept and dropped, for
    the start-up note and --stats-json. A failed drop is an error (OSError, one line):
    a monitor asked to shed its privileges does not run with them silently."""
    if keep_all:
        have = read_status()
        return {"kept": cap_names(have.get("CapEff", 0)), "dropped": [],
                "bounding_set_reduced": False, "no_new_privs": bool(have.get("NoNewPrivs")),
                "keep_privileges": True}
    try:
        result = drop_to(runtime_caps())
    except PrivilegeError as exc:
        raise OSError(exc.errno, f"could not drop capabilities after set-up ({exc.strerror}); "
                                 "stopping rather than running with them (--keep-privileges, "
                                 "keep_privileges = true, runs without the drop)") from None
    return result.as_dict() | {"keep_privileges": False, "line": result.line()}
