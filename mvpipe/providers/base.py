"""What a planner and a video provider must do. Errors are typed (see mvpipe.errors):
the pipeline's retry policy keys off `TransientProviderError` vs `PermanentProviderError`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from mvpipe.models import SceneSpec


@dataclass(frozen=True)
class SlotBrief:
    """One slot of the song a scene fills: where it is, which section, which lyrics fall in it."""

    start_seconds: float
    end_seconds: float
    section: str
    lyrics: tuple[str, ...] = ()


@dataclass(frozen=True)
class Brief:
    """What a planner is asked. With a song, `slots` holds one entry per scene to write
    (`scene_count == len(slots)`), and `lip_sync` says whether scenes may be marked for lip-sync."""

    project_id: str
    title: str
    concept: str
    scene_count: int
    slots: tuple[SlotBrief, ...] = ()
    lip_sync: bool = False


@dataclass(frozen=True)
class VideoRequest:
    """One clip to make. `with_audio` is False for a song's scene: the song replaces the
    clip's sound, so a provider that charges for audio is asked for none."""

    project_id: str
    sequence: int
    prompt: str
    negative_prompt: str | None
    duration_seconds: int
    with_audio: bool = True


@dataclass(frozen=True)
class LipSyncRequest:
    """One clip to lip-sync: the scene's working clip and the song's audio for its slot, as
    short-lived URLs the provider fetches itself, so no media passes through a worker twice."""

    project_id: str
    sequence: int
    video_url: str
    audio_url: str
    #: the slot's length: the output is normalized back to exactly this many seconds of frames
    seconds: float


class JobState(StrEnum):
    RUNNING = "running"  #: the provider is still working
    SUCCEEDED = "succeeded"  #: a video is ready (`video` bytes or `url`)
    FAILED = "failed"  #: the job ended without a video; `error` says why (permanent)
    CANCELLED = "cancelled"  #: the job was cancelled and produced nothing


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    video: bytes | None = None
    url: str | None = None
    error: str | None = None
    #: a running job's expected seconds to its end, when the provider knows it: the next poll
    #: comes then instead of on the fixed grid (fewer polls, and no grid delay at the end)
    eta_seconds: float | None = None

    @property
    def finished(self) -> bool:
        return self.state != JobState.RUNNING


class Planner(Protocol):
    name: str

    def plan(self, brief: Brief) -> list[SceneSpec]:
        """Exactly `brief.scene_count` scene specs (one per slot, in order), or a typed
        ProviderError. The pipeline, not the planner, sets a slot scene's times and duration."""
        ...


class VideoProvider(Protocol):
    name: str
    #: whether `cancel` really stops (and stops billing) a job
    can_cancel: bool

    def submit(self, request: VideoRequest) -> str:
        """Start one paid job; returns its operation id. Never retried internally."""
        ...

    def poll(self, operation_id: str) -> JobStatus: ...

    def download(self, status: JobStatus) -> bytes:
        """The finished job's MP4 bytes (fetched from `status.url` when not inline)."""
        ...

    def cancel(self, operation_id: str) -> bool:
        """Ask the provider to stop the job; True when it is cancelled (or already over)."""
        ...


class LipSyncProvider(Protocol):
    """A lip-sync model: the same job shape as a video provider, on a lip-sync request."""

    name: str
    can_cancel: bool

    def submit(self, request: LipSyncRequest) -> str:
        """Start one paid lip-sync job; returns its operation id. Never retried internally."""
        ...

    def poll(self, operation_id: str) -> JobStatus: ...

    def download(self, status: JobStatus) -> bytes:
        """The finished job's MP4 bytes (fetched from `status.url` when not inline)."""
        ...

    def cancel(self, operation_id: str) -> bool:
        """True only when the provider confirms the job stopped before it made a video."""
        ...
