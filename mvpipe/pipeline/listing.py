"""Listing projects for users: the newest of some statuses, a bounded number of them."""

from __future__ import annotations

from collections.abc import Iterable

from mvpipe.deps import Context
from mvpipe.models import ProjectStatus
from mvpipe.store.records import ProjectRecord


def newest(ctx: Context, statuses: Iterable[ProjectStatus], limit: int) -> list[ProjectRecord]:
    """The `limit` most recently created projects with one of `statuses`, newest last."""
    # Each status's newest `limit` are enough: the merged newest `limit` are among them.
    found = [p for status in statuses for p in ctx.projects.newest_of_status(status, limit)]
    found.sort(key=lambda p: (p.created_at, p.project_id))
    return found[-limit:]
