"""Replicate text-to-video: the scene's prompt, negative prompt and length as model inputs."""

from __future__ import annotations

from typing import Any

from mvpipe.durations import asked_seconds
from mvpipe.providers.base import VideoRequest
from mvpipe.providers.replicate_jobs import ReplicateProvider
from mvpipe.settings import Settings


class ReplicateVideoProvider(ReplicateProvider):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, "replicate")

    def build_input(self, request: VideoRequest) -> dict[str, Any]:
        fields: dict[str, Any] = {**self.settings.replicate_input, "prompt": request.prompt}
        if request.negative_prompt:
            fields["negative_prompt"] = request.negative_prompt
        # Without a duration input the model picks the length: settings allow that only for a
        # model priced per job, whose price does not depend on it.
        if self.settings.replicate_duration_input:
            allowed = self.settings.durations_for(self.name)
            seconds = asked_seconds(self.name, request.duration_seconds, allowed)
            fields[self.settings.replicate_duration_input] = seconds
        return fields

    def submit(self, request: VideoRequest) -> str:
        return self.jobs.create(self.settings.replicate_model, self.build_input(request))
