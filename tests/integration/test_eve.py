"""The eve app's Suricata EVE records on every capture of tests/data (the CLI in a
subprocess, as a user runs it).

* Every line validates against Suricata's own JSON schema for EVE records
  (../shared/reference/suricata/eve-schema.json, from Suricata's source; it allows no field
  it does not name, at the top and in `flow` and `tcp`).
* Each flow's packets per direction equal connlog's (orig_pkts/resp_pkts) for the same
  community_id, and tshark's `-z conv,tcp` frames; its bytes per direction (whole frames,
  as Suricata counts them) equal the frame bytes tshark counts, exactly (summed from
  tshark's frames of that tcp.stream and sender) and in the conv table (to its precision).
  UDP and ICMP flows (the captures' ND/MLD) have records too, as connlog has lines.
* tcp_flags_ts / tcp_flags_tc equal the OR of tshark's tcp.flags per direction, and
  pcap_cnt the number of the flow's last frame (which ended it) in the capture.
* The bypassed run (--bypass-after-bytes) keeps the totals and says which part the bypass
  took.
"""
import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest

from integ_helpers import DATA, connlog, eve, tshark_conv, tshark_flags, tshark_frames

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "shared" / "reference" / "suricata" / \
    "eve-schema.json"
CAPTURES = sorted(p.stem for p in DATA.glob("*.pcap"))
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+0000")


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module", autouse=True)
def prefetch():
    for name in CAPTURES:
        path = DATA / f"{name}.pcap"
        eve(path), connlog(path), tshark_conv(path), tshark_frames(path), tshark_flags(path)
    eve(DATA / "http_sizes.pcap", ("--bypass-after-bytes", "5000"))


@pytest.mark.parametrize("name", CAPTURES)
def test_every_line_validates_against_suricatas_schema(name, validator):
    lines = eve(DATA / f"{name}.pcap").result()
    for line in lines:
        validator.validate(line)
        assert line["event_type"] in ("flow", "http", "tls", "dns")
    records = flow_records(DATA / f"{name}.pcap")
    assert records, name
    for record in records:
        assert TIMESTAMP.fullmatch(record["timestamp"])
        assert TIMESTAMP.fullmatch(record["flow"]["start"])
        assert record["flow"]["end"] == record["timestamp"]
        assert record["pcap_filename"].endswith(f"{name}.pcap")
        assert 1 <= record["pcap_cnt"]
        assert 0 <= record["flow_id"] < 2 ** 51
        assert record["community_id"].startswith("1:")
        if record["proto"] != "TCP":
            assert record["proto"] in ("UDP", "ICMP", "IPv6-ICMP") and "tcp" not in record
            assert ("src_port" in record) == (record["proto"] == "UDP")
            continue
        tcp = record["tcp"]
        flags = int(tcp["tcp_flags"], 16)
        assert flags == int(tcp["tcp_flags_ts"], 16) | int(tcp["tcp_flags_tc"], 16)
        for bit, word in ((1, "fin"), (2, "syn"), (4, "rst"), (8, "psh"), (16, "ack")):
            assert tcp.get(word, False) == bool(flags & bit), (word, tcp)
    assert len({r["flow_id"] for r in records}) == len(records)


def flow_records(path, args=()):
    """The flow records of a run (the plain captures' HTTP flows have http records too:
    tests/unit/test_eve_sessions.py checks those)."""
    return [r for r in eve(path, args).result() if r["event_type"] == "flow"]


def test_the_schema_is_strict(validator):
    """What the checks above rely on: a field Suricata does not have, a misspelled one, a
    wrong type, are refused."""
    record = flow_records(DATA / "refused.pcap")[0]
    validator.validate(record)
    for change in (lambda r: r.update(dst_port=81), lambda r: r["flow"].update(pkts_to_server=1),
                   lambda r: r["tcp"].update(syn="yes"), lambda r: r.update(flow_id="1")):
        bad = copy.deepcopy(record)
        change(bad)
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


@pytest.mark.parametrize("name", CAPTURES)
def test_counts_equal_connlog_and_tshark(name):
    path = DATA / f"{name}.pcap"
    every = flow_records(path)
    conn = connlog(path).result()
    assert len(every) == len(conn)
    records = [r for r in every if r["proto"] == "TCP"]
    assert len(records) == len(tshark_conv(path).result())
    # connlog's line of the same flow: the same community_id (reused 4-tuples share one:
    # then in start order).
    by_cid = {}
    for line in sorted(conn, key=lambda r: r["ts"]):
        by_cid.setdefault(line["community_id"], []).append(line)
    for record in sorted(every, key=lambda r: r["flow"]["start"]):
        line = by_cid[record["community_id"]].pop(0)
        flow = record["flow"]
        assert (flow["pkts_toserver"], flow["pkts_toclient"]) == (line["orig_pkts"],
                                                                  line["resp_pkts"])
        assert record["src_ip"] == line["id.orig_h"]
        assert record.get("src_port", record.get("icmp_type")) == line["id.orig_p"]
        # whole frames: the IP bytes and a 14-byte Ethernet header per packet (no tags here)
        assert flow["bytes_toserver"] == line["orig_ip_bytes"] + 14 * line["orig_pkts"]
        assert flow["bytes_toclient"] == line["resp_ip_bytes"] + 14 * line["resp_pkts"]
    assert not any(by_cid.values())

    # tshark: its tcp.stream numbers follow the first frames, so a 4-tuple's streams, its
    # conv rows and its records pair up in start order.
    exact, (flags, last_frame) = {}, tshark_flags(path).result()
    for stream, src, sport, frame_len, _ip, _vlan in tshark_frames(path).result():
        count = exact.setdefault((stream, (src, sport)), [0, 0])
        count[0] += 1
        count[1] += frame_len
    senders = {}
    for stream, end in exact:
        senders.setdefault(stream, set()).add(end)
    rows = sorted(tshark_conv(path).result(), key=lambda r: r["rel_start"])
    paired = []
    for (orig, resp), flows in by_tuple(records).items():
        streams = sorted(s for s, ends in senders.items() if ends <= {orig, resp})
        tuple_rows = [r for r in rows if {endpoint(r["a"]), endpoint(r["b"])} == {orig, resp}]
        assert len(streams) == len(flows) == len(tuple_rows), (orig, resp, streams)
        for record, stream, row in zip(flows, streams, tuple_rows):
            paired.append(stream)
            flow, tcp = record["flow"], record["tcp"]
            # written when the flow's last frame ended it (every flow here closes or is
            # reset), and that frame's number in the capture is pcap_cnt
            assert record["pcap_cnt"] == last_frame[stream], record
            sides = ((orig, flow["pkts_toserver"], flow["bytes_toserver"], tcp["tcp_flags_ts"]),
                     (resp, flow["pkts_toclient"], flow["bytes_toclient"], tcp["tcp_flags_tc"]))
            for end, pkts, nbytes, hexflags in sides:
                assert [pkts, nbytes] == exact.get((stream, end), [0, 0]), (record, end)
                assert int(hexflags, 16) == flags.get((stream,) + end, 0) & 0xFF, (record, end)
                # conv,tcp: "->" is what A sent to B
                sent = "to_b" if endpoint(row["a"]) == end else "to_a"
                assert pkts == row["frames_" + sent]
                value, unit = row["bytes_" + sent]
                scale = {"bytes": 1, "kB": 1000, "MB": 1000 ** 2, "GB": 1000 ** 3}[unit]
                assert abs(nbytes - value * scale) <= (0 if scale == 1 else scale)
    assert sorted(paired) == sorted(senders)


def endpoint(addr_port):
    return (str(addr_port[0]), int(addr_port[1]))


def by_tuple(records):
    """{(client endpoint, server endpoint): its records in start order}."""
    out = {}
    for r in sorted(records, key=lambda r: r["flow"]["start"]):
        out.setdefault(((r["src_ip"], r["src_port"]), (r["dest_ip"], r["dest_port"])), []).append(r)
    return out


def test_bypassed_flows_keep_their_totals_and_say_what_the_bypass_took(validator):
    path = DATA / "http_sizes.pcap"
    plain = {r["community_id"]: r for r in flow_records(path)}
    bypassed = flow_records(path, ("--bypass-after-bytes", "5000"))
    assert len(bypassed) == len(plain) == 6   # 4 TCP flows, 2 of ICMPv6 (ND)
    big = 0
    for record in bypassed:
        validator.validate(record)
        flow, before = record["flow"], plain[record["community_id"]]["flow"]
        for key in ("pkts_toserver", "pkts_toclient", "bytes_toserver", "bytes_toclient"):
            assert flow[key] == before[key], key
        if "bypassed" not in flow:
            assert flow["state"] == ("closed" if record["proto"] == "TCP" else "new")
            assert "bypass" not in flow
            continue
        big += 1
        part = flow["bypassed"]
        assert flow["state"] == "bypassed" and flow["bypass"] == "local"
        assert 0 < part["pkts_toclient"] < flow["pkts_toclient"]
        assert 0 < part["bytes_toclient"] < flow["bytes_toclient"]
        assert part["pkts_toserver"] <= flow["pkts_toserver"]
    # the 100 KiB and 1 MiB answers pass 5000 bytes; the empty and 1 KiB ones do not
    assert big == 2
