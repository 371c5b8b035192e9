"""`mvpipe.plan_scenes`: a run's root task (its task id is the run id).

Plans the project if it is not planned yet, then replaces itself with the run's chord: one
`generate_scene` per scene lacking a clip, then `finalize_project`. A song project whose song
has no timeline yet first becomes `mvpipe.analyse_song` (queue `mvpipe.media`), which comes back
here once the timeline is recorded.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import chord, group
from celery.exceptions import Reject

from mvpipe.deps import get_context
from mvpipe.errors import (
    ConfigurationError,
    InvalidInput,
    ProviderError,
    StoreUnavailable,
    TransientProviderError,
)
from mvpipe.pipeline.plan import AnalyseFirst, fail_planning, plan_run
from mvpipe.states import backoff_seconds
from mvpipe.tasks.analyse import analyse_song
from mvpipe.tasks.base import MvpipeTask, app, checked_ids
from mvpipe.tasks.finalize import finalize_project
from mvpipe.tasks.generate import generate_scene


@app.task(base=MvpipeTask, bind=True, name="mvpipe.plan_scenes")
def plan_scenes(
    self: MvpipeTask,
    project_id: str,
    run_id: str,
    only: list[int] | None = None,
    planner_failures: int = 0,
    outages: int = 0,
) -> Any:
    try:
        checked_ids(project_id)
    except InvalidInput as exc:
        raise Reject(str(exc), requeue=False) from None
    ctx = get_context()
    kwargs = {"only": only, "planner_failures": planner_failures, "outages": outages}
    try:
        plan = plan_run(ctx, project_id, run_id, only)
    except TransientProviderError as exc:
        if planner_failures + 1 >= ctx.settings.max_attempts:
            fail_planning(ctx, project_id, run_id, str(exc))
            return {"project_id": project_id, "outcome": "planning failed"}
        countdown = backoff_seconds(
            planner_failures + 1, base=ctx.settings.backoff_base, cap=ctx.settings.backoff_max
        )
        raise self.retry(
            exc=exc,
            countdown=countdown,
            kwargs={**kwargs, "planner_failures": planner_failures + 1},
        ) from exc
    except (ProviderError, ConfigurationError, InvalidInput) as exc:
        fail_planning(ctx, project_id, run_id, str(exc))
        return {"project_id": project_id, "outcome": "planning failed"}
    except (StoreUnavailable, redis.RedisError) as exc:
        raise self.outage_retry(exc, kwargs, outages) from exc
    if plan is None:
        return {"project_id": project_id, "outcome": "run no longer active"}
    if isinstance(plan, AnalyseFirst):
        raise self.replace(analyse_song.si(project_id, run_id, only))
    if not plan.sequences:
        raise self.replace(finalize_project.si(None, project_id, run_id, []))
    header = group(
        generate_scene.si(project_id, sequence, run_id, plan.provider)
        for sequence in plan.sequences
    )
    raise self.replace(chord(header, finalize_project.s(project_id, run_id, plan.sequences)))
