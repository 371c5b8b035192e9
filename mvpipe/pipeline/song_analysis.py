"""A song's analysis as the tasks run it: a run's (its tries lost with their process counted),
and the mark that has estimates wait for a new project's intake analysis."""

from __future__ import annotations

import logging

from mvpipe import hooks
from mvpipe.deps import Context, get_context
from mvpipe.pipeline.lost_tries import LostTooOften, LostTries
from mvpipe.pipeline.plan import fail_planning
from mvpipe.pipeline.timeline import ensure_timeline
from mvpipe.providers.classify import describe
from mvpipe.settings import Settings
from mvpipe.store.records import ProjectRecord
from mvpipe.store.runboard import RunBoard, quick_redis

log = logging.getLogger("mvpipe.song_analysis")


def analyse_for_run(
    ctx: Context,
    project: ProjectRecord,
    run_id: str,
    *,
    redelivered: bool,
    taken_over: str | None = None,
) -> bool:
    """Analyse the song of `run_id`'s project (`ensure_timeline`), this try counted first:
    False when planning failed instead, the tries before it lost with their process as often
    as planning may be tried (a song whose analysis kills its worker would otherwise be
    delivered again forever, the run alive and the project generating). An error raised is
    the caller's to count (a planning attempt), not counted here again. `redelivered`: the
    task's message was delivered again; `taken_over`: the run `run_id` took over (`LostTries`)."""
    job = f"analysis:{project.project_id}"
    tries = LostTries(ctx, job, run_id=run_id, redelivered=redelivered, taken_over=taken_over)

    def analyse() -> None:
        hooks.reached("before_analysis")
        ensure_timeline(ctx, project)

    try:
        tries.attempt(analyse, "the song's analysis")
    except LostTooOften as exc:
        fail_planning(ctx, project.project_id, run_id, str(exc))
        return False
    return True


def end_analysis_mark(project_id: str, board: RunBoard | None = None) -> None:
    """Clear the mark `create_project` set: an estimate no longer waits for this analysis.
    Not cleared (Redis away), it lapses (`ANALYSIS_MARK_SECONDS`): logged, never raised."""
    try:
        (board or get_context().quick_board).analysis_ended(project_id)
    except Exception as exc:
        log.warning("song analysis of project %s ended, unmarked: %s", project_id, describe(exc))


def end_lost_analysis_mark(settings: Settings, project_id: str) -> None:
    """`end_analysis_mark` from a worker's own process, whose intake analysis was lost with its
    pool process: on a client of its own (building the whole context there would reach the
    store), closed at once, that never holds the worker long."""
    client = quick_redis(settings.mvpipe_redis_url)
    try:
        end_analysis_mark(project_id, RunBoard(client))
    finally:
        client.close()
