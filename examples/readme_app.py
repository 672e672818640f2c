import socket
from mosxdp import *

def on_data(mctx, sock, side, event, arg):
    buf, n = bytearray(65536), 0
    while count := mtcp_peek(mctx, sock, side, buf, len(buf)):   # side's receive buffer
        n += count
    (cli, cport), (svr, sport) = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
    who = "client" if side == MOS_SIDE_SVR else "server"
    print(f"{cli}:{cport} -> {svr}:{sport}: {n} new bytes from the {who}")

def on_state(mctx, sock, side, event, arg):
    state = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET,
                            MOS_TCP_STATE_CLI if side == MOS_SIDE_CLI else MOS_TCP_STATE_SVR)
    print(f"side {side} is now {state.name}")

def setup(mctx, args):
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_bind_monitor_filter(mctx, sock, MonitorFilter(stream_syn_filter="tcp port 80"))
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data)
    mtcp_register_callback(mctx, sock, MOS_ON_TCP_STATE_CHANGE, MOS_HK_RCV, on_state)
