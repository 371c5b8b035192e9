"""Building google-genai clients: Vertex mode for Veo, the Gemini API for planning.

The SDK is imported here, lazily, so workers and the CLI start fast. SDK-level retries stay off:
if enabled they would also retry the create POST and could start a second paid Veo job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from mvpipe.errors import ConfigurationError, ProviderError
from mvpipe.providers.classify import (
    from_poll_status,
    from_status,
    from_transport,
    scrub,
    unreadable,
)
from mvpipe.providers.deadline import deadline_client
from mvpipe.providers.once import Once
from mvpipe.settings import Settings

T = TypeVar("T")


def _http_options(settings: Settings, api_version: str) -> Any:
    """The SDK's `timeout` bounds each connect and read alone; the client's transport bounds
    the whole call (`deadline_client`), so a reply that trickles can't hold a create past
    its lease. A client of our own, not `client_args`: the SDK would build an httpx2 client
    around an httpx transport when `GOOGLE_GENAI_HTTP_CLIENT=httpx2`."""
    from google.genai import types

    seconds = settings.provider_timeout_seconds
    return types.HttpOptions(
        base_url=settings.genai_base_url or None,
        api_version=api_version,
        timeout=int(seconds * 1000),  # milliseconds
        httpx_client=deadline_client(seconds, timeout=seconds),
    )


def vertex_client(settings: Settings) -> Any:
    """Veo needs Vertex mode in google-genai 3.x: express mode (API key) or project + location."""
    from google import genai

    options = _http_options(settings, "v1beta1")
    api_key = os.environ.get("GOOGLE_API_KEY")
    if api_key:
        return genai.Client(vertexai=True, api_key=api_key, http_options=options)
    project, location = (
        os.environ.get("GOOGLE_CLOUD_PROJECT"),
        os.environ.get("GOOGLE_CLOUD_LOCATION"),
    )
    if project and location:
        return genai.Client(vertexai=True, project=project, location=location, http_options=options)
    raise ConfigurationError(
        "Veo needs GOOGLE_API_KEY (Vertex express mode) or GOOGLE_CLOUD_PROJECT and "
        "GOOGLE_CLOUD_LOCATION with application-default credentials"
    )


def gemini_client(settings: Settings) -> Any:
    """The Gemini API with GEMINI_API_KEY passed explicitly (the SDK would otherwise prefer
    GOOGLE_API_KEY, which may be a Vertex key)."""
    from google import genai

    api_key = os.environ.get("GEMINI_API_KEY")
    if not api_key:
        raise ConfigurationError("Gemini planning needs GEMINI_API_KEY to be set")
    return genai.Client(api_key=api_key, http_options=_http_options(settings, "v1beta"))


class GenaiUser:
    """A provider whose google-genai client is built on first use, so constructing the provider
    (at import, in a worker that never plans) needs no credentials."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Once[Any] = Once(lambda: self.make_client())

    def make_client(self) -> Any:
        raise NotImplementedError

    @property
    def client(self) -> Any:
        return self._client.get()


def call_sdk(provider: str, fn: Callable[[], T], *, polling: bool = False) -> T:
    """Run one SDK call; its errors come out as mvpipe provider errors. An unreadable reply
    to a poll is counted by the poll loop (`polling`); to anything else it is transient."""
    try:
        return fn()
    except Exception as exc:
        translated = translate(provider, exc, polling=polling)
        if translated is None:
            raise
        raise translated from None


def translate(provider: str, exc: Exception, *, polling: bool = False) -> ProviderError | None:
    """google-genai and HTTP errors as mvpipe provider errors (None: not an SDK error)."""
    from google.genai import errors

    if isinstance(exc, errors.APIError):
        classify = from_poll_status if polling else from_status
        return classify(provider, exc.code, exc.message or exc.status or "")
    transport = from_transport(provider, exc)
    if transport is not None:
        return transport
    if isinstance(
        exc,
        errors.UnknownApiResponseError
        | json.JSONDecodeError
        | UnicodeDecodeError
        | ValidationError,
    ):
        # a 200 whose body is not JSON (nor UTF-8), or not the shape asked for: the create may
        # have started a job all the same (requests are built, and validated, before the call)
        return unreadable(provider, exc, transient=not polling)
    if isinstance(exc, TypeError | KeyError | AttributeError | IndexError):
        # the SDK tripped over the answer's shape while converting it
        return unreadable(provider, exc, transient=not polling)
    if isinstance(exc, ValueError):  # the SDK's own checks of our request
        return from_status(provider, 400, scrub(str(exc)))
    return None
