"""XDP attachment over netlink (pyroute2): what is attached to an interface, attach a
program fd in a mode, detach.

Programs are attached over netlink, not bpf_link: they stay attached when the process
dies (fail-open after ``kill -9``). Every program mosxdp attaches has a name starting
with ``PROG_NAME_PREFIX``: that is how "ours" is recognised.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass

from .. import libbpf
from ..errors import XdpError
from . import owner
from ..privileges import check_privileges
from ..uapi import (XDP_FLAGS_DRV_MODE, XDP_FLAGS_HW_MODE, XDP_FLAGS_REPLACE, XDP_FLAGS_SKB_MODE,
                    XDP_FLAGS_UPDATE_IF_NOEXIST)

__all__ = ["PROG_NAME_PREFIX", "XdpState", "iproute", "ifindex_of", "link_state",
           "attached_prog_ids", "xdp_state",
           "set_xdp", "detach_mode", "remove_programs", "attach", "detach"]

log = logging.getLogger("mosxdp.xdp")

#: Every program mosxdp attaches has a name starting with this: how "ours" is recognised.
PROG_NAME_PREFIX = "mosxdp"

_MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE, "offload": XDP_FLAGS_HW_MODE}
# pyroute2's names of the IFLA_XDP_ATTACHED values
_PYROUTE2_MODES = {None: None, "xdp": "native", "xdpgeneric": "generic", "xdpoffload": "offload",
                   "xdpmulti": "multi"}


@contextlib.contextmanager
def iproute(netns: str | None = None):
    """A pyroute2 IPRoute (in ``netns``, an ip-netns name), closed on exit."""
    try:
        from pyroute2 import IPRoute
    except ImportError as e:
        raise XdpError("pyroute2 is not importable (%s): install mosxdp with its dependencies "
                       "(scripts/setup.sh, or pip install -e .)" % e) from e
    ipr = IPRoute(netns=netns) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def ifindex_of(ipr, ifname: str, netns: str | None = None) -> int:
    """The ifindex of ``ifname``; XdpError naming it when it does not exist."""
    idx = ipr.link_lookup(ifname=ifname)
    if not idx:
        where = " in network namespace %r" % netns if netns else ""
        raise XdpError("unknown interface %r%s (see `ip -br link`)" % (ifname, where))
    return idx[0]


@dataclass(frozen=True)
class XdpState:
    """What is attached to an interface."""
    ifname: str
    ifindex: int
    mode: str | None           # "native" | "generic" | "offload" | "multi" | None
    prog_ids: dict[str, int]   # mode -> program id
    prog_names: dict[str, str]

    @property
    def attached(self) -> bool:
        return bool(self.prog_ids)

    @property
    def ours(self) -> bool:
        """Every attached program is a mosxdp program."""
        return self.attached and all(n.startswith(PROG_NAME_PREFIX) for n in self.prog_names.values())

    def describe(self) -> str:
        if not self.attached:
            return "%s: no XDP program" % self.ifname
        return "%s: " % self.ifname + ", ".join(
            "%s program id %d %r" % (m, i, self.prog_names.get(m, "?")) for m, i in self.prog_ids.items())


def link_state(ipr, ifname: str, ifindex: int) -> XdpState:
    """The XDP programs attached to one interface, by mode, with their names."""
    mode, ids = _link_prog_ids(ipr, ifindex)
    names = {m: (libbpf.prog_name_by_id(i) or "?") for m, i in ids.items()}
    return XdpState(ifname, ifindex, mode, ids, names)


def attached_prog_ids(ipr, ifindex: int) -> set[int]:
    """The ids of the programs attached to an interface (netlink only: no privilege)."""
    return set(_link_prog_ids(ipr, ifindex)[1].values())


def _link_prog_ids(ipr, ifindex: int) -> tuple[str | None, dict[str, int]]:
    msg = ipr.link("get", index=ifindex)[0]
    x = msg.get_attr("IFLA_XDP")
    ids: dict[str, int] = {}
    mode = None
    if x is not None:
        mode = _PYROUTE2_MODES.get(x.get_attr("IFLA_XDP_ATTACHED"), None)
        for attr, m in (("IFLA_XDP_DRV_PROG_ID", "native"), ("IFLA_XDP_SKB_PROG_ID", "generic"),
                        ("IFLA_XDP_HW_PROG_ID", "offload")):
            v = x.get_attr(attr)
            if v:
                ids[m] = v
        if not ids and mode in ("native", "generic", "offload") and x.get_attr("IFLA_XDP_PROG_ID"):
            ids[mode] = x.get_attr("IFLA_XDP_PROG_ID")
    return mode, ids


def xdp_state(ifname: str, *, netns: str | None = None) -> XdpState:
    """Which XDP programs are attached to ``ifname`` (in ``netns``, default: ours)."""
    with iproute(netns) as ipr:
        return link_state(ipr, ifname, ifindex_of(ipr, ifname, netns))


def set_xdp(ipr, ifindex: int, fd: int, flags: int, expected_fd: int | None = None) -> None:
    """IFLA_XDP: attach ``fd`` (-1: detach) with ``flags``, replacing ``expected_fd`` only."""
    attrs = [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]
    if expected_fd is not None:
        attrs.append(("IFLA_XDP_EXPECTED_FD", expected_fd))
    ipr.link("set", index=ifindex, xdp={"attrs": attrs})


def detach_mode(ipr, ifindex: int, mode: str, expected_fd: int | None = None) -> None:
    """Detach the program of one mode; with ``expected_fd`` only if that one is still attached."""
    flags = _MODE_FLAGS[mode]
    if expected_fd is not None:
        flags |= XDP_FLAGS_REPLACE
    set_xdp(ipr, ifindex, -1, flags, expected_fd)


def remove_programs(ipr, st: XdpState) -> None:
    """Detach every program ``st`` lists (the caller decided they may go)."""
    for m in st.prog_ids:
        detach_mode(ipr, st.ifindex, m)


def attach(ipr, ifname: str, ifindex: int, prog_fd: int, mode: str, notes: list[str]) -> str:
    """Attach in "native", "generic" or "auto" (native, then generic). Returns the mode used."""
    from pyroute2.netlink.exceptions import NetlinkError
    tries = ["native", "generic"] if mode == "auto" else [mode]
    last: Exception | None = None
    for m in tries:
        try:
            set_xdp(ipr, ifindex, prog_fd, _MODE_FLAGS[m] | XDP_FLAGS_UPDATE_IF_NOEXIST)
            return m
        except NetlinkError as e:
            last = e
            if e.code == errno.EBUSY or e.code == errno.EEXIST:
                raise XdpError("interface %r already has an XDP program attached (%s); use --force or "
                               "`mosxdp detach --iface %s`" % (ifname, e, ifname)) from e
            if mode == "auto" and m == "native":
                notes.append("%s: native XDP not available (%s); using generic (skb) mode, "
                             "slower" % (ifname, os.strerror(e.code) if e.code else e))
                log.warning(notes[-1])
                continue
            other = "generic" if m == "native" else "native"
            if e.code == errno.EOPNOTSUPP:
                raise XdpError("interface %r does not support %s XDP: use --xdp-mode %s or auto"
                               % (ifname, m, other)) from e
            if e.code in (errno.EINVAL, errno.ERANGE):
                raise XdpError(
                    "interface %r refused %s XDP (%s): usually an MTU too large for XDP, or a driver "
                    "limit (a veth needs at least as many RX queues as its peer has TX queues); "
                    "lower the MTU, or use --xdp-mode %s or auto" % (ifname, m, os.strerror(e.code), other)) from e
            raise XdpError("attaching XDP to %r in %s mode failed: %s" % (ifname, m, e)) from e
    raise XdpError("attaching XDP to %r failed: %s" % (ifname, last))


def detach(ifname: str, *, netns: str | None = None, force: bool = False) -> str | None:
    """Remove the XDP program(s) from ``ifname`` (``mosxdp detach --iface X``).

    Refuses to remove a program that is not mosxdp's, or one a running monitor holds
    (owner.py), unless ``force``. Returns what was removed, e.g. "native program id 42
    'mosxdp_rx'", or None when nothing was attached (``xdp_state()`` gives the details
    beforehand).
    """
    check_privileges()
    with iproute(netns) as ipr:
        ifindex = ifindex_of(ipr, ifname, netns)
        try:
            lock = owner.acquire(ifname, ifindex, netns=netns)
        except owner.InUse as e:
            if not force:
                raise XdpError("%s; not detaching under a running monitor: stop it (kill -TERM %s), "
                               "or pass --force" % (e, e.holder.pid or "its PID")) from None
            lock = None
        try:
            st = link_state(ipr, ifname, ifindex)
            if st.attached and not st.ours and not force:
                raise XdpError("%s is not a mosxdp program; not detaching it without --force" % st.describe())
        except BaseException:
            if lock is not None:
                lock.restore()
            raise
        try:
            if not st.attached:
                return None
            remove_programs(ipr, st)
            return st.describe().split(": ", 1)[1]
        finally:
            if lock is not None:
                lock.release()  # nothing of a monitor's is attached any more
