"""The submission lease of a paid stage: winning it (with the budget's reservation), storing
the job's operation id under it, and giving it back or letting it expire."""

from __future__ import annotations

import time

from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from mvpipe import hooks
from mvpipe.models import SceneStatus
from mvpipe.store import budget
from mvpipe.store.claim_outcomes import Claim, ClaimResult
from mvpipe.store.dynamo import CONDITION_FAILED
from mvpipe.store.records import SceneRecord, clip_error, utc_now_iso
from mvpipe.store.scene_conditions import can_claim, exhausted, open_at, paid_attributes
from mvpipe.store.scene_writes import SceneWrites
from mvpipe.store.stage_fields import ORIGINAL, StageFields
from mvpipe.store.table import METADATA, project_pk, scene_sk

#: Claims that find the budget changed under them read it again, this many times at most.
_BUDGET_READS = 5


class SceneLeases(SceneWrites):
    """Transitions of a paid stage's submission lease."""

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
        output, operation, attempts = paid_attributes(m, stage)
        claimable = (
            output.does_not_exist()
            & operation.does_not_exist()
            & open_at(m, now)
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
            if scene is None or not can_claim(scene, stage, max_attempts, now, requires):
                break  # the scene is not ours to take, whatever the budget says
            if now_seen.budget_micros == seen.budget_micros and not now_seen.fits(price_micros):
                return ClaimResult(Claim.OVER_BUDGET, detail=now_seen.over_budget(price_micros))
            # the budget changed (or the committed sum fell) since we read it: price again
            seen = now_seen
        if scene is not None and exhausted(scene, stage, max_attempts, now):
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
        _, operation, _ = paid_attributes(m, stage)
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
        output, operation, _ = paid_attributes(m, stage)
        now = time.time() if now is None else now
        condition = operation.does_not_exist() & output.does_not_exist() & open_at(m, now)
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
        _, operation, attempts = paid_attributes(m, stage)
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
        _, operation, _ = paid_attributes(m, stage)
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
