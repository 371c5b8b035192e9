"""Replicate predictions: created through the SDK (never retried), polled with a plain,
short-timeout GET so one poll never holds a worker slot through the SDK's retry layer."""

from __future__ import annotations

import os
from typing import Any

import httpx

from mvpipe.errors import PermanentProviderError, ProviderError
from mvpipe.providers.base import JobState, JobStatus, VideoRequest, provider_seconds
from mvpipe.providers.classify import (
    download,
    from_status,
    from_transport,
    require_env,
    scrub,
)
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


class ReplicateVideoProvider:
    name = "replicate"
    can_cancel = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_url = (
            settings.replicate_base_url or os.environ.get("REPLICATE_BASE_URL") or DEFAULT_BASE_URL
        ).rstrip("/")
        self._client: Any = None

    def _token(self) -> str:
        return require_env("REPLICATE_API_TOKEN", purpose="Replicate")

    @property
    def client(self) -> Any:
        if self._client is None:
            import replicate

            self._client = replicate.Client(
                api_token=self._token(),
                base_url=self.base_url,
                timeout=httpx.Timeout(self.settings.provider_timeout_seconds),
            )
        return self._client

    def build_input(self, request: VideoRequest) -> dict[str, Any]:
        fields: dict[str, Any] = {**self.settings.replicate_input, "prompt": request.prompt}
        if request.negative_prompt:
            fields["negative_prompt"] = request.negative_prompt
        if self.settings.replicate_duration_input:
            allowed = self.settings.durations_for(self.name)
            seconds = provider_seconds(request.duration_seconds, allowed)
            fields[self.settings.replicate_duration_input] = seconds
        return fields

    def submit(self, request: VideoRequest) -> str:
        model, _, version = self.settings.replicate_model.partition(":")
        fields = self.build_input(request)
        try:
            if version:
                prediction = self.client.predictions.create(version=version, input=fields)
            else:
                prediction = self.client.predictions.create(model=model, input=fields)
        except Exception as exc:
            raise self._translate(exc) from None
        return str(prediction.id)

    def poll(self, operation_id: str) -> JobStatus:
        body = self._get_json(f"{self.base_url}/v1/predictions/{operation_id}")
        state = STATUSES.get(str(body.get("status")))
        if state is None:
            return JobStatus(JobState.RUNNING)  # an unknown, newer status: keep polling
        if state == JobState.FAILED:
            error = body.get("error") or "prediction failed without a message"
            return JobStatus(state, error=scrub(f"replicate: {error}"))
        if state == JobState.CANCELLED:
            return JobStatus(state, error=f"replicate: prediction {body.get('status')}")
        if state == JobState.SUCCEEDED:
            output = body.get("output")
            url = output[0] if isinstance(output, list) and output else output
            if not isinstance(url, str):
                return JobStatus(
                    JobState.FAILED, error="replicate: succeeded without an output URL"
                )
            return JobStatus(state, url=url)
        return JobStatus(state)

    def download(self, status: JobStatus) -> bytes:
        if status.url is None:
            raise PermanentProviderError("replicate: no output to download")
        return download(self.name, status.url, self.settings.provider_timeout_seconds)

    def cancel(self, operation_id: str) -> bool:
        try:
            response = httpx.post(
                f"{self.base_url}/v1/predictions/{operation_id}/cancel",
                headers=self._headers(),
                timeout=self.settings.provider_timeout_seconds,
            )
        except httpx.HTTPError:
            return False
        if response.status_code >= 300:
            return False
        try:  # a finished prediction answers 200 with its final status: not stopped by us
            return bool(_json_object(response).get("status") == "canceled")
        except ProviderError:
            return False

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token()}"}

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = httpx.get(
                url, headers=self._headers(), timeout=self.settings.provider_timeout_seconds
            )
        except Exception as exc:
            raise from_transport(self.name, exc) or exc from exc
        if response.status_code != 200:
            raise from_status(self.name, response.status_code, response.text[:500])
        return _json_object(response)

    def _translate(self, exc: Exception) -> Exception:
        from replicate.exceptions import ReplicateError

        if isinstance(exc, ReplicateError):
            return from_status(self.name, exc.status, exc.detail or exc.title or str(exc))
        return from_transport(self.name, exc) or exc


def _json_object(response: httpx.Response) -> dict[str, Any]:
    """The reply's JSON object; any other reply is a `ProviderError` (counted by the poll
    loop like other unreadable replies), never an AttributeError further on."""
    try:
        data = response.json()
    except ValueError:
        raise ProviderError("replicate: the reply is not JSON") from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ProviderError(f"replicate: the reply is JSON but not an object ({kind})")
    return data
