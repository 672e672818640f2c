"""``XdpProgram``: mosxdp's XDP program on a set of interfaces, the context manager the
live engine uses: checks, compiles, fills the per-interface config, attaches to every
interface, and on a clean exit detaches what it attached.

Fail-open after ``kill -9``: programs are attached over netlink (not bpf_link), so they
stay attached when the process dies, with their maps; the dead process's AF_XDP sockets
leave the XSKMAP and frames take the kernel path (or are dropped with fail_closed).
Nothing here detaches from ``__del__`` or ``atexit``: only ``__exit__`` does (callers turn
SIGTERM into an exception so that ``__exit__`` runs), and not with ``keep_attached``.

Ownership: while it is set up, an ``XdpProgram`` holds the lock of each of its interfaces
(owner.py). Another one on the same interfaces is refused with "A in use by mosxdp PID n"
before anything is touched; a mosxdp program whose owner is gone is stale and replaced.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from ..bpfstructs import (FlowVerdict, MX_IF_BYPASS_CONSUME, MX_IF_FAIL_CLOSED, MX_IF_FILTER_ALL_IP,
                          MX_IF_INLINE, MX_IF_OBSERVE, MX_MAX_QUEUES, MX_MAX_SLOTS,
                          MX_OBSERVE_MAX_RINGS, MxFlowKey, MxIfConfig)
from ..errors import XdpError
from ..netdev import rx_queue_count
from ..privileges import check_privileges
from .attach import (attach, attached_prog_ids, detach_mode, ifindex_of, iproute, link_state,
                     remove_programs)
from .compile import LoadedProgram, check_environment, compile_program
from .maps import MosxdpMaps
from .owner import FAIL_OPEN, InterfaceLock, acquire_all

__all__ = ["XdpProgram"]

log = logging.getLogger("mosxdp.xdp")


class XdpProgram:
    """mosxdp's XDP program on a set of interfaces, as a context manager.

    ``ifaces``: monitored interfaces; their order gives the slots (XSKMAP blocks).
    ``peers``: inline pairs {"A": "B"}: frames of A take the kernel path out of B and B's
    out of A (a peer missing from ``ifaces`` is appended). Interfaces without a peer are
    passive (kernel path = XDP_PASS).
    ``mode``: "native", "generic" or "auto" (native, else generic with a note).
    ``fail_closed``: no socket bound for a frame meant for user space -> XDP_DROP.
    ``filter_c_expr``: C expression over ``struct mx_flow_view *v``; None = all TCP.
    ``force``: replace a foreign XDP program (a stale mosxdp one is always replaced; one
    a live monitor holds never is).
    ``keep_attached``: leave the program attached on exit too (fail-open after we stop);
    an attribute that may change until the exit (the live engine sets it once its
    sockets are up). What was left or detached is in ``left_attached`` / ``detached``.
    ``passive_bypass``: "pass" or "consume": what a BYPASS verdict does on a passive interface.
    ``filter_all_ip``: evaluate the filter on every parsed frame but IP fragments, not only
    TCP (raw monitor sockets whose filters can match UDP, ICMP, ARP); non-TCP frames it matches go to
    the sockets.
    ``observe``: None, or (snap, ring bytes): observe-only, frames meant for user space are
    copied (their first ``snap`` bytes) into a ring buffer of that size (``observed_ring``)
    and take the kernel path; no AF_XDP socket is involved.
    ``workers``: a run split over that many worker processes (engine/live_workers.py): the
    program counts the frames that came in on a queue of another worker than their flow's
    (``frames_off_worker``); observe-only, it has a ring per worker (at most
    MX_OBSERVE_MAX_RINGS) and copies each frame into the ring of its flow's worker.
    """

    def __init__(self, ifaces: list[str], *, peers: dict[str, str] | None = None,
                 mode: str = "native", fail_closed: bool = False, filter_c_expr: str | None = None,
                 force: bool = False, keep_attached: bool = False, passive_bypass: str = "pass",
                 filter_all_ip: bool = False, observe: tuple[int, int] | None = None,
                 workers: int = 1):
        if mode not in ("native", "generic", "auto"):
            raise XdpError("XDP mode must be one of native, generic, auto; got %r" % (mode,))
        if passive_bypass not in ("pass", "consume"):
            raise XdpError("passive_bypass must be 'pass' or 'consume'; got %r" % (passive_bypass,))
        names = list(dict.fromkeys(ifaces))
        if not names:
            raise XdpError("no interface given")
        peer_of: dict[str, str] = {}
        for a, b in (peers or {}).items():
            if a == b:
                raise XdpError("interface %r cannot be its own peer" % a)
            for x, y in ((a, b), (b, a)):
                if peer_of.get(x, y) != y:
                    raise XdpError("interface %r is paired with both %r and %r" % (x, peer_of[x], y))
                peer_of[x] = y
            for x in (a, b):
                if x not in names:
                    names.append(x)
        if len(names) > MX_MAX_SLOTS:
            raise XdpError("at most %d interfaces per program, got %d" % (MX_MAX_SLOTS, len(names)))
        self.ifaces: list[str] = names
        self.peers: dict[str, str] = peer_of
        self.mode = mode
        self.fail_closed = fail_closed
        self.filter_c_expr = filter_c_expr
        self.force = force
        self.keep_attached = keep_attached
        self.passive_bypass = passive_bypass
        self.filter_all_ip = filter_all_ip
        self.observe = observe
        self.workers = workers
        self.slots: dict[str, int] = {n: i for i, n in enumerate(names)}
        self.ifindexes: dict[str, int] = {}
        self.modes: dict[str, str] = {}
        self.notes: list[str] = []
        self.program: LoadedProgram | None = None
        self._stack: contextlib.ExitStack | None = None
        self._setup_done = False
        self._detach_stack: contextlib.ExitStack | None = None
        self._locks: dict[str, InterfaceLock] = {}
        self._touched: set[str] = set()
        #: interface -> what was attached there before: "fail-open", "stale" or "foreign"
        self.replaced: dict[str, str] = {}
        self.left_attached: list[str] = []
        self.detached: list[str] = []
        self._kept_prog_id: int | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> "XdpProgram":
        check_privileges()
        check_environment()
        stack = contextlib.ExitStack()
        self._setup_done = False
        self._touched, self.replaced, self.left_attached, self.detached = set(), {}, [], []
        try:
            with iproute() as ipr:
                self._setup(ipr, stack)
        except BaseException:
            stack.close()  # detaches whatever was attached so far, frees the program
            raise
        self._setup_done = True
        self._stack = stack
        return self

    def _setup(self, ipr, stack: contextlib.ExitStack) -> None:
        for n in self.ifaces:
            self.ifindexes[n] = ifindex_of(ipr, n)
        # before anything else: a live owner means hands off (owner.InUse)
        self._locks = {lock.ifname: lock for lock in acquire_all(self.ifindexes)}
        stack.callback(self._release_locks)  # registered first: runs last
        states = {n: link_state(ipr, n, self.ifindexes[n]) for n in self.ifaces}
        for n, st in states.items():
            if st.attached and not st.ours and not self.force:
                raise XdpError("%s; refusing to replace it: pass --force, or remove it with "
                               "`mosxdp detach --iface %s --force`" % (st.describe(), n))
        for n in self.ifaces:
            q = rx_queue_count(n)
            if q > MX_MAX_QUEUES:
                self.notes.append("%s has %d RX queues; only queues < %d reach AF_XDP sockets"
                                  % (n, q, MX_MAX_QUEUES))
                log.warning(self.notes[-1])

        cflags = ()
        if self.observe is not None and self.workers > MX_OBSERVE_MAX_RINGS:
            raise XdpError("observe-only runs split over at most %d workers, got %d"
                           % (MX_OBSERVE_MAX_RINGS, self.workers))
        if self.observe is not None:
            snap, ring_bytes = self.observe
            cflags = ("-DMX_OBSERVE_SNAP=%d" % snap, "-DMX_OBSERVE_PAGES=%d" % (ring_bytes // 4096))
        if self.workers > 1:
            cflags += ("-DMX_WORKERS=%d" % self.workers,)
        self.program = stack.enter_context(compile_program(self.filter_c_expr, extra_cflags=cflags))
        maps = self.program.maps
        for n in self.ifaces:
            cfg = MxIfConfig(slot=self.slots[n])
            flags = MX_IF_FAIL_CLOSED if self.fail_closed else 0
            if self.filter_all_ip:
                flags |= MX_IF_FILTER_ALL_IP
            if self.observe is not None:
                flags |= MX_IF_OBSERVE
            if n in self.peers:
                p = self.peers[n]
                flags |= MX_IF_INLINE
                cfg.egress_slot = self.slots[p]
                cfg.egress_ifindex = self.ifindexes[p]
                maps.set_tx_port(self.slots[p], self.ifindexes[p])
            elif self.passive_bypass == "consume":
                flags |= MX_IF_BYPASS_CONSUME
            cfg.flags = flags
            maps.set_iface_config(self.ifindexes[n], cfg)
        why = self.program.count_redirect_errors()
        if why:
            self.notes.append(why)
            log.warning(why)

        # detach callbacks, run before the program is freed (ExitStack: reverse order)
        self._detach_stack = contextlib.ExitStack()
        stack.callback(self._close_detach_stack)
        for n in self.ifaces:
            st = states[n]
            self._touched.add(n)
            if st.attached:
                self._replacing(n, st)
                remove_programs(ipr, st)
            used = attach(ipr, n, self.ifindexes[n], self.program.prog_fd, self.mode, self.notes)
            self.modes[n] = used
            self._detach_stack.callback(self._detach_one, n, used)
            self._locks[n].record(program=self.program.prog_id, peer=self.peers.get(n))

    def _replacing(self, ifname: str, st) -> None:
        """Say what is replaced: the fail-open program a monitor left when it stopped (a
        note), a stale one whose monitor is gone, or a foreign one (warnings)."""
        prev = self._locks[ifname].previous
        if not st.ours:
            self.replaced[ifname] = "foreign"
            self.notes.append("%s: replacing foreign (--force) program(s): %s" % (ifname, st.describe()))
            log.warning(self.notes[-1])
        elif prev.state == FAIL_OPEN and prev.program in st.prog_ids.values():
            self.replaced[ifname] = "fail-open"
            self.notes.append("%s: replacing the fail-open program id %d left by mosxdp PID %s"
                              % (ifname, prev.program, prev.pid))
            log.info(self.notes[-1])
        else:
            self.replaced[ifname] = "stale"
            why = ("its monitor, PID %d, is gone" % prev.pid if prev.pid
                   else "no running monitor holds it")
            self.notes.append("%s: replacing stale mosxdp program(s) (%s): %s"
                              % (ifname, why, st.describe().split(": ", 1)[1]))
            log.warning(self.notes[-1])

    def _release_locks(self) -> None:
        """Last of the exit: a kept program's record says fail-open (the next run replaces
        it as such); an interface left untouched gets its earlier record back; else the
        lock file goes."""
        locks, self._locks = self._locks, {}
        for n, lock in locks.items():
            if n not in self._touched:
                lock.restore()
            elif n in self.left_attached:
                lock.record(FAIL_OPEN, program=self._kept_prog_id, peer=self.peers.get(n))
                lock.release(keep_record=True)
            else:
                lock.release()

    def _close_detach_stack(self) -> None:
        ds, self._detach_stack = self._detach_stack, None
        if ds is None:
            return
        if self.keep_attached and self._setup_done:
            ds.pop_all()  # stays attached, fail-open with no socket
            self._kept_prog_id = self.program.prog_id
            self.left_attached = [n for n in self.modes if self._still_ours(n)]
        else:
            ds.close()

    def _still_ours(self, ifname: str) -> bool:
        """Our program is still attached to ``ifname`` (``mosxdp detach --force`` may have
        removed it, or someone replaced it)."""
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            with iproute() as ipr:
                if self.program.prog_id in attached_prog_ids(ipr, self.ifindexes[ifname]):
                    return True
        except NetlinkError:
            pass  # the interface is gone
        self.notes.append("%s: our program is no longer attached there" % ifname)
        log.warning(self.notes[-1])
        return False

    def _detach_one(self, ifname: str, mode: str) -> None:
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            with iproute() as ipr:
                detach_mode(ipr, self.ifindexes[ifname], mode, expected_fd=self.program.prog_fd)
            self.detached.append(ifname)
        except NetlinkError as e:
            # someone replaced or removed our program meanwhile: leave theirs alone
            self.notes.append("%s: not detached (%s): the attached program is no longer ours" % (ifname, e))
            log.warning(self.notes[-1])

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Detach everything attached (unless keep_attached) and free the program."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    # -- AF_XDP side -----------------------------------------------------------------------
    @property
    def xsks_map_fd(self) -> int:
        return self._prog().maps.fds["xsks_map"]

    @property
    def prog_fd(self) -> int:
        return self._prog().prog_fd

    @property
    def prog_id(self) -> int:
        return self._prog().prog_id

    @property
    def maps(self) -> MosxdpMaps:
        return self._prog().maps

    def slot(self, ifname: str) -> int:
        try:
            return self.slots[ifname]
        except KeyError:
            raise XdpError("interface %r is not managed by this program (%s)"
                           % (ifname, ", ".join(self.ifaces))) from None

    def xsk_index(self, ifname: str, queue: int) -> int:
        """XSKMAP index of (interface, RX queue): slot * MX_MAX_QUEUES + queue."""
        if not 0 <= queue < MX_MAX_QUEUES:
            raise XdpError("RX queue %d of %r is beyond MX_MAX_QUEUES (%d)" % (queue, ifname, MX_MAX_QUEUES))
        return self.slot(ifname) * MX_MAX_QUEUES + queue

    def register_xsk(self, ifname: str, queue: int, sock_fd: int) -> int:
        """Put an AF_XDP socket (bound to ifname/queue) into the XSKMAP; returns the index."""
        idx = self.xsk_index(ifname, queue)
        self.maps.set_xsk(idx, sock_fd)
        return idx

    def unregister_xsk(self, ifname: str, queue: int) -> None:
        self.maps.clear_xsk(self.xsk_index(ifname, queue))

    def num_rx_queues(self, ifname: str) -> int:
        return rx_queue_count(ifname)

    def ifindex(self, ifname: str) -> int:
        return self.ifindexes[ifname]

    def peer(self, ifname: str) -> str | None:
        return self.peers.get(ifname)

    def observed_ring(self, worker: int = 0) -> tuple[int, int]:
        """(fd, bytes) of the observe-only ring buffer of ``worker`` (of a split run: the
        copies of the flows its hash gives that worker)."""
        if self.observe is None:
            raise XdpError("this program was not built observe-only")
        if not 0 <= worker < self.workers:
            raise XdpError("no observe ring for worker %d of %d" % (worker, self.workers))
        table = self._prog().bpf[b"observed%d" % worker if worker else b"observed"]
        return table.map_fd, table.max_entries if hasattr(table, "max_entries") else self.observe[1]

    # -- counters and verdicts ---------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        return self.maps.counters()

    def set_verdict(self, key: MxFlowKey, action: int | str, watch_any: int | None = None) -> None:
        self.maps.set_verdict(key, action, watch_any)

    def get_verdict(self, key: MxFlowKey) -> FlowVerdict | None:
        return self.maps.get_verdict(key)

    def pop_verdict(self, key: MxFlowKey) -> FlowVerdict | None:
        return self.maps.pop_verdict(key)

    def verdicts(self) -> Iterator[tuple[MxFlowKey, FlowVerdict]]:
        return self.maps.verdicts()

    def verdict_count(self) -> int:
        return self.maps.verdict_count()

    def _prog(self) -> LoadedProgram:
        if self.program is None or self.program.bpf is None:
            raise XdpError("XdpProgram is not set up (use it as a context manager)")
        return self.program
