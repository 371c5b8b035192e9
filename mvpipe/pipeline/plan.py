"""Planning: the first step of a run. Writes the scenes, then marks the project planned.

With a song, the scenes are the song's slots: the planner writes what each one shows (prompt,
negative prompt, lip-sync), while the slot's times and the clip length asked of the provider come
from the slots alone, never from the planner.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from mvpipe import durations
from mvpipe.deps import Context
from mvpipe.errors import ConfigurationError, PermanentProviderError
from mvpipe.media.slots import Slot
from mvpipe.models import SceneSpec, SceneStatus
from mvpipe.pipeline.brief import slot_briefs
from mvpipe.pipeline.stages import claims_first_stage, next_stage
from mvpipe.pipeline.timeline import analysis_waited_for, load_timeline, song_slots
from mvpipe.providers.base import Brief
from mvpipe.providers.classify import describe
from mvpipe.providers.fairness import waits_alone
from mvpipe.store.records import ProjectRecord

log = logging.getLogger("mvpipe.plan")


@dataclass(frozen=True)
class RunPlan:
    """The scenes a run must work on: those lacking an output they need that have not failed."""

    provider: str
    sequences: list[int]
    #: of those, the scenes whose generation is not submitted yet: they ask for a slot of the
    #: video provider's quota (the others hold its job already, or need other stages)
    claiming: frozenset[int] = frozenset()

    def waiting(self, limit: int) -> set[int]:
        """The claiming scenes that wait for a slot even with the whole quota of `limit` to
        this project (`fairness.waits_alone`, by their place among the claiming ones)."""
        claims = [s for s in self.sequences if s in self.claiming]
        return {s for position, s in enumerate(claims) if waits_alone(position, limit)}


@dataclass(frozen=True)
class AnalyseFirst:
    """The project's song has no timeline yet: analyse it (queue `mvpipe.media`), then plan."""


@dataclass(frozen=True)
class AwaitAnalysis:
    """The project's song has no timeline yet, and the analysis its creation sent is on its
    way (`analysis_on_its_way`): look again in a moment rather than analyse it a second time."""

    #: how long ago that analysis was sent (seconds)
    sent_ago: float


def plan_run(
    ctx: Context, project_id: str, run_id: str, only: list[int] | None = None
) -> RunPlan | AnalyseFirst | AwaitAnalysis | None:
    """Plan the project if it is not planned yet; None when the run is no longer active.

    Planner errors propagate: transient and unexpected ones are retried by the task, permanent
    ones end the run through `fail_planning`. Every planner call is counted on METADATA (across
    retries, redeliveries and takeovers): past `MVPIPE_MAX_ATTEMPTS` the planning fails, with
    the last error in `lastError`, instead of looping forever.
    """
    state = ctx.projects.load(project_id)
    if state.project.active_run_id != run_id:
        return None
    # Alive while it plans (a slow planner must not look like a dead run to reconcile).
    ctx.board.touch_run(run_id, ctx.settings.run_stale_seconds)
    if not state.project.planned:
        if state.project.song_key is not None and state.project.timeline_key is None:
            # An analysis that ends meanwhile, with its timeline, is found by `analyse_song`
            # (it reads the project again before analysing): never analysed twice for it.
            sent_ago = analysis_waited_for(ctx, project_id)
            if sent_ago is not None:
                return AwaitAnalysis(sent_ago)
            return AnalyseFirst()
        if not ctx.board.lock_planning(project_id, run_id, ctx.settings.lease_seconds):
            return None
        try:
            attempt = ctx.projects.count_planning_attempt(project_id, run_id)
            if attempt is None:
                return None
            if attempt > ctx.settings.max_attempts:
                why = state.project.last_error or "the planner never answered"
                fail_planning(
                    ctx, project_id, run_id, f"gave up after {attempt - 1} attempts: {why}"
                )
                return None
            specs = planned_specs(ctx, state.project, run_id)
            token = uuid.uuid4().hex
            if not ctx.projects.save_plan(project_id, run_id, specs, token=token):
                return None
            log.info("planned project=%s scenes=%d run=%s", project_id, len(specs), run_id)
        finally:
            ctx.board.unlock_planning(project_id, run_id)
        state = ctx.projects.load(project_id)
    wanted = set(only) if only is not None else None
    sequences = [
        s.sequence
        for s in state.scenes
        if next_stage(s) is not None
        and s.status != SceneStatus.FAILED
        and (wanted is None or s.sequence in wanted)
    ]
    claiming = frozenset(
        s.sequence for s in state.scenes if s.sequence in sequences and claims_first_stage(s)
    )
    return RunPlan(state.project.provider, sequences, claiming)


def planned_specs(ctx: Context, project: ProjectRecord, run_id: str) -> list[SceneSpec]:
    """The project's scene specs from the planner: one per slot with a song, else as asked."""
    if project.song_key is None:
        brief = Brief(
            project.project_id, project.title, project.concept, project.requested_scene_count
        )
        specs = _checked(_call_planner(ctx, project.project_id, run_id, brief), brief)
        # the planner does not know the provider: each length becomes one the provider makes
        return durations.planned(specs, ctx.settings.durations_for(project.provider))
    timeline = load_timeline(ctx, project)
    if timeline is None:
        raise RuntimeError(f"project {project.project_id} is planned before its song is analysed")
    slots = song_slots(ctx.settings, project, timeline)
    brief = Brief(
        project.project_id,
        project.title,
        project.concept,
        len(slots),
        slots=slot_briefs(slots, project.concept, slots[-1].end_seconds),
        lip_sync=project.lip_sync,
    )
    specs = _checked(_call_planner(ctx, project.project_id, run_id, brief), brief)
    allowed = ctx.settings.durations_for(project.provider)
    return place_in_slots(specs, slots, allowed, lip_sync=project.lip_sync)


def place_in_slots(
    specs: Sequence[SceneSpec], slots: Sequence[Slot], allowed: Sequence[int], *, lip_sync: bool
) -> list[SceneSpec]:
    """Each planned scene in its slot: the slot's times, the shortest allowed clip covering it,
    and lip-sync only where the project allows it."""
    return [
        SceneSpec(
            prompt=spec.prompt,
            negative_prompt=spec.negative_prompt,
            duration_seconds=durations.clip_seconds(slot.seconds, allowed),
            start_seconds=slot.start_seconds,
            end_seconds=slot.end_seconds,
            lip_sync=spec.lip_sync and lip_sync,
        )
        for spec, slot in zip(specs, slots, strict=True)
    ]


def _checked(specs: list[SceneSpec], brief: Brief) -> list[SceneSpec]:
    if len(specs) != brief.scene_count:
        raise PermanentProviderError(
            f"planner returned {len(specs)} scenes, expected {brief.scene_count}"
        )
    return specs


def _call_planner(ctx: Context, project_id: str, run_id: str, brief: Brief) -> list[SceneSpec]:
    """The planner's answer; a failure worth retrying is noted first, for `lastError`."""
    try:
        return ctx.planner().plan(brief)
    except (PermanentProviderError, ConfigurationError):
        raise  # the caller fails the planning with this message at once
    except Exception as exc:
        error = describe(exc)
        ctx.projects.note_planning_error(project_id, run_id, error)
        raise


def fail_planning(ctx: Context, project_id: str, run_id: str, error: str) -> None:
    ctx.projects.fail_planning(project_id, run_id, error)
    log.warning("planning failed project=%s run=%s: %s", project_id, run_id, error)
