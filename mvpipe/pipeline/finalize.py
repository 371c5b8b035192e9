"""Finalize: recount the scenes, derive the project's status, release the run when it is over.

Reads the store, never the chord's result list: a chord body can fire early (a redelivered header)
and a header can exit because another execution owns its scene. When the run is not over yet,
the last scene to finish triggers finalize again (see RunBoard.scene_finished).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mvpipe import hooks
from mvpipe.deps import Context
from mvpipe.errors import Conflict
from mvpipe.models import ProjectStatus
from mvpipe.pipeline.steps import Dispatcher
from mvpipe.states import FINAL_SCENE_STATES, assembly_due, project_status
from mvpipe.store.records import ProjectState

log = logging.getLogger("mvpipe.finalize")


@dataclass(frozen=True)
class Settlement:
    status: ProjectStatus
    released: bool
    changed: bool
    #: every scene of the run is completed: the run goes on to assemble the final video
    assemble: bool = False
    #: the committed sum was repaired to the scenes' costs (invariant 4)
    cost_recounted: bool = False


def settle_project(
    ctx: Context,
    state: ProjectState,
    *,
    release_run: str | None = None,
    sequences: list[int] | None = None,
) -> Settlement | None:
    """Write counters and status derived from `state`, releasing `release_run` when all its
    scenes are final; None when METADATA moved on meanwhile (another settle landed since
    `state` was read: its counters may be newer than these)."""
    project = state.project
    active = project.active_run_id
    counters = state.counters
    run_scenes = [s for s in state.scenes if sequences is None or s.sequence in set(sequences)]
    final_video = project.final_video_key is not None
    run_over = (
        release_run is not None
        and active == release_run
        and project.planned
        and all(s.status in FINAL_SCENE_STATES for s in run_scenes)
    )
    # All scenes completed and no final video: the run is not over, it assembles (and the
    # assembly's own write releases it).
    assemble = run_over and assembly_due(counters, final_video=final_video)
    release = run_over and not assemble
    planning_failed = not project.planned and project.status == ProjectStatus.FAILED
    status = project_status(
        counters,
        planned=project.planned,
        run_active=active is not None and not release,
        planning_failed=planning_failed,
        final_video=final_video,
    )
    if planning_failed or not project.planned:
        last_error = project.last_error  # planning's own note of why it failed (or last did)
    elif status == ProjectStatus.FAILED:
        last_error = f"{counters.failed_scenes} of {counters.scene_count} scenes failed"
    else:
        last_error = None
    # Only once no claim can land (no run, or this write releases it): a query is not a
    # snapshot, and a recount from a half-seen claim must never lower the committed sum.
    cost = sum(s.cost_micros for s in state.scenes)
    recount_cost = None
    if (active is None or release) and cost != project.committed_cost_micros:
        recount_cost = (project.committed_cost_micros, cost)
        log.warning(
            "project %s: committed %d micros but its scenes cost %d; recounted",
            project.project_id,
            project.committed_cost_micros,
            cost,
        )
    changed = (
        recount_cost is not None
        or release
        or status != project.status
        or counters.completed_scenes != project.completed_scenes
        or counters.failed_scenes != project.failed_scenes
        or (project.planned and counters.scene_count != project.scene_count)
        or last_error != project.last_error
    )
    if not changed:
        return Settlement(status, False, False, assemble)
    if not ctx.projects.settle(
        project.project_id,
        observed_run=active,
        counters=counters,
        status=status,
        release=release,
        last_error=last_error,
        recount_cost=recount_cost,
        observed_version=project.updated_at,
    ):
        return None
    return Settlement(status, release, True, assemble, recount_cost is not None)


def finalize_run(
    ctx: Context, project_id: str, run_id: str | None, sequences: list[int] | None
) -> Settlement:
    """Settle the run; `Settlement.assemble` tells the caller to go on to the assembly."""
    if run_id is not None and sequences is not None:
        # Before reading: a scene finishing after our read will see this and re-trigger us.
        ctx.board.await_scenes(run_id, len(sequences), sequences)
    settlement, state = settle_until_stable(
        ctx, project_id, release_run=run_id, sequences=sequences
    )
    log.info(
        "finalized project=%s run=%s status=%s released=%s completed=%d failed=%d",
        project_id,
        run_id or "-",
        settlement.status,
        settlement.released,
        state.counters.completed_scenes,
        state.counters.failed_scenes,
    )
    return settlement


def settle_until_stable(
    ctx: Context,
    project_id: str,
    *,
    release_run: str | None = None,
    sequences: list[int] | None = None,
    attempts: int = 10,
) -> tuple[Settlement, ProjectState]:
    """Settle from a fresh read, again while METADATA moves on between read and write."""
    for _ in range(attempts):
        state = ctx.projects.load(project_id)
        settlement = settle_project(ctx, state, release_run=release_run, sequences=sequences)
        if settlement is not None:
            return settlement, state
    raise Conflict(f"project {project_id} kept changing while being settled; try again")


def refinalize(ctx: Context, dispatcher: Dispatcher, project_id: str, run_id: str | None) -> None:
    """A scene reached a final state after its run's finalize ran: finalize again.

    The trigger is cleared only once the message is on the broker, so a failed publish is
    redone by the step's retry (see RunBoard.scene_finished)."""
    sequences = ctx.board.run_sequences(run_id) if run_id else None
    hooks.reached("before_refinalize")
    dispatcher.finalize(project_id, run_id, sequences)
    if run_id is not None:
        ctx.board.refinalize_sent(run_id)
