"""Scene transitions: each one conditional write (or one transaction), idempotent for its caller.

The conditions *are* the concurrency design (DESIGN.md invariants 1-3 and 7). A scene's outputs
are filled in stage order; each paid stage (generation, lip-sync) owns an output, an operation id
and an attempt count (`StageFields`), and its transitions take those fields:
- a submission lease is won only on a scene with no output and no operation for that stage that
  is `pending`, or `processing` with no live lease, and only while the project's run is the
  caller's;
- the operation id is recorded only by the lease holder; from then on it owns the stage;
- a stage's output is written after its upload, conditioned on what it was made from (the
  operation id, or the input a free stage like the cut read); the write that records the last
  output a scene needs also sets `completed`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from mvpipe import hooks
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.states import lease_expired
from mvpipe.store import budget
from mvpipe.store.dynamo import CONDITION_FAILED, Table
from mvpipe.store.projects import final_video_cleared
from mvpipe.store.records import SceneRecord, clip_error, utc_now_iso
from mvpipe.store.table import METADATA, ItemBase, project_pk, scene_sk


@dataclass(frozen=True)
class StageFields:
    """The scene attributes one stage owns (model attribute names, also the `SceneRecord`
    names): its output key and, for a paid stage, its operation id and attempt count."""

    output: str
    operation: str | None = None
    attempts: str | None = None
    #: when its job was claimed (a paid stage's): how long the job has run
    started: str | None = None


#: generation: `originalVideoClipS3Key`, `providerOperationId`, `attempts`
ORIGINAL = StageFields("original_clip_key", "operation_id", "attempts", "generation_started_at")
#: the cut: `workingVideoClipS3Key` (free: no operation, no attempts)
WORKING = StageFields("working_clip_key")
#: lip-sync: `lipSyncedVideoClipS3Key`, `lipSyncOperationId`, `lipSyncAttempts`
LIP_SYNCED = StageFields(
    "lip_synced_clip_key", "lip_sync_operation_id", "lip_sync_attempts", "lip_sync_started_at"
)
#: Every output in the order the stages fill them: clearing one clears the later ones too.
OUTPUT_ORDER = (ORIGINAL, WORKING, LIP_SYNCED)


class Claim(StrEnum):
    WON = "won"  #: the caller holds the submission lease
    RUN_INACTIVE = "run_inactive"  #: the project's run is not the caller's any more
    NOT_CLAIMABLE = "not_claimable"  #: done, failed, owned by an operation or another lease
    EXHAUSTED = "exhausted"  #: no submissions left; the caller fails the scene
    OVER_BUDGET = "over_budget"  #: the job's price does not fit; the caller fails the scene


#: Claims that find the budget changed under them read it again, this many times at most.
_BUDGET_READS = 5


@dataclass(frozen=True)
class ClaimResult:
    outcome: Claim
    attempts: int = 0
    #: why an OVER_BUDGET claim did not fit (the scene's `lastError`)
    detail: str | None = None


class SceneStore:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.m = table.model
        self.budgets = budget.BudgetStore(table)

    def get(self, project_id: str, sequence: int) -> SceneRecord | None:
        item = self.table.get(project_pk(project_id), scene_sk(sequence))
        return None if item is None else SceneRecord.from_item(project_id, item)

    # -- submission lease ----------------------------------------------------------------------
    def claim(
        self,
        project_id: str,
        sequence: int,
        *,
        run_id: str,
        token: str,
        lease_seconds: float,
        max_attempts: int,
        now: float | None = None,
        stage: StageFields = ORIGINAL,
        requires: str | None = None,
        price_micros: int = 0,
    ) -> ClaimResult:
        """Win the submission lease of the paid `stage`, reserving `price_micros` of the
        project's budget in the same transaction (invariant 9); `requires` names an output the
        stage is made from (lip-sync: the working clip), which must be recorded. A retry of a
        claim that landed finds its own token and reserves nothing more (invariant 7)."""
        m = self.m
        now = time.time() if now is None else now
        pk = project_pk(project_id)
        output, operation, attempts = _paid(m, stage)
        claimable = (
            output.does_not_exist()
            & operation.does_not_exist()
            & _open(m, now)
            & (attempts.does_not_exist() | (attempts < max_attempts))
            # our own landed claim (its lease expired since) is found below, not taken again
            & (m.lease_token.does_not_exist() | (m.lease_token != token))
        )
        if requires is not None:
            claimable &= getattr(m, requires).exists()
        actions: list[Action] = [
            m.status.set(SceneStatus.PROCESSING),
            m.lease_token.set(token),
            m.lease_expires_at.set(now + lease_seconds),
            attempts.add(1),
            m.updated_at.set(utc_now_iso()),
        ]
        if stage.started is not None:
            actions.append(getattr(m, stage.started).set(utc_now_iso()))
        if price_micros:
            actions.append(m.cost_micros.add(price_micros))
        # The budget a claim conditions on: the one this process read last for the project
        # (every scene of a run claims against the same budget, so most claims read nothing);
        # a guess the transaction's condition checks, read again below when it fails.
        seen = self.budgets.last_read(project_id) if price_micros else None
        scene: SceneRecord | None = None
        for _ in range(_BUDGET_READS):
            if price_micros and seen is None:
                seen = self.budgets.read(project_id)

            def build(tx: TransactWrite, seen: budget.Budget | None = seen) -> None:
                if seen is None:
                    tx.condition_check(m, pk, METADATA, condition=m.active_run_id == run_id)
                else:
                    budget.reserve(
                        tx,
                        m,
                        project_id,
                        run_id=run_id,
                        price_micros=price_micros,
                        budget_micros=seen.budget_micros,
                    )
                tx.update(m(pk, scene_sk(sequence)), actions=actions, condition=claimable)

            hooks.reached("before_claim_write")
            reasons = self.table.transact(build)
            if reasons is None:
                return ClaimResult(Claim.WON)
            scene = self.get(project_id, sequence)
            if scene is not None and scene.lease_token == token:
                return ClaimResult(Claim.WON, scene.value(stage.attempts))
            if reasons[0] != CONDITION_FAILED:
                break
            if seen is None:
                return ClaimResult(Claim.RUN_INACTIVE)
            now_seen = self.budgets.read(project_id)
            if now_seen.active_run_id != run_id:
                return ClaimResult(Claim.RUN_INACTIVE)
            if scene is None or not _claimable(scene, stage, max_attempts, now, requires):
                break  # the scene is not ours to take, whatever the budget says
            if now_seen.budget_micros == seen.budget_micros and not now_seen.fits(price_micros):
                return ClaimResult(Claim.OVER_BUDGET, detail=now_seen.over_budget(price_micros))
            # the budget changed (or the committed sum fell) since we read it: price again
            seen = now_seen
        if scene is not None and _exhausted(scene, stage, max_attempts, now):
            return ClaimResult(Claim.EXHAUSTED, scene.value(stage.attempts))
        return ClaimResult(Claim.NOT_CLAIMABLE)

    def record_operation(
        self,
        project_id: str,
        sequence: int,
        *,
        token: str,
        operation_id: str,
        run_id: str | None,
        stage: StageFields = ORIGINAL,
    ) -> Claim:
        """Store the operation id under the caller's lease (and, given a run id, that run).

        This is the one write between the provider accepting a job and the job being safe from
        a second submission; keep nothing else in this window.
        """
        m = self.m
        pk, sk = project_pk(project_id), scene_sk(sequence)
        _, operation, _ = _paid(m, stage)
        owns = (
            (m.lease_token == token)
            & (m.status == SceneStatus.PROCESSING)
            & operation.does_not_exist()
        )
        actions: list[Action] = [operation.set(operation_id), m.updated_at.set(utc_now_iso())]
        if run_id is None:
            ok = self.table.update(pk, sk, actions, owns)
            run_inactive = False
        else:

            def build(tx: TransactWrite) -> None:
                tx.condition_check(m, pk, METADATA, condition=m.active_run_id == run_id)
                tx.update(m(pk, sk), actions=actions, condition=owns)

            reasons = self.table.transact(build)
            ok = reasons is None
            run_inactive = reasons is not None and reasons[0] == CONDITION_FAILED
        if ok:
            return Claim.WON
        scene = self.get(project_id, sequence)
        if scene is not None and scene.value(stage.operation) == operation_id:
            return Claim.WON
        return Claim.RUN_INACTIVE if run_inactive else Claim.NOT_CLAIMABLE

    def adopt_operation(
        self,
        project_id: str,
        sequence: int,
        *,
        operation_id: str,
        now: float | None = None,
        stage: StageFields = ORIGINAL,
        requires: str | None = None,
        made_from: str | None = None,
    ) -> bool:
        """An accepted job whose lease was lost (it expired during a store outage and was
        freed): store its id anyway while the stage is still open and nobody else's, so the
        paid job is polled instead of cancelled and paid for again. A stage made from an
        input (`requires`, lip-sync: the working clip) adopts only while that input is still
        `made_from`, the one the job was given: a job of a clip since remade (cancel,
        regenerate) is not the scene's (unknown `made_from`: the input must exist)."""
        m = self.m
        output, operation, _ = _paid(m, stage)
        now = time.time() if now is None else now
        condition = operation.does_not_exist() & output.does_not_exist() & _open(m, now)
        if requires is not None:
            source = getattr(m, requires)
            condition &= source.exists() if made_from is None else source == made_from
        return self._transition(
            project_id,
            sequence,
            [
                operation.set(operation_id),
                m.status.set(SceneStatus.PROCESSING),
                *self._no_lease(),
            ],
            condition,
            done=lambda s: s.value(stage.operation) == operation_id,
        )

    def release_lease(
        self,
        project_id: str,
        sequence: int,
        *,
        token: str,
        error: str,
        unused: bool = False,
        stage: StageFields = ORIGINAL,
        refund_micros: int = 0,
        unknown_micros: int = 0,
    ) -> bool:
        """Give a lease back after a transient submit error: the scene is `pending` again. An
        `unused` lease (nothing was submitted under it) gives its attempt back too;
        `refund_micros` gives back the claim's reservation (the provider accepted no job);
        `unknown_micros` of it is kept by a submit whose outcome is unknown."""
        m = self.m
        _, operation, attempts = _paid(m, stage)
        refund = [attempts.add(-1)] if unused else []
        return self._transition(
            project_id,
            sequence,
            [
                m.status.set(SceneStatus.PENDING),
                *self._no_lease(),
                m.last_error.set(clip_error(error)),
                *refund,
            ],
            (m.lease_token == token) & operation.does_not_exist(),
            done=lambda s: s.lease_token != token and s.value(stage.operation) is None,
            refund_micros=refund_micros,
            unknown_micros=unknown_micros,
        )

    # -- outcomes ------------------------------------------------------------------------------
    def complete(
        self,
        project_id: str,
        sequence: int,
        *,
        operation_id: str,
        clip_key: str,
        stage: StageFields = ORIGINAL,
        last: bool = False,
    ) -> SceneRecord | None:
        """Invariant 1: a paid stage's output, written after its upload, by its operation. The
        scene stays `processing` (no lease) while a later stage still needs doing; `last` (no
        later stage is needed) makes it `completed` in the same write. Returns the scene as
        written (the next stage starts from it, unread), None when the write did not hold."""
        m = self.m
        output, operation, _ = _paid(m, stage)
        return self._written(
            project_id,
            sequence,
            [
                output.set(clip_key),
                *self._finished_stage(last),
                *self._no_lease(),
                m.last_error.remove(),
            ],
            # once recorded, never again: a late duplicate poll of the same operation would
            # strip the next stage's live lease and let a second job of it be claimed
            (operation == operation_id)
            & output.does_not_exist()
            & (m.status == SceneStatus.PROCESSING),
            done=lambda s: s.value(stage.output) == clip_key,
        )

    def record_output(
        self,
        project_id: str,
        sequence: int,
        *,
        stage: StageFields,
        key: str,
        made_from: tuple[str, str],
        last: bool,
        kept: tuple[tuple[str, str], ...] = (),
    ) -> SceneRecord | None:
        """A free stage's output (the cut), written after its upload, conditioned on the input
        it was made from (`made_from`: the input's field and key) still being the scene's.
        Returns the scene as written, None when the write did not hold (see `complete`).
        `kept`: later outputs (field, key) the scene already holds (a cut made again under a
        lip-sync made from the same key), conditioned on still being its own when `last`."""
        m = self.m
        source, source_key = made_from
        output = getattr(m, stage.output)
        condition = (
            (getattr(m, source) == source_key)
            & output.does_not_exist()
            & m.status.is_in(SceneStatus.PENDING, SceneStatus.PROCESSING)
        )
        for field, kept_key in kept:
            condition &= getattr(m, field) == kept_key
        return self._written(
            project_id,
            sequence,
            [output.set(key), *self._finished_stage(last), m.last_error.remove()],
            condition,
            done=lambda s: s.value(stage.output) == key,
        )

    def fail(
        self,
        project_id: str,
        sequence: int,
        *,
        error: str,
        operation_id: str | None = None,
        token: str | None = None,
        max_attempts: int | None = None,
        made_from: tuple[str, str] | None = None,
        stage: StageFields = ORIGINAL,
        refund_micros: int = 0,
        unknown_micros: int = 0,
        keep_operation: bool = False,
    ) -> bool:
        """Mark a scene `failed`, as the owner of the stage's operation, of its lease, or (given
        `max_attempts`) because it has no submissions left; a free stage fails as the reader of
        its input (`made_from`: the input's field and key). With `token`, `refund_micros` gives
        back the lease's reservation (the provider surely accepted no job under it), or
        `unknown_micros` of it is noted as kept by a submit whose outcome is unknown.
        `keep_operation`: the job may be paid and was never seen to fail (its polls were
        refused): `retry_failed` keeps its operation, so the next run polls it."""
        m = self.m
        if made_from is not None:
            owner: Condition = getattr(m, made_from[0]) == made_from[1]
            return self._transition(
                project_id,
                sequence,
                [
                    m.status.set(SceneStatus.FAILED),
                    m.last_error.set(clip_error(error)),
                    *self._no_lease(),
                ],
                owner & getattr(m, stage.output).does_not_exist(),
                done=lambda s: s.status == SceneStatus.FAILED,
            )
        _, operation, _ = _paid(m, stage)
        if operation_id is not None:
            owner = operation == operation_id
        elif token is not None:
            owner = (m.lease_token == token) & operation.does_not_exist()
        elif max_attempts is not None:
            owner = _at_limit(m, stage, max_attempts, time.time())
        else:
            raise ValueError("fail() needs an owner: operation_id, token or max_attempts")
        kept = m.operation_kept.set(True) if keep_operation else m.operation_kept.remove()
        return self._transition(
            project_id,
            sequence,
            [
                m.status.set(SceneStatus.FAILED),
                m.last_error.set(clip_error(error)),
                kept,
                *self._no_lease(),
            ],
            owner & (m.status != SceneStatus.COMPLETED),
            done=lambda s: s.status == SceneStatus.FAILED,
            refund_micros=refund_micros if token is not None else 0,
            unknown_micros=unknown_micros if token is not None else 0,
        )

    def fail_open(
        self, project_id: str, sequence: int, *, error: str, stage: StageFields = ORIGINAL
    ) -> bool:
        """Fail a scene nobody holds (no live lease, no operation or output of `stage`): its
        next job cannot be paid for (over budget, or unpriced), or its chain gave up on an error
        no retry cures (a free stage too). A user's run tries again."""
        m = self.m
        unheld = getattr(m, stage.output).does_not_exist() & _open(m, time.time())
        if stage.operation is not None:
            unheld &= getattr(m, stage.operation).does_not_exist()
        return self._transition(
            project_id,
            sequence,
            [
                m.status.set(SceneStatus.FAILED),
                m.last_error.set(clip_error(error)),
                *self._no_lease(),
            ],
            unheld,
            done=lambda s: s.status == SceneStatus.FAILED,
        )

    def note_error(self, project_id: str, sequence: int, *, error: str) -> bool:
        """Say why a scene's chain gave up (`lastError`) without failing it: a stored operation
        (paid work) or a live lease still owns it, and polls or reconcile finish it."""
        m = self.m
        message = clip_error(error)
        return self._transition(
            project_id,
            sequence,
            [m.last_error.set(message)],
            (m.status == SceneStatus.PENDING) | (m.status == SceneStatus.PROCESSING),
            done=lambda s: s.last_error == message,
        )

    # -- resets --------------------------------------------------------------------------------
    def reset_cancelled(
        self,
        project_id: str,
        sequence: int,
        *,
        operation_id: str,
        stage: StageFields = ORIGINAL,
    ) -> bool:
        """After the provider cancelled the job: `pending` with no operation, ready to resume.
        A stage whose output is recorded keeps its operation (a finished job is not undone)."""
        m = self.m
        output, operation, _ = _paid(m, stage)
        return self._transition(
            project_id,
            sequence,
            [
                m.status.set(SceneStatus.PENDING),
                operation.remove(),
                *self._no_lease(),
            ],
            (operation == operation_id)
            & (m.status == SceneStatus.PROCESSING)
            & output.does_not_exist(),
            done=lambda s: s.value(stage.operation) != operation_id,
        )

    def reset_waiting(self, project_id: str, sequence: int, *, stage: StageFields) -> bool:
        """A scene left `processing` between stages, waiting for the paid `stage` with no run
        to pay it (cancelled, or outside a regeneration's scope): `pending` again, so it shows
        what it is and a user's run resumes it. Only while no lease and no operation of that
        stage exist: a submitter or a job owns the stage otherwise."""
        m = self.m
        output, operation, _ = _paid(m, stage)
        return self._transition(
            project_id,
            sequence,
            [m.status.set(SceneStatus.PENDING)],
            (m.status == SceneStatus.PROCESSING)
            & m.lease_token.does_not_exist()
            & operation.does_not_exist()
            & output.does_not_exist(),
            done=lambda s: s.status == SceneStatus.PENDING,
        )

    def refit_duration(
        self, project_id: str, sequence: int, *, old: int, new: int, now: float | None = None
    ) -> SceneRecord | None:
        """A scene stored at a clip length its provider does not make (written before lengths
        were fitted, or under other allowed lengths; `old` 0: stored with none) is made at
        `new`: only while it still holds `old` and its generation waits for a submitter (no
        operation, no clip, no live lease), so a job asked for or being asked for keeps the
        length (and price) it was asked at. The scene as it is now (None: gone)."""
        m = self.m
        output, operation, _ = _paid(m, ORIGINAL)
        now = time.time() if now is None else now
        stored = m.duration_seconds == old
        if not old:
            stored |= m.duration_seconds.does_not_exist()
        item = self.table.update_item(
            project_pk(project_id),
            scene_sk(sequence),
            [m.duration_seconds.set(new), m.updated_at.set(utc_now_iso())],
            stored
            & operation.does_not_exist()
            & output.does_not_exist()
            & _open(m, now)
            & m.pk.exists(),
        )
        if item is not None:
            return SceneRecord.from_item(project_id, item)
        return self.get(project_id, sequence)  # refitted, taken or made meanwhile, or gone

    def expire_lease(
        self,
        project_id: str,
        sequence: int,
        *,
        token: str,
        now: float,
        stage: StageFields = ORIGINAL,
    ) -> bool:
        """A submitter died holding its lease: the scene is `pending` again (reconcile)."""
        m = self.m
        _, operation, _ = _paid(m, stage)
        return self._transition(
            project_id,
            sequence,
            [
                m.status.set(SceneStatus.PENDING),
                *self._no_lease(),
                m.last_error.set("submission lease expired (worker lost)"),
            ],
            (m.lease_token == token) & operation.does_not_exist() & (m.lease_expires_at < now),
            done=lambda s: s.lease_token != token,
        )

    def reset_outputs(
        self,
        project_id: str,
        sequence: int,
        *,
        stage: StageFields,
        key: str | None,
        alone: bool = False,
    ) -> bool:
        """An output a finished scene needs is gone (its object vanished: `key`), or was never
        recorded (`key` None, on a `completed` scene): clear it and every later output, with
        their operations and attempts, and go back to `pending`, so a run makes exactly those
        again. Earlier outputs are kept: nothing already made is paid for twice. `alone`: the
        output is made again at the same key (a deterministic free stage, the cut), so the
        later outputs made from it still hold and only it is cleared."""
        m = self.m
        later = [stage] if alone else OUTPUT_ORDER[OUTPUT_ORDER.index(stage) :]
        clear: list[Action] = []
        for fields in later:
            clear.append(getattr(m, fields.output).remove())
            if fields.operation is not None and fields.attempts is not None:
                clear += [getattr(m, fields.operation).remove(), getattr(m, fields.attempts).set(0)]
        output = getattr(m, stage.output)
        if key is None:
            seen: Condition = output.does_not_exist() & (m.status == SceneStatus.COMPLETED)
            why = "an output was never recorded; scene reset"
        else:
            seen = output == key
            why = "clip object missing; scene reset"
        return self._transition(
            project_id,
            sequence,
            [
                m.status.set(SceneStatus.PENDING),
                *clear,
                *self._no_lease(),
                m.completed_at.remove(),
                m.last_error.set(why),
            ],
            seen,
            clear_final=True,  # invariant 8: the final video showed this output
            done=lambda s: (
                s.value(stage.output) != key
                if key is not None
                else s.status != SceneStatus.COMPLETED
            ),
        )

    def reset_missing_clip(self, project_id: str, sequence: int, *, clip_key: str) -> bool:
        """The original clip's object is gone: back to `pending` without any output."""
        return self.reset_outputs(project_id, sequence, stage=ORIGINAL, key=clip_key)

    def retry_failed(
        self,
        project_id: str,
        sequence: int,
        *,
        stage: StageFields = ORIGINAL,
        keep_operation: bool = False,
    ) -> bool:
        """A user asked for another run: a `failed` scene becomes `pending`, and the `stage` it
        failed in (its first missing output) gets fresh attempts and no operation. Earlier
        outputs and their operations are kept: a failed lip-sync pays only for the lip-sync.
        `keep_operation` (the scene read as `operation_kept`): the stage's operation, a job
        that may be paid, stays and owns the stage again (`processing`, as a job a cancel could
        not stop), so the run polls it before paying for another."""
        m = self.m
        status, fresh = SceneStatus.PENDING, list[Action]()
        kept = m.operation_kept.exists() if keep_operation else m.operation_kept.does_not_exist()
        if keep_operation:
            status, fresh = SceneStatus.PROCESSING, [m.operation_kept.remove()]
        elif stage.operation is not None:
            _, operation, attempts = _paid(m, stage)
            fresh = [operation.remove(), attempts.set(0)]
        return self._transition(
            project_id,
            sequence,
            [m.status.set(status), *fresh, *self._no_lease()],
            (m.status == SceneStatus.FAILED) & getattr(m, stage.output).does_not_exist() & kept,
            done=lambda s: s.status != SceneStatus.FAILED,
        )

    def restore_attempts(
        self, project_id: str, sequence: int, *, max_attempts: int, stage: StageFields = ORIGINAL
    ) -> bool:
        """A user started a run: an open scene with no submissions of its paid `stage` left
        (cancelled runs spent them) gets its attempts back, so the run submits it instead of
        failing it unpaid. True when the scene has attempts left afterwards."""
        m = self.m
        _, _, attempts = _paid(m, stage)
        return self._transition(
            project_id,
            sequence,
            [attempts.set(0)],
            _at_limit(m, stage, max_attempts, time.time()),
            done=lambda s: (
                s.value(stage.attempts) < max_attempts and s.value(stage.operation) is None
            ),
        )

    def reset_for_regeneration(self, project_id: str, sequence: int, *, run_id: str) -> Claim:
        """One transaction: clear the scene's clip and operation and win the project's run.
        Not while a live lease is the scene's and its stage's job id is not stored yet
        (`NOT_CLAIMABLE`): its holder may be submitting a job right now (a cancelled run's,
        which no cancel reaches before its id is stored), and clearing the lease would leave
        that paid job nowhere to be recorded."""
        m = self.m
        pk = project_pk(project_id)
        now = utc_now_iso()
        unleased = (
            m.lease_token.does_not_exist()
            | m.lease_expires_at.does_not_exist()
            | (m.lease_expires_at <= time.time())
        )
        # A live lease whose stage's job id is stored is polled, not submitted: the id is
        # safe (a cancel keeps it, the regeneration lets it go); only one not stored yet is.
        recorded = m.operation_id.exists() & (
            m.original_clip_key.does_not_exist() | m.lip_sync_operation_id.exists()
        )

        def build(tx: TransactWrite) -> None:
            tx.update(
                m(pk, METADATA),
                actions=[
                    m.active_run_id.set(run_id),
                    m.run_scope.set({sequence}),  # a takeover regenerates this scene only
                    m.finalize_give_ups.remove(),  # a user's run starts finalize's count afresh
                    m.last_error.remove(),
                    *final_video_cleared(m),  # invariant 8: in the same write as the scene
                    m.status.set(ProjectStatus.PROCESSING),
                    m.gsi1pk.set(ProjectStatus.PROCESSING),
                    m.updated_at.set(now),
                ],
                condition=m.pk.exists() & m.active_run_id.does_not_exist(),
            )
            tx.update(
                m(pk, scene_sk(sequence)),
                actions=[
                    m.status.set(SceneStatus.PENDING),
                    m.original_clip_key.remove(),
                    m.working_clip_key.remove(),
                    m.lip_synced_clip_key.remove(),
                    m.operation_id.remove(),
                    m.lip_sync_operation_id.remove(),
                    m.lip_sync_attempts.set(0),
                    m.operation_kept.remove(),
                    m.lease_token.remove(),
                    m.lease_expires_at.remove(),
                    m.completed_at.remove(),
                    m.last_error.remove(),
                    m.attempts.set(0),
                    m.updated_at.set(now),
                ],
                condition=m.pk.exists() & (unleased | recorded),
            )

        reasons = self.table.transact(build)
        if reasons is None:
            return Claim.WON
        meta = self.table.get(pk, METADATA)
        if meta is not None and meta.active_run_id == run_id:
            return Claim.WON
        return Claim.RUN_INACTIVE if reasons[0] == CONDITION_FAILED else Claim.NOT_CLAIMABLE

    # -- plumbing ------------------------------------------------------------------------------
    def _no_lease(self) -> list[Action]:
        return [self.m.lease_token.remove(), self.m.lease_expires_at.remove()]

    def _finished_stage(self, last: bool) -> list[Action]:
        """After a stage's output: `completed` when it was the last one needed, else the scene
        stays `processing` (with no lease) for its next stage."""
        m = self.m
        if last:
            return [m.status.set(SceneStatus.COMPLETED), m.completed_at.set(utc_now_iso())]
        return [m.status.set(SceneStatus.PROCESSING)]

    def _written(
        self,
        project_id: str,
        sequence: int,
        actions: list[Action],
        condition: Condition,
        *,
        done: Callable[[SceneRecord], bool],
    ) -> SceneRecord | None:
        """`_transition` (without a METADATA part) that returns the scene as the write left it
        (its ALL_NEW return), or as read when an earlier attempt of this caller had landed."""
        m = self.m
        pk, sk = project_pk(project_id), scene_sk(sequence)
        actions = [*actions, m.updated_at.set(utc_now_iso())]
        item = self.table.update_item(pk, sk, actions, condition & m.pk.exists())
        if item is not None:
            return SceneRecord.from_item(project_id, item)
        return self._landed(project_id, sequence, done)

    def _landed(
        self, project_id: str, sequence: int, done: Callable[[SceneRecord], bool]
    ) -> SceneRecord | None:
        """After a failed condition: the scene, if it is already as this caller meant to leave
        it (an earlier attempt of the same write landed before a timeout)."""
        scene = self.get(project_id, sequence)
        return scene if scene is not None and done(scene) else None

    def _transition(
        self,
        project_id: str,
        sequence: int,
        actions: list[Action],
        condition: Condition,
        *,
        done: Callable[[SceneRecord], bool],
        clear_final: bool = False,
        refund_micros: int = 0,
        unknown_micros: int = 0,
    ) -> bool:
        """One conditional update; on a failed condition, success if the state is already the
        one this caller meant to make (its earlier attempt may have landed before a timeout).
        `clear_final` forgets the project's final video in the same transaction; a refund joins
        the write in one transaction too: the scene's cost and the project's committed sum move
        together (invariant 4). `unknown_micros` notes how much of the scene's cost a submit
        whose outcome is unknown kept, on the scene and on METADATA in the same transaction
        (the over-budget error tells the project's sum without reading its scenes)."""
        if unknown_micros:
            actions = [*actions, self.m.unknown_cost_micros.add(unknown_micros)]
        if not (clear_final or refund_micros or unknown_micros):
            return self._written(project_id, sequence, actions, condition, done=done) is not None
        m = self.m
        pk, sk = project_pk(project_id), scene_sk(sequence)
        actions = [*actions, m.updated_at.set(utc_now_iso())]
        condition = condition & m.pk.exists()
        if refund_micros:
            actions.append(m.cost_micros.add(-refund_micros))
        # One METADATA write (a transaction may touch an item only once): every write that
        # changes a scene's outputs forgets the final video with it (invariant 8).
        project: list[Action] = []
        if clear_final:
            project += [*final_video_cleared(m), m.updated_at.set(utc_now_iso())]
        if refund_micros:
            project += budget.refunded(m, refund_micros)
        if unknown_micros:
            project += budget.kept_unknown(m, unknown_micros)

        def build(tx: TransactWrite) -> None:
            tx.update(m(pk, sk), actions=actions, condition=condition)
            tx.update(m(pk, METADATA), actions=project, condition=m.pk.exists())

        if self.table.transact(build) is None:
            return True
        return self._landed(project_id, sequence, done) is not None


def _paid(m: type[ItemBase], stage: StageFields) -> tuple[Any, Any, Any]:
    """The model attributes (output, operation, attempts) of a paid stage."""
    if stage.operation is None or stage.attempts is None:
        raise ValueError(f"{stage.output} is not a paid stage's output")
    return getattr(m, stage.output), getattr(m, stage.operation), getattr(m, stage.attempts)


def _open(m: type[ItemBase], now: float) -> Condition:
    """`pending`, or `processing` with no live lease (expired, or none: between stages)."""
    return (m.status == SceneStatus.PENDING) | (
        (m.status == SceneStatus.PROCESSING)
        & (m.lease_expires_at.does_not_exist() | (m.lease_expires_at < now))
    )


def _at_limit(m: type[ItemBase], stage: StageFields, max_attempts: int, now: float) -> Condition:
    """Open (see `_open`) with no output and no operation of the paid `stage`, and no
    submissions of it left."""
    output, operation, attempts = _paid(m, stage)
    return (
        operation.does_not_exist()
        & output.does_not_exist()
        & (attempts >= max_attempts)
        & _open(m, now)
    )


def _unowned(scene: SceneRecord, stage: StageFields, now: float) -> bool:
    """No output, no operation, no live lease: the stage waits for a submitter (read from a
    record, as `_open` and the claim's condition ask it)."""
    waiting = scene.status == SceneStatus.PENDING or (
        scene.status == SceneStatus.PROCESSING and lease_expired(scene.lease_expires_at, now)
    )
    return waiting and scene.value(stage.operation) is None and scene.value(stage.output) is None


def _claimable(
    scene: SceneRecord, stage: StageFields, max_attempts: int, now: float, requires: str | None
) -> bool:
    """What a claim's scene condition asks, read from a record."""
    return (
        _unowned(scene, stage, now)
        and (scene.value(stage.attempts) or 0) < max_attempts
        and (requires is None or scene.value(requires) is not None)
    )


def _exhausted(scene: SceneRecord, stage: StageFields, max_attempts: int, now: float) -> bool:
    return _unowned(scene, stage, now) and (scene.value(stage.attempts) or 0) >= max_attempts
