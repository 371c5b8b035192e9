"""A small HTTP/1.1 front for the state server's WSGI app: kept-alive connections, one request
at a time, on one asyncio loop.

tornado's HTTP layer (its coroutines and WSGI adapter) had become the largest cost of a small
DynamoDB request after moto's own. The clients here are botocore's: requests with a
`Content-Length` or a chunked body, `Expect: 100-continue` before an upload. The wire is read
by httptools (llhttp, the parser Node.js and uvicorn use): request line, headers, both body
framings, trailers and the keep-alive rules are its job. What is ours: calling the app with a
whole body, answering pipelined requests in order, 100 Continue, a body limit, and writing the
answer as tornado's WSGI adapter did (a `Content-Length` and a `Content-Type` when the app gave
none; no body for HEAD, 1xx, 204 or 304). A request that cannot be read gets a 400, a body
over the limit a 413, one the app fails on a 500; each closes the connection.
"""

from __future__ import annotations

import asyncio
import io
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote_to_bytes

import httptools

WsgiApp = Callable[..., Iterable[bytes]]

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: A request head still unfinished after this many more bytes (counted from the read after the
#: one it began in, so one read of up to 256 KiB more) is refused: llhttp sets no limit.
MAX_HEAD_BYTES = 64 * 1024
#: The largest request body read. Above the largest object stored through this front: a song
#: (`song_max_bytes`, 50 MiB by default) or a final video, which no setting bounds (a 600 s
#: song, the longest by default, cut at 720p is ~750 MB even at 10 Mbit/s). It stops a client
#: gone wrong from filling the server's memory; a body is held whole, as the app reads it.
MAX_BODY_BYTES = 1024**3
#: How the body was framed on the wire: read here, so the app sees a plain body of its length.
_BODY_FRAMING = frozenset({"content-length", "transfer-encoding"})


class _Refused(Exception):
    """A request this front will not serve: answered with `status`, then the connection closed."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class _Request:
    """One request as the parser gives it, and where its body stands."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.method = ""
        self.version = ""
        self.parts: list[bytes] = []  # the body's pieces read so far
        self.size = 0
        self.keep_alive = False
        self.head_done = False
        self.continued = False

    def wants_continue(self) -> bool:
        # An HTTP/1.0 client never waits for 100 Continue, and must not be sent one.
        expects = self.headers.get("expect", "").lower() == "100-continue"
        return expects and self.version == "HTTP/1.1"


class _Connection(asyncio.Protocol):
    """One client connection: feeds the parser, whose callbacks below fill in `_Request`s, and
    answers each request once whole. The app is called outside the callbacks, so its failure
    is not taken for a parse error, and answers go out in the order the requests came."""

    def __init__(
        self, app: WsgiApp, server_name: str, server_port: int, max_body: int = MAX_BODY_BYTES
    ) -> None:
        self.app = app
        self.server_name = server_name
        self.server_port = str(server_port)
        self.max_body = max_body
        self.parser = httptools.HttpRequestParser(self)
        self.request: _Request | None = None  # the one being read
        self.whole: list[_Request] = []  # read, not yet answered
        self.head_bytes = 0
        self.refusal: _Refused | None = None  # why a callback stopped the parser
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # A client that does not read its answers stops being read (no unbounded answer buffer).
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        refusal: _Refused | None = None
        if self._in_head():
            self.head_bytes += len(data)  # the parser keeps a header's partial value itself
        try:
            self.parser.feed_data(data)
            if self._in_head() and self.head_bytes > MAX_HEAD_BYTES:
                raise _Refused("400 Bad Request", "request head too large")
        except httptools.HttpParserError as exc:  # also what a callback's _Refused becomes
            refusal = self.refusal or _Refused("400 Bad Request", f"bad request: {exc}")
        except _Refused as exc:
            refusal = exc
        whole, self.whole = self.whole, []
        try:
            for read in whole:  # those read before a refusal are answered first
                if self.transport is None:  # an answer closed the connection
                    return
                self._answer(read)
        except Exception:  # the app's own failure: its traceback in the server's log
            traceback.print_exc()
            refusal = _Refused("500 Internal Server Error", "the server failed to answer")
        if refusal is not None:
            self._refuse(refusal)
            return
        request = self.request
        if request and request.head_done and request.wants_continue() and not request.continued:
            # The body is not all here: the client waits for this before it sends the rest.
            request.continued = True
            if self.transport is not None:
                self.transport.write(_CONTINUE)

    def _in_head(self) -> bool:
        return self.request is not None and not self.request.head_done

    # -- the parser's callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.request = _Request()
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        assert self.request is not None
        self.request.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.request is not None
        if self.request.head_done:
            return  # a chunked body's trailer: not a header of the request
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        known = self.request.headers.get(key)
        self.request.headers[key] = text if known is None else f"{known},{text}"

    def on_headers_complete(self) -> None:
        request = self.request
        assert request is not None
        request.head_done = True
        request.method = self.parser.get_method().decode("ascii")
        request.version = f"HTTP/{self.parser.get_http_version()}"
        if request.version not in ("HTTP/1.0", "HTTP/1.1"):  # llhttp reads "GET /" as HTTP/0.9
            self._stop("400 Bad Request", f"bad request line: {request.version} is not served")
        if self.parser.should_upgrade():
            self._stop("400 Bad Request", "protocol upgrades are not served")
        declared = request.headers.get("content-length", "0")
        if declared.isdigit() and int(declared) > self.max_body:  # before 100 Continue is sent
            self._stop("413 Content Too Large", f"a body is {self.max_body} bytes at most")

    def on_body(self, body: bytes) -> None:
        request = self.request
        assert request is not None
        request.size += len(body)
        if request.size > self.max_body:  # a chunked body announces no length
            self._stop("413 Content Too Large", f"a body is {self.max_body} bytes at most")
        request.parts.append(body)

    def on_message_complete(self) -> None:
        request = self.request
        assert request is not None
        request.keep_alive = self.parser.should_keep_alive()  # the version and `Connection`
        self.whole.append(request)
        self.request = None

    def _stop(self, status: str, reason: str) -> None:
        self.refusal = _Refused(status, reason)
        raise self.refusal

    # -- answering -----------------------------------------------------------------------------
    def _answer(self, request: _Request) -> None:
        assert self.transport is not None
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], _: Any = None) -> Any:
            answer["status"], answer["headers"] = status, headers
            return lambda _: None  # the legacy write(): unused by moto

        chunks = self.app(self._environ(request), start_response)
        try:
            payload = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        status: str = answer["status"]
        headers: list[tuple[str, str]] = list(answer["headers"])
        given = {name.lower() for name, _ in headers}
        code = status[:3]
        no_body = code[0] == "1" or code in ("204", "304")  # nor a length (RFC 9110)
        if "content-length" not in given and not no_body:
            headers.append(("Content-Length", str(len(payload))))
        if "content-type" not in given and not no_body:
            headers.append(("Content-Type", "text/html; charset=UTF-8"))
        if not request.keep_alive:
            headers.append(("Connection", "close"))
        head = f"HTTP/1.1 {status}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
        bodiless = no_body or request.method == "HEAD"
        self.transport.writelines([head.encode("latin-1"), b"" if bodiless else payload])
        if not request.keep_alive:
            self.transport.close()
            self.transport = None

    def _environ(self, request: _Request) -> dict[str, Any]:
        body = b"".join(request.parts)
        path, _, query = request.url.partition(b"?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
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

    def _refuse(self, refusal: _Refused) -> None:
        """Answer the refusal and close: what follows on the connection cannot be read."""
        if self.transport is None:
            return
        body = str(refusal).encode("latin-1", "replace")
        self.transport.write(
            f"HTTP/1.1 {refusal.status}\r\nConnection: close\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode("latin-1")
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
