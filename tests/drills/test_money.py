"""Drills with a budget: whatever breaks, the committed sum never passes the budget and equals
the price of the jobs the provider accepted (its ledger) — invariants 4 and 9."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.deps import get_context
from mvpipe.devstack.drills import restart_redis
from mvpipe.devstack.localstack import LocalStack
from mvpipe.messaging.dispatch import GENERATE_SCENE
from mvpipe.models import ProjectStatus, SceneStatus
from tests.conftest import Workers
from tests.drills.conftest import DRILL_SETTINGS, heal, pause_state_server
from tests.helpers import assert_invariants, ledger, wait_for

StartWorkers = Callable[..., Workers]

SCENES, FITTING = 10, 6
PRICE_MICROS = 1_000_000  # a 4 s scene at $0.25 a second


def fault(kind: str, project_id: str, stack: LocalStack, workers: Workers) -> None:
    if kind == "duplicate-delivery":  # every scene's message delivered twice under one id
        run = get_context().projects.get(project_id).active_run_id
        for sequence in range(1, SCENES + 1):
            task_id = str(uuid.uuid4())
            for _ in range(2):
                app.send_task(
                    GENERATE_SCENE, args=[project_id, sequence, run, "local"], task_id=task_id
                )
    elif kind == "state-server-pause":
        pause_state_server(stack, workers)
    elif kind == "redis-restart":
        restart_redis(stack, keep_data=False)


def check_money(project_id: str, workers: Workers, budget_micros: int) -> int:
    view = api.get_project(project_id)
    assert_invariants(project_id)  # includes committed = the scenes' costs, and <= budget
    committed = round(view.committed_cost_usd * 1e6)
    accepted = ledger(workers.ledger, project_id)
    assert committed == len(accepted) * PRICE_MICROS, (committed, accepted)
    assert committed <= budget_micros
    return len(accepted)


@pytest.mark.parametrize(
    "kind", ["duplicate-delivery", "sigkill-after-submit", "state-server-pause", "redis-restart"]
)
def test_a_budget_holds_through_faults(
    start_workers: StartWorkers, stack: LocalStack, kind: str
) -> None:
    settings = {
        **DRILL_SETTINGS,
        "lease_seconds": "10",  # a pause shorter than the lease costs nothing
        "prices": json.dumps({"local": 0.25}),
        "provider_concurrency": "3",
        "local_latency": "1.5",
    }
    if kind == "sigkill-after-submit":  # accepted, id never stored: paid and counted
        settings["failpoints"] = "after_submit"
        # No pause to outlast: the crash drills' lease, so reconcile takes the dead worker's
        # scene back after 4 s instead of 10.
        settings["lease_seconds"] = DRILL_SETTINGS["lease_seconds"]
    workers = start_workers(**settings)
    scenes = [{"prompt": f"scene {n}", "duration_seconds": 4} for n in range(1, SCENES + 1)]
    budget = FITTING * PRICE_MICROS
    project_id = api.create_project("Money", "Drilled.", scenes=scenes, budget_usd=FITTING)
    api.run_project(project_id)
    wait_for(lambda: len(ledger(workers.ledger, project_id)) >= 2, 60, "jobs in flight")
    fault(kind, project_id, stack, workers)

    view = heal(project_id)
    if kind == "sigkill-after-submit":
        assert (workers.ledger.parent / "state" / "failpoints" / "after_submit").exists()
    paid = check_money(project_id, workers, budget)
    assert paid == FITTING  # the budget is spent to the dollar, never past it
    over = [s for s in view.scenes if s.status == SceneStatus.FAILED]
    assert over and all((s.last_error or "").startswith("over budget") for s in over)

    # Raised, the budget pays for the rest, and the books still balance
    api.set_budget(project_id, 20)
    api.run_project(project_id)
    view = heal(project_id)
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    check_money(project_id, workers, 20 * PRICE_MICROS)
