"""Outages and unexpected errors are counted apart (pure: no servers)."""

from __future__ import annotations

from mvpipe.tasks.failures import OUTAGES, UNEXPECTED, next_retry

LIMIT = 5


def after(events: list[str]) -> dict[str, int] | None:
    """The counts a task chain carries after `events` (None once it gave up)."""
    counts: dict[str, int] | None = {OUTAGES: 0, UNEXPECTED: 0}
    for kind in events:
        if counts is None:
            break
        counts = next_retry(counts, kind, None if kind == OUTAGES else LIMIT)
    return counts


def test_a_long_outage_leaves_a_bug_all_its_retries() -> None:
    assert after([OUTAGES] * 1000 + [UNEXPECTED]) == {OUTAGES: 1000, UNEXPECTED: 1}
    assert after([OUTAGES] * 1000 + [UNEXPECTED] * LIMIT) == {OUTAGES: 1000, UNEXPECTED: LIMIT}


def test_a_bug_gives_up_after_its_own_retries_whatever_the_outages_between() -> None:
    events = [UNEXPECTED, OUTAGES] * LIMIT + [OUTAGES] * 50
    assert after(events) == {OUTAGES: LIMIT + 50, UNEXPECTED: LIMIT}
    assert after([*events, UNEXPECTED]) is None


def test_outages_are_retried_without_limit_and_spend_no_bugs_retries() -> None:
    spent = {OUTAGES: 10**6, UNEXPECTED: LIMIT}
    assert next_retry(spent, OUTAGES, None) == {OUTAGES: 10**6 + 1, UNEXPECTED: LIMIT}
    assert next_retry(spent, UNEXPECTED, LIMIT) is None


def test_a_count_missing_from_an_older_message_starts_at_zero() -> None:
    assert next_retry({OUTAGES: 7}, UNEXPECTED, LIMIT) == {OUTAGES: 7, UNEXPECTED: 1}
