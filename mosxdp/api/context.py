"""Contexts and the process-wide runtime: mtcp_init, mtcp_destroy, mtcp_getconf,
mtcp_setconf, mtcp_create_context, mtcp_destroy_context, mtcp_app_join,
mtcp_get_connection_cnt; and the checks of
the arguments every call takes (mctx, socket id, side)."""
import errno
import os
from threading import Event, get_ident

from .. import constants as C
from ..config import ConfigError, apply, load_config
from ..core.events import EventRegistry
from ..core.stack import Stack
from ..engine.callback_log import log_callback_error
from ..io.outputs import Outputs
from ..types import MtcpConf


def _error(err, message):
    return OSError(err, message)


class _Runtime:
    """Process-wide state that mtcp_init sets up (mOS keeps it global too)."""

    def __init__(self):
        self.config = None
        self.contexts = {}
        self.registry = None
        self.outputs = None     # io.outputs.Outputs: the files the contexts write


_runtime = _Runtime()


class MtcpContext:
    """An mctx: one monitoring context, owning a core Stack.

    Its fields, all set here: ``cpu`` and ``config`` (as created); ``stack``, the core;
    ``alive``, False once destroyed; ``pkt_copy``, the buffer mtcp_getlastpkt reuses;
    ``engine``, what drives the context while it runs (set by mosxdp.engine: anything with
    ``filters_changed()``, which mtcp_bind_monitor_filter calls); ``thread``, the ident of
    the context's thread (its creator's, then mtcp_app_join's), the only one that may make
    the calls mOS restricts to it; ``shared_run``, the run it shares with other contexts
    (see mtcp_app_join), None until it takes part in one; ``outputs``, the files the run
    writes (io.outputs.Outputs, the runtime's, shared by its contexts: the apps' through
    mosx_open_output/mosx_open_outdir, --write, --stats-json)."""

    def __init__(self, cpu, config, registry, outputs=None):
        self.cpu = cpu
        self.config = config
        # A callback's first exception is logged with its traceback; all are counted.
        self.stack = Stack(config.stack_config(), handle=self, registry=registry,
                           on_callback_error=log_callback_error)
        self.alive = True
        self.pkt_copy = None
        self.engine = None
        self.thread = get_ident()
        self.shared_run = None
        self.outputs = outputs if outputs is not None else Outputs()

    def __repr__(self):
        return f"<MtcpContext cpu={self.cpu}{'' if self.alive else ' destroyed'}>"


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
    _runtime.outputs = Outputs()
    return 0


def _require_init():
    if _runtime.config is None:
        raise _error(errno.EPERM, "call mtcp_init() first")


def mtcp_destroy():
    for mctx in list(_runtime.contexts.values()):
        mtcp_destroy_context(mctx)
    if _runtime.outputs is not None:
        _runtime.outputs.close()
        _runtime.outputs = None
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
    mctx = MtcpContext(cpu, _runtime.config, _runtime.registry, _runtime.outputs)
    _runtime.contexts[cpu] = mctx
    return mctx


def mtcp_destroy_context(mctx):
    stack = _stack(mctx)
    mctx.alive = False
    _runtime.contexts.pop(mctx.cpu, None)
    del stack


def mtcp_app_join(mctx):
    """Run the context's datapath until its input ends or a signal stops it.

    mOS runs a context per core, each fed a share of the flows, and mtcp_app_join waits for
    one of them. Here the first join runs one datapath for every context that exists then
    and has not run yet (each flow goes to one of them: mosxdp.engine.group); joining one
    of the others waits for that run to end and returns 0. A context that runs alone runs
    again at its next join."""
    _stack(mctx)
    shared = mctx.shared_run
    if shared is not None:
        shared.wait()
        return 0
    members = [c for c in sorted(_runtime.contexts.values(), key=lambda c: c.cpu)
               if c.alive and c.shared_run is None]
    if mctx not in members:     # created after mtcp_init's runtime was replaced
        members = [mctx]
    done = Event() if len(members) > 1 else None
    for member in members:
        member.thread = get_ident()     # callbacks run here: this is the context's thread now
        member.shared_run = done
    from ..engine import run_contexts
    try:
        return run_contexts(members)
    finally:
        if done is not None:
            done.set()


def mtcp_get_connection_cnt(mctx):
    """The number of connections the context tracks now (mtcp_api.h)."""
    return _stack(mctx).flow_count()


def _stack(mctx):
    if not isinstance(mctx, MtcpContext) or not mctx.alive:
        raise _error(errno.EACCES, f"invalid mctx {mctx!r}")
    return mctx.stack


def _own_stack(mctx):
    """_stack for the calls mOS allows only on the context's thread (EPERM elsewhere)."""
    if not isinstance(mctx, MtcpContext) or not mctx.alive:
        raise _error(errno.EACCES, f"invalid mctx {mctx!r}")
    if mctx.thread != get_ident():
        raise _error(errno.EPERM, "called from another thread than the context's (the one "
                     "that created it or runs mtcp_app_join)")
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
