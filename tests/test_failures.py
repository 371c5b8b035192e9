"""Outages and unexpected errors are counted apart (pure: no servers).

`next_outage_retry` and `next_retry` are what `MvpipeTask.outage_retry` and `unexpected_retry`
call on an execution's keywords: each retry's keywords are the next execution's, so a chain is
their composition."""

from __future__ import annotations

from typing import Any

from mvpipe.tasks.failures import OUTAGES, UNEXPECTED, next_outage_retry, next_retry

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
        if kind == OUTAGES:
            carried = next_outage_retry(carried)
        else:
            carried = next_retry(carried, kind, LIMIT)
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


def test_a_redo_starts_from_fresh_step_fields_keeping_only_the_counts() -> None:
    # Given a poll message of a generation job whose execution went on to a lip-sync, whose
    # lease give-back met an outage (its carry names no operation)
    from mvpipe.tasks.generate import FRESH, redo_kwargs

    polled = {
        "project_id": "p",
        "sequence": 3,
        "operation_id": "generation-job",
        "transient_polls": 2,
        "job_started": 1.0e9,
        "unread_polls": 4,
        "copy": "woken",
        "made_from": "clips/old.mp4",
        OUTAGES: 3,
        UNEXPECTED: 1,
    }
    give_back = {"stage": "lipsync", "token": "T", "release": {"refund_micros": 5}}
    # When its redo message is built
    redo = redo_kwargs(polled, give_back)
    # Then it redoes the give-back, not a record of the polled job; the counts carry on
    assert redo["operation_id"] is None
    assert (redo["token"], redo["stage"], redo["release"]) == ("T", "lipsync", {"refund_micros": 5})
    assert (redo["transient_polls"], redo["job_started"], redo["unread_polls"]) == (0, None, 0)
    assert (redo["copy"], redo["made_from"]) == (None, None)
    assert (redo[OUTAGES], redo[UNEXPECTED]) == (3, 1)
    assert (redo["project_id"], redo["sequence"]) == ("p", 3)
    # and a record's redo keeps the operation it owes
    record = {"stage": "generate", "operation_id": "J2", "token": "T2", "attempt": 2}
    assert redo_kwargs(polled, record)["operation_id"] == "J2"
    assert set(redo) >= set(FRESH)
