"""The money on METADATA, against a real moto server: reservations in claims (invariant 9),
refunds in the write that releases a lease, the recount (invariant 4), `set_budget`."""

from __future__ import annotations

import math
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from mvpipe import api
from mvpipe.deps import Context, build_context, get_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import InvalidInput, NotFound
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.pipeline.reconcile import reconcile
from mvpipe.settings import get_settings
from mvpipe.store.claim_outcomes import Claim, ClaimResult
from mvpipe.store.stage_fields import LIP_SYNCED, ORIGINAL, WORKING
from mvpipe.store.table import METADATA, project_pk
from tests.helpers import assert_invariants, new_project
from tests.test_store import claimed

pytestmark = pytest.mark.integration

PRICE = 1_000_000  # one dollar a job


class NoDispatch:
    """Reconcile's dispatcher for projects with no run: nothing may be sent."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"reconcile tried to dispatch {name}")


@pytest.fixture
def ctx(stack: LocalStack) -> Context:
    return get_context()


def claim(ctx: Context, project_id: str, run_id: str, sequence: int, token: str) -> ClaimResult:
    return claimed(ctx, project_id, run_id, token, sequence, price_micros=PRICE)


def committed(ctx: Context, project_id: str) -> int:
    return ctx.projects.get(project_id).committed_cost_micros


def test_concurrent_claims_never_overspend(ctx: Context) -> None:
    project_id, run_id = new_project(ctx, 12, budget_micros=5 * PRICE)
    with ThreadPoolExecutor(12) as pool:
        results = list(
            pool.map(lambda n: claim(ctx, project_id, run_id, n, uuid.uuid4().hex), range(1, 13))
        )
    outcomes = [r.outcome for r in results]
    assert outcomes.count(Claim.WON) == 5
    assert outcomes.count(Claim.OVER_BUDGET) == 7
    assert committed(ctx, project_id) == 5 * PRICE
    detail = next(r.detail for r in results if r.outcome == Claim.OVER_BUDGET)
    assert detail == "over budget: needs $1.00, $0.00 left of $5.00"
    state = ctx.projects.load(project_id)
    assert sum(s.cost_micros for s in state.scenes) == 5 * PRICE
    assert sorted(s.cost_micros for s in state.scenes if s.cost_micros) == [PRICE] * 5


def test_a_retried_claim_reserves_once(ctx: Context) -> None:
    project_id, run_id = new_project(ctx, 1, budget_micros=3 * PRICE)
    first = claim(ctx, project_id, run_id, 1, "tok")
    again = claim(ctx, project_id, run_id, 1, "tok")  # the retry finds its own token
    assert (first.outcome, again.outcome) == (Claim.WON, Claim.WON)
    assert committed(ctx, project_id) == PRICE
    assert ctx.scenes.get(project_id, 1).cost_micros == PRICE  # type: ignore[union-attr]


def test_a_claim_of_another_run_reserves_nothing(ctx: Context) -> None:
    project_id, _ = new_project(ctx, 1, budget_micros=None)
    assert claim(ctx, project_id, "not-the-run", 1, "tok").outcome == Claim.RUN_INACTIVE
    assert committed(ctx, project_id) == 0


def test_without_a_budget_spending_is_still_recorded(ctx: Context) -> None:
    project_id, run_id = new_project(ctx, 3, budget_micros=None)
    for n in range(1, 4):
        assert claim(ctx, project_id, run_id, n, f"t{n}").outcome == Claim.WON
    assert committed(ctx, project_id) == 3 * PRICE


def test_a_released_lease_gives_its_reservation_back_once(ctx: Context) -> None:
    project_id, run_id = new_project(ctx, 2, budget_micros=2 * PRICE)
    s = ctx.scenes
    assert claim(ctx, project_id, run_id, 1, "a").outcome == Claim.WON
    assert claim(ctx, project_id, run_id, 2, "b").outcome == Claim.WON
    for _ in range(2):  # sent twice, as after a timeout: one refund
        assert s.release_lease(project_id, 1, token="a", error="503", refund_micros=PRICE)
        assert s.fail(project_id, 2, error="refused", token="b", refund_micros=PRICE)
    assert committed(ctx, project_id) == 0
    state = ctx.projects.load(project_id)
    assert [x.cost_micros for x in state.scenes] == [0, 0]
    assert [x.status for x in state.scenes] == [SceneStatus.PENDING, SceneStatus.FAILED]
    # A scene that does not fit is failed by whoever found it; a user's run tries it again.
    assert s.fail_open(project_id, 1, error="over budget: needs $1.00")
    assert ctx.scenes.get(project_id, 1).status == SceneStatus.FAILED  # type: ignore[union-attr]


def test_money_kept_by_a_submit_of_unknown_outcome_is_noted_once_on_the_project(
    ctx: Context,
) -> None:
    # Given two claims on a budget of two jobs, whose submits' outcomes are unknown (a 5xx)
    project_id, run_id = new_project(ctx, 3, budget_micros=2 * PRICE)
    s = ctx.scenes
    assert claim(ctx, project_id, run_id, 1, "a").outcome == Claim.WON
    assert claim(ctx, project_id, run_id, 2, "b").outcome == Claim.WON
    # When their give-backs keep the reservations, each sent twice as after a timeout
    for _ in range(2):
        assert s.release_lease(project_id, 1, token="a", error="503", unknown_micros=PRICE)
        assert s.fail(project_id, 2, error="502", token="b", unknown_micros=PRICE)
    # Then the project notes each once, with its scene, and nothing is given back
    seen = s.budgets.read(project_id)
    assert (seen.committed_micros, seen.unknown_micros) == (2 * PRICE, 2 * PRICE)
    state = ctx.projects.load(project_id)
    assert [x.unknown_cost_micros for x in state.scenes] == [PRICE, PRICE, 0]
    # and a claim that no longer fits says so from the budget it read (METADATA alone)
    over = claim(ctx, project_id, run_id, 3, "c")
    assert over.outcome == Claim.OVER_BUDGET
    assert over.detail == (
        "over budget: needs $1.00, $0.00 left of $2.00; $2.00 of the $2.00 committed is held by"
        " submits whose outcome is unknown (a 5xx or a timeout: the provider may not bill them);"
        " raise the budget and run again to continue"
    )


def test_a_changed_budget_is_read_again_by_the_claim(ctx: Context) -> None:
    project_id, run_id = new_project(ctx, 2, budget_micros=PRICE)
    assert claim(ctx, project_id, run_id, 1, "a").outcome == Claim.WON
    assert claim(ctx, project_id, run_id, 2, "b").outcome == Claim.OVER_BUDGET
    api.set_budget(project_id, 2.0)
    assert claim(ctx, project_id, run_id, 2, "b").outcome == Claim.WON
    assert committed(ctx, project_id) == 2 * PRICE


def test_a_claim_on_a_budget_another_process_changed_never_overspends(ctx: Context) -> None:
    """A claim conditions on the budget its process read last: stale after another process
    changed it, the store's condition fails, and the claim reads the budget again."""
    project_id, run_id = new_project(ctx, 3, budget_micros=2 * PRICE)
    assert claim(ctx, project_id, run_id, 1, "a").outcome == Claim.WON  # remembers $2
    elsewhere = build_context(get_settings())  # another worker process's clients
    elsewhere.scenes.budgets.set_budget(project_id, PRICE)
    lowered = claim(ctx, project_id, run_id, 2, "b")
    assert lowered.outcome == Claim.OVER_BUDGET
    assert lowered.detail == "over budget: needs $1.00, $0.00 left of $1.00"
    assert committed(ctx, project_id) == PRICE
    elsewhere.scenes.budgets.set_budget(project_id, 3 * PRICE)
    assert claim(ctx, project_id, run_id, 2, "b").outcome == Claim.WON
    elsewhere.scenes.budgets.set_budget(project_id, None)
    assert claim(ctx, project_id, run_id, 3, "c").outcome == Claim.WON
    assert committed(ctx, project_id) == 3 * PRICE
    assert_invariants(project_id)


@pytest.mark.parametrize("bad", [-1, -0.01, math.nan, math.inf, 1e12, "10", True, [5]])
def test_bad_budgets_are_refused_and_write_nothing(ctx: Context, bad: object) -> None:
    project_id, _ = new_project(ctx, 1, budget_micros=4 * PRICE)
    before = ctx.table.get(project_pk(project_id), METADATA).updated_at  # type: ignore[union-attr]
    with pytest.raises(InvalidInput):
        api.set_budget(project_id, bad)  # type: ignore[arg-type]
    after = ctx.table.get(project_pk(project_id), METADATA)
    assert after is not None and after.budget_micros == 4 * PRICE and after.updated_at == before


def test_a_budget_below_what_is_committed_is_refused(ctx: Context) -> None:
    project_id, run_id = new_project(ctx, 2, budget_micros=4 * PRICE)
    assert claim(ctx, project_id, run_id, 1, "a").outcome == Claim.WON
    with pytest.raises(InvalidInput, match=r"below the \$1.00 already committed"):
        api.set_budget(project_id, 0.5)
    assert ctx.projects.get(project_id).budget_micros == 4 * PRICE
    assert api.set_budget(project_id, 1).budget_usd == 1.0  # exactly what is committed
    assert api.set_budget(project_id, None).budget_usd is None  # no limit
    with pytest.raises(NotFound):
        api.set_budget(str(uuid.uuid4()), 5)
    with pytest.raises(InvalidInput):
        api.set_budget("not-an-id", 5)


def test_reconcile_recounts_the_committed_sum(ctx: Context) -> None:
    project_id, run_id = new_project(ctx, 2, budget_micros=None)
    assert claim(ctx, project_id, run_id, 1, "a").outcome == Claim.WON
    assert ctx.scenes.fail(project_id, 1, error="blocked", token="a")  # paid, then failed
    counters = ctx.projects.load(project_id).counters
    assert ctx.projects.settle(
        project_id,
        observed_run=run_id,
        counters=counters,
        status=ProjectStatus.PENDING,
        release=True,
    )
    m = ctx.table.model  # a wrong sum, as a hand edit or an older version could leave it
    ctx.table.update(project_pk(project_id), METADATA, [m.committed_cost_micros.set(7)], None)
    first = reconcile(ctx, NoDispatch(), project_ids=[project_id], sweep_strays=False)  # type: ignore[arg-type]
    assert first.costs_recounted == 1
    assert committed(ctx, project_id) == PRICE
    assert_invariants(project_id)
    second = reconcile(ctx, NoDispatch(), project_ids=[project_id], sweep_strays=False)  # type: ignore[arg-type]
    assert second.total == 0


def test_a_lip_sync_claim_reserves_its_price_and_a_refusal_gives_it_back(ctx: Context) -> None:
    # Given two generated and cut scenes ($2 committed) on a $3 budget
    project_id, run_id = new_project(ctx, 2, budget_micros=3 * PRICE)
    for n in (1, 2):
        assert claim(ctx, project_id, run_id, n, f"g{n}").outcome == Claim.WON
        op = f"op{n}"
        assert (
            ctx.scenes.record_operation(
                project_id, n, token=f"g{n}", operation_id=op, run_id=run_id
            )
            == Claim.WON
        )
        assert ctx.scenes.complete(project_id, n, operation_id=op, clip_key=f"k{n}")
        made_from = (ORIGINAL.output, f"k{n}")
        assert ctx.scenes.record_output(
            project_id, n, stage=WORKING, key=f"w{n}", made_from=made_from, last=False
        )

    def lip_sync(sequence: int, token: str) -> ClaimResult:
        return claimed(
            ctx,
            project_id,
            run_id,
            token,
            sequence,
            stage=LIP_SYNCED,
            requires=WORKING.output,
            price_micros=PRICE,
        )

    # When both scenes claim their lip-sync, only the first fits
    assert lip_sync(1, "l1").outcome == Claim.WON
    over = lip_sync(2, "l2")
    assert over.outcome == Claim.OVER_BUDGET
    assert over.detail == "over budget: needs $1.00, $0.00 left of $3.00"
    assert committed(ctx, project_id) == 3 * PRICE
    assert ctx.scenes.fail_open(project_id, 2, error=over.detail, stage=LIP_SYNCED)
    # Then a refused lip-sync submit gives its dollar back in the write that frees the lease
    assert ctx.scenes.release_lease(
        project_id, 1, token="l1", error="503", stage=LIP_SYNCED, refund_micros=PRICE
    )
    assert committed(ctx, project_id) == 2 * PRICE
    first, second = ctx.scenes.get(project_id, 1), ctx.scenes.get(project_id, 2)
    assert first is not None and second is not None
    assert (first.cost_micros, first.lip_sync_attempts, first.attempts) == (PRICE, 1, 1)
    assert first.lease_token is None and first.working_clip_key == "w1"
    assert second.status == SceneStatus.FAILED and second.last_error == over.detail
    assert second.working_clip_key == "w2" and second.cost_micros == PRICE
