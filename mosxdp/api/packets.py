"""The packet being processed: mtcp_getlastpkt, mtcp_clonepkt, mtcp_setlastpkt,
mtcp_sendpkt and mtcp_reset_conn (the frame work itself is in mosxdp.core.frames)."""
import ctypes
import errno

from .. import constants as C
from ..core import frames
from ..core.packet import parse_frame
from ..types import PktInfo
from .context import _error, _flow_sock, _own_stack, _side, _sock, _stack


def _packet_context(stack, sock, side, getlast=False):
    sock_obj = _sock(stack, sock)
    if sock_obj.kind == "listener" and not getlast:
        raise _error(errno.ESOCKTNOSUPPORT, f"socket {sock} is a listening socket: edit packets "
                     "through the flow sockets callbacks receive")
    if sock_obj.kind != "flow":
        # A raw socket's packet, or a listener's orphan (MOS_ON_ORPHAN passes MOS_SIDE_BOTH).
        if side not in (C.MOS_NULL, C.MOS_SIDE_CLI, C.MOS_SIDE_SVR, C.MOS_SIDE_BOTH):
            raise _error(errno.EINVAL, f"side {side!r} is not valid for a {sock_obj.kind} socket")
    else:
        _side(side)
        if not sock_obj.monitoring[side]:
            raise _error(errno.ENOTCONN, f"socket {sock} stopped monitoring side {side}")
    pkt = stack.cur_pkt
    if pkt is None and getlast and sock_obj.kind == "flow":
        pkt = _last_packet(stack, sock_obj, side)
    elif pkt is None or (sock_obj.kind == "flow" and stack.cur_flow is not sock_obj.flow):
        pkt = None
    if pkt is None:
        raise _error(errno.ENODATA, "no packet is being processed for this socket "
                     "(timers have no packet; setlastpkt has none in CONN_NEW_DATA and "
                     "CONN_END)")
    return sock_obj, pkt


def _last_packet(stack, sock_obj, side):
    """mtcp_getlastpkt in CONN_NEW_DATA and CONN_END (callbacks without a packet of their
    own): the packet that raised the event, as mOS returns it. Ended by a packet of the flow:
    that packet; at the end of a batch or on expiry: the last packet `side` received (if it
    received none, the last it sent)."""
    cur = stack.cur_sock
    flow = sock_obj.flow
    if cur is None or cur.kind != "flow" or cur.flow is not flow:
        return None     # a timer, or outside this flow's callbacks
    if stack.cur_flow is flow:
        for flow_side in flow.sides:
            pkt = flow_side.last_pkt
            if pkt is not None and pkt.buf is stack.cur_frame:
                return pkt
    return flow.sides[1 - side].last_pkt or flow.sides[side].last_pkt


def mtcp_getlastpkt(mctx, sock, side, pinfo):
    stack = _own_stack(mctx)
    if not isinstance(pinfo, PktInfo):
        raise _error(errno.EINVAL, "pinfo must be a PktInfo()")
    sock_obj, pkt = _packet_context(stack, sock, side, getlast=True)
    edit = stack.cur_edit
    if edit is not None and edit.pkt is pkt and edit.touched():
        pkt = parse_frame(edit.view_frame())    # the payload as edited so far
    frame = pkt.buf
    size = pkt.l3_off + pkt.ip_len if pkt.ip_version else len(frame)
    if size > len(frame):
        size = len(frame)   # cut by the capture: the views hold the bytes it kept
    copy = mctx.pkt_copy
    if copy is None or len(copy) < size:
        copy = mctx.pkt_copy = bytearray(max(size, 2048))
    copy[:size] = frame[:size]
    view = memoryview(copy)
    pinfo.cur_ts = (stack.now // 1000) & 0xFFFFFFFF
    pinfo.in_ifidx = 0
    pinfo.eth_len = size
    pinfo.ethh = view[:pkt.l3_off]
    if pkt.ip_version:
        pinfo.ip_len = pkt.ip_len
        pinfo.iph = view[pkt.l3_off:pkt.l4_off]
    else:
        pinfo.ip_len = 0
        pinfo.iph = view[pkt.l3_off:pkt.l3_off]
    if pkt.ip_version and pkt.ip_proto == 6 and not pkt.is_fragment:
        pinfo.tcph = view[pkt.l4_off:pkt.payload_off]
        pinfo.payload = view[pkt.payload_off:pkt.payload_off + pkt.payload_len]
        pinfo.payloadlen = pkt.payload_len
        pinfo.seq = pkt.seq
        pinfo.ack_seq = pkt.ack
        pinfo.window = pkt.window
        pinfo.offset = frames.stream_offset(sock_obj.flow, pkt) if sock_obj.kind == "flow" else 0
    else:
        pinfo.tcph = pinfo.payload = view[size:size]
        pinfo.payloadlen = pinfo.seq = pinfo.ack_seq = pinfo.window = pinfo.offset = 0
    return 0


def mtcp_clonepkt(to, frame, src, /):
    """C: void mtcp_clonepkt(struct pkt_info *to, unsigned char *frame, struct pkt_info *from).
    Copies `src`'s frame into the caller's buffer `frame` and fills `to` with `src`'s fields
    and views into `frame`: a PktInfo that outlives the next mtcp_getlastpkt."""
    if not isinstance(to, PktInfo) or not isinstance(src, PktInfo):
        raise _error(errno.EINVAL, "to and from must be PktInfo()s")
    if src.ethh is None or len(src.ethh) == 0:
        raise _error(errno.EINVAL, "from has no frame (fill it with mtcp_getlastpkt)")
    parts = [src.ethh, src.iph, src.tcph,
             src.payload[:src.payloadlen] if src.payload is not None else b""]
    sizes = [len(part) if part is not None else 0 for part in parts]
    try:
        view = memoryview(frame).cast("B")
    except TypeError:
        view = None
    if view is None or view.readonly or view.nbytes < sum(sizes):
        raise _error(errno.EINVAL, f"frame must be a writable buffer of at least {sum(sizes)} "
                     "bytes")
    ctypes.memmove(ctypes.addressof(to), ctypes.addressof(src), ctypes.sizeof(PktInfo))
    views = []
    pos = 0
    for part, size in zip(parts, sizes):
        if size:
            view[pos:pos + size] = part
        views.append(view[pos:pos + size])
        pos += size
    to.ethh, to.iph, to.tcph, to.payload = views
    to.eth_len = pos


_REGIONS = (C.MOS_ETH_HDR, C.MOS_IP_HDR, C.MOS_TCP_HDR, C.MOS_TCP_PAYLOAD)


def mtcp_setlastpkt(mctx, sock, side, offset, data, datalen, option):
    stack = _own_stack(mctx)
    sock_obj, pkt = _packet_context(stack, sock, side)
    if not isinstance(option, int):
        raise _error(errno.EINVAL, f"option {option!r} is not a combination of MOS_* flags")
    action = option & (C.MOS_DROP | C.MOS_OVERWRITE | C.MOS_CHOMP | C.MOS_INSERT)
    if action.bit_count() != 1:
        # mos_api.c: EAGAIN when not exactly one action is given.
        raise _error(errno.EAGAIN, "option needs exactly one of MOS_DROP, MOS_OVERWRITE, "
                     "MOS_CHOMP and MOS_INSERT")
    if action == C.MOS_DROP:
        stack.drop_current()
        return 0
    regions = [r for r in _REGIONS if option & r]
    name = {C.MOS_OVERWRITE: "MOS_OVERWRITE", C.MOS_CHOMP: "MOS_CHOMP",
            C.MOS_INSERT: "MOS_INSERT"}[action]
    if len(regions) != 1:
        raise _error(errno.EINVAL, f"{name} needs exactly one of MOS_ETH_HDR, MOS_IP_HDR, "
                     "MOS_TCP_HDR, MOS_TCP_PAYLOAD")
    if action == C.MOS_CHOMP and data is None:
        data_view = memoryview(b"")     # MOS_CHOMP reads no data: datalen is what goes
        if not isinstance(datalen, int) or datalen < 0:
            raise _error(errno.EINVAL, f"MOS_CHOMP needs datalen, the number of bytes to "
                         f"delete (not {datalen!r})")
    else:
        try:
            data_view = memoryview(data).cast("B")
        except TypeError:
            raise _error(errno.EINVAL, f"data must be a bytes-like object, not "
                         f"{type(data).__name__}") from None
        if datalen is None:
            datalen = data_view.nbytes
    if not isinstance(offset, int) or offset < 0 or not isinstance(datalen, int) \
            or datalen < 0 or (action != C.MOS_CHOMP and datalen > data_view.nbytes):
        raise _error(errno.EINVAL, f"offset {offset!r}/datalen {datalen!r} do not fit the data given")
    if action == C.MOS_OVERWRITE:
        edit = stack.cur_edit
        if regions[0] == C.MOS_TCP_PAYLOAD and edit is not None and edit.pkt is pkt \
                and sock_obj.kind == "flow":
            # A direction with size-changing edits: the payload as the receiver gets it
            # (recorded; the frame is rebuilt, checksums included, as it leaves).
            try:
                edit.overwrite(offset, bytes(data_view[:datalen]))
            except ValueError as exc:
                raise _error(errno.EINVAL, str(exc)) from None
            return 0
        frames.overwrite(pkt, regions[0], offset, data_view, datalen,
                         bool(option & C.MOS_UPDATE_IP_CHKSUM),
                         bool(option & C.MOS_UPDATE_TCP_CHKSUM))
        return 0
    if regions[0] == C.MOS_ETH_HDR:
        raise _error(errno.EACCES, f"{name}: the Ethernet header cannot change size (as in mOS)")
    if regions[0] != C.MOS_TCP_PAYLOAD:
        raise _error(errno.EINVAL, f"{name} edits MOS_TCP_PAYLOAD only: the IP and TCP headers "
                     "keep their size")
    if sock_obj.kind != "flow":
        raise _error(errno.EINVAL, f"{name} needs a stream socket: the flow's sequence numbers "
                     "are remapped from then on")
    try:
        edit = stack.edit_current(sock_obj.flow)
        if action == C.MOS_INSERT:
            edit.insert(offset, bytes(data_view[:datalen]))
        else:
            edit.chomp(offset, datalen)
    except ValueError as exc:
        raise _error(errno.EINVAL, str(exc)) from None
    return 0


def mtcp_sendpkt(mctx, sock, pinfo):
    stack = _own_stack(mctx)
    if not isinstance(pinfo, PktInfo):
        raise _error(errno.EACCES, "pinfo must be a PktInfo()")
    sock_obj = _sock(stack, sock)
    parts = (pinfo.ethh, pinfo.iph, pinfo.tcph)
    if any(part is None or len(part) == 0 for part in parts):
        raise _error(errno.ENODATA, "pinfo has no Ethernet, IP or TCP header")
    payload = bytes(pinfo.payload[:pinfo.payloadlen]) if pinfo.payload is not None else b""
    frame = bytearray(bytes(pinfo.ethh) + bytes(pinfo.iph) + bytes(pinfo.tcph) + payload)
    pkt = frames.finish_frame(frame)
    flow = sock_obj.flow if sock_obj.kind == "flow" else stack.cur_flow
    stack.queue_frame(frame, frames.egress_port(flow, pkt))
    return 0


def mtcp_reset_conn(mctx, sock):
    """Send an RST to both ends of the flow (mos_api.c; a listener is EINVAL there)."""
    stack = _stack(mctx)
    sock_obj = _flow_sock(stack, sock, errno.EINVAL)
    for frame, port in frames.reset_frames(sock_obj.flow):
        stack.queue_frame(frame, port)
    return 0
