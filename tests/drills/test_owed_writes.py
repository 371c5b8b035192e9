"""Drills for a write owed for paid work (a job's record, a lease's give-back) through a store
outage longer than the lease and a poll's liveness mark, with reconcile passes running: the
scene stays marked alive until the write lands, so reconcile never frees it for a second paid
claim (docs/DESIGN.md invariants 3 and 9).

The outage refuses requests (nothing applied), as a real store's can: a paused state server
applies every request it held once it resumes, so the owed write would always land first."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis
from celery.exceptions import Retry

from mvpipe import api, hooks
from mvpipe.deps import get_context
from mvpipe.devstack.failpoints import held, release
from mvpipe.devstack.localstack import LocalStack
from mvpipe.devstack.outages import NO_CONDITION_CHECK, NONE, REFUSED, UNANSWERED, set_outage
from mvpipe.media.synth import synthesize_song
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.pipeline.generate import SceneJob
from mvpipe.pipeline.stages import GENERATE, LIPSYNC
from mvpipe.pipeline.steps import Next
from mvpipe.providers.base import JobState
from tests.conftest import Workers
from tests.drills.conftest import DRILL_SETTINGS, check_drill, heal, owe_a_record
from tests.drills.test_unknown_outcomes import state_dir
from tests.helpers import (
    assert_invariants,
    generations_per_scene,
    ledger,
    lip_synced_project,
    wait_for,
)

StartWorkers = Callable[..., Workers]

#: A redo marks the scene as it starts and as its store call fails. That call gives up after
#: ~3-5 s of refusals (at most `store_call_seconds`, 6 s, which is what the owed mark must
#: outlast), then its outage retry waits 0.5-1 s: 3.5 s at least between two calls' failures,
#: 0.4 s longer than a poll's liveness mark (1 + 3 x 0.2 + 1.5 s: the slack is the least the
#: settings allow beside a 2 s provider call and a 1 s store call): an owed mark that short
#: would lapse at each redo. The mark the claim leaves no longer follows the backoff
#: (`claim_mark_after`: the lease, the record's last try and the slack, 7.5 s): it covers the
#: lease until the record's first call gives up and leaves the owed mark. Each redo marks the
#: run alive for longer than the gap (as in production: 300 s against ~100 s), so the run is
#: not taken over meanwhile.
OUTAGE_SETTINGS = {
    **DRILL_SETTINGS,
    "backoff_base": "1",
    "backoff_max": "1",
    "liveness_slack_seconds": "1.5",
    "store_retry_seconds": "3",
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


def state_server_port(stack: LocalStack) -> int:
    port = next(s for s in stack.services if s.name == "moto").port
    assert port is not None
    return port


@contextmanager
def outage(stack: LocalStack, mode: str) -> Iterator[Callable[[str], None]]:
    """The state server in outage `mode` inside; yields a switch to another mode."""
    port = state_server_port(stack)
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


@contextmanager
def full(client: redis.Redis) -> Iterator[None]:
    """Redis (the broker, and the board beside it) refuses every write that needs memory
    inside, as at `maxmemory` with no eviction: a message cannot be queued (LPUSH), while
    one already delivered can still be acknowledged or rejected (ZREM, HDEL)."""
    policy = client.config_get("maxmemory-policy")["maxmemory-policy"]
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    try:
        yield
    finally:
        client.config_set("maxmemory", 0)
        client.config_set("maxmemory-policy", policy)


def refused_publish(workers: Workers) -> bool:
    """The worker met a retry's publish refused: Celery rejected the message, or the task
    waits to send it again."""
    log = workers.service.log_text()
    return "Reject(" in log or "the broker refused its retry" in log


def test_a_record_owed_while_the_broker_refuses_its_retry_keeps_the_scene_from_a_second_job(
    start_workers: StartWorkers, stack: LocalStack, redis_client: redis.Redis
) -> None:
    # Given a job accepted by the provider whose id is about to be recorded
    workers, project_id, since = start_held(start_workers, "before_record")
    with outage(stack, REFUSED):
        # When the store refuses the record and the broker refuses the retry that carries the
        # job's id (its Redis at maxmemory: the publish policy's retries cannot wait it out)
        with full(redis_client):
            release(state_dir(workers), "before_record")
            wait_for(lambda: refused_publish(workers), 60, "the retry's publish refused")
        # and the store stays out past the lease and the mark, reconcile running once it is
        # back
        outlast_the_lease_and_the_mark(workers, project_id, since)
    api.reconcile(project_id)
    # Then the record lands: the one job is used, nobody pays for a second
    paid_once(workers, project_id)
    # And the log named the job while the outage kept its record back
    (job,) = ledger(workers.ledger, project_id)
    owed = f"the generate job {job['operation_id']} was accepted; its record waits out an outage"
    assert owed in workers.service.log_text()


def test_a_record_the_store_refuses_is_retried_saying_why_and_never_paid_again(
    start_workers: StartWorkers, stack: LocalStack
) -> None:
    # Given a job accepted by the provider whose id is about to be recorded, and credentials
    # that may update items but not check one in a transaction: the priced claim (two updates)
    # passed, the record (a ConditionCheck on the run) is refused, not an outage
    workers, project_id, since = start_held(start_workers, "before_record")
    ctx = get_context()
    with outage(stack, NO_CONDITION_CHECK):
        release(state_dir(workers), "before_record")
        # When the refusal lasts past the lease, with reconcile passes meanwhile
        expired_at = since + float(OUTAGE_SETTINGS["lease_seconds"])
        wait_for(lambda: time.time() > expired_at, 30, "the lease to expire")
        redos = retries(workers) + REDOS

        def reconciled() -> bool:
            api.reconcile(project_id)
            lapsed = not ctx.board.scene_polled(project_id, 1)
            return lapsed or retries(workers) >= redos

        wait_for(reconciled, 60, "the mark to lapse, or the redos to keep it")
        # Then the scene waits for the record, marked alive, saying why, and nothing more
        # was paid
        scene = ctx.scenes.get(project_id, 1)
        assert scene is not None and scene.status == SceneStatus.PROCESSING, scene
        assert scene.operation_id is None and ctx.board.scene_polled(project_id, 1)
        (job,) = ledger(workers.ledger, project_id)
        said = (
            f"the generate job {job['operation_id']} was accepted but its record failed "
            "(retried until it lands): ConfigurationError: DynamoDB refused the request "
            "(AccessDeniedException"
        )
        assert scene.last_error is not None and scene.last_error.startswith(said), scene
        assert "dynamodb:ConditionCheckItem" in scene.last_error
        log = workers.service.log_text()
        assert log.count(said) > REDOS and "gave up" not in log
    # And once the permission is granted the record lands: the one job is used
    paid_once(workers, project_id)
    assert api.get_project(project_id).scenes[0].last_error is None


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


def test_a_give_back_owed_after_a_poll_is_redone_as_the_give_back_not_the_polled_job(
    start_workers: StartWorkers, stack: LocalStack
) -> None:
    # imported here: a task at the module's top is read by the collection (pytest reads every
    # module attribute), which configures the Celery app before the stack's servers are up
    from mvpipe.tasks.generate import FRESH, generate_scene

    # Given a lip-synced scene (the first of two) whose generation job has finished, the poll
    # message that will find it done still to run
    workers = start_workers(
        local_latency="1", store_retry_seconds="1", prices=json.dumps({"local": 0.25})
    )
    ctx = get_context()
    song = synthesize_song(seconds=5.0, bpm=120.0, sections=1)
    project_id = lip_synced_project(ctx, song.wav, [0.0, 2.5, 5.0], {1})
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    submitted = SceneJob(ctx, project_id, 1, run_id, "local").step()
    assert submitted.next == Next.POLL, submitted
    job = submitted.carry["operation_id"]
    video = ctx.video_provider("local")
    wait_for(lambda: video.poll(job).state == JobState.SUCCEEDED, 60, "the generation job")
    poll = {**FRESH, **submitted.carry}
    # When that poll runs (in this process, as a worker runs it): it stores the clip, cuts it
    # and claims the lip-sync, whose claim lands but its answer is lost (the state server
    # applies every write and answers 500), so the lease is owed a give-back
    port = state_server_port(stack)

    def lose_the_claims_answer(point: str) -> None:
        if point == "before_claim_write":
            set_outage(port, UNANSWERED)

    args = (project_id, 1, run_id, "local")
    hooks.install(lose_the_claims_answer)
    # as a worker's tracer runs a message (a direct call's retry would raise its cause instead)
    generate_scene.push_request(id=str(uuid.uuid4()), args=args, kwargs=poll, called_directly=False)
    try:
        with pytest.raises(Retry) as retried:
            generate_scene.run(*args, **poll)
    finally:
        generate_scene.pop_request()
        hooks.install(None)
        set_outage(port, NONE)
    # Then the redo it sends gives the lip-sync's lease back: it names no operation (the
    # generation job it polled would be recorded as the lip-sync's), nor any other field of
    # the poll, and keeps the count of outages
    assert retried.value.sig is not None
    redo = retried.value.sig.kwargs
    assert redo["operation_id"] is None, redo
    assert (redo["stage"], redo["outages"]) == (LIPSYNC.name, 1), redo
    assert redo["token"] and redo["release"]["unused"], redo
    assert (redo["job_started"], redo["unread_polls"]) == (None, 0), redo

    # and once a worker has run it, the scene ends lip-synced, each stage paid once, and the
    # committed sum is those two jobs' prices (the first claim's reservation given back)
    def lip_synced() -> bool:
        scene = ctx.scenes.get(project_id, 1)
        return scene is not None and scene.status == SceneStatus.COMPLETED

    wait_for(lip_synced, 90, "the redo and the lip-sync")
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.lip_synced_clip_key is not None
    assert generations_per_scene(workers.ledger, project_id) == {1: 1}
    assert generations_per_scene(workers.ledger, project_id, "lipsync") == {1: 1}
    prices = sum(stage.price_micros(ctx.settings, "local", scene) for stage in (GENERATE, LIPSYNC))
    assert prices > 0
    assert ctx.scenes.budgets.read(project_id).committed_micros == scene.cost_micros == prices
    assert_invariants(project_id)
