"""scrub: find a byte pattern in reassembled TCP streams; mask it, or reset the connection.

Written only against the public API.

Detection runs on the reassembled bytestream of each scanned direction (`--side
client`: what the client sends, `server`: what the server sends, `both`), so a
pattern split over segments, or carried by reordered or retransmitted segments, is
found once, at its stream offset. At MOS_ON_PKT_IN, MOS_HK_RCV (after the stack has
put the frame's payload in the receiver's buffer) the app mtcp_peek()s the new
in-order bytes and searches them together with the last len(pattern)-1 bytes it kept
from before, so matches across the previous boundary are found too.

Masking (default): each byte of a match is overwritten with `--mask` (repeated to the
pattern's length) in the frame that carries it: mtcp_setlastpkt MOS_OVERWRITE |
MOS_TCP_PAYLOAD | MOS_UPDATE_TCP_CHKSUM, same length, so sequence numbers do not
change. Edits are made at HK_RCV: the frame on the wire is masked, the monitor's own
buffers keep the original bytes, so stream offsets and later scans are unaffected.

Split patterns: when the current frame ends with the beginning of the pattern (the
stream's tail is a proper prefix of it), the frame could be the first part of a
match whose rest has not arrived. Such frames are held: the app keeps a copy
(mtcp_getlastpkt), drops the original (MOS_DROP) and sends the copy later with
mtcp_sendpkt, masked if the match completed: as soon as the sender's next in-order
data shows whether the pattern completes (the copies go out just before that frame,
in order), when the sender's FIN or RST arrives, after `--hold-ms` milliseconds
(default 50; a timer, on packet time offline), or when the flow ends (unless by a
reset). `--hold-ms 0` turns holding off.

What is guaranteed, per scanned direction:
- Every occurrence in the reassembled stream is found and logged once, also across
  any number of segment boundaries.
- Every byte of a match is masked in every frame carrying it that leaves the monitor
  after the match is known: the frame completing the match, frames held for it, and
  later retransmissions of any part (the app remembers its last 256 matches).
- With in-order delivery and the rest of the pattern arriving within --hold-ms of its
  first part, the whole match is masked on the wire.
- Not masked: parts carried by frames that left before the match was known. These are
  frames that arrived out of order (beyond a hole, forwarded at once) and frames whose
  hold time ran out. The log's `masked` field says how many of the match's bytes were
  masked in frames the app still controlled.

Reset (`--reset`): at the first match the frame completing it and the held frames are
dropped, so the receiver gets none of it, and two RST|ACK frames are sent with
mtcp_sendpkt: one to the receiver with the sequence number of the first byte it has
not received (what it expects next), and one to the sender with the sequence number
the sender acknowledged. The flow then gets a kernel DROP verdict (MOSX_DROP_FLOW);
frames of it that still reach the app are dropped.

Each hit is one JSON line (`--log SINK`: a file, default stdout, or a unix socket or a
Redis server, docs/outputs.md): ts, client, server, direction, offset (the match's
stream offset, from 0 at the first payload byte), length, action (mask or reset),
masked (bytes masked at the time of the hit).
"""
import argparse
import codecs
import collections
import errno
import json
import struct

from mosxdp import (MOS_CLIBUF, MOS_DROP, MOS_HK_RCV, MOS_ON_CONN_END, MOS_ON_PKT_IN,
                    MOS_OVERWRITE, MOS_SIDE_BOTH, MOS_SIDE_CLI, MOS_SIDE_SVR,
                    MOS_SVRBUF, MOS_TCP_PAYLOAD, MOS_UPDATE_TCP_CHKSUM, MOSX_DROP_FLOW,
                    MOSX_FLOW_STATS, MOSX_SINK_HELP, SOL_MONSOCKET, PeekOverrunError, PktInfo,
                    mosx_open_report, mosx_open_sink, mosx_sum_counts, mtcp_cb_get_ts, mtcp_get_uctx, mtcp_getlastpkt,
                    mtcp_getpeername, mtcp_getsockopt, mtcp_peek, mtcp_register_callback,
                    mtcp_sendpkt, mtcp_set_uctx, mtcp_setlastpkt, mtcp_setsockopt, mtcp_settimer)

from ._common import check_option, monitor_socket

DESCRIPTION = "mask a byte pattern in TCP streams (also across segments), or reset the connection"
TH_FIN, TH_RST, TH_ACK = 0x01, 0x04, 0x10
SEQ_MASK = 0xFFFFFFFF
REMEMBERED_MATCHES = 256
# The receiver side whose buffer holds a direction's bytes (mtcp_peek's side).
SIDES = {"client": (MOS_SIDE_SVR,), "server": (MOS_SIDE_CLI,), "both": (MOS_SIDE_SVR, MOS_SIDE_CLI)}
DIRECTION = {MOS_SIDE_SVR: "client->server", MOS_SIDE_CLI: "server->client"}


def add_arguments(parser):
    parser.add_argument("--pattern", required=True, metavar="BYTES",
                        help="the byte pattern; backslash escapes allowed (\\x00, \\r\\n, \\\\)")
    parser.add_argument("--mask", default="*", metavar="X",
                        help="mask bytes, repeated to the pattern's length (default '*')")
    parser.add_argument("--reset", action="store_true",
                        help="reset the connection instead of masking")
    parser.add_argument("--side", choices=("client", "server", "both"), default="both",
                        help="scan what the client sends, what the server sends, or both")
    parser.add_argument("--hold-ms", type=hold_milliseconds, default=50.0, metavar="MS",
                        help="longest time a frame ending with the start of the pattern is held "
                             f"(default 50; 0: never hold; at most {MAX_HOLD_MS})")
    parser.add_argument("--log", default="-", metavar="SINK",
                        help="where a JSON line per hit goes: " + MOSX_SINK_HELP)
    parser.add_argument("--filter", default=None, help="stream SYN filter (e.g. 'tcp port 80')")


# A frame held longer than a minute stalls its connection into retransmissions anyway.
MAX_HOLD_MS = 60000


def hold_milliseconds(text):
    """--hold-ms as argparse reads it (setup checks a value given otherwise the same)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not 0 <= value <= MAX_HOLD_MS:                      # also NaN and the infinities
        raise argparse.ArgumentTypeError(f"{text!r}: must be between 0 and {MAX_HOLD_MS} "
                                         "milliseconds")
    return value


def decode_bytes(text, what):
    try:
        value = codecs.escape_decode(text.encode("utf-8"))[0]
    except ValueError as exc:
        raise OSError(errno.EINVAL, f"{what} {text!r}: {exc}") from None
    if not value:
        raise OSError(errno.EINVAL, f"{what} must not be empty")
    return value


def find_all(data, pattern):
    """Start indexes of every occurrence of pattern in data, overlapping ones too."""
    found = []
    start = data.find(pattern)
    while start >= 0:
        found.append(start)
        start = data.find(pattern, start + 1)
    return found


def pending_prefix(data, pattern):
    """Length of the longest suffix of data that is a proper prefix of pattern (0: none)."""
    for length in range(min(len(pattern) - 1, len(data)), 0, -1):
        if data.endswith(pattern[:length]):
            return length
    return 0


class Held:
    """A copy of a frame taken off the wire until we know whether to mask it."""
    __slots__ = ("offset", "end", "eth", "ip", "tcp", "payload")

    def __init__(self, pinfo):
        self.offset = pinfo.offset
        self.end = pinfo.offset + pinfo.payloadlen
        self.eth = bytes(pinfo.ethh)
        self.ip = bytes(pinfo.iph)
        self.tcp = bytes(pinfo.tcph)
        self.payload = bytearray(pinfo.payload[:pinfo.payloadlen])

    def pktinfo(self):
        pinfo = PktInfo()
        pinfo.ethh = memoryview(self.eth)
        pinfo.iph = memoryview(self.ip)
        pinfo.tcph = memoryview(self.tcp)
        pinfo.payload = memoryview(self.payload)
        pinfo.payloadlen = len(self.payload)
        pinfo.offset = self.offset
        return pinfo


class Direction:
    """Scan state of one direction (keyed by the receiving side)."""
    __slots__ = ("scanned", "tail", "matches", "held", "pending")

    def __init__(self):
        self.scanned = 0             # stream offset up to which bytes were searched
        self.tail = b""              # the last len(pattern)-1 bytes before `scanned`
        self.matches = collections.deque(maxlen=REMEMBERED_MATCHES)   # (start, end)
        self.held = []               # Held frames, in stream order
        self.pending = None          # offset where a possible partial match starts


class FlowState:
    __slots__ = ("dirs", "reset", "timer", "client", "server")

    def __init__(self, sides, client, server):
        self.dirs = {side: Direction() for side in sides}
        self.reset = False
        self.timer = False
        self.client = client
        self.server = server


def _endpoint(addr, port):
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class Scrub:
    def __init__(self, pattern, mask, reset, sides, hold_ms, log, report):
        self.pattern = pattern
        self.report = report        # the summary line (stderr; summed over workers)
        self.mask = bytes(mask[i % len(mask)] for i in range(len(pattern)))
        self.reset_mode = reset
        self.sides = sides
        self.hold_s = hold_ms / 1000.0
        self.log = log
        self.buf = bytearray(1 << 16)
        self.pinfo = PktInfo()
        self.flows = {}              # sock -> FlowState (also while no uctx is set)
        self.counters = collections.Counter(hits=0, masked_frames=0, masked_bytes=0,
                                            held_frames=0, released_frames=0, resets=0,
                                            lost_bytes=0)

    # ------------------------------------------------------------ per flow
    def _state(self, mctx, sock):
        state = mtcp_get_uctx(mctx, sock)
        if state is None:
            cli, svr = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
            state = FlowState(self.sides, _endpoint(*cli), _endpoint(*svr))
            mtcp_set_uctx(mctx, sock, state)
            self.flows[sock] = state
        return state

    def _read_new(self, mctx, sock, side, d):
        """Search the bytes that became in-order since the last call; new matches."""
        pattern = self.pattern
        keep = len(pattern) - 1
        found = []
        view = memoryview(self.buf)
        while True:
            try:
                count = mtcp_peek(mctx, sock, side, self.buf, len(self.buf))
            except PeekOverrunError as exc:
                # Bytes overwritten before we read them: start over after the gap.
                self.counters["lost_bytes"] += exc.lost
                d.scanned += exc.lost
                d.tail = b""
                continue
            if count == 0:
                break
            data = d.tail + bytes(view[:count])
            base = d.scanned - len(d.tail)
            for index in find_all(data, pattern):
                found.append((base + index, base + index + len(pattern)))
            d.scanned += count
            d.tail = data[len(data) - keep:] if keep else b""
        if found:
            d.matches.extend(found)
        length = pending_prefix(d.tail, pattern)
        d.pending = d.scanned - length if length else None
        return found

    # ------------------------------------------------------------- masking
    def _overlaps(self, d, start, end):
        """(offset in the frame, mask bytes) for every match byte in [start, end)."""
        edits = []
        for m_start, m_end in d.matches:
            lo, hi = max(start, m_start), min(end, m_end)
            if lo < hi:
                edits.append((lo - start, self.mask[lo - m_start:hi - m_start]))
        return edits

    def _mask_current(self, mctx, sock, side, d, offset, length):
        edits = self._overlaps(d, offset, offset + length)
        for at, data in edits:
            mtcp_setlastpkt(mctx, sock, side, at, data, len(data),
                            MOS_OVERWRITE | MOS_TCP_PAYLOAD | MOS_UPDATE_TCP_CHKSUM)
            self.counters["masked_bytes"] += len(data)
        if edits:
            self.counters["masked_frames"] += 1
        return sum(len(data) for _, data in edits)

    def _mask_held(self, d):
        for held in d.held:
            changed = 0
            for at, data in self._overlaps(d, held.offset, held.end):
                if held.payload[at:at + len(data)] != data:
                    held.payload[at:at + len(data)] = data
                    changed += len(data)
            if changed:
                self.counters["masked_bytes"] += changed
                self.counters["masked_frames"] += 1

    def _release(self, mctx, sock, d, upto=None):
        """Send held frames (in order) that end at or before `upto` (None: all)."""
        while d.held and (upto is None or d.held[0].end <= upto):
            held = d.held.pop(0)
            mtcp_sendpkt(mctx, sock, held.pktinfo())
            self.counters["released_frames"] += 1

    def _hit_log(self, mctx, state, side, match, action, masked):
        self.counters["hits"] += 1
        if self.log is None:
            return
        self.log.write(json.dumps({
            "ts": mtcp_cb_get_ts(mctx) / 1e6, "client": state.client, "server": state.server,
            "direction": DIRECTION[side], "offset": match[0], "length": match[1] - match[0],
            "action": action, "masked": masked}) + "\n")
        self.log.flush()     # live: a hit is in the log when it happens, not at exit

    def _masked_in(self, d, match, start, end):
        """Bytes of `match` inside [start, end) or inside held frames."""
        count = max(0, min(end, match[1]) - max(start, match[0]))
        for held in d.held:
            count += max(0, min(held.end, match[1]) - max(held.offset, match[0]))
        return count

    # ------------------------------------------------------------ callbacks
    def on_packet(self, mctx, sock, side, event, arg):
        """PKT_IN at HK_RCV: side is the receiver of the frame."""
        state = self._state(mctx, sock)
        if state.reset:
            mtcp_setlastpkt(mctx, sock, side, 0, None, 0, MOS_DROP)
            return
        d = state.dirs.get(side)
        if d is None:
            return
        pinfo = self.pinfo
        mtcp_getlastpkt(mctx, sock, side, pinfo)
        flags = pinfo.tcph[13] if len(pinfo.tcph) > 13 else 0
        offset, length = pinfo.offset, pinfo.payloadlen
        end = offset + length
        before = d.scanned
        found = self._read_new(mctx, sock, side, d) if length else []
        if found and self.reset_mode:
            self._reset(mctx, sock, side, state, d, pinfo, before, found)
            return
        for match in found:
            self._hit_log(mctx, state, side, match, "mask", self._masked_in(d, match, offset, end))
        if length:
            self._mask_current(mctx, sock, side, d, offset, length)
            if d.held:
                self._mask_held(d)
        if flags & (TH_FIN | TH_RST):
            self._release(mctx, sock, d)       # the stream ends: nothing can complete
            return
        if not self.hold_s or not length:
            return
        if end <= before:
            # A retransmission of bytes already scanned: held copies carry them.
            if d.held and end > d.held[0].offset:
                mtcp_setlastpkt(mctx, sock, side, 0, None, 0, MOS_DROP)
            return
        if offset > before:
            return      # beyond a hole: not in order yet, forwarded as it is
        # In-order data: release what no partial match needs, hold this frame if needed.
        pending = d.pending
        self._release(mctx, sock, d, pending)
        if pending is not None and end > pending and end == d.scanned:
            mtcp_getlastpkt(mctx, sock, side, pinfo)     # the copy, with its masks
            d.held.append(Held(pinfo))
            mtcp_setlastpkt(mctx, sock, side, 0, None, 0, MOS_DROP)
            self.counters["held_frames"] += 1
            if not state.timer:
                state.timer = True
                mtcp_settimer(mctx, sock, self.hold_s, self.on_hold_timer)

    def on_hold_timer(self, mctx, sock, side, event, arg):
        state = self.flows.get(sock)
        if state is None:
            return
        state.timer = False
        for d in state.dirs.values():
            self._release(mctx, sock, d)

    def _reset(self, mctx, sock, side, state, d, pinfo, before, found):
        for match in found:
            self._hit_log(mctx, state, side, match, "reset", 0)
        self.counters["resets"] += 1
        state.reset = True
        # The receiver has every byte before the first withheld one.
        withheld = d.held[0].offset if d.held else before
        for other in state.dirs.values():
            other.held.clear()
        base = (pinfo.seq - pinfo.offset) & SEQ_MASK         # sequence number of offset 0
        eth, ip, tcp = bytes(pinfo.ethh), bytes(pinfo.iph), bytes(pinfo.tcph)
        sport, dport = struct.unpack_from("!HH", tcp)
        to_receiver = _rst(eth, ip, sport, dport, (base + withheld) & SEQ_MASK, pinfo.ack_seq,
                           swap=False)
        to_sender = _rst(eth, ip, dport, sport, pinfo.ack_seq,
                         (pinfo.seq + pinfo.payloadlen) & SEQ_MASK, swap=True)
        mtcp_setlastpkt(mctx, sock, side, 0, None, 0, MOS_DROP)
        mtcp_sendpkt(mctx, sock, to_receiver)
        if tcp[13] & TH_ACK:
            mtcp_sendpkt(mctx, sock, to_sender)
        mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_DROP_FLOW, 1)

    def on_end(self, mctx, sock, side, event, arg):
        state = self.flows.pop(sock, None)
        if state is None:
            return
        reason = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOSX_FLOW_STATS).end_reason
        for d in state.dirs.values():
            if reason == "rst" or state.reset:
                d.held.clear()
            else:
                self._release(mctx, sock, d)

    def close(self):
        c = self.counters
        self.report.write(f"scrub: {c['hits']} hits, {c['masked_bytes']} bytes masked in "
                          f"{c['masked_frames']} frames, {c['held_frames']} frames held "
                          f"({c['released_frames']} sent on), {c['resets']} connections "
                          "reset\n")
        self.report.flush()
        if self.log is not None:
            self.log.close()


def _rst(eth, ip, sport, dport, seq, ack, swap):
    """A PktInfo for an RST|ACK with the given ports and numbers."""
    eth, ip = bytearray(eth), bytearray(ip)
    if swap:
        eth[0:6], eth[6:12] = eth[6:12], eth[0:6]
        if ip[0] >> 4 == 4:
            ip[12:16], ip[16:20] = ip[16:20], ip[12:16]
        else:
            ip[8:24], ip[24:40] = ip[24:40], ip[8:24]
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, TH_RST | TH_ACK, 0, 0, 0)
    pinfo = PktInfo()
    pinfo.ethh, pinfo.iph, pinfo.tcph = memoryview(eth), memoryview(ip), memoryview(tcp)
    pinfo.payload = memoryview(b"")
    pinfo.payloadlen = 0
    return pinfo


def setup(mctx, args):
    pattern = decode_bytes(args.pattern, "--pattern")
    mask = decode_bytes(args.mask, "--mask")
    check_option("--hold-ms", hold_milliseconds, args.hold_ms)
    sock = monitor_socket(mctx, args.filter)
    log = None
    if args.log:
        log = mosx_open_sink(mctx, args.log, "--log")
    sides = SIDES[args.side]
    app = Scrub(pattern, mask, args.reset, sides, args.hold_ms, log,
                mosx_open_report(mctx, combine=mosx_sum_counts))
    # Buffers only for the directions we scan (MOS_SVRBUF holds what the client sends).
    if MOS_SIDE_SVR not in sides:
        mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVRBUF, 0)
    if MOS_SIDE_CLI not in sides:
        mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_CLIBUF, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_RCV, app.on_packet)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, app.on_end)
    return app


def teardown(app):
    app.close()
