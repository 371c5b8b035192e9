"""The Redis broker transport: kombu's, with its unacked bookkeeping sent without MULTI/EXEC.

kombu keeps every delivered message that is not acknowledged yet in Redis (the message in a hash,
its delivery time in an index), so that a lost worker's messages are delivered again once the
visibility timeout passed. It wraps each of the two writes per message (at delivery, at the ack)
in MULTI/EXEC: four of the ten commands that carry a message from its sending to its ack, for
an atomicity nothing relies on.
- Delivery (ZADD to the index, HSET of the message): the restore reads only index entries older
  than the visibility timeout, so it never meets a message between its two writes. A pipeline cut
  between them leaves an index entry without a message, which the restore drops; the message was
  lost then either way (it left its queue with the BRPOP, and a transaction cut before EXEC
  writes nothing).
- Ack: the message goes first (HDEL), then its index entry (ZREM). Cut between them, the restore
  finds an entry without a message and drops it; a transaction cut before EXEC would instead
  deliver the finished task's message again after the visibility timeout.
The restore itself is kombu's, unchanged: it watches the hash and moves a message back to its
queue in one transaction, so an ack meeting it makes it read again.

`install` (run by `mvpipe.celery_app` at import) makes kombu's `redis` alias name this transport,
so a `redis://` broker gets it with its URL unchanged: Flower reads the broker's kind from that
URL's scheme (its broker page and queue lengths), which a class path in `broker_transport` would
replace. A `rediss://` broker (TLS) keeps kombu's own transport, whose scheme turns TLS on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu import transport as kombu_transport
from kombu.transport import redis as kombu_redis

#: What kombu's `redis` alias names once `install` ran.
TRANSPORT = f"{__name__}:Transport"


class QoS(kombu_redis.QoS):
    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        """A pipeline without a transaction where kombu would open one; the restore passes its
        own transaction's pipeline, used as it is."""
        if pipe is not None:
            yield pipe
            return
        channel: Any = self.channel  # the Redis transport's (kombu's stubs say virtual's)
        with channel.conn_or_acquire(client) as conn:
            yield conn.pipeline(transaction=False)

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        """The message first, then its index entry (the order the module's docstring says)."""
        with self.pipe_or_acquire(pipe) as p:
            return p.hdel(self.unacked_key, delivery_tag).zrem(self.unacked_index_key, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    Channel = Channel


def install() -> None:
    """Name this transport by kombu's `redis` alias, before a connection resolves it (a
    transport resolved already is forgotten, so the next connection takes this one)."""
    transports: Any = kombu_transport  # (kombu's stubs omit its resolved transports' cache)
    transports.TRANSPORT_ALIASES["redis"] = TRANSPORT
    transports._transport_cache.pop("redis", None)
