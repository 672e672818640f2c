"""The rings of an AF_XDP socket read and written in place (io/xsk.py): memoryviews over
the kernel's mmapped producer/consumer words and entries, and batch copies of entries that
split at the ring's wrap point. No ctypes call per frame.
"""
from __future__ import annotations

import array
import ctypes

from . import libxdp as _x

M32 = 0xFFFFFFFF


def _u32_at(ptr: int) -> memoryview:
    return memoryview((ctypes.c_char * 4).from_address(ptr)).cast("B").cast("I")


def _u64s_at(ptr: int, count: int) -> memoryview:
    return memoryview((ctypes.c_char * (8 * count)).from_address(ptr)).cast("B").cast("Q")


class Ring:
    """Memoryviews over one mmapped ring: ``prod``/``cons``/``flags`` (one u32 each) and
    ``q``, the entries as u64 words (1 per fill/completion entry, 2 per xdp_desc:
    addr, then len | options << 32)."""

    __slots__ = ("prod", "cons", "flags", "q", "mask", "size", "words")

    def __init__(self, s: _x.XskRing, words: int):
        self.mask = s.mask
        self.size = s.size
        self.words = words
        self.prod = _u32_at(s.producer)
        self.cons = _u32_at(s.consumer)
        self.flags = _u32_at(s.flags)
        self.q = _u64s_at(s.ring, s.size * words)

    def release(self) -> None:
        for mv in (self.prod, self.cons, self.flags, self.q):
            mv.release()


def copy_entries(src: memoryview, si: int, ssize: int, dst: memoryview, di: int, dsize: int,
                  n: int, w: int) -> None:
    """Copy n entries of w u64 words from ring slot si of src to ring slot di of dst,
    splitting at either ring's wrap point (at most three memoryview copies)."""
    while n:
        k = min(n, ssize - si, dsize - di)
        dst[w * di:w * (di + k)] = src[w * si:w * (si + k)]
        n -= k
        si = (si + k) % ssize
        di = (di + k) % dsize


def write_entries(dst: memoryview, di: int, dsize: int, words: memoryview, w: int) -> None:
    """Write a contiguous run of entries (u64 words, w per entry) at ring slot di."""
    n = len(words) // w
    k = dsize - di
    if n <= k:
        dst[w * di:w * (di + n)] = words
    else:
        dst[w * di:] = words[:w * k]
        dst[:w * (n - k)] = words[w * k:]


def read_entries(src: memoryview, si: int, ssize: int, n: int, w: int) -> list:
    k = ssize - si
    if n <= k:
        return src[w * si:w * (si + n)].tolist()
    out = src[w * si:].tolist()
    out += src[:w * (n - k)].tolist()
    return out


def produce(ring: Ring, prod: int, words: list, w: int) -> int:
    """Put entries (``words``, w u64 words each) on ``ring`` at our producer index ``prod``,
    as many as there is room for, and publish them: how many. The caller moves its
    index on by that many."""
    n = len(words) // w
    free = (ring.cons[0] + ring.size - prod) & M32
    if n > free:
        n = free
        words = words[:w * n]
    if n:
        write_entries(ring.q, prod & ring.mask, ring.size, memoryview(array.array("Q", words)), w)
        ring.prod[0] = (prod + n) & M32
    return n
