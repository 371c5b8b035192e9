"""The one lease/operation machine of every paid stage: claim → submit → record → poll → upload
→ complete (DESIGN.md invariants 1-3).

`PaidOperation(execution, stage, provider)` runs it for any paid stage: the `Stage` says which
scene fields hold its output, operation id and attempts, its price, where its output is stored
and what its crash points are called (`after_submit` for generation, `lipsync_after_submit` for
lip-sync, ...: a drill can crash exactly one of them); its `StageProvider` says how to make its
inputs, submit, poll and download (`pipeline.stage_provider.VideoGeneration`,
`pipeline.lipsync.LipSync`).

`PaidOperation` is one class built from parts, each in the module that owns it: the claim and
the submit here; the record of the job's id and its adoption (`job_record`), its polls up to the
output recorded (`job_polls`), the quota slots (`quota_slots`), the give-back of an unused lease
(`give_back`), and the state they share (`operation_base`).

Each call does a bounded amount of work and returns; waiting happens in the broker (the next step
queued with a countdown), never in a worker slot.
"""

from __future__ import annotations

import time
import uuid

from mvpipe import durations, hooks
from mvpipe.errors import ConfigurationError, InvalidInput, PermanentProviderError, StoreNotTried
from mvpipe.pipeline.give_back import GiveBack
from mvpipe.pipeline.job_record import JobRecord
from mvpipe.pipeline.steps import Next, Step
from mvpipe.providers.classify import describe
from mvpipe.states import backoff_seconds
from mvpipe.store.claim_outcomes import Claim
from mvpipe.store.pauses import retry_until
from mvpipe.store.records import SceneRecord


class PaidOperation(JobRecord, GiveBack):
    """One paid stage of one scene, for one execution."""

    def submit(self, scene: SceneRecord) -> Step:
        ctx, s, x = self.ctx, self.s, self.x
        if x.run_id is None:
            return Step.done("no run to submit under")
        fitted = self.fitted(scene)
        if isinstance(fitted, Step):
            return fitted
        scene = fitted
        try:
            price = self.stage.price_micros(s, x.provider, scene)
        except ConfigurationError as exc:  # unpriced paid work: no budget could hold it
            ctx.scenes.fail_open(*self.ids, error=str(exc), stage=self.fields)
            return x.finished("failed: no price")
        # The inputs first: what can fail for reasons of ours (a song gone from the store, an
        # outage reading it) fails or retries before the scene takes a slot of the quota.
        try:
            self.provider.prepare(scene)
        except (InvalidInput, ConfigurationError) as exc:  # inputs that can never be made
            error = f"the {self.stage.name} inputs could not be made: {describe(exc)}"
            if ctx.scenes.fail_open(*self.ids, error=error, stage=self.fields):
                self.release_slot()  # a place in line an earlier step of this scene took
            self.log(error, None, None)
            return x.finished("failed: inputs could not be made")
        slot = self.acquire_slot(park=x.park() if x.park is not None else None)
        if not slot.granted:
            # A later stage waits `processing` (its earlier outputs made): marked alive, so
            # reconcile starts no second chain for it however long the wait.
            x.touch(self.provider.liveness_seconds)
            return Step(
                Next.WAIT_SLOT,
                f"waiting for a provider slot (place {slot.place})",
                self.slot_check_seconds(slot.place),
                {"stage": self.stage.name},
            )
        token = uuid.uuid4().hex
        # Marked as polled before the operation can become visible, so reconcile never takes a
        # scene between submit and its first poll for an orphan. Nothing but the one write of
        # the operation id may stand between the provider accepting a job and that id stored;
        # the mark outlasts that write's last try (`claim_mark_after`). An owed mark: past
        # the lease it holds the scene from another submitter (`stages.submission_held`).
        x.touch(s.claim_mark_after(self.provider.liveness_seconds), owed=True)
        claimed_at = time.time()
        lease_end = claimed_at + s.lease_seconds
        # A claim whose reply is lost may have landed (lease and reservation) though nothing
        # is submitted: the next step gives it back (`LeasePending`). A process that dies right
        # here keeps the reservation, as after `after_submit`: nobody else can know that no job
        # was submitted, so the money stays committed (invariant 3 before invariant 9).
        unused = {"refund_micros": price, "unused": True, "error": "store outage during claim"}
        budget = lease_end - s.submit_budget_seconds
        with retry_until(budget) as bound, self.pending(token, unused):
            try:
                claim = ctx.scenes.claim(
                    *self.ids,
                    run_id=x.run_id,
                    token=token,
                    lease_seconds=s.lease_seconds,
                    max_attempts=s.max_attempts,
                    now=claimed_at,
                    stage=self.fields,
                    requires=self.stage.requires,
                    price_micros=price,
                )
            except StoreNotTried:
                if bound.tried:  # an earlier call of the claim was tried: it may have landed
                    raise
                claim = None
        if claim is None:
            # Begun past its budget (a short lease), the claim tried nothing: no lease to give
            # back, and nothing on the scene to wait for.
            self.release_unowned_slot()
            wait = backoff_seconds(
                scene.value(self.fields.attempts) + 1, base=s.backoff_base, cap=s.backoff_max
            )
            self.log(f"lease too short to claim, retry in {wait:.1f}s", None, None)
            return Step(Next.RETRY_SUBMIT, "lease too short to claim", wait, self.carry())
        if claim.outcome != Claim.WON:
            self.release_unowned_slot()
            if claim.outcome == Claim.OVER_BUDGET:
                error = claim.detail or "over budget"
                ctx.scenes.fail_open(*self.ids, error=error, stage=self.fields)
                self.log(error, None, None)
                return x.finished("failed: over budget")
            if claim.outcome == Claim.EXHAUSTED:
                ctx.scenes.fail(
                    *self.ids,
                    error=scene.last_error or "no submission attempts left",
                    max_attempts=s.max_attempts,
                    stage=self.fields,
                )
                return x.finished("failed: attempts exhausted")
            return Step.done(f"not claimed ({claim.outcome})")
        attempt = claim.attempts or scene.value(self.fields.attempts) + 1
        x.cost_micros = scene.cost_micros + price
        self.job_started = claimed_at  # the claim records its start a moment later: never late
        if lease_end - time.time() < s.submit_budget_seconds:
            # The claim took so long (store retries) that a submit and its record might outlive
            # the lease, and a second worker could submit too: give the lease back unused.
            self.release_slot()
            self.give_back(
                token, {"refund_micros": price, "unused": True, "error": "lease too short"}
            )
            x.cost_micros = scene.cost_micros
            wait = backoff_seconds(attempt, base=s.backoff_base, cap=s.backoff_max)
            self.log(f"lease too short to submit, retry in {wait:.1f}s", None, attempt)
            return Step(Next.RETRY_SUBMIT, "lease too short to submit", wait, self.carry())
        self.log("lease won", None, attempt)
        try:
            operation_id = self.provider.submit(scene)
        except (PermanentProviderError, ConfigurationError) as exc:
            self.release_slot()
            error = describe(exc)
            refund = self.refund(exc, price, scene)
            release = self.after_submit(refund, price, error)
            self.give_back(token, {**release, "fail": True})
            self.log(f"submit refused permanently: {error}", None, attempt)
            return x.finished("failed: permanent provider error")
        except Exception as exc:  # transient, or unclassified: never keep a lease we can't use
            self.release_slot()
            error = describe(exc)
            release = self.after_submit(self.refund(exc, price, scene), price, error)
            if attempt >= s.max_attempts:
                self.give_back(token, {**release, "fail": True})
                self.log(f"submit failed, attempts exhausted: {error}", None, attempt)
                return x.finished("failed: attempts exhausted")
            self.give_back(token, release)
            wait = backoff_seconds(attempt, base=s.backoff_base, cap=s.backoff_max)
            self.log(f"submit failed transiently, retry in {wait:.1f}s: {error}", None, attempt)
            return Step(Next.RETRY_SUBMIT, "transient submit error", wait, self.carry())
        made_from = scene.value(self.stage.requires) if self.stage.requires else None
        # From here to the id stored, whatever fails leaves the record owed (`owed`): the job's
        # id is carried to the next step, never dropped with this one.
        with self.owed(operation_id, token, attempt, made_from, first=True):
            hooks.reached(f"{self.points}after_submit")
            hooks.reached(f"{self.points}before_record")
            # A record begun past the lease still makes its one try: the marks are sized for
            # it (`claim_mark_after`), and a record not made leaves the id to a countdown message.
            with retry_until(lease_end, try_late=True):
                step = self._record(operation_id, token, attempt, made_from)
        if step.next != Next.POLL:
            return step
        # Stored: the first poll is now, in this execution. A quick job needs no message in
        # between, and a provider that tells when its job is due has its next poll timed.
        return self.poll(operation_id, 0, just_submitted=True)

    def fitted(self, scene: SceneRecord) -> SceneRecord | Step:
        """The scene at a clip length its provider makes, before it is priced: a generation
        stored at another (before lengths were fitted, or under other allowed lengths than this
        worker's) is made at `durations.made_seconds` of it, written once, so the price
        reserved is the one the provider bills and the provider never refuses the scene for
        its length. The step ends when the scene is gone, or when its length is still not one
        this worker's provider makes (another worker, under other allowed lengths, refitted
        it or is submitting it): pricing it would reserve another length than the one made."""
        if not self.stage.fits_duration:
            return scene
        allowed = self.s.durations_for(self.x.provider)
        seconds = durations.made_seconds(scene.duration_seconds, allowed)
        if seconds == scene.duration_seconds:
            return scene
        self.log(f"clip length {scene.duration_seconds} s made {seconds} s", None, None)
        now = self.ctx.scenes.refit_duration(*self.ids, old=scene.duration_seconds, new=seconds)
        if now is None:
            return Step.done("scene gone")
        if now.duration_seconds not in allowed:
            return Step.done("length refitted elsewhere")
        return now
