"""Exceptions raised by user callbacks: logged once per callback, always counted.

A callback that raises never stops the datapath: the core (Stack._callback_failed) counts
the exception per callback (``stack.callback_errors``: name -> count, and the
``callback_errors`` counter), applies ``on_callback_error`` (forward | drop | stop) to the
packet, and calls its ``on_callback_error`` hook, which every mtcp_* context sets to
`log_callback_error`: the first exception of each callback is logged on the
``mosxdp.callbacks`` logger (stderr unless the application configures logging): one line
naming the callback, the exception and the application's line that raised it, the record
carrying the traceback (``exc_info``); later ones are only counted. The command line shows
the record as its one line (the traceback with --debug or MOSXDP_DEBUG=1), prints
`counts_line` at exit and ends non-zero (``--stats`` shows the counts in its summary line).
"""
import logging

from ..core.events import exception_site

logger = logging.getLogger("mosxdp.callbacks")


def callback_name(callback):
    """The key of a callback in stack.callback_errors (its qualified name)."""
    return getattr(callback, "__qualname__", repr(callback))


def log_callback_error(callback, exc, count):
    """Stack.on_callback_error hook: the traceback of a callback's first exception."""
    if count != 1:
        return
    module = getattr(callback, "__module__", None)
    name = callback_name(callback)
    text = str(exc).splitlines()[0] if str(exc).strip() else ""
    logger.error("mosxdp: error: callback %s raised %s%s at %s (the datapath goes on; further "
                 "exceptions of this callback are counted, not logged)",
                 f"{module}.{name}" if module else name, type(exc).__name__,
                 f": {text}" if text else "", exception_site(exc),
                 exc_info=(type(exc), exc, exc.__traceback__))


def counts_text(stack):
    """'NAME COUNT, ...' of every callback that raised, most frequent first ('' if none)."""
    items = sorted(stack.callback_errors.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{name} {count}" for name, count in items)


def counts_line(stack):
    """The exit line: how often each callback raised, and the policy applied; None if
    no callback raised."""
    if not stack.callback_errors:
        return None
    total = stack.counters["callback_errors"]
    return (f"mosxdp: {total} callback exception{'s' if total != 1 else ''} "
            f"(on_callback_error {stack.config.on_callback_error}): {counts_text(stack)}")
