"""Once a job is found done: its cut first, or the due polls of the jobs still running."""

from __future__ import annotations

from mvpipe.pipeline.job_polls import polls_first


def test_a_cut_waits_behind_the_polls_of_jobs_still_running() -> None:
    assert polls_first({"a": 3}, "a")  # its own project's other jobs
    assert polls_first({"a": 1, "b": 3}, "b")  # the busiest project's cut


def test_a_cut_goes_on_when_nothing_else_runs() -> None:
    assert not polls_first({}, "a")
    assert not polls_first({"a": 0}, "a")


def test_a_lighter_projects_cut_is_not_kept_behind_a_busier_ones_polls() -> None:
    # holding fewer slots than the busiest, even counting the one it just freed
    assert not polls_first({"a": 0, "b": 3}, "a")
    assert not polls_first({"b": 2}, "a")
    assert polls_first({"a": 1, "b": 2}, "a")  # 1 + the freed slot = 2: not lighter
