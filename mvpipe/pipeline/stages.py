"""A scene's stages as data: what each one makes, whether it is paid, where it runs, when needed.

A scene's outputs are filled in order and each stage runs only while its output is missing (the
key is the source of truth, per stage). `generate_scene` runs the first missing needed stage,
then the next, until every needed output is recorded (docs/DESIGN.md *Scene stages*):

    generate  paid   originalVideoClipS3Key   providerOperationId / attempts     mvpipe.video
    cut       free   workingVideoClipS3Key    (deterministic: cut from the original)  mvpipe.media
    lipsync   paid   lipSyncedVideoClipS3Key  lipSyncOperationId / lipSyncAttempts  mvpipe.video

Paid stages all run through the one lease/operation machine (`pipeline.operation.PaidOperation`),
parameterized by their `StageFields` and their provider; free stages have their own runner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mvpipe import durations
from mvpipe.models import SceneStatus
from mvpipe.settings import Settings
from mvpipe.store.clips import StoredObject
from mvpipe.store.records import SceneRecord
from mvpipe.store.scenes import LIP_SYNCED, ORIGINAL, WORKING, StageFields

#: Queues (declared in celeryconfig): provider calls and polls, and media work.
VIDEO_QUEUE = "mvpipe.video"
MEDIA_QUEUE = "mvpipe.media"


#: What one job of a paid stage costs (micro-dollars): settings, the project's provider, scene.
Pricing = Callable[[Settings, str, SceneRecord], int]


def _always(_: SceneRecord) -> bool:
    return True


def _when_lip_synced(scene: SceneRecord) -> bool:
    return scene.lip_sync and not completed_before_lip_sync(scene)


def completed_before_lip_sync(scene: SceneRecord) -> bool:
    """A scene marked `lipSync` that was completed before the lip-sync stage existed: completed,
    with neither a lip-synced clip nor a lip-sync operation. Since the stage exists, only the
    lip-sync's own write completes a marked scene (recording both), so no other scene looks
    like this. It counts as completed without lip-sync (its final video stands); a regeneration
    or a lost output reopens it, and then it is lip-synced."""
    return (
        scene.status == SceneStatus.COMPLETED
        and scene.completed_at is not None
        and scene.lip_synced_clip_key is None
        and scene.lip_sync_operation_id is None
    )


def slot_seconds(scene: SceneRecord) -> float:
    """The length of the scene's slot in the song (its clip's length when it has none)."""
    if scene.start_seconds is None or scene.end_seconds is None:
        return float(scene.duration_seconds)
    return scene.end_seconds - scene.start_seconds


def generation_price(settings: Settings, provider: str, scene: SceneRecord) -> int:
    """The project's video model, per second of the clip it makes: `durationSeconds`, or the
    length the submit refits a scene stored at another to (`durations.made_seconds`)."""
    seconds = durations.made_seconds(scene.duration_seconds, settings.durations_for(provider))
    return settings.video_price_micros(provider, seconds)


def lipsync_price(settings: Settings, provider: str, scene: SceneRecord) -> int:
    """The lip-sync model, per second of the slot it syncs (whatever the video provider)."""
    return settings.lipsync_price_micros(slot_seconds(scene))


@dataclass(frozen=True)
class Stage:
    """One step of a scene's production."""

    #: the name in logs, task progress and the `stage` a carried operation belongs to
    name: str
    #: the scene fields it owns: its output, and for a paid stage its operation and attempts
    fields: StageFields
    #: where it runs: a `generate_scene` chain moves to this queue before running it
    queue: str
    #: whether this scene needs the stage at all
    needed: Callable[[SceneRecord], bool]
    #: the output a paid stage is made from, which its claim requires (lip-sync: the cut)
    requires: str | None = None
    #: a paid stage's price of one job, reserved by its claim (invariant 9)
    price: Pricing | None = None

    @property
    def paid(self) -> bool:
        return self.fields.operation is not None

    def price_micros(self, settings: Settings, provider: str, scene: SceneRecord) -> int:
        """One job of this stage for `scene`; a `ConfigurationError` when it has no price."""
        return 0 if self.price is None else self.price(settings, provider, scene)

    def output(self, scene: SceneRecord) -> str | None:
        key: str | None = scene.value(self.fields.output)
        return key

    def operation(self, scene: SceneRecord) -> str | None:
        op: str | None = scene.value(self.fields.operation) if self.paid else None
        return op


GENERATE = Stage("generate", ORIGINAL, VIDEO_QUEUE, _always, price=generation_price)
CUT = Stage("cut", WORKING, MEDIA_QUEUE, _always)
#: Lip-sync: a paid stage run by the same machine as `GENERATE` (`pipeline.lipsync.LipSync`),
#: only for scenes marked `lipSync`; it is made from the working clip.
LIPSYNC = Stage(
    "lipsync",
    LIP_SYNCED,
    VIDEO_QUEUE,
    _when_lip_synced,
    requires=WORKING.output,
    price=lipsync_price,
)

#: The stages every scene goes through, in order.
STAGES: tuple[Stage, ...] = (GENERATE, CUT, LIPSYNC)
BY_NAME = {stage.name: stage for stage in STAGES}


def needed_stages(scene: SceneRecord) -> list[Stage]:
    return [stage for stage in STAGES if stage.needed(scene)]


def next_stage(scene: SceneRecord) -> Stage | None:
    """The first stage the scene needs whose output is not recorded; None when it has them all."""
    return next((s for s in needed_stages(scene) if s.output(scene) is None), None)


def never_last(stage: Stage) -> bool:
    """Whether a stage every scene needs comes after `stage` (the cut after generation): its
    output's write never completes a scene, whatever the scene holds."""
    later = STAGES[STAGES.index(stage) + 1 :] if stage in STAGES else ()
    return any(s.needed is _always for s in later)


def is_last(stage: Stage, scene: SceneRecord) -> bool:
    """Whether no stage after `stage` is needed: its output's write completes the scene."""
    later = STAGES[STAGES.index(stage) + 1 :] if stage in STAGES else ()
    return not any(s.needed(scene) for s in later)


def lost_output(
    scene: SceneRecord, objects: dict[str, StoredObject] | None = None
) -> tuple[Stage, str | None] | None:
    """The first needed output that is not recorded (key None), or whose object is not among
    `objects` (its key); None when every needed output is there."""
    for stage in needed_stages(scene):
        key = stage.output(scene)
        if key is None or (objects is not None and key not in objects):
            return stage, key
    return None
