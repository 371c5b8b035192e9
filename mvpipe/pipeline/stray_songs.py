"""Which song objects a create that never wrote its METADATA left in S3 (pure: no I/O).

A create uploads its song before it writes METADATA. A METADATA write whose outcome stayed
unknown keeps the song (the write may still land), so if it never landed the song belongs to no
project anyone can see. Reconcile walks the bucket's project folders a page at a time and asks
this module which of the song objects it listed are such strays: under a song prefix (nothing
else is written before METADATA), their project without METADATA, and stored before the grace
period's cutoff (a create still on its way to METADATA is never touched). Only such candidates
are then asked (a HEAD each) whether they are tagged with this deployment's table.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime

from mvpipe.models import is_project_id
from mvpipe.store.clips import PROJECTS_PREFIX, StoredObject
from mvpipe.store.songs import song_prefix


def song_project(key: str) -> str | None:
    """The project whose song prefix holds `key` (an object inside it, not the prefix
    itself), or None for any other key (a folder not named by a project id is not ours)."""
    project_id, _, _ = key.removeprefix(PROJECTS_PREFIX).partition("/")
    if not key.startswith(PROJECTS_PREFIX) or not is_project_id(project_id):
        return None
    prefix = song_prefix(project_id)
    return project_id if key.startswith(prefix) and len(key) > len(prefix) else None


def stray_songs(
    objects: Iterable[StoredObject], with_metadata: Collection[str], cutoff: datetime
) -> list[str]:
    """The keys of `objects` that are stray songs: song objects of a project not in
    `with_metadata`, stored at or before `cutoff` (aware, like S3's LastModified)."""
    return [
        o.key
        for o in objects
        if (project := song_project(o.key)) is not None
        and project not in with_metadata
        and o.last_modified <= cutoff
    ]
