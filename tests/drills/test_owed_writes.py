"""Drills for a write owed for paid work (a job's record, a lease's give-back) through a store
outage longer than the lease and a poll's liveness mark, with reconcile passes running: the
scene stays marked alive until the write lands, so reconcile never frees it for a second paid
claim (docs/DESIGN.md invariants 3 and 9).

The outage refuses requests (nothing applied), as a real store's can: a paused state server
applies every request it held once it resumes, so the owed write would always land first."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.devstack.failpoints import held, release
from mvpipe.devstack.localstack import LocalStack
from mvpipe.devstack.outages import NONE, REFUSED, UNANSWERED, set_outage
from tests.conftest import Workers
from tests.drills.conftest import DRILL_SETTINGS, check_drill, heal, owe_a_record
from tests.drills.test_unknown_outcomes import state_dir
from tests.helpers import ledger, wait_for

StartWorkers = Callable[..., Workers]

#: Each redo's store call gives up after ~4.5-6.5 s of refusals (at most `store_call_seconds`,
#: 7.5 s, which is what the owed mark must outlast), then its outage retry waits
#: 2-4 s: a gap of 6.5 s at least, longer than a poll's liveness mark (4 + 3 x 0.2 + 1 s),
#: which lapses only after the call ended. Each redo marks the run alive for longer than the
#: gap (as in production: 300 s against ~100 s), so the run is not taken over meanwhile. (The
#: gap outlasts the mark by 0.9 s, as at twice these figures, in half the drill's time.)
OUTAGE_SETTINGS = {
    **DRILL_SETTINGS,
    "backoff_base": "4",
    "backoff_max": "4",
    "store_retry_seconds": "4.5",
    "run_stale_seconds": "30",
    "prices": json.dumps({"local": 0.25}),
}
#: Redo steps that must pass without the scene's mark lapsing (each would show a lapse).
REDOS = 3


def start_held(start_workers: StartWorkers, hold: str) -> tuple[Workers, str, float]:
    """One scene's run, its execution held at `hold`; returns when it is."""
    workers = start_workers(failpoints=f"{hold}=hold", **OUTAGE_SETTINGS)
    project_id = api.create_project("Owed", "The store is out.", scenes=[{"prompt": "one"}])
    api.run_project(project_id)
    wait_for(lambda: held(state_dir(workers), hold), 60, f"the execution to reach {hold}")
    return workers, project_id, time.time()


@contextmanager
def outage(stack: LocalStack, mode: str) -> Iterator[Callable[[str], None]]:
    """The state server in outage `mode` inside; yields a switch to another mode."""
    port = next(s for s in stack.services if s.name == "moto").port
    assert port is not None
    set_outage(port, mode)
    try:
        yield lambda other: set_outage(port, other)
    finally:
        set_outage(port, NONE)


def retries(workers: Workers) -> int:
    """The outage retries the worker took (one per redo that met the outage)."""
    return workers.service.log_text().count("Retry in")


def outlast_the_lease_and_the_mark(workers: Workers, project_id: str, since: float) -> None:
    """Keep the store out until the scene's lease has expired and its liveness mark lapsed
    (reconcile would then free it), or until `REDOS` more redos passed with the mark kept."""
    ctx = get_context()
    expired_at = since + float(OUTAGE_SETTINGS["lease_seconds"])
    redos = retries(workers) + REDOS

    def lapsed_or_kept() -> bool:
        lapsed = time.time() > expired_at and not ctx.board.scene_polled(project_id, 1)
        return lapsed or retries(workers) >= redos

    wait_for(lapsed_or_kept, 180, "the mark to lapse, or the redos to keep it")


def paid_once(workers: Workers, project_id: str) -> None:
    """Healed, one job paid, and the committed sum is that job's price."""
    heal(project_id)
    check_drill(project_id, workers)
    view = api.get_project(project_id)
    accepted = ledger(workers.ledger, project_id)
    price = view.scenes[0].duration_seconds * 250_000  # $0.25 a second
    assert len(accepted) == 1, accepted
    assert round(view.committed_cost_usd * 1e6) == price * len(accepted), view.committed_cost_usd


def test_a_record_owed_through_a_long_outage_keeps_the_scene_from_a_second_job(
    start_workers: StartWorkers, stack: LocalStack
) -> None:
    # Given a job accepted by the provider whose id is about to be recorded
    workers, project_id, since = start_held(start_workers, "before_record")
    # When the store refuses every write for longer than the lease and a poll's liveness mark,
    # and reconcile runs as soon as it is back
    with outage(stack, REFUSED):
        release(state_dir(workers), "before_record")
        outlast_the_lease_and_the_mark(workers, project_id, since)
    api.reconcile(project_id)
    # Then the record lands: the one job is used, nobody pays for a second
    paid_once(workers, project_id)


def test_a_give_back_owed_through_a_long_outage_refunds_the_claim_once(
    start_workers: StartWorkers, stack: LocalStack
) -> None:
    # Given a claim (lease and reservation) that lands but whose answer is lost, so no job is
    # submitted and the lease is to be given back with its reservation
    workers, project_id, since = start_held(start_workers, "before_claim_write")
    with outage(stack, UNANSWERED) as switch:
        release(state_dir(workers), "before_claim_write")
        wait_for(lambda: retries(workers) >= 1, 60, "the claim's outage retry")
        # When the store then refuses every write for longer than the lease and the liveness
        # mark, and reconcile runs as soon as it is back
        switch(REFUSED)
        outlast_the_lease_and_the_mark(workers, project_id, since)
    api.reconcile(project_id)
    # Then the give-back lands (its refund too) before the scene is claimed again: one job,
    # and the committed sum is its price only
    paid_once(workers, project_id)


def test_a_redo_whose_provider_cannot_be_built_still_marks_its_scene_alive(
    start_workers: StartWorkers,
) -> None:
    # Given a scene whose lease expired after its job was submitted, its record still owed
    workers = start_workers(**DRILL_SETTINGS)
    ctx = get_context()
    # When the redo runs on a worker that cannot build the job's provider
    project_id, _, token = owe_a_record(ctx, "nope")
    wait_for(
        lambda: "retrying the write it owes" in workers.service.log_text(),
        60,
        "the redo to meet its error",
    )
    # Then the scene is marked alive all the same: reconcile leaves it to the redo
    assert ctx.board.scene_polled(project_id, 1)
    assert ctx.scenes.get(project_id, 1).lease_token == token  # type: ignore[union-attr]
    api.reconcile(project_id)
    assert ctx.scenes.get(project_id, 1).lease_token == token  # type: ignore[union-attr]
