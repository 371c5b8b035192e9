"""Listing projects for users: the newest of some statuses, a bounded number of them."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from mvpipe.deps import Context
from mvpipe.models import ProjectStatus, ProjectSummary
from mvpipe.store.records import ProjectRecord


def newest(ctx: Context, statuses: Iterable[ProjectStatus], limit: int) -> list[ProjectSummary]:
    """The `limit` most recently created projects with one of `statuses`, newest last."""
    # Each status's newest `limit` are enough: the merged newest `limit` are among them.
    found = [p for status in statuses for p in ctx.projects.newest_of_status(status, limit)]
    return [summary(p) for p in merged(found, limit)]


def merged(found: Iterable[ProjectRecord], limit: int) -> list[ProjectRecord]:
    """The `limit` most recently created of `found`, newest last, each project once: one whose
    status changed between two statuses' queries is read under both, and its latest record
    (the newest `updated_at`) is the one listed."""
    latest: dict[str, ProjectRecord] = {}
    for project in found:
        seen = latest.get(project.project_id)
        if seen is None or project.updated_at > seen.updated_at:
            latest[project.project_id] = project
    ordered = sorted(latest.values(), key=lambda p: (p.created_at, p.project_id))
    return ordered[-limit:]


def summary(project: ProjectRecord) -> ProjectSummary:
    """A project as a listing shows it: a public view, never the store's record."""
    return ProjectSummary(
        project_id=project.project_id,
        title=project.title,
        status=project.status,
        created_at=datetime.fromisoformat(project.created_at),
        scene_count=project.known_scene_count,
        completed_scenes=project.completed_scenes,
        failed_scenes=project.failed_scenes,
    )
