"""Outages and unexpected errors are counted apart (pure: no servers).

`next_retry` is what `MvpipeTask.outage_retry` and `unexpected_retry` call on an execution's
keywords: each retry's keywords are the next execution's, so a chain is their composition."""

from __future__ import annotations

from typing import Any

from mvpipe.tasks.failures import OUTAGES, UNEXPECTED, next_retry

LIMIT = 5
#: An execution's keywords besides the counts, which every retry carries as they were.
OTHERS: dict[str, Any] = {"only": [2, 3], "planner_failures": 1}


def after(events: list[str], kwargs: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The keywords a task chain's last retry carries after `events` (None once it gave up),
    each retry built from the keywords the one before carried, as the task's retries are."""
    carried: dict[str, Any] | None = (
        {**OTHERS, OUTAGES: 0, UNEXPECTED: 0} if kwargs is None else kwargs
    )
    for kind in events:
        if carried is None:
            break
        carried = next_retry(carried, kind, None if kind == OUTAGES else LIMIT)
    return carried


def test_a_long_outage_leaves_a_bug_all_its_retries() -> None:
    assert after([OUTAGES] * 1000 + [UNEXPECTED]) == {**OTHERS, OUTAGES: 1000, UNEXPECTED: 1}
    spent = after([OUTAGES] * 1000 + [UNEXPECTED] * LIMIT)
    assert spent == {**OTHERS, OUTAGES: 1000, UNEXPECTED: LIMIT}


def test_a_bug_gives_up_after_its_own_retries_whatever_the_outages_between() -> None:
    events = [UNEXPECTED, OUTAGES] * LIMIT + [OUTAGES] * 50
    assert after(events) == {**OTHERS, OUTAGES: LIMIT + 50, UNEXPECTED: LIMIT}
    assert after([*events, UNEXPECTED]) is None


def test_outages_are_retried_without_limit_and_spend_no_bugs_retries() -> None:
    spent = {**OTHERS, OUTAGES: 10**6, UNEXPECTED: LIMIT}
    assert after([OUTAGES], spent) == {**OTHERS, OUTAGES: 10**6 + 1, UNEXPECTED: LIMIT}
    assert after([UNEXPECTED], spent) is None


def test_a_count_missing_from_an_older_message_starts_at_zero() -> None:
    # an assembly queued before it counted its unexpected errors carried its outages only
    assert after([UNEXPECTED], {OUTAGES: 7}) == {OUTAGES: 7, UNEXPECTED: 1}
    assert after([OUTAGES, OUTAGES], {"only": None}) == {"only": None, OUTAGES: 2}
