"""Creating projects with songs against the real moto server: stored whole, or nothing at all."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mvpipe import api
from mvpipe.deps import Context, build_context, get_context, reset_context
from mvpipe.devstack.localstack import LocalStack, free_port
from mvpipe.errors import ConfigurationError, InvalidInput, StoreUnavailable
from mvpipe.models import ProjectSpec, SongSpec
from mvpipe.pipeline.create import create_project
from mvpipe.store.table import METADATA, project_pk, scene_sk
from tests.songs import ENCODINGS, make_song, make_video_only, make_wav, with_latin1_title

pytestmark = pytest.mark.integration

#: Small limits so the too-long and too-large songs stay tiny.
SMALL_LIMITS = {
    "MVPIPE_SONG_MIN_SECONDS": "5",
    "MVPIPE_SONG_MAX_SECONDS": "10",
    "MVPIPE_SONG_MAX_BYTES": "500000",
}


@pytest.fixture
def ctx(stack: LocalStack, broker_cleared: None) -> Iterator[Context]:
    """The store with small song limits; the song analyses a create asks for are cleared after
    the test (no worker here takes them: a later test's would)."""
    saved = {k: os.environ.get(k) for k in SMALL_LIMITS}
    os.environ.update(SMALL_LIMITS)
    reset_context()
    try:
        yield get_context()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_context()


def written(ctx: Context) -> tuple[int, set[str]]:
    """Every item and every object under `projects/`: what a create may have left behind."""
    return ctx.table.model.count(), {o.key for o in ctx.clips.list("projects/")}


@pytest.mark.parametrize(
    ("song", "reason"),
    [
        (b"", "empty"),
        # Fixed bytes: about one random draw in a hundred probes as some other format (h263,
        # lrc), refused as not supported rather than as unreadable
        (random.Random(2026).randbytes(30_000), "not a readable audio file"),
        (make_song("mp3", 8.0).data[:9_000], "truncated"),
        (make_song("wav", 8.0, channels=1).data[:100_000], "truncated"),
        (make_video_only(), "no audio stream"),
        (make_song("flac", 3.0).data, "too short"),
        (make_song("mp3", 12.0).data, "too long"),
        (make_song("wav", 9.0).data, "too large"),  # 9 s of 16 kHz stereo PCM: 576 kB
        # 6 samples at 1 Hz, and 24 at 4 Hz, that passed for 6 s of song (and then failed
        # planning, for want of a second of samples): the rate is what is wrong
        (make_wav(6.0, rate=1), "sample rate is 1 Hz, at least 8000 Hz"),
        (make_wav(6.0, rate=4), "sample rate is 4 Hz, at least 8000 Hz"),
    ],
    ids=[
        "empty",
        "garbage",
        "cut-mp3",
        "cut-wav",
        "video-only",
        "short",
        "long",
        "big",
        "1-hz",
        "4-hz",
    ],
)
def test_a_bad_song_is_refused_and_nothing_is_written(
    ctx: Context, song: bytes, reason: str
) -> None:
    before = written(ctx)
    with pytest.raises(InvalidInput, match=reason):
        api.create_project("Bad", "A song that is not one.", song=song)
    assert written(ctx) == before


def test_a_song_too_long_for_a_projects_scenes_is_refused_before_anything_is_written(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given slots of one frame at most (1/120 s), so 999 scenes hold 8.3 s of song
    for key, value in {
        "OUTPUT_FPS": "120",
        "SLOT_MIN_SECONDS": "0.009",
        "SLOT_MAX_SECONDS": "0.009",
    }.items():
        monkeypatch.setenv(f"MVPIPE_{key}", value)
    reset_context()
    before = written(ctx)
    # When a 9.5 s song is given (valid by every song limit), it is refused at intake
    with pytest.raises(InvalidInput, match=r"needs 1140 scenes.*999 a project holds"):
        api.create_project("Long", "Too many scenes.", song=make_song("mp3", 9.5).data)
    # Then nothing was written: no item, no song object
    assert written(ctx) == before


def test_bad_arguments_with_a_song_write_nothing(ctx: Context, tmp_path: Path) -> None:
    good = make_song("flac", 6.0).data
    before = written(ctx)
    for kwargs, reason in [
        (dict(song=good, scene_count=3), "not accepted with a song"),
        (dict(song=good, scenes=[{"prompt": "p"}]), "not accepted with a song"),
        (dict(scene_count=2, lip_sync=True), "lip_sync needs a song"),
        (dict(song=good, budget_usd=-1), "budget"),
        (dict(song=good, budget_usd=float("nan")), "budget"),
        (dict(song=good, budget_usd=1e9), "budget"),
        (dict(song=tmp_path / "missing.mp3"), "does not exist"),
        (dict(song=12), "path or bytes"),
    ]:
        with pytest.raises(InvalidInput, match=reason):
            api.create_project("Bad", "Arguments.", **kwargs)  # type: ignore[arg-type]
    assert written(ctx) == before


@pytest.mark.parametrize("kind", sorted(ENCODINGS))
def test_a_good_song_is_stored_before_the_project_appears(ctx: Context, kind: str) -> None:
    song = make_song(kind, 6.25)
    project_id = api.create_project(
        "Good", "Verse.\nChorus.", song=song.data, lip_sync=True, budget_usd=4.5
    )
    view = api.get_project(project_id)
    ext = kind.split("-")[0]
    sha = hashlib.sha256(song.data).hexdigest()
    assert view.song_s3_key == f"projects/{project_id}/song/{sha[:16]}.{ext}"
    assert view.song_seconds is not None and abs(view.song_seconds - song.seconds) <= 1 / 24
    assert view.lip_sync and view.budget_usd == 4.5 and view.committed_cost_usd == 0
    assert view.scene_count == 0 and view.scenes == [] and view.final_video_s3_key is None
    assert ctx.songs.read(view.song_s3_key) == song.data
    assert [o.key for o in ctx.clips.list(f"projects/{project_id}/")] == [view.song_s3_key]


def test_a_timeline_is_stored_beside_its_song(ctx: Context) -> None:
    project_id, sha = str(uuid.uuid4()), hashlib.sha256(b"song").hexdigest()
    key = ctx.songs.put_timeline(project_id, sha, b'{"tempo": 120.0}')
    assert key == f"projects/{project_id}/song/{sha[:16]}-timeline.json"
    assert ctx.songs.read(key) == b'{"tempo": 120.0}'
    ctx.songs.delete(key)
    assert ctx.clips.list(f"projects/{project_id}/") == []


def test_a_song_given_as_a_path(ctx: Context, tmp_path: Path) -> None:
    song = make_song("mp3", 5.5)
    path = tmp_path / "my song (final).mp3"
    path.write_bytes(song.data)
    project_id = api.create_project("Path", "From a file.", song=path)
    key = api.get_project(project_id).song_s3_key
    assert key is not None and key.endswith(".mp3") and "final" not in key
    assert ctx.songs.read(key) == song.data


def test_without_a_song_nothing_changes(ctx: Context) -> None:
    project_id = api.create_project("Plain", "No song.", scene_count=2, budget_usd=0)
    view = api.get_project(project_id)
    assert view.song_s3_key is None and view.song_seconds is None and not view.lip_sync
    assert view.budget_usd == 0 and ctx.clips.list(f"projects/{project_id}/") == []


def test_v4_scene_and_project_fields_round_trip_through_the_server(ctx: Context) -> None:
    project_id = api.create_project("Fields", "Round trip.", scenes=[{"prompt": "one"}])
    m = ctx.table.model
    assert ctx.table.update(
        project_pk(project_id),
        scene_sk(1),
        [
            m.start_seconds.set(1.5),
            m.end_seconds.set(3.75),
            m.working_clip_key.set("w.mp4"),
            m.lip_synced_clip_key.set("l.mp4"),
            m.lip_sync.set(True),
            m.lip_sync_operation_id.set("lip-op"),
            m.lip_sync_attempts.set(1),
            m.cost_micros.set(125_000),
        ],
        None,
    )
    assert ctx.table.update(
        project_pk(project_id),
        METADATA,
        [
            m.timeline_key.set("t.json"),
            m.final_video_key.set("f.mp4"),
            m.committed_cost_micros.set(125_000),
        ],
        None,
    )
    view = api.get_project(project_id)
    scene = view.scenes[0]
    assert (scene.start_seconds, scene.end_seconds, scene.cost_usd) == (1.5, 3.75, 0.125)
    assert scene.working_video_clip_s3_key == "w.mp4"
    assert scene.lip_synced_video_clip_s3_key == "l.mp4"
    assert scene.lip_sync and scene.lip_sync_operation_id == "lip-op"
    assert scene.lip_sync_attempts == 1
    assert (view.timeline_s3_key, view.final_video_s3_key) == ("t.json", "f.mp4")
    assert view.committed_cost_usd == 0.125 and view.budget_usd is None


def test_a_refused_metadata_write_takes_the_song_back(ctx: Context) -> None:
    # Given a store whose table does not exist (the real server refuses the METADATA write)
    broken = build_context(ctx.settings.model_copy(update={"table": f"missing-{uuid.uuid4().hex}"}))
    song = make_song("wav", 5.5, channels=1)
    sha = hashlib.sha256(song.data).hexdigest()
    spec = ProjectSpec(
        title="Doomed",
        concept="The table is gone.",
        provider="local",
        song=SongSpec(sha256=sha, ext="wav", seconds=song.seconds),
    )
    project_id = str(uuid.uuid4())
    # When the project is written, the song first
    with pytest.raises(ConfigurationError, match="ResourceNotFound"):
        create_project(broken, project_id, spec, song.data)
    # Then the uploaded song is deleted again: no partial state
    assert ctx.clips.list(f"projects/{project_id}/") == []


@pytest.mark.parametrize("kind", ["scenes", "song"])
def test_a_refused_metadata_write_leaves_no_item_and_no_object(ctx: Context, kind: str) -> None:
    # Given a project whose METADATA item the real server refuses (over DynamoDB's 400 KB item
    # limit) after its scene items (a project of prompts) or its song (one with a song) were
    # written first and accepted
    song = make_song("wav", 5.5, channels=1)
    prompts = [{"prompt": p, "duration_seconds": 8} for p in "abc"]  # as intake fits them
    sources: dict[str, Any] = (
        {"requested_scene_count": 3, "scenes": prompts}
        if kind == "scenes"
        else {
            "song": SongSpec(
                sha256=hashlib.sha256(song.data).hexdigest(), ext="wav", seconds=song.seconds
            )
        }
    )
    valid = ProjectSpec(title="Heavy", concept="Too big.", provider="local", **sources)
    spec = valid.model_copy(update={"concept": "x" * 420_000})  # past what the models allow
    project_id = str(uuid.uuid4())
    before = written(ctx)
    # When the project is written, METADATA last
    with pytest.raises(ConfigurationError, match="ValidationException"):
        create_project(ctx, project_id, spec, song.data if kind == "song" else None)
    # Then no item and no object of it remain
    assert ctx.table.query_project(project_id) == []
    assert ctx.clips.list(f"projects/{project_id}/") == []
    assert written(ctx) == before


def test_an_unanswered_metadata_write_keeps_the_song(ctx: Context) -> None:
    # Given a table nobody answers for: the METADATA write's outcome is unknown
    silent = ctx.settings.model_copy(
        update={
            "dynamodb_endpoint": f"http://127.0.0.1:{free_port()}",
            "store_timeout_seconds": 1,
            "store_retry_seconds": 1,
        }
    )
    unanswered = build_context(silent)
    song = make_song("flac", 5.5)
    sha = hashlib.sha256(song.data).hexdigest()
    spec = ProjectSpec(
        title="Unknown",
        concept="Did it land?",
        provider="local",
        song=SongSpec(sha256=sha, ext="flac", seconds=song.seconds),
    )
    project_id = str(uuid.uuid4())
    # When the write cannot be confirmed either way
    with pytest.raises(StoreUnavailable):
        create_project(unanswered, project_id, spec, song.data)
    # Then the song stays: a write that may have landed must not lose what it points at
    assert [o.key for o in ctx.clips.list(f"projects/{project_id}/")] == [
        f"projects/{project_id}/song/{sha[:16]}.flac"
    ]


def test_cli_create_with_a_song(stack: LocalStack, broker_cleared: None, tmp_path: Path) -> None:
    env = {**os.environ, **SMALL_LIMITS}
    song = tmp_path / "song.ogg"
    song.write_bytes(make_song("ogg-opus", 6.0).data)

    def mvpipe(*args: str) -> subprocess.CompletedProcess[str]:
        create = ["create", "--title", "Cli", "--concept", "c"]
        return subprocess.run(
            [sys.executable, "-m", "mvpipe.cli", *create, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    done = mvpipe("--song", str(song), "--lip-sync", "--budget", "2.5")
    assert done.returncode == 0, done.stderr
    view = api.get_project(done.stdout.strip())
    assert view.song_s3_key is not None and view.song_s3_key.endswith(".ogg")
    assert view.lip_sync and view.budget_usd == 2.5
    for args, message in [
        (("--song", str(tmp_path / "nope.wav")), "does not exist"),
        (("--song", str(tmp_path)), "not a file"),
        (("--song", str(song), "--scenes", "3"), "not accepted with a song"),
        (("--lip-sync",), "lip_sync needs a song"),
        (("--song", str(song), "--budget", "-1"), "budget"),
    ]:
        failed = mvpipe(*args)
        assert failed.returncode != 0 and message in failed.stderr, failed.stderr
        assert failed.stderr.count("\n") == 1 and "Traceback" not in failed.stderr


def test_a_song_whose_title_is_not_utf8_is_stored_by_the_api_and_the_cli(
    ctx: Context, tmp_path: Path
) -> None:
    # Given a valid WAV whose LIST/INFO title is Latin-1 "Café!": accepted, since tags are
    # never read and a title in another encoding does not make the audio any less valid
    song = make_song("wav", 6.0, channels=1)
    tagged = with_latin1_title(song.data)
    # When the API creates a project with it, then it is stored whole, measured by decoding
    project_id = api.create_project("Café", "Tagged.", song=tagged)
    view = api.get_project(project_id)
    sha = hashlib.sha256(tagged).hexdigest()
    assert view.song_s3_key == f"projects/{project_id}/song/{sha[:16]}.wav"
    assert view.song_seconds is not None and abs(view.song_seconds - song.seconds) <= 1 / 24
    assert ctx.songs.read(view.song_s3_key) == tagged
    # And the CLI does the same: exit 0, the project's id, no traceback
    path = tmp_path / "tagged.wav"
    path.write_bytes(tagged)
    create = ["create", "--title", "Cli", "--concept", "c", "--song", str(path)]
    done = subprocess.run(
        [sys.executable, "-m", "mvpipe.cli", *create],
        env={**os.environ, **SMALL_LIMITS},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    key = api.get_project(done.stdout.strip()).song_s3_key
    assert key is not None and key.endswith(f"/song/{sha[:16]}.wav")
