"""The run board's re-finalize trigger, against a real redis-server."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import cast

import pytest
import redis

from mvpipe.deps import Context, build_context
from mvpipe.pipeline.execution import Execution
from mvpipe.pipeline.lost_tries import LostTooOften, LostTries
from mvpipe.settings import get_settings
from mvpipe.store.runboard import RunBoard
from tests.helpers import wait_for


@contextmanager
def attempts_context(max_attempts: int) -> Iterator[Context]:
    """A context whose work gives up after `max_attempts` lost tries, closed however the test
    ends."""
    ctx = build_context(get_settings().model_copy(update={"max_attempts": max_attempts}))
    try:
        yield ctx
    finally:
        ctx.close()


pytestmark = pytest.mark.integration


@pytest.fixture
def board(redis_client: redis.Redis) -> RunBoard:
    return RunBoard(redis_client, prefix=f"test-{uuid.uuid4().hex}")


def test_the_last_scene_triggers_finalize_until_the_trigger_was_sent(board: RunBoard) -> None:
    # Given a run whose finalize ran while two of its scenes were still open
    run_id = str(uuid.uuid4())
    board.await_scenes(run_id, 2, [1, 2])
    assert not board.scene_finished(run_id, 1)
    # When the last scene finishes, but publishing the re-finalize fails (broker restarting)
    assert board.scene_finished(run_id, 2)
    # Then the retried step still owes the re-finalize: it may run twice, never zero times
    assert board.scene_finished(run_id, 2)
    board.refinalize_sent(run_id)
    assert not board.scene_finished(run_id, 2)


def test_scenes_finishing_before_finalize_ran_trigger_nothing(board: RunBoard) -> None:
    run_id = str(uuid.uuid4())
    assert not board.scene_finished(run_id, 1)  # the chord's body will read the store itself


def test_only_the_run_holding_the_planning_lock_frees_it(board: RunBoard) -> None:
    # Given a planning lock that a takeover's run holds now
    project_id, stale, current = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    assert board.lock_planning(project_id, current, 60)
    # When the stale run's planner finishes and unlocks
    board.unlock_planning(project_id, stale)
    # Then the lock is still the current run's, and only it can free the lock
    assert not board.lock_planning(project_id, stale, 60)
    assert board.lock_planning(project_id, current, 60)
    board.unlock_planning(project_id, current)
    assert board.lock_planning(project_id, stale, 60)


def test_one_reconcile_pass_holds_at_a_time_and_frees_only_its_own_hold(board: RunBoard) -> None:
    # Given a pass holding the reconcile job
    assert board.hold("reconcile", "first", 60)
    # Then beat's next message finds it held, and cannot free it
    assert not board.hold("reconcile", "second", 60)
    board.let_go("reconcile", "second")
    assert not board.hold("reconcile", "second", 60)
    # When the holder lets go, the next pass may run
    board.let_go("reconcile", "first")
    assert board.hold("reconcile", "second", 60)


def test_a_dead_holders_hold_expires(board: RunBoard) -> None:
    assert board.hold("reconcile", "dead", 0.2)
    wait_for(lambda: board.hold("reconcile", "next", 60), 10, "the dead holder's hold to expire")


def test_only_the_holder_renews_its_hold(board: RunBoard) -> None:
    # Given a hold about to expire (a long build), renewed by its holder, not by another
    job = f"assemble:{uuid.uuid4()}"
    assert board.hold(job, "builder", 0.5)
    assert not board.renew_hold(job, "waiter", 60)
    assert board.renew_hold(job, "builder", 60)
    # Then it outlives its first expiry, for the holder's new one
    ttl = board.client.pttl(board._key("hold", job))
    assert 55_000 < ttl <= 60_000, ttl
    assert not board.hold(job, "waiter", 60)
    board.let_go(job, "builder")
    assert not board.renew_hold(job, "builder", 60)  # let go: nothing left to renew
    assert board.hold(job, "waiter", 60)


def test_a_run_keeps_the_scenes_its_chord_waits_for(board: RunBoard) -> None:
    run_id = str(uuid.uuid4())
    assert board.run_scenes(run_id) is None
    board.keep_run_scenes(run_id, [2, 5, 999])
    assert board.run_scenes(run_id) == [2, 5, 999]
    assert board.run_sequences(run_id) is None  # not "finalize ran" (reconcile reads that)


def test_a_runs_steps_refresh_its_liveness_once_per_share_of_its_life(
    board: RunBoard, redis_client: redis.Redis
) -> None:
    run_id = str(uuid.uuid4())
    key = f"{board.prefix}:live:run:{run_id}"
    board.keep_run_alive(run_id, 600)
    assert board.run_alive(run_id)
    # It lasts past its period by the share a later step may skip its write: a step that skips
    # it (written up to 30 s before) still leaves the run its whole period until the next step
    assert 600_000 < redis_client.pttl(key) <= 630_000
    redis_client.pexpire(key, 5_000)  # as if the mark had aged
    # A second step moments later does not write it again (600 / 20 = 30 s not passed) ...
    board.keep_run_alive(run_id, 600)
    assert redis_client.pttl(key) <= 5_000
    # ... but once a twentieth of the period passed since its last write, a step does
    redis_client.pexpire(key, 200)

    def refreshed() -> bool:
        board.keep_run_alive(run_id, 2)  # a twentieth of 2 s: 0.1 s
        return redis_client.pttl(key) > 1_000

    wait_for(refreshed, 10, "a refresh once a twentieth of the period passed")


def test_a_poll_is_counted_in_one_command_and_its_answer_clears_the_count(
    board: RunBoard, redis_client: redis.Redis
) -> None:
    operation_id = f"op-{uuid.uuid4().hex}"
    assert [board.start_poll(operation_id) for _ in range(3)] == [1, 2, 3]
    assert redis_client.ttl(f"{board.prefix}:poll:{operation_id}") > 0  # never left behind
    assert board.poll_error(operation_id) is None
    board.poll_failed(operation_id, "garbage reply")
    assert board.poll_error(operation_id) == "garbage reply"
    board.poll_answered(operation_id)
    assert board.start_poll(operation_id) == 1


def test_tries_are_counted_before_they_run_and_their_end_clears_the_count(
    board: RunBoard, redis_client: redis.Redis
) -> None:
    # Given a cut tried three times, each lost with its process (none ended)
    job = f"cut:{uuid.uuid4().hex}"
    assert [board.start_try(job) for _ in range(3)] == [1, 2, 3]
    assert redis_client.ttl(f"{board.prefix}:tries:{job}") > 0  # never left behind for good
    assert board.start_try("cut:another") == 1  # each piece of work counts its own
    # When a try ends (returned or raised)
    board.try_ended(job)
    # Then the next try is the first of a new count
    assert board.start_try(job) == 1


def test_only_a_redelivered_messages_tries_are_counted_and_give_up_at_the_limit(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a cut, and a first delivery of its message (every scene's, on the happy path), on
    # a context whose Redis is unreachable: a command would raise (or, ending, log a warning)
    settings = get_settings().model_copy(update={"max_attempts": 3})
    unreachable = {"mvpipe_redis_url": "redis://127.0.0.1:1/0"}
    offline = build_context(settings.model_copy(update=unreachable))
    job = f"cut:{uuid.uuid4().hex}"
    first = LostTries(offline, job, run_id=None, redelivered=False)
    # Then its tries are never given up on and send no Redis command
    with caplog.at_level(logging.WARNING, logger="mvpipe.lost_tries"):
        assert [first.begin() for _ in range(5)] == [None] * 5
        with first.counted():
            pass
    assert not caplog.records
    offline.close()
    ctx = build_context(settings)
    key = f"{ctx.board.prefix}:tries:{job}"
    try:
        # When its message comes back each time its process is lost: the first delivery was
        # lost too, so the third redelivery follows the third lost try and gives up
        again = LostTries(ctx, job, run_id=None, redelivered=True)
        assert [again.begin() for _ in range(3)] == [None, None, 3]
        assert redis_client.ttl(key) > 0
        # And a redelivered try that ends clears the count
        again.end()
        assert not redis_client.exists(key)
    finally:
        ctx.close()


def test_a_runs_lost_tries_never_count_against_a_later_run(redis_client: redis.Redis) -> None:
    # Given a cut whose tries were lost twice under a run then cancelled (its chain stopped
    # before a try could end and clear the count)
    settings = get_settings().model_copy(update={"max_attempts": 3})
    ctx = build_context(settings)
    job = f"cut:{uuid.uuid4().hex}"
    try:
        cancelled = LostTries(ctx, job, run_id="run-1", redelivered=True)
        assert [cancelled.begin() for _ in range(2)] == [None, None]
        # When the next run's try is lost once and comes back
        later = LostTries(ctx, job, run_id="run-2", redelivered=True)
        # Then it is that run's first lost try, not the third of the work's
        assert later.begin() is None
        assert later.attempt(lambda: "cut", "cutting it") == "cut"  # and ends, cleared
        # And the third lost try of one run gives up, saying so, its count cleared
        with pytest.raises(LostTooOften, match="cutting it lost its worker process 3 times"):
            cancelled.attempt(lambda: "cut", "cutting it")
        assert cancelled.begin() is None  # afresh: the count was cleared
    finally:
        ctx.close()


def test_a_taken_over_runs_tries_count_on_from_the_run_it_replaced(
    redis_client: redis.Redis,
) -> None:
    # Given an analysis whose first try was lost with its whole worker (a first delivery: not
    # counted), its stale run taken over by reconcile, whose run's try was lost again
    job = f"analysis:{uuid.uuid4().hex}"
    with attempts_context(3) as ctx:
        second = LostTries(ctx, job, run_id="run-2", redelivered=False, taken_over="run-1")
        assert second.begin() is None  # counted: it follows a lost try
        # When the second run is taken over in turn, and that run's try was lost too
        third = LostTries(ctx, job, run_id="run-3", redelivered=False, taken_over="run-2")
        assert third.begin() is None
        assert not redis_client.exists(f"{ctx.board.prefix}:tries:{job}:run-2")  # moved on
        # Then the next takeover's try follows the third lost try and gives up, saying so
        fourth = LostTries(ctx, job, run_id="run-4", redelivered=False, taken_over="run-3")
        with pytest.raises(LostTooOften, match="lost its worker process 3 times"):
            fourth.attempt(lambda: "analysed", "the song's analysis")
        assert not list(redis_client.scan_iter(f"{ctx.board.prefix}:tries:{job}:*"))
        # And a taken-over run's try that ends clears the count: the next takeover starts anew
        fifth = LostTries(ctx, job, run_id="run-5", redelivered=False, taken_over="run-4")
        assert fifth.attempt(lambda: "analysed", "the song's analysis") == "analysed"
        sixth = LostTries(ctx, job, run_id="run-6", redelivered=True, taken_over="run-5")
        assert [sixth.begin() for _ in range(3)] == [None, None, 3]  # its own redeliveries


def test_a_presumed_loss_alone_never_gives_up_even_at_one_attempt(
    redis_client: redis.Redis,
) -> None:
    # Given MVPIPE_MAX_ATTEMPTS=1, and a run taken over after a deploy's warm shutdown (its
    # finalize never started: nothing was lost, the takeover only presumes a loss)
    job = f"finalize:{uuid.uuid4().hex}"
    with attempts_context(1) as ctx:
        taken = LostTries(ctx, job, run_id="run-2", redelivered=False, taken_over="run-1")
        # Then its try runs (it gave up before running: "lost its worker process 1 times")
        assert taken.attempt(lambda: "settled", "the run's finalize") == "settled"
        # And a message a warm shutdown restored unrun (redelivered) runs too
        restored = LostTries(ctx, job, run_id="run-3", redelivered=True)
        assert restored.attempt(lambda: "settled", "the run's finalize") == "settled"
        # But a second loss in a row gives up
        assert restored.begin() is None
        with pytest.raises(LostTooOften, match="lost its worker process 2 times"):
            restored.attempt(lambda: "settled", "the run's finalize")


def test_closing_a_context_closes_its_quick_clients_connections(redis_client: redis.Redis) -> None:
    # Given a context whose quick board has a connection open, named to be found
    ctx = build_context(get_settings())
    name = f"quick-{uuid.uuid4().hex}"
    ctx.quick_board.client.client_setname(name)

    def named() -> int:
        return sum(c.get("name") == name for c in redis_client.client_list())

    assert named() == 1
    # When it is closed
    ctx.close()
    # Then Redis no longer sees that connection
    wait_for(lambda: named() == 0, 10, "the quick client's connection to close")


def test_a_planned_runs_finishes_count_only_its_scenes_and_expire_with_it(
    board: RunBoard, redis_client: redis.Redis
) -> None:
    run_id = str(uuid.uuid4())
    board.keep_run_scenes(run_id, [1, 2])
    assert not board.scene_finished(run_id, 1)
    assert redis_client.ttl(f"{board.prefix}:run:{run_id}:finished") > 0
    board.await_scenes(run_id, 2, [1, 2])  # finalize ran with scene 2 still open
    assert not board.scene_finished(run_id, 1)  # the planning sentinel is not a scene
    assert board.scene_finished(run_id, 2)


def test_an_analysis_ended_before_its_send_was_marked_stays_ended(board: RunBoard) -> None:
    # A fast worker ends the analysis before the create marks it sent: still ended
    board.analysis_ended("p1")
    board.analysis_sent("p1")
    assert board.analysis_age("p1") is None
    # In the usual order: on its way once sent (for as long as since its send), no longer
    # once ended
    board.analysis_sent("p2")
    age = board.analysis_age("p2")
    assert age is not None and 0 <= age < 60
    board.analysis_ended("p2")
    assert board.analysis_age("p2") is None


def test_a_run_whose_work_waits_in_a_queue_stays_alive_that_long(
    board: RunBoard, redis_client: redis.Redis
) -> None:
    # A scene queued for its next stage may wait longer than the run's staleness (2 s here):
    # the run counts as alive for the queue's whole wait, whatever its own mark does.
    run_id, own, waiting = run_marks(board)
    board.keep_run_alive(run_id, 2)
    board.keep_run_waiting(run_id, 600)
    assert redis_client.pttl(waiting) >= 600_000  # what is left covers the wait, each time
    redis_client.delete(own)  # its own mark lapsed
    assert board.run_alive(run_id)
    # A step's later refresh of its own mark, shorter, leaves the wait's mark as it was
    board.touch_run(run_id, 2)
    assert redis_client.pttl(waiting) > 590_000
    # Scenes queued moments later write nothing more (a twentieth of 600 s not passed)
    redis_client.pexpire(waiting, 5_000)
    board.keep_run_waiting(run_id, 600)
    assert redis_client.pttl(waiting) <= 5_000
    # Once both marks lapse, the run is stale
    redis_client.delete(waiting, own)
    assert not board.run_alive(run_id)


def test_an_owed_mark_is_told_from_a_plain_one_and_no_plain_mark_hides_it(board: RunBoard) -> None:
    # Given a scene its execution marked as worked on (a poll's mark, or a stage's in line)
    x = Execution(cast(Context, SimpleNamespace(board=board)), "project", 1, "run", "local")
    x.touch(60)
    assert board.scene_polled("project", 1) and not board.scene_owed("project", 1)
    # When the same execution claims the scene's paid stage, marking it as long
    x.touch(60, owed=True)
    # Then the mark is written again, owed (left as it was, it would not hold the scene past
    # the lease for the claim's record)
    assert board.scene_owed("project", 1)
    # And a plain mark within it leaves it owed, until the job's id is stored (`shorten`)
    x.touch(30)
    assert board.scene_owed("project", 1)
    x.touch(10, shorten=True)
    assert board.scene_polled("project", 1) and not board.scene_owed("project", 1)


def test_another_executions_plain_mark_never_ends_an_owed_one(board: RunBoard) -> None:
    # Given a scene whose paid claim (one execution) marked it owed
    def execution() -> Execution:
        return Execution(cast(Context, SimpleNamespace(board=board)), "project", 1, "run", "local")

    claimer = execution()
    claimer.touch(60, owed=True)
    scene, owed = (
        board._key("live", "scene", "project", 1),
        board._key("live", "owed", "project", 1),
    )
    # When another execution (a late duplicate's poll, a stage queued) marks it plainly,
    # shorter and then longer
    execution().touch(5)
    assert board.scene_owed("project", 1)
    assert board.client.pttl(owed) > 50_000  # not cut to the plain mark's 5 s
    execution().touch(120)
    # Then the mark stays owed (written over, a second submitter would claim the scene past
    # its lease), and once the plain mark lapses the scene is still marked: no lease repair,
    # no orphan poll chain
    assert board.scene_owed("project", 1)
    board.client.delete(scene)
    assert board.scene_polled("project", 1)
    assert not board.claim_poll_chain("project", 1, 60)
    # And only the claimer's stored record ends it, the scene marked plainly
    claimer.touch(10, shorten=True)
    assert board.scene_polled("project", 1) and not board.scene_owed("project", 1)
    assert 0 < board.client.pttl(scene) <= 10_000
    assert board.claim_poll_chain("project", 1, 60) is False  # the plain mark holds it


def test_a_run_marked_alone_lives_by_that_mark_only(board: RunBoard) -> None:
    # Given a run whose last scenes waited in a queue (600 s) and whose own mark is long
    run_id, own, waiting = run_marks(board)
    board.keep_run_waiting(run_id, 600)
    board.touch_run(run_id, 600)
    # When its final video's builder marks it alone for a short window
    board.mark_run_alone(run_id, 0.5)
    # Then both longer marks are gone: the run is alive that window, and stale after it
    assert not board.client.exists(waiting)
    assert 0 < board.client.pttl(own) <= 500
    assert board.run_alive(run_id)
    wait_for(lambda: not board.run_alive(run_id), 10, "the run's short mark to lapse")


def run_marks(board: RunBoard) -> tuple[str, str, str]:
    """A new run's id, and the keys of its own mark and of its waiting mark."""
    run_id = str(uuid.uuid4())
    own = f"{board.prefix}:live:run:{run_id}"
    return run_id, own, f"{own}:waiting"
