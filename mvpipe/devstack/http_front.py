"""A small HTTP/1.1 front for the state server's WSGI app: kept-alive connections, one request
at a time, on one asyncio loop.

tornado's HTTP layer (its request parsing, coroutines and WSGI adapter) had become the largest
cost of a small DynamoDB request after moto's own. The clients here are botocore's: requests
with a `Content-Length` or a chunked body, `Expect: 100-continue` before an upload. This
front reads exactly that with a few byte searches per request, calls the app, and writes the
answer as tornado's WSGI adapter did (a `Content-Length` and a `Content-Type` when the app gave
none; no body for HEAD, 1xx, 204 or 304). A request it cannot read gets a 400, one the app
fails on a 500, and the connection is closed.
"""

from __future__ import annotations

import asyncio
import io
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

WsgiApp = Callable[..., Iterable[bytes]]

_END_OF_HEAD = b"\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: Largest request head: a request that sends more without a blank line is refused.
_MAX_HEAD = 64 * 1024
#: How the body was framed on the wire: read here, so the app sees a plain body of its length.
_BODY_FRAMING = frozenset({"content-length", "transfer-encoding"})


class BadRequest(Exception):
    """A request this front cannot read: answered with 400 and the connection closed."""


class _Request:
    """One parsed request head, and where its body stands."""

    def __init__(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        try:
            self.method, target, self.version = lines[0].split(" ")
        except ValueError:
            raise BadRequest(f"bad request line {lines[0][:80]!r}") from None
        self.path, _, self.query = target.partition("?")
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise BadRequest(f"bad header line {line[:80]!r}")
            name, value = name.lower(), value.strip()
            known = self.headers.get(name)
            self.headers[name] = value if known is None else f"{known},{value}"
        self.chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        try:
            self.length = int(self.headers.get("content-length", "0"))
        except ValueError:
            raise BadRequest("bad Content-Length") from None
        if self.length < 0:
            raise BadRequest("bad Content-Length")
        self.continued = False
        self.chunks: list[bytes] = []  # a chunked body's chunks read so far

    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.1":
            return "close" not in connection
        return "keep-alive" in connection

    def wants_continue(self) -> bool:
        return self.headers.get("expect", "").lower() == "100-continue"


def _take_chunks(buffer: bytearray, parts: list[bytes]) -> bool:
    """Move the whole chunks at the buffer's start into `parts`; True once the last chunk (and
    any trailers) are read too. Each byte is looked at once, however the body arrives."""
    while True:
        line_end = buffer.find(b"\r\n")
        if line_end < 0:
            return False
        try:
            size = int(bytes(buffer[:line_end]).split(b";", 1)[0], 16)
        except ValueError:
            raise BadRequest("bad chunk size") from None
        if size == 0:
            end = buffer.find(_END_OF_HEAD, line_end)  # trailers, then a blank line
            if end < 0:
                return False
            del buffer[: end + 4]
            return True
        at = line_end + 2
        if len(buffer) < at + size + 2:
            return False
        parts.append(bytes(buffer[at : at + size]))
        del buffer[: at + size + 2]


class _Connection(asyncio.Protocol):
    def __init__(self, app: WsgiApp, server_name: str, server_port: int) -> None:
        self.app = app
        self.server_name = server_name
        self.server_port = str(server_port)
        self.buffer = bytearray()
        self.request: _Request | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            while self.transport is not None and self._next():
                pass
        except BadRequest as exc:
            self._refuse("400 Bad Request", str(exc))
        except Exception:  # the app's own failure: its traceback in the server's log
            traceback.print_exc()
            self._refuse("500 Internal Server Error", "the server failed to answer")

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def _next(self) -> bool:
        """Answer the first request in the buffer if it is whole; True when one was."""
        assert self.transport is not None
        if self.request is None:
            end = self.buffer.find(_END_OF_HEAD)
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    raise BadRequest("request head too large")
                return False
            self.request = _Request(bytes(self.buffer[:end]))
            del self.buffer[: end + 4]
        request = self.request
        if request.chunked:
            whole = _take_chunks(self.buffer, request.chunks)
        else:
            whole = len(self.buffer) >= request.length
        if not whole:
            if request.wants_continue() and not request.continued:
                request.continued = True
                self.transport.write(_CONTINUE)
            return False
        if request.chunked:
            body = b"".join(request.chunks)
        else:
            body = bytes(self.buffer[: request.length])
            del self.buffer[: request.length]
        self.request = None
        self._answer(request, body)
        return True

    def _answer(self, request: _Request, body: bytes) -> None:
        assert self.transport is not None
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], _: Any = None) -> Any:
            answer["status"], answer["headers"] = status, headers
            return lambda _: None  # the legacy write(): unused by moto

        chunks = self.app(self._environ(request, body), start_response)
        try:
            payload = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        status: str = answer["status"]
        headers: list[tuple[str, str]] = list(answer["headers"])
        given = {name.lower() for name, _ in headers}
        if "content-length" not in given:
            headers.append(("Content-Length", str(len(payload))))
        if "content-type" not in given:
            headers.append(("Content-Type", "text/html; charset=UTF-8"))
        keep = request.keep_alive()
        if not keep:
            headers.append(("Connection", "close"))
        head = f"HTTP/1.1 {status}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
        code = status[:3]
        bodiless = request.method == "HEAD" or code[0] == "1" or code in ("204", "304")
        self.transport.write(head.encode("latin-1") + (b"" if bodiless else payload))
        if not keep:
            self.transport.close()
            self.transport = None

    def _environ(self, request: _Request, body: bytes) -> dict[str, Any]:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(request.path).decode("latin-1"),
            "QUERY_STRING": request.query,
            "REMOTE_ADDR": "127.0.0.1",
            "SERVER_NAME": self.server_name,
            "SERVER_PORT": self.server_port,
            "SERVER_PROTOCOL": request.version,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for name, value in request.headers.items():
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
            elif name not in _BODY_FRAMING:
                environ["HTTP_" + name.upper().replace("-", "_")] = value
        return environ

    def _refuse(self, status: str, reason: str) -> None:
        """Answer `status` and close: what follows on the connection cannot be read."""
        if self.transport is None:
            return
        body = reason.encode("latin-1", "replace")
        self.transport.write(
            f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Type: text/plain\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        self.transport.close()
        self.transport = None


def serve(app: WsgiApp, host: str, port: int, ready: Callable[[], None]) -> None:
    """Serve `app` on host:port until the process ends; `ready` is called once listening."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(app, host, port), host, port)
        ready()
        async with server:
            await server.serve_forever()

    asyncio.run(run())
