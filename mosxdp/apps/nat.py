"""nat: source NAT (one NAT address, a pool of ports), like mOS's `nat` sample.

Written only against the public API. mOS's sample rewrites both directions at
MOS_HK_SND of one stream socket; here the reverse direction is translated earlier,
so that the monitor sees one flow in both directions.

What the wire and the monitor see, for a client C:c behind the NAT talking to a
server S:s, with NAT address N and a port n taken from the pool:

- client -> server: the client sends C:c -> S:s. The monitor looks the frame up as
  C:c -> S:s (the flow's key), runs its callbacks, and rewrites the source to N:n at
  the last hook the frame passes (MOS_ON_PKT_IN at MOS_HK_RCV, side = server), after
  the stack's update of both sides. The server sees N:n -> S:s.
- server -> client: the server answers S:s -> N:n. A MOS_SOCK_MONITOR_RAW socket's
  MOS_ON_PKT_IN at MOS_NULL, which runs before the flow lookup, rewrites the
  destination back to C:c; the lookup then finds the same flow (server side), and
  the client receives S:s -> C:c.

So the monitor's flow is C:c <-> S:s in both directions (mtcp_getpeername gives the
inside client); only the wire between the NAT and the server carries N:n. Every
rewrite fixes the IPv4 header checksum and the TCP checksum (MOS_UPDATE_IP_CHKSUM |
MOS_UPDATE_TCP_CHKSUM; the pseudo-header uses the new addresses).

Ports: `--port-range A-B` (default 1025-65534, as mOS) is a FIFO pool. A flow takes
a port with its first client -> server frame (its SYN) and keeps it in its
mtcp_set_uctx state; the port goes back to the end of the pool at MOS_ON_CONN_END,
so it is reused as late as possible. With no port left the SYN is dropped and the
flow gets a kernel DROP verdict (MOSX_DROP_FLOW). Frames for N whose port has no
mapping (or whose source is not the mapped server) pass unchanged.

After the end: a released port remembers its connection until a new flow takes it,
so the frames that come after the monitor ended the flow (a retransmitted FIN, the
ACK of one: orphans to the stack) are still translated both ways, and the inside
address does not leak. (Once its port serves another connection, a frame of the old
one passes unchanged, like a frame of a connection nat never saw: with the FIFO pool
that takes as many connections as the pool has ports.)

Which flows: SYNs whose client is in `--inside-net` (default: any address of the NAT
address's family) and whose destination is not N. NAT66 works the same way when
`--nat-ip` is an IPv6 address. NAT never stops monitoring a flow (a kernel bypass
would forward untranslated frames), and keeps no bytestream buffers.

`--log SINK` writes a JSON line per mapping and release (a file, or a sink:
docs/outputs.md); `--stats-output FILE` the final counters (JSON); a summary line goes to
stderr at the end.
"""
import collections
import errno
import ipaddress
import json
import socket
import sys

from mosxdp import (MOS_CLIBUF, MOS_DROP, MOS_HK_RCV, MOS_HK_SND, MOS_IP_HDR, MOS_NULL,
                    MOS_ON_CONN_END, MOS_ON_ORPHAN, MOS_ON_PKT_IN, MOS_OVERWRITE, MOS_SIDE_BOTH,
                    MOS_SIDE_SVR, MOS_SOCK_MONITOR_RAW, MOS_SOCK_MONITOR_STREAM, MOS_SVRBUF,
                    MOS_TCP_HDR, MOS_UPDATE_IP_CHKSUM, MOS_UPDATE_TCP_CHKSUM, MOSX_DROP_FLOW,
                    MOSX_SINK_HELP, SOL_MONSOCKET, MonitorFilter, PktInfo, mosx_open_output,
                    mosx_open_sink, mtcp_bind_monitor_filter, mtcp_cb_get_ts, mtcp_get_uctx, mtcp_getlastpkt,
                    mtcp_getpeername, mtcp_register_callback, mtcp_set_uctx, mtcp_setlastpkt,
                    mtcp_setsockopt, mtcp_socket)

DESCRIPTION = "source NAT to one address with a port pool; reverse translation for replies"
DEFAULT_PORTS = (1025, 65534)
# Offsets in the IP header (IPv4, IPv6) and the TCP header.
IP_SRC = {4: 12, 6: 8}
IP_DST = {4: 16, 6: 24}
TCP_SRC_PORT = 0
TCP_DST_PORT = 2
_CHKSUMS = MOS_UPDATE_IP_CHKSUM | MOS_UPDATE_TCP_CHKSUM
# --workers N: refused (cli.py). The port pool is one for all flows, and the reverse
# direction is rewritten before the flow lookup, so its frames hash to another worker.
ONE_WORKER = ("its port pool serves all flows, and the server's frames are rewritten "
              "before the flow lookup (on the wire they belong to another flow)")


def add_arguments(parser):
    parser.add_argument("--nat-ip", required=True, metavar="ADDR",
                        help="the NAT address clients are translated to")
    parser.add_argument("--port-range", default=None, metavar="A-B",
                        help=f"NAT ports (default {DEFAULT_PORTS[0]}-{DEFAULT_PORTS[1]})")
    parser.add_argument("--inside-net", default=None, metavar="CIDR",
                        help="translate only connections whose client is in this network")
    parser.add_argument("--log", default=None, metavar="SINK",
                        help="where a JSON line per port mapping and release goes: "
                             + MOSX_SINK_HELP)
    parser.add_argument("--stats-output", default=None, metavar="FILE",
                        help="write the final counters as JSON")


def parse_port_range(text):
    if text is None:
        return DEFAULT_PORTS
    low, dash, high = text.partition("-")
    if not dash or not low.strip().isdigit() or not high.strip().isdigit():
        raise OSError(errno.EINVAL, f"--port-range {text!r}: expected A-B (e.g. 20000-29999)")
    low, high = int(low), int(high)
    if not 1 <= low <= high <= 65535:
        raise OSError(errno.EINVAL, f"--port-range {text!r}: need 1 <= A <= B <= 65535")
    return low, high


class Mapping:
    __slots__ = ("client", "server", "port", "released")

    def __init__(self, client, server, port):
        self.client = client      # (ip_address, port)
        self.server = server
        self.port = port
        self.released = False

    def client_tuple(self):
        """(src, sport, dst, dport) of the client's frames, addresses packed."""
        return (self.client[0].packed, self.client[1], self.server[0].packed, self.server[1])


def _endpoint(addr, port):
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


class Nat:
    def __init__(self, nat_ip, ports, log=None):
        self.nat_ip = nat_ip
        self.nat_bytes = nat_ip.packed
        self.version = nat_ip.version
        self.pool = collections.deque(range(ports[0], ports[1] + 1))
        self.pool_size = len(self.pool)
        self.by_port = {}             # NAT port -> Mapping
        # Released mappings until their port is taken again (at most one per port):
        # by NAT port, and by the client's frames' (src, sport, dst, dport).
        self.ended_by_port = {}
        self.ended_by_tuple = {}
        self.raw_sock = None          # the raw socket, to edit orphans with
        self.log = log
        self.stats_output = None      # opened at start, written at the end
        self.pinfo = PktInfo()
        self.counters = collections.Counter(mapped=0, released=0, translated_out=0,
                                            translated_in=0, passed_in=0, no_port_drops=0,
                                            late_translated_out=0, late_translated_in=0)

    # ------------------------------------------------------------ mappings
    def _log(self, mctx, event, mapping=None, **extra):
        if self.log is None:
            return
        record = {"ts": mtcp_cb_get_ts(mctx) / 1e6, "event": event}
        if mapping is not None:
            record.update(client=_endpoint(*mapping.client), server=_endpoint(*mapping.server),
                          nat=_endpoint(self.nat_ip, mapping.port))
        record.update(extra)
        self.log.write(json.dumps(record) + "\n")
        self.log.flush()     # live: a mapping is in the log when it is made, not at exit

    def assign(self, mctx, sock):
        (cli_addr, cli_port), (svr_addr, svr_port) = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
        client = (ipaddress.ip_address(cli_addr), cli_port)
        server = (ipaddress.ip_address(svr_addr), svr_port)
        if not self.pool:
            self.counters["no_port_drops"] += 1
            self._log(mctx, "no_port", client=_endpoint(*client), server=_endpoint(*server))
            return None
        mapping = Mapping(client, server, self.pool.popleft())
        ended = self.ended_by_port.pop(mapping.port, None)
        if ended is not None:
            del self.ended_by_tuple[ended.client_tuple()]
        self.by_port[mapping.port] = mapping
        mtcp_set_uctx(mctx, sock, mapping)
        self.counters["mapped"] += 1
        self._log(mctx, "map", mapping)
        return mapping

    def release(self, mctx, sock):
        mapping = mtcp_get_uctx(mctx, sock)
        if not isinstance(mapping, Mapping) or mapping.released:
            return
        mapping.released = True
        if self.by_port.get(mapping.port) is mapping:
            del self.by_port[mapping.port]
        self.pool.append(mapping.port)
        self.ended_by_port[mapping.port] = mapping
        self.ended_by_tuple[mapping.client_tuple()] = mapping
        self.counters["released"] += 1
        self._log(mctx, "unmap", mapping)

    # ------------------------------------------------------------ rewriting
    def _rewrite(self, mctx, sock, side, ip_offset, addr_bytes, port_offset, port):
        mtcp_setlastpkt(mctx, sock, side, ip_offset, addr_bytes, len(addr_bytes),
                        MOS_OVERWRITE | MOS_IP_HDR)
        mtcp_setlastpkt(mctx, sock, side, port_offset, port.to_bytes(2, "big"), 2,
                        MOS_OVERWRITE | MOS_TCP_HDR | _CHKSUMS)

    def on_inbound(self, mctx, sock, side, event, arg):
        """Raw socket, MOS_NULL, before the flow lookup: S:s -> N:n becomes S:s -> C:c."""
        pinfo = self.pinfo
        mtcp_getlastpkt(mctx, sock, side, pinfo)
        iph, tcph = pinfo.iph, pinfo.tcph
        if len(tcph) < 20 or len(iph) < 20 or iph[0] >> 4 != self.version:
            return
        if bytes(iph[IP_DST[self.version]:IP_DST[self.version] + len(self.nat_bytes)]) != self.nat_bytes:
            return
        port = int.from_bytes(tcph[TCP_DST_PORT:TCP_DST_PORT + 2], "big")
        mapping = self.by_port.get(port)
        late = mapping is None
        if late:
            mapping = self.ended_by_port.get(port)
        src = bytes(iph[IP_SRC[self.version]:IP_SRC[self.version] + len(self.nat_bytes)])
        sport = int.from_bytes(tcph[TCP_SRC_PORT:TCP_SRC_PORT + 2], "big")
        if mapping is None or (src, sport) != (mapping.server[0].packed, mapping.server[1]):
            self.counters["passed_in"] += 1
            return
        self._rewrite(mctx, sock, side, IP_DST[self.version], mapping.client[0].packed,
                      TCP_DST_PORT, mapping.client[1])
        self.counters["late_translated_in" if late else "translated_in"] += 1

    def on_orphan(self, mctx, sock, side, event, arg):
        """Stream listener, a frame of no flow that is not for N: a client's late frame
        of an ended connection gets the connection's NAT address and port. (A server's
        late frame was translated at MOS_NULL.)"""
        pinfo = self.pinfo
        mtcp_getlastpkt(mctx, sock, side, pinfo)
        iph, tcph = pinfo.iph, pinfo.tcph
        if len(tcph) < 20 or len(iph) < 20 or iph[0] >> 4 != self.version:
            return
        size = len(self.nat_bytes)
        src = bytes(iph[IP_SRC[self.version]:IP_SRC[self.version] + size])
        dst = bytes(iph[IP_DST[self.version]:IP_DST[self.version] + size])
        sport = int.from_bytes(tcph[TCP_SRC_PORT:TCP_SRC_PORT + 2], "big")
        dport = int.from_bytes(tcph[TCP_DST_PORT:TCP_DST_PORT + 2], "big")
        mapping = self.ended_by_tuple.get((src, sport, dst, dport))
        if mapping is not None:
            self._rewrite(mctx, self.raw_sock, side, IP_SRC[self.version], self.nat_bytes,
                          TCP_SRC_PORT, mapping.port)
            self.counters["late_translated_out"] += 1

    def on_packet(self, mctx, sock, side, event, arg):
        """Stream socket, HK_RCV (after the stack's update): C:c -> S:s becomes N:n -> S:s."""
        if side != MOS_SIDE_SVR:
            return      # server -> client: already translated at MOS_NULL
        mapping = mtcp_get_uctx(mctx, sock)
        if mapping is None:
            mapping = self.assign(mctx, sock)
            if mapping is None:
                mtcp_set_uctx(mctx, sock, False)
        if not mapping:
            # No port for this flow: nothing of it passes.
            mtcp_setlastpkt(mctx, sock, side, 0, None, 0, MOS_DROP)
            mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_DROP_FLOW, 1)
            return
        self._rewrite(mctx, sock, side, IP_SRC[self.version], self.nat_bytes,
                      TCP_SRC_PORT, mapping.port)
        self.counters["translated_out"] += 1

    def on_end(self, mctx, sock, side, event, arg):
        self.release(mctx, sock)

    # -------------------------------------------------------------- output
    def stats(self):
        stats = dict(self.counters)
        stats.update(in_use=len(self.by_port), free_ports=len(self.pool),
                     pool_size=self.pool_size, nat_ip=str(self.nat_ip))
        return stats

    def close(self):
        stats = self.stats()
        if self.stats_output is not None:
            self.stats_output.write(json.dumps(stats, indent=1) + "\n")
            self.stats_output.close()
        print(f"nat: {stats['mapped']} flows mapped to {self.nat_ip}, {stats['released']} ports "
              f"returned, {stats['in_use']} in use; frames translated: {stats['translated_out']} "
              f"out, {stats['translated_in']} in, after the end {stats['late_translated_out']} "
              f"out, {stats['late_translated_in']} in; {stats['no_port_drops']} flows dropped "
              "(no port left)", file=sys.stderr)
        if self.log is not None:
            self.log.close()


def setup(mctx, args):
    try:
        nat_ip = ipaddress.ip_address(args.nat_ip)
    except ValueError:
        raise OSError(errno.EINVAL, f"--nat-ip {args.nat_ip!r} is not an IP address") from None
    ports = parse_port_range(args.port_range)
    domain = socket.AF_INET if nat_ip.version == 4 else socket.AF_INET6
    syn_filter = f"tcp and not dst host {nat_ip}"
    if args.inside_net:
        try:
            inside = ipaddress.ip_network(args.inside_net, strict=False)
        except ValueError:
            raise OSError(errno.EINVAL, f"--inside-net {args.inside_net!r} is not a network "
                          "(ADDR/PREFIX)") from None
        if inside.version != nat_ip.version:
            raise OSError(errno.EINVAL, f"--inside-net {inside} and --nat-ip {nat_ip} are of "
                          "different IP versions")
        syn_filter += f" and src net {inside}"
    log = None
    if args.log:
        log = mosx_open_sink(mctx, args.log, "--log")
    app = Nat(nat_ip, ports, log)
    if args.stats_output:
        app.stats_output = mosx_open_output(mctx, args.stats_output)

    raw = app.raw_sock = mtcp_socket(mctx, domain, MOS_SOCK_MONITOR_RAW, 0)
    mtcp_bind_monitor_filter(mctx, raw, MonitorFilter(raw_pkt_filter=f"tcp and dst host {nat_ip}"))
    mtcp_register_callback(mctx, raw, MOS_ON_PKT_IN, MOS_NULL, app.on_inbound)

    sock = mtcp_socket(mctx, domain, MOS_SOCK_MONITOR_STREAM, 0)
    mtcp_bind_monitor_filter(mctx, sock, MonitorFilter(stream_syn_filter=syn_filter,
                                                       stream_orphan_filter=syn_filter))
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_CLIBUF, 0)
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVRBUF, 0)
    mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_RCV, app.on_packet)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_END, MOS_HK_SND, app.on_end)
    mtcp_register_callback(mctx, sock, MOS_ON_ORPHAN, MOS_NULL, app.on_orphan)
    return app


def teardown(app):
    app.close()
