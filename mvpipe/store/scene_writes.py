"""How every scene transition writes: one conditional update (or one transaction with the
project's METADATA), idempotent for its caller: a write whose condition fails still succeeds
when the scene is already as the caller meant to leave it (an earlier attempt landed)."""

from __future__ import annotations

from collections.abc import Callable

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from mvpipe.models import SceneStatus
from mvpipe.store import budget
from mvpipe.store.dynamo import Table
from mvpipe.store.projects import final_video_cleared
from mvpipe.store.records import SceneRecord, utc_now_iso
from mvpipe.store.table import METADATA, project_pk, scene_sk


class SceneWrites:
    """The scene store's reads and write plumbing, shared by its transitions."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.m = table.model
        self.budgets = budget.BudgetStore(table)

    def get(self, project_id: str, sequence: int) -> SceneRecord | None:
        item = self.table.get(project_pk(project_id), scene_sk(sequence))
        return None if item is None else SceneRecord.from_item(project_id, item)

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
