"""Lip-sync, the second paid stage, end to end on the local stack: marked scenes get a third clip
made from their cut and the song's audio for their slot, the final video shows it, and each
stage is paid exactly once per scene (again only for what a user asks to redo)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from numpy.typing import NDArray

from mvpipe import api
from mvpipe.deps import get_context
from mvpipe.media.audio import decode_mono, slice_audio
from mvpipe.media.cut import cut_clip
from mvpipe.media.meter import FILL, levels, meter_box
from mvpipe.media.synth import SynthSong, synthesize_song
from mvpipe.models import ProjectStatus, ProjectView, SceneStatus, SceneView
from mvpipe.pipeline.cut import output_format
from mvpipe.providers.render import render_clip
from mvpipe.store.clips import clip_key, lipsync_key, working_key
from mvpipe.store.stage_fields import LIP_SYNCED, WORKING
from tests.conftest import Workers
from tests.helpers import assert_invariants, generations_per_scene, lip_synced_project

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]

WIDTH, HEIGHT, FPS = 160, 90, 12
SETTINGS = {"output_size": f"{WIDTH}x{HEIGHT}", "output_fps": str(FPS)}
#: Three slots of a 5 s song (planned straight through the store: no song analysis to wait
#: for; the planner's marking is tested on its own), the 2nd and 3rd marked for lip-sync.
BOUNDARIES = [0.0, 1.75, 3.25, 5.0]
MARKED = {2, 3}
Frames = list[NDArray[np.int16]]


@pytest.fixture(scope="module")
def song() -> SynthSong:
    return synthesize_song(seconds=5.0, bpm=120.0, sections=2)


def decode(data: bytes, path: Path) -> Frames:
    path.write_bytes(data)
    with av.open(str(path)) as container:
        return [
            f.to_ndarray(format="rgb24").astype(np.int16)
            for f in container.decode(container.streams.video[0])
        ]


def clip(key: str | None, path: Path) -> Frames:
    assert key is not None
    return decode(get_context().clips.read(key), path)


def slot(scene: SceneView) -> tuple[int, int]:
    return round((scene.start_seconds or 0.0) * FPS), round((scene.end_seconds or 0.0) * FPS)


def meter_fill(frame: NDArray[np.int16]) -> float:
    """The share of the meter's panel showing its fill colour."""
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = meter_box(width, height)
    panel = frame[y0:y1, x0 + 1 : x1 - 1]
    near = np.abs(panel - np.array(FILL)).max(axis=2) < 80
    return float(near.mean())


def difference(a: Frames, b: Frames) -> list[float]:
    """Mean absolute difference of each pair of frames."""
    return [float(np.abs(x - y).mean()) for x, y in zip(a, b, strict=True)]


def paid(workers: Workers, project_id: str) -> tuple[dict[int, int], dict[int, int]]:
    return (
        dict(generations_per_scene(workers.ledger, project_id)),
        dict(generations_per_scene(workers.ledger, project_id, "lipsync")),
    )


def lip_synced_and_run(
    start_workers: StartWorkers, song: SynthSong
) -> tuple[Workers, str, ProjectView]:
    """Workers at `SETTINGS`, and a project of `BOUNDARIES` (`MARKED` lip-synced) run by them
    until no run is active."""
    workers = start_workers(**SETTINGS)
    project_id = lip_synced_project(get_context(), song.wav, BOUNDARIES, MARKED)
    api.run_project(project_id)
    return workers, project_id, api.wait_project(project_id, timeout=150)


def test_marked_scenes_are_lip_synced_once_and_the_final_video_shows_them(
    start_workers: StartWorkers, song: SynthSong, tmp_path: Path
) -> None:
    # Given a project with a song, some of its scenes marked for lip-sync, when it runs
    workers, project_id, view = lip_synced_and_run(start_workers, song)

    # Then every scene is completed and the marked ones have all three clips, each exactly
    # their slot's frames
    assert view.status == ProjectStatus.COMPLETED, [(s.sequence, s.last_error) for s in view.scenes]
    marked = [s for s in view.scenes if s.lip_sync]
    assert {s.sequence for s in marked} == MARKED
    for scene in view.scenes:
        assert scene.status == SceneStatus.COMPLETED
        assert (scene.lip_synced_video_clip_s3_key is not None) == scene.lip_sync
    song_samples = decode_mono(song.wav, 16000)
    final_frames = decode(
        api.download(project_id, tmp_path / "final.mp4").read_bytes(), tmp_path / "f.mp4"
    )
    for scene in marked:
        first, end = slot(scene)
        assert scene.original_video_clip_s3_key and scene.working_video_clip_s3_key
        working = clip(scene.working_video_clip_s3_key, tmp_path / "w.mp4")
        synced = clip(scene.lip_synced_video_clip_s3_key, tmp_path / "l.mp4")
        assert len(working) == len(synced) == end - first
        # and the lip-synced clip is the cut with a meter that follows the slot's audio
        heard = levels(
            slice_audio(song_samples, 16000, first / FPS, end / FPS), 16000, FPS, end - first
        )
        shown = [meter_fill(f) for f in synced]
        assert max(shown) > 0.5 and np.corrcoef(heard, shown)[0, 1] > 0.9, (heard, shown)
        assert max(meter_fill(f) for f in working) < 0.05
        # and the final video shows the lip-synced clip in the slot, not the cut
        in_final = final_frames[first:end]
        assert max(difference(in_final, synced)) < 1.0
        assert min(difference(in_final, working)) > 1.0

    # and each scene paid one generation, each marked scene one lip-sync
    everyone = {s.sequence: 1 for s in view.scenes}
    assert paid(workers, project_id) == (everyone, {2: 1, 3: 1})
    assert_invariants(project_id)

    # When it runs again, nothing is paid and the final video is the same
    api.run_project(project_id).get(timeout=60)
    again = api.wait_project(project_id, timeout=60)
    assert again.final_video_s3_key == view.final_video_s3_key
    assert paid(workers, project_id) == (everyone, {2: 1, 3: 1})

    # When a marked scene is regenerated, it pays one generation and one lip-sync more
    api.regenerate_scene(project_id, 3)
    regenerated = api.wait_project(project_id, timeout=120)
    assert regenerated.status == ProjectStatus.COMPLETED, regenerated.last_error
    assert paid(workers, project_id) == ({**everyone, 3: 2}, {2: 1, 3: 2})
    before, after = view.scenes[2], regenerated.scenes[2]
    assert after.lip_synced_video_clip_s3_key not in (None, before.lip_synced_video_clip_s3_key)
    assert regenerated.final_video_s3_key != view.final_video_s3_key
    assert_invariants(project_id)


def test_a_changed_output_format_keeps_the_lip_synced_clips_and_pays_nothing_again(
    start_workers: StartWorkers, song: SynthSong, tmp_path: Path
) -> None:
    # Given a project completed by workers cutting at 160x90, 12 fps, scenes 2 and 3 lip-synced
    first, project_id, old = lip_synced_and_run(start_workers, song)
    assert old.status == ProjectStatus.COMPLETED, old.last_error
    first.service.stop()

    # When the workers come back at 320x180, 24 fps and scene 3 is regenerated
    fps = 24
    second = start_workers(output_size="320x180", output_fps=str(fps))
    api.regenerate_scene(project_id, 3)
    new = api.wait_project(project_id, timeout=150)

    # Then the final video is in the new format, as long as the song, and shows scene 2's
    # lip-synced clip (cut again from it, its meter kept), scene 1 cut again from its original
    assert new.status == ProjectStatus.COMPLETED, new.last_error
    for before, after in zip(old.scenes[:2], new.scenes[:2], strict=True):
        assert after.working_video_clip_s3_key == before.working_video_clip_s3_key
        assert after.lip_synced_video_clip_s3_key == before.lip_synced_video_clip_s3_key
    final = api.download(project_id, tmp_path / "final.mp4")
    with av.open(str(final)) as container:
        video = container.streams.video[0]
        assert (video.codec_context.width, video.codec_context.height) == (320, 180)
        assert video.average_rate == fps
    frames = decode(final.read_bytes(), tmp_path / "f.mp4")
    assert abs(len(frames) - 5.0 * fps) <= 1
    one, two = round(BOUNDARIES[1] * fps), round(BOUNDARIES[2] * fps)  # scene 2's slot
    assert max(meter_fill(f) for f in frames[:one]) < 0.05
    assert max(meter_fill(f) for f in frames[one:two]) > 0.5

    # and only the regenerated scene paid again: one generation and one lip-sync
    paid_first, paid_second = paid(first, project_id), paid(second, project_id)
    generations = Counter(paid_first[0]) + Counter(paid_second[0])
    lip_syncs = Counter(paid_first[1]) + Counter(paid_second[1])
    assert (generations, lip_syncs) == ({1: 1, 2: 1, 3: 2}, {2: 1, 3: 2})
    assert_invariants(project_id)


def test_a_permanent_lip_sync_failure_keeps_the_clips_and_the_next_run_pays_only_lip_sync(
    start_workers: StartWorkers, song: SynthSong
) -> None:
    # Given a lip-sync provider that fails every job it accepted, and a planned project of
    # two scenes, the second marked for lip-sync
    workers = start_workers(local_lipsync_faults="permanent=1.0", **SETTINGS)
    project_id = lip_synced_project(get_context(), song.wav, [0.0, 2.5, 5.0], {2})

    # When the project runs
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)

    # Then the marked scene failed with the provider's reason, keeping its earlier clips, and
    # the other one completed
    assert view.status == ProjectStatus.FAILED
    plain, marked = view.scenes
    assert plain.status == SceneStatus.COMPLETED
    assert marked.status == SceneStatus.FAILED
    assert marked.last_error and "no face" in marked.last_error
    assert marked.original_video_clip_s3_key and marked.working_video_clip_s3_key
    assert marked.lip_synced_video_clip_s3_key is None
    assert paid(workers, project_id) == ({1: 1, 2: 1}, {2: 1})
    assert_invariants(project_id)

    # When the user runs it again, only the lip-sync is paid for again
    api.run_project(project_id)
    again = api.wait_project(project_id, timeout=120)
    assert again.status == ProjectStatus.FAILED
    assert paid(workers, project_id) == ({1: 1, 2: 1}, {2: 2})
    assert [s.original_video_clip_s3_key for s in again.scenes] == [
        s.original_video_clip_s3_key for s in view.scenes
    ]
    assert again.scenes[1].working_video_clip_s3_key == marked.working_video_clip_s3_key
    assert_invariants(project_id)


def test_reconcile_records_a_lip_sync_uploaded_but_not_recorded(
    start_workers: StartWorkers, song: SynthSong, tmp_path: Path
) -> None:
    # Given a run whose worker died after uploading scene 2's lip-synced clip, before its write
    workers = start_workers(**SETTINGS)
    ctx = get_context()
    project_id = lip_synced_project(ctx, song.wav, [0.0, 2.5, 5.0], {2})
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    original, working = tmp_path / "o.mp4", tmp_path / "w.mp4"
    original.write_bytes(render_clip("performance", 3.0))
    cut_clip(original, working, frames=30, fmt=output_format(ctx.settings))
    scenes = ctx.scenes
    scenes.claim(project_id, 2, run_id=run_id, token="g", lease_seconds=60, max_attempts=5)
    scenes.record_operation(project_id, 2, token="g", operation_id="op-g", run_id=run_id)
    ctx.clips.put(clip_key(project_id, 2, "op-g"), original.read_bytes())
    assert scenes.complete(
        project_id, 2, operation_id="op-g", clip_key=clip_key(project_id, 2, "op-g")
    )
    cut = working_key(project_id, 2, clip_key(project_id, 2, "op-g"), "0123456789abcdef")
    ctx.clips.put(cut, working.read_bytes())
    assert scenes.record_output(
        project_id,
        2,
        stage=WORKING,
        key=cut,
        made_from=("original_clip_key", clip_key(project_id, 2, "op-g")),
        last=False,
    )
    assert scenes.claim(
        project_id,
        2,
        run_id=run_id,
        token="l",
        lease_seconds=60,
        max_attempts=5,
        stage=LIP_SYNCED,
        requires=WORKING.output,
    )
    scenes.record_operation(
        project_id, 2, token="l", operation_id="op-l", run_id=run_id, stage=LIP_SYNCED
    )
    ctx.clips.put(lipsync_key(project_id, 2, "op-l"), working.read_bytes())

    # When reconcile passes
    report = api.reconcile(project_id)

    # Then it records the uploaded clip (completing the scene, nothing paid), and the run it
    # takes over makes the rest
    assert report.recovered_clips == 1
    scene = ctx.scenes.get(project_id, 2)
    assert scene is not None and scene.status == SceneStatus.COMPLETED
    assert scene.lip_synced_clip_key == lipsync_key(project_id, 2, "op-l")
    view = api.wait_project(project_id, timeout=60)
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    assert paid(workers, project_id) == ({1: 1}, {})
    assert_invariants(project_id)
    assert api.reconcile(project_id).total == 0
