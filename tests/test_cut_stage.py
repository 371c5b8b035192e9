"""The cut stage through real workers: every scene ends with a working clip of exactly its slot's
frames in the output format, cut on the media queue, recorded from the original it cut."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import av
import numpy as np
import pytest

from mvpipe import api
from mvpipe.deps import Context, get_context
from mvpipe.models import ProjectStatus, SceneStatus, SceneView
from mvpipe.providers.base import VideoRequest
from mvpipe.store.clips import clip_key, operation_key, scene_prefix
from mvpipe.store.table import project_pk, scene_sk
from tests.conftest import Workers
from tests.helpers import assert_invariants, generations_per_scene, wait_for

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]
#: A small, fast output format (the default is 1280x720 at 24 fps).
FORMAT = {"output_size": "320x180", "output_fps": "12"}


@dataclass(frozen=True)
class Measured:
    codec: str
    pix_fmt: str
    width: int
    height: int
    fps: float
    frames: int
    audio_streams: int


def measure(data: bytes) -> Measured:
    """Decode every frame with PyAV: what a player would show."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        ctx = stream.codec_context
        return Measured(
            ctx.name,
            str(ctx.pix_fmt),
            ctx.width,
            ctx.height,
            float(stream.average_rate or 0),
            frames,
            len(container.streams.audio),
        )


def assert_cut(project_id: str, scene: SceneView, frames: int) -> None:
    clips = get_context().clips
    assert scene.status == SceneStatus.COMPLETED
    assert scene.original_video_clip_s3_key and scene.working_video_clip_s3_key
    got = measure(clips.read(scene.working_video_clip_s3_key))
    assert got == Measured("h264", "yuv420p", 320, 180, 12.0, frames, 0), (scene.sequence, got)
    # Named after the generate operation, beside its original: `{operationKey}-cut-{hash}.mp4`.
    op_key = operation_key(scene.provider_operation_id or "")
    prefix = f"{scene_prefix(project_id, scene.sequence)}{op_key}-cut-"
    assert scene.working_video_clip_s3_key.startswith(prefix)


def set_slots(ctx: Context, project_id: str, slots: list[tuple[float, float]]) -> None:
    """Give user scenes song slots (planning does this for a song; no song analysis needed)."""
    m = ctx.table.model
    for sequence, (start, end) in enumerate(slots, start=1):
        assert ctx.table.update(
            project_pk(project_id),
            scene_sk(sequence),
            [m.start_seconds.set(start), m.end_seconds.set(end)],
            None,
        )


def test_songless_scenes_are_cut_on_the_media_queue_to_their_clip_length(
    start_workers: StartWorkers,
) -> None:
    # The media worker alone can cut; the other never consumes mvpipe.media, so every scene's
    # chain must move queues under its task id (the chord still completes and counts each once).
    # Clips capped at 2 s: shorter than the scenes, so the cut holds their last frame.
    media = start_workers(concurrency=1, queues="mvpipe.media", local_clip_seconds="2", **FORMAT)
    main = start_workers(queues="mvpipe.plan,mvpipe.video", local_clip_seconds="2", **FORMAT)
    project_id = api.create_project(
        "Cut", "One.\nTwo.", scenes=[{"prompt": "a", "duration_seconds": 3}, {"prompt": "b"}]
    )
    result = api.run_project(project_id)
    view = api.wait_project(project_id, timeout=180)
    assert view.status == ProjectStatus.COMPLETED
    assert result.get(timeout=30)["status"] == "completed"
    scenes = api.get_project(project_id).scenes
    # The capped render is shorter than each scene: its last frame is held.
    for scene in scenes:
        assert_cut(project_id, scene, scene.duration_seconds * 12)
    assert "held its last frame" in media.service.log_text()
    assert "cut recorded" in media.service.log_text()
    assert "cut recorded" not in main.service.log_text()
    assert generations_per_scene(main.ledger, project_id) == {1: 1, 2: 1}
    assert_invariants(project_id)

    # A rerun pays nothing and keeps every clip.
    keys = [(s.original_video_clip_s3_key, s.working_video_clip_s3_key) for s in scenes]
    api.run_project(project_id).get(timeout=60)
    again = api.wait_project(project_id, timeout=60)
    assert [
        (s.original_video_clip_s3_key, s.working_video_clip_s3_key) for s in again.scenes
    ] == keys
    assert generations_per_scene(main.ledger, project_id) == {1: 1, 2: 1}


def test_slot_scenes_get_exactly_their_slot_frames(start_workers: StartWorkers) -> None:
    workers = start_workers(**FORMAT)
    ctx = get_context()
    project_id = api.create_project(
        "Slots", "Beat.", scenes=[{"prompt": f"s{n}", "duration_seconds": 2} for n in (1, 2, 3)]
    )
    # Boundaries off the frame grid: each rounds on its own, so the three tile 0..4 s exactly.
    set_slots(ctx, project_id, [(0.0, 1.37), (1.37, 3.05), (3.05, 4.0)])
    api.run_project(project_id)
    assert api.wait_project(project_id, timeout=180).status == ProjectStatus.COMPLETED
    scenes = api.get_project(project_id).scenes
    expected = [round(1.37 * 12), round(3.05 * 12) - round(1.37 * 12), 48 - round(3.05 * 12)]
    for scene, frames in zip(scenes, expected, strict=True):
        assert_cut(project_id, scene, frames)
    assert sum(expected) == 48
    assert generations_per_scene(workers.ledger, project_id) == {1: 1, 2: 1, 3: 1}
    assert_invariants(project_id)


def test_regenerating_a_scene_makes_a_new_cut_and_leaves_the_others(
    start_workers: StartWorkers,
) -> None:
    workers = start_workers(**FORMAT)
    project_id = api.create_project("Again", "x", scenes=[{"prompt": "a"}, {"prompt": "b"}])
    api.run_project(project_id)
    before = {s.sequence: s for s in api.wait_project(project_id, timeout=120).scenes}
    api.regenerate_scene(project_id, 2)
    after = api.wait_project(project_id, timeout=120)
    assert after.status == ProjectStatus.COMPLETED
    new = {s.sequence: s for s in api.get_project(project_id).scenes}
    assert new[1].working_video_clip_s3_key == before[1].working_video_clip_s3_key
    assert new[2].working_video_clip_s3_key != before[2].working_video_clip_s3_key
    assert_cut(project_id, new[2], new[2].duration_seconds * 12)
    assert generations_per_scene(workers.ledger, project_id) == {1: 1, 2: 2}
    assert_invariants(project_id)


def wide_clip() -> bytes:
    """A real one-frame H.264 MP4 8,200 pixels wide: past any frame a provider makes (the cut
    refuses it by its declared size, before decoding), yet tiny to make and store."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=12, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 8200, 16, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((24, 8200), np.uint8), format="yuv420p")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize(
    ("original", "reason"),
    [
        (lambda: b"\x00\x00\x00\x18ftypmp42 not really a video", "could not be opened"),
        (wide_clip, "frames are too large: 8200x16"),
    ],
    ids=["undecodable", "frames-too-large"],
)
def test_an_original_that_cannot_be_cut_fails_its_scene_and_keeps_the_original(
    start_workers: StartWorkers, original: Callable[[], bytes], reason: str
) -> None:
    workers = start_workers(**FORMAT)
    ctx = get_context()
    project_id = api.create_project("Broken", "x", scenes=[{"prompt": "a"}])
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    claim = ctx.scenes.claim(
        project_id, 1, run_id=run_id, token="t", lease_seconds=60, max_attempts=5
    )
    assert claim.outcome == "won"
    operation_id = ctx.video_provider("local").submit(VideoRequest(project_id, 1, "a", None, 2))
    assert (
        ctx.scenes.record_operation(
            project_id, 1, token="t", operation_id=operation_id, run_id=run_id
        )
        == "won"
    )
    key = clip_key(project_id, 1, operation_id)
    ctx.clips.put(key, original())  # the worker died
    # The dead run's worker uploaded before it died: reconcile records the original, and the run
    # it takes over cuts it.
    report = api.reconcile(project_id)
    assert report.recovered_clips == 1 and report.runs_taken_over == 1
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.FAILED
    scene = view.scenes[0]
    assert scene.status == SceneStatus.FAILED
    assert scene.last_error and "could not be cut" in scene.last_error
    assert reason in scene.last_error
    # and it says the way out: a run cuts the same original again, only a new clip helps
    way_out = f"`mvpipe regenerate {project_id} 1` pays for a new clip"
    assert way_out in scene.last_error
    assert scene.original_video_clip_s3_key == key and scene.working_video_clip_s3_key is None
    assert generations_per_scene(workers.ledger, project_id) == {1: 1}
    assert_invariants(project_id)

    # Another run pays nothing: it cuts the kept original, fails the same way, says the same
    api.run_project(project_id)
    again = api.wait_project(project_id, timeout=120)
    assert again.status == ProjectStatus.FAILED
    assert again.scenes[0].last_error and way_out in again.scenes[0].last_error
    assert again.scenes[0].original_video_clip_s3_key == key
    assert generations_per_scene(workers.ledger, project_id) == {1: 1}

    # The way out named: one new paid clip, which is cut, and the project completes
    api.regenerate_scene(project_id, 1)
    done = api.wait_project(project_id, timeout=120)
    assert done.status == ProjectStatus.COMPLETED, done.last_error
    assert done.scenes[0].original_video_clip_s3_key not in (None, key)
    assert done.scenes[0].working_video_clip_s3_key is not None
    assert generations_per_scene(workers.ledger, project_id) == {1: 2}
    assert_invariants(project_id)


def test_a_scene_whose_cut_was_lost_resumes_with_one_chain(start_workers: StartWorkers) -> None:
    workers = start_workers(**FORMAT)
    ctx = get_context()
    project_id = api.create_project("Resume", "x", scenes=[{"prompt": "a"}])
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    claim = ctx.scenes.claim(
        project_id, 1, run_id=run_id, token="t", lease_seconds=60, max_attempts=5
    )
    assert claim.outcome == "won"
    provider = ctx.video_provider("local")
    operation_id = provider.submit(VideoRequest(project_id, 1, "a", None, 2))
    assert (
        ctx.scenes.record_operation(
            project_id, 1, token="t", operation_id=operation_id, run_id=run_id
        )
        == "won"
    )
    status = wait_for(lambda: (s := provider.poll(operation_id)).finished and s, 30, "the job")
    key = clip_key(project_id, 1, operation_id)
    ctx.clips.put(key, provider.download(status))
    assert ctx.scenes.complete(project_id, 1, operation_id=operation_id, clip_key=key)
    # The original is recorded and the worker that was to cut it is gone; the run looks alive,
    # so only the missing stage is resumed: one chain, never a second.
    ctx.board.touch_run(run_id, 60)
    report = api.reconcile(project_id)
    assert report.resumed_stages == 1 and report.runs_taken_over == 0
    assert api.reconcile(project_id).resumed_stages == 0
    wait_for(
        lambda: ctx.scenes.get(project_id, 1).status == SceneStatus.COMPLETED,  # type: ignore[union-attr]
        60,
        "the resumed cut",
    )
    scenes = api.get_project(project_id).scenes
    assert_cut(project_id, scenes[0], scenes[0].duration_seconds * 12)
    assert generations_per_scene(workers.ledger, project_id) == {1: 1}
