"""The stray sweeps of a reconcile pass: scene items and songs of creates whose METADATA never
landed, past the grace period; a beat pass's pages of the scan, or the whole scan at once."""

from __future__ import annotations

import time
from collections.abc import Callable

from mvpipe.deps import Context
from mvpipe.pipeline.grace import grace_cutoff
from mvpipe.pipeline.reconcile_report import ReconcileReport
from mvpipe.pipeline.reconcile_scope import (
    STRAY_CURSOR_JOB,
    STRAY_PAGE,
    StrayRound,
    encode_key,
    paged_turn,
)
from mvpipe.pipeline.song_sweep import SongTurn, song_turn

#: Told the project folders an inline pass's stray sweeps have covered so far, after each page
#: (their number is not known before the end): what `mvpipe reconcile --sweep` shows.
SweepProgress = Callable[[int], None]


def stray_turn(
    ctx: Context,
    report: ReconcileReport,
    cursor: StrayRound,
    spent: Callable[[], float],
    budget: float,
) -> tuple[int, bool]:
    """The stray-item scan's pages of this pass, from `cursor` (see `paged_turn`)."""
    cutoff = _stray_cutoff(ctx)

    def page(start: tuple[str, str] | None) -> tuple[str, str] | None:
        strays, following = ctx.table.stray_page(cutoff, STRAY_PAGE, start)
        _delete_strays(ctx, report, strays)
        return following

    return paged_turn(
        ctx=ctx,
        cursor=STRAY_CURSOR_JOB,
        start=cursor.after,
        page=page,
        encode=encode_key,
        spent=spent,
        budget=budget,
    )


def _stray_cutoff(ctx: Context) -> str:
    """The grace period's cutoff as scene items' `createdAt` (ISO time) compares."""
    return grace_cutoff(ctx.settings, time.time()).isoformat(timespec="microseconds")


def sweep_strays_at_once(
    ctx: Context, report: ReconcileReport, swept: SweepProgress | None
) -> None:
    """The whole stray-item scan and stray-song sweep at once (inline calls)."""
    _delete_strays(ctx, report, ctx.table.stray_scene_keys(_stray_cutoff(ctx)))
    done = song_turn(ctx=ctx, after=None, cursor=None, spent=lambda: 0.0, budget=None, told=swept)
    count_songs(report, done)


def count_songs(report: ReconcileReport, done: SongTurn) -> None:
    report.stray_songs_deleted += done.deleted
    report.stray_songs_skipped += done.skipped


def _delete_strays(ctx: Context, report: ReconcileReport, strays: list[tuple[str, str]]) -> None:
    if strays:
        ctx.table.batch_delete(strays)
        report.stray_scenes_deleted += len(strays)
