"""Provider calls through the environment's proxy (`HTTP_PROXY`/`NO_PROXY`).

Our clients carry a transport of their own (the whole call's deadline), and httpx ignores the
environment's proxies once a transport is given: a deployment whose egress goes through a proxy
would reach no provider. The real clients (google-genai's, Replicate's SDK for a create, the
polls') go through a local forwarding proxy to the stand-in, and the proxy sees each call. A
proxied call keeps what a direct one has: the whole call's deadline, and a create's unreadable
answer an unknown outcome (its reservation kept), never a refusal."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from mvpipe.errors import ProviderError, TransientProviderError
from mvpipe.providers.base import Brief, JobState
from mvpipe.providers.gemini import GeminiPlanner
from mvpipe.providers.replicate import ReplicateVideoProvider
from tests.standins import ProviderStandIn, running_standin, settings_for
from tests.test_provider_faults import assert_unknown_outcome, gave_up_at_its_deadline, video


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
        """The answer passed on as it comes (a trickled body reaches the caller at its pace),
        until it ends or the caller has gone."""
        self.server.seen.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        try:
            with (
                httpx.Client(trust_env=False, timeout=30) as direct,  # not through itself
                direct.stream(self.command, self.path, headers=headers, content=body) as answer,
            ):
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in ("transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.end_headers()
                for piece in answer.iter_raw():
                    self.wfile.write(piece)
                    self.wfile.flush()
        except (OSError, httpx.HTTPError):  # the caller gave up, or the stand-in stopped
            self.close_connection = True

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
    operation_id = provider.submit(video())
    assert provider.poll(operation_id).state in (JobState.RUNNING, JobState.SUCCEEDED)
    assert any("generateContent" in line for line in proxy.seen), proxy.seen
    assert any(f"/v1/predictions/{operation_id}" in line for line in proxy.seen), proxy.seen


def test_a_host_the_environment_excludes_is_reached_directly(
    standin: ProviderStandIn, proxy: ForwardingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    settings = settings_for(standin)
    assert len(GeminiPlanner(settings).plan(Brief("p", "T", "a neon city", 1))) == 1
    provider = ReplicateVideoProvider(settings)
    operation_id = provider.submit(video())
    assert provider.poll(operation_id).state in (JobState.RUNNING, JobState.SUCCEEDED)
    assert standin.created["replicate"] == 1
    assert proxy.seen == []


def creates_seen(proxy: ForwardingProxy) -> list[str]:
    """The Replicate creates the proxy forwarded (a model's or a version's)."""
    return [line for line in proxy.seen if line.startswith("POST ") and "predictions" in line]


def test_a_replicate_create_goes_through_the_environments_proxy(
    standin: ProviderStandIn, proxy: ForwardingProxy
) -> None:
    # Replicate's SDK client, built with our transport, sends the create through the proxy
    provider = ReplicateVideoProvider(settings_for(standin))
    operation_id = provider.submit(video())
    assert creates_seen(proxy) == [f"POST {standin.url}/v1/models/minimax/video-01/predictions"]
    assert standin.created["replicate"] == 1
    assert provider.poll(operation_id).state in (JobState.RUNNING, JobState.SUCCEEDED)


@pytest.mark.parametrize("fault", ["trickle", "trickle_head", "undecodable"])
def test_a_proxied_create_keeps_its_deadline_and_its_unknown_outcome(
    standin: ProviderStandIn, proxy: ForwardingProxy, fault: str
) -> None:
    # Given a create the provider carries out whose answer, passed on by the proxy, trickles
    # (20 s or more) or cannot be read
    provider = ReplicateVideoProvider(settings_for(standin, provider_timeout_seconds=1))
    standin.faults["replicate.create"] = [fault]
    with pytest.raises(ProviderError) as caught:
        provider.submit(video())
    # Then it ends at its deadline, or unread, as an unknown outcome: the reservation is kept
    if fault == "undecodable":
        assert type(caught.value) is TransientProviderError
        assert_unknown_outcome(caught.value)
    else:
        gave_up_at_its_deadline(standin, caught.value)
    assert len(creates_seen(proxy)) == 1
    assert standin.created["replicate"] == 1


def test_a_proxied_poll_keeps_its_deadline(
    standin: ProviderStandIn, proxy: ForwardingProxy
) -> None:
    operation_id = ReplicateVideoProvider(settings_for(standin)).submit(video())
    standin.faults["replicate.poll"] = ["trickle"]
    with pytest.raises(ProviderError) as caught:
        ReplicateVideoProvider(settings_for(standin, provider_timeout_seconds=1)).poll(operation_id)
    gave_up_at_its_deadline(standin, caught.value)
    assert any(f"/v1/predictions/{operation_id}" in line for line in proxy.seen), proxy.seen
