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


def test_a_secret_in_a_malformed_message_never_reaches_the_result_backend(
    start_workers: Callable[..., Workers],
) -> None:
    workers = start_workers(env={"REPLICATE_API_TOKEN": SECRET})
    # A message whose arguments carry the secret (a stage name nobody knows, a run id): it is
    # rejected before it runs, and the reason it stores and logs never echoes the secret.
    sent = [
        app.send_task(
            GENERATE_SCENE,
            args=[str(uuid.uuid4()), 1, None, "local"],
            kwargs={"stage": f"nope-{SECRET}"},
        ),
        app.send_task(GENERATE_SCENE, args=[str(uuid.uuid4()), 1, f"run-{SECRET}", "local"]),
    ]
    for result in sent:
        meta = wait_for(
            lambda r=result: (m := app.backend.get_task_meta(r.id))["status"] == "FAILURE" and m,
            timeout=60,
            what="the rejection recorded in the result backend",
        )
        stored = json.dumps({"result": meta["result"], "traceback": meta["traceback"]}, default=str)
        assert "invalid" in stored  # the reason is stored
        assert SECRET not in stored  # neither in the reason nor in its traceback
    logged = [line for line in workers.service.log_path.read_text().splitlines() if SECRET in line]
    assert logged == []
