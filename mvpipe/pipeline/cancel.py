"""Cancel: end whatever run is active, then stop the jobs the provider can stop.

A takeover can replace the run between our read and our release; cancel then acts on the new
run too, until no run is active. A job's operation is dropped only when the provider confirms
the cancel (it returned True): an unconfirmed one stays, so a later run resumes the paid job.
"""

from __future__ import annotations

import logging

import redis

from mvpipe.deps import Context
from mvpipe.errors import BrokerUnavailable, ConfigurationError, Conflict, ProviderError
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.pipeline.finalize import settle_until_stable
from mvpipe.pipeline.generate import stage_provider
from mvpipe.pipeline.stages import next_stage
from mvpipe.pipeline.steps import Dispatcher
from mvpipe.providers.classify import describe
from mvpipe.providers.limiter import job_member

log = logging.getLogger("mvpipe.cancel")

#: Runs one cancel will end before giving up (each a takeover racing it).
MAX_RUNS = 20


def cancel_project(ctx: Context, dispatcher: Dispatcher, project_id: str) -> None:
    """Release the run (queued work exits, no new claim succeeds), cancel provider jobs where
    the provider allows it (those scenes go back to `pending`), and settle the project."""
    cancel_runs(ctx, project_id)
    cancel_operations(ctx, dispatcher, project_id)
    settle_until_stable(ctx, project_id)


def cancel_runs(ctx: Context, project_id: str) -> None:
    """Mark every active run cancelled and release it, until none is active."""
    for _ in range(MAX_RUNS):
        state = ctx.projects.load(project_id)
        run = state.project.active_run_id
        if run is None:
            return
        ctx.board.mark_cancelled(run)
        # Released as if every scene were final: a cancelled run owns nothing any more.
        ctx.projects.settle(
            project_id,
            observed_run=run,
            counters=state.counters,
            status=ProjectStatus.PENDING,
            release=True,
        )
    raise Conflict(f"project {project_id} kept starting runs while being cancelled; cancel again")


def cancel_operations(ctx: Context, dispatcher: Dispatcher, project_id: str) -> None:
    """Each scene's running paid job (its generation, or its lip-sync once its clips are made):
    stopped where its provider confirms it; the scene then waits for that stage again, with
    the outputs of earlier stages kept."""
    state = ctx.projects.load(project_id)
    for scene in state.scenes:
        stage = next_stage(scene)
        operation_id = stage.operation(scene) if stage is not None else None
        if stage is None or scene.status != SceneStatus.PROCESSING:
            continue
        if not operation_id:
            if stage.paid and scene.lease_token is None:
                # Between stages, waiting for a paid one no run will pay for now: `pending`
                # (a live lease is a submitter's, whose record meets the released run).
                ctx.scenes.reset_waiting(project_id, scene.sequence, stage=stage.fields)
            continue
        try:
            provider = stage_provider(ctx, stage, state.project.provider)
            confirmed = provider.can_cancel and provider.cancel(operation_id)
        except (ConfigurationError, ProviderError) as exc:
            # (a provider that cannot be built here, or that failed to answer): not confirmed
            # stopped, so the job is kept and a later run resumes it; the other scenes go on
            log.warning("could not cancel operation %s: %s", operation_id, describe(exc))
            continue
        if not confirmed:
            log.info("operation %s not cancelled by the provider; kept", operation_id)
            continue
        ctx.scenes.reset_cancelled(
            project_id, scene.sequence, operation_id=operation_id, stage=stage.fields
        )
        member = job_member(project_id, scene.sequence, stage.name, operation_id)
        try:
            woken = ctx.limiter.release(provider.pool, member, limit=provider.limit)
        except redis.RedisError as exc:
            raise BrokerUnavailable.because(exc) from exc
        dispatcher.wake(woken)
