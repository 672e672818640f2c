"""mosxdp's XDP program: build, load, attach, detach, and typed access to its maps.

The face of the package; each part is usable alone:

- ``compile_program(filter_c_expr)`` -> ``LoadedProgram`` (compile.py): compiled and
  loaded, maps created, nothing attached (what the BPF_PROG_TEST_RUN tests use).
- ``MosxdpMaps`` (maps.py): the maps by fd (counters, verdicts, per-interface config,
  XSKMAP, devmap), independent of bcc: ``MosxdpMaps.from_prog_id(...)``.
- ``XdpProgram`` (program.py): the context manager the live engine uses.
- ``xdp_state``/``detach`` (attach.py): what is attached to an interface, over netlink.
- ``status`` (status.py): ``mosxdp status``; ``inline_peer``: where a program forwards.
- owner.py: which monitor holds an interface (a lock file per interface).

Every set-up error is an ``XdpError`` whose message says the fix.
"""
from __future__ import annotations

from ..errors import XdpError
from ..libbpf import prog_test_run
from ..privileges import check_privileges
from .attach import PROG_NAME_PREFIX, XdpState, detach, xdp_state
from .compile import BPF_DIR, LoadedProgram, check_environment, compile_program, filter_header_text
from .maps import MosxdpMaps
from .owner import InUse
from .program import XdpProgram
from .status import inline_peer, status

__all__ = [
    "XdpError", "XdpProgram", "LoadedProgram", "MosxdpMaps", "XdpState",
    "compile_program", "filter_header_text", "check_privileges", "check_environment",
    "detach", "xdp_state", "status", "inline_peer", "InUse", "prog_test_run", "BPF_DIR",
    "PROG_NAME_PREFIX",
]
