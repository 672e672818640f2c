"""The sans-IO core: frames in, verdicts and callbacks out. No sockets, no clock, no bcc,
no ctypes; it imports nothing outside this folder.

Its face is `Stack` (stack.py): `process(frame, ts_us, port)` per frame, `end_batch()`,
`advance_clock(ts_us)`, `finish()`, with `StackConfig` for the mOS knobs. The rest is
the Stack's parts and the parsers it uses (docs/internal/architecture.md).
"""
from . import compiled  # noqa: F401  (first: MOSXDP_PURE_PYTHON=1 acts before the hot modules load)
# Compiled, tcp's types come from flow, which imports names of tcp: flow must load first.
from . import flow  # noqa: F401,E402

__all__ = ["Stack", "StackConfig", "StopMonitor", "VERDICT_DROP", "VERDICT_FORWARD",
           "VERDICT_REPLACED"]


def __getattr__(name):
    # The face is loaded on first use (PEP 562): a module of the core (core.split for a
    # split run's plan) is imported without the whole Stack.
    if name in __all__:
        from . import stack
        return getattr(stack, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
