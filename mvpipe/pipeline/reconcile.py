"""Reconcile: find what a crash left behind and repair it with conditional writes.

Safe beside running workers and beside another reconcile: every repair is conditioned on the
state it saw, and a poll chain for an orphaned operation is started at most once (an NX key).
Run twice in a row, the second report's `total` is 0.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pydantic import BaseModel, computed_field

from mvpipe.deps import Context
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.pipeline.finalize import ended_by_give_ups, settle_project
from mvpipe.pipeline.grace import grace_cutoff, warn_short_grace
from mvpipe.pipeline.reconcile_scope import (
    CURSOR_JOB,
    FULL_SWEEP_JOB,
    SONG_CURSOR_JOB,
    STRAY_CURSOR_JOB,
    STRAY_PAGE,
    STRAY_SWEEP_JOB,
    SWEEP_CURSOR_JOB,
    SWEEP_PAGE,
    Drained,
    StrayRound,
    encode_key,
    in_turn,
    paged_turn,
    projects_to_examine,
    round_rest,
    scopes,
    song_round,
    stray_round,
    sweep_round,
    this_turn,
)
from mvpipe.pipeline.song_sweep import SongTurn, song_turn
from mvpipe.pipeline.stages import STAGES, Stage, lost_output, next_stage
from mvpipe.pipeline.steps import Dispatcher
from mvpipe.providers.classify import describe
from mvpipe.states import FINAL_SCENE_STATES, assembly_due, lease_expired
from mvpipe.store.clips import PROJECTS_PREFIX, StoredObject, scene_prefix
from mvpipe.store.records import ProjectState, SceneRecord

log = logging.getLogger("mvpipe.reconcile")
#: What a report counts that is no repair (`total` leaves it out: a second pass reports 0).
_NOT_REPAIRS = frozenset({"stray_songs_skipped"})

#: Told (projects examined, projects listed) after each project of an inline pass: what a long
#: pass over every project shows while it runs (`mvpipe reconcile`'s progress).
Progress = Callable[[int, int], None]
#: Told the project folders an inline pass's stray sweeps have covered so far, after each page
#: (their number is not known before the end): what `mvpipe reconcile --sweep` shows.
SweepProgress = Callable[[int], None]


class ReconcileReport(BaseModel):
    expired_leases: int = 0
    exhausted_scenes: int = 0
    orphaned_polls: int = 0
    #: scenes between stages (a cut missing) that no chain worked on, resumed
    resumed_stages: int = 0
    #: scenes between stages waiting for a paid stage no live run may pay for, back to pending
    waiting_scenes_reset: int = 0
    recovered_clips: int = 0
    missing_clips: int = 0
    missing_final_videos: int = 0
    outdated_final_videos: int = 0
    counters_fixed: int = 0
    costs_recounted: int = 0
    runs_finalized: int = 0
    runs_taken_over: int = 0
    garbage_deleted: int = 0
    stray_scenes_deleted: int = 0
    #: songs of creates whose METADATA never landed (past the grace period)
    stray_songs_deleted: int = 0
    #: songs like those that are not tagged with this table (another deployment's on a shared
    #: bucket, or untagged): kept
    stray_songs_skipped: int = 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        """The repairs made."""
        return sum(
            v for k, v in self.__dict__.items() if isinstance(v, int) and k not in _NOT_REPAIRS
        )


@dataclass
class _Pass:
    """One project's pass: what each repair of its scenes reads and reports to."""

    ctx: Context
    dispatcher: Dispatcher
    report: ReconcileReport
    provider: str
    #: the project's stored objects by key (garbage collection removes what it deletes)
    objects: dict[str, StoredObject]
    now: float


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
            _sweep_strays(ctx, report, swept)
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
        pages, over = _stray_turn(ctx, report, strays, spent, budget)
        turns += f"; the stray scan: {pages} pages, over: {over}"
    songs = song_round(ctx, sweep_strays)
    if songs is not None:
        done = song_turn(
            ctx=ctx, after=songs.after, cursor=SONG_CURSOR_JOB, spent=spent, budget=budget
        )
        _count_songs(report, done)
        turns += f"; the song sweep: {done.pages} pages, over: {done.over}"
    # "of N": the active projects listed, and the round's projects this pass read to examine
    return (
        f"examined {examined + taken} of {len(active) + taken} projects in {spent():.3f} s"
        f" (full sweep: {sweeping}; {turns})"
    )


def _stray_turn(
    ctx: Context,
    report: ReconcileReport,
    cursor: StrayRound,
    spent: Callable[[], float],
    budget: float,
) -> tuple[int, bool]:
    """The stray-item scan's pages of this pass, from `cursor` (see `paged_turn`)."""
    cutoff = _stray_cutoff(ctx)

    def page(start: tuple[str, str] | None) -> tuple[str, str] | None:
        strays, following = ctx.table.stray_page(cutoff, STRAY_PAGE, start)
        _delete_strays(ctx, report, strays)
        return following

    return paged_turn(
        ctx=ctx,
        cursor=STRAY_CURSOR_JOB,
        start=cursor.after,
        page=page,
        encode=encode_key,
        spent=spent,
        budget=budget,
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
    p = _Pass(ctx, dispatcher, report, project.provider, objects, time.time())
    repaired = False

    for scene in state.scenes:
        stage = next_stage(scene)
        # A run pays only for the scenes in its scope (a regeneration: its own scene); work
        # resumed outside it runs without the run, so it finishes free stages only (a paid
        # job's poll needs no run: the job is polled, recorded and cut, and nothing is paid).
        in_scope = not project.run_scope or scene.sequence in project.run_scope
        scoped_run = run if in_scope else None
        if scene.status == SceneStatus.COMPLETED:
            repaired |= _reset_lost_output(p, scene)
        elif scene.status == SceneStatus.PROCESSING and stage is not None:
            if not stage.paid:
                _resume_stage(p, scene, scoped_run)
            elif stage.operation(scene) is None and scene.lease_token is None:
                repaired |= _resume_paid_stage(p, scene, stage, scoped_run)
            elif stage.operation(scene) is None:
                repaired |= _repair_lease(p, scene, stage, scoped_run)
            else:
                repaired |= _adopt_operation(p, scene, stage, scoped_run)
        _collect_garbage(p, scene)

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
    _settle(ctx, dispatcher, state, report)


def _stray_cutoff(ctx: Context) -> str:
    """The grace period's cutoff as scene items' `createdAt` (ISO time) compares."""
    return grace_cutoff(ctx.settings, time.time()).isoformat(timespec="microseconds")


def _sweep_strays(ctx: Context, report: ReconcileReport, swept: SweepProgress | None) -> None:
    """The whole stray-item scan and stray-song sweep at once (inline calls)."""
    _delete_strays(ctx, report, ctx.table.stray_scene_keys(_stray_cutoff(ctx)))
    done = song_turn(ctx=ctx, after=None, cursor=None, spent=lambda: 0.0, budget=None, told=swept)
    _count_songs(report, done)


def _count_songs(report: ReconcileReport, done: SongTurn) -> None:
    report.stray_songs_deleted += done.deleted
    report.stray_songs_skipped += done.skipped


def _delete_strays(ctx: Context, report: ReconcileReport, strays: list[tuple[str, str]]) -> None:
    if strays:
        ctx.table.batch_delete(strays)
        report.stray_scenes_deleted += len(strays)


def _reset_lost_output(p: _Pass, scene: SceneRecord) -> bool:
    """`completed` while an output it needs is not recorded or its object vanished: clear that
    output and the later ones and go back to `pending`, so a run makes just those again."""
    lost = lost_output(scene, p.objects)
    if lost is None:
        return False
    stage, key = lost
    alone = _made_alike(p, scene, stage, key)
    if p.ctx.scenes.reset_outputs(
        scene.project_id, scene.sequence, stage=stage.fields, key=key, alone=alone
    ):
        p.report.missing_clips += 1
        return True
    return False


def _made_alike(p: _Pass, scene: SceneRecord, stage: Stage, key: str | None) -> bool:
    """Whether a lost output would be made again at its own key (a deterministic stage, the
    cut) while every later output made from that key still holds: then those are kept, and
    not paid for again. A later output recorded but vanished too takes them all with it."""
    remade = stage.remade_key
    if key is None or remade is None or remade(stage, scene, p.ctx.settings) != key:
        return False
    later = [s.output(scene) for s in stage.later if s.needed(scene)]
    return all(k is None or k in p.objects for k in later)


def _resume_stage(p: _Pass, scene: SceneRecord, run: str | None) -> None:
    """A `processing` scene between stages (its original recorded, its cut missing) that no
    chain works on: start one chain (never a second) that runs its missing stages."""
    liveness = p.ctx.settings.liveness_seconds(p.provider)
    if p.ctx.board.claim_poll_chain(scene.project_id, scene.sequence, liveness):
        p.dispatcher.resume(scene.project_id, scene.sequence, run, p.provider)
        p.report.resumed_stages += 1


def _resume_paid_stage(p: _Pass, scene: SceneRecord, stage: Stage, run: str | None) -> bool:
    """A `processing` scene between stages whose next stage is paid (its cut made, its
    lip-sync not submitted): only a live run with the scene in its scope may pay for it, so only
    then is it resumed; otherwise (a cancelled run, a regeneration of another scene, a stale
    run about to be taken over) it goes back to `pending` for a user's run."""
    if run is not None and p.ctx.board.run_alive(run):
        _resume_stage(p, scene, run)
        return False
    if p.ctx.scenes.reset_waiting(scene.project_id, scene.sequence, stage=stage.fields):
        p.report.waiting_scenes_reset += 1
        return True
    return False


def _repair_lease(p: _Pass, scene: SceneRecord, stage: Stage, run: str | None) -> bool:
    """A submitter died holding its lease: free the scene, and if its run is still alive and the
    scene is in the run's scope (a regeneration pays for its own scene only), send the scene
    through the pipeline again. A scene still marked alive is not dead: its submitter may be
    redoing the record of a job the provider accepted during a store outage."""
    if not scene.lease_token or not lease_expired(scene.lease_expires_at, p.now):
        return False
    if p.ctx.board.scene_polled(scene.project_id, scene.sequence):
        return False
    if not _expire_lease(p, scene, stage):
        return False
    if run is not None and p.ctx.board.run_alive(run):
        p.dispatcher.resume(scene.project_id, scene.sequence, run, p.provider)
    return True


def _expire_lease(p: _Pass, scene: SceneRecord, stage: Stage) -> bool:
    ctx, report = p.ctx, p.report
    if scene.value(stage.fields.attempts) >= ctx.settings.max_attempts:
        if ctx.scenes.fail(
            scene.project_id,
            scene.sequence,
            error=scene.last_error or "submission lease expired and no attempts left",
            max_attempts=ctx.settings.max_attempts,
            stage=stage.fields,
        ):
            report.exhausted_scenes += 1
            return True
        return False
    if ctx.scenes.expire_lease(
        scene.project_id,
        scene.sequence,
        token=scene.lease_token or "",
        now=p.now,
        stage=stage.fields,
    ):
        report.expired_leases += 1
        return True
    return False


def _adopt_operation(p: _Pass, scene: SceneRecord, stage: Stage, run: str | None) -> bool:
    """An operation nobody polls: record its output if it is already stored (the scene goes
    on to its next stage), else poll it once."""
    ctx, report = p.ctx, p.report
    operation_id = stage.operation(scene) or ""
    if ctx.board.scene_polled(scene.project_id, scene.sequence):
        return False
    key = stage.operation_output(scene.project_id, scene.sequence, operation_id)
    if key in p.objects:
        if ctx.scenes.complete(
            scene.project_id,
            scene.sequence,
            operation_id=operation_id,
            clip_key=key,
            stage=stage.fields,
            last=stage.is_last(scene),
        ):
            report.recovered_clips += 1
            return True
        return False
    liveness = ctx.settings.liveness_seconds(p.provider)
    if ctx.board.claim_poll_chain(scene.project_id, scene.sequence, liveness):
        p.dispatcher.resume(
            scene.project_id, scene.sequence, run, p.provider, operation_id, stage=stage.name
        )
        report.orphaned_polls += 1
    return False


def _collect_garbage(p: _Pass, scene: SceneRecord) -> None:
    """Objects under a scene's prefix other than its recorded clips (and the ones its recorded
    operations and its cut are about to record, and the slot audio of a lip-sync to come),
    past the grace period."""
    prefix = scene_prefix(scene.project_id, scene.sequence)
    live = {stage.output(scene) for stage in STAGES}
    for stage in STAGES:
        operation_id = stage.operation(scene)
        if operation_id:
            live.add(stage.operation_output(scene.project_id, scene.sequence, operation_id))
        if stage.input_key is not None and stage.needed(scene) and stage.output(scene) is None:
            live.add(stage.input_key(scene))
        if stage.remade_key is not None:  # what a deterministic stage makes next (a cut)
            live.add(stage.remade_key(stage, scene, p.ctx.settings))
    cutoff = grace_cutoff(p.ctx.settings, p.now)
    for key, obj in list(p.objects.items()):
        if key.startswith(prefix) and key not in live and obj.last_modified <= cutoff:
            p.ctx.clips.delete(key)
            del p.objects[key]
            p.report.garbage_deleted += 1


def _submission_in_progress(state: ProjectState) -> bool:
    """A live lease means a submitter may be talking to the provider right now: taking the
    run over then would let its operation be dropped and the scene paid for again. Liveness in
    Redis can vanish (a Redis restart without persistence); the lease in the table cannot."""
    now = time.time()
    return any(
        s.status == SceneStatus.PROCESSING
        and (stage := next_stage(s)) is not None
        and stage.paid
        and stage.operation(s) is None
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
    # An assembling run's finalize is done; if the assembly died, the run goes stale (below).
    assembling = project.status == ProjectStatus.ASSEMBLING
    if run is not None and project.planned and not assembling and _finalize_owed(ctx, state, run):
        sequences = ctx.board.run_sequences(run)
        settlement = settle_project(ctx, state, release_run=run, sequences=sequences)
        if settlement:
            report.runs_finalized += 1
            if settlement.assemble:
                dispatcher.assemble(project.project_id, run)
        return
    if run is not None and not ctx.board.run_alive(run) and not _submission_in_progress(state):
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
            dispatcher.start_run(project.project_id, new_run, scope)
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
