"""flowdump against tcpflow on captures that missed frames, as a capture on a busy host
does (tcpdump's "packets dropped by kernel"): random conversations whose endpoints got
every byte but whose capture dropped data segments and ACKs, reordered neighbours and
repeated segments, with segments of 1 byte to 64 KiB (GRO/TSO) and several conversations
interleaved. tcpflow writes the bytes it saw at their offsets and zeros for the holes;
flowdump's files must be byte for byte the same."""
import random
import struct

import pytest

from integ_helpers import flowdump, tcpflow, tmpdir, write_pcap

SEEDS = range(12)


class Conversation:
    """One TCP connection's frames, as its endpoints send them (every byte delivered)."""

    def __init__(self, rng, index):
        self.rng = rng
        self.cli = (f"10.{20 + index // 200}.{index % 200}.1", 30000 + index)
        self.srv = (f"10.{20 + index // 200}.{index % 200}.2", 80)
        self.seq = {"c": rng.randrange(1 << 32), "s": rng.randrange(1 << 32)}
        self.frames = []

    def segment(self, who, flags, payload=b""):
        src, dst = (self.cli, self.srv) if who == "c" else (self.srv, self.cli)
        other = "s" if who == "c" else "c"
        options = b"\x01\x03\x03\x07" if flags & 0x02 else b""    # window scale 7
        tcp = struct.pack("!HHIIBBHHH", src[1], dst[1], self.seq[who] & 0xFFFFFFFF,
                          self.seq[other] & 0xFFFFFFFF if flags & 0x10 else 0,
                          (5 + len(options) // 4) << 4, flags, 65535, 0, 0) + options + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0,
                         bytes(map(int, src[0].split("."))), bytes(map(int, dst[0].split("."))))
        frame = bytes(6) + bytes([2, 0, 0, 0, 0, 1 if who == "c" else 2]) + b"\x08\x00" + ip + tcp
        self.frames.append((frame, bool(payload)))
        self.seq[who] += len(payload) + (1 if flags & 0x03 else 0)
        return frame

    def send(self, who, size):
        """``size`` bytes from ``who`` in segments of random sizes, the peer acknowledging
        every one to four of them; now and then the sender sends again a segment, or a range
        of the bytes not acknowledged yet cut otherwise (repacketized)."""
        peer = "s" if who == "c" else "c"
        rng, left, since_ack = self.rng, size, 0
        stream, acked, base = b"", 0, self.seq[who]
        while left:
            # At most 65481 bytes: a frame of 65535, the most tcpflow reads whole.
            n = min(left, rng.choice((1, rng.randrange(1, 1460), 1448, rng.randrange(1, 65482))))
            payload = rng.randbytes(n)
            frame = self.segment(who, 0x18, payload)
            stream += payload
            if rng.random() < 0.05:        # a retransmission the sender made: same bytes
                self.frames.append((frame, True))
            if rng.random() < 0.05 and len(stream) - acked > 1:
                start = rng.randrange(acked, len(stream) - 1)
                end = rng.randrange(start + 1, min(len(stream), start + 65481) + 1)
                nxt = self.seq[who]
                self.seq[who] = base + start
                self.segment(who, 0x18, stream[start:end])
                self.seq[who] = nxt
            left -= n
            since_ack += 1
            if since_ack >= rng.randrange(1, 5):
                self.segment(peer, 0x10)
                acked = len(stream)
                since_ack = 0
        self.segment(peer, 0x10)

    def make(self):
        rng = self.rng
        self.segment("c", 0x02)
        self.segment("s", 0x12)
        self.segment("c", 0x10)
        self.send("c", rng.choice((0, rng.randrange(1, 3000), rng.randrange(1, 200_000))))
        self.send("s", rng.choice((rng.randrange(1, 3000), rng.randrange(1, 3_000_000))))
        self.segment("c", 0x11)
        self.segment("s", 0x11)
        self.segment("c", 0x10)
        return self.frames


def lossy_capture(seed):
    """A capture of 8 interleaved conversations that dropped, reordered and repeated
    frames (never a SYN: tcpflow names a flow by its first frame)."""
    rng = random.Random(seed)
    loss = rng.choice((0.01, 0.05, 0.15))
    queues = [Conversation(rng, seed * 8 + i).make() for i in range(8)]
    captured = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        for _ in range(rng.randrange(1, 6)):
            if not queue:
                break
            frame, data = queue.pop(0)
            syn = frame[14 + 20 + 13] & 0x02
            if not syn and rng.random() < loss:
                continue                          # the capture missed it
            captured.append(frame)
            if data and rng.random() < 0.02:
                captured.append(frame)            # seen twice (-i any on two interfaces)
    for i in range(len(captured) - 1):
        if rng.random() < 0.03:                   # neighbours captured out of order
            captured[i], captured[i + 1] = captured[i + 1], captured[i]
    path = tmpdir("lossy") / f"lossy-{seed}.pcap"
    ts = 1_700_000_000_000_000
    write_pcap(path, [((ts + 20 * i) // 1_000_000, (ts + 20 * i) % 1_000_000, frame)
                      for i, frame in enumerate(captured)])
    return path


@pytest.mark.parametrize("seed", SEEDS)
def test_flowdump_equals_tcpflow_on_a_lossy_capture(seed):
    path = lossy_capture(seed)
    ours, theirs = flowdump(path).result(), tcpflow(path).result()
    assert sorted(ours) == sorted(theirs)
    for name in ours:
        assert len(ours[name]) == len(theirs[name]), name
        assert ours[name] == theirs[name], name
