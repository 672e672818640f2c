"""The test processors of tests/netns/xsk_runner.py (the netns tier's forwarding tests
rely on them): DropSyn's TCP SYN matcher, the RST|ACK that RstInjector sends."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "netns"))
from xsk_runner import DropSyn, inet_checksum, rst_for_syn  # noqa: E402

from mosxdp.engine.live import VERDICT_DROP, VERDICT_FORWARD  # noqa: E402


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


def test_dropsyn_crash_after_raises_at_that_frame():
    p = DropSyn(crash_after=3)
    p.process(memoryview(_tcp(80, 0x10)), 0, 0)
    p.process(memoryview(_tcp(80, 0x10)), 0, 0)
    with pytest.raises(RuntimeError, match="crash_after=3"):
        p.process(memoryview(_tcp(80, 0x10)), 0, 0)


def test_rst_for_syn_has_valid_checksums():
    syn = bytearray(_tcp(8081, 0x02))
    syn[0:6], syn[6:12] = b"\x02\x00\x00\x00\x00\x02", b"\x02\x00\x00\x00\x00\x01"
    rst = rst_for_syn(syn)
    assert rst[0:6] == syn[6:12] and len(rst) == 54
    assert inet_checksum(rst[14:34]) == 0
    assert inet_checksum(rst[26:34] + struct.pack("!BBH", 0, 6, 20) + rst[34:]) == 0
    assert rst[47] == 0x14 and struct.unpack_from("!I", rst, 42)[0] == 2  # ack = seq + 1
