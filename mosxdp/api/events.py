"""Events and timers: mtcp_register_callback, mtcp_unregister_callback, mtcp_define_event,
mtcp_alloc_event, mtcp_raise_event, mtcp_settimer, mtcp_cb_get_ts."""
import errno
import math

from ..core.events import EventError, check_combination
from .context import _error, _own_stack, _require_init, _runtime, _sock, _stack


def _registry():
    _require_init()
    return _runtime.registry


def mtcp_register_callback(mctx, sock, event, hook_point, cb):
    stack = _stack(mctx)
    try:
        sock_obj = _sock(stack, sock)
    except OSError as exc:
        # mtcp_register_callback(3): an invalid sockid is EINVAL.
        raise _error(errno.EINVAL, exc.strerror) from None
    registry = stack.registry
    if not isinstance(event, int) or not registry.is_valid(event):
        raise _error(errno.EINVAL, f"event {event!r} is not a built-in or user-defined event")
    if not isinstance(hook_point, int):
        raise _error(errno.EINVAL, f"hook_point {hook_point!r} is not MOS_HK_SND, MOS_HK_RCV "
                     "or MOS_NULL")
    if cb is not None and not callable(cb):
        raise _error(errno.EINVAL, "cb must be callable or None")
    try:
        check_combination(int(event), int(hook_point), registry.root_of(event),
                          raw_socket=sock_obj.kind == "raw")
    except EventError as exc:
        raise _error(exc.errno, exc.strerror) from None
    stack.register(sock_obj, int(event), int(hook_point), cb)
    return 0


def mtcp_unregister_callback(mctx, sock, event, hook_point):
    """As mOS (its default NEWEV build): mtcp_register_callback with a NULL callback."""
    return mtcp_register_callback(mctx, sock, event, hook_point, None)


def _event_id(value, what):
    """An event id argument: an int (an IntEnum member is one), else EINVAL."""
    if not isinstance(value, int):
        raise _error(errno.EINVAL, f"{what} {value!r} is not an event id")
    return int(value)


def mtcp_define_event(event, filter, arg=None):
    try:
        return _registry().define(_event_id(event, "event"), filter, arg)
    except EventError as exc:
        raise _error(exc.errno, exc.strerror) from None


def mtcp_alloc_event(parent_event):
    try:
        return _registry().alloc(_event_id(parent_event, "parent_event"))
    except EventError as exc:
        raise _error(exc.errno, exc.strerror) from None


def mtcp_raise_event(mctx, child_event):
    stack = _stack(mctx)
    ude = stack.registry.udes.get(child_event) if isinstance(child_event, int) else None
    if ude is None or not ude.allocated:
        raise _error(errno.EINVAL, f"event {child_event!r} was not made by mtcp_alloc_event")
    if stack.cur_sock is None or stack.cur_hook is None:
        raise _error(errno.EINVAL, "mtcp_raise_event works only inside a filter or callback")
    stack.fire_user_event(stack.cur_sock, stack.cur_hook, stack.cur_side, child_event)
    return 0


def mtcp_settimer(mctx, id, timeout, cb):
    stack = _stack(mctx)
    if not callable(cb):
        raise _error(errno.EINVAL, "cb must be callable")
    try:
        if hasattr(timeout, "tv_sec"):
            seconds = timeout.tv_sec + timeout.tv_usec / 1e6
        elif isinstance(timeout, tuple):
            seconds = timeout[0] + timeout[1] / 1e6
        else:
            seconds = timeout
    except (TypeError, IndexError, AttributeError):
        seconds = None
    try:
        # Finite in microseconds too: a timer of 1e308 s would overflow the clock.
        valid = isinstance(seconds, (int, float)) and seconds >= 0 \
            and math.isfinite(seconds * 1e6)
    except OverflowError:
        valid = False
    if not valid:
        raise _error(errno.EINVAL, f"timeout {timeout!r} is not a non-negative number of seconds")
    stack.add_timer(id, int(seconds * 1_000_000), cb)
    return 0


def mtcp_cb_get_ts(mctx):
    """The context's clock in microseconds (packet time offline)."""
    return _own_stack(mctx).now
