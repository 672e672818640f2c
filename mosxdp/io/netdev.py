"""Network device facts the datapath sizes itself by: RX and TX queue counts.

One answer for everyone: the XDP program's XSKMAP layout and the AF_XDP socket
bindings both ask here, so they cannot disagree. The source is ethtool's channel count
(ETHTOOL_GCHANNELS: rx or tx plus combined; veth reports rx/tx, NICs usually combined),
then sysfs (``/sys/class/net/IF/queues``) when the driver does not answer, but only when
that sysfs belongs to the caller's network namespace (checked by ifindex), else 1.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct

__all__ = ["rx_queue_count", "tx_queue_count", "tx_dropped"]

_SIOCETHTOOL = 0x8946
_ETHTOOL_GCHANNELS = 0x3C


def _channels(ifname: str) -> tuple[int, int, int] | None:
    """ethtool GCHANNELS of ``ifname``: (rx_count, tx_count, combined_count), or None when
    the driver does not answer. OSError (ENODEV) for an unknown interface."""
    req = bytearray(struct.pack("9I", _ETHTOOL_GCHANNELS, *([0] * 8)))
    buf = (ctypes.c_char * len(req)).from_buffer(req)
    ifr = struct.pack("16sP16x", ifname.encode()[:15], ctypes.addressof(buf))  # struct ifreq
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), _SIOCETHTOOL, ifr)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise OSError(errno.ENODEV, f"no such interface: {ifname!r}") from None
            return None
    values = struct.unpack("9I", req)
    return values[5], values[6], values[8]


def _own_sysfs(ifname: str) -> str | None:
    """``/sys/class/net/IF`` when this /sys shows the caller's namespace's device, else None."""
    base = f"/sys/class/net/{ifname}"
    try:
        with open(f"{base}/ifindex") as f:
            if f.read().strip() == str(socket.if_nametoindex(ifname)):
                return base
    except OSError:
        pass
    return None


def _sysfs_queue_count(ifname: str, kind: str) -> int:
    """Entries ``kind-N`` in sysfs, 0 when this /sys shows another namespace's device."""
    base = _own_sysfs(ifname)
    if base is None:
        return 0
    try:
        return sum(1 for name in os.listdir(f"{base}/queues") if name.startswith(kind + "-"))
    except OSError:
        return 0


def tx_dropped(ifname: str) -> int | None:
    """The device's tx_dropped counter (frames its driver or the core dropped on
    transmit, whoever sent them); None when this /sys does not show the caller's device."""
    base = _own_sysfs(ifname)
    if base is None:
        return None
    try:
        with open(f"{base}/statistics/tx_dropped") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _queue_count(ifname: str, kind: str) -> int:
    ch = _channels(ifname)
    if ch is not None:
        n = (ch[0] if kind == "rx" else ch[1]) + ch[2]
        if n > 0:
            return n
    socket.if_nametoindex(ifname)  # OSError for an unknown interface
    return _sysfs_queue_count(ifname, kind) or 1


def rx_queue_count(ifname: str) -> int:
    """Active RX queues of ``ifname`` in this network namespace (one AF_XDP socket each)."""
    return _queue_count(ifname, "rx")


def tx_queue_count(ifname: str) -> int:
    """Active TX queues of ``ifname`` in this network namespace."""
    return _queue_count(ifname, "tx")
