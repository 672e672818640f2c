"""The error type of XDP set-up, shared by every io module that loads, attaches or checks."""
from __future__ import annotations

__all__ = ["XdpError"]


class XdpError(RuntimeError):
    """A datapath set-up problem, with a message that says the fix."""
