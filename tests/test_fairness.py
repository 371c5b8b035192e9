"""The pure fair-share rule: which waiter a freed provider slot goes to."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mvpipe.errors import InvalidInput
from mvpipe.pipeline.plan import RunPlan
from mvpipe.providers.fairness import (
    ProjectLine,
    admit,
    allot,
    check_lines,
    joined,
    lighter,
    slots_ahead,
    waits_alone,
)


@st.composite
def line_states(draw: st.DrawFn, max_projects: int = 6) -> list[ProjectLine]:
    """Valid waiting lines: distinct projects, tickets and members, each with a waiter."""
    count = draw(st.integers(0, max_projects))
    tickets = draw(st.lists(st.integers(0, 50), min_size=count, max_size=count, unique=True))
    lines = []
    for i, ticket in enumerate(tickets):
        waiting = draw(st.integers(1, 6))
        members = tuple(f"p{i}:{n:03d}" for n in draw(st.permutations(range(waiting))))
        lines.append(ProjectLine(f"p{i}", draw(st.integers(0, 5)), ticket, members))
    return lines


def project_of(member: str) -> str:
    return member.partition(":")[0]


def by_project(lines: list[ProjectLine]) -> dict[str, ProjectLine]:
    return {line.project: line for line in lines}


def test_a_small_project_goes_before_a_big_one_that_asked_first() -> None:
    big = ProjectLine("big", in_flight=3, ticket=1, waiters=("big:004", "big:005"))
    small = ProjectLine("small", in_flight=0, ticket=2, waiters=("small:001", "small:002"))
    assert allot([big, small], 3) == ["small:001", "small:002", "big:004"]


def test_equals_take_turns_in_ticket_order() -> None:
    lines = [
        ProjectLine("a", 1, 7, ("a:1", "a:2")),
        ProjectLine("b", 1, 3, ("b:1", "b:2")),
        ProjectLine("c", 1, 5, ("c:1",)),
    ]
    assert allot(lines, 5) == ["b:1", "c:1", "a:1", "b:2", "a:2"]
    assert allot(lines, 9) == allot(lines, 5)  # nobody left to pick


@given(line_states(), st.integers(0, 40))
def test_only_waiters_are_picked_each_once(lines: list[ProjectLine], slots: int) -> None:
    picks = allot(lines, slots)
    waiting = [m for line in lines for m in line.waiters]
    assert len(picks) == len(set(picks)) == min(slots, len(waiting))
    assert set(picks) <= set(waiting)


@given(line_states(), st.integers(0, 40))
def test_each_pick_goes_to_a_project_with_the_fewest_in_flight(
    lines: list[ProjectLine], slots: int
) -> None:
    picks = allot(lines, slots)
    in_flight = {line.project: line.in_flight for line in lines}
    left = {line.project: len(line.waiters) for line in lines}
    for member in picks:
        project = project_of(member)
        fewest = min(n for p, n in in_flight.items() if left[p] > 0)
        assert in_flight[project] == fewest
        in_flight[project] += 1
        left[project] -= 1


@given(line_states(), st.integers(0, 40))
def test_a_projects_scenes_keep_their_order(lines: list[ProjectLine], slots: int) -> None:
    picks = allot(lines, slots)
    for line in lines:
        mine = [m for m in picks if project_of(m) == line.project]
        assert tuple(mine) == line.waiters[: len(mine)]


@given(line_states(), st.integers(1, 4), st.data())
def test_equals_are_served_round_robin(
    lines: list[ProjectLine], rounds: int, data: st.DataObject
) -> None:
    # Every project equally loaded, each with enough waiters: every round serves each once,
    # in the same order (lowest ticket first), whatever the round.
    level = data.draw(st.integers(0, 5))
    lines = [
        ProjectLine(
            line.project, level, line.ticket, tuple(f"{line.project}:{n}" for n in range(rounds))
        )
        for line in lines
    ]
    picks = [project_of(m) for m in allot(lines, rounds * len(lines))]
    first = [line.project for line in sorted(lines, key=lambda line: line.ticket)]
    assert picks == first * rounds


@given(line_states(), st.integers(0, 40))
def test_handing_out_one_more_slot_changes_no_earlier_pick(
    lines: list[ProjectLine], slots: int
) -> None:
    assert allot(lines, slots + 1)[:slots] == allot(lines, slots)


@given(line_states())
def test_a_waiters_place_is_a_lower_bound_on_the_grants_before_it(
    lines: list[ProjectLine],
) -> None:
    order = allot(lines, sum(len(line.waiters) for line in lines))
    for line in lines:
        for member in line.waiters:
            before = order.index(member)
            ahead = slots_ahead(lines, member)
            # Exact but for ties met on the way: at most one grant per other project.
            assert ahead <= before <= ahead + len(lines) - 1


@given(line_states(), st.integers(-2, 6), st.integers(0, 5))
def test_a_request_is_granted_when_a_free_slot_falls_to_it(
    lines: list[ProjectLine], free: int, in_flight: int
) -> None:
    project = "newcomer" if not lines else lines[0].project
    member = f"{project}:999"
    decision = admit(lines, project, member, in_flight=in_flight, free=free)
    after = joined(lines, project, member, in_flight=in_flight)
    assert decision.granted == (member in allot(after, max(free, 0)))
    assert decision.granted or decision.place >= 1


def test_a_newcomer_joins_at_the_back_of_the_rotation() -> None:
    lines = [ProjectLine("a", 0, 4, ("a:1",))]
    after = joined(lines, "b", "b:1", in_flight=0)
    assert by_project(after)["b"].ticket > 4
    assert allot(after, 2) == ["a:1", "b:1"]
    assert joined(after, "b", "b:1", in_flight=0) == after  # asking again keeps its place


@pytest.mark.parametrize(
    "lines",
    [
        [ProjectLine("a", 0, 1, ("a:1",)), ProjectLine("a", 0, 2, ("a:2",))],
        [ProjectLine("a", 0, 1, ("a:1",)), ProjectLine("b", 0, 1, ("b:1",))],
        [ProjectLine("a", -1, 1, ("a:1",))],
        [ProjectLine("a", 0, -1, ("a:1",))],
        [ProjectLine("a", 0, 1, ())],
        [ProjectLine("a", 0, 1, ("a:1", "a:1"))],
        [ProjectLine("a", 0, 1, ("x:1",)), ProjectLine("b", 0, 2, ("x:1",))],
        [ProjectLine("", 0, 1, ("a:1",))],
    ],
)
def test_invalid_lines_are_rejected(lines: list[ProjectLine]) -> None:
    with pytest.raises(InvalidInput):
        check_lines(lines)
    with pytest.raises(InvalidInput):
        allot(lines, 1)


def test_invalid_requests_are_rejected() -> None:
    lines = [ProjectLine("a", 0, 1, ("a:1",))]
    with pytest.raises(InvalidInput):
        allot(lines, -1)
    with pytest.raises(InvalidInput):
        slots_ahead(lines, "b:1")  # not waiting
    with pytest.raises(InvalidInput):
        joined(lines, "b", "a:1", in_flight=0)  # waits for another project


def test_a_project_defers_its_next_work_only_to_a_woken_project_holding_fewer() -> None:
    # Counts after the release; the woken scenes have not taken their slots yet.
    assert lighter({"large": 6, "small": 1}, "small", {"large"})
    assert lighter({"large": 3}, "small", {"large"})  # holds none now
    # Held 2 before, as many as the large one after its wave: its equal, not behind it.
    assert lighter({"large": 2, "small": 1}, "small", {"large"})
    assert not lighter({"large": 1, "small": 2}, "small", {"large"})  # 3 before, against 1
    assert not lighter({"large": 6, "small": 1}, "large", {"small"})  # the busier one
    assert not lighter({"large": 7}, "large", {"small"})  # the first slot freed for a newcomer
    assert not lighter({"b": 3}, "c", {"a", "b"})  # "a" holds fewer (none)
    assert lighter({"a": 3}, "a", {"a"})  # its own scenes are no other project


def test_only_a_runs_scenes_beyond_the_quota_wait_even_alone() -> None:
    # A run of 5 scenes under a quota of 2: its first two can hold a slot at once, the other
    # three can only join the line, whoever else asks.
    assert [waits_alone(position, 2) for position in range(5)] == [False, False, True, True, True]
    assert not any(waits_alone(position, 8) for position in range(8))
    for position, limit in ((-1, 2), (0, 0)):
        with pytest.raises(InvalidInput):
            waits_alone(position, limit)


def test_only_scenes_asking_for_a_slot_are_dispatched_as_waiters() -> None:
    # A taken-over run of 6 scenes under a quota of 2: scenes 2 and 4 hold a paid job already
    # (their polls must not go behind other projects' claims), so the claiming ones are
    # 1, 3, 5, 6 and the last two of them wait.
    plan = RunPlan("local", [1, 2, 3, 4, 5, 6], frozenset({1, 3, 5, 6}))
    assert plan.waiting(2) == {5, 6}
    assert plan.waiting(4) == set()
    assert RunPlan("local", [1, 2], frozenset()).waiting(1) == set()
    with pytest.raises(InvalidInput):
        plan.waiting(0)
