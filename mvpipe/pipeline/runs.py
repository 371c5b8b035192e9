"""Starting runs for users: `run_project` and `regenerate_scene`.

A run is won by one conditional write. Its liveness mark is set *before* that write: reconcile
takes over any active run without liveness, so a mark set after the win would leave a moment in
which a brand-new run looks stale. (A mark for a run that then loses just expires.)

A run won but never sent (the broker refused its message, or the user interrupted its publish)
is released at once: left active, a user's retry would join it and nothing would run until its
mark lapsed and reconcile took it over (`MVPIPE_RUN_STALE_SECONDS`), and a regeneration would
be refused as a `Conflict`. A message published after all finds its run released: its planning
ends there (`plan_run` plans only the active run).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from mvpipe.deps import Context
from mvpipe.errors import Conflict, InvalidInput, MvpipeError, Timeout
from mvpipe.models import ProjectStatus, ProjectView, SceneStatus
from mvpipe.pipeline.finalize import settle_until_stable
from mvpipe.pipeline.stages import GENERATE, next_stage, submission_held
from mvpipe.pipeline.steps import Dispatcher
from mvpipe.providers.classify import describe
from mvpipe.store.claim_outcomes import Claim
from mvpipe.store.records import SceneRecord

log = logging.getLogger("mvpipe.runs")

#: Scene states a user's run may give spent attempts back in.
OPEN = (SceneStatus.PENDING, SceneStatus.PROCESSING)


@dataclass(frozen=True)
class RunStart:
    """What `start_run` did: joined or started `run_id`, or only sent a re-finalize."""

    run_id: str | None
    #: what the dispatcher returned for the message sent, when one was
    receipt: Any = None


def start_run(ctx: Context, dispatcher: Dispatcher, project_id: str) -> RunStart:
    """Start the project's run, or join the active one (starting nothing).

    A completed project (every scene and its final video) is only re-finalized; one whose
    scenes are all completed without a final video gets a run that assembles it. `failed`
    scenes go back to `pending`: a user asking for a run is the one thing that may pay for
    them again.
    """
    state = ctx.projects.load(project_id)
    counters = state.counters
    final = state.project.final_video_key
    if final is not None and not ctx.clips.exists(final):
        # Its object vanished: forget it, so this run assembles the final video again.
        ctx.projects.forget_final_video(project_id, final)
        final = None
    if (
        state.project.planned
        and final is not None
        and counters.scene_count
        and counters.completed_scenes == counters.scene_count
    ):
        return RunStart(None, dispatcher.finalize(project_id, None, None))
    run_id = str(uuid.uuid4())
    status = ProjectStatus.PROCESSING if state.project.planned else ProjectStatus.GENERATING_SCENES
    ctx.board.touch_run(run_id, ctx.settings.run_stale_seconds)
    active = ctx.projects.win_run(project_id, run_id, status)
    if active != run_id:
        return RunStart(active)
    with released_unless_sent(ctx, project_id, run_id):
        give_scenes_back(ctx, project_id, state.scenes)
        receipt = dispatcher.start_run(project_id, run_id)
    return RunStart(run_id, receipt)


def give_scenes_back(ctx: Context, project_id: str, scenes: Iterable[SceneRecord]) -> None:
    """A user's run: `failed` scenes go back to the stage they failed in, and attempts spent
    by cancelled runs come back."""
    limit = ctx.settings.max_attempts
    for scene in scenes:
        stage = next_stage(scene) or GENERATE
        if scene.status == SceneStatus.FAILED:
            # Only the stage it failed in starts over: a failed lip-sync pays for the lip-sync.
            # A job whose polls were refused to us may be paid: its operation is polled again.
            ctx.scenes.retry_failed(
                project_id,
                scene.sequence,
                stage=stage.fields,
                keep_operation=scene.operation_kept,
            )
        elif scene.status in OPEN and stage.paid and scene.value(stage.fields.attempts) >= limit:
            # A user's run: attempts spent by cancelled runs come back, or the scene would
            # fail without any submission (also a scene such a run left `processing` with an
            # expired lease; the store's condition leaves a live lease or an operation alone).
            ctx.scenes.restore_attempts(
                project_id, scene.sequence, max_attempts=limit, stage=stage.fields
            )


def regenerate(ctx: Context, dispatcher: Dispatcher, project_id: str, sequence: int) -> RunStart:
    """Clear one scene's outputs and the project's final video (one transaction), then run that
    scene alone (one new paid generation, and one new lip-sync for a scene marked `lipSync`) and
    assemble a new final video."""
    state = ctx.projects.load(project_id)
    if not state.project.planned:
        raise Conflict(f"project {project_id} is not planned yet; run it first")
    scene = state.scene(sequence)
    if scene is None:
        raise InvalidInput(f"project {project_id} has no scene {sequence}")
    in_flight = Conflict(
        f"scene {sequence} of project {project_id} is being submitted to its provider, or a"
        " paid job's record is still owed (a submission is in flight); try again shortly"
    )
    # Past its lease, a claim whose record is still owed (a cancelled run's redo, its mark
    # alive) holds the scene as a live lease does, which the store's condition alone sees.
    idle = state.project.active_run_id is None  # else the store refuses: a run is active
    if idle and submission_held(ctx, scene, time.time()):
        raise in_flight
    run_id = str(uuid.uuid4())
    ctx.board.touch_run(run_id, ctx.settings.run_stale_seconds)
    reset = ctx.scenes.reset_for_regeneration(project_id, sequence, run_id=run_id)
    if reset == Claim.NOT_CLAIMABLE:
        raise in_flight
    if reset != Claim.WON:
        raise Conflict(f"project {project_id} has an active run; cancel it or wait for it")
    with released_unless_sent(ctx, project_id, run_id):
        receipt = dispatcher.start_run(project_id, run_id, [sequence])
    return RunStart(run_id, receipt)


@contextmanager
def released_unless_sent(ctx: Context, project_id: str, run_id: str) -> Iterator[None]:
    """Around the work between winning `run_id` and sending its message: whatever stops it
    (a `BrokerUnavailable`, a store outage, the user's Ctrl-C) releases the run before it goes
    on up. Released as a finalize that gave up releases a run (only while `run_id` is the
    active run; its scenes, their outputs and jobs kept; the status recounted) and not as a
    cancel: a cancel's mark would have a job the message's work might still submit cancelled
    at its provider, where a released run's is kept for the next run."""
    try:
        yield
    except BaseException as exc:
        _release_unsent(ctx, project_id, run_id, why=type(exc).__name__)
        raise


def _release_unsent(ctx: Context, project_id: str, run_id: str, *, why: str) -> None:
    """`released_unless_sent`'s release, and its mark's; a store that fails it leaves the run to
    reconcile's takeover once its mark lapses (as before), a broker its mark to lapse."""
    reason = f"the run was not started ({why}); run it again"
    try:
        settle_until_stable(ctx, project_id, release_run=run_id, gave_up=reason)
    except MvpipeError as exc:
        log.warning(
            "could not release run %s of project %s, never sent: %s", run_id, project_id, exc
        )
        return
    with suppress(MvpipeError):  # else it lapses: nothing reads a released run's mark
        ctx.board.drop_run(run_id)


def resume_freed(
    ctx: Context, dispatcher: Dispatcher, project_id: str, sequence: int, provider: str
) -> str | None:
    """A cancelled run's owed record landed, its job stopped and its scene set back to
    `pending` (`Step.freed`): the run the user started meanwhile found the scene held by that
    record (`submission_held`) and stopped at it, so it resumes the scene now rather than at
    its takeover. Only the active run whose scope holds the scene; best effort (the takeover
    still finishes a scene left so). The run resumed, or None."""
    try:
        project = ctx.projects.get(project_id)
        run = project.active_run_id
        if run is None or (project.run_scope and sequence not in project.run_scope):
            return None
        dispatcher.resume(project_id, sequence, run, provider)
        return run
    except Exception as exc:
        log.warning("scene %s/%s not resumed in the active run: %s", project_id, sequence,
                    describe(exc))  # fmt: skip
        return None


def wait_until_idle(ctx: Context, project_id: str, timeout: float, interval: float) -> ProjectView:
    """The project's view once no run is active (completed, failed, or pending after a
    cancel); `Timeout` after `timeout` seconds.

    Waiting reads the project item alone (one GetItem, whatever the scene count); the scenes
    are read once, at the end."""
    deadline = time.monotonic() + timeout
    while True:
        if ctx.projects.get(project_id).active_run_id is None:
            return ctx.projects.load(project_id).view()
        if time.monotonic() >= deadline:
            raise Timeout(f"project {project_id} still running after {timeout:.0f}s")
        time.sleep(interval)
