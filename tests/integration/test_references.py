"""flowdump and connlog against the reference tools (tcpflow, tshark).

For every pcap in tests/data, flowdump's files (the CLI in a subprocess, as a
user runs it) are compared byte for byte, flow by flow and direction by
direction, with `tcpflow -r` (file names included: tcpflow's zero padding,
IPv6 form and `c1`, `c2` suffixes of a reused 4-tuple) and with tshark's
`-z follow,tcp,raw,N` for every tcp.stream N (hex decoded, mapped to tcpflow's
file names through the endpoints tshark prints).

Where the two references differ, mosxdp follows one of them on purpose:

- Bytes never captured (a hole that never fills, lost.pcap): tcpflow writes
  zeros, tshark writes a text marker "[N bytes missing in capture file]" in
  their place.  mosxdp follows tcpflow: a hole is written as zeros, and zeros
  keep every later byte at its true stream offset (the file size is the
  stream length), which a marker of a different length does not.
- Overlapping segments whose common bytes differ (overlap_diff.pcap): tshark
  keeps the FIRST copy, tcpflow the LAST.  mosxdp follows its configured
  overlap policy: FIRST (mOS's default, `overlap_policy = "first"`) equals
  tshark, LAST equals tcpflow; the sidecar overlap_diff.expected.json has both.
- reorder.pcap: tshark loses a segment that arrives three segments late (it
  prints the missing-bytes marker and drops the segment), a known limitation
  of its follow; tcpflow and mosxdp reassemble the original stream.

connlog's packets and bytes per direction are compared with tshark's
`-z conv,tcp` (see test_connlog_matches_tshark_conv for the arithmetic).
"""
import base64
import hashlib
import json

import pytest

from integ_helpers import (
    APPS, DATA, connlog, flowdump, run_mosxdp, tcpflow, tcpflow_endpoint, tmpdir, tshark_conv,
    tshark_first_fins, tshark_follow, tshark_frames, tshark_streams,
)

REAL = ["http_sizes", "upload", "concurrent", "refused", "rst_abort", "halfclose", "ipv6",
        "small_writes", "reuse"]
CRAFTED = ["reorder", "dup", "overlap_diff", "seqwrap", "lost", "holes", "midstream",
           "shuffled_upload"]
ALL = REAL + CRAFTED
# UDP and ICMP, checked against tshark by test_datagram_references.py.
DATAGRAMS = ["datagrams"]
# The crafted variants are rewrites of this flow of http_sizes.pcap.
BASE_CLIENT = tcpflow_endpoint("10.77.0.1", 37786)
BASE_SERVER = tcpflow_endpoint("10.77.0.2", 8080)
C2S = f"{BASE_CLIENT}-{BASE_SERVER}"
S2C = f"{BASE_SERVER}-{BASE_CLIENT}"
NO_MIDSTREAM = ("--no-midstream",)
MARKER = b"bytes missing in capture file"


def pcap(name):
    return DATA / f"{name}.pcap"


@pytest.fixture(scope="module", autouse=True)
def prefetch():
    """Start every reference and mosxdp run at once on the helpers' pool."""
    for name in ALL:
        path = pcap(name)
        tcpflow(path), tshark_follow(path), tshark_conv(path), tshark_frames(path)
        tshark_first_fins(path)
        flowdump(path), connlog(path)
    flowdump(pcap("overlap_diff"), overlap_policy="first")
    flowdump(pcap("overlap_diff"), overlap_policy="last")
    flowdump(pcap("midstream"), NO_MIDSTREAM), connlog(pcap("midstream"), NO_MIDSTREAM)
    flowdump(pcap("midstream"), NO_MIDSTREAM, midstream_pickup=True)


def sidecar(name):
    return json.loads((DATA / f"{name}.expected.json").read_text())


def original_streams():
    """The flow the crafted variants come from, as tcpflow and tshark agree on it."""
    streams = tcpflow(pcap("http_sizes")).result()
    return {C2S: streams[C2S], S2C: streams[S2C]}


def show(streams):
    return {name: len(data) for name, data in streams.items()}


def assert_same(ours, theirs, what):
    assert sorted(ours) == sorted(theirs), f"file names differ from {what}: {show(ours)} vs {show(theirs)}"
    for name in ours:
        assert ours[name] == theirs[name], (
            f"{name}: {len(ours[name])} bytes differ from {what}'s {len(theirs[name])} bytes")


def test_every_capture_is_classified():
    on_disk = sorted(p.stem for p in DATA.glob("*.pcap"))
    assert on_disk == sorted(ALL + DATAGRAMS), \
        "a new capture needs a place in REAL, CRAFTED or DATAGRAMS"


# ------------------------------------------------------------ real captures
@pytest.mark.parametrize("name", REAL)
def test_real_capture_equals_tcpflow_and_tshark(name):
    """On real captures (no holes, no conflicting overlaps) both references
    agree, and flowdump equals them for every flow and direction."""
    ours = flowdump(pcap(name)).result()
    assert_same(ours, tcpflow(pcap(name)).result(), "tcpflow -r")
    assert_same(ours, tshark_streams(pcap(name)), "tshark follow,tcp,raw")
    streams = tshark_follow(pcap(name)).result()
    # Every tshark stream with data in a direction is a file; refused.pcap has none.
    expected_files = sum(bool(s[3]) + bool(s[4]) for s in streams)
    assert len(ours) == expected_files
    if name != "refused":
        assert ours and all(ours.values())


def test_reuse_gets_tcpflow_suffixes():
    names = sorted(flowdump(pcap("reuse")).result())
    base_c2s = f"{tcpflow_endpoint('10.77.0.1', 40000)}-{tcpflow_endpoint('10.77.0.2', 7003)}"
    base_s2c = f"{tcpflow_endpoint('10.77.0.2', 7003)}-{tcpflow_endpoint('10.77.0.1', 40000)}"
    assert names == sorted(base + suffix for base in (base_c2s, base_s2c)
                           for suffix in ("", "c1", "c2"))
    streams = flowdump(pcap("reuse")).result()
    for number, suffix in enumerate(("", "c1", "c2"), 1):
        assert f"request {number} on a reused 4-tuple".encode() in streams[base_c2s + suffix]


def test_ipv6_names_as_tcpflow():
    names = sorted(flowdump(pcap("ipv6")).result())
    assert names and all(n.startswith(("fd77::1.", "fd77::2.")) for n in names)
    assert any(n.endswith("-fd77::2.08080") for n in names)


# --------------------------------------------------------- crafted variants
@pytest.mark.parametrize("name", ["dup", "seqwrap"])
def test_variant_all_agree_on_original(name):
    """Duplicated segments and sequence numbers wrapping past 2**32: both
    references and flowdump give the original streams."""
    ours = flowdump(pcap(name)).result()
    assert_same(ours, original_streams(), "the original flow")
    assert_same(ours, tcpflow(pcap(name)).result(), "tcpflow -r")
    assert_same(ours, tshark_streams(pcap(name)), "tshark follow,tcp,raw")


def test_reorder_follows_tcpflow():
    """Reordered segments: flowdump and tcpflow give the original stream.
    tshark's follow gets the request right but loses the server segment that
    arrives three segments late (it prints its missing-bytes marker and drops
    the late bytes): a tshark limitation, not a disagreement on semantics."""
    ours = flowdump(pcap("reorder")).result()
    assert_same(ours, original_streams(), "the original flow")
    assert_same(ours, tcpflow(pcap("reorder")).result(), "tcpflow -r")
    theirs = tshark_streams(pcap("reorder"))
    assert theirs[C2S] == ours[C2S]
    if theirs[S2C] != ours[S2C]:
        assert MARKER in theirs[S2C], "tshark differs for another reason than its known limitation"


def test_shuffled_upload_gives_the_senders_bytes():
    """Client data segments seen before the server's ACK that opened the window for them
    (a capture at the client, shuffled within 3s): the server accepted and acknowledged
    them, so they are in the stream, exactly as the sender wrote it and as tcpflow gives it."""
    expected = sidecar("shuffled_upload")
    ours = flowdump(pcap("shuffled_upload")).result()
    client = tcpflow_endpoint("10.77.0.1", 41000)
    server = tcpflow_endpoint("10.77.0.2", 8080)
    for name, direction in ((f"{client}-{server}", "client_to_server"),
                            (f"{server}-{client}", "server_to_client")):
        assert len(ours[name]) == expected["length"][direction]
        assert hashlib.sha256(ours[name]).hexdigest() == expected["sha256"][direction]
    assert_same(ours, tcpflow(pcap("shuffled_upload")).result(), "tcpflow -r")


def test_overlap_first_equals_tshark():
    """Default policy FIRST (and FIRST configured explicitly): the first copy
    of overlapping bytes is kept, as tshark shows it."""
    expected = sidecar("overlap_diff")["FIRST"]
    default = flowdump(pcap("overlap_diff")).result()
    explicit = flowdump(pcap("overlap_diff"), overlap_policy="first").result()
    for ours in (default, explicit):
        assert ours[C2S] == base64.b64decode(expected["client_to_server"])
        assert ours[S2C] == base64.b64decode(expected["server_to_client"])
        assert_same(ours, tshark_streams(pcap("overlap_diff")), "tshark follow,tcp,raw")
    # ... and tcpflow keeps the last copy, so FIRST must differ from it.
    assert default != tcpflow(pcap("overlap_diff")).result()


def test_overlap_last_equals_tcpflow():
    """Policy LAST (`overlap_policy = "last"`): later copies overwrite, as tcpflow writes."""
    expected = sidecar("overlap_diff")["LAST"]
    ours = flowdump(pcap("overlap_diff"), overlap_policy="last").result()
    assert ours[C2S] == base64.b64decode(expected["client_to_server"])
    assert ours[S2C] == base64.b64decode(expected["server_to_client"])
    assert_same(ours, tcpflow(pcap("overlap_diff")).result(), "tcpflow -r")
    assert ours != tshark_streams(pcap("overlap_diff"))


def test_lost_segment_is_zeros_like_tcpflow():
    """A segment lost for good: flowdump writes the hole as zeros, as tcpflow
    does and the sidecar expects; tshark writes its text marker instead, so
    its stream is ours with the zeros replaced by that marker."""
    expected = sidecar("lost")
    (hole,) = expected["holes"]
    assert hole["direction"] == "server_to_client"
    ours = flowdump(pcap("lost")).result()
    assert ours[C2S] == base64.b64decode(expected["client_to_server"])
    assert ours[S2C] == base64.b64decode(expected["server_to_client"])
    start, end = hole["offset"], hole["offset"] + hole["length"]
    assert ours[S2C][start:end] == bytes(hole["length"])
    assert_same(ours, tcpflow(pcap("lost")).result(), "tcpflow -r")
    theirs = tshark_streams(pcap("lost"))
    assert theirs[C2S] == ours[C2S]
    head, tail = ours[S2C][:start], ours[S2C][end:]
    assert theirs[S2C].startswith(head) and theirs[S2C].endswith(tail)
    marker = theirs[S2C][len(head):len(theirs[S2C]) - len(tail)]
    assert f"[{hole['length']} {MARKER.decode()}]".encode() in marker


@pytest.mark.parametrize("name", ["lost", "holes", "http_sizes"])
def test_flowdump_says_how_many_bytes_its_files_miss(name):
    """One line at exit with the bytes never seen (the sidecar's holes), none without."""
    holes = sum(h["length"] for h in sidecar(name)["holes"]) if name != "http_sizes" else 0
    proc = run_mosxdp("run", "flowdump", "--pcap", pcap(name), "--outdir", tmpdir("flowdump"))
    assert proc.returncode == 0
    assert proc.stderr == (f"flowdump: {holes} stream bytes the monitor never saw (holes in "
                           "the capture, or payload its snap length cut) are zeros in the "
                           "files, or absent from their ends\n" if holes else "")


def test_holes_in_both_directions_are_zeros_like_tcpflow():
    """Bytes lost by the capture in both directions, each acknowledged by its receiver:
    flowdump writes exactly the holes as zeros at their offsets (every byte after a hole
    delivered), as tcpflow does; conn.log's missed_bytes is the sum of the holes; tshark
    has its marker for each hole in place of the zeros."""
    expected = sidecar("holes")
    ours = flowdump(pcap("holes")).result()
    names = {"client_to_server": C2S, "server_to_client": S2C}
    for direction, name in names.items():
        assert ours[name] == base64.b64decode(expected[direction])
    assert {h["direction"] for h in expected["holes"]} == set(names)
    for hole in expected["holes"]:
        data = ours[names[hole["direction"]]]
        assert data[hole["offset"]:hole["offset"] + hole["length"]] == bytes(hole["length"])
    assert_same(ours, tcpflow(pcap("holes")).result(), "tcpflow -r")
    (record,) = connlog(pcap("holes")).result()
    assert record["missed_bytes"] == sum(h["length"] for h in expected["holes"])
    theirs = tshark_streams(pcap("holes"))
    for direction, name in names.items():
        holes = [h for h in expected["holes"] if h["direction"] == direction]
        pieces, at = [], 0
        for hole in holes:
            pieces.append(ours[name][at:hole["offset"]])
            at = hole["offset"] + hole["length"]
        pieces.append(ours[name][at:])
        markers = [f"[{h['length']} {MARKER.decode()}]".encode() for h in holes]
        rest = theirs[name]
        for piece, marker in zip(pieces, markers + [None]):
            assert rest.startswith(piece), f"{name}: tshark differs beyond its markers"
            rest = rest[len(piece):]
            if marker is not None:
                assert marker in rest[:len(marker) + 2]
                rest = rest[rest.index(marker) + len(marker):].lstrip(b".\0")
        assert rest == b""


def test_midstream_without_pickup_is_orphans():
    """A capture that starts after the handshake: with --no-midstream, or in an app that
    does not ask for pickup (mOS's default), every packet is an orphan (MOS_ON_ORPHAN): no
    flow, no file, no log line. --no-midstream wins over `midstream_pickup = true`."""
    assert flowdump(pcap("midstream"), NO_MIDSTREAM).result() == {}
    assert flowdump(pcap("midstream"), NO_MIDSTREAM, midstream_pickup=True).result() == {}
    assert connlog(pcap("midstream"), NO_MIDSTREAM).result() == []
    counts_file = tmpdir("counts") / "counts.json"
    proc = run_mosxdp("run", APPS / "eventcount.py", "--pcap", pcap("midstream"),
                      "--counts", counts_file)
    assert proc.returncode == 0 and proc.stderr == ""
    counts = json.loads(counts_file.read_text())
    assert counts == {"frames": 99, "orphans": 99, "conn_start": 0, "conn_end": 0}


def test_midstream_is_picked_up_by_default():
    """flowdump picks the flow up by default, as tcpflow does: both references'
    streams, which are the original ones."""
    ours = flowdump(pcap("midstream")).result()
    assert_same(ours, original_streams(), "the original flow")
    assert_same(ours, tcpflow(pcap("midstream")).result(), "tcpflow -r")
    assert_same(ours, tshark_streams(pcap("midstream")), "tshark follow,tcp,raw")


# ------------------------------------------------------------------ connlog
@pytest.mark.parametrize("name", ALL)
def test_connlog_matches_tshark_conv(name):
    """connlog's packets and bytes per direction equal tshark's conv,tcp.

    tshark counts Frames and frame Bytes (Ethernet header included); connlog
    counts packets and IP bytes (Zeek's orig_ip_bytes).  So
    orig_pkts == Frames and orig_ip_bytes + 14 * orig_pkts == Bytes, which
    holds when every TCP frame is exactly a 14-byte Ethernet header plus the
    IP packet: checked below on every frame (no 802.1Q tag, which would add 4
    bytes per tag, and no Ethernet padding, which tcpdump on a veth never sees).
    tshark rounds Bytes to kB/MB above 10 kB in this table, so those values are
    compared with that precision and the exact sums come from the frames
    (per tcp.stream and sender) that the table is built from."""
    path = pcap(name)
    # The TCP lines (the captures' ARP and IPv6 ND/MLD make ICMP lines too).
    records = [r for r in connlog(path).result() if r["proto"] == "tcp"]
    rows = tshark_conv(path).result()
    frames = tshark_frames(path).result()
    assert frames and not any(vlan for *_, vlan in frames)
    for stream, _src, _sport, frame_len, ip_bytes, _vlan in frames:
        assert frame_len == 14 + ip_bytes
    # One line per connection, as tshark counts them.
    assert len(records) == len(rows)

    def key(addr_port):
        return (str(addr_port[0]), int(addr_port[1]))

    # Match rows and records per 4-tuple in start order (reuse.pcap has three).
    rows = sorted(rows, key=lambda r: r["rel_start"])
    records = sorted(records, key=lambda r: r["ts"])
    exact = {}
    for stream, src, sport, frame_len, _ip, _vlan in frames:
        exact.setdefault((stream, (src, sport)), [0, 0])
        exact[(stream, (src, sport))][0] += 1
        exact[(stream, (src, sport))][1] += frame_len
    streams_by_tuple = {}
    for stream in sorted({f[0] for f in frames}):
        ends = {k[1] for k in exact if k[0] == stream}
        streams_by_tuple.setdefault(frozenset(ends), []).append(stream)
    used = {}
    for record in records:
        orig = key((record["id.orig_h"], record["id.orig_p"]))
        resp = key((record["id.resp_h"], record["id.resp_p"]))
        candidates = [r for r in rows if {key(r["a"]), key(r["b"])} == {orig, resp}]
        index = used.get(frozenset((orig, resp)), 0)
        used[frozenset((orig, resp))] = index + 1
        row = candidates[index]
        if key(row["a"]) == orig:
            to_resp = (row["frames_to_b"], row["bytes_to_b"])
            to_orig = (row["frames_to_a"], row["bytes_to_a"])
        else:
            to_resp = (row["frames_to_a"], row["bytes_to_a"])
            to_orig = (row["frames_to_b"], row["bytes_to_b"])
        for (tframes, (value, unit)), pkts, ip_bytes in (
                (to_resp, record["orig_pkts"], record["orig_ip_bytes"]),
                (to_orig, record["resp_pkts"], record["resp_ip_bytes"])):
            assert pkts == tframes, f"{record['uid']}: {pkts} packets, tshark {tframes} frames"
            l2_bytes = ip_bytes + 14 * pkts
            scale = {"bytes": 1, "kB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3}[unit]
            if scale == 1:
                assert l2_bytes == value
            else:
                assert abs(l2_bytes - value * scale) <= scale, (l2_bytes, value, unit)
        stream = streams_by_tuple[frozenset((orig, resp))][index]
        for end, pkts, ip_bytes in ((orig, record["orig_pkts"], record["orig_ip_bytes"]),
                                    (resp, record["resp_pkts"], record["resp_ip_bytes"])):
            assert exact.get((stream, end), [0, 0]) == [pkts, ip_bytes + 14 * pkts]


# conn_state and end_reason per capture: (conn_state, end_reason, missed_bytes)
EXPECTED_STATES = {
    "http_sizes": ("SF", "fin", 0),       # HTTP/1.0: both sides close with FIN
    "upload": ("SF", "fin", 0),
    "concurrent": ("SF", "fin", 0),
    "refused": ("REJ", "rst", 0),         # SYN answered by RST/ACK
    "rst_abort": ("RSTO", "rst", 0),      # the client (originator) aborts with RST
    "halfclose": ("SF", "fin", 0),        # data after the first FIN, then the second FIN
    "ipv6": ("SF", "fin", 0),
    "small_writes": ("SF", "fin", 0),
    "reuse": ("SF", "fin", 0),
    "reorder": ("SF", "fin", 0),
    "dup": ("SF", "fin", 0),
    "overlap_diff": ("SF", "fin", 0),
    "seqwrap": ("SF", "fin", 0),
    "lost": ("SF", "fin", 1448),          # the segment never captured
    "holes": ("SF", "fin", 30 + 1448 + 2896 + 1448),   # holes.expected.json's holes
    # Picked up without a handshake; both sides' FINs seen: Zeek's SF (its endpoints go
    # from PARTIAL to CLOSED), history without S and h.
    "midstream": ("SF", "fin", 0),
    "shuffled_upload": ("SF", "fin", 0),  # segments seen before the ACK opening their window
}


@pytest.mark.parametrize("name", ALL)
def test_connlog_states(name):
    path = pcap(name)
    # The TCP lines (the captures' ARP and IPv6 ND/MLD make ICMP lines too).
    records = [r for r in connlog(path).result() if r["proto"] == "tcp"]
    state, reason, missed = EXPECTED_STATES[name]
    assert records
    first_fins = tshark_first_fins(path).result()
    follow = tshark_follow(path).result()
    for record, (stream, node0, node1, data0, data1) in zip(
            sorted(records, key=lambda r: r["ts"]), follow):
        assert (record["conn_state"], record["end_reason"], record["missed_bytes"]) == \
            (state, reason, missed), record
        assert (record["id.orig_h"], record["id.orig_p"]) == node0
        assert (record["id.resp_h"], record["id.resp_p"]) == node1
        # Stream lengths: what tshark follow shows (minus its marker for the hole).
        if name not in ("lost", "holes", "reorder"):
            assert (record["orig_bytes"], record["resp_bytes"]) == (len(data0), len(data1))
        if reason == "fin":
            # The first FIN's sender closed actively: TIME_WAIT; the other side CLOSED.
            closer = first_fins[stream]
            client_closed_first = closer == node0
            assert record["client_state"] == ("TCP_TIME_WAIT" if client_closed_first
                                              else "TCP_CLOSED"), record
            assert record["server_state"] == ("TCP_CLOSED" if client_closed_first
                                              else "TCP_TIME_WAIT"), record
            assert "F" in record["history"] and "f" in record["history"]
        else:
            assert record["client_state"] == record["server_state"] == "TCP_CLOSED"
            assert ("R" if state == "RSTO" else "r") in record["history"]
    if name == "midstream":
        # Zeek's history for this capture: the request, the server's ACK and data, the
        # client's ACK, the server's FIN (with its last data), the client's FIN.
        assert records[0]["history"] == "DadAfF"
