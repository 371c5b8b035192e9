"""A reconcile pass's repairs of one project's scenes: a lost output reset, a scene between
stages resumed, a dead submitter's lease freed, an operation nobody polls adopted, and the
scene's garbage collected. Each repair is one conditional write on the state it saw."""

from __future__ import annotations

from dataclasses import dataclass

from mvpipe.deps import Context
from mvpipe.pipeline.grace import grace_cutoff
from mvpipe.pipeline.reconcile_report import ReconcileReport
from mvpipe.pipeline.stages import STAGES, Stage, lost_output
from mvpipe.pipeline.steps import Dispatcher
from mvpipe.states import lease_expired
from mvpipe.store.clips import StoredObject, scene_prefix
from mvpipe.store.records import SceneRecord


@dataclass
class ProjectPass:
    """One project's pass: what each repair of its scenes reads and reports to."""

    ctx: Context
    dispatcher: Dispatcher
    report: ReconcileReport
    provider: str
    #: the project's stored objects by key (garbage collection removes what it deletes)
    objects: dict[str, StoredObject]
    now: float


def reset_lost_output(p: ProjectPass, scene: SceneRecord) -> bool:
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


def _made_alike(p: ProjectPass, scene: SceneRecord, stage: Stage, key: str | None) -> bool:
    """Whether a lost output is a free, deterministic stage's (the cut, of the original it
    keeps) while every later output made from it still holds: then those are kept, and not
    paid for again. It is made again in the current format, so after an output format change
    at another key: a later output left in the old format (a lip-synced clip) is cut again at
    assembly (`pipeline.assemble`), as it is when present. A later output recorded but vanished
    too takes them all with it."""
    if key is None or stage.remade_key is None:
        return False
    later = [s.output(scene) for s in stage.later if s.needed(scene)]
    return all(k is None or k in p.objects for k in later)


def resume_stage(p: ProjectPass, scene: SceneRecord, run: str | None) -> None:
    """A `processing` scene between stages (its original recorded, its cut missing) that no
    chain works on: start one chain (never a second) that runs its missing stages. The chain
    that stopped may have been lost with its whole worker, in the cut (nothing delivers its
    message again): the new chain's cut is counted as a redelivery's (`LostTries`), or a cut
    that kills its worker each try would be resumed forever, its run kept alive."""
    liveness = p.ctx.settings.liveness_seconds(p.provider)
    if p.ctx.board.claim_poll_chain(scene.project_id, scene.sequence, liveness):
        _keep_run(p, run)
        p.dispatcher.resume(scene.project_id, scene.sequence, run, p.provider, after_loss=True)
        p.report.resumed_stages += 1


def _keep_run(p: ProjectPass, run: str | None) -> None:
    """A chain resumed for `run` is the run's work again: its mark is renewed before the chain is
    sent, so this pass (or the next, before the chain's first step touches it) does not take
    the run over for the very work just resumed. A worker drops the countdown messages it holds
    when its broker connection drops (Celery's consumer), so after a Redis restart every poll
    may come back this way; the run then finalizes on its own once its scenes are final."""
    if run is not None:
        p.ctx.board.touch_run(run, p.ctx.settings.run_stale_seconds)


def resume_paid_stage(p: ProjectPass, scene: SceneRecord, stage: Stage, run: str | None) -> bool:
    """A `processing` scene between stages whose next stage is paid (its cut made, its
    lip-sync not submitted): only a live run with the scene in its scope may pay for it, so only
    then is it resumed; otherwise (a cancelled run, a regeneration of another scene, a stale
    run about to be taken over) it goes back to `pending` for a user's run."""
    if run is not None and p.ctx.board.run_alive(run):
        resume_stage(p, scene, run)
        return False
    if p.ctx.scenes.reset_waiting(scene.project_id, scene.sequence, stage=stage.fields):
        p.report.waiting_scenes_reset += 1
        return True
    return False


def repair_lease(p: ProjectPass, scene: SceneRecord, stage: Stage, run: str | None) -> bool:
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


def _expire_lease(p: ProjectPass, scene: SceneRecord, stage: Stage) -> bool:
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


def adopt_operation(p: ProjectPass, scene: SceneRecord, stage: Stage, run: str | None) -> bool:
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
        _keep_run(p, run)
        p.dispatcher.resume(
            scene.project_id, scene.sequence, run, p.provider, operation_id, stage=stage.name
        )
        report.orphaned_polls += 1
    return False


def collect_garbage(p: ProjectPass, scene: SceneRecord) -> None:
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
