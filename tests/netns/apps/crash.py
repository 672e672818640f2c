"""Live test app: raise an exception in setup or in a callback (public mOS API only).

--raise-in setup: setup() raises before anything is attached.
--raise-in callback: the CONN_START callback raises for flows to --port (run the
monitor with --on-callback-error stop: the monitor stops and detaches).
--ready: see streamhash.py (CONN_START of flows to other ports).
"""
import socket

from mosxdp import *  # noqa: F401,F403

DESCRIPTION = "raise in setup or in a callback (netns test app)"


class AppCrash(RuntimeError):
    pass


def add_arguments(parser):
    parser.add_argument("--raise-in", choices=("setup", "callback"), required=True)
    parser.add_argument("--port", type=int, default=0, help="server port whose CONN_START raises")
    parser.add_argument("--ready", help="file created at the first CONN_START")


def setup(mctx, args):
    if args.raise_in == "setup":
        raise AppCrash("crash.py: raised in setup (test)")
    state = {"ready": args.ready}

    def on_start(mctx, sock, side, event, arg):
        _cli, (_addr, port) = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
        if port == args.port:
            raise AppCrash(f"crash.py: raised in the CONN_START callback of a flow to port {port} (test)")
        if state["ready"]:
            open(state["ready"], "w").close()
            state["ready"] = None

    sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_START, MOS_HK_SND, on_start)
    return state
