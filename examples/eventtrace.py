"""eventtrace: print every event of the monitored flows, in the order they are raised.

    mosxdp run ./examples/eventtrace.py --pcap tests/data/http_sizes.pcap \\
        --filter "tcp port 37762" --batch-size 1

One line per callback: socket, event, hook, side, that side's emulated TCP state,
and the TCP flags and payload length of the packet (mtcp_getlastpkt: in
MOS_ON_CONN_NEW_DATA and MOS_ON_CONN_END the packet that raised them), or "-" when
there is none.
"""
import socket

from mosxdp import *

DESCRIPTION = "print every event with its hook, side and state (to learn the event order)"
HOOK_NAMES = {MOS_NULL: "MOS_NULL", MOS_HK_SND: "MOS_HK_SND", MOS_HK_RCV: "MOS_HK_RCV"}
EVENTS = {
    MOS_HK_SND: (MOS_ON_PKT_IN, MOS_ON_CONN_START, MOS_ON_TCP_STATE_CHANGE, MOS_ON_REXMIT,
                 MOS_ON_CONN_END),
    MOS_HK_RCV: (MOS_ON_PKT_IN, MOS_ON_CONN_START, MOS_ON_TCP_STATE_CHANGE, MOS_ON_REXMIT,
                 MOS_ON_CONN_END),
    MOS_NULL: (MOS_ON_CONN_NEW_DATA, MOS_ON_ERROR),
}


def add_arguments(parser):
    parser.add_argument("--filter", default=None, help="stream SYN filter (default: every flow)")


def tracer(hook):
    def on_event(mctx, sock, side, event, arg):
        pinfo = PktInfo()
        try:
            mtcp_getlastpkt(mctx, sock, side, pinfo)
            flags = "".join(f for bit, f in enumerate("FSRPAUEC") if pinfo.tcph[13] >> bit & 1)
            packet = f"{flags} len {pinfo.payloadlen}"
        except OSError:                  # ENODATA: no packet
            packet = "-"
        option = MOS_TCP_STATE_CLI if side == MOS_SIDE_CLI else MOS_TCP_STATE_SVR
        state = mtcp_getsockopt(mctx, sock, SOL_MONSOCKET, option)
        print(f"sock {sock} {MosEvent(event).name:<23} {HOOK_NAMES[hook]:<10} "
              f"{'CLI' if side == MOS_SIDE_CLI else 'SVR'} {state.name:<15} {packet}")
    return on_event


def setup(mctx, args):
    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    if args.filter:
        mtcp_bind_monitor_filter(mctx, sock, MonitorFilter(stream_syn_filter=args.filter))
    for hook, events in EVENTS.items():
        for event in events:
            mtcp_register_callback(mctx, sock, event, hook, tracer(hook))
