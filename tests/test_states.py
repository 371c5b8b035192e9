"""The pure rules: project status from scenes, lease expiry, backoff."""

import math
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.states import (
    SCENE_CHECK_POLLS,
    START_SKEW_SECONDS,
    Counters,
    assembly_due,
    backoff_seconds,
    carried_start,
    job_overran,
    lease_expired,
    project_status,
    scene_read_due,
    started_seconds,
)

statuses = st.lists(st.sampled_from(list(SceneStatus)), max_size=30)


def test_all_completed_is_completed_only_with_the_final_video() -> None:
    counters = Counters.of([SceneStatus.COMPLETED] * 3)
    for run_active in (True, False):
        status = project_status(counters, planned=True, run_active=run_active, final_video=True)
        assert status == ProjectStatus.COMPLETED
    assert project_status(counters, planned=True, run_active=True) == ProjectStatus.ASSEMBLING
    assert project_status(counters, planned=True, run_active=False) == ProjectStatus.PENDING
    assert assembly_due(counters, final_video=False)
    assert not assembly_due(counters, final_video=True)
    assert not assembly_due(Counters.of([]), final_video=False)
    partly = Counters.of([SceneStatus.COMPLETED, SceneStatus.FAILED])
    assert not assembly_due(partly, final_video=False)


def test_failed_only_when_nothing_is_open() -> None:
    open_ = Counters.of([SceneStatus.FAILED, SceneStatus.PENDING])
    closed = Counters.of([SceneStatus.FAILED, SceneStatus.COMPLETED])
    assert project_status(open_, planned=True, run_active=False) == ProjectStatus.PENDING
    assert project_status(closed, planned=True, run_active=False) == ProjectStatus.FAILED


def test_active_run_is_processing_or_planning() -> None:
    counters = Counters.of([SceneStatus.PENDING])
    assert project_status(counters, planned=True, run_active=True) == ProjectStatus.PROCESSING
    empty = Counters.of([])
    assert project_status(empty, planned=False, run_active=True) == ProjectStatus.GENERATING_SCENES
    assert project_status(empty, planned=False, run_active=False) == ProjectStatus.PENDING
    assert (
        project_status(empty, planned=False, run_active=False, planning_failed=True)
        == ProjectStatus.FAILED
    )


@given(statuses, st.booleans(), st.booleans(), st.sampled_from(["planned", "unplanned", "failed"]))
def test_status_rule_matches_design(
    scene_statuses: list[SceneStatus], run_active: bool, final_video: bool, plan: str
) -> None:
    # docs/DESIGN.md invariant 5, each status both ways: planned, not planned yet (a partial
    # plan's scenes, or none), or not planned because planning failed
    planned, planning_failed = plan == "planned", plan == "failed"
    # scenes are worked on only once their plan is saved whole: a project not planned has
    # none, or a partial plan's, all pending
    assume(planned or all(s == SceneStatus.PENDING for s in scene_statuses))
    counters = Counters.of(scene_statuses)
    status = project_status(
        counters,
        planned=planned,
        run_active=run_active,
        planning_failed=planning_failed,
        final_video=final_video,
    )
    all_done = bool(scene_statuses) and all(s == SceneStatus.COMPLETED for s in scene_statuses)
    nothing_open = not any(
        s in (SceneStatus.PENDING, SceneStatus.PROCESSING) for s in scene_statuses
    )
    scene_failed = nothing_open and SceneStatus.FAILED in scene_statuses
    assert (status == ProjectStatus.COMPLETED) == (all_done and final_video)
    assert (status == ProjectStatus.ASSEMBLING) == (all_done and run_active and not final_video)
    assert (status == ProjectStatus.FAILED) == (
        not run_active and (planning_failed or scene_failed)
    )
    running = {ProjectStatus.GENERATING_SCENES, ProjectStatus.PROCESSING}
    assert (status in running) == (run_active and not all_done)
    assert (status == ProjectStatus.GENERATING_SCENES) == (
        run_active and not all_done and not planned
    )
    assert (status == ProjectStatus.PENDING) == (
        not run_active and not (all_done and final_video) and not (planning_failed or scene_failed)
    )
    assert counters.scene_count == len(scene_statuses)
    assert counters.completed_scenes + counters.failed_scenes + counters.open_scenes == len(
        scene_statuses
    )


def test_a_job_overran_only_when_its_recorded_start_is_longer_ago_than_the_limit() -> None:
    start = "2026-01-01T00:00:00.000000+00:00"
    at = 1767225600.0  # that moment, in epoch seconds
    assert not job_overran(start, at + 7200, 7200)
    assert job_overran(start, at + 7200.5, 7200)
    # no start recorded, or one that cannot be read as a UTC time: no limit, nothing failed
    for unknown in (None, "", "yesterday", "2026-01-01T00:00:00"):
        assert not job_overran(unknown, at + 10**9, 1)


def test_a_recorded_start_reads_as_epoch_seconds_or_unknown() -> None:
    assert started_seconds("2026-01-01T00:00:00.000000+00:00") == 1767225600.0
    for unknown in (None, "", "yesterday", "2026-01-01T00:00:00"):
        assert started_seconds(unknown) is None


def test_a_running_jobs_poll_reads_its_scene_every_scene_check_polls_within_its_time() -> None:
    now, limit = 1767225600.0, 7200.0
    started = now - 60
    # `unread`: running polls since the last read (which starts the count again)
    due = [scene_read_due(started, unread, now, limit) for unread in range(SCENE_CHECK_POLLS + 2)]
    assert due == [False] * (SCENE_CHECK_POLLS - 1) + [True] * 3
    assert scene_read_due(started, 0, now, limit, every=1)  # every poll


def test_a_running_jobs_poll_reads_its_scene_once_the_carried_start_is_past_the_limit() -> None:
    now, limit = 1767225600.0, 7200.0
    assert not scene_read_due(now - limit, 0, now, limit)
    assert scene_read_due(now - limit - 0.5, 0, now, limit)
    # a start a little ahead (another worker's clock) is believed, not one further ahead
    assert not scene_read_due(now + START_SKEW_SECONDS, 0, now, limit)
    assert scene_read_due(now + START_SKEW_SECONDS + 1, 0, now, limit)


def test_a_carried_start_or_count_that_cannot_be_believed_reads_the_scene() -> None:
    now, limit = 1767225600.0, 7200.0
    bad_starts: list[object] = [None, "1767225600.0", True, 1767225600, math.nan, math.inf,
                                -math.inf, [now], {"t": now}]  # fmt: skip
    for start in bad_starts:
        assert carried_start(start, now) is None, start
        assert scene_read_due(start, 0, now, limit), start
    for unread in (-1, 1.0, True, "0", None, [0]):
        assert scene_read_due(now - 60, unread, now, limit), unread
    assert carried_start(now - 60, now) == now - 60


def test_invalid_limits_of_our_own_are_a_bug_not_a_read() -> None:
    now = 1767225600.0
    for args in ((math.nan, 7200.0), (now, math.inf), (now, 0.0), (now, -1.0)):
        with pytest.raises(ValueError):
            scene_read_due(now, 0, *args)
    for every in (0, -1, True):
        with pytest.raises(ValueError):
            scene_read_due(now, 0, now, 7200.0, every=every)


def test_lease_expiry() -> None:
    assert lease_expired(None, 100.0)
    assert lease_expired(99.0, 100.0)
    assert not lease_expired(101.0, 100.0)


@given(st.integers(min_value=1, max_value=40), st.integers(min_value=0, max_value=2**32))
def test_backoff_grows_and_is_capped(attempt: int, seed: int) -> None:
    rng = random.Random(seed)
    delay = backoff_seconds(attempt, base=1.0, cap=60.0, rng=rng)
    step = min(60.0, 2.0 ** (attempt - 1))
    assert step / 2 <= delay <= step


class _TopOfRange(random.Random):
    """Jitter that always draws the top of its range: the delay is the whole step."""

    def uniform(self, a: float, b: float) -> float:
        return b


@given(
    st.integers(min_value=1, max_value=10**30),
    st.floats(min_value=1e-3, max_value=1e3),
    st.floats(min_value=1e-3, max_value=1e6),
)
def test_backoff_never_overflows_and_huge_attempts_wait_the_cap(
    attempt: int, base: float, cap: float
) -> None:
    delay = backoff_seconds(attempt, base=base, cap=cap, rng=_TopOfRange())
    assert 0 < delay <= cap
    if attempt >= 2048:  # past any float's doublings: the step is the cap
        assert delay == cap
    assert backoff_seconds(attempt + 10**6, base=base, cap=cap, rng=_TopOfRange()) == cap


@given(
    st.integers(min_value=-(10**6), max_value=0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_backoff_rejects_invalid_arguments(attempt: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_seconds(attempt, base=1.0, cap=60.0)
    if not (0 < base < math.inf and 0 < cap < math.inf):
        with pytest.raises(ValueError, match="base and cap"):
            backoff_seconds(1, base=base, cap=cap)


def test_backoff_rejects_negative_and_zero_arguments() -> None:
    with pytest.raises(ValueError):
        backoff_seconds(-5, base=-1, cap=-60)
    with pytest.raises(ValueError):
        backoff_seconds(3, base=0.0, cap=60.0)


def test_backoff_is_jittered() -> None:
    rng = random.Random(1)
    delays = {backoff_seconds(5, base=1.0, cap=60.0, rng=rng) for _ in range(20)}
    assert len(delays) > 1
