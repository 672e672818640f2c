"""The XDP_PASS program for the endpoints of a veth testbed.

A veth only receives frames redirected into it (XDP_REDIRECT from its peer) when the
receiving end has an XDP program: the demo, the netns tests and the benchmarks attach
this one (named ``mosxdp_pass``) to the client and server veths of an inline testbed.
Nothing in core, engine or io uses it.

``python -m mosxdp.demo.passprog IFNAME...`` attaches it in the current network
namespace and leaves it attached (what :func:`attach_to_endpoints` runs inside each
namespace).
"""
from __future__ import annotations

import contextlib
import os
import sys

from ..io import libbpf
from ..io.privileges import check_privileges
from ..io.uapi import XDP_PASS
from ..io.xdp import XdpError
from ..io.xdp.attach import attach, detach_mode, ifindex_of, iproute, link_state, remove_programs
from .testbed import endpoint_command

__all__ = ["PASS_PROG_NAME", "PassProgram", "load_pass_program", "attach_pass_program",
           "attach_to_endpoints"]

PASS_PROG_NAME = "mosxdp_pass"
COMMAND = ("Attach an XDP_PASS program to each interface, so that a veth endpoint receives "
           "frames redirected to it. It stays attached after this command; `mosxdp detach "
           "--iface IF` removes it.")


def load_pass_program(name: str = PASS_PROG_NAME) -> int:
    """Load an XDP program that returns XDP_PASS (not attached); returns its fd."""
    return libbpf.prog_load(name, [
        libbpf.Insn(0xB7, 0, 0, XDP_PASS),  # BPF_ALU64 | BPF_MOV | BPF_K: r0 = XDP_PASS
        libbpf.Insn(0x95, 0, 0, 0),         # BPF_JMP | BPF_EXIT
    ])


class PassProgram:
    """An XDP_PASS program attached to one interface; ``detach()`` or use as a context manager."""

    def __init__(self, ifname: str, ifindex: int, netns: str | None, mode: str, fd: int):
        self.ifname, self.ifindex, self.netns, self.mode, self.fd = ifname, ifindex, netns, mode, fd

    def detach(self) -> None:
        if self.fd < 0:
            return
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            with iproute(self.netns) as ipr:
                with contextlib.suppress(NetlinkError):
                    detach_mode(ipr, self.ifindex, self.mode, expected_fd=self.fd)
        finally:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "PassProgram":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def attach_pass_program(ifname: str, *, netns: str | None = None, mode: str = "native") -> PassProgram:
    """Attach the XDP_PASS program to ``ifname`` (in ``netns``), replacing a mosxdp one.

    ``mode``: "native" (what veth needs), "generic" or "auto". Closing the returned
    program's fd leaves it attached (the kernel holds it).
    """
    check_privileges()
    fd = load_pass_program()
    try:
        with iproute(netns) as ipr:
            idx = ifindex_of(ipr, ifname, netns)
            st = link_state(ipr, ifname, idx)
            if st.attached:
                if not st.ours:
                    raise XdpError("%s; use `mosxdp detach --iface %s --force`" % (st.describe(), ifname))
                remove_programs(ipr, st)
            used = attach(ipr, ifname, idx, fd, mode, [])
        return PassProgram(ifname, idx, netns, used, fd)
    except BaseException:
        os.close(fd)
        raise


def attach_to_endpoints(tb, *, python: str | None = None) -> None:
    """XDP_PASS on the testbed's client and server veths, left attached.

    ``python`` None: from this process into each namespace; else by running
    ``python -m mosxdp.demo.passprog`` with that interpreter inside each namespace (a
    process that must not enter other namespaces itself). RuntimeError when it fails.
    """
    if python is None:
        for ns, ifname in ((tb.cli_ns, tb.cli_if), (tb.srv_ns, tb.srv_if)):
            os.close(attach_pass_program(ifname, netns=ns).fd)
        return
    tb.on_endpoints(python, "mosxdp.demo.passprog", "the XDP pass program")


def _attach_each(ifnames) -> None:
    for ifname in ifnames:
        try:
            os.close(attach_pass_program(ifname).fd)
        except (XdpError, OSError) as exc:
            raise OSError(f"{ifname}: {exc}") from exc


main = endpoint_command("passprog", COMMAND, _attach_each)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
