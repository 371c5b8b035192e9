"""Reconcile by activity: a regular pass costs O(active projects), whatever the history holds;
the low-rate full sweep still finds damage in finished projects; beat's passes take the active
projects in turns within a time budget and still reach every one."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from bench.countingproxy import CountingProxy
from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.deps import Context, get_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.pipeline import reconcile as reconcile_module
from mvpipe.pipeline.reconcile import reconcile
from mvpipe.pipeline.reconcile_report import ReconcileReport
from mvpipe.pipeline.reconcile_scope import (
    FULL_SWEEP_JOB,
    STRAY_CURSOR_JOB,
    STRAY_PAGE,
    SWEEP_CURSOR_JOB,
    Drained,
    Place,
    Round,
    decode_item_key,
    encode_key,
    in_turn,
    needs_regular_pass,
    round_rest,
    this_turn,
)
from mvpipe.states import Counters
from mvpipe.store.dynamo import Table
from mvpipe.store.records import ProjectRecord, utc_now_iso
from mvpipe.store.table import METADATA, ItemBase, project_pk, scene_sk
from mvpipe.tasks.base import dispatcher
from tests.conftest import Workers
from tests.helpers import assert_invariants, own_storage

StartWorkers = Callable[..., Workers]
HOUR = 3600.0


def record(status: ProjectStatus, *, run: str | None = None, age: float = 0.0,
           touched: float | None = None) -> ProjectRecord:  # fmt: skip
    """A project created `age` seconds ago and last changed `touched` seconds ago."""
    now = datetime.now(UTC)
    created = (now - timedelta(seconds=age)).isoformat()
    updated = created if touched is None else (now - timedelta(seconds=touched)).isoformat()
    return ProjectRecord(
        project_id=str(uuid.uuid4()), title="t", concept="c", provider="local", status=status,
        requested_scene_count=1, scene_count=1, completed_scenes=0, failed_scenes=0,
        last_error=None, active_run_id=run, created_at=created, updated_at=updated,
    )  # fmt: skip


def test_only_projects_that_can_need_it_are_loaded_by_a_regular_pass() -> None:
    now = datetime.now(UTC).timestamp()
    for status in (
        ProjectStatus.GENERATING_SCENES, ProjectStatus.PROCESSING, ProjectStatus.ASSEMBLING
    ):  # fmt: skip
        assert needs_regular_pass(record(status, age=10 * HOUR), now, HOUR)
    assert needs_regular_pass(record(ProjectStatus.PENDING, run="r", age=10 * HOUR), now, HOUR)
    # a cancel a minute ago may have left operations whose polls must finish
    assert needs_regular_pass(record(ProjectStatus.PENDING, age=HOUR, touched=60), now, HOUR)
    # created and never run; or idle since long before the window: the sweep's
    assert not needs_regular_pass(record(ProjectStatus.PENDING, age=60), now, HOUR)
    assert not needs_regular_pass(
        record(ProjectStatus.PENDING, age=10 * HOUR, touched=2 * HOUR), now, HOUR
    )
    for status in (ProjectStatus.COMPLETED, ProjectStatus.FAILED):
        assert not needs_regular_pass(record(status, touched=1), now, HOUR)


def test_passes_take_projects_in_turns_from_where_the_last_stopped() -> None:
    ids = ["c", "a", "e", "b", "d", "a"]
    assert in_turn(ids, None) == ["a", "b", "c", "d", "e"]  # one fixed order, once each
    assert in_turn(ids, "b") == ["c", "d", "e", "a", "b"]  # after the cursor, wrapping round
    assert in_turn(ids, "e") == ["a", "b", "c", "d", "e"]
    # the cursor's project is gone (finished) or new ones came: each takes its place in order
    assert in_turn(["a", "b", "d"], "c") == ["d", "a", "b"]
    assert in_turn(["a", "b", "c", "d"], "zz") == ["a", "b", "c", "d"]
    assert in_turn([], "b") == []
    # passes taking two each from the cursor reach all five within ceil(5 / 2) passes
    cursor, seen = None, set()
    for _ in range(3):
        taken = in_turn(ids, cursor)[:2]
        seen |= set(taken)
        cursor = taken[-1]
    assert seen == set(ids)


class Index:
    """The finished partitions of a status index, read a page at a time like
    `ProjectStore.walk_status`, counting the items each walk reads."""

    def __init__(self, projects: list[ProjectRecord], page: int) -> None:
        self.projects, self.page, self.read = projects, page, 0

    def walk(
        self, status: ProjectStatus, after: tuple[str, str] | None, until: str
    ) -> Iterator[ProjectRecord]:
        partition = sorted(
            (p for p in self.projects if p.status == status and p.gsi1sk <= until),
            key=lambda p: (p.gsi1sk, p.project_id),
        )
        rest = [p for p in partition if after is None or (p.gsi1sk, p.project_id) > after]
        for start in range(0, len(rest), self.page):
            page = rest[start : start + self.page]
            self.read += len(page)
            yield from page


def at(second: int) -> str:
    return (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=second)).isoformat()


def named(status: ProjectStatus, project_id: str, created: int) -> ProjectRecord:
    return dataclasses.replace(
        record(status), project_id=project_id, created_at=at(created), updated_at=at(created),
        gsi1sk=at(created),
    )  # fmt: skip


#: a round started after every project `named` creates below a minute
LATE = Round(at(60))


def test_a_round_of_the_sweep_goes_on_from_its_cursor_to_the_end_once() -> None:
    pending, completed, failed = (
        ProjectStatus.PENDING,
        ProjectStatus.COMPLETED,
        ProjectStatus.FAILED,
    )
    idle = [named(pending, "p2", 1), named(pending, "p1", 1), named(pending, "p0", 5)]
    finished = [named(completed, f"c{n}", 9 - n) for n in range(6)] + [
        named(failed, "f1", 3), named(failed, "f0", 3)
    ]  # fmt: skip
    index = Index(finished, page=2)
    # A round takes the idle pending projects, then each finished partition, each by GSI1SK
    # (createdAt) and id (the status index's order), once each and without wrapping round
    order = ["p1", "p2", "p0", "c5", "c4", "c3", "c2", "c1", "c0", "f0", "f1"]
    assert [p.project_id for p in round_rest(idle, index.walk, LATE)] == order
    # From a cursor it goes on after it, in whichever partition the cursor stands
    for n, place in enumerate(round_rest(idle, index.walk, LATE)):
        rest = [p.project_id for p in round_rest(idle, index.walk, LATE._replace(after=place))]
        assert rest == order[n + 1 :]
    # A project gone mid-round, or new behind the cursor, leaves the rest the same; a new one
    # ahead of it, created before the round started, is in this round
    cursor = LATE._replace(after=Place.of(finished[3]))
    later = Index([p for p in finished if p.project_id != "c2"] + [
        named(completed, "c9", 0), named(completed, "c6", 59)
    ], page=2)  # fmt: skip
    assert [p.project_id for p in round_rest(idle, later.walk, cursor)] == [
        "c1", "c0", "c6", "f0", "f1"
    ]  # fmt: skip
    # A place is the index's own sort key (GSI1SK), whatever createdAt holds
    odd = dataclasses.replace(named(completed, "c7", 7), created_at="")
    assert list(round_rest([], Index([odd], page=2).walk, LATE)) == [Place(completed, at(7), "c7")]


def test_a_round_ends_within_its_projects_passes_while_new_ones_finish_ahead_of_it() -> None:
    pending, completed, failed = (
        ProjectStatus.PENDING,
        ProjectStatus.COMPLETED,
        ProjectStatus.FAILED,
    )
    # Given a round started at 00:30 over 12 projects: 2 idle, 8 completed, 2 failed
    idle = [named(pending, f"p{n}", n) for n in range(2)]
    finished = [named(completed, f"c{n}", n) for n in range(8)]
    finished += [named(failed, f"f{n}", n) for n in range(2)]
    index = Index(finished, page=3)
    cursor = Round(at(30))
    # When a pass takes one project, and meanwhile two projects created after the round
    # started finish (landing ahead of the cursor: the order is by creation) and one more
    # waits idle
    seen: list[str] = []
    for n in range(3 * 12):
        rest = Drained(round_rest(idle, index.walk, cursor))
        taken = list(this_turn(rest, lambda: 9.0, 1.0))
        seen += [p.project_id for p in taken]
        if rest.done or not taken:
            break
        cursor = cursor._replace(after=taken[-1])
        index.projects += [named(completed, f"new{n}", 31 + n), named(completed, f"x{n}", 32 + n)]
        idle.append(named(pending, f"idle{n}", 31 + n))
    # Then the round still ends, within 12 passes, having taken its 12 projects, `failed` too,
    # and none created after it started (those wait for the next round)
    assert seen == ["p0", "p1", *(f"c{n}" for n in range(8)), "f0", "f1"]
    assert n < 12


def test_a_pass_of_the_round_reads_what_it_takes_and_a_page_at_most() -> None:
    finished = [named(ProjectStatus.FAILED, f"f{n:03d}", n % 60) for n in range(300)]
    index = Index(finished, page=10)
    # Passes taking 3 projects each walk the whole round, each once, in order
    cursor = LATE
    seen: list[str] = []
    while True:
        before = index.read
        rest = Drained(round_rest([], index.walk, cursor))
        taken = list(this_turn(rest, iter([0.0, 0.0, 9.0, 9.0]).__next__, 1.0))
        # and each reads the projects it takes and at most one page more, never the partition
        assert index.read - before <= len(taken) + index.page
        seen += [p.project_id for p in taken]
        if rest.done:
            break
        cursor = cursor._replace(after=taken[-1])
    assert seen == [
        p.project_id for p in sorted(finished, key=lambda p: (p.created_at, p.project_id))
    ]
    assert len(seen) == len(set(seen)) == 300


def test_a_rounds_cursor_reads_back_its_place_or_starts_the_round_again() -> None:
    started, created, project_id = utc_now_iso(), at(0), str(uuid.uuid4())
    place = Place(ProjectStatus.COMPLETED, created, project_id)
    for cursor in (Round(started), Round(started, place)):
        assert Round.decode(cursor.encode()) == cursor
    # An older version's cursor (the round's start "", a bare id, a place without the round's
    # start), text that is not the round's JSON, and values the store would reject as a start
    # key (an empty key string) or that are not what the index holds: the round starts again
    old = ["", project_id, encode_key([ProjectStatus.FAILED, created, project_id])]
    damaged = ["{", "[1, 2, 3]", "[" * 100_000, "\ud800", '"' + started + '"', "null"]
    values = [
        [""],
        ["yesterday"],
        [started, ProjectStatus.FAILED, "", ""],
        [started, ProjectStatus.FAILED, created, ""],
        [started, ProjectStatus.FAILED, "", project_id],
        [started, ProjectStatus.PROCESSING, created, project_id],
        [started, "archived", created, project_id],
        [started, ProjectStatus.FAILED, "yesterday", project_id],
        [started, ProjectStatus.FAILED, created, "c3"],
        [started, ProjectStatus.FAILED, created, project_id.upper()],
        [started, ProjectStatus.FAILED, created, project_id, "extra"],
    ]
    for text in old + damaged + [encode_key(v) for v in values]:
        assert Round.decode(text) is None, text[:80]


def test_the_stray_scans_cursor_reads_back_an_item_key_or_starts_the_scan_again() -> None:
    pk = project_pk(str(uuid.uuid4()))
    for key in ((pk, METADATA), (pk, scene_sk(7)), (pk, scene_sk(1200))):
        assert decode_item_key(encode_key(key)) == key
    values = [
        ["", ""],
        [pk, ""],
        ["", METADATA],
        ["PROJECT#", METADATA],
        ["PROJECT#c3", METADATA],
        [pk.removeprefix("PROJECT#"), METADATA],
        [pk, "SCENE#"],
        [pk, "SCENE#7"],
        [pk, "SCENE#-01"],
        [pk, "SCENE#\u0663\u0660\u0661"],
        [pk, "METADATA#"],
        [pk, METADATA, METADATA],
    ]
    damaged = ["{", "[" * 100_000, "[1, 2]", pk]
    for text in damaged + [encode_key(v) for v in values]:
        assert decode_item_key(text) is None, text[:80]


def test_a_drained_source_says_so_only_once_it_ran_out() -> None:
    walk = Drained(iter("abc"))
    assert list(this_turn(walk, lambda: 5.0, 1.0)) == ["a"] and not walk.done
    assert list(this_turn(walk, lambda: 0.0, 1.0)) == ["c"] and walk.done  # "b": pulled, left


def test_a_pass_examines_projects_while_its_budget_lasts_and_always_one() -> None:
    ids = ["a", "b", "c", "d"]
    clock = iter([0.0, 0.4, 1.1, 9.0])  # time spent, read before each project after the first
    assert list(this_turn(ids, lambda: next(clock), 1.0)) == ["a", "b", "c"]
    assert list(this_turn(ids, lambda: 5.0, 1.0)) == ["a"]  # over budget: still one
    assert list(this_turn(ids, lambda: 5.0, None)) == ids  # no budget (inline): all
    assert list(this_turn([], lambda: 5.0, 1.0)) == []


# -- the cost on a real stack --------------------------------------------------------------------


def finished_items(m: type[ItemBase], count: int) -> list[ItemBase]:
    """Failed one-scene projects, written as a run would have left them."""
    items = []
    now = utc_now_iso()
    for _ in range(count):
        project_id = str(uuid.uuid4())
        pk = project_pk(project_id)
        items.append(
            m(pk, scene_sk(1), entity_type="scene", project_id=project_id, sequence=1,
              prompt="old", duration_seconds=8, status=SceneStatus.FAILED, attempts=5,
              last_error="provider refused", created_at=now, updated_at=now)
        )  # fmt: skip
        items.append(
            m(pk, METADATA, entity_type="project", project_id=project_id, title="Old",
              concept="Done.", provider="local", status=ProjectStatus.FAILED,
              gsi1pk=ProjectStatus.FAILED, gsi1sk=now, requested_scene_count=1, scene_count=1,
              completed_scenes=0, failed_scenes=1, last_error="1 of 1 scenes failed",
              committed_cost_micros=0, created_at=now, updated_at=now)
        )  # fmt: skip
    return items


def never_run_items(m: type[ItemBase], count: int) -> list[ItemBase]:
    now = utc_now_iso()
    return [
        m(project_pk(pid), METADATA, entity_type="project", project_id=pid, title="Idle",
          concept="Later.", provider="local", status=ProjectStatus.PENDING,
          gsi1pk=ProjectStatus.PENDING, gsi1sk=now, requested_scene_count=1,
          completed_scenes=0, failed_scenes=0, committed_cost_micros=0, created_at=now,
          updated_at=now)
        for pid in (str(uuid.uuid4()) for _ in range(count))
    ]  # fmt: skip


def active_project(ctx: Context) -> str:
    """A project a live run works on (its scenes not dispatched: nothing changes under us)."""
    project_id = api.create_project("Live", "Busy.", scene_count=3)
    run_id = str(uuid.uuid4())
    ctx.board.touch_run(run_id, 600)
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    return project_id


def store_requests(proxy: CountingProxy) -> int:
    proxy.reset()
    report = api.reconcile(full_sweep=False, sweep_strays=False)
    assert report.total == 0
    return sum(proxy.snapshot().values())


def own_table(start_workers: StartWorkers, proxy: CountingProxy) -> Context:
    """Workers and this process on a table and bucket of their own, through the proxy."""
    start_workers(**own_storage(), dynamodb_endpoint=proxy.url, s3_endpoint=proxy.url)
    return get_context()


def completed_then_clip_lost(ctx: Context) -> str:
    project_id = api.create_project("Done", "Long ago.", scene_count=1)
    api.run_project(project_id)
    assert api.wait_project(project_id, timeout=120).status == ProjectStatus.COMPLETED
    ctx.clips.delete(ctx.scenes.get(project_id, 1).clip_key or "")  # type: ignore[union-attr]
    return project_id


def test_a_regular_pass_costs_o_active_projects(
    start_workers: StartWorkers, proxy: CountingProxy
) -> None:
    ctx = own_table(start_workers, proxy)  # we count every request to it
    # Given 1,000 finished projects, 100 created and never run, and 10 a live run works on
    m = ctx.table.model
    ctx.table.batch_put(finished_items(m, 1000) + never_run_items(m, 100))
    active = [active_project(ctx) for _ in range(10)]
    api.reconcile(full_sweep=False)  # records the live runs' counters once (then: nothing)

    # When a regular pass runs, it loads the active projects only
    per_project = 2  # a Query of the project's items and an S3 LIST of its objects
    listing = 4  # one index Query per status a regular pass lists
    with_1000 = store_requests(proxy)
    assert with_1000 <= len(active) * per_project + listing, proxy.snapshot()

    # and 1,000 more finished projects cost it nothing
    ctx.table.batch_put(finished_items(m, 1000))
    assert store_requests(proxy) == with_1000
    for project_id in active:
        assert ctx.projects.get(project_id).active_run_id is not None  # left to its run


def test_the_full_sweep_still_repairs_a_finished_project(
    start_workers: StartWorkers, proxy: CountingProxy
) -> None:
    ctx = own_table(start_workers, proxy)
    # Given finished projects, one of which lost its clip
    ctx.table.batch_put(finished_items(ctx.table.model, 20))
    finished = completed_then_clip_lost(ctx)
    # When regular passes run, they do not look at it
    assert api.reconcile(full_sweep=False).missing_clips == 0
    assert ctx.projects.get(finished).status == ProjectStatus.COMPLETED
    # Then the full sweep, when due, finds the missing clip
    report = api.reconcile(full_sweep=True, sweep_strays=False)
    assert report.missing_clips == 1
    view = api.get_project(finished)
    assert view.status == ProjectStatus.PENDING and view.scenes[0].status == SceneStatus.PENDING
    assert_invariants(finished)
    assert api.reconcile(full_sweep=True, sweep_strays=False).total == 0


def touched_project_with_wrong_counters(ctx: Context) -> str:
    """A project whose run was released a moment ago (a cancel), its counters written wrong:
    regular passes load it (a run may have left work behind), and with no run its counters
    are reconcile's to recount (a live run's are its finalize's)."""
    project_id = api.create_project("Touched", "Idle.", scenes=[{"prompt": "a"}, {"prompt": "b"}])
    run_id = str(uuid.uuid4())
    assert ctx.projects.win_run(project_id, run_id, ProjectStatus.PROCESSING) == run_id
    wrong = Counters(scene_count=2, completed_scenes=1, failed_scenes=1, open_scenes=0)
    assert ctx.projects.settle(
        project_id,
        observed_run=run_id,
        counters=wrong,
        status=ProjectStatus.PENDING,
        release=True,
    )
    return project_id


def beat_pass() -> dict[str, int]:
    """One pass of the task beat schedules, run by the workers."""
    result: dict[str, int] = app.send_task("mvpipe.reconcile").get(timeout=120)
    return result


def test_beat_passes_take_active_projects_in_turns_and_repair_each(
    start_workers: StartWorkers,
) -> None:
    # Given a budget so small that a beat pass examines one project (the least it examines)
    start_workers(**own_storage(), reconcile_share="0.000001")
    ctx = get_context()
    ctx.board.due(FULL_SWEEP_JOB, HOUR)  # the sweep (which examines everything) is not due
    assert beat_pass()["total"] == 0  # nothing active: a pass examines nothing, and says so
    # and three recently touched projects whose counters are wrong
    broken = [touched_project_with_wrong_counters(ctx) for _ in range(3)]

    # When beat's passes run, each repairs one project, and three reach all of them
    assert [beat_pass()["counters_fixed"] for _ in broken] == [1, 1, 1]
    for project_id in broken:
        record = ctx.projects.get(project_id)
        assert (record.completed_scenes, record.failed_scenes) == (0, 0)
    # and the next round finds nothing left
    assert [beat_pass()["total"] for _ in broken] == [0, 0, 0]
    # while an inline pass still examines every one at once
    touched_project_with_wrong_counters(ctx)
    another = touched_project_with_wrong_counters(ctx)
    assert api.reconcile(full_sweep=False, sweep_strays=False).counters_fixed == 2
    assert ctx.projects.get(another).failed_scenes == 0


def test_beat_passes_sweep_finished_projects_in_rounds_beside_the_active_turn(
    start_workers: StartWorkers, redis_client: redis.Redis
) -> None:
    # Given a budget so small that each turn of a beat pass examines one project (its least)
    start_workers(**own_storage(), reconcile_share="0.000001")
    ctx = get_context()
    # and finished projects, one of which lost its clip, beside one a regular pass loads
    lost = completed_then_clip_lost(ctx)
    ctx.table.batch_put(finished_items(ctx.table.model, 3))
    failed = ctx.projects.list_by_status(ProjectStatus.FAILED)
    # the round's order: each finished partition in turn, by createdAt and id
    finished = [lost] + [p.project_id for p in sorted(failed, key=Place.of)]
    touched = touched_project_with_wrong_counters(ctx)
    # When the sweep is not due, a beat pass examines the active turn alone
    ctx.board.due(FULL_SWEEP_JOB, HOUR)
    first = beat_pass()
    assert (first["counters_fixed"], first["missing_clips"]) == (1, 0)
    assert ctx.board.cursor(SWEEP_CURSOR_JOB) is None

    # When it comes due, each pass takes the round one finished project further, in order
    redis_client.delete(f"mvpipe:due:{FULL_SWEEP_JOB}")
    repaired = []
    for project_id in finished[:-1]:
        repaired.append(beat_pass()["missing_clips"])
        cursor = Round.decode(ctx.board.cursor(SWEEP_CURSOR_JOB) or "")
        assert cursor is not None and cursor.after is not None
        assert cursor.after.project_id == project_id
    repaired.append(beat_pass()["missing_clips"])
    # Then the round reached every one, repaired the lost clip when it came to it, and is over
    assert repaired == [int(p == lost) for p in finished]
    assert ctx.board.cursor(SWEEP_CURSOR_JOB) is None
    assert ctx.projects.get(lost).status == ProjectStatus.PENDING
    assert_invariants(lost)
    # and the active turn went on meanwhile
    assert ctx.board.cursor("reconcile") in {touched, lost}
    # and until the sweep is due again, no pass looks at a finished project
    broken = finished[0] if finished[0] != lost else finished[1]
    corrupt = Counters(scene_count=1, completed_scenes=1, failed_scenes=0, open_scenes=0)
    assert ctx.projects.settle(
        broken, observed_run=None, counters=corrupt, status=ProjectStatus.FAILED, release=False
    )
    assert [beat_pass()["counters_fixed"] for _ in finished] == [0, 0, 0, 0]
    redis_client.delete(f"mvpipe:due:{FULL_SWEEP_JOB}")
    assert sum(beat_pass()["counters_fixed"] for _ in finished) == 1
    assert ctx.projects.get(broken).completed_scenes == 0


def beat_pass_here(
    ctx: Context, *, full_sweep: bool | None, sweep_strays: bool | None
) -> ReconcileReport:
    """One beat pass in this process (its store requests go through the proxy), with a budget
    so small that each turn takes its least: one project, one page."""
    return reconcile(
        ctx, dispatcher, budget_seconds=1e-6, full_sweep=full_sweep, sweep_strays=sweep_strays
    )


#: The sweep's page in the round test: each pass of its round costs ~0.1 s, and two pages of
#: 10 cross a page's end as two of `SWEEP_PAGE` (50) would, in a fifth of the passes.
SMALL_SWEEP_PAGE = 10


def test_a_pass_of_the_sweeps_round_reads_the_projects_it_examines_not_the_history(
    start_workers: StartWorkers, proxy: CountingProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = own_table(start_workers, proxy)
    monkeypatch.setattr(reconcile_module, "SWEEP_PAGE", SMALL_SWEEP_PAGE)  # the passes run here
    # Given a history of finished projects, two pages' worth (more than a pass may read, and a
    # page's end for the round to cross), one of which lost its clip
    lost = completed_then_clip_lost(ctx)
    ctx.table.batch_put(finished_items(ctx.table.model, 2 * SMALL_SWEEP_PAGE))
    failed = ctx.projects.list_by_status(ProjectStatus.FAILED)
    order = [lost] + [p.project_id for p in sorted(failed, key=Place.of)]
    # When beat's passes take the sweep's round, one project each
    cursors: list[str] = []
    passes = repaired = 0
    full_sweep: bool | None = True
    while passes <= len(order):
        proxy.reset()
        report = beat_pass_here(ctx, full_sweep=full_sweep, sweep_strays=False)
        full_sweep = None  # the round goes on from its cursor
        passes += 1
        repaired += report.missing_clips
        # Then each reads from the status index the project it examines and a page more at
        # most (the pending and run partitions it lists hold nothing here), never the history
        index_items = proxy.items_read()["dynamodb.Query.GSI1"]
        assert index_items <= 1 + SMALL_SWEEP_PAGE + 1, (passes, proxy.items_read())
        cursor = ctx.board.cursor(SWEEP_CURSOR_JOB)
        if cursor is None:
            break
        place = Round.decode(cursor)
        assert place is not None and place.after is not None
        cursors.append(place.after.project_id)
    # and the round reached every finished project once, in order (the cursor stood on each
    # but the last, whose pass ended the round), and repaired the lost clip
    assert cursors == order[:-1] and passes == len(order)
    assert repaired == 1
    assert ctx.projects.get(lost).status == ProjectStatus.PENDING
    assert_invariants(lost)


def test_a_beat_pass_with_unreadable_cursors_starts_their_rounds_again_and_says_so_once(
    start_workers: StartWorkers,
    proxy: CountingProxy,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctx = own_table(start_workers, proxy)
    ctx.table.batch_put(finished_items(ctx.table.model, 3))
    order = sorted(ctx.projects.list_by_status(ProjectStatus.FAILED), key=Place.of)
    # Given cursors the store would reject as start keys (empty key strings), JSON nested past
    # the parser's depth, and bytes that are not UTF-8
    damaged: list[tuple[str | bytes, str | bytes]] = [
        (encode_key([ProjectStatus.FAILED, "", ""]), encode_key(["", ""])),
        (encode_key([utc_now_iso(), ProjectStatus.FAILED, "", ""]), "[" * 100_000),
        (b"\xff\xfe[", b'["PROJECT#\xff", "METADATA"]'),
    ]
    for sweep_text, stray_text in damaged:
        redis_client.set(f"mvpipe:cursor:{SWEEP_CURSOR_JOB}", sweep_text)
        redis_client.set(f"mvpipe:cursor:{STRAY_CURSOR_JOB}", stray_text)
        caplog.clear()
        # When two beat passes go on with the rounds those cursors stand for
        with caplog.at_level(logging.WARNING, logger="mvpipe.reconcile"):
            first = beat_pass_here(ctx, full_sweep=None, sweep_strays=None)
            cursor = Round.decode(ctx.board.cursor(SWEEP_CURSOR_JOB) or "")
            second = beat_pass_here(ctx, full_sweep=None, sweep_strays=None)
        # Then the first restarted the sweep's round (it took the round's first project) and
        # the stray scan (one page: the whole small table, so that round is over)
        assert cursor is not None and cursor.after == Place.of(order[0])
        assert ctx.board.cursor(STRAY_CURSOR_JOB) is None
        assert first.total == second.total == 0
        # and each cursor's warning was logged once, not by every pass after it
        unreadable = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
        assert len(unreadable) == 2, unreadable
        assert {SWEEP_CURSOR_JOB, STRAY_CURSOR_JOB} == {m.split()[3] for m in unreadable}
    ctx.board.drop_cursor(SWEEP_CURSOR_JOB)


def stray_items(m: type[ItemBase], count: int, *, age: float) -> list[ItemBase]:
    """Scene items a create that crashed before its METADATA left, `age` seconds ago."""
    created = (datetime.now(UTC) - timedelta(seconds=age)).isoformat()
    return [
        m(project_pk(str(uuid.uuid4())), scene_sk(n), entity_type="scene", sequence=n,
          status=SceneStatus.PENDING, created_at=created, updated_at=created)
        for _ in range(count // 2) for n in (1, 2)
    ]  # fmt: skip


def three_item_projects(m: type[ItemBase], count: int, *, age: float) -> list[ItemBase]:
    """Old projects of two scenes each: a scan page can end between their items."""
    created = (datetime.now(UTC) - timedelta(seconds=age)).isoformat()
    items = []
    for item in finished_items(m, count):
        item.created_at = item.updated_at = created
        items.append(item)
        if item.sk == METADATA:
            items.append(
                m(item.pk, scene_sk(2), entity_type="scene", sequence=2,
                  status=SceneStatus.FAILED, created_at=created, updated_at=created)
            )  # fmt: skip
    return items


def table_keys(ctx: Context) -> set[tuple[str, str]]:
    return {(i.pk, i.sk) for i in ctx.table.model.scan(attributes_to_get=["PK", "SK"])}


def test_a_scan_page_finds_the_strays_even_where_a_project_straddles_two_pages(
    stack: LocalStack,
) -> None:
    # a table of its own: other tests' items would make a walk in pages of 3 long
    table = Table(get_context().settings.model_copy(update=own_storage()))
    table.ensure()
    m = table.model
    projects = three_item_projects(m, 40, age=2 * HOUR)
    strays = stray_items(m, 20, age=2 * HOUR)
    young = stray_items(m, 4, age=0)  # a create still writing: within the grace period
    table.batch_put(projects + strays + young)
    cutoff = (datetime.now(UTC) - timedelta(seconds=HOUR)).isoformat()
    # Given pages of 3 items, so some two-scene projects straddle a page's end (the local
    # store scans in key order)
    keys = sorted((i.pk, i.sk) for i in projects + strays + young)
    kept = {i.pk for i in projects}
    assert any(keys[n][0] == keys[n - 1][0] in kept for n in range(3, len(keys), 3))
    found, start, pages = [], None, 0
    while True:
        page, start = table.stray_page(cutoff, 3, start)
        found += page
        pages += 1
        if start is None:
            break
    # Then the walk over every page finds exactly the old strays, wherever pages end
    assert sorted(found) == sorted((i.pk, i.sk) for i in strays)
    assert not {(i.pk, i.sk) for i in projects + young} & set(found)
    assert pages > len(projects) // 3


def test_beat_passes_scan_for_strays_a_page_at_a_time_and_find_them_all(
    start_workers: StartWorkers, proxy: CountingProxy
) -> None:
    ctx = own_table(start_workers, proxy)
    m = ctx.table.model
    # Given a table of three scan pages, with strays of a crashed create among old projects
    projects = three_item_projects(m, 2 * STRAY_PAGE // 3 + 10, age=2 * HOUR)
    strays = stray_items(m, 40, age=2 * HOUR)
    young = stray_items(m, 4, age=0)
    ctx.table.batch_put(projects + strays + young)
    assert len(projects + strays + young) > 2 * STRAY_PAGE
    # When beat's passes take the stray scan, each with the budget for one page
    deleted, scanned = [], []
    sweep_strays: bool | None = True
    while sweep_strays or ctx.board.cursor(STRAY_CURSOR_JOB) is not None:
        proxy.reset()
        report = beat_pass_here(ctx, full_sweep=False, sweep_strays=sweep_strays)
        sweep_strays = None  # the round goes on from its cursor
        deleted.append(report.stray_scenes_deleted)
        scanned.append(proxy.items_read()["dynamodb.Scan"])
        assert len(deleted) <= 3
    # Then each pass read one page and the scan ended after the third
    assert len(deleted) == 3 and all(0 < n <= STRAY_PAGE for n in scanned), scanned
    # and every old stray is gone, every project and young item kept
    assert sum(deleted) == len(strays)
    left = table_keys(ctx)
    assert not {(i.pk, i.sk) for i in strays} & left
    assert {(i.pk, i.sk) for i in projects + young} <= left
    # and an inline pass still scans the whole table at once, finding nothing left
    proxy.reset()
    assert api.reconcile(full_sweep=False, sweep_strays=True).stray_scenes_deleted == 0
    assert proxy.items_read()["dynamodb.Scan"] == len(left)
