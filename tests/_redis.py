"""A real redis-server for tests, on a free 127.0.0.1 port with its files in a temp folder.

``redis_server(tmp_path)`` yields the URL. Tests that take Redis away mid-load use
:class:`RedisServer` directly: ``stop()`` (saving the data, or a hard kill) and ``start()``
again on the same port, so clients reconnect to the same URL.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests._system import require_binary

START_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process; ``with RedisServer(tmp_path) as server: server.url``."""

    def __init__(self, tmp_path: Path, port: int | None = None) -> None:
        self.binary = require_binary("redis-server")
        self.directory = tmp_path / "redis-server"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port() if port is None else port
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self) -> redis.Redis:
        """A client without retries (close it): errors show up at once while Redis is down."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            retry=Retry(NoBackoff(), 0),
        )

    def start(self) -> None:
        """Start (again) on the same port and folder; returns once PING answers."""
        if self.running:
            raise RuntimeError("redis-server is already running")
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--logfile",
            "redis.log",
        ]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start:\n{self.log_tail()}")
            with contextlib.suppress(redis.ConnectionError), self.client() as client:
                if client.ping():
                    return
            time.sleep(0.02)
        self.stop(save=False)
        raise RuntimeError(f"redis-server did not answer PING:\n{self.log_tail()}")

    def stop(self, *, save: bool = True) -> None:
        """Take Redis away. save=True: SHUTDOWN SAVE, the data comes back with start();
        save=False: SIGKILL, like a crash of a server without persistence (data lost)."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            if save:
                with contextlib.suppress(redis.ConnectionError), self.client() as client:
                    client.shutdown(save=True)
            else:
                process.kill()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        self._process = None

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "redis.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop(save=False)


@contextlib.contextmanager
def redis_server(tmp_path: Path) -> Iterator[str]:
    """A running redis-server for the duration of the block; yields its URL."""
    with RedisServer(tmp_path) as server:
        yield server.url
