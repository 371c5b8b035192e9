"""Each transition's condition, against a real moto server over HTTP (invariants 1-3, 7)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mvpipe import api
from mvpipe.deps import Context, get_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import InvalidInput, NotFound
from mvpipe.models import ProjectSpec, ProjectStatus, SceneSpec, SceneStatus
from mvpipe.pipeline.finalize import settle_project
from mvpipe.states import Counters
from mvpipe.store.claim_outcomes import Claim, ClaimResult
from mvpipe.store.finals import final_video_key
from mvpipe.store.records import SceneRecord, utc_now_iso
from mvpipe.store.stage_fields import LIP_SYNCED, ORIGINAL, OUTPUT_ORDER, WORKING
from mvpipe.store.table import project_pk, scene_sk
from tests.helpers import new_project

pytestmark = pytest.mark.integration


def claimed(
    ctx: Context,
    project_id: str,
    run_id: str,
    token: str,
    sequence: int = 1,
    *,
    now: float | None = None,
    **stage: Any,
) -> ClaimResult:
    """A 60 s lease of 3 attempts; `now` in the past ages it, `stage` picks a later stage (or
    a price to reserve)."""
    return ctx.scenes.claim(
        project_id,
        sequence,
        run_id=run_id,
        token=token,
        lease_seconds=60,
        max_attempts=3,
        now=now,
        **stage,
    )


def claim(
    ctx: Context, project_id: str, run_id: str, token: str, sequence: int = 1, **kw: Any
) -> Claim:
    """The outcome of `claimed`."""
    return claimed(ctx, project_id, run_id, token, sequence, **kw).outcome


@pytest.fixture
def ctx(stack: LocalStack) -> Context:
    return get_context()


def test_many_threads_racing_for_one_lease_exactly_one_wins(ctx: Context) -> None:
    project_id, run_id = new_project(ctx)
    tokens = [uuid.uuid4().hex for _ in range(16)]
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda t: claim(ctx, project_id, run_id, t), tokens))
    assert outcomes.count(Claim.WON) == 1
    winner = tokens[outcomes.index(Claim.WON)]
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.lease_token == winner and scene.attempts == 1


def test_a_stale_token_cannot_record_an_operation(ctx: Context) -> None:
    project_id, run_id = new_project(ctx)
    assert claim(ctx, project_id, run_id, "mine") == Claim.WON
    outcome = ctx.scenes.record_operation(
        project_id, 1, token="stale", operation_id="op-x", run_id=run_id
    )
    assert outcome == Claim.NOT_CLAIMABLE
    assert ctx.scenes.get(project_id, 1).operation_id is None  # type: ignore[union-attr]


def test_recording_twice_with_the_same_token_reports_success(ctx: Context) -> None:
    project_id, run_id = new_project(ctx)
    assert claim(ctx, project_id, run_id, "mine") == Claim.WON
    for _ in range(2):
        outcome = ctx.scenes.record_operation(
            project_id, 1, token="mine", operation_id="op-1", run_id=run_id
        )
        assert outcome == Claim.WON
    # With an operation stored, nobody can claim the scene again.
    assert claim(ctx, project_id, run_id, "other") == Claim.NOT_CLAIMABLE


def cut(
    ctx: Context, project_id: str, sequence: int, original: str, key: str, *, last: bool = True
) -> bool:
    written = ctx.scenes.record_output(
        project_id,
        sequence,
        stage=WORKING,
        key=key,
        made_from=(ORIGINAL.output, original),
        last=last,
    )
    return written is not None


def original_recorded(ctx: Context) -> tuple[str, str]:
    """A new project whose scene 1 has its original "k1" recorded by operation "op-1": the
    scene is `processing`, waiting for its cut."""
    project_id, run_id = new_project(ctx)
    assert claim(ctx, project_id, run_id, "t") == Claim.WON
    assert (
        ctx.scenes.record_operation(project_id, 1, token="t", operation_id="op-1", run_id=run_id)
        == Claim.WON
    )
    assert ctx.scenes.complete(project_id, 1, operation_id="op-1", clip_key="k1")
    return project_id, run_id


def test_a_wrong_operation_cannot_record_a_clip_and_recording_is_idempotent(
    ctx: Context,
) -> None:
    project_id, run_id = new_project(ctx)
    assert claim(ctx, project_id, run_id, "t") == Claim.WON
    assert (
        ctx.scenes.record_operation(project_id, 1, token="t", operation_id="op-1", run_id=run_id)
        == Claim.WON
    )
    assert not ctx.scenes.complete(project_id, 1, operation_id="op-2", clip_key="k2")
    assert ctx.scenes.get(project_id, 1).status == SceneStatus.PROCESSING  # type: ignore[union-attr]
    assert ctx.scenes.complete(project_id, 1, operation_id="op-1", clip_key="k1")
    assert ctx.scenes.complete(project_id, 1, operation_id="op-1", clip_key="k1")  # retried write
    scene = ctx.scenes.get(project_id, 1)
    # The original is recorded; the scene waits for its cut, with no lease (nobody may claim it).
    assert scene is not None and scene.status == SceneStatus.PROCESSING and scene.clip_key == "k1"
    assert scene.lease_token is None and scene.working_clip_key is None
    assert claim(ctx, project_id, run_id, "other") == Claim.NOT_CLAIMABLE


def test_the_cut_is_recorded_only_from_the_original_it_was_cut_from(ctx: Context) -> None:
    project_id, run_id = new_project(ctx)
    assert claim(ctx, project_id, run_id, "t") == Claim.WON
    assert (
        ctx.scenes.record_operation(project_id, 1, token="t", operation_id="op-1", run_id=run_id)
        == Claim.WON
    )
    assert not cut(ctx, project_id, 1, "k1", "w1")  # no original recorded yet
    assert ctx.scenes.complete(project_id, 1, operation_id="op-1", clip_key="k1")
    assert not cut(ctx, project_id, 1, "k-stale", "w-stale")  # cut from another original
    assert ctx.scenes.get(project_id, 1).status == SceneStatus.PROCESSING  # type: ignore[union-attr]
    assert cut(ctx, project_id, 1, "k1", "w1")
    assert cut(ctx, project_id, 1, "k1", "w1")  # a duplicate cut finds its own write
    assert not cut(ctx, project_id, 1, "k1", "w-other")  # never overwrites a recorded cut
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.COMPLETED
    assert (scene.clip_key, scene.working_clip_key) == ("k1", "w1")
    # The working clip vanished: only it is made again (the original is kept, nothing paid).
    assert ctx.scenes.reset_outputs(project_id, 1, stage=WORKING, key="w1")
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.PENDING
    assert (scene.clip_key, scene.working_clip_key, scene.attempts) == ("k1", None, 1)
    assert claim(ctx, project_id, run_id, "again") == Claim.NOT_CLAIMABLE


def test_a_cut_that_fails_keeps_the_original(ctx: Context) -> None:
    project_id, _run_id = original_recorded(ctx)
    assert not ctx.scenes.fail(
        project_id, 1, error="undecodable", made_from=(ORIGINAL.output, "k0"), stage=WORKING
    )
    assert ctx.scenes.fail(
        project_id, 1, error="undecodable", made_from=(ORIGINAL.output, "k1"), stage=WORKING
    )
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.FAILED
    assert scene.clip_key == "k1" and scene.last_error == "undecodable"


def test_a_late_poll_of_a_recorded_generation_cannot_fail_the_scene(ctx: Context) -> None:
    # The operation id stays on the scene after its original is recorded: a duplicate poll of
    # it whose download fails (the provider deleted the output) must not fail the scene.
    project_id, _run_id = original_recorded(ctx)
    assert not ctx.scenes.fail(project_id, 1, error="output expired", operation_id="op-1")
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.PROCESSING
    assert scene.clip_key == "k1" and scene.last_error is None


def lip_sync_running(ctx: Context) -> str:
    """`original_recorded`, cut ("w1"), and its lip-sync's job "ls-1" stored."""
    project_id, run_id = original_recorded(ctx)
    assert cut(ctx, project_id, 1, "k1", "w1", last=False)
    assert claim(ctx, project_id, run_id, "ls", stage=LIP_SYNCED, requires=WORKING.output) == (
        Claim.WON
    )
    assert (
        ctx.scenes.record_operation(
            project_id, 1, token="ls", operation_id="ls-1", run_id=run_id, stage=LIP_SYNCED
        )
        == Claim.WON
    )
    return project_id


def test_a_late_poll_cannot_fail_a_scene_under_its_lip_sync(ctx: Context) -> None:
    project_id = lip_sync_running(ctx)
    # The generation's late poll gives up: the running lip-sync is still the scene's.
    assert not ctx.scenes.fail(project_id, 1, error="output expired", operation_id="op-1")
    # Recorded as if a stage followed it (the scene stays processing): the lip-sync's own late
    # poll is refused by its output alone.
    recorded = ctx.scenes.complete(
        project_id, 1, operation_id="ls-1", clip_key="l1", stage=LIP_SYNCED
    )
    assert recorded is not None and recorded.status == SceneStatus.PROCESSING
    assert not ctx.scenes.fail(
        project_id, 1, error="output expired", operation_id="ls-1", stage=LIP_SYNCED
    )
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.PROCESSING
    assert (scene.clip_key, scene.working_clip_key, scene.lip_synced_clip_key) == ("k1", "w1", "l1")
    # Before its output is recorded, the lip-sync's job fails the scene, whose original is kept.
    project_id = lip_sync_running(ctx)
    assert ctx.scenes.fail(project_id, 1, error="blocked", operation_id="ls-1", stage=LIP_SYNCED)
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.FAILED and scene.clip_key == "k1"


def test_completed_is_never_written_without_an_operation_and_a_clip(ctx: Context) -> None:
    project_id, _run_id = new_project(ctx)
    # No operation stored: completion is refused whatever the caller claims.
    assert not ctx.scenes.complete(project_id, 1, operation_id="op-1", clip_key="k")
    assert ctx.scenes.get(project_id, 1).status == SceneStatus.PENDING  # type: ignore[union-attr]


def test_a_failed_scene_cannot_be_claimed_by_a_redelivered_task(ctx: Context) -> None:
    project_id, run_id = new_project(ctx)
    assert claim(ctx, project_id, run_id, "t") == Claim.WON
    assert ctx.scenes.fail(project_id, 1, error="blocked", token="t")
    assert claim(ctx, project_id, run_id, "again") == Claim.NOT_CLAIMABLE
    assert ctx.scenes.get(project_id, 1).status == SceneStatus.FAILED  # type: ignore[union-attr]


def test_no_claim_without_the_active_run(ctx: Context) -> None:
    project_id, run_id = new_project(ctx, run=False)
    assert claim(ctx, project_id, run_id, "t") == Claim.RUN_INACTIVE
    assert ctx.scenes.get(project_id, 1).status == SceneStatus.PENDING  # type: ignore[union-attr]


def test_attempts_are_limited(ctx: Context) -> None:
    project_id, run_id = new_project(ctx)
    for n in range(3):
        assert claim(ctx, project_id, run_id, f"t{n}") == Claim.WON
        assert ctx.scenes.release_lease(project_id, 1, token=f"t{n}", error="503")
    assert claim(ctx, project_id, run_id, "t4") == Claim.EXHAUSTED


def test_one_run_at_a_time(ctx: Context) -> None:
    project_id, run_id = new_project(ctx)
    assert ctx.projects.win_run(project_id, "other", ProjectStatus.PROCESSING) == run_id
    assert ctx.scenes.reset_for_regeneration(project_id, 1, run_id="other") != Claim.WON


def test_only_the_active_run_records_the_final_video_and_its_retry_reports_success(
    ctx: Context,
) -> None:
    # invariants 8 and 7: a run taken over (or cancelled) records nothing; the active run's
    # write, retried after its reply was lost, finds its own key and reports success
    key = final_video_key(str(uuid.uuid4()), "0123456789abcdef")
    taken, old_run = new_project(ctx)
    assert ctx.projects.take_over_run(taken, old_run, "taken", ProjectStatus.PROCESSING)
    before = ctx.projects.get(taken)
    counters = ctx.projects.load(taken).counters
    assert not ctx.projects.record_final_video(taken, old_run, key, counters)
    assert ctx.projects.get(taken) == before
    project_id, run_id = new_project(ctx)
    counters = ctx.projects.load(project_id).counters
    assert ctx.projects.record_final_video(project_id, run_id, key, counters)
    assert ctx.projects.record_final_video(project_id, run_id, key, counters)
    project = ctx.projects.get(project_id)
    assert (project.final_video_key, project.active_run_id, project.status) == (
        key,
        None,
        ProjectStatus.COMPLETED,
    )


def partly_planned(ctx: Context, *, leased: int | None = None) -> tuple[str, str]:
    """An unplanned project whose run's planner wrote scenes 1..5 (old prompts) and crashed
    before marking it planned; with `leased`, that scene's claim holds a lease token. Returns
    (project, run)."""
    project_id = api.create_project("Partial", "Planned twice.", scene_count=3)
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.GENERATING_SCENES) == run_id
    old = [SceneSpec(prompt=f"old {n}", duration_seconds=4) for n in range(1, 6)]
    for item in ctx.projects._scene_items(project_id, old, utc_now_iso()):
        if item.sequence == leased:
            item.lease_token = "claimed"
        item.save()
    return project_id, run_id


def test_a_plan_replaces_a_partial_plan_and_never_a_claimed_scene(ctx: Context) -> None:
    new = [SceneSpec(prompt=f"new {n}", duration_seconds=4) for n in range(1, 4)]
    # the partial plan's five scenes become the plan's three, scenes 4 and 5 deleted
    project_id, run_id = partly_planned(ctx)
    assert ctx.projects.save_plan(project_id, run_id, new, token="t")
    state = ctx.projects.load(project_id)
    assert [(s.sequence, s.prompt) for s in state.scenes] == [(n, f"new {n}") for n in (1, 2, 3)]
    assert state.project.scene_count == 3
    # a partial scene that holds a lease (being claimed: maybe paid) stops the plan whole
    project_id, run_id = partly_planned(ctx, leased=2)
    before = ctx.projects.load(project_id)
    assert not ctx.projects.save_plan(project_id, run_id, new, token="t")
    assert ctx.projects.load(project_id) == before
    assert before.project.scene_count is None and len(before.scenes) == 5


def test_finalize_give_ups_are_counted_across_takeovers_and_reset_by_a_users_run(
    ctx: Context,
) -> None:
    project_id, run_id = new_project(ctx)
    assert ctx.projects.count_finalize_give_up(project_id, run_id, "finalize failed: x") == 1
    assert ctx.projects.take_over_run(project_id, run_id, "taken", ProjectStatus.PROCESSING)
    # the old run counts nothing; the run that took it over goes on from its count
    assert ctx.projects.count_finalize_give_up(project_id, run_id, "late") is None
    assert ctx.projects.count_finalize_give_up(project_id, "taken", "finalize failed: y") == 2
    project = ctx.projects.get(project_id)
    assert (project.finalize_give_ups, project.last_error) == (2, "finalize failed: y")
    assert ctx.projects.settle(
        project_id,
        observed_run="taken",
        counters=ctx.projects.load(project_id).counters,
        status=ProjectStatus.PENDING,
        release=True,
    )
    assert ctx.projects.win_run(project_id, "user", ProjectStatus.PROCESSING) == "user"
    assert ctx.projects.get(project_id).finalize_give_ups == 0


def release_run(ctx: Context, project_id: str, run_id: str) -> None:
    """The run ends as a finished one does (`pending`, released): a user may regenerate."""
    assert ctx.projects.settle(
        project_id,
        observed_run=run_id,
        counters=ctx.projects.load(project_id).counters,
        status=ProjectStatus.PENDING,
        release=True,
    )


def test_a_regeneration_starts_finalize_give_ups_afresh(ctx: Context) -> None:
    """A regeneration is a user's run too: a run ended by finalize's give-ups must not end the
    regeneration's run at once (reconcile ends a stale run already at the limit)."""
    project_id, run_id = new_project(ctx)
    for n in (1, 2, 3):
        assert ctx.projects.count_finalize_give_up(project_id, run_id, "finalize failed: x") == n
    release_run(ctx, project_id, run_id)
    assert ctx.scenes.reset_for_regeneration(project_id, 1, run_id="again") == Claim.WON
    project = ctx.projects.get(project_id)
    assert (project.active_run_id, project.finalize_give_ups, project.last_error) == (
        "again",
        0,
        None,
    )


def test_a_regeneration_clears_every_stage_the_scene_has_made(ctx: Context) -> None:
    """A regeneration makes the scene again from its first stage: every stage's output, with a
    paid stage's operation and attempts, goes (one missed would keep an old clip in the new
    video, or spent attempts), and the scene's failure, expired lease and kept operation."""
    project_id, run_id = new_project(ctx, 1)
    release_run(ctx, project_id, run_id)
    m = ctx.table.model
    made = [
        m.status.set(SceneStatus.FAILED),
        m.operation_kept.set(True),
        m.completed_at.set(utc_now_iso()),
        m.last_error.set("blocked"),
        m.lease_token.set("gone"),
        m.lease_expires_at.set(time.time() - 1),
    ]
    for stage in OUTPUT_ORDER:
        made.append(getattr(m, stage.output).set(f"projects/{project_id}/{stage.output}.mp4"))
        if stage.operation is not None and stage.attempts is not None:
            made += [getattr(m, stage.operation).set("op-1"), getattr(m, stage.attempts).set(2)]
    assert ctx.table.update_item(project_pk(project_id), scene_sk(1), made, m.pk.exists())
    before = ctx.scenes.get(project_id, 1)
    assert before is not None and all(before.value(s.output) for s in OUTPUT_ORDER)
    assert ctx.scenes.reset_for_regeneration(project_id, 1, run_id="again") == Claim.WON
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None
    for stage in OUTPUT_ORDER:
        assert scene.value(stage.output) is None, stage
        if stage.operation is not None:
            assert (scene.value(stage.operation), scene.value(stage.attempts)) == (None, 0), stage
    assert (scene.status, scene.operation_kept, scene.completed_at, scene.last_error) == (
        SceneStatus.PENDING,
        False,
        None,
        None,
    )
    assert (scene.lease_token, scene.lease_expires_at) == (None, None)


def test_bad_input_to_create_writes_nothing(ctx: Context) -> None:
    before = ctx.table.model.count()
    bad_calls = [
        dict(title="", concept="c"),
        dict(title="t", concept="c\x00"),
        dict(title="t", concept="c", scene_count=0),
        dict(title="t", concept="c", scene_count=1000),
        dict(title="t", concept="c", provider="nope"),
        dict(title="t", concept="c", scene_count=2, scenes=[{"prompt": "one"}]),
        dict(title="t", concept="c", scenes=[{"prompt": "ok"}, {"prompt": "x" * 5000}]),
        dict(title="t" * 201, concept="c"),
    ]
    for kwargs in bad_calls:
        with pytest.raises(InvalidInput):
            api.create_project(**kwargs)  # type: ignore[arg-type]
    assert ctx.table.model.count() == before
    with pytest.raises(NotFound):
        api.get_project(str(uuid.uuid4()))


class RecountMachine(RuleBasedStateMachine):
    """Any sequence of transitions, then settle: counters always equal a recount (invariant 4)."""

    SCENES = 4

    @initialize()
    def start(self) -> None:
        self.ctx = get_context()
        self.project_id, self.run_id = new_project(self.ctx, self.SCENES)
        self.tokens: dict[int, str] = {}
        self.ops: dict[int, str] = {}

    @rule(seq=st.integers(1, SCENES))
    def claim_and_submit(self, seq: int) -> None:
        token = uuid.uuid4().hex
        if claim(self.ctx, self.project_id, self.run_id, token, seq) == Claim.WON:
            self.tokens[seq] = token
            op = f"op-{uuid.uuid4().hex}"
            self.ctx.scenes.record_operation(
                self.project_id, seq, token=token, operation_id=op, run_id=self.run_id
            )
            self.ops[seq] = op

    @rule(seq=st.integers(1, SCENES))
    def complete(self, seq: int) -> None:
        if seq in self.ops:
            self.ctx.scenes.complete(
                self.project_id, seq, operation_id=self.ops[seq], clip_key=f"k{seq}"
            )

    @rule(seq=st.integers(1, SCENES))
    def cut(self, seq: int) -> None:
        if seq in self.ops:
            cut(self.ctx, self.project_id, seq, f"k{seq}", f"w{seq}")

    @rule(seq=st.integers(1, SCENES))
    def fail(self, seq: int) -> None:
        if seq in self.ops:
            self.ctx.scenes.fail(self.project_id, seq, error="x", operation_id=self.ops[seq])

    @rule(seq=st.integers(1, SCENES))
    def retry_failed(self, seq: int) -> None:
        if self.ctx.scenes.retry_failed(self.project_id, seq):
            self.ops.pop(seq, None)

    @rule()
    def settle(self) -> None:
        state = self.ctx.projects.load(self.project_id)
        settle_project(self.ctx, state, release_run=self.run_id)

    @invariant()
    def counters_match_recount_after_settling(self) -> None:
        if not hasattr(self, "ctx"):
            return
        settle_project(self.ctx, self.ctx.projects.load(self.project_id))
        state = self.ctx.projects.load(self.project_id)
        counters = Counters.of(s.status for s in state.scenes)
        assert state.project.completed_scenes == counters.completed_scenes
        assert state.project.failed_scenes == counters.failed_scenes
        assert state.project.scene_count == counters.scene_count
        for scene in state.scenes:
            outputs = (scene.clip_key, scene.working_clip_key)
            assert (scene.status == SceneStatus.COMPLETED) == all(outputs)


TestRecount = RecountMachine.TestCase
TestRecount.settings = settings(
    max_examples=8,
    stateful_step_count=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(autouse=True)
def _stack_for_machine(stack: LocalStack) -> None:
    """The state machine's test case needs the servers too."""


def test_a_users_run_gives_a_scene_at_its_attempt_limit_its_attempts_back(ctx: Context) -> None:
    project_id, run_id = new_project(ctx)
    for n in range(3):  # cancelled mid-submit three times: pending, no attempts left
        assert claim(ctx, project_id, run_id, f"t{n}") == Claim.WON
        assert ctx.scenes.release_lease(project_id, 1, token=f"t{n}", error="run cancelled")
    assert claim(ctx, project_id, run_id, "t3") == Claim.EXHAUSTED
    for _ in range(2):  # the second call finds its own write: success (invariant 7)
        assert ctx.scenes.restore_attempts(project_id, 1, max_attempts=3)
    assert ctx.scenes.get(project_id, 1).attempts == 0  # type: ignore[union-attr]
    assert claim(ctx, project_id, run_id, "t4") == Claim.WON
    # A scene owned by an operation is left alone: it needs no new submission.
    assert (
        ctx.scenes.record_operation(project_id, 1, token="t4", operation_id="op", run_id=run_id)
        == Claim.WON
    )
    assert not ctx.scenes.restore_attempts(project_id, 1, max_attempts=1)
    assert ctx.scenes.get(project_id, 1).attempts == 1  # type: ignore[union-attr]


def twice(write: Callable[[], object]) -> None:
    """Invariant 7: a write retried after its first attempt landed reports success (a write
    that returns the scene it wrote reports it both times)."""
    first, second = (_outcome(write()) for _ in range(2))
    assert first in (True, Claim.WON), first
    assert second == first, (first, second)


def _outcome(result: object) -> object:
    return True if isinstance(result, SceneRecord) else result


def test_every_scene_transition_retried_after_it_landed_reports_success(ctx: Context) -> None:
    project_id, run_id = new_project(ctx, 3)
    s = ctx.scenes

    def claim_as(token: str, sequence: int = 1, lease: float = 60) -> Claim:
        return s.claim(
            project_id, sequence, run_id=run_id, token=token, lease_seconds=lease, max_attempts=3
        ).outcome

    # Scene 1: claim, release, claim, record, cancel-reset, claim, record, complete,
    # reset (clip lost), then regenerate.
    twice(lambda: claim_as("a"))
    twice(lambda: s.release_lease(project_id, 1, token="a", error="503"))
    twice(lambda: claim_as("b"))
    twice(lambda: s.record_operation(project_id, 1, token="b", operation_id="op-b", run_id=run_id))
    twice(lambda: s.reset_cancelled(project_id, 1, operation_id="op-b"))
    twice(lambda: claim_as("c"))
    twice(lambda: s.record_operation(project_id, 1, token="c", operation_id="op-c", run_id=None))
    twice(lambda: s.complete(project_id, 1, operation_id="op-c", clip_key="k-c"))
    twice(lambda: cut(ctx, project_id, 1, "k-c", "w-c"))
    twice(lambda: s.reset_outputs(project_id, 1, stage=WORKING, key="w-c"))
    twice(lambda: cut(ctx, project_id, 1, "k-c", "w-c2"))
    twice(lambda: s.reset_missing_clip(project_id, 1, clip_key="k-c"))
    # Scene 2: failed by its lease holder, retried by a user, failed by its operation, then
    # failed at its attempt limit after an expired lease.
    twice(lambda: claim_as("d", 2))
    twice(lambda: s.fail(project_id, 2, error="blocked", token="d"))
    twice(lambda: s.retry_failed(project_id, 2))
    twice(lambda: claim_as("e", 2))
    twice(lambda: s.record_operation(project_id, 2, token="e", operation_id="op-e", run_id=run_id))
    twice(lambda: s.fail(project_id, 2, error="safety", operation_id="op-e"))
    # Scene 3: a dead submitter's lease expires; at the limit the scene fails, and a user's
    # run gives the attempts back.
    twice(lambda: claim_as("f", 3, lease=-1))
    twice(lambda: s.expire_lease(project_id, 3, token="f", now=time.time()))
    for n in range(2):
        assert claim_as(f"g{n}", 3) == Claim.WON
        assert s.release_lease(project_id, 3, token=f"g{n}", error="cancelled")
    twice(lambda: s.restore_attempts(project_id, 3, max_attempts=3))
    for n in range(3):
        assert claim_as(f"h{n}", 3) == Claim.WON
        assert s.release_lease(project_id, 3, token=f"h{n}", error="503")
    twice(lambda: s.fail(project_id, 3, error="no attempts left", max_attempts=3))
    # Regeneration wins the run, released first as a finished run would be.
    release_run(ctx, project_id, run_id)
    twice(lambda: s.reset_for_regeneration(project_id, 1, run_id="regen"))
    final = {x.sequence: x.status for x in ctx.projects.load(project_id).scenes}
    assert final == {1: SceneStatus.PENDING, 2: SceneStatus.FAILED, 3: SceneStatus.FAILED}


def unplanned_project(ctx: Context, scenes: int) -> tuple[str, str]:
    project_id = str(uuid.uuid4())
    spec = ProjectSpec(
        title="Test", concept="A concept", provider="local", requested_scene_count=scenes
    )
    ctx.projects.create(project_id, spec)
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.GENERATING_SCENES) == run_id
    return project_id, run_id


def test_a_plan_larger_than_one_transaction_is_written_whole(ctx: Context) -> None:
    project_id, run_id = unplanned_project(ctx, 150)
    specs = [SceneSpec(prompt=f"scene {n}", duration_seconds=8) for n in range(1, 151)]
    assert ctx.projects.save_plan(project_id, run_id, specs, token="t")
    state = ctx.projects.load(project_id)
    assert state.project.scene_count == 150
    assert [s.prompt for s in state.scenes] == [s.prompt for s in specs]


def test_a_second_plan_of_a_planned_run_writes_nothing(ctx: Context) -> None:
    project_id, run_id = unplanned_project(ctx, 3)
    assert ctx.projects.save_plan(
        project_id, run_id, [SceneSpec(prompt="a", duration_seconds=8)] * 3, token="t1"
    )
    assert claim(ctx, project_id, run_id, "lease") == Claim.WON
    assert not ctx.projects.save_plan(
        project_id, run_id, [SceneSpec(prompt="b", duration_seconds=8)] * 3, token="t2"
    )
    state = ctx.projects.load(project_id)
    assert [s.prompt for s in state.scenes] == ["a"] * 3
    assert state.scenes[0].lease_token == "lease"


def test_a_plan_written_twice_by_its_planner_reports_success(ctx: Context) -> None:
    # Invariant 7: the final write landed, its reply was lost, the planner writes again.
    project_id, run_id = unplanned_project(ctx, 2)
    specs = [SceneSpec(prompt="a", duration_seconds=8)] * 2
    assert ctx.projects.save_plan(project_id, run_id, specs, token="planner-1")
    assert ctx.projects.save_plan(project_id, run_id, specs, token="planner-1")
    # Another planner of the same run did not write this plan: it must not start a chord.
    assert not ctx.projects.save_plan(project_id, run_id, specs, token="planner-2")
    assert ctx.projects.get(project_id).scene_count == 2


def test_every_project_transition_retried_after_it_landed_reports_success(ctx: Context) -> None:
    # Invariant 7: each write sent twice, as a retry after a lost reply does.
    project_id, run_id = unplanned_project(ctx, 2)
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.GENERATING_SCENES) == run_id
    new_run = str(uuid.uuid4())
    for _ in range(2):
        assert ctx.projects.take_over_run(
            project_id, run_id, new_run, ProjectStatus.GENERATING_SCENES
        )
    for _ in range(2):
        assert ctx.projects.note_planning_error(project_id, new_run, "429 from the planner")
    for _ in range(2):
        assert ctx.projects.fail_planning(project_id, new_run, "no plan")
    project = ctx.projects.get(project_id)
    assert project.status == ProjectStatus.FAILED and project.active_run_id is None

    project_id, run_id = new_project(ctx, 2)
    counters = Counters(scene_count=2, completed_scenes=0, failed_scenes=0, open_scenes=2)
    for _ in range(2):
        assert ctx.projects.settle(
            project_id,
            observed_run=run_id,
            counters=counters,
            status=ProjectStatus.PENDING,
            release=True,
        )
    assert ctx.projects.get(project_id).active_run_id is None
    # A settle that did not land, and finds another state, still reports the conflict.
    assert not ctx.projects.settle(
        project_id,
        observed_run=run_id,
        counters=counters,
        status=ProjectStatus.FAILED,
        release=True,
    )


def test_a_settle_from_an_older_read_never_writes_over_a_newer_one(ctx: Context) -> None:
    """Two recounts race while a run works (a reconcile pass beside the run's finalize): the
    one read first must not land its older counters and status over the later one's."""
    project_id, run_id = new_project(ctx, 2)

    def complete(sequence: int) -> None:
        token, operation_id = f"t{sequence}", f"op{sequence}"
        assert claim(ctx, project_id, run_id, token, sequence) == Claim.WON
        s = ctx.scenes
        assert s.record_operation(
            project_id, sequence, token=token, operation_id=operation_id, run_id=run_id
        )
        assert s.complete(
            project_id, sequence, operation_id=operation_id, clip_key=f"k{sequence}", last=True
        )

    complete(1)
    older = ctx.projects.load(project_id)  # a reconcile pass reads: one scene completed
    complete(2)
    # The run's finalize reads after the last scene and settles: both completed, assembling
    read = ctx.projects.load(project_id)
    newer = settle_project(ctx, read, release_run=run_id)
    assert newer is not None and newer.assemble
    # (the same write again, as after a timeout whose first attempt landed: success, inv. 7)
    assert settle_project(ctx, read, release_run=run_id) == newer
    assert ctx.projects.get(project_id).status == ProjectStatus.ASSEMBLING
    # When the older read's settle comes after it, it writes nothing
    assert settle_project(ctx, older) is None
    project = ctx.projects.get(project_id)
    assert (project.completed_scenes, project.status) == (2, ProjectStatus.ASSEMBLING)
    assert project.active_run_id == run_id
    # and a settle from a fresh read still lands (nothing to change: the newer one stands)
    fresh = settle_project(ctx, ctx.projects.load(project_id))
    assert fresh is not None and not fresh.changed
