"""The live AF_XDP engine from a shell, with test processors (the netns tier's forwarding
tests; scripts/bench.py's inline figures)::

    python -m tests.netns.xsk_runner --iface A [--peer B] [--drop-syn-port N] [--no-app]
        [--processor NAME | MODULE:FACTORY] [--queues N] [--fail-closed] [--stats FILE]
        [--check-accounting] [--duration S]

Run from the repository root. Prints `xsk_runner: ready on IF:Q, ...` once the sockets
are in the XSKMAP. Exit 0 on SIGINT/SIGTERM/--duration, 1 on a processor exception, 2 on
a set-up error, 3 when the frame accounting does not balance; --stats writes the
engine's final statistics (accounting, audit, XDP counters, ``error``) as JSON.

Processors (``--processor NAME``): Passthrough (the default), DropSyn (--drop-syn-port,
and --crash-after: raise at that many frames, the exception path), RstInjector (port
8081 refused like a closed port, through the engine's outbox).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import struct
import sys

from mosxdp.engine.live import VERDICT_DROP, VERDICT_FORWARD, LiveEngine
from mosxdp.io import libxdp


# ------------------------------------------------------------------------------ processors
class Passthrough:
    """The trivial processor: forwards every frame, sends nothing."""

    def __init__(self):
        self.outbox: list = []
        self.counters: dict = {}

    def process(self, frame, ts_us: int, port: int) -> int:
        return VERDICT_FORWARD

    def end_batch(self) -> None:
        pass

    def advance_clock(self, ts_us: int) -> None:
        pass

    def finish(self) -> None:
        pass


class DropSyn(Passthrough):
    """Drops TCP SYNs (without ACK) to the given destination ports; forwards the rest.
    ``crash_after``: raise RuntimeError at that many frames."""

    def __init__(self, ports=(), crash_after: int | None = None):
        super().__init__()
        self.ports = frozenset(ports)
        self.crash_after = crash_after
        self.seen = 0
        self.counters = {"syn_dropped": 0}

    def process(self, frame, ts_us: int, port: int) -> int:
        self.seen += 1
        if self.crash_after is not None and self.seen >= self.crash_after:
            raise RuntimeError(f"DropSyn: crash_after={self.crash_after} reached (test hook)")
        n = len(frame)
        if n < 34:
            return VERDICT_FORWARD
        et = frame[12] << 8 | frame[13]
        off = 14
        while et in (0x8100, 0x88A8) and n >= off + 4:
            et = frame[off + 2] << 8 | frame[off + 3]
            off += 4
        if et == 0x0800:
            if frame[off + 9] != 6:
                return VERDICT_FORWARD
            off += (frame[off] & 0x0F) * 4
        elif et == 0x86DD:
            if n < off + 40 or frame[off + 6] != 6:
                return VERDICT_FORWARD
            off += 40
        else:
            return VERDICT_FORWARD
        if n < off + 14:
            return VERDICT_FORWARD
        if frame[off + 13] & 0x12 == 0x02 and (frame[off + 2] << 8 | frame[off + 3]) in self.ports:
            self.counters["syn_dropped"] += 1
            return VERDICT_DROP
        return VERDICT_FORWARD


def inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def rst_for_syn(frame) -> bytes:
    """The RST|ACK a closed IPv4 port answers a SYN with (untagged Ethernet)."""
    f = bytes(frame)
    ihl = (f[14] & 0x0F) * 4
    ip, tcp = f[14:14 + ihl], f[14 + ihl:]
    sport, dport, seq = struct.unpack_from("!HHI", tcp)
    src, dst = ip[12:16], ip[16:20]
    th = struct.pack("!HHIIBBHHH", dport, sport, 0, (seq + 1) & 0xFFFFFFFF, 5 << 4, 0x14, 0, 0, 0)
    pseudo = dst + src + struct.pack("!BBH", 0, 6, 20)
    th = th[:16] + struct.pack("!H", inet_checksum(pseudo + th)) + th[18:]
    ih = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, dst, src)
    ih = ih[:10] + struct.pack("!H", inet_checksum(ih)) + ih[12:]
    return f[6:12] + f[0:6] + b"\x08\x00" + ih + th


class RstInjector(DropSyn):
    """Port 8081 refused like a closed port: the SYN is dropped and a RST|ACK goes back
    to the client through the engine's outbox (egress = the port the SYN came in on)."""

    def __init__(self):
        super().__init__([8081])

    def process(self, frame, ts_us, port):
        v = super().process(frame, ts_us, port)
        if v == VERDICT_DROP and frame[12] == 0x08 and frame[13] == 0x00:
            self.outbox.append((rst_for_syn(frame), port))
        return v


PROCESSORS = {cls.__name__: cls for cls in (Passthrough, DropSyn, RstInjector)}


# ------------------------------------------------------------------------------ command line
def load_processor(spec: str):
    """A processor by NAME (PROCESSORS) or built by MODULE:FACTORY."""
    if spec in PROCESSORS:
        return PROCESSORS[spec]()
    mod, _, attr = spec.partition(":")
    if not attr:
        raise SystemExit(f"--processor wants one of {', '.join(PROCESSORS)} or MODULE:FACTORY, "
                         f"got {spec!r}")
    return getattr(importlib.import_module(mod), attr)()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.netns.xsk_runner",
                                 description="Run the live AF_XDP engine with a test processor.")
    ap.add_argument("--iface", action="append", required=True,
                    help="interface A (inline) / monitored interface (passive; repeatable)")
    ap.add_argument("--peer", help="interface B: inline mode")
    ap.add_argument("--drop-syn-port", type=int, action="append", default=[],
                    help="drop TCP SYNs to this port (repeatable)")
    ap.add_argument("--processor", help="NAME or MODULE:FACTORY building the frame processor")
    ap.add_argument("--no-app", action="store_true",
                    help="no processor: move descriptors without looking at frames")
    ap.add_argument("--queues", type=int, help="RX queues per interface (default: all)")
    ap.add_argument("--frames", type=int, help="UMEM frame count")
    ap.add_argument("--ring-size", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--zero-copy", action="store_true")
    ap.add_argument("--no-need-wakeup", action="store_true")
    ap.add_argument("--xdp-mode", choices=("native", "generic", "auto"), default="native")
    ap.add_argument("--fail-closed", action="store_true")
    ap.add_argument("--program", choices=("mosxdp", "libxdp"), default="mosxdp")
    ap.add_argument("--force", action="store_true", help="replace a foreign XDP program")
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    ap.add_argument("--stats", help="write JSON statistics (accounting, audit) here at exit")
    ap.add_argument("--check-accounting", action="store_true",
                    help="verify the frame accounting after every loop iteration")
    ap.add_argument("--crash-after", type=int, help="DropSyn raises at this many frames")
    args = ap.parse_args(argv)
    if args.peer and len(args.iface) != 1:
        ap.error("inline mode takes one --iface and one --peer")
    if args.no_app:
        proc = None
    elif args.processor:
        proc = load_processor(args.processor)
    elif args.drop_syn_port or args.crash_after is not None:
        proc = DropSyn(args.drop_syn_port, crash_after=args.crash_after)
    else:
        proc = Passthrough()
    iface = args.iface[0] if args.peer else args.iface
    eng = LiveEngine(iface, args.peer, proc, queues=args.queues, frame_count=args.frames,
                     ring_size=args.ring_size, batch_size=args.batch, zero_copy=args.zero_copy,
                     need_wakeup=not args.no_need_wakeup, xdp_mode=args.xdp_mode,
                     fail_closed=args.fail_closed, program=args.program,
                     check_accounting=args.check_accounting, force=args.force)
    # Until run() takes over SIGINT/SIGTERM (stop flag), they unwind through the
    # context managers like an exception: nothing stays attached.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        eng.__enter__()
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # set-up errors say the fix in one line; anything else is a bug: traceback
        if not isinstance(exc, (libxdp.LibxdpMissing, OSError, ValueError)) and \
                type(exc).__name__ != "XdpError":
            raise
        print(f"xsk_runner: {exc}", file=sys.stderr)
        return 2
    code = 0
    try:
        print(f"xsk_runner: ready on {', '.join(f'{s.ifname}:{s.queue}' for s in eng.sockets)}",
              flush=True)
        error = None
        try:
            eng.run(args.duration)
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            stats = eng.final_stats()
            stats["error"] = error
            if "accounting_error" in stats:
                code = 3
            if args.stats:
                tmp = args.stats + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(stats, f, indent=1, default=str)
                os.replace(tmp, args.stats)
    except KeyboardInterrupt:
        return 130
    finally:
        eng.close()
    print(f"xsk_runner: stopped: {stats.get('frames', 0)} frames", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
