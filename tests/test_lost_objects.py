"""A missing S3 object is not an outage: a vanished original, song or key read through real
workers ends in a reset or a failure with its reason, never in retries that last forever."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.devstack.failpoints import held, release
from mvpipe.errors import NotFound
from mvpipe.media.synth import SynthSong, synthesize_song
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.pipeline.generate import SceneJob
from mvpipe.pipeline.lipsync import LipSync
from mvpipe.pipeline.steps import Next
from mvpipe.pipeline.timeline import ensure_timeline
from mvpipe.providers.limiter import slot_member
from mvpipe.store.clips import ObjectMissing
from tests.conftest import Workers
from tests.helpers import (
    assert_invariants,
    generations_per_scene,
    lip_synced_project,
    song_project_unanalysed,
    wait_for,
    waiting_for_lip_sync,
)

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]
FORMAT = {"output_size": "160x90", "output_fps": "12"}


@pytest.fixture(scope="module")
def song() -> SynthSong:
    return synthesize_song(seconds=5.0, bpm=120.0, sections=1)


def test_reading_a_missing_key_is_not_found_not_an_outage(start_workers: StartWorkers) -> None:
    clips = get_context().clips
    key = f"projects/{uuid.uuid4().hex}/scenes/001/gone.mp4"
    with pytest.raises(ObjectMissing, match="gone from the store") as caught:
        clips.read(key)
    assert isinstance(caught.value, NotFound) and caught.value.key == key
    clips.put(key, b"here")
    assert clips.read(key) == b"here"


def test_an_original_gone_before_its_cut_resets_the_scene_and_its_run_makes_it_again(
    start_workers: StartWorkers,
) -> None:
    # Given a run whose scene has its original recorded and its cut queued on the media queue,
    # with no media worker yet
    main = start_workers(queues="mvpipe.plan,mvpipe.video", **FORMAT)
    ctx = get_context()
    project_id = api.create_project("Gone", "x", scenes=[{"prompt": "a", "duration_seconds": 2}])
    api.run_project(project_id)
    original = wait_for(
        lambda: ctx.scenes.get(project_id, 1).clip_key,  # type: ignore[union-attr]
        120,
        "the original clip",
    )
    # When its object vanishes before the cut reads it
    ctx.clips.delete(original)
    media = start_workers(concurrency=1, queues="mvpipe.media", **FORMAT)

    # Then the cut resets the scene once (never an outage retried forever), and the run makes
    # the clip again, paying a second generation, and completes
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    scene = view.scenes[0]
    assert scene.original_video_clip_s3_key not in (None, original)
    assert ctx.clips.exists(scene.working_video_clip_s3_key or "")
    log = media.service.log_text()
    assert log.count("original clip missing, scene reset") == 1
    assert f"no object at {original}" in log
    assert "S3 unavailable" not in log
    assert generations_per_scene(main.ledger, project_id) == {1: 2}
    assert_invariants(project_id)


def test_a_missing_song_fails_the_lip_sync_and_gives_its_slot_back(
    start_workers: StartWorkers, song: SynthSong
) -> None:
    # Given a lip-synced project whose song object is gone, one lip-sync slot in all
    workers = start_workers(lipsync_concurrency="1", **FORMAT)
    ctx = get_context()
    project_id = lip_synced_project(ctx, song.wav, [0.0, 2.5, 5.0], {2})
    song_key = ctx.projects.get(project_id).song_key or ""
    ctx.clips.delete(song_key)

    # When it runs
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)

    # Then the lip-synced scene fails naming the lost song, keeping its earlier clips, nothing
    # was paid for the lip-sync and the quota holds no slot of it
    plain, marked = view.scenes
    assert plain.status == SceneStatus.COMPLETED
    assert marked.status == SceneStatus.FAILED
    assert marked.last_error and "song" in marked.last_error
    assert "gone from the store" in marked.last_error
    assert marked.original_video_clip_s3_key and marked.working_video_clip_s3_key
    assert view.status == ProjectStatus.FAILED
    pool = f"lipsync:{ctx.settings.lipsync_provider}"
    snapshot = ctx.limiter.snapshot(pool)
    assert not [m for m in snapshot.held if project_id in m], snapshot
    assert project_id not in ctx.limiter.slots_held(pool)
    assert generations_per_scene(workers.ledger, project_id) == {1: 1, 2: 1}
    assert "S3 unavailable" not in workers.service.log_text()
    assert_invariants(project_id)


def test_a_missing_song_fails_the_lip_sync_before_it_waits_for_a_slot(
    stack: object, broker_cleared: None
) -> None:
    # Given a scene waiting for its lip-sync under a run, its song gone, and every lip-sync
    # slot held by another project's scenes
    ctx = get_context()
    project_id = waiting_for_lip_sync(ctx)
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    ctx.clips.delete(ctx.projects.get(project_id).song_key or "")
    lipsync, other = LipSync(ctx), str(uuid.uuid4())
    for sequence in range(1, lipsync.limit + 1):
        granted = ctx.limiter.acquire(
            lipsync.pool, slot_member(other, sequence), limit=lipsync.limit, ttl=60, line_ttl=60
        )
        assert granted.granted
    # When its step runs
    step = SceneJob(ctx, project_id, 2, run_id, "local").step()
    # Then it fails at once naming the lost song: its inputs are read before a slot is asked
    # for, so it never waits in line for a slot it could not use
    assert (step.next, step.outcome) == (Next.DONE, "failed: inputs could not be made"), step
    scene = ctx.scenes.get(project_id, 2)
    assert scene is not None and scene.status == SceneStatus.FAILED
    assert scene.last_error and "gone from the store" in scene.last_error
    snapshot = ctx.limiter.snapshot(lipsync.pool)
    assert snapshot.in_flight(project_id) == 0
    assert project_id not in [line.project for line in snapshot.lines], snapshot


def planning_fails_naming(workers: Workers, project_id: str, gone: str) -> None:
    """Run the project: its planning fails saying `gone` is gone from the store, writes no
    scene, and no missing object was retried as an outage."""
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.FAILED, view
    assert view.last_error and f"{gone} is gone from the store" in view.last_error
    assert view.scenes == []
    assert "S3 unavailable" not in workers.service.log_text()


def test_a_song_gone_before_its_analysis_fails_planning_with_the_reason(
    start_workers: StartWorkers, song: SynthSong
) -> None:
    workers = start_workers(**FORMAT)
    ctx = get_context()
    project_id = song_project_unanalysed(ctx, "No song", song.wav)
    song_key = ctx.projects.get(project_id).song_key or ""
    ctx.clips.delete(song_key)

    planning_fails_naming(workers, project_id, "song")
    assert ctx.projects.get(project_id).timeline_key is None


def test_a_timeline_gone_before_planning_fails_planning_with_the_reason(
    start_workers: StartWorkers, song: SynthSong
) -> None:
    workers = start_workers(**FORMAT)
    ctx = get_context()
    project_id = song_project_unanalysed(ctx, "No timeline", song.wav)
    ensure_timeline(ctx, ctx.projects.get(project_id))
    timeline = ctx.projects.get(project_id).timeline_key or ""
    ctx.clips.delete(timeline)

    planning_fails_naming(workers, project_id, "timeline")


def test_a_clip_gone_before_assembly_fails_the_assembly_saying_why(
    start_workers: StartWorkers,
) -> None:
    # Given a run whose scenes are completed and whose assembly is held before it reads a clip
    workers = start_workers(failpoints="before_assembly=hold", **FORMAT)
    state_dir = Path(workers.env["MVPIPE_STATE_DIR"])
    ctx = get_context()
    project_id = api.create_project("Gone", "x", scenes=[{"prompt": "a", "duration_seconds": 2}])
    api.run_project(project_id)
    wait_for(lambda: held(state_dir, "before_assembly"), 120, "the assembly to be held")
    # When the scene's clip vanishes before the assembly reads it
    scene = ctx.scenes.get(project_id, 1)
    assert scene is not None and scene.working_clip_key is not None
    ctx.clips.delete(scene.working_clip_key)
    release(state_dir, "before_assembly")
    # Then the assembly gives the run up saying why (not "project not found", not an outage
    # retried forever): the project waits for a user's run, and reconcile resets the lost clip
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.PENDING, view
    assert view.last_error is not None and "gone from the store" in view.last_error
    assert "S3 unavailable" not in workers.service.log_text()
    report = api.reconcile(project_id)
    assert report.total >= 1, report
    assert api.get_project(project_id).scenes[0].status == SceneStatus.PENDING
