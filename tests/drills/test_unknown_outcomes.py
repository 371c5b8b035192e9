"""Drills for writes whose outcome is unknown (docs/DESIGN.md invariant 3): an operation id on
its way to the store while the state server stops answering, or while the run is taken over or
cancelled. A paid job is never dropped because of our own outage, nor because a cancel did
not really stop it."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from celery.result import AsyncResult

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.deps import get_context
from mvpipe.devstack.failpoints import held, release
from mvpipe.devstack.localstack import LocalStack, Service
from mvpipe.messaging.dispatch import CeleryDispatcher
from mvpipe.models import ProjectStatus
from tests.conftest import Workers
from tests.drills.conftest import DRILL_SETTINGS, check_drill, hand_made_run, heal
from tests.helpers import assert_invariants, ledger, wait_for

StartWorkers = Callable[..., Workers]

HOLD = "before_record"
#: Store calls give up quickly, so a pause of the state server outlasts a record's retries.
SHORT_STORE = {"store_timeout_seconds": "1", "store_retry_seconds": "2"}


def start_held_scene(
    start_workers: StartWorkers, hold: str = HOLD, **settings: str
) -> tuple[Workers, str, str, str]:
    """One scene submitted by hand; its execution holds at `hold` (by default just before
    recording its operation). Its run ends when the scene finishes (`hand_made_run`)."""
    workers = start_workers(failpoints=f"{hold}=hold", **{**DRILL_SETTINGS, **settings})
    project_id, run_id = hand_made_run(get_context(), "Unknown", "Reply lost.", 4)
    task_id = CeleryDispatcher(app).resume(project_id, 1, run_id, "local").id
    wait_for(lambda: held(state_dir(workers), hold), 60, f"the execution to reach {hold}")
    return workers, project_id, run_id, task_id


def state_dir(workers: Workers) -> Path:
    return Path(workers.env["MVPIPE_STATE_DIR"])


def write_with_its_reply_lost(stack: LocalStack, workers: Workers, hold: str, task_id: str) -> None:
    """Let the execution held at `hold` go on with the state server stopped: its next write
    reaches the server but no reply comes back, until the worker takes an outage retry; then
    the server resumes (and the write lands)."""
    moto: Service = next(s for s in stack.services if s.name == "moto")
    moto.pause()
    try:
        release(state_dir(workers), hold)
        wait_for(lambda: AsyncResult(task_id, app=app).state == "RETRY", 60, "the outage retry")
    finally:
        moto.resume()


def test_state_server_paused_while_the_operation_id_is_recorded(
    start_workers: StartWorkers, stack: LocalStack
) -> None:
    # The job outlasts the outage retry (~2 s after its submit: a store timeout and its
    # retries) by a busy machine's margin, so a worker that cancelled it for our own outage
    # would really stop it
    workers, project_id, _run, task_id = start_held_scene(
        start_workers, lease_seconds="30", local_latency="8", **SHORT_STORE
    )
    # The record's write reaches the stopped server and its reply never comes back: the
    # worker gives up for now (an outage retry). The write itself lands on resume.
    write_with_its_reply_lost(stack, workers, HOLD, task_id)
    assert not job_finished(Path(workers.env["MVPIPE_LOCAL_STATE"]), project_id)
    heal(project_id)
    check_drill(project_id, workers)


def test_state_server_paused_while_the_lease_is_claimed(
    start_workers: StartWorkers, stack: LocalStack
) -> None:
    """The claim (lease and reservation in one transaction) lands but its reply is lost: the
    execution never submitted, so its next step gives the lease and the money back, and the
    one job the scene needs is paid once in the committed sum too (invariants 7 and 9)."""
    hold = "before_claim_write"
    prices = json.dumps({"local": 0.25})
    workers, project_id, _run, task_id = start_held_scene(
        start_workers, hold, lease_seconds="6", prices=prices, **SHORT_STORE
    )
    write_with_its_reply_lost(stack, workers, hold, task_id)
    heal(project_id)
    check_drill(project_id, workers)
    assert_invariants(project_id)
    view = api.get_project(project_id)
    accepted = ledger(workers.ledger, project_id)
    assert len(accepted) == 1, accepted
    price = view.scenes[0].duration_seconds * 250_000  # $0.25 a second
    assert round(view.committed_cost_usd * 1e6) == price, (view.committed_cost_usd, accepted)


def test_the_claim_mark_outlasts_the_lease_and_the_records_last_reply(
    start_workers: StartWorkers,
) -> None:
    """Between a job's submit and its operation id stored, the scene is kept from reconcile by
    its lease, then by the mark set before the claim, until a failed record marks the write
    owed. The record is retried until the lease ends and its last try may answer one store
    timeout later: a mark of a poll's liveness (3.6 s here, and shorter than the lease for
    every provider by default) would lapse first, leaving a moment when reconcile could free
    the scene for a second paid claim."""
    workers, project_id, _run, _task = start_held_scene(
        start_workers, lease_seconds="30", **SHORT_STORE
    )
    ctx = get_context()
    assert ctx.settings.liveness_seconds("local") < 30  # what the mark must not be held to
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.lease_expires_at is not None
    mark = ctx.board.client.pttl(ctx.board._key("live", "owed", project_id, 1))
    mark_ends = time.time() + mark / 1000
    # The record starts no try past the lease; a try waits a connection and a reply at most
    last_reply = float(scene.lease_expires_at) + 2 * float(SHORT_STORE["store_timeout_seconds"])
    assert mark_ends >= last_reply, (mark_ends, last_reply)
    release(state_dir(workers), HOLD)
    heal(project_id)
    check_drill(project_id, workers)


def test_a_job_recorded_by_a_worker_that_then_died_is_adopted_within_a_liveness(
    start_workers: StartWorkers,
) -> None:
    """Once the operation id is stored, reconcile adopts the job rather than paying again, so
    the claim's long mark (past the lease: 303 s here) would only delay a dead worker's
    recovery: the record brings it back to a poll's liveness (3.6 s). The worker dies right
    after the record, before any poll; a reconcile pass then starts the job's poll chain
    while the claim's lease still holds, which the claim's mark alone outlasts. The run stays
    fresh until well after the adoption, so no takeover of it resumes the job first. The
    lease is long (300 s) so that "while the lease holds" is a wide margin, not a race with
    how fast a loaded machine starts a worker."""
    hold = "after_record"
    settings = {"lease_seconds": "300", "run_stale_seconds": "60"}
    workers, project_id, _run, _task = start_held_scene(start_workers, hold, **settings)
    ctx = get_context()
    liveness = ctx.settings.liveness_seconds("local")
    assert ctx.settings.claim_mark_after(liveness) > 300  # the mark the record must shorten
    mark = ctx.board.client.pttl(ctx.board._key("live", "scene", project_id, 1))
    assert 0 < mark <= liveness * 1000, (mark, liveness)
    assert not ctx.board.scene_owed(project_id, 1)  # the claim's owed mark ended
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.operation_id is not None
    assert scene.lease_expires_at is not None
    lease_ends = float(scene.lease_expires_at)  # taken before the kill: the claim's own end
    workers.service.kill()  # the whole worker: its message waits out the visibility timeout
    second = start_workers(local_ledger=str(workers.ledger), **{**DRILL_SETTINGS, **settings})
    adopted: list[float] = []  # when the pass that adopted the job read the scene

    def adopt() -> bool:
        began = time.time()
        if api.reconcile(project_id).orphaned_polls:
            adopted.append(began)
        return bool(adopted)

    wait_for(adopt, 60, "reconcile to adopt the job")
    assert adopted[0] < lease_ends, "adopted only once the lease had ended"
    heal(project_id)
    check_drill(project_id, second)


def test_a_run_taken_over_during_the_record_keeps_the_operation(
    start_workers: StartWorkers,
) -> None:
    workers, project_id, run_id, _task = start_held_scene(start_workers)
    ctx = get_context()
    new_run = str(uuid.uuid4())
    assert ctx.projects.take_over_run(project_id, run_id, new_run, ProjectStatus.PROCESSING)
    release(state_dir(workers), HOLD)
    heal(project_id)  # the new run (and reconcile) adopt the job: nobody pays again
    check_drill(project_id, workers)


def test_a_cancel_that_finds_the_job_finished_keeps_it_for_the_next_run(
    start_workers: StartWorkers,
) -> None:
    workers, project_id, _run, _task = start_held_scene(start_workers, local_latency="0.5")
    jobs = Path(workers.env["MVPIPE_LOCAL_STATE"])
    wait_for(lambda: job_finished(jobs, project_id), 60, "the provider to finish the job")
    api.cancel_project(project_id)  # the user cancels while the id is on its way
    release(state_dir(workers), HOLD)
    heal(project_id)  # the user's next run uses the finished job
    check_drill(project_id, workers)


def job_finished(path: Path, project_id: str) -> bool:
    db = sqlite3.connect(path)
    try:
        row = db.execute(
            "SELECT MAX(finishes_at) FROM jobs WHERE project_id = ?", (project_id,)
        ).fetchone()
    finally:
        db.close()
    return row[0] is not None and row[0] < time.time()
