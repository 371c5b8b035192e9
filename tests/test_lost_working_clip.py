"""A lost working clip under its lip-sync: the cut is deterministic (the same original, slot
and format make the same key), so the lip-synced clip made from that key still holds. Only the
cut is made again; the lip-sync is not paid for twice."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.devstack.drills import heal, paid_generations
from mvpipe.media.probe import probe_video
from mvpipe.media.synth import synthesize_song
from mvpipe.models import ProjectStatus, ProjectView, SceneStatus, SceneView
from tests.conftest import Workers
from tests.helpers import assert_invariants, lip_synced_project

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]


def _completed_lip_synced(start_workers: StartWorkers) -> tuple[Workers, str, SceneView]:
    """A completed project of two scenes whose scene 2 is lip-synced: its scene 2."""
    workers = start_workers(output_size="160x90", output_fps="12")
    song = synthesize_song(seconds=5.0, bpm=120.0, sections=1)
    project_id = lip_synced_project(get_context(), song.wav, [0.0, 2.5, 5.0], {2})
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED, view
    return workers, project_id, view.scenes[1]


def _assert_final_video(view: ProjectView) -> None:
    """The final video is made again from the scenes, the song's length."""
    assert view.final_video_s3_key is not None
    facts = probe_video(get_context().clips.read(view.final_video_s3_key))
    assert facts.video_seconds == pytest.approx(5.0, abs=0.1)
    assert facts.audio_codec is not None


def test_a_lost_working_clip_is_cut_again_and_its_lip_sync_kept(
    start_workers: StartWorkers,
) -> None:
    # Given a completed project whose scene 2 is lip-synced
    workers, project_id, done = _completed_lip_synced(start_workers)
    ctx = get_context()
    working, synced = done.working_video_clip_s3_key, done.lip_synced_video_clip_s3_key
    assert working and synced
    # When its working clip vanishes and reconcile finds it
    ctx.clips.delete(working)
    api.reconcile(project_id)
    # Then only the working clip is cleared: the lip-sync made from its key is kept
    reset = ctx.scenes.get(project_id, 2)
    assert reset is not None and reset.status == SceneStatus.PENDING, reset
    assert reset.working_clip_key is None
    assert reset.lip_synced_clip_key == synced
    assert reset.lip_sync_operation_id == done.lip_sync_operation_id
    # And a run cuts it again at the same key and completes the scene, paying nothing more
    view = heal(project_id)
    assert view.status == ProjectStatus.COMPLETED, view
    again = view.scenes[1]
    assert again.status == SceneStatus.COMPLETED
    assert again.working_video_clip_s3_key == working and ctx.clips.exists(working)
    assert again.lip_synced_video_clip_s3_key == synced
    assert paid_generations(workers.ledger, project_id, "lipsync") == {2: 1}
    assert paid_generations(workers.ledger, project_id) == {1: 1, 2: 1}
    # And the final video is made again from the scenes, the song's length
    _assert_final_video(view)
    assert_invariants(project_id)


def test_a_lost_working_clip_and_its_lost_lip_sync_are_both_made_again(
    start_workers: StartWorkers,
) -> None:
    # Given a completed project whose scene 2 is lip-synced
    workers, project_id, done = _completed_lip_synced(start_workers)
    ctx = get_context()
    working, synced = done.working_video_clip_s3_key, done.lip_synced_video_clip_s3_key
    assert working and synced
    # When both its working clip and its lip-synced clip vanish and reconcile finds them
    ctx.clips.delete(working)
    ctx.clips.delete(synced)
    api.reconcile(project_id)
    # Then both are cleared, with the lip-sync's operation: nothing left points at a lost file
    reset = ctx.scenes.get(project_id, 2)
    assert reset is not None and reset.status == SceneStatus.PENDING, reset
    assert reset.working_clip_key is None
    assert reset.lip_synced_clip_key is None and reset.lip_sync_operation_id is None
    # And a run cuts it again and lip-syncs it again (paid twice: the first one is gone)
    view = heal(project_id)
    assert view.status == ProjectStatus.COMPLETED, view
    again = view.scenes[1]
    assert again.status == SceneStatus.COMPLETED
    assert again.working_video_clip_s3_key == working and ctx.clips.exists(working)
    resynced = again.lip_synced_video_clip_s3_key
    assert resynced is not None and resynced != synced and ctx.clips.exists(resynced)
    assert paid_generations(workers.ledger, project_id, "lipsync") == {2: 2}
    assert paid_generations(workers.ledger, project_id) == {1: 1, 2: 1}
    # And the final video is made again from the scenes, the song's length
    _assert_final_video(view)
    assert_invariants(project_id)
