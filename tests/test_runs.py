"""Starting, taking over and cancelling runs, with the store and Redis real and the
dispatcher a recording double (no workers: the messages' contents are what is checked)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from typing import Any

import pytest

from mvpipe import api
from mvpipe.deps import Context, get_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import BrokerUnavailable
from mvpipe.models import ProjectStatus
from mvpipe.pipeline.cancel import cancel_runs
from mvpipe.pipeline.plan import plan_run
from mvpipe.pipeline.reconcile import reconcile
from mvpipe.pipeline.runs import regenerate, start_run
from mvpipe.store.claim_outcomes import Claim
from mvpipe.store.projects import ProjectStore
from mvpipe.store.runboard import RunBoard

pytestmark = pytest.mark.integration


class RecordingDispatcher:
    """Keeps the messages it is asked to send instead of sending them."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, str, list[int] | None]] = []
        self.sent: list[tuple[str, tuple[Any, ...]]] = []
        #: the run each takeover's run replaced, by the new run
        self.taken_over: dict[str, str] = {}

    def start_run(
        self,
        project_id: str,
        run_id: str,
        sequences: list[int] | None = None,
        *,
        taken_over: str | None = None,
    ) -> Any:
        self.runs.append((project_id, run_id, sequences))
        if taken_over is not None:
            self.taken_over[run_id] = taken_over
        return run_id

    def resume(self, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(("resume", args))

    def finalize(self, *args: Any) -> Any:
        self.sent.append(("finalize", args))

    def assemble(self, *args: Any) -> Any:
        self.sent.append(("assemble", args))

    def wake(self, parked: Any) -> int:
        return len(list(parked))


class BrokerDown(RecordingDispatcher):
    """The broker refuses every run's message (its publish retry gave up)."""

    def start_run(self, *args: Any, **kwargs: Any) -> Any:
        raise BrokerUnavailable.because(ConnectionError("Connection refused"))


class Interrupted(RecordingDispatcher):
    """The user presses Ctrl-C while the message is published (maybe published already)."""

    def start_run(self, *args: Any, **kwargs: Any) -> Any:
        super().start_run(*args, **kwargs)
        raise KeyboardInterrupt


class WatchedProjects(ProjectStore):
    """The real project store, noting whether a run was alive the moment it was won."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx.table)
        self.board: RunBoard = ctx.board
        self.alive_when_won: list[bool] = []

    def win_run(self, project_id: str, run_id: str, status: ProjectStatus) -> str:
        self.alive_when_won.append(self.board.run_alive(run_id))
        return super().win_run(project_id, run_id, status)

    def take_over_run(
        self, project_id: str, old_run: str, new_run: str, status: ProjectStatus
    ) -> bool:
        self.alive_when_won.append(self.board.run_alive(new_run))
        return super().take_over_run(project_id, old_run, new_run, status)


class TakenOverDuringCancel(ProjectStore):
    """Reconcile takes the run over between cancel's read and its release."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx.table)
        self.new_run: str | None = None

    def settle(self, project_id: str, *, observed_run: str | None, **kwargs: Any) -> bool:
        if observed_run is not None and self.new_run is None and kwargs.get("release"):
            self.new_run = str(uuid.uuid4())
            assert self.take_over_run(
                project_id, observed_run, self.new_run, ProjectStatus.PROCESSING
            )
        return super().settle(project_id, observed_run=observed_run, **kwargs)


def planned_project(scenes: int = 3) -> str:
    return api.create_project(
        "Runs", "Scope.", scenes=[{"prompt": f"scene {n}"} for n in range(1, scenes + 1)]
    )


@pytest.fixture
def ctx(stack: LocalStack) -> Context:
    return get_context()


def test_a_taken_over_regeneration_keeps_its_scope(ctx: Context) -> None:
    # Given a regeneration of scene 2 whose worker died before doing anything
    project_id = planned_project()
    run_id = str(uuid.uuid4())
    assert ctx.scenes.reset_for_regeneration(project_id, 2, run_id=run_id) == Claim.WON
    # When reconcile takes the stale run over
    dispatcher = RecordingDispatcher()
    report = reconcile(ctx, dispatcher, project_ids=[project_id])
    # Then the new run regenerates scene 2 only: the others were left pending by the user
    assert report.runs_taken_over == 1
    [(_, new_run, sequences)] = dispatcher.runs
    assert new_run != run_id and sequences == [2]
    # And a takeover of the takeover keeps it too
    ctx.board.client.delete(ctx.board._key("live", "run", new_run))
    reconcile(ctx, dispatcher, project_ids=[project_id])
    assert dispatcher.runs[-1][2] == [2]


def test_a_run_is_alive_the_moment_it_is_won(ctx: Context) -> None:
    projects = WatchedProjects(ctx)
    watched = dataclasses.replace(ctx, projects=projects)
    dispatcher = RecordingDispatcher()
    project_id = planned_project()
    start_run(watched, dispatcher, project_id)
    # A takeover's new run too (the user's run above went stale without doing anything).
    [(_, run_id, _)] = dispatcher.runs
    ctx.board.client.delete(ctx.board._key("live", "run", run_id))
    assert reconcile(watched, dispatcher, project_ids=[project_id]).runs_taken_over == 1
    assert projects.alive_when_won == [True, True]


def test_cancel_releases_the_run_that_took_over_meanwhile(ctx: Context) -> None:
    # Given a run, taken over by reconcile while a cancel is releasing it
    project_id = planned_project()
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    projects = TakenOverDuringCancel(ctx)
    racing = dataclasses.replace(ctx, projects=projects)
    # When the cancel completes
    cancel_runs(racing, project_id)
    # Then no run is active, and both runs' queued work exits
    assert projects.new_run is not None
    assert ctx.projects.get(project_id).active_run_id is None
    assert ctx.board.cancelled(run_id) and ctx.board.cancelled(projects.new_run)


class CrashingPlanner:
    def plan(self, brief: Any) -> list[Any]:
        raise KeyError("choices")  # e.g. an SDK answering a shape nobody expected


def test_a_planner_that_always_crashes_fails_the_planning(ctx: Context) -> None:
    # Given a project whose planner crashes on every call, re-planned by retries and takeovers
    project_id = api.create_project("Crash", "Never plans.", scene_count=2)
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.GENERATING_SCENES) == run_id
    crashing = dataclasses.replace(ctx, _planners={ctx.settings.planner: CrashingPlanner()})
    outcomes = []
    for _ in range(3 * ctx.settings.max_attempts):
        try:
            outcomes.append(plan_run(crashing, project_id, run_id))
        except KeyError:
            outcomes.append("crashed")
        if ctx.projects.get(project_id).active_run_id is None:
            break
        new_run = str(uuid.uuid4())  # reconcile takes the stale run over
        assert ctx.projects.take_over_run(
            project_id, run_id, new_run, ProjectStatus.GENERATING_SCENES
        )
        run_id = new_run
    # Then planning fails past the attempt limit, saying why, and the run is over
    assert outcomes == ["crashed"] * ctx.settings.max_attempts + [None]
    project = ctx.projects.get(project_id)
    assert project.status == ProjectStatus.FAILED and project.active_run_id is None
    assert project.last_error and "KeyError" in project.last_error
    assert "planning failed" in project.last_error


def test_a_users_run_gives_back_the_attempts_of_a_scene_a_cancelled_run_left_processing(
    ctx: Context,
) -> None:
    # Given a scene whose every submission attempt was spent by a cancelled run, the last one
    # left `processing` with its lease expired (the worker stopped mid-submit)
    project_id = planned_project(1)
    first = start_run(ctx, RecordingDispatcher(), project_id).run_id
    assert first is not None
    limit, now = ctx.settings.max_attempts, time.time()
    for n in range(limit):
        claimed_at = now - 100 * (limit - n)  # each lease long expired before the next claim
        assert (
            ctx.scenes.claim(
                project_id,
                1,
                run_id=first,
                token=f"t{n}",
                lease_seconds=60,
                max_attempts=limit,
                now=claimed_at,
            ).outcome
            == Claim.WON
        )
    cancel_runs(ctx, project_id)
    # When the user runs the project again
    second = start_run(ctx, RecordingDispatcher(), project_id).run_id
    assert second is not None
    # Then the scene has its attempts back: the run submits it instead of failing it unpaid
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.attempts == 0
    outcome = ctx.scenes.claim(
        project_id, 1, run_id=second, token="t-next", lease_seconds=60, max_attempts=limit
    ).outcome
    assert outcome == Claim.WON


def test_a_stale_run_is_kept_while_a_claimed_scene_is_marked_alive(ctx: Context) -> None:
    # Given a stale run whose scene was claimed, its lease run out, and whose execution still
    # marks it alive: the record of a job the provider may have accepted is still owed
    project_id = planned_project(1)
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    claimed = ctx.scenes.claim(
        project_id, 1, run_id=run_id, token=uuid.uuid4().hex, lease_seconds=60,
        max_attempts=3, now=time.time() - 120,
    )  # fmt: skip
    assert claimed.outcome == Claim.WON
    ctx.board.touch_scene(project_id, 1, 60, owed=True)
    # When reconcile passes
    dispatcher = RecordingDispatcher()
    report = reconcile(ctx, dispatcher, project_ids=[project_id])
    # Then the run is kept: a new run would claim the scene again and pay for a second job
    assert (report.runs_taken_over, dispatcher.runs) == (0, []), report
    assert ctx.projects.get(project_id).active_run_id == run_id
    # And once the mark lapses (its execution died), the run is taken over
    ctx.board.client.delete(*(ctx.board._key("live", m, project_id, 1) for m in ("scene", "owed")))
    assert reconcile(ctx, dispatcher, project_ids=[project_id]).runs_taken_over == 1
    assert ctx.projects.get(project_id).active_run_id == dispatcher.runs[0][1] != run_id


@pytest.mark.parametrize("planned", [True, False])
def test_a_run_never_sent_is_released_and_a_retry_sends_one(ctx: Context, planned: bool) -> None:
    # Given a project whose run is won while the broker refuses its message
    if planned:
        project_id = planned_project()
    else:
        project_id = api.create_project("Unsent", "Never sent.", scene_count=2)
    with pytest.raises(BrokerUnavailable):
        start_run(ctx, BrokerDown(), project_id)
    # Then no run is active (a retry would have joined it, and nothing run until it went
    # stale), and the project waits for a run, saying why
    project = ctx.projects.get(project_id)
    assert project.active_run_id is None and project.status == ProjectStatus.PENDING
    assert project.last_error == "the run was not started (BrokerUnavailable); run it again"
    # And the user's retry sends one run
    dispatcher = RecordingDispatcher()
    run_id = start_run(ctx, dispatcher, project_id).run_id
    assert run_id is not None and dispatcher.runs == [(project_id, run_id, None)]
    assert ctx.projects.get(project_id).active_run_id == run_id


def test_a_regeneration_never_sent_is_released_and_a_retry_sends_one(ctx: Context) -> None:
    # Given a regeneration of scene 2 whose message the broker refuses
    project_id = planned_project()
    with pytest.raises(BrokerUnavailable):
        regenerate(ctx, BrokerDown(), project_id, 2)
    assert ctx.projects.get(project_id).active_run_id is None
    # When the user retries: the regeneration is sent (not refused as a `Conflict`)
    dispatcher = RecordingDispatcher()
    run_id = regenerate(ctx, dispatcher, project_id, 2).run_id
    assert run_id is not None and dispatcher.runs == [(project_id, run_id, [2])]


def test_a_run_interrupted_while_sent_is_released_and_its_message_plans_nothing(
    ctx: Context,
) -> None:
    # Given a run whose publish the user interrupted after the message left
    project_id = planned_project()
    dispatcher = Interrupted()
    with pytest.raises(KeyboardInterrupt):
        start_run(ctx, dispatcher, project_id)
    [(_, run_id, _)] = dispatcher.runs
    # Then the run is released, its mark gone, and its message, delivered, plans nothing
    assert ctx.projects.get(project_id).active_run_id is None
    assert not ctx.board.run_alive(run_id)
    assert plan_run(ctx, project_id, run_id) is None
    assert not ctx.board.run_alive(run_id)
    # And the user's retry sends one run
    retry = RecordingDispatcher()
    new_run = start_run(ctx, retry, project_id).run_id
    assert new_run not in (None, run_id) and retry.runs == [(project_id, new_run, None)]
