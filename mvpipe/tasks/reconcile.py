"""`mvpipe.reconcile`: scheduled by celery beat; repairs what crashes left behind."""

from __future__ import annotations

from typing import Any

from mvpipe.deps import get_context
from mvpipe.pipeline.reconcile import reconcile as reconcile_all
from mvpipe.tasks.base import MvpipeTask, app, dispatcher


@app.task(base=MvpipeTask, bind=True, name="mvpipe.reconcile", max_retries=3)
def reconcile(self: MvpipeTask) -> dict[str, Any]:
    return reconcile_all(get_context(), dispatcher).model_dump()
