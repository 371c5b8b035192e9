"""A process's contexts share botocore's parsed service models, never their clients.

Decoding S3's and DynamoDB's model JSON was most of a fresh context's cost (each made new
botocore sessions, each with a new loader): every worker start and every forked pool child paid it.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from mvpipe.deps import Context, build_context, get_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.settings import get_settings
from tests.processes import Processes

pytestmark = pytest.mark.integration


def loaders(ctx: Context) -> list[object]:
    """The botocore loaders a context's S3 and DynamoDB clients read their models through."""
    dynamo = ctx.table.model._get_connection().connection.client
    return [vars(ctx.clips.client)["_loader"], vars(dynamo)["_loader"]]


def round_trip(ctx: Context) -> bool:
    """Whether `ctx` writes and reads back an object in S3 and reads the table."""
    key = f"sessions-test/{uuid.uuid4().hex}"
    ctx.clips.put(key, b"clip")
    try:
        return ctx.clips.read(key) == b"clip" and ctx.table.get("PROJECT#none", "METADATA") is None
    finally:
        ctx.clips.delete(key)


def test_contexts_and_threads_share_one_loader_but_not_clients(stack: LocalStack) -> None:
    first, second = build_context(get_settings()), build_context(get_settings())
    try:
        first.ensure_storage()
        second.ensure_storage()
        shared = loaders(first)[0]
        assert loaders(first) == [shared, shared]
        assert all(loader is shared for loader in loaders(second))
        assert first.clips.client is not second.clips.client
        assert first.table.model._get_connection().connection.client is not (
            second.table.model._get_connection().connection.client
        )

        seen: list[object] = []
        connection = second.table.model._get_connection().connection
        reader = threading.Thread(
            target=lambda: seen.append(connection.session.get_component("data_loader"))
        )
        reader.start()
        reader.join(30)
        assert seen == [shared]  # another thread's pynamodb session: its own, the same models
        assert connection.session is not first.table.model._get_connection().connection.session
        assert round_trip(second)
    finally:
        first.close()
        second.close()


def test_a_forked_child_builds_its_own_clients_on_the_inherited_models(
    stack: LocalStack, processes: Processes
) -> None:
    parent = get_context()
    inherited = loaders(parent)[0]

    def in_child() -> bool:
        ctx = get_context()
        fresh = ctx is not parent and ctx.clips.client is not parent.clips.client
        return fresh and loaders(ctx) == [inherited, inherited] and round_trip(ctx)

    assert processes.fork(in_child)(120) == 0
    assert round_trip(parent)
