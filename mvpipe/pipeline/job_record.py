"""The record of a submitted job's id (DESIGN.md invariant 3: never lost, never paid twice):
its write, its redo after an outage, its adoption after a lost lease, the job dropped or
kept after a lost run."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from mvpipe import hooks
from mvpipe.errors import BrokerUnavailable, StoreUnavailable
from mvpipe.pipeline.execution import log
from mvpipe.pipeline.job_polls import JobPolls
from mvpipe.pipeline.steps import RecordPending, Step
from mvpipe.providers.classify import describe
from mvpipe.store.claim_outcomes import Claim


class JobRecord(JobPolls):
    """The accepted job's id written on the scene under the lease that submitted it, or the
    job adopted, kept for the next run, or dropped when the lease or the run was lost."""

    #: The job's id is in the store (its record, the record without the run, or its adoption
    #: landed): from then on an error is what it is, not an owed record (`owed`).
    recorded = False

    def record(
        self, operation_id: str, token: str, attempt: int, made_from: str | None = None
    ) -> Step:
        """Store the accepted job's id (the redo of an owed record: `owed`). `made_from` is
        the input the job was made from (the stage's `requires`), carried for the adoption."""
        with self.owed(operation_id, token, attempt, made_from):
            if self.run_cancelled():
                # A cancelled run is never active again: the record's transaction would only
                # find it inactive. Written without it, the record lands even where the run's
                # check is refused (a missing `dynamodb:ConditionCheckItem`).
                return self.record_after_run(operation_id, token, attempt, made_from)
            return self._record(operation_id, token, attempt, made_from)

    @contextmanager
    def owed(
        self,
        operation_id: str,
        token: str,
        attempt: int,
        made_from: str | None,
        *,
        first: bool = False,
    ) -> Iterator[None]:
        """Whatever fails inside, from the provider's acceptance of the job to its id stored,
        leaves the record owed: the next step redoes it with the same token and id
        (`RecordPending`), marked alive meanwhile (`keep_owed`), never a cancel and never a
        give-up. An outage (our store or Redis) leaves the write's outcome unknown; any other
        error (the store refusing the write: a permission or the table missing; a bug) is
        retried alike, however long it lasts: failing the scene, or any bounded give-up,
        would drop the only copy of a paid job's id, and a later claim would pay again
        (invariant 3). Such an error is logged with the job's id (at ERROR the first time,
        `first`: the step that submitted it) and noted on the scene (`lastError`), so the
        user sees what to repair; the stage's output, once recorded, clears the note. An outage
        logs the job's id too (`owed_through_outage`), so an operator can always find it. Once
        the id is stored (`recorded`), nothing is owed: an error after it (the `after_record`
        point, the slot's move, the first poll) is raised as it is, and the task's own retry
        resumes the stored job."""
        try:
            yield
        except RecordPending:
            raise
        except Exception as exc:
            if self.recorded:
                raise
            self.keep_owed()  # first: the note below is a store call of its own
            if isinstance(exc, (StoreUnavailable, redis.RedisError)):
                self.owed_through_outage(operation_id, exc)
            else:
                self.not_recorded(operation_id, exc, first=first)
            carry = {
                **self.carry(),
                "operation_id": operation_id,
                "token": token,
                "attempt": attempt,
                "made_from": made_from,
            }
            raise RecordPending(carry) from exc

    def owed_through_outage(self, operation_id: str, exc: Exception) -> None:
        """Log (WARNING, at every owed step) the accepted job `operation_id` whose record an
        outage keeps back: until it lands, its id is otherwise only in the redo's message."""
        log.warning(
            "the %s job %s was accepted; its record waits out an outage (retried until it "
            "lands): %s project=%s sequence=%d run=%s",
            self.stage.name,
            operation_id,
            describe(exc),
            *self.ids,
            self.x.run_id or "-",
        )

    def not_recorded(self, operation_id: str, exc: Exception, *, first: bool) -> None:
        """Say (the log, the scene's `lastError`) that an error no outage explains keeps the
        accepted job `operation_id` from being recorded; the note is best effort."""
        error = (
            f"the {self.stage.name} job {operation_id} was accepted but its record failed "
            f"(retried until it lands): {describe(exc)}"
        )
        log.log(
            logging.ERROR if first else logging.WARNING,
            "%s project=%s sequence=%d run=%s",
            error,
            *self.ids,
            self.x.run_id or "-",
        )
        try:
            self.ctx.scenes.note_error(*self.ids, error=error)
        except Exception as unnoted:
            log.warning("could not note on %s/%s: %s", *self.ids, describe(unnoted))

    def _record(self, operation_id: str, token: str, attempt: int, made_from: str | None) -> Step:
        outcome = self.ctx.scenes.record_operation(
            *self.ids,
            token=token,
            operation_id=operation_id,
            run_id=self.x.run_id,
            stage=self.fields,
        )
        if outcome == Claim.WON:
            self.recorded = True
            self.log("operation stored", operation_id, attempt)
            self.stored(operation_id)
            hooks.reached(f"{self.points}after_record")
            return self.next_poll(operation_id, 0)
        if outcome == Claim.RUN_INACTIVE:
            return self.record_after_run(operation_id, token, attempt, made_from)
        if self.adopt(operation_id, attempt, made_from):
            self.stored(operation_id)
            return self.next_poll(operation_id, 0)
        return self.drop(operation_id, outcome)

    def stored(self, operation_id: str) -> None:
        """The job's id is in the store: its slot becomes the job's, and the scene's mark goes
        back to a poll's liveness. The claim's longer mark (`claim_mark_after`) kept reconcile
        off until the id was stored; from now on a reconcile pass adopts the stored job
        instead of paying again, so a longer mark would only delay that adoption after this
        worker's death. Only a record that landed gets here: one that failed keeps the
        claim's mark for its owed write (`keep_owed`). Redis down leaves the longer mark: a
        slower adoption, never a second job."""
        self.hold_job_slot(operation_id, moved=True)
        self.mark(self.provider.liveness_seconds, shorten=True)

    def adopt(self, operation_id: str, attempt: int, made_from: str | None) -> bool:
        """Our lease was lost (it expired, e.g. in a store outage, and was freed), but the paid
        job exists: keep it on the scene if the stage is still open and nobody else's (and
        its input is still the one the job was made from)."""
        if not self.ctx.scenes.adopt_operation(
            *self.ids,
            operation_id=operation_id,
            stage=self.fields,
            requires=self.stage.requires,
            made_from=made_from,
        ):
            return False
        self.recorded = True
        self.job_started = None  # the scene's start may be another claim's: read it once
        self.log("lease lost; operation adopted by the scene", operation_id, attempt)
        return True

    def drop(self, operation_id: str, outcome: Claim) -> Step:
        """The stage is somebody else's now: cancel the job (if the provider lets us)."""
        confirmed = self.cancel(operation_id)
        self.release_unowned_slot()  # the scene's slot entry may be its new owner's
        self.log(f"operation not stored ({outcome}); cancelled: {confirmed}", operation_id, None)
        return Step.done(f"operation dropped ({outcome})")

    def record_after_run(
        self, operation_id: str, token: str, attempt: int, made_from: str | None
    ) -> Step:
        """The run is not ours any more. Only a user's cancel that the provider confirms drops
        the job; a takeover (or a cancel the provider could not confirm) keeps its id on the
        scene without the run guard, so the run that follows resumes the paid job (as for Veo)."""
        ctx = self.ctx
        # The store write comes before any Redis call: a Redis error must not lose the job.
        kept = ctx.scenes.record_operation(
            *self.ids, token=token, operation_id=operation_id, run_id=None, stage=self.fields
        )
        if kept != Claim.WON:
            if self.adopt(operation_id, attempt, made_from):
                self.stored(operation_id)
                return Step.done("operation kept for the next run")
            return self.drop(operation_id, kept)
        self.recorded = True
        if self.run_cancelled() and self.cancel(operation_id):
            freed = ctx.scenes.reset_cancelled(
                *self.ids, operation_id=operation_id, stage=self.fields
            )
            self.release_slot()
            self.release_slot(operation_id)  # a redone record's first try may have moved it
            self.log("run cancelled; operation cancelled at provider", operation_id, attempt)
            return Step.done("operation cancelled with the run", freed=freed)
        # Kept: the job still runs, so its quota slot stays taken (its polls refresh it).
        self.stored(operation_id)
        self.log("run no longer ours; operation kept for the next run", operation_id, attempt)
        return Step.done("operation kept for the next run")

    def run_cancelled(self) -> bool:
        """Did the user cancel our run? Not knowing (Redis down) counts as no: the job is kept."""
        if self.x.run_id is None:
            return False
        try:
            return self.ctx.board.cancelled(self.x.run_id)
        except (BrokerUnavailable, redis.RedisError):
            log.warning("could not read the cancel mark of run %s", self.x.run_id)
            return False
