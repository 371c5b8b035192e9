"""Replicate lip-sync (default `sync/lipsync-2`): the scene's working clip and the slot's audio
go as short-lived presigned URLs the model fetches itself, so no media passes through a worker
twice; the output is fetched (by the paid machine's poll) as soon as the prediction succeeds."""

from __future__ import annotations

from typing import Any

from mvpipe.providers.base import LipSyncRequest
from mvpipe.providers.replicate_jobs import ReplicateProvider
from mvpipe.settings import Settings

#: How the model fits audio and video of different lengths: the slot's audio and its working
#: clip are the same length, so anything past the shorter one is cut off, never looped.
DEFAULT_SYNC_MODE = "cut_off"


class ReplicateLipSyncProvider(ReplicateProvider):
    def __init__(self, settings: Settings) -> None:
        # its errors say which paid stage failed: "replicate lip-sync: ..."
        super().__init__(settings, "replicate lip-sync")

    def build_input(self, request: LipSyncRequest) -> dict[str, Any]:
        """`MVPIPE_LIPSYNC_INPUT` may set `sync_mode` and the model's other inputs; the media
        inputs are always the request's (settings validation refuses them)."""
        return {
            "sync_mode": DEFAULT_SYNC_MODE,
            **self.settings.lipsync_input,
            "video": request.video_url,
            "audio": request.audio_url,
        }

    def submit(self, request: LipSyncRequest) -> str:
        return self.jobs.create(self.settings.lipsync_model, self.build_input(request))
