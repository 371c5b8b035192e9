"""Media work whose process may be lost: a song's analysis, a cut, an assembly.

Their tasks are acknowledged late and requeued when their pool process is lost (Celery's
`reject_on_worker_lost`), so that a worker killed by something else (a deploy, the machine)
loses no work. A song or clip whose decode itself kills the process (its memory under a
container limit, a native crash in FFmpeg or numba) would then run and die again forever, with
no exception to count: each try is counted in Redis before it starts and the count cleared when
it ends, so a count that keeps growing is tries lost with their process, and the caller gives
up once `MVPIPE_MAX_ATTEMPTS` were lost in a row.

Only a message delivered again (the transport's `redelivered` flag) can follow a lost process,
so only its tries are counted: a first delivery, every scene's cut on the happy path, sends no
Redis command. The count is then the tries lost (the first delivery, not counted, was too).
A whole worker lost (the machine or its container killed, its main process dead) sends nothing
again: its run goes stale, and reconcile takes the run over (or resumes the scene whose cut
stopped, for the same run). Those messages follow a lost try too: reconcile marks them
(`taken_over`, the run the new one replaced; a resumed scene's `redelivered`), and a taken-over
run's count goes on from the run it replaced, so that work killing its whole worker gives up
after `MVPIPE_MAX_ATTEMPTS` losses as well.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from mvpipe.deps import Context
from mvpipe.providers.classify import describe

log = logging.getLogger("mvpipe.lost_tries")

T = TypeVar("T")


def carried_on(taken_over: str | None) -> dict[str, str]:
    """The keywords that carry a run's `taken_over` on to its next message: none when unset,
    so a run that took none over sends its messages as before."""
    return {} if taken_over is None else {"taken_over": taken_over}


#: How many of the tries counted lost in a row may have been lost by presumption, not with
#: their process: a message a warm shutdown restored unrun comes back `redelivered`, and a run
#: taken over (or a scene resumed) for another reason counts its next try as following a loss.
#: A give-up needs more than that, whatever `MVPIPE_MAX_ATTEMPTS` says: at 1, a deploy would
#: otherwise fail the work it only interrupted (a cut's scene, a finalize) without a loss.
PRESUMED = 1


class LostTooOften(Exception):
    """The work's tries were lost with their process `max_attempts` times in a row: give up
    (the message says so, for `lastError`). Its count is cleared: a user's next run tries
    afresh."""


class LostTries:
    """The tries of one piece of work (`job`: its kind and what makes it, e.g. a cut's key)
    for one run (`run_id`: a count a cancelled or replaced run left behind never fails a later
    run's try), run from a message that was `redelivered` or not (a first delivery: nothing
    counted). `taken_over`: the run `run_id` took over (reconcile's takeover of a stale run):
    counted too, from the count the work had in that run, whose try was lost with it."""

    def __init__(
        self,
        ctx: Context,
        job: str,
        *,
        run_id: str | None,
        redelivered: bool,
        taken_over: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.redelivered = redelivered or taken_over is not None
        self.job = job if run_id is None else f"{job}:{run_id}"
        self.before = None if taken_over in (None, run_id) else f"{job}:{taken_over}"

    def attempt(self, work: Callable[[], T], what: str) -> T:
        """`work()`, this try counted; `LostTooOften` instead once `max_attempts` tries of
        `what` were lost in a row (the count cleared first)."""
        lost = self.begin()
        if lost is not None:
            self.end()
            raise LostTooOften(f"{what} lost its worker process {lost} times")
        with self.counted():
            return work()

    def begin(self) -> int | None:
        """Count this try before it starts. The number of tries lost in a row before it when
        that reached `max_attempts` (and passed `PRESUMED`: the caller gives up and calls
        `end`), else None."""
        if not self.redelivered:
            return None
        lost = self.ctx.board.start_try(self.job, goes_on_from=self.before)
        return lost if lost >= max(self.ctx.settings.max_attempts, PRESUMED + 1) else None

    @contextmanager
    def counted(self) -> Iterator[None]:
        """Around the try: however it ends (returned or raised), it was not lost. An error is
        counted where it is handled (the task's retries), never here as well."""
        try:
            yield
        except BaseException:
            self.end()
            raise
        self.end()

    def end(self) -> None:
        """Best effort: a count left by a Redis outage costs the work one try, and must not
        replace what the try did (nor the error it raised)."""
        if not self.redelivered:
            return
        try:
            self.ctx.board.try_ended(self.job)
        except Exception as exc:
            log.warning("could not end the try of %s: %s", self.job, describe(exc))
