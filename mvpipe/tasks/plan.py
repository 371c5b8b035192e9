"""`mvpipe.plan_scenes`: a run's root task (its task id is the run id).

Plans the project if it is not planned yet, then replaces itself with the run's chord: one
`generate_scene` per scene lacking a clip, then `finalize_project`. A song project whose song
has no timeline yet first becomes `mvpipe.analyse_song` (queue `mvpipe.media`), which comes back
here once the timeline is recorded; while the analysis its project's creation sent is on its way,
it looks again in a moment instead (holding no worker process meanwhile): at once at first, less
often once the analysis is late (`timeline.look_again`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import chord, group

from mvpipe.deps import get_context, get_settings
from mvpipe.errors import (
    ConfigurationError,
    InvalidInput,
    MvpipeError,
    NotFound,
    ProviderError,
    TransientProviderError,
)
from mvpipe.pipeline.lost_tries import carried_on
from mvpipe.pipeline.plan import AnalyseFirst, AwaitAnalysis, fail_planning, plan_run
from mvpipe.pipeline.timeline import look_again
from mvpipe.providers.classify import describe
from mvpipe.tasks.analyse import analyse_song
from mvpipe.tasks.base import OUTAGE_ERRORS, WAITING_PRIORITY, MvpipeTask, app, checked_ids
from mvpipe.tasks.failures import OUTAGES
from mvpipe.tasks.finalize import finalize_project
from mvpipe.tasks.generate import generate_scene

log = logging.getLogger("mvpipe.tasks.plan")


@app.task(base=MvpipeTask, bind=True, name="mvpipe.plan_scenes")
def plan_scenes(
    self: MvpipeTask,
    project_id: str,
    run_id: str,
    only: list[int] | None = None,
    planner_failures: int = 0,
    outages: int = 0,
    taken_over: str | None = None,
    log_after: int = 0,
) -> Any:
    """`taken_over`: reconcile's takeover of that stale run started this one: every message of
    the run says so, and its media work's lost tries go on counting (`LostTries`).
    `log_after`: while it waits for its song's analysis, the analysis's age from which its wait
    is logged again (`look_again`)."""
    counts = {"planner_failures": planner_failures, OUTAGES: outages, "log_after": log_after}
    checked_ids(project_id, run_id=run_id, only=only, taken_over=taken_over, counts=counts)
    kwargs = {"only": only, **counts, "taken_over": taken_over}
    after = carried_on(taken_over)
    try:
        ctx = get_context()  # its first use in a process reaches the store: an outage retries
        plan = plan_run(ctx, project_id, run_id, only)
    except NotFound:
        return {"project_id": project_id, "outcome": "project not found"}
    except OUTAGE_ERRORS as exc:
        raise self.outage_retry(exc, kwargs) from None
    except Exception as exc:
        # Transient provider errors and crashes are retried; plan_run counts every planner call
        # on METADATA (across takeovers) and this execution chain stops at the same limit.
        retry = isinstance(exc, TransientProviderError) or not isinstance(
            exc, (ProviderError, ConfigurationError, InvalidInput)
        )
        if retry and planner_failures + 1 < get_settings().max_attempts:
            if not isinstance(exc, ProviderError):
                log.error(
                    "planning crashed project=%s run=%s: %s", project_id, run_id, describe(exc)
                )
            failures = planner_failures + 1  # plan_run counts (and limits) the attempts
            carried = {**kwargs, "planner_failures": failures}
            raise self.backoff_retry(MvpipeError, exc, carried, failures) from None
        error = str(exc) if isinstance(exc, MvpipeError) else describe(exc)
        self.record_give_up(
            kwargs,
            lambda ctx: fail_planning(ctx, project_id, run_id, error),
            log,
            f"planning of project {project_id}",
        )
        return {"project_id": project_id, "outcome": "planning failed"}
    if plan is None:
        return {"project_id": project_id, "outcome": "run no longer active"}
    if isinstance(plan, AwaitAnalysis):
        look = look_again(
            plan.sent_ago, log_after, run_stale_seconds=ctx.settings.run_stale_seconds
        )
        if look.logs:
            log.info(
                "run %s of project %s waits for its song's analysis (sent %.1f s ago; the next"
                " look in %.2f s)",
                run_id,
                project_id,
                plan.sent_ago,
                look.pause,
            )
        progress = {"project_id": project_id, "run_id": run_id}
        carried = {**kwargs, "log_after": look.log_after}
        raise self.rerun_later("WAITING_FOR_ANALYSIS", look.pause, carried, progress)
    if isinstance(plan, AnalyseFirst):
        raise self.replace(analyse_song.si(project_id, run_id, only, **after))
    if not plan.sequences:
        raise self.replace(finalize_project.si(None, project_id, run_id, [], **after))
    try:  # the callback reads them there: each header message carries it
        ctx.board.keep_run_scenes(run_id, plan.sequences)
    except OUTAGE_ERRORS as exc:
        raise self.outage_retry(exc, kwargs) from None
    # A scene beyond the quota can only join the line: its message goes behind any other
    # project's first claims, so a small project started a moment later is in the line before
    # this one's waiters are read (and gets the first freed slots), not after all of them.
    # Only a scene that asks for a slot: one holding a paid job (after a takeover) or needing
    # only free work goes first.
    waiting = plan.waiting(ctx.settings.concurrency_for(plan.provider))
    header = group(
        generate_scene.si(project_id, sequence, run_id, plan.provider, **after).set(
            priority=WAITING_PRIORITY if sequence in waiting else 0
        )
        for sequence in plan.sequences
    )
    body = finalize_project.s(project_id, run_id, None, scenes_on_board=True, **after)
    raise self.replace(chord(header, body))
