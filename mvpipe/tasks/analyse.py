"""Song analysis, on queue `mvpipe.media`: `mvpipe.prepare_song` when a project is created,
`mvpipe.analyse_song` as a run's first planning step when no timeline is recorded yet.

Song analysis is the heaviest step in memory, so it runs where media work runs (workers that
consume `mvpipe.media` warm librosa when they start). `prepare_song` analyses a new project's
song ahead of any run, so that its estimate is exact and its first run plans at once (a run
started meanwhile waits for it); it records the timeline and nothing else, and whatever stops
it leaves the analysis to the run.
`analyse_song` keeps the run's task id: once the timeline is recorded it replaces itself with
`mvpipe.plan_scenes`, which plans on the slots.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import task_failure

from mvpipe import hooks
from mvpipe.deps import Context, get_context
from mvpipe.errors import Conflict, InvalidInput, NotFound, UnexpectedError
from mvpipe.messaging.dispatch import PLAN_SCENES, PREPARE_SONG
from mvpipe.models import is_project_id
from mvpipe.pipeline.lost_tries import carried_on
from mvpipe.pipeline.plan import fail_planning
from mvpipe.pipeline.song_analysis import analyse_for_run, end_analysis_mark, end_lost_analysis_mark
from mvpipe.pipeline.timeline import analysis_on_its_way, ensure_timeline
from mvpipe.providers.classify import describe
from mvpipe.settings import get_settings
from mvpipe.tasks.base import OUTAGE_ERRORS, MvpipeTask, app, checked_ids, log_unexpected
from mvpipe.tasks.failures import OUTAGES

log = logging.getLogger("mvpipe.tasks.analyse")


@app.task(
    base=MvpipeTask,
    bind=True,
    name=PREPARE_SONG,
    ignore_result=True,
    # A process lost in the analysis (its memory) is not tried again: the run's planning
    # analyses the song, its attempts counted, where a requeued message would loop.
    reject_on_worker_lost=False,
)
def prepare_song(self: MvpipeTask, project_id: str, outages: int = 0) -> Any:
    """Analyse a new project's song and record its timeline: sent by `create_project`.

    Only a project that is still waiting for it: gone, planned, analysed already, or with a
    run that does not wait for it (this analysis was not marked, or is past
    `MVPIPE_ANALYSIS_WAIT_SECONDS`: the run's planning analyses the song) it does nothing. An
    analysis that fails (the song cannot be analysed, a crash) is logged, scrubbed, and not
    retried: nothing is recorded, and the run's planning meets it again and fails saying why.
    An outage is retried. Its end, whatever the outcome, clears the mark that has estimates
    and a run's planning wait for it.
    """
    checked_ids(project_id, run_id=None, run_optional=True, counts={OUTAGES: outages})
    kwargs = {OUTAGES: outages}
    try:
        outcome = _prepare(project_id)
    except OUTAGE_ERRORS as exc:
        raise self.outage_retry(exc, kwargs) from None  # still on its way: its mark stays
    end_analysis_mark(project_id)
    return {"project_id": project_id, "outcome": outcome}


def _prepare(project_id: str) -> str:
    """`prepare_song`'s work, and its outcome in a few words; an outage raises."""
    try:
        ctx = get_context()  # its first use in a process reaches the store: an outage retries
        project = ctx.projects.get(project_id)
        if project.planned or project.song_key is None or project.timeline_key is not None:
            return "nothing to analyse"
        if project.active_run_id is not None and not analysis_on_its_way(ctx, project_id):
            return "left to its run"
        hooks.reached("before_analysis")
        ensure_timeline(ctx, project)
    except NotFound:
        return "no such project"
    except (InvalidInput, Conflict) as exc:
        log.warning("song analysis of project %s: %s", project_id, describe(exc))
        return "not analysed"
    except OUTAGE_ERRORS:
        raise
    except Exception as exc:  # a crash of the analysis (librosa, a bug): scrubbed, once
        log_unexpected(log, f"prepare_song {project_id}", exc)
        return "not analysed"
    return "analysed"


@task_failure.connect
def _analysis_lost(sender: object = None, args: Any = None, **_: object) -> None:
    """A pool process lost in `prepare_song` (its memory) ends it with no return, and it is
    not delivered again: Celery says so in the worker's own process, which clears the mark."""
    project_id = args[0] if getattr(sender, "name", None) == PREPARE_SONG and args else None
    if is_project_id(project_id):
        end_lost_analysis_mark(get_settings(), project_id)


@app.task(base=MvpipeTask, bind=True, name="mvpipe.analyse_song")
def analyse_song(
    self: MvpipeTask,
    project_id: str,
    run_id: str,
    only: list[int] | None = None,
    outages: int = 0,
    taken_over: str | None = None,
) -> Any:
    """`taken_over`: this run took over that stale one (its analysis's lost tries go on
    counting: `LostTries`)."""
    counts = {OUTAGES: outages}
    checked_ids(project_id, run_id=run_id, only=only, taken_over=taken_over, counts=counts)
    kwargs = {"only": only, OUTAGES: outages, "taken_over": taken_over}
    crash: Exception | None = None
    try:
        ctx = get_context()  # its first use in a process reaches the store: an outage retries
        project = ctx.projects.get(project_id)
        if project.active_run_id != run_id:
            return {"project_id": project_id, "outcome": "run no longer active"}
        ctx.board.touch_run(run_id, ctx.settings.run_stale_seconds)  # the run is alive: analysing
        # False: its process was lost too often
        again = self.redelivered()
        if not analyse_for_run(ctx, project, run_id, redelivered=again, taken_over=taken_over):
            return {"project_id": project_id, "outcome": "planning failed"}
    except (InvalidInput, Conflict) as exc:
        why = f"song analysis: {exc}"
        self.record_give_up(
            kwargs,
            lambda ctx: fail_planning(ctx, project_id, run_id, why),
            log,
            f"song analysis of project {project_id}",
        )
        return {"project_id": project_id, "outcome": "planning failed"}
    except OUTAGE_ERRORS as exc:
        raise self.outage_retry(exc, kwargs) from None
    except Exception as exc:  # a crash of the analysis (librosa, a bug): scrubbed, counted
        log_unexpected(log, f"analyse_song {project_id}", exc)
        crash = exc
    if crash is not None:
        try:  # built again: the crash may have been the context's own
            return _crashed(self, get_context(), project_id, run_id, crash, kwargs)
        except OUTAGE_ERRORS as exc:
            raise self.outage_retry(exc, kwargs) from None
    after = {"only": only, **carried_on(taken_over)}
    raise self.replace(app.signature(PLAN_SCENES, args=[project_id, run_id], kwargs=after))


def _crashed(
    task: MvpipeTask,
    ctx: Context,
    project_id: str,
    run_id: str,
    exc: Exception,
    kwargs: dict[str, Any],
) -> Any:
    """As planning does: each crash is a planning attempt counted on METADATA (across retries
    and takeovers: the count of unexpected errors here, apart from the outages `kwargs`
    carries), retried after a backoff until `MVPIPE_MAX_ATTEMPTS`, then the planning fails
    with the scrubbed error in `lastError` instead of the run going stale and being analysed
    again forever."""
    error = f"song analysis: {describe(exc)}"
    attempt = ctx.projects.count_planning_attempt(project_id, run_id)
    if attempt is None:
        return {"project_id": project_id, "outcome": "run no longer active"}
    if attempt < ctx.settings.max_attempts:
        ctx.projects.note_planning_error(project_id, run_id, error)
        raise task.backoff_retry(UnexpectedError, exc, kwargs, attempt)
    fail_planning(ctx, project_id, run_id, f"gave up after {attempt} attempts: {error}")
    return {"project_id": project_id, "outcome": "planning failed"}
