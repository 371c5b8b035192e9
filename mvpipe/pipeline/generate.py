"""One step of a scene: run its first missing stage (or carry on with the one in flight).

Each call does a bounded amount of work and returns; waiting happens in the broker (the next step
queued with a countdown), never in a worker slot. A stage that runs on another queue (the cut on
`mvpipe.media`) is reached by queueing the next step there. Re-running a step is always safe: the
lease, the stored operation ids and the conditions of the store decide who may do what
(DESIGN.md invariants 1-3).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from mvpipe.deps import Context
from mvpipe.errors import MvpipeError
from mvpipe.models import SceneStatus
from mvpipe.pipeline.execution import Execution
from mvpipe.pipeline.operation import PaidOperation
from mvpipe.pipeline.stage_provider import StageProvider
from mvpipe.pipeline.stages import BY_NAME, GENERATE, Stage, next_stage, submission_held
from mvpipe.pipeline.steps import Next, Step
from mvpipe.providers.limiter import slot_member
from mvpipe.states import started_seconds
from mvpipe.store.records import SceneRecord

#: Stages one execution may run back to back before it queues its next step (a bound on work).
MAX_STAGES_PER_STEP = 4


def stage_provider(ctx: Context, stage: Stage, provider: str) -> StageProvider:
    """The provider a paid stage calls for a project of the video provider `provider` (the
    stage's `provider`: the project's video model for generation, the configured lip-sync
    model for lip-sync)."""
    if stage.provider is None:
        raise ValueError(f"stage {stage.name} is not paid")
    return stage.provider(ctx, provider)


def carried_stage(name: str | None) -> Stage:
    """The stage a step's message names (generation when it names none)."""
    return BY_NAME[name or GENERATE.name]


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
        wake: Callable[[list[str]], set[str]] | None = None,
        queue: str | None = None,
        redelivered: bool = False,
        taken_over: str | None = None,
    ) -> None:
        """`park` makes the message that resumes this scene at once when a slot frees for it;
        `wake` sends the parked messages a release of this scene hands back and names the other
        projects they are of (None: they wait in `wakes`); `queue` is the queue this
        execution was delivered on (None: run every stage here); `redelivered`, `taken_over`:
        its message may follow a lost try (`Execution`)."""
        self.ctx = ctx
        self.x = Execution(
            ctx,
            project_id,
            sequence,
            run_id,
            provider,
            redelivered=redelivered,
            taken_over=taken_over,
            park=park,
            wake=wake,
        )
        self.queue = queue

    @property
    def wakes(self) -> list[str]:
        return self.x.wakes

    @property
    def cost_micros(self) -> int | None:
        """What the scene has cost so far, once this execution knows it (task meta)."""
        return self.x.cost_micros

    @property
    def member(self) -> str:
        """The scene's member in every quota pool (one job in flight per scene at most)."""
        return slot_member(self.x.project_id, self.x.sequence)

    def paid(self, stage: Stage) -> PaidOperation:
        return PaidOperation(self.x, stage, stage_provider(self.ctx, stage, self.x.provider))

    def step(
        self,
        operation_id: str | None = None,
        transient_polls: int = 0,
        *,
        token: str | None = None,
        attempt: int = 0,
        stage: str | None = None,
        made_from: str | None = None,
        release: dict[str, Any] | None = None,
        job_started: float | None = None,
        unread_polls: int = 0,
    ) -> Step:
        """One step. `operation_id` (of `stage`, generation by default) is polled (`job_started`,
        `unread_polls`: what its last poll carried, see `PaidOperation.ran_over`); with `token`
        it is a paid job whose record is still to be (re)done (`made_from`: the input the job
        was made from): that comes first, even in a cancelled run (the record decides the
        job's fate). With `token` and `release` instead, a lease under which no job was
        accepted is given back first (`LeasePending`)."""
        ctx, run_id = self.ctx, self.x.run_id
        carried = carried_stage(stage)
        if run_id is not None:
            ctx.board.keep_run_alive(run_id, ctx.settings.run_stale_seconds)
        if token is not None and (operation_id is not None or release is not None):
            # A redo may come long after the lease (a store outage): marked alive first, even
            # when its provider can't be built, for as long as the redo may take to come round.
            self.keep_owed(carried)
            if operation_id is not None:
                machine = self.paid(carried)
                return self.then(machine.record(operation_id, token, attempt, made_from))
            return self.paid(carried).resume_give_back(token, release or {})
        if run_id is not None and ctx.board.cancelled(run_id):
            if carried.paid:
                self.paid(carried).leave_line()
            return Step.done("run cancelled")
        if operation_id is not None:
            machine = self.paid(carried)
            step = machine.poll(
                operation_id,
                transient_polls,
                job_started=job_started,
                unread_polls=unread_polls,
            )
            return self.then(step, polled=machine)
        return self.advance()

    def owed_keeper(self, stage: str | None) -> Callable[[], None]:
        """`keep_owed` of the stage a step carries (`stage`, generation when None): what an
        owed write's retry calls while it waits for the broker (`MvpipeTask.owed_retry`)."""
        carried = carried_stage(stage)
        return lambda: self.keep_owed(carried)

    def keep_owed(self, stage: Stage) -> None:
        """This step redoes a write owed for paid work (a job's record, a lease's give-back):
        reconcile must not free the scene for a second paid claim while the redo waits for
        the store (`Settings.owed_write_seconds`, of the stage's provider)."""
        s = self.ctx.settings
        self.x.touch(s.owed_write_seconds(stage.provider_name(s, self.x.provider)), owed=True)

    def submit(self, scene: SceneRecord) -> Step:
        """Claim and submit the scene's generation (as a duplicate execution would)."""
        return self.then(self.paid(GENERATE).submit(scene))

    def then(self, step: Step, stages_run: int = 1, *, polled: PaidOperation | None = None) -> Step:
        """A stage finished its output: go on with the scene's next stage. Not here when this
        execution freed a slot for another project's scene: the next stage is queued behind
        that scene's wake-up, so a worker starts the newcomer's job before this scene's cut
        (a small project is not kept behind the media work of a large one's finished jobs).
        Nor when `polled` (the timed poll that found the job done) leaves other jobs of its
        pool running (`polls_first`): their polls come due meanwhile and go first. Unless this
        project holds no more slots than the woken scene's (`lighter`), or, after a timed poll,
        fewer than the busiest: its next stage then goes on at once, ahead of that project's
        woken scenes and polls (a small project's cut is not kept behind a large one's wave)."""
        if step.next != Next.STAGE:
            return step
        if (self.x.handed_over and not self.x.lighter) or (
            polled is not None and not self.x.handed_over and polled.polls_first()
        ):
            self.mark_queued()
            return Step(Next.STAGE, step.outcome, 0.0, {}, queue=self.queue, behind=True)
        if stages_run >= MAX_STAGES_PER_STEP:
            return Step(Next.STAGE, step.outcome, 0.0, {}, queue=self.queue)
        return self.advance(stages_run, step.scene)

    def mark_queued(self) -> None:
        """Marked alive so reconcile leaves the scene to this chain while its next stage waits
        in line (however long the queue's backlog); the stage itself marks it again. Its run
        too: no step of it may come while its last scenes wait, longer than its staleness."""
        s = self.ctx.settings
        queued = max(s.liveness_seconds(self.x.provider), s.stage_queue_seconds)
        self.x.touch(queued)
        if self.x.run_id is not None:
            self.ctx.board.keep_run_waiting(self.x.run_id, queued)

    def advance(self, stages_run: int = 0, scene: SceneRecord | None = None) -> Step:
        """Run the scene's first missing stage, or move to the queue it runs on. `scene`: the
        scene as this execution's last write returned it (else it is read)."""
        if scene is None:
            scene = self.ctx.scenes.get(self.x.project_id, self.x.sequence)
        if scene is None:
            return Step.done("scene missing")
        self.x.cost_micros = scene.cost_micros
        if scene.status == SceneStatus.FAILED:
            return self.x.finished(f"already {scene.status}")
        stage = next_stage(scene)
        if stage is None:
            return self.x.finished(f"already {scene.status}")
        if submission_held(self.ctx, scene, time.time()):
            # A live lease, or past it a claim whose record may still be owed (a cancelled
            # run's redo): claiming would pay for a second job. Reconcile frees the scene once
            # its owed mark lapses. Before the move to the stage's queue, whose queued mark
            # would take the owed one's place.
            return Step.done("owned by another execution")
        if self.queue is not None and stage.queue != self.queue:
            self.mark_queued()
            carry = {"stage": stage.name}
            return Step(Next.STAGE, f"queued for {stage.name}", 0.0, carry, queue=stage.queue)
        if stage.runner is not None:  # a free stage
            return self.then(stage.runner(self.x, stage).run(scene), stages_run + 1)
        machine = self.paid(stage)
        operation_id = stage.operation(scene)
        if operation_id is not None:
            machine.log(
                "resuming stored operation", operation_id, scene.value(stage.fields.attempts)
            )
            # just read: its start is known, and it is not superseded
            started = started_seconds(scene.value(stage.fields.started))
            step = machine.poll(operation_id, 0, job_started=started)
            return self.then(step, stages_run + 1)
        return self.then(machine.submit(scene), stages_run + 1)

    def give_up(self, error: str) -> Step:
        """This execution chain met an error no retry cures: the scene says why (`lastError`),
        and a stage nobody holds fails, so neither the run's finalize nor reconcile waits for
        or restarts it forever (a user's run tries again). A stored operation is paid work, and
        a live lease may be submitting one: the scene stays theirs, with the error noted."""
        scene = self.ctx.scenes.get(self.x.project_id, self.x.sequence)
        if scene is None or scene.status in (SceneStatus.COMPLETED, SceneStatus.FAILED):
            return Step.done("gave up")
        stage = next_stage(scene)
        if stage is not None and self.ctx.scenes.fail_open(
            self.x.project_id, self.x.sequence, error=error, stage=stage.fields
        ):
            if stage.paid:
                self.free_slot(stage)
            self.x.log(f"gave up, scene failed: {error}", None, None, stage.name)
            return self.x.finished("failed: gave up")
        self.ctx.scenes.note_error(self.x.project_id, self.x.sequence, error=error)
        return Step.done("gave up, the stage's owner goes on")

    def free_slot(self, stage: Stage) -> None:
        """The quota slot a failed scene's stage may hold (acquired before its claim)."""
        try:
            machine = self.paid(stage)
        except MvpipeError:  # no provider (the error given up on): no slot of its pool taken
            return
        machine.release_unowned_slot()
