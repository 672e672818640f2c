"""A Pythonic facade over the mtcp_* API: decorators for callbacks and timers, a
context manager for the runtime and its context, and a few shorthands.

It adds nothing the mtcp_* layer cannot do: every method is a few mtcp_* calls, the
callbacks keep the mOS signature ``cb(mctx, sock, side, event, arg)`` (so they can be
registered either way), and errors are the same ``OSError``s with the C errno::

    from mosxdp import Monitor, MOS_ON_CONN_NEW_DATA, MOS_NULL

    with Monitor.offline("tests/data/http_sizes.pcap") as mon:
        @mon.on(MOS_ON_CONN_NEW_DATA, MOS_NULL, syn_filter="tcp port 8080")
        def on_data(mctx, sock, side, event, arg):
            print(side, len(mon.read(sock, side)))
    # leaving the block replayed the capture (mtcp_app_join) and ran mtcp_destroy

In an app for ``mosxdp run``, wrap the context that ``setup(mctx, args)`` receives:
``mon = Monitor(mctx)``.
"""
import contextlib
import errno
from socket import AF_UNSPEC

from .api import (
    MtcpContext, mtcp_app_join, mtcp_bind_monitor_filter, mtcp_create_context, mtcp_destroy,
    mtcp_get_uctx, mtcp_getpeername, mtcp_getsockopt, mtcp_init, mtcp_peek,
    mtcp_register_callback, mtcp_set_uctx, mtcp_setsockopt, mtcp_settimer, mtcp_socket,
)
from .constants import (
    MOS_NULL, MOS_SIDE_BOTH, MOS_SIDE_CLI, MOS_SOCK_MONITOR_RAW, MOS_SOCK_MONITOR_STREAM,
    MOS_STOP_MON, MOS_TCP_STATE_CLI, MOS_TCP_STATE_SVR, SOL_MONSOCKET,
)
from .types import MonitorFilter

__all__ = ["Monitor"]


class Monitor:
    """One monitoring context (an mctx) with decorator-style registration.

    ``mctx``: a context from ``mtcp_create_context`` (or the one ``setup(mctx, args)``
    receives). ``mon.mctx`` is that context, for any mtcp_* call.
    """

    def __init__(self, mctx):
        if not isinstance(mctx, MtcpContext):
            raise OSError(errno.EACCES, f"invalid mctx {mctx!r}")   # as the mtcp_* calls say
        self.mctx = mctx
        self.ran = False
        self._sockets = {}       # (type, domain, filters) -> socket id
        self._next_timer = 1 << 20

    # ------------------------------------------------------------- runtime
    @classmethod
    @contextlib.contextmanager
    def offline(cls, pcap, write=None, *, config=None, cpu=0, **overrides):
        """``with Monitor.offline(IN[, OUT]) as mon:`` register callbacks in the block;
        leaving it runs the capture through them (mtcp_app_join), unless ``mon.run()``
        was called inside, then ``mtcp_destroy()`` (also on an exception, which then
        propagates without running anything). ``config``: a TOML file as for mtcp_init;
        other keyword arguments are configuration keys (``batch_size=1``, ...)."""
        with cls._runtime(config, cpu, pcap=pcap, write=write, **overrides) as mon:
            yield mon

    @classmethod
    @contextlib.contextmanager
    def live(cls, iface, peer=None, *, config=None, cpu=0, **overrides):
        """Like :meth:`offline` on interfaces: inline between ``iface`` and ``peer``, or
        passive on ``iface`` alone. Runs until SIGINT/SIGTERM (root)."""
        mode = "inline" if peer is not None else "passive"
        with cls._runtime(config, cpu, iface=iface, peer=peer, mode=mode, **overrides) as mon:
            yield mon

    @classmethod
    @contextlib.contextmanager
    def _runtime(cls, config, cpu, **overrides):
        mtcp_init(config, **overrides)
        try:
            mon = cls(mtcp_create_context(cpu))
            yield mon
            if not mon.ran:
                mon.run()
        finally:
            mtcp_destroy()

    def run(self):
        """mtcp_app_join: run the datapath until its input ends or a signal stops it."""
        self.ran = True
        return mtcp_app_join(self.mctx)

    # ------------------------------------------------------------- sockets
    def socket(self, type=None, domain=AF_UNSPEC, *, syn_filter=None, orphan_filter=None,
               raw_filter=None):
        """A monitor socket with its filters bound (mtcp_socket + mtcp_bind_monitor_filter).

        ``type`` defaults to MOS_SOCK_MONITOR_RAW when ``raw_filter`` is given, else
        MOS_SOCK_MONITOR_STREAM. The same arguments return the same socket, so several
        decorators share one listener (and one flow socket per flow)."""
        if type is None:
            type = MOS_SOCK_MONITOR_RAW if raw_filter is not None else MOS_SOCK_MONITOR_STREAM
        key = (int(type), domain, syn_filter, orphan_filter, raw_filter)
        sock = self._sockets.get(key)
        if sock is None:
            sock = mtcp_socket(self.mctx, domain, type, 0)
            if (syn_filter, orphan_filter, raw_filter) != (None, None, None):
                mtcp_bind_monitor_filter(self.mctx, sock, MonitorFilter(
                    raw_pkt_filter=raw_filter, stream_syn_filter=syn_filter,
                    stream_orphan_filter=orphan_filter))
            self._sockets[key] = sock
        return sock

    def on(self, event, hook=MOS_NULL, *, sock=None, type=None, domain=AF_UNSPEC,
           syn_filter=None, orphan_filter=None, raw_filter=None):
        """Decorator: ``mtcp_register_callback(mctx, sock, event, hook, fn)``.

        ``sock``: a socket id; by default the socket :meth:`socket` gives for the other
        arguments. Returns the function unchanged, so decorators stack (one function
        for several events or hooks). Invalid combinations raise OSError(EINVAL) here."""
        if sock is None:
            sock = self.socket(type, domain, syn_filter=syn_filter, orphan_filter=orphan_filter,
                               raw_filter=raw_filter)

        def register(fn):
            mtcp_register_callback(self.mctx, sock, event, hook, fn)
            return fn
        return register

    # -------------------------------------------------------------- timers
    def after(self, seconds, *, id=None):
        """Decorator: a one-shot timer (mtcp_settimer); ``fn(mctx, id, 0, 0, None)``."""
        def arm(fn):
            mtcp_settimer(self.mctx, self._timer_id(id), seconds, fn)
            return fn
        return arm

    def every(self, seconds, *, id=None):
        """Decorator: a timer re-armed after each call, every ``seconds`` of the
        context's clock (packet time offline) until ``fn`` returns False."""
        timer_id = self._timer_id(id)

        def arm(fn):
            def tick(mctx, tid, side, event, arg):
                if fn(mctx, tid, side, event, arg) is not False:
                    mtcp_settimer(mctx, tid, seconds, tick)
            mtcp_settimer(self.mctx, timer_id, seconds, tick)
            return fn
        return arm

    def _timer_id(self, timer_id):
        if timer_id is None:
            timer_id = self._next_timer
            self._next_timer += 1
        return timer_id

    # ----------------------------------------------------------- shorthands
    def read(self, sock, side, limit=None):
        """Every new in-order byte of ``side``'s buffer (mtcp_peek until it returns 0),
        at most ``limit``. Lost bytes (overwritten, or never captured) raise
        PeekOverrunError as mtcp_peek does (the bytes read before it are lost with the
        exception: use mtcp_peek to keep them)."""
        chunks = []
        total = 0
        buf = bytearray(65536)
        while limit is None or total < limit:
            want = len(buf) if limit is None else min(len(buf), limit - total)
            count = mtcp_peek(self.mctx, sock, side, buf, want)
            if count == 0:
                break
            chunks.append(bytes(buf[:count]))
            total += count
        return b"".join(chunks)

    def peers(self, sock):
        """((client addr, port), (server addr, port)) of a flow socket."""
        cli, svr = mtcp_getpeername(self.mctx, sock, MOS_SIDE_BOTH)
        return cli, svr

    def state(self, sock, side):
        """The emulated TcpState of ``side`` (MOS_TCP_STATE_CLI / MOS_TCP_STATE_SVR)."""
        option = MOS_TCP_STATE_CLI if side == MOS_SIDE_CLI else MOS_TCP_STATE_SVR
        return mtcp_getsockopt(self.mctx, sock, SOL_MONSOCKET, option)

    def uctx(self, sock, factory=None):
        """The flow's user context (mtcp_get_uctx); when it has none yet and ``factory``
        is given, ``factory()`` is stored with mtcp_set_uctx and returned."""
        value = mtcp_get_uctx(self.mctx, sock)
        if value is None and factory is not None:
            value = factory()
            mtcp_set_uctx(self.mctx, sock, value)
        return value

    def stop(self, sock, side=MOS_SIDE_BOTH):
        """MOS_STOP_MON: stop monitoring ``side`` (default both) of a flow."""
        return mtcp_setsockopt(self.mctx, sock, SOL_MONSOCKET, MOS_STOP_MON, side)

    def __repr__(self):
        return f"<Monitor {self.mctx!r} sockets={sorted(self._sockets.values())}>"
