"""`mvpipe.reconcile`: scheduled by celery beat; repairs what crashes left behind.

One pass at a time: a pass slower than the beat interval would otherwise meet the next beat
messages queued behind it and run them back to back on every pool process, starving the work
it exists to protect. A message that finds a pass running is dropped (the next beat comes).
And a bounded pass: it spends at most `MVPIPE_RECONCILE_SHARE` of the interval examining
projects, taking them in turns across passes (`reconcile_scope.in_turn`).
"""

from __future__ import annotations

import uuid
from typing import Any

from mvpipe.deps import get_context
from mvpipe.pipeline.reconcile import reconcile as reconcile_all
from mvpipe.tasks.base import MvpipeTask, app, dispatcher

#: A dead holder's hold expires after this many beat intervals. A live pass that outlasts its
#: hold only lets a second pass overlap it, which is safe (every repair is conditional).
HOLD_INTERVALS = 3


@app.task(base=MvpipeTask, bind=True, name="mvpipe.reconcile", max_retries=3)
def reconcile(self: MvpipeTask) -> dict[str, Any]:
    ctx = get_context()
    token = str(uuid.uuid4())
    if not ctx.board.hold("reconcile", token, HOLD_INTERVALS * ctx.settings.reconcile_seconds):
        return {"skipped": "a reconcile pass is running"}
    try:
        budget = ctx.settings.reconcile_share * ctx.settings.reconcile_seconds
        return reconcile_all(ctx, dispatcher, budget_seconds=budget).model_dump()
    finally:
        ctx.board.let_go("reconcile", token)
