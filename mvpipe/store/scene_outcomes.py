"""A stage's end: its output recorded (the last one needed completes the scene), or the scene
failed by whoever owns the stage, or the reason its chain gave up noted."""

from __future__ import annotations

import time

from pynamodb.expressions.condition import Condition

from mvpipe.models import SceneStatus
from mvpipe.store.records import SceneRecord, clip_error
from mvpipe.store.scene_conditions import at_limit, open_at, paid_attributes
from mvpipe.store.scene_writes import SceneWrites
from mvpipe.store.stage_fields import ORIGINAL, StageFields


class SceneOutcomes(SceneWrites):
    """Transitions that end a stage: its output, or the scene's failure."""

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
        output, operation, _ = paid_attributes(m, stage)
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
        lip-sync made from its original), conditioned on still being its own when `last`."""
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
        refused): `retry_failed` keeps its operation, so the next run polls it. The owner of an
        operation fails the scene only while the stage's output is not recorded."""
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
        output, operation, _ = paid_attributes(m, stage)
        if operation_id is not None:
            # the operation id stays on the scene after its output is recorded (while later
            # stages run, or pending after a cancel): a late duplicate poll of a recorded job
            # must not fail the scene under the next stage's live job (as in `complete`)
            owner = (operation == operation_id) & output.does_not_exist()
        elif token is not None:
            owner = (m.lease_token == token) & operation.does_not_exist()
        elif max_attempts is not None:
            owner = at_limit(m, stage, max_attempts, time.time())
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
        unheld = getattr(m, stage.output).does_not_exist() & open_at(m, time.time())
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
