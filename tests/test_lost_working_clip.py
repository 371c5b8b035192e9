"""A lost working clip under its lip-sync: the cut is free and deterministic (the same original,
slot and format make the same key), so the lip-synced clip made from it still holds. Only the cut
is made again; the lip-sync is not paid for twice, nor after an output format change (the cut is
made in the new format, the lip-synced clip cut again at assembly)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.devstack.drills import heal, paid_generations
from mvpipe.media.probe import probe_video
from mvpipe.media.synth import synthesize_song
from mvpipe.models import ProjectStatus, SceneStatus, SceneView
from mvpipe.store.records import SceneRecord
from tests.conftest import Workers
from tests.helpers import assert_invariants, lip_synced_project

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]


@dataclass(frozen=True)
class Completed:
    """A completed project of two scenes whose scene 2 is lip-synced, and its workers."""

    workers: Workers
    project_id: str
    scene: SceneView  # scene 2 as completed
    working: str
    synced: str


@pytest.fixture
def completed(start_workers: StartWorkers) -> Completed:
    workers = start_workers(output_size="160x90", output_fps="12")
    song = synthesize_song(seconds=5.0, bpm=120.0, sections=1)
    project_id = lip_synced_project(get_context(), song.wav, [0.0, 2.5, 5.0], {2})
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED, view
    scene = view.scenes[1]
    working, synced = scene.working_video_clip_s3_key, scene.lip_synced_video_clip_s3_key
    assert working and synced
    return Completed(workers, project_id, scene, working, synced)


def lose(done: Completed, *keys: str) -> SceneRecord:
    """Deletes `keys` and lets reconcile find them: scene 2, set back to pending without its
    working clip."""
    for key in keys:
        get_context().clips.delete(key)
    api.reconcile(done.project_id)
    reset = get_context().scenes.get(done.project_id, 2)
    assert reset is not None and reset.status == SceneStatus.PENDING, reset
    assert reset.working_clip_key is None
    return reset


def healed(done: Completed, *later: Workers, size: tuple[int, int] = (160, 90)) -> SceneView:
    """A run that completes scene 2 again, with no video paid again (over the ledgers of
    `done`'s workers and of the `later` ones) and the final video made again from the scenes,
    `size` and the song's length: scene 2."""
    view = heal(done.project_id)
    assert view.status == ProjectStatus.COMPLETED, view
    again = view.scenes[1]
    assert again.status == SceneStatus.COMPLETED
    assert again.working_video_clip_s3_key is not None
    assert get_context().clips.exists(again.working_video_clip_s3_key)
    assert paid(done, later) == {1: 1, 2: 1}
    assert view.final_video_s3_key is not None
    facts = probe_video(get_context().clips.read(view.final_video_s3_key))
    assert (facts.width, facts.height) == size
    assert facts.video_seconds == pytest.approx(5.0, abs=0.1)
    assert facts.audio_codec is not None
    assert_invariants(done.project_id)
    return again


def paid(done: Completed, later: tuple[Workers, ...], stage: str = "generate") -> Counter[int]:
    """`stage`'s accepted jobs per scene over every ledger of the test's workers."""
    ledgers = [done.workers.ledger, *(w.ledger for w in later)]
    return sum((paid_generations(ledger, done.project_id, stage) for ledger in ledgers), Counter())


def test_a_lost_working_clip_is_cut_again_and_its_lip_sync_kept(completed: Completed) -> None:
    # Given a completed project whose scene 2 is lip-synced (`completed`), when its working
    # clip vanishes and reconcile finds it
    reset = lose(completed, completed.working)
    # Then only the working clip is cleared: the lip-sync made from its key is kept
    assert reset.lip_synced_clip_key == completed.synced
    assert reset.lip_sync_operation_id == completed.scene.lip_sync_operation_id
    # And a run cuts it again at the same key and completes the scene, paying nothing more
    again = healed(completed)
    assert again.working_video_clip_s3_key == completed.working
    assert again.lip_synced_video_clip_s3_key == completed.synced
    assert paid(completed, (), "lipsync") == {2: 1}


def test_a_lost_working_clip_and_its_lost_lip_sync_are_both_made_again(
    completed: Completed,
) -> None:
    # Given a completed project whose scene 2 is lip-synced (`completed`), when both its
    # working clip and its lip-synced clip vanish and reconcile finds them
    reset = lose(completed, completed.working, completed.synced)
    # Then both are cleared, with the lip-sync's operation: nothing left points at a lost file
    assert reset.lip_synced_clip_key is None and reset.lip_sync_operation_id is None
    # And a run cuts it again and lip-syncs it again (paid twice: the first one is gone)
    again = healed(completed)
    resynced = again.lip_synced_video_clip_s3_key
    assert resynced is not None and resynced != completed.synced
    assert get_context().clips.exists(resynced)
    assert again.working_video_clip_s3_key == completed.working
    assert paid(completed, (), "lipsync") == {2: 2}


def test_a_lost_working_clip_after_a_format_change_is_cut_anew_and_its_lip_sync_kept(
    completed: Completed, start_workers: StartWorkers
) -> None:
    # Given a completed project whose scene 2 is lip-synced (`completed`, at 160x90, 12 fps),
    # and the workers (and this process) back at 320x180, 24 fps
    completed.workers.service.stop()
    second = start_workers(output_size="320x180", output_fps="24")
    # When its working clip vanishes and reconcile finds it
    reset = lose(completed, completed.working)
    # Then only the working clip is cleared: the lip-sync, a paid job's only output, is kept
    assert reset.lip_synced_clip_key == completed.synced
    assert reset.lip_sync_operation_id == completed.scene.lip_sync_operation_id
    # And a run cuts it in the new format and completes the scene, paying nothing more: the
    # final video is in the new format (the lip-synced clip cut again at assembly)
    again = healed(completed, second, size=(320, 180))
    assert again.working_video_clip_s3_key != completed.working
    assert again.lip_synced_video_clip_s3_key == completed.synced
    assert paid(completed, (second,), "lipsync") == {2: 1}
