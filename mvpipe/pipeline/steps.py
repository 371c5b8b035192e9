"""What a pipeline step tells its task wrapper to do next, and how the pipeline enqueues work."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from mvpipe.store.records import SceneRecord


class Next(StrEnum):
    DONE = "done"  #: nothing more for this execution
    POLL = "poll"  #: poll the stored operation again after `countdown`
    WAIT_SLOT = "wait_slot"  #: no provider slot yet: try again after `countdown`
    RETRY_SUBMIT = "retry_submit"  #: a transient submit error: try a new submission later
    STAGE = "stage"  #: a stage's output is recorded: run the scene's next stage (on `queue`)


@dataclass(frozen=True)
class Step:
    next: Next
    outcome: str
    countdown: float = 0.0
    #: arguments the next execution needs (operation id, counters of transient errors)
    carry: dict[str, Any] = field(default_factory=dict)
    #: the run's finalize already ran and this scene was its last open one
    refinalize: bool = False
    #: the queue the next step runs on (None: where this one ran)
    queue: str | None = None
    #: the scene as the stage's last write left it: the next stage in this execution starts
    #: from it without reading the scene again (never carried to another execution)
    scene: SceneRecord | None = None
    #: the next step waits until its queue holds nothing else (the wake-ups this step sent)
    behind: bool = False
    #: the scene went back to `pending` for a later run (a cancelled run's job stopped when
    #: its owed record landed): the project's active run resumes it (`runs.resume_freed`)
    freed: bool = False

    @classmethod
    def done(cls, outcome: str, *, refinalize: bool = False, freed: bool = False) -> Step:
        return cls(Next.DONE, outcome, refinalize=refinalize, freed=freed)


class RecordPending(Exception):
    """A paid job's operation id could not be written yet (our store or Redis failed, so the
    write's outcome is unknown). The task retries with `carry`, and that next step redoes the
    record, which recognises its own landed write; the job is never dropped for our outage."""

    def __init__(self, carry: dict[str, Any]) -> None:
        super().__init__(f"operation {carry.get('operation_id')} not recorded yet")
        self.carry = carry


class LeasePending(Exception):
    """A lease under which the provider surely accepted no job could not be given back yet: the
    claim's own reply was lost (it may have landed, reserving the price), or the release or
    fail that ends the lease met an outage. The task retries with `carry` (the token and
    `release`: the refund, whether the lease went unused, the error, whether to fail), and that
    next step redoes the give-back: it refunds only while the lease still holds the token with
    no operation (a claim that never landed refunds nothing), and a redo that finds its own
    landed write succeeds (invariant 7). Otherwise the reservation would stay committed for a
    job never submitted, and the next claim would reserve the price again."""

    def __init__(self, carry: dict[str, Any]) -> None:
        super().__init__(f"lease {carry.get('token')} not given back yet")
        self.carry = carry


class Dispatcher(Protocol):
    """Enqueues work; implemented over Celery by `mvpipe.messaging.dispatch`."""

    def start_run(
        self,
        project_id: str,
        run_id: str,
        sequences: list[int] | None = None,
        *,
        taken_over: str | None = None,
    ) -> Any: ...

    def resume(
        self,
        project_id: str,
        sequence: int,
        run_id: str | None,
        provider: str,
        operation_id: str | None = None,
        stage: str | None = None,
        *,
        after_loss: bool = False,
    ) -> Any: ...

    def finalize(self, project_id: str, run_id: str | None, sequences: list[int] | None) -> Any: ...

    def assemble(self, project_id: str, run_id: str) -> Any: ...

    def wake(self, parked: Iterable[str]) -> int: ...
