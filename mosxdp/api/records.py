"""Records for existing pipelines (extensions): mosx_community_id, mosx_open_log,
mosx_frame_count, mosx_conn_record, mosx_conn_uid (Zeek's conn.log record of a flow: connlog's and
zeeklog's lines, mosxdp/core/zeekconn.py) and MOSX_CONN_FIELDS.

A log opened with mosx_open_log writes through mosx_open_sink (a file as mosx_open_output
opens it: bounded buffering, planted links refused, failed writes counted and reported;
or, for JSON lines, a unix socket or Redis), one record per ``write``: a JSON line, or a
line of Zeek's TSV format (mosxdp/core/zeeklog.py) after its header. docs/pipeline.md says
how the formats join up downstream.
"""
import json
import time

from ..core import zeeklog, zeekconn
from ..core.communityid import community_id
from ..core.constants import MOS_SIDE_CLI, MOS_SIDE_SVR, TcpState
from ..core.events import ORDER_EOF
from .context import _sock, _stack
from ..io.sinks import SinkSpecError, parse_sink
from .outputs import mosx_open_sink
from .sockets import _flow_stats, _option_flow, _peer
from ..types import DatagramFlowStats

FORMATS = ("json", "tsv")
_STATE_NAMES = {state.value: state.name for state in TcpState}
#: conn.log's columns and their Zeek types ((name, type), ...), for a TSV log of them
MOSX_CONN_FIELDS = zeekconn.FIELDS


def mosx_community_id(proto, saddr, daddr, sport=None, dport=None, seed=0):
    """The Community ID v1 of a flow (mosxdp/core/communityid.py): ``proto`` its IP
    protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6), the addresses as text or packed
    bytes, the ports (ICMP: the message type and code); the same from either direction.
    ``seed`` 0 to 65535 (ValueError otherwise)."""
    return community_id(proto, saddr, daddr, sport, dport, seed)


def mosx_conn_record(mctx, flow, seed=0):
    """Zeek's conn.log record (a dict, Zeek's field names) of a flow that ends: ``flow`` a
    TCP flow socket in its MOS_ON_CONN_END callback, or the DatagramFlowStats that
    mosx_watch_datagrams hands its callback. Its ``uid`` is of the flow alone (its start,
    addresses, ports, VLAN ids): the same in every log that names the flow
    (mosx_session_uid), in every run over the same input. ``seed``: the Community ID's."""
    if isinstance(flow, DatagramFlowStats):
        return zeekconn.datagram_record(flow, community_id(
            flow.ip_proto, flow.orig_h, flow.resp_h, flow.orig_p, flow.resp_p, seed))
    # What mtcp_getsockopt (MOSX_FLOW_STATS, MOS_TCP_STATE_CLI/SVR) and mtcp_getpeername
    # give, read once from the flow (once per flow that ends: a line of connlog's).
    stack = _stack(mctx)
    tcp = _option_flow(mctx, flow, _sock(stack, flow))
    cli, svr = tcp.sides
    return zeekconn.tcp_record(
        _flow_stats(stack, tcp), (_peer(tcp, MOS_SIDE_CLI), _peer(tcp, MOS_SIDE_SVR)),
        _STATE_NAMES[cli.state], _STATE_NAMES[svr.state],
        community_id(6, tcp.addrs[MOS_SIDE_CLI], tcp.addrs[MOS_SIDE_SVR],
                     tcp.ports_tcp[MOS_SIDE_CLI], tcp.ports_tcp[MOS_SIDE_SVR], seed))


def mosx_conn_uid(mctx, flow):
    """The ``uid`` that mosx_conn_record gives the flow (and a SessionEvent of it), without
    the rest of the record: ``flow`` a TCP flow socket (in any of its callbacks) or a
    DatagramFlowStats. For apps that join their own records of a flow to its sessions."""
    if isinstance(flow, DatagramFlowStats):
        return zeekconn.datagram_uid(flow.start_ts, flow.orig_h, flow.orig_p, flow.resp_h,
                                     flow.resp_p, flow.vlan_ids, flow.proto)
    stack = _stack(mctx)
    tcp = _option_flow(mctx, flow, _sock(stack, flow))
    return tcp_flow_uid(stack, tcp, _peer(tcp, MOS_SIDE_CLI), _peer(tcp, MOS_SIDE_SVR))


def tcp_flow_uid(stack, tcp, cli, svr):
    """The uid of a core TCP flow whose peers (address text, port) are ``cli`` and ``svr``:
    what MOSX_FLOW_STATS would give for it, read from the flow alone."""
    return zeekconn.tcp_uid(tcp.start_ts + stack.wall_offset_us, cli[0], cli[1], svr[0],
                            svr[1], tcp.vlan_ids)


def mosx_frame_count(mctx):
    """Frames the context's core has taken so far, the one being processed included:
    offline, in a callback, the number of the current packet in the capture (1 for the
    first, as Suricata's ``pcap_cnt`` and Wireshark's frame numbers count)."""
    stack = _stack(mctx)
    if getattr(mctx.outputs, "worker", None) is None:
        return stack.counters["frames"]
    # A worker of a split run takes only its share: Stack.frame_no is the input's index of
    # the frame (or of the batch's last), and at the end of the input the input's count.
    key = stack.order_key
    return stack.frame_no if key is not None and key[0] >= ORDER_EOF else stack.frame_no + 1


# json.dumps's output; records hold no cycles, so none is looked for (a line per flow).
_ENCODE = json.JSONEncoder(check_circular=False).encode


class _JsonLog:
    """One JSON object per line."""

    def __init__(self, output):
        self.output = output

    def write(self, record):
        self.output.write(_ENCODE(record) + "\n")

    def close(self):
        self.output.close()


class _ZeekLog:
    """Zeek's TSV: the header now, a line per record, ``#close`` at the end."""

    def __init__(self, output, path, fields, types):
        self.output = output
        self.fields = tuple(fields)
        self.types = tuple(types)
        for line in zeeklog.header_lines(path, self.fields, self.types, time.time()):
            output.write(line)
        self._closed = False

    def write(self, record):
        self.output.write(zeeklog.record_line(record, self.fields, self.types))

    def close(self):
        if not self._closed:
            self._closed = True
            self.output.write(zeeklog.close_line(time.time()))
        self.output.close()


def mosx_open_log(mctx, path, fmt="json", *, zeek_path=None, fields=(), types=(),
                  option="--output"):
    """A log of records (dicts) at ``path`` ('-': standard output), opened now as
    mosx_open_sink opens it (``option``: the option that named it, for messages); JSON
    lines may also go to a unix socket or Redis, Zeek's TSV only to a file. ``fmt`` "json":
    one JSON object per line. "tsv": Zeek's TSV, whose header names the log ``zeek_path``
    (conn, ...) and lists ``fields`` (a record's keys, in column order) and their Zeek
    ``types`` (time, interval, string, enum, addr, port, count); a key a record lacks is written unset (``-``). Returns an object
    with ``write(record)`` and ``close()`` (TSV: writes ``#close``). ValueError for an
    unknown format or type; OSError naming a path that cannot be opened."""
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "tsv":
        zeeklog.check_types(types)
        if not zeek_path or len(fields) != len(types) or not fields:
            raise ValueError("a TSV log needs its zeek_path, and one type per field")
    if fmt == "tsv":
        try:
            kind = parse_sink(path).kind
        except SinkSpecError:
            kind = None     # mosx_open_sink says what is wrong with it
        if kind in ("unix", "redis"):
            # a record per message would part the lines from their #fields header
            raise OSError(f"{option} {path}: the tsv format needs a file or '-'")
    output = mosx_open_sink(mctx, path, option)
    if fmt == "json":
        return _JsonLog(output)
    return _ZeekLog(output, zeek_path, fields, types)
