"""The split of a run over workers (core/split.py, engine/workers.py): both directions of
every flow reach one worker, the parent's fast path for untagged IPv4 gives each frame the
bucket the core's parser does, flows spread over the workers by the hash (live) and the
offline split balances the workers' frames."""
import os
import random
import socket
import struct

from hypothesis import given, strategies as st
from scapy.all import ARP, IP, TCP, UDP, Dot1AD, Dot1Q, Ether, IPOption_RR, IPv6, \
    IPv6ExtHdrDestOpt, raw

from mosxdp.core.frames import build_tcp_frame
from mosxdp.core.packet import PacketError, parse_frame
from mosxdp.core.split import BUCKET_BITS, balance, flow_hash, frame_hash, frame_worker
from mosxdp.engine import split_feed
from mosxdp.io.pcap import PcapReader, PcapWriter
from pcapforms import rewritten

DATA = os.path.join(os.path.dirname(__file__), "..", "data")
MAC_A, MAC_B = b"\x02\0\0\0\0\x01", b"\x02\0\0\0\0\x02"
addresses = st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=16, max_size=16))
ports = st.integers(0, 65535)


@given(addresses, ports, addresses, ports)
def test_flow_hash_is_symmetric(a, pa, b, pb):
    if len(a) == len(b):
        assert flow_hash(a, pa, b, pb) == flow_hash(b, pb, a, pa)


def tcp(src, sport, dst, dport, vlan_ids=(), payload=b""):
    return build_tcp_frame(MAC_A, MAC_B, socket.inet_pton(
        socket.AF_INET6 if ":" in src else socket.AF_INET, src), socket.inet_pton(
        socket.AF_INET6 if ":" in dst else socket.AF_INET, dst), sport, dport, 1, 1, 0x10,
        1000, payload, vlan_ids=vlan_ids)


def test_both_directions_of_a_flow_reach_one_worker():
    for src, dst, vlans in (("10.0.0.1", "10.0.0.2", ()), ("fd00::1", "fd00::2", ()),
                            ("10.0.0.1", "10.0.0.2", (7,)), ("fd00::1", "fd00::2", (5, 9))):
        for sport in range(40000, 40064):
            for workers in (2, 3, 5):
                there = frame_worker(memoryview(tcp(src, sport, dst, 80, vlans)), workers)
                back = frame_worker(memoryview(tcp(dst, 80, src, sport, vlans)), workers)
                assert there == back
    # VLAN tags are not hashed: a 4-tuple on any VLAN goes to one worker.
    assert len({frame_worker(memoryview(tcp("10.0.0.1", 1234, "10.0.0.2", 80, vlans)), 7)
                for vlans in ((), (1,), (2, 3))}) == 1


def test_flows_spread_over_the_workers():
    for workers in (2, 3):
        counts = [0] * workers
        for sport in range(40000, 40064):
            counts[frame_worker(memoryview(tcp("10.77.0.1", sport, "10.77.0.2", 8080)),
                                workers)] += 1
        assert min(counts) >= 64 // workers // 2, counts
    # Copies of one flow on other addresses (bench's capture) spread too.
    counts = [0, 0]
    for k in range(64):
        counts[frame_worker(memoryview(tcp(f"10.0.{k}.101", 37786, f"10.0.{k}.102", 8080)),
                            2)] += 1
    assert min(counts) >= 16, counts


def odd_frames():
    """Frames off the fast path, and frames of it that the core finds malformed."""
    rng = random.Random(5)
    frames = [
        raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", options=[IPOption_RR()]) / TCP(sport=5, dport=6)),
        raw(Ether() / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=6, dport=5)),
        raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / TCP(sport=5, dport=6)),
        raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", frag=10) / (b"x" * 30)),
        raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=53, dport=5353)),
        raw(Ether() / Dot1AD(vlan=3) / Dot1Q(vlan=4) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP()),
        raw(Ether() / IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrDestOpt() / TCP(sport=7)),
        raw(Ether() / ARP()),
        raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP())[:40],      # cut TCP header
        raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", len=10) / TCP()),   # bad total length
        raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2", version=6) / TCP()),
        b"\x00" * 10,
    ]
    for _ in range(200):
        base = bytearray(frames[rng.randrange(3)])
        base[rng.randrange(len(base))] = rng.randrange(256)
        frames.append(bytes(base))
    return frames


def owners_by_fast_path(path, workers):
    scan = split_feed.Scan(path)
    try:
        plan = split_feed.plan_split(scan, workers)
    finally:
        scan.close()
    assert plan.error is None
    return list(plan.owners())


def test_fast_path_gives_each_frame_the_parsers_bucket(tmp_path):
    paths = [os.path.join(DATA, name) for name in sorted(os.listdir(DATA)) if name.endswith(".pcap")]
    crafted = str(tmp_path / "odd.pcap")
    with PcapWriter(crafted) as writer:
        for i, frame in enumerate(odd_frames()):
            writer.write(1_000_000 + i, frame)
    paths.append(crafted)
    for path in paths:
        with PcapReader(path) as reader:
            frames = [bytes(frame) for _, frame in reader]
        valid = [i for i, frame in enumerate(frames) if _parses(frame)]
        assert len(valid) > len(frames) // 2
        for workers in (2, 3):
            got = owners_by_fast_path(path, workers)
            # Every frame of a bucket (so of a flow, both ways) on one worker, and the
            # frames without IP on worker 0. A malformed frame is only counted: any worker
            # will do.
            by_bucket = {}
            for i in valid:
                value = frame_hash(memoryview(frames[i]))
                if value is None:
                    assert got[i] == 0, path
                else:
                    bucket = value >> (32 - BUCKET_BITS)
                    assert by_bucket.setdefault(bucket, got[i]) == got[i], path


def test_offline_split_balances_heavy_flows(tmp_path):
    """Flows of very different sizes whose hashes would put most frames on one worker
    (live's hash * N >> 32) are balanced by the bucket table: each new flow goes to the
    worker with the fewest frames so far."""
    rng = random.Random(7)
    flows = []
    for k in range(40):
        sport = 30000 + k
        size = rng.choice((2, 3, 5, 200, 400))
        flows.append((sport, size))
    path = str(tmp_path / "heavy.pcap")
    frames = []
    with PcapWriter(path) as writer:
        # The flows start one after the other and overlap, as in a busy capture.
        active = []
        pending = list(flows)
        ts = 1_000_000
        while pending or active:
            if pending and (not active or rng.random() < 0.3):
                active.append(list(pending.pop(0)))
            flow = rng.choice(active)
            frame = tcp("10.1.0.1", flow[0], "10.1.0.2", 80)
            writer.write(ts, frame)
            frames.append(frame)
            ts += 10
            flow[1] -= 1
            if not flow[1]:
                active.remove(flow)
    got = owners_by_fast_path(path, 2)
    loads = [0, 0]
    for worker in got:
        loads[worker] += 1
    assert max(loads) <= 0.55 * len(frames), loads
    static = [0, 0]
    for frame in frames:
        static[frame_worker(memoryview(frame), 2)] += 1
    assert loads != static     # the table, not the live hash, made the split


def test_balance_puts_the_largest_buckets_first_on_the_least_loaded_worker():
    counts = [0] * 8
    counts[3], counts[5], counts[6], counts[1] = 10, 7, 4, 4
    # 10 -> worker 0; 7 -> 1; 4 (bucket 1, the lower of the two 4s) -> 1; 4 -> 0.
    table = balance(counts, 2)
    assert [table[b] for b in (3, 5, 1, 6)] == [0, 1, 1, 0]
    assert balance([1, 1, 1, 1, 1], 3) == [0, 1, 2, 0, 1]


def _parses(frame):
    try:
        parse_frame(memoryview(frame))
    except PacketError:
        return False
    return True


def _readers_error(path):
    """What one worker's reader says of the capture at ``path`` (None: nothing)."""
    with PcapReader(str(path)) as reader:
        try:
            for _ in reader:
                pass
        except ValueError as exc:
            return str(exc)
    return None


def test_a_truncated_capture_gives_the_readers_error(tmp_path):
    path = tmp_path / "cut.pcap"
    with open(os.path.join(DATA, "reuse.pcap"), "rb") as f:
        data = f.read()
    path.write_bytes(data[:-7])
    scan = split_feed.Scan(str(path))
    try:
        plan = split_feed.plan_split(scan, 2)
    finally:
        scan.close()
    expected = _readers_error(path)
    assert str(plan.error) == expected and "truncated" in expected
    assert plan.frames == 36 == len(list(plan.owners()))


def test_a_corrupt_record_in_the_middle_ends_every_parts_plan_there(tmp_path):
    """A record header with an impossible length a third into the capture: the one-pass
    plan and the plan read in parts both end at the record before it, with the reader's
    error (the part after it began at a guess the first part never lands on)."""
    with open(os.path.join(DATA, "concurrent.pcap"), "rb") as f:
        data = bytearray(f.read())
    off = 24
    frames = 0
    while off < len(data) // 3:
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
        frames += 1
    struct.pack_into("<I", data, off + 8, 0x7FFFFFFF)
    path = tmp_path / "corrupt.pcap"
    path.write_bytes(bytes(data))
    expected = _readers_error(path)
    whole = _plan_of(str(path), 1)
    assert whole[3] == frames and whole[5] == expected, whole[3:]
    for parts in (2, 3, 5):
        assert _plan_of(str(path), parts) == whole, parts


def _live_config(**kw):
    from types import SimpleNamespace
    base = {"workers": 2, "iface": "lo", "peer": None, "queues": "all", "observe": False,
            "metrics_port": None, "pcap": None}
    return SimpleNamespace(**{**base, **kw})


def test_live_split_needs_a_queue_per_worker_or_an_observe_ring_each():
    """A live run split over N workers: each worker owns the RX queues q % N == w, so an
    interface with fewer queues than workers is refused with one line. Observe-only needs
    no queues (the flow hash picks a worker's ring), but there are at most 8 rings
    (engine/live_workers.py)."""
    import errno

    import pytest

    from mosxdp.engine.workers import check_input
    for kw, words in (({}, "lo has 1 RX queue to bind"),
                      ({"observe": True, "workers": 9},
                       "--workers 9: observe-only runs split over at most 8 workers")):
        with pytest.raises(OSError) as exc:
            check_input(_live_config(**kw))
        assert exc.value.errno == errno.EINVAL and words in exc.value.strerror, exc.value
        assert "\n" not in exc.value.strerror
    check_input(_live_config(workers=1))      # one worker: one queue is enough
    check_input(_live_config(observe=True))   # observe-only: 2 rings on a one-queue lo


def test_auto_workers_is_one_per_rx_queue_up_to_the_cpus(monkeypatch):
    """`workers = "auto"` (the default): live, one worker per RX queue bound on each
    interface (the fewest of A's and B's) up to the CPUs the process may use (observe-only
    also up to its 8 rings); 1 offline, or for an app that runs on one worker (ONE_WORKER,
    nat)."""
    from types import SimpleNamespace

    import mosxdp.io.netdev as netdev
    from mosxdp.apps import nat
    from mosxdp.engine.worker_count import auto_workers
    queues = {"a": 2, "b": 2, "wide": 8, "one": 1}
    monkeypatch.setattr(netdev, "rx_queue_count", lambda name: queues[name])
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    app = SimpleNamespace()
    assert auto_workers(_live_config(iface="a", peer="b"), app) == 2
    assert auto_workers(_live_config(iface="wide", peer=None), app) == 4     # the CPUs
    assert auto_workers(_live_config(iface="wide", peer="one"), app) == 1    # the fewest
    assert auto_workers(_live_config(iface="wide", queues=3), app) == 3      # queues = 3
    assert auto_workers(_live_config(iface="a", observe=True), app) == 2
    assert auto_workers(_live_config(iface="one", observe=True), app) == 1
    assert auto_workers(_live_config(iface="a", peer="b"), nat) == 1
    assert auto_workers(_live_config(iface=None, pcap="in.pcap"), app) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    queues["twelve"] = 12
    assert auto_workers(_live_config(iface="twelve"), app) == 12
    assert auto_workers(_live_config(iface="twelve", observe=True), app) == 8   # the rings
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3})
    assert auto_workers(_live_config(iface="a", peer="b"), app) == 1         # pinned to one CPU


def test_workers_value_is_auto_or_a_count(tmp_path):
    import pytest

    from mosxdp.config import AUTO_WORKERS, Config, ConfigError, load_config
    assert Config().workers == AUTO_WORKERS
    assert load_config(None, workers="auto").workers == AUTO_WORKERS
    assert load_config(None, workers=2).workers == 2
    conf = tmp_path / "w.toml"
    conf.write_text('[datapath]\nworkers = "many"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(str(conf))
    assert "workers" in str(exc.value) and '"auto"' in str(exc.value), exc.value


def test_c_loop_gives_the_workers_its_python_twin_gives(tmp_path, monkeypatch):
    """_splitscan.c and its twins in split_feed.py (the record loop and the block loop):
    the same worker for every frame the
    core parses (a malformed one may go anywhere), the same record lengths, and the same
    bucket counts of the frames they hash."""
    from mosxdp.engine import _splitscan
    crafted = str(tmp_path / "odd.pcap")
    with PcapWriter(crafted) as writer:
        for i, frame in enumerate(odd_frames()):
            writer.write(1_000_000 + i, frame)
    paths = [os.path.join(DATA, name) for name in sorted(os.listdir(DATA))
             if name.endswith(".pcap")] + [crafted]
    monkeypatch.setattr(split_feed, "CHUNK_FRAMES", 7)     # frames across chunks
    real_balance = split_feed.balance
    for path in paths:
        with PcapReader(path) as reader:
            frames = [bytes(frame) for _, frame in reader]
        valid = [i for i, frame in enumerate(frames) if _parses(frame)]
        plans = {}
        for name, loop, blocks in (("c", _splitscan.scan_records, _splitscan.scan_blocks),
                                   ("python", split_feed.scan_records, split_feed.scan_blocks)):
            monkeypatch.setattr(split_feed, "_scan_records", loop)
            monkeypatch.setattr(split_feed, "_scan_blocks", blocks)
            scan = split_feed.Scan(path)
            counts = []
            monkeypatch.setattr(split_feed, "balance",
                                lambda c, w: counts.append(list(c)) or real_balance(c, w))
            try:
                plans[name] = (split_feed.plan_split(scan, 3), counts[0])
            finally:
                scan.close()
        (c_plan, c_counts), (py_plan, py_counts) = plans["c"], plans["python"]
        c_owner, py_owner = list(c_plan.owners()), list(py_plan.owners())
        assert [c_owner[i] for i in valid] == [py_owner[i] for i in valid], path
        sizes = [16 + len(frame) for frame in frames]
        for plan in (c_plan, py_plan):
            assert [n for _, s, count in plan.chunks for n in s[:count]] == sizes, path
            assert plan.frames == len(frames) and plan.error is None, path
        assert sum(c_counts) == sum(py_counts) == len(frames), path
        if len(valid) == len(frames):
            assert c_counts == py_counts, path


def _plan_of(path, parts, kept=None):
    scan = split_feed.Scan(path)
    try:
        plan = split_feed.plan_split(scan, 3, parts=parts)
    finally:
        scan.close()
    if kept is not None:
        kept.append(plan.parts)
    return (plan.table, [b for buckets, _, n in plan.chunks for b in buckets[:n]],
            [z for _, sizes, n in plan.chunks for z in sizes[:n]], plan.frames, plan.last_ts,
            str(plan.error))


def _fake_records(count):
    """Bytes that read as ``count`` pcap records of 40-byte frames, one after the other."""
    return b"".join(struct.pack("<IIII", 1_700_000_000, 5, 40, 40) + bytes(40)
                    for _ in range(count))


def test_plan_read_in_parts_is_the_one_pass_plan(tmp_path, monkeypatch):
    """The plan's pass cut in parts read by threads gives the plan of one pass: for the
    shipped captures (parts beginning where resync() finds a header), a capture cut short,
    and one whose middle frame carries a chain of fake record headers where the second
    part's guess falls: that part is dropped (the first part does not land on it) and the
    pass goes on from where the first part ended."""
    monkeypatch.setattr(split_feed, "BLOCK_BYTES", 4096)      # records across blocks
    paths = [os.path.join(DATA, name) for name in sorted(os.listdir(DATA))
             if name.endswith(".pcap")]
    cut = tmp_path / "cut.pcap"
    with open(os.path.join(DATA, "reuse.pcap"), "rb") as f:
        cut.write_bytes(f.read()[:-7])
    paths.append(str(cut))
    for order, nanosecond in ((">", False), ("<", True), (">", True)):
        other = tmp_path / f"{'big' if order == '>' else 'little'}-{nanosecond}.pcap"
        paths.append(str(rewritten(os.path.join(DATA, "concurrent.pcap"), other, order,
                                    nanosecond)))
    for path in paths:
        whole = _plan_of(path, 1)
        for parts in (2, 3, 7):
            kept = []
            assert _plan_of(path, parts, kept) == whole, (path, parts)
            if os.path.getsize(path) > 1 << 20 and not path.endswith("cut.pcap"):
                assert kept == [parts], (path, kept)     # every part's guess was right
    fooled = str(tmp_path / "fooled.pcap")
    frame = raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=5, dport=6))
    with PcapWriter(fooled) as writer:
        writer.write(1_000_000, frame)
        writer.write(1_000_001, frame[:54] + _fake_records(60))
        writer.write(1_000_002, frame)
    calls = []
    scan_part = split_feed._scan_part
    monkeypatch.setattr(split_feed, "_scan_part",
                        lambda scan, off, stop_at: calls.append((off, stop_at))
                        or scan_part(scan, off, stop_at))
    whole = _plan_of(fooled, 1)
    assert whole[3] == 3
    calls.clear()
    assert _plan_of(fooled, 2) == whole
    assert len(calls) == 3 and calls[2][1] == -1, calls    # part 0, the fake part, the rest


def _block_walk(loop, path, block_bytes, chunk):
    """Every stop of the block loop ``loop`` over the capture at ``path``, from its first
    record, with a block of ``block_bytes`` and arrays of ``chunk`` frames; the caller's
    part of _scan_part (a frame off the fast path, a record larger than the block) done
    the simplest way."""
    counts = memoryview(bytearray(8 << BUCKET_BITS)).cast("q")
    size = os.path.getsize(path)
    stops = []
    with open(path, "rb", buffering=0) as f:
        little = f.read(4) == b"\xd4\xc3\xb2\xa1"
        block = bytearray(block_bytes)
        base, have, off = 24, 0, 24
        while True:
            buckets, sizes = bytearray(2 * chunk), bytearray(4 * chunk)
            off, n, base, have = loop(f.fileno(), block, base, have, off, -1, size, little,
                                      counts, 1, memoryview(buckets).cast("H"),
                                      memoryview(sizes).cast("I"), 0)
            stops.append((off, n, base, have, bytes(buckets[:2 * n]), bytes(sizes[:4 * n])))
            if off >= size or len(stops) > 10_000:
                break
            if n == chunk:
                continue                                # the arrays are full
            rel = off - base
            caplen = struct.unpack_from("<I" if little else ">I", block, rel + 8)[0] \
                if rel + 16 <= have else None
            if caplen is None and base + have >= size:
                break                                   # cut short
            if caplen is not None and rel + 16 + caplen > have:
                if base + have >= size:
                    break
                block = bytearray(16 + caplen)          # larger than the block
                base, have = off, 0
                continue
            off += 16 + caplen                          # off the fast path: skipped here
    return stops, list(counts)


def test_block_loop_in_c_stops_where_its_python_twin_does(tmp_path, monkeypatch):
    """_splitscan.scan_blocks and split_feed.scan_blocks (over the same record loop: the
    C one, whose fast path is the wider): the same stops (offset, frames, the block's place
    and length), buckets, record lengths and counts, with blocks smaller than some records,
    arrays that fill in the middle of a block, frames off the fast path and a capture cut
    short."""
    from mosxdp.engine import _splitscan
    monkeypatch.setattr(split_feed, "_scan_records", _splitscan.scan_records)
    odd = str(tmp_path / "odd.pcap")
    with PcapWriter(odd) as writer:
        for i, frame in enumerate(odd_frames()):
            writer.write(1_000_000 + i, frame)
    cut = tmp_path / "cut.pcap"
    with open(os.path.join(DATA, "reuse.pcap"), "rb") as f:
        cut.write_bytes(f.read()[:-7])
    big = str(rewritten(os.path.join(DATA, "concurrent.pcap"), tmp_path / "big.pcap", ">",
                        False))
    paths = [os.path.join(DATA, "concurrent.pcap"), os.path.join(DATA, "http_sizes.pcap"),
             odd, str(cut), big]
    for path in paths:
        for block_bytes, chunk in ((200, 7), (4096, 64), (1 << 20, 1 << 16)):
            c = _block_walk(_splitscan.scan_blocks, path, block_bytes, chunk)
            py = _block_walk(split_feed.scan_blocks, path, block_bytes, chunk)
            assert c == py, (path, block_bytes, chunk)
            assert len(c[0]) > 1 or block_bytes == 1 << 20, (path, block_bytes)


def test_the_early_pass_is_taken_for_its_file_only(tmp_path, monkeypatch):
    """begin_plan() reads the plan's pass in a child process (the command line begins it
    before the imports); plan_split() takes it for the same file, and the plan equals the
    one read then. A file replaced meanwhile, or one that is no classic pcap, is read again
    by the run (or named by it): the early pass changes no plan, raises nothing and leaves
    no process behind."""
    import threading
    path = os.path.join(DATA, "concurrent.pcap")

    def plan(target, workers=3, parts=None):
        scan = split_feed.Scan(target)
        try:
            got = split_feed.plan_split(scan, workers, parts=parts)
        finally:
            scan.close()
        return (got.table, list(got.owners()), got.frames, got.last_ts, str(got.error))

    readers = []
    read_parts = split_feed._read_parts
    monkeypatch.setattr(split_feed, "_read_parts",
                        lambda scan, parts: readers.append(threading.current_thread().name)
                        or read_parts(scan, parts))
    fresh = plan(path, parts=1)
    readers.clear()
    early = split_feed._scan_blocks is not split_feed.scan_blocks    # only with the C loops
    split_feed.begin_plan(path, 3)
    child = split_feed._early.pid if early else None
    assert plan(path) == fresh
    assert readers == ([] if early else ["MainThread"]), readers
    assert split_feed._early is None
    if early:
        assert not os.path.exists(f"/proc/{child}"), "the child was reaped"

    moved = tmp_path / "moved.pcap"
    with open(path, "rb") as f:
        moved.write_bytes(f.read())
    split_feed.begin_plan(str(moved), 3)
    if early:
        os.waitid(os.P_PID, split_feed._early.pid, os.WEXITED | os.WNOWAIT)   # the pass is read
    os.unlink(moved)                                  # replaced by another capture
    with open(os.path.join(DATA, "reuse.pcap"), "rb") as f:
        moved.write_bytes(f.read())
    readers.clear()
    assert plan(str(moved)) == plan(str(moved), parts=1)
    assert readers[0] == "MainThread", readers

    for name, data in (("missing.pcap", None), ("garbage.pcap", b"\x00" * 100),
                       ("short.pcap", b"\xd4\xc3")):
        target = tmp_path / name
        if data is not None:
            target.write_bytes(data)
        split_feed.begin_plan(str(target), 2)
        readers.clear()
        assert plan(path) == fresh                  # another file: read again
        assert readers == ["MainThread"], readers
    # No pass of what is not a regular file (a pipe's bytes are the run's), nor of a
    # capture the parent would read sooner in parts of its own.
    fifo = tmp_path / "pipe.pcap"
    os.mkfifo(fifo)
    split_feed.begin_plan(str(fifo), 2)
    assert split_feed._early is None
    monkeypatch.setattr(split_feed, "EARLY_MAX_BYTES", os.path.getsize(path) - 1)
    split_feed.begin_plan(path, 2)
    assert split_feed._early is None
    monkeypatch.undo()
    # A pass no run took: the next one ends it.
    split_feed.begin_plan(path, 2)
    left = split_feed._early.pid if early else None
    split_feed.begin_plan(path, 2)
    if early:
        assert not os.path.exists(f"/proc/{left}") and split_feed._early.pid != left
    assert plan(path) == fresh


def _relinked(frame, linktype):
    """An Ethernet frame as a capture of ``linktype`` holds it (None: one it cannot carry)."""
    ethertype = struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else None
    if ethertype is None:
        return None
    if linktype == 113:
        return struct.pack("!HHH8sH", 0, 1, 6, frame[6:12] + bytes(2), ethertype) + frame[14:]
    if linktype == 276:
        return struct.pack("!HHIHBB8s", ethertype, 0, 2, 1, 0, 6, frame[6:12] + bytes(2)) \
            + frame[14:]
    if ethertype not in (0x0800, 0x86DD):
        return None
    family = 2 if ethertype == 0x0800 else 24
    if linktype == 0:
        return struct.pack("=I", family) + frame[14:]
    if linktype == 108:
        return struct.pack(">I", family) + frame[14:]
    return frame[14:]                       # raw IP


def test_c_loops_read_other_link_layers_as_the_core_does(tmp_path, monkeypatch):
    """Captures of the link layers io/linklayer.py reads, hashed by _splitscan.c after their
    link header: every frame the core parses goes to the worker of its Ethernet original
    (the Python twins give each such frame to the core's parser)."""
    from mosxdp.engine import _splitscan
    monkeypatch.setattr(split_feed, "_scan_records", _splitscan.scan_records)
    with PcapReader(os.path.join(DATA, "concurrent.pcap")) as reader:
        records = [(ts, bytes(frame)) for ts, frame in reader]
    records += [(2_000_000 + i, frame) for i, frame in enumerate(odd_frames())]
    for linktype in (113, 276, 101, 0, 108):
        kept = [(ts, frame, _relinked(frame, linktype)) for ts, frame in records]
        kept = [(ts, frame, other) for ts, frame, other in kept if other is not None]
        plain, other = str(tmp_path / "plain.pcap"), str(tmp_path / f"{linktype}.pcap")
        with PcapWriter(plain) as writer:
            for ts, frame, _ in kept:
                writer.write(ts, frame)
        with PcapWriter(other) as writer:
            for ts, _, frame in kept:
                writer.write(ts, frame)
        with open(other, "r+b") as f:       # PcapWriter writes Ethernet's link type
            f.seek(20)
            f.write(struct.pack("<I", linktype))
        valid = [i for i, (_, frame, _) in enumerate(kept) if _parses(frame)]
        want, got = owners_by_fast_path(plain, 3), owners_by_fast_path(other, 3)
        assert [got[i] for i in valid] == [want[i] for i in valid], linktype
        assert len(valid) > 50


def test_a_split_run_called_from_python_leaves_the_collector_as_it_was(tmp_path):
    """cli.main with --workers 2 in this process: the conn.log of one worker, and the
    collector as it was (the parent freezes the set-up's objects only across the forks;
    the freeze before the exit is the `mosxdp` command's, not main's)."""
    import gc
    from mosxdp import cli
    pcap = os.path.join(DATA, "concurrent.pcap")
    logs = {}
    for workers in (1, 2):
        out = tmp_path / f"conn-{workers}.log"
        assert cli.main(["run", "connlog", "--pcap", pcap, "--output", str(out),
                         "--workers", str(workers)]) == 0
        logs[workers] = out.read_bytes()
    assert logs[1] and logs[1] == logs[2]
    assert gc.get_freeze_count() == 0 and gc.isenabled()
