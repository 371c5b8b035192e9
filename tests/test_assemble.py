"""The final cut with the real parts: a project whose scenes have working clips is assembled into
one H.264 + AAC video as long as its song, reused when its inputs have not changed, cleared when
a scene is regenerated, and healed after a duplicate or a killed assembly."""

from __future__ import annotations

import contextlib
import itertools
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest
import redis

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.deps import Context, build_context, get_context, reset_context
from mvpipe.devstack.drills import heal
from mvpipe.devstack.failpoints import marker_dir
from mvpipe.devstack.invariants import violations
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import Conflict, InvalidInput, NotFound
from mvpipe.media.cut import cut_clip
from mvpipe.models import ProjectStatus, SceneSpec, SceneStatus
from mvpipe.pipeline.assemble import BUILDING, _Hold, assemble_run, final_key
from mvpipe.pipeline.cut import output_format
from mvpipe.pipeline.plan import RunPlan, plan_run
from mvpipe.pipeline.reconcile import reconcile
from mvpipe.providers.render import render_clip
from mvpipe.settings import get_settings
from mvpipe.store.claim_outcomes import Claim
from mvpipe.store.clips import clip_key, working_key
from mvpipe.store.finals import final_prefix
from mvpipe.store.records import utc_now_iso
from mvpipe.store.table import project_pk, scene_sk
from tests.conftest import Workers
from tests.helpers import (
    assert_invariants,
    commands_under,
    generations_per_scene,
    song_project_unanalysed,
    wait_for,
)
from tests.songs import make_song
from tests.test_runs import RecordingDispatcher

pytestmark = pytest.mark.integration

StartWorkers = Callable[..., Workers]
SIZE, FPS = "160x90", 12
SONG_SECONDS = 6.5
#: Slot boundaries on the 1/12 s frame grid, covering the song exactly.
BOUNDARIES = [0.0, 2.0, 4.25, SONG_SECONDS]
MEDIA = {"output_size": SIZE, "output_fps": str(FPS)}


def completed_song_project(ctx: Context, *, song: bool = True) -> str:
    """A project whose scenes are all completed with working clips made by the real cut, no
    final video and no run (a run of it only assembles)."""
    if song:
        project_id = song_project_unanalysed(ctx, "Final", make_song("wav", SONG_SECONDS).data)
        slots = list(itertools.pairwise(BOUNDARIES))
        specs = [
            SceneSpec(
                prompt=f"scene {n}",
                duration_seconds=3,
                start_seconds=start,
                end_seconds=end,
            )
            for n, (start, end) in enumerate(slots, start=1)
        ]
        run_id = str(uuid.uuid4())
        assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
        assert ctx.projects.save_plan(project_id, run_id, specs, token=uuid.uuid4().hex)
    else:
        scenes = [{"prompt": f"s{n}", "duration_seconds": 2} for n in (1, 2)]
        project_id = api.create_project("Silent", "No song.", scenes=scenes)
        run_id = None
    fmt = output_format(ctx.settings)
    state = ctx.projects.load(project_id)
    for scene in state.scenes:
        start = scene.start_seconds or 0.0
        end = scene.end_seconds if scene.end_seconds is not None else scene.duration_seconds
        frames = round(end * fmt.fps) - round(start * fmt.fps)
        give_working_clip(ctx, project_id, scene.sequence, frames)
    fresh = ctx.projects.load(project_id)
    assert ctx.projects.settle(
        project_id,
        observed_run=run_id,
        counters=fresh.counters,
        status=ProjectStatus.PENDING,
        release=run_id is not None,
    )
    return project_id


def give_working_clip(ctx: Context, project_id: str, sequence: int, frames: int) -> None:
    """Upload an original and its cut, and record both on a completed scene."""
    operation = f"test-{uuid.uuid4().hex}"
    original_key = clip_key(project_id, sequence, operation)
    working = working_key(project_id, sequence, original_key, uuid.uuid4().hex[:16])
    with tempfile.TemporaryDirectory() as tmp:
        original, cut = Path(tmp) / "original.mp4", Path(tmp) / "working.mp4"
        original.write_bytes(render_clip(f"{project_id} scene {sequence}", 3.0))
        cut_clip(original, cut, frames=frames, fmt=output_format(ctx.settings))
        ctx.clips.put(original_key, original.read_bytes())
        ctx.clips.put(working, cut.read_bytes())
    m = ctx.table.model
    assert ctx.table.update(
        project_pk(project_id),
        scene_sk(sequence),
        [
            m.status.set(SceneStatus.COMPLETED),
            m.original_clip_key.set(original_key),
            m.working_clip_key.set(working),
            m.operation_id.set(operation),
            m.completed_at.set(utc_now_iso()),
        ],
        m.pk.exists(),
    )


def measure(path: Path) -> dict[str, object]:
    """What a player sees: codecs, frame rate and sizes, decoded seconds of picture and sound."""
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        found: dict[str, object] = {
            "video_codec": video.codec_context.name,
            "rate": video.average_rate,
            "audio_codec": None,
            "audio_seconds": None,
        }
        frames = list(container.decode(video))
        found["sizes"] = {(f.width, f.height) for f in frames}
        found["video_seconds"] = len(frames) / FPS
    with av.open(str(path)) as container:
        if container.streams.audio:
            audio = container.streams.audio[0]
            samples = sum(f.samples for f in container.decode(audio))
            found["audio_codec"] = audio.codec_context.name
            found["audio_seconds"] = samples / audio.codec_context.sample_rate
    return found


def finals(ctx: Context, project_id: str) -> list[str]:
    return [o.key for o in ctx.clips.list(final_prefix(project_id))]


def test_a_completed_project_is_assembled_with_its_song_and_the_object_is_reused(
    start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers(**MEDIA)
    ctx = get_context()
    project_id = completed_song_project(ctx)
    assert api.get_project(project_id).status == ProjectStatus.PENDING

    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    key = view.final_video_s3_key
    assert key == final_key(ctx.projects.load(project_id), output_format(ctx.settings))
    assert finals(ctx, project_id) == [key]
    assert_invariants(project_id)

    out = api.download(project_id, tmp_path)
    assert out.name == f"{project_id}-music-video.mp4"
    m = measure(out)
    frame = 1 / FPS
    assert (m["video_codec"], m["audio_codec"]) == ("h264", "aac")
    assert m["rate"] == Fraction(FPS) and m["sizes"] == {(160, 90)}
    assert abs(float(m["video_seconds"]) - SONG_SECONDS) <= frame + 1e-9  # type: ignore[arg-type]
    assert abs(float(m["audio_seconds"]) - SONG_SECONDS) <= frame  # type: ignore[arg-type]
    # The song was encoded to AAC once, beside the song.
    song_key = view.song_s3_key or ""
    assert ctx.clips.exists(song_key.rsplit(".", 1)[0] + "-aac.m4a")

    # A rerun of a completed project only re-finalizes: same key, nothing assembled.
    api.run_project(project_id)
    assert api.wait_project(project_id, timeout=60).final_video_s3_key == key

    # Forget the key but keep the object (marked): the next assembly records it as it is.
    ctx.clips.put(key, b"marker: not re-uploaded")
    m_ = ctx.table.model
    assert ctx.table.update(
        project_pk(project_id), "METADATA", [m_.final_video_key.remove()], m_.pk.exists()
    )
    api.run_project(project_id)
    again = wait_for(
        lambda: (v := api.get_project(project_id)).final_video_s3_key and v, 120, "re-recording"
    )
    assert again.final_video_s3_key == key and again.status == ProjectStatus.COMPLETED
    assert ctx.clips.read(key) == b"marker: not re-uploaded"
    assert finals(ctx, project_id) == [key]


def test_without_a_song_the_final_video_is_the_scenes_in_order_silent(
    start_workers: StartWorkers, tmp_path: Path
) -> None:
    start_workers(**MEDIA)
    ctx = get_context()
    project_id = completed_song_project(ctx, song=False)
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    m = measure(api.download(project_id, tmp_path / "silent.mp4"))
    assert m["audio_codec"] is None and m["video_codec"] == "h264"
    assert m["video_seconds"] == pytest.approx(4.0)  # two scenes of 2 s
    assert_invariants(project_id)

    # Invariant 8 is checked: a recorded key that is not the current scenes' is a violation.
    other = f"projects/{project_id}/final/{'0' * 16}.mp4"
    ctx.clips.put(other, b"not these scenes")
    m_ = ctx.table.model
    assert ctx.table.update(
        project_pk(project_id), "METADATA", [m_.final_video_key.set(other)], m_.pk.exists()
    )
    assert any("current scenes make" in v for v in violations(ctx, project_id))
    assert ctx.table.update(
        project_pk(project_id), "METADATA", [m_.final_video_key.remove()], m_.pk.exists()
    )
    assert "project completed without finalVideoS3Key" in violations(ctx, project_id)


def test_regenerating_a_scene_clears_the_final_video_in_the_same_write(
    start_workers: StartWorkers,
) -> None:
    start_workers(**MEDIA)
    ctx = get_context()
    project_id = completed_song_project(ctx)
    api.run_project(project_id)
    old = api.wait_project(project_id, timeout=120)
    assert old.final_video_s3_key is not None

    # One transaction: while another run is active nothing is cleared at all.
    blocker = str(uuid.uuid4())
    m = ctx.table.model
    assert ctx.table.update(
        project_pk(project_id), "METADATA", [m.active_run_id.set(blocker)], m.pk.exists()
    )
    with pytest.raises(Conflict):
        api.regenerate_scene(project_id, 2)
    kept = ctx.projects.load(project_id)
    assert kept.project.final_video_key == old.final_video_s3_key
    assert kept.scene(2) is not None and kept.scene(2).working_clip_key is not None  # type: ignore[union-attr]
    assert ctx.table.update(
        project_pk(project_id), "METADATA", [m.active_run_id.remove()], m.pk.exists()
    )

    won = ctx.scenes.reset_for_regeneration(project_id, 2, run_id=str(uuid.uuid4()))
    assert won == Claim.WON
    cleared = ctx.projects.load(project_id)
    scene = cleared.scene(2)
    assert cleared.project.final_video_key is None
    assert scene is not None and scene.status == SceneStatus.PENDING
    assert (scene.clip_key, scene.working_clip_key, scene.lip_synced_clip_key) == (None,) * 3
    assert cleared.scene(1).working_clip_key is not None  # type: ignore[union-attr]


def test_a_regenerated_scene_yields_a_new_final_video(start_workers: StartWorkers) -> None:
    start_workers(**MEDIA)
    ctx = get_context()
    project_id = completed_song_project(ctx)
    api.run_project(project_id)
    old = api.wait_project(project_id, timeout=120)
    assert old.final_video_s3_key is not None

    api.regenerate_scene(project_id, 2)
    new = api.wait_project(project_id, timeout=120)
    assert new.status == ProjectStatus.COMPLETED, new.last_error
    assert new.final_video_s3_key not in (None, old.final_video_s3_key)
    for before, after in zip(old.scenes, new.scenes, strict=True):
        if before.sequence != 2:
            assert after.working_video_clip_s3_key == before.working_video_clip_s3_key
    assert new.scenes[1].original_video_clip_s3_key != old.scenes[1].original_video_clip_s3_key
    # Earlier final videos stay as the project's history.
    assert set(finals(ctx, project_id)) == {old.final_video_s3_key, new.final_video_s3_key}
    assert_invariants(project_id)


def test_a_changed_output_format_assembles_finished_scenes_without_paying_again(
    start_workers: StartWorkers, tmp_path: Path
) -> None:
    # Given a two-scene project completed by workers cutting at 160x90
    first = start_workers()
    project_id = api.create_project(
        "Format", "Two scenes.", scenes=[{"prompt": f"s{n}", "duration_seconds": 2} for n in (1, 2)]
    )
    api.run_project(project_id)
    old = api.wait_project(project_id, timeout=120)
    assert old.status == ProjectStatus.COMPLETED, old.last_error
    first.service.stop()

    # When the workers come back cutting at 320x180 and scene 1 is regenerated
    second = start_workers(output_size="320x180")
    api.regenerate_scene(project_id, 1)
    new = api.wait_project(project_id, timeout=120)

    # Then the final video is assembled at the new size, scene 2's clip cut again for it
    # (its recorded clips as they were), and only the regenerated scene paid again
    assert new.status == ProjectStatus.COMPLETED, new.last_error
    kept, before = new.scenes[1], old.scenes[1]
    assert kept.working_video_clip_s3_key == before.working_video_clip_s3_key
    assert kept.original_video_clip_s3_key == before.original_video_clip_s3_key
    m = measure(api.download(project_id, tmp_path))
    assert m["sizes"] == {(320, 180)} and m["rate"] == Fraction(FPS)
    assert m["video_seconds"] == 4.0 and m["audio_codec"] is None
    paid = generations_per_scene(first.ledger, project_id)
    paid.update(generations_per_scene(second.ledger, project_id))
    assert paid == {1: 2, 2: 1}
    assert_invariants(project_id)


def test_download_names_its_outputs_and_refuses_what_does_not_exist(
    stack: LocalStack, tmp_path: Path
) -> None:
    ctx = get_context()
    project_id = completed_song_project(ctx, song=False)  # no final video yet
    with pytest.raises(NotFound, match="no final video"):
        api.download(project_id, tmp_path)
    with pytest.raises(InvalidInput, match="unknown stage"):
        api.download(project_id, tmp_path, 1, stage="poster")
    with pytest.raises(InvalidInput, match="sequence"):
        api.download(project_id, tmp_path, 0, stage="working")
    with pytest.raises(InvalidInput, match="give its sequence"):
        api.download(project_id, tmp_path, stage="working")
    with pytest.raises(InvalidInput, match="needs a stage"):
        api.download(project_id, tmp_path, 1)
    with pytest.raises(InvalidInput, match="not a directory"):
        api.download(project_id, tmp_path / "missing" / "x.mp4", 1, stage="working")
    with pytest.raises(NotFound, match="no scene 7"):
        api.download(project_id, tmp_path, 7, stage="working")
    with pytest.raises(NotFound, match="no lipsync clip"):
        api.download(project_id, tmp_path, 1, stage="lipsync")
    with pytest.raises(NotFound):
        api.download(str(uuid.uuid4()), tmp_path)
    with pytest.raises(InvalidInput, match="invalid project id"):
        api.download("../etc", tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written by any refusal

    scene = ctx.projects.load(project_id).scene(2)
    assert scene is not None and scene.working_clip_key is not None
    out = api.download(project_id, tmp_path, 2, stage="working")
    assert out == tmp_path / f"{project_id}-scene-002-working.mp4"
    assert out.read_bytes() == ctx.clips.read(scene.working_clip_key)
    named = api.download(project_id, tmp_path / "mine.mp4", 2, stage="original")
    assert named.read_bytes() == ctx.clips.read(scene.clip_key or "")


def test_a_duplicate_assembly_records_one_final_video(start_workers: StartWorkers) -> None:
    start_workers(concurrency=2, **MEDIA)
    ctx = get_context()
    project_id = completed_song_project(ctx)
    run_id = str(uuid.uuid4())
    ctx.board.touch_run(run_id, 300)
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.ASSEMBLING) == run_id
    sent = [app.send_task("mvpipe.assemble_project", args=[project_id, run_id]) for _ in (1, 2)]
    results = [r.get(timeout=120) for r in sent]
    view = api.get_project(project_id)
    assert view.status == ProjectStatus.COMPLETED
    assert {r["status"] for r in results} == {"completed"}
    # Two processes, sent together: one built the video, the other waited and reused it
    assert sorted(r["reused"] for r in results) == [False, True], results
    assert {r["final_video_s3_key"] for r in results} == {view.final_video_s3_key}
    assert finals(ctx, project_id) == [view.final_video_s3_key]
    assert_invariants(project_id)
    assert api.reconcile(project_id).total == 0


@contextlib.contextmanager
def assembling_here(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Context, str, str]]:
    """A completed song project whose run is assembling, assembled by this process at the
    tests' small size: (context, project, run)."""
    for key, value in MEDIA.items():
        monkeypatch.setenv(f"MVPIPE_{key.upper()}", value)
    reset_context()
    try:
        ctx = get_context()
        project_id = completed_song_project(ctx)
        run_id = str(uuid.uuid4())
        assert ctx.projects.win_run(project_id, run_id, ProjectStatus.ASSEMBLING) == run_id
        yield ctx, project_id, run_id
    finally:
        monkeypatch.undo()
        reset_context()


def test_an_assembly_waits_while_another_builds_the_same_video(
    stack: LocalStack, broker_cleared: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with assembling_here(monkeypatch) as (ctx, project_id, run_id):
        key = final_key(ctx.projects.load(project_id), output_format(ctx.settings))
        assert key is not None
        assert ctx.board.hold(f"assemble:{key}", "another", 60)  # another execution builds
        ctx.board.mark_run_alone(run_id, 5)  # its builder's window
        waiting = assemble_run(ctx, project_id, run_id)
        assert waiting.outcome == BUILDING and finals(ctx, project_id) == []
        # the run's mark left to the builder: were it lost, the run is stale after its window
        assert 0 < ctx.redis.pttl(f"{ctx.board.prefix}:live:run:{run_id}") <= 5_000
        assert ctx.projects.load(project_id).project.status == ProjectStatus.ASSEMBLING
        ctx.board.let_go(f"assemble:{key}", "another")  # it died: its hold is gone
        done = assemble_run(ctx, project_id, run_id)
    assert done.outcome == "completed" and not done.reused
    assert finals(ctx, project_id) == [key]


def test_an_assembly_marks_its_run_alive_a_fixed_number_of_times_not_once_per_clip(
    stack: LocalStack,
    redis_client: redis.Redis,
    broker_cleared: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with assembling_here(monkeypatch) as (ctx, project_id, run_id):
        mark = f"{ctx.board.prefix}:live:run:{run_id}"
        done = []
        commands = commands_under(
            redis_client, mark, lambda: done.append(assemble_run(ctx, project_id, run_id))
        )
    assert done[0].outcome == "completed"
    # As its build starts, its window alone (its waiting mark dropped); as the build ends, its
    # staleness again: not before each download (its keeper renews it four times a window,
    # 30 s: none in a build this short)
    assert commands == ["SET", "DEL", "SET"]


@pytest.fixture
def windowed(stack: LocalStack, broker_cleared: None) -> Iterator[Context]:
    """A context whose builder's window is 0.4 s and whose runs go stale after 3 s."""
    update = {"run_stale_seconds": 3.0, "assembly_alive_seconds": 0.4}
    ctx = build_context(get_settings().model_copy(update=update))
    try:
        yield ctx
    finally:
        ctx.close()


def test_a_builder_keeps_its_run_alive_past_its_window_only_while_it_makes_progress(
    windowed: Context, redis_client: redis.Redis
) -> None:
    # Given a builder's window of 0.4 s, a run's staleness of 3 s, and a build's hold
    ctx = windowed
    run_id = str(uuid.uuid4())
    mark = f"{ctx.board.prefix}:live:run:{run_id}"
    ctx.board.keep_run_waiting(run_id, 600)  # its last cut waited in the media queue
    hold = _Hold(ctx, run_id, f"assemble:{uuid.uuid4()}")
    assert hold.taken()
    # When it builds, making progress at its start and then none
    with hold.kept():
        started = time.monotonic()
        assert not redis_client.exists(f"{mark}:waiting")
        assert 0 < redis_client.pttl(mark) <= 400
        wait_for(lambda: not ctx.board.run_alive(run_id), 10, "the run's mark to lapse")
        # Then the run and the hold were kept for the run's staleness, many windows,
        # and lapsed after it (the build is stuck): a takeover may build it instead
        assert time.monotonic() - started >= 3.0
        assert ctx.board.hold(hold.job, "a takeover's builder", 60)
    # And once the build is over, the run's mark is its staleness again (a retry's
    # countdown may follow)
    assert 2_000 < redis_client.pttl(mark) <= 3_000


def test_a_builds_hold_lasts_the_runs_staleness_until_the_build_begins(
    windowed: Context, redis_client: redis.Redis
) -> None:
    # Given a builder's window of 0.4 s and a run's staleness of 3 s
    ctx = windowed
    hold = _Hold(ctx, str(uuid.uuid4()), f"assemble:{uuid.uuid4()}")
    held = f"{ctx.board.prefix}:hold:{hold.job}"
    # When the hold is taken, before its build begins (the looks and counts before it are
    # no thread's to keep: a slow store call there outlasts a window)
    assert hold.taken()
    # Then it lasts the run's staleness, so no second assembly builds beside this one
    assert 2_000 < redis_client.pttl(held) <= 3_000
    assert not ctx.board.hold(hold.job, "a second assembly", 60)
    # And once the build begins, it is the window its keeper renews
    with hold.kept():
        assert 0 < redis_client.pttl(held) <= 400


def test_a_worker_killed_during_assembly_heals(start_workers: StartWorkers) -> None:
    workers = start_workers(failpoints="during_assembly", run_stale_seconds="3", **MEDIA)
    ctx = get_context()
    project_id = completed_song_project(ctx)
    api.run_project(project_id)
    markers = marker_dir(Path(workers.env["MVPIPE_STATE_DIR"]))
    wait_for(lambda: (markers / "during_assembly").exists(), 120, "the assembly to be killed")
    view = heal(project_id, timeout=180)
    assert view.status == ProjectStatus.COMPLETED, view.last_error
    assert finals(ctx, project_id) == [view.final_video_s3_key]
    assert_invariants(project_id)
    assert api.reconcile(project_id).total == 0


def test_a_vanished_final_video_is_assembled_again(start_workers: StartWorkers) -> None:
    start_workers(**MEDIA)
    ctx = get_context()
    project_id = completed_song_project(ctx, song=False)
    api.run_project(project_id)
    key = api.wait_project(project_id, timeout=120).final_video_s3_key
    assert key is not None

    # A user's run notices the missing object and assembles it again, under the same key.
    ctx.clips.delete(key)
    api.run_project(project_id)
    view = api.wait_project(project_id, timeout=120)
    assert view.status == ProjectStatus.COMPLETED and view.final_video_s3_key == key
    assert ctx.clips.exists(key)

    # A final video recorded beside a scene that is no longer completed is forgotten too.
    m = ctx.table.model
    assert ctx.table.update(
        project_pk(project_id), scene_sk(1), [m.status.set(SceneStatus.PENDING)], m.pk.exists()
    )
    assert violations(ctx, project_id)
    assert api.reconcile(project_id).outdated_final_videos == 1
    assert api.get_project(project_id).final_video_s3_key is None
    assert not [v for v in violations(ctx, project_id) if "final" in v.lower()]
    assert ctx.table.update(
        project_pk(project_id), scene_sk(1), [m.status.set(SceneStatus.COMPLETED)], m.pk.exists()
    )
    api.run_project(project_id)
    assert api.wait_project(project_id, timeout=120).final_video_s3_key == key

    # Reconcile forgets a vanished final video: the project waits for a run (invariant 5).
    ctx.clips.delete(key)
    assert api.reconcile(project_id).missing_final_videos == 1
    assert api.get_project(project_id).status == ProjectStatus.PENDING
    assert_invariants(project_id)
    assert api.reconcile(project_id).total == 0
    api.run_project(project_id)
    assert api.wait_project(project_id, timeout=120).final_video_s3_key == key
    assert_invariants(project_id)


def test_a_vanished_clip_resets_its_scene_and_the_final_video_together(
    start_workers: StartWorkers,
) -> None:
    start_workers(**MEDIA)
    ctx = get_context()
    project_id = completed_song_project(ctx, song=False)
    api.run_project(project_id)
    assert api.wait_project(project_id, timeout=120).final_video_s3_key is not None

    gone = ctx.projects.load(project_id).scene(1)
    assert gone is not None and gone.clip_key is not None
    ctx.clips.delete(gone.clip_key)
    assert api.reconcile(project_id).missing_clips == 1
    state = ctx.projects.load(project_id)
    assert state.project.final_video_key is None  # invariant 8: forgotten with the scene
    assert state.scene(1).status == SceneStatus.PENDING  # type: ignore[union-attr]
    assert state.project.status == ProjectStatus.PENDING
    assert_invariants(project_id)


def test_reconcile_sends_a_lost_assembly_and_takes_over_a_dead_one(stack: LocalStack) -> None:
    ctx = get_context()
    project_id = completed_song_project(ctx, song=False)
    dispatcher = RecordingDispatcher()

    # A run whose finalize ran (the board knows its scenes) but whose assembly was never sent.
    run_id = str(uuid.uuid4())
    ctx.board.touch_run(run_id, 60)
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    ctx.board.await_scenes(run_id, 2, [1, 2])
    report = reconcile(ctx, dispatcher, project_ids=[project_id])
    assert report.runs_finalized == 1 and dispatcher.sent == [("assemble", (project_id, run_id))]
    assert api.get_project(project_id).status == ProjectStatus.ASSEMBLING
    assert reconcile(ctx, dispatcher, project_ids=[project_id]).total == 0  # it is assembling
    assert len(dispatcher.sent) == 1

    # The assembly dies with its worker: the run goes stale and is taken over; the new run has
    # nothing to generate, so its finalize goes straight to the assembly.
    ctx.redis.delete(f"mvpipe:live:run:{run_id}")
    assert not ctx.board.run_alive(run_id)
    report = reconcile(ctx, dispatcher, project_ids=[project_id])
    assert report.runs_taken_over == 1
    (_, new_run, scope) = dispatcher.runs[-1]
    assert new_run != run_id and scope is None
    plan = plan_run(ctx, project_id, new_run)
    assert isinstance(plan, RunPlan) and plan.sequences == []
