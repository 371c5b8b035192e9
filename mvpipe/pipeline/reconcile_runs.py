"""A reconcile pass settles each project's run: finalizes one whose finalize was lost, ends one
whose finalize gave up, takes a stale one over, and recounts a project's counters."""

from __future__ import annotations

import logging
import time
import uuid

from mvpipe.deps import Context
from mvpipe.models import ProjectStatus
from mvpipe.pipeline.finalize import ended_by_give_ups, settle_project
from mvpipe.pipeline.reconcile_report import ReconcileReport
from mvpipe.pipeline.stages import submission_held
from mvpipe.pipeline.steps import Dispatcher
from mvpipe.states import FINAL_SCENE_STATES, assembly_due
from mvpipe.store.records import ProjectState

log = logging.getLogger("mvpipe.reconcile")


def _submission_in_progress(ctx: Context, state: ProjectState) -> bool:
    """A live lease means a submitter may be talking to the provider right now: taking the
    run over then would let its operation be dropped and the scene paid for again. Liveness in
    Redis can vanish (a Redis restart without persistence); the lease in the table cannot.
    Past its lease, a claimed scene's live mark means the same (`submission_held`)."""
    now = time.time()
    return any(submission_held(ctx, s, now) for s in state.scenes)


def _finalize_owed(ctx: Context, state: ProjectState, run: str) -> list[int] | None:
    """The run's scenes when every one is final though no finalize followed (None when not,
    or when the run's scenes are not known yet). Its finalize ran and every scene it waits for
    is final since: the re-finalize must have been lost (a broker hiccup). Or its planning
    sent the chord and every scene of it is final while the chord's finalize has not begun:
    its messages can be lost with a worker's (Celery's consumer drops the countdown messages it
    holds when its broker connection drops; they come back only after the visibility
    timeout), and the run need not go stale first. A finalize that began is left to its own
    retries and give-ups. Either way the run may look alive; a finalize still to come finds
    the run settled (or sends a second assembly, which waits for the first's build)."""
    sequences = ctx.board.run_sequences(run)
    if sequences is None:
        if ctx.board.finalize_begun(run):  # its finalize is at work: its retries settle it
            return None
        sequences = ctx.board.run_scenes(run)  # kept by its planning just before the chord
    if sequences is None:
        return None
    wanted = set(sequences)
    if all(s.status in FINAL_SCENE_STATES for s in state.scenes if s.sequence in wanted):
        return sequences
    return None


def settle(
    ctx: Context, dispatcher: Dispatcher, state: ProjectState, report: ReconcileReport
) -> None:
    project = state.project
    run = project.active_run_id
    # An assembling run's finalize is done; if the assembly died, the run goes stale (below).
    assembling = project.status == ProjectStatus.ASSEMBLING
    owed = None
    if run is not None and project.planned and not assembling:
        owed = _finalize_owed(ctx, state, run)
    if owed is not None and run is not None:
        settlement = settle_project(ctx, state, release_run=run, sequences=owed)
        if settlement:
            report.runs_finalized += 1
            if settlement.assemble:
                dispatcher.assemble(project.project_id, run)
        return
    if run is not None and not ctx.board.run_alive(run) and not _submission_in_progress(ctx, state):
        counters = state.counters
        final_video = project.final_video_key is not None
        if (
            project.planned
            and counters.open_scenes == 0
            and not assembly_due(counters, final_video=final_video)
        ):
            if settle_project(ctx, state, release_run=run):
                report.runs_finalized += 1
            return
        if ended_by_give_ups(project):  # its finalize gave up for good: end it, saying why
            why = project.last_error or "finalize failed"
            if settle_project(ctx, state, release_run=run, gave_up=why):
                report.runs_finalized += 1
            return
        status = ProjectStatus.PROCESSING if project.planned else ProjectStatus.GENERATING_SCENES
        new_run = str(uuid.uuid4())
        # Alive before it can be won: a pass between the win and a later mark would take it over.
        ctx.board.touch_run(new_run, ctx.settings.run_stale_seconds)
        if ctx.projects.take_over_run(project.project_id, run, new_run, status):
            scope = list(project.run_scope) if project.run_scope else None
            # The stale run's work may have been lost with its worker: the new run's counts of
            # lost tries go on from the old run's (`LostTries`), or work that kills its whole
            # worker each try would be taken over forever.
            dispatcher.start_run(project.project_id, new_run, scope, taken_over=run)
            report.runs_taken_over += 1
            log.info(
                "took over stale run project=%s old=%s new=%s", project.project_id, run, new_run
            )
        return
    settlement = settle_project(ctx, state)
    if settlement is not None and settlement.cost_recounted:
        report.costs_recounted += 1
    elif settlement is not None and settlement.changed and run is None:
        # A live run's counters lag by its in-flight work by design (a scene's completion
        # writes no METADATA; the run's finalize counts): recounting them is progress, which
        # invariant 4 asks of every reconcile, not a repair to report.
        report.counters_fixed += 1
