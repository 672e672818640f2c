"""Zeek's conn.log, sans-IO: the conn_state of a TCP flow from its history, the flows' uid,
and the conn.log record of a flow from its counters (TCP: a FlowStats-like object; UDP and
ICMP: a DatagramFlowStats-like one). The public face is mosxdp.api.records
(mosx_conn_record, mosx_conn_uid); connlog and zeeklog write these records, and the session
logs of zeeklog join them by ``uid``.
"""
import hashlib
import re
from functools import lru_cache

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# Two base-62 digits at once, the lower first: _BASE62_PAIRS[n] for n < 62 * 62.
_BASE62_PAIRS = tuple(_BASE62[n % 62] + _BASE62[n // 62] for n in range(62 * 62))

# The columns of Zeek's TSV, with their Zeek types (conn.log's own, then mosxdp's).
FIELDS = (
    ("ts", "time"), ("uid", "string"), ("id.orig_h", "addr"), ("id.orig_p", "port"),
    ("id.resp_h", "addr"), ("id.resp_p", "port"), ("proto", "enum"), ("duration", "interval"),
    ("orig_bytes", "count"), ("resp_bytes", "count"), ("conn_state", "string"),
    ("missed_bytes", "count"), ("history", "string"), ("orig_pkts", "count"),
    ("orig_ip_bytes", "count"), ("resp_pkts", "count"), ("resp_ip_bytes", "count"),
    ("client_state", "string"), ("server_state", "string"), ("end_reason", "string"),
    ("community_id", "string"),
)


# Zeek's TCP endpoint states (TCP_ENDPOINT_*).
INACTIVE, SYN_SENT, SYN_ACK_SENT, PARTIAL, ESTABLISHED, CLOSED, RESET = range(7)
_RSTOS0 = re.compile(r"\^?S[^HAFGIQ]*R.*")


def zeek_states(history):
    """Each endpoint's final state as Zeek's TCP analyzer sets it, replayed over the history
    letters (upper case: originator), which come in the order the packets did: only a
    side's first A or D matters to it (an inactive side becomes PARTIAL, or ESTABLISHED
    after the peer's SYN-ACK), and SYN, FIN and RST move it as Zeek does. A side never seen
    stays INACTIVE; one seen only mid-stream is PARTIAL until its FIN or RST."""
    state = {True: INACTIVE, False: INACTIVE}
    prev = dict(state)

    def move(side, new):
        prev[side], state[side] = state[side], new

    for letter in history.lstrip("^"):
        orig, kind = letter.isupper(), letter.upper()
        me, peer = state[orig], state[not orig]
        if me == INACTIVE:
            if kind == "S" or kind == "H":
                if orig:
                    move(orig, SYN_ACK_SENT if kind == "H" else SYN_SENT)
                else:
                    if peer == SYN_SENT or (kind == "S" and peer == SYN_ACK_SENT):
                        move(not orig, ESTABLISHED)
                    move(orig, ESTABLISHED)
            elif kind == "F":
                move(orig, CLOSED)
            elif kind == "R":
                move(orig, RESET)
            elif not orig and kind == "A" and state[True] == SYN_SENT:
                pass   # an ACK of the SYN before the SYN-ACK does not make a partial side
            elif peer == ESTABLISHED:
                move(orig, ESTABLISHED)   # the SYN was missed, the SYN-ACK was not
            else:
                move(orig, PARTIAL)
        elif me in (SYN_SENT, SYN_ACK_SENT):
            if kind == "F":
                move(orig, CLOSED)
            elif kind == "R":
                move(orig, RESET)
        elif me in (ESTABLISHED, PARTIAL):
            if kind == "S" and me == PARTIAL and peer == INACTIVE:
                move(orig, SYN_SENT)
            elif kind == "F":
                move(orig, CLOSED)
                if peer == RESET and prev[not orig] == CLOSED:
                    move(not orig, CLOSED)   # FIN then RST from the peer: a normal close
            elif kind == "R":
                move(orig, RESET)
        elif me == CLOSED and kind == "R" and peer != CLOSED:
            move(orig, RESET)
    return state[True], state[False]


def conn_state(history, orig_bytes=0, resp_bytes=0):
    """Zeek's conn_state (base/protocols/conn/main.zeek) from the endpoints' final states:
    a flow without a handshake is OTH while open, SF once both sides sent a FIN, SH or SHR
    when one did, RSTRH or OTH after a RST."""
    return _conn_state(history, orig_bytes == resp_bytes == 0)


# Most flows share a handful of histories (ShADadFf, S, ShR ...): each is replayed once.
@lru_cache(maxsize=4096)
def _conn_state(history, no_bytes):
    os_, rs = zeek_states(history)
    o_inactive = os_ in (INACTIVE, PARTIAL)
    r_inactive = rs in (INACTIVE, PARTIAL)
    if rs == RESET:
        if os_ in (SYN_SENT, SYN_ACK_SENT) or (os_ == RESET and no_bytes):
            return "REJ"
        return "RSTRH" if o_inactive else "RSTR"
    if os_ == RESET:
        if r_inactive:
            return "RSTOS0" if _RSTOS0.fullmatch(history) else "OTH"
        return "RSTO"
    if os_ == CLOSED and rs == CLOSED:
        return "SF"
    if os_ == CLOSED:
        return "SH" if r_inactive else "S2"
    if rs == CLOSED:
        return "SHR" if o_inactive else "S3"
    if os_ == SYN_SENT and rs == INACTIVE:
        return "S0"
    if os_ == ESTABLISHED and rs == ESTABLISHED:
        return "S1"
    return "OTH"


def make_uid(*parts):
    """A Zeek-like connection uid, deterministic for a given flow and run."""
    digest = int.from_bytes(hashlib.sha1(repr(parts).encode()).digest()[:12], "big")
    chars = ["C"]
    for _ in range(8):          # 17 base-62 digits, the lowest first: 8 pairs and one
        digest, rem = divmod(digest, 62 * 62)
        chars.append(_BASE62_PAIRS[rem])
    chars.append(_BASE62[digest % 62])
    return "".join(chars)


def tcp_uid(start_ts, orig_h, orig_p, resp_h, resp_p, vlan_ids):
    """The uid of a TCP flow: of the flow alone (not of the flows before it), so that it is
    the same with --workers and in every log of the run."""
    return make_uid(start_ts, orig_h, orig_p, resp_h, resp_p, vlan_ids)


def datagram_uid(start_ts, orig_h, orig_p, resp_h, resp_p, vlan_ids, proto):
    """The uid of a UDP or ICMP flow (``proto`` "udp" or "icmp")."""
    return make_uid(start_ts, orig_h, orig_p, resp_h, resp_p, vlan_ids, proto)


def tcp_record(stats, peers, client_state, server_state, community_id):
    """The conn.log record of a TCP flow at its end: ``stats`` its FlowStats, ``peers``
    ((orig_h, orig_p), (resp_h, resp_p)), the emulated sides' final state names."""
    (orig_h, orig_p), (resp_h, resp_p) = peers
    history = stats.history
    if history[:1].islower():
        # The first packet came from the responder: a flow picked up mid-stream whose
        # client the core guessed (by port) is the other side. Zeek marks that flip so.
        history = "^" + history
    return {
        "ts": stats.start_ts / 1e6,
        "uid": tcp_uid(stats.start_ts, orig_h, orig_p, resp_h, resp_p, stats.vlan_ids),
        "id.orig_h": orig_h, "id.orig_p": orig_p,
        "id.resp_h": resp_h, "id.resp_p": resp_p,
        "proto": "tcp",
        "duration": (stats.last_ts - stats.start_ts) / 1e6,
        "orig_bytes": stats.stream_bytes[0],
        "resp_bytes": stats.stream_bytes[1],
        "conn_state": conn_state(history, stats.stream_bytes[0], stats.stream_bytes[1]),
        # Bytes never captured that the receiver acknowledged or that lay below the
        # furthest byte seen: what mtcp_peek reports as holes, flowdump's zeros.
        "missed_bytes": stats.missed_bytes[0] + stats.missed_bytes[1],
        "history": history,
        "orig_pkts": stats.pkts[0], "orig_ip_bytes": stats.ip_bytes[0],
        "resp_pkts": stats.pkts[1], "resp_ip_bytes": stats.ip_bytes[1],
        "client_state": client_state,
        "server_state": server_state,
        "end_reason": stats.end_reason,
        "community_id": community_id,
    }


def datagram_record(stats, community_id):
    """The conn.log record of a UDP or ICMP flow at its end (Zeek's flow semantics:
    mosxdp/core/datagrams.py)."""
    if stats.proto == "udp":
        orig, resp = stats.pkts[0] > 0, stats.pkts[1] > 0
        state = ("SF" if resp else "S0") if orig else ("SHR" if resp else "OTH")
    else:
        state = "OTH"
    record = {
        "ts": stats.start_ts / 1e6,
        "uid": datagram_uid(stats.start_ts, stats.orig_h, stats.orig_p, stats.resp_h,
                            stats.resp_p, stats.vlan_ids, stats.proto),
        "id.orig_h": stats.orig_h, "id.orig_p": stats.orig_p,
        "id.resp_h": stats.resp_h, "id.resp_p": stats.resp_p,
        "proto": stats.proto,
        "duration": (stats.last_ts - stats.start_ts) / 1e6,
        "orig_bytes": stats.payload_bytes[0],
        "resp_bytes": stats.payload_bytes[1],
        "conn_state": state,
        "missed_bytes": 0,
    }
    if stats.history:
        record["history"] = stats.history
    record.update({
        "orig_pkts": stats.pkts[0], "orig_ip_bytes": stats.ip_bytes[0],
        "resp_pkts": stats.pkts[1], "resp_ip_bytes": stats.ip_bytes[1],
        "end_reason": stats.end_reason,
        "community_id": community_id,
    })
    return record
