"""Record sinks: where a log app's records go when ``--output`` names no file.

``parse_sink`` reads a sink spec (docs/outputs.md, "Sinks")::

    PATH                                   a file (outputs.OutputFile)
    -                                      standard output (outputs.StdoutFile)
    unix:PATH                              a unix stream socket: the records as written
    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB][?PARAMS]
    redis+unix://[[USER]:PASSWORD@]/PATH/TO/SOCKET[?PARAMS]

with PARAMS ``key`` (default ``mosxdp``), ``mode`` = ``list`` (RPUSH), ``stream`` (XADD,
the record in the entry's field ``field``, default ``json``; ``maxlen`` trims the stream
to about that many entries) or ``channel`` (PUBLISH), ``db`` (redis+unix), ``queue`` and
``batch``.

A ``NetworkSink`` never blocks the thread that writes to it: ``write`` puts the record in
a bounded queue (``queue`` records) and returns; a background thread takes the records
out in batches (``batch`` at most, one pipeline each) and sends them. A sink that is down
or slow makes the queue fill up; a record that finds the queue full is dropped and
counted. The thread reconnects by itself, with a backoff from BACKOFF_MIN to BACKOFF_MAX
seconds, and says one line when the sink goes down and one when it is back. A batch cut
by a broken connection is sent again once it is back (a record may then arrive twice; it
is never lost silently). ``close`` drains the queue for at most DRAIN_SECONDS and counts
what is left as not delivered.

The thread starts at ``start``, which the engines call once the run is set up (live:
after the capability drop, which refuses a process with more than one thread). The
connection is made at open, before the drop; a unix socket that the monitor could not
reconnect to once it dropped its privileges is refused then (``check_reconnect``).
"""
from __future__ import annotations

import errno
import os
import re
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field as dataclass_field

__all__ = ["SinkSpec", "SinkSpecError", "SinkDown", "parse_sink", "redact", "NetworkSink",
           "UnixTransport", "RedisTransport", "open_network_sink", "SCHEMES", "MODES",
           "DEFAULT_KEY", "DEFAULT_FIELD", "DEFAULT_QUEUE", "DEFAULT_BATCH", "DRAIN_SECONDS",
           "BACKOFF_MIN", "BACKOFF_MAX", "SOCKET_TIMEOUT"]

SCHEMES = ("unix:", "redis://", "redis+unix://")
MODES = ("list", "stream", "channel")
DEFAULT_KEY = "mosxdp"
DEFAULT_FIELD = "json"
DEFAULT_QUEUE = 10000       # records waiting while the sink is slow or down
DEFAULT_BATCH = 256         # records per pipeline (per sendall on a unix socket)
MAX_QUEUE = 10_000_000
MAX_BATCH = 100_000
MAX_DB = (1 << 31) - 1
DRAIN_SECONDS = 5.0         # at close, how long the queue may take to drain
BACKOFF_MIN = 0.1           # seconds between reconnection attempts, doubling ...
BACKOFF_MAX = 2.0           # ... up to this
SOCKET_TIMEOUT = 2.0        # connect, send, and a reply, each

_PARAMS = {
    "redis": ("key", "mode", "field", "maxlen", "queue", "batch"),
    "redis+unix": ("key", "mode", "field", "maxlen", "queue", "batch", "db"),
}
_PASSWORD = re.compile(r"(//[^/@]*?:)[^/@]*@")


class SinkSpecError(ValueError):
    """A sink spec that does not parse: the message says what is allowed."""


class SinkDown(Exception):
    """The sink's connection failed (the reason is the message)."""


def redact(spec: str) -> str:
    """``spec`` with the password of a URL replaced by ``***`` (for messages and metrics)."""
    return _PASSWORD.sub(r"\1***@", spec)


@dataclass(frozen=True)
class SinkSpec:
    """A parsed sink spec. ``kind``: file, stdout, unix or redis. ``name``: the spec as
    said in messages (its password hidden)."""
    kind: str
    name: str
    path: str | None = None          # file, unix, redis over a unix socket
    host: str | None = None          # redis over TCP
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = dataclass_field(default=None, repr=False)  # never shown
    key: str = DEFAULT_KEY
    mode: str = "list"
    field: str = DEFAULT_FIELD
    maxlen: int | None = None
    queue: int = DEFAULT_QUEUE
    batch: int = DEFAULT_BATCH

    @property
    def network(self) -> bool:
        return self.kind in ("unix", "redis")


def parse_sink(spec: str) -> SinkSpec:
    """The sink ``spec`` names (module doc). SinkSpecError with one line when it is not one."""
    if not isinstance(spec, str) or not spec:
        raise SinkSpecError("is empty: give a file, '-', unix:PATH, redis://HOST:PORT/DB?... "
                            "or redis+unix:///SOCKET?...")
    if spec == "-":
        return SinkSpec("stdout", "<stdout>")
    if spec.startswith("unix:"):
        path = spec[len("unix:"):]
        if not path:
            raise SinkSpecError("unix:PATH needs the path of a unix stream socket")
        return SinkSpec("unix", spec, path=path)
    scheme, sep, _ = spec.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return SinkSpec("file", spec, path=spec)
    scheme = scheme.lower()
    if scheme not in ("redis", "redis+unix"):
        raise SinkSpecError(f"unknown scheme {scheme}://: a sink is a file, '-', unix:PATH, "
                            "redis://HOST:PORT/DB?key=KEY&mode=list|stream|channel or "
                            "redis+unix:///SOCKET?key=KEY&mode=... (a file whose name has "
                            "'://' in it: ./NAME)")
    return _parse_redis(spec, scheme)


def _parse_redis(spec: str, scheme: str) -> SinkSpec:
    # Here, not at the top: a run without a sink does not pay for urllib at its start.
    from urllib.parse import unquote, urlsplit
    try:
        url = urlsplit(spec)
    except ValueError as exc:
        raise SinkSpecError(f"not a URL ({exc})") from None
    if url.fragment:
        raise SinkSpecError("has a '#' part: a Redis sink takes none")
    params = _query(url.query, scheme)
    fields = {"name": redact(spec)}
    try:
        username, password = url.username, url.password
    except ValueError:
        username = password = None
    fields["username"] = unquote(username) if username else None
    fields["password"] = unquote(password) if password is not None else None
    if scheme == "redis":
        try:
            host, port = url.hostname, url.port
        except ValueError:
            raise SinkSpecError("the port is not a number from 1 to 65535") from None
        if not host:
            raise SinkSpecError("needs a host: redis://HOST[:PORT][/DB]")
        if port == 0:
            raise SinkSpecError("the port is not a number from 1 to 65535")
        fields.update(host=host, port=port or 6379)
        db = url.path.strip("/")
        if db:
            fields["db"] = _number(db, f"the database /{db}", 0, MAX_DB)
    else:
        if url.hostname:
            raise SinkSpecError("takes a socket path, not a host: redis+unix:///PATH/TO/SOCKET "
                                "(three slashes)")
        if not url.path or url.path == "/":
            raise SinkSpecError("needs the socket's path: redis+unix:///PATH/TO/SOCKET")
        fields["path"] = unquote(url.path)
        if "db" in params:
            fields["db"] = _number(params["db"], f"db={params['db']}", 0, MAX_DB)
    mode = params.get("mode", "list")
    if mode not in MODES:
        raise SinkSpecError(f"mode={mode!r}: a mode is list (RPUSH), stream (XADD) or "
                            "channel (PUBLISH)")
    fields["mode"] = mode
    if "key" in params:
        if not params["key"]:
            raise SinkSpecError("key= is empty: name the list, stream or channel")
        fields["key"] = params["key"]
    for name in ("field", "maxlen"):
        if name in params and mode != "stream":
            raise SinkSpecError(f"{name}= is for mode=stream only")
    if "field" in params:
        if not params["field"]:
            raise SinkSpecError("field= is empty: name the stream entry's field")
        fields["field"] = params["field"]
    if "maxlen" in params:
        fields["maxlen"] = _number(params["maxlen"], f"maxlen={params['maxlen']}", 1, 1 << 62)
    if "queue" in params:
        fields["queue"] = _number(params["queue"], f"queue={params['queue']}", 1, MAX_QUEUE)
    if "batch" in params:
        fields["batch"] = _number(params["batch"], f"batch={params['batch']}", 1, MAX_BATCH)
    return SinkSpec("redis", **fields)


def _query(query: str, scheme: str) -> dict:
    from urllib.parse import parse_qsl
    allowed = _PARAMS[scheme]
    params = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise SinkSpecError(f"the parameters {query!r} are not NAME=VALUE&...") from None
    for name, value in pairs:
        if name not in allowed:
            raise SinkSpecError(f"unknown parameter {name!r} (parameters: {', '.join(allowed)})")
        if name in params:
            raise SinkSpecError(f"{name}= is given twice")
        params[name] = value
    return params


def _number(text: str, what: str, low: int, high: int) -> int:
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise SinkSpecError(f"{what}: not a whole number from {low} to {high}")
    return int(text)


# ------------------------------------------------------------------------------ transports
class UnixTransport:
    """A unix stream socket: the records as they were written (JSON lines), in order."""

    def __init__(self, spec: SinkSpec):
        self.path = spec.path
        self.sock = None

    def connect(self) -> None:
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(SOCKET_TIMEOUT)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise SinkDown(exc.strerror or str(exc)) from None
        self.sock = sock

    def send(self, records: list) -> int:
        """Send a batch; the number of records the peer refused (none here)."""
        data = b"".join(r.encode() if isinstance(r, str) else bytes(r) for r in records)
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.close()
            raise SinkDown(exc.strerror or str(exc)) from None
        return 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def check_reconnect(self) -> int:
        return _may_connect(self.path)


class RedisTransport:
    """A Redis server (redis-py, with hiredis's parser when installed): each batch is one
    pipeline of RPUSH (list, one command), XADD (stream) or PUBLISH (channel)."""

    def __init__(self, spec: SinkSpec):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        self._errors = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        self._refusals = redis.exceptions.ResponseError
        self.spec = spec
        common = dict(db=spec.db, username=spec.username, password=spec.password,
                      socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT,
                      retry=Retry(NoBackoff(), 0), client_name="mosxdp")
        if spec.path is not None:
            self.path = spec.path
            self.client = redis.Redis(unix_socket_path=spec.path, **common)
        else:
            self.path = None
            self.client = redis.Redis(host=spec.host, port=spec.port, **common)

    def connect(self) -> None:
        """Connected and answering (PING), or SinkDown; a refusal that no reconnection will
        change (a wrong password, a database that does not exist) is ValueError."""
        import redis
        self.close()
        try:
            self.client.ping()
        except redis.exceptions.AuthenticationError as exc:
            self.close()
            raise ValueError(f"the server refused the credentials ({exc})") from None
        except self._errors as exc:
            self.close()
            raise SinkDown(_redis_reason(exc)) from None
        except self._refusals as exc:
            self.close()
            raise ValueError(f"the server refused the connection's set-up ({exc})") from None

    def send(self, records: list) -> int:
        """Send a batch; the number of records the server refused (an error reply)."""
        spec = self.spec
        records = [_entry(r) for r in records]
        pipe = self.client.pipeline(transaction=False)
        if spec.mode == "list":
            pipe.rpush(spec.key, *records)
        elif spec.mode == "stream":
            for record in records:
                pipe.xadd(spec.key, {spec.field: record}, maxlen=spec.maxlen, approximate=True)
        else:
            for record in records:
                pipe.publish(spec.key, record)
        try:
            replies = pipe.execute(raise_on_error=False)
        except self._errors as exc:
            self.close()
            raise SinkDown(_redis_reason(exc)) from None
        failed = [r for r in replies if isinstance(r, Exception)]
        if not failed:
            return 0
        self.refusal = str(failed[0])
        return len(records) if spec.mode == "list" else len(failed)

    def close(self) -> None:
        try:
            self.client.close()
        except self._errors:
            pass

    def check_reconnect(self) -> int:
        return _may_connect(self.path) if self.path is not None else 0


def _may_connect(path: str) -> int:
    """0 when this process may connect to the unix socket ``path`` (write permission on
    it, search on its directories), else the errno: what a reconnection will meet."""
    try:
        return 0 if os.access(path, os.W_OK, effective_ids=True) else errno.EACCES
    except OSError as exc:
        return exc.errno or errno.EIO


def _entry(record):
    """A record as a Redis value: without the newline that ends a line of a log."""
    if isinstance(record, str):
        return record[:-1] if record.endswith("\n") else record
    record = bytes(record)
    return record[:-1] if record.endswith(b"\n") else record


def _redis_reason(exc: BaseException) -> str:
    text = str(exc).strip()
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror
    return text or type(exc).__name__


# ------------------------------------------------------------------------------ the sink
def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class NetworkSink:
    """A unix socket or Redis sink (module doc): ``write`` never blocks; the counters say
    what became of the records (``records`` = ``delivered`` + ``dropped`` + ``refused`` +
    ``undelivered`` + what is still queued)."""

    error = None        # a network sink's losses are counted, not an output failure
    network = True

    def __init__(self, spec: SinkSpec, transport, *, say=_say):
        self.spec = spec
        self.kind = spec.kind
        self.name = self.path = spec.name
        self.transport = transport
        self.say = say
        self.records = 0        # given to write
        self.delivered = 0      # sent, and (Redis) accepted
        self.dropped = 0        # found the queue full
        self.refused = 0        # answered with an error by the server
        self.undelivered = 0    # still queued when close gave up
        self.reconnects = 0     # connections made after the first
        self.up = False
        self.down_since = None  # monotonic time it went down (None: up, or never up)
        self._dropped_down = 0  # dropped when it went down: what the "back" line reports
        self._queue = deque()
        self._pending = []      # the batch being sent (again after a reconnection)
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = None
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name="mosxdp-sink", daemon=True)
        self._refusal_said = False
        self._connected_once = False
        self._fresh = False     # connected, nothing sent on this connection yet
        self._redirect = None
        self.combine = None     # see mosx_open_sink

    # -- the datapath's side
    def write(self, data) -> None:
        """One record (str or bytes): queued, or dropped and counted if the queue is full."""
        if self._redirect is not None:
            self._redirect(data.encode() if isinstance(data, str) else bytes(data))
            return
        if self._closed:
            raise ValueError(f"write to {self.name} after close")
        with self._cond:
            self.records += 1
            if len(self._queue) >= self.spec.queue:
                self.dropped += 1
                return
            self._queue.append(data)
            self._cond.notify()

    def flush(self) -> None:
        """Records are sent as soon as the thread gets them: nothing to do here."""

    def redirect(self, sink) -> None:
        """From now on each record goes to ``sink(bytes)``: a worker process of a split run
        (engine/workers.py), whose parent sends the merged records; the connection and the
        thread stay the parent's."""
        self._redirect = sink

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._pending)

    # -- start, stop
    def open(self) -> None:
        """The first connection, now (before a capability drop): ValueError when the
        server refuses it for good; a sink that is down is said, and retried later."""
        try:
            self.transport.connect()
        except SinkDown as exc:
            self._went_down(str(exc))
        else:
            self.up = self._fresh = True
            self._connected_once = True

    def start(self) -> None:
        if self._thread.ident is None:
            self._thread.start()

    def close(self, timeout: float = DRAIN_SECONDS) -> None:
        """Drain the queue for at most ``timeout`` seconds, then stop; what is left is
        counted as ``undelivered``. A worker's (redirected) does nothing: the parent's
        closes."""
        if self._closed or self._redirect is not None:
            return
        self._closed = True
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify()
        self.start()
        # A connection attempt under way may take its timeouts (connect, then PING).
        self._thread.join(timeout + 2 * SOCKET_TIMEOUT)
        with self._cond:
            self.undelivered = self.records - self.delivered - self.dropped - self.refused
        if not self._thread.is_alive():
            self.transport.close()

    # -- the thread
    def _drain(self) -> None:
        backoff = BACKOFF_MIN
        cond = self._cond
        while True:
            with cond:
                while not (self._queue or self._pending or self._closing):
                    cond.wait()
                if self._closing and (not (self._queue or self._pending)
                                      or time.monotonic() >= self._deadline):
                    return
            if not self.up:
                if not self._reconnect():
                    with cond:
                        wait = backoff
                        if self._closing:
                            wait = min(wait, self._deadline - time.monotonic())
                        if wait > 0:
                            cond.wait(wait)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                backoff = BACKOFF_MIN
            if not self._pending:
                with cond:
                    queue = self._queue
                    self._pending = [queue.popleft()
                                     for _ in range(min(len(queue), self.spec.batch))]
            try:
                refused = self.transport.send(self._pending)
            except SinkDown as exc:
                # A server that restarted meanwhile takes a new connection at once: the
                # batch goes again without a word; otherwise the sink is down.
                if self._fresh or not self._connect_again():
                    self._went_down(str(exc))
                continue
            self._fresh = False
            with cond:
                self.delivered += len(self._pending) - refused
                self.refused += refused
                self._pending = []
            if refused and not self._refusal_said:
                self._refusal_said = True
                self.say(f"mosxdp: warning: sink {self.name}: the server refused {refused} "
                         f"record(s) ({getattr(self.transport, 'refusal', '')}); refused "
                         "records are counted and not sent again")

    def _connect_again(self) -> bool:
        try:
            self.transport.connect()
        except (SinkDown, ValueError):
            return False
        self.reconnects += 1
        self._fresh = True
        return True

    def _reconnect(self) -> bool:
        try:
            self.transport.connect()
        except (SinkDown, ValueError):
            return False
        self.up = self._fresh = True
        if self._connected_once:
            self.reconnects += 1
        self._connected_once = True
        if self.down_since is not None:
            seconds = time.monotonic() - self.down_since
            lost = self.dropped - self._dropped_down
            self.down_since = None
            self.say(f"mosxdp: sink {self.name} is back after {seconds:.1f} s"
                     f"{f', {lost} record(s) dropped meanwhile' if lost else ''}")
        return True

    def _went_down(self, reason: str) -> None:
        self.up = self._fresh = False
        self.down_since = time.monotonic()
        self._dropped_down = self.dropped
        self.say(f"mosxdp: warning: sink {self.name} is down ({reason}): records wait in "
                 f"its queue ({self.spec.queue} at most), then are dropped and counted; "
                 "reconnecting")

    # -- reports
    def stats(self) -> dict:
        with self._cond:
            return {"sink": self.name, "kind": self.kind, "up": self.up,
                    "records": self.records, "delivered": self.delivered,
                    "dropped": self.dropped, "refused": self.refused,
                    "undelivered": self.undelivered, "queued": self.queued,
                    "reconnects": self.reconnects}

    @property
    def lost(self) -> int:
        return self.dropped + self.refused + self.undelivered

    def summary_line(self) -> str:
        s = self.stats()
        parts = [f"{s['delivered']} of {s['records']} record(s) delivered"]
        if s["dropped"]:
            parts.append(f"{s['dropped']} dropped (queue full while it was down or slow)")
        if s["refused"]:
            parts.append(f"{s['refused']} refused by the server")
        if s["undelivered"]:
            parts.append(f"{s['undelivered']} not delivered at exit (drained for "
                         f"{DRAIN_SECONDS:.0f} s at most)")
        if s["reconnects"]:
            parts.append(f"{s['reconnects']} reconnection(s)")
        return (f"mosxdp: {'warning: ' if self.lost else ''}sink {self.name}: "
                + ", ".join(parts))


def open_network_sink(spec: SinkSpec, *, after_drop: bool = False, say=_say) -> NetworkSink:
    """A unix or Redis sink, connected now if its server is up (said if not); OSError
    (EINVAL) when the server refuses it for good, or (``after_drop``) when the live monitor
    could not reconnect once it dropped its privileges."""
    transport = (UnixTransport if spec.kind == "unix" else RedisTransport)(spec)
    sink = NetworkSink(spec, transport, say=say)
    try:
        sink.open()
    except ValueError as exc:
        transport.close()
        raise OSError(errno.EINVAL, str(exc)) from None
    if after_drop and sink.up:
        from .privileges import as_after_setup
        err = as_after_setup(transport.check_reconnect)
        if err:
            transport.close()
            raise OSError(err, f"the live monitor could not reconnect to {transport.path} once "
                               f"it dropped its privileges after set-up ({os.strerror(err)}): "
                               "give the socket permissions that let root in without "
                               "CAP_DAC_OVERRIDE, or --keep-privileges")
    return sink
