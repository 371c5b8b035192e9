"""A process's contexts share botocore's parsed service models, never their clients.

Decoding S3's and DynamoDB's model JSON was most of a fresh context's cost (each made new
botocore sessions, each with a new loader): every worker start and every forked pool child paid it.
A worker's parent decodes them before its pool forks, so its pool processes inherit them.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from mvpipe.deps import Context, build_context, get_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.settings import get_settings
from tests import pool_probe
from tests.conftest import Workers
from tests.helpers import wait_for
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


def test_a_pool_process_inherits_the_models_its_first_context_reads(
    start_workers: Callable[..., Workers], tmp_path: Path
) -> None:
    """The worker decodes them in its own process before its pool forks, and freezes them there
    (a pool process's collection at its start leaves them alone): no pool process decodes any,
    neither at its start nor at its first context."""
    probe = tmp_path / "probe"
    probe.mkdir()
    root = str(Path(__file__).resolve().parents[1])  # where the worker imports `tests` from
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    workers = start_workers(
        concurrency=2,
        env={
            "CELERY_WORKER_INCLUDE": pool_probe.__name__,
            pool_probe.PROBE_DIR: str(probe),
            "PYTHONPATH": path,
        },
    )
    wait_for(lambda: len(list(probe.glob("*.json"))) == 3, 120, "the worker's and 2 pool records")
    worker = json.loads((probe / "worker.json").read_text())
    assert worker["pid"] == workers.service.proc.pid
    for service in ("s3", "dynamodb"):
        assert any(p.startswith(f"{service}/") for p in worker["decoded"]), worker
    assert worker["frozen"]
    pool = [json.loads(f.read_text()) for f in probe.glob("*.json") if f.stem != "worker"]
    for record in pool:
        assert "error" not in record, record
        assert record["parent"] == worker["pid"]  # a process of its pool
        assert record["inherited"] == worker["decoded"]  # decoded before the fork
        assert record["decoded"] == []  # its first context and listing decoded nothing
