"""Writes that put a scene back so a run makes it again: after a cancel, a vanished output, a
failure a user retries, spent attempts, a regeneration; and a waiting scene's length refitted.
Earlier outputs are kept wherever they still hold: nothing already made is paid for twice."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.store.claim_outcomes import Claim
from mvpipe.store.dynamo import CONDITION_FAILED
from mvpipe.store.projects import final_video_cleared
from mvpipe.store.records import SceneRecord, utc_now_iso
from mvpipe.store.scene_conditions import at_limit, open_at, paid_attributes
from mvpipe.store.scene_writes import SceneWrites
from mvpipe.store.stage_fields import ORIGINAL, OUTPUT_ORDER, StageFields
from mvpipe.store.table import METADATA, project_pk, scene_sk


class SceneResets(SceneWrites):
    """Transitions that send a scene back to be made again."""

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
        output, operation, _ = paid_attributes(m, stage)
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
        output, operation, _ = paid_attributes(m, stage)
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
        output, operation, _ = paid_attributes(m, ORIGINAL)
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
            & open_at(m, now)
            & m.pk.exists(),
        )
        if item is not None:
            return SceneRecord.from_item(project_id, item)
        return self.get(project_id, sequence)  # refitted, taken or made meanwhile, or gone

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
        output is made again by a deterministic free stage (the cut, from the original kept),
        so the later outputs made from it still hold and only it is cleared."""
        m = self.m
        later = [stage] if alone else OUTPUT_ORDER[OUTPUT_ORDER.index(stage) :]
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
                *self._outputs_cleared(later),
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

    def _outputs_cleared(self, stages: Sequence[StageFields]) -> list[Action]:
        """Each of `stages`' outputs removed, and a paid stage's operation with it, its attempts
        back at 0: the stage is made again from the start."""
        m = self.m
        clear: list[Action] = []
        for fields in stages:
            clear.append(getattr(m, fields.output).remove())
            if fields.operation is not None and fields.attempts is not None:
                clear += [getattr(m, fields.operation).remove(), getattr(m, fields.attempts).set(0)]
        return clear

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
            _, operation, attempts = paid_attributes(m, stage)
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
        _, _, attempts = paid_attributes(m, stage)
        return self._transition(
            project_id,
            sequence,
            [attempts.set(0)],
            at_limit(m, stage, max_attempts, time.time()),
            done=lambda s: (
                s.value(stage.attempts) < max_attempts and s.value(stage.operation) is None
            ),
        )

    def reset_for_regeneration(self, project_id: str, sequence: int, *, run_id: str) -> Claim:
        """One transaction: clear every output of the scene, with each stage's operation and
        attempts (all of OUTPUT_ORDER, as `reset_outputs` from the first), and win the run.
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
                    *self._outputs_cleared(OUTPUT_ORDER),
                    m.operation_kept.remove(),
                    *self._no_lease(),
                    m.completed_at.remove(),
                    m.last_error.remove(),
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
