"""DESIGN.md's invariants (1, 4, 5, 9) as a check anyone can run against a project.

Returns the violations found, empty when the project is sound. Read-only.
"""

from __future__ import annotations

from mvpipe.deps import Context
from mvpipe.models import ProjectStatus, SceneStatus
from mvpipe.states import Counters, project_status


def violations(ctx: Context, project_id: str) -> list[str]:
    found: list[str] = []
    state = ctx.projects.load(project_id)
    for scene in state.scenes:
        has_clip = scene.clip_key is not None and ctx.clips.exists(scene.clip_key)
        if (scene.status == SceneStatus.COMPLETED) != has_clip:
            found.append(f"scene {scene.sequence}: status {scene.status}, clip {scene.clip_key!r}")
        if scene.status == SceneStatus.FAILED and not scene.last_error:
            found.append(f"scene {scene.sequence}: failed without lastError")
    project = state.project
    committed = project.committed_cost_micros
    if project.budget_micros is not None and committed > project.budget_micros:
        found.append(f"committed {committed} micros over the budget of {project.budget_micros}")
    if project.active_run_id is None:
        cost = sum(s.cost_micros for s in state.scenes)
        if committed != cost:
            found.append(f"committed {committed} micros but the scenes cost {cost}")
        counters = Counters.of(s.status for s in state.scenes)
        if (project.completed_scenes, project.failed_scenes) != (
            counters.completed_scenes,
            counters.failed_scenes,
        ):
            found.append(
                f"counters {project.completed_scenes}/{project.failed_scenes} but scenes say "
                f"{counters.completed_scenes}/{counters.failed_scenes}"
            )
        if project.planned and project.scene_count != counters.scene_count:
            found.append(f"sceneCount {project.scene_count} but {counters.scene_count} scenes")
        expected = project_status(
            counters,
            planned=project.planned,
            run_active=False,
            planning_failed=project.status == ProjectStatus.FAILED and not project.planned,
        )
        if project.status != expected:
            found.append(f"project status {project.status}, scenes say {expected}")
    return found
