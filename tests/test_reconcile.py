"""Reconcile: each kind of damage made on purpose, repaired in one pass; the next finds none."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from mvpipe import api
from mvpipe.deps import Context, get_context
from mvpipe.devstack.localstack import LocalStack, start_beat
from mvpipe.media.synth import synthesize_song
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.pipeline.finalize import MAX_GIVE_UPS, finalize_run
from mvpipe.providers.base import VideoRequest
from mvpipe.providers.render import render_clip
from mvpipe.states import Counters
from mvpipe.store.clips import clip_key
from mvpipe.store.records import utc_now_iso
from mvpipe.store.table import project_pk, scene_sk
from tests.conftest import Workers
from tests.helpers import (
    assert_invariants,
    generations_per_scene,
    lip_synced_project,
    new_project,
    own_storage,
    wait_for,
    waiting_for_lip_sync,
)
from tests.processes import Processes

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]


def completed_project(scenes: int = 3) -> str:
    project_id = api.create_project("Heal", "Break.\nMend.", scene_count=scenes)
    api.run_project(project_id)
    assert api.wait_project(project_id, timeout=120).status == ProjectStatus.COMPLETED
    return project_id


def abandoned_run(ctx: Context, scenes: int = 3) -> tuple[str, str]:
    """A project whose run was won by a process that then died (no liveness in Redis)."""
    project_id = api.create_project(
        "Orphan", "Lost.", scenes=[{"prompt": f"scene {n}"} for n in range(1, scenes + 1)]
    )
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    return project_id, run_id


def live_run_with_first_scene_failed(ctx: Context, scenes: int) -> tuple[str, str]:
    """A live run (its liveness mark fresh) whose scene 1 failed since its finalize counted."""
    project_id, run_id = abandoned_run(ctx, scenes=scenes)
    ctx.board.touch_run(run_id, 60)
    claim = ctx.scenes.claim(
        project_id, 1, run_id=run_id, token="t", lease_seconds=60, max_attempts=5
    )
    assert claim.outcome == "won" and ctx.scenes.fail(project_id, 1, error="x", token="t")
    return project_id, run_id


def corrupt_counters(ctx: Context, project_id: str, *, scenes: int) -> None:
    """Damage: a completed project's counters and status written wrong (one scene "failed").
    The write must land: a refused one leaves the project completed, and a repair to come
    would have nothing to do."""
    assert ctx.projects.settle(
        project_id,
        observed_run=None,
        counters=Counters(
            scene_count=scenes, completed_scenes=scenes - 1, failed_scenes=1, open_scenes=0
        ),
        status=ProjectStatus.FAILED,
        release=False,
    )
    view = api.get_project(project_id)
    assert (view.status, view.completed_scenes, view.failed_scenes) == (
        ProjectStatus.FAILED,
        scenes - 1,
        1,
    )


def reconcile_until_quiet(project_id: str) -> None:
    """After the repaired project finished, a pass finds nothing left to do."""
    api.wait_project(project_id, timeout=120)
    assert api.reconcile(project_id).total == 0


def test_expired_lease_of_a_dead_worker(start_workers: StartWorkers) -> None:
    workers = start_workers()
    ctx = get_context()
    project_id, run_id = abandoned_run(ctx)
    claim = ctx.scenes.claim(
        project_id, 1, run_id=run_id, token="dead", lease_seconds=1, max_attempts=5,
        now=time.time() - 10,
    )  # fmt: skip
    assert claim.outcome == "won"
    report = api.reconcile(project_id)
    assert report.expired_leases == 1 and report.runs_taken_over == 1
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED
    assert generations_per_scene(workers.ledger, project_id) == {1: 1, 2: 1, 3: 1}
    assert_invariants(project_id)
    reconcile_until_quiet(project_id)


@pytest.mark.parametrize("run_marked", [True, False], ids=["run-alive", "run-mark-lapsed"])
def test_an_operation_nobody_polls_gets_one_poll_chain(
    start_workers: StartWorkers, run_marked: bool
) -> None:
    workers = start_workers()
    ctx = get_context()
    project_id, run_id = abandoned_run(ctx, scenes=1)
    claim = ctx.scenes.claim(
        project_id, 1, run_id=run_id, token="t", lease_seconds=60, max_attempts=5
    )
    assert claim.outcome == "won"
    operation_id = ctx.video_provider("local").submit(
        VideoRequest(project_id, 1, "scene 1", None, 8)
    )
    assert (
        ctx.scenes.record_operation(
            project_id, 1, token="t", operation_id=operation_id, run_id=run_id
        )
        == "won"
    )
    ctx.board.keep_run_scenes(run_id, [1])  # its planning sent the chord
    if run_marked:
        ctx.board.touch_run(run_id, 60)  # the run looks alive: only the poll is missing
    # (else its mark lapsed with the poll's, as when a worker drops the polls it holds on a
    # broker reconnect: the chain resumed is the run's, which is not stale for it)
    report = api.reconcile(project_id)
    assert report.orphaned_polls == 1 and report.runs_taken_over == 0
    assert api.reconcile(project_id).orphaned_polls == 0  # never a second chain
    scene = wait_for(
        lambda: (s := ctx.scenes.get(project_id, 1)) and s.status == SceneStatus.COMPLETED and s,
        60,
        "the orphaned operation to complete",
    )
    assert scene.operation_id == operation_id  # the paid job was used, not a new one
    assert generations_per_scene(workers.ledger, project_id) == {1: 1}
    # The chord's finalize never comes (its header's message is gone): the next pass ends the
    # run, the same run, which assembles
    report = api.reconcile(project_id)
    assert (report.runs_finalized, report.runs_taken_over) == (1, 0), report
    view = api.wait_project(project_id, timeout=60)
    assert view.status == ProjectStatus.COMPLETED and view.final_video_s3_key
    assert_invariants(project_id)


def test_an_uploaded_but_unrecorded_clip_is_recorded(start_workers: StartWorkers) -> None:
    start_workers()
    ctx = get_context()
    project_id, run_id = abandoned_run(ctx, scenes=1)
    claim = ctx.scenes.claim(
        project_id, 1, run_id=run_id, token="t", lease_seconds=60, max_attempts=5
    )
    assert claim.outcome == "won"
    assert (
        ctx.scenes.record_operation(project_id, 1, token="t", operation_id="op-1", run_id=run_id)
        == "won"
    )
    key = clip_key(project_id, 1, "op-1")
    ctx.clips.put(
        key, render_clip("uploaded before the worker died", 1.0)
    )  # a real clip: it is cut
    report = api.reconcile(project_id)
    assert report.recovered_clips == 1
    scene = ctx.scenes.get(project_id, 1)
    # Recorded, and on to its cut (by the run reconcile took over).
    assert scene is not None and scene.clip_key == key
    view = api.wait_project(project_id, timeout=60)
    assert view.status == ProjectStatus.COMPLETED
    assert view.scenes[0].working_video_clip_s3_key is not None
    assert_invariants(project_id)
    reconcile_until_quiet(project_id)


def test_completed_without_a_clip_goes_back_to_pending(start_workers: StartWorkers) -> None:
    workers = start_workers()
    ctx = get_context()
    project_id = completed_project()
    key = ctx.scenes.get(project_id, 2).clip_key  # type: ignore[union-attr]
    ctx.clips.delete(key or "")
    report = api.reconcile(project_id)
    assert report.missing_clips == 1
    view = api.get_project(project_id)
    assert view.scenes[1].status == SceneStatus.PENDING and view.completed_scenes == 2
    assert view.status == ProjectStatus.PENDING
    assert_invariants(project_id)
    api.run_project(project_id)
    assert api.wait_project(project_id, timeout=120).status == ProjectStatus.COMPLETED
    assert generations_per_scene(workers.ledger, project_id) == {1: 1, 2: 2, 3: 1}
    reconcile_until_quiet(project_id)


def test_a_lost_working_clip_is_cut_again_without_paying(start_workers: StartWorkers) -> None:
    workers = start_workers()
    ctx = get_context()
    project_id = completed_project()
    scene = ctx.scenes.get(project_id, 2)
    assert scene is not None and scene.working_clip_key is not None
    ctx.clips.delete(scene.working_clip_key)
    report = api.reconcile(project_id)
    assert report.missing_clips == 1
    reset = ctx.scenes.get(project_id, 2)
    assert reset is not None and reset.status == SceneStatus.PENDING
    assert reset.clip_key == scene.clip_key and reset.working_clip_key is None
    api.run_project(project_id)
    assert api.wait_project(project_id, timeout=120).status == ProjectStatus.COMPLETED
    again = ctx.scenes.get(project_id, 2)
    # Deterministic: the same inputs give the same key, made again from the kept original.
    assert again is not None and again.working_clip_key == scene.working_clip_key
    assert ctx.clips.exists(scene.working_clip_key)
    assert generations_per_scene(workers.ledger, project_id) == {1: 1, 2: 1, 3: 1}
    assert_invariants(project_id)
    reconcile_until_quiet(project_id)


def test_a_completed_scene_without_a_recorded_cut_is_reopened(start_workers: StartWorkers) -> None:
    """A scene completed before scenes had cuts (only its original recorded) gets its cut."""
    workers = start_workers()
    ctx = get_context()
    project_id = completed_project(scenes=1)
    m = ctx.table.model
    ctx.table.update(project_pk(project_id), scene_sk(1), [m.working_clip_key.remove()], None)
    assert api.reconcile(project_id).missing_clips == 1
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED
    assert view.scenes[0].working_video_clip_s3_key is not None
    assert generations_per_scene(workers.ledger, project_id) == {1: 1}
    assert_invariants(project_id)


def test_drifted_counters_are_recounted(start_workers: StartWorkers) -> None:
    start_workers()
    ctx = get_context()
    project_id = completed_project()
    corrupt_counters(ctx, project_id, scenes=3)
    assert api.reconcile(project_id).counters_fixed == 1
    view = api.get_project(project_id)
    assert (view.completed_scenes, view.failed_scenes) == (3, 0)
    assert view.status == ProjectStatus.COMPLETED
    reconcile_until_quiet(project_id)


def test_garbage_objects_and_stray_items_are_deleted(
    start_workers: StartWorkers, monkeypatch: pytest.MonkeyPatch
) -> None:
    start_workers(orphan_grace_seconds="0")
    ctx = get_context()
    project_id = completed_project(scenes=1)
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.working_clip_key is not None
    recorded = scene.clip_key
    stale = clip_key(project_id, 1, "op-from-a-stale-worker")
    ctx.clips.put(stale, b"garbage")
    stray_project = str(uuid.uuid4())
    ctx.table.put(
        ctx.table.model(
            project_pk(stray_project), scene_sk(1), status="pending", created_at=utc_now_iso()
        )
    )
    report = api.reconcile(project_id, sweep_strays=True)
    assert report.garbage_deleted == 1 and report.stray_scenes_deleted >= 1
    assert not ctx.clips.exists(stale) and ctx.clips.exists(recorded or "")
    assert ctx.clips.exists(scene.working_clip_key)  # recorded working clips are kept
    assert ctx.table.get(project_pk(stray_project), scene_sk(1)) is None
    assert api.reconcile(project_id, sweep_strays=True).total == 0


def test_reconcile_during_a_run_breaks_nothing(start_workers: StartWorkers) -> None:
    workers = start_workers(local_latency="1")
    project_id = api.create_project("Busy", "Working.", scene_count=8)
    api.run_project(project_id)
    passes = 0
    while api.get_project(project_id).status != ProjectStatus.COMPLETED:
        report = api.reconcile(project_id)
        assert report.runs_taken_over == 0 and report.orphaned_polls == 0
        assert report.expired_leases == 0
        # the counters lag by the run's in-flight work: its finalize's to write, no repair
        assert report.counters_fixed == 0
        passes += 1
        assert passes < 2000
    assert generations_per_scene(workers.ledger, project_id) == {n: 1 for n in range(1, 9)}
    assert_invariants(project_id)
    reconcile_until_quiet(project_id)


def test_beat_schedules_reconcile(
    start_workers: StartWorkers, tmp_path: Path, processes: Processes
) -> None:
    # Beat's first pass is due the full and the stray sweep: over this test's projects alone.
    workers = start_workers(reconcile_seconds="1", **own_storage())
    ctx = get_context()
    project_id = completed_project(scenes=1)
    corrupt_counters(ctx, project_id, scenes=1)
    processes.adopt(start_beat(workers.env, tmp_path / "beat.log"))
    wait_for(
        lambda: api.get_project(project_id).status == ProjectStatus.COMPLETED,
        60,
        "beat's reconcile to recount the project",
    )


@pytest.mark.parametrize("finalized_early", [True, False], ids=["refinalize-lost", "chord-lost"])
def test_a_run_whose_finalize_was_lost_is_finalized(stack: object, finalized_early: bool) -> None:
    # Given a live run whose both scenes failed since: its finalize ran early and the
    # re-finalize the last one triggered was never published (the broker was restarting), or
    # its planning sent the chord and the chord's finalize never came (its messages were
    # dropped by a worker whose broker connection dropped)
    ctx = get_context()
    project_id, run_id = abandoned_run(ctx, scenes=2)
    ctx.board.touch_run(run_id, 60)
    if finalized_early:
        ctx.board.await_scenes(run_id, 2, [1, 2])
    else:
        ctx.board.keep_run_scenes(run_id, [1, 2])
    for sequence in (1, 2):
        token = f"t{sequence}"
        claim = ctx.scenes.claim(
            project_id, sequence, run_id=run_id, token=token, lease_seconds=60, max_attempts=5
        )
        assert claim.outcome == "won"
        assert ctx.scenes.fail(project_id, sequence, error="blocked", token=token)
        ctx.board.scene_finished(run_id, sequence)
    # When reconcile passes, although the run still looks alive
    report = api.reconcile(project_id)
    # Then it finalizes the run: nothing is open, so nothing else ever would
    assert report.runs_finalized == 1
    view = api.get_project(project_id)
    assert view.status == ProjectStatus.FAILED and view.failed_scenes == 2
    assert ctx.projects.get(project_id).active_run_id is None
    assert_invariants(project_id)
    assert api.reconcile(project_id).total == 0


def test_a_live_run_not_finalized_yet_is_left_alone(stack: object) -> None:
    # A user's run between winning and moving its failed scenes back to pending: every scene
    # is final, but the run has not even planned yet. Reconcile must not end it.
    ctx = get_context()
    project_id, run_id = live_run_with_first_scene_failed(ctx, scenes=1)
    api.reconcile(project_id)
    assert ctx.projects.get(project_id).active_run_id == run_id


def test_a_live_runs_counters_are_recounted_without_being_reported_as_repairs(
    stack: object,
) -> None:
    # Given a live run one of whose scenes failed since its finalize last counted (never)
    ctx = get_context()
    project_id, run_id = live_run_with_first_scene_failed(ctx, scenes=2)
    assert ctx.projects.get(project_id).failed_scenes == 0
    # When reconcile passes, the counters equal a recount (invariant 4), yet the lag of a
    # working run is progress, not a repair: the report stays empty, so a second pass is 0 too
    assert api.reconcile(project_id).total == 0
    after = ctx.projects.get(project_id)
    assert (after.completed_scenes, after.failed_scenes) == (0, 1)
    assert after.active_run_id == run_id  # scene 2 is still open: the run goes on
    assert api.reconcile(project_id).total == 0
    # And the run's finalize counts the same
    finalize_run(ctx, project_id, run_id, None)
    assert ctx.projects.get(project_id).failed_scenes == 1
    assert ctx.projects.get(project_id).active_run_id == run_id


def regenerate_first_scene_after(ctx: Context, project_id: str, old_run: str) -> None:
    """The two-scene project's `old_run` released (cancelled), then a live regeneration of
    scene 1 alone (no worker runs it)."""
    assert ctx.projects.settle(
        project_id,
        observed_run=old_run,
        counters=Counters(scene_count=2, completed_scenes=0, failed_scenes=0, open_scenes=2),
        status=ProjectStatus.PENDING,
        release=True,
    )
    run = api.regenerate_scene(project_id, 1)
    ctx.board.touch_run(run.id, 600)  # the regeneration is alive


def test_a_regeneration_run_never_resumes_scenes_outside_its_scope(stack: object) -> None:
    # Given a cancelled run's dead submitter on scene 2 (expired lease, no operation), then a
    # regeneration of scene 1 alone, with no worker to run it
    ctx = get_context()
    project_id, old_run = abandoned_run(ctx, scenes=2)
    claim = ctx.scenes.claim(
        project_id, 2, run_id=old_run, token="dead", lease_seconds=1, max_attempts=5,
        now=time.time() - 10,
    )  # fmt: skip
    assert claim.outcome == "won"
    regenerate_first_scene_after(ctx, project_id, old_run)
    # When reconcile expires scene 2's lease
    report = api.reconcile(project_id)
    assert report.expired_leases == 1
    # Then scene 2 is pending again, but nothing was sent for it under the regeneration's run
    assert ctx.scenes.get(project_id, 2).status == SceneStatus.PENDING  # type: ignore[union-attr]
    assert [args[1] for args in queued_scene_steps(ctx, project_id)] == []


def queued_scene_steps(ctx: Context, project_id: str) -> list[list[object]]:
    """The args of every `generate_scene` message of the project waiting in the broker."""
    found = []
    for queue in ctx.redis.scan_iter("mvpipe.*"):
        if ctx.redis.type(queue) != b"list":
            continue
        for raw in ctx.redis.lrange(queue, 0, -1):
            message = json.loads(raw)
            if message["headers"].get("task") != "mvpipe.generate_scene":
                continue
            args = json.loads(base64.b64decode(message["body"]))[0]
            if args[0] == project_id:
                found.append(args)
    return found


def test_an_orphaned_job_outside_a_regeneration_is_polled_without_its_run(stack: object) -> None:
    # Given a cancelled run that kept scene 2's paid job (a provider that cannot cancel), then
    # a live regeneration of scene 1 alone, with no worker to run anything
    ctx = get_context()
    project_id, old_run = abandoned_run(ctx, scenes=2)
    claim = ctx.scenes.claim(
        project_id, 2, run_id=old_run, token="t", lease_seconds=60, max_attempts=5
    )
    assert claim.outcome == "won"
    operation_id = f"op-{uuid.uuid4().hex}"
    recorded = ctx.scenes.record_operation(
        project_id, 2, token="t", operation_id=operation_id, run_id=old_run
    )
    assert recorded == "won"
    regenerate_first_scene_after(ctx, project_id, old_run)
    # When reconcile finds scene 2's job polled by nobody
    assert api.reconcile(project_id).orphaned_polls == 1
    # Then its one poll chain carries no run: the generation it finishes is the paid job's,
    # and no later paid stage of scene 2 (a lip-sync, a regenerated original) is billed to
    # the regeneration of scene 1
    steps = [args for args in queued_scene_steps(ctx, project_id) if args[1] == 2]
    assert len(steps) == 1 and steps[0][2] is None


def test_a_scene_waiting_for_its_lip_sync_with_no_run_goes_back_to_pending(stack: object) -> None:
    # Given a scene waiting for its lip-sync that no run will pay for (its run was cancelled)
    ctx = get_context()
    project_id = waiting_for_lip_sync(ctx)
    # When reconcile passes
    report = api.reconcile(project_id)
    # Then the scene is pending again (a user's run resumes it), with its clips kept, and no
    # chain was started for it (it would only find no run to submit under, pass after pass)
    scene = ctx.scenes.get(project_id, 2)
    assert scene is not None and scene.status == SceneStatus.PENDING
    assert report.waiting_scenes_reset == 1 and report.resumed_stages == 0
    assert scene.clip_key is not None and scene.working_clip_key is not None
    assert queued_scene_steps(ctx, project_id) == []
    assert api.get_project(project_id).status == ProjectStatus.PENDING
    assert api.reconcile(project_id).total == 0


def test_a_scene_waiting_for_its_lip_sync_outside_a_regeneration_goes_back_to_pending(
    stack: object,
) -> None:
    # Given a scene waiting for its lip-sync, then a live regeneration of scene 1 alone
    ctx = get_context()
    project_id = waiting_for_lip_sync(ctx)
    run = api.regenerate_scene(project_id, 1)
    ctx.board.touch_run(run.id, 600)
    # When reconcile passes, nothing is sent for scene 2 under the regeneration's run
    report = api.reconcile(project_id)
    scene = ctx.scenes.get(project_id, 2)
    assert scene is not None and scene.status == SceneStatus.PENDING
    assert report.waiting_scenes_reset == 1
    assert 2 not in [args[1] for args in queued_scene_steps(ctx, project_id)]


def test_cancel_sends_a_scene_waiting_for_its_lip_sync_back_to_pending(stack: object) -> None:
    ctx = get_context()
    project_id = waiting_for_lip_sync(ctx)
    api.cancel_project(project_id)
    scene = ctx.scenes.get(project_id, 2)
    assert scene is not None and scene.status == SceneStatus.PENDING
    assert scene.clip_key is not None and scene.working_clip_key is not None
    assert api.get_project(project_id).status == ProjectStatus.PENDING


def test_a_scene_completed_before_lip_sync_existed_stays_completed(
    start_workers: StartWorkers,
) -> None:
    # Given a song's project completed before the lip-sync stage existed, one of its scenes
    # marked for lip-sync by the planner (completed, no lip-synced clip, no lip-sync operation)
    workers = start_workers(
        prices=json.dumps({"local": 0.25}), output_size="160x90", output_fps="12"
    )
    ctx = get_context()
    song = synthesize_song(seconds=5.0, bpm=120.0, sections=1)
    project_id = lip_synced_project(ctx, song.wav, [0.0, 2.5, 5.0], set())
    api.run_project(project_id)
    before = api.wait_project(project_id, timeout=120)
    assert before.status == ProjectStatus.COMPLETED and before.final_video_s3_key is not None
    m = ctx.table.model
    ctx.table.update(project_pk(project_id), scene_sk(2), [m.lip_sync.set(True)], None)
    # When reconcile's sweep examines it
    report = api.reconcile(project_id)
    # Then the scene counts as completed without lip-sync: nothing reset, the final video kept,
    # and a run would pay nothing
    assert report.missing_clips == 0 and report.total == 0
    view = api.get_project(project_id)
    assert view.status == ProjectStatus.COMPLETED
    assert view.scenes[1].status == SceneStatus.COMPLETED and view.scenes[1].lip_sync
    assert view.final_video_s3_key == before.final_video_s3_key
    assert api.estimate_cost(project_id) == 0.0
    assert_invariants(project_id)
    # and regenerating it pays its generation and, now, its lip-sync
    assert api.estimate_cost(project_id, 2) > api.estimate_cost(project_id, 1)
    api.regenerate_scene(project_id, 2)
    after = api.wait_project(project_id, timeout=120)
    assert after.status == ProjectStatus.COMPLETED, after.last_error
    assert after.scenes[1].lip_synced_video_clip_s3_key is not None
    assert generations_per_scene(workers.ledger, project_id) == {1: 1, 2: 2}
    assert generations_per_scene(workers.ledger, project_id, "lipsync") == {2: 1}
    assert_invariants(project_id)


def test_a_stale_run_whose_finalize_gave_up_for_good_is_ended_not_taken_over(
    stack: LocalStack,
) -> None:
    # Given a stale run (no liveness) whose finalize gave up as often as it may (its end
    # never written: a crash between the last count and the end)
    ctx = get_context()
    project_id, run_id = new_project(ctx, 1)
    why = "finalize failed: x"
    for n in range(MAX_GIVE_UPS):
        assert ctx.projects.count_finalize_give_up(project_id, run_id, why) == n + 1
    # When reconcile passes
    report = api.reconcile(project_id)
    # Then the run is ended saying why, not taken over, and the next pass repairs nothing
    assert (report.runs_taken_over, report.runs_finalized) == (0, 1), report
    project = ctx.projects.get(project_id)
    assert project.active_run_id is None and project.last_error == why
    assert project.status == ProjectStatus.PENDING
    assert api.reconcile(project_id).total == 0
    assert ctx.projects.get(project_id).last_error == why
