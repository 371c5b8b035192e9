"""`mvpipe.analyse_song`: a song project's first planning step, on queue `mvpipe.media`.

Song analysis is the heaviest step in memory, so it runs where media work runs (workers that
consume `mvpipe.media` warm librosa when they start). It keeps the run's task id: once the
timeline is recorded it replaces itself with `mvpipe.plan_scenes`, which plans on the slots.
"""

from __future__ import annotations

from typing import Any

import redis

from mvpipe.deps import get_context
from mvpipe.errors import Conflict, InvalidInput, StoreUnavailable
from mvpipe.messaging.dispatch import PLAN_SCENES
from mvpipe.pipeline.plan import fail_planning
from mvpipe.pipeline.timeline import ensure_timeline
from mvpipe.tasks.base import MvpipeTask, app, checked_ids


@app.task(base=MvpipeTask, bind=True, name="mvpipe.analyse_song")
def analyse_song(
    self: MvpipeTask,
    project_id: str,
    run_id: str,
    only: list[int] | None = None,
    outages: int = 0,
) -> Any:
    checked_ids(project_id, run_id=run_id, only=only)
    ctx = get_context()
    try:
        project = ctx.projects.get(project_id)
        if project.active_run_id != run_id:
            return {"project_id": project_id, "outcome": "run no longer active"}
        ctx.board.touch_run(run_id, ctx.settings.run_stale_seconds)  # the run is alive: analysing
        ensure_timeline(ctx, project)
    except (InvalidInput, Conflict) as exc:
        fail_planning(ctx, project_id, run_id, f"song analysis: {exc}")
        return {"project_id": project_id, "outcome": "planning failed"}
    except (StoreUnavailable, redis.RedisError) as exc:
        raise self.outage_retry(exc, {"only": only}, outages) from None
    raise self.replace(app.signature(PLAN_SCENES, args=[project_id, run_id], kwargs={"only": only}))
