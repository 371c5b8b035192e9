"""Replicate predictions, shared by every Replicate-backed provider (video, lip-sync).

Created through the SDK (never retried: a create has no idempotency key), polled and cancelled
with a plain short-timeout GET/POST so one poll never holds a worker slot through the SDK's
retry layer. An output is fetched as soon as the prediction succeeds: Replicate deletes it
after about an hour.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import httpx

from mvpipe.errors import PermanentProviderError, ProviderError
from mvpipe.providers.base import JobState, JobStatus
from mvpipe.providers.classify import (
    from_poll_status,
    from_status,
    from_transport,
    require_env,
    scrub,
    unreadable,
)
from mvpipe.providers.deadline import deadline_client, deadline_transports
from mvpipe.providers.once import Once
from mvpipe.providers.outputs import fetch_output
from mvpipe.settings import Settings

DEFAULT_BASE_URL = "https://api.replicate.com"

#: Replicate's prediction statuses (including `aborted`, which the 1.0.x client can't parse).
STATUSES = {
    "starting": JobState.RUNNING,
    "processing": JobState.RUNNING,
    "succeeded": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "canceled": JobState.CANCELLED,
    "aborted": JobState.CANCELLED,
}


class ReplicateJobs:
    """Create, poll, download and cancel predictions of one model (`owner/name[:version]`)."""

    def __init__(self, settings: Settings, provider: str) -> None:
        #: how errors name the provider (they reach lastError)
        self.settings = settings
        self.provider = provider
        #: per thread: whether the create in flight sent a request (`_sending`)
        self._sent = threading.local()
        self.base_url = (
            settings.replicate_base_url or os.environ.get("REPLICATE_BASE_URL") or DEFAULT_BASE_URL
        ).rstrip("/")
        self._client: Once[Any] = Once(lambda: self._build())
        #: polls and cancels, plain httpx (no SDK retries), bounded as a whole as well
        self._plain: Once[httpx.Client] = Once(
            lambda: deadline_client(settings.provider_timeout_seconds)
        )

    def _token(self) -> str:
        return require_env("REPLICATE_API_TOKEN", purpose="Replicate")

    @property
    def client(self) -> Any:
        return self._client.get()

    def _build(self) -> Any:
        """The SDK's client on our transports: each request with the whole-call deadline,
        directly or through the environment's proxies (`deadline_transports`: a `transport`
        the SDK wraps in its retries, which never retry a create's POST, and the proxies'
        `mounts`, handed to its httpx client), each seen by `_sending` as it goes out."""
        import replicate

        seconds = self.settings.provider_timeout_seconds
        client = replicate.Client(
            api_token=self._token(),
            base_url=self.base_url,
            timeout=httpx.Timeout(seconds),
            event_hooks={"request": [self._sending]},
            **deadline_transports(seconds),
        )
        # The SDK builds its httpx client on first use, check-then-set: built here, once, it
        # is the one every thread shares (httpx's connection pool is thread-safe).
        _ = client._client
        return client

    def _sending(self, request: httpx.Request) -> None:
        """Every request of the SDK's client, as it goes out, whichever transport sends it.
        It gets the provider timeout for each phase: replicate 1.0.x creates a prediction with
        `timeout=None`, which httpx reads as *no* timeout whatever the client's, and a create
        that hangs would outlive its lease (docs/DESIGN.md: every provider call has a
        timeout). And it is noted, per thread, that a request went out: an error after that
        point is never the SDK refusing our arguments (`_translate`)."""
        self._sent.value = True
        seconds = self.settings.provider_timeout_seconds
        request.extensions = {**request.extensions, "timeout": httpx.Timeout(seconds).as_dict()}

    def create(self, model_ref: str, fields: dict[str, Any]) -> str:
        """Start one prediction; its id. Errors come out classified (docs/DESIGN.md invariant 3:
        a timeout, a reset or an unreadable answer may still have started a billed job)."""
        model, _, version = model_ref.partition(":")
        client = self.client
        self._sent.value = False
        try:
            if version:
                prediction = client.predictions.create(version=version, input=fields)
            else:
                prediction = client.predictions.create(model=model, input=fields)
        except Exception as exc:
            raise self._translate(exc, sent=self._sent.value) from None
        return str(prediction.id)

    def poll(self, operation_id: str) -> JobStatus:
        body = self._get_json(f"{self.base_url}/v1/predictions/{operation_id}")
        state = STATUSES.get(str(body.get("status")))
        if state is None:
            return JobStatus(JobState.RUNNING)  # an unknown, newer status: keep polling
        if state == JobState.FAILED:
            error = body.get("error") or "prediction failed without a message"
            return JobStatus(state, error=scrub(f"{self.provider}: {error}"))
        if state == JobState.CANCELLED:
            return JobStatus(state, error=f"{self.provider}: prediction {body.get('status')}")
        if state == JobState.SUCCEEDED:
            output = body.get("output")
            url = output[0] if isinstance(output, list) and output else output
            if not isinstance(url, str):
                return JobStatus(
                    JobState.FAILED, error=f"{self.provider}: succeeded without an output URL"
                )
            return JobStatus(state, url=url)
        return JobStatus(state)

    def download(self, status: JobStatus) -> bytes:
        if status.url is None:
            raise PermanentProviderError(f"{self.provider}: no output to download")
        return fetch_output(self.provider, status.url, self.settings)

    def cancel(self, operation_id: str) -> bool:
        """True only when Replicate answers that the prediction is now `canceled`."""
        try:
            response = self._plain.get().post(
                f"{self.base_url}/v1/predictions/{operation_id}/cancel",
                headers=self._headers(),
                timeout=self.settings.provider_timeout_seconds,
            )
        except httpx.HTTPError:
            return False
        if response.status_code >= 300:
            return False
        try:  # a finished prediction answers 200 with its final status: not stopped by us
            return bool(self._json_object(response).get("status") == "canceled")
        except ProviderError:
            return False

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token()}"}

    def _get_json(self, url: str) -> dict[str, Any]:
        """A poll's GET of a stored prediction: a refusal of our access is `PollRefused`."""
        try:
            response = self._plain.get().get(
                url, headers=self._headers(), timeout=self.settings.provider_timeout_seconds
            )
        except Exception as exc:
            raise from_transport(self.provider, exc) or exc from exc
        if not 200 <= response.status_code < 300:  # any 2xx is an answer to read
            raise from_poll_status(self.provider, response.status_code, response.text[:500])
        return self._json_object(response)

    def _translate(self, exc: Exception, *, sent: bool) -> Exception:
        """A create's error. Only an SDK check that ran before any request went out is a
        refusal; once one was sent, a reply we cannot read (not JSON, not UTF-8, not a
        prediction) leaves the outcome unknown: the job may exist and be billed."""
        from replicate.exceptions import ReplicateError

        if isinstance(exc, ReplicateError):
            return from_status(self.provider, exc.status, exc.detail or exc.title or str(exc))
        transport = from_transport(self.provider, exc)
        if transport is not None:
            return transport
        if sent:  # e.g. a 2xx whose body is not JSON, not UTF-8 or not a prediction
            return unreadable(self.provider, exc, transient=True)
        if isinstance(exc, ValueError):  # the SDK refused our arguments: nothing was sent
            return from_status(self.provider, 400, str(exc))
        return exc

    def _json_object(self, response: httpx.Response) -> dict[str, Any]:
        """The reply's JSON object; any other reply is an unreadable-reply `ProviderError`
        (counted by the poll loop), never an AttributeError further on."""
        try:
            data = response.json()
        except ValueError as exc:
            raise unreadable(self.provider, exc, transient=False) from None
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise ProviderError(f"{self.provider}: the reply is JSON but not an object ({kind})")
        return data


class ReplicateProvider:
    """What every Replicate-backed provider shares: one prediction per job, through
    `ReplicateJobs`; a subclass says only which model it runs and with which inputs."""

    name = "replicate"
    can_cancel = True

    def __init__(self, settings: Settings, label: str) -> None:
        self.settings = settings
        self.jobs = ReplicateJobs(settings, label)

    def poll(self, operation_id: str) -> JobStatus:
        return self.jobs.poll(operation_id)

    def download(self, status: JobStatus) -> bytes:
        return self.jobs.download(status)

    def cancel(self, operation_id: str) -> bool:
        return self.jobs.cancel(operation_id)
