"""ctypes declarations for libxdp's AF_XDP socket API (``xdp/xsk.h``), and nothing else.

Layouts follow libxdp 1.3.1's ``headers/xdp/xsk.h`` (Debian 12's libxdp1). The ring
accessors of xsk.h (reserve/submit/peek/release) are not called from here: they are
four loads and stores on shared memory, which ``mosxdp.io.xsk`` does per batch on
memoryviews of the rings (the pointers stored in :class:`XskRing`).

Every function returns a negative errno on failure; :func:`check` turns that into an
``OSError`` that names the call.
"""

from __future__ import annotations

import ctypes
import errno
import os

# The kernel's numbers (socket family, bind, ring and attach flags) are defined in uapi;
# named here too because this library's calls take them.
from .uapi import (AF_XDP, SOL_XDP, XDP_COPY, XDP_FLAGS_DRV_MODE, XDP_FLAGS_HW_MODE,
                   XDP_FLAGS_SKB_MODE, XDP_FLAGS_UPDATE_IF_NOEXIST, XDP_RING_NEED_WAKEUP,
                   XDP_SHARED_UMEM, XDP_USE_NEED_WAKEUP, XDP_ZEROCOPY)

__all__ = [
    "LibxdpMissing", "lib", "load", "check",
    "XskRing", "XskUmemConfig", "XskSocketConfig", "XdpDesc",
    "AF_XDP", "SOL_XDP",
    "XDP_SHARED_UMEM", "XDP_COPY", "XDP_ZEROCOPY", "XDP_USE_NEED_WAKEUP",
    "XDP_RING_NEED_WAKEUP",
    "XDP_FLAGS_UPDATE_IF_NOEXIST", "XDP_FLAGS_SKB_MODE", "XDP_FLAGS_DRV_MODE", "XDP_FLAGS_HW_MODE",
    "XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD",
]

# xdp/xsk.h: xsk_socket_config.libxdp_flags
XSK_LIBXDP_FLAGS__INHIBIT_PROG_LOAD = 1 << 0


# --- structures -----------------------------------------------------------------------
class XskRing(ctypes.Structure):
    """``struct xsk_ring_prod`` / ``struct xsk_ring_cons`` (DEFINE_XSK_RING: same layout)."""

    # pointers: producer, consumer and flags to a __u32; ring to __u64[] (fill,
    # completion) or struct xdp_desc[] (rx, tx)
    _fields_ = ([(n, ctypes.c_uint32) for n in ("cached_prod", "cached_cons", "mask", "size")]
                + [(n, ctypes.c_void_p) for n in ("producer", "consumer", "ring", "flags")])


class XskUmemConfig(ctypes.Structure):
    """``struct xsk_umem_config``."""

    _fields_ = [(n, ctypes.c_uint32)
                for n in ("fill_size", "comp_size", "frame_size", "frame_headroom", "flags")]


class _XskLibFlags(ctypes.Union):
    _fields_ = [("libbpf_flags", ctypes.c_uint32), ("libxdp_flags", ctypes.c_uint32)]


class XskSocketConfig(ctypes.Structure):
    """``struct xsk_socket_config`` (libxdp 1.3.1: no tx_metadata_len yet)."""

    _anonymous_ = ("_u",)
    _fields_ = [("rx_size", ctypes.c_uint32), ("tx_size", ctypes.c_uint32), ("_u", _XskLibFlags),
                ("xdp_flags", ctypes.c_uint32), ("bind_flags", ctypes.c_uint16)]


class XdpDesc(ctypes.Structure):
    """``struct xdp_desc`` (linux/if_xdp.h): one RX/TX descriptor, 16 bytes."""

    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint32), ("options", ctypes.c_uint32)]


assert ctypes.sizeof(XskRing) == 48
assert ctypes.sizeof(XskUmemConfig) == 20
assert ctypes.sizeof(XskSocketConfig) == 20
assert ctypes.sizeof(XdpDesc) == 16


# --- library loading --------------------------------------------------------------------
class LibxdpMissing(RuntimeError):
    """libxdp (the shared library of the xdp-tools project) cannot be loaded."""


_P = ctypes.POINTER
_lib = None


def _declare(so: ctypes.CDLL) -> None:
    vp, u32, u64, i32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int
    ring_p = _P(XskRing)

    so.xsk_umem__create.argtypes = [_P(vp), vp, u64, ring_p, ring_p, _P(XskUmemConfig)]
    so.xsk_umem__create.restype = i32
    so.xsk_socket__create.argtypes = [_P(vp), ctypes.c_char_p, u32, vp, ring_p, ring_p,
                                      _P(XskSocketConfig)]
    so.xsk_socket__create.restype = i32
    so.xsk_socket__create_shared.argtypes = [_P(vp), ctypes.c_char_p, u32, vp, ring_p, ring_p,
                                             ring_p, ring_p, _P(XskSocketConfig)]
    so.xsk_socket__create_shared.restype = i32
    so.xsk_socket__fd.argtypes = [vp]
    so.xsk_socket__fd.restype = i32
    so.xsk_umem__fd.argtypes = [vp]
    so.xsk_umem__fd.restype = i32
    so.xsk_socket__delete.argtypes = [vp]
    so.xsk_socket__delete.restype = None
    so.xsk_umem__delete.argtypes = [vp]
    so.xsk_umem__delete.restype = i32
    so.xsk_socket__update_xskmap.argtypes = [vp, i32]
    so.xsk_socket__update_xskmap.restype = i32
    # Newer libxdp only (1.4+): UMEM registered on a caller-created AF_XDP socket.
    if hasattr(so, "xsk_umem__create_with_fd"):
        so.xsk_umem__create_with_fd.argtypes = [_P(vp), i32, vp, u64, ring_p, ring_p,
                                                _P(XskUmemConfig)]
        so.xsk_umem__create_with_fd.restype = i32


def load() -> ctypes.CDLL:
    """Load libxdp once; raise :class:`LibxdpMissing` with the fix when it is absent."""
    global _lib
    if _lib is not None:
        return _lib
    import ctypes.util    # runs ldconfig: only when libxdp is loaded
    names = ["libxdp.so.1"]
    found = ctypes.util.find_library("xdp")
    if found and found not in names:
        names.append(found)
    errors = []
    for name in names:
        try:
            so = ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            errors.append(f"{name}: {exc}")
            continue
        if not hasattr(so, "xsk_socket__create_shared"):
            errors.append(f"{name}: no xsk_socket__create_shared (libxdp older than 1.2)")
            continue
        _declare(so)
        _lib = so
        return so
    raise LibxdpMissing(
        "libxdp is not installed or too old (need libxdp.so.1 >= 1.2 with the xsk API): "
        "install it with `apt-get install libxdp1` (scripts/setup.sh does). Tried: "
        + "; ".join(errors))


def lib() -> ctypes.CDLL:
    return _lib if _lib is not None else load()


def has_umem_create_with_fd() -> bool:
    return hasattr(lib(), "xsk_umem__create_with_fd")


_HINTS = {
    errno.EPERM: "needs root (CAP_NET_ADMIN, CAP_BPF/CAP_SYS_ADMIN) and a high enough RLIMIT_MEMLOCK",
    errno.EACCES: "needs root (CAP_NET_ADMIN, CAP_BPF/CAP_SYS_ADMIN)",
    errno.EAFNOSUPPORT: "the kernel has no AF_XDP (CONFIG_XDP_SOCKETS)",
    errno.EOPNOTSUPP: "the driver does not support this bind mode (zero-copy needs driver support; "
                      "veth has none: use copy mode)",
    errno.EBUSY: "another AF_XDP socket is already bound to this interface queue",
    errno.ENODEV: "no such interface",
    errno.ENOENT: "no such interface",
    errno.EINVAL: "bad argument (queue id beyond the interface's queues, ring size not a power of 2, "
                  "or unaligned/oversized UMEM)",
    errno.ENOMEM: "out of locked memory (raise RLIMIT_MEMLOCK) or memory",
}


def check(ret: int, what: str) -> int:
    """Raise OSError for a negative errno return value of a libxdp call."""
    if ret < 0:
        err = -ret
        hint = _HINTS.get(err)
        msg = f"{what}: {os.strerror(err)}" + (f" ({hint})" if hint else "")
        raise OSError(err, msg)
    return ret
