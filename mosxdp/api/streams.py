"""Bytestreams: mtcp_peek and mtcp_ppeek over a side's reassembly buffer."""
import errno

from .context import _error, _flow_sock, _own_stack, _side


class PeekOverrunError(OSError):
    """mtcp_peek found bytes it cannot give (ENODATA): overwritten before they were read,
    or, when `hole` is true, never seen by the monitor although the receiver has them.

    `lost` is how many bytes were lost; the peek offset has moved past them, so the
    next call continues with the byte after them."""

    def __init__(self, lost, hole=False):
        if hole:
            message = (f"{lost} bytes were never seen by the monitor (a hole the receiver "
                       "acknowledged, or the flow ended before anything filled it)")
        else:
            message = f"{lost} bytes were overwritten before mtcp_peek read them"
        super().__init__(errno.ENODATA, message)
        self.lost = lost
        self.hole = hole


def _readable(stack, sock, side, wrong_type_errno=errno.ESOCKTNOSUPPORT):
    sock_obj = _flow_sock(stack, sock, wrong_type_errno)
    _side(side)
    if not sock_obj.monitoring[side]:
        raise _error(errno.ENOTCONN, f"socket {sock} stopped monitoring side {side} (MOS_STOP_MON)")
    flow_side = sock_obj.flow.sides[side]
    if not flow_side.bufsize:
        raise _error(errno.EINVAL, f"buffering is off for side {side} of socket {sock}")
    return sock_obj, flow_side


def _writable_bytes(buf):
    """A caller's buffer as writable bytes (a NULL or read-only buffer is EINVAL)."""
    try:
        view = memoryview(buf).cast("B")
    except TypeError:
        raise _error(errno.EINVAL, f"buf must be a writable bytes-like object, not "
                     f"{type(buf).__name__}") from None
    if view.readonly:
        raise _error(errno.EINVAL, "buf is read-only")
    return view


def _length(value):
    """A byte count argument: a non-negative int, else EINVAL."""
    if not isinstance(value, int) or value < 0:
        raise _error(errno.EINVAL, f"len {value!r} is not a non-negative byte count")
    return value


def mtcp_peek(mctx, sock, side, buf, len=None):
    stack = _own_stack(mctx)
    sock_obj, flow_side = _readable(stack, sock, side, errno.ENOTSOCK)
    view = _writable_bytes(buf)
    want = view.nbytes if len is None else min(_length(len), view.nbytes)
    return peek_into(sock_obj, flow_side, side, view, want)


def peek_into(sock_obj, flow_side, side, view, want):
    """mtcp_peek once its arguments are checked (``_readable``'s socket and side, a
    writable byte view): the library's own readers call it with their buffer."""
    ring = flow_side.buf
    offset = sock_obj.peek_off[side]
    if ring is None:
        # No byte held yet: what the stream has passed is lost.
        if flow_side.rcv_nxt > offset:
            sock_obj.peek_off[side] = flow_side.rcv_nxt
            raise PeekOverrunError(flow_side.rcv_nxt - offset, hole=True)
        return 0
    if offset < ring.head:
        sock_obj.peek_off[side] = ring.head
        raise PeekOverrunError(ring.head - offset)
    count = ring.read_into(offset, view[:want]) if want else 0
    if not count:
        lost = ring.lost_at(offset)
        if lost:
            sock_obj.peek_off[side] = offset + lost
            raise PeekOverrunError(lost, hole=True)
        return 0
    sock_obj.peek_off[side] = offset + count
    return count


def mtcp_ppeek(mctx, sock, side, buf, len, off):
    stack = _own_stack(mctx)
    _, flow_side = _readable(stack, sock, side)
    if not isinstance(off, int) or off < 0:
        raise _error(errno.EINVAL, f"offset {off!r} is not a non-negative integer")
    view = _writable_bytes(buf)
    want = min(_length(len), view.nbytes)
    ring = flow_side.buf
    count = ring.read_into(off, view[:want]) if ring is not None and want else 0
    if count == 0:
        lost = ring.lost_at(off) if ring is not None else 0
        if lost:
            raise _error(errno.ENODATA, f"offset {off} of side {side} is in a hole of {lost} "
                         "more bytes the monitor never saw")
        raise _error(errno.ENODATA, f"no byte at offset {off} in side {side}'s buffer")
    return count
