"""Bad input is refused before anything touches the store: the API creates neither table nor
bucket."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from mvpipe import api
from mvpipe.deps import reset_context
from mvpipe.devstack.localstack import LocalStack
from mvpipe.errors import InvalidInput, NotFound
from tests.helpers import own_storage


def _storage_names() -> tuple[set[str], set[str]]:
    """Every table and bucket on the local stack, read straight from it."""
    dynamo = boto3.client("dynamodb", endpoint_url=os.environ["MVPIPE_DYNAMODB_ENDPOINT"])
    s3 = boto3.client("s3", endpoint_url=os.environ["MVPIPE_S3_ENDPOINT"])
    tables = set(dynamo.list_tables()["TableNames"])
    buckets = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    return tables, buckets


def test_api_bad_input_creates_no_table_or_bucket(
    stack: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = own_storage()
    for key, value in names.items():
        monkeypatch.setenv(f"MVPIPE_{key.upper()}", value)
    reset_context()
    some = str(uuid.uuid4())
    refused: list[Callable[[], Any]] = [
        lambda: api.create_project("", "x"),
        lambda: api.create_project("t", "x", provider="nope"),
        lambda: api.create_project("t", "x", scene_count=0),
        lambda: api.create_project("t", "x", scenes=[{"prompt": ""}]),
        lambda: api.create_project("t", "x", budget_usd=-1),
        lambda: api.get_project("not-a-uuid"),
        lambda: api.run_project("not-a-uuid"),
        lambda: api.cancel_project("not-a-uuid"),
        lambda: api.regenerate_scene(some, 0),
        lambda: api.set_budget(some, -5),
        lambda: api.estimate_micros("not-a-uuid"),
        lambda: api.estimate_micros(some, 1000),
        lambda: api.estimate_cost(some, 0),
        lambda: api.list_projects("bogus"),
        lambda: api.list_projects(limit=0),
        lambda: api.list_projects(limit=10_000),
        lambda: api.wait_project("not-a-uuid"),
        lambda: api.wait_project(some, timeout=float("nan")),
        lambda: api.wait_project(some, timeout=-1),
        lambda: api.wait_project(some, interval=0),
        lambda: api.reconcile("not-a-uuid"),
        lambda: api.download("not-a-uuid", tmp_path),
        lambda: api.download(some, tmp_path, stage="poster"),
        lambda: api.download(some, tmp_path / "missing" / "x.mp4"),
    ]
    try:
        for call in refused:
            with pytest.raises(InvalidInput):
                call()
        tables, buckets = _storage_names()
        assert names["table"] not in tables and names["bucket"] not in buckets
        assert list(tmp_path.iterdir()) == []
        # The first valid call opens (so creates) them: the check above could see them.
        with pytest.raises(NotFound):
            api.get_project(some)
        tables, buckets = _storage_names()
        assert names["table"] in tables and names["bucket"] in buckets
    finally:
        monkeypatch.undo()
        reset_context()
