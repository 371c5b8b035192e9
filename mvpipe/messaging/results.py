"""The result backend: Celery's Redis backend, minus the MULTI/EXEC around each stored state.

Celery stores a task state and announces it to waiting clients (PUBLISH) in a transaction: four
Redis commands per stored state (every finished step, every POLLING/WAITING_FOR_SLOT update).
The pair needs no atomicity: the PUBLISH only wakes a client, which then reads the stored key,
and the store comes first in the one round trip either way. Without the transaction it is two.

Nor does a worker subscribe to the results of the tasks it sends. Celery ties every result of a
group or chord it builds to a barrier (`GroupResult`, `AsyncResult.then`), and the Redis backend
subscribes to each one's channel for it: one SUBSCRIBE per scene when planning sends a run's
chord. A worker process never waits on them (joining a result there raises: Celery's own
`on_task_call` subscribes only where joining is allowed), nothing reads that subscription and
it is never cancelled: each pool process stayed subscribed to every scene it ever planned,
every stored state of theirs pushed to it unread, all of them subscribed again after a
reconnect. There a result is watched only once a task waits on it after all
(`get(disable_sync_subtasks=False)`; under `allow_join_result()` joining is allowed anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery._state import task_join_will_block  # type: ignore[attr-defined]
from celery.backends.redis import RedisBackend
from celery.result import AsyncResult


class ResultBackend(RedisBackend):
    def _set(self, key: str, value: Any, expires: int | None = None) -> None:
        if expires is None:
            expires = self.expires  # type: ignore[attr-defined]
        with self.client.pipeline(transaction=False) as pipe:
            if expires:
                pipe.setex(key, expires, value)
            else:
                pipe.set(key, value)
            pipe.publish(key, value)
            pipe.execute()

    def add_pending_result(
        self, result: AsyncResult, weak: bool = False, start_drainer: bool = True
    ) -> AsyncResult:
        """Not watched where joining blocks (a worker), where only barriers ask: a task that
        waits on a result after all has it watched by `wait_for_pending` (a single result's
        `get`; a group's `join_native` inside a task is not covered, and no task joins one)."""
        if task_join_will_block():
            return result
        return self._watch(result, weak, start_drainer)

    def wait_for_pending(  # type: ignore[override]  # the stubs give the sync mixin's
        self,
        result: Any,
        callback: Callable[..., Any] | None = None,
        propagate: bool = True,
        **kwargs: Any,
    ) -> Any:
        """A task waits on `result` after all: watched now (a no-op when it is already)."""
        if task_join_will_block():
            self._watch(result)
        return super().wait_for_pending(result, callback=callback, propagate=propagate, **kwargs)

    def _watch(
        self, result: AsyncResult, weak: bool = False, start_drainer: bool = True
    ) -> AsyncResult:
        return super().add_pending_result(result, weak, start_drainer)  # type: ignore[call-arg]


def backend_url(url: str) -> str:
    """Celery's `result_backend` setting naming this backend for a Redis `url`."""
    return f"{__name__}:{ResultBackend.__name__}+{url}"
