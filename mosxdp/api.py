"""The mOS monitoring API (mtcp_*), a thin adapter over mosxdp.core.

Same names, argument order and constants as C. Where C returns -1 and sets
errno, these functions raise OSError with that errno and a message saying
what was wrong. Out-parameters map like Python's socket module: caller
buffers are filled and a count returned (mtcp_peek, mtcp_ppeek), caller
structs are filled (mtcp_getlastpkt), getsockopt returns the value.
"""
import errno
import ipaddress
import math
import os
import socket

from . import constants as C
from .engine.callback_log import log_callback_error
from .config import ConfigError, apply, load_config
from .core import frames
from .core.events import EventError, EventRegistry, check_combination
from .core.filters import FilterError, compile_filter
from .core.stack import Stack
from .types import FlowStats, MonitorFilter, MtcpConf, PktInfo, TcpBufInfo, TcpRingFragment

__all__ = [
    "mtcp_init", "mtcp_destroy", "mtcp_getconf", "mtcp_setconf", "mtcp_create_context",
    "mtcp_destroy_context", "mtcp_app_join", "mtcp_socket", "mtcp_close",
    "mtcp_bind_monitor_filter", "mtcp_register_callback", "mtcp_define_event",
    "mtcp_alloc_event", "mtcp_raise_event", "mtcp_set_uctx", "mtcp_get_uctx", "mtcp_peek",
    "mtcp_ppeek", "mtcp_getsockopt", "mtcp_setsockopt", "mtcp_getlastpkt", "mtcp_setlastpkt",
    "mtcp_sendpkt", "mtcp_reset_conn", "mtcp_getpeername", "mtcp_settimer", "mtcp_cb_get_ts",
    "PeekOverrunError", "MtcpContext",
]


class PeekOverrunError(OSError):
    """mtcp_peek found bytes overwritten before they were read (ENODATA).

    `lost` is how many bytes were lost; the peek offset now points at the
    oldest byte still held, so the next call continues from there."""

    def __init__(self, lost):
        super().__init__(errno.ENODATA, f"{lost} bytes were overwritten before mtcp_peek read them")
        self.lost = lost


def _error(err, message):
    return OSError(err, message)


class _Runtime:
    """Process-wide state that mtcp_init sets up (mOS keeps it global too)."""

    def __init__(self):
        self.config = None
        self.contexts = {}
        self.registry = None


_runtime = _Runtime()


class MtcpContext:
    """An mctx: one monitoring context, owning a core Stack."""

    def __init__(self, cpu, config, registry):
        self.cpu = cpu
        self.config = config
        # A callback's first exception is logged with its traceback; all are counted.
        self.stack = Stack(config.stack_config(), handle=self, registry=registry,
                           on_callback_error=log_callback_error)
        self.alive = True
        self.pkt_copy = None      # the buffer mtcp_getlastpkt reuses
        self.engine = None        # set by the engine that drives this context

    def __repr__(self):
        return f"<MtcpContext cpu={self.cpu}{'' if self.alive else ' destroyed'}>"


# ------------------------------------------------------------ init & contexts
def mtcp_init(config_file=None, **overrides):
    """Load the configuration (TOML; None: defaults). Keyword arguments are
    configuration keys that override the file (a mosxdp extension)."""
    try:
        config = load_config(config_file, **overrides)
    except ConfigError as exc:
        raise _error(errno.EINVAL, str(exc)) from None
    _runtime.config = config
    _runtime.contexts = {}
    _runtime.registry = EventRegistry()
    return 0


def _require_init():
    if _runtime.config is None:
        raise _error(errno.EPERM, "call mtcp_init() first")


def mtcp_destroy():
    for mctx in list(_runtime.contexts.values()):
        mtcp_destroy_context(mctx)
    _runtime.config = None
    _runtime.contexts = {}


def mtcp_getconf(conf):
    _require_init()
    config = _runtime.config
    if not isinstance(conf, MtcpConf):
        raise _error(errno.EINVAL, "conf must be an MtcpConf() to fill (mtcp_getconf(3): NULL is EINVAL)")
    conf.num_cores = config.num_cores
    conf.max_concurrency = config.max_concurrency
    conf.max_num_buffers = config.max_concurrency
    conf.rcvbuf_size = 0 if config.no_ring_buffers else config.rmem_size
    conf.sndbuf_size = 0
    conf.tcp_timewait = int(config.tcp_tw_interval)
    conf.tcp_timeout = int(config.tcp_timeout) if config.tcp_timeout > 0 else -1
    return conf


def mtcp_setconf(conf):
    _require_init()
    if not isinstance(conf, MtcpConf):
        raise _error(errno.EINVAL, f"conf must be an MtcpConf, not {type(conf).__name__}")
    if _runtime.contexts:
        raise _error(errno.EBUSY, "mtcp_setconf must be called before mtcp_create_context")
    config = _runtime.config
    values = {"max_concurrency": conf.max_concurrency, "rmem_size": conf.rcvbuf_size,
              "tcp_tw_interval": conf.tcp_timewait, "tcp_timeout": conf.tcp_timeout,
              "num_cores": conf.num_cores}
    try:
        for key, value in values.items():
            apply(config, key, value)
    except ConfigError as exc:
        raise _error(errno.EINVAL, str(exc)) from None
    return 0


def mtcp_create_context(cpu):
    _require_init()
    if not isinstance(cpu, int) or cpu < 0 or cpu >= (os.cpu_count() or 1):
        raise _error(errno.EINVAL, f"cpu {cpu!r} is not a CPU of this machine (0..{(os.cpu_count() or 1) - 1})")
    if cpu in _runtime.contexts:
        raise _error(errno.EEXIST, f"a context already exists for cpu {cpu}")
    mctx = MtcpContext(cpu, _runtime.config, _runtime.registry)
    _runtime.contexts[cpu] = mctx
    return mctx


def mtcp_destroy_context(mctx):
    stack = _stack(mctx)
    mctx.alive = False
    _runtime.contexts.pop(mctx.cpu, None)
    del stack


def mtcp_app_join(mctx):
    """Run the context's datapath until its input ends or a signal stops it."""
    _stack(mctx)
    from .engine import run_context
    return run_context(mctx)


# -------------------------------------------------------------- validation
def _stack(mctx):
    if not isinstance(mctx, MtcpContext) or not mctx.alive:
        raise _error(errno.EACCES, f"invalid mctx {mctx!r}")
    return mctx.stack


def _sock(stack, sock_id):
    sock = stack.sockets.get(sock_id) if isinstance(sock_id, int) else None
    if sock is None:
        if isinstance(sock_id, int) and stack.socket_ended(sock_id):
            raise _error(errno.ENOTCONN, f"socket {sock_id}: its connection already ended")
        for other in _runtime.contexts.values():
            if other.stack is not stack and isinstance(sock_id, int) and sock_id in other.stack.sockets:
                raise _error(errno.EPERM, f"socket {sock_id} belongs to another context")
        raise _error(errno.EBADF, f"socket {sock_id!r} is not a valid monitor socket")
    return sock


def _flow_sock(stack, sock_id, wrong_type_errno):
    if type(sock_id) is int:
        # The usual case, a live flow socket, with one lookup; anything else goes through
        # _sock and the checks below for its errno.
        sock = stack.sockets.get(sock_id)
        if sock is not None and sock.kind == "flow":
            return sock
    sock = _sock(stack, sock_id)
    if sock.kind != "flow":
        kind = "a listening stream socket" if sock.kind == "listener" else "a raw socket"
        raise _error(wrong_type_errno, f"socket {sock_id} is {kind}, not a flow socket")
    return sock


def _side(side):
    if side not in (C.MOS_SIDE_CLI, C.MOS_SIDE_SVR):
        raise _error(errno.EINVAL, f"side {side!r} is not MOS_SIDE_CLI (0) or MOS_SIDE_SVR (1)")
    return side


# ------------------------------------------------------------------ sockets
_DOMAINS = {socket.AF_INET: 4, socket.AF_INET6: 6, socket.AF_UNSPEC: 0}


def mtcp_socket(mctx, domain, type, protocol=0):
    stack = _stack(mctx)
    if not isinstance(domain, int) or domain not in _DOMAINS:
        raise _error(errno.EAFNOSUPPORT, f"domain {domain!r} is not AF_INET, AF_INET6 or AF_UNSPEC")
    if len(stack.listeners) + len(stack.raw_sockets) >= 1024:
        raise _error(errno.ENFILE, "no monitor socket descriptor left (1024 listening/raw sockets)")
    sock_id = stack.new_socket_id()
    if type == C.MOS_SOCK_MONITOR_STREAM:
        stack.add_listener(sock_id, _DOMAINS[domain])
    elif type == C.MOS_SOCK_MONITOR_RAW:
        stack.add_raw_socket(sock_id, _DOMAINS[domain])
    else:
        raise _error(errno.EINVAL, f"socket type {type!r} is not MOS_SOCK_MONITOR_STREAM or "
                     "MOS_SOCK_MONITOR_RAW")
    return sock_id


def mtcp_close(mctx, sock):
    stack = _stack(mctx)
    stack.close_socket(_sock(stack, sock))
    return 0


def _compile(text, raw):
    if text is not None and not isinstance(text, str):
        raise _error(errno.EINVAL, f"a filter is a string or None, not {type(text).__name__}")
    try:
        compiled = compile_filter(text, raw=raw)
    except FilterError as exc:
        raise _error(errno.EINVAL, str(exc)) from None
    return None if compiled.matches_everything else compiled


def mtcp_bind_monitor_filter(mctx, sock, ft):
    stack = _stack(mctx)
    sock_obj = _sock(stack, sock)
    if ft is None:
        return 0
    if not isinstance(ft, MonitorFilter):
        raise _error(errno.EINVAL, "ft must be a monitor_filter (mosxdp.MonitorFilter) or None")
    if sock_obj.kind == "listener":
        if ft.raw_pkt_filter is not None:
            raise _error(errno.ENOPROTOOPT, "raw_pkt_filter is for MOS_SOCK_MONITOR_RAW sockets")
        syn = _compile(ft.stream_syn_filter, raw=False)
        orphan = _compile(ft.stream_orphan_filter, raw=False)
        sock_obj.syn_filter, sock_obj.orphan_filter = syn, orphan
    elif sock_obj.kind == "raw":
        if ft.stream_syn_filter is not None or ft.stream_orphan_filter is not None:
            raise _error(errno.ENOPROTOOPT, "stream filters are for MOS_SOCK_MONITOR_STREAM sockets")
        sock_obj.raw_filter = _compile(ft.raw_pkt_filter, raw=True)
    else:
        raise _error(errno.ENOPROTOOPT, f"socket {sock} is a flow socket: bind filters to its "
                     "listening socket")
    if getattr(mctx.engine, "filters_changed", None) is not None:
        mctx.engine.filters_changed()
    return 0


# ------------------------------------------------------------------- events
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
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        raise _error(errno.EINVAL, f"timeout {timeout!r} is not a non-negative number of seconds")
    stack.add_timer(id, int(seconds * 1_000_000), cb)
    return 0


def mtcp_cb_get_ts(mctx):
    """The context's clock in microseconds (packet time offline)."""
    return _stack(mctx).now


# ----------------------------------------------------------------- per flow
def mtcp_set_uctx(mctx, sock, uctx):
    stack = _stack(mctx)
    _flow_sock(stack, sock, errno.EBADF).uctx = uctx


def mtcp_get_uctx(mctx, sock):
    stack = _stack(mctx)
    return _flow_sock(stack, sock, errno.EBADF).uctx


def _peer(flow, side):
    addr = flow.addrs[side]
    port = flow.ports_tcp[side]
    return (str(ipaddress.ip_address(addr)), port)


def mtcp_getpeername(mctx, sock, side):
    stack = _stack(mctx)
    sock_obj = _flow_sock(stack, sock, errno.ENOTCONN)
    if side == C.MOS_SIDE_BOTH:
        return [_peer(sock_obj.flow, C.MOS_SIDE_CLI), _peer(sock_obj.flow, C.MOS_SIDE_SVR)]
    return _peer(sock_obj.flow, _side(side))


# -------------------------------------------------------------- bytestreams
def _readable(stack, sock, side, wrong_type_errno=errno.ESOCKTNOSUPPORT):
    sock_obj = _flow_sock(stack, sock, wrong_type_errno)
    _side(side)
    if not sock_obj.monitoring[side]:
        raise _error(errno.ENOTCONN, f"socket {sock} stopped monitoring side {side} (MOS_STOP_MON)")
    flow_side = sock_obj.flow.sides[side]
    if not flow_side.bufsize:
        raise _error(errno.EINVAL, f"buffering is off for side {side} of socket {sock}")
    return sock_obj, flow_side


def _writable_bytes(buf):
    """A caller's buffer as writable bytes (a NULL or read-only buffer is EINVAL)."""
    try:
        view = memoryview(buf).cast("B")
    except TypeError:
        raise _error(errno.EINVAL, f"buf must be a writable bytes-like object, not "
                     f"{type(buf).__name__}") from None
    if view.readonly:
        raise _error(errno.EINVAL, "buf is read-only")
    return view


def _length(value):
    """A byte count argument: a non-negative int, else EINVAL."""
    if not isinstance(value, int) or value < 0:
        raise _error(errno.EINVAL, f"len {value!r} is not a non-negative byte count")
    return value


def mtcp_peek(mctx, sock, side, buf, len=None):
    stack = _stack(mctx)
    sock_obj, flow_side = _readable(stack, sock, side, errno.ENOTSOCK)
    view = _writable_bytes(buf)
    want = view.nbytes if len is None else min(_length(len), view.nbytes)
    ring = flow_side.buf
    if ring is None:
        return 0
    offset = sock_obj.peek_off[side]
    if offset < ring.head:
        sock_obj.peek_off[side] = ring.head
        raise PeekOverrunError(ring.head - offset)
    count = ring.read_into(offset, view[:want]) if want else 0
    sock_obj.peek_off[side] = offset + count
    return count


def mtcp_ppeek(mctx, sock, side, buf, len, off):
    stack = _stack(mctx)
    _, flow_side = _readable(stack, sock, side)
    if not isinstance(off, int) or off < 0:
        raise _error(errno.EINVAL, f"offset {off!r} is not a non-negative integer")
    view = _writable_bytes(buf)
    want = min(_length(len), view.nbytes)
    ring = flow_side.buf
    count = ring.read_into(off, view[:want]) if ring is not None and want else 0
    if count == 0:
        raise _error(errno.ENODATA, f"no byte at offset {off} in side {side}'s buffer")
    return count


def _buf_info(flow_side, sock_obj, side):
    base = flow_side.peer_base or 0
    ring = flow_side.buf
    info = TcpBufInfo()
    info.tcpbi_init_seq = base
    info.tcpbi_last_byte_read = (base + sock_obj.peek_off[side]) & 0xFFFFFFFF
    info.tcpbi_next_byte_expected = (base + flow_side.rcv_nxt) & 0xFFFFFFFF
    end = ring.last_received_end if ring is not None else flow_side.max_end
    info.tcpbi_last_byte_received = (base + max(end, flow_side.rcv_nxt)) & 0xFFFFFFFF
    return info


def mtcp_getsockopt(mctx, sock, level, optname):
    stack = _stack(mctx)
    sock_obj = _sock(stack, sock)
    if level == C.SOL_SOCKET:
        if optname != C.SO_ERROR:
            raise _error(errno.ENOSYS, f"option {optname!r} is not implemented at SOL_SOCKET")
        if sock_obj.kind != "flow":
            return 0
        return sock_obj.so_error
    if level != C.SOL_MONSOCKET:
        raise _error(errno.ENOSYS, f"level {level!r} is not SOL_SOCKET or SOL_MONSOCKET")
    if sock_obj.kind != "flow":
        raise _error(errno.ENOTSOCK, f"socket {sock} is not a flow socket (options belong to "
                     "the sockets callbacks receive)")
    flow = sock_obj.flow
    if optname in (C.MOS_FRAGINFO_CLIBUF, C.MOS_FRAGINFO_SVRBUF):
        side = C.MOS_SIDE_CLI if optname == C.MOS_FRAGINFO_CLIBUF else C.MOS_SIDE_SVR
        ring = flow.sides[side].buf
        if ring is None:
            return []
        return [TcpRingFragment(offset, length) for offset, length in ring.fragments()]
    if optname in (C.MOS_INFO_CLIBUF, C.MOS_INFO_SVRBUF):
        side = C.MOS_SIDE_CLI if optname == C.MOS_INFO_CLIBUF else C.MOS_SIDE_SVR
        return _buf_info(flow.sides[side], sock_obj, side)
    if optname == C.MOS_TCP_STATE_CLI:
        return C.TcpState(flow.sides[C.MOS_SIDE_CLI].state)
    if optname == C.MOS_TCP_STATE_SVR:
        return C.TcpState(flow.sides[C.MOS_SIDE_SVR].state)
    if optname in (C.MOS_CLIBUF, C.MOS_SVRBUF):
        side = C.MOS_SIDE_CLI if optname == C.MOS_CLIBUF else C.MOS_SIDE_SVR
        return flow.sides[side].bufsize
    if optname in (C.MOS_CLIOVERLAP, C.MOS_SVROVERLAP):
        side = C.MOS_SIDE_CLI if optname == C.MOS_CLIOVERLAP else C.MOS_SIDE_SVR
        return flow.sides[side].policy
    if optname == C.MOSX_FLOW_STATS:
        return _flow_stats(stack, flow)
    raise _error(errno.ENOSYS, f"option {optname!r} is not implemented at SOL_MONSOCKET")


def _flow_stats(stack, flow):
    stats = FlowStats()
    stats.start_ts = flow.start_ts + stack.wall_offset_us
    stats.last_ts = flow.last_ts + stack.wall_offset_us
    for index, side in enumerate(flow.sides):
        receiver = flow.sides[1 - index]
        stats.pkts[index] = side.pkts
        stats.ip_bytes[index] = side.ip_bytes
        stats.l2_bytes[index] = side.l2_bytes
        # Bytes of a bypassed flow that went by in the kernel since the emulation last
        # caught up (no FIN/RST after them) count as delivered: the payload counted.
        carried = side.bypassed_bytes
        extent = max(receiver.max_end, receiver.rcv_nxt + carried)
        stats.stream_bytes[index] = extent
        stats.missed_bytes[index] = max(0, extent - receiver.unique_bytes - carried)
    stats.history = "".join(flow.history)
    stats.end_reason = flow.end_reason
    return stats


def mtcp_setsockopt(mctx, sock, level, optname, optval):
    stack = _stack(mctx)
    sock_obj = _sock(stack, sock)
    if level != C.SOL_MONSOCKET:
        raise _error(errno.ENOSYS, f"level {level!r} is not SOL_MONSOCKET")
    if sock_obj.kind == "raw":
        raise _error(errno.ENOTSOCK, f"socket {sock} is a raw socket: it has no stream options")
    if optname in (C.MOS_CLIBUF, C.MOS_SVRBUF):
        side = C.MOS_SIDE_CLI if optname == C.MOS_CLIBUF else C.MOS_SIDE_SVR
        if isinstance(optval, bool) or not isinstance(optval, int) or optval < 0:
            raise _error(errno.EINVAL, f"buffer size {optval!r} is not a non-negative integer")
        if sock_obj.kind == "listener":
            sock_obj.bufsize[side] = optval
        else:
            stack.set_buffer_size(sock_obj.flow.sides[side], optval)
        return 0
    if optname in (C.MOS_CLIOVERLAP, C.MOS_SVROVERLAP):
        side = C.MOS_SIDE_CLI if optname == C.MOS_CLIOVERLAP else C.MOS_SIDE_SVR
        if optval not in (C.MOS_OVERLAP_POLICY_FIRST, C.MOS_OVERLAP_POLICY_LAST):
            raise _error(errno.EINVAL, f"overlap policy {optval!r} is not MOS_OVERLAP_POLICY_FIRST "
                         "or MOS_OVERLAP_POLICY_LAST")
        if sock_obj.kind == "listener":
            sock_obj.policy[side] = optval
        else:
            stack.set_overlap_policy(sock_obj.flow.sides[side], optval)
        return 0
    if optname == C.MOS_STOP_MON:
        if sock_obj.kind != "flow":
            raise _error(errno.ENOTSOCK, f"socket {sock} is a listening socket: MOS_STOP_MON "
                         "applies to flow sockets")
        if optval not in (C.MOS_SIDE_CLI, C.MOS_SIDE_SVR, C.MOS_SIDE_BOTH):
            raise _error(errno.EINVAL, f"MOS_STOP_MON takes MOS_SIDE_CLI, MOS_SIDE_SVR or "
                         f"MOS_SIDE_BOTH, not {optval!r}")
        stack.stop_monitoring(sock_obj, optval)
        return 0
    if optname in (C.MOSX_BYPASS, C.MOSX_DROP_FLOW):
        if sock_obj.kind != "flow":
            raise _error(errno.ENOTSOCK, f"socket {sock} is a listening socket")
        stack.set_bypass(sock_obj.flow, "bypass" if optname == C.MOSX_BYPASS else "drop")
        return 0
    raise _error(errno.ENOSYS, f"option {optname!r} is not settable at SOL_MONSOCKET")


# ------------------------------------------------------------------ packets
def _packet_context(stack, sock, side, getlast=False):
    sock_obj = _sock(stack, sock)
    if sock_obj.kind == "listener" and not getlast:
        raise _error(errno.ESOCKTNOSUPPORT, f"socket {sock} is a listening socket: edit packets "
                     "through the flow sockets callbacks receive")
    if sock_obj.kind != "flow":
        # A raw socket's packet, or a listener's orphan (MOS_ON_ORPHAN passes MOS_SIDE_BOTH).
        if side not in (C.MOS_NULL, C.MOS_SIDE_CLI, C.MOS_SIDE_SVR, C.MOS_SIDE_BOTH):
            raise _error(errno.EINVAL, f"side {side!r} is not valid for a {sock_obj.kind} socket")
    else:
        _side(side)
        if not sock_obj.monitoring[side]:
            raise _error(errno.ENOTCONN, f"socket {sock} stopped monitoring side {side}")
    pkt = stack.cur_pkt
    if pkt is None or (sock_obj.kind == "flow" and stack.cur_flow is not sock_obj.flow):
        raise _error(errno.ENODATA, "no packet is being processed for this socket "
                     "(timers, CONN_NEW_DATA and CONN_END have no packet)")
    return sock_obj, pkt


def mtcp_getlastpkt(mctx, sock, side, pinfo):
    stack = _stack(mctx)
    if not isinstance(pinfo, PktInfo):
        raise _error(errno.EINVAL, "pinfo must be a PktInfo()")
    sock_obj, pkt = _packet_context(stack, sock, side, getlast=True)
    frame = pkt.buf
    size = pkt.l3_off + pkt.ip_len if pkt.ip_version else len(frame)
    copy = mctx.pkt_copy
    if copy is None or len(copy) < size:
        copy = mctx.pkt_copy = bytearray(max(size, 2048))
    copy[:size] = frame[:size]
    view = memoryview(copy)
    pinfo.cur_ts = (stack.now // 1000) & 0xFFFFFFFF
    pinfo.in_ifidx = 0
    pinfo.eth_len = size
    pinfo.ethh = view[:pkt.l3_off]
    if pkt.ip_version:
        pinfo.ip_len = pkt.ip_len
        pinfo.iph = view[pkt.l3_off:pkt.l4_off]
    else:
        pinfo.ip_len = 0
        pinfo.iph = view[pkt.l3_off:pkt.l3_off]
    if pkt.ip_version and pkt.ip_proto == 6 and not pkt.is_fragment:
        pinfo.tcph = view[pkt.l4_off:pkt.payload_off]
        pinfo.payload = view[pkt.payload_off:pkt.payload_off + pkt.payload_len]
        pinfo.payloadlen = pkt.payload_len
        pinfo.seq = pkt.seq
        pinfo.ack_seq = pkt.ack
        pinfo.window = pkt.window
        pinfo.offset = frames.stream_offset(sock_obj.flow, pkt) if sock_obj.kind == "flow" else 0
    else:
        pinfo.tcph = pinfo.payload = view[size:size]
        pinfo.payloadlen = pinfo.seq = pinfo.ack_seq = pinfo.window = pinfo.offset = 0
    return 0


_REGIONS = (C.MOS_ETH_HDR, C.MOS_IP_HDR, C.MOS_TCP_HDR, C.MOS_TCP_PAYLOAD)


def mtcp_setlastpkt(mctx, sock, side, offset, data, datalen, option):
    stack = _stack(mctx)
    sock_obj, pkt = _packet_context(stack, sock, side)
    if not isinstance(option, int):
        raise _error(errno.EINVAL, f"option {option!r} is not a combination of MOS_* flags")
    action = option & (C.MOS_DROP | C.MOS_OVERWRITE | C.MOS_CHOMP | C.MOS_INSERT)
    if action & (C.MOS_CHOMP | C.MOS_INSERT):
        raise _error(errno.EINVAL, "MOS_CHOMP and MOS_INSERT are not supported (they change the "
                     "payload size, which needs sequence remapping)")
    if action == C.MOS_DROP:
        stack.drop_current()
        return 0
    if action != C.MOS_OVERWRITE:
        raise _error(errno.EINVAL, "option needs exactly one of MOS_DROP and MOS_OVERWRITE")
    regions = [r for r in _REGIONS if option & r]
    if len(regions) != 1:
        raise _error(errno.EINVAL, "MOS_OVERWRITE needs exactly one of MOS_ETH_HDR, MOS_IP_HDR, "
                     "MOS_TCP_HDR, MOS_TCP_PAYLOAD")
    try:
        data_view = memoryview(data).cast("B")
    except TypeError:
        raise _error(errno.EINVAL, f"data must be a bytes-like object, not "
                     f"{type(data).__name__}") from None
    if datalen is None:
        datalen = data_view.nbytes
    if not isinstance(offset, int) or offset < 0 or not isinstance(datalen, int) \
            or datalen < 0 or datalen > data_view.nbytes:
        raise _error(errno.EINVAL, f"offset {offset!r}/datalen {datalen!r} do not fit the data given")
    frames.overwrite(pkt, regions[0], offset, data_view, datalen,
                     bool(option & C.MOS_UPDATE_IP_CHKSUM), bool(option & C.MOS_UPDATE_TCP_CHKSUM))
    return 0


def mtcp_sendpkt(mctx, sock, pinfo):
    stack = _stack(mctx)
    if not isinstance(pinfo, PktInfo):
        raise _error(errno.EACCES, "pinfo must be a PktInfo()")
    sock_obj = _sock(stack, sock)
    parts = (pinfo.ethh, pinfo.iph, pinfo.tcph)
    if any(part is None or len(part) == 0 for part in parts):
        raise _error(errno.ENODATA, "pinfo has no Ethernet, IP or TCP header")
    payload = bytes(pinfo.payload[:pinfo.payloadlen]) if pinfo.payload is not None else b""
    frame = bytearray(bytes(pinfo.ethh) + bytes(pinfo.iph) + bytes(pinfo.tcph) + payload)
    pkt = frames.finish_frame(frame)
    flow = sock_obj.flow if sock_obj.kind == "flow" else stack.cur_flow
    stack.queue_frame(frame, frames.egress_port(flow, pkt))
    return 0


def mtcp_reset_conn(mctx, sock):
    """Send an RST to both ends of the flow (a mosxdp extension)."""
    stack = _stack(mctx)
    sock_obj = _flow_sock(stack, sock, errno.ENOTSOCK)
    for frame, port in frames.reset_frames(sock_obj.flow):
        stack.queue_frame(frame, port)
    return 0

