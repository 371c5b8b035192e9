"""`mvpipe.analyse_song`: a song project's first planning step, on queue `mvpipe.media`.

Song analysis is the heaviest step in memory, so it runs where media work runs (workers that
consume `mvpipe.media` warm librosa when they start). It keeps the run's task id: once the
timeline is recorded it replaces itself with `mvpipe.plan_scenes`, which plans on the slots.
"""

from __future__ import annotations

import logging
from typing import Any

import redis

from mvpipe import hooks
from mvpipe.deps import Context, get_context
from mvpipe.errors import Conflict, InvalidInput, MvpipeError, StoreUnavailable
from mvpipe.messaging.dispatch import PLAN_SCENES
from mvpipe.pipeline.plan import fail_planning
from mvpipe.pipeline.timeline import ensure_timeline
from mvpipe.providers.classify import describe
from mvpipe.states import backoff_seconds
from mvpipe.tasks.base import MvpipeTask, app, checked_ids, log_unexpected

log = logging.getLogger("mvpipe.tasks.analyse")


@app.task(base=MvpipeTask, bind=True, name="mvpipe.analyse_song")
def analyse_song(
    self: MvpipeTask,
    project_id: str,
    run_id: str,
    only: list[int] | None = None,
    outages: int = 0,
) -> Any:
    checked_ids(project_id, run_id=run_id, only=only, counts={"outages": outages})
    ctx = get_context()
    crash: Exception | None = None
    try:
        project = ctx.projects.get(project_id)
        if project.active_run_id != run_id:
            return {"project_id": project_id, "outcome": "run no longer active"}
        ctx.board.touch_run(run_id, ctx.settings.run_stale_seconds)  # the run is alive: analysing
        hooks.reached("before_analysis")
        ensure_timeline(ctx, project)
    except (InvalidInput, Conflict) as exc:
        fail_planning(ctx, project_id, run_id, f"song analysis: {exc}")
        return {"project_id": project_id, "outcome": "planning failed"}
    except (StoreUnavailable, redis.RedisError) as exc:
        raise self.outage_retry(exc, {"only": only}, outages) from None
    except Exception as exc:  # a crash of the analysis (librosa, a bug): scrubbed, counted
        log_unexpected(log, f"analyse_song {project_id}", exc)
        crash = exc
    if crash is not None:
        try:
            return _crashed(self, ctx, project_id, run_id, crash, {"only": only})
        except (StoreUnavailable, redis.RedisError) as exc:
            raise self.outage_retry(exc, {"only": only}, outages) from None
    raise self.replace(app.signature(PLAN_SCENES, args=[project_id, run_id], kwargs={"only": only}))


def _crashed(
    task: MvpipeTask,
    ctx: Context,
    project_id: str,
    run_id: str,
    exc: Exception,
    kwargs: dict[str, Any],
) -> Any:
    """As planning does: each crash is a planning attempt counted on METADATA (across retries
    and takeovers), retried after a backoff until `MVPIPE_MAX_ATTEMPTS`, then the planning
    fails with the scrubbed error in `lastError` instead of the run going stale and being
    analysed again forever."""
    error = f"song analysis: {describe(exc)}"
    attempt = ctx.projects.count_planning_attempt(project_id, run_id)
    if attempt is None:
        return {"project_id": project_id, "outcome": "run no longer active"}
    s = ctx.settings
    if attempt < s.max_attempts:
        ctx.projects.note_planning_error(project_id, run_id, error)
        countdown = backoff_seconds(attempt, base=s.backoff_base, cap=s.backoff_max)
        raise task.scrubbed_retry(MvpipeError(error), countdown, kwargs)
    fail_planning(ctx, project_id, run_id, f"gave up after {attempt} attempts: {error}")
    return {"project_id": project_id, "outcome": "planning failed"}
