"""Error classification shared by the SDK-backed providers: transient vs permanent.

429 and 5xx, timeouts and connection errors are transient; other 4xx (invalid request, auth,
content policy) are permanent. Only a 4xx is a refusal (the provider took no job): a 5xx may
come from a gateway after the provider accepted the job, so, like a timeout, it leaves the
outcome unknown. Messages are scrubbed of every secret we know, and of the control characters
a terminal would act on, before they can reach `lastError`, a log line or a task result.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote

import httpx

from mvpipe.errors import (
    OutputUnavailable,
    PermanentProviderError,
    PollRefused,
    ProviderError,
    QuotaExceeded,
    TransientProviderError,
)
from mvpipe.models import printable

#: Variables whose whole value is a secret.
SECRET_VARIABLES = (
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "REPLICATE_API_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "MVPIPE_FLOWER_PASSWORD",
)
#: Variables holding a URL whose password is a secret (a client library may echo it bare).
SECRET_URL_VARIABLES = ("MVPIPE_BROKER_URL", "MVPIPE_RESULT_BACKEND", "MVPIPE_REDIS_URL")
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: The shortest secret scrubbed from messages: a shorter one would hide ordinary text, so a
#: secret we choose the length of (Flower's password) is refused below it.
MIN_SECRET_CHARS = 4


#: The signing parts of a presigned URL (S3 SigV4/V2, GCS V4): each is a bearer credential
#: while it lasts, and providers echo input URLs in their errors.
PRESIGNED_PARTS = re.compile(
    r"((?:X-Amz-(?:Signature|Credential|Security-Token)|X-Goog-(?:Signature|Credential)"
    r"|Signature|AWSAccessKeyId)=)[^&\s\"']+",
    re.IGNORECASE,
)


#: The password of any URL's userinfo (`redis://:pw@host`, `redis://user:pw@host`), configured
#: or not. It runs to the last "@" before the host, so a password holding an unencoded "@" or
#: "/" is hidden whole (hiding a little more than the password is safe); it stops at a blank
#: and before another URL ("://"), so the next URL's host in a list stays readable.
URL_PASSWORD = re.compile(r"([a-z][a-z0-9+.-]*://[^:@/\s]*:)((?:(?!://)\S)*)@", re.IGNORECASE)
#: Bearer tokens (an echoed Authorization header) and tokens or keys passed as query
#: parameters: bearer credentials whoever reads them.
BEARER = re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
QUERY_SECRETS = re.compile(r"([?&](?:access_token|api_key|token|key)=)[^&\s\"']+", re.IGNORECASE)


def _environment(names: tuple[str, ...]) -> list[str]:
    """The values of `names` in any case: pydantic-settings reads `mvpipe_broker_url` as well
    as MVPIPE_BROKER_URL."""
    wanted = set(names)
    return [value for name, value in os.environ.items() if name.upper() in wanted and value]


def _secrets() -> list[str]:
    found = _environment(SECRET_VARIABLES)
    for url in _environment(SECRET_URL_VARIABLES):
        password = URL_PASSWORD.match(url)
        if password:  # as written and percent-decoded (redis-py reports the decoded one)
            found += [password.group(2), unquote(password.group(2))]
    # the longest first, so that a secret holding another is hidden whole
    found = [secret for secret in found if len(secret) >= MIN_SECRET_CHARS]
    return sorted(set(found), key=len, reverse=True)


def scrub(message: str) -> str:
    """`message` without the secrets we know, and with its control characters (escape
    sequences a provider's reply may hold) shown as "?" (`printable`; its lines kept: a
    traceback's)."""
    for secret in _secrets():
        message = message.replace(secret, "***")
    message = URL_PASSWORD.sub(r"\1***@", message)
    message = BEARER.sub(r"\1***", message)
    message = QUERY_SECRETS.sub(r"\1***", message)
    return printable(PRESIGNED_PARTS.sub(r"\1***", message))


def describe(exc: BaseException) -> str:
    """Any error as one line fit for `lastError`, a log line or a task result: typed provider
    errors are scrubbed already; anything else gets its type named and is scrubbed here."""
    text = str(exc) if isinstance(exc, ProviderError) else f"{type(exc).__name__}: {exc}"
    return printable(scrub(text), one_line=True)


def from_status(provider: str, status: int | None, message: str) -> ProviderError:
    """An error the provider answered with. Only a 4xx (429 included) is a refusal (`refused`):
    the request was not taken, so no job runs for it. A 5xx is not: a gateway's 500, 502, 503
    or 504 can come after the provider accepted the job (and will bill it), so a submit that
    gets one keeps its reservation, as after a timeout (DESIGN.md invariants 3 and 9)."""
    text = scrub(f"{provider}: {status or 'error'} {message}".strip())
    refused = status is not None and 400 <= status < 500
    if status == 429:
        return QuotaExceeded(text, refused=refused)
    if status is None or status in TRANSIENT_STATUSES or status >= 500:
        return TransientProviderError(text, refused=refused)
    return PermanentProviderError(text, refused=refused)


#: Answers to a poll of a job id the provider gave us that say we may not read it, not that
#: the job failed: 401/403 (a rotated or wrong credential) and 404. A 404 is no expiry: a
#: Replicate prediction made through the API stays readable by id (its data is removed after
#: an hour, the prediction is not), and a Veo operation is polled every few seconds from its
#: submit on; what hides it is a credential of another account or project.
POLL_REFUSALS = frozenset({401, 403, 404})


def from_poll_status(provider: str, status: int | None, message: str) -> ProviderError:
    """An error answered to the poll of a stored (maybe paid) job: `PollRefused` for a
    refusal of our access (`POLL_REFUSALS`), which the poll loop counts and polls again
    (docs/DESIGN.md invariant 3: the job runs on and is billed); else as `from_status`."""
    if status in POLL_REFUSALS:
        detail = scrub(message.strip())[:200]
        return PollRefused(
            f"{provider}: poll refused (HTTP {status}): check the provider credentials; "
            f"the job is kept" + (f" ({detail})" if detail else "")
        )
    return from_status(provider, status, message)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Timeouts and connection errors of the HTTP stacks the SDKs use: httpx (replicate, our
    own calls), httpx2 (google-genai's default), requests (google-cloud-storage)."""
    kinds: list[type[BaseException]] = [httpx.TransportError]
    try:
        import httpx2

        kinds.append(httpx2.TransportError)
    except ImportError:  # an optional backend of google-genai
        pass
    try:
        import requests

        kinds += [requests.ConnectionError, requests.Timeout]
    except ImportError:
        pass
    return tuple(kinds)


def from_transport(provider: str, exc: BaseException) -> ProviderError | None:
    """Timeouts and connection errors (resets included); None when `exc` is something else.
    Never a refusal: the request may have reached the provider (DESIGN.md invariant 3)."""
    if isinstance(exc, _transport_errors()):
        return TransientProviderError(scrub(f"{provider}: {type(exc).__name__}: {exc}"))
    return None


def unreadable(provider: str, exc: BaseException, *, transient: bool) -> ProviderError:
    """A reply we could not read (a 200 whose body is not the JSON asked for, e.g. a proxy's
    HTML page). Never a refusal: a create may have started a job. `transient` for a create
    or a plan (retried, bounded by attempts); else a plain `ProviderError`, which a poll loop
    counts, so a reply that never reads fails the scene instead of polling forever."""
    kind = TransientProviderError if transient else ProviderError
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return kind(scrub(f"{provider}: the reply could not be read ({detail})"))


def unfetched(provider: str, status: int | None, message: str) -> ProviderError:
    """An error answered to the download of a finished job's output. A refusal the poll
    loop must not take for the job's failure (`OutputUnavailable`: a signed URL expired, the
    output was deleted or is not readable yet); what is transient stays transient."""
    error = from_status(provider, status, message)
    if isinstance(error, PermanentProviderError):
        return OutputUnavailable(str(error))
    return error


def too_large(provider: str, limit: int) -> PermanentProviderError:
    """An output over `MVPIPE_MAX_CLIP_BYTES`: fetching it again would bring the same size."""
    return PermanentProviderError(
        f"{provider}: the job is paid for but its output was refused: it is larger than "
        f"MVPIPE_MAX_CLIP_BYTES ({limit} bytes)"
    )


def require_env(*names: str, purpose: str) -> str:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    from mvpipe.errors import ConfigurationError

    raise ConfigurationError(f"{purpose} needs {' or '.join(names)} to be set")
