"""The eve app's flow records for the ends the test captures do not have: crafted
conversations (scapy, tests/unit/flowcraft.py) written as a pcap and run through the
command line in this process. Each record validates against Suricata's EVE schema; the
flow state, the TCP session state, the reason and the flags are Suricata's words for what
happened (docs/pipeline.md)."""
import json
from pathlib import Path

import jsonschema
import pytest

from flowcraft import Conv
from mosxdp import cli
from mosxdp.io.pcap import PcapWriter

SCHEMA = Path(__file__).resolve().parents[3] / "shared" / "reference" / "suricata" / \
    "eve-schema.json"


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))


def eve(tmp_path, capsys, validator, *convs, mos=None, args=()):
    """The records of `mosxdp run eve` over the frames of ``convs`` (merged in time
    order), with [mos] configuration keys ``mos``."""
    pcap, out = tmp_path / "in.pcap", tmp_path / "eve.json"
    with PcapWriter(str(pcap)) as writer:
        for ts, frame in sorted((f for c in convs for f in c.frames), key=lambda f: f[0]):
            writer.write(ts, frame)
    argv = ["run", "eve", "--pcap", str(pcap), "--output", str(out),
            "--on-callback-error", "stop", *args]
    if mos:
        config = tmp_path / "mos.toml"
        config.write_text("[mos]\n" + "".join(f"{k} = {v}\n" for k, v in mos.items()))
        argv += ["--config", str(config)]
    code = cli.main(argv)
    assert code == 0, capsys.readouterr().err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for record in records:
        validator.validate(record)
    return records


def test_an_unanswered_syn_is_new_at_the_end_of_the_capture(tmp_path, capsys, validator):
    c = Conv()
    c.syn()
    c.syn()                      # retransmitted
    (r,) = eve(tmp_path, capsys, validator, c)
    assert (r["flow"]["state"], r["flow"]["reason"], r["tcp"]["state"]) == \
        ("new", "shutdown", "syn_sent")
    assert (r["flow"]["pkts_toserver"], r["flow"]["pkts_toclient"]) == (2, 0)
    assert r["tcp"]["tcp_flags"] == "02" and r["tcp"]["tcp_flags_tc"] == "00"
    assert r["tcp"]["syn"] is True and "ack" not in r["tcp"]
    assert "app_proto" not in r and r["pcap_cnt"] == 2


def test_a_syn_answered_and_not_acknowledged_is_syn_recv(tmp_path, capsys, validator):
    c = Conv()
    c.syn()
    c.synack()
    (r,) = eve(tmp_path, capsys, validator, c)
    assert (r["flow"]["state"], r["tcp"]["state"]) == ("new", "syn_recv")
    assert r["tcp"]["tcp_flags"] == "12"


def test_an_open_flow_with_data_at_the_end(tmp_path, capsys, validator):
    c = Conv()
    c.handshake()
    c.data("c", b"GET / HTTP/1.0\r\n\r\n")
    c.ack("s")
    http, r = eve(tmp_path, capsys, validator, c)
    assert (r["flow"]["state"], r["flow"]["reason"], r["tcp"]["state"]) == \
        ("established", "shutdown", "established")
    # the session layer told HTTP: its request, unanswered, is written at the end
    assert r["app_proto"] == "http" and http["event_type"] == "http"
    assert http["flow_id"] == r["flow_id"] and "status" not in http["http"]
    (r,) = eve(tmp_path, capsys, validator, c, args=("--no-sessions",))
    assert r["app_proto"] == "failed"
    assert (r["tcp"]["tcp_flags_ts"], r["tcp"]["tcp_flags_tc"]) == ("1a", "12")


@pytest.mark.parametrize("first, state", [("c", "close_wait"), ("s", "fin_wait2")])
def test_one_fin_leaves_the_session_half_closed(first, state, tmp_path, capsys, validator):
    """Suricata's session state follows the server: the client's FIN is close_wait, the
    server's (acknowledged) fin_wait2; the flow is still established."""
    c = Conv()
    c.handshake()
    c.fin(first)
    c.ack("s" if first == "c" else "c")
    (r,) = eve(tmp_path, capsys, validator, c)
    assert (r["flow"]["state"], r["tcp"]["state"]) == ("established", state)
    assert r["tcp"]["fin"] is True


@pytest.mark.parametrize("first", ["c", "s"])
def test_a_closed_flow_either_side_first(first, tmp_path, capsys, validator):
    c = Conv()
    c.handshake()
    c.data("c", b"hello")
    c.data("s", b"world")
    other = "s" if first == "c" else "c"
    c.fin(first)
    c.fin(other)
    c.ack(first)
    (r,) = eve(tmp_path, capsys, validator, c)
    assert (r["flow"]["state"], r["flow"]["reason"], r["tcp"]["state"]) == \
        ("closed", "timeout", "closed")
    assert r["flow"]["age"] == 0 and r["flow"]["end"] == r["timestamp"]


def test_idle_flows_time_out_and_evicted_ones_are_forced(tmp_path, capsys, validator):
    idle = Conv(cport=40001)
    idle.handshake()
    later = Conv(cport=40002, t0=idle.frames[-1][0] + 5_000_000)
    later.handshake()
    records = eve(tmp_path, capsys, validator, idle, later, mos={"tcp_timeout": 2})
    by_port = {r["src_port"]: r for r in records}
    assert by_port[40001]["flow"]["reason"] == "timeout"
    assert by_port[40001]["flow"]["state"] == "established"
    assert by_port[40002]["flow"]["reason"] == "shutdown"

    one, two = Conv(cport=40003), Conv(cport=40004, t0=1_500_000)
    one.handshake()
    two.handshake()
    records = eve(tmp_path, capsys, validator, one, two, mos={"max_concurrency": 1})
    by_port = {r["src_port"]: r for r in records}
    assert by_port[40003]["flow"]["reason"] == "forced"
    assert by_port[40004]["flow"]["reason"] == "shutdown"


def test_flags_ecn_and_a_reset(tmp_path, capsys, validator):
    c = Conv(cli="2001:db8::1", svr="2001:db8::2")
    c.seg("c", "SEC", seq=c.isn["c"], options=[("MSS", 1460)])    # ECN set-up SYN
    c.acked["s"] = c.isn["c"] + 1
    c.seg("s", "SAE", seq=c.isn["s"], options=[("MSS", 1460)])
    c.ack("c")
    c.rst("s")
    (r,) = eve(tmp_path, capsys, validator, c)
    tcp = r["tcp"]
    assert (tcp["tcp_flags_ts"], tcp["tcp_flags_tc"]) == ("d2", "56")
    assert all(tcp[k] is True for k in ("syn", "ack", "rst", "ecn", "cwr"))
    assert r["ip_v"] == 6 and r["flow"]["state"] == "closed" and tcp["state"] == "closed"


def test_community_id_seed_and_a_gap(tmp_path, capsys, validator):
    c = Conv()
    c.handshake()
    c.data("s", b"x" * 100, emit=False)       # never captured
    c.data("s", b"y" * 100)
    c.ack("c")
    (plain,) = eve(tmp_path, capsys, validator, c)
    (seeded,) = eve(tmp_path, capsys, validator, c, args=("--community-id-seed", "7"))
    assert plain["community_id"] != seeded["community_id"]
    assert plain["tcp"]["tc_gap"] is True and "ts_gap" not in plain["tcp"]
