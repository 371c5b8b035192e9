"""What every mvpipe task shares: argument checks, the store-outage retry, the dispatcher."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from celery import Signature, Task
from celery.exceptions import Ignore, Reject

from mvpipe.celery_app import app
from mvpipe.deps import Context, get_context, get_settings
from mvpipe.errors import Conflict, InvalidInput, MvpipeError, StoreUnavailable, UnexpectedError
from mvpipe.messaging.dispatch import CeleryDispatcher
from mvpipe.models import is_project_id, validate_project_id, validate_run_id, validate_sequence
from mvpipe.pipeline.stages import BY_NAME
from mvpipe.providers.classify import describe, scrub
from mvpipe.settings import Settings
from mvpipe.states import backoff_seconds
from mvpipe.tasks.failures import OUTAGES, UNEXPECTED, next_outage_retry, next_retry

dispatcher = CeleryDispatcher(app)
log = logging.getLogger("mvpipe.tasks")
T = TypeVar("T")

#: What an outage raises (the store or Redis away): retried for as long as it lasts. A task
#: builds its context inside the `try` that catches them: the context's first use in a process
#: reaches the store (`Context.ensure_storage`).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (StoreUnavailable, redis.RedisError)
#: An outage, or a `Conflict` where the store moved on while a task wrote: retried alike, the
#: next execution reading it again.
RETRIED_ERRORS: tuple[type[Exception], ...] = (*OUTAGE_ERRORS, Conflict)

#: The Redis transport's priority (0 comes first) of a step queued behind other work: a scene's
#: next stage deferred so the scenes its freed slot woke start first (`Step.behind`).
BEHIND_PRIORITY = 6
#: The priority of a scene's first message when it can only wait for a slot
#: (`fairness.waits_alone`): fetched after any other project's first claims.
WAITING_PRIORITY = 3


class MvpipeTask(Task):
    """Tasks that retry only on purpose: `max_retries=None` (polling must not be capped)."""

    max_retries = None
    acks_late = True
    reject_on_worker_lost = True

    def outage_retry(self, exc: Exception, kwargs: dict[str, Any]) -> Exception:
        """Retry after a backoff, however many outages came before (counted in `kwargs`'
        `outages`). Celery logs the cause and keeps it in the result backend, so it travels as
        scrubbed text (a secret in an error message must not reach either). The returned `Retry`
        is raised by the caller `from None`: raised inside an `except` it would carry the raw
        exception as its context into the stored traceback."""
        carried = next_outage_retry(kwargs)
        return self.backoff_retry(StoreUnavailable, exc, carried, carried[OUTAGES])

    def owed_retry(
        self,
        exc: Exception,
        kwargs: dict[str, Any],
        where: str,
        keep: Callable[[], None] | None = None,
    ) -> Exception:
        """`outage_retry` for a write owed for paid work (`RecordPending`, `LeasePending`):
        its message carries the only copy of an accepted job's id, or of a lease's give-back.
        Celery rejects a retry it cannot publish without requeue, which deletes this message,
        and the publish policy gives up within seconds (at once on a write the broker refuses:
        a Redis at `maxmemory` with `noeviction`). So this execution waits for the broker
        instead, publishing the retry again after each pause however long that takes; this
        message stays unacknowledged meanwhile, so a worker lost while it waits is as one
        lost while it records. `keep` renews the scene's owed mark before each publish (best
        effort: Redis away too is logged), so the mark outlasts the wait and reconcile never
        frees the scene for a second paid claim meanwhile; each pause is the backoff, at most
        `owed_retry_pause` (a broker back is used within it, before the mark's next renewal
        is due)."""
        refused = 0
        while True:
            if keep is not None:
                try:
                    keep()
                except OUTAGE_ERRORS as unkept:
                    log.warning("%s: its owed mark not renewed: %s", where, describe(unkept))
            try:
                return self.outage_retry(exc, kwargs)
            except Reject as rejected:
                refused += 1
                s = get_settings()
                backoff = backoff_seconds(refused, base=s.backoff_base, cap=s.backoff_max)
                wait = min(backoff, owed_retry_pause(s))
                refusal = rejected.__context__ or rejected  # Celery's failed publish
                log.warning("%s: %s; the broker refused its retry (%s): sent again in %.1f s",
                            where, describe(exc), describe(refusal), wait)  # fmt: skip
                time.sleep(wait)

    def unexpected_retry(
        self, exc: Exception, kwargs: dict[str, Any], limit: int
    ) -> Exception | None:
        """Retry an unexpected error after a backoff, counted apart from outages (in `kwargs`'
        `unexpected`: `failures.next_retry`); None once `limit` were retried, when the caller
        gives up. Raised like `outage_retry`'s, as an `UnexpectedError` (a bug is not shown as
        an outage)."""
        carried = next_retry(kwargs, UNEXPECTED, limit)
        if carried is None:
            return None
        return self.backoff_retry(UnexpectedError, exc, carried, carried[UNEXPECTED])

    def backoff_retry(
        self, kind: type[MvpipeError], exc: Exception, kwargs: dict[str, Any], step: int
    ) -> Exception:
        """The retry after backoff `step`, its cause `exc` described as a `kind`."""
        s = get_settings()
        countdown = backoff_seconds(step, base=s.backoff_base, cap=s.backoff_max)
        return self.scrubbed_retry(kind(describe(exc)), countdown, kwargs)

    def record_give_up(
        self,
        kwargs: dict[str, Any],
        record: Callable[[Context], T],
        logger: logging.Logger,
        what: str,
    ) -> T | None:
        """Write a give-up (`record`), its context built here: the task's own may never have
        been. An outage (or a `Conflict`: the project moved meanwhile) retries the task, whose
        next execution meets its error again and gives up again; anything else is logged, and
        None returned: a give-up that cannot be written must not end in a raw traceback."""
        try:
            return record(get_context())
        except RETRIED_ERRORS as outage:
            raise self.outage_retry(outage, kwargs) from None
        except Exception as unrecorded:
            logger.error("%s: give-up not recorded: %s", what, describe(unrecorded))
            return None

    def scrubbed_retry(
        self, cause: Exception, countdown: float, kwargs: dict[str, Any]
    ) -> Exception:
        """The `Retry` to raise (not raised here, where an `except` may be active)."""
        return self.retry(exc=cause, countdown=countdown, kwargs=kwargs, throw=False)

    def next_step(
        self,
        kwargs: dict[str, Any],
        countdown: float | None = None,
        queue: str | None = None,
        *,
        behind: bool = False,
    ) -> Signature:
        """This task's next message: same id, chord and group (as a retry's), new kwargs; on
        `queue` when given (a scene moving to its next stage), else where this one came from.
        `behind`: fetched only when its queue holds no other message (`BEHIND_PRIORITY`)."""
        request = self.request
        message = self.signature_from_request(
            request,
            tuple(request.args or ()),
            {**(request.kwargs or {}), **kwargs},
            queue=queue,
            countdown=countdown,
            retries=request.retries + 1,
        )
        # Set every time: a message would otherwise inherit the priority it was delivered with.
        return message.set(priority=BEHIND_PRIORITY if behind else 0)

    def delivered_on(self) -> str | None:
        """The queue this execution's message came from (None when not known)."""
        info = self.request.delivery_info or {}
        routing_key = info.get("routing_key")
        return str(routing_key) if routing_key else None

    def redelivered(self) -> bool:
        """This execution's message was delivered again (the Redis transport's flag on a
        message requeued or restored, e.g. after its pool process was lost): only then may a
        try before it have been lost (`pipeline.lost_tries`)."""
        info = self.request.delivery_info or {}
        return info.get("redelivered") is True

    def rerun_later(
        self,
        state: str,
        countdown: float,
        kwargs: dict[str, Any],
        progress: dict[str, Any],
        queue: str | None = None,
        *,
        behind: bool = False,
    ) -> Ignore:
        """Queue this task's next step after `countdown`, and show `state` until it runs.

        A `retry` would do the queueing too, but Flower and the result backend would then show
        every poll of a healthy scene as RETRY. Here the task keeps a custom state (POLLING,
        WAITING_FOR_SLOT, ...) with `progress` as its meta: a `task-<state>` event for Flower and
        the same meta in the result backend. Only the final step returns a result to the chord.
        """
        self.next_step(kwargs, countdown, queue, behind=behind).apply_async()
        try:  # progress is for people: it must never fail a step already queued
            self.update_state(state=state, meta=progress)
            self.send_event(f"task-{state.lower()}", retry=False, **progress)
        except Exception as exc:
            log.debug("could not publish progress of %s: %s", self.request.id, describe(exc))
        return Ignore()


def owed_retry_pause(s: Settings) -> float:
    """The longest pause between two publishes of an owed write's refused retry: a tenth of
    the liveness slack (3 s at the defaults), at least `backoff_base`. Far within the owed
    mark's life (`owed_write_seconds`: the slack and more), so the mark renewed before each
    publish never lapses, and a broker back is used within a few seconds."""
    return max(s.backoff_base, s.liveness_slack_seconds / 10)


def log_unexpected(logger: logging.Logger, where: str, exc: BaseException) -> None:
    """An error no task expected: one ERROR line (a log record per line keeps log search and
    alerting simple), the scrubbed traceback at DEBUG for whoever turns it on."""
    logger.error("unexpected error in %s: %s", where, describe(exc))
    if logger.isEnabledFor(logging.DEBUG):
        trace = scrub("".join(traceback.format_exception(exc)))
        logger.debug("traceback of the error in %s: %s", where, trace)


#: A lease's give-back carried to the next step (`LeasePending`): its keys and their types.
RELEASE_FIELDS: dict[str, type] = {
    "refund_micros": int,
    "unknown_micros": int,
    "unused": bool,
    "error": str,
    "fail": bool,
}


def checked_ids(
    project_id: Any,
    sequence: Any = None,
    *,
    run_id: Any,
    run_optional: bool = False,
    taken_over: Any = None,
    stage: Any = None,
    only: Any = None,
    release: Any = None,
    counts: dict[str, Any] | None = None,
) -> None:
    """Reject malformed messages up front, before anything is read or written: Celery's
    `Reject` (no requeue) ends them as failed tasks, so they never crash a worker nor come
    back, and the reason is logged. `run_optional`: a run id may be None (work outside a run).
    `taken_over`: the run a takeover's run replaced (`LostTries`), None or a run id.
    `only`: a list of sequences; `stage`: a stage's name; `release`: a carried give-back;
    `counts`: the failure counts a retry carries (`outages`, `unexpected`, ...) by their
    keyword, each a whole number from 0 (a wrong type would fail the retry itself, a negative
    one would never reach its limit)."""
    try:
        validate_project_id(project_id)
        if sequence is not None:
            validate_sequence(sequence)
        if run_id is not None or not run_optional:
            validate_run_id(run_id)
        if taken_over is not None:
            validate_run_id(taken_over)
        if stage is not None and stage not in BY_NAME:
            raise InvalidInput(f"invalid stage (expected one of {list(BY_NAME)})")
        if only is not None:
            if not isinstance(only, list):
                raise InvalidInput("invalid scene list: expected a list of sequences")
            for each in only:
                validate_sequence(each)
        if release is not None:
            _check_release(release)
        for name, value in (counts or {}).items():
            if not _is_amount(value):
                raise InvalidInput(f"invalid {name}: expected a whole number from 0")
    except InvalidInput as exc:
        reason = scrub(str(exc))  # what a message carries is echoed: never a secret in it
        log.warning("rejected a malformed message for project %s: %s", _shown(project_id), reason)
        raise Reject(reason, requeue=False) from None


def _check_release(release: Any) -> None:
    fields = RELEASE_FIELDS
    if not isinstance(release, dict) or not release.keys() <= fields.keys():
        raise InvalidInput(f"invalid release: expected an object with keys from {list(fields)}")
    for key, value in release.items():
        kind = fields[key]
        if not (_is_amount(value) if kind is int else isinstance(value, kind)):
            raise InvalidInput(f"invalid release: {key} must be a {kind.__name__}")


def _is_amount(value: Any) -> bool:
    """A whole number from 0. bool is an int: a flag given for an amount is malformed too."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _shown(project_id: Any) -> str:
    """The project id as a log line may show it (a malformed one is not echoed whole)."""
    return project_id if is_project_id(project_id) else "(malformed id)"


__all__ = [
    "OUTAGE_ERRORS",
    "RETRIED_ERRORS",
    "MvpipeTask",
    "app",
    "checked_ids",
    "dispatcher",
    "log_unexpected",
]
