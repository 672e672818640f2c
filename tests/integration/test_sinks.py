"""Sinks (docs/outputs.md, "Sinks"): a log app's --output on a unix socket or a real
redis-server of the test's own (tests/redisd.py), offline, and the sink object driven
directly against that server going away and coming back.

* connlog into a Redis list, stream (over TCP, another database) and channel: every
  record arrives, in order, equal to the line of the file output;
* unix:PATH gets the very bytes of the file output;
* a bad spec is one line naming the option and what is allowed, exit 2, nothing run; a
  wrong password is refused at start; a server that is down at start is said, the run
  goes on, and what could not be delivered is said at the end (exit 0);
* a server stopped mid-run: writing never waits for it, what the queue could not hold is
  dropped and counted, one line says it is down and one that it is back, and the records
  that waited are delivered to the new server, then the later ones;
* a unix socket that the live monitor could not reconnect to once it dropped its
  privileges is refused at start.
"""
from __future__ import annotations

import errno
import json
import os
import re
import socket
import threading
import time

import pytest

from integ_helpers import DATA, run_mosxdp, tmpdir

from mosxdp.io.sinks import NetworkSink, open_network_sink, parse_sink

PCAPS = [DATA / name for name in ("concurrent.pcap", "ipv6.pcap", "midstream.pcap",
                                  "reuse.pcap")]


def quiet(r) -> bool:
    """Exit 0 and nothing said by mosxdp (scrub's own summary line aside)."""
    return r.returncode == 0 and "mosxdp" not in r.stderr


def file_output(pcap, app="connlog", option="--output", *args):
    out = tmpdir("sink-file") / "log.json"
    r = run_mosxdp("run", app, "--pcap", pcap, option, out, *args)
    assert quiet(r), r.stderr
    return out.read_bytes()


def records(data: bytes) -> list:
    return [json.loads(line) for line in data.decode().splitlines()]


def run_ok(*args):
    r = run_mosxdp(*args)
    assert quiet(r), (r.returncode, r.stderr)
    return r


@pytest.mark.parametrize("pcap", PCAPS, ids=lambda p: p.stem)
def test_connlog_into_a_redis_list_is_the_file_output(redis_server, pcap):
    expected = records(file_output(pcap))
    assert expected
    run_ok("run", "connlog", "--pcap", pcap, "--output", f"{redis_server.unix_url}?key=conn")
    got = redis_server.client().lrange("conn", 0, -1)
    assert [json.loads(value) for value in got] == expected


def test_connlog_into_a_redis_stream_over_tcp_in_another_database(redis_server):
    pcap = DATA / "concurrent.pcap"
    expected = records(file_output(pcap))
    stats = tmpdir("sink-stats") / "stats.json"
    r = run_mosxdp("run", "connlog", "--pcap", pcap, "--stats", "--stats-json", stats,
                   "--output", f"{redis_server.tcp_url}/3?key=flows&mode=stream&field=eve")
    assert r.returncode == 0, r.stderr
    entries = redis_server.client(db=3).xrange("flows")
    assert [json.loads(fields["eve"]) for _, fields in entries] == expected
    assert all(list(fields) == ["eve"] for _, fields in entries)
    assert redis_server.client(db=0).exists("flows") == 0
    # --stats: the sink's line; --stats-json: its counters.
    name = f"{redis_server.tcp_url}/3?key=flows&mode=stream&field=eve"
    assert f"mosxdp: sink {name}: {len(expected)} of {len(expected)} record(s) delivered" \
        in r.stderr.splitlines()
    (sink,) = json.loads(stats.read_text())["sinks"]
    assert sink == {"sink": name, "kind": "redis", "up": True, "records": len(expected),
                    "delivered": len(expected), "dropped": 0, "refused": 0, "undelivered": 0,
                    "queued": 0, "reconnects": 0}


def test_connlog_into_a_redis_channel_reaches_a_subscriber(redis_server):
    pcap = DATA / "concurrent.pcap"
    expected = records(file_output(pcap))
    pubsub = redis_server.client().pubsub()
    pubsub.subscribe("live")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    run_ok("run", "connlog", "--pcap", pcap, "--output",
           f"{redis_server.unix_url}?key=live&mode=channel&batch=3")
    got = []
    deadline = time.monotonic() + 10
    while len(got) < len(expected) and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1)
        if message and message["type"] == "message":
            got.append(json.loads(message["data"]))
    pubsub.close()
    assert got == expected


def test_scrub_hits_go_to_redis_too(redis_server):
    pcap = DATA / "concurrent.pcap"
    scrub = ("--pattern", "HTTP", "--mask", "XXXX")
    expected = records(file_output(pcap, "scrub", "--log", *scrub))
    assert expected
    run_ok("run", "scrub", "--pcap", pcap, *scrub, "--log", f"{redis_server.unix_url}?key=hits")
    assert [json.loads(v) for v in redis_server.client().lrange("hits", 0, -1)] == expected


class UnixListener:
    """A unix stream socket that takes one connection and keeps what it reads."""

    def __init__(self, path):
        self.path = str(path)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(1)
        self.data = bytearray()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        conn, _ = self.server.accept()
        with conn:
            while chunk := conn.recv(65536):
                self.data += chunk

    def result(self, timeout=10) -> bytes:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the sink never closed its connection"
        self.server.close()
        return bytes(self.data)


@pytest.mark.parametrize("pcap", PCAPS[:2], ids=lambda p: p.stem)
def test_a_unix_socket_gets_the_bytes_of_the_file_output(pcap):
    expected = file_output(pcap)
    listener = UnixListener(tmpdir("unix") / "conn.sock")
    run_ok("run", "connlog", "--pcap", pcap, "--output", f"unix:{listener.path}")
    assert listener.result() == expected


def test_midstat_tables_go_to_a_unix_socket_and_redis_wants_json(redis_server):
    pcap = DATA / "concurrent.pcap"
    expected = file_output(pcap, "midstat")
    listener = UnixListener(tmpdir("unix") / "midstat.sock")
    run_ok("run", "midstat", "--pcap", pcap, "--output", f"unix:{listener.path}")
    assert listener.result() == expected and expected.startswith(b"Proto CPU")
    spec = f"{redis_server.unix_url}?key=tables"
    r = run_mosxdp("run", "midstat", "--pcap", pcap, "--output", spec)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"mosxdp: error: midstat: --output {spec}: Redis takes one record per entry: add --json"]
    run_ok("run", "midstat", "--pcap", pcap, "--json", "--output", spec)
    tables = [json.loads(v) for v in redis_server.client().lrange("tables", 0, -1)]
    assert tables == records(file_output(pcap, "midstat", "--output", "--json"))


ALLOWED = ("a sink is a file, '-', unix:PATH, redis://HOST:PORT/DB?key=KEY&mode=list|stream|"
           "channel or redis+unix:///SOCKET?key=KEY&mode=... (a file whose name has '://' in "
           "it: ./NAME)")


@pytest.mark.parametrize("spec, why", [
    ("tcp://127.0.0.1:9", "unknown scheme tcp://: " + ALLOWED),
    ("rediss://127.0.0.1", "unknown scheme rediss://: " + ALLOWED),
    ("redis://127.0.0.1/0?mode=lpush",
     "mode='lpush': a mode is list (RPUSH), stream (XADD) or channel (PUBLISH)"),
    ("redis://127.0.0.1/0?key=", "key= is empty: name the list, stream or channel"),
    ("redis://127.0.0.1/0?topic=x",
     "unknown parameter 'topic' (parameters: key, mode, field, maxlen, queue, batch)"),
    ("redis://127.0.0.1/0?field=x", "field= is for mode=stream only"),
    ("redis://127.0.0.1:0", "the port is not a number from 1 to 65535"),
    ("redis://127.0.0.1:70000", "the port is not a number from 1 to 65535"),
    ("redis://:/", "needs a host: redis://HOST[:PORT][/DB]"),
    ("redis://127.0.0.1/one", "the database /one: not a whole number from 0 to 2147483647"),
    ("redis://127.0.0.1/0?queue=0", "queue=0: not a whole number from 1 to 10000000"),
    ("redis://127.0.0.1/0?db=1",     # the database is the path: redis://HOST:PORT/DB
     "unknown parameter 'db' (parameters: key, mode, field, maxlen, queue, batch)"),
    ("redis+unix://localhost/tmp/r.sock",
     "takes a socket path, not a host: redis+unix:///PATH/TO/SOCKET (three slashes)"),
    ("redis+unix://", "needs the socket's path: redis+unix:///PATH/TO/SOCKET"),
    ("unix:", "unix:PATH needs the path of a unix stream socket"),
])
def test_a_bad_sink_is_one_line_naming_the_option_and_what_is_allowed(spec, why):
    r = run_mosxdp("run", "connlog", "--pcap", DATA / "concurrent.pcap", "--output", spec)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines() == [f"mosxdp: error: connlog: --output {spec}: {why}"]


def test_a_bad_log_sink_names_its_option():
    r = run_mosxdp("run", "scrub", "--pcap", DATA / "concurrent.pcap", "--pattern", "x",
                   "--log", "redis://h/0?mode=queue")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "mosxdp: error: scrub: --log redis://h/0?mode=queue: mode='queue': a mode is list "
        "(RPUSH), stream (XADD) or channel (PUBLISH)"]


def test_a_wrong_password_is_refused_at_start_and_a_password_is_never_shown(redis_server):
    redis_server.client().config_set("requirepass", "s3cret")
    pcap = DATA / "concurrent.pcap"
    wrong = f"redis://:nope@127.0.0.1:{redis_server.port}/0?key=c"
    r = run_mosxdp("run", "connlog", "--pcap", pcap, "--output", wrong)
    assert r.returncode == 2 and "nope" not in r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith(f"mosxdp: error: connlog: --output redis://:***@127.0.0.1:"
                           f"{redis_server.port}/0?key=c: the server refused the credentials")
    right = f"redis://:s3cret@127.0.0.1:{redis_server.port}/0?key=c"
    r = run_mosxdp("run", "connlog", "--pcap", pcap, "--output", right, "--stats", "--tcp-only")
    assert r.returncode == 0 and "s3cret" not in r.stderr, r.stderr
    assert f"mosxdp: sink redis://:***@127.0.0.1:{redis_server.port}/0?key=c: 8 of 8 " \
        "record(s) delivered" in r.stderr
    import redis
    client = redis.Redis(unix_socket_path=str(redis_server.socket), password="s3cret")
    assert client.llen("c") == 8


def test_a_server_down_at_start_is_said_and_the_run_goes_on(tmp_path):
    """Nothing listens at the socket: the run still ends (exit 0: a network sink is lossy
    by design), and says what it could not deliver: dropped when the queue was full,
    the rest given up at exit after the drain time."""
    spec = f"redis+unix://{tmp_path}/none.sock?key=c&queue=3"
    started = time.monotonic()
    r = run_mosxdp("run", "connlog", "--pcap", DATA / "concurrent.pcap", "--output", spec,
                   "--tcp-only")    # its 8 TCP flows
    seconds = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        f"mosxdp: warning: sink {spec} is down (No such file or directory): records wait in "
        "its queue (3 at most), then are dropped and counted; reconnecting",
        f"mosxdp: warning: sink {spec}: 0 of 8 record(s) delivered, 5 dropped (queue full "
        "while it was down or slow), 3 not delivered at exit (drained for 5 s at most)"]
    assert seconds < 20


# ------------------------------------------------------------ the sink object, directly
class Said(list):
    """The lines a sink says (instead of stderr)."""

    def wait_for(self, word, timeout=10):
        deadline = time.monotonic() + timeout
        while not any(word in line for line in self):
            assert time.monotonic() < deadline, f"no line with {word!r}: {list(self)}"
            time.sleep(0.02)


def wait_until(what, cond, timeout=10):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


def test_a_stopped_server_costs_what_the_queue_cannot_hold_and_the_sink_comes_back(redis_server):
    from redis.utils import HIREDIS_AVAILABLE
    assert HIREDIS_AVAILABLE            # redis-py parses the replies with hiredis
    said = Said()
    spec = parse_sink(f"{redis_server.unix_url}?key=k&queue=4&batch=2")
    sink = open_network_sink(spec, say=said.append)
    assert sink.up and said == []
    sink.start()
    client = redis_server.client
    rec = [json.dumps({"n": n}) + "\n" for n in range(16)]
    for r in rec[:3]:
        sink.write(r)
    wait_until("the first records", lambda: client().llen("k") == 3)

    redis_server.stop()
    slowest = 0.0
    for r in rec[3:13]:
        started = time.perf_counter()
        sink.write(r)                                # never waits for the server
        slowest = max(slowest, time.perf_counter() - started)
        time.sleep(0.05)
    assert slowest < 0.05, slowest
    said.wait_for(" is down ")
    held = sink.queued
    # Held: the batch that met the closed connection and a full queue; the rest dropped.
    assert 4 < held <= 4 + spec.batch and sink.dropped == 10 - held
    assert not sink.up and sink.delivered == 3
    assert [line for line in said if " is down " in line] == [
        f"mosxdp: warning: sink {spec.name} is down (No such file or directory): records "
        "wait in its queue (4 at most), then are dropped and counted; reconnecting"]

    redis_server.start()                             # a new, empty server
    said.wait_for(" is back ")
    wait_until("the held records", lambda: client().llen("k") == held)
    for r in rec[13:]:
        sink.write(r)
    sink.close()
    assert [json.loads(v)["n"] for v in client().lrange("k", 0, -1)] == \
        list(range(3, 3 + held)) + [13, 14, 15]
    assert re.fullmatch(rf"mosxdp: sink {re.escape(spec.name)} is back after \d+\.\d s, "
                        rf"{10 - held} record\(s\) dropped meanwhile", said[-1]), said
    assert len(said) == 2
    stats = sink.stats()
    assert stats == {"sink": spec.name, "kind": "redis", "up": True, "records": 16,
                     "delivered": 3 + held + 3, "dropped": 10 - held, "refused": 0,
                     "undelivered": 0, "queued": 0, "reconnects": 1}
    assert sink.summary_line() == (
        f"mosxdp: warning: sink {spec.name}: {6 + held} of 16 record(s) delivered, "
        f"{10 - held} dropped (queue full while it was down or slow), 1 reconnection(s)")


def test_a_server_that_restarted_while_idle_takes_the_next_record_without_a_word(redis_server):
    said = Said()
    sink = open_network_sink(parse_sink(f"{redis_server.unix_url}?key=k"), say=said.append)
    sink.start()
    sink.write("a\n")
    wait_until("a", lambda: redis_server.client().llen("k") == 1)
    redis_server.stop()
    redis_server.start()
    sink.write("b\n")
    sink.close()
    assert redis_server.client().lrange("k", 0, -1) == ["b"]
    assert said == [] and sink.delivered == 2


def test_close_gives_up_after_the_drain_time_and_counts_what_is_left(redis_server):
    said = Said()
    sink = open_network_sink(parse_sink(f"{redis_server.unix_url}?key=k"), say=said.append)
    sink.start()
    redis_server.stop()
    for n in range(3):
        sink.write(f"{n}\n")
    started = time.monotonic()
    sink.close(timeout=0.5)
    assert time.monotonic() - started < 0.5 + 2.5
    assert (sink.delivered, sink.dropped, sink.undelivered) == (0, 0, 3)
    assert sink.summary_line().endswith("0 of 3 record(s) delivered, 3 not delivered at exit "
                                        "(drained for 5 s at most)")


def test_a_record_the_server_refuses_is_counted_not_retried(redis_server):
    said = Said()
    redis_server.client().set("k", "a string, not a list")
    sink = open_network_sink(parse_sink(f"{redis_server.unix_url}?key=k"), say=said.append)
    sink.start()
    sink.write("x\n")
    sink.close()
    assert (sink.delivered, sink.refused) == (0, 1)
    assert said == [f"mosxdp: warning: sink {sink.name}: the server refused 1 record(s) "
                    "(WRONGTYPE Operation against a key holding the wrong kind of value); "
                    "refused records are counted and not sent again"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the capability drop needs root")
def test_a_socket_the_dropped_monitor_could_not_reconnect_to_is_refused(redis_server):
    # Root reaches a socket of another user (mode 700) only through CAP_DAC_OVERRIDE,
    # which the live monitor drops after set-up: its first connection would work, the
    # reconnection after a restart would not.
    os.chown(redis_server.socket, 65534, 65534)
    spec = parse_sink(f"{redis_server.unix_url}?key=k")
    with pytest.raises(OSError) as info:
        open_network_sink(spec, after_drop=True)
    assert info.value.errno == errno.EACCES
    assert info.value.strerror == (
        f"the live monitor could not reconnect to {redis_server.socket} once it dropped its "
        "privileges after set-up (Permission denied): give the socket permissions that let "
        "root in without CAP_DAC_OVERRIDE, or --keep-privileges")
    sink = open_network_sink(spec, after_drop=False)     # --keep-privileges
    assert isinstance(sink, NetworkSink) and sink.up
    sink.close()
    os.chown(redis_server.socket, 0, 0)
    sink = open_network_sink(spec, after_drop=True)
    assert sink.up
    sink.close()


def test_the_file_kind_keeps_its_guarantees(tmp_path):
    """A path stays the durable file: a link there is refused with one line."""
    (tmp_path / "target").write_text("keep")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    r = run_mosxdp("run", "connlog", "--pcap", DATA / "concurrent.pcap", "--output",
                   tmp_path / "link")
    assert r.returncode == 2
    assert re.fullmatch(r"mosxdp: error: connlog: .*link: is a symbolic link, not followed "
                        r"\(name the file it points to\)\n", r.stderr)
    assert (tmp_path / "target").read_text() == "keep"


def test_zeek_tsv_to_a_network_sink_is_refused_before_connecting(tmp_path):
    """Zeek's TSV needs its header before the lines: a file or '-' only, said at once."""
    spec = f"unix:{tmp_path}/none.sock"
    r = run_mosxdp("run", "connlog", "--pcap", DATA / "concurrent.pcap", "--format", "tsv",
                   "--output", spec)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"mosxdp: error: connlog: --output {spec}: the tsv format needs a file or '-'"]
