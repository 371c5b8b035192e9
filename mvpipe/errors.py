"""The one exception tree of mvpipe.

    MvpipeError
    ├── InvalidInput            bad ids, text, sequences, providers: nothing was written
    │   └── NoClipDuration      no clip length the provider makes fits (mvpipe.durations)
    ├── NotFound                no such project or scene
    ├── Conflict                the state moved on (another run is active, a lease is held)
    │   └── RunInactive         the run this work belongs to was released or replaced
    ├── Timeout                 waiting for a project took longer than asked
    ├── ConfigurationError      settings or credentials missing or wrong
    ├── UnexpectedError         a bug: retried a bounded number of times, then given up
    ├── StoreUnavailable        DynamoDB/S3/Redis did not answer: retry later
    │   └── BrokerUnavailable   the broker's Redis refused a message or a run mark
    └── ProviderError           a planner or video provider refused or failed
        ├── TransientProviderError   429, 5xx, timeouts, resets: retry with backoff
        │   └── QuotaExceeded        the provider's concurrency limit was hit
        ├── PermanentProviderError   invalid request, safety block: never retried
        ├── OutputUnavailable        a paid job's output could not be fetched: polled again
        └── PollRefused              a poll of a stored job refused to us: polled again

Retry policy keys off these types, never off message text.

Outside the tree, on purpose: `RecordPending` and `LeasePending` (mvpipe.pipeline.steps) are
control flow, not errors. A paid job's record or a lease's give-back met an outage; the task
retries that step with what they carry, and they never reach a caller or a `lastError`.
"""

from __future__ import annotations


class MvpipeError(Exception):
    """Root of every error mvpipe raises on purpose."""


class InvalidInput(MvpipeError, ValueError):
    """The caller's input was rejected before anything was written."""


class NotFound(MvpipeError, LookupError):
    """The project or scene does not exist (or is not visible yet)."""


class Conflict(MvpipeError):
    """The stored state does not allow the transition any more."""


class RunInactive(Conflict):
    """The run a task belongs to is no longer the project's active run."""


class Timeout(MvpipeError, TimeoutError):
    """A wait ended before the project did."""


class ConfigurationError(MvpipeError):
    """A setting or credential is missing or malformed."""


class UnexpectedError(MvpipeError):
    """An error no code expected (a bug): what a task's bounded retry of it carries, as
    scrubbed text, so a task's state never names a bug as an outage."""


class StoreUnavailable(MvpipeError):
    """A backing service (DynamoDB, S3, Redis) failed transiently."""


class StoreNotTried(StoreUnavailable):
    """A bounded store call begun past its bound, and so not tried: unlike any other outage,
    it wrote nothing. Still "retry later" to whoever reads it as a `StoreUnavailable`."""


class BrokerUnavailable(StoreUnavailable):
    """The broker (or mvpipe's Redis) could not take a message or a mark: start it, retry."""

    @classmethod
    def because(cls, cause: BaseException) -> BrokerUnavailable:
        return cls(
            f"the broker's Redis did not answer ({type(cause).__name__}: {cause}); start it "
            "(`mvpipe stack` runs one locally) or check MVPIPE_BROKER_URL and MVPIPE_REDIS_URL, "
            "then retry"
        )


class ProviderError(MvpipeError):
    """A provider call failed; `message` is safe to store (it never holds a secret).

    `refused` is True only when the provider surely accepted no job: it answered with a 4xx, or
    the request never left. A timeout, a reset connection or a 5xx (a gateway's may come after
    the provider accepted the job) leaves the outcome unknown (the job may run and be billed),
    so it is never `refused`."""

    def __init__(self, message: str = "", *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class TransientProviderError(ProviderError):
    """Worth retrying later: rate limits, server errors, timeouts, connection resets."""


class QuotaExceeded(TransientProviderError):
    """The provider refused because too many jobs are in flight."""


class PermanentProviderError(ProviderError):
    """Retrying would fail again (or pay again for the same refusal)."""


class OutputUnavailable(ProviderError):
    """A finished (so paid) job's output could not be fetched: a signed URL expired, the
    output was deleted or is not readable yet. Not the job's failure: a passing refusal may
    clear, so the poll loop counts it like a poll error and fails the scene only after
    `MVPIPE_MAX_POLL_ERRORS` of them in a row."""


class PollRefused(ProviderError):
    """A poll of a stored (so maybe paid) job answered that *we* may not read it: 401, 403, or
    404 for an id the provider gave us (a rotated or misconfigured credential, one of another
    account or project). It says nothing about the job, which runs on and is billed: like
    `OutputUnavailable`, the poll loop counts it and polls again, and past
    `MVPIPE_MAX_POLL_ERRORS` fails the scene with its operation id kept, so a user's next run
    polls that job again before paying for another."""
