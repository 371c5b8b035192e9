"""A run waiting for its create's song analysis: how often it looks and logs (pure, no servers).

A lost analysis message with its mark still pending holds the run for up to
`MVPIPE_ANALYSIS_WAIT_SECONDS` (360 s by default): each look costs a project read and a few Redis
commands, so the looks slow down once the analysis is late, and the wait is logged when it
starts and then only now and then."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mvpipe.errors import InvalidInput
from mvpipe.pipeline.timeline import (
    ANALYSIS_CHECK_MAX_SECONDS,
    ANALYSIS_CHECK_SECONDS,
    ANALYSIS_USUAL_SECONDS,
    WAIT_LOG_SECONDS,
    Look,
    look_again,
)

#: The default `MVPIPE_ANALYSIS_WAIT_SECONDS`: how long a lost message holds a run.
WAIT = 360.0

#: The default `MVPIPE_RUN_STALE_SECONDS`: a waiting run's mark lasts that long from each look.
STALE = 300.0

ages = st.floats(min_value=0, max_value=4000, allow_nan=False)


def looked(age: float, log_after: int, stale: float = STALE) -> Look:
    """`look_again` at the default staleness unless told."""
    return look_again(age, log_after, run_stale_seconds=stale)


def wait_out(wait: float = WAIT) -> tuple[int, list[float]]:
    """A wait for an analysis that never ends, look by look as the task makes them: how many
    looks, and the ages at which the wait was logged."""
    age, log_after, looks, logged = 0.0, 0, 0, []
    while age < wait:
        look = looked(age, log_after)
        looks += 1
        if look.logs:
            logged.append(age)
        age, log_after = age + look.pause, look.log_after
    return looks, logged


def test_a_lost_analysis_costs_a_few_looks_and_log_lines_not_one_every_quarter_second() -> None:
    looks, logged = wait_out()
    # 1,440 looks and log lines at a steady 0.25 s before
    assert looks < 200, looks
    assert logged[0] == 0.0  # the wait is logged when it starts
    assert len(logged) <= WAIT / WAIT_LOG_SECONDS + 1, logged
    gaps = [b - a for a, b in itertools.pairwise(logged)]
    assert all(WAIT_LOG_SECONDS - 1 <= gap <= 30 for gap in gaps), gaps


def test_an_analysis_on_time_is_looked_at_as_often_as_before() -> None:
    for age in (0.0, 1.0, ANALYSIS_USUAL_SECONDS):
        assert looked(age, 0).pause == ANALYSIS_CHECK_SECONDS
    assert looked(ANALYSIS_USUAL_SECONDS + 10, 0).pause > ANALYSIS_CHECK_SECONDS
    assert looked(WAIT, 0).pause == ANALYSIS_CHECK_MAX_SECONDS


@given(age=ages, log_after=st.integers(0, 5000))
def test_a_look_logs_once_its_age_reaches_the_mark_and_sets_the_next(
    age: float, log_after: int
) -> None:
    look = looked(age, log_after)
    assert look.logs == (age >= log_after)
    if look.logs:  # not again for a while: from the next whole second past the interval
        assert age + WAIT_LOG_SECONDS - 1 < look.log_after <= age + WAIT_LOG_SECONDS
        assert not looked(age, look.log_after).logs
    else:
        assert look.log_after == log_after
    assert ANALYSIS_CHECK_SECONDS <= look.pause <= ANALYSIS_CHECK_MAX_SECONDS


@given(earlier=ages, later=ages)
def test_the_looks_only_slow_down_as_the_analysis_grows_late(earlier: float, later: float) -> None:
    earlier, later = sorted((earlier, later))
    assert looked(earlier, 0).pause <= looked(later, 0).pause


@pytest.mark.parametrize(
    ("age", "log_after"),
    [(-0.001, 0), (-5.0, 3), (math.nan, 0), (math.inf, 0), (-math.inf, 0), (1.0, -1)],
)
def test_an_age_or_mark_that_cannot_be_is_refused(age: float, log_after: int) -> None:
    with pytest.raises(InvalidInput):
        looked(age, log_after)


@given(age=st.floats(max_value=-1e-9) | st.just(math.nan), log_after=st.integers(0, 100))
def test_any_negative_or_undefined_age_is_refused(age: float, log_after: int) -> None:
    with pytest.raises(InvalidInput):
        looked(age, log_after)


@pytest.mark.parametrize("log_after", [True, 1.5, "3", None])
def test_a_mark_that_is_not_a_whole_number_is_refused(log_after: object) -> None:
    with pytest.raises(InvalidInput):
        looked(1.0, log_after)  # type: ignore[arg-type]


@given(age=ages, stale=st.floats(min_value=0.01, max_value=1000))
def test_a_waiting_run_looks_again_before_its_mark_lapses(age: float, stale: float) -> None:
    # each look marks the run alive for `stale` seconds: a longer pause lets reconcile take a
    # healthy waiting run over (the drills run at 4 s, where a late analysis paused 4.75 s)
    assert looked(age, 0, stale).pause <= stale / 4


@pytest.mark.parametrize("stale", [0.0, -1.0, math.nan, math.inf])
def test_a_staleness_that_cannot_be_is_refused(stale: float) -> None:
    with pytest.raises(InvalidInput):
        looked(1.0, 0, stale)
