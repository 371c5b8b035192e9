"""The public Python API of mvpipe.

    >>> from mvpipe import api
    >>> project_id = api.create_project("Neon Rain", "City lights\\nRain on glass", scene_count=4)
    >>> api.run_project(project_id)
    >>> view = api.wait_project(project_id, timeout=600)

Every function validates its input before touching anything: bad input raises a typed
`mvpipe.errors.MvpipeError` subclass and writes nothing.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from celery.result import AsyncResult
from pydantic import ValidationError

from mvpipe.celery_app import app
from mvpipe.deps import Context, get_context
from mvpipe.dispatch import CeleryDispatcher
from mvpipe.errors import Conflict, InvalidInput, Timeout
from mvpipe.media.song import probe_song, read_song
from mvpipe.models import (
    ProjectSpec,
    ProjectStatus,
    ProjectView,
    SceneSpec,
    SceneStatus,
    SongSpec,
    budget_to_micros,
    describe_validation_error,
    parse_scene_specs,
    validate_project_id,
    validate_sequence,
)
from mvpipe.pipeline.create import create_project as write_project
from mvpipe.pipeline.finalize import settle_project
from mvpipe.pipeline.reconcile import ReconcileReport
from mvpipe.pipeline.reconcile import reconcile as reconcile_all
from mvpipe.providers.limiter import slot_member
from mvpipe.store.records import ProjectRecord
from mvpipe.store.scenes import Claim

_dispatcher = CeleryDispatcher(app)

__all__ = [
    "cancel_project",
    "create_project",
    "get_project",
    "list_projects",
    "reconcile",
    "regenerate_scene",
    "run_project",
    "wait_project",
]


def create_project(
    title: str,
    concept: str,
    *,
    scene_count: int | None = None,
    scenes: list[SceneSpec | dict[str, Any]] | None = None,
    provider: str | None = None,
    song: str | Path | bytes | None = None,
    lip_sync: bool = False,
    budget_usd: float | None = None,
) -> str:
    """Create a project and return its id.

    With `scenes`, planning is skipped. With `song` (a path or the bytes of an audio file) the
    song decides the scenes, so `scene_count` and `scenes` are refused; `lip_sync` needs a song.
    """
    ctx = get_context()
    settings = ctx.settings
    specs = parse_scene_specs(scenes) if scenes is not None else None
    if scene_count is None and song is None:
        scene_count = len(specs) if specs is not None else settings.default_scenes
    budget_micros = budget_to_micros(budget_usd)
    data, song_spec = None, None
    if song is not None:
        data = read_song(song, max_bytes=settings.song_max_bytes)
        info = probe_song(
            data,
            min_seconds=settings.song_min_seconds,
            max_seconds=settings.song_max_seconds,
            max_bytes=settings.song_max_bytes,
        )
        song_spec = SongSpec(sha256=info.sha256, ext=info.ext, seconds=info.seconds)
    try:
        spec = ProjectSpec(
            title=title,
            concept=concept,
            provider=provider if provider is not None else settings.provider,
            requested_scene_count=scene_count,
            scenes=specs,
            song=song_spec,
            lip_sync=lip_sync,
            budget_micros=budget_micros,
        )
    except ValidationError as exc:
        raise InvalidInput(describe_validation_error(exc)) from None
    project_id = str(uuid.uuid4())
    write_project(ctx, project_id, spec, data)
    return project_id


def get_project(project_id: str) -> ProjectView:
    return get_context().projects.load(validate_project_id(project_id)).view()


def list_projects(status: ProjectStatus | str | None = None) -> list[ProjectRecord]:
    """Projects by status through the status index (newest last); all statuses when None."""
    ctx = get_context()
    if status is None:
        wanted = list(ProjectStatus)
    else:
        try:
            wanted = [ProjectStatus(status)]
        except ValueError:
            raise InvalidInput(f"unknown project status {status!r}") from None
    return [p for s in wanted for p in ctx.projects.list_by_status(s)]


def run_project(project_id: str) -> AsyncResult:
    """Start (or join) the project's run; returns the run's AsyncResult.

    A second call while a run is active returns that run and starts nothing. `failed` scenes go
    back to `pending`: a user asking for a run is the one thing that may pay for them again.
    """
    ctx = get_context()
    state = ctx.projects.load(validate_project_id(project_id))
    counters = state.counters
    if (
        state.project.planned
        and counters.scene_count
        and counters.completed_scenes == counters.scene_count
    ):
        return _dispatcher.finalize(project_id, None, None)
    run_id = str(uuid.uuid4())
    status = ProjectStatus.PROCESSING if state.project.planned else ProjectStatus.GENERATING_SCENES
    active = ctx.projects.win_run(project_id, run_id, status)
    if active != run_id:
        return AsyncResult(active, app=app)
    ctx.board.touch_run(run_id, ctx.settings.run_stale_seconds)
    for scene in state.scenes:
        if scene.status == SceneStatus.FAILED:
            ctx.scenes.retry_failed(project_id, scene.sequence)
    return _dispatcher.start_run(project_id, run_id)


def regenerate_scene(project_id: str, sequence: int) -> AsyncResult:
    """Clear one scene's clip and generate it again (exactly one new paid generation)."""
    ctx = get_context()
    validate_project_id(project_id)
    validate_sequence(sequence)
    state = ctx.projects.load(project_id)
    if not state.project.planned:
        raise Conflict(f"project {project_id} is not planned yet; run it first")
    if state.scene(sequence) is None:
        raise InvalidInput(f"project {project_id} has no scene {sequence}")
    run_id = str(uuid.uuid4())
    if ctx.scenes.reset_for_regeneration(project_id, sequence, run_id=run_id) != Claim.WON:
        raise Conflict(f"project {project_id} has an active run; cancel it or wait for it")
    ctx.board.touch_run(run_id, ctx.settings.run_stale_seconds)
    return _dispatcher.start_run(project_id, run_id, [sequence])


def cancel_project(project_id: str) -> ProjectView:
    """Release the run (queued work exits, no new claim succeeds) and cancel provider jobs
    where the provider allows it; those scenes go back to `pending` without an operation."""
    ctx = get_context()
    validate_project_id(project_id)
    state = ctx.projects.load(project_id)
    run = state.project.active_run_id
    if run is not None:
        ctx.board.mark_cancelled(run)
        _release(ctx, project_id, run)
    provider = ctx.video_provider(state.project.provider)
    if provider.can_cancel:
        for scene in ctx.projects.load(project_id).scenes:
            operation_id = scene.operation_id
            if scene.status != SceneStatus.PROCESSING or not operation_id:
                continue
            if provider.cancel(operation_id):
                ctx.scenes.reset_cancelled(project_id, scene.sequence, operation_id=operation_id)
                member = slot_member(project_id, scene.sequence)
                limit = ctx.settings.concurrency_for(provider.name)
                _dispatcher.wake(ctx.limiter.release(provider.name, member, limit=limit))
    for _ in range(10):
        if settle_project(ctx, ctx.projects.load(project_id)) is not None:
            break
    return get_project(project_id)


def _release(ctx: Context, project_id: str, run: str) -> None:
    for _ in range(10):
        state = ctx.projects.load(project_id)
        if state.project.active_run_id != run:
            return
        # Release as if every scene were final: a cancelled run owns nothing any more.
        if ctx.projects.settle(
            project_id,
            observed_run=run,
            counters=state.counters,
            status=ProjectStatus.PENDING,
            release=True,
        ):
            return


def wait_project(project_id: str, timeout: float = 600.0, *, interval: float = 0.25) -> ProjectView:
    """Block until no run is active (completed, failed, or pending after a cancel).

    Waiting reads the project item alone (one GetItem, whatever the scene count); the scenes
    are read once, at the end."""
    ctx = get_context()
    validate_project_id(project_id)
    deadline = time.monotonic() + timeout
    while True:
        if ctx.projects.get(project_id).active_run_id is None:
            return ctx.projects.load(project_id).view()
        if time.monotonic() >= deadline:
            raise Timeout(f"project {project_id} still running after {timeout:.0f}s")
        time.sleep(interval)


def reconcile(
    project_id: str | None = None, *, sweep_strays: bool | None = None
) -> ReconcileReport:
    """Repair what crashes left behind, inline (the beat schedule runs the same), for every
    project or just `project_id`.

    `sweep_strays=True` forces the table scan for stray scene items, which otherwise runs at
    most once per `MVPIPE_STRAY_SWEEP_SECONDS` (and never for a single-project pass).
    """
    ids = None
    if project_id is not None:
        ids = [validate_project_id(project_id)]
        sweep_strays = bool(sweep_strays)
    return reconcile_all(get_context(), _dispatcher, project_ids=ids, sweep_strays=sweep_strays)
