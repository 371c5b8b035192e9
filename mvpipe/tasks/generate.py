"""`mvpipe.generate_scene`: one step per execution; waiting is the next step queued with a
countdown, and a scene whose next stage runs elsewhere (the cut on `mvpipe.media`) queues its
next step there, under the same task id, so the chord still counts each scene once.

It never raises into the chord: outcomes are returned, outages retried (also one met by the
first store call of a fresh process), errors nobody expected retried `MAX_UNEXPECTED` times and
then given up on, so `finalize_project` always runs. Waiting steps re-queue the task under its
own id with a custom state (POLLING, WAITING_FOR_SLOT, BACKING_OFF) that Flower shows; only
failures (outages, unexpected errors) count as retries. A quota wait is sent twice, as a timed
check and as a wake-up parked with the limiter; whichever runs first owns the step and the
other ends without a result, so the chord counts each scene once.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import Ignore

from mvpipe.deps import get_context
from mvpipe.errors import Conflict, MvpipeError, NotFound
from mvpipe.models import micros_to_usd
from mvpipe.pipeline.finalize import refinalize
from mvpipe.pipeline.generate import SceneJob
from mvpipe.pipeline.runs import resume_freed
from mvpipe.pipeline.stages import STAGES
from mvpipe.pipeline.steps import LeasePending, Next, RecordPending
from mvpipe.providers.classify import describe
from mvpipe.tasks.base import (
    OUTAGE_ERRORS,
    MvpipeTask,
    app,
    checked_ids,
    dispatcher,
    log_unexpected,
)
from mvpipe.tasks.failures import OUTAGES, UNEXPECTED

log = logging.getLogger("mvpipe.tasks.generate")

#: Unexpected errors retried per step before the task gives up (outages are counted apart).
MAX_UNEXPECTED = 10

#: The kwargs a next step starts from (a stale copy tag must not carry over).
FRESH: dict[str, Any] = {
    "operation_id": None,
    "transient_polls": 0,
    OUTAGES: 0,
    "copy": None,
    "token": None,
    "attempt": 0,
    "stage": None,
    "made_from": None,
    "release": None,
    UNEXPECTED: 0,
    "job_started": None,
    "unread_polls": 0,
}
#: The two copies of a quota wait: the waiter's own timed check, and the wake-up it parks.
TIMED, WOKEN = "timed", "woken"
#: How long the first copy of a step is remembered (beyond any countdown or redelivery).
TWIN_SECONDS = 6 * 3600

#: The task state shown (Flower, result backend) while a scene waits for its next step.
WAITING_STATES = {
    Next.POLL: "POLLING",
    Next.WAIT_SLOT: "WAITING_FOR_SLOT",
    Next.RETRY_SUBMIT: "BACKING_OFF",
    Next.STAGE: "NEXT_STAGE",
}


def redo_kwargs(kwargs: dict[str, Any], carry: dict[str, Any]) -> dict[str, Any]:
    """The message that redoes an owed write (`RecordPending`, `LeasePending`): the step's own
    fields start fresh and only the counts carry on, then what the write owes. A field left
    from the message that ran (a poll's operation id) would make a lip-sync's give-back redo
    as the record of the generation job that message polled."""
    counts = {key: kwargs.get(key, 0) for key in (OUTAGES, UNEXPECTED)}
    return {**kwargs, **FRESH, **counts, **carry}


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
    copy: str | None = None,
    token: str | None = None,
    attempt: int = 0,
    stage: str | None = None,
    made_from: str | None = None,
    release: dict[str, Any] | None = None,
    unexpected: int = 0,
    job_started: float | None = None,
    unread_polls: int = 0,
    taken_over: str | None = None,
    redelivered: bool = False,
) -> dict[str, Any]:
    """`taken_over`: the scene's run took over that stale run; `redelivered`: reconcile resumed
    the scene, whose chain stopped (its whole worker lost): both follow a lost try
    (`LostTries`), and every later step of the chain carries them."""
    checked_ids(
        project_id,
        sequence,
        run_id=run_id,
        run_optional=True,
        taken_over=taken_over,
        stage=stage,
        release=release,
        counts={OUTAGES: outages, UNEXPECTED: unexpected},
    )
    scene = f"scene {project_id}/{sequence}"  # where an owed write's retry says it waits
    kwargs = {
        "operation_id": operation_id,
        "transient_polls": transient_polls,
        OUTAGES: outages,
        "copy": copy,
        "token": token,
        "attempt": attempt,
        "stage": stage,
        "made_from": made_from,
        "release": release,
        UNEXPECTED: unexpected,
        "job_started": job_started,
        "unread_polls": unread_polls,
        "taken_over": taken_over,
        "redelivered": redelivered,
    }

    def wake(woken: list[str]) -> set[str]:
        sent = dispatcher.wake(woken)
        log.info("slot freed by %s/%s: woke %d waiting scene(s)", project_id, sequence, sent)
        return {dispatcher.parked_project(m) or "" for m in woken} - {project_id}

    job: SceneJob | None = None
    failure: Exception | None = None
    try:
        ctx = get_context()  # its first use in a process reaches the store: an outage retries
        job = SceneJob(
            ctx,
            project_id,
            sequence,
            run_id,
            provider,
            park=lambda: dispatcher.parked(
                self.next_step({**FRESH, **_stage(stage), "copy": WOKEN})
            ),
            wake=wake,
            queue=_kept_queue(self),
            redelivered=redelivered is True or self.redelivered(),
            taken_over=taken_over,
        )
        if copy is not None and not ctx.board.first_copy(
            str(self.request.id), self.request.retries, copy, TWIN_SECONDS
        ):
            step = None  # the other copy of this step ran first
        else:
            step = job.step(
                operation_id,
                transient_polls,
                token=token,
                attempt=attempt,
                stage=stage,
                made_from=made_from,
                release=release,
                job_started=job_started,
                unread_polls=unread_polls,
            )
            if step.refinalize:
                refinalize(ctx, dispatcher, project_id, run_id)
            if step.freed:
                resume_freed(ctx, dispatcher, project_id, sequence, provider)
    except (RecordPending, LeasePending) as exc:  # redone with its token, however long it lasts
        redo = redo_kwargs(kwargs, exc.carry)
        raise _owed_retry(self, job, exc, redo, redo.get("stage"), scene) from None
    except OUTAGE_ERRORS as exc:
        if token is not None:  # a redo's own outage (its marks, its store): still owed
            raise _owed_retry(self, job, exc, kwargs, stage, scene) from None
        raise self.outage_retry(exc, kwargs) from None
    except (Conflict, NotFound) as exc:  # the store moved on: its new owner decides
        log.warning("scene %s/%s: %s", project_id, sequence, describe(exc))
        return _outcome(project_id, sequence, exc)
    except MvpipeError as exc:
        failure = exc
    except Exception as exc:
        log_unexpected(log, f"generate_scene {project_id}/{sequence}", exc)
        # A redo's retry goes through `owed_retry` below: a refused publish must not drop it
        retry = None if token is not None else self.unexpected_retry(exc, kwargs, MAX_UNEXPECTED)
        if retry is not None:
            raise retry from None
        failure = exc
    finally:
        if job is not None:
            job.x.send_wakes()  # a safety net: each release sends its own at once
    if failure is not None:
        if token is not None:
            # A record of a paid job, or a lease's give-back, is still owed (RecordPending,
            # LeasePending): failing the scene now would drop the operation id (or the refund)
            # it carries, so it is retried like an outage, however long that lasts.
            log.warning("scene %s/%s: %s; retrying the write it owes", project_id, sequence,
                        describe(failure))  # fmt: skip
            raise _owed_retry(self, job, failure, kwargs, stage, scene) from None
        if job is None:  # no context (the store refused it): nowhere to record the give-up
            log.error("scene %s/%s gave up before it could read the store: %s", project_id,
                      sequence, describe(failure))  # fmt: skip
            return _outcome(project_id, sequence, failure)
        return _give_up(self, job, failure, kwargs)
    if step is None:
        raise Ignore()
    assert job is not None  # built, or the step failed above
    if step.next == Next.DONE:
        return {"project_id": project_id, "sequence": sequence, "outcome": step.outcome}
    carry = {**FRESH, **step.carry}
    if step.next == Next.WAIT_SLOT:
        carry["copy"] = TIMED  # its twin, parked with the limiter, may run first
    progress = {
        "project_id": project_id,
        "sequence": sequence,
        "detail": step.outcome,
        "operation_id": carry["operation_id"],
        "steps": self.request.retries + 1,
        "next_step_in": round(step.countdown, 3),
        "stage": carry["stage"] or "generate",
        "cost_usd": micros_to_usd(job.cost_micros),  # None until this execution knows it
    }
    raise self.rerun_later(
        WAITING_STATES[step.next],
        step.countdown,
        carry,
        progress,
        queue=step.queue,
        behind=step.behind,
    )


def _owed_retry(
    task: MvpipeTask,
    job: SceneJob | None,
    exc: Exception,
    kwargs: dict[str, Any],
    stage: str | None,
    where: str,
) -> Exception:
    """`MvpipeTask.owed_retry` of a step that owes a write for `stage`'s paid work, keeping the
    scene's owed mark while it waits (none when the step built no job: no context)."""
    keep = job.owed_keeper(stage) if job is not None else None
    return task.owed_retry(exc, kwargs, where, keep)


def _kept_queue(task: MvpipeTask) -> str | None:
    """The queue this execution's stages must run on; None when this worker consumes every
    stage's queue: a stage bound elsewhere may then run here at once, where a move would only
    add a broker round trip and a whole task execution."""
    consumed = set(task.app.amqp.queues.consume_from)
    if all(stage.queue in consumed for stage in STAGES):
        return None
    return task.delivered_on()


def _stage(stage: str | None) -> dict[str, Any]:
    return {"stage": stage} if stage else {}


def _give_up(
    task: MvpipeTask, job: SceneJob, exc: Exception, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """No retry cures `exc`: the scene records why and fails unless paid work owns it
    (`SceneJob.give_up`). Still never raised into the chord: an outage meanwhile retries
    (that step meets the error again and gives up again), anything else is logged."""
    x = job.x
    error = describe(exc)
    log.warning("scene %s/%s gave up: %s", x.project_id, x.sequence, error)
    try:
        step = job.give_up(f"gave up: {error}")
        if step.refinalize:
            refinalize(job.ctx, dispatcher, x.project_id, x.run_id)
    except OUTAGE_ERRORS as outage:
        raise task.outage_retry(outage, kwargs) from None
    except Exception as unrecorded:
        log.error("scene %s/%s: give-up not recorded: %s", x.project_id, x.sequence,
                  describe(unrecorded))  # fmt: skip
    finally:
        x.send_wakes()
    return _outcome(x.project_id, x.sequence, exc)


def _outcome(project_id: str, sequence: int, exc: Exception) -> dict[str, Any]:
    return {"project_id": project_id, "sequence": sequence, "outcome": f"error: {describe(exc)}"}
