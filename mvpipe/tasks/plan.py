"""`mvpipe.plan_scenes`: a run's root task (its task id is the run id).

Plans the project if it is not planned yet, then replaces itself with the run's chord: one
`generate_scene` per scene lacking a clip, then `finalize_project`. A song project whose song
has no timeline yet first becomes `mvpipe.analyse_song` (queue `mvpipe.media`), which comes back
here once the timeline is recorded.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import chord, group

from mvpipe.deps import get_context
from mvpipe.errors import (
    ConfigurationError,
    InvalidInput,
    MvpipeError,
    NotFound,
    ProviderError,
    StoreUnavailable,
    TransientProviderError,
)
from mvpipe.pipeline.plan import AnalyseFirst, fail_planning, plan_run
from mvpipe.providers.classify import describe
from mvpipe.states import backoff_seconds
from mvpipe.tasks.analyse import analyse_song
from mvpipe.tasks.base import WAITING_PRIORITY, MvpipeTask, app, checked_ids
from mvpipe.tasks.finalize import finalize_project
from mvpipe.tasks.generate import generate_scene

log = logging.getLogger("mvpipe.tasks.plan")


class PlanTask(MvpipeTask):
    def retry_planning(self, exc: Exception, kwargs: dict[str, Any], failures: int) -> Exception:
        """Plan again after a backoff; the attempts are counted (and limited) by plan_run."""
        s = get_context().settings
        countdown = backoff_seconds(failures + 1, base=s.backoff_base, cap=s.backoff_max)
        cause = MvpipeError(describe(exc))  # the raw error may hold a secret
        return self.scrubbed_retry(cause, countdown, {**kwargs, "planner_failures": failures + 1})


@app.task(base=PlanTask, bind=True, name="mvpipe.plan_scenes")
def plan_scenes(
    self: PlanTask,
    project_id: str,
    run_id: str,
    only: list[int] | None = None,
    planner_failures: int = 0,
    outages: int = 0,
) -> Any:
    counts = {"planner_failures": planner_failures, "outages": outages}
    checked_ids(project_id, run_id=run_id, only=only, counts=counts)
    ctx = get_context()
    kwargs = {"only": only, **counts}
    try:
        plan = plan_run(ctx, project_id, run_id, only)
    except NotFound:
        return {"project_id": project_id, "outcome": "project not found"}
    except (StoreUnavailable, redis.RedisError) as exc:
        raise self.outage_retry(exc, kwargs, outages) from None
    except Exception as exc:
        # Transient provider errors and crashes are retried; plan_run counts every planner call
        # on METADATA (across takeovers) and this execution chain stops at the same limit.
        retry = isinstance(exc, TransientProviderError) or not isinstance(
            exc, (ProviderError, ConfigurationError, InvalidInput)
        )
        if retry and planner_failures + 1 < ctx.settings.max_attempts:
            if not isinstance(exc, ProviderError):
                log.error(
                    "planning crashed project=%s run=%s: %s", project_id, run_id, describe(exc)
                )
            raise self.retry_planning(exc, kwargs, planner_failures) from None
        error = str(exc) if isinstance(exc, MvpipeError) else describe(exc)
        fail_planning(ctx, project_id, run_id, error)
        return {"project_id": project_id, "outcome": "planning failed"}
    if plan is None:
        return {"project_id": project_id, "outcome": "run no longer active"}
    if isinstance(plan, AnalyseFirst):
        raise self.replace(analyse_song.si(project_id, run_id, only))
    if not plan.sequences:
        raise self.replace(finalize_project.si(None, project_id, run_id, []))
    try:  # the callback reads them there: each header message carries it
        ctx.board.keep_run_scenes(run_id, plan.sequences)
    except (StoreUnavailable, redis.RedisError) as exc:
        raise self.outage_retry(exc, kwargs, outages) from None
    # A scene beyond the quota can only join the line: its message goes behind any other
    # project's first claims, so a small project started a moment later is in the line before
    # this one's waiters are read (and gets the first freed slots), not after all of them.
    # Only a scene that asks for a slot: one holding a paid job (after a takeover) or needing
    # only free work goes first.
    waiting = plan.waiting(ctx.settings.concurrency_for(plan.provider))
    header = group(
        generate_scene.si(project_id, sequence, run_id, plan.provider).set(
            priority=WAITING_PRIORITY if sequence in waiting else 0
        )
        for sequence in plan.sequences
    )
    body = finalize_project.s(project_id, run_id, None, scenes_on_board=True)
    raise self.replace(chord(header, body))
