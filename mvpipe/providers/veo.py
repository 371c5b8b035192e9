"""Veo through google-genai (Vertex mode): long-running operations, resumed by name; the video
comes back inline, or from GCS when `MVPIPE_VEO_OUTPUT_GCS_URI` is set."""

from __future__ import annotations

from typing import Any

from mvpipe.durations import asked_seconds
from mvpipe.errors import PermanentProviderError
from mvpipe.providers import gcs
from mvpipe.providers.base import JobState, JobStatus, VideoRequest
from mvpipe.providers.classify import scrub
from mvpipe.providers.genai_client import GenaiUser, call_sdk, vertex_client
from mvpipe.providers.outputs import fetch_output


class VeoVideoProvider(GenaiUser):
    name = "veo"
    #: The SDK exposes no cancel for video operations: a cancelled run keeps the operation id,
    #: so a later run resumes the job that was already paid for.
    can_cancel = False

    def make_client(self) -> Any:
        return vertex_client(self.settings)

    def submit(self, request: VideoRequest) -> str:
        from google.genai import types

        allowed = self.settings.durations_for(self.name)
        seconds = asked_seconds(self.name, request.duration_seconds, allowed)
        config = types.GenerateVideosConfig(
            number_of_videos=1,
            duration_seconds=seconds,
            aspect_ratio=self.settings.veo_aspect_ratio,
            negative_prompt=request.negative_prompt,
            # None leaves the model's default; False spares the audio a song replaces (and its cost)
            generate_audio=None if request.with_audio else False,
            # None: the video comes back inline; a gs:// URI: Veo writes it there
            output_gcs_uri=self.settings.veo_output_gcs_uri,
        )
        source = types.GenerateVideosSource(prompt=request.prompt)
        operation = call_sdk(
            self.name,
            lambda: self.client.models.generate_videos(
                model=self.settings.veo_model, source=source, config=config
            ),
        )
        if not operation.name:
            raise PermanentProviderError("veo: the create answer carried no operation name")
        return str(operation.name)

    def poll(self, operation_id: str) -> JobStatus:
        from google.genai import types

        operation = call_sdk(
            self.name,
            lambda: self.client.operations.get(
                types.GenerateVideosOperation(name=operation_id)  # type: ignore[call-arg]
            ),
            polling=True,
        )
        if not operation.done:
            return JobStatus(JobState.RUNNING)
        if operation.error:
            message = operation.error.get("message") or str(operation.error)
            return JobStatus(JobState.FAILED, error=f"veo: {message}")
        response = operation.response
        videos = (response.generated_videos if response else None) or []
        if not videos or videos[0].video is None:
            # A safety block is a finished operation without videos, not an error: permanent.
            reasons = (response.rai_media_filtered_reasons if response else None) or []
            detail = "; ".join(reasons) or "no video in the finished operation"
            return JobStatus(JobState.FAILED, error=f"veo: blocked by safety filters: {detail}")
        video = videos[0].video
        if video.video_bytes:
            return JobStatus(JobState.SUCCEEDED, video=bytes(video.video_bytes))
        return JobStatus(JobState.SUCCEEDED, url=video.uri)

    def download(self, status: JobStatus) -> bytes:
        if status.video is not None:
            return status.video
        if status.url and status.url.startswith("gs://"):
            return gcs.fetch(self.name, status.url, self.settings)
        if not status.url or not status.url.startswith(("http://", "https://")):
            location = scrub(repr(status.url))
            raise PermanentProviderError(f"veo: the finished video has no location: {location}")
        return fetch_output(self.name, status.url, self.settings)

    def cancel(self, operation_id: str) -> bool:
        """Veo's long-running generation has no cancel in google-genai: the job runs on and is
        paid for, so its poll must still collect the video (False: not stopped)."""
        return False
