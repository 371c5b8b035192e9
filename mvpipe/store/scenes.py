"""Scene transitions: each one conditional write (or one transaction), idempotent for its caller.

The conditions *are* the concurrency design (DESIGN.md invariants 1-3 and 7):
- a submission lease is won only on a scene with no clip and no operation that is `pending`, or
  `processing` with an expired lease, and only while the project's run is the caller's;
- the operation id is recorded only by the lease holder; from then on it owns the scene;
- `completed` is written together with the clip key, conditioned on the operation id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.states import lease_expired
from mvpipe.store import budget
from mvpipe.store.dynamo import CONDITION_FAILED, Table
from mvpipe.store.records import SceneRecord, utc_now_iso
from mvpipe.store.table import METADATA, project_pk, scene_sk

MAX_ERROR_CHARS = 1000


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


def clip_error(message: str) -> str:
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 3] + "..."


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
        price_micros: int = 0,
    ) -> ClaimResult:
        """Win the submission lease of a scene within `run_id`, reserving `price_micros` of the
        project's budget in the same transaction (invariant 9). A retry of a claim that landed
        finds its own token and reserves nothing more (invariant 7)."""
        m = self.m
        now = time.time() if now is None else now
        pk = project_pk(project_id)
        claimable = (
            m.original_clip_key.does_not_exist()
            & m.operation_id.does_not_exist()
            & (
                (m.status == SceneStatus.PENDING)
                | ((m.status == SceneStatus.PROCESSING) & (m.lease_expires_at < now))
            )
            & (m.attempts.does_not_exist() | (m.attempts < max_attempts))
            # our own landed claim (its lease expired since) is found below, not taken again
            & (m.lease_token.does_not_exist() | (m.lease_token != token))
        )
        actions: list[Action] = [
            m.status.set(SceneStatus.PROCESSING),
            m.lease_token.set(token),
            m.lease_expires_at.set(now + lease_seconds),
            m.attempts.add(1),
            m.generation_started_at.set(utc_now_iso()),
            m.updated_at.set(utc_now_iso()),
        ]
        if price_micros:
            actions.append(m.cost_micros.add(price_micros))
        seen: budget.Budget | None = None
        scene: SceneRecord | None = None
        for _ in range(_BUDGET_READS):
            if price_micros:
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

            reasons = self.table.transact(build)
            if reasons is None:
                return ClaimResult(Claim.WON)
            scene = self.get(project_id, sequence)
            if scene is not None and scene.lease_token == token:
                return ClaimResult(Claim.WON, scene.attempts)
            if reasons[0] != CONDITION_FAILED:
                break
            if seen is None:
                return ClaimResult(Claim.RUN_INACTIVE)
            now_seen = self.budgets.read(project_id)
            if now_seen.active_run_id != run_id:
                return ClaimResult(Claim.RUN_INACTIVE)
            if scene is None or not _open(scene, max_attempts, now):
                break  # the scene is not ours to take, whatever the budget says
            if now_seen.budget_micros == seen.budget_micros and not now_seen.fits(price_micros):
                return ClaimResult(Claim.OVER_BUDGET, detail=now_seen.over_budget(price_micros))
            # the budget changed (or the committed sum fell) since we read it: price again
        if scene is not None and _exhausted(scene, max_attempts, now):
            return ClaimResult(Claim.EXHAUSTED, scene.attempts)
        return ClaimResult(Claim.NOT_CLAIMABLE)

    def record_operation(
        self, project_id: str, sequence: int, *, token: str, operation_id: str, run_id: str | None
    ) -> Claim:
        """Store the operation id under the caller's lease (and, given a run id, that run).

        This is the one write between the provider accepting a job and the job being safe from
        a second submission; keep nothing else in this window.
        """
        m = self.m
        pk, sk = project_pk(project_id), scene_sk(sequence)
        owns = (
            (m.lease_token == token)
            & (m.status == SceneStatus.PROCESSING)
            & m.operation_id.does_not_exist()
        )
        actions: list[Action] = [m.operation_id.set(operation_id), m.updated_at.set(utc_now_iso())]
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
        if scene is not None and scene.operation_id == operation_id:
            return Claim.WON
        return Claim.RUN_INACTIVE if run_inactive else Claim.NOT_CLAIMABLE

    def release_lease(
        self,
        project_id: str,
        sequence: int,
        *,
        token: str,
        error: str,
        unused: bool = False,
        refund_micros: int = 0,
    ) -> bool:
        """Give a lease back after a transient submit error: the scene is `pending` again. An
        `unused` lease (nothing was submitted under it) gives its attempt back too;
        `refund_micros` gives back the claim's reservation (the provider accepted no job)."""
        m = self.m
        refund = [m.attempts.add(-1)] if unused else []
        return self._transition(
            project_id,
            sequence,
            [
                m.status.set(SceneStatus.PENDING),
                *self._no_lease(),
                m.last_error.set(clip_error(error)),
                *refund,
            ],
            (m.lease_token == token) & m.operation_id.does_not_exist(),
            done=lambda s: s.lease_token != token and s.operation_id is None,
            refund_micros=refund_micros,
        )

    # -- outcomes ------------------------------------------------------------------------------
    def complete(self, project_id: str, sequence: int, *, operation_id: str, clip_key: str) -> bool:
        """Invariant 1: status and clip key in one write, after the upload, by the operation."""
        m = self.m
        now = utc_now_iso()
        return self._transition(
            project_id,
            sequence,
            [
                m.status.set(SceneStatus.COMPLETED),
                m.original_clip_key.set(clip_key),
                m.completed_at.set(now),
                *self._no_lease(),
                m.last_error.remove(),
            ],
            (m.operation_id == operation_id) & (m.status == SceneStatus.PROCESSING),
            done=lambda s: s.status == SceneStatus.COMPLETED and s.clip_key == clip_key,
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
        refund_micros: int = 0,
    ) -> bool:
        """Mark a scene `failed`, as the owner of its operation, of its lease, or (given
        `max_attempts`) because it has no submissions left. With `token`, `refund_micros`
        gives back the lease's reservation (the provider accepted no job under it)."""
        m = self.m
        if operation_id is not None:
            owner: Condition = m.operation_id == operation_id
        elif token is not None:
            owner = (m.lease_token == token) & m.operation_id.does_not_exist()
        elif max_attempts is not None:
            owner = (
                m.operation_id.does_not_exist()
                & m.original_clip_key.does_not_exist()
                & (m.attempts >= max_attempts)
                & (
                    (m.status == SceneStatus.PENDING)
                    | ((m.status == SceneStatus.PROCESSING) & (m.lease_expires_at < time.time()))
                )
            )
        else:
            raise ValueError("fail() needs an owner: operation_id, token or max_attempts")
        return self._transition(
            project_id,
            sequence,
            [
                m.status.set(SceneStatus.FAILED),
                m.last_error.set(clip_error(error)),
                *self._no_lease(),
            ],
            owner & (m.status != SceneStatus.COMPLETED),
            done=lambda s: s.status == SceneStatus.FAILED,
            refund_micros=refund_micros if token is not None else 0,
        )

    def fail_open(self, project_id: str, sequence: int, *, error: str) -> bool:
        """Fail a scene nobody holds (no lease alive, no operation, no clip): its next job
        cannot be paid for (over budget, or unpriced). A user's run tries it again."""
        m = self.m
        return self._transition(
            project_id,
            sequence,
            [
                m.status.set(SceneStatus.FAILED),
                m.last_error.set(clip_error(error)),
                *self._no_lease(),
            ],
            m.operation_id.does_not_exist()
            & m.original_clip_key.does_not_exist()
            & (
                (m.status == SceneStatus.PENDING)
                | ((m.status == SceneStatus.PROCESSING) & (m.lease_expires_at < time.time()))
            ),
            done=lambda s: s.status == SceneStatus.FAILED,
        )

    # -- resets --------------------------------------------------------------------------------
    def reset_cancelled(self, project_id: str, sequence: int, *, operation_id: str) -> bool:
        """After the provider cancelled the job: `pending` with no operation, ready to resume."""
        m = self.m
        return self._transition(
            project_id,
            sequence,
            [
                m.status.set(SceneStatus.PENDING),
                m.operation_id.remove(),
                *self._no_lease(),
            ],
            (m.operation_id == operation_id) & (m.status == SceneStatus.PROCESSING),
            done=lambda s: s.operation_id != operation_id,
        )

    def expire_lease(self, project_id: str, sequence: int, *, token: str, now: float) -> bool:
        """A submitter died holding its lease: the scene is `pending` again (reconcile)."""
        m = self.m
        return self._transition(
            project_id,
            sequence,
            [
                m.status.set(SceneStatus.PENDING),
                *self._no_lease(),
                m.last_error.set("submission lease expired (worker lost)"),
            ],
            (m.lease_token == token) & m.operation_id.does_not_exist() & (m.lease_expires_at < now),
            done=lambda s: s.lease_token != token,
        )

    def reset_missing_clip(self, project_id: str, sequence: int, *, clip_key: str) -> bool:
        """`completed` whose object is gone: back to `pending` so a run makes it again."""
        m = self.m
        return self._transition(
            project_id,
            sequence,
            [
                m.status.set(SceneStatus.PENDING),
                m.original_clip_key.remove(),
                m.operation_id.remove(),
                m.completed_at.remove(),
                m.attempts.set(0),
                m.last_error.set("clip object missing; scene reset"),
            ],
            m.original_clip_key == clip_key,
            done=lambda s: s.clip_key != clip_key,
        )

    def retry_failed(self, project_id: str, sequence: int) -> bool:
        """A user asked for another run: a `failed` scene becomes `pending` with fresh attempts."""
        m = self.m
        return self._transition(
            project_id,
            sequence,
            [
                m.status.set(SceneStatus.PENDING),
                m.operation_id.remove(),
                *self._no_lease(),
                m.attempts.set(0),
            ],
            m.status == SceneStatus.FAILED,
            done=lambda s: s.status != SceneStatus.FAILED,
        )

    def restore_attempts(self, project_id: str, sequence: int, *, max_attempts: int) -> bool:
        """A user started a run: an open scene with no submissions left (cancelled runs spent
        them) gets its attempts back, so the run submits it instead of failing it unpaid.
        True when the scene has attempts left afterwards."""
        m = self.m
        return self._transition(
            project_id,
            sequence,
            [m.attempts.set(0)],
            m.operation_id.does_not_exist()
            & m.original_clip_key.does_not_exist()
            & (m.attempts >= max_attempts)
            & (
                (m.status == SceneStatus.PENDING)
                | ((m.status == SceneStatus.PROCESSING) & (m.lease_expires_at < time.time()))
            ),
            done=lambda s: s.attempts < max_attempts and s.operation_id is None,
        )

    def reset_for_regeneration(self, project_id: str, sequence: int, *, run_id: str) -> Claim:
        """One transaction: clear the scene's clip and operation and win the project's run."""
        m = self.m
        pk = project_pk(project_id)
        now = utc_now_iso()

        def build(tx: TransactWrite) -> None:
            tx.update(
                m(pk, METADATA),
                actions=[
                    m.active_run_id.set(run_id),
                    m.run_scope.set({sequence}),  # a takeover regenerates this scene only
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
                    m.operation_id.remove(),
                    m.lease_token.remove(),
                    m.lease_expires_at.remove(),
                    m.completed_at.remove(),
                    m.last_error.remove(),
                    m.attempts.set(0),
                    m.updated_at.set(now),
                ],
                condition=m.pk.exists(),
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

    def _transition(
        self,
        project_id: str,
        sequence: int,
        actions: list[Action],
        condition: Condition,
        *,
        done: Callable[[SceneRecord], bool],
        refund_micros: int = 0,
    ) -> bool:
        """One conditional update; on a failed condition, success if the state is already the
        one this caller meant to make (its earlier attempt may have landed before a timeout).
        A refund joins the write in one transaction: the scene's cost and the project's
        committed sum move together (invariant 4)."""
        m = self.m
        pk, sk = project_pk(project_id), scene_sk(sequence)
        actions = [*actions, m.updated_at.set(utc_now_iso())]
        condition = condition & m.pk.exists()
        if refund_micros:
            actions.append(m.cost_micros.add(-refund_micros))

            def build(tx: TransactWrite) -> None:
                budget.refund(tx, m, project_id, refund_micros)
                tx.update(m(pk, sk), actions=actions, condition=condition)

            if self.table.transact(build) is None:
                return True
        elif self.table.update(pk, sk, actions, condition):
            return True
        scene = self.get(project_id, sequence)
        return scene is not None and done(scene)


def _unowned(scene: SceneRecord, now: float) -> bool:
    """No clip, no operation, no live lease: the scene waits for a submitter."""
    waiting = scene.status == SceneStatus.PENDING or (
        scene.status == SceneStatus.PROCESSING and lease_expired(scene.lease_expires_at, now)
    )
    return waiting and scene.operation_id is None and scene.clip_key is None


def _open(scene: SceneRecord, max_attempts: int, now: float) -> bool:
    """What a claim's scene condition asks, read from a record."""
    return _unowned(scene, now) and scene.attempts < max_attempts


def _exhausted(scene: SceneRecord, max_attempts: int, now: float) -> bool:
    return _unowned(scene, now) and scene.attempts >= max_attempts
