"""What a conditional write that takes ownership (a submission lease, an operation id, a
regeneration's run) tells its caller."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Claim(StrEnum):
    WON = "won"  #: the caller holds the submission lease
    RUN_INACTIVE = "run_inactive"  #: the project's run is not the caller's any more
    NOT_CLAIMABLE = "not_claimable"  #: done, failed, owned by an operation or another lease
    EXHAUSTED = "exhausted"  #: no submissions left; the caller fails the scene
    OVER_BUDGET = "over_budget"  #: the job's price does not fit; the caller fails the scene


@dataclass(frozen=True)
class ClaimResult:
    outcome: Claim
    attempts: int = 0
    #: why an OVER_BUDGET claim did not fit (the scene's `lastError`)
    detail: str | None = None
