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
    #: when the scene's marks set by this execution lapse, the last (monotonic; 0: none set)
    alive_until: float = 0.0
    #: when the scene's owed mark set by this execution lapses (monotonic; 0: none set, or
    #: cleared by `PaidOperation.stored`)
    owed_until: float = 0.0
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
        stage run inline, after the poll that finished the last one). `owed`: the mark of a
        paid claim or of a write owed for paid work, which holds the scene from another
        submitter past its lease (`stages.submission_held`): a key of its own, which no plain
        mark (this execution's or another's) ends. `shorten`: the owed write is done
        (`PaidOperation.stored`): the owed mark ends, and the scene's mark is `seconds` long,
        a longer one this execution set cut to it."""
        now = time.monotonic()
        slack = seconds * (1 - TOUCH_SLACK)
        left = (self.owed_until if owed else self.alive_until) - now
        if owed or not shorten:
            fresh = left >= slack
        else:
            fresh = not self.owed_until and slack <= left <= seconds
        if fresh:
            return
        self.ctx.board.touch_scene(
            self.project_id, self.sequence, seconds, owed=owed, clear=shorten
        )
        until = now + seconds
        if shorten:
            self.alive_until, self.owed_until = until, 0.0
        else:
            self.alive_until = max(self.alive_until, until)
            if owed:
                self.owed_until = until

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
