"""One step of a scene's generation: claim and submit, or poll, or finish.

Each call does a bounded amount of work and returns; waiting happens in the broker (a retry with a
countdown), never in a worker slot. Re-running a step is always safe: the lease, the stored
operation id and the conditions of the store decide who may do what (DESIGN.md invariants 1-3).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable

from mvpipe import failpoints
from mvpipe.deps import Context
from mvpipe.errors import (
    ConfigurationError,
    PermanentProviderError,
    TransientProviderError,
)
from mvpipe.models import SceneStatus
from mvpipe.pipeline.steps import Next, RecordPending, Step
from mvpipe.providers.base import JobState, JobStatus, VideoRequest
from mvpipe.providers.classify import describe
from mvpipe.providers.limiter import slot_member
from mvpipe.states import backoff_seconds, lease_expired
from mvpipe.store.clips import clip_key
from mvpipe.store.records import SceneRecord
from mvpipe.store.scenes import Claim

log = logging.getLogger("mvpipe.generate")

#: How much later than an unparked waiter a parked one checks its place by itself.
PARKED_SLOWDOWN = 10


class SceneJob:
    """One execution of `generate_scene` for (project, sequence) within a run."""

    def __init__(
        self,
        ctx: Context,
        project_id: str,
        sequence: int,
        run_id: str | None,
        provider: str,
        *,
        park: Callable[[], str] | None = None,
    ) -> None:
        """`park` makes the message that resumes this scene at once when a slot frees for it."""
        self.ctx = ctx
        self.s = ctx.settings
        self.project_id = project_id
        self.sequence = sequence
        self.run_id = run_id
        self.provider_name = provider
        self.member = slot_member(project_id, sequence)
        self.poll_seconds = self.s.poll_seconds_for(provider)
        self.park = park
        #: parked messages of waiting scenes this execution's released slot entitles to run
        self.wakes: list[str] = []
        #: what the scene has cost so far, once this execution knows it (task meta)
        self.cost_micros: int | None = None

    def step(
        self,
        operation_id: str | None = None,
        transient_polls: int = 0,
        *,
        token: str | None = None,
        attempt: int = 0,
    ) -> Step:
        """One step. With `token`, `operation_id` is a paid job whose record is still to be
        (re)done: that comes first, even in a cancelled run (the record decides the job's fate)."""
        board = self.ctx.board
        if self.run_id is not None:
            board.touch_run(self.run_id, self.s.run_stale_seconds)
        if operation_id is not None and token is not None:
            return self.record(operation_id, token, attempt)
        if self.run_id is not None and board.cancelled(self.run_id):
            self.leave_line()
            return Step.done("run cancelled")
        if operation_id is not None:
            return self.poll(operation_id, transient_polls)
        scene = self.ctx.scenes.get(self.project_id, self.sequence)
        if scene is None:
            return Step.done("scene missing")
        self.cost_micros = scene.cost_micros
        if scene.clip_key is not None or scene.status == SceneStatus.FAILED:
            return self.finished(f"already {scene.status}")
        if scene.operation_id is not None:
            self.log("resuming stored operation", scene.operation_id, scene.attempts)
            return self.poll(scene.operation_id, transient_polls)
        if scene.status == SceneStatus.PROCESSING and not lease_expired(
            scene.lease_expires_at, time.time()
        ):
            return Step.done("owned by another execution")
        return self.submit(scene)

    # -- submission ----------------------------------------------------------------------------
    def submit(self, scene: SceneRecord) -> Step:
        ctx, s = self.ctx, self.s
        if self.run_id is None:
            return Step.done("no run to submit under")
        try:
            price = s.video_price_micros(self.provider_name, scene.duration_seconds)
        except ConfigurationError as exc:  # unpriced paid work: no budget could hold it
            ctx.scenes.fail_open(self.project_id, self.sequence, error=str(exc))
            return self.finished("failed: no price")
        limit = s.concurrency_for(self.provider_name)
        slot = ctx.limiter.acquire(
            self.provider_name,
            self.member,
            limit=limit,
            ttl=s.liveness_seconds(self.provider_name),
            line_ttl=s.backoff_max * 2 + 30,
            park=self.park() if self.park is not None else None,
        )
        if not slot.granted:
            return Step(
                Next.WAIT_SLOT,
                f"waiting for a provider slot (place {slot.place})",
                self.slot_check_seconds(slot.place, limit),
            )
        token = uuid.uuid4().hex
        # Marked as polled before the operation can become visible, so reconcile never takes a
        # scene between submit and its first poll for an orphan. Nothing but the one write of
        # the operation id may stand between the provider accepting a job and that id stored.
        ctx.board.touch_scene(
            self.project_id, self.sequence, s.liveness_seconds(self.provider_name)
        )
        claimed_at = time.time()
        lease_end = claimed_at + s.lease_seconds
        with ctx.table.retry_until(lease_end - s.submit_budget_seconds):
            claim = ctx.scenes.claim(
                self.project_id,
                self.sequence,
                run_id=self.run_id,
                token=token,
                lease_seconds=s.lease_seconds,
                max_attempts=s.max_attempts,
                now=claimed_at,
                price_micros=price,
            )
        if claim.outcome != Claim.WON:
            if slot.fresh:  # a slot held already is the live owner's (we are its duplicate)
                self.release_slot()
            if claim.outcome == Claim.OVER_BUDGET:
                error = claim.detail or "over budget"
                ctx.scenes.fail_open(self.project_id, self.sequence, error=error)
                self.log(error, None, None)
                return self.finished("failed: over budget")
            if claim.outcome == Claim.EXHAUSTED:
                ctx.scenes.fail(
                    self.project_id,
                    self.sequence,
                    error=scene.last_error or "no submission attempts left",
                    max_attempts=s.max_attempts,
                )
                return self.finished("failed: attempts exhausted")
            return Step.done(f"not claimed ({claim.outcome})")
        attempt = claim.attempts or scene.attempts + 1
        self.cost_micros = scene.cost_micros + price
        if lease_end - time.time() < s.submit_budget_seconds:
            # The claim took so long (store retries) that a submit and its record might outlive
            # the lease, and a second worker could submit too: give the lease back unused.
            self.release_slot()
            ctx.scenes.release_lease(
                self.project_id,
                self.sequence,
                token=token,
                error="lease too short",
                unused=True,
                refund_micros=price,
            )
            wait = backoff_seconds(attempt, base=s.backoff_base, cap=s.backoff_max)
            self.log(f"lease too short to submit, retry in {wait:.1f}s", None, attempt)
            return Step(Next.RETRY_SUBMIT, "lease too short to submit", wait)
        self.log("lease won", None, attempt)
        request = VideoRequest(
            self.project_id,
            self.sequence,
            scene.prompt,
            scene.negative_prompt,
            scene.duration_seconds,
        )
        try:
            operation_id = ctx.video_provider(self.provider_name).submit(request)
        except (PermanentProviderError, ConfigurationError) as exc:
            self.release_slot()
            error = describe(exc)
            ctx.scenes.fail(
                self.project_id, self.sequence, error=error, token=token, refund_micros=price
            )
            self.log(f"submit refused permanently: {error}", None, attempt)
            return self.finished("failed: permanent provider error")
        except Exception as exc:  # transient, or unclassified: never keep a lease we can't use
            self.release_slot()
            error = describe(exc)
            # The provider accepted no job: the reservation goes back with the lease.
            if attempt >= s.max_attempts:
                ctx.scenes.fail(
                    self.project_id, self.sequence, error=error, token=token, refund_micros=price
                )
                self.log(f"submit failed, attempts exhausted: {error}", None, attempt)
                return self.finished("failed: attempts exhausted")
            ctx.scenes.release_lease(
                self.project_id, self.sequence, token=token, error=error, refund_micros=price
            )
            wait = backoff_seconds(attempt, base=s.backoff_base, cap=s.backoff_max)
            self.log(f"submit failed transiently, retry in {wait:.1f}s: {error}", None, attempt)
            return Step(Next.RETRY_SUBMIT, "transient submit error", wait)
        failpoints.reached("after_submit")
        failpoints.reached("before_record")
        with ctx.table.retry_until(lease_end):
            return self.record(operation_id, token, attempt)

    def record(self, operation_id: str, token: str, attempt: int) -> Step:
        """Store the accepted job's id; whatever fails here, the job is not dropped for it.

        An error (our store or Redis) leaves the write's outcome unknown: the next step redoes
        this record with the same token and id (`RecordPending`), never a cancel."""
        try:
            return self._record(operation_id, token, attempt)
        except Exception as exc:
            carry = {"operation_id": operation_id, "token": token, "attempt": attempt}
            raise RecordPending(carry) from exc

    def _record(self, operation_id: str, token: str, attempt: int) -> Step:
        ctx = self.ctx
        outcome = ctx.scenes.record_operation(
            self.project_id,
            self.sequence,
            token=token,
            operation_id=operation_id,
            run_id=self.run_id,
        )
        if outcome == Claim.WON:
            self.log("operation stored", operation_id, attempt)
            failpoints.reached("after_record")
            return self.next_poll(operation_id, 0)
        if outcome == Claim.RUN_INACTIVE:
            return self.record_after_run(operation_id, token, attempt)
        # Another execution owns the scene now (our lease expired): the job is nobody's.
        confirmed = self.cancel(operation_id)
        self.release_slot()
        self.log(f"operation not stored ({outcome}); cancelled: {confirmed}", operation_id, attempt)
        return Step.done(f"operation dropped ({outcome})")

    def record_after_run(self, operation_id: str, token: str, attempt: int) -> Step:
        """The run is not ours any more. Only a user's cancel that the provider confirms drops
        the job; a takeover (or a cancel the provider could not confirm) keeps its id on the
        scene without the run guard, so the run that follows resumes the paid job (as for Veo)."""
        ctx = self.ctx
        self.release_slot()
        cancelled_by_user = self.run_id is not None and ctx.board.cancelled(self.run_id)
        if cancelled_by_user and self.cancel(operation_id):
            ctx.scenes.release_lease(
                self.project_id, self.sequence, token=token, error="run cancelled during submit"
            )
            self.log("run cancelled; operation cancelled at provider", operation_id, attempt)
            return Step.done("operation cancelled with the run")
        kept = ctx.scenes.record_operation(
            self.project_id, self.sequence, token=token, operation_id=operation_id, run_id=None
        )
        if kept != Claim.WON:
            confirmed = self.cancel(operation_id)
            self.log(f"operation lost its scene; cancel confirmed: {confirmed}", operation_id, None)
            return Step.done(f"operation dropped ({kept})")
        self.log("run no longer ours; operation kept for the next run", operation_id, attempt)
        return Step.done("operation kept for the next run")

    def cancel(self, operation_id: str) -> bool:
        """True only when the provider confirms it stopped the job."""
        provider = self.ctx.video_provider(self.provider_name)
        if not provider.can_cancel:
            return False
        try:
            return bool(provider.cancel(operation_id))
        except Exception:
            log.warning("could not cancel operation %s", operation_id, exc_info=True)
            return False

    # -- waiting -------------------------------------------------------------------------------
    def next_poll(self, operation_id: str, transient_polls: int) -> Step:
        return Step(
            Next.POLL,
            "polling",
            self.poll_seconds,
            {"operation_id": operation_id, "transient_polls": transient_polls},
        )

    def poll(self, operation_id: str, transient_polls: int) -> Step:
        ctx, s = self.ctx, self.s
        ctx.board.touch_scene(
            self.project_id, self.sequence, s.liveness_seconds(self.provider_name)
        )
        ctx.limiter.acquire(
            self.provider_name,
            self.member,
            limit=s.concurrency_for(self.provider_name),
            ttl=s.liveness_seconds(self.provider_name),
            line_ttl=s.backoff_max * 2 + 30,
        )
        started, last_error = ctx.board.start_poll(operation_id)
        if started > s.max_poll_errors:
            return self.give_up_polling(operation_id, started - 1, last_error)
        provider = ctx.video_provider(self.provider_name)
        failpoints.reached("during_poll")
        try:
            status = provider.poll(operation_id)
            video = provider.download(status) if status.state == JobState.SUCCEEDED else None
        except PermanentProviderError as exc:
            status, video = JobStatus(JobState.FAILED, error=str(exc)), None
        except Exception as exc:
            # Transient: the provider answered, just not yet usefully. Anything else (a reply
            # we can't read): counted, and the scene fails if it never stops (see above).
            error = describe(exc)
            if isinstance(exc, TransientProviderError):
                ctx.board.poll_answered(operation_id)
            else:
                ctx.board.poll_failed(operation_id, error)
            wait = backoff_seconds(
                transient_polls + 1, base=max(s.backoff_base, self.poll_seconds), cap=s.backoff_max
            )
            self.log(f"poll failed, again in {wait:.1f}s: {error}", operation_id, None)
            step = self.next_poll(operation_id, transient_polls + 1)
            return Step(step.next, "poll error", wait, step.carry)
        ctx.board.poll_answered(operation_id)
        if status.state == JobState.RUNNING:
            return self.next_poll(operation_id, 0)
        self.release_slot()
        if status.state == JobState.CANCELLED:
            ctx.scenes.reset_cancelled(self.project_id, self.sequence, operation_id=operation_id)
            return Step.done("operation cancelled")
        if status.state == JobState.FAILED or video is None:
            error = status.error or "provider reported failure without a message"
            ctx.scenes.fail(self.project_id, self.sequence, error=error, operation_id=operation_id)
            self.log(f"failed: {error}", operation_id, None)
            return self.finished("failed")
        key = clip_key(self.project_id, self.sequence, operation_id)
        ctx.clips.put(key, video)
        failpoints.reached("after_upload")
        if not ctx.scenes.complete(
            self.project_id, self.sequence, operation_id=operation_id, clip_key=key
        ):
            return Step.done("superseded: scene moved on, clip left for garbage collection")
        self.log(f"completed: {key}", operation_id, None)
        return self.finished("completed")

    def give_up_polling(self, operation_id: str, crashed: int, last_error: str | None) -> Step:
        """Polls of this operation crashed `crashed` times in a row (errors we can't classify,
        or workers killed mid-poll): fail the scene rather than poll it forever."""
        self.release_slot()
        cause = last_error or "the worker was lost during the poll"
        error = f"polling failed {crashed} times in a row without an answer: {cause}"
        self.ctx.scenes.fail(self.project_id, self.sequence, error=error, operation_id=operation_id)
        self.ctx.board.poll_answered(operation_id)
        self.log(error, operation_id, None)
        return self.finished("failed: polling never answered")

    # -- helpers -------------------------------------------------------------------------------
    def slot_check_seconds(self, place: int, limit: int) -> float:
        """When a waiter asks again by itself, by its place in line. A parked waiter is woken by
        the release that frees its slot, so its own check is only the fallback (a lost wake-up,
        a slot that expired with its worker) and comes `PARKED_SLOWDOWN` times later."""
        rounds = max(1, math.ceil(place / limit))
        slowdown = PARKED_SLOWDOWN if self.park is not None else 1
        return min(self.s.backoff_max, self.poll_seconds * rounds * slowdown)

    def release_slot(self) -> None:
        self.wakes.extend(
            self.ctx.limiter.release(
                self.provider_name, self.member, limit=self.s.concurrency_for(self.provider_name)
            )
        )

    def leave_line(self) -> None:
        """A waiter of a cancelled run gives its place in line to the next live one."""
        self.wakes.extend(
            self.ctx.limiter.leave(
                self.provider_name, self.member, limit=self.s.concurrency_for(self.provider_name)
            )
        )

    def finished(self, outcome: str) -> Step:
        if self.run_id is None:
            return Step.done(outcome, refinalize=True)
        return Step.done(
            outcome, refinalize=self.ctx.board.scene_finished(self.run_id, self.sequence)
        )

    def log(self, message: str, operation_id: str | None, attempt: int | None) -> None:
        log.info(
            "%s project=%s sequence=%d attempt=%s operation=%s run=%s",
            message,
            self.project_id,
            self.sequence,
            attempt if attempt is not None else "-",
            operation_id or "-",
            self.run_id or "-",
        )
