"""A paid job's polls, from its stored id to its output recorded: the poll's pace, its
answers, its errors counted, the job that outlives its time or its scene."""

from __future__ import annotations

import time
from collections.abc import Mapping

import redis

from mvpipe import hooks
from mvpipe.errors import (
    PermanentProviderError,
    PollRefused,
    StoreUnavailable,
    TransientProviderError,
)
from mvpipe.pipeline.quota_slots import QuotaSlots
from mvpipe.pipeline.steps import Next, Step
from mvpipe.providers.base import JobState, JobStatus
from mvpipe.providers.classify import describe
from mvpipe.providers.fairness import fewer_than_busiest
from mvpipe.states import (
    backoff_seconds,
    carried_start,
    job_overran,
    scene_read_due,
    started_seconds,
)
from mvpipe.store.records import SceneRecord

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


class JobPolls(QuotaSlots):
    """The polls of a stored job until its output is recorded (or the scene failed): what a
    poll's answer means, the count of polls without one, a job that ran over its time."""

    @property
    def reads_scene(self) -> bool:
        """Whether a finished job's poll reads the scene: for its output, or to know whether
        the output's write completes the scene."""
        return self.provider.reads_scene or not self.stage.never_last

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

    def polls_first(self) -> bool:
        """After this scene's job was found done and its slot freed: whether other jobs of the
        pool still run and this project is not lighter than the busiest (`polls_first`)."""
        return polls_first(self.ctx.limiter.slots_held(self.provider.pool), self.x.project_id)
