"""A guard around a kombu Redis-transport bug that kills workers when Redis restarts.

After the broker connection is lost, kombu can still reach for it through a channel whose
transport was already released (re-queueing unacked messages on close, acking a task that just
finished): `Channel._connparams` then reads `None.client` / `None.hostname`, and that
AttributeError escapes Celery's "connection error" handling, ending the worker with
"Unrecoverable error" (kombu 5.x; the Redis-restart drill reproduces it). We turn it into the
connection error it really is, which Celery already handles: the worker reconnects, the unacked
messages stay in Redis until the visibility-timeout sweep, and reconcile resumes their scenes.
"""

from __future__ import annotations

from typing import Any

_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    import redis
    from kombu.transport import redis as kombu_redis

    channel: Any = kombu_redis.Channel
    original = channel._connparams

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        connection = self.connection
        if connection is None or getattr(connection, "client", None) is None:
            raise redis.exceptions.ConnectionError("broker connection already released")
        return original(self, asynchronous)

    channel._connparams = _connparams
    _installed = True
