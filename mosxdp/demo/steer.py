"""Symmetric queue steering for the endpoints of a veth testbed (runs split over workers).

A monitor run with ``--workers N`` gives worker w the RX queues q with q % N == w, and both
directions of a flow must arrive on one worker's queue: on a real NIC, symmetric RSS does
that (docs/workers.md). A veth has no RSS: it delivers a frame on the peer's RX queue of the
index of the TX queue it was sent on, which the kernel picks from the frame's hash. This
attaches bpf/steer.c as a tc clsact egress program (direct action) on the client's and
server's veths: it sets each frame's hash to the symmetric flow hash that the monitor's XDP
program computes, so that the kernel puts a flow's frames, both ways, on the queue of its
worker (with as many queues as workers).

``python -m mosxdp.demo.steer IFNAME...`` attaches it in the current network namespace and
leaves it attached (the kernel holds the program; deleting the interface or its namespace
removes it). Nothing in core, engine or io uses it.
"""
from __future__ import annotations

import sys

from .testbed import endpoint_command

__all__ = ["attach_steering", "steer_endpoints"]

COMMAND = ("Attach a tc egress program that gives each frame its flow's symmetric hash, "
           "from which the kernel picks its TX queue (both directions of a flow on one queue "
           "index).")

FUNC = "mosxdp_steer"


def attach_steering(ifnames) -> None:
    """Compile bpf/steer.c and attach it on egress of each interface (in this namespace),
    replacing an earlier clsact set-up on it."""
    from bcc import BPF
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    from ..io.xdp.compile import BPF_DIR
    bpf = BPF(src_file=str(BPF_DIR / "steer.c"), cflags=[f"-I{BPF_DIR}"])
    fn = bpf.load_func(FUNC, BPF.SCHED_CLS)
    with IPRoute() as ipr:
        for ifname in ifnames:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise OSError(f"{ifname}: no such interface")
            idx = found[0]
            try:
                ipr.tc("del", "clsact", idx)
            except NetlinkError:
                pass
            ipr.tc("add", "clsact", idx)
            ipr.tc("add-filter", "bpf", idx, ":1", fd=fn.fd, name=fn.name,
                   parent="ffff:fff3", classid=1, direct_action=True)


def steer_endpoints(tb, *, python: str = sys.executable) -> None:
    """The steering on the testbed's client and server veths, from a Python run inside
    each namespace. RuntimeError when it fails."""
    tb.on_endpoints(python, "mosxdp.demo.steer", "the steering program")


main = endpoint_command("steer", COMMAND, attach_steering)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
