"""Drills of the tasks that start and end a run meeting a store outage: the context's first use
in a fresh worker process reaches the store, and is retried as an outage like any other store
call; and outages are counted apart from errors nobody expected, so a long outage does not
spend the retries a bug is allowed."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest
import redis

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.deps import Context, get_context, reset_context
from mvpipe.devstack.failpoints import raised
from mvpipe.devstack.localstack import LocalStack
from mvpipe.devstack.outages import REFUSED
from mvpipe.messaging.dispatch import ASSEMBLE_PROJECT, MEDIA_QUEUE, PLAN_SCENES
from mvpipe.models import ProjectStatus
from mvpipe.tasks.assemble import MAX_UNEXPECTED as ASSEMBLE_UNEXPECTED
from tests.conftest import WORKERS_OUTPUT, Workers
from tests.drills.conftest import DRILL_SETTINGS
from tests.drills.test_give_ups import ANALYSE_SONG, QUICK_RETRIES
from tests.drills.test_owed_writes import outage
from tests.drills.test_unknown_outcomes import state_dir
from tests.helpers import assert_invariants, wait_for
from tests.songs import make_song
from tests.test_assemble import completed_song_project

StartWorkers = Callable[..., Workers]

#: Each store call gives up after a second of refusals.
SETTINGS = {**DRILL_SETTINGS, "store_retry_seconds": "1"}


def unanalysed(ctx: Context) -> str:
    """A song project whose song is not analysed yet: its run starts with the analysis."""
    return api.create_project("Song", "Analysed first.", song=make_song("wav", 6.0).data)


def unplanned(ctx: Context) -> str:
    """A project not planned yet: its run starts with the planning."""
    return api.create_project("Plain", "Planned first.", scene_count=1)


#: A task that may be a worker process's first, the project it is sent for, the run's status.
FIRST_TASKS: dict[str, tuple[Callable[[Context], str], ProjectStatus]] = {
    ANALYSE_SONG: (unanalysed, ProjectStatus.GENERATING_SCENES),
    PLAN_SCENES: (unplanned, ProjectStatus.GENERATING_SCENES),
    ASSEMBLE_PROJECT: (completed_song_project, ProjectStatus.ASSEMBLING),
}


def won_run(ctx: Context, project_id: str, status: ProjectStatus) -> str:
    """The project's run, won as a user's run is, its first task left to the drill to send."""
    run_id = str(uuid.uuid4())
    ctx.board.touch_run(run_id, ctx.settings.run_stale_seconds)
    assert ctx.projects.win_run(project_id, run_id, status) == run_id
    return run_id


def retried(task: str, run_id: str) -> str:
    """What the worker logs when `task`'s execution under `run_id` is retried."""
    return f"{task}[{run_id}] retry"


@pytest.mark.parametrize("task", list(FIRST_TASKS))
def test_a_fresh_workers_first_task_meeting_a_store_outage_retries_it_and_the_run_completes(
    stack: LocalStack,
    start_workers: StartWorkers,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    task: str,
) -> None:
    # Given a run that starts with `task`, its project made at the workers' output format before
    # they start, and the song analysis its creation asked for dropped: it would be the fresh
    # worker process's first task instead
    for key, value in WORKERS_OUTPUT.items():
        monkeypatch.setenv(key, value)
    reset_context()
    make, status = FIRST_TASKS[task]
    project_id = make(get_context())
    redis_client.delete(MEDIA_QUEUE)
    # And a fresh worker process (no store client built yet)
    workers = start_workers(concurrency=1, **{**SETTINGS, **QUICK_RETRIES})
    ctx = get_context()
    run_id = won_run(ctx, project_id, status)
    # When the store refuses every request as that task, the process's first, builds its context
    with outage(stack, REFUSED):
        result = app.send_task(task, args=[project_id, run_id], task_id=run_id)
        wait_for(
            lambda: retried(task, run_id) in workers.service.log_text() or result.failed(),
            120,
            "the task to retry, or fail",
        )
    # Then it retried it as an outage, met by the context's own first call (the table's check)
    log = workers.service.log_text()
    assert f"{retried(task, run_id)}: Retry in" in log, log[-2000:]
    assert re.search(r"StoreUnavailable\(.*DescribeTable", log), log[-2000:]
    # And, the store back, the run went on to its end: the final video recorded
    view = api.wait_project(project_id, timeout=180)
    assert view.status == ProjectStatus.COMPLETED and view.final_video_s3_key, view
    assert_invariants(project_id)
    assert "Traceback" not in workers.service.log_text()


def test_an_assembly_through_an_outage_longer_than_its_bug_retries_then_a_bug_completes(
    stack: LocalStack, start_workers: StartWorkers
) -> None:
    # Given an assembly that will meet a bug (an error nobody expected) past its store reads,
    # its first `ASSEMBLE_UNEXPECTED - 1` times and not after (repaired), its retries quick
    # and each store call giving up after 0.2 s of refusals: the outage's length and the
    # bug's allowance are both counted in retries, not seconds
    bugs = ASSEMBLE_UNEXPECTED - 1
    failpoints = f"before_assembly=raise:{bugs}"
    settings = {**SETTINGS, **QUICK_RETRIES, "store_retry_seconds": "0.2"}
    workers = start_workers(concurrency=1, failpoints=failpoints, **settings)
    ctx = get_context()
    project_id = completed_song_project(ctx)
    run_id = won_run(ctx, project_id, ProjectStatus.ASSEMBLING)
    retry = retried(ASSEMBLE_PROJECT, run_id)
    # When it first meets an outage more times than it may retry a bug
    with outage(stack, REFUSED):
        result = app.send_task(ASSEMBLE_PROJECT, args=[project_id, run_id], task_id=run_id)
        wait_for(
            lambda: workers.service.log_text().count(retry) > ASSEMBLE_UNEXPECTED or result.ready(),
            180,
            "the assembly to retry through more outages than it may meet unexpected errors",
        )
    # and then the bug, as often as its retries allow but one
    outcome = result.get(timeout=120)
    # Then it retried the bug (its own count, not the outages') and the run completed
    assert outcome["outcome"] == "completed", outcome
    view = api.get_project(project_id)
    assert (
        view.status == ProjectStatus.COMPLETED
        and view.final_video_s3_key == outcome["final_video_s3_key"]
    )
    assert_invariants(project_id)
    log = workers.service.log_text()
    crashed = f"unexpected error in assemble_project {project_id}: FailpointError"
    assert log.count(crashed) == raised(state_dir(workers), "before_assembly") == bugs
    assert "assembly failed" not in log
    # And its retries said which was which: the outages as such, before the bug, the bug as a bug
    assert log[: log.index(crashed)].count(retry) > ASSEMBLE_UNEXPECTED
    assert re.search(r"UnexpectedError\([\"']FailpointError", log), "the bug's retry"
    assert not re.search(r"StoreUnavailable\([\"']FailpointError", log)
