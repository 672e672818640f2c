"""The live engine's frame moves (engine/live.py): where a UMEM frame goes besides the
descriptor moves of the batch loop: back to a fill ring or the free pool, the frames that
replace one (a payload changed size), the processor's outbox copied into free frames and
put on TX rings, and the rings' housekeeping (TX kicks, completions, fill rings).
"""
from __future__ import annotations

import time


class FrameMoves:
    """A mixin of LiveEngine: needs ``umem``, ``sockets``, ``lanes``, ``counters``,
    ``processor``, ``inline`` and ``check``."""

    def _housekeeping(self) -> None:
        """Kick TX, reap completions, refill fill rings (once per loop iteration)."""
        umem = self.umem
        free = umem.free
        for s in self.sockets:
            if s.tx_p != s.tx.cons[0]:
                s.kick()
            s.reap_into(free)
        reserve = 64  # kept free for outbox frames
        spare = len(free) - reserve
        # Each socket gets its share of the free frames, so a flooded interface
        # cannot take every frame and leave the other one's fill ring empty.
        share = -(-spare // len(self.sockets)) if spare > 0 else 0
        for s in self.sockets:
            if share and len(free) > reserve:
                s.fill_from(free, min(share, len(free) - reserve))
            s.wake_rx()
        if self.check:
            umem.check_accounting()

    def _put_replacement(self, a, frames, fwd) -> None:
        """The frames that leave instead of frame ``a`` (VERDICT_REPLACED) onto the forward
        list: the first into ``a``'s own UMEM frame when it fits (else ``a`` goes to the
        free pool), the others into free frames."""
        c = self.counters
        umem = self.umem
        buf = umem.buf
        fsize = umem.frame_size
        c["replaced"] += 1
        rest = frames
        first = frames[0]
        if len(first) <= (a & umem.frame_mask) + fsize - a:
            buf[a:a + len(first)] = first
            fwd.append(a)
            fwd.append(len(first))
            rest = frames[1:]
        else:
            umem.free.append(a & umem.frame_mask)
            umem.app -= 1
        free = umem.free
        for frame in rest:
            n = len(frame)
            if not free:
                for s in self.sockets:
                    s.reap_into(free)
            if n > fsize or not free:
                c["replaced_dropped"] += 1
                continue
            b = free.pop() & umem.frame_mask
            umem.app += 1
            buf[b:b + n] = frame
            fwd.append(b)
            fwd.append(n)

    def _refill(self, sock, addrs) -> None:
        """Frame addresses back to a socket's fill ring; what does not fit to the free pool."""
        put = sock.fill_put(addrs)
        if put < len(addrs):
            umem = self.umem
            umem.free += addrs[put:]
            umem.app -= len(addrs) - put

    def _send_extra(self, extra) -> None:
        """Outbox frames to their TX sockets ({socket: flat list}); what a full TX ring
        refuses is dropped (its frames to the free pool)."""
        c = self.counters
        umem = self.umem
        for tx_sock, flat in extra.items():
            put = tx_sock.tx_put(flat)
            c["outbox_sent"] += put
            if put < len(flat) >> 1:
                lost = flat[2 * put::2]
                c["outbox_dropped"] += len(lost)
                umem.free += lost
                umem.app -= len(lost)

    def _give_back(self, d, fwd, extra) -> None:
        """An exception in the processor: the batch's frames (and outbox frames already
        copied) go back to the free pool so that the accounting still balances."""
        held = set(d[0::2]) | set(fwd[0::2])
        for flat in (extra or {}).values():
            held.update(flat[0::2])
        self.umem.free += held
        self.umem.app -= len(held)

    def _take_outbox(self, ln, fwd, extra):
        """Copy the processor's outbox frames into free UMEM frames, queued before the
        frame being processed (lane ``ln``): on the forward list ``fwd`` when they leave the same way
        (``fwd`` None: everything goes to ``extra``, {TX socket: flat list})."""
        proc = self.processor
        umem = self.umem
        free = umem.free
        buf = umem.buf
        fmask = umem.frame_mask
        fsize = umem.frame_size
        box = proc.outbox
        for frame, eport in box:
            if not self.inline:
                eport = 0
            try:
                tx_sock = ln.egress[eport]
            except (IndexError, TypeError):
                self.counters["outbox_dropped"] += 1
                continue
            n = len(frame)
            if n > fsize or n == 0:
                self.counters["outbox_dropped"] += 1
                continue
            if not free:
                for s in self.sockets:
                    s.reap_into(free)
                if not free:
                    self.counters["outbox_dropped"] += 1
                    continue
            a = free.pop() & fmask
            umem.app += 1
            buf[a:a + n] = frame
            if fwd is not None and tx_sock is ln.fwd:
                fwd.append(a)
                fwd.append(n)
            else:
                if extra is None:
                    extra = {}
                extra.setdefault(tx_sock, []).extend((a, n))
        box.clear()
        return extra

    def _send_outbox_idle(self) -> None:
        """Outbox frames produced outside process() (timers, end_batch, finish)."""
        proc = self.processor
        if proc is None or not proc.outbox:
            return
        extra = self._take_outbox(self.lanes[0], None, None)
        if extra:
            self._send_extra(extra)

    def _flush_outbox_and_tx(self, timeout: float = 0.5) -> None:
        self._send_outbox_idle()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(s.tx_pending() for s in self.sockets):
            self._housekeeping()
            time.sleep(0.001)
        self._housekeeping()
