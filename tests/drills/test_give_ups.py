"""Drills of tasks that give up: an error no retry cures ends in a state that says why, and
nothing (finalize, reconcile) waits for or restarts the work forever."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

import pytest
from celery.exceptions import Reject

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.deps import get_context
from mvpipe.devstack.failpoints import marker_dir, raised
from mvpipe.devstack.localstack import LocalStack
from mvpipe.messaging.dispatch import (
    ASSEMBLE_PROJECT,
    FINALIZE_PROJECT,
    GENERATE_SCENE,
    PLAN_SCENES,
)
from mvpipe.models import ProjectStatus, ProjectView, SceneStatus
from mvpipe.pipeline.finalize import MAX_GIVE_UPS
from mvpipe.pipeline.reconcile_report import ReconcileReport
from mvpipe.store.claim_outcomes import Claim
from mvpipe.store.stage_fields import ORIGINAL
from mvpipe.tasks.finalize import MAX_UNEXPECTED as FINALIZE_UNEXPECTED
from tests.conftest import Workers
from tests.drills.conftest import DRILL_SETTINGS, heal, owe_a_record
from tests.drills.test_unknown_outcomes import state_dir
from tests.helpers import assert_invariants, generations_per_scene, new_project, wait_for
from tests.songs import make_song

StartWorkers = Callable[..., Workers]
ANALYSE_SONG = "mvpipe.analyse_song"

#: Retries a few milliseconds apart: a chain reaches its limit of unexpected errors quickly.
#: The slack keeps a poll's liveness mark (0.2 + 3 x 0.2 + 2.5 s) above the drills' provider
#: call and store call (2 s and 1 s), as the settings require.
QUICK_RETRIES = {"backoff_base": "0.05", "backoff_max": "0.2", "liveness_slack_seconds": "2.5"}


@pytest.mark.parametrize(
    ("point", "paid"),
    [("before_claim_write", 0), ("during_cut", 1)],  # a paid stage unclaimed; a free stage
)
def test_a_scene_that_always_crashes_fails_saying_why_and_stays_failed(
    start_workers: StartWorkers, point: str, paid: int
) -> None:
    # Given a bug at one point of a scene's step, met by every execution that reaches it
    workers = start_workers(failpoints=f"{point}=raise", **{**DRILL_SETTINGS, **QUICK_RETRIES})
    project_id = api.create_project("Bug", "It crashes every time.", scene_count=1)
    # When the run's chain has retried it as often as it may
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    # Then the scene failed with the (scrubbed) reason, and the run settled on it
    assert view.status == ProjectStatus.FAILED, view
    (scene,) = view.scenes
    assert scene.status == SceneStatus.FAILED
    assert scene.last_error == f"gave up: FailpointError: failpoint {point} raised"
    assert_invariants(project_id)
    # And reconcile restarts nothing: only a user's run pays or tries again
    for _ in range(2):
        report = api.reconcile(project_id, full_sweep=True)
        assert report.total == 0 and report.resumed_stages == 0, report
    after = api.get_project(project_id)
    assert after.scenes[0].status == SceneStatus.FAILED
    assert sum(generations_per_scene(workers.ledger, project_id).values()) == paid
    # Each crash was logged as one line, without a traceback
    log = workers.service.log_text()
    assert f"unexpected error in generate_scene {project_id}/1: FailpointError" in log
    assert "Traceback" not in log


def test_malformed_task_arguments_are_rejected_with_a_logged_reason_and_no_write(
    start_workers: StartWorkers,
) -> None:
    # Given a project (its valid id in every message below)
    workers = start_workers(**DRILL_SETTINGS)
    project_id = api.create_project("Target", "Malformed messages aim at it.", scene_count=1)
    table = get_context().table.model
    before = (table.count(), api.get_project(project_id))
    run = str(uuid.uuid4())
    scene = [project_id, 1, run, "local"]
    # When messages arrive whose other arguments are malformed
    sent = [
        (app.send_task(GENERATE_SCENE, args=[project_id, 1, "../run", "local"]), "invalid run id"),
        (
            app.send_task(
                GENERATE_SCENE, args=[project_id, 1, run, "local"], kwargs={"stage": "x"}
            ),
            "invalid stage",
        ),
        (
            app.send_task(
                GENERATE_SCENE,
                args=scene,
                kwargs={"token": "t", "release": {"refund_micros": -5, "fail": True}},
            ),
            "invalid release",
        ),
        (app.send_task(PLAN_SCENES, args=[project_id, None]), "invalid run id"),
        (app.send_task(PLAN_SCENES, args=[project_id, run], kwargs={"only": [0]}), "sequence"),
        (app.send_task(ANALYSE_SONG, args=[project_id, {"a": 1}]), "invalid run id"),
        (app.send_task(ANALYSE_SONG, args=[project_id, run], kwargs={"only": "1"}), "scene list"),
        (app.send_task(FINALIZE_PROJECT, args=[None, project_id, 7, None]), "invalid run id"),
        (app.send_task(FINALIZE_PROJECT, args=[None, project_id, run, [1, True]]), "sequence"),
        (app.send_task(ASSEMBLE_PROJECT, args=[project_id, ""]), "invalid run id"),
        # the failure counts a retry carries: a wrong type would fail the retry itself (a
        # traceback into the chord), a negative count would never reach its limit
        (
            app.send_task(GENERATE_SCENE, args=scene, kwargs={"unexpected": "x"}),
            "invalid unexpected",
        ),
        (
            app.send_task(GENERATE_SCENE, args=scene, kwargs={"unexpected": -1}),
            "invalid unexpected",
        ),
        (app.send_task(GENERATE_SCENE, args=scene, kwargs={"outages": True}), "invalid outages"),
        (
            app.send_task(
                FINALIZE_PROJECT, args=[None, project_id, run, None], kwargs={"unexpected": "x"}
            ),
            "invalid unexpected",
        ),
        (
            app.send_task(
                FINALIZE_PROJECT, args=[None, project_id, run, None], kwargs={"outages": -3}
            ),
            "invalid outages",
        ),
        (
            app.send_task(PLAN_SCENES, args=[project_id, run], kwargs={"planner_failures": -1}),
            "invalid planner_failures",
        ),
        (
            app.send_task(ANALYSE_SONG, args=[project_id, run], kwargs={"outages": 0.5}),
            "invalid outages",
        ),
        (
            app.send_task(ASSEMBLE_PROJECT, args=[project_id, run], kwargs={"outages": "1"}),
            "invalid outages",
        ),
    ]
    # Then each ends as a failed task saying why, the worker logs why, and nothing is written
    for result, why in sent:
        wait_for(lambda r=result: r.state == "FAILURE", 60, f"{result.id} to fail")
        assert isinstance(result.result, Reject) and why in str(result.result), result.result
    log = workers.service.log_text()
    assert log.count(f"rejected a malformed message for project {project_id}") == len(sent)
    assert (table.count(), api.get_project(project_id)) == before
    assert workers.service.proc.poll() is None


def test_a_song_analysis_that_always_crashes_fails_the_planning_saying_why(
    start_workers: StartWorkers,
) -> None:
    # Given an analysis that crashes with an error nobody expected, every time
    workers = start_workers(
        failpoints="before_analysis=raise", **{**DRILL_SETTINGS, **QUICK_RETRIES}
    )
    song = make_song("wav", 6.0).data
    project_id = api.create_project("Crashing song", "Its analysis crashes.", song=song)
    # When the run has analysed it as often as planning may be tried
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    # Then the planning failed, counted and saying why (scrubbed, one line each in the log)
    assert view.status == ProjectStatus.FAILED, view
    why = "song analysis: FailpointError: failpoint before_analysis raised"
    assert view.last_error == f"planning failed: gave up after 5 attempts: {why}"
    log = workers.service.log_text()
    assert log.count(f"unexpected error in analyse_song {project_id}: FailpointError") == 5
    assert "Traceback" not in log
    # And reconcile analyses nothing again
    for _ in range(2):
        assert api.reconcile(project_id, full_sweep=True).total == 0
    assert api.get_project(project_id).status == ProjectStatus.FAILED


def test_a_finalize_that_always_crashes_logs_one_scrubbed_line_each_then_gives_up(
    start_workers: StartWorkers,
) -> None:
    # Given a finalize that crashes with an error nobody expected, every time
    workers = start_workers(
        failpoints="during_finalize=raise", **{**DRILL_SETTINGS, **QUICK_RETRIES}
    )
    project_id = api.create_project("Crashing finalize", "It never settles.", scene_count=1)
    # When the run's chord body runs and retries
    api.run_project(project_id)
    # Then each crash is one scrubbed line, the retries end, and no traceback is logged
    wait_for(
        lambda: f"finalize of project {project_id} gave up" in workers.service.log_text(),
        120,
        "finalize to give up",
    )
    log = workers.service.log_text()
    crashed = f"unexpected error in finalize_project {project_id}: FailpointError"
    assert log.count(crashed) == 6  # the first try and MAX_UNEXPECTED retries
    assert "Traceback" not in log
    # And each retry names the bug as what it is (Flower shows this), never as an outage
    assert log.count("UnexpectedError('FailpointError: failpoint during_finalize") == 5
    assert "StoreUnavailable('FailpointError" not in log


def test_a_redo_that_owes_a_paid_jobs_record_never_gives_up(start_workers: StartWorkers) -> None:
    # Given a scene whose lease expired after its job was submitted: the record of that job's
    # operation id is still owed, and the redo that carries it (a RecordPending retry) meets an
    # error no retry cures (here a provider name nothing builds)
    workers = start_workers(**{**DRILL_SETTINGS, **QUICK_RETRIES})
    ctx = get_context()
    # When the redo runs, again and again
    project_id, run_id, token = owe_a_record(ctx, "nope")

    def settled_or_retried() -> bool:
        scene = ctx.scenes.get(project_id, 1)
        left = scene is None or scene.status != SceneStatus.PROCESSING
        return left or workers.service.log_text().count("retrying the write it owes") >= 3

    wait_for(settled_or_retried, 60, "the redo to meet its error three times, or give up")
    # Then the scene is not failed under the paid job: its record can still land
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.status == SceneStatus.PROCESSING, scene
    assert scene.last_error is None or "gave up" not in scene.last_error
    recorded = ctx.scenes.record_operation(
        project_id, 1, token=token, operation_id="local-paid", run_id=run_id, stage=ORIGINAL
    )
    assert recorded == Claim.WON


def one_job_through(
    start_workers: StartWorkers, failpoints: str, concept: str
) -> tuple[Workers, ProjectView]:
    """A one-scene project run with `failpoints` armed and healed as an operator would: it
    completed with one job paid (the workers, its view)."""
    workers = start_workers(failpoints=failpoints, **{**DRILL_SETTINGS, **QUICK_RETRIES})
    project_id = api.create_project("Paid once", concept, scene_count=1)
    api.run_project(project_id)
    view = heal(project_id, timeout=90)
    assert view.status == ProjectStatus.COMPLETED, view
    assert view.scenes[0].status == SceneStatus.COMPLETED
    assert generations_per_scene(workers.ledger, project_id) == {1: 1}
    assert_invariants(project_id)
    return workers, view


def test_an_error_between_a_jobs_acceptance_and_its_record_keeps_the_job(
    start_workers: StartWorkers,
) -> None:
    # Given a bug met once between the provider accepting a scene's job and its id's record,
    # when the project runs, then the job's id was carried to the next step and recorded: one
    # job paid, none lost
    workers, view = one_job_through(
        start_workers, "before_record=raise:1", "Its first record crashes."
    )
    assert raised(state_dir(workers), "before_record") == 1
    # And the log named the job and the error once, at ERROR, with no give-up
    job = view.scenes[0].provider_operation_id
    log = workers.service.log_text()
    said = f"the generate job {job} was accepted but its record failed (retried until it lands)"
    assert log.count(said) == 1, log
    assert re.search(rf"ERROR/[^\]]*\] {re.escape(said)}: FailpointError", log), log
    assert "gave up" not in log and "Traceback" not in log


def test_an_error_after_a_jobs_record_landed_is_no_owed_record(
    start_workers: StartWorkers,
) -> None:
    # Given a bug met every time just after a job's id is recorded (nothing is owed then),
    # when the project runs, then the task's own retry resumes the stored job: one job paid
    workers, _ = one_job_through(
        start_workers, "after_record=raise", "It crashes after each record."
    )
    assert (marker_dir(state_dir(workers)) / "after_record").exists()  # it was met
    # And no record was said to be owed: it had landed
    log = workers.service.log_text()
    assert "accepted but its record failed" not in log, log
    assert "RecordPending" not in log and "gave up" not in log


def test_a_finalize_that_always_crashes_ends_the_run_and_stays_ended(
    start_workers: StartWorkers,
) -> None:
    # Given a finalize that crashes every time, and a scene it paid for once; its runs go
    # stale 2 s after their last step (the drills' 4 s, halved: three staleness waits are most
    # of this test, and a chain's six quick tries take ~0.5 s of it)
    workers = start_workers(
        failpoints="during_finalize=raise",
        **{**DRILL_SETTINGS, **QUICK_RETRIES, "run_stale_seconds": "2"},
    )
    ctx = get_context()
    project_id = api.create_project("Crashing finalize", "It never settles.", scene_count=1)
    run_id = api.run_project(project_id).id
    # Its finalize began (and crashed) before any reconcile pass: a pass that found the scene
    # final while the chord's finalize had not begun yet would settle the run itself, rightly
    # (`reconcile_runs._finalize_owed`), and there would be no crashing finalize to drill
    wait_for(lambda: ctx.board.finalize_begun(run_id), 60, "the run's finalize to begin")
    # When reconcile passes take the stale run over for as long as they may
    takeovers, runs = 0, set()

    def passed(report: ReconcileReport) -> None:
        nonlocal takeovers
        takeovers += report.runs_taken_over
        runs.add(ctx.projects.get(project_id).active_run_id)

    view = heal(project_id, rerun=False, after_pass=passed, pace=0.1)
    # Then the run ended saying why (scrubbed), taken over a bounded number of times, and the
    # paid scene kept its clips and operation
    assert view.status == ProjectStatus.PENDING, view
    assert view.last_error == "finalize failed: FailpointError: failpoint during_finalize raised"
    assert takeovers >= MAX_GIVE_UPS - 1  # more only if a takeover beat a chain's give-up
    (scene,) = view.scenes
    assert scene.status == SceneStatus.COMPLETED and scene.provider_operation_id is not None
    assert scene.original_video_clip_s3_key and scene.working_video_clip_s3_key
    assert_invariants(project_id)
    log = workers.service.log_text()
    assert log.count(f"finalize of project {project_id} gave up") >= MAX_GIVE_UPS
    assert "Traceback" not in log
    # And further reconcile passes, once every run it had would be stale, take nothing over
    wait_for(lambda: not any(ctx.board.run_alive(r) for r in runs if r), 60, "runs to go stale")
    for _ in range(3):
        assert api.reconcile(project_id, full_sweep=True).total == 0
    assert api.get_project(project_id) == view
    # And a user's new run starts afresh (here with the bug gone), paying for nothing again
    workers.service.kill()
    start_workers(failpoints="", **{**DRILL_SETTINGS, **QUICK_RETRIES})
    api.run_project(project_id)
    done = api.wait_project(project_id, timeout=120)
    assert done.status == ProjectStatus.COMPLETED and done.last_error is None, done
    assert ctx.projects.get(project_id).finalize_give_ups == 0
    assert sum(generations_per_scene(workers.ledger, project_id).values()) == 1


def test_a_long_outage_then_one_unexpected_error_does_not_give_up(
    stack: LocalStack, start_workers: StartWorkers
) -> None:
    # Given a finalize that first meets an outage longer than an unexpected error's retries
    # (each store call fails within a second; its context's first use, in a fresh worker
    # process, reaches the store), and then an error nobody expected, once (a bug repaired
    # after it was met). Retries are quick: the outage's length is counted in retries.
    settings = {**DRILL_SETTINGS, "store_retry_seconds": "1"}
    workers = start_workers(
        concurrency=1, failpoints="during_finalize=raise:1", **{**settings, **QUICK_RETRIES}
    )
    ctx = get_context()
    project_id, _ = new_project(ctx, 1, run=False)
    moto = next(s for s in stack.services if s.name == "moto")
    moto.pause()
    try:
        result = app.send_task(FINALIZE_PROJECT, args=[None, project_id, None, None])
        retried = f"mvpipe.finalize_project[{result.id}] retry"
        wait_for(
            lambda: workers.service.log_text().count(retried) > FINALIZE_UNEXPECTED,
            180,
            "finalize to retry through more outages than it may meet unexpected errors",
        )
    finally:
        moto.resume()
    # When it retries that error (its own count, not the outages')
    outcome = result.get(timeout=60)
    # Then it settled the project instead of giving up
    assert outcome.get("status") == ProjectStatus.PENDING, outcome
    log = workers.service.log_text()
    crashed = f"unexpected error in finalize_project {project_id}: FailpointError"
    assert f"finalize of project {project_id} gave up" not in log
    assert log.count(crashed) == raised(state_dir(workers), "during_finalize") == 1
    # And its retries said which was which: the outages as such, before the bug, the bug as a bug
    assert log[: log.index(crashed)].count(retried) > FINALIZE_UNEXPECTED
    assert f"{retried}: Retry in" in log and "StoreUnavailable('" in log
    assert re.search(r"UnexpectedError\([\"']FailpointError", log), "the bug's retry"
    assert not re.search(r"StoreUnavailable\([\"']FailpointError", log)
    assert ctx.projects.get(project_id).completed_scenes == 0
    assert_invariants(project_id)


def test_a_scene_whose_first_store_call_meets_an_outage_retries_it(
    stack: LocalStack, start_workers: StartWorkers
) -> None:
    # Given a fresh worker process (no store client built yet) and the store out of reach
    settings = {**DRILL_SETTINGS, "store_retry_seconds": "1"}
    workers = start_workers(concurrency=1, **{**settings, **QUICK_RETRIES})
    project_id, run_id = str(uuid.uuid4()), str(uuid.uuid4())
    moto = next(s for s in stack.services if s.name == "moto")
    moto.pause()
    try:
        # When a scene's step is its first task: building its context meets the outage
        result = app.send_task(GENERATE_SCENE, args=[project_id, 1, run_id, "local"])
        retried = f"mvpipe.generate_scene[{result.id}] retry"
        wait_for(lambda: retried in workers.service.log_text(), 120, "the step to retry")
    finally:
        moto.resume()
    # Then the step retried it as an outage and, the store back, returned its outcome to the
    # chord (here: no such scene) rather than failing with a traceback
    outcome = result.get(timeout=60)
    assert outcome["project_id"] == project_id and outcome["sequence"] == 1, outcome
    log = workers.service.log_text()
    assert f"{retried}: Retry in" in log and "StoreUnavailable(" in log
    assert "Traceback" not in log
