"""Sink specs (mosxdp/io/sinks.py parse_sink) read without a server: what each kind
parses to, the defaults, the password kept out of the name; and the sinks' part of the
live status line and of the Prometheus text. Against a real redis-server:
tests/integration/test_sinks.py; live: tests/netns/test_live_sinks.py."""
from __future__ import annotations

import re

import pytest

from mosxdp.engine.status import LiveStatus, prometheus_text
from mosxdp.io.sinks import SinkSpecError, parse_sink, redact


def test_a_path_is_a_file_and_a_dash_is_stdout():
    assert parse_sink("conn.json").kind == "file"
    assert parse_sink("conn.json").path == "conn.json"
    assert parse_sink("/var/log/unix:conn").kind == "file"
    assert parse_sink("./redis://x").kind == "file"          # how to name such a file
    assert parse_sink("-").kind == "stdout"


def test_unix_takes_the_rest_as_its_path():
    spec = parse_sink("unix:/run/x?y.sock")
    assert (spec.kind, spec.path, spec.network) == ("unix", "/run/x?y.sock", True)


def test_redis_over_tcp_and_its_defaults():
    spec = parse_sink("redis://10.0.0.5")
    assert (spec.kind, spec.host, spec.port, spec.db, spec.key, spec.mode, spec.queue,
            spec.batch, spec.path) == ("redis", "10.0.0.5", 6379, 0, "mosxdp", "list", 10000,
                                       256, None)
    spec = parse_sink("redis://[::1]:6380/7?key=eve&mode=stream&field=eve&maxlen=1000"
                      "&queue=50&batch=8")
    assert (spec.host, spec.port, spec.db, spec.key, spec.mode, spec.field, spec.maxlen,
            spec.queue, spec.batch) == ("::1", 6380, 7, "eve", "stream", "eve", 1000, 50, 8)
    assert parse_sink("redis://h/0?mode=stream").field == "json"


def test_redis_over_a_unix_socket():
    spec = parse_sink("redis+unix:///run/redis/redis-server.sock?key=k&mode=channel&db=2")
    assert (spec.kind, spec.path, spec.host, spec.db, spec.key, spec.mode) == (
        "redis", "/run/redis/redis-server.sock", None, 2, "k", "channel")


def test_credentials_are_read_and_never_named():
    spec = parse_sink("redis://user:p%40ss@h:1/0?key=k")
    assert (spec.username, spec.password) == ("user", "p@ss")
    assert spec.name == "redis://user:***@h:1/0?key=k"
    spec = parse_sink("redis+unix://:pw@/s.sock")
    assert (spec.username, spec.password, spec.path, spec.name) == (
        None, "pw", "/s.sock", "redis+unix://:***@/s.sock")
    assert redact("redis://:a:b@h/0") == "redis://:***@h/0"


@pytest.mark.parametrize("spec, message", [
    ("", r"is empty"),
    ("http://h", r"unknown scheme http://"),
    ("redis://h/0?mode=LIST", r"mode='LIST': a mode is list \(RPUSH\), stream \(XADD\) or "
                              r"channel \(PUBLISH\)"),
    ("redis://h/0?maxlen=5", r"maxlen= is for mode=stream only"),
    ("redis://h/0?mode=stream&maxlen=0", r"maxlen=0: not a whole number from 1 to"),
    ("redis://h/0?mode=stream&field=", r"field= is empty"),
    ("redis://h/0?key=a&key=b", r"key= is given twice"),
    ("redis://h/0?key", r"the parameters 'key' are not NAME=VALUE"),
    ("redis://h/0?batch=100001", r"batch=100001: not a whole number from 1 to 100000"),
    ("redis://h/0?queue=-1", r"queue=-1: not a whole number"),
    ("redis://h/0#x", r"has a '#' part"),
    ("redis://h/２", r"the database /２: not a whole number"),
    ("redis+unix:///s?db=x", r"db=x: not a whole number"),
])
def test_what_is_refused_and_why(spec, message):
    with pytest.raises(SinkSpecError, match=message):
        parse_sink(spec)


class Engine:
    """Just what LiveStatus.snapshot reads of an engine."""
    counters = {}

    def xdp_counters(self):
        return {}

    def lost(self, xdp):
        return {}


class Stack:
    counters = {}
    reassembly_mem = reassembly_mem_peak = 0

    def flow_count(self):
        return 0


class Sink:
    network = True

    def __init__(self, **stats):
        self._stats = stats

    def stats(self):
        return dict(self._stats)


class Outputs:
    def __init__(self, *sinks):
        self._sinks = sinks

    def sinks(self):
        return list(self._sinks)


DOWN = dict(sink='unix:/run/a"b.sock', kind="unix", up=False, records=40, delivered=10,
            dropped=25, refused=1, undelivered=0, queued=4, reconnects=2)


def test_the_status_line_says_each_sink_s_state_queue_and_drops():
    status = LiveStatus(Engine(), Stack(), outputs=Outputs(Sink(**DOWN)))
    snap = status.snapshot()
    assert status.status_line(snap, snap).endswith(
        ', callback errors 0, sink unix:/run/a"b.sock DOWN queued 4 dropped 26')
    plain = LiveStatus(Engine(), Stack()).snapshot()
    assert plain["sinks"] == [] and " sink " not in status.status_line(plain, plain)


def test_prometheus_counts_each_sink_s_records_by_outcome():
    status = LiveStatus(Engine(), Stack(), outputs=Outputs(Sink(**DOWN)))
    text = prometheus_text(status)
    label = 'sink="unix:/run/a\\"b.sock"'
    for line in (f"mosxdp_sink_records_total{{{label}}} 40",
                 f"mosxdp_sink_records_delivered_total{{{label}}} 10",
                 f'mosxdp_sink_records_dropped_total{{{label},reason="queue_full"}} 25',
                 f'mosxdp_sink_records_dropped_total{{{label},reason="refused"}} 1',
                 f"mosxdp_sink_queued_records{{{label}}} 4",
                 f"mosxdp_sink_up{{{label}}} 0",
                 f"mosxdp_sink_reconnects_total{{{label}}} 2",
                 "# TYPE mosxdp_sink_records_dropped_total counter",
                 "# TYPE mosxdp_sink_up gauge"):
        assert line in text.splitlines(), line
    assert not re.search("mosxdp_sink", prometheus_text(LiveStatus(Engine(), Stack())))
