"""What the paid machine asks of a stage's provider (`StageProvider`), and the generate
stage's (`VideoGeneration`; the lip-sync stage's is `pipeline.lipsync.LipSync`)."""

from __future__ import annotations

from typing import Protocol

from mvpipe.deps import Context
from mvpipe.models import SceneView
from mvpipe.providers.base import JobStatus, VideoProvider, VideoRequest
from mvpipe.settings import Settings
from mvpipe.store.records import SceneRecord


def with_audio(scene: SceneRecord | SceneView) -> bool:
    """Whether the scene's clip is asked with audio (and priced so). Only a song's scenes fill
    a slot; their sound comes from the song, so they are made without (and cost less)."""
    return scene.start_seconds is None


class StageProvider(Protocol):
    """What the paid machine needs from a stage's provider: its job calls, its quota pool and
    poll pace."""

    #: the quota pool (each provider its own)
    pool: str
    #: in-flight jobs allowed in the pool
    limit: int
    poll_seconds: float
    #: how long a poll's liveness mark lasts (longer than the longest gap between polls)
    liveness_seconds: float
    #: whether `output` needs the scene (lip-sync: its slot); one that does not, of a stage
    #: that never completes a scene, has its output recorded without reading the scene
    reads_scene: bool

    @property
    def can_cancel(self) -> bool:
        """Whether `cancel` really stops (and stops billing) a job."""
        ...

    def prepare(self, scene: SceneRecord) -> None:
        """Make the job's inputs (idempotent) before the quota slot and the claim: no slot or
        lease waits on them, and inputs that can never be made (an `InvalidInput`) fail the
        stage without taking either."""
        ...

    def submit(self, scene: SceneRecord) -> str: ...

    def poll(self, operation_id: str) -> JobStatus: ...

    def output(self, status: JobStatus, scene: SceneRecord | None) -> bytes:
        """The finished job's output for `scene` (as read by the poll; None when `reads_scene`
        is False) as it is stored (a `PermanentProviderError` when the job's result is
        unusable). Reads nothing from the store: an outage there is ours, not the provider's."""
        ...

    def cancel(self, operation_id: str) -> bool: ...


class VideoGeneration:
    """The generate stage's provider: the project's video model making the original clip."""

    #: the clip is the provider's video as it comes
    reads_scene = False

    def __init__(self, provider: VideoProvider, settings: Settings) -> None:
        self.provider = provider
        self.pool = provider.name
        self.limit = settings.concurrency_for(provider.name)
        self.poll_seconds = settings.poll_seconds_for(provider.name)
        self.liveness_seconds = settings.liveness_seconds(provider.name)
        self.can_cancel = provider.can_cancel

    @classmethod
    def for_project(cls, ctx: Context, video_provider: str) -> VideoGeneration:
        """The generate stage's provider for a project of `video_provider`."""
        return cls(ctx.video_provider(video_provider), ctx.settings)

    def prepare(self, scene: SceneRecord) -> None:
        """Nothing: a generation's request is the scene's own text."""

    def submit(self, scene: SceneRecord) -> str:
        return self.provider.submit(
            VideoRequest(
                scene.project_id,
                scene.sequence,
                scene.prompt,
                scene.negative_prompt,
                scene.duration_seconds,
                with_audio=with_audio(scene),
            )
        )

    def poll(self, operation_id: str) -> JobStatus:
        return self.provider.poll(operation_id)

    def output(self, status: JobStatus, scene: SceneRecord | None) -> bytes:
        return self.provider.download(status)

    def cancel(self, operation_id: str) -> bool:
        return self.provider.cancel(operation_id)
