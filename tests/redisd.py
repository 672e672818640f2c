"""A real redis-server of the test's own (Debian's package, installed by scripts/setup.sh):
on a unix socket in a directory of the test and, when asked, on a free loopback port;
nothing saved (``--save '' --appendonly no``). ``stop`` and ``start`` again keep the same
socket and port, so a sink sees the server go away and come back. The `redis_server`
fixture (tests/conftest.py) stops it whatever happens."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, directory: Path, *, tcp: bool = False):
        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not installed: run scripts/setup.sh")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self.port = free_port() if tcp else 0
        self.log = self.dir / "redis.log"
        self.argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1",
                     "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                     "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                     "--daemonize", "no", "--logfile", str(self.log)]
        self.proc = None
        self.starts = 0

    def start(self) -> "RedisServer":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if self.client().ping():
                    return self
            except Exception:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start ({self.proc.poll()}):\n"
                                     + self.log.read_text(errors="replace")[-2000:])
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM (nothing is saved): its connections close, its data is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, db: int = 0):
        import redis
        return redis.Redis(unix_socket_path=str(self.socket), db=db, socket_timeout=5,
                           decode_responses=True)

    @property
    def unix_url(self) -> str:
        return f"redis+unix://{self.socket}"

    @property
    def tcp_url(self) -> str:
        assert self.port, "started without tcp=True"
        return f"redis://127.0.0.1:{self.port}"
