"""A wall-clock deadline for a whole provider call, from its connect to its body's last byte.

httpx's timeouts bound each connect, write and read on its own, so a reply that trickles (a
byte inside each read timeout: a broken proxy, a stalled gateway) holds the call for as long as
it trickles. A create held so past its lease and its claim's mark lets reconcile free the scene
and a second claim submit it: paid twice (docs/DESIGN.md: every provider call has a timeout
well below the lease, and the lease is sized on `MVPIPE_PROVIDER_TIMEOUT_SECONDS` bounding the
submit). `DeadlineTransport` gives each request a deadline that every socket operation of it
shares (the connect, TLS, each write, each read of the headers and the body): each waits at
most what is left of it, and one begun past it is httpx's own timeout. To the callers that is
any other timeout: after the request went out, an unknown outcome (transient, never a
refusal), so a create's reservation is kept.
"""

from __future__ import annotations

import threading
import time
import typing
from collections.abc import Iterable

import httpcore
import httpx

#: httpcore's socket options, as its backends take them
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class Deadline:
    """When the call in flight on this thread must be done (monotonic), per thread: one
    transport (and its pool) is shared by every thread of a worker."""

    def __init__(self) -> None:
        self._local = threading.local()

    def start(self, seconds: float) -> None:
        self._local.ends = time.monotonic() + seconds

    def left(self, timeout: float | None, kind: type[httpcore.TimeoutException]) -> float | None:
        """`timeout` (one operation's own), or what is left of the deadline if less; past
        it, `kind` (the timeout of the operation that would have waited)."""
        ends: float | None = getattr(self._local, "ends", None)
        if ends is None:
            return timeout
        left = ends - time.monotonic()
        if left <= 0:
            raise kind("the call took longer than its deadline")
        return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes wait no longer than the deadline allows."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: Deadline) -> None:
        self.inner, self.deadline = inner, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self.deadline.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.deadline.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: typing.Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = self.deadline.left(timeout, httpcore.ConnectTimeout)
        secured = self.inner.start_tls(ssl_context, server_hostname, left)
        return DeadlineStream(secured, self.deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self.inner.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sockets, each connection a `DeadlineStream`."""

    def __init__(self, deadline: Deadline) -> None:
        self.inner = httpcore.SyncBackend()
        self.deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        left = self.deadline.left(timeout, httpcore.ConnectTimeout)
        stream = self.inner.connect_tcp(host, port, left, local_address, socket_options)
        return DeadlineStream(stream, self.deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore.NetworkStream:
        left = self.deadline.left(timeout, httpcore.ConnectTimeout)
        stream = self.inner.connect_unix_socket(path, left, socket_options)
        return DeadlineStream(stream, self.deadline)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's own transport (its pooling, its proxying, its error mapping) over a
    `DeadlineBackend`: each request must be done, body read, within `seconds` of being handed
    to it, through `proxy` (its URL) as well as directly. A timeout past the deadline is
    httpx's (`ConnectTimeout`, `WriteTimeout`, `ReadTimeout`), as any other."""

    def __init__(self, seconds: float, proxy: str | None = None) -> None:
        super().__init__(proxy=proxy)
        self.seconds = seconds
        self.deadline = Deadline()
        # httpx's pool for this route (direct, or its proxy's), on sockets that keep the
        # deadline: each connection the pool opens (to the provider, or to the proxy and
        # through it) reads its backend when it is made
        self._pool._network_backend = DeadlineBackend(self.deadline)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        # Started here and read by every socket operation of this thread's call up to its
        # body's end (a client reads the body on the thread that sent the request).
        self.deadline.start(self.seconds)
        return super().handle_request(request)


def deadline_transports(seconds: float) -> dict[str, typing.Any]:
    """The `transport` and `mounts` of an httpx client (or of an SDK that hands them to its
    own) whose every call has the whole-call deadline, with the environment's proxies kept:
    httpx ignores `HTTP(S)_PROXY`/`ALL_PROXY`/`NO_PROXY` once a transport is given, and a
    deployment whose egress goes through a proxy could then reach no provider. Each proxy is
    mounted as httpx itself reads them, on a transport with the same deadline; a host
    `NO_PROXY` names (mounted as None) goes direct, on `transport`."""
    from httpx._utils import get_environment_proxies  # what httpx itself reads, NO_PROXY too

    mounts: dict[str, httpx.BaseTransport | None] = {
        pattern: None if url is None else DeadlineTransport(seconds, proxy=url)
        for pattern, url in get_environment_proxies().items()
    }
    return {"transport": DeadlineTransport(seconds), "mounts": mounts}


def deadline_client(seconds: float, **kwargs: typing.Any) -> httpx.Client:
    """An httpx client whose calls have the whole-call deadline, directly or through the
    environment's proxies (`deadline_transports`)."""
    return httpx.Client(**deadline_transports(seconds), **kwargs)
