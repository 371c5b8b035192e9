"""Which song objects a create that never wrote its METADATA left in S3 (pure: no I/O).

A create uploads its song before it writes METADATA. A METADATA write whose outcome stayed
unknown keeps the song (the write may still land), so if it never landed the song belongs to no
project anyone can see. Reconcile walks the bucket's project folders a page at a time and asks
this module which of the song objects it listed are such strays: under a song prefix (nothing
else is written before METADATA), their project without METADATA, and stored before the grace
period's cutoff (a create still on its way to METADATA is never touched).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from datetime import datetime

from mvpipe.errors import InvalidInput
from mvpipe.models import validate_project_id
from mvpipe.store.clips import PROJECTS_PREFIX, StoredObject
from mvpipe.store.songs import song_prefix


def folder_project(name: str) -> str | None:
    """The project a folder under `projects/` is named after, or None (not a project id:
    not ours, never touched)."""
    try:
        return validate_project_id(name)
    except InvalidInput:
        return None


def song_project(key: str) -> str | None:
    """The project whose song prefix holds `key` (an object inside it, not the prefix
    itself), or None for any other key."""
    project_id, _, _ = key.removeprefix(PROJECTS_PREFIX).partition("/")
    project = folder_project(project_id) if key.startswith(PROJECTS_PREFIX) else None
    if project is None:
        return None
    prefix = song_prefix(project)
    return project if key.startswith(prefix) and len(key) > len(prefix) else None


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
