"""Shared test helpers: condition waits, ledger reading and the DESIGN.md invariant checks."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mvpipe.deps import get_context
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.states import Counters, project_status

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll `check` until it returns something truthy (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def ledger(path: Path, project_id: str | None = None) -> list[dict]:
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in lines if project_id is None or e["project_id"] == project_id]


def generations_per_scene(path: Path, project_id: str) -> Counter[int]:
    return Counter(e["sequence"] for e in ledger(path, project_id))


def assert_invariants(project_id: str) -> None:
    """Invariants 1, 4 and 5 of DESIGN.md, checked against the store and S3 directly."""
    ctx = get_context()
    state = ctx.projects.load(project_id)
    for scene in state.scenes:
        has_clip = scene.clip_key is not None and ctx.clips.exists(scene.clip_key)
        assert (scene.status == SceneStatus.COMPLETED) == has_clip, (
            f"scene {scene.sequence}: status {scene.status} but clip {scene.clip_key!r}"
        )
        if scene.status == SceneStatus.FAILED:
            assert scene.last_error, f"scene {scene.sequence} failed without lastError"
    project = state.project
    if project.active_run_id is None:
        counters = Counters.of(s.status for s in state.scenes)
        assert project.completed_scenes == counters.completed_scenes
        assert project.failed_scenes == counters.failed_scenes
        if project.planned:
            assert project.scene_count == counters.scene_count
        expected = project_status(
            counters,
            planned=project.planned,
            run_active=False,
            planning_failed=project.status == ProjectStatus.FAILED and not project.planned,
        )
        assert project.status == expected, f"project {project.status}, expected {expected}"
