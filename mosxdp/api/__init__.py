"""The mOS monitoring API (mtcp_*), a thin adapter over mosxdp.core.

Same names, argument order and constants as C. Where C returns -1 and sets
errno, these functions raise OSError with that errno and a message saying
what was wrong. Out-parameters map like Python's socket module: caller
buffers are filled and a count returned (mtcp_peek, mtcp_ppeek), caller
structs are filled (mtcp_getlastpkt), getsockopt returns the value.

One module per group of calls (docs/internal/architecture.md lists where each call is):
context (init, contexts), sockets (sockets, filters, options), events (callbacks, events,
timers), streams (peek), packets (the packet being processed), outputs (files and
sinks an app writes: an extension), datagrams (UDP and ICMP flows: an extension),
records (logs as JSON lines or Zeek TSV, Community ID, conn.log records: extensions),
subscriptions (session records for a filter, flows handed back to the kernel: an extension).
"""
from .datagrams import mosx_watch_datagrams
from .context import (MtcpContext, mtcp_app_join, mtcp_create_context, mtcp_destroy,
                      mtcp_destroy_context, mtcp_get_connection_cnt, mtcp_getconf, mtcp_init,
                      mtcp_setconf)
from .events import (mtcp_alloc_event, mtcp_cb_get_ts, mtcp_define_event, mtcp_raise_event,
                     mtcp_register_callback, mtcp_settimer, mtcp_unregister_callback)
from .outputs import (MOSX_SINK_HELP, mosx_open_outdir, mosx_open_output, mosx_open_report,
                      mosx_open_sink, mosx_sum_counts)
from .records import (MOSX_CONN_FIELDS, mosx_community_id, mosx_conn_record, mosx_conn_uid,
                      mosx_frame_count,
                      mosx_open_log)
from .packets import (mtcp_clonepkt, mtcp_getlastpkt, mtcp_reset_conn, mtcp_sendpkt,
                      mtcp_setlastpkt)
from .sockets import (mtcp_bind_monitor_filter, mtcp_close, mtcp_get_uctx, mtcp_getpeername,
                      mtcp_getsockopt, mtcp_set_uctx, mtcp_setsockopt, mtcp_socket)
from .streams import PeekOverrunError, mtcp_peek, mtcp_ppeek
from .subscriptions import mosx_session_counts, mosx_session_options, mosx_subscribe

__all__ = [
    "mtcp_init", "mtcp_destroy", "mtcp_getconf", "mtcp_setconf", "mtcp_create_context",
    "mtcp_destroy_context", "mtcp_app_join", "mtcp_socket", "mtcp_close",
    "mtcp_bind_monitor_filter", "mtcp_register_callback", "mtcp_define_event",
    "mtcp_alloc_event", "mtcp_raise_event", "mtcp_set_uctx", "mtcp_get_uctx", "mtcp_peek",
    "mtcp_ppeek", "mtcp_getsockopt", "mtcp_setsockopt", "mtcp_getlastpkt", "mtcp_setlastpkt",
    "mtcp_sendpkt", "mtcp_reset_conn", "mtcp_getpeername", "mtcp_settimer", "mtcp_cb_get_ts",
    "mtcp_unregister_callback", "mtcp_clonepkt", "mtcp_get_connection_cnt",
    "mosx_open_output", "mosx_open_sink", "mosx_open_outdir", "mosx_open_report",
    "mosx_sum_counts", "MOSX_SINK_HELP",
    "mosx_watch_datagrams", "mosx_open_log", "mosx_community_id", "mosx_frame_count",
    "mosx_conn_record", "mosx_conn_uid", "MOSX_CONN_FIELDS", "mosx_subscribe", "mosx_session_options",
    "mosx_session_counts",
    "PeekOverrunError", "MtcpContext",
]
