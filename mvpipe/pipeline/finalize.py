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
from mvpipe.store.records import ProjectRecord, ProjectState

log = logging.getLogger("mvpipe.finalize")

#: Finalize chains that may give up on a project's run before the run ends: a finalize that
#: always crashes must not be re-run forever. Each execution chain that gives up counts once,
#: whoever sent it: the chord's, each re-trigger of a scene finishing after it (`refinalize`),
#: each reconcile takeover's. So one run's chains may reach the limit before any takeover (a
#: run whose late scenes each re-trigger a crashing finalize). The count is kept across
#: takeovers; a user's run starts it afresh.
MAX_GIVE_UPS = 3


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
    gave_up: str | None = None,
) -> Settlement | None:
    """Write counters and status derived from `state`, releasing `release_run` when all its
    scenes are final; None when METADATA moved on meanwhile (another settle landed since
    `state` was read: its counters may be newer than these).

    `gave_up`: why the run's finalize gave up for good (`MAX_GIVE_UPS`), or why the run was
    never sent (`runs.released_unless_sent`): the run ends whatever its scenes (they keep their
    clips and operations), with that reason as `lastError`."""
    project = state.project
    active = project.active_run_id
    counters = state.counters
    run_scenes = [s for s in state.scenes if sequences is None or s.sequence in set(sequences)]
    final_video = project.final_video_key is not None
    run_over = (
        release_run is not None
        and active == release_run
        and (
            gave_up is not None
            or (project.planned and all(s.status in FINAL_SCENE_STATES for s in run_scenes))
        )
    )
    # All scenes completed and no final video: the run is not over, it assembles (and the
    # assembly's own write releases it).
    assemble = run_over and gave_up is None and assembly_due(counters, final_video=final_video)
    release = run_over and not assemble
    planning_failed = not project.planned and project.status == ProjectStatus.FAILED
    status = project_status(
        counters,
        planned=project.planned,
        run_active=active is not None and not release,
        planning_failed=planning_failed,
        final_video=final_video,
    )
    last_error: str | None
    if run_over and gave_up is not None:
        last_error = gave_up
    elif (active is None and ended_by_give_ups(project)) or planning_failed or not project.planned:
        # why the run ended by give-ups (until a user runs it again), or planning's own note
        # of why it failed (or last did)
        last_error = project.last_error
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


def ended_by_give_ups(project: ProjectRecord) -> bool:
    """The project's last run ended because its finalize gave up (`MAX_GIVE_UPS` times); a
    user's run starts the count afresh."""
    return project.finalize_give_ups >= MAX_GIVE_UPS


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
    gave_up: str | None = None,
    attempts: int = 10,
) -> tuple[Settlement, ProjectState]:
    """Settle from a fresh read, again while METADATA moves on between read and write."""
    for _ in range(attempts):
        state = ctx.projects.load(project_id)
        settlement = settle_project(
            ctx, state, release_run=release_run, sequences=sequences, gave_up=gave_up
        )
        if settlement is not None:
            return settlement, state
    raise Conflict(f"project {project_id} kept changing while being settled; try again")


def give_up_run(
    ctx: Context, project_id: str, run_id: str, error: str, *, at_once: bool = False
) -> bool:
    """A finalize chain of `run_id` gave up on `error` (a scrubbed description): count it on the
    project (every chain, as `MAX_GIVE_UPS` says), and once `MAX_GIVE_UPS` are counted end the
    run saying why. Before that the run is left to reconcile, whose takeover tries it again (or
    to another chain of the run already sent). `at_once`: counted as all of them (a finalize
    whose tries lost their process as often as may be: a takeover would lose them again).
    True when this ended the run."""
    reason = f"finalize failed: {error}"
    by = MAX_GIVE_UPS if at_once else 1
    count = ctx.projects.count_finalize_give_up(project_id, run_id, reason, by=by)
    if count is None or count < MAX_GIVE_UPS:
        return False  # the run moved on, or may be tried again
    settlement, _ = settle_until_stable(ctx, project_id, release_run=run_id, gave_up=reason)
    log.warning("project %s: finalize gave up %d times; run %s ended", project_id, count, run_id)
    return settlement.released


def refinalize(ctx: Context, dispatcher: Dispatcher, project_id: str, run_id: str | None) -> None:
    """A scene reached a final state after its run's finalize ran: finalize again.

    The trigger is cleared only once the message is on the broker, so a failed publish is
    redone by the step's retry (see RunBoard.scene_finished)."""
    sequences = ctx.board.run_sequences(run_id) if run_id else None
    hooks.reached("before_refinalize")
    dispatcher.finalize(project_id, run_id, sequences)
    if run_id is not None:
        ctx.board.refinalize_sent(run_id)
