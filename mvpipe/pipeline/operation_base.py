"""The state and the small shared acts of one paid stage of one scene, for one execution:
the base `PaidOperation` is built on (`pipeline.operation`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from mvpipe.errors import BrokerUnavailable
from mvpipe.pipeline.execution import Execution, log
from mvpipe.pipeline.stage_provider import StageProvider
from mvpipe.providers.classify import describe
from mvpipe.providers.limiter import slot_member

if TYPE_CHECKING:
    from mvpipe.pipeline.stages import Stage


class OperationBase:
    """What every part of the paid machine shares: the execution, the stage and its provider,
    the scene's quota member, the scene's liveness mark, a job's cancel, and the log."""

    def __init__(self, execution: Execution, stage: Stage, provider: StageProvider) -> None:
        if not stage.paid:
            raise ValueError(f"stage {stage.name} is not paid")
        self.x = execution
        self.ctx = execution.ctx
        self.s = execution.ctx.settings
        self.stage = stage
        self.fields = stage.fields
        self.provider = provider
        self.member = slot_member(execution.project_id, execution.sequence)
        self.points = stage.failpoints
        #: when the stage's job was claimed (epoch seconds), once this execution knows it: its
        #: polls carry it, so a running job's poll reads the scene only past the time limit
        self.job_started: float | None = None
        #: counted polls that found the job running since its scene was last read (carried)
        self.unread_polls: int = 0

    @property
    def ids(self) -> tuple[str, int]:
        return self.x.project_id, self.x.sequence

    def carry(self) -> dict[str, object]:
        return {"stage": self.stage.name}

    def log(self, message: str, operation_id: str | None, attempt: int | None) -> None:
        self.x.log(message, operation_id, attempt, self.stage.name)

    def keep_owed(self) -> None:
        """A write owed for paid work is left to the next step: the scene stays marked alive
        until that step marks it again (the lease may lapse first, the mark set at the claim
        too), or reconcile could free it for a second paid claim. With Redis out too, the
        next step marks it once it can."""
        self.mark(self.s.owed_after(self.provider.liveness_seconds), owed=True)

    def mark(self, seconds: float, *, shorten: bool = False, owed: bool = False) -> None:
        """Mark the scene alive (`Execution.touch`) where Redis down must not fail the step:
        the mark it leaves is the one already set, or none."""
        try:
            self.x.touch(seconds, shorten=shorten, owed=owed)
        except (BrokerUnavailable, redis.RedisError) as exc:
            log.warning("could not mark %s/%s alive: %s", *self.ids, describe(exc))

    def cancel(self, operation_id: str) -> bool:
        """True only when the provider confirms it stopped the job."""
        if not self.provider.can_cancel:
            return False
        try:
            return bool(self.provider.cancel(operation_id))
        except Exception as exc:
            log.warning("could not cancel operation %s: %s", operation_id, describe(exc))
            return False
