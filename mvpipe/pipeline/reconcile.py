"""Reconcile: find what a crash left behind and repair it with conditional writes.

Safe beside running workers and beside another reconcile: every repair is conditioned on the
state it saw, and a poll chain for an orphaned operation is started at most once (an NX key).
Run twice in a row, the second report's `total` is 0.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, computed_field

from mvpipe.deps import Context
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.pipeline.finalize import settle_project
from mvpipe.pipeline.steps import Dispatcher
from mvpipe.states import FINAL_SCENE_STATES, lease_expired
from mvpipe.store.clips import StoredObject, clip_key, scene_prefix
from mvpipe.store.records import ProjectState, SceneRecord

log = logging.getLogger("mvpipe.reconcile")

#: Statuses whose projects reconcile examines (via the status index, never a scan).
EXAMINED = (
    ProjectStatus.GENERATING_SCENES,
    ProjectStatus.PROCESSING,
    ProjectStatus.PENDING,
    ProjectStatus.COMPLETED,
    ProjectStatus.FAILED,
)


class ReconcileReport(BaseModel):
    expired_leases: int = 0
    exhausted_scenes: int = 0
    orphaned_polls: int = 0
    recovered_clips: int = 0
    missing_clips: int = 0
    counters_fixed: int = 0
    costs_recounted: int = 0
    runs_finalized: int = 0
    runs_taken_over: int = 0
    garbage_deleted: int = 0
    stray_scenes_deleted: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        return sum(v for k, v in self.__dict__.items() if isinstance(v, int))


def reconcile(
    ctx: Context,
    dispatcher: Dispatcher,
    *,
    project_ids: list[str] | None = None,
    sweep_strays: bool | None = None,
) -> ReconcileReport:
    """Repair every project (or the given ones). The stray-item sweep scans the table, so it
    runs at most once per `MVPIPE_STRAY_SWEEP_SECONDS` unless `sweep_strays` forces it."""
    report = ReconcileReport()
    if sweep_strays is None:
        sweep_strays = ctx.board.due("stray-sweep", ctx.settings.stray_sweep_seconds)
    if sweep_strays:
        _sweep_strays(ctx, report)
    if project_ids is None:
        project_ids = [
            p.project_id for status in EXAMINED for p in ctx.projects.list_by_status(status)
        ]
    for project_id in dict.fromkeys(project_ids):
        try:
            _reconcile_project(ctx, dispatcher, project_id, report)
        except Exception:
            log.exception("reconcile of project %s failed; continuing with the others", project_id)
    if report.total:
        log.info("reconcile repaired %s", report.model_dump())
    return report


def _reconcile_project(
    ctx: Context, dispatcher: Dispatcher, project_id: str, report: ReconcileReport
) -> None:
    state = ctx.projects.load(project_id)
    project = state.project
    run = project.active_run_id
    now = time.time()
    objects = {o.key: o for o in ctx.clips.list(f"projects/{project_id}/")}
    repaired = False

    for scene in state.scenes:
        if scene.status == SceneStatus.COMPLETED and scene.clip_key not in objects:
            if ctx.scenes.reset_missing_clip(
                project_id, scene.sequence, clip_key=scene.clip_key or ""
            ):
                report.missing_clips += 1
                repaired = True
        elif scene.status == SceneStatus.PROCESSING and scene.operation_id is None:
            repaired |= _repair_lease(ctx, dispatcher, scene, run, project.provider, now, report)
        elif scene.status == SceneStatus.PROCESSING and scene.operation_id is not None:
            repaired |= _adopt_operation(
                ctx, dispatcher, scene, run, project.provider, objects, report
            )
        _collect_garbage(ctx, scene, objects, now, report)

    if repaired:
        state = ctx.projects.load(project_id)
    _settle(ctx, dispatcher, state, report)


def _sweep_strays(ctx: Context, report: ReconcileReport) -> None:
    cutoff = datetime.fromtimestamp(time.time() - ctx.settings.orphan_grace_seconds, UTC)
    strays = ctx.table.stray_scene_keys(cutoff.isoformat(timespec="microseconds"))
    if strays:
        ctx.table.batch_delete(strays)
        report.stray_scenes_deleted += len(strays)


def _repair_lease(
    ctx: Context,
    dispatcher: Dispatcher,
    scene: SceneRecord,
    run: str | None,
    provider: str,
    now: float,
    report: ReconcileReport,
) -> bool:
    """A submitter died holding its lease: free the scene, and if its run is still alive (its
    task for this scene already gave up), send the scene through the pipeline again."""
    if not scene.lease_token or not lease_expired(scene.lease_expires_at, now):
        return False
    if not _expire_lease(ctx, scene, now, report):
        return False
    if run is not None and ctx.board.run_alive(run):
        dispatcher.resume(scene.project_id, scene.sequence, run, provider)
    return True


def _expire_lease(ctx: Context, scene: SceneRecord, now: float, report: ReconcileReport) -> bool:
    if scene.attempts >= ctx.settings.max_attempts:
        if ctx.scenes.fail(
            scene.project_id,
            scene.sequence,
            error=scene.last_error or "submission lease expired and no attempts left",
            max_attempts=ctx.settings.max_attempts,
        ):
            report.exhausted_scenes += 1
            return True
        return False
    if ctx.scenes.expire_lease(
        scene.project_id, scene.sequence, token=scene.lease_token or "", now=now
    ):
        report.expired_leases += 1
        return True
    return False


def _adopt_operation(
    ctx: Context,
    dispatcher: Dispatcher,
    scene: SceneRecord,
    run: str | None,
    provider: str,
    objects: dict[str, StoredObject],
    report: ReconcileReport,
) -> bool:
    """An operation nobody polls: record its clip if it is already stored, else poll it once."""
    operation_id = scene.operation_id or ""
    if ctx.board.scene_polled(scene.project_id, scene.sequence):
        return False
    key = clip_key(scene.project_id, scene.sequence, operation_id)
    if key in objects:
        if ctx.scenes.complete(
            scene.project_id, scene.sequence, operation_id=operation_id, clip_key=key
        ):
            report.recovered_clips += 1
            return True
        return False
    liveness = ctx.settings.liveness_seconds(provider)
    if ctx.board.claim_poll_chain(scene.project_id, scene.sequence, liveness):
        dispatcher.resume(scene.project_id, scene.sequence, run, provider, operation_id)
        report.orphaned_polls += 1
    return False


def _collect_garbage(
    ctx: Context,
    scene: SceneRecord,
    objects: dict[str, StoredObject],
    now: float,
    report: ReconcileReport,
) -> None:
    """Objects under a scene's prefix other than its recorded clip, past the grace period."""
    prefix = scene_prefix(scene.project_id, scene.sequence)
    live = {scene.clip_key}
    if scene.operation_id:
        live.add(clip_key(scene.project_id, scene.sequence, scene.operation_id))
    cutoff = datetime.fromtimestamp(now - ctx.settings.orphan_grace_seconds, UTC)
    for key, obj in list(objects.items()):
        if key.startswith(prefix) and key not in live and obj.last_modified <= cutoff:
            ctx.clips.delete(key)
            del objects[key]
            report.garbage_deleted += 1


def _submission_in_progress(state: ProjectState) -> bool:
    """A live lease means a submitter may be talking to the provider right now: taking the
    run over then would let its operation be dropped and the scene paid for again. Liveness in
    Redis can vanish (a Redis restart without persistence); the lease in the table cannot."""
    now = time.time()
    return any(
        s.status == SceneStatus.PROCESSING
        and s.operation_id is None
        and not lease_expired(s.lease_expires_at, now)
        for s in state.scenes
    )


def _finalize_owed(ctx: Context, state: ProjectState, run: str) -> bool:
    """The run's finalize ran, and every scene it waits for is final since: the re-finalize
    must have been lost (a broker hiccup), even if the run still looks alive. A run whose
    finalize never ran is left to its chord (or to the takeover once it is stale)."""
    sequences = ctx.board.run_sequences(run)
    if sequences is None:
        return False
    wanted = set(sequences)
    return all(s.status in FINAL_SCENE_STATES for s in state.scenes if s.sequence in wanted)


def _settle(
    ctx: Context, dispatcher: Dispatcher, state: ProjectState, report: ReconcileReport
) -> None:
    project = state.project
    run = project.active_run_id
    if run is not None and project.planned and _finalize_owed(ctx, state, run):
        if settle_project(ctx, state, release_run=run, sequences=ctx.board.run_sequences(run)):
            report.runs_finalized += 1
        return
    if run is not None and not ctx.board.run_alive(run) and not _submission_in_progress(state):
        counters = state.counters
        if project.planned and counters.open_scenes == 0:
            if settle_project(ctx, state, release_run=run):
                report.runs_finalized += 1
            return
        status = ProjectStatus.PROCESSING if project.planned else ProjectStatus.GENERATING_SCENES
        new_run = str(uuid.uuid4())
        # Alive before it can be won: a pass between the win and a later mark would take it over.
        ctx.board.touch_run(new_run, ctx.settings.run_stale_seconds)
        if ctx.projects.take_over_run(project.project_id, run, new_run, status):
            scope = list(project.run_scope) if project.run_scope else None
            dispatcher.start_run(project.project_id, new_run, scope)
            report.runs_taken_over += 1
            log.info(
                "took over stale run project=%s old=%s new=%s", project.project_id, run, new_run
            )
        return
    settlement = settle_project(ctx, state)
    if settlement is not None and settlement.cost_recounted:
        report.costs_recounted += 1
    elif settlement is not None and settlement.changed:
        report.counters_fixed += 1
