"""The public Python API of mvpipe.

    >>> from mvpipe import api
    >>> project_id = api.create_project("Neon Rain", "City lights\\nRain on glass", scene_count=4)
    >>> api.run_project(project_id)
    >>> view = api.wait_project(project_id, timeout=600)

Every function validates all of its input before touching anything (the store's table and
bucket are only opened, or created, after that): bad input raises a typed
`mvpipe.errors.MvpipeError` subclass and writes nothing.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from celery.result import AsyncResult

from mvpipe.celery_app import app
from mvpipe.deps import get_context
from mvpipe.errors import InvalidInput
from mvpipe.messaging.dispatch import CeleryDispatcher
from mvpipe.models import (
    DEFAULT_LIST_LIMIT,
    MICROS_PER_USD,
    ProjectStatus,
    ProjectSummary,
    ProjectView,
    SceneSpec,
    budget_to_micros,
    validate_limit,
    validate_project_id,
    validate_seconds,
    validate_sequence,
    validate_status,
)
from mvpipe.pipeline import cancel, cost, listing, outputs, runs
from mvpipe.pipeline.create import create_project as write_project
from mvpipe.pipeline.intake import project_intake
from mvpipe.pipeline.reconcile import Progress as ReconcileProgress
from mvpipe.pipeline.reconcile import reconcile as reconcile_all
from mvpipe.pipeline.reconcile_report import ReconcileReport
from mvpipe.pipeline.reconcile_strays import SweepProgress
from mvpipe.settings import get_settings

_dispatcher = CeleryDispatcher(app)

__all__ = [
    "STAGES",
    "cancel_project",
    "create_project",
    "default_download_name",
    "download",
    "estimate_cost",
    "estimate_micros",
    "get_project",
    "list_projects",
    "reconcile",
    "regenerate_scene",
    "run_project",
    "set_budget",
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
    A worker on `mvpipe.media` then analyses the song (`estimate_micros` is exact once it has,
    lip-sync aside); a broker that cannot take the message only leaves that to the first run.
    """
    intake = project_intake(
        get_settings(),
        title,
        concept,
        scene_count=scene_count,
        scenes=scenes,
        provider=provider,
        song=song,
        lip_sync=lip_sync,
        budget_usd=budget_usd,
    )
    project_id = str(uuid.uuid4())
    write_project(get_context(), project_id, intake.spec, intake.song, _dispatcher)
    return project_id


def set_budget(project_id: str, usd: float | None) -> ProjectView:
    """Set the project's budget in US dollars (None: no limit). Raising it lets a later
    `run_project` pay for the scenes that failed over budget; a budget below what is already
    committed is refused (`InvalidInput`), as is a negative, NaN or absurdly large one."""
    validate_project_id(project_id)
    micros = budget_to_micros(usd)
    cost.set_budget(get_context(), project_id, micros)
    return get_project(project_id)


def estimate_cost(project_id: str, sequence: int | None = None) -> float:
    """US dollars a run would still pay: every paid stage still missing (exact once planned, or
    once a song project's song is analysed, its lip-syncs aside). With `sequence`, what
    regenerating that scene would cost."""
    return estimate_micros(project_id, sequence).micros / MICROS_PER_USD


def estimate_micros(project_id: str, sequence: int | None = None) -> cost.Estimate:
    """`estimate_cost` with its detail: micro-dollars, jobs, and whether it is exact."""
    validate_project_id(project_id)
    if sequence is not None:
        validate_sequence(sequence)
    return cost.estimate_project(get_context(), project_id, sequence)


def get_project(project_id: str) -> ProjectView:
    validate_project_id(project_id)
    return get_context().projects.load(project_id).view()


def list_projects(
    status: ProjectStatus | str | None = None, *, limit: int = DEFAULT_LIST_LIMIT
) -> list[ProjectSummary]:
    """The `limit` (1..`MAX_LIST_LIMIT`) newest projects of `status` (all statuses when None)
    through the status index, newest last, each in brief (`get_project` has the whole)."""
    wanted = list(ProjectStatus) if status is None else [validate_status(status)]
    validate_limit(limit)
    return listing.newest(get_context(), wanted, limit)


def run_project(project_id: str) -> AsyncResult:
    """Start (or join) the project's run; returns the run's AsyncResult.

    A second call while a run is active returns that run and starts nothing. `failed` scenes go
    back to `pending`: a user asking for a run is the one thing that may pay for them again.
    """
    validate_project_id(project_id)
    return _result(runs.start_run(get_context(), _dispatcher, project_id))


def regenerate_scene(project_id: str, sequence: int) -> AsyncResult:
    """Clear one scene's clip and generate it again: exactly one new paid generation, and one
    new paid lip-sync when the scene is lip-synced."""
    validate_project_id(project_id)
    validate_sequence(sequence)
    return _result(runs.regenerate(get_context(), _dispatcher, project_id, sequence))


def cancel_project(project_id: str) -> ProjectView:
    """Release the run (queued work exits, no new claim succeeds) and cancel provider jobs
    where the provider allows it; those scenes go back to `pending` without an operation."""
    validate_project_id(project_id)
    cancel.cancel_project(get_context(), _dispatcher, project_id)
    return get_project(project_id)


def _result(start: runs.RunStart) -> AsyncResult:
    """The message sent (a new run's root task, a re-finalize), else the run joined."""
    if isinstance(start.receipt, AsyncResult) or start.run_id is None:
        return start.receipt
    return AsyncResult(start.run_id, app=app)


def wait_project(project_id: str, timeout: float = 600.0, *, interval: float = 0.25) -> ProjectView:
    """Block until no run is active (completed, failed, or pending after a cancel); `Timeout`
    after `timeout` seconds."""
    validate_project_id(project_id)
    validate_seconds(timeout, "timeout", zero=True)
    validate_seconds(interval, "interval", maximum=60)
    return runs.wait_until_idle(get_context(), project_id, timeout, interval)


def reconcile(
    project_id: str | None = None,
    *,
    sweep_strays: bool | None = None,
    full_sweep: bool | None = None,
    progress: ReconcileProgress | None = None,
    swept: SweepProgress | None = None,
) -> ReconcileReport:
    """Repair what crashes left behind, inline (the beat schedule runs the same), for every
    project or just `project_id`.

    `sweep_strays=True` forces the stray sweeps (the table scan for scene items and the sweep
    of the project folders for songs of creates whose METADATA never landed), which otherwise
    run at most once per `MVPIPE_STRAY_SWEEP_SECONDS` (and never for a single-project pass).
    `full_sweep=True` also examines completed, failed and idle pending projects, which
    otherwise happens at most once per `MVPIPE_FULL_SWEEP_SECONDS`. `progress`, if given, is
    told (projects examined, projects listed) after each project; `swept`, the project folders
    the stray sweeps have covered so far.
    """
    ids = None
    if project_id is not None:
        ids = [validate_project_id(project_id)]
        sweep_strays = bool(sweep_strays)
    return reconcile_all(
        get_context(),
        _dispatcher,
        project_ids=ids,
        sweep_strays=sweep_strays,
        full_sweep=full_sweep,
        progress=progress,
        swept=swept,
    )


#: What `download` can fetch: the final video, or one scene's clip of a stage.
STAGES = outputs.STAGES


def default_download_name(
    project_id: str, sequence: int | None = None, stage: str = "final"
) -> str:
    """`{project}-music-video.mp4`, or `{project}-scene-{NNN}-{stage}.mp4` for a scene's clip."""
    validate_project_id(project_id)
    if sequence is not None:
        validate_sequence(sequence)
    return outputs.download_name(project_id, sequence, stage)


def download(
    project_id: str, dest: str | Path, sequence: int | None = None, stage: str = "final"
) -> Path:
    """Write the final video (or scene `sequence`'s clip of `stage`) to `dest`; returns the path.

    `stage` is one of STAGES; a scene's clip needs a `sequence` and a stage other than `final`.
    An existing directory as `dest` receives the file under `default_download_name`. The file
    appears whole or not at all, readable as any new file of the user's is (the umask decides).
    NotFound when the project has no such output (yet).
    """
    validate_project_id(project_id)
    if stage not in STAGES:
        raise InvalidInput(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    if sequence is not None:
        validate_sequence(sequence)
        if stage == "final":
            raise InvalidInput("a scene's clip needs a stage: original, working or lipsync")
    elif stage != "final":
        raise InvalidInput(f"the {stage} clip belongs to a scene: give its sequence")
    target = outputs.download_target(dest, project_id, sequence, stage)
    return outputs.download(get_context(), project_id, target, sequence, stage)
