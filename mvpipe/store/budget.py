"""The project's money on METADATA: reservations inside claims, refunds, the budget itself.

Invariant 9: a paid claim and its reservation (`committedCostMicros += price`) are one
transaction, conditioned on the budget, so concurrent claims can never overspend. DynamoDB
conditions cannot add, so a claim first reads the budget and then conditions on it being
unchanged and on `committedCostMicros <= budget - price`; a claim that finds the budget changed
reads it again (rare: only `set_budget` changes it). Unlike a `remainingMicros` attribute, this
keeps one number to recount and repair (invariant 4) and lets `set_budget` be a single write.
"""

from __future__ import annotations

from dataclasses import dataclass

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action
from pynamodb.transactions import TransactWrite

from mvpipe.errors import InvalidInput, NotFound
from mvpipe.pricing import usd
from mvpipe.store.dynamo import Table
from mvpipe.store.records import utc_now_iso
from mvpipe.store.table import METADATA, ItemBase, project_pk


@dataclass(frozen=True)
class Budget:
    """METADATA's money as read: `budget_micros` None means no limit; `unknown_micros` is the
    part of the committed sum kept by submits whose outcome is unknown."""

    budget_micros: int | None
    committed_micros: int
    active_run_id: str | None
    unknown_micros: int = 0

    @classmethod
    def of(cls, item: ItemBase) -> Budget:
        return cls(
            None if item.budget_micros is None else int(item.budget_micros),
            int(item.committed_cost_micros or 0),
            item.active_run_id,
            int(item.unknown_cost_micros or 0),
        )

    def fits(self, price_micros: int) -> bool:
        return self.budget_micros is None or self.committed_micros + price_micros <= (
            self.budget_micros
        )

    def over_budget(self, price_micros: int) -> str:
        """The `lastError` of a scene whose claim did not fit (read from METADATA alone: no
        scene is read however many claims find the budget spent)."""
        budget = self.budget_micros or 0
        left = max(0, budget - self.committed_micros)
        return (
            f"over budget: needs {usd(price_micros)}, {usd(left)} left of {usd(budget)}"
            + unknown_outcomes(self.unknown_micros, self.committed_micros)
        )


def unknown_outcomes(unknown_micros: int, committed_micros: int) -> str:
    """What an over-budget `lastError` adds when submits whose outcome is unknown (a 5xx, a
    timeout) keep part of the committed money: the provider may never bill it, but it stays
    reserved (a budget is never overspent), so the user learns why and what continues."""
    if unknown_micros <= 0:
        return ""
    return (
        f"; {usd(unknown_micros)} of the {usd(committed_micros)} committed is held by submits"
        " whose outcome is unknown (a 5xx or a timeout: the provider may not bill them);"
        " raise the budget and run again to continue"
    )


def reserve(
    tx: TransactWrite,
    m: type[ItemBase],
    project_id: str,
    *,
    run_id: str,
    price_micros: int,
    budget_micros: int | None,
) -> None:
    """The METADATA part of a paid stage's claim: the run is the caller's, the budget is the
    one the price was checked against, and the price fits; then the price is committed."""
    fits: Condition
    if budget_micros is None:
        fits = m.budget_micros.does_not_exist()
    else:
        ceiling = budget_micros - price_micros
        committed = m.committed_cost_micros
        fits = (m.budget_micros == budget_micros) & (
            (committed <= ceiling)
            | (committed.does_not_exist() & (m.budget_micros >= price_micros))
        )
    tx.update(
        m(project_pk(project_id), METADATA),
        actions=[m.committed_cost_micros.add(price_micros)],
        condition=(m.active_run_id == run_id) & fits,
    )


def refunded(m: type[ItemBase], micros: int) -> list[Action]:
    """The METADATA actions that give back a reservation whose job the provider surely never
    accepted (joined to the scene write that releases the lease, in one transaction)."""
    return [m.committed_cost_micros.add(-micros)]


def kept_unknown(m: type[ItemBase], micros: int) -> list[Action]:
    """The METADATA actions that note a reservation kept by a submit whose outcome is unknown
    (joined to the scene write that releases the lease, in one transaction: a retried write
    whose first try landed fails the scene's condition and adds nothing, invariant 7)."""
    return [m.unknown_cost_micros.add(micros)]


#: Projects whose last-read budget a process remembers (a bound on memory, not on correctness).
REMEMBERED_PROJECTS = 1024


class BudgetStore:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.m = table.model
        self._last_read: dict[str, Budget] = {}

    def read(self, project_id: str) -> Budget:
        item = self.table.get(project_pk(project_id), METADATA)
        if item is None:
            raise NotFound(f"project {project_id} not found")
        seen = Budget.of(item)
        if len(self._last_read) >= REMEMBERED_PROJECTS:
            self._last_read.clear()
        self._last_read[project_id] = seen
        return seen

    def last_read(self, project_id: str) -> Budget | None:
        """The budget this process last read for the project, unchecked: only a guess for a
        claim's condition, which the store checks against the real one (a stale guess fails
        the condition, and the claim reads the budget and tries again)."""
        return self._last_read.get(project_id)

    def set_budget(self, project_id: str, budget_micros: int | None) -> Budget:
        """Set (None: remove) the budget. Never below what is committed already: invariant 9
        holds at every moment, so a budget under the money already spent is refused."""
        m = self.m
        pk = project_pk(project_id)
        action: Action
        if budget_micros is None:
            action = m.budget_micros.remove()
            condition: Condition = m.pk.exists()
        else:
            action = m.budget_micros.set(budget_micros)
            condition = m.pk.exists() & (
                m.committed_cost_micros.does_not_exist()
                | (m.committed_cost_micros <= budget_micros)
            )
        if not self.table.update(
            pk, METADATA, [action, m.updated_at.set(utc_now_iso())], condition
        ):
            current = self.read(project_id)
            if current.budget_micros != budget_micros:
                raise InvalidInput(
                    f"budget {usd(budget_micros or 0)} is below the "
                    f"{usd(current.committed_micros)} already committed"
                )
        return self.read(project_id)
