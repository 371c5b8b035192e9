"""What every stage runner of one `generate_scene` execution shares: ids, the run's bookkeeping,
and the log line."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mvpipe.deps import Context
from mvpipe.pipeline.steps import Step

log = logging.getLogger("mvpipe.generate")

#: The share of a liveness mark's life that may have passed before `touch` writes it again.
TOUCH_SLACK = 0.1


@dataclass
class Execution:
    """One execution of `generate_scene` for (project, sequence) within a run (or none)."""

    ctx: Context
    project_id: str
    sequence: int
    run_id: str | None
    #: the project's video provider
    provider: str
    #: this execution's message was delivered again (its process may have been lost:
    #: `LostTries`)
    redelivered: bool = False
    #: the run `run_id` took over (reconcile's takeover of a stale run: `LostTries`)
    taken_over: str | None = None
    #: makes the message that resumes this scene at once when a quota slot frees for it
    park: Callable[[], str] | None = None
    #: sends the parked messages of woken scenes and names the other projects they are of
    #: (None: they stay in `wakes` for the caller)
    wake: Callable[[list[str]], set[str]] | None = None
    #: parked messages of waiting scenes this execution's released slots entitle to run, not
    #: sent yet
    wakes: list[str] = field(default_factory=list)
    #: the other projects whose waiting scenes the slots this execution freed went to
    handed_to: set[str] = field(default_factory=set)
    #: this project, even with the slot it handed over, held no more than each of those
    lighter: bool = False
    #: what the scene has cost so far, once this execution knows it (task meta)
    cost_micros: int | None = None
    #: when the scene's liveness mark set by this execution lapses (monotonic; 0: none set)
    alive_until: float = 0.0
    #: the scene's mark this execution set last is a paid claim's or an owed write's
    owed_mark: bool = False
    #: outputs this execution uploaded (key -> bytes): the next stage, run in the same
    #: execution, takes its input from here instead of downloading what was just uploaded
    uploaded: dict[str, bytes] = field(default_factory=dict)

    def finished(self, outcome: str) -> Step:
        """The scene reached a final state: count it for the run's re-finalize trigger."""
        if self.run_id is None:
            return Step.done(outcome, refinalize=True)
        return Step.done(
            outcome, refinalize=self.ctx.board.scene_finished(self.run_id, self.sequence)
        )

    def hand_on(self, woken: list[str]) -> None:
        """A release handed back the wake-ups of the waiters its slot now belongs to: sent at
        once, so a woken scene starts while this execution still uploads and runs its next
        stage (the cut) rather than after it."""
        self.wakes.extend(woken)
        self.send_wakes()

    def send_wakes(self) -> None:
        """Send the wake-ups not sent yet (also the task's last act, whatever happened)."""
        if self.wakes and self.wake is not None:
            woken, self.wakes = self.wakes, []
            self.handed_to |= self.wake(woken)

    @property
    def handed_over(self) -> bool:
        """A slot this execution freed went to another project's waiting scene."""
        return bool(self.handed_to)

    def touch(self, seconds: float, *, shorten: bool = False, owed: bool = False) -> None:
        """This scene is being worked on: reconcile must not start a second chain for it.
        A mark this execution set moments ago for as long is not written again (the next
        stage run inline, after the poll that finished the last one). `shorten`: a longer
        mark this execution set is cut to `seconds` (one no longer needed, see
        `PaidOperation.stored`). `owed`: the mark of a paid claim or of a write owed for
        paid work, which holds the scene from another submitter past its lease
        (`stages.submission_held`); a plain mark this execution set is no such mark, so it
        is written over. A plain mark within an owed one this execution set leaves it owed:
        it comes once the job's id is stored or the lease given back, when nothing is held."""
        now = time.monotonic()
        left = self.alive_until - now
        kept = self.owed_mark or not owed
        if kept and left >= seconds * (1 - TOUCH_SLACK) and not (shorten and left > seconds):
            return
        self.ctx.board.touch_scene(self.project_id, self.sequence, seconds, owed=owed)
        self.alive_until = now + seconds
        self.owed_mark = owed

    def log(
        self, message: str, operation_id: str | None, attempt: int | None, stage: str = "generate"
    ) -> None:
        log.info(
            "%s project=%s sequence=%d stage=%s attempt=%s operation=%s run=%s",
            message,
            self.project_id,
            self.sequence,
            stage,
            attempt if attempt is not None else "-",
            operation_id or "-",
            self.run_id or "-",
        )
