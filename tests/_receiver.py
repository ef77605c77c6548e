"""A real HTTP receiver on 127.0.0.1 for webhook tests.

It records every request and answers from a scripted list of responses; when the script runs
out it answers `default`. A `handler` callable can take over instead, to check a request the
way GitHub, GitLab or Azure DevOps would and answer accordingly.

    with Receiver([Reply(500), Reply(500), Reply(204)]) as rx:
        ... send to rx.url("/hook") ...
        assert [r.status for r in rx.requests] == [500, 500, 204]
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Reply:
    status: int = 204
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    status: int = 0  # what the receiver answered


Handler = Callable[[Received], Reply]


class Receiver:
    """A threaded http.server that records requests; use as a context manager."""

    def __init__(
        self,
        script: Iterable[Reply] = (),
        *,
        default: Reply | None = None,
        handler: Handler | None = None,
    ) -> None:
        self.requests: list[Received] = []
        self._script = list(script)
        self._default = default or Reply(204)
        self._handler = handler
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._make_handler())
        self._server.daemon_threads = True
        # A short poll interval keeps shutdown (and so each test) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def _answer(self, received: Received) -> Reply:
        with self._lock:
            if self._handler is not None:
                reply = self._handler(received)
            elif self._script:
                reply = self._script.pop(0)
            else:
                reply = self._default
            received.status = reply.status
            self.requests.append(received)
        return reply

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class _Handler(BaseHTTPRequestHandler):
            # HTTP/1.0: one request per connection, so shutdown never waits on a kept-alive socket.
            protocol_version = "HTTP/1.0"

            def _handle(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                received = Received(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                reply = receiver._answer(received)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                if reply.body and self.command != "HEAD":
                    self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, format: str, *args: object) -> None:
                """Keep test output quiet."""

        return _Handler
