"""flowbytes: a line-by-line port of a small C mOS app (docs/porting.md shows both).

When a flow ends it prints how many bytes each side sent (counted from the reassembled
streams) and the server's emulated TCP state; every second, the number of active flows.

    mosxdp run ./examples/flowbytes.py --pcap tests/data/http_sizes.pcap
    .venv/bin/python examples/flowbytes.py tests/data/http_sizes.pcap     # main(), as in C
"""
import socket
import sys

from mosxdp import *

TIMER_ID = 1
active = 0                                    # static int g_active;


class Flow:                                   # struct flow
    def __init__(self):
        self.bytes = [0, 0]                   # uint64_t bytes[2]: by receiving side


def on_conn_start(mctx, sock, side, events, arg):
    global active
    mtcp_set_uctx(mctx, sock, Flow())         # calloc(1, sizeof(struct flow))
    active += 1


def on_new_data(mctx, sock, side, events, arg):
    buf = bytearray(4096)                     # char buf[4096];
    f = mtcp_get_uctx(mctx, sock)
    while (n := mtcp_peek(mctx, sock, side, buf, len(buf))) > 0:
        f.bytes[side] += n


def on_conn_end(mctx, sock, side, events, arg):
    global active
    if side != MOS_SIDE_CLI:
        return
    f = mtcp_get_uctx(mctx, sock)
    (cli, cport), (svr, sport) = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
    state = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_SVR)
    print(f"{cli}:{cport} -> {svr}:{sport}: client sent {f.bytes[MOS_SIDE_SVR]}, "
          f"server sent {f.bytes[MOS_SIDE_CLI]}, server {state.name[len('TCP_'):]}")
    active -= 1                               # free(f): nothing to do


def on_timer(mctx, id, side, events, arg):
    print(f"{active} active flows")
    mtcp_settimer(mctx, id, 1.0, on_timer)    # struct timeval tv = {1, 0};


def setup(mctx, args):
    sock = mtcp_socket(mctx, socket.AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    ft = MonitorFilter(stream_syn_filter="tcp port 8080")
    mtcp_bind_monitor_filter(mctx, sock, ft)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_START, MOS_HK_SND, on_conn_start)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_new_data)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_SND, on_conn_end)
    mtcp_settimer(mctx, TIMER_ID, 1.0, on_timer)


def main(argv):
    try:
        mtcp_init(None, pcap=argv[1])         # mtcp_init("config/mos.conf")
        mctx = mtcp_create_context(0)
        setup(mctx, None)
        mtcp_app_join(mctx)
    except (OSError, ValueError) as exc:      # if (... < 0) { perror(...); exit(EXIT_FAILURE); }
        print(f"flowbytes: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 1
    finally:
        mtcp_destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
