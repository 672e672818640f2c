"""Pieces of the live datapath that need no privileges: ring copies across wrap points,
the ctypes layouts of libxdp's structs, the test processor's TCP SYN matcher."""
from __future__ import annotations

import array
import ctypes
import struct

import pytest

from mosxdp.io import libxdp
from mosxdp.io.xsk import _copy_entries, _read_entries, _write_entries
from mosxdp.engine.live import VERDICT_DROP, VERDICT_FORWARD, DropSyn


def ring(size: int, words: int, fill: int = 0) -> memoryview:
    return memoryview(array.array("Q", [fill] * (size * words)))


@pytest.mark.parametrize("words", [1, 2])
@pytest.mark.parametrize("si,di,n", [(0, 0, 8), (5, 0, 8), (0, 6, 8), (6, 3, 7), (7, 7, 8), (3, 5, 1)])
def test_copy_entries_across_both_wrap_points(words, si, di, n):
    ssize, dsize = 8, 8
    src = ring(ssize, words)
    for slot in range(ssize):
        for w in range(words):
            src[slot * words + w] = 100 * slot + w + 1
    dst = ring(dsize, words)
    _copy_entries(src, si, ssize, dst, di, dsize, n, words)
    for k in range(n):
        s, d = (si + k) % ssize, (di + k) % dsize
        assert dst[d * words:(d + 1) * words].tolist() == src[s * words:(s + 1) * words].tolist()
    untouched = {(di + k) % dsize for k in range(n)} ^ set(range(dsize))
    for d in untouched:
        assert dst[d * words:(d + 1) * words].tolist() == [0] * words


@pytest.mark.parametrize("words", [1, 2])
@pytest.mark.parametrize("start,n", [(0, 8), (6, 5), (7, 1), (2, 3)])
def test_write_then_read_entries_wraps(words, start, n):
    size = 8
    r = ring(size, words)
    values = list(range(1, n * words + 1))
    _write_entries(r, start, size, memoryview(array.array("Q", values)), words)
    assert _read_entries(r, start, size, n, words) == values


def test_libxdp_struct_layouts_match_xsk_h():
    # libxdp 1.3.1 headers/xdp/xsk.h
    assert ctypes.sizeof(libxdp.XskRing) == 48
    assert libxdp.XskRing.producer.offset == 16 and libxdp.XskRing.flags.offset == 40
    assert ctypes.sizeof(libxdp.XskUmemConfig) == 20
    assert ctypes.sizeof(libxdp.XskSocketConfig) == 20
    assert libxdp.XskSocketConfig.libxdp_flags.offset == 8
    assert libxdp.XskSocketConfig.libbpf_flags.offset == 8
    assert libxdp.XskSocketConfig.bind_flags.offset == 16
    assert ctypes.sizeof(libxdp.XdpDesc) == 16


def _tcp(dport, flags, v6=False, vlan=False):
    l2 = bytes(12) + (b"\x81\x00\x00\x05" if vlan else b"")
    tcp = struct.pack("!HHIIBBHHH", 1234, dport, 1, 0, 5 << 4, flags, 1024, 0, 0)
    if v6:
        ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, bytes(16), bytes(16))
        return bytearray(l2 + b"\x86\xdd" + ip + tcp)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, bytes(4), bytes(4))
    return bytearray(l2 + b"\x08\x00" + ip + tcp)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("vlan", [False, True])
def test_dropsyn_drops_only_syns_to_its_ports(v6, vlan):
    p = DropSyn([8081])
    mv = memoryview
    assert p.process(mv(_tcp(8081, 0x02, v6, vlan)), 0, 0) == VERDICT_DROP
    assert p.process(mv(_tcp(8081, 0x12, v6, vlan)), 0, 0) == VERDICT_FORWARD  # SYN-ACK
    assert p.process(mv(_tcp(8081, 0x10, v6, vlan)), 0, 0) == VERDICT_FORWARD
    assert p.process(mv(_tcp(8080, 0x02, v6, vlan)), 0, 0) == VERDICT_FORWARD
    assert p.process(mv(bytearray(20)), 0, 0) == VERDICT_FORWARD  # runt: forwarded
    assert p.counters["syn_dropped"] == 1


def test_libxdp_check_names_the_call_and_the_fix():
    with pytest.raises(OSError) as ei:
        libxdp.check(-95, "AF_XDP socket on veth0 queue 0")
    assert "veth0" in str(ei.value) and "copy mode" in str(ei.value)
    assert libxdp.check(3, "x") == 3


# ------------------------------------------------------------------------------
# A processor for the netns tier's outbox test (imported by the monitor subprocess as
# tests.netns.test_live_units:RstInjector).
def _csum(data: bytes) -> int:
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
    th = th[:16] + struct.pack("!H", _csum(dst + src + struct.pack("!BBH", 0, 6, 20) + th)) + th[18:]
    ih = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, dst, src)
    ih = ih[:10] + struct.pack("!H", _csum(ih)) + ih[12:]
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


def test_rst_for_syn_has_valid_checksums():
    syn = bytearray(_tcp(8081, 0x02))
    syn[0:6], syn[6:12] = b"\x02\x00\x00\x00\x00\x02", b"\x02\x00\x00\x00\x00\x01"
    rst = rst_for_syn(syn)
    assert rst[0:6] == syn[6:12] and len(rst) == 54
    assert _csum(rst[14:34]) == 0
    assert _csum(rst[26:34] + struct.pack("!BBH", 0, 6, 20) + rst[34:]) == 0
    assert rst[47] == 0x14 and struct.unpack_from("!I", rst, 42)[0] == 2  # ack = seq + 1
