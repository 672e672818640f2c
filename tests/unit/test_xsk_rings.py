"""The AF_XDP rings and libxdp binding without privileges: ring copies across wrap points,
the ctypes layouts of libxdp's structs, libxdp's error messages."""
from __future__ import annotations

import array
import ctypes

import pytest

from mosxdp.io import libxdp
from mosxdp.io.xsk_rings import copy_entries, read_entries, write_entries


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
    copy_entries(src, si, ssize, dst, di, dsize, n, words)
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
    write_entries(r, start, size, memoryview(array.array("Q", values)), words)
    assert read_entries(r, start, size, n, words) == values


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


def test_libxdp_check_names_the_call_and_the_fix():
    with pytest.raises(OSError) as ei:
        libxdp.check(-95, "AF_XDP socket on veth0 queue 0")
    assert "veth0" in str(ei.value) and "copy mode" in str(ei.value)
    assert libxdp.check(3, "x") == 3
