"""The state server's HTTP front: what botocore sends (uploads announced with
`Expect: 100-continue`, chunked bodies, HEAD) is read whole, answered, and the connection kept."""

from __future__ import annotations

import asyncio
import http.client
import socket
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlparse

import boto3
import pytest

from mvpipe.devstack.http_front import MAX_BODY_BYTES, _Connection
from mvpipe.devstack.localstack import LocalStack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def port(stack: LocalStack) -> int:
    found = urlparse(stack.env["MVPIPE_S3_ENDPOINT"]).port
    assert found is not None
    return found


@pytest.fixture(scope="module")
def bucket(stack: LocalStack) -> str:
    name = f"front-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=stack.env["MVPIPE_S3_ENDPOINT"]).create_bucket(Bucket=name)
    return name


def _read_answer(sock: socket.socket) -> tuple[bytes, bytes]:
    """One answer's head and its Content-Length body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


def test_a_chunked_upload_after_100_continue_is_stored_whole(
    stack: LocalStack, port: int, bucket: str
) -> None:
    """The front says 100 Continue before the body is sent, then decodes the chunks; the
    connection then serves the next request."""
    body = bytes(range(256)) * 40  # 10 KiB, split into uneven chunks below
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"PUT /{bucket}/chunked HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        message = b"".join(
            f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
            for chunk in (body[start : start + 3000] for start in range(0, len(body), 3000))
        )
        message += b"0\r\nX-Trailer: kept out of the body\r\n\r\n"
        for start in range(0, len(message), 1000):  # pieces cut across chunks and size lines
            sock.sendall(message[start : start + 1000])
        head, _ = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # S3 ListBuckets
        head, listed = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert bucket.encode() in listed
    s3 = boto3.client("s3", endpoint_url=stack.env["MVPIPE_S3_ENDPOINT"])
    assert s3.get_object(Bucket=bucket, Key="chunked")["Body"].read() == body


def test_a_head_answer_has_no_body_and_the_connection_goes_on(port: int, bucket: str) -> None:
    """A HEAD of a bucket's listing answers its length alone: a body sent after it would be
    read as the next answer on the connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/")
    listing = connection.getresponse().read()
    connection.request("HEAD", "/")
    head = connection.getresponse()
    assert head.status == 200
    assert head.getheader("Content-Length") == str(len(listing))
    assert head.read() == b""
    connection.request("GET", "/")
    got = connection.getresponse()
    assert got.status == 200
    assert got.read() == listing
    connection.close()


def test_a_client_asking_to_close_is_answered_then_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head, _ = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"\r\nConnection: close" in head
        assert sock.recv(1024) == b""  # closed by the server


def test_an_unreadable_request_is_refused_and_closed(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /\r\nHost: 127.0.0.1\r\n\r\n")
        head, body = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 400 ")
        assert b"bad request line" in body
        assert sock.recv(1024) == b""


def test_a_body_over_the_limit_is_refused_before_it_is_sent(port: int) -> None:
    """An upload announced over the limit gets 413 instead of 100 Continue: the client never
    sends the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            f"PUT /any/big HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
            f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
        )
        head, body = _read_answer(sock)
        assert head.startswith(b"HTTP/1.1 413 ")
        assert str(MAX_BODY_BYTES).encode() in body
        assert sock.recv(1024) == b""


class _Recorded(asyncio.Transport):
    """A transport that keeps what the front writes (the front's own logic, no socket)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True


def _front(
    app: Callable[..., Iterable[bytes]], max_body: int = MAX_BODY_BYTES
) -> tuple[_Connection, _Recorded]:
    connection = _Connection(app, "127.0.0.1", 0, max_body)
    transport = _Recorded()
    connection.connection_made(transport)
    return connection, transport


def _echo(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode() + b"=" + environ["wsgi.input"].read()]


def test_requests_sent_together_are_answered_in_order() -> None:
    connection, transport = _front(_echo)
    connection.data_received(
        b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nonePOST /b%20c HTTP/1.1\r\n"
        b"Content-Length: 3\r\n\r\ntwo"
    )
    answers = transport.written.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert [a.split(b"\r\n\r\n", 1)[1] for a in answers] == [b"/a=one", b"/b c=two"]
    assert not transport.closed


def test_an_app_that_fails_gets_a_500_and_the_connection_closed() -> None:
    def broken(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        raise RuntimeError("moto fell over")

    connection, transport = _front(broken)
    connection.data_received(b"GET / HTTP/1.1\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert transport.closed


def test_a_malformed_request_is_refused_after_the_answers_before_it() -> None:
    connection, transport = _front(_echo)
    connection.data_received(
        b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\none"
        b"GET /b HTTP/1.1\r\nBad Header: x\r\n\r\nGET /c HTTP/1.1\r\n\r\n"
    )
    first, _, refused = transport.written.partition(b"HTTP/1.1 400 Bad Request\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n/a=one")
    assert b"Connection: close\r\n" in refused
    assert b"/c" not in transport.written  # nothing after the malformed request is served
    assert transport.closed


def test_a_chunked_body_over_the_limit_gets_a_413_and_one_at_it_is_served() -> None:
    """A chunked body announces no length: it is counted as it arrives."""
    chunked = b"PUT /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    at_limit = chunked + b"6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n"  # 10 bytes
    connection, transport = _front(_echo, max_body=10)
    connection.data_received(at_limit)
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.written.endswith(b"\r\n\r\n/up=abcdefghij")
    connection, transport = _front(_echo, max_body=9)
    connection.data_received(at_limit)
    assert transport.written.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    assert b"/up=" not in transport.written  # the app never saw it
    assert transport.closed


def test_a_request_head_that_never_ends_is_refused() -> None:
    connection, transport = _front(_echo)
    connection.data_received(b"GET / HTTP/1.1\r\nX-Long: ")
    for _ in range(20):  # 80 KiB of one header's value, no end of line
        connection.data_received(b"x" * 4096)
    assert transport.written.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert transport.written.endswith(b"request head too large")
    assert transport.closed


def test_a_protocol_upgrade_is_refused() -> None:
    connection, transport = _front(_echo)
    connection.data_received(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    assert transport.written.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"/=" not in transport.written
    assert transport.closed


def test_a_no_content_answer_carries_no_length_or_type() -> None:
    def empty(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("204 No Content", [])
        return [b""]

    connection, transport = _front(empty)
    connection.data_received(b"DELETE /x HTTP/1.1\r\n\r\n")
    head = transport.written.lower()
    assert head.startswith(b"http/1.1 204 no content\r\n") and head.endswith(b"\r\n\r\n")
    assert b"content-length" not in head and b"content-type" not in head
    assert not transport.closed


def test_only_an_http_1_1_client_is_sent_100_continue() -> None:
    waiting = b"PUT /a {} \r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\no"
    for version, continued in ((b"HTTP/1.1", True), (b"HTTP/1.0", False)):
        connection, transport = _front(_echo)
        connection.data_received(waiting.replace(b"{} ", version))
        assert transport.written.startswith(b"HTTP/1.1 100 Continue") == continued, version
        connection.data_received(b"ne")
        assert transport.written.endswith(b"/a=one")
