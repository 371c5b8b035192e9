"""What every mvpipe task shares: argument checks, the store-outage retry, the dispatcher."""

from __future__ import annotations

from typing import Any

from celery import Task

from mvpipe.celery_app import app
from mvpipe.deps import get_settings
from mvpipe.dispatch import CeleryDispatcher
from mvpipe.models import validate_project_id, validate_sequence
from mvpipe.states import backoff_seconds

dispatcher = CeleryDispatcher(app)


class MvpipeTask(Task):
    """Tasks that retry only on purpose: `max_retries=None` (polling must not be capped)."""

    max_retries = None
    acks_late = True
    reject_on_worker_lost = True

    def outage_retry(self, exc: Exception, kwargs: dict[str, Any], failures: int) -> Exception:
        s = get_settings()
        countdown = backoff_seconds(failures + 1, base=s.backoff_base, cap=s.backoff_max)
        return self.retry(exc=exc, countdown=countdown, kwargs={**kwargs, "outages": failures + 1})


def checked_ids(project_id: Any, sequence: Any = None) -> None:
    """Reject malformed messages up front (they end as failed tasks, never crash a worker)."""
    validate_project_id(project_id)
    if sequence is not None:
        validate_sequence(sequence)


__all__ = ["MvpipeTask", "app", "checked_ids", "dispatcher"]
