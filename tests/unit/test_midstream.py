"""Mid-flow pickup per listening socket (MOSX_MIDSTREAM), and connlog's Zeek conn_state for
flows with and without a handshake.

tests/data/midstream.pcap is one HTTP flow whose capture starts after the handshake.
"""
import errno
import socket
from pathlib import Path

import pytest

from mosxdp import (MOS_HK_RCV, MOS_NULL, MOS_ON_CONN_END, MOS_ON_CONN_NEW_DATA,
                    MOS_ON_ORPHAN, MOS_SIDE_CLI, MOS_SOCK_MONITOR_STREAM, MOSX_MIDSTREAM,
                    SOL_MONSOCKET, mtcp_app_join, mtcp_create_context, mtcp_destroy, mtcp_init,
                    mtcp_register_callback, mtcp_setsockopt, mtcp_socket)
from mosxdp.core.zeekconn import conn_state

MIDSTREAM = Path(__file__).resolve().parents[1] / "data" / "midstream.pcap"


def run_listeners(choices, **config):
    """One listener per entry of `choices` (None: MOSX_MIDSTREAM not set), on midstream.pcap:
    per listener its (orphan events, flows ended, new-data events)."""
    mtcp_init(None, pcap=str(MIDSTREAM), **config)
    try:
        mctx = mtcp_create_context(0)
        counts = []
        for choice in choices:
            sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
            if choice is not None:
                mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_MIDSTREAM, choice)
            count = {"orphan": 0, "end": 0, "data": 0}

            def bump(name, count=count):
                def callback(mctx, sock, side, event, arg):
                    if name != "end" or side == MOS_SIDE_CLI:
                        count[name] += 1
                return callback
            mtcp_register_callback(mctx, sock, MOS_ON_ORPHAN, MOS_NULL, bump("orphan"))
            mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_RCV, bump("end"))
            mtcp_register_callback(mctx, sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, bump("data"))
            counts.append(count)
        mtcp_app_join(mctx)
        return [(c["orphan"], c["end"], c["data"] > 0) for c in counts]
    finally:
        mtcp_destroy()


def test_only_the_listener_that_asks_picks_up():
    # The first packet has no flow: an orphan for both; it starts a flow of which only the
    # first listener has a socket (the later packets are the flow's, no orphans). The second
    # keeps mOS's default: no flow socket, no event but that orphan.
    (asks, default) = run_listeners([1, None])
    assert asks == (1, 1, True)
    assert default == (1, 0, False)
    # Alone, a listener with mOS's default sees every packet as an orphan.
    assert run_listeners([None]) == [(99, 0, False)]


def test_the_global_key_is_the_default_and_0_refuses_it():
    (default, refuses) = run_listeners([None, 0], midstream_pickup=True)
    assert default == (1, 1, True)
    assert refuses == (1, 0, False)
    assert run_listeners([0], midstream_pickup=True) == [(99, 0, False)]


def test_mosx_midstream_errors():
    mtcp_init(None, pcap=str(MIDSTREAM))
    try:
        mctx = mtcp_create_context(0)
        sock = mtcp_socket(mctx, socket.AF_UNSPEC, MOS_SOCK_MONITOR_STREAM, 0)
        for bad in (2, -1, True, "1", None):
            with pytest.raises(OSError) as info:
                mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_MIDSTREAM, bad)
            assert info.value.errno == errno.EINVAL
    finally:
        mtcp_destroy()


@pytest.mark.parametrize("history,state", [
    # Without a handshake (Zeek: each side PARTIAL from its first packet).
    ("DadA", "OTH"),          # still open
    ("DadAfF", "SF"),         # both FINs: midstream.pcap
    ("DaF", "SH"),            # the originator closed, the responder is partial
    ("Dadf", "SHR"),          # the responder closed
    ("DadR", "OTH"),          # the originator reset, the responder partial
    ("Dadr", "RSTRH"),        # the responder reset
    ("^dADF", "SH"),          # the first packet was the responder's (flipped)
    # With a handshake.
    ("ShADadFf", "SF"), ("ShADad", "S1"), ("S", "S0"), ("Sr", "REJ"), ("SR", "RSTOS0"),
    ("ShADadR", "RSTO"), ("ShADadr", "RSTR"), ("ShADadF", "S2"), ("ShADadf", "S3"),
    ("SF", "SH"), ("hf", "SHR"), ("hr", "RSTRH"),
    ("hA", "S1"),             # the SYN was missed, the SYN-ACK and the ACK were not
])
def test_conn_state_as_zeek(history, state):
    assert conn_state(history, 1, 1) == state
