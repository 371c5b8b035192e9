"""Secrets in error messages, through a real worker: the result backend stores what a retry
says and its traceback, so neither may hold the raw error."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import pytest

from mvpipe.celery_app import app
from mvpipe.messaging.dispatch import GENERATE_SCENE
from tests.conftest import Workers
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

SECRET = "r8_not-a-real-token-0123456789"


def test_a_secret_in_an_unexpected_error_never_reaches_the_result_backend(
    start_workers: Callable[..., Workers],
) -> None:
    workers = start_workers(env={"REPLICATE_API_TOKEN": SECRET})
    # A step that fails unexpectedly, with the secret in its error message (a stage name
    # nobody knows, echoed by the KeyError): the task retries it after a backoff.
    result = app.send_task(
        GENERATE_SCENE,
        args=[str(uuid.uuid4()), 1, None, "local"],
        kwargs={"stage": f"nope-{SECRET}"},
    )
    meta = wait_for(
        lambda: (m := app.backend.get_task_meta(result.id))["status"] == "RETRY" and m,
        timeout=60,
        what="the retry recorded in the result backend",
    )
    # (the message's own kwargs are stored beside them, as sent: the test put the secret there)
    stored = json.dumps({"result": meta["result"], "traceback": meta["traceback"]}, default=str)
    assert "nope-***" in stored  # the scrubbed cause is what was stored
    assert SECRET not in stored  # neither in the cause nor in its traceback
    logged = [line for line in workers.service.log_path.read_text().splitlines() if SECRET in line]
    assert logged == []
