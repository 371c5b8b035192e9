"""The one lease/operation machine of every paid stage: claim → submit → record → poll → upload
→ complete (DESIGN.md invariants 1-3).

`PaidOperation(execution, stage, provider)` runs it for any paid stage: the `Stage` says which
scene fields hold its output, operation id and attempts, its price, where its output is stored
and what its crash points are called (`after_submit` for generation, `lipsync_after_submit` for
lip-sync, ...: a drill can crash exactly one of them); its `StageProvider` says how to make its
inputs, submit, poll and download (`VideoGeneration` here, `pipeline.lipsync.LipSync`).

Each call does a bounded amount of work and returns; waiting happens in the broker (the next step
queued with a countdown), never in a worker slot.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import redis

from mvpipe import durations, hooks
from mvpipe.deps import Context
from mvpipe.errors import (
    BrokerUnavailable,
    ConfigurationError,
    InvalidInput,
    PermanentProviderError,
    PollRefused,
    ProviderError,
    StoreNotTried,
    StoreUnavailable,
    TransientProviderError,
)
from mvpipe.pipeline.execution import Execution, log
from mvpipe.pipeline.steps import LeasePending, Next, RecordPending, Step
from mvpipe.providers.base import JobState, JobStatus, VideoProvider, VideoRequest
from mvpipe.providers.classify import describe
from mvpipe.providers.fairness import fewer_than_busiest, lighter
from mvpipe.providers.limiter import SlotDecision, job_member, slot_member
from mvpipe.settings import Settings
from mvpipe.states import (
    backoff_seconds,
    carried_start,
    job_overran,
    lease_expired,
    scene_read_due,
    started_seconds,
)
from mvpipe.store.claim_outcomes import Claim
from mvpipe.store.pauses import retry_until
from mvpipe.store.records import SceneRecord

if TYPE_CHECKING:
    from mvpipe.pipeline.stages import Stage

#: How much later than an unparked waiter a parked one checks its place by itself.
PARKED_SLOWDOWN = 10


#: How long after a job's announced end its poll comes (clocks and the reply's own travel).
ETA_MARGIN_SECONDS = 0.02


def poll_countdown(grid_seconds: float, eta_seconds: float | None, longest: float) -> float:
    """Seconds until the next poll of a running job: at its announced end when the provider
    gives one, else the provider's fixed pace."""
    if eta_seconds is None:
        return grid_seconds
    return min(longest, max(0.0, eta_seconds) + ETA_MARGIN_SECONDS)


def polls_first(held: Mapping[str, int], project: str) -> bool:
    """Whether a finished job's next stage (the cut: local work, free) should wait behind the
    due polls of the jobs still running (`held`: slots per project once this job's slot is
    freed). A poll that is due finds a finished, paid job whose slot the quota's next job is
    waiting for; a cut is free work that can run a moment later. Not when nothing else runs
    (it would wait for nothing), nor for a project holding fewer slots than the busiest
    (`fairness.fewer_than_busiest`: a small project's cut is not kept behind a large one's
    wave)."""
    return any(n > 0 for n in held.values()) and not fewer_than_busiest(held, project)


class StageProvider(Protocol):
    """What the paid machine needs from a stage's provider: its job calls, its quota pool and
    poll pace."""

    #: the quota pool (each provider its own)
    pool: str
    #: in-flight jobs allowed in the pool
    limit: int
    poll_seconds: float
    #: how long a poll's liveness mark lasts (longer than the longest gap between polls)
    liveness_seconds: float
    #: whether `output` needs the scene (lip-sync: its slot); one that does not, of a stage
    #: that never completes a scene, has its output recorded without reading the scene
    reads_scene: bool

    @property
    def can_cancel(self) -> bool:
        """Whether `cancel` really stops (and stops billing) a job."""
        ...

    def prepare(self, scene: SceneRecord) -> None:
        """Make the job's inputs (idempotent) before the quota slot and the claim: no slot or
        lease waits on them, and inputs that can never be made (an `InvalidInput`) fail the
        stage without taking either."""
        ...

    def submit(self, scene: SceneRecord) -> str: ...

    def poll(self, operation_id: str) -> JobStatus: ...

    def output(self, status: JobStatus, scene: SceneRecord | None) -> bytes:
        """The finished job's output for `scene` (as read by the poll; None when `reads_scene`
        is False) as it is stored (a `PermanentProviderError` when the job's result is
        unusable). Reads nothing from the store: an outage there is ours, not the provider's."""
        ...

    def cancel(self, operation_id: str) -> bool: ...


class VideoGeneration:
    """The generate stage's provider: the project's video model making the original clip."""

    #: the clip is the provider's video as it comes
    reads_scene = False

    def __init__(self, provider: VideoProvider, settings: Settings) -> None:
        self.provider = provider
        self.pool = provider.name
        self.limit = settings.concurrency_for(provider.name)
        self.poll_seconds = settings.poll_seconds_for(provider.name)
        self.liveness_seconds = settings.liveness_seconds(provider.name)
        self.can_cancel = provider.can_cancel

    @classmethod
    def for_project(cls, ctx: Context, video_provider: str) -> VideoGeneration:
        """The generate stage's provider for a project of `video_provider`."""
        return cls(ctx.video_provider(video_provider), ctx.settings)

    def prepare(self, scene: SceneRecord) -> None:
        """Nothing: a generation's request is the scene's own text."""

    def submit(self, scene: SceneRecord) -> str:
        return self.provider.submit(
            VideoRequest(
                scene.project_id,
                scene.sequence,
                scene.prompt,
                scene.negative_prompt,
                scene.duration_seconds,
                # only a song's scenes fill a slot; their sound comes from the song
                with_audio=scene.start_seconds is None,
            )
        )

    def poll(self, operation_id: str) -> JobStatus:
        return self.provider.poll(operation_id)

    def output(self, status: JobStatus, scene: SceneRecord | None) -> bytes:
        return self.provider.download(status)

    def cancel(self, operation_id: str) -> bool:
        return self.provider.cancel(operation_id)


class PaidOperation:
    """One paid stage of one scene, for one execution."""

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

    # -- submission ----------------------------------------------------------------------------
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
        # the mark outlasts that write's last try (`claim_mark_after`).
        x.touch(s.claim_mark_after(self.provider.liveness_seconds))
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
        hooks.reached(f"{self.points}after_submit")
        hooks.reached(f"{self.points}before_record")
        made_from = scene.value(self.stage.requires) if self.stage.requires else None
        # A record begun past the lease still makes its one try: the marks are sized for it
        # (`claim_mark_after`), and a record not made leaves the id to a countdown message.
        with retry_until(lease_end, try_late=True):
            step = self.record(operation_id, token, attempt, made_from)
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

    def record(
        self, operation_id: str, token: str, attempt: int, made_from: str | None = None
    ) -> Step:
        """Store the accepted job's id; an outage here does not drop the job. `made_from` is
        the input the job was made from (the stage's `requires`), carried for the adoption.

        An outage (our store or Redis) leaves the write's outcome unknown: the next step redoes
        this record with the same token and id (`RecordPending`), never a cancel. Any other
        error is not retried forever: it takes the task's bounded path for unexpected errors."""
        try:
            return self._record(operation_id, token, attempt, made_from)
        except (StoreUnavailable, redis.RedisError) as exc:
            carry = {
                **self.carry(),
                "operation_id": operation_id,
                "token": token,
                "attempt": attempt,
                "made_from": made_from,
            }
            self.keep_owed()
            raise RecordPending(carry) from exc

    def keep_owed(self) -> None:
        """A write owed for paid work is left to the next step: the scene stays marked alive
        until that step marks it again (the lease may lapse first, the mark set at the claim
        too), or reconcile could free it for a second paid claim. With Redis out too, the
        next step marks it once it can."""
        self.mark(self.s.owed_after(self.provider.liveness_seconds))

    def mark(self, seconds: float, *, shorten: bool = False) -> None:
        """Mark the scene alive (`Execution.touch`) where Redis down must not fail the step:
        the mark it leaves is the one already set, or none."""
        try:
            self.x.touch(seconds, shorten=shorten)
        except (BrokerUnavailable, redis.RedisError) as exc:
            log.warning("could not mark %s/%s alive: %s", *self.ids, describe(exc))

    def _record(self, operation_id: str, token: str, attempt: int, made_from: str | None) -> Step:
        outcome = self.ctx.scenes.record_operation(
            *self.ids,
            token=token,
            operation_id=operation_id,
            run_id=self.x.run_id,
            stage=self.fields,
        )
        if outcome == Claim.WON:
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
        if self.run_cancelled() and self.cancel(operation_id):
            ctx.scenes.reset_cancelled(*self.ids, operation_id=operation_id, stage=self.fields)
            self.release_slot()
            self.release_slot(operation_id)  # a redone record's first try may have moved it
            self.log("run cancelled; operation cancelled at provider", operation_id, attempt)
            return Step.done("operation cancelled with the run")
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

    def cancel(self, operation_id: str) -> bool:
        """True only when the provider confirms it stopped the job."""
        if not self.provider.can_cancel:
            return False
        try:
            return bool(self.provider.cancel(operation_id))
        except Exception as exc:
            log.warning("could not cancel operation %s: %s", operation_id, describe(exc))
            return False

    # -- waiting -------------------------------------------------------------------------------
    @property
    def reads_scene(self) -> bool:
        """Whether a finished job's poll reads the scene: for its output, or to know whether
        the output's write completes the scene."""
        return self.provider.reads_scene or not self.stage.never_last

    def carry(self) -> dict[str, object]:
        return {"stage": self.stage.name}

    def next_poll(
        self, operation_id: str, transient_polls: int, eta_seconds: float | None = None
    ) -> Step:
        """The next poll: when the job is due if the provider said (never past the longest
        countdown, which the liveness mark and the quota slot outlive), else on the grid."""
        return Step(
            Next.POLL,
            "polling",
            poll_countdown(self.provider.poll_seconds, eta_seconds, self.s.backoff_max),
            {
                **self.carry(),
                "operation_id": operation_id,
                "transient_polls": transient_polls,
                "job_started": self.job_started,
                "unread_polls": self.unread_polls,
            },
        )

    def poll(
        self,
        operation_id: str,
        transient_polls: int,
        *,
        just_submitted: bool = False,
        job_started: float | None = None,
        unread_polls: int = 0,
    ) -> Step:
        """Poll the stage's operation. When its output is recorded the result is a
        `Next.STAGE` step: the scene goes on to its next stage (or it was the last).
        `just_submitted`: this execution marked the scene alive and took its slot moments ago,
        and its first poll is not counted (a worker lost in it redelivers the submit's message,
        whose poll of the stored job is counted). `job_started`, `unread_polls`: what the last
        poll carried (`ran_over`; None: not known, the scene is read)."""
        ctx, s = self.ctx, self.s
        if job_started is not None:  # carried (else this execution's own claim, or unknown)
            self.job_started = carried_start(job_started, time.time())
            self.unread_polls = unread_polls
        counted, started = not just_submitted, 0
        if counted:
            self.x.touch(self.provider.liveness_seconds)
            self.hold_job_slot(operation_id)
            started = ctx.board.start_poll(operation_id)
            if started > s.max_poll_errors:
                return self.give_up_polling(operation_id, started - 1)
        hooks.reached(f"{self.points}during_poll")
        video: bytes | None = None
        scene: SceneRecord | None = None
        try:
            status = self.provider.poll(operation_id)
            if status.state == JobState.SUCCEEDED and self.reads_scene:
                # the one read of the scene for the output and its record (None: it is gone)
                scene = ctx.scenes.get(*self.ids)
        except PermanentProviderError as exc:
            status, video = JobStatus(JobState.FAILED, error=str(exc)), None
        except PollRefused as exc:  # our access, not the job: it runs on, and is billed
            return self.refused(operation_id, transient_polls, started, str(exc))
        except (StoreUnavailable, redis.RedisError):
            # Our own outage, not an unreadable reply: not counted against the job (which may
            # be finished and paid); the task's outage retry polls again.
            ctx.board.poll_answered(operation_id)
            raise
        except Exception as exc:
            # Transient: the provider answered, just not yet usefully. Anything else (a reply
            # we can't read): counted, and the scene fails if it never stops (see above).
            error = describe(exc)
            if isinstance(exc, TransientProviderError):
                if counted:
                    ctx.board.poll_answered(operation_id)
            else:
                ctx.board.poll_failed(operation_id, error)
            return self.poll_again(operation_id, transient_polls, error)
        if status.state == JobState.SUCCEEDED and (scene is not None or not self.reads_scene):
            # neither the output nor its record needs the scene when the stage does not read
            # it: the write returns it (a scene gone meanwhile fails that write, and the clip
            # is left for collection)
            try:
                # marked for the whole download first: a large output on a slow link outlasts
                # the poll's mark, and reconcile would start a second chain fetching it again
                self.x.touch(self.provider.liveness_seconds + s.download_worst_seconds)
                video = self.provider.output(status, scene)
            except PermanentProviderError as exc:  # an output that can never be taken
                status, video = JobStatus(JobState.FAILED, error=str(exc)), None
            except (StoreUnavailable, redis.RedisError):
                ctx.board.poll_answered(operation_id)
                raise
            except Exception as exc:
                # The job finished but its output did not come: counted whatever the error (a
                # download answering 403, 503, 403, ... must still reach the limit), never
                # answered, so the count survives until the output is fetched.
                return self.unfetched(operation_id, transient_polls, started, describe(exc))
        if counted:
            ctx.board.poll_answered(operation_id)
        if status.state == JobState.RUNNING:
            if counted and (over := self.ran_over(operation_id)) is not None:
                return over
            return self.next_poll(operation_id, 0, status.eta_seconds)
        self.release_slot(operation_id)
        if status.state == JobState.CANCELLED:
            ctx.scenes.reset_cancelled(*self.ids, operation_id=operation_id, stage=self.fields)
            return Step.done("operation cancelled")
        if status.state == JobState.FAILED or video is None:
            error = status.error or "provider reported failure without a message"
            ctx.scenes.fail(*self.ids, error=error, operation_id=operation_id, stage=self.fields)
            self.log(f"failed: {error}", operation_id, None)
            return self.x.finished("failed")
        key = self.stage.operation_output(*self.ids, operation_id)
        ctx.clips.put(key, video)
        self.x.uploaded[key] = video
        hooks.reached(f"{self.points}after_upload")
        return self.complete(operation_id, key, scene)

    def poll_again(self, operation_id: str, transient_polls: int, error: str) -> Step:
        """The next poll after one that failed, backing off."""
        s = self.s
        wait = backoff_seconds(
            transient_polls + 1,
            base=max(s.backoff_base, self.provider.poll_seconds),
            cap=s.backoff_max,
        )
        self.log(f"poll failed, again in {wait:.1f}s: {error}", operation_id, None)
        step = self.next_poll(operation_id, transient_polls + 1)
        return Step(step.next, "poll error", wait, step.carry)

    def unfetched(self, operation_id: str, transient_polls: int, tries: int, error: str) -> Step:
        """The job finished (so it is paid) but its output could not be fetched: not the job's
        failure (a signed URL expired, an output deleted while our store was out). Counted like
        a poll error and polled again (which helps a passing refusal); the scene fails only when
        `tries` (this poll's count, 0 when not counted) reaches `max_poll_errors`."""
        error = f"the job is paid for but its output could not be fetched: {error}"
        return self.counted(operation_id, transient_polls, tries, error, "output unfetched")

    def refused(self, operation_id: str, transient_polls: int, tries: int, error: str) -> Step:
        """The provider refused to let us read the job (`PollRefused`: a rotated or wrong
        credential): not the job's failure. Noted on the scene (`lastError`), counted like a
        poll error and polled again; at `max_poll_errors` the scene fails with its operation
        kept, so a user's next run polls the job (maybe paid) before paying for another."""
        if tries >= self.s.max_poll_errors:
            error = f"the job may be paid for; its operation is kept for the next run: {error}"
        else:
            self.ctx.scenes.note_error(*self.ids, error=error)
        return self.counted(operation_id, transient_polls, tries, error, "polls refused", keep=True)

    def counted(
        self,
        operation_id: str,
        transient_polls: int,
        tries: int,
        error: str,
        why: str,
        *,
        keep: bool = False,
    ) -> Step:
        """A poll error that is not the job's outcome, counted (`poll_failed`) and polled again,
        the scene failed once `tries` (this poll's count, 0 when not counted) reaches
        `max_poll_errors` (`keep`: with its operation kept for the next run)."""
        if tries >= self.s.max_poll_errors:
            return self.fail_polled(operation_id, f"{error} ({tries} tries)", why, keep=keep)
        self.ctx.board.poll_failed(operation_id, error)
        return self.poll_again(operation_id, transient_polls, error)

    def complete(self, operation_id: str, key: str, scene: SceneRecord | None) -> Step:
        """Record the uploaded output (conditioned on the operation id, so a scene that moved
        on since `scene` was read is not overwritten). `scene` None: not read (the stage is
        never the scene's last)."""
        last = scene is not None and self.stage.is_last(scene)
        written = self.ctx.scenes.complete(
            *self.ids, operation_id=operation_id, clip_key=key, stage=self.fields, last=last
        )
        if written is None:
            return Step.done("superseded: scene moved on, clip left for garbage collection")
        self.log(f"{self.stage.name} recorded: {key}", operation_id, None)
        if last:
            return self.x.finished("completed")
        return Step(Next.STAGE, f"{self.stage.name} done", scene=written)

    def ran_over(self, operation_id: str) -> Step | None:
        """A job still running `max_job_seconds` after its claim (a stuck job, or a status we
        read as running) would hold its run and its quota slot forever: it is stopped where
        the provider can, and its stage failed saying it was paid, its operation id kept on
        the scene (and in `lastError`), its slot freed. A job that is not its scene's any more
        ends its chain (`superseded`). None: within its time, or its start unknown (a scene
        written before starts were kept).

        The scene is read only when `scene_read_due` says (the carried start unknown or past
        the limit, or every `SCENE_CHECK_POLLS`-th running poll); its start is carried on."""
        limit, now = self.s.max_job_seconds, time.time()
        if not scene_read_due(self.job_started, self.unread_polls, now, limit):
            self.unread_polls += 1
            return None
        scene = self.ctx.scenes.get(*self.ids)
        self.unread_polls = 0
        if scene is None or self.stage.operation(scene) != operation_id:
            return self.superseded(operation_id, "gone" if scene is None else "regenerated")
        started = scene.value(self.fields.started)
        self.job_started = started_seconds(started)
        if not job_overran(started, now, limit):
            return None
        stopped = self.cancel(operation_id)
        how = "cancelled at the provider" if stopped else "the provider could not cancel it"
        error = f"{self.stage.name} job ran over {limit:g} s (paid): {how}"
        error += f"; operation {operation_id}"
        return self.fail_polled(operation_id, error, "job ran over its time")

    def superseded(self, operation_id: str, why: str) -> Step:
        """A running job whose scene is gone or holds another job of this stage (a
        regeneration over a kept job): its output could never be recorded (`complete` is
        conditioned on the operation id), so polling it on would hold its quota slot forever.
        It is stopped where the provider can, and its slot freed."""
        stopped = self.cancel(operation_id)
        self.release_slot(operation_id)
        how = "cancelled at the provider" if stopped else "left to run out at the provider"
        self.log(f"scene {why}: job {how}, its slot freed", operation_id, None)
        return Step.done(f"superseded: scene {why} while its job ran")

    def give_up_polling(self, operation_id: str, crashed: int) -> Step:
        """Polls of this operation crashed `crashed` times in a row (errors we can't classify,
        or workers killed mid-poll): fail the scene rather than poll it forever."""
        cause = self.ctx.board.poll_error(operation_id) or "the worker was lost during the poll"
        error = f"polling failed {crashed} times in a row without an answer: {cause}"
        return self.fail_polled(operation_id, error, "polling never answered")

    def fail_polled(self, operation_id: str, error: str, why: str, *, keep: bool = False) -> Step:
        """Fail the scene of an operation its polls gave up on, its slot freed (`keep`: its
        operation kept for the next run, see `SceneStore.fail`)."""
        self.release_slot(operation_id)
        self.ctx.scenes.fail(
            *self.ids,
            error=error,
            operation_id=operation_id,
            stage=self.fields,
            keep_operation=keep,
        )
        self.ctx.board.poll_answered(operation_id)
        self.log(error, operation_id, None)
        return self.x.finished(f"failed: {why}")

    # -- quota ---------------------------------------------------------------------------------
    def slot_check_seconds(self, place: int) -> float:
        """When a waiter asks again by itself, by its place in line. A parked waiter is woken by
        the release that frees its slot, so its own check is only the fallback (a lost wake-up,
        a slot that expired with its worker) and comes `PARKED_SLOWDOWN` times later."""
        rounds = max(1, math.ceil(place / self.provider.limit))
        slowdown = PARKED_SLOWDOWN if self.x.park is not None else 1
        return min(self.s.backoff_max, self.provider.poll_seconds * rounds * slowdown)

    def acquire_slot(self, park: str | None = None) -> SlotDecision:
        """Take (or keep) this scene's place in the provider's quota pool."""
        return self.ctx.limiter.acquire(
            self.provider.pool,
            self.member,
            limit=self.provider.limit,
            ttl=self.provider.liveness_seconds,
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

    def polls_first(self) -> bool:
        """After this scene's job was found done and its slot freed: whether other jobs of the
        pool still run and this project is not lighter than the busiest (`polls_first`)."""
        return polls_first(self.ctx.limiter.slots_held(self.provider.pool), self.x.project_id)

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

    def log(self, message: str, operation_id: str | None, attempt: int | None) -> None:
        self.x.log(message, operation_id, attempt, self.stage.name)
