"""Every errno of the mtcp_* API, triggered through the public API (`from mosxdp import *`).

Sources: the five seed man pages (mtcp_getlastpkt, mtcp_setlastpkt, mtcp_ppeek,
mtcp_getsockopt, mtcp_sendpkt), the reference man pages and API.md (which decides where
they differ). Each row is (call, errno) -> the test that triggers it.

  call                      errno            test
  ------------------------  ---------------  ------------------------------------------------
  mtcp_init                 EINVAL           test_init_bad_config
  mtcp_getconf              EPERM            test_before_init_eperm
  mtcp_getconf              EINVAL           test_getconf_setconf_null_conf
  mtcp_setconf              EPERM            test_before_init_eperm
  mtcp_setconf              EINVAL           test_getconf_setconf_null_conf, test_setconf_bad_value
  mtcp_create_context       EPERM            test_before_init_eperm
  mtcp_create_context       EINVAL           test_create_context_bad_cpu
  mtcp_define_event         EPERM            test_before_init_eperm
  mtcp_define_event         EINVAL           test_define_event_einval
  mtcp_alloc_event          EPERM            test_before_init_eperm
  mtcp_alloc_event          EINVAL           test_alloc_event_bad_parent
  mtcp_raise_event          EINVAL           test_raise_event_einval
  (every call with mctx)    EACCES           test_bad_or_destroyed_mctx_eacces,
                                             test_contexts_gone_after_mtcp_destroy
  mtcp_socket               EAFNOSUPPORT     test_socket_eafnosupport
  mtcp_socket               EINVAL           test_socket_bad_type
  mtcp_socket               ENFILE           test_socket_enfile
  mtcp_close                EBADF            test_close_ebadf
  mtcp_close                ENOTCONN         test_close_ended_flow_enotconn
  mtcp_bind_monitor_filter  EBADF            test_bind_filter_ebadf
  mtcp_bind_monitor_filter  EINVAL           test_bind_filter_bad_filter_names_token
  mtcp_bind_monitor_filter  ENOPROTOOPT      test_bind_filter_enoprotoopt
  mtcp_register_callback    EINVAL           test_register_callback_bad_socket,
                                             test_register_callback_invalid_combination,
                                             test_register_callback_bad_event_hook_cb,
                                             test_register_callback_raw_socket_events
  mtcp_settimer             EINVAL           test_settimer_einval
  mtcp_set_uctx/get_uctx    EBADF            test_uctx_ebadf
  mtcp_set_uctx/get_uctx    EPERM            test_socket_of_another_context_eperm
  mtcp_getpeername          EBADF            test_getpeername_ebadf
  mtcp_getpeername          EINVAL           test_getpeername_bad_side
  mtcp_getpeername          ENOTCONN         test_getpeername_enotconn
  mtcp_peek                 EBADF            test_peek_ppeek_ebadf
  mtcp_peek                 EINVAL           test_peek_ppeek_buffering_off, test_peek_ppeek_bad_side
  mtcp_peek                 ENOTSOCK         test_peek_wrong_type_enotsock
  mtcp_peek                 ENOTCONN         test_peek_ppeek_stopped_side_enotconn,
                                             test_peek_ppeek_ended_flow_enotconn
  mtcp_peek                 ENODATA          test_peek_overrun_enodata_lost_then_continues
  mtcp_peek                 EPERM            test_socket_of_another_context_eperm
  mtcp_ppeek                EBADF            test_peek_ppeek_ebadf
  mtcp_ppeek                EINVAL           test_peek_ppeek_buffering_off, test_peek_ppeek_bad_side,
                                             test_ppeek_bad_offset
  mtcp_ppeek                ESOCKTNOSUPPORT  test_ppeek_wrong_type_esocktnosupport
  mtcp_ppeek                ENOTCONN         test_peek_ppeek_stopped_side_enotconn,
                                             test_peek_ppeek_ended_flow_enotconn
  mtcp_ppeek                ENODATA          test_ppeek_no_byte_at_offset_enodata
  mtcp_ppeek                EPERM            test_socket_of_another_context_eperm
  mtcp_getsockopt           EBADF            test_getsockopt_setsockopt_ebadf
  mtcp_getsockopt           ENOTSOCK         test_getsockopt_listener_or_raw_enotsock
  mtcp_getsockopt           ENOSYS           test_getsockopt_enosys
  mtcp_getsockopt           EPERM            test_socket_of_another_context_eperm
  mtcp_setsockopt           EBADF            test_getsockopt_setsockopt_ebadf
  mtcp_setsockopt           ENOTSOCK         test_setsockopt_enotsock
  mtcp_setsockopt           ENOSYS           test_setsockopt_enosys
  mtcp_setsockopt           EINVAL           test_setsockopt_bad_values, test_setsockopt_bufsize_after_payload
  mtcp_setsockopt           EPERM            test_socket_of_another_context_eperm
  mtcp_getlastpkt           EBADF            test_getlastpkt_ebadf
  mtcp_getlastpkt           EINVAL           test_getlastpkt_einval
  mtcp_getlastpkt           ENODATA          test_getlastpkt_enodata_without_packet (timer, outside
                                             callbacks)
  mtcp_getlastpkt           EPERM            test_socket_of_another_context_eperm
  mtcp_setlastpkt           EBADF            test_setlastpkt_ebadf
  mtcp_setlastpkt           EAGAIN           test_setlastpkt_option_combinations_eagain_einval
  mtcp_setlastpkt           EACCES           test_setlastpkt_chomp_insert_refused (Ethernet header)
  mtcp_setlastpkt           EINVAL           test_setlastpkt_option_combinations_eagain_einval,
                                             test_setlastpkt_region_overrun_einval,
                                             test_setlastpkt_segment_without_payload_has_no_payload_region,
                                             test_setlastpkt_chomp_insert_refused,
                                             test_setlastpkt_unparseable_edit_einval
  mtcp_setlastpkt           ESOCKTNOSUPPORT  test_setlastpkt_listener_esocktnosupport
  mtcp_setlastpkt           ENOTCONN         test_setlastpkt_stopped_side_enotconn
  mtcp_setlastpkt           ENODATA          test_setlastpkt_enodata_without_packet
  mtcp_setlastpkt           EPERM            test_socket_of_another_context_eperm
  mtcp_sendpkt              EACCES           test_bad_or_destroyed_mctx_eacces, test_sendpkt_null_pinfo_eacces
  mtcp_sendpkt              ENODATA          test_sendpkt_bad_headers_enodata
  mtcp_sendpkt              EBADF            test_sendpkt_reset_conn_ebadf
  mtcp_reset_conn           EBADF            test_sendpkt_reset_conn_ebadf
  mtcp_reset_conn           EINVAL           test_reset_conn_listener_or_raw_einval

Controls (the call succeeds where it should): test_register_callback_valid_combination,
test_peek_nothing_new_returns_zero (API.md: 0, not an error), test_sendpkt_valid_copy_is_sent.

Not applicable (no test): mtcp_close's EAGAIN (a monitor socket's close is never refused),
EINVAL and ENOTSOCK (every monitor socket type can be closed; an unknown id is EBADF).
"""
import errno
import os
import socket

import pytest

from flowcraft import Conv, Monitor, api, checksums_ok  # noqa: F401  (api: a fixture)
from mosxdp import *  # noqa: F401,F403

AF_INET, AF_INET6, AF_UNSPEC = socket.AF_INET, socket.AF_INET6, socket.AF_UNSPEC


def raises(err, fn, *args, **kwargs):
    """Call fn; it must raise OSError with errno `err` and a message."""
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    exc = info.value
    assert exc.errno == err, f"{fn.__name__}: expected {errno.errorcode[err]}, got {exc!r}"
    assert exc.strerror, "the error must say what was wrong"
    return exc


def capture(fn, *args, **kwargs):
    """The result of fn, or the OSError it raised (callback exceptions are swallowed)."""
    try:
        return fn(*args, **kwargs)
    except OSError as exc:
        return exc


def errno_of(result):
    assert isinstance(result, OSError), f"expected an OSError, got {result!r}"
    assert result.strerror
    return result.errno


def in_flow(fn, event=MOS_ON_PKT_IN, hook=MOS_HK_SND, data_only=True, conv=None, setup=None,
            mon=None):
    """Run fn(mctx, sock, side) inside the first `event` callback at `hook` (for PKT_IN: of
    a segment with payload when data_only); return its result or the OSError it raised."""
    mon = mon or Monitor()
    if setup is not None:
        setup(mon)
    box = []

    def cb(mctx, sock, side, ev, arg):
        if box:
            return
        if data_only and ev == MOS_ON_PKT_IN:
            pinfo = PktInfo()
            mtcp_getlastpkt(mctx, sock, side, pinfo)
            if not pinfo.payloadlen:
                return
        box.append(capture(fn, mctx, sock, side))

    mtcp_register_callback(mon.mctx, mon.sock, event, hook, cb)
    mon.run(conv or Conv().full())
    assert box, "the callback never ran"
    return box[0]


def ended_flow_socket(mon=None):
    """(monitor, id of a flow socket whose flow has ended)."""
    mon = mon or Monitor()
    ids = []
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_START, MOS_HK_SND,
                           lambda mctx, sock, side, ev, arg: ids.append(sock))
    mon.run(Conv().full())
    assert len(ids) == 1
    return mon, ids[0]


# ------------------------------------------------------------ init, config, contexts
def test_before_init_eperm():
    mtcp_destroy()
    raises(errno.EPERM, mtcp_getconf, MtcpConf())
    raises(errno.EPERM, mtcp_setconf, MtcpConf())
    raises(errno.EPERM, mtcp_create_context, 0)
    raises(errno.EPERM, mtcp_define_event, MOS_ON_PKT_IN, lambda *a: True, None)
    raises(errno.EPERM, mtcp_alloc_event, MOS_ON_PKT_IN)


def test_init_bad_config(tmp_path):
    mtcp_destroy()
    raises(errno.EINVAL, mtcp_init, None, bogus_key=1)
    raises(errno.EINVAL, mtcp_init, None, tcp_timeout="soon")
    raises(errno.EINVAL, mtcp_init, str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[mos]\nrmem_size = -1\n")
    raises(errno.EINVAL, mtcp_init, str(bad))
    good = tmp_path / "good.toml"
    good.write_text("[mos]\nrmem_size = 4096\n")
    assert mtcp_init(str(good)) == 0
    conf = MtcpConf()
    mtcp_getconf(conf)
    assert conf.rcvbuf_size == 4096
    mtcp_destroy()


def test_getconf_setconf_null_conf(api):
    raises(errno.EINVAL, mtcp_getconf, None)
    raises(errno.EINVAL, mtcp_setconf, None)
    conf = MtcpConf()
    mtcp_getconf(conf)
    assert conf.max_concurrency == 100000


def test_setconf_bad_value(api):
    conf = MtcpConf()
    mtcp_getconf(conf)
    conf.max_concurrency = 0
    raises(errno.EINVAL, mtcp_setconf, conf)


def test_create_context_bad_cpu(api):
    raises(errno.EINVAL, mtcp_create_context, -1)
    raises(errno.EINVAL, mtcp_create_context, 1 << 20)
    mtcp_create_context(0)
    # The same cpu twice is refused (mtcp_create_context(3) NOTES).
    with pytest.raises(OSError):
        mtcp_create_context(0)


def test_bad_or_destroyed_mctx_eacces(api):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_destroy_context(mctx)
    buf = bytearray(8)
    for bad in (None, 0, "mctx", mctx):
        raises(errno.EACCES, mtcp_socket, bad, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
        raises(errno.EACCES, mtcp_close, bad, sock)
        raises(errno.EACCES, mtcp_bind_monitor_filter, bad, sock, None)
        raises(errno.EACCES, mtcp_register_callback, bad, sock, MOS_ON_PKT_IN, MOS_HK_SND,
               lambda *a: None)
        raises(errno.EACCES, mtcp_raise_event, bad, MOS_ON_PKT_IN)
        raises(errno.EACCES, mtcp_settimer, bad, 1, 1.0, lambda *a: None)
        raises(errno.EACCES, mtcp_cb_get_ts, bad)
        raises(errno.EACCES, mtcp_set_uctx, bad, sock, 1)
        raises(errno.EACCES, mtcp_get_uctx, bad, sock)
        raises(errno.EACCES, mtcp_getpeername, bad, sock, MOS_SIDE_CLI)
        raises(errno.EACCES, mtcp_peek, bad, sock, MOS_SIDE_CLI, buf)
        raises(errno.EACCES, mtcp_ppeek, bad, sock, MOS_SIDE_CLI, buf, 8, 0)
        raises(errno.EACCES, mtcp_getsockopt, bad, sock, SOL_MONSOCKET, MOS_TCP_STATE_CLI)
        raises(errno.EACCES, mtcp_setsockopt, bad, sock, SOL_MONSOCKET, MOS_CLIBUF, 0)
        raises(errno.EACCES, mtcp_getlastpkt, bad, sock, MOS_SIDE_CLI, PktInfo())
        raises(errno.EACCES, mtcp_setlastpkt, bad, sock, MOS_SIDE_CLI, 0, b"", 0, MOS_DROP)
        raises(errno.EACCES, mtcp_sendpkt, bad, sock, PktInfo())
        raises(errno.EACCES, mtcp_reset_conn, bad, sock)
        raises(errno.EACCES, mtcp_destroy_context, bad)
        raises(errno.EACCES, mtcp_app_join, bad)
        raises(errno.EACCES, mosx_open_output, bad, os.devnull)
        raises(errno.EACCES, mosx_open_report, bad)
        raises(errno.EACCES, mosx_open_outdir, bad, "never-made")


def test_contexts_gone_after_mtcp_destroy(api):
    mctx = mtcp_create_context(0)
    mtcp_destroy()
    raises(errno.EACCES, mtcp_socket, mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    raises(errno.EPERM, mtcp_create_context, 0)


# -------------------------------------------------------------------- sockets
def test_socket_eafnosupport(api):
    mctx = mtcp_create_context(0)
    for domain in (socket.AF_UNIX, socket.AF_PACKET, 12345):
        raises(errno.EAFNOSUPPORT, mtcp_socket, mctx, domain, MOS_SOCK_MONITOR_STREAM, 0)
    for domain in (AF_INET, AF_INET6, AF_UNSPEC):
        assert mtcp_socket(mctx, domain, MOS_SOCK_MONITOR_STREAM, 0) > 0
        assert mtcp_socket(mctx, domain, MOS_SOCK_MONITOR_RAW, 0) > 0


def test_socket_bad_type(api):
    mctx = mtcp_create_context(0)
    for kind in (socket.SOCK_STREAM, MOS_SOCK_MONITOR_STREAM_ACTIVE, MOS_SOCK_STREAM_LISTEN, 999):
        raises(errno.EINVAL, mtcp_socket, mctx, AF_INET, kind, 0)


def test_socket_enfile(api):
    mctx = mtcp_create_context(0)
    made = set()
    with pytest.raises(OSError) as info:
        for _ in range(100000):
            made.add(mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_RAW, 0))
    assert info.value.errno == errno.ENFILE
    assert len(made) >= 64
    # Closing one frees a descriptor.
    mtcp_close(mctx, made.pop())
    mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)


def test_close_ebadf(api):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    raw = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    for bad in (-1, 0, 999, "1", None):
        raises(errno.EBADF, mtcp_close, mctx, bad)
    assert mtcp_close(mctx, sock) == 0
    assert mtcp_close(mctx, raw) == 0
    raises(errno.EBADF, mtcp_close, mctx, sock)
    raises(errno.EBADF, mtcp_close, mctx, raw)


def test_close_ended_flow_enotconn(api):
    mon, flow_sock = ended_flow_socket()
    raises(errno.ENOTCONN, mtcp_close, mon.mctx, flow_sock)
    # A flow socket closed inside a callback is gone too.
    results = []
    mon2 = Monitor(cpu=1)

    def on_start(mctx, sock, side, ev, arg):
        results.append(capture(mtcp_close, mctx, sock))
        results.append(capture(mtcp_close, mctx, sock))
    mtcp_register_callback(mon2.mctx, mon2.sock, MOS_ON_CONN_START, MOS_HK_SND, on_start)
    mon2.run(Conv().full())
    assert results[0] == 0
    assert errno_of(results[1]) == errno.ENOTCONN


def test_bind_filter_ebadf(api):
    mctx = mtcp_create_context(0)
    raises(errno.EBADF, mtcp_bind_monitor_filter, mctx, 42, MonitorFilter(stream_syn_filter="tcp"))


def test_bind_filter_bad_filter_names_token(api):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    raw = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    exc = raises(errno.EINVAL, mtcp_bind_monitor_filter, mctx, sock,
                 MonitorFilter(stream_syn_filter="tcp and bogus 80"))
    assert "bogus" in exc.strerror
    exc = raises(errno.EINVAL, mtcp_bind_monitor_filter, mctx, sock,
                 MonitorFilter(stream_orphan_filter="host 10.0.0.300"))
    assert "10.0.0.300" in exc.strerror
    exc = raises(errno.EINVAL, mtcp_bind_monitor_filter, mctx, raw,
                 MonitorFilter(raw_pkt_filter="udp and portrange 9-x"))
    assert "9-x" in exc.strerror
    raises(errno.EINVAL, mtcp_bind_monitor_filter, mctx, sock, "tcp")   # not a monitor_filter
    # None (NULL) is not an error, and neither is a good filter.
    assert mtcp_bind_monitor_filter(mctx, sock, None) == 0
    assert mtcp_bind_monitor_filter(mctx, sock, MonitorFilter(stream_syn_filter="tcp port 80")) == 0


def test_bind_filter_enoprotoopt(api):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    raw = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    raises(errno.ENOPROTOOPT, mtcp_bind_monitor_filter, mctx, sock, MonitorFilter(raw_pkt_filter="ip"))
    raises(errno.ENOPROTOOPT, mtcp_bind_monitor_filter, mctx, raw,
           MonitorFilter(stream_syn_filter="tcp"))
    # A flow socket takes no filter: the listener's decides.
    result = in_flow(lambda mctx, s, side: mtcp_bind_monitor_filter(
        mctx, s, MonitorFilter(stream_syn_filter="tcp")), mon=Monitor(cpu=1))
    assert errno_of(result) == errno.ENOPROTOOPT


# --------------------------------------------------------------------- events
def test_register_callback_bad_socket(api):
    # mtcp_register_callback(3): "EINVAL The socket descriptor, sockid is invalid."
    mctx = mtcp_create_context(0)
    for bad in (-1, 77, None):
        raises(errno.EINVAL, mtcp_register_callback, mctx, bad, MOS_ON_PKT_IN, MOS_HK_SND,
               lambda *a: None)
    mon, ended = ended_flow_socket(Monitor(cpu=1))
    raises(errno.EINVAL, mtcp_register_callback, mon.mctx, ended, MOS_ON_PKT_IN, MOS_HK_SND,
           lambda *a: None)


REFUSED = [(MOS_NULL, ev) for ev in (MOS_ON_CONN_START, MOS_ON_REXMIT, MOS_ON_TCP_STATE_CHANGE,
                                      MOS_ON_CONN_END)] + \
          [(hook, ev) for hook in (MOS_HK_RCV, MOS_HK_SND)
           for ev in (MOS_ON_CONN_NEW_DATA, MOS_ON_ORPHAN, MOS_ON_ERROR)]
ACCEPTED = [(MOS_NULL, ev) for ev in (MOS_ON_PKT_IN, MOS_ON_CONN_NEW_DATA, MOS_ON_ORPHAN,
                                       MOS_ON_ERROR)] + \
           [(hook, ev) for hook in (MOS_HK_RCV, MOS_HK_SND)
            for ev in (MOS_ON_PKT_IN, MOS_ON_CONN_START, MOS_ON_REXMIT, MOS_ON_TCP_STATE_CHANGE,
                       MOS_ON_CONN_END)]


@pytest.mark.parametrize("hook,event", REFUSED, ids=lambda v: getattr(v, "name", str(v)))
def test_register_callback_invalid_combination(api, hook, event):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    raises(errno.EINVAL, mtcp_register_callback, mctx, sock, event, hook, lambda *a: None)
    # A UDE inherits the combinations of its root built-in event, through nesting too.
    ude = mtcp_define_event(event, lambda *a: True, None)
    nested = mtcp_define_event(ude, lambda *a: True, None)
    raises(errno.EINVAL, mtcp_register_callback, mctx, sock, ude, hook, lambda *a: None)
    raises(errno.EINVAL, mtcp_register_callback, mctx, sock, nested, hook, lambda *a: None)


@pytest.mark.parametrize("hook,event", ACCEPTED, ids=lambda v: getattr(v, "name", str(v)))
def test_register_callback_valid_combination(api, hook, event):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    assert mtcp_register_callback(mctx, sock, event, hook, lambda *a: None) == 0
    assert mtcp_register_callback(mctx, sock, event, hook, None) == 0   # unregister


def test_register_callback_bad_event_hook_cb(api):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    cb = lambda *a: None  # noqa: E731
    for event in (0, MOS_ON_PKT_IN | MOS_ON_CONN_START, 1 << 40, MOS_ON_PKT_OUT):
        raises(errno.EINVAL, mtcp_register_callback, mctx, sock, event, MOS_HK_SND, cb)
    for hook in (0, 1, MOS_HK_RCV | MOS_HK_SND):
        raises(errno.EINVAL, mtcp_register_callback, mctx, sock, MOS_ON_PKT_IN, hook, cb)
    raises(errno.EINVAL, mtcp_register_callback, mctx, sock, MOS_ON_PKT_IN, MOS_HK_SND, "cb")


def test_register_callback_raw_socket_events(api):
    mctx = mtcp_create_context(0)
    raw = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    cb = lambda *a: None  # noqa: E731
    assert mtcp_register_callback(mctx, raw, MOS_ON_PKT_IN, MOS_NULL, cb) == 0
    assert mtcp_register_callback(mctx, raw, MOS_ON_ORPHAN, MOS_NULL, cb) == 0
    raises(errno.EINVAL, mtcp_register_callback, mctx, raw, MOS_ON_PKT_IN, MOS_HK_SND, cb)
    raises(errno.EINVAL, mtcp_register_callback, mctx, raw, MOS_ON_CONN_NEW_DATA, MOS_NULL, cb)
    raises(errno.EINVAL, mtcp_register_callback, mctx, raw, MOS_ON_CONN_START, MOS_HK_RCV, cb)


def test_define_event_einval(api):
    raises(errno.EINVAL, mtcp_define_event, 1 << 45, lambda *a: True, None)   # undefined base
    raises(errno.EINVAL, mtcp_define_event, 0, lambda *a: True, None)
    raises(errno.EINVAL, mtcp_define_event, MOS_ON_PKT_IN, None, None)       # no filter
    raises(errno.EINVAL, mtcp_define_event, MOS_ON_PKT_IN, "filter", None)


def test_alloc_event_bad_parent(api):
    raises(errno.EINVAL, mtcp_alloc_event, 1 << 45)
    raises(errno.EINVAL, mtcp_alloc_event, 0)
    assert mtcp_alloc_event(MOS_ON_PKT_IN) >= 1 << 32


def test_raise_event_einval(api):
    mctx = mtcp_create_context(0)
    ude = mtcp_define_event(MOS_ON_PKT_IN, lambda *a: True, None)
    child = mtcp_alloc_event(ude)
    # Built-in and defined events are raised by the stack, never by the application.
    raises(errno.EINVAL, mtcp_raise_event, mctx, MOS_ON_PKT_IN)
    raises(errno.EINVAL, mtcp_raise_event, mctx, ude)
    raises(errno.EINVAL, mtcp_raise_event, mctx, 1 << 50)
    # An allocated event outside any filter or callback: there is nothing to raise it on.
    raises(errno.EINVAL, mtcp_raise_event, mctx, child)
    mon = Monitor(cpu=1)
    mtcp_register_callback(mon.mctx, mon.sock, child, MOS_HK_SND, lambda *a: None)
    mon.run(Conv().full())
    raises(errno.EINVAL, mtcp_raise_event, mon.mctx, child)   # after the run, still outside


def test_settimer_einval(api):
    mctx = mtcp_create_context(0)
    raises(errno.EINVAL, mtcp_settimer, mctx, 1, 1.0, None)
    raises(errno.EINVAL, mtcp_settimer, mctx, 1, -1, lambda *a: None)
    raises(errno.EINVAL, mtcp_settimer, mctx, 1, "1s", lambda *a: None)
    assert mtcp_settimer(mctx, 1, (0, 500), lambda *a: None) == 0


# ------------------------------------------------------------- per-flow sockets
def test_uctx_ebadf(api):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    raises(errno.EBADF, mtcp_set_uctx, mctx, 99, object())
    raises(errno.EBADF, mtcp_get_uctx, mctx, 99)
    # A listener is no flow: it has no per-flow context.
    raises(errno.EBADF, mtcp_set_uctx, mctx, sock, object())
    raises(errno.EBADF, mtcp_get_uctx, mctx, sock)
    marker = object()
    got = in_flow(lambda mctx, s, side: (mtcp_set_uctx(mctx, s, marker), mtcp_get_uctx(mctx, s)),
                  mon=Monitor(cpu=1))
    assert got[1] is marker


def test_getpeername_ebadf(api):
    mctx = mtcp_create_context(0)
    raises(errno.EBADF, mtcp_getpeername, mctx, 1234, MOS_SIDE_CLI)


def test_getpeername_bad_side(api):
    result = in_flow(lambda mctx, s, side: mtcp_getpeername(mctx, s, 7))
    assert errno_of(result) == errno.EINVAL
    result = in_flow(lambda mctx, s, side: mtcp_getpeername(mctx, s, MOS_SIDE_BOTH),
                     mon=Monitor(cpu=1))
    assert result == [("10.0.0.1", 40000), ("10.0.0.2", 80)]


def test_getpeername_enotconn(api):
    mon, ended = ended_flow_socket()
    raises(errno.ENOTCONN, mtcp_getpeername, mon.mctx, mon.sock, MOS_SIDE_CLI)   # a listener
    raises(errno.ENOTCONN, mtcp_getpeername, mon.mctx, ended, MOS_SIDE_CLI)


# ----------------------------------------------------------------- bytestreams
def test_peek_ppeek_ebadf(api):
    mctx = mtcp_create_context(0)
    buf = bytearray(16)
    for bad in (-3, 555, None):
        raises(errno.EBADF, mtcp_peek, mctx, bad, MOS_SIDE_SVR, buf)
        raises(errno.EBADF, mtcp_ppeek, mctx, bad, MOS_SIDE_SVR, buf, 16, 0)


def test_peek_wrong_type_enotsock(api):
    # mtcp_peek(3): "ENOTSOCK The socket referred to by sockid has invalid type".
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    raw = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    raises(errno.ENOTSOCK, mtcp_peek, mctx, sock, MOS_SIDE_SVR, bytearray(8))
    raises(errno.ENOTSOCK, mtcp_peek, mctx, raw, MOS_SIDE_SVR, bytearray(8))


def test_ppeek_wrong_type_esocktnosupport(api):
    # mtcp_ppeek(3) (seed): "ESOCKTNOSUPPORT The socket referred to by sockid has invalid type".
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    raw = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    raises(errno.ESOCKTNOSUPPORT, mtcp_ppeek, mctx, sock, MOS_SIDE_SVR, bytearray(8), 8, 0)
    raises(errno.ESOCKTNOSUPPORT, mtcp_ppeek, mctx, raw, MOS_SIDE_SVR, bytearray(8), 8, 0)


def test_peek_ppeek_bad_side(api):
    def both(mctx, s, side):
        return [capture(mtcp_peek, mctx, s, bad, bytearray(8)) for bad in (MOS_SIDE_BOTH, -1, 5)] + \
               [capture(mtcp_ppeek, mctx, s, bad, bytearray(8), 8, 0) for bad in (MOS_SIDE_BOTH, 9)]
    for result in in_flow(both):
        assert errno_of(result) == errno.EINVAL


def test_peek_ppeek_buffering_off(api):
    def setup(mon):
        mon.setsockopt(MOS_SVRBUF, 0)

    def reads(mctx, s, side):
        return (capture(mtcp_peek, mctx, s, MOS_SIDE_SVR, bytearray(8)),
                capture(mtcp_ppeek, mctx, s, MOS_SIDE_SVR, bytearray(8), 8, 0),
                capture(mtcp_peek, mctx, s, MOS_SIDE_CLI, bytearray(8)))
    peek, ppeek, other = in_flow(reads, event=MOS_ON_CONN_END, hook=MOS_HK_RCV, setup=setup)
    assert errno_of(peek) == errno.EINVAL
    assert errno_of(ppeek) == errno.EINVAL
    assert other > 0      # the client side still buffers
    # Configured globally too (no_ring_buffers).
    mtcp_destroy()
    mtcp_init(None, no_ring_buffers=True)
    result = in_flow(lambda mctx, s, side: mtcp_peek(mctx, s, MOS_SIDE_SVR, bytearray(8)),
                     event=MOS_ON_CONN_END, hook=MOS_HK_RCV)
    assert errno_of(result) == errno.EINVAL


def test_ppeek_bad_offset(api):
    result = in_flow(lambda mctx, s, side: mtcp_ppeek(mctx, s, MOS_SIDE_SVR, bytearray(8), 8, -1),
                     event=MOS_ON_CONN_END, hook=MOS_HK_RCV)
    assert errno_of(result) == errno.EINVAL


def test_peek_ppeek_stopped_side_enotconn(api):
    def stop_then_read(mctx, s, side):
        mtcp_setsockopt(mctx, s, SOL_MONSOCKET, MOS_STOP_MON, MOS_SIDE_SVR)
        return (capture(mtcp_peek, mctx, s, MOS_SIDE_SVR, bytearray(8)),
                capture(mtcp_ppeek, mctx, s, MOS_SIDE_SVR, bytearray(8), 8, 0),
                capture(mtcp_ppeek, mctx, s, MOS_SIDE_CLI, bytearray(8), 8, 0))
    conv = Conv()
    conv.handshake()
    conv.data("s", b"hello")
    conv.data("c", b"world")
    peek, ppeek, other = in_flow(stop_then_read, hook=MOS_HK_RCV, conv=conv)
    assert errno_of(peek) == errno.ENOTCONN
    assert errno_of(ppeek) == errno.ENOTCONN
    assert other == 5     # the other side is still monitored


def test_peek_ppeek_ended_flow_enotconn(api):
    mon, ended = ended_flow_socket()
    raises(errno.ENOTCONN, mtcp_peek, mon.mctx, ended, MOS_SIDE_SVR, bytearray(8))
    raises(errno.ENOTCONN, mtcp_ppeek, mon.mctx, ended, MOS_SIDE_SVR, bytearray(8), 8, 0)


def test_ppeek_no_byte_at_offset_enodata(api):
    conv = Conv()
    conv.handshake()
    base = conv.nxt["c"]
    conv.data("c", b"0123", seq=base)
    conv.data("c", b"89", seq=base + 8)           # a hole at 4..8

    def reads(mctx, s, side):
        buf = bytearray(16)
        return [capture(mtcp_ppeek, mctx, s, MOS_SIDE_SVR, buf, 16, off) for off in (0, 2, 4, 7, 8, 10, 1000)]
    got = in_flow(reads, event=MOS_ON_CONN_END, hook=MOS_HK_RCV, conv=conv)
    assert got[0] == 4 and got[1] == 2      # up to the end of the fragment holding off
    assert errno_of(got[2]) == errno.ENODATA and errno_of(got[3]) == errno.ENODATA
    assert got[4] == 2
    assert errno_of(got[5]) == errno.ENODATA and errno_of(got[6]) == errno.ENODATA


def test_peek_nothing_new_returns_zero(api):
    def reads(mctx, s, side):
        buf = bytearray(64)
        first = mtcp_peek(mctx, s, MOS_SIDE_SVR, buf)
        return first, bytes(buf[:first]), mtcp_peek(mctx, s, MOS_SIDE_SVR, buf)
    first, data, second = in_flow(reads, event=MOS_ON_CONN_END, hook=MOS_HK_RCV)
    assert data == b"GET / HTTP/1.0\r\n\r\n" and first == len(data)
    assert second == 0


def test_peek_overrun_enodata_lost_then_continues(api):
    mon = Monitor()
    mon.setsockopt(MOS_SVRBUF, 16)
    conv = Conv()
    conv.handshake()
    conv.data("c", b"a" * 10)
    conv.data("c", b"b" * 10)
    conv.data("c", b"c" * 3)
    results = []

    def at_end(mctx, s, side, ev, arg):
        if side == MOS_SIDE_SVR:
            buf = bytearray(64)
            results.append(capture(mtcp_peek, mctx, s, side, buf))
            n = mtcp_peek(mctx, s, side, buf)
            results.append(bytes(buf[:n]))
            results.append(mtcp_peek(mctx, s, side, buf))
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_END, MOS_HK_RCV, at_end)
    mon.run(conv)
    exc, data, rest = results
    assert isinstance(exc, PeekOverrunError) and isinstance(exc, OSError)
    assert exc.errno == errno.ENODATA and exc.lost == 7
    assert data == b"aaa" + b"b" * 10 + b"ccc"   # from the oldest byte still held
    assert rest == 0


# --------------------------------------------------------------- socket options
def test_getsockopt_setsockopt_ebadf(api):
    mctx = mtcp_create_context(0)
    raises(errno.EBADF, mtcp_getsockopt, mctx, 31337, SOL_MONSOCKET, MOS_TCP_STATE_CLI)
    raises(errno.EBADF, mtcp_setsockopt, mctx, 31337, SOL_MONSOCKET, MOS_CLIBUF, 0)


def test_getsockopt_listener_or_raw_enotsock(api):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    raw = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    for s in (sock, raw):
        for opt in (MOS_TCP_STATE_CLI, MOS_TCP_STATE_SVR, MOS_INFO_CLIBUF, MOS_FRAGINFO_SVRBUF):
            raises(errno.ENOTSOCK, mtcp_getsockopt, mctx, s, SOL_MONSOCKET, opt)
    # SO_ERROR is answered for any socket.
    assert mtcp_getsockopt(mctx, sock, SOL_SOCKET, SO_ERROR) == 0


def test_getsockopt_enosys(api):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    raises(errno.ENOSYS, mtcp_getsockopt, mctx, sock, 6, MOS_TCP_STATE_CLI)        # IPPROTO_TCP
    raises(errno.ENOSYS, mtcp_getsockopt, mctx, sock, SOL_SOCKET, 2)               # SO_REUSEADDR

    def opts(mctx, s, side):
        return (capture(mtcp_getsockopt, mctx, s, SOL_MONSOCKET, 0x7777),
                capture(mtcp_getsockopt, mctx, s, 0x1234, MOS_TCP_STATE_CLI),
                capture(mtcp_getsockopt, mctx, s, SOL_SOCKET, SO_ERROR))
    unknown_opt, unknown_level, so_error = in_flow(opts, mon=Monitor(cpu=1))
    assert errno_of(unknown_opt) == errno.ENOSYS
    assert errno_of(unknown_level) == errno.ENOSYS
    assert so_error == 0


def test_setsockopt_enotsock(api):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    raw = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    raises(errno.ENOTSOCK, mtcp_setsockopt, mctx, raw, SOL_MONSOCKET, MOS_CLIBUF, 1024)
    raises(errno.ENOTSOCK, mtcp_setsockopt, mctx, sock, SOL_MONSOCKET, MOS_STOP_MON, MOS_SIDE_CLI)
    # Buffer sizes and overlap policies are settable on a listener (its new flows).
    assert mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_CLIBUF, 1024) == 0
    assert mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVROVERLAP, MOS_OVERLAP_POLICY_LAST) == 0


def test_setsockopt_enosys(api):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    raises(errno.ENOSYS, mtcp_setsockopt, mctx, sock, SOL_SOCKET, SO_ERROR, 0)
    raises(errno.ENOSYS, mtcp_setsockopt, mctx, sock, 0x4242, MOS_CLIBUF, 0)
    raises(errno.ENOSYS, mtcp_setsockopt, mctx, sock, SOL_MONSOCKET, 0x7777, 0)
    raises(errno.ENOSYS, mtcp_setsockopt, mctx, sock, SOL_MONSOCKET, MOS_TCP_STATE_CLI, 0)


def test_setsockopt_bad_values(api):
    mctx = mtcp_create_context(0)
    sock = mtcp_socket(mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    for bad in (-1, "big", None, True, 1.5):
        raises(errno.EINVAL, mtcp_setsockopt, mctx, sock, SOL_MONSOCKET, MOS_SVRBUF, bad)
    for bad in (2, -1, None):
        raises(errno.EINVAL, mtcp_setsockopt, mctx, sock, SOL_MONSOCKET, MOS_CLIOVERLAP, bad)
    result = in_flow(lambda mctx, s, side: mtcp_setsockopt(mctx, s, SOL_MONSOCKET, MOS_STOP_MON, 3),
                     mon=Monitor(cpu=1))
    assert errno_of(result) == errno.EINVAL


def test_setsockopt_bufsize_after_payload(api):
    def resize(mctx, s, side):
        return (capture(mtcp_setsockopt, mctx, s, SOL_MONSOCKET, MOS_SVRBUF, 4096),
                capture(mtcp_setsockopt, mctx, s, SOL_MONSOCKET, MOS_CLIBUF, 4096),
                capture(mtcp_setsockopt, mctx, s, SOL_MONSOCKET, MOS_SVRBUF, 0))
    # At HK_RCV of the client's first data segment, the server side has its first bytes.
    svr, cli, off = in_flow(resize, hook=MOS_HK_RCV)
    assert errno_of(svr) == errno.EINVAL
    assert cli == 0      # nothing buffered on the client side yet
    assert off == 0      # turning buffering off is always allowed


def test_socket_of_another_context_eperm(api):
    a = Monitor(cpu=0)
    mtcp_socket(a.mctx, AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    theirs = mtcp_socket(a.mctx, AF_INET, MOS_SOCK_MONITOR_STREAM, 0)
    b = mtcp_create_context(1)
    assert theirs not in (mtcp_socket(b, AF_INET, MOS_SOCK_MONITOR_STREAM, 0),)
    buf = bytearray(8)
    raises(errno.EPERM, mtcp_getsockopt, b, theirs, SOL_MONSOCKET, MOS_TCP_STATE_CLI)
    raises(errno.EPERM, mtcp_setsockopt, b, theirs, SOL_MONSOCKET, MOS_CLIBUF, 0)
    raises(errno.EPERM, mtcp_peek, b, theirs, MOS_SIDE_CLI, buf)
    raises(errno.EPERM, mtcp_ppeek, b, theirs, MOS_SIDE_CLI, buf, 8, 0)
    raises(errno.EPERM, mtcp_getlastpkt, b, theirs, MOS_SIDE_CLI, PktInfo())
    raises(errno.EPERM, mtcp_setlastpkt, b, theirs, MOS_SIDE_CLI, 0, b"", 0, MOS_DROP)
    raises(errno.EPERM, mtcp_get_uctx, b, theirs)
    raises(errno.EPERM, mtcp_set_uctx, b, theirs, 1)
    raises(errno.EPERM, mtcp_close, b, theirs)


# ------------------------------------------------------------------- packets
def test_getlastpkt_ebadf(api):
    mctx = mtcp_create_context(0)
    raises(errno.EBADF, mtcp_getlastpkt, mctx, 404, MOS_SIDE_CLI, PktInfo())


def test_getlastpkt_einval(api):
    def bad(mctx, s, side):
        return (capture(mtcp_getlastpkt, mctx, s, MOS_SIDE_BOTH, PktInfo()),
                capture(mtcp_getlastpkt, mctx, s, 3, PktInfo()),
                capture(mtcp_getlastpkt, mctx, s, side, None),
                capture(mtcp_getlastpkt, mctx, s, side, bytearray(64)))
    for result in in_flow(bad):
        assert errno_of(result) == errno.EINVAL


def test_getlastpkt_enodata_without_packet(api):
    mon = Monitor()
    results = {}
    flow = []

    def getlast(mctx, s, side):
        return capture(mtcp_getlastpkt, mctx, s, side, PktInfo())

    def on_start(mctx, s, side, ev, arg):
        flow.append(s)
        results["CONN_START"] = getlast(mctx, s, side)
        mtcp_settimer(mctx, 5, 0.0001, lambda mctx, tid, side_, ev_, arg_: results.setdefault(
            "timer", getlast(mctx, flow[0], MOS_SIDE_CLI)))

    def on_data(mctx, s, side, ev, arg):
        results.setdefault("CONN_NEW_DATA", getlast(mctx, s, side))

    def on_end(mctx, s, side, ev, arg):
        results.setdefault("CONN_END", getlast(mctx, s, side))
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_START, MOS_HK_SND, on_start)
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_NEW_DATA, MOS_NULL, on_data)
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_END, MOS_HK_RCV, on_end)
    mon.run(Conv().full())
    # CONN_START is raised by the SYN; CONN_NEW_DATA and CONN_END have the packet that raised
    # them, as in mOS (test_mos_parity); a timer has none.
    for name in ("CONN_START", "CONN_NEW_DATA", "CONN_END"):
        assert results[name] == 0, name
    assert errno_of(results["timer"]) == errno.ENODATA
    # Outside any callback there is no packet either (a listener asks for the orphan).
    raises(errno.ENODATA, mtcp_getlastpkt, mon.mctx, mon.sock, MOS_SIDE_BOTH, PktInfo())


def test_setlastpkt_ebadf(api):
    mctx = mtcp_create_context(0)
    raises(errno.EBADF, mtcp_setlastpkt, mctx, 404, MOS_SIDE_CLI, 0, b"", 0, MOS_DROP)


def test_setlastpkt_enodata_without_packet(api):
    result = in_flow(lambda mctx, s, side: mtcp_setlastpkt(mctx, s, side, 0, b"", 0, MOS_DROP),
                     event=MOS_ON_CONN_NEW_DATA, hook=MOS_NULL)
    assert errno_of(result) == errno.ENODATA
    result = in_flow(lambda mctx, s, side: mtcp_setlastpkt(mctx, s, side, 0, b"", 0, MOS_DROP),
                     event=MOS_ON_CONN_END, hook=MOS_HK_SND, mon=Monitor(cpu=1))
    assert errno_of(result) == errno.ENODATA


def test_setlastpkt_listener_esocktnosupport(api):
    mon = Monitor()
    results = []

    def on_start(mctx, s, side, ev, arg):
        results.append(capture(mtcp_setlastpkt, mctx, mon.sock, side, 0, b"", 0, MOS_DROP))
    mtcp_register_callback(mon.mctx, mon.sock, MOS_ON_CONN_START, MOS_HK_SND, on_start)
    mon.run(Conv().full())
    assert errno_of(results[0]) == errno.ESOCKTNOSUPPORT


def test_setlastpkt_stopped_side_enotconn(api):
    def stop_then_edit(mctx, s, side):
        mtcp_setsockopt(mctx, s, SOL_MONSOCKET, MOS_STOP_MON, side)
        return capture(mtcp_setlastpkt, mctx, s, side, 0, b"", 0, MOS_DROP)
    assert errno_of(in_flow(stop_then_edit)) == errno.ENOTCONN


SETLAST_BAD_OPTIONS = {     # name: (option, errno); not exactly one action is EAGAIN (mOS)
    "nothing": (0, errno.EAGAIN),
    "region only": (MOS_TCP_PAYLOAD, errno.EAGAIN),
    "drop and overwrite": (MOS_DROP | MOS_OVERWRITE | MOS_TCP_PAYLOAD, errno.EAGAIN),
    "drop and chomp": (MOS_DROP | MOS_CHOMP | MOS_TCP_PAYLOAD, errno.EAGAIN),
    "overwrite and insert": (MOS_OVERWRITE | MOS_INSERT | MOS_TCP_PAYLOAD, errno.EAGAIN),
    "overwrite without region": (MOS_OVERWRITE, errno.EINVAL),
    "overwrite, checksum only": (MOS_OVERWRITE | MOS_UPDATE_TCP_CHKSUM, errno.EINVAL),
    "overwrite two regions": (MOS_OVERWRITE | MOS_TCP_PAYLOAD | MOS_TCP_HDR, errno.EINVAL),
    "overwrite four regions": (MOS_OVERWRITE | MOS_ETH_HDR | MOS_IP_HDR | MOS_TCP_HDR
                               | MOS_TCP_PAYLOAD, errno.EINVAL),
}


def _edit_attempts(attempts):
    """A callback body: try each (offset, data, datalen, option) on the data segment, and
    return the results plus the payload afterwards (unchanged when all were refused)."""
    def body(mctx, s, side):
        results = [capture(mtcp_setlastpkt, mctx, s, side, off, data, dlen, opt)
                   for off, data, dlen, opt in attempts]
        pinfo = PktInfo()
        mtcp_getlastpkt(mctx, s, side, pinfo)
        return results, pinfo.frame()
    return body


def test_setlastpkt_option_combinations_eagain_einval(api):
    attempts = [(0, b"XX", 2, opt) for opt, _ in SETLAST_BAD_OPTIONS.values()]
    conv = Conv().full()
    original = conv.frames[3][1]
    mon = Monitor()
    results, frame = in_flow(_edit_attempts(attempts), conv=conv, mon=mon)
    for (name, (_, err)), result in zip(SETLAST_BAD_OPTIONS.items(), results):
        assert errno_of(result) == err, name
    assert frame == original
    assert mon.out[3][1] == original          # forwarded, unchanged


def test_setlastpkt_region_overrun_einval(api):
    # The data segment: 14-byte Ethernet, 20-byte IP and TCP headers, 18 bytes of payload.
    ow = MOS_OVERWRITE
    attempts = [
        (0, b"x" * 15, 15, ow | MOS_ETH_HDR),
        (13, b"xx", 2, ow | MOS_ETH_HDR),
        (19, b"xx", 2, ow | MOS_IP_HDR),
        (0, b"x" * 21, 21, ow | MOS_TCP_HDR),
        (17, b"xx", 2, ow | MOS_TCP_PAYLOAD),
        (18, b"x", 1, ow | MOS_TCP_PAYLOAD),
        (0, b"x" * 19, 19, ow | MOS_TCP_PAYLOAD),
        (-1, b"x", 1, ow | MOS_TCP_PAYLOAD),
        (0, b"xx", 3, ow | MOS_TCP_PAYLOAD),       # datalen beyond the data given
        (0, b"xx", -1, ow | MOS_TCP_PAYLOAD),
    ]
    conv = Conv().full()
    original = conv.frames[3][1]
    results, frame = in_flow(_edit_attempts(attempts), conv=conv)
    for attempt, result in zip(attempts, results):
        assert errno_of(result) == errno.EINVAL, attempt
    assert frame == original
    # Inside the region is fine: the last byte of the payload.
    results, frame = in_flow(_edit_attempts([(17, b"!", 1, ow | MOS_TCP_PAYLOAD)]),
                             conv=Conv().full(), mon=Monitor(cpu=1))
    assert results == [0] and frame[-1:] == b"!"


def test_setlastpkt_segment_without_payload_has_no_payload_region(api):
    def body(mctx, s, side):
        return capture(mtcp_setlastpkt, mctx, s, side, 0, b"x", 1, MOS_OVERWRITE | MOS_TCP_PAYLOAD)
    # The first state change at HK_RCV is the server's, on the SYN: no payload.
    result = in_flow(body, event=MOS_ON_TCP_STATE_CHANGE, hook=MOS_HK_RCV)
    assert errno_of(result) == errno.EINVAL


def test_setlastpkt_chomp_insert_refused(api):
    # No region, a header region (Ethernet: EACCES as in mOS), past the payload: refused,
    # and the frame leaves as it came.
    attempts = [(0, b"xx", 2, MOS_CHOMP), (0, b"xx", 2, MOS_INSERT),
                (0, b"xx", 2, MOS_CHOMP | MOS_ETH_HDR), (0, b"xx", 2, MOS_INSERT | MOS_ETH_HDR),
                (0, b"xx", 2, MOS_INSERT | MOS_IP_HDR), (0, b"xx", 2, MOS_CHOMP | MOS_TCP_HDR),
                (17, b"xx", 2, MOS_CHOMP | MOS_TCP_PAYLOAD),
                (19, b"xx", 2, MOS_INSERT | MOS_TCP_PAYLOAD),
                (0, None, None, MOS_CHOMP | MOS_TCP_PAYLOAD),
                (0, b"xx", 3, MOS_INSERT | MOS_TCP_PAYLOAD)]
    expected = [errno.EINVAL, errno.EINVAL, errno.EACCES, errno.EACCES] + [errno.EINVAL] * 6
    conv = Conv().full()
    original = conv.frames[3][1]
    mon = Monitor()
    results, frame = in_flow(_edit_attempts(attempts), conv=conv, mon=mon)
    assert [errno_of(result) for result in results] == expected
    assert frame == original and mon.out[3][1] == original

    def on_syn(mctx, s, side):
        return capture(mtcp_setlastpkt, mctx, s, side, 0, b"x", 1, MOS_INSERT | MOS_TCP_PAYLOAD)
    # The first state change at HK_RCV is the server's, on the SYN: no payload to resize.
    assert errno_of(in_flow(on_syn, event=MOS_ON_TCP_STATE_CHANGE, hook=MOS_HK_RCV,
                            mon=Monitor(cpu=1))) == errno.EINVAL


def test_setlastpkt_chomp_insert_raw_socket_einval(api):
    mon = Monitor(cpu=1)
    raw = mtcp_socket(mon.mctx, AF_INET, MOS_SOCK_MONITOR_RAW, 0)
    results = []

    def cb(mctx, sock, side, event, arg):
        pinfo = PktInfo()
        mtcp_getlastpkt(mctx, sock, side, pinfo)
        if pinfo.payloadlen:
            results.append(capture(mtcp_setlastpkt, mctx, sock, side, 0, b"x", 1,
                                   MOS_INSERT | MOS_TCP_PAYLOAD))
    mtcp_register_callback(mon.mctx, raw, MOS_ON_PKT_IN, MOS_NULL, cb)
    mon.run(Conv().full())
    assert results and all(errno_of(result) == errno.EINVAL for result in results)


def test_setlastpkt_unparseable_edit_einval(api):
    # IHL 1 would make the IP header unparseable: refused, and the frame stays as it was.
    conv = Conv().full()
    original = conv.frames[3][1]
    results, frame = in_flow(_edit_attempts([(0, b"\x41", 1, MOS_OVERWRITE | MOS_IP_HDR)]),
                             conv=conv)
    assert errno_of(results[0]) == errno.EINVAL
    assert frame == original


def test_sendpkt_null_pinfo_eacces(api):
    result = in_flow(lambda mctx, s, side: mtcp_sendpkt(mctx, s, None))
    assert errno_of(result) == errno.EACCES
    result = in_flow(lambda mctx, s, side: mtcp_sendpkt(mctx, s, b"frame"), mon=Monitor(cpu=1))
    assert errno_of(result) == errno.EACCES


def test_sendpkt_bad_headers_enodata(api):
    def body(mctx, s, side):
        results = [capture(mtcp_sendpkt, mctx, s, PktInfo())]      # no headers at all

        def variant(edit):
            pinfo = PktInfo()
            mtcp_getlastpkt(mctx, s, side, pinfo)
            edit(pinfo)
            results.append(capture(mtcp_sendpkt, mctx, s, pinfo))
        variant(lambda p: setattr(p, "iph", memoryview(b"")))                 # no IP header
        variant(lambda p: setattr(p, "tcph", None))                           # no TCP header
        variant(lambda p: setattr(p, "iph", memoryview(b"\x45" + bytes(9))))  # IP header cut short
        variant(lambda p: p.iph.__setitem__(0, 0x75))                         # IP version 7
        variant(lambda p: p.iph.__setitem__(9, 17))                           # UDP, not TCP
        variant(lambda p: p.tcph.__setitem__(12, 0x20))                       # TCP data offset 2
        variant(lambda p: setattr(p, "tcph", p.tcph[:8]))                     # TCP header cut short
        return results
    mon = Monitor()
    results = in_flow(body, mon=mon)
    for result in results:
        assert errno_of(result) == errno.ENODATA
    assert len(mon.out) == len(Conv().full().frames)      # nothing was sent


def test_sendpkt_reset_conn_ebadf(api):
    mctx = mtcp_create_context(0)
    raises(errno.EBADF, mtcp_sendpkt, mctx, 808, PktInfo())
    raises(errno.EBADF, mtcp_reset_conn, mctx, 808)


def test_reset_conn_listener_or_raw_einval(api):
    # mos_api.c: a listener is connected to no flow (EINVAL); a raw socket neither.
    mctx = mtcp_create_context(0)
    for kind in (MOS_SOCK_MONITOR_STREAM, MOS_SOCK_MONITOR_RAW):
        raises(errno.EINVAL, mtcp_reset_conn, mctx, mtcp_socket(mctx, AF_INET, kind, 0))


def test_sendpkt_valid_copy_is_sent(api):
    """The control case of test_sendpkt_bad_headers_enodata: an unmodified copy is sent."""
    def body(mctx, s, side):
        pinfo = PktInfo()
        mtcp_getlastpkt(mctx, s, side, pinfo)
        return mtcp_sendpkt(mctx, s, pinfo)
    mon = Monitor()
    assert in_flow(body, mon=mon) == 0
    assert len(mon.out) == len(Conv().full().frames) + 1
    assert all(checksums_ok(frame) for _, frame in mon.out)
