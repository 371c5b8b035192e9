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


def job_overran(started_at: str | None, now: float, limit_seconds: float) -> bool:
    """Whether a job claimed at `started_at` (UTC ISO time) still runs more than
    `limit_seconds` later. A start not recorded or unreadable (a scene written before starts
    were recorded) sets no limit: nothing paid is failed on a guess."""
    if not started_at:
        return False
    try:
        started = datetime.fromisoformat(started_at)
    except ValueError:
        return False
    if started.tzinfo is None:
        return False
    return now - started.timestamp() > limit_seconds


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
