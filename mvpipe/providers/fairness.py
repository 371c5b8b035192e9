"""Who gets a freed provider slot: the waiting project with the fewest jobs in flight.

A big project started first must not hold every slot until it is nearly done while a small one
waits behind it. So a freed slot goes to the waiting project with the fewest jobs in flight, and
among projects with equally many, to the one served longest ago: each waiting project holds a
ticket, issued when it joins the line and again each time one of its scenes gets a slot, and the
lowest ticket goes first (round robin). Within a project, scenes go in the order they joined.

The limiter applies this rule inside Redis, in Lua, as one atomic step; this module states the
same rule in Python, apart from any I/O, so it can be read and tested on its own.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mvpipe.errors import InvalidInput

#: At most this many other projects are counted when a waiter's place is estimated, so a denied
#: request costs the same however many projects wait (the place only times a fallback check).
PLACE_SCAN = 256


@dataclass(frozen=True)
class ProjectLine:
    """One waiting project: its jobs in flight, its turn in the rotation and its waiters."""

    project: str
    #: slots this project holds now
    in_flight: int
    #: lower goes first among projects with equally many jobs in flight
    ticket: int
    #: slot members waiting, first in line first
    waiters: tuple[str, ...]


@dataclass(frozen=True)
class Admission:
    granted: bool
    #: how many more slots must free before a denied waiter's turn (at least 1); a lower bound:
    #: exact when no other project ties with it on the way, and new arrivals can still come first
    place: int = 0


def check_lines(lines: Sequence[ProjectLine]) -> None:
    """Reject a state the rule is not defined for (raises InvalidInput)."""
    projects: set[str] = set()
    tickets: set[int] = set()
    members: set[str] = set()
    for line in lines:
        if not line.project:
            raise InvalidInput("a waiting project needs an id")
        if line.project in projects:
            raise InvalidInput(f"project {line.project!r} is listed twice")
        if line.ticket in tickets or line.ticket < 0:
            raise InvalidInput(f"ticket {line.ticket} of {line.project!r} is negative or shared")
        if line.in_flight < 0:
            raise InvalidInput(f"project {line.project!r} has {line.in_flight} jobs in flight")
        if not line.waiters:
            raise InvalidInput(f"project {line.project!r} is listed with no waiters")
        if members.intersection(line.waiters) or len(set(line.waiters)) != len(line.waiters):
            raise InvalidInput(f"a waiter of {line.project!r} is in line twice")
        projects.add(line.project)
        tickets.add(line.ticket)
        members.update(line.waiters)


def allot(lines: Sequence[ProjectLine], slots: int) -> list[str]:
    """The waiters the next `slots` free slots go to, in order: each slot to the head of the
    project with the fewest jobs in flight, the lowest ticket among equals; that project then
    counts one more job in flight and takes a new ticket, behind every other."""
    check_lines(lines)
    if slots < 0:
        raise InvalidInput(f"cannot hand out {slots} slots")
    next_ticket = max((line.ticket for line in lines), default=0) + 1
    heap = [(line.in_flight, line.ticket, i) for i, line in enumerate(lines)]
    heapq.heapify(heap)
    taken = [0] * len(lines)
    picks: list[str] = []
    while heap and len(picks) < slots:
        in_flight, _, i = heapq.heappop(heap)
        picks.append(lines[i].waiters[taken[i]])
        taken[i] += 1
        if taken[i] < len(lines[i].waiters):
            heapq.heappush(heap, (in_flight + 1, next_ticket, i))
            next_ticket += 1
    return picks


def lighter(held: Mapping[str, int], project: str, woken: Iterable[str]) -> bool:
    """Whether `project`, even counting the slot it just freed, holds no more slots than each
    other project its freed slots woke a scene of (`held`: slots per project after the
    release): its next work need not wait behind their woken scenes. It waits only for a
    project holding fewer, as a freed slot itself goes to the fewest in flight; not for its
    equal or a busier one (after a large project's wave a small one often holds as many as the
    large one, and its cut would otherwise wait for every scene the large one's frees woke)."""
    mine = held.get(project, 0) + 1
    return all(held.get(other, 0) >= mine for other in woken if other != project)


def fewer_than_busiest(held: Mapping[str, int], project: str) -> bool:
    """Whether `project`, even counting the slot it just freed, holds fewer slots than the
    project holding the most (`held`: slots per project after the release): its work need not
    wait behind that busier project's due polls."""
    return held.get(project, 0) + 1 < max(held.values(), default=0)


def waits_alone(position: int, limit: int) -> bool:
    """Whether a run's scene dispatched at `position` (0 first) waits for a slot even with the
    whole quota of `limit` to its project: its first message can only join the line, so it can
    go behind other projects' first messages at no cost to its own project, and a project
    started a moment later joins the line before this one's long tail of waiters is read (not
    after it: the line serves the fewest in flight, but only among those already in it)."""
    if position < 0 or limit < 1:
        raise InvalidInput(f"no dispatch position {position} under a quota of {limit}")
    return position >= limit


def joined(
    lines: Sequence[ProjectLine], project: str, member: str, *, in_flight: int
) -> list[ProjectLine]:
    """The lines once `member` of `project` (holding `in_flight` slots) asks for a slot: at the
    back of its project's line, and a project new to the line at the back of the rotation."""
    check_lines(lines)
    if any(member in line.waiters for line in lines if line.project != project):
        raise InvalidInput(f"{member!r} waits for another project")
    out = list(lines)
    for i, line in enumerate(out):
        if line.project == project:
            if member not in line.waiters:
                out[i] = ProjectLine(project, line.in_flight, line.ticket, (*line.waiters, member))
            return out
    ticket = max((line.ticket for line in lines), default=0) + 1
    out.append(ProjectLine(project, in_flight, ticket, (member,)))
    return out


def slots_ahead(lines: Sequence[ProjectLine], member: str) -> int:
    """A lower bound on the grants that come before `member`'s if no one else arrives: its own
    project's waiters ahead of it; every grant other projects get while they hold fewer jobs
    than its project will when its turn comes; and one for each project that holds exactly
    that many now and would go first on ticket (only the first `PLACE_SCAN` of these projects
    in rotation order are counted, its own among them)."""
    check_lines(lines)
    mine = next((line for line in lines if member in line.waiters), None)
    if mine is None:
        raise InvalidInput(f"{member!r} is not waiting")
    rank = mine.waiters.index(member)
    level = mine.in_flight + rank
    near = sorted((line.in_flight, line.ticket, line) for line in lines if line.in_flight <= level)
    ahead = rank
    for in_flight, ticket, line in near[:PLACE_SCAN]:
        if line.project == mine.project:
            continue
        if in_flight < level:
            ahead += min(len(line.waiters), level - in_flight)
        elif rank > 0 or ticket < mine.ticket:  # by then its own ticket is newer than any now
            ahead += 1
    return ahead


def admit(
    lines: Sequence[ProjectLine], project: str, member: str, *, in_flight: int, free: int
) -> Admission:
    """The decision on a slot request by `member` (not holding one) when `free` slots are
    unheld: granted if it is among the waiters the free slots go to, else its place.

    Nothing in production calls this: the limiter takes the decision in Redis. It is the pure
    statement of that decision, the oracle the limiter's model-based test compares against."""
    after = joined(lines, project, member, in_flight=in_flight)
    if member in allot(after, max(free, 0)):
        return Admission(True)
    return Admission(False, max(1, slots_ahead(after, member) + 1 - max(free, 0)))
