"""A create whose METADATA never landed leaves its song in S3: reconcile collects it past the
grace period, a page of project folders at a time, and never touches a real project's song, a
create still under way, or a song of another deployment sharing the bucket."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta

import pytest

from bench.countingproxy import CountingProxy
from mvpipe.deps import Context, build_context, get_context
from mvpipe.devstack.localstack import LocalStack, free_port
from mvpipe.errors import StoreUnavailable
from mvpipe.models import ProjectSpec, SongSpec, is_project_id
from mvpipe.pipeline.create import create_project
from mvpipe.pipeline.grace import warn_short_grace
from mvpipe.pipeline.reconcile import reconcile
from mvpipe.pipeline.reconcile_report import ReconcileReport
from mvpipe.pipeline.reconcile_scope import SONG_CURSOR_JOB, SONG_PAGE
from mvpipe.pipeline.stray_songs import song_project, stray_songs
from mvpipe.settings import Settings
from mvpipe.store.clips import PROJECTS_PREFIX, FolderPage, StoredObject, is_name_segment
from mvpipe.store.songs import OWNER_KEY, song_key
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
    assert is_project_id(project_id)
    for name in ("", project_id.upper(), str(uuid.uuid1()), project_id[:-1], "../" + project_id):
        assert not is_project_id(name)
    assert song_project(f"projects/{project_id}/song/x.wav") == project_id
    assert song_project(f"projects/{project_id}/songs/x.wav") is None
    assert song_project(f"projects/{project_id}/song/") is None


def test_a_sweep_may_go_on_from_any_one_name_at_the_folders_level() -> None:
    # A folder that is no project's, a loose object's name, a folder's "past" position
    for name in ("not-a-project", "-loose 1.txt", f"{uuid.uuid4()}0", "é" * 512):
        assert is_name_segment(name), name
    for name in ("", "a/b", "/", "line\nbreak", "tab\t", "é" * 513):
        assert not is_name_segment(name), name


def test_a_grace_period_shorter_than_a_create_can_take_is_warned_of(
    caplog: pytest.LogCaptureFixture,
) -> None:
    short = Settings(orphan_grace_seconds=0)
    worst = short.create_worst_seconds
    # a create's scene items and METADATA, each retried and timed out at worst
    assert worst == 2 * (short.store_retry_seconds + short.store_timeout_seconds) > 0
    with caplog.at_level(logging.WARNING, logger="mvpipe.reconcile"):
        assert warn_short_grace(short)
        assert warn_short_grace(short.model_copy(update={"orphan_grace_seconds": worst - 1}))
        assert not warn_short_grace(short.model_copy(update={"orphan_grace_seconds": worst}))
        assert not warn_short_grace(Settings())  # the default hour
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "MVPIPE_ORPHAN_GRACE_SECONDS" in warnings[0].getMessage()


# -- on the real stack ---------------------------------------------------------------------------


@pytest.fixture
def own(stack: LocalStack) -> Iterator[Context]:
    """This process on a table and bucket of its own (a pass with no grace period would
    otherwise collect what earlier tests left in the shared ones)."""
    with closing(build_context(get_context().settings.model_copy(update=own_storage()))) as ctx:
        ctx.ensure_storage()
        yield ctx


def sweep(ctx: Context, grace: float | None = None) -> ReconcileReport:
    """An inline pass that examines no project and sweeps for strays (with `grace` seconds of
    grace period, if given)."""
    if grace is None:
        return reconcile(ctx, dispatcher, project_ids=[], sweep_strays=True)
    update = {"orphan_grace_seconds": grace}
    with closing(build_context(ctx.settings.model_copy(update=update))) as context:
        return reconcile(context, dispatcher, project_ids=[], sweep_strays=True)


def song_spec(data: bytes, seconds: float) -> ProjectSpec:
    sha = hashlib.sha256(data).hexdigest()
    return ProjectSpec(
        title="Sung",
        concept="With a song.",
        provider="local",
        song=SongSpec(sha256=sha, ext="wav", seconds=seconds),
    )


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
    # and a create whose METADATA write went unanswered (its outcome unknown: its song stays):
    # DynamoDB on a port nothing listens on, retried for a moment only
    silent = own.settings.model_copy(
        update={
            "dynamodb_endpoint": f"http://127.0.0.1:{free_port()}",
            "store_timeout_seconds": 1,
            "store_retry_seconds": 0.05,
        }
    )
    orphan = str(uuid.uuid4())
    with closing(build_context(silent)) as unanswered, pytest.raises(StoreUnavailable):
        create_project(unanswered, orphan, spec, song.data)
    orphan_song = song_key(orphan, spec.song.sha256, "wav")  # type: ignore[union-attr]
    assert own.clips.exists(orphan_song) and not own.projects.exists(orphan)
    # When reconcile sweeps while the orphan is within the grace period (an hour)
    assert own.settings.orphan_grace_seconds == 3600
    # Then both songs stay: that create may still be writing
    assert sweep(own).stray_songs_deleted == 0
    assert own.clips.exists(orphan_song) and own.clips.exists(created_song)
    # When it sweeps once the grace period is over (none at all: shorter than a create)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mvpipe.reconcile"):
        report = sweep(own, grace=0)
    # Then the orphan's song is gone, counted and logged once, and the project's song stays
    assert not own.clips.exists(orphan_song) and own.clips.exists(created_song)
    assert report.stray_songs_deleted == 1 and report.stray_songs_skipped == 0
    lines = [r.getMessage() for r in caplog.records if orphan_song in r.getMessage()]
    assert len(lines) == 1, lines
    assert own.clips.list(f"projects/{orphan}/") == []
    # and the pass warned once that its grace period is shorter than a create can take
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "MVPIPE_ORPHAN_GRACE_SECONDS" in warnings[0], warnings
    # and the next pass finds nothing left
    assert sweep(own, grace=0).total == 0


@pytest.mark.integration
def test_a_sweep_deletes_only_songs_tagged_with_its_own_table(
    own: Context, caplog: pytest.LogCaptureFixture
) -> None:
    song = make_song("wav", 5.5, channels=1)
    spec = song_spec(song.data, song.seconds)
    sha = spec.song.sha256  # type: ignore[union-attr]
    # Given another deployment on the same bucket with a table of its own
    update = {"table": f"{own.settings.table}-other"}
    with closing(build_context(own.settings.model_copy(update=update))) as other:
        other.ensure_storage()
        # with a project created (its METADATA in its table only) and a song of its orphan
        theirs, their_orphan, our_orphan, untagged = (str(uuid.uuid4()) for _ in range(4))
        create_project(other, theirs, spec, song.data)
        other.songs.put_song(their_orphan, sha, "wav", song.data)
        # and a song of this deployment's orphan, and an untagged one (put before tagging)
        own.songs.put_song(our_orphan, sha, "wav", song.data)
        own.clips.put(song_key(untagged, sha, "wav"), song.data, content_type="audio/wav")
        meta = own.clips.metadata(song_key(our_orphan, sha, "wav"))
        assert meta == {OWNER_KEY: own.settings.table}
        # When this deployment sweeps with no grace period
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mvpipe.reconcile"):
            report = sweep(own, grace=0)
        # Then only its own orphan's song is gone
        keys = {p: song_key(p, sha, "wav") for p in (theirs, their_orphan, our_orphan, untagged)}
        left = {o.key for o in own.clips.list(PROJECTS_PREFIX)}
        assert left == {keys[theirs], keys[their_orphan], keys[untagged]}
        assert report.stray_songs_deleted == 1 and report.total == 1
        # and the others are counted as skipped, said in one line
        assert report.stray_songs_skipped == 3
        kept = [r.getMessage() for r in caplog.records if "not tagged" in r.getMessage()]
        assert len(kept) == 1 and "kept 3 songs" in kept[0], kept
        # When the other deployment sweeps
        report = sweep(other, grace=0)
        # Then its orphan's song is gone, and its project's song and the untagged one stay
        left = {o.key for o in own.clips.list(PROJECTS_PREFIX)}
        assert left == {keys[theirs], keys[untagged]}
        assert report.stray_songs_deleted == 1 and report.stray_songs_skipped == 1


@pytest.mark.integration
def test_a_page_of_folders_goes_on_after_its_last_entry_folder_or_loose_object(
    own: Context,
) -> None:
    # Given folders with loose objects between them, beside the folders
    prefix = f"walk-{uuid.uuid4().hex[:8]}/"
    for key in ("a/song/x.wav", "b", "c/final/y.mp4", "c/song/x.wav", "d", "e/x"):
        own.clips.put(f"{prefix}{key}", b"x")
    # When they are walked two entries a page
    pages = [own.clips.folders(prefix, None, 2)]
    while pages[-1].following is not None:
        pages.append(own.clips.folders(prefix, pages[-1].following, 2))
    # Then each page goes on after its last entry, a folder or a loose object, none twice
    assert pages == [FolderPage(["a"], "b"), FolderPage(["c"], "d"), FolderPage(["e"], None)]


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
    with closing(build_context(get_context().settings.model_copy(update=update))) as ctx:
        ctx.ensure_storage()
        passes_over_pages_of_folders(ctx, proxy)


def passes_over_pages_of_folders(ctx: Context, proxy: CountingProxy) -> None:
    # Given two pages and more of project folders: projects with a song, and orphaned songs
    projects = [str(uuid.uuid4()) for _ in range(SONG_PAGE + 60)]
    orphans = [str(uuid.uuid4()) for _ in range(SONG_PAGE // 2 + 20)]
    sha = hashlib.sha256(b"song").hexdigest()
    ctx.table.batch_put(
        [ctx.table.model(project_pk(p), METADATA, entity_type="project") for p in projects]
    )
    for project_id in projects + orphans:
        ctx.songs.put_song(project_id, sha, "wav", b"song")
    folders = sorted(projects + orphans)
    pages = -(-len(folders) // SONG_PAGE)
    assert pages == 3
    # and a round whose cursor is unreadable (it starts again from the bucket's first folder)
    ctx.board.move_cursor(SONG_CURSOR_JOB, "not/a/name")
    # When beat's passes go on with the round, each with the budget for one page
    deleted, cursors = [], []
    while ctx.board.cursor(SONG_CURSOR_JOB) is not None:
        proxy.reset()
        report = reconcile(ctx, dispatcher, budget_seconds=1e-6, full_sweep=False)
        deleted.append(report.stray_songs_deleted)
        # Then each pass listed one page of folders, and the song folder of each orphan on it
        # (never the whole bucket), asked each orphan's song only whose it is (a HEAD), and
        # read the page's METADATA in one batch
        requests = proxy.snapshot()
        assert requests["s3.GET"] == 1 + report.stray_songs_deleted, requests
        assert requests["s3.HEAD"] == report.stray_songs_deleted, requests
        assert requests["dynamodb.BatchGetItem"] == 1, requests
        cursors.append(ctx.board.cursor(SONG_CURSOR_JOB))
        assert len(deleted) <= pages
    # and the round ended with its third page, the cursor past each page's last folder before
    assert len(deleted) == pages and cursors == [
        f"{folders[SONG_PAGE - 1]}0",
        f"{folders[2 * SONG_PAGE - 1]}0",
        None,
    ]
    # and every orphaned song is gone, every project's song kept
    assert sum(deleted) == len(orphans)
    left = {o.key for o in ctx.clips.list("projects/")}
    assert left == {song_key(p, sha, "wav") for p in projects}


@pytest.mark.integration
def test_beat_passes_go_on_past_loose_objects_and_folders_no_project_is_named_by(
    own: Context,
) -> None:
    no_grace = own.settings.model_copy(update={"orphan_grace_seconds": 0})
    with closing(build_context(no_grace)) as ctx:
        # Given a page of loose objects only, beside the project folders
        for i in range(SONG_PAGE):
            ctx.clips.put(f"{PROJECTS_PREFIX}-loose-{i:03d}", b"x")
        # then a page that ends with a folder no project is named by
        for i in range(SONG_PAGE - 1):
            ctx.clips.put(f"{PROJECTS_PREFIX}-mixed-{i:03d}", b"x")
        ctx.clips.put(f"{PROJECTS_PREFIX}-not-a-project/song/0123456789abcdef.wav", b"x")
        # and then an orphan's song
        orphan = str(uuid.uuid4())
        orphan_song = ctx.songs.put_song(orphan, hashlib.sha256(b"song").hexdigest(), "wav", b"s")
        before = {o.key for o in ctx.clips.list(PROJECTS_PREFIX)} - {orphan_song}
        # When beat's passes go on with a round, each with the budget for one page
        ctx.board.move_cursor(SONG_CURSOR_JOB, "")
        deleted, cursors = 0, []
        while ctx.board.cursor(SONG_CURSOR_JOB) is not None and len(cursors) < 5:
            report = reconcile(ctx, dispatcher, budget_seconds=1e-6, full_sweep=False)
            deleted += report.stray_songs_deleted
            cursors.append(ctx.board.cursor(SONG_CURSOR_JOB))
        # Then the round went on past each page's last entry, loose object or folder, to the
        # orphan's page, and ended there
        assert cursors == ["-loose-099", "-not-a-project0", None]
        # and only the orphan's song is gone
        assert deleted == 1
        assert {o.key for o in ctx.clips.list(PROJECTS_PREFIX)} == before
