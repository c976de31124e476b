"""How the SDK's requests reach a server: over HTTP, or straight into a WSGI application.

`Client(url, transport=...)` takes any object with `request(method, url, body, headers,
timeout) -> Response` and `close()`, as httpx does. HTTPTransport (the default) keeps one
urllib3 connection pool; WSGITransport calls a WSGI application (the server's Flask app) in
this process, without sockets, so contract tests of the SDK run in seconds.
"""

from __future__ import annotations

import io
import json
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import urllib3

from heserve.client.errors import ConnectionFailedError, ConnectionTimeoutError


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


class ConnectionBroken(ConnectionFailedError):
    """The connection broke mid-request: an idempotent request may be sent again."""


class Transport(Protocol):
    def request(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> Response: ...

    def close(self) -> None: ...


class HTTPTransport:
    """HTTP through one urllib3 connection pool.

    urllib3 directly rather than requests: on loopback requests adds ~1.7 ms per call,
    more than the server spends evaluating a single encrypted sample.
    """

    def __init__(self, max_connections: int = 4):
        self._pool = urllib3.PoolManager(maxsize=max_connections, retries=False)

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float) -> Response:
        try:
            raw = self._pool.request(method, url, body=body, headers=headers, timeout=urllib3.Timeout(total=timeout))
        except urllib3.exceptions.NewConnectionError as exc:
            # Caught first: urllib3 makes it a kind of TimeoutError, but a refused connection is no timeout.
            raise ConnectionFailedError(f"{method} {url}: cannot connect: {exc}") from None
        except urllib3.exceptions.TimeoutError:
            raise ConnectionTimeoutError(f"{method} {url}: no answer within {timeout} s") from None
        except urllib3.exceptions.HTTPError as exc:
            raise ConnectionBroken(f"{method} {url}: {exc}") from None
        return Response(raw.status, dict(raw.headers), raw.data)

    def close(self) -> None:
        self._pool.clear()


class WSGITransport:
    """Requests handed to a WSGI application in this process (no socket, no server)."""

    def __init__(self, app: Callable[..., Iterable[bytes]], remote_addr: str = "127.0.0.1"):
        self.app = app
        self.remote_addr = remote_addr

    def request(self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float) -> Response:
        parts = urllib.parse.urlsplit(url)
        body = body or b""
        environ = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote(parts.path) or "/",
            "QUERY_STRING": parts.query,
            "SERVER_NAME": parts.hostname or "localhost",
            "SERVER_PORT": str(parts.port or (443 if parts.scheme == "https" else 80)),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": self.remote_addr,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": parts.scheme or "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for name, value in headers.items():
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                environ["CONTENT_TYPE"] = value
            elif key != "CONTENT_LENGTH":
                environ["HTTP_" + key] = value
        answer: dict[str, Any] = {}

        def start_response(status: str, response_headers: list[tuple[str, str]], exc_info=None):
            answer["status"] = int(status.split(" ", 1)[0])
            answer["headers"] = dict(response_headers)
            return lambda chunk: None

        chunks = self.app(environ, start_response)
        try:
            content = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        return Response(answer["status"], answer["headers"], content)

    def close(self) -> None:
        pass
