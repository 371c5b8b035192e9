"""Which projects a reconcile pass examines: O(active projects) per pass, not O(history).

A regular pass reads the status index partitions of projects a run works on and loads each of
them (a Query and an S3 LIST). Pending projects are listed too (their METADATA comes with the
index page, so listing costs about one request per thousand), but only those that hold a run or
changed since they were created within the last two sweep periods are loaded: a project created
and never run has nothing to repair. Completed and failed projects, and every pending one, are
loaded by the full sweep, at most once per `MVPIPE_FULL_SWEEP_SECONDS` across all beat processes.

Beat's regular passes take those projects in turns (`in_turn`): each pass examines them from
where the last one stopped until its time budget is spent, so a pass's cost stays bounded however
many projects are active, and every one is still reached within a bounded number of passes.

Beat's full sweep is a round spread over passes too (`round_rest`): once due, every pass also
examines, after its active turn and within the same budget, the projects the regular passes do
not load, in one fixed order from where the last pass stopped (a cursor of its own, a `Round`:
when it started and the `Place` it reached), until the round reaches the end of that order; the
next round starts when the sweep is due again. The order is the status index's own: the idle
pending projects (already listed by the regular turn), then each finished status's partition by
`GSI1SK` (createdAt) and id, which a pass walks from its cursor a page at a time
(`ProjectStore.walk_status`): it reads the finished projects it examines and at most a page
more, never the whole history. The round takes only projects created by its start, so it has an
end: a round of S projects ends within S passes, however many finish meanwhile.

The stray-item scan is a round over passes too: a table Scan a page at a time from its own
cursor, pages while the pass's budget lasts (at least one). So is the stray-song sweep (the
songs of creates whose METADATA never landed): a LIST of the bucket's project folders a page at
a time from its own cursor (the last name it read), due as often as the stray-item scan
(`paged_turn` takes both rounds' pages). A
cursor that does not read back as what its round wrote starts that round again
(`sweep_round`, `stray_round`, `song_round`).
"""

from __future__ import annotations

import itertools
import json
import logging
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import NamedTuple, TypeVar

from mvpipe.deps import Context
from mvpipe.models import ProjectStatus
from mvpipe.store.clips import is_name_segment
from mvpipe.store.records import ProjectRecord, utc_now_iso
from mvpipe.store.table import METADATA, SCENE_PREFIX, project_pk, scene_sk

#: A run works on these projects: every regular pass loads them.
RUN_STATUSES = (
    ProjectStatus.GENERATING_SCENES,
    ProjectStatus.PROCESSING,
    ProjectStatus.ASSEMBLING,
)
#: Listed by every regular pass, loaded only when `needs_regular_pass` says so.
IDLE_STATUSES = (ProjectStatus.PENDING,)
#: Loaded by the full sweep only.
FINISHED_STATUSES = (ProjectStatus.COMPLETED, ProjectStatus.FAILED)

#: The order a round of the full sweep takes the statuses in.
ROUND_STATUSES = IDLE_STATUSES + FINISHED_STATUSES
#: Finished projects a pass reads from the status index per Query: a pass reads at most this
#: many past the last one it examines.
SWEEP_PAGE = 50
#: Items a pass of the stray-item scan reads per Scan page.
STRAY_PAGE = 500
#: Project folders a pass of the stray-song sweep reads per LIST page (one BatchGetItem reads
#: their METADATA keys).
SONG_PAGE = 100

T = TypeVar("T")

log = logging.getLogger("mvpipe.reconcile")

FULL_SWEEP_JOB = "full-sweep"
#: Where beat's last regular pass stopped (the last project id it examined).
CURSOR_JOB = "reconcile"
#: Where the full sweep's round stands (a `Round`): absent between rounds.
SWEEP_CURSOR_JOB = "full-sweep-round"
STRAY_SWEEP_JOB = "stray-sweep"
#: Where the stray-item scan stopped (an `encode_key` of its last item's key, `decode_item_key`
#: reads it): absent between rounds, "" at a round's start.
STRAY_CURSOR_JOB = "stray-sweep-round"
SONG_SWEEP_JOB = "song-sweep"
#: Where the stray-song sweep stopped (the name its last page ended with: a folder, or a loose
#: object beside the folders; `FolderPage.following`): absent between rounds, "" at a round's
#: start.
SONG_CURSOR_JOB = "song-sweep-round"


def needs_regular_pass(project: ProjectRecord, now: float, window_seconds: float) -> bool:
    """A run may have left work behind (a cancel leaves operations its polls must finish); a
    project untouched since creation, or since before the window, waits for the sweep."""
    if project.status in RUN_STATUSES or project.active_run_id is not None:
        return True
    if project.status not in IDLE_STATUSES or project.updated_at == project.created_at:
        return False
    return now - datetime.fromisoformat(project.updated_at).timestamp() < window_seconds


def projects_to_examine(ctx: Context, *, full_sweep: bool, now: float) -> list[str]:
    """The ids an inline pass loads, through the status index (never a table scan)."""
    regular, idle = scopes(ctx, now=now)
    if not full_sweep:
        return regular
    finished = [p for status in FINISHED_STATUSES for p in ctx.projects.list_by_status(status)]
    return regular + [p.project_id for p in idle + finished]


def scopes(ctx: Context, *, now: float) -> tuple[list[str], list[ProjectRecord]]:
    """(the ids a regular pass loads, and the listed idle projects it leaves to the sweep): one
    listing of the run and idle partitions of the status index; the finished ones are not read."""
    window = 2 * ctx.settings.full_sweep_seconds  # a sweep always falls inside it
    regular: list[str] = []
    idle: list[ProjectRecord] = []
    for status in RUN_STATUSES + IDLE_STATUSES:
        for p in ctx.projects.list_by_status(status):
            if needs_regular_pass(p, now, window):
                regular.append(p.project_id)
            else:
                idle.append(p)
    return regular, idle


class Place(NamedTuple):
    """A project's place in a round of the full sweep: its status (the partition, in
    `ROUND_STATUSES` order), then the status index's sort key (GSI1SK), then its id."""

    status: ProjectStatus
    gsi1sk: str
    project_id: str

    @classmethod
    def of(cls, project: ProjectRecord) -> Place:
        return cls(project.status, project.gsi1sk, project.project_id)


class Round(NamedTuple):
    """A round of the full sweep as its cursor holds it: when it started (UTC ISO time, the
    bound of its walk: a project created later is the regular passes' business until the next
    round) and the place it reached (None: none yet)."""

    started: str
    after: Place | None = None

    def encode(self) -> str:
        return encode_key([self.started] + ([] if self.after is None else list(self.after)))

    @classmethod
    def decode(cls, text: str) -> Round | None:
        """The round `encode` wrote, or None for anything else ("", an older version's
        cursor, damaged text): the caller starts a round again rather than send the store a
        start key it rejects."""
        parts = decode_key(text, 1) or decode_key(text, 4)
        if parts is None or not _iso_time(parts[0]):
            return None
        if len(parts) == 1:
            return cls(parts[0])
        status, gsi1sk, project_id = parts[1:]
        if status not in ROUND_STATUSES or not _iso_time(gsi1sk) or not _uuid(project_id):
            return None
        return cls(parts[0], Place(ProjectStatus(status), gsi1sk, project_id))


def encode_key(parts: Iterable[str]) -> str:
    """A cursor's text: a JSON list of strings."""
    return json.dumps([str(p) for p in parts])


def decode_key(text: str, size: int) -> tuple[str, ...] | None:
    """The `size` non-empty strings `encode_key` wrote, or None ("" or unreadable: DynamoDB
    rejects an empty key string in a start key)."""
    try:
        parts = json.loads(text) if text else None
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    if not isinstance(parts, list) or len(parts) != size:
        return None
    if not all(isinstance(p, str) and p for p in parts):
        return None
    return tuple(parts)


def decode_item_key(text: str) -> tuple[str, str] | None:
    """The stray scan's cursor: the (PK, SK) of a project's METADATA or scene item that
    `encode_key` wrote, or None for anything else (the scan then starts again)."""
    parts = decode_key(text, 2)
    if parts is None:
        return None
    pk, sk = parts
    project_id = pk.removeprefix(project_pk(""))
    if pk == project_id or not _uuid(project_id):
        return None
    digits = sk.removeprefix(SCENE_PREFIX)
    if sk != METADATA and not (
        digits.isdigit() and digits.isascii() and scene_sk(int(digits)) == sk
    ):
        return None
    return pk, sk


def _iso_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


#: Reads a finished partition lazily from after a (GSI1SK, id) up to a GSI1SK:
#: `ProjectStore.walk_status`.
Walk = Callable[[ProjectStatus, tuple[str, str] | None, str], Iterator[ProjectRecord]]


def round_rest(idle: Iterable[ProjectRecord], walk: Walk, cursor: Round) -> Iterator[Place]:
    """What the round `cursor` has left after its place, in the round's order, without
    wrapping round: the round is over when this runs out.

    The idle pending projects come from the regular turn's listing (`idle`); each finished
    partition comes from `walk(status, (GSI1SK, id) to start after, the round's start)`, which
    reads it lazily, so taking k places reads k finished projects and what `walk` reads ahead
    (a page). Both stop at projects created by the round's start: the order is by creation, so
    a project created and finished mid-round would land ahead of the cursor, and projects
    finishing faster than passes examine them would keep the round from its end. So a round
    of S projects ends within S passes. A project listed throughout the round is taken once
    in it; one that comes to stand behind the cursor mid-round (moved to an earlier
    partition) waits for the next round."""
    after = cursor.after
    rank = 0 if after is None else ROUND_STATUSES.index(after.status)
    for status in ROUND_STATUSES[rank:]:
        start = None
        if after is not None and status == after.status:
            start = (after.gsi1sk, after.project_id)
        if status in IDLE_STATUSES:
            listed = sorted(
                (p.gsi1sk, p.project_id)
                for p in idle
                if p.status == status and p.gsi1sk <= cursor.started
            )
            for gsi1sk, project_id in listed[bisect_right(listed, start) if start else 0 :]:
                yield Place(status, gsi1sk, project_id)
        else:
            for p in walk(status, start, cursor.started):
                yield Place.of(p)


def round_cursor(
    ctx: Context, job: str, due_job: str, every: float, start: bool | None, fresh: str
) -> str | None:
    """The cursor of the round `job`, starting one at `fresh` when `due_job` is due (or
    `start` is True); None when no round is on, or `start` is False (left for the next pass)."""
    if start is False:
        return None
    cursor = ctx.board.cursor(job)
    if cursor is None and (start or ctx.board.due(due_job, every)):
        cursor = fresh
        ctx.board.move_cursor(job, cursor)
    return cursor


def sweep_round(ctx: Context, start: bool | None) -> Round | None:
    """The full sweep's round a beat pass goes on with (starting one now when it is due), or
    None when none is on."""
    every = ctx.settings.full_sweep_seconds
    fresh = Round(utc_now_iso())
    text = round_cursor(ctx, SWEEP_CURSOR_JOB, FULL_SWEEP_JOB, every, start, fresh.encode())
    if text is None:
        return None
    cursor = Round.decode(text)
    if cursor is None:
        _restart(ctx, SWEEP_CURSOR_JOB, text, fresh.encode())
    return cursor or fresh


class StrayRound(NamedTuple):
    """A round of the stray-item scan: the (PK, SK) its next page starts after (None: the
    table's start)."""

    after: tuple[str, str] | None


def stray_round(ctx: Context, start: bool | None) -> StrayRound | None:
    """The stray scan's round a beat pass goes on with (starting one now when it is due), or
    None when none is on."""
    every = ctx.settings.stray_sweep_seconds
    text = round_cursor(ctx, STRAY_CURSOR_JOB, STRAY_SWEEP_JOB, every, start, "")
    if text is None:
        return None
    after = decode_item_key(text)
    if after is None and text:
        _restart(ctx, STRAY_CURSOR_JOB, text, "")
    return StrayRound(after)


class SongRound(NamedTuple):
    """A round of the stray-song sweep: the name under `projects/` its next page starts after
    (None: the bucket's first)."""

    after: str | None


def song_round(ctx: Context, start: bool | None) -> SongRound | None:
    """The stray-song sweep's round a beat pass goes on with (starting one now when it is due,
    as often as the stray-item scan), or None when none is on."""
    every = ctx.settings.stray_sweep_seconds
    text = round_cursor(ctx, SONG_CURSOR_JOB, SONG_SWEEP_JOB, every, start, "")
    if text is None:
        return None
    # Only a place to list from (S3's StartAfter): any one name at the folders' level will do
    if text and not is_name_segment(text):
        _restart(ctx, SONG_CURSOR_JOB, text, "")
        return SongRound(None)
    return SongRound(text or None)


def paged_turn(
    *,
    ctx: Context,
    cursor: str | None,
    start: T | None,
    page: Callable[[T | None], T | None],
    encode: Callable[[T], str],
    spent: Callable[[], float],
    budget: float | None,
) -> tuple[int, bool]:
    """A round's pages of this pass, from `start` (`page` does one and says where the next
    starts, None: the round is over): one page at least, more while the budget lasts (None:
    to the end), the round's `cursor` moved past each page as it is done (so a pass that dies
    on one reads it again, never skips it; None: an inline pass, which keeps no cursor).
    Returns (pages, round over)."""
    pages = 0
    for _ in this_turn(itertools.count(), spent, budget):
        start = page(start)
        pages += 1
        if start is None:
            if cursor is not None:
                ctx.board.drop_cursor(cursor)
            return pages, True
        if cursor is not None:
            ctx.board.move_cursor(cursor, encode(start))
    return pages, False


def _restart(ctx: Context, job: str, text: str, fresh: str) -> None:
    """An unreadable cursor starts its round again, said once: the fresh cursor replaces it."""
    log.warning("the cursor of %s is unreadable (%.60r): its round starts again", job, text)
    ctx.board.move_cursor(job, fresh)


class Drained(Iterator[T]):
    """An iterator that tells, once its user stops, whether its source ran out: a round whose
    last pass took everything left is over, without reading a page past the end to find out."""

    def __init__(self, source: Iterable[T]) -> None:
        self._source = iter(source)
        self.done = False

    def __next__(self) -> T:
        try:
            return next(self._source)
        except StopIteration:
            self.done = True
            raise


def in_turn(ids: Iterable[str], after: str | None) -> list[str]:
    """`ids` once each in one fixed order (sorted), starting after `after` and wrapping round.

    A pass that stops early leaves the rest to the next pass, which starts where it stopped: a
    project listed throughout is examined within ceil(listed / examined per pass) passes, and a
    project listed later (or a cursor whose project is gone) just takes its place in the order.
    """
    ordered = sorted(set(ids))
    start = 0 if after is None else bisect_right(ordered, after)
    return ordered[start:] + ordered[:start]


def this_turn(
    ordered: Iterable[T], spent: Callable[[], float], budget: float | None
) -> Iterator[T]:
    """What a pass takes (projects to examine, pages to scan): in order while `spent()` is
    under `budget` (None: all of them), and always the first, so every pass moves the cursor
    on. It takes the next one from `ordered` before asking the clock, so a lazy source reads
    at most one item past what the turn takes."""
    for n, item in enumerate(ordered):
        if n and budget is not None and spent() >= budget:
            return
        yield item
