"""Fault drills: real processes, real faults, every docs/DESIGN.md invariant checked afterwards."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from functools import partial
from pathlib import Path

import pytest

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.deps import Context, get_context
from mvpipe.devstack import drills
from mvpipe.devstack.drills import double_payments
from mvpipe.devstack.localstack import LocalStack
from mvpipe.messaging.dispatch import GENERATE_SCENE
from mvpipe.models import ProjectStatus
from mvpipe.pipeline.stages import STAGES
from mvpipe.providers.local import LocalJobs
from mvpipe.store.claim_outcomes import Claim
from tests.conftest import Workers
from tests.helpers import assert_invariants, generations_per_scene, new_project, wait_for

__all__ = [
    "DRILL_SETTINGS",
    "PRICED",
    "check_committed",
    "check_drill",
    "hand_made_run",
    "heal",
    "owe_a_record",
    "pause_state_server",
]

#: Short leases and liveness so crashes are detected in seconds, not minutes.
DRILL_SETTINGS = {
    "lease_seconds": "4",
    "provider_timeout_seconds": "2",
    "store_timeout_seconds": "1",
    "liveness_slack_seconds": "1",
    "run_stale_seconds": "4",
    "stage_queue_seconds": "4",
    "local_latency": "1",
}

#: Prices for the local provider's jobs, so a drill's money is not 0 == 0 (invariant 9).
PRICED = {"prices": json.dumps({"local": 0.25})}


#: The most a drill's `heal` lets a run work before its next reconcile pass: a lease or a run's
#: staleness that ends meanwhile is acted on at that pass, so each of the drills' few-second
#: windows is not lengthened by up to a second (`drills.heal`'s default, an operator's pace).
HEAL_PACE = 0.5

#: `drills.heal` at the drills' pace (a drill may still pass its own).
heal = partial(drills.heal, pace=HEAL_PACE)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "drills" in str(item.fspath):
            item.add_marker(pytest.mark.drill)
            item.add_marker(pytest.mark.integration)


def check_drill(
    project_id: str,
    workers: Workers,
    *,
    double_paid_allowed: int = 0,
    regenerated: bool = False,
) -> Counter[int]:
    """Every invariant, plus: one paid generation per scene, except at most
    `double_paid_allowed` scenes crashed between acceptance and the operation id's write
    (their first job was never polled: its id never reached the store). With `regenerated`,
    users asked for new jobs, so only the invariants and one job per scene at least are checked
    here."""
    view = api.get_project(project_id)
    assert view.status == ProjectStatus.COMPLETED, [
        (s.sequence, s.status, s.last_error) for s in view.scenes
    ]
    assert_invariants(project_id)
    paid = generations_per_scene(workers.ledger, project_id)
    assert set(paid) == {s.sequence for s in view.scenes}
    if regenerated:
        return paid  # users asked to pay again: the caller bounds the payments
    doubles = [seq for seq, n in paid.items() if n > 1]
    assert len(doubles) <= double_paid_allowed, paid
    assert all(n <= 2 for n in paid.values()), paid
    jobs = LocalJobs(Path(workers.env["MVPIPE_LOCAL_STATE"]))
    in_window, outside = double_payments(workers.ledger, jobs, project_id)
    assert (in_window, outside) == (len(doubles), 0), paid
    return paid


def check_committed(project_id: str, workers: Workers) -> int:
    """Invariant 9 against the provider's own count: the project's committed cost is the price
    of every job the provider accepted (its ledger's lines, per stage and scene), whatever
    became of the job. Returns that cost (micro-dollars, above 0: the drill is priced)."""
    ctx = get_context()
    scenes = {s.sequence: s for s in ctx.projects.load(project_id).scenes}
    expected = sum(
        stage.price_micros(ctx.settings, "local", scenes[sequence]) * jobs
        for stage in STAGES
        if stage.paid
        for sequence, jobs in generations_per_scene(workers.ledger, project_id, stage.name).items()
    )
    assert expected > 0, "the drill runs with prices"
    assert ctx.projects.get(project_id).committed_cost_micros == expected
    return expected


#: What a worker's log shows once one of its store calls failed on the paused state server.
HIT_SIGNS = ("store call failed", "StoreUnavailable")


def pause_state_server(stack: LocalStack, workers: Workers) -> None:
    """Pause the state server (DynamoDB and S3) until one of `workers`' store calls has failed
    on it, then resume: the fault lasts until it has hit, not for a fixed time that a slow
    machine might spend before any call reached it. A DynamoDB call logs each retry; an S3 call
    that runs out of time fails its task step, which Celery logs as a retry on
    `StoreUnavailable` (the step is retried once the store is back)."""
    moto = next(s for s in stack.services if s.name == "moto")
    worker = workers.service
    seen = len(worker.log_text())
    moto.pause()
    try:
        wait_for(
            lambda: any(sign in worker.log_text()[seen:] for sign in HIT_SIGNS),
            60,
            "a worker's store call to fail on the paused state server",
        )
    finally:
        moto.resume()


def owe_a_record(ctx: Context, provider: str) -> tuple[str, str, str]:
    """A scene whose lease expired after its job ("local-paid") was submitted, the record of
    that job's operation id still owed, and the redo that carries it sent for `provider`.
    Returns the project, its run and the lease's token."""
    project_id, run_id = new_project(ctx, 1)
    token = uuid.uuid4().hex
    claimed = ctx.scenes.claim(
        project_id, 1, run_id=run_id, token=token, lease_seconds=60, max_attempts=3,
        now=time.time() - 120,
    )  # fmt: skip
    assert claimed.outcome == Claim.WON
    app.send_task(
        GENERATE_SCENE,
        args=[project_id, 1, run_id, provider],
        kwargs={"operation_id": "local-paid", "token": token, "attempt": 1},
    )
    return project_id, run_id, token


def hand_made_run(ctx: Context, name: str, concept: str, live_seconds: float) -> tuple[str, str]:
    """A one-scene project with a run won by hand (no plan task, its mark live for
    `live_seconds`), so a test can deliver its scene's messages itself. The run's finalize
    waits for its one scene, as a run's does: the scene's finish ends the run, instead of
    reconcile taking it over once it is stale (run_stale seconds after the scene's last step)."""
    project_id = api.create_project(name, concept, scenes=[{"prompt": "one"}])
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    ctx.board.touch_run(run_id, live_seconds)
    ctx.board.await_scenes(run_id, 1, [1])
    return project_id, run_id
