"""One store call through an outage (DynamoDB's and S3's alike): the pause between two tries,
how long the tries go on, and the bound a lease-limited path puts on them. Missing AWS
credentials are no outage: a `ConfigurationError` at once."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from mvpipe.errors import ConfigurationError, StoreNotTried
from mvpipe.settings import STORE_RETRY_PAUSE_MAX

T = TypeVar("T")

#: The bounds (`retry_until`) the thread's store calls are inside, outermost first.
_bounds = threading.local()


@dataclass
class Bound:
    """One `retry_until` bound, and whether any store call inside it was tried: a path that
    meets `StoreNotTried` knows it wrote nothing only while this is False."""

    deadline: float
    #: whether a call begun past the bound still makes one try (and no retry): for a write
    #: whose loss costs more than its lateness (the record of a submitted job's id, whose
    #: marks are sized for one late try), where a claim's is better not tried at all
    try_late: bool = False
    tried: bool = False


def retry_pause(attempt: int) -> float:
    """Seconds to wait after the `attempt`-th failed try: doubling from 0.1 s up to
    `STORE_RETRY_PAUSE_MAX`, jittered down to half so that many callers don't retry together."""
    return min(STORE_RETRY_PAUSE_MAX, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)


@contextlib.contextmanager
def retry_until(deadline: float, *, try_late: bool = False) -> Iterator[Bound]:
    """The thread's store calls inside (DynamoDB's and S3's) stop retrying an outage at
    `deadline` (epoch seconds), and one begun past it is not tried (`StoreNotTried`), or
    tried once with `try_late`: a path that must finish within a lease does not spend it
    waiting for the store. Nested bounds keep the earliest."""
    bound = Bound(deadline, try_late)
    stack: list[Bound] = getattr(_bounds, "stack", [])
    _bounds.stack = [*stack, bound]
    try:
        yield bound
    finally:
        _bounds.stack = stack


def credentials_missing(exc: BaseException) -> bool:
    """Whether `exc` comes of AWS credentials botocore could not find, or found in part, or of
    a profile it could not find: a setting to fix, not a store to wait for. Looked for down the
    error's causes (pynamodb's `cause` too): pynamodb wraps botocore's error, and a store's
    `ConfigurationError` (`no_credentials`) keeps it as its cause."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError, ProfileNotFound

    seen: set[int] = set()
    cause: object = exc
    while isinstance(cause, BaseException) and id(cause) not in seen:
        if isinstance(cause, NoCredentialsError | PartialCredentialsError | ProfileNotFound):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or getattr(cause, "cause", None) or cause.__context__
    return False


def no_credentials(label: str, exc: BaseException) -> ConfigurationError:
    """The error a store's call that met `credentials_missing` raises (`from exc`)."""
    return ConfigurationError(f"AWS credentials missing for {label}: {exc}")


@dataclass(frozen=True)
class Outages:
    """How one store's calls meet an outage: tried again while `is_outage` says the error
    will pass, for `retry_seconds` at most and never past the thread's `retry_until` bound;
    any other error is the store's answer and raised at once, for the store to name. Missing
    credentials (`credentials_missing`) are a setting to fix, not an outage: raised at once as
    a `ConfigurationError`, since no try within the call finds them."""

    #: the store, as the warnings name it
    label: str
    retry_seconds: float
    is_outage: Callable[[Exception], bool]
    log: logging.Logger

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()`, tried until it answers; the last outage's error is raised when the time is
        up. A bounded call starts no try after its bound: one started in the pause past it
        would answer a pause and a timeout after the lease, past the marks sized on it; one
        begun past its bound is `StoreNotTried`."""
        deadline = time.monotonic() + self.retry_seconds
        bounds: list[Bound] = getattr(_bounds, "stack", [])
        last_start = None
        if bounds:
            first = min(bounds, key=lambda b: b.deadline)
            last_start = time.monotonic() + first.deadline - time.time()
            if time.monotonic() >= last_start and not first.try_late:
                raise StoreNotTried(f"{self.label} call not tried: begun past its bound")
            deadline = min(deadline, last_start)
        attempt = 0
        while True:
            for bound in bounds:
                bound.tried = True
            try:
                return fn()
            except Exception as exc:
                if credentials_missing(exc):
                    raise no_credentials(self.label, exc) from exc
                if not self.is_outage(exc):
                    raise
                attempt += 1
                delay = retry_pause(attempt)
                now = time.monotonic()
                if now >= deadline or (last_start is not None and now + delay >= last_start):
                    raise
                self.log.warning(
                    "store call failed (%s: %s); retrying in %.2fs", self.label, exc, delay
                )
                time.sleep(delay)
                if last_start is not None and time.monotonic() >= last_start:
                    raise  # the pause overran the bound: no try starts past it
