"""Run bookkeeping in Redis: liveness, cancellation, and the re-finalize trigger.

Liveness lives here, not in DynamoDB: every task execution of a run refreshes a short-lived key,
so "this run is stale" and "nobody polls this scene" are cheap to tell and cost no table writes.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mvpipe.errors import BrokerUnavailable

P = ParamSpec("P")
R = TypeVar("R")


def _answered(method: Callable[P, R]) -> Callable[P, R]:
    """Redis errors reach callers as `BrokerUnavailable` (a `StoreUnavailable`: retried by
    tasks, explained to API users), never as raw redis exceptions."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except redis.RedisError as exc:
            raise BrokerUnavailable.because(exc) from exc

    return call


#: How long a quick client waits for Redis to connect or answer, with no retry.
QUICK_REDIS_SECONDS = 2.0


def quick_redis(url: str) -> redis.Redis:
    """A client for marks whose loss costs only a wait (a song's analysis on its way): it
    answers within `QUICK_REDIS_SECONDS` or raises, never retrying, so a Redis that is away
    cannot hold `create` or `estimate` (or a worker's main process) for the ~10 tries x 10 s
    the run's own client spends."""
    return redis.Redis.from_url(
        url,
        socket_timeout=QUICK_REDIS_SECONDS,
        socket_connect_timeout=QUICK_REDIS_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )


#: delete a lock only if it still holds the caller's value
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: renew a hold only if it still holds the caller's value
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_FINISH = """
redis.call('SADD', KEYS[1], ARGV[1])
local expected = redis.call('GET', KEYS[2])
if not expected then return 0 end
-- Finalize ran early (rare): renew the set's life, and leave its planning sentinel uncounted.
redis.call('EXPIRE', KEYS[1], ARGV[2])
local finished = redis.call('SCARD', KEYS[1]) - redis.call('SISMEMBER', KEYS[1], ARGV[3])
if finished >= tonumber(expected) then return 1 end
return 0
"""

#: a try counted, its count going on from another job's (then dropped) on its first count
_GO_ON = """
local started = redis.call('INCR', KEYS[1])
if started == 1 then
  local before = tonumber(redis.call('GET', KEYS[2]) or '0')
  if before > 0 then
    started = redis.call('INCRBY', KEYS[1], before)
    redis.call('DEL', KEYS[2])
  end
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return started
"""

#: A member of every run's finished set from its planning on (never a sequence): the set, and
#: its expiry, exist before the first scene finishes, so a finish need not renew it.
PLANNED = "planned"


#: How many times per liveness period a process refreshes a run's mark (at most).
RUN_TOUCH_EVERY = 20
#: Marks (runs' liveness, waiting) whose last refresh a process remembers (forgotten all at
#: once past this: a refresh too many, never one too few).
MARKS_REMEMBERED = 1024

#: How long a new project's song analysis is taken for queued or running once sent (ample:
#: seconds on a warm worker, minutes behind other media work); its end says so sooner.
ANALYSIS_MARK_SECONDS = 3600
_QUEUED, _ENDED = b"queued", b"ended"

#: a poll chain for an orphaned operation (KEYS[1] the scene's mark, ARGV[1] ms), never while
#: the scene's owed mark (KEYS[2]) lives: a paid claim may still owe that job's record
_CLAIM_POLL_CHAIN = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
if redis.call('SET', KEYS[1], 1, 'PX', ARGV[1], 'NX') then return 1 end
return 0
"""


class RunBoard:
    def __init__(
        self, client: redis.Redis, *, prefix: str = "mvpipe", ttl: int = 7 * 24 * 3600
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self._finish = client.register_script(_FINISH)
        self._unlock = client.register_script(_UNLOCK)
        self._renew = client.register_script(_RENEW)
        self._go_on = client.register_script(_GO_ON)
        self._claim_poll_chain = client.register_script(_CLAIM_POLL_CHAIN)
        #: a run's liveness or waiting mark -> when this process last refreshed it (monotonic)
        self._refreshed: dict[tuple[str, str], float] = {}

    def _key(self, *parts: object) -> str:
        return ":".join([self.prefix, *map(str, parts)])

    # -- liveness ------------------------------------------------------------------------------
    def touch_run(self, run_id: str, seconds: float) -> None:
        self._set_mark(self._key("live", "run", run_id), seconds)

    def keep_run_alive(self, run_id: str, seconds: float) -> None:
        """`touch_run` from a run's steps, at most once per `seconds / RUN_TOUCH_EVERY` per
        process and run: the mark still never lapses while the run's steps execute, at one
        write per busy process every few seconds instead of one per step. Each write lasts
        `seconds` and a twentieth more (`keep_run_waiting`'s reason): a step that skipped its
        write, up to a twentieth after the last, still leaves the run `seconds` of life before
        its next step, which the settings hold within `seconds` (`longest_countdown`)."""
        if self._due(("run", run_id), seconds):
            self.touch_run(run_id, seconds * (1 + 1 / RUN_TOUCH_EVERY))
            self._remember(("run", run_id))

    def keep_run_waiting(self, run_id: str, seconds: float) -> None:
        """The run's work waits in a queue up to `seconds` (a scene queued for its next stage,
        `stage_queue_seconds`): the run counts as alive that long, whatever its own staleness.
        A mark of its own, so a step's later refresh of the run's mark (shorter) cannot cut
        it; each write lasts `seconds` and a twentieth more, and is made at most once per
        twentieth per process and run (`keep_run_alive`'s pace), so what is left of it always
        covers `seconds`, at a write per busy process every few seconds, not one per scene."""
        if self._due(("waiting", run_id), seconds):
            lasts = seconds * (1 + 1 / RUN_TOUCH_EVERY)
            self._set_mark(self._key("live", "run", run_id, "waiting"), lasts)
            self._remember(("waiting", run_id))

    @_answered
    def mark_run_alone(self, run_id: str, seconds: float) -> None:
        """The run's mark, `seconds` from now, is its only liveness: its waiting mark is
        dropped (nothing of the run waits in a queue any more: its final video is being built)
        and a longer mark cut short. One round trip."""
        run = self._key("live", "run", run_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.set(run, 1, px=int(seconds * 1000))
        pipe.delete(f"{run}:waiting")
        pipe.execute()

    @_answered
    def _set_mark(self, key: str, seconds: float) -> None:
        self.client.set(key, 1, px=int(seconds * 1000))

    def _due(self, mark: tuple[str, str], seconds: float) -> bool:
        """Whether `mark`, which lasts `seconds`, is for this process to refresh: not
        refreshed here within the last `seconds / RUN_TOUCH_EVERY`."""
        last = self._refreshed.get(mark, -seconds)
        return time.monotonic() - last >= seconds / RUN_TOUCH_EVERY

    def _remember(self, mark: tuple[str, str]) -> None:
        """`mark` was refreshed now (after the write: a write that failed is tried again)."""
        if len(self._refreshed) >= MARKS_REMEMBERED:
            self._refreshed.clear()
        self._refreshed[mark] = time.monotonic()

    @_answered
    def run_alive(self, run_id: str) -> bool:
        """Its mark, or its work's wait in a queue (`keep_run_waiting`), lasts: one command."""
        run = self._key("live", "run", run_id)
        return bool(self.client.exists(run, f"{run}:waiting"))

    @_answered
    def drop_run(self, run_id: str) -> None:
        """A run released before its work was sent: its mark goes with it."""
        self.client.delete(self._key("live", "run", run_id))

    def _scene_keys(self, project_id: str, sequence: int) -> tuple[str, str]:
        """The scene's mark (worked on) and its owed mark (a paid claim or an owed write)."""
        return (
            self._key("live", "scene", project_id, sequence),
            self._key("live", "owed", project_id, sequence),
        )

    @_answered
    def touch_scene(
        self,
        project_id: str,
        sequence: int,
        seconds: float,
        *,
        owed: bool = False,
        clear: bool = False,
    ) -> None:
        """Mark the scene worked on for `seconds`: one SET. `owed`: by a paid claim, or a write
        owed for paid work (a job's record, a lease's give-back), in a key of its own, so no
        other chain's plain mark (a late duplicate's poll, a stage queued) ever ends it.
        `clear`: the owed write is done (`PaidOperation.stored`): the plain mark and the owed
        one's end, one round trip."""
        scene, owed_key = self._scene_keys(project_id, sequence)
        ms = int(seconds * 1000)
        if owed:
            self.client.set(owed_key, 1, px=ms)
        elif clear:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(scene, 1, px=ms)
            pipe.delete(owed_key)
            pipe.execute()
        else:
            self.client.set(scene, 1, px=ms)

    @_answered
    def scene_polled(self, project_id: str, sequence: int) -> bool:
        """The scene's mark or its owed mark lasts, whoever set it: one command."""
        return bool(self.client.exists(*self._scene_keys(project_id, sequence)))

    @_answered
    def scene_owed(self, project_id: str, sequence: int) -> bool:
        """The scene's owed mark lasts (`touch_scene(owed=True)`), set by a paid claim or an
        owed write, not by a stage queued or polled: one command."""
        return bool(self.client.exists(self._scene_keys(project_id, sequence)[1]))

    @_answered
    def claim_poll_chain(self, project_id: str, sequence: int, seconds: float) -> bool:
        """Reconcile starts at most one poll chain for an orphaned operation, and none while
        the scene is marked, owed or not."""
        keys = self._scene_keys(project_id, sequence)
        return bool(self._claim_poll_chain(keys=list(keys), args=[int(seconds * 1000)]))

    # -- cancellation --------------------------------------------------------------------------
    @_answered
    def mark_cancelled(self, run_id: str) -> None:
        self.client.set(self._key("run", run_id, "cancelled"), 1, ex=self.ttl)

    @_answered
    def cancelled(self, run_id: str) -> bool:
        return bool(self.client.exists(self._key("run", run_id, "cancelled")))

    # -- finalize trigger ----------------------------------------------------------------------
    @_answered
    def await_scenes(self, run_id: str, expected: int, sequences: list[int]) -> None:
        """Finalize ran before every scene of the run finished: the last one re-triggers it."""
        pipe = self.client.pipeline()
        pipe.set(self._key("run", run_id, "sequences"), json.dumps(sequences), ex=self.ttl)
        pipe.set(self._key("run", run_id, "waiting"), expected, ex=self.ttl)
        pipe.execute()

    @_answered
    def keep_run_scenes(self, run_id: str, sequences: list[int]) -> None:
        """The scenes a run's chord waits for. Kept here, not in the chord's callback: every
        header message embeds the callback, so a list in it made each message O(N) and the
        messages a worker holds for waiting scenes O(N^2). It also starts the run's finished
        set with its expiry, so that a scene's finish costs one SADD and one GET."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self._key("run", run_id, "scenes"), json.dumps(sequences), ex=self.ttl)
        finished = self._key("run", run_id, "finished")
        pipe.sadd(finished, PLANNED)
        pipe.expire(finished, self.ttl)
        pipe.execute()

    @_answered
    def finalize_began(self, run_id: str) -> None:
        """The run's finalize has run at least once: from here its own retries, give-ups and
        re-finalize settle the run, not reconcile's settlement of a chord that never fired."""
        self.client.set(self._key("run", run_id, "finalize"), 1, ex=self.ttl)

    @_answered
    def finalize_begun(self, run_id: str) -> bool:
        return bool(self.client.exists(self._key("run", run_id, "finalize")))

    @_answered
    def run_scenes(self, run_id: str) -> list[int] | None:
        raw = self.client.get(self._key("run", run_id, "scenes"))
        return None if raw is None else [int(n) for n in json.loads(raw)]

    @_answered
    def run_sequences(self, run_id: str) -> list[int] | None:
        raw = self.client.get(self._key("run", run_id, "sequences"))
        return None if raw is None else [int(n) for n in json.loads(raw)]

    @_answered
    def scene_finished(self, run_id: str, sequence: int) -> bool:
        """Record a finished scene (O(1)); True when finalize must run again now.

        It keeps answering True until `refinalize_sent`: a step whose publish of the re-finalize
        failed (a broker restarting) is retried and triggers it again. Finalize may run twice,
        never zero times."""
        keys = [self._key("run", run_id, "finished"), self._key("run", run_id, "waiting")]
        return bool(self._finish(keys=keys, args=[sequence, self.ttl, PLANNED]))

    @_answered
    def refinalize_sent(self, run_id: str) -> None:
        """The re-finalize is on the broker: later finishes (duplicates) need not send it."""
        self.client.delete(self._key("run", run_id, "waiting"))

    @_answered
    def due(self, job: str, every_seconds: float) -> bool:
        """True at most once per period across all processes (rate-limits expensive sweeps)."""
        key = self._key("due", job)
        return bool(self.client.set(key, 1, px=int(every_seconds * 1000), nx=True))

    @_answered
    def hold(self, job: str, token: str, seconds: float) -> bool:
        """One holder of `job` at a time across all processes; expires if its holder dies."""
        return bool(self.client.set(self._key("hold", job), token, px=int(seconds * 1000), nx=True))

    @_answered
    def renew_hold(self, job: str, token: str, seconds: float) -> bool:
        """Extend this holder's hold of `job` to `seconds` from now (False: it is not ours)."""
        return bool(self._renew(keys=[self._key("hold", job)], args=[token, int(seconds * 1000)]))

    @_answered
    def let_go(self, job: str, token: str) -> None:
        """Release `job` if this holder still has it (never a later holder's hold)."""
        self._unlock(keys=[self._key("hold", job)], args=[token])

    @_answered
    def cursor(self, job: str) -> str | None:
        """Where `job` stopped last (None: never, or not for `ttl`: it starts over). Bytes
        that are not UTF-8 read as replacement characters: the caller's check of the cursor
        finds it unreadable and starts over, rather than every pass failing on it."""
        value = self.client.get(self._key("cursor", job))
        return None if value is None else value.decode(errors="replace")

    @_answered
    def move_cursor(self, job: str, value: str) -> None:
        self.client.set(self._key("cursor", job), value, ex=self.ttl)

    @_answered
    def drop_cursor(self, job: str) -> None:
        """`job` is over (a round of the full sweep): `cursor` says None until it starts again."""
        self.client.delete(self._key("cursor", job))

    # -- twin messages -------------------------------------------------------------------------
    @_answered
    def first_copy(self, task_id: str, step: int, copy: str, seconds: float) -> bool:
        """One step of a task may be sent twice (a timed check and a wake-up): the first copy
        to run owns the step, and a redelivery of that same copy still does."""
        key = self._key("step", task_id, step)
        if self.client.set(key, copy, ex=int(seconds), nx=True):
            return True
        return self.client.get(key) == copy.encode()

    # -- polls that never answer ---------------------------------------------------------------
    @_answered
    def start_poll(self, operation_id: str) -> int:
        """Count a poll of `operation_id` before it runs; returns how many polls in a row have
        now started without an answer (this one included). A poll that crashes its worker is
        counted too: it never gets to `poll_answered`. One command a poll (two on the first)."""
        key = self._key("poll", operation_id)
        started = int(self.client.hincrby(key, "started", 1))
        if started == 1:
            self.client.expire(key, self.ttl)
        return started

    @_answered
    def poll_error(self, operation_id: str) -> str | None:
        """The last error a poll of `operation_id` raised (read only when giving up)."""
        error = self.client.hget(self._key("poll", operation_id), "error")
        return None if error is None else error.decode()

    @_answered
    def poll_failed(self, operation_id: str, error: str) -> None:
        key = self._key("poll", operation_id)
        pipe = self.client.pipeline()
        pipe.hset(key, "error", error)
        pipe.expire(key, self.ttl)
        pipe.execute()

    @_answered
    def poll_answered(self, operation_id: str) -> None:
        self.client.delete(self._key("poll", operation_id))

    # -- work that may lose its process ---------------------------------------------------------
    @_answered
    def start_try(self, job: str, *, goes_on_from: str | None = None) -> int:
        """Count a try of `job` (a song's analysis, a cut, an assembly) before it runs; returns
        how many tries in a row have now started without ending (this one included). A try
        whose process is lost (killed for its memory, a native crash) never gets to
        `try_ended`, and Celery delivers its message again: the next try counts it.
        `goes_on_from`: the same work's count under another job (the run this one took over):
        the first try counted here adds it, and it is dropped (one script, one command)."""
        key = self._key("tries", job)
        if goes_on_from is not None:
            before = self._key("tries", goes_on_from)
            return int(self._go_on(keys=[key, before], args=[self.ttl]))
        started = int(self.client.incr(key))
        if started == 1:
            self.client.expire(key, self.ttl)
        return started

    @_answered
    def try_ended(self, job: str) -> None:
        """A try of `job` returned or raised: its process was not lost, the count starts over."""
        self.client.delete(self._key("tries", job))

    # -- a new project's song analysis ---------------------------------------------------------
    @_answered
    def analysis_sent(self, project_id: str) -> None:
        """A new project's song analysis is on the broker. Marked after the send, only where
        its end is not marked yet: an analysis that ended first (a fast worker) stays ended."""
        key = self._key("analysis", project_id)
        self.client.set(key, _QUEUED, ex=ANALYSIS_MARK_SECONDS, nx=True)

    @_answered
    def analysis_ended(self, project_id: str) -> None:
        """The analysis ended, whatever its outcome: nobody is to wait for it any longer."""
        self.client.set(self._key("analysis", project_id), _ENDED, ex=ANALYSIS_MARK_SECONDS)

    @_answered
    def analysis_age(self, project_id: str) -> float | None:
        """How long ago the analysis was sent, while it has not ended (its mark's life so far:
        Redis's clock, whichever process reads it); None when none is on its way (never sent,
        ended, or sent over `ANALYSIS_MARK_SECONDS` ago)."""
        key = self._key("analysis", project_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        value, left_ms = pipe.execute()
        if value != _QUEUED or left_ms < 0:
            return None
        return max(0.0, ANALYSIS_MARK_SECONDS - left_ms / 1000)

    # -- planning ------------------------------------------------------------------------------
    @_answered
    def lock_planning(self, project_id: str, run_id: str, seconds: float) -> bool:
        key = self._key("plan", project_id)
        if self.client.set(key, run_id, ex=int(seconds), nx=True):
            return True
        return self.client.get(key) == run_id.encode()

    @_answered
    def unlock_planning(self, project_id: str, run_id: str) -> None:
        """Only the run holding the lock frees it (a takeover's planner may hold it by now)."""
        self._unlock(keys=[self._key("plan", project_id)], args=[run_id])
