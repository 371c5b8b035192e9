"""Creating a project: the song is uploaded first, then the scenes, METADATA last.

A project is visible only once METADATA exists, so a crash anywhere before leaves nothing a user can
see. A METADATA write that was refused takes its scene items and uploaded song back with it. One
whose outcome is unknown (an outage) keeps them: a write whose answer was lost may still land, and
a project must never appear without its scenes or song. If a read then finds the project, it was
created; otherwise the error goes to the caller, and reconcile's stray sweeps collect the scene
items and the song of a METADATA that never lands (past the grace period).

A project with a song, once created, asks a media worker to analyse the song (one message,
`mvpipe.prepare_song`): its estimate is exact once the timeline is recorded, and its first run
plans without analysing; a mark in Redis says it is on its way until the worker ends it. The
message is only a head start: when the broker cannot take it, the project stands (its song is
valid), a warning is logged, nothing is marked, and the run's planning analyses.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from mvpipe.deps import Context
from mvpipe.errors import StoreUnavailable
from mvpipe.models import ProjectSpec
from mvpipe.providers.classify import describe

log = logging.getLogger("mvpipe.create")


class SongAnalysis(Protocol):
    """Sends the message that has a worker analyse a new project's song (`CeleryDispatcher`)."""

    def prepare_song(self, project_id: str) -> Any: ...


def create_project(
    ctx: Context,
    project_id: str,
    spec: ProjectSpec,
    song: bytes | None,
    analysis: SongAnalysis | None = None,
) -> None:
    """Write a project `pipeline.intake` validated (hand-written scenes at their clip lengths);
    `song` holds the bytes `spec.song` describes. With a song and `analysis`, the song's
    analysis is asked for once the project is written."""
    _write(ctx, project_id, spec, song)
    if spec.song is not None and analysis is not None:
        _ask_analysis(ctx, analysis, project_id)


def _ask_analysis(ctx: Context, analysis: SongAnalysis, project_id: str) -> None:
    """Send the song's analysis (bounded), then mark it on its way: the estimate waits for an
    analysis only while one is. Not sent, the project stands and its run's planning analyses
    the song: a warning, never an error; not marked, its estimate is "about" until then."""
    try:
        analysis.prepare_song(project_id)
    except Exception as exc:
        log.warning(
            "project %s: its song's analysis could not be asked for (%s); its first run will "
            "analyse it",
            project_id,
            describe(exc),
        )
        return
    try:
        ctx.quick_board.analysis_sent(project_id)
    except Exception as exc:
        log.warning(
            "project %s: its song's analysis was asked for, but could not be marked so (%s)",
            project_id,
            describe(exc),
        )


def _write(ctx: Context, project_id: str, spec: ProjectSpec, song: bytes | None) -> None:
    key = None
    if spec.song is not None:
        if song is None:
            raise ValueError("spec.song without the song's bytes")
        key = ctx.songs.put_song(project_id, spec.song.sha256, spec.song.ext, song)
    try:
        ctx.projects.create(project_id, spec, song_key=key)
    except StoreUnavailable:
        if _was_created(ctx, project_id):
            return
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
        if not ctx.projects.take_back(project_id):
            return  # the project exists after all: its song stays with it
    except Exception:
        log.warning("could not delete the scenes of project %s, which was not created", project_id)
    if key is None:
        return
    try:
        ctx.songs.delete(key)
    except Exception:
        log.warning("could not delete the song %s of a project that was not created", key)
