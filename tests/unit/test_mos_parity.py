"""Where a port of a mOS app would break (issue 10's parity list), item by item, through the
public API; each value or behaviour is the one of mOS's headers and core/src/mos_api.c."""
import errno
import socket

from flowcraft import Conv, Monitor, api  # noqa: F401  (api: a fixture)
from mosxdp import *  # noqa: F401,F403


def test_socket_type_numbers_are_mtcp_api_h():
    # enum socket_type of mtcp_api.h, in its order.
    assert [(t.name, int(t)) for t in SocketType] == [
        ("MOS_SOCK_UNUSED", 0), ("MOS_SOCK_STREAM_LISTEN", 1), ("MOS_SOCK_PROXY_LISTEN", 2),
        ("MOS_SOCK_MONITOR_STREAM", 3), ("MOS_SOCK_STREAM", 4), ("MOS_SOCK_PROXY", 5),
        ("MOS_SOCK_MONITOR_STREAM_ACTIVE", 6), ("MOS_SOCK_MONITOR_RAW", 7),
        ("MOS_SOCK_EPOLL", 8), ("MOS_SOCK_PIPE", 9)]


def test_socket_accepts_the_c_numbers(api):
    # A port that passes the C numbers literally gets the same sockets.
    mctx = mtcp_create_context(0)
    listener = mtcp_socket(mctx, socket.AF_INET, 3, 0)
    raw = mtcp_socket(mctx, socket.AF_INET, 7, 0)
    mtcp_bind_monitor_filter(mctx, listener, MonitorFilter(stream_syn_filter="tcp"))
    mtcp_bind_monitor_filter(mctx, raw, MonitorFilter(raw_pkt_filter="tcp"))
    for other in (0, 1, 2, 4, 5, 6, 8, 9):
        try:
            mtcp_socket(mctx, socket.AF_INET, other, 0)
        except OSError as exc:
            assert exc.errno == errno.EINVAL
        else:
            raise AssertionError(f"socket type {other} accepted")
