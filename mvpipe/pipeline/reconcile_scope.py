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
not load, in one fixed order from where the last pass stopped (a cursor of its own), until the
round reaches the end of that order; the next round starts when the sweep is due again.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime

from mvpipe.deps import Context
from mvpipe.models import ProjectStatus
from mvpipe.store.records import ProjectRecord

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

FULL_SWEEP_JOB = "full-sweep"
#: Where beat's last regular pass stopped (the last project id it examined).
CURSOR_JOB = "reconcile"
#: Where the full sweep's round stopped: absent between rounds, "" at a round's start.
SWEEP_CURSOR_JOB = "full-sweep-round"


def needs_regular_pass(project: ProjectRecord, now: float, window_seconds: float) -> bool:
    """A run may have left work behind (a cancel leaves operations its polls must finish); a
    project untouched since creation, or since before the window, waits for the sweep."""
    if project.status in RUN_STATUSES or project.active_run_id is not None:
        return True
    if project.status not in IDLE_STATUSES or project.updated_at == project.created_at:
        return False
    return now - datetime.fromisoformat(project.updated_at).timestamp() < window_seconds


def projects_to_examine(ctx: Context, *, full_sweep: bool, now: float) -> list[str]:
    """The ids a pass loads, through the status index (never a table scan)."""
    regular, swept = scopes(ctx, sweeping=full_sweep, now=now)
    return regular + swept


def scopes(ctx: Context, *, sweeping: bool, now: float) -> tuple[list[str], list[str]]:
    """(the ids a regular pass loads, and while `sweeping` every other project's): one listing
    of the status index, the finished partitions only while a sweep is on."""
    window = 2 * ctx.settings.full_sweep_seconds  # a sweep always falls inside it
    regular: list[str] = []
    swept: list[str] = []
    for status in RUN_STATUSES + IDLE_STATUSES:
        for p in ctx.projects.list_by_status(status):
            if needs_regular_pass(p, now, window):
                regular.append(p.project_id)
            elif sweeping:
                swept.append(p.project_id)
    if sweeping:
        swept += [
            p.project_id
            for status in FINISHED_STATUSES
            for p in ctx.projects.list_by_status(status)
        ]
    return regular, swept


def in_turn(ids: Iterable[str], after: str | None) -> list[str]:
    """`ids` once each in one fixed order (sorted), starting after `after` and wrapping round.

    A pass that stops early leaves the rest to the next pass, which starts where it stopped: a
    project listed throughout is examined within ceil(listed / examined per pass) passes, and a
    project listed later (or a cursor whose project is gone) just takes its place in the order.
    """
    ordered = sorted(set(ids))
    start = 0 if after is None else bisect_right(ordered, after)
    return ordered[start:] + ordered[:start]


def round_rest(ids: Iterable[str], after: str) -> list[str]:
    """What a round of the full sweep has left: `ids` once each in the fixed order (sorted),
    after `after` ("" at the round's start), without wrapping round: the round is over when a
    pass has examined the last. A project listed throughout the round is examined once in it;
    one that comes to be listed behind the cursor mid-round waits for the next round."""
    ordered = sorted(set(ids))
    return ordered[bisect_right(ordered, after) :]


def this_turn(
    ordered: Sequence[str], spent: Callable[[], float], budget: float | None
) -> Iterator[str]:
    """The ids a pass examines: in order while `spent()` is under `budget` (None: all of them),
    and always the first, so every pass moves the cursor on."""
    for n, project_id in enumerate(ordered):
        if n and budget is not None and spent() >= budget:
            return
        yield project_id
