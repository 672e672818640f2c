"""Monitor sockets: mtcp_socket, mtcp_close, mtcp_bind_monitor_filter, mtcp_set_uctx,
mtcp_get_uctx, mtcp_getpeername, mtcp_getsockopt and mtcp_setsockopt."""
import errno
import ipaddress
import socket

from .. import constants as C
from ..core.filters import FilterError, compile_filter
from ..types import FlowStats, MonitorFilter, TcpBufInfo, TcpRingFragment
from .context import _error, _flow_sock, _own_stack, _side, _sock, _stack


_DOMAINS = {socket.AF_INET: 4, socket.AF_INET6: 6, socket.AF_UNSPEC: 0}


def mtcp_socket(mctx, domain, type, protocol=0):
    stack = _stack(mctx)
    if not isinstance(domain, int) or domain not in _DOMAINS:
        raise _error(errno.EAFNOSUPPORT, f"domain {domain!r} is not AF_INET, AF_INET6 or AF_UNSPEC")
    if len(stack.listeners) + len(stack.raw_sockets) >= 1024:
        raise _error(errno.ENFILE, "no monitor socket descriptor left (1024 listening/raw sockets)")
    sock_id = stack.new_socket_id()
    if type == C.MOS_SOCK_MONITOR_STREAM:
        stack.add_listener(sock_id, _DOMAINS[domain])
    elif type == C.MOS_SOCK_MONITOR_RAW:
        stack.add_raw_socket(sock_id, _DOMAINS[domain])
    else:
        raise _error(errno.EINVAL, f"socket type {type!r} is not MOS_SOCK_MONITOR_STREAM or "
                     "MOS_SOCK_MONITOR_RAW")
    return sock_id


def mtcp_close(mctx, sock):
    stack = _stack(mctx)
    stack.close_socket(_sock(stack, sock))
    return 0


def _compile(text, raw):
    if text is not None and not isinstance(text, str):
        raise _error(errno.EINVAL, f"a filter is a string or None, not {type(text).__name__}")
    try:
        compiled = compile_filter(text, raw=raw)
    except FilterError as exc:
        raise _error(errno.EINVAL, str(exc)) from None
    return None if compiled.matches_everything else compiled


def mtcp_bind_monitor_filter(mctx, sock, ft):
    stack = _stack(mctx)
    sock_obj = _sock(stack, sock)
    if ft is None:
        return 0
    if not isinstance(ft, MonitorFilter):
        raise _error(errno.EINVAL, "ft must be a monitor_filter (mosxdp.MonitorFilter) or None")
    if sock_obj.kind == "listener":
        if ft.raw_pkt_filter is not None:
            raise _error(errno.ENOPROTOOPT, "raw_pkt_filter is for MOS_SOCK_MONITOR_RAW sockets")
        syn = _compile(ft.stream_syn_filter, raw=False)
        orphan = _compile(ft.stream_orphan_filter, raw=False)
        sock_obj.syn_filter, sock_obj.orphan_filter = syn, orphan
    elif sock_obj.kind == "raw":
        if ft.stream_syn_filter is not None or ft.stream_orphan_filter is not None:
            raise _error(errno.ENOPROTOOPT, "stream filters are for MOS_SOCK_MONITOR_STREAM sockets")
        sock_obj.raw_filter = _compile(ft.raw_pkt_filter, raw=True)
    else:
        raise _error(errno.ENOPROTOOPT, f"socket {sock} is a flow socket: bind filters to its "
                     "listening socket")
    if getattr(mctx.engine, "filters_changed", None) is not None:
        mctx.engine.filters_changed()
    return 0


def mtcp_set_uctx(mctx, sock, uctx):
    stack = _own_stack(mctx)
    _flow_sock(stack, sock, errno.EBADF).uctx = uctx


def mtcp_get_uctx(mctx, sock):
    stack = _own_stack(mctx)
    return _flow_sock(stack, sock, errno.EBADF).uctx


def _peer(flow, side):
    addr = flow.addrs[side]
    port = flow.ports_tcp[side]
    if len(addr) == 4:     # inet_ntop writes IPv4 as ipaddress does, at a tenth of the cost
        return (socket.inet_ntop(socket.AF_INET, addr), port)
    return (str(ipaddress.ip_address(addr)), port)


def mtcp_getpeername(mctx, sock, side):
    stack = _own_stack(mctx)
    sock_obj = _flow_sock(stack, sock, errno.ENOTCONN)
    if side == C.MOS_SIDE_BOTH:
        return [_peer(sock_obj.flow, C.MOS_SIDE_CLI), _peer(sock_obj.flow, C.MOS_SIDE_SVR)]
    return _peer(sock_obj.flow, _side(side))


def _buf_info(flow_side, sock_obj, side):
    base = flow_side.peer_base or 0
    ring = flow_side.buf
    info = TcpBufInfo()
    info.tcpbi_init_seq = base
    info.tcpbi_last_byte_read = (base + sock_obj.peek_off[side]) & 0xFFFFFFFF
    info.tcpbi_next_byte_expected = (base + flow_side.rcv_nxt) & 0xFFFFFFFF
    end = ring.last_received_end if ring is not None else flow_side.max_end
    info.tcpbi_last_byte_received = (base + max(end, flow_side.rcv_nxt)) & 0xFFFFFFFF
    return info


def mtcp_getsockopt(mctx, sock, level, optname):
    stack = _stack(mctx)
    sock_obj = _sock(stack, sock)
    if level == C.SOL_SOCKET:
        if optname != C.SO_ERROR:
            raise _error(errno.ENOSYS, f"option {optname!r} is not implemented at SOL_SOCKET")
        if sock_obj.kind != "flow":
            return 0
        return sock_obj.so_error
    if level != C.SOL_MONSOCKET:
        raise _error(errno.ENOSYS, f"level {level!r} is not SOL_SOCKET or SOL_MONSOCKET")
    flow = _option_flow(mctx, sock, sock_obj)
    if optname in (C.MOS_FRAGINFO_CLIBUF, C.MOS_FRAGINFO_SVRBUF):
        side = C.MOS_SIDE_CLI if optname == C.MOS_FRAGINFO_CLIBUF else C.MOS_SIDE_SVR
        ring = flow.sides[side].buf
        if ring is None:
            return []
        return [TcpRingFragment(offset, length) for offset, length in ring.fragments()]
    if optname in (C.MOS_INFO_CLIBUF, C.MOS_INFO_SVRBUF):
        side = C.MOS_SIDE_CLI if optname == C.MOS_INFO_CLIBUF else C.MOS_SIDE_SVR
        return _buf_info(flow.sides[side], sock_obj, side)
    if optname == C.MOS_TCP_STATE_CLI:
        return C.TcpState(flow.sides[C.MOS_SIDE_CLI].state)
    if optname == C.MOS_TCP_STATE_SVR:
        return C.TcpState(flow.sides[C.MOS_SIDE_SVR].state)
    if optname in (C.MOS_CLIBUF, C.MOS_SVRBUF):
        side = C.MOS_SIDE_CLI if optname == C.MOS_CLIBUF else C.MOS_SIDE_SVR
        return flow.sides[side].bufsize
    if optname in (C.MOS_CLIOVERLAP, C.MOS_SVROVERLAP):
        side = C.MOS_SIDE_CLI if optname == C.MOS_CLIOVERLAP else C.MOS_SIDE_SVR
        return flow.sides[side].policy
    if optname == C.MOS_TIMESTAMP:
        # mOS: the later of the two sides' last activity, in mtcp_cb_get_ts's clock.
        return flow.last_ts
    if optname == C.MOSX_FLOW_STATS:
        return _flow_stats(stack, flow)
    raise _error(errno.ENOSYS, f"option {optname!r} is not implemented at SOL_MONSOCKET")


def _option_flow(mctx, sock, sock_obj):
    """The flow of a socket whose SOL_MONSOCKET options are read (mtcp_getsockopt's checks:
    the context's thread, a flow socket)."""
    _own_stack(mctx)    # mOS: SOL_MONSOCKET options only on the context's thread
    if sock_obj.kind != "flow":
        raise _error(errno.ENOTSOCK, f"socket {sock} is not a flow socket (options belong to "
                     "the sockets callbacks receive)")
    return sock_obj.flow


def _flow_stats(stack, flow):
    if flow.kernel_verdict is not None and stack.kernel_sync is not None:
        stack.kernel_sync(flow)   # what the kernel counted so far joins the flow first
    stats = FlowStats()
    stats.start_ts = flow.start_ts + stack.wall_offset_us
    stats.last_ts = flow.last_ts + stack.wall_offset_us
    for index, side in enumerate(flow.sides):
        receiver = flow.sides[1 - index]
        stats.pkts[index] = side.pkts
        stats.ip_bytes[index] = side.ip_bytes
        stats.l2_bytes[index] = side.l2_bytes
        stats.bypassed_pkts[index] = side.bypassed_pkts
        stats.bypassed_l2_bytes[index] = side.bypassed_l2_bytes
        stats.tcp_flags[index] = side.tcp_flags
        # Bytes of a bypassed flow that went by in the kernel since the emulation last
        # caught up (no FIN/RST after them) count as delivered, up to the highest sequence
        # end of those frames.
        extent = stack.carried_extent(side, receiver)
        stats.stream_bytes[index] = extent
        stats.missed_bytes[index] = max(0, extent - receiver.unique_bytes - side.bypassed_bytes)
    stats.history = "".join(flow.history)
    stats.end_reason = flow.end_reason
    stats.vlan_ids = flow.vlan_ids
    return stats


def _per_side(sock_obj, listener_attr, set_side, side, value):
    """A per-side stream option: a listener keeps it for the flows it will make (its
    ``listener_attr``, by side), a flow socket's side takes it now."""
    if sock_obj.kind == "listener":
        getattr(sock_obj, listener_attr)[side] = value
    else:
        set_side(sock_obj.flow.sides[side], value)
    return 0


def mtcp_setsockopt(mctx, sock, level, optname, optval):
    stack = _stack(mctx)
    sock_obj = _sock(stack, sock)
    if level != C.SOL_MONSOCKET:
        raise _error(errno.ENOSYS, f"level {level!r} is not SOL_MONSOCKET")
    if sock_obj.kind == "raw":
        raise _error(errno.ENOTSOCK, f"socket {sock} is a raw socket: it has no stream options")
    if optname in (C.MOS_CLIBUF, C.MOS_SVRBUF):
        side = C.MOS_SIDE_CLI if optname == C.MOS_CLIBUF else C.MOS_SIDE_SVR
        if isinstance(optval, bool) or not isinstance(optval, int) or optval < 0:
            raise _error(errno.EINVAL, f"buffer size {optval!r} is not a non-negative integer")
        return _per_side(sock_obj, "bufsize", stack.set_buffer_size, side, optval)
    if optname in (C.MOS_CLIOVERLAP, C.MOS_SVROVERLAP):
        side = C.MOS_SIDE_CLI if optname == C.MOS_CLIOVERLAP else C.MOS_SIDE_SVR
        if optval not in (C.MOS_OVERLAP_POLICY_FIRST, C.MOS_OVERLAP_POLICY_LAST):
            raise _error(errno.EINVAL, f"overlap policy {optval!r} is not MOS_OVERLAP_POLICY_FIRST "
                         "or MOS_OVERLAP_POLICY_LAST")
        return _per_side(sock_obj, "policy", stack.set_overlap_policy, side, optval)
    if optname in (C.MOS_FRAG_CLIBUF, C.MOS_FRAG_SVRBUF):
        # mOS's default build (DISABLE_DYN_RESIZE) takes only 0: a flow socket's side
        # releases its buffer, bytes and fragments; on a listener it changes nothing.
        side = C.MOS_SIDE_CLI if optname == C.MOS_FRAG_CLIBUF else C.MOS_SIDE_SVR
        if type(optval) is not int or optval:
            raise _error(errno.EINVAL, f"MOS_FRAG_{('CLI', 'SVR')[side]}BUF takes only 0 (as in "
                         f"mOS), not {optval!r}")
        if sock_obj.kind == "flow":
            stack.set_buffer_size(sock_obj.flow.sides[side], 0)
        return 0
    if optname == C.MOS_STOP_MON:
        if sock_obj.kind != "flow":
            raise _error(errno.ENOTSOCK, f"socket {sock} is a listening socket: MOS_STOP_MON "
                         "applies to flow sockets")
        if optval not in (C.MOS_SIDE_CLI, C.MOS_SIDE_SVR, C.MOS_SIDE_BOTH):
            raise _error(errno.EINVAL, f"MOS_STOP_MON takes MOS_SIDE_CLI, MOS_SIDE_SVR or "
                         f"MOS_SIDE_BOTH, not {optval!r}")
        stack.stop_monitoring(sock_obj, optval)
        return 0
    if optname in (C.MOSX_MIDSTREAM, C.MOSX_STATE_ONLY, C.MOSX_STREAM_ONLY):
        name = {C.MOSX_MIDSTREAM: "MOSX_MIDSTREAM", C.MOSX_STATE_ONLY: "MOSX_STATE_ONLY",
                C.MOSX_STREAM_ONLY: "MOSX_STREAM_ONLY"}[optname]
        if sock_obj.kind != "listener":
            raise _error(errno.ENOTSOCK, f"socket {sock} is a flow socket: {name} "
                         "applies to listening sockets")
        if optval not in (0, 1) or isinstance(optval, bool):
            raise _error(errno.EINVAL, f"{name} takes 0 or 1, not {optval!r}")
        if optname == C.MOSX_STATE_ONLY:
            sock_obj.state_only = bool(optval)
            return 0
        if optname == C.MOSX_STREAM_ONLY:
            sock_obj.stream_only = bool(optval)
            return 0
        sock_obj.midstream = bool(optval)
        # The kernel filter must now let this listener's orphans through (or no longer).
        if getattr(mctx.engine, "filters_changed", None) is not None:
            mctx.engine.filters_changed()
        return 0
    if optname in (C.MOSX_BYPASS, C.MOSX_DROP_FLOW):
        if sock_obj.kind != "flow":
            raise _error(errno.ENOTSOCK, f"socket {sock} is a listening socket")
        stack.set_bypass(sock_obj.flow, "bypass" if optname == C.MOSX_BYPASS else "drop")
        return 0
    raise _error(errno.ENOSYS, f"option {optname!r} is not settable at SOL_MONSOCKET")
