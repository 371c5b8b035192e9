"""The guard around kombu's released-connection bug (see mvpipe/messaging/kombu_guard.py)."""

from __future__ import annotations

import pytest


def test_kombu_guard_turns_a_released_connection_into_a_connection_error() -> None:
    import redis
    from kombu.transport import redis as kombu_redis

    from mvpipe.messaging import kombu_guard

    kombu_guard.install()
    channel = object.__new__(kombu_redis.Channel)
    channel.connection = None  # what kombu leaves behind after releasing the transport
    with pytest.raises(redis.exceptions.ConnectionError):
        channel._connparams()
