"""The lip-sync stage's provider for the paid machine: the scene's working clip plus the song's
audio for its slot → a lip-sync job → its output normalized like the cut.

Inputs go to the provider as short-lived presigned GET URLs (no media through a worker twice):
the working clip as recorded, and the slot's audio, cut from the song once and stored under the
scene's prefix at a key made from the slot (`audio-{inputsHash}.wav`), so a duplicate or a retry
finds it made. The job's output is cut to exactly the slot's frames in the output format, so it
joins the other scenes' clips without re-encoding.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from mvpipe.deps import Context
from mvpipe.errors import ConfigurationError, InvalidInput, PermanentProviderError
from mvpipe.media.audio import slot_wav
from mvpipe.media.cut import cut_clip
from mvpipe.pipeline.cut import output_format, slot_frames, slot_seconds
from mvpipe.providers.base import JobStatus, LipSyncProvider, LipSyncRequest
from mvpipe.providers.classify import describe
from mvpipe.store.clips import ObjectMissing, slot_audio_key
from mvpipe.store.records import SceneRecord

#: The slot audio's sample rate: speech models want at least 16 kHz; a slot stays small.
AUDIO_RATE = 24000
#: Bumped when the slot audio's making changes (part of its key).
AUDIO_VERSION = 1


def audio_key(scene: SceneRecord) -> str | None:
    """Where the slot's audio of a lip-synced scene is stored; None for a scene without a slot.
    Made from the slot alone: a project's song never changes."""
    if scene.start_seconds is None or scene.end_seconds is None:
        return None
    text = f"{scene.start_seconds:.6f}|{scene.end_seconds:.6f}|{AUDIO_RATE}|v{AUDIO_VERSION}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return slot_audio_key(scene.project_id, scene.sequence, digest)


class LipSync:
    """The lip-sync stage's provider: `MVPIPE_LIPSYNC_PROVIDER`, in its own quota pool.

    The provider client is built on first use: one that cannot be built (a missing SDK or key)
    is a `ConfigurationError` at submit, which fails the scene with that message."""

    #: the output is cut to the scene's slot
    reads_scene = True

    def __init__(self, ctx: Context) -> None:
        s = ctx.settings
        self.ctx = ctx
        name = s.lipsync_provider
        self.pool = f"lipsync:{name}"
        self.limit = s.lipsync_concurrency
        self.poll_seconds = s.poll_seconds_for(name)
        self.liveness_seconds = s.liveness_seconds(name)

    @classmethod
    def for_project(cls, ctx: Context, video_provider: str) -> LipSync:
        """The lip-sync stage's provider: the same whatever the project's video provider."""
        return cls(ctx)

    @property
    def provider(self) -> LipSyncProvider:
        return self.ctx.lipsync_provider()

    @property
    def can_cancel(self) -> bool:
        """False too when the provider cannot be reached from here: its job is then kept."""
        try:
            return self.provider.can_cancel
        except ConfigurationError:
            return False

    def prepare(self, scene: SceneRecord) -> None:
        """Store the slot's audio before the quota slot and the claim: no slot or lease waits on
        decoding the song, and a song that is gone fails the stage without taking either."""
        key = audio_key(scene)
        if key is None or scene.start_seconds is None or scene.end_seconds is None:
            raise InvalidInput(f"scene {scene.sequence} has no slot of a song to lip-sync to")
        clips = self.ctx.clips
        if clips.exists(key):
            return
        song = self.ctx.projects.get(scene.project_id).song_key
        if song is None:
            raise InvalidInput(f"project {scene.project_id} has no song to lip-sync to")
        try:
            data = clips.read(song)
        except ObjectMissing:  # a lost song never comes back: the stage fails with the reason
            raise InvalidInput(
                f"the song of project {scene.project_id} is gone from the store ({song})"
            ) from None
        wav = slot_wav(data, scene.start_seconds, scene.end_seconds, AUDIO_RATE)
        clips.put(key, wav, content_type="audio/wav")

    def submit(self, scene: SceneRecord) -> str:
        working, audio = scene.working_clip_key, audio_key(scene)
        if working is None or audio is None:
            raise InvalidInput("a lip-sync needs the working clip and the slot's audio")
        clips, expires = self.ctx.clips, self.ctx.settings.lipsync_url_seconds
        return self.provider.submit(
            LipSyncRequest(
                scene.project_id,
                scene.sequence,
                video_url=clips.presigned_url(working, expires),
                audio_url=clips.presigned_url(audio, expires),
                seconds=slot_seconds(scene),
            )
        )

    def poll(self, operation_id: str) -> JobStatus:
        return self.provider.poll(operation_id)

    def output(self, status: JobStatus, scene: SceneRecord | None) -> bytes:
        """The job's video cut to exactly `scene`'s slot frames in the output format; a video
        that cannot be read is the job's permanent failure."""
        if scene is None:
            raise ValueError("a lip-sync output is cut to its scene's slot: read the scene")
        video = self.provider.download(status)
        fmt = output_format(self.ctx.settings)
        with tempfile.TemporaryDirectory(prefix="mvpipe-lipsync-") as tmp:
            src, dst = Path(tmp) / "lipsync.mp4", Path(tmp) / "normalized.mp4"
            src.write_bytes(video)
            try:
                cut_clip(src, dst, frames=slot_frames(scene, fmt.fps), fmt=fmt)
            except InvalidInput as exc:
                raise PermanentProviderError(
                    f"the lip-synced clip could not be normalized: {describe(exc)}"
                ) from None
            return dst.read_bytes()

    def cancel(self, operation_id: str) -> bool:
        return self.provider.cancel(operation_id)
