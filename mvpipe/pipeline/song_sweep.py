"""Reconcile's stray-song sweep: the songs of creates whose METADATA never landed, collected a
LIST page of project folders at a time (`stray_songs` decides which, pure).

A page's folders have their METADATA read in one batch; only the song folders of those without
it are listed, and only their songs past the grace period are candidates. A bucket may be shared
by deployments with tables of their own (a missing METADATA in this table says nothing of
another's projects), so a candidate is deleted only once a HEAD shows it is tagged with this
table (`SongStore.is_ours`); any other (another table's, or untagged) is skipped and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from mvpipe.deps import Context
from mvpipe.models import is_project_id
from mvpipe.pipeline.grace import grace_cutoff
from mvpipe.pipeline.reconcile_scope import SONG_PAGE, paged_turn
from mvpipe.pipeline.stray_songs import stray_songs
from mvpipe.store.clips import PROJECTS_PREFIX
from mvpipe.store.songs import OWNER_KEY, song_prefix

log = logging.getLogger("mvpipe.reconcile")


class SongTurn(NamedTuple):
    """What a pass's turn of the stray-song sweep did."""

    pages: int
    #: whether the round reached the bucket's end
    over: bool
    deleted: int
    #: candidates not tagged with this table (another deployment's, or untagged): kept
    skipped: int


@dataclass
class _Tally:
    folders: int = 0
    deleted: int = 0
    skipped: int = 0
    first_skipped: str = ""


def song_turn(
    *,
    ctx: Context,
    after: str | None,
    cursor: str | None,
    spent: Callable[[], float],
    budget: float | None,
    told: Callable[[int], None] | None = None,
) -> SongTurn:
    """The sweep's pages of this pass, from past the name `after` under `projects/` (see
    `paged_turn`; `cursor` None: an inline pass, which keeps none). The songs it skips are
    said in one line, however many. `told`, if given, is told the project folders swept so
    far after each page."""
    cutoff = grace_cutoff(ctx.settings, time.time())
    tally = _Tally()

    def page(start: str | None) -> str | None:
        following = _collect_page(ctx=ctx, tally=tally, cutoff=cutoff, after=start)
        if told is not None:
            told(tally.folders)
        return following

    pages, over = paged_turn(
        ctx=ctx, cursor=cursor, start=after, page=page, encode=str, spent=spent, budget=budget
    )
    if tally.skipped:
        log.info(
            "kept %d songs of projects without METADATA in table %s that are not tagged"
            " %s=%s (another table's, or untagged), e.g. %s",
            tally.skipped,
            ctx.settings.table,
            OWNER_KEY,
            ctx.settings.table,
            tally.first_skipped,
        )
    return SongTurn(pages, over, tally.deleted, tally.skipped)


def _collect_page(
    *, ctx: Context, tally: _Tally, cutoff: datetime, after: str | None
) -> str | None:
    """One page: the project folders of one LIST page from past `after`, their METADATA read
    in one batch, the song folder of each without it listed, and its stray songs that are
    this table's deleted. Returns the name the next page starts after (None: the end)."""
    names, following = ctx.clips.folders(PROJECTS_PREFIX, after, SONG_PAGE)
    tally.folders += len(names)
    ids = [n for n in names if is_project_id(n)]
    with_metadata = ctx.projects.existing(ids)
    listed = [o for p in ids if p not in with_metadata for o in ctx.clips.list(song_prefix(p))]
    for key in stray_songs(listed, with_metadata, cutoff):
        if not ctx.songs.is_ours(key):
            tally.skipped += 1
            tally.first_skipped = tally.first_skipped or key
            continue
        ctx.songs.delete(key)
        log.info("deleted song %s: its project's METADATA was never written", key)
        tally.deleted += 1
    return following
