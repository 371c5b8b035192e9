"""A scene's stages as data: what each one makes, whether it is paid, where it runs, when needed.

A scene's outputs are filled in order and each stage runs only while its output is missing (the
key is the source of truth, per stage). `generate_scene` runs the first missing needed stage,
then the next, until every needed output is recorded (docs/DESIGN.md *Scene stages*):

    generate  paid   originalVideoClipS3Key   providerOperationId / attempts     mvpipe.video
    cut       free   workingVideoClipS3Key    (deterministic: cut from the original)  mvpipe.media
    lipsync   paid   lipSyncedVideoClipS3Key  lipSyncOperationId / lipSyncAttempts  mvpipe.video

Paid stages all run through the one lease/operation machine (`pipeline.operation.PaidOperation`),
parameterized by their `Stage` (fields, price, provider, output key, crash points); free stages
by their own `runner`. Nothing outside this module asks which stage it holds: a new stage is a
new entry in `STAGES` (tests/test_stages_as_data.py checks both).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from mvpipe import durations
from mvpipe.deps import Context
from mvpipe.models import SceneStatus
from mvpipe.pipeline.cut import CutRunner, remade_key, slot_seconds
from mvpipe.pipeline.lipsync import LipSync, audio_key
from mvpipe.pipeline.stage_provider import StageProvider, VideoGeneration, with_audio
from mvpipe.queues import MEDIA_QUEUE, VIDEO_QUEUE
from mvpipe.settings import Settings
from mvpipe.states import lease_expired
from mvpipe.store.clips import StoredObject, clip_key, lipsync_key
from mvpipe.store.records import SceneRecord
from mvpipe.store.stage_fields import LIP_SYNCED, ORIGINAL, WORKING, StageFields

if TYPE_CHECKING:
    from mvpipe.pipeline.execution import Execution
    from mvpipe.pipeline.steps import Step


#: What one job of a paid stage costs (micro-dollars): settings, the project's provider, scene.
Pricing = Callable[[Settings, str, SceneRecord], int]
#: A paid stage's provider for a project of the given video provider.
ProviderOf = Callable[[Context, str], StageProvider]
#: Where a paid stage's operation stores its output: (project, sequence, operation id) -> key.
OutputKey = Callable[[str, int, str], str]


class FreeRunner(Protocol):
    """A free stage's work for one scene in one execution."""

    def run(self, scene: SceneRecord) -> Step: ...


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


def generation_price(settings: Settings, provider: str, scene: SceneRecord) -> int:
    """The project's video model, per second of the clip it makes: `durationSeconds`, or the
    length the submit refits a scene stored at another to (`durations.made_seconds`); with
    audio or without, as the submit asks for it (`with_audio`)."""
    seconds = durations.made_seconds(scene.duration_seconds, settings.durations_for(provider))
    return settings.video_price_micros(provider, seconds, with_audio=with_audio(scene))


def lipsync_price(settings: Settings, provider: str, scene: SceneRecord) -> int:
    """The lip-sync model, per second of the slot it syncs (whatever the video provider)."""
    return settings.lipsync_price_micros(slot_seconds(scene))


def project_provider(_: Settings, provider: str) -> str:
    return provider


def lipsync_provider(settings: Settings, _: str) -> str:
    return settings.lipsync_provider


@dataclass(frozen=True)
class Stage:
    """One step of a scene's production: everything the loop, the paid machine and reconcile
    need to know about it, so none of them asks which stage it is."""

    #: the name in logs, task progress and the `stage` a carried operation belongs to
    name: str
    #: the scene fields it owns: its output, and for a paid stage its operation and attempts
    fields: StageFields
    #: where it runs: a `generate_scene` chain moves to this queue before running it
    queue: str
    #: whether this scene needs the stage at all
    needed: Callable[[SceneRecord], bool]
    #: the output it is made from: a paid stage's claim requires it (lip-sync: the cut), and
    #: its output's write is conditioned on it (the cut: the original)
    requires: str | None = None
    #: a paid stage's price of one job, reserved by its claim (invariant 9)
    price: Pricing | None = None
    #: a paid stage's provider (its job calls, quota pool and poll pace)
    provider: ProviderOf | None = None
    #: the name of the provider a paid stage calls for a project of the video provider given
    #: (its poll pace and liveness), known without building the provider
    provider_name: Callable[[Settings, str], str] = project_provider
    #: where a paid stage's operation stores its output, which reconcile's adoption looks for
    output_key: OutputKey | None = None
    #: the prefix of a paid stage's crash points (`{failpoints}after_submit`, ...): each
    #: stage's are its own, so a drill crashes exactly one of them (drills arm them by name)
    failpoints: str = ""
    #: whether a paid stage's job is `durationSeconds` long, a length its provider must make:
    #: a scene stored at another is refitted once at submit (`durations.made_seconds`)
    fits_duration: bool = False
    #: the key of an input a paid stage stores before its claim (lip-sync: the slot's audio),
    #: kept from garbage collection while the stage's output is missing
    input_key: Callable[[SceneRecord], str | None] | None = None
    #: a free stage's work (a paid stage runs in `PaidOperation`)
    runner: Callable[[Execution, Stage], FreeRunner] | None = None
    #: the key a free, deterministic stage would make its output at now (None when it cannot
    #: tell), kept from garbage collection; a lost output of such a stage is made again
    #: (in the current format) and leaves the later outputs made from it
    remade_key: Callable[[Stage, SceneRecord, Settings], str | None] | None = None
    #: the stages after this one, in order (`in_order` links them)
    later: tuple[Stage, ...] = field(default=(), repr=False, compare=False)

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

    def operation_output(self, project_id: str, sequence: int, operation_id: str) -> str:
        """Where this paid stage's operation `operation_id` stores its output."""
        if self.output_key is None:
            raise ValueError(f"stage {self.name} is not paid")
        return self.output_key(project_id, sequence, operation_id)

    @property
    def never_last(self) -> bool:
        """Whether a stage every scene needs comes after this one (the cut after generation):
        its output's write never completes a scene, whatever the scene holds."""
        return any(s.needed is _always for s in self.later)

    def is_last(self, scene: SceneRecord) -> bool:
        """Whether no stage after this one is needed: its output's write completes the scene."""
        return not any(s.needed(scene) for s in self.later)


def in_order(*stages: Stage) -> tuple[Stage, ...]:
    """The stages in the order a scene goes through them, each told the ones after it."""
    linked: tuple[Stage, ...] = ()
    for stage in reversed(stages):
        linked = (replace(stage, later=linked), *linked)
    return linked


#: The stages every scene goes through, in order. Lip-sync is a paid stage run by the same
#: machine as generation, only for scenes marked `lipSync`; it is made from the working clip.
STAGES: tuple[Stage, ...] = in_order(
    Stage(
        "generate",
        ORIGINAL,
        VIDEO_QUEUE,
        _always,
        price=generation_price,
        provider=VideoGeneration.for_project,
        output_key=clip_key,
        fits_duration=True,
    ),
    Stage(
        "cut",
        WORKING,
        MEDIA_QUEUE,
        _always,
        requires=ORIGINAL.output,
        runner=CutRunner,
        remade_key=remade_key,
    ),
    Stage(
        "lipsync",
        LIP_SYNCED,
        VIDEO_QUEUE,
        _when_lip_synced,
        requires=WORKING.output,
        price=lipsync_price,
        provider=LipSync.for_project,
        provider_name=lipsync_provider,
        output_key=lipsync_key,
        failpoints="lipsync_",
        input_key=audio_key,
    ),
)
GENERATE, CUT, LIPSYNC = STAGES
BY_NAME = {stage.name: stage for stage in STAGES}


def needed_stages(scene: SceneRecord) -> list[Stage]:
    return [stage for stage in STAGES if stage.needed(scene)]


def next_stage(scene: SceneRecord) -> Stage | None:
    """The first stage the scene needs whose output is not recorded; None when it has them all."""
    return next((s for s in needed_stages(scene) if s.output(scene) is None), None)


def submission_held(ctx: Context, scene: SceneRecord, now: float) -> bool:
    """Whether a submitter may hold the scene's paid stage: no job id of it is stored, and its
    lease is live (the submitter may be talking to the provider right now), or past its lease
    the claim's token is still there with the scene's owed mark alive (the mark a claim and an
    owed write leave, `RunBoard.scene_owed`: the submitter still owes the record of a job the
    provider may have accepted). A second claim then would pay for a second job; the scene is
    left to its submitter until the mark lapses (reconcile then frees it). A stage queued or
    polled marks the scene too, but not as owed: a chain's own queued step is not held by it.
    Redis is read in that last case only: a scene past its lease, claimed, its job id not
    stored."""
    stage = next_stage(scene) if scene.status == SceneStatus.PROCESSING else None
    if stage is None or not stage.paid or stage.operation(scene) is not None:
        return False
    if not lease_expired(scene.lease_expires_at, now):
        return True
    return bool(scene.lease_token) and ctx.board.scene_owed(scene.project_id, scene.sequence)


def claims_first_stage(scene: SceneRecord) -> bool:
    """Whether the scene's next step is the first stage's claim (generation, not submitted
    yet): a claim of a slot in its project's video provider's quota, which planning orders."""
    first = STAGES[0]
    return next_stage(scene) is first and first.operation(scene) is None


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
