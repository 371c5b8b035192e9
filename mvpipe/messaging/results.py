"""The result backend: Celery's Redis backend, minus the MULTI/EXEC around each stored state.

Celery stores a task state and announces it to waiting clients (PUBLISH) in a transaction: four
Redis commands per stored state (every finished step, every POLLING/WAITING_FOR_SLOT update).
The pair needs no atomicity: the PUBLISH only wakes a client, which then reads the stored key,
and the store comes first in the one round trip either way. Without the transaction it is two.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend


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


def backend_url(url: str) -> str:
    """Celery's `result_backend` setting naming this backend for a Redis `url`."""
    return f"{__name__}:{ResultBackend.__name__}+{url}"
