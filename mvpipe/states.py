"""Pure state rules: what a project's status is, when a lease has expired, how long to back off.

No I/O here, so every rule is tested without servers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from mvpipe.models import ProjectStatus, SceneStatus

FINAL_SCENE_STATES = frozenset({SceneStatus.COMPLETED, SceneStatus.FAILED})
OPEN_SCENE_STATES = frozenset({SceneStatus.PENDING, SceneStatus.PROCESSING})


@dataclass(frozen=True)
class Counters:
    """A project's counters, always derived from its scenes (invariant 4)."""

    scene_count: int
    completed_scenes: int
    failed_scenes: int
    open_scenes: int

    @classmethod
    def of(cls, statuses: Iterable[SceneStatus]) -> Counters:
        values = list(statuses)
        return cls(
            scene_count=len(values),
            completed_scenes=sum(1 for s in values if s == SceneStatus.COMPLETED),
            failed_scenes=sum(1 for s in values if s == SceneStatus.FAILED),
            open_scenes=sum(1 for s in values if s in OPEN_SCENE_STATES),
        )


def project_status(
    counters: Counters,
    *,
    planned: bool,
    run_active: bool,
    planning_failed: bool = False,
    final_video: bool = False,
) -> ProjectStatus:
    """Invariant 5: the project's status follows from its scenes, its final video and whether a
    run is active. All scenes completed is `completed` only with the final video recorded; until
    then the run assembles it, and without a run the project waits (`pending`) for one."""
    if counters.scene_count and counters.completed_scenes == counters.scene_count:
        if final_video:
            return ProjectStatus.COMPLETED
        return ProjectStatus.ASSEMBLING if run_active else ProjectStatus.PENDING
    if run_active:
        return ProjectStatus.PROCESSING if planned else ProjectStatus.GENERATING_SCENES
    if planning_failed and not planned:
        return ProjectStatus.FAILED
    if counters.scene_count and counters.open_scenes == 0 and counters.failed_scenes:
        return ProjectStatus.FAILED
    return ProjectStatus.PENDING


def assembly_due(counters: Counters, *, final_video: bool) -> bool:
    """Every scene is completed but the final video is not recorded: the run assembles it."""
    return bool(counters.scene_count) and (
        counters.completed_scenes == counters.scene_count and not final_video
    )


def lease_expired(expires_at: float | None, now: float) -> bool:
    return expires_at is None or expires_at <= now


def started_seconds(started_at: str | None) -> float | None:
    """A job's recorded start (UTC ISO time) in epoch seconds; None when not recorded or
    unreadable (a scene written before starts were recorded, a time without its zone)."""
    if not started_at:
        return None
    try:
        started = datetime.fromisoformat(started_at)
    except ValueError:
        return None
    if started.tzinfo is None:
        return None
    return started.timestamp()


def job_overran(started_at: str | None, now: float, limit_seconds: float) -> bool:
    """Whether a job claimed at `started_at` (UTC ISO time) still runs more than
    `limit_seconds` later. A start not recorded or unreadable (a scene written before starts
    were recorded) sets no limit: nothing paid is failed on a guess."""
    started = started_seconds(started_at)
    return started is not None and now - started > limit_seconds


#: A running job's counted polls read its scene once in this many, for the superseded check
#: (the scene gone, or regenerated over the job): at the usual 10 s poll a superseded job's
#: chain ends, and its quota slot is freed, within a minute, for one store read a minute
#: instead of one a poll. The time limit does not wait for it: the start its polls carry says
#: when the limit is passed.
SCENE_CHECK_POLLS = 6

#: How far in the future a carried job start may lie (workers' clocks differ a little); one
#: further ahead is not believed: the scene is read instead.
START_SKEW_SECONDS = 30.0


def carried_start(value: object, now: float) -> float | None:
    """The job start a poll's message carried, when it can be believed: a finite float (epoch
    seconds) at most `START_SKEW_SECONDS` ahead of `now`. None (unknown) for anything else,
    which a message from an older worker, reconcile, or a tampered one may carry."""
    if not isinstance(value, float) or not math.isfinite(value):
        return None
    return value if value <= now + START_SKEW_SECONDS else None


def scene_read_due(
    started: object,
    unread_polls: object,
    now: float,
    limit_seconds: float,
    every: int = SCENE_CHECK_POLLS,
) -> bool:
    """Whether a counted poll that finds its job running reads the scene (the time limit and
    the superseded check): when the carried start (`carried_start`) is unknown or says the
    job is past `limit_seconds`, or when this poll is the `every`-th since the scene was last
    read (`unread_polls`: counted running polls since then, this one not included, a whole
    number from 0; anything else is unknown too). Unknown always reads: a bad message costs
    a read, never a missed check. `now`, `limit_seconds` and `every` are ours, not carried:
    invalid ones are a bug (`ValueError`)."""
    if not math.isfinite(now) or not math.isfinite(limit_seconds) or limit_seconds <= 0:
        raise ValueError("now and limit_seconds must be finite, the limit positive")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError("every must be a whole number from 1")
    start = carried_start(started, now)
    if start is None or now - start > limit_seconds:
        return True
    if isinstance(unread_polls, bool) or not isinstance(unread_polls, int) or unread_polls < 0:
        return True
    return unread_polls + 1 >= every


def backoff_seconds(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with "equal jitter": at least half the step, never above the cap.

    `attempt` counts from 1. Half of the delay is fixed so retries really spread out over time;
    the other half is random so many scenes failing together do not retry together. Outage
    retries are unbounded, so any attempt count must work: once the doublings reach the cap
    (compared in log space) the step is the cap, and no power is ever computed past it.
    """
    if attempt < 1:
        raise ValueError(f"backoff attempt counts from 1, got {attempt}")
    if not (0 < base < math.inf and 0 < cap < math.inf):
        raise ValueError(f"backoff base and cap must be positive and finite, got {base}, {cap}")
    doublings = attempt - 1
    if doublings >= math.log2(cap) - math.log2(base):
        step = cap
    else:
        step = min(cap, base * 2.0**doublings)
    return step / 2 + (rng or random).uniform(0, step / 2)
