"""What a project will still cost: the price of every paid stage it is missing.

A planned project's estimate is exact: each scene's generation at its `durationSeconds`, each
lip-sync at its slot's length, for every stage without an output or a job already paid for.
An unplanned project is estimated from what decides its scenes: the requested scene count at
the default scene length, or the song's slots once the song is analysed (a worker analyses it
when the project is created, or else the run's planning does, as DESIGN.md places it; an
estimate only reads). Before that, the song's length is cut evenly into the provider's longest
clips: about, since the beats decide the slots (a 180 s song makes 23 Veo scenes so, where its
beats make 24 or 25), and said so (`awaiting_analysis`, while the analysis sent at the
project's creation is queued or running): asked again a moment later, it is exact; with no
analysis on its way, a run analyses the song. Lip-sync, before the planner chose the scenes,
is priced as if every scene were lip-synced: about until a run plans the project (on no
budget it pays for nothing).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from mvpipe.deps import Context
from mvpipe.durations import DEFAULT_SCENE_SECONDS, capped_seconds, clip_seconds
from mvpipe.errors import InvalidInput
from mvpipe.media.slots import Slot
from mvpipe.models import SceneStatus
from mvpipe.pipeline.stages import GENERATE, LIPSYNC
from mvpipe.pipeline.timeline import analysis_on_its_way, load_timeline, song_slots
from mvpipe.settings import Settings
from mvpipe.states import lease_expired
from mvpipe.store.budget import BudgetStore
from mvpipe.store.records import ProjectRecord, ProjectState, SceneRecord


@dataclass(frozen=True)
class Estimate:
    micros: int
    #: paid jobs still to come
    jobs: int
    #: False while the planner has still to decide the scenes (or which are lip-synced)
    exact: bool
    #: the song decides the scenes, its analysis is not recorded yet (the even cut) and is
    #: queued or running now
    awaiting_analysis: bool = False


def set_budget(ctx: Context, project_id: str, budget_micros: int | None) -> None:
    """Set (None: remove) the project's budget; never below what is committed (`InvalidInput`)."""
    BudgetStore(ctx.table).set_budget(project_id, budget_micros)


def estimate_project(ctx: Context, project_id: str, sequence: int | None = None) -> Estimate:
    """`estimate` of the stored project; a `sequence` it does not have is `InvalidInput`."""
    state = ctx.projects.load(project_id)
    if sequence is not None and state.scene(sequence) is None:
        raise InvalidInput(f"project {project_id} has no scene {sequence}")
    return estimate(ctx, state, sequence=sequence)


def estimate(ctx: Context, state: ProjectState, *, sequence: int | None = None) -> Estimate:
    """The price of what a run would still pay for; with `sequence`, of regenerating that
    scene (all its paid stages, whatever it has now)."""
    settings, project = ctx.settings, state.project
    if sequence is not None:
        scene = state.scene(sequence)
        scenes = [] if scene is None else [scene]
        return planned_estimate(settings, project.provider, scenes, regenerate=True)
    if project.planned:
        return planned_estimate(settings, project.provider, state.scenes)
    if project.song_key is None:
        seconds = capped_seconds(DEFAULT_SCENE_SECONDS, settings.durations_for(project.provider))
        count = project.requested_scene_count
        return Estimate(
            count * settings.video_price_micros(project.provider, seconds), count, exact=False
        )
    timeline = load_timeline(ctx, project)
    if timeline is not None:
        slots = song_slots(settings, project, timeline)
        lengths = [slot.seconds for slot in slots]
        synced = [synced_seconds(slot) for slot in slots]
    else:
        lengths = synced = _even_slots(settings, project)
    allowed = settings.durations_for(project.provider)
    micros = sum(  # a song's scenes fill its slots: asked, so priced, without audio
        settings.video_price_micros(project.provider, clip_seconds(s, allowed), with_audio=False)
        for s in lengths
    )
    jobs = len(lengths)
    if project.lip_sync:
        micros += sum(settings.lipsync_price_micros(s) for s in synced)
        jobs *= 2
    # planning makes one scene per slot at the clip that covers it: exact on the song's slots,
    # but for the lip-sync the planner has still to choose
    return Estimate(
        micros,
        jobs,
        exact=timeline is not None and not project.lip_sync,
        # Redis unreadable: "about" all the same, the estimate never fails for it
        awaiting_analysis=timeline is None and analysis_on_its_way(ctx, project.project_id),
    )


def planned_estimate(
    settings: Settings,
    provider: str,
    scenes: Iterable[SceneRecord],
    *,
    regenerate: bool = False,
    now: float | None = None,
) -> Estimate:
    """Pure: the paid stages these scenes still miss (all of them, to `regenerate`)."""
    micros = jobs = 0
    now = time.time() if now is None else now
    for scene in scenes:
        if regenerate or _generation_missing(scene, now):
            micros += GENERATE.price_micros(settings, provider, scene)
            jobs += 1
        if scene.lip_sync and (regenerate or (LIPSYNC.needed(scene) and _lipsync_missing(scene))):
            micros += LIPSYNC.price_micros(settings, provider, scene)
            jobs += 1
    return Estimate(micros, jobs, exact=True)


def _generation_missing(scene: SceneRecord, now: float) -> bool:
    """No clip and no job paid for (a live lease has its job reserved already); a failed
    scene's job, if any, is spent: a user's run pays for a new one, unless the job was kept
    (`_kept`): that run polls it again."""
    if scene.status == SceneStatus.FAILED:
        return scene.clip_key is None and not _kept(scene, scene.operation_id)
    if scene.clip_key is not None or scene.operation_id is not None:
        return False
    return scene.status != SceneStatus.PROCESSING or lease_expired(scene.lease_expires_at, now)


def _lipsync_missing(scene: SceneRecord) -> bool:
    if scene.status == SceneStatus.FAILED:
        return scene.lip_synced_clip_key is None and not _kept(scene, scene.lip_sync_operation_id)
    return scene.lip_synced_clip_key is None and scene.lip_sync_operation_id is None


def _kept(scene: SceneRecord, operation_id: str | None) -> bool:
    """A failed scene's stage job kept (`operation_kept`, its polls were refused): maybe paid,
    never seen to fail, so a user's next run polls it (`retry_failed`) and pays nothing."""
    return scene.operation_kept and operation_id is not None


def _even_slots(settings: Settings, project: ProjectRecord) -> list[float]:
    """Before analysis: the song cut evenly into the fewest slots the provider can fill."""
    song = project.song_seconds or 0.0
    longest = settings.slot_max_seconds_for(project.provider)
    count = max(1, math.ceil(song / longest - 1e-9))
    return [song / count] * count


def synced_seconds(slot: Slot) -> float:
    """The length a lip-sync of `slot` is priced at in a run: its scene keeps the slot's start
    and end (`plan.place_in_slots`) and the run takes their difference (`cut.slot_seconds`),
    which can differ from `slot.seconds` in the last bit, and so by a micro-dollar."""
    return slot.end_seconds - slot.start_seconds
