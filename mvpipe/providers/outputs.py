"""Fetching a finished (so paid) job's output over HTTP, bounded in size, hops and time.

The output URL is the provider's (often a signed URL, a bearer credential while it lasts), so
no message here carries one unscrubbed. Every way the fetch can fail is classified:
- a refusal (a 4xx, a redirect we will not follow, an encoded or unreadable body) is
  `OutputUnavailable`: the job is not failed for it, the poll loop counts it and asks again;
- an outage (a 5xx, 429, a timeout, a reset, a cut-off body, the whole-download deadline)
  stays transient;
- an output over `MVPIPE_MAX_CLIP_BYTES` is permanent: fetching again brings the same size.
"""

from __future__ import annotations

import time

import httpx

from mvpipe.errors import OutputUnavailable, ProviderError, TransientProviderError
from mvpipe.providers.classify import from_transport, scrub, too_large, unfetched
from mvpipe.settings import Settings

#: Redirects one download follows at most (each a hop whose body is never read).
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SCHEMES = ("http", "https")
#: Content-Encoding values that leave the body as stored (anything else was not asked for).
PLAIN_ENCODINGS = ("", "identity")


def fetch_output(provider: str, url: str, settings: Settings) -> bytes:
    """`download` within the configured bounds."""
    return download(
        provider,
        url,
        timeout=settings.provider_timeout_seconds,
        deadline=settings.download_timeout_seconds,
        max_bytes=settings.max_clip_bytes,
    )


def download(provider: str, url: str, *, timeout: float, deadline: float, max_bytes: int) -> bytes:
    """The output at `url`, never more than `max_bytes` of it. Sent `Accept-Encoding:
    identity`, so the bytes counted against the cap are the bytes stored (a gzip body would
    be decoded past it); redirects are followed by hand, at most `MAX_REDIRECTS`, to http(s)
    only, their bodies never read. `timeout` bounds each connect and read; `deadline` (s) the
    whole download, which a server dripping a byte just inside each read timeout would
    otherwise hold for ever (it ends within one read timeout past it)."""
    ends = time.monotonic() + deadline
    try:
        with httpx.Client(headers={"Accept-Encoding": "identity"}) as client:
            for _hop in range(MAX_REDIRECTS + 1):
                target = checked_url(provider, url)
                limit = remaining(provider, ends, timeout, deadline)
                request = client.build_request("GET", target, timeout=limit)
                response = client.send(request, stream=True)
                try:
                    location = redirect_location(provider, response)
                    if location is None:
                        return read_capped(provider, response, max_bytes, ends, deadline)
                finally:
                    response.close()
                url = location
            raise OutputUnavailable(
                f"{provider}: the output download was redirected more than {MAX_REDIRECTS} times"
            )
    except ProviderError:
        raise
    except Exception as exc:
        error = classified(provider, exc)
        if error is exc:
            raise
        raise error from None  # the raw error holds the signed URL (in its request)


def classified(provider: str, exc: Exception) -> Exception:
    """An error met on the way. A transport fault (a timeout, a reset, a body cut short, a
    protocol violation) is an outage, so transient. Any other `httpx` error (a URL that is
    malformed or not http(s), a body that cannot be decoded, too many redirects) is the
    answer's own fault and would recur, so `OutputUnavailable`: the poll loop counts it and
    fails the scene after `MVPIPE_MAX_POLL_ERRORS` of them, saying the job is paid. Anything
    else is a bug of ours and goes up unchanged (the poll loop counts it too)."""
    answered = (httpx.UnsupportedProtocol, httpx.InvalidURL)  # a URL no retry will fix
    transport = None if isinstance(exc, answered) else from_transport(provider, exc)
    if transport is not None:
        return transport
    if isinstance(exc, (httpx.RequestError, httpx.InvalidURL)):
        return OutputUnavailable(scrub(f"{provider}: output download: {type(exc).__name__}: {exc}"))
    return exc


def checked_url(provider: str, url: str) -> httpx.URL:
    """`url` parsed, when it is http(s): a redirect to `file:`, `ftp:` or the like is refused."""
    parsed = httpx.URL(url)
    if parsed.scheme not in SCHEMES or not parsed.host:
        scheme = parsed.scheme or "no scheme"
        raise OutputUnavailable(
            f"{provider}: the output download was sent to a {scheme!r} URL, not http(s)"
        )
    return parsed


def remaining(provider: str, ends: float, timeout: float, deadline: float) -> httpx.Timeout:
    """The per-call timeout: `timeout`, or what is left of the deadline if less."""
    left = ends - time.monotonic()
    if left <= 0:
        raise past_deadline(provider, deadline)
    return httpx.Timeout(min(timeout, left))


def past_deadline(provider: str, deadline: float) -> TransientProviderError:
    """Too slow as a whole: like a timeout, an outage (ours or the server's), so transient."""
    return TransientProviderError(
        f"{provider}: the output download took longer than MVPIPE_DOWNLOAD_TIMEOUT_SECONDS "
        f"({deadline:g} s)"
    )


def redirect_location(provider: str, response: httpx.Response) -> str | None:
    """Where a redirect points (resolved against its URL), None for a 200; any other status
    is classified (`unfetched`). The redirect's body is left unread."""
    status = response.status_code
    if status == 200:
        return None
    if status not in REDIRECT_STATUSES:
        raise unfetched(provider, status, "output download failed")
    location = response.headers.get("location")
    if not location:
        raise OutputUnavailable(f"{provider}: the output download's {status} has no Location")
    return str(response.url.join(location))


class Bounded:
    """A sink for an output's bytes, as they come, that refuses them past `max_bytes` (a
    `PermanentProviderError`) or past the monotonic time `ends` (transient): a download
    whose size is not declared, or declared wrongly, stops there rather than at the end."""

    def __init__(self, provider: str, max_bytes: int, ends: float, deadline: float) -> None:
        self.provider, self.max_bytes, self.ends, self.deadline = (
            provider,
            max_bytes,
            ends,
            deadline,
        )
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, chunk: bytes) -> int:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise too_large(self.provider, self.max_bytes)
        if time.monotonic() > self.ends:
            raise past_deadline(self.provider, self.deadline)
        self.chunks.append(bytes(chunk))
        return len(chunk)

    def getvalue(self) -> bytes:
        return b"".join(self.chunks)


def read_capped(
    provider: str, response: httpx.Response, max_bytes: int, ends: float, deadline: float
) -> bytes:
    """The body as sent (never decoded), refused once it passes `max_bytes` (declared or
    counted: a chunked body has no length) or the deadline."""
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in PLAIN_ENCODINGS:
        raise OutputUnavailable(
            f"{provider}: the output was sent with Content-Encoding {encoding[:40]!r}, "
            "though identity was asked"
        )
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large(provider, max_bytes)
    sink = Bounded(provider, max_bytes, ends, deadline)
    for chunk in response.iter_raw():
        sink.write(chunk)
    return sink.getvalue()
