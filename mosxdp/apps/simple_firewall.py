"""simple_firewall: accept or drop new connections by rules, first match wins.

A port of mOS's `simple_firewall` sample, written only against the public API.

Rules file (mOS's format, one rule a line, at most 1024 rules)::

    # Simple firewall rules
    #(act)  (src)        (dst)        (port)
    DROP    10.0.0.0/24  10.0.0.0/24  dport:80
    ACCEPT  10.0.1.7     10.0.1.9     sport:1024
    ACCEPT  10.0.2.7     10.0.2.9

- ACTION is `ACCEPT` or `DROP` (upper case, as in mOS).
- SRC and DST are an address with an optional `/mask` (prefix length); the address is
  masked with it, so 10.0.0.5/24 means 10.0.0.0/24. The address 0.0.0.0 means "any"
  whatever its mask (mOS's "0 means *"). IPv6 addresses are a mosxdp extension (an
  IPv6 rule matches IPv6 flows only; `::` means any too).
- `sport:N` and `dport:N` (0..65535, in any order; 0 means any) are optional; if one
  is given twice the last one counts, as in mOS.
- `#` starts a comment, anywhere on a line; blank lines are skipped.

A rule is matched against the first SYN of a connection (MOS_ON_CONN_START at
MOS_HK_SND, client side): SRC/sport against the client, DST/dport against the server.
No match: ACCEPT. Each rule counts the connections it matched.

- ACCEPT: the flow is no longer monitored (mtcp_setsockopt MOS_STOP_MON, MOS_SIDE_BOTH),
  so the rest of it bypasses user space (a kernel BYPASS verdict live).
- DROP: the SYN is dropped (mtcp_setlastpkt MOS_DROP at HK_SND, so the emulated server
  never sees it) and the flow gets a kernel DROP verdict (mtcp_setsockopt
  MOSX_DROP_FLOW): live, the XDP program drops its frames; offline the core drops them.
  Frames of that flow that still reach the app (retransmitted SYNs, and the SYN/FIN/RST
  frames the kernel hands to user space) are dropped at HK_SND too, so nothing of the
  flow passes.

The rule table with each rule's count is printed every `--interval` seconds (an
mtcp_settimer timer, re-armed in its callback; offline on packet time) and at the end;
`--stats-output FILE` writes the final counts as JSON.

A bad line in the rules file is refused before monitoring starts, with an OSError
(EINVAL) whose message names the file and the line: ``rules.conf:3: ...``.
"""
import errno
import ipaddress
import json

from mosxdp import (MOS_CLIBUF, MOS_DROP, MOS_HK_SND, MOS_ON_CONN_START, MOS_ON_PKT_IN,
                    MOS_SIDE_BOTH, MOS_SIDE_CLI, MOS_STOP_MON, MOS_SVRBUF, MOSX_DROP_FLOW,
                    SOL_MONSOCKET, mosx_open_output, mtcp_get_uctx, mtcp_getpeername,
                    mtcp_register_callback, mtcp_set_uctx, mtcp_setlastpkt, mtcp_setsockopt,
                    mtcp_settimer)

from . import _common
from ._common import MAX_INTERVAL, MIN_INTERVAL, check_option, monitor_socket

DESCRIPTION = "accept (bypass) or drop new connections by mOS firewall rules; per-rule counts"
MAX_RULES = 1024
ACCEPT = "ACCEPT"
DROP = "DROP"
TIMER_ID = 0


def interval_seconds(text):
    """--interval: 0 prints the table only at the end."""
    return _common.interval_seconds(text, zero=True)


def add_arguments(parser):
    parser.add_argument("--rules", required=True, metavar="FILE",
                        help="rules file (mOS simple_firewall.conf format)")
    parser.add_argument("--interval", type=interval_seconds, default=1.0, metavar="SECONDS",
                        help=f"seconds between rule table prints, {MIN_INTERVAL} to "
                             f"{MAX_INTERVAL} (0: only at the end)")
    parser.add_argument("--output", default="-", help="where the rule tables go ('-': stdout)")
    parser.add_argument("--stats-output", metavar="FILE", default=None,
                        help="write the final per-rule counts as JSON")


# ---------------------------------------------------------------- the rules
class Rule:
    __slots__ = ("index", "line", "action", "src", "dst", "sport", "dport", "count")

    def __init__(self, index, line, action, src, dst, sport, dport):
        self.index = index        # 1-based, as mOS prints it
        self.line = line          # line number in the file
        self.action = action
        self.src = src            # ipaddress network, or None for "any"
        self.dst = dst
        self.sport = sport        # 0: any
        self.dport = dport
        self.count = 0

    def matches(self, src, dst, sport, dport):
        return (_addr_match(src, self.src) and _addr_match(dst, self.dst)
                and (not self.sport or sport == self.sport)
                and (not self.dport or dport == self.dport))

    def as_dict(self):
        return {"index": self.index, "line": self.line, "action": self.action,
                "src": _net_text(self.src), "dst": _net_text(self.dst),
                "sport": self.sport, "dport": self.dport, "flows": self.count}


def _addr_match(addr, net):
    if net is None:
        return True
    return addr.version == net.version and addr in net


def _net_text(net):
    if net is None:
        return "0.0.0.0"
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


class RuleError(OSError):
    """A bad rules file: the message names the file and the line."""

    def __init__(self, path, lineno, message):
        where = f"{path}:{lineno}: " if lineno else f"{path}: "
        super().__init__(errno.EINVAL, where + message)
        self.path = path
        self.lineno = lineno


def _parse_addr(token):
    text, slash, mask = token.partition("/")
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid IP address {text!r} in {token!r}") from None
    if slash:
        if not mask.isdigit() or not 0 <= int(mask) <= addr.max_prefixlen:
            raise ValueError(f"invalid netmask {mask!r} in {token!r} "
                             f"(a prefix length 0..{addr.max_prefixlen})")
        prefix = int(mask)
    else:
        prefix = addr.max_prefixlen
    if addr.is_unspecified:
        return None     # 0.0.0.0 (or ::) means any, as in mOS
    return ipaddress.ip_network((addr, prefix), strict=False)


def _parse_port(token):
    for name in ("sport", "dport"):
        prefix = name + ":"
        if token.startswith(prefix):
            number = token[len(prefix):]
            if not number.isdigit() or int(number) > 65535:
                raise ValueError(f"invalid port {token!r} (sport:N or dport:N, N in 0..65535)")
            return name, int(number)
    raise ValueError(f"invalid port field {token!r} (expected sport:N or dport:N)")


def parse_rule(text, index, lineno):
    """One rule line (comments already removed) -> Rule; ValueError if bad."""
    fields = text.split()
    action = fields[0]
    if action not in (ACCEPT, DROP):
        raise ValueError(f"unknown action {action!r} (ACCEPT or DROP)")
    if len(fields) < 3:
        raise ValueError(f"{action} needs a source and a destination address")
    src = _parse_addr(fields[1])
    dst = _parse_addr(fields[2])
    ports = {"sport": 0, "dport": 0}
    for token in fields[3:]:
        name, value = _parse_port(token)
        ports[name] = value
    return Rule(index, lineno, action, src, dst, ports["sport"], ports["dport"])


def parse_rules(path):
    """The rules of a file, in order; RuleError (an OSError) names the bad line."""
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            lines = f.readlines()
    except UnicodeDecodeError as exc:
        raise RuleError(path, 0, f"not a text file ({exc.reason})") from None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read rules file {path}: {exc.strerror}") from None
    rules = []
    for lineno, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if len(rules) == MAX_RULES:
            raise RuleError(path, lineno, f"more than {MAX_RULES} rules")
        try:
            rules.append(parse_rule(text, len(rules) + 1, lineno))
        except ValueError as exc:
            raise RuleError(path, lineno, str(exc)) from None
    return rules


# ---------------------------------------------------------------- the app
class Firewall:
    def __init__(self, rules, output, stats_output, interval):
        self.rules = rules
        self.output = output
        self.stats_output = stats_output     # opened at start, written at the end
        self.interval = interval
        self.default_count = 0       # flows no rule matched (accepted)
        self.dropped_frames = 0
        self.tables = 0

    def lookup(self, cli, svr):
        src, dst = ipaddress.ip_address(cli[0]), ipaddress.ip_address(svr[0])
        for rule in self.rules:
            if rule.matches(src, dst, cli[1], svr[1]):
                rule.count += 1
                return rule
        self.default_count += 1
        return None

    def on_start(self, mctx, sock, side, event, arg):
        """The first SYN of a connection (client side, HK_SND)."""
        if side != MOS_SIDE_CLI or mtcp_get_uctx(mctx, sock) is not None:
            return
        cli, svr = mtcp_getpeername(mctx, sock, MOS_SIDE_BOTH)
        rule = self.lookup(cli, svr)
        action = rule.action if rule is not None else ACCEPT
        mtcp_set_uctx(mctx, sock, action)
        if action == DROP:
            mtcp_setlastpkt(mctx, sock, side, 0, None, 0, MOS_DROP)
            self.dropped_frames += 1
            mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOSX_DROP_FLOW, 1)
        else:
            mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_STOP_MON, MOS_SIDE_BOTH)

    def on_packet(self, mctx, sock, side, event, arg):
        """Frames of a dropped flow that still reach user space."""
        if mtcp_get_uctx(mctx, sock) == DROP:
            mtcp_setlastpkt(mctx, sock, side, 0, None, 0, MOS_DROP)
            self.dropped_frames += 1

    def on_timer(self, mctx, timer_id, side, event, arg):
        self.print_table()
        mtcp_settimer(mctx, TIMER_ID, self.interval, self.on_timer)

    # -------------------------------------------------------------- output
    def table(self):
        lines = ["-" * 71, "Firewall rule table",
                 "idx   flows   target   client             server             port"]
        for rule in self.rules:
            line = (f"{rule.index:<6}{rule.count:<8}{rule.action:<9}"
                    f"{_net_text(rule.src):<19}{_net_text(rule.dst):<19}")
            if rule.sport:
                line += f"sport:{rule.sport:<6}"
            if rule.dport:
                line += f"dport:{rule.dport:<6}"
            lines.append(line.rstrip())
        lines.append(f"{'-':<6}{self.default_count:<8}{ACCEPT:<9}(no rule matched)")
        lines.append("-" * 71)
        return "\n".join(lines) + "\n"

    def print_table(self):
        self.tables += 1
        self.output.write(self.table())
        self.output.flush()

    def stats(self):
        return {"rules": [rule.as_dict() for rule in self.rules],
                "default_accept": self.default_count,
                "flows": sum(rule.count for rule in self.rules) + self.default_count,
                "dropped_frames": self.dropped_frames}

    # ----------------------------------------- --workers N (docs/workers.md)
    # Each worker counts the flows it saw; the tables and the stats the workers write at
    # one moment (a refresh, the end) become one with every count summed: a run on one
    # worker's. These run in the parent, whose own counts are not used otherwise.
    def combine_tables(self, records):
        counts = [0] * (len(self.rules) + 1)
        for record in records:
            rows = record.decode().split("\n")[3:3 + len(counts)]
            for i, row in enumerate(rows):
                counts[i] += int(row.split()[1])
        for rule, count in zip(self.rules, counts):
            rule.count = count
        self.default_count = counts[-1]
        return [self.table()]

    def combine_stats(self, records):
        docs = [json.loads(record) for record in records]
        total = docs[0]
        for doc in docs[1:]:
            for rule, other in zip(total["rules"], doc["rules"]):
                rule["flows"] += other["flows"]
            for key in ("default_accept", "flows", "dropped_frames"):
                total[key] += doc[key]
        return [json.dumps(total, indent=1) + "\n"]

    def close(self):
        self.print_table()
        if self.stats_output is not None:
            self.stats_output.write(json.dumps(self.stats(), indent=1) + "\n")
            self.stats_output.close()
        self.output.close()


def setup(mctx, args):
    check_option("--interval", interval_seconds, args.interval)
    rules = parse_rules(args.rules)
    # (combine: the app made just below)
    output = mosx_open_output(mctx, args.output, combine=lambda r: app.combine_tables(r))
    stats_output = mosx_open_output(mctx, args.stats_output,
                                    combine=lambda r: app.combine_stats(r)) \
        if args.stats_output else None
    app = Firewall(rules, output, stats_output, args.interval)
    sock = monitor_socket(mctx)
    # Headers only: no bytestream buffers.
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_CLIBUF, 0)
    mtcp_setsockopt(mctx, sock, SOL_MONSOCKET, MOS_SVRBUF, 0)
    # PKT_IN comes before CONN_START for the same frame (ascending event bits), so
    # on_packet sees no decision yet for the first SYN and on_start makes it.
    mtcp_register_callback(mctx, sock, MOS_ON_PKT_IN, MOS_HK_SND, app.on_packet)
    mtcp_register_callback(mctx, sock, MOS_ON_CONN_START, MOS_HK_SND, app.on_start)
    if args.interval > 0:
        mtcp_settimer(mctx, TIMER_ID, args.interval, app.on_timer)
    return app


def teardown(app):
    app.close()
