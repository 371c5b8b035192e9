"""A create whose METADATA never landed leaves its song in S3: reconcile collects it past the
grace period, a page of project folders at a time, and never touches a real project's song or
a create still under way."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from bench.countingproxy import CountingProxy
from mvpipe.deps import Context, build_context, get_context
from mvpipe.devstack.localstack import LocalStack, free_port
from mvpipe.errors import StoreUnavailable
from mvpipe.models import ProjectSpec, SongSpec
from mvpipe.pipeline.create import create_project
from mvpipe.pipeline.reconcile import ReconcileReport, reconcile
from mvpipe.pipeline.reconcile_scope import SONG_CURSOR_JOB, SONG_PAGE
from mvpipe.pipeline.stray_songs import folder_project, song_project, stray_songs
from mvpipe.store.clips import StoredObject
from mvpipe.store.songs import song_key
from mvpipe.store.table import METADATA, project_pk
from mvpipe.tasks.base import dispatcher
from tests.helpers import own_storage
from tests.songs import make_song

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)
CUTOFF = NOW - timedelta(hours=1)


def song_of(project_id: str, stored: datetime, name: str = "0123456789abcdef.wav") -> StoredObject:
    return StoredObject(f"projects/{project_id}/song/{name}", stored)


# -- the decision --------------------------------------------------------------------------------


def test_only_old_songs_of_projects_without_metadata_are_strays() -> None:
    orphan, created, young = (str(uuid.uuid4()) for _ in range(3))
    old = CUTOFF - timedelta(seconds=1)
    strays = [song_of(orphan, old), song_of(orphan, CUTOFF, "0123456789abcdef-timeline.json")]
    kept = [
        song_of(created, old),  # its project exists
        song_of(young, CUTOFF + timedelta(microseconds=1)),  # a create still under way
        StoredObject(f"projects/{orphan}/scenes/001/{'a' * 32}.mp4", old),  # not a song
        StoredObject(f"projects/{orphan}/final/{'b' * 16}.mp4", old),
        StoredObject(f"projects/{orphan}/song/", old),  # the prefix, no object in it
        StoredObject("projects/not-a-project/song/0123456789abcdef.wav", old),  # not ours
        StoredObject(f"elsewhere/{orphan}/song/0123456789abcdef.wav", old),
        StoredObject(f"projects/{orphan.upper()}/song/0123456789abcdef.wav", old),
    ]
    found = stray_songs(kept[:2] + strays + kept[2:], {created}, CUTOFF)
    assert found == [o.key for o in strays]


def test_a_folder_or_key_names_a_project_only_by_a_canonical_id() -> None:
    project_id = str(uuid.uuid4())
    assert folder_project(project_id) == project_id
    for name in ("", project_id.upper(), str(uuid.uuid1()), project_id[:-1], "../" + project_id):
        assert folder_project(name) is None
    assert song_project(f"projects/{project_id}/song/x.wav") == project_id
    assert song_project(f"projects/{project_id}/songs/x.wav") is None
    assert song_project(f"projects/{project_id}/song/") is None


# -- on the real stack ---------------------------------------------------------------------------


@pytest.fixture
def own(stack: LocalStack) -> Iterator[Context]:
    """This process on a table and bucket of its own (a pass with no grace period would
    otherwise collect what earlier tests left in the shared ones)."""
    ctx = build_context(get_context().settings.model_copy(update=own_storage()))
    ctx.ensure_storage()
    yield ctx


def with_grace(ctx: Context, seconds: float) -> Context:
    context = build_context(ctx.settings.model_copy(update={"orphan_grace_seconds": seconds}))
    context.ensure_storage()
    return context


def song_spec(data: bytes, seconds: float) -> ProjectSpec:
    sha = hashlib.sha256(data).hexdigest()
    return ProjectSpec(
        title="Sung",
        concept="With a song.",
        provider="local",
        song=SongSpec(sha256=sha, ext="wav", seconds=seconds),
    )


def sweep(ctx: Context) -> ReconcileReport:
    """An inline pass that examines no project and sweeps for strays."""
    return reconcile(ctx, dispatcher, project_ids=[], sweep_strays=True)


@pytest.mark.integration
def test_reconcile_collects_the_song_of_a_create_whose_metadata_never_landed(
    own: Context, caplog: pytest.LogCaptureFixture
) -> None:
    song = make_song("wav", 5.5, channels=1)
    spec = song_spec(song.data, song.seconds)
    # Given a project created with its song
    created = str(uuid.uuid4())
    create_project(own, created, spec, song.data)
    created_song = song_key(created, spec.song.sha256, "wav")  # type: ignore[union-attr]
    # and a create whose METADATA write went unanswered (its outcome unknown: its song stays)
    silent = own.settings.model_copy(
        update={
            "dynamodb_endpoint": f"http://127.0.0.1:{free_port()}",
            "store_timeout_seconds": 1,
            "store_retry_seconds": 1,
        }
    )
    orphan = str(uuid.uuid4())
    with pytest.raises(StoreUnavailable):
        create_project(build_context(silent), orphan, spec, song.data)
    orphan_song = song_key(orphan, spec.song.sha256, "wav")  # type: ignore[union-attr]
    assert own.clips.exists(orphan_song) and not own.projects.exists(orphan)
    # When reconcile sweeps while the orphan is within the grace period (an hour)
    assert own.settings.orphan_grace_seconds == 3600
    # Then both songs stay: that create may still be writing
    assert sweep(own).stray_songs_deleted == 0
    assert own.clips.exists(orphan_song) and own.clips.exists(created_song)
    # When it sweeps once the grace period is over
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mvpipe.reconcile"):
        report = sweep(with_grace(own, 0))
    # Then the orphan's song is gone, counted and logged once, and the project's song stays
    assert not own.clips.exists(orphan_song) and own.clips.exists(created_song)
    assert report.stray_songs_deleted == 1
    lines = [r.getMessage() for r in caplog.records if orphan_song in r.getMessage()]
    assert len(lines) == 1, lines
    assert own.clips.list(f"projects/{orphan}/") == []
    # and the next pass finds nothing left
    assert sweep(with_grace(own, 0)).total == 0


@pytest.fixture
def proxy(stack: LocalStack) -> Iterator[CountingProxy]:
    port = int(stack.env["MVPIPE_DYNAMODB_ENDPOINT"].rsplit(":", 1)[1])
    counting = CountingProxy(port)
    yield counting
    counting.stop()


@pytest.mark.integration
def test_beat_passes_sweep_songs_a_page_of_project_folders_at_a_time(
    stack: LocalStack, proxy: CountingProxy
) -> None:
    # This process on a table and bucket of its own, through the proxy, with no grace period
    update = {
        **own_storage(),
        "dynamodb_endpoint": proxy.url,
        "s3_endpoint": proxy.url,
        "orphan_grace_seconds": 0,
    }
    ctx = build_context(get_context().settings.model_copy(update=update))
    ctx.ensure_storage()
    # Given two pages and more of project folders: projects with a song, and orphaned songs
    projects = [str(uuid.uuid4()) for _ in range(SONG_PAGE + 60)]
    orphans = [str(uuid.uuid4()) for _ in range(SONG_PAGE // 2 + 20)]
    sha = hashlib.sha256(b"song").hexdigest()
    ctx.table.batch_put(
        [ctx.table.model(project_pk(p), METADATA, entity_type="project") for p in projects]
    )
    for project_id in projects + orphans:
        ctx.clips.put(song_key(project_id, sha, "wav"), b"song", content_type="audio/wav")
    folders = sorted(projects + orphans)
    pages = -(-len(folders) // SONG_PAGE)
    assert pages == 3
    # and a round whose cursor is unreadable (it starts again from the bucket's first folder)
    ctx.board.move_cursor(SONG_CURSOR_JOB, "not a folder")
    # When beat's passes go on with the round, each with the budget for one page
    deleted, cursors = [], []
    while ctx.board.cursor(SONG_CURSOR_JOB) is not None:
        proxy.reset()
        report = reconcile(ctx, dispatcher, budget_seconds=1e-6, full_sweep=False)
        deleted.append(report.stray_songs_deleted)
        # Then each pass listed one page of folders, and the song folder of each orphan on it
        # (never the whole bucket), and read the page's METADATA in one batch
        requests = proxy.snapshot()
        assert requests["s3.GET"] == 1 + report.stray_songs_deleted, requests
        assert requests["dynamodb.BatchGetItem"] == 1, requests
        cursors.append(ctx.board.cursor(SONG_CURSOR_JOB))
        assert len(deleted) <= pages
    # and the round ended with its third page, the cursor on each page's last folder before
    assert len(deleted) == pages and cursors == [
        folders[SONG_PAGE - 1],
        folders[2 * SONG_PAGE - 1],
        None,
    ]
    # and every orphaned song is gone, every project's song kept
    assert sum(deleted) == len(orphans)
    left = {o.key for o in ctx.clips.list("projects/")}
    assert left == {song_key(p, sha, "wav") for p in projects}
