"""Celery's and kombu's own Redis commands, against a real redis-server and real workers: a
message's delivery and ack are recorded without a transaction, a message never acknowledged
still comes back after the visibility timeout, and a worker that plans a run subscribes to none
of its scenes' results."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from celery import chord
from celery.result import AsyncResult, denied_join_result
from kombu import Connection
from kombu.transport import redis as kombu_redis

from mvpipe import api
from mvpipe.celery_app import app
from mvpipe.devstack.localstack import LocalStack
from mvpipe.messaging import broker
from mvpipe.models import ProjectStatus
from tests.conftest import Workers
from tests.helpers import commands_under, wait_for

pytestmark = pytest.mark.integration

#: kombu's records of the delivered messages not acknowledged yet (message, delivery time).
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


@pytest.fixture
def connection(stack: LocalStack, broker_cleared: None) -> Iterator[Connection]:
    """A broker connection through mvpipe's transport whose unacked messages are due back
    after a second."""
    url = stack.env["MVPIPE_BROKER_URL"]
    options = {"visibility_timeout": 1}
    with Connection(url, transport=broker.TRANSPORT, transport_options=options) as conn:
        yield conn


def test_celery_uses_the_transport_for_a_plain_redis_broker(stack: LocalStack) -> None:
    connection = app.connection_for_write()
    assert isinstance(connection.transport, broker.Transport)
    # under the URL's own scheme (Flower reads the broker's kind from it), password masked
    assert connection.as_uri().startswith("redis://")
    # TLS is turned on by kombu's own transport from the scheme: that one is kept
    tls = Connection("rediss://example.com:6380/0").transport
    assert isinstance(tls, kombu_redis.Transport) and not isinstance(tls, broker.Transport)


def test_a_delivery_and_its_ack_are_recorded_without_a_transaction(
    connection: Connection, redis_client: redis.Redis
) -> None:
    queue = connection.SimpleQueue(f"test-{uuid.uuid4().hex}")
    queue.put({"n": 1})
    delivered = []
    commands = commands_under(redis_client, "", lambda: delivered.append(queue.get(timeout=10)))
    tag = delivered[0].delivery_tag
    # Recorded until its ack, so that a lost worker's message is delivered again
    assert redis_client.hexists(UNACKED, tag)
    assert redis_client.zscore(UNACKED_INDEX, tag) is not None
    commands += commands_under(redis_client, "", delivered[0].ack)
    assert not redis_client.hexists(UNACKED, tag)
    assert redis_client.zscore(UNACKED_INDEX, tag) is None
    assert {"ZADD", "HSET", "HDEL", "ZREM"} <= set(commands)
    assert not {"MULTI", "EXEC"} & set(commands)
    queue.close()


def test_a_message_never_acknowledged_comes_back_after_the_visibility_timeout(
    connection: Connection, redis_client: redis.Redis
) -> None:
    name = f"test-{uuid.uuid4().hex}"
    queue = connection.SimpleQueue(name)
    queue.put({"n": 2})
    lost = queue.get(timeout=10)  # delivered, and its worker died before the ack
    assert redis_client.llen(name) == 0

    def restored() -> bool:
        queue.channel.qos.restore_visible(interval=1)  # what a worker's poller runs
        return bool(redis_client.llen(name))

    wait_for(restored, 30, "the unacknowledged message back on its queue")
    assert not redis_client.hexists(UNACKED, lost.delivery_tag)
    again = queue.get(timeout=10)
    assert again.payload == {"n": 2}
    again.ack()
    queue.close()


def watchers(client: redis.Redis, task_id: str) -> int:
    """How many clients are subscribed to a task's result channel."""
    return int(client.pubsub_numsub(f"celery-task-meta-{task_id}")[0][1])


def test_where_joining_blocks_only_a_result_waited_on_is_watched(
    stack: LocalStack, redis_client: redis.Redis, broker_cleared: None
) -> None:
    queue = f"test-{uuid.uuid4().hex}"  # never consumed: cleared after the test
    header = [app.signature("mvpipe.test.step", args=[n], queue=queue) for n in (1, 2, 3)]
    body = app.signature("mvpipe.test.body", queue=queue)
    with denied_join_result():  # as in a worker's pool process
        sent = chord(header, body).apply_async()
        assert sent.parent is not None
        ids = [r.id for r in sent.parent.results]
        assert redis_client.llen(queue) == len(header)  # the header was sent
        assert [watchers(redis_client, i) for i in ids] == [0, 0, 0]

        # A task that waits on a result after all is answered as soon as it is stored
        def answer() -> None:
            wait_for(lambda: watchers(redis_client, ids[0]), 30, "the waiter to watch")
            app.backend.store_result(ids[0], {"n": 1}, "SUCCESS")

        answering = threading.Thread(target=answer)
        answering.start()
        waited = AsyncResult(ids[0], app=app).get(timeout=30, disable_sync_subtasks=False)
        answering.join()
    assert waited == {"n": 1}


def test_a_worker_planning_a_run_subscribes_to_none_of_its_scenes_results(
    start_workers: Callable[..., Workers], redis_client: redis.Redis
) -> None:
    workers = start_workers(local_latency="0")
    assert workers.service.proc.poll() is None  # running (ready) before anything is watched
    scenes = [{"prompt": f"scene {n}"} for n in (1, 2, 3)]
    project_id = api.create_project("Unwatched", "x", scenes=scenes)

    def run() -> None:
        api.run_project(project_id)
        assert api.wait_project(project_id, timeout=120).status == ProjectStatus.COMPLETED

    commands = commands_under(redis_client, "", run)
    assert commands.count("LPUSH") >= len(scenes)  # the chord's header was sent
    # One subscription: this process's (the API's), to the run's result; none to a scene's
    assert commands.count("SUBSCRIBE") == 1
