"""Lip-sync drills: the second paid stage under the faults the first one is drilled with —
workers SIGKILLed at its crash points, duplicate delivery during its submission, a cancel while
its job runs. Every invariant holds, each scene's generation is paid once, and its lip-sync once
(twice only inside the named window, or when a user's cancel stopped the first job)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.deps import get_context
from mvpipe.devstack.drills import double_payments
from mvpipe.devstack.failpoints import LIPSYNC_POINTS, held, raised, release
from mvpipe.media.synth import SynthSong, synthesize_song
from mvpipe.messaging.dispatch import CeleryDispatcher
from mvpipe.models import SceneStatus
from mvpipe.providers.local import LocalJobs
from tests.conftest import Workers
from tests.drills.conftest import DRILL_SETTINGS, PRICED, check_committed, check_drill, heal
from tests.drills.test_give_ups import QUICK_RETRIES
from tests.helpers import generations_per_scene, lip_synced_project, wait_for

StartWorkers = Callable[..., Workers]

#: Small media.
LIPSYNC_SETTINGS = {**DRILL_SETTINGS, "output_size": "160x90", "output_fps": "12"}
#: Two scenes of a 5 s song, the 2nd marked for lip-sync.
MARKED = 2


@pytest.fixture(scope="module")
def song() -> SynthSong:
    return synthesize_song(seconds=5.0, bpm=120.0, sections=2)


def lip_synced(song: SynthSong) -> str:
    return lip_synced_project(get_context(), song.wav, [0.0, 2.5, 5.0], {MARKED})


def check_lipsync(project_id: str, workers: Workers, *, paid: int = 1, in_window: int = 0) -> None:
    """Every invariant and one generation per scene (`check_drill`); the marked scene's
    lip-sync paid `paid` times, `in_window` of them inside the named window, none outside."""
    check_drill(project_id, workers)
    assert [s.sequence for s in api.get_project(project_id).scenes if s.lip_sync] == [MARKED]
    assert generations_per_scene(workers.ledger, project_id, "lipsync") == {MARKED: paid}
    jobs = LocalJobs(Path(workers.env["MVPIPE_LOCAL_STATE"]))
    assert double_payments(workers.ledger, jobs, project_id, "lipsync") == (in_window, 0)


def test_worker_killed_at_each_lip_sync_crash_point(
    start_workers: StartWorkers, song: SynthSong
) -> None:
    # Given workers that die at each lip-sync crash point once (after the submit, while
    # polling, after the upload: the scene's lip-sync meets them one after the other)
    workers = start_workers(failpoints=",".join(LIPSYNC_POINTS), **LIPSYNC_SETTINGS, **PRICED)
    project_id = lip_synced(song)
    # When the project runs and is healed as an operator would
    api.run_project(project_id)
    heal(project_id)
    for point in LIPSYNC_POINTS:  # each did crash
        assert (workers.ledger.parent / "state" / "failpoints" / point).exists(), point
    # Then only the crash between the job's acceptance and its id's write paid a second
    # lip-sync (its first job never reached the store), and nothing else was paid twice;
    # the committed cost is every accepted job's price, the unrecorded one's too
    check_lipsync(project_id, workers, paid=2, in_window=1)
    check_committed(project_id, workers)


def test_an_error_between_a_lip_syncs_acceptance_and_its_record_keeps_the_job(
    start_workers: StartWorkers, song: SynthSong
) -> None:
    # Given a bug met once between the provider accepting the lip-sync and its id's record
    failpoint = "lipsync_before_record"
    workers = start_workers(
        failpoints=f"{failpoint}=raise:1", **{**LIPSYNC_SETTINGS, **QUICK_RETRIES}
    )
    project_id = lip_synced(song)
    # When the project runs and is healed as an operator would
    api.run_project(project_id)
    heal(project_id)
    # Then the carried id was recorded: the lip-sync paid once, the scene completed with it
    assert raised(workers.ledger.parent / "state", failpoint) == 1
    check_lipsync(project_id, workers)
    job = api.get_project(project_id).scenes[MARKED - 1].lip_sync_operation_id
    said = f"the lipsync job {job} was accepted but its record failed (retried until it lands)"
    assert workers.service.log_text().count(said) == 1


def test_duplicate_delivery_while_the_lip_sync_is_submitted(
    start_workers: StartWorkers, song: SynthSong
) -> None:
    # Given the lip-sync's submitter held between the job's acceptance and its record
    workers = start_workers(failpoints="lipsync_before_record=hold", **LIPSYNC_SETTINGS)
    state_dir = workers.ledger.parent / "state"
    project_id = lip_synced(song)
    api.run_project(project_id)
    wait_for(lambda: held(state_dir, "lipsync_before_record"), 90, "the lip-sync submission")
    # When the scene's message is delivered three more times meanwhile
    run_id = get_context().projects.get(project_id).active_run_id
    dispatcher = CeleryDispatcher(app)
    duplicates = [dispatcher.resume(project_id, MARKED, run_id, "local") for _ in range(3)]
    # Then each finds the stage owned by the held submitter's lease and submits nothing
    outcomes = {d.get(timeout=60)["outcome"] for d in duplicates}
    assert outcomes == {"owned by another execution"}, outcomes
    release(state_dir, "lipsync_before_record")
    # and the run completes with one lip-sync paid
    heal(project_id)
    check_lipsync(project_id, workers)


def test_cancel_during_the_lip_sync_keeps_the_earlier_clips(
    start_workers: StartWorkers, song: SynthSong
) -> None:
    # Given a lip-sync job running (a 120 s job: the cancel surely comes before its end, on
    # however slow a machine)
    first = start_workers(**{**LIPSYNC_SETTINGS, **PRICED, "local_lipsync_latency": "120"})
    project_id = lip_synced(song)
    api.run_project(project_id)
    ctx = get_context()

    def lip_syncing() -> bool:
        scene = ctx.scenes.get(project_id, MARKED)
        return scene is not None and scene.lip_sync_operation_id is not None

    def other_scene_done() -> bool:
        scene = ctx.scenes.get(project_id, 1)
        return scene is not None and scene.status == SceneStatus.COMPLETED

    wait_for(lip_syncing, 90, "the lip-sync job to be stored")
    # and the other scene done: a cancel while its job still ran would stop that job too, and
    # the next run would pay it again (a run after a cancel is new paid work: invariant 3),
    # which is not what this drill counts
    wait_for(other_scene_done, 90, "the scene without lip-sync to be completed")
    before = ctx.scenes.get(project_id, MARKED)
    assert before is not None
    # When the user cancels
    view = api.cancel_project(project_id)
    # Then the job is stopped and the scene waits for its lip-sync again, clips kept
    scene = next(s for s in view.scenes if s.sequence == MARKED)
    assert scene.status == SceneStatus.PENDING
    assert scene.lip_sync_operation_id is None and scene.lip_synced_video_clip_s3_key is None
    assert scene.original_video_clip_s3_key == before.clip_key
    assert scene.working_video_clip_s3_key == before.working_clip_key
    # and the user's next run pays only for a new lip-sync (the first job made no video): on
    # workers whose lip-syncs take the drills' usual time, with the same ledger and provider
    first.service.kill()
    workers = start_workers(
        env={"MVPIPE_LOCAL_LEDGER": str(first.ledger)},
        **{
            **LIPSYNC_SETTINGS,
            **PRICED,
            "local_lipsync_latency": LIPSYNC_SETTINGS["local_latency"],
        },
    )
    heal(project_id)
    check_drill(project_id, workers)
    assert generations_per_scene(workers.ledger, project_id, "lipsync") == {MARKED: 2}
    # and both lip-syncs stay paid for: the job the cancel stopped was accepted
    check_committed(project_id, workers)
    assert cancelled_jobs(Path(workers.env["MVPIPE_LOCAL_STATE"]), project_id) == [
        before.lip_sync_operation_id
    ]
    after = api.get_project(project_id).scenes[MARKED - 1]
    assert after.working_video_clip_s3_key == before.working_clip_key
    assert after.lip_synced_video_clip_s3_key is not None


def cancelled_jobs(path: Path, project_id: str) -> list[str]:
    """The lip-sync jobs the provider stopped before they made a video."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT operation_id FROM lipsync_jobs WHERE project_id = ? AND cancelled = 1",
            (project_id,),
        ).fetchall()
    finally:
        db.close()
    return [row[0] for row in rows]
