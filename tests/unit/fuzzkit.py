"""Fuzzing plumbing shared by tests/unit/test_fuzz.py (hypothesis) and tests/unit/fuzz_atheris.py
(atheris, coverage-guided): frame builders, invariant checks, and one function per target that
runs one input and raises AssertionError when an invariant breaks.

No hypothesis, pytest or scapy here: the atheris script needs only mosxdp and atheris.

Targets (each function takes plain Python values, so any fuzzer can drive it):
  check_datapath(frames, **config)       frames through a monitored context
  run_reassembly_model(segments, policy, batch)
  run_tcp_steps(steps, config, batch, handshake, isn_seed)
  run_api_sequence(before, inside, after)
  check_config_file(path, content)       load_config on a file of ``content`` (TOML, mos.conf)
  check_run_args(argv)                   `mosxdp run` argument parsing, then the configuration
"""
import errno
import inspect
import socket
from collections import Counter, defaultdict

import mosxdp.api as api
from mosxdp import *  # noqa: F401,F403
from mosxdp.constants import TcpState
from mosxdp.core.frames import build_tcp_frame
from mosxdp.core.packet import PACKET_ERROR_COUNTERS
from mosxdp.engine import run_frames

MASK = 0xFFFFFFFF
MAC_C, MAC_S = b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02"
ADDR = {"c": bytes([10, 0, 0, 1]), "s": bytes([10, 0, 0, 2])}
V6 = {"c": bytes(15) + b"\x01", "s": bytes(15) + b"\x02"}
OTHER = {"c": "s", "s": "c"}
SYN, ACK, FIN, RST, PSH, URG = 0x02, 0x10, 0x01, 0x04, 0x08, 0x20


def fresh(**config):
    api.mtcp_destroy()
    api.mtcp_init(None, **config)


def byte_at(direction, seq):
    """The byte every segment from `direction` ("c" or "s") carries at sequence number seq:
    all copies of a byte agree, so any reassembled stream must be a slice of this."""
    return ((seq * 2654435761) >> 11 ^ (0x5A if direction == "s" else 0)) & 0xFF


def payload_at(direction, seq, length):
    return bytes(byte_at(direction, (seq + i) & MASK) for i in range(length))


def frame(frm, flags, seq, ack, payload=b"", window=65535, port=40000, options=b"",
          v6=False, urgent=0):
    addrs = V6 if v6 else ADDR
    sport, dport = (port, 80) if frm == "c" else (80, port)
    macs = (MAC_S, MAC_C) if frm == "c" else (MAC_C, MAC_S)
    return bytes(build_tcp_frame(*macs, addrs[frm], addrs[OTHER[frm]], sport, dport, seq & MASK,
                                 ack & MASK, flags, window, payload, options=options,
                                 urgent=urgent))


def handshake_frames(port=40000, isn_c=1000, isn_s=5000, v6=False):
    return [frame("c", SYN, isn_c, 0, port=port, v6=v6, options=b"\x02\x04\x05\xb4"),
            frame("s", SYN | ACK, isn_s, isn_c + 1, port=port, v6=v6, options=b"\x02\x04\x05\xb4"),
            frame("c", ACK, isn_c + 1, isn_s + 1, port=port, v6=v6)]


# ------------------------------------------------------------- the datapath on bad frames
def check_datapath(frames, **config):
    """Frames through a monitored context: never an exception, every frame forwarded
    unchanged, and the frame classes add up."""
    fresh(**config)
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    raw = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_RAW, 0)
    seen = []

    def record(mctx, s, side, ev, arg):
        seen.append(ev)
        if ev == MOS_ON_CONN_NEW_DATA:
            try:
                mtcp_peek(mctx, s, side, bytearray(4096))
            except PeekOverrunError:    # a mutated ISN: the stream jumped ahead
                pass
    for ev, hook in ((MOS_ON_PKT_IN, MOS_HK_RCV), (MOS_ON_CONN_END, MOS_HK_SND),
                     (MOS_ON_CONN_NEW_DATA, MOS_NULL), (MOS_ON_ERROR, MOS_NULL)):
        mtcp_register_callback(mctx, sock, ev, hook, record)
    mtcp_register_callback(mctx, raw, MOS_ON_PKT_IN, MOS_NULL, record)
    timed = [(1_000_000 + i * 1000, bytes(f)) for i, f in enumerate(frames)]
    out = run_frames(mctx, timed, batch_size=4)
    stack = mctx.stack
    c = stack.counters
    assert out == timed
    assert c["callback_errors"] == 0
    assert c["frames"] == c["tcp_segments"] + c["non_tcp"] + c["ip_fragments"] + c["malformed"]
    assert sum(stack.malformed.values()) == c["malformed"]
    assert set(stack.malformed) <= set(PACKET_ERROR_COUNTERS)
    assert c["flows_created"] == c["flows_ended"] and not stack.lru and not stack.flows
    return stack


def mutated_conversation(mutations, cuts, v6):
    """A complete connection whose frames get bytes overwritten ((frame, position, value))
    and tails cut (frame indexes)."""
    frames = [bytearray(f) for f in handshake_frames(v6=v6)]
    frames += [bytearray(frame("c", PSH | ACK, 1001, 5001, payload_at("c", 1001, 50), v6=v6)),
               bytearray(frame("s", PSH | ACK, 5001, 1051, payload_at("s", 5001, 70), v6=v6)),
               bytearray(frame("c", FIN | ACK, 1051, 5071, v6=v6)),
               bytearray(frame("s", FIN | ACK, 5071, 1052, v6=v6)),
               bytearray(frame("c", ACK, 1052, 5072, v6=v6))]
    for index, position, value in mutations:
        target = frames[index % len(frames)]
        target[14 + position % (len(target) - 14)] = value
    for index in cuts:
        target = frames[index % len(frames)]
        del target[len(target) // 2:]
    return frames


# ------------------------------------------------- reassembly against a model, end to end
def run_reassembly_model(segments, policy, batch):
    """Client segments at random offsets with per-copy content (copy v of byte k differs
    from copy w): at CONN_END the buffered stream from offset 0 and the out-of-order
    fragments equal a byte dictionary where the first (FIRST) or last (LAST) copy wins."""
    fresh(overlap_policy=policy)
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    got = {}

    def at_end(mctx, s, side, ev, arg):
        if side != MOS_SIDE_SVR:
            return
        buf = bytearray(2048)
        try:
            got["stream"] = bytes(buf[:mtcp_ppeek(mctx, s, side, buf, len(buf), 0)])
        except OSError as exc:
            assert exc.errno == errno.ENODATA
            got["stream"] = b""
        got["frags"] = [(f.offset, f.len) for f in
                        mtcp_getsockopt(mctx, s, SOL_MONSOCKET, MOS_FRAGINFO_SVRBUF)]
        got["frag_bytes"] = [bytes(buf[:mtcp_ppeek(mctx, s, side, buf, f[1], f[0])])
                             for f in got["frags"]]
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, at_end)
    model = {}
    frames = handshake_frames()
    for offset, length, version in segments:
        data = bytes((b + 37 * version) & 0xFF for b in payload_at("c", 1001 + offset, length))
        frames.append(frame("c", PSH | ACK, 1001 + offset, 5001, data))
        for i, byte in enumerate(data):
            if policy == "last" or offset + i not in model:
                model[offset + i] = byte
    run_frames(mctx, [(1_000_000 + i, f) for i, f in enumerate(frames)], batch_size=batch)
    prefix = bytearray()
    while len(prefix) in model:
        prefix.append(model[len(prefix)])
    runs = []
    for off in sorted(model):
        if off < len(prefix):
            continue
        if runs and runs[-1][0] + len(runs[-1][1]) == off:
            runs[-1][1].append(model[off])
        else:
            runs.append((off, bytearray([model[off]])))
    assert got["stream"] == bytes(prefix)
    # The fragments cover the in-order run too (from offset 0) when there is one.
    frags = dict(zip(got["frags"], got["frag_bytes"]))
    expected = {(off, len(data)): bytes(data) for off, data in runs}
    if prefix:
        expected[(0, len(prefix))] = bytes(prefix)
    assert frags == expected


# ------------------------------------------------------ the TCP state machine, both sides
# A step: (from "c"|"s", kind, seq (0: next, int: relative to next, ("abs", n)), payload
# length, ack choice, window, microseconds before it, 4-tuple 0|1, flags of kind "any").
KINDS = ["syn", "synack", "ack", "data", "data", "data", "fin", "findata", "rst", "rstack",
         "any", "syn_new_isn", "urg"]
ACK_CHOICES = ["peer", "peer", "random", "zero", "behind"]
WINDOWS = [65535, 65535, 0, 1, 100]
DELAYS = [1, 1, 1000, 6_000_000, 31_000_000]
CONFIG_CHOICES = {
    "overlap_policy": ["first", "last"],
    "rmem_size": [0, 64, 4096, 262144],
    "max_fragments": [1, 2, 1024],
    "max_concurrency": [1, 2, 100],
    "tcp_tw_interval": [0, 1],
    "midstream_pickup": [False, True],
    "reassembly_memcap": [0, 100, 5000, 1 << 30],
    "tcp_syn_timeout": [0, 5],
}
BATCHES = [1, 3, 64]


class Conversation:
    """Sequence numbers of two 4-tuples as the random steps move them."""

    def __init__(self, draw_isn):
        self.isn = {(p, d): draw_isn() for p in (0, 1) for d in "cs"}
        self.nxt = dict(self.isn)

    def build(self, step):
        frm, kind, seq_choice, length, ack_choice, window, _dt, port, any_flags = step
        key = (port, frm)
        if kind == "syn_new_isn":
            self.isn[key] = (self.isn[key] + 100003) & MASK
        if kind in ("syn", "synack", "syn_new_isn"):
            base = self.isn[key]
        else:
            base = self.nxt[key]
        seq = seq_choice[1] if isinstance(seq_choice, tuple) else (base + seq_choice) & MASK
        peer = self.nxt[(port, OTHER[frm])]
        ack = {"peer": peer, "random": (peer * 7919 + seq) & MASK, "zero": 0,
               "behind": (peer - 3000) & MASK}[ack_choice]
        flags = {"syn": SYN, "syn_new_isn": SYN, "synack": SYN | ACK, "ack": ACK,
                 "data": PSH | ACK, "fin": FIN | ACK, "findata": FIN | PSH | ACK, "rst": RST,
                 "rstack": RST | ACK, "any": any_flags, "urg": URG | ACK}[kind]
        if kind in ("syn", "synack", "ack", "fin", "rst", "rstack", "syn_new_isn"):
            length = min(length, 3)      # mostly none, sometimes a little (SYN with data...)
        payload = payload_at(frm, seq, length)
        options = b"\x02\x04\x05\xb4\x01\x03\x03\x07" if flags & SYN else b""
        end = (seq + length + bool(flags & SYN) + bool(flags & FIN)) & MASK
        if ((end - self.nxt[key]) & MASK) < (1 << 31) and not flags & RST:
            self.nxt[key] = end
        return frame(frm, flags, seq, ack, payload, window, 40000 + port, options,
                     urgent=3 if kind == "urg" else 0)


class StateRecorder:
    """Callbacks on every event at every hook; checks invariants as it goes."""

    def __init__(self, mctx, sock):
        self.errors = []
        self.ends = defaultdict(list)     # sock -> [(hook, side)]
        self.starts = Counter()
        self.read = defaultdict(int)      # (sock, side) -> bytes checked
        for ev in (MOS_ON_PKT_IN, MOS_ON_CONN_START, MOS_ON_REXMIT, MOS_ON_TCP_STATE_CHANGE,
                   MOS_ON_CONN_END):
            for hook in (MOS_HK_SND, MOS_HK_RCV):
                mtcp_register_callback(mctx, sock, ev, hook, self.on_event(hook))
        for ev in (MOS_ON_CONN_NEW_DATA, MOS_ON_ERROR):
            mtcp_register_callback(mctx, sock, ev, MOS_NULL, self.on_event(MOS_NULL))

    def on_event(self, hook):
        def cb(mctx, s, side, ev, arg):
            try:
                self.check(mctx, s, side, ev, hook)
            except AssertionError as exc:      # the stack would swallow it: keep it
                self.errors.append(exc)
        return cb

    def check(self, mctx, s, side, ev, hook):
        assert side in (MOS_SIDE_CLI, MOS_SIDE_SVR)
        assert len(self.ends[s]) < 4 or False, "an event after both CONN_ENDs"
        for opt in (MOS_TCP_STATE_CLI, MOS_TCP_STATE_SVR):
            assert isinstance(mtcp_getsockopt(mctx, s, SOL_MONSOCKET, opt), TcpState)
        if ev == MOS_ON_CONN_END:
            assert (hook, side) not in self.ends[s], "CONN_END twice"
            self.ends[s].append((hook, side))
        if ev == MOS_ON_CONN_START:
            self.starts[(s, hook, side)] += 1
        if ev in (MOS_ON_CONN_NEW_DATA, MOS_ON_CONN_END):
            self.check_stream(mctx, s, side)

    def check_stream(self, mctx, s, side):
        """What mtcp_peek returns is always the sender's bytes at those sequence numbers."""
        # The flow's client is whoever sent the first SYN (or was guessed mid-stream).
        client = "c" if mtcp_getpeername(mctx, s, MOS_SIDE_CLI)[0] == "10.0.0.1" else "s"
        sender = client if side == MOS_SIDE_SVR else OTHER[client]
        buf = bytearray(8192)
        while True:
            info = mtcp_getsockopt(mctx, s, SOL_MONSOCKET,
                                   MOS_INFO_SVRBUF if side == MOS_SIDE_SVR else MOS_INFO_CLIBUF)
            try:
                count = mtcp_peek(mctx, s, side, buf, len(buf))
            except PeekOverrunError:
                continue
            except OSError as exc:
                assert exc.errno in (errno.EINVAL, errno.ENOTCONN), exc
                return
            if not count:
                return
            start = info.tcpbi_last_byte_read
            assert bytes(buf[:count]) == payload_at(sender, start, count), \
                f"side {side}: {count} bytes at seq {start} are not what was sent"
            self.read[(s, side)] += count


def run_tcp_steps(steps, config, batch, handshake, isn_seed):
    """Random segments on two 4-tuples, from both ends, with random sequence and ack
    numbers, windows, gaps and limits. Invariants: no exception and no callback error;
    states are TcpState values; whatever mtcp_peek returns is the sender's bytes at those
    sequence numbers; every flow ends exactly once with CONN_END per side at each hook;
    at the end no flow, buffer or flow socket is left and the counters add up."""
    fresh(**config)
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    recorder = StateRecorder(mctx, sock)
    seeds = iter(range(isn_seed, isn_seed + 10))
    conv = Conversation(lambda: (next(seeds) * 2654435761) & MASK)
    ts = 1_000_000
    timed = []
    if handshake:
        for step in (("c", "syn", 0, 0, "peer", 65535, 1, 0, 0),
                     ("s", "synack", 0, 0, "peer", 65535, 1, 0, 0),
                     ("c", "ack", 0, 0, "peer", 65535, 1, 0, 0)):
            ts += 1
            timed.append((ts, conv.build(step)))
    for step in steps:
        ts += step[6]
        timed.append((ts, conv.build(step)))
    out = run_frames(mctx, timed, batch_size=batch)
    stack = mctx.stack
    c = stack.counters
    assert not recorder.errors, recorder.errors[0]
    assert c["callback_errors"] == 0
    assert out == timed and c["dropped"] == 0
    # Every flow ended exactly once, with CONN_END for each side at each hook.
    assert c["flows_created"] == c["flows_ended"]
    assert len(recorder.ends) == c["flows_created"]
    for ends in recorder.ends.values():
        assert sorted(ends) == sorted((h, s) for h in (MOS_HK_SND, MOS_HK_RCV) for s in (0, 1))
    assert all(count == 1 for count in recorder.starts.values())
    # Nothing is left: flows, half-open flows, buffers, sockets of flows.
    assert not stack.lru and not stack.flows and not stack.half_open
    assert stack.reassembly_mem == 0 and not stack.buffer_mem
    assert [s.kind for s in stack.sockets.values()] == ["listener"]
    assert c["frames"] == c["tcp_segments"] == len(timed)
    assert c["flows_evicted"] >= c["half_open_evicted"]
    if config["reassembly_memcap"]:
        assert stack.reassembly_mem_peak <= config["reassembly_memcap"]


# ------------------------------------------------------------------ random mtcp_* calls
API_CALLS = {name: getattr(api, name) for name in api.__all__
             if name.startswith("mtcp_") and name not in ("mtcp_init", "mtcp_app_join")}
PARAMS = {name: list(inspect.signature(fn).parameters) for name, fn in API_CALLS.items()}


def noop_callback(mctx, sock, side, event, arg):
    return None


def true_filter(mctx, sock, side, event, arg):
    return True


class Pools:
    """Arguments a C caller could pass, per parameter name (mostly plausible values, so
    calls get past the first checks), and a general pool of anything for the rest."""

    def __init__(self, mctx, dead, sock_ids, events):
        socks = sorted(sock_ids)
        self.general = [mctx, dead, None, 0, 1, 2, 3, -1, 7, 0x103, 1 << 31, 1 << 64, 0.5,
                        b"", b"abcd", bytearray(0), bytearray(64), "", "tcp", "nonsense ((",
                        MonitorFilter(), PktInfo(), MtcpConf(), noop_callback, object(),
                        [], (1, 2), float("nan")] + socks
        events = sorted(events)
        self.specific = {
            "mctx": [mctx] * 6 + [dead, None],
            "sock": socks * 3 + [None, -1, 1 << 40],
            "side": [0, 1, 2, -1, 5],
            "level": [SOL_MONSOCKET, SOL_MONSOCKET, SOL_SOCKET, 0],
            "optname": [MOS_TCP_STATE_CLI, MOS_TCP_STATE_SVR, MOS_FRAGINFO_CLIBUF,
                        MOS_FRAGINFO_SVRBUF, MOS_INFO_CLIBUF, MOS_INFO_SVRBUF, MOS_CLIBUF,
                        MOS_SVRBUF, MOS_CLIOVERLAP, MOS_SVROVERLAP, MOS_STOP_MON,
                        MOS_TIMESTAMP, MOSX_FLOW_STATS, SO_ERROR, 0x7777],
            "optval": [0, 1, 2, 16, 4096, -1, MOS_SIDE_BOTH, None, 1 << 40, "x"],
            "event": events, "parent_event": events, "child_event": events,
            "hook_point": [MOS_HK_SND, MOS_HK_RCV, MOS_NULL, 9],
            "cb": [noop_callback, noop_callback, None, 1],
            "filter": [true_filter, None, 1],
            "buf": [bytearray(0), bytearray(64), bytearray(4096), b"ro",
                    memoryview(bytearray(8)), None],
            "len": [0, 1, 8, 64, 1 << 20, -1, None], "datalen": [0, 1, 3, 64, -1, None],
            "off": [0, 1, 8, 100, -1, 1 << 40], "offset": [0, 1, 8, 100, -1, 1 << 40],
            "data": [b"", b"xx", bytearray(b"abc"), b"A" * 100, None, "str"],
            "option": [MOS_ETH_HDR | MOS_OVERWRITE, MOS_IP_HDR | MOS_OVERWRITE,
                       MOS_TCP_HDR | MOS_OVERWRITE, MOS_TCP_PAYLOAD | MOS_OVERWRITE,
                       MOS_TCP_PAYLOAD | MOS_CHOMP, MOS_TCP_PAYLOAD | MOS_INSERT,
                       MOS_OVERWRITE, MOS_CHOMP | MOS_INSERT, 0, -1],
            "pinfo": [PktInfo(), PktInfo(), None, 5],
            "ft": [MonitorFilter(), MonitorFilter(stream_syn_filter="tcp port 80"),
                   MonitorFilter(stream_orphan_filter="tcp"), MonitorFilter(raw_pkt_filter="ip"),
                   MonitorFilter(stream_syn_filter="((("), None, "tcp"],
            "conf": [MtcpConf(), None, 3],
            "cpu": [0, 0, 1, -1, 10 ** 6, None],
            "domain": [socket.AF_INET, socket.AF_INET6, socket.AF_UNSPEC, 99],
            "type": [MOS_SOCK_MONITOR_STREAM, MOS_SOCK_MONITOR_RAW,
                     MOS_SOCK_MONITOR_STREAM_ACTIVE, 99],
            "protocol": [0, 0, 6, -1],
            "uctx": [None, 1, {"k": "v"}],
            "id": [0, 1, 7, "t"],
            "timeout": [0, 0.001, 1, -1, (1, 0), None, "soon"],
        }

    def pick(self, param, choice):
        specific = self.specific.get(param)
        if specific is None or choice % 5 == 0:
            return self.general[(choice // 5) % len(self.general)]
        return specific[choice % len(specific)]


def call_randomly(name, picks, pools, failures, results=None):
    """Call mtcp_<name> with arguments chosen by `picks` (one int per parameter)."""
    fn = API_CALLS[name]
    args = [pools.pick(param, choice) for param, choice in zip(PARAMS[name], picks)]
    try:
        result = fn(*args)
    except OSError as exc:
        if exc.errno not in errno.errorcode:
            failures.append((name, args, exc))
    except Exception as exc:        # anything else is a bug of the API
        failures.append((name, args, exc))
    else:
        if results is not None:
            results.append((name, result))


def run_api_sequence(before, inside, after):
    """Calls before the run, inside callbacks (one per callback, in order) and after it:
    any outcome is fine except an exception other than OSError with a valid errno."""
    fresh()
    dead = mtcp_create_context(0)
    mtcp_destroy_context(dead)
    mctx = mtcp_create_context(0)
    listener = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    raw = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    sock_ids = {listener, raw}
    events = {int(MOS_ON_PKT_IN), int(MOS_ON_CONN_NEW_DATA), int(MOS_ON_CONN_END), 0x7777}
    failures, results = [], []
    queue = list(inside)

    def pools(ctx):
        for name, result in results:      # events made by earlier calls are fair game
            if name in ("mtcp_define_event", "mtcp_alloc_event") and isinstance(result, int):
                events.add(result)
        return Pools(ctx, dead, sock_ids, events)

    def in_callback(cb_mctx, sock, side, event, arg):
        sock_ids.add(sock)
        if queue:
            name, picks = queue.pop(0)
            try:
                call_randomly(name, picks, pools(cb_mctx), failures, results)
            except BaseException as exc:    # the stack would count and swallow it
                failures.append(("in callback", name, exc))
    for ev, hook in ((MOS_ON_PKT_IN, MOS_HK_SND), (MOS_ON_PKT_IN, MOS_HK_RCV),
                     (MOS_ON_CONN_NEW_DATA, MOS_NULL), (MOS_ON_CONN_END, MOS_HK_RCV),
                     (MOS_ON_CONN_START, MOS_HK_SND)):
        mtcp_register_callback(mctx, listener, ev, hook, in_callback)
    mtcp_register_callback(mctx, raw, MOS_ON_PKT_IN, MOS_NULL, in_callback)
    for name, picks in before:
        call_randomly(name, picks, pools(mctx), failures, results)
    frames = handshake_frames() + [
        frame("c", PSH | ACK, 1001, 5001, b"GET / HTTP/1.0\r\n\r\n"),
        frame("s", PSH | ACK, 5001, 1019, b"HTTP/1.0 200 OK\r\n\r\n"),
        frame("c", FIN | ACK, 1019, 5020), frame("s", FIN | ACK, 5020, 1020),
        frame("c", ACK, 1020, 5021)]
    try:
        if mctx.alive:
            run_frames(mctx, [(1_000_000 + i * 1000, f) for i, f in enumerate(frames)])
    except OSError as exc:          # e.g. the context was destroyed by a call inside
        assert exc.errno in errno.errorcode
    for name, picks in after:
        call_randomly(name, picks, pools(mctx), failures, results)
    assert not failures, failures[0]


# ------------------------------------------------------ the configuration and the command line
def _all_values_valid(config):
    """Every key of a loaded configuration passes its own check again, unchanged."""
    from mosxdp.config import SECTIONS
    for section, keys in SECTIONS.items():
        for key, check in keys.items():
            value = getattr(config, key)
            assert check(f"[{section}] {key}", value) == value, (key, value)


def _one_line(message):
    assert message and "\n" not in message and "Traceback" not in message, repr(message)


def check_config_file(path, content):
    """``content`` (bytes) written to ``path`` and loaded: a Config whose every value is
    valid, or one ConfigError line that starts with the file's name; nothing else."""
    import contextlib
    import io

    from mosxdp.config import ConfigError, load_config
    with open(path, "wb") as f:
        f.write(content)
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            config = load_config(str(path))
    except ConfigError as exc:
        _one_line(str(exc))
        assert str(exc).startswith(str(path)), str(exc)
        return "refused"
    finally:
        # A mos.conf's keys without a meaning here: one warning line, no more.
        lines = said.getvalue().splitlines()
        assert len(lines) <= 1 and all(x.startswith("mosxdp: warning: ") for x in lines), lines
    _all_values_valid(config)
    return "loaded"


# What check_run_args draws from: options of `mosxdp run` and of the built-in apps, and
# values that were trouble before (out of range, not finite, huge, odd text).
RUN_APPS = ("connlog", "eve", "flowdump", "midstat", "nat", "scrub", "simple_firewall",
            "zeeklog")
RUN_OPTIONS = (
    "--pcap", "--write", "--iface", "--peer", "--xdp-mode", "--bind", "--fail-closed",
    "--force", "--batch-size", "--on-callback-error", "--metrics-port", "--keep-privileges",
    "--stats", "--output", "--outdir", "--filter", "--no-midstream", "--bypass-after-bytes",
    "--interval", "--json", "--nat-ip", "--port-range", "--inside-net", "--pattern", "--mask",
    "--reset", "--side", "--hold-ms", "--rules", "--log", "--format", "--community-id-seed",
    "--no-progress", "--logdir", "--no-bypass", "--max-transactions", "--dns-port", "--bogus",
    "-h",
)
RUN_VALUES = (
    "0", "1", "-1", "64", "1000", "1024", "2048", "65535", "70000", "1e308", "1e-300", "nan",
    "inf", "-inf", "0x10", "9" * 40, "", " ", "eth0", "lo", "veth0", "x" * 16, "a/b", "..",
    "native", "zerocopy", "forward", "stop", "both", "10.0.0.1", "in.pcap", "-", "é", "\t",
)


def check_run_args(argv):
    """`mosxdp run ARGV` up to the configuration (nothing runs): the options' values are
    accepted into a valid configuration, or refused with one line (usage: exit 2)."""
    import contextlib
    import io

    from mosxdp.cli import EXIT_USAGE, CliError, parse_run
    from mosxdp.config import ConfigError, load_config
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            _, _, args, overrides = parse_run(list(argv))
    except CliError as exc:
        _one_line(str(exc))
        assert exc.code == EXIT_USAGE, (exc.code, str(exc))
        return "refused"
    except SystemExit as exc:
        assert exc.code == 0 and "-h" in argv, (exc.code, argv)     # --help, printed
        return "help"
    try:
        config = load_config(None, **overrides)
    except ConfigError as exc:
        _one_line(str(exc))
        return "refused"
    _all_values_valid(config)
    return "accepted"
