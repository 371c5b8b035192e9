"""The give-back of a lease no job was submitted under (its reservation refunded), and its
redo after an outage (`LeasePending`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from mvpipe.errors import ConfigurationError, ProviderError, StoreUnavailable
from mvpipe.pipeline.operation_base import OperationBase
from mvpipe.pipeline.steps import LeasePending, Next, Step
from mvpipe.store.records import SceneRecord


class GiveBack(OperationBase):
    """A lease under which the provider surely accepted no job ended: the scene failed or
    pending again, its reservation refunded as much as is known unspent."""

    @contextmanager
    def pending(self, token: str, release: dict[str, Any]) -> Iterator[None]:
        """An outage inside (our store or Redis: the write's outcome unknown) becomes a
        `LeasePending` whose next step redoes `release` under `token` (see `give_back`)."""
        try:
            yield
        except (StoreUnavailable, redis.RedisError) as exc:
            self.keep_owed()
            raise LeasePending({**self.carry(), "token": token, "release": release}) from exc

    def give_back(self, token: str, release: dict[str, Any]) -> bool:
        """End the lease `token` under which the provider surely accepted no job: fail the
        scene (`release["fail"]`) or make it `pending` again, giving back `refund_micros` of
        the reservation. Conditioned on the lease still holding the token with no operation,
        so it refunds nothing when the claim never landed or another owner took over; an outage
        leaves it to the next step (`LeasePending`). Never for a job that may have started."""
        refund = int(release.get("refund_micros", 0))
        unknown = int(release.get("unknown_micros", 0))
        error = str(release.get("error") or "lease given back")
        with self.pending(token, release):
            if release.get("fail"):
                return self.ctx.scenes.fail(
                    *self.ids,
                    error=error,
                    token=token,
                    stage=self.fields,
                    refund_micros=refund,
                    unknown_micros=unknown,
                )
            return self.ctx.scenes.release_lease(
                *self.ids,
                token=token,
                error=error,
                unused=bool(release.get("unused")),
                stage=self.fields,
                refund_micros=refund,
                unknown_micros=unknown,
            )

    def resume_give_back(self, token: str, release: dict[str, Any]) -> Step:
        """The next step after a `LeasePending`: redo the give-back, then go on as its first
        try meant to (the scene failed, or a new claim after a short wait)."""
        self.give_back(token, release)
        self.log(f"lease given back: {release.get('error')}", None, None)
        if release.get("fail"):
            return self.x.finished("failed")
        return Step(Next.RETRY_SUBMIT, "lease given back", self.s.backoff_base, self.carry())

    def refund(self, exc: Exception, price: int, scene: SceneRecord) -> int:
        """What a failed submit gives back of its reservation: all of it when the provider
        surely accepted no job (it answered with a refusal, or the request never left), else
        nothing. A timeout or a reset may have started a billed job (invariant 3): the money
        stays committed, and on the scene's cost, so a recount keeps it too."""
        refused = isinstance(exc, ConfigurationError) or (
            isinstance(exc, ProviderError) and exc.refused
        )
        if refused:
            self.x.cost_micros = scene.cost_micros
        return price if refused else 0

    @staticmethod
    def after_submit(refund: int, price: int, error: str) -> dict[str, Any]:
        """The give-back of a failed submit: `refund` of its reservation back, the rest kept
        and noted as held by a submit whose outcome is unknown."""
        return {"refund_micros": refund, "unknown_micros": price - refund, "error": error}
