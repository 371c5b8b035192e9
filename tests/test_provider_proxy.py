"""Provider calls through the environment's proxy (`HTTP_PROXY`/`NO_PROXY`).

Our clients carry a transport of their own (the whole call's deadline), and httpx ignores the
environment's proxies once a transport is given: a deployment whose egress goes through a proxy
would reach no provider. The real clients (google-genai's, the polls') go through a local
forwarding proxy to the stand-in, and the proxy sees each call."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from mvpipe.providers.base import Brief, JobState, VideoRequest
from mvpipe.providers.gemini import GeminiPlanner
from mvpipe.providers.replicate import ReplicateVideoProvider
from tests.standins import ProviderStandIn, running_standin, settings_for


class ForwardingProxy(ThreadingHTTPServer):
    """A plain-HTTP forward proxy: each request line names the absolute URL it forwards to."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.seen: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    server: ForwardingProxy

    def _forward(self) -> None:
        self.server.seen.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        with httpx.Client(trust_env=False, timeout=30) as direct:  # not through itself
            answer = direct.request(self.command, self.path, headers=headers, content=body)
        self.send_response(answer.status_code)
        for name, value in answer.headers.items():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    do_GET = do_POST = _forward

    def log_message(self, *_: object) -> None:  # the test reads `seen`
        pass


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[ProviderStandIn]:
    with running_standin(monkeypatch) as server:
        yield server


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardingProxy]:
    server = ForwardingProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, server.url)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def test_planning_and_polls_go_through_the_environments_proxy(
    standin: ProviderStandIn, proxy: ForwardingProxy
) -> None:
    settings = settings_for(standin)
    scenes = GeminiPlanner(settings).plan(Brief("p", "T", "a neon city", 2))
    assert len(scenes) == 2
    provider = ReplicateVideoProvider(settings)
    operation_id = provider.submit(VideoRequest(str(uuid.uuid4()), 1, "a city", "blur", 6))
    assert provider.poll(operation_id).state in (JobState.RUNNING, JobState.SUCCEEDED)
    assert any("generateContent" in line for line in proxy.seen), proxy.seen
    assert any(f"/v1/predictions/{operation_id}" in line for line in proxy.seen), proxy.seen


def test_a_host_the_environment_excludes_is_reached_directly(
    standin: ProviderStandIn, proxy: ForwardingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    settings = settings_for(standin)
    assert len(GeminiPlanner(settings).plan(Brief("p", "T", "a neon city", 1))) == 1
    assert proxy.seen == []
