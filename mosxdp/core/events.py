"""Event ids, hook points, per-socket callback tables and user-defined events.

Built-in events are single bits (MosEvent). User-defined events (UDEs) get
bits 32..63: `define` makes one raised when its base event fires and its
filter returns true; `alloc` makes a child raised explicitly with
mtcp_raise_event from inside a filter or callback. UDEs nest: a UDE may be the
base of another.

`EventDispatch` is the Stack's part that runs callbacks: it raises events on sockets
(built-in bits in ascending order, then the UDEs defined on them), runs timers, and
applies the on_callback_error policy when a callback raises.
"""
import errno
import heapq
import os

# Type declarations for the compiled build (events.pxd); decorators that change nothing in
# plain Python.
import cython

from .constants import (MOS_HK_RCV, MOS_HK_SND, MOS_NULL, MOS_ON_CONN_END, MOS_ON_CONN_NEW_DATA,
                        MOS_ON_CONN_START, MOS_ON_ERROR, MOS_ON_ORPHAN, MOS_ON_PKT_IN,
                        MOS_ON_REXMIT, MOS_ON_TCP_STATE_CHANGE, MOS_ON_TIMEOUT, UDE_FIRST_BIT,
                        UDE_LAST_BIT)
from .stack_state import StackState

# Frames of these files are mosxdp's own or the standard library's, not the app's line
# that an error report should name (mosxdp/apps are apps).
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_APPS_DIR = _PACKAGE_DIR + "apps" + os.sep
# The frames of a compiled module (setup.py) name its source relative to the project root.
_COMPILED_PREFIX = "mosxdp" + os.sep
_stdlib_dirs = None


def _stdlib():
    # Found at the first report: sysconfig costs every start-up 2 ms.
    global _stdlib_dirs
    if _stdlib_dirs is None:
        import sysconfig
        _stdlib_dirs = tuple({os.path.abspath(sysconfig.get_paths()[k]) + os.sep
                              for k in ("stdlib", "platstdlib")})
    return _stdlib_dirs


# Stack.order_key while the end of a batch (or of the input) runs callbacks: the phase, then
# what orders its flows or timers as one context runs them (None while a frame is processed).
# Writes of several workers merge by (frame_no, order_key): engine/workers.py.
# UDP and ICMP flows (core/datagrams.py) idle out, and end at the end of the input, after the
# TCP flows, UDP before ICMP.
(ORDER_NEW_DATA, ORDER_TIMER, ORDER_TIME_WAIT, ORDER_HALF_OPEN, ORDER_IDLE, ORDER_UDP_IDLE,
 ORDER_ICMP_IDLE, ORDER_EOF, ORDER_UDP_EOF, ORDER_ICMP_EOF) = range(1, 11)


def exception_site(exc):
    """'FILE:LINE' where ``exc`` was raised, for a one-line report: the innermost frame of
    its traceback in the application's code (not in mosxdp's modules, which an app's bad
    call reaches, nor in the standard library), else the innermost frame; '' without one."""
    site = ""
    tb = exc.__traceback__
    innermost = None
    while tb is not None:
        code = tb.tb_frame.f_code
        innermost = f"{code.co_filename}:{tb.tb_lineno}"
        path = code.co_filename
        if path.startswith(_COMPILED_PREFIX):   # a compiled module's frame: see below
            path = _PACKAGE_DIR + path[len(_COMPILED_PREFIX):]
        path = os.path.abspath(path)
        ours = path.startswith(_PACKAGE_DIR) and not path.startswith(_APPS_DIR)
        if not ours and not path.startswith(_stdlib()) and not code.co_filename.startswith("<"):
            site = innermost
        tb = tb.tb_next
    return site or innermost or ""


# What Stack.process returns for a frame.
VERDICT_FORWARD = 0
VERDICT_DROP = 1
# Forward the frames in Stack.wire_frames instead (a payload edit changed the size).
VERDICT_REPLACED = 2

HOOK_NULL = int(MOS_NULL)
HOOK_RCV = int(MOS_HK_RCV)
HOOK_SND = int(MOS_HK_SND)
HOOKS = (HOOK_NULL, HOOK_RCV, HOOK_SND)
HOOK_NAMES = {HOOK_NULL: "MOS_NULL", HOOK_RCV: "MOS_HK_RCV", HOOK_SND: "MOS_HK_SND"}

EV_PKT_IN = int(MOS_ON_PKT_IN)
EV_CONN_START = int(MOS_ON_CONN_START)
EV_CONN_NEW_DATA = int(MOS_ON_CONN_NEW_DATA)
EV_ERROR = int(MOS_ON_ERROR)
EV_TIMEOUT = int(MOS_ON_TIMEOUT)
EV_TCP_STATE_CHANGE = int(MOS_ON_TCP_STATE_CHANGE)
EV_ORPHAN = int(MOS_ON_ORPHAN)
EV_REXMIT = int(MOS_ON_REXMIT)
EV_CONN_END = int(MOS_ON_CONN_END)

# Events mosxdp raises; the deprecated mOS bits are refused.
RAISED_BUILTINS = (EV_PKT_IN | EV_CONN_START | EV_CONN_NEW_DATA | EV_ERROR | EV_TIMEOUT
                   | EV_TCP_STATE_CHANGE | EV_ORPHAN | EV_REXMIT | EV_CONN_END)
# Valid (event, hook) combinations, as in mOS.
REFUSED_AT_NULL = EV_CONN_START | EV_REXMIT | EV_TCP_STATE_CHANGE | EV_CONN_END
REFUSED_AT_HK = EV_CONN_NEW_DATA | EV_ORPHAN | EV_ERROR
# Raw sockets see packets, not connections.
RAW_SOCKET_EVENTS = EV_PKT_IN | EV_ORPHAN

BUILTIN_NAMES = {
    EV_PKT_IN: "MOS_ON_PKT_IN", EV_CONN_START: "MOS_ON_CONN_START",
    EV_CONN_NEW_DATA: "MOS_ON_CONN_NEW_DATA", EV_ERROR: "MOS_ON_ERROR",
    EV_TIMEOUT: "MOS_ON_TIMEOUT", EV_TCP_STATE_CHANGE: "MOS_ON_TCP_STATE_CHANGE",
    EV_ORPHAN: "MOS_ON_ORPHAN", EV_REXMIT: "MOS_ON_REXMIT", EV_CONN_END: "MOS_ON_CONN_END",
}


class EventError(OSError):
    def __init__(self, err, message):
        super().__init__(err, message)


class UserEvent:
    __slots__ = ("event_id", "base", "filter", "arg", "root", "allocated")

    def __init__(self, event_id, base, filter_fn, arg, root, allocated):
        self.event_id = event_id
        self.base = base
        self.filter = filter_fn
        self.arg = arg
        self.root = root
        self.allocated = allocated


class EventRegistry:
    """The user-defined events of one process (mOS keeps them global too)."""

    def __init__(self):
        self.udes = {}
        self.defined_on = {}     # base event -> [UDEs raised by their filter]
        self._by_definition = {}
        self._next_bit = UDE_FIRST_BIT

    def is_valid(self, event):
        return (event in BUILTIN_NAMES) or (event in self.udes)

    def root_of(self, event):
        ude = self.udes.get(event)
        return ude.root if ude is not None else event

    def _new_id(self):
        if self._next_bit > UDE_LAST_BIT:
            raise EventError(errno.ENOSPC, "no more user-defined event ids (32 in use)")
        event_id = 1 << self._next_bit
        self._next_bit += 1
        return event_id

    def _check_base(self, base):
        if not self.is_valid(base):
            raise EventError(errno.EINVAL, f"base event {base:#x} is not a built-in or defined event")

    def define(self, base, filter_fn, arg):
        self._check_base(base)
        if not callable(filter_fn):
            raise EventError(errno.EINVAL, "the filter of a user-defined event must be callable")
        try:
            definition = (base, filter_fn, arg)
            hash(definition)
        except TypeError:
            definition = (base, filter_fn, id(arg))
        existing = self._by_definition.get(definition)
        if existing is not None:
            return existing
        event_id = self._new_id()
        ude = UserEvent(event_id, base, filter_fn, arg, self.root_of(base), allocated=False)
        self.udes[event_id] = ude
        self.defined_on.setdefault(base, []).append(ude)
        self._by_definition[definition] = event_id
        return event_id

    def alloc(self, parent):
        self._check_base(parent)
        event_id = self._new_id()
        self.udes[event_id] = UserEvent(event_id, parent, None, None, self.root_of(parent),
                                        allocated=True)
        return event_id

    def ancestors(self, event):
        """The event itself and every UDE/base it derives from, up to its root."""
        chain = [event]
        ude = self.udes.get(event)
        while ude is not None:
            chain.append(ude.base)
            ude = self.udes.get(ude.base)
        return chain


def check_combination(event, hook, root, raw_socket):
    """Refuse the (event, hook) combinations mOS refuses, with a message."""
    if hook not in HOOK_NAMES:
        raise EventError(errno.EINVAL, f"hook {hook:#x} is not MOS_NULL, MOS_HK_RCV or MOS_HK_SND")
    name = BUILTIN_NAMES.get(root, hex(root))
    if raw_socket:
        if not root & RAW_SOCKET_EVENTS or hook != HOOK_NULL:
            raise EventError(errno.EINVAL, "raw monitor sockets take only MOS_ON_PKT_IN and "
                             "MOS_ON_ORPHAN at MOS_NULL")
        return
    if hook == HOOK_NULL and root & REFUSED_AT_NULL:
        raise EventError(errno.EINVAL, f"{name} cannot be hooked at MOS_NULL (use MOS_HK_SND or MOS_HK_RCV)")
    if hook != HOOK_NULL and root & REFUSED_AT_HK:
        raise EventError(errno.EINVAL, f"{name} is raised only at MOS_NULL, not at {HOOK_NAMES[hook]}")


class CallbackTable:
    """Callbacks of one socket: hook -> {event id -> callback}.

    `masks[hook]` has the bit of every built-in event that some registration
    at that hook depends on (directly or as the root of a UDE), so dispatch can
    skip work for events nobody waits for with one AND. `wanted_udes[hook]`
    is the set of UDEs whose filters must run at that hook.
    """

    __slots__ = ("callbacks", "masks", "wanted_udes", "shared")

    def __init__(self):
        self.callbacks = {HOOK_NULL: {}, HOOK_RCV: {}, HOOK_SND: {}}
        self.masks = {HOOK_NULL: 0, HOOK_RCV: 0, HOOK_SND: 0}
        self.wanted_udes = {HOOK_NULL: frozenset(), HOOK_RCV: frozenset(), HOOK_SND: frozenset()}
        # True while a flow socket still uses its listener's table (copy on write).
        self.shared = False

    def copy(self):
        table = CallbackTable()
        table.callbacks = {hook: dict(cbs) for hook, cbs in self.callbacks.items()}
        table.masks = dict(self.masks)
        table.wanted_udes = dict(self.wanted_udes)
        return table

    def set(self, registry, event, hook, callback):
        cbs = self.callbacks[hook]
        if callback is None:
            cbs.pop(event, None)
        else:
            cbs[event] = callback
        mask = 0
        wanted = set()
        for registered in cbs:
            mask |= registry.root_of(registered)
            for ancestor in registry.ancestors(registered):
                if ancestor in registry.udes:
                    wanted.add(ancestor)
        # A UDE raised by a filter needs its base's filter chain too; an
        # allocated child needs the filter of its parent, which raises it.
        for ude_id in list(wanted):
            for ancestor in registry.ancestors(ude_id):
                if ancestor in registry.udes:
                    wanted.add(ancestor)
        self.masks[hook] = mask
        self.wanted_udes[hook] = frozenset(wanted)


class EventDispatch:
    """The Stack's callback running (a mixin: the per-frame path calls these without a hop).

    The packet context callbacks see through the API lives here: cur_pkt, cur_frame,
    cur_flow, cur_drop (a callback asked to drop the packet), cur_sock, cur_hook, cur_side."""

    def _init_dispatch(self, handle, registry, on_callback_error):
        self.handle = handle                 # what callbacks receive as mctx
        self.registry = registry or EventRegistry()
        self.on_callback_error = on_callback_error   # fn(callback, exc, count) for logging
        self.callback_errors = {}
        self._stop_requested = False
        # The segment needs work on its way out (a stop requested, or cur_edit set): the
        # common data segment's path tests this one flag, with cur_drop.
        self._exit_work = False
        self.cur_edit = None                 # core/edits.py FrameEdit of the segment
        self.exit_request = None             # (callback, SystemExit) of a callback's sys.exit()
        self.timers = []
        self._timer_seq = 0
        self.cur_pkt = self.cur_frame = self.cur_flow = None
        self.cur_sock = self.cur_hook = self.cur_side = None
        self.cur_drop = False

    def add_timer(self, timer_id, timeout_us, callback):
        self._timer_seq += 1
        heapq.heappush(self.timers, (self.now + timeout_us, self._timer_seq, timer_id, callback))

    def _run_timers(self):
        timers = self.timers
        while timers and timers[0][0] <= self.now:
            deadline, seq, timer_id, callback = heapq.heappop(timers)
            self.order_key = (ORDER_TIMER, deadline, seq)
            self._call(callback, timer_id, 0, 0, None, no_packet=True)

    def drop_current(self):
        """MOS_DROP from a callback: the packet being processed is not forwarded."""
        self.cur_drop = True

    # Compiled, the Stack's per-frame attributes are C struct members (stack_state.pxd): a
    # per-packet callback passes here, _fire and _fire_flow on every frame.
    @cython.locals(self=StackState)
    def _call(self, callback, sock_id, side, event, arg, no_packet=False):
        saved = (self.cur_side, self.cur_pkt)
        self.cur_side = side
        if no_packet:
            self.cur_pkt = None
        try:
            callback(self.handle, sock_id, side, event, arg)
        except Exception as exc:  # an app bug must not stop the datapath
            self._callback_failed(callback, exc)
        except SystemExit as exc:
            self._callback_exit(callback, exc)
        finally:
            self.cur_side, self.cur_pkt = saved

    def _callback_failed(self, callback, exc):
        self._counters["callback_errors"] += 1
        name = getattr(callback, "__qualname__", repr(callback))
        count = self.callback_errors.get(name, 0) + 1
        self.callback_errors[name] = count
        if self.on_callback_error is not None:
            self.on_callback_error(callback, exc, count)
        policy = self.config.on_callback_error
        if policy == "drop":
            self.cur_drop = True
        elif policy == "stop":
            self._stop_requested = self._exit_work = True

    def _callback_exit(self, callback, exc):
        """sys.exit() in a callback: the run stops after this packet (as on_callback_error
        'stop' does), and says so; the first call is the one reported."""
        if self.exit_request is None:
            self.exit_request = (callback, exc)
        self._stop_requested = self._exit_work = True

    @cython.locals(self=StackState)
    def _fire(self, sock, hook, side, event):
        table = sock.table
        if not table.masks[hook] & event:
            return
        self.cur_sock = sock
        self.cur_hook = hook
        callback = table.callbacks[hook].get(event)
        if callback is not None:
            self._call(callback, sock.id, side, event, None)
        udes = self.registry.defined_on.get(event)
        if udes:
            self._fire_udes(sock, hook, side, event, udes)
        # Outside filters and callbacks mtcp_raise_event has no socket to raise on.
        self.cur_sock = self.cur_hook = None

    def _fire_udes(self, sock, hook, side, base, udes):
        wanted = sock.table.wanted_udes[hook]
        for ude in udes:
            if ude.event_id not in wanted:
                continue
            self.cur_sock, self.cur_hook, self.cur_side = sock, hook, side
            try:
                matched = ude.filter(self.handle, sock.id, side, base, ude.arg)
            except Exception as exc:
                self._callback_failed(ude.filter, exc)
                matched = False
            except SystemExit as exc:
                self._callback_exit(ude.filter, exc)
                matched = False
            if matched:
                self.fire_user_event(sock, hook, side, ude.event_id)

    def fire_user_event(self, sock, hook, side, event_id):
        ude = self.registry.udes[event_id]
        callback = sock.table.callbacks[hook].get(event_id)
        if callback is not None:
            self.cur_sock, self.cur_hook = sock, hook
            self._call(callback, sock.id, side, event_id, ude.arg)
        children = self.registry.defined_on.get(event_id)
        if children:
            self._fire_udes(sock, hook, side, event_id, children)

    @cython.locals(self=StackState)
    def _fire_flow(self, flow, hook, side, events):
        """Raise `events` (a bit set) at `hook` for `side` on every socket of the flow."""
        for sock in flow.socks:
            if not sock.monitoring[side] or not sock.table.masks[hook] & events:
                continue
            bit = 1
            remaining = events
            while remaining:
                if remaining & bit:
                    if not sock.monitoring[side]:
                        break   # a callback of this packet stopped monitoring (MOS_STOP_MON)
                    self._fire(sock, hook, side, bit)
                    remaining &= ~bit
                bit <<= 1
