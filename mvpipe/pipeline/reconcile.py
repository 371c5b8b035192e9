"""Reconcile: find what a crash left behind and repair it with conditional writes.

Safe beside running workers and beside another reconcile: every repair is conditioned on the
state it saw, and a poll chain for an orphaned operation is started at most once (an NX key).
Run twice in a row, the second report's `total` is 0.

This module runs the passes (beat's turns, or every project at once) and examines each project;
what the repairs are lives in `reconcile_scenes` (a project's scenes), `reconcile_runs` (its
run) and `reconcile_strays` (what no project holds), and they count into `reconcile_report`.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable

from mvpipe.deps import Context
from mvpipe.models import SceneStatus
from mvpipe.pipeline.grace import warn_short_grace
from mvpipe.pipeline.reconcile_report import ReconcileReport
from mvpipe.pipeline.reconcile_runs import settle
from mvpipe.pipeline.reconcile_scenes import (
    ProjectPass,
    adopt_operation,
    collect_garbage,
    repair_lease,
    reset_lost_output,
    resume_paid_stage,
    resume_stage,
)
from mvpipe.pipeline.reconcile_scope import (
    CURSOR_JOB,
    FULL_SWEEP_JOB,
    SONG_CURSOR_JOB,
    STRAY_SWEEP_JOB,
    SWEEP_CURSOR_JOB,
    SWEEP_PAGE,
    Drained,
    in_turn,
    projects_to_examine,
    round_rest,
    scopes,
    song_round,
    stray_round,
    sweep_round,
    this_turn,
)
from mvpipe.pipeline.reconcile_strays import (
    SweepProgress,
    count_songs,
    stray_turn,
    sweep_strays_at_once,
)
from mvpipe.pipeline.song_sweep import song_turn
from mvpipe.pipeline.stages import next_stage
from mvpipe.pipeline.steps import Dispatcher
from mvpipe.providers.classify import describe
from mvpipe.store.clips import PROJECTS_PREFIX

log = logging.getLogger("mvpipe.reconcile")

#: Told (projects examined, projects listed) after each project of an inline pass: what a long
#: pass over every project shows while it runs (`mvpipe reconcile`'s progress).
Progress = Callable[[int, int], None]


def reconcile(
    ctx: Context,
    dispatcher: Dispatcher,
    *,
    project_ids: list[str] | None = None,
    sweep_strays: bool | None = None,
    full_sweep: bool | None = None,
    budget_seconds: float | None = None,
    progress: Progress | None = None,
    swept: SweepProgress | None = None,
) -> ReconcileReport:
    """Repair the projects that can need it (or the given ones): see `reconcile_scope`. The
    full sweep of finished projects runs at most once per `MVPIPE_FULL_SWEEP_SECONDS` and the
    stray sweeps (a table scan for scene items, a LIST of the project folders for songs, both
    of creates whose METADATA never landed) once per `MVPIPE_STRAY_SWEEP_SECONDS`, unless
    forced (`sweep_strays`).

    With `budget_seconds` (beat's passes), a pass takes the projects in turns: from where the
    last pass stopped, until the budget is spent (at least one project), so its cost is
    bounded however many are active; the rest wait for the next pass. The full sweep and the
    stray sweeps are then rounds over passes, each read a page at a time from its own cursor
    (`_beat_pass`). Without it (inline calls) every project the pass lists is examined, and
    the full sweep and the stray sweeps are done all at once, each project examined told to
    `progress` and the stray sweeps' progress to `swept` (beat's passes tell no one)."""
    started = time.monotonic()
    report = ReconcileReport()
    warn_short_grace(ctx.settings)
    if project_ids is None and budget_seconds is not None:
        passed = _beat_pass(
            ctx, dispatcher, report, started, budget_seconds, full_sweep, sweep_strays
        )
    else:
        if sweep_strays is None:
            sweep_strays = ctx.board.due(STRAY_SWEEP_JOB, ctx.settings.stray_sweep_seconds)
        if sweep_strays:
            sweep_strays_at_once(ctx, report, swept)
        if project_ids is None:
            if full_sweep is None:
                full_sweep = ctx.board.due(FULL_SWEEP_JOB, ctx.settings.full_sweep_seconds)
            project_ids = projects_to_examine(ctx, full_sweep=full_sweep, now=time.time())
        listed = list(dict.fromkeys(project_ids))
        told = None if progress is None else functools.partial(_told, progress, len(listed))
        if told is not None:
            told(0)  # the number listed is shown at once, also when there are none
        examined = _examine(ctx, dispatcher, report, ((p, p) for p in listed), None, told)
        passed = f"examined {examined} of {len(listed)} projects"
        passed += f" in {time.monotonic() - started:.3f} s (full sweep: {bool(full_sweep)})"
    if report.total:
        log.info("reconcile repaired %s", report.model_dump())
    log.info("reconcile pass %s", passed)
    return report


def _beat_pass(
    ctx: Context,
    dispatcher: Dispatcher,
    report: ReconcileReport,
    started: float,
    budget: float,
    full_sweep: bool | None,
    sweep_strays: bool | None,
) -> str:
    """One beat pass within `budget` seconds: the active projects in turns, then, while a
    round of the full sweep is on, the round's next projects, then, while a round of the
    stray-item scan or of the stray-song sweep is on, its next pages. Each turn stops starting
    at its deadline but always takes one (so each moves on): the active turn's is the budget
    less the round's share (`MVPIPE_FULL_SWEEP_SHARE`), the others' the budget. So a pass ends
    at most one examination and one page of each stray sweep past its budget (one more
    examination only when the active turn's last alone outlasts the round's share); a round
    of S projects (those created by its start: the later ones wait for the next round) ends
    within S passes, and the round reads from the status index the finished projects it
    examines and at most a page more.
    `full_sweep` / `sweep_strays` None start a round when one is due, True start one now,
    False leave the round for the next pass. Returns what the pass did, for its log line."""
    sweep = sweep_round(ctx, full_sweep)
    sweeping = sweep is not None
    regular, idle = scopes(ctx, now=time.time())

    def spent() -> float:
        return time.monotonic() - started

    active = in_turn(regular, ctx.board.cursor(CURSOR_JOB))
    active_budget = budget * (1 - ctx.settings.full_sweep_share) if sweeping else budget
    turn = this_turn(active, spent, active_budget)
    examined = _examine(ctx, dispatcher, report, ((p, p) for p in turn), CURSOR_JOB)
    rounds = -(-len(active) // max(examined, 1))  # nothing listed: nothing examined
    turns = f"in turns: all within {rounds} passes"
    taken = 0
    if sweep is not None:
        walk = functools.partial(ctx.projects.walk_status, page=SWEEP_PAGE)
        rest = Drained(round_rest(idle, walk, sweep))
        places = this_turn(rest, spent, budget)
        marks = ((p.project_id, sweep._replace(after=p).encode()) for p in places)
        taken = _examine(ctx, dispatcher, report, marks, SWEEP_CURSOR_JOB)
        if rest.done:
            ctx.board.drop_cursor(SWEEP_CURSOR_JOB)
        turns += f"; the sweep's round: examined {taken}, over: {rest.done}"
    strays = stray_round(ctx, sweep_strays)
    if strays is not None:
        pages, over = stray_turn(ctx, report, strays, spent, budget)
        turns += f"; the stray scan: {pages} pages, over: {over}"
    songs = song_round(ctx, sweep_strays)
    if songs is not None:
        done = song_turn(
            ctx=ctx, after=songs.after, cursor=SONG_CURSOR_JOB, spent=spent, budget=budget
        )
        count_songs(report, done)
        turns += f"; the song sweep: {done.pages} pages, over: {done.over}"
    # "of N": the active projects listed, and the round's projects this pass read to examine
    return (
        f"examined {examined + taken} of {len(active) + taken} projects in {spent():.3f} s"
        f" (full sweep: {sweeping}; {turns})"
    )


def _examine(
    ctx: Context,
    dispatcher: Dispatcher,
    report: ReconcileReport,
    projects: Iterable[tuple[str, str]],
    cursor: str | None,
    told: Callable[[int], None] | None = None,
) -> int:
    """Reconcile each project of `projects` ((id, its place for `cursor`) pairs; one failing
    does not stop the others), moving `cursor` to its place before it is examined: a pass that
    dies on one (a worker killed, out of memory) must not make every later pass start with it
    again. `told` hears the count after each. Returns how many were examined."""
    examined = 0
    for project_id, place in projects:
        examined += 1
        if cursor is not None:
            ctx.board.move_cursor(cursor, place)
        try:
            _reconcile_project(ctx, dispatcher, project_id, report)
        except Exception as exc:
            log.error(
                "reconcile of project %s failed; continuing with the others: %s",
                project_id,
                describe(exc),
            )
        if told is not None:
            told(examined)
    return examined


def _told(progress: Progress, listed: int, examined: int) -> None:
    progress(examined, listed)


def _reconcile_project(
    ctx: Context, dispatcher: Dispatcher, project_id: str, report: ReconcileReport
) -> None:
    state = ctx.projects.load(project_id)
    project = state.project
    run = project.active_run_id
    objects = {o.key: o for o in ctx.clips.list(f"{PROJECTS_PREFIX}{project_id}/")}
    p = ProjectPass(ctx, dispatcher, report, project.provider, objects, time.time())
    repaired = False

    for scene in state.scenes:
        stage = next_stage(scene)
        # A run pays only for the scenes in its scope (a regeneration: its own scene); work
        # resumed outside it runs without the run, so it finishes free stages only (a paid
        # job's poll needs no run: the job is polled, recorded and cut, and nothing is paid).
        in_scope = not project.run_scope or scene.sequence in project.run_scope
        scoped_run = run if in_scope else None
        if scene.status == SceneStatus.COMPLETED:
            repaired |= reset_lost_output(p, scene)
        elif scene.status == SceneStatus.PROCESSING and stage is not None:
            if not stage.paid:
                resume_stage(p, scene, scoped_run)
            elif stage.operation(scene) is None and scene.lease_token is None:
                repaired |= resume_paid_stage(p, scene, stage, scoped_run)
            elif stage.operation(scene) is None:
                repaired |= repair_lease(p, scene, stage, scoped_run)
            else:
                repaired |= adopt_operation(p, scene, stage, scoped_run)
        collect_garbage(p, scene)

    final = project.final_video_key
    gone = final is not None and run is None and final not in objects
    if gone and ctx.projects.forget_final_video(project_id, final or ""):
        report.missing_final_videos += 1
        repaired = True
    # A scene changed after the final video was recorded (a vanished clip reset in the instant
    # between the assembly's last check and its write): that video is not the scenes' any more.
    outdated = not gone and any(s.status != SceneStatus.COMPLETED for s in state.scenes)
    if outdated and final is not None and run is None:
        forgotten = ctx.projects.forget_final_video(project_id, final)
        report.outdated_final_videos += int(forgotten)
        repaired |= forgotten

    if repaired:
        state = ctx.projects.load(project_id)
    settle(ctx, dispatcher, state, report)
