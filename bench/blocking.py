"""The naive baseline: a task that holds its worker slot while the provider works.

Same provider, same store, same broker; only the waiting differs (time.sleep in the task).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from mvpipe.deps import get_context
from mvpipe.errors import TransientProviderError
from mvpipe.providers.base import VideoRequest
from mvpipe.store.clips import clip_key

app = Celery("bench.blocking", broker=os.environ.get("MVPIPE_BROKER_URL"),
             backend=os.environ.get("MVPIPE_RESULT_BACKEND"))  # fmt: skip
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue="bench",
)


@app.task(name="bench.blocking_scene")
def blocking_scene(project_id: str, sequence: int) -> dict[str, Any]:
    ctx = get_context()
    provider = ctx.video_provider("local")
    request = VideoRequest(project_id, sequence, f"baseline scene {sequence}", None, 8)
    while True:
        try:
            operation_id = provider.submit(request)
            break
        except TransientProviderError:
            time.sleep(0.5)
    while not (status := provider.poll(operation_id)).finished:
        time.sleep(ctx.settings.poll_seconds_for("local"))  # the slot is held all along
    ctx.clips.put(clip_key(project_id, sequence, operation_id), provider.download(status))
    return {"sequence": sequence}


@app.task(name="bench.noop")
def noop(*_: Any) -> None:
    """For the overhead benchmark: a bare chord of tasks that do nothing."""
