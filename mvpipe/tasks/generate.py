"""`mvpipe.generate_scene`: one step per execution; waiting is a retry with a countdown.

It never raises into the chord: outcomes are returned, outages retried, so `finalize_project`
always runs. Waiting steps re-queue the task under its own id with a custom state (POLLING,
WAITING_FOR_SLOT, BACKING_OFF) that Flower shows; only outages count as retries.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery.exceptions import Reject

from mvpipe.deps import get_context
from mvpipe.errors import InvalidInput, MvpipeError, StoreUnavailable
from mvpipe.pipeline.generate import SceneJob
from mvpipe.pipeline.steps import Next
from mvpipe.tasks.base import MvpipeTask, app, checked_ids, dispatcher

log = logging.getLogger("mvpipe.tasks.generate")

#: Unexpected errors tolerated per execution chain before the task gives up (reconcile heals).
MAX_UNEXPECTED = 10

#: The task state shown (Flower, result backend) while a scene waits for its next step.
WAITING_STATES = {
    Next.POLL: "POLLING",
    Next.WAIT_SLOT: "WAITING_FOR_SLOT",
    Next.RETRY_SUBMIT: "BACKING_OFF",
}


@app.task(base=MvpipeTask, bind=True, name="mvpipe.generate_scene")
def generate_scene(
    self: MvpipeTask,
    project_id: str,
    sequence: int,
    run_id: str | None,
    provider: str,
    operation_id: str | None = None,
    transient_polls: int = 0,
    outages: int = 0,
) -> dict[str, Any]:
    try:
        checked_ids(project_id, sequence)
    except InvalidInput as exc:
        raise Reject(str(exc), requeue=False) from None
    kwargs = {"operation_id": operation_id, "transient_polls": transient_polls, "outages": outages}
    ctx = get_context()
    try:
        step = SceneJob(ctx, project_id, sequence, run_id, provider).step(
            operation_id, transient_polls
        )
        if step.refinalize:
            sequences = ctx.board.run_sequences(run_id) if run_id else None
            dispatcher.finalize(project_id, run_id, sequences)
    except (StoreUnavailable, redis.RedisError) as exc:
        raise self.outage_retry(exc, kwargs, outages) from exc
    except MvpipeError as exc:
        log.warning("scene %s/%s: %s", project_id, sequence, exc)
        return {"project_id": project_id, "sequence": sequence, "outcome": f"error: {exc}"}
    except Exception as exc:
        log.exception("unexpected error in generate_scene %s/%s", project_id, sequence)
        if outages < MAX_UNEXPECTED:
            raise self.outage_retry(exc, kwargs, outages) from exc
        return {"project_id": project_id, "sequence": sequence, "outcome": f"error: {exc}"}
    if step.next == Next.DONE:
        return {"project_id": project_id, "sequence": sequence, "outcome": step.outcome}
    carry = {"operation_id": None, "transient_polls": 0, "outages": 0, **step.carry}
    progress = {
        "project_id": project_id,
        "sequence": sequence,
        "detail": step.outcome,
        "operation_id": carry["operation_id"],
        "steps": self.request.retries + 1,
        "next_step_in": round(step.countdown, 3),
    }
    raise self.rerun_later(WAITING_STATES[step.next], step.countdown, carry, progress)
