"""The monitor sockets of a context: listeners (MOS_SOCK_MONITOR_STREAM), raw sockets
(MOS_SOCK_MONITOR_RAW) and flow sockets (MOS_SOCK_MONITOR_STREAM_ACTIVE, one per listener
and flow), their ids, their callback tables and the event masks a flow caches from them.

`SocketTable` is one of the Stack's parts (see stack.py): it owns `sockets`, `listeners`,
`raw_sockets`, the ended-id memory and `mask_epoch`.
"""
from collections import deque

from .constants import MOS_SIDE_BOTH, MOS_SIDE_CLI, MOS_SIDE_SVR
from .events import HOOK_NULL, HOOK_RCV, HOOK_SND, CallbackTable

# How many ended flow sockets' ids are remembered (their calls say ENOTCONN, not EBADF).
ENDED_IDS_KEPT = 65536


class Listener:
    """A MOS_SOCK_MONITOR_STREAM socket: the template of its flows' sockets."""
    __slots__ = ("id", "domain", "syn_filter", "orphan_filter", "table", "bufsize", "policy",
                 "midstream", "state_only", "stream_only", "closed")
    kind = "listener"

    def __init__(self, sock_id, domain):
        self.id = sock_id
        self.domain = domain          # 0: both, 4 or 6
        self.syn_filter = None
        self.orphan_filter = None
        self.table = CallbackTable()
        self.bufsize = [None, None]   # None: rmem_size
        self.policy = [None, None]
        self.midstream = None         # None: midstream_pickup; else MOSX_MIDSTREAM's choice
        self.state_only = False       # MOSX_STATE_ONLY: its flows need no frame but the control ones
        self.stream_only = False      # MOSX_STREAM_ONLY: its flows need their streams, no packet
        self.closed = False


class RawSocket:
    __slots__ = ("id", "domain", "raw_filter", "table")
    kind = "raw"

    def __init__(self, sock_id, domain):
        self.id = sock_id
        self.domain = domain
        self.raw_filter = None
        self.table = CallbackTable()


class FlowSocket:
    """A MOS_SOCK_MONITOR_STREAM_ACTIVE socket: one listener's view of one flow."""
    __slots__ = ("id", "listener", "flow", "table", "peek_off", "monitoring", "uctx",
                 "so_error")
    kind = "flow"

    def __init__(self, sock_id, listener, flow):
        self.id = sock_id
        self.listener = listener
        self.flow = flow
        self.table = listener.table
        self.peek_off = [0, 0]
        self.monitoring = [True, True]
        self.uctx = None
        self.so_error = 0


class SocketTable:
    """The Stack's sockets (a mixin: the per-frame path calls these without a hop)."""

    def _init_sockets(self):
        self.sockets = {}                    # id -> Listener | RawSocket | FlowSocket
        self.listeners = []
        self.raw_sockets = []
        self.ended_socket_ids = deque(maxlen=ENDED_IDS_KEPT)
        self._ended_lookup = set()
        self._next_socket_id = 1
        # Bumped whenever a registration or a socket's monitoring changes, so
        # flows recompute the event masks they cache.
        self.mask_epoch = 0

    def new_socket_id(self):
        sock_id = self._next_socket_id
        self._next_socket_id += 1
        return sock_id

    def add_listener(self, sock_id, domain):
        sock = Listener(sock_id, domain)
        self.sockets[sock_id] = sock
        self.listeners.append(sock)
        return sock

    def add_raw_socket(self, sock_id, domain):
        sock = RawSocket(sock_id, domain)
        self.sockets[sock_id] = sock
        self.raw_sockets.append(sock)
        return sock

    def socket_ended(self, sock_id):
        return sock_id in self._ended_lookup

    def _retire_socket_id(self, sock_id):
        if len(self.ended_socket_ids) == self.ended_socket_ids.maxlen:
            self._ended_lookup.discard(self.ended_socket_ids[0])
        self.ended_socket_ids.append(sock_id)
        self._ended_lookup.add(sock_id)
        self.sockets.pop(sock_id, None)

    def close_socket(self, sock):
        self.mask_epoch += 1
        if sock.kind == "listener":
            for cbs in sock.table.callbacks.values():
                cbs.clear()
            for hook in sock.table.masks:
                sock.table.masks[hook] = 0
                sock.table.wanted_udes[hook] = frozenset()
            sock.closed = True
            self.listeners.remove(sock)
            self.sockets.pop(sock.id, None)
        elif sock.kind == "raw":
            self.raw_sockets.remove(sock)
            self.sockets.pop(sock.id, None)
        else:
            self.stop_monitoring(sock, MOS_SIDE_BOTH)
            if sock in sock.flow.socks:
                sock.flow.socks.remove(sock)
            self._retire_socket_id(sock.id)

    def register(self, sock, event, hook, callback):
        table = sock.table
        if sock.kind == "flow" and table is sock.listener.table:
            table = sock.table = table.copy()
        table.set(self.registry, event, hook, callback)
        self.mask_epoch += 1

    def _flow_masks(self, flow):
        """The events any socket of the flow waits for, per hook (cached)."""
        if flow.masks_epoch != self.mask_epoch:
            null_mask = snd_mask = rcv_mask = 0
            for sock in flow.socks:
                masks = sock.table.masks
                null_mask |= masks[HOOK_NULL]
                snd_mask |= masks[HOOK_SND]
                rcv_mask |= masks[HOOK_RCV]
            flow.masks = (null_mask, snd_mask, rcv_mask)
            flow.masks_epoch = self.mask_epoch
        return flow.masks

    def stop_monitoring(self, sock, side):
        sides = (MOS_SIDE_CLI, MOS_SIDE_SVR) if side == MOS_SIDE_BOTH else (side,)
        for s in sides:
            sock.monitoring[s] = False
        self.mask_epoch += 1
        flow = sock.flow
        if not flow.destroyed and not any(any(fs.monitoring) for fs in flow.socks):
            # Nobody looks at this flow any more: the rest of it bypasses user space.
            self.set_bypass(flow, "bypass")
