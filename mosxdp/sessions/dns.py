"""DNS messages over UDP datagrams and TCP streams, decoded with dnspython.

`DnsParser("udp")` takes whole datagrams, `DnsParser("tcp")` each side's reassembled stream
(messages behind a 2-byte length, several per stream, split anywhere). Queries and
responses are paired by transaction ID, first come first served per ID, as Zeek does; a
`DnsTransaction` (a dns.log row, Zeek's field names and spellings) is returned once both
halves are seen, and `close()` returns the halves never paired. Whether a message is a
query or a response is its QR bit (not the direction it travelled). Only standard queries
(opcode 0) are logged, like Zeek.

Field semantics follow Zeek's dns.log: ``query`` is lowercased and has no trailing dot;
``RD``, ``TC`` and ``Z`` come from the query, ``AA`` and ``RA`` from a response that has
answers; ``answers`` and ``TTLs`` list the answer section only (A/AAAA: the address;
CNAME/NS/PTR/MX/SRV: the target name; SOA: the primary server; TXT: ``TXT <len> <text>`` per
string; unknown types: ``<unknown type=N>``); ``rtt`` (seconds, when times are fed) runs
from the query to a response with answers; ``rejected`` is a response with no question
and a non-zero rcode, or with a question and no records at all.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from struct import unpack_from

from .common import Weird, text

__all__ = ["DnsParser", "DnsTransaction", "qtype_name", "rcode_name", "qclass_name"]

HEADER_LEN = 12
# Unpaired halves kept per connection before the oldest is given up (logged unpaired).
MAX_PENDING = 100

_QTYPES = {
    1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR",
    10: "NULL", 11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT", 17: "RP",
    18: "AFSDB", 19: "X25", 20: "ISDN", 21: "RT", 22: "NSAP", 23: "NSAP-PTR", 24: "SIG",
    25: "KEY", 26: "PX", 27: "GPOS", 28: "AAAA", 29: "LOC", 30: "NXT", 31: "EID",
    32: "NIMLOC", 33: "SRV", 34: "ATMA", 35: "NAPTR", 36: "KX", 37: "CERT", 38: "A6",
    39: "DNAME", 40: "SINK", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP", 45: "IPSECKEY",
    46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID", 50: "NSEC3", 51: "NSEC3PARAM",
    52: "TLSA", 53: "SMIMEA", 55: "HIP", 56: "NINFO", 57: "RKEY", 58: "TALINK", 59: "CDS",
    60: "CDNSKEY", 61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS",
    99: "SPF", 100: "UINFO", 101: "UID", 102: "GID", 103: "UNSPEC", 104: "NID", 105: "L32",
    106: "L64", 107: "LP", 108: "EUI48", 109: "EUI64", 249: "TKEY", 250: "TSIG", 251: "IXFR",
    252: "AXFR", 253: "MAILB", 254: "MAILA", 255: "*", 256: "URI", 257: "CAA", 32768: "TA",
    32769: "DLV",
}
_RCODES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSet", 9: "NOTAUTH", 10: "NOTZONE",
}
_QCLASSES = {1: "C_INTERNET", 2: "C_CSNET", 3: "C_CHAOS", 4: "C_HESIOD", 254: "C_NONE",
             255: "C_ANY"}

# dnspython, imported by the first DnsParser: it takes 30 ms, a third of a run's start-up.
dns = None
# dnspython's complaints, named as Zeek names the same faults where it has a name.
_ERROR_NAMES: dict = {}
# What dnspython may raise on hostile bytes (beyond its own DNSException family).
_PARSE_ERRORS: tuple = ()


def _import_dnspython() -> None:
    global dns, _ERROR_NAMES, _PARSE_ERRORS
    import dns.exception
    import dns.message
    import dns.name
    import dns.rdata
    import dns.rdatatype
    _ERROR_NAMES = {
        dns.message.ShortHeader: "DNS_truncated_len_lt_hdr_len",
        dns.name.BadPointer: "DNS_label_forward_compress_offset",
        dns.name.LabelTooLong: "DNS_label_too_long",
        dns.name.NameTooLong: "DNS_NAME_too_long",
    }
    _PARSE_ERRORS = (dns.exception.DNSException, ValueError, IndexError, KeyError, TypeError,
                     UnicodeError, OverflowError)


def qtype_name(qtype: int) -> str:
    return _QTYPES.get(qtype, f"query-{qtype}")


def rcode_name(rcode: int) -> str:
    if 11 <= rcode <= 15:
        return f"unassigned-{rcode}"
    return _RCODES.get(rcode, f"rcode-{rcode}")


def qclass_name(qclass: int) -> str:
    return _QCLASSES.get(qclass, f"qclass-{qclass}")


@dataclass(slots=True)
class DnsTransaction:
    """A query and its response (a dns.log row; Zeek's field names)."""

    ts: float | None = None
    proto: str = "udp"
    trans_id: int = 0
    rtt: float | None = None
    query: str | None = None
    qclass: int | None = None
    qclass_name: str | None = None
    qtype: int | None = None
    qtype_name: str | None = None
    rcode: int | None = None
    rcode_name: str | None = None
    AA: bool = False
    TC: bool = False
    RD: bool = False
    RA: bool = False
    Z: int = 0
    answers: list[str] = field(default_factory=list)
    TTLs: list[float] = field(default_factory=list)
    rejected: bool = False
    saw_query: bool = False
    saw_reply: bool = False
    # Beyond Zeek's fields, for Suricata's EVE: the response's header flags and its answer
    # section as (owner name, type name, TTL, data) for the answers ``answers`` lists.
    reply_flags: int | None = None
    answer_rrs: list[tuple[str, str, int, str]] = field(default_factory=list)


def _name(name: dns.name.Name) -> str:
    """A domain name as dns.log writes it: lowercase, no trailing dot, raw label bytes."""
    return text(b".".join(label for label in name.labels if label).lower())


def _answer(rdata) -> str | None:
    """The dns.log answer string of one answer-section record (None: Zeek logs none)."""
    t = rdata.rdtype
    if isinstance(rdata, dns.rdata.GenericRdata):
        # dnspython parses A, MX ... of class IN only: of another class the data is opaque
        return f"<unknown type={int(t)}>"
    if t in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return rdata.address
    if t in (dns.rdatatype.CNAME, dns.rdatatype.NS, dns.rdatatype.PTR):
        return _name(rdata.target)
    if t == dns.rdatatype.MX:
        return _name(rdata.exchange)
    if t == dns.rdatatype.SOA:
        return _name(rdata.mname)
    if t == dns.rdatatype.SRV:
        return _name(rdata.target)
    if t in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        kind = "TXT" if t == dns.rdatatype.TXT else "SPF"
        return " ".join(f"{kind} {len(s)} {text(s)}" for s in rdata.strings)
    if t == dns.rdatatype.DS:
        return f"DS {rdata.algorithm} {rdata.digest_type}"
    if t == dns.rdatatype.DNSKEY:
        return f"DNSKEY {rdata.algorithm}"
    if t == dns.rdatatype.RRSIG:
        return f"RRSIG {int(rdata.type_covered)} {_name(rdata.signer) or '<Root>'}"
    if t in (dns.rdatatype.NSEC3, dns.rdatatype.NSEC3PARAM):
        return dns.rdatatype.to_text(t)
    if t in (dns.rdatatype.WKS, dns.rdatatype.HINFO, dns.rdatatype.CAA, dns.rdatatype.OPT,
             dns.rdatatype.TSIG, dns.rdatatype.SVCB, dns.rdatatype.HTTPS):
        return None
    return f"<unknown type={int(t)}>"


def _error_name(exc: BaseException) -> str:
    for kind, name in _ERROR_NAMES.items():
        if isinstance(exc, kind):
            return name
    return "DNS_malformed"


class DnsParser:
    """The DNS messages of one UDP flow or TCP connection, paired into transactions."""

    def __init__(self, transport: str = "udp"):
        if transport not in ("udp", "tcp"):
            raise ValueError(f"DnsParser transport must be 'udp' or 'tcp', not {transport!r}")
        if dns is None:
            _import_dnspython()
        self.proto = transport
        self._streams = (bytearray(), bytearray())
        self._queries: dict[int, deque[DnsTransaction]] = {}  # waiting for their response
        self._replies: dict[int, deque[DnsTransaction]] = {}  # waiting for their query
        self._pending: list[DnsTransaction] = []              # both, oldest first
        self.done = False  # never: DNS has no end short of the connection's

    def feed(self, direction: int, data, ts: float | None = None) -> list:
        """UDP: ``data`` is one datagram. TCP: the next bytes of ``direction``'s stream."""
        out: list = []
        if self.proto == "udp":
            self._message(direction, bytes(data), ts, out)
            return out
        buf = self._streams[direction]
        buf += data
        pos = 0
        while len(buf) - pos >= 2:
            (n,) = unpack_from("!H", buf, pos)
            if len(buf) - pos - 2 < n:
                break
            self._message(direction, bytes(buf[pos + 2:pos + 2 + n]), ts, out)
            pos += 2 + n
        del buf[:pos]
        return out

    def close(self) -> list:
        """End of the flow: the queries never answered and the responses never asked for."""
        out: list = []
        for d, buf in enumerate(self._streams):
            if buf:
                out.append(Weird("DNS_truncated_tcp_message",
                                 f"{len(buf)} bytes of an incomplete message", d))
                buf.clear()
        out.extend(self._pending)
        self._pending.clear()
        self._queries.clear()
        self._replies.clear()
        return out

    # -- one message
    def _message(self, d: int, wire: bytes, ts: float | None, out: list) -> None:
        if len(wire) < HEADER_LEN:
            out.append(Weird("DNS_truncated_len_lt_hdr_len", f"{len(wire)} bytes", d))
            return
        trans_id, flags, qdcount, ancount, nscount, arcount = unpack_from("!6H", wire)
        if (flags >> 11) & 0xF:
            return  # not a standard query: Zeek does not log it either
        msg = self._decode(d, wire, out)
        is_query = not flags & 0x8000
        own, other = (self._queries, self._replies) if is_query else (self._replies,
                                                                        self._queries)
        waiting = other.get(trans_id)
        if waiting:
            txn = waiting.popleft()
            if not waiting:
                del other[trans_id]
        else:
            txn = DnsTransaction(ts=ts, proto=self.proto, trans_id=trans_id)
            own.setdefault(trans_id, deque()).append(txn)
            self._pending.append(txn)
            if len(self._pending) > MAX_PENDING:
                self._give_up(out)
        question = msg.question[0] if msg is not None and msg.question else None
        if is_query:
            txn.saw_query = True
            txn.RD, txn.TC, txn.Z = bool(flags & 0x0100), bool(flags & 0x0200), \
                (flags >> 4) & 0x7
            if question is not None:
                txn.query = _name(question.name)
                txn.qclass, txn.qclass_name = int(question.rdclass), \
                    qclass_name(question.rdclass)
                txn.qtype, txn.qtype_name = int(question.rdtype), qtype_name(question.rdtype)
        else:
            txn.saw_reply = True
            txn.reply_flags = flags
            txn.rcode = flags & 0xF
            txn.rcode_name = rcode_name(txn.rcode)
            if (txn.rcode and not qdcount) or (question is not None and
                                               not ancount + nscount + arcount):
                txn.rejected = True
            self._answers(txn, msg, ts, flags)
        if txn.saw_query and txn.saw_reply:
            self._pending.remove(txn)
            out.append(txn)

    def _decode(self, d: int, wire: bytes, out: list) -> dns.message.Message | None:
        """The message as far as it parses (a weird for each part that does not)."""
        try:
            msg = dns.message.from_wire(wire, ignore_trailing=True, one_rr_per_rrset=True,
                                        continue_on_error=True)
        except _PARSE_ERRORS as exc:
            out.append(Weird(_error_name(exc), str(exc), d))
            try:  # the question may still be readable
                return dns.message.from_wire(wire, question_only=True, ignore_trailing=True)
            except _PARSE_ERRORS:
                return None
        for err in msg.errors:
            out.append(Weird(_error_name(err.exception), f"{err.exception} at {err.offset}", d))
        return msg

    @staticmethod
    def _answers(txn: DnsTransaction, msg, ts: float | None, flags: int) -> None:
        if msg is None:
            return
        for rrset in msg.answer:
            for rdata in rrset:
                txn.AA, txn.RA = bool(flags & 0x0400), bool(flags & 0x0080)
                if txn.query is None:
                    txn.query = _name(rrset.name)
                if txn.rtt is None and ts is not None and txn.ts is not None and ts > txn.ts:
                    txn.rtt = ts - txn.ts
                reply = _answer(rdata)
                if reply is not None:
                    txn.answers.append(reply)
                    txn.TTLs.append(float(rrset.ttl))
                    txn.answer_rrs.append((_name(rrset.name), qtype_name(rrset.rdtype),
                                           int(rrset.ttl), reply))

    def _give_up(self, out: list) -> None:
        """Too many unpaired halves: the oldest is logged as it is."""
        txn = self._pending.pop(0)
        table = self._queries if txn.saw_query else self._replies
        waiting = table[txn.trans_id]
        waiting.remove(txn)
        if not waiting:
            del table[txn.trans_id]
        out.append(txn)
