"""netns tier: connlog's records into a real redis-server while real TCP goes through
the inline monitor::

    cli: cli0 <==> A [mon: mosxdp run connlog --output redis+unix://SOCKET ...] B <==> srv0 srv

The server is the test's own (tests/redisd.py, on a unix socket in a directory of the
test). Every conn record arrives in Redis; with the server stopped mid-run the monitor
keeps forwarding (the downloads are byte-identical), says the sink is down, counts the
records its queue could not hold (status line, Prometheus, the exit summary and
--stats-json agree), says when the server is back and delivers the records that waited,
then the later ones. The monitor exits 0 (a network sink is lossy by design), and the
records in Redis plus those counted as dropped are all the records it wrote, none twice.

Skipped when the probe fails (not root, no AF_XDP, no bcc/libxdp, no curl); with
MOSXDP_REQUIRE_PRIVILEGED=1 a failed probe fails instead.
"""
from __future__ import annotations

import json
import re

import livekit
import pytest
from livekit import sha256_file, wait_until

pytestmark = pytest.mark.netns

PORT = 8080
METRICS = 9123
SIZE = 256 * 1024
QUEUE, BATCH = 4, 2
BEFORE, WHILE_DOWN, AFTER = 4, 12, 4
_METRIC = re.compile(r'^(mosxdp_sink_\w+)\{sink="[^"]*"(?:,reason="(\w+)")?\} (\d+)$', re.M)


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    livekit.require_live(("curl", "ip"))
    with livekit.serving(tmp_path_factory, {"f1k": 1024, "f256k": SIZE}, (PORT,)) as bed:
        yield bed


def sink_metrics(bed) -> dict:
    """The sink's Prometheus counters: {name or (name, reason): value}."""
    r = bed.tb.run("mon", ["curl", "-sS", "--max-time", "5",
                           f"http://127.0.0.1:{METRICS}/metrics"],
                   capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return {(name, reason) if reason else name: int(value)
            for name, reason, value in _METRIC.findall(r.stdout)}


def downloads(bed, ports):
    """A 256 KiB download from each local port in turn, each byte-identical."""
    want = sha256_file(bed.www / "f256k")
    for port in ports:
        r, got = bed.download(4, "f256k", local_port=port)
        assert r.returncode == 0, r.stderr
        assert sha256_file(got) == want


def ports_in(values) -> list:
    return [json.loads(v)["id.orig_p"] for v in values]


def test_every_conn_record_reaches_redis_and_a_stopped_server_costs_what_it_dropped(
        bed, redis_server):
    spec = f"{redis_server.unix_url}?key=conn&queue={QUEUE}&batch={BATCH}"
    stats_json = bed.out_path("stats.json")
    client = redis_server.client
    before = list(range(45001, 45001 + BEFORE))
    while_down = list(range(45101, 45101 + WHILE_DOWN))
    after = list(range(45201, 45201 + AFTER))
    # TCP flows only: the records are counted by client port (ND/MLD would add ICMPv6 ones)
    mon = bed.monitor("connlog", "--tcp-only", "--output", spec, "--stats", "--stats-json", stats_json,
                      "--metrics-port", METRICS, ready=lambda: client().llen("conn") > 0)
    try:
        # Up: every record arrives.
        downloads(bed, before)
        wait_until("the records of the first downloads",
                   lambda: set(before) <= set(ports_in(client().lrange("conn", 0, -1))),
                   10, mon.alive, detail=mon.log)
        m = sink_metrics(bed)
        assert m["mosxdp_sink_up"] == 1 and m["mosxdp_sink_records_total"] == \
            m["mosxdp_sink_records_delivered_total"], m
        old = client().lrange("conn", 0, -1)
        assert len(old) == m["mosxdp_sink_records_total"]

        # Down: the monitor forwards all along, says it, counts what it drops.
        redis_server.stop()
        downloads(bed, while_down)
        wait_until("the sink said it is down", lambda: " is down " in mon.log(), 10, mon.alive)
        wait_until("the records of the downloads while down",
                   lambda: sink_metrics(bed)["mosxdp_sink_records_total"] == len(old) + WHILE_DOWN,
                   10, mon.alive, detail=mon.log)
        m = sink_metrics(bed)
        held = m["mosxdp_sink_queued_records"]
        dropped = m[("mosxdp_sink_records_dropped_total", "queue_full")]
        assert m["mosxdp_sink_up"] == 0 and QUEUE < held <= QUEUE + BATCH, m
        assert dropped == WHILE_DOWN - held and dropped > 0, m
        wait_until("a status line with the sink down",
                   lambda: re.search(rf"sink {re.escape(spec)} DOWN queued {held} dropped "
                                     rf"{dropped}$", mon.log(), re.M), 5, mon.alive)

        # Back: the records that waited go first, then the new ones.
        redis_server.start()
        wait_until("the sink said it is back", lambda: " is back " in mon.log(), 10, mon.alive)
        downloads(bed, after)
        wait_until("the records of the last downloads",
                   lambda: set(after) <= set(ports_in(client().lrange("conn", 0, -1))),
                   10, mon.alive, detail=mon.log)
        m = sink_metrics(bed)
        assert m["mosxdp_sink_up"] == 1 and m["mosxdp_sink_reconnects_total"] == 1, m
        mon.stop_clean()
    finally:
        mon.close()

    new = client().lrange("conn", 0, -1)
    assert ports_in(new) == while_down[:held] + after
    assert set(before) <= set(ports_in(old))
    for record in map(json.loads, old + new):
        if record["id.orig_p"] in before + while_down + after:
            assert record["conn_state"] == "SF" and record["resp_bytes"] > SIZE, record
    # None twice, none lost without being counted.
    uids = [json.loads(v)["uid"] for v in old + new]
    assert len(set(uids)) == len(uids)
    (stats,) = json.loads(stats_json.read_text())["sinks"]
    assert stats == {"sink": spec, "kind": "redis", "up": True,
                     "records": len(old) + WHILE_DOWN + AFTER,
                     "delivered": len(old) + len(new), "dropped": dropped, "refused": 0,
                     "undelivered": 0, "queued": 0, "reconnects": 1}
    log = mon.log().splitlines()
    assert [line for line in log if " is down " in line] == [
        f"mosxdp: warning: sink {spec} is down (No such file or directory): records wait in "
        f"its queue ({QUEUE} at most), then are dropped and counted; reconnecting"]
    assert len([line for line in log if re.fullmatch(
        rf"mosxdp: sink {re.escape(spec)} is back after \d+\.\d s, {dropped} record\(s\) "
        r"dropped meanwhile", line)]) == 1, log
    assert (f"mosxdp: warning: sink {spec}: {stats['delivered']} of {stats['records']} "
            f"record(s) delivered, {dropped} dropped (queue full while it was down or slow), "
            "1 reconnection(s)") in log
