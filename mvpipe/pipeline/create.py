"""Creating a project: the song is uploaded first, then the scenes, METADATA last.

A project is visible only once METADATA exists, so a crash anywhere before leaves nothing a user can
see. A METADATA write that was refused takes its scene items and uploaded song back with it; one
whose outcome is unknown (an outage) keeps them unless a read proves the project was not created.
(What a crash leaves behind, the stray-scene sweep collects.)
"""

from __future__ import annotations

import logging

from mvpipe.deps import Context
from mvpipe.errors import StoreUnavailable
from mvpipe.media.slots import check_slot_count
from mvpipe.models import ProjectSpec

log = logging.getLogger("mvpipe.create")


def create_project(ctx: Context, project_id: str, spec: ProjectSpec, song: bytes | None) -> None:
    """Write a validated project; `song` holds the bytes `spec.song` describes. A song too long
    for a project's scenes is refused (`InvalidInput`) before anything is written."""
    key = None
    if spec.song is not None:
        if song is None:
            raise ValueError("spec.song without the song's bytes")
        settings = ctx.settings
        check_slot_count(
            spec.song.seconds,
            fps=settings.output_fps,
            max_seconds=settings.slot_max_seconds_for(spec.provider),
        )
        key = ctx.songs.put_song(project_id, spec.song.sha256, spec.song.ext, song)
    try:
        ctx.projects.create(project_id, spec, song_key=key)
    except StoreUnavailable:
        created = _was_created(ctx, project_id)
        if created:
            return
        if created is False:
            _take_back(ctx, project_id, key)
        raise
    except Exception:
        # The store answered and refused the write: nothing points at the scenes or the song.
        _take_back(ctx, project_id, key)
        raise


def _was_created(ctx: Context, project_id: str) -> bool | None:
    """Whether a METADATA write that timed out took effect; None when the store cannot tell."""
    try:
        return ctx.projects.exists(project_id)
    except Exception:
        log.warning("project %s: cannot tell whether METADATA was written", project_id)
        return None


def _take_back(ctx: Context, project_id: str, key: str | None) -> None:
    try:
        ctx.projects.take_back(project_id)
    except Exception:
        log.warning("could not delete the scenes of project %s, which was not created", project_id)
    if key is None:
        return
    try:
        ctx.songs.delete(key)
    except Exception:
        log.warning("could not delete the song %s of a project that was not created", key)
