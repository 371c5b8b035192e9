"""Planning: the first step of a run. Writes the scenes, then marks the project planned."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from mvpipe.deps import Context
from mvpipe.errors import ConfigurationError, PermanentProviderError, ProviderError
from mvpipe.models import SceneSpec, SceneStatus
from mvpipe.providers.base import Brief

log = logging.getLogger("mvpipe.plan")


@dataclass(frozen=True)
class RunPlan:
    """The scenes a run must generate (those with no clip that have not failed)."""

    provider: str
    sequences: list[int]


def plan_run(
    ctx: Context, project_id: str, run_id: str, only: list[int] | None = None
) -> RunPlan | None:
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
            brief = Brief(
                project_id,
                state.project.title,
                state.project.concept,
                state.project.requested_scene_count,
            )
            specs = _call_planner(ctx, project_id, run_id, brief)
            if len(specs) != brief.scene_count:
                raise PermanentProviderError(
                    f"planner returned {len(specs)} scenes, expected {brief.scene_count}"
                )
            token = uuid.uuid4().hex
            if not ctx.projects.save_plan(project_id, run_id, specs, token=token):
                return None
            log.info("planned project=%s scenes=%d run=%s", project_id, len(specs), run_id)
        finally:
            ctx.board.unlock_planning(project_id)
        state = ctx.projects.load(project_id)
    wanted = set(only) if only is not None else None
    sequences = [
        s.sequence
        for s in state.scenes
        if s.clip_key is None
        and s.status != SceneStatus.FAILED
        and (wanted is None or s.sequence in wanted)
    ]
    return RunPlan(state.project.provider, sequences)


def _call_planner(ctx: Context, project_id: str, run_id: str, brief: Brief) -> list[SceneSpec]:
    """The planner's answer; a failure worth retrying is noted first, for `lastError`."""
    try:
        return ctx.planner().plan(brief)
    except (PermanentProviderError, ConfigurationError):
        raise  # the caller fails the planning with this message at once
    except Exception as exc:
        error = str(exc) if isinstance(exc, ProviderError) else f"{type(exc).__name__}: {exc}"
        ctx.projects.note_planning_error(project_id, run_id, error)
        raise


def fail_planning(ctx: Context, project_id: str, run_id: str, error: str) -> None:
    ctx.projects.fail_planning(project_id, run_id, error)
    log.warning("planning failed project=%s run=%s: %s", project_id, run_id, error)
