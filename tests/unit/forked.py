"""A function run in a forked child (one thread, its own process state: resource limits,
capabilities), its result sent back as JSON."""
import json
import os


def run_forked(fn) -> dict:
    """``fn()`` in a forked child: ``{"value": its JSON-able value}`` (str() of what JSON
    does not take) or ``{"error": "Type: message"}``."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(rfd)
        try:
            out = {"value": fn()}
        except BaseException as exc:
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(wfd, json.dumps(out, default=str).encode())
        os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def in_child(fn):
    """``fn()``'s value from a forked child; an error there fails the test."""
    out = run_forked(fn)
    assert "error" not in out, out["error"]
    return out["value"]
