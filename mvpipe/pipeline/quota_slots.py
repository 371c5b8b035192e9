"""A paid stage's slots in its provider's quota pool (`providers.limiter`): taken, held by
the stored job, given on to the next waiter."""

from __future__ import annotations

import math
import time

from mvpipe.pipeline.operation_base import OperationBase
from mvpipe.providers.fairness import lighter
from mvpipe.providers.limiter import SlotDecision, job_member
from mvpipe.states import lease_expired

#: How much later than an unparked waiter a parked one checks its place by itself.
PARKED_SLOWDOWN = 10


class QuotaSlots(OperationBase):
    """The scene's place in its provider's quota pool: the submission slot it waits for and
    holds while it claims and submits, and the slot its stored job holds while it runs."""

    def slot_check_seconds(self, place: int) -> float:
        """When a waiter asks again by itself, by its place in line. A parked waiter is woken by
        the release that frees its slot, so its own check is only the fallback (a lost wake-up,
        a slot that expired with its worker) and comes `PARKED_SLOWDOWN` times later."""
        rounds = max(1, math.ceil(place / self.provider.limit))
        slowdown = PARKED_SLOWDOWN if self.x.park is not None else 1
        return min(self.s.backoff_max, self.provider.poll_seconds * rounds * slowdown)

    def acquire_slot(self, park: str | None = None) -> SlotDecision:
        """Take (or keep) this scene's place in the provider's quota pool. A slot granted is
        claimed under at once, and held until the job's record moves it (`hold_job_slot`):
        through the claim, the submit and the record's last try, which may outlast a poll's
        liveness by far (a slow store stretches the claim). It lasts as long as the claim's
        mark (`claim_mark_after`): a slot that expired first would let the quota's next
        waiter in beside a job still being submitted, one job over the limit."""
        return self.ctx.limiter.acquire(
            self.provider.pool,
            self.member,
            limit=self.provider.limit,
            ttl=self.s.claim_mark_after(self.provider.liveness_seconds),
            line_ttl=self.s.backoff_max * 2 + 30,
            park=park,
        )

    def job_member(self, operation_id: str) -> str:
        return job_member(*self.ids, self.stage.name, operation_id)

    def hold_job_slot(self, operation_id: str, *, moved: bool = False) -> None:
        """Count the stored job against the quota under its own slot (`limiter.job_member`),
        whatever the line: it runs at the provider already. `moved`: the scene's submission
        slot becomes the job's, in one step."""
        self.ctx.limiter.hold(
            self.provider.pool,
            self.job_member(operation_id),
            ttl=self.provider.liveness_seconds,
            moved_from=self.member if moved else None,
        )

    def release_slot(self, operation_id: str | None = None) -> None:
        """Free the slot of the job `operation_id` (None: the scene's submission slot), wake
        its new holder; when that is another project's scene, note whether this project held
        no more slots than that one (`fairness.lighter`: then its next stage is not deferred
        behind the wake-up)."""
        pool = self.provider.pool
        member = self.member if operation_id is None else self.job_member(operation_id)
        self.x.hand_on(self.ctx.limiter.release(pool, member, limit=self.provider.limit))
        if self.x.handed_over:
            held = self.ctx.limiter.slots_held(pool)
            self.x.lighter = lighter(held, self.x.project_id, self.x.handed_to)

    def leave_line(self) -> None:
        """A waiter of a cancelled run gives its place in line to the next live one."""
        self.x.hand_on(
            self.ctx.limiter.leave(self.provider.pool, self.member, limit=self.provider.limit)
        )

    def release_unowned_slot(self) -> None:
        """After a lost claim: the submission slot is shared by every execution of this scene
        that submits, and whoever created it need not be who won the claim (a duplicate may
        acquire first and lose). Release it unless a live lease submits under it: a stored job holds
        a slot of its own (`hold_job_slot`), which its owner's move takes whether or not the
        submission slot is still there."""
        scene = self.ctx.scenes.get(*self.ids)
        submitting = (
            scene is not None
            and scene.lease_token is not None
            and not lease_expired(scene.lease_expires_at, time.time())
            and self.stage.operation(scene) is None
        )
        if not submitting:
            self.release_slot()
