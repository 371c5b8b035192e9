"""The shared quota limiter and the twin-step guard, against the real redis-server."""

from __future__ import annotations

import uuid

import pytest
import redis

from mvpipe.providers.limiter import QuotaLimiter
from mvpipe.runboard import RunBoard

pytestmark = pytest.mark.integration


@pytest.fixture
def limiter(redis_client: redis.Redis) -> QuotaLimiter:
    return QuotaLimiter(redis_client, prefix=f"test:{uuid.uuid4()}")


def ask(limiter: QuotaLimiter, member: str, park: str | None = None, line_ttl: float = 600):
    return limiter.acquire("local", member, limit=2, ttl=600, line_ttl=line_ttl, park=park)


def test_a_release_wakes_only_the_waiters_entitled_to_the_freed_slot(
    limiter: QuotaLimiter,
) -> None:
    assert ask(limiter, "a").granted and ask(limiter, "b").granted
    assert ask(limiter, "c", park="wake c").place == 1
    assert ask(limiter, "d", park="wake d").place == 2
    assert not ask(limiter, "e").granted  # waits on its own timer, parks nothing

    assert limiter.release("local", "a", limit=2) == ["wake c"]
    # Handed out once: a second release of nothing, before c arrives, wakes no one else,
    # because the one free slot is c's.
    assert limiter.release("local", "a", limit=2) == []
    assert ask(limiter, "d").granted is False  # d cannot take c's slot
    assert ask(limiter, "c").granted
    assert limiter.release("local", "b", limit=2) == ["wake d"]


def test_a_waiters_latest_parked_message_wins_and_a_grant_drops_it(
    limiter: QuotaLimiter,
) -> None:
    assert ask(limiter, "a").granted and ask(limiter, "b").granted
    ask(limiter, "c", park="c, step 1")
    ask(limiter, "c", park="c, step 2")  # its timed check ran first and waited again
    assert limiter.release("local", "a", limit=2) == ["c, step 2"]
    assert ask(limiter, "c").granted
    ask(limiter, "d", park="d")
    assert ask(limiter, "a").granted is False
    assert limiter.release("local", "c", limit=2) == ["d"]
    assert ask(limiter, "d").granted
    assert limiter.release("local", "b", limit=2) == []  # a, next in line, parked nothing
    assert ask(limiter, "a").granted


def test_waiters_that_stop_asking_lose_their_place_and_their_message(
    limiter: QuotaLimiter,
) -> None:
    assert ask(limiter, "a").granted and ask(limiter, "b").granted
    ask(limiter, "gone", park="never sent")
    ask(limiter, "c", park="wake c", line_ttl=0)  # every waiter seen before now is stale
    assert limiter.release("local", "a", limit=2) == ["wake c"]


def test_the_first_copy_of_a_step_owns_it_and_its_redelivery_too(
    redis_client: redis.Redis,
) -> None:
    board = RunBoard(redis_client, prefix=f"test:{uuid.uuid4()}")
    assert board.first_copy("task", 3, "timed", 60)
    assert not board.first_copy("task", 3, "woken", 60)
    assert board.first_copy("task", 3, "timed", 60)  # the same copy, redelivered
    assert board.first_copy("task", 4, "woken", 60)  # the next step is a new race


def test_a_refreshed_slot_is_not_a_fresh_one(limiter: QuotaLimiter) -> None:
    first = ask(limiter, "a")
    assert first.granted and first.fresh
    again = ask(limiter, "a")  # a duplicate execution of the same scene
    assert again.granted and not again.fresh


def test_a_waiter_that_leaves_hands_its_turn_to_the_next_one(limiter: QuotaLimiter) -> None:
    assert ask(limiter, "a").granted and ask(limiter, "b").granted
    ask(limiter, "c", park="wake c")
    ask(limiter, "d", park="wake d")
    assert limiter.release("local", "a", limit=2) == ["wake c"]
    # c's run was cancelled: it leaves, and the free slot goes to d at once.
    assert limiter.leave("local", "c", limit=2) == ["wake d"]
    assert ask(limiter, "d").granted
