"""The sans-IO core: frames in, verdicts and callbacks out. No sockets, no clock, no bcc,
no ctypes; it imports nothing outside this folder.

Its face is `Stack` (stack.py): `process(frame, ts_us, port)` per frame, `end_batch()`,
`advance_clock(ts_us)`, `finish()`, with `StackConfig` for the mOS knobs. The rest is
the Stack's parts and the parsers it uses (docs/internal/architecture.md).
"""
from . import compiled  # noqa: F401  (first: MOSXDP_PURE_PYTHON=1 acts before the hot modules load)
from .stack import VERDICT_DROP, VERDICT_FORWARD, VERDICT_REPLACED, Stack, StackConfig, StopMonitor

__all__ = ["Stack", "StackConfig", "StopMonitor", "VERDICT_DROP", "VERDICT_FORWARD",
           "VERDICT_REPLACED"]
