"""AF_XDP sockets on one shared UMEM, with batched ring access and frame accounting.

One :class:`Umem` (a page-aligned anonymous mmap registered with the kernel) holds every
frame of an engine. Each monitored (interface, RX queue) gets one :class:`XskSocket`
created with ``xsk_socket__create_shared``: its own RX/TX rings and its own fill and
completion rings, all addressing the same UMEM, so a frame received on interface A can
be transmitted on interface B by moving its descriptor.

Rings are read and written in place through memoryviews of the kernel's mmapped rings
(producer/consumer words and descriptor arrays; io/xsk_rings.py), one peek/release per
batch: no ctypes call per frame. Ordering: a Python store to a ring word is a plain 32-bit store issued
after the descriptor stores before it; x86-64's memory model (TSO) makes that a
release, and a load an acquire. Other architectures would need explicit barriers, so
:class:`Umem` refuses to run elsewhere.

Frame accounting. Every frame is always in exactly one place:

* ``free``: in :attr:`Umem.free` (a list of frame addresses);
* ``app``: held by the engine (taken from RX or from ``free`` and not yet put anywhere);
* ``fill``: given to the kernel on a fill ring and not yet returned on that socket's RX
  ring (includes frames the kernel took off the fill ring and still holds);
* ``rx``: published by the kernel on an RX ring, not yet taken;
* ``tx``: put on a TX ring and not yet published on the completion ring (includes frames
  the kernel is still sending);
* ``completion``: published on a completion ring, not yet reaped.

:meth:`Umem.accounting` computes these from cumulative counters and the kernel's
producer indexes; their sum equals ``frame_count`` at all times (any frame lost or
duplicated by the bookkeeping breaks it). :meth:`Umem.audit` checks frame identities
(no address in two places) and is exact when the datapath is idle.

The XSKMAP entries that steer frames to the sockets (``xskmap_update``, from
:mod:`mosxdp.io.libbpf`) and the queue counts the sockets are bound by (``rx_queue_count``,
from :mod:`mosxdp.io.netdev`, the same answer the XDP program's XSKMAP layout uses)
complete this module's face.
"""

from __future__ import annotations

import array
import ctypes
import errno
import mmap
import os
import platform
import socket
import time

from . import libxdp as _x
from .libbpf import xskmap_delete, xskmap_update
from .netdev import rx_queue_count, tx_queue_count
from .uapi import XDP_MAX_TX_SKB_BUDGET, XDP_STATISTICS
from .xsk_rings import M32, Ring, copy_entries, produce, read_entries, write_entries

__all__ = [
    "Umem", "XskSocket", "AccountingError", "xskmap_update", "xskmap_delete",
    "rx_queue_count", "tx_queue_count",
]

NEED_WAKEUP = _x.XDP_RING_NEED_WAKEUP
MSG_DONTWAIT = socket.MSG_DONTWAIT
_KICK_RETRY = frozenset((errno.EBUSY, errno.ENOBUFS, errno.EAGAIN))
TX_BUDGET_DEFAULT = 32      # frames one copy-mode sendto sends unless raised


class AccountingError(AssertionError):
    """The frame accounting does not balance (a frame was lost or duplicated)."""


class XskSocket:
    """One AF_XDP socket bound to (ifname, queue) on a shared :class:`Umem`.

    Created through :meth:`Umem.socket`. Batch operations (all counted for accounting):
    :meth:`rx_take`, :meth:`tx_put`, :meth:`tx_forward_from`, :meth:`kick`,
    :meth:`fill_from`, :meth:`reap_into`.
    """

    def __init__(self, umem: "Umem", ifname: str, queue: int, *, rx_size: int, tx_size: int,
                 bind_flags: int, xdp_flags: int, inhibit_prog_load: bool):
        lib = _x.lib()
        self.umem = umem
        self.ifname = ifname
        self.queue = queue
        self._s_rx, self._s_tx = _x.XskRing(), _x.XskRing()
        self._s_fill, self._s_comp = _x.XskRing(), _x.XskRing()
        cfg = _x.XskSocketConfig()
        cfg.rx_size, cfg.tx_size = rx_size, tx_size
        cfg.libxdp_flags = _x.XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD if inhibit_prog_load else 0
        cfg.xdp_flags = xdp_flags
        cfg.bind_flags = bind_flags
        handle = ctypes.c_void_p()
        _x.check(lib.xsk_socket__create_shared(
            ctypes.byref(handle), ifname.encode(), queue, umem.handle,
            ctypes.byref(self._s_rx), ctypes.byref(self._s_tx),
            ctypes.byref(self._s_fill), ctypes.byref(self._s_comp), ctypes.byref(cfg)),
            f"AF_XDP socket on {ifname} queue {queue}")
        self.handle = handle
        self.fd = lib.xsk_socket__fd(handle)
        # A Python socket object only to send/recv wake-ups; detached (not closed) on close.
        self.sock = socket.socket(_x.AF_XDP, socket.SOCK_RAW, 0, fileno=self.fd)
        self.rx = Ring(self._s_rx, 2)
        self.tx = Ring(self._s_tx, 2)
        self.fill = Ring(self._s_fill, 1)
        self.comp = Ring(self._s_comp, 1)
        # Our own indexes (the kernel's side is read from the ring words).
        self.rx_c = self.rx.cons[0]
        self.tx_p = self.tx.prod[0]
        self.fill_p = self.fill.prod[0]
        self.comp_c = self.comp.cons[0]
        self.tx_budget = self._raise_tx_budget(tx_size)
        # need-wakeup is a property of the UMEM's first bind (shared sockets inherit it)
        self.need_wakeup = bool(umem.bind_flags & _x.XDP_USE_NEED_WAKEUP)
        # cumulative counters (accounting) and statistics
        self.fill_in = self.rx_out = self.tx_in = self.comp_out = 0
        self.kicks = self.kick_eagain = self.kick_busy = self.rx_wakeups = 0
        self.closed = False

    def _raise_tx_budget(self, tx_size: int) -> int:
        """Let one copy-mode sendto send a whole TX ring instead of the kernel's 32 frames
        (one syscall per batch instead of one per 32 frames), where the kernel allows it.
        Returns the budget in force."""
        try:
            self.sock.setsockopt(_x.SOL_XDP, XDP_MAX_TX_SKB_BUDGET, tx_size)
        except OSError:
            return TX_BUDGET_DEFAULT     # before Linux 6.17: ENOPROTOOPT
        return tx_size

    # ------------------------------------------------------------------ RX
    def rx_avail(self) -> int:
        return (self.rx.prod[0] - self.rx_c) & M32

    def rx_take(self, maxn: int) -> list | None:
        """Take up to maxn RX descriptors in one batch: returns a flat list
        ``[addr0, len0, addr1, len1, ...]`` (len words may carry options << 32; with no
        multi-buffer they are the plain length) and releases the slots. The frames are
        now the engine's (``app``). None when the ring is empty."""
        r = self.rx
        c = self.rx_c
        n = (r.prod[0] - c) & M32
        if not n:
            return None
        if n > maxn:
            n = maxn
        d = read_entries(r.q, c & r.mask, r.size, n, 2)
        c = (c + n) & M32
        self.rx_c = c
        r.cons[0] = c
        self.rx_out += n
        self.umem.app += n
        return d

    def wake_rx(self) -> None:
        """Wake the driver when the fill ring asks for it (need-wakeup; zero-copy drivers)."""
        if self.need_wakeup and self.fill.flags[0] & NEED_WAKEUP:
            self.rx_wakeups += 1
            try:
                self.sock.recv(0, MSG_DONTWAIT)
            except OSError:
                pass

    # ------------------------------------------------------------------ TX
    def tx_free(self) -> int:
        t = self.tx
        return (t.cons[0] + t.size - self.tx_p) & M32

    def tx_pending(self) -> int:
        """Descriptors on the TX ring that the kernel has not consumed yet."""
        return (self.tx_p - self.tx.cons[0]) & M32

    def tx_put(self, flat: list) -> int:
        """Put descriptors ``[addr, len, ...]`` (from the engine's frames) on the TX ring.
        Returns how many fitted; the caller keeps the rest (still ``app``)."""
        n = produce(self.tx, self.tx_p, flat, 2)
        self.tx_p = (self.tx_p + n) & M32
        self.tx_in += n
        self.umem.app -= n
        return n

    def tx_forward_from(self, src: "XskSocket", maxn: int) -> int:
        """Move up to maxn descriptors from src's RX ring straight onto this TX ring
        (one ring-to-ring copy of descriptors, no frame bytes touched)."""
        r, t = src.rx, self.tx
        n = (r.prod[0] - src.rx_c) & M32
        if not n:
            return 0
        free = (t.cons[0] + t.size - self.tx_p) & M32
        if n > free:
            n = free
        if n > maxn:
            n = maxn
        if not n:
            return 0
        copy_entries(r.q, src.rx_c & r.mask, r.size, t.q, self.tx_p & t.mask, t.size, n, 2)
        src.rx_c = c = (src.rx_c + n) & M32
        r.cons[0] = c
        self.tx_p = p = (self.tx_p + n) & M32
        t.prod[0] = p
        src.rx_out += n
        self.tx_in += n
        return n

    def kick(self) -> None:
        """Tell the kernel to send (sendto MSG_DONTWAIT) when the TX ring asks for it.
        Copy mode sends a bounded number of frames per call and answers EAGAIN while
        more remain: retried a bounded number of times; EBUSY/ENOBUFS: retried by the
        next call. (In copy mode EBUSY also means that the device dropped the frame it
        was given, which completes unsent; a poll() can send too and does not say so:
        such drops are counted by the device's tx_dropped, see mosxdp.engine.loss.)"""
        t = self.tx
        if self.need_wakeup and not (t.flags[0] & NEED_WAKEUP):
            return
        pending = (self.tx_p - t.cons[0]) & M32
        if not pending:
            return
        send = self.sock.send
        for _ in range(pending // self.tx_budget + 2):
            try:
                send(b"", MSG_DONTWAIT)
            except BlockingIOError:
                self.kick_eagain += 1
                if self.tx_p == t.cons[0]:
                    break
                continue
            except OSError as exc:
                if exc.errno in _KICK_RETRY:
                    self.kick_busy += 1
                    break
                if exc.errno in (errno.ENETDOWN, errno.ENXIO):
                    self.kick_busy += 1
                    break
                raise
            self.kicks += 1
            break

    # ------------------------------------------------------------------ fill / completion
    def fill_free(self) -> int:
        f = self.fill
        return (f.cons[0] + f.size - self.fill_p) & M32

    def fill_from(self, pool: list, maxn: int | None = None) -> int:
        """Move frames from the end of ``pool`` (a list of addresses) to the fill ring,
        as many as fit (or maxn)."""
        f = self.fill
        n = (f.cons[0] + f.size - self.fill_p) & M32
        if n > len(pool):
            n = len(pool)
        if maxn is not None and n > maxn:
            n = maxn
        if n <= 0:
            return 0
        chunk = pool[-n:]
        del pool[-n:]
        write_entries(f.q, self.fill_p & f.mask, f.size, memoryview(array.array("Q", chunk)), 1)
        self.fill_p = p = (self.fill_p + n) & M32
        f.prod[0] = p
        self.fill_in += n
        return n

    def fill_put(self, addrs: list) -> int:
        """Put frames held by the engine (``app``) on the fill ring; returns how many fitted."""
        n = produce(self.fill, self.fill_p, addrs, 1)
        self.fill_p = (self.fill_p + n) & M32
        self.fill_in += n
        self.umem.app -= n
        return n

    def reap_into(self, pool: list) -> int:
        """Move every completed TX frame to ``pool`` (one batch)."""
        c = self.comp
        cc = self.comp_c
        n = (c.prod[0] - cc) & M32
        if not n:
            return 0
        pool += read_entries(c.q, cc & c.mask, c.size, n, 1)
        self.comp_c = cc = (cc + n) & M32
        c.cons[0] = cc
        self.comp_out += n
        return n

    # ------------------------------------------------------------------ state
    def counts(self) -> dict:
        rxn = (self.rx.prod[0] - self.rx_c) & M32
        compn = (self.comp.prod[0] - self.comp_c) & M32
        return {
            "fill": self.fill_in - self.rx_out - rxn,
            "rx": rxn,
            "tx": self.tx_in - self.comp_out - compn,
            "completion": compn,
        }

    def stats(self) -> dict:
        return {
            "ifname": self.ifname, "queue": self.queue,
            "rx_frames": self.rx_out, "tx_frames": self.tx_in, "fill_frames": self.fill_in,
            "completions": self.comp_out, "kicks": self.kicks, "kick_eagain": self.kick_eagain,
            "kick_busy": self.kick_busy, "rx_wakeups": self.rx_wakeups,
            "tx_budget": self.tx_budget,
            **self.xdp_statistics(),
        }

    def xdp_statistics(self) -> dict:
        """The kernel's XDP_STATISTICS for this socket (drops at RX, invalid descriptors)."""
        try:
            raw = self.sock.getsockopt(_x.SOL_XDP, XDP_STATISTICS, 48)
        except OSError:
            return {}
        names = ("rx_dropped", "rx_invalid_descs", "tx_invalid_descs",
                 "rx_ring_full", "rx_fill_ring_empty_descs", "tx_ring_empty_descs")
        vals = array.array("Q", raw[:len(raw) - len(raw) % 8])
        return {f"kernel_{k}": v for k, v in zip(names, vals)}

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.sock.detach()
        for r in (self.rx, self.tx, self.fill, self.comp):
            r.release()
        _x.lib().xsk_socket__delete(self.handle)
        self.handle = None

    def __repr__(self) -> str:
        return f"<XskSocket {self.ifname}:{self.queue} fd={self.fd}>"


class Umem:
    """A UMEM: ``frame_count`` frames of ``frame_size`` bytes in a page-aligned mmap,
    registered with libxdp; the sockets created on it share it. A context manager:
    leaving it deletes every socket (reverse order), the UMEM, and unmaps the memory.

    ``buf`` is a writable memoryview of the whole area: ``buf[addr:addr + len]`` is a
    frame, without a copy. ``free`` is the list of free frame addresses.
    """

    def __init__(self, frame_count: int = 4096, frame_size: int = 4096, *,
                 fill_size: int = 2048, comp_size: int = 2048, headroom: int = 0,
                 bind_flags: int = _x.XDP_COPY | _x.XDP_USE_NEED_WAKEUP):
        if platform.machine() not in ("x86_64", "AMD64"):
            raise NotImplementedError(
                "mosxdp's ring access relies on x86-64 memory ordering (TSO)")
        if frame_size & (frame_size - 1) or not 2048 <= frame_size <= mmap.PAGESIZE:
            raise ValueError(f"frame_size must be a power of two in [2048, {mmap.PAGESIZE}]")
        for name, v in (("fill_size", fill_size), ("comp_size", comp_size)):
            if v <= 0 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        if frame_count <= 0:
            raise ValueError("frame_count must be positive")
        lib = _x.lib()
        self.frame_count = frame_count
        self.frame_size = frame_size
        self.frame_mask = ~(frame_size - 1)
        self.bind_flags = bind_flags
        self.size = size = frame_count * frame_size
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_ANONYMOUS", 0x20) | getattr(mmap, "MAP_POPULATE", 0)
        self._mem = mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._cbuf = (ctypes.c_char * size).from_buffer(self._mem)
        self.area = ctypes.addressof(self._cbuf)
        if self.area % mmap.PAGESIZE:
            raise AssertionError("UMEM area is not page-aligned")
        self._s_fill, self._s_comp = _x.XskRing(), _x.XskRing()
        cfg = _x.XskUmemConfig(fill_size=fill_size, comp_size=comp_size, frame_size=frame_size,
                               frame_headroom=headroom, flags=0)
        self.fill_size, self.comp_size = fill_size, comp_size
        handle = ctypes.c_void_p()
        try:
            _x.check(lib.xsk_umem__create(ctypes.byref(handle), ctypes.c_void_p(self.area), size,
                                          ctypes.byref(self._s_fill), ctypes.byref(self._s_comp),
                                          ctypes.byref(cfg)),
                     f"UMEM of {frame_count} x {frame_size} bytes")
        except BaseException:
            del self._cbuf
            self._mem.close()
            raise
        self.handle = handle
        self.buf = memoryview(self._mem)
        # lowest addresses are used first (pop from the end)
        self.free = list(range(size - frame_size, -1, -frame_size))
        self.app = 0
        self.sockets: list[XskSocket] = []
        self.closed = False

    # ------------------------------------------------------------------ sockets
    def socket(self, ifname: str, queue: int = 0, *, rx_size: int = 2048, tx_size: int = 2048,
               xdp_flags: int = 0, inhibit_prog_load: bool = True) -> XskSocket:
        """Create and bind an AF_XDP socket on (ifname, queue) sharing this UMEM, with its
        own fill and completion rings. The first socket binds with this UMEM's
        ``bind_flags`` (copy/zero-copy, need-wakeup); later ones inherit them.

        ``inhibit_prog_load=False`` lets libxdp attach its default XDP program (which
        redirects every frame of that queue to the socket): for tests without ours."""
        for v, name in ((rx_size, "rx_size"), (tx_size, "tx_size")):
            if v <= 0 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        s = XskSocket(self, ifname, queue, rx_size=rx_size, tx_size=tx_size,
                      bind_flags=self.bind_flags, xdp_flags=xdp_flags,
                      inhibit_prog_load=inhibit_prog_load)
        self.sockets.append(s)
        return s

    # ------------------------------------------------------------------ accounting
    def accounting(self) -> dict:
        """Where the frames are: fill, rx, app, tx, completion, free; ``total`` is their
        sum and must equal ``frames``."""
        fill = rx = tx = comp = 0
        for s in self.sockets:
            if s.closed:
                continue
            c = s.counts()
            fill += c["fill"]
            rx += c["rx"]
            tx += c["tx"]
            comp += c["completion"]
        out = {"fill": fill, "rx": rx, "app": self.app, "tx": tx, "completion": comp,
               "free": len(self.free)}
        out["total"] = sum(out.values())
        out["frames"] = self.frame_count
        return out

    def check_accounting(self) -> dict:
        acc = self.accounting()
        if acc["total"] != self.frame_count or min(acc[k] for k in
                                                   ("fill", "rx", "app", "tx", "completion")) < 0:
            raise AccountingError(f"UMEM frame accounting does not balance: {acc}")
        return acc

    def audit(self, app_frames=(), retries: int = 5) -> dict:
        """Check frame identities: every address on a ring (the kernel's unconsumed part
        of fill/TX, the unread part of RX/completion), in ``free`` or in ``app_frames``
        names a distinct frame, and the frames seen nowhere are exactly as many as the
        kernel holds (taken off a fill or TX ring, not yet returned) plus the engine's
        unlisted ``app`` frames.

        Exact when the datapath is idle (no frame arriving: quiesce first). Under
        traffic, the kernel publishes an RX descriptor a moment before it releases the
        fill slot, so a snapshot can see a frame twice: the audit is retried
        ``retries`` times before :class:`AccountingError` is raised."""
        for attempt in range(retries + 1):
            try:
                return self._audit_once(app_frames)
            except AccountingError:
                if attempt == retries:
                    raise
                time.sleep(0.002)
        raise AssertionError("unreachable")

    def _audit_once(self, app_frames) -> dict:
        fs, nframes = self.frame_size, self.frame_count
        seen = bytearray(nframes)
        dup, bad = [], []
        fill = tx = 0  # frames the kernel holds or has on a ring, per our counters
        visible = 0    # of those, the ones visible on a fill/TX ring

        def mark(addrs, where):
            for a in addrs:
                i = a // fs
                if not 0 <= i < nframes:
                    bad.append((where, a))
                elif seen[i]:
                    dup.append((where, a))
                else:
                    seen[i] = 1

        mark(self.free, "free")
        mark(app_frames, "app")
        for s in self.sockets:
            if s.closed:
                continue
            # One snapshot of each kernel index, the destination of a move before its
            # source (RX before fill, completion before TX): a frame in flight is then
            # unseen and counted as kernel-held, never counted twice.
            r, c, f, t = s.rx, s.comp, s.fill, s.tx
            rx_prod = r.prod[0]
            comp_prod = c.prod[0]
            fill_cons = f.cons[0]
            tx_cons = t.cons[0]
            rxn = (rx_prod - s.rx_c) & M32
            compn = (comp_prod - s.comp_c) & M32
            mark(read_entries(r.q, s.rx_c & r.mask, r.size, rxn, 2)[0::2], f"rx {s!r}")
            mark(read_entries(c.q, s.comp_c & c.mask, c.size, compn, 1), f"completion {s!r}")
            n = (s.fill_p - fill_cons) & M32
            visible += n
            mark(read_entries(f.q, fill_cons & f.mask, f.size, n, 1), f"fill {s!r}")
            n = (s.tx_p - tx_cons) & M32
            visible += n
            mark(read_entries(t.q, tx_cons & t.mask, t.size, n, 2)[0::2], f"tx {s!r}")
            fill += s.fill_in - s.rx_out - rxn
            tx += s.tx_in - s.comp_out - compn
        unseen = nframes - sum(seen)
        expected = fill + tx - visible + (self.app - len(app_frames))
        report = {"seen": nframes - unseen, "unseen": unseen, "unseen_expected": expected,
                  "duplicates": len(dup), "invalid": len(bad)}
        if dup or bad or unseen != expected:
            raise AccountingError(f"UMEM frame audit failed: {report}; "
                                  f"duplicates {dup[:5]}, invalid {bad[:5]}")
        return report

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        errs = []
        for s in reversed(self.sockets):
            try:
                s.close()
            except Exception as exc:  # keep unwinding
                errs.append(exc)
        ret = _x.lib().xsk_umem__delete(self.handle)
        self.handle = None
        self.buf.release()
        del self._cbuf
        try:
            self._mem.close()
        except BufferError:
            pass  # a frame view is still referenced: the mapping goes with its last user
        if ret < 0:
            errs.append(OSError(-ret, f"xsk_umem__delete: {os.strerror(-ret)}"))
        if errs:
            raise errs[0]

    def __enter__(self) -> "Umem":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
