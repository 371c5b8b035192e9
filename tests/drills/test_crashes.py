"""Drills 1-3: workers SIGKILLed at critical moments, Redis restarted, state server paused."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.deps import get_context
from mvpipe.devstack.drills import restart_redis
from mvpipe.devstack.failpoints import POINTS
from mvpipe.devstack.localstack import LocalStack
from mvpipe.messaging.dispatch import CeleryDispatcher
from mvpipe.models import ProjectStatus
from mvpipe.pipeline.reconcile_report import ReconcileReport
from mvpipe.providers.local import LocalJobs
from tests.conftest import Workers
from tests.drills.conftest import DRILL_SETTINGS, check_drill, heal, pause_state_server
from tests.helpers import ledger, wait_for

StartWorkers = Callable[..., Workers]


@pytest.mark.parametrize("point", POINTS)
def test_worker_killed_at_a_critical_moment(start_workers: StartWorkers, point: str) -> None:
    workers = start_workers(failpoints=point, **DRILL_SETTINGS)
    project_id = api.create_project("Crash", "Kill it.", scene_count=4)
    api.run_project(project_id)
    heal(project_id)
    assert (workers.ledger.parent / "state" / "failpoints" / point).exists()  # it did crash
    # Only a crash between acceptance and storing the operation id can cost a second job.
    check_drill(project_id, workers, double_paid_allowed=1 if point == "after_submit" else 0)


#: A worker on Celery's threads pool: the process is the whole worker, all its threads die in
#: a crash, and nothing restarts it.
THREADS = {"pool": "threads", "concurrency": 8}


@pytest.mark.parametrize("point", ["after_submit", "during_poll", "after_upload"])
def test_threads_worker_killed_at_a_critical_moment_then_replaced(
    start_workers: StartWorkers, point: str
) -> None:
    first = start_workers(failpoints=point, **THREADS, **DRILL_SETTINGS)
    project_id = api.create_project("Crash", "Kill every thread.", scene_count=6)
    api.run_project(project_id)
    wait_for(lambda: first.service.proc.poll() is not None, 60, "the worker to die at " + point)
    assert (first.ledger.parent / "state" / "failpoints" / point).exists()
    # The marker stays: the replacement (same state directory) does not crash again.
    second = start_workers(
        failpoints=point, local_ledger=str(first.ledger), **THREADS, **DRILL_SETTINGS
    )
    heal(project_id)
    # Every execution the process ran died with it, whichever thread reached the failpoint:
    # each one between a job's acceptance and its id's write may cost a second job (the
    # named after_submit window; `check_drill` proves every double is in it), nothing else.
    check_drill(project_id, second, double_paid_allowed=6)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_whole_worker_killed_while_polling_then_replaced(
    start_workers: StartWorkers, pool: str
) -> None:
    settings = {**DRILL_SETTINGS, "local_latency": "3", **(THREADS if pool == "threads" else {})}
    first = start_workers(**settings)
    project_id = api.create_project("Replace", "New worker.", scene_count=6)
    api.run_project(project_id)
    wait_for(lambda: len(ledger(first.ledger, project_id)) == 6, 60, "all six jobs submitted")
    # Killed while polling, so after every operation id is stored (a kill between a job's
    # acceptance and that write is the after_submit drill, which may pay twice).
    wait_for(
        lambda: all(s.provider_operation_id for s in api.get_project(project_id).scenes),
        60,
        "all six operation ids stored",
    )
    first.service.kill()  # SIGKILL to the whole process group: parent and pool children
    second = start_workers(local_ledger=str(first.ledger), **settings)  # one provider, one ledger
    heal(project_id)
    check_drill(project_id, second)


@pytest.mark.parametrize("keep_data", [True, False], ids=["aof-kept", "data-lost"])
def test_redis_restart_mid_run(
    start_workers: StartWorkers, stack: LocalStack, keep_data: bool
) -> None:
    # 2 s jobs: the restart follows the third job's acceptance within a poll of the ledger, and
    # is checked to have come while a job still ran (1 s jobs would leave too thin a margin for
    # a busy machine). With the data kept, a run goes stale later than a paid claim's mark
    # lasts (7 s here), as with the defaults (300 s against 170 s): reconcile adopts an
    # operation whose polls the worker lost only once its claim's mark has ended.
    stale = {"run_stale_seconds": "10"} if keep_data else {}
    workers = start_workers(**{**DRILL_SETTINGS, "local_latency": "2", **stale})
    project_id = api.create_project("Redis", "Restart.", scene_count=6)
    api.run_project(project_id)
    wait_for(lambda: len(ledger(workers.ledger, project_id)) >= 3, 60, "jobs in flight")
    if keep_data:
        # Every scene claimed and its job's id stored: what the worker loses in the restart
        # is the polls it held and the chord's count, none of it a scene still to claim
        wait_for(
            lambda: all(s.provider_operation_id for s in api.get_project(project_id).scenes),
            60,
            "all six operation ids stored",
        )
    down_at = restart_redis(stack, keep_data=keep_data)
    assert running_at(workers, project_id, down_at) >= 1
    if keep_data:
        # The worker dropped the polls it held (Celery's consumer does on a reconnect): reconcile
        # resumes them for the same run, which then ends as soon as its scenes are final
        # (its chord's messages come back only after the visibility timeout), never stale.
        reports: list[ReconcileReport] = []
        view = heal(project_id, rerun=False, after_pass=reports.append, pace=0.1)
        assert view.status == ProjectStatus.COMPLETED, view
        assert sum(r.runs_taken_over for r in reports) == 0
    else:
        heal(project_id)  # the run's list of scenes went with the data: it may be taken over
    check_drill(project_id, workers)
    # The same worker keeps consuming after the restart.
    after = api.create_project("After", "Still here.", scene_count=2)
    api.run_project(after)
    heal(after, timeout=120)
    check_drill(after, workers)


def running_at(workers: Workers, project_id: str, moment: float) -> int:
    """How many of the project's jobs the local provider had accepted and not finished at
    `moment` (a wall-clock time, as its jobs table keeps)."""
    jobs = LocalJobs(Path(workers.env["MVPIPE_LOCAL_STATE"]))
    with jobs.transaction() as db:
        (n,) = db.execute(
            "SELECT COUNT(*) FROM jobs WHERE project_id = ? AND submitted_at <= ?"
            " AND finishes_at > ?",
            (project_id, moment, moment),
        ).fetchone()
    return int(n)


def test_state_server_paused_mid_run(start_workers: StartWorkers, stack: LocalStack) -> None:
    # Leases outlast the pause: a stall shorter than the lease must cost nothing. (A stall
    # longer than the lease lets reconcile take back a scene whose operation id is still on its
    # way to the store: that job is cancelled and paid again, the named window widened.)
    workers = start_workers(**{**DRILL_SETTINGS, "lease_seconds": "10"})
    project_id = api.create_project("Pause", "Hold.", scene_count=6)
    api.run_project(project_id)
    wait_for(lambda: ledger(workers.ledger, project_id), 60, "the first paid job")
    pause_state_server(stack, workers)
    heal(project_id)
    check_drill(project_id, workers)


def test_worker_killed_before_sending_the_refinalize(start_workers: StartWorkers) -> None:
    # Given a run whose finalize already ran while its one scene was open (a chord body fired
    # early), so the scene, when it finishes, must trigger finalize again...
    workers = start_workers(failpoints="before_refinalize", **DRILL_SETTINGS)
    ctx = get_context()
    project_id = api.create_project("Refinalize", "Late.", scenes=[{"prompt": "one"}])
    run_id = str(uuid.uuid4())
    ctx.board.touch_run(run_id, 60)
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    ctx.board.await_scenes(run_id, 1, [1])
    # ...when its worker dies just before publishing that trigger (as a failed publish would)
    CeleryDispatcher(app).resume(project_id, 1, run_id, "local")
    # Then the redelivered step sends it: the run ends without any reconcile
    view = api.wait_project(project_id, timeout=60)
    assert (workers.ledger.parent / "state" / "failpoints" / "before_refinalize").exists()
    assert view.status == ProjectStatus.COMPLETED
    check_drill(project_id, workers)
