"""Subscriptions (an extension): session records for a filter, with flows handed back to the
kernel once no subscription needs more of them (docs/subscriptions.md).

    mosx_subscribe(mctx, 'tls and tls.sni ~ "example" and tcp.dport == 443', callback)

The runtime is written on the mOS API: one monitor stream socket of its own (bytestream
buffers on, no mid-stream pickup: a session needs its start), PKT_IN at MOS_HK_RCV to
read the receiving side's new bytes with mtcp_peek (in the order they came), CONN_END to
close the parsers, MOSX_BYPASS to hand a flow over. UDP flows (DNS) come through the
datagram table's session hook (the
mOS API has no UDP). Each flow is parsed once, whatever the number of subscriptions:

* at a flow's first bytes the session type is told: DNS by port (``dns_ports``), TLS by a
  handshake record header from the client, HTTP by a request method from the client;
* the subscriptions of that type whose filter may still match (three-valued over the fields
  known so far: mosxdp/sessions/subfilter.py) keep the flow; as fields become known (the
  ClientHello's SNI and JA4, the ServerHello's version and cipher) the others drop out;
* a record is given to each subscription whose filter it matches (all fields known), a
  weird to each subscription still following the flow;
* the flow is released when no subscription is left, when the parser is ``done`` (TLS:
  the handshake is over; HTTP: a tunnel started), after ``max_transactions`` HTTP or DNS
  transactions, or at a gap in a stream; released, it is handed to the kernel
  (MOSX_BYPASS; UDP: the datagram table's bypass verdict) unless ``bypass`` is off. A flow
  of no session type is released at its first bytes. The kernel's counters join the
  flow's before its end, so conn.log (mosx_conn_record) stays exact.
"""
import errno

from .context import _error, _own_stack


def _runtime(mctx):
    runtime = getattr(mctx, "subscriptions", None)
    if runtime is None:
        # Imported here: the session parsers load only for a run that uses them.
        from .session_runtime import SessionRuntime
        runtime = mctx.subscriptions = SessionRuntime(mctx)
    return runtime


def mosx_session_options(mctx, *, bypass=None, max_transactions=None, dns_ports=None):
    """Options of the context's subscriptions (before the run starts). ``bypass``: hand a
    flow to the kernel once no subscription needs more of it (default True; False: only
    stop parsing it). ``max_transactions``: follow an HTTP or DNS-over-TCP flow (or a
    DNS-over-UDP flow) for at most that many transactions (default: to its end).
    ``dns_ports``: the ports whose TCP and UDP flows are DNS (default 53, 5353, 5355).
    Errors: EINVAL naming the bad value."""
    _own_stack(mctx)
    runtime = _runtime(mctx)
    if bypass is not None:
        if not isinstance(bypass, bool):
            raise _error(errno.EINVAL, f"bypass {bypass!r} is not True or False")
        runtime.bypass = bypass
    if max_transactions is not None:
        if type(max_transactions) is not int or max_transactions < 1:
            raise _error(errno.EINVAL, f"max_transactions {max_transactions!r} is not an "
                         "integer >= 1 or None")
        runtime.max_transactions = max_transactions
    if dns_ports is not None:
        ports = tuple(dns_ports) if not isinstance(dns_ports, (str, bytes)) else None
        if not ports or any(type(p) is not int or not 0 < p < 65536 for p in ports):
            raise _error(errno.EINVAL, f"dns_ports {dns_ports!r} is not a list of ports "
                         "1 to 65535")
        runtime.dns_ports = frozenset(ports)
    if runtime.sock is not None:
        runtime._watch_udp()


def mosx_subscribe(mctx, filter, callback):
    """Subscribe ``callback(mctx, event)`` to the sessions ``filter`` selects (a
    SessionEvent per record: docs/subscriptions.md has the grammar and the fields).
    Returns the subscription's id. Errors: EINVAL (a filter that does not parse, the
    message naming its token; a callback that is not callable)."""
    _own_stack(mctx)
    if not callable(callback):
        raise _error(errno.EINVAL, f"callback {callback!r} is not callable")
    from ..sessions.subfilter import SubscriptionFilterError, compile_subscription
    from .session_runtime import Subscription
    try:
        compiled = compile_subscription(filter)
    except SubscriptionFilterError as exc:
        raise _error(errno.EINVAL, f"subscription filter {filter!r}: {exc}") from None
    runtime = _runtime(mctx)
    sub = Subscription(len(runtime.subs) + 1, compiled, callback)
    runtime.subs.append(sub)
    if runtime.sock is None:
        runtime.start()
    return sub.id


def mosx_session_counts(mctx):
    """The subscriptions' counters: flows followed, released, bypassed, records given,
    weirds seen."""
    return dict(_runtime(mctx).counts)
